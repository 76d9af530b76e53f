//! Package labels (`purpose:runtime`, `installed:installed`, ...) and
//! Gravity's human-readable size format.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Label key marking the version installed on a node (value `installed`).
pub const INSTALLED: &str = "installed";
/// Label key naming the package a configuration package configures
/// (value: zero-version locator, e.g. `gravitational.io/planet:0.0.0`).
pub const CONFIG_PACKAGE_FOR: &str = "config-package-for";
/// Label key giving the purpose of a package (`runtime`, `planet-config`, ...).
pub const PURPOSE: &str = "purpose";
/// Label key: the node IP a package was generated for.
pub const ADVERTISE_IP: &str = "advertise-ip";
/// Label key: the operation that generated a package.
pub const OPERATION_ID: &str = "operation-id";
/// Label key: the runtime version an intermediate-upgrade package belongs to.
pub const INTERMEDIATE_UPGRADE: &str = "intermediate-upgrade";

/// Label values of the `purpose` key used by Gravity.
pub mod purpose {
    /// The runtime (planet) package.
    pub const RUNTIME: &str = "runtime";
    /// A certificate authority package.
    pub const CA: &str = "ca";
    /// The site export package.
    pub const EXPORT: &str = "export";
    /// The license package.
    pub const LICENSE: &str = "license";
    /// Planet secrets of a node.
    pub const PLANET_SECRETS: &str = "planet-secrets";
    /// Planet configuration of a node.
    pub const PLANET_CONFIG: &str = "planet-config";
    /// Teleport master configuration.
    pub const TELEPORT_MASTER_CONFIG: &str = "teleport-master-config";
    /// Teleport node configuration.
    pub const TELEPORT_NODE_CONFIG: &str = "teleport-node-config";
    /// RPC agent credentials.
    pub const RPC_SECRETS: &str = "rpc-secrets";
}

/// A set of `key:value` labels, kept sorted by key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Labels(BTreeMap<String, String>);

/// A label list that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid label {item:?} in {text:?}: expected key:value pairs separated by ',' (e.g. purpose:runtime,installed:installed)"
)]
pub struct LabelsError {
    /// The whole text.
    pub text: String,
    /// The item that is wrong.
    pub item: String,
}

impl Labels {
    /// No labels.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `k:v,k2:v2` as Gravity's `--labels`: items are split on `,`
    /// (`\,` is a literal comma), each at its first `:`. Keys must not be
    /// empty. An empty text gives no labels.
    pub fn parse(text: &str) -> Result<Self, LabelsError> {
        let mut out = Labels::new();
        if text.is_empty() {
            return Ok(out);
        }
        let mut items = Vec::new();
        let mut cur = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if chars.peek() == Some(&',') => {
                    cur.push(',');
                    chars.next();
                }
                ',' => items.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        items.push(cur);
        for item in items {
            match item.split_once(':') {
                Some((k, v)) if !k.is_empty() => {
                    out.0.insert(k.to_string(), v.to_string());
                }
                _ => {
                    return Err(LabelsError {
                        text: text.to_string(),
                        item,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Builds labels from pairs.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Labels(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// Sets a label, returning the previous value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> Option<String> {
        self.0.insert(key.into(), value.into())
    }

    /// Removes a label, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.0.remove(key)
    }

    /// The value of a label.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Whether the label `key` has the value `value`.
    pub fn has(&self, key: &str, value: &str) -> bool {
        self.get(key) == Some(value)
    }

    /// Whether every label of `other` is present here with the same value.
    pub fn contains_all(&self, other: &Labels) -> bool {
        other.iter().all(|(k, v)| self.has(k, v))
    }

    /// Gravity's label update: remove each key of `remove`, then set each
    /// pair of `add` (a key in both ends up added).
    pub fn apply(&mut self, add: &Labels, remove: &[String]) {
        for k in remove {
            self.0.remove(k);
        }
        for (k, v) in add.iter() {
            self.0.insert(k.to_string(), v.to_string());
        }
    }

    /// Iterates pairs sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `k:v,k2:v2`, sorted by key (the `gravity package list` form).
impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}:{v}")?;
        }
        Ok(())
    }
}

/// Formats a size as Gravity does (go-humanize `Bytes`, SI, no space):
/// below 10 → `9B`; otherwise the value in the largest unit of 1000 that
/// fits, rounded to one decimal (`floor(x*10+0.5)/10`), printed with one
/// decimal when below 10 and none otherwise (ties half-to-even, like Go's
/// `%.0f`): `4.6kB`, `12kB`, `101MB`, and 999999 → `1000kB`.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n}B");
    }
    let x = n as f64;
    let e = (x.ln() / 1000f64.ln()).floor();
    let unit = UNITS[(e as usize).min(UNITS.len() - 1)];
    let v = (x / 1000f64.powf(e) * 10.0 + 0.5).floor() / 10.0;
    if v < 10.0 {
        format!("{v:.1}{unit}")
    } else {
        format!("{v:.0}{unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spec_sizes() {
        for (n, s) in [
            (0u64, "0B"),
            (9, "9B"),
            (10, "10B"),
            (999, "999B"),
            (1000, "1.0kB"),
            (1049, "1.0kB"),
            (1050, "1.1kB"),
            (4600, "4.6kB"),
            (12000, "12kB"),
            (12450, "12kB"),
            (12500, "12kB"),
            (13500, "14kB"),
            (999_999, "1000kB"),
            (1_000_000, "1.0MB"),
            (1_200_000, "1.2MB"),
            (101_000_000, "101MB"),
            (490_000_000, "490MB"),
            (1_000_000_000, "1.0GB"),
            (u64::MAX, "18EB"),
        ] {
            assert_eq!(human_size(n), s, "{n}");
        }
    }

    #[test]
    fn labels_parse_and_print_sorted() {
        let l = Labels::parse(
            "purpose:planet-config,config-package-for:gravitational.io/planet:0.0.0,advertise-ip:10.138.18.5",
        )
        .unwrap();
        assert_eq!(
            l.get(CONFIG_PACKAGE_FOR),
            Some("gravitational.io/planet:0.0.0")
        );
        assert_eq!(
            l.to_string(),
            "advertise-ip:10.138.18.5,config-package-for:gravitational.io/planet:0.0.0,purpose:planet-config"
        );
        let esc = Labels::parse(r"a:x\,y,b:").unwrap();
        assert_eq!(esc.get("a"), Some("x,y"));
        assert_eq!(esc.get("b"), Some(""));
        assert!(Labels::parse("").unwrap().is_empty());
        for bad in ["novalue", "a:b,,c:d", ":x"] {
            let e = Labels::parse(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")));
        }
    }

    #[test]
    fn apply_removes_then_adds() {
        let mut l = Labels::from_pairs([("installed", "installed"), ("purpose", "runtime")]);
        l.apply(
            &Labels::from_pairs([("purpose", "x")]),
            &["installed".to_string(), "purpose".to_string()],
        );
        assert_eq!(l.to_string(), "purpose:x");
    }

    proptest! {
        #[test]
        fn sizes_have_gravity_shape(n in any::<u64>()) {
            let s = human_size(n);
            let num: String = s.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
            let unit = &s[num.len()..];
            prop_assert!(["B", "kB", "MB", "GB", "TB", "PB", "EB"].contains(&unit));
            let v: f64 = num.parse().unwrap();
            prop_assert!(v <= 1000.0);
            prop_assert_eq!(num.contains('.'), n >= 10 && v < 10.0);
        }

        #[test]
        fn labels_roundtrip(pairs in proptest::collection::btree_map("[a-z-]{1,8}", "[a-z0-9.:/-]{0,10}", 0..6)) {
            let l = Labels::from_pairs(pairs.clone());
            let back = Labels::parse(&l.to_string()).unwrap();
            prop_assert_eq!(back, l);
        }
    }
}

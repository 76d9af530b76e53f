//! Package versions: `MAJOR.MINOR.PATCH[-PRERELEASE][+METADATA]`.
//!
//! The syntax is Gravity's (coreos go-semver): the metadata is split off at
//! the first `+` (any characters follow), the pre-release at the first `-` of
//! the rest, and the core must be exactly three base-10 integers (leading
//! zeros allowed; `1.0`, `1.0.0.0` and `v1.0.0` are rejected). An empty
//! pre-release or metadata counts as absent. The text is kept as written: two
//! versions are equal only when their texts are byte-equal.
//!
//! # Order
//!
//! Precedence compares major, minor and patch numerically, then the
//! pre-release (a version without one is greater), identifier by identifier
//! (split on `.`). Build metadata does not take part in precedence.
//!
//! [`Ord`] on [`Version`] is a *total* order used for sorting and for
//! "latest": precedence first, then the metadata bytewise (absent sorts
//! first), then the whole text bytewise. So "the latest version" is the same
//! whatever order the versions are seen in — unlike Gravity's `Less`, whose
//! metadata tie-break fires even when precedence differs (spec §2.4 QUIRK).
//!
//! One deliberate divergence from go-semver: when a numeric pre-release
//! identifier meets a non-numeric one, go-semver compares their strings,
//! which is not transitive (`2 < 10` numerically, `"10" < "1a"` and
//! `"1a" < "2"` as strings, a cycle). Here numeric identifiers (ASCII digits
//! only) always sort before non-numeric ones, as in SemVer 2.0. Numeric
//! identifiers compare by value, then bytewise (`01 < 1`, as go-semver);
//! non-numeric ones bytewise. Every pre-release seen in Gravity releases
//! (`11312`, `dev.9`, `rc.1`, `alpha.1`) orders the same under both rules.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A package version, validated, with its original text.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Version {
    text: String,
    major: u64,
    minor: u64,
    patch: u64,
    /// Byte range of the pre-release in `text` (empty = absent).
    pre: (usize, usize),
    /// Byte range of the metadata in `text` (empty = absent).
    meta: (usize, usize),
}

/// A version string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid version {text:?}: {reason} (expected MAJOR.MINOR.PATCH with optional -PRERELEASE and +METADATA, e.g. 5.5.54-11312+1596339382)"
)]
pub struct VersionError {
    /// The text that was given.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Version {
    /// Parses `text` with Gravity's rules.
    pub fn parse(text: &str) -> Result<Self, VersionError> {
        let err = |reason| VersionError {
            text: text.to_string(),
            reason,
        };
        let (rest, meta) = match text.find('+') {
            Some(i) => (&text[..i], (i + 1, text.len())),
            None => (text, (text.len(), text.len())),
        };
        let (core, pre) = match rest.find('-') {
            Some(i) => (&rest[..i], (i + 1, rest.len())),
            None => (rest, (rest.len(), rest.len())),
        };
        let mut parts = core.splitn(3, '.');
        let mut num = |what| -> Result<u64, VersionError> {
            let p = parts.next().ok_or_else(|| err(what))?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err(what));
            }
            // go-semver parses int64.
            p.parse::<i64>()
                .map(|v| v as u64)
                .map_err(|_| err("a number does not fit in 64 bits"))
        };
        let major = num("the major version is not a number")?;
        let minor = num("the minor version is missing or not a number")?;
        let patch = num("the patch version is missing or not a number")?;
        Ok(Version {
            text: text.to_string(),
            major,
            minor,
            patch,
            pre,
            meta,
        })
    }

    /// The version as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Major version.
    pub fn major(&self) -> u64 {
        self.major
    }

    /// Minor version.
    pub fn minor(&self) -> u64 {
        self.minor
    }

    /// Patch version.
    pub fn patch(&self) -> u64 {
        self.patch
    }

    /// The pre-release (`11312` in `5.5.47-11312`), if any.
    pub fn pre_release(&self) -> Option<&str> {
        let s = &self.text[self.pre.0..self.pre.1];
        (!s.is_empty()).then_some(s)
    }

    /// The build metadata (`1596339382` in `5.5.54-11312+1596339382`), if any.
    pub fn metadata(&self) -> Option<&str> {
        let s = &self.text[self.meta.0..self.meta.1];
        (!s.is_empty()).then_some(s)
    }

    /// `0.0.0`, the "any version" key of config labels.
    pub fn zero() -> Self {
        Version::parse("0.0.0").expect("valid")
    }

    /// Compares precedence only (metadata ignored), as Gravity's upgrade
    /// checks do: `5.5.54+1` and `5.5.54+2` are equal here.
    pub fn cmp_precedence(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (self.pre_release(), other.pre_release()) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(a), Some(b)) => cmp_pre(a, b),
            })
    }

    /// An encoding of this version whose bytewise order is the [`Ord`] order.
    /// Used as an index key; `Ord` and this encoding are property-tested to
    /// agree.
    pub fn sort_key(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.text.len() * 2);
        out.extend_from_slice(&self.major.to_be_bytes());
        out.extend_from_slice(&self.minor.to_be_bytes());
        out.extend_from_slice(&self.patch.to_be_bytes());
        match self.pre_release() {
            None => out.push(2),
            Some(pre) => {
                out.push(1);
                for ident in pre.split('.') {
                    if is_numeric(ident) {
                        let digits = ident.trim_start_matches('0');
                        out.push(1);
                        out.extend_from_slice(&(digits.len() as u32).to_be_bytes());
                        out.extend_from_slice(digits.as_bytes());
                        push_escaped(&mut out, ident.as_bytes());
                    } else {
                        out.push(2);
                        push_escaped(&mut out, ident.as_bytes());
                    }
                }
                out.push(0);
            }
        }
        push_escaped(&mut out, self.metadata().unwrap_or("").as_bytes());
        push_escaped(&mut out, self.text.as_bytes());
        out
    }
}

fn is_numeric(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn cmp_numeric(a: &str, b: &str) -> Ordering {
    let (ta, tb) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
}

fn cmp_pre(a: &str, b: &str) -> Ordering {
    let mut ia = a.split('.');
    let mut ib = b.split('.');
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let o = match (is_numeric(x), is_numeric(y)) {
                    (true, true) => cmp_numeric(x, y).then_with(|| x.cmp(y)),
                    (true, false) => Ordering::Less,
                    (false, true) => Ordering::Greater,
                    (false, false) => x.cmp(y),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

/// Appends `bytes` so that the bytewise order of the encodings is the
/// bytewise order of the inputs and no encoding is a prefix of another:
/// `0x00` becomes `0x00 0xff`, and the end is marked by `0x00 0x01`.
pub(crate) fn push_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.push(0);
    out.push(1);
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.cmp_precedence(other)
            .then_with(|| {
                self.metadata()
                    .unwrap_or("")
                    .cmp(other.metadata().unwrap_or(""))
            })
            .then_with(|| self.text.cmp(&other.text))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Version({:?})", self.text)
    }
}

impl FromStr for Version {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Version::parse(s)
    }
}

impl TryFrom<String> for Version {
    type Error = VersionError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Version::parse(&s)
    }
}

impl From<Version> for String {
    fn from(v: Version) -> String {
        v.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn parses_seed_versions() {
        let x = v("5.5.54-11312+1596339382");
        assert_eq!((x.major(), x.minor(), x.patch()), (5, 5, 54));
        assert_eq!(x.pre_release(), Some("11312"));
        assert_eq!(x.metadata(), Some("1596339382"));
        let d = v("5.5.50-dev.9");
        assert_eq!(d.pre_release(), Some("dev.9"));
        assert_eq!(d.metadata(), None);
        assert_eq!(v("1.0.0-rc-1").pre_release(), Some("rc-1"));
        assert_eq!(v("0.0.0+latest").metadata(), Some("latest"));
        assert_eq!(v("1.2.3-rc.1+build:7").metadata(), Some("build:7"));
        assert_eq!(v("01.0.0").major(), 1);
        assert_eq!(v("1.0.0+").metadata(), None);
        assert_ne!(v("1.0.0"), v("1.0.0+"));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "1.0",
            "1.0.0.0",
            "v1.0.0",
            "blabla",
            "1..0",
            "1.0.x",
            "-1.0.0",
            "1.0.0 ",
            " 1.0.0",
            "1.a.0",
            "99999999999999999999.0.0",
        ] {
            let e = Version::parse(bad).unwrap_err();
            assert_eq!(e.text, bad);
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn seed_ordering() {
        let ordered = [
            "0.0.1",
            "3.0.5",
            "5.0.2",
            "5.0.3",
            "5.5.46",
            "5.5.47-11312",
            "5.5.50-dev.9",
            "5.5.50-dev.10",
            "5.5.50",
            "5.5.54-11312",
            "5.5.54-11312+1596339382",
            "5.5.54",
        ];
        for w in ordered.windows(2) {
            assert!(v(w[0]) < v(w[1]), "{} < {}", w[0], w[1]);
        }
        assert_eq!(
            v("5.5.54-11312").cmp_precedence(&v("5.5.54-11312+1596339382")),
            Ordering::Equal
        );
    }

    #[test]
    fn spec_ordering_examples() {
        assert!(v("5.5.54-11312") < v("5.5.54"));
        assert!(v("1.0.0-2") < v("1.0.0-10"));
        assert!(v("1.0.0-alpha") < v("1.0.0-alpha.1"));
        assert!(v("1.0.0-alpha.1") < v("1.0.0-beta"));
        assert!(v("1.0.0-01") < v("1.0.0-1"));
        assert_eq!(
            v("5.5.54+1").cmp_precedence(&v("5.5.54+2")),
            Ordering::Equal
        );
        assert!(v("5.5.54+1") < v("5.5.54+2"));
        // The Gravity QUIRK is not reproduced: metadata never beats precedence.
        assert!(v("1.0.0+x") < v("2.0.0"));
        // Documented divergence: numeric identifiers sort before others.
        assert!(v("1.0.0-2") < v("1.0.0-1a"));
    }

    fn version_strategy() -> impl Strategy<Value = String> {
        let ident = prop_oneof!["[0-9]{1,3}", "0[0-9]{1,2}", "[a-z]{1,3}", "[a-z0-9-]{1,4}",];
        (
            0u64..4,
            0u64..4,
            0u64..4,
            proptest::option::of(proptest::collection::vec(ident, 1..4)),
            proptest::option::of("[a-z0-9.:+-]{0,4}"),
        )
            .prop_map(|(a, b, c, pre, meta)| {
                let mut s = format!("{a}.{b}.{c}");
                if let Some(p) = pre {
                    s.push('-');
                    s.push_str(&p.join("."));
                }
                if let Some(m) = meta {
                    s.push('+');
                    s.push_str(&m);
                }
                s
            })
    }

    proptest! {
        #[test]
        fn roundtrips(s in version_strategy()) {
            let x = v(&s);
            prop_assert_eq!(x.to_string(), s.clone());
            prop_assert_eq!(Version::parse(x.as_str()).unwrap(), x);
        }

        #[test]
        fn sort_key_agrees_with_ord(a in version_strategy(), b in version_strategy()) {
            let (x, y) = (v(&a), v(&b));
            prop_assert_eq!(x.cmp(&y), x.sort_key().cmp(&y.sort_key()), "{} vs {}", a, b);
            prop_assert_eq!(x.cmp(&y) == Ordering::Equal, x == y);
        }

        #[test]
        fn order_is_transitive(a in version_strategy(), b in version_strategy(), c in version_strategy()) {
            let (x, y, z) = (v(&a), v(&b), v(&c));
            if x <= y && y <= z {
                prop_assert!(x <= z);
            }
        }

        #[test]
        fn latest_is_independent_of_order(mut vs in proptest::collection::vec(version_strategy(), 1..12)) {
            let max1 = vs.iter().map(|s| v(s)).max().unwrap();
            vs.reverse();
            let max2 = vs.iter().map(|s| v(s)).max().unwrap();
            prop_assert_eq!(max1, max2);
        }

        #[test]
        fn precedence_ignores_metadata(s in version_strategy(), m in "[a-z0-9]{1,4}") {
            let base = s.split('+').next().unwrap().to_string();
            let x = v(&base);
            let y = v(&format!("{base}+{m}"));
            prop_assert_eq!(x.cmp_precedence(&y), Ordering::Equal);
            prop_assert!(x < y);
        }
    }
}

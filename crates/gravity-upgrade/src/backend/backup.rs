//! Gravity's etcd backup file (`gravitational/etcd-backup`), with a trailer.
//!
//! JSON lines: first `{"version":"1"}`, then one `{"v3":{"key":B64,
//! "value":B64,...}}` record per key, then (an addition of gravity-rs, spec
//! package-store §12 h) a trailer `{"trailer":{"count":N,"sha256":HEX}}`
//! where the digest covers every line before the trailer, newlines
//! included. [`decode`] refuses files without a trailer, with a wrong count
//! or digest, or of another version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A v3 key record (fields as in etcd-backup; zero fields omitted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct V3Record {
    /// The key, base64.
    pub key: String,
    /// Creation revision.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub create_revision: i64,
    /// Last modification revision.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mod_revision: i64,
    /// Key version.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: i64,
    /// The value, base64.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// The trailer record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trailer {
    /// Key records in the file.
    pub count: usize,
    /// Hex sha256 of every line before the trailer.
    pub sha256: String,
}

#[derive(Serialize, Deserialize)]
struct VersionLine {
    version: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Line {
    V3(V3Record),
    Trailer(Trailer),
}

/// Encodes `data` (key → value) as a backup file; returns the text and the trailer.
pub fn encode(data: &BTreeMap<String, String>) -> (String, Trailer) {
    let raw: BTreeMap<String, Vec<u8>> = data
        .iter()
        .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
        .collect();
    encode_raw(&raw)
}

/// Decodes a backup file whose values are all UTF-8 text.
pub fn decode(text: &str) -> Result<BTreeMap<String, String>, String> {
    decode_raw(text)?
        .into_iter()
        .map(|(k, v)| {
            String::from_utf8(v)
                .map(|v| (k.clone(), v))
                .map_err(|_| format!("the value of {k:?} is not UTF-8"))
        })
        .collect()
}

/// Encodes keys with values of any bytes (Kubernetes keeps protobuf in
/// etcd) as a backup file; returns the text and the trailer.
pub fn encode_raw(data: &BTreeMap<String, Vec<u8>>) -> (String, Trailer) {
    let mut out = String::new();
    out.push_str(
        &serde_json::to_string(&VersionLine {
            version: "1".into(),
        })
        .expect("json"),
    );
    out.push('\n');
    for (i, (k, v)) in data.iter().enumerate() {
        let rec = Line::V3(V3Record {
            key: b64_encode(k.as_bytes()),
            create_revision: i as i64 + 2,
            mod_revision: i as i64 + 2,
            version: 1,
            value: b64_encode(v),
        });
        out.push_str(&serde_json::to_string(&rec).expect("json"));
        out.push('\n');
    }
    let trailer = Trailer {
        count: data.len(),
        sha256: hex::encode(Sha256::digest(out.as_bytes())),
    };
    out.push_str(&serde_json::to_string(&Line::Trailer(trailer.clone())).expect("json"));
    out.push('\n');
    (out, trailer)
}

/// Decodes a backup file, refusing truncated or altered ones; values are
/// returned as bytes.
pub fn decode_raw(text: &str) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut hasher = Sha256::new();
    let mut lines = text.split_inclusive('\n');
    let first = lines.next().ok_or("the file is empty")?;
    let v: VersionLine = serde_json::from_str(first.trim_end())
        .map_err(|e| format!("the first line is not a version record: {e}"))?;
    if v.version != "1" {
        return Err(format!("Unsupported backup version {:?}", v.version));
    }
    hasher.update(first.as_bytes());
    let mut data = BTreeMap::new();
    let mut count = 0usize;
    for (n, line) in lines.enumerate() {
        if !line.ends_with('\n') {
            return Err(format!(
                "line {} is cut short (the file is truncated)",
                n + 2
            ));
        }
        let rec: Line = serde_json::from_str(line.trim_end())
            .map_err(|e| format!("line {} is not a backup record: {e}", n + 2))?;
        match rec {
            Line::V3(r) => {
                hasher.update(line.as_bytes());
                let k = b64_decode(&r.key).ok_or_else(|| format!("line {}: bad key", n + 2))?;
                let v = b64_decode(&r.value).ok_or_else(|| format!("line {}: bad value", n + 2))?;
                let k = String::from_utf8(k)
                    .map_err(|_| format!("line {}: key is not UTF-8", n + 2))?;
                data.insert(k, v);
                count += 1;
            }
            Line::Trailer(t) => {
                if t.count != count {
                    return Err(format!(
                        "the trailer counts {} keys but the file holds {count}",
                        t.count
                    ));
                }
                let digest = hex::encode(hasher.finalize());
                if digest != t.sha256 {
                    return Err(format!(
                        "digest mismatch: the trailer says {} but the records hash to {digest}",
                        t.sha256
                    ));
                }
                return Ok(data);
            }
        }
    }
    Err(format!(
        "no trailer record after {count} keys (the file is truncated)"
    ))
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn b64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding required).
pub fn b64_decode(text: &str) -> Option<Vec<u8>> {
    let t = text.as_bytes();
    if !t.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(t.len() / 4 * 3);
    for chunk in t.chunks(4) {
        let mut n = 0u32;
        let mut pad = 0;
        for &c in chunk {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                b'=' => {
                    pad += 1;
                    0
                }
                _ => return None,
            };
            n = (n << 6) | u32::from(v);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad.min(2)]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_values_round_trip() {
        let mut d = BTreeMap::new();
        d.insert(
            "/registry/pods/p".to_string(),
            vec![0x6b, 0x38, 0x73, 0, 0xff],
        );
        let (text, t) = encode_raw(&d);
        assert_eq!(t.count, 1);
        assert_eq!(decode_raw(&text).unwrap(), d);
        // The text API refuses what it cannot represent, naming the key.
        assert!(decode(&text).unwrap_err().contains("/registry/pods/p"));
    }

    #[test]
    fn round_trip_and_refusals() {
        let mut d = BTreeMap::new();
        d.insert("/registry/a".to_string(), "1".to_string());
        d.insert("/planet/x<y>".to_string(), "hello wörld".to_string());
        let (text, t) = encode(&d);
        assert_eq!(t.count, 2);
        assert!(text.starts_with("{\"version\":\"1\"}\n"));
        assert_eq!(decode(&text).unwrap(), d);
        // Truncated at a line boundary: no trailer.
        let cut: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
        assert!(decode(&cut).unwrap_err().contains("truncated"));
        // Altered value.
        let altered = text.replacen("\"MQ==\"", "\"Mg==\"", 1);
        assert!(decode(&altered).unwrap_err().contains("digest mismatch"));
        for s in ["", "a", "ab", "abc", "abcd"] {
            assert_eq!(b64_decode(&b64_encode(s.as_bytes())).unwrap(), s.as_bytes());
        }
        assert_eq!(b64_encode(b"ab"), "YWI=");
    }
}

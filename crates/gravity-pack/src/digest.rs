//! SHA-256 content digests.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::PackError;

/// A SHA-256 digest; its text form (64 lower-case hex digits) names a blob.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Parses 64 lower-case hex digits (anything else is refused, so a digest
    /// can safely become a file name).
    pub fn parse(s: &str) -> Result<Self, PackError> {
        if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(PackError::BadDigest(s.to_string()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| PackError::BadDigest(s.to_string()))?;
        Ok(Digest(out))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        Digest(sha2::Sha256::digest(bytes).into())
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The fan-out directory name: the first three hex digits.
    pub fn fanout(&self) -> String {
        self.to_hex()[..3].to_string()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl FromStr for Digest {
    type Err = PackError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl TryFrom<String> for Digest {
    type Error = PackError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Digest::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.to_hex()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_validates() {
        let d = Digest::of(b"abc");
        assert_eq!(
            d.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Digest::parse(&d.to_hex()).unwrap(), d);
        assert_eq!(d.fanout(), "ba7");
        for bad in [
            "",
            "../etc/passwd",
            &d.to_hex().to_uppercase(),
            &d.to_hex()[1..],
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
    }
}

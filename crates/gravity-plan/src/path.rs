//! Validated phase paths such as `/masters/node-1/drain`.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest path accepted, in bytes. Longer paths are refused so that a
/// hostile plan file cannot make every lookup hash megabytes.
pub const MAX_PATH_LEN: usize = 1024;

/// An absolute, validated phase path.
///
/// The root is `/`; every other path is a `/`-separated list of non-empty
/// segments made of ASCII letters, digits and `-_.:@+=` (enough for host
/// names, IP addresses and versions), with no `.` or `..` segment and no
/// trailing slash. Cloning is cheap (the text is shared).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhasePath(Arc<str>);

/// Why a phase path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path is empty.
    #[error("phase path is empty; phase paths look like \"/init\" or \"/masters/node-1/drain\"")]
    Empty,
    /// The path does not start with `/`.
    #[error("phase path {0:?} is not absolute; phase paths start with \"/\", e.g. \"/init\"")]
    NotAbsolute(String),
    /// The path has an empty segment (`//` or a trailing `/`).
    #[error("phase path {0:?} has an empty segment")]
    EmptySegment(String),
    /// A segment is `.` or `..`.
    #[error("phase path {0:?} has a \".\" or \"..\" segment")]
    DotSegment(String),
    /// A segment holds a character that is not allowed.
    #[error(
        "phase path {path:?} has the character {ch:?}, which is not allowed (use letters, digits and -_.:@+=)"
    )]
    BadChar {
        /// The offending path.
        path: String,
        /// The offending character.
        ch: char,
    },
    /// The path is longer than [`MAX_PATH_LEN`].
    #[error("phase path is {0} bytes long, more than the {MAX_PATH_LEN} allowed")]
    TooLong(usize),
    /// A relative segment handed to [`PhasePath::join`] is not a single segment.
    #[error("{0:?} is not a single path segment")]
    BadSegment(String),
}

fn valid_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@' | '+' | '=')
}

fn check_segment(path: &str, seg: &str) -> Result<(), PathError> {
    if seg.is_empty() {
        return Err(PathError::EmptySegment(path.to_string()));
    }
    if seg == "." || seg == ".." {
        return Err(PathError::DotSegment(path.to_string()));
    }
    if let Some(ch) = seg.chars().find(|c| !valid_char(*c)) {
        return Err(PathError::BadChar {
            path: path.to_string(),
            ch,
        });
    }
    Ok(())
}

impl PhasePath {
    /// The root path `/`, the parent of every top-level phase.
    pub fn root() -> Self {
        PhasePath(Arc::from("/"))
    }

    /// Parses and validates an absolute path.
    pub fn parse(s: &str) -> Result<Self, PathError> {
        if s.is_empty() {
            return Err(PathError::Empty);
        }
        if s.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong(s.len()));
        }
        if !s.starts_with('/') {
            return Err(PathError::NotAbsolute(s.to_string()));
        }
        if s == "/" {
            return Ok(Self::root());
        }
        for seg in s[1..].split('/') {
            check_segment(s, seg)?;
        }
        Ok(PhasePath(Arc::from(s)))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the root `/`.
    pub fn is_root(&self) -> bool {
        &*self.0 == "/"
    }

    /// The parent path; `None` for the root.
    pub fn parent(&self) -> Option<PhasePath> {
        if self.is_root() {
            return None;
        }
        let i = self.0.rfind('/').unwrap_or(0);
        if i == 0 {
            Some(Self::root())
        } else {
            Some(PhasePath(Arc::from(&self.0[..i])))
        }
    }

    /// The last segment (`drain` for `/masters/node-1/drain`); empty for the root.
    pub fn name(&self) -> &str {
        match self.0.rfind('/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    /// Number of segments: 0 for the root, 1 for `/init`.
    pub fn depth(&self) -> usize {
        if self.is_root() {
            0
        } else {
            self.0.matches('/').count()
        }
    }

    /// Appends one segment: `/masters` + `node-1` = `/masters/node-1`.
    pub fn join(&self, segment: &str) -> Result<PhasePath, PathError> {
        if segment.contains('/') {
            return Err(PathError::BadSegment(segment.to_string()));
        }
        let s = if self.is_root() {
            format!("/{segment}")
        } else {
            format!("{}/{segment}", self.0)
        };
        check_segment(&s, segment)?;
        if s.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong(s.len()));
        }
        Ok(PhasePath(Arc::from(s)))
    }

    /// Resolves `rel` against `self` as a directory: an absolute `rel` is
    /// parsed as is; a relative one (`drain`, `node-1/drain`) is appended.
    pub fn resolve(&self, rel: &str) -> Result<PhasePath, PathError> {
        if rel.starts_with('/') {
            return PhasePath::parse(rel);
        }
        if rel.is_empty() {
            return Err(PathError::Empty);
        }
        let mut p = self.clone();
        for seg in rel.split('/') {
            p = p.join(seg)?;
        }
        Ok(p)
    }

    /// Whether `self` is a strict ancestor of `other`.
    pub fn is_ancestor_of(&self, other: &PhasePath) -> bool {
        if self.is_root() {
            return !other.is_root();
        }
        other.0.len() > self.0.len()
            && other.0.starts_with(&*self.0)
            && other.0.as_bytes()[self.0.len()] == b'/'
    }

    /// The strict ancestors of this path, nearest first, ending with `/`.
    pub fn ancestors(&self) -> impl Iterator<Item = PhasePath> + '_ {
        std::iter::successors(self.parent(), |p| p.parent())
    }
}

impl fmt::Display for PhasePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PhasePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::str::FromStr for PhasePath {
    type Err = PathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PhasePath::parse(s)
    }
}

impl AsRef<str> for PhasePath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for PhasePath {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Serialize for PhasePath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PhasePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PhasePath::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_navigates() {
        let p = PhasePath::parse("/masters/node-1/drain").unwrap();
        assert_eq!(p.name(), "drain");
        assert_eq!(p.depth(), 3);
        assert_eq!(p.parent().unwrap().as_str(), "/masters/node-1");
        assert_eq!(
            p.ancestors().map(|a| a.to_string()).collect::<Vec<_>>(),
            ["/masters/node-1", "/masters", "/"]
        );
        assert_eq!(PhasePath::root().parent(), None);
        assert_eq!(
            PhasePath::parse("/init").unwrap().parent().unwrap(),
            PhasePath::root()
        );
        assert_eq!(
            PhasePath::root()
                .join("init")
                .unwrap()
                .join("n1")
                .unwrap()
                .as_str(),
            "/init/n1"
        );
        let base = PhasePath::parse("/masters").unwrap();
        assert_eq!(
            base.resolve("node-1/drain").unwrap().as_str(),
            "/masters/node-1/drain"
        );
        assert_eq!(base.resolve("/init").unwrap().as_str(), "/init");
    }

    #[test]
    fn ancestry() {
        let a = PhasePath::parse("/masters").unwrap();
        let b = PhasePath::parse("/masters/n1").unwrap();
        let c = PhasePath::parse("/masters-2").unwrap();
        assert!(a.is_ancestor_of(&b));
        assert!(!a.is_ancestor_of(&c));
        assert!(!a.is_ancestor_of(&a));
        assert!(PhasePath::root().is_ancestor_of(&a));
    }

    #[test]
    fn refuses_bad_paths() {
        for bad in [
            "", "init", "/init/", "//init", "/a/../b", "/a/./b", "/a b", "/a\\b", "/é",
        ] {
            assert!(PhasePath::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(PhasePath::parse(&format!("/{}", "a".repeat(2000))).is_err());
        assert!(PhasePath::root().join("a/b").is_err());
        assert!(PhasePath::root().join("..").is_err());
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = PhasePath::parse("init").unwrap_err().to_string();
        assert!(e.contains("start with \"/\""), "{e}");
    }
}

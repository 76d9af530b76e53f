//! Package locators: `repository/name:version`.
//!
//! Parsing follows Gravity's strict form used by every `gravity package`
//! argument: exactly one `/`; the name is `[A-Za-z0-9._-]+` up to the first
//! `:`; the version is the rest and must parse as a [`Version`]; the
//! repository must be a domain-like name (see [`validate_repository`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::version::{Version, VersionError};

/// `repository/name:version`, validated.
///
/// Two locators are equal when all three parts are byte-equal (`1.0.0` and
/// `1.0.0+` are different packages).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Locator {
    repository: String,
    name: String,
    version: Version,
}

/// Why a locator, repository or name was rejected. The message quotes the
/// offending text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LocatorError {
    /// The text is not of the form `repository/name:version`.
    #[error(
        "invalid package locator {0:?}: expected repository/name:version, e.g. gravitational.io/planet:5.5.54-11312"
    )]
    Syntax(String),
    /// The repository is not a valid domain-like name.
    #[error(
        "invalid repository {repository:?} in package locator {text:?}: {reason} (expected a domain name such as gravitational.io)"
    )]
    Repository {
        /// The whole text.
        text: String,
        /// The repository part.
        repository: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The name is empty or holds characters other than `[A-Za-z0-9._-]`.
    #[error(
        "invalid package name {name:?} in package locator {text:?}: use letters, digits, '.', '_' and '-'"
    )]
    Name {
        /// The whole text.
        text: String,
        /// The name part.
        name: String,
    },
    /// The version does not parse.
    #[error("invalid package locator {text:?}: {source}")]
    Version {
        /// The whole text.
        text: String,
        /// The version error.
        #[source]
        source: VersionError,
    },
}

/// Checks a repository name with Gravity's "domain name" rules: 1..255
/// bytes of ASCII letters, digits, `_`, `-`, `.`; at least one letter or `_`;
/// labels between dots 1..63 long (no leading dot, no `..`); no `-` right
/// after `.` nor `.` right after `-`; no trailing `-`. A trailing `.` and
/// upper case are accepted.
pub fn validate_repository(repo: &str) -> Result<(), &'static str> {
    let b = repo.as_bytes();
    if b.is_empty() {
        return Err("it is empty");
    }
    if b.len() > 255 {
        return Err("it is longer than 255 characters");
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
    {
        return Err("only letters, digits, '_', '-' and '.' are allowed");
    }
    if !b.iter().any(|c| c.is_ascii_alphabetic() || *c == b'_') {
        return Err("it needs at least one letter");
    }
    let trimmed = repo.strip_suffix('.').unwrap_or(repo);
    for label in trimmed.split('.') {
        if label.is_empty() {
            return Err("it has an empty label (a leading dot or '..')");
        }
        if label.len() > 63 {
            return Err("a label is longer than 63 characters");
        }
    }
    if repo.contains(".-") || repo.contains("-.") {
        return Err("'-' and '.' may not be adjacent");
    }
    if repo.ends_with('-') {
        return Err("it ends with '-'");
    }
    Ok(())
}

/// Checks a package name: non-empty, `[A-Za-z0-9._-]` only.
pub fn validate_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

impl Locator {
    /// Parses `repository/name:version`.
    pub fn parse(text: &str) -> Result<Self, LocatorError> {
        let syntax = || LocatorError::Syntax(text.to_string());
        let (repo, rest) = text.split_once('/').ok_or_else(syntax)?;
        if repo.is_empty() || rest.is_empty() || rest.contains('/') {
            return Err(syntax());
        }
        let (name, version) = rest.split_once(':').ok_or_else(syntax)?;
        if version.is_empty() {
            return Err(syntax());
        }
        Self::build(text, repo, name, version)
    }

    /// Builds a locator from its parts, validating each.
    pub fn new(repository: &str, name: &str, version: &str) -> Result<Self, LocatorError> {
        let text = format!("{repository}/{name}:{version}");
        Self::build(&text, repository, name, version)
    }

    fn build(text: &str, repo: &str, name: &str, version: &str) -> Result<Self, LocatorError> {
        validate_repository(repo).map_err(|reason| LocatorError::Repository {
            text: text.to_string(),
            repository: repo.to_string(),
            reason,
        })?;
        if !validate_name(name) {
            return Err(LocatorError::Name {
                text: text.to_string(),
                name: name.to_string(),
            });
        }
        let version = Version::parse(version).map_err(|source| LocatorError::Version {
            text: text.to_string(),
            source,
        })?;
        Ok(Locator {
            repository: repo.to_string(),
            name: name.to_string(),
            version,
        })
    }

    /// The repository (`gravitational.io`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The package name (`planet`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version.
    pub fn version(&self) -> &Version {
        &self.version
    }

    /// The same package at version `0.0.0`, as used in `config-package-for`
    /// labels (`gravitational.io/planet:0.0.0`).
    pub fn zero_version(&self) -> Locator {
        Locator {
            repository: self.repository.clone(),
            name: self.name.clone(),
            version: Version::zero(),
        }
    }

    /// The same package at another version.
    pub fn with_version(&self, version: Version) -> Locator {
        Locator {
            repository: self.repository.clone(),
            name: self.name.clone(),
            version,
        }
    }
}

impl fmt::Display for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.repository, self.name, self.version)
    }
}

impl fmt::Debug for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Locator({self})")
    }
}

/// Orders by repository, then name (bytewise), then version (see
/// [`Version`]'s `Ord`): the order of `gravity package list`.
impl Ord for Locator {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.repository
            .cmp(&other.repository)
            .then_with(|| self.name.cmp(&other.name))
            .then_with(|| self.version.cmp(&other.version))
    }
}

impl PartialOrd for Locator {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl FromStr for Locator {
    type Err = LocatorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Locator::parse(s)
    }
}

impl TryFrom<String> for Locator {
    type Error = LocatorError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Locator::parse(&s)
    }
}

impl From<Locator> for String {
    fn from(l: Locator) -> String {
        l.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn valid_locators() {
        for ok in [
            "gravitational.io/planet:5.5.54-11312",
            "example.com/package:0.0.1+something",
            "localhost/x:1.0.0",
            "example.com/a.b_c-d:1.2.3-rc.1+build:7",
            "eagerbooth1735/planet-10.162.0.5-secrets:5.5.47-11312",
            "example.com/planet-config-10138185examplecom:5.5.54-11312+1596339382",
            "Example.COM./x:1.0.0",
            "_x/y:1.0.0",
        ] {
            let l = Locator::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(l.to_string(), ok);
        }
        let l = Locator::parse("example.com/a.b_c-d:1.2.3-rc.1+build:7").unwrap();
        assert_eq!(l.name(), "a.b_c-d");
        assert_eq!(l.version().as_str(), "1.2.3-rc.1+build:7");
    }

    #[test]
    fn invalid_locators_are_quoted() {
        for bad in [
            "example:0.0.1",
            "example.com/example:blabla",
            "example.com/example com:0.0.2",
            "",
            "-:.",
            "a/b/c:1.0.0",
            "example.com/pkg",
            "example.com/pkg:1.0",
            "example.com/pkg:v1.0.0",
            "123/pkg:1.0.0",
            "example.com/:1.0.0",
            "/pkg:1.0.0",
            ".example.com/pkg:1.0.0",
            "example..com/pkg:1.0.0",
            "example-.com/pkg:1.0.0",
            "example.-com/pkg:1.0.0",
            "example-/pkg:1.0.0",
            "exa mple/pkg:1.0.0",
            "example.com/pkg:",
        ] {
            let e = Locator::parse(bad).expect_err(bad);
            assert!(e.to_string().contains(&format!("{bad:?}")), "{bad}: {e}");
        }
        let long_label = format!("{}.com/x:1.0.0", "a".repeat(64));
        assert!(Locator::parse(&long_label).is_err());
        let ok_label = format!("{}.com/x:1.0.0", "a".repeat(63));
        assert!(Locator::parse(&ok_label).is_ok());
    }

    #[test]
    fn zero_version() {
        let l = Locator::parse("gravitational.io/planet:5.5.54-11312").unwrap();
        assert_eq!(
            l.zero_version().to_string(),
            "gravitational.io/planet:0.0.0"
        );
    }

    #[test]
    fn serde_as_string() {
        let l = Locator::parse("gravitational.io/planet:5.5.54-11312").unwrap();
        let j = serde_json::to_string(&l).unwrap();
        assert_eq!(j, "\"gravitational.io/planet:5.5.54-11312\"");
        assert_eq!(serde_json::from_str::<Locator>(&j).unwrap(), l);
        assert!(serde_json::from_str::<Locator>("\"nope\"").is_err());
    }

    proptest! {
        #[test]
        fn roundtrip(repo in "[a-z][a-z0-9]{0,8}(\\.[a-z][a-z0-9]{0,5}){0,2}",
                     name in "[A-Za-z0-9._-]{1,12}",
                     ver in "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}(-[a-z0-9.]{1,6})?(\\+[a-z0-9:]{1,6})?") {
            let text = format!("{repo}/{name}:{ver}");
            let l = Locator::parse(&text).unwrap();
            prop_assert_eq!(l.repository(), repo.as_str());
            prop_assert_eq!(l.name(), name.as_str());
            prop_assert_eq!(l.to_string(), text.clone());
            prop_assert_eq!(Locator::new(&repo, &name, &ver).unwrap(), l);
        }

        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = Locator::parse(&s);
        }
    }
}

//! Package records.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::labels::{Labels, human_size};
use crate::locator::Locator;

/// Kind of package: plain content, or an application of some kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageType {
    /// Opaque content (binaries, configuration, orbit packages).
    #[default]
    Plain,
    /// A user application (`gravitational.io/telekube`).
    User,
    /// A system service application (`dns-app`, `logging-app`).
    Service,
    /// A runtime application (`gravitational.io/kubernetes`).
    Runtime,
}

impl PackageType {
    /// Whether this is an application package.
    pub fn is_application(self) -> bool {
        self != PackageType::Plain
    }
}

/// What the store knows about a package: everything but its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// `repository/name:version`.
    pub locator: Locator,
    /// Content size in bytes.
    pub size_bytes: u64,
    /// SHA-256 of the content; names the blob.
    pub sha256: Digest,
    /// When the package was created (UTC).
    pub created: DateTime<Utc>,
    /// Plain or application.
    #[serde(rename = "type", default)]
    pub package_type: PackageType,
    /// The application manifest (`app.yaml`), for application packages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: Labels,
}

impl Envelope {
    /// The `gravity package list` line without the leading `* `:
    /// `<locator> <size>[ <labels sorted by key>]`.
    pub fn list_line(&self) -> String {
        let mut s = format!("{} {}", self.locator, human_size(self.size_bytes));
        if !self.labels.is_empty() {
            s.push(' ');
            s.push_str(&self.labels.to_string());
        }
        s
    }
}

/// `<locator> <size>`, Gravity's envelope text.
impl fmt::Display for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.locator, human_size(self.size_bytes))
    }
}

/// Options for creating a package.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackageOptions {
    /// Labels of the new package.
    pub labels: Labels,
    /// Plain or application.
    pub package_type: PackageType,
    /// Application manifest.
    pub manifest: Option<String>,
    /// Creation time; now if absent.
    pub created: Option<DateTime<Utc>>,
}

impl PackageOptions {
    /// Options with these labels and nothing else.
    pub fn labels(labels: Labels) -> Self {
        PackageOptions {
            labels,
            ..Default::default()
        }
    }
}

/// Renders envelopes (sorted as the store lists them) in the exact
/// `gravity package list` format: per repository a blank line, `[repo]`, a
/// line of dashes as long as `[repo]`, a blank line, then one
/// `* repo/name:version SIZE labels` line per package.
pub fn render_list(envelopes: &[Envelope]) -> String {
    let mut out = String::new();
    let mut current: Option<&str> = None;
    for e in envelopes {
        let repo = e.locator.repository();
        if current != Some(repo) {
            out.push('\n');
            out.push('[');
            out.push_str(repo);
            out.push_str("]\n");
            out.push_str(&"-".repeat(repo.len() + 2));
            out.push_str("\n\n");
            current = Some(repo);
        }
        out.push_str("* ");
        out.push_str(&e.list_line());
        out.push('\n');
    }
    out
}

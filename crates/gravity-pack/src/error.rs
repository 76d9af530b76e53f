//! Errors of the package store and cluster images.

use std::path::PathBuf;

use crate::digest::Digest;
use crate::locator::{Locator, LocatorError};

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// The package does not exist in the store.
    #[error("package {0} not found (see `gravity package list`)")]
    NotFound(Box<Locator>),
    /// A package with that locator exists already.
    #[error("package {0} already exists (delete it first, or use upsert)")]
    AlreadyExists(Box<Locator>),
    /// The destination holds the locator with different content.
    #[error(
        "package {locator} already exists with different content (sha256 {existing}, new {new}); delete it first or overwrite it"
    )]
    Conflict {
        /// The package.
        locator: Box<Locator>,
        /// Content hash in the store.
        existing: Digest,
        /// Content hash offered.
        new: Digest,
    },
    /// A blob's content does not match its name (or recorded size).
    #[error(
        "blob {digest} is corrupted ({detail}); run `gravity package verify` and re-import the packages that use it"
    )]
    CorruptBlob {
        /// The expected hash.
        digest: Digest,
        /// What differs.
        detail: String,
    },
    /// A package's blob is missing from disk.
    #[error(
        "blob {digest} is missing from {path}; run `gravity package verify` and re-import the packages that use it"
    )]
    MissingBlob {
        /// The hash.
        digest: Digest,
        /// Where it should be.
        path: PathBuf,
    },
    /// Content offered for a known hash and size does not match.
    #[error("content for {locator} does not match its manifest: {detail}")]
    ContentMismatch {
        /// The package.
        locator: Box<Locator>,
        /// What differs.
        detail: String,
    },
    /// Another process has the store open.
    #[error(
        "package store {path} is in use by another process ({holder}); wait for it to finish and retry"
    )]
    Locked {
        /// The store directory.
        path: PathBuf,
        /// Who holds it, as far as known.
        holder: String,
    },
    /// A malformed locator.
    #[error(transparent)]
    Locator(#[from] LocatorError),
    /// A node name that cannot name a store directory.
    #[error("invalid node name {0:?}: use letters, digits, '.', '-' and '_'")]
    BadNodeName(String),
    /// A hash string that is not 64 lower-case hex digits.
    #[error("invalid sha256 {0:?}: expected 64 lower-case hex digits")]
    BadDigest(String),
    /// A cluster image was refused.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Stored metadata is damaged or of an unknown format.
    #[error("package store metadata is damaged: {0}")]
    Corrupt(String),
    /// The metadata database failed.
    #[error("{context}: {source}")]
    Db {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: Box<redb::Error>,
    },
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl PackError {
    /// A closure wrapping an I/O error with context, for `map_err`.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> PackError {
        let context = context.into();
        move |source| {
            // A corrupted blob surfaces through `Read` as an io::Error; give
            // it back its type.
            if source
                .get_ref()
                .is_some_and(|e| e.downcast_ref::<CorruptBlobSignal>().is_some())
            {
                let sig = source
                    .into_inner()
                    .and_then(|e| e.downcast::<CorruptBlobSignal>().ok())
                    .expect("checked");
                return PackError::CorruptBlob {
                    digest: sig.digest,
                    detail: sig.detail,
                };
            }
            PackError::Io { context, source }
        }
    }

    /// Converts an `io::Error` from reading package content: a corrupted
    /// blob detected by a verifying reader becomes [`PackError::CorruptBlob`],
    /// anything else [`PackError::Io`] with `context`.
    pub fn from_io(context: impl Into<String>, e: std::io::Error) -> PackError {
        PackError::io(context)(e)
    }

    /// A closure wrapping a database error with context, for `map_err`.
    pub(crate) fn db<E: Into<redb::Error>>(
        context: impl Into<String>,
    ) -> impl FnOnce(E) -> PackError {
        let context = context.into();
        move |e| PackError::Db {
            context,
            source: Box::new(e.into()),
        }
    }
}

/// Carried inside an `io::Error` when a verifying reader finds that a blob
/// does not match its hash; converted back to [`PackError::CorruptBlob`].
#[derive(Debug, thiserror::Error)]
#[error("blob {digest} is corrupted ({detail})")]
pub struct CorruptBlobSignal {
    /// The expected hash.
    pub digest: Digest,
    /// What differs.
    pub detail: String,
}

/// Why a cluster image was refused. Nothing of a refused image becomes
/// visible in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// An entry path is absolute, has `..`, or is otherwise unsafe.
    #[error("refusing cluster image: entry {path:?} has an unsafe path ({reason})")]
    UnsafePath {
        /// The entry path as stored.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A symlink, hard link, device, FIFO or other non-regular entry.
    #[error(
        "refusing cluster image: entry {path:?} is a {kind}, only regular files and directories are allowed"
    )]
    ForbiddenEntry {
        /// The entry path.
        path: String,
        /// Its type.
        kind: String,
    },
    /// An entry that the manifest does not list.
    #[error("refusing cluster image: entry {path:?} is not listed in the image manifest")]
    Unlisted {
        /// The entry path.
        path: String,
    },
    /// An entry that appears twice.
    #[error("refusing cluster image: entry {path:?} appears more than once")]
    Duplicate {
        /// The entry path.
        path: String,
    },
    /// The manifest names a blob the archive does not hold.
    #[error(
        "refusing cluster image: package {locator} needs blob {digest}, which the image does not contain"
    )]
    MissingBlob {
        /// A package that needs it.
        locator: Box<Locator>,
        /// The blob.
        digest: Digest,
    },
    /// A blob's content does not match its name or manifest size.
    #[error("refusing cluster image: blob {digest} {detail}")]
    BlobMismatch {
        /// The blob.
        digest: Digest,
        /// What differs.
        detail: String,
    },
    /// The archive ends early or an entry's size exceeds the data.
    #[error(
        "refusing cluster image: the archive is truncated or damaged ({detail}); copy it again"
    )]
    Truncated {
        /// What was found.
        detail: String,
    },
    /// The manifest is missing, not first, or does not parse.
    #[error("refusing cluster image: {0}")]
    BadManifest(String),
}

pub(crate) type Result<T, E = PackError> = std::result::Result<T, E>;

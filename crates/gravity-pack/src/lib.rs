//! Content-addressed package store and cluster images for gravity-rs.
//!
//! - [`Locator`] (`repository/name:version`), [`Version`] (Gravity's
//!   lenient semver with a total, iteration-order independent "latest"),
//!   [`Labels`] and [`human_size`] (Gravity's `12kB`, `4.6kB`).
//! - [`BlobStore`]: blobs named by sha256 under `blobs/<3 hex>/<sha256>`,
//!   written through a temporary file with fsync and rename, verified on read.
//! - [`PackageStore`], implemented by [`LocalStore`] over a redb metadata
//!   index with per-blob reference counts; [`LocalStore::verify`] and
//!   [`LocalStore::gc`].
//! - [`pull()`]: copy packages between stores, transferring only blobs the
//!   destination lacks.
//! - [`image`]: cluster images (tar, optionally gzip) — build/export and a
//!   streaming, verifying import that refuses hostile archives.
//! - [`location`]: where the cluster store and the node stores live in a
//!   state directory.
//!
//! The library never prints; long operations report through [`Progress`].

pub mod blob;
pub mod digest;
pub mod error;
pub mod image;
pub mod labels;
pub mod location;
pub mod locator;
pub mod package;
pub mod progress;
pub mod pull;
pub mod store;
pub mod version;

pub use blob::{BlobInfo, BlobReader, BlobStore};
pub use digest::Digest;
pub use error::{ImageError, PackError};
pub use labels::{Labels, human_size};
pub use location::{StoreSelector, open_store};
pub use locator::{Locator, LocatorError};
pub use package::{Envelope, PackageOptions, PackageType, render_list};
pub use progress::{NoProgress, Progress, ProgressEvent};
pub use pull::{PullOptions, PullReport, pull};
pub use store::{
    GcReport, LocalStore, PackageStore, Problem, PutOutcome, VerifyReport, WriteMode, resolve,
};
pub use version::Version;

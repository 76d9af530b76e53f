//! Cluster images: a tar file (optionally gzip-compressed, detected on read)
//! that carries an application and every package it needs.
//!
//! ```text
//! gravity-image.json                    the manifest (always the first entry)
//! packages/  packages/blobs/  packages/blobs/<3 hex>/      directories
//! packages/blobs/<3 hex>/<sha256>       one entry per distinct blob
//! ```
//!
//! The manifest ([`ImageManifest`]) names the application and lists every
//! package with its locator, labels, type, manifest, size and sha256 — all the
//! importer needs. Because it comes first, an import knows each blob's hash
//! and size before reading it.
//!
//! [`export_image`] writes an image streaming, through a temporary file in
//! the target directory that is synced and renamed into place.
//! [`import_image`] streams an image into a [`LocalStore`]: each blob the
//! store lacks is hashed while it is copied into `tmp/` and refused on
//! mismatch; blobs the store already has are skipped (seeked over for an
//! uncompressed file, so such an import costs time in proportion to the
//! metadata). Only when every entry has been checked are the blobs moved
//! into place and all packages committed in one transaction: nothing of a
//! refused image becomes visible.
//!
//! Refused, with an [`ImageError`]: absolute paths, `..`, symlinks, hard
//! links, devices, FIFOs and other special entries, entries not listed in the
//! manifest, duplicate entries, a manifest that points to a blob the archive
//! lacks, truncated archives and size fields larger than the data, blobs whose
//! content does not match their name. Nothing is ever written outside the
//! store: entry paths are only compared against the manifest, never used to
//! create files.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::blob::{BUF, BlobInfo, StagedBlob, sync_dir, tmp_name};
use crate::digest::Digest;
use crate::error::{ImageError, PackError, Result};
use crate::locator::Locator;
use crate::package::Envelope;
use crate::progress::{Progress, ProgressEvent};
use crate::pull::CountingReader;
use crate::store::{LocalStore, PackageStore, PutOutcome, WriteMode};

/// Name of the manifest entry.
pub const MANIFEST_NAME: &str = "gravity-image.json";
/// Value of [`ImageManifest::format`].
pub const FORMAT: &str = "gravity-rs cluster image 1";
const MAX_MANIFEST: u64 = 64 << 20;

/// The manifest of a cluster image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageManifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// The application the image carries (`gravitational.io/telekube:5.5.50-dev.9`).
    pub application: Locator,
    /// Every package of the image (the application included).
    pub packages: Vec<Envelope>,
}

impl ImageManifest {
    /// Total content bytes of the distinct blobs.
    pub fn blob_bytes(&self) -> u64 {
        self.blobs().values().sum()
    }

    /// Distinct blobs and their sizes.
    pub fn blobs(&self) -> BTreeMap<Digest, u64> {
        self.packages
            .iter()
            .map(|e| (e.sha256, e.size_bytes))
            .collect()
    }

    fn validate(&self) -> Result<(), ImageError> {
        let bad = |s: String| Err(ImageError::BadManifest(s));
        if self.format != FORMAT {
            return bad(format!(
                "unknown image format {:?} (expected {FORMAT:?})",
                self.format
            ));
        }
        let mut seen = BTreeSet::new();
        let mut sizes = BTreeMap::new();
        for e in &self.packages {
            if !seen.insert(e.locator.clone()) {
                return bad(format!("package {} is listed twice", e.locator));
            }
            if let Some(s) = sizes.insert(e.sha256, e.size_bytes)
                && s != e.size_bytes
            {
                return bad(format!("blob {} is listed with two sizes", e.sha256));
            }
        }
        if !seen.contains(&self.application) {
            return bad(format!(
                "application {} is not among the image's packages",
                self.application
            ));
        }
        Ok(())
    }
}

/// What goes into an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// The application; added to `packages` if not listed.
    pub application: Locator,
    /// The packages.
    pub packages: Vec<Locator>,
    /// Gzip the tar (packages are usually compressed already, so this
    /// rarely pays off).
    pub compress: bool,
}

/// Result of [`export_image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportReport {
    /// The manifest written.
    pub manifest: ImageManifest,
    /// Size of the image file.
    pub file_size: u64,
}

fn blob_entry_path(d: &Digest) -> String {
    let h = d.to_hex();
    format!("packages/blobs/{}/{}", &h[..3], h)
}

fn dir_header(path: &str) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    h.set_mtime(0);
    let _ = h.set_path(path);
    h.set_cksum();
    h
}

fn file_header(size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_mtime(mtime);
    h
}

/// Builds a cluster image from packages of `store` and writes it to `path`
/// (through a temporary file in the same directory, synced and renamed).
/// Blobs are read through verifying readers, so a damaged source blob fails
/// the export instead of producing a damaged image.
pub fn export_image(
    store: &dyn PackageStore,
    spec: &ImageSpec,
    path: &Path,
    progress: &dyn Progress,
) -> Result<ExportReport> {
    let mut locators = spec.packages.clone();
    if !locators.contains(&spec.application) {
        locators.push(spec.application.clone());
    }
    locators.sort();
    locators.dedup();
    let packages = locators
        .iter()
        .map(|l| store.envelope(l))
        .collect::<Result<Vec<_>>>()?;
    let manifest = ImageManifest {
        format: FORMAT.to_string(),
        application: spec.application.clone(),
        packages,
    };
    // One locator per blob to read it through.
    let mut sources: BTreeMap<Digest, &Envelope> = BTreeMap::new();
    for e in &manifest.packages {
        sources.entry(e.sha256).or_insert(e);
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let tmp = dir.join(format!(".{file_name}.{}.tmp", tmp_name()));
    let ctx = || format!("cannot write {}", tmp.display());
    let file = File::create(&tmp).map_err(PackError::io(ctx()))?;
    let guard = TmpGuard(Some(tmp.clone()));
    let out = BufWriter::with_capacity(BUF, file);
    let out: Box<dyn Write> = if spec.compress {
        Box::new(flate2::write::GzEncoder::new(
            out,
            flate2::Compression::fast(),
        ))
    } else {
        Box::new(out)
    };
    let mut tar = tar::Builder::new(out);
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    let json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
    let mut h = file_header(json.len() as u64, now);
    tar.append_data(&mut h, MANIFEST_NAME, json.as_slice())
        .map_err(PackError::io(ctx()))?;
    for d in ["packages/", "packages/blobs/"] {
        tar.append(&dir_header(d), io::empty())
            .map_err(PackError::io(ctx()))?;
    }
    progress.on(ProgressEvent::Begin {
        label: "exporting",
        total_bytes: sources.values().map(|e| e.size_bytes).sum(),
    });
    let mut last_fan = String::new();
    for (d, env) in &sources {
        let fan = d.fanout();
        if fan != last_fan {
            tar.append(&dir_header(&format!("packages/blobs/{fan}/")), io::empty())
                .map_err(PackError::io(ctx()))?;
            last_fan = fan;
        }
        let (_, mut reader) = store.read(&env.locator)?;
        let mut counting = CountingReader {
            inner: &mut reader,
            progress,
        };
        let mut h = file_header(env.size_bytes, env.created.timestamp().max(0) as u64);
        tar.append_data(&mut h, blob_entry_path(d), &mut counting)
            .map_err(PackError::io(format!("cannot export {}", env.locator)))?;
    }
    progress.on(ProgressEvent::End);
    let mut out = tar.into_inner().map_err(PackError::io(ctx()))?;
    out.flush().map_err(PackError::io(ctx()))?;
    drop(out);
    let file = File::options()
        .write(true)
        .open(&tmp)
        .map_err(PackError::io(ctx()))?;
    file.sync_all().map_err(PackError::io(ctx()))?;
    let file_size = file.metadata().map_err(PackError::io(ctx()))?.len();
    drop(file);
    fs::rename(&tmp, path).map_err(PackError::io(format!("cannot write {}", path.display())))?;
    guard.disarm();
    sync_dir(&dir)?;
    Ok(ExportReport {
        manifest,
        file_size,
    })
}

struct TmpGuard(Option<PathBuf>);

impl TmpGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// How to import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportOptions {
    /// What to do with packages the store has already:
    /// [`WriteMode::KeepIdentical`] (default) skips identical content (labels
    /// in the store are kept) and refuses different content.
    pub mode: WriteMode,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            mode: WriteMode::KeepIdentical,
        }
    }
}

/// What [`import_image`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// The image's manifest.
    pub manifest: ImageManifest,
    /// Each package and what happened to it.
    pub packages: Vec<(Locator, PutOutcome)>,
    /// Blobs copied into the store.
    pub blobs_transferred: usize,
    /// Bytes copied into the store.
    pub bytes_transferred: u64,
    /// Blobs the store already had (skipped).
    pub blobs_present: usize,
}

/// Reads only the manifest of an image.
pub fn read_manifest(path: &Path) -> Result<ImageManifest> {
    let (reader, _) = open_image(path)?;
    let mut archive = tar::Archive::new(reader);
    let mut entries = archive.entries().map_err(truncated)?;
    read_manifest_entry(&mut entries)
}

fn truncated(e: io::Error) -> PackError {
    ImageError::Truncated {
        detail: e.to_string(),
    }
    .into()
}

/// Opens an image, detecting gzip from its magic bytes.
fn open_image(path: &Path) -> Result<(Box<dyn Read>, bool)> {
    let mut f =
        File::open(path).map_err(PackError::io(format!("cannot open {}", path.display())))?;
    let mut magic = [0u8; 2];
    let n = f
        .read(&mut magic)
        .map_err(PackError::io(format!("cannot read {}", path.display())))?;
    f.seek(SeekFrom::Start(0))
        .map_err(PackError::io(format!("cannot read {}", path.display())))?;
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok((
            Box::new(flate2::read::GzDecoder::new(BufReader::with_capacity(
                BUF, f,
            ))),
            true,
        ))
    } else {
        Ok((Box::new(BufReader::with_capacity(BUF, f)), false))
    }
}

fn read_manifest_entry<R: Read>(entries: &mut tar::Entries<'_, R>) -> Result<ImageManifest> {
    let mut first = match entries.next() {
        Some(e) => e.map_err(truncated)?,
        None => {
            return Err(ImageError::BadManifest(format!(
                "the archive is empty; expected {MANIFEST_NAME} first"
            ))
            .into());
        }
    };
    let path = String::from_utf8_lossy(&first.path_bytes()).into_owned();
    check_path(&path)?;
    check_type(&first, &path)?;
    if path != MANIFEST_NAME || first.header().entry_type() != tar::EntryType::Regular {
        return Err(ImageError::BadManifest(format!(
            "the first entry is {path:?}, expected {MANIFEST_NAME} (is this a cluster image?)"
        ))
        .into());
    }
    let size = first.size();
    if size > MAX_MANIFEST {
        return Err(
            ImageError::BadManifest(format!("{MANIFEST_NAME} is larger than 64 MiB")).into(),
        );
    }
    let mut json = Vec::with_capacity(size as usize);
    (&mut first)
        .take(MAX_MANIFEST)
        .read_to_end(&mut json)
        .map_err(truncated)?;
    if (json.len() as u64) < size {
        return Err(ImageError::Truncated {
            detail: format!("{MANIFEST_NAME} has {} of {size} bytes", json.len()),
        }
        .into());
    }
    let manifest: ImageManifest = serde_json::from_slice(&json)
        .map_err(|e| ImageError::BadManifest(format!("{MANIFEST_NAME} does not parse: {e}")))?;
    manifest.validate()?;
    Ok(manifest)
}

fn check_path(path: &str) -> Result<(), ImageError> {
    let unsafe_path = |reason| {
        Err(ImageError::UnsafePath {
            path: path.to_string(),
            reason,
        })
    };
    if path.starts_with('/') {
        return unsafe_path("absolute path");
    }
    if path.split('/').any(|c| c == "..") {
        return unsafe_path("contains '..'");
    }
    if path.contains('\\') || path.contains('\0') {
        return unsafe_path("contains '\\' or NUL");
    }
    Ok(())
}

fn check_type<R: Read>(entry: &tar::Entry<'_, R>, path: &str) -> Result<(), ImageError> {
    use tar::EntryType as T;
    let kind = match entry.header().entry_type() {
        T::Regular | T::Directory => return Ok(()),
        T::Symlink => "symbolic link",
        T::Link => "hard link",
        T::Char => "character device",
        T::Block => "block device",
        T::Fifo => "FIFO",
        T::Continuous => "contiguous file",
        T::GNUSparse => "sparse file",
        _ => "special entry",
    };
    Err(ImageError::ForbiddenEntry {
        path: path.to_string(),
        kind: kind.to_string(),
    })
}

/// Imports a cluster image into `store` (see the module docs for what is
/// checked). Returns what was transferred and what was already there.
pub fn import_image(
    store: &LocalStore,
    path: &Path,
    opts: ImportOptions,
    progress: &dyn Progress,
) -> Result<ImportReport> {
    let (reader, gz) = open_image(path)?;
    if gz {
        let mut archive = tar::Archive::new(reader);
        let entries = archive.entries().map_err(truncated)?;
        import_entries(store, entries, None, opts, progress)
    } else {
        let file =
            File::open(path).map_err(PackError::io(format!("cannot open {}", path.display())))?;
        let len = file
            .metadata()
            .map_err(PackError::io(format!("cannot stat {}", path.display())))?
            .len();
        let mut archive = tar::Archive::new(BufReader::with_capacity(BUF, file));
        let entries = archive.entries_with_seek().map_err(truncated)?;
        import_entries(store, entries, Some(len), opts, progress)
    }
}

fn import_entries<R: Read>(
    store: &LocalStore,
    mut entries: tar::Entries<'_, R>,
    file_len: Option<u64>,
    opts: ImportOptions,
    progress: &dyn Progress,
) -> Result<ImportReport> {
    let manifest = read_manifest_entry(&mut entries)?;
    let app = &manifest.application;
    progress.on(ProgressEvent::Step(&format!(
        "Importing cluster image {} v{}",
        app.name(),
        app.version()
    )));
    let blobs = manifest.blobs();
    let mut expected: BTreeMap<String, (Digest, u64)> = BTreeMap::new();
    let mut dirs: BTreeSet<String> =
        ["packages/".to_string(), "packages/blobs/".to_string()].into();
    let mut missing_bytes = 0;
    let mut present: BTreeSet<Digest> = BTreeSet::new();
    for (d, s) in &blobs {
        expected.insert(blob_entry_path(d), (*d, *s));
        dirs.insert(format!("packages/blobs/{}/", d.fanout()));
        if store.has_blob(d)? {
            present.insert(*d);
        } else {
            missing_bytes += s;
        }
    }
    progress.on(ProgressEvent::Begin {
        label: "importing",
        total_bytes: missing_bytes,
    });
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut staged: Vec<StagedBlob> = Vec::new();
    let mut bytes_transferred = 0;
    for entry in entries {
        let mut entry = entry.map_err(truncated)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        check_path(&raw)?;
        check_type(&entry, &raw)?;
        if !seen.insert(raw.clone()) {
            return Err(ImageError::Duplicate { path: raw }.into());
        }
        if entry.header().entry_type() == tar::EntryType::Directory {
            let dir = if raw.ends_with('/') {
                raw.clone()
            } else {
                format!("{raw}/")
            };
            if !dirs.contains(&dir) {
                return Err(ImageError::Unlisted { path: raw }.into());
            }
            continue;
        }
        let Some(&(digest, size)) = expected.get(&raw) else {
            return Err(ImageError::Unlisted { path: raw }.into());
        };
        let header_size = entry.size();
        if header_size != size {
            return Err(ImageError::BlobMismatch {
                digest,
                detail: format!("has {header_size} bytes in the archive, the manifest says {size}"),
            }
            .into());
        }
        if let Some(len) = file_len
            && entry.raw_file_position().saturating_add(header_size) > len
        {
            return Err(ImageError::Truncated {
                detail: format!("entry {raw} claims {header_size} bytes past the end of the file"),
            }
            .into());
        }
        if present.contains(&digest) {
            continue; // the store has it; the entry's data is skipped
        }
        let mut counted = CountedReader {
            inner: &mut entry,
            n: 0,
        };
        let res = store
            .blobs()
            .stage(&mut counted, Some(BlobInfo { digest, size }), progress);
        let n = counted.n;
        match res {
            Ok(s) => {
                bytes_transferred += size;
                staged.push(s);
            }
            Err(PackError::CorruptBlob { .. }) | Err(PackError::Io { .. }) if n < header_size => {
                return Err(ImageError::Truncated {
                    detail: format!("entry {raw} has {n} of {header_size} bytes"),
                }
                .into());
            }
            Err(PackError::CorruptBlob { detail, .. }) => {
                return Err(ImageError::BlobMismatch { digest, detail }.into());
            }
            Err(e) => return Err(e),
        }
    }
    progress.on(ProgressEvent::End);
    for e in &manifest.packages {
        if !seen.contains(&blob_entry_path(&e.sha256)) {
            return Err(ImageError::MissingBlob {
                locator: Box::new(e.locator.clone()),
                digest: e.sha256,
            }
            .into());
        }
    }
    let blobs_transferred = staged.len();
    let records: Vec<&Envelope> = manifest.packages.iter().collect();
    let outcomes = store.commit_with_blobs(staged, &records, opts.mode)?;
    let packages = manifest
        .packages
        .iter()
        .map(|e| e.locator.clone())
        .zip(outcomes)
        .collect();
    Ok(ImportReport {
        packages,
        blobs_transferred,
        bytes_transferred,
        blobs_present: present.len(),
        manifest,
    })
}

struct CountedReader<'a, R> {
    inner: &'a mut R,
    n: u64,
}

impl<R: Read> Read for CountedReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

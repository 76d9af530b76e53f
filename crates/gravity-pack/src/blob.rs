//! The content-addressed blob store on disk.
//!
//! ```text
//! <root>/blobs/<first 3 hex>/<sha256>   one file per distinct content
//! <root>/tmp/<pid>-<nanos>-<n>          blobs being written
//! ```
//!
//! A write streams through the SHA-256 hasher into a file in `tmp/`, which
//! is synced, then renamed to its name under `blobs/` and the directory is
//! synced. A blob therefore either exists completely under its hash or not at
//! all; identical content is stored once. Temporary files whose writer
//! process is gone (a crash, a kill) are removed when the store is opened.
//!
//! Reads go through [`BlobReader`], which hashes what it returns and fails
//! with an error at the end of the stream if the content does not match the
//! name (or the expected size): a damaged blob is an error, never silent data.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::{CorruptBlobSignal, PackError, Result};
use crate::progress::{Progress, ProgressEvent};

/// Buffer size for streaming copies: large enough for full hashing speed,
/// small enough to keep memory bounded.
pub(crate) const BUF: usize = 1 << 20;
/// Buffers queued between the hashing reader and the writer of a blob.
const DEPTH: usize = 4;
/// Bytes a blob writer writes between two `fdatasync`s (early write-back).
const SYNC_EVERY: usize = 32 << 20;

/// A blob's identity: hash and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobInfo {
    /// SHA-256 of the content.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
}

/// The blob store rooted at a directory.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(PackError::io(format!(
            "cannot sync directory {}",
            dir.display()
        )))
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A unique temporary name that records the writer's pid.
pub(crate) fn tmp_name() -> String {
    format!(
        "{}-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes entries of `dir` left by processes that are gone. Returns how
/// many were removed.
pub(crate) fn sweep_tmp(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    let entries =
        fs::read_dir(dir).map_err(PackError::io(format!("cannot list {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(PackError::io(format!("cannot list {}", dir.display())))?;
        let name = entry.file_name();
        let owner = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if owner.is_some_and(|pid| pid != std::process::id() && pid_alive(pid)) {
            continue;
        }
        if owner == Some(std::process::id()) {
            continue;
        }
        let path = entry.path();
        let res = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match res {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(PackError::io(format!("cannot remove {}", path.display()))(
                    e,
                ));
            }
        }
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// A blob written to `tmp/`, hashed and synced, not yet under its name.
/// Dropping it removes the temporary file.
#[derive(Debug)]
pub struct StagedBlob {
    path: Option<PathBuf>,
    info: BlobInfo,
}

impl StagedBlob {
    /// Hash and size of the staged content.
    pub fn info(&self) -> BlobInfo {
        self.info
    }
}

impl Drop for StagedBlob {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// Outcome of checking one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobCheck {
    /// The content matches the name (and size).
    Ok,
    /// The file is absent.
    Missing,
    /// The content does not match.
    Corrupt(String),
}

impl BlobStore {
    /// Opens (creating if needed) a blob store in `root`, removing temporary
    /// files left by writers that are gone.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for d in ["blobs", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p)
                .map_err(PackError::io(format!("cannot create {}", p.display())))?;
        }
        let s = BlobStore { root };
        sweep_tmp(&s.tmp_dir())?;
        Ok(s)
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Where the blob named `digest` lives.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.root.join("blobs").join(&hex[..3]).join(hex)
    }

    /// Whether a blob with that hash is present (its content is not checked).
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Streams `data` into the store and returns its hash and size.
    pub fn write(&self, data: &mut dyn Read) -> Result<BlobInfo> {
        let staged = self.stage(data, None, &crate::progress::NoProgress)?;
        self.commit(staged)
    }

    /// Streams `data` into a temporary file through the hasher and syncs it.
    /// With `expected`, content whose size or hash differs is refused (the
    /// size is checked while copying, so an over-long stream stops early).
    pub fn stage(
        &self,
        data: &mut dyn Read,
        expected: Option<BlobInfo>,
        progress: &dyn Progress,
    ) -> Result<StagedBlob> {
        let path = self.tmp_dir().join(tmp_name());
        let ctx = || format!("cannot write {}", path.display());
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(PackError::io(ctx()))?;
        let mut staged = StagedBlob {
            path: Some(path.clone()),
            info: BlobInfo {
                digest: Digest([0; 32]),
                size: 0,
            },
        };
        // Hashing and writing overlap: this thread reads and hashes while a
        // writer thread writes and starts write-back every `SYNC_EVERY`
        // bytes, so the disk works from the first megabyte instead of
        // flushing everything at the final sync. Memory stays bounded by
        // the `DEPTH + 1` buffers in flight, whatever the size.
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize)>(DEPTH);
        let (empty_tx, empty_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(DEPTH + 1);
        for _ in 0..=DEPTH {
            let _ = empty_tx.send(vec![0u8; BUF]);
        }
        let (read_result, file) = std::thread::scope(|scope| {
            let writer = scope.spawn(move || -> io::Result<File> {
                let mut since_sync = 0usize;
                for (buf, n) in full_rx {
                    file.write_all(&buf[..n])?;
                    since_sync += n;
                    if since_sync >= SYNC_EVERY {
                        file.sync_data()?;
                        since_sync = 0;
                    }
                    // The reader may have stopped already; then the
                    // buffer is simply dropped.
                    let _ = empty_tx.send(buf);
                }
                Ok(file)
            });
            let read_result = (|| -> Result<()> {
                loop {
                    // A closed channel means the writer stopped on an
                    // error, which its join below reports.
                    let Ok(mut buf) = empty_rx.recv() else {
                        return Ok(());
                    };
                    let n = loop {
                        match data.read(&mut buf) {
                            Ok(n) => break n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(e) => {
                                return Err(PackError::io("cannot read package content")(e));
                            }
                        }
                    };
                    if n == 0 {
                        return Ok(());
                    }
                    size += n as u64;
                    if let Some(exp) = expected
                        && size > exp.size
                    {
                        return Err(PackError::CorruptBlob {
                            digest: exp.digest,
                            detail: format!(
                                "content is longer than the expected {} bytes",
                                exp.size
                            ),
                        });
                    }
                    hasher.update(&buf[..n]);
                    if full_tx.send((buf, n)).is_err() {
                        return Ok(());
                    }
                    progress.on(ProgressEvent::Bytes(n as u64));
                }
            })();
            drop(full_tx);
            let file = writer
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the blob writer thread panicked")));
            (read_result, file)
        });
        read_result?;
        let file = file.map_err(PackError::io(ctx()))?;
        let digest = Digest(hasher.finalize().into());
        if let Some(exp) = expected {
            if size != exp.size {
                return Err(PackError::CorruptBlob {
                    digest: exp.digest,
                    detail: format!("content has {size} bytes, expected {}", exp.size),
                });
            }
            if digest != exp.digest {
                return Err(PackError::CorruptBlob {
                    digest: exp.digest,
                    detail: format!("content hashes to {digest}"),
                });
            }
        }
        file.sync_all().map_err(PackError::io(ctx()))?;
        staged.info = BlobInfo { digest, size };
        Ok(staged)
    }

    /// Moves a staged blob under its name (fsync of the directories
    /// included). If a blob of that hash and size exists, the staged copy
    /// is dropped instead.
    pub fn commit(&self, mut staged: StagedBlob) -> Result<BlobInfo> {
        let info = staged.info;
        let dst = self.path(&info.digest);
        if fs::metadata(&dst).is_ok_and(|m| m.is_file() && m.len() == info.size) {
            return Ok(info); // `staged` drops its temporary file
        }
        let fan = dst.parent().expect("blob path has a parent").to_path_buf();
        if !fan.is_dir() {
            match fs::create_dir(&fan) {
                Ok(()) => sync_dir(&self.root.join("blobs"))?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(PackError::io(format!("cannot create {}", fan.display()))(e)),
            }
        }
        let src = staged.path.take().expect("staged blob not yet committed");
        if let Err(e) = fs::rename(&src, &dst) {
            staged.path = Some(src);
            return Err(PackError::io(format!(
                "cannot move blob to {}",
                dst.display()
            ))(e));
        }
        sync_dir(&fan)?;
        Ok(info)
    }

    /// Opens a blob for reading; the reader verifies hash and size at the
    /// end of the stream.
    pub fn open_blob(&self, digest: &Digest, size: Option<u64>) -> Result<BlobReader> {
        let path = self.path(digest);
        let file = File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                PackError::MissingBlob {
                    digest: *digest,
                    path: path.clone(),
                }
            } else {
                PackError::io(format!("cannot open {}", path.display()))(e)
            }
        })?;
        Ok(BlobReader {
            file,
            hasher: Some(Sha256::new()),
            digest: *digest,
            expected_size: size,
            read: 0,
        })
    }

    /// Re-hashes a blob.
    pub fn check(&self, digest: &Digest, size: Option<u64>) -> Result<BlobCheck> {
        let mut r = match self.open_blob(digest, size) {
            Ok(r) => r,
            Err(PackError::MissingBlob { .. }) => return Ok(BlobCheck::Missing),
            Err(e) => return Err(e),
        };
        match io::copy(&mut r, &mut io::sink()) {
            Ok(_) => Ok(BlobCheck::Ok),
            Err(e) => match PackError::io("")(e) {
                PackError::CorruptBlob { detail, .. } => Ok(BlobCheck::Corrupt(detail)),
                PackError::Io { source, .. } => Err(PackError::io(format!(
                    "cannot read {}",
                    self.path(digest).display()
                ))(source)),
                other => Err(other),
            },
        }
    }

    /// Removes a blob. Returns whether it existed.
    pub fn remove(&self, digest: &Digest) -> Result<bool> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Ok(()) => {
                if let Some(p) = path.parent() {
                    sync_dir(p)?;
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(PackError::io(format!("cannot remove {}", path.display()))(
                e,
            )),
        }
    }

    /// Every blob present on disk (files under `blobs/` whose names are
    /// valid hashes in the right fan-out directory), with their sizes.
    pub fn list(&self) -> Result<Vec<(Digest, u64)>> {
        let mut out = Vec::new();
        let blobs = self.root.join("blobs");
        let ctx = |p: &Path| format!("cannot list {}", p.display());
        for fan in fs::read_dir(&blobs).map_err(PackError::io(ctx(&blobs)))? {
            let fan = fan.map_err(PackError::io(ctx(&blobs)))?;
            if !fan.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let fan_path = fan.path();
            for f in fs::read_dir(&fan_path).map_err(PackError::io(ctx(&fan_path)))? {
                let f = f.map_err(PackError::io(ctx(&fan_path)))?;
                let Some(name) = f.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if let Ok(d) = Digest::parse(&name)
                    && fan.file_name().to_str() == Some(&name[..3])
                {
                    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                    out.push((d, len));
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Reads a blob and verifies its hash (and size) when the end is reached.
/// A mismatch is an `io::Error` of kind `InvalidData` that converts to
/// [`PackError::CorruptBlob`].
#[derive(Debug)]
pub struct BlobReader {
    file: File,
    hasher: Option<Sha256>,
    digest: Digest,
    expected_size: Option<u64>,
    read: u64,
}

impl BlobReader {
    fn corrupt(&self, detail: String) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            CorruptBlobSignal {
                digest: self.digest,
                detail,
            },
        )
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.file.read(buf)?;
        if n > 0 {
            self.read += n as u64;
            if let Some(h) = self.hasher.as_mut() {
                h.update(&buf[..n]);
            }
            if let Some(s) = self.expected_size
                && self.read > s
            {
                return Err(self.corrupt(format!("longer than the recorded {s} bytes")));
            }
            return Ok(n);
        }
        if let Some(h) = self.hasher.take() {
            if let Some(s) = self.expected_size
                && self.read != s
            {
                return Err(self.corrupt(format!("{} bytes, recorded {s}", self.read)));
            }
            let actual = Digest(h.finalize().into());
            if actual != self.digest {
                return Err(self.corrupt(format!("content hashes to {actual}")));
            }
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_dedupes_and_reads_verified() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let a = s.write(&mut &b"hello"[..]).unwrap();
        let b = s.write(&mut &b"hello"[..]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.digest, Digest::of(b"hello"));
        assert_eq!(s.list().unwrap(), vec![(a.digest, 5)]);
        assert_eq!(fs::read_dir(s.tmp_dir()).unwrap().count(), 0);
        let mut out = Vec::new();
        s.open_blob(&a.digest, Some(5))
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"hello");
        assert!(
            s.path(&a.digest)
                .starts_with(dir.path().join("blobs").join(&a.digest.to_hex()[..3]))
        );
    }

    #[test]
    fn corrupted_blob_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let a = s.write(&mut &b"hello world"[..]).unwrap();
        fs::write(s.path(&a.digest), b"hellO world").unwrap();
        let mut out = Vec::new();
        let e = s
            .open_blob(&a.digest, Some(a.size))
            .unwrap()
            .read_to_end(&mut out)
            .unwrap_err();
        assert!(
            matches!(PackError::io("x")(e), PackError::CorruptBlob { digest, .. } if digest == a.digest)
        );
        assert!(matches!(
            s.check(&a.digest, Some(a.size)).unwrap(),
            BlobCheck::Corrupt(_)
        ));
        fs::remove_file(s.path(&a.digest)).unwrap();
        assert_eq!(s.check(&a.digest, None).unwrap(), BlobCheck::Missing);
    }

    #[test]
    fn stage_refuses_mismatch_and_leaves_no_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let want = BlobInfo {
            digest: Digest::of(b"abc"),
            size: 3,
        };
        let e = s.stage(&mut &b"abd"[..], Some(want), &crate::progress::NoProgress);
        assert!(matches!(e, Err(PackError::CorruptBlob { .. })));
        let e = s.stage(&mut &b"abcd"[..], Some(want), &crate::progress::NoProgress);
        assert!(matches!(e, Err(PackError::CorruptBlob { .. })));
        assert_eq!(fs::read_dir(s.tmp_dir()).unwrap().count(), 0);
        assert!(!s.contains(&want.digest));
    }

    #[test]
    fn open_sweeps_tmp_of_dead_writers() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        // 999999999 is above any pid_max; a name without a pid has no owner.
        fs::write(s.tmp_dir().join("999999999-1-1"), b"partial").unwrap();
        fs::write(s.tmp_dir().join("junk"), b"partial").unwrap();
        let mine = s.tmp_dir().join(tmp_name());
        fs::write(&mine, b"in flight").unwrap();
        BlobStore::open(dir.path()).unwrap();
        let left: Vec<_> = fs::read_dir(s.tmp_dir()).unwrap().collect();
        assert_eq!(left.len(), 1, "only the live writer's file stays");
        assert!(mine.exists());
    }
}

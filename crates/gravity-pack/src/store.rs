//! The [`PackageStore`] trait and its local implementation, [`LocalStore`].
//!
//! # Layout
//!
//! ```text
//! <root>/format       "gravity-pack-store 1"
//! <root>/index.redb   metadata index (redb): packages, locators, blob reference counts
//! <root>/owner        who has the store open (pid, program, since), for error messages
//! <root>/blobs/...    the blob store (see [`crate::blob`])
//! <root>/tmp/         blobs being written
//! ```
//!
//! # Metadata index
//!
//! Three redb tables, always changed together in one write transaction:
//!
//! - `packages`: key = escaped repository ‖ escaped name ‖ [`Version::sort_key`],
//!   value = the JSON [`Envelope`]. The key order is the listing order
//!   (repository, name, version precedence), so listing a repository is one
//!   range scan and the latest version of a name is the last key of a range.
//! - `locators`: locator text → key in `packages`.
//! - `blob_refs`: sha256 → number of packages that use it. A blob is removed
//!   when its count drops to zero, decided in the same transaction as the
//!   metadata change (no scan of other packages, no delete-vs-create race).
//!
//! # Concurrency
//!
//! redb holds an exclusive lock on the database file for as long as it is
//! open. A [`LocalStore`] is meant to be opened for the duration of one
//! command (the CLI opens per command); a second process opening the same
//! store meanwhile gets [`PackError::Locked`] naming the holder recorded in
//! `owner`. Within one process a `LocalStore` is shared freely across threads
//! (`&self` methods, `Send + Sync`); redb serialises write transactions and
//! an in-process pin table keeps a blob that a writer is about to reference
//! from being removed by a concurrent delete or garbage collection.
//!
//! # Durability
//!
//! Content is durable (file and directory synced) before the metadata that
//! references it is committed, and redb commits are durable when they
//! return. After a crash the index is consistent; at worst a blob without a
//! package remains, which [`LocalStore::gc`] removes, and `tmp/` files of dead
//! writers are swept on open.
//!
//! The API is synchronous (blocking file I/O); from async code call it inside
//! `tokio::task::spawn_blocking`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::Utc;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::blob::{BlobCheck, BlobInfo, BlobStore, StagedBlob, sync_dir, tmp_name};
use crate::digest::Digest;
use crate::error::{PackError, Result};
use crate::labels::Labels;
use crate::locator::Locator;
use crate::package::{Envelope, PackageOptions};
use crate::progress::{NoProgress, Progress};
use crate::version::{Version, push_escaped};

const FORMAT: &str = "gravity-pack-store 1\n";
const PACKAGES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("packages");
const LOCATORS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("locators");
const REFS: TableDefinition<'_, &[u8], u64> = TableDefinition::new("blob_refs");

/// What to do when the locator being written exists already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Fail with [`PackError::AlreadyExists`].
    Create,
    /// Replace the metadata (and content); the old blob is freed if unused.
    Upsert,
    /// Keep the existing package if its content is the same (its labels are
    /// left alone); fail with [`PackError::Conflict`] if the content differs.
    KeepIdentical,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// A new package was created.
    Created,
    /// An existing package was replaced.
    Replaced,
    /// The package was there already with the same content; nothing changed.
    Unchanged,
}

/// A package store: packages named by [`Locator`], content in blobs named by
/// sha256, labels. Object safe, so stores of different kinds can be mixed
/// (`&dyn PackageStore`). All methods block.
pub trait PackageStore: Send + Sync {
    /// Creates a package from a content stream. Fails with
    /// [`PackError::AlreadyExists`] if the locator exists; leaves no blob
    /// behind on failure.
    fn create(
        &self,
        locator: &Locator,
        data: &mut dyn Read,
        opts: PackageOptions,
    ) -> Result<Envelope>;

    /// Creates or replaces a package.
    fn upsert(
        &self,
        locator: &Locator,
        data: &mut dyn Read,
        opts: PackageOptions,
    ) -> Result<Envelope>;

    /// Writes a package whose hash and size are known in advance (pull,
    /// image import). With `content`, the stream is verified against the
    /// envelope and refused on mismatch. Without it, the store must already
    /// hold that blob ([`PackError::MissingBlob`] otherwise).
    fn put(
        &self,
        envelope: &Envelope,
        content: Option<&mut dyn Read>,
        mode: WriteMode,
    ) -> Result<PutOutcome>;

    /// Writes many packages whose blobs the store already holds. Stores
    /// that can should do it in one durable transaction (all or nothing);
    /// the default writes them one by one.
    fn put_present(&self, envelopes: &[&Envelope], mode: WriteMode) -> Result<Vec<PutOutcome>> {
        envelopes
            .iter()
            .map(|env| self.put(env, None, mode))
            .collect()
    }

    /// Metadata of a package.
    fn envelope(&self, locator: &Locator) -> Result<Envelope>;

    /// Metadata and a content stream that verifies hash and size at its end.
    fn read(&self, locator: &Locator) -> Result<(Envelope, Box<dyn Read + Send>)>;

    /// Whether the store holds a blob with this hash.
    fn has_blob(&self, digest: &Digest) -> Result<bool>;

    /// Deletes a package; its blob goes when no other package uses it.
    fn delete(&self, locator: &Locator) -> Result<()>;

    /// Packages of one repository, or of all, ordered by repository, name
    /// and version precedence.
    fn list(&self, repository: Option<&str>) -> Result<Vec<Envelope>>;

    /// Names of the repositories that hold packages, sorted.
    fn repositories(&self) -> Result<Vec<String>>;

    /// All versions of `repository/name`, oldest first.
    fn versions(&self, repository: &str, name: &str) -> Result<Vec<Envelope>>;

    /// The latest version of `repository/name` (see [`Version`]'s order).
    fn latest(&self, repository: &str, name: &str) -> Result<Option<Envelope>>;

    /// Removes the `remove` keys, then sets the `add` pairs, in one
    /// transaction. Returns the updated envelope.
    fn update_labels(&self, locator: &Locator, add: &Labels, remove: &[String])
    -> Result<Envelope>;
}

/// A problem found by [`LocalStore::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A blob's content does not match its hash or size.
    CorruptBlob {
        /// The blob.
        digest: Digest,
        /// What differs.
        detail: String,
        /// Packages that use it.
        packages: Vec<Locator>,
    },
    /// A blob that packages reference is not on disk.
    MissingBlob {
        /// The blob.
        digest: Digest,
        /// Packages that use it.
        packages: Vec<Locator>,
    },
    /// The recorded reference count does not match the packages.
    RefCount {
        /// The blob.
        digest: Digest,
        /// The count in the index.
        recorded: u64,
        /// The number of packages that reference it.
        actual: u64,
    },
    /// Packages share a hash but disagree on its size.
    SizeDisagreement {
        /// The blob.
        digest: Digest,
        /// The packages.
        packages: Vec<Locator>,
    },
    /// An index entry that does not decode or point anywhere.
    BadIndexEntry(String),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |p: &[Locator]| {
            p.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Problem::CorruptBlob {
                digest,
                detail,
                packages,
            } => write!(
                f,
                "blob {digest} is corrupted ({detail}); used by {}",
                list(packages)
            ),
            Problem::MissingBlob { digest, packages } => {
                write!(f, "blob {digest} is missing; used by {}", list(packages))
            }
            Problem::RefCount {
                digest,
                recorded,
                actual,
            } => write!(
                f,
                "blob {digest} has reference count {recorded} but {actual} packages use it"
            ),
            Problem::SizeDisagreement { digest, packages } => write!(
                f,
                "packages {} share blob {digest} but record different sizes",
                list(packages)
            ),
            Problem::BadIndexEntry(s) => write!(f, "bad index entry: {s}"),
        }
    }
}

/// Result of [`LocalStore::verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Packages checked.
    pub packages: usize,
    /// Blobs re-hashed.
    pub blobs: usize,
    /// Bytes re-hashed.
    pub bytes: u64,
    /// What is wrong (empty when the store is sound).
    pub problems: Vec<Problem>,
    /// Blobs on disk that no package uses (harmless; `gc` removes them).
    pub unreferenced: Vec<Digest>,
}

impl VerifyReport {
    /// Whether no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Result of [`LocalStore::gc`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs removed, with their sizes.
    pub removed: Vec<(Digest, u64)>,
    /// Temporary files of dead writers removed.
    pub tmp_removed: usize,
}

/// The local package store: a blob store plus a redb metadata index.
#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
    blobs: BlobStore,
    db: Database,
    pins: Mutex<HashMap<Digest, usize>>,
}

/// Keeps a blob from being removed while a writer is about to reference it.
struct Pin<'a> {
    store: &'a LocalStore,
    digests: Vec<Digest>,
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        let mut pins = self.store.pins.lock().expect("pins lock");
        for d in &self.digests {
            if let Some(n) = pins.get_mut(d) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(d);
                }
            }
        }
    }
}

fn repo_prefix(repo: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(repo.len() + 2);
    push_escaped(&mut k, repo.as_bytes());
    k
}

fn name_prefix(repo: &str, name: &str) -> Vec<u8> {
    let mut k = repo_prefix(repo);
    push_escaped(&mut k, name.as_bytes());
    k
}

fn index_key(loc: &Locator) -> Vec<u8> {
    let mut k = name_prefix(loc.repository(), loc.name());
    k.extend_from_slice(&loc.version().sort_key());
    k
}

/// The smallest key greater than every key starting with `prefix` (a
/// prefix made by `push_escaped` ends with `0x00 0x01`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut e = prefix.to_vec();
    let last = e.last_mut().expect("non-empty prefix");
    *last += 1;
    e
}

/// The repository part of an index key.
fn key_repo(key: &[u8]) -> Option<(String, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < key.len() {
        if key[i] == 0 {
            match key.get(i + 1) {
                Some(0xff) => {
                    out.push(0);
                    i += 2;
                }
                Some(1) => return String::from_utf8(out).ok().map(|s| (s, i + 2)),
                _ => return None,
            }
        } else {
            out.push(key[i]);
            i += 1;
        }
    }
    None
}

fn decode(bytes: &[u8]) -> Result<Envelope> {
    serde_json::from_slice(bytes).map_err(|e| PackError::Corrupt(format!("package record: {e}")))
}

fn encode(env: &Envelope) -> Vec<u8> {
    serde_json::to_vec(env).expect("envelope serializes")
}

fn holder_description() -> String {
    let args: Vec<String> = std::env::args().collect();
    format!(
        "pid {} ({}) since {}",
        std::process::id(),
        args.join(" "),
        Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    )
}

impl LocalStore {
    /// Opens (creating if needed) the store in `root`. Fails with
    /// [`PackError::Locked`] if another process has it open. Temporary
    /// files of writers that died are removed.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root)
            .map_err(PackError::io(format!("cannot create {}", root.display())))?;
        let format = root.join("format");
        match fs::read_to_string(&format) {
            Ok(s) if s == FORMAT => {}
            Ok(s) => {
                return Err(PackError::Corrupt(format!(
                    "{} says {:?}, expected {:?}: not a package store of this version",
                    format.display(),
                    s.trim(),
                    FORMAT.trim()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_atomic(&format, FORMAT.as_bytes())?;
            }
            Err(e) => {
                return Err(PackError::io(format!("cannot read {}", format.display()))(
                    e,
                ));
            }
        }
        let db_path = root.join("index.redb");
        let db = match Database::create(&db_path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                let holder = fs::read_to_string(root.join("owner"))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "unknown process".to_string());
                return Err(PackError::Locked { path: root, holder });
            }
            Err(e) => {
                return Err(PackError::db(format!("cannot open {}", db_path.display()))(
                    e,
                ));
            }
        };
        // Best effort, and not synced: only used to name the holder in
        // `Locked` errors (a store is opened per command, so this must
        // stay cheap).
        let _ = write_unsynced(&root.join("owner"), holder_description().as_bytes());
        // Create the tables once; opening an initialised store commits
        // nothing (a commit is a sync).
        let initialised = db.begin_read().is_ok_and(|r| {
            r.open_table(PACKAGES).is_ok()
                && r.open_table(LOCATORS).is_ok()
                && r.open_table(REFS).is_ok()
        });
        if !initialised {
            let txn = db
                .begin_write()
                .map_err(PackError::db("cannot initialise index"))?;
            {
                txn.open_table(PACKAGES)
                    .map_err(PackError::db("cannot initialise index"))?;
                txn.open_table(LOCATORS)
                    .map_err(PackError::db("cannot initialise index"))?;
                txn.open_table(REFS)
                    .map_err(PackError::db("cannot initialise index"))?;
            }
            txn.commit()
                .map_err(PackError::db("cannot initialise index"))?;
        }
        let blobs = BlobStore::open(&root)?;
        Ok(LocalStore {
            root,
            blobs,
            db,
            pins: Mutex::new(HashMap::new()),
        })
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    fn pin(&self, digests: impl IntoIterator<Item = Digest>) -> Pin<'_> {
        let digests: Vec<Digest> = digests.into_iter().collect();
        let mut pins = self.pins.lock().expect("pins lock");
        for d in &digests {
            *pins.entry(*d).or_default() += 1;
        }
        Pin {
            store: self,
            digests,
        }
    }

    /// Removes the blob if no package references it and no writer has it
    /// pinned.
    fn remove_if_unreferenced(&self, digest: &Digest) -> Result<bool> {
        let pins = self.pins.lock().expect("pins lock");
        if pins.contains_key(digest) {
            return Ok(false);
        }
        if self.ref_count(digest)? > 0 {
            return Ok(false);
        }
        let removed = self.blobs.remove(digest)?;
        drop(pins);
        Ok(removed)
    }

    fn ref_count(&self, digest: &Digest) -> Result<u64> {
        let txn = self
            .db
            .begin_read()
            .map_err(PackError::db("cannot read index"))?;
        let t = txn
            .open_table(REFS)
            .map_err(PackError::db("cannot read index"))?;
        Ok(t.get(&digest.0[..])
            .map_err(PackError::db("cannot read index"))?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    fn lookup(&self, locator: &Locator) -> Result<Option<Envelope>> {
        let txn = self
            .db
            .begin_read()
            .map_err(PackError::db("cannot read index"))?;
        let t = txn
            .open_table(PACKAGES)
            .map_err(PackError::db("cannot read index"))?;
        let v = t
            .get(index_key(locator).as_slice())
            .map_err(PackError::db("cannot read index"))?;
        v.map(|v| decode(v.value())).transpose()
    }

    /// Writes envelopes in one transaction. Returns the outcome of each and
    /// the blobs whose reference count dropped to zero.
    fn write_records(
        &self,
        envelopes: &[&Envelope],
        mode: WriteMode,
    ) -> Result<(Vec<PutOutcome>, Vec<Digest>)> {
        let ctx = "cannot update the package index";
        let txn = self.db.begin_write().map_err(PackError::db(ctx))?;
        let mut outcomes = Vec::with_capacity(envelopes.len());
        let mut freed = Vec::new();
        {
            let mut packages = txn.open_table(PACKAGES).map_err(PackError::db(ctx))?;
            let mut locators = txn.open_table(LOCATORS).map_err(PackError::db(ctx))?;
            let mut refs = txn.open_table(REFS).map_err(PackError::db(ctx))?;
            for env in envelopes {
                let key = index_key(&env.locator);
                let existing = packages
                    .get(key.as_slice())
                    .map_err(PackError::db(ctx))?
                    .map(|v| decode(v.value()))
                    .transpose()?;
                let outcome = match (&existing, mode) {
                    (None, _) => PutOutcome::Created,
                    (Some(_), WriteMode::Create) => {
                        return Err(PackError::AlreadyExists(Box::new(env.locator.clone())));
                    }
                    (Some(old), WriteMode::KeepIdentical) => {
                        if old.sha256 == env.sha256 && old.size_bytes == env.size_bytes {
                            outcomes.push(PutOutcome::Unchanged);
                            continue;
                        }
                        return Err(PackError::Conflict {
                            locator: Box::new(env.locator.clone()),
                            existing: old.sha256,
                            new: env.sha256,
                        });
                    }
                    (Some(_), WriteMode::Upsert) => PutOutcome::Replaced,
                };
                if let Some(old) = existing {
                    let n = refs
                        .get(&old.sha256.0[..])
                        .map_err(PackError::db(ctx))?
                        .map(|v| v.value())
                        .unwrap_or(0);
                    if n <= 1 {
                        refs.remove(&old.sha256.0[..]).map_err(PackError::db(ctx))?;
                        freed.push(old.sha256);
                    } else {
                        refs.insert(&old.sha256.0[..], n - 1)
                            .map_err(PackError::db(ctx))?;
                    }
                }
                let n = refs
                    .get(&env.sha256.0[..])
                    .map_err(PackError::db(ctx))?
                    .map(|v| v.value())
                    .unwrap_or(0);
                refs.insert(&env.sha256.0[..], n + 1)
                    .map_err(PackError::db(ctx))?;
                freed.retain(|d| *d != env.sha256);
                packages
                    .insert(key.as_slice(), encode(env).as_slice())
                    .map_err(PackError::db(ctx))?;
                locators
                    .insert(env.locator.to_string().as_str(), key.as_slice())
                    .map_err(PackError::db(ctx))?;
                outcomes.push(outcome);
            }
        }
        txn.commit().map_err(PackError::db(ctx))?;
        Ok((outcomes, freed))
    }

    fn free(&self, digests: &[Digest]) -> Result<()> {
        for d in digests {
            self.remove_if_unreferenced(d)?;
        }
        Ok(())
    }

    /// Stages content, moves it under its hash, and commits `records` in one
    /// transaction. On failure, blobs that no package references are removed.
    pub(crate) fn commit_with_blobs(
        &self,
        staged: Vec<StagedBlob>,
        records: &[&Envelope],
        mode: WriteMode,
    ) -> Result<Vec<PutOutcome>> {
        let digests: Vec<Digest> = staged
            .iter()
            .map(|s| s.info().digest)
            .chain(records.iter().map(|e| e.sha256))
            .collect();
        let pin = self.pin(digests.iter().copied());
        let result = (|| {
            for s in staged {
                self.blobs.commit(s)?;
            }
            for e in records {
                if !self.blobs.contains(&e.sha256) {
                    return Err(PackError::MissingBlob {
                        digest: e.sha256,
                        path: self.blobs.path(&e.sha256),
                    });
                }
            }
            self.write_records(records, mode)
        })();
        drop(pin);
        match result {
            Ok((outcomes, freed)) => {
                self.free(&freed)?;
                Ok(outcomes)
            }
            Err(e) => {
                for d in &digests {
                    let _ = self.remove_if_unreferenced(d);
                }
                Err(e)
            }
        }
    }

    fn create_from_stream(
        &self,
        locator: &Locator,
        data: &mut dyn Read,
        opts: PackageOptions,
        mode: WriteMode,
        progress: &dyn Progress,
    ) -> Result<Envelope> {
        if mode == WriteMode::Create && self.lookup(locator)?.is_some() {
            return Err(PackError::AlreadyExists(Box::new(locator.clone())));
        }
        let staged = self.blobs.stage(data, None, progress)?;
        let info = staged.info();
        let env = Envelope {
            locator: locator.clone(),
            size_bytes: info.size,
            sha256: info.digest,
            created: opts.created.unwrap_or_else(Utc::now),
            package_type: opts.package_type,
            manifest: opts.manifest,
            labels: opts.labels,
        };
        self.commit_with_blobs(vec![staged], &[&env], mode)?;
        Ok(env)
    }

    /// [`PackageStore::create`] reporting the bytes ingested to `progress`.
    pub fn create_with_progress(
        &self,
        locator: &Locator,
        data: &mut dyn Read,
        opts: PackageOptions,
        progress: &dyn Progress,
    ) -> Result<Envelope> {
        self.create_from_stream(locator, data, opts, WriteMode::Create, progress)
    }

    /// Writes many packages whose blobs the store already holds, in one
    /// transaction (all or nothing). Fails with [`PackError::MissingBlob`]
    /// if a blob is absent.
    pub fn put_batch(&self, envelopes: &[&Envelope], mode: WriteMode) -> Result<Vec<PutOutcome>> {
        self.commit_with_blobs(Vec::new(), envelopes, mode)
    }

    /// Packages whose labels include all of `filter`, in listing order.
    pub fn find_by_labels(
        &self,
        repository: Option<&str>,
        filter: &Labels,
    ) -> Result<Vec<Envelope>> {
        Ok(self
            .list(repository)?
            .into_iter()
            .filter(|e| e.labels.contains_all(filter))
            .collect())
    }

    /// Checks the whole store: every referenced blob is re-hashed and its
    /// size compared, reference counts are recounted, index entries decoded.
    /// Reports every problem with the packages it affects.
    pub fn verify(&self, progress: &dyn Progress) -> Result<VerifyReport> {
        let ctx = "cannot read index";
        let mut report = VerifyReport::default();
        let mut users: BTreeMap<Digest, Vec<(Locator, u64)>> = BTreeMap::new();
        let mut recorded: BTreeMap<Digest, u64> = BTreeMap::new();
        {
            let txn = self.db.begin_read().map_err(PackError::db(ctx))?;
            let packages = txn.open_table(PACKAGES).map_err(PackError::db(ctx))?;
            let locators = txn.open_table(LOCATORS).map_err(PackError::db(ctx))?;
            let refs = txn.open_table(REFS).map_err(PackError::db(ctx))?;
            for item in packages.iter().map_err(PackError::db(ctx))? {
                let (k, v) = item.map_err(PackError::db(ctx))?;
                match decode(v.value()) {
                    Ok(env) => {
                        if index_key(&env.locator) != k.value() {
                            report.problems.push(Problem::BadIndexEntry(format!(
                                "record of {} is stored under a wrong key",
                                env.locator
                            )));
                        }
                        report.packages += 1;
                        users
                            .entry(env.sha256)
                            .or_default()
                            .push((env.locator, env.size_bytes));
                    }
                    Err(e) => report.problems.push(Problem::BadIndexEntry(e.to_string())),
                }
            }
            for item in locators.iter().map_err(PackError::db(ctx))? {
                let (l, k) = item.map_err(PackError::db(ctx))?;
                if packages
                    .get(k.value())
                    .map_err(PackError::db(ctx))?
                    .is_none()
                {
                    report.problems.push(Problem::BadIndexEntry(format!(
                        "locator {} points to no package record",
                        l.value()
                    )));
                }
            }
            for item in refs.iter().map_err(PackError::db(ctx))? {
                let (d, n) = item.map_err(PackError::db(ctx))?;
                match <[u8; 32]>::try_from(d.value()) {
                    Ok(b) => {
                        recorded.insert(Digest(b), n.value());
                    }
                    Err(_) => report
                        .problems
                        .push(Problem::BadIndexEntry("malformed blob reference".into())),
                }
            }
        }
        for (d, &n) in &recorded {
            let actual = users.get(d).map_or(0, |u| u.len() as u64);
            if actual != n {
                report.problems.push(Problem::RefCount {
                    digest: *d,
                    recorded: n,
                    actual,
                });
            }
        }
        for (d, u) in &users {
            if !recorded.contains_key(d) {
                report.problems.push(Problem::RefCount {
                    digest: *d,
                    recorded: 0,
                    actual: u.len() as u64,
                });
            }
        }
        let total: u64 = users.values().map(|u| u[0].1).sum();
        progress.on(crate::progress::ProgressEvent::Begin {
            label: "verifying blobs",
            total_bytes: total,
        });
        for (d, u) in &users {
            let packages: Vec<Locator> = u.iter().map(|(l, _)| l.clone()).collect();
            let size = u[0].1;
            if u.iter().any(|(_, s)| *s != size) {
                report.problems.push(Problem::SizeDisagreement {
                    digest: *d,
                    packages: packages.clone(),
                });
            }
            match self.blobs.check(d, Some(size))? {
                BlobCheck::Ok => {}
                BlobCheck::Missing => report.problems.push(Problem::MissingBlob {
                    digest: *d,
                    packages,
                }),
                BlobCheck::Corrupt(detail) => report.problems.push(Problem::CorruptBlob {
                    digest: *d,
                    detail,
                    packages,
                }),
            }
            report.blobs += 1;
            report.bytes += size;
            progress.on(crate::progress::ProgressEvent::Bytes(size));
        }
        progress.on(crate::progress::ProgressEvent::End);
        for (d, _) in self.blobs.list()? {
            if !users.contains_key(&d) {
                report.unreferenced.push(d);
            }
        }
        Ok(report)
    }

    /// Removes blobs that no package references (left by a crash between
    /// writing content and committing metadata) and stale temporary files.
    pub fn gc(&self) -> Result<GcReport> {
        let mut report = GcReport {
            tmp_removed: crate::blob::sweep_tmp(&self.blobs.tmp_dir())?,
            ..Default::default()
        };
        for (d, size) in self.blobs.list()? {
            if self.remove_if_unreferenced(&d)? {
                report.removed.push((d, size));
            }
        }
        Ok(report)
    }
}

impl Drop for LocalStore {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.root.join("owner"));
    }
}

/// Writes `bytes` to `path` through a renamed temporary file, without
/// syncing: for informational files whose loss in a crash does not matter.
fn write_unsynced(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}", tmp_name()));
    let ctx = || format!("cannot write {}", path.display());
    fs::write(&tmp, bytes).map_err(PackError::io(ctx()))?;
    fs::rename(&tmp, path).map_err(PackError::io(ctx()))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}", tmp_name()));
    let ctx = || format!("cannot write {}", path.display());
    let mut f = fs::File::create(&tmp).map_err(PackError::io(ctx()))?;
    f.write_all(bytes).map_err(PackError::io(ctx()))?;
    f.sync_all().map_err(PackError::io(ctx()))?;
    fs::rename(&tmp, path).map_err(PackError::io(ctx()))?;
    sync_dir(dir)
}

impl PackageStore for LocalStore {
    fn create(
        &self,
        locator: &Locator,
        data: &mut dyn Read,
        opts: PackageOptions,
    ) -> Result<Envelope> {
        self.create_from_stream(locator, data, opts, WriteMode::Create, &NoProgress)
    }

    fn upsert(
        &self,
        locator: &Locator,
        data: &mut dyn Read,
        opts: PackageOptions,
    ) -> Result<Envelope> {
        self.create_from_stream(locator, data, opts, WriteMode::Upsert, &NoProgress)
    }

    fn put(
        &self,
        envelope: &Envelope,
        content: Option<&mut dyn Read>,
        mode: WriteMode,
    ) -> Result<PutOutcome> {
        let staged = match content {
            Some(r) => vec![
                self.blobs
                    .stage(
                        r,
                        Some(BlobInfo {
                            digest: envelope.sha256,
                            size: envelope.size_bytes,
                        }),
                        &NoProgress,
                    )
                    .map_err(|e| match e {
                        PackError::CorruptBlob { detail, .. } => PackError::ContentMismatch {
                            locator: Box::new(envelope.locator.clone()),
                            detail,
                        },
                        e => e,
                    })?,
            ],
            None => vec![],
        };
        Ok(self.commit_with_blobs(staged, &[envelope], mode)?[0])
    }

    fn put_present(&self, envelopes: &[&Envelope], mode: WriteMode) -> Result<Vec<PutOutcome>> {
        self.put_batch(envelopes, mode)
    }

    fn envelope(&self, locator: &Locator) -> Result<Envelope> {
        self.lookup(locator)?
            .ok_or_else(|| PackError::NotFound(Box::new(locator.clone())))
    }

    fn read(&self, locator: &Locator) -> Result<(Envelope, Box<dyn Read + Send>)> {
        let env = self.envelope(locator)?;
        let r = self.blobs.open_blob(&env.sha256, Some(env.size_bytes))?;
        Ok((env, Box::new(r)))
    }

    fn has_blob(&self, digest: &Digest) -> Result<bool> {
        Ok(self.blobs.contains(digest))
    }

    fn delete(&self, locator: &Locator) -> Result<()> {
        let ctx = "cannot update the package index";
        let txn = self.db.begin_write().map_err(PackError::db(ctx))?;
        let freed;
        {
            let mut packages = txn.open_table(PACKAGES).map_err(PackError::db(ctx))?;
            let mut locators = txn.open_table(LOCATORS).map_err(PackError::db(ctx))?;
            let mut refs = txn.open_table(REFS).map_err(PackError::db(ctx))?;
            let key = index_key(locator);
            let env = match packages
                .remove(key.as_slice())
                .map_err(PackError::db(ctx))?
            {
                Some(v) => decode(v.value())?,
                None => return Err(PackError::NotFound(Box::new(locator.clone()))),
            };
            locators
                .remove(locator.to_string().as_str())
                .map_err(PackError::db(ctx))?;
            let n = refs
                .get(&env.sha256.0[..])
                .map_err(PackError::db(ctx))?
                .map(|v| v.value())
                .unwrap_or(0);
            if n <= 1 {
                refs.remove(&env.sha256.0[..]).map_err(PackError::db(ctx))?;
                freed = Some(env.sha256);
            } else {
                refs.insert(&env.sha256.0[..], n - 1)
                    .map_err(PackError::db(ctx))?;
                freed = None;
            }
        }
        txn.commit().map_err(PackError::db(ctx))?;
        if let Some(d) = freed {
            self.remove_if_unreferenced(&d)?;
        }
        Ok(())
    }

    fn list(&self, repository: Option<&str>) -> Result<Vec<Envelope>> {
        let ctx = "cannot read index";
        let txn = self.db.begin_read().map_err(PackError::db(ctx))?;
        let t = txn.open_table(PACKAGES).map_err(PackError::db(ctx))?;
        let mut out = Vec::new();
        let iter = match repository {
            Some(r) => {
                let p = repo_prefix(r);
                t.range(p.as_slice()..prefix_end(&p).as_slice())
            }
            None => t.iter(),
        }
        .map_err(PackError::db(ctx))?;
        for item in iter {
            let (_, v) = item.map_err(PackError::db(ctx))?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    fn repositories(&self) -> Result<Vec<String>> {
        let ctx = "cannot read index";
        let txn = self.db.begin_read().map_err(PackError::db(ctx))?;
        let t = txn.open_table(PACKAGES).map_err(PackError::db(ctx))?;
        let mut out = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        // Skip scan: one seek per repository.
        while let Some(item) = t
            .range(from.as_slice()..)
            .map_err(PackError::db(ctx))?
            .next()
        {
            let (k, _) = item.map_err(PackError::db(ctx))?;
            let (repo, _) = key_repo(k.value())
                .ok_or_else(|| PackError::Corrupt("malformed index key".into()))?;
            from = prefix_end(&repo_prefix(&repo));
            out.push(repo);
        }
        Ok(out)
    }

    fn versions(&self, repository: &str, name: &str) -> Result<Vec<Envelope>> {
        let ctx = "cannot read index";
        let txn = self.db.begin_read().map_err(PackError::db(ctx))?;
        let t = txn.open_table(PACKAGES).map_err(PackError::db(ctx))?;
        let p = name_prefix(repository, name);
        let mut out = Vec::new();
        for item in t
            .range(p.as_slice()..prefix_end(&p).as_slice())
            .map_err(PackError::db(ctx))?
        {
            let (_, v) = item.map_err(PackError::db(ctx))?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    fn latest(&self, repository: &str, name: &str) -> Result<Option<Envelope>> {
        let ctx = "cannot read index";
        let txn = self.db.begin_read().map_err(PackError::db(ctx))?;
        let t = txn.open_table(PACKAGES).map_err(PackError::db(ctx))?;
        let p = name_prefix(repository, name);
        let last = t
            .range(p.as_slice()..prefix_end(&p).as_slice())
            .map_err(PackError::db(ctx))?
            .next_back();
        match last {
            Some(item) => {
                let (_, v) = item.map_err(PackError::db(ctx))?;
                Ok(Some(decode(v.value())?))
            }
            None => Ok(None),
        }
    }

    fn update_labels(
        &self,
        locator: &Locator,
        add: &Labels,
        remove: &[String],
    ) -> Result<Envelope> {
        let ctx = "cannot update the package index";
        let txn = self.db.begin_write().map_err(PackError::db(ctx))?;
        let env;
        {
            let mut packages = txn.open_table(PACKAGES).map_err(PackError::db(ctx))?;
            let key = index_key(locator);
            let mut e = match packages.get(key.as_slice()).map_err(PackError::db(ctx))? {
                Some(v) => decode(v.value())?,
                None => return Err(PackError::NotFound(Box::new(locator.clone()))),
            };
            e.labels.apply(add, remove);
            packages
                .insert(key.as_slice(), encode(&e).as_slice())
                .map_err(PackError::db(ctx))?;
            env = e;
        }
        txn.commit().map_err(PackError::db(ctx))?;
        Ok(env)
    }
}

/// Parses `repo/name:version` or resolves `repo/name` (and
/// `repo/name:0.0.0+latest`) to the latest stored version.
pub fn resolve(store: &dyn PackageStore, text: &str) -> Result<Locator> {
    if let Some((repo, name)) = text.split_once('/')
        && !name.contains(':')
        && crate::locator::validate_repository(repo).is_ok()
        && crate::locator::validate_name(name)
    {
        return store.latest(repo, name)?.map(|e| e.locator).ok_or_else(|| {
            PackError::NotFound(Box::new(
                Locator::new(repo, name, "0.0.0+latest").expect("valid"),
            ))
        });
    }
    let loc = Locator::parse(text)?;
    if loc.version().metadata() == Some("latest")
        && loc.version().cmp_precedence(&Version::zero()).is_eq()
    {
        return store
            .latest(loc.repository(), loc.name())?
            .map(|e| e.locator)
            .ok_or_else(|| PackError::NotFound(Box::new(loc)));
    }
    Ok(loc)
}

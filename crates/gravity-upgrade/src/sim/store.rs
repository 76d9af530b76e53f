//! Where a simulated cluster keeps its state, and how a change becomes
//! durable without rewriting the whole cluster.
//!
//! ```text
//! <state>/sim/cluster.json      snapshot: the whole SimState, with its generation
//! <state>/sim/cluster.journal   "gravity-sim-journal 1 <generation>\n", then one
//!                               line per change: "<crc32 hex> <Delta JSON>\n"
//! <state>/sim/cluster.lock      flock'd by whoever reads or changes the state
//! ```
//!
//! A process keeps the state in memory ([`Store`]) and, under the lock,
//! checks that it is current with two `stat`s: the snapshot is the same
//! file (inode, size, mtime), and the journal has not grown; if it grew,
//! only the new records are read and applied. A change appends one record
//! holding the parts it touched (a node, its records, a few pods, etcd
//! keys; see [`super::state::Delta`]), so a call on one node costs the
//! same in a cluster of 10 or 1,000 nodes.
//!
//! # Durability
//!
//! A call returns once its record is on disk (`fdatasync`). Records are
//! appended under the lock and synced after it is released, by whichever
//! caller gets there first for everything appended so far (group commit):
//! parallel phases share syncs. A call that only reads waits the same way
//! for records it may have seen, so nothing it returns can be lost.
//!
//! A record is framed by a CRC and a newline; a torn record at the end (a
//! writer died while appending) is ignored and cut off by the next append.
//!
//! # Compaction
//!
//! When the journal outgrows twice the snapshot (and 4 MiB), the state is
//! written as the snapshot of the next generation (temporary file, fsync,
//! rename, directory fsync), then an empty journal of that generation
//! replaces the old one the same way. A crash between the two leaves a
//! journal of the previous generation, which is ignored: the snapshot
//! already holds it. The cost is amortised over the records that grew the
//! journal, so it stays proportional to the changes.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::state::{Delta, SimState};
use crate::backend::{BackendError, BackendResult};

const JOURNAL_MAGIC: &str = "gravity-sim-journal 1";
const COMPACT_MIN: u64 = 4 << 20;

/// Identity of a snapshot file: a rename or a rewrite changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl FileId {
    fn of(m: &fs::Metadata) -> Self {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        }
    }
}

/// The journal this process appends to.
#[derive(Debug)]
struct Journal {
    file: Arc<File>,
    dev: u64,
    ino: u64,
}

/// The in-memory state and where it stands in the files.
#[derive(Debug)]
struct Cache {
    state: SimState,
    snapshot: FileId,
    /// `None`: no journal of this generation yet (the next change creates it).
    journal: Option<Journal>,
    /// End of the last complete record read or written.
    offset: u64,
    /// Length of the journal file when last looked at.
    file_len: u64,
    /// Which journal handle `offset` refers to (for syncing).
    epoch: u64,
}

/// A point in the journal a caller must see synced.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    epoch: u64,
    offset: u64,
}

/// The state of one simulated cluster in this process.
#[derive(Debug)]
pub(crate) struct Store {
    dir: PathBuf,
    cache: Mutex<Option<Cache>>,
    lock_file: Mutex<Option<File>>,
    /// Serialises syncers (group commit).
    sync: Mutex<()>,
    /// Synced through (epoch, offset).
    synced: Mutex<(u64, u64)>,
    epochs: AtomicU64,
}

fn io(ctx: String) -> impl FnOnce(std::io::Error) -> BackendError {
    BackendError::io(ctx)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `bytes` to `path` through a temporary file, fsync'd and renamed.
fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> BackendResult<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let ctx = || format!("cannot write {}", tmp.display());
    let mut f = File::create(&tmp).map_err(io(ctx()))?;
    f.write_all(bytes).map_err(io(ctx()))?;
    f.sync_all().map_err(io(ctx()))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io(format!("cannot write {}", path.display())))?;
    sync_dir(dir);
    Ok(())
}

/// One framed record.
fn frame(delta: &Delta) -> Vec<u8> {
    let json = serde_json::to_vec(delta).expect("delta serializes");
    let mut out = format!("{:08x} ", crc32fast::hash(&json)).into_bytes();
    out.extend_from_slice(&json);
    out.push(b'\n');
    out
}

/// The complete records of `bytes` (starting at a record boundary) and the
/// length they take; stops at the first torn or damaged one.
fn parse_records(bytes: &[u8]) -> (Vec<Delta>, u64) {
    let mut out = Vec::new();
    let mut used = 0usize;
    while let Some(nl) = bytes[used..].iter().position(|&b| b == b'\n') {
        let line = &bytes[used..used + nl];
        let ok = (|| {
            let crc = u32::from_str_radix(std::str::from_utf8(line.get(..8)?).ok()?, 16).ok()?;
            let json = line.get(9..)?;
            if crc32fast::hash(json) != crc {
                return None;
            }
            serde_json::from_slice::<Delta>(json).ok()
        })();
        match ok {
            Some(d) => out.push(d),
            None => break,
        }
        used += nl + 1;
    }
    (out, used as u64)
}

impl Store {
    pub(crate) fn new(state_dir: &Path) -> Self {
        Store {
            dir: state_dir.join("sim"),
            cache: Mutex::new(None),
            lock_file: Mutex::new(None),
            sync: Mutex::new(()),
            synced: Mutex::new((0, 0)),
            epochs: AtomicU64::new(1),
        }
    }

    pub(crate) fn snapshot_path(&self) -> PathBuf {
        self.dir.join("cluster.json")
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join("cluster.journal")
    }

    fn next_epoch(&self) -> u64 {
        self.epochs.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether everything through `t` is synced.
    pub(crate) fn covered_ticket(&self, t: Ticket) -> bool {
        self.covered(t)
    }

    fn covered(&self, t: Ticket) -> bool {
        let s = *self.synced.lock().expect("synced lock");
        s.0 > t.epoch || (s.0 == t.epoch && s.1 >= t.offset)
    }

    fn mark_synced(&self, epoch: u64, offset: u64) {
        let mut s = self.synced.lock().expect("synced lock");
        if (epoch, offset) > *s {
            *s = (epoch, offset);
        }
    }

    /// Takes the in-process and the cross-process lock.
    fn lock(&self) -> BackendResult<Locked<'_>> {
        let cache = self.cache.lock().expect("cache lock");
        let mut lf = self.lock_file.lock().expect("lock file lock");
        if lf.is_none() {
            let p = self.dir.join("cluster.lock");
            let f = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&p)
                .map_err(io(format!("cannot open {}", p.display())))?;
            *lf = Some(f);
        }
        lf.as_ref().expect("opened").lock().map_err(io(format!(
            "cannot lock {}/cluster.lock",
            self.dir.display()
        )))?;
        Ok(Locked {
            cache,
            lock_file: lf,
        })
    }

    /// Runs `f` on the current state; returns what to wait for.
    pub(crate) fn view<T>(&self, f: impl FnOnce(&SimState) -> T) -> BackendResult<(T, Ticket)> {
        let mut l = self.lock()?;
        self.refresh(&mut l.cache)?;
        let c = l.cache.as_ref().expect("refreshed");
        let out = f(&c.state);
        Ok((
            out,
            Ticket {
                epoch: c.epoch,
                offset: c.offset,
            },
        ))
    }

    /// Runs `f` on the state and appends what it changed; nothing is kept
    /// if `f` fails. Returns what to wait for.
    pub(crate) fn update<T>(
        &self,
        f: impl FnOnce(&mut SimState) -> BackendResult<T>,
    ) -> BackendResult<(T, Ticket)> {
        let mut l = self.lock()?;
        self.refresh(&mut l.cache)?;
        let c = l.cache.as_mut().expect("refreshed");
        let before = c.state.meta();
        let out = match f(&mut c.state) {
            Ok(out) => out,
            Err(e) => {
                // The state may be half changed: forget it (the next call
                // reloads), after making sure what was appended is durable.
                self.drop_cache(&mut l.cache);
                return Err(e);
            }
        };
        let delta = c.state.take_delta(&before);
        if !delta.is_empty()
            && let Err(e) = self.append(c, &delta)
        {
            self.drop_cache(&mut l.cache);
            return Err(e);
        }
        let c = l.cache.as_mut().expect("kept");
        if c.offset > COMPACT_MIN.max(2 * c.snapshot.size)
            && let Err(e) = self.compact(c)
        {
            self.drop_cache(&mut l.cache);
            return Err(e);
        }
        let c = l.cache.as_ref().expect("kept");
        Ok((
            out,
            Ticket {
                epoch: c.epoch,
                offset: c.offset,
            },
        ))
    }

    /// Waits until the journal is synced through `t`; one caller syncs for
    /// everyone waiting.
    pub(crate) fn sync_to(&self, t: Ticket) -> BackendResult<()> {
        if self.covered(t) {
            return Ok(());
        }
        let _g = self.sync.lock().expect("sync lock");
        if self.covered(t) {
            return Ok(());
        }
        let (file, epoch, offset) = {
            let c = self.cache.lock().expect("cache lock");
            match c.as_ref() {
                Some(c) if c.epoch == t.epoch => match &c.journal {
                    Some(j) => (j.file.clone(), c.epoch, c.offset),
                    None => return Ok(()),
                },
                // The handle was replaced, and synced when it was.
                _ => return Ok(()),
            }
        };
        file.sync_data()
            .map_err(io(format!("cannot sync {}", self.journal_path().display())))?;
        self.mark_synced(epoch, offset);
        Ok(())
    }

    /// Replaces the state with `state` as a new snapshot (a new cluster).
    pub(crate) fn replace(&self, mut state: SimState) -> BackendResult<()> {
        fs::create_dir_all(&self.dir)
            .map_err(io(format!("cannot create {}", self.dir.display())))?;
        let mut l = self.lock()?;
        self.drop_cache(&mut l.cache);
        // An old journal must not extend the new snapshot.
        match fs::remove_file(self.journal_path()) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io(format!(
                    "cannot remove {}",
                    self.journal_path().display()
                ))(e));
            }
        }
        state.generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let json = serde_json::to_vec_pretty(&state).expect("state serializes");
        write_atomic(&self.dir, &self.snapshot_path(), &json)?;
        Ok(())
    }

    fn drop_cache(&self, slot: &mut Option<Cache>) {
        if let Some(c) = slot.take()
            && let Some(j) = &c.journal
            && !self.covered(Ticket {
                epoch: c.epoch,
                offset: c.offset,
            })
        {
            let _ = j.file.sync_data();
            self.mark_synced(c.epoch, c.offset);
        }
    }

    fn stat_snapshot(&self) -> BackendResult<FileId> {
        let p = self.snapshot_path();
        let m = fs::metadata(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                BackendError::Other(format!(
                    "no simulated cluster in {}; create one first (e.g. \"gravity demo\")",
                    self.dir.parent().unwrap_or(&self.dir).display()
                ))
            } else {
                io(format!("cannot read the simulated cluster {}", p.display()))(e)
            }
        })?;
        Ok(FileId::of(&m))
    }

    /// Brings the cache up to date with the files (under the lock).
    fn refresh(&self, slot: &mut Option<Cache>) -> BackendResult<()> {
        let snap = self.stat_snapshot()?;
        if let Some(c) = slot.as_mut()
            && c.snapshot == snap
        {
            let jm = match fs::metadata(self.journal_path()) {
                Ok(m) => Some(m),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(io(format!("cannot read {}", self.journal_path().display()))(e));
                }
            };
            match (&c.journal, jm) {
                (None, None) => return Ok(()),
                (Some(j), Some(m)) if j.dev == m.dev() && j.ino == m.ino() => {
                    let len = m.size();
                    if len == c.offset {
                        // Nothing new (and no torn bytes to look at).
                        return Ok(());
                    }
                    if len > c.offset {
                        let mut buf = vec![0; (len - c.offset) as usize];
                        j.file
                            .read_exact_at(&mut buf, c.offset)
                            .map_err(io(format!(
                                "cannot read {}",
                                self.journal_path().display()
                            )))?;
                        let (records, used) = parse_records(&buf);
                        if !records.is_empty() {
                            for d in records {
                                c.state.apply_delta(d);
                            }
                            c.state.rebuild();
                        }
                        c.offset += used;
                        c.file_len = len;
                        return Ok(());
                    }
                }
                _ => {}
            }
        }
        self.drop_cache(slot);
        *slot = Some(self.load(snap)?);
        Ok(())
    }

    /// Reads the snapshot and replays its journal.
    fn load(&self, snap: FileId) -> BackendResult<Cache> {
        let p = self.snapshot_path();
        let text = fs::read(&p).map_err(io(format!(
            "cannot read the simulated cluster {}",
            p.display()
        )))?;
        let state: SimState = serde_json::from_slice(&text).map_err(|e| {
            BackendError::Corrupt(format!(
                "the simulated cluster {} is damaged: {e}; recreate it",
                p.display()
            ))
        })?;
        // The identity of what was read (it may have changed since `stat`).
        let snapshot = FileId {
            size: text.len() as u64,
            ..snap
        };
        let epoch = self.next_epoch();
        let jp = self.journal_path();
        let mut cache = Cache {
            state,
            snapshot,
            journal: None,
            offset: 0,
            file_len: 0,
            epoch,
        };
        match File::options().read(true).write(true).open(&jp) {
            Ok(mut f) => {
                let m = f
                    .metadata()
                    .map_err(io(format!("cannot read {}", jp.display())))?;
                let mut bytes = Vec::new();
                f.read_to_end(&mut bytes)
                    .map_err(io(format!("cannot read {}", jp.display())))?;
                let header = format!("{JOURNAL_MAGIC} {}\n", cache.state.generation);
                if bytes.starts_with(header.as_bytes()) {
                    let (records, used) = parse_records(&bytes[header.len()..]);
                    for d in records {
                        cache.state.apply_delta(d);
                    }
                    cache.journal = Some(Journal {
                        file: Arc::new(f),
                        dev: m.dev(),
                        ino: m.ino(),
                    });
                    cache.offset = header.len() as u64 + used;
                    cache.file_len = bytes.len() as u64;
                }
                // Otherwise a journal of an older generation: the snapshot
                // holds it; the next change replaces it.
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("cannot open {}", jp.display()))(e)),
        }
        // Whatever is in the files was synced by whoever wrote it, or is
        // being synced by them.
        self.mark_synced(cache.epoch, cache.offset);
        cache.state.rebuild();
        Ok(cache)
    }

    /// Creates an empty journal of the cache's generation.
    fn new_journal(&self, c: &mut Cache) -> BackendResult<()> {
        let jp = self.journal_path();
        let header = format!("{JOURNAL_MAGIC} {}\n", c.state.generation);
        write_atomic(&self.dir, &jp, header.as_bytes())?;
        let f = File::options()
            .read(true)
            .write(true)
            .open(&jp)
            .map_err(io(format!("cannot open {}", jp.display())))?;
        let m = f
            .metadata()
            .map_err(io(format!("cannot read {}", jp.display())))?;
        c.journal = Some(Journal {
            file: Arc::new(f),
            dev: m.dev(),
            ino: m.ino(),
        });
        c.offset = header.len() as u64;
        c.file_len = c.offset;
        c.epoch = self.next_epoch();
        self.mark_synced(c.epoch, c.offset);
        Ok(())
    }

    fn append(&self, c: &mut Cache, delta: &Delta) -> BackendResult<()> {
        if c.journal.is_none() {
            self.new_journal(c)?;
        }
        let j = c.journal.as_ref().expect("created");
        let ctx = || format!("cannot write {}", self.journal_path().display());
        if c.file_len > c.offset {
            // A torn record of a writer that died.
            j.file.set_len(c.offset).map_err(io(ctx()))?;
        }
        let rec = frame(delta);
        j.file.write_all_at(&rec, c.offset).map_err(io(ctx()))?;
        c.offset += rec.len() as u64;
        c.file_len = c.offset;
        Ok(())
    }

    /// Writes the state as the snapshot of the next generation and starts
    /// its journal.
    fn compact(&self, c: &mut Cache) -> BackendResult<()> {
        c.state.generation += 1;
        let json = serde_json::to_vec_pretty(&c.state).expect("state serializes");
        write_atomic(&self.dir, &self.snapshot_path(), &json)?;
        // Everything appended so far is in the synced snapshot.
        self.mark_synced(c.epoch, c.offset);
        c.snapshot = self.stat_snapshot()?;
        self.new_journal(c)
    }
}

struct Locked<'a> {
    cache: MutexGuard<'a, Option<Cache>>,
    lock_file: MutexGuard<'a, Option<File>>,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.lock_file.as_ref() {
            let _ = f.unlock();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Kubernetes, NodeSystem};
    use crate::sim::{SimSpec, SimulatedCluster};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn changes_reach_other_handles_and_survive_reopening() {
        let d = tempfile::tempdir().unwrap();
        let a = SimulatedCluster::init(d.path(), SimSpec::synthetic(1, 2)).unwrap();
        let b = SimulatedCluster::open(d.path()).unwrap();
        let node = a.cluster().unwrap().nodes[1].hostname.clone();
        let rt = rt();
        // `b` caches the state, then `a` changes it: `b` reads the record.
        assert!(!rt.block_on(b.node(&node)).unwrap().unschedulable);
        assert!(rt.block_on(a.cordon(&node)).unwrap());
        assert!(rt.block_on(b.node(&node)).unwrap().unschedulable);
        let v = serde_json::json!({"changed": true});
        rt.block_on(b.put_record(&node, "op:/x", Some(&v))).unwrap();
        assert_eq!(rt.block_on(a.record(&node, "op:/x")).unwrap(), Some(v));
        // A new process replays snapshot + journal.
        let c = SimulatedCluster::open(d.path()).unwrap();
        assert_eq!(c.state().unwrap(), a.state().unwrap());
        assert!(d.path().join("sim/cluster.journal").exists());
    }

    #[test]
    fn a_torn_record_is_ignored_and_cut_off() {
        let d = tempfile::tempdir().unwrap();
        let a = SimulatedCluster::init(d.path(), SimSpec::synthetic(1, 1)).unwrap();
        let node = a.cluster().unwrap().nodes[1].hostname.clone();
        let rt = rt();
        rt.block_on(a.cordon(&node)).unwrap();
        let j = d.path().join("sim/cluster.journal");
        let mut f = File::options().append(true).open(&j).unwrap();
        f.write_all(b"0badc0de {\"kube_nodes\":[[").unwrap();
        drop(f);
        let b = SimulatedCluster::open(d.path()).unwrap();
        assert!(rt.block_on(b.node(&node)).unwrap().unschedulable);
        rt.block_on(b.uncordon(&node)).unwrap();
        let c = SimulatedCluster::open(d.path()).unwrap();
        assert!(!rt.block_on(c.node(&node)).unwrap().unschedulable);
        assert!(!fs::read_to_string(&j).unwrap().contains("0badc0de"));
    }

    #[test]
    fn compaction_starts_a_new_generation() {
        let d = tempfile::tempdir().unwrap();
        let a = SimulatedCluster::init(d.path(), SimSpec::synthetic(1, 1)).unwrap();
        let node = a.cluster().unwrap().nodes[1].hostname.clone();
        let gen0 = a.state().unwrap().generation;
        let rt = rt();
        let big = serde_json::Value::String("x".repeat(64 << 10));
        for i in 0..80 {
            rt.block_on(a.put_record(&node, &format!("k{i}"), Some(&big)))
                .unwrap();
        }
        let s = a.state().unwrap();
        assert!(s.generation > gen0, "compacted");
        assert!(
            fs::metadata(d.path().join("sim/cluster.journal"))
                .unwrap()
                .len()
                < COMPACT_MIN
        );
        let b = SimulatedCluster::open(d.path()).unwrap();
        assert_eq!(b.state().unwrap(), s);
        assert_eq!(b.state().unwrap().nodes[&node].records.len(), 80);
    }

    #[test]
    fn a_failed_change_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let a = SimulatedCluster::init(d.path(), SimSpec::synthetic(1, 1)).unwrap();
        let before = a.state().unwrap();
        let r = a.update(|s| {
            s.put_record("nope", "k", None);
            s.faults.clear();
            s.election.clear();
            Err::<(), _>(BackendError::Other("fails".into()))
        });
        assert!(r.is_err());
        assert_eq!(a.state().unwrap(), before);
        assert!(rt().block_on(a.agent_running("nope")).is_err());
    }
}

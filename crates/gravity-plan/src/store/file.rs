//! The durable [`PlanStore`]: plain files in a state directory.
//!
//! ```text
//! <root>/format                          "gravity-plan-store 1"
//! <root>/lock.json                       the operation lock, while an operation is active
//! <root>/operations/<id>/operation.json  id, kind, cluster, created (written once)
//! <root>/operations/<id>/plan.json       the plan (written once)
//! <root>/operations/<id>/state.json      operation state (replaced atomically)
//! <root>/operations/<id>/changelog       append-only frames of changes
//! ```
//!
//! An operation is created in a temporary directory that is renamed into
//! place once everything in it is synced, so it appears with its plan or not
//! at all. The changelog is a sequence of frames `[len u32][crc32 u32][JSON
//! array of changes]`, each written with one `write` and made durable with
//! `fdatasync` before the append returns. Writers take an exclusive `flock`
//! on the changelog, first read what other processes appended (to check
//! compare-and-swap guards against the true latest state), cut off a torn
//! frame left by a writer that died mid-write, then append. Appends that
//! arrive together from several tasks are written as one frame with one
//! sync (group commit). Imports of entries made by another store
//! ([`PlanStore::import_changes`]) take the same path: their ids are checked
//! against the whole log under the lock, so an import is idempotent across
//! processes too. Readers never block writers for long and stop at
//! the first incomplete frame.
//!
//! Why files rather than an embedded database: the changelog is append-only
//! and must be shared by several processes at once (`plan --tail` in one
//! terminal while `plan resume` runs in another, an agent beside the CLI).
//! Embedded databases such as redb hold an exclusive lock for as long as
//! they are open; an append-only log with `flock` lets every process work
//! concurrently and costs one write plus one `fdatasync` per commit.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::{LockInfo, LogIndex, OperationRecord, PlanStore, StoreError, check_operation_id};
use crate::plan::Plan;
use crate::state::{Actor, NewChange, OperationState, PhaseChange};

const FORMAT: &str = "gravity-plan-store 1\n";
const MAX_FRAME: u32 = 64 * 1024 * 1024;
const HEADER: u64 = 8;

/// The durable store in a state directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: Arc<PathBuf>,
    logs: Arc<Mutex<HashMap<String, Arc<OpLog>>>>,
    stats: Arc<Stats>,
}

/// What a [`FileStore`] handle has committed since it was opened, over
/// all operations: frames written (one `fdatasync` each), the changes
/// they held, and the time spent in `fdatasync`. Changes per frame above
/// one is group commit at work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Frames written, each made durable with one `fdatasync`.
    pub frames: u64,
    /// Changes in those frames.
    pub changes: u64,
    /// Time spent in `fdatasync`.
    pub sync_time: Duration,
}

#[derive(Debug, Default)]
struct Stats {
    frames: AtomicU64,
    changes: AtomicU64,
    sync_nanos: AtomicU64,
}

impl Stats {
    fn note(&self, changes: usize, sync: Duration) {
        self.frames.fetch_add(1, Relaxed);
        self.changes.fetch_add(changes as u64, Relaxed);
        self.sync_nanos
            .fetch_add(u64::try_from(sync.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }
}

#[derive(Debug)]
struct OpLog {
    path: PathBuf,
    stats: Arc<Stats>,
    queue: Mutex<Vec<Arc<Pending>>>,
    state: Mutex<Option<LogState>>,
}

/// What a writer asks to commit.
#[derive(Debug)]
enum Request {
    /// New changes, with their guards.
    Append(Vec<NewChange>),
    /// Entries made by another store.
    Import(Vec<PhaseChange>),
}

#[derive(Debug)]
struct Pending {
    request: Request,
    result: Mutex<Option<Result<Vec<PhaseChange>, StoreError>>>,
}

#[derive(Debug)]
struct LogState {
    file: File,
    /// End of the last complete frame read or written.
    valid_len: u64,
    /// (first seq, byte offset) of every frame.
    frames: Vec<(u64, u64)>,
    index: LogIndex,
}

#[derive(Debug, Serialize, Deserialize)]
struct OperationFile {
    id: String,
    kind: String,
    cluster: String,
    created: chrono::DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    state: OperationState,
    updated: chrono::DateTime<Utc>,
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io(format!(
            "cannot sync directory {}",
            dir.display()
        )))
}

fn write_file_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let ctx = || format!("cannot write {}", path.display());
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(StoreError::io(ctx()))?;
    f.write_all(bytes).map_err(StoreError::io(ctx()))?;
    f.sync_all().map_err(StoreError::io(ctx()))
}

fn tmp_name(prefix: &str) -> String {
    format!(
        ".tmp-{prefix}-{}-{}",
        std::process::id(),
        Utc::now().timestamp_nanos_opt().unwrap_or_default()
    )
}

/// Replaces `path` atomically: temporary file, sync, rename, sync directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(tmp_name("w"));
    write_file_synced(&tmp, bytes)?;
    fs::rename(&tmp, path).map_err(StoreError::io(format!("cannot replace {}", path.display())))?;
    sync_dir(dir)
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// `.tmp-<prefix>-<pid>-<nanos>` → pid.
fn tmp_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(".tmp-")?;
    let mut parts = rest.rsplitn(3, '-');
    parts.next()?;
    parts.next()?.parse().ok()
}

impl FileStore {
    /// Opens (creating if needed) a store in `root`. Leftovers of writers
    /// that died mid-way (temporary files and directories) are removed.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root: PathBuf = root.into();
        let ops = root.join("operations");
        fs::create_dir_all(&ops).map_err(StoreError::io(format!(
            "cannot create state directory {}",
            root.display()
        )))?;
        let format = root.join("format");
        match fs::read_to_string(&format) {
            Ok(text) if text == FORMAT => {}
            Ok(text) => {
                return Err(StoreError::Corrupt(format!(
                    "{} says {:?}; this version reads {:?}",
                    format.display(),
                    text.trim(),
                    FORMAT.trim()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_atomic(&format, FORMAT.as_bytes())?;
            }
            Err(e) => {
                return Err(StoreError::io(format!("cannot read {}", format.display()))(
                    e,
                ));
            }
        }
        let store = FileStore {
            root: Arc::new(root),
            logs: Arc::default(),
            stats: Arc::default(),
        };
        store.sweep()?;
        Ok(store)
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What this handle (and its clones) committed so far.
    pub fn commit_stats(&self) -> CommitStats {
        CommitStats {
            frames: self.stats.frames.load(Relaxed),
            changes: self.stats.changes.load(Relaxed),
            sync_time: Duration::from_nanos(self.stats.sync_nanos.load(Relaxed)),
        }
    }

    fn sweep(&self) -> Result<(), StoreError> {
        let sweep_dir = |dir: &Path| -> Result<(), StoreError> {
            let entries = match fs::read_dir(dir) {
                Ok(e) => e,
                Err(_) => return Ok(()),
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if !name.starts_with(".tmp-") {
                    continue;
                }
                if tmp_owner(&name).is_some_and(pid_alive) {
                    continue;
                }
                let p = e.path();
                let _ = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
            Ok(())
        };
        sweep_dir(&self.root)?;
        let ops = self.root.join("operations");
        sweep_dir(&ops)?;
        if let Ok(entries) = fs::read_dir(&ops) {
            for e in entries.flatten() {
                if e.path().is_dir() {
                    sweep_dir(&e.path())?;
                }
            }
        }
        Ok(())
    }

    fn op_dir(&self, id: &str) -> Result<PathBuf, StoreError> {
        check_operation_id(id)?;
        let dir = self.root.join("operations").join(id);
        if !dir.join("operation.json").exists() {
            return Err(StoreError::NotFound(id.to_string()));
        }
        Ok(dir)
    }

    /// The changelog of an operation. The operation directory is checked
    /// the first time only: operations are never removed, so a log once
    /// found stays valid (and every append or read skips a `stat`).
    fn log(&self, id: &str) -> Result<Arc<OpLog>, StoreError> {
        if let Some(log) = self.logs.lock().unwrap().get(id) {
            return Ok(log.clone());
        }
        let dir = self.op_dir(id)?;
        let mut logs = self.logs.lock().unwrap();
        Ok(logs
            .entry(id.to_string())
            .or_insert_with(|| {
                Arc::new(OpLog {
                    path: dir.join("changelog"),
                    stats: self.stats.clone(),
                    queue: Mutex::new(Vec::new()),
                    state: Mutex::new(None),
                })
            })
            .clone())
    }

    fn read_record(&self, id: &str) -> Result<OperationRecord, StoreError> {
        let dir = self.op_dir(id)?;
        let path = dir.join("operation.json");
        let text =
            fs::read(&path).map_err(StoreError::io(format!("cannot read {}", path.display())))?;
        let op: OperationFile = serde_json::from_slice(&text)
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
        let state_path = dir.join("state.json");
        let (state, updated) = match fs::read(&state_path) {
            Ok(text) => {
                let s: StateFile = serde_json::from_slice(&text)
                    .map_err(|e| StoreError::Corrupt(format!("{}: {e}", state_path.display())))?;
                (s.state, s.updated)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (OperationState::InProgress, op.created)
            }
            Err(e) => {
                return Err(StoreError::io(format!(
                    "cannot read {}",
                    state_path.display()
                ))(e));
            }
        };
        Ok(OperationRecord {
            id: op.id,
            kind: op.kind,
            cluster: op.cluster,
            created: op.created,
            state,
            updated,
        })
    }

    fn create_blocking(&self, plan: &Plan) -> Result<OperationRecord, StoreError> {
        check_operation_id(&plan.operation_id)?;
        let ops = self.root.join("operations");
        let final_dir = ops.join(&plan.operation_id);
        if final_dir.exists() {
            return Err(StoreError::AlreadyExists(plan.operation_id.clone()));
        }
        let tmp = ops.join(tmp_name("op"));
        let result = (|| {
            fs::create_dir(&tmp)
                .map_err(StoreError::io(format!("cannot create {}", tmp.display())))?;
            let record = OperationRecord::for_plan(plan);
            let op = OperationFile {
                id: record.id.clone(),
                kind: record.kind.clone(),
                cluster: record.cluster.clone(),
                created: record.created,
            };
            write_file_synced(
                &tmp.join("operation.json"),
                &serde_json::to_vec_pretty(&op).expect("serializable"),
            )?;
            let plan_path = tmp.join("plan.json");
            let ctx = || format!("cannot write {}", plan_path.display());
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&plan_path)
                .map_err(StoreError::io(ctx()))?;
            let mut w = BufWriter::new(f);
            serde_json::to_writer(&mut w, plan)
                .map_err(|e| StoreError::io(ctx())(std::io::Error::other(e)))?;
            let f = w
                .into_inner()
                .map_err(|e| StoreError::io(ctx())(e.into_error()))?;
            f.sync_all().map_err(StoreError::io(ctx()))?;
            write_file_synced(&tmp.join("changelog"), b"")?;
            sync_dir(&tmp)?;
            match fs::rename(&tmp, &final_dir) {
                Ok(()) => {}
                Err(_) if final_dir.exists() => {
                    return Err(StoreError::AlreadyExists(plan.operation_id.clone()));
                }
                Err(e) => {
                    return Err(StoreError::io(format!(
                        "cannot create {}",
                        final_dir.display()
                    ))(e));
                }
            }
            sync_dir(&ops)?;
            Ok(record)
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result
    }

    fn lock_path(&self) -> PathBuf {
        self.root.join("lock.json")
    }

    fn read_lock(&self) -> Result<Option<LockInfo>, StoreError> {
        let path = self.lock_path();
        match fs::read(&path) {
            Ok(text) => serde_json::from_slice(&text)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(format!("cannot read {}", path.display()))(e)),
        }
    }

    fn claim_blocking(&self, id: &str, actor: &Actor) -> Result<(), StoreError> {
        if let Some(l) = self.read_lock()? {
            return if l.operation_id == id {
                Ok(())
            } else {
                Err(StoreError::Locked(l))
            };
        }
        let info = LockInfo {
            operation_id: id.to_string(),
            actor: actor.clone(),
            time: Utc::now(),
        };
        let tmp = self.root.join(tmp_name("lock"));
        write_file_synced(
            &tmp,
            &serde_json::to_vec_pretty(&info).expect("serializable"),
        )?;
        // link() fails if the lock exists: an atomic create-if-absent.
        let linked = fs::hard_link(&tmp, self.lock_path());
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => sync_dir(&self.root),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match self.read_lock()? {
                Some(l) if l.operation_id == id => Ok(()),
                Some(l) => Err(StoreError::Locked(l)),
                None => Err(StoreError::io(
                    "the operation lock changed while it was taken",
                )(e)),
            },
            Err(e) => Err(StoreError::io("cannot take the operation lock")(e)),
        }
    }

    fn release_blocking(&self, id: &str) -> Result<(), StoreError> {
        if self.read_lock()?.is_some_and(|l| l.operation_id == id) {
            fs::remove_file(self.lock_path())
                .map_err(StoreError::io("cannot release the operation lock"))?;
            sync_dir(&self.root)?;
        }
        Ok(())
    }
}

impl LogState {
    fn open(path: &Path) -> Result<LogState, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(StoreError::io(format!("cannot open {}", path.display())))?;
        let mut st = LogState {
            file,
            valid_len: 0,
            frames: Vec::new(),
            index: LogIndex::default(),
        };
        st.catch_up(path, &mut |_| {})?;
        Ok(st)
    }

    /// The length of the changelog file now.
    fn file_len(&self, path: &Path) -> Result<u64, StoreError> {
        Ok(self
            .file
            .metadata()
            .map_err(StoreError::io(format!("cannot stat {}", path.display())))?
            .len())
    }

    /// Reads frames appended since `valid_len` (by any process), feeding
    /// each change to `each`. Stops quietly at a torn final frame; refuses
    /// a damaged frame followed by more data. Returns the file length it
    /// saw (more than `valid_len` afterwards if the last frame is torn).
    fn catch_up(
        &mut self,
        path: &Path,
        each: &mut dyn FnMut(&PhaseChange),
    ) -> Result<u64, StoreError> {
        let len = self.file_len(path)?;
        if len <= self.valid_len {
            return Ok(len);
        }
        let mut buf = vec![0u8; (len - self.valid_len) as usize];
        self.file
            .read_exact_at(&mut buf, self.valid_len)
            .map_err(StoreError::io(format!("cannot read {}", path.display())))?;
        let mut pos = 0usize;
        while buf.len() - pos >= HEADER as usize {
            let n = u32::from_le_bytes(buf[pos..pos + 4].try_into().unwrap());
            let crc = u32::from_le_bytes(buf[pos + 4..pos + 8].try_into().unwrap());
            let end = pos + HEADER as usize + n as usize;
            let rest_is_zero = || buf[pos..].iter().all(|b| *b == 0);
            if n == 0 || n > MAX_FRAME {
                if rest_is_zero() {
                    break;
                }
                return Err(self.damaged(path, pos));
            }
            if end > buf.len() {
                break; // torn: the frame was never fully written
            }
            let payload = &buf[pos + HEADER as usize..end];
            if crc32fast::hash(payload) != crc {
                if end == buf.len() {
                    break; // torn: the last frame did not reach the disk whole
                }
                return Err(self.damaged(path, pos));
            }
            let changes: Vec<PhaseChange> = serde_json::from_slice(payload).map_err(|e| {
                StoreError::Corrupt(format!(
                    "{} at byte {}: {e}",
                    path.display(),
                    self.valid_len + pos as u64
                ))
            })?;
            let first = changes.first().map(|c| c.seq).unwrap_or(0);
            for c in &changes {
                if c.seq != self.index.last_seq() + 1 {
                    return Err(StoreError::Corrupt(format!(
                        "{}: change {} follows change {}; sequence numbers must be dense",
                        path.display(),
                        c.seq,
                        self.index.last_seq()
                    )));
                }
                self.index.note(c);
                each(c);
            }
            self.frames.push((first, self.valid_len + pos as u64));
            pos = end;
        }
        self.valid_len += pos as u64;
        Ok(len)
    }

    fn damaged(&self, path: &Path, pos: usize) -> StoreError {
        StoreError::Corrupt(format!(
            "{}: damaged frame at byte {} with more data after it; restore the file from a backup or move it aside",
            path.display(),
            self.valid_len + pos as u64
        ))
    }

    /// Changes with seq > after, read from disk.
    fn read_after(&self, path: &Path, after: u64) -> Result<Vec<PhaseChange>, StoreError> {
        if after >= self.index.last_seq() {
            return Ok(Vec::new());
        }
        // Last frame whose first seq is <= after + 1.
        let i = self
            .frames
            .partition_point(|(first, _)| *first <= after + 1);
        let start = self.frames[i.saturating_sub(1)].1;
        let mut buf = vec![0u8; (self.valid_len - start) as usize];
        self.file
            .read_exact_at(&mut buf, start)
            .map_err(StoreError::io(format!("cannot read {}", path.display())))?;
        let mut out = Vec::new();
        let mut pos = 0usize;
        while pos < buf.len() {
            let n = u32::from_le_bytes(buf[pos..pos + 4].try_into().unwrap()) as usize;
            let payload = &buf[pos + 8..pos + 8 + n];
            let changes: Vec<PhaseChange> = serde_json::from_slice(payload)
                .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
            out.extend(changes.into_iter().filter(|c| c.seq > after));
            pos += 8 + n;
        }
        Ok(out)
    }
}

impl OpLog {
    fn with_state<T>(
        &self,
        f: impl FnOnce(&mut LogState) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self.state.lock().unwrap();
        if guard.is_none() {
            *guard = Some(LogState::open(&self.path)?);
        }
        let result = f(guard.as_mut().unwrap());
        if result.is_err() {
            // Re-read from disk next time rather than trust a state that
            // may be half-updated.
            *guard = None;
        }
        result
    }

    fn changes(&self, after: u64) -> Result<Vec<PhaseChange>, StoreError> {
        self.with_state(|st| {
            st.catch_up(&self.path, &mut |_| {})?;
            st.read_after(&self.path, after)
        })
    }

    /// Answers "nothing after `after`" without leaving the caller's thread
    /// when that is known cheaply: the log is open, no commit is running,
    /// nothing was appended since it was last read (one `fstat`) and
    /// `after` is the latest change. `None`: ask [`changes`](Self::changes).
    /// (An engine asks this before every leaf; a round trip to a blocking
    /// thread for it cost more than the `fstat`.)
    fn nothing_after(&self, after: u64) -> Option<()> {
        let guard = self.state.try_lock().ok()?;
        let st = guard.as_ref()?;
        let len = st.file_len(&self.path).ok()?;
        (len <= st.valid_len && after >= st.index.last_seq()).then_some(())
    }

    /// Commits a request, together with whatever other tasks queued
    /// meanwhile (group commit).
    ///
    /// The request is queued, then the task yields once so that the other
    /// futures about to append (the siblings of a parallel group are
    /// futures of one task; other tasks, other threads) queue theirs; then
    /// the first one to get here commits the whole queue in one frame with
    /// one sync, on its own thread (in [`block_in_place`] on a multi-thread
    /// runtime, so the runtime's other tasks move to another thread). The
    /// others find their result set. No hand-off to a blocking thread and
    /// back: on a loaded machine those two wake-ups cost as much as the
    /// sync itself.
    async fn submit(&self, request: Request) -> Result<Vec<PhaseChange>, StoreError> {
        let mine = Arc::new(Pending {
            request,
            result: Mutex::new(None),
        });
        self.queue.lock().unwrap().push(mine.clone());
        let mut queued = Queued {
            log: self,
            mine: &mine,
            done: false,
        };
        tokio::task::yield_now().await;
        let taken = mine.result.lock().unwrap().take();
        let result = match taken {
            Some(r) => r, // a leader committed our changes while we yielded
            None => block_in_place(|| self.lead(&mine)),
        };
        queued.done = true;
        result
    }

    /// Commits the queue (holding `mine`) unless a leader did already.
    fn lead(&self, mine: &Arc<Pending>) -> Result<Vec<PhaseChange>, StoreError> {
        let mut guard = self.state.lock().unwrap();
        if let Some(r) = mine.result.lock().unwrap().take() {
            return r; // a leader committed our changes while we waited
        }
        let batch = std::mem::take(&mut *self.queue.lock().unwrap());
        if guard.is_none() {
            match LogState::open(&self.path) {
                Ok(st) => *guard = Some(st),
                Err(e) => {
                    let msg = e.to_string();
                    for p in &batch {
                        if !Arc::ptr_eq(p, mine) {
                            *p.result.lock().unwrap() = Some(Err(StoreError::io("append failed")(
                                std::io::Error::other(msg.clone()),
                            )));
                        }
                    }
                    return Err(e);
                }
            }
        }
        let st = guard.as_mut().unwrap();
        let outcome = commit(st, &self.path, &batch, &self.stats);
        let mut own = None;
        match outcome {
            Ok(results) => {
                for (p, r) in batch.iter().zip(results) {
                    if Arc::ptr_eq(p, mine) {
                        own = Some(r);
                    } else {
                        *p.result.lock().unwrap() = Some(r);
                    }
                }
            }
            Err(e) => {
                *guard = None;
                let msg = e.to_string();
                for p in &batch {
                    if !Arc::ptr_eq(p, mine) {
                        *p.result.lock().unwrap() = Some(Err(StoreError::io("append failed")(
                            std::io::Error::other(msg.clone()),
                        )));
                    }
                }
                own = Some(Err(e));
            }
        }
        own.expect("own request is in the batch")
    }
}

/// A request in the queue of an [`OpLog`]; if the submitting future is
/// dropped before a leader took the request, it leaves the queue (a
/// cancelled append is not written later by someone else's commit).
struct Queued<'a> {
    log: &'a OpLog,
    mine: &'a Arc<Pending>,
    done: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.log
                .queue
                .lock()
                .unwrap()
                .retain(|p| !Arc::ptr_eq(p, self.mine));
        }
    }
}

/// Runs blocking file work on the caller's thread: inside
/// [`tokio::task::block_in_place`] on a multi-thread runtime, directly
/// elsewhere (a current-thread runtime has no other thread to hand its
/// tasks to; outside a runtime nothing else waits).
fn block_in_place<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Commits a batch of requests as one frame under the file lock.
fn commit(
    st: &mut LogState,
    path: &Path,
    batch: &[Arc<Pending>],
    stats: &Stats,
) -> Result<Vec<Result<Vec<PhaseChange>, StoreError>>, StoreError> {
    st.file
        .lock()
        .map_err(StoreError::io(format!("cannot lock {}", path.display())))?;
    let result = (|| {
        let len = st.catch_up(path, &mut |_| {})?;
        if len > st.valid_len {
            // A writer died mid-frame: cut the torn frame off.
            st.file
                .set_len(st.valid_len)
                .map_err(StoreError::io(format!(
                    "cannot truncate {}",
                    path.display()
                )))?;
        }
        let mut results = Vec::with_capacity(batch.len());
        let mut all: Vec<PhaseChange> = Vec::new();
        for p in batch {
            let prepared = match &p.request {
                Request::Append(changes) => st.index.prepare(changes),
                Request::Import(entries) => Ok(st.index.prepare_import(entries)),
            };
            match prepared {
                Ok(stored) => {
                    for c in &stored {
                        st.index.note(c);
                    }
                    all.extend(stored.iter().cloned());
                    results.push(Ok(stored));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if all.is_empty() {
            return Ok(results);
        }
        let payload = serde_json::to_vec(&all).expect("serializable");
        let mut frame = Vec::with_capacity(payload.len() + HEADER as usize);
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        st.file
            .write_all_at(&frame, st.valid_len)
            .map_err(StoreError::io(format!(
                "cannot append to {}",
                path.display()
            )))?;
        let synced = Instant::now();
        st.file
            .sync_data()
            .map_err(StoreError::io(format!("cannot sync {}", path.display())))?;
        stats.note(all.len(), synced.elapsed());
        st.frames.push((all[0].seq, st.valid_len));
        st.valid_len += frame.len() as u64;
        Ok(results)
    })();
    let _ = st.file.unlock();
    result
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => h
            .spawn_blocking(f)
            .await
            .map_err(|e| StoreError::io("store task failed")(std::io::Error::other(e)))?,
        Err(_) => f(),
    }
}

#[async_trait]
impl PlanStore for FileStore {
    async fn create_operation(&self, plan: &Plan) -> Result<OperationRecord, StoreError> {
        let s = self.clone();
        let plan = plan.clone();
        blocking(move || s.create_blocking(&plan)).await
    }

    async fn operations(&self) -> Result<Vec<OperationRecord>, StoreError> {
        let s = self.clone();
        blocking(move || {
            let ops = s.root.join("operations");
            let mut out = Vec::new();
            let entries = fs::read_dir(&ops)
                .map_err(StoreError::io(format!("cannot list {}", ops.display())))?;
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with('.') || !e.path().join("operation.json").exists() {
                    continue;
                }
                out.push(s.read_record(&name)?);
            }
            out.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.id.cmp(&a.id)));
            Ok(out)
        })
        .await
    }

    async fn operation(&self, id: &str) -> Result<OperationRecord, StoreError> {
        let s = self.clone();
        let id = id.to_string();
        blocking(move || s.read_record(&id)).await
    }

    async fn plan(&self, id: &str) -> Result<Plan, StoreError> {
        let s = self.clone();
        let id = id.to_string();
        blocking(move || {
            let path = s.op_dir(&id)?.join("plan.json");
            let f = File::open(&path)
                .map_err(StoreError::io(format!("cannot read {}", path.display())))?;
            let plan: Plan = serde_json::from_reader(std::io::BufReader::new(f))
                .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
            if plan.operation_id != id {
                return Err(StoreError::Corrupt(format!(
                    "{} holds the plan of operation {:?}",
                    path.display(),
                    plan.operation_id
                )));
            }
            Ok(plan)
        })
        .await
    }

    async fn changes(&self, id: &str, after: u64) -> Result<Vec<PhaseChange>, StoreError> {
        let log = self.log(id)?;
        if log.nothing_after(after).is_some() {
            return Ok(Vec::new());
        }
        blocking(move || log.changes(after)).await
    }

    async fn append(
        &self,
        id: &str,
        changes: Vec<NewChange>,
    ) -> Result<Vec<PhaseChange>, StoreError> {
        self.log(id)?.submit(Request::Append(changes)).await
    }

    async fn import_changes(
        &self,
        id: &str,
        changes: Vec<PhaseChange>,
    ) -> Result<Vec<PhaseChange>, StoreError> {
        self.log(id)?.submit(Request::Import(changes)).await
    }

    async fn set_operation_state(&self, id: &str, state: OperationState) -> Result<(), StoreError> {
        let s = self.clone();
        let id = id.to_string();
        blocking(move || {
            let dir = s.op_dir(&id)?;
            let body = StateFile {
                state,
                updated: Utc::now(),
            };
            write_atomic(
                &dir.join("state.json"),
                &serde_json::to_vec_pretty(&body).expect("serializable"),
            )
        })
        .await
    }

    async fn claim_lock(&self, id: &str, actor: &Actor) -> Result<(), StoreError> {
        let s = self.clone();
        let id = id.to_string();
        let actor = actor.clone();
        blocking(move || s.claim_blocking(&id, &actor)).await
    }

    async fn release_lock(&self, id: &str) -> Result<(), StoreError> {
        let s = self.clone();
        let id = id.to_string();
        blocking(move || s.release_blocking(&id)).await
    }

    async fn lock_holder(&self) -> Result<Option<LockInfo>, StoreError> {
        let s = self.clone();
        blocking(move || s.read_lock()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::PhasePath;
    use crate::plan::Phase;
    use crate::state::PhaseState;

    fn plan(id: &str) -> Plan {
        Plan {
            operation_id: id.into(),
            operation_kind: "t".into(),
            cluster_name: "c".into(),
            created: Utc::now(),
            phases: vec![Phase::new(PhasePath::parse("/a").unwrap(), "A")],
        }
    }

    fn nc(state: PhaseState, expect: Option<u64>) -> NewChange {
        NewChange {
            phase: PhasePath::parse("/a").unwrap(),
            state,
            error: None,
            expect_version: expect,
            actor: Actor {
                host: "h".into(),
                pid: 1,
            },
            time: Utc::now(),
        }
    }

    #[tokio::test]
    async fn appends_survive_reopen_and_torn_tails_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::open(dir.path()).unwrap();
        s.create_operation(&plan("op1")).await.unwrap();
        assert!(matches!(
            s.create_operation(&plan("op1")).await,
            Err(StoreError::AlreadyExists(_))
        ));
        s.append("op1", vec![nc(PhaseState::InProgress, Some(0))])
            .await
            .unwrap();
        s.append("op1", vec![nc(PhaseState::Completed, None)])
            .await
            .unwrap();
        // Simulate a writer that died mid-frame.
        let log = dir.path().join("operations/op1/changelog");
        let mut f = OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let s2 = FileStore::open(dir.path()).unwrap();
        let ch = s2.changes("op1", 0).await.unwrap();
        assert_eq!(ch.len(), 2);
        assert_eq!(ch[1].state, PhaseState::Completed);
        assert_eq!(s2.changes("op1", 1).await.unwrap().len(), 1);
        let stored = s2
            .append("op1", vec![nc(PhaseState::RolledBack, Some(2))])
            .await
            .unwrap();
        assert_eq!(stored[0].seq, 3);
        assert_eq!(s2.changes("op1", 0).await.unwrap().len(), 3);
        // The first handle sees the other's append and its guard is checked
        // against it.
        let err = s
            .append("op1", vec![nc(PhaseState::InProgress, Some(2))])
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict { version: 3, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn appends_made_together_share_one_sync() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::open(dir.path()).unwrap();
        s.create_operation(&plan("op1")).await.unwrap();
        // Eight appends polled together (as the leaves of a parallel group
        // are): one frame, one fdatasync, dense sequence numbers.
        let all = futures::future::join_all(
            (0..8).map(|_| s.append("op1", vec![nc(PhaseState::InProgress, None)])),
        )
        .await;
        let mut seqs: Vec<u64> = all.into_iter().map(|r| r.unwrap()[0].seq).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
        let stats = s.commit_stats();
        assert_eq!((stats.frames, stats.changes), (1, 8));
        // One at a time: one sync each.
        s.append("op1", vec![nc(PhaseState::Completed, Some(8))])
            .await
            .unwrap();
        assert_eq!(s.commit_stats().frames, 2);
        let s2 = FileStore::open(dir.path()).unwrap();
        assert_eq!(s2.changes("op1", 0).await.unwrap().len(), 9);
    }

    #[tokio::test]
    async fn a_dropped_append_leaves_the_queue() {
        use std::future::Future;
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::open(dir.path()).unwrap();
        s.create_operation(&plan("op1")).await.unwrap();
        // Poll once (queued, yielding), then drop: never written.
        let mut fut = Box::pin(s.append("op1", vec![nc(PhaseState::Failed, None)]));
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        drop(fut);
        s.append("op1", vec![nc(PhaseState::InProgress, Some(0))])
            .await
            .unwrap();
        let ch = s.changes("op1", 0).await.unwrap();
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].state, PhaseState::InProgress);
    }

    #[tokio::test]
    async fn damaged_middle_frame_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::open(dir.path()).unwrap();
        s.create_operation(&plan("op1")).await.unwrap();
        s.append("op1", vec![nc(PhaseState::InProgress, None)])
            .await
            .unwrap();
        s.append("op1", vec![nc(PhaseState::Completed, None)])
            .await
            .unwrap();
        let log = dir.path().join("operations/op1/changelog");
        let mut bytes = fs::read(&log).unwrap();
        bytes[10] ^= 0xff;
        fs::write(&log, bytes).unwrap();
        let s2 = FileStore::open(dir.path()).unwrap();
        let err = s2.changes("op1", 0).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    }

    #[tokio::test]
    async fn lock_and_state() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::open(dir.path()).unwrap();
        let a = Actor {
            host: "h".into(),
            pid: 1,
        };
        s.claim_lock("op1", &a).await.unwrap();
        s.claim_lock("op1", &a).await.unwrap();
        assert!(matches!(
            s.claim_lock("op2", &a).await,
            Err(StoreError::Locked(_))
        ));
        s.release_lock("op2").await.unwrap();
        assert_eq!(s.lock_holder().await.unwrap().unwrap().operation_id, "op1");
        s.release_lock("op1").await.unwrap();
        assert!(s.lock_holder().await.unwrap().is_none());
        s.create_operation(&plan("op1")).await.unwrap();
        s.set_operation_state("op1", OperationState::Failed)
            .await
            .unwrap();
        assert_eq!(
            s.operation("op1").await.unwrap().state,
            OperationState::Failed
        );
        assert!(matches!(
            s.operation("../x").await,
            Err(StoreError::BadOperationId(_))
        ));
        assert!(matches!(
            s.operation("nope").await,
            Err(StoreError::NotFound(_))
        ));
    }
}

//! [`SyncedPlanStore`]: a node's plan store, local first, replicated to etcd.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use gravity_plan::{
    Actor, FileStore, LockInfo, LogIndex, NewChange, OperationRecord, OperationState, PhaseChange,
    PhasePath, Plan, PlanStore, StoreError, check_operation_id,
};

use super::cluster::EtcdPlanStore;
use super::{Fail, Pending, distribute};
use crate::client::EtcdClient;

/// Entries pushed to etcd per transaction when catching up.
const PUSH_CHUNK: usize = 500;

/// Rounds of one append while other nodes keep changing guarded phases.
const MAX_ROUNDS: u32 = 100;

/// How a [`SyncedPlanStore`] behaves when etcd is unreachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncConfig {
    /// How long [`SyncedPlanStore::sync`] keeps retrying when etcd stops
    /// answering in the middle of a sync (a leader election, a member
    /// restarting). A sync that cannot reach etcd at all gives up at once.
    pub retry_for: Duration,
    /// After etcd could not be reached, appends use the local store alone
    /// for this long before etcd is tried again; the wait doubles on each
    /// failure, up to [`offline_max`](SyncConfig::offline_max).
    pub offline_min: Duration,
    /// The longest wait between attempts to reach etcd again.
    pub offline_max: Duration,
}

impl Default for SyncConfig {
    /// Retry for 10 s; wait 0.5 s, doubling up to 10 s, between attempts.
    fn default() -> Self {
        SyncConfig {
            retry_for: Duration::from_secs(10),
            offline_min: Duration::from_millis(500),
            offline_max: Duration::from_secs(10),
        }
    }
}

/// What a sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Whether etcd was reached (if not, nothing was synced).
    pub reachable: bool,
    /// Entries copied from the local store to etcd.
    pub pushed: usize,
    /// Entries copied from etcd to the local store.
    pub pulled: usize,
    /// Operations copied to the side that lacked them.
    pub created: usize,
}

impl SyncReport {
    fn add(&mut self, other: &SyncReport) {
        self.reachable &= other.reachable;
        self.pushed += other.pushed;
        self.pulled += other.pulled;
        self.created += other.created;
    }
}

/// A node's [`PlanStore`]: an authoritative local store replicated to the
/// cluster store in etcd. Cheap to clone.
///
/// # How it works
///
/// The local store (a [`FileStore`] in the node's state directory) is
/// authoritative: every read is served from it, and every write lands in
/// it. While etcd answers:
///
/// - an append first brings both sides together (local entries etcd lacks
///   are imported into etcd, etcd entries the local store lacks are imported
///   locally), checks the guards against the local store, then commits the
///   new entries to etcd in a compare-and-swap transaction that also fails
///   if another node changed a guarded phase since, and finally imports the
///   same entries (same ids) into the local store. So a claim is atomic
///   across nodes; the loser gets [`StoreError::Conflict`] naming the
///   winner (whose entry is now in its local store too);
/// - creating an operation and taking the operation lock go through etcd
///   first, so they are exclusive across nodes, then into the local store.
///
/// When etcd cannot be reached (an etcd upgrade stops it), the store carries
/// on with the local store alone, with no error, and tries etcd again after
/// a back-off ([`SyncConfig`]). [`SyncedPlanStore::sync`] converges one
/// operation both ways: the operation and plan are copied to the side that
/// lacks them, then changelog entries by set union keyed by their id
/// (Gravity's `DiffChangelog`/`SyncChangelog`), then the operation state (a
/// finished state wins over `in_progress`; between two finished states the
/// later one). It runs for every operation when the store is opened, and as
/// part of every append while etcd answers.
///
/// # Order of merged entries
///
/// A store resolves a phase to its latest entry by sequence number, and
/// imported entries get the receiving store's next numbers. Entries are
/// imported in the sequence order of the store they come from, which is the
/// order in which they were made on their writer (not wall-clock time, so
/// clock skew between nodes does not matter). Entries already present keep
/// their place. So when the changes made while the sides were apart come
/// from one side only (the usual case: the node running the upgrade carries
/// on alone while etcd is down), every store ends with the same relative
/// order of every phase's entries and resolves every phase the same way.
///
/// # Limits
///
/// - Two nodes changing the *same phase* while apart (both offline, or one
///   offline and one through etcd) are not reconciled: each side puts the
///   other's entries after its own, so the two sides may resolve that phase
///   differently. Claims are only exclusive across nodes while etcd
///   answers; while it is down, only processes sharing one local store
///   exclude each other.
/// - If etcd fails while a commit is in flight, the outcome is unknown; the
///   entries are then written locally with the same ids (so a later sync
///   cannot duplicate them) if the local store has not changed meanwhile,
///   otherwise the append is redone on the local store alone and the
///   entries that may have reached etcd come back as a stale claim on the
///   next sync (a resume re-runs it, like a claim left by a process that
///   died).
/// - A process that falls back to the local store alone can race a process
///   of the same node that still reaches etcd for the same phase; both then
///   hold the claim. Keep one writer per node while etcd is being upgraded.
#[derive(Clone)]
pub struct SyncedPlanStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SyncedPlanStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncedPlanStore")
            .field("cluster", &self.inner.cluster)
            .field("config", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

struct Inner {
    local: Arc<dyn PlanStore>,
    cluster: EtcdPlanStore,
    cfg: SyncConfig,
    health: Mutex<Health>,
    ops: Mutex<HashMap<String, Arc<Mirror>>>,
}

#[derive(Debug, Default)]
struct Health {
    offline_until: Option<Instant>,
    backoff: Duration,
}

type Request = Vec<NewChange>;
type GroupResults = Vec<Result<Vec<PhaseChange>, StoreError>>;

#[derive(Default)]
struct Mirror {
    state: tokio::sync::Mutex<MirrorState>,
    queue: Mutex<Vec<Arc<Pending<Request>>>>,
}

/// What this process knows of one operation on both sides.
#[derive(Default)]
struct MirrorState {
    /// The local changelog.
    index: LogIndex,
    /// Local entries that may be missing in etcd.
    unpushed: Vec<PhaseChange>,
    /// Every etcd entry up to this sequence number is in the local store.
    pulled: u64,
    in_local: bool,
    in_cluster: bool,
}

/// Why an online append stopped.
enum Stop {
    /// etcd could not be reached before anything was sent.
    Unreachable,
    /// etcd failed while `entries` were being committed: they may be there.
    /// With each request's prepared entries (or conflict).
    InDoubt(Vec<PhaseChange>, GroupResults),
    /// Anything else.
    Failed(Fail),
}

impl From<Fail> for Stop {
    fn from(e: Fail) -> Self {
        if e.is_unavailable() {
            Stop::Unreachable
        } else {
            Stop::Failed(e)
        }
    }
}

impl SyncedPlanStore {
    /// A store over `local` and `cluster`, without syncing yet.
    pub fn new(local: Arc<dyn PlanStore>, cluster: EtcdPlanStore, cfg: SyncConfig) -> Self {
        SyncedPlanStore {
            inner: Arc::new(Inner {
                local,
                cluster,
                cfg,
                health: Mutex::default(),
                ops: Mutex::default(),
            }),
        }
    }

    /// A store over `local` and `cluster` that syncs every operation first
    /// ([`sync_all`](Self::sync_all)): an unreachable etcd is no error.
    pub async fn open(
        local: Arc<dyn PlanStore>,
        cluster: EtcdPlanStore,
        cfg: SyncConfig,
    ) -> Result<Self, StoreError> {
        let s = Self::new(local, cluster, cfg);
        s.sync_all().await?;
        Ok(s)
    }

    /// A node's store: a [`FileStore`] in `state_dir` and the cluster store
    /// under the default prefix through `client`, synced on opening.
    pub async fn open_dir(
        state_dir: impl Into<PathBuf>,
        client: EtcdClient,
    ) -> Result<Self, StoreError> {
        let local = FileStore::open(state_dir)?;
        Self::open(
            Arc::new(local),
            EtcdPlanStore::new(client),
            SyncConfig::default(),
        )
        .await
    }

    /// The authoritative local store.
    pub fn local(&self) -> &Arc<dyn PlanStore> {
        &self.inner.local
    }

    /// The cluster store.
    pub fn cluster(&self) -> &EtcdPlanStore {
        &self.inner.cluster
    }

    /// Whether etcd answered the last time it was tried (appends go to the
    /// local store alone while it does not).
    pub fn cluster_reachable(&self) -> bool {
        self.inner.health.lock().unwrap().offline_until.is_none()
    }

    fn online(&self) -> bool {
        let h = self.inner.health.lock().unwrap();
        h.offline_until.is_none_or(|t| Instant::now() >= t)
    }

    fn mark_offline(&self) {
        let cfg = &self.inner.cfg;
        let mut h = self.inner.health.lock().unwrap();
        h.backoff = if h.backoff.is_zero() {
            cfg.offline_min
        } else {
            (h.backoff * 2).min(cfg.offline_max)
        };
        h.offline_until = Some(Instant::now() + h.backoff);
    }

    fn mark_online(&self) {
        let mut h = self.inner.health.lock().unwrap();
        h.offline_until = None;
        h.backoff = Duration::ZERO;
    }

    fn mirror(&self, id: &str) -> Arc<Mirror> {
        self.inner
            .ops
            .lock()
            .unwrap()
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// Converges every operation known to either side (see
    /// [`sync`](Self::sync)). If etcd cannot be reached, does nothing and
    /// reports it. Every operation is tried; the first error is returned.
    pub async fn sync_all(&self) -> Result<SyncReport, StoreError> {
        let mut ids: BTreeSet<String> = self
            .inner
            .local
            .operations()
            .await?
            .into_iter()
            .map(|o| o.id)
            .collect();
        match self.inner.cluster.list().await {
            Ok(list) => ids.extend(list.into_iter().map(|o| o.id)),
            Err(e) if e.is_unavailable() => {
                self.mark_offline();
                return Ok(SyncReport::default());
            }
            Err(e) => return Err(e.into_store()),
        }
        let mut report = SyncReport {
            reachable: true,
            ..SyncReport::default()
        };
        let mut first_error = None;
        for id in ids {
            match self.sync(&id).await {
                Ok(r) => report.add(&r),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(report), Err)
    }

    /// Converges one operation between the local store and etcd: copies
    /// the operation and its plan to the side that lacks it, the changelog
    /// entries each side lacks (by id, in the other side's order), and the
    /// operation state. If etcd cannot be reached, does nothing and reports
    /// it (no error); if it stops answering midway, retries with back-off
    /// for [`SyncConfig::retry_for`]. Fails with [`StoreError::NotFound`]
    /// if neither side has the operation.
    pub async fn sync(&self, id: &str) -> Result<SyncReport, StoreError> {
        check_operation_id(id)?;
        let mirror = self.mirror(id);
        let mut st = mirror.state.lock().await;
        let deadline = Instant::now() + self.inner.cfg.retry_for;
        let mut delay = Duration::from_millis(100);
        let mut reached_ever = false;
        loop {
            let mut reached = false;
            let mut report = SyncReport {
                reachable: true,
                ..SyncReport::default()
            };
            match self
                .try_sync(id, &mut st, &mut reached, &mut report, true)
                .await
            {
                Ok(()) => {
                    self.mark_online();
                    return Ok(report);
                }
                Err(e) if e.is_unavailable() => {
                    reached_ever |= reached;
                    if !reached_ever || Instant::now() >= deadline {
                        self.mark_offline();
                        report.reachable = false;
                        return Ok(report);
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e.into_store()),
            }
        }
    }

    /// One sync attempt; `with_state` also reconciles the operation state.
    async fn try_sync(
        &self,
        id: &str,
        st: &mut MirrorState,
        reached: &mut bool,
        report: &mut SyncReport,
        with_state: bool,
    ) -> Result<(), Fail> {
        let local = &self.inner.local;
        let cluster = &self.inner.cluster;
        if !st.in_local {
            match local.operation(id).await {
                Ok(_) => {}
                Err(StoreError::NotFound(_)) => {
                    let plan = cluster.read_plan(id).await?;
                    *reached = true;
                    match local.create_operation(&plan).await {
                        Ok(_) => report.created += 1,
                        Err(StoreError::AlreadyExists(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
            st.in_local = true;
        }
        if !st.in_cluster {
            match cluster.read_record(id).await {
                Ok(_) => {}
                Err(Fail::Store(StoreError::NotFound(_))) => {
                    let plan = local.plan(id).await?;
                    match cluster.create(&plan).await {
                        Ok(_) => report.created += 1,
                        Err(Fail::Store(StoreError::AlreadyExists(_))) => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
            *reached = true;
            st.in_cluster = true;
        }
        self.catch_up_local(id, st, &HashSet::new()).await?;
        // etcd holds fewer entries than this process pulled: it was
        // restored from a backup (the etcd upgrade restores the backup
        // taken before its members were stopped). The entries it lost
        // are pushed again, in local order, before newer ones, so every
        // node resolves each phase as this one does.
        if st.pulled > 0 && cluster.entry_count(id).await? < st.pulled {
            let theirs: HashSet<uuid::Uuid> = cluster
                .entries_after(id, 0)
                .await?
                .iter()
                .map(|e| e.id)
                .collect();
            st.unpushed = local
                .changes(id, 0)
                .await?
                .into_iter()
                .filter(|c| !theirs.contains(&c.id))
                .collect();
            st.pulled = 0;
        }
        let pushed = self.push(id, st).await?;
        report.pushed += pushed;
        *reached |= pushed > 0;
        report.pulled += self.pull(id, st).await?;
        *reached = true;
        if with_state {
            self.sync_state(id).await?;
        }
        Ok(())
    }

    /// Reads local entries this process has not seen; those not known to
    /// be in etcd (`in_cluster`) are to be pushed. Returns the entries read.
    async fn catch_up_local(
        &self,
        id: &str,
        st: &mut MirrorState,
        in_cluster: &HashSet<uuid::Uuid>,
    ) -> Result<Vec<PhaseChange>, Fail> {
        let new = self.inner.local.changes(id, st.index.last_seq()).await?;
        for c in &new {
            st.index.note(c);
            if !in_cluster.contains(&c.id) {
                st.unpushed.push(c.clone());
            }
        }
        Ok(new)
    }

    /// Imports into etcd the local entries it may lack.
    async fn push(&self, id: &str, st: &mut MirrorState) -> Result<usize, Fail> {
        let mut pushed = 0;
        while !st.unpushed.is_empty() {
            let n = st.unpushed.len().min(PUSH_CHUNK);
            let chunk = &st.unpushed[..n];
            pushed += self
                .inner
                .cluster
                .commit_with(id, |c| {
                    let entries = c.index.prepare_import(chunk);
                    let count = entries.len();
                    Ok((entries, count))
                })
                .await?;
            st.unpushed.drain(..n);
        }
        Ok(pushed)
    }

    /// Imports into the local store the etcd entries it lacks.
    async fn pull(&self, id: &str, st: &mut MirrorState) -> Result<usize, Fail> {
        let theirs = self.inner.cluster.entries_after(id, st.pulled).await?;
        let missing: Vec<PhaseChange> = theirs
            .iter()
            .filter(|e| !st.index.contains(&e.id))
            .cloned()
            .collect();
        let ids: HashSet<uuid::Uuid> = missing.iter().map(|e| e.id).collect();
        let mut pulled = 0;
        if !missing.is_empty() {
            pulled = self.inner.local.import_changes(id, missing).await?.len();
        }
        if let Some(last) = theirs.last() {
            st.pulled = last.seq;
        }
        self.catch_up_local(id, st, &ids).await?;
        Ok(pulled)
    }

    /// Makes the operation state agree: a finished state wins over
    /// `in_progress`, the later of two finished states wins. A finished
    /// operation's lock is released on both sides (it may have been
    /// released on one side only while etcd was down).
    async fn sync_state(&self, id: &str) -> Result<(), Fail> {
        let local = &self.inner.local;
        let cluster = &self.inner.cluster;
        let mine = local.operation(id).await?;
        let theirs = cluster.read_record(id).await?;
        let winner = if mine.state == theirs.state {
            &mine
        } else if !theirs.state.is_finished()
            || (mine.state.is_finished() && mine.updated >= theirs.updated)
        {
            cluster.set_state(id, mine.state, mine.updated).await?;
            &mine
        } else {
            local.set_operation_state(id, theirs.state).await?;
            &theirs
        };
        if winner.state.is_finished() {
            local.release_lock(id).await?;
        }
        if winner.state.is_finished()
            && cluster
                .holder()
                .await?
                .is_some_and(|l| l.operation_id == id)
        {
            cluster.release(id).await?;
        }
        Ok(())
    }

    /// One group of appends, online if etcd answers, else local alone.
    async fn append_group(
        &self,
        id: &str,
        st: &mut MirrorState,
        batch: &[Arc<Pending<Request>>],
    ) -> Result<GroupResults, Fail> {
        if self.online() {
            match self.append_online(id, st, batch).await {
                Ok(results) => {
                    self.mark_online();
                    return Ok(results);
                }
                Err(Stop::Failed(e)) => return Err(e),
                Err(Stop::Unreachable) => self.mark_offline(),
                Err(Stop::InDoubt(entries, prepared)) => {
                    self.mark_offline();
                    // Same ids as the entries that may be in etcd, if the
                    // guards checked before still hold locally.
                    let moved = !self
                        .inner
                        .local
                        .changes(id, st.index.last_seq())
                        .await?
                        .is_empty();
                    if !moved {
                        return self.write_local(id, st, entries, prepared).await;
                    }
                }
            }
        }
        let mut results = Vec::with_capacity(batch.len());
        for p in batch {
            results.push(self.inner.local.append(id, p.request.clone()).await);
        }
        self.catch_up_local(id, st, &HashSet::new()).await?;
        Ok(results)
    }

    async fn append_online(
        &self,
        id: &str,
        st: &mut MirrorState,
        batch: &[Arc<Pending<Request>>],
    ) -> Result<GroupResults, Stop> {
        for _ in 0..MAX_ROUNDS {
            let mut ignored = false;
            let mut report = SyncReport::default();
            self.try_sync(id, st, &mut ignored, &mut report, false)
                .await?;
            // Guards, against the local store (which now has every entry
            // etcd had a moment ago).
            let mut index: Cow<'_, LogIndex> = Cow::Borrowed(&st.index);
            let mut prepared: Vec<Result<Vec<PhaseChange>, StoreError>> = Vec::new();
            let mut guarded: HashSet<PhasePath> = HashSet::new();
            let mut all: Vec<PhaseChange> = Vec::new();
            for (i, p) in batch.iter().enumerate() {
                match index.prepare(&p.request) {
                    Ok(entries) => {
                        if i + 1 < batch.len() {
                            let idx = index.to_mut();
                            for c in &entries {
                                idx.note(c);
                            }
                        }
                        guarded.extend(
                            p.request
                                .iter()
                                .filter(|c| c.expect_version.is_some())
                                .map(|c| c.phase.clone()),
                        );
                        all.extend(entries.iter().cloned());
                        prepared.push(Ok(entries));
                    }
                    Err(e) => prepared.push(Err(e)),
                }
            }
            if all.is_empty() {
                return Ok(prepared);
            }
            // In etcd: fail if another node changed a guarded phase since
            // the pull (an entry the local store does not have).
            let pulled = st.pulled as usize;
            let known = &st.index;
            let committed = self
                .inner
                .cluster
                .commit_with(id, |c| {
                    let newer = c.changes.get(pulled..).unwrap_or(&[]);
                    if newer
                        .iter()
                        .any(|e| guarded.contains(&e.phase) && !known.contains(&e.id))
                    {
                        return Ok((Vec::new(), false));
                    }
                    Ok((c.index.prepare_import(&all), true))
                })
                .await;
            match committed {
                Ok(true) => {
                    return self
                        .write_local(id, st, all, prepared)
                        .await
                        .map_err(Stop::Failed);
                }
                Ok(false) => continue, // pull the other node's change, check again
                Err(e) if e.is_unavailable() => return Err(Stop::InDoubt(all, prepared)),
                Err(e) => return Err(Stop::Failed(e)),
            }
        }
        Err(Stop::Failed(Fail::Store(StoreError::Io {
            context: super::CONTEXT.into(),
            source: std::io::Error::other(format!(
                "gave up appending to operation {id} after {MAX_ROUNDS} rounds: other nodes keep changing its phases"
            )),
        })))
    }

    /// Imports prepared entries (ids assigned already) into the local
    /// store and hands each request the entries as stored there.
    async fn write_local(
        &self,
        id: &str,
        st: &mut MirrorState,
        entries: Vec<PhaseChange>,
        prepared: GroupResults,
    ) -> Result<GroupResults, Fail> {
        let ours: HashSet<uuid::Uuid> = entries.iter().map(|e| e.id).collect();
        self.inner.local.import_changes(id, entries).await?;
        let stored: HashMap<uuid::Uuid, PhaseChange> = self
            .catch_up_local(id, st, &ours)
            .await?
            .into_iter()
            .map(|c| (c.id, c))
            .collect();
        Ok(prepared
            .into_iter()
            .map(|r| {
                r.map(|entries| {
                    entries
                        .into_iter()
                        .map(|e| stored.get(&e.id).cloned().unwrap_or(e))
                        .collect()
                })
            })
            .collect())
    }
}

#[async_trait]
impl PlanStore for SyncedPlanStore {
    async fn create_operation(&self, plan: &Plan) -> Result<OperationRecord, StoreError> {
        let id = plan.operation_id.as_str();
        check_operation_id(id)?;
        if self.inner.local.operation(id).await.is_ok() {
            return Err(StoreError::AlreadyExists(id.to_string()));
        }
        let mut in_cluster = false;
        if self.online() {
            match self.inner.cluster.create(plan).await {
                Ok(_) => {
                    self.mark_online();
                    in_cluster = true;
                }
                Err(e) if e.is_unavailable() => self.mark_offline(),
                Err(e) => return Err(e.into_store()),
            }
        }
        let record = self.inner.local.create_operation(plan).await?;
        if in_cluster {
            let mirror = self.mirror(id);
            let mut st = mirror.state.lock().await;
            st.in_cluster = true;
            st.in_local = true;
        }
        Ok(record)
    }

    async fn operations(&self) -> Result<Vec<OperationRecord>, StoreError> {
        self.inner.local.operations().await
    }

    async fn operation(&self, id: &str) -> Result<OperationRecord, StoreError> {
        self.inner.local.operation(id).await
    }

    async fn plan(&self, id: &str) -> Result<Plan, StoreError> {
        self.inner.local.plan(id).await
    }

    async fn changes(&self, id: &str, after: u64) -> Result<Vec<PhaseChange>, StoreError> {
        self.inner.local.changes(id, after).await
    }

    async fn append(
        &self,
        id: &str,
        changes: Vec<NewChange>,
    ) -> Result<Vec<PhaseChange>, StoreError> {
        check_operation_id(id)?;
        let mirror = self.mirror(id);
        let mine = Pending::new(changes);
        mirror.queue.lock().unwrap().push(mine.clone());
        let mut st = mirror.state.lock().await;
        if let Some(r) = mine.take() {
            return r; // committed with an earlier group
        }
        let batch: Vec<_> = std::mem::take(&mut *mirror.queue.lock().unwrap());
        let outcome = self.append_group(id, &mut st, &batch).await;
        distribute(&batch, &mine, outcome)
    }

    async fn import_changes(
        &self,
        id: &str,
        changes: Vec<PhaseChange>,
    ) -> Result<Vec<PhaseChange>, StoreError> {
        check_operation_id(id)?;
        let mirror = self.mirror(id);
        let mut st = mirror.state.lock().await;
        let stored = self.inner.local.import_changes(id, changes).await?;
        self.catch_up_local(id, &mut st, &HashSet::new())
            .await
            .map_err(Fail::into_store)?;
        if self.online() && st.in_cluster {
            match self.push(id, &mut st).await {
                Ok(_) => self.mark_online(),
                Err(e) if e.is_unavailable() => self.mark_offline(),
                Err(e) => return Err(e.into_store()),
            }
        }
        Ok(stored)
    }

    async fn set_operation_state(&self, id: &str, state: OperationState) -> Result<(), StoreError> {
        self.inner.local.set_operation_state(id, state).await?;
        if self.online() {
            match self.inner.cluster.set_state(id, state, Utc::now()).await {
                Ok(()) => self.mark_online(),
                // Created while etcd was down: the next sync copies it.
                Err(Fail::Store(StoreError::NotFound(_))) => {}
                Err(e) if e.is_unavailable() => self.mark_offline(),
                Err(e) => return Err(e.into_store()),
            }
        }
        Ok(())
    }

    async fn claim_lock(&self, id: &str, actor: &Actor) -> Result<(), StoreError> {
        let mut fresh = false;
        if self.online() {
            match self.inner.cluster.claim(id, actor).await {
                Ok(taken) => {
                    self.mark_online();
                    fresh = taken;
                }
                Err(e) if e.is_unavailable() => self.mark_offline(),
                Err(e) => return Err(e.into_store()),
            }
        }
        match self.inner.local.claim_lock(id, actor).await {
            Ok(()) => Ok(()),
            Err(e) => {
                if fresh {
                    let _ = self.inner.cluster.release(id).await;
                }
                Err(e)
            }
        }
    }

    async fn release_lock(&self, id: &str) -> Result<(), StoreError> {
        self.inner.local.release_lock(id).await?;
        if self.online() {
            match self.inner.cluster.release(id).await {
                Ok(()) => self.mark_online(),
                Err(e) if e.is_unavailable() => self.mark_offline(),
                Err(e) => return Err(e.into_store()),
            }
        }
        Ok(())
    }

    async fn lock_holder(&self) -> Result<Option<LockInfo>, StoreError> {
        if self.online() {
            match self.inner.cluster.holder().await {
                Ok(h) => {
                    self.mark_online();
                    return Ok(h);
                }
                Err(e) if e.is_unavailable() => self.mark_offline(),
                Err(e) => return Err(e.into_store()),
            }
        }
        self.inner.local.lock_holder().await
    }
}

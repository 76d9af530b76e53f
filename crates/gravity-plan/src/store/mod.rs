//! Where operations, plans and changelogs are kept.
//!
//! [`PlanStore`] is the storage contract; [`MemoryStore`] keeps everything
//! in memory (tests, embedding) and [`FileStore`] is the durable default on
//! disk. Both give the same guarantees: an operation and its plan are
//! created together or not at all; appends are atomic per call and ordered
//! by a dense sequence number; an append may carry a compare-and-swap guard
//! per phase, which is how the move to `in_progress` becomes an atomic
//! claim across processes.
//!
//! Changelog entries are immutable and carry a unique `id`, so two stores
//! holding copies of one operation (a node's local store and the cluster
//! store in etcd) converge by set union:
//! [`import_changes`](PlanStore::import_changes) appends entries made by
//! another store, keeping their id, phase, state, time, error and actor,
//! skipping ids already present (so importing twice changes nothing), and
//! gives them this store's next sequence numbers in the order given. The
//! caller decides that order (the replicating stores pass entries in the
//! sequence order of the store they come from, which is the order they were
//! made in). [`LogIndex`] holds the per-phase bookkeeping every store uses
//! to check guards and assign sequence numbers, for stores in other crates.

mod file;
mod memory;

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use file::{CommitStats, FileStore};
pub use memory::MemoryStore;

use crate::path::PhasePath;
use crate::plan::Plan;
use crate::state::{Actor, NewChange, OperationState, PhaseChange, PhaseState};

/// An operation as listed by a store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationRecord {
    /// Operation id.
    pub id: String,
    /// Operation kind (`update`, `runbook`, …).
    pub kind: String,
    /// Cluster name.
    pub cluster: String,
    /// Creation time.
    pub created: DateTime<Utc>,
    /// Current state.
    pub state: OperationState,
    /// When the state last changed.
    pub updated: DateTime<Utc>,
}

impl OperationRecord {
    /// The record for a freshly created plan.
    pub fn for_plan(plan: &Plan) -> Self {
        OperationRecord {
            id: plan.operation_id.clone(),
            kind: plan.operation_kind.clone(),
            cluster: plan.cluster_name.clone(),
            created: plan.created,
            state: OperationState::InProgress,
            updated: plan.created,
        }
    }
}

/// Who holds the operation lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// The operation holding the lock.
    pub operation_id: String,
    /// Who took it.
    pub actor: Actor,
    /// When.
    pub time: DateTime<Utc>,
}

/// Why a store operation failed.
///
/// Unlike the other error enums of the workspace this one is exhaustive:
/// it is part of the [`PlanStore`] contract that stores in other crates
/// implement (and relay between each other), so a new variant must break
/// their builds rather than be mapped to the wrong thing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such operation.
    #[error("no operation with id {0:?} found")]
    NotFound(String),
    /// An operation with that id exists already.
    #[error("operation {0:?} already exists")]
    AlreadyExists(String),
    /// The operation id cannot be used (it must be a safe file name).
    #[error(
        "operation id {0:?} is not valid: use letters, digits, '-', '_' and '.', not starting with '.' (at most 128)"
    )]
    BadOperationId(String),
    /// A compare-and-swap guard failed: someone else changed the phase.
    #[error("phase {phase} was changed by {actor} (now {state}) since this process read it")]
    Conflict {
        /// The phase.
        phase: PhasePath,
        /// Its current state.
        state: PhaseState,
        /// Who made the latest change.
        actor: Actor,
        /// Sequence number of the latest change.
        version: u64,
    },
    /// Another operation holds the operation lock.
    #[error("operation {} is active (locked by {} since {})", .0.operation_id, .0.actor, .0.time)]
    Locked(LockInfo),
    /// Stored data is damaged.
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
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

impl StoreError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Io { context, source }
    }
}

/// The storage contract for operations and their plans.
#[async_trait]
pub trait PlanStore: Send + Sync {
    /// Creates an operation together with its plan: both or neither.
    async fn create_operation(&self, plan: &Plan) -> Result<OperationRecord, StoreError>;

    /// All operations, newest first.
    async fn operations(&self) -> Result<Vec<OperationRecord>, StoreError>;

    /// One operation.
    async fn operation(&self, id: &str) -> Result<OperationRecord, StoreError>;

    /// The plan of an operation.
    async fn plan(&self, id: &str) -> Result<Plan, StoreError>;

    /// Changelog entries with a sequence number above `after`, in order.
    async fn changes(&self, id: &str, after: u64) -> Result<Vec<PhaseChange>, StoreError>;

    /// Appends changes atomically (all or none) and durably, checking each
    /// change's compare-and-swap guard; returns the entries as stored.
    async fn append(
        &self,
        id: &str,
        changes: Vec<NewChange>,
    ) -> Result<Vec<PhaseChange>, StoreError>;

    /// Imports changelog entries that another store made (replication).
    ///
    /// Each entry keeps its `id`, phase, state, time, error and actor; its
    /// `seq` is ignored and the entry gets this store's next sequence
    /// number, in the order given. Entries whose `id` is already in the
    /// changelog (or earlier in `changes`) are skipped, so importing is
    /// idempotent. No guard is checked: the entries are facts recorded
    /// elsewhere. Atomic and durable like [`append`](PlanStore::append);
    /// returns the entries newly stored (empty if every one was present).
    async fn import_changes(
        &self,
        id: &str,
        changes: Vec<PhaseChange>,
    ) -> Result<Vec<PhaseChange>, StoreError>;

    /// Sets the operation state.
    async fn set_operation_state(&self, id: &str, state: OperationState) -> Result<(), StoreError>;

    /// Takes the operation lock for `id`; fails with [`StoreError::Locked`]
    /// if another operation holds it. Taking it again for the same id is fine.
    async fn claim_lock(&self, id: &str, actor: &Actor) -> Result<(), StoreError>;

    /// Releases the lock if `id` holds it.
    async fn release_lock(&self, id: &str) -> Result<(), StoreError>;

    /// Who holds the operation lock.
    async fn lock_holder(&self) -> Result<Option<LockInfo>, StoreError>;
}

/// Checks an operation id for use as a file name.
pub fn check_operation_id(id: &str) -> Result<(), StoreError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadOperationId(id.to_string()))
    }
}

/// The latest change per phase and every entry id of one changelog: what a
/// store needs to check compare-and-swap guards, assign dense sequence
/// numbers and make imports idempotent. Fed with every stored entry in
/// sequence order ([`note`](LogIndex::note)).
#[derive(Debug, Clone, Default)]
pub struct LogIndex {
    last_seq: u64,
    latest: HashMap<PhasePath, (u64, PhaseState, Actor)>,
    ids: HashSet<uuid::Uuid>,
}

impl LogIndex {
    /// An empty index (a changelog with no entries).
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a stored entry.
    pub fn note(&mut self, c: &PhaseChange) {
        self.last_seq = self.last_seq.max(c.seq);
        self.ids.insert(c.id);
        self.latest
            .insert(c.phase.clone(), (c.seq, c.state, c.actor.clone()));
    }

    /// The highest sequence number noted (0: none).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Whether an entry with this id was noted.
    pub fn contains(&self, id: &uuid::Uuid) -> bool {
        self.ids.contains(id)
    }

    /// The latest change of a phase: its sequence number, state and actor.
    pub fn latest(&self, phase: &PhasePath) -> Option<(u64, PhaseState, &Actor)> {
        self.latest.get(phase).map(|(v, s, a)| (*v, *s, a))
    }

    /// Checks the guards of one atomic batch and assigns sequence numbers
    /// and fresh ids. Nothing is noted (on success either: the caller notes
    /// the entries once they are stored).
    pub fn prepare(&self, batch: &[NewChange]) -> Result<Vec<PhaseChange>, StoreError> {
        let mut out: Vec<PhaseChange> = Vec::with_capacity(batch.len());
        for (i, nc) in batch.iter().enumerate() {
            if let Some(expect) = nc.expect_version {
                // The latest version, counting changes earlier in this batch.
                let within = out.iter().rev().find(|c| c.phase == nc.phase);
                let (version, state, actor) = match within {
                    Some(c) => (c.seq, c.state, c.actor.clone()),
                    None => match self.latest.get(&nc.phase) {
                        Some((v, s, a)) => (*v, *s, a.clone()),
                        None => (0, PhaseState::Unstarted, nc.actor.clone()),
                    },
                };
                if version != expect {
                    return Err(StoreError::Conflict {
                        phase: nc.phase.clone(),
                        state,
                        actor,
                        version,
                    });
                }
            }
            out.push(PhaseChange {
                seq: self.last_seq + 1 + i as u64,
                id: uuid::Uuid::new_v4(),
                phase: nc.phase.clone(),
                state: nc.state,
                time: nc.time,
                error: nc.error.clone(),
                actor: nc.actor.clone(),
            });
        }
        Ok(out)
    }

    /// Prepares an import: drops entries whose id was noted or appears
    /// earlier in `entries`, and numbers the rest from the next sequence
    /// number, keeping everything else. Nothing is noted.
    pub fn prepare_import(&self, entries: &[PhaseChange]) -> Vec<PhaseChange> {
        let mut seen: HashSet<uuid::Uuid> = HashSet::new();
        let mut out: Vec<PhaseChange> = Vec::new();
        for e in entries {
            if self.ids.contains(&e.id) || !seen.insert(e.id) {
                continue;
            }
            let mut c = e.clone();
            c.seq = self.last_seq + 1 + out.len() as u64;
            out.push(c);
        }
        out
    }
}

//! Plan stores backed by etcd.
//!
//! - [`EtcdPlanStore`]: the cluster-wide [`PlanStore`](gravity_plan::PlanStore) in etcd. An
//!   operation and its plan are created in one transaction; changes are
//!   appended with a compare-and-swap on a per-operation head key, so the
//!   move to `in_progress` is an atomic claim across nodes; `--tail`
//!   follows an operation through a watch ([`EtcdPlanStore::watch_changes`]).
//! - [`SyncedPlanStore`]: a node's store. Its local store (a
//!   [`FileStore`](gravity_plan::FileStore)) is authoritative and keeps
//!   working while etcd is down (during an etcd upgrade); while etcd is
//!   reachable, claims go through etcd first. Both sides converge by set
//!   union of changelog entries keyed by their id
//!   ([`SyncedPlanStore::sync`]), as Gravity's reconciler did.
//!
//! # Key layout
//!
//! Every key lives under a configurable prefix ([`DEFAULT_PREFIX`],
//! `/gravity/`); `<id>` is an operation id (a safe file name, so it never
//! holds `/`):
//!
//! ```text
//! <prefix>operations/<id>                      {"id","kind","cluster","created"}   written once
//! <prefix>states/<id>                          {"state","updated"}                 replaced
//! <prefix>plans/<id>                           {"nonce","chunks","bytes","crc32"}  written once
//! <prefix>plan-chunks/<id>/<nonce>/<k:06>      bytes of the plan JSON, chunk k     written once
//! <prefix>heads/<id>                           {"seq": last sequence number}       compare-and-swap
//! <prefix>changes/<id>/<first seq:020>         JSON array of changes (one append)  written once
//! <prefix>lock                                 the operation lock                  create-if-absent
//! ```
//!
//! `create_operation` writes `operations/`, `states/`, `plans/`, `heads/`
//! (at 0) and, for a plan of at most [`PLAN_CHUNK`] bytes, its single chunk
//! in one transaction guarded by "`operations/<id>` is absent". etcd
//! refuses requests above 1.5 MiB by default, so a larger plan is written
//! first as chunks under a fresh nonce (keys nobody reads yet) and the
//! transaction then only commits the manifest that names them: the
//! operation still appears with its whole plan or not at all. A create that
//! loses a race deletes its chunks; chunks of a writer that died before its
//! transaction are unreferenced garbage (a few keys under
//! `plan-chunks/<id>/`).
//!
//! An append reads the head (and any change keys this process has not seen),
//! checks the guards against the latest change per phase, and commits the
//! changes as one key plus the new head in a transaction that compares the
//! head's mod revision. If only the head moved (another node appended), it
//! re-reads and tries again: the guards are checked again against the new
//! latest state, so a claim that another node won fails with
//! [`StoreError::Conflict`] naming the winner, and sequence numbers stay
//! dense. Appends that arrive together in one process are committed as one
//! key (group commit), like the file store's frames.
//!
//! Errors: etcd failures become [`StoreError::Io`] whose source is an
//! [`std::io::Error`] wrapping the [`EtcdError`]
//! ([`is_unavailable`] tells whether etcd could not be reached); damaged
//! values are [`StoreError::Corrupt`] naming the key.

mod cluster;
mod synced;
mod watch;

use std::io::ErrorKind;
use std::sync::{Arc, Mutex};

use gravity_plan::{PhaseChange, StoreError};

pub use cluster::{DEFAULT_PREFIX, EtcdPlanStore, PLAN_CHUNK};
pub use synced::{SyncConfig, SyncReport, SyncedPlanStore};
pub use watch::ChangeStream;

use crate::client::EtcdError;

/// What went wrong inside the stores: a store error, or etcd itself.
#[derive(Debug)]
pub(crate) enum Fail {
    Store(StoreError),
    Etcd(EtcdError),
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

impl From<EtcdError> for Fail {
    fn from(e: EtcdError) -> Self {
        Fail::Etcd(e)
    }
}

impl Fail {
    /// Whether etcd could not be reached (no member answered).
    pub(crate) fn is_unavailable(&self) -> bool {
        matches!(self, Fail::Etcd(EtcdError::Unavailable { .. }))
    }

    pub(crate) fn into_store(self) -> StoreError {
        match self {
            Fail::Store(e) => e,
            Fail::Etcd(e) => etcd_error(e),
        }
    }

    /// A copy of the error for the other members of a committed group.
    pub(crate) fn echo(&self) -> StoreError {
        match self {
            Fail::Store(e) => echo_store_error(e),
            Fail::Etcd(e) => StoreError::Io {
                context: CONTEXT.into(),
                source: std::io::Error::new(etcd_kind(e), e.to_string()),
            },
        }
    }
}

const CONTEXT: &str = "cluster plan store in etcd";

fn etcd_kind(e: &EtcdError) -> ErrorKind {
    match e {
        EtcdError::Unavailable { .. } => ErrorKind::NotConnected,
        EtcdError::BadEndpoint(_) => ErrorKind::InvalidInput,
        EtcdError::Server { .. } | EtcdError::Decode { .. } => ErrorKind::Other,
    }
}

/// Converts an etcd failure to a store error (an `Io` error whose source
/// wraps the [`EtcdError`]).
pub(crate) fn etcd_error(e: EtcdError) -> StoreError {
    StoreError::Io {
        context: CONTEXT.into(),
        source: std::io::Error::new(etcd_kind(&e), e),
    }
}

/// Whether a store error says that etcd could not be reached (as opposed
/// to etcd refusing a request, or damaged data).
pub fn is_unavailable(e: &StoreError) -> bool {
    match e {
        StoreError::Io { source, .. } => {
            source
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<EtcdError>())
                .is_some_and(|e| matches!(e, EtcdError::Unavailable { .. }))
                || (source.kind() == ErrorKind::NotConnected)
        }
        _ => false,
    }
}

/// A copy of a store error (they are not `Clone`: `Io` holds an I/O error).
pub(crate) fn echo_store_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::NotFound(s) => StoreError::NotFound(s.clone()),
        StoreError::AlreadyExists(s) => StoreError::AlreadyExists(s.clone()),
        StoreError::BadOperationId(s) => StoreError::BadOperationId(s.clone()),
        StoreError::Conflict {
            phase,
            state,
            actor,
            version,
        } => StoreError::Conflict {
            phase: phase.clone(),
            state: *state,
            actor: actor.clone(),
            version: *version,
        },
        StoreError::Locked(l) => StoreError::Locked(l.clone()),
        StoreError::Corrupt(s) => StoreError::Corrupt(s.clone()),
        StoreError::Io { context, source } => StoreError::Io {
            context: context.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
    }
}

/// One caller's request waiting in a group commit.
#[derive(Debug)]
pub(crate) struct Pending<R> {
    pub request: R,
    pub result: Mutex<Option<Result<Vec<PhaseChange>, StoreError>>>,
}

impl<R> Pending<R> {
    pub fn new(request: R) -> Arc<Self> {
        Arc::new(Pending {
            request,
            result: Mutex::new(None),
        })
    }

    pub fn take(&self) -> Option<Result<Vec<PhaseChange>, StoreError>> {
        self.result.lock().unwrap().take()
    }

    pub fn set(&self, r: Result<Vec<PhaseChange>, StoreError>) {
        *self.result.lock().unwrap() = Some(r);
    }
}

/// Hands each member of a committed group its result; returns the caller's.
pub(crate) fn distribute<R>(
    batch: &[Arc<Pending<R>>],
    mine: &Arc<Pending<R>>,
    outcome: Result<Vec<Result<Vec<PhaseChange>, StoreError>>, Fail>,
) -> Result<Vec<PhaseChange>, StoreError> {
    match outcome {
        Ok(results) => {
            let mut own = None;
            for (p, r) in batch.iter().zip(results) {
                if Arc::ptr_eq(p, mine) {
                    own = Some(r);
                } else {
                    p.set(r);
                }
            }
            own.expect("the caller's request is in its batch")
        }
        Err(e) => {
            for p in batch {
                if !Arc::ptr_eq(p, mine) {
                    p.set(Err(e.echo()));
                }
            }
            Err(e.into_store())
        }
    }
}

/// Hands every member of a committed group its result (the caller's
/// request was not in it).
pub(crate) fn hand_out<R>(
    batch: &[Arc<Pending<R>>],
    outcome: Result<Vec<Result<Vec<PhaseChange>, StoreError>>, Fail>,
) {
    match outcome {
        Ok(results) => {
            for (p, r) in batch.iter().zip(results) {
                p.set(r);
            }
        }
        Err(e) => {
            for p in batch {
                p.set(Err(e.echo()));
            }
        }
    }
}

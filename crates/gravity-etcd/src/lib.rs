//! etcd for gravity-rs.
//!
//! - [`client`]: a small etcd v3 client over etcd's JSON gateway
//!   (ranges, puts, deletes, guarded transactions, watches) that fails over
//!   between members.
//! - [`harness`]: a real local etcd cluster of `etcd` processes on
//!   127.0.0.1, for tests and rehearsals.
//! - [`backend`]: the upgrade's `Etcd` backend over real members
//!   ([`EtcdBackend`], members started and stopped through a
//!   [`MemberControl`]) and its `Election` backend over Gravity's election
//!   keys ([`backend::election::EtcdElection`]).
//! - [`rehearsal`]: a real etcd cluster of detached local processes, one
//!   member per master of a simulated cluster, that the `/etcd` phases
//!   upgrade for real (`gravity sim etcd start`).
//! - [`plan_store`]: the cluster-wide plan store in etcd
//!   ([`EtcdPlanStore`], with `--tail` through a watch) and a node's store
//!   that keeps its local copy authoritative and syncs it with etcd
//!   ([`SyncedPlanStore`]).

pub mod backend;
pub mod client;
pub mod harness;
pub mod plan_store;
pub mod rehearsal;

pub use backend::{
    EtcdBackend, EtcdBackendConfig, EtcdBackendError, HarnessControl, MemberControl, ProcessControl,
};
pub use client::{
    Compare, EtcdClient, EtcdError, EtcdResult, KeyValue, TxnOp, TxnResult, WatchEvent,
};
pub use harness::{HarnessError, LocalEtcdCluster};
pub use plan_store::{EtcdPlanStore, SyncConfig, SyncReport, SyncedPlanStore};
pub use rehearsal::Rehearsal;

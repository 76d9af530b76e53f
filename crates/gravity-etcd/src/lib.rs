//! etcd for gravity-rs.
//!
//! - [`client`]: a small etcd v3 client over etcd's JSON gateway
//!   (ranges, puts, deletes, guarded transactions, watches) that fails over
//!   between members.
//! - [`harness`]: a real local etcd cluster of `etcd` processes on
//!   127.0.0.1, for tests and rehearsals.

pub mod client;
pub mod harness;

pub use client::{
    Compare, EtcdClient, EtcdError, EtcdResult, KeyValue, TxnOp, TxnResult, WatchEvent,
};
pub use harness::{HarnessError, LocalEtcdCluster};

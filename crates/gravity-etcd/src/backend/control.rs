//! How [`EtcdBackend`](super::EtcdBackend) starts and stops members.
//!
//! [`MemberControl`] is the small interface between the backend's
//! bookkeeping (versions, data dirs, addresses, cluster tokens) and the
//! processes. [`HarnessControl`] implements it over a [`LocalEtcdCluster`]
//! for tests; [`ProcessControl`](super::ProcessControl) over detached local
//! processes for rehearsals. A production implementation would drive
//! planet's etcd service on each node (`planet etcd disable|enable
//! [--upgrade]` through the node's agent, with the data dir and client
//! address written to planet's etcd environment); it is not part of this
//! crate yet.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::error::ControlError;
use crate::harness::LocalEtcdCluster;

/// `--initial-cluster-state` of a start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialClusterState {
    /// The data dir is fresh: the member forms a new cluster with the
    /// members sharing its cluster token.
    New,
    /// The data dir holds a member already (the flag is then ignored by etcd).
    Existing,
}

/// How a member is to be started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpec {
    /// The etcd binary for the member's version.
    pub binary: PathBuf,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Where it serves clients (`http://127.0.0.1:2379`).
    pub client_url: String,
    /// `--initial-cluster-token`.
    pub cluster_token: String,
    /// `--initial-cluster-state`.
    pub initial_cluster_state: InitialClusterState,
}

/// Starts and stops the etcd member of a node.
///
/// Implementations only act on processes; the backend decides versions,
/// data dirs and addresses and keeps them in its state files.
#[async_trait]
pub trait MemberControl: Send + Sync + std::fmt::Debug {
    /// Stops the member (SIGTERM, then waits); returns whether it ran.
    async fn stop(&self, node: &str) -> Result<bool, ControlError>;
    /// Starts the stopped member as `spec` says. Returns once the process
    /// runs; it may not serve yet (a new cluster needs a quorum).
    async fn start(&self, node: &str, spec: &MemberSpec) -> Result<(), ControlError>;
    /// Whether the member's process runs.
    async fn running(&self, node: &str) -> Result<bool, ControlError>;
    /// Where the member's log is, for error messages (if known).
    fn log_hint(&self, _node: &str) -> Option<String> {
        None
    }
}

/// [`MemberControl`] over a [`LocalEtcdCluster`] shared behind a mutex
/// (tests keep a clone of the `Arc` to kill members).
///
/// The harness runs one etcd binary for every member, so a start asking
/// for another binary is refused ([`ControlError::Unsupported`]). Peer URLs
/// and member names are the harness's; `--initial-cluster` lists every
/// harness member, so a new cluster is formed by all of them.
#[derive(Debug, Clone)]
pub struct HarnessControl {
    cluster: Arc<Mutex<LocalEtcdCluster>>,
    members: BTreeMap<String, usize>,
    binary: PathBuf,
}

impl HarnessControl {
    /// Controls harness member `i` as the member of node `nodes[i]`.
    pub fn new(
        cluster: Arc<Mutex<LocalEtcdCluster>>,
        nodes: &[&str],
    ) -> Result<Self, ControlError> {
        let len = cluster.lock().map_err(|_| ControlError::Poisoned)?.len();
        if nodes.len() > len {
            return Err(ControlError::Unsupported(format!(
                "{} nodes given for a local cluster of {len} members",
                nodes.len()
            )));
        }
        Ok(HarnessControl {
            cluster,
            members: nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.to_string(), i))
                .collect(),
            binary: crate::harness::etcd_binary()?,
        })
    }

    /// The binary the harness runs.
    pub fn binary(&self) -> &std::path::Path {
        &self.binary
    }

    /// The harness member index of `node`.
    pub fn index(&self, node: &str) -> Option<usize> {
        self.members.get(node).copied()
    }

    /// The shared cluster.
    pub fn cluster(&self) -> &Arc<Mutex<LocalEtcdCluster>> {
        &self.cluster
    }

    fn idx(&self, node: &str) -> Result<usize, ControlError> {
        self.index(node)
            .ok_or_else(|| ControlError::NoMember(node.to_string()))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut LocalEtcdCluster) -> Result<T, ControlError> + Send + 'static,
    ) -> Result<T, ControlError> {
        let cluster = self.cluster.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = cluster.lock().map_err(|_| ControlError::Poisoned)?;
            f(&mut c)
        })
        .await
        .map_err(|e| ControlError::Unsupported(format!("the control task failed: {e}")))?
    }
}

#[async_trait]
impl MemberControl for HarnessControl {
    async fn stop(&self, node: &str) -> Result<bool, ControlError> {
        let i = self.idx(node)?;
        self.blocking(move |c| {
            let was = c.member_mut(i)?.running();
            c.stop_member(i)?;
            Ok(was)
        })
        .await
    }

    async fn start(&self, node: &str, spec: &MemberSpec) -> Result<(), ControlError> {
        let i = self.idx(node)?;
        if spec.binary != self.binary {
            return Err(ControlError::Unsupported(format!(
                "the local cluster runs {} for every member and cannot run {}; map every version to that binary",
                self.binary.display(),
                spec.binary.display()
            )));
        }
        let spec = spec.clone();
        self.blocking(move |c| {
            let m = c.member_mut(i)?;
            if m.running() {
                return Ok(());
            }
            m.config.data_dir = spec.data_dir;
            m.config.client_url = spec.client_url;
            m.config.cluster_token = spec.cluster_token;
            // The harness derives --initial-cluster-state from the data dir
            // exactly as the backend does (fresh dir: new).
            c.start_member(i)?;
            Ok(())
        })
        .await
    }

    async fn running(&self, node: &str) -> Result<bool, ControlError> {
        let i = self.idx(node)?;
        self.blocking(move |c| Ok(c.member_mut(i)?.running())).await
    }

    fn log_hint(&self, node: &str) -> Option<String> {
        let i = self.index(node)?;
        let c = self.cluster.lock().ok()?;
        Some(c.member(i).ok()?.log().display().to_string())
    }
}

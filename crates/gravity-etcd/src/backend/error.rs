//! Errors of the etcd and election backends, and how they map to
//! [`BackendError`].

use gravity_upgrade::backend::BackendError;

use crate::client::EtcdError;

/// Why a [`MemberControl`](super::MemberControl) could not act on a member.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The local test cluster failed (process, file, or readiness).
    #[error(transparent)]
    Harness(#[from] crate::harness::HarnessError),
    /// The control has no member for this node.
    #[error("no etcd member is configured for node {0}")]
    NoMember(String),
    /// The control cannot do what was asked (for example the harness runs
    /// one etcd binary for every member).
    #[error("{0}")]
    Unsupported(String),
    /// The lock around the controlled members was poisoned by a panic.
    #[error("the etcd member control is unusable after a panic in another thread")]
    Poisoned,
}

/// What went wrong in [`EtcdBackend`](super::EtcdBackend) or
/// [`EtcdElection`](super::election::EtcdElection). Every variant names the
/// node (or file) concerned; [`BackendError`] conversions add what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdBackendError {
    /// The node is not a node of the cluster.
    #[error("node {0:?} is not a node of the cluster")]
    UnknownNode(String),
    /// The node has no etcd member (a worker runs an etcd proxy).
    #[error("etcd on node {node}: the node has no etcd member to {action}")]
    NoMember {
        /// The node.
        node: String,
        /// What was asked (`back up`, `upgrade`, `restore into`).
        action: &'static str,
    },
    /// The member must be stopped first.
    #[error("etcd on node {node}: etcd is still running; shut it down first (/etcd/shutdown)")]
    StillRunning {
        /// The node.
        node: String,
    },
    /// The member must be running (at a given address) for the operation.
    #[error("etcd on node {node}: {detail}")]
    NotServing {
        /// The node.
        node: String,
        /// What is wrong and what to do.
        detail: String,
    },
    /// Starting or stopping the member failed.
    #[error("etcd on node {node}: cannot {action} the member: {source}; check the member's log")]
    Control {
        /// The node.
        node: String,
        /// `start` or `stop`.
        action: &'static str,
        /// The cause.
        #[source]
        source: ControlError,
    },
    /// The member was started but did not accept connections in time.
    #[error(
        "etcd on node {node}: the member did not open its client address {url} within {waited:?}; check the member's log"
    )]
    StartTimeout {
        /// The node.
        node: String,
        /// The client URL.
        url: String,
        /// How long we waited.
        waited: std::time::Duration,
    },
    /// A request to etcd failed.
    #[error("etcd on node {node}: {source}")]
    Client {
        /// The node (or the cluster name for cluster-wide requests).
        node: String,
        /// The cause.
        #[source]
        source: EtcdError,
    },
    /// A key or value is not UTF-8 text, which the backup format and the
    /// [`Etcd`](gravity_upgrade::backend::Etcd) trait cannot carry.
    #[error(
        "etcd key {key:?} holds binary data, which Gravity's JSON-lines backup of gravity-rs cannot carry yet"
    )]
    Binary {
        /// The key (lossy).
        key: String,
    },
    /// A backup file cannot be restored.
    #[error("etcd backup {path} cannot be restored: {reason}")]
    BadBackup {
        /// The file (`node:path`).
        path: String,
        /// Why.
        reason: String,
    },
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A member state file is not valid.
    #[error(
        "etcd member state {path} is not valid: {reason}; restore it from the node's backup or remove it to start from the configuration"
    )]
    CorruptState {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Something the election keys hold makes no sense.
    #[error("leader election of cluster {cluster}: {detail}")]
    Election {
        /// The cluster name.
        cluster: String,
        /// What is wrong and what to do.
        detail: String,
    },
    /// The configuration of the backend is not usable.
    #[error("etcd backend configuration: {0}")]
    Config(String),
}

impl EtcdBackendError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| EtcdBackendError::Io { context, source }
    }

    pub(crate) fn client(node: impl Into<String>) -> impl FnOnce(EtcdError) -> Self {
        let node = node.into();
        move |source| EtcdBackendError::Client { node, source }
    }
}

impl From<EtcdBackendError> for BackendError {
    fn from(e: EtcdBackendError) -> Self {
        match e {
            EtcdBackendError::UnknownNode(n) => BackendError::UnknownNode(n),
            EtcdBackendError::NoMember { ref node, .. }
            | EtcdBackendError::StillRunning { ref node }
            | EtcdBackendError::NotServing { ref node, .. } => BackendError::Etcd {
                node: node.clone(),
                detail: detail(&e),
            },
            EtcdBackendError::Control { ref node, .. }
            | EtcdBackendError::StartTimeout { ref node, .. } => BackendError::Etcd {
                node: node.clone(),
                detail: detail(&e),
            },
            EtcdBackendError::Client { node, source } => BackendError::Etcd {
                detail: match &source {
                    EtcdError::Unavailable { .. } => format!(
                        "{source}; check that the etcd members run and have a quorum, then retry"
                    ),
                    _ => format!("{source}; retry, and check the member's log if it persists"),
                },
                node,
            },
            EtcdBackendError::Binary { .. } => {
                BackendError::Other(format!("{e}; the backup would lose data, so it is refused"))
            }
            EtcdBackendError::BadBackup { path, reason } => {
                BackendError::BadBackup { path, reason }
            }
            EtcdBackendError::Io { context, source } => BackendError::Io { context, source },
            EtcdBackendError::CorruptState { .. } => BackendError::Corrupt(e.to_string()),
            EtcdBackendError::Election { .. } | EtcdBackendError::Config(_) => {
                BackendError::Other(e.to_string())
            }
        }
    }
}

/// The message of `e` without its `etcd on node X: ` prefix (the
/// [`BackendError::Etcd`] display adds it again).
fn detail(e: &EtcdBackendError) -> String {
    let text = e.to_string();
    match text.split_once(": ") {
        Some((head, rest)) if head.starts_with("etcd on node ") => rest.to_string(),
        _ => text,
    }
}

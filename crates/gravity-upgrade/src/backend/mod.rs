//! Backend traits: what the upgrade phases need from the cluster.
//!
//! The phases of [`crate::phases`] act on the cluster only through these
//! narrow, object-safe async traits:
//!
//! - [`Kubernetes`]: nodes (cordon, drain, taints, labels), RBAC and
//!   CoreDNS objects, application hooks and records, endpoints.
//! - [`Etcd`]: backup/restore (Gravity's JSON-lines format, see
//!   [`backup`]), member shutdown/start/upgrade/rollback, keys (get, put,
//!   delete, list).
//! - [`NodeSystem`]: per node: reachability, agents, the runtime (planet),
//!   disks, clocks, DNS, temp dirs, services, teleport, and a small local
//!   record store (Gravity's node-local "update" backend) in which phases
//!   keep what they changed so that a rollback undoes exactly that.
//! - [`Election`]: Kubernetes leader election of the masters.
//!
//! [`Backends`] bundles them with the package stores ([`PackageStores`]).
//! [`crate::sim::SimulatedCluster`] implements every trait over one state
//! file; real implementations (kube-rs, etcd) plug in the same way.

pub mod backup;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use gravity_pack::location::{StoreSelector, open_store};
use gravity_pack::{LocalStore, Locator, PackError, Version};
use serde::{Deserialize, Serialize};

use crate::cluster::DnsConfig;

/// What went wrong in a backend. Every variant names the node (or object)
/// concerned and says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The node does not answer.
    #[error(
        "node {node} is unreachable: {reason}; check that the node is up and reachable from this node"
    )]
    Unreachable {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
    /// No such node (in Kubernetes or the cluster).
    #[error("node {0:?} is not a node of the cluster")]
    UnknownNode(String),
    /// No agent is running on the node.
    #[error(
        "no agent is running on node {node}, please execute the phase locally on that node or deploy the agents with \"gravity agent deploy\""
    )]
    NoAgent {
        /// The node (`host/ip`).
        node: String,
    },
    /// A drain could not evict pods before its deadline.
    #[error(
        "eviction of {pods} from node {node} is blocked by PodDisruptionBudget {budgets} (waited {waited:?}); scale up the workloads or relax the budgets, then retry"
    )]
    EvictionBlocked {
        /// The node.
        node: String,
        /// The pods that could not be evicted (`namespace/name`).
        pods: String,
        /// The disruption budgets blocking them (`namespace/name`).
        budgets: String,
        /// How long the drain waited.
        waited: Duration,
    },
    /// Endpoints did not become ready.
    #[error("endpoints not ready on node {node}: {detail}")]
    EndpointsNotReady {
        /// The node.
        node: String,
        /// What is missing.
        detail: String,
    },
    /// An etcd member is not in the state the operation needs.
    #[error("etcd on node {node}: {detail}")]
    Etcd {
        /// The node.
        node: String,
        /// What is wrong and what to do.
        detail: String,
    },
    /// An etcd backup file cannot be used.
    #[error(
        "etcd backup {path} cannot be restored: {reason}; take a new backup (\"/etcd/backup\") and retry"
    )]
    BadBackup {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// An application hook failed.
    #[error("{app}({hook}) hook failed: {logs}")]
    HookFailed {
        /// The application.
        app: String,
        /// The hook.
        hook: String,
        /// Its output.
        logs: String,
    },
    /// Not enough space.
    #[error(
        "node {node}: not enough free disk space on {path}: {free} bytes free, {needed} needed; free up space on the node"
    )]
    DiskFull {
        /// The node.
        node: String,
        /// The path.
        path: String,
        /// Free bytes.
        free: u64,
        /// Needed bytes.
        needed: u64,
    },
    /// A fault injected into a simulated cluster made the action fail.
    #[error("{0}")]
    Injected(String),
    /// A package store operation failed.
    #[error("package store: {0}")]
    Pack(#[from] PackError),
    /// A state file or record could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A state file or record is not valid.
    #[error("{0}")]
    Corrupt(String),
    /// Anything else, with what to do.
    #[error("{0}")]
    Other(String),
    /// The Kubernetes API server stayed unavailable (connections refused
    /// or reset, 502/503/504, throttling, etcd leader changes) while the
    /// call was retried until its time ran out: the retry budget, or the
    /// deadline of the drain or wait it belongs to. Nothing says the
    /// cluster is in the wrong state; the phase can be retried once the
    /// API server answers (see [`BackendError::is_transient`]).
    #[error(
        "{what}: the Kubernetes API server was unavailable for {:?} ({}), last error: {last}; check that the API server is up, then resume the phase",
        whole_millis(*.waited),
        attempts_text(*.attempts)
    )]
    ApiUnavailable {
        /// What was being done, and to which object (`cannot read node n1`).
        what: String,
        /// How many requests were sent (or tried) in all.
        attempts: u32,
        /// How long the call was retried, from its first attempt.
        waited: Duration,
        /// The last failure (`the Kubernetes API server answered 503 ...`,
        /// `cannot reach the Kubernetes API server (...)`).
        last: String,
    },
}

/// `d` without its sub-millisecond part (`2.013s`, not `2.013456789s`).
fn whole_millis(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `1 attempt`, `5 attempts`.
fn attempts_text(n: u32) -> String {
    if n == 1 {
        "1 attempt".into()
    } else {
        format!("{n} attempts")
    }
}

impl BackendError {
    /// Whether the failure is one that passes by itself: the backend could
    /// not reach a service it needs for long enough (today
    /// [`BackendError::ApiUnavailable`]), but no state was found wrong, so
    /// executing the phase again once the service is back may succeed
    /// without any other change. Every other error is permanent: retrying
    /// without fixing what its message names gives the same error.
    pub fn is_transient(&self) -> bool {
        matches!(self, BackendError::ApiUnavailable { .. })
    }

    /// An [`BackendError::Io`] with context.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackendError {
        let context = context.into();
        move |source| BackendError::Io { context, source }
    }
}

/// Result of backend calls.
pub type BackendResult<T> = Result<T, BackendError>;

/// A node taint.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Taint {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
    /// Effect (`NoExecute`, `NoSchedule`).
    pub effect: String,
}

impl Taint {
    /// Gravity's `gravitational.io/runlevel=system:NoExecute`.
    pub fn runlevel_system() -> Self {
        Taint {
            key: "gravitational.io/runlevel".into(),
            value: "system".into(),
            effect: "NoExecute".into(),
        }
    }
}

impl std::fmt::Display for Taint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}:{}", self.key, self.value, self.effect)
    }
}

/// A Kubernetes node as the upgrade sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Taints.
    pub taints: Vec<Taint>,
    /// Cordoned.
    pub unschedulable: bool,
    /// The Ready condition.
    pub ready: bool,
}

/// How to drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainOptions {
    /// How long an eviction blocked by a disruption budget is retried.
    pub eviction_deadline: Duration,
}

/// What a drain did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainReport {
    /// Pods evicted (`namespace/name`).
    pub evicted: Vec<String>,
    /// Pods left alone (DaemonSet and mirror pods).
    pub skipped: Vec<String>,
}

/// Which objects a "create if absent" call created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    /// Object names (`ClusterRole/x`, `ClusterRoleBinding/x`,
    /// `ConfigMap/ns/x`) that did not exist and were created.
    pub objects: Vec<String>,
}

/// An application hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Hook {
    /// `preUpdate`.
    PreUpdate,
    /// `update`.
    Update,
    /// `postUpdate`.
    PostUpdate,
    /// `rollback`.
    Rollback,
    /// `postRollback`.
    PostRollback,
    /// `networkUpdate`: an overlay-network application's change, run
    /// before `update`.
    NetworkUpdate,
    /// `networkRollback`: undoes `networkUpdate`, run after
    /// `postRollback`.
    NetworkRollback,
}

impl Hook {
    /// The manifest name of the hook.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::PreUpdate => "preUpdate",
            Hook::Update => "update",
            Hook::PostUpdate => "postUpdate",
            Hook::Rollback => "rollback",
            Hook::PostRollback => "postRollback",
            Hook::NetworkUpdate => "networkUpdate",
            Hook::NetworkRollback => "networkRollback",
        }
    }
}

/// The outcome of a hook run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookOutcome {
    /// Whether the application defines the hook (nothing runs otherwise).
    pub ran: bool,
    /// The job's output.
    pub logs: Vec<String>,
}

/// Kubernetes, as the phases use it.
#[async_trait]
pub trait Kubernetes: Send + Sync {
    /// Every node.
    async fn nodes(&self) -> BackendResult<Vec<NodeInfo>>;
    /// One node.
    async fn node(&self, name: &str) -> BackendResult<NodeInfo>;
    /// Marks the node unschedulable; returns whether it changed anything.
    async fn cordon(&self, node: &str) -> BackendResult<bool>;
    /// Marks the node schedulable; returns whether it changed anything.
    async fn uncordon(&self, node: &str) -> BackendResult<bool>;
    /// Evicts the node's pods except DaemonSet and mirror pods, honouring
    /// disruption budgets up to `opts.eviction_deadline`
    /// ([`BackendError::EvictionBlocked`] then).
    async fn drain(&self, node: &str, opts: &DrainOptions) -> BackendResult<DrainReport>;
    /// Adds a taint; returns whether it was absent.
    async fn add_taint(&self, node: &str, taint: &Taint) -> BackendResult<bool>;
    /// Removes a taint; returns whether it was present.
    async fn remove_taint(&self, node: &str, taint: &Taint) -> BackendResult<bool>;
    /// Sets (`Some`) or removes (`None`) node labels; returns the previous
    /// value of every key given.
    async fn set_node_labels(
        &self,
        node: &str,
        labels: &BTreeMap<String, Option<String>>,
    ) -> BackendResult<BTreeMap<String, Option<String>>>;
    /// Creates ClusterRole and ClusterRoleBinding `kubelet-upgrade` if absent.
    async fn create_kubelet_permissions(&self) -> BackendResult<Created>;
    /// Creates the CoreDNS ClusterRole/Binding `gravity:coredns` and the
    /// ConfigMap `kube-system/coredns` (with `corefile`) if absent.
    async fn create_coredns(&self, corefile: &str) -> BackendResult<Created>;
    /// Deletes objects named as in [`Created::objects`] (absent ones ignored).
    async fn delete_objects(&self, objects: &[String]) -> BackendResult<()>;
    /// Runs an application hook as a job and waits for it.
    async fn run_hook(&self, app: &Locator, hook: Hook) -> BackendResult<HookOutcome>;
    /// The installed version of the application `repository/name`.
    async fn application(&self, repository: &str, name: &str) -> BackendResult<Option<Locator>>;
    /// Records `app` as installed (or removes `repository/name` with `None`);
    /// returns the previous version.
    async fn set_application(
        &self,
        repository: &str,
        name: &str,
        app: Option<&Locator>,
    ) -> BackendResult<Option<Locator>>;
    /// Waits until the node's DNS endpoint and a gravity-site endpoint serve.
    async fn wait_endpoints(&self, node: &str, timeout: Duration) -> BackendResult<()>;
    /// Deletes the pods of `namespace` matching `selector` (their
    /// controllers recreate them); returns how many.
    async fn delete_pods(
        &self,
        namespace: &str,
        selector: &BTreeMap<String, String>,
    ) -> BackendResult<usize>;
    /// A ConfigMap's data.
    async fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> BackendResult<Option<BTreeMap<String, String>>>;
    /// Writes (`Some`) or deletes (`None`) a ConfigMap; returns the previous data.
    async fn put_config_map(
        &self,
        namespace: &str,
        name: &str,
        data: Option<&BTreeMap<String, String>>,
    ) -> BackendResult<Option<BTreeMap<String, String>>>;
}

/// Where an etcd member serves clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EtcdAddress {
    /// The normal address: the cluster uses it.
    Normal,
    /// The temporary upgrade address (127.0.0.2): invisible to clients.
    Upgrade,
}

/// An etcd member's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdMember {
    /// The node.
    pub node: String,
    /// The running version.
    pub version: Version,
    /// The data directory in use.
    pub data_dir: String,
    /// The version and data directory kept for a rollback, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<(Version, String)>,
    /// Where it serves, if running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<EtcdAddress>,
    /// Whether it reports healthy.
    pub healthy: bool,
}

/// What a backup wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// Keys written.
    pub keys: usize,
    /// The digest in the trailer (hex sha256 of the records).
    pub sha256: String,
}

/// etcd, as the phases use it. `node` is a host name; paths are paths on
/// that node.
#[async_trait]
pub trait Etcd: Send + Sync {
    /// Writes a backup of the member's keys to `path` (see [`backup`]).
    async fn backup(&self, node: &str, path: &str) -> BackendResult<BackupInfo>;
    /// Stops the member (`etcd disable --stop-api`); returns whether it ran.
    async fn shutdown(&self, node: &str) -> BackendResult<bool>;
    /// Starts the member at `address`; returns whether it was stopped.
    /// Nodes without a member (etcd proxies on workers) are reset.
    async fn start(&self, node: &str, address: EtcdAddress) -> BackendResult<bool>;
    /// Switches the (stopped) member to `version` with a new data dir,
    /// keeping the old version and dir for [`Etcd::rollback_upgrade`];
    /// returns false if it already runs that version.
    async fn upgrade(&self, node: &str, version: &Version) -> BackendResult<bool>;
    /// Switches back to the kept version and data dir; returns false if
    /// there is nothing to roll back.
    async fn rollback_upgrade(&self, node: &str) -> BackendResult<bool>;
    /// Restores a backup into the member (refuses truncated or altered
    /// files); returns the number of keys.
    async fn restore(&self, node: &str, path: &str) -> BackendResult<usize>;
    /// The member on the node, if the node has one.
    async fn member(&self, node: &str) -> BackendResult<Option<EtcdMember>>;
    /// A key, read through the cluster's normal address.
    async fn get(&self, key: &str) -> BackendResult<Option<String>>;
    /// Writes a key through the cluster's normal address.
    async fn put(&self, key: &str, value: &str) -> BackendResult<()>;
    /// Deletes a key through the cluster's normal address; returns whether
    /// it existed (deleting an absent key is not an error).
    async fn delete(&self, key: &str) -> BackendResult<bool>;
    /// Every key under `prefix`.
    async fn list(&self, prefix: &str) -> BackendResult<BTreeMap<String, String>>;
}

/// Free and total bytes of a filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpace {
    /// Total bytes.
    pub total: u64,
    /// Free bytes.
    pub free: u64,
}

/// A node's system, as the phases use it. `node` is a host name.
#[async_trait]
pub trait NodeSystem: Send + Sync {
    /// Checks the node answers.
    async fn ping(&self, node: &str) -> BackendResult<()>;
    /// Whether the upgrade agent runs on the node.
    async fn agent_running(&self, node: &str) -> BackendResult<bool>;
    /// Starts the agent; returns whether it was stopped.
    async fn deploy_agent(&self, node: &str) -> BackendResult<bool>;
    /// Stops the agent; returns whether it ran.
    async fn shutdown_agent(&self, node: &str) -> BackendResult<bool>;
    /// The installed runtime (planet) package.
    async fn runtime(&self, node: &str) -> BackendResult<Locator>;
    /// Installs `package` as the runtime, started unless `no_start`;
    /// returns the previous package.
    async fn switch_runtime(
        &self,
        node: &str,
        package: &Locator,
        no_start: bool,
    ) -> BackendResult<Locator>;
    /// Starts (`true`) or stops the runtime; returns whether it changed.
    async fn set_runtime_running(&self, node: &str, running: bool) -> BackendResult<bool>;
    /// Space of the filesystem holding `path`.
    async fn disk_space(&self, node: &str, path: &str) -> BackendResult<DiskSpace>;
    /// The node's clock.
    async fn clock(&self, node: &str) -> BackendResult<DateTime<Utc>>;
    /// The node's DNS configuration, if present.
    async fn dns_config(&self, node: &str) -> BackendResult<Option<DnsConfig>>;
    /// Creates and removes a file in the temp dir.
    async fn check_temp_dir(&self, node: &str) -> BackendResult<()>;
    /// Restarts a service (`gravity-site`, `flanneld`).
    async fn restart_service(&self, node: &str, service: &str) -> BackendResult<()>;
    /// Flushes and prunes the journal (`/gc`).
    async fn gc_journal(&self, node: &str) -> BackendResult<()>;
    /// Sets the Docker device state (`devicemapper`, `formatted`,
    /// `mounted`, or `none`); returns the previous state.
    async fn set_docker_device(
        &self,
        node: &str,
        device: &str,
        state: &str,
    ) -> BackendResult<String>;
    /// A record of the node-local update backend.
    async fn record(&self, node: &str, key: &str) -> BackendResult<Option<serde_json::Value>>;
    /// Writes (`Some`) or deletes a record of the node-local update backend.
    async fn put_record(
        &self,
        node: &str,
        key: &str,
        value: Option<&serde_json::Value>,
    ) -> BackendResult<()>;
}

/// Leader election of the masters (etcd keys
/// `/planet/cluster/<cluster>/election/<ip>` in Gravity).
#[async_trait]
pub trait Election: Send + Sync {
    /// The current Kubernetes leader (host name).
    async fn leader(&self) -> BackendResult<Option<String>>;
    /// Enables or disables election on a master; returns the previous value.
    async fn set_enabled(&self, node: &str, enabled: bool) -> BackendResult<Option<bool>>;
    /// Election flags of every master.
    async fn status(&self) -> BackendResult<BTreeMap<String, bool>>;
}

/// A hook called before every phase executes: a simulated cluster uses it
/// to fail chosen phases. Real clusters have none.
#[async_trait]
pub trait PhaseGate: Send + Sync {
    /// Fails if the phase must fail now.
    async fn before_execute(&self, phase: &str, node: Option<&str>) -> BackendResult<()>;
}

/// The package stores of a state directory (`gravity_pack::location`):
/// the cluster store and one store per node. Stores are opened for each
/// use (retrying while another user holds them) and closed again.
#[derive(Debug, Clone)]
pub struct PackageStores {
    state_dir: PathBuf,
}

impl PackageStores {
    /// The stores under `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        PackageStores {
            state_dir: state_dir.into(),
        }
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Runs `f` with the selected store open.
    pub fn with<T>(
        &self,
        selector: &StoreSelector,
        f: impl FnOnce(&LocalStore) -> Result<T, PackError>,
    ) -> BackendResult<T> {
        let store = self.open(selector)?;
        Ok(f(&store)?)
    }

    /// Runs `f` with the cluster store and the store of `node` open.
    pub fn with_pair<T>(
        &self,
        node: &str,
        f: impl FnOnce(&LocalStore, &LocalStore) -> Result<T, PackError>,
    ) -> BackendResult<T> {
        let cluster = self.open(&StoreSelector::Cluster)?;
        let local = self.open(&StoreSelector::Node(node.to_string()))?;
        Ok(f(&cluster, &local)?)
    }

    fn open(&self, selector: &StoreSelector) -> BackendResult<LocalStore> {
        let mut delay = Duration::from_millis(1);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match open_store(&self.state_dir, selector) {
                Err(PackError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_millis(50));
                }
                r => return Ok(r?),
            }
        }
    }
}

/// Waits and limits of the phases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    /// How long a blocked eviction is retried.
    pub eviction_deadline: Duration,
    /// How long endpoints are waited for.
    pub endpoints_timeout: Duration,
    /// Interval between polls (leader step-down).
    pub poll_interval: Duration,
    /// Polls of the leader step-down wait.
    pub poll_attempts: u32,
    /// Free bytes every node needs on its state directory.
    pub min_free_disk: u64,
    /// Largest clock difference between nodes.
    pub max_clock_drift: Duration,
}

impl Timing {
    /// Gravity's values (drain 15 min, endpoints 5 min, 100 × 5 s).
    pub fn gravity() -> Self {
        Timing {
            eviction_deadline: Duration::from_secs(15 * 60),
            endpoints_timeout: Duration::from_secs(5 * 60),
            poll_interval: Duration::from_secs(5),
            poll_attempts: 100,
            min_free_disk: 1 << 30,
            max_clock_drift: Duration::from_millis(300),
        }
    }

    /// Short waits for simulated clusters (a few ms).
    pub fn fast() -> Self {
        Timing {
            eviction_deadline: Duration::from_millis(5),
            endpoints_timeout: Duration::from_millis(5),
            poll_interval: Duration::from_millis(1),
            poll_attempts: 5,
            ..Timing::gravity()
        }
    }
}

/// Everything the phases act through.
#[derive(Clone)]
pub struct Backends {
    /// Kubernetes.
    pub kube: Arc<dyn Kubernetes>,
    /// etcd.
    pub etcd: Arc<dyn Etcd>,
    /// The nodes' systems.
    pub nodes: Arc<dyn NodeSystem>,
    /// Leader election.
    pub election: Arc<dyn Election>,
    /// The package stores.
    pub packages: PackageStores,
    /// Called before every phase executes, if set.
    pub gate: Option<Arc<dyn PhaseGate>>,
    /// Waits and limits.
    pub timing: Timing,
    /// The node this process runs on (host name), when known: phases that
    /// must run on a master refuse to run elsewhere.
    pub local_node: Option<String>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends")
            .field("packages", &self.packages)
            .field("timing", &self.timing)
            .field("local_node", &self.local_node)
            .finish_non_exhaustive()
    }
}

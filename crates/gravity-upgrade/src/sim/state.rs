//! The state of a simulated cluster, as stored in `<state>/sim/cluster.json`.

use std::collections::BTreeMap;

use gravity_pack::{Locator, Version};
use serde::{Deserialize, Serialize};

use crate::backend::{EtcdAddress, Taint};
use crate::cluster::{Cluster, DnsConfig};

/// A fault kind that can be injected into a simulated cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// The node's state directory has almost no free space.
    DiskFull,
    /// The node does not answer (no agent, no system calls).
    NodeUnreachable,
    /// The node's clock is 2 s ahead.
    ClockSkew,
    /// The node's DNS configuration is missing and its DNS endpoint down.
    DnsBroken,
    /// Evictions of budgeted pods on the node are refused.
    EvictionBlocked,
    /// A phase fails when executed.
    PhaseFails,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 6] = [
        FaultKind::DiskFull,
        FaultKind::NodeUnreachable,
        FaultKind::ClockSkew,
        FaultKind::DnsBroken,
        FaultKind::EvictionBlocked,
        FaultKind::PhaseFails,
    ];

    /// The kebab-case name (`disk-full`).
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::DiskFull => "disk-full",
            FaultKind::NodeUnreachable => "node-unreachable",
            FaultKind::ClockSkew => "clock-skew",
            FaultKind::DnsBroken => "dns-broken",
            FaultKind::EvictionBlocked => "eviction-blocked",
            FaultKind::PhaseFails => "phase-fails",
        }
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown fault kind name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown fault {0:?}; use one of disk-full, node-unreachable, clock-skew, dns-broken, eviction-blocked, phase-fails"
)]
pub struct UnknownFault(pub String);

impl std::str::FromStr for FaultKind {
    type Err = UnknownFault;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownFault(s.to_string()))
    }
}

/// An injected fault.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Fault {
    /// What.
    pub kind: FaultKind,
    /// On which node (host name); every node when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// For `phase-fails`: the phase path (`/masters/node-1/drain`); the
    /// phase and its descendants fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

impl Fault {
    /// A fault of `kind` on every node.
    pub fn new(kind: FaultKind) -> Self {
        Fault {
            kind,
            node: None,
            phase: None,
        }
    }

    /// The same fault on one node.
    pub fn on(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    /// The same fault for one phase (`phase-fails`).
    pub fn phase(mut self, phase: impl Into<String>) -> Self {
        self.phase = Some(phase.into());
        self
    }

    pub(crate) fn applies_to(&self, node: &str) -> bool {
        self.node.as_deref().is_none_or(|n| n == node)
    }
}

/// A pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimPod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The node it runs on; `None` while pending.
    pub node: Option<String>,
    /// Owner kind (`DaemonSet`, `Deployment`, …), if any.
    pub owner: Option<String>,
    /// A mirror (static) pod.
    #[serde(default)]
    pub mirror: bool,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Restarts (recreations).
    #[serde(default)]
    pub restarts: u32,
}

impl SimPod {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A PodDisruptionBudget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimPdb {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Label selector.
    pub selector: BTreeMap<String, String>,
    /// Pods that must stay running.
    pub min_available: usize,
}

/// A Kubernetes node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimKubeNode {
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Taints.
    pub taints: Vec<Taint>,
    /// Cordoned.
    pub unschedulable: bool,
}

/// Kubernetes objects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimKube {
    /// Nodes by name.
    pub nodes: BTreeMap<String, SimKubeNode>,
    /// Pods.
    pub pods: Vec<SimPod>,
    /// Disruption budgets.
    pub pdbs: Vec<SimPdb>,
    /// RBAC and other cluster objects (`ClusterRole/x`, …).
    pub objects: std::collections::BTreeSet<String>,
    /// ConfigMaps by `namespace/name`.
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    /// Installed applications: `repository/name` → locator.
    pub applications: BTreeMap<String, Locator>,
    /// Hook jobs run, in order (`app:hook`).
    pub hook_jobs: Vec<String>,
}

/// An etcd member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimEtcdMember {
    /// Version.
    pub version: Version,
    /// Data dir in use.
    pub data_dir: String,
    /// Kept for rollback.
    pub previous: Option<(Version, String)>,
    /// Serving address, if running.
    pub serving: Option<EtcdAddress>,
}

/// etcd: members (masters) and the data of each data dir (replicated: a
/// data dir name stands for the cluster's data at that version).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimEtcd {
    /// Members by host name.
    pub members: BTreeMap<String, SimEtcdMember>,
    /// Data by data dir.
    pub data: BTreeMap<String, BTreeMap<String, String>>,
}

/// A node's system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimNode {
    /// The installed runtime package.
    pub runtime: Locator,
    /// Whether the runtime runs.
    pub runtime_running: bool,
    /// Whether the agent runs.
    pub agent_running: bool,
    /// Service restarts by service name.
    pub service_restarts: BTreeMap<String, u32>,
    /// Disk size of the state directory's filesystem.
    pub disk_total: u64,
    /// Free bytes there.
    pub disk_free: u64,
    /// Clock offset in ms.
    pub clock_offset_ms: i64,
    /// The DNS configuration.
    pub dns: Option<DnsConfig>,
    /// Docker devices and their state.
    pub docker_devices: BTreeMap<String, String>,
    /// Journal gc runs.
    pub journal_gc: u32,
    /// Records of the node-local update backend.
    pub records: BTreeMap<String, serde_json::Value>,
    /// Files written on the node (path → content), e.g. the etcd backup.
    pub files: BTreeMap<String, String>,
}

/// The whole simulated cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimState {
    /// Format version.
    pub format: u32,
    /// The cluster model.
    pub cluster: Cluster,
    /// Kubernetes.
    pub kube: SimKube,
    /// etcd.
    pub etcd: SimEtcd,
    /// Election flags of the masters.
    pub election: BTreeMap<String, bool>,
    /// The Kubernetes leader.
    pub leader: Option<String>,
    /// Node systems by host name.
    pub nodes: BTreeMap<String, SimNode>,
    /// Active faults.
    pub faults: Vec<Fault>,
}

/// The etcd data dir of a version (`/ext/etcd/<version>`).
pub fn etcd_data_dir(version: &Version) -> String {
    format!("/ext/etcd/{version}")
}

impl SimState {
    pub(crate) fn fault(&self, kind: FaultKind, node: &str) -> Option<&Fault> {
        self.faults
            .iter()
            .find(|f| f.kind == kind && f.applies_to(node))
    }

    pub(crate) fn ip(&self, node: &str) -> String {
        self.cluster
            .node(node)
            .map(|n| n.advertise_ip.clone())
            .unwrap_or_default()
    }

    pub(crate) fn display(&self, node: &str) -> String {
        format!("{node}/{}", self.ip(node))
    }

    /// Elects the first master (cluster order) whose election is enabled.
    pub(crate) fn reelect(&mut self) {
        let election = &self.election;
        self.leader = self
            .cluster
            .masters()
            .map(|m| m.hostname.clone())
            .find(|m| election.get(m).copied().unwrap_or(false));
    }
}

//! The state of a simulated cluster, as stored in `<state>/sim/cluster.json`
//! (a snapshot) and `<state>/sim/cluster.journal` (the changes since, see
//! the private `sim::store` module).
//!
//! Besides the stored fields, a [`SimState`] keeps indexes (pods by node and
//! by label, the schedulable nodes ordered by pod count, running pods per
//! disruption budget, node positions) so that a call on one node does not
//! scan the cluster, and the set of parts changed since the last journal
//! record (`Delta`). Changes go through the methods here
//! (`SimState::node_mut`, `SimState::set_pod_node`, …), which keep both.

use std::collections::{BTreeMap, BTreeSet, HashMap};

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
    /// Snapshot generation: the journal next to a snapshot extends the
    /// snapshot of the same generation only.
    #[serde(default)]
    pub generation: u64,
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
    #[serde(skip)]
    pub(crate) derived: Derived,
}

/// The etcd data dir of a version (`/ext/etcd/<version>`).
pub fn etcd_data_dir(version: &Version) -> String {
    format!("/ext/etcd/{version}")
}

/// Indexes over a [`SimState`] and its changed parts; not stored (rebuilt
/// on load), never part of equality.
#[derive(Debug, Clone, Default)]
pub(crate) struct Derived {
    /// Position in `cluster.nodes` by host name and by address.
    pos: HashMap<String, usize>,
    /// Master host names in cluster order.
    masters: Vec<String>,
    /// Pod indexes by node.
    pods_on: HashMap<String, BTreeSet<usize>>,
    /// Pending pods.
    pending: BTreeSet<usize>,
    /// Pod indexes by label.
    by_label: HashMap<(String, String), Vec<usize>>,
    /// Disruption budgets selecting each pod.
    pod_pdbs: Vec<Vec<usize>>,
    /// Running (placed) pods selected by each budget.
    pdb_running: Vec<usize>,
    /// Schedulable nodes with a running runtime: (pods on it, position).
    eligible: BTreeSet<(usize, usize)>,
    /// The key of each node in `eligible`.
    eligible_key: HashMap<String, (usize, usize)>,
    /// What changed since the last [`SimState::take_delta`].
    dirty: Dirty,
}

impl PartialEq for Derived {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

#[derive(Debug, Clone, Default)]
struct Dirty {
    cluster: bool,
    kube_nodes: BTreeSet<String>,
    nodes: BTreeSet<String>,
    records: BTreeSet<(String, String)>,
    files: BTreeSet<(String, String)>,
    pods: BTreeSet<usize>,
    etcd: BTreeSet<(String, String)>,
    etcd_dirs: BTreeSet<String>,
}

/// The small cluster-wide part of the state, compared before and after a
/// change instead of tracked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Meta {
    objects: BTreeSet<String>,
    config_maps: BTreeMap<String, BTreeMap<String, String>>,
    applications: BTreeMap<String, Locator>,
    hook_jobs: Vec<String>,
    pdbs: Vec<SimPdb>,
    members: BTreeMap<String, SimEtcdMember>,
    election: BTreeMap<String, bool>,
    leader: Option<String>,
    faults: Vec<Fault>,
}

/// One journal record: the parts a change touched, with their new values
/// (`None`: removed). A node's system comes without its records and files,
/// which have entries of their own.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster: Option<Cluster>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    meta: Option<Meta>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    kube_nodes: Vec<(String, SimKubeNode)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    nodes: Vec<(String, SimNode)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    records: Vec<(String, String, Option<serde_json::Value>)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    files: Vec<(String, String, Option<String>)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pods: Vec<(usize, SimPod)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    etcd_dirs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    etcd: Vec<(String, String, Option<String>)>,
}

impl Delta {
    pub(crate) fn is_empty(&self) -> bool {
        self.cluster.is_none()
            && self.meta.is_none()
            && self.kube_nodes.is_empty()
            && self.nodes.is_empty()
            && self.records.is_empty()
            && self.files.is_empty()
            && self.pods.is_empty()
            && self.etcd_dirs.is_empty()
            && self.etcd.is_empty()
    }
}

fn matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl SimState {
    /// Rebuilds every index (after a load or a replay); clears the changes.
    pub(crate) fn rebuild(&mut self) {
        let mut d = Derived::default();
        for (i, n) in self.cluster.nodes.iter().enumerate() {
            d.pos.entry(n.advertise_ip.clone()).or_insert(i);
            d.pos.insert(n.hostname.clone(), i);
            if n.is_master() {
                d.masters.push(n.hostname.clone());
            }
        }
        d.pdb_running = vec![0; self.kube.pdbs.len()];
        for (i, p) in self.kube.pods.iter().enumerate() {
            match &p.node {
                Some(n) => {
                    d.pods_on.entry(n.clone()).or_default().insert(i);
                }
                None => {
                    d.pending.insert(i);
                }
            }
            for (k, v) in &p.labels {
                d.by_label
                    .entry((k.clone(), v.clone()))
                    .or_default()
                    .push(i);
            }
            let pdbs: Vec<usize> = (0..self.kube.pdbs.len())
                .filter(|&j| {
                    let b = &self.kube.pdbs[j];
                    b.namespace == p.namespace && matches(&b.selector, &p.labels)
                })
                .collect();
            if p.node.is_some() {
                for &j in &pdbs {
                    d.pdb_running[j] += 1;
                }
            }
            d.pod_pdbs.push(pdbs);
        }
        self.derived = d;
        let names: Vec<String> = self
            .cluster
            .nodes
            .iter()
            .map(|n| n.hostname.clone())
            .collect();
        for n in names {
            self.refresh_eligible(&n);
        }
    }

    /// Position of a node (host name or address) in the cluster.
    pub(crate) fn position(&self, node: &str) -> Option<usize> {
        self.derived.pos.get(node).copied()
    }

    /// Master host names in cluster order.
    pub(crate) fn master_names(&self) -> &[String] {
        &self.derived.masters
    }

    /// Indexes of the pods on `node`.
    pub(crate) fn pods_on(&self, node: &str) -> impl Iterator<Item = usize> + '_ {
        self.derived
            .pods_on
            .get(node)
            .into_iter()
            .flatten()
            .copied()
    }

    /// Indexes of the pending pods.
    pub(crate) fn pending_pods(&self) -> impl Iterator<Item = usize> + '_ {
        self.derived.pending.iter().copied()
    }

    /// Indexes of the pods in `namespace` matching `selector`.
    pub(crate) fn select_pods(
        &self,
        namespace: &str,
        selector: &BTreeMap<String, String>,
    ) -> Vec<usize> {
        let ok = |i: &usize| {
            let p = &self.kube.pods[*i];
            p.namespace == namespace && matches(selector, &p.labels)
        };
        match selector.iter().next() {
            Some((k, v)) => self
                .derived
                .by_label
                .get(&(k.clone(), v.clone()))
                .into_iter()
                .flatten()
                .copied()
                .filter(ok)
                .collect(),
            None => (0..self.kube.pods.len()).filter(ok).collect(),
        }
    }

    /// The budgets selecting pod `i`.
    pub(crate) fn pdbs_of(&self, i: usize) -> &[usize] {
        &self.derived.pod_pdbs[i]
    }

    /// Placed pods selected by budget `j`.
    pub(crate) fn pdb_running(&self, j: usize) -> usize {
        self.derived.pdb_running[j]
    }

    /// The schedulable node with a running runtime and the fewest pods
    /// (cluster order breaks ties), other than `except`.
    pub(crate) fn pick_node(&self, except: Option<&str>) -> Option<String> {
        self.derived
            .eligible
            .iter()
            .map(|&(_, i)| &self.cluster.nodes[i].hostname)
            .find(|h| Some(h.as_str()) != except)
            .cloned()
    }

    /// Re-files `node` among the schedulable nodes (after its cordon,
    /// runtime or pod count changed).
    pub(crate) fn refresh_eligible(&mut self, node: &str) {
        if let Some(k) = self.derived.eligible_key.remove(node) {
            self.derived.eligible.remove(&k);
        }
        let Some(i) = self.position(node) else {
            return;
        };
        if self.cluster.nodes[i].hostname != node {
            return;
        }
        let ok = self.kube.nodes.get(node).is_some_and(|k| !k.unschedulable)
            && self.nodes.get(node).is_some_and(|n| n.runtime_running);
        if ok {
            let count = self.derived.pods_on.get(node).map_or(0, BTreeSet::len);
            self.derived.eligible.insert((count, i));
            self.derived
                .eligible_key
                .insert(node.to_string(), (count, i));
        }
    }

    /// Moves pod `i` to `node` (`None`: pending).
    pub(crate) fn set_pod_node(&mut self, i: usize, node: Option<String>) {
        let old = std::mem::replace(&mut self.kube.pods[i].node, node.clone());
        self.derived.dirty.pods.insert(i);
        if old == node {
            return;
        }
        match &old {
            Some(o) => {
                if let Some(set) = self.derived.pods_on.get_mut(o) {
                    set.remove(&i);
                }
            }
            None => {
                self.derived.pending.remove(&i);
            }
        }
        match &node {
            Some(n) => {
                self.derived.pods_on.entry(n.clone()).or_default().insert(i);
            }
            None => {
                self.derived.pending.insert(i);
            }
        }
        if old.is_some() != node.is_some() {
            for &j in &self.derived.pod_pdbs[i] {
                if node.is_some() {
                    self.derived.pdb_running[j] += 1;
                } else {
                    self.derived.pdb_running[j] -= 1;
                }
            }
        }
        for n in old.iter().chain(node.iter()) {
            self.refresh_eligible(n);
        }
    }

    /// Pod `i`, to change anything but its node.
    pub(crate) fn pod_mut(&mut self, i: usize) -> &mut SimPod {
        self.derived.dirty.pods.insert(i);
        &mut self.kube.pods[i]
    }

    /// A node's Kubernetes object, to change (call
    /// [`SimState::refresh_eligible`] after changing its cordon).
    pub(crate) fn kube_node_mut(&mut self, node: &str) -> Option<&mut SimKubeNode> {
        let k = self.kube.nodes.get_mut(node)?;
        self.derived.dirty.kube_nodes.insert(node.to_string());
        Some(k)
    }

    /// A node's system, to change (not its records and files: see
    /// [`SimState::put_record`], [`SimState::put_file`]; call
    /// [`SimState::refresh_eligible`] after changing whether its runtime runs).
    pub(crate) fn node_mut(&mut self, node: &str) -> Option<&mut SimNode> {
        let n = self.nodes.get_mut(node)?;
        self.derived.dirty.nodes.insert(node.to_string());
        Some(n)
    }

    /// Sets (or with `None` removes) a record of a node's update backend.
    pub(crate) fn put_record(&mut self, node: &str, key: &str, value: Option<serde_json::Value>) {
        if let Some(n) = self.nodes.get_mut(node) {
            match value {
                Some(v) => n.records.insert(key.to_string(), v),
                None => n.records.remove(key),
            };
            self.derived
                .dirty
                .records
                .insert((node.to_string(), key.to_string()));
        }
    }

    /// Writes a file on a node.
    pub(crate) fn put_file(&mut self, node: &str, path: &str, text: String) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.files.insert(path.to_string(), text);
            self.derived
                .dirty
                .files
                .insert((node.to_string(), path.to_string()));
        }
    }

    /// Creates the etcd data dir `dir` if missing.
    pub(crate) fn etcd_dir(&mut self, dir: &str) {
        if !self.etcd.data.contains_key(dir) {
            self.etcd.data.insert(dir.to_string(), BTreeMap::new());
            self.derived.dirty.etcd_dirs.insert(dir.to_string());
        }
    }

    /// Sets an etcd key in data dir `dir` (creating the dir).
    pub(crate) fn etcd_put(&mut self, dir: &str, key: &str, value: &str) {
        self.etcd_dir(dir);
        self.etcd
            .data
            .get_mut(dir)
            .expect("created")
            .insert(key.to_string(), value.to_string());
        self.derived
            .dirty
            .etcd
            .insert((dir.to_string(), key.to_string()));
    }

    /// Removes an etcd key from data dir `dir`; returns whether it was
    /// there. The removal is journaled like [`SimState::etcd_put`] (the
    /// key's record carries no value).
    pub(crate) fn etcd_delete(&mut self, dir: &str, key: &str) -> bool {
        let removed = self
            .etcd
            .data
            .get_mut(dir)
            .is_some_and(|m| m.remove(key).is_some());
        if removed {
            self.derived
                .dirty
                .etcd
                .insert((dir.to_string(), key.to_string()));
        }
        removed
    }

    /// The cluster model, to change (indexes are rebuilt).
    pub(crate) fn set_cluster(&mut self, cluster: Cluster) {
        self.cluster = cluster;
        let dirty = std::mem::take(&mut self.derived.dirty);
        self.rebuild();
        self.derived.dirty = dirty;
        self.derived.dirty.cluster = true;
    }

    /// The small cluster-wide part.
    pub(crate) fn meta(&self) -> Meta {
        Meta {
            objects: self.kube.objects.clone(),
            config_maps: self.kube.config_maps.clone(),
            applications: self.kube.applications.clone(),
            hook_jobs: self.kube.hook_jobs.clone(),
            pdbs: self.kube.pdbs.clone(),
            members: self.etcd.members.clone(),
            election: self.election.clone(),
            leader: self.leader.clone(),
            faults: self.faults.clone(),
        }
    }

    /// Takes what changed since the last call (`meta_before`: the small
    /// part before the change).
    pub(crate) fn take_delta(&mut self, meta_before: &Meta) -> Delta {
        let dirty = std::mem::take(&mut self.derived.dirty);
        let meta = self.meta();
        let mut d = Delta {
            cluster: dirty.cluster.then(|| self.cluster.clone()),
            meta: (meta != *meta_before).then_some(meta),
            ..Delta::default()
        };
        for n in dirty.kube_nodes {
            if let Some(k) = self.kube.nodes.get(&n) {
                d.kube_nodes.push((n, k.clone()));
            }
        }
        for n in dirty.nodes {
            if let Some(x) = self.nodes.get(&n) {
                let core = SimNode {
                    records: BTreeMap::new(),
                    files: BTreeMap::new(),
                    runtime: x.runtime.clone(),
                    service_restarts: x.service_restarts.clone(),
                    dns: x.dns.clone(),
                    docker_devices: x.docker_devices.clone(),
                    ..*x
                };
                d.nodes.push((n, core));
            }
        }
        for (n, k) in dirty.records {
            let v = self.nodes.get(&n).and_then(|x| x.records.get(&k)).cloned();
            d.records.push((n, k, v));
        }
        for (n, p) in dirty.files {
            let v = self.nodes.get(&n).and_then(|x| x.files.get(&p)).cloned();
            d.files.push((n, p, v));
        }
        for i in dirty.pods {
            d.pods.push((i, self.kube.pods[i].clone()));
        }
        d.etcd_dirs = dirty.etcd_dirs.into_iter().collect();
        for (dir, k) in dirty.etcd {
            let v = self.etcd.data.get(&dir).and_then(|m| m.get(&k)).cloned();
            d.etcd.push((dir, k, v));
        }
        d
    }

    /// Applies a journal record (indexes are not maintained: rebuild after).
    pub(crate) fn apply_delta(&mut self, d: Delta) {
        if let Some(c) = d.cluster {
            self.cluster = c;
        }
        if let Some(m) = d.meta {
            self.kube.objects = m.objects;
            self.kube.config_maps = m.config_maps;
            self.kube.applications = m.applications;
            self.kube.hook_jobs = m.hook_jobs;
            self.kube.pdbs = m.pdbs;
            self.etcd.members = m.members;
            self.election = m.election;
            self.leader = m.leader;
            self.faults = m.faults;
        }
        for (n, k) in d.kube_nodes {
            self.kube.nodes.insert(n, k);
        }
        for (n, mut x) in d.nodes {
            if let Some(old) = self.nodes.get_mut(&n) {
                x.records = std::mem::take(&mut old.records);
                x.files = std::mem::take(&mut old.files);
            }
            self.nodes.insert(n, x);
        }
        for (n, k, v) in d.records {
            if let Some(x) = self.nodes.get_mut(&n) {
                match v {
                    Some(v) => x.records.insert(k, v),
                    None => x.records.remove(&k),
                };
            }
        }
        for (n, p, v) in d.files {
            if let Some(x) = self.nodes.get_mut(&n) {
                match v {
                    Some(v) => x.files.insert(p, v),
                    None => x.files.remove(&p),
                };
            }
        }
        for (i, p) in d.pods {
            if i < self.kube.pods.len() {
                self.kube.pods[i] = p;
            }
        }
        for dir in d.etcd_dirs {
            self.etcd.data.entry(dir).or_default();
        }
        for (dir, k, v) in d.etcd {
            let m = self.etcd.data.entry(dir).or_default();
            match v {
                Some(v) => m.insert(k, v),
                None => m.remove(&k),
            };
        }
    }

    pub(crate) fn fault(&self, kind: FaultKind, node: &str) -> Option<&Fault> {
        self.faults
            .iter()
            .find(|f| f.kind == kind && f.applies_to(node))
    }

    pub(crate) fn ip(&self, node: &str) -> String {
        self.position(node)
            .map(|i| self.cluster.nodes[i].advertise_ip.clone())
            .unwrap_or_default()
    }

    pub(crate) fn display(&self, node: &str) -> String {
        format!("{node}/{}", self.ip(node))
    }

    /// Elects the first master (cluster order) whose election is enabled.
    pub(crate) fn reelect(&mut self) {
        let election = &self.election;
        self.leader = self
            .derived
            .masters
            .iter()
            .find(|m| election.get(*m).copied().unwrap_or(false))
            .cloned();
    }
}

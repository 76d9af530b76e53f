//! A simulated cluster: every backend trait over one durable state.
//!
//! [`SimulatedCluster`] keeps Kubernetes (nodes, pods, disruption budgets,
//! taints, labels, RBAC objects, ConfigMaps, applications), etcd (members,
//! versions, data dirs, keys), leader election, the nodes' systems
//! (runtime, agents, disks, clocks, DNS) and injected [`Fault`]s in
//! `<state>/sim/cluster.json` (a snapshot) and `<state>/sim/cluster.journal`
//! (the changes since). Every call runs under an exclusive lock on
//! `<state>/sim/cluster.lock` on the state a process keeps in memory
//! (checked against the files with two `stat`s); a change appends one
//! record of the parts it touched and returns once the record is synced,
//! so several processes can act on one simulated cluster at once and a call
//! costs the same whatever the size of the cluster (see `store.rs`). It is
//! deterministic and never sleeps.
//!
//! [`SimulatedCluster::init`] also fills the cluster package store and
//! every node's store with the installed packages (labels as in the seed's
//! `gravity package list`) and can write the upgrade image.

mod impls;
mod packages;
pub mod state;
mod store;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gravity_pack::Version;
use serde::{Deserialize, Serialize};

use crate::backend::{
    BackendError, BackendResult, Backends, EtcdAddress, PackageStores, Taint, Timing,
};
use crate::cluster::Cluster;
use crate::image::ClusterImage;

pub use packages::{install_operation_id, seed_image_packages};
pub use state::{Fault, FaultKind, SimState, UnknownFault};

use state::{SimEtcd, SimEtcdMember, SimKube, SimKubeNode, SimNode, SimPdb, SimPod, etcd_data_dir};

/// What to simulate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimSpec {
    /// The cluster (name, nodes, installed image).
    pub cluster: Cluster,
    /// Whether the upgrade agents run on the nodes from the start (Gravity
    /// deploys them when the upgrade starts; `false` by default).
    pub agents_running: bool,
    /// Disk size per node.
    pub disk_total: u64,
    /// Free disk per node.
    pub disk_free: u64,
}

impl SimSpec {
    /// The seed's cluster `festivebrown4906` ([`Cluster::seed`]).
    pub fn seed() -> Self {
        SimSpec::for_cluster(Cluster::seed())
    }

    /// A synthetic cluster ([`Cluster::synthetic`]).
    pub fn synthetic(masters: usize, workers: usize) -> Self {
        SimSpec::for_cluster(Cluster::synthetic(masters, workers))
    }

    /// Any cluster model.
    pub fn for_cluster(cluster: Cluster) -> Self {
        SimSpec {
            cluster,
            agents_running: false,
            disk_total: 100 << 30,
            disk_free: 60 << 30,
        }
    }

    /// The same spec with agents running.
    pub fn with_agents(mut self) -> Self {
        self.agents_running = true;
        self
    }
}

impl Default for SimSpec {
    fn default() -> Self {
        SimSpec::seed()
    }
}

/// Which upgrade image [`SimulatedCluster::write_upgrade_image_of`]
/// writes. Every kind brings the seed target's application version
/// (telekube 5.5.50-dev.9).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum UpgradeKind {
    /// The seed's upgrade image ([`ClusterImage::seed_target`]): new
    /// runtime (planet 5.5.54, etcd 3.3.22) and system applications.
    #[default]
    Full,
    /// Only the application version changes; the runtime is the installed
    /// one. The plan is `/checks`, `/pre-update`, `/app`, `/gc` (spec
    /// §1.6 A): no `/masters`, no `/etcd`.
    AppOnly,
    /// The seed's new runtime with the installed etcd version: `/masters`
    /// and the rest of the runtime upgrade, but no `/etcd` (spec §1.4).
    NoEtcdChange,
}

impl UpgradeKind {
    /// Every kind.
    pub const ALL: [UpgradeKind; 3] = [
        UpgradeKind::Full,
        UpgradeKind::AppOnly,
        UpgradeKind::NoEtcdChange,
    ];

    /// The kebab-case name (`app-only`).
    pub fn as_str(self) -> &'static str {
        match self {
            UpgradeKind::Full => "full",
            UpgradeKind::AppOnly => "app-only",
            UpgradeKind::NoEtcdChange => "no-etcd-change",
        }
    }

    /// The upgrade image of this kind for a cluster with `installed`.
    pub fn image(self, installed: &ClusterImage) -> BackendResult<ClusterImage> {
        let target = ClusterImage::seed_target();
        Ok(match self {
            UpgradeKind::Full => target,
            UpgradeKind::AppOnly => installed
                .with_app_version(target.app.version().as_str())
                .map_err(|e| BackendError::Other(e.to_string()))?,
            UpgradeKind::NoEtcdChange => ClusterImage {
                etcd_version: installed.etcd_version.clone(),
                ..target
            },
        })
    }
}

impl std::str::FromStr for UpgradeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UpgradeKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("unknown upgrade kind {s:?}; use full, app-only or no-etcd-change")
            })
    }
}

/// Free bytes reported by a node with the `disk-full` fault.
pub const DISK_FULL_FREE: u64 = 50 << 20;
/// Clock offset of a node with the `clock-skew` fault.
pub const CLOCK_SKEW_MS: i64 = 2_000;

/// A simulated cluster in a state directory. Clones share the state kept
/// in memory.
#[derive(Debug, Clone)]
pub struct SimulatedCluster {
    state_dir: PathBuf,
    store: Arc<store::Store>,
}

/// A node in a [`ClusterSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSnapshot {
    /// Host name.
    pub hostname: String,
    /// Advertise address.
    pub advertise_ip: String,
    /// `master` or `node`.
    pub role: String,
    /// The runtime package (planet).
    pub runtime: String,
    /// Whether the runtime runs.
    pub runtime_running: bool,
    /// Cordoned.
    pub unschedulable: bool,
    /// Taints.
    pub taints: Vec<String>,
    /// Kubernetes labels.
    pub labels: BTreeMap<String, String>,
    /// Pods on the node (`namespace/name`).
    pub pods: Vec<String>,
    /// etcd member version, if the node has a member.
    pub etcd_version: Option<String>,
    /// etcd member data dir.
    pub etcd_data_dir: Option<String>,
    /// Where the member serves (`normal`, `upgrade`), `stopped`, or none.
    pub etcd_state: Option<String>,
    /// Leader election flag (masters).
    pub election: Option<bool>,
    /// Whether the agent runs.
    pub agent_running: bool,
    /// Disk size.
    pub disk_total: u64,
    /// Free disk (after faults).
    pub disk_free: u64,
    /// Clock offset in ms (after faults).
    pub clock_offset_ms: i64,
    /// Whether DNS configuration is present (after faults).
    pub dns_ok: bool,
    /// Whether the node answers.
    pub reachable: bool,
}

/// A serializable picture of a simulated cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSnapshot {
    /// Cluster name.
    pub name: String,
    /// The Kubernetes leader.
    pub leader: Option<String>,
    /// Nodes in cluster order.
    pub nodes: Vec<NodeSnapshot>,
    /// The cluster's etcd keys (through a member serving normally; empty
    /// while none does).
    pub etcd_data: BTreeMap<String, String>,
    /// Installed applications.
    pub applications: BTreeMap<String, String>,
    /// Cluster objects (RBAC, CoreDNS).
    pub objects: Vec<String>,
    /// Pending pods.
    pub pending_pods: Vec<String>,
    /// Active faults.
    pub faults: Vec<Fault>,
}

impl ClusterSnapshot {
    /// The snapshot without pod placement (drains move pods, and a
    /// rollback does not move them back).
    pub fn without_pods(&self) -> ClusterSnapshot {
        let mut s = self.clone();
        for n in &mut s.nodes {
            n.pods.clear();
        }
        s.pending_pods.clear();
        s
    }

    /// A human rendering.
    pub fn render_text(&self) -> String {
        let mut out = format!(
            "Cluster {}  leader: {}\n",
            self.name,
            self.leader.as_deref().unwrap_or("(none)")
        );
        for n in &self.nodes {
            out.push_str(&format!(
                "\n{} {} ({})\n  runtime:   {}{}\n  kube:      {}{}\n  etcd:      {}\n  election:  {}\n  agent:     {}\n  disk:      {} free of {}\n  clock:     {:+} ms\n  dns:       {}\n  pods:      {}\n",
                n.hostname,
                n.advertise_ip,
                n.role,
                n.runtime,
                if n.runtime_running { "" } else { " (stopped)" },
                if n.unschedulable { "cordoned" } else { "schedulable" },
                if n.taints.is_empty() {
                    String::new()
                } else {
                    format!(", taints {}", n.taints.join(" "))
                },
                match (&n.etcd_version, &n.etcd_state) {
                    (Some(v), Some(s)) => format!(
                        "{v} {s} ({})",
                        n.etcd_data_dir.as_deref().unwrap_or("")
                    ),
                    _ => "proxy".into(),
                },
                match n.election {
                    Some(true) => "enabled",
                    Some(false) => "disabled",
                    None => "-",
                },
                if !n.reachable {
                    "unreachable"
                } else if n.agent_running {
                    "running"
                } else {
                    "not running"
                },
                gravity_pack::human_size(n.disk_free),
                gravity_pack::human_size(n.disk_total),
                n.clock_offset_ms,
                if n.dns_ok { "ok" } else { "missing" },
                n.pods.len(),
            ));
        }
        out.push_str(&format!("\netcd keys: {}\n", self.etcd_data.len()));
        if !self.pending_pods.is_empty() {
            out.push_str(&format!("pending pods: {}\n", self.pending_pods.join(", ")));
        }
        if self.faults.is_empty() {
            out.push_str("faults: none\n");
        } else {
            out.push_str("faults:\n");
            for f in &self.faults {
                out.push_str(&format!(
                    "  {}{}{}\n",
                    f.kind,
                    f.node
                        .as_deref()
                        .map(|n| format!(" on {n}"))
                        .unwrap_or_default(),
                    f.phase
                        .as_deref()
                        .map(|p| format!(" phase {p}"))
                        .unwrap_or_default()
                ));
            }
        }
        out
    }
}

impl SimulatedCluster {
    /// The simulated cluster of `state_dir` (which [`SimulatedCluster::init`]
    /// must have created).
    pub fn open(state_dir: impl Into<PathBuf>) -> BackendResult<Self> {
        let s = SimulatedCluster::at(state_dir.into());
        if !s.store.snapshot_path().exists() {
            return Err(BackendError::Other(format!(
                "no simulated cluster in {}; create one first (e.g. \"gravity demo\")",
                s.state_dir.display()
            )));
        }
        Ok(s)
    }

    /// Creates the simulated cluster of `spec` in `state_dir` (replacing
    /// one that is there) and fills the cluster store and every node's
    /// store with the installed packages.
    pub fn init(state_dir: impl Into<PathBuf>, spec: SimSpec) -> BackendResult<Self> {
        let s = SimulatedCluster::at(state_dir.into());
        fs::create_dir_all(s.sim_dir()).map_err(BackendError::io(format!(
            "cannot create {}",
            s.sim_dir().display()
        )))?;
        let state = initial_state(&spec);
        packages::populate(&PackageStores::new(&s.state_dir), &spec.cluster)?;
        s.store.replace(state)?;
        Ok(s)
    }

    fn at(state_dir: PathBuf) -> Self {
        SimulatedCluster {
            store: Arc::new(store::Store::new(&state_dir)),
            state_dir,
        }
    }

    /// Writes the seed's upgrade image ([`ClusterImage::seed_target`]) to `path`.
    pub fn write_upgrade_image(&self, path: &Path) -> BackendResult<()> {
        self.write_image(&ClusterImage::seed_target(), path)
    }

    /// Writes the upgrade image of `kind` for this cluster to `path`;
    /// returns the image.
    pub fn write_upgrade_image_of(
        &self,
        kind: UpgradeKind,
        path: &Path,
    ) -> BackendResult<ClusterImage> {
        let image = kind.image(&self.cluster()?.installed)?;
        self.write_image(&image, path)?;
        Ok(image)
    }

    /// Writes a cluster image of `image` (synthetic contents) to `path`.
    pub fn write_image(&self, image: &ClusterImage, path: &Path) -> BackendResult<()> {
        packages::write_image(&self.sim_dir().join("image-build"), image, path)
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The backends over this simulated cluster, with short waits.
    pub fn backends(&self) -> Backends {
        let me = Arc::new(self.clone());
        Backends {
            kube: me.clone(),
            etcd: me.clone(),
            nodes: me.clone(),
            election: me.clone(),
            packages: PackageStores::new(&self.state_dir),
            gate: Some(me),
            timing: Timing::fast(),
            local_node: None,
        }
    }

    /// The cluster model.
    pub fn cluster(&self) -> BackendResult<Cluster> {
        self.read(|s| Ok(s.cluster.clone()))
    }

    /// Replaces the cluster model (the CLI records operations and state here).
    pub fn set_cluster(&self, cluster: Cluster) -> BackendResult<()> {
        self.update(|s| {
            if s.cluster != cluster {
                s.set_cluster(cluster);
            }
            Ok(())
        })
    }

    /// Starts the agents on every node.
    pub fn deploy_agents(&self) -> BackendResult<()> {
        self.update(|s| {
            let names: Vec<String> = s.nodes.keys().cloned().collect();
            for n in names {
                if !s.nodes[&n].agent_running
                    && let Some(x) = s.node_mut(&n)
                {
                    x.agent_running = true;
                }
            }
            Ok(())
        })
    }

    /// Injects a fault (replacing an identical one).
    pub fn inject(&self, fault: Fault) -> BackendResult<()> {
        self.update(|s| {
            if let Some(n) = &fault.node
                && s.cluster.node(n).is_none()
            {
                return Err(BackendError::UnknownNode(n.clone()));
            }
            if fault.kind == FaultKind::PhaseFails && fault.phase.is_none() {
                return Err(BackendError::Other(
                    "the phase-fails fault needs a phase path, e.g. /masters/kevin-test1/drain"
                        .into(),
                ));
            }
            s.faults.retain(|f| f != &fault);
            s.faults.push(fault);
            Ok(())
        })
    }

    /// Clears faults of `kind` (on `node` only, when given); returns how many.
    pub fn heal(&self, kind: FaultKind, node: Option<&str>) -> BackendResult<usize> {
        self.update(|s| {
            let before = s.faults.len();
            s.faults
                .retain(|f| !(f.kind == kind && node.is_none_or(|n| f.node.as_deref() == Some(n))));
            Ok(before - s.faults.len())
        })
    }

    /// Clears every fault.
    pub fn heal_all(&self) -> BackendResult<()> {
        self.update(|s| {
            s.faults.clear();
            Ok(())
        })
    }

    /// A snapshot of the cluster.
    pub fn inspect(&self) -> BackendResult<ClusterSnapshot> {
        self.read(|s| Ok(snapshot(s)))
    }

    /// The raw state.
    pub fn state(&self) -> BackendResult<SimState> {
        self.read(|s| Ok(s.clone()))
    }

    fn sim_dir(&self) -> PathBuf {
        self.state_dir.join("sim")
    }

    /// Runs `f` on the state under the lock (waiting for what it saw to be
    /// durable).
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&SimState) -> BackendResult<T>,
    ) -> BackendResult<T> {
        let (out, t) = self.store.view(f)?;
        self.store.sync_to(t)?;
        out
    }

    /// Changes the state under the lock; nothing is kept if `f` fails.
    /// Returns once the change is durable.
    pub(crate) fn update<T>(
        &self,
        f: impl FnOnce(&mut SimState) -> BackendResult<T>,
    ) -> BackendResult<T> {
        let (out, t) = self.store.update(f)?;
        self.store.sync_to(t)?;
        Ok(out)
    }

    /// [`SimulatedCluster::read`] for async callers.
    pub(crate) async fn look<T>(
        &self,
        f: impl FnOnce(&SimState) -> BackendResult<T>,
    ) -> BackendResult<T> {
        let (out, t) = self.store.view(f)?;
        self.durable(t).await?;
        out
    }

    /// [`SimulatedCluster::update`] for async callers: while the change is
    /// synced, the caller's sibling futures (the other phases of a parallel
    /// group) append theirs, and one sync covers them all.
    pub(crate) async fn change<T>(
        &self,
        f: impl FnOnce(&mut SimState) -> BackendResult<T>,
    ) -> BackendResult<T> {
        let (out, t) = self.store.update(f)?;
        self.durable(t).await?;
        Ok(out)
    }

    async fn durable(&self, t: store::Ticket) -> BackendResult<()> {
        if self.store.covered_ticket(t) {
            return Ok(());
        }
        tokio::task::yield_now().await;
        block_in_place(|| self.store.sync_to(t))
    }
}

/// Runs blocking work on the caller's thread, inside
/// [`tokio::task::block_in_place`] on a multi-thread runtime.
fn block_in_place<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn initial_state(spec: &SimSpec) -> SimState {
    let cluster = spec.cluster.clone();
    let etcd_version = cluster
        .installed
        .etcd_version
        .clone()
        .unwrap_or_else(|| Version::parse("3.3.20").expect("valid"));
    let dir = etcd_data_dir(&etcd_version);
    let mut kube = SimKube::default();
    let mut etcd = SimEtcd::default();
    let mut election = BTreeMap::new();
    let mut nodes = BTreeMap::new();
    let names: Vec<String> = cluster.nodes.iter().map(|n| n.hostname.clone()).collect();
    for n in &cluster.nodes {
        let mut labels = BTreeMap::new();
        labels.insert("kubernetes.io/hostname".to_string(), n.hostname.clone());
        labels.insert(
            "gravitational.io/k8s-role".to_string(),
            n.role.as_str().to_string(),
        );
        labels.insert("role".to_string(), n.role.as_str().to_string());
        kube.nodes.insert(
            n.hostname.clone(),
            SimKubeNode {
                labels,
                taints: Vec::new(),
                unschedulable: false,
            },
        );
        let ds = |ns: &str, name: &str, app: (&str, &str)| SimPod {
            namespace: ns.into(),
            name: format!("{name}-{}", n.hostname),
            node: Some(n.hostname.clone()),
            owner: Some("DaemonSet".into()),
            mirror: false,
            labels: BTreeMap::from([(app.0.to_string(), app.1.to_string())]),
            restarts: 0,
        };
        kube.pods
            .push(ds("kube-system", "coredns", ("k8s-app", "kube-dns")));
        kube.pods
            .push(ds("kube-system", "log-forwarder", ("app", "log-forwarder")));
        if n.is_master() {
            kube.pods
                .push(ds("kube-system", "gravity-site", ("app", "gravity-site")));
            etcd.members.insert(
                n.hostname.clone(),
                SimEtcdMember {
                    version: etcd_version.clone(),
                    data_dir: dir.clone(),
                    previous: None,
                    serving: Some(EtcdAddress::Normal),
                },
            );
            election.insert(n.hostname.clone(), true);
        }
        nodes.insert(
            n.hostname.clone(),
            SimNode {
                runtime: cluster.installed.runtime_package.clone(),
                runtime_running: true,
                agent_running: spec.agents_running,
                service_restarts: BTreeMap::new(),
                disk_total: spec.disk_total,
                disk_free: spec.disk_free,
                clock_offset_ms: 0,
                dns: Some(cluster.dns.clone()),
                docker_devices: n
                    .docker_device
                    .iter()
                    .map(|d| (d.clone(), "devicemapper".to_string()))
                    .collect(),
                journal_gc: 0,
                records: BTreeMap::new(),
                files: BTreeMap::new(),
            },
        );
    }
    // Application pods spread over the nodes, with disruption budgets.
    let replicas = names.len().max(2);
    for (app, ns, budget) in [
        ("web", "default", true),
        ("api", "default", true),
        ("batch", "jobs", false),
    ] {
        for i in 0..replicas {
            kube.pods.push(SimPod {
                namespace: ns.into(),
                name: format!("{app}-{i}"),
                node: Some(names[(i + app.len()) % names.len()].clone()),
                owner: Some(
                    if app == "api" {
                        "StatefulSet"
                    } else {
                        "Deployment"
                    }
                    .into(),
                ),
                mirror: false,
                labels: BTreeMap::from([("app".to_string(), app.to_string())]),
                restarts: 0,
            });
        }
        if budget {
            kube.pdbs.push(SimPdb {
                namespace: ns.into(),
                name: app.into(),
                selector: BTreeMap::from([("app".to_string(), app.to_string())]),
                min_available: if names.len() > 1 { replicas - 1 } else { 0 },
            });
        }
    }
    // Installed applications.
    let inst = &cluster.installed;
    for l in std::iter::once(&inst.app)
        .chain(&inst.app_dependencies)
        .chain(std::iter::once(&inst.runtime_app))
        .chain(&inst.system_apps)
    {
        kube.applications
            .insert(format!("{}/{}", l.repository(), l.name()), l.clone());
    }
    // Some etcd keys.
    let mut data = BTreeMap::new();
    for n in &cluster.nodes {
        data.insert(
            format!("/registry/minions/{}", n.hostname),
            format!("{{\"kind\":\"Node\",\"name\":\"{}\"}}", n.hostname),
        );
    }
    for p in &kube.pods {
        data.insert(
            format!("/registry/pods/{}/{}", p.namespace, p.name),
            format!("{{\"kind\":\"Pod\",\"name\":\"{}\"}}", p.name),
        );
    }
    data.insert(
        format!("/gravity/local/sites/{}", cluster.name),
        format!("{{\"state\":\"active\",\"app\":\"{}\"}}", inst.app),
    );
    for m in cluster.masters() {
        data.insert(
            format!(
                "/planet/cluster/{}/election/{}",
                cluster.name, m.advertise_ip
            ),
            "true".into(),
        );
    }
    // Gravity's own backend: roles (in the old format when the cluster
    // still has `assignKubernetesGroups` rules) and trusted clusters.
    let admin_rule = if cluster.legacy_role_rules {
        serde_json::json!({"resources": ["*"], "verbs": ["*"],
                           "actions": ["assignKubernetesGroups(\"admin\")"]})
    } else {
        serde_json::json!({"resources": ["*"], "verbs": ["*"]})
    };
    let mut allow = serde_json::json!({"logins": ["root"], "rules": [admin_rule]});
    if !cluster.legacy_role_rules {
        allow["kubernetes_groups"] = serde_json::json!(["admin"]);
    }
    let role = serde_json::json!({"kind": "role", "version": "v3",
        "metadata": {"name": "@teleadmin"}, "spec": {"allow": allow, "deny": {}}});
    data.insert(
        format!("{}@teleadmin", crate::phases::roles::ROLES),
        role.to_string(),
    );
    for name in &cluster.trusted_clusters {
        data.insert(
            format!("{}{name}", crate::phases::links::TRUSTED_CLUSTERS),
            serde_json::json!({"name": name, "enabled": true}).to_string(),
        );
    }
    etcd.data.insert(dir, data);
    let mut state = SimState {
        format: 1,
        generation: 0,
        cluster,
        kube,
        etcd,
        election,
        leader: None,
        nodes,
        faults: Vec::new(),
        derived: Default::default(),
    };
    state.rebuild();
    state.reelect();
    state
}

fn snapshot(s: &SimState) -> ClusterSnapshot {
    let mut nodes = Vec::new();
    for n in &s.cluster.nodes {
        let h = &n.hostname;
        let sys = s.nodes.get(h);
        let kn = s.kube.nodes.get(h);
        let m = s.etcd.members.get(h);
        let unreachable = s.fault(FaultKind::NodeUnreachable, h).is_some();
        let mut pods: Vec<String> = s.pods_on(h).map(|i| s.kube.pods[i].key()).collect();
        pods.sort();
        nodes.push(NodeSnapshot {
            hostname: h.clone(),
            advertise_ip: n.advertise_ip.clone(),
            role: n.role.as_str().into(),
            runtime: sys.map(|x| x.runtime.to_string()).unwrap_or_default(),
            runtime_running: sys.is_some_and(|x| x.runtime_running),
            unschedulable: kn.is_some_and(|k| k.unschedulable),
            taints: kn
                .map(|k| k.taints.iter().map(Taint::to_string).collect())
                .unwrap_or_default(),
            labels: kn.map(|k| k.labels.clone()).unwrap_or_default(),
            pods,
            etcd_version: m.map(|m| m.version.to_string()),
            etcd_data_dir: m.map(|m| m.data_dir.clone()),
            etcd_state: m.map(|m| {
                match m.serving {
                    Some(EtcdAddress::Normal) => "normal",
                    Some(EtcdAddress::Upgrade) => "upgrade",
                    None => "stopped",
                }
                .into()
            }),
            election: s.election.get(h).copied(),
            agent_running: sys.is_some_and(|x| x.agent_running),
            disk_total: sys.map(|x| x.disk_total).unwrap_or(0),
            disk_free: impls::disk_free(s, h),
            clock_offset_ms: impls::clock_offset(s, h),
            dns_ok: impls::dns_config(s, h).is_some(),
            reachable: !unreachable,
        });
    }
    ClusterSnapshot {
        name: s.cluster.name.clone(),
        leader: s.leader.clone(),
        nodes,
        etcd_data: impls::cluster_data(s).cloned().unwrap_or_default(),
        applications: s
            .kube
            .applications
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect(),
        objects: s.kube.objects.iter().cloned().collect(),
        pending_pods: s.pending_pods().map(|i| s.kube.pods[i].key()).collect(),
        faults: s.faults.clone(),
    }
}

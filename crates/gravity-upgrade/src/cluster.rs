//! The cluster model: name, nodes, what is installed, state and operations.

use std::collections::HashSet;
use std::fmt;
use std::net::Ipv4Addr;

use chrono::{DateTime, Utc};
use gravity_pack::locator::validate_repository;
use gravity_plan::PhasePath;
use serde::{Deserialize, Serialize};

use crate::error::{BuildError, UpgradeRefused};
use crate::image::{ClusterImage, DockerConfig};

/// The Kubernetes role of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// A master: runs the control plane and etcd.
    #[serde(rename = "master")]
    Master,
    /// A regular node (Gravity's `node` cluster role).
    #[serde(rename = "node", alias = "worker")]
    Worker,
}

impl Role {
    /// Gravity's cluster-role text: `master` or `node`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Worker => "node",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One cluster node (Gravity's `server`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    /// Host name, e.g. `kevin-test1`; also the phase id of the node's phases.
    pub hostname: String,
    /// Advertise address (IPv4), e.g. `10.162.0.7`.
    pub advertise_ip: String,
    /// Role in the cluster.
    pub role: Role,
    /// Node profile of the application manifest (`node` in the seed).
    #[serde(default = "default_profile")]
    pub profile: String,
    /// Kubernetes node name, when it differs from the host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodename: Option<String>,
    /// Block device recorded for Docker (devicemapper installs), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_device: Option<String>,
}

fn default_profile() -> String {
    "node".into()
}

impl ClusterNode {
    /// A node with a host name, address and role, profile `node`.
    pub fn new(hostname: impl Into<String>, advertise_ip: impl Into<String>, role: Role) -> Self {
        ClusterNode {
            hostname: hostname.into(),
            advertise_ip: advertise_ip.into(),
            role,
            profile: default_profile(),
            nodename: None,
            docker_device: None,
        }
    }

    /// A master node.
    pub fn master(hostname: impl Into<String>, advertise_ip: impl Into<String>) -> Self {
        Self::new(hostname, advertise_ip, Role::Master)
    }

    /// A worker (regular) node.
    pub fn worker(hostname: impl Into<String>, advertise_ip: impl Into<String>) -> Self {
        Self::new(hostname, advertise_ip, Role::Worker)
    }

    /// The same node with a recorded Docker device.
    pub fn with_docker_device(mut self, device: impl Into<String>) -> Self {
        self.docker_device = Some(device.into());
        self
    }

    /// Whether the node is a master.
    pub fn is_master(&self) -> bool {
        self.role == Role::Master
    }

    /// The node as the plan engine knows it.
    pub fn plan_node(&self) -> gravity_plan::Node {
        gravity_plan::Node::new(self.hostname.clone(), self.advertise_ip.clone())
    }

    /// `hostname/ip`, as in Gravity's messages.
    pub fn display(&self) -> String {
        format!("{}/{}", self.hostname, self.advertise_ip)
    }
}

/// The state of a cluster (Gravity's site state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterState {
    /// Running, no operation in progress.
    Active,
    /// Being installed.
    Installing,
    /// An upgrade is in progress.
    Updating,
    /// Nodes are being added.
    Expanding,
    /// Nodes are being removed.
    Shrinking,
    /// Some nodes are unhealthy.
    Degraded,
    /// Being uninstalled.
    Uninstalling,
    /// An operation failed and left the cluster unusable.
    Failed,
}

impl ClusterState {
    /// The state as Gravity prints it (`active`, `updating`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::Active => "active",
            ClusterState::Installing => "installing",
            ClusterState::Updating => "updating",
            ClusterState::Expanding => "expanding",
            ClusterState::Shrinking => "shrinking",
            ClusterState::Degraded => "degraded",
            ClusterState::Uninstalling => "uninstalling",
            ClusterState::Failed => "failed",
        }
    }
}

impl fmt::Display for ClusterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of a cluster operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OperationKind {
    /// `operation_install`.
    #[serde(rename = "operation_install")]
    Install,
    /// `operation_expand`.
    #[serde(rename = "operation_expand")]
    Expand,
    /// `operation_shrink`.
    #[serde(rename = "operation_shrink")]
    Shrink,
    /// `operation_update`.
    #[serde(rename = "operation_update")]
    Update,
    /// `operation_uninstall`.
    #[serde(rename = "operation_uninstall")]
    Uninstall,
    /// `operation_gc`.
    #[serde(rename = "operation_gc")]
    GarbageCollect,
}

impl OperationKind {
    /// Gravity's name (`operation_update`).
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Install => "operation_install",
            OperationKind::Expand => "operation_expand",
            OperationKind::Shrink => "operation_shrink",
            OperationKind::Update => "operation_update",
            OperationKind::Uninstall => "operation_uninstall",
            OperationKind::GarbageCollect => "operation_gc",
        }
    }
}

impl fmt::Display for OperationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationStatus {
    /// Running (or interrupted and resumable).
    InProgress,
    /// Finished successfully.
    Completed,
    /// Finished with a failure (possibly rolled back).
    Failed,
}

impl fmt::Display for OperationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OperationStatus::InProgress => "in_progress",
            OperationStatus::Completed => "completed",
            OperationStatus::Failed => "failed",
        })
    }
}

/// A cluster operation in the cluster's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterOperation {
    /// Operation id (a UUID).
    pub id: String,
    /// Kind.
    pub kind: OperationKind,
    /// Status.
    pub status: OperationStatus,
    /// When it started, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<DateTime<Utc>>,
    /// For a failed operation: whether its plan is fully rolled back.
    #[serde(default)]
    pub rolled_back: bool,
}

/// The cluster DNS configuration (`dns_config` of the plan).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    /// Listen addresses.
    pub addrs: Vec<String>,
    /// Port.
    pub port: u16,
}

impl DnsConfig {
    /// The legacy value used when nothing else is known: `127.0.0.1:53`.
    pub fn legacy() -> Self {
        DnsConfig {
            addrs: vec!["127.0.0.1".into()],
            port: 53,
        }
    }
}

impl Default for DnsConfig {
    /// The current default, `127.0.0.2:53`.
    fn default() -> Self {
        DnsConfig {
            addrs: vec!["127.0.0.2".into()],
            port: 53,
        }
    }
}

/// A Gravity cluster as the upgrade sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// Cluster name, e.g. `festivebrown4906`; also the repository of the
    /// cluster's generated packages.
    pub name: String,
    /// Nodes in stored (cluster-state) order.
    pub nodes: Vec<ClusterNode>,
    /// The installed application, runtime and packages.
    pub installed: ClusterImage,
    /// Current state.
    pub state: ClusterState,
    /// Operations, oldest first.
    #[serde(default)]
    pub operations: Vec<ClusterOperation>,
    /// DNS configuration.
    #[serde(default)]
    pub dns: DnsConfig,
    /// The Docker configuration in use.
    #[serde(default)]
    pub docker: DockerConfig,
    /// Ops Center links (remote-access/update) recorded for the cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ops_center_links: Vec<String>,
    /// Trusted clusters already configured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_clusters: Vec<String>,
    /// Whether some role still uses `assignKubernetesGroups` actions (the
    /// `roles` migration is then needed).
    #[serde(default)]
    pub legacy_role_rules: bool,
}

impl Cluster {
    /// An active cluster with no nodes yet.
    pub fn new(name: impl Into<String>, installed: ClusterImage) -> Self {
        let docker = installed.docker.clone();
        Cluster {
            name: name.into(),
            nodes: Vec::new(),
            installed,
            state: ClusterState::Active,
            operations: Vec::new(),
            dns: DnsConfig::default(),
            docker,
            ops_center_links: Vec::new(),
            trusted_clusters: Vec::new(),
            legacy_role_rules: false,
        }
    }

    /// The same cluster with one more node.
    pub fn with_node(mut self, node: ClusterNode) -> Self {
        self.nodes.push(node);
        self
    }

    /// Master nodes in stored order.
    pub fn masters(&self) -> impl Iterator<Item = &ClusterNode> + '_ {
        self.nodes.iter().filter(|n| n.is_master())
    }

    /// Worker nodes in stored order.
    pub fn workers(&self) -> impl Iterator<Item = &ClusterNode> + '_ {
        self.nodes.iter().filter(|n| !n.is_master())
    }

    /// The node with this host name or advertise address.
    pub fn node(&self, host_or_ip: &str) -> Option<&ClusterNode> {
        self.nodes
            .iter()
            .find(|n| n.hostname == host_or_ip || n.advertise_ip == host_or_ip)
    }

    /// The most recent operation, if any.
    pub fn last_operation(&self) -> Option<&ClusterOperation> {
        self.operations.last()
    }

    /// Checks what the upgrade needs of the model: a valid name, at least
    /// one master, host names usable as phase ids, IPv4 advertise
    /// addresses, no duplicate host name or address. Linear in the nodes.
    pub fn validate(&self) -> Result<(), BuildError> {
        validate_repository(&self.name).map_err(|reason| BuildError::InvalidClusterName {
            name: self.name.clone(),
            reason,
        })?;
        if self.nodes.is_empty() {
            return Err(BuildError::EmptyCluster(self.name.clone()));
        }
        let root = PhasePath::root();
        let mut hosts = HashSet::with_capacity(self.nodes.len());
        let mut addrs = HashSet::with_capacity(self.nodes.len());
        for n in &self.nodes {
            root.join(&n.hostname)
                .map_err(|source| BuildError::InvalidHostname {
                    hostname: n.hostname.clone(),
                    source,
                })?;
            if n.advertise_ip.parse::<Ipv4Addr>().is_err() {
                return Err(BuildError::InvalidAddress {
                    hostname: n.hostname.clone(),
                    addr: n.advertise_ip.clone(),
                });
            }
            if !hosts.insert(n.hostname.as_str()) {
                return Err(BuildError::DuplicateHostname(n.hostname.clone()));
            }
            if !addrs.insert(n.advertise_ip.as_str()) {
                return Err(BuildError::DuplicateAddress(n.advertise_ip.clone()));
            }
        }
        if !self.nodes.iter().any(ClusterNode::is_master) {
            return Err(BuildError::NoMaster(self.name.clone()));
        }
        Ok(())
    }

    /// Whether an upgrade operation may be created now (spec §4.1, server
    /// side): the cluster must be active, and unless `force` the last
    /// upgrade must be finished and, if it failed, fully rolled back.
    pub fn check_upgrade_allowed(&self, force: bool) -> Result<(), UpgradeRefused> {
        if self.state != ClusterState::Active {
            return Err(UpgradeRefused::NotActive(self.state));
        }
        if force {
            return Ok(());
        }
        let last = self
            .operations
            .iter()
            .rev()
            .find(|o| o.kind == OperationKind::Update);
        match last {
            Some(o) if o.status == OperationStatus::InProgress => Err(UpgradeRefused::InProgress {
                kind: o.kind.to_string(),
                id: o.id.clone(),
            }),
            Some(o) if o.status == OperationStatus::Failed && !o.rolled_back => {
                Err(UpgradeRefused::NotRolledBack {
                    kind: o.kind.to_string(),
                    id: o.id.clone(),
                    state: o.status.to_string(),
                })
            }
            _ => Ok(()),
        }
    }

    /// The seed's demo cluster (`festivebrown4906`): three masters
    /// `kevin-test1` 10.162.0.7, `kevin-test2` 10.162.0.6 and `kevin-test3`
    /// 10.162.0.5 (profile `node`), telekube 5.5.46 installed, active.
    pub fn seed() -> Self {
        let mut c = Cluster::new("festivebrown4906", ClusterImage::seed_installed())
            .with_node(ClusterNode::master("kevin-test1", "10.162.0.7"))
            .with_node(ClusterNode::master("kevin-test2", "10.162.0.6"))
            .with_node(ClusterNode::master("kevin-test3", "10.162.0.5"));
        c.operations.push(ClusterOperation {
            id: "2bf0f44d-f9eb-4374-bc1c-0e9937329025".into(),
            kind: OperationKind::Install,
            status: OperationStatus::Completed,
            created: None,
            rolled_back: false,
        });
        c
    }

    /// A synthetic active cluster `synthetic` running the seed's installed
    /// image, with `masters` masters (`master-1`, …) followed by `workers`
    /// workers (`worker-1`, …). Addresses are `10.a.b.c`, unique up to
    /// 16 million nodes. For tests, examples and benchmarks.
    pub fn synthetic(masters: usize, workers: usize) -> Self {
        let mut c = Cluster::new("synthetic", ClusterImage::seed_installed());
        c.nodes.reserve(masters + workers);
        for i in 0..masters {
            c.nodes.push(ClusterNode::master(
                format!("master-{}", i + 1),
                synthetic_ip(i),
            ));
        }
        for i in 0..workers {
            c.nodes.push(ClusterNode::worker(
                format!("worker-{}", i + 1),
                synthetic_ip(masters + i),
            ));
        }
        c
    }
}

/// `10.a.b.c` for node number `i` (0-based): the 24 low bits of `i + 1`.
fn synthetic_ip(i: usize) -> String {
    let n = i + 1;
    format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_cluster_is_valid() {
        let c = Cluster::seed();
        c.validate().unwrap();
        assert_eq!(c.masters().count(), 3);
        assert_eq!(c.workers().count(), 0);
        assert_eq!(c.node("10.162.0.6").unwrap().hostname, "kevin-test2");
        assert!(c.check_upgrade_allowed(false).is_ok());
    }

    #[test]
    fn validation_errors() {
        let c = Cluster::new("c", ClusterImage::seed_installed());
        assert!(matches!(c.validate(), Err(BuildError::EmptyCluster(_))));
        let c = c.with_node(ClusterNode::worker("w", "10.0.0.1"));
        assert!(matches!(c.validate(), Err(BuildError::NoMaster(_))));
        let c = c.with_node(ClusterNode::master("w", "10.0.0.2"));
        assert!(matches!(c.validate(), Err(BuildError::DuplicateHostname(h)) if h == "w"));
        let mut c = Cluster::seed();
        c.nodes[1].advertise_ip = "10.162.0.7".into();
        assert!(matches!(c.validate(), Err(BuildError::DuplicateAddress(_))));
        c.nodes[1].advertise_ip = "fe80::1".into();
        assert!(matches!(
            c.validate(),
            Err(BuildError::InvalidAddress { .. })
        ));
        let mut c = Cluster::seed();
        c.nodes[0].hostname = "a b".into();
        assert!(matches!(
            c.validate(),
            Err(BuildError::InvalidHostname { .. })
        ));
        let mut c = Cluster::seed();
        c.name = "bad name".into();
        assert!(matches!(
            c.validate(),
            Err(BuildError::InvalidClusterName { .. })
        ));
    }

    #[test]
    fn upgrade_allowed_only_when_active_and_last_update_done() {
        let mut c = Cluster::seed();
        c.state = ClusterState::Updating;
        let e = c.check_upgrade_allowed(true).unwrap_err();
        assert!(e.to_string().contains("currently updating"), "{e}");
        c.state = ClusterState::Active;
        c.operations.push(ClusterOperation {
            id: "op".into(),
            kind: OperationKind::Update,
            status: OperationStatus::Failed,
            created: None,
            rolled_back: false,
        });
        assert!(matches!(
            c.check_upgrade_allowed(false),
            Err(UpgradeRefused::NotRolledBack { .. })
        ));
        assert!(c.check_upgrade_allowed(true).is_ok());
        c.operations.last_mut().unwrap().rolled_back = true;
        assert!(c.check_upgrade_allowed(false).is_ok());
    }

    #[test]
    fn synthetic_addresses_are_unique() {
        let c = Cluster::synthetic(3, 70_000);
        c.validate().unwrap();
        assert_eq!(c.nodes[0].advertise_ip, "10.0.0.1");
        assert_eq!(c.nodes.len(), 70_003);
    }
}

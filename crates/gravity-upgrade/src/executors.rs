//! Executor kinds of the upgrade phases and the data each kind carries.
//!
//! Every leaf phase built by [`crate::build_plan`] names one of the kinds
//! below in [`gravity_plan::Phase::executor`], and carries a JSON object in
//! [`gravity_plan::Phase::data`] that deserializes into the struct listed
//! with the kind (use [`decode`]). Where a phase runs is the phase's
//! `exec_node` (Gravity's `exec_server`), else its `node` (`server`), else
//! the coordinator (the lead master).

use gravity_pack::{Locator, Version};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::cluster::{ClusterNode, DnsConfig};
use crate::image::DockerConfig;

/// `/init/<leader>`: [`InitData`].
pub const UPDATE_INIT_LEADER: &str = "update_init_leader";
/// `/init/<node>`: [`InitData`].
pub const UPDATE_INIT: &str = "update_init";
/// `/checks`: [`ChecksData`].
pub const UPDATE_CHECKS: &str = "update_checks";
/// `/pre-update`: [`AppData`].
pub const PRE_UPDATE: &str = "pre_update";
/// `/bootstrap/<leader>`: [`BootstrapData`] (every server).
pub const UPDATE_BOOTSTRAP_LEADER: &str = "update_bootstrap_leader";
/// `/bootstrap/<node>`: [`BootstrapData`] (that server).
pub const UPDATE_BOOTSTRAP: &str = "update_bootstrap";
/// `/coredns`: [`NodeData`].
pub const COREDNS: &str = "coredns";
/// `/masters/<leader>/kubelet-permissions`: [`NodeData`].
pub const KUBELET_PERMISSIONS: &str = "kubelet_permissions";
/// `stepdown-*`, `elect-*`, `enable-*`: [`ElectionData`].
pub const ELECTION_STATUS: &str = "election_status";
/// `…/drain`: [`NodeData`].
pub const DRAIN_NODE: &str = "drain_node";
/// `…/system-upgrade`: [`SystemUpgradeData`].
pub const UPDATE_SYSTEM: &str = "update_system";
/// `…/taint`: [`NodeData`].
pub const TAINT_NODE: &str = "taint_node";
/// `…/uncordon`: [`NodeData`].
pub const UNCORDON_NODE: &str = "uncordon_node";
/// `…/endpoints`: [`NodeData`].
pub const ENDPOINTS: &str = "endpoints";
/// `…/untaint`: [`NodeData`].
pub const UNTAINT_NODE: &str = "untaint_node";
/// `…/docker/devicemapper`: [`DockerDeviceData`].
pub const DEVICEMAPPER: &str = "devicemapper";
/// `…/docker/format`: [`DockerDeviceData`].
pub const FORMAT: &str = "format";
/// `…/docker/mount`: [`DockerDeviceData`].
pub const MOUNT: &str = "mount";
/// `…/docker/planet`: [`PlanetStartData`].
pub const PLANET_START: &str = "planet_start";
/// `/flannel/<node>`: [`NodeData`].
pub const FLANNEL_RESTART: &str = "flannel_restart";
/// `/etcd/backup/<master>`: [`EtcdData`].
pub const ETCD_BACKUP: &str = "etcd_backup";
/// `/etcd/shutdown/<master>`: [`EtcdData`] (`leader` is Gravity's "true"/"false").
pub const ETCD_SHUTDOWN: &str = "etcd_shutdown";
/// `/etcd/upgrade/<master>`: [`EtcdData`].
pub const ETCD_UPGRADE: &str = "etcd_upgrade";
/// `/etcd/restore`: [`EtcdData`] (the leader).
pub const ETCD_RESTORE: &str = "etcd_restore";
/// `/etcd/restart/<node>`: [`EtcdData`] (masters and workers).
pub const ETCD_RESTART: &str = "etcd_restart";
/// `/etcd/restart/gravity-site`: [`EtcdData`] (the leader).
pub const ETCD_RESTART_GRAVITY: &str = "etcd_restart_gravity";
/// `/config/<master>`: [`NodeData`].
pub const CONFIG: &str = "config";
/// `/runtime/<app>` and `/app/<app>`: [`AppData`].
pub const UPDATE_APP: &str = "update_app";
/// `/migration/links`: [`LinksData`].
pub const LINKS: &str = "links";
/// `/migration/labels`: [`LabelsData`].
pub const LABELS: &str = "labels";
/// `/migration/roles`: [`NodeData`] (the leader).
pub const ROLES: &str = "roles";
/// `/gc/<node>`: [`NodeData`].
pub const CLEANUP_NODE: &str = "cleanup_node";

/// Every executor kind the upgrade plan uses.
pub const ALL: &[&str] = &[
    UPDATE_INIT_LEADER,
    UPDATE_INIT,
    UPDATE_CHECKS,
    PRE_UPDATE,
    UPDATE_BOOTSTRAP_LEADER,
    UPDATE_BOOTSTRAP,
    COREDNS,
    KUBELET_PERMISSIONS,
    ELECTION_STATUS,
    DRAIN_NODE,
    UPDATE_SYSTEM,
    TAINT_NODE,
    UNCORDON_NODE,
    ENDPOINTS,
    UNTAINT_NODE,
    DEVICEMAPPER,
    FORMAT,
    MOUNT,
    PLANET_START,
    FLANNEL_RESTART,
    ETCD_BACKUP,
    ETCD_SHUTDOWN,
    ETCD_UPGRADE,
    ETCD_RESTORE,
    ETCD_RESTART,
    ETCD_RESTART_GRAVITY,
    CONFIG,
    UPDATE_APP,
    LINKS,
    LABELS,
    ROLES,
    CLEANUP_NODE,
];

/// Decodes a phase's data into the struct of its kind.
pub fn decode<T: DeserializeOwned>(phase: &gravity_plan::Phase) -> Result<T, serde_json::Error> {
    phase.data.decode()
}

/// A node named in another node's phase (election lists, labels).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRef {
    /// Host name.
    pub hostname: String,
    /// Advertise address.
    pub advertise_ip: String,
    /// Kubernetes node name, when it differs from the host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodename: Option<String>,
}

impl From<&ClusterNode> for NodeRef {
    fn from(n: &ClusterNode) -> Self {
        NodeRef {
            hostname: n.hostname.clone(),
            advertise_ip: n.advertise_ip.clone(),
            nodename: n.nodename.clone(),
        }
    }
}

/// The new planet package of a node and its generated configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimePackageUpdate {
    /// The new planet package.
    pub package: Locator,
    /// The node's new planet configuration package (generated at bootstrap).
    pub config_package: Locator,
}

/// What happens to a node's runtime (planet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeUpdate {
    /// The installed planet package.
    pub installed: Locator,
    /// The node's new secrets package, when planet changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_package: Option<Locator>,
    /// The new planet and configuration, when planet changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<RuntimePackageUpdate>,
}

/// The new teleport package of a node and its generated configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeleportPackageUpdate {
    /// The new teleport package.
    pub package: Locator,
    /// The node's new teleport node configuration package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_config_package: Option<Locator>,
}

/// What happens to a node's teleport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeleportUpdate {
    /// The installed teleport package.
    pub installed: Locator,
    /// The update, when teleport changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<TeleportPackageUpdate>,
}

/// The node's Docker configuration before and after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerUpdate {
    /// Installed configuration.
    pub installed: DockerConfig,
    /// Configuration after the upgrade.
    pub update: DockerConfig,
}

/// Gravity's `UpdateServer`: a node and what the upgrade changes on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateServer {
    /// The node.
    pub server: ClusterNode,
    /// Runtime (planet) changes.
    pub runtime: RuntimeUpdate,
    /// Teleport changes.
    pub teleport: TeleportUpdate,
    /// Docker configuration.
    pub docker: DockerUpdate,
}

/// `update_init_leader`, `update_init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitData {
    /// The update application (leader only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<Locator>,
    /// The installed application (leader only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_package: Option<Locator>,
    /// The cluster DNS configuration to record if the cluster has none (leader only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<DnsConfig>,
    /// The node being initialized.
    pub update: UpdateServer,
}

/// `update_checks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChecksData {
    /// The update application.
    pub package: Locator,
    /// The installed application.
    pub installed_package: Locator,
    /// `--docker-device`, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_device: Option<String>,
}

/// `update_bootstrap_leader`, `update_bootstrap`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapData {
    /// The update application.
    pub package: Locator,
    /// The installed application.
    pub installed_package: Locator,
    /// The servers to bootstrap: every server for the leader (leader
    /// first), the phase's own server otherwise.
    pub updates: Vec<UpdateServer>,
    /// The gravity binary of this step.
    pub gravity_package: Locator,
    /// The runtime version of an intermediate step (absent for the target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Version>,
}

/// Kinds that act on one node and need nothing else: `coredns`,
/// `kubelet_permissions`, `drain_node`, `taint_node`, `uncordon_node`,
/// `endpoints`, `untaint_node`, `config`, `roles`, `cleanup_node`,
/// `flannel_restart`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeData {
    /// The node acted on.
    pub server: ClusterNode,
}

/// `election_status`: the etcd election keys to flip on `server`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionData {
    /// The node the phase acts on.
    pub server: ClusterNode,
    /// Masters whose election is enabled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enable: Vec<NodeRef>,
    /// Masters whose election is disabled (the phase waits until none of
    /// them is the Kubernetes leader).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disable: Vec<NodeRef>,
}

/// `update_system`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemUpgradeData {
    /// The node and its package changes.
    pub update: UpdateServer,
    /// The package changeset id of this step (one per step).
    pub changeset_id: Uuid,
    /// The gravity binary of this step.
    pub gravity_package: Locator,
    /// Whether the Docker device is migrated afterwards (then the new
    /// planet is not started by this phase but by `…/docker/planet`).
    #[serde(default)]
    pub docker_migration: bool,
}

/// `devicemapper`, `format`, `mount`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerDeviceData {
    /// The node.
    pub server: ClusterNode,
    /// The block device to repurpose.
    pub docker_device: String,
}

/// `planet_start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanetStartData {
    /// The node and its new planet.
    pub update: UpdateServer,
}

/// The etcd kinds: `etcd_backup`, `etcd_shutdown`, `etcd_upgrade`,
/// `etcd_restore`, `etcd_restart`, `etcd_restart_gravity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdData {
    /// The node acted on.
    pub server: ClusterNode,
    /// Installed etcd version (absent when planet had no label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed: Option<Version>,
    /// The new etcd version.
    pub update: Version,
    /// Whether `server` is the lead master (Gravity's shutdown data
    /// "true"/"false": the shutdown rollback also restarts gravity-site).
    #[serde(default)]
    pub leader: bool,
}

/// `update_app` and `pre_update`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppData {
    /// The application package to update to (whose hooks run).
    pub package: Locator,
    /// The installed version of the same application, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_package: Option<Locator>,
}

/// `links`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinksData {
    /// The Ops Center links to turn into a trusted cluster.
    #[serde(default)]
    pub links: Vec<String>,
}

/// `labels`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelsData {
    /// Every server, in plan order.
    pub servers: Vec<NodeRef>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_unique() {
        let set: std::collections::HashSet<_> = ALL.iter().collect();
        assert_eq!(set.len(), ALL.len());
    }
}

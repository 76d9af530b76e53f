//! Why a cluster cannot be upgraded or a plan cannot be built.

use gravity_pack::{Locator, LocatorError};
use gravity_plan::PathError;

use crate::cluster::ClusterState;

/// Why the upgrade plan could not be built. Messages quote Gravity's wording
/// where the spec gives it and otherwise say what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The cluster has no nodes.
    #[error("cluster {0:?} has no nodes; an upgrade needs at least one master node")]
    EmptyCluster(String),
    /// The cluster has nodes but none of them is a master.
    #[error(
        "cluster {0:?} has no master node; an upgrade is driven from a master, label one node gravitational.io/k8s-role=master"
    )]
    NoMaster(String),
    /// The cluster name cannot be used as a package repository.
    #[error(
        "cluster name {name:?} is not valid: {reason} (cluster names are domain-like, e.g. festivebrown4906)"
    )]
    InvalidClusterName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A host name cannot be used as a phase id.
    #[error(
        "node host name {hostname:?} cannot be used in a phase path: {source} (use letters, digits and -_.)"
    )]
    InvalidHostname {
        /// The host name.
        hostname: String,
        /// Why the path was refused.
        #[source]
        source: PathError,
    },
    /// An advertise address is not an IPv4 address.
    #[error("node {hostname:?} has advertise address {addr:?}, which is not an IPv4 address")]
    InvalidAddress {
        /// The node.
        hostname: String,
        /// The address.
        addr: String,
    },
    /// Two nodes share a host name.
    #[error("host name {0:?} is used by more than one cluster node; host names must be unique")]
    DuplicateHostname(String),
    /// Two nodes share an advertise address.
    #[error(
        "advertise address {0} is used by more than one cluster node; advertise addresses must be unique"
    )]
    DuplicateAddress(String),
    /// A host name would give a phase the id of another phase (spec §2,
    /// "known collision").
    #[error(
        "node host name {hostname:?} collides with the phase {path}; rename the node or upgrade without that phase"
    )]
    ReservedHostname {
        /// The host name.
        hostname: String,
        /// The phase it collides with.
        path: String,
    },
    /// The requested lead master is not a node of the cluster.
    #[error(
        "lead master {0:?} is not a node of the cluster (give a host name or advertise address)"
    )]
    UnknownLeader(String),
    /// The requested lead master is a worker.
    #[error(
        "node {0:?} is not a master node: the upgrade must be driven from one of the master nodes"
    )]
    LeaderNotMaster(String),
    /// The target is the installed application (Gravity: NotFound).
    #[error("no update for {0}")]
    NoUpdate(Box<Locator>),
    /// The target is a different application.
    #[error(
        "you are attempting to upgrade to {update_name} {update_version}, but different application is installed: {installed_name} {installed_version}"
    )]
    DifferentApp {
        /// Target application name.
        update_name: String,
        /// Target version.
        update_version: String,
        /// Installed application name.
        installed_name: String,
        /// Installed version.
        installed_version: String,
    },
    /// The target application is older than the installed one.
    #[error(
        "update version ({update}) must be greater than the currently installed version ({installed})"
    )]
    NotNewer {
        /// Target version.
        update: String,
        /// Installed version.
        installed: String,
    },
    /// The target runtime is older than the installed runtime.
    #[error("Downgrade between Gravity versions {installed} and {update} is not allowed.")]
    Downgrade {
        /// Installed runtime version.
        installed: String,
        /// Target runtime version.
        update: String,
    },
    /// The update runtime package does not say which etcd it carries.
    #[error(
        "runtime package {0} has no version-etcd label, so the etcd upgrade cannot be planned; rebuild the image with a labelled planet package"
    )]
    MissingEtcdVersion(Box<Locator>),
    /// A generated package version is not valid.
    #[error("failed to version a generated package: {0}")]
    PackageVersion(#[from] gravity_pack::version::VersionError),
    /// A generated package name is not a valid locator.
    #[error("failed to name a generated package: {0}")]
    PackageName(#[from] LocatorError),
    /// A phase path could not be built.
    #[error("failed to build a phase path: {0}")]
    Path(#[from] PathError),
}

/// Why an upgrade operation may not start now (spec §4.1, server side).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeRefused {
    /// The cluster is not active.
    #[error(
        "Upgrade operation can only be triggered for active clusters. This cluster is currently {0}. Wait for the running operation to finish or complete it with \"gravity plan complete\"."
    )]
    NotActive(ClusterState),
    /// The last upgrade is still running.
    #[error(
        "The last {kind} operation ({id}) is still in progress. Resume it with \"gravity upgrade --resume\" or roll it back with \"gravity rollback\"."
    )]
    InProgress {
        /// Operation kind.
        kind: String,
        /// Operation id.
        id: String,
    },
    /// The last upgrade failed and was not rolled back completely.
    #[error(
        "The last {kind} operation ({id}) is in a {state} state but its operation plan isn't fully rolled back. Roll it back with \"gravity rollback\" or pass --force."
    )]
    NotRolledBack {
        /// Operation kind.
        kind: String,
        /// Operation id.
        id: String,
        /// Its state.
        state: String,
    },
}

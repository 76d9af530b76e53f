//! The upgrade phase executors: one module, and one
//! [`gravity_plan::PhaseExecutor`], per executor kind of
//! [`crate::executors`], acting only through [`Backends`].
//!
//! Every executor reads its inputs from the phase data (the structs of
//! [`crate::executors`]), refuses in its `pre_check` to run where it must
//! not (no reachable agent on its node: [`PhaseError::NoAgent`]; not on a
//! master: [`PhaseError::NotMaster`]) and, where an undo needs to know
//! what the execution changed, keeps a record in the node-local update
//! backend ([`crate::backend::NodeSystem::record`], key
//! `<operation>:<phase>`), so that a rollback undoes exactly what this
//! operation did and nothing else. Use [`registry`] to get an
//! [`ExecutorRegistry`] with every kind.
//!
//! | kind | module | undo |
//! | --- | --- | --- |
//! | `update_init_leader` | [`init_leader`] | credentials and labels back |
//! | `update_init` | [`init`] | labels it added removed |
//! | `update_checks` | [`checks`] | nothing |
//! | `pre_update` | [`pre_update`] | nothing |
//! | `update_bootstrap_leader` | [`bootstrap_leader`] | generated packages deleted |
//! | `update_bootstrap` | [`bootstrap`] | pulled packages deleted |
//! | `coredns` | [`coredns`] | created objects deleted |
//! | `kubelet_permissions` | [`kubelet_permissions`] | created objects deleted |
//! | `election_status` | [`election`] | previous flags |
//! | `drain_node` | [`drain`] | uncordon |
//! | `update_system` | [`system_upgrade`] | changeset reversed |
//! | `taint_node` | [`taint`] | untaint |
//! | `uncordon_node` | [`uncordon`] | cordon |
//! | `endpoints` | [`endpoints`] | nothing |
//! | `untaint_node` | [`untaint`] | taint |
//! | `devicemapper`, `format`, `mount` | [`docker_device`] | previous device state |
//! | `planet_start` | [`planet_start`] | stop |
//! | `flannel_restart` | [`flannel_restart`] | nothing |
//! | `etcd_backup` | [`etcd_backup`] | nothing |
//! | `etcd_shutdown` | [`etcd_shutdown`] | start |
//! | `etcd_upgrade` | [`etcd_upgrade`] | previous version and data dir |
//! | `etcd_restore` | [`etcd_restore`] | nothing |
//! | `etcd_restart` | [`etcd_restart`] | upgrade address |
//! | `etcd_restart_gravity` | [`etcd_restart_gravity`] | nothing |
//! | `config` | [`config`] | pulled configuration deleted |
//! | `update_app` | [`update_app`] | rollback hooks, previous version |
//! | `links` | [`links`] | the trusted-cluster key as before (deleted if it was created) |
//! | `labels` | [`node_labels`] | previous labels |
//! | `roles` | [`roles`] | the role keys as before |
//! | `cleanup_node` | [`cleanup_node`] | removed packages pulled back |
//!
//! What the modules share (the error type, the exec-node checks, the
//! records of what a phase changed, the mirrored node changes) is in
//! [`common`]: a mirrored pair such as `taint_node`/`untaint_node` is one
//! change and its inverse, not two copies.

pub mod bootstrap;
pub mod bootstrap_leader;
pub mod checks;
pub mod cleanup_node;
pub mod common;
pub mod config;
pub mod coredns;
pub mod docker_device;
pub mod drain;
pub mod election;
pub mod endpoints;
pub mod etcd_backup;
pub mod etcd_restart;
pub mod etcd_restart_gravity;
pub mod etcd_restore;
pub mod etcd_shutdown;
pub mod etcd_upgrade;
pub mod flannel_restart;
pub mod init;
pub mod init_leader;
pub mod kubelet_permissions;
pub mod links;
pub mod node_labels;
pub mod planet_start;
pub mod pre_update;
pub mod roles;
pub mod system_upgrade;
pub mod taint;
pub mod uncordon;
pub mod untaint;
pub mod update_app;

use std::sync::Arc;

use gravity_plan::{ExecutorRegistry, PhaseExecutor};

use crate::backend::Backends;
use crate::executors as ex;

pub use common::{ETCD_BACKUP_PATH, PhaseError};

/// A registry with an executor for every kind of [`crate::executors::ALL`].
pub fn registry(backends: Backends) -> ExecutorRegistry {
    let b = backends;
    let mut r = ExecutorRegistry::new();
    let kinds: Vec<(&str, Arc<dyn PhaseExecutor>)> = vec![
        (
            ex::UPDATE_INIT_LEADER,
            Arc::new(init_leader::InitLeader::new(b.clone())),
        ),
        (ex::UPDATE_INIT, Arc::new(init::InitNode::new(b.clone()))),
        (ex::UPDATE_CHECKS, Arc::new(checks::Checks::new(b.clone()))),
        (
            ex::PRE_UPDATE,
            Arc::new(pre_update::PreUpdate::new(b.clone())),
        ),
        (
            ex::UPDATE_BOOTSTRAP_LEADER,
            Arc::new(bootstrap_leader::BootstrapLeader::new(b.clone())),
        ),
        (
            ex::UPDATE_BOOTSTRAP,
            Arc::new(bootstrap::Bootstrap::new(b.clone())),
        ),
        (ex::COREDNS, Arc::new(coredns::CoreDns::new(b.clone()))),
        (
            ex::KUBELET_PERMISSIONS,
            Arc::new(kubelet_permissions::KubeletPermissions::new(b.clone())),
        ),
        (
            ex::ELECTION_STATUS,
            Arc::new(election::ElectionStatus::new(b.clone())),
        ),
        (ex::DRAIN_NODE, Arc::new(drain::Drain::new(b.clone()))),
        (
            ex::UPDATE_SYSTEM,
            Arc::new(system_upgrade::SystemUpgrade::new(b.clone())),
        ),
        (ex::TAINT_NODE, Arc::new(taint::TaintNode::new(b.clone()))),
        (
            ex::UNCORDON_NODE,
            Arc::new(uncordon::Uncordon::new(b.clone())),
        ),
        (
            ex::ENDPOINTS,
            Arc::new(endpoints::Endpoints::new(b.clone())),
        ),
        (
            ex::UNTAINT_NODE,
            Arc::new(untaint::UntaintNode::new(b.clone())),
        ),
        (
            ex::DEVICEMAPPER,
            Arc::new(docker_device::DockerDevice::new(
                b.clone(),
                ex::DEVICEMAPPER,
            )),
        ),
        (
            ex::FORMAT,
            Arc::new(docker_device::DockerDevice::new(b.clone(), ex::FORMAT)),
        ),
        (
            ex::MOUNT,
            Arc::new(docker_device::DockerDevice::new(b.clone(), ex::MOUNT)),
        ),
        (
            ex::PLANET_START,
            Arc::new(planet_start::PlanetStart::new(b.clone())),
        ),
        (
            ex::FLANNEL_RESTART,
            Arc::new(flannel_restart::FlannelRestart::new(b.clone())),
        ),
        (
            ex::ETCD_BACKUP,
            Arc::new(etcd_backup::EtcdBackup::new(b.clone())),
        ),
        (
            ex::ETCD_SHUTDOWN,
            Arc::new(etcd_shutdown::EtcdShutdown::new(b.clone())),
        ),
        (
            ex::ETCD_UPGRADE,
            Arc::new(etcd_upgrade::EtcdUpgrade::new(b.clone())),
        ),
        (
            ex::ETCD_RESTORE,
            Arc::new(etcd_restore::EtcdRestore::new(b.clone())),
        ),
        (
            ex::ETCD_RESTART,
            Arc::new(etcd_restart::EtcdRestart::new(b.clone())),
        ),
        (
            ex::ETCD_RESTART_GRAVITY,
            Arc::new(etcd_restart_gravity::EtcdRestartGravity::new(b.clone())),
        ),
        (ex::CONFIG, Arc::new(config::Config::new(b.clone()))),
        (
            ex::UPDATE_APP,
            Arc::new(update_app::UpdateApp::new(b.clone())),
        ),
        (ex::LINKS, Arc::new(links::Links::new(b.clone()))),
        (
            ex::LABELS,
            Arc::new(node_labels::NodeLabels::new(b.clone())),
        ),
        (ex::ROLES, Arc::new(roles::Roles::new(b.clone()))),
        (ex::CLEANUP_NODE, Arc::new(cleanup_node::Cleanup::new(b))),
    ];
    for (kind, e) in kinds {
        r.register_arc(kind, e);
    }
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn registry_covers_every_kind() {
        let d = tempfile::tempdir().unwrap();
        let sim =
            crate::sim::SimulatedCluster::init(d.path(), crate::sim::SimSpec::synthetic(1, 0))
                .unwrap();
        let r = super::registry(sim.backends());
        for k in crate::executors::ALL {
            assert!(r.contains(k), "{k}");
        }
    }
}

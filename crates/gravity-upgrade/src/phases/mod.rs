//! The upgrade phase executors: one [`gravity_plan::PhaseExecutor`] per
//! executor kind of [`crate::executors`], acting only through
//! [`Backends`].
//!
//! Every executor reads its inputs from the phase data (the structs of
//! [`crate::executors`]) and, where an undo needs to know what the
//! execution changed, keeps a record in the node-local update backend
//! ([`crate::backend::NodeSystem::record`], key `<operation>:<phase>`), so
//! that a rollback undoes exactly what this operation did and nothing
//! else. Use [`registry`] to get an [`ExecutorRegistry`] with every kind.
//!
//! Modules: [`init`] (`update_init_leader`, `update_init`), [`checks`]
//! (`update_checks`), [`hooks`] (`pre_update`, `update_app`),
//! [`bootstrap`] (`update_bootstrap_leader`, `update_bootstrap`), [`kube`]
//! (`coredns`, `kubelet_permissions`, `drain_node`, `taint_node`,
//! `untaint_node`, `uncordon_node`, `endpoints`, `labels`, `links`,
//! `roles`), [`election`] (`election_status`), [`system`]
//! (`update_system`, `devicemapper`, `format`, `mount`, `planet_start`,
//! `flannel_restart`), [`etcd`] (the six etcd kinds), [`config`]
//! (`config`), [`gc`] (`cleanup_node`).

pub mod bootstrap;
pub mod checks;
pub mod config;
pub mod election;
pub mod etcd;
pub mod gc;
pub mod hooks;
pub mod init;
pub mod kube;
pub mod system;

use std::sync::Arc;

use gravity_plan::{ExecError, ExecutorRegistry, PhaseContext, PhaseExecutor};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::{BackendError, Backends};
use crate::executors as ex;

/// Why a phase failed. Messages name the phase and the node.
#[derive(Debug, thiserror::Error)]
pub enum PhaseError {
    /// The phase's data does not match its kind.
    #[error("phase {phase:?} has invalid data for executor {kind}: {source}")]
    BadData {
        /// The phase.
        phase: String,
        /// Its kind.
        kind: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The node that must run the phase has no reachable agent.
    #[error(
        "no agent is running on node {node}, please execute phase {phase:?} locally on that node, or start the agents with \"gravity agent deploy\" and retry ({reason})"
    )]
    NoAgent {
        /// `host/ip`.
        node: String,
        /// The phase.
        phase: String,
        /// What the agent check found.
        reason: String,
    },
    /// The phase must run on a master.
    #[error("phase {phase:?} must be executed from a master node; {node} is not one")]
    NotMaster {
        /// The phase.
        phase: String,
        /// The local node.
        node: String,
    },
    /// A package the phase needs is missing.
    #[error("package {package} is not in the {store} package store; {hint}")]
    MissingPackage {
        /// The package.
        package: String,
        /// Which store (`cluster`, `node kevin-test1`).
        store: String,
        /// What to do.
        hint: String,
    },
    /// Preflight checks failed.
    #[error("The following checks failed:\n{0}")]
    ChecksFailed(String),
    /// A backend call failed.
    #[error("{what}: {source}")]
    Backend {
        /// What the phase was doing.
        what: String,
        /// The failure.
        #[source]
        source: BackendError,
    },
}

/// Adds context to backend failures.
pub(crate) trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, PhaseError>;
}

impl<T> Context<T> for Result<T, BackendError> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, PhaseError> {
        self.map_err(|source| PhaseError::Backend {
            what: what(),
            source,
        })
    }
}

impl<T> Context<T> for Result<T, gravity_pack::PackError> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, PhaseError> {
        self.map_err(|e| PhaseError::Backend {
            what: what(),
            source: BackendError::Pack(e),
        })
    }
}

/// The phase's data as `T`.
pub(crate) fn data<T: DeserializeOwned>(ctx: &PhaseContext) -> Result<T, PhaseError> {
    ex::decode(ctx.phase()).map_err(|source| PhaseError::BadData {
        phase: ctx.path().to_string(),
        kind: ctx.phase().executor.clone().unwrap_or_default(),
        source,
    })
}

/// The record key of this phase in this operation.
pub(crate) fn record_key(ctx: &PhaseContext) -> String {
    format!("{}:{}", ctx.plan().header().operation_id, ctx.path())
}

/// Loads the phase's record from `node`.
pub(crate) async fn load<T: DeserializeOwned>(
    b: &Backends,
    ctx: &PhaseContext,
    node: &str,
) -> Result<Option<T>, PhaseError> {
    let key = record_key(ctx);
    let v = b.nodes.record(node, &key).await.ctx(|| {
        format!(
            "cannot read the record of phase {} on node {node}",
            ctx.path()
        )
    })?;
    match v {
        None => Ok(None),
        Some(v) => serde_json::from_value(v)
            .map(Some)
            .map_err(|e| PhaseError::Backend {
                what: format!(
                    "the record of phase {} on node {node} is damaged",
                    ctx.path()
                ),
                source: BackendError::Corrupt(e.to_string()),
            }),
    }
}

/// Saves (or with `None` deletes) the phase's record on `node`.
pub(crate) async fn save<T: Serialize>(
    b: &Backends,
    ctx: &PhaseContext,
    node: &str,
    value: Option<&T>,
) -> Result<(), PhaseError> {
    let key = record_key(ctx);
    let v = value.map(|v| serde_json::to_value(v).expect("record serializes"));
    b.nodes.put_record(node, &key, v.as_ref()).await.ctx(|| {
        format!(
            "cannot write the record of phase {} on node {node}",
            ctx.path()
        )
    })
}

/// Fails if a simulated fault says this phase fails.
pub(crate) async fn gate(
    b: &Backends,
    ctx: &PhaseContext,
    node: Option<&str>,
) -> Result<(), PhaseError> {
    if let Some(g) = &b.gate {
        g.before_execute(ctx.path().as_str(), node)
            .await
            .ctx(|| format!("phase {}", ctx.path()))?;
    }
    Ok(())
}

/// Gravity's CheckServer: the node must have a reachable agent.
pub(crate) async fn check_server(
    b: &Backends,
    ctx: &PhaseContext,
    hostname: &str,
    addr: &str,
) -> Result<(), PhaseError> {
    if b.local_node.as_deref() == Some(hostname) {
        return Ok(());
    }
    let reason = match b.nodes.agent_running(hostname).await {
        Ok(true) => return Ok(()),
        Ok(false) => "the agent is not running".to_string(),
        Err(e) => e.to_string(),
    };
    Err(PhaseError::NoAgent {
        node: format!("{hostname}/{addr}"),
        phase: ctx.path().to_string(),
        reason,
    })
}

/// Gravity's CheckMasterServer: the local node (when known) must be a master.
pub(crate) async fn check_master(b: &Backends, ctx: &PhaseContext) -> Result<(), PhaseError> {
    let Some(local) = &b.local_node else {
        return Ok(());
    };
    let node = b.kube.node(local).await.ctx(|| {
        format!(
            "phase {:?} must be run from a master node (requires kubernetes client)",
            ctx.path().as_str()
        )
    })?;
    let master = node
        .labels
        .get("gravitational.io/k8s-role")
        .map(String::as_str)
        == Some("master");
    if !master {
        return Err(PhaseError::NotMaster {
            phase: ctx.path().to_string(),
            node: local.clone(),
        });
    }
    Ok(())
}

/// The host name the phase runs on (its exec node or node).
pub(crate) fn run_node(ctx: &PhaseContext) -> Option<(String, String)> {
    ctx.phase()
        .run_node()
        .map(|n| (n.hostname.clone(), n.addr.clone()))
}

/// Pre-check of phases that run on a node: its agent must answer.
pub(crate) async fn check_run_node(b: &Backends, ctx: &PhaseContext) -> Result<(), PhaseError> {
    match run_node(ctx) {
        Some((h, a)) => check_server(b, ctx, &h, &a).await,
        None => Ok(()),
    }
}

/// Boxes a phase error for the engine.
pub(crate) fn boxed(e: PhaseError) -> ExecError {
    Box::new(e)
}

/// A registry with an executor for every kind of [`crate::executors::ALL`].
pub fn registry(backends: Backends) -> ExecutorRegistry {
    let mut r = ExecutorRegistry::new();
    let b = backends;
    let mut add = |kind: &str, e: Arc<dyn PhaseExecutor>| r.register_arc(kind, e);
    add(
        ex::UPDATE_INIT_LEADER,
        Arc::new(init::InitLeader::new(b.clone())),
    );
    add(ex::UPDATE_INIT, Arc::new(init::InitNode::new(b.clone())));
    add(ex::UPDATE_CHECKS, Arc::new(checks::Checks::new(b.clone())));
    add(ex::PRE_UPDATE, Arc::new(hooks::PreUpdate::new(b.clone())));
    add(ex::UPDATE_APP, Arc::new(hooks::UpdateApp::new(b.clone())));
    add(
        ex::UPDATE_BOOTSTRAP_LEADER,
        Arc::new(bootstrap::BootstrapLeader::new(b.clone())),
    );
    add(
        ex::UPDATE_BOOTSTRAP,
        Arc::new(bootstrap::Bootstrap::new(b.clone())),
    );
    add(ex::COREDNS, Arc::new(kube::CoreDns::new(b.clone())));
    add(
        ex::KUBELET_PERMISSIONS,
        Arc::new(kube::KubeletPermissions::new(b.clone())),
    );
    add(
        ex::ELECTION_STATUS,
        Arc::new(election::ElectionStatus::new(b.clone())),
    );
    add(ex::DRAIN_NODE, Arc::new(kube::Drain::new(b.clone())));
    add(ex::TAINT_NODE, Arc::new(kube::TaintNode::new(b.clone())));
    add(
        ex::UNTAINT_NODE,
        Arc::new(kube::UntaintNode::new(b.clone())),
    );
    add(ex::UNCORDON_NODE, Arc::new(kube::Uncordon::new(b.clone())));
    add(ex::ENDPOINTS, Arc::new(kube::Endpoints::new(b.clone())));
    add(ex::LABELS, Arc::new(kube::NodeLabels::new(b.clone())));
    add(ex::LINKS, Arc::new(kube::Links::new(b.clone())));
    add(ex::ROLES, Arc::new(kube::Roles::new(b.clone())));
    add(
        ex::UPDATE_SYSTEM,
        Arc::new(system::SystemUpgrade::new(b.clone())),
    );
    for kind in [ex::DEVICEMAPPER, ex::FORMAT, ex::MOUNT] {
        add(kind, Arc::new(system::DockerDevice::new(b.clone(), kind)));
    }
    add(
        ex::PLANET_START,
        Arc::new(system::PlanetStart::new(b.clone())),
    );
    add(
        ex::FLANNEL_RESTART,
        Arc::new(system::FlannelRestart::new(b.clone())),
    );
    for kind in [
        ex::ETCD_BACKUP,
        ex::ETCD_SHUTDOWN,
        ex::ETCD_UPGRADE,
        ex::ETCD_RESTORE,
        ex::ETCD_RESTART,
        ex::ETCD_RESTART_GRAVITY,
    ] {
        add(kind, Arc::new(etcd::EtcdPhase::new(b.clone(), kind)));
    }
    add(ex::CONFIG, Arc::new(config::Config::new(b.clone())));
    add(ex::CLEANUP_NODE, Arc::new(gc::Cleanup::new(b)));
    r
}

/// Declares an executor struct holding the backends.
macro_rules! executor_struct {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone)]
        pub struct $name {
            b: $crate::backend::Backends,
        }
        impl $name {
            /// The executor over `backends`.
            pub fn new(backends: $crate::backend::Backends) -> Self {
                $name { b: backends }
            }
        }
    };
}
pub(crate) use executor_struct;

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

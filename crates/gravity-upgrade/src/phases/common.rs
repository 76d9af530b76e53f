//! What every phase module shares: the phase error, backend error context,
//! phase data decoding, the exec-node checks (Gravity's CheckServer and
//! CheckMasterServer), the simulated-fault gate, and the records a phase
//! keeps of what it changed so that its rollback undoes exactly that:
//!
//! - `note_change` / `take_change`: "this phase changed the node"
//!   (cordon, taint, runtime start, etcd shutdown);
//! - `note_created` / `delete_created`: Kubernetes objects this phase
//!   created;
//! - `remember_first` / `load_first`: the value each key had before
//!   this phase first changed it (node labels, election flags, etcd keys);
//! - `put_keys` / `restore_keys`: etcd keys written with their
//!   previous values kept.
//!
//! Records live in the node-local update backend
//! ([`crate::backend::NodeSystem::record`]) under `<operation>:<phase>`.
//! The mirrored kinds (drain/uncordon, taint/untaint) are one
//! `NodeChange` and its `NodeChange::inverse`, run by
//! `change_node` and undone by `undo_node_change`.

use std::collections::BTreeMap;

use gravity_plan::PhaseContext;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::backend::{BackendError, Backends, Created, EtcdAddress, Taint};
use crate::cluster::ClusterNode;
use crate::executors::{self as ex, NodeData};

/// Why a phase failed. Messages name the phase and the node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
        self.map_err(BackendError::Pack).ctx(what)
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

// ---------------------------------------------------------------------------
// Where a phase runs
// ---------------------------------------------------------------------------

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

/// The host name and address the phase runs on (its exec node or node).
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

/// The record node of a phase acting on `server`: where the phase runs,
/// else `server`.
pub(crate) fn rec_node(ctx: &PhaseContext, server: &ClusterNode) -> String {
    run_node(ctx)
        .map(|(h, _)| h)
        .unwrap_or_else(|| server.hostname.clone())
}

/// The Kubernetes node name of `server`.
pub(crate) fn kube_name(server: &ClusterNode) -> String {
    server
        .nodename
        .clone()
        .unwrap_or_else(|| server.hostname.clone())
}

// ---------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------

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
    let what = |verb: &str| format!("the record of phase {} on node {node} {verb}", ctx.path());
    let v = b
        .nodes
        .record(node, &key)
        .await
        .ctx(|| what("cannot be read"))?;
    v.map(serde_json::from_value)
        .transpose()
        .map_err(|e| BackendError::Corrupt(e.to_string()))
        .ctx(|| what("is damaged"))
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

/// Deletes the phase's record on `node`.
pub(crate) async fn clear(b: &Backends, ctx: &PhaseContext, node: &str) -> Result<(), PhaseError> {
    save::<()>(b, ctx, node, None).await
}

/// A boolean record: "this phase changed the node". (Older records named
/// the flag after what changed.)
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Changed {
    #[serde(alias = "was_running", alias = "started")]
    changed: bool,
}

/// Records that this phase changed something on `node` (once changed,
/// the record stays changed across re-executions).
pub(crate) async fn note_change(
    b: &Backends,
    ctx: &PhaseContext,
    node: &str,
    changed: bool,
) -> Result<(), PhaseError> {
    let prev: Changed = load(b, ctx, node).await?.unwrap_or_default();
    let changed = prev.changed || changed;
    save(b, ctx, node, Some(&Changed { changed })).await
}

/// Whether this phase changed something on `node`; forgets the record.
pub(crate) async fn take_change(
    b: &Backends,
    ctx: &PhaseContext,
    node: &str,
) -> Result<bool, PhaseError> {
    let c: Option<Changed> = load(b, ctx, node).await?;
    if c.is_some() {
        clear(b, ctx, node).await?;
    }
    Ok(c.is_some_and(|c| c.changed))
}

/// Adds objects this phase created to its record on `node`.
pub(crate) async fn note_created(
    b: &Backends,
    ctx: &PhaseContext,
    node: &str,
    new: Created,
) -> Result<(), PhaseError> {
    let mut c: Created = load(b, ctx, node).await?.unwrap_or_default();
    for o in new.objects {
        if !c.objects.contains(&o) {
            c.objects.push(o);
        }
    }
    save(b, ctx, node, Some(&c)).await
}

/// Deletes the objects this phase created and forgets them.
pub(crate) async fn delete_created(
    b: &Backends,
    ctx: &PhaseContext,
    node: &str,
) -> Result<(), PhaseError> {
    if let Some(c) = load::<Created>(b, ctx, node).await? {
        b.kube
            .delete_objects(&c.objects)
            .await
            .ctx(|| format!("failed to delete {}", c.objects.join(", ")))?;
        clear(b, ctx, node).await?;
    }
    Ok(())
}

/// Adds to the phase's record on `node` the value each key had before
/// the phase first changed it: a key already recorded keeps its first
/// value, so a re-execution never forgets the original.
pub(crate) async fn remember_first<V: Serialize + DeserializeOwned>(
    b: &Backends,
    ctx: &PhaseContext,
    node: &str,
    key: String,
    old: V,
) -> Result<(), PhaseError> {
    let mut prev: BTreeMap<String, V> = load(b, ctx, node).await?.unwrap_or_default();
    if let std::collections::btree_map::Entry::Vacant(e) = prev.entry(key) {
        e.insert(old);
        save(b, ctx, node, Some(&prev)).await?;
    }
    Ok(())
}

/// The values recorded by [`remember_first`], if any.
pub(crate) async fn load_first<V: DeserializeOwned>(
    b: &Backends,
    ctx: &PhaseContext,
    node: &str,
) -> Result<Option<BTreeMap<String, V>>, PhaseError> {
    load(b, ctx, node).await
}

/// Writes etcd keys, keeping in the phase's record on the
/// [`coordinator`] the value each key had before the phase first wrote
/// it: `null` for a key that did not exist, the value otherwise (an
/// existing empty value is kept as `""`, not as absent).
pub(crate) async fn put_keys(
    b: &Backends,
    ctx: &PhaseContext,
    writes: &BTreeMap<String, String>,
) -> Result<(), PhaseError> {
    let node = &coordinator(b, ctx).await?;
    for (key, value) in writes {
        let old = b.etcd.get(key).await.ctx(|| format!("cannot read {key}"))?;
        remember_first(b, ctx, node, key.clone(), old).await?;
        b.etcd
            .put(key, value)
            .await
            .ctx(|| format!("cannot write {key}"))?;
    }
    Ok(())
}

/// Puts back the etcd keys written by [`put_keys`] and forgets them: a key
/// that existed gets its previous value back, exactly; a key that did not
/// exist is deleted.
///
/// The record's format is the one earlier versions wrote (a map from key
/// to previous value or `null`). Those versions also recorded an existing
/// empty value as `null` and emptied such keys instead of deleting them;
/// an empty value meant "absent" to the migrations, so deleting the key
/// now undoes their records just as well.
pub(crate) async fn restore_keys(b: &Backends, ctx: &PhaseContext) -> Result<(), PhaseError> {
    let node = &coordinator(b, ctx).await?;
    let Some(prev) = load_first::<Option<String>>(b, ctx, node).await? else {
        return Ok(());
    };
    for (key, old) in &prev {
        match old {
            Some(old) => b
                .etcd
                .put(key, old)
                .await
                .ctx(|| format!("cannot restore {key}"))?,
            None => {
                b.etcd
                    .delete(key)
                    .await
                    .ctx(|| format!("cannot delete {key}"))?;
            }
        }
    }
    clear(b, ctx, node).await
}

// ---------------------------------------------------------------------------
// Node scheduling changes: drain/uncordon, taint/untaint
// ---------------------------------------------------------------------------

/// A change of a Kubernetes node that reports whether it changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeChange {
    /// Mark unschedulable.
    Cordon,
    /// Mark schedulable.
    Uncordon,
    /// Add the runlevel taint.
    Taint,
    /// Remove the runlevel taint.
    Untaint,
}

impl NodeChange {
    /// The change that undoes this one.
    pub(crate) fn inverse(self) -> Self {
        match self {
            NodeChange::Cordon => NodeChange::Uncordon,
            NodeChange::Uncordon => NodeChange::Cordon,
            NodeChange::Taint => NodeChange::Untaint,
            NodeChange::Untaint => NodeChange::Taint,
        }
    }

    /// Applies the change; returns whether the node changed.
    pub(crate) async fn apply(
        self,
        b: &Backends,
        server: &ClusterNode,
    ) -> Result<bool, PhaseError> {
        let name = kube_name(server);
        let t = Taint::runlevel_system();
        match self {
            NodeChange::Cordon => b.kube.cordon(&name).await,
            NodeChange::Uncordon => b.kube.uncordon(&name).await,
            NodeChange::Taint => b.kube.add_taint(&name, &t).await,
            NodeChange::Untaint => b.kube.remove_taint(&name, &t).await,
        }
        .ctx(|| match self {
            NodeChange::Cordon => format!("failed to cordon node {}", server.display()),
            NodeChange::Uncordon => format!("failed to uncordon node {}", server.display()),
            NodeChange::Taint => format!("failed to add taint {t} to node {:?}", server.hostname),
            NodeChange::Untaint => {
                format!("failed to remove taint {t} from node {:?}", server.hostname)
            }
        })
    }
}

/// Executes `change` on the phase's node and records whether it changed
/// it; returns the phase data.
pub(crate) async fn change_node(
    b: &Backends,
    ctx: &PhaseContext,
    change: NodeChange,
) -> Result<NodeData, PhaseError> {
    let d = gated_node_data(b, ctx).await?;
    let changed = change.apply(b, &d.server).await?;
    note_change(b, ctx, &rec_node(ctx, &d.server), changed).await?;
    Ok(d)
}

/// Undoes `change` (applies its inverse) if this phase made it.
pub(crate) async fn undo_node_change(
    b: &Backends,
    ctx: &PhaseContext,
    change: NodeChange,
) -> Result<(), PhaseError> {
    let d: NodeData = data(ctx)?;
    if take_change(b, ctx, &rec_node(ctx, &d.server)).await? {
        change.inverse().apply(b, &d.server).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// etcd members and gravity-site
// ---------------------------------------------------------------------------

/// Where the etcd backup is written on each master (Gravity's default path).
pub const ETCD_BACKUP_PATH: &str = "/var/lib/gravity/site/update/etcd.bak";

/// Deletes the gravity-site pods (their DaemonSet recreates them).
pub(crate) async fn restart_gravity_site(b: &Backends) -> Result<usize, PhaseError> {
    let selector = BTreeMap::from([("app".to_string(), "gravity-site".to_string())]);
    b.kube
        .delete_pods("kube-system", &selector)
        .await
        .ctx(|| "failed to restart gravity-site".into())
}

/// Stops the etcd member of `node` if it has one, then starts etcd at
/// `address`. A node without a member (a worker's etcd proxy) is reset
/// only with `reset_proxy`.
pub(crate) async fn restart_etcd(
    b: &Backends,
    node: &str,
    address: EtcdAddress,
    reset_proxy: bool,
) -> Result<(), PhaseError> {
    let member = b
        .etcd
        .member(node)
        .await
        .ctx(|| format!("etcd on node {node}"))?;
    if member.is_some() {
        b.etcd
            .shutdown(node)
            .await
            .ctx(|| format!("failed to stop etcd on node {node}"))?;
    } else if !reset_proxy {
        return Ok(());
    }
    b.etcd
        .start(node, address)
        .await
        .ctx(|| format!("failed to start etcd on node {node}"))?;
    Ok(())
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

/// Declares the executor of a kind that is one [`NodeChange`]: executed on
/// the phase's node (recording whether it changed it), rolled back by the
/// inverse change if it did; it runs on a master.
macro_rules! node_change_executor {
    ($(#[$m:meta])* $name:ident, $change:expr) => {
        $crate::phases::common::executor_struct!($(#[$m])* $name);

        #[async_trait::async_trait]
        impl gravity_plan::PhaseExecutor for $name {
            async fn pre_check(
                &self,
                ctx: &gravity_plan::PhaseContext,
            ) -> Result<(), gravity_plan::ExecError> {
                Ok($crate::phases::common::check_master(&self.b, ctx).await?)
            }

            async fn execute(
                &self,
                ctx: &gravity_plan::PhaseContext,
            ) -> Result<(), gravity_plan::ExecError> {
                $crate::phases::common::change_node(&self.b, ctx, $change).await?;
                Ok(())
            }

            async fn rollback(
                &self,
                ctx: &gravity_plan::PhaseContext,
            ) -> Result<(), gravity_plan::ExecError> {
                Ok($crate::phases::common::undo_node_change(&self.b, ctx, $change).await?)
            }
        }
    };
}
pub(crate) use node_change_executor;

/// Executes a phase that creates Kubernetes objects if absent: `create`
/// (not started before the fault gate passes) returns what it created,
/// which is recorded for the rollback ([`delete_created`]); `what` names
/// the step in errors.
pub(crate) async fn create_objects(
    b: &Backends,
    ctx: &PhaseContext,
    what: &str,
    create: impl Future<Output = crate::backend::BackendResult<Created>>,
) -> Result<(), PhaseError> {
    let d = gated_node_data(b, ctx).await?;
    let c = create.await.ctx(|| what.to_string())?;
    for o in &c.objects {
        ctx.info(format!("created {o}"));
    }
    note_created(b, ctx, &rec_node(ctx, &d.server), c).await
}

/// Rolls back a phase of [`create_objects`].
pub(crate) async fn delete_created_objects(
    b: &Backends,
    ctx: &PhaseContext,
) -> Result<(), PhaseError> {
    let d: NodeData = data(ctx)?;
    delete_created(b, ctx, &rec_node(ctx, &d.server)).await
}

/// The node that keeps the record of a phase run on the coordinator: the
/// phase's node, else the local node, else the first master.
pub(crate) async fn coordinator(b: &Backends, ctx: &PhaseContext) -> Result<String, PhaseError> {
    if let Some((h, _)) = run_node(ctx) {
        return Ok(h);
    }
    if let Some(h) = &b.local_node {
        return Ok(h.clone());
    }
    let nodes = b
        .kube
        .nodes()
        .await
        .ctx(|| "failed to list the cluster nodes".into())?;
    let master = |n: &&crate::backend::NodeInfo| {
        n.labels
            .get("gravitational.io/k8s-role")
            .map(String::as_str)
            == Some("master")
    };
    nodes
        .iter()
        .find(master)
        .or(nodes.first())
        .map(|n| n.name.clone())
        .ok_or_else(|| PhaseError::Backend {
            what: format!("phase {}", ctx.path()),
            source: BackendError::Other("the cluster has no nodes".into()),
        })
}

/// The data of a phase acting on one node ([`NodeData`]), once the fault
/// gate of that node passed.
pub(crate) async fn gated_node_data(
    b: &Backends,
    ctx: &PhaseContext,
) -> Result<NodeData, PhaseError> {
    let d: NodeData = data(ctx)?;
    gate(b, ctx, Some(&d.server.hostname)).await?;
    Ok(d)
}

/// The data of an etcd phase, once the fault gate of its node passed.
pub(crate) async fn gated_etcd_data(
    b: &Backends,
    ctx: &PhaseContext,
) -> Result<crate::executors::EtcdData, PhaseError> {
    let d: crate::executors::EtcdData = data(ctx)?;
    gate(b, ctx, Some(&d.server.hostname)).await?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::TimeZone;
    use gravity_plan::{Engine, EngineConfig, MemoryStore, PhasePath, PlanStore};
    use serde_json::json;

    use crate::backend::{Etcd, NodeSystem};
    use crate::phases::links::TRUSTED_CLUSTERS;
    use crate::phases::roles::ROLES;
    use crate::sim::{SimSpec, SimulatedCluster};
    use crate::{BuildOptions, Cluster, ClusterImage, build_plan};

    const OP: &str = "7c4b1e52-0000-4000-8000-0000000000d1";

    fn p(s: &str) -> PhasePath {
        s.parse().unwrap()
    }

    /// The `links` and `roles` migrations of the seed cluster with an Ops
    /// Center link and a role in the old format, run one phase at a time.
    async fn migrations() -> (tempfile::TempDir, SimulatedCluster, Engine) {
        let d = tempfile::tempdir().unwrap();
        let mut cluster = Cluster::seed();
        cluster.ops_center_links = vec!["https://ops.example.com:32009".into()];
        cluster.legacy_role_rules = true;
        let sim = SimulatedCluster::init(d.path(), SimSpec::for_cluster(cluster.clone())).unwrap();
        sim.deploy_agents().unwrap();
        let opts =
            BuildOptions::deterministic(OP, chrono::Utc.timestamp_opt(1_596_339_382, 0).unwrap());
        let plan = build_plan(&cluster, &ClusterImage::seed_target(), &opts)
            .unwrap()
            .into_plan();
        let store: Arc<dyn PlanStore> = Arc::new(MemoryStore::new());
        store.create_operation(&plan).await.unwrap();
        let engine = Engine::open(
            store,
            &plan.operation_id,
            EngineConfig::new(crate::phases::registry(sim.backends())),
        )
        .await
        .unwrap();
        (d, sim, engine)
    }

    /// What the phase's record on the coordinator (the first master) holds.
    async fn record(sim: &SimulatedCluster, phase: &str) -> Option<serde_json::Value> {
        sim.record("kevin-test1", &format!("{OP}:{phase}"))
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migration_rollbacks_delete_created_keys_and_restore_the_others_exactly() {
        let (_d, sim, engine) = migrations().await;
        let tc = format!("{TRUSTED_CLUSTERS}ops.example.com");
        let role = format!("{ROLES}@teleadmin");
        let before = sim.inspect().unwrap().etcd_data;
        assert!(!before.contains_key(&tc));
        assert!(before[&role].contains("assignKubernetesGroups"));

        for phase in ["/migration/links", "/migration/roles"] {
            engine.execute(&p(phase), true).await.unwrap();
        }
        let after = sim.inspect().unwrap().etcd_data;
        assert!(after[&tc].contains("ops.example.com:32009"));
        assert!(!after[&role].contains("assignKubernetesGroups"));
        // The records keep an absent key as null, a present one by value
        // (the format earlier versions wrote and read).
        assert_eq!(
            record(&sim, "/migration/links").await,
            Some(json!({ (tc.clone()): null }))
        );
        assert_eq!(
            record(&sim, "/migration/roles").await,
            Some(json!({ (role.clone()): before[&role] }))
        );

        for phase in ["/migration/roles", "/migration/links"] {
            engine.rollback(&p(phase), true).await.unwrap();
        }
        // No key left behind, the role as it was, byte for byte.
        assert_eq!(sim.inspect().unwrap().etcd_data, before);
        assert_eq!(sim.get(&tc).await.unwrap(), None);
        assert!(sim.list(TRUSTED_CLUSTERS).await.unwrap().is_empty());
        assert_eq!(record(&sim, "/migration/links").await, None);
        assert_eq!(record(&sim, "/migration/roles").await, None);
        // ... durably: a new process reads the same keys.
        let reopened = SimulatedCluster::open(sim.state_dir()).unwrap();
        assert_eq!(reopened.inspect().unwrap().etcd_data, before);

        // A key that existed with an empty value is not "absent": the
        // rollback puts the empty value back instead of deleting it.
        sim.put(&tc, "").await.unwrap();
        engine.execute(&p("/migration/links"), true).await.unwrap();
        assert_eq!(
            record(&sim, "/migration/links").await,
            Some(json!({ (tc.clone()): "" }))
        );
        engine.rollback(&p("/migration/links"), true).await.unwrap();
        assert_eq!(sim.get(&tc).await.unwrap().as_deref(), Some(""));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn simulated_etcd_delete_reports_whether_the_key_existed() {
        let (_d, sim, _engine) = migrations().await;
        sim.put("/gravity/local/x", "1").await.unwrap();
        assert!(sim.delete("/gravity/local/x").await.unwrap());
        assert!(!sim.delete("/gravity/local/x").await.unwrap());
        assert_eq!(sim.get("/gravity/local/x").await.unwrap(), None);
        let reopened = SimulatedCluster::open(sim.state_dir()).unwrap();
        assert_eq!(reopened.get("/gravity/local/x").await.unwrap(), None);
    }
}

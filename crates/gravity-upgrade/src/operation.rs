//! The upgrade operation's lifecycle on a cluster kept in a state
//! directory: find the uploaded target, gate and preflight, create the
//! operation with its plan, deploy agents, and finish (complete or roll
//! back) the operation, which puts the cluster back to `active`.
//!
//! The cluster is the simulated one ([`SimulatedCluster`]); its backends
//! are what the phases act on. Plans and their changelogs live in the
//! durable [`FileStore`] at `<state-dir>/plan`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use gravity_pack::location::StoreSelector;
use gravity_pack::{PackageStore, PackageType};
use gravity_plan::{
    Action, Actor, Dispatcher, ExecError, ExecutorRegistry, FileStore, Location, OperationState,
    Phase, PhaseContext, PhaseExecutor, PlanStore, StoreError, run_local,
};

use crate::backend::{BackendError, Backends};
use crate::builder::{BuildOptions, build_plan};
use crate::cluster::{ClusterOperation, ClusterState, OperationKind, OperationStatus};
use crate::error::{BuildError, UpgradeRefused};
use crate::health::{HealthLog, ProbeReport, TimedEvent};
use crate::image::{ClusterImage, parse_image_manifest};
use crate::sim::SimulatedCluster;

/// Why a lifecycle step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError {
    /// The state directory holds no cluster.
    #[error("no cluster in {0}; create a simulated one with \"gravity sim init\"")]
    NoCluster(String),
    /// Nothing newer than the installed application was uploaded.
    #[error(
        "no upgrade image uploaded: the cluster store has no {app} newer than {installed}; upload one with \"gravity upload IMAGE\""
    )]
    NoTarget {
        /// Application repository/name.
        app: String,
        /// Installed version.
        installed: String,
    },
    /// The uploaded application package does not describe its image.
    #[error(
        "the uploaded application {0} does not describe its cluster image (no gravity-rs image manifest); build the image with this gravity"
    )]
    NoDescription(String),
    /// The cluster may not start an upgrade now.
    #[error(transparent)]
    Refused(#[from] UpgradeRefused),
    /// Preflight checks failed.
    #[error(
        "The upgrade is prohibited because some preflight checks failed:\n{0}Fix the problems and run the upgrade again."
    )]
    Preflight(String),
    /// The plan could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The plan store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A package store failed.
    #[error(transparent)]
    Pack(#[from] gravity_pack::PackError),
}

/// How to start an upgrade.
#[derive(Debug, Clone, Default)]
pub struct UpgradeOptions {
    /// Skip the last-operation gate and turn failed preflight checks other
    /// than unreachable nodes into warnings.
    pub force: bool,
    /// Workers upgraded at once.
    pub parallel_workers: usize,
}

/// A started upgrade.
#[derive(Debug, Clone)]
pub struct StartedUpgrade {
    /// The operation id.
    pub operation_id: String,
    /// Installed application version.
    pub from: String,
    /// Target application version.
    pub to: String,
}

/// A cluster in a state directory with its plan store.
#[derive(Clone)]
pub struct Site {
    state_dir: PathBuf,
    sim: SimulatedCluster,
    plans: Arc<dyn PlanStore>,
    overrides: BackendOverrides,
}

/// Real backends that replace the simulated cluster's (Kubernetes through
/// kube-rs, etcd and leader election on a real etcd) and a plan store that
/// replaces the state directory's (the cluster-wide store in etcd). What is
/// not overridden stays simulated.
#[derive(Clone, Default)]
pub struct BackendOverrides {
    /// Kubernetes.
    pub kube: Option<Arc<dyn crate::backend::Kubernetes>>,
    /// etcd members and keys.
    pub etcd: Option<Arc<dyn crate::backend::Etcd>>,
    /// Leader election.
    pub election: Option<Arc<dyn crate::backend::Election>>,
    /// The plan store.
    pub plans: Option<Arc<dyn PlanStore>>,
    /// Waits and limits (real clusters need Gravity's, not the simulation's).
    pub timing: Option<crate::backend::Timing>,
}

impl BackendOverrides {
    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        self.kube.is_none()
            && self.etcd.is_none()
            && self.election.is_none()
            && self.plans.is_none()
            && self.timing.is_none()
    }
}

impl std::fmt::Debug for BackendOverrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendOverrides")
            .field("kube", &self.kube.is_some())
            .field("etcd", &self.etcd.is_some())
            .field("election", &self.election.is_some())
            .field("plans", &self.plans.is_some())
            .field("timing", &self.timing)
            .finish()
    }
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site")
            .field("state_dir", &self.state_dir)
            .finish()
    }
}

/// The plan store of a state directory.
pub fn plan_store(state_dir: &Path) -> Result<Arc<dyn PlanStore>, StoreError> {
    Ok(Arc::new(FileStore::open(state_dir.join("plan"))?))
}

impl Site {
    /// Opens the cluster of a state directory.
    pub fn open(state_dir: &Path) -> Result<Site, LifecycleError> {
        Site::open_with(state_dir, BackendOverrides::default())
    }

    /// Opens the cluster of a state directory with some backends (and the
    /// plan store) replaced by real ones.
    pub fn open_with(
        state_dir: &Path,
        overrides: BackendOverrides,
    ) -> Result<Site, LifecycleError> {
        if !state_dir.join("sim/cluster.json").exists() {
            return Err(LifecycleError::NoCluster(state_dir.display().to_string()));
        }
        let plans = match &overrides.plans {
            Some(p) => p.clone(),
            None => plan_store(state_dir)?,
        };
        Ok(Site {
            state_dir: state_dir.to_path_buf(),
            sim: SimulatedCluster::open(state_dir)?,
            plans,
            overrides,
        })
    }

    /// The simulated cluster.
    pub fn sim(&self) -> &SimulatedCluster {
        &self.sim
    }

    /// The plan store.
    pub fn plans(&self) -> Arc<dyn PlanStore> {
        self.plans.clone()
    }

    /// The node this process acts as: the first master (the lead master
    /// that drives the upgrade).
    pub fn local_node(&self) -> Result<String, LifecycleError> {
        let cluster = self.sim.cluster()?;
        Ok(cluster
            .nodes
            .iter()
            .find(|n| n.is_master())
            .map(|n| n.hostname.clone())
            .unwrap_or_default())
    }

    /// Backends acting on the cluster, as the local node.
    pub fn backends(&self) -> Result<Backends, LifecycleError> {
        let mut b = self.sim.backends();
        let o = &self.overrides;
        if let Some(k) = &o.kube {
            b.kube = k.clone();
        }
        if let Some(e) = &o.etcd {
            b.etcd = e.clone();
        }
        if let Some(e) = &o.election {
            b.election = e.clone();
        }
        if let Some(t) = &o.timing {
            b.timing = t.clone();
        }
        b.local_node = Some(self.local_node()?);
        Ok(b)
    }

    /// Every upgrade phase kind, plus the built-in `command` and `noop`.
    pub fn registry(&self) -> Result<ExecutorRegistry, LifecycleError> {
        let mut r = crate::phases::registry(self.backends()?);
        r.register("command", gravity_plan::CommandExecutor);
        r.register("noop", gravity_plan::NoopExecutor);
        Ok(r)
    }

    /// Where phases run: locally on the lead master, or through the agent
    /// of their node.
    pub fn dispatcher(&self) -> Result<Arc<dyn Dispatcher>, LifecycleError> {
        Ok(Arc::new(AgentDispatcher {
            local: self.local_node()?,
        }))
    }

    /// The uploaded target image: the newest version of the installed
    /// application in the cluster store, if newer than the installed one.
    pub fn target(&self) -> Result<ClusterImage, LifecycleError> {
        let cluster = self.sim.cluster()?;
        let app = &cluster.installed.app;
        let backends = self.sim.backends();
        let latest = backends.packages.with(&StoreSelector::Cluster, |s| {
            let envs = s.list(Some(app.repository()))?;
            Ok(envs
                .into_iter()
                .filter(|e| {
                    e.locator.name() == app.name()
                        && e.package_type == PackageType::User
                        && e.locator.version() > app.version()
                })
                .max_by(|a, b| a.locator.version().cmp(b.locator.version())))
        })?;
        let Some(env) = latest else {
            return Err(LifecycleError::NoTarget {
                app: format!("{}/{}", app.repository(), app.name()),
                installed: app.version().to_string(),
            });
        };
        env.manifest
            .as_deref()
            .and_then(parse_image_manifest)
            .ok_or_else(|| LifecycleError::NoDescription(env.locator.to_string()))
    }

    /// Runs the health probes (the preflight checks, agents not required)
    /// and records them in the state directory's [`HealthLog`], whose
    /// history `gravity status history` shows.
    pub async fn probe_health(&self) -> Result<ProbeReport, LifecycleError> {
        self.probe_health_with(&self.backends()?).await
    }

    async fn probe_health_with(&self, backends: &Backends) -> Result<ProbeReport, LifecycleError> {
        let report = crate::phases::checks::probe(backends, false)
            .await
            .map_err(|e| LifecycleError::Preflight(format!("\t[×] {e}\n")))?;
        HealthLog::new(&self.state_dir)
            .record(&report)
            .map_err(BackendError::io(format!(
                "cannot record the probe results in {}",
                self.state_dir.join("status").display()
            )))?;
        Ok(report)
    }

    /// The health events recorded in the state directory, oldest first.
    pub fn health_history(&self) -> Result<Vec<TimedEvent>, LifecycleError> {
        HealthLog::new(&self.state_dir)
            .events()
            .map_err(|e| BackendError::io("cannot read the health history".to_string())(e).into())
    }

    /// Starts an upgrade: gate, preflight checks, plan, operation, agents.
    /// `step` receives the seed's progress lines. Nothing changes if the
    /// gate or the checks refuse.
    pub async fn start_upgrade(
        &self,
        opts: &UpgradeOptions,
        step: &mut (dyn FnMut(String) + Send),
    ) -> Result<StartedUpgrade, LifecycleError> {
        let mut cluster = self.sim.cluster()?;
        cluster.check_upgrade_allowed(opts.force)?;
        let target = self.target()?;
        let from = cluster.installed.app.version().to_string();
        let to = target.app.version().to_string();
        let backends = self.backends()?;
        let failed = self.probe_health_with(&backends).await?.failures();
        let (blocking, warnings): (Vec<String>, Vec<String>) = failed
            .into_iter()
            .partition(|f| !opts.force || f.contains("unreachable") || f.contains("not ready"));
        if !blocking.is_empty() {
            return Err(LifecycleError::Preflight(
                blocking.iter().map(|f| format!("\t[×] {f}\n")).collect(),
            ));
        }
        for w in warnings {
            step(format!("WARNING: {w} (ignored because of --force)"));
        }
        step(format!("Upgrading cluster from {from} to {to}"));
        // What the migrations find to do follows Gravity's backend (spec
        // §1.6): trusted clusters and roles in the old format.
        if let Ok(names) = crate::phases::links::trusted_clusters(&backends).await {
            cluster.trusted_clusters = names;
        }
        if let Ok(roles) = crate::phases::roles::legacy_roles(&backends).await {
            cluster.legacy_role_rules = !roles.is_empty();
        }
        let local = self.local_node()?;
        let built = build_plan(
            &cluster,
            &target,
            &BuildOptions {
                parallel_workers: opts.parallel_workers.max(1),
                leader: Some(local),
                ..BuildOptions::default()
            },
        )?;
        let plan = built.plan;
        let id = plan.operation_id.clone();
        let actor = Actor::current();
        self.plans.claim_lock(&id, &actor).await?;
        if let Err(e) = self.plans.create_operation(&plan).await {
            self.plans.release_lock(&id).await?;
            return Err(e.into());
        }
        cluster.state = ClusterState::Updating;
        cluster.operations.push(ClusterOperation {
            id: id.clone(),
            kind: OperationKind::Update,
            status: OperationStatus::InProgress,
            created: Some(plan.created),
            rolled_back: false,
        });
        self.sim.set_cluster(cluster.clone())?;
        step("Deploying agents on cluster nodes".into());
        let deployed: Result<(), BackendError> = async {
            for n in cluster.nodes.iter().rev() {
                backends.nodes.deploy_agent(&n.hostname).await?;
                step(format!(
                    "Deployed agent on {} ({})",
                    n.hostname, n.advertise_ip
                ));
            }
            Ok(())
        }
        .await;
        if let Err(e) = deployed {
            step("Encountered error, will shutdown agents".into());
            self.shutdown_agents().await;
            self.finish(&id, OperationState::Failed).await?;
            self.plans
                .set_operation_state(&id, OperationState::Failed)
                .await?;
            return Err(e.into());
        }
        Ok(StartedUpgrade {
            operation_id: id,
            from,
            to,
        })
    }

    /// Deploys the agents on every node; returns `(host, ip)` per node.
    pub async fn deploy_agents(&self) -> Result<Vec<(String, String)>, LifecycleError> {
        let backends = self.backends()?;
        let mut out = Vec::new();
        for n in self.sim.cluster()?.nodes.iter().rev() {
            backends.nodes.deploy_agent(&n.hostname).await?;
            out.push((n.hostname.clone(), n.advertise_ip.clone()));
        }
        Ok(out)
    }

    /// Shuts the agents down on every reachable node.
    pub async fn shutdown_agents(&self) {
        if let (Ok(b), Ok(c)) = (self.backends(), self.sim.cluster()) {
            for n in &c.nodes {
                let _ = b.nodes.shutdown_agent(&n.hostname).await;
            }
        }
    }

    /// Records the end of an update operation in the cluster: the cluster
    /// becomes `active` (as `gravity plan complete` did in Gravity), the
    /// operation completed or failed (rolled back if every started phase
    /// was), on success the target becomes the installed image, and the
    /// agents are shut down.
    /// Operations that are not upgrades of this cluster are left alone.
    pub async fn finish(
        &self,
        operation_id: &str,
        state: OperationState,
    ) -> Result<(), LifecycleError> {
        let mut cluster = self.sim.cluster()?;
        let Some(pos) = cluster.operations.iter().position(|o| o.id == operation_id) else {
            return Ok(());
        };
        let rolled_back = {
            let plan = self.plans.plan(operation_id).await?;
            let changes = self.plans.changes(operation_id, 0).await?;
            match gravity_plan::PlanGraph::build(plan) {
                Ok(g) => gravity_plan::PlanView::resolve(g, &changes).is_rolled_back(),
                Err(_) => false,
            }
        };
        if state == OperationState::Completed
            && let Ok(target) = self.target()
        {
            cluster.installed = target;
        }
        let op = &mut cluster.operations[pos];
        op.status = match state {
            OperationState::Completed => OperationStatus::Completed,
            OperationState::Failed => OperationStatus::Failed,
            OperationState::InProgress => OperationStatus::InProgress,
        };
        op.rolled_back = rolled_back;
        cluster.state = ClusterState::Active;
        self.sim.set_cluster(cluster)?;
        // The operation is over either way: its agents go (a rolled-back
        // cluster must be as before the upgrade, which had none running).
        if state != OperationState::InProgress {
            self.shutdown_agents().await;
        }
        Ok(())
    }

    /// Forces the cluster state to active (`gravity status-reset`).
    pub fn reset_state(&self) -> Result<String, LifecycleError> {
        let mut cluster = self.sim.cluster()?;
        cluster.state = ClusterState::Active;
        let name = cluster.name.clone();
        self.sim.set_cluster(cluster)?;
        Ok(name)
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
}

/// Runs phases of the local node here and the others "through their
/// agent": in the simulation both run in this process, but a phase bound
/// to another node is reported as remote and refused when that node's
/// agent is down (the executors' pre-checks say so).
#[derive(Debug, Clone)]
pub struct AgentDispatcher {
    local: String,
}

#[async_trait]
impl Dispatcher for AgentDispatcher {
    fn locate(&self, phase: &Phase) -> Location {
        match phase.exec_node.as_ref() {
            Some(n) if n.hostname != self.local => Location::Remote(n.clone()),
            _ => Location::Local,
        }
    }

    async fn run(
        &self,
        _location: &Location,
        action: Action,
        executor: Arc<dyn PhaseExecutor>,
        ctx: &PhaseContext,
    ) -> Result<(), ExecError> {
        run_local(action, executor.as_ref(), ctx).await
    }
}

/// Time of day in the seed's progress format, for callers that log steps.
pub fn now_step() -> String {
    gravity_plan::render::format_time_seconds(Utc::now())
}

//! Which backends a command acts on: the simulated cluster of the state
//! directory by default; Kubernetes through kube-rs with `--kubeconfig`;
//! the cluster-wide plan store and leader election on a real etcd with
//! `--etcd-endpoints`, and, when the state directory holds a rehearsal
//! etcd cluster (`gravity sim etcd start`), its members for the `/etcd`
//! phases too.

use std::sync::Arc;
use std::time::Duration;

use gravity_etcd::backend::election::SimulatedCampaign;
use gravity_etcd::{EtcdClient, EtcdPlanStore, Rehearsal, SyncedPlanStore};
use gravity_plan::{FileStore, PlanStore};
use gravity_upgrade::backend::Timing;
use gravity_upgrade::operation::{BackendOverrides, Site};
use gravity_upgrade::sim::SimulatedCluster;

use crate::{CliError, Globals};

/// How long one etcd request may take before the next member is tried.
const ETCD_TIMEOUT: Duration = Duration::from_secs(5);

/// The same on a rehearsal machine: loopback members answer in ms, and a
/// request to a member left without quorum by the `/etcd` phases only
/// fails at this timeout, which the plan store pays while etcd is down.
const REHEARSAL_ETCD_TIMEOUT: Duration = Duration::from_secs(1);

fn etcd_client(endpoints: &str) -> Result<EtcdClient, CliError> {
    EtcdClient::from_list(endpoints, ETCD_TIMEOUT)
        .map_err(|e| format!("--etcd-endpoints: {e}").into())
}

/// The client of the plan stores: [`etcd_client`], with a shorter timeout
/// when the state directory holds a rehearsal cluster.
fn plans_client(globals: &Globals, endpoints: &str) -> Result<EtcdClient, CliError> {
    let timeout = if Rehearsal::exists(&Rehearsal::root_of(&globals.state_dir)) {
        REHEARSAL_ETCD_TIMEOUT
    } else {
        ETCD_TIMEOUT
    };
    EtcdClient::from_list(endpoints, timeout).map_err(|e| format!("--etcd-endpoints: {e}").into())
}

/// The plan store: the state directory's, or, with `--etcd-endpoints`,
/// the node's copy kept in sync with the cluster-wide store in etcd (the
/// local copy stays authoritative while etcd is down).
pub async fn plan_store(globals: &Globals) -> Result<Arc<dyn PlanStore>, CliError> {
    let dir = globals.state_dir.join("plan");
    match &globals.etcd_endpoints {
        None => {
            let store = FileStore::open(&dir).map_err(|e| {
                format!(
                    "cannot open state directory {}: {e}",
                    globals.state_dir.display()
                )
            })?;
            Ok(Arc::new(store))
        }
        Some(endpoints) => {
            let store = SyncedPlanStore::open_dir(&dir, plans_client(globals, endpoints)?)
                .await
                .map_err(|e| format!("cannot open the plan store in {}: {e}", dir.display()))?;
            if !store.cluster_reachable() {
                // Gravity's behaviour: carry on with the node's own copy.
                let text = format!(
                    "etcd at {endpoints} is unreachable: using this node's copy of the plans; changes are copied to etcd once it answers"
                );
                crate::cmdlog::line("warning", &text);
                eprintln!("[WARNING]: {text}");
            }
            Ok(Arc::new(store))
        }
    }
}

/// The cluster-wide store, for `plan --tail`.
pub struct ClusterPlans {
    /// The store in etcd.
    pub etcd: EtcdPlanStore,
    /// The same, as a [`PlanStore`].
    pub store: Arc<dyn PlanStore>,
}

/// The store `plan --tail` follows: with `--etcd-endpoints`, the
/// cluster-wide store itself, so that progress made on other nodes shows.
pub fn tail_store(globals: &Globals) -> Result<Option<ClusterPlans>, CliError> {
    match &globals.etcd_endpoints {
        None => Ok(None),
        Some(endpoints) => {
            let etcd = EtcdPlanStore::new(etcd_client(endpoints)?);
            Ok(Some(ClusterPlans {
                store: Arc::new(etcd.clone()),
                etcd,
            }))
        }
    }
}

/// The rehearsal etcd cluster of the state directory, when
/// `--etcd-endpoints` is given and `<state>/etcd/cluster.json` exists.
/// The endpoints must be members of it (else the `/etcd` phases would
/// act on other members than the plans and keys).
fn rehearsal(globals: &Globals) -> Result<Option<Rehearsal>, CliError> {
    let Some(endpoints) = &globals.etcd_endpoints else {
        return Ok(None);
    };
    let root = Rehearsal::root_of(&globals.state_dir);
    if !Rehearsal::exists(&root) {
        return Ok(None);
    }
    let r = Rehearsal::open(&root)?;
    let members = r.endpoints();
    let given: Vec<String> = etcd_client(endpoints)?.endpoints().to_vec();
    if let Some(other) = given.iter().find(|e| !members.contains(e)) {
        return Err(format!(
            "--etcd-endpoints: {other} is not a member of the rehearsal etcd cluster in {} (its members: {}); give those, or remove the rehearsal with \"gravity sim etcd stop\" and its directory",
            root.display(),
            members.join(",")
        )
        .into());
    }
    Ok(Some(r))
}

/// For commands that may execute phases on a rehearsal machine: a
/// [`SimulatedCampaign`] on the rehearsal cluster's election keys, running
/// until the returned guard is dropped. Nothing on a rehearsal machine
/// runs planet's election loop, and the leader step-down and election
/// phases wait for the leader key to move. `None` without a rehearsal
/// cluster (on a real cluster planet campaigns).
///
/// Endpoints that are not the rehearsal's only matter once phases act on
/// members (the backends refuse them then); `plan` still shows the plan.
pub fn campaign(globals: &Globals) -> Result<Option<SimulatedCampaign>, CliError> {
    match rehearsal(globals).ok().flatten() {
        Some(r) => Ok(Some(r.start_campaign()?)),
        None => Ok(None),
    }
}

/// The backends that replace the simulated ones.
pub async fn overrides(globals: &Globals) -> Result<BackendOverrides, CliError> {
    let mut o = BackendOverrides::default();
    if let Some(k) = &globals.kubeconfig {
        let kube = if k == "auto" {
            gravity_kube::KubeBackend::infer().await?
        } else {
            gravity_kube::KubeBackend::from_kubeconfig(k).await?
        };
        o.kube = Some(Arc::new(kube));
        // A real API server: Gravity's drain and endpoint waits.
        o.timing = Some(Timing::gravity());
    }
    if let Some(endpoints) = &globals.etcd_endpoints {
        let client = etcd_client(endpoints)?;
        let cluster = SimulatedCluster::open(&globals.state_dir)?.cluster()?;
        o.election = Some(Arc::new(
            gravity_etcd::backend::election::EtcdElection::for_cluster(client, &cluster),
        ));
        o.plans = Some(plan_store(globals).await?);
        if let Some(r) = rehearsal(globals)? {
            // The /etcd phases act on the rehearsal's etcd processes.
            o.etcd = Some(Arc::new(r.backend()?));
            if o.timing.is_none() {
                // Real members answer in ms, not µs; a leader step-down
                // takes the campaign's lease (0.5 s): wait up to 10 s.
                o.timing = Some(gravity_etcd::rehearsal::timing());
            }
        }
    }
    Ok(o)
}

/// The cluster of the state directory with the selected backends.
pub async fn site(globals: &Globals) -> Result<Site, CliError> {
    if globals.kubeconfig.is_none() && globals.etcd_endpoints.is_none() {
        return Ok(Site::open(&globals.state_dir)?);
    }
    if !globals.state_dir.join("sim/cluster.json").exists() {
        return Ok(Site::open(&globals.state_dir)?);
    }
    Ok(Site::open_with(
        &globals.state_dir,
        overrides(globals).await?,
    )?)
}

//! Real gravity-upgrade phase executors (drain, taint, uncordon, untaint,
//! kubelet permissions) acting through the kube-rs backend on the fake API
//! server, with the simulated cluster for everything else (records,
//! agents, gates).

mod fake_api;

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeZone;
use fake_api::{FakeApi, hook_job};
use gravity_plan::{NoProgress, PhaseContext, PhaseExecutor, PlanGraph};

/// The registered executor of `kind` (looked up by kind so that the test
/// does not depend on where gravity-upgrade keeps its executor types).
fn executor(b: &Backends, kind: &str) -> Arc<dyn PhaseExecutor> {
    registry(b.clone())
        .get(kind)
        .unwrap_or_else(|| panic!("no executor {kind}"))
}
use gravity_upgrade::backend::{Backends, Hook};
use gravity_upgrade::phases::registry;
use gravity_upgrade::sim::{SimSpec, SimulatedCluster};
use gravity_upgrade::{BuildOptions, Cluster, ClusterImage, build_plan};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

struct Env {
    _dir: tempfile::TempDir,
    fake: FakeApi,
    graph: Arc<PlanGraph>,
    backends: Backends,
}

async fn env(masters: usize) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::synthetic(masters, 0);
    let sim = SimulatedCluster::init(dir.path(), SimSpec::for_cluster(cluster.clone())).unwrap();
    sim.deploy_agents().unwrap();
    let opts = BuildOptions::deterministic(
        "7c4b1e52-0000-4000-8000-000000000042",
        chrono::Utc.timestamp_opt(1_596_339_382, 0).unwrap(),
    );
    let plan = build_plan(&cluster, &ClusterImage::seed_target(), &opts)
        .unwrap()
        .into_plan();
    let graph = PlanGraph::build(plan).unwrap();
    let fake = FakeApi::start().await;
    for n in &cluster.nodes {
        fake.add_node(&n.hostname, &[("gravitational.io/k8s-role", "master")]);
    }
    let mut backends = sim.backends();
    backends.kube = Arc::new(fake.backend(FakeApi::fast_options()));
    backends.timing.eviction_deadline = Duration::from_secs(5);
    Env {
        _dir: dir,
        fake,
        graph,
        backends,
    }
}

impl Env {
    /// The phase of `executor` acting on `node`.
    fn ctx(&self, executor: &str, node: &str) -> PhaseContext {
        let phase = self
            .graph
            .nodes()
            .iter()
            .map(|n| &n.phase)
            .find(|p| {
                p.executor.as_deref() == Some(executor)
                    && p.node.as_ref().is_some_and(|n| n.hostname == node)
            })
            .unwrap_or_else(|| panic!("no {executor} phase for {node}"));
        PhaseContext::new(
            self.graph.clone(),
            &phase.id,
            Arc::new(NoProgress),
            CancellationToken::new(),
        )
        .unwrap()
    }

    fn node(&self, name: &str) -> Value {
        self.fake.node(name)
    }
}

fn unschedulable(n: &Value) -> bool {
    n["spec"]["unschedulable"] == json!(true)
}

fn taints(n: &Value) -> Value {
    n["spec"].get("taints").cloned().unwrap_or(json!([]))
}

fn runlevel() -> Value {
    json!([{"key": "gravitational.io/runlevel", "value": "system", "effect": "NoExecute"}])
}

/// `default/web-1` (app=web, owned by a ReplicaSet) on `node`.
fn add_web_pod(fake: &FakeApi, node: &str) {
    fake.add_pod(
        "default",
        "web-1",
        node,
        &[("app", "web")],
        Some("ReplicaSet"),
        false,
    );
}

#[tokio::test]
async fn drain_taint_uncordon_untaint_and_their_rollbacks() {
    let e = env(1).await;
    let m = "master-1";
    add_web_pod(&e.fake, m);
    e.fake
        .add_pod("kube-system", "flannel-x", m, &[], Some("DaemonSet"), false);
    let b = e.backends.clone();
    let (drain, taint, uncordon, untaint) = (
        executor(&b, "drain_node"),
        executor(&b, "taint_node"),
        executor(&b, "uncordon_node"),
        executor(&b, "untaint_node"),
    );
    let (cd, ct, cu, cut) = (
        e.ctx("drain_node", m),
        e.ctx("taint_node", m),
        e.ctx("uncordon_node", m),
        e.ctx("untaint_node", m),
    );

    drain.pre_check(&cd).await.unwrap();
    drain.execute(&cd).await.unwrap();
    assert!(unschedulable(&e.node(m)));
    assert!(e.fake.get("pods", Some("default"), "web-1").is_none());
    assert!(
        e.fake
            .get("pods", Some("kube-system"), "flannel-x")
            .is_some()
    );
    let reqs = e.fake.requests();
    let cordon = reqs.iter().position(|r| r.method == "PATCH").unwrap();
    let evict = reqs
        .iter()
        .position(|r| r.path == "/api/v1/namespaces/default/pods/web-1/eviction")
        .unwrap();
    assert!(cordon < evict, "cordon before the evictions");

    taint.execute(&ct).await.unwrap();
    assert_eq!(taints(&e.node(m)), runlevel());
    uncordon.execute(&cu).await.unwrap();
    assert!(!unschedulable(&e.node(m)));
    untaint.execute(&cut).await.unwrap();
    assert_eq!(taints(&e.node(m)), json!([]));

    // Roll back in reverse order: each undoes exactly what it did.
    untaint.rollback(&cut).await.unwrap();
    assert_eq!(taints(&e.node(m)), runlevel(), "the taint is put back");
    uncordon.rollback(&cu).await.unwrap();
    assert!(unschedulable(&e.node(m)), "cordoned again");
    taint.rollback(&ct).await.unwrap();
    assert_eq!(taints(&e.node(m)), json!([]));
    drain.rollback(&cd).await.unwrap();
    let n = e.node(m);
    assert!(!unschedulable(&n) && taints(&n) == json!([]));

    // A second rollback finds no record and writes nothing.
    e.fake.clear_requests();
    drain.rollback(&cd).await.unwrap();
    taint.rollback(&ct).await.unwrap();
    assert!(e.fake.writes().is_empty(), "{:?}", e.fake.writes());
}

#[tokio::test]
async fn rollbacks_leave_alone_what_the_phases_did_not_change() {
    let e = env(1).await;
    let m = "master-1";
    // Cordoned and tainted by someone else before the upgrade.
    let kube = e.fake.backend(FakeApi::fast_options());
    use gravity_upgrade::backend::{Kubernetes, Taint};
    assert!(kube.cordon(m).await.unwrap());
    assert!(kube.add_taint(m, &Taint::runlevel_system()).await.unwrap());

    let b = e.backends.clone();
    let (drain, taint) = (executor(&b, "drain_node"), executor(&b, "taint_node"));
    let (cd, ct) = (e.ctx("drain_node", m), e.ctx("taint_node", m));
    drain.execute(&cd).await.unwrap();
    taint.execute(&ct).await.unwrap();
    e.fake.clear_requests();
    taint.rollback(&ct).await.unwrap();
    drain.rollback(&cd).await.unwrap();
    assert!(e.fake.writes().is_empty(), "{:?}", e.fake.writes());
    let n = e.node(m);
    assert!(unschedulable(&n));
    assert_eq!(taints(&n), runlevel());
}

#[tokio::test]
async fn a_blocked_drain_fails_the_phase_and_its_rollback_uncordons() {
    let mut e = env(1).await;
    e.backends.timing.eviction_deadline = Duration::from_millis(200);
    let m = "master-1";
    add_web_pod(&e.fake, m);
    e.fake.add_pdb("default", "web-pdb", &[("app", "web")]);
    e.fake.evict_429("default/web-1", fake_api::FOREVER);
    let drain = executor(&e.backends, "drain_node");
    let cd = e.ctx("drain_node", m);
    let err = drain.execute(&cd).await.unwrap_err().to_string();
    assert!(
        err.contains("default/web-1") && err.contains("default/web-pdb"),
        "{err}"
    );
    assert!(unschedulable(&e.node(m)));
    drain.rollback(&cd).await.unwrap();
    assert!(!unschedulable(&e.node(m)));
}

#[tokio::test]
async fn kubelet_permissions_rollback_deletes_only_what_was_created() {
    let e = env(2).await;
    e.fake.put(
        "clusterroles",
        None,
        json!({"metadata": {"name": "kubelet-upgrade"}, "rules": []}),
    );
    let p = executor(&e.backends, "kubelet_permissions");
    let ctx = e.ctx("kubelet_permissions", "master-1");
    p.execute(&ctx).await.unwrap();
    assert_eq!(e.fake.names("clusterrolebindings"), ["kubelet-upgrade"]);
    p.rollback(&ctx).await.unwrap();
    assert!(e.fake.names("clusterrolebindings").is_empty());
    assert_eq!(e.fake.names("clusterroles"), ["kubelet-upgrade"]);
}

/// The `gravitational.io/hook` labels of the jobs created, in order.
fn hooks_created(fake: &FakeApi) -> Vec<String> {
    fake.requests_of("POST", "/apis/batch/v1/namespaces/kube-system/jobs")
        .iter()
        .map(|r| r.body["metadata"]["labels"]["gravitational.io/hook"].to_string())
        .collect()
}

#[tokio::test]
async fn update_app_runs_the_network_hooks_the_application_defines() {
    let mut e = env(1).await;
    let phase = e
        .graph
        .nodes()
        .iter()
        .map(|n| &n.phase)
        .find(|p| p.executor.as_deref() == Some("update_app") && !p.id.as_str().contains("rbac"))
        .expect("an update_app phase")
        .clone();
    let app: gravity_upgrade::executors::AppData = phase.data.decode().unwrap();
    // The application defines networkUpdate, update, rollback and
    // networkRollback, not postUpdate nor postRollback.
    let jobs = Arc::new(gravity_kube::MemoryHookJobs::new());
    for (hook, name) in [
        (Hook::NetworkUpdate, "net-update"),
        (Hook::Update, "update"),
        (Hook::Rollback, "rollback"),
        (Hook::NetworkRollback, "net-rollback"),
    ] {
        jobs.insert(app.package.name(), hook, hook_job(name, &["hook"]));
    }
    e.backends.kube = Arc::new(e.fake.backend(FakeApi::fast_options()).with_hooks(jobs));
    let ctx = PhaseContext::new(
        e.graph.clone(),
        &phase.id,
        Arc::new(NoProgress),
        CancellationToken::new(),
    )
    .unwrap();
    let update_app = executor(&e.backends, "update_app");

    update_app.execute(&ctx).await.unwrap();
    assert_eq!(hooks_created(&e.fake), ["\"networkUpdate\"", "\"update\""]);

    e.fake.clear_requests();
    update_app.rollback(&ctx).await.unwrap();
    assert_eq!(
        hooks_created(&e.fake),
        ["\"rollback\"", "\"networkRollback\""]
    );
}

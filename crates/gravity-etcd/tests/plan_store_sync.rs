//! Node stores (`SyncedPlanStore`: a local file store per node, one etcd)
//! against a real etcd: claims are atomic across nodes, and a run that
//! loses etcd midway carries on locally and converges afterwards.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gravity_etcd::{EtcdClient, EtcdPlanStore, LocalEtcdCluster, SyncConfig, SyncedPlanStore};
use gravity_plan::{
    Actor, Engine, EngineConfig, EngineError, ExecError, ExecutorRegistry, FileStore,
    OperationState, Phase, PhaseContext, PhaseExecutor, PhasePath, Plan, PlanGraph, PlanStore,
    PlanView, render,
};

fn client(c: &LocalEtcdCluster) -> EtcdClient {
    EtcdClient::new(c.endpoints(), Duration::from_secs(2)).unwrap()
}

fn config() -> SyncConfig {
    SyncConfig {
        retry_for: Duration::from_secs(5),
        offline_min: Duration::from_millis(100),
        offline_max: Duration::from_secs(1),
    }
}

async fn node(dir: &Path, name: &str, etcd: &EtcdClient) -> SyncedPlanStore {
    let local: Arc<dyn PlanStore> = Arc::new(FileStore::open(dir.join(name)).unwrap());
    SyncedPlanStore::open(local, EtcdPlanStore::new(etcd.clone()), config())
        .await
        .unwrap()
}

fn leaf(path: &str, executor: &str) -> Phase {
    let mut p = Phase::new(PhasePath::parse(path).unwrap(), path);
    p.executor = Some(executor.into());
    p
}

fn composite(path: &str, children: Vec<Phase>) -> Phase {
    let mut p = Phase::new(PhasePath::parse(path).unwrap(), path);
    p.phases = children;
    p
}

fn plan(id: &str, phases: Vec<Phase>) -> Plan {
    Plan {
        operation_id: id.into(),
        operation_kind: "update".into(),
        cluster_name: "test".into(),
        created: chrono::Utc::now(),
        phases,
    }
}

fn actor(host: &str) -> Actor {
    Actor {
        host: host.into(),
        pid: 1,
    }
}

/// Records which node ran which phase; optionally waits for a barrier in
/// the pre-check (so two nodes reach the claim together) or runs a hook.
struct Recorder {
    node: String,
    ran: Arc<Mutex<Vec<(String, String)>>>,
    barriers: Arc<HashMap<String, Arc<tokio::sync::Barrier>>>,
    hook: Option<Arc<dyn Fn() + Send + Sync>>,
}

#[async_trait]
impl PhaseExecutor for Recorder {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        if let Some(b) = self.barriers.get(ctx.path().as_str()) {
            b.wait().await;
        }
        Ok(())
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        self.ran
            .lock()
            .unwrap()
            .push((self.node.clone(), ctx.path().to_string()));
        if let Some(hook) = &self.hook {
            let hook = hook.clone();
            tokio::task::spawn_blocking(move || hook()).await?;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok(())
    }

    async fn rollback(&self, _ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(())
    }
}

/// The plan as `gravity plan` prints it from a store.
async fn shown(store: &dyn PlanStore, id: &str) -> (String, bool) {
    let graph = PlanGraph::build(store.plan(id).await.unwrap()).unwrap();
    let changes = store.changes(id, 0).await.unwrap();
    let view = PlanView::resolve(graph, &changes);
    (render::text(&view), view.is_completed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_is_atomic_across_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalEtcdCluster::start(dir.path().join("etcd"), 1).unwrap();
    let etcd = client(&cluster);
    let id = "op-race";
    let leaves: Vec<String> = (0..8).map(|i| format!("/p{i}")).collect();
    let a = node(dir.path(), "node-a", &etcd).await;
    a.create_operation(&plan(id, leaves.iter().map(|l| leaf(l, "race")).collect()))
        .await
        .unwrap();
    // Node B learns of the operation when its store opens.
    let b = node(dir.path(), "node-b", &etcd).await;
    assert_eq!(b.operation(id).await.unwrap().id, id);

    let ran = Arc::new(Mutex::new(Vec::new()));
    let barriers: Arc<HashMap<String, Arc<tokio::sync::Barrier>>> = Arc::new(
        leaves
            .iter()
            .map(|l| (l.clone(), Arc::new(tokio::sync::Barrier::new(2))))
            .collect(),
    );
    let engine = |store: &SyncedPlanStore, name: &str| {
        let mut reg = ExecutorRegistry::new();
        reg.register(
            "race",
            Recorder {
                node: name.into(),
                ran: ran.clone(),
                barriers: barriers.clone(),
                hook: None,
            },
        );
        let store: Arc<dyn PlanStore> = Arc::new(store.clone());
        let cfg = EngineConfig::new(reg).actor(actor(name));
        async move { Engine::open(store, id, cfg).await.unwrap() }
    };
    let ea = engine(&a, "node-a").await;
    let eb = engine(&b, "node-b").await;

    let started = Instant::now();
    for l in &leaves {
        let path = PhasePath::parse(l).unwrap();
        let (ra, rb) = tokio::join!(ea.execute(&path, false), eb.execute(&path, false));
        let won = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "{l}: {ra:?} / {rb:?}");
        for r in [ra, rb] {
            match r {
                Ok(report) => assert_eq!(report.done, 1),
                Err(EngineError::Claimed { .. } | EngineError::ChangedConcurrently { .. }) => {}
                Err(e) => panic!("{l}: unexpected {e}"),
            }
        }
    }
    let ran = ran.lock().unwrap().clone();
    let phases: Vec<&str> = ran.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(
        phases.len(),
        leaves.len(),
        "each phase ran exactly once: {ran:?}"
    );
    assert_eq!(
        phases.iter().copied().collect::<BTreeSet<_>>(),
        leaves.iter().map(String::as_str).collect::<BTreeSet<_>>()
    );

    // Both nodes and etcd show the same, complete plan.
    a.sync(id).await.unwrap();
    b.sync(id).await.unwrap();
    let (text_a, done_a) = shown(&a, id).await;
    let (text_b, _) = shown(&b, id).await;
    let (text_etcd, _) = shown(a.cluster(), id).await;
    assert!(done_a, "{text_a}");
    assert_eq!(text_a, text_b);
    assert_eq!(text_a, text_etcd);
    eprintln!("8 races in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_carries_on_without_etcd_and_every_node_converges() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Arc::new(Mutex::new(
        LocalEtcdCluster::start(dir.path().join("etcd"), 3).unwrap(),
    ));
    let etcd = client(&cluster.lock().unwrap());
    let id = "op-partition";
    let mut nodes_phase = composite(
        "/nodes",
        vec![
            leaf("/nodes/n1", "run"),
            leaf("/nodes/n2", "run"),
            leaf("/nodes/n3", "run"),
        ],
    );
    nodes_phase.parallel = 2;
    let the_plan = plan(
        id,
        vec![
            leaf("/init", "run"),
            composite(
                "/masters",
                vec![leaf("/masters/m1", "run"), leaf("/masters/m2", "run")],
            ),
            composite(
                "/etcd",
                vec![
                    leaf("/etcd/backup", "run"),
                    leaf("/etcd/shutdown", "stop-etcd"),
                    leaf("/etcd/upgrade", "run"),
                    leaf("/etcd/restart", "run"),
                ],
            ),
            nodes_phase,
            leaf("/finish", "run"),
        ],
    );
    let leaf_count = 11;

    let a = node(dir.path(), "node-a", &etcd).await;
    a.create_operation(&the_plan).await.unwrap();
    a.claim_lock(id, &actor("node-a")).await.unwrap();
    let b = node(dir.path(), "node-b", &etcd).await;
    let c = node(dir.path(), "node-c", &etcd).await;

    let ran = Arc::new(Mutex::new(Vec::new()));
    let mut reg = ExecutorRegistry::new();
    let recorder = |hook: Option<Arc<dyn Fn() + Send + Sync>>| Recorder {
        node: "node-a".into(),
        ran: ran.clone(),
        barriers: Arc::default(),
        hook,
    };
    reg.register("run", recorder(None));
    let stopper = cluster.clone();
    reg.register(
        "stop-etcd",
        recorder(Some(Arc::new(move || {
            stopper.lock().unwrap().stop_all().unwrap();
        }))),
    );
    let store_a: Arc<dyn PlanStore> = Arc::new(a.clone());
    let engine = Engine::open(store_a, id, EngineConfig::new(reg).actor(actor("node-a")))
        .await
        .unwrap();

    // The whole run on node A: etcd goes away in the middle of it.
    let started = Instant::now();
    let report = engine.resume().await.unwrap();
    assert_eq!(report.done, leaf_count);
    assert!(!a.cluster_reachable(), "etcd is down after /etcd/shutdown");
    assert!(!etcd.healthy().await);
    assert_eq!(engine.complete().await.unwrap(), OperationState::Completed);
    let ran: Vec<String> = ran.lock().unwrap().iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(ran.len(), leaf_count, "every leaf ran once: {ran:?}");
    assert_eq!(ran.iter().collect::<BTreeSet<_>>().len(), leaf_count);
    let (text_a, done) = shown(&a, id).await;
    assert!(done, "{text_a}");

    // Syncing while etcd is down is no error and changes nothing.
    let r = b.sync(id).await.unwrap();
    assert!(!r.reachable);

    // etcd is back: every node converges.
    let c2 = cluster.clone();
    tokio::task::spawn_blocking(move || c2.lock().unwrap().start_all().unwrap())
        .await
        .unwrap();
    let ra = a.sync(id).await.unwrap();
    assert!(ra.reachable);
    assert!(ra.pushed > 0, "node A's offline changes go to etcd: {ra:?}");
    let total = a.changes(id, 0).await.unwrap().len();
    assert!(
        ra.pushed < total,
        "the changes made before etcd went away were in etcd already: {ra:?} of {total}"
    );
    for n in [&b, &c] {
        let r = n.sync(id).await.unwrap();
        assert!(r.reachable && r.pulled == total, "{r:?}");
    }
    let mut shown_by = Vec::new();
    for (name, store) in [
        ("node-a", &a as &dyn PlanStore),
        ("node-b", &b),
        ("node-c", &c),
        ("etcd", a.cluster()),
    ] {
        let (text, done) = shown(store, id).await;
        assert!(done, "{name}:\n{text}");
        assert_eq!(
            store.operation(id).await.unwrap().state,
            OperationState::Completed,
            "{name}"
        );
        shown_by.push((name, text));
    }
    for (name, text) in &shown_by[1..] {
        assert_eq!(
            text, &shown_by[0].1,
            "{name} shows another plan than node-a"
        );
    }
    // The lock that node A released while etcd was down is released there
    // too.
    assert!(b.lock_holder().await.unwrap().is_none());
    // A second round changes nothing.
    for n in [&a, &b, &c] {
        let r = n.sync(id).await.unwrap();
        assert_eq!((r.pushed, r.pulled, r.created), (0, 0, 0));
    }
    eprintln!("partition scenario in {:?}", started.elapsed());
}

//! Shared setup of the backend tests: a real 3-member etcd cluster whose
//! members are the seed's masters, the simulated cluster for Kubernetes and
//! the nodes, and an engine over a plan built by the real builder.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::TimeZone;
use gravity_etcd::backend::election::EtcdElection;
use gravity_etcd::{EtcdBackend, EtcdClient, LocalEtcdCluster, TxnOp};
use gravity_pack::Version;
use gravity_plan::{Engine, EngineConfig, FileStore, Plan, PlanStore};
use gravity_upgrade::backend::{Backends, Election, Etcd, PackageStores, Timing};
use gravity_upgrade::phases::registry;
use gravity_upgrade::sim::{SimSpec, SimulatedCluster};
use gravity_upgrade::{BuildOptions, Cluster, seed_plan};

/// The seed's masters, mapped onto harness members 0, 1, 2.
pub const MASTERS: [&str; 3] = ["kevin-test1", "kevin-test2", "kevin-test3"];
/// The seed's cluster.
pub const CLUSTER: &str = "festivebrown4906";
/// The key written last by a restore (keys are restored in order).
pub const SENTINEL: &str = "/~sentinel";

pub fn installed() -> Version {
    Version::parse("3.3.20").unwrap()
}

pub fn update() -> Version {
    Version::parse("3.3.22").unwrap()
}

pub fn opts() -> BuildOptions {
    BuildOptions::deterministic(
        "7c4b1e52-0000-4000-8000-0000000000e7",
        chrono::Utc.timestamp_opt(1_596_339_382, 0).unwrap(),
    )
}

/// The seed plan (real builder), keeping only the top-level phases named.
pub fn seed_plan_only(top: &[&str]) -> Plan {
    let mut plan = seed_plan(&opts()).unwrap().into_plan();
    plan.phases.retain(|p| top.contains(&p.id.as_str()));
    assert_eq!(plan.phases.len(), top.len(), "the seed plan has {top:?}");
    // Requirements on the phases left out are dropped.
    fn prune(p: &mut gravity_plan::Phase, top: &[&str]) {
        p.requires.retain(|r| {
            top.iter()
                .any(|t| r.as_str() == *t || r.as_str().starts_with(&format!("{t}/")))
        });
        for c in &mut p.phases {
            prune(c, top);
        }
    }
    for p in &mut plan.phases {
        prune(p, top);
    }
    plan
}

pub struct Env {
    pub engine: Engine,
    pub store: Arc<dyn PlanStore>,
    pub plan: Plan,
    pub backend: Arc<EtcdBackend>,
    pub election: EtcdElection,
    pub sim: SimulatedCluster,
    pub cluster: Arc<Mutex<LocalEtcdCluster>>,
    pub root: std::path::PathBuf,
    pub dir: tempfile::TempDir,
}

/// Waits, for the election phases.
pub fn timing() -> Timing {
    Timing {
        poll_interval: Duration::from_millis(50),
        poll_attempts: 100,
        ..Timing::fast()
    }
}

impl Env {
    /// A 3-member cluster, the backends and an engine over `plan`.
    pub async fn start(plan: Plan) -> Env {
        let dir = tempfile::tempdir().unwrap();
        // The members start while the simulated cluster fills its stores.
        let cluster = tokio::task::spawn_blocking({
            let d = dir.path().join("etcd");
            move || LocalEtcdCluster::start(d, 3)
        });
        let sim = tokio::task::spawn_blocking({
            let d = dir.path().join("state");
            move || SimulatedCluster::init(d, SimSpec::seed())
        });
        let cluster = Arc::new(Mutex::new(cluster.await.unwrap().unwrap()));
        let sim = sim.await.unwrap().unwrap();
        sim.deploy_agents().unwrap();
        let root = dir.path().join("nodes");
        let backend = Arc::new(open_backend(&cluster, &root));
        let election = EtcdElection::for_cluster(backend.client().clone(), &Cluster::seed());
        let store: Arc<dyn PlanStore> =
            Arc::new(FileStore::open(dir.path().join("plans")).unwrap());
        store.create_operation(&plan).await.unwrap();
        let engine = engine(&store, &plan, &sim, backend.clone(), &election).await;
        Env {
            engine,
            store,
            plan,
            backend,
            election,
            sim,
            cluster,
            root,
            dir,
        }
    }

    /// What a second `gravity` process would do: a new backend (state read
    /// back from its files) and a new engine over the same plan store.
    pub async fn reopen(&mut self) {
        self.backend = Arc::new(open_backend(&self.cluster, &self.root));
        self.engine = engine(
            &self.store,
            &self.plan,
            &self.sim,
            self.backend.clone(),
            &self.election,
        )
        .await;
    }

    /// The harness member's data dir and client URL at the start.
    pub fn harness_member(&self, i: usize) -> (std::path::PathBuf, String) {
        let c = self.cluster.lock().unwrap();
        let m = c.member(i).unwrap();
        (m.config.data_dir.clone(), m.config.client_url.clone())
    }

    /// SIGKILLs the member of `node`.
    pub fn kill(&self, node: &str) {
        let i = MASTERS.iter().position(|m| *m == node).unwrap();
        self.cluster.lock().unwrap().kill_member(i).unwrap();
    }

    /// The normal client URLs (as the state files say).
    pub fn normal_urls(&self) -> Vec<String> {
        MASTERS
            .iter()
            .map(|m| self.backend.member_state(m).unwrap().normal_url)
            .collect()
    }

    pub fn upgrade_url(&self, node: &str) -> String {
        self.backend.member_state(node).unwrap().upgrade_url
    }
}

fn open_backend(cluster: &Arc<Mutex<LocalEtcdCluster>>, root: &std::path::Path) -> EtcdBackend {
    EtcdBackend::for_harness(cluster.clone(), root, CLUSTER, &MASTERS, &[], &installed()).unwrap()
}

async fn engine(
    store: &Arc<dyn PlanStore>,
    plan: &Plan,
    sim: &SimulatedCluster,
    backend: Arc<EtcdBackend>,
    election: &EtcdElection,
) -> Engine {
    let sim_backends = sim.backends();
    let backends = Backends {
        kube: sim_backends.kube.clone(),
        etcd: backend,
        nodes: sim_backends.nodes.clone(),
        election: Arc::new(election.clone()) as Arc<dyn Election>,
        packages: PackageStores::new(sim.state_dir()),
        gate: None,
        timing: timing(),
        local_node: None,
    };
    Engine::open(
        store.clone(),
        &plan.operation_id,
        EngineConfig::new(registry(backends)),
    )
    .await
    .unwrap()
}

/// Writes `n` keys (and the sentinel) in transactions; returns them all.
pub async fn write_keys(client: &EtcdClient, n: usize) -> BTreeMap<String, String> {
    let mut data = BTreeMap::new();
    for i in 0..n {
        data.insert(
            format!("/registry/things/{i:05}"),
            format!("value {i} {}", "ü".repeat(i % 7)),
        );
    }
    data.insert(SENTINEL.to_string(), "complete".to_string());
    let ops: Vec<TxnOp> = data
        .iter()
        .map(|(k, v)| TxnOp::Put(k.clone(), v.as_bytes().to_vec()))
        .collect();
    for batch in ops.chunks(128) {
        client.txn(&[], batch, &[]).await.unwrap();
    }
    data
}

/// Every key under `/` read through the single member at `url`, waiting
/// up to 20 s for it to serve.
pub async fn read_all(url: &str) -> BTreeMap<String, String> {
    let c = EtcdClient::new([url], Duration::from_secs(2)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match c.range_prefix("/").await {
            Ok(kvs) => {
                return kvs
                    .into_iter()
                    .map(|kv| (kv.key.clone(), kv.value_str()))
                    .collect();
            }
            Err(e) if Instant::now() > deadline => panic!("{url} does not serve: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Whether a TCP connection to `url` is refused (nothing listens).
pub async fn refused(url: &str) -> bool {
    let addr = url.trim_start_matches("http://").to_string();
    matches!(
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await,
        Ok(Err(_))
    )
}

/// Waits until `f` holds (polling every 50 ms, up to `secs`).
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks a member after the upgrade (or rollback): version, data dir,
/// address, health.
pub async fn assert_member(
    backend: &EtcdBackend,
    node: &str,
    version: &Version,
    data_dir: &std::path::Path,
) {
    let mut m = None;
    for _ in 0..100 {
        let got = backend.member(node).await.unwrap().unwrap();
        if got.healthy {
            m = Some(got);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = m.unwrap_or_else(|| panic!("{node} did not become healthy"));
    assert_eq!(&m.version, version, "{node}");
    assert_eq!(m.data_dir, data_dir.display().to_string(), "{node}");
    assert_eq!(
        m.serving,
        Some(gravity_upgrade::backend::EtcdAddress::Normal),
        "{node}"
    );
}

//! The upgrade plan run on the simulated cluster.

use std::sync::Arc;

use chrono::TimeZone;
use gravity_pack::image::{ImportOptions, import_image};
use gravity_pack::location::{StoreSelector, open_store};
use gravity_pack::{NoProgress, PackageStore};
use gravity_plan::{Engine, EngineConfig, FileStore, PlanStore};
use gravity_upgrade::phases::registry;
use gravity_upgrade::sim::{Fault, FaultKind, SimSpec, SimulatedCluster};
use gravity_upgrade::{BuildOptions, Cluster, ClusterImage, build_plan};

struct Env {
    _dir: tempfile::TempDir,
    sim: SimulatedCluster,
    engine: Engine,
}

fn packages(sim: &SimulatedCluster, sel: StoreSelector) -> Vec<String> {
    let s = open_store(sim.state_dir(), &sel).unwrap();
    s.list(None)
        .unwrap()
        .iter()
        .map(|e| e.list_line())
        .collect()
}

async fn setup(cluster: Cluster, target: ClusterImage, opts: BuildOptions) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimulatedCluster::init(dir.path(), SimSpec::for_cluster(cluster.clone())).unwrap();
    sim.deploy_agents().unwrap();
    let image = dir.path().join("image.tar");
    sim.write_image(&target, &image).unwrap();
    {
        let cs = open_store(dir.path(), &StoreSelector::Cluster).unwrap();
        import_image(&cs, &image, ImportOptions::default(), &NoProgress).unwrap();
    }
    let plan = build_plan(&cluster, &target, &opts).unwrap().into_plan();
    let store: Arc<dyn PlanStore> = Arc::new(FileStore::open(dir.path().join("plans")).unwrap());
    store.create_operation(&plan).await.unwrap();
    let engine = Engine::open(
        store,
        &plan.operation_id,
        EngineConfig::new(registry(sim.backends())),
    )
    .await
    .unwrap();
    Env {
        _dir: dir,
        sim,
        engine,
    }
}

fn opts() -> BuildOptions {
    BuildOptions::deterministic(
        "7c4b1e52-0000-4000-8000-000000000001",
        chrono::Utc.timestamp_opt(1_596_339_382, 0).unwrap(),
    )
}

async fn seed_env() -> Env {
    setup(Cluster::seed(), ClusterImage::seed_target(), opts()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_upgrade_runs_end_to_end() {
    let env = seed_env().await;
    let before = env.sim.inspect().unwrap();
    env.engine.resume().await.unwrap();
    let after = env.sim.inspect().unwrap();
    for n in &after.nodes {
        assert_eq!(
            n.runtime, "gravitational.io/planet:5.5.54-11312",
            "{}",
            n.hostname
        );
        assert_eq!(n.etcd_version.as_deref(), Some("3.3.22"));
        assert_eq!(n.etcd_state.as_deref(), Some("normal"));
        assert!(!n.unschedulable && n.taints.is_empty(), "{}", n.hostname);
        assert_eq!(n.election, Some(true));
    }
    assert_eq!(after.leader.as_deref(), Some("kevin-test1"));
    for (k, v) in &before.etcd_data {
        if !k.contains("/election/") {
            assert_eq!(after.etcd_data.get(k), Some(v), "{k}");
        }
    }
    assert_eq!(after.etcd_data.len(), before.etcd_data.len());
    assert_eq!(
        after.applications["gravitational.io/telekube"],
        "gravitational.io/telekube:5.5.50-dev.9"
    );
    let list = packages(&env.sim, StoreSelector::Node("kevin-test1".into())).join("\n");
    assert!(
        list.contains("gravitational.io/planet:5.5.54-11312 ")
            && list.contains("installed:installed,purpose:runtime"),
        "{list}"
    );
    assert!(!list.contains("planet:5.5.47-11312"), "{list}");
    assert!(
        list.contains("gravitational.io/gravity:5.5.50-dev.9 "),
        "{list}"
    );
    assert!(
        list.contains(
            "festivebrown4906/planet-config-1016207festivebrown4906:5.5.54-11312+1596339382"
        ),
        "{list}"
    );
    assert!(
        list.lines().any(|l| l
            .starts_with("festivebrown4906/planet-10.162.0.7-secrets:5.5.54-11312+1596339382")
            && l.contains("installed:installed")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("gravitational.io/teleport:3.0.5")
                && l.contains("installed:installed")),
        "{list}"
    );
}

fn all_stores(sim: &SimulatedCluster) -> Vec<Vec<String>> {
    let mut out = vec![packages(sim, StoreSelector::Cluster)];
    for n in sim.cluster().unwrap().nodes {
        out.push(packages(sim, StoreSelector::Node(n.hostname)));
    }
    out
}

fn strip_sizes(v: Vec<Vec<String>>) -> Vec<Vec<String>> {
    // The rotated RPC credentials are restored with their original content.
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_rollback_restores_the_cluster() {
    let env = seed_env().await;
    let before = env.sim.inspect().unwrap().without_pods();
    let stores = strip_sizes(all_stores(&env.sim));
    env.engine.resume().await.unwrap();
    env.engine.rollback_plan(false).await.unwrap();
    assert_eq!(env.sim.inspect().unwrap().without_pods(), before);
    assert_eq!(strip_sizes(all_stores(&env.sim)), stores);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_rollback_restores_the_cluster() {
    let env = seed_env().await;
    let before = env.sim.inspect().unwrap().without_pods();
    let stores = all_stores(&env.sim);
    env.sim
        .inject(Fault::new(FaultKind::PhaseFails).phase("/etcd/upgrade/kevin-test2"))
        .unwrap();
    let e = env.engine.resume().await.unwrap_err().to_string();
    assert!(e.contains("kevin-test2"), "{e}");
    env.sim.heal_all().unwrap();
    env.engine.rollback_plan(false).await.unwrap();
    assert_eq!(env.sim.inspect().unwrap().without_pods(), before);
    assert_eq!(all_stores(&env.sim), stores);
}

async fn fault_case(fault: Fault, expect: &[&str]) {
    let env = seed_env().await;
    env.sim.inject(fault.clone()).unwrap();
    let err = env.engine.resume().await.unwrap_err();
    let text = format!("{err} {:?}", err);
    let view = env.engine.view();
    let _ = view;
    for e in expect {
        assert!(text.contains(e), "{:?}: {e:?} not in {text}", fault.kind);
    }
    env.sim.heal(fault.kind, fault.node.as_deref()).unwrap();
    env.engine.resume().await.unwrap();
    let after = env.sim.inspect().unwrap();
    assert!(
        after
            .nodes
            .iter()
            .all(|n| n.runtime.ends_with("5.5.54-11312"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_fail_the_right_phase_and_heal() {
    fault_case(
        Fault::new(FaultKind::DiskFull).on("kevin-test2"),
        &["kevin-test2", "free"],
    )
    .await;
    fault_case(
        Fault::new(FaultKind::NodeUnreachable).on("kevin-test3"),
        &["kevin-test3", "unreachable"],
    )
    .await;
    fault_case(
        Fault::new(FaultKind::ClockSkew).on("kevin-test2"),
        &["kevin-test2", "clocks are out of sync"],
    )
    .await;
    fault_case(
        Fault::new(FaultKind::DnsBroken).on("kevin-test3"),
        &["kevin-test3", "DNS"],
    )
    .await;
    fault_case(
        Fault::new(FaultKind::EvictionBlocked).on("kevin-test2"),
        &["kevin-test2", "PodDisruptionBudget", "default/web"],
    )
    .await;
    fault_case(
        Fault::new(FaultKind::PhaseFails).phase("/masters/kevin-test1/system-upgrade"),
        &["kevin-test1", "system-upgrade"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_agent_names_the_node_in_the_phase_pre_check() {
    let env = seed_env().await;
    env.engine
        .execute(&gravity_plan::PhasePath::parse("/init").unwrap(), false)
        .await
        .unwrap();
    env.engine
        .execute(&gravity_plan::PhasePath::parse("/checks").unwrap(), false)
        .await
        .unwrap();
    env.engine
        .execute(
            &gravity_plan::PhasePath::parse("/pre-update").unwrap(),
            false,
        )
        .await
        .unwrap();
    env.sim
        .inject(Fault::new(FaultKind::NodeUnreachable).on("kevin-test2"))
        .unwrap();
    let e = env
        .engine
        .execute(
            &gravity_plan::PhasePath::parse("/bootstrap/kevin-test2").unwrap(),
            false,
        )
        .await
        .unwrap_err();
    let text = format!("{e} {e:?}");
    assert!(
        text.contains("no agent is running on node kevin-test2/10.162.0.6"),
        "{text}"
    );
}

async fn run_topology(cluster: Cluster, target: ClusterImage, opts: BuildOptions) {
    let env = setup(cluster, target.clone(), opts).await;
    env.engine.resume().await.unwrap();
    let after = env.sim.inspect().unwrap();
    for n in &after.nodes {
        assert_eq!(
            n.runtime,
            target.runtime_package.to_string(),
            "{}",
            n.hostname
        );
        assert!(!n.unschedulable && n.taints.is_empty());
    }
    assert!(after.leader.is_some());
    assert_eq!(
        after.applications[&format!("{}/{}", target.app.repository(), target.app.name())],
        target.app.to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topologies_run_to_completion() {
    let t = ClusterImage::seed_target();
    run_topology(Cluster::synthetic(1, 0), t.clone(), opts()).await;
    run_topology(Cluster::synthetic(3, 2), t.clone(), opts()).await;
    let mut no_etcd = t.clone();
    no_etcd.etcd_version = ClusterImage::seed_installed().etcd_version;
    run_topology(Cluster::synthetic(3, 2), no_etcd, opts()).await;
    let seed = Cluster::seed();
    let app_only = seed.installed.with_app_version("5.5.47").unwrap();
    run_topology(seed, app_only, opts()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_workers_in_parallel() {
    let t = ClusterImage::seed_target();
    run_topology(
        Cluster::synthetic(5, 20),
        t,
        opts().with_parallel_workers(5),
    )
    .await;
}

/// The `links` and `roles` migrations act on Gravity's backend (etcd keys
/// under `/gravity/local/`): the Ops Center link becomes a trusted
/// cluster, the role's `assignKubernetesGroups` action becomes its
/// `kubernetes_groups`; a rollback puts back exactly the previous keys
/// (the created trusted cluster key is deleted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_act_on_the_gravity_backend_and_roll_back() {
    let mut cluster = Cluster::seed();
    cluster.ops_center_links = vec![
        "https://wizard.example.com".into(),
        "https://ops.example.com:32009".into(),
    ];
    cluster.legacy_role_rules = true;
    let env = setup(cluster, ClusterImage::seed_target(), opts()).await;
    let role_key = "/gravity/local/roles/@teleadmin";
    let tc_key = "/gravity/local/trustedclusters/ops.example.com";
    let before = env.sim.inspect().unwrap();
    assert!(before.etcd_data[role_key].contains("assignKubernetesGroups"));
    assert!(!before.etcd_data.contains_key(tc_key));

    env.engine.resume().await.unwrap();
    let after = env.sim.inspect().unwrap();
    let role: serde_json::Value = serde_json::from_str(&after.etcd_data[role_key]).unwrap();
    assert_eq!(
        role["spec"]["allow"]["kubernetes_groups"],
        serde_json::json!(["admin"])
    );
    assert!(!after.etcd_data[role_key].contains("assignKubernetesGroups"));
    let tc: serde_json::Value = serde_json::from_str(&after.etcd_data[tc_key]).unwrap();
    assert_eq!(tc["proxy_address"], "ops.example.com:32009");
    assert_eq!(tc["enabled"], true);
    // No ConfigMaps any more.
    assert!(
        env.sim
            .state()
            .unwrap()
            .kube
            .config_maps
            .keys()
            .all(|k| !k.contains("trusted"))
    );

    // Rolling back the migrations alone puts back the keys they wrote.
    for p in ["/migration/roles", "/migration/links"] {
        let p = gravity_plan::PhasePath::parse(p).unwrap();
        env.engine.rollback(&p, true).await.unwrap();
    }
    let back = env.sim.inspect().unwrap();
    assert_eq!(back.etcd_data[role_key], before.etcd_data[role_key]);
    assert!(
        !back.etcd_data.contains_key(tc_key),
        "{:?}",
        back.etcd_data.get(tc_key)
    );
    let names = gravity_upgrade::phases::links::trusted_clusters(&env.sim.backends())
        .await
        .unwrap();
    assert!(names.is_empty(), "{names:?}");
    // Executed again, the migrations find the same work.
    for p in ["/migration/links", "/migration/roles"] {
        let p = gravity_plan::PhasePath::parse(p).unwrap();
        env.engine.execute(&p, true).await.unwrap();
    }
    assert_eq!(env.sim.inspect().unwrap().etcd_data, after.etcd_data);

    // The whole plan rolled back: the cluster is as before (etcd goes
    // back to the data dir of the installed version).
    env.engine.rollback_plan(false).await.unwrap();
    assert_eq!(
        env.sim.inspect().unwrap().without_pods(),
        before.without_pods()
    );
}

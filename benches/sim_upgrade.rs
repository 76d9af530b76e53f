//! An upgrade of a simulated cluster of 3 masters and 1,000 workers
//! (`GRAVITY_BENCH_SIM_WORKERS` changes the count), through the real
//! phases, the simulated backends and the durable plan store.
//!
//! A whole upgrade of 3+1,000 nodes is about 10,000 leaves, and each node
//! brings its own package store (created when the cluster is, written by
//! the bootstrap, system-upgrade and cleanup phases, every change synced):
//! a single run takes minutes, too long for criterion's 10 samples. So the
//! default measurement is sampled: one cluster is prepared (not timed),
//! and each sample executes the next `GRAVITY_BENCH_SIM_LEAVES` leaves
//! (100 by default) of its plan, in plan order, one `execute` per leaf, on
//! the full-size cluster. What it measures is the cost per leaf at that
//! cluster size (which must not grow with the cluster), for the leaves the
//! samples reach: the start of the plan (`/init`, `/checks`,
//! `/pre-update`, then `/bootstrap` of one node after another).
//!
//! `GRAVITY_BENCH_SIM_FULL=1` measures whole upgrades instead (workers
//! upgraded 8 at a time, each sample one upgrade from a fresh cluster,
//! set-up not timed): for smaller counts (`GRAVITY_BENCH_SIM_WORKERS=100`).
//!
//! Next to it, the same plan run with no-op executors on the same kind of
//! store gives the engine's own share (per leaf), so the printed split says
//! how much of the wall time is engine and store, and how much is the
//! simulated cluster doing the work.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::TimeZone;
use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use gravity::pack::NoProgress;
use gravity::pack::image::{ImportOptions, import_image};
use gravity::pack::location::{StoreSelector, open_store};
use gravity::plan::{
    Engine, EngineConfig, ExecutorRegistry, FileStore, NoopExecutor, PhasePath, PlanGraph,
    PlanStore,
};
use gravity::upgrade::phases::registry;
use gravity::upgrade::sim::{SimSpec, SimulatedCluster};
use gravity::upgrade::{BuildOptions, build_plan, executors, synthetic_upgrade};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn workers() -> usize {
    env_usize("GRAVITY_BENCH_SIM_WORKERS", 1_000)
}

fn opts() -> BuildOptions {
    BuildOptions::deterministic(
        "bench-sim-upgrade",
        chrono::Utc.timestamp_opt(1_596_339_382, 0).unwrap(),
    )
    .with_parallel_workers(8)
}

/// A fresh simulated cluster with the target uploaded and the operation
/// created; returns the engine ready to run and the leaves in plan order.
async fn prepare(dir: &std::path::Path, n: usize) -> (Engine, Vec<PhasePath>) {
    let (cluster, target) = synthetic_upgrade(3, n);
    let sim = SimulatedCluster::init(dir, SimSpec::for_cluster(cluster.clone())).unwrap();
    sim.deploy_agents().unwrap();
    let image = dir.join("image.tar");
    sim.write_image(&target, &image).unwrap();
    {
        let cs = open_store(dir, &StoreSelector::Cluster).unwrap();
        import_image(&cs, &image, ImportOptions::default(), &NoProgress).unwrap();
    }
    let plan = build_plan(&cluster, &target, &opts()).unwrap().into_plan();
    let graph = PlanGraph::build(plan.clone()).unwrap();
    let leaves = graph
        .leaves()
        .iter()
        .map(|&ix| graph.node(ix).path().clone())
        .collect();
    let store: Arc<dyn PlanStore> = Arc::new(FileStore::open(dir.join("plans")).unwrap());
    store.create_operation(&plan).await.unwrap();
    let engine = Engine::open(
        store,
        &plan.operation_id,
        EngineConfig::new(registry(sim.backends())),
    )
    .await
    .unwrap();
    (engine, leaves)
}

/// The same plan with no-op executors on a durable store: the engine's and
/// the store's own cost for the whole plan.
async fn engine_only(dir: &std::path::Path, n: usize) -> Duration {
    let (cluster, target) = synthetic_upgrade(3, n);
    let plan = build_plan(&cluster, &target, &opts()).unwrap().into_plan();
    let store: Arc<dyn PlanStore> = Arc::new(FileStore::open(dir.join("noop-plans")).unwrap());
    store.create_operation(&plan).await.unwrap();
    let mut reg = ExecutorRegistry::new();
    for kind in executors::ALL {
        reg.register(*kind, NoopExecutor);
    }
    let e = Engine::open(store, &plan.operation_id, EngineConfig::new(reg))
        .await
        .unwrap();
    let t = Instant::now();
    e.resume().await.unwrap();
    t.elapsed()
}

fn report(what: &str, n: usize, plan_leaves: usize, leaves: usize, took: Duration, noop: Duration) {
    let per_leaf = took.as_secs_f64() * 1e6 / leaves as f64;
    let noop_leaf = noop.as_secs_f64() * 1e6 / plan_leaves as f64;
    eprintln!(
        "sim_upgrade 3m+{n}w ({plan_leaves} leaves): {what}: {leaves} leaves in {:.2} s \
         ({per_leaf:.0} µs per leaf); engine + durable store alone {:.2} s for the whole plan \
         ({noop_leaf:.0} µs per leaf, {:.0}% of the per-leaf time)",
        took.as_secs_f64(),
        noop.as_secs_f64(),
        100.0 * noop_leaf / per_leaf,
    );
}

fn sim_upgrade(c: &mut Criterion) {
    let n = workers();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("sim_upgrade");
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    if std::env::var_os("GRAVITY_BENCH_SIM_FULL").is_some() {
        g.measurement_time(Duration::from_secs(60));
        let mut last: Option<(usize, Duration, Duration)> = None;
        g.bench_function(format!("3m+{n}w_parallel8_full"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let dir = tempfile::tempdir().unwrap();
                    let (engine, leaves) = rt.block_on(prepare(dir.path(), n));
                    let t = Instant::now();
                    rt.block_on(engine.resume()).unwrap();
                    let took = t.elapsed();
                    total += took;
                    let noop = rt.block_on(engine_only(dir.path(), n));
                    last = Some((leaves.len(), took, noop));
                }
                total
            })
        });
        g.finish();
        if let Some((leaves, took, noop)) = last {
            report("last whole upgrade", n, leaves, leaves, took, noop);
        }
        return;
    }
    let fresh = || {
        let dir = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let (engine, leaves) = rt.block_on(prepare(dir.path(), n));
        eprintln!(
            "sim_upgrade 3m+{n}w: cluster of {} nodes prepared in {:.1} s (not timed)",
            n + 3,
            t.elapsed().as_secs_f64()
        );
        (dir, engine, leaves)
    };
    let (mut dir, mut engine, leaves) = fresh();
    // Warm-up and 10 samples fit in one plan, mostly.
    let per_sample = env_usize("GRAVITY_BENCH_SIM_LEAVES", (leaves.len() / 16).min(100)).max(1);
    let mut next = 0usize;
    let mut timed = (0usize, Duration::ZERO);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function(format!("3m+{n}w_per_{per_sample}_leaves"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                if next + per_sample > leaves.len() {
                    // The plan is done: start again on a fresh cluster.
                    (dir, engine, _) = fresh();
                    next = 0;
                }
                let t = Instant::now();
                for p in &leaves[next..next + per_sample] {
                    rt.block_on(engine.execute(p, false)).unwrap();
                }
                let took = t.elapsed();
                next += per_sample;
                timed.0 += per_sample;
                timed.1 += took;
                total += took;
            }
            total
        })
    });
    g.finish();
    let noop = rt.block_on(engine_only(dir.path(), n));
    report(
        &format!("sampled, leaves 1..={next} executed one by one"),
        n,
        leaves.len(),
        timed.0,
        timed.1,
        noop,
    );
}

criterion_group!(benches, sim_upgrade);
criterion_main!(benches);

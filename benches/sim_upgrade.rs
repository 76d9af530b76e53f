//! A full upgrade of a simulated cluster of 3 masters and 1,000 workers
//! (`GRAVITY_BENCH_SIM_WORKERS` changes the count), workers upgraded 8 at
//! a time, through the real phases, the simulated backends and the durable
//! plan store.
//!
//! Each sample is one whole upgrade from a fresh simulated cluster (set-up
//! not timed). Next to it, the same plan run with no-op executors on the
//! same kind of store gives the engine's own share (per leaf), so the
//! printed split says how much of the wall time is engine and store, and
//! how much is the simulated cluster doing the work.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::TimeZone;
use criterion::{Criterion, criterion_group, criterion_main};
use gravity::pack::NoProgress;
use gravity::pack::image::{ImportOptions, import_image};
use gravity::pack::location::{StoreSelector, open_store};
use gravity::plan::{Engine, EngineConfig, ExecutorRegistry, FileStore, NoopExecutor, PlanStore};
use gravity::upgrade::phases::registry;
use gravity::upgrade::sim::{SimSpec, SimulatedCluster};
use gravity::upgrade::{BuildOptions, build_plan, executors, synthetic_upgrade};

fn workers() -> usize {
    std::env::var("GRAVITY_BENCH_SIM_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
}

fn opts() -> BuildOptions {
    BuildOptions::deterministic(
        "bench-sim-upgrade",
        chrono::Utc.timestamp_opt(1_596_339_382, 0).unwrap(),
    )
    .with_parallel_workers(8)
}

/// A fresh simulated cluster with the target uploaded and the operation
/// created; returns the engine ready to run and the leaf count.
async fn prepare(dir: &std::path::Path, n: usize) -> (Engine, usize) {
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
    let leaves = gravity::plan::PlanGraph::build(plan.clone())
        .unwrap()
        .leaves()
        .len();
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
/// the store's own cost.
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

fn sim_upgrade(c: &mut Criterion) {
    let n = workers();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("sim_upgrade");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(60));
    let mut report: Option<(usize, Duration, Duration)> = None;
    g.bench_function(format!("3m+{n}w_parallel8"), |b| {
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
                report = Some((leaves, took, noop));
            }
            total
        })
    });
    g.finish();
    if let Some((leaves, took, noop)) = report {
        eprintln!(
            "sim_upgrade 3m+{n}w: {leaves} leaves; last run {:.2} s wall ({:.0} µs per leaf); \
             engine + durable store alone {:.2} s ({:.0} µs per leaf, {:.0}% of the run)",
            took.as_secs_f64(),
            took.as_secs_f64() * 1e6 / leaves as f64,
            noop.as_secs_f64(),
            noop.as_secs_f64() * 1e6 / leaves as f64,
            100.0 * noop.as_secs_f64() / took.as_secs_f64(),
        );
    }
}

criterion_group!(benches, sim_upgrade);
criterion_main!(benches);

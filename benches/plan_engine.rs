//! Benches of the plan engine on upgrade plans built by the real plan
//! builder (`gravity_upgrade::synthetic_plan`): 3 masters + N workers and
//! N masters, N = 10, 100, 1,000, 10,000.
//!
//! Per size: build + validate the `PlanGraph`; resolve the state from a
//! changelog with one entry per leaf; render the text table; the rollback
//! dependents check on the first and the last leaf; a full run with no-op
//! executors on the in-memory store (engine cost per leaf), and on the
//! durable file store next to a bare `fdatasync` of a small append.
//! `GRAVITY_BENCH_MAX_N` caps the sizes (default 10000).

use std::hint::black_box;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gravity::plan::{
    Actor, Engine, EngineConfig, ExecutorRegistry, FileStore, MemoryStore, NoopExecutor,
    PhaseChange, PhaseState, Plan, PlanGraph, PlanStore, PlanView, render,
};
use gravity::upgrade::{BuildOptions, executors, synthetic_plan};

fn max_n() -> usize {
    std::env::var("GRAVITY_BENCH_MAX_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn sizes() -> Vec<usize> {
    [10, 100, 1_000, 10_000]
        .into_iter()
        .filter(|&n| n <= max_n())
        .collect()
}

/// (label, plan) for both shapes at size n.
fn plans(n: usize) -> Vec<(String, Plan)> {
    let opts =
        BuildOptions::deterministic("bench", Utc.with_ymd_and_hms(2020, 7, 31, 6, 0, 0).unwrap())
            .with_parallel_workers(8);
    vec![
        (
            format!("3m+{n}w"),
            synthetic_plan(3, n, &opts).expect("plan builds").plan,
        ),
        (
            format!("{n}m"),
            synthetic_plan(n, 0, &opts).expect("plan builds").plan,
        ),
    ]
}

fn completed_changelog(graph: &PlanGraph) -> Vec<PhaseChange> {
    let t = Utc.with_ymd_and_hms(2020, 7, 31, 7, 0, 0).unwrap();
    graph
        .leaves()
        .iter()
        .enumerate()
        .map(|(i, &l)| PhaseChange {
            seq: i as u64 + 1,
            id: Default::default(),
            phase: graph.node(l).path().clone(),
            state: PhaseState::Completed,
            time: t,
            error: None,
            actor: Actor {
                host: "bench".into(),
                pid: 1,
            },
        })
        .collect()
}

fn noop_registry() -> ExecutorRegistry {
    let mut r = ExecutorRegistry::new();
    for kind in executors::ALL {
        r.register(*kind, NoopExecutor);
    }
    r
}

/// Creates the plan's operation in `store`, opens an engine on it with
/// no-op executors, resumes it to the end, and returns the engine and the
/// time the run took (creation and loading excluded).
async fn full_run(store: Arc<dyn PlanStore>, plan: &Plan) -> (Engine, Duration) {
    store.create_operation(plan).await.unwrap();
    let e = Engine::open(
        store,
        &plan.operation_id,
        EngineConfig::new(noop_registry()),
    )
    .await
    .unwrap();
    let t = Instant::now();
    e.resume().await.unwrap();
    let elapsed = t.elapsed();
    (e, elapsed)
}

fn graph_benches(c: &mut Criterion) {
    for n in sizes() {
        for (label, plan) in plans(n) {
            let graph = PlanGraph::build(plan.clone()).unwrap();
            eprintln!(
                "plan {label}: {} phases, {} leaves",
                graph.len(),
                graph.leaves().len()
            );
            let mut g = c.benchmark_group(format!("plan/{label}"));
            g.sample_size(10);
            g.bench_function("build", |b| {
                b.iter_batched(
                    || plan.clone(),
                    |p| black_box(PlanGraph::build(p).unwrap()),
                    criterion::BatchSize::LargeInput,
                )
            });
            let changes = completed_changelog(&graph);
            g.bench_function("resolve", |b| {
                b.iter(|| black_box(PlanView::resolve(graph.clone(), &changes)))
            });
            let view = PlanView::resolve(graph.clone(), &changes);
            g.bench_function("render_text", |b| b.iter(|| black_box(render::text(&view))));
            g.finish();
        }
    }
}

fn run_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    for n in sizes() {
        for (label, plan) in plans(n) {
            let leaves = PlanGraph::build(plan.clone()).unwrap().leaves().len();
            let mut g = c.benchmark_group(format!("run/{label}"));
            g.sample_size(10);
            g.throughput(criterion::Throughput::Elements(leaves as u64));
            g.bench_function(BenchmarkId::new("memory_full_run", leaves), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for i in 0..iters {
                        let mut p = plan.clone();
                        p.operation_id = format!("op-{i}");
                        total += rt.block_on(full_run(Arc::new(MemoryStore::new()), &p)).1;
                    }
                    total
                })
            });
            // Dependents check on the first and the last leaf of a
            // completed plan (the first has nearly the whole plan as
            // dependents).
            let (engine, _) = rt.block_on(full_run(Arc::new(MemoryStore::new()), &plan));
            let first = engine.graph().leaves()[0];
            let last = *engine.graph().leaves().last().unwrap();
            g.bench_function("dependents_first_leaf", |b| {
                b.iter(|| black_box(engine.live_dependents(first)))
            });
            g.bench_function("dependents_last_leaf", |b| {
                b.iter(|| black_box(engine.live_dependents(last)))
            });
            if n <= 100 {
                g.bench_function(BenchmarkId::new("durable_full_run", leaves), |b| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for i in 0..iters {
                            let dir = tempfile::tempdir_in(".").unwrap();
                            let mut p = plan.clone();
                            p.operation_id = format!("op-{i}");
                            let store = Arc::new(FileStore::open(dir.path()).unwrap());
                            total += rt.block_on(full_run(store, &p)).1;
                        }
                        total
                    })
                });
            }
            g.finish();
        }
    }
}

/// The floor for a durable state change: a small append plus fdatasync,
/// in the same directory the durable runs use.
fn fdatasync_floor(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(".").unwrap();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("log"))
        .unwrap();
    let record = [b'x'; 200];
    c.bench_function("fdatasync_small_append", |b| {
        b.iter(|| {
            f.write_all(&record).unwrap();
            f.sync_data().unwrap();
        })
    });
}

criterion_group!(benches, graph_benches, run_benches, fdatasync_floor);
criterion_main!(benches);

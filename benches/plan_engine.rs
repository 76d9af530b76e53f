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
//!
//! After the criterion benches a report is printed (stderr, lines starting
//! with `report:`):
//! - the engine cost per leaf of a full in-memory run at every size (median
//!   of several runs) and its flatness (per leaf at N over per leaf at 100);
//! - durable full runs on `FileStore` up to `GRAVITY_BENCH_DURABLE_MAX_N`
//!   (default 1000), each between two measurements of the floor (a bare
//!   200-byte `write` + `fdatasync` in the same directory), with the
//!   store's own count of frames (one `fdatasync` each) per change;
//! - peak memory (`VmHWM`) of building, resolving and rendering each plan,
//!   and of a full in-memory run, each in a fresh child process (this
//!   binary, re-run with `GRAVITY_BENCH_MEMORY_CHILD`).
//!
//! The disk's `fdatasync` latency moves with whatever else writes to it, so
//! durable figures are only compared with the floor measured right around
//! them.

use std::hint::black_box;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use criterion::{BenchmarkId, Criterion, criterion_group};
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
    vec![plan_of(true, n), plan_of(false, n)]
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

/// Fewer, equal samples for the big sizes so that a run stays in minutes.
fn size_group<'a>(
    c: &'a mut Criterion,
    name: String,
    n: usize,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10);
    if n >= 1_000 {
        g.sampling_mode(criterion::SamplingMode::Flat);
        g.warm_up_time(Duration::from_secs(1));
        g.measurement_time(Duration::from_secs(if n >= 10_000 { 8 } else { 4 }));
    }
    g
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
            let mut g = size_group(c, format!("plan/{label}"), n);
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
            let mut g = size_group(c, format!("run/{label}"), n);
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
            // Bigger durable runs are in the report (one run each).
            if n <= 10 {
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

/// Mean time of `count` bare 200-byte appends each followed by
/// `fdatasync`, in a fresh file in `dir`: the floor of a durable change.
fn floor(dir: &std::path::Path, count: usize) -> Duration {
    let path = dir.join("floor");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    f.sync_all().unwrap();
    let record = [b'x'; 200];
    let t = Instant::now();
    for _ in 0..count {
        f.write_all(&record).unwrap();
        f.sync_data().unwrap();
    }
    let d = t.elapsed() / count as u32;
    drop(f);
    std::fs::remove_file(&path).unwrap();
    d
}

fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// Engine cost per leaf of full in-memory runs (median of `runs`), and
/// how flat it stays from 100 to 10,000.
fn memory_report(rt: &tokio::runtime::Runtime) {
    let mut at_100: Vec<(String, Duration)> = Vec::new();
    for n in sizes() {
        for (label, plan) in plans(n) {
            let leaves = PlanGraph::build(plan.clone()).unwrap().leaves().len();
            let runs = if n >= 10_000 { 3 } else { 7 };
            let per_leaf = median(
                (0..runs)
                    .map(|i| {
                        let mut p = plan.clone();
                        p.operation_id = format!("op-{i}");
                        rt.block_on(full_run(Arc::new(MemoryStore::new()), &p)).1 / leaves as u32
                    })
                    .collect(),
            );
            let shape_key = if label.starts_with("3m+") {
                "3m+Nw".to_string()
            } else {
                "Nm".to_string()
            };
            if n == 100 {
                at_100.push((shape_key.clone(), per_leaf));
            }
            let flat = at_100
                .iter()
                .find(|(k, _)| *k == shape_key)
                .map(|(_, d)| {
                    format!(
                        ", {:.2}x the per-leaf cost at N=100",
                        per_leaf.as_secs_f64() / d.as_secs_f64()
                    )
                })
                .unwrap_or_default();
            eprintln!(
                "report: memory full run {label}: {leaves} leaves, {} per leaf (median of {runs}){flat}",
                us(per_leaf)
            );
        }
    }
}

/// Durable full runs, each between two floor measurements in the same
/// directory; frames per change from the store's own counters.
fn durable_report(rt: &tokio::runtime::Runtime) {
    let max: usize = std::env::var("GRAVITY_BENCH_DURABLE_MAX_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    for n in sizes().into_iter().filter(|&n| n <= max) {
        for (label, plan) in plans(n) {
            let runs = if n >= 1_000 { 1 } else { 5 };
            let mut rows = Vec::new();
            for i in 0..runs {
                let dir = tempfile::tempdir_in(".").unwrap();
                let before = floor(dir.path(), 100);
                let store = Arc::new(FileStore::open(dir.path().join("store")).unwrap());
                let mut p = plan.clone();
                p.operation_id = format!("op-{i}");
                let (_, wall) = rt.block_on(full_run(store.clone(), &p));
                let stats = store.commit_stats();
                let after = floor(dir.path(), 100);
                rows.push((wall, stats, (before + after) / 2));
            }
            let changes = rows[0].1.changes;
            let frames = rows[0].1.frames;
            let per_change = median(rows.iter().map(|r| r.0 / r.1.changes as u32).collect());
            let per_frame = median(rows.iter().map(|r| r.0 / r.1.frames as u32).collect());
            let sync = median(
                rows.iter()
                    .map(|r| r.1.sync_time / r.1.frames as u32)
                    .collect(),
            );
            let outside = median(
                rows.iter()
                    .map(|r| r.0.saturating_sub(r.1.sync_time) / r.1.changes as u32)
                    .collect(),
            );
            let fl = median(rows.iter().map(|r| r.2).collect());
            let ratio_change = median(
                rows.iter()
                    .map(|r| (r.0 / r.1.changes as u32).as_secs_f64() / r.2.as_secs_f64())
                    .collect(),
            );
            let ratio_frame = median(
                rows.iter()
                    .map(|r| (r.0 / r.1.frames as u32).as_secs_f64() / r.2.as_secs_f64())
                    .collect(),
            );
            eprintln!(
                "report: durable full run {label}: {changes} changes in {frames} fdatasyncs ({:.2} syncs per change); wall {} per change ({ratio_change:.2}x floor), {} per sync ({ratio_frame:.2}x floor); fdatasync inside the store {}; time outside fdatasync {} per change; floor (write+fdatasync, around the run) {} (median of {runs})",
                frames as f64 / changes as f64,
                us(per_change),
                us(per_frame),
                us(sync),
                us(outside),
                us(fl),
            );
        }
    }
}

fn vm_kib(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

const MEMORY_CHILD: &str = "GRAVITY_BENCH_MEMORY_CHILD";

/// In a fresh process: peak memory of building, resolving and rendering
/// one plan, then of a full in-memory run of it. With
/// `GRAVITY_BENCH_MEMORY_STEPS=1` it also prints, to stderr, the resident
/// size after each step.
fn memory_child(spec: &str) {
    let (shape, n) = spec.split_once(':').unwrap();
    let n: usize = n.parse().unwrap();
    let steps = std::env::var("GRAVITY_BENCH_MEMORY_STEPS").is_ok_and(|v| v == "1");
    let step = |what: &str| {
        if steps {
            eprintln!(
                "step {what}: VmRSS {:.1} MiB, VmHWM {:.1} MiB",
                vm_kib("VmRSS:") as f64 / 1024.0,
                vm_kib("VmHWM:") as f64 / 1024.0
            );
        }
    };
    let start = vm_kib("VmHWM:");
    let (label, plan) = plan_of(shape == "workers", n);
    step("plan built");
    let phases = count_phases(&plan.phases);
    let graph = PlanGraph::build(plan).unwrap();
    step(&format!(
        "graph built ({phases} phases, {} leaves)",
        graph.leaves().len()
    ));
    let changes = completed_changelog(&graph);
    step("changelog");
    let view = PlanView::resolve(graph.clone(), &changes);
    step("resolved");
    let text = render::text(&view);
    black_box(&text);
    step("rendered");
    let built = vm_kib("VmHWM:");
    drop((text, view, changes, graph));
    let (_, plan) = plan_of(shape == "workers", n);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (engine, _) = rt.block_on(full_run(Arc::new(MemoryStore::new()), &plan));
    step("full run");
    drop(engine);
    let run = vm_kib("VmHWM:");
    println!(
        "{label} {:.1} {:.1} {:.1}",
        start as f64 / 1024.0,
        built as f64 / 1024.0,
        run as f64 / 1024.0
    );
}

/// One of [`plans`]: 3 masters + n workers, or n masters.
fn plan_of(workers: bool, n: usize) -> (String, Plan) {
    let opts =
        BuildOptions::deterministic("bench", Utc.with_ymd_and_hms(2020, 7, 31, 6, 0, 0).unwrap())
            .with_parallel_workers(8);
    if workers {
        (
            format!("3m+{n}w"),
            synthetic_plan(3, n, &opts).expect("plan builds").plan,
        )
    } else {
        (
            format!("{n}m"),
            synthetic_plan(n, 0, &opts).expect("plan builds").plan,
        )
    }
}

fn count_phases(phases: &[gravity::plan::Phase]) -> usize {
    phases.iter().map(|p| 1 + count_phases(&p.phases)).sum()
}

fn memory_peak_report() {
    for n in sizes() {
        for shape in ["workers", "masters"] {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .env(MEMORY_CHILD, format!("{shape}:{n}"))
                .output()
                .unwrap();
            let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 4 {
                eprintln!(
                    "report: peak memory {}: VmHWM {} MiB at start, {} MiB after plan build + graph + resolve + render text, {} MiB after a full in-memory run",
                    f[0], f[1], f[2], f[3]
                );
            } else {
                eprintln!(
                    "report: peak memory {shape}:{n}: child failed: {line} {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

fn reports(_c: &mut Criterion) {
    let args: Vec<String> = std::env::args().collect();
    if std::env::var("GRAVITY_BENCH_REPORT").is_ok_and(|v| v == "0")
        || args.iter().any(|a| a == "--test" || a == "--list")
    {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    memory_report(&rt);
    durable_report(&rt);
    memory_peak_report();
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

criterion_group!(
    benches,
    graph_benches,
    run_benches,
    fdatasync_floor,
    reports
);

fn main() {
    if let Ok(spec) = std::env::var(MEMORY_CHILD) {
        memory_child(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

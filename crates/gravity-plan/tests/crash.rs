//! Crash safety: a child process running `resume` on a multi-phase plan is
//! killed with SIGKILL at random moments, 50 times. After every kill the
//! plan must load from a fresh [`FileStore`], no phase the child saw
//! complete durably may be lost (or run again), and the next resume picks up
//! where the last one died. A final resume completes the plan.
//!
//! The child is this test binary run again with `GRAVITY_CRASH_CHILD` set
//! to the state directory. Set `GRAVITY_CRASH_SEED` to replay a run.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::DateTime;
use gravity_plan::{
    Engine, EngineConfig, Event, ExecError, ExecutorRegistry, FileStore, Phase, PhaseContext,
    PhaseExecutor, PhasePath, PhaseState, Plan, PlanStore, ProgressSink,
};

const CHILD_ENV: &str = "GRAVITY_CRASH_CHILD";
const SEED_ENV: &str = "GRAVITY_CRASH_SEED";
const TEST_NAME: &str = "crash_resume_after_sigkill";
const OP_ENV: &str = "GRAVITY_CRASH_OP";
const ITERATIONS: usize = 50;
const NODES: usize = 16;
const APPS: usize = 11;
const LEAVES: usize = 3 + 9 + 2 * NODES + APPS + 2;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn leaf(path: &str) -> Phase {
    let mut p = Phase::new(PhasePath::parse(path).unwrap(), path);
    p.executor = Some("work".into());
    p
}

fn group(path: &str, kids: Vec<Phase>, parallel: usize, requires: &[&str]) -> Phase {
    let mut p = Phase::new(PhasePath::parse(path).unwrap(), path);
    p.phases = kids;
    p.parallel = parallel;
    p.requires = requires
        .iter()
        .map(|r| PhasePath::parse(r).unwrap())
        .collect();
    p
}

/// 60 leaves: a sequential start, two parallel groups (one with
/// requirements between siblings), a sequential tail.
fn plan(op: &str) -> Plan {
    let init = group(
        "/init",
        ["a", "b", "c"]
            .iter()
            .map(|s| leaf(&format!("/init/{s}")))
            .collect(),
        1,
        &[],
    );
    let masters = group(
        "/masters",
        (1..=3)
            .map(|m| {
                group(
                    &format!("/masters/m{m}"),
                    ["drain", "upgrade", "uncordon"]
                        .iter()
                        .map(|s| leaf(&format!("/masters/m{m}/{s}")))
                        .collect(),
                    1,
                    &[],
                )
            })
            .collect(),
        3,
        &["/init"],
    );
    let nodes = group(
        "/nodes",
        (1..=NODES)
            .map(|n| {
                // Every other node waits for the one before it.
                let prev = format!("/nodes/n{}", n - 1);
                let req: Vec<&str> = if n % 2 == 0 { vec![&prev] } else { vec![] };
                group(
                    &format!("/nodes/n{n}"),
                    ["drain", "upgrade"]
                        .iter()
                        .map(|s| leaf(&format!("/nodes/n{n}/{s}")))
                        .collect(),
                    1,
                    &req,
                )
            })
            .collect(),
        4,
        &["/masters"],
    );
    let apps = group(
        "/apps",
        (0..APPS).map(|i| leaf(&format!("/apps/app-{i}"))).collect(),
        1,
        &["/nodes"],
    );
    let finish = group(
        "/finish",
        vec![leaf("/finish/gc"), leaf("/finish/done")],
        1,
        &["/apps"],
    );
    Plan {
        operation_id: op.into(),
        operation_kind: "update".into(),
        cluster_name: "crash".into(),
        created: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        phases: vec![init, masters, nodes, apps, finish],
    }
}

fn marker_path(dir: &Path, phase: &PhasePath) -> PathBuf {
    dir.join("markers")
        .join(phase.as_str().trim_start_matches('/').replace('/', "_"))
}

/// Does a little real work: appends a line to the phase's marker file and
/// sleeps 0–20 ms.
struct Work {
    dir: PathBuf,
    rng: Mutex<XorShift>,
}

#[async_trait]
impl PhaseExecutor for Work {
    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let path = marker_path(&self.dir, ctx.path());
        let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
        writeln!(f, "{}", std::process::id())?;
        f.sync_data()?;
        let ms = self.rng.lock().unwrap().range(0, 20);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(())
    }

    async fn rollback(&self, _ctx: &PhaseContext) -> Result<(), ExecError> {
        Err("not expected".into())
    }
}

/// Appends every phase whose `completed` became durable to a side file.
struct SideFile(Mutex<File>);

impl ProgressSink for SideFile {
    fn event(&self, event: Event) {
        if let Event::StateChange {
            phase,
            state: PhaseState::Completed,
        } = event
        {
            let mut f = self.0.lock().unwrap();
            f.write_all(format!("{phase}\n").as_bytes()).unwrap();
            f.sync_data().unwrap();
        }
    }
}

fn registry(dir: &Path, seed: u64) -> ExecutorRegistry {
    let mut reg = ExecutorRegistry::new();
    reg.register(
        "work",
        Work {
            dir: dir.to_path_buf(),
            rng: Mutex::new(XorShift(seed)),
        },
    );
    reg
}

fn run_child(dir: &Path, op: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store: Arc<dyn PlanStore> = Arc::new(FileStore::open(dir.join("state")).unwrap());
        let side = OpenOptions::new()
            .create(true)
            .append(true)
            .open(side_path(dir, op))
            .unwrap();
        let seed = std::process::id() as u64 ^ now_nanos();
        let cfg = EngineConfig::new(registry(&dir.join(op), seed))
            .progress(Arc::new(SideFile(Mutex::new(side))));
        let engine = Engine::open(store, op, cfg).await.unwrap();
        let report = engine.resume().await.unwrap();
        println!("child {} finished: {report:?}", std::process::id());
    });
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn side_path(dir: &Path, op: &str) -> PathBuf {
    dir.join(format!("completed-{op}.txt"))
}

/// Complete lines of the side file (the child may die mid-line).
fn side_file(dir: &Path, op: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(side_path(dir, op)).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    complete.lines().map(str::to_string).collect()
}

fn marker_lines(dir: &Path, phase: &PhasePath) -> usize {
    std::fs::read_to_string(marker_path(dir, phase))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

struct Snapshot {
    states: BTreeMap<String, PhaseState>,
    completed: bool,
}

/// Loads an operation with a fresh store and checks the invariants.
/// `known` holds, per completed leaf, how often it had run by then.
async fn check(
    dir: &Path,
    op: &str,
    iteration: usize,
    known: &mut BTreeMap<String, usize>,
) -> Snapshot {
    let store: Arc<dyn PlanStore> = Arc::new(
        FileStore::open(dir.join("state"))
            .unwrap_or_else(|e| panic!("iteration {iteration}: store does not open: {e}")),
    );
    let engine = Engine::open(
        store.clone(),
        op,
        EngineConfig::new(ExecutorRegistry::new()),
    )
    .await
    .unwrap_or_else(|e| panic!("iteration {iteration}: plan {op} does not load: {e}"));
    let changes = store.changes(op, 0).await.unwrap();
    for (i, c) in changes.iter().enumerate() {
        assert_eq!(c.seq, i as u64 + 1, "iteration {iteration}: dense seqs");
    }
    let view = engine.view();
    let g = engine.graph().clone();
    let mut states = BTreeMap::new();
    for &l in g.leaves() {
        let path = g.node(l).path().clone();
        let key = format!("{op}:{path}");
        let st = view.state(l);
        assert!(
            matches!(
                st,
                PhaseState::Unstarted | PhaseState::InProgress | PhaseState::Completed
            ),
            "iteration {iteration}: {key} is {st}"
        );
        if st == PhaseState::Completed {
            let lines = marker_lines(&dir.join(op), &path);
            assert!(
                lines >= 1,
                "iteration {iteration}: {key} completed without its work"
            );
            // Once completed, a leaf is never executed again.
            let first = *known.entry(key.clone()).or_insert(lines);
            assert_eq!(
                lines, first,
                "iteration {iteration}: completed {key} was executed again"
            );
        } else {
            assert!(
                !known.contains_key(&key),
                "iteration {iteration}: {key} was completed and is now {st}"
            );
        }
        states.insert(path.to_string(), st);
    }
    for p in side_file(dir, op) {
        assert_eq!(
            states.get(&p),
            Some(&PhaseState::Completed),
            "iteration {iteration}: {op}:{p} was reported durably completed but is lost"
        );
    }
    Snapshot {
        states,
        completed: view.is_completed(),
    }
}

async fn create(dir: &Path, op: &str) {
    std::fs::create_dir_all(dir.join(op).join("markers")).unwrap();
    let store = FileStore::open(dir.join("state")).unwrap();
    gravity_plan::PlanGraph::build(plan(op)).unwrap();
    store.create_operation(&plan(op)).await.unwrap();
}

#[test]
fn crash_resume_after_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let op = std::env::var(OP_ENV).unwrap();
        run_child(Path::new(&dir), &op);
        return;
    }
    let started = Instant::now();
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(now_nanos);
    println!("crash test seed: {seed} (set {SEED_ENV} to replay)");
    let mut rng = XorShift(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Normally one operation outlives all the kills. Should a run finish
    // early, the next kills go to a new operation in the same store, so
    // every kill lands in a run; finished operations are checked on.
    let mut ops = vec!["crash-op-0".to_string()];
    rt.block_on(create(dir, &ops[0]));

    let exe = std::env::current_exe().unwrap();
    let mut known: BTreeMap<String, usize> = BTreeMap::new();
    let (mut killed_mid_run, mut in_progress_seen, mut progressed, mut torn) = (0, 0, 0, 0);
    for i in 0..ITERATIONS {
        let op = ops.last().unwrap().clone();
        let log = File::create(dir.join("child.log")).unwrap();
        let mut child = Command::new(&exe)
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir)
            .env(OP_ENV, &op)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.range(5, 150)));
        let _ = child.kill();
        let status = child.wait().unwrap();
        let log = std::fs::read_to_string(dir.join("child.log")).unwrap_or_default();
        if status.signal() != Some(9) {
            assert!(
                status.success(),
                "iteration {i}: child failed: {status}\n{log}"
            );
        }
        let before = known.len();
        for o in &ops {
            let snap = rt.block_on(check(dir, o, i, &mut known));
            if *o != op {
                assert!(
                    snap.completed,
                    "iteration {i}: finished {o} is no longer complete"
                );
                continue;
            }
            if status.signal() == Some(9) && !snap.completed {
                killed_mid_run += 1;
            }
            if snap.states.values().any(|s| *s == PhaseState::InProgress) {
                in_progress_seen += 1;
            }
        }
        let snap = rt.block_on(check(dir, &op, i, &mut known));
        if known.len() > before {
            progressed += 1;
        }
        if rng.range(0, 4) == 0 && !snap.completed {
            // What a writer killed in the middle of a frame leaves behind:
            // the next run must cut it off, and loading must ignore it.
            let mut f = OpenOptions::new()
                .append(true)
                .open(dir.join("state/operations").join(&op).join("changelog"))
                .unwrap();
            let mut torn_frame = 200u32.to_le_bytes().to_vec();
            torn_frame.extend((0..rng.range(0, 60)).map(|_| rng.next() as u8));
            f.write_all(&torn_frame).unwrap();
            torn += 1;
        }
        if snap.completed && i + 1 < ITERATIONS {
            let next = format!("crash-op-{}", ops.len());
            rt.block_on(create(dir, &next));
            ops.push(next);
        }
    }
    println!(
        "{ITERATIONS} kills over {} operation(s): {killed_mid_run} left the plan unfinished, {in_progress_seen} left a leaf in progress, {progressed} followed progress, {torn} torn frames added",
        ops.len()
    );
    // The children must really have worked (not died before doing anything).
    assert!(
        progressed >= 10,
        "children made progress in only {progressed} runs"
    );
    assert!(
        in_progress_seen >= 5,
        "only {in_progress_seen} kills hit a running leaf"
    );

    // A last resume, not killed, completes the plan.
    let op = ops.last().unwrap().clone();
    rt.block_on(async {
        let store: Arc<dyn PlanStore> = Arc::new(FileStore::open(dir.join("state")).unwrap());
        let engine = Engine::open(
            store,
            &op,
            EngineConfig::new(registry(&dir.join(&op), seed)),
        )
        .await
        .unwrap();
        engine.resume().await.unwrap();
    });
    for o in &ops {
        let snap = rt.block_on(check(dir, o, ITERATIONS, &mut known));
        assert!(snap.completed, "the final resume completes {o}");
        assert!(snap.states.values().all(|s| *s == PhaseState::Completed));
        assert_eq!(snap.states.len(), LEAVES);
    }
    assert_eq!(known.len(), LEAVES * ops.len());
    println!("crash test took {:?}", started.elapsed());
    assert!(
        killed_mid_run >= ITERATIONS / 2,
        "too few kills landed during a run ({killed_mid_run}); the test is not testing much"
    );
}

//! The move to `in_progress` is an atomic claim in the store: when two
//! processes (or two engines in one process) execute the same phase at the
//! same moment, exactly one runs it and the other gets a clear error naming
//! the winner.
//!
//! The multi-process test runs this test binary twice more, with
//! `GRAVITY_RACE_CHILD` set to the state directory; both children load the
//! operation, wait for a "go" file, and execute the same leaf.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use gravity_plan::{
    Actor, Engine, EngineConfig, EngineError, ExecError, ExecutorRegistry, FileStore, MemoryStore,
    Phase, PhaseContext, PhaseExecutor, PhasePath, PhaseState, Plan, PlanStore,
};

const CHILD_ENV: &str = "GRAVITY_RACE_CHILD";
const OP_ENV: &str = "GRAVITY_RACE_OP";
const BARRIER_ENV: &str = "GRAVITY_RACE_BARRIER";
const TEST_NAME: &str = "two_processes_race_for_one_phase";
const ROUNDS: usize = 10;

fn plan(op: &str) -> Plan {
    let mut prep = Phase::new(PhasePath::parse("/prep").unwrap(), "prep");
    prep.executor = Some("noop".into());
    let mut work = Phase::new(PhasePath::parse("/work").unwrap(), "the contested phase");
    work.executor = Some("race".into());
    Plan {
        operation_id: op.into(),
        operation_kind: "test".into(),
        cluster_name: "c".into(),
        created: Utc::now(),
        phases: vec![prep, work],
    }
}

fn work() -> PhasePath {
    PhasePath::parse("/work").unwrap()
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn count_files(dir: &Path, prefix: &str) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .count()
}

// ---------------------------------------------------------------------------
// Two processes
// ---------------------------------------------------------------------------

/// Appends its pid to `ran-<op>` and sleeps 300 ms. With the barrier, its
/// pre-check waits until both processes got there, so both read the phase
/// as unstarted before either claims it.
struct ProcessWork {
    dir: PathBuf,
    op: String,
    barrier: bool,
}

#[async_trait]
impl PhaseExecutor for ProcessWork {
    async fn pre_check(&self, _ctx: &PhaseContext) -> Result<(), ExecError> {
        if self.barrier {
            let prefix = format!("ready-{}-", self.op);
            std::fs::write(
                self.dir.join(format!("{prefix}{}", std::process::id())),
                b"",
            )?;
            let start = Instant::now();
            while count_files(&self.dir, &prefix) < 2 {
                if start.elapsed() > Duration::from_secs(20) {
                    return Err("the other process never reached the pre-check".into());
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        Ok(())
    }

    async fn execute(&self, _ctx: &PhaseContext) -> Result<(), ExecError> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("ran-{}", self.op)))?;
        writeln!(f, "{}", std::process::id())?;
        f.sync_data()?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(())
    }

    async fn rollback(&self, _ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(())
    }
}

fn run_child(dir: &Path) {
    let op = std::env::var(OP_ENV).unwrap();
    let barrier = std::env::var(BARRIER_ENV).as_deref() == Ok("1");
    let pid = std::process::id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let outcome = rt.block_on(async {
        let store: Arc<dyn PlanStore> = Arc::new(FileStore::open(dir.join("state")).unwrap());
        let mut reg = ExecutorRegistry::with_builtins();
        reg.register(
            "race",
            ProcessWork {
                dir: dir.to_path_buf(),
                op: op.clone(),
                barrier,
            },
        );
        let engine = Engine::open(store, &op, EngineConfig::new(reg))
            .await
            .unwrap();
        std::fs::write(dir.join(format!("loaded-{op}-{pid}")), b"").unwrap();
        let go = dir.join(format!("go-{op}"));
        wait_for("the go file", Duration::from_secs(30), || go.exists());
        engine.execute(&work(), false).await
    });
    let text = match &outcome {
        Ok(_) => "ok\n".to_string(),
        Err(e @ EngineError::Claimed { .. }) => format!("claimed\n{e}"),
        Err(e @ EngineError::InProgress { .. }) => format!("in_progress\n{e}"),
        Err(e) => format!("other\n{e:?}: {e}"),
    };
    let tmp = dir.join(format!(".result-{op}-{pid}"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(format!("result-{op}-{pid}"))).unwrap();
}

fn wait_child(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child {} did not finish", child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn two_processes_race_for_one_phase() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        run_child(Path::new(&dir));
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store: Arc<dyn PlanStore> = Arc::new(FileStore::open(dir.join("state")).unwrap());
    let exe = std::env::current_exe().unwrap();
    let (mut claimed, mut in_progress) = (0, 0);
    for round in 0..ROUNDS {
        let op = format!("race-{round}");
        // Even rounds: both processes meet in the pre-check, after reading
        // the phase as unstarted, so the store's compare-and-swap decides.
        // Odd rounds: a plain race.
        let barrier = round % 2 == 0;
        rt.block_on(store.create_operation(&plan(&op))).unwrap();
        let mut children: Vec<Child> = (0..2)
            .map(|k| {
                let log = std::fs::File::create(dir.join(format!("log-{op}-{k}"))).unwrap();
                Command::new(&exe)
                    .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
                    .env(CHILD_ENV, dir)
                    .env(OP_ENV, &op)
                    .env(BARRIER_ENV, if barrier { "1" } else { "0" })
                    .stdout(Stdio::from(log.try_clone().unwrap()))
                    .stderr(Stdio::from(log))
                    .spawn()
                    .unwrap()
            })
            .collect();
        wait_for("both children to load", Duration::from_secs(60), || {
            count_files(dir, &format!("loaded-{op}-")) == 2
        });
        std::fs::write(dir.join(format!("go-{op}")), b"").unwrap();
        let mut results = Vec::new();
        for (k, c) in children.iter_mut().enumerate() {
            let st = wait_child(c, Duration::from_secs(60));
            let log = std::fs::read_to_string(dir.join(format!("log-{op}-{k}"))).unwrap();
            assert!(st.success(), "child {k} of {op}: {st}\n{log}");
            let text = std::fs::read_to_string(dir.join(format!("result-{op}-{}", c.id())))
                .unwrap_or_else(|e| panic!("no result from child {k}: {e}\n{log}"));
            let (kind, msg) = text.split_once('\n').unwrap();
            results.push((c.id(), kind.to_string(), msg.to_string()));
        }
        let winners: Vec<_> = results.iter().filter(|r| r.1 == "ok").collect();
        assert_eq!(
            winners.len(),
            1,
            "{op}: exactly one process succeeds: {results:?}"
        );
        let winner = winners[0].0;
        let loser = results.iter().find(|r| r.0 != winner).unwrap();
        match loser.1.as_str() {
            "claimed" => claimed += 1,
            "in_progress" if !barrier => in_progress += 1,
            _ => panic!("{op} (barrier: {barrier}): the loser failed wrongly: {loser:?}"),
        }
        assert!(
            loser.2.contains(&format!("pid {winner} on ")),
            "{op}: the error must name the winning process (pid {winner}): {}",
            loser.2
        );
        let ran = std::fs::read_to_string(dir.join(format!("ran-{op}"))).unwrap();
        assert_eq!(
            ran.lines().collect::<Vec<_>>(),
            [winner.to_string()],
            "{op}: exactly one process ran the phase"
        );
        // The changelog holds the winner's claim and completion, nothing else.
        let changes = rt.block_on(store.changes(&op, 0)).unwrap();
        let states: Vec<(PhaseState, u32)> = changes
            .iter()
            .map(|c| {
                assert_eq!(c.phase, work());
                (c.state, c.actor.pid)
            })
            .collect();
        assert_eq!(
            states,
            [
                (PhaseState::InProgress, winner),
                (PhaseState::Completed, winner)
            ]
        );
    }
    println!(
        "{ROUNDS} rounds: the loser saw the claim {claimed} times, the phase in progress {in_progress} times"
    );
    assert!(
        claimed >= ROUNDS / 2,
        "the barrier rounds must end in a CAS conflict"
    );
}

// ---------------------------------------------------------------------------
// Two engines in one process
// ---------------------------------------------------------------------------

/// Counts runs; with a barrier, both engines meet in the pre-check.
struct InProcessWork {
    runs: AtomicUsize,
    barrier: Option<tokio::sync::Barrier>,
}

#[async_trait]
impl PhaseExecutor for InProcessWork {
    async fn pre_check(&self, _ctx: &PhaseContext) -> Result<(), ExecError> {
        if let Some(b) = &self.barrier {
            b.wait().await;
        }
        Ok(())
    }

    async fn execute(&self, _ctx: &PhaseContext) -> Result<(), ExecError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(())
    }

    async fn rollback(&self, _ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(())
    }
}

fn actor(host: &str, pid: u32) -> Actor {
    Actor {
        host: host.into(),
        pid,
    }
}

async fn engine(
    store: Arc<dyn PlanStore>,
    op: &str,
    exec: Arc<InProcessWork>,
    who: Actor,
) -> Engine {
    let mut reg = ExecutorRegistry::with_builtins();
    reg.register_arc("race", exec);
    Engine::open(store, op, EngineConfig::new(reg).actor(who))
        .await
        .unwrap()
}

/// Races two engines (each on its own store handle) for `/work`, `rounds`
/// times on fresh operations.
async fn race_in_process(stores: [Arc<dyn PlanStore>; 2], label: &str, barrier: bool) {
    for round in 0..ROUNDS {
        let op = format!("{label}-{barrier}-{round}");
        stores[0].create_operation(&plan(&op)).await.unwrap();
        let exec = Arc::new(InProcessWork {
            runs: AtomicUsize::new(0),
            barrier: barrier.then(|| tokio::sync::Barrier::new(2)),
        });
        let who = [actor("node-a", 1001), actor("node-b", 1002)];
        let a = engine(stores[0].clone(), &op, exec.clone(), who[0].clone()).await;
        let b = engine(stores[1].clone(), &op, exec.clone(), who[1].clone()).await;
        let w = work();
        let (ra, rb) = tokio::join!(a.execute(&w, false), b.execute(&w, false));
        assert_eq!(exec.runs.load(Ordering::SeqCst), 1, "{op}: exactly one run");
        let (winner, loser_err) = match (&ra, &rb) {
            (Ok(_), Err(e)) => (&who[0], e),
            (Err(e), Ok(_)) => (&who[1], e),
            _ => panic!("{op}: exactly one engine succeeds: {ra:?} / {rb:?}"),
        };
        match loser_err {
            EngineError::Claimed { phase, by } => {
                assert_eq!(phase, &work());
                assert_eq!(by, &winner.to_string());
            }
            EngineError::InProgress { phase, by } if !barrier => {
                assert_eq!(phase, &work());
                assert!(by.starts_with(&winner.to_string()), "{by}");
            }
            other => panic!("{op}: the loser failed wrongly: {other:?}"),
        }
        let msg = loser_err.to_string();
        assert!(msg.contains(&winner.to_string()), "{msg}");
        let changes = stores[1].changes(&op, 0).await.unwrap();
        let got: Vec<(PhaseState, Actor)> =
            changes.iter().map(|c| (c.state, c.actor.clone())).collect();
        assert_eq!(
            got,
            [
                (PhaseState::InProgress, winner.clone()),
                (PhaseState::Completed, winner.clone())
            ],
            "{op}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_race_on_one_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn PlanStore> = Arc::new(FileStore::open(dir.path()).unwrap());
    for barrier in [true, false] {
        race_in_process([store.clone(), store.clone()], "one-handle", barrier).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_race_on_two_file_store_handles() {
    let dir = tempfile::tempdir().unwrap();
    let a: Arc<dyn PlanStore> = Arc::new(FileStore::open(dir.path()).unwrap());
    let b: Arc<dyn PlanStore> = Arc::new(FileStore::open(dir.path()).unwrap());
    for barrier in [true, false] {
        race_in_process([a.clone(), b.clone()], "two-handles", barrier).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_race_on_a_memory_store() {
    let store: Arc<dyn PlanStore> = Arc::new(MemoryStore::new());
    for barrier in [true, false] {
        race_in_process([store.clone(), store.clone()], "memory", barrier).await;
    }
}

/// A whole-plan resume racing a single execute by another live process on
/// this host: the contested leaf runs once, whichever claims it first, and
/// the plan ends completed. (The other process is stood in for by an engine
/// whose actor is a real running process, `sleep`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_racing_execute_runs_the_leaf_once() {
    let dir = tempfile::tempdir().unwrap();
    let a: Arc<dyn PlanStore> = Arc::new(FileStore::open(dir.path()).unwrap());
    let b: Arc<dyn PlanStore> = Arc::new(FileStore::open(dir.path()).unwrap());
    let mut other = Command::new("sleep").arg("60").spawn().unwrap();
    let me = Actor::current();
    let them = Actor {
        host: me.host.clone(),
        pid: other.id(),
    };
    for round in 0..ROUNDS {
        let op = format!("resume-race-{round}");
        a.create_operation(&plan(&op)).await.unwrap();
        let exec = Arc::new(InProcessWork {
            runs: AtomicUsize::new(0),
            barrier: None,
        });
        let ea = engine(a.clone(), &op, exec.clone(), me.clone()).await;
        let eb = engine(b.clone(), &op, exec.clone(), them.clone()).await;
        let w = work();
        let (ra, rb) = tokio::join!(ea.resume(), eb.execute(&w, false));
        assert_eq!(
            exec.runs.load(Ordering::SeqCst),
            1,
            "{op}: the leaf ran more than once: {ra:?} / {rb:?}"
        );
        assert!(ra.is_ok() != rb.is_ok(), "{op}: {ra:?} / {rb:?}");
        for r in [ra.err(), rb.err()].into_iter().flatten() {
            assert!(
                matches!(
                    r,
                    EngineError::Claimed { .. } | EngineError::InProgress { .. }
                ),
                "{op}: {r:?}"
            );
        }
        // Afterwards the plan completes; nothing runs twice.
        ea.resume().await.unwrap();
        assert!(ea.view().is_completed());
        assert_eq!(exec.runs.load(Ordering::SeqCst), 1);
    }
    let _ = other.kill();
    let _ = other.wait();
}

// ---------------------------------------------------------------------------
// A resume next to a process that holds a phase
// ---------------------------------------------------------------------------

const HOLD_ENV: &str = "GRAVITY_HOLD_CHILD";
const HOLD_TEST: &str = "resume_leaves_a_phase_of_a_live_process_alone";

/// A child executes `/work` (which takes 2 s). While it runs, a resume in
/// this process must not take the phase over; once the child is killed,
/// the phase is abandoned and a resume runs it again.
#[test]
fn resume_leaves_a_phase_of_a_live_process_alone() {
    if let Ok(dir) = std::env::var(HOLD_ENV) {
        let dir = PathBuf::from(dir);
        let op = std::env::var(OP_ENV).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let store: Arc<dyn PlanStore> = Arc::new(FileStore::open(dir.join("state")).unwrap());
            let engine = Engine::open(store, &op, EngineConfig::new(slow_registry(&dir, &op)))
                .await
                .unwrap();
            engine.execute(&work(), false).await.unwrap();
        });
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store: Arc<dyn PlanStore> = Arc::new(FileStore::open(dir.join("state")).unwrap());
    let exe = std::env::current_exe().unwrap();
    let ran = |op: &str| {
        std::fs::read_to_string(dir.join(format!("ran-{op}")))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    for kill in [false, true] {
        let op = format!("hold-{kill}");
        rt.block_on(store.create_operation(&plan(&op))).unwrap();
        let mut child = Command::new(&exe)
            .args(["--exact", HOLD_TEST, "--nocapture", "--test-threads=1"])
            .env(HOLD_ENV, dir)
            .env(OP_ENV, &op)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(
            "the child to claim and start /work",
            Duration::from_secs(30),
            || {
                rt.block_on(store.changes(&op, 0))
                    .unwrap()
                    .iter()
                    .any(|c| c.state == PhaseState::InProgress)
                    && ran(&op).len() == 1
            },
        );
        let engine = rt
            .block_on(Engine::open(
                store.clone(),
                &op,
                EngineConfig::new(slow_registry(dir, &op)),
            ))
            .unwrap();
        if !kill {
            let err = rt.block_on(engine.resume()).unwrap_err();
            assert!(
                matches!(err, EngineError::InProgress { ref phase, .. } if *phase == work()),
                "{err:?}"
            );
            assert!(
                err.to_string().contains(&format!("pid {} on ", child.id())),
                "the error names the process: {err}"
            );
            assert!(wait_child(&mut child, Duration::from_secs(30)).success());
            assert_eq!(ran(&op), [child.id().to_string()]);
            // The child finished; the resume now completes the rest.
            let report = rt.block_on(engine.resume()).unwrap();
            assert_eq!(report.done, 0, "nothing left to run");
            assert_eq!(ran(&op).len(), 1);
        } else {
            child.kill().unwrap();
            child.wait().unwrap();
            // The holder is gone: the phase is abandoned and runs again.
            rt.block_on(engine.resume()).unwrap();
            assert_eq!(
                ran(&op),
                [child.id().to_string(), std::process::id().to_string()]
            );
        }
        assert!(engine.view().is_completed());
    }
}

/// `race` appends the pid to `ran-<op>` and takes 2 s.
fn slow_registry(dir: &Path, op: &str) -> ExecutorRegistry {
    struct Slow {
        file: PathBuf,
    }
    #[async_trait]
    impl PhaseExecutor for Slow {
        async fn execute(&self, _ctx: &PhaseContext) -> Result<(), ExecError> {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.file)?;
            writeln!(f, "{}", std::process::id())?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(())
        }
        async fn rollback(&self, _ctx: &PhaseContext) -> Result<(), ExecError> {
            Ok(())
        }
    }
    let mut reg = ExecutorRegistry::with_builtins();
    reg.register(
        "race",
        Slow {
            file: dir.join(format!("ran-{op}")),
        },
    );
    reg
}

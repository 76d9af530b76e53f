//! Property tests of the engine and the view on random valid plans.
//!
//! Plans are random trees (depth ≤ 4, a few dozen phases) with random
//! `requires` edges that point to phases earlier in pre-order and never to
//! an ancestor or a descendant, so every plan is valid and document order
//! is a valid execution order; some composites get a random `parallel`
//! limit. A test executor decides the outcome of every leaf from a table
//! the test controls, and checks from its own model of the plan (never the
//! engine's) that a leaf only runs once everything it requires has run, that
//! a composite never runs more children at once than its limit, and that a
//! completed leaf is never run again.
//!
//! The expected answers (dependents, rollback order, composite states) are
//! computed by simple brute-force code here, independent of the engine.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use gravity_plan::{
    Actor, Engine, EngineConfig, EngineError, ExecError, ExecutorRegistry, MemoryStore, NewChange,
    Phase, PhaseChange, PhaseContext, PhaseExecutor, PhasePath, PhaseState, Plan, PlanGraph,
    PlanStore, PlanView,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Random plans
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Shape {
    Leaf,
    Node(Vec<Shape>),
}

fn shape() -> impl Strategy<Value = Shape> {
    // Three levels of nesting below a top-level phase: depth ≤ 4.
    Just(Shape::Leaf).prop_recursive(3, 48, 4, |inner| {
        prop::collection::vec(inner, 1..6).prop_map(Shape::Node)
    })
}

/// Everything needed to build one random plan.
#[derive(Clone, Debug)]
struct Spec {
    tops: Vec<Shape>,
    /// Raw (requirer, required) pairs, reduced modulo the phase count and
    /// kept only when valid.
    reqs: Vec<(u16, u16)>,
    /// Per composite (in pre-order), an index into `PARALLEL`.
    par: Vec<u8>,
}

const PARALLEL: [usize; 5] = [1, 1, 2, 3, 8];

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop::collection::vec(shape(), 2..7),
        prop::collection::vec((any::<u16>(), any::<u16>()), 0..60),
        prop::collection::vec(0u8..5, 0..64),
    )
        .prop_map(|(tops, reqs, par)| Spec { tops, reqs, par })
}

/// The test's own model of a plan, in pre-order; index 0 is the root.
#[derive(Debug)]
struct Model {
    paths: Vec<String>,
    parent: Vec<Option<usize>>,
    children: Vec<Vec<usize>>,
    end: Vec<usize>,
    requires: Vec<Vec<usize>>,
    parallel: Vec<usize>,
    plan: Plan,
}

impl Model {
    fn build(spec: &Spec, op: &str) -> Model {
        let mut m = Model {
            paths: vec!["/".into()],
            parent: vec![None],
            children: vec![Vec::new()],
            end: vec![0],
            requires: vec![Vec::new()],
            parallel: vec![1],
            plan: Plan {
                operation_id: op.into(),
                operation_kind: "test".into(),
                cluster_name: "c".into(),
                created: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
                phases: Vec::new(),
            },
        };
        fn add(m: &mut Model, parent: usize, s: &Shape) {
            let ix = m.paths.len();
            let path = if parent == 0 {
                format!("/p{ix}")
            } else {
                format!("{}/p{ix}", m.paths[parent])
            };
            m.paths.push(path);
            m.parent.push(Some(parent));
            m.children.push(Vec::new());
            m.end.push(0);
            m.requires.push(Vec::new());
            m.parallel.push(1);
            m.children[parent].push(ix);
            if let Shape::Node(kids) = s {
                for k in kids {
                    add(m, ix, k);
                }
            }
            m.end[ix] = m.paths.len();
        }
        for t in &spec.tops {
            add(&mut m, 0, t);
        }
        let n = m.paths.len();
        m.end[0] = n;
        let mut composites = 0;
        for ix in 1..n {
            if !m.children[ix].is_empty() {
                let p = spec.par.get(composites).copied().unwrap_or(0) as usize;
                m.parallel[ix] = PARALLEL[p % PARALLEL.len()];
                composites += 1;
            }
        }
        // Random requirements: only to phases earlier in pre-order that are
        // neither ancestors nor descendants.
        if n > 2 {
            for &(a, b) in &spec.reqs {
                let q = 1 + a as usize % (n - 1);
                let r = 1 + b as usize % (n - 1);
                if r < q && !m.contains(r, q) && !m.requires[q].contains(&r) {
                    m.requires[q].push(r);
                }
            }
        }
        m.plan.phases = m.children[0].iter().map(|&c| m.phase(c)).collect();
        m
    }

    fn phase(&self, ix: usize) -> Phase {
        let mut p = Phase::new(PhasePath::parse(&self.paths[ix]).unwrap(), "");
        p.requires = self.requires[ix]
            .iter()
            .map(|&r| PhasePath::parse(&self.paths[r]).unwrap())
            .collect();
        p.parallel = self.parallel[ix];
        if self.children[ix].is_empty() {
            p.executor = Some("test".into());
        } else {
            p.phases = self.children[ix].iter().map(|&c| self.phase(c)).collect();
        }
        p
    }

    fn len(&self) -> usize {
        self.paths.len()
    }

    fn is_leaf(&self, ix: usize) -> bool {
        ix != 0 && self.children[ix].is_empty()
    }

    fn leaves(&self) -> Vec<usize> {
        (1..self.len()).filter(|&i| self.is_leaf(i)).collect()
    }

    /// Whether `a` is `b` or an ancestor of `b`.
    fn contains(&self, a: usize, b: usize) -> bool {
        let mut x = Some(b);
        while let Some(i) = x {
            if i == a {
                return true;
            }
            x = self.parent[i];
        }
        false
    }

    fn anc_or_self(&self, ix: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut x = Some(ix);
        while let Some(i) = x {
            out.push(i);
            x = self.parent[i];
        }
        out
    }

    fn leaves_under(&self, ix: usize) -> Vec<usize> {
        (ix..self.len())
            .filter(|&i| self.contains(ix, i) && self.is_leaf(i))
            .collect()
    }

    /// Leaves that must have completed before `leaf` may run: every leaf
    /// below a phase that the leaf or one of its ancestors requires.
    fn needs(&self, leaf: usize) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        for a in self.anc_or_self(leaf) {
            for &r in &self.requires[a] {
                out.extend(self.leaves_under(r));
            }
        }
        out
    }

    /// Brute force: `q` depends on `y` directly when `q` or one of its
    /// ancestors requires `y` or one of `y`'s ancestors.
    fn depends_directly(&self, q: usize, y: usize) -> bool {
        let targets = self.anc_or_self(y);
        self.anc_or_self(q)
            .iter()
            .any(|&a| self.requires[a].iter().any(|r| targets.contains(r)))
    }

    /// Brute force: every phase that depends on `x`, transitively.
    fn dependents(&self, x: usize) -> BTreeSet<usize> {
        let mut dep: BTreeSet<usize> = BTreeSet::new();
        loop {
            let mut grew = false;
            for q in 1..self.len() {
                if q == x || dep.contains(&q) {
                    continue;
                }
                if self.depends_directly(q, x) || dep.iter().any(|&y| self.depends_directly(q, y)) {
                    dep.insert(q);
                    grew = true;
                }
            }
            if !grew {
                return dep;
            }
        }
    }

    /// Brute force state of every phase from leaf states, with the
    /// precedence rule of the spec (§1.4) on the *set* of child states.
    fn derive_all(&self, leaf_state: &dyn Fn(usize) -> PhaseState) -> Vec<PhaseState> {
        let mut st = vec![PhaseState::Unstarted; self.len()];
        for ix in (0..self.len()).rev() {
            if self.children[ix].is_empty() {
                st[ix] = if ix == 0 {
                    PhaseState::Unstarted
                } else {
                    leaf_state(ix)
                };
                continue;
            }
            let set: BTreeSet<PhaseState> = self.children[ix].iter().map(|&c| st[c]).collect();
            use PhaseState::*;
            st[ix] = if set.len() == 1 {
                *set.iter().next().unwrap()
            } else if set.contains(&Failed) {
                Failed
            } else if set.contains(&InProgress) {
                InProgress
            } else if !set.contains(&Completed) && set.contains(&RolledBack) {
                RolledBack
            } else {
                InProgress
            };
        }
        st
    }
}

// ---------------------------------------------------------------------------
// The test executor
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    FailPreCheck,
    FailExecute,
    FailPostCheck,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Act {
    Execute(usize),
    RollBack(usize),
}

#[derive(Default)]
struct World {
    ix_of: HashMap<String, usize>,
    outcome: HashMap<usize, Outcome>,
    yields: HashMap<usize, u8>,
    needs: HashMap<usize, BTreeSet<usize>>,
    /// For a leaf: (composite ancestor, its child containing the leaf, limit).
    groups: HashMap<usize, Vec<(usize, usize, usize)>>,
    /// Leaves whose last execution succeeded and that were not rolled back since.
    done: HashSet<usize>,
    /// Successful executions per leaf.
    ok_runs: HashMap<usize, u32>,
    /// composite → child → number of running leaves below it.
    active: HashMap<usize, HashMap<usize, u32>>,
    log: Vec<Act>,
    violations: Vec<String>,
}

struct TestExec(Arc<Mutex<World>>);

impl TestExec {
    fn ix(&self, ctx: &PhaseContext) -> usize {
        self.0.lock().unwrap().ix_of[ctx.path().as_str()]
    }
}

#[async_trait]
impl PhaseExecutor for TestExec {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let ix = self.ix(ctx);
        if self.0.lock().unwrap().outcome[&ix] == Outcome::FailPreCheck {
            return Err("pre-check refused".into());
        }
        Ok(())
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let ix = self.ix(ctx);
        let yields = {
            let mut w = self.0.lock().unwrap();
            w.log.push(Act::Execute(ix));
            if w.done.contains(&ix) {
                w.violations
                    .push(format!("{} executed again while completed", ctx.path()));
            }
            let missing: Vec<usize> = w.needs[&ix]
                .iter()
                .copied()
                .filter(|n| !w.done.contains(n))
                .collect();
            if !missing.is_empty() {
                w.violations.push(format!(
                    "{} executed before its requirements finished: {missing:?}",
                    ctx.path()
                ));
            }
            let groups = w.groups[&ix].clone();
            for (comp, child, limit) in groups {
                let a = w.active.entry(comp).or_default();
                *a.entry(child).or_default() += 1;
                let running = a.values().filter(|n| **n > 0).count();
                if running > limit {
                    w.violations.push(format!(
                        "composite #{comp} runs {running} children at once (limit {limit})"
                    ));
                }
            }
            w.yields[&ix]
        };
        for _ in 0..yields {
            tokio::task::yield_now().await;
        }
        let mut w = self.0.lock().unwrap();
        let groups = w.groups[&ix].clone();
        for (comp, child, _) in groups {
            *w.active.get_mut(&comp).unwrap().get_mut(&child).unwrap() -= 1;
        }
        if w.outcome[&ix] == Outcome::FailExecute {
            return Err("execute failed".into());
        }
        Ok(())
    }

    async fn post_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let ix = self.ix(ctx);
        let mut w = self.0.lock().unwrap();
        if w.outcome[&ix] == Outcome::FailPostCheck {
            return Err("not healthy".into());
        }
        w.done.insert(ix);
        *w.ok_runs.entry(ix).or_default() += 1;
        Ok(())
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let ix = self.ix(ctx);
        let mut w = self.0.lock().unwrap();
        w.log.push(Act::RollBack(ix));
        w.done.remove(&ix);
        Ok(())
    }
}

fn world(m: &Model, outcomes: &[u8], yields: &[u8]) -> Arc<Mutex<World>> {
    let mut w = World::default();
    for (k, leaf) in m.leaves().into_iter().enumerate() {
        w.ix_of.insert(m.paths[leaf].clone(), leaf);
        // Roughly one leaf in twelve fails, in one of three ways.
        let o = match outcomes.get(k).copied().unwrap_or(0) {
            33 => Outcome::FailPreCheck,
            34 => Outcome::FailExecute,
            35 => Outcome::FailPostCheck,
            _ => Outcome::Ok,
        };
        w.outcome.insert(leaf, o);
        w.yields
            .insert(leaf, yields.get(k).copied().unwrap_or(0) % 4);
        w.needs.insert(leaf, m.needs(leaf));
        let mut groups = Vec::new();
        let mut child = leaf;
        while let Some(p) = m.parent[child] {
            groups.push((p, child, m.parallel[p]));
            child = p;
        }
        w.groups.insert(leaf, groups);
    }
    Arc::new(Mutex::new(w))
}

async fn setup(m: &Model, w: &Arc<Mutex<World>>) -> (Arc<dyn PlanStore>, Engine) {
    let graph = PlanGraph::build(m.plan.clone()).expect("generated plans are valid");
    assert_eq!(graph.len(), m.len());
    for (ix, p) in m.paths.iter().enumerate() {
        assert_eq!(graph.node(ix).path().as_str(), p, "pre-order numbering");
    }
    let store: Arc<dyn PlanStore> = Arc::new(MemoryStore::new());
    store.create_operation(&m.plan).await.unwrap();
    let engine = open(&store, &m.plan.operation_id, w).await;
    (store, engine)
}

async fn open(store: &Arc<dyn PlanStore>, op: &str, w: &Arc<Mutex<World>>) -> Engine {
    let mut reg = ExecutorRegistry::new();
    reg.register("test", TestExec(w.clone()));
    Engine::open(store.clone(), op, EngineConfig::new(reg))
        .await
        .unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// The phase an engine error reports, if it is a failure of a phase.
fn failed_phase(e: &EngineError) -> Option<(&PhasePath, &'static str)> {
    match e {
        EngineError::PhaseFailed { phase, .. } => Some((phase, "failed")),
        EngineError::PreCheckFailed { phase, .. } => Some((phase, "pre-check")),
        EngineError::Several { first, count } if *count > 1 => failed_phase(first),
        _ => None,
    }
}

const RUN_LIMIT: Duration = Duration::from_secs(20);

async fn resume(engine: &Engine) -> Result<gravity_plan::RunReport, EngineError> {
    tokio::time::timeout(RUN_LIMIT, engine.resume())
        .await
        .expect("resume must terminate")
}

fn leaf_states(engine: &Engine, m: &Model) -> Vec<PhaseState> {
    engine.with_view(|v| (0..m.len()).map(|i| v.state(i)).collect())
}

// ---------------------------------------------------------------------------
// a + b: resume, fix, resume; whole-plan rollback
// ---------------------------------------------------------------------------

fn check_resume_and_rollback(
    spec: &Spec,
    outcomes: &[u8],
    yields: &[u8],
    allow_failures: bool,
    rollback_before_fix: bool,
) -> Result<(), TestCaseError> {
    let m = Model::build(spec, "op-resume");
    let outcomes: Vec<u8> = if allow_failures {
        outcomes.to_vec()
    } else {
        Vec::new()
    };
    let w = world(&m, &outcomes, yields);
    let leaves = m.leaves();
    let failing: BTreeSet<usize> = {
        let w = w.lock().unwrap();
        leaves
            .iter()
            .copied()
            .filter(|l| w.outcome[l] != Outcome::Ok)
            .collect()
    };
    let sequential = (0..m.len()).all(|i| m.parallel[i] == 1);
    rt().block_on(async {
        let (store, engine) = setup(&m, &w).await;
        let r1 = resume(&engine).await;
        let states = leaf_states(&engine, &m);
        {
            let w = w.lock().unwrap();
            prop_assert!(w.violations.is_empty(), "{:?}", w.violations);
        }
        if failing.is_empty() {
            prop_assert!(r1.is_ok(), "no leaf fails, yet resume said {:?}", r1);
            prop_assert!(engine.view().is_completed());
            for &l in &leaves {
                prop_assert_eq!(states[l], PhaseState::Completed, "{}", m.paths[l]);
            }
        } else {
            let err = r1.expect_err("some leaf fails, so resume must fail");
            let (phase, how) = failed_phase(&err)
                .ok_or_else(|| TestCaseError::fail(format!("unexpected error {err:?}")))?;
            let ix = m.paths.iter().position(|p| p == phase.as_str()).unwrap();
            let outcome = w.lock().unwrap().outcome[&ix];
            match outcome {
                Outcome::Ok => prop_assert!(false, "{phase} reported failed but it succeeds"),
                Outcome::FailPreCheck => prop_assert_eq!(how, "pre-check"),
                Outcome::FailExecute | Outcome::FailPostCheck => {
                    prop_assert_eq!(how, "failed");
                    prop_assert_eq!(states[ix], PhaseState::Failed);
                }
            }
            if outcome == Outcome::FailPostCheck {
                prop_assert!(err.to_string().contains("post-check failed"), "{err}");
            }
            for &l in &leaves {
                let s = states[l];
                prop_assert!(
                    matches!(s, PhaseState::Unstarted | PhaseState::Completed)
                        || (s == PhaseState::Failed && failing.contains(&l)),
                    "{} is {s} after a failed run",
                    m.paths[l]
                );
            }
            if sequential {
                // Document order: everything before the first failing leaf
                // completed, that leaf is the one reported, nothing after it
                // started.
                let first = *failing.iter().next().unwrap();
                prop_assert_eq!(ix, first, "the first failure must be reported");
                for &l in &leaves {
                    if l < first {
                        prop_assert_eq!(states[l], PhaseState::Completed);
                    } else if l > first {
                        prop_assert_eq!(states[l], PhaseState::Unstarted);
                    }
                }
            }
        }
        if rollback_before_fix {
            check_rollback_plan(&m, &w, &store, &engine, &states).await?;
        }
        if !failing.is_empty() || rollback_before_fix {
            // Fix every leaf and resume: everything completes.
            {
                let mut w = w.lock().unwrap();
                for o in w.outcome.values_mut() {
                    *o = Outcome::Ok;
                }
            }
            // A fresh engine on the same store, like a new CLI invocation.
            let engine2 = open(&store, &m.plan.operation_id, &w).await;
            let r2 = resume(&engine2).await;
            prop_assert!(r2.is_ok(), "second resume: {:?}", r2);
            prop_assert!(engine2.view().is_completed());
            let w = w.lock().unwrap();
            prop_assert!(w.violations.is_empty(), "{:?}", w.violations);
        }
        if !rollback_before_fix {
            let w2 = w.clone();
            let ok_runs = w2.lock().unwrap().ok_runs.clone();
            for &l in &leaves {
                prop_assert_eq!(
                    ok_runs.get(&l).copied().unwrap_or(0),
                    1,
                    "{} must run to success exactly once",
                    &m.paths[l]
                );
            }
            let engine3 = open(&store, &m.plan.operation_id, &w).await;
            let states = leaf_states(&engine3, &m);
            check_rollback_plan(&m, &w, &store, &engine3, &states).await?;
        }
        Ok(())
    })
}

async fn check_rollback_plan(
    m: &Model,
    w: &Arc<Mutex<World>>,
    store: &Arc<dyn PlanStore>,
    engine: &Engine,
    before: &[PhaseState],
) -> Result<(), TestCaseError> {
    let leaves = m.leaves();
    let log_start = w.lock().unwrap().log.len();
    let undone = tokio::time::timeout(RUN_LIMIT, engine.rollback_plan(false))
        .await
        .expect("rollback must terminate");
    let undone = undone.map_err(|e| TestCaseError::fail(format!("rollback_plan: {e}")))?;
    let started: BTreeSet<usize> = leaves
        .iter()
        .copied()
        .filter(|&l| before[l] != PhaseState::Unstarted)
        .collect();
    let undone_ix: BTreeSet<usize> = undone
        .iter()
        .map(|p| m.paths.iter().position(|q| q == p.as_str()).unwrap())
        .collect();
    prop_assert_eq!(
        &undone_ix,
        &started,
        "rollback_plan must undo every started leaf"
    );
    let after = leaf_states(engine, m);
    for &l in &leaves {
        if started.contains(&l) {
            prop_assert_eq!(after[l], PhaseState::RolledBack, "{}", m.paths[l]);
        } else {
            prop_assert_eq!(after[l], PhaseState::Unstarted, "{}", m.paths[l]);
        }
    }
    // The same from the store, not just the engine's view.
    let fresh = Engine::open(
        store.clone(),
        &m.plan.operation_id,
        EngineConfig::new(ExecutorRegistry::new()),
    )
    .await
    .unwrap();
    prop_assert_eq!(leaf_states(&fresh, m), after.clone());
    prop_assert!(after.iter().all(|s| *s != PhaseState::InProgress));
    if !started.is_empty() {
        prop_assert!(fresh.view().is_rolled_back());
    }
    // Dependents first: no leaf is rolled back before a leaf depending on it.
    let log: Vec<usize> = w.lock().unwrap().log[log_start..]
        .iter()
        .map(|a| match a {
            Act::RollBack(l) => Ok(*l),
            Act::Execute(l) => Err(*l),
        })
        .collect::<Result<_, _>>()
        .map_err(|l| TestCaseError::fail(format!("{} executed during rollback", m.paths[l])))?;
    prop_assert_eq!(
        log.len(),
        started.len(),
        "each started leaf rolled back once"
    );
    let pos: HashMap<usize, usize> = log.iter().enumerate().map(|(i, &l)| (l, i)).collect();
    for &x in &log {
        for d in m.dependents(x) {
            if let Some(&pd) = pos.get(&d) {
                prop_assert!(
                    pd < pos[&x],
                    "{} was rolled back before its dependent {}",
                    m.paths[x],
                    m.paths[d]
                );
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// c: the dependents check
// ---------------------------------------------------------------------------

fn actor(pid: u32) -> Actor {
    Actor {
        host: "test-host".into(),
        pid,
    }
}

fn state_of(k: u8) -> PhaseState {
    PhaseState::ALL[k as usize % PhaseState::ALL.len()]
}

fn check_dependents(spec: &Spec, states: &[u8]) -> Result<(), TestCaseError> {
    let m = Model::build(spec, "op-deps");
    let leaves = m.leaves();
    let leaf_state: HashMap<usize, PhaseState> = leaves
        .iter()
        .enumerate()
        .map(|(k, &l)| (l, state_of(states.get(k).copied().unwrap_or(0))))
        .collect();
    let derived = m.derive_all(&|l| leaf_state[&l]);
    let w = world(&m, &[], &[]);
    rt().block_on(async {
        for x in 1..m.len() {
            // A fresh store per target: a permitted rollback changes the state.
            let store: Arc<dyn PlanStore> = Arc::new(MemoryStore::new());
            store.create_operation(&m.plan).await.unwrap();
            let batch: Vec<NewChange> = leaves
                .iter()
                .filter(|l| leaf_state[l] != PhaseState::Unstarted)
                .map(|&l| NewChange {
                    phase: PhasePath::parse(&m.paths[l]).unwrap(),
                    state: leaf_state[&l],
                    error: None,
                    expect_version: None,
                    actor: actor(l as u32),
                    time: Utc::now(),
                })
                .collect();
            if !batch.is_empty() {
                store.append(&m.plan.operation_id, batch).await.unwrap();
            }
            let engine = open(&store, &m.plan.operation_id, &w).await;
            for (i, want) in derived.iter().enumerate() {
                prop_assert_eq!(
                    engine.with_view(|v| v.state(i)),
                    *want,
                    "state of {}",
                    &m.paths[i]
                );
            }
            let path = PhasePath::parse(&m.paths[x]).unwrap();
            let got = engine.rollback(&path, false).await;
            let live: BTreeSet<usize> = m
                .dependents(x)
                .into_iter()
                .filter(|&d| derived[d].is_live())
                .collect();
            match derived[x] {
                PhaseState::Unstarted => {
                    prop_assert!(matches!(got, Err(EngineError::NotStarted(_))), "{got:?}")
                }
                PhaseState::RolledBack => prop_assert!(
                    matches!(got, Err(EngineError::AlreadyRolledBack(_))),
                    "{got:?}"
                ),
                _ if !m.is_leaf(x) => prop_assert!(
                    matches!(got, Err(EngineError::RollbackComposite(_))),
                    "{got:?}"
                ),
                _ if live.is_empty() => {
                    prop_assert!(
                        got.is_ok(),
                        "rolling back {} with no live dependents: {:?}",
                        &m.paths[x],
                        got
                    );
                    prop_assert_eq!(engine.with_view(|v| v.state(x)), PhaseState::RolledBack);
                }
                _ => {
                    let Err(EngineError::DependentsLive { phase, dependents }) = &got else {
                        prop_assert!(
                            false,
                            "rolling back {} while {:?} are live and depend on it: {:?}",
                            &m.paths[x],
                            live.iter().map(|&d| &m.paths[d]).collect::<Vec<_>>(),
                            got
                        );
                        unreachable!()
                    };
                    prop_assert_eq!(phase, &path);
                    let reported: Vec<usize> = dependents
                        .iter()
                        .map(|d| m.paths.iter().position(|p| p == d.as_str()).unwrap())
                        .collect();
                    prop_assert!(
                        reported.windows(2).all(|p| p[0] < p[1]),
                        "dependents in document order, once: {:?}",
                        dependents
                    );
                    for &d in &reported {
                        prop_assert!(
                            live.contains(&d),
                            "{} reported as a live dependent of {}, but it is not",
                            &m.paths[d],
                            &m.paths[x]
                        );
                    }
                    for &d in &live {
                        prop_assert!(
                            reported.iter().any(|&r| m.contains(r, d)),
                            "live dependent {} of {} is not reported (reported: {:?})",
                            &m.paths[d],
                            &m.paths[x],
                            dependents
                        );
                    }
                    let msg = got.as_ref().unwrap_err().to_string();
                    for d in dependents {
                        prop_assert!(msg.contains(&format!("\n\t{d}")), "{msg}");
                    }
                    // Nothing was recorded.
                    prop_assert_eq!(engine.with_view(|v| v.state(x)), derived[x]);
                }
            }
        }
        Ok(())
    })
}

/// `execute` of one leaf on a random state: skipped when completed, refused
/// when in progress, refused with the first unmet requirement when a phase
/// that the leaf or one of its ancestors requires is not completed, and run
/// otherwise.
fn check_execute_requirements(spec: &Spec, states: &[u8]) -> Result<(), TestCaseError> {
    let m = Model::build(spec, "op-exec");
    let leaves = m.leaves();
    let leaf_state: HashMap<usize, PhaseState> = leaves
        .iter()
        .enumerate()
        .map(|(k, &l)| (l, state_of(states.get(k).copied().unwrap_or(0))))
        .collect();
    let derived = m.derive_all(&|l| leaf_state[&l]);
    rt().block_on(async {
        for &x in &leaves {
            let w = world(&m, &[], &[]);
            w.lock().unwrap().done = leaves
                .iter()
                .copied()
                .filter(|l| leaf_state[l] == PhaseState::Completed)
                .collect();
            let store: Arc<dyn PlanStore> = Arc::new(MemoryStore::new());
            store.create_operation(&m.plan).await.unwrap();
            let batch: Vec<NewChange> = leaves
                .iter()
                .filter(|l| leaf_state[l] != PhaseState::Unstarted)
                .map(|&l| NewChange {
                    phase: PhasePath::parse(&m.paths[l]).unwrap(),
                    state: leaf_state[&l],
                    error: None,
                    expect_version: None,
                    actor: actor(l as u32),
                    time: Utc::now(),
                })
                .collect();
            if !batch.is_empty() {
                store.append(&m.plan.operation_id, batch).await.unwrap();
            }
            let engine = open(&store, &m.plan.operation_id, &w).await;
            let path = PhasePath::parse(&m.paths[x]).unwrap();
            let got = engine.execute(&path, false).await;
            let unmet: Vec<usize> = m
                .anc_or_self(x)
                .iter()
                .flat_map(|&a| m.requires[a].iter().copied())
                .filter(|&r| derived[r] != PhaseState::Completed)
                .collect();
            let ran = w.lock().unwrap().log.contains(&Act::Execute(x));
            match leaf_state[&x] {
                PhaseState::Completed => {
                    prop_assert!(got.is_ok() && !ran, "{}: {got:?}", &m.paths[x])
                }
                PhaseState::InProgress => prop_assert!(
                    matches!(got, Err(EngineError::InProgress { .. })) && !ran,
                    "{}: {got:?}",
                    &m.paths[x]
                ),
                _ if !unmet.is_empty() => {
                    let Err(EngineError::RequiredNotCompleted { phase, required }) = &got else {
                        prop_assert!(
                            false,
                            "{} ran although {:?} are not completed: {:?}",
                            &m.paths[x],
                            unmet.iter().map(|&r| &m.paths[r]).collect::<Vec<_>>(),
                            got
                        );
                        unreachable!()
                    };
                    prop_assert_eq!(phase, &path);
                    let r = m.paths.iter().position(|p| p == required.as_str()).unwrap();
                    prop_assert!(unmet.contains(&r), "{required} is completed");
                    prop_assert!(!ran);
                }
                _ => {
                    prop_assert!(got.is_ok(), "{}: {got:?}", &m.paths[x]);
                    prop_assert!(ran);
                    prop_assert_eq!(engine.with_view(|v| v.state(x)), PhaseState::Completed);
                }
            }
            let w = w.lock().unwrap();
            prop_assert!(w.violations.is_empty(), "{:?}", w.violations);
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// The view: order-insensitive apply, and composite states
// ---------------------------------------------------------------------------

/// A tiny deterministic RNG for shuffles.
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
}

fn check_view(
    spec: &Spec,
    raw: &[(u16, u8, u16)],
    seed: u64,
    dups: &[u16],
) -> Result<(), TestCaseError> {
    let m = Model::build(spec, "op-view");
    let n = m.len();
    let graph = PlanGraph::build(m.plan.clone()).unwrap();
    let t0 = 1_700_000_000i64;
    let changes: Vec<PhaseChange> = raw
        .iter()
        .enumerate()
        .map(|(i, &(p, s, t))| {
            let target = p as usize % (n + 1);
            let phase = if target == n {
                PhasePath::parse("/not-in-the-plan").unwrap()
            } else {
                PhasePath::parse(&m.paths[target]).unwrap()
            };
            let state = state_of(s);
            PhaseChange {
                seq: i as u64 + 1,
                id: uuid_like(i),
                phase,
                state,
                // Times are not monotonic in seq: clocks of different nodes
                // disagree, and the order is decided by seq alone.
                time: DateTime::from_timestamp(t0 + t as i64, 0).unwrap(),
                error: (state == PhaseState::Failed).then(|| format!("error {i}")),
                actor: actor(i as u32),
            }
        })
        .collect();
    let in_order = PlanView::resolve(graph.clone(), &changes);

    // The same changes shuffled, with some duplicated.
    let mut order: Vec<usize> = (0..changes.len()).collect();
    let mut rng = XorShift(seed);
    for i in (1..order.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    if !changes.is_empty() {
        for &d in dups {
            let at = (rng.next() % (order.len() as u64 + 1)) as usize;
            order.insert(at, d as usize % changes.len());
        }
    }
    let mut shuffled = PlanView::new(graph.clone());
    for &i in &order {
        shuffled.apply(&changes[i]);
    }

    // Brute force: a leaf takes its highest-seq change; composites follow
    // the precedence rule; "updated" of a leaf is the time of its latest
    // change, of a composite the latest time of any change below it.
    let latest = |ix: usize| {
        changes
            .iter()
            .filter(|c| c.phase.as_str() == m.paths[ix])
            .max_by_key(|c| c.seq)
    };
    let expect = m.derive_all(&|l| latest(l).map(|c| c.state).unwrap_or(PhaseState::Unstarted));
    prop_assert_eq!(in_order.last_seq(), changes.len() as u64);
    prop_assert_eq!(shuffled.last_seq(), changes.len() as u64);
    for ix in 0..n {
        let path = &m.paths[ix];
        for (name, v) in [("in order", &in_order), ("shuffled", &shuffled)] {
            prop_assert_eq!(v.state(ix), expect[ix], "{} state of {}", name, path);
            if m.is_leaf(ix) {
                let l = latest(ix);
                prop_assert_eq!(v.version(ix), l.map(|c| c.seq).unwrap_or(0), "{}", path);
                prop_assert_eq!(v.updated(ix), l.map(|c| c.time), "{} {}", name, path);
                prop_assert_eq!(v.error(ix), l.and_then(|c| c.error.as_deref()));
                prop_assert_eq!(v.actor(ix), l.map(|c| &c.actor));
            } else {
                let below = changes
                    .iter()
                    .filter(|c| {
                        m.paths
                            .iter()
                            .position(|p| p == c.phase.as_str())
                            .is_some_and(|t| m.is_leaf(t) && m.contains(ix, t))
                    })
                    .map(|c| c.time)
                    .max();
                prop_assert_eq!(v.updated(ix), below, "{} updated of {}", name, path);
            }
        }
        // The engine's rule on per-state counts agrees with the set rule.
        if !m.children[ix].is_empty() {
            let mut counts = [0u32; 5];
            for &c in &m.children[ix] {
                counts[expect[c].index()] += 1;
            }
            prop_assert_eq!(gravity_plan::derive_state(&counts), expect[ix]);
        }
    }
    prop_assert_eq!(in_order.is_completed(), expect[0] == PhaseState::Completed);
    Ok(())
}

fn uuid_like(i: usize) -> uuid::Uuid {
    uuid::Uuid::from_u128(i as u128 + 1)
}

// ---------------------------------------------------------------------------
// The properties
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// a + b: resume terminates with every leaf completed or the first
    /// failure reported, never runs a leaf before its requirements, and
    /// completes after the failures are fixed; whole-plan rollback undoes
    /// every started leaf, dependents first.
    #[test]
    fn resume_and_rollback_plan(
        spec in spec(),
        outcomes in prop::collection::vec(0u8..36, 0..128),
        yields in prop::collection::vec(any::<u8>(), 0..128),
        allow_failures in any::<bool>(),
        rollback_before_fix in any::<bool>(),
    ) {
        check_resume_and_rollback(&spec, &outcomes, &yields, allow_failures, rollback_before_fix)?;
    }

    /// c: a leaf can be rolled back exactly when no live phase depends on it.
    #[test]
    fn dependents_check_matches_brute_force(
        spec in spec(),
        states in prop::collection::vec(0u8..5, 0..128),
    ) {
        check_dependents(&spec, &states)?;
    }

    /// Executing a single leaf checks the requirements it inherits.
    #[test]
    fn execute_checks_inherited_requirements(
        spec in spec(),
        states in prop::collection::vec(0u8..5, 0..128),
    ) {
        check_execute_requirements(&spec, &states)?;
    }

    /// The view does not depend on the order changes arrive in, and its
    /// composite states follow the precedence rule.
    #[test]
    fn view_is_order_insensitive(
        spec in spec(),
        raw in prop::collection::vec((any::<u16>(), 0u8..5, 0u16..600), 0..120),
        seed in any::<u64>(),
        dups in prop::collection::vec(any::<u16>(), 0..20),
    ) {
        check_view(&spec, &raw, seed, &dups)?;
    }
}

/// The generator must produce what the properties need: plans of a few
/// dozen phases, four levels deep, with requirements and parallel groups.
#[test]
fn generator_covers_interesting_plans() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut big, mut deep, mut with_reqs, mut with_parallel, mut sizes) = (0, 0, 0, 0, Vec::new());
    for _ in 0..200 {
        let spec = spec().new_tree(&mut runner).unwrap().current();
        let m = Model::build(&spec, "op");
        sizes.push(m.len());
        if m.len() >= 24 {
            big += 1;
        }
        if m.paths.iter().any(|p| p.matches('/').count() == 4) {
            deep += 1;
        }
        if m.requires.iter().any(|r| !r.is_empty()) {
            with_reqs += 1;
        }
        if m.parallel.iter().any(|&p| p > 1) {
            with_parallel += 1;
        }
        assert!(m.paths.iter().all(|p| p.matches('/').count() <= 4));
    }
    sizes.sort_unstable();
    println!(
        "phases: median {} max {}; ≥24 phases: {big}, depth 4: {deep}, requires: {with_reqs}, parallel: {with_parallel} (of 200)",
        sizes[100], sizes[199]
    );
    assert!(big >= 40 && deep >= 40 && with_reqs >= 120 && with_parallel >= 80);
}

fn simple_plan(phases: Vec<Phase>) -> Plan {
    Plan {
        operation_id: "op-fixed".into(),
        operation_kind: "test".into(),
        cluster_name: "c".into(),
        created: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        phases,
    }
}

fn fixed_phase(path: &str, requires: &[&str], kids: Vec<Phase>) -> Phase {
    let mut p = Phase::new(PhasePath::parse(path).unwrap(), path);
    p.requires = requires
        .iter()
        .map(|r| PhasePath::parse(r).unwrap())
        .collect();
    if kids.is_empty() {
        p.executor = Some("noop".into());
    }
    p.phases = kids;
    p
}

/// Regression (found by `dependents_check_matches_brute_force`): `/d`
/// requires `/b`, which completed only because `/b/c` did, which required
/// `/a`. With `/b/c` rolled back (by force) and `/d` live, `/a` must not be
/// rolled back: the engine used to miss dependents that require a composite
/// holding a dependent.
#[tokio::test]
async fn dependents_through_a_composite_holding_a_dependent() {
    let plan = simple_plan(vec![
        fixed_phase("/a", &[], vec![]),
        fixed_phase(
            "/b",
            &[],
            vec![
                fixed_phase("/b/c", &["/a"], vec![]),
                fixed_phase("/b/e", &[], vec![]),
            ],
        ),
        fixed_phase("/d", &["/b"], vec![]),
    ]);
    let store: Arc<dyn PlanStore> = Arc::new(MemoryStore::new());
    store.create_operation(&plan).await.unwrap();
    let engine = Engine::open(
        store.clone(),
        "op-fixed",
        EngineConfig::new(ExecutorRegistry::with_builtins()),
    )
    .await
    .unwrap();
    engine.resume().await.unwrap();
    engine
        .rollback(&PhasePath::parse("/b/c").unwrap(), true)
        .await
        .unwrap();
    let err = engine
        .rollback(&PhasePath::parse("/a").unwrap(), false)
        .await
        .unwrap_err();
    match err {
        EngineError::DependentsLive { dependents, .. } => {
            let d: Vec<&str> = dependents.iter().map(|p| p.as_str()).collect();
            assert_eq!(d, ["/d"]);
        }
        other => panic!("expected DependentsLive, got {other:?}"),
    }
}

/// Regression (found by `view_is_order_insensitive`): with clocks that
/// disagree, a composite's "updated" time must not depend on whether a
/// superseded change arrives before or after the change superseding it.
#[test]
fn composite_time_does_not_depend_on_arrival_order() {
    let graph = PlanGraph::build(simple_plan(vec![fixed_phase(
        "/g",
        &[],
        vec![fixed_phase("/g/x", &[], vec![])],
    )]))
    .unwrap();
    let ch = |seq: u64, state: PhaseState, t: i64| PhaseChange {
        seq,
        id: uuid_like(seq as usize),
        phase: PhasePath::parse("/g/x").unwrap(),
        state,
        time: DateTime::from_timestamp(t, 0).unwrap(),
        error: None,
        actor: actor(1),
    };
    let (first, second) = (
        ch(1, PhaseState::InProgress, 900),
        ch(2, PhaseState::Completed, 100),
    );
    let in_order = PlanView::resolve(graph.clone(), [&first, &second]);
    let reversed = PlanView::resolve(graph, [&second, &first]);
    for ix in 0..3 {
        assert_eq!(in_order.state(ix), reversed.state(ix));
        assert_eq!(in_order.updated(ix), reversed.updated(ix), "phase #{ix}");
    }
    assert_eq!(in_order.updated(1), DateTime::from_timestamp(900, 0));
    assert_eq!(in_order.updated(2), DateTime::from_timestamp(100, 0));
}

//! The engine: executes, resumes, rolls back and completes an operation.
//!
//! The rules follow Gravity's FSM (see `spec/plan-engine.md`), with these
//! deliberate differences:
//! - the move to `in_progress` is a compare-and-swap in the store, so two
//!   processes racing for one phase cannot both run it; a resume re-runs
//!   in-progress leaves only when they look abandoned (not claimed since
//!   the resume started, not held by a live process on this host);
//! - a post-check failure marks the phase failed (Gravity left it in progress);
//! - an interrupted phase (cancellation, timeout) is marked failed with the
//!   reason instead of staying in progress;
//! - the changelog is ordered by sequence number, not wall-clock time;
//! - the rollback dependents check is a graph walk over reverse `requires`
//!   edges, so a requirement pointing forward in document order is not missed;
//! - whole-plan rollback undoes leaves in the reverse order of their latest
//!   change (the reverse of the order they actually ran), which is correct
//!   for parallel runs too, and needs no per-leaf dependents check;
//! - an operation stays `in_progress` (and keeps the operation lock) after a
//!   failed run; `complete` is the only way to finish it, after which its
//!   plan can no longer change.
//!
//! Every state change is durable in the store before the engine moves on.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::dispatch::{Action, Dispatcher, LocalDispatcher};
use crate::executor::{
    Event, ExecError, ExecutorRegistry, Location, NoProgress, PhaseContext, PhaseExecutor,
    ProgressSink,
};
use crate::graph::{GraphError, PhaseIx, PlanGraph};
use crate::path::PhasePath;
use crate::state::{Actor, NewChange, OperationState, PhaseState};
use crate::store::{OperationRecord, PlanStore, StoreError};
use crate::view::PlanView;

/// Why an engine call failed. The texts follow Gravity's messages where
/// users know them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// No phase at that path.
    #[error("phase {0:?} not found; the plan lists the phase paths")]
    PhaseNotFound(String),
    /// A leaf is in progress and neither force nor resume was given.
    #[error(
        "phase {phase:?} is in progress (started by {by}), use --force flag to force execution if that process is gone"
    )]
    InProgress {
        /// The phase.
        phase: PhasePath,
        /// Who started it.
        by: String,
    },
    /// Another process claimed the phase first.
    #[error(
        "phase {phase:?} is being executed by {by}; wait for it to finish (watch it with the plan) or, if that process is gone, use --force"
    )]
    Claimed {
        /// The phase.
        phase: PhasePath,
        /// Who holds it.
        by: String,
    },
    /// Another process changed the phase while this one was working.
    #[error(
        "phase {phase:?} was changed to {state} by {by} while this process was working on it; look at the plan and try again"
    )]
    ChangedConcurrently {
        /// The phase.
        phase: PhasePath,
        /// Its state now.
        state: PhaseState,
        /// Who changed it.
        by: String,
    },
    /// A requirement is not completed.
    #[error("required phase {required:?} is not completed")]
    RequiredNotCompleted {
        /// The phase that was to run.
        phase: PhasePath,
        /// The requirement.
        required: PhasePath,
    },
    /// Force was given for a composite.
    #[error(
        "cannot use force with composite phase {0:?}, please only use --force on a single phase"
    )]
    ForceComposite(PhasePath),
    /// A leaf has no executor.
    #[error("error in plan, executor for phase {0:?} was not specified")]
    NoExecutor(PhasePath),
    /// A leaf names an executor kind nobody registered.
    #[error("phase {phase:?} requires executor {kind:?}, which is not available (known: {known})")]
    UnknownExecutor {
        /// The phase.
        phase: PhasePath,
        /// The kind.
        kind: String,
        /// Known kinds.
        known: String,
    },
    /// The pre-check refused; nothing was recorded.
    #[error("pre-check of phase {phase:?} failed: {error}")]
    PreCheckFailed {
        /// The phase.
        phase: PhasePath,
        /// Why.
        error: String,
    },
    /// The phase failed (and was recorded failed).
    #[error("failed to execute phase {phase:?}: {error}")]
    PhaseFailed {
        /// The phase.
        phase: PhasePath,
        /// Why.
        error: String,
    },
    /// Several phases of a parallel group failed.
    #[error("{count} phases failed, the first: {first}")]
    Several {
        /// The first error.
        first: Box<EngineError>,
        /// How many failed.
        count: usize,
    },
    /// Rollback of an unstarted phase.
    #[error("phase {0:?} hasn't been executed yet")]
    NotStarted(PhasePath),
    /// Rollback of a rolled-back phase.
    #[error("phase {0:?} has already been rolled back")]
    AlreadyRolledBack(PhasePath),
    /// Rollback of a composite.
    #[error(
        "rolling back phases that have sub-phases is not supported. Please rollback individual phases (phase {0:?})"
    )]
    RollbackComposite(PhasePath),
    /// Live dependents block a rollback.
    #[error("Phase {phase} cannot be rolled back because some phases that depend on it haven't been rolled back yet. Please rollback the following phases first:\n\n\t{}\n\nYou can pass --force flag to override this check and force phase {phase} rollback.", list_dependents(.dependents))]
    DependentsLive {
        /// The phase.
        phase: PhasePath,
        /// Live dependents, in document order.
        dependents: Vec<PhasePath>,
    },
    /// The rollback failed (and was recorded failed).
    #[error("failed to roll back phase {phase:?}: {error}")]
    RollbackFailed {
        /// The phase.
        phase: PhasePath,
        /// Why.
        error: String,
    },
    /// The operation is finished; its plan can no longer change.
    #[error("operation {id} is {state}; its plan can no longer change (start a new operation)")]
    OperationFinished {
        /// Operation id.
        id: String,
        /// Its state.
        state: OperationState,
    },
    /// The run was interrupted.
    #[error("interrupted")]
    Cancelled,
    /// The stored plan is invalid.
    #[error("invalid plan: {0}")]
    Graph(#[from] GraphError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn list_dependents(deps: &[PhasePath]) -> String {
    deps.iter()
        .map(|d| d.as_str())
        .collect::<Vec<_>>()
        .join("\n\t")
}

/// How an engine is set up.
#[derive(Clone)]
pub struct EngineConfig {
    /// Executors by kind.
    pub registry: Arc<ExecutorRegistry>,
    /// Where leaves run.
    pub dispatcher: Arc<dyn Dispatcher>,
    /// Where progress goes.
    pub progress: Arc<dyn ProgressSink>,
    /// Who this process is (recorded with each change).
    pub actor: Actor,
    /// Cancelled to interrupt a run.
    pub cancel: CancellationToken,
    /// Longest a single leaf may run; `None` for no limit.
    pub phase_timeout: Option<Duration>,
}

impl EngineConfig {
    /// Built-in executors, local dispatch, no progress, no timeout.
    pub fn new(registry: ExecutorRegistry) -> Self {
        EngineConfig {
            registry: Arc::new(registry),
            dispatcher: Arc::new(LocalDispatcher),
            progress: Arc::new(NoProgress),
            actor: Actor::current(),
            cancel: CancellationToken::new(),
            phase_timeout: None,
        }
    }

    /// Sets the progress sink.
    pub fn progress(mut self, p: Arc<dyn ProgressSink>) -> Self {
        self.progress = p;
        self
    }

    /// Sets the dispatcher.
    pub fn dispatcher(mut self, d: Arc<dyn Dispatcher>) -> Self {
        self.dispatcher = d;
        self
    }

    /// Sets the cancellation token.
    pub fn cancel(mut self, c: CancellationToken) -> Self {
        self.cancel = c;
        self
    }

    /// Sets the per-leaf timeout.
    pub fn phase_timeout(mut self, t: Option<Duration>) -> Self {
        self.phase_timeout = t;
        self
    }

    /// Sets the actor.
    pub fn actor(mut self, a: Actor) -> Self {
        self.actor = a;
        self
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Opts {
    force: bool,
    resume: bool,
    /// For a resume: the last sequence number when it started. A leaf that
    /// went in progress after that was claimed by a run that is going on
    /// now, not left behind by one that died.
    since: u64,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Leaves executed (or rolled back) to success.
    pub done: usize,
    /// Leaves skipped because they were already completed.
    pub skipped: usize,
}

#[derive(Default)]
struct Counters {
    done: std::sync::atomic::AtomicUsize,
    skipped: std::sync::atomic::AtomicUsize,
}

/// Runs one operation's plan. Cheap to share (`Arc`); concurrent calls are
/// safe (each leaf is claimed atomically in the store).
pub struct Engine {
    store: Arc<dyn PlanStore>,
    cfg: EngineConfig,
    record: OperationRecord,
    graph: Arc<PlanGraph>,
    view: Arc<Mutex<PlanView>>,
    counters: Counters,
}

impl Engine {
    /// Loads an operation: its plan is indexed and folded with the changelog.
    pub async fn open(
        store: Arc<dyn PlanStore>,
        operation_id: &str,
        cfg: EngineConfig,
    ) -> Result<Engine, EngineError> {
        let record = store.operation(operation_id).await?;
        let plan = store.plan(operation_id).await?;
        let graph = PlanGraph::build(plan)?;
        let changes = store.changes(operation_id, 0).await?;
        let view = PlanView::resolve(graph.clone(), &changes);
        Ok(Engine {
            store,
            cfg,
            record,
            graph,
            view: Arc::new(Mutex::new(view)),
            counters: Counters::default(),
        })
    }

    /// The operation as loaded.
    pub fn operation(&self) -> &OperationRecord {
        &self.record
    }

    /// The indexed plan.
    pub fn graph(&self) -> &Arc<PlanGraph> {
        &self.graph
    }

    /// A snapshot of the current view (as of the last refresh).
    pub fn view(&self) -> PlanView {
        self.view.lock().unwrap().clone()
    }

    /// Runs `f` on the current view without copying it.
    pub fn with_view<T>(&self, f: impl FnOnce(&PlanView) -> T) -> T {
        f(&self.view.lock().unwrap())
    }

    /// Reads changes made by other processes since the last refresh.
    pub async fn refresh(&self) -> Result<(), EngineError> {
        let after = self.view.lock().unwrap().last_seq();
        let changes = self.store.changes(&self.record.id, after).await?;
        if !changes.is_empty() {
            let mut v = self.view.lock().unwrap();
            for c in &changes {
                v.apply(c);
            }
        }
        Ok(())
    }

    fn find(&self, path: &PhasePath) -> Result<PhaseIx, EngineError> {
        self.graph
            .find(path)
            .ok_or_else(|| EngineError::PhaseNotFound(path.to_string()))
    }

    async fn ensure_active(&self) -> Result<(), EngineError> {
        let rec = self.store.operation(&self.record.id).await?;
        if rec.state.is_finished() {
            return Err(EngineError::OperationFinished {
                id: rec.id,
                state: rec.state,
            });
        }
        Ok(())
    }

    fn take_report(&self) -> RunReport {
        use std::sync::atomic::Ordering::Relaxed;
        RunReport {
            done: self.counters.done.swap(0, Relaxed),
            skipped: self.counters.skipped.swap(0, Relaxed),
        }
    }

    /// Executes a phase: a leaf, or a whole subtree in order (children of a
    /// phase with `parallel > 1` run concurrently up to that limit, each
    /// waiting for the siblings it requires). Completed phases are skipped
    /// unless `force`; `force` is refused for composites.
    pub async fn execute(&self, path: &PhasePath, force: bool) -> Result<RunReport, EngineError> {
        self.ensure_active().await?;
        let ix = self.find(path)?;
        if force && self.graph.node(ix).is_composite() {
            return Err(EngineError::ForceComposite(path.clone()));
        }
        self.refresh().await?;
        let r = self
            .exec_phase(
                ix,
                Opts {
                    force,
                    resume: false,
                    since: 0,
                },
            )
            .await;
        let report = self.take_report();
        r.map(|_| report)
    }

    /// Executes the whole plan, re-running failed and in-progress leaves
    /// (a phase left in progress by a process that died is run again). A
    /// leaf that another run is executing now (claimed after this resume
    /// started, or held by a live process on this host) is not taken over:
    /// the resume stops with [`EngineError::InProgress`].
    pub async fn resume(&self) -> Result<RunReport, EngineError> {
        self.ensure_active().await?;
        self.refresh().await?;
        let since = self.view.lock().unwrap().last_seq();
        let r = self
            .exec_phase(
                0,
                Opts {
                    force: false,
                    resume: true,
                    since,
                },
            )
            .await;
        let report = self.take_report();
        r.map(|_| report)
    }

    fn exec_phase(&self, ix: PhaseIx, opts: Opts) -> BoxFuture<'_, Result<(), EngineError>> {
        Box::pin(async move {
            if self.cfg.cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            let node = self.graph.node(ix);
            if !node.is_composite() {
                return self.exec_leaf(ix, opts).await;
            }
            let state = self.view.lock().unwrap().state(ix);
            if state == PhaseState::Completed && !opts.force {
                return Ok(());
            }
            if ix != 0 && !opts.force {
                self.check_requirements(ix)?;
            }
            if node.phase.parallel > 1 {
                self.exec_parallel(ix, opts).await
            } else {
                for &c in &node.children {
                    self.exec_phase(c, opts).await?;
                }
                Ok(())
            }
        })
    }

    /// Requirements of the phase and of its ancestors must be completed.
    fn check_requirements(&self, ix: PhaseIx) -> Result<(), EngineError> {
        let view = self.view.lock().unwrap();
        for a in std::iter::once(ix).chain(self.graph.ancestors(ix)) {
            for &r in &self.graph.node(a).requires {
                if view.state(r) != PhaseState::Completed {
                    return Err(EngineError::RequiredNotCompleted {
                        phase: self.graph.node(ix).phase.id.clone(),
                        required: self.graph.node(r).phase.id.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Children of `ix` run up to `parallel` at a time. A child that
    /// requires (anywhere in its subtree) a phase inside a sibling waits for
    /// that sibling to finish. After a failure no new child starts; running
    /// ones are awaited.
    async fn exec_parallel(&self, ix: PhaseIx, opts: Opts) -> Result<(), EngineError> {
        let node = self.graph.node(ix);
        let limit = node.phase.parallel;
        let children = &node.children;
        let pos_of = |mut p: PhaseIx| -> Option<usize> {
            if !self.graph.contains(ix, p) || p == ix {
                return None;
            }
            while self.graph.node(p).parent != Some(ix) {
                p = self.graph.node(p).parent?;
            }
            children.binary_search(&p).ok()
        };
        let mut waiting = vec![0usize; children.len()];
        let mut unblocks: Vec<Vec<usize>> = vec![Vec::new(); children.len()];
        for (i, &c) in children.iter().enumerate() {
            let mut deps: Vec<usize> = Vec::new();
            for d in std::iter::once(c).chain(self.graph.descendants(c)) {
                for &r in &self.graph.node(d).requires {
                    if let Some(j) = pos_of(r).filter(|&j| j != i && !deps.contains(&j)) {
                        deps.push(j);
                    }
                }
            }
            waiting[i] = deps.len();
            for j in deps {
                unblocks[j].push(i);
            }
        }
        let mut ready: BinaryHeap<Reverse<usize>> = (0..children.len())
            .filter(|&i| waiting[i] == 0)
            .map(Reverse)
            .collect();
        let mut running = FuturesUnordered::new();
        let mut errors: Vec<EngineError> = Vec::new();
        loop {
            while errors.is_empty() && running.len() < limit {
                let Some(Reverse(i)) = ready.pop() else { break };
                let c = children[i];
                running.push(async move { (i, self.exec_phase(c, opts).await) });
            }
            let Some((i, result)) = running.next().await else {
                break;
            };
            match result {
                Ok(()) => {
                    for &k in &unblocks[i] {
                        waiting[k] -= 1;
                        if waiting[k] == 0 {
                            ready.push(Reverse(k));
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.pop().unwrap()),
            count => Err(EngineError::Several {
                first: Box::new(errors.swap_remove(0)),
                count,
            }),
        }
    }

    fn context(&self, ix: PhaseIx, cancel: CancellationToken) -> PhaseContext {
        PhaseContext {
            graph: self.graph.clone(),
            ix,
            view: self.view.clone(),
            progress: self.cfg.progress.clone(),
            cancel,
        }
    }

    fn executor_for(&self, ix: PhaseIx) -> Result<Arc<dyn PhaseExecutor>, EngineError> {
        let phase = &self.graph.node(ix).phase;
        let kind = phase
            .executor
            .as_deref()
            .ok_or_else(|| EngineError::NoExecutor(phase.id.clone()))?;
        self.cfg
            .registry
            .get(kind)
            .ok_or_else(|| EngineError::UnknownExecutor {
                phase: phase.id.clone(),
                kind: kind.to_string(),
                known: self.cfg.registry.kinds().join(", "),
            })
    }

    /// Records a change durably (compare-and-swap when `expect` is given),
    /// then applies it to the view.
    async fn record(
        &self,
        ix: PhaseIx,
        state: PhaseState,
        error: Option<String>,
        expect: Option<u64>,
    ) -> Result<u64, StoreError> {
        let phase = self.graph.node(ix).phase.id.clone();
        let stored = self
            .store
            .append(
                &self.record.id,
                vec![NewChange {
                    phase: phase.clone(),
                    state,
                    error,
                    expect_version: expect,
                    actor: self.cfg.actor.clone(),
                    time: Utc::now(),
                }],
            )
            .await?;
        let seq = stored[0].seq;
        {
            let mut v = self.view.lock().unwrap();
            for c in &stored {
                v.apply(c);
            }
        }
        self.cfg.progress.event(Event::StateChange { phase, state });
        Ok(seq)
    }

    /// Whether the latest change of a leaf was made by another process on
    /// this host that is still running. (Liveness of other hosts is unknown;
    /// their in-progress leaves are taken over by a resume, as in Gravity.)
    fn held_by_live_process(&self, ix: PhaseIx) -> bool {
        let v = self.view.lock().unwrap();
        v.actor(ix).is_some_and(|a| {
            a.host == self.cfg.actor.host
                && a.pid != self.cfg.actor.pid
                && std::path::Path::new(&format!("/proc/{}", a.pid)).exists()
        })
    }

    fn holder(&self, ix: PhaseIx) -> String {
        let v = self.view.lock().unwrap();
        let who = v
            .actor(ix)
            .map(|a| a.to_string())
            .unwrap_or_else(|| "another run".into());
        match v.updated(ix) {
            Some(t) => format!("{who} at {}", t.format("%Y-%m-%d %H:%M:%S UTC")),
            None => who,
        }
    }

    fn conflict(&self, ix: PhaseIx, e: StoreError) -> EngineError {
        match e {
            StoreError::Conflict {
                state: PhaseState::InProgress,
                actor,
                ..
            } => EngineError::Claimed {
                phase: self.graph.node(ix).phase.id.clone(),
                by: actor.to_string(),
            },
            StoreError::Conflict { state, actor, .. } => EngineError::ChangedConcurrently {
                phase: self.graph.node(ix).phase.id.clone(),
                state,
                by: actor.to_string(),
            },
            other => other.into(),
        }
    }

    /// Runs one executor action at `location`, bounded by the phase timeout
    /// and the cancellation token.
    async fn run_action(
        &self,
        location: &Location,
        action: Action,
        exec: Arc<dyn PhaseExecutor>,
        ctx: &PhaseContext,
    ) -> Result<(), ExecError> {
        let fut = self.cfg.dispatcher.run(location, action, exec, ctx);
        let timed = async {
            match self.cfg.phase_timeout {
                Some(t) => match tokio::time::timeout(t, fut).await {
                    Ok(r) => r,
                    Err(_) => {
                        ctx.cancel.cancel();
                        Err(format!("timed out after {}s", t.as_secs()).into())
                    }
                },
                None => fut.await,
            }
        };
        tokio::select! {
            r = timed => r,
            _ = self.cfg.cancel.cancelled() => {
                ctx.cancel.cancel();
                Err("interrupted before it finished".into())
            }
        }
    }

    async fn exec_leaf(&self, ix: PhaseIx, opts: Opts) -> Result<(), EngineError> {
        self.refresh().await?;
        let path = self.graph.node(ix).phase.id.clone();
        let (state, version) = {
            let v = self.view.lock().unwrap();
            (v.state(ix), v.version(ix))
        };
        if state == PhaseState::Completed && !opts.force {
            self.counters
                .skipped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.cfg.progress.event(Event::Skipped { phase: path });
            return Ok(());
        }
        if state == PhaseState::InProgress
            && !opts.force
            && (!opts.resume || version > opts.since || self.held_by_live_process(ix))
        {
            return Err(EngineError::InProgress {
                phase: path,
                by: self.holder(ix),
            });
        }
        if !opts.force {
            self.check_requirements(ix)?;
        }
        let exec = self.executor_for(ix)?;
        let location = self.cfg.dispatcher.locate(&self.graph.node(ix).phase);
        self.cfg.progress.event(Event::Executing {
            phase: path.clone(),
            location: location.clone(),
        });
        let started = Instant::now();
        let ctx = self.context(ix, self.cfg.cancel.child_token());
        if let Err(e) = self
            .run_action(&location, Action::PreCheck, exec.clone(), &ctx)
            .await
        {
            let error = e.to_string();
            self.cfg.progress.event(Event::Finished {
                phase: path.clone(),
                state,
                elapsed: started.elapsed(),
                error: Some(error.clone()),
            });
            return Err(EngineError::PreCheckFailed { phase: path, error });
        }
        let claimed = self
            .record(ix, PhaseState::InProgress, None, Some(version))
            .await
            .map_err(|e| self.conflict(ix, e))?;
        let mut result = self
            .run_action(&location, Action::Execute, exec.clone(), &ctx)
            .await;
        if result.is_ok() {
            result = self
                .run_action(&location, Action::PostCheck, exec, &ctx)
                .await
                .map_err(|e| format!("post-check failed: {e}").into());
        }
        let (final_state, error) = match &result {
            Ok(()) => (PhaseState::Completed, None),
            Err(e) => (PhaseState::Failed, Some(e.to_string())),
        };
        self.record(ix, final_state, error.clone(), Some(claimed))
            .await
            .map_err(|e| self.conflict(ix, e))?;
        self.cfg.progress.event(Event::Finished {
            phase: path.clone(),
            state: final_state,
            elapsed: started.elapsed(),
            error: error.clone(),
        });
        match error {
            None => {
                self.counters
                    .done
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            Some(error) if self.cfg.cancel.is_cancelled() => {
                let _ = error;
                Err(EngineError::Cancelled)
            }
            Some(error) => Err(EngineError::PhaseFailed { phase: path, error }),
        }
    }

    /// Live phases that depend on `ix`: phases that require it or one of
    /// its ancestors, transitively (through anything that depends, started
    /// or not, through everything inside a dependent composite, and through
    /// phases that require a composite holding a dependent), in document
    /// order. Linear in the size of the plan times its depth.
    pub fn live_dependents(&self, ix: PhaseIx) -> Vec<PhaseIx> {
        let view = self.view.lock().unwrap();
        let g = &self.graph;
        // `walked`: phases whose requirers depend on `ix`: `ix` and its
        // ancestors, every dependent with its descendants, and the ancestors
        // of a dependent (a composite completes only after the dependent
        // inside it, so whoever requires the composite depends on `ix` too).
        // `found`: dependents, and phases inside one (covered by it).
        let mut walked = vec![false; g.len()];
        let mut found = vec![false; g.len()];
        let mut queue: Vec<PhaseIx> = Vec::new();
        for a in std::iter::once(ix).chain(g.ancestors(ix)) {
            walked[a] = true;
            queue.push(a);
        }
        let mut out = Vec::new();
        while let Some(q) = queue.pop() {
            for &d in &g.node(q).required_by {
                if found[d] {
                    continue;
                }
                if view.state(d).is_live() {
                    out.push(d);
                }
                for x in std::iter::once(d).chain(g.descendants(d)) {
                    found[x] = true;
                }
                for x in std::iter::once(d)
                    .chain(g.descendants(d))
                    .chain(g.ancestors(d))
                {
                    if !walked[x] {
                        walked[x] = true;
                        queue.push(x);
                    }
                }
            }
        }
        out.sort_unstable();
        // A live dependent inside another reported dependent is covered by it.
        let mut kept: Vec<PhaseIx> = Vec::with_capacity(out.len());
        for d in out {
            if !kept.last().is_some_and(|&k| g.contains(k, d)) {
                kept.push(d);
            }
        }
        kept
    }

    /// Rolls back a leaf. Refused for unstarted, rolled-back and composite
    /// phases and while live phases depend on it, unless `force` (which
    /// rolls a composite's children back in reverse order).
    pub async fn rollback(&self, path: &PhasePath, force: bool) -> Result<RunReport, EngineError> {
        self.ensure_active().await?;
        let ix = self.find(path)?;
        self.refresh().await?;
        let r = self.rollback_phase(ix, force).await;
        let report = self.take_report();
        r.map(|_| report)
    }

    fn check_rollback(&self, ix: PhaseIx) -> Result<(), EngineError> {
        let path = self.graph.node(ix).phase.id.clone();
        let state = self.view.lock().unwrap().state(ix);
        match state {
            PhaseState::Unstarted => return Err(EngineError::NotStarted(path)),
            PhaseState::RolledBack => return Err(EngineError::AlreadyRolledBack(path)),
            _ => {}
        }
        if self.graph.node(ix).is_composite() {
            return Err(EngineError::RollbackComposite(path));
        }
        let deps = self.live_dependents(ix);
        if !deps.is_empty() {
            return Err(EngineError::DependentsLive {
                phase: path,
                dependents: deps
                    .into_iter()
                    .map(|d| self.graph.node(d).phase.id.clone())
                    .collect(),
            });
        }
        Ok(())
    }

    fn rollback_phase(&self, ix: PhaseIx, force: bool) -> BoxFuture<'_, Result<(), EngineError>> {
        Box::pin(async move {
            if self.cfg.cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            if !force {
                self.check_rollback(ix)?;
            }
            let node = self.graph.node(ix);
            if node.is_composite() {
                for &c in node.children.iter().rev() {
                    self.rollback_phase(c, force).await?;
                }
                return Ok(());
            }
            self.rollback_leaf(ix).await
        })
    }

    async fn rollback_leaf(&self, ix: PhaseIx) -> Result<(), EngineError> {
        self.refresh().await?;
        let path = self.graph.node(ix).phase.id.clone();
        let version = self.view.lock().unwrap().version(ix);
        let exec = self.executor_for(ix)?;
        let location = self.cfg.dispatcher.locate(&self.graph.node(ix).phase);
        self.cfg.progress.event(Event::RollingBack {
            phase: path.clone(),
            location: location.clone(),
        });
        let started = Instant::now();
        let ctx = self.context(ix, self.cfg.cancel.child_token());
        let claimed = self
            .record(ix, PhaseState::InProgress, None, Some(version))
            .await
            .map_err(|e| self.conflict(ix, e))?;
        let result = self
            .run_action(&location, Action::Rollback, exec, &ctx)
            .await;
        let (state, error) = match &result {
            Ok(()) => (PhaseState::RolledBack, None),
            Err(e) => (PhaseState::Failed, Some(e.to_string())),
        };
        self.record(ix, state, error.clone(), Some(claimed))
            .await
            .map_err(|e| self.conflict(ix, e))?;
        self.cfg.progress.event(Event::Finished {
            phase: path.clone(),
            state,
            elapsed: started.elapsed(),
            error: error.clone(),
        });
        match error {
            None => {
                self.counters
                    .done
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            Some(_) if self.cfg.cancel.is_cancelled() => Err(EngineError::Cancelled),
            Some(error) => Err(EngineError::RollbackFailed { phase: path, error }),
        }
    }

    /// The leaves a whole-plan rollback undoes, in order: every started,
    /// not rolled-back leaf, latest change first.
    pub fn rollback_order(&self) -> Vec<PhaseIx> {
        let view = self.view.lock().unwrap();
        let mut live: Vec<(u64, PhaseIx)> = self
            .graph
            .leaves()
            .iter()
            .filter(|&&l| view.state(l).is_live())
            .map(|&l| (view.version(l), l))
            .collect();
        live.sort_unstable_by(|a, b| b.cmp(a));
        live.into_iter().map(|(_, l)| l).collect()
    }

    /// Rolls back the whole plan, undoing started leaves in the reverse
    /// order of their latest change; stops at the first failure. With
    /// `dry_run` only reports what it would do. Returns the leaves (to be)
    /// rolled back.
    pub async fn rollback_plan(&self, dry_run: bool) -> Result<Vec<PhasePath>, EngineError> {
        self.ensure_active().await?;
        self.refresh().await?;
        let order = self.rollback_order();
        let paths: Vec<PhasePath> = order
            .iter()
            .map(|&l| self.graph.node(l).phase.id.clone())
            .collect();
        for &l in &order {
            let phase = &self.graph.node(l).phase;
            if dry_run {
                self.executor_for(l)?;
                self.cfg.progress.event(Event::WouldRollBack {
                    phase: phase.id.clone(),
                    location: self.cfg.dispatcher.locate(phase),
                });
            } else {
                self.rollback_leaf(l).await?;
            }
        }
        self.take_report();
        Ok(paths)
    }

    /// Completes the operation: `completed` if every leaf is completed,
    /// otherwise `failed`. Releases the operation lock. Returns the state.
    pub async fn complete(&self) -> Result<OperationState, EngineError> {
        self.ensure_active().await?;
        self.refresh().await?;
        let state = if self.view.lock().unwrap().is_completed() {
            OperationState::Completed
        } else {
            OperationState::Failed
        };
        self.store
            .set_operation_state(&self.record.id, state)
            .await?;
        self.store.release_lock(&self.record.id).await?;
        Ok(state)
    }
}

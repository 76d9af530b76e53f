//! Phase executors, their context, the registry, and progress events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::graph::{PhaseIx, PlanGraph};
use crate::path::PhasePath;
use crate::plan::{Node, Phase};
use crate::state::PhaseState;
use crate::view::PlanView;

/// The error an executor returns. Its `Display` text is recorded in the
/// changelog with the `failed` state, so it should say what went wrong and
/// where.
pub type ExecError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What an executor is given: the phase, the plan, a way to report
/// progress, and a cancellation token that is cancelled when the run is
/// interrupted or the phase times out.
#[derive(Clone)]
pub struct PhaseContext {
    pub(crate) graph: Arc<PlanGraph>,
    pub(crate) ix: PhaseIx,
    pub(crate) view: Arc<Mutex<PlanView>>,
    pub(crate) progress: Arc<dyn ProgressSink>,
    pub(crate) cancel: CancellationToken,
}

impl PhaseContext {
    /// Builds a context by hand (for testing executors in isolation).
    pub fn new(
        graph: Arc<PlanGraph>,
        phase: &PhasePath,
        progress: Arc<dyn ProgressSink>,
        cancel: CancellationToken,
    ) -> Option<Self> {
        let ix = graph.find(phase)?;
        let view = Arc::new(Mutex::new(PlanView::new(graph.clone())));
        Some(PhaseContext {
            graph,
            ix,
            view,
            progress,
            cancel,
        })
    }

    /// The phase being run.
    pub fn phase(&self) -> &Phase {
        &self.graph.node(self.ix).phase
    }

    /// The phase's path.
    pub fn path(&self) -> &PhasePath {
        &self.graph.node(self.ix).phase.id
    }

    /// The indexed plan (operation id, cluster, every phase).
    pub fn plan(&self) -> &Arc<PlanGraph> {
        &self.graph
    }

    /// The current state of another phase of the plan.
    pub fn state_of(&self, path: &PhasePath) -> Option<PhaseState> {
        let ix = self.graph.find(path)?;
        Some(self.view.lock().unwrap().state(ix))
    }

    /// A snapshot of the whole plan's current state.
    pub fn view(&self) -> PlanView {
        self.view.lock().unwrap().clone()
    }

    /// Cancelled when the run is interrupted or the phase times out.
    /// Long-running executors should select on it.
    pub fn cancel(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Reports a line of progress for this phase.
    pub fn info(&self, message: impl Into<String>) {
        self.progress.event(Event::Message {
            phase: self.path().clone(),
            message: message.into(),
        });
    }
}

/// Runs one kind of phase. Implementations must be idempotent enough for
/// resume: a phase interrupted half-way is executed again from the start.
#[async_trait]
pub trait PhaseExecutor: Send + Sync {
    /// Checks that the phase can run here and now. A failure records
    /// nothing: the phase stays in its current state.
    async fn pre_check(&self, _ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(())
    }

    /// Does the work.
    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError>;

    /// Checks the work took effect. A failure marks the phase failed
    /// (Gravity left it in progress).
    async fn post_check(&self, _ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(())
    }

    /// Undoes the work.
    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError>;
}

/// Executors by kind (the `executor` field of a phase).
#[derive(Clone, Default)]
pub struct ExecutorRegistry {
    kinds: HashMap<String, Arc<dyn PhaseExecutor>>,
}

impl ExecutorRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry with the built-in kinds: `command` (run a program, see
    /// [`crate::CommandExecutor`]) and `noop` (does nothing).
    pub fn with_builtins() -> Self {
        let mut r = Self::new();
        r.register("command", crate::command::CommandExecutor);
        r.register("noop", NoopExecutor);
        r
    }

    /// Registers (or replaces) the executor for `kind`.
    pub fn register(&mut self, kind: impl Into<String>, executor: impl PhaseExecutor + 'static) {
        self.kinds.insert(kind.into(), Arc::new(executor));
    }

    /// Registers a shared executor for `kind`.
    pub fn register_arc(&mut self, kind: impl Into<String>, executor: Arc<dyn PhaseExecutor>) {
        self.kinds.insert(kind.into(), executor);
    }

    /// The executor for `kind`.
    pub fn get(&self, kind: &str) -> Option<Arc<dyn PhaseExecutor>> {
        self.kinds.get(kind).cloned()
    }

    /// Whether `kind` is registered.
    pub fn contains(&self, kind: &str) -> bool {
        self.kinds.contains_key(kind)
    }

    /// Registered kinds, sorted.
    pub fn kinds(&self) -> Vec<&str> {
        let mut k: Vec<&str> = self.kinds.keys().map(|s| s.as_str()).collect();
        k.sort_unstable();
        k
    }
}

/// An executor that does nothing, for structure-only phases and tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopExecutor;

#[async_trait]
impl PhaseExecutor for NoopExecutor {
    async fn execute(&self, _ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(())
    }
    async fn rollback(&self, _ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(())
    }
}

/// Where a leaf runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// In this process.
    Local,
    /// On another node, through its agent.
    Remote(Node),
}

/// What the engine reports while it works. The CLI turns these into the
/// seed's progress lines; libraries never print.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A leaf starts executing.
    Executing {
        /// The phase.
        phase: PhasePath,
        /// Where.
        location: Location,
    },
    /// A leaf starts rolling back.
    RollingBack {
        /// The phase.
        phase: PhasePath,
        /// Where.
        location: Location,
    },
    /// A dry run would roll back this leaf.
    WouldRollBack {
        /// The phase.
        phase: PhasePath,
        /// Where.
        location: Location,
    },
    /// A leaf reached a final state for this run.
    Finished {
        /// The phase.
        phase: PhasePath,
        /// Its new state.
        state: PhaseState,
        /// How long it took.
        elapsed: Duration,
        /// Error text if it failed.
        error: Option<String>,
    },
    /// A leaf was skipped because it is already completed.
    Skipped {
        /// The phase.
        phase: PhasePath,
    },
    /// A line reported by an executor.
    Message {
        /// The phase.
        phase: PhasePath,
        /// The text.
        message: String,
    },
    /// A state change became durable.
    StateChange {
        /// The phase.
        phase: PhasePath,
        /// The new state.
        state: PhaseState,
    },
}

/// Receives progress events. Must be cheap and must not block.
pub trait ProgressSink: Send + Sync {
    /// One event.
    fn event(&self, event: Event);
}

/// Discards events.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn event(&self, _event: Event) {}
}

/// Collects events in memory (for tests and embedding).
#[derive(Debug, Default)]
pub struct CollectProgress(pub Mutex<Vec<Event>>);

impl ProgressSink for CollectProgress {
    fn event(&self, event: Event) {
        self.0.lock().unwrap().push(event);
    }
}

impl<F: Fn(Event) + Send + Sync> ProgressSink for F {
    fn event(&self, event: Event) {
        self(event)
    }
}

//! Operation plans for cluster upgrades, and the engine that runs them.
//!
//! An operation's **plan** is an immutable tree of [`Phase`]s addressed by
//! [`PhasePath`]s (`/masters/node-1/drain`) with `requires` edges. It is
//! indexed once into a [`PlanGraph`] (a petgraph DAG plus path index).
//! Progress is an append-only changelog of [`PhaseChange`]s kept by a
//! [`PlanStore`]; the current state of every phase is the plan folded with
//! the changelog ([`PlanView`]). The [`Engine`] executes phases with
//! [`PhaseExecutor`]s looked up in an [`ExecutorRegistry`], resumes,
//! rolls back and completes operations, and reports [`Event`]s to a
//! [`ProgressSink`]. [`render`] turns a view into the `gravity plan` table,
//! JSON, YAML or Graphviz.
//!
//! ```no_run
//! use std::sync::Arc;
//! use gravity_plan::{Engine, EngineConfig, ExecutorRegistry, FileStore, PlanDefinition, PlanStore, PhasePath};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let store: Arc<dyn PlanStore> = Arc::new(FileStore::open("/tmp/state")?);
//! let plan = PlanDefinition::from_file("runbook.yaml".as_ref())?.into_plan("runbook.yaml")?;
//! gravity_plan::PlanGraph::build(plan.clone())?; // validate
//! store.create_operation(&plan).await?;
//! let engine = Engine::open(store, &plan.operation_id, EngineConfig::new(ExecutorRegistry::with_builtins())).await?;
//! engine.execute(&PhasePath::parse("/init")?, false).await?;
//! engine.resume().await?;
//! engine.complete().await?;
//! # Ok(()) }
//! ```

mod command;
mod data;
mod dispatch;
mod duration;
mod engine;
mod executor;
mod graph;
mod path;
mod plan;
pub mod render;
mod state;
mod store;
mod view;

pub use command::CommandExecutor;
pub use data::PhaseData;
pub use dispatch::{Action, Dispatcher, LocalDispatcher, run_local};
pub use duration::{DurationError, parse_duration};
pub use engine::{Engine, EngineConfig, EngineError, RunReport};
pub use executor::{
    CollectProgress, Event, ExecError, ExecutorRegistry, Location, NoProgress, NoopExecutor,
    PhaseContext, PhaseExecutor, ProgressSink,
};
pub use graph::{EdgeKind, GraphError, PhaseIx, PhaseNode, PlanGraph};
pub use path::{MAX_PATH_LEN, PathError, PhasePath};
pub use plan::{
    MAX_DEPTH, MAX_PLAN_FILE, Node, Phase, PhaseDefinition, Plan, PlanDefinition, PlanFileError,
};
pub use state::{Actor, NewChange, OperationState, PhaseChange, PhaseState, derive_state};
pub use store::{
    CommitStats, FileStore, LockInfo, LogIndex, MemoryStore, OperationRecord, PlanStore,
    StoreError, check_operation_id,
};
pub use view::PlanView;

//! Where leaves run: the [`Dispatcher`] trait and the local default.

use std::sync::Arc;

use async_trait::async_trait;

use crate::executor::{ExecError, Location, PhaseContext, PhaseExecutor};
use crate::plan::Phase;

/// One call into an executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// [`PhaseExecutor::pre_check`].
    PreCheck,
    /// [`PhaseExecutor::execute`].
    Execute,
    /// [`PhaseExecutor::post_check`].
    PostCheck,
    /// [`PhaseExecutor::rollback`].
    Rollback,
}

/// Decides where a leaf runs and runs it there. The engine records every
/// state change itself, wherever the phase ran, so a remote node needs no
/// access to the plan store.
#[async_trait]
pub trait Dispatcher: Send + Sync {
    /// Where `phase` runs.
    fn locate(&self, phase: &Phase) -> Location;

    /// Runs one action of `executor` for the phase in `ctx` at `location`.
    async fn run(
        &self,
        location: &Location,
        action: Action,
        executor: Arc<dyn PhaseExecutor>,
        ctx: &PhaseContext,
    ) -> Result<(), ExecError>;
}

/// Runs everything in this process.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalDispatcher;

/// Calls the executor method named by `action`.
pub async fn run_local(
    action: Action,
    executor: &dyn PhaseExecutor,
    ctx: &PhaseContext,
) -> Result<(), ExecError> {
    match action {
        Action::PreCheck => executor.pre_check(ctx).await,
        Action::Execute => executor.execute(ctx).await,
        Action::PostCheck => executor.post_check(ctx).await,
        Action::Rollback => executor.rollback(ctx).await,
    }
}

#[async_trait]
impl Dispatcher for LocalDispatcher {
    fn locate(&self, _phase: &Phase) -> Location {
        Location::Local
    }

    async fn run(
        &self,
        _location: &Location,
        action: Action,
        executor: Arc<dyn PhaseExecutor>,
        ctx: &PhaseContext,
    ) -> Result<(), ExecError> {
        run_local(action, executor.as_ref(), ctx).await
    }
}

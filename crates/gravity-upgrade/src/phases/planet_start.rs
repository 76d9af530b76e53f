//! `planet_start`: the new runtime started after the Docker device was
//! migrated (`update_system` then leaves it stopped).

use async_trait::async_trait;
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};

use super::common::{
    Context, check_run_node, data, executor_struct, gate, note_change, take_change,
};
use crate::executors::PlanetStartData;

executor_struct!(
    /// `planet_start`: starts the new runtime. Rollback stops it if this
    /// phase started it.
    PlanetStart
);

#[async_trait]
impl PhaseExecutor for PlanetStart {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(check_run_node(&self.b, ctx).await?)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: PlanetStartData = data(ctx)?;
        let node = &d.update.server.hostname;
        gate(&self.b, ctx, Some(node)).await?;
        let started = self
            .b
            .nodes
            .set_runtime_running(node, true)
            .await
            .ctx(|| format!("failed to start the runtime on node {node}"))?;
        Ok(note_change(&self.b, ctx, node, started).await?)
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: PlanetStartData = data(ctx)?;
        let node = &d.update.server.hostname;
        if take_change(&self.b, ctx, node).await? {
            self.b
                .nodes
                .set_runtime_running(node, false)
                .await
                .ctx(|| format!("failed to stop the runtime on node {node}"))?;
        }
        Ok(())
    }
}

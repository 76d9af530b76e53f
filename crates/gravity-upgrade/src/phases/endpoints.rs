//! `endpoints`: waits until the upgraded node serves again.

use async_trait::async_trait;
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};

use super::common::{Context, check_master, executor_struct, gated_node_data, kube_name};

executor_struct!(
    /// `endpoints`: waits for the node's DNS and a gravity-site endpoint
    /// (up to [`crate::backend::Timing::endpoints_timeout`]). Rollback:
    /// nothing, it changes nothing. Runs on a master.
    Endpoints
);

#[async_trait]
impl PhaseExecutor for Endpoints {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(check_master(&self.b, ctx).await?)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d = gated_node_data(&self.b, ctx).await?;
        self.b
            .kube
            .wait_endpoints(&kube_name(&d.server), self.b.timing.endpoints_timeout)
            .await
            .ctx(|| format!("endpoints not ready on node {}", d.server.display()))?;
        Ok(())
    }

    async fn rollback(&self, _ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(())
    }
}

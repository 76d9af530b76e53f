//! `flannel_restart`: flanneld restarted on a node after the upgrade.

use async_trait::async_trait;
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};

use super::common::{Context, check_run_node, executor_struct, gated_node_data};

executor_struct!(
    /// `flannel_restart`: restarts flanneld. Rollback: nothing (a restart
    /// changes no state).
    FlannelRestart
);

#[async_trait]
impl PhaseExecutor for FlannelRestart {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(check_run_node(&self.b, ctx).await?)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d = gated_node_data(&self.b, ctx).await?;
        let node = &d.server.hostname;
        self.b
            .nodes
            .restart_service(node, "flanneld")
            .await
            .ctx(|| "failed to restart flanneld".into())?;
        Ok(())
    }

    async fn rollback(&self, _ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(())
    }
}

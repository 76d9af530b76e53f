//! `drain_node`: cordons the node and evicts its pods (except DaemonSet
//! and mirror pods), honouring disruption budgets up to
//! [`crate::backend::Timing::eviction_deadline`].

use async_trait::async_trait;
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};

use super::common::{
    Context, NodeChange, change_node, check_master, executor_struct, kube_name, undo_node_change,
};
use crate::backend::DrainOptions;

executor_struct!(
    /// `drain_node`: cordons and drains the node. Rollback uncordons it if
    /// this phase cordoned it (evicted pods stay where they were
    /// rescheduled). Runs on a master.
    Drain
);

#[async_trait]
impl PhaseExecutor for Drain {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(check_master(&self.b, ctx).await?)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d = change_node(&self.b, ctx, NodeChange::Cordon).await?;
        let h = kube_name(&d.server);
        let opts = DrainOptions {
            eviction_deadline: self.b.timing.eviction_deadline,
        };
        let r = self
            .b
            .kube
            .drain(&h, &opts)
            .await
            .ctx(|| format!("failed to drain node {}", d.server.display()))?;
        ctx.info(format!(
            "evicted {} pods from {h} ({} DaemonSet/mirror pods left)",
            r.evicted.len(),
            r.skipped.len()
        ));
        Ok(())
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(undo_node_change(&self.b, ctx, NodeChange::Cordon).await?)
    }
}

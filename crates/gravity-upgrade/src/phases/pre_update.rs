//! `pre_update`: the new application's `preUpdate` hook, before anything
//! changes.

use async_trait::async_trait;
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};

use super::common::{Context, check_master, data, executor_struct, gate};
use crate::backend::Hook;
use crate::executors::AppData;

executor_struct!(
    /// `pre_update`: runs the new application's `preUpdate` hook if it has
    /// one. Rollback: nothing (Gravity's too).
    PreUpdate
);

#[async_trait]
impl PhaseExecutor for PreUpdate {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(check_master(&self.b, ctx).await?)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: AppData = data(ctx)?;
        gate(&self.b, ctx, None).await?;
        let out = self
            .b
            .kube
            .run_hook(&d.package, Hook::PreUpdate)
            .await
            .ctx(|| format!("{}(preUpdate) hook failed", d.package))?;
        for l in out.logs {
            ctx.info(l);
        }
        Ok(())
    }

    async fn rollback(&self, _ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(())
    }
}

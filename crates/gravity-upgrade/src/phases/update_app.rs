//! `update_app`: a runtime or user application updated through its hooks
//! (`/runtime/<app>`, `/app/<app>`).

use async_trait::async_trait;
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};

use super::common::{Context, check_master, data, executor_struct, gate};
use crate::backend::Hook;
use crate::executors::AppData;

executor_struct!(
    /// `update_app`: runs the `networkUpdate`, `update` and `postUpdate`
    /// hooks, each if the application defines it (resources only for
    /// `rbac-app`), and records the new version. Rollback runs the
    /// `rollback`, `postRollback` and `networkRollback` hooks and records
    /// the previous version again, if the installed version is the one
    /// this phase set.
    UpdateApp
);

#[async_trait]
impl PhaseExecutor for UpdateApp {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(check_master(&self.b, ctx).await?)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: AppData = data(ctx)?;
        gate(&self.b, ctx, None).await?;
        let p = &d.package;
        if p.name() != "rbac-app" {
            for h in [Hook::NetworkUpdate, Hook::Update, Hook::PostUpdate] {
                let out = self
                    .b
                    .kube
                    .run_hook(p, h)
                    .await
                    .ctx(|| format!("{p}({}) hook failed", h.as_str()))?;
                for l in out.logs {
                    ctx.info(l);
                }
            }
        } else {
            ctx.info(format!("updating resources of {p}"));
        }
        self.b
            .kube
            .set_application(p.repository(), p.name(), Some(p))
            .await
            .ctx(|| format!("failed to record application {p}"))?;
        Ok(())
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: AppData = data(ctx)?;
        let p = &d.package;
        let current = self
            .b
            .kube
            .application(p.repository(), p.name())
            .await
            .ctx(|| format!("failed to read application {p}"))?;
        if current.as_ref() != Some(p) {
            ctx.info(format!("{p} is not installed; nothing to roll back"));
            return Ok(());
        }
        if p.name() != "rbac-app" {
            for h in [Hook::Rollback, Hook::PostRollback, Hook::NetworkRollback] {
                self.b
                    .kube
                    .run_hook(p, h)
                    .await
                    .ctx(|| format!("{p}({}) hook failed", h.as_str()))?;
            }
        }
        self.b
            .kube
            .set_application(p.repository(), p.name(), d.installed_package.as_ref())
            .await
            .ctx(|| format!("failed to restore application {}", p.name()))?;
        Ok(())
    }
}

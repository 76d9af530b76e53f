//! `etcd_shutdown`: the etcd members stopped before their upgrade.

use async_trait::async_trait;
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};

use super::common::{
    Context, data, executor_struct, gated_etcd_data, note_change, restart_gravity_site, take_change,
};
use crate::backend::EtcdAddress;
use crate::executors::EtcdData;

executor_struct!(
    /// `etcd_shutdown`: stops the member (`etcd disable --stop-api`).
    /// Rollback starts it again on the normal address if this phase
    /// stopped it, and on the leader restarts gravity-site.
    EtcdShutdown
);

#[async_trait]
impl PhaseExecutor for EtcdShutdown {
    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d = gated_etcd_data(&self.b, ctx).await?;
        let h = &d.server.hostname;
        let was_running = self
            .b
            .etcd
            .shutdown(h)
            .await
            .ctx(|| format!("failed to shut down etcd on node {h}"))?;
        Ok(note_change(&self.b, ctx, h, was_running).await?)
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: EtcdData = data(ctx)?;
        let h = &d.server.hostname;
        if take_change(&self.b, ctx, h).await? {
            self.b
                .etcd
                .start(h, EtcdAddress::Normal)
                .await
                .ctx(|| format!("failed to start etcd on node {h}"))?;
            if d.leader {
                restart_gravity_site(&self.b).await?;
            }
        }
        Ok(())
    }
}

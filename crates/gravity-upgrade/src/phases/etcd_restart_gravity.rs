//! `etcd_restart_gravity`: gravity-site restarted on the restored etcd,
//! which repairs its leader election.

use async_trait::async_trait;
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};

use super::common::{executor_struct, gated_etcd_data, restart_gravity_site};

executor_struct!(
    /// `etcd_restart_gravity`: deletes the gravity-site pods (their
    /// DaemonSet recreates them). Rollback: nothing.
    EtcdRestartGravity
);

#[async_trait]
impl PhaseExecutor for EtcdRestartGravity {
    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        gated_etcd_data(&self.b, ctx).await?;
        let n = restart_gravity_site(&self.b).await?;
        ctx.info(format!("restarted {n} gravity-site pods"));
        Ok(())
    }

    async fn rollback(&self, _ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(())
    }
}

//! `etcd_restore`: the backup restored into the upgraded leader member,
//! which serves on the upgrade address until `etcd_restart`.

use async_trait::async_trait;
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};

use super::common::{Context, ETCD_BACKUP_PATH, data, executor_struct, gated_etcd_data};
use crate::backend::EtcdAddress;
use crate::executors::EtcdData;

executor_struct!(
    /// `etcd_restore`: restores [`ETCD_BACKUP_PATH`] into the leader's
    /// member; refuses truncated or altered backups. Its pre-check waits
    /// for the member to serve on the upgrade address. Rollback: nothing
    /// (`etcd_upgrade`'s rollback returns to the kept data dir).
    EtcdRestore
);

#[async_trait]
impl PhaseExecutor for EtcdRestore {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: EtcdData = data(ctx)?;
        let h = &d.server.hostname;
        let m = self
            .b
            .etcd
            .member(h)
            .await
            .ctx(|| format!("wait-for-etcd on node {h}"))?;
        // Gravity's wait-for-etcd checked the upgrade address (127.0.0.2):
        // a member already back on its normal address would let clients
        // see the restore half-done.
        if !m.is_some_and(|m| m.healthy && m.serving == Some(EtcdAddress::Upgrade)) {
            return Err(format!(
                "etcd on node {} is not serving on the upgrade address; execute /etcd/upgrade/{h} first",
                d.server.display()
            )
            .into());
        }
        Ok(())
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d = gated_etcd_data(&self.b, ctx).await?;
        let h = &d.server.hostname;
        let n = self
            .b
            .etcd
            .restore(h, ETCD_BACKUP_PATH)
            .await
            .ctx(|| format!("failed to restore etcd on node {h}"))?;
        ctx.info(format!("restored {n} keys"));
        Ok(())
    }

    async fn rollback(&self, _ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(())
    }
}

//! `etcd_backup`: a backup of the cluster's etcd data on each master,
//! before any member is touched.

use async_trait::async_trait;
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};

use super::common::{Context, ETCD_BACKUP_PATH, executor_struct, gated_etcd_data};

executor_struct!(
    /// `etcd_backup`: writes the member's keys to [`ETCD_BACKUP_PATH`]
    /// (Gravity's JSON-lines format, [`crate::backend::backup`]). Rollback:
    /// nothing, the file is kept.
    EtcdBackup
);

#[async_trait]
impl PhaseExecutor for EtcdBackup {
    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d = gated_etcd_data(&self.b, ctx).await?;
        let h = &d.server.hostname;
        let i = self
            .b
            .etcd
            .backup(h, ETCD_BACKUP_PATH)
            .await
            .ctx(|| "failed to backup etcd".into())?;
        ctx.info(format!(
            "backed up {} keys on {h} (sha256 {})",
            i.keys, i.sha256
        ));
        Ok(())
    }

    async fn rollback(&self, _ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(())
    }
}

//! `etcd_upgrade`: each master's member switched to the new etcd version
//! on a new data dir, started on the upgrade address (invisible to
//! clients until `etcd_restart`).

use async_trait::async_trait;
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};

use super::common::{Context, data, executor_struct, gated_etcd_data};
use crate::backend::EtcdAddress;
use crate::executors::EtcdData;

executor_struct!(
    /// `etcd_upgrade`: upgrades the stopped member to the new version
    /// (keeping the old version and data dir) and starts it on the upgrade
    /// address. Rollback, if the member runs the new version with a kept
    /// one: stops it and switches back to the kept version and data dir.
    EtcdUpgrade
);

#[async_trait]
impl PhaseExecutor for EtcdUpgrade {
    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d = gated_etcd_data(&self.b, ctx).await?;
        let (h, v) = (&d.server.hostname, &d.update);
        let etcd = &self.b.etcd;
        etcd.upgrade(h, v)
            .await
            .ctx(|| format!("failed to upgrade etcd on node {h} to {v}"))?;
        etcd.start(h, EtcdAddress::Upgrade)
            .await
            .ctx(|| format!("failed to start etcd {v} on node {h}"))?;
        Ok(())
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: EtcdData = data(ctx)?;
        let h = &d.server.hostname;
        let etcd = &self.b.etcd;
        let m = etcd.member(h).await.ctx(|| format!("etcd on node {h}"))?;
        if m.is_some_and(|m| m.version == d.update && m.previous.is_some()) {
            etcd.shutdown(h)
                .await
                .ctx(|| format!("failed to stop etcd on node {h}"))?;
            etcd.rollback_upgrade(h)
                .await
                .ctx(|| format!("failed to roll back etcd on node {h}"))?;
        }
        Ok(())
    }
}

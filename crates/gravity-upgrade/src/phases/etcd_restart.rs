//! `etcd_restart`: every node's etcd back on the normal address once the
//! data is restored (masters' members; workers' etcd proxies are reset).

use async_trait::async_trait;
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};

use super::common::{data, executor_struct, gated_etcd_data, restart_etcd};
use crate::backend::EtcdAddress;
use crate::executors::EtcdData;

executor_struct!(
    /// `etcd_restart`: restarts etcd on the normal address. Rollback puts
    /// a member back on the upgrade address (a worker: nothing).
    EtcdRestart
);

#[async_trait]
impl PhaseExecutor for EtcdRestart {
    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d = gated_etcd_data(&self.b, ctx).await?;
        Ok(restart_etcd(&self.b, &d.server.hostname, EtcdAddress::Normal, true).await?)
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: EtcdData = data(ctx)?;
        Ok(restart_etcd(&self.b, &d.server.hostname, EtcdAddress::Upgrade, false).await?)
    }
}

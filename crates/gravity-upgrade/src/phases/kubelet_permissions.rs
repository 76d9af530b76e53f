//! `kubelet_permissions`: lets the kubelets of the new runtime act during
//! the upgrade.

use async_trait::async_trait;
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};

use super::common::{check_master, create_objects, delete_created_objects, executor_struct};

executor_struct!(
    /// `kubelet_permissions`: creates ClusterRole/Binding `kubelet-upgrade`
    /// if absent. Rollback deletes only what it created. Runs on a master.
    KubeletPermissions
);

#[async_trait]
impl PhaseExecutor for KubeletPermissions {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(check_master(&self.b, ctx).await?)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let create = self.b.kube.create_kubelet_permissions();
        Ok(create_objects(&self.b, ctx, "failed to create kubelet permissions", create).await?)
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(delete_created_objects(&self.b, ctx).await?)
    }
}

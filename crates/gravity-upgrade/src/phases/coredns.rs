//! `coredns`: the CoreDNS RBAC objects and configuration the new runtime
//! expects.

use async_trait::async_trait;
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};

use super::common::{check_master, create_objects, delete_created_objects, executor_struct};

executor_struct!(
    /// `coredns`: creates ClusterRole/Binding `gravity:coredns` and the
    /// `kube-system/coredns` ConfigMap if absent. Rollback deletes only
    /// what it created. Runs on a master.
    CoreDns
);

/// The Corefile of a new `coredns` ConfigMap.
pub const COREFILE: &str = ".:53 {\n    reload\n    errors\n    health\n    kubernetes cluster.local in-addr.arpa ip6.arpa {\n      pods insecure\n      fallthrough in-addr.arpa ip6.arpa\n    }\n    forward . /etc/resolv.conf\n    cache 30\n}\n";

#[async_trait]
impl PhaseExecutor for CoreDns {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(check_master(&self.b, ctx).await?)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let create = self.b.kube.create_coredns(COREFILE);
        Ok(create_objects(
            &self.b,
            ctx,
            "failed to provision CoreDNS resources",
            create,
        )
        .await?)
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(delete_created_objects(&self.b, ctx).await?)
    }
}

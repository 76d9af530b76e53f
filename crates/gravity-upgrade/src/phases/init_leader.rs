//! `update_init_leader`: the lead master's init: RPC credentials rotated
//! (the old ones backed up) and the leader's package labels fixed as by
//! `update_init`.

use async_trait::async_trait;
use gravity_pack::location::StoreSelector;
use gravity_pack::{Labels, Locator, PackageOptions, PackageStore};
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};

use super::common::{Context, check_run_node, data, executor_struct, gate};
use super::init::{init_node, uninit_node};
use crate::executors::InitData;

executor_struct!(
    /// `update_init_leader`: rotates the RPC credentials (backing up the
    /// old ones) and fixes the leader's package labels. Rollback restores
    /// the credentials and deletes the cluster packages labelled with this
    /// operation.
    InitLeader
);

fn rpc() -> Locator {
    Locator::parse("gravitational.io/rpcagent-secrets:0.0.1").expect("valid")
}

/// The cluster, the operation and the package keeping the old credentials.
fn rpc_backup(ctx: &PhaseContext) -> Result<(String, String, Locator), ExecError> {
    let h = ctx.plan().header();
    let backup = Locator::new(&h.cluster_name, "rpcagent-secrets-backup", "0.0.1")?;
    Ok((h.cluster_name.clone(), h.operation_id.clone(), backup))
}

#[async_trait]
impl PhaseExecutor for InitLeader {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(check_run_node(&self.b, ctx).await?)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: InitData = data(ctx)?;
        gate(&self.b, ctx, Some(&d.update.server.hostname)).await?;
        let (_, op, backup) = rpc_backup(ctx)?;
        self.b
            .packages
            .with(&StoreSelector::Cluster, |s| {
                let Ok((env, mut r)) = s.read(&rpc()) else {
                    return Ok(());
                };
                if s.envelope(&backup).is_err() {
                    let mut labels = env.labels.clone();
                    labels.insert("operation-id", op.clone());
                    s.create(&backup, &mut r, PackageOptions::labels(labels))?;
                }
                let fresh = format!("rpc credentials rotated by operation {op}\n");
                if s.envelope(&rpc())?.size_bytes != fresh.len() as u64 {
                    s.upsert(
                        &rpc(),
                        &mut fresh.as_bytes(),
                        PackageOptions::labels(env.labels),
                    )?;
                }
                Ok(())
            })
            .ctx(|| "failed to update RPC credentials".into())?;
        Ok(init_node(&self.b, ctx, &d).await?)
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: InitData = data(ctx)?;
        uninit_node(&self.b, ctx, &d).await?;
        let (cluster, op, backup) = rpc_backup(ctx)?;
        self.b
            .packages
            .with(&StoreSelector::Cluster, |s| {
                if let Ok((env, mut r)) = s.read(&backup) {
                    let mut labels = env.labels.clone();
                    labels.remove("operation-id");
                    s.upsert(&rpc(), &mut r, PackageOptions::labels(labels))?;
                    s.delete(&backup)?;
                }
                for e in s.find_by_labels(
                    Some(&cluster),
                    &Labels::from_pairs([("operation-id", op.as_str())]),
                )? {
                    s.delete(&e.locator)?;
                }
                Ok(())
            })
            .ctx(|| "failed to restore RPC credentials".into())?;
        Ok(())
    }
}

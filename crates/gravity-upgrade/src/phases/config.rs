//! `config`: pull the node's new teleport master configuration.

use async_trait::async_trait;
use gravity_pack::location::StoreSelector;
use gravity_pack::{Labels, PackageStore, PullOptions, WriteMode, pull};
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};

use super::common::{Context, check_run_node, data, executor_struct, gated_node_data};
use crate::executors::NodeData;

executor_struct!(
    /// `config`: pulls the latest cluster package labelled {advertise-ip,
    /// operation-id of this operation, purpose teleport-master-config} into
    /// the node's store ("No teleport master config update found." when
    /// there is none). Rollback deletes the node's packages with those
    /// labels.
    Config
);

fn labels(ctx: &PhaseContext, d: &NodeData) -> Labels {
    Labels::from_pairs([
        ("advertise-ip", d.server.advertise_ip.as_str()),
        ("operation-id", ctx.plan().header().operation_id.as_str()),
        ("purpose", "teleport-master-config"),
    ])
}

#[async_trait]
impl PhaseExecutor for Config {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(check_run_node(&self.b, ctx).await?)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d = gated_node_data(&self.b, ctx).await?;
        let node = &d.server.hostname;
        let filter = labels(ctx, &d);
        let repo = ctx.plan().header().cluster_name.clone();
        let pulled = self
            .b
            .packages
            .with_pair(node, |cs, ns| {
                let Some(e) = cs.find_by_labels(Some(&repo), &filter)?.pop() else {
                    return Ok(None);
                };
                let opts = PullOptions {
                    mode: WriteMode::Upsert,
                    ..PullOptions::default()
                };
                pull(
                    cs,
                    ns,
                    std::slice::from_ref(&e.locator),
                    &opts,
                    &gravity_pack::NoProgress,
                )?;
                Ok(Some(e.locator))
            })
            .ctx(|| format!("failed to pull the teleport configuration to node {node}"))?;
        match pulled {
            Some(l) => ctx.info(format!("pulled {l}")),
            None => ctx.info("No teleport master config update found."),
        }
        Ok(())
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: NodeData = data(ctx)?;
        let node = &d.server.hostname;
        let filter = labels(ctx, &d);
        self.b
            .packages
            .with(&StoreSelector::Node(node.clone()), |ns| {
                for e in ns.find_by_labels(None, &filter)? {
                    ns.delete(&e.locator)?;
                }
                Ok(())
            })
            .ctx(|| format!("failed to delete the teleport configuration on node {node}"))?;
        Ok(())
    }
}

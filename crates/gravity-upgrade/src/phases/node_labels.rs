//! `labels`: the migration that sets `gravitational.io/advertise-ip` on
//! every Kubernetes node.

use std::collections::BTreeMap;

use async_trait::async_trait;
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};

use super::common::{
    Context, check_master, clear, data, executor_struct, gate, load_first, remember_first,
};
use crate::executors::LabelsData;

/// The label set on every node.
pub const ADVERTISE_IP: &str = "gravitational.io/advertise-ip";

executor_struct!(
    /// `labels`: sets [`ADVERTISE_IP`] on every node of the plan. Rollback
    /// restores the value each node had before (removing the label where
    /// there was none). Runs on a master.
    NodeLabels
);

async fn set(
    exec: &NodeLabels,
    node: &str,
    value: Option<String>,
) -> Result<Option<String>, ExecError> {
    let set = BTreeMap::from([(ADVERTISE_IP.to_string(), value)]);
    let mut old = exec
        .b
        .kube
        .set_node_labels(node, &set)
        .await
        .ctx(|| format!("failed to set the labels of node {node}"))?;
    Ok(old.remove(ADVERTISE_IP).flatten())
}

#[async_trait]
impl PhaseExecutor for NodeLabels {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(check_master(&self.b, ctx).await?)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: LabelsData = data(ctx)?;
        gate(&self.b, ctx, None).await?;
        // The record is kept on the first server of the plan.
        let Some(first) = d.servers.first() else {
            return Ok(());
        };
        for s in &d.servers {
            let name = s.nodename.clone().unwrap_or_else(|| s.hostname.clone());
            let old = set(self, &name, Some(s.advertise_ip.clone())).await?;
            remember_first(&self.b, ctx, &first.hostname, name, old).await?;
        }
        Ok(())
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: LabelsData = data(ctx)?;
        let Some(first) = d.servers.first() else {
            return Ok(());
        };
        let Some(prev) = load_first::<Option<String>>(&self.b, ctx, &first.hostname).await? else {
            return Ok(());
        };
        for (name, v) in prev {
            set(self, &name, v).await?;
        }
        Ok(clear(&self.b, ctx, &first.hostname).await?)
    }
}

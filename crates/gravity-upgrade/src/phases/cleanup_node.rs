//! `cleanup_node`: journal cleanup and removal of superseded packages.
//!
//! What can be undone: the packages removed from the node's store are
//! recorded and a rollback pulls them back from the cluster store with
//! their recorded labels (this fails, naming the package, if the cluster
//! store no longer has it). What cannot: the journal flush and rotation.

use async_trait::async_trait;
use gravity_pack::location::StoreSelector;
use gravity_pack::{Labels, Locator, PackageStore, PullOptions, pull};
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};
use serde::{Deserialize, Serialize};

use super::common::{
    Context, PhaseError, check_run_node, clear, data, executor_struct, gated_node_data, load, save,
};
use crate::executors::NodeData;

executor_struct!(
    /// `cleanup_node`: flushes the journal and deletes from the node's store
    /// every package without `installed` of which a newer version is
    /// installed (the old planet, its configuration and secrets, the old
    /// gravity). Rollback pulls the deleted packages back (see the module
    /// docs for what cannot be undone).
    Cleanup
);

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Removed {
    packages: Vec<(Locator, Labels)>,
}

#[async_trait]
impl PhaseExecutor for Cleanup {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(check_run_node(&self.b, ctx).await?)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d = gated_node_data(&self.b, ctx).await?;
        let node = d.server.hostname.clone();
        if let Err(e) = self.b.nodes.gc_journal(&node).await {
            ctx.info(format!(
                "warning: failed to clean up the journal on {node}: {e}"
            ));
        }
        let mut rec: Removed = load(&self.b, ctx, &node).await?.unwrap_or_default();
        let victims = self
            .b
            .packages
            .with(&StoreSelector::Node(node.clone()), |s| {
                let all = s.list(None)?;
                Ok(all
                    .iter()
                    .filter(|e| !e.labels.has("installed", "installed"))
                    .filter(|e| {
                        all.iter().any(|o| {
                            o.locator.repository() == e.locator.repository()
                                && o.locator.name() == e.locator.name()
                                && o.labels.has("installed", "installed")
                                && o.locator.version() > e.locator.version()
                        })
                    })
                    .map(|e| (e.locator.clone(), e.labels.clone()))
                    .collect::<Vec<_>>())
            })
            .ctx(|| format!("failed to list the packages of node {node}"))?;
        rec.packages.extend(victims.iter().cloned());
        save(&self.b, ctx, &node, Some(&rec)).await?;
        self.b
            .packages
            .with(&StoreSelector::Node(node.clone()), |s| {
                for (l, _) in &victims {
                    s.delete(l)?;
                }
                Ok(())
            })
            .ctx(|| format!("failed to delete old packages on node {node}"))?;
        ctx.info(format!(
            "removed {} old packages from node {node}",
            victims.len()
        ));
        Ok(())
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: NodeData = data(ctx)?;
        let node = d.server.hostname.clone();
        let Some(rec) = load::<Removed>(&self.b, ctx, &node).await? else {
            return Ok(());
        };
        let missing = self
            .b
            .packages
            .with_pair(&node, |cs, ns| {
                for (l, labels) in &rec.packages {
                    if ns.envelope(l).is_ok() {
                        continue;
                    }
                    if cs.envelope(l).is_err() {
                        return Ok(Some(l.clone()));
                    }
                    pull(
                        cs,
                        ns,
                        std::slice::from_ref(l),
                        &PullOptions::default(),
                        &gravity_pack::NoProgress,
                    )?;
                    let now = ns.envelope(l)?.labels;
                    let remove: Vec<String> = now
                        .iter()
                        .filter(|(k, _)| labels.get(k).is_none())
                        .map(|(k, _)| k.to_string())
                        .collect();
                    ns.update_labels(l, labels, &remove)?;
                }
                Ok(None)
            })
            .ctx(|| format!("failed to restore packages on node {node}"))?;
        if let Some(l) = missing {
            return Err(Box::new(PhaseError::MissingPackage {
                package: l.to_string(),
                store: "cluster".into(),
                hint: format!(
                    "it was removed from node {node} by this phase and cannot be restored; upload an image that contains it and retry"
                ),
            }));
        }
        Ok(clear(&self.b, ctx, &node).await?)
    }
}

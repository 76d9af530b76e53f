//! `update_init_leader` and `update_init`: RPC credentials and package labels.

use async_trait::async_trait;
use gravity_pack::location::StoreSelector;
use gravity_pack::{Labels, Locator, PackageOptions, PackageStore};
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};
use serde::{Deserialize, Serialize};

use super::{Context, PhaseError, boxed, check_run_node, data, executor_struct, gate, load, save};
use crate::backend::Backends;
use crate::executors::{InitData, UpdateServer};

executor_struct!(
    /// `update_init_leader`: rotates the RPC credentials (backing up the
    /// old ones) and fixes the leader's package labels. Rollback restores
    /// the credentials and deletes the cluster packages labelled with this
    /// operation.
    InitLeader
);
executor_struct!(
    /// `update_init`: fixes the installed-package labels of a node's store
    /// (spec §3.2). Rollback removes the labels it added.
    InitNode
);

/// A label this phase added to a node's package.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AddedLabel {
    package: Locator,
    key: String,
}

fn rpc() -> Locator {
    Locator::parse("gravitational.io/rpcagent-secrets:0.0.1").expect("valid")
}

/// Adds the labels Gravity's init ensures; returns what it added.
fn fix_labels(b: &Backends, u: &UpdateServer) -> Result<Vec<AddedLabel>, PhaseError> {
    let node = &u.server.hostname;
    b.packages
        .with(&StoreSelector::Node(node.clone()), |s| {
            let mut added = Vec::new();
            let mut ensure = |s: &gravity_pack::LocalStore, l: &Locator, k: &str, v: &str| {
                if let Ok(env) = s.envelope(l)
                    && env.labels.get(k) != Some(v)
                {
                    s.update_labels(l, &Labels::from_pairs([(k, v)]), &[])?;
                    if env.labels.get(k).is_none() {
                        added.push(AddedLabel {
                            package: l.clone(),
                            key: k.to_string(),
                        });
                    }
                }
                Ok::<_, gravity_pack::PackError>(())
            };
            ensure(s, &u.runtime.installed, "purpose", "runtime")?;
            ensure(s, &u.runtime.installed, "installed", "installed")?;
            for purpose in ["planet-config", "planet-secrets", "teleport-node-config"] {
                let all = s.find_by_labels(None, &Labels::from_pairs([("purpose", purpose)]))?;
                if !all.iter().any(|e| e.labels.has("installed", "installed"))
                    && let Some(e) = all.last()
                {
                    ensure(s, &e.locator.clone(), "installed", "installed")?;
                }
            }
            Ok(added)
        })
        .ctx(|| format!("failed to update existing package labels on node {node}"))
}

fn unfix_labels(b: &Backends, node: &str, added: &[AddedLabel]) -> Result<(), PhaseError> {
    b.packages
        .with(&StoreSelector::Node(node.to_string()), |s| {
            for a in added {
                if s.envelope(&a.package).is_ok() {
                    s.update_labels(&a.package, &Labels::new(), std::slice::from_ref(&a.key))?;
                }
            }
            Ok(())
        })
        .ctx(|| format!("failed to restore package labels on node {node}"))
}

async fn init_node(b: &Backends, ctx: &PhaseContext, d: &InitData) -> Result<(), PhaseError> {
    let node = &d.update.server.hostname;
    let mut added: Vec<AddedLabel> = load(b, ctx, node).await?.unwrap_or_default();
    added.extend(fix_labels(b, &d.update)?);
    save(b, ctx, node, Some(&added)).await
}

async fn uninit_node(b: &Backends, ctx: &PhaseContext, d: &InitData) -> Result<(), PhaseError> {
    let node = &d.update.server.hostname;
    if let Some(added) = load::<Vec<AddedLabel>>(b, ctx, node).await? {
        unfix_labels(b, node, &added)?;
        save::<()>(b, ctx, node, None).await?;
    }
    Ok(())
}

#[async_trait]
impl PhaseExecutor for InitNode {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        check_run_node(&self.b, ctx).await.map_err(boxed)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: InitData = data(ctx)?;
        gate(&self.b, ctx, Some(&d.update.server.hostname)).await?;
        init_node(&self.b, ctx, &d).await.map_err(boxed)
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: InitData = data(ctx)?;
        uninit_node(&self.b, ctx, &d).await.map_err(boxed)
    }
}

#[async_trait]
impl PhaseExecutor for InitLeader {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        check_run_node(&self.b, ctx).await.map_err(boxed)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: InitData = data(ctx)?;
        gate(&self.b, ctx, Some(&d.update.server.hostname)).await?;
        let cluster = ctx.plan().header().cluster_name.clone();
        let op = ctx.plan().header().operation_id.clone();
        let backup = Locator::new(&cluster, "rpcagent-secrets-backup", "0.0.1")
            .map_err(|e| Box::new(e) as ExecError)?;
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
        init_node(&self.b, ctx, &d).await.map_err(boxed)
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: InitData = data(ctx)?;
        uninit_node(&self.b, ctx, &d).await?;
        let cluster = ctx.plan().header().cluster_name.clone();
        let op = ctx.plan().header().operation_id.clone();
        let backup = Locator::new(&cluster, "rpcagent-secrets-backup", "0.0.1")
            .map_err(|e| Box::new(e) as ExecError)?;
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

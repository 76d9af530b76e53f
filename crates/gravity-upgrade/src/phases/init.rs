//! `update_init`: a node's store prepared for the upgrade: the labels
//! Gravity's init ensures on the installed packages (spec §3.2).

use async_trait::async_trait;
use gravity_pack::location::StoreSelector;
use gravity_pack::{Labels, Locator, PackageStore};
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};
use serde::{Deserialize, Serialize};

use super::common::{
    Context, PhaseError, check_run_node, clear, data, executor_struct, gate, load, save,
};
use crate::backend::Backends;
use crate::executors::{InitData, UpdateServer};

executor_struct!(
    /// `update_init`: fixes the installed-package labels of a node's store.
    /// Rollback removes the labels it added.
    InitNode
);

/// A label this phase added to a node's package.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AddedLabel {
    package: Locator,
    key: String,
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

pub(super) async fn init_node(
    b: &Backends,
    ctx: &PhaseContext,
    d: &InitData,
) -> Result<(), PhaseError> {
    let node = &d.update.server.hostname;
    let mut added: Vec<AddedLabel> = load(b, ctx, node).await?.unwrap_or_default();
    added.extend(fix_labels(b, &d.update)?);
    save(b, ctx, node, Some(&added)).await
}

pub(super) async fn uninit_node(
    b: &Backends,
    ctx: &PhaseContext,
    d: &InitData,
) -> Result<(), PhaseError> {
    let node = &d.update.server.hostname;
    if let Some(added) = load::<Vec<AddedLabel>>(b, ctx, node).await? {
        unfix_labels(b, node, &added)?;
        clear(b, ctx, node).await?;
    }
    Ok(())
}

#[async_trait]
impl PhaseExecutor for InitNode {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(check_run_node(&self.b, ctx).await?)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: InitData = data(ctx)?;
        gate(&self.b, ctx, Some(&d.update.server.hostname)).await?;
        Ok(init_node(&self.b, ctx, &d).await?)
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: InitData = data(ctx)?;
        Ok(uninit_node(&self.b, ctx, &d).await?)
    }
}

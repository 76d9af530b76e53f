//! `update_bootstrap`: what a node needs pulled into its store: the new
//! gravity, planet, planet configuration, secrets and teleport packages.

use async_trait::async_trait;
use gravity_pack::location::StoreSelector;
use gravity_pack::{Labels, Locator, PackageStore, PullOptions, pull};
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};
use serde::{Deserialize, Serialize};

use super::common::{
    Context, PhaseError, check_run_node, clear, data, executor_struct, gate, load, save,
};
use crate::backend::Backends;
use crate::executors::{BootstrapData, UpdateServer};

executor_struct!(
    /// `update_bootstrap`: pulls the node's new gravity, planet, planet
    /// configuration, secrets and teleport packages into its store and
    /// labels the planet `purpose:runtime`. Rollback deletes the packages
    /// it added and removes the labels it added.
    Bootstrap
);

/// What a bootstrap changed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Record {
    /// Packages created in the cluster store.
    pub(super) cluster_created: Vec<Locator>,
    /// Packages pulled into the node store.
    pub(super) node_added: Vec<Locator>,
    /// Labels added to node packages.
    pub(super) labels_added: Vec<(Locator, String)>,
}

/// The packages a node pulls.
pub(super) fn needed(u: &UpdateServer, gravity: &Locator) -> Vec<Locator> {
    let mut out = vec![gravity.clone()];
    out.extend(u.runtime.secrets_package.clone());
    if let Some(r) = &u.runtime.update {
        out.push(r.package.clone());
        out.push(r.config_package.clone());
    }
    if let Some(t) = &u.teleport.update {
        out.push(t.package.clone());
        out.extend(t.node_config_package.clone());
    }
    out
}

pub(super) async fn bootstrap_node(
    b: &Backends,
    ctx: &PhaseContext,
    d: &BootstrapData,
    u: &UpdateServer,
    rec: &mut Record,
) -> Result<(), PhaseError> {
    let node = &u.server.hostname;
    let wanted = needed(u, &d.gravity_package);
    let planet = u.runtime.update.as_ref().map(|r| r.package.clone());
    let (added, labels) = b
        .packages
        .with_pair(node, |cs, ns| {
            for l in &wanted {
                if cs.envelope(l).is_err() {
                    return Ok(Err(l.clone()));
                }
            }
            let absent: Vec<Locator> = wanted
                .iter()
                .filter(|l| ns.envelope(l).is_err())
                .cloned()
                .collect();
            pull(
                cs,
                ns,
                &wanted,
                &PullOptions::default(),
                &gravity_pack::NoProgress,
            )?;
            let mut labels = Vec::new();
            if let Some(p) = &planet {
                let env = ns.envelope(p)?;
                if env.labels.get("purpose").is_none() {
                    ns.update_labels(p, &Labels::from_pairs([("purpose", "runtime")]), &[])?;
                    labels.push((p.clone(), "purpose".to_string()));
                }
            }
            Ok(Ok((absent, labels)))
        })
        .ctx(|| format!("failed to pull packages to node {node}"))?
        .map_err(|l| PhaseError::MissingPackage {
            package: l.to_string(),
            store: "cluster".into(),
            hint: "upload the upgrade image first (\"./upload\") and retry".into(),
        })?;
    for l in added {
        if !rec.node_added.contains(&l) {
            rec.node_added.push(l);
        }
    }
    rec.labels_added.extend(labels);
    ctx.info(format!("pulled {} packages to node {node}", wanted.len()));
    Ok(())
}

pub(super) fn unbootstrap_node(b: &Backends, node: &str, rec: &Record) -> Result<(), PhaseError> {
    b.packages
        .with(&StoreSelector::Node(node.to_string()), |ns| {
            for (l, k) in &rec.labels_added {
                if ns.envelope(l).is_ok() && !rec.node_added.contains(l) {
                    ns.update_labels(l, &Labels::new(), std::slice::from_ref(k))?;
                }
            }
            for l in &rec.node_added {
                if ns.envelope(l).is_ok() {
                    ns.delete(l)?;
                }
            }
            Ok(())
        })
        .ctx(|| format!("failed to remove bootstrapped packages from node {node}"))
}

#[async_trait]
impl PhaseExecutor for Bootstrap {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(check_run_node(&self.b, ctx).await?)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: BootstrapData = data(ctx)?;
        let Some(u) = d.updates.first() else {
            return Err(format!("no server specified for phase {:?}", ctx.path().as_str()).into());
        };
        let node = u.server.hostname.clone();
        gate(&self.b, ctx, Some(&node)).await?;
        let mut rec: Record = load(&self.b, ctx, &node).await?.unwrap_or_default();
        let r = bootstrap_node(&self.b, ctx, &d, u, &mut rec).await;
        save(&self.b, ctx, &node, Some(&rec)).await?;
        r.map_err(Into::into)
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: BootstrapData = data(ctx)?;
        let Some(u) = d.updates.first() else {
            return Ok(());
        };
        let node = &u.server.hostname;
        if let Some(rec) = load::<Record>(&self.b, ctx, node).await? {
            unbootstrap_node(&self.b, node, &rec)?;
            clear(&self.b, ctx, node).await?;
        }
        Ok(())
    }
}

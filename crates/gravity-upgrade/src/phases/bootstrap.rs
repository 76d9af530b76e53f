//! `update_bootstrap_leader` and `update_bootstrap`: generate the new
//! per-node packages in the cluster store (leader) and pull what each node
//! needs into its store.

use async_trait::async_trait;
use gravity_pack::location::StoreSelector;
use gravity_pack::{
    Labels, LocalStore, Locator, PackError, PackageOptions, PackageStore, PullOptions, pull,
};
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};
use serde::{Deserialize, Serialize};

use super::{Context, PhaseError, boxed, check_run_node, data, executor_struct, gate, load, save};
use crate::backend::Backends;
use crate::executors::{BootstrapData, UpdateServer};

executor_struct!(
    /// `update_bootstrap_leader`: generates every node's new secrets, planet
    /// configuration and teleport configuration packages in the cluster
    /// store, then bootstraps the leader. Rollback deletes what it created.
    BootstrapLeader
);
executor_struct!(
    /// `update_bootstrap`: pulls the node's new gravity, planet, planet
    /// configuration, secrets and teleport packages into its store and
    /// labels the planet `purpose:runtime`. Rollback deletes the packages
    /// it added and removes the labels it added.
    Bootstrap
);

/// What a bootstrap changed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Record {
    /// Packages created in the cluster store.
    cluster_created: Vec<Locator>,
    /// Packages pulled into the node store.
    node_added: Vec<Locator>,
    /// Labels added to node packages.
    labels_added: Vec<(Locator, String)>,
}

/// The packages a node pulls.
fn needed(u: &UpdateServer, gravity: &Locator) -> Vec<Locator> {
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

/// Creates `target` in the cluster store from the latest other version of
/// the same name (same labels), unless it exists; returns whether created.
fn derive(s: &LocalStore, target: &Locator, extra: &Labels) -> Result<bool, PackError> {
    if s.envelope(target).is_ok() {
        return Ok(false);
    }
    let mut labels = s
        .versions(target.repository(), target.name())?
        .into_iter()
        .rev()
        .find(|e| e.locator != *target)
        .map(|e| e.labels)
        .unwrap_or_default();
    labels.apply(extra, &[]);
    let content = format!("generated {target}\n").repeat(8);
    s.create(
        target,
        &mut content.as_bytes(),
        PackageOptions::labels(labels),
    )?;
    Ok(true)
}

fn teleport_master_config(u: &UpdateServer, cluster: &str, version: &str) -> Option<Locator> {
    let ip = u.server.advertise_ip.replace(['.', ':'], "");
    Locator::new(
        cluster,
        &format!("teleport-master-config-{ip}{cluster}"),
        version,
    )
    .ok()
}

async fn bootstrap_node(
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

fn unbootstrap_node(b: &Backends, node: &str, rec: &Record) -> Result<(), PhaseError> {
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
        check_run_node(&self.b, ctx).await.map_err(boxed)
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
        r.map_err(boxed)
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: BootstrapData = data(ctx)?;
        let Some(u) = d.updates.first() else {
            return Ok(());
        };
        let node = &u.server.hostname;
        if let Some(rec) = load::<Record>(&self.b, ctx, node).await? {
            unbootstrap_node(&self.b, node, &rec)?;
            save::<()>(&self.b, ctx, node, None).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl PhaseExecutor for BootstrapLeader {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        check_run_node(&self.b, ctx).await.map_err(boxed)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: BootstrapData = data(ctx)?;
        let Some((lead, _)) = super::run_node(ctx) else {
            return Err(format!("no server specified for phase {:?}", ctx.path().as_str()).into());
        };
        gate(&self.b, ctx, Some(&lead)).await?;
        let op = ctx.plan().header().operation_id.clone();
        let cluster = ctx.plan().header().cluster_name.clone();
        let mut rec: Record = load(&self.b, ctx, &lead).await?.unwrap_or_default();
        let created = self
            .b
            .packages
            .with(&StoreSelector::Cluster, |cs| {
                let mut created = Vec::new();
                for u in &d.updates {
                    let mut targets: Vec<(Locator, Labels)> = Vec::new();
                    if let Some(r) = &u.runtime.update {
                        targets.extend(
                            u.runtime
                                .secrets_package
                                .clone()
                                .map(|l| (l, Labels::new())),
                        );
                        targets.push((r.config_package.clone(), Labels::new()));
                    }
                    if let Some(t) = &u.teleport.update {
                        if let Some(c) = &t.node_config_package {
                            targets.push((c.clone(), Labels::new()));
                        }
                        if u.server.is_master()
                            && let Some(m) =
                                teleport_master_config(u, &cluster, t.package.version().as_str())
                        {
                            let labels = Labels::from_pairs([
                                ("advertise-ip", u.server.advertise_ip.as_str()),
                                ("operation-id", op.as_str()),
                                ("purpose", "teleport-master-config"),
                            ]);
                            targets.push((m, labels));
                        }
                    }
                    for (l, extra) in targets {
                        if derive(cs, &l, &extra)? {
                            created.push(l);
                        }
                    }
                }
                Ok(created)
            })
            .ctx(|| "failed to rotate planet configuration".into())?;
        rec.cluster_created.extend(created);
        save(&self.b, ctx, &lead, Some(&rec)).await?;
        if let Some(u) = d.updates.iter().find(|u| u.server.hostname == lead) {
            let r = bootstrap_node(&self.b, ctx, &d, u, &mut rec).await;
            save(&self.b, ctx, &lead, Some(&rec)).await?;
            r?;
        }
        Ok(())
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let Some((lead, _)) = super::run_node(ctx) else {
            return Ok(());
        };
        let Some(rec) = load::<Record>(&self.b, ctx, &lead).await? else {
            return Ok(());
        };
        unbootstrap_node(&self.b, &lead, &rec)?;
        self.b
            .packages
            .with(&StoreSelector::Cluster, |cs| {
                for l in &rec.cluster_created {
                    if cs.envelope(l).is_ok() {
                        cs.delete(l)?;
                    }
                }
                Ok(())
            })
            .ctx(|| "failed to delete generated packages".into())?;
        save::<()>(&self.b, ctx, &lead, None).await?;
        Ok(())
    }
}

//! `update_bootstrap_leader`: the new per-node packages generated in the
//! cluster store (secrets, planet and teleport configuration), then the
//! leader bootstrapped as by `update_bootstrap`.

use async_trait::async_trait;
use gravity_pack::location::StoreSelector;
use gravity_pack::{Labels, LocalStore, Locator, PackError, PackageOptions, PackageStore};
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};

use super::bootstrap::{Record, bootstrap_node, unbootstrap_node};
use super::common::{
    Context, check_run_node, clear, data, executor_struct, gate, load, run_node, save,
};
use crate::executors::{BootstrapData, UpdateServer};

executor_struct!(
    /// `update_bootstrap_leader`: generates every node's new secrets, planet
    /// configuration and teleport configuration packages in the cluster
    /// store, then bootstraps the leader. Rollback deletes what it created.
    BootstrapLeader
);

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

#[async_trait]
impl PhaseExecutor for BootstrapLeader {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(check_run_node(&self.b, ctx).await?)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: BootstrapData = data(ctx)?;
        let Some((lead, _)) = run_node(ctx) else {
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
        let Some((lead, _)) = run_node(ctx) else {
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
        Ok(clear(&self.b, ctx, &lead).await?)
    }
}

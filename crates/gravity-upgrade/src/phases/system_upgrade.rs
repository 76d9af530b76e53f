//! `update_system`: a node's packages and runtime switched to the new
//! versions (spec §3, "update_system").

use async_trait::async_trait;
use gravity_pack::location::StoreSelector;
use gravity_pack::{Labels, Locator, PackageStore};
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};
use serde::{Deserialize, Serialize};

use super::common::{
    Context, PhaseError, check_run_node, clear, data, executor_struct, gate, load, save,
};
use crate::backend::Backends;
use crate::executors::SystemUpgradeData;

executor_struct!(
    /// `update_system`: moves the `installed` label from the installed
    /// gravity, planet, planet configuration, secrets (and teleport) to the
    /// new packages in the node's store and switches the node's runtime.
    /// The changeset is recorded on the node; rollback reverses it and
    /// switches back to the previous runtime.
    SystemUpgrade
);

/// A package changeset: label moves and the runtime switch.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Changeset {
    id: String,
    moves: Vec<(Locator, Locator)>,
    runtime: Option<(Locator, Locator)>,
}

fn installed_with(
    s: &gravity_pack::LocalStore,
    purpose: &str,
) -> Result<Option<Locator>, gravity_pack::PackError> {
    Ok(s.find_by_labels(
        None,
        &Labels::from_pairs([("purpose", purpose), ("installed", "installed")]),
    )?
    .into_iter()
    .map(|e| e.locator)
    .next_back())
}

fn plan_changeset(b: &Backends, d: &SystemUpgradeData) -> Result<Changeset, PhaseError> {
    let u = &d.update;
    let node = u.server.hostname.clone();
    let r = b
        .packages
        .with(&StoreSelector::Node(node.clone()), |s| {
            let mut moves = Vec::new();
            let gravity_from = s
                .find_by_labels(
                    Some("gravitational.io"),
                    &Labels::from_pairs([("installed", "installed")]),
                )?
                .into_iter()
                .find(|e| e.locator.name() == d.gravity_package.name())
                .map(|e| e.locator);
            moves.push((gravity_from, d.gravity_package.clone()));
            let mut runtime = None;
            if let Some(ru) = &u.runtime.update {
                moves.push((Some(u.runtime.installed.clone()), ru.package.clone()));
                moves.push((
                    installed_with(s, "planet-config")?,
                    ru.config_package.clone(),
                ));
                runtime = Some((u.runtime.installed.clone(), ru.package.clone()));
            }
            if let Some(sec) = &u.runtime.secrets_package {
                moves.push((installed_with(s, "planet-secrets")?, sec.clone()));
            }
            if let Some(t) = &u.teleport.update {
                moves.push((Some(u.teleport.installed.clone()), t.package.clone()));
                if let Some(c) = &t.node_config_package {
                    moves.push((installed_with(s, "teleport-node-config")?, c.clone()));
                }
            }
            let mut out = Vec::new();
            for (from, to) in moves {
                if s.envelope(&to).is_err() {
                    return Ok(Err(to));
                }
                match from {
                    Some(f) if f == to => {}
                    Some(f) => out.push((f, to)),
                    None => out.push((to.clone(), to)),
                }
            }
            Ok(Ok(Changeset {
                id: d.changeset_id.to_string(),
                moves: out,
                runtime,
            }))
        })
        .ctx(|| format!("failed to locate the installed packages on node {node}"))?;
    r.map_err(|l| PhaseError::MissingPackage {
        package: l.to_string(),
        store: format!("node {node}"),
        hint: format!("run the bootstrap phase of {node} first (\"gravity plan execute --phase /bootstrap/{node}\")"),
    })
}

fn move_labels(b: &Backends, node: &str, moves: &[(Locator, Locator)]) -> Result<(), PhaseError> {
    let installed = Labels::from_pairs([("installed", "installed")]);
    b.packages
        .with(&StoreSelector::Node(node.to_string()), |s| {
            for (from, to) in moves {
                if from != to && s.envelope(from).is_ok() {
                    s.update_labels(from, &Labels::new(), &["installed".to_string()])?;
                }
                if s.envelope(to).is_ok() {
                    s.update_labels(to, &installed, &[])?;
                }
            }
            Ok(())
        })
        .ctx(|| format!("failed to move the installed labels on node {node}"))
}

#[async_trait]
impl PhaseExecutor for SystemUpgrade {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(check_run_node(&self.b, ctx).await?)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: SystemUpgradeData = data(ctx)?;
        let node = d.update.server.hostname.clone();
        gate(&self.b, ctx, Some(&node)).await?;
        let cs = match load::<Changeset>(&self.b, ctx, &node).await? {
            Some(cs) => cs,
            None => {
                let cs = plan_changeset(&self.b, &d)?;
                save(&self.b, ctx, &node, Some(&cs)).await?;
                cs
            }
        };
        if cs.moves.is_empty() && cs.runtime.is_none() {
            ctx.info("System is already up to date.");
            return Ok(());
        }
        move_labels(&self.b, &node, &cs.moves)?;
        if let Some((_, to)) = &cs.runtime {
            let current = self
                .b
                .nodes
                .runtime(&node)
                .await
                .ctx(|| format!("failed to query the runtime of node {node}"))?;
            if current != *to {
                self.b
                    .nodes
                    .switch_runtime(&node, to, d.docker_migration)
                    .await
                    .ctx(|| format!("failed to update the runtime of node {node} to {to}"))?;
            }
        }
        Ok(())
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: SystemUpgradeData = data(ctx)?;
        let node = d.update.server.hostname.clone();
        let Some(cs) = load::<Changeset>(&self.b, ctx, &node).await? else {
            return Ok(());
        };
        let reversed: Vec<(Locator, Locator)> = cs
            .moves
            .iter()
            .rev()
            .map(|(f, t)| (t.clone(), f.clone()))
            .collect();
        // A package that was not installed before keeps no label.
        let only_removed: Vec<Locator> = cs
            .moves
            .iter()
            .filter(|(f, t)| f == t)
            .map(|(f, _)| f.clone())
            .collect();
        move_labels(
            &self.b,
            &node,
            &reversed
                .into_iter()
                .filter(|(f, _)| !only_removed.contains(f))
                .collect::<Vec<_>>(),
        )?;
        if !only_removed.is_empty() {
            self.b
                .packages
                .with(&StoreSelector::Node(node.clone()), |s| {
                    for l in &only_removed {
                        if s.envelope(l).is_ok() {
                            s.update_labels(l, &Labels::new(), &["installed".to_string()])?;
                        }
                    }
                    Ok(())
                })
                .ctx(|| format!("failed to restore labels on node {node}"))?;
        }
        if let Some((from, _)) = &cs.runtime {
            let current = self
                .b
                .nodes
                .runtime(&node)
                .await
                .ctx(|| format!("failed to query the runtime of node {node}"))?;
            if current != *from {
                self.b
                    .nodes
                    .switch_runtime(&node, from, false)
                    .await
                    .ctx(|| format!("failed to roll back the runtime of node {node} to {from}"))?;
            }
        }
        Ok(clear(&self.b, ctx, &node).await?)
    }
}

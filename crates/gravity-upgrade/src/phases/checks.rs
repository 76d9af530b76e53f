//! `update_checks`: the preflight checks of spec §4.2 (and what the
//! simulated faults break): every node reachable with an agent, ready in
//! Kubernetes, enough free disk, a writable temp dir, DNS configuration,
//! and clocks within [`crate::backend::Timing::max_clock_drift`].
//!
//! The same checks are the cluster's health probes ([`probe`]): the
//! phase records its results in the [`HealthLog`] of the state
//! directory, so that `gravity status history` shows which probe failed
//! on which node and when it passed again.

use crate::backend::Backends;
use async_trait::async_trait;
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};

use super::common::{Context, PhaseError, data, executor_struct, gate};
use crate::executors::ChecksData;
use crate::health::{HealthLog, ProbeReport};

executor_struct!(
    /// `update_checks`: fails with every failed check (and records the
    /// probe results). Rollback: nothing.
    Checks
);

/// The state directory whose filesystem must have free space.
pub const STATE_DIR: &str = "/var/lib/gravity";

#[async_trait]
impl PhaseExecutor for Checks {
    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: ChecksData = data(ctx)?;
        gate(&self.b, ctx, None).await?;
        if d.package.name() != d.installed_package.name()
            || d.package.repository() != d.installed_package.repository()
        {
            return Err(Box::new(PhaseError::ChecksFailed(format!(
                "\t[×] invalid upgrade image {:?}: {:?} is installed\n",
                d.package.to_string(),
                d.installed_package.to_string()
            ))));
        }
        let report = probe(&self.b, true).await?;
        let log = HealthLog::new(self.b.packages.state_dir());
        if let Err(e) = log.record(&report) {
            ctx.info(format!("warning: cannot record the probe results: {e}"));
        }
        let failed = report.failures();
        if failed.is_empty() {
            ctx.info(format!("all checks passed on {} nodes", report.nodes));
            return Ok(());
        }
        let text: String = failed.iter().map(|f| format!("\t[×] {f}\n")).collect();
        Err(Box::new(PhaseError::ChecksFailed(text)))
    }

    async fn rollback(&self, _ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(())
    }
}

/// Runs the preflight checks on every node (reachable, agent running,
/// ready, free disk, temporary directory writable, DNS configuration,
/// clocks within the allowed drift) and returns one line per failure, each
/// naming the node and the check, with the number of nodes checked.
/// Before an upgrade starts the agents are not deployed yet, so
/// `require_agents` is false there (reachability is what makes them
/// deployable); the `/checks` phase requires them.
pub async fn preflight(
    b: &Backends,
    require_agents: bool,
) -> Result<(Vec<String>, usize), ExecError> {
    let r = probe(b, require_agents).await?;
    Ok((r.failures(), r.nodes))
}

/// The checks of [`preflight`], one [`ProbeResult`](crate::health::ProbeResult)
/// per check that ran on a node: `node-status` (reachable and ready; an
/// unreachable node's other checks do not run), `agent` (with
/// `require_agents`), `disk-space`, `temp-dir`, `dns`, `time-drift`.
pub async fn probe(b: &Backends, require_agents: bool) -> Result<ProbeReport, ExecError> {
    let nodes = b
        .kube
        .nodes()
        .await
        .ctx(|| "failed to list the cluster nodes".into())?;
    let mut report = ProbeReport {
        nodes: nodes.len(),
        results: Vec::new(),
    };
    let mut clocks = Vec::new();
    for n in &nodes {
        let h = &n.name;
        if let Err(e) = b.nodes.ping(h).await {
            report.push(
                h,
                "node-status",
                Some(format!("node {h} is unreachable ({e})")),
            );
            continue;
        }
        if require_agents {
            let agent = match b.nodes.agent_running(h).await {
                Ok(true) => None,
                Ok(false) => Some(format!(
                    "no agent is running on node {h} (start the agents with \"gravity agent deploy\")"
                )),
                Err(e) => Some(format!("failed to query the agent on node {h} ({e})")),
            };
            report.push(h, "agent", agent);
        }
        let ready = (!n.ready).then(|| format!("node {h} is not ready (cluster is degraded)"));
        report.push(h, "node-status", ready);
        let disk = match b.nodes.disk_space(h, STATE_DIR).await {
            Ok(s) if s.free < b.timing.min_free_disk => Some(format!(
                "node {h} has {} free on {STATE_DIR}, which is less than the required {} (failed to validate disk requirements)",
                gravity_pack::human_size(s.free),
                gravity_pack::human_size(b.timing.min_free_disk)
            )),
            Ok(_) => None,
            Err(e) => Some(format!("failed to query disk space on node {h} ({e})")),
        };
        report.push(h, "disk-space", disk);
        let temp = b
            .nodes
            .check_temp_dir(h)
            .await
            .err()
            .map(|e| format!("{e} (failed to validate temporary directory on node {h})"));
        report.push(h, "temp-dir", temp);
        let dns = match b.nodes.dns_config(h).await {
            Ok(Some(_)) => None,
            Ok(None) => Some(format!(
                "node {h} has no DNS configuration (failed to validate DNS configuration; restore the node's cluster DNS settings)"
            )),
            Err(e) => Some(format!(
                "failed to query DNS configuration on node {h} ({e})"
            )),
        };
        report.push(h, "dns", dns);
        match b.nodes.clock(h).await {
            Ok(t) => clocks.push((h.clone(), t, std::time::Instant::now())),
            Err(e) => report.push(
                h,
                "time-drift",
                Some(format!("failed to query the clock of node {h} ({e})")),
            ),
        }
    }
    // Each reading is moved to a common instant (Gravity: reported
    // time + time since the heartbeat).
    let now = std::time::Instant::now();
    let clocks: Vec<(String, chrono::DateTime<chrono::Utc>)> = clocks
        .into_iter()
        .map(|(h, t, at)| {
            let since = chrono::Duration::from_std(now - at).unwrap_or_default();
            (h, t + since)
        })
        .collect();
    if let Some((first, t0)) = clocks.first().cloned() {
        let max = chrono::Duration::from_std(b.timing.max_clock_drift).unwrap_or_default();
        report.push(&first, "time-drift", None);
        for (h, t) in &clocks[1..] {
            let drift = ((*t - t0).abs() > max).then(|| format!(
                "servers {first:?} and {h:?} clocks are out of sync: {} and {} respectively, sync the times on servers before install, e.g. using ntp (failed to validate time drift requirement)",
                t0.format("%H:%M:%S%.3f"),
                t.format("%H:%M:%S%.3f")
            ));
            report.push(h, "time-drift", drift);
        }
    }
    Ok(report)
}

//! `election_status`: enable/disable leader election on masters.

use async_trait::async_trait;
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};

use super::common::{
    Context, check_server, clear, data, executor_struct, gate, load_first, remember_first,
};
use crate::executors::ElectionData;

executor_struct!(
    /// `election_status`: sets the election flag of the `disable` masters to
    /// false and of the `enable` masters to true, then waits until no
    /// `disable` master is the leader. Rollback restores the previous flags.
    ElectionStatus
);

impl ElectionStatus {
    /// Whether some master has election enabled (so a leader will come).
    async fn electable(&self) -> Result<bool, ExecError> {
        let flags = self
            .b
            .election
            .status()
            .await
            .ctx(|| "reading the election flags".into())?;
        Ok(flags.values().any(|enabled| *enabled))
    }
}

#[async_trait]
impl PhaseExecutor for ElectionStatus {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: ElectionData = data(ctx)?;
        Ok(check_server(&self.b, ctx, &d.server.hostname, &d.server.advertise_ip).await?)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: ElectionData = data(ctx)?;
        let node = &d.server.hostname;
        gate(&self.b, ctx, Some(node)).await?;
        let changes = d
            .disable
            .iter()
            .map(|n| (n, false))
            .chain(d.enable.iter().map(|n| (n, true)));
        for (n, value) in changes {
            let old = self
                .b
                .election
                .set_enabled(&n.hostname, value)
                .await
                .ctx(|| format!("setting leader election on {:?} to {value}", n.advertise_ip))?;
            remember_first(&self.b, ctx, node, n.hostname.clone(), old).await?;
        }
        if d.disable.is_empty() {
            return Ok(());
        }
        for attempt in 0..self.b.timing.poll_attempts.max(1) {
            let leader = self
                .b
                .election
                .leader()
                .await
                .ctx(|| "resolving current leader IP".into())?;
            match leader {
                Some(l) if d.disable.iter().any(|n| n.hostname == l) => {
                    ctx.info(format!("waiting for {l:?} to step down as k8s leader"));
                    if attempt + 1 < self.b.timing.poll_attempts {
                        tokio::time::sleep(self.b.timing.poll_interval).await;
                    }
                }
                // No leader yet: a new one is still being elected. As in
                // Gravity, where the leader lookup fails and is retried, keep
                // waiting, unless no master may be elected at all.
                None if self.electable().await? => {
                    ctx.info("waiting for a new k8s leader to be elected".to_string());
                    if attempt + 1 < self.b.timing.poll_attempts {
                        tokio::time::sleep(self.b.timing.poll_interval).await;
                    }
                }
                _ => return Ok(()),
            }
        }
        let names: Vec<&str> = d.disable.iter().map(|n| n.hostname.as_str()).collect();
        Err(format!(
            "timed out waiting for {} to step down as k8s leader; check the election flags and the kubelet on those nodes",
            names.join(", ")
        )
        .into())
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: ElectionData = data(ctx)?;
        let node = &d.server.hostname;
        let Some(prev) = load_first::<Option<bool>>(&self.b, ctx, node).await? else {
            return Ok(());
        };
        for (n, v) in prev {
            let v = v.unwrap_or(true);
            self.b
                .election
                .set_enabled(&n, v)
                .await
                .ctx(|| format!("setting leader election on {n:?} to {v}"))?;
        }
        Ok(clear(&self.b, ctx, node).await?)
    }
}

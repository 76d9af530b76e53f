//! The etcd phases: `etcd_backup`, `etcd_shutdown`, `etcd_upgrade`,
//! `etcd_restore`, `etcd_restart`, `etcd_restart_gravity`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};
use serde::{Deserialize, Serialize};

use super::{Context, data, gate, load, save};
use crate::backend::{Backends, EtcdAddress};
use crate::executors::{self as ex, EtcdData};

/// Where the backup is written on each master (Gravity's default path).
pub const BACKUP_PATH: &str = "/var/lib/gravity/site/update/etcd.bak";

/// One of the etcd kinds (see the module docs of [`crate::phases`]):
/// backup (rollback: nothing, the file is kept); shutdown (rollback:
/// start again if this phase stopped it, and restart gravity-site on the
/// leader); upgrade (to the new version on a new data dir, started on the
/// upgrade address; rollback: stop, back to the kept version and dir);
/// restore (on the leader, refuses bad backups; rollback: nothing);
/// restart (normal address; rollback: back to the upgrade address);
/// restart of gravity-site (rollback: nothing).
#[derive(Debug, Clone)]
pub struct EtcdPhase {
    b: Backends,
    kind: &'static str,
}

impl EtcdPhase {
    /// The executor of `kind` over `backends`.
    pub fn new(backends: Backends, kind: &'static str) -> Self {
        EtcdPhase { b: backends, kind }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct WasRunning {
    was_running: bool,
}

fn site_selector() -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_string(), "gravity-site".to_string())])
}

#[async_trait]
impl PhaseExecutor for EtcdPhase {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        if self.kind == ex::ETCD_RESTORE {
            let d: EtcdData = data(ctx)?;
            let h = &d.server.hostname;
            let m = self
                .b
                .etcd
                .member(h)
                .await
                .ctx(|| format!("wait-for-etcd on node {h}"))?;
            if !m.is_some_and(|m| m.healthy) {
                return Err(format!(
                    "etcd on node {} is not serving on the upgrade address; execute /etcd/upgrade/{h} first",
                    d.server.display()
                )
                .into());
            }
        }
        Ok(())
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: EtcdData = data(ctx)?;
        let h = d.server.hostname.as_str();
        let b = &self.b;
        gate(b, ctx, Some(h)).await?;
        match self.kind {
            ex::ETCD_BACKUP => {
                let i = b
                    .etcd
                    .backup(h, BACKUP_PATH)
                    .await
                    .ctx(|| "failed to backup etcd".into())?;
                ctx.info(format!(
                    "backed up {} keys on {h} (sha256 {})",
                    i.keys, i.sha256
                ));
            }
            ex::ETCD_SHUTDOWN => {
                let was = b
                    .etcd
                    .shutdown(h)
                    .await
                    .ctx(|| format!("failed to shut down etcd on node {h}"))?;
                let prev: WasRunning = load(b, ctx, h).await?.unwrap_or_default();
                save(
                    b,
                    ctx,
                    h,
                    Some(&WasRunning {
                        was_running: prev.was_running || was,
                    }),
                )
                .await?;
            }
            ex::ETCD_UPGRADE => {
                b.etcd
                    .upgrade(h, &d.update)
                    .await
                    .ctx(|| format!("failed to upgrade etcd on node {h} to {}", d.update))?;
                b.etcd
                    .start(h, EtcdAddress::Upgrade)
                    .await
                    .ctx(|| format!("failed to start etcd {} on node {h}", d.update))?;
            }
            ex::ETCD_RESTORE => {
                let n = b
                    .etcd
                    .restore(h, BACKUP_PATH)
                    .await
                    .ctx(|| format!("failed to restore etcd on node {h}"))?;
                ctx.info(format!("restored {n} keys"));
            }
            ex::ETCD_RESTART => {
                if b.etcd
                    .member(h)
                    .await
                    .ctx(|| format!("etcd on node {h}"))?
                    .is_some()
                {
                    b.etcd
                        .shutdown(h)
                        .await
                        .ctx(|| format!("failed to stop etcd on node {h}"))?;
                }
                b.etcd
                    .start(h, EtcdAddress::Normal)
                    .await
                    .ctx(|| format!("failed to restart etcd on node {h}"))?;
            }
            _ => {
                let n = b
                    .kube
                    .delete_pods("kube-system", &site_selector())
                    .await
                    .ctx(|| "failed to restart gravity-site".into())?;
                ctx.info(format!("restarted {n} gravity-site pods"));
            }
        }
        Ok(())
    }

    #[allow(clippy::collapsible_match)]
    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: EtcdData = data(ctx)?;
        let h = d.server.hostname.as_str();
        let b = &self.b;
        match self.kind {
            ex::ETCD_SHUTDOWN => {
                if let Some(r) = load::<WasRunning>(b, ctx, h).await? {
                    if r.was_running {
                        b.etcd
                            .start(h, EtcdAddress::Normal)
                            .await
                            .ctx(|| format!("failed to start etcd on node {h}"))?;
                        if d.leader {
                            b.kube
                                .delete_pods("kube-system", &site_selector())
                                .await
                                .ctx(|| "failed to restart gravity-site".into())?;
                        }
                    }
                    save::<()>(b, ctx, h, None).await?;
                }
            }
            ex::ETCD_UPGRADE => {
                let m = b.etcd.member(h).await.ctx(|| format!("etcd on node {h}"))?;
                if m.as_ref()
                    .is_some_and(|m| m.version == d.update && m.previous.is_some())
                {
                    b.etcd
                        .shutdown(h)
                        .await
                        .ctx(|| format!("failed to stop etcd on node {h}"))?;
                    b.etcd
                        .rollback_upgrade(h)
                        .await
                        .ctx(|| format!("failed to roll back etcd on node {h}"))?;
                }
            }
            ex::ETCD_RESTART => {
                if b.etcd
                    .member(h)
                    .await
                    .ctx(|| format!("etcd on node {h}"))?
                    .is_some()
                {
                    b.etcd
                        .shutdown(h)
                        .await
                        .ctx(|| format!("failed to stop etcd on node {h}"))?;
                    b.etcd
                        .start(h, EtcdAddress::Upgrade)
                        .await
                        .ctx(|| format!("failed to start etcd on node {h}"))?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

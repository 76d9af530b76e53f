//! Kubernetes phases: `coredns`, `kubelet_permissions`, `drain_node`,
//! `taint_node`, `untaint_node`, `uncordon_node`, `endpoints`, and the
//! migrations `labels`, `links`, `roles`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};
use serde::{Deserialize, Serialize};

use super::{
    Context, PhaseError, boxed, check_master, data, executor_struct, gate, load, run_node, save,
};
use crate::backend::{Backends, Created, DrainOptions, Taint};
use crate::executors::{LabelsData, LinksData, NodeData};

executor_struct!(
    /// `coredns`: creates the CoreDNS RBAC objects and the `coredns`
    /// ConfigMap if absent. Rollback deletes only what it created.
    CoreDns
);
executor_struct!(
    /// `kubelet_permissions`: creates ClusterRole/Binding `kubelet-upgrade`
    /// if absent. Rollback deletes only what it created.
    KubeletPermissions
);
executor_struct!(
    /// `drain_node`: cordons and drains the node. Rollback uncordons it if
    /// this phase cordoned it.
    Drain
);
executor_struct!(
    /// `taint_node`: adds `gravitational.io/runlevel=system:NoExecute`.
    /// Rollback removes it if this phase added it.
    TaintNode
);
executor_struct!(
    /// `untaint_node`: removes the runlevel taint. Rollback puts it back if
    /// this phase removed it.
    UntaintNode
);
executor_struct!(
    /// `uncordon_node`: makes the node schedulable. Rollback cordons it
    /// again if this phase uncordoned it.
    Uncordon
);
executor_struct!(
    /// `endpoints`: waits for the node's DNS and a gravity-site endpoint.
    /// Rollback: nothing.
    Endpoints
);
executor_struct!(
    /// `labels`: sets `gravitational.io/advertise-ip` on every node.
    /// Rollback restores the previous values.
    NodeLabels
);
executor_struct!(
    /// `links`: records the first remote-access link as a trusted cluster
    /// (ConfigMap `kube-system/trusted-clusters` in this implementation).
    /// Rollback restores the previous ConfigMap.
    Links
);
executor_struct!(
    /// `roles`: marks the roles as migrated to kube groups (ConfigMap
    /// `kube-system/gravity-roles` in this implementation). Rollback
    /// restores the previous ConfigMap.
    Roles
);

/// The record node of a phase: where it runs, else the node it acts on.
fn rec_node(ctx: &PhaseContext, d: &NodeData) -> String {
    run_node(ctx)
        .map(|(h, _)| h)
        .unwrap_or_else(|| d.server.hostname.clone())
}

fn kube_name(d: &NodeData) -> String {
    d.server
        .nodename
        .clone()
        .unwrap_or_else(|| d.server.hostname.clone())
}

/// A boolean record: "this phase changed the node".
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Changed {
    changed: bool,
}

async fn note_change(
    b: &Backends,
    ctx: &PhaseContext,
    node: &str,
    changed: bool,
) -> Result<(), PhaseError> {
    let prev: Changed = load(b, ctx, node).await?.unwrap_or_default();
    save(
        b,
        ctx,
        node,
        Some(&Changed {
            changed: prev.changed || changed,
        }),
    )
    .await
}

async fn take_change(b: &Backends, ctx: &PhaseContext, node: &str) -> Result<bool, PhaseError> {
    let c: Option<Changed> = load(b, ctx, node).await?;
    if c.is_some() {
        save::<()>(b, ctx, node, None).await?;
    }
    Ok(c.is_some_and(|c| c.changed))
}

async fn created_rollback(b: &Backends, ctx: &PhaseContext, node: &str) -> Result<(), ExecError> {
    if let Some(c) = load::<Created>(b, ctx, node).await? {
        b.kube
            .delete_objects(&c.objects)
            .await
            .ctx(|| format!("failed to delete {}", c.objects.join(", ")))?;
        save::<()>(b, ctx, node, None).await?;
    }
    Ok(())
}

async fn created_note(
    b: &Backends,
    ctx: &PhaseContext,
    node: &str,
    new: Created,
) -> Result<(), PhaseError> {
    let mut c: Created = load(b, ctx, node).await?.unwrap_or_default();
    for o in new.objects {
        if !c.objects.contains(&o) {
            c.objects.push(o);
        }
    }
    save(b, ctx, node, Some(&c)).await
}

#[async_trait]
impl PhaseExecutor for CoreDns {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        check_master(&self.b, ctx).await.map_err(boxed)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: NodeData = data(ctx)?;
        gate(&self.b, ctx, Some(&d.server.hostname)).await?;
        let corefile = ".:53 {\n    reload\n    errors\n    health\n    kubernetes cluster.local in-addr.arpa ip6.arpa {\n      pods insecure\n      fallthrough in-addr.arpa ip6.arpa\n    }\n    forward . /etc/resolv.conf\n    cache 30\n}\n";
        let c = self
            .b
            .kube
            .create_coredns(corefile)
            .await
            .ctx(|| "failed to provision CoreDNS resources".into())?;
        for o in &c.objects {
            ctx.info(format!("created {o}"));
        }
        created_note(&self.b, ctx, &rec_node(ctx, &d), c).await?;
        Ok(())
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: NodeData = data(ctx)?;
        created_rollback(&self.b, ctx, &rec_node(ctx, &d)).await
    }
}

#[async_trait]
impl PhaseExecutor for KubeletPermissions {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        check_master(&self.b, ctx).await.map_err(boxed)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: NodeData = data(ctx)?;
        gate(&self.b, ctx, Some(&d.server.hostname)).await?;
        let c = self
            .b
            .kube
            .create_kubelet_permissions()
            .await
            .ctx(|| "failed to create kubelet permissions".into())?;
        created_note(&self.b, ctx, &rec_node(ctx, &d), c).await?;
        Ok(())
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: NodeData = data(ctx)?;
        created_rollback(&self.b, ctx, &rec_node(ctx, &d)).await
    }
}

#[async_trait]
impl PhaseExecutor for Drain {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        check_master(&self.b, ctx).await.map_err(boxed)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: NodeData = data(ctx)?;
        let h = kube_name(&d);
        gate(&self.b, ctx, Some(&d.server.hostname)).await?;
        let cordoned = self
            .b
            .kube
            .cordon(&h)
            .await
            .ctx(|| format!("failed to cordon node {}", d.server.display()))?;
        note_change(&self.b, ctx, &rec_node(ctx, &d), cordoned).await?;
        let opts = DrainOptions {
            eviction_deadline: self.b.timing.eviction_deadline,
        };
        let r = self
            .b
            .kube
            .drain(&h, &opts)
            .await
            .ctx(|| format!("failed to drain node {}", d.server.display()))?;
        ctx.info(format!(
            "evicted {} pods from {h} ({} DaemonSet/mirror pods left)",
            r.evicted.len(),
            r.skipped.len()
        ));
        Ok(())
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: NodeData = data(ctx)?;
        if take_change(&self.b, ctx, &rec_node(ctx, &d)).await? {
            self.b
                .kube
                .uncordon(&kube_name(&d))
                .await
                .ctx(|| format!("failed to uncordon node {}", d.server.display()))?;
        }
        Ok(())
    }
}

#[async_trait]
impl PhaseExecutor for TaintNode {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        check_master(&self.b, ctx).await.map_err(boxed)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: NodeData = data(ctx)?;
        gate(&self.b, ctx, Some(&d.server.hostname)).await?;
        let t = Taint::runlevel_system();
        let added = self
            .b
            .kube
            .add_taint(&kube_name(&d), &t)
            .await
            .ctx(|| format!("failed to add taint {t} to node {:?}", d.server.hostname))?;
        note_change(&self.b, ctx, &rec_node(ctx, &d), added).await?;
        Ok(())
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: NodeData = data(ctx)?;
        if take_change(&self.b, ctx, &rec_node(ctx, &d)).await? {
            let t = Taint::runlevel_system();
            self.b.kube.remove_taint(&kube_name(&d), &t).await.ctx(|| {
                format!(
                    "failed to remove taint {t} from node {:?}",
                    d.server.hostname
                )
            })?;
        }
        Ok(())
    }
}

#[async_trait]
impl PhaseExecutor for UntaintNode {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        check_master(&self.b, ctx).await.map_err(boxed)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: NodeData = data(ctx)?;
        gate(&self.b, ctx, Some(&d.server.hostname)).await?;
        let t = Taint::runlevel_system();
        let removed = self.b.kube.remove_taint(&kube_name(&d), &t).await.ctx(|| {
            format!(
                "failed to remove taint {t} from node {:?}",
                d.server.hostname
            )
        })?;
        note_change(&self.b, ctx, &rec_node(ctx, &d), removed).await?;
        Ok(())
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: NodeData = data(ctx)?;
        if take_change(&self.b, ctx, &rec_node(ctx, &d)).await? {
            let t = Taint::runlevel_system();
            self.b
                .kube
                .add_taint(&kube_name(&d), &t)
                .await
                .ctx(|| format!("failed to add taint {t} to node {:?}", d.server.hostname))?;
        }
        Ok(())
    }
}

#[async_trait]
impl PhaseExecutor for Uncordon {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        check_master(&self.b, ctx).await.map_err(boxed)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: NodeData = data(ctx)?;
        gate(&self.b, ctx, Some(&d.server.hostname)).await?;
        let changed = self
            .b
            .kube
            .uncordon(&kube_name(&d))
            .await
            .ctx(|| format!("failed to uncordon node {}", d.server.display()))?;
        note_change(&self.b, ctx, &rec_node(ctx, &d), changed).await?;
        Ok(())
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: NodeData = data(ctx)?;
        if take_change(&self.b, ctx, &rec_node(ctx, &d)).await? {
            self.b
                .kube
                .cordon(&kube_name(&d))
                .await
                .ctx(|| format!("failed to cordon node {}", d.server.display()))?;
        }
        Ok(())
    }
}

#[async_trait]
impl PhaseExecutor for Endpoints {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        check_master(&self.b, ctx).await.map_err(boxed)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: NodeData = data(ctx)?;
        gate(&self.b, ctx, Some(&d.server.hostname)).await?;
        self.b
            .kube
            .wait_endpoints(&kube_name(&d), self.b.timing.endpoints_timeout)
            .await
            .ctx(|| format!("endpoints not ready on node {}", d.server.display()))?;
        Ok(())
    }

    async fn rollback(&self, _ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(())
    }
}

const ADVERTISE_IP: &str = "gravitational.io/advertise-ip";

#[async_trait]
impl PhaseExecutor for NodeLabels {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        check_master(&self.b, ctx).await.map_err(boxed)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: LabelsData = data(ctx)?;
        gate(&self.b, ctx, None).await?;
        let Some(first) = d.servers.first() else {
            return Ok(());
        };
        let mut prev: BTreeMap<String, Option<String>> = load(&self.b, ctx, &first.hostname)
            .await?
            .unwrap_or_default();
        for s in &d.servers {
            let name = s.nodename.clone().unwrap_or_else(|| s.hostname.clone());
            let set = BTreeMap::from([(ADVERTISE_IP.to_string(), Some(s.advertise_ip.clone()))]);
            let old = self
                .b
                .kube
                .set_node_labels(&name, &set)
                .await
                .ctx(|| format!("failed to label node {name}"))?;
            prev.entry(name)
                .or_insert_with(|| old.get(ADVERTISE_IP).cloned().flatten());
            save(&self.b, ctx, &first.hostname, Some(&prev)).await?;
        }
        Ok(())
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: LabelsData = data(ctx)?;
        let Some(first) = d.servers.first() else {
            return Ok(());
        };
        let Some(prev) =
            load::<BTreeMap<String, Option<String>>>(&self.b, ctx, &first.hostname).await?
        else {
            return Ok(());
        };
        for (name, v) in prev {
            let set = BTreeMap::from([(ADVERTISE_IP.to_string(), v)]);
            self.b
                .kube
                .set_node_labels(&name, &set)
                .await
                .ctx(|| format!("failed to restore the labels of node {name}"))?;
        }
        save::<()>(&self.b, ctx, &first.hostname, None).await?;
        Ok(())
    }
}

/// Writes a ConfigMap, keeping the previous data in the phase record on
/// the coordinator's ConfigMap `<name>-backup-<op>`.
async fn put_cm(
    b: &Backends,
    ctx: &PhaseContext,
    name: &str,
    data: BTreeMap<String, String>,
) -> Result<(), ExecError> {
    let backup = format!("{name}-backup-{}", ctx.plan().header().operation_id);
    let existing_backup = b
        .kube
        .config_map("kube-system", &backup)
        .await
        .ctx(|| format!("cannot read ConfigMap {backup}"))?;
    let prev = b
        .kube
        .put_config_map("kube-system", name, Some(&data))
        .await
        .ctx(|| format!("cannot write ConfigMap kube-system/{name}"))?;
    if existing_backup.is_none() {
        let mut keep = BTreeMap::from([("existed".to_string(), prev.is_some().to_string())]);
        if let Some(p) = prev {
            keep.insert("data".into(), serde_json::to_string(&p).expect("json"));
        }
        b.kube
            .put_config_map("kube-system", &backup, Some(&keep))
            .await
            .ctx(|| format!("cannot write ConfigMap {backup}"))?;
    }
    Ok(())
}

async fn restore_cm(b: &Backends, ctx: &PhaseContext, name: &str) -> Result<(), ExecError> {
    let backup = format!("{name}-backup-{}", ctx.plan().header().operation_id);
    let Some(keep) = b
        .kube
        .config_map("kube-system", &backup)
        .await
        .ctx(|| format!("cannot read ConfigMap {backup}"))?
    else {
        return Ok(());
    };
    let prev: Option<BTreeMap<String, String>> =
        keep.get("data").and_then(|d| serde_json::from_str(d).ok());
    b.kube
        .put_config_map("kube-system", name, prev.as_ref())
        .await
        .ctx(|| format!("cannot restore ConfigMap kube-system/{name}"))?;
    b.kube
        .put_config_map("kube-system", &backup, None)
        .await
        .ctx(|| format!("cannot delete ConfigMap {backup}"))?;
    Ok(())
}

#[async_trait]
impl PhaseExecutor for Links {
    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: LinksData = data(ctx)?;
        gate(&self.b, ctx, None).await?;
        let Some(first) = d.links.iter().find(|l| !l.contains("wizard")) else {
            return Ok(());
        };
        if d.links.len() > 1 {
            ctx.info(format!("several Ops Center links; using {first}"));
        }
        put_cm(
            &self.b,
            ctx,
            "trusted-clusters",
            BTreeMap::from([("trusted-cluster".into(), first.clone())]),
        )
        .await
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        restore_cm(&self.b, ctx, "trusted-clusters").await
    }
}

#[async_trait]
impl PhaseExecutor for Roles {
    async fn pre_check(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        super::check_run_node(&self.b, ctx).await.map_err(boxed)
    }

    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        gate(&self.b, ctx, None).await?;
        put_cm(
            &self.b,
            ctx,
            "gravity-roles",
            BTreeMap::from([("format".into(), "kube-groups".into())]),
        )
        .await
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        restore_cm(&self.b, ctx, "gravity-roles").await
    }
}

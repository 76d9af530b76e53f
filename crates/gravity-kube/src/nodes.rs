//! Nodes: reading, cordon/uncordon, taints and labels, each a JSON merge
//! patch guarded by the `resourceVersion` that was read.

use std::collections::BTreeMap;

use gravity_upgrade::backend::{BackendError, BackendResult, NodeInfo, Taint};
use k8s_openapi::api::core::v1::{Node, Taint as KubeTaint};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

use crate::backend::KubeBackend;
use crate::error::{backend, is_conflict, is_not_found};
use crate::retry::Retry;

/// What a node update wants to do after looking at the node.
pub(crate) struct NodeChange<R> {
    /// The merge patch to send (without `metadata.resourceVersion`), or
    /// `None` if the node already is as wanted.
    pub(crate) patch: Option<Value>,
    /// The result of the call if the patch (or nothing) is applied.
    pub(crate) result: R,
}

pub(crate) fn node_info(n: &Node) -> NodeInfo {
    let name = n.metadata.name.clone().unwrap_or_default();
    let spec = n.spec.as_ref();
    NodeInfo {
        name,
        labels: n.metadata.labels.clone().unwrap_or_default(),
        taints: spec
            .and_then(|s| s.taints.as_ref())
            .map(|ts| ts.iter().map(from_kube_taint).collect())
            .unwrap_or_default(),
        unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
        ready: n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
    }
}

fn from_kube_taint(t: &KubeTaint) -> Taint {
    Taint {
        key: t.key.clone(),
        value: t.value.clone().unwrap_or_default(),
        effect: t.effect.clone(),
    }
}

fn same_taint(k: &KubeTaint, t: &Taint) -> bool {
    k.key == t.key && k.effect == t.effect && k.value.as_deref().unwrap_or_default() == t.value
}

/// The taints of `node` with `taint` added (`add`) or removed, or `None`
/// if nothing changes. A taint with the same key and effect but another
/// value is replaced (Kubernetes allows one taint per key and effect).
pub(crate) fn updated_taints(node: &Node, taint: &Taint, add: bool) -> Option<Vec<KubeTaint>> {
    let current: Vec<KubeTaint> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let present = current.iter().any(|k| same_taint(k, taint));
    if add {
        if present {
            return None;
        }
        let mut out: Vec<KubeTaint> = current
            .into_iter()
            .filter(|k| !(k.key == taint.key && k.effect == taint.effect))
            .collect();
        out.push(KubeTaint {
            key: taint.key.clone(),
            value: (!taint.value.is_empty()).then(|| taint.value.clone()),
            effect: taint.effect.clone(),
            time_added: None,
        });
        Some(out)
    } else {
        if !present {
            return None;
        }
        Some(
            current
                .into_iter()
                .filter(|k| !same_taint(k, taint))
                .collect(),
        )
    }
}

impl KubeBackend {
    pub(crate) fn node_api(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    /// Reads a node; 404 is [`BackendError::UnknownNode`].
    pub(crate) async fn get_node(&self, name: &str) -> BackendResult<Node> {
        self.get_node_with(name, Retry::default()).await
    }

    /// [`KubeBackend::get_node`] retrying transient failures as `retry`
    /// says (for a drain or wait: not past its deadline).
    pub(crate) async fn get_node_with(&self, name: &str, retry: Retry) -> BackendResult<Node> {
        let api = self.node_api();
        match self.call_with(retry, || api.get(name)).await {
            Ok(n) => Ok(n),
            Err(e) if is_not_found(&e) => Err(BackendError::UnknownNode(name.to_string())),
            Err(e) => Err(backend(format!("cannot read node {name}"), e)),
        }
    }

    pub(crate) async fn node_info(&self, name: &str) -> BackendResult<NodeInfo> {
        Ok(node_info(&self.get_node(name).await?))
    }

    pub(crate) async fn list_nodes(&self) -> BackendResult<Vec<NodeInfo>> {
        let api = self.node_api();
        let lp = ListParams::default();
        let list = self
            .call(|| api.list(&lp))
            .await
            .map_err(|e| backend("cannot list the nodes", e))?;
        Ok(list.items.iter().map(node_info).collect())
    }

    /// Reads the node, asks `change` what to patch, and patches with the
    /// read `resourceVersion`; on 409 Conflict reads again and retries, at
    /// most [`crate::KubeOptions::conflict_retries`] times.
    ///
    /// A patch retried after a transient failure may meet its own earlier
    /// attempt, applied with the answer lost: 409, then a node that is
    /// already as wanted. That is told from a node left alone by finding
    /// its `resourceVersion` changed since the read, and the earlier
    /// attempt's result is returned, so that "changed" stays exact.
    pub(crate) async fn update_node<R>(
        &self,
        name: &str,
        what: &str,
        mut change: impl FnMut(&Node) -> NodeChange<R>,
    ) -> BackendResult<R> {
        let api = self.node_api();
        let attempts = self.options.conflict_retries.saturating_add(1);
        // A patch that may have been applied: its result and the
        // resourceVersion it was computed from.
        let mut unsure: Option<(R, String)> = None;
        for _ in 0..attempts {
            let node = self.get_node(name).await?;
            let NodeChange { patch, result } = change(&node);
            if let Some((earlier, read)) = unsure.take()
                && patch.is_none()
                && node.metadata.resource_version.as_ref() != Some(&read)
            {
                return Ok(earlier);
            }
            let Some(mut patch) = patch else {
                return Ok(result);
            };
            let rv = node.metadata.resource_version;
            if let (Some(rv), Some(obj)) = (&rv, patch.as_object_mut()) {
                let meta = obj.entry("metadata").or_insert_with(|| json!({}));
                if let Some(meta) = meta.as_object_mut() {
                    meta.insert("resourceVersion".into(), Value::String(rv.clone()));
                }
            }
            let params = PatchParams::default();
            let patch = Patch::Merge(&patch);
            match self.call(|| api.patch(name, &params, &patch)).await {
                Ok(_) => return Ok(result),
                Err(e) if is_conflict(&e) => {
                    if e.retried()
                        && let Some(rv) = rv
                    {
                        unsure = Some((result, rv));
                    }
                    continue;
                }
                Err(e) if is_not_found(&e) => {
                    return Err(BackendError::UnknownNode(name.to_string()));
                }
                Err(e) => return Err(backend(format!("cannot {what} node {name}"), e)),
            }
        }
        Err(BackendError::Other(format!(
            "cannot {what} node {name}: the node was changed concurrently {attempts} times in a row (409 Conflict); retry the phase"
        )))
    }

    pub(crate) async fn set_unschedulable(&self, name: &str, on: bool) -> BackendResult<bool> {
        let what = if on { "cordon" } else { "uncordon" };
        self.update_node(name, what, |n| {
            let current = n
                .spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false);
            if current == on {
                return NodeChange {
                    patch: None,
                    result: false,
                };
            }
            // Uncordon removes the field, as kubectl does.
            let value = if on { Value::Bool(true) } else { Value::Null };
            NodeChange {
                patch: Some(json!({ "spec": { "unschedulable": value } })),
                result: true,
            }
        })
        .await
    }

    pub(crate) async fn change_taint(
        &self,
        name: &str,
        taint: &Taint,
        add: bool,
    ) -> BackendResult<bool> {
        let what = if add {
            format!("add taint {taint} to")
        } else {
            format!("remove taint {taint} from")
        };
        self.update_node(name, &what, |n| match updated_taints(n, taint, add) {
            None => NodeChange {
                patch: None,
                result: false,
            },
            Some(taints) => NodeChange {
                patch: Some(json!({ "spec": { "taints": taints } })),
                result: true,
            },
        })
        .await
    }

    pub(crate) async fn change_labels(
        &self,
        name: &str,
        labels: &BTreeMap<String, Option<String>>,
    ) -> BackendResult<BTreeMap<String, Option<String>>> {
        self.update_node(name, "label", |n| {
            let current = n.metadata.labels.clone().unwrap_or_default();
            let previous: BTreeMap<String, Option<String>> = labels
                .keys()
                .map(|k| (k.clone(), current.get(k).cloned()))
                .collect();
            let changes: serde_json::Map<String, Value> = labels
                .iter()
                .filter(|(k, v)| current.get(*k) != v.as_ref())
                .map(|(k, v)| (k.clone(), v.clone().map_or(Value::Null, Value::String)))
                .collect();
            NodeChange {
                patch: (!changes.is_empty()).then(|| json!({ "metadata": { "labels": changes } })),
                result: previous,
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus};
    use kube::api::ObjectMeta;

    fn node(taints: Vec<KubeTaint>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(taints),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn kt(key: &str, value: &str, effect: &str) -> KubeTaint {
        KubeTaint {
            key: key.into(),
            value: Some(value.into()),
            effect: effect.into(),
            time_added: None,
        }
    }

    #[test]
    fn adding_a_present_taint_changes_nothing() {
        let n = node(vec![kt("gravitational.io/runlevel", "system", "NoExecute")]);
        assert!(updated_taints(&n, &Taint::runlevel_system(), true).is_none());
    }

    #[test]
    fn adding_keeps_other_taints_and_replaces_same_key_and_effect() {
        let n = node(vec![
            kt("a", "1", "NoSchedule"),
            kt("gravitational.io/runlevel", "user", "NoExecute"),
        ]);
        let out = updated_taints(&n, &Taint::runlevel_system(), true).unwrap();
        assert_eq!(
            out,
            vec![
                kt("a", "1", "NoSchedule"),
                kt("gravitational.io/runlevel", "system", "NoExecute")
            ]
        );
    }

    #[test]
    fn removing_only_removes_the_exact_taint() {
        let n = node(vec![
            kt("a", "1", "NoSchedule"),
            kt("gravitational.io/runlevel", "system", "NoExecute"),
        ]);
        let out = updated_taints(&n, &Taint::runlevel_system(), false).unwrap();
        assert_eq!(out, vec![kt("a", "1", "NoSchedule")]);
        let other = node(vec![kt("gravitational.io/runlevel", "user", "NoExecute")]);
        assert!(updated_taints(&other, &Taint::runlevel_system(), false).is_none());
    }

    #[test]
    fn node_info_reads_ready_and_cordon() {
        let mut n = node(vec![kt("a", "", "NoSchedule")]);
        n.spec.as_mut().unwrap().unschedulable = Some(true);
        n.status = Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let i = node_info(&n);
        assert!(i.ready && i.unschedulable);
        assert_eq!(i.taints[0].to_string(), "a=:NoSchedule");
        assert!(!node_info(&Node::default()).ready);
    }
}

//! Draining a node through the Eviction API.

use std::collections::BTreeMap;

use futures::future::try_join_all;
use gravity_upgrade::backend::{BackendError, BackendResult, DrainOptions, DrainReport};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams};
use serde_json::json;
use tokio::time::Instant;

use crate::backend::KubeBackend;
use crate::error::{api_code, backend, is_not_found};
use crate::retry::Retry;
use crate::selector;

/// The annotation of mirror (static) pods.
pub(crate) const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// `namespace/name` of a pod.
pub(crate) fn pod_key(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or_default(),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Why a drain leaves a pod alone, if it does.
pub(crate) fn skip_reason(p: &Pod) -> Option<&'static str> {
    let daemonset = p
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet");
    if daemonset {
        return Some("DaemonSet");
    }
    let mirror = p
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION));
    mirror.then_some("mirror")
}

/// How the eviction of one pod ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The pod is gone or was replaced.
    Gone,
    /// The evictions were refused (429) until the deadline.
    Refused,
    /// The eviction was accepted but the pod was still there at the
    /// deadline.
    Lingering,
}

impl KubeBackend {
    pub(crate) async fn drain_node(
        &self,
        node: &str,
        opts: &DrainOptions,
    ) -> BackendResult<DrainReport> {
        let start = Instant::now();
        let deadline = start + opts.eviction_deadline;
        let within = Retry::until(deadline);
        self.get_node_with(node, within).await?;
        let pods_api = Api::<Pod>::all(self.client.clone());
        let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
        let pods = self
            .call_with(within, || pods_api.list(&lp))
            .await
            .map_err(|e| backend(format!("cannot list the pods of node {node}"), e))?;
        let mut report = DrainReport::default();
        let mut targets = Vec::new();
        for p in pods.items {
            if skip_reason(&p).is_some() {
                report.skipped.push(pod_key(&p));
            } else {
                targets.push(p);
            }
        }
        let outcomes = try_join_all(
            targets
                .iter()
                .map(|p| self.evict_and_wait(node, p, deadline)),
        )
        .await?;
        let mut refused = Vec::new();
        let mut lingering = Vec::new();
        for (p, o) in targets.iter().zip(outcomes) {
            match o {
                Outcome::Gone => report.evicted.push(pod_key(p)),
                Outcome::Refused => refused.push(p),
                Outcome::Lingering => lingering.push(p),
            }
        }
        if refused.is_empty() && lingering.is_empty() {
            return Ok(report);
        }
        let mut budgets: Vec<String> = Vec::new();
        let mut unlisted: Vec<String> = Vec::new();
        let mut by_namespace: BTreeMap<String, Vec<PodDisruptionBudget>> = BTreeMap::new();
        for p in refused.iter().chain(&lingering) {
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            if !by_namespace.contains_key(&ns) {
                // Past the deadline: one attempt, no retries. If the API
                // server is away now, the blocked pods still matter more
                // than naming their budgets.
                let api = Api::<PodDisruptionBudget>::namespaced(self.client.clone(), &ns);
                let lp = ListParams::default();
                let items = match self.call_with(within, || api.list(&lp)).await {
                    Ok(list) => list.items,
                    Err(e) if e.gave_up => {
                        unlisted.push(format!(
                            "(unknown in namespace {ns}: the Kubernetes API server was unavailable)"
                        ));
                        Vec::new()
                    }
                    Err(e) => {
                        return Err(backend(
                            format!("cannot list the PodDisruptionBudgets of namespace {ns}"),
                            e,
                        ));
                    }
                };
                by_namespace.insert(ns.clone(), items);
            }
            let labels = p.metadata.labels.clone().unwrap_or_default();
            for b in &by_namespace[&ns] {
                let sel = b.spec.as_ref().and_then(|s| s.selector.as_ref());
                if selector::matches(sel, &labels) {
                    let key = format!("{ns}/{}", b.metadata.name.as_deref().unwrap_or_default());
                    if !budgets.contains(&key) {
                        budgets.push(key);
                    }
                }
            }
        }
        budgets.extend(unlisted);
        let mut pods: Vec<String> = refused.iter().map(|p| pod_key(p)).collect();
        pods.extend(
            lingering
                .iter()
                .map(|p| format!("{} (evicted, still terminating)", pod_key(p))),
        );
        Err(BackendError::EvictionBlocked {
            node: node.to_string(),
            pods: pods.join(", "),
            budgets: if budgets.is_empty() {
                "(none: the evicted pods did not terminate)".into()
            } else {
                budgets.join(", ")
            },
            waited: start.elapsed(),
        })
    }

    /// Evicts `pod` (retrying 429 with backoff) and waits until it is gone
    /// or replaced, both until `deadline`.
    async fn evict_and_wait(
        &self,
        node: &str,
        pod: &Pod,
        deadline: Instant,
    ) -> BackendResult<Outcome> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let uid = pod.metadata.uid.as_deref();
        let mut delay = self.options.eviction_backoff;
        let eviction = Retry {
            deadline: Some(deadline),
            eviction: true,
        };
        loop {
            // Evicting a pod twice (a retry after a lost answer) is
            // harmless: the second finds it gone (404) or terminating.
            match self.call_with(eviction, || self.evict(ns, name)).await {
                Ok(()) => break,
                Err(e) if is_not_found(&e) => return Ok(Outcome::Gone),
                Err(e) if api_code(&e) == Some(429) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(Outcome::Refused);
                    }
                    tokio::time::sleep(delay.min(deadline - now)).await;
                    delay = (delay * 2).min(self.options.eviction_backoff_max);
                }
                Err(e) => {
                    return Err(backend(
                        format!("error evicting pod {ns}/{name} from node {node}"),
                        e,
                    ));
                }
            }
        }
        let api = Api::<Pod>::namespaced(self.client.clone(), ns);
        loop {
            match self.call_until(deadline, || api.get_opt(name)).await {
                Ok(None) => return Ok(Outcome::Gone),
                Ok(Some(p)) if p.metadata.uid.as_deref() != uid => return Ok(Outcome::Gone),
                Ok(Some(_)) => {}
                Err(e) => {
                    return Err(backend(
                        format!("error waiting for pod {ns}/{name} to terminate"),
                        e,
                    ));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Outcome::Lingering);
            }
            tokio::time::sleep(self.options.poll_interval.min(deadline - now)).await;
        }
    }

    /// POSTs a policy/v1 Eviction for the pod.
    async fn evict(&self, ns: &str, name: &str) -> Result<(), kube::Error> {
        let body = json!({
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": { "name": name, "namespace": ns },
        });
        let req = http_post(
            &format!("/api/v1/namespaces/{ns}/pods/{name}/eviction"),
            &body,
        )?;
        self.client
            .request::<serde_json::Value>(req)
            .await
            .map(|_| ())
    }
}

fn http_post(path: &str, body: &serde_json::Value) -> Result<http::Request<Vec<u8>>, kube::Error> {
    http::Request::post(path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(body).map_err(kube::Error::SerdeError)?)
        .map_err(kube::Error::HttpError)
}

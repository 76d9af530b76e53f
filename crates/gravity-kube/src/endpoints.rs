//! Waiting for the DNS and gravity-site endpoints of a node.

use std::time::Duration;

use gravity_upgrade::backend::{BackendError, BackendResult};
use k8s_openapi::api::core::v1::Endpoints;
use kube::api::{Api, ListParams};
use tokio::time::Instant;

use crate::backend::KubeBackend;
use crate::error::backend;
use crate::retry::Retry;

/// The namespace of the system services.
pub(crate) const SYSTEM_NAMESPACE: &str = "kube-system";
/// `k8s-app` values of the DNS services (masters and workers).
pub(crate) const DNS_APPS: [&str; 3] = ["kube-dns", "kubedns", "kube-dns-worker"];

/// What is missing among `endpoints` for `node`, if anything.
pub(crate) fn missing(endpoints: &[Endpoints], node: &str) -> Option<String> {
    let label = |e: &Endpoints, k: &str| {
        e.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(k))
            .cloned()
            .unwrap_or_default()
    };
    let ready = |e: &Endpoints| {
        e.subsets
            .iter()
            .flatten()
            .flat_map(|s| s.addresses.iter().flatten())
            .cloned()
            .collect::<Vec<_>>()
    };
    let site = endpoints
        .iter()
        .filter(|e| label(e, "app") == "gravity-site")
        .any(|e| !ready(e).is_empty());
    let dns = endpoints
        .iter()
        .filter(|e| DNS_APPS.contains(&label(e, "k8s-app").as_str()))
        .any(|e| {
            ready(e)
                .iter()
                .any(|a| a.node_name.as_deref() == Some(node))
        });
    let mut out = Vec::new();
    if !site {
        out.push("no gravity-site endpoint is serving (label app=gravity-site)".to_string());
    }
    if !dns {
        out.push(format!(
            "no DNS endpoint is serving on the node (label k8s-app in {}, nodeName {node})",
            DNS_APPS.join("/")
        ));
    }
    (!out.is_empty()).then(|| out.join("; "))
}

impl KubeBackend {
    pub(crate) async fn wait_node_endpoints(
        &self,
        node: &str,
        timeout: Duration,
    ) -> BackendResult<()> {
        let start = Instant::now();
        let deadline = start + timeout;
        let within = Retry::until(deadline);
        self.get_node_with(node, within).await?;
        let api = Api::<Endpoints>::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        let lp = ListParams::default();
        loop {
            let list = self
                .call_with(within, || api.list(&lp))
                .await
                .map_err(|e| {
                    backend(
                        format!("cannot list the endpoints of {SYSTEM_NAMESPACE}"),
                        e,
                    )
                })?;
            let Some(detail) = missing(&list.items, node) else {
                return Ok(());
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(BackendError::EndpointsNotReady {
                    node: node.to_string(),
                    detail: format!("{detail} (waited {:?})", start.elapsed()),
                });
            }
            tokio::time::sleep(self.options.poll_interval.min(deadline - now)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EndpointAddress, EndpointSubset};
    use kube::api::ObjectMeta;

    fn ep(name: &str, label: (&str, &str), nodes: &[Option<&str>], not_ready: bool) -> Endpoints {
        let addrs: Vec<EndpointAddress> = nodes
            .iter()
            .map(|n| EndpointAddress {
                ip: "10.0.0.1".into(),
                node_name: n.map(Into::into),
                ..Default::default()
            })
            .collect();
        Endpoints {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([(label.0.to_string(), label.1.to_string())].into()),
                ..Default::default()
            },
            subsets: Some(vec![if not_ready {
                EndpointSubset {
                    not_ready_addresses: Some(addrs),
                    ..Default::default()
                }
            } else {
                EndpointSubset {
                    addresses: Some(addrs),
                    ..Default::default()
                }
            }]),
        }
    }

    #[test]
    fn both_must_serve_and_dns_on_the_node() {
        let site = ep(
            "gravity-site",
            ("app", "gravity-site"),
            &[Some("m2")],
            false,
        );
        let dns = ep(
            "kube-dns",
            ("k8s-app", "kube-dns"),
            &[Some("m1"), None],
            false,
        );
        assert_eq!(missing(&[site.clone(), dns.clone()], "m1"), None);
        let e = missing(&[site.clone(), dns.clone()], "m2").unwrap();
        assert!(
            e.contains("DNS") && !e.contains("gravity-site endpoint"),
            "{e}"
        );
        let e = missing(std::slice::from_ref(&dns), "m1").unwrap();
        assert!(e.contains("gravity-site") && !e.contains("DNS"), "{e}");
        let worker = ep(
            "kube-dns-worker",
            ("k8s-app", "kube-dns-worker"),
            &[Some("w1")],
            false,
        );
        assert_eq!(missing(&[site.clone(), worker], "w1"), None);
        let unready = ep("kube-dns", ("k8s-app", "kube-dns"), &[Some("m1")], true);
        assert!(missing(&[site, unready], "m1").is_some());
    }
}

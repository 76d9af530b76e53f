//! `links`: the migration of the cluster's remote-access Ops Center link
//! to a trusted cluster (spec §3, "links").
//!
//! Gravity kept links and trusted clusters in its etcd-backed backend;
//! here a trusted cluster is the key [`TRUSTED_CLUSTERS`]`<name>` of the
//! [`crate::backend::Etcd`] backend, holding the cluster as JSON. The
//! links themselves are kept.

use std::collections::BTreeMap;

use async_trait::async_trait;
use gravity_plan::{ExecError, PhaseContext, PhaseExecutor};
use serde::{Deserialize, Serialize};

use super::common::{Context, data, executor_struct, gate, put_keys, restore_keys};
use crate::backend::Backends;
use crate::executors::LinksData;

/// The etcd prefix of the trusted clusters.
pub const TRUSTED_CLUSTERS: &str = "/gravity/local/trustedclusters/";

executor_struct!(
    /// `links`: ignores wizard links and builds a trusted cluster from the
    /// first remote-access link (a warning names the others), written to
    /// [`TRUSTED_CLUSTERS`]`<host>`. Rollback puts back exactly the key it
    /// wrote: its previous value, or no key if there was none (Gravity's
    /// deleted every trusted cluster).
    Links
);

/// A trusted cluster, as the migration writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedCluster {
    /// The Ops Center's host name.
    pub name: String,
    /// Whether the cluster connects to it.
    pub enabled: bool,
    /// Its web proxy (`host:port`).
    pub proxy_address: String,
    /// Its reverse tunnel (`host:3024`).
    pub reverse_tunnel_address: String,
    /// The link it was made from.
    pub link: String,
}

impl TrustedCluster {
    /// The trusted cluster of an Ops Center link (`https://host[:port]/…`).
    pub fn from_link(link: &str) -> Option<Self> {
        let rest = link.split_once("://").map_or(link, |(_, r)| r);
        let addr = rest.split('/').next().filter(|a| !a.is_empty())?;
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        let proxy_address = if addr.contains(':') {
            addr.to_string()
        } else {
            format!("{addr}:443")
        };
        Some(TrustedCluster {
            name: host.to_string(),
            enabled: true,
            proxy_address,
            reverse_tunnel_address: format!("{host}:3024"),
            link: link.to_string(),
        })
    }
}

/// The names of the trusted clusters in the backend (keys with an empty
/// value, which rollbacks of earlier versions left instead of deleting
/// the key, are none).
pub async fn trusted_clusters(b: &Backends) -> Result<Vec<String>, ExecError> {
    let keys = b
        .etcd
        .list(TRUSTED_CLUSTERS)
        .await
        .ctx(|| "cannot list the trusted clusters".into())?;
    Ok(keys
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, _)| k[TRUSTED_CLUSTERS.len()..].to_string())
        .collect())
}

#[async_trait]
impl PhaseExecutor for Links {
    async fn execute(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        let d: LinksData = data(ctx)?;
        gate(&self.b, ctx, None).await?;
        let mut remote = d.links.iter().filter(|l| !l.contains("wizard"));
        let Some(first) = remote.next() else {
            ctx.info("no remote-access Ops Center link; nothing to migrate");
            return Ok(());
        };
        let others: Vec<&String> = remote.collect();
        if !others.is_empty() {
            ctx.info(format!(
                "several Ops Center links; using {first} and ignoring {}",
                others
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let Some(tc) = TrustedCluster::from_link(first) else {
            return Err(format!("invalid Ops Center link {first:?}: no host name").into());
        };
        let key = format!("{TRUSTED_CLUSTERS}{}", tc.name);
        let value = serde_json::to_string(&tc).expect("serializes");
        put_keys(&self.b, ctx, &BTreeMap::from([(key, value)])).await?;
        ctx.info(format!("created trusted cluster {}", tc.name));
        Ok(())
    }

    async fn rollback(&self, ctx: &PhaseContext) -> Result<(), ExecError> {
        Ok(restore_keys(&self.b, ctx).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_cluster_of_a_link() {
        let tc = TrustedCluster::from_link("https://ops.example.com:32009/web").unwrap();
        assert_eq!(tc.name, "ops.example.com");
        assert_eq!(tc.proxy_address, "ops.example.com:32009");
        assert_eq!(tc.reverse_tunnel_address, "ops.example.com:3024");
        let tc = TrustedCluster::from_link("ops.example.com").unwrap();
        assert_eq!(tc.proxy_address, "ops.example.com:443");
        assert!(TrustedCluster::from_link("https://").is_none());
    }
}

//! Leader election of the masters over Gravity's etcd keys.
//!
//! Planet keeps, per master, `/planet/cluster/<cluster>/election/<ip>` =
//! `true`/`false` (whether the master campaigns) and the current leader's
//! IP in `/planet/cluster/<cluster>/master`. [`EtcdElection`] reads and
//! writes those keys ([`Election`]); host names and IPs are mapped with the
//! master list given to it.
//!
//! Nothing in a test environment runs planet's election loop, so
//! [`SimulatedCampaign`] stands in for it in tests and rehearsals: a polling
//! task that keeps the leader key on an enabled master (the current leader
//! while it stays enabled, else, once its simulated lease has run out, the
//! first enabled master in the list), with compare-and-swap writes. It is a
//! simulation, not planet's algorithm (which renews a TTL on the leader key).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gravity_upgrade::Cluster;
use gravity_upgrade::backend::{BackendError, BackendResult, Election};

use super::error::EtcdBackendError;
use crate::client::{Compare, EtcdClient, TxnOp};

/// `/planet/cluster/<cluster>/election/`.
pub fn election_prefix(cluster: &str) -> String {
    format!("/planet/cluster/{cluster}/election/")
}

/// `/planet/cluster/<cluster>/election/<ip>`.
pub fn election_key(cluster: &str, ip: &str) -> String {
    format!("{}{ip}", election_prefix(cluster))
}

/// `/planet/cluster/<cluster>/master`: the leader's IP.
pub fn leader_key(cluster: &str) -> String {
    format!("/planet/cluster/{cluster}/master")
}

/// A master: host name and advertise IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Master {
    /// Host name.
    pub hostname: String,
    /// Advertise IP (the election keys' suffix).
    pub ip: String,
}

/// [`Election`] over Gravity's election keys in etcd.
#[derive(Debug, Clone)]
pub struct EtcdElection {
    client: EtcdClient,
    cluster: String,
    masters: Vec<Master>,
}

impl EtcdElection {
    /// The election of `cluster` whose masters are `(host name, ip)`, in
    /// the order a [`SimulatedCampaign`] prefers them.
    pub fn new<I, H, A>(client: EtcdClient, cluster: impl Into<String>, masters: I) -> Self
    where
        I: IntoIterator<Item = (H, A)>,
        H: Into<String>,
        A: Into<String>,
    {
        EtcdElection {
            client,
            cluster: cluster.into(),
            masters: masters
                .into_iter()
                .map(|(h, a)| Master {
                    hostname: h.into(),
                    ip: a.into(),
                })
                .collect(),
        }
    }

    /// The election of a cluster model's masters.
    pub fn for_cluster(client: EtcdClient, cluster: &Cluster) -> Self {
        EtcdElection::new(
            client,
            cluster.name.clone(),
            cluster
                .masters()
                .map(|m| (m.hostname.clone(), m.advertise_ip.clone())),
        )
    }

    /// The masters.
    pub fn masters(&self) -> &[Master] {
        &self.masters
    }

    /// The cluster name.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The etcd client.
    pub fn client(&self) -> &EtcdClient {
        &self.client
    }

    fn by_ip(&self, ip: &str) -> Option<&Master> {
        self.masters.iter().find(|m| m.ip == ip)
    }

    fn by_host(&self, host: &str) -> Option<&Master> {
        self.masters.iter().find(|m| m.hostname == host)
    }

    fn err(&self, detail: String) -> EtcdBackendError {
        EtcdBackendError::Election {
            cluster: self.cluster.clone(),
            detail,
        }
    }

    /// The leader key's value (an IP) and its revision, if set.
    pub async fn leader_ip(&self) -> Result<Option<(String, i64)>, EtcdBackendError> {
        let kv = self
            .client
            .get(&leader_key(&self.cluster))
            .await
            .map_err(EtcdBackendError::client(self.cluster.clone()))?;
        Ok(kv.map(|kv| (kv.value_str(), kv.mod_revision)))
    }

    /// Election flags by host name (masters without a key are absent).
    pub async fn flags(&self) -> Result<BTreeMap<String, bool>, EtcdBackendError> {
        let prefix = election_prefix(&self.cluster);
        let kvs = self
            .client
            .range_prefix(&prefix)
            .await
            .map_err(EtcdBackendError::client(self.cluster.clone()))?;
        let mut out = BTreeMap::new();
        for kv in kvs {
            let ip = &kv.key[prefix.len()..];
            let Some(m) = self.by_ip(ip) else {
                // A key of a node that left the cluster: not a master now.
                continue;
            };
            let v = match kv.value_str().as_str() {
                "true" => true,
                "false" => false,
                other => {
                    return Err(self.err(format!(
                        "{} holds {other:?}, not true or false; set it with \"etcdctl set {} true\"",
                        kv.key, kv.key
                    )));
                }
            };
            out.insert(m.hostname.clone(), v);
        }
        Ok(out)
    }
}

#[async_trait]
impl Election for EtcdElection {
    async fn leader(&self) -> BackendResult<Option<String>> {
        let Some((ip, _)) = self.leader_ip().await.map_err(|e| {
            BackendError::Other(format!(
                "resolving current leader IP: {e}; check that etcd serves clients"
            ))
        })?
        else {
            return Ok(None);
        };
        match self.by_ip(&ip) {
            Some(m) => Ok(Some(m.hostname.clone())),
            None => Err(self
                .err(format!(
                    "the leader key {} names {ip:?}, which is not a master of the cluster; wait for the election to settle and retry",
                    leader_key(&self.cluster)
                ))
                .into()),
        }
    }

    async fn set_enabled(&self, node: &str, enabled: bool) -> BackendResult<Option<bool>> {
        let Some(m) = self.by_host(node) else {
            return Err(BackendError::Other(format!(
                "node {node} is not a master; leader election only runs on masters"
            )));
        };
        let key = election_key(&self.cluster, &m.ip);
        let r = self
            .client
            .txn(
                &[],
                &[
                    TxnOp::Get(key.clone()),
                    TxnOp::Put(key, enabled.to_string().into_bytes()),
                ],
                &[],
            )
            .await
            .map_err(|e| {
                BackendError::Other(format!(
                    "setting leader election on {:?} to {enabled}: {e}; check that etcd serves clients and retry",
                    m.ip
                ))
            })?;
        Ok(r.gets
            .first()
            .cloned()
            .flatten()
            .map(|kv| kv.value_str() == "true"))
    }

    async fn status(&self) -> BackendResult<BTreeMap<String, bool>> {
        Ok(self.flags().await?)
    }
}

/// A stand-in for planet's election loop, for tests and rehearsals only:
/// every `interval` it keeps `/planet/cluster/<cluster>/master` on an
/// enabled master (see the [module docs](self)). A leader whose election
/// is disabled keeps the key until its lease runs out (`lease`, counted
/// from when the loop first saw it disabled), as planet's leader key
/// expires when the leader stops renewing it; then the first enabled
/// master takes it, or it is deleted if none is enabled. Errors (etcd down
/// during the etcd upgrade) are ignored and the loop goes on. Stopped when
/// dropped.
#[derive(Debug)]
pub struct SimulatedCampaign {
    task: tokio::task::JoinHandle<()>,
}

impl SimulatedCampaign {
    /// Starts the loop on the current tokio runtime.
    pub fn start(election: EtcdElection, interval: Duration, lease: Duration) -> Self {
        let task = tokio::spawn(async move {
            let mut disabled_since: Option<(String, Instant)> = None;
            loop {
                let _ = round(&election, lease, &mut disabled_since).await;
                tokio::time::sleep(interval).await;
            }
        });
        SimulatedCampaign { task }
    }

    /// Stops the loop.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

/// One round of the campaign.
async fn round(
    election: &EtcdElection,
    lease: Duration,
    disabled_since: &mut Option<(String, Instant)>,
) -> Result<(), EtcdBackendError> {
    let flags = election.flags().await?;
    let enabled = |h: &str| flags.get(h).copied().unwrap_or(false);
    let current = election.leader_ip().await?;
    let current_host = current
        .as_ref()
        .and_then(|(ip, _)| election.by_ip(ip))
        .map(|m| m.hostname.clone());
    if let Some(h) = &current_host
        && enabled(h)
    {
        *disabled_since = None;
        return Ok(());
    }
    if let Some((ip, _)) = &current
        && current_host.is_some()
    {
        // A disabled leader keeps its key until the lease runs out.
        let since = match disabled_since {
            Some((d, t)) if d == ip => *t,
            _ => {
                let now = Instant::now();
                *disabled_since = Some((ip.clone(), now));
                now
            }
        };
        if since.elapsed() < lease {
            return Ok(());
        }
    }
    let key = leader_key(&election.cluster);
    let guard = match &current {
        Some((_, rev)) => Compare::ModRevision(key.clone(), *rev),
        None => Compare::Absent(key.clone()),
    };
    let op = match election.masters.iter().find(|m| enabled(&m.hostname)) {
        Some(m) => TxnOp::Put(key, m.ip.clone().into_bytes()),
        None if current.is_none() => return Ok(()),
        None => TxnOp::Delete(key),
    };
    // Compare-and-swap: if someone else moved the key, the next round
    // looks again.
    election
        .client
        .txn(&[guard], &[op], &[])
        .await
        .map_err(EtcdBackendError::client(election.cluster.clone()))?;
    *disabled_since = None;
    Ok(())
}

impl Drop for SimulatedCampaign {
    fn drop(&mut self) {
        self.task.abort();
    }
}

//! A real etcd cluster on one machine for rehearsing an upgrade of a
//! simulated cluster (`gravity sim etcd start|stop|status`).
//!
//! [`Rehearsal::start`] runs one detached `etcd` process per master of the
//! simulated cluster of a state directory ([`ProcessControl`]: they outlive
//! the `gravity` command that started them), on free loopback ports, with
//! data dirs `<root>/<node>/etcd/<version>` (`<root>` is `<state>/etcd`),
//! seeds it with the simulated cluster's etcd keys (Gravity's roles, trusted
//! clusters, election flags and leader) and describes it in
//! `<root>/cluster.json`. [`Rehearsal::backend`] is then the
//! [`EtcdBackend`] over those members: the `/etcd` phases shut them down,
//! start them on a fresh data dir on the upgrade address, restore and
//! restart them, all as real processes; member state is kept in
//! `<root>/<node>/etcd/member.json` as [`EtcdBackend`] does, so every
//! `gravity` command sees where the previous one left them.
//!
//! Nothing on a rehearsal machine runs planet's election loop, so a
//! command executing phases runs a [`SimulatedCampaign`]
//! ([`Rehearsal::start_campaign`]) while it runs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gravity_pack::Version;
use gravity_upgrade::backend::{EtcdAddress, Timing};
use gravity_upgrade::sim::SimulatedCluster;
use serde::{Deserialize, Serialize};

use crate::backend::election::{EtcdElection, SimulatedCampaign, leader_key};
use crate::backend::{
    EtcdBackend, EtcdBackendConfig, EtcdBackendError, EtcdBinaries, MemberConfig, ProcessControl,
    ProcessMember, gateway, loopback_upgrade_url, state,
};
use crate::client::{EtcdClient, TxnOp};
use crate::harness::free_port;

/// The description of the cluster in `<root>/cluster.json`.
pub const CLUSTER_FILE: &str = "cluster.json";

/// How often the rehearsal's [`SimulatedCampaign`] looks at the election keys.
pub const CAMPAIGN_INTERVAL: Duration = Duration::from_millis(100);
/// How long a leader whose election was disabled keeps the leader key.
pub const CAMPAIGN_LEASE: Duration = Duration::from_millis(500);

/// One member of the rehearsal cluster as it was created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RehearsalMember {
    /// The master (host name); also the etcd member name.
    pub node: String,
    /// The master's advertise IP (the election keys' suffix).
    pub ip: String,
    /// The client URL (the member's normal address).
    pub client_url: String,
    /// The peer URL.
    pub peer_url: String,
    /// The data dir it was created with.
    pub data_dir: PathBuf,
    /// The cluster token it was created with.
    pub token: String,
    /// The etcd version it was created at (the simulated installed one).
    pub version: Version,
}

/// `<root>/cluster.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RehearsalCluster {
    /// The simulated cluster's name.
    pub cluster: String,
    /// The masters' members.
    pub members: Vec<RehearsalMember>,
    /// The nodes without a member (workers).
    #[serde(default)]
    pub workers: Vec<String>,
}

/// What [`Rehearsal::start`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartReport {
    /// Whether the cluster was created now (else stopped members of an
    /// existing one were started again).
    pub created: bool,
    /// The members started now.
    pub started: Vec<String>,
    /// Keys written from the simulated cluster (on creation).
    pub seeded: usize,
}

/// A member as [`Rehearsal::status`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// The node.
    pub node: String,
    /// Whether its process runs (and is the recorded etcd).
    pub running: bool,
    /// Its pid, while it runs.
    pub pid: Option<i32>,
    /// The version the upgrade switched it to.
    pub version: Version,
    /// What the running binary reports (`None` if it does not answer).
    pub server_version: Option<String>,
    /// The data dir in use.
    pub data_dir: PathBuf,
    /// The address it serves (or last served): normal or upgrade.
    pub address: EtcdAddress,
    /// That address's client URL.
    pub url: String,
    /// Whether it answers `/health` with `true`.
    pub healthy: bool,
    /// The version and data dir kept for a rollback.
    pub previous: Option<(Version, PathBuf)>,
}

/// A rehearsal cluster under a root directory (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct Rehearsal {
    root: PathBuf,
    spec: RehearsalCluster,
    control: ProcessControl,
}

fn config_err(e: impl std::fmt::Display) -> EtcdBackendError {
    EtcdBackendError::Config(e.to_string())
}

/// Waits, for real members on a busy machine: polls every 100 ms, up to
/// 100 times (the leader step-down waits up to 10 s); the Kubernetes waits
/// stay the simulation's.
pub fn timing() -> Timing {
    Timing {
        poll_interval: Duration::from_millis(100),
        poll_attempts: 100,
        ..Timing::fast()
    }
}

impl Rehearsal {
    /// `<state_dir>/etcd`, where a state directory keeps its rehearsal cluster.
    pub fn root_of(state_dir: &Path) -> PathBuf {
        state_dir.join("etcd")
    }

    /// Whether `root` holds a rehearsal cluster.
    pub fn exists(root: &Path) -> bool {
        root.join(CLUSTER_FILE).is_file()
    }

    /// The rehearsal cluster described in `<root>/cluster.json`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, EtcdBackendError> {
        let root = root.into();
        let path = root.join(CLUSTER_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                EtcdBackendError::Config(format!(
                    "no rehearsal etcd cluster in {}; start one with \"gravity sim etcd start\"",
                    root.display()
                ))
            } else {
                EtcdBackendError::Io {
                    context: format!("reading {}", path.display()),
                    source: e,
                }
            }
        })?;
        let spec: RehearsalCluster =
            serde_json::from_str(&text).map_err(|e| EtcdBackendError::CorruptState {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        Ok(Self::with_spec(root, spec))
    }

    fn with_spec(root: PathBuf, spec: RehearsalCluster) -> Self {
        let members = spec
            .members
            .iter()
            .map(|m| ProcessMember {
                node: m.node.clone(),
                name: m.node.clone(),
                peer_url: m.peer_url.clone(),
            })
            .collect();
        Rehearsal {
            control: ProcessControl::new(&root, members),
            root,
            spec,
        }
    }

    /// Starts the rehearsal cluster of the simulated cluster `sim` under
    /// `root`: creates, starts and seeds it if `root` holds none, else
    /// starts its stopped members again where they last served (after a
    /// `stop` or a reboot). Returns once every member is healthy.
    pub async fn start(
        root: impl Into<PathBuf>,
        sim: &SimulatedCluster,
    ) -> Result<(Self, StartReport), EtcdBackendError> {
        let root = root.into();
        if Self::exists(&root) {
            let r = Self::open(&root)?;
            let started = r.start_stopped().await?;
            r.wait_healthy(Duration::from_secs(30)).await?;
            return Ok((
                r,
                StartReport {
                    created: false,
                    started,
                    seeded: 0,
                },
            ));
        }
        let cluster = sim.cluster().map_err(config_err)?;
        let version = cluster
            .installed
            .etcd_version
            .clone()
            .unwrap_or_else(|| Version::parse("3.3.20").expect("valid"));
        let mut ports = BTreeSet::new();
        let mut port = || -> Result<u16, EtcdBackendError> {
            loop {
                let p = free_port().map_err(config_err)?;
                if ports.insert(p) {
                    return Ok(p);
                }
            }
        };
        let mut members = Vec::new();
        for m in cluster.masters() {
            members.push(RehearsalMember {
                node: m.hostname.clone(),
                ip: m.advertise_ip.clone(),
                client_url: format!("http://127.0.0.1:{}", port()?),
                peer_url: format!("http://127.0.0.1:{}", port()?),
                data_dir: root
                    .join(&m.hostname)
                    .join("etcd")
                    .join(version.to_string()),
                token: format!("{}-etcd-{version}-rehearsal", cluster.name),
                version: version.clone(),
            });
        }
        if members.is_empty() {
            return Err(EtcdBackendError::Config(format!(
                "cluster {} has no master to run an etcd member",
                cluster.name
            )));
        }
        let spec = RehearsalCluster {
            cluster: cluster.name.clone(),
            members,
            workers: cluster.workers().map(|n| n.hostname.clone()).collect(),
        };
        // Described before anything runs: `stop` finds whatever started.
        let mut text = serde_json::to_string_pretty(&spec).map_err(config_err)?;
        text.push('\n');
        state::write_durably(&root.join(CLUSTER_FILE), text.as_bytes())?;
        let r = Self::with_spec(root, spec);
        let started = r.start_stopped().await?;
        r.wait_healthy(Duration::from_secs(30)).await?;

        // The simulated cluster's keys, and its leader as planet's
        // election would have left it.
        let snap = sim.inspect().map_err(config_err)?;
        let mut data = snap.etcd_data;
        if let Some(ip) = snap.leader.as_ref().and_then(|l| {
            cluster
                .masters()
                .find(|m| &m.hostname == l)
                .map(|m| m.advertise_ip.clone())
        }) {
            data.insert(leader_key(&cluster.name), ip);
        }
        let client = r.client()?;
        let ops: Vec<TxnOp> = data
            .iter()
            .map(|(k, v)| TxnOp::Put(k.clone(), v.as_bytes().to_vec()))
            .collect();
        for batch in ops.chunks(128) {
            client
                .txn(&[], batch, &[])
                .await
                .map_err(EtcdBackendError::client(cluster.name.clone()))?;
        }
        Ok((
            r,
            StartReport {
                created: true,
                started,
                seeded: data.len(),
            },
        ))
    }

    async fn start_stopped(&self) -> Result<Vec<String>, EtcdBackendError> {
        let backend = self.backend()?;
        let mut started = Vec::new();
        for m in &self.spec.members {
            let st = backend.member_state(&m.node)?;
            let address = st.address.unwrap_or(EtcdAddress::Normal);
            if backend.do_start(&m.node, address).await? {
                started.push(m.node.clone());
            }
        }
        Ok(started)
    }

    async fn wait_healthy(&self, wait: Duration) -> Result<(), EtcdBackendError> {
        let backend = self.backend()?;
        let http = gateway::http(Duration::from_secs(1));
        let deadline = Instant::now() + wait;
        for m in &self.spec.members {
            let st = backend.member_state(&m.node)?;
            let url = st
                .url(st.address.unwrap_or(EtcdAddress::Normal))
                .to_string();
            while !gateway::healthy(&http, &url, Duration::from_secs(1)).await {
                if Instant::now() >= deadline {
                    return Err(EtcdBackendError::NotServing {
                        node: m.node.clone(),
                        detail: format!(
                            "the member at {url} is not healthy after {wait:?}; see {}",
                            self.control.log_path(&m.node).display()
                        ),
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What `<root>/cluster.json` says.
    pub fn spec(&self) -> &RehearsalCluster {
        &self.spec
    }

    /// The process control of the members.
    pub fn control(&self) -> &ProcessControl {
        &self.control
    }

    /// The members' client URLs (their normal addresses).
    pub fn endpoints(&self) -> Vec<String> {
        self.spec
            .members
            .iter()
            .map(|m| m.client_url.clone())
            .collect()
    }

    /// A client of the members' normal addresses.
    pub fn client(&self) -> Result<EtcdClient, EtcdBackendError> {
        EtcdClient::new(self.endpoints(), Duration::from_secs(5))
            .map_err(EtcdBackendError::client(self.spec.cluster.clone()))
    }

    /// The configuration of [`Rehearsal::backend`]: members at their
    /// creation (the state files, once written, take precedence), one
    /// binary for every version ([`EtcdBinaries::from_env`]), waits of
    /// 10 s for a start and for the upgraded cluster's health.
    pub fn backend_config(&self) -> Result<EtcdBackendConfig, EtcdBackendError> {
        let mut c = EtcdBackendConfig::new(
            &self.root,
            self.spec.cluster.clone(),
            EtcdBinaries::from_env()?,
        );
        c.health_wait = Duration::from_secs(10);
        c.start_wait = Duration::from_secs(10);
        c.request_timeout = Duration::from_secs(5);
        c.workers = self.spec.workers.clone();
        for m in &self.spec.members {
            let state = self.root.join(&m.node).join("etcd").join("member.json");
            // A fresh upgrade URL only for a member without state: the
            // state file keeps the one chosen first.
            let upgrade_url = match state::load(&state)? {
                Some(s) => s.upgrade_url,
                None => loopback_upgrade_url()?,
            };
            c.members.push(MemberConfig {
                node: m.node.clone(),
                normal_url: m.client_url.clone(),
                upgrade_url,
                version: m.version.clone(),
                data_dir: m.data_dir.clone(),
                cluster_token: m.token.clone(),
            });
        }
        Ok(c)
    }

    /// The [`EtcdBackend`] over the members' processes.
    pub fn backend(&self) -> Result<EtcdBackend, EtcdBackendError> {
        EtcdBackend::open(
            self.backend_config()?,
            std::sync::Arc::new(self.control.clone()),
        )
    }

    /// The election over the members' normal addresses.
    pub fn election(&self) -> Result<EtcdElection, EtcdBackendError> {
        Ok(EtcdElection::new(
            self.client()?,
            self.spec.cluster.clone(),
            self.spec
                .members
                .iter()
                .map(|m| (m.node.clone(), m.ip.clone())),
        ))
    }

    /// Starts a [`SimulatedCampaign`] on the current runtime (stopped when
    /// dropped): nothing runs planet's election loop on a rehearsal machine.
    pub fn start_campaign(&self) -> Result<SimulatedCampaign, EtcdBackendError> {
        Ok(SimulatedCampaign::start(
            self.election()?,
            CAMPAIGN_INTERVAL,
            CAMPAIGN_LEASE,
        ))
    }

    /// Stops every member; returns each node and whether its member ran.
    pub async fn stop(&self) -> Result<Vec<(String, bool)>, EtcdBackendError> {
        let mut out = Vec::new();
        for m in &self.spec.members {
            let c = self.control.clone();
            let node = m.node.clone();
            let was = tokio::task::spawn_blocking(move || c.stop_now(&node))
                .await
                .map_err(config_err)?
                .map_err(|source| EtcdBackendError::Control {
                    node: m.node.clone(),
                    action: "stop",
                    source,
                })?;
            out.push((m.node.clone(), was));
        }
        Ok(out)
    }

    /// Every member: process, version, data dir, address, health.
    pub async fn status(&self) -> Result<Vec<MemberStatus>, EtcdBackendError> {
        let backend = self.backend()?;
        let http = gateway::http(Duration::from_secs(1));
        let mut out = Vec::new();
        for m in &self.spec.members {
            let st = backend.member_state(&m.node)?;
            let running =
                self.control
                    .running_now(&m.node)
                    .map_err(|source| EtcdBackendError::Control {
                        node: m.node.clone(),
                        action: "inspect",
                        source,
                    })?;
            let pid = match running {
                true => self.control.record(&m.node).ok().flatten().map(|r| r.pid),
                false => None,
            };
            let address = st.address.unwrap_or(EtcdAddress::Normal);
            let url = st.url(address).to_string();
            let (server_version, healthy) = if running {
                let v = backend.client().status(&url).await.ok().map(|s| s.version);
                (
                    v,
                    gateway::healthy(&http, &url, Duration::from_secs(1)).await,
                )
            } else {
                (None, false)
            };
            out.push(MemberStatus {
                node: m.node.clone(),
                running,
                pid,
                version: st.version.clone(),
                server_version,
                data_dir: st.data_dir.clone(),
                address,
                url,
                healthy,
                previous: st
                    .previous
                    .as_ref()
                    .map(|k| (k.version.clone(), k.data_dir.clone())),
            });
        }
        Ok(out)
    }
}

//! The etcd and election backends of the upgrade over real etcd members.
//!
//! [`EtcdBackend`] implements [`gravity_upgrade::backend::Etcd`] the way
//! Gravity's `planet etcd` commands act on a master's member (spec
//! `upgrade.md` §4 "etcd_*"), with the semantics of the simulated cluster
//! ([`gravity_upgrade::sim::SimulatedCluster`]):
//!
//! - `backup`: every key of the cluster, read through the member's normal
//!   address, written as Gravity's JSON-lines backup with the count-and-digest
//!   trailer ([`gravity_upgrade::backend::backup`]), durably.
//! - `shutdown` / `start(Normal | Upgrade)`: stops the member (the API outage
//!   starts) / starts it serving clients on its normal address or on a
//!   temporary upgrade address no client of the cluster uses (Gravity uses
//!   127.0.0.2; [`EtcdBackendConfig::for_harness`] picks a free port there).
//! - `upgrade`: keeps the member's version, data dir and cluster token for a
//!   rollback and switches it to a fresh data dir `<root>/<node>/etcd/<version>`
//!   and a new cluster token shared by every upgraded master, so that the
//!   upgraded masters form a new, empty cluster serving only the upgrade
//!   address: no client ever sees the empty database.
//! - `restore`: refuses truncated or altered files, then writes every key
//!   into the new cluster through the upgrade address.
//! - `rollback_upgrade`: back to the kept version, data dir and token.
//! - `get` / `put` / `delete` / `list`: through the normal addresses of
//!   every member.
//!
//! Workers have no member (they run etcd proxies): `start` and `shutdown`
//! are accepted and do nothing, `member` is `None`.
//!
//! Processes are started and stopped through a [`MemberControl`];
//! [`HarnessControl`] drives a [`LocalEtcdCluster`] for tests, and
//! [`ProcessControl`] detached local `etcd` processes that outlive the
//! `gravity` command that started them (the rehearsal cluster of
//! [`crate::rehearsal`]). A production control would drive planet's etcd service on
//! each node; it is not part of this crate yet.
//!
//! **Versions and binaries.** Debian ships a single etcd binary, so
//! [`EtcdBinaries`] maps a version to a binary (`GRAVITY_ETCD_BINARIES`,
//! default: the same binary for every version). A member's `version` is the
//! version the operations switched it to; [`EtcdBackend::server_version`]
//! reports what the running binary says it is.
//!
//! **State.** What a member uses (version, data dir, token, kept previous,
//! last address, and its two client URLs) is kept in
//! `<root>/<node>/etcd/member.json`, written durably, so a second process
//! or a resumed plan sees it. Paths given to `backup`/`restore`
//! (`/var/lib/gravity/site/update/etcd.bak`) are mapped under
//! `<root>/<node>/fs/` ([`EtcdBackend::node_path`]); a backend running on
//! the node itself would use them as they are.
//!
//! [`election`] holds [`election::EtcdElection`] (Gravity's election keys)
//! and [`election::SimulatedCampaign`] (a stand-in for planet's election
//! loop in tests and rehearsals).

mod control;
pub mod election;
mod error;
pub(crate) mod gateway;
pub mod process;
pub(crate) mod state;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gravity_pack::Version;
use gravity_upgrade::backend::{
    BackendError, BackendResult, BackupInfo, Etcd, EtcdAddress, EtcdMember, backup,
};

pub use control::{HarnessControl, InitialClusterState, MemberControl, MemberSpec};
pub use error::{ControlError, EtcdBackendError};
pub use process::{ProcessControl, ProcessMember, ProcessOptions, ProcessRecord};
pub use state::{KeptMember, MemberState};

use crate::client::{EtcdClient, TxnOp};
use crate::harness::LocalEtcdCluster;

/// Which etcd binary runs which version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdBinaries {
    default: PathBuf,
    by_version: BTreeMap<String, PathBuf>,
}

impl EtcdBinaries {
    /// One binary for every version.
    pub fn single(binary: impl Into<PathBuf>) -> Self {
        EtcdBinaries {
            default: binary.into(),
            by_version: BTreeMap::new(),
        }
    }

    /// The same map with `version` run by `binary`.
    pub fn with(mut self, version: &Version, binary: impl Into<PathBuf>) -> Self {
        self.by_version.insert(version.to_string(), binary.into());
        self
    }

    /// From the environment: `GRAVITY_ETCD_BINARIES` as
    /// `3.3.20=/opt/etcd-3.3.20/etcd,3.3.22=/opt/etcd-3.3.22/etcd`; other
    /// versions run the harness's binary (`GRAVITY_ETCD_BIN`, else `etcd`
    /// on `PATH`).
    pub fn from_env() -> Result<Self, EtcdBackendError> {
        let default =
            crate::harness::etcd_binary().map_err(|e| EtcdBackendError::Config(e.to_string()))?;
        let mut b = EtcdBinaries::single(default);
        if let Ok(list) = std::env::var("GRAVITY_ETCD_BINARIES") {
            for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let Some((v, p)) = item.split_once('=') else {
                    return Err(EtcdBackendError::Config(format!(
                        "GRAVITY_ETCD_BINARIES item {item:?} is not version=path"
                    )));
                };
                let v = Version::parse(v.trim()).map_err(|e| {
                    EtcdBackendError::Config(format!("GRAVITY_ETCD_BINARIES item {item:?}: {e}"))
                })?;
                b = b.with(&v, p.trim());
            }
        }
        Ok(b)
    }

    /// The binary running `version`.
    pub fn binary(&self, version: &Version) -> &Path {
        self.by_version
            .get(&version.to_string())
            .unwrap_or(&self.default)
    }
}

/// How one master's member is configured before any upgrade (the state
/// file, once written, takes precedence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberConfig {
    /// The node (host name).
    pub node: String,
    /// The client URL the cluster's clients use (`http://127.0.0.1:2379`).
    pub normal_url: String,
    /// The temporary upgrade client URL (`http://127.0.0.2:2379`).
    pub upgrade_url: String,
    /// The installed version.
    pub version: Version,
    /// The data directory in use.
    pub data_dir: PathBuf,
    /// The cluster token of that data directory.
    pub cluster_token: String,
}

/// How an [`EtcdBackend`] is set up.
#[derive(Debug, Clone)]
pub struct EtcdBackendConfig {
    /// Where state files, new data dirs and mapped node paths go.
    pub root: PathBuf,
    /// The cluster name (named in errors of cluster-wide requests).
    pub cluster: String,
    /// The masters' members.
    pub members: Vec<MemberConfig>,
    /// Nodes without a member (workers, running etcd proxies).
    pub workers: Vec<String>,
    /// Version → binary.
    pub binaries: EtcdBinaries,
    /// How long a member on the upgrade address is waited for to become
    /// healthy (Gravity's `wait-for-etcd`), when a quorum of its cluster runs.
    pub health_wait: Duration,
    /// How long a started member is waited for to open its client address.
    pub start_wait: Duration,
    /// Timeout of one request.
    pub request_timeout: Duration,
    /// Keys per transaction of a restore (etcd allows 128 by default).
    pub restore_batch: usize,
}

/// A free port on 127.0.0.2 (Gravity's upgrade address), or on 127.0.0.1
/// where 127.0.0.2 cannot be bound; as a client URL.
pub fn loopback_upgrade_url() -> Result<String, EtcdBackendError> {
    for ip in ["127.0.0.2", "127.0.0.1"] {
        if let Ok(l) = std::net::TcpListener::bind((ip, 0))
            && let Ok(a) = l.local_addr()
        {
            return Ok(format!("http://{ip}:{}", a.port()));
        }
    }
    Err(EtcdBackendError::Config(
        "no free loopback port for the upgrade address".into(),
    ))
}

impl EtcdBackendConfig {
    /// A configuration with Gravity-like waits (`health_wait` 60 s).
    pub fn new(
        root: impl Into<PathBuf>,
        cluster: impl Into<String>,
        binaries: EtcdBinaries,
    ) -> Self {
        EtcdBackendConfig {
            root: root.into(),
            cluster: cluster.into(),
            members: Vec::new(),
            workers: Vec::new(),
            binaries,
            health_wait: Duration::from_secs(60),
            start_wait: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            restore_batch: 128,
        }
    }

    /// The configuration of the members of a [`LocalEtcdCluster`]: member
    /// `i` is the member of `nodes[i]`, at `installed`, on its current data
    /// dir, client URL and token; upgrade URLs are free ports on 127.0.0.2.
    /// Waits are short (`health_wait` 10 s), for tests and rehearsals.
    pub fn for_harness(
        root: impl Into<PathBuf>,
        cluster_name: impl Into<String>,
        cluster: &LocalEtcdCluster,
        nodes: &[&str],
        installed: &Version,
    ) -> Result<Self, EtcdBackendError> {
        let binary =
            crate::harness::etcd_binary().map_err(|e| EtcdBackendError::Config(e.to_string()))?;
        let mut c = EtcdBackendConfig::new(root, cluster_name, EtcdBinaries::single(binary));
        c.health_wait = Duration::from_secs(10);
        c.start_wait = Duration::from_secs(10);
        for (i, node) in nodes.iter().enumerate() {
            let m = cluster
                .member(i)
                .map_err(|e| EtcdBackendError::Config(e.to_string()))?;
            c.members.push(MemberConfig {
                node: node.to_string(),
                normal_url: m.config.client_url.clone(),
                upgrade_url: loopback_upgrade_url()?,
                version: installed.clone(),
                data_dir: m.config.data_dir.clone(),
                cluster_token: m.config.cluster_token.clone(),
            });
        }
        Ok(c)
    }
}

#[derive(Debug)]
struct MemberEntry {
    /// Serializes changes of this member within the process.
    lock: tokio::sync::Mutex<()>,
    state_path: PathBuf,
}

/// [`Etcd`] over real etcd members (see the [module docs](self)).
#[derive(Debug)]
pub struct EtcdBackend {
    root: PathBuf,
    cluster: String,
    members: BTreeMap<String, MemberEntry>,
    workers: Vec<String>,
    control: Arc<dyn MemberControl>,
    binaries: EtcdBinaries,
    client: EtcdClient,
    http: reqwest::Client,
    health_wait: Duration,
    start_wait: Duration,
    request_timeout: Duration,
    restore_batch: usize,
}

/// `a/b/../c` and absolute paths reduced to their normal components.
fn relative(path: &str) -> Result<PathBuf, EtcdBackendError> {
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::CurDir => {}
            _ => {
                return Err(EtcdBackendError::Config(format!(
                    "node path {path:?} must not contain '..'"
                )));
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(EtcdBackendError::Config(format!(
            "node path {path:?} names no file"
        )));
    }
    Ok(out)
}

fn text(bytes: Vec<u8>, key: &[u8]) -> Result<String, EtcdBackendError> {
    String::from_utf8(bytes).map_err(|_| EtcdBackendError::Binary {
        key: String::from_utf8_lossy(key).into_owned(),
    })
}

impl EtcdBackend {
    /// Opens the backend: members with a state file under `config.root`
    /// use it, the others start from `config` (and get one).
    pub fn open(
        config: EtcdBackendConfig,
        control: Arc<dyn MemberControl>,
    ) -> Result<Self, EtcdBackendError> {
        if config.members.is_empty() {
            return Err(EtcdBackendError::Config("no etcd member configured".into()));
        }
        let mut members = BTreeMap::new();
        let mut normal = Vec::new();
        for m in &config.members {
            let state_path = config.root.join(&m.node).join("etcd").join("member.json");
            let s = match state::load(&state_path)? {
                Some(s) if s.node == m.node => s,
                Some(s) => {
                    return Err(EtcdBackendError::CorruptState {
                        path: state_path.display().to_string(),
                        reason: format!("it describes node {:?}, not {:?}", s.node, m.node),
                    });
                }
                None => {
                    let s = MemberState {
                        node: m.node.clone(),
                        normal_url: m.normal_url.clone(),
                        upgrade_url: m.upgrade_url.clone(),
                        version: m.version.clone(),
                        data_dir: m.data_dir.clone(),
                        cluster_token: m.cluster_token.clone(),
                        previous: None,
                        address: Some(EtcdAddress::Normal),
                    };
                    state::save(&state_path, &s)?;
                    s
                }
            };
            normal.push(s.normal_url.clone());
            members.insert(
                m.node.clone(),
                MemberEntry {
                    lock: tokio::sync::Mutex::new(()),
                    state_path,
                },
            );
        }
        let client = EtcdClient::new(normal, config.request_timeout)
            .map_err(EtcdBackendError::client(config.cluster.clone()))?;
        Ok(EtcdBackend {
            root: config.root,
            cluster: config.cluster,
            members,
            workers: config.workers,
            control,
            binaries: config.binaries,
            client,
            http: gateway::http(config.request_timeout),
            health_wait: config.health_wait,
            start_wait: config.start_wait,
            request_timeout: config.request_timeout,
            restore_batch: config.restore_batch.max(1),
        })
    }

    /// The backend over a [`LocalEtcdCluster`] shared behind a mutex:
    /// member `i` is the member of `nodes[i]` ([`EtcdBackendConfig::for_harness`],
    /// [`HarnessControl`]); `workers` have no member.
    pub fn for_harness(
        cluster: Arc<Mutex<LocalEtcdCluster>>,
        root: impl Into<PathBuf>,
        cluster_name: &str,
        nodes: &[&str],
        workers: &[&str],
        installed: &Version,
    ) -> Result<Self, EtcdBackendError> {
        let mut config = {
            let c = cluster.lock().map_err(|_| {
                EtcdBackendError::Config("the local cluster lock is poisoned".into())
            })?;
            EtcdBackendConfig::for_harness(root, cluster_name, &c, nodes, installed)?
        };
        config.workers = workers.iter().map(|w| w.to_string()).collect();
        let control =
            HarnessControl::new(cluster, nodes).map_err(|source| EtcdBackendError::Control {
                node: cluster_name.to_string(),
                action: "set up",
                source,
            })?;
        EtcdBackend::open(config, Arc::new(control))
    }

    /// Where the file `path` of `node` is kept: `<root>/<node>/fs/<path>`.
    pub fn node_path(&self, node: &str, path: &str) -> Result<PathBuf, EtcdBackendError> {
        self.known(node)?;
        Ok(self.root.join(node).join("fs").join(relative(path)?))
    }

    /// A client of the cluster's normal addresses.
    pub fn client(&self) -> &EtcdClient {
        &self.client
    }

    /// The persistent state of the member of `node`.
    pub fn member_state(&self, node: &str) -> Result<MemberState, EtcdBackendError> {
        let e = self.entry(node, "describe")?;
        self.read_state(node, e)
    }

    /// The version the member's running binary reports (`None` if it does
    /// not run). The binary may differ from [`EtcdMember::version`] when
    /// one binary serves every version ([`EtcdBinaries`]).
    pub async fn server_version(&self, node: &str) -> Result<Option<String>, EtcdBackendError> {
        let e = self.entry(node, "describe")?;
        let s = self.read_state(node, e)?;
        if !self.running(node).await? {
            return Ok(None);
        }
        let url = s.url(s.address.unwrap_or(EtcdAddress::Normal)).to_string();
        let st = self
            .client
            .status(&url)
            .await
            .map_err(EtcdBackendError::client(node))?;
        Ok(Some(st.version))
    }

    fn known(&self, node: &str) -> Result<(), EtcdBackendError> {
        if self.members.contains_key(node) || self.workers.iter().any(|w| w == node) {
            Ok(())
        } else {
            Err(EtcdBackendError::UnknownNode(node.to_string()))
        }
    }

    /// The member of `node`; `None` for a worker.
    fn member_entry(&self, node: &str) -> Result<Option<&MemberEntry>, EtcdBackendError> {
        self.known(node)?;
        Ok(self.members.get(node))
    }

    fn entry(&self, node: &str, action: &'static str) -> Result<&MemberEntry, EtcdBackendError> {
        self.member_entry(node)?
            .ok_or_else(|| EtcdBackendError::NoMember {
                node: node.to_string(),
                action,
            })
    }

    fn read_state(&self, node: &str, e: &MemberEntry) -> Result<MemberState, EtcdBackendError> {
        state::load(&e.state_path)?.ok_or_else(|| EtcdBackendError::CorruptState {
            path: e.state_path.display().to_string(),
            reason: format!("the state file of node {node} disappeared"),
        })
    }

    async fn running(&self, node: &str) -> Result<bool, EtcdBackendError> {
        self.control
            .running(node)
            .await
            .map_err(|source| EtcdBackendError::Control {
                node: node.to_string(),
                action: "inspect",
                source,
            })
    }

    fn log_hint(&self, node: &str) -> String {
        self.control
            .log_hint(node)
            .map(|l| format!(" (log: {l})"))
            .unwrap_or_default()
    }

    /// Whether enough members of the cluster of `s` run for it to have a
    /// quorum (waiting for health is pointless otherwise).
    async fn quorum_may_form(&self, s: &MemberState) -> Result<bool, EtcdBackendError> {
        let mut up = 0;
        for (node, e) in &self.members {
            let other = self.read_state(node, e)?;
            if other.cluster_token == s.cluster_token && self.running(node).await? {
                up += 1;
            }
        }
        Ok(up > self.members.len() / 2)
    }

    /// Probes `/health` at `url`, waiting up to `wait`.
    async fn wait_healthy(&self, url: &str, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let probe = left.clamp(Duration::from_millis(200), Duration::from_secs(1));
            if gateway::healthy(&self.http, url, probe).await {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the member of `s` is healthy; on the upgrade address this is
    /// Gravity's wait-for-etcd (up to `health_wait` while a quorum may form).
    async fn member_healthy(&self, s: &MemberState) -> Result<bool, EtcdBackendError> {
        let address = s.address.unwrap_or(EtcdAddress::Normal);
        let url = s.url(address);
        if gateway::healthy(&self.http, url, Duration::from_secs(1)).await {
            return Ok(true);
        }
        if address == EtcdAddress::Upgrade && self.quorum_may_form(s).await? {
            return Ok(self.wait_healthy(url, self.health_wait).await);
        }
        Ok(false)
    }

    async fn stop(&self, node: &str) -> Result<bool, EtcdBackendError> {
        self.control
            .stop(node)
            .await
            .map_err(|source| EtcdBackendError::Control {
                node: node.to_string(),
                action: "stop",
                source,
            })
    }

    /// Writes `data` into the cluster at `url` in transactions of
    /// `restore_batch` keys.
    async fn write_all(
        &self,
        node: &str,
        url: &str,
        data: &BTreeMap<String, Vec<u8>>,
    ) -> Result<(), EtcdBackendError> {
        let client =
            EtcdClient::new([url], self.request_timeout).map_err(EtcdBackendError::client(node))?;
        let ops: Vec<TxnOp> = data
            .iter()
            .map(|(k, v)| TxnOp::Put(k.clone(), v.clone()))
            .collect();
        for batch in ops.chunks(self.restore_batch) {
            client
                .txn(&[], batch, &[])
                .await
                .map_err(EtcdBackendError::client(node))?;
        }
        Ok(())
    }

    async fn do_backup(&self, node: &str, path: &str) -> Result<BackupInfo, EtcdBackendError> {
        let e = self.entry(node, "back up")?;
        let _g = e.lock.lock().await;
        let s = self.read_state(node, e)?;
        let file = self.node_path(node, path)?;
        if !self.running(node).await? {
            return Err(EtcdBackendError::NotServing {
                node: node.to_string(),
                detail:
                    "etcd is not running; start it (roll back /etcd/shutdown) and retry the backup"
                        .into(),
            });
        }
        if s.address == Some(EtcdAddress::Upgrade) {
            return Err(EtcdBackendError::NotServing {
                node: node.to_string(),
                detail: "etcd serves the upgrade address (the etcd upgrade is under way), so a backup now would not hold the cluster's data; the backup taken before the upgrade is kept, roll back /etcd/upgrade to take a new one".into(),
            });
        }
        let kvs = gateway::range_all(&s.normal_url, self.request_timeout)
            .await
            .map_err(EtcdBackendError::client(node))?;
        // Values are kept as bytes: Kubernetes stores protobuf in etcd.
        let mut data = BTreeMap::new();
        for (k, v) in kvs {
            let key = text(k.clone(), &k)?;
            data.insert(key, v);
        }
        let (body, trailer) = backup::encode_raw(&data);
        let file2 = file.clone();
        tokio::task::spawn_blocking(move || state::write_durably(&file2, body.as_bytes()))
            .await
            .map_err(|e| EtcdBackendError::Io {
                context: format!("writing {}", file.display()),
                source: std::io::Error::other(e.to_string()),
            })??;
        Ok(BackupInfo {
            keys: trailer.count,
            sha256: trailer.sha256,
        })
    }

    async fn do_shutdown(&self, node: &str) -> Result<bool, EtcdBackendError> {
        let Some(e) = self.member_entry(node)? else {
            return Ok(false);
        };
        let _g = e.lock.lock().await;
        self.stop(node).await
    }

    pub(crate) async fn do_start(
        &self,
        node: &str,
        address: EtcdAddress,
    ) -> Result<bool, EtcdBackendError> {
        let Some(e) = self.member_entry(node)? else {
            // A worker's etcd proxy: nothing to start here (Gravity resets
            // its clients and watches).
            return Ok(false);
        };
        let _g = e.lock.lock().await;
        let mut s = self.read_state(node, e)?;
        let was_running = self.running(node).await?;
        if was_running {
            if s.address == Some(address) {
                return Ok(false);
            }
            self.stop(node).await?;
        }
        let fresh = !s.data_dir.join("member").exists();
        let spec = MemberSpec {
            binary: self.binaries.binary(&s.version).to_path_buf(),
            data_dir: s.data_dir.clone(),
            client_url: s.url(address).to_string(),
            cluster_token: s.cluster_token.clone(),
            initial_cluster_state: if fresh {
                InitialClusterState::New
            } else {
                InitialClusterState::Existing
            },
        };
        s.address = Some(address);
        state::save(&e.state_path, &s)?;
        self.control
            .start(node, &spec)
            .await
            .map_err(|source| EtcdBackendError::Control {
                node: node.to_string(),
                action: "start",
                source,
            })?;
        let deadline = Instant::now() + self.start_wait;
        loop {
            if gateway::listening(&spec.client_url).await {
                return Ok(!was_running);
            }
            if !self.running(node).await? {
                return Err(EtcdBackendError::NotServing {
                    node: node.to_string(),
                    detail: format!(
                        "the member exited right after it was started on {}{}; fix the cause and retry",
                        spec.client_url,
                        self.log_hint(node)
                    ),
                });
            }
            if Instant::now() >= deadline {
                return Err(EtcdBackendError::StartTimeout {
                    node: node.to_string(),
                    url: spec.client_url,
                    waited: self.start_wait,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn do_upgrade(&self, node: &str, version: &Version) -> Result<bool, EtcdBackendError> {
        let e = self.entry(node, "upgrade")?;
        let _g = e.lock.lock().await;
        let mut s = self.read_state(node, e)?;
        if s.version == *version {
            return Ok(false);
        }
        if self.running(node).await? {
            return Err(EtcdBackendError::StillRunning {
                node: node.to_string(),
            });
        }
        let dir = self.root.join(node).join("etcd").join(version.to_string());
        // A fresh data dir: leftovers of an earlier, rolled-back upgrade
        // would resurrect keys deleted since. Never the dir in use.
        if dir != s.data_dir && dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(EtcdBackendError::io(format!(
                "removing the stale {}",
                dir.display()
            )))?;
        }
        std::fs::create_dir_all(dir.parent().unwrap_or(&self.root))
            .map_err(EtcdBackendError::io(format!("creating {}", dir.display())))?;
        s.previous = Some(KeptMember {
            version: s.version.clone(),
            data_dir: s.data_dir.clone(),
            cluster_token: s.cluster_token.clone(),
        });
        s.version = version.clone();
        s.data_dir = dir;
        // Every upgraded master derives the same token: they form one new
        // cluster, distinct from the old one.
        s.cluster_token = format!("{}-etcd-{version}", self.cluster);
        state::save(&e.state_path, &s)?;
        Ok(true)
    }

    async fn do_rollback_upgrade(&self, node: &str) -> Result<bool, EtcdBackendError> {
        let Some(e) = self.member_entry(node)? else {
            return Ok(false);
        };
        let _g = e.lock.lock().await;
        let mut s = self.read_state(node, e)?;
        let Some(kept) = s.previous.take() else {
            return Ok(false);
        };
        if self.running(node).await? {
            return Err(EtcdBackendError::StillRunning {
                node: node.to_string(),
            });
        }
        s.version = kept.version;
        s.data_dir = kept.data_dir;
        s.cluster_token = kept.cluster_token;
        state::save(&e.state_path, &s)?;
        Ok(true)
    }

    async fn do_restore(&self, node: &str, path: &str) -> Result<usize, EtcdBackendError> {
        let e = self.entry(node, "restore into")?;
        let _g = e.lock.lock().await;
        let s = self.read_state(node, e)?;
        let display = format!("{node}:{path}");
        if !self.running(node).await? {
            return Err(EtcdBackendError::NotServing {
                node: node.to_string(),
                detail: "etcd is not running (wait-for-etcd failed); run /etcd/upgrade first"
                    .into(),
            });
        }
        if s.address != Some(EtcdAddress::Upgrade) {
            return Err(EtcdBackendError::NotServing {
                node: node.to_string(),
                detail: "etcd serves the normal address, not the upgrade address: a restore only goes into the upgraded member (run /etcd/upgrade first)".into(),
            });
        }
        let file = self.node_path(node, path)?;
        let body = match tokio::fs::read_to_string(&file).await {
            Ok(t) => t,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(EtcdBackendError::BadBackup {
                    path: display,
                    reason: "the file does not exist".into(),
                });
            }
            Err(err) => {
                return Err(EtcdBackendError::BadBackup {
                    path: display,
                    reason: err.to_string(),
                });
            }
        };
        let data = backup::decode_raw(&body).map_err(|reason| EtcdBackendError::BadBackup {
            path: display,
            reason,
        })?;
        if !self.wait_healthy(&s.upgrade_url, self.health_wait).await {
            return Err(EtcdBackendError::NotServing {
                node: node.to_string(),
                detail: format!(
                    "the upgraded cluster at {} has no quorum (wait-for-etcd timed out after {:?}); start the other upgraded members (/etcd/upgrade/<node>) and retry",
                    s.upgrade_url, self.health_wait
                ),
            });
        }
        self.write_all(node, &s.upgrade_url, &data).await?;
        Ok(data.len())
    }

    async fn do_member(&self, node: &str) -> Result<Option<EtcdMember>, EtcdBackendError> {
        let Some(e) = self.member_entry(node)? else {
            return Ok(None);
        };
        let s = self.read_state(node, e)?;
        let running = self.running(node).await?;
        let healthy = running && self.member_healthy(&s).await?;
        Ok(Some(EtcdMember {
            node: node.to_string(),
            version: s.version.clone(),
            data_dir: s.data_dir.display().to_string(),
            previous: s
                .previous
                .as_ref()
                .map(|k| (k.version.clone(), k.data_dir.display().to_string())),
            serving: if running {
                Some(s.address.unwrap_or(EtcdAddress::Normal))
            } else {
                None
            },
            healthy,
        }))
    }

    async fn do_list(&self, prefix: &str) -> Result<BTreeMap<String, String>, EtcdBackendError> {
        let mut out = BTreeMap::new();
        if prefix.is_empty() {
            let mut last = None;
            for url in self.client.endpoints() {
                match gateway::range_all(url, self.request_timeout).await {
                    Ok(kvs) => {
                        for (k, v) in kvs {
                            out.insert(text(k.clone(), &k)?, text(v, &k)?);
                        }
                        return Ok(out);
                    }
                    Err(e) => last = Some(e),
                }
            }
            return Err(EtcdBackendError::Client {
                node: self.cluster.clone(),
                source: last
                    .unwrap_or_else(|| crate::client::EtcdError::BadEndpoint(String::new())),
            });
        }
        let kvs = self
            .client
            .range_prefix(prefix)
            .await
            .map_err(EtcdBackendError::client(self.cluster.clone()))?;
        for kv in kvs {
            let value = text(kv.value, kv.key.as_bytes())?;
            out.insert(kv.key, value);
        }
        Ok(out)
    }
}

#[async_trait]
impl Etcd for EtcdBackend {
    async fn backup(&self, node: &str, path: &str) -> BackendResult<BackupInfo> {
        Ok(self.do_backup(node, path).await?)
    }

    async fn shutdown(&self, node: &str) -> BackendResult<bool> {
        Ok(self.do_shutdown(node).await?)
    }

    async fn start(&self, node: &str, address: EtcdAddress) -> BackendResult<bool> {
        Ok(self.do_start(node, address).await?)
    }

    async fn upgrade(&self, node: &str, version: &Version) -> BackendResult<bool> {
        Ok(self.do_upgrade(node, version).await?)
    }

    async fn rollback_upgrade(&self, node: &str) -> BackendResult<bool> {
        Ok(self.do_rollback_upgrade(node).await?)
    }

    async fn restore(&self, node: &str, path: &str) -> BackendResult<usize> {
        Ok(self.do_restore(node, path).await?)
    }

    async fn member(&self, node: &str) -> BackendResult<Option<EtcdMember>> {
        Ok(self.do_member(node).await?)
    }

    async fn get(&self, key: &str) -> BackendResult<Option<String>> {
        let kv = self
            .client
            .get(key)
            .await
            .map_err(EtcdBackendError::client(self.cluster.clone()))?;
        match kv {
            None => Ok(None),
            Some(kv) => Ok(Some(text(kv.value, key.as_bytes())?)),
        }
    }

    async fn put(&self, key: &str, value: &str) -> BackendResult<()> {
        self.client
            .put(key, value.as_bytes())
            .await
            .map_err(EtcdBackendError::client(self.cluster.clone()))
            .map_err(BackendError::from)?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> BackendResult<bool> {
        Ok(self
            .client
            .delete(key)
            .await
            .map_err(EtcdBackendError::client(self.cluster.clone()))?)
    }

    async fn list(&self, prefix: &str) -> BackendResult<BTreeMap<String, String>> {
        Ok(self.do_list(prefix).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_paths_stay_under_the_node() {
        assert_eq!(
            relative("/var/lib/gravity/site/update/etcd.bak").unwrap(),
            PathBuf::from("var/lib/gravity/site/update/etcd.bak")
        );
        assert!(relative("/var/../etc/passwd").is_err());
        assert!(relative("/").is_err());
    }

    #[test]
    fn binaries_map_versions() {
        let v1 = Version::parse("3.3.20").unwrap();
        let v2 = Version::parse("3.3.22").unwrap();
        let b = EtcdBinaries::single("/usr/bin/etcd").with(&v2, "/opt/etcd-3.3.22/etcd");
        assert_eq!(b.binary(&v1), Path::new("/usr/bin/etcd"));
        assert_eq!(b.binary(&v2), Path::new("/opt/etcd-3.3.22/etcd"));
    }

    #[test]
    fn errors_map_to_backend_errors_with_what_to_do() {
        let e: BackendError = EtcdBackendError::StillRunning {
            node: "kevin-test1".into(),
        }
        .into();
        let text = e.to_string();
        assert_eq!(
            text,
            "etcd on node kevin-test1: etcd is still running; shut it down first (/etcd/shutdown)"
        );
        let e: BackendError = EtcdBackendError::BadBackup {
            path: "n:/x".into(),
            reason: "digest mismatch".into(),
        }
        .into();
        assert!(matches!(e, BackendError::BadBackup { .. }));
        assert!(e.to_string().contains("take a new backup"));
    }
}

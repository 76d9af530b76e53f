//! [`ProcessControl`]: members that are detached local `etcd` processes,
//! surviving the `gravity` command that started them.
//!
//! Each member is started in its own process group (so a Ctrl-C of
//! `gravity` does not reach it) with its output appended to
//! `<dir>/<node>/etcd.log`. Its pid and the spec it was started with are
//! written durably to `<dir>/<node>/process.json` before the start returns,
//! so that a later `gravity` process finds, stops and inspects it.
//!
//! A pid is only trusted while the process it names is the etcd that was
//! started: [`ProcessControl::running`] reads `/proc/<pid>/cmdline` and
//! compares its `--data-dir` and `--listen-client-urls` with the record,
//! and treats zombies as exited. A pid reused by another process is never
//! signalled. Linux only (`/proc`).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::control::{InitialClusterState, MemberControl, MemberSpec};
use super::error::ControlError;
use super::state::write_durably;

/// A member as [`ProcessControl`] starts it: its etcd name and peer URL
/// (they stay the same across data dirs and cluster tokens).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessMember {
    /// The node (host name).
    pub node: String,
    /// `--name`.
    pub name: String,
    /// `--listen-peer-urls` and `--initial-advertise-peer-urls`.
    pub peer_url: String,
}

/// What `<dir>/<node>/process.json` holds: the last start of a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// The process id.
    pub pid: i32,
    /// The binary.
    pub binary: PathBuf,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// `--listen-client-urls`.
    pub client_url: String,
    /// `--listen-peer-urls`.
    pub peer_url: String,
    /// `--initial-cluster-token`.
    pub cluster_token: String,
    /// When it was started (RFC 3339).
    pub started: String,
}

/// How [`ProcessControl`] runs members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessOptions {
    /// `--heartbeat-interval` in ms (etcd's default: 100).
    pub heartbeat_ms: u64,
    /// `--election-timeout` in ms (etcd's default: 1000).
    pub election_ms: u64,
    /// How long a stopped member is waited for before it is killed.
    pub stop_wait: Duration,
}

impl Default for ProcessOptions {
    /// etcd's raft timings; 10 s for a stop.
    fn default() -> Self {
        ProcessOptions {
            heartbeat_ms: 100,
            election_ms: 1000,
            stop_wait: Duration::from_secs(10),
        }
    }
}

/// [`MemberControl`] over detached local `etcd` processes (see the
/// [module docs](self)). Cheap to clone.
#[derive(Debug, Clone)]
pub struct ProcessControl {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    members: BTreeMap<String, ProcessMember>,
    initial_cluster: String,
    options: ProcessOptions,
    /// Children started by this process, so they are reaped (not left as
    /// zombies of a long-running `gravity`).
    children: Mutex<BTreeMap<String, Child>>,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> ControlError {
    move |e| ControlError::Unsupported(format!("{context}: {e}"))
}

/// Whether `pid` runs (not a zombie) with `cmdline`'s arguments, read from
/// `/proc`. `None` if the process does not exist.
fn proc_args(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) S ...`: the state follows the last ')'.
    let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
    if matches!(state, 'Z' | 'X' | 'x') {
        return None;
    }
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// Whether the process `rec.pid` is the etcd `rec` describes.
pub fn is_recorded_etcd(rec: &ProcessRecord) -> bool {
    let Some(args) = proc_args(rec.pid) else {
        return false;
    };
    let data_dir = rec.data_dir.to_string_lossy();
    flag(&args, "--data-dir") == Some(data_dir.as_ref())
        && flag(&args, "--listen-client-urls") == Some(rec.client_url.as_str())
}

fn signal(pid: i32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

impl ProcessControl {
    /// Controls `members`, keeping records and logs under `dir`, with
    /// [`ProcessOptions::default`]. `--initial-cluster` lists every member.
    pub fn new(dir: impl Into<PathBuf>, members: Vec<ProcessMember>) -> Self {
        Self::with_options(dir, members, ProcessOptions::default())
    }

    /// Controls `members` as `options` say.
    pub fn with_options(
        dir: impl Into<PathBuf>,
        members: Vec<ProcessMember>,
        options: ProcessOptions,
    ) -> Self {
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        ProcessControl {
            inner: Arc::new(Inner {
                dir: dir.into(),
                members: members.into_iter().map(|m| (m.node.clone(), m)).collect(),
                initial_cluster,
                options,
                children: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Whether the member of `node` runs (blocking; see [`MemberControl::running`]).
    pub fn running_now(&self, node: &str) -> Result<bool, ControlError> {
        self.inner.running_sync(node)
    }

    /// Stops the member of `node` (blocking; see [`MemberControl::stop`]).
    pub fn stop_now(&self, node: &str) -> Result<bool, ControlError> {
        self.inner.stop_sync(node)
    }

    /// The record of the last start of the member of `node`, if any.
    pub fn record(&self, node: &str) -> Result<Option<ProcessRecord>, ControlError> {
        self.inner.record(node)
    }

    /// `<dir>/<node>/etcd.log`.
    pub fn log_path(&self, node: &str) -> PathBuf {
        self.inner.log_path(node)
    }

    /// `<dir>/<node>/process.json`.
    pub fn record_path(&self, node: &str) -> PathBuf {
        self.inner.record_path(node)
    }
}

impl Inner {
    /// `<dir>/<node>/process.json`.
    pub fn record_path(&self, node: &str) -> PathBuf {
        self.dir.join(node).join("process.json")
    }

    /// `<dir>/<node>/etcd.log`.
    pub fn log_path(&self, node: &str) -> PathBuf {
        self.dir.join(node).join("etcd.log")
    }

    /// The record of the last start of the member of `node`, if any.
    pub fn record(&self, node: &str) -> Result<Option<ProcessRecord>, ControlError> {
        read_record(&self.record_path(node))
    }

    fn member(&self, node: &str) -> Result<&ProcessMember, ControlError> {
        self.members
            .get(node)
            .ok_or_else(|| ControlError::NoMember(node.to_string()))
    }

    /// Reaps our own child of `node` if it exited; whether it did.
    fn reap(&self, node: &str) -> bool {
        let Ok(mut children) = self.children.lock() else {
            return false;
        };
        let exited = match children.get_mut(node) {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => return false,
        };
        if exited {
            children.remove(node);
        }
        exited
    }

    /// The record of `node` if its process runs and is the recorded etcd.
    fn live(&self, node: &str) -> Result<Option<ProcessRecord>, ControlError> {
        self.member(node)?;
        let Some(rec) = self.record(node)? else {
            return Ok(None);
        };
        self.reap(node);
        Ok(is_recorded_etcd(&rec).then_some(rec))
    }

    fn running_sync(&self, node: &str) -> Result<bool, ControlError> {
        Ok(self.live(node)?.is_some())
    }

    fn stop_sync(&self, node: &str) -> Result<bool, ControlError> {
        let Some(rec) = self.live(node)? else {
            return Ok(false);
        };
        signal(rec.pid, rustix::process::Signal::TERM);
        let exited = |deadline: Instant| {
            loop {
                self.reap(node);
                if !is_recorded_etcd(&rec) {
                    return true;
                }
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        if !exited(Instant::now() + self.options.stop_wait) {
            signal(rec.pid, rustix::process::Signal::KILL);
            if !exited(Instant::now() + Duration::from_secs(5)) {
                return Err(ControlError::Unsupported(format!(
                    "etcd (pid {}) did not exit after SIGKILL",
                    rec.pid
                )));
            }
        }
        Ok(true)
    }

    fn start_sync(&self, node: &str, spec: &MemberSpec) -> Result<(), ControlError> {
        if self.running_sync(node)? {
            return Ok(());
        }
        let m = self.member(node)?;
        let dir = self.dir.join(node);
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let log_path = self.log_path(node);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(format!("opening {}", log_path.display())))?;
        let log2 = log
            .try_clone()
            .map_err(io("duplicating a log handle".into()))?;
        let state = match spec.initial_cluster_state {
            InitialClusterState::New => "new",
            InitialClusterState::Existing => "existing",
        };
        let child = Command::new(&spec.binary)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .arg("--listen-client-urls")
            .arg(&spec.client_url)
            .arg("--advertise-client-urls")
            .arg(&spec.client_url)
            .arg("--listen-peer-urls")
            .arg(&m.peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&m.peer_url)
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-token")
            .arg(&spec.cluster_token)
            .arg("--initial-cluster-state")
            .arg(state)
            .arg("--heartbeat-interval")
            .arg(self.options.heartbeat_ms.to_string())
            .arg("--election-timeout")
            .arg(self.options.election_ms.to_string())
            // Detached: its own process group, no terminal input, output
            // to its log; it outlives this process.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io(format!("starting {}", spec.binary.display())))?;
        let pid = child.id() as i32;
        let rec = ProcessRecord {
            pid,
            binary: spec.binary.clone(),
            data_dir: spec.data_dir.clone(),
            client_url: spec.client_url.clone(),
            peer_url: m.peer_url.clone(),
            cluster_token: spec.cluster_token.clone(),
            started: chrono::Utc::now().to_rfc3339(),
        };
        if let Ok(mut c) = self.children.lock() {
            c.insert(node.to_string(), child);
        }
        let text = serde_json::to_string_pretty(&rec).expect("a record serializes") + "\n";
        if let Err(e) = write_durably(&self.record_path(node), text.as_bytes()) {
            // Unrecorded, nobody could stop it later: do not leave it.
            signal(pid, rustix::process::Signal::KILL);
            if let Ok(mut c) = self.children.lock()
                && let Some(mut ch) = c.remove(node)
            {
                let _ = ch.wait();
            }
            return Err(ControlError::Unsupported(e.to_string()));
        }
        Ok(())
    }
}

/// Reads a process record; `None` if there is none.
pub fn read_record(path: &Path) -> Result<Option<ProcessRecord>, ControlError> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t).map(Some).map_err(|e| {
            ControlError::Unsupported(format!(
                "the process record {} is not valid: {e}",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(format!("reading {}", path.display()))(e)),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ControlError> + Send + 'static,
) -> Result<T, ControlError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ControlError::Unsupported(format!("the control task failed: {e}")))?
}

#[async_trait]
impl MemberControl for ProcessControl {
    async fn stop(&self, node: &str) -> Result<bool, ControlError> {
        let (c, n) = (self.inner.clone(), node.to_string());
        blocking(move || c.stop_sync(&n)).await
    }

    async fn start(&self, node: &str, spec: &MemberSpec) -> Result<(), ControlError> {
        let (c, n, s) = (self.inner.clone(), node.to_string(), spec.clone());
        blocking(move || c.start_sync(&n, &s)).await
    }

    async fn running(&self, node: &str) -> Result<bool, ControlError> {
        let (c, n) = (self.inner.clone(), node.to_string());
        blocking(move || c.running_sync(&n)).await
    }

    fn log_hint(&self, node: &str) -> Option<String> {
        Some(self.log_path(node).display().to_string())
    }
}

//! A real etcd cluster on 127.0.0.1 for tests and rehearsals.
//!
//! [`LocalEtcdCluster::start`] runs `n` `etcd` processes (the binary from
//! `$GRAVITY_ETCD_BIN`, else `etcd` on `PATH`: Debian's `etcd-server`)
//! with free loopback ports and data directories under a directory of the
//! caller's, waits until the cluster answers, and kills every member when
//! dropped. Single members can be stopped, killed and started again, and
//! started with another data directory or client address, which is what the
//! etcd upgrade phases do to a member.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why the harness could not do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// No etcd binary.
    #[error(
        "etcd was not found ({0}): install it with `apt-get install etcd-server` or set GRAVITY_ETCD_BIN"
    )]
    NoBinary(String),
    /// A process or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The cluster did not become healthy in time.
    #[error("etcd member {member} did not answer within {waited:?}; see its log {log}")]
    NotReady {
        /// The member name.
        member: String,
        /// How long we waited.
        waited: Duration,
        /// Its log file.
        log: String,
    },
    /// No such member.
    #[error("no member {0} in this cluster")]
    NoMember(usize),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let context = context.into();
    move |source| HarnessError::Io { context, source }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> Result<u16, HarnessError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    let port = l.local_addr().map_err(io("finding a free port"))?.port();
    Ok(port)
}

/// The etcd binary to run.
pub fn etcd_binary() -> Result<PathBuf, HarnessError> {
    if let Some(p) = std::env::var_os("GRAVITY_ETCD_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(HarnessError::NoBinary(format!(
                "GRAVITY_ETCD_BIN={} is not a file",
                p.display()
            )))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join("etcd");
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(HarnessError::NoBinary("not on PATH".into()))
}

/// How a member is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberConfig {
    /// Member name (`m0`, `m1`, …).
    pub name: String,
    /// Peer URL (`http://127.0.0.1:<port>`).
    pub peer_url: String,
    /// Where it serves clients now.
    pub client_url: String,
    /// Its data directory now.
    pub data_dir: PathBuf,
    /// `--initial-cluster-token`: members of one cluster share it.
    pub cluster_token: String,
}

/// One member: its configuration and its process, if running.
#[derive(Debug)]
pub struct Member {
    /// How it is (or was last) started.
    pub config: MemberConfig,
    child: Option<Child>,
    log: PathBuf,
}

impl Member {
    /// Whether its process runs.
    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }
}

/// A local etcd cluster of real `etcd` processes.
#[derive(Debug)]
pub struct LocalEtcdCluster {
    dir: PathBuf,
    binary: PathBuf,
    members: Vec<Member>,
}

impl LocalEtcdCluster {
    /// Starts `size` members under `dir` and waits until the cluster serves.
    pub fn start(dir: impl Into<PathBuf>, size: usize) -> Result<Self, HarnessError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let binary = etcd_binary()?;
        let mut members = Vec::with_capacity(size);
        for i in 0..size {
            let name = format!("m{i}");
            members.push(Member {
                config: MemberConfig {
                    peer_url: format!("http://127.0.0.1:{}", free_port()?),
                    client_url: format!("http://127.0.0.1:{}", free_port()?),
                    data_dir: dir.join(format!("{name}.data")),
                    cluster_token: "gravity-test".into(),
                    name: name.clone(),
                },
                child: None,
                log: dir.join(format!("{name}.log")),
            });
        }
        let mut cluster = LocalEtcdCluster {
            dir,
            binary,
            members,
        };
        for i in 0..size {
            cluster.spawn(i, true)?;
        }
        cluster.wait_ready(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// The directory holding data dirs and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// One member.
    pub fn member(&self, i: usize) -> Result<&Member, HarnessError> {
        self.members.get(i).ok_or(HarnessError::NoMember(i))
    }

    /// One member, mutable (to change how it is started next).
    pub fn member_mut(&mut self, i: usize) -> Result<&mut Member, HarnessError> {
        self.members.get_mut(i).ok_or(HarnessError::NoMember(i))
    }

    /// The client URLs of every member, as configured now.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| m.config.client_url.clone())
            .collect()
    }

    /// `--initial-cluster` for the current member list.
    pub fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.config.name, m.config.peer_url))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize, new_cluster: bool) -> Result<(), HarnessError> {
        let initial = self.initial_cluster();
        let m = self.members.get_mut(i).ok_or(HarnessError::NoMember(i))?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(&m.log)
            .map_err(io(format!("opening {}", m.log.display())))?;
        let log2 = log.try_clone().map_err(io("duplicating a log handle"))?;
        let c = &m.config;
        let child = Command::new(&self.binary)
            .arg("--name")
            .arg(&c.name)
            .arg("--data-dir")
            .arg(&c.data_dir)
            .arg("--listen-client-urls")
            .arg(&c.client_url)
            .arg("--advertise-client-urls")
            .arg(&c.client_url)
            .arg("--listen-peer-urls")
            .arg(&c.peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&c.peer_url)
            .arg("--initial-cluster")
            .arg(&initial)
            .arg("--initial-cluster-token")
            .arg(&c.cluster_token)
            .arg("--initial-cluster-state")
            .arg(if new_cluster { "new" } else { "existing" })
            // Small clusters on a busy CI machine: shorter raft timings
            // than the defaults make elections quick without flapping.
            .arg("--heartbeat-interval")
            .arg("50")
            .arg("--election-timeout")
            .arg("500")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io(format!("starting {}", self.binary.display())))?;
        m.child = Some(child);
        Ok(())
    }

    /// Starts a stopped member again with its configuration (new data dirs
    /// form a new cluster with the members sharing its token).
    pub fn start_member(&mut self, i: usize) -> Result<(), HarnessError> {
        if self.member_mut(i)?.running() {
            return Ok(());
        }
        let fresh = !self.member(i)?.config.data_dir.join("member").exists();
        self.spawn(i, fresh)
    }

    /// Stops a member with SIGTERM and waits for it to exit.
    pub fn stop_member(&mut self, i: usize) -> Result<(), HarnessError> {
        let m = self.member_mut(i)?;
        if let Some(mut child) = m.child.take() {
            if let Ok(None) = child.try_wait() {
                if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                }
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        Ok(())
    }

    /// Kills a member with SIGKILL (a crash).
    pub fn kill_member(&mut self, i: usize) -> Result<(), HarnessError> {
        let m = self.member_mut(i)?;
        if let Some(mut child) = m.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(())
    }

    /// Stops every member.
    pub fn stop_all(&mut self) -> Result<(), HarnessError> {
        for i in 0..self.members.len() {
            self.stop_member(i)?;
        }
        Ok(())
    }

    /// Starts every stopped member and waits until the cluster serves.
    pub fn start_all(&mut self) -> Result<(), HarnessError> {
        for i in 0..self.members.len() {
            self.start_member(i)?;
        }
        self.wait_ready(Duration::from_secs(30))
    }

    /// Waits until every running member answers `/health` with a leader.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        for i in 0..self.members.len() {
            if !self.members[i].running() {
                continue;
            }
            let url = self.members[i].config.client_url.clone();
            loop {
                if member_healthy(&url) {
                    break;
                }
                if !self.members[i].running() || Instant::now() >= deadline {
                    let m = &self.members[i];
                    return Err(HarnessError::NotReady {
                        member: m.config.name.clone(),
                        waited: timeout,
                        log: m.log.display().to_string(),
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }
}

/// Whether the member at `client_url` reports healthy (blocking HTTP GET of
/// `/health` over a plain TCP socket, so it works outside any runtime).
pub fn member_healthy(client_url: &str) -> bool {
    use std::io::{Read, Write};
    let Some(addr) = client_url.strip_prefix("http://") else {
        return false;
    };
    let addr = addr.trim_end_matches('/');
    let Ok(sock_addr) = addr.parse::<std::net::SocketAddr>() else {
        return false;
    };
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&sock_addr, Duration::from_millis(500))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

impl Drop for LocalEtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

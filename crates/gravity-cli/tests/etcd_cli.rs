//! Rehearsals of the upgrade on one machine with a real etcd: `gravity sim
//! etcd start` runs one detached `etcd` per simulated master, and
//! `--etcd-endpoints` puts the plans, the election keys and the `/etcd`
//! phases on those processes (Kubernetes and the nodes stay simulated).
//! Needs `etcd` (`/usr/bin/etcd`, or `GRAVITY_ETCD_BIN`); fails without it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use gravity_etcd::{EtcdClient, TxnOp};

/// One rehearsal: a state directory with a simulated cluster, its upgrade
/// image uploaded, and a running etcd cluster. Every member is stopped
/// when dropped, also when the test fails.
struct Rehearsal {
    dir: tempfile::TempDir,
    endpoints: String,
}

impl Rehearsal {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Rehearsal {
            dir,
            endpoints: String::new(),
        };
        let image = r.dir.path().join("telekube.tar");
        let out = r.ok(&["sim", "init", "--image", image.to_str().unwrap()]);
        assert!(out.contains("Created simulated cluster"), "{out}");
        let out = r.ok(&["sim", "etcd", "start"]);
        assert_eq!(out.matches("Started etcd member").count(), 3, "{out}");
        r.endpoints = out
            .lines()
            .find_map(|l| l.strip_prefix("Endpoints:\t"))
            .unwrap_or_else(|| panic!("no endpoints in {out}"))
            .to_string();
        let out = r.ok(&["upload", image.to_str().unwrap()]);
        assert!(out.contains("Cluster image has been uploaded"), "{out}");
        r
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Another node's state directory (no cluster, no etcd of its own).
    fn other(&self) -> PathBuf {
        self.dir.path().join("other-node")
    }

    fn cmd_in(&self, state: &Path, args: &[&str]) -> Command {
        common::gravity(state, self.dir.path(), args)
    }

    fn ok_in(&self, state: &Path, args: &[&str]) -> String {
        common::succeeded(args, self.cmd_in(state, args).output().unwrap())
    }

    fn ok(&self, args: &[&str]) -> String {
        self.ok_in(&self.state(), args)
    }

    /// `gravity --etcd-endpoints E args…`
    fn etcd(&self, args: &[&str]) -> String {
        let mut a = vec!["--etcd-endpoints", self.endpoints.as_str()];
        a.extend_from_slice(args);
        self.ok(&a)
    }

    fn client(&self) -> EtcdClient {
        EtcdClient::from_list(&self.endpoints, Duration::from_secs(5)).unwrap()
    }
}

impl Drop for Rehearsal {
    fn drop(&mut self) {
        let _ = self
            .cmd_in(&self.state(), &["sim", "etcd", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // Whatever survived (a failed stop): killed by recorded pid, if
        // that pid is still the etcd of this state directory.
        let root = self.state().join("etcd");
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let p = e.path().join("process.json");
            if let Ok(Some(rec)) = gravity_etcd::backend::process::read_record(&p)
                && gravity_etcd::backend::process::is_recorded_etcd(&rec)
            {
                let _ = Command::new("kill")
                    .args(["-9", &rec.pid.to_string()])
                    .status();
            }
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn write_keys(client: &EtcdClient, n: usize) -> BTreeMap<String, String> {
    let data: BTreeMap<String, String> = (0..n)
        .map(|i| (format!("/registry/things/{i:04}"), format!("value {i}")))
        .collect();
    let ops: Vec<TxnOp> = data
        .iter()
        .map(|(k, v)| TxnOp::Put(k.clone(), v.as_bytes().to_vec()))
        .collect();
    runtime().block_on(async {
        for batch in ops.chunks(128) {
            client.txn(&[], batch, &[]).await.unwrap();
        }
    });
    data
}

fn read_prefix(client: &EtcdClient, prefix: &str) -> BTreeMap<String, String> {
    runtime().block_on(async {
        client
            .range_prefix(prefix)
            .await
            .unwrap()
            .into_iter()
            .map(|kv| (kv.key.clone(), kv.value_str()))
            .collect()
    })
}

#[test]
fn an_automatic_upgrade_moves_real_etcd_members_to_the_new_version_with_their_keys() {
    let t0 = Instant::now();
    let r = Rehearsal::start();
    let status = r.ok(&["sim", "etcd", "status"]);
    assert_eq!(status.matches("3.3.20").count(), 6, "{status}");
    let client = r.client();
    let data = write_keys(&client, 1_000);
    // With the simulated cluster's keys (seeded by `sim etcd start`).
    let registry_before = read_prefix(&client, "/registry/");
    assert!(registry_before.len() > data.len(), "seeded keys");

    let out = r.etcd(&["upgrade"]);
    assert!(out.contains("has completed"), "{out}");
    eprintln!("upgrade done: {:?}", t0.elapsed());

    // Every member on the new version, serving its normal address from a
    // new data dir.
    let status = r.ok(&["sim", "etcd", "status"]);
    let endpoints: Vec<&str> = r.endpoints.split(',').collect();
    let rows: Vec<&str> = status.lines().skip(2).collect();
    assert_eq!(rows.len(), 3, "{status}");
    for (row, url) in rows.iter().zip(&endpoints) {
        assert!(row.contains("running (pid "), "{row}");
        assert!(row.contains(" 3.3.22 "), "{row}");
        assert!(row.contains(&format!("normal {url}")), "{row}");
        assert!(row.contains("healthy"), "{row}");
        assert!(row.trim_end().ends_with("/etcd/3.3.22"), "{row}");
    }

    // Every key written before the upgrade, through every member.
    for url in &endpoints {
        let one = EtcdClient::new([*url], Duration::from_secs(5)).unwrap();
        assert_eq!(
            read_prefix(&one, "/registry/things/"),
            data,
            "through {url}"
        );
    }
    assert_eq!(read_prefix(&client, "/registry/"), registry_before);

    // Another node sees the same completed plan through etcd.
    let here = r.etcd(&["plan"]);
    let other = r.ok_in(
        &r.other(),
        &["--etcd-endpoints", r.endpoints.as_str(), "plan"],
    );
    assert_eq!(other, here);
    assert!(here.contains("/etcd"), "{here}");
    assert!(
        !here.contains("Unstarted") && !here.contains("Failed"),
        "{here}"
    );
    let status = r.etcd(&["status"]);
    assert!(status.contains("Cluster status:\t\tactive"), "{status}");
    eprintln!("automatic rehearsal: {:?}", t0.elapsed());
}

#[test]
fn plan_tail_on_another_node_follows_a_manual_rehearsal() {
    let t0 = Instant::now();
    let r = Rehearsal::start();
    let out = r.etcd(&["upgrade", "--manual"]);
    assert!(out.contains("manual mode"), "{out}");
    let tail = r
        .cmd_in(
            &r.other(),
            &["--etcd-endpoints", r.endpoints.as_str(), "plan", "--tail"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for phase in ["/init", "/checks", "/pre-update", "/etcd/backup"] {
        r.etcd(&["plan", "execute", "--phase", phase]);
    }
    // The tail ends at the end of the plan; it is stopped before the etcd
    // upgrade (whose outage `plan --tail` does not ride out yet).
    std::thread::sleep(Duration::from_secs(1));
    let mut tail = tail;
    let _ = tail.kill();
    let text = String::from_utf8_lossy(&tail.wait_with_output().unwrap().stdout).into_owned();
    for phase in [
        "/init/kevin-test1",
        "/init/kevin-test3",
        "/checks is completed",
        "/pre-update is completed",
        "/etcd/backup/kevin-test1 is completed",
        "/etcd/backup/kevin-test3 is completed",
    ] {
        assert!(text.contains(phase), "tail lacks {phase}:\n{text}");
    }
    assert!(!text.contains("/bootstrap"), "{text}");
    // The rest, including the etcd upgrade itself, in one go.
    r.etcd(&["plan", "resume"]);
    // The resume ran its last phases while its store still waited out
    // the etcd outage (local copy only); the node's next command syncs
    // them to etcd, then another node sees them.
    let here = r.etcd(&["plan"]);
    let other = r.ok_in(
        &r.other(),
        &["--etcd-endpoints", r.endpoints.as_str(), "plan"],
    );
    let words = |l: &str| l.split_whitespace().collect::<Vec<_>>().join(" ");
    let differ: Vec<(String, String)> = here
        .lines()
        .zip(other.lines())
        .map(|(a, b)| (words(a), words(b)))
        .filter(|(a, b)| a != b)
        .collect();
    assert!(differ.is_empty(), "the nodes differ: {differ:#?}");
    r.etcd(&["plan", "complete"]);
    let status = r.ok(&["sim", "etcd", "status"]);
    assert_eq!(status.matches(" 3.3.22 ").count(), 3, "{status}");
    eprintln!("manual rehearsal with tail: {:?}", t0.elapsed());
}

#[test]
fn unreachable_etcd_warns_and_shows_the_local_copy() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let image = dir.path().join("telekube.tar");
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_gravity"))
            .arg("--state-dir")
            .arg(&state)
            .args(args)
            .env_remove("GRAVITY_STATE_DIR")
            .env_remove("GRAVITY_ETCD_ENDPOINTS")
            .output()
            .unwrap();
        assert!(o.status.success(), "gravity {args:?}: {o:?}");
        (
            String::from_utf8(o.stdout).unwrap(),
            String::from_utf8(o.stderr).unwrap(),
        )
    };
    run(&["sim", "init", "--image", image.to_str().unwrap()]);
    run(&["upload", image.to_str().unwrap()]);
    run(&["upgrade", "--manual"]);
    let (local, _) = run(&["plan"]);
    let (shown, err) = run(&["--etcd-endpoints", "http://127.0.0.1:1", "plan"]);
    assert!(
        err.contains("[WARNING]: etcd at http://127.0.0.1:1 is unreachable"),
        "{err}"
    );
    assert_eq!(shown, local);
    assert!(shown.contains("/etcd"), "{shown}");
}

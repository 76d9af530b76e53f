//! `ProcessControl` (detached local etcd processes recorded in files) and
//! the rehearsal cluster built on it, against real `etcd` processes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gravity_etcd::backend::{
    InitialClusterState, MemberControl, MemberSpec, ProcessControl, ProcessMember, ProcessOptions,
};
use gravity_etcd::harness::{etcd_binary, free_port, member_healthy};
use gravity_etcd::{EtcdClient, Rehearsal};
use gravity_upgrade::backend::{Etcd, EtcdAddress};
use gravity_upgrade::sim::{SimSpec, SimulatedCluster};

/// Kills every process recorded under a directory when dropped (a failed
/// test leaves no etcd behind).
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for rec in records(&self.0) {
            if gravity_etcd::backend::process::is_recorded_etcd(&rec)
                && let Some(pid) = rustix_pid(rec.pid)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

fn rustix_pid(pid: i32) -> Option<rustix::process::Pid> {
    rustix::process::Pid::from_raw(pid)
}

fn records(dir: &Path) -> Vec<gravity_etcd::backend::ProcessRecord> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path().join("process.json");
        if let Ok(Some(r)) = gravity_etcd::backend::process::read_record(&p) {
            out.push(r);
        }
    }
    out
}

fn members(n: usize) -> Vec<ProcessMember> {
    (0..n)
        .map(|i| ProcessMember {
            node: format!("node-{i}"),
            name: format!("node-{i}"),
            peer_url: format!("http://127.0.0.1:{}", free_port().unwrap()),
        })
        .collect()
}

fn spec(binary: &Path, dir: &Path, node: &str) -> MemberSpec {
    MemberSpec {
        binary: binary.to_path_buf(),
        data_dir: dir.join(node).join("data"),
        client_url: format!("http://127.0.0.1:{}", free_port().unwrap()),
        cluster_token: "process-test".into(),
        initial_cluster_state: InitialClusterState::New,
    }
}

fn wait_healthy(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !member_healthy(url) {
        assert!(Instant::now() < deadline, "{url} did not become healthy");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let st = s.rsplit_once(')').unwrap().1.trim_start();
            !st.starts_with('Z')
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_outlive_their_control_and_a_reused_pid_is_never_signalled() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_path_buf());
    let binary = etcd_binary().unwrap();
    let ms = members(1);
    let control = ProcessControl::new(dir.path(), ms.clone());
    let s = spec(&binary, dir.path(), "node-0");
    assert!(!control.running("node-0").await.unwrap());
    control.start("node-0", &s).await.unwrap();
    wait_healthy(&s.client_url);
    assert!(control.running("node-0").await.unwrap());
    let rec = control.record("node-0").unwrap().unwrap();
    assert_eq!(rec.data_dir, s.data_dir);
    assert_eq!(rec.client_url, s.client_url);
    assert_eq!(
        control.log_hint("node-0").unwrap(),
        dir.path().join("node-0/etcd.log").display().to_string()
    );
    // Detached: a process group of its own.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", rec.pid)).unwrap();
    let pgrp: i32 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(pgrp, rec.pid, "the member leads its own process group");

    // Another `gravity` process: a new control over the same directory.
    drop(control);
    let again = ProcessControl::new(dir.path(), ms.clone());
    assert!(
        again.running("node-0").await.unwrap(),
        "it outlived its control"
    );
    let c = EtcdClient::new([s.client_url.clone()], Duration::from_secs(2)).unwrap();
    c.put("/k", b"v").await.unwrap();

    // A start of a running member is a no-op (same pid).
    again.start("node-0", &s).await.unwrap();
    assert_eq!(again.record("node-0").unwrap().unwrap().pid, rec.pid);

    assert!(again.stop("node-0").await.unwrap());
    assert!(!again.running("node-0").await.unwrap());
    assert!(!again.stop("node-0").await.unwrap(), "already stopped");

    // The record now names a pid in use by something else (here: a
    // sleep): it is not the etcd, so it is neither reported nor signalled.
    let mut sleeper = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let mut forged = rec.clone();
    forged.pid = sleeper.id() as i32;
    std::fs::write(
        again.record_path("node-0"),
        serde_json::to_string(&forged).unwrap(),
    )
    .unwrap();
    assert!(!again.running("node-0").await.unwrap());
    assert!(!again.stop("node-0").await.unwrap());
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        matches!(sleeper.try_wait(), Ok(None)),
        "the sleep still runs"
    );
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();

    // It restarts on its data dir (existing member) with the key.
    let mut s2 = s.clone();
    s2.initial_cluster_state = InitialClusterState::Existing;
    again.start("node-0", &s2).await.unwrap();
    wait_healthy(&s.client_url);
    assert_eq!(c.get("/k").await.unwrap().unwrap().value_str(), "v");
    assert!(again.stop("node-0").await.unwrap());
    let err = again.running("stranger").await.unwrap_err();
    assert!(err.to_string().contains("stranger"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_ignoring_sigterm_is_killed_after_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = Reaper(dir.path().to_path_buf());
    // A stand-in "etcd" that ignores SIGTERM (its arguments stay in its
    // cmdline, as a real member's do).
    let fake = dir.path().join("stubborn-etcd");
    std::fs::write(
        &fake,
        "#!/bin/sh\ntrap '' TERM\ntouch \"$0.ready\"\nwhile :; do sleep 0.05; done\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let control = ProcessControl::with_options(
        dir.path(),
        members(1),
        ProcessOptions {
            stop_wait: Duration::from_millis(300),
            ..ProcessOptions::default()
        },
    );
    let s = spec(&fake, dir.path(), "node-0");
    control.start("node-0", &s).await.unwrap();
    let pid = control.record("node-0").unwrap().unwrap().pid;
    assert!(control.running("node-0").await.unwrap());
    // Once the trap is set.
    let ready = dir.path().join("stubborn-etcd.ready");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the stand-in did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let t = Instant::now();
    assert!(control.stop("node-0").await.unwrap());
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert!(!alive(pid), "killed");
    assert!(!control.running("node-0").await.unwrap());
}

/// Stops the rehearsal's members when dropped.
struct Stopper(Rehearsal);

impl Drop for Stopper {
    fn drop(&mut self) {
        for m in &self.0.spec().members {
            let _ = self.0.control().stop_now(&m.node);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rehearsal_cluster_is_seeded_stopped_and_started_again_from_its_files() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let sim = SimulatedCluster::init(&state, SimSpec::seed()).unwrap();
    let root = Rehearsal::root_of(&state);
    let _reaper = Reaper(root.clone());
    let (r, report) = Rehearsal::start(&root, &sim).await.unwrap();
    let _stopper = Stopper(r.clone());
    assert!(report.created);
    assert_eq!(report.started.len(), 3);
    let want = sim.inspect().unwrap().etcd_data;
    assert!(report.seeded > want.len(), "the leader key too");
    assert!(Rehearsal::exists(&root));

    // Every simulated key, and the leader, in the real cluster.
    let backend = r.backend().unwrap();
    let keys = backend.list("").await.unwrap();
    for (k, v) in &want {
        assert_eq!(keys.get(k), Some(v), "{k}");
    }
    assert_eq!(
        keys.get("/planet/cluster/festivebrown4906/master")
            .map(String::as_str),
        Some("10.162.0.7")
    );

    let st = r.status().await.unwrap();
    assert_eq!(st.len(), 3);
    for (m, s) in r.spec().members.iter().zip(&st) {
        assert!(s.running && s.healthy && s.pid.is_some(), "{s:?}");
        assert_eq!(s.version.to_string(), "3.3.20");
        assert_eq!(s.address, EtcdAddress::Normal);
        assert_eq!(s.url, m.client_url);
        assert_eq!(s.data_dir, root.join(&m.node).join("etcd/3.3.20"));
        assert!(s.server_version.is_some());
    }

    // One member through the backend of a "second process": shut down.
    let other = Rehearsal::open(&root).unwrap().backend().unwrap();
    assert!(other.shutdown("kevin-test2").await.unwrap());
    let st = r.status().await.unwrap();
    assert!(!st[1].running && st[0].running);

    // Stop all, start again: where they served, with their data.
    let stopped = r.stop().await.unwrap();
    assert_eq!(
        stopped.iter().map(|(_, was)| *was).collect::<Vec<_>>(),
        [true, false, true]
    );
    assert!(r.status().await.unwrap().iter().all(|s| !s.running));
    let (r2, report) = Rehearsal::start(&root, &sim).await.unwrap();
    assert!(!report.created);
    assert_eq!(report.started.len(), 3);
    assert_eq!(report.seeded, 0);
    let keys2 = r2.backend().unwrap().list("").await.unwrap();
    assert_eq!(keys2, keys);
    assert!(
        r2.status()
            .await
            .unwrap()
            .iter()
            .all(|s| s.running && s.healthy)
    );
    r2.stop().await.unwrap();
    eprintln!("rehearsal start/stop/start: {:?}", t0.elapsed());
}

//! The `/etcd` phase group of the seed's upgrade plan, run by the real
//! engine and executors against real etcd members ([`EtcdBackend`] over a
//! 3-member `LocalEtcdCluster`; Kubernetes and the nodes simulated).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gravity_etcd::EtcdClient;
use gravity_plan::PhasePath;
use gravity_upgrade::backend::{BackendError, Etcd, EtcdAddress};
use support::*;

fn p(s: &str) -> PhasePath {
    s.parse().unwrap()
}

/// Polls the cluster's normal addresses like a client would: counts
/// answers with the sentinel, answers without it (a client seeing an
/// empty or partial database), and failures (the outage).
struct Watcher {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, usize, usize)>,
}

impl Watcher {
    fn start(urls: Vec<String>) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let c = EtcdClient::new(urls, Duration::from_millis(300)).unwrap();
            let (mut ok, mut empty, mut down) = (0, 0, 0);
            while !s.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_secs(1), c.get(SENTINEL)).await {
                    Ok(Ok(Some(_))) => ok += 1,
                    Ok(Ok(None)) => empty += 1,
                    _ => down += 1,
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ok, empty, down)
        });
        Watcher { stop, task }
    }

    async fn finish(self) -> (usize, usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_group_upgrades_real_members_and_clients_never_see_the_new_cluster_empty() {
    let t0 = Instant::now();
    let env = Env::start(seed_plan_only(&["/etcd"])).await;
    let mut data = write_keys(env.backend.client(), 10_000).await;
    // Kubernetes keeps protobuf in etcd: a value that is not UTF-8 must
    // come through backup and restore byte for byte.
    let binary: Vec<u8> = vec![0x6b, 0x38, 0x73, 0x00, 0xff, 0xfe, 0x80, 0x01];
    env.backend
        .client()
        .put("/registry/pods/binary", &binary)
        .await
        .unwrap();
    let mut raw: std::collections::BTreeMap<String, Vec<u8>> = data
        .iter()
        .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
        .collect();
    raw.insert("/registry/pods/binary".into(), binary.clone());
    data.insert(
        "/registry/pods/binary".into(),
        String::from_utf8_lossy(&binary).into_owned(),
    );
    let normal = env.normal_urls();
    let old_dirs: Vec<_> = (0..3).map(|i| env.harness_member(i).0).collect();
    let watcher = Watcher::start(normal.clone());

    env.engine.execute(&p("/etcd/backup"), false).await.unwrap();
    for m in MASTERS {
        let file = env
            .backend
            .node_path(m, "/var/lib/gravity/site/update/etcd.bak")
            .unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("{\"version\":\"1\"}\n"), "{m}");
        assert_eq!(
            gravity_upgrade::backend::backup::decode_raw(&text).unwrap(),
            raw,
            "{m}'s backup holds every key, byte for byte"
        );
    }

    env.engine
        .execute(&p("/etcd/shutdown"), false)
        .await
        .unwrap();
    for url in &normal {
        assert!(refused(url).await, "{url} is closed after the shutdown");
    }

    env.engine
        .execute(&p("/etcd/upgrade"), false)
        .await
        .unwrap();
    for (i, m) in MASTERS.iter().enumerate() {
        assert!(
            refused(&normal[i]).await,
            "{m}: normal address stays closed"
        );
        let st = env.backend.member_state(m).unwrap();
        assert_eq!(st.address, Some(EtcdAddress::Upgrade));
        assert!(
            st.upgrade_url.starts_with("http://127.0.0.2:"),
            "{}",
            st.upgrade_url
        );
    }
    // The new cluster is empty, and only the upgrade addresses serve it.
    let upgraded = EtcdClient::new([env.upgrade_url(MASTERS[0])], Duration::from_secs(2)).unwrap();
    eventually(20, "the new cluster to serve", || async {
        upgraded.get(SENTINEL).await.is_ok()
    })
    .await;
    assert!(upgraded.range_prefix("/").await.unwrap().is_empty());

    // Truncated or altered backups are refused; nothing is written.
    let path = "/var/lib/gravity/site/update/etcd.bak";
    let file = env.backend.node_path(MASTERS[0], path).unwrap();
    let good = std::fs::read_to_string(&file).unwrap();
    let cut: String = good.lines().take(500).map(|l| format!("{l}\n")).collect();
    let altered = good.replacen("\"version\":1", "\"version\":2", 1).replacen(
        &gravity_upgrade::backend::backup::b64_encode(b"value 7 "),
        &gravity_upgrade::backend::backup::b64_encode(b"value 8 "),
        1,
    );
    assert_ne!(altered, good);
    for (bad, why) in [(cut, "truncated"), (altered, "digest mismatch")] {
        std::fs::write(&file, bad).unwrap();
        let err = env.backend.restore(MASTERS[0], path).await.unwrap_err();
        assert!(
            matches!(err, BackendError::BadBackup { .. }) && err.to_string().contains(why),
            "{err}"
        );
    }
    std::fs::write(&file, &good).unwrap();
    assert!(upgraded.range_prefix("/").await.unwrap().is_empty());

    env.engine
        .execute(&p("/etcd/restore"), false)
        .await
        .unwrap();
    assert!(refused(&normal[0]).await, "restored, still invisible");
    assert_eq!(read_all(&env.upgrade_url(MASTERS[0])).await, data);

    env.engine
        .execute(&p("/etcd/restart"), false)
        .await
        .unwrap();
    let (ok, empty, down) = watcher.finish().await;
    assert_eq!(empty, 0, "a client saw the cluster without its data");
    assert!(down > 0 && ok > 0, "ok {ok}, down {down}");

    for (i, m) in MASTERS.iter().enumerate() {
        let dir = env.root.join(m).join("etcd").join("3.3.22");
        assert_member(&env.backend, m, &update(), &dir).await;
        let member = env.backend.member(m).await.unwrap().unwrap();
        assert_eq!(
            member.previous,
            Some((installed(), old_dirs[i].display().to_string()))
        );
        assert_eq!(
            env.backend.server_version(m).await.unwrap().as_deref(),
            Some("3.4.23"),
            "one binary runs every version"
        );
        assert_eq!(read_all(&normal[i]).await, data, "every key through {m}");
    }
    let restored = env
        .backend
        .client()
        .get("/registry/pods/binary")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        restored.value, binary,
        "binary values restored byte for byte"
    );
    assert!(env.engine.view().is_completed());
    eprintln!("full group: {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_mid_group_fails_a_phase_and_resume_finishes() {
    let t0 = Instant::now();
    let mut env = Env::start(seed_plan_only(&["/etcd"])).await;
    let data = write_keys(env.backend.client(), 10_000).await;
    for path in [
        "/etcd/backup",
        "/etcd/shutdown",
        "/etcd/upgrade/kevin-test1",
        "/etcd/upgrade/kevin-test2",
    ] {
        env.engine.execute(&p(path), false).await.unwrap();
    }

    // The restore target crashes; a second process resumes.
    env.kill("kevin-test1");
    env.reopen().await;
    let err = env.engine.resume().await.unwrap_err().to_string();
    assert!(
        err.contains("/etcd/restore") && err.contains("execute /etcd/upgrade/kevin-test1 first"),
        "{err}"
    );
    // As the error says (in Gravity systemd would also restart etcd).
    env.engine
        .execute(&p("/etcd/upgrade/kevin-test1"), true)
        .await
        .unwrap();

    // Crash again during the restore (if it is still running by then).
    let killed = Arc::new(AtomicUsize::new(0));
    let killer = {
        let url = env.upgrade_url("kevin-test1");
        let cluster = env.cluster.clone();
        let killed = killed.clone();
        tokio::spawn(async move {
            let c = EtcdClient::new([url], Duration::from_millis(300)).unwrap();
            loop {
                let first = c.get("/registry/things/00000").await;
                if let Ok(Some(_)) = first {
                    if let Ok(None) = c.get(SENTINEL).await {
                        tokio::task::spawn_blocking(move || {
                            cluster.lock().unwrap().kill_member(0).unwrap()
                        })
                        .await
                        .unwrap();
                        killed.store(1, Ordering::SeqCst);
                    }
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let second = env.engine.resume().await;
    killer.await.unwrap();
    if killed.load(Ordering::SeqCst) == 1 {
        let err = second.unwrap_err().to_string();
        assert!(err.contains("/etcd/restore"), "{err}");
        env.engine
            .execute(&p("/etcd/upgrade/kevin-test1"), true)
            .await
            .unwrap();
        env.reopen().await;
        env.engine.resume().await.unwrap();
    } else {
        // The restore won the race: the group finished.
        second.unwrap();
    }
    eprintln!(
        "killed during restore: {}",
        killed.load(Ordering::SeqCst) == 1
    );

    assert!(env.engine.view().is_completed());
    let normal = env.normal_urls();
    for (i, m) in MASTERS.iter().enumerate() {
        let dir = env.root.join(m).join("etcd").join("3.3.22");
        assert_member(&env.backend, m, &update(), &dir).await;
        assert_eq!(read_all(&normal[i]).await, data, "every key through {m}");
    }
    eprintln!("kill and resume: {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_back_the_etcd_group_returns_to_the_old_members_and_data() {
    let t0 = Instant::now();
    let env = Env::start(seed_plan_only(&["/etcd"])).await;
    let data = write_keys(env.backend.client(), 10_000).await;
    let old: Vec<_> = (0..3).map(|i| env.harness_member(i)).collect();

    env.engine.execute(&p("/etcd"), false).await.unwrap();
    // Written to the upgraded cluster only: a rollback returns to the old
    // data dirs as they were at the shutdown.
    env.backend.put("/after-upgrade", "new").await.unwrap();

    let undone = env.engine.rollback_plan(false).await.unwrap();
    let leaves: Vec<&str> = undone.iter().map(|p| p.as_str()).collect();
    assert_eq!(
        leaves.first(),
        Some(&"/etcd/restart/gravity-site"),
        "{leaves:?}"
    );
    assert_eq!(
        leaves.last(),
        Some(&"/etcd/backup/kevin-test1"),
        "{leaves:?}"
    );

    for (i, m) in MASTERS.iter().enumerate() {
        assert_member(&env.backend, m, &installed(), &old[i].0).await;
        let st = env.backend.member_state(m).unwrap();
        assert_eq!(st.normal_url, old[i].1);
        assert!(st.previous.is_none());
        assert_eq!(st.cluster_token, "gravity-test");
        assert_eq!(read_all(&old[i].1).await, data, "every key through {m}");
    }
    assert_eq!(env.backend.get("/after-upgrade").await.unwrap(), None);

    // Workers have no member: start and shutdown are accepted no-ops.
    let with_worker = gravity_etcd::EtcdBackend::for_harness(
        env.cluster.clone(),
        env.dir.path().join("other"),
        CLUSTER,
        &MASTERS,
        &["worker-1"],
        &installed(),
    )
    .unwrap();
    assert!(
        !with_worker
            .start("worker-1", EtcdAddress::Normal)
            .await
            .unwrap()
    );
    assert!(!with_worker.shutdown("worker-1").await.unwrap());
    assert!(with_worker.member("worker-1").await.unwrap().is_none());
    let err = with_worker
        .upgrade("worker-1", &update())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no etcd member"), "{err}");
    let err = with_worker.shutdown("stranger").await.unwrap_err();
    assert!(matches!(err, BackendError::UnknownNode(_)), "{err}");
    eprintln!("group and rollback: {:?}", t0.elapsed());
}

/// `Etcd::delete` on a one-member cluster: true for a key that existed,
/// false for an absent one; exactly that key goes (not its prefix
/// neighbours), for every client of the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_exactly_the_key_and_says_whether_it_existed() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = tokio::task::spawn_blocking({
        let d = dir.path().join("etcd");
        move || gravity_etcd::LocalEtcdCluster::start(d, 1)
    })
    .await
    .unwrap()
    .unwrap();
    let cluster = Arc::new(std::sync::Mutex::new(cluster));
    let backend = gravity_etcd::EtcdBackend::for_harness(
        cluster,
        dir.path().join("nodes"),
        CLUSTER,
        &MASTERS[..1],
        &[],
        &installed(),
    )
    .unwrap();
    let key = "/gravity/local/trustedclusters/ops.example.com";
    let neighbour = "/gravity/local/trustedclusters/ops.example.com.2";
    backend.put(key, "{}").await.unwrap();
    backend.put(neighbour, "kept").await.unwrap();

    assert!(backend.delete(key).await.unwrap(), "the key existed");
    assert_eq!(backend.get(key).await.unwrap(), None);
    let left = backend
        .list("/gravity/local/trustedclusters/")
        .await
        .unwrap();
    assert_eq!(
        left.into_iter().collect::<Vec<_>>(),
        [(neighbour.to_string(), "kept".to_string())]
    );
    let url = backend.member_state(MASTERS[0]).unwrap().normal_url;
    let other = EtcdClient::new([url], Duration::from_secs(2)).unwrap();
    assert!(
        other.get(key).await.unwrap().is_none(),
        "gone for every client"
    );

    assert!(!backend.delete(key).await.unwrap(), "already gone");
    assert!(!backend.delete("/never/written").await.unwrap());
    // An empty value is a value: deleting it reports that it existed.
    backend.put(key, "").await.unwrap();
    assert_eq!(backend.get(key).await.unwrap().as_deref(), Some(""));
    assert!(backend.delete(key).await.unwrap());
    assert_eq!(backend.get(key).await.unwrap(), None);
}

//! The local cluster harness and the client against a real 3-member etcd.

use std::time::Duration;

use futures::StreamExt;
use gravity_etcd::{Compare, EtcdClient, LocalEtcdCluster, TxnOp, WatchEvent};

fn client(c: &LocalEtcdCluster) -> EtcdClient {
    EtcdClient::new(c.endpoints(), Duration::from_secs(2)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_serve_and_survive_one_member_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalEtcdCluster::start(dir.path(), 3).unwrap();
    let etcd = client(&cluster);

    etcd.put("/t/a", b"1").await.unwrap();
    assert_eq!(etcd.get("/t/a").await.unwrap().unwrap().value_str(), "1");
    assert!(etcd.get("/t/missing").await.unwrap().is_none());

    // One member down: the client fails over and the quorum still serves.
    cluster.stop_member(0).unwrap();
    etcd.put("/t/b", b"2").await.unwrap();
    assert_eq!(etcd.get("/t/a").await.unwrap().unwrap().value_str(), "1");

    // A killed member rejoins with its data and catches up.
    cluster.kill_member(1).unwrap();
    cluster.start_member(1).unwrap();
    cluster.start_member(0).unwrap();
    cluster.wait_ready(Duration::from_secs(30)).unwrap();
    let only0 = EtcdClient::new([cluster.endpoints()[0].clone()], Duration::from_secs(2)).unwrap();
    let mut seen = None;
    for _ in 0..100 {
        seen = only0.get("/t/b").await.ok().flatten();
        if seen.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen.unwrap().value_str(), "2");

    // Two members down: no quorum, and the error says so.
    cluster.stop_member(1).unwrap();
    cluster.stop_member(2).unwrap();
    assert!(!etcd.healthy().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_transactions_and_watches() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalEtcdCluster::start(dir.path(), 1).unwrap();
    let etcd = client(&cluster);

    for i in 0..4500 {
        etcd.put(&format!("/r/{i:05}"), format!("v{i}").as_bytes())
            .await
            .unwrap();
    }
    etcd.put("/r0", b"outside").await.unwrap();
    let all = etcd.range_prefix("/r/").await.unwrap();
    assert_eq!(all.len(), 4500, "paged range returns every key once");
    assert_eq!(all[4499].value_str(), "v4499");
    assert!(all.windows(2).all(|w| w[0].key < w[1].key));
    // The empty prefix is the whole key space (etcd refuses an empty key).
    assert_eq!(etcd.range_prefix("").await.unwrap().len(), 4501);

    // Create-if-absent, then compare-and-swap on the revision.
    let r = etcd
        .txn(
            &[Compare::Absent("/c".into())],
            &[TxnOp::Put("/c".into(), b"x".to_vec())],
            &[],
        )
        .await
        .unwrap();
    assert!(r.succeeded);
    let again = etcd
        .txn(
            &[Compare::Absent("/c".into())],
            &[TxnOp::Put("/c".into(), b"y".to_vec())],
            &[TxnOp::Get("/c".into())],
        )
        .await
        .unwrap();
    assert!(!again.succeeded);
    let cur = again.gets[0].clone().unwrap();
    assert_eq!(cur.value_str(), "x");
    let swap = etcd
        .txn(
            &[Compare::ModRevision("/c".into(), cur.mod_revision)],
            &[TxnOp::Put("/c".into(), b"z".to_vec())],
            &[],
        )
        .await
        .unwrap();
    assert!(swap.succeeded);
    let stale = etcd
        .txn(
            &[Compare::ModRevision("/c".into(), cur.mod_revision)],
            &[TxnOp::Put("/c".into(), b"w".to_vec())],
            &[],
        )
        .await
        .unwrap();
    assert!(!stale.succeeded);

    // A watch from a past revision replays, then follows new writes.
    let start = etcd.get("/c").await.unwrap().unwrap().mod_revision;
    let mut w = Box::pin(etcd.watch_prefix("/c", start).await.unwrap());
    let first = w.next().await.unwrap().unwrap();
    assert!(matches!(first, WatchEvent::Put(ref kv) if kv.value_str() == "z"));
    etcd.delete("/c").await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(second, WatchEvent::Delete { ref key, .. } if key == "/c"));

    assert_eq!(etcd.delete_prefix("/r/").await.unwrap(), 4500);
    assert_eq!(
        etcd.get("/r0").await.unwrap().unwrap().value_str(),
        "outside"
    );
}

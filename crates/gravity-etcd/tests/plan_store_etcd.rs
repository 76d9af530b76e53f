//! The cluster plan store against a real etcd: the shared `PlanStore`
//! contract (for `EtcdPlanStore` and for `SyncedPlanStore`), large plans,
//! `--tail` through a watch, and damaged data.

#[path = "../../gravity-plan/tests/contract/mod.rs"]
mod contract;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gravity_etcd::{EtcdClient, EtcdPlanStore, LocalEtcdCluster, SyncConfig, SyncedPlanStore};
use gravity_plan::{
    FileStore, NewChange, Phase, PhaseChange, PhasePath, PhaseState, Plan, PlanStore, StoreError,
};

fn client(c: &LocalEtcdCluster) -> EtcdClient {
    EtcdClient::new(c.endpoints(), Duration::from_secs(2)).unwrap()
}

fn change(phase: &str, state: PhaseState, expect: Option<u64>) -> NewChange {
    contract::nc(phase, state, expect, 7)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_and_synced_stores_keep_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalEtcdCluster::start(dir.path().join("etcd"), 1).unwrap();

    let etcd = EtcdPlanStore::with_prefix(client(&cluster), "/contract-etcd");
    assert_eq!(etcd.prefix(), "/contract-etcd/");
    contract::contract(Arc::new(etcd.clone())).await;

    // A second handle (another process) sees the same data, read cold.
    let other = EtcdPlanStore::with_prefix(client(&cluster), "/contract-etcd/");
    let a = etcd.operations().await.unwrap();
    assert_eq!(a, other.operations().await.unwrap());
    for op in &a {
        assert_eq!(
            etcd.changes(&op.id, 0).await.unwrap(),
            other.changes(&op.id, 0).await.unwrap()
        );
        assert_eq!(
            etcd.plan(&op.id).await.unwrap(),
            other.plan(&op.id).await.unwrap()
        );
    }

    // The node store: local file store + etcd under another prefix.
    let local: Arc<dyn PlanStore> = Arc::new(FileStore::open(dir.path().join("node")).unwrap());
    let cluster_side = EtcdPlanStore::with_prefix(client(&cluster), "/contract-synced/");
    let synced = SyncedPlanStore::open(local.clone(), cluster_side.clone(), SyncConfig::default())
        .await
        .unwrap();
    contract::contract(Arc::new(synced.clone())).await;
    assert!(synced.cluster_reachable());

    // Everything written through it is in etcd too, entry for entry.
    let report = synced.sync_all().await.unwrap();
    assert!(report.reachable);
    let ops = local.operations().await.unwrap();
    let mut in_etcd = cluster_side.operations().await.unwrap();
    in_etcd.sort_by(|a, b| a.id.cmp(&b.id));
    let mut in_local = ops.clone();
    in_local.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        in_local
            .iter()
            .map(|o| (&o.id, o.state))
            .collect::<Vec<_>>(),
        in_etcd.iter().map(|o| (&o.id, o.state)).collect::<Vec<_>>()
    );
    for op in &ops {
        let mine = local.changes(&op.id, 0).await.unwrap();
        let theirs = cluster_side.changes(&op.id, 0).await.unwrap();
        let ids = |v: &[PhaseChange]| v.iter().map(|c| c.id).collect::<BTreeSet<_>>();
        assert_eq!(ids(&mine), ids(&theirs), "operation {}", op.id);
        assert_eq!(
            local.plan(&op.id).await.unwrap(),
            cluster_side.plan(&op.id).await.unwrap()
        );
    }
}

fn big_plan(id: &str) -> Plan {
    // ~2.4 MiB of JSON: more than one etcd request may carry.
    let phases = (0..600)
        .map(|i| {
            let mut p = Phase::new(
                PhasePath::parse(&format!("/p{i:03}")).unwrap(),
                format!("phase {i} {}", "x".repeat(4000)),
            );
            p.executor = Some("noop".into());
            p
        })
        .collect();
    Plan {
        operation_id: id.into(),
        operation_kind: "update".into(),
        cluster_name: "big".into(),
        created: contract::t0(),
        phases,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_plans_damaged_data_and_tail() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalEtcdCluster::start(dir.path(), 1).unwrap();
    let etcd_client = client(&cluster);
    let store = EtcdPlanStore::new(etcd_client.clone());
    assert_eq!(store.prefix(), "/gravity/");

    // A plan larger than an etcd request is stored in chunks.
    let plan = big_plan("op-big");
    assert!(serde_json::to_vec(&plan).unwrap().len() > 2 * 1024 * 1024);
    store.create_operation(&plan).await.unwrap();
    assert!(matches!(
        store.create_operation(&plan).await,
        Err(StoreError::AlreadyExists(_))
    ));
    let cold = EtcdPlanStore::new(etcd_client.clone());
    assert_eq!(cold.plan("op-big").await.unwrap(), plan);
    let chunks = etcd_client
        .range_prefix("/gravity/plan-chunks/op-big/")
        .await
        .unwrap();
    assert_eq!(chunks.len(), 5, "2.4 MiB in chunks of 512 KiB");

    // --tail: a watch replays, then follows another process's appends in
    // order, each once.
    let writer = EtcdPlanStore::new(client(&cluster));
    let id = "op-tail";
    writer
        .create_operation(&contract::plan(id, contract::t0()))
        .await
        .unwrap();
    writer
        .append(
            id,
            vec![change("/init/n0", PhaseState::InProgress, Some(0))],
        )
        .await
        .unwrap();
    writer
        .append(id, vec![change("/init/n0", PhaseState::Completed, Some(1))])
        .await
        .unwrap();
    let mut tail = store.watch_changes(id, 0).await.unwrap();
    let mut late = store.watch_changes(id, 4).await.unwrap();
    let appends = tokio::spawn({
        let writer = writer.clone();
        async move {
            for (phase, state) in [
                ("/init/n1", PhaseState::InProgress),
                ("/init/n1", PhaseState::Completed),
                ("/init/n2", PhaseState::InProgress),
            ] {
                writer
                    .append(id, vec![change(phase, state, None)])
                    .await
                    .unwrap();
            }
            // A multi-change append and concurrent ones.
            writer
                .append(
                    id,
                    vec![
                        change("/init/n2", PhaseState::Completed, None),
                        change("/last", PhaseState::InProgress, None),
                    ],
                )
                .await
                .unwrap();
            let more = (0..5).map(|_| {
                let w = writer.clone();
                async move {
                    w.append(id, vec![change("/last", PhaseState::Failed, None)])
                        .await
                        .unwrap()
                }
            });
            futures::future::join_all(more).await;
        }
    });
    let mut seen = Vec::new();
    while seen.len() < 12 {
        let c = tokio::time::timeout(Duration::from_secs(10), tail.next())
            .await
            .expect("the watch delivers every change")
            .unwrap()
            .unwrap();
        seen.push(c);
    }
    appends.await.unwrap();
    let all = writer.changes(id, 0).await.unwrap();
    assert_eq!(all.len(), 12);
    assert_eq!(seen, all, "every change once, in sequence order");
    let mut from_late = Vec::new();
    while from_late.len() < 8 {
        from_late.push(
            tokio::time::timeout(Duration::from_secs(10), late.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(from_late, all[4..].to_vec());
    assert!(matches!(
        store.watch_changes("nope", 0).await.err(),
        Some(StoreError::NotFound(_))
    ));

    // Damaged data: clear errors, no panic. Invalid JSON where the next
    // append belongs reaches the watch.
    etcd_client
        .put(&store.change_key(id, 13), b"{not json")
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), tail.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt(ref m) if m.contains("changes/op-tail/00000000000000000013")),
        "{err}"
    );
    assert!(tail.next().await.is_none(), "the stream ends after damage");

    // Invalid JSON under an existing append: a fresh reader says which key.
    etcd_client
        .put(&store.change_key(id, 2), b"\xff garbage")
        .await
        .unwrap();
    let err = EtcdPlanStore::new(client(&cluster))
        .changes(id, 0)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt(ref m) if m.contains("/gravity/changes/op-tail/")),
        "{err}"
    );
    // A head that is not JSON, a plan manifest that is not JSON.
    etcd_client
        .put("/gravity/heads/op-tail", b"7")
        .await
        .unwrap();
    let err = EtcdPlanStore::new(client(&cluster))
        .append(id, vec![change("/last", PhaseState::Completed, None)])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    etcd_client
        .put("/gravity/plans/op-tail", b"[]")
        .await
        .unwrap();
    let err = EtcdPlanStore::new(client(&cluster))
        .plan(id)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt(ref m) if m.contains("/gravity/plans/op-tail")),
        "{err}"
    );
    // A missing plan chunk.
    etcd_client.delete(&chunks[2].key).await.unwrap();
    let err = EtcdPlanStore::new(client(&cluster))
        .plan("op-big")
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt(ref m) if m.contains("missing")),
        "{err}"
    );
}

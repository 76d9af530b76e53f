//! The [`PlanStore`] contract (`contract/mod.rs`), run against both
//! [`MemoryStore`] and [`FileStore`], plus what only the file store
//! promises: everything survives a reopen, and two handles on one directory
//! share one log.

mod contract;

use std::sync::Arc;

use contract::{actor, assert_dense, contract, nc, plan, t0};
use futures::future::join_all;
use gravity_plan::{FileStore, MemoryStore, PhaseState, PlanStore, StoreError};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_keeps_the_contract() {
    contract(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn PlanStore> = Arc::new(FileStore::open(dir.path()).unwrap());
    contract(store.clone()).await;

    // Everything survives a reopen, byte for byte.
    let reopened: Arc<dyn PlanStore> = Arc::new(FileStore::open(dir.path()).unwrap());
    let a = store.operations().await.unwrap();
    let b = reopened.operations().await.unwrap();
    assert_eq!(a, b);
    for op in &a {
        assert_eq!(
            store.changes(&op.id, 0).await.unwrap(),
            reopened.changes(&op.id, 0).await.unwrap()
        );
        assert_eq!(
            store.plan(&op.id).await.unwrap(),
            reopened.plan(&op.id).await.unwrap()
        );
    }
    // No temporary leftovers.
    let leftovers: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"))
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// Two handles on one directory behave like two processes: each sees the
/// other's changes, guards are checked against the true latest state, and
/// sequence numbers stay dense across both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_store_handles_share_one_log() {
    let dir = tempfile::tempdir().unwrap();
    let a: Arc<dyn PlanStore> = Arc::new(FileStore::open(dir.path()).unwrap());
    let b: Arc<dyn PlanStore> = Arc::new(FileStore::open(dir.path()).unwrap());
    let id = "op-shared";
    a.create_operation(&plan(id, t0())).await.unwrap();
    assert!(matches!(
        b.create_operation(&plan(id, t0())).await,
        Err(StoreError::AlreadyExists(_))
    ));
    let c1 = a
        .append(id, vec![nc("/last", PhaseState::InProgress, Some(0), 1)])
        .await
        .unwrap();
    let err = b
        .append(id, vec![nc("/last", PhaseState::InProgress, Some(0), 2)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { version: 1, ref actor, .. } if actor.pid == 1),
        "{err}"
    );
    assert_eq!(b.changes(id, 0).await.unwrap(), c1);

    // Both handles append concurrently; the result is one dense log.
    let results = join_all((0..60u32).map(|i| {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move {
            s.append(id, vec![nc("/init/n0", PhaseState::Completed, None, i)])
                .await
        }
    }))
    .await;
    let mut seqs: Vec<u64> = results.iter().map(|r| r.as_ref().unwrap()[0].seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (2..62).collect::<Vec<u64>>());
    let la = a.changes(id, 0).await.unwrap();
    let lb = b.changes(id, 0).await.unwrap();
    assert_eq!(la, lb);
    assert_dense(&la);
    assert_eq!(b.changes(id, 30).await.unwrap(), la[30..].to_vec());

    // Imports are idempotent across handles: entries one handle stored are
    // known to the other, and what one imports the other sees.
    assert!(b.import_changes(id, la.clone()).await.unwrap().is_empty());
    let theirs = vec![
        contract::foreign(9, "/last", PhaseState::Completed, 1, 900),
        contract::foreign(3, "/init/n1", PhaseState::Failed, 2, 901),
    ];
    let got = b.import_changes(id, theirs.clone()).await.unwrap();
    assert_eq!(got.iter().map(|c| c.seq).collect::<Vec<_>>(), [62, 63]);
    assert!(a.import_changes(id, theirs).await.unwrap().is_empty());
    assert_eq!(a.changes(id, 61).await.unwrap(), got);

    // The lock is shared as well.
    a.claim_lock(id, &actor(1)).await.unwrap();
    assert!(matches!(
        b.claim_lock("other", &actor(2)).await,
        Err(StoreError::Locked(_))
    ));
    b.release_lock(id).await.unwrap();
    assert!(a.lock_holder().await.unwrap().is_none());
}

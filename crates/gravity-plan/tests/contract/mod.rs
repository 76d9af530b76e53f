//! The [`PlanStore`] contract, shared by every store's tests: atomic create
//! that refuses duplicates, dense sequence numbers, compare-and-swap
//! guards, `changes(after)` slicing, operations newest first, the operation
//! lock, group commit under concurrency, and idempotent imports.
//!
//! It lives here, as test code, and other crates include it with
//! `#[path = "../../gravity-plan/tests/contract/mod.rs"] mod contract;`
//! (gravity-etcd runs it against its etcd stores), so the library gets no
//! test-only public API or feature.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use futures::future::join_all;
use gravity_plan::{
    Actor, MemoryStore, NewChange, OperationState, Phase, PhaseChange, PhasePath, PhaseState, Plan,
    PlanStore, StoreError,
};

pub fn actor(pid: u32) -> Actor {
    Actor {
        host: format!("host-{pid}"),
        pid,
    }
}

pub fn plan(id: &str, created: DateTime<Utc>) -> Plan {
    let mut init = Phase::new(PhasePath::parse("/init").unwrap(), "init");
    init.phases = (0..3)
        .map(|i| {
            let mut p = Phase::new(PhasePath::parse(&format!("/init/n{i}")).unwrap(), "leaf");
            p.executor = Some("noop".into());
            p
        })
        .collect();
    let mut last = Phase::new(PhasePath::parse("/last").unwrap(), "last");
    last.executor = Some("noop".into());
    last.requires = vec![PhasePath::parse("/init").unwrap()];
    Plan {
        operation_id: id.into(),
        operation_kind: "update".into(),
        cluster_name: "cluster-a".into(),
        created,
        phases: vec![init, last],
    }
}

pub fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000, 0).unwrap()
}

pub fn nc(phase: &str, state: PhaseState, expect: Option<u64>, pid: u32) -> NewChange {
    NewChange {
        phase: PhasePath::parse(phase).unwrap(),
        state,
        error: (state == PhaseState::Failed).then(|| format!("failed by {pid}")),
        expect_version: expect,
        actor: actor(pid),
        time: Utc::now(),
    }
}

pub fn assert_dense(all: &[PhaseChange]) {
    for (i, c) in all.iter().enumerate() {
        assert_eq!(c.seq, i as u64 + 1, "sequence numbers must be dense from 1");
    }
    let ids: BTreeSet<_> = all.iter().map(|c| c.id).collect();
    assert_eq!(ids.len(), all.len(), "change ids are unique");
}

/// The whole contract, against a fresh store.
pub async fn contract(store: Arc<dyn PlanStore>) {
    create_and_read(&store).await;
    import(&store).await;
    sequence_and_guards(&store).await;
    slicing(&store).await;
    newest_first(&store).await;
    lock(&store).await;
    group_commit(&store).await;
    racing_creates(&store).await;
}

pub async fn create_and_read(store: &Arc<dyn PlanStore>) {
    let p = plan("op-create", t0());
    let rec = store.create_operation(&p).await.unwrap();
    assert_eq!(rec.id, "op-create");
    assert_eq!(rec.kind, "update");
    assert_eq!(rec.cluster, "cluster-a");
    assert_eq!(rec.created, t0());
    assert_eq!(rec.state, OperationState::InProgress);
    assert_eq!(store.operation("op-create").await.unwrap(), rec);
    assert_eq!(store.plan("op-create").await.unwrap(), p);
    assert!(store.changes("op-create", 0).await.unwrap().is_empty());

    // A duplicate is refused and leaves the original untouched.
    let mut other = plan("op-create", t0() + ChronoDuration::seconds(5));
    other.cluster_name = "cluster-b".into();
    let err = store.create_operation(&other).await.unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists(ref id) if id == "op-create"),
        "{err}"
    );
    assert_eq!(store.plan("op-create").await.unwrap(), p);
    assert_eq!(store.operation("op-create").await.unwrap(), rec);

    for bad in ["", "../x", ".hidden", "a/b", "white space"] {
        let err = store.create_operation(&plan(bad, t0())).await.unwrap_err();
        assert!(
            matches!(err, StoreError::BadOperationId(_)),
            "{bad:?}: {err}"
        );
    }
    for missing in [
        store.operation("nope").await.err(),
        store.plan("nope").await.err(),
        store.changes("nope", 0).await.err(),
        store
            .append("nope", vec![nc("/last", PhaseState::Completed, None, 1)])
            .await
            .err(),
        store
            .set_operation_state("nope", OperationState::Failed)
            .await
            .err(),
        store.import_changes("nope", Vec::new()).await.err(),
    ] {
        assert!(
            matches!(missing, Some(StoreError::NotFound(_))),
            "{missing:?}"
        );
    }

    store
        .set_operation_state("op-create", OperationState::Failed)
        .await
        .unwrap();
    let after = store.operation("op-create").await.unwrap();
    assert_eq!(after.state, OperationState::Failed);
    assert!(after.updated >= rec.updated);
    assert_eq!(after.created, rec.created);
}

pub async fn sequence_and_guards(store: &Arc<dyn PlanStore>) {
    let id = "op-cas";
    store.create_operation(&plan(id, t0())).await.unwrap();

    // A first claim of a phase never changed expects version 0.
    let a = store
        .append(id, vec![nc("/init/n0", PhaseState::InProgress, Some(0), 1)])
        .await
        .unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].seq, 1);
    assert_eq!(a[0].state, PhaseState::InProgress);
    assert_eq!(a[0].actor, actor(1));

    // A second claim with the stale version fails and names the holder.
    let err = store
        .append(id, vec![nc("/init/n0", PhaseState::InProgress, Some(0), 2)])
        .await
        .unwrap_err();
    match err {
        StoreError::Conflict {
            phase,
            state,
            actor: holder,
            version,
        } => {
            assert_eq!(phase.as_str(), "/init/n0");
            assert_eq!(state, PhaseState::InProgress);
            assert_eq!(holder, actor(1));
            assert_eq!(version, 1);
        }
        other => panic!("expected a conflict, got {other}"),
    }
    // A guard naming a version the phase never had fails too.
    let err = store
        .append(id, vec![nc("/init/n1", PhaseState::InProgress, Some(7), 2)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                version: 0,
                state: PhaseState::Unstarted,
                ..
            }
        ),
        "{err}"
    );

    // The right version succeeds.
    let b = store
        .append(id, vec![nc("/init/n0", PhaseState::Completed, Some(1), 1)])
        .await
        .unwrap();
    assert_eq!(b[0].seq, 2, "failed appends use up no sequence numbers");

    // An unguarded append always succeeds.
    let c = store
        .append(id, vec![nc("/init/n0", PhaseState::Failed, None, 3)])
        .await
        .unwrap();
    assert_eq!(c[0].seq, 3);
    assert_eq!(c[0].error.as_deref(), Some("failed by 3"));

    // A batch is atomic: one failing guard and nothing of it is stored.
    let err = store
        .append(
            id,
            vec![
                nc("/init/n1", PhaseState::InProgress, Some(0), 4),
                nc("/init/n2", PhaseState::InProgress, None, 4),
                nc("/init/n0", PhaseState::InProgress, Some(2), 4),
            ],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { version: 3, .. }),
        "{err}"
    );
    assert_eq!(store.changes(id, 0).await.unwrap().len(), 3);

    // Guards see earlier changes of the same batch.
    let d = store
        .append(
            id,
            vec![
                nc("/init/n1", PhaseState::InProgress, Some(0), 5),
                nc("/init/n1", PhaseState::Completed, Some(4), 5),
                nc("/init/n2", PhaseState::InProgress, Some(0), 5),
            ],
        )
        .await
        .unwrap();
    assert_eq!(d.iter().map(|c| c.seq).collect::<Vec<_>>(), [4, 5, 6]);
    let err = store
        .append(
            id,
            vec![
                nc("/init/n2", PhaseState::Completed, Some(6), 5),
                nc("/init/n2", PhaseState::Completed, Some(6), 5),
            ],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { version: 7, .. }),
        "the second guard must see the first change of its batch: {err}"
    );

    let all = store.changes(id, 0).await.unwrap();
    assert_dense(&all);
    assert_eq!(all.len(), 6);
    let stored: Vec<PhaseChange> = a.into_iter().chain(b).chain(c).chain(d).collect();
    assert_eq!(
        all, stored,
        "changes() returns the entries as append stored them"
    );
}

pub async fn slicing(store: &Arc<dyn PlanStore>) {
    let id = "op-slice";
    store.create_operation(&plan(id, t0())).await.unwrap();
    // Batches of different sizes, so slices start inside batches.
    for (k, size) in [1usize, 3, 2, 5, 1, 4].into_iter().enumerate() {
        let batch = (0..size)
            .map(|i| nc("/last", PhaseState::ALL[(k + i) % 5], None, k as u32))
            .collect();
        store.append(id, batch).await.unwrap();
    }
    let all = store.changes(id, 0).await.unwrap();
    assert_eq!(all.len(), 16);
    assert_dense(&all);
    for after in 0..20u64 {
        let got = store.changes(id, after).await.unwrap();
        let want: Vec<PhaseChange> = all.iter().filter(|c| c.seq > after).cloned().collect();
        assert_eq!(got, want, "changes after {after}");
    }
}

pub async fn newest_first(store: &Arc<dyn PlanStore>) {
    let before: Vec<String> = store
        .operations()
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.id)
        .collect();
    // Created out of order; "created" decides.
    for (id, secs) in [("op-mid", 200), ("op-new", 300), ("op-old", 100)] {
        store
            .create_operation(&plan(id, t0() + ChronoDuration::days(1000 + secs)))
            .await
            .unwrap();
    }
    let ops = store.operations().await.unwrap();
    let ids: Vec<&str> = ops.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(&ids[..3], ["op-new", "op-mid", "op-old"]);
    assert_eq!(ops.len(), before.len() + 3);
    for w in ops.windows(2) {
        assert!(w[0].created >= w[1].created, "newest first: {ids:?}");
    }
}

pub async fn lock(store: &Arc<dyn PlanStore>) {
    assert!(store.lock_holder().await.unwrap().is_none());
    store.claim_lock("op-a", &actor(10)).await.unwrap();
    store.claim_lock("op-a", &actor(11)).await.unwrap();
    let holder = store.lock_holder().await.unwrap().unwrap();
    assert_eq!(holder.operation_id, "op-a");
    assert_eq!(holder.actor, actor(10), "taking it again keeps the holder");
    match store.claim_lock("op-b", &actor(12)).await.unwrap_err() {
        StoreError::Locked(info) => {
            assert_eq!(info.operation_id, "op-a");
            assert_eq!(info.actor, actor(10));
        }
        other => panic!("expected Locked, got {other}"),
    }
    store.release_lock("op-b").await.unwrap();
    assert_eq!(
        store.lock_holder().await.unwrap().unwrap().operation_id,
        "op-a",
        "releasing for another operation does nothing"
    );
    store.release_lock("op-a").await.unwrap();
    assert!(store.lock_holder().await.unwrap().is_none());
    store.release_lock("op-a").await.unwrap();

    // Racing claims for different operations: exactly one wins.
    let results = join_all((0..12u32).map(|i| {
        let store = store.clone();
        async move { store.claim_lock(&format!("op-{i}"), &actor(i)).await }
    }))
    .await;
    let winners: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let holder = store.lock_holder().await.unwrap().unwrap();
    assert_eq!(holder.operation_id, format!("op-{}", winners[0]));
    for (i, r) in results.iter().enumerate() {
        if i != winners[0] {
            assert!(
                matches!(r, Err(StoreError::Locked(l)) if l.operation_id == holder.operation_id),
                "{r:?}"
            );
        }
    }
    store.release_lock(&holder.operation_id).await.unwrap();
    assert!(store.lock_holder().await.unwrap().is_none());
}

pub async fn group_commit(store: &Arc<dyn PlanStore>) {
    let id = "op-group";
    store.create_operation(&plan(id, t0())).await.unwrap();
    store
        .append(id, vec![nc("/last", PhaseState::Failed, None, 1)])
        .await
        .unwrap();

    // 50 concurrent unguarded appends: all succeed with distinct, dense seqs.
    let results = join_all((0..50u32).map(|i| {
        let store = store.clone();
        async move {
            store
                .append(
                    id,
                    vec![nc(
                        &format!("/init/n{}", i % 3),
                        PhaseState::ALL[i as usize % 5],
                        None,
                        100 + i,
                    )],
                )
                .await
        }
    }))
    .await;
    let mut seqs = Vec::new();
    for (i, r) in results.iter().enumerate() {
        let stored = r.as_ref().unwrap_or_else(|e| panic!("append {i}: {e}"));
        assert_eq!(stored.len(), 1);
        assert_eq!(
            stored[0].actor,
            actor(100 + i as u32),
            "each caller gets its own"
        );
        seqs.push(stored[0].seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (2..52).collect::<Vec<u64>>());
    let all = store.changes(id, 0).await.unwrap();
    assert_dense(&all);
    for r in &results {
        let c = &r.as_ref().unwrap()[0];
        assert_eq!(&all[c.seq as usize - 1], c);
    }

    // 50 concurrent guarded claims of the same phase at the same version:
    // exactly one wins, the others see its change.
    let version = all
        .iter()
        .rev()
        .find(|c| c.phase.as_str() == "/last")
        .unwrap()
        .seq;
    let results = join_all((0..50u32).map(|i| {
        let store = store.clone();
        async move {
            store
                .append(
                    id,
                    vec![nc("/last", PhaseState::InProgress, Some(version), 200 + i)],
                )
                .await
        }
    }))
    .await;
    let winners: Vec<&Vec<PhaseChange>> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "exactly one claim wins");
    let won = &winners[0][0];
    assert_eq!(won.seq, 52);
    for r in &results {
        if let Err(e) = r {
            match e {
                StoreError::Conflict {
                    actor: holder,
                    version,
                    state,
                    ..
                } => {
                    assert_eq!(holder, &won.actor);
                    assert_eq!(*version, won.seq);
                    assert_eq!(*state, PhaseState::InProgress);
                }
                other => panic!("expected a conflict, got {other}"),
            }
        }
    }
    let all = store.changes(id, 0).await.unwrap();
    assert_eq!(all.len(), 52);
    assert_dense(&all);

    // Mixed batches at once: guarded ones that fail must not disturb the
    // unguarded ones committed with them.
    let results = join_all((0..40u32).map(|i| {
        let store = store.clone();
        async move {
            let guard = if i % 2 == 0 { Some(1) } else { None };
            store
                .append(
                    id,
                    vec![
                        nc("/init/n0", PhaseState::Completed, None, 300 + i),
                        nc("/last", PhaseState::Completed, guard, 300 + i),
                    ],
                )
                .await
        }
    }))
    .await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 20, "the stale guards fail, the unguarded succeed");
    let all = store.changes(id, 0).await.unwrap();
    assert_eq!(all.len(), 52 + 40);
    assert_dense(&all);
    for (i, r) in results.iter().enumerate() {
        if let Ok(stored) = r {
            assert_eq!(stored.len(), 2);
            assert_eq!(stored[1].seq, stored[0].seq + 1, "a batch is contiguous");
            assert_eq!(stored[0].actor, actor(300 + i as u32));
        }
    }
}

pub async fn racing_creates(store: &Arc<dyn PlanStore>) {
    // The same id from many tasks at once: one wins, the rest are refused.
    let results = join_all((0..16).map(|i| {
        let store = store.clone();
        async move {
            let mut p = plan("op-race", t0());
            p.cluster_name = format!("cluster-{i}");
            (i, store.create_operation(&p).await)
        }
    }))
    .await;
    let winners: Vec<usize> = results
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for (_, r) in &results {
        if let Err(e) = r {
            assert!(matches!(e, StoreError::AlreadyExists(_)), "{e}");
        }
    }
    let stored = store.plan("op-race").await.unwrap();
    assert_eq!(stored.cluster_name, format!("cluster-{}", winners[0]));
    assert_eq!(
        store.operation("op-race").await.unwrap().cluster,
        stored.cluster_name,
        "operation and plan come from the same create"
    );

    // Many different ids at once: all succeed.
    let results = join_all((0..24).map(|i| {
        let store = store.clone();
        async move {
            store
                .create_operation(&plan(&format!("op-many-{i}"), t0()))
                .await
        }
    }))
    .await;
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    let ops = store.operations().await.unwrap();
    for i in 0..24 {
        assert!(ops.iter().any(|o| o.id == format!("op-many-{i}")));
    }
}

/// `entry` as another store holding it would have it: same everything but
/// the sequence number.
pub fn same_entry(a: &PhaseChange, b: &PhaseChange) -> bool {
    PhaseChange {
        seq: 0,
        ..a.clone()
    } == PhaseChange {
        seq: 0,
        ..b.clone()
    }
}

/// An entry made by another store (its own numbering, time and actor).
pub fn foreign(seq: u64, phase: &str, state: PhaseState, secs: i64, pid: u32) -> PhaseChange {
    PhaseChange {
        seq,
        id: uuid::Uuid::new_v4(),
        phase: PhasePath::parse(phase).unwrap(),
        state,
        time: t0() + ChronoDuration::seconds(secs),
        error: (state == PhaseState::Failed).then(|| format!("failed elsewhere by {pid}")),
        actor: actor(pid),
    }
}

pub async fn import(store: &Arc<dyn PlanStore>) {
    let id = "op-import";
    store.create_operation(&plan(id, t0())).await.unwrap();
    let own = store
        .append(id, vec![nc("/init/n0", PhaseState::InProgress, Some(0), 1)])
        .await
        .unwrap();
    let theirs = vec![
        foreign(100, "/init/n1", PhaseState::InProgress, 10, 500),
        foreign(101, "/init/n1", PhaseState::Completed, 11, 500),
        foreign(7, "/init/n2", PhaseState::Failed, 12, 501),
        foreign(102, "/last", PhaseState::InProgress, 13, 502),
    ];

    // Imported entries keep everything but their number, and are numbered
    // after what the store has, in the order given.
    let got = store
        .import_changes(id, theirs[..3].to_vec())
        .await
        .unwrap();
    assert_eq!(got.len(), 3);
    for (k, c) in got.iter().enumerate() {
        assert_eq!(c.seq, 2 + k as u64);
        assert!(same_entry(c, &theirs[k]), "{c:?} vs {:?}", theirs[k]);
    }
    assert_eq!(got[2].error.as_deref(), Some("failed elsewhere by 501"));

    // Importing again stores only what is new.
    let again = store.import_changes(id, theirs.clone()).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].seq, 5);
    assert!(same_entry(&again[0], &theirs[3]));

    // Entries made here and duplicates within one batch are skipped.
    let dup = foreign(1, "/init/n0", PhaseState::Completed, 14, 503);
    let got = store
        .import_changes(id, vec![own[0].clone(), dup.clone(), dup.clone()])
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].seq, 6);
    assert!(
        store
            .import_changes(id, theirs.clone())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .import_changes(id, Vec::new())
            .await
            .unwrap()
            .is_empty()
    );

    // Guards are checked against imported entries like any other.
    let err = store
        .append(id, vec![nc("/init/n1", PhaseState::InProgress, Some(2), 2)])
        .await
        .unwrap_err();
    match err {
        StoreError::Conflict {
            version,
            state,
            actor: holder,
            ..
        } => {
            assert_eq!((version, state), (3, PhaseState::Completed));
            assert_eq!(holder, actor(500));
        }
        other => panic!("expected a conflict, got {other}"),
    }
    let next = store
        .append(id, vec![nc("/init/n1", PhaseState::InProgress, Some(3), 2)])
        .await
        .unwrap();
    assert_eq!(
        next[0].seq, 7,
        "failed appends and empty imports use no numbers"
    );

    // Many tasks importing the same entries at once store each once.
    let many: Vec<PhaseChange> = (0..20)
        .map(|i| {
            foreign(
                i,
                "/last",
                PhaseState::ALL[i as usize % 5],
                20 + i as i64,
                600,
            )
        })
        .collect();
    let results = join_all((0..12usize).map(|k| {
        let store = store.clone();
        let mut mine = many.clone();
        mine.rotate_left(k % 3);
        async move { store.import_changes(id, mine).await }
    }))
    .await;
    let stored: usize = results.iter().map(|r| r.as_ref().unwrap().len()).sum();
    assert_eq!(stored, 20, "each entry is stored exactly once");
    let all = store.changes(id, 0).await.unwrap();
    assert_dense(&all);
    assert_eq!(all.len(), 27);
    for e in &many {
        assert_eq!(all.iter().filter(|c| c.id == e.id).count(), 1);
    }
    for r in &results {
        for c in r.as_ref().unwrap() {
            assert_eq!(
                &all[c.seq as usize - 1],
                c,
                "changes() returns imports as stored"
            );
        }
    }

    // A copy in another store converges by importing in sequence order and
    // resolves to the same latest entry per phase.
    let copy = MemoryStore::new();
    copy.create_operation(&store.plan(id).await.unwrap())
        .await
        .unwrap();
    copy.import_changes(id, all.clone()).await.unwrap();
    assert_eq!(copy.changes(id, 0).await.unwrap(), all);
}

//! End-to-end tests of the local package store.

mod common;

use std::fs;
use std::io::Read;

use gravity_pack::pull::PullOptions;
use gravity_pack::store::Problem;
use gravity_pack::{
    Digest, Labels, LocalStore, Locator, NoProgress, PackError, PackageOptions, PackageStore,
    WriteMode, pull, resolve,
};
use proptest::prelude::*;

fn loc(s: &str) -> Locator {
    Locator::parse(s).unwrap()
}

fn store() -> (tempfile::TempDir, LocalStore) {
    let d = tempfile::tempdir().unwrap();
    let s = LocalStore::open(d.path().join("store")).unwrap();
    (d, s)
}

fn read_all(s: &LocalStore, l: &Locator) -> Result<Vec<u8>, PackError> {
    let (_, mut r) = s.read(l)?;
    let mut out = Vec::new();
    r.read_to_end(&mut out)
        .map_err(|e| PackError::from_io("read", e))?;
    Ok(out)
}

#[test]
fn create_read_and_already_exists_leaves_no_orphan() {
    let (_d, s) = store();
    let a = loc("gravitational.io/planet:5.5.54-11312");
    let env = s
        .create(
            &a,
            &mut &b"planet"[..],
            PackageOptions::labels(Labels::parse("purpose:runtime").unwrap()),
        )
        .unwrap();
    assert_eq!(env.sha256, Digest::of(b"planet"));
    assert_eq!(read_all(&s, &a).unwrap(), b"planet");
    let e = s.create(&a, &mut &b"other content"[..], PackageOptions::default());
    assert!(
        matches!(e, Err(PackError::AlreadyExists(ref l)) if **l == a),
        "{e:?}"
    );
    assert_eq!(s.blobs().list().unwrap().len(), 1, "no orphan blob");
    assert!(matches!(
        s.envelope(&loc("x.io/y:1.0.0")),
        Err(PackError::NotFound(_))
    ));
}

#[test]
fn upsert_frees_the_replaced_blob() {
    let (_d, s) = store();
    let a = loc("example.com/cfg:1.0.0");
    s.create(&a, &mut &b"v1"[..], PackageOptions::default())
        .unwrap();
    s.upsert(&a, &mut &b"v2"[..], PackageOptions::default())
        .unwrap();
    assert_eq!(read_all(&s, &a).unwrap(), b"v2");
    assert_eq!(s.blobs().list().unwrap(), vec![(Digest::of(b"v2"), 2)]);
    assert!(s.verify(&NoProgress).unwrap().is_ok());
}

#[test]
fn shared_blob_is_removed_with_its_last_package() {
    let (_d, s) = store();
    let a = loc("example.com/a:1.0.0");
    let b = loc("example.com/b:1.0.0");
    s.create(&a, &mut &b"same"[..], PackageOptions::default())
        .unwrap();
    s.create(&b, &mut &b"same"[..], PackageOptions::default())
        .unwrap();
    assert_eq!(s.blobs().list().unwrap().len(), 1, "stored once");
    s.delete(&a).unwrap();
    assert_eq!(read_all(&s, &b).unwrap(), b"same");
    s.delete(&b).unwrap();
    assert!(s.blobs().list().unwrap().is_empty());
    assert!(matches!(s.delete(&b), Err(PackError::NotFound(_))));
    assert!(s.verify(&NoProgress).unwrap().is_ok());
}

#[test]
fn labels_update_in_one_step() {
    let (_d, s) = store();
    let a = loc("gravitational.io/gravity:5.5.46");
    s.create(
        &a,
        &mut &b"g"[..],
        PackageOptions::labels(Labels::parse("installed:installed").unwrap()),
    )
    .unwrap();
    let e = s
        .update_labels(
            &a,
            &Labels::parse("purpose:runtime").unwrap(),
            &["installed".to_string()],
        )
        .unwrap();
    assert_eq!(e.labels.to_string(), "purpose:runtime");
    assert_eq!(
        s.envelope(&a).unwrap().labels.to_string(),
        "purpose:runtime"
    );
    assert!(matches!(
        s.update_labels(&loc("x.io/y:1.0.0"), &Labels::new(), &[]),
        Err(PackError::NotFound(_))
    ));
    assert_eq!(
        s.find_by_labels(None, &Labels::parse("purpose:runtime").unwrap())
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn latest_and_versions_in_precedence_order() {
    let (_d, s) = store();
    for v in [
        "5.5.50-dev.10",
        "5.5.47-11312",
        "5.5.50",
        "5.5.50-dev.9",
        "10.0.0-rc.1",
        "9.0.0",
    ] {
        s.create(
            &loc(&format!("gravitational.io/planet:{v}")),
            &mut v.as_bytes(),
            PackageOptions::default(),
        )
        .unwrap();
    }
    s.create(
        &loc("gravitational.io/planetx:99.0.0"),
        &mut &b"x"[..],
        PackageOptions::default(),
    )
    .unwrap();
    s.create(
        &loc("gravitational.io/plane:99.0.0"),
        &mut &b"y"[..],
        PackageOptions::default(),
    )
    .unwrap();
    let vs: Vec<String> = s
        .versions("gravitational.io", "planet")
        .unwrap()
        .into_iter()
        .map(|e| e.locator.version().to_string())
        .collect();
    assert_eq!(
        vs,
        [
            "5.5.47-11312",
            "5.5.50-dev.9",
            "5.5.50-dev.10",
            "5.5.50",
            "9.0.0",
            "10.0.0-rc.1"
        ]
    );
    assert_eq!(
        s.latest("gravitational.io", "planet")
            .unwrap()
            .unwrap()
            .locator
            .to_string(),
        "gravitational.io/planet:10.0.0-rc.1"
    );
    assert!(s.latest("gravitational.io", "nope").unwrap().is_none());
    assert_eq!(
        resolve(&s, "gravitational.io/planet").unwrap().to_string(),
        "gravitational.io/planet:10.0.0-rc.1"
    );
    assert_eq!(
        resolve(&s, "gravitational.io/planet:0.0.0+latest")
            .unwrap()
            .to_string(),
        "gravitational.io/planet:10.0.0-rc.1"
    );
    assert_eq!(
        s.repositories().unwrap(),
        vec!["gravitational.io".to_string()]
    );
}

#[test]
fn repositories_skip_scan() {
    let (_d, s) = store();
    for l in [
        "a.io/x:1.0.0",
        "a.io/y:1.0.0",
        "b.io/x:1.0.0",
        "b.io/x:2.0.0",
        "ab.io/z:1.0.0",
    ] {
        s.create(&loc(l), &mut l.as_bytes(), PackageOptions::default())
            .unwrap();
    }
    assert_eq!(s.repositories().unwrap(), ["a.io", "ab.io", "b.io"]);
    assert_eq!(s.list(Some("a.io")).unwrap().len(), 2);
    assert_eq!(s.list(Some("b.io")).unwrap().len(), 2);
    assert!(s.list(Some("c.io")).unwrap().is_empty());
}

#[test]
fn corrupted_blob_is_reported_by_read_and_verify() {
    let (_d, s) = store();
    let a = loc("gravitational.io/teleport:3.0.5");
    let b = loc("gravitational.io/teleport-copy:3.0.5");
    let c = loc("gravitational.io/gone:1.0.0");
    let data = common::content("teleport", 300_000);
    let env = s
        .create(&a, &mut data.as_slice(), PackageOptions::default())
        .unwrap();
    s.create(&b, &mut data.as_slice(), PackageOptions::default())
        .unwrap();
    let gone = s
        .create(&c, &mut &b"gone"[..], PackageOptions::default())
        .unwrap();
    // Flip one byte in the middle of the blob.
    let path = s.blobs().path(&env.sha256);
    let mut bytes = fs::read(&path).unwrap();
    bytes[150_000] ^= 1;
    fs::write(&path, &bytes).unwrap();
    fs::remove_file(s.blobs().path(&gone.sha256)).unwrap();

    let e = read_all(&s, &a).unwrap_err();
    assert!(
        matches!(e, PackError::CorruptBlob { digest, .. } if digest == env.sha256),
        "{e}"
    );
    assert!(matches!(
        read_all(&s, &c),
        Err(PackError::MissingBlob { .. })
    ));

    let report = s.verify(&NoProgress).unwrap();
    assert!(!report.is_ok());
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    assert!(report.problems.iter().any(|p| matches!(p,
        Problem::CorruptBlob { digest, packages, .. } if *digest == env.sha256 && packages.len() == 2)));
    assert!(report.problems.iter().any(|p| matches!(p,
        Problem::MissingBlob { digest, packages } if *digest == gone.sha256 && packages == &vec![c.clone()])));
    let text: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    assert!(
        text.iter()
            .any(|t| t.contains(&env.sha256.to_hex()) && t.contains("teleport-copy:3.0.5"))
    );
}

#[test]
fn gc_removes_only_unreferenced_blobs() {
    let (_d, s) = store();
    s.create(
        &loc("a.io/x:1.0.0"),
        &mut &b"kept"[..],
        PackageOptions::default(),
    )
    .unwrap();
    // A blob written without metadata, as a crash before commit leaves it.
    let orphan = s.blobs().write(&mut &b"orphan"[..]).unwrap();
    let r = s.verify(&NoProgress).unwrap();
    assert!(r.is_ok());
    assert_eq!(r.unreferenced, vec![orphan.digest]);
    let g = s.gc().unwrap();
    assert_eq!(g.removed, vec![(orphan.digest, 6)]);
    assert_eq!(s.blobs().list().unwrap(), vec![(Digest::of(b"kept"), 4)]);
}

#[test]
fn second_opener_gets_a_clear_error() {
    let (d, s) = store();
    let e = LocalStore::open(d.path().join("store")).unwrap_err();
    assert!(matches!(e, PackError::Locked { .. }), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("pid {}", std::process::id())),
        "{e}"
    );
    drop(s);
    LocalStore::open(d.path().join("store")).unwrap();
}

#[test]
fn pull_transfers_only_missing_blobs() {
    let (_d1, cluster) = store();
    let (_d2, node) = store();
    let p1 = loc("gravitational.io/planet:5.5.54-11312");
    let p2 = loc("gravitational.io/planet-alias:5.5.54-11312");
    let t = loc("gravitational.io/teleport:3.0.5");
    let big = common::content("planet", 100_000);
    cluster
        .create(
            &p1,
            &mut big.as_slice(),
            PackageOptions::labels(Labels::parse("purpose:runtime").unwrap()),
        )
        .unwrap();
    cluster
        .create(&p2, &mut big.as_slice(), PackageOptions::default())
        .unwrap();
    cluster
        .create(&t, &mut &b"teleport"[..], PackageOptions::default())
        .unwrap();
    node.create(&t, &mut &b"teleport"[..], PackageOptions::default())
        .unwrap();

    let opts = PullOptions {
        add_labels: Labels::parse("installed:installed").unwrap(),
        ..Default::default()
    };
    let r = pull(
        &cluster,
        &node,
        &[p1.clone(), p2.clone(), t.clone()],
        &opts,
        &NoProgress,
    )
    .unwrap();
    assert_eq!(r.skipped, vec![t.clone()]);
    assert_eq!(r.copied.len(), 2);
    assert_eq!(r.copied[0].bytes_transferred, 100_000);
    assert_eq!(
        r.copied[1].bytes_transferred, 0,
        "blob already pulled with p1"
    );
    assert_eq!(
        node.envelope(&p1).unwrap().labels.to_string(),
        "installed:installed,purpose:runtime"
    );
    assert_eq!(
        node.envelope(&p1).unwrap().created,
        cluster.envelope(&p1).unwrap().created
    );
    let again = pull(
        &cluster,
        &node,
        std::slice::from_ref(&p1),
        &PullOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(again.skipped, vec![p1.clone()]);

    // Different content under the same locator is a conflict unless forced.
    let c = loc("example.com/cfg:1.0.0");
    cluster
        .create(&c, &mut &b"new"[..], PackageOptions::default())
        .unwrap();
    node.create(&c, &mut &b"old"[..], PackageOptions::default())
        .unwrap();
    assert!(matches!(
        pull(
            &cluster,
            &node,
            std::slice::from_ref(&c),
            &PullOptions::default(),
            &NoProgress
        ),
        Err(PackError::Conflict { .. })
    ));
    let forced = PullOptions {
        mode: WriteMode::Upsert,
        ..Default::default()
    };
    pull(
        &cluster,
        &node,
        std::slice::from_ref(&c),
        &forced,
        &NoProgress,
    )
    .unwrap();
    assert_eq!(read_all(&node, &c).unwrap(), b"new");
    assert!(node.verify(&NoProgress).unwrap().is_ok());
    assert_eq!(
        node.verify(&NoProgress).unwrap().unreferenced,
        vec![],
        "old blob freed"
    );
}

#[test]
fn put_refuses_content_that_does_not_match() {
    let (_d, s) = store();
    let (_d2, src) = store();
    let env = src
        .create(
            &loc("a.io/x:1.0.0"),
            &mut &b"real"[..],
            PackageOptions::default(),
        )
        .unwrap();
    let e = s
        .put(&env, Some(&mut &b"fake"[..]), WriteMode::Create)
        .unwrap_err();
    assert!(matches!(e, PackError::ContentMismatch { .. }), "{e}");
    let e = s.put(&env, None, WriteMode::Create).unwrap_err();
    assert!(matches!(e, PackError::MissingBlob { .. }), "{e}");
    assert!(s.list(None).unwrap().is_empty());
    assert!(s.blobs().list().unwrap().is_empty());
}

#[derive(Debug, Clone)]
enum Op {
    Create(u8, u8),
    Upsert(u8, u8),
    Delete(u8),
    Label(u8, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6, 0u8..4).prop_map(|(p, c)| Op::Create(p, c)),
        (0u8..6, 0u8..4).prop_map(|(p, c)| Op::Upsert(p, c)),
        (0u8..6).prop_map(Op::Delete),
        (0u8..6, 0u8..3).prop_map(|(p, v)| Op::Label(p, v)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Random operations against a model: the listing, contents and blob
    /// set always match, and verify finds nothing wrong.
    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..30)) {
        let (_d, s) = store();
        let mut model: std::collections::BTreeMap<Locator, (Vec<u8>, String)> = Default::default();
        let name = |p: u8| loc(&format!("r{}.io/p{}:1.0.{}", p % 2, p % 3, p));
        let data = |c: u8| format!("content-{c}").into_bytes();
        for o in ops {
            match o {
                Op::Create(p, c) => {
                    let r = s.create(&name(p), &mut data(c).as_slice(), PackageOptions::default());
                    match model.entry(name(p)) {
                        std::collections::btree_map::Entry::Occupied(_) => {
                            prop_assert!(matches!(r, Err(PackError::AlreadyExists(_))));
                        }
                        std::collections::btree_map::Entry::Vacant(v) => {
                            r.unwrap();
                            v.insert((data(c), String::new()));
                        }
                    }
                }
                Op::Upsert(p, c) => {
                    s.upsert(&name(p), &mut data(c).as_slice(), PackageOptions::default()).unwrap();
                    model.insert(name(p), (data(c), String::new()));
                }
                Op::Delete(p) => {
                    let r = s.delete(&name(p));
                    prop_assert_eq!(r.is_ok(), model.remove(&name(p)).is_some());
                }
                Op::Label(p, v) => {
                    let r = s.update_labels(&name(p), &Labels::parse(&format!("k:{v}")).unwrap(), &[]);
                    match model.get_mut(&name(p)) {
                        Some(m) => { r.unwrap(); m.1 = format!("k:{v}"); }
                        None => prop_assert!(r.is_err()),
                    }
                }
            }
        }
        let listed: Vec<(Locator, String)> = s.list(None).unwrap().into_iter().map(|e| (e.locator, e.labels.to_string())).collect();
        let expected: Vec<(Locator, String)> = model.iter().map(|(l, (_, lab))| (l.clone(), lab.clone())).collect();
        prop_assert_eq!(listed, expected);
        for (l, (d, _)) in &model {
            prop_assert_eq!(&read_all(&s, l).unwrap(), d);
        }
        let blobs: std::collections::BTreeSet<Digest> = s.blobs().list().unwrap().into_iter().map(|(d, _)| d).collect();
        let want: std::collections::BTreeSet<Digest> = model.values().map(|(d, _)| Digest::of(d)).collect();
        prop_assert_eq!(blobs, want);
        let r = s.verify(&NoProgress).unwrap();
        prop_assert!(r.is_ok(), "{:?}", r.problems);
    }
}

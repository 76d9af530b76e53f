//! `gravity package list` against the seed's listings: node store, cluster
//! store, and the cluster store after uploading the 5.5.50-dev.9 image.

mod common;

use common::*;
use gravity_pack::image::{ImageSpec, ImportOptions, export_image, import_image};
use gravity_pack::location::{StoreSelector, open_store};
use gravity_pack::{NoProgress, PackageStore, PutOutcome, render_list};

const NODE_BEFORE: &str = include_str!("fixtures/seed_node_before.txt");
const NODE_AFTER: &str = include_str!("fixtures/seed_node_after.txt");
const CLUSTER_BEFORE: &str = include_str!("fixtures/seed_cluster_before.txt");
const CLUSTER_AFTER: &str = include_str!("fixtures/seed_cluster_after.txt");

#[test]
fn listings_match_the_seed_before_and_after_upload() {
    let state = tempfile::tempdir().unwrap();
    let node = open_store(state.path(), &StoreSelector::LocalNode).unwrap();
    let cluster = open_store(state.path(), &StoreSelector::Cluster).unwrap();
    fill(&node, &parse_seed(NODE_BEFORE));
    fill(&cluster, &parse_seed(CLUSTER_BEFORE));

    let node_text = render_list(&node.list(None).unwrap());
    assert_eq!(node_text, expected_listing(NODE_BEFORE));
    insta::assert_snapshot!("node_store", node_text);
    assert_eq!(
        render_list(&cluster.list(None).unwrap()),
        expected_listing(CLUSTER_BEFORE)
    );
    // One repository only.
    assert_eq!(
        render_list(&cluster.list(Some("gravitational.io")).unwrap()),
        expected_listing(&CLUSTER_BEFORE[CLUSTER_BEFORE.find("\n[gravitational.io]").unwrap()..])
    );

    // Build the upgrade image in a build store: every gravitational.io
    // package of the after-listing that is not an old version.
    let before: Vec<String> = parse_seed(CLUSTER_BEFORE)
        .iter()
        .map(|l| l.locator.to_string())
        .collect();
    let after = parse_seed(CLUSTER_AFTER);
    let old_versions = [
        "gravity:5.5.46",
        "kubernetes:5.5.46",
        "logging-app:5.0.2",
        "monitoring-app:5.5.16",
        "planet:5.5.47-11312",
        "rbac-app:5.5.46",
        "site:5.5.46",
        "telekube:5.5.46",
        "web-assets:5.5.46",
    ];
    let image_lines: Vec<_> = after
        .into_iter()
        .filter(|l| l.locator.repository() == "gravitational.io")
        .filter(|l| {
            !old_versions
                .iter()
                .any(|o| l.locator.to_string().ends_with(o))
        })
        .collect();
    let build_dir = tempfile::tempdir().unwrap();
    let build = gravity_pack::LocalStore::open(build_dir.path()).unwrap();
    fill(&build, &image_lines);
    let app = gravity_pack::Locator::parse("gravitational.io/telekube:5.5.50-dev.9").unwrap();
    let spec = ImageSpec {
        application: app.clone(),
        packages: image_lines.iter().map(|l| l.locator.clone()).collect(),
        compress: false,
    };
    let image = build_dir.path().join("telekube.tar");
    export_image(&build, &spec, &image, &NoProgress).unwrap();

    let steps = std::sync::Mutex::new(Vec::new());
    let progress = |e: gravity_pack::ProgressEvent<'_>| {
        if let gravity_pack::ProgressEvent::Step(s) = e {
            steps.lock().unwrap().push(s.to_string());
        }
    };
    let report = import_image(&cluster, &image, ImportOptions::default(), &progress).unwrap();
    assert_eq!(
        steps.into_inner().unwrap(),
        vec!["Importing cluster image telekube v5.5.50-dev.9".to_string()]
    );
    // Packages the cluster already had (same locator, same content) were
    // neither re-sent nor changed.
    for (loc, outcome) in &report.packages {
        let had = before.contains(&loc.to_string());
        assert_eq!(*outcome == PutOutcome::Unchanged, had, "{loc}");
    }
    assert_eq!(
        report.blobs_present,
        report
            .packages
            .iter()
            .filter(|(_, o)| *o == PutOutcome::Unchanged)
            .count()
    );

    let cluster_text = render_list(&cluster.list(None).unwrap());
    assert_eq!(cluster_text, expected_listing(CLUSTER_AFTER));
    insta::assert_snapshot!("cluster_store_after_upload", cluster_text);
    // The node store is not touched by an upload.
    assert_eq!(
        render_list(&node.list(None).unwrap()),
        expected_listing(NODE_AFTER)
    );
    assert!(cluster.verify(&NoProgress).unwrap().is_ok());
}

//! The builder's plan for the seed's cluster must render exactly as the
//! seed's unstarted `gravity plan` table.

use std::path::PathBuf;

use gravity_plan::{PlanView, render};
use gravity_upgrade::executors::{self, EtcdData, SystemUpgradeData, decode};
use gravity_upgrade::{BuildOptions, Cluster, ClusterImage, build_plan, seed_plan};

fn fixture() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/seed_plan_unstarted.txt");
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn unstarted_table_equals_the_seed() {
    let plan = seed_plan(&BuildOptions::default()).unwrap();
    let graph = plan.graph().unwrap();
    let ours = render::text(&PlanView::new(graph));
    let seed = fixture();
    for (i, (a, b)) in ours.lines().zip(seed.lines()).enumerate() {
        assert_eq!(a, b, "line {}", i + 1);
    }
    assert_eq!(ours.lines().count(), seed.lines().count());
    assert_eq!(ours, seed);
}

#[test]
fn seed_plan_header_and_facts() {
    let plan = seed_plan(&BuildOptions::default()).unwrap();
    assert_eq!(plan.plan.operation_kind, "update");
    assert_eq!(plan.plan.cluster_name, "festivebrown4906");
    assert_eq!(plan.lead_master.as_ref().unwrap().hostname, "kevin-test1");
    assert_eq!(
        plan.gravity_package.to_string(),
        "gravitational.io/gravity:5.5.50-dev.9"
    );
    let names: Vec<_> = plan.runtime_updates.iter().map(|l| l.to_string()).collect();
    assert_eq!(
        names,
        [
            "gravitational.io/rbac-app:5.5.50-dev.9",
            "gravitational.io/logging-app:5.0.3",
            "gravitational.io/monitoring-app:5.5.21",
            "gravitational.io/site:5.5.50-dev.9",
            "gravitational.io/kubernetes:5.5.50-dev.9",
        ]
    );
    let etcd = plan.etcd.as_ref().unwrap();
    assert_eq!(etcd.description(), "Upgrade etcd 3.3.20 to 3.3.22");
}

#[test]
fn seed_phase_data_names_the_generated_packages() {
    let created = chrono::DateTime::from_timestamp(1_596_339_382, 0).unwrap();
    let opts = BuildOptions::deterministic("545e8faa-a249-4b79-9e4f-8035b0dcfcba", created);
    let plan = build_plan(&Cluster::seed(), &ClusterImage::seed_target(), &opts).unwrap();
    assert_eq!(
        plan.plan.operation_id,
        "545e8faa-a249-4b79-9e4f-8035b0dcfcba"
    );
    let graph = plan.graph().unwrap();
    let phase = |p: &str| graph.node(graph.find_str(p).unwrap()).phase.clone();

    let su = phase("/masters/kevin-test1/system-upgrade");
    assert_eq!(su.executor.as_deref(), Some(executors::UPDATE_SYSTEM));
    let d: SystemUpgradeData = decode(&su).unwrap();
    let rt = d.update.runtime.update.unwrap();
    // The names Gravity generated in the seed's node package store.
    assert_eq!(
        rt.config_package.to_string(),
        "festivebrown4906/planet-config-1016207festivebrown4906:5.5.54-11312+1596339382"
    );
    assert_eq!(
        d.update.runtime.secrets_package.unwrap().to_string(),
        "festivebrown4906/planet-10.162.0.7-secrets:5.5.54-11312+1596339382"
    );
    assert_eq!(
        rt.package.to_string(),
        "gravitational.io/planet:5.5.54-11312"
    );
    assert!(d.update.teleport.update.is_none(), "teleport stays 3.0.5");

    let shutdown1: EtcdData = decode(&phase("/etcd/shutdown/kevin-test1")).unwrap();
    let shutdown2: EtcdData = decode(&phase("/etcd/shutdown/kevin-test2")).unwrap();
    assert!(shutdown1.leader && !shutdown2.leader);
    assert_eq!(shutdown1.update.as_str(), "3.3.22");

    // The same inputs give the same plan.
    let again = build_plan(&Cluster::seed(), &ClusterImage::seed_target(), &opts).unwrap();
    assert_eq!(again.plan, plan.plan);
}

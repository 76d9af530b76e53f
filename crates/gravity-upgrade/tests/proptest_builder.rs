//! For random topologies the plan always builds a valid graph with the
//! invariants of spec §2.

use std::collections::HashMap;

use gravity_pack::{Locator, Version};
use gravity_plan::PlanGraph;
use gravity_upgrade::executors::{self, SystemUpgradeData, decode};
use gravity_upgrade::{BuildOptions, Cluster, ClusterImage, build_plan};
use proptest::prelude::*;

fn loc(s: &str) -> Locator {
    Locator::parse(s).unwrap()
}

/// (cluster, target): `taints` picks a runtime at/above 4.36.0 or below it;
/// `etcd_change` whether the target planet carries a newer etcd.
fn scenario(
    masters: usize,
    workers: usize,
    taints: bool,
    etcd_change: bool,
) -> (Cluster, ClusterImage) {
    let mut cluster = Cluster::synthetic(masters, workers);
    let mut target = ClusterImage::seed_target();
    if !taints {
        cluster.installed.app = loc("gravitational.io/telekube:4.30.0");
        cluster.installed.runtime_app = loc("gravitational.io/kubernetes:4.30.0");
        target.app = loc("gravitational.io/telekube:4.35.0");
        target.runtime_app = loc("gravitational.io/kubernetes:4.35.0");
    }
    if !etcd_change {
        target.etcd_version = cluster.installed.etcd_version.clone();
    }
    (cluster, target)
}

fn under(g: &PlanGraph, ancestor: usize, ix: usize) -> bool {
    g.contains(ancestor, ix)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn random_topologies_give_valid_plans(
        masters in 1usize..=7,
        workers in 0usize..=30,
        parallel in 1usize..=8,
        etcd_change: bool,
        taints: bool,
        leader_pick in 0usize..7,
    ) {
        let (cluster, target) = scenario(masters, workers, taints, etcd_change);
        let leader = cluster.nodes[leader_pick % masters].hostname.clone();
        let opts = BuildOptions::default()
            .with_parallel_workers(parallel)
            .with_leader(leader.clone());
        let plan = build_plan(&cluster, &target, &opts).unwrap();
        let g = plan.graph().unwrap();

        prop_assert_eq!(g.find_str("/etcd").is_some(), etcd_change);
        prop_assert_eq!(g.find_str("/nodes").is_some(), workers > 0);
        prop_assert_eq!(
            g.find_str(&format!("/masters/elect-{leader}")).is_some(),
            masters > 1
        );

        // Every node gets exactly one system upgrade, run on the node itself.
        let mut upgrades: HashMap<String, usize> = HashMap::new();
        let mut taint_phases = 0;
        for n in g.nodes() {
            let p = &n.phase;
            match p.executor.as_deref() {
                Some(executors::UPDATE_SYSTEM) => {
                    let d: SystemUpgradeData = decode(p).unwrap();
                    let exec = p.exec_node.as_ref().unwrap();
                    prop_assert_eq!(&exec.hostname, &d.update.server.hostname);
                    *upgrades.entry(exec.hostname.clone()).or_default() += 1;
                }
                // Kubernetes-side node phases run on the leader.
                Some(
                    executors::DRAIN_NODE
                    | executors::TAINT_NODE
                    | executors::UNTAINT_NODE
                    | executors::UNCORDON_NODE
                    | executors::ENDPOINTS,
                ) => {
                    prop_assert_eq!(&p.exec_node.as_ref().unwrap().hostname, &leader);
                    if p.executor.as_deref() == Some(executors::TAINT_NODE) {
                        taint_phases += 1;
                    }
                }
                _ => {}
            }
        }
        prop_assert_eq!(upgrades.len(), masters + workers);
        prop_assert!(upgrades.values().all(|&c| c == 1));
        prop_assert_eq!(taint_phases, if taints { masters + workers } else { 0 });

        // Workers can run in parallel: nothing in one worker's subtree
        // requires anything in another worker's subtree.
        if let Some(nodes) = g.find_str("/nodes") {
            prop_assert_eq!(g.node(nodes).phase.parallel, parallel);
            let ws = g.node(nodes).children.clone();
            prop_assert_eq!(ws.len(), workers);
            for &w in &ws {
                prop_assert!(g.node(w).phase.requires.is_empty());
                for d in g.descendants(w) {
                    for &r in &g.node(d).requires {
                        prop_assert!(under(&g, w, r), "{} requires {}", g.node(d).path(), g.node(r).path());
                    }
                }
            }
        }

        // The leader's phases come first.
        let masters_ix = g.find_str("/masters").unwrap();
        let first = g.node(masters_ix).children[0];
        prop_assert_eq!(g.node(first).path().name(), leader.as_str());
        let version = Version::parse("5.5.50-dev.9").unwrap();
        prop_assert_eq!(plan.gravity_package.version(), &version);
    }
}

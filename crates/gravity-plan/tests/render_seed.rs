//! The plan table must equal the seed's tables line for line.
//!
//! The fixtures are copied verbatim from `gravity-upgrade-training.md`.
//! For the mixed-state tables the changelog is rebuilt from the leaves'
//! rows (state and minute); composite states and times are derived by the
//! engine, so they check the precedence rules and the "updated" maximum.

use std::path::PathBuf;

use chrono::{NaiveDateTime, TimeZone, Utc};
use gravity_plan::render;
use gravity_plan::{
    Actor, PhaseChange, PhasePath, PhaseState, PlanDefinition, PlanGraph, PlanView,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn seed_plan() -> std::sync::Arc<PlanGraph> {
    let path = root().join("examples/plans/three-master-upgrade.yaml");
    let plan = PlanDefinition::from_file(&path)
        .unwrap()
        .into_plan("three-master-upgrade.yaml")
        .unwrap();
    PlanGraph::build(plan).unwrap()
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(root().join("tests/fixtures").join(name)).unwrap()
}

#[test]
fn unstarted_table_equals_the_seed() {
    let view = PlanView::new(seed_plan());
    let ours = render::text(&view);
    let seed = fixture("seed_plan_unstarted.txt");
    for (i, (a, b)) in ours.lines().zip(seed.lines()).enumerate() {
        assert_eq!(a, b, "line {}", i + 1);
    }
    assert_eq!(ours, seed);
}

/// Rebuilds a changelog from the leaf rows of a seed table.
fn changes_from_table(graph: &PlanGraph, table: &str) -> Vec<PhaseChange> {
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    let col = |name: &str| header.find(name).unwrap();
    let (state_col, node_col, updated_col) = (col("State"), col("Node"), col("Updated"));
    lines.next();
    let mut changes = Vec::new();
    // Rows are in pre-order, like the graph (index 0 is the root).
    for (i, line) in lines.enumerate() {
        let ix = i + 1;
        let node = graph.node(ix);
        if node.is_composite() {
            continue;
        }
        // Columns hold ASCII except the marker in the first column, so slice
        // by characters.
        let chars: Vec<char> = line.chars().collect();
        let cell = |a: usize, b: usize| {
            chars[a.min(chars.len())..b.min(chars.len())]
                .iter()
                .collect::<String>()
                .trim()
                .to_string()
        };
        let state = match cell(state_col, node_col).as_str() {
            "Unstarted" => continue,
            "In Progress" => PhaseState::InProgress,
            "Completed" => PhaseState::Completed,
            "Failed" => PhaseState::Failed,
            "Rolled Back" => PhaseState::RolledBack,
            other => panic!("unknown state {other:?}"),
        };
        let updated = cell(updated_col, chars.len());
        let t = NaiveDateTime::parse_from_str(&format!("2020 {updated}"), "%Y %a %b %e %H:%M UTC")
            .unwrap();
        changes.push((t, ix, state));
    }
    changes.sort_by_key(|(t, ix, _)| (*t, *ix));
    changes
        .into_iter()
        .enumerate()
        .map(|(i, (t, ix, state))| PhaseChange {
            seq: i as u64 + 1,
            id: Default::default(),
            phase: graph.node(ix).path().clone(),
            state,
            time: Utc.from_utc_datetime(&t),
            error: None,
            actor: Actor {
                host: "kevin-test1".into(),
                pid: 1,
            },
        })
        .collect()
}

#[test]
fn mixed_state_tables_equal_the_seed() {
    let graph = seed_plan();
    for name in [
        "seed_plan_node1_etcd_shutdown.txt",
        "seed_plan_node2_etcd_shutdown.txt",
        "seed_plan_node3_etcd_shutdown.txt",
    ] {
        let seed = fixture(name);
        let changes = changes_from_table(&graph, &seed);
        assert!(!changes.is_empty());
        let view = PlanView::resolve(graph.clone(), &changes);
        let ours = render::text(&view);
        for (i, (a, b)) in ours.lines().zip(seed.lines()).enumerate() {
            assert_eq!(a, b, "{name} line {}", i + 1);
        }
        assert_eq!(ours, seed, "{name}");
    }
}

#[test]
fn phase_paths_of_the_seed() {
    let graph = seed_plan();
    assert!(
        graph
            .find(&PhasePath::parse("/init/kevin-test1").unwrap())
            .is_some()
    );
    assert!(
        graph
            .find(&PhasePath::parse("/masters/kevin-test1/stepdown-kevin-test1").unwrap())
            .is_some()
    );
    assert_eq!(graph.leaves().len(), 58);
}

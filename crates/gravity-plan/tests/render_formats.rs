//! Snapshot tests of every `gravity plan` output format.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use gravity_plan::render;
use gravity_plan::{
    Actor, PhaseChange, PhasePath, PhaseState, PlanDefinition, PlanGraph, PlanView,
};

const PLAN: &str = r#"
operation_id: 6a7b0c1d-0000-4000-8000-000000000001
operation_kind: update
cluster_name: example.com
created: 2020-03-03T14:00:00Z
phases:
  - id: init
    description: Initialize update operation
    phases:
      - id: node-1
        description: Initialize node "node-1"
        executor: noop
        exec_node: {hostname: node-1, addr: 10.0.0.1}
      - id: node-2
        description: Initialize node "node-2"
        executor: noop
        exec_node: {hostname: node-2, addr: 10.0.0.2}
  - id: checks
    description: Run preflight checks
    requires: [/init]
    executor: noop
  - id: masters
    description: Update master nodes
    requires: [/checks]
    parallel: 2
    phases:
      - id: node-1
        description: Update node "node-1"
        executor: noop
        data: {drain_timeout: 5m}
      - id: node-2
        description: Update node "node-2"
        executor: noop
        requires: [/masters/node-1]
  - id: gc
    description: Run cleanup tasks
    requires: [/masters]
    executor: noop
"#;

fn view() -> PlanView {
    let plan = PlanDefinition::from_str_named(PLAN, "plan.yaml", false)
        .unwrap()
        .into_plan("plan.yaml")
        .unwrap();
    let graph: Arc<PlanGraph> = PlanGraph::build(plan).unwrap();
    let t = |m: u32| Utc.with_ymd_and_hms(2020, 3, 3, 14, m, 0).unwrap();
    let steps = [
        ("/init/node-1", PhaseState::InProgress, 5, None),
        ("/init/node-1", PhaseState::Completed, 5, None),
        ("/init/node-2", PhaseState::Completed, 6, None),
        ("/checks", PhaseState::Completed, 7, None),
        (
            "/masters/node-1",
            PhaseState::Failed,
            9,
            Some(
                "drain timed out: pod kube-system/coredns-1 is blocked by PodDisruptionBudget coredns",
            ),
        ),
        ("/masters/node-2", PhaseState::RolledBack, 10, None),
    ];
    let changes: Vec<PhaseChange> = steps
        .iter()
        .enumerate()
        .map(|(i, (p, s, m, e))| PhaseChange {
            seq: i as u64 + 1,
            id: Default::default(),
            phase: PhasePath::parse(p).unwrap(),
            state: *s,
            time: t(*m),
            error: e.map(str::to_string),
            actor: Actor {
                host: "node-1".into(),
                pid: 42,
            },
        })
        .collect();
    PlanView::resolve(graph, &changes)
}

#[test]
fn text() {
    let v = view();
    insta::assert_snapshot!(format!(
        "{}{}",
        render::text(&v),
        render::explain_failures(&v)
    ));
}

#[test]
fn short() {
    insta::assert_snapshot!(render::short(&view()));
}

#[test]
fn json() {
    let text = render::json(&view());
    // It parses back and carries the derived states.
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["state"], "failed");
    insta::assert_snapshot!(text);
}

#[test]
fn yaml() {
    insta::assert_snapshot!(render::yaml(&view()));
}

#[test]
fn dot() {
    insta::assert_snapshot!(render::dot(&view()));
}

#[test]
fn tail_lines() {
    let v = view();
    let c = PhaseChange {
        seq: 7,
        id: Default::default(),
        phase: PhasePath::parse("/masters/node-1").unwrap(),
        state: PhaseState::InProgress,
        time: Utc.with_ymd_and_hms(2020, 3, 3, 14, 11, 2).unwrap(),
        error: None,
        actor: Actor {
            host: "node-1".into(),
            pid: 42,
        },
    };
    assert_eq!(
        render::tail_line(&v, &c).unwrap(),
        "Tue Mar  3 14:11:02 UTC\t[  4/  6] Phase /masters/node-1 is in_progress"
    );
}

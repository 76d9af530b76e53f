//! Output formats of `gravity plan`: the text table, short, JSON, YAML and
//! a Graphviz graph. Every function returns text; nothing prints.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::graph::PhaseIx;
use crate::plan::Node;
use crate::state::{PhaseChange, PhaseState};
use crate::view::PlanView;
use crate::{PhaseData, PhasePath};

/// `Fri Jul 31 06:33 UTC` (day of month space-padded), as in the plan table.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.format("%a %b %e %H:%M UTC").to_string()
}

/// `Fri Jul 31 06:33:12 UTC`, as in progress lines.
pub fn format_time_seconds(t: DateTime<Utc>) -> String {
    t.format("%a %b %e %H:%M:%S UTC").to_string()
}

/// Lays out rows like Go's tabwriter with padding 5: every column but the
/// last is padded to its widest cell (in characters) plus five spaces; the
/// last is not padded, so no line has trailing spaces.
pub fn tabulate(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut widths = vec![0usize; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            line.push_str(c);
            if i + 1 < r.len() {
                let pad = widths[i] + 5 - c.chars().count();
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn header(names: &[&str]) -> [Vec<String>; 2] {
    [
        names.iter().map(|s| s.to_string()).collect(),
        names.iter().map(|s| "-".repeat(s.len())).collect(),
    ]
}

fn phase_cell(view: &PlanView, ix: PhaseIx, short: bool) -> String {
    let node = view.graph().node(ix);
    let state = view.state(ix);
    let marker = if short && state == PhaseState::RolledBack {
        '×'
    } else {
        state.marker()
    };
    let indent = "  ".repeat(node.depth.saturating_sub(1) as usize);
    format!("{indent}{marker} {}", node.path().name())
}

fn updated_cell(view: &PlanView, ix: PhaseIx) -> String {
    view.updated(ix)
        .map(format_time)
        .unwrap_or_else(|| "-".into())
}

/// The `gravity plan` table, exactly as in the seed:
/// `Phase Description State Node Requires Updated`.
pub fn text(view: &PlanView) -> String {
    let g = view.graph();
    let mut rows: Vec<Vec<String>> = header(&[
        "Phase",
        "Description",
        "State",
        "Node",
        "Requires",
        "Updated",
    ])
    .into();
    rows.reserve(g.len());
    for ix in 1..g.len() {
        let node = g.node(ix);
        let p = &node.phase;
        let requires = if p.requires.is_empty() {
            "-".to_string()
        } else {
            p.requires
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        rows.push(vec![
            phase_cell(view, ix, false),
            p.description.clone(),
            view.state(ix).display_name().to_string(),
            p.exec_node
                .as_ref()
                .map(|n| n.addr.clone())
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| "-".into()),
            requires,
            updated_cell(view, ix),
        ]);
    }
    tabulate(&rows)
}

/// The short table: `Phase State Updated` (rolled back shows `×`).
pub fn short(view: &PlanView) -> String {
    let g = view.graph();
    let mut rows: Vec<Vec<String>> = header(&["Phase", "State", "Updated"]).into();
    for ix in 1..g.len() {
        rows.push(vec![
            phase_cell(view, ix, true),
            view.state(ix).display_name().to_string(),
            updated_cell(view, ix),
        ]);
    }
    tabulate(&rows)
}

/// Explains each failed branch after a table:
/// `The /x phase ("…") has failed` and the recorded error, indented.
pub fn explain_failures(view: &PlanView) -> String {
    let mut out = String::new();
    for ix in view.failures() {
        let p = &view.graph().node(ix).phase;
        let _ = writeln!(out, "The {} phase ({:?}) has failed", p.id, p.description);
        if let Some(e) = view.error(ix) {
            for line in e.lines() {
                let _ = writeln!(out, "\t{line}");
            }
        }
    }
    out
}

/// A phase with its current state, for JSON and YAML output.
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedPhase {
    /// Path.
    pub id: PhasePath,
    /// Description.
    pub description: String,
    /// Executor kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executor: Option<String>,
    /// Node acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<Node>,
    /// Node run on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec_node: Option<Node>,
    /// Requirements.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<PhasePath>,
    /// Parallel limit.
    pub parallel: usize,
    /// Executor data.
    #[serde(skip_serializing_if = "PhaseData::is_null")]
    pub data: PhaseData,
    /// Effective state.
    pub state: PhaseState,
    /// Last change.
    pub updated: Option<DateTime<Utc>>,
    /// Recorded error (leaves).
    pub error: Option<String>,
    /// Children.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<ResolvedPhase>,
}

/// A plan with its current state, for JSON and YAML output.
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedPlan {
    /// Operation id.
    pub operation_id: String,
    /// Operation kind.
    pub operation_kind: String,
    /// Cluster.
    pub cluster_name: String,
    /// Created.
    pub created: DateTime<Utc>,
    /// State of the whole plan.
    pub state: PhaseState,
    /// Top-level phases.
    pub phases: Vec<ResolvedPhase>,
}

fn resolved_phase(view: &PlanView, ix: PhaseIx) -> ResolvedPhase {
    let node = view.graph().node(ix);
    let p = &node.phase;
    ResolvedPhase {
        id: p.id.clone(),
        description: p.description.clone(),
        executor: p.executor.clone(),
        node: p.node.clone(),
        exec_node: p.exec_node.clone(),
        requires: p.requires.clone(),
        parallel: p.parallel,
        data: p.data.clone(),
        state: view.state(ix),
        updated: view.updated(ix),
        error: view.error(ix).map(str::to_string),
        phases: node
            .children
            .iter()
            .map(|&c| resolved_phase(view, c))
            .collect(),
    }
}

/// The plan folded with its state, as a serializable tree.
pub fn resolved(view: &PlanView) -> ResolvedPlan {
    let h = view.graph().header();
    ResolvedPlan {
        operation_id: h.operation_id.clone(),
        operation_kind: h.operation_kind.clone(),
        cluster_name: h.cluster_name.clone(),
        created: h.created,
        state: view.state(0),
        phases: view
            .graph()
            .node(0)
            .children
            .iter()
            .map(|&c| resolved_phase(view, c))
            .collect(),
    }
}

/// Pretty JSON (two-space indent) of [`resolved`].
pub fn json(view: &PlanView) -> String {
    let mut s = serde_json::to_string_pretty(&resolved(view)).expect("serializable");
    s.push('\n');
    s
}

/// YAML of [`resolved`].
pub fn yaml(view: &PlanView) -> String {
    serde_yaml_ng::to_string(&resolved(view)).expect("serializable")
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn dot_colour(state: PhaseState) -> &'static str {
    match state {
        PhaseState::Unstarted => "white",
        PhaseState::InProgress => "lightskyblue",
        PhaseState::Completed => "palegreen",
        PhaseState::Failed => "salmon",
        PhaseState::RolledBack => "lightgrey",
    }
}

/// A Graphviz graph of the DAG: composites as clusters, leaves as boxes
/// filled by state, `requires` edges drawn from requirement to requirer.
pub fn dot(view: &PlanView) -> String {
    let g = view.graph();
    let mut out = String::new();
    let h = g.header();
    let _ = writeln!(out, "digraph \"{}\" {{", dot_escape(&h.operation_id));
    let _ = writeln!(out, "  compound=true;");
    let _ = writeln!(out, "  rankdir=TB;");
    let _ = writeln!(
        out,
        "  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\", fontsize=10];"
    );
    let _ = writeln!(out, "  edge [color=\"#1f4e9c\"];");
    fn emit(view: &PlanView, ix: PhaseIx, depth: usize, out: &mut String) {
        let g = view.graph();
        let node = g.node(ix);
        let pad = "  ".repeat(depth);
        let state = view.state(ix);
        let label = format!(
            "{}\\n{}\\n{}",
            dot_escape(node.path().name()),
            dot_escape(&node.phase.description),
            state.display_name()
        );
        if node.is_composite() {
            let _ = writeln!(
                out,
                "{pad}subgraph \"cluster_{}\" {{",
                dot_escape(node.path().as_str())
            );
            let _ = writeln!(out, "{pad}  label=\"{label}\";");
            let _ = writeln!(out, "{pad}  style=\"rounded,filled\";");
            let _ = writeln!(out, "{pad}  fillcolor=\"{}\";", dot_colour(state));
            // An invisible anchor so edges can point at the composite.
            let _ = writeln!(
                out,
                "{pad}  \"{}\" [shape=point, style=invis, width=0];",
                dot_escape(node.path().as_str())
            );
            for &c in &node.children {
                emit(view, c, depth + 1, out);
            }
            let _ = writeln!(out, "{pad}}}");
        } else {
            let _ = writeln!(
                out,
                "{pad}\"{}\" [label=\"{label}\", fillcolor=\"{}\"];",
                dot_escape(node.path().as_str()),
                dot_colour(state)
            );
        }
    }
    for &c in &g.node(0).children {
        emit(view, c, 1, &mut out);
    }
    for ix in 1..g.len() {
        let node = g.node(ix);
        for &r in &node.requires {
            let from = g.node(r);
            let mut attrs = Vec::new();
            if from.is_composite() {
                attrs.push(format!(
                    "ltail=\"cluster_{}\"",
                    dot_escape(from.path().as_str())
                ));
            }
            if node.is_composite() {
                attrs.push(format!(
                    "lhead=\"cluster_{}\"",
                    dot_escape(node.path().as_str())
                ));
            }
            let _ = writeln!(
                out,
                "  \"{}\" -> \"{}\"{};",
                dot_escape(from.path().as_str()),
                dot_escape(node.path().as_str()),
                if attrs.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", attrs.join(", "))
                }
            );
        }
    }
    out.push_str("}\n");
    out
}

/// One `--tail` line: `<time>\t[  3/ 42] Phase /x is in_progress`.
pub fn tail_line(view: &PlanView, change: &PhaseChange) -> Option<String> {
    let g = view.graph();
    let ix = g.find(&change.phase)?;
    let pos = g.leaves().binary_search(&ix).ok()?;
    Some(format!(
        "{}\t[{:>3}/{:>3}] Phase {} is {}",
        format_time_seconds(change.time),
        pos + 1,
        g.leaves().len(),
        change.phase,
        change.state
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tabulates_like_tabwriter() {
        let rows = vec![
            vec!["a".to_string(), "bb".into(), "c".into()],
            vec!["→ xx".to_string(), "".into(), "d".into()],
        ];
        assert_eq!(
            tabulate(&rows),
            format!("a        bb     c\n→ xx{}d\n", " ".repeat(12))
        );
    }

    #[test]
    fn formats_times_like_gravity() {
        let t = DateTime::parse_from_rfc3339("2020-08-02T03:40:04Z")
            .unwrap()
            .to_utc();
        assert_eq!(format_time(t), "Sun Aug  2 03:40 UTC");
        assert_eq!(format_time_seconds(t), "Sun Aug  2 03:40:04 UTC");
    }
}

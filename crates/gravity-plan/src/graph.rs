//! The plan indexed once into a DAG.
//!
//! Phases are numbered in pre-order (parent before children, document order),
//! index 0 being the root `/`. Because of the pre-order numbering the
//! descendants of phase `i` are exactly `i+1 .. subtree_end(i)`, so "is X
//! below Y" is two comparisons. Parent/child and `requires` edges are held
//! in a petgraph [`DiGraph`] (node `i` is phase `i`) and, for the hot paths,
//! in per-phase adjacency vectors.

use std::collections::HashMap;
use std::sync::Arc;

use petgraph::graph::{DiGraph, NodeIndex};

use crate::path::PhasePath;
use crate::plan::{Phase, Plan};

/// Index of a phase in a [`PlanGraph`] (pre-order; 0 is the root).
pub type PhaseIx = usize;

/// The kind of a DAG edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeKind {
    /// From a parent to a child.
    Child,
    /// From a phase to a phase it requires.
    Requires,
}

/// A phase with its position in the graph.
#[derive(Debug, Clone)]
pub struct PhaseNode {
    /// The phase itself (its `phases` list is empty here; see `children`).
    pub phase: Phase,
    /// Parent index (`None` for the root).
    pub parent: Option<PhaseIx>,
    /// Children in order.
    pub children: Vec<PhaseIx>,
    /// Phases this one requires.
    pub requires: Vec<PhaseIx>,
    /// Phases that require this one.
    pub required_by: Vec<PhaseIx>,
    /// Depth: 0 for the root, 1 for top-level phases.
    pub depth: u32,
    /// One past the last descendant's index.
    pub subtree_end: PhaseIx,
}

impl PhaseNode {
    /// The phase path.
    pub fn path(&self) -> &PhasePath {
        &self.phase.id
    }

    /// Whether the phase has children.
    pub fn is_composite(&self) -> bool {
        !self.children.is_empty()
    }
}

/// Why a plan could not be indexed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GraphError {
    /// Two phases share a path.
    #[error("phase {0} appears twice in the plan; every phase path must be unique")]
    Duplicate(PhasePath),
    /// A phase id is not directly below its parent.
    #[error("phase {child} is listed under {parent} but its path is not directly below it")]
    Misplaced {
        /// Parent.
        parent: PhasePath,
        /// Child.
        child: PhasePath,
    },
    /// A requirement names a phase that does not exist.
    #[error("phase {phase} requires {target}, which is not in the plan")]
    UnknownRequirement {
        /// The requiring phase.
        phase: PhasePath,
        /// The missing target.
        target: PhasePath,
    },
    /// A phase requires itself.
    #[error("phase {0} requires itself")]
    RequiresSelf(PhasePath),
    /// A phase requires one of its ancestors, which cannot complete before it.
    #[error(
        "phase {phase} requires its ancestor {target}, which cannot complete before {phase} does (cycle)"
    )]
    RequiresAncestor {
        /// The requiring phase.
        phase: PhasePath,
        /// The ancestor.
        target: PhasePath,
    },
    /// A phase requires one of its descendants, which cannot start before it.
    #[error(
        "phase {phase} requires its own subphase {target}, which cannot run before {phase} starts (cycle)"
    )]
    RequiresDescendant {
        /// The requiring phase.
        phase: PhasePath,
        /// The descendant.
        target: PhasePath,
    },
    /// The requirements form a cycle.
    #[error("the requirements between these phases form a cycle: {}", list(.0))]
    Cycle(Vec<PhasePath>),
}

fn list(paths: &[PhasePath]) -> String {
    const MAX: usize = 10;
    let mut s = paths
        .iter()
        .take(MAX)
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if paths.len() > MAX {
        s.push_str(&format!(" and {} more", paths.len() - MAX));
    }
    s
}

/// The hasher of the path index: foldhash is several times faster than
/// SipHash on short keys and still seeded per process.
type PathHasher = foldhash::fast::RandomState;

fn count_phases(phases: &[Phase]) -> usize {
    let mut n = 0;
    let mut stack: Vec<&[Phase]> = vec![phases];
    while let Some(list) = stack.pop() {
        n += list.len();
        for p in list {
            if !p.phases.is_empty() {
                stack.push(&p.phases);
            }
        }
    }
    n
}

/// Whether `child` is `parent` plus exactly one segment (no allocation).
fn is_child_path(parent: &str, child: &str) -> bool {
    let rest = if parent == "/" {
        child.strip_prefix('/')
    } else {
        child.strip_prefix(parent).and_then(|r| r.strip_prefix('/'))
    };
    rest.is_some_and(|r| !r.is_empty() && !r.contains('/'))
}

/// A plan indexed into a DAG. Built once, immutable, shared by reference.
#[derive(Debug)]
pub struct PlanGraph {
    header: Plan,
    nodes: Vec<PhaseNode>,
    index: HashMap<PhasePath, PhaseIx, PathHasher>,
    leaves: Vec<PhaseIx>,
    dag: DiGraph<(), EdgeKind, u32>,
}

impl PlanGraph {
    /// Indexes a plan, refusing duplicate paths, misplaced children, unknown
    /// requirements and cycles (including requirements on oneself, an
    /// ancestor or a descendant). Cost is linear in phases plus requirements.
    pub fn build(mut plan: Plan) -> Result<Arc<PlanGraph>, GraphError> {
        let top = std::mem::take(&mut plan.phases);
        let mut root = Phase::new(PhasePath::root(), "");
        root.phases = top;
        // Sized up front: growing vectors and maps of 100k+ entries would
        // copy them again and again.
        let total = 1 + count_phases(&root.phases);
        let mut nodes: Vec<PhaseNode> = Vec::with_capacity(total);
        let mut index: HashMap<PhasePath, PhaseIx, PathHasher> =
            HashMap::with_capacity_and_hasher(total, PathHasher::default());
        // Iterative pre-order flattening (no recursion: hostile depth is
        // bounded by the plan parser, but programmatic plans are not).
        let mut stack: Vec<(Phase, Option<PhaseIx>, u32)> = vec![(root, None, 0)];
        while let Some((mut phase, parent, depth)) = stack.pop() {
            let ix = nodes.len();
            if let Some(p) = parent {
                let parent_path = &nodes[p].phase.id;
                if !is_child_path(parent_path.as_str(), phase.id.as_str()) {
                    return Err(GraphError::Misplaced {
                        parent: parent_path.clone(),
                        child: phase.id.clone(),
                    });
                }
                nodes[p].children.push(ix);
            }
            if index.insert(phase.id.clone(), ix).is_some() {
                return Err(GraphError::Duplicate(phase.id.clone()));
            }
            let children = std::mem::take(&mut phase.phases);
            phase.parallel = phase.parallel.max(1);
            nodes.push(PhaseNode {
                phase,
                parent,
                children: Vec::with_capacity(children.len()),
                requires: Vec::new(),
                required_by: Vec::new(),
                depth,
                subtree_end: ix + 1,
            });
            for child in children.into_iter().rev() {
                stack.push((child, Some(ix), depth + 1));
            }
        }
        // Subtree ends: in pre-order a node's subtree ends where its last
        // child's subtree ends; fill from the back.
        for ix in (0..nodes.len()).rev() {
            if let Some(&last) = nodes[ix].children.last() {
                nodes[ix].subtree_end = nodes[last].subtree_end;
            }
        }
        // Requirements.
        for ix in 0..nodes.len() {
            for r in 0..nodes[ix].phase.requires.len() {
                let target = nodes[ix].phase.requires[r].clone();
                let Some(&t) = index.get(&target) else {
                    return Err(GraphError::UnknownRequirement {
                        phase: nodes[ix].phase.id.clone(),
                        target,
                    });
                };
                let phase = nodes[ix].phase.id.clone();
                if t == ix {
                    return Err(GraphError::RequiresSelf(phase));
                }
                if t < ix && ix < nodes[t].subtree_end {
                    return Err(GraphError::RequiresAncestor { phase, target });
                }
                if ix < t && t < nodes[ix].subtree_end {
                    return Err(GraphError::RequiresDescendant { phase, target });
                }
                if !nodes[ix].requires.contains(&t) {
                    nodes[ix].requires.push(t);
                    nodes[t].required_by.push(ix);
                }
            }
        }
        let leaves = (0..nodes.len())
            .filter(|&i| i != 0 && nodes[i].children.is_empty())
            .collect();
        let mut dag = DiGraph::with_capacity(nodes.len(), nodes.len() * 2);
        for _ in 0..nodes.len() {
            dag.add_node(());
        }
        for (ix, n) in nodes.iter().enumerate() {
            for &c in &n.children {
                dag.add_edge(NodeIndex::new(ix), NodeIndex::new(c), EdgeKind::Child);
            }
            for &r in &n.requires {
                dag.add_edge(NodeIndex::new(ix), NodeIndex::new(r), EdgeKind::Requires);
            }
        }
        let graph = PlanGraph {
            header: plan,
            nodes,
            index,
            leaves,
            dag,
        };
        graph.check_cycles()?;
        Ok(Arc::new(graph))
    }

    /// Cycle check on the "happens before" graph: every phase has a start
    /// and an end event; a parent starts before its children start and ends
    /// after they end; a requirement's end comes before the requirer's start.
    /// A cycle there is a plan that can never finish, including cycles that
    /// only appear through inherited requirements.
    fn check_cycles(&self) -> Result<(), GraphError> {
        let n = self.nodes.len();
        let start = |i: usize| NodeIndex::new(2 * i);
        let end = |i: usize| NodeIndex::new(2 * i + 1);
        let mut g: DiGraph<(), (), u32> = DiGraph::with_capacity(2 * n, 4 * n);
        for _ in 0..2 * n {
            g.add_node(());
        }
        for (ix, node) in self.nodes.iter().enumerate() {
            g.add_edge(start(ix), end(ix), ());
            for &c in &node.children {
                g.add_edge(start(ix), start(c), ());
                g.add_edge(end(c), end(ix), ());
            }
            for &r in &node.requires {
                g.add_edge(end(r), start(ix), ());
            }
        }
        if petgraph::algo::toposort(&g, None).is_ok() {
            return Ok(());
        }
        let mut phases: Vec<PhaseIx> = petgraph::algo::tarjan_scc(&g)
            .into_iter()
            .filter(|scc| scc.len() > 1)
            .flatten()
            .map(|v| v.index() / 2)
            .collect();
        phases.sort_unstable();
        phases.dedup();
        // Name the phases that carry a requirement inside the cycle: those
        // are the ones a person has to edit.
        let in_cycle: std::collections::HashSet<_> = phases.iter().copied().collect();
        let mut named: Vec<PhasePath> = phases
            .iter()
            .filter(|&&i| self.nodes[i].requires.iter().any(|r| in_cycle.contains(r)))
            .map(|&i| self.nodes[i].phase.id.clone())
            .collect();
        if named.is_empty() {
            named = phases
                .iter()
                .map(|&i| self.nodes[i].phase.id.clone())
                .collect();
        }
        Err(GraphError::Cycle(named))
    }

    /// The plan's header (id, kind, cluster, created); its `phases` is empty.
    pub fn header(&self) -> &Plan {
        &self.header
    }

    /// Number of phases including the root.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the plan has no phases besides the root.
    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }

    /// The root index (always 0).
    pub fn root(&self) -> PhaseIx {
        0
    }

    /// A phase by index.
    pub fn node(&self, ix: PhaseIx) -> &PhaseNode {
        &self.nodes[ix]
    }

    /// All phases in pre-order, the root first.
    pub fn nodes(&self) -> &[PhaseNode] {
        &self.nodes
    }

    /// Finds a phase by path.
    pub fn find(&self, path: &PhasePath) -> Option<PhaseIx> {
        self.index.get(path).copied()
    }

    /// Finds a phase by path text.
    pub fn find_str(&self, path: &str) -> Option<PhaseIx> {
        self.index.get(path).copied()
    }

    /// Leaves in document order.
    pub fn leaves(&self) -> &[PhaseIx] {
        &self.leaves
    }

    /// Strict ancestors, nearest first, ending with the root.
    pub fn ancestors(&self, ix: PhaseIx) -> impl Iterator<Item = PhaseIx> + '_ {
        std::iter::successors(self.nodes[ix].parent, |&p| self.nodes[p].parent)
    }

    /// Whether `a` is `b` or one of its ancestors.
    pub fn contains(&self, a: PhaseIx, b: PhaseIx) -> bool {
        a <= b && b < self.nodes[a].subtree_end
    }

    /// The descendants of a phase (pre-order), excluding itself.
    pub fn descendants(&self, ix: PhaseIx) -> std::ops::Range<PhaseIx> {
        ix + 1..self.nodes[ix].subtree_end
    }

    /// The petgraph DAG: node `i` is phase `i`; edges go from parent to
    /// child and from a phase to each phase it requires.
    pub fn dag(&self) -> &DiGraph<(), EdgeKind, u32> {
        &self.dag
    }

    /// Executor kinds used by leaves that `known` does not know, with the
    /// first phase using each.
    pub fn unknown_executors(&self, known: impl Fn(&str) -> bool) -> Vec<(String, PhasePath)> {
        let mut out: Vec<(String, PhasePath)> = Vec::new();
        for &l in &self.leaves {
            if let Some(kind) = &self.nodes[l].phase.executor
                && !known(kind)
                && !out.iter().any(|(k, _)| k == kind)
            {
                out.push((kind.clone(), self.nodes[l].phase.id.clone()));
            }
        }
        out
    }

    /// Rebuilds the phase tree (for serialization).
    pub fn to_plan(&self) -> Plan {
        let mut plan = self.header.clone();
        plan.phases = self.nodes[0]
            .children
            .iter()
            .map(|&c| self.subtree(c))
            .collect();
        plan
    }

    /// The phase at `ix` with its children filled in.
    pub fn subtree(&self, ix: PhaseIx) -> Phase {
        let mut p = self.nodes[ix].phase.clone();
        p.phases = self.nodes[ix]
            .children
            .iter()
            .map(|&c| self.subtree(c))
            .collect();
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn p(id: &str) -> Phase {
        let mut ph = Phase::new(PhasePath::parse(id).unwrap(), id);
        ph.executor = Some("noop".into());
        ph
    }

    fn req(mut ph: Phase, r: &[&str]) -> Phase {
        ph.requires = r.iter().map(|s| PhasePath::parse(s).unwrap()).collect();
        ph
    }

    fn kids(mut ph: Phase, c: Vec<Phase>) -> Phase {
        ph.phases = c;
        ph.executor = None;
        ph
    }

    fn plan(phases: Vec<Phase>) -> Plan {
        Plan {
            operation_id: "op".into(),
            operation_kind: "test".into(),
            cluster_name: "c".into(),
            created: DateTime::from_timestamp(0, 0).unwrap(),
            phases,
        }
    }

    #[test]
    fn indexes_in_preorder() {
        let g = PlanGraph::build(plan(vec![
            kids(p("/init"), vec![p("/init/a"), p("/init/b")]),
            req(p("/checks"), &["/init"]),
        ]))
        .unwrap();
        let paths: Vec<_> = g.nodes().iter().map(|n| n.path().as_str()).collect();
        assert_eq!(paths, ["/", "/init", "/init/a", "/init/b", "/checks"]);
        assert_eq!(g.leaves(), &[2, 3, 4]);
        assert_eq!(g.descendants(1), 2..4);
        assert!(g.contains(1, 3));
        assert!(!g.contains(1, 4));
        assert_eq!(g.ancestors(3).collect::<Vec<_>>(), [1, 0]);
        assert_eq!(g.node(1).required_by, [4]);
        assert_eq!(g.dag().edge_count(), 5);
        assert_eq!(g.to_plan().phases.len(), 2);
    }

    #[test]
    fn refuses_broken_plans() {
        let dup = PlanGraph::build(plan(vec![p("/a"), p("/a")])).unwrap_err();
        assert_eq!(dup, GraphError::Duplicate(PhasePath::parse("/a").unwrap()));
        let unknown = PlanGraph::build(plan(vec![req(p("/a"), &["/nope"])])).unwrap_err();
        assert!(matches!(unknown, GraphError::UnknownRequirement { .. }));
        let me = PlanGraph::build(plan(vec![req(p("/a"), &["/a"])])).unwrap_err();
        assert!(matches!(me, GraphError::RequiresSelf(_)));
        let anc =
            PlanGraph::build(plan(vec![kids(p("/a"), vec![req(p("/a/b"), &["/a"])])])).unwrap_err();
        assert!(matches!(anc, GraphError::RequiresAncestor { .. }));
        let desc = PlanGraph::build(plan(vec![req(kids(p("/a"), vec![p("/a/b")]), &["/a/b"])]))
            .unwrap_err();
        assert!(matches!(desc, GraphError::RequiresDescendant { .. }));
        let cyc =
            PlanGraph::build(plan(vec![req(p("/a"), &["/b"]), req(p("/b"), &["/a"])])).unwrap_err();
        assert_eq!(
            cyc.to_string(),
            "the requirements between these phases form a cycle: /a, /b"
        );
    }

    #[test]
    fn finds_cycles_through_inherited_requirements() {
        // /a requires /c, and /c/k requires /a/x: /a/x cannot start before
        // /c ends, and /c cannot end before /c/k, which needs /a/x.
        let err = PlanGraph::build(plan(vec![
            req(kids(p("/a"), vec![p("/a/x")]), &["/c"]),
            kids(p("/c"), vec![req(p("/c/k"), &["/a/x"])]),
        ]))
        .unwrap_err();
        assert!(matches!(err, GraphError::Cycle(_)), "{err}");
        // A feasible cross-branch order is accepted.
        PlanGraph::build(plan(vec![
            req(p("/a"), &["/b/y"]),
            kids(p("/b"), vec![p("/b/y"), req(p("/b/z"), &["/a"])]),
        ]))
        .unwrap();
    }
}

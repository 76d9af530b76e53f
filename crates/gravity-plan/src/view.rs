//! The current view of a plan: the plan folded with its changelog.
//!
//! Leaves take the state of their latest change (by sequence number).
//! Composites are derived from their children with Gravity's precedence
//! rules; each composite keeps per-state counts of its direct children, so
//! applying one change costs O(depth), and resolving a whole changelog costs
//! O(phases + changes). Gravity re-resolved the whole plan from the whole
//! changelog for every query (O(phases × changes)).

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::graph::{PhaseIx, PlanGraph};
use crate::state::{Actor, PhaseChange, PhaseState, derive_state};

#[derive(Debug, Clone, Default)]
struct Slot {
    state: Option<PhaseState>,
    counts: [u32; 5],
    updated: Option<DateTime<Utc>>,
    /// Sequence number of the latest change to this phase (0 = none).
    version: u64,
    error: Option<Arc<str>>,
    actor: Option<Arc<Actor>>,
}

/// A plan folded with its changelog.
#[derive(Debug, Clone)]
pub struct PlanView {
    graph: Arc<PlanGraph>,
    slots: Vec<Slot>,
    /// Every change with a sequence number up to this one has been applied.
    watermark: u64,
    /// Applied changes above the watermark (arrived out of order).
    ahead: std::collections::BTreeSet<u64>,
    /// The actor of the latest change applied: changes come from a few
    /// processes, so leaves share its `Arc` instead of one copy each.
    last_actor: Option<Arc<Actor>>,
}

impl PlanView {
    /// A view with every phase unstarted.
    pub fn new(graph: Arc<PlanGraph>) -> Self {
        let mut slots = vec![Slot::default(); graph.len()];
        for (ix, node) in graph.nodes().iter().enumerate() {
            slots[ix].counts[PhaseState::Unstarted.index()] = node.children.len() as u32;
        }
        PlanView {
            graph,
            slots,
            watermark: 0,
            ahead: Default::default(),
            last_actor: None,
        }
    }

    /// A view of `graph` after `changes` (in sequence order).
    pub fn resolve<'a>(
        graph: Arc<PlanGraph>,
        changes: impl IntoIterator<Item = &'a PhaseChange>,
    ) -> Self {
        let mut v = Self::new(graph);
        for c in changes {
            v.apply(c);
        }
        v
    }

    /// The indexed plan.
    pub fn graph(&self) -> &Arc<PlanGraph> {
        &self.graph
    }

    /// Every change up to this sequence number has been applied; fetch
    /// changes after it to catch up.
    pub fn last_seq(&self) -> u64 {
        self.watermark
    }

    fn mark_seen(&mut self, seq: u64) {
        if seq == self.watermark + 1 {
            self.watermark = seq;
            while self.ahead.first() == Some(&(self.watermark + 1)) {
                self.ahead.pop_first();
                self.watermark += 1;
            }
        } else if seq > self.watermark + 1 {
            self.ahead.insert(seq);
        }
    }

    /// Applies one change. Changes may arrive in any order and more than
    /// once: a phase takes a change only if it is newer (by sequence number)
    /// than the one it has. Changes to unknown phases and to composites (a
    /// composite's state is always derived) are ignored.
    pub fn apply(&mut self, change: &PhaseChange) {
        self.mark_seen(change.seq);
        let Some(ix) = self.graph.find(&change.phase) else {
            return;
        };
        if self.graph.node(ix).is_composite() || ix == 0 {
            return;
        }
        if change.seq <= self.slots[ix].version {
            // Superseded for the leaf, but a composite's time is the latest
            // of every change below it: counting this one too keeps the
            // result independent of the order changes arrive in.
            self.raise_updated(ix, change.time);
            return;
        }
        let old = self.state(ix);
        let slot = &mut self.slots[ix];
        slot.state = Some(change.state);
        slot.updated = Some(change.time);
        slot.version = change.seq;
        slot.error = change.error.as_deref().map(Arc::from);
        let actor = match &self.last_actor {
            Some(a) if **a == change.actor => a.clone(),
            _ => {
                let a = Arc::new(change.actor.clone());
                self.last_actor = Some(a.clone());
                a
            }
        };
        slot.actor = Some(actor);
        self.propagate(ix, old, change.state, change.time);
    }

    /// Raises the "updated" time of the ancestors of `ix` to `t`. An
    /// ancestor's time is never older than its children's, so the walk stops
    /// at the first one that is already as new.
    fn raise_updated(&mut self, ix: PhaseIx, t: DateTime<Utc>) {
        let mut cur = self.graph.node(ix).parent;
        while let Some(p) = cur {
            let slot = &mut self.slots[p];
            if slot.updated.is_some_and(|u| u >= t) {
                break;
            }
            slot.updated = Some(t);
            cur = self.graph.node(p).parent;
        }
    }

    fn propagate(
        &mut self,
        mut ix: PhaseIx,
        mut old: PhaseState,
        mut new: PhaseState,
        t: DateTime<Utc>,
    ) {
        while let Some(parent) = self.graph.node(ix).parent {
            let before = self.state(parent);
            let slot = &mut self.slots[parent];
            let newer = slot.updated.is_none_or(|u| u < t);
            if newer {
                slot.updated = Some(t);
            }
            if old != new {
                slot.counts[old.index()] -= 1;
                slot.counts[new.index()] += 1;
            }
            let after = derive_state(&slot.counts);
            if before == after && !newer {
                break;
            }
            old = before;
            new = after;
            ix = parent;
        }
    }

    /// Effective state: a leaf's latest state, a composite's derived state.
    pub fn state(&self, ix: PhaseIx) -> PhaseState {
        let slot = &self.slots[ix];
        if self.graph.node(ix).is_composite() {
            derive_state(&slot.counts)
        } else {
            slot.state.unwrap_or(PhaseState::Unstarted)
        }
    }

    /// Time of the latest change (for composites, of any descendant).
    pub fn updated(&self, ix: PhaseIx) -> Option<DateTime<Utc>> {
        self.slots[ix].updated
    }

    /// Sequence number of a leaf's latest change (0 = never changed).
    pub fn version(&self, ix: PhaseIx) -> u64 {
        self.slots[ix].version
    }

    /// The error recorded with a leaf's latest change.
    pub fn error(&self, ix: PhaseIx) -> Option<&str> {
        self.slots[ix].error.as_deref()
    }

    /// Who made a leaf's latest change.
    pub fn actor(&self, ix: PhaseIx) -> Option<&Actor> {
        self.slots[ix].actor.as_deref()
    }

    /// Whether every leaf is completed (an empty plan is completed).
    pub fn is_completed(&self) -> bool {
        self.graph.is_empty() || self.state(0) == PhaseState::Completed
    }

    /// Whether every leaf is unstarted or rolled back and at least one was
    /// rolled back. Gravity also counted a never-started plan as rolled back;
    /// here a never-started plan is [`Self::is_unstarted`] instead.
    pub fn is_rolled_back(&self) -> bool {
        let c = &self.slots[0].counts;
        !self.graph.is_empty()
            && c[PhaseState::RolledBack.index()] > 0
            && matches!(self.state(0), PhaseState::RolledBack)
    }

    /// Whether no leaf has ever been started.
    pub fn is_unstarted(&self) -> bool {
        self.state(0) == PhaseState::Unstarted
    }

    /// Whether some phase is failed.
    pub fn has_failed(&self) -> bool {
        self.state(0) == PhaseState::Failed
    }

    /// Leaves in the given state, in document order (O(leaves)).
    pub fn leaves_in(&self, state: PhaseState) -> Vec<PhaseIx> {
        self.graph
            .leaves()
            .iter()
            .copied()
            .filter(|&l| self.state(l) == state)
            .collect()
    }

    /// The first failed phase of each failed branch: for explaining failures
    /// after the plan table. Descends only into failed composites.
    pub fn failures(&self) -> Vec<PhaseIx> {
        let mut out = Vec::new();
        let mut stack = vec![0];
        while let Some(ix) = stack.pop() {
            let node = self.graph.node(ix);
            if node.is_composite() {
                for &c in node.children.iter().rev() {
                    if self.state(c) == PhaseState::Failed {
                        stack.push(c);
                    }
                }
            } else if ix != 0 {
                out.push(ix);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PhasePath;
    use crate::plan::{Phase, Plan};

    fn graph() -> Arc<PlanGraph> {
        let mut a = Phase::new(PhasePath::parse("/a").unwrap(), "A");
        a.phases = vec![
            Phase::new(PhasePath::parse("/a/x").unwrap(), "x"),
            Phase::new(PhasePath::parse("/a/y").unwrap(), "y"),
        ];
        let b = Phase::new(PhasePath::parse("/b").unwrap(), "B");
        PlanGraph::build(Plan {
            operation_id: "op".into(),
            operation_kind: "t".into(),
            cluster_name: "c".into(),
            created: DateTime::from_timestamp(0, 0).unwrap(),
            phases: vec![a, b],
        })
        .unwrap()
    }

    fn ch(seq: u64, phase: &str, state: PhaseState, t: i64) -> PhaseChange {
        PhaseChange {
            seq,
            id: uuid::Uuid::new_v4(),
            phase: PhasePath::parse(phase).unwrap(),
            state,
            time: DateTime::from_timestamp(t, 0).unwrap(),
            error: None,
            actor: Actor {
                host: "h".into(),
                pid: 1,
            },
        }
    }

    #[test]
    fn derives_composites_incrementally() {
        use PhaseState::*;
        let mut v = PlanView::new(graph());
        assert!(v.is_unstarted());
        assert!(!v.is_rolled_back());
        v.apply(&ch(1, "/a/x", InProgress, 10));
        assert_eq!(v.state(1), InProgress);
        v.apply(&ch(2, "/a/x", Completed, 20));
        assert_eq!(
            v.state(1),
            InProgress,
            "completed + unstarted is in progress"
        );
        v.apply(&ch(3, "/a/y", Failed, 30));
        assert_eq!(v.state(1), Failed);
        assert_eq!(v.state(0), Failed);
        assert_eq!(v.failures(), vec![3]);
        assert_eq!(v.updated(0), DateTime::from_timestamp(30, 0));
        v.apply(&ch(4, "/a/y", Completed, 40));
        v.apply(&ch(5, "/b", Completed, 50));
        assert!(v.is_completed());
        // Older sequence numbers are ignored, whatever their time.
        v.apply(&ch(3, "/b", Failed, 99));
        v.apply(&ch(4, "/b", Failed, 99));
        assert!(v.is_completed());
        assert_eq!(v.last_seq(), 5);
        for (seq, p) in [(6, "/b"), (7, "/a/y"), (8, "/a/x")] {
            v.apply(&ch(seq, p, RolledBack, 60));
        }
        assert!(v.is_rolled_back());
        assert_eq!(v.version(2), 8);
    }

    #[test]
    fn resolve_equals_incremental() {
        let changes = vec![
            ch(1, "/a/x", PhaseState::Completed, 1),
            ch(2, "/b", PhaseState::Failed, 2),
            ch(3, "/unknown", PhaseState::Failed, 3),
        ];
        let v = PlanView::resolve(graph(), &changes);
        assert_eq!(v.state(4), PhaseState::Failed);
        assert_eq!(v.last_seq(), 3);
        // Out of order: the watermark waits for the gap.
        let mut w = PlanView::new(graph());
        w.apply(&changes[1]);
        assert_eq!(w.last_seq(), 0);
        w.apply(&changes[0]);
        assert_eq!(w.last_seq(), 2);
        assert_eq!(w.state(2), PhaseState::Completed);
    }
}

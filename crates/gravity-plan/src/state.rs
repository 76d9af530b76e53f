//! Phase states, operation states and the changelog entry.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::path::PhasePath;

/// The state of a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseState {
    /// Never run (or no change recorded).
    Unstarted,
    /// Claimed by a process that is running it, or left by one that died.
    InProgress,
    /// Ran to the end.
    Completed,
    /// Ran and failed.
    Failed,
    /// Undone.
    RolledBack,
}

impl PhaseState {
    /// All states, in a fixed order (used to index counters).
    pub const ALL: [PhaseState; 5] = [
        PhaseState::Unstarted,
        PhaseState::InProgress,
        PhaseState::Completed,
        PhaseState::Failed,
        PhaseState::RolledBack,
    ];

    /// Index in [`PhaseState::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Stored name: `unstarted`, `in_progress`, `completed`, `failed`, `rolled_back`.
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseState::Unstarted => "unstarted",
            PhaseState::InProgress => "in_progress",
            PhaseState::Completed => "completed",
            PhaseState::Failed => "failed",
            PhaseState::RolledBack => "rolled_back",
        }
    }

    /// Display name used in the plan table: `Unstarted`, `In Progress`, …
    pub fn display_name(self) -> &'static str {
        match self {
            PhaseState::Unstarted => "Unstarted",
            PhaseState::InProgress => "In Progress",
            PhaseState::Completed => "Completed",
            PhaseState::Failed => "Failed",
            PhaseState::RolledBack => "Rolled Back",
        }
    }

    /// Marker in the plan table: `*` `→` `✓` `×` `⤺`.
    pub fn marker(self) -> char {
        match self {
            PhaseState::Unstarted => '*',
            PhaseState::InProgress => '→',
            PhaseState::Completed => '✓',
            PhaseState::Failed => '×',
            PhaseState::RolledBack => '⤺',
        }
    }

    /// Whether a phase in this state counts as "live" for rollback: it has
    /// been started and not undone.
    pub fn is_live(self) -> bool {
        !matches!(self, PhaseState::Unstarted | PhaseState::RolledBack)
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<PhaseState> {
        PhaseState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for PhaseState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Derives a composite phase's state from per-state counts of its direct
/// children, with Gravity's precedence: a single state wins; otherwise
/// failed, then in progress; {unstarted, rolled back} is rolled back; any
/// other mix (e.g. completed + unstarted) is in progress.
pub fn derive_state(counts: &[u32; 5]) -> PhaseState {
    let present = |s: PhaseState| counts[s.index()] > 0;
    let distinct = counts.iter().filter(|c| **c > 0).count();
    if distinct == 0 {
        return PhaseState::Unstarted;
    }
    if distinct == 1 {
        return PhaseState::ALL[counts.iter().position(|c| *c > 0).unwrap()];
    }
    if present(PhaseState::Failed) {
        PhaseState::Failed
    } else if present(PhaseState::InProgress) {
        PhaseState::InProgress
    } else if !present(PhaseState::Completed) && present(PhaseState::RolledBack) {
        PhaseState::RolledBack
    } else {
        PhaseState::InProgress
    }
}

/// Who made a change: the host and process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// Host name (or node name in a simulated cluster).
    pub host: String,
    /// Process id.
    pub pid: u32,
}

impl Actor {
    /// The current process on this host.
    pub fn current() -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "localhost".into());
        Actor {
            host,
            pid: std::process::id(),
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} on {}", self.pid, self.host)
    }
}

/// One entry of a plan's append-only changelog.
///
/// Entries are ordered by `seq`, assigned by the store when the entry is
/// appended, never by wall-clock `time` (Gravity ordered by time, so skewed
/// clocks between nodes could reorder events).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseChange {
    /// Sequence number, 1-based, dense per operation.
    pub seq: u64,
    /// Unique id of the entry (for merging changelogs between stores).
    pub id: uuid::Uuid,
    /// The phase.
    pub phase: PhasePath,
    /// Its new state.
    pub state: PhaseState,
    /// When the change was made (UTC).
    pub time: DateTime<Utc>,
    /// The error text, for failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Who made the change.
    pub actor: Actor,
}

/// A change to be appended. `expect_version` makes the append a
/// compare-and-swap: it succeeds only if the phase's latest change still has
/// that sequence number (0 = no change yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewChange {
    /// The phase.
    pub phase: PhasePath,
    /// Its new state.
    pub state: PhaseState,
    /// Error text, for failures.
    pub error: Option<String>,
    /// Compare-and-swap guard; `None` appends unconditionally.
    pub expect_version: Option<u64>,
    /// Who makes the change.
    pub actor: Actor,
    /// When.
    pub time: DateTime<Utc>,
}

/// The state of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    /// Created and not yet completed.
    InProgress,
    /// Completed with every phase completed.
    Completed,
    /// Completed with some phase not completed (failed or rolled back).
    Failed,
}

impl OperationState {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationState::InProgress => "in_progress",
            OperationState::Completed => "completed",
            OperationState::Failed => "failed",
        }
    }

    /// Whether the operation is over.
    pub fn is_finished(self) -> bool {
        !matches!(self, OperationState::InProgress)
    }
}

impl fmt::Display for OperationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PhaseState::*;

    fn counts(states: &[PhaseState]) -> [u32; 5] {
        let mut c = [0; 5];
        for s in states {
            c[s.index()] += 1;
        }
        c
    }

    #[test]
    fn precedence_matches_gravity() {
        assert_eq!(derive_state(&counts(&[Completed, Completed])), Completed);
        assert_eq!(
            derive_state(&counts(&[Completed, Failed, InProgress])),
            Failed
        );
        assert_eq!(derive_state(&counts(&[Completed, InProgress])), InProgress);
        assert_eq!(derive_state(&counts(&[Unstarted, RolledBack])), RolledBack);
        assert_eq!(derive_state(&counts(&[Completed, Unstarted])), InProgress);
        assert_eq!(derive_state(&counts(&[Completed, RolledBack])), InProgress);
        assert_eq!(derive_state(&counts(&[RolledBack])), RolledBack);
        assert_eq!(derive_state(&counts(&[])), Unstarted);
    }

    #[test]
    fn names_round_trip() {
        for s in PhaseState::ALL {
            assert_eq!(PhaseState::parse(s.as_str()), Some(s));
        }
    }
}

//! Health probes and their history (`gravity status history`).
//!
//! A probe run ([`crate::phases::checks::probe`]) gives one
//! [`ProbeResult`] per check and node: `node-status` (reachable and
//! ready), `agent`, `disk-space`, `temp-dir`, `dns` and `time-drift`. A
//! [`HealthLog`] in `<state-dir>/status/` keeps which probes fail now
//! (`probes.json`) and turns each run into transitions, appended with
//! their time to `history.jsonl`:
//!
//! - [`HealthEvent::ProbeFailed`] when a probe that passed (or never ran)
//!   fails, with the check, the node and the message;
//! - [`HealthEvent::ProbeSucceeded`] when a failing probe passes again;
//! - [`HealthEvent::NodeDegraded`] when a node gets its first failing
//!   probe, [`HealthEvent::NodeHealthy`] when its last one passes.
//!
//! A probe that did not run (an unreachable node's other checks, the agent
//! check before the agents are deployed) keeps its state. Several
//! processes may record at once: the log is updated under
//! `<state-dir>/status/health.lock`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The outcome of one check on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// The node (host name).
    pub node: String,
    /// The check (`node-status`, `agent`, `disk-space`, `temp-dir`, `dns`,
    /// `time-drift`).
    pub checker: String,
    /// What is wrong, if the check failed.
    pub error: Option<String>,
}

/// The outcome of a probe run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// The number of nodes probed.
    pub nodes: usize,
    /// Every check that ran, in order.
    pub results: Vec<ProbeResult>,
}

impl ProbeReport {
    /// Records the outcome of `checker` on `node`.
    pub fn push(&mut self, node: &str, checker: &str, error: Option<String>) {
        self.results.push(ProbeResult {
            node: node.to_string(),
            checker: checker.to_string(),
            error,
        });
    }

    /// The failure messages, in order.
    pub fn failures(&self) -> Vec<String> {
        self.results
            .iter()
            .filter_map(|r| r.error.clone())
            .collect()
    }

    /// Whether every check of `node` that ran passed.
    pub fn node_healthy(&self, node: &str) -> bool {
        self.results
            .iter()
            .all(|r| r.node != node || r.error.is_none())
    }
}

/// A change of the cluster's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum HealthEvent {
    /// A probe started failing.
    ProbeFailed {
        /// The node.
        node: String,
        /// The check.
        checker: String,
        /// What is wrong.
        message: String,
    },
    /// A failing probe passed again.
    ProbeSucceeded {
        /// The node.
        node: String,
        /// The check.
        checker: String,
    },
    /// The node has a failing probe.
    NodeDegraded {
        /// The node.
        node: String,
    },
    /// The node's probes all pass again.
    NodeHealthy {
        /// The node.
        node: String,
    },
}

impl std::fmt::Display for HealthEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HealthEvent::ProbeFailed {
                node,
                checker,
                message,
            } => write!(f, "probe failed node={node} checker={checker}: {message}"),
            HealthEvent::ProbeSucceeded { node, checker } => {
                write!(f, "probe succeeded node={node} checker={checker}")
            }
            HealthEvent::NodeDegraded { node } => write!(f, "node degraded node={node}"),
            HealthEvent::NodeHealthy { node } => write!(f, "node healthy node={node}"),
        }
    }
}

/// A [`HealthEvent`] with the time it was recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimedEvent {
    /// When.
    pub time: DateTime<Utc>,
    /// What.
    #[serde(flatten)]
    pub event: HealthEvent,
}

/// Failing probes: node → check → message.
type Failing = BTreeMap<String, BTreeMap<String, String>>;

/// The probe state and health history of a state directory.
#[derive(Debug, Clone)]
pub struct HealthLog {
    dir: PathBuf,
}

impl HealthLog {
    /// The log of `state_dir` (in `<state_dir>/status/`).
    pub fn new(state_dir: &Path) -> Self {
        HealthLog {
            dir: state_dir.join("status"),
        }
    }

    /// Records a probe run; returns the transitions it caused (also
    /// appended to the history).
    pub fn record(&self, report: &ProbeReport) -> io::Result<Vec<HealthEvent>> {
        fs::create_dir_all(&self.dir)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("health.lock"))?;
        lock.lock()?;
        let state = self.dir.join("probes.json");
        let mut failing: Failing = match fs::read(&state) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Failing::new(),
            Err(e) => return Err(e),
        };
        let events = transitions(&mut failing, report);
        if events.is_empty() {
            return Ok(events);
        }
        let tmp = self
            .dir
            .join(format!(".probes.json.{}.tmp", std::process::id()));
        fs::write(
            &tmp,
            serde_json::to_vec_pretty(&failing).expect("serializes"),
        )?;
        fs::rename(&tmp, &state)?;
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("history.jsonl"))?;
        let time = Utc::now();
        let mut text = String::new();
        for e in &events {
            let line = TimedEvent {
                time,
                event: e.clone(),
            };
            text.push_str(&serde_json::to_string(&line).expect("serializes"));
            text.push('\n');
        }
        out.write_all(text.as_bytes())?;
        Ok(events)
    }

    /// Every recorded event, oldest first (damaged lines are skipped).
    pub fn events(&self) -> io::Result<Vec<TimedEvent>> {
        let f = match File::open(self.dir.join("history.jsonl")) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for line in io::BufReader::new(f).lines() {
            if let Ok(e) = serde_json::from_str(&line?) {
                out.push(e);
            }
        }
        Ok(out)
    }
}

/// Applies a probe run to the failing set; returns the transitions.
fn transitions(failing: &mut Failing, report: &ProbeReport) -> Vec<HealthEvent> {
    let mut events = Vec::new();
    let mut nodes: Vec<&str> = Vec::new();
    for r in &report.results {
        if !nodes.contains(&r.node.as_str()) {
            nodes.push(&r.node);
        }
    }
    for node in nodes {
        let was_degraded = failing.get(node).is_some_and(|m| !m.is_empty());
        let checks = failing.entry(node.to_string()).or_default();
        for r in report.results.iter().filter(|r| r.node == node) {
            match (&r.error, checks.contains_key(&r.checker)) {
                (Some(message), false) => {
                    checks.insert(r.checker.clone(), message.clone());
                    events.push(HealthEvent::ProbeFailed {
                        node: node.to_string(),
                        checker: r.checker.clone(),
                        message: message.clone(),
                    });
                }
                (None, true) => {
                    checks.remove(&r.checker);
                    events.push(HealthEvent::ProbeSucceeded {
                        node: node.to_string(),
                        checker: r.checker.clone(),
                    });
                }
                _ => {}
            }
        }
        let degraded = !checks.is_empty();
        if checks.is_empty() {
            failing.remove(node);
        }
        match (was_degraded, degraded) {
            (false, true) => events.push(HealthEvent::NodeDegraded {
                node: node.to_string(),
            }),
            (true, false) => events.push(HealthEvent::NodeHealthy {
                node: node.to_string(),
            }),
            _ => {}
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(results: &[(&str, &str, Option<&str>)]) -> ProbeReport {
        let mut r = ProbeReport::default();
        for (n, c, e) in results {
            r.push(n, c, e.map(str::to_string));
        }
        r
    }

    #[test]
    fn failures_and_recoveries_are_transitions() {
        let d = tempfile::tempdir().unwrap();
        let log = HealthLog::new(d.path());
        let ok = report(&[("a", "disk-space", None), ("a", "dns", None)]);
        assert!(log.record(&ok).unwrap().is_empty());
        let bad = report(&[("a", "disk-space", Some("full")), ("a", "dns", None)]);
        let e = log.record(&bad).unwrap();
        assert_eq!(
            e,
            [
                HealthEvent::ProbeFailed {
                    node: "a".into(),
                    checker: "disk-space".into(),
                    message: "full".into()
                },
                HealthEvent::NodeDegraded { node: "a".into() }
            ]
        );
        // Still failing: nothing new. A check that did not run keeps its state.
        assert!(log.record(&bad).unwrap().is_empty());
        assert!(
            log.record(&report(&[("a", "dns", None)]))
                .unwrap()
                .is_empty()
        );
        let e = log.record(&ok).unwrap();
        assert_eq!(
            e,
            [
                HealthEvent::ProbeSucceeded {
                    node: "a".into(),
                    checker: "disk-space".into()
                },
                HealthEvent::NodeHealthy { node: "a".into() }
            ]
        );
        let history: Vec<String> = log
            .events()
            .unwrap()
            .iter()
            .map(|e| e.event.to_string())
            .collect();
        assert_eq!(
            history,
            [
                "probe failed node=a checker=disk-space: full",
                "node degraded node=a",
                "probe succeeded node=a checker=disk-space",
                "node healthy node=a"
            ]
        );
    }
}

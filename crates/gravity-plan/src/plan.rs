//! The immutable operation plan: a tree of phases, and the plan-file format.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::data::PhaseData;
use crate::path::{PathError, PhasePath};

/// The deepest phase tree accepted from a plan file.
pub const MAX_DEPTH: usize = 32;
/// The largest plan file read, in bytes.
pub const MAX_PLAN_FILE: u64 = 256 * 1024 * 1024;

/// A cluster node a phase acts on or runs on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Host name, e.g. `kevin-test1`.
    pub hostname: String,
    /// Advertise address, e.g. `10.162.0.7`.
    #[serde(default)]
    pub addr: String,
}

impl Node {
    /// A node with a host name and address.
    pub fn new(hostname: impl Into<String>, addr: impl Into<String>) -> Self {
        Node {
            hostname: hostname.into(),
            addr: addr.into(),
        }
    }
}

fn default_parallel() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

fn is_null(v: &PhaseData) -> bool {
    v.is_null()
}

/// One phase of a plan. Leaves carry an executor kind; composites group
/// children and run them in order (or up to `parallel` at a time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// Absolute path of the phase.
    pub id: PhasePath,
    /// Human description shown by `gravity plan`.
    #[serde(default)]
    pub description: String,
    /// Executor kind that runs the phase (leaves only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<String>,
    /// The node the phase acts on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Node>,
    /// The node the phase must run on (falls back to `node`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_node: Option<Node>,
    /// Phases that must be completed before this one (and its children) runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<PhasePath>,
    /// How many children may run at once; 1 (the default) runs them in order.
    #[serde(default = "default_parallel", skip_serializing_if = "is_one")]
    pub parallel: usize,
    /// Free-form data for the executor.
    #[serde(default, skip_serializing_if = "is_null")]
    pub data: PhaseData,
    /// Child phases, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<Phase>,
}

impl Phase {
    /// A phase with a path and description and nothing else.
    pub fn new(id: PhasePath, description: impl Into<String>) -> Self {
        Phase {
            id,
            description: description.into(),
            executor: None,
            node: None,
            exec_node: None,
            requires: Vec::new(),
            parallel: 1,
            data: PhaseData::null(),
            phases: Vec::new(),
        }
    }

    /// Whether the phase has children.
    pub fn is_composite(&self) -> bool {
        !self.phases.is_empty()
    }

    /// The node the phase runs on: `exec_node`, else `node`.
    pub fn run_node(&self) -> Option<&Node> {
        self.exec_node.as_ref().or(self.node.as_ref())
    }
}

/// An operation plan. Immutable once created: progress lives in the
/// changelog, never in the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Operation id (a UUID for generated plans).
    pub operation_id: String,
    /// Operation kind, e.g. `update` or `runbook`.
    pub operation_kind: String,
    /// Cluster the operation belongs to.
    pub cluster_name: String,
    /// When the plan was created (UTC).
    pub created: DateTime<Utc>,
    /// Top-level phases in order.
    pub phases: Vec<Phase>,
}

/// Why a plan file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanFileError {
    /// The file could not be read.
    #[error("cannot read plan file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_PLAN_FILE`].
    #[error("plan file {path} is {size} bytes, more than the {MAX_PLAN_FILE} allowed")]
    TooLarge {
        /// The file.
        path: String,
        /// Its size.
        size: u64,
    },
    /// The text is not a valid plan document.
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The text is not a valid plan document and the parser gave no position.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A phase id or requirement is not a valid path.
    #[error("{path}: phase {phase}: {source}")]
    Path {
        /// The file.
        path: String,
        /// The phase (as far as known).
        phase: String,
        /// The cause.
        #[source]
        source: PathError,
    },
    /// A child id does not sit under its parent.
    #[error(
        "{path}: phase {child:?} is listed under {parent:?} but its id is not below it; use a relative id or the full path under the parent"
    )]
    NotUnderParent {
        /// The file.
        path: String,
        /// Parent id.
        parent: String,
        /// Child id.
        child: String,
    },
    /// The tree is deeper than [`MAX_DEPTH`].
    #[error("{path}: phase {phase:?} is nested deeper than {MAX_DEPTH} levels")]
    TooDeep {
        /// The file.
        path: String,
        /// The phase.
        phase: String,
    },
}

/// A plan as written by a person: ids and requirements may be relative
/// (`drain`, resolved against the parent), the operation id and creation
/// time are optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanDefinition {
    /// Operation id; generated when absent.
    #[serde(default)]
    pub operation_id: Option<String>,
    /// Operation kind; `runbook` when absent.
    #[serde(default, alias = "kind")]
    pub operation_kind: Option<String>,
    /// Cluster name; `local` when absent.
    #[serde(default, alias = "cluster")]
    pub cluster_name: Option<String>,
    /// Creation time; now when absent.
    #[serde(default)]
    pub created: Option<DateTime<Utc>>,
    /// Top-level phases.
    pub phases: Vec<PhaseDefinition>,
}

/// One phase as written by a person.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseDefinition {
    /// Absolute id, or a single segment relative to the parent.
    pub id: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Executor kind.
    #[serde(default)]
    pub executor: Option<String>,
    /// Node the phase acts on.
    #[serde(default)]
    pub node: Option<Node>,
    /// Node the phase runs on.
    #[serde(default)]
    pub exec_node: Option<Node>,
    /// Requirements: absolute, or relative to the parent (a sibling).
    #[serde(default)]
    pub requires: Vec<String>,
    /// Children run at once.
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    /// Executor data.
    #[serde(default)]
    pub data: serde_json::Value,
    /// Children.
    #[serde(default)]
    pub phases: Vec<PhaseDefinition>,
}

impl PlanDefinition {
    /// Reads a plan file; `.json` files are JSON, anything else YAML (JSON is
    /// valid YAML too). Errors carry the file name, line and column.
    pub fn from_file(path: &Path) -> Result<Self, PlanFileError> {
        let name = path.display().to_string();
        let io = |source| PlanFileError::Io {
            path: name.clone(),
            source,
        };
        let size = std::fs::metadata(path).map_err(io)?.len();
        if size > MAX_PLAN_FILE {
            return Err(PlanFileError::TooLarge { path: name, size });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let json = path.extension().is_some_and(|e| e == "json");
        Self::from_str_named(&text, &name, json)
    }

    /// Parses plan text. `json` selects the JSON parser, else YAML.
    pub fn from_str_named(text: &str, name: &str, json: bool) -> Result<Self, PlanFileError> {
        if json {
            serde_json::from_str(text).map_err(|e| PlanFileError::Syntax {
                path: name.to_string(),
                line: e.line(),
                column: e.column(),
                message: strip_position(&e.to_string()),
            })
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| match e.location() {
                Some(loc) => PlanFileError::Syntax {
                    path: name.to_string(),
                    line: loc.line(),
                    column: loc.column(),
                    message: strip_position(&e.to_string()),
                },
                None => PlanFileError::Invalid {
                    path: name.to_string(),
                    message: e.to_string(),
                },
            })
        }
    }

    /// Turns the definition into a [`Plan`], resolving relative ids.
    /// `name` is used in error messages. Structural checks (duplicates,
    /// unknown requirements, cycles) are done by [`crate::PlanGraph`].
    pub fn into_plan(self, name: &str) -> Result<Plan, PlanFileError> {
        let root = PhasePath::root();
        let phases = self
            .phases
            .into_iter()
            .map(|p| convert(p, &root, 1, name))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Plan {
            operation_id: self
                .operation_id
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            operation_kind: self.operation_kind.unwrap_or_else(|| "runbook".into()),
            cluster_name: self.cluster_name.unwrap_or_else(|| "local".into()),
            created: self.created.unwrap_or_else(Utc::now),
            phases,
        })
    }
}

/// serde's messages end with " at line L column C"; the position is shown
/// in front instead.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

fn convert(
    def: PhaseDefinition,
    parent: &PhasePath,
    depth: usize,
    file: &str,
) -> Result<Phase, PlanFileError> {
    let path_err = |phase: &str, source| PlanFileError::Path {
        path: file.to_string(),
        phase: phase.to_string(),
        source,
    };
    let id = if def.id.starts_with('/') {
        let id = PhasePath::parse(&def.id).map_err(|e| path_err(&def.id, e))?;
        if id.parent().as_ref() != Some(parent) {
            return Err(PlanFileError::NotUnderParent {
                path: file.to_string(),
                parent: parent.to_string(),
                child: def.id,
            });
        }
        id
    } else {
        parent.join(&def.id).map_err(|e| path_err(&def.id, e))?
    };
    if depth > MAX_DEPTH {
        return Err(PlanFileError::TooDeep {
            path: file.to_string(),
            phase: id.to_string(),
        });
    }
    let requires = def
        .requires
        .iter()
        .map(|r| parent.resolve(r).map_err(|e| path_err(id.as_str(), e)))
        .collect::<Result<Vec<_>, _>>()?;
    let phases = def
        .phases
        .into_iter()
        .map(|c| convert(c, &id, depth + 1, file))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Phase {
        id,
        description: def.description,
        executor: def.executor,
        node: def.node,
        exec_node: def.exec_node,
        requires,
        parallel: def.parallel.max(1),
        data: PhaseData::from_value(&def.data),
        phases,
    })
}

impl Plan {
    /// Parses a plan serialized with serde (JSON).
    pub fn from_json(text: &str) -> Result<Plan, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_ids_and_requires_resolve() {
        let text = r#"
cluster_name: demo
phases:
  - id: init
    description: Init
    phases:
      - id: n1
        executor: command
      - id: n2
        requires: [n1]
  - id: /checks
    requires: [/init]
"#;
        let plan = PlanDefinition::from_str_named(text, "p.yaml", false)
            .unwrap()
            .into_plan("p.yaml")
            .unwrap();
        assert_eq!(plan.cluster_name, "demo");
        assert_eq!(plan.operation_kind, "runbook");
        assert_eq!(plan.phases[0].phases[1].id.as_str(), "/init/n2");
        assert_eq!(plan.phases[0].phases[1].requires[0].as_str(), "/init/n1");
        assert_eq!(plan.phases[1].requires[0].as_str(), "/init");
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let text = "phases:\n  - id: init\n    descripton: typo\n";
        let e = PlanDefinition::from_str_named(text, "p.yaml", false).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("p.yaml:3:"), "{msg}");
        assert!(msg.contains("descripton"), "{msg}");
        let e = PlanDefinition::from_str_named("{\"phases\": [}", "p.json", true).unwrap_err();
        assert!(e.to_string().starts_with("p.json:1:"), "{e}");
    }

    #[test]
    fn child_outside_parent_is_refused() {
        let text = "phases:\n  - id: a\n    phases:\n      - id: /b/c\n";
        let e = PlanDefinition::from_str_named(text, "p.yaml", false)
            .unwrap()
            .into_plan("p.yaml")
            .unwrap_err();
        assert!(e.to_string().contains("not below it"), "{e}");
    }

    #[test]
    fn json_round_trip() {
        let mut p = Phase::new(PhasePath::parse("/a").unwrap(), "A");
        p.executor = Some("noop".into());
        let plan = Plan {
            operation_id: "op".into(),
            operation_kind: "runbook".into(),
            cluster_name: "c".into(),
            created: DateTime::from_timestamp(0, 0).unwrap(),
            phases: vec![p],
        };
        let text = serde_json::to_string(&plan).unwrap();
        assert_eq!(Plan::from_json(&text).unwrap(), plan);
    }
}

//! Helpers shared by the CLI test binaries.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

/// The phase with id `path` in a `gravity plan -o json` phase list.
pub fn find_phase<'a>(phases: &'a Value, path: &str) -> Option<&'a Value> {
    for p in phases.as_array()? {
        if p["id"] == path {
            return Some(p);
        }
        if let Some(found) = find_phase(&p["phases"], path) {
            return Some(found);
        }
    }
    None
}

/// `gravity --state-dir STATE args…` with its temporary files under
/// `tmp`, and none of the environment that would select another state
/// directory or real backends (`GRAVITY_*`, `KUBECONFIG`).
pub fn gravity(state: &Path, tmp: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gravity"));
    c.arg("--state-dir").arg(state).args(args);
    c.env("TMPDIR", tmp);
    for var in [
        "GRAVITY_STATE_DIR",
        "GRAVITY_KUBECONFIG",
        "GRAVITY_ETCD_ENDPOINTS",
        "KUBECONFIG",
    ] {
        c.env_remove(var);
    }
    c
}

/// A command's stdout and stderr, for failure messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The stdout of `gravity args…`, which must have succeeded.
pub fn succeeded(args: &[&str], o: Output) -> String {
    assert!(o.status.success(), "gravity {args:?} failed: {}", text(&o));
    String::from_utf8(o.stdout).unwrap()
}

/// The stdout and stderr of `gravity args…`, which must have failed.
pub fn failed(args: &[&str], o: Output) -> (String, String) {
    assert!(
        !o.status.success(),
        "gravity {args:?} succeeded: {}",
        text(&o)
    );
    (
        String::from_utf8(o.stdout).unwrap(),
        String::from_utf8(o.stderr).unwrap(),
    )
}

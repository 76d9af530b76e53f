//! Helpers shared by the CLI test binaries.

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

//! Where package stores live in a state directory.
//!
//! ```text
//! <state>/packages/cluster            the cluster-wide store
//! <state>/packages/nodes/<NAME>       the store of node NAME
//! <state>/packages/local-node         optional: the name of the node this process runs on
//! ```
//!
//! Without an explicit choice a command uses the store of the node it runs
//! on: the node named in `local-node`, or `nodes/local` when that file does
//! not exist (a single local store until a simulated cluster creates nodes).

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{PackError, Result};
use crate::store::LocalStore;

/// Which store a command works on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreSelector {
    /// The store of the node this process runs on.
    #[default]
    LocalNode,
    /// The cluster-wide store.
    Cluster,
    /// The store of the named node.
    Node(String),
}

/// Name of the node store used when `local-node` is absent.
pub const DEFAULT_NODE: &str = "local";

/// The `packages` directory of a state directory.
pub fn packages_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("packages")
}

/// The node this process runs on: the content of
/// `<state>/packages/local-node` (trimmed), else [`DEFAULT_NODE`].
pub fn local_node(state_dir: &Path) -> Result<String> {
    let p = packages_dir(state_dir).join("local-node");
    match fs::read_to_string(&p) {
        Ok(s) => {
            let name = s.trim().to_string();
            check_node_name(&name)?;
            Ok(name)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DEFAULT_NODE.to_string()),
        Err(e) => Err(PackError::io(format!("cannot read {}", p.display()))(e)),
    }
}

/// Records the node this process runs on (used by the simulated cluster).
pub fn set_local_node(state_dir: &Path, name: &str) -> Result<()> {
    check_node_name(name)?;
    let dir = packages_dir(state_dir);
    fs::create_dir_all(&dir).map_err(PackError::io(format!("cannot create {}", dir.display())))?;
    let p = dir.join("local-node");
    fs::write(&p, format!("{name}\n"))
        .map_err(PackError::io(format!("cannot write {}", p.display())))
}

fn check_node_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(PackError::BadNodeName(name.to_string()))
    }
}

/// The directory of the selected store.
pub fn store_path(state_dir: &Path, selector: &StoreSelector) -> Result<PathBuf> {
    let packages = packages_dir(state_dir);
    Ok(match selector {
        StoreSelector::Cluster => packages.join("cluster"),
        StoreSelector::Node(n) => {
            check_node_name(n)?;
            packages.join("nodes").join(n)
        }
        StoreSelector::LocalNode => packages.join("nodes").join(local_node(state_dir)?),
    })
}

/// Opens (creating if needed) the selected store.
pub fn open_store(state_dir: &Path, selector: &StoreSelector) -> Result<LocalStore> {
    LocalStore::open(store_path(state_dir, selector)?)
}

/// Names of the nodes that have a store, sorted.
pub fn node_names(state_dir: &Path) -> Result<Vec<String>> {
    let dir = packages_dir(state_dir).join("nodes");
    let mut out = Vec::new();
    match fs::read_dir(&dir) {
        Ok(rd) => {
            for e in rd {
                let e = e.map_err(PackError::io(format!("cannot list {}", dir.display())))?;
                if e.path().is_dir()
                    && let Some(n) = e.file_name().to_str()
                {
                    out.push(n.to_string());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(PackError::io(format!("cannot list {}", dir.display()))(e)),
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_paths() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path();
        assert_eq!(
            store_path(s, &StoreSelector::Cluster).unwrap(),
            s.join("packages/cluster")
        );
        assert_eq!(
            store_path(s, &StoreSelector::LocalNode).unwrap(),
            s.join("packages/nodes/local")
        );
        set_local_node(s, "node-1").unwrap();
        assert_eq!(
            store_path(s, &StoreSelector::LocalNode).unwrap(),
            s.join("packages/nodes/node-1")
        );
        assert_eq!(
            store_path(s, &StoreSelector::Node("node-2".into())).unwrap(),
            s.join("packages/nodes/node-2")
        );
        assert!(store_path(s, &StoreSelector::Node("../x".into())).is_err());
        open_store(s, &StoreSelector::LocalNode).unwrap();
        assert_eq!(node_names(s).unwrap(), vec!["node-1".to_string()]);
    }
}

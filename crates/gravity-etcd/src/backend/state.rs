//! The state [`EtcdBackend`](super::EtcdBackend) keeps per member, in
//! `<root>/<node>/etcd/member.json`, so that a second `gravity` process (or
//! a resumed plan) sees which version, data dir and cluster token a member
//! uses and what was kept for a rollback.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use gravity_pack::Version;
use gravity_upgrade::backend::EtcdAddress;
use serde::{Deserialize, Serialize};

use super::error::EtcdBackendError;

/// What a member was before its upgrade, kept for
/// [`Etcd::rollback_upgrade`](gravity_upgrade::backend::Etcd::rollback_upgrade).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptMember {
    /// The version.
    pub version: Version,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The cluster token.
    pub cluster_token: String,
}

/// The persistent state of one member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    /// The node (host name).
    pub node: String,
    /// The client URL the cluster's clients use.
    pub normal_url: String,
    /// The temporary client URL of the upgrade, which no client uses.
    pub upgrade_url: String,
    /// The version the member is switched to.
    pub version: Version,
    /// The data directory in use.
    pub data_dir: PathBuf,
    /// `--initial-cluster-token` of the data directory's cluster.
    pub cluster_token: String,
    /// What was kept for a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<KeptMember>,
    /// Where the member was last started (whether it runs is asked of the
    /// [`MemberControl`](super::MemberControl)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<EtcdAddress>,
}

impl MemberState {
    /// The client URL of `address`.
    pub fn url(&self, address: EtcdAddress) -> &str {
        match address {
            EtcdAddress::Normal => &self.normal_url,
            EtcdAddress::Upgrade => &self.upgrade_url,
        }
    }
}

/// Reads a state file; `None` if it does not exist.
pub(crate) fn load(path: &Path) -> Result<Option<MemberState>, EtcdBackendError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(EtcdBackendError::Io {
                context: format!("reading {}", path.display()),
                source: e,
            });
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| EtcdBackendError::CorruptState {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
}

/// Writes a state file durably.
pub(crate) fn save(path: &Path, state: &MemberState) -> Result<(), EtcdBackendError> {
    let mut text = serde_json::to_string_pretty(state).map_err(|e| EtcdBackendError::Io {
        context: format!("encoding {}", path.display()),
        source: std::io::Error::other(e),
    })?;
    text.push('\n');
    write_durably(path, text.as_bytes())
}

/// Writes `bytes` to `path` through a temporary file in the same directory:
/// write, fsync, rename, fsync of the directory. Readers see the old file
/// or the new one, never a part.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), EtcdBackendError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(EtcdBackendError::io(format!("creating {}", dir.display())))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)
            .map_err(EtcdBackendError::io(format!("creating {}", tmp.display())))?;
        f.write_all(bytes)
            .map_err(EtcdBackendError::io(format!("writing {}", tmp.display())))?;
        f.sync_all()
            .map_err(EtcdBackendError::io(format!("syncing {}", tmp.display())))?;
        std::fs::rename(&tmp, path).map_err(EtcdBackendError::io(format!(
            "renaming {} to {}",
            tmp.display(),
            path.display()
        )))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(EtcdBackendError::io(format!("syncing {}", dir.display())))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_corrupt_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/member.json");
        assert!(load(&p).unwrap().is_none());
        let s = MemberState {
            node: "n1".into(),
            normal_url: "http://127.0.0.1:1".into(),
            upgrade_url: "http://127.0.0.2:1".into(),
            version: Version::parse("3.3.20").unwrap(),
            data_dir: "/d".into(),
            cluster_token: "t".into(),
            previous: Some(KeptMember {
                version: Version::parse("3.3.11").unwrap(),
                data_dir: "/o".into(),
                cluster_token: "u".into(),
            }),
            address: Some(EtcdAddress::Upgrade),
        };
        save(&p, &s).unwrap();
        assert_eq!(load(&p).unwrap(), Some(s));
        std::fs::write(&p, "{").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("not valid"), "{e}");
    }
}

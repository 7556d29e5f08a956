//! The agent's local state on disk: the last desired state received, per-member facts
//! (applied epoch, port, restarts), rendered config files and instance secrets.
//! Every write is write-temp + fsync + rename, so a crash leaves the old or the new file.

use crate::engine::{ConfigFile, Secrets};
use mofang_common::proto::DesiredState;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Errors of local state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a state file failed.
    #[error("state file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A state file holds something unreadable.
    #[error("state file {path} is corrupt: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's words.
        message: String,
    },
}

/// Result of state operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// What the agent remembers about one member between reconciles and restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemberState {
    /// The newest epoch whose role was applied.
    pub applied_epoch: u64,
    /// The role applied at that epoch.
    pub applied_role: String,
    /// The member is fenced (writes stopped) by the agent.
    pub fenced: bool,
    /// Host port (host network mode).
    pub port: Option<u16>,
    /// How often the agent restarted the member after it died.
    pub restarts: u64,
    /// A primary (with replicas) whose container died at this epoch: held down until the
    /// scheduler decides (a failover, or this member again at a newer epoch).
    pub held_at_epoch: Option<u64>,
    /// A replica on a fresh volume: copy a snapshot from the primary before replicating.
    pub needs_seed: bool,
    /// When the agent restarted the member recently (unix ms), for crash-loop detection.
    pub crash_restarts_ms: Vec<i64>,
    /// Too many restarts in the window: the agent stopped restarting it.
    pub crash_looping: bool,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct LocalState {
    root: PathBuf,
}

/// Writes `data` to `path` atomically with `mode`.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io(&tmp))?;
    f.write_all(data).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

impl LocalState {
    /// Opens (creating) the state directory, mode 0700: it holds secrets.
    pub fn open(root: &Path) -> Result<Self> {
        for d in [root.to_owned(), root.join("members"), root.join("secrets")] {
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700)).map_err(io(root))?;
        Ok(LocalState {
            root: root.to_owned(),
        })
    }

    /// The last desired state received, if any.
    pub fn load_desired(&self) -> Result<Option<DesiredState>> {
        let p = self.root.join("desired.json");
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Corrupt {
                    path: p,
                    message: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&p)(e)),
        }
    }

    /// Persists the desired state (0600: assignments carry secrets).
    pub fn save_desired(&self, d: &DesiredState) -> Result<()> {
        let p = self.root.join("desired.json");
        let b = serde_json::to_vec(d).map_err(|e| Error::Corrupt {
            path: p.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&p, &b, 0o600)
    }

    fn member_dir(&self, member: &str) -> PathBuf {
        self.root.join("members").join(member)
    }

    /// The directory mounted at `/etc/mofang` in the member's container.
    pub fn config_dir(&self, member: &str) -> PathBuf {
        self.member_dir(member).join("etc")
    }

    /// A member's remembered facts (default when new).
    pub fn load_member(&self, member: &str) -> Result<MemberState> {
        let p = self.member_dir(member).join("state.json");
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Corrupt {
                path: p,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(MemberState::default()),
            Err(e) => Err(io(&p)(e)),
        }
    }

    /// Persists a member's facts.
    pub fn save_member(&self, member: &str, s: &MemberState) -> Result<()> {
        let dir = self.member_dir(member);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let p = dir.join("state.json");
        let b = serde_json::to_vec(s).map_err(|e| Error::Corrupt {
            path: p.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&p, &b, 0o600)
    }

    /// Writes the member's config files, owned by the server's uid, 0600, in a 0750 directory.
    /// Returns true if any file changed.
    pub fn write_config(&self, member: &str, files: &[ConfigFile], uid: u32) -> Result<bool> {
        let dir = self.config_dir(member);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).map_err(io(&dir))?;
        std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).map_err(io(&dir))?;
        let mut changed = false;
        for f in files {
            let p = dir.join(f.name);
            if std::fs::read(&p).ok().as_deref() == Some(f.contents.as_bytes()) {
                continue;
            }
            write_atomic(&p, f.contents.as_bytes(), 0o600)?;
            std::os::unix::fs::chown(&p, Some(uid), Some(uid)).map_err(io(&p))?;
            changed = true;
        }
        Ok(changed)
    }

    /// Forgets a member (after its container and volume are gone).
    pub fn remove_member(&self, member: &str) -> Result<()> {
        let dir = self.member_dir(member);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&dir)(e)),
            _ => Ok(()),
        }
    }

    /// Members with a state directory.
    pub fn members(&self) -> Vec<String> {
        let dir = self.root.join("members");
        std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The instance's secrets: the scheduler's when it sent them, else generated once and
    /// kept (0600) so every member of the instance on this node shares them.
    pub fn secrets(&self, instance: &str, from_scheduler: Option<Secrets>) -> Result<Secrets> {
        let p = self.root.join("secrets").join(format!("{instance}.json"));
        if let Some(s) = from_scheduler {
            let stored: Option<Secrets> = std::fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            if stored.as_ref() != Some(&s) {
                let b = serde_json::to_vec(&s).map_err(|e| Error::Corrupt {
                    path: p.clone(),
                    message: e.to_string(),
                })?;
                write_atomic(&p, &b, 0o600)?;
            }
            return Ok(s);
        }
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Corrupt {
                path: p,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let s = Secrets::generate();
                let b = serde_json::to_vec(&s).map_err(|e| Error::Corrupt {
                    path: p.clone(),
                    message: e.to_string(),
                })?;
                write_atomic(&p, &b, 0o600)?;
                Ok(s)
            }
            Err(e) => Err(io(&p)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_and_member_state_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let st = LocalState::open(dir.path()).unwrap();
        assert!(st.load_desired().unwrap().is_none());
        let d = DesiredState {
            node: "n".into(),
            revision: 7,
            members: vec![],
        };
        st.save_desired(&d).unwrap();
        assert_eq!(st.load_desired().unwrap().unwrap().revision, 7);
        let m = MemberState {
            applied_epoch: 3,
            applied_role: "primary".into(),
            ..Default::default()
        };
        st.save_member("a-0", &m).unwrap();
        assert_eq!(st.load_member("a-0").unwrap(), m);
        assert_eq!(st.members(), vec!["a-0".to_owned()]);
        st.remove_member("a-0").unwrap();
        assert_eq!(st.load_member("a-0").unwrap(), MemberState::default());
    }

    #[test]
    fn secrets_are_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let st = LocalState::open(dir.path()).unwrap();
        let a = st.secrets("orders", None).unwrap();
        let b = st.secrets("orders", None).unwrap();
        assert_eq!(a, b);
        let mode = std::fs::metadata(dir.path().join("secrets/orders.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

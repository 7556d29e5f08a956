//! The agent's local state on disk: the last desired state received, per-member facts
//! (applied epoch, port, restarts), the members' rendered config files and instance secrets.
//! Every write is write-temp + fsync + rename, so a crash leaves the old or the new file.
//!
//! Nothing in the state directory holds a password in clear (docs/secrets.md): the desired
//! state, the instance secrets and a copy of each member's config files are sealed with the
//! node's key (`key_file`, 0600, outside the state directory). The config files the
//! databases read are in `run_dir` (tmpfs), rendered again from the sealed copy after a reboot.

use crate::engine::{ConfigFile, Secrets};
use mofang_common::proto::DesiredState;
use mofang_common::sealed::{self, Keyring, Sealed};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::{info, warn};

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
    /// A sealed state file does not open with the node's key.
    #[error("state file {path} does not open with the key in `key_file`")]
    Unsealable {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: sealed::Error,
    },
    /// The key file is missing while the state directory holds secrets sealed with it.
    #[error(
        "config field `key_file`: {path} does not exist, and the state directory holds \
         secrets sealed with it: restore the file (or empty the state directory's sealed files: \
         the scheduler sends the secrets again)"
    )]
    KeyMissing {
        /// The key file.
        path: PathBuf,
    },
    /// The key file cannot be read or created, or is not a key file.
    #[error("config field `key_file`")]
    Key(#[source] sealed::Error),
}

impl Error {
    /// True when the operator's files are at fault: the agent exits 64.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Error::KeyMissing { .. } | Error::Key(_) | Error::Unsealable { .. }
        )
    }
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
    /// The newest restart generation the scheduler asked for that was carried out.
    pub restart_generation: u64,
    /// The newest rebuild generation the scheduler asked for that was carried out.
    pub rebuild_generation: u64,
    /// The agent stopped the container because the instance is stopped: its exit is not a
    /// death (no hold, no crash counted) and it is started again when the instance is.
    pub stopped: bool,
    /// The backup this member's volume was filled from (a restored instance's primary): it is
    /// filled once, before its server first starts.
    pub restored_from: Option<String>,
    /// A restore from this backup was started on this volume (a volume holding data this agent
    /// did not restore is never wiped).
    pub restore_attempt: Option<String>,
    /// A failed restore is not tried again before this (unix ms): every attempt reads the
    /// whole backup from the repository, and the passes a heartbeat or an assignment wakes
    /// must not turn a broken one into a download per second.
    pub restore_retry_at_ms: i64,
    /// A physical copy from a donor replica's agent (`<donor>@<rebuild generation>`,
    /// decision 167) was started on this volume: a volume holding data this agent did not
    /// copy is never wiped.
    pub seed_copy_attempt: Option<String>,
    /// The physical copy (`<donor>@<rebuild generation>`) that ended, well or not: never tried
    /// again for that donor and generation (a failed one leaves the logical copy; a replica
    /// rebuilt after diverging copies logically too).
    pub seed_copy_done: Option<String>,
    /// The credential rotation (its id) for which replication was last pointed at the
    /// primary with the new `repl` password: done once per rotation.
    pub repl_switched: Option<u64>,
    /// The TLS mode the running server serves with and the container start it was read at
    /// (`ContainerInfo::started_at`): the config files hold the desired mode, which a server
    /// reads only when it starts (decision 95). None: not known yet (taken as the desired).
    pub serving_tls: Option<ServingTls>,
    /// The parameters generation (`reconfigure`, issue 17) whose dynamic parameters were
    /// applied live on this member's server.
    pub parameters_generation: u64,
    /// The engine version the member's container runs (`10.11`); empty: a member from before
    /// upgrades existed, on the assignment's version. An `upgrade` changes the assignment's
    /// version first; the member moves to it at its restart step (container recreated on the
    /// new image, same volume), never before (issue 17).
    pub version: String,
    /// MariaDB: the server runs a newer version than its data files were last upgraded for:
    /// `mariadb-upgrade` runs once the server answers, before the new version is reported.
    pub upgrade_pending: bool,
}

/// The TLS mode a member's server runs with ([`MemberState::serving_tls`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServingTls {
    /// `off`, `optional` or `required` (`mofang_common::DbTls`).
    pub mode: String,
    /// The container start (RFC 3339) at which the server read it from its config.
    pub started_at: String,
}

/// The sealed copy of a member's config files.
#[derive(Serialize, Deserialize)]
struct ConfigBundle {
    /// Owner of the files (the database server's uid).
    uid: u32,
    /// Name to contents.
    files: BTreeMap<String, String>,
}

/// The state directory, the run directory and the key that seals what the first holds.
#[derive(Debug, Clone)]
pub struct LocalState {
    root: PathBuf,
    run: PathBuf,
    key: Arc<Keyring>,
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

fn private_dir(d: &Path, mode: u32) -> Result<()> {
    std::fs::create_dir_all(d).map_err(io(d))?;
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).map_err(io(d))
}

const DESIRED_AAD: &str = "mofang-agent/desired";

fn secrets_aad(instance: &str) -> String {
    format!("mofang-agent/secrets/{instance}")
}

fn config_aad(member: &str) -> String {
    format!("mofang-agent/config/{member}")
}

fn tls_aad(member: &str) -> String {
    format!("mofang-agent/tls/{member}")
}

/// A member's TLS material as kept (sealed: it holds the member's private key): the key made
/// here, the certificate the cluster CA signed for it, the CA, and the names it was asked for.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberTlsState {
    /// The member's private key, PEM.
    pub key_pem: String,
    /// Its certificate, PEM.
    pub cert_pem: String,
    /// The cluster CA, PEM.
    pub ca_pem: String,
    /// The names the certificate carries besides the member id.
    pub names: Vec<String>,
    /// When it expires, unix seconds.
    pub not_after: i64,
}

impl std::fmt::Debug for MemberTlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberTlsState")
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// True if the file starts like a sealed value.
fn is_sealed_file(p: &Path) -> bool {
    std::fs::read(p)
        .map(|b| b.starts_with(sealed::PREFIX.as_bytes()))
        .unwrap_or(false)
}

/// What [`LocalState::rotate_key`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The new key's id (it seals everything now).
    pub key: u32,
    /// The ids removed from the key file.
    pub retired: Vec<u32>,
    /// Sealed files written again with the new key.
    pub files: usize,
}

impl LocalState {
    /// Opens (creating) the state directory (0700) and the run directory (0700), reads the
    /// key file (created 0600 when missing and nothing sealed needs it), seals what an older
    /// agent left in clear, and puts back the members' config files in the run directory
    /// (gone after a reboot).
    pub fn open(root: &Path, key_file: &Path, run: &Path) -> Result<Self> {
        for d in [root.to_owned(), root.join("members"), root.join("secrets")] {
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        private_dir(root, 0o700)?;
        private_dir(run, 0o700)?;
        let key = match Keyring::load(key_file) {
            Ok(k) => k,
            Err(sealed::Error::Missing { .. }) if !Self::holds_sealed(root) => {
                let (k, created) = Keyring::load_or_create(key_file).map_err(Error::Key)?;
                if created {
                    info!(path = %key_file.display(), "key file created (mode 0600)");
                }
                k
            }
            Err(sealed::Error::Missing { .. }) => {
                return Err(Error::KeyMissing {
                    path: key_file.to_owned(),
                })
            }
            Err(e) => return Err(Error::Key(e)),
        };
        let st = LocalState {
            root: root.to_owned(),
            run: run.to_owned(),
            key: Arc::new(key),
        };
        st.seal_legacy()?;
        st.verify_key()?;
        st.restore_configs()?;
        Ok(st)
    }

    /// Rotates the state directory's key (`mofang-agent --rotate-key`, agent stopped;
    /// decision 113): a new key is added to `key_file` and made active (the file then holds
    /// both: whatever happens next, every file opens), every sealed file is opened and sealed
    /// again with it, then the older keys are removed from the file. Refused, changing
    /// nothing, when the key file is missing or does not open every sealed file.
    pub fn rotate_key(root: &Path, key_file: &Path) -> Result<Rotated> {
        let mut ring = match Keyring::load(key_file) {
            Ok(k) => k,
            Err(sealed::Error::Missing { .. }) => {
                return Err(Error::KeyMissing {
                    path: key_file.to_owned(),
                })
            }
            Err(e) => return Err(Error::Key(e)),
        };
        let old = LocalState {
            root: root.to_owned(),
            run: root.to_owned(),
            key: Arc::new(ring.clone()),
        };
        let files = old.sealed_files()?;
        // Every file opens with the current key before anything is written.
        for (p, aad) in &files {
            old.read_sealed(p, aad)?;
        }
        let key = ring.rotate();
        ring.save(key_file).map_err(Error::Key)?;
        let st = LocalState {
            key: Arc::new(ring.clone()),
            ..old
        };
        for (p, aad) in &files {
            if let Some(plain) = st.read_sealed(p, aad)? {
                st.write_sealed(p, aad, &plain)?;
            }
        }
        let retired: Vec<u32> = ring.ids().into_iter().filter(|id| *id != key).collect();
        for id in &retired {
            ring.retire(*id);
        }
        ring.save(key_file).map_err(Error::Key)?;
        Ok(Rotated {
            key,
            retired,
            files: files.len(),
        })
    }

    /// Every sealed file of the state directory with its associated data.
    fn sealed_files(&self) -> Result<Vec<(PathBuf, String)>> {
        let mut out = Vec::new();
        let desired = self.root.join("desired.json");
        if is_sealed_file(&desired) {
            out.push((desired, DESIRED_AAD.to_owned()));
        }
        let list = |d: &Path| -> Result<Vec<PathBuf>> {
            match std::fs::read_dir(d) {
                Ok(rd) => Ok(rd.flatten().map(|e| e.path()).collect()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(io(d)(e)),
            }
        };
        for p in list(&self.root.join("secrets"))? {
            let instance = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .map(str::to_owned);
            if let Some(instance) = instance.filter(|_| is_sealed_file(&p)) {
                out.push((p, secrets_aad(&instance)));
            }
        }
        for dir in list(&self.root.join("members"))? {
            let Some(member) = dir.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            for (name, aad) in [
                ("config.sealed", config_aad(&member)),
                ("tls.sealed", tls_aad(&member)),
            ] {
                let p = dir.join(name);
                if is_sealed_file(&p) {
                    out.push((p, aad));
                }
            }
        }
        Ok(out)
    }

    /// Opens every sealed file once: a key that is not the one they were sealed with is
    /// found at start (exit 64), not when a member first needs its secrets.
    fn verify_key(&self) -> Result<()> {
        self.read_sealed(&self.root.join("desired.json"), DESIRED_AAD)?;
        let dir = self.root.join("secrets");
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
            let p = entry.path();
            if let Some(instance) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            {
                self.read_sealed(&p, &secrets_aad(instance))?;
            }
        }
        Ok(())
    }

    /// Whether anything in `root` is sealed (then its key file is needed).
    fn holds_sealed(root: &Path) -> bool {
        let in_dir = |d: PathBuf, f: &dyn Fn(&Path) -> bool| {
            std::fs::read_dir(d)
                .map(|rd| rd.filter_map(|e| e.ok()).any(|e| f(&e.path())))
                .unwrap_or(false)
        };
        is_sealed_file(&root.join("desired.json"))
            || in_dir(root.join("secrets"), &|p| is_sealed_file(p))
            || in_dir(root.join("members"), &|p| p.join("config.sealed").exists())
    }

    fn seal_text(&self, aad: &str, plain: &[u8]) -> Result<Vec<u8>> {
        self.key
            .seal(aad.as_bytes(), plain)
            .map(|s| s.to_string().into_bytes())
            .map_err(|source| Error::Unsealable {
                path: self.root.clone(),
                source,
            })
    }

    /// Reads a file written by [`Self::write_sealed`] (or, from an older agent, in clear).
    fn read_sealed(&self, p: &Path, aad: &str) -> Result<Option<Vec<u8>>> {
        let bytes = match std::fs::read(p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(p)(e)),
        };
        if !bytes.starts_with(sealed::PREFIX.as_bytes()) {
            return Ok(Some(bytes));
        }
        let unsealable = |source| Error::Unsealable {
            path: p.to_owned(),
            source,
        };
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| unsealable(sealed::Error::Malformed("not UTF-8")))?;
        let plain = self
            .key
            .open(
                aad.as_bytes(),
                &Sealed::parse(text.trim()).map_err(unsealable)?,
            )
            .map_err(unsealable)?;
        Ok(Some(plain.to_vec()))
    }

    fn write_sealed(&self, p: &Path, aad: &str, plain: &[u8]) -> Result<()> {
        write_atomic(p, &self.seal_text(aad, plain)?, 0o600)
    }

    /// Seals what an agent before secrets were sealed left in clear: the desired state,
    /// instance secrets, and member config directories (moved to the run directory; the old
    /// path becomes a link to it, so containers created with it still find their files).
    fn seal_legacy(&self) -> Result<()> {
        let desired = self.root.join("desired.json");
        if desired.exists() && !is_sealed_file(&desired) {
            if let Some(d) = self.load_desired()? {
                self.save_desired(&d)?;
                info!("sealed the desired state left in clear");
            }
        }
        let dir = self.root.join("secrets");
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
            let p = entry.path();
            let Some(instance) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            if !is_sealed_file(&p) {
                let plain = std::fs::read(&p).map_err(io(&p))?;
                self.write_sealed(&p, &secrets_aad(instance), &plain)?;
                info!(instance, "sealed the instance secrets left in clear");
            }
        }
        for member in self.members() {
            let etc = self.member_dir(&member).join("etc");
            let Ok(meta) = std::fs::symlink_metadata(&etc) else {
                continue;
            };
            if !meta.is_dir() {
                continue;
            }
            let mut files = Vec::new();
            let mut uid = meta.uid();
            for entry in std::fs::read_dir(&etc).map_err(io(&etc))?.flatten() {
                let p = entry.path();
                let (Some(name), Ok(contents)) = (
                    p.file_name().and_then(|n| n.to_str()).map(str::to_owned),
                    std::fs::read_to_string(&p),
                ) else {
                    continue;
                };
                if let Ok(m) = entry.metadata() {
                    uid = m.uid();
                }
                files.push((name, contents));
            }
            self.write_files(&member, &files, uid)?;
            std::fs::remove_dir_all(&etc).map_err(io(&etc))?;
            std::os::unix::fs::symlink(self.config_dir(&member), &etc).map_err(io(&etc))?;
            info!(member, run_dir = %self.run.display(), "moved the member's config files out of the state directory");
        }
        Ok(())
    }

    /// Puts the members' config files back in the run directory from their sealed copies
    /// (after a reboot emptied it), so a stopped container can start before any reconcile.
    fn restore_configs(&self) -> Result<()> {
        for member in self.members() {
            let p = self.member_dir(&member).join("config.sealed");
            let Some(plain) = self.read_sealed(&p, &config_aad(&member))? else {
                continue;
            };
            let bundle: ConfigBundle =
                serde_json::from_slice(&plain).map_err(|e| Error::Corrupt {
                    path: p.clone(),
                    message: e.to_string(),
                })?;
            let files: Vec<(String, String)> = bundle.files.into_iter().collect();
            if self.write_run_files(&member, &files, bundle.uid)? {
                info!(member, "config files restored in the run directory");
            }
        }
        Ok(())
    }

    /// The last desired state received, if any.
    pub fn load_desired(&self) -> Result<Option<DesiredState>> {
        let p = self.root.join("desired.json");
        match self.read_sealed(&p, DESIRED_AAD)? {
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Corrupt {
                    path: p,
                    message: e.to_string(),
                }),
            None => Ok(None),
        }
    }

    /// Persists the desired state, sealed (assignments carry secrets).
    pub fn save_desired(&self, d: &DesiredState) -> Result<()> {
        let p = self.root.join("desired.json");
        let b = serde_json::to_vec(d).map_err(|e| Error::Corrupt {
            path: p.clone(),
            message: e.to_string(),
        })?;
        self.write_sealed(&p, DESIRED_AAD, &b)
    }

    fn member_dir(&self, member: &str) -> PathBuf {
        self.root.join("members").join(member)
    }

    /// The directory mounted at `/etc/mofang` in the member's container (in the run
    /// directory: it holds passwords in clear for the database server).
    pub fn config_dir(&self, member: &str) -> PathBuf {
        self.run.join(member)
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

    /// Writes the member's config files, owned by the server's uid, 0600, in a 0750 directory
    /// of the run directory, and their sealed copy in the state directory. Returns true if any
    /// file changed.
    pub fn write_config(&self, member: &str, files: &[ConfigFile], uid: u32) -> Result<bool> {
        let files: Vec<(String, String)> = files
            .iter()
            .map(|f| (f.name.to_owned(), f.contents.clone()))
            .collect();
        self.write_files(member, &files, uid)
    }

    fn write_files(&self, member: &str, files: &[(String, String)], uid: u32) -> Result<bool> {
        let changed = self.write_run_files(member, files, uid)?;
        let dir = self.member_dir(member);
        let sealed = dir.join("config.sealed");
        if changed || !sealed.exists() {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            let bundle = ConfigBundle {
                uid,
                files: files.iter().cloned().collect(),
            };
            let b = serde_json::to_vec(&bundle).map_err(|e| Error::Corrupt {
                path: sealed.clone(),
                message: e.to_string(),
            })?;
            self.write_sealed(&sealed, &config_aad(member), &b)?;
        }
        Ok(changed)
    }

    fn write_run_files(&self, member: &str, files: &[(String, String)], uid: u32) -> Result<bool> {
        let dir = self.config_dir(member);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).map_err(io(&dir))?;
        std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).map_err(io(&dir))?;
        let mut changed = false;
        for (name, contents) in files {
            if name.contains('/') || name.starts_with('.') {
                warn!(member, "config file with an unusable name skipped");
                continue;
            }
            let p = dir.join(name);
            if std::fs::read(&p).ok().as_deref() == Some(contents.as_bytes()) {
                continue;
            }
            write_atomic(&p, contents.as_bytes(), 0o600)?;
            std::os::unix::fs::chown(&p, Some(uid), Some(uid)).map_err(io(&p))?;
            changed = true;
        }
        Ok(changed)
    }

    /// A member's TLS material, if it has some (`members/<member>/tls.sealed`).
    pub fn member_tls(&self, member: &str) -> Result<Option<MemberTlsState>> {
        let p = self.member_dir(member).join("tls.sealed");
        match self.read_sealed(&p, &tls_aad(member))? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Corrupt {
                    path: p,
                    message: e.to_string(),
                }),
        }
    }

    /// Keeps a member's TLS material, sealed.
    pub fn save_member_tls(&self, member: &str, t: &MemberTlsState) -> Result<()> {
        let dir = self.member_dir(member);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let p = dir.join("tls.sealed");
        let b = serde_json::to_vec(t).map_err(|e| Error::Corrupt {
            path: p.clone(),
            message: e.to_string(),
        })?;
        self.write_sealed(&p, &tls_aad(member), &b)
    }

    /// Forgets a member (after its container and volume are gone).
    pub fn remove_member(&self, member: &str) -> Result<()> {
        for dir in [self.member_dir(member), self.config_dir(member)] {
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&dir)(e)),
                _ => {}
            }
        }
        Ok(())
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

    /// The instance's secrets as kept (sealed), if any; never generates them.
    pub fn stored_secrets(&self, instance: &str) -> Result<Option<Secrets>> {
        let p = self.root.join("secrets").join(format!("{instance}.json"));
        match self.read_sealed(&p, &secrets_aad(instance))? {
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Corrupt {
                    path: p.clone(),
                    message: e.to_string(),
                }),
            None => Ok(None),
        }
    }

    /// The instance's secrets: the scheduler's when it sent them, else generated once and
    /// kept (sealed) so every member of the instance on this node shares them.
    pub fn secrets(&self, instance: &str, from_scheduler: Option<Secrets>) -> Result<Secrets> {
        let p = self.root.join("secrets").join(format!("{instance}.json"));
        let aad = secrets_aad(instance);
        let encode = |s: &Secrets| {
            serde_json::to_vec(s).map_err(|e| Error::Corrupt {
                path: p.clone(),
                message: e.to_string(),
            })
        };
        if let Some(s) = from_scheduler {
            // What is kept may be older, or unreadable: the scheduler's word replaces it.
            let stored: Option<Secrets> = self
                .read_sealed(&p, &aad)
                .ok()
                .flatten()
                .and_then(|b| serde_json::from_slice(&b).ok());
            if stored.as_ref() != Some(&s) || !is_sealed_file(&p) {
                self.write_sealed(&p, &aad, &encode(&s)?)?;
            }
            return Ok(s);
        }
        match self.read_sealed(&p, &aad)? {
            Some(b) => serde_json::from_slice(&b).map_err(|e| Error::Corrupt {
                path: p.clone(),
                message: e.to_string(),
            }),
            None => {
                let s = Secrets::generate();
                self.write_sealed(&p, &aad, &encode(&s)?)?;
                Ok(s)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PW: &str = "Zq8Rt5Wn2Yk7Lp4Hs9Dm3Fv6Bx1Cj0Ga";

    fn open(dir: &Path) -> Result<LocalState> {
        LocalState::open(&dir.join("state"), &dir.join("state.key"), &dir.join("run"))
    }

    fn secrets() -> Secrets {
        Secrets {
            admin: format!("A{PW}"),
            repl: format!("R{PW}"),
            monitor: format!("M{PW}"),
            app: format!("P{PW}"),
        }
    }

    /// Every file under `dir`, byte by byte (links not followed): where `PW` appears.
    fn holding_password(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut todo = vec![dir.to_owned()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let ft = e.file_type().unwrap();
                if ft.is_dir() {
                    todo.push(e.path());
                } else if ft.is_file() {
                    let b = std::fs::read(e.path()).unwrap();
                    if b.windows(PW.len()).any(|w| w == PW.as_bytes()) {
                        found.push(e.path());
                    }
                }
            }
        }
        found
    }

    fn desired_with_secrets() -> DesiredState {
        let mut a = mofang_common::proto::Assignment {
            member: "db-0".into(),
            instance: "db".into(),
            ..Default::default()
        };
        a.secrets.insert("admin".into(), format!("A{PW}"));
        DesiredState {
            node: "n".into(),
            revision: 7,
            members: vec![a],
            jobs: vec![],
        }
    }

    #[test]
    fn desired_and_member_state_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let st = open(dir.path()).unwrap();
        assert!(st.load_desired().unwrap().is_none());
        st.save_desired(&desired_with_secrets()).unwrap();
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
    fn stored_secrets_read_what_is_kept_and_generate_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let st = open(dir.path()).unwrap();
        assert_eq!(st.stored_secrets("none").unwrap(), None);
        assert!(!dir.path().join("state/secrets/none.json").exists());
        let s = st.secrets("db", None).unwrap();
        assert_eq!(st.stored_secrets("db").unwrap(), Some(s));
    }

    #[test]
    fn secrets_are_stable_and_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let st = open(dir.path()).unwrap();
        let a = st.secrets("orders", None).unwrap();
        let b = st.secrets("orders", None).unwrap();
        assert_eq!(a, b);
        let p = dir.path().join("state/secrets/orders.json");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(is_sealed_file(&p));
        let key = std::fs::metadata(dir.path().join("state.key")).unwrap();
        assert_eq!(key.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn the_state_directory_holds_no_password_and_a_restart_reads_everything_back() {
        let dir = tempfile::tempdir().unwrap();
        let uid = rustix_uid();
        {
            let st = open(dir.path()).unwrap();
            st.save_desired(&desired_with_secrets()).unwrap();
            st.secrets("db", Some(secrets())).unwrap();
            let files = [ConfigFile {
                name: "redis.conf",
                contents: format!("masterauth R{PW}\n"),
            }];
            assert!(st.write_config("db-0", &files, uid).unwrap());
            assert!(!st.write_config("db-0", &files, uid).unwrap(), "unchanged");
        }
        assert_eq!(
            holding_password(&dir.path().join("state")),
            Vec::<PathBuf>::new()
        );
        // The server reads its file in clear, in the run directory only.
        assert_eq!(
            holding_password(&dir.path().join("run")),
            vec![dir.path().join("run/db-0/redis.conf")]
        );
        // A reboot empties the run directory: the next start puts the file back.
        std::fs::remove_dir_all(dir.path().join("run")).unwrap();
        let st = open(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("run/db-0/redis.conf")).unwrap(),
            format!("masterauth R{PW}\n")
        );
        assert_eq!(st.secrets("db", None).unwrap(), secrets());
        let d = st.load_desired().unwrap().unwrap();
        assert_eq!(d.members[0].secrets["admin"], format!("A{PW}"));
    }

    #[test]
    fn what_an_older_agent_left_in_clear_is_sealed_on_start() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("state");
        for d in ["members/db-0/etc", "secrets"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(
            root.join("desired.json"),
            serde_json::to_vec(&desired_with_secrets()).unwrap(),
        )
        .unwrap();
        std::fs::write(
            root.join("secrets/db.json"),
            serde_json::to_vec(&secrets()).unwrap(),
        )
        .unwrap();
        std::fs::write(root.join("members/db-0/etc/init.sql"), format!("'A{PW}'")).unwrap();
        assert_eq!(holding_password(&root).len(), 3);

        let st = open(dir.path()).unwrap();
        assert_eq!(holding_password(&root), Vec::<PathBuf>::new());
        assert_eq!(st.secrets("db", None).unwrap(), secrets());
        assert_eq!(st.load_desired().unwrap().unwrap().revision, 7);
        // A container created with the old path still finds its files.
        let old = root.join("members/db-0/etc");
        assert!(std::fs::symlink_metadata(&old)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read_to_string(old.join("init.sql")).unwrap(),
            format!("'A{PW}'")
        );
    }

    #[test]
    fn the_state_key_is_rotated_and_every_sealed_file_opens_with_the_new_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let st = open(dir.path()).unwrap();
        st.save_desired(&desired_with_secrets()).unwrap();
        st.secrets("db", Some(secrets())).unwrap();
        let files = [ConfigFile {
            name: "client.cnf",
            contents: format!("password = A{PW}\n"),
        }];
        let uid = nix_uid();
        st.write_config("db-0", &files, uid).unwrap();
        st.save_member_tls(
            "db-0",
            &MemberTlsState {
                key_pem: format!("K{PW}"),
                cert_pem: "c".into(),
                ca_pem: "a".into(),
                names: vec!["db-0".into()],
                not_after: 1,
            },
        )
        .unwrap();
        drop(st);
        let key = dir.path().join("state.key");
        let before = Keyring::load(&key).unwrap();
        let r = LocalState::rotate_key(&dir.path().join("state"), &key).unwrap();
        assert_eq!(r.files, 4, "desired, secrets, config, tls: {r:?}");
        assert_eq!(r.retired, before.ids());
        let after = Keyring::load(&key).unwrap();
        assert_eq!(after.ids(), vec![r.key], "only the new key is left");
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Everything opens with the new key alone, and nothing is in clear.
        let st = open(dir.path()).unwrap();
        assert_eq!(st.load_desired().unwrap().unwrap().revision, 7);
        assert_eq!(st.secrets("db", None).unwrap().app, format!("P{PW}"));
        assert_eq!(
            st.member_tls("db-0").unwrap().unwrap().key_pem,
            format!("K{PW}")
        );
        assert!(holding_password(&dir.path().join("state")).is_empty());
        // The old key opens none of it any more.
        before.save(&key).unwrap();
        assert!(matches!(open(dir.path()), Err(Error::Unsealable { .. })));
        // A wrong key file: refused, nothing written.
        Keyring::generate().save(&key).unwrap();
        let e = LocalState::rotate_key(&dir.path().join("state"), &key).unwrap_err();
        assert!(matches!(e, Error::Unsealable { .. }), "{e}");
        assert_eq!(
            Keyring::load(&key).unwrap().ids(),
            vec![1],
            "key file untouched"
        );
    }

    fn nix_uid() -> u32 {
        std::fs::metadata("/proc/self").map_or(0, |m| std::os::unix::fs::MetadataExt::uid(&m))
    }

    #[test]
    fn a_missing_or_wrong_key_file_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        open(dir.path())
            .unwrap()
            .secrets("db", Some(secrets()))
            .unwrap();
        let key = dir.path().join("state.key");
        std::fs::remove_file(&key).unwrap();
        let e = open(dir.path()).unwrap_err();
        assert!(
            matches!(e, Error::KeyMissing { .. }) && e.is_config(),
            "{e}"
        );
        assert!(e.to_string().contains("`key_file`"), "{e}");
        assert!(!key.exists(), "no new key for sealed state");
        // Another key: refused at open, for the secrets and for the desired state alike.
        Keyring::generate().save(&key).unwrap();
        let e = open(dir.path()).unwrap_err();
        assert!(
            matches!(e, Error::Unsealable { .. }) && e.is_config(),
            "{e}"
        );
        std::fs::remove_file(dir.path().join("state/secrets/db.json")).unwrap();
        let st = open(dir.path()).unwrap();
        st.save_desired(&desired_with_secrets()).unwrap();
        Keyring::generate().save(&key).unwrap();
        let e = open(dir.path()).unwrap_err();
        assert!(
            matches!(e, Error::Unsealable { .. }) && e.is_config(),
            "{e}"
        );
    }

    /// The test's own uid: a chown to it needs no privilege.
    fn rustix_uid() -> u32 {
        std::fs::metadata(std::env::temp_dir()).map_or(0, |_| {
            let probe = tempfile::NamedTempFile::new().expect("probe");
            probe.as_file().metadata().expect("metadata").uid()
        })
    }
}

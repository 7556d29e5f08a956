//! Secrets at rest (docs/secrets.md): the scheduler's two keyrings and the one place a
//! secret goes to be sealed before the store sees it.
//!
//! Envelope encryption, as Vault's barrier and Nomad's keyring do it: the **root keyring**
//! is a 0600 file on each scheduler (`keyring_file`, the same file on every scheduler of a
//! cluster); the **data keyring**, whose keys seal the secrets, lives in the store itself
//! (meta key [`KEYRING_META`]), sealed by the root keyring. Every scheduler sharing a Consul
//! or etcd store therefore sees the same data keys, and rotating them (`mofang keyring
//! rotate`) needs no file copied again. [`SealedStore`] wraps any [`Store`] and seals each
//! credential before it is written, so SQLite, Consul and etcd hold only ciphertext.

mod reseal;
mod store;

pub use reseal::{reencrypt, rotate, Reencrypted};
pub use store::{SealedStore, Usage};

use crate::store::Store;
use mofang_common::sealed::{self, Keyring, Sealed};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};
use tracing::{info, warn};
use utoipa::ToSchema;

/// Store meta key of the sealed data keyring.
pub const KEYRING_META: &str = "secrets/keyring";
/// Associated data binding the sealed data keyring to its place.
const KEYRING_AAD: &str = "mofang/keyring";
/// The config field that names the root keyring file (in messages).
pub const FIELD: &str = "keyring_file";

/// Why the keyrings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The root keyring file is missing, and the store holds a data keyring sealed by it.
    #[error(
        "config field `{FIELD}`: {path} does not exist, and the store holds secrets sealed \
         by a keyring file: copy that file here (mode 0600) from another scheduler or a backup"
    )]
    Missing {
        /// The configured file.
        path: PathBuf,
    },
    /// The root keyring file cannot be read or created, or is not a keyring.
    #[error("config field `{FIELD}`")]
    File(#[source] sealed::Error),
    /// The root keyring file does not open the store's data keyring: another cluster's
    /// file, or one from before a root rotation on another scheduler (decision 132).
    #[error(
        "config field `{FIELD}`: {path} does not open the store's keyring: if the root \
         keyring was rotated on another scheduler (`mofang keyring rotate-root`), copy that \
         scheduler's keyring_file here (mode 0600); otherwise it is a file from another cluster"
    )]
    WrongFile {
        /// The configured file.
        path: PathBuf,
        /// What the AEAD said.
        #[source]
        source: sealed::Error,
    },
    /// A stored secret does not open (named by record and field, never by value).
    #[error("{what} does not open")]
    Open {
        /// The record and field.
        what: String,
        /// Why.
        #[source]
        source: sealed::Error,
    },
    /// Sealing failed.
    #[error("sealing {what} failed")]
    Seal {
        /// The record and field.
        what: String,
        /// Why.
        #[source]
        source: sealed::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

impl Error {
    /// True when the operator's files are at fault: the daemon exits 64.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Error::Missing { .. } | Error::File(_) | Error::WrongFile { .. }
        )
    }
}

/// Result of keyring operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The root keyring (from the file) and the data keyring (from the store).
pub struct Vault {
    path: PathBuf,
    /// The root keyring as last read from `path` (read again before each use that needs
    /// it to match the file: another scheduler's file may have been rotated and copied here).
    root: RwLock<Keyring>,
    /// `None` only while opening a store that had none.
    data: RwLock<Option<Keyring>>,
    /// Serializes changes of the data keyring (creation, rotation, retirement).
    change: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// Reads the root keyring file, or creates it (0600) when the store holds no data
    /// keyring yet (first start, or a store written before secrets were sealed); then opens
    /// the store's data keyring with it. A missing file the store needs, a file readable by
    /// others, or another cluster's file: a config error (exit 64).
    pub async fn open(path: &Path, store: &dyn Store) -> Result<Self> {
        let stored = store.get_meta(KEYRING_META).await?;
        let root = match Keyring::load(path) {
            Ok(k) => k,
            Err(sealed::Error::Missing { .. }) if stored.is_none() => {
                let (k, created) = Keyring::load_or_create(path).map_err(Error::File)?;
                if created {
                    info!(path = %path.display(), "keyring file created (mode 0600): copy it to every scheduler of this cluster and keep a backup");
                }
                k
            }
            Err(sealed::Error::Missing { .. }) => {
                return Err(Error::Missing {
                    path: path.to_owned(),
                })
            }
            Err(e) => return Err(Error::File(e)),
        };
        let vault = Vault {
            path: path.to_owned(),
            root: RwLock::new(root),
            data: RwLock::new(None),
            change: tokio::sync::Mutex::new(()),
        };
        match stored {
            Some(text) => {
                let data = vault.unwrap_data(&text)?;
                *vault.data.write().unwrap_or_else(PoisonError::into_inner) = Some(data);
            }
            // The data keyring is made now, not at the first secret: a second scheduler
            // started with a file of its own is then refused at its start (WrongFile), not
            // when it first leads.
            None => vault.ensure(store).await?,
        }
        Ok(vault)
    }

    fn unwrap_data(&self, text: &str) -> Result<Keyring> {
        let wrong = |source| Error::WrongFile {
            path: self.path.clone(),
            source,
        };
        let sealed = Sealed::parse(text).map_err(wrong)?;
        // A data keyring sealed by a root key this scheduler does not hold yet: the file may
        // have been rotated and copied here since it was read (decision 114).
        if self
            .root_keyring()
            .open(KEYRING_AAD.as_bytes(), &sealed)
            .is_err()
        {
            if let Ok(k) = Keyring::load(&self.path) {
                *self.root.write().unwrap_or_else(PoisonError::into_inner) = k;
            }
        }
        let json = self
            .root_keyring()
            .open(KEYRING_AAD.as_bytes(), &sealed)
            .map_err(wrong)?;
        let json = std::str::from_utf8(&json)
            .map_err(|_| wrong(sealed::Error::Malformed("keyring is not UTF-8")))?;
        Keyring::from_json(json).map_err(|message| Error::Open {
            what: format!("store meta {KEYRING_META}"),
            source: sealed::Error::Corrupt {
                path: PathBuf::from(KEYRING_META),
                message,
            },
        })
    }

    async fn save_data(&self, store: &dyn Store, data: &Keyring) -> Result<()> {
        // Sealed with the file's active root key, never with one the file no longer holds.
        if let Ok(k) = Keyring::load(&self.path) {
            *self.root.write().unwrap_or_else(PoisonError::into_inner) = k;
        }
        let sealed = self
            .root_keyring()
            .seal(KEYRING_AAD.as_bytes(), data.to_json().as_bytes())
            .map_err(|source| Error::Seal {
                what: "the data keyring".into(),
                source,
            })?;
        store.put_meta(KEYRING_META, &sealed.to_string()).await?;
        Ok(())
    }

    /// Reads the data keyring from the store again (a new leader: another scheduler may
    /// have rotated it).
    pub async fn reload(&self, store: &dyn Store) -> Result<()> {
        if let Some(text) = store.get_meta(KEYRING_META).await? {
            let data = self.unwrap_data(&text)?;
            *self.data.write().unwrap_or_else(PoisonError::into_inner) = Some(data);
        }
        Ok(())
    }

    /// The data keyring, created and stored on first use.
    async fn ensure(&self, store: &dyn Store) -> Result<()> {
        if self.has_data() {
            return Ok(());
        }
        let _change = self.change.lock().await;
        self.reload(store).await?;
        if self.has_data() {
            return Ok(());
        }
        let data = Keyring::generate();
        self.save_data(store, &data).await?;
        info!(key = 1, "data keyring created in the store");
        // Read back what the store holds: with two writers, the last one's keyring wins.
        self.reload(store).await
    }

    fn has_data(&self) -> bool {
        self.data
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    fn current(&self) -> Option<Keyring> {
        self.data
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Seals `plain` with the active data key; `what` names it in errors.
    pub async fn seal(&self, store: &dyn Store, aad: &str, plain: &str) -> Result<String> {
        self.ensure(store).await?;
        let guard = self.data.read().unwrap_or_else(PoisonError::into_inner);
        let data = guard.as_ref().ok_or_else(|| Error::Seal {
            what: aad.to_owned(),
            source: sealed::Error::Empty,
        })?;
        data.seal_str(aad, plain).map_err(|source| Error::Seal {
            what: aad.to_owned(),
            source,
        })
    }

    /// Opens a stored value; a value in clear (written before secrets were sealed) is
    /// returned as it is. An unknown key id makes it read the store's data keyring again once.
    pub async fn open_value(&self, store: &dyn Store, aad: &str, text: &str) -> Result<String> {
        if !Sealed::is_sealed(text) {
            return Ok(text.to_owned());
        }
        let attempt = |data: Option<&Keyring>| match data {
            Some(k) => k.open_str(aad, text),
            None => Err(sealed::Error::UnknownKey {
                id: Sealed::key_id_of(text).unwrap_or(0),
                held: vec![],
            }),
        };
        let first = attempt(
            self.data
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref(),
        );
        let result = match first {
            Err(sealed::Error::UnknownKey { .. }) => {
                self.reload(store).await?;
                attempt(
                    self.data
                        .read()
                        .unwrap_or_else(PoisonError::into_inner)
                        .as_ref(),
                )
            }
            other => other,
        };
        result.map_err(|source| Error::Open {
            what: aad.to_owned(),
            source,
        })
    }

    /// Adds a new data key that seals from now on; older keys still open. Returns its id.
    pub async fn rotate(&self, store: &dyn Store) -> Result<u32> {
        self.ensure(store).await?;
        let _change = self.change.lock().await;
        self.reload(store).await?;
        let mut data = self.current().unwrap_or_else(Keyring::generate);
        let id = data.rotate();
        self.save_data(store, &data).await?;
        *self.data.write().unwrap_or_else(PoisonError::into_inner) = Some(data);
        info!(
            key = id,
            "data keyring rotated: new secrets are sealed with the new key"
        );
        Ok(id)
    }

    fn root_keyring(&self) -> Keyring {
        self.root
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Rotates the root keyring (decision 114): a new root key is added to `keyring_file`
    /// (the file then holds both, so whatever happens next the store's data keyring opens),
    /// the data keyring is sealed again with it and stored, then the old root keys are
    /// removed from the file. Returns (new key, retired keys). Copy the new file to every
    /// other scheduler afterwards: each reads it again when it next needs it.
    pub async fn rotate_root(&self, store: &dyn Store) -> Result<(u32, Vec<u32>)> {
        self.ensure(store).await?;
        let _change = self.change.lock().await;
        self.reload(store).await?;
        let data = self.current().ok_or_else(|| Error::Open {
            what: format!("store meta {KEYRING_META}"),
            source: sealed::Error::Malformed("no data keyring"),
        })?;
        let mut root = Keyring::load(&self.path).map_err(Error::File)?;
        let id = root.rotate();
        root.save(&self.path).map_err(Error::File)?;
        self.save_data(store, &data).await?;
        let retired: Vec<u32> = root.ids().into_iter().filter(|k| *k != id).collect();
        for k in &retired {
            root.retire(*k);
        }
        root.save(&self.path).map_err(Error::File)?;
        *self.root.write().unwrap_or_else(PoisonError::into_inner) = root;
        // What the store holds now opens with the file as it is.
        self.reload(store).await?;
        warn!(key = id, retired = ?retired, path = %self.path.display(), "root keyring rotated: copy this file to every other scheduler of the cluster");
        Ok((id, retired))
    }

    /// Removes data keys (never the active one); returns those removed.
    pub async fn retire(&self, store: &dyn Store, ids: &[u32]) -> Result<Vec<u32>> {
        let _change = self.change.lock().await;
        self.reload(store).await?;
        let Some(mut data) = self.current() else {
            return Ok(vec![]);
        };
        let retired: Vec<u32> = ids.iter().copied().filter(|&id| data.retire(id)).collect();
        if !retired.is_empty() {
            self.save_data(store, &data).await?;
            *self.data.write().unwrap_or_else(PoisonError::into_inner) = Some(data);
            warn!(keys = ?retired, "data keys retired: nothing they sealed is left");
        }
        Ok(retired)
    }

    /// The data keys held: (id, created at ms), oldest first; the last is active.
    pub fn keys(&self) -> Vec<(u32, i64)> {
        self.current()
            .map(|k| k.keys().map(|k| (k.id(), k.created_at_ms())).collect())
            .unwrap_or_default()
    }

    /// The active data key, if the data keyring exists yet.
    pub fn active_key(&self) -> Option<u32> {
        self.current().and_then(|k| k.active_id())
    }
}

/// The data keyring as `GET /v1/keyring` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct KeyringStatus {
    /// The key new secrets are sealed with (0: none yet, nothing sealed).
    pub active_key: u32,
    /// Every data key held, oldest first.
    pub keys: Vec<KeyStatus>,
    /// Secrets still in clear in the store (a store written before secrets were sealed,
    /// before the first start's re-encryption finished). 0 in a healthy cluster.
    pub clear_values: usize,
    /// Instances with a secret not sealed by the active key (re-encryption pending).
    pub pending_instances: usize,
    /// Other records sealed whole (backup repositories) not sealed by the active key
    /// (re-encryption pending).
    #[serde(default)]
    pub pending_records: usize,
}

/// One data key.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct KeyStatus {
    /// Key id (named by each ciphertext).
    pub id: u32,
    /// When it was created (unix ms).
    pub created_at_ms: i64,
    /// It seals new secrets.
    pub active: bool,
    /// Stored secrets it sealed. A key at 0 that is not active is retired by the next
    /// re-encryption pass.
    pub sealed_values: usize,
}

/// What `POST /v1/keyring/rotate` did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Rotation {
    /// The new active key.
    pub active_key: u32,
    /// Instances whose secrets were sealed again with it.
    pub resealed_instances: usize,
    /// Keys removed from the keyring: nothing in the store is sealed with them any more.
    pub retired_keys: Vec<u32>,
    /// The keyring afterwards.
    pub status: KeyringStatus,
}

/// Associated data of one credential field: a ciphertext opens only in its own record.
pub fn credential_aad(instance: &str, field: &str) -> String {
    format!("mofang/instance/{instance}/credentials/{field}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::cluster::Cluster;
    use crate::model::{Credentials, Instance, InstanceSpec, MemberRecord, Resources};
    use crate::store::SqliteStore;
    use mofang_common::{EngineKind, Role};
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    fn instance(name: &str) -> Instance {
        Instance::new(
            InstanceSpec {
                name: name.to_owned(),
                engine: EngineKind::Mariadb,
                version: "10.11".to_owned(),
                replicas: 0,
                resources: Resources {
                    cpu: 1.0,
                    memory: 512,
                    disk: 1024,
                },
                disk_class: None,
                placement: None,
                labels: Default::default(),
                restore: None,
                tls: Default::default(),
                backup: None,
            },
            vec![MemberRecord {
                id: format!("{name}-0"),
                node: "n1".to_owned(),
                role: Role::Primary,
                disk_class: "ssd".to_owned(),
            }],
            Credentials {
                admin: format!("AdminPw{name}x9Q2rT7vLm3Kp8Zs"),
                repl: format!("ReplPw{name}y4W1nB6cXe5Hj0Ud"),
                monitor: format!("MonitorPw{name}z7R3fG2kNa8Yt"),
                app: format!("AppPw{name}q5S9dJ1mVw4Lc6Eb"),
            },
        )
    }

    fn passwords(i: &Instance) -> [String; 4] {
        let c = &i.credentials;
        [
            c.admin.clone(),
            c.repl.clone(),
            c.monitor.clone(),
            c.app.clone(),
        ]
    }

    /// Every file in `dir` (the SQLite file, its WAL and shared memory), searched byte by
    /// byte: the passwords found, if any.
    fn found_in(dir: &Path, secrets: &[String]) -> Vec<String> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            for s in secrets {
                if bytes.windows(s.len()).any(|w| w == s.as_bytes()) {
                    found.push(format!("{} in {}", &s[..6], path.display()));
                }
            }
        }
        found
    }

    async fn open(dir: &Path) -> Arc<SealedStore> {
        let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("mofang.db")).unwrap());
        Arc::new(
            SealedStore::open(sqlite, &dir.join("keyring.json"))
                .await
                .unwrap(),
        )
    }

    /// A backup repository record (it holds an S3 secret) is sealed in the store and read
    /// back in clear, by key and by prefix; other metadata stays as written.
    #[tokio::test]
    async fn backup_repository_records_are_sealed_at_rest() {
        let dir = tempfile::tempdir().unwrap();
        let secret = "s3-secret-0123456789abcdef".to_owned();
        let record = format!("{{\"secret_access_key\":\"{secret}\"}}");
        {
            let store = open(dir.path()).await;
            store.put_meta("backup-repo/main", &record).await.unwrap();
            store.put_meta("plain", "v").await.unwrap();
            assert_eq!(
                store.get_meta("backup-repo/main").await.unwrap(),
                Some(record.clone())
            );
            assert_eq!(
                store.meta_with_prefix("backup-repo/").await.unwrap(),
                vec![("backup-repo/main".to_owned(), record.clone())]
            );
            let raw = store
                .inner()
                .get_meta("backup-repo/main")
                .await
                .unwrap()
                .unwrap();
            assert!(Sealed::is_sealed(&raw));
            assert_eq!(
                store.inner().get_meta("plain").await.unwrap().as_deref(),
                Some("v")
            );
            store.compact().await.unwrap();
        }
        assert_eq!(found_in(dir.path(), &[secret]), Vec::<String>::new());
    }

    /// The root keyring file rotated: a new root key wraps the data keyring, the old one is
    /// gone from the file and opens nothing; a scheduler started again with the new file
    /// reads every secret (decision 114).
    #[tokio::test]
    async fn the_root_keyring_is_rotated_without_losing_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let orders = instance("orders");
        let file = dir.path().join("keyring.json");
        let old_file;
        {
            let store = open(dir.path()).await;
            store.create_instance(&orders, &[]).await.unwrap();
            old_file = std::fs::read_to_string(&file).unwrap();
            let before = Keyring::load(&file).unwrap().ids();
            let (id, retired) = store
                .vault()
                .rotate_root(store.inner().as_ref())
                .await
                .unwrap();
            assert_eq!(retired, before);
            assert_eq!(Keyring::load(&file).unwrap().ids(), vec![id]);
            assert_eq!(
                std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
                0o600
            );
            // Secrets are still sealed and written with the (unchanged) data keyring.
            let mut next = store.instance("orders").await.unwrap().unwrap();
            next.auto_failover = false;
            store.update_instance(&next, &[]).await.unwrap();
            store.vault().rotate(store.inner().as_ref()).await.unwrap();
        }
        // Started again with the new file: every secret reads back.
        let store = open(dir.path()).await;
        let got = store.instance("orders").await.unwrap().unwrap();
        assert_eq!(got.credentials, orders.credentials);
        drop(store);
        // The old file opens nothing any more: refused at start, naming the field.
        std::fs::write(&file, &old_file).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let sqlite: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("mofang.db")).unwrap());
        let e = SealedStore::open(sqlite, &file).await.unwrap_err();
        assert!(matches!(e, Error::WrongFile { .. }) && e.is_config(), "{e}");
        // It says what to do after a rotation, not only "another cluster" (decision 132).
        assert!(
            e.to_string().contains("rotate-root")
                && e.to_string()
                    .contains("copy that scheduler's keyring_file here"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn the_sqlite_file_holds_no_password_and_a_restart_reads_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let orders = instance("orders");
        {
            let store = open(dir.path()).await;
            let stored = store.create_instance(&orders, &[]).await.unwrap();
            assert_eq!(
                stored.credentials, orders.credentials,
                "callers see clear values"
            );
            let mut next = stored.clone();
            next.auto_failover = false;
            store.update_instance(&next, &[]).await.unwrap();
            let raw = store.inner().instance("orders").await.unwrap().unwrap();
            assert!(Sealed::is_sealed(&raw.credentials.admin));
        }
        assert_eq!(
            found_in(dir.path(), &passwords(&orders)),
            Vec::<String>::new()
        );
        let mode = std::fs::metadata(dir.path().join("keyring.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let store = open(dir.path()).await;
        let back = store.instance("orders").await.unwrap().unwrap();
        assert_eq!(back.credentials, orders.credentials);
        assert!(!back.auto_failover);
        assert_eq!(store.instances().await.unwrap().len(), 1);
    }

    /// A credential rotation's other password is sealed like the credentials, bound to its
    /// place, and read back in clear.
    #[tokio::test]
    async fn a_rotation_password_is_sealed_at_rest() {
        let dir = tempfile::tempdir().unwrap();
        let new_pw = "RotatedPwq5S9dJ1mVw4Lc6EbZZ".to_owned();
        {
            let store = open(dir.path()).await;
            let stored = store
                .create_instance(&instance("orders"), &[])
                .await
                .unwrap();
            let next = crate::rotation::start(
                &stored,
                mofang_common::rotation::Account::App,
                new_pw.clone(),
                0,
                1,
            )
            .unwrap();
            store.update_instance(&next, &[]).await.unwrap();
            let raw = store.inner().instance("orders").await.unwrap().unwrap();
            let r = raw.rotation.expect("rotation stored");
            assert!(Sealed::is_sealed(&r.password));
            assert_eq!(
                store.usage().await.unwrap().by_key.values().sum::<usize>(),
                5,
                "counted with the credentials"
            );
        }
        assert_eq!(
            found_in(dir.path(), std::slice::from_ref(&new_pw)),
            Vec::<String>::new()
        );
        let store = open(dir.path()).await;
        let back = store.instance("orders").await.unwrap().unwrap();
        assert_eq!(back.rotation.map(|r| r.password), Some(new_pw));
    }

    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn a_store_written_in_clear_is_sealed_on_the_first_start() {
        let dir = tempfile::tempdir().unwrap();
        let old = instance("legacy");
        {
            // The code before this change: credentials in clear, updated a few times (old
            // record versions in free pages).
            let plain = SqliteStore::open(&dir.path().join("mofang.db")).unwrap();
            let mut i = plain.create_instance(&old, &[]).await.unwrap();
            for _ in 0..3 {
                i.epoch += 1;
                i = plain.update_instance(&i, &[]).await.unwrap();
            }
        }
        assert!(
            !found_in(dir.path(), &passwords(&old)).is_empty(),
            "clear before"
        );
        {
            let store = open(dir.path()).await;
            let status = store.status().await.unwrap();
            assert_eq!((status.clear_values, status.pending_instances), (4, 1));
            let cluster = Cluster::load(store.clone(), Duration::from_secs(30))
                .await
                .unwrap();
            cluster.activate().await.unwrap();
            let done = reencrypt(&cluster, &store).await.unwrap();
            assert_eq!((done.resealed, done.left), (1, 0));
            let status = store.status().await.unwrap();
            assert_eq!((status.clear_values, status.pending_instances), (0, 0));
            assert_eq!(status.keys.len(), 1);
            assert_eq!(status.keys[0].sealed_values, 4);
        }
        assert_eq!(found_in(dir.path(), &passwords(&old)), Vec::<String>::new());
        let store = open(dir.path()).await;
        let back = store.instance("legacy").await.unwrap().unwrap();
        assert_eq!(back.credentials, old.credentials);
        assert_eq!(back.epoch, 4, "nothing else changed");
    }

    #[tokio::test]
    async fn rotation_seals_with_the_new_key_and_retires_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        let a = instance("a");
        store.create_instance(&a, &[]).await.unwrap();
        // A new key alone: old values still open, new writes use the new key.
        assert_eq!(
            store.vault().rotate(store.inner().as_ref()).await.unwrap(),
            2
        );
        let b = instance("b");
        store.create_instance(&b, &[]).await.unwrap();
        let cluster = Cluster::load(store.clone(), Duration::from_secs(30))
            .await
            .unwrap();
        cluster.activate().await.unwrap();
        let usage = store.usage().await.unwrap();
        assert_eq!(usage.by_key, BTreeMap::from([(1, 4), (2, 4)]));
        assert_eq!(usage.stale, vec!["a".to_owned()]);
        assert_eq!(
            store.instance("a").await.unwrap().unwrap().credentials,
            a.credentials
        );

        // The whole rotation: key 3, everything sealed again, 1 and 2 retired.
        let r = rotate(&cluster, &store).await.unwrap();
        assert_eq!(r.active_key, 3);
        assert_eq!(r.retired_keys, vec![1, 2]);
        assert_eq!(r.resealed_instances, 2, "a under key 1, b under key 2");
        assert_eq!(r.status.keys.len(), 1);
        assert_eq!(
            (r.status.keys[0].id, r.status.keys[0].sealed_values),
            (3, 8)
        );
        let events = store.events(None, 0, 10).await.unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["keyring_rotated", "key_retired"]);
        drop((cluster, store));

        let store = open(dir.path()).await;
        for i in [&a, &b] {
            let back = store.instance(&i.spec.name).await.unwrap().unwrap();
            assert_eq!(back.credentials, i.credentials);
        }
        assert_eq!(store.vault().active_key(), Some(3));
    }

    /// A backup repository record (sealed whole, with its S3 secret) is sealed again by a
    /// rotation like the instances' secrets, counted meanwhile, and still opens after its old
    /// key is retired, also after a restart; one written in clear is sealed by the pass.
    #[tokio::test]
    async fn rotation_seals_repository_records_again_before_retiring_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        let repo = |name: &str| {
            serde_json::json!({"name": name, "created_at_ms": 1, "spec": {"kind": "s3",
                "endpoint": "http://127.0.0.1:1", "bucket": "b", "access_key_id": "ak",
                "secret_access_key": format!("s3-secret-{name}")}})
            .to_string()
        };
        let (main, old) = (repo("main"), repo("old"));
        let (main, old) = (main.as_str(), old.as_str());
        store.put_meta("backup-repo/main", main).await.unwrap();
        store
            .inner()
            .put_meta("backup-repo/old", old)
            .await
            .unwrap();
        let status = store.status().await.unwrap();
        assert_eq!((status.clear_values, status.pending_records), (1, 1));
        assert_eq!(status.keys[0].sealed_values, 1);
        let cluster = Cluster::load(store.clone(), Duration::from_secs(30))
            .await
            .unwrap();
        cluster.activate().await.unwrap();

        let r = rotate(&cluster, &store).await.unwrap();
        assert_eq!((r.active_key, r.retired_keys.clone()), (2, vec![1]));
        assert_eq!(
            (r.status.clear_values, r.status.pending_records),
            (0, 0),
            "{r:?}"
        );
        assert_eq!(
            (r.status.keys.len(), r.status.keys[0].sealed_values),
            (1, 2)
        );
        for key in ["backup-repo/main", "backup-repo/old"] {
            let raw = store.inner().get_meta(key).await.unwrap().unwrap();
            assert_eq!(Sealed::key_id_of(&raw).unwrap(), 2, "{key}");
        }
        drop((cluster, store));
        assert_eq!(
            found_in(
                dir.path(),
                &["s3-secret-main".into(), "s3-secret-old".into()]
            ),
            Vec::<String>::new()
        );

        let store = open(dir.path()).await;
        assert_eq!(store.vault().active_key(), Some(2));
        assert_eq!(
            store.meta_with_prefix("backup-repo/").await.unwrap(),
            vec![
                ("backup-repo/main".to_owned(), main.to_owned()),
                ("backup-repo/old".to_owned(), old.to_owned())
            ]
        );
    }

    #[tokio::test]
    async fn a_tampered_or_moved_ciphertext_is_refused_naming_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).await;
        store.create_instance(&instance("a"), &[]).await.unwrap();
        store.create_instance(&instance("b"), &[]).await.unwrap();
        let raw = store.inner();
        // One character of a's admin ciphertext changed.
        let mut a = raw.instance("a").await.unwrap().unwrap();
        let flip = |c: char| if c == 'A' { 'B' } else { 'A' };
        let last = a.credentials.admin.pop().unwrap();
        a.credentials.admin.push(flip(last));
        raw.update_instance(&a, &[]).await.unwrap();
        let e = store.instance("a").await.unwrap_err().to_string();
        assert!(
            e.contains("instance a") && e.contains("credentials/admin"),
            "{e}"
        );
        assert!(e.contains("does not open"), "{e}");
        // b's app ciphertext copied into b's admin field: bound to its field, refused.
        let mut b = raw.instance("b").await.unwrap().unwrap();
        b.credentials.admin = b.credentials.app.clone();
        raw.update_instance(&b, &[]).await.unwrap();
        let e = store.instance("b").await.unwrap_err().to_string();
        assert!(e.contains("credentials/admin"), "{e}");
        // A scheduler does not start on such a store: loading fails, nothing is used.
        assert!(Cluster::load(store.clone(), Duration::from_secs(30))
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_missing_or_foreign_keyring_file_is_a_config_error_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let keyring = dir.path().join("keyring.json");
        {
            let store = open(dir.path()).await;
            store.create_instance(&instance("a"), &[]).await.unwrap();
        }
        let sqlite = || -> Arc<dyn Store> {
            Arc::new(SqliteStore::open(&dir.path().join("mofang.db")).unwrap())
        };
        let stored_keyring = sqlite().get_meta(KEYRING_META).await.unwrap();

        let saved = dir.path().join("saved.json");
        std::fs::rename(&keyring, &saved).unwrap();
        let e = SealedStore::open(sqlite(), &keyring).await.unwrap_err();
        assert!(matches!(e, Error::Missing { .. }), "{e}");
        assert!(e.is_config());
        assert!(e.to_string().contains("`keyring_file`"), "{e}");
        assert!(
            !keyring.exists(),
            "no new keyring made for a store that needs the old one"
        );

        Keyring::generate().save(&keyring).unwrap();
        let e = SealedStore::open(sqlite(), &keyring).await.unwrap_err();
        assert!(matches!(e, Error::WrongFile { .. }), "{e}");
        assert!(e.is_config());

        std::fs::rename(&saved, &keyring).unwrap();
        std::fs::set_permissions(&keyring, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = SealedStore::open(sqlite(), &keyring).await.unwrap_err();
        assert!(matches!(e, Error::File(_)) && e.is_config(), "{e}");

        // Unreadable (here: a directory where the file should be).
        std::fs::rename(&keyring, &saved).unwrap();
        std::fs::create_dir(&keyring).unwrap();
        std::fs::set_permissions(&keyring, std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = SealedStore::open(sqlite(), &keyring).await.unwrap_err();
        assert!(matches!(e, Error::File(_)) && e.is_config(), "{e}");
        std::fs::remove_dir(&keyring).unwrap();
        std::fs::rename(&saved, &keyring).unwrap();

        assert_eq!(
            sqlite().get_meta(KEYRING_META).await.unwrap(),
            stored_keyring
        );
        std::fs::set_permissions(&keyring, std::fs::Permissions::from_mode(0o600)).unwrap();
        let store = open(dir.path()).await;
        assert!(store.instance("a").await.unwrap().is_some());
    }
}

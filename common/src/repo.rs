//! Backup repositories: where backups are kept (an S3 bucket, or a directory mounted at the
//! same path on every host), how a scheduler or an agent opens one, and the probe both run
//! before a repository is accepted (write, read back, list, delete one small object).
//!
//! Both daemons use this one file, so the scheduler's check and every agent's check are the
//! same steps with the same names ([`ProbeStep`]). Bytes move through `object_store`
//! (decision 63): streaming multipart uploads for S3, no staging copy, no size cap.

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Why a repository could not be opened or probed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The repository's description is not usable (empty bucket, relative path, ...).
    #[error("invalid repository: {0}")]
    Invalid(String),
    /// One step of the probe failed.
    #[error("{step} of the probe object {object} failed: {message}")]
    Probe {
        /// The step that failed.
        step: ProbeStep,
        /// The probe object's path in the repository.
        object: String,
        /// What the store answered.
        message: String,
    },
}

/// Result of repository operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A secret that never shows in `Debug` output or logs. Serialized as the plain string: it
/// travels to agents in their desired state (kept sealed by the agent) and is kept in the
/// store in a record the scheduler's `SealedStore` seals (docs/backup.md).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// Where a repository keeps its objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum RepoSpec {
    /// An S3 bucket (AWS or any S3-compatible store).
    S3 {
        /// Endpoint URL, e.g. `http://10.0.0.5:8333`; empty: AWS for `region`.
        #[serde(default)]
        endpoint: String,
        /// Bucket name.
        bucket: String,
        /// Key prefix inside the bucket (no leading or trailing `/` needed).
        #[serde(default)]
        prefix: String,
        /// Region (default `us-east-1`).
        #[serde(default = "default_region")]
        region: String,
        /// Access key id.
        access_key_id: String,
        /// Secret access key.
        secret_access_key: Secret,
        /// Path-style addressing (`endpoint/bucket/key`), as S3-compatible stores want
        /// (default true); false: virtual-hosted style (`bucket.endpoint/key`).
        #[serde(default = "yes")]
        path_style: bool,
        /// The repository key of client-side encryption (`backup_crypt::RepoKey`'s text);
        /// absent: objects are stored in clear.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        encryption_key: Option<Secret>,
        /// Keys replaced by a rotation (decision 169): they open the objects encrypted
        /// before it, and encrypt nothing.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        retired_keys: Vec<Secret>,
    },
    /// A directory at the same absolute path on every agent host and the scheduler (NFS).
    Fs {
        /// Absolute path of the directory; it must exist.
        path: String,
        /// As for `s3`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        encryption_key: Option<Secret>,
        /// As for `s3`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        retired_keys: Vec<Secret>,
    },
}

/// Retries of a failed S3 request: at most 5, backing off from 100 ms (doubling, at most
/// 15 s between tries), for at most 60 s in all. `object_store`'s default (10 tries, 3 minutes)
/// held a backup to an unreachable store for about a minute before it failed.
fn retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 5,
        retry_timeout: std::time::Duration::from_secs(60),
        backoff: object_store::BackoffConfig::default(),
    }
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

fn yes() -> bool {
    true
}

impl RepoSpec {
    /// The kind's name: `s3` or `fs`.
    pub fn kind(&self) -> &'static str {
        match self {
            RepoSpec::S3 { .. } => "s3",
            RepoSpec::Fs { .. } => "fs",
        }
    }

    /// The client-side encryption key's text, if the repository encrypts.
    pub fn encryption_key(&self) -> Option<&Secret> {
        match self {
            RepoSpec::S3 { encryption_key, .. } | RepoSpec::Fs { encryption_key, .. } => {
                encryption_key.as_ref()
            }
        }
    }

    /// Sets (or clears) the client-side encryption key.
    pub fn set_encryption_key(&mut self, key: Option<Secret>) {
        match self {
            RepoSpec::S3 { encryption_key, .. } | RepoSpec::Fs { encryption_key, .. } => {
                *encryption_key = key;
            }
        }
    }

    /// The client-side encryption key, if the repository encrypts.
    pub fn key(&self) -> Result<Option<crate::backup_crypt::RepoKey>> {
        self.encryption_key().map(parse_key).transpose()
    }

    /// The keys a rotation replaced, oldest first: they open what they encrypted.
    pub fn retired_keys(&self) -> &[Secret] {
        match self {
            RepoSpec::S3 { retired_keys, .. } | RepoSpec::Fs { retired_keys, .. } => retired_keys,
        }
    }

    fn retired_keys_mut(&mut self) -> &mut Vec<Secret> {
        match self {
            RepoSpec::S3 { retired_keys, .. } | RepoSpec::Fs { retired_keys, .. } => retired_keys,
        }
    }

    /// The retired keys, parsed.
    pub fn retired(&self) -> Result<Vec<crate::backup_crypt::RepoKey>> {
        self.retired_keys().iter().map(parse_key).collect()
    }

    /// Replaces the encryption key by `new` (decision 169): what is stored from now on is
    /// encrypted with a key derived from `new`; the replaced key is kept among the retired
    /// ones, so everything it encrypted still opens. Refused for a repository that does not
    /// encrypt and for a key it holds already.
    pub fn rotate_key(&mut self, new: crate::backup_crypt::RepoKey) -> Result<()> {
        let Some(old) = self.key()? else {
            return Err(Error::Invalid(
                "the repository does not encrypt: it has no key to replace".into(),
            ));
        };
        let id = new.id();
        if old.id() == id || self.retired()?.iter().any(|k| k.id() == id) {
            return Err(Error::Invalid(format!(
                "the repository holds key {id} already"
            )));
        }
        let old_text = self.encryption_key().cloned();
        self.set_encryption_key(Some(Secret(new.to_text().to_string())));
        self.retired_keys_mut().extend(old_text);
        Ok(())
    }

    /// Forgets the retired key `id` (what it encrypted no longer opens). False when no
    /// retired key has that id (the current key cannot be retired: rotate first).
    pub fn retire_key(&mut self, id: &str) -> Result<bool> {
        let keep: Vec<bool> = self.retired()?.iter().map(|k| k.id() != id).collect();
        if keep.iter().all(|k| *k) {
            return Ok(false);
        }
        let mut it = keep.into_iter();
        self.retired_keys_mut()
            .retain(|_| it.next().unwrap_or(true));
        Ok(true)
    }

    /// Checks what can be checked without reaching the store.
    pub fn validate(&self) -> Result<()> {
        self.key()?;
        self.retired()?;
        match self {
            RepoSpec::S3 {
                bucket,
                access_key_id,
                secret_access_key,
                endpoint,
                ..
            } => {
                if bucket.is_empty() {
                    return Err(Error::Invalid("bucket is empty".into()));
                }
                if access_key_id.is_empty() || secret_access_key.0.is_empty() {
                    return Err(Error::Invalid(
                        "access_key_id and secret_access_key are required".into(),
                    ));
                }
                let http = endpoint.starts_with("http://") || endpoint.starts_with("https://");
                if !(endpoint.is_empty() || http) {
                    return Err(Error::Invalid(format!(
                        "endpoint {endpoint:?} is not an http:// or https:// URL"
                    )));
                }
                Ok(())
            }
            RepoSpec::Fs { path, .. } => {
                if !path.starts_with('/') {
                    return Err(Error::Invalid(format!("path {path:?} is not absolute")));
                }
                Ok(())
            }
        }
    }

    /// Opens the repository (no I/O for S3; the directory must exist for `fs`).
    pub fn open(&self) -> Result<Repo> {
        self.validate()?;
        let key = self.key()?;
        let retired = self.retired()?;
        match self {
            RepoSpec::S3 {
                endpoint,
                bucket,
                prefix,
                region,
                access_key_id,
                secret_access_key,
                path_style,
                ..
            } => {
                let mut b = object_store::aws::AmazonS3Builder::new()
                    .with_retry(retry())
                    .with_bucket_name(bucket)
                    .with_region(region)
                    .with_access_key_id(access_key_id)
                    .with_secret_access_key(&secret_access_key.0)
                    .with_virtual_hosted_style_request(!path_style);
                if !endpoint.is_empty() {
                    b = b
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                let store = b.build().map_err(|e| Error::Invalid(e.to_string()))?;
                Ok(Repo {
                    store: Arc::new(store),
                    prefix: ObjectPath::from(prefix.as_str()),
                    key,
                    retired,
                })
            }
            RepoSpec::Fs { path, .. } => {
                let store = object_store::local::LocalFileSystem::new_with_prefix(path)
                    .map_err(|e| Error::Invalid(format!("directory {path}: {e}")))?;
                Ok(Repo {
                    store: Arc::new(store),
                    prefix: ObjectPath::default(),
                    key,
                    retired,
                })
            }
        }
    }
}

/// The steps of a probe, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeStep {
    /// Opening the repository (bad description, missing directory).
    Open,
    /// Writing the probe object.
    Write,
    /// Reading it back and comparing.
    Read,
    /// Listing it.
    List,
    /// Deleting it.
    Delete,
    /// An encrypting repository only: a second probe object sealed with the key derived
    /// from the repository key for its path (as every backup object is), read back, checked
    /// to hold nothing in clear, opened and compared, then deleted.
    Encrypt,
}

impl fmt::Display for ProbeStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeStep::Open => "open",
            ProbeStep::Write => "write",
            ProbeStep::Read => "read",
            ProbeStep::List => "list",
            ProbeStep::Delete => "delete",
            ProbeStep::Encrypt => "encrypt",
        })
    }
}

/// An open repository: a store and the prefix every object of Mofang lives under.
#[derive(Debug, Clone)]
pub struct Repo {
    /// The object store.
    pub store: Arc<dyn ObjectStore>,
    /// Prefix of every path.
    pub prefix: ObjectPath,
    /// Client-side encryption: every data object stored through this repository is
    /// encrypted with a key derived from this one (decision 119); `None`: in clear.
    pub key: Option<crate::backup_crypt::RepoKey>,
    /// Keys a rotation replaced: they open what they encrypted (decision 169).
    pub retired: Vec<crate::backup_crypt::RepoKey>,
}

fn parse_key(k: &Secret) -> Result<crate::backup_crypt::RepoKey> {
    crate::backup_crypt::RepoKey::parse(&k.0).map_err(|e| Error::Invalid(e.to_string()))
}

impl Repo {
    /// The key that opens object `rel`, encrypted as `enc` records: the current key or a
    /// retired one with the recorded id; or why none does.
    pub fn opening_key(
        &self,
        enc: &crate::backup::ObjectEncryption,
        rel: &str,
    ) -> std::result::Result<zeroize::Zeroizing<[u8; 32]>, String> {
        enc.key_for(rel, self.key.as_ref(), &self.retired)
    }

    /// The full path of `rel` (a `/`-separated path) in this repository.
    pub fn path(&self, rel: &str) -> ObjectPath {
        let mut p = self.prefix.clone();
        for part in rel.split('/').filter(|s| !s.is_empty()) {
            p = p.child(part);
        }
        p
    }

    /// Writes, reads back, lists and deletes `.mofang-probe/<host>-<nonce>`; the first step
    /// that fails is the error. `host` names who probes (`scheduler`, a node name).
    pub async fn probe(&self, host: &str, nonce: &str) -> Result<()> {
        let rel = format!(".mofang-probe/{host}-{nonce}");
        let path = self.path(&rel);
        let object = path.to_string();
        let fail = |step: ProbeStep, message: String| Error::Probe {
            step,
            object: object.clone(),
            message,
        };
        let body = format!("mofang probe from {host} {nonce}\n");
        self.store
            .put(&path, PutPayload::from(body.clone().into_bytes()))
            .await
            .map_err(|e| fail(ProbeStep::Write, e.to_string()))?;
        let got = match self.store.get(&path).await {
            Ok(r) => r.bytes().await,
            Err(e) => Err(e),
        }
        .map_err(|e| fail(ProbeStep::Read, e.to_string()))?;
        if got.as_ref() != body.as_bytes() {
            return Err(fail(
                ProbeStep::Read,
                format!(
                    "read back {} bytes that differ from the {} written",
                    got.len(),
                    body.len()
                ),
            ));
        }
        let dir = self.path(".mofang-probe");
        let listed: Vec<_> = self
            .store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| fail(ProbeStep::List, e.to_string()))?;
        if !listed.iter().any(|m| m.location == path) {
            return Err(fail(
                ProbeStep::List,
                format!("{} objects listed, the probe not among them", listed.len()),
            ));
        }
        self.store
            .delete(&path)
            .await
            .map_err(|e| fail(ProbeStep::Delete, e.to_string()))?;
        if let Some(key) = &self.key {
            self.probe_encrypted(key, host, nonce).await?;
        }
        Ok(())
    }

    /// The `encrypt` step: `.mofang-probe/<host>-<nonce>.enc`, sealed as a backup object is
    /// (the key derived for its path, bound to it), written, read back, opened and compared
    /// ([`open_probe`]), deleted. The object is deleted whatever failed after it was written.
    async fn probe_encrypted(
        &self,
        key: &crate::backup_crypt::RepoKey,
        host: &str,
        nonce: &str,
    ) -> Result<()> {
        let rel = format!(".mofang-probe/{host}-{nonce}.enc");
        let path = self.path(&rel);
        let fail = |message: String| Error::Probe {
            step: ProbeStep::Encrypt,
            object: path.to_string(),
            message,
        };
        let body = format!("mofang encrypted probe from {host} {nonce}\n");
        let sealed = seal_probe(key, &rel, body.as_bytes()).map_err(|e| fail(e.to_string()))?;
        self.store
            .put(&path, PutPayload::from(sealed))
            .await
            .map_err(|e| fail(format!("writing: {e}")))?;
        let opened = match self.store.get(&path).await {
            Ok(r) => r.bytes().await.map_err(|e| format!("reading back: {e}")),
            Err(e) => Err(format!("reading back: {e}")),
        }
        .and_then(|got| open_probe(key, &rel, &got, body.as_bytes()));
        let deleted = self.store.delete(&path).await;
        opened.map_err(fail)?;
        deleted.map_err(|e| fail(format!("deleting: {e}")))
    }
}

/// `plain` sealed as a backup object at `rel` is: with the key derived for `rel`, bound to
/// `rel` (decisions 118, 119).
fn seal_probe(
    key: &crate::backup_crypt::RepoKey,
    rel: &str,
    plain: &[u8],
) -> Result<Vec<u8>, crate::backup_crypt::Error> {
    let mut e = crate::backup_crypt::Encryptor::new(&key.object_key(rel), rel.as_bytes());
    let mut out = Vec::new();
    e.update(plain, &mut out)?;
    e.finish(&mut out)?;
    Ok(out)
}

/// Checks the encrypted probe `stored` as read back: it starts with the format's magic,
/// holds nothing of `plain` in clear, opens with the key derived for `rel` and gives back
/// `plain`. Why not, otherwise, without quoting the key.
pub fn open_probe(
    key: &crate::backup_crypt::RepoKey,
    rel: &str,
    stored: &[u8],
    plain: &[u8],
) -> Result<(), String> {
    if !stored.starts_with(crate::backup_crypt::MAGIC) {
        return Err(format!(
            "the {} bytes read back do not start as an encrypted object",
            stored.len()
        ));
    }
    if stored.windows(plain.len().max(1)).any(|w| w == plain) {
        return Err("the bytes read back hold the probe in clear".into());
    }
    let mut d = crate::backup_crypt::Decryptor::new(&key.object_key(rel), rel.as_bytes());
    let mut out = Vec::new();
    d.update(stored, &mut out)
        .and_then(|()| d.finish(&mut out))
        .map_err(|e| {
            format!(
                "the object read back does not open with key {}: {e}",
                key.id()
            )
        })?;
    if out != plain {
        return Err(format!(
            "the object opened to {} bytes that differ from the {} sealed",
            out.len(),
            plain.len()
        ));
    }
    Ok(())
}

/// Opens `spec` and probes it; an open failure is reported as the `open` step.
pub async fn check(spec: &RepoSpec, host: &str, nonce: &str) -> Result<()> {
    let repo = spec.open().map_err(|e| match e {
        Error::Invalid(message) => Error::Probe {
            step: ProbeStep::Open,
            object: String::new(),
            message,
        },
        other => other,
    })?;
    repo.probe(host, nonce).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory repository passes the probe and keeps nothing; a missing directory fails
    /// at `open`; the secret never shows in `Debug`.
    #[tokio::test]
    async fn fs_repo_probes_clean_and_missing_dir_fails_at_open() {
        let dir = std::env::temp_dir().join(format!("mofang-repo-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let spec = RepoSpec::Fs {
            path: dir.to_string_lossy().into_owned(),
            encryption_key: None,
            retired_keys: Vec::new(),
        };
        check(&spec, "scheduler", "n1").await.unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.join(".mofang-probe"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "probe object deleted");
        std::fs::remove_dir_all(&dir).unwrap();

        let missing = RepoSpec::Fs {
            path: dir.to_string_lossy().into_owned(),
            encryption_key: None,
            retired_keys: Vec::new(),
        };
        match check(&missing, "node-1", "n2").await {
            Err(Error::Probe { step, .. }) => assert_eq!(step, ProbeStep::Open),
            other => panic!("expected an open failure, got {other:?}"),
        }

        let s3: RepoSpec = serde_json::from_str(
            r#"{"kind":"s3","bucket":"b","access_key_id":"a","secret_access_key":"hunter2"}"#,
        )
        .unwrap();
        assert!(!format!("{s3:?}").contains("hunter2"));
        assert!(matches!(
            s3,
            RepoSpec::S3 {
                path_style: true,
                ..
            }
        ));
        assert!(serde_json::from_str::<RepoSpec>(r#"{"kind":"fs","path":"/x","y":1}"#).is_err());
        assert!(RepoSpec::Fs {
            path: "rel".into(),
            encryption_key: None,
            retired_keys: Vec::new(),
        }
        .validate()
        .is_err());
    }

    /// An encrypting repository's probe also seals, reads back, opens and deletes an
    /// encrypted object and keeps nothing; the check of what was read back refuses bytes in
    /// clear, altered bytes and another key's object, naming why (never the key itself).
    #[tokio::test]
    async fn an_encrypting_repository_probes_an_encrypted_round_trip() {
        use crate::backup_crypt::RepoKey;
        let dir = tempfile::tempdir().unwrap();
        let key = RepoKey::generate();
        let spec = RepoSpec::Fs {
            path: dir.path().to_string_lossy().into_owned(),
            encryption_key: Some(Secret(key.to_text().to_string())),
            retired_keys: Vec::new(),
        };
        check(&spec, "node-1", "n3").await.unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.path().join(".mofang-probe"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "both probe objects deleted: {left:?}");

        let rel = ".mofang-probe/node-1-n4.enc";
        let plain = b"mofang encrypted probe from node-1 n4\n";
        let sealed = seal_probe(&key, rel, plain).unwrap();
        open_probe(&key, rel, &sealed, plain).unwrap();
        let e = open_probe(&key, rel, plain, plain).unwrap_err();
        assert!(e.contains("do not start as an encrypted object"), "{e}");
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        let e = open_probe(&key, rel, &altered, plain).unwrap_err();
        assert!(e.contains("does not open"), "{e}");
        let other = RepoKey::generate();
        let e = open_probe(&other, rel, &sealed, plain).unwrap_err();
        assert!(
            e.contains("does not open") && e.contains(&other.id()),
            "{e}"
        );
        assert!(!e.contains(key.to_text().as_str()), "the key is not quoted");
        let e = open_probe(&key, ".mofang-probe/elsewhere.enc", &sealed, plain).unwrap_err();
        assert!(e.contains("does not open"), "bound to its path: {e}");
        let mut clear = sealed.clone();
        clear.extend_from_slice(plain);
        let e = open_probe(&key, rel, &clear, plain).unwrap_err();
        assert!(e.contains("in clear"), "{e}");
    }

    /// A rotation keeps the replaced key among the retired ones: an object encrypted before
    /// it opens with the retired key, one encrypted after with the new key, and the key the
    /// object names is the one used (another key's object is refused naming every key
    /// held). A repository in clear has nothing to rotate; a key held already is refused;
    /// retiring forgets only a retired key, after which its objects no longer open.
    #[test]
    fn a_rotated_key_still_opens_what_it_encrypted_until_it_is_retired() {
        use crate::backup::ObjectEncryption;
        use crate::backup_crypt::RepoKey;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_string_lossy().into_owned();
        let mut clear = RepoSpec::Fs {
            path: path.clone(),
            encryption_key: None,
            retired_keys: Vec::new(),
        };
        let e = clear.rotate_key(RepoKey::generate()).unwrap_err();
        assert!(e.to_string().contains("does not encrypt"), "{e}");

        let (k1, k2) = (RepoKey::generate(), RepoKey::generate());
        let mut spec = RepoSpec::Fs {
            path,
            encryption_key: Some(Secret(k1.to_text().to_string())),
            retired_keys: Vec::new(),
        };
        let before = ObjectEncryption::with(&k1);
        spec.rotate_key(k2.clone()).unwrap();
        assert_eq!(spec.key().unwrap().unwrap().id(), k2.id());
        let retired: Vec<String> = spec.retired().unwrap().iter().map(|k| k.id()).collect();
        assert_eq!(retired, vec![k1.id()]);
        let e = spec.rotate_key(k1.clone()).unwrap_err();
        assert!(e.to_string().contains("holds key"), "{e}");
        let e = spec.rotate_key(k2.clone()).unwrap_err();
        assert!(e.to_string().contains("holds key"), "{e}");
        // Through JSON, as the spec travels to agents.
        let spec: RepoSpec = serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();

        let repo = spec.open().unwrap();
        let rel = "bk/x/full.zst";
        assert_eq!(
            *repo.opening_key(&before, rel).unwrap(),
            *k1.object_key(rel)
        );
        let after = ObjectEncryption::with(&k2);
        assert_eq!(*repo.opening_key(&after, rel).unwrap(), *k2.object_key(rel));
        let stranger = ObjectEncryption::with(&RepoKey::generate());
        let e = repo.opening_key(&stranger, rel).unwrap_err();
        assert!(e.contains(&k2.id()) && e.contains(&k1.id()), "{e}");

        let mut spec = spec;
        assert!(
            !spec.retire_key(&k2.id()).unwrap(),
            "the current key is not retired"
        );
        assert!(!spec.retire_key("nope").unwrap());
        assert!(spec.retire_key(&k1.id()).unwrap());
        assert!(spec.retired_keys().is_empty());
        let e = spec.open().unwrap().opening_key(&before, rel).unwrap_err();
        assert!(e.contains(&k1.id()), "{e}");
        assert!(!e.contains(k1.to_text().as_str()), "no key is quoted");
    }
}

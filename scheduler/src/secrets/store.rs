//! [`SealedStore`]: a [`Store`] that seals every instance's credentials with the data keyring
//! before the backend (SQLite, Consul, etcd) sees them and opens them when read. Callers keep
//! working with clear [`Instance`] records; only the backend's bytes change.

use super::{credential_aad, Error as VaultError, KeyStatus, KeyringStatus, Vault};
use crate::model::{AuditEntry, Credentials, Event, Instance, Node, NodeAdmin};
use crate::store::{Error, Result, Store};
use mofang_common::sealed::Sealed;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// A store whose instance credentials are sealed at rest.
pub struct SealedStore {
    inner: Arc<dyn Store>,
    vault: Vault,
}

impl std::fmt::Debug for SealedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedStore")
            .field("vault", &self.vault)
            .finish_non_exhaustive()
    }
}

/// Every secret of an instance record, by name: the four credentials and, during a
/// credential rotation, the rotation's other password (`rotation`).
fn fields(i: &mut Instance) -> Vec<(&'static str, &mut String)> {
    let c: &mut Credentials = &mut i.credentials;
    let mut v = vec![
        ("admin", &mut c.admin),
        ("repl", &mut c.repl),
        ("monitor", &mut c.monitor),
        ("app", &mut c.app),
    ];
    if let Some(r) = i.rotation.as_mut() {
        v.push(("rotation", &mut r.password));
    }
    v
}

/// How the stored secrets are sealed, read from the backend's raw records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// Values sealed by each key id.
    pub by_key: BTreeMap<u32, usize>,
    /// Values in clear.
    pub clear: usize,
    /// Instances with a value in clear or not sealed by the active key.
    pub stale: Vec<String>,
    /// Metadata records sealed whole (backup repositories) in clear or not sealed by the
    /// active key: their keys.
    pub stale_records: Vec<String>,
}

fn backend(e: VaultError) -> Error {
    match e {
        VaultError::Store(e) => e,
        other => Error::Backend(other.to_string()),
    }
}

impl SealedStore {
    /// Wraps `inner`, opening (or creating) the root keyring file at `keyring_file`.
    pub async fn open(inner: Arc<dyn Store>, keyring_file: &Path) -> super::Result<Self> {
        let vault = Vault::open(keyring_file, inner.as_ref()).await?;
        Ok(SealedStore { inner, vault })
    }

    /// The keyrings.
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// The wrapped backend (its records hold ciphertext).
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }

    async fn seal(&self, inst: &Instance) -> Result<Instance> {
        let mut sealed = inst.clone();
        let name = inst.spec.name.clone();
        for (field, value) in fields(&mut sealed) {
            *value = self
                .vault
                .seal(self.inner.as_ref(), &credential_aad(&name, field), value)
                .await
                .map_err(backend)?;
        }
        Ok(sealed)
    }

    async fn open_instance(&self, mut inst: Instance) -> Result<Instance> {
        let name = inst.spec.name.clone();
        for (field, value) in fields(&mut inst) {
            *value = self
                .vault
                .open_value(self.inner.as_ref(), &credential_aad(&name, field), value)
                .await
                .map_err(|e| match e {
                    VaultError::Store(e) => e,
                    other => {
                        Error::Backend(format!("instance {name}: {other}: {}", source(&other)))
                    }
                })?;
        }
        Ok(inst)
    }

    /// Counts the stored secrets by the key that sealed them (from the raw records).
    pub async fn usage(&self) -> Result<Usage> {
        let active = self.vault.active_key();
        let mut usage = Usage::default();
        for mut inst in self.inner.instances().await? {
            let mut stale = false;
            for (_, value) in fields(&mut inst) {
                match Sealed::is_sealed(value)
                    .then(|| Sealed::key_id_of(value).ok())
                    .flatten()
                {
                    Some(id) => {
                        *usage.by_key.entry(id).or_default() += 1;
                        stale |= Some(id) != active;
                    }
                    None => {
                        usage.clear += 1;
                        stale = true;
                    }
                }
            }
            if stale {
                usage.stale.push(inst.spec.name.clone());
            }
        }
        for prefix in SEALED_META {
            for (key, value) in self.inner.meta_with_prefix(prefix).await? {
                match Sealed::is_sealed(&value)
                    .then(|| Sealed::key_id_of(&value).ok())
                    .flatten()
                {
                    Some(id) => {
                        *usage.by_key.entry(id).or_default() += 1;
                        if Some(id) != active {
                            usage.stale_records.push(key);
                        }
                    }
                    None => {
                        usage.clear += 1;
                        usage.stale_records.push(key);
                    }
                }
            }
        }
        Ok(usage)
    }

    /// The keyring and how the stored secrets are sealed.
    pub async fn status(&self) -> Result<KeyringStatus> {
        let usage = self.usage().await?;
        let active = self.vault.active_key().unwrap_or(0);
        Ok(KeyringStatus {
            active_key: active,
            keys: self
                .vault
                .keys()
                .into_iter()
                .map(|(id, created_at_ms)| KeyStatus {
                    id,
                    created_at_ms,
                    active: id == active,
                    sealed_values: usage.by_key.get(&id).copied().unwrap_or(0),
                })
                .collect(),
            clear_values: usage.clear,
            pending_instances: usage.stale.len(),
            pending_records: usage.stale_records.len(),
        })
    }
}

/// Prefixes of metadata records sealed whole: backup repositories hold an S3 secret (issue
/// 16).
const SEALED_META: [&str; 1] = ["backup-repo/"];

/// Metadata records sealed whole.
fn sealed_meta(key: &str) -> bool {
    SEALED_META.iter().any(|p| key.starts_with(p))
}

/// What a sealed metadata value is bound to: its key (a value moved to another key does not
/// open).
fn meta_aad(key: &str) -> String {
    format!("meta/{key}")
}

impl SealedStore {
    /// Opens a sealed metadata value; one written in clear before sealing is read as it is.
    async fn open_meta(&self, key: &str, value: String) -> Result<String> {
        if !sealed_meta(key) || !Sealed::is_sealed(&value) {
            return Ok(value);
        }
        self.vault
            .open_value(self.inner.as_ref(), &meta_aad(key), &value)
            .await
            .map_err(|e| match e {
                VaultError::Store(e) => e,
                other => Error::Backend(format!("record {key}: {other}: {}", source(&other))),
            })
    }
}

/// The innermost cause's words (the vault errors name the field, the cause says why).
fn source(e: &VaultError) -> String {
    std::error::Error::source(e)
        .map(ToString::to_string)
        .unwrap_or_default()
}

#[async_trait::async_trait]
impl Store for SealedStore {
    async fn put_node(&self, node: &Node) -> Result<()> {
        self.inner.put_node(node).await
    }

    async fn nodes(&self) -> Result<Vec<Node>> {
        self.inner.nodes().await
    }

    async fn set_node_admin(&self, name: &str, admin: NodeAdmin) -> Result<Node> {
        self.inner.set_node_admin(name, admin).await
    }

    async fn create_instance(&self, inst: &Instance, events: &[Event]) -> Result<Instance> {
        let stored = self
            .inner
            .create_instance(&self.seal(inst).await?, events)
            .await?;
        self.open_instance(stored).await
    }

    async fn update_instance(&self, inst: &Instance, events: &[Event]) -> Result<Instance> {
        let stored = self
            .inner
            .update_instance(&self.seal(inst).await?, events)
            .await?;
        self.open_instance(stored).await
    }

    async fn delete_instance(
        &self,
        name: &str,
        expected_revision: u64,
        events: &[Event],
    ) -> Result<()> {
        self.inner
            .delete_instance(name, expected_revision, events)
            .await
    }

    async fn instance(&self, name: &str) -> Result<Option<Instance>> {
        match self.inner.instance(name).await? {
            Some(i) => Ok(Some(self.open_instance(i).await?)),
            None => Ok(None),
        }
    }

    async fn instances(&self) -> Result<Vec<Instance>> {
        let raw = self.inner.instances().await?;
        let mut out = Vec::with_capacity(raw.len());
        for i in raw {
            out.push(self.open_instance(i).await?);
        }
        Ok(out)
    }

    async fn append_events(&self, events: &[Event]) -> Result<Vec<Event>> {
        self.inner.append_events(events).await
    }

    async fn prune_events(&self, before_ms: i64, limit: usize) -> Result<usize> {
        self.inner.prune_events(before_ms, limit).await
    }

    async fn events(&self, instance: Option<&str>, since: u64, limit: usize) -> Result<Vec<Event>> {
        self.inner.events(instance, since, limit).await
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<AuditEntry> {
        self.inner.append_audit(entry).await
    }

    async fn audit(&self, since: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        self.inner.audit(since, limit).await
    }

    async fn events_before(
        &self,
        instance: Option<&str>,
        before: u64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        self.inner.events_before(instance, before, limit).await
    }

    async fn audit_before(&self, before: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        self.inner.audit_before(before, limit).await
    }

    async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        match self.inner.get_meta(key).await? {
            Some(v) => Ok(Some(self.open_meta(key, v).await?)),
            None => Ok(None),
        }
    }

    async fn put_meta(&self, key: &str, value: &str) -> Result<()> {
        if !sealed_meta(key) {
            return self.inner.put_meta(key, value).await;
        }
        let sealed = self
            .vault
            .seal(self.inner.as_ref(), &meta_aad(key), value)
            .await
            .map_err(backend)?;
        self.inner.put_meta(key, &sealed).await
    }

    async fn meta_with_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for (key, value) in self.inner.meta_with_prefix(prefix).await? {
            let value = self.open_meta(&key, value).await?;
            out.push((key, value));
        }
        Ok(out)
    }

    async fn delete_meta(&self, key: &str) -> Result<()> {
        self.inner.delete_meta(key).await
    }

    async fn compact(&self) -> Result<()> {
        self.inner.compact().await
    }
}

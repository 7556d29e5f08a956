//! Durable storage of the scheduler's desired state: the `Store` trait, its errors, and the
//! backends chosen by config (SQLite for one scheduler; Consul KV or etcd for several).

pub mod consul;
#[cfg(any(test, feature = "store-contract"))]
pub mod contract;
pub mod etcd;
pub mod kv;
pub mod sqlite;

pub use self::consul::ConsulStore;
pub use self::etcd::EtcdStore;
pub use self::kv::KvStore;
pub use self::sqlite::SqliteStore;

use crate::config::{SchedulerConfig, StoreKind};
use crate::model::{AuditEntry, Event, Instance, Node, NodeAdmin};
use std::sync::Arc;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The instance already exists.
    #[error("instance {0} already exists")]
    AlreadyExists(String),
    /// No such instance / node.
    #[error("{0} not found")]
    NotFound(String),
    /// Compare-and-set failed: the record changed since it was read.
    #[error("instance {name} changed: expected revision {expected}, found {actual}")]
    Conflict {
        /// Instance name.
        name: String,
        /// Revision the caller read.
        expected: u64,
        /// Revision stored now.
        actual: u64,
    },
    /// The backend failed (disk, corruption); the write did not happen.
    #[error("store backend failed: {0}")]
    Backend(String),
}

/// Result of a store operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Durable state of the scheduler. Every write is on disk when its call returns `Ok`.
///
/// A call whose future is dropped before it completes may or may not have taken effect.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Upserts a node (registration). Keeps `admin` and `registered_at_ms` of an existing
    /// record: those change only through [`Store::set_node_admin`] and first registration.
    async fn put_node(&self, node: &Node) -> Result<()>;
    /// All nodes, ordered by name.
    async fn nodes(&self) -> Result<Vec<Node>>;
    /// Sets the operator setting of a node and returns the stored node; `NotFound` if missing.
    async fn set_node_admin(&self, name: &str, admin: NodeAdmin) -> Result<Node>;
    /// Inserts a new instance with revision 1 (the stored and returned record has revision
    /// 1); `AlreadyExists` if the name exists. Also appends `events` in the SAME transaction,
    /// assigning their ids. Returns the stored instance.
    async fn create_instance(&self, inst: &Instance, events: &[Event]) -> Result<Instance>;
    /// Compare-and-set: replaces the instance iff its stored revision == `inst.revision`;
    /// stores revision + 1; appends `events` in the same transaction. `Conflict` otherwise,
    /// `NotFound` if gone. Returns the stored instance.
    async fn update_instance(&self, inst: &Instance, events: &[Event]) -> Result<Instance>;
    /// Deletes iff stored revision == `expected_revision` (`Conflict` otherwise, `NotFound`
    /// if gone); appends `events` in the same transaction.
    async fn delete_instance(
        &self,
        name: &str,
        expected_revision: u64,
        events: &[Event],
    ) -> Result<()>;
    /// One instance, if it exists.
    async fn instance(&self, name: &str) -> Result<Option<Instance>>;
    /// All instances, ordered by name.
    async fn instances(&self) -> Result<Vec<Instance>>;
    /// Appends events (ids assigned, monotonically increasing from 1); returns the stored
    /// events.
    async fn append_events(&self, events: &[Event]) -> Result<Vec<Event>>;
    /// Events with id > `since`, optionally only of one instance, oldest first, at most
    /// `limit`.
    async fn events(&self, instance: Option<&str>, since: u64, limit: usize) -> Result<Vec<Event>>;
    /// Deletes the oldest events, from the log and from their instance's, up to the first one
    /// at or after `before_ms` (events are appended in time order: what goes is always a
    /// prefix of the log), at most `limit` of them; returns how many went. Ids are never
    /// reused, and audit entries are never deleted (history retention, decision 174).
    async fn prune_events(&self, before_ms: i64, limit: usize) -> Result<usize>;
    /// Appends an audit entry (id assigned); returns it. Durable when it returns.
    async fn append_audit(&self, entry: &AuditEntry) -> Result<AuditEntry>;
    /// Audit entries with id > `since`, oldest first, at most `limit`.
    async fn audit(&self, since: u64, limit: usize) -> Result<Vec<AuditEntry>>;
    /// Events with id < `before` (optionally of one instance): the newest `limit` of them,
    /// oldest first. Reads a log backward from anywhere, as a page older than another.
    async fn events_before(
        &self,
        instance: Option<&str>,
        before: u64,
        limit: usize,
    ) -> Result<Vec<Event>>;
    /// Audit entries with id < `before`: the newest `limit` of them, oldest first.
    async fn audit_before(&self, before: u64, limit: usize) -> Result<Vec<AuditEntry>>;
    /// Small key/value for scheduler metadata (e.g. generated token hash).
    async fn get_meta(&self, key: &str) -> Result<Option<String>>;
    /// Sets a metadata value, replacing any previous one.
    async fn put_meta(&self, key: &str, value: &str) -> Result<()>;
    /// Rewrites the backend's own files so that nothing overwritten lingers in free pages or
    /// logs (SQLite: `VACUUM` and a truncating WAL checkpoint), after secrets were sealed
    /// again (docs/secrets.md). Backends whose history the server keeps do nothing here.
    async fn compact(&self) -> Result<()> {
        Ok(())
    }
    /// Every metadata entry whose key starts with `prefix`, ordered by key (records kept as
    /// metadata: backup repositories and backups, `backup-repo/<name>`, `backup/<id>`).
    async fn meta_with_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>>;
    /// Removes a metadata entry (nothing if absent).
    async fn delete_meta(&self, key: &str) -> Result<()>;
}

/// Opens the store `cfg.store` names: `<data_dir>/mofang.db`, or Consul KV / etcd under their
/// configured prefix. Consul and etcd are reached lazily: an unreachable backend shows in the
/// first call.
pub async fn open(cfg: &SchedulerConfig) -> Result<Arc<dyn Store>> {
    Ok(match cfg.store {
        StoreKind::Sqlite => Arc::new(SqliteStore::open(&cfg.data_dir.join("mofang.db"))?),
        StoreKind::Consul => {
            let client = cfg
                .consul
                .client()
                .map_err(|e| Error::Backend(e.to_string()))?;
            tracing::info!(address = %cfg.consul.address, prefix = %cfg.consul.prefix,
                "store: consul");
            Arc::new(ConsulStore::consul(client, &cfg.consul.prefix))
        }
        StoreKind::Etcd => {
            tracing::info!(endpoints = ?cfg.etcd.endpoints, prefix = %cfg.etcd.prefix,
                "store: etcd");
            Arc::new(EtcdStore::etcd(&cfg.etcd.endpoints, &cfg.etcd.tls(), &cfg.etcd.prefix).await?)
        }
    })
}

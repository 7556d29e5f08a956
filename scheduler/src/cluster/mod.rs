//! The scheduler's view of the cluster: durable records (through the `Store`) plus what
//! agents report. It takes the decisions (create, delete, node admin) and computes each
//! node's desired state, pushed to agents over `WatchAssignments`.
//!
//! This file holds the shared state (`Inner`, behind one mutex) and the leadership
//! lifecycle (load, activate, deactivate); each concern is a file of `impl Cluster`:
//! `records` (durable decisions), `books` (reservations and the placement ranking),
//! `observed` (heartbeats and node liveness), `desired` (desired states and their
//! watchers), `views` (what the API shows), `failover`, `rotation` (credential rotations),
//! `endpoints`, `jobs`, `repos` and `backups`.

mod backups;
mod books;
mod desired;
pub use desired::DesiredWatch;
mod endpoints;
mod failover;
mod history;
mod identity;
mod jobs;
mod member_certs;
mod observed;
mod operations;
mod pitr;
mod records;
mod repos;
mod rotation;
mod schedules;
#[cfg(test)]
mod testkit;
mod usage;
mod verify;
mod views;

pub use endpoints::Registered;
pub use failover::Trigger;
pub use history::Pruned;
pub use identity::{JoinRefusal, JoinToken, JoinTokenRecord, Revocation};
pub use member_certs::MemberCertRefusal;
pub use pitr::PitrWindow;
pub use records::{matches_selector, validate_labels, validate_spec, Resealed};
pub use repos::{retire_refusal, BackupRepo, BackupRepoView, KeyUse, RepoRefusal};
pub use rotation::RotationView;
pub use schedules::BackupHealthView;
pub use usage::UsageSample;
pub use verify::{judge, verify_node};
pub use views::{InstanceView, MemberView, NodeView2, RestorePhaseView, RestoreProgress};

use crate::failover::{Counters, FailoverConfig};
use crate::model::{now_ms, Event, EventKind, Instance, Node};
use crate::placement;
use crate::store::{self, Store};
use books::{reserve, Reserved};
use observed::Live;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::info;

/// Errors of cluster operations; the API maps them to HTTP statuses.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is invalid (422).
    #[error("{0}")]
    Invalid(String),
    /// No placement exists (409 with the reason per node).
    #[error(transparent)]
    Unplaceable(#[from] placement::Error),
    /// This scheduler began to lead less than `node_ttl` ago and the placement needs nodes
    /// it has not heard from yet (503 `leader_warming_up` with Retry-After, decision 134):
    /// nothing was created.
    #[error(
        "this scheduler has just begun to lead and has not heard from node(s) {} yet; \
         nothing was created: retry in {}s",
        .unheard.join(", "),
        retry_after_secs(*.retry_after)
    )]
    WarmingUp {
        /// The nodes not heard from since this scheduler began to lead.
        unheard: Vec<String>,
        /// How much longer the warm-up lasts.
        retry_after: Duration,
    },
    /// The name is taken (409).
    #[error("instance {0} already exists")]
    AlreadyExists(String),
    /// No such object (404).
    #[error("{0} not found")]
    NotFound(String),
    /// A selector matches no instance (404 `no_match`).
    #[error("{0}")]
    NoMatch(String),
    /// The store refused or failed.
    #[error(transparent)]
    Store(store::Error),
    /// A failover or switchover is refused (409, one error code per reason): no replica can
    /// be promoted, a safety rail holds, or another operation is running.
    #[error(transparent)]
    Refused(#[from] crate::failover::rails::Refusal),
    /// A backup repository failed its check on a host (422).
    #[error(transparent)]
    RepoRefused(#[from] RepoRefusal),
    /// Another operation runs on the instance (409 `operation_running`).
    #[error("operation {id} ({kind}) is running on instance {instance}: one at a time; cancel it or wait")]
    OperationRunning {
        /// The instance.
        instance: String,
        /// The running operation.
        id: String,
        /// Its type.
        kind: String,
    },
    /// The instance is not in a state the request needs (409 `instance_not_ready`).
    #[error("{0}")]
    NotReady(String),
    /// A backup of the instance is already pending or running (409 `backup_running`).
    #[error("backup {id} of instance {instance} is still running")]
    BackupRunning {
        /// The instance.
        instance: String,
        /// The backup under way.
        id: String,
    },
    /// A verification of the backup is already running (409 `verify_running`).
    #[error("a verification of backup {0} is still running")]
    VerifyRunning(String),
    /// No member can take the backup asked for (409 `no_backup_member`).
    #[error(transparent)]
    NoBackupMember(crate::backup::plan::NoMember),
    /// A restore cannot be done: the backup, its repository or an object is missing or is not
    /// what was recorded (422 `restore_refused`); nothing was created.
    #[error("restore refused: {0}")]
    RestoreRefused(String),
    /// The backup repository failed a listing or a deletion (503 `repo_unavailable`).
    #[error("backup repository: {0}")]
    RepoFailed(String),
    /// A retired repository key still opens something stored, or may (409 `key_in_use`).
    #[error("{0}")]
    KeyInUse(String),
    /// A credential rotation cannot start (409 while one is under way, 422 for a bad grace).
    #[error(transparent)]
    Rotation(#[from] crate::rotation::Refusal),
}

impl From<store::Error> for Error {
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::AlreadyExists(n) => Error::AlreadyExists(n),
            store::Error::NotFound(n) => Error::NotFound(n),
            other => Error::Store(other),
        }
    }
}

/// Result of cluster operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Default)]
struct Inner {
    nodes: BTreeMap<String, Node>,
    instances: BTreeMap<String, Instance>,
    // Ordered by node name like `nodes`, so placement walks all three in step, no hashing.
    reserved: BTreeMap<String, Reserved>,
    live: BTreeMap<String, Live>,
    /// Per watched node, its desired state's newest revision (`desired.rs`).
    watchers: HashMap<String, watch::Sender<u64>>,
    revision: u64,
    /// Last replication lag each member reported while replicating (failover eligibility).
    last_lag: HashMap<String, i64>,
    /// Lease each node's agent announced at registration.
    node_lease: HashMap<String, Duration>,
    /// Failovers decided and not yet confirmed, by instance.
    inflight: HashMap<String, failover::InFlight>,
    /// Instances a failover, switchover or replacement is being carried out for.
    busy: BTreeSet<String>,
    /// Instances a failover pass started a task for (failover, replacement) that has not
    /// ended: later passes leave them alone, and do not wait for it.
    pass_tasks: BTreeSet<String>,
    /// Conditions already reported by an event (reported once until they clear).
    reported: BTreeSet<String>,
    /// Mass-failure guard tripped: automatic failovers wait for an operator.
    mass_hold: bool,
    /// Instances with a member whose agent reported trouble (see [`crate::failover::decide::calm`]); the failover
    /// pass assesses these and those on silent nodes, not every instance.
    suspects: HashSet<String>,
    /// The epoch at which each instance's replicas were last asked to report at once (a
    /// failover waiting for their final positions asks once per epoch).
    nudged: HashMap<String, u64>,
    /// Registered nodes ordered by placement score, kept in step with `nodes` and `reserved`.
    ranking: placement::Ranking,
    /// Distinct `zone` labels among registered nodes (no label counts as one zone).
    zones_total: usize,
    /// Jobs asked of each node's agent (in its desired state), by node.
    jobs: BTreeMap<String, Vec<mofang_common::proto::Job>>,
    /// The last status agents reported for each job, by job id.
    job_status: HashMap<String, mofang_common::proto::JobStatus>,
    /// Operations not finished, by id (loaded when this scheduler takes charge).
    operations: BTreeMap<String, crate::ops::Operation>,
    /// Operations a task is carrying a step of right now.
    op_driving: BTreeSet<String>,
    /// Batches not finished, by id (loaded when this scheduler takes charge).
    batches: BTreeMap<String, crate::ops::batch::Batch>,
    /// A task is taking the batches a step further.
    batch_driving: bool,
    /// The backup being driven for each instance (at most one), by instance.
    backups_running: BTreeMap<String, String>,
    /// Backup repositories by name (with their secret), for restored primaries' assignments.
    repos: BTreeMap<String, mofang_common::repo::RepoSpec>,
    /// Where each instance's primary archives its binlogs (its latest full backup).
    archives: BTreeMap<String, pitr::ArchiveFrom>,
    /// `[backup] archive_interval_s` (0: the default, 60).
    archive_interval_s: u64,
    /// Each archiving instance's archive as last refreshed.
    pitr: BTreeMap<String, pitr::PitrSeen>,
    /// Archived binlog indexes read so far, by `<repo>/<path>` (they never change).
    binlog_indexes: HashMap<String, mofang_common::pitr::BinlogIndex>,
    /// Backups being verified, by id.
    verifying: BTreeSet<String>,
    /// Scheduled runs missed since this scheduler leads, by instance (metrics).
    backup_missed: BTreeMap<String, u64>,
    /// When retention last looked at each instance (unix ms).
    retention_at: HashMap<String, i64>,
}

/// The cluster: one per scheduler process.
pub struct Cluster {
    store: Arc<dyn Store>,
    inner: Mutex<Inner>,
    node_ttl: Duration,
    failover: FailoverConfig,
    /// Failover counters for `/metrics`.
    pub counters: Counters,
    /// This scheduler leads: set by [`Cluster::activate`] only (with the embedded store the
    /// daemon activates at start; with a shared one, on winning the election). Followers
    /// decide nothing, and a scheduler starts as one: until it holds the claim it must not
    /// say it leads (it did, and clients and tests took a starting scheduler for the leader).
    active: std::sync::atomic::AtomicBool,
    /// The leader's REST address, as the election reports it (followers redirect there).
    leader: Mutex<Option<String>>,
    /// A heartbeat changed something a failover pass decides on (a suspect instance's member,
    /// or an in-flight failover's): the next pass need not wait for the tick.
    failover_wake: tokio::sync::Notify,
    /// Revoked nodes and when (unix ms), as stored; read by the agent service on every call.
    revoked: watch::Sender<BTreeMap<String, i64>>,
    /// One join at a time: a token is read and marked used under it.
    joins: tokio::sync::Mutex<()>,
    /// Writes of backup repository records, one at a time: a record written again by the
    /// re-encryption pass must not bring back one deleted meanwhile.
    repo_writes: tokio::sync::Mutex<()>,
    /// Changes of backup repositories (add, key rotation, key retirement, delete), one at a
    /// time: each reads the record, checks, probes and writes it back, and two at once
    /// could write back a record without the other's key (decision 169).
    repo_edits: tokio::sync::Mutex<()>,
    /// An agent reported a job's status.
    jobs_changed: tokio::sync::Notify,
    /// The tasks failover passes started (pruned as they end), for tests to wait on.
    pass_handles: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// When this scheduler last began to lead ([`Cluster::activate`]).
    activated_at: std::sync::Mutex<Option<Instant>>,
}

/// Whole seconds to wait for `d` (rounded up, at least 1), as a `Retry-After` header says it.
pub fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// Locks the shared state; a panic while it was held does not stop the scheduler.
fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An event to append to the store, stamped now.
fn event(kind: EventKind, instance: Option<&str>, node: Option<&str>, message: String) -> Event {
    Event {
        id: 0,
        at_ms: now_ms(),
        instance: instance.map(str::to_owned),
        node: node.map(str::to_owned),
        kind: kind.as_str().to_owned(),
        message,
    }
}

impl Cluster {
    /// Loads nodes and instances from the store.
    pub async fn load(store: Arc<dyn Store>, node_ttl: Duration) -> Result<Arc<Self>> {
        Self::load_with(store, node_ttl, FailoverConfig::default()).await
    }

    /// Loads nodes and instances from the store, with failover settings.
    pub async fn load_with(
        store: Arc<dyn Store>,
        node_ttl: Duration,
        failover: FailoverConfig,
    ) -> Result<Arc<Self>> {
        let nodes = store.nodes().await?;
        let instances = store.instances().await?;
        let mut inner = Inner::default();
        for n in nodes {
            inner.nodes.insert(n.name.clone(), n);
        }
        for i in instances {
            reserve(&mut inner, &i, true);
            inner.instances.insert(i.spec.name.clone(), i);
        }
        inner.rerank_all();
        let revoked = identity::load_revocations(store.as_ref()).await?;
        info!(
            nodes = inner.nodes.len(),
            instances = inner.instances.len(),
            revoked = revoked.len(),
            "cluster state loaded"
        );
        Ok(Arc::new(Cluster {
            store,
            inner: Mutex::new(inner),
            node_ttl,
            failover,
            counters: Counters::default(),
            active: std::sync::atomic::AtomicBool::new(false),
            activated_at: std::sync::Mutex::new(None),
            leader: Mutex::new(None),
            failover_wake: tokio::sync::Notify::new(),
            revoked: watch::Sender::new(revoked),
            joins: tokio::sync::Mutex::new(()),
            repo_writes: tokio::sync::Mutex::new(()),
            repo_edits: tokio::sync::Mutex::new(()),
            jobs_changed: tokio::sync::Notify::new(),
            pass_handles: Mutex::new(Vec::new()),
        }))
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// `NotFound` unless the instance exists (created, not being deleted away): checked
    /// before a request's other fields, so an unknown instance is always a 404.
    pub(crate) fn existing(&self, name: &str) -> Result<()> {
        lock(&self.inner)
            .instances
            .get(name)
            .filter(|i| i.revision > 0)
            .map(|_| ())
            .ok_or_else(|| Error::NotFound(format!("instance {name}")))
    }

    /// True while this scheduler leads and acts.
    pub fn is_active(&self) -> bool {
        self.active.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The leader's REST address, when this one follows.
    pub fn leader_hint(&self) -> Option<String> {
        self.leader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records who leads (from the election's watch).
    pub fn set_leader_hint(&self, address: Option<String>) {
        *self.leader.lock().unwrap_or_else(PoisonError::into_inner) = address;
    }

    /// Stops acting at once: decisions stop, agent streams close (agents go to the leader).
    pub fn deactivate(&self) {
        self.active
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let mut inner = lock(&self.inner);
        inner.watchers.clear();
        inner.inflight.clear();
        inner.operations.clear();
        inner.batches.clear();
    }

    /// How long this scheduler has led (zero while it follows).
    pub(crate) fn led_for(&self, now: Instant) -> Duration {
        self.activated_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at))
    }

    /// How much longer this leader warms up ([`observed::warm_up_left`]); `None` when it
    /// does not lead or has led for `node_ttl` already.
    pub(crate) fn warming_up(&self, now: Instant) -> Option<Duration> {
        let led_for = self.is_active().then(|| self.led_for(now));
        observed::warm_up_left(led_for, self.node_ttl)
    }

    /// Becomes the leader: reloads every record from the shared store (another scheduler
    /// may have written since), forgets what agents told the previous term, then acts.
    pub async fn activate(&self) -> Result<()> {
        let nodes = self.store.nodes().await?;
        let instances = self.store.instances().await?;
        let repos = self.backup_repos().await?;
        // Another scheduler may have revoked nodes while this one followed.
        self.revoked
            .send_replace(identity::load_revocations(self.store.as_ref()).await?);
        {
            let mut inner = lock(&self.inner);
            inner.nodes = nodes.into_iter().map(|n| (n.name.clone(), n)).collect();
            inner.repos = repos.into_iter().map(|r| (r.name, r.spec)).collect();
            inner.reserved.clear();
            inner.instances.clear();
            for i in instances {
                reserve(&mut inner, &i, true);
                inner.instances.insert(i.spec.name.clone(), i);
            }
            inner.rerank_all();
            inner.live.clear();
            inner.watchers.clear();
            inner.inflight.clear();
            inner.reported.clear();
            inner.last_lag.clear();
            inner.suspects.clear();
            inner.nudged.clear();
        }
        self.load_operations().await?;
        self.active.store(true, std::sync::atomic::Ordering::SeqCst);
        *self
            .activated_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        self.take_charge().await
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::one_on_three_nodes;
    use super::*;
    use crate::store::sqlite::SqliteStore;

    /// HA soak, leader kill (failover.md defect 7): a starting scheduler said `leader: true`
    /// before its election ran. Loaded, it follows; only `activate` makes it lead.
    #[tokio::test]
    async fn a_loaded_cluster_follows_until_activated() {
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open_in_memory().expect("in-memory store"));
        let c = Cluster::load(store, Duration::from_secs(30))
            .await
            .expect("load");
        assert!(!c.is_active(), "leads before anyone said so");
        c.activate().await.expect("activate");
        assert!(c.is_active());
        c.deactivate();
        assert!(!c.is_active());
    }

    /// Found reading the code (decision 33): a scheduler killed between a switchover's fence
    /// and its promotion left the primary fenced for good.
    #[tokio::test]
    async fn a_switchover_cut_short_by_a_restart_is_undone() {
        let (store, c, i) = one_on_three_nodes().await;
        let mut fenced = i.clone();
        fenced.fence_primary = true;
        c.write(fenced, vec![]).await.expect("fence");
        // A new scheduler on the same store.
        let c = Cluster::load(store.clone(), Duration::from_secs(30))
            .await
            .expect("reload");
        c.activate().await.expect("activate");
        let after = store.instances().await.expect("instances");
        assert!(after.iter().all(|i| !i.fence_primary), "{after:?}");
        assert_eq!(after[0].epoch, i.epoch, "nothing else changed");
        let ev = store.events(Some("one"), 0, 100).await.expect("events");
        assert!(
            ev.iter()
                .any(|e| e.kind == EventKind::SwitchoverAbandoned.as_str()),
            "{ev:?}"
        );
    }
}

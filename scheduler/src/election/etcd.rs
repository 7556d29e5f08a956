//! Leader election through an etcd lease
//! (<https://etcd.io/docs/v3.4/dev-guide/interacting_v3/#grant-leases>).
//!
//! A contender grants a lease (TTL), keeps it alive in the background, and takes the leader
//! key with one transaction: `create_revision(key) == 0` then put its advertised address
//! attached to the lease. The term is the key's `create_revision`. The key disappears with
//! the lease (expiry or revoke) or on resignation; contenders watch it and try again when
//! it is deleted.
//!
//! The leader learns of a loss at once when it can still reach etcd: a keep-alive answered
//! with TTL 0 (lease revoked or expired) or a watch event deleting the key. When it cannot
//! reach etcd, it steps down on its own `ttl - max(ttl / 5, 200 ms)` after the start of its
//! last confirmed keep-alive: etcd expires the lease no earlier than `ttl` after it saw that
//! keep-alive, and only then can another contender create the key.
//!
//! A dead scheduler's key goes when its lease expires: within `ttl` of its last keep-alive.

use super::{Error, LeaderInfo, Leadership, Result, Timings};
use etcd_client::{Client, Compare, CompareOp, EventType, Txn, TxnOp, WatchOptions};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

/// How long a contender waits on one watch before trying the key again anyway.
const WATCH_WAIT: Duration = Duration::from_secs(10);
/// Pause after a failed call before trying again.
const RETRY: Duration = Duration::from_secs(1);

/// What an etcd election contender is.
#[derive(Debug, Clone)]
pub struct EtcdElectionConfig {
    /// The leader key, e.g. `mofang/leader`.
    pub key: String,
    /// Address this contender advertises when it leads.
    pub address: String,
    /// Lease TTL (etcd's minimum is about 2 s with default timings).
    pub lease_ttl: Duration,
}

/// Election through an etcd lease and a create-only transaction.
#[derive(Clone)]
pub struct EtcdElection {
    client: Client,
    cfg: Arc<EtcdElectionConfig>,
}

impl std::fmt::Debug for EtcdElection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdElection")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn backend(message: impl std::fmt::Display) -> Error {
    Error::Backend {
        backend: "etcd",
        message: message.to_string(),
    }
}

impl EtcdElection {
    /// An election on `cfg.key` in the etcd cluster at `endpoints` (connects lazily).
    pub async fn connect(endpoints: &[String], cfg: EtcdElectionConfig) -> Result<Self> {
        let client = crate::store::etcd::connect(endpoints)
            .await
            .map_err(backend)?;
        Ok(Self::new(client, cfg))
    }

    /// An election on `cfg.key` through `client`.
    pub fn new(client: Client, cfg: EtcdElectionConfig) -> Self {
        EtcdElection {
            client,
            cfg: Arc::new(cfg),
        }
    }

    fn ttl_secs(&self) -> i64 {
        i64::try_from(self.cfg.lease_ttl.as_secs().max(1)).unwrap_or(i64::MAX)
    }

    fn timings(&self) -> Timings {
        let ttl = Duration::from_secs(self.cfg.lease_ttl.as_secs().max(1));
        Timings::new(ttl, ttl)
    }

    /// One campaign with one lease: `Ok(Some)` when leading, `Ok(None)` when the lease died.
    async fn campaign_with(
        &self,
        lease: &Lease,
        shutdown: &CancellationToken,
    ) -> Result<Option<Leadership>> {
        let key = self.cfg.key.as_str();
        loop {
            if lease.dead.is_cancelled() {
                return Ok(None);
            }
            let started = Instant::now();
            let txn = Txn::new()
                .when([Compare::create_revision(key, CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key,
                    self.cfg.address.as_str(),
                    Some(etcd_client::PutOptions::new().with_lease(lease.id)),
                )])
                .or_else([TxnOp::get(key, None)]);
            let resp = match self.client.clone().txn(txn).await {
                Ok(resp) => resp,
                Err(e) => {
                    warn!(error = %e, "cannot try the leader key");
                    pause(RETRY, shutdown, &lease.dead).await;
                    continue;
                }
            };
            let revision = resp.header().map_or(0, |h| h.revision());
            if resp.succeeded() {
                return Ok(Some(self.lead(lease, revision, started)));
            }
            // Someone leads: wait for the key to go, from the revision just read.
            let mut client = self.client.clone();
            let wait = async {
                let options = WatchOptions::new().with_start_revision(revision + 1);
                match client.watch(key, Some(options)).await {
                    Ok(mut stream) => loop {
                        match stream.message().await {
                            Ok(Some(msg)) => {
                                if msg.canceled()
                                    || msg
                                        .events()
                                        .iter()
                                        .any(|e| e.event_type() == EventType::Delete)
                                {
                                    return;
                                }
                            }
                            Ok(None) => return,
                            Err(e) => {
                                debug!(error = %e, "leader key watch failed");
                                tokio::time::sleep(RETRY).await;
                                return;
                            }
                        }
                    },
                    Err(e) => {
                        debug!(error = %e, "cannot watch the leader key");
                        tokio::time::sleep(RETRY).await;
                    }
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Err(Error::Cancelled),
                _ = lease.dead.cancelled() => return Ok(None),
                _ = tokio::time::timeout(WATCH_WAIT, wait) => {}
            }
        }
    }

    /// Starts keeping the key just created at `term` with `lease` (txn started at `started`).
    fn lead(&self, lease: &Lease, term: i64, started: Instant) -> Leadership {
        let term_u = u64::try_from(term).unwrap_or(0);
        info!(term = term_u, key = %self.cfg.key, "became the leader");
        lease.confirmed_at(started);
        let lost = CancellationToken::new();
        let resign = CancellationToken::new();
        let keeper = {
            let client = self.client.clone();
            let key = self.cfg.key.clone();
            let lease = lease.clone();
            let lost = lost.clone();
            let resign = resign.clone();
            tokio::spawn(
                async move { keep(client, key, lease, term, lost, resign).await }.instrument(
                    tracing::info_span!("leadership", backend = "etcd", term = term_u),
                ),
            )
        };
        Leadership::new(term_u, lost, resign, keeper)
    }
}

/// A lease kept alive by a background task.
#[derive(Debug, Clone)]
struct Lease {
    id: i64,
    /// Cancelled when the lease is gone or could not be confirmed in time.
    dead: CancellationToken,
    /// Cancelled to stop the keep-alives.
    stop: CancellationToken,
    /// Start of the last confirmed keep-alive (or of the grant).
    confirmed: Arc<std::sync::Mutex<Instant>>,
}

impl Lease {
    fn start(client: Client, id: i64, granted: Instant, timings: Timings) -> Self {
        let lease = Lease {
            id,
            dead: CancellationToken::new(),
            stop: CancellationToken::new(),
            confirmed: Arc::new(std::sync::Mutex::new(granted)),
        };
        let l = lease.clone();
        tokio::spawn(
            async move { l.keep_alive_loop(client, timings).await }
                .instrument(tracing::debug_span!("etcd_lease", lease = id)),
        );
        lease
    }

    fn last_confirmed(&self) -> Instant {
        self.confirmed
            .lock()
            .map(|t| *t)
            .unwrap_or_else(|p| *p.into_inner())
    }

    fn confirmed_at(&self, at: Instant) {
        if let Ok(mut t) = self.confirmed.lock() {
            if *t < at {
                *t = at;
            }
        }
    }

    async fn keep_alive_loop(self, mut client: Client, timings: Timings) {
        let mut channel = None;
        loop {
            let deadline = self.last_confirmed() + timings.step_down_after;
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => {
                    warn!(lease = self.id, after = ?timings.step_down_after,
                        "lease not confirmed in time; giving it up");
                    self.dead.cancel();
                    return;
                }
                _ = tokio::time::sleep(timings.renew_every) => {}
            }
            let started = Instant::now();
            let budget = deadline.saturating_duration_since(started);
            let attempt = async {
                if channel.is_none() {
                    channel = Some(client.lease_keep_alive(self.id).await?);
                }
                let Some((keeper, stream)) = channel.as_mut() else {
                    return Ok(None);
                };
                keeper.keep_alive().await?;
                stream.message().await
            };
            let outcome = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = tokio::time::timeout(budget, attempt) => r,
            };
            match outcome {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => self.confirmed_at(started),
                Ok(Ok(Some(_))) => {
                    warn!(lease = self.id, "lease expired or revoked");
                    self.dead.cancel();
                    return;
                }
                Ok(Ok(None)) => {
                    debug!(lease = self.id, "keep-alive stream ended");
                    channel = None;
                }
                Ok(Err(e)) => {
                    debug!(lease = self.id, error = %e, "keep-alive failed");
                    channel = None;
                }
                Err(_) => {
                    debug!(lease = self.id, "keep-alive timed out");
                    channel = None;
                }
            }
        }
    }
}

/// Whether the leader key still is ours: `Ok(false)` if gone or recreated, with the revision
/// to watch from next.
async fn still_ours(
    client: &mut Client,
    key: &str,
    term: i64,
) -> std::result::Result<(bool, i64), etcd_client::Error> {
    let resp = client.get(key, None).await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let ours = resp
        .kvs()
        .first()
        .is_some_and(|kv| kv.create_revision() == term);
    Ok((ours, revision))
}

/// Keeps the key until it is lost or given up. Cancels `lost` first in every case.
async fn keep(
    client: Client,
    key: String,
    lease: Lease,
    term: i64,
    lost: CancellationToken,
    resign: CancellationToken,
) -> Result<()> {
    let mut watch_client = client.clone();
    let watcher = async {
        let mut from = term + 1;
        loop {
            let options = WatchOptions::new().with_start_revision(from);
            let mut stream = match watch_client.watch(key.as_str(), Some(options)).await {
                Ok(stream) => stream,
                Err(e) => {
                    debug!(error = %e, "cannot watch the leader key");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(msg)) => {
                        for event in msg.events() {
                            let theirs = match (event.event_type(), event.kv()) {
                                (EventType::Delete, _) => true,
                                (EventType::Put, Some(kv)) => kv.create_revision() != term,
                                (EventType::Put, None) => false,
                            };
                            if theirs {
                                return "the leader key was deleted or replaced".to_owned();
                            }
                            if let Some(kv) = event.kv() {
                                from = from.max(kv.mod_revision() + 1);
                            }
                        }
                        if msg.canceled() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        debug!(error = %e, "leader key watch failed");
                        break;
                    }
                }
            }
            // The watch broke: check the key directly, then watch again from there.
            tokio::time::sleep(Duration::from_millis(100)).await;
            match still_ours(&mut watch_client, &key, term).await {
                Ok((true, revision)) => from = revision + 1,
                Ok((false, _)) => return "the leader key was deleted or replaced".to_owned(),
                Err(e) => {
                    debug!(error = %e, "cannot read the leader key");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    };
    let reason = tokio::select! {
        _ = resign.cancelled() => None,
        _ = lease.dead.cancelled() => Some("the lease is gone or could not be renewed in time".to_owned()),
        r = watcher => Some(r),
    };
    lost.cancel();
    lease.stop.cancel();
    // Revoking the lease deletes the key at once: a follower can lead without waiting.
    let revoked = client.clone().lease_revoke(lease.id).await;
    match reason {
        None => {
            info!("resigned the leadership");
            match revoked {
                Ok(_) => Ok(()),
                // Already gone: nothing holds the key any more.
                Err(e) if e.to_string().contains("requested lease not found") => Ok(()),
                Err(e) => Err(backend(e)),
            }
        }
        Some(reason) => {
            warn!(reason = %reason, "lost the leadership; stopped acting as leader");
            if let Err(e) = revoked {
                debug!(error = %e, "could not revoke the lost lease");
            }
            Ok(())
        }
    }
}

/// Sleeps `d` unless shutdown or the lease's death comes first.
async fn pause(d: Duration, shutdown: &CancellationToken, dead: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = dead.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

fn leader_of(kv: Option<&etcd_client::KeyValue>) -> Option<LeaderInfo> {
    let kv = kv?;
    Some(LeaderInfo {
        address: String::from_utf8_lossy(kv.value()).into_owned(),
        term: u64::try_from(kv.create_revision()).unwrap_or(0),
    })
}

#[async_trait::async_trait]
impl super::Election for EtcdElection {
    async fn campaign(&self, shutdown: &CancellationToken) -> Result<Leadership> {
        loop {
            if shutdown.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let granted = Instant::now();
            let id = match self.client.clone().lease_grant(self.ttl_secs(), None).await {
                Ok(resp) => resp.id(),
                Err(e) => {
                    warn!(error = %e, "cannot grant an etcd lease; retrying");
                    pause(RETRY, shutdown, &CancellationToken::new()).await;
                    continue;
                }
            };
            debug!(lease = id, "campaigning for the leader key");
            let lease = Lease::start(self.client.clone(), id, granted, self.timings());
            let outcome = self.campaign_with(&lease, shutdown).await;
            if !matches!(outcome, Ok(Some(_))) {
                lease.stop.cancel();
                if let Err(e) = self.client.clone().lease_revoke(id).await {
                    debug!(error = %e, "could not revoke the campaign lease");
                }
            }
            match outcome {
                Ok(Some(leadership)) => return Ok(leadership),
                Ok(None) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    async fn leader(&self) -> Result<Option<LeaderInfo>> {
        let resp = self
            .client
            .clone()
            .get(self.cfg.key.as_str(), None)
            .await
            .map_err(backend)?;
        Ok(leader_of(resp.kvs().first()))
    }

    fn watch_leader(&self, shutdown: CancellationToken) -> watch::Receiver<Option<LeaderInfo>> {
        let (tx, rx) = watch::channel(None);
        let mut client = self.client.clone();
        let key = self.cfg.key.clone();
        let publish = move |leader: Option<LeaderInfo>| {
            tx.send_if_modified(|cur| {
                let changed = *cur != leader;
                *cur = leader;
                changed
            });
        };
        tokio::spawn(
            async move {
                loop {
                    let followed = async {
                        let resp = client.get(key.as_str(), None).await?;
                        publish(leader_of(resp.kvs().first()));
                        let from = resp.header().map_or(0, |h| h.revision()) + 1;
                        let options = WatchOptions::new().with_start_revision(from);
                        let mut stream = client.watch(key.as_str(), Some(options)).await?;
                        while let Some(msg) = stream.message().await? {
                            for event in msg.events() {
                                match event.event_type() {
                                    EventType::Put => publish(leader_of(event.kv())),
                                    EventType::Delete => publish(None),
                                }
                            }
                            if msg.canceled() {
                                break;
                            }
                        }
                        Ok::<(), etcd_client::Error>(())
                    };
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        r = followed => if let Err(e) = r {
                            debug!(error = %e, "leader watch failed");
                        },
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
            .instrument(tracing::debug_span!("leader_watch", backend = "etcd")),
        );
        rx
    }
}

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
//! A scheduler restarted under the same address does not wait for that: when its campaign
//! finds its own address on the key under another lease, it revokes that lease (its earlier
//! run's) and the key goes at once.

use super::keeper::{self, Hold, Keeper, Renew, Renewal, Timings};
use super::{Error, LeaderInfo, Leadership, Result};
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
    /// An election on `cfg.key` in the etcd cluster at `endpoints` (connects lazily; over TLS
    /// when `tls` names a CA).
    pub async fn connect(
        endpoints: &[String],
        tls: &crate::config::BackendTls,
        cfg: EtcdElectionConfig,
    ) -> Result<Self> {
        let client = crate::store::etcd::connect(endpoints, tls)
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
        let dead = lease.keeper.lost();
        loop {
            if dead.is_cancelled() {
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
                    pause(RETRY, shutdown, dead).await;
                    continue;
                }
            };
            let revision = resp.header().map_or(0, |h| h.revision());
            if resp.succeeded() {
                return Ok(Some(self.lead(lease, revision, started)));
            }
            // Someone leads. If it is an earlier run of this contender, revoke its lease: the
            // key goes with it and this run can lead at once.
            let holder = resp.op_responses().into_iter().find_map(|op| match op {
                etcd_client::TxnOpResponse::Get(get) => get
                    .kvs()
                    .first()
                    .map(|kv| (kv.value().to_vec(), kv.lease())),
                _ => None,
            });
            if let Some(old) = holder.and_then(|(value, held_by)| {
                leftover_lease(&value, held_by, &self.cfg.address, lease.id)
            }) {
                match self.client.clone().lease_revoke(old).await {
                    Ok(_) => {
                        info!(lease = old,
                        "revoked the lease an earlier run of this scheduler left on the leader key")
                    }
                    Err(e) => {
                        warn!(lease = old, error = %e,
                            "cannot revoke the lease an earlier run of this scheduler left");
                        pause(RETRY, shutdown, dead).await;
                    }
                }
                continue;
            }
            // Wait for the key to go, from the revision just read.
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
                _ = dead.cancelled() => return Ok(None),
                _ = tokio::time::timeout(WATCH_WAIT, wait) => {}
            }
        }
    }

    /// Starts holding the key just created at `term` with `lease` (txn started at `started`).
    fn lead(&self, lease: &Lease, term: i64, started: Instant) -> Leadership {
        let term_u = u64::try_from(term).unwrap_or(0);
        info!(term = term_u, key = %self.cfg.key, "became the leader");
        // The transaction proved the lease valid when it started.
        lease.keeper.confirm(started);
        let held = HeldKey {
            client: self.client.clone(),
            key: self.cfg.key.clone(),
            lease: lease.id,
            term,
        };
        keeper::lead(
            term_u,
            lease.keeper.clone(),
            held,
            tracing::info_span!("leadership", backend = "etcd", term = term_u),
        )
    }
}

/// The lease an earlier run of the contender advertising `address` left on the leader key:
/// the key holds our address under a lease that is not `mine`.
///
/// Safe to revoke: this process serves that address now, so the run that took the key is
/// gone (or is this process after it stepped down: it no longer acts on that lease).
fn leftover_lease(value: &[u8], held_by: i64, address: &str, mine: i64) -> Option<i64> {
    (value == address.as_bytes() && held_by != mine && held_by != 0).then_some(held_by)
}

/// A lease and the keeper renewing it.
#[derive(Debug)]
struct Lease {
    id: i64,
    keeper: Keeper,
}

/// Keeps a lease alive over one keep-alive stream, opened again after any failure.
struct LeaseRenew {
    client: Client,
    id: i64,
    channel: Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)>,
    /// A keep-alive was sent and its answer not read (its call was dropped): the stream
    /// may still deliver that answer, so it is not used again.
    in_flight: bool,
}

#[async_trait::async_trait]
impl Renew for LeaseRenew {
    async fn renew(&mut self, _budget: Duration) -> Renewal {
        if std::mem::replace(&mut self.in_flight, true) {
            self.channel = None;
        }
        let outcome = self.attempt().await;
        if !matches!(outcome, Renewal::Renewed | Renewal::Gone) {
            self.channel = None;
        }
        self.in_flight = false;
        outcome
    }
}

impl LeaseRenew {
    async fn attempt(&mut self) -> Renewal {
        if self.channel.is_none() {
            match self.client.lease_keep_alive(self.id).await {
                Ok(c) => self.channel = Some(c),
                Err(e) => return Renewal::Failed(e.to_string()),
            }
        }
        let Some((keeper, stream)) = self.channel.as_mut() else {
            return Renewal::Failed("no keep-alive stream".to_owned());
        };
        if let Err(e) = keeper.keep_alive().await {
            return Renewal::Failed(e.to_string());
        }
        match stream.message().await {
            Ok(Some(resp)) if resp.ttl() > 0 => Renewal::Renewed,
            Ok(Some(_)) => Renewal::Gone,
            Ok(None) => Renewal::Failed("keep-alive stream ended".to_owned()),
            Err(e) => Renewal::Failed(e.to_string()),
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

/// The leader key, created at `term` under `lease`.
struct HeldKey {
    client: Client,
    key: String,
    lease: i64,
    term: i64,
}

#[async_trait::async_trait]
impl Hold for HeldKey {
    async fn watch(&self) -> String {
        let (key, term) = (self.key.as_str(), self.term);
        let mut watch_client = self.client.clone();
        let mut from = term + 1;
        loop {
            let options = WatchOptions::new().with_start_revision(from);
            let mut stream = match watch_client.watch(key, Some(options)).await {
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
            match still_ours(&mut watch_client, key, term).await {
                Ok((true, revision)) => from = revision + 1,
                Ok((false, _)) => return "the leader key was deleted or replaced".to_owned(),
                Err(e) => {
                    debug!(error = %e, "cannot read the leader key");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    async fn release(&self) -> Result<()> {
        // Revoking the lease deletes the key at once: a follower can lead without waiting.
        match self.client.clone().lease_revoke(self.lease).await {
            Ok(_) => Ok(()),
            // Already gone: nothing holds the key any more.
            Err(e) if e.to_string().contains("requested lease not found") => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    async fn abandon(&self) {
        if let Err(e) = self.client.clone().lease_revoke(self.lease).await {
            debug!(error = %e, "could not revoke the lost lease");
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
            let renewer = LeaseRenew {
                client: self.client.clone(),
                id,
                channel: None,
                in_flight: false,
            };
            let span = tracing::debug_span!("etcd_lease", lease = id);
            let lease = Lease {
                id,
                keeper: Keeper::start(renewer, granted, self.timings(), span),
            };
            let outcome = self.campaign_with(&lease, shutdown).await;
            if !matches!(outcome, Ok(Some(_))) {
                lease.keeper.stop();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_address_under_another_lease_is_a_leftover() {
        let me = "http://10.0.0.1:8080";
        assert_eq!(leftover_lease(me.as_bytes(), 41, me, 42), Some(41));
        assert_eq!(leftover_lease(me.as_bytes(), 42, me, 42), None, "ours");
        assert_eq!(
            leftover_lease(b"http://10.0.0.2:8080", 41, me, 42),
            None,
            "another scheduler's"
        );
        assert_eq!(leftover_lease(me.as_bytes(), 0, me, 42), None, "no lease");
    }
}

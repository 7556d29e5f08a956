//! Leader election through a Consul session lock
//! (<https://developer.hashicorp.com/consul/docs/dynamic-app-config/sessions>).
//!
//! A contender creates a session (TTL, lock-delay, the node's `serfHealth` check plus any
//! checks given, typically the scheduler's own service check) and takes the lock with
//! `PUT /v1/kv/<key>?acquire=<session>`, writing its advertised address as the value.
//! The session is then renewed in the background and the key is followed with blocking
//! queries.
//!
//! The leader learns of a loss at once when it can still reach Consul: the blocking query
//! returns as soon as the lock is released (session destroyed, a check went critical, TTL
//! ran out) or the key changes hands. When it cannot reach Consul, it steps down on its own
//! `lock_delay - max(lock_delay / 5, 200 ms)` after the start of its last confirmed renewal.
//! Consul invalidates a session only after that renewal and then refuses the lock to
//! everyone for `lock_delay`, so the old leader has stopped before a new one can start.
//!
//! A dead scheduler loses the lock when its session is invalidated: within the check
//! interval when the session carries the scheduler's service check, otherwise when the TTL
//! runs out (Consul may take up to twice the TTL). Then the lock-delay passes and a follower
//! takes over.

use super::{Error, LeaderInfo, Leadership, Result, Timings};
use crate::consul::{ConsulClient, KvEntry, SessionSpec};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

/// How long one blocking query waits at most.
const WATCH_WAIT: Duration = Duration::from_secs(10);
/// Pause after a failed call before trying again.
const RETRY: Duration = Duration::from_secs(1);
/// Pause between attempts while the lock is free but refused (its lock-delay runs).
const LOCK_DELAY_POLL: Duration = Duration::from_millis(250);

/// What a Consul election contender is.
#[derive(Debug, Clone)]
pub struct ConsulElectionConfig {
    /// The lock key, e.g. `mofang/leader`.
    pub key: String,
    /// Address this contender advertises when it leads.
    pub address: String,
    /// Session TTL (Consul accepts 10 s to 24 h).
    pub session_ttl: Duration,
    /// Lock-delay: after the session is invalidated nobody can take the lock for this long.
    pub lock_delay: Duration,
    /// Health checks of the local agent the session depends on, besides `serfHealth`
    /// (e.g. `service:<scheduler service id>`): a critical one invalidates the session.
    pub checks: Vec<String>,
}

/// Election through a Consul session lock.
#[derive(Debug, Clone)]
pub struct ConsulElection {
    client: ConsulClient,
    cfg: Arc<ConsulElectionConfig>,
}

fn backend(message: impl std::fmt::Display) -> Error {
    Error::Backend {
        backend: "consul",
        message: message.to_string(),
    }
}

impl ConsulElection {
    /// An election on `cfg.key` through the agent behind `client`.
    pub fn new(client: ConsulClient, cfg: ConsulElectionConfig) -> Self {
        ConsulElection {
            client,
            cfg: Arc::new(cfg),
        }
    }

    fn timings(&self) -> Timings {
        Timings::new(self.cfg.lock_delay, self.cfg.session_ttl)
    }

    async fn create_session(&self) -> crate::consul::Result<String> {
        let mut checks = vec!["serfHealth".to_owned()];
        checks.extend(self.cfg.checks.iter().cloned());
        self.client
            .session_create(&SessionSpec {
                name: format!("mofang-scheduler {}", self.cfg.address),
                ttl: self.cfg.session_ttl,
                lock_delay: self.cfg.lock_delay,
                checks,
            })
            .await
    }

    /// One campaign with one session: `Ok(Some)` when leading, `Ok(None)` when the session
    /// died and a new one is needed.
    async fn campaign_with(
        &self,
        session: &Session,
        shutdown: &CancellationToken,
    ) -> Result<Option<Leadership>> {
        let mut index = 0;
        // Whether the key was seen free before the last refused acquire.
        let mut seen_free = false;
        loop {
            if session.dead.is_cancelled() {
                return Ok(None);
            }
            let started = Instant::now();
            let acquired = match self
                .client
                .kv_acquire(&self.cfg.key, &session.id, self.cfg.address.as_bytes())
                .await
            {
                Ok(acquired) => acquired,
                Err(e) => {
                    warn!(error = %e, "cannot try the leader lock");
                    pause(RETRY, shutdown, &session.dead).await;
                    continue;
                }
            };
            if acquired {
                // The term is the ModifyIndex the acquire gave the key.
                match self.client.kv_get(&self.cfg.key).await {
                    Ok(Some(entry)) if entry.session.as_deref() == Some(session.id.as_str()) => {
                        return Ok(Some(self.lead(session, entry, started)));
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        warn!(error = %e, "cannot read the leader lock just taken");
                        pause(RETRY, shutdown, &session.dead).await;
                        continue;
                    }
                }
            }
            // Held by someone else, or free but still in its lock-delay.
            let wait = async {
                match self.client.kv_watch(&self.cfg.key, index, WATCH_WAIT).await {
                    Ok((entry, next)) => {
                        index = next;
                        if entry.as_ref().is_none_or(|e| e.session.is_none()) {
                            // Free: try at once if it just became free; if it was free when
                            // the acquire was refused, its lock-delay runs and nothing will
                            // change the key when it ends, so poll without blocking.
                            index = 0;
                            if seen_free {
                                tokio::time::sleep(LOCK_DELAY_POLL).await;
                            }
                            seen_free = true;
                        } else {
                            seen_free = false;
                        }
                    }
                    Err(e) => {
                        debug!(error = %e, "leader lock watch failed");
                        tokio::time::sleep(RETRY).await;
                    }
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Err(Error::Cancelled),
                _ = session.dead.cancelled() => return Ok(None),
                _ = wait => {}
            }
        }
    }

    /// Starts keeping the lock just taken with `session` (acquire started at `started`).
    fn lead(&self, session: &Session, entry: KvEntry, started: Instant) -> Leadership {
        let term = entry.modify_index;
        info!(term, key = %self.cfg.key, "became the leader");
        let lost = CancellationToken::new();
        let resign = CancellationToken::new();
        let keeper = {
            let client = self.client.clone();
            let key = self.cfg.key.clone();
            let session = session.clone();
            let lost = lost.clone();
            let resign = resign.clone();
            tokio::spawn(
                async move { keep(client, key, session, entry, started, lost, resign).await }
                    .instrument(tracing::info_span!("leadership", backend = "consul", term)),
            )
        };
        Leadership::new(term, lost, resign, keeper)
    }
}

/// A session kept alive by a background renewal task.
#[derive(Debug, Clone)]
struct Session {
    id: String,
    /// Cancelled when the session is gone or could not be confirmed in time.
    dead: CancellationToken,
    /// Cancelled to stop renewing.
    stop: CancellationToken,
    /// Start of the last confirmed renewal (or of the creation).
    confirmed: Arc<std::sync::Mutex<Instant>>,
}

impl Session {
    fn start(client: ConsulClient, id: String, created: Instant, timings: Timings) -> Self {
        let session = Session {
            id,
            dead: CancellationToken::new(),
            stop: CancellationToken::new(),
            confirmed: Arc::new(std::sync::Mutex::new(created)),
        };
        let s = session.clone();
        tokio::spawn(
            async move { s.renew_loop(client, timings).await }
                .instrument(tracing::debug_span!("consul_session")),
        );
        session
    }

    fn last_confirmed(&self) -> Instant {
        self.confirmed
            .lock()
            .map(|t| *t)
            .unwrap_or_else(|p| *p.into_inner())
    }

    async fn renew_loop(self, client: ConsulClient, timings: Timings) {
        loop {
            let deadline = self.last_confirmed() + timings.step_down_after;
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => {
                    warn!(session = %self.id, after = ?timings.step_down_after,
                        "session not confirmed in time; giving it up");
                    self.dead.cancel();
                    return;
                }
                _ = tokio::time::sleep(timings.renew_every) => {}
            }
            let started = Instant::now();
            let budget = deadline.saturating_duration_since(started);
            if budget.is_zero() {
                continue;
            }
            let renewed = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = client.session_renew(&self.id, budget) => r,
            };
            match renewed {
                Ok(true) => {
                    if let Ok(mut t) = self.confirmed.lock() {
                        *t = started;
                    }
                }
                Ok(false) => {
                    warn!(session = %self.id, "session invalidated by consul");
                    self.dead.cancel();
                    return;
                }
                Err(e) => debug!(session = %self.id, error = %e, "session renewal failed"),
            }
        }
    }
}

/// Keeps the lock until it is lost or given up. Cancels `lost` first in every case.
async fn keep(
    client: ConsulClient,
    key: String,
    session: Session,
    entry: KvEntry,
    started: Instant,
    lost: CancellationToken,
    resign: CancellationToken,
) -> Result<()> {
    // The acquire proved the session valid when it started.
    if let Ok(mut t) = session.confirmed.lock() {
        if *t < started {
            *t = started;
        }
    }
    let watcher = async {
        let mut index = entry.modify_index;
        loop {
            match client.kv_watch(&key, index, WATCH_WAIT).await {
                Ok((entry, next)) => {
                    index = next;
                    match entry {
                        Some(e) if e.session.as_deref() == Some(session.id.as_str()) => {}
                        Some(e) => {
                            return format!(
                                "the lock is held by {}",
                                e.session.as_deref().unwrap_or("nobody")
                            )
                        }
                        None => return "the lock key was deleted".to_owned(),
                    }
                }
                Err(e) => {
                    debug!(error = %e, "leader lock watch failed");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    };
    let reason = tokio::select! {
        _ = resign.cancelled() => None,
        _ = session.dead.cancelled() => Some("the session is gone or could not be renewed in time".to_owned()),
        r = watcher => Some(r),
    };
    lost.cancel();
    session.stop.cancel();
    match reason {
        None => {
            info!("resigning the leadership");
            // Release first: a released lock has no lock-delay, so a follower leads at once.
            let released = client.kv_release(&key, &session.id).await;
            let destroyed = client.session_destroy(&session.id).await;
            released.map_err(backend)?;
            destroyed.map_err(backend)
        }
        Some(reason) => {
            warn!(reason = %reason, "lost the leadership; stopped acting as leader");
            // Best effort: a session we no longer trust must not keep the lock.
            if let Err(e) = client.session_destroy(&session.id).await {
                debug!(error = %e, "could not destroy the lost session");
            }
            Ok(())
        }
    }
}

/// Sleeps `d` unless shutdown or the session's death comes first.
async fn pause(d: Duration, shutdown: &CancellationToken, dead: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = dead.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

fn leader_of(entry: Option<KvEntry>) -> Option<LeaderInfo> {
    let entry = entry?;
    entry.session.as_ref()?;
    Some(LeaderInfo {
        address: String::from_utf8_lossy(&entry.value).into_owned(),
        term: entry.modify_index,
    })
}

#[async_trait::async_trait]
impl super::Election for ConsulElection {
    async fn campaign(&self, shutdown: &CancellationToken) -> Result<Leadership> {
        loop {
            if shutdown.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let created = Instant::now();
            let id = match self.create_session().await {
                Ok(id) => id,
                Err(e) => {
                    warn!(error = %e, "cannot create a consul session; retrying");
                    pause(RETRY, shutdown, &CancellationToken::new()).await;
                    continue;
                }
            };
            debug!(session = %id, "campaigning for the leader lock");
            let session = Session::start(self.client.clone(), id, created, self.timings());
            let outcome = self.campaign_with(&session, shutdown).await;
            if !matches!(outcome, Ok(Some(_))) {
                session.stop.cancel();
                if let Err(e) = self.client.session_destroy(&session.id).await {
                    debug!(error = %e, "could not destroy the campaign session");
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
        let entry = self.client.kv_get(&self.cfg.key).await.map_err(backend)?;
        Ok(leader_of(entry))
    }

    fn watch_leader(&self, shutdown: CancellationToken) -> watch::Receiver<Option<LeaderInfo>> {
        let (tx, rx) = watch::channel(None);
        let client = self.client.clone();
        let key = self.cfg.key.clone();
        tokio::spawn(
            async move {
                let mut index = 0;
                loop {
                    let next = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        r = client.kv_watch(&key, index, WATCH_WAIT) => r,
                    };
                    match next {
                        Ok((entry, next)) => {
                            index = next;
                            let leader = leader_of(entry);
                            tx.send_if_modified(|cur| {
                                let changed = *cur != leader;
                                *cur = leader;
                                changed
                            });
                        }
                        Err(e) => {
                            debug!(error = %e, "leader watch failed");
                            tokio::select! {
                                _ = shutdown.cancelled() => return,
                                _ = tokio::time::sleep(RETRY) => {}
                            }
                        }
                    }
                }
            }
            .instrument(tracing::debug_span!("leader_watch", backend = "consul")),
        );
        rx
    }
}

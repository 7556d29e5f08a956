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
//! takes over. A scheduler restarted under the same address does not wait for that: its
//! campaign destroys the session its earlier run left (the session's name carries the
//! address), releasing the lock first so that no lock-delay applies.

use super::keeper::{self, Hold, Keeper, Renew, Renewal, Timings};
use super::{Error, LeaderInfo, Leadership, Result};
use crate::consul::{ConsulClient, KvEntry, SessionInfo, SessionSpec};
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
    /// Address this contender advertises when it leads. Also its identity: a session left
    /// by an earlier run with this address is destroyed when a campaign starts.
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

/// The name of every session a contender advertising `address` creates: the same across
/// restarts, so a new run finds what an earlier one left.
fn session_name(address: &str) -> String {
    format!("mofang-scheduler {address}")
}

/// Sessions left by an earlier run of this contender: those with its name on the Consul node
/// of its new session `mine`, except `mine`.
///
/// Safe to destroy: the name is derived from the advertised address, and this process
/// serves that address now, so the run that created them is gone (a session of the same
/// name on another node is another host misconfigured with our address: left alone).
fn leftovers<'a>(sessions: &'a [SessionInfo], name: &str, mine: &str) -> Vec<&'a SessionInfo> {
    let Some(node) = sessions.iter().find(|s| s.id == mine).map(|s| &s.node) else {
        return Vec::new();
    };
    sessions
        .iter()
        .filter(|s| s.id != mine && s.name == name && &s.node == node)
        .collect()
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
                name: session_name(&self.cfg.address),
                ttl: self.cfg.session_ttl,
                lock_delay: self.cfg.lock_delay,
                checks,
            })
            .await
    }

    /// Destroys the sessions an earlier run under our name left (see [`leftovers`]): a
    /// scheduler killed and restarted at once would otherwise find its dead run's session
    /// still holding the lock until the TTL (Consul may take twice as long) and the
    /// lock-delay have passed, with nobody leading. The lock is released first: a released
    /// lock has no lock-delay, so anyone can lead at once. Best effort.
    async fn clear_leftovers(&self, mine: &str) {
        let sessions = match self.client.session_list().await {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "cannot list sessions to find leftovers");
                return;
            }
        };
        for old in leftovers(&sessions, &session_name(&self.cfg.address), mine) {
            let released = self.client.kv_release(&self.cfg.key, &old.id).await;
            let destroyed = self.client.session_destroy(&old.id).await;
            match (released, destroyed) {
                (Ok(held), Ok(())) => info!(session = %old.id, held_the_lock = held,
                    "destroyed a session left by an earlier run of this scheduler"),
                (r, d) => warn!(session = %old.id, release = ?r.err(), destroy = ?d.err(),
                    "cannot clear a session left by an earlier run of this scheduler"),
            }
        }
    }

    /// One campaign with one session: `Ok(Some)` when leading, `Ok(None)` when the session
    /// died and a new one is needed.
    async fn campaign_with(
        &self,
        session: &Session,
        shutdown: &CancellationToken,
    ) -> Result<Option<Leadership>> {
        let dead = session.keeper.lost();
        let mut index = 0;
        // Whether the key was seen free before the last refused acquire.
        let mut seen_free = false;
        loop {
            if dead.is_cancelled() {
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
                    pause(RETRY, shutdown, dead).await;
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
                        pause(RETRY, shutdown, dead).await;
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
                _ = dead.cancelled() => return Ok(None),
                _ = wait => {}
            }
        }
    }

    /// Starts holding the lock just taken with `session` (acquire started at `started`).
    fn lead(&self, session: &Session, entry: KvEntry, started: Instant) -> Leadership {
        let term = entry.modify_index;
        info!(term, key = %self.cfg.key, "became the leader");
        // The acquire proved the session valid when it started.
        session.keeper.confirm(started);
        let held = HeldLock {
            client: self.client.clone(),
            key: self.cfg.key.clone(),
            session: session.id.clone(),
            index: entry.modify_index,
        };
        keeper::lead(
            term,
            session.keeper.clone(),
            held,
            tracing::info_span!("leadership", backend = "consul", term),
        )
    }
}

/// A session and the keeper renewing it.
#[derive(Debug)]
struct Session {
    id: String,
    keeper: Keeper,
}

/// Renews a session (`PUT /v1/session/renew/<id>`).
struct SessionRenew {
    client: ConsulClient,
    id: String,
}

#[async_trait::async_trait]
impl Renew for SessionRenew {
    async fn renew(&mut self, budget: Duration) -> Renewal {
        // One HTTP request per call: a dropped call's answer cannot reach a later one.
        match self.client.session_renew(&self.id, budget).await {
            Ok(true) => Renewal::Renewed,
            Ok(false) => Renewal::Gone,
            Err(e) => Renewal::Failed(e.to_string()),
        }
    }
}

/// The leader lock, held by `session`, as seen at `index`.
struct HeldLock {
    client: ConsulClient,
    key: String,
    session: String,
    index: u64,
}

#[async_trait::async_trait]
impl Hold for HeldLock {
    async fn watch(&self) -> String {
        let mut index = self.index;
        loop {
            match self.client.kv_watch(&self.key, index, WATCH_WAIT).await {
                Ok((entry, next)) => {
                    index = next;
                    match entry {
                        Some(e) if e.session.as_deref() == Some(self.session.as_str()) => {}
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
    }

    async fn release(&self) -> Result<()> {
        // Release first: a released lock has no lock-delay, so a follower leads at once.
        let released = self.client.kv_release(&self.key, &self.session).await;
        let destroyed = self.client.session_destroy(&self.session).await;
        released.map_err(backend)?;
        destroyed.map_err(backend)
    }

    async fn abandon(&self) {
        // A session we no longer trust must not keep the lock.
        if let Err(e) = self.client.session_destroy(&self.session).await {
            debug!(error = %e, "could not destroy the lost session");
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
            let renewer = SessionRenew {
                client: self.client.clone(),
                id: id.clone(),
            };
            let span = tracing::debug_span!("consul_session", session = %id);
            let keeper = Keeper::start(renewer, created, self.timings(), span);
            let session = Session { id, keeper };
            self.clear_leftovers(&session.id).await;
            let outcome = self.campaign_with(&session, shutdown).await;
            if !matches!(outcome, Ok(Some(_))) {
                session.keeper.stop();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, name: &str, node: &str) -> SessionInfo {
        SessionInfo {
            id: id.to_owned(),
            name: name.to_owned(),
            node: node.to_owned(),
        }
    }

    #[test]
    fn leftovers_are_our_name_on_our_node_but_not_ours() {
        let me = session_name("http://10.0.0.1:8080");
        let other = session_name("http://10.0.0.2:8080");
        let all = [
            session("new", &me, "host-a"),
            session("old", &me, "host-a"),
            session("older", &me, "host-a"),
            session("peer", &other, "host-a"),
            session("misconfigured", &me, "host-b"),
        ];
        let ids: Vec<&str> = leftovers(&all, &me, "new")
            .iter()
            .map(|s| s.id.as_str())
            .collect();
        assert_eq!(ids, ["old", "older"]);
        // Our own session not listed (yet): nothing is known to be ours, nothing is touched.
        assert!(leftovers(&all[1..], &me, "new").is_empty());
    }
}

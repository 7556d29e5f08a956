//! Observed state: what agents report in heartbeats (kept in memory only, never stored)
//! and what it says about each node: ready, cordoned, draining or down for want of
//! heartbeats.

use super::{event, lock, Cluster, Inner};
use crate::model::{now_ms, EventKind, Node, NodeAdmin, NodeState};
use mofang_common::proto::{HeartbeatRequest, MemberStatus};
use mofang_common::Role;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// What agents told us about a node, in memory only.
#[derive(Debug, Clone)]
pub(super) struct Live {
    pub(super) last_heartbeat: Instant,
    pub(super) last_heartbeat_ms: i64,
    pub(super) members: HashMap<String, MemberStatus>,
    pub(super) down_reported: bool,
    /// `members` holds every member the agent runs: a complete heartbeat came since this
    /// scheduler began to lead (decision 75). Until then the agent is asked for one.
    pub(super) complete: bool,
    /// The agent process (`boot`) and number (`seq`) of the last heartbeat applied: an older
    /// one of the same process arriving late changes nothing.
    pub(super) boot: u64,
    pub(super) seq: u64,
    /// What the host used over the last minutes (its agent's `HostUsage`).
    pub(super) usage: super::usage::UsageHistory,
}

/// What a heartbeat's answer tells the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    /// The node's latest desired-state revision.
    pub revision: u64,
    /// The next heartbeat must carry every member.
    pub want_full: bool,
}

/// A heartbeat of `(boot, seq)` arrived after the one of `(last_boot, last_seq)` was applied:
/// it is older (the same process, a lower number) and must not overwrite what that said.
/// 0 is "not numbered" (agents before decision 75): never older.
fn overtaken(boot: u64, seq: u64, last_boot: u64, last_seq: u64) -> bool {
    boot != 0 && seq != 0 && boot == last_boot && seq <= last_seq
}

/// What a failover pass decides on changed between two statuses of a member (or it is new).
fn decision_changed(old: Option<&MemberStatus>, new: &MemberStatus) -> bool {
    old.is_none_or(|o| {
        o.healthy != new.healthy
            || o.held != new.held
            || o.failed != new.failed
            || o.failed_checks != new.failed_checks
            || o.replication_ok != new.replication_ok
            || o.container_state != new.container_state
            || o.role != new.role
            || o.epoch != new.epoch
    })
}

impl Cluster {
    /// Returns when a heartbeat changed what a failover pass decides on (at once if one did
    /// since the last call): the scheduler's liveness loop runs a pass then instead of
    /// waiting for its tick.
    pub async fn failover_wanted(&self) {
        self.failover_wake.notified().await;
    }

    /// A heartbeat: remember what the agent sees; push new desired states if a primary's
    /// address changed (replicas follow it).
    /// Returns the node's latest desired-state revision and whether its next heartbeat must be
    /// complete, or None for an unregistered node.
    pub fn heartbeat(&self, hb: HeartbeatRequest) -> Option<Beat> {
        let mut inner = lock(&self.inner);
        if !inner.nodes.contains_key(&hb.node) {
            return None;
        }
        let mut moved_primaries = Vec::new();
        let mut wake = false;
        let Inner {
            live,
            instances,
            last_lag,
            suspects,
            inflight,
            ..
        } = &mut *inner;
        let live = live.entry(hb.node.clone()).or_insert_with(|| Live {
            last_heartbeat: Instant::now(),
            last_heartbeat_ms: 0,
            members: HashMap::new(),
            down_reported: false,
            complete: false,
            boot: 0,
            seq: 0,
            usage: Default::default(),
        });
        live.last_heartbeat = Instant::now();
        live.last_heartbeat_ms = now_ms();
        if let Some(u) = &hb.usage {
            live.usage.record(live.last_heartbeat_ms, u);
        }
        let was_down = std::mem::replace(&mut live.down_reported, false);
        let mut members = hb.members;
        if overtaken(hb.boot, hb.seq, live.boot, live.seq) {
            // Alive, but what it says is older than what is held.
            members.clear();
        } else {
            (live.boot, live.seq) = (hb.boot, hb.seq);
            if hb.partial {
                for id in &hb.gone {
                    live.members.remove(id);
                }
            } else {
                live.complete = true;
                live.members
                    .retain(|id, _| members.iter().any(|m| &m.member == id));
            }
        }
        let want_full = !live.complete;
        for m in members {
            let moved = (!m.address.is_empty()
                && live.members.get(&m.member).map(|o| o.address.as_str())
                    != Some(m.address.as_str()))
                || (!m.tls.is_empty()
                    && live.members.get(&m.member).map(|o| o.tls.as_str()) != Some(m.tls.as_str()));
            // Only a primary's address matters to others: its replicas follow it, over TLS
            // once it serves TLS.
            if moved
                && instances.get(&m.instance).is_some_and(|i| {
                    i.members
                        .iter()
                        .any(|r| r.id == m.member && r.role == Role::Primary)
                })
            {
                moved_primaries.push(m.instance.clone());
            }
            // Agents report the last lag seen with the link up while it is down, so a
            // scheduler that started after the primary failed learns it too.
            if m.lag_seconds >= 0 {
                match last_lag.get_mut(&m.member) {
                    Some(lag) => *lag = m.lag_seconds,
                    None => {
                        last_lag.insert(m.member.clone(), m.lag_seconds);
                    }
                }
            }
            if !crate::failover::decide::calm(&m) && !suspects.contains(&m.instance) {
                suspects.insert(m.instance.clone());
            }
            wake |= (suspects.contains(&m.instance) || inflight.contains_key(&m.instance))
                && decision_changed(live.members.get(&m.member), &m);
            match live.members.get_mut(&m.member) {
                Some(slot) => *slot = m,
                None => {
                    live.members.insert(m.member.clone(), m);
                }
            }
        }
        if was_down {
            info!(node = %hb.node, "node is back");
        }
        if wake {
            self.failover_wake.notify_one();
        }
        if !hb.jobs.is_empty() {
            for j in hb.jobs {
                inner.job_status.insert(j.id.clone(), j);
            }
            self.jobs_changed.notify_waiters();
        }
        // Replicas learn the primary's (new) address.
        let mut nodes = Vec::new();
        for name in moved_primaries {
            if let Some(i) = inner.instances.get(&name) {
                nodes.extend(i.members.iter().map(|m| m.node.clone()));
            }
        }
        if !nodes.is_empty() {
            nodes.sort();
            nodes.dedup();
            self.push_nodes(&mut inner, &nodes);
        }
        Some(Beat {
            revision: inner
                .watchers
                .get(&hb.node)
                .map(|w| *w.borrow())
                .unwrap_or(0),
            want_full,
        })
    }

    /// Marks nodes without heartbeats for `node_ttl` down (once), with an event.
    pub async fn check_nodes(&self) {
        let newly_down: Vec<String> = {
            let mut inner = lock(&self.inner);
            let ttl = self.node_ttl;
            inner
                .live
                .iter_mut()
                .filter(|(_, l)| !l.down_reported && l.last_heartbeat.elapsed() >= ttl)
                .map(|(n, l)| {
                    l.down_reported = true;
                    n.clone()
                })
                .collect()
        };
        for n in newly_down {
            warn!(node = %n, "node down: no heartbeat for node_ttl");
            let ev = event(
                EventKind::NodeDown,
                None,
                Some(&n),
                format!("no heartbeat for {} ms", self.node_ttl.as_millis()),
            );
            if let Err(e) = self.store.append_events(&[ev]).await {
                warn!(error = %e, "could not record node_down event");
            }
        }
    }

    pub(super) fn node_state(&self, inner: &Inner, node: &Node) -> NodeState {
        self.node_state_at(inner, node, Instant::now())
    }

    pub(super) fn node_state_at(&self, inner: &Inner, node: &Node, now: Instant) -> NodeState {
        let alive = inner
            .live
            .get(&node.name)
            .is_some_and(|l| now.saturating_duration_since(l.last_heartbeat) < self.node_ttl);
        state_of(alive, node.admin)
    }
}

/// How much longer a new leader is warming up: it has led for `led_for` (`None`: it does not
/// lead) and takes a node it has not heard from this term for down only after `node_ttl`, as
/// it would any node silent that long. Until then a node it never heard is not known to be
/// down: its agent may simply not have found the new leader yet. `None` once warmed up.
pub(super) fn warm_up_left(led_for: Option<Duration>, node_ttl: Duration) -> Option<Duration> {
    let left = node_ttl.checked_sub(led_for?)?;
    (!left.is_zero()).then_some(left)
}

/// A node's state from whether it heartbeats and what the operator set.
pub(super) fn state_of(alive: bool, admin: NodeAdmin) -> NodeState {
    match (alive, admin) {
        (false, _) => NodeState::Down,
        (true, NodeAdmin::Active) => NodeState::Ready,
        (true, NodeAdmin::Cordoned) => NodeState::Cordoned,
        (true, NodeAdmin::Draining) => NodeState::Draining,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{cluster_on, one_on_three_nodes, spec, three_ssd_nodes};
    use super::super::Trigger;
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::Store;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_new_leader_warms_up_for_one_node_ttl() {
        let ttl = Duration::from_millis(1500);
        assert_eq!(warm_up_left(None, ttl), None, "a follower does not warm up");
        assert_eq!(warm_up_left(Some(Duration::ZERO), ttl), Some(ttl));
        assert_eq!(
            warm_up_left(Some(Duration::from_millis(1000)), ttl),
            Some(Duration::from_millis(500))
        );
        assert_eq!(warm_up_left(Some(ttl), ttl), None);
        assert_eq!(warm_up_left(Some(Duration::from_secs(60)), ttl), None);
    }

    /// Soak, scheduler `kill -9` during a failover: the new scheduler never saw a replica's
    /// link up, so it knew no lag, found no candidate and brought the held old primary back
    /// instead of promoting a replica. Agents now report the last lag seen with the link up.
    #[tokio::test]
    async fn a_scheduler_started_after_the_primary_died_promotes_a_replica() {
        let (store, first, i) = one_on_three_nodes().await;
        drop(first);
        // A new scheduler on the same store; the primary is held dead, the replicas' links
        // are down (they were down before this scheduler started).
        let c = Cluster::load(store.clone(), Duration::from_secs(30))
            .await
            .expect("reload");
        c.activate().await.expect("activate");
        let old = i.primary().expect("primary").clone();
        for m in &i.members {
            let primary = m.id == old.id;
            let status = MemberStatus {
                member: m.id.clone(),
                instance: "one".into(),
                engine: "mariadb".into(),
                container_state: if primary { "exited" } else { "running" }.into(),
                role: if primary { "unknown" } else { "replica" }.into(),
                epoch: i.epoch,
                address: format!("10.0.0.{}:3306", m.node.len()),
                position: "0-1-40".into(),
                lag_seconds: if primary { -1 } else { 0 },
                held: primary,
                read_only: !primary,
                replication_ok: false,
                checked_at_ms: now_ms(),
                ..Default::default()
            };
            c.heartbeat(HeartbeatRequest {
                node: m.node.clone(),
                members: vec![status],
                ..Default::default()
            });
        }
        let after = c
            .fail_over("one", "test", None, Trigger::Operator)
            .await
            .expect("fails over");
        let new = after.primary().expect("new primary");
        assert_ne!(
            new.id, old.id,
            "a replica is promoted, not the held primary: {after:?}"
        );
        assert_eq!(after.epoch, i.epoch + 1);
    }

    /// Issue 13, point 8: a pass no longer waits up to a tick (250 ms) for a change it decides
    /// on; calm heartbeats ask for nothing.
    #[tokio::test]
    async fn a_failing_member_asks_for_a_failover_pass_and_calm_heartbeats_do_not() {
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open_in_memory().expect("in-memory store"));
        let c = cluster_on(store, &three_ssd_nodes()).await;
        let i = c
            .create_instance(spec("one", 100, None))
            .await
            .expect("create");
        let p = i.primary().expect("primary").clone();
        let status = |held: bool| MemberStatus {
            member: p.id.clone(),
            instance: "one".into(),
            container_state: if held { "exited" } else { "running" }.into(),
            role: "primary".into(),
            epoch: i.epoch,
            healthy: !held,
            held,
            ..Default::default()
        };
        let beat = |held: bool| {
            c.heartbeat(HeartbeatRequest {
                node: p.node.clone(),
                members: vec![status(held)],
                ..Default::default()
            })
        };
        let asked = || async {
            tokio::time::timeout(Duration::from_millis(20), c.failover_wanted())
                .await
                .is_ok()
        };
        beat(false);
        beat(false);
        assert!(!asked().await, "a healthy primary asks for nothing");
        beat(true);
        assert!(asked().await, "a held primary asks for a pass at once");
        beat(true);
        assert!(!asked().await, "the same report again asks for nothing");
    }

    /// Decision 75: heartbeats carry only what changed. A scheduler without a complete view
    /// of a node (a new leader) asks for one, a complete heartbeat replaces what it held,
    /// `gone` members leave, and a late heartbeat of the same agent process changes nothing.
    #[tokio::test]
    async fn partial_heartbeats_update_complete_ones_replace_and_late_ones_are_ignored() {
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open_in_memory().expect("in-memory store"));
        let c = cluster_on(store, &three_ssd_nodes()).await;
        let node = three_ssd_nodes()[0].name.clone();
        let st = |id: &str, healthy: bool| MemberStatus {
            member: id.into(),
            instance: "one".into(),
            healthy,
            ..Default::default()
        };
        let held = |id: &str| {
            let inner = lock(&c.inner);
            inner
                .live
                .get(&node)
                .and_then(|l| l.members.get(id))
                .map(|s| s.healthy)
        };
        let beat = |partial: bool, seq: u64, members: Vec<MemberStatus>, gone: Vec<&str>| {
            c.heartbeat(HeartbeatRequest {
                node: node.clone(),
                members,
                partial,
                gone: gone.into_iter().map(String::from).collect(),
                boot: 7,
                seq,
                ..Default::default()
            })
            .expect("registered node")
        };
        // A new leader forgets what agents told the previous term (`activate`).
        lock(&c.inner).live.clear();
        // A partial heartbeat to a scheduler that never had a complete one: applied, and a
        // complete one asked for.
        let b = beat(true, 1, vec![st("a", true)], vec![]);
        assert!(b.want_full);
        assert_eq!(held("a"), Some(true));
        // The complete one: what it does not name is not on the node.
        let b = beat(false, 2, vec![st("b", true), st("c", true)], vec![]);
        assert!(!b.want_full);
        assert_eq!((held("a"), held("b")), (None, Some(true)));
        // Changes only, and a member gone.
        let b = beat(true, 3, vec![st("b", false)], vec!["c"]);
        assert!(!b.want_full);
        assert_eq!((held("b"), held("c")), (Some(false), None));
        // A heartbeat made before the last one, arriving after it: ignored.
        beat(false, 2, vec![st("b", true), st("c", true)], vec![]);
        assert_eq!((held("b"), held("c")), (Some(false), None));
        // A new agent process numbers from 1 again: applied.
        c.heartbeat(HeartbeatRequest {
            node: node.clone(),
            members: vec![st("b", true)],
            boot: 8,
            seq: 1,
            ..Default::default()
        });
        assert_eq!(held("b"), Some(true));
    }

    #[test]
    fn a_heartbeat_is_overtaken_only_by_a_later_one_of_the_same_process() {
        assert!(overtaken(7, 3, 7, 3));
        assert!(overtaken(7, 2, 7, 3));
        assert!(!overtaken(7, 4, 7, 3));
        assert!(!overtaken(8, 1, 7, 3), "another process");
        assert!(
            !overtaken(0, 0, 7, 3),
            "an agent before decision 75 numbers nothing"
        );
    }
}

//! Desired state: each node's full `DesiredState` (one assignment per member placed on it),
//! computed from the records and the primaries' observed addresses, and the watch channel
//! that pushes every new revision to the node's agent over `WatchAssignments`.

use super::books::disk_class_of;
use super::{lock, Cluster, Inner};
use mofang_common::proto::{Assignment, CredentialRotation, DesiredState};
use mofang_common::Role;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;

impl Cluster {
    /// Subscribes to a node's desired state (sent on connect, then on every change).
    pub fn watch(self: &Arc<Self>, node: &str) -> DesiredWatch {
        let mut inner = lock(&self.inner);
        let rx = match inner.watchers.get(node) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(next_revision(&mut inner));
                inner.watchers.insert(node.to_owned(), tx);
                rx
            }
        };
        DesiredWatch {
            cluster: self.clone(),
            node: node.to_owned(),
            rx,
        }
    }

    /// Tells the nodes that watch that their desired state has a new revision. Only the
    /// revision moves here, under the lock the change was made under; the state itself is
    /// built when the node's stream reads it (decision 176), so a node told twice before it
    /// reads builds and sends once.
    pub(super) fn push_nodes(&self, inner: &mut Inner, nodes: &[String]) {
        for n in nodes {
            if inner.watchers.contains_key(n) {
                let rev = next_revision(inner);
                if let Some(tx) = inner.watchers.get(n) {
                    tx.send_replace(rev);
                }
            }
        }
    }
}

/// One node's desired state as its agent follows it: the channel carries the newest
/// revision, and the state is built from the records when it is read, under the same lock
/// every change and every revision step is made under, so what is read is at least as new as
/// the revision it is sent with.
pub struct DesiredWatch {
    cluster: Arc<Cluster>,
    node: String,
    rx: watch::Receiver<u64>,
}

impl DesiredWatch {
    /// The desired state as it is now (not marked as seen).
    pub fn current(&self) -> DesiredState {
        let inner = lock(&self.cluster.inner);
        let rev = *self.rx.borrow();
        desired_for(&inner, &self.node, rev)
    }

    /// The desired state as it is now, marked as seen; `None` once this scheduler stopped
    /// serving the node (it lost the lead, or the node was revoked).
    pub fn current_and_update(&mut self) -> Option<DesiredState> {
        let inner = lock(&self.cluster.inner);
        // Under the lock: a sender is only dropped, and a revision only moves, under it.
        self.rx.has_changed().ok()?;
        let rev = *self.rx.borrow_and_update();
        Some(desired_for(&inner, &self.node, rev))
    }

    /// A revision not yet seen is waiting (`Err` once the scheduler stopped serving the node).
    pub fn has_changed(&self) -> Result<bool, watch::error::RecvError> {
        self.rx.has_changed()
    }

    /// The desired state now, then again after every change, until the scheduler stops
    /// serving the node.
    pub fn into_stream(self) -> impl futures::Stream<Item = DesiredState> + Send + 'static {
        futures::stream::unfold((self, true), |(mut w, first)| async move {
            if !first {
                w.rx.changed().await.ok()?;
            }
            let ds = w.current_and_update()?;
            Some((ds, (w, false)))
        })
    }
}

/// Revisions must grow across scheduler restarts too (agents ignore older ones), so they
/// follow the clock in microseconds and only ever step forward.
fn next_revision(inner: &mut Inner) -> u64 {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    inner.revision = (inner.revision + 1).max(now_us);
    inner.revision
}

/// The restore source of a restored instance's primary (JSON), or empty. The agent fills the
/// volume once, before the server's first start; the repository (with its secret) comes from
/// the records in memory, `None` if it was deleted since (the agent then refuses).
fn restore_source(inner: &Inner, i: &crate::model::Instance) -> String {
    match &i.restored {
        Some(r) => source_json(inner, i, r, false),
        None => String::new(),
    }
}

/// The backup a new replica of a `scale` is seeded from (JSON), or empty (decision 164): a
/// consistent copy, no binlog replayed, its replication to start at the backup's position.
fn seed_source(inner: &Inner, i: &crate::model::Instance, member: &str) -> String {
    match i.seed_backups.get(member) {
        Some(r) => source_json(inner, i, r, true),
        None => String::new(),
    }
}

fn source_json(
    inner: &Inner,
    i: &crate::model::Instance,
    r: &crate::model::Restored,
    replica: bool,
) -> String {
    let src = mofang_common::backup::RestoreSource {
        backup: r.backup.clone(),
        engine: i.spec.engine.to_string(),
        repo: inner.repos.get(&r.repo).cloned(),
        object: r.object.clone(),
        size: r.size,
        sha256: r.sha256.clone(),
        raw_size: r.raw_size,
        encryption: r.encryption.clone(),
        binlogs: r.binlogs.clone(),
        stop_datetime: r
            .time
            .as_deref()
            .and_then(|t| mofang_common::pitr::parse_utc(t).ok())
            .map(mofang_common::pitr::format_sql_utc)
            .unwrap_or_default(),
        replica,
    };
    serde_json::to_string(&src).unwrap_or_default()
}

/// Where a new or rebuilt replica copies its first snapshot from, or empty (the primary):
/// the address of the healthy replica the scheduler named as its donor and, for MariaDB, the
/// donor's agent and member id, which stream it a physical copy (decision 167). Only while
/// the donor is a replica of the record and reported healthy: a donor that failed leaves the
/// seed to the primary rather than to a dead address.
#[derive(Debug, Default, PartialEq, Eq)]
struct SeedFrom {
    address: String,
    agent: String,
    member: String,
}

fn seed_from(inner: &Inner, i: &crate::model::Instance, member: &str) -> SeedFrom {
    let Some(donor) = i.seed_donors.get(member) else {
        return SeedFrom::default();
    };
    let Some(d) = i
        .members
        .iter()
        .find(|d| &d.id == donor && d.role == Role::Replica)
    else {
        return SeedFrom::default();
    };
    let Some(s) = inner
        .live
        .get(&d.node)
        .and_then(|l| l.members.get(&d.id))
        .filter(|s| s.healthy && s.replication_ok && !s.address.is_empty())
    else {
        return SeedFrom::default();
    };
    let agent = match inner.nodes.get(&d.node) {
        Some(n) if i.spec.engine == mofang_common::EngineKind::Mariadb => n.http_address.clone(),
        _ => String::new(),
    };
    SeedFrom {
        address: s.address.clone(),
        member: if agent.is_empty() {
            String::new()
        } else {
            d.id.clone()
        },
        agent,
    }
}

/// A node's full desired state: one assignment per member placed on it.
fn desired_for(inner: &Inner, node: &str, revision: u64) -> DesiredState {
    let mut members = Vec::new();
    if let Some(r) = inner.reserved.get(node) {
        for name in &r.instances {
            let Some(i) = inner.instances.get(name).filter(|i| i.revision > 0) else {
                continue;
            };
            let primary = i.members.iter().find(|m| m.role == Role::Primary);
            let primary_seen = primary.and_then(|p| inner.live.get(&p.node)?.members.get(&p.id));
            let primary_address = primary_seen.map(|s| s.address.clone()).unwrap_or_default();
            // The mode the primary's server serves with (a TLS change rolls out member by
            // member); an agent that does not report it serves the instance's mode.
            let primary_tls = primary_seen
                .map(|s| s.tls.clone())
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| i.spec.tls.to_string());
            for m in i.members.iter().filter(|m| m.node == node) {
                // A member is never left out of its node's desired state (the agent would remove
                // it). A replica whose primary's address is not known yet (just created, or the
                // scheduler just restarted) gets an empty address: the agent keeps it as it is.
                let c = &i.credentials;
                let seed = seed_from(inner, i, &m.id);
                members.push(Assignment {
                    member: m.id.clone(),
                    instance: i.spec.name.clone(),
                    engine: i.spec.engine.to_string(),
                    version: i.spec.version.clone(),
                    role: m.role.to_string(),
                    epoch: i.epoch,
                    cpu: i.spec.resources.cpu,
                    memory_bytes: i.spec.resources.memory << 20,
                    disk_bytes: i.spec.resources.disk << 20,
                    disk_class: disk_class_of(&inner.nodes, i, m),
                    primary_address: if m.role == Role::Replica {
                        primary_address.clone()
                    } else {
                        String::new()
                    },
                    secrets: HashMap::from([
                        ("admin".into(), c.admin.clone()),
                        ("repl".into(), c.repl.clone()),
                        ("monitor".into(), c.monitor.clone()),
                        ("app".into(), c.app.clone()),
                    ]),
                    settings: i
                        .parameters
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .chain([("replicas".to_owned(), i.spec.replicas.to_string())])
                        .collect(),
                    seed_from: seed.address,
                    seed_agent: seed.agent,
                    seed_member: seed.member,
                    parameters_generation: i.parameters_generation,
                    fence: m.role == Role::Primary && i.fence_primary,
                    promote_after: if m.role == Role::Primary {
                        i.promote_after.clone()
                    } else {
                        String::new()
                    },
                    hold_open: m.role == Role::Primary && i.deposed.is_some(),
                    restart_generation: i.restart_generations.get(&m.id).copied().unwrap_or(0),
                    stopped: i.stopped,
                    rebuild_generation: i.rebuild_generations.get(&m.id).copied().unwrap_or(0),
                    restore: if m.role == Role::Primary {
                        restore_source(inner, i)
                    } else {
                        seed_source(inner, i, &m.id)
                    },
                    archive: if m.role == Role::Primary {
                        Cluster::archive_target(inner, i)
                    } else {
                        String::new()
                    },
                    tls: i.spec.tls.to_string(),
                    primary_tls: if m.role == Role::Replica {
                        primary_tls.clone()
                    } else {
                        String::new()
                    },
                    rotation: i.rotation.as_ref().map(|r| CredentialRotation {
                        id: r.id,
                        account: r.account.to_string(),
                        step: r.step.to_string(),
                        other_password: if r.step.both_accepted() {
                            r.password.clone()
                        } else {
                            String::new()
                        },
                    }),
                });
            }
        }
    }
    DesiredState {
        node: node.to_owned(),
        revision,
        members,
        jobs: inner.jobs.get(node).cloned().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{cluster, node, spec};
    use mofang_common::proto::{HeartbeatRequest, MemberStatus};
    use mofang_common::Role;
    use std::collections::BTreeSet;

    /// After `create_instance`, each node with members gets a new revision naming exactly its
    /// members; a node without members keeps an empty state; replicas learn their primary's
    /// address once its agent reports it.
    #[tokio::test]
    async fn watchers_get_their_members_after_a_create_and_nodes_without_get_nothing() {
        let names = ["a", "b", "c", "d"];
        let nodes: Vec<_> = names.iter().map(|n| node(n, &[("ssd", 1000)])).collect();
        let c = cluster(&nodes).await;
        let mut rx: Vec<_> = names.iter().map(|n| c.watch(n)).collect();
        let first: Vec<u64> = rx
            .iter_mut()
            .map(|r| {
                let ds = r.current_and_update().expect("served");
                assert!(ds.members.is_empty(), "nothing placed yet: {ds:?}");
                ds.revision
            })
            .collect();

        let i = c
            .create_instance(spec("one", 100, None))
            .await
            .expect("create");
        assert_eq!(i.members.len(), 3);
        let primary = i.primary().expect("primary").clone();
        let mut last = 0;
        for (k, name) in names.iter().enumerate() {
            let mine: BTreeSet<&str> = i
                .members
                .iter()
                .filter(|m| m.node == *name)
                .map(|m| m.id.as_str())
                .collect();
            let changed = rx[k].has_changed().expect("sender alive");
            let ds = rx[k].current_and_update().expect("served");
            assert_eq!(ds.node, *name);
            if mine.is_empty() {
                assert!(!changed, "{name} has no member, no new revision");
                assert!(ds.members.is_empty(), "{ds:?}");
                assert_eq!(ds.revision, first[k]);
                continue;
            }
            assert!(changed, "{name} is told");
            assert!(ds.revision > first[k], "revisions grow: {ds:?}");
            assert!(ds.revision > last, "and never repeat");
            last = ds.revision;
            let got: BTreeSet<&str> = ds.members.iter().map(|a| a.member.as_str()).collect();
            assert_eq!(got, mine, "{name}: {ds:?}");
            for a in &ds.members {
                let r = i.members.iter().find(|m| m.id == a.member).expect("member");
                assert_eq!(a.instance, "one");
                assert_eq!(a.role, r.role.to_string());
                assert_eq!(a.epoch, i.epoch);
                assert_eq!(a.disk_class, "ssd");
                assert_eq!(a.disk_bytes, 100 << 20);
                assert_eq!(a.secrets["admin"], i.credentials.admin);
                assert_eq!(a.primary_address, "", "primary's address not known yet");
            }
        }
        // A node that starts watching after the create, with nothing on it: an empty state.
        let empty = names
            .iter()
            .find(|n| i.members.iter().all(|m| m.node != **n))
            .expect("one node of four is left out");
        let late = c.watch(empty).current();
        assert!(late.members.is_empty(), "{late:?}");

        // The primary's agent reports its address: the replicas' nodes are told it.
        c.heartbeat(HeartbeatRequest {
            node: primary.node.clone(),
            members: vec![MemberStatus {
                member: primary.id.clone(),
                instance: "one".into(),
                address: "10.0.0.1:3306".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        for m in i.members.iter().filter(|m| m.role == Role::Replica) {
            let k = names.iter().position(|n| *n == m.node).expect("node");
            assert!(rx[k].has_changed().expect("sender alive"));
            let ds = rx[k].current_and_update().expect("served");
            let a = ds
                .members
                .iter()
                .find(|a| a.member == m.id)
                .expect("replica");
            assert_eq!(a.primary_address, "10.0.0.1:3306");
        }
    }

    /// A node told twice before its stream reads gets one state holding both changes, with
    /// the newest revision; the stream ends when the scheduler stops serving the node.
    #[tokio::test]
    async fn a_stream_builds_once_for_changes_made_before_it_reads_and_ends_with_its_node() {
        use futures::StreamExt;
        let names = ["a", "b", "c"];
        let nodes: Vec<_> = names.iter().map(|n| node(n, &[("ssd", 1000)])).collect();
        let c = cluster(&nodes).await;
        let mut stream = Box::pin(c.watch("a").into_stream());
        let first = stream.next().await.expect("the state on connect");
        assert!(first.members.is_empty(), "{first:?}");
        // Three members each on three nodes: every node holds one of each instance.
        for name in ["one", "two"] {
            c.create_instance(spec(name, 100, None))
                .await
                .expect("create");
        }
        let newest = *super::lock(&c.inner).watchers["a"].borrow();
        let ds = stream.next().await.expect("the change");
        let on_a: BTreeSet<&str> = ds.members.iter().map(|a| a.instance.as_str()).collect();
        assert_eq!(on_a, BTreeSet::from(["one", "two"]), "{ds:?}");
        assert_eq!(ds.revision, newest, "sent with the newest revision");
        assert!(ds.revision > first.revision);
        // Revoked, or the lead lost: the sender goes, and so does the stream.
        super::lock(&c.inner).watchers.remove("a");
        assert!(stream.next().await.is_none(), "the stream ends");
    }
}

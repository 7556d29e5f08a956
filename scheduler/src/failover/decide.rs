//! Failover decisions as pure functions of what the scheduler knows: is an instance's primary
//! failed, which replica takes over, which member must be replaced. No I/O, no clock: the
//! caller passes `now`, so every rule is unit-tested below.

use crate::model::Instance;
use mofang_common::position::Position;
use mofang_common::proto::MemberStatus;
use mofang_common::Role;
use std::time::Duration;

/// What the scheduler knows about one member's node and the member itself.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    /// The node heartbeats within `node_ttl`.
    pub node_alive: bool,
    /// Time since the node's last heartbeat (None: never heard since start).
    pub silent_for: Option<Duration>,
    /// The node's lease: its agent fences primaries this long after its last heartbeat.
    pub lease_ttl: Duration,
    /// The node's `zone` label.
    pub zone: Option<&'a str>,
    /// The member's last reported status.
    pub status: Option<&'a MemberStatus>,
    /// The member's replication lag in its last healthy report (seconds; None: unknown).
    pub last_lag: Option<i64>,
}

impl Seen<'_> {
    /// Nothing known: not a member, or its node never reported.
    pub fn nothing() -> Self {
        Seen {
            node_alive: false,
            silent_for: None,
            lease_ttl: Duration::ZERO,
            zone: None,
            status: None,
            last_lag: None,
        }
    }
}

/// Knobs of the decision.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Consecutive failed checks after which a database counts as dead.
    pub failed_checks: u32,
    /// Replicas lagging more than this are never promoted (seconds).
    pub max_lag: i64,
    /// A member whose node is down this long is replaced.
    pub replace_after: Duration,
}

/// How an instance's primary is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Nothing to do.
    Fine,
    /// The primary failed; promote once `wait` has passed (node loss: until the old primary
    /// has surely fenced itself).
    Failed {
        /// Why, for events.
        reason: String,
        /// Still to wait before a promotion is safe.
        wait: Duration,
    },
    /// The scheduler lost the primary's node, but its replicas still replicate from it.
    NodeLostPrimaryAlive {
        /// Why no failover.
        reason: String,
    },
}

/// Assesses the primary of `inst`; `seen(member_id)` gives what is known of each member.
pub fn assess<'a>(inst: &Instance, seen: impl Fn(&str) -> Seen<'a>, rules: &Rules) -> Health {
    let Some(p) = inst.primary() else {
        return Health::Fine;
    };
    let ps = seen(&p.id);
    if ps.node_alive {
        let Some(s) = ps.status else {
            return Health::Fine;
        };
        let reason = if s.held {
            Some(format!("primary {} died: {}", p.id, s.reason))
        } else if s.failed {
            Some(format!("primary {} failed: {}", p.id, s.reason))
        } else if s.failed_checks >= rules.failed_checks {
            Some(format!(
                "primary {} not answering: {} consecutive failed checks",
                p.id, s.failed_checks
            ))
        } else {
            None
        };
        return match reason {
            Some(reason) => Health::Failed {
                reason,
                wait: Duration::ZERO,
            },
            None => Health::Fine,
        };
    }
    // The node is silent. Its replicas are the other witnesses: a replica whose link to the
    // primary is up proves the primary alive (only the scheduler lost the node).
    let witnesses: Vec<(&str, &MemberStatus)> = inst
        .members
        .iter()
        .filter(|m| m.role == Role::Replica)
        .filter_map(|m| {
            let s = seen(&m.id);
            s.node_alive.then_some((m.id.as_str(), s.status?))
        })
        .collect();
    if witnesses.is_empty() {
        return Health::Fine;
    }
    if let Some((id, _)) = witnesses.iter().find(|(_, s)| s.replication_ok) {
        return Health::NodeLostPrimaryAlive {
            reason: format!(
                "node of primary {} is silent, but replica {id} still replicates from it: no failover",
                p.id
            ),
        };
    }
    let silent = ps.silent_for.unwrap_or(Duration::MAX);
    Health::Failed {
        reason: format!(
            "node of primary {} silent for {} ms and no replica reaches it",
            p.id,
            silent.as_millis().min(u128::from(u64::MAX))
        ),
        wait: ps.lease_ttl.saturating_sub(silent),
    }
}

/// A member status that gives these rules nothing to act on: not held down, not failed,
/// answering its checks. An instance whose members are all calm, on nodes that heartbeat, with
/// no replacement under way, assesses [`Health::Fine`] with no [`lost_member`] (tested below),
/// so the scheduler's failover pass skips it.
pub fn calm(s: &MemberStatus) -> bool {
    !s.held && !s.failed && s.failed_checks == 0
}

/// Why no replica can take over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no replica can be promoted: {}", .0.join("; "))]
pub struct NoCandidate(pub Vec<String>);

/// Picks the replica to promote: alive, answering, lag within `max_lag`, the most advanced
/// position; ties go to the old primary's zone, then to the lowest id. `target` restricts the
/// choice to one member (operator's request).
pub fn choose<'a>(
    inst: &Instance,
    seen: impl Fn(&str) -> Seen<'a>,
    rules: &Rules,
    target: Option<&str>,
) -> Result<String, NoCandidate> {
    let old_zone = inst.primary().and_then(|p| seen(&p.id).zone);
    let mut why = Vec::new();
    let mut best: Option<(&str, Position, bool)> = None;
    for m in inst.members.iter().filter(|m| m.role == Role::Replica) {
        if target.is_some_and(|t| t != m.id) {
            continue;
        }
        let s = seen(&m.id);
        let status = match s.status {
            Some(st) if s.node_alive => st,
            _ => {
                why.push(format!("{}: node not reporting", m.id));
                continue;
            }
        };
        if status.failed || status.held || status.container_state != "running" {
            why.push(format!(
                "{}: {} ({})",
                m.id, status.container_state, status.reason
            ));
            continue;
        }
        if status.failed_checks > 0 {
            why.push(format!("{}: not answering", m.id));
            continue;
        }
        match s.last_lag {
            Some(lag) if lag <= rules.max_lag => {}
            Some(lag) => {
                why.push(format!(
                    "{}: lag {lag} s over max_lag_on_failover {} s",
                    m.id, rules.max_lag
                ));
                continue;
            }
            None => {
                why.push(format!("{}: replication lag never observed", m.id));
                continue;
            }
        }
        let pos = Position::parse(&status.position);
        let same_zone = old_zone.is_some() && s.zone == old_zone;
        let better = match &best {
            None => true,
            Some((_, bp, bz)) => {
                let (a, b) = (pos.total(), bp.total());
                a > b || (a == b && same_zone && !bz)
            }
        };
        if better {
            best = Some((m.id.as_str(), pos, same_zone));
        }
    }
    match best {
        Some((id, _, _)) => Ok(id.to_owned()),
        None if why.is_empty() => Err(NoCandidate(vec![match target {
            Some(t) => format!("{t} is not a replica of this instance"),
            None => "the instance has no replicas".into(),
        }])),
        None => Err(NoCandidate(why)),
    }
}

/// The member to replace, if any: a replica whose node has been down for `replace_after`, or
/// that its agent reports failed (crash loop, cannot run there). Primaries are failed over
/// first and replaced as replicas afterwards.
pub fn lost_member<'a>(
    inst: &Instance,
    seen: impl Fn(&str) -> Seen<'a>,
    rules: &Rules,
) -> Option<(String, String)> {
    if inst.replacing.is_some() {
        return None;
    }
    inst.members
        .iter()
        .filter(|m| m.role == Role::Replica)
        .find_map(|m| {
            let s = seen(&m.id);
            if !s.node_alive {
                let silent = s.silent_for?;
                return (silent >= rules.replace_after).then(|| {
                    (
                        m.id.clone(),
                        format!("node {} down for {} s", m.node, silent.as_secs()),
                    )
                });
            }
            let st = s.status?;
            st.failed
                .then(|| (m.id.clone(), format!("failed on {}: {}", m.node, st.reason)))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Credentials, InstanceSpec, MemberRecord, Resources};
    use mofang_common::EngineKind;
    use std::collections::HashMap;

    fn inst() -> Instance {
        let spec = InstanceSpec {
            name: "db".into(),
            engine: EngineKind::Mariadb,
            version: "10.11".into(),
            replicas: 2,
            resources: Resources {
                cpu: 1.0,
                memory: 256,
                disk: 256,
            },
            disk_class: None,
            placement: None,
        };
        let m = |i: u32, node: &str, role| MemberRecord {
            id: format!("db-{i}"),
            node: node.into(),
            role,
        };
        Instance::new(
            spec,
            vec![
                m(0, "a", Role::Primary),
                m(1, "b", Role::Replica),
                m(2, "c", Role::Replica),
            ],
            Credentials {
                admin: "x".into(),
                repl: "x".into(),
                monitor: "x".into(),
                app: "x".into(),
            },
        )
    }

    fn status(member: &str, pos: &str, repl_ok: bool) -> MemberStatus {
        MemberStatus {
            member: member.into(),
            container_state: "running".into(),
            healthy: true,
            position: pos.into(),
            replication_ok: repl_ok,
            ..Default::default()
        }
    }

    struct World {
        alive: HashMap<&'static str, bool>,
        zone: HashMap<&'static str, &'static str>,
        st: HashMap<&'static str, MemberStatus>,
        lag: HashMap<&'static str, i64>,
        silent: Duration,
    }

    impl World {
        fn new() -> Self {
            let mut w = World {
                alive: HashMap::new(),
                zone: HashMap::from([("db-0", "z1"), ("db-1", "z2"), ("db-2", "z1")]),
                st: HashMap::new(),
                lag: HashMap::from([("db-1", 0), ("db-2", 0)]),
                silent: Duration::from_millis(100),
            };
            for m in ["db-0", "db-1", "db-2"] {
                w.alive.insert(m, true);
            }
            w.st.insert("db-0", status("db-0", "0-1-10", false));
            w.st.insert("db-1", status("db-1", "0-1-10", true));
            w.st.insert("db-2", status("db-2", "0-1-10", true));
            w
        }
        fn edit(&mut self, id: &str, f: impl FnOnce(&mut MemberStatus)) {
            if let Some(s) = self.st.get_mut(id) {
                f(s)
            }
        }
        fn seen(&self, id: &str) -> Seen<'_> {
            Seen {
                node_alive: self.alive[id],
                silent_for: Some(if self.alive[id] {
                    Duration::from_millis(100)
                } else {
                    self.silent
                }),
                lease_ttl: Duration::from_secs(10),
                zone: self.zone.get(id).copied(),
                status: self.st.get(id),
                last_lag: self.lag.get(id).copied(),
            }
        }
    }

    fn rules() -> Rules {
        Rules {
            failed_checks: 3,
            max_lag: 30,
            replace_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn healthy_primary_is_fine() {
        let w = World::new();
        assert_eq!(assess(&inst(), |m| w.seen(m), &rules()), Health::Fine);
    }

    #[test]
    fn held_or_unanswering_primary_fails_at_once() {
        let mut w = World::new();
        w.edit("db-0", |s| s.held = true);
        assert!(matches!(
            assess(&inst(), |m| w.seen(m), &rules()),
            Health::Failed { wait, .. } if wait == Duration::ZERO
        ));
        let mut w = World::new();
        w.edit("db-0", |s| s.failed_checks = 2);
        assert_eq!(assess(&inst(), |m| w.seen(m), &rules()), Health::Fine);
        w.edit("db-0", |s| s.failed_checks = 3);
        assert!(matches!(
            assess(&inst(), |m| w.seen(m), &rules()),
            Health::Failed { .. }
        ));
    }

    #[test]
    fn node_loss_needs_replicas_to_agree_and_waits_for_the_lease() {
        let mut w = World::new();
        w.alive.insert("db-0", false);
        w.silent = Duration::from_secs(6);
        // A replica still replicates: only the scheduler lost the node.
        assert!(matches!(
            assess(&inst(), |m| w.seen(m), &rules()),
            Health::NodeLostPrimaryAlive { .. }
        ));
        for r in ["db-1", "db-2"] {
            w.edit(r, |s| s.replication_ok = false);
        }
        assert_eq!(
            assess(&inst(), |m| w.seen(m), &rules()),
            Health::Failed {
                reason: "node of primary db-0 silent for 6000 ms and no replica reaches it".into(),
                wait: Duration::from_secs(4)
            }
        );
        w.silent = Duration::from_secs(11);
        assert!(matches!(
            assess(&inst(), |m| w.seen(m), &rules()),
            Health::Failed { wait, .. } if wait == Duration::ZERO
        ));
    }

    #[test]
    fn most_advanced_replica_wins_ties_go_to_the_old_zone() {
        let mut w = World::new();
        assert_eq!(
            choose(&inst(), |m| w.seen(m), &rules(), None).unwrap(),
            "db-2"
        );
        w.edit("db-1", |s| s.position = "0-1-11".into());
        assert_eq!(
            choose(&inst(), |m| w.seen(m), &rules(), None).unwrap(),
            "db-1"
        );
        // Lagging replicas are never promoted, however advanced.
        w.lag.insert("db-1", 31);
        assert_eq!(
            choose(&inst(), |m| w.seen(m), &rules(), None).unwrap(),
            "db-2"
        );
        w.alive.insert("db-2", false);
        let e = choose(&inst(), |m| w.seen(m), &rules(), None).unwrap_err();
        assert!(e.to_string().contains("lag 31 s"), "{e}");
        // An operator's target is honoured only if eligible.
        let w = World::new();
        assert_eq!(
            choose(&inst(), |m| w.seen(m), &rules(), Some("db-1")).unwrap(),
            "db-1"
        );
        assert!(choose(&inst(), |m| w.seen(m), &rules(), Some("db-0")).is_err());
    }

    #[test]
    fn replicas_are_replaced_after_replace_after_or_when_failed() {
        let mut w = World::new();
        assert_eq!(lost_member(&inst(), |m| w.seen(m), &rules()), None);
        w.alive.insert("db-2", false);
        w.silent = Duration::from_secs(59);
        assert_eq!(lost_member(&inst(), |m| w.seen(m), &rules()), None);
        w.silent = Duration::from_secs(61);
        assert_eq!(
            lost_member(&inst(), |m| w.seen(m), &rules()).map(|(m, _)| m),
            Some("db-2".into())
        );
        let mut w = World::new();
        w.edit("db-1", |s| s.failed = true);
        assert_eq!(
            lost_member(&inst(), |m| w.seen(m), &rules()).map(|(m, _)| m),
            Some("db-1".into())
        );
        // The primary is never "replaced": it fails over first.
        let mut w = World::new();
        w.alive.insert("db-0", false);
        w.silent = Duration::from_secs(600);
        assert_eq!(lost_member(&inst(), |m| w.seen(m), &rules()), None);
    }

    #[test]
    fn calm_members_on_live_nodes_need_nothing() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let rules = rules();
        for round in 0..500 {
            let mut w = World::new();
            for id in ["db-0", "db-1", "db-2"] {
                if rng.random_ratio(1, 4) {
                    w.st.remove(id); // not reported yet
                    continue;
                }
                w.edit(id, |s| {
                    s.healthy = rng.random();
                    s.replication_ok = rng.random();
                    s.container_state =
                        ["running", "starting", "exited"][rng.random_range(0..3)].into();
                    s.lag_seconds = rng.random_range(-1..100);
                    s.held = rng.random_ratio(1, 6);
                    s.failed = rng.random_ratio(1, 6);
                    s.failed_checks = if rng.random_ratio(1, 6) {
                        rng.random_range(1..5)
                    } else {
                        0
                    };
                });
            }
            let all_calm = w.st.values().all(calm);
            let health = assess(&inst(), |id| w.seen(id), &rules);
            let lost = lost_member(&inst(), |id| w.seen(id), &rules);
            if all_calm {
                assert_eq!((health, lost), (Health::Fine, None), "round {round}");
            }
        }
    }
}

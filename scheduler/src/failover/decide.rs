//! Failover decisions as pure functions of what the scheduler knows: is an instance's primary
//! failed, which replica takes over, which member must be replaced. No I/O, no clock: the
//! caller passes `now`, so every rule is unit-tested below.

use crate::model::Instance;
use mofang_common::position::Position;
use mofang_common::proto::MemberStatus;
use mofang_common::{ObservedRole, Role};
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
    /// The node was revoked and has not been heard from since: it is lost for good, even
    /// while its replicas still reach its primary (that primary is fenced by its own agent
    /// when the lease runs out, and will never be heard from again).
    pub node_revoked: bool,
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
            node_revoked: false,
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
    if let Some((id, _)) = witnesses
        .iter()
        .find(|(_, s)| s.replication_ok)
        .filter(|_| !ps.node_revoked)
    {
        return Health::NodeLostPrimaryAlive {
            reason: format!(
                "node of primary {} is silent, but replica {id} still replicates from it: no failover",
                p.id
            ),
        };
    }
    let silent = ps.silent_for.unwrap_or(Duration::MAX);
    // A revoked node's primary still runs and its replicas stay linked to it: its agent
    // fences it one lease after its last heartbeat; a second lease lets the replicas,
    // still replicating from the fenced primary, report their final positions (`choose`
    // then takes a linked replica as settled).
    let (why, wait) = if ps.node_revoked {
        (
            "and revoked",
            ps.lease_ttl.saturating_mul(2).saturating_sub(silent),
        )
    } else {
        (
            "and no replica reaches it",
            ps.lease_ttl.saturating_sub(silent),
        )
    };
    Health::Failed {
        reason: format!(
            "node of primary {} silent for {} ms {why}",
            p.id,
            silent.as_millis().min(u128::from(u64::MAX))
        ),
        wait,
    }
}

/// A member status that gives these rules nothing to act on: not held down, not failed,
/// answering its checks. An instance whose members are all calm, on nodes that heartbeat, with
/// no replacement under way, assesses [`Health::Fine`] with no [`lost_member`] (tested below),
/// so the scheduler's failover pass skips it.
pub fn calm(s: &MemberStatus) -> bool {
    !s.held && !s.failed && s.failed_checks == 0
}

/// Why no replica is promoted now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoPromotion {
    /// No replica is eligible (every reason listed).
    #[error("no replica can be promoted: {}", .0.join("; "))]
    NoCandidate(Vec<String>),
    /// A replica may still be receiving from the failed primary (its link is up, or it does
    /// not answer), so its position is not final: choosing now could pick a replica that
    /// lacks a write only this one has, which semi-sync acknowledged.
    #[error("replica {replica} may still be receiving from the failed primary ({why}): waiting for its final position, without a time bound (an operator who accepts the risk can fail over to a named replica)")]
    NotSettled {
        /// The replica.
        replica: String,
        /// Link up, or not answering.
        why: String,
    },
    /// The replica with the most advanced position cannot be promoted now; promoting another
    /// would lose what only it has.
    #[error("replica {replica} holds the most advanced position ({position}) but cannot be promoted now ({why}); promoting another would lose what only it has: waiting (an operator can fail over to a named replica)")]
    MostAdvancedUnfit {
        /// The replica.
        replica: String,
        /// Its last known position.
        position: String,
        /// Why it is not eligible.
        why: String,
    },
}

/// What a replica is chosen for: the rules differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The primary failed: positions must be final and the choice must cover every replica's.
    Failover,
    /// Planned: the primary is fenced at a position the new one reaches before opening.
    Switchover,
}

/// Why `s` cannot take over, or None when it can.
fn unfit(s: &Seen<'_>, rules: &Rules) -> Option<String> {
    let status = match s.status {
        Some(st) if s.node_alive => st,
        _ => return Some("node not reporting".into()),
    };
    if status.failed || status.held || status.container_state != "running" {
        return Some(format!("{} ({})", status.container_state, status.reason));
    }
    if status.failed_checks > 0 {
        return Some("not answering".into());
    }
    match s.last_lag {
        Some(lag) if lag <= rules.max_lag => None,
        Some(lag) => Some(format!(
            "lag {lag} s over max_lag_on_failover {} s",
            rules.max_lag
        )),
        None => Some("replication lag never observed".into()),
    }
}

/// Picks the replica to promote: alive, answering, lag within `max_lag`, the most advanced
/// position; ties go to the old primary's zone, then to the lowest id. `target` restricts the
/// choice to one member (operator's request: the operator takes responsibility, so the
/// failover rules below do not apply to a named target).
///
/// For [`Purpose::Failover`] two more rules keep every acknowledged write (semi-sync
/// acknowledges once *one* replica has received a write, so the replicas may differ):
/// - every replica on a live node must have settled: its link to the failed primary seen
///   down while it answers. Before that, its reported position may be older than what it
///   holds (reports are periodic; a replica under load may not answer its check).
/// - the chosen position must cover every replica's last known position, those on silent
///   nodes included; when the most advanced replica is not eligible, nobody is promoted.
pub fn choose<'a>(
    inst: &Instance,
    seen: impl Fn(&str) -> Seen<'a>,
    rules: &Rules,
    target: Option<&str>,
    purpose: Purpose,
) -> Result<String, NoPromotion> {
    let old_zone = inst.primary().and_then(|p| seen(&p.id).zone);
    let strict = purpose == Purpose::Failover && target.is_none();
    // A revoked node's primary was fenced by its agent (see `assess`): a replica still
    // linked to it has its final position.
    let primary_revoked = inst.primary().is_some_and(|p| seen(&p.id).node_revoked);
    let mut why = Vec::new();
    let mut best: Option<(&str, Position, bool)> = None;
    // Every replica's last known position, and why it is not eligible (strict rules only).
    let mut known: Vec<(&str, Position, &str, Option<String>)> = Vec::new();
    for m in inst.members.iter().filter(|m| m.role == Role::Replica) {
        if target.is_some_and(|t| t != m.id) {
            continue;
        }
        let s = seen(&m.id);
        let unfit = unfit(&s, rules);
        if strict {
            if let Some(st) = s.status {
                if s.node_alive && ((st.replication_ok && !primary_revoked) || st.failed_checks > 0)
                {
                    return Err(NoPromotion::NotSettled {
                        replica: m.id.clone(),
                        why: if st.failed_checks > 0 {
                            format!("{} failed checks", st.failed_checks)
                        } else {
                            "link up".into()
                        },
                    });
                }
                let pos = Position::parse(&st.position);
                known.push((m.id.as_str(), pos, st.position.as_str(), unfit.clone()));
            }
        }
        if let Some(w) = unfit {
            why.push(format!("{}: {w}", m.id));
            continue;
        }
        let Some(status) = s.status else { continue };
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
    if let Some((_, bp, _)) = &best {
        if let Some((id, _, raw, unfit)) = known.iter().find(|(_, p, _, _)| !bp.covers(p)) {
            return Err(NoPromotion::MostAdvancedUnfit {
                replica: (*id).to_owned(),
                position: (*raw).to_owned(),
                why: unfit
                    .clone()
                    .unwrap_or_else(|| "positions diverge: no replica covers every other".into()),
            });
        }
    }
    match best {
        Some((id, _, _)) => Ok(id.to_owned()),
        None if why.is_empty() => Err(NoPromotion::NoCandidate(vec![match target {
            Some(t) => format!("{t} is not a replica of this instance"),
            None => "the instance has no replicas".into(),
        }])),
        None => Err(NoPromotion::NoCandidate(why)),
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

/// No replica can take over: may the held primary come back as the primary at a newer
/// epoch (its agent restarts it on its own data)? Only when its node is alive and it is held
/// (its container died, its data is there), and only once this scheduler can know that no
/// replica can: every replica's node has reported since the scheduler began to lead, or it
/// has led for a `node_ttl` (a replica's node that has not reported by then is taken as
/// down). Just after a restart the replicas' nodes have not reported yet, and a dead
/// primary's node reporting first must not decide the failover for them (soak, session 10:
/// a scheduler restarted mid-failover re-elected the dead primary 0.2 s after it started,
/// before its replicas' nodes had registered).
pub fn may_reelect<'a>(
    primary: &Seen<'_>,
    replicas: impl IntoIterator<Item = Seen<'a>>,
    led_for: std::time::Duration,
    node_ttl: std::time::Duration,
) -> bool {
    let held = primary.node_alive && primary.status.is_some_and(|s| s.held && !s.failed);
    held && (led_for >= node_ttl || replicas.into_iter().all(|r| r.silent_for.is_some()))
}

/// May the new primary of the failover at `epoch` open, as far as the old primary `old` goes?
/// Only once the old one can acknowledge no write (decision 123): its container is not
/// running (dead, killed, removed), or it reports the new epoch applied without being a
/// primary (demoted, fenced, read-only), or its node has been silent for its lease (its
/// agent fences it when the lease runs out; a scheduler that just took charge counts the
/// silence from then). A frozen primary is neither: it is running, and its agent, alive,
/// renews its lease; it wakes when its agent kills it, or when the freeze ends. Before this
/// rule the new primary opened as soon as the failover was decided, and a frozen Redis primary
/// still being frozen (`docker pause` takes seconds on a saturated host) acknowledged writes
/// after it (soak: 8 and 10 writes lost, acknowledged up to 4.7 s after the pause began).
pub fn old_primary_gone(old: &Seen<'_>, epoch: u64, led_for: Duration) -> bool {
    if old.silent_for.unwrap_or(led_for) >= old.lease_ttl {
        return true;
    }
    let Some(s) = old.status else {
        return false;
    };
    if matches!(
        s.container_state.as_str(),
        "exited" | "missing" | "created" | "stopped"
    ) {
        return true;
    }
    s.epoch >= epoch
        && matches!(
            ObservedRole::parse(&s.role),
            Some(ObservedRole::Replica | ObservedRole::ReadOnly | ObservedRole::Fenced)
        )
}

#[cfg(test)]
mod tests {

    /// Decision 119: the new primary opens only once the old one can acknowledge nothing.
    #[test]
    fn the_new_primary_opens_only_once_the_old_one_is_gone() {
        use std::time::Duration;
        let status = |state: &str, role: ObservedRole, epoch| MemberStatus {
            container_state: state.into(),
            role: role.as_str().into(),
            epoch,
            ..Default::default()
        };
        let lease = Duration::from_secs(2);
        fn seen(s: Option<&MemberStatus>, silent: Option<u64>) -> Seen<'_> {
            Seen {
                node_alive: true,
                silent_for: silent.map(Duration::from_millis),
                lease_ttl: Duration::from_secs(2),
                status: s,
                ..Seen::nothing()
            }
        }
        let led = Duration::from_secs(60);
        // Frozen: running (or paused), not answering, its agent heartbeating.
        let frozen = status("paused", ObservedRole::Unknown, 4);
        assert!(!old_primary_gone(&seen(Some(&frozen), Some(100)), 5, led));
        let hung = status("running", ObservedRole::Unknown, 4);
        assert!(!old_primary_gone(&seen(Some(&hung), Some(100)), 5, led));
        // Still the open primary of the old epoch.
        let open = status("running", ObservedRole::Primary, 4);
        assert!(!old_primary_gone(&seen(Some(&open), Some(100)), 5, led));
        // Killed by its agent, or dead: gone.
        let dead = status("exited", ObservedRole::Unknown, 4);
        assert!(old_primary_gone(&seen(Some(&dead), Some(100)), 5, led));
        let missing = status("missing", ObservedRole::Unknown, 4);
        assert!(old_primary_gone(&seen(Some(&missing), Some(100)), 5, led));
        // Fenced or following at the new epoch: gone; at the old epoch: not yet.
        for r in [
            ObservedRole::Fenced,
            ObservedRole::Replica,
            ObservedRole::ReadOnly,
        ] {
            assert!(old_primary_gone(
                &seen(Some(&status("running", r, 5)), Some(100)),
                5,
                led
            ));
            assert!(!old_primary_gone(
                &seen(Some(&status("running", r, 4)), Some(100)),
                5,
                led
            ));
        }
        // Restarted and not answering yet at the new epoch: not yet.
        let starting = status("running", ObservedRole::Unknown, 5);
        assert!(!old_primary_gone(&seen(Some(&starting), Some(100)), 5, led));
        // Its node silent for its lease: its agent has fenced it.
        assert!(old_primary_gone(&seen(Some(&open), Some(2_000)), 5, led));
        assert!(!old_primary_gone(&seen(Some(&open), Some(1_999)), 5, led));
        // Never heard since this scheduler took charge: silent since then.
        assert!(!old_primary_gone(
            &seen(None, None),
            5,
            Duration::from_millis(500)
        ));
        assert!(old_primary_gone(&seen(None, None), 5, lease));
    }

    #[test]
    fn a_held_primary_is_reelected_only_once_its_replicas_could_have_reported() {
        use std::time::Duration;
        let held = MemberStatus {
            held: true,
            ..Default::default()
        };
        let primary = Seen {
            node_alive: true,
            silent_for: Some(Duration::from_millis(100)),
            status: Some(&held),
            ..Seen::nothing()
        };
        let heard = Seen {
            node_alive: false,
            silent_for: Some(Duration::from_secs(30)),
            ..Seen::nothing()
        };
        let ttl = Duration::from_secs(5);
        let just_started = Duration::from_millis(200);
        // A replica's node not heard since the scheduler began to lead: wait.
        assert!(!may_reelect(
            &primary,
            [heard, Seen::nothing()],
            just_started,
            ttl
        ));
        // Every replica's node reported (down or not): no replica can take over.
        assert!(may_reelect(&primary, [heard, heard], just_started, ttl));
        // Led for a node_ttl: a node that never reported is down.
        assert!(may_reelect(&primary, [Seen::nothing()], ttl, ttl));
        // Never a primary that is not held, or whose node is silent.
        let running = MemberStatus::default();
        let alive = Seen {
            status: Some(&running),
            ..primary
        };
        assert!(!may_reelect(&alive, [heard], ttl, ttl));
        let silent = Seen {
            node_alive: false,
            ..primary
        };
        assert!(!may_reelect(&silent, [heard], ttl, ttl));
    }
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
            labels: Default::default(),
            restore: None,
            tls: Default::default(),
            backup: None,
        };
        let m = |i: u32, node: &str, role| MemberRecord {
            id: format!("db-{i}"),
            node: node.into(),
            role,
            disk_class: "ssd".into(),
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
        revoked: Vec<&'static str>,
    }

    impl World {
        fn new() -> Self {
            let mut w = World {
                alive: HashMap::new(),
                zone: HashMap::from([("db-0", "z1"), ("db-1", "z2"), ("db-2", "z1")]),
                st: HashMap::new(),
                lag: HashMap::from([("db-1", 0), ("db-2", 0)]),
                silent: Duration::from_millis(100),
                revoked: Vec::new(),
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
                node_revoked: self.revoked.contains(&id),
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
    fn a_revoked_silent_node_is_lost_even_while_replicas_reach_its_primary() {
        let mut w = World::new();
        w.alive.insert("db-0", false);
        w.silent = Duration::from_secs(6);
        w.revoked.push("db-0");
        // Its replicas still replicate, but it will never be heard from again: fail over
        // once the lease has passed (its agent fences the primary by then).
        assert_eq!(
            assess(&inst(), |m| w.seen(m), &rules()),
            Health::Failed {
                reason: "node of primary db-0 silent for 6000 ms and revoked".into(),
                wait: Duration::from_secs(14)
            }
        );
        // Its replicas, still linked to the fenced primary, are settled (not so for a
        // node that is only silent: see the next test).
        assert!(choose(&inst(), |m| w.seen(m), &rules(), None, Purpose::Failover).is_ok());
        w.revoked.clear();
        assert!(matches!(
            choose(&inst(), |m| w.seen(m), &rules(), None, Purpose::Failover),
            Err(NoPromotion::NotSettled { .. })
        ));
        // Revoked but heartbeating again (a new certificate): judged as any live node.
        w.alive.insert("db-0", true);
        assert_eq!(assess(&inst(), |m| w.seen(m), &rules()), Health::Fine);
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
            choose(&inst(), |m| w.seen(m), &rules(), None, Purpose::Switchover).unwrap(),
            "db-2"
        );
        w.edit("db-1", |s| s.position = "0-1-11".into());
        assert_eq!(
            choose(&inst(), |m| w.seen(m), &rules(), None, Purpose::Switchover).unwrap(),
            "db-1"
        );
        // Lagging replicas are never promoted, however advanced.
        w.lag.insert("db-1", 31);
        assert_eq!(
            choose(&inst(), |m| w.seen(m), &rules(), None, Purpose::Switchover).unwrap(),
            "db-2"
        );
        w.alive.insert("db-2", false);
        let e = choose(&inst(), |m| w.seen(m), &rules(), None, Purpose::Switchover).unwrap_err();
        assert!(e.to_string().contains("lag 31 s"), "{e}");
        // An operator's target is honoured only if eligible.
        let w = World::new();
        assert_eq!(
            choose(
                &inst(),
                |m| w.seen(m),
                &rules(),
                Some("db-1"),
                Purpose::Switchover
            )
            .unwrap(),
            "db-1"
        );
        assert!(choose(
            &inst(),
            |m| w.seen(m),
            &rules(),
            Some("db-0"),
            Purpose::Switchover
        )
        .is_err());
    }

    /// The world right after the primary died: every replica saw its link go down.
    fn settled() -> World {
        let mut w = World::new();
        w.edit("db-0", |s| s.held = true);
        for r in ["db-1", "db-2"] {
            w.edit(r, |s| s.replication_ok = false);
        }
        w
    }

    fn failover_choice(w: &World) -> Result<String, NoPromotion> {
        choose(&inst(), |m| w.seen(m), &rules(), None, Purpose::Failover)
    }

    /// Defect 2 (docs/failover.md): a frozen primary's last two writes were acknowledged by
    /// db-1 alone; db-1's report still showed the older position (its link was still up),
    /// db-2's the same, and the tie went to db-2, which lacked them.
    #[test]
    fn failover_waits_until_every_replica_position_is_final() {
        let mut w = settled();
        w.edit("db-1", |s| s.replication_ok = true);
        assert!(matches!(
            failover_choice(&w),
            Err(NoPromotion::NotSettled { replica, .. }) if replica == "db-1"
        ));
        // A replica that does not answer may hold more than it last said.
        let mut w = settled();
        w.edit("db-1", |s| s.failed_checks = 1);
        assert!(matches!(
            failover_choice(&w),
            Err(NoPromotion::NotSettled { replica, .. }) if replica == "db-1"
        ));
        // Settled: the final positions decide, whatever the zones say.
        let mut w = settled();
        w.edit("db-1", |s| s.position = "0-1-12".into());
        assert_eq!(failover_choice(&w).unwrap(), "db-1");
    }

    #[test]
    fn failover_never_promotes_past_a_more_advanced_replica() {
        // db-1 holds the most writes, but its node went silent with the primary.
        let mut w = settled();
        w.edit("db-1", |s| s.position = "0-1-12".into());
        w.alive.insert("db-1", false);
        let e = failover_choice(&w).unwrap_err();
        assert!(
            matches!(&e, NoPromotion::MostAdvancedUnfit { replica, position, .. } if replica == "db-1" && position == "0-1-12"),
            "{e}"
        );
        // ... or it lags too far to be promoted.
        let mut w = settled();
        w.edit("db-1", |s| s.position = "0-1-12".into());
        w.lag.insert("db-1", 31);
        assert!(matches!(
            failover_choice(&w),
            Err(NoPromotion::MostAdvancedUnfit { .. })
        ));
        // Equal positions: either may be promoted, the less advanced never is.
        let mut w = settled();
        w.alive.insert("db-1", false);
        assert_eq!(failover_choice(&w).unwrap(), "db-2");
        // An operator naming a replica takes responsibility for what it lacks.
        let mut w = settled();
        w.edit("db-1", |s| s.position = "0-1-12".into());
        w.alive.insert("db-1", false);
        assert_eq!(
            choose(
                &inst(),
                |m| w.seen(m),
                &rules(),
                Some("db-2"),
                Purpose::Failover
            )
            .unwrap(),
            "db-2"
        );
    }

    /// Seeded property: whatever the statuses, a failover choice covers the last known
    /// position of every replica that reported one.
    #[test]
    fn failover_choice_covers_every_known_position() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        for round in 0..2000 {
            let mut w = settled();
            for id in ["db-1", "db-2"] {
                w.alive.insert(id, rng.random_ratio(4, 5));
                if rng.random_ratio(1, 4) {
                    w.lag.insert(id, rng.random_range(0..60));
                }
                w.edit(id, |s| {
                    s.position = format!("0-1-{}", rng.random_range(5..15));
                    s.replication_ok = rng.random_ratio(1, 5);
                    s.failed_checks = if rng.random_ratio(1, 5) { 1 } else { 0 };
                    s.held = rng.random_ratio(1, 10);
                });
            }
            if let Ok(id) = failover_choice(&w) {
                let chosen = Position::parse(&w.st[id.as_str()].position);
                for other in ["db-1", "db-2"] {
                    let p = Position::parse(&w.st[other].position);
                    assert!(
                        chosen.covers(&p),
                        "round {round}: {id} does not cover {other}"
                    );
                    assert!(
                        !w.st[other].replication_ok || !w.alive[other],
                        "round {round}"
                    );
                }
            }
        }
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

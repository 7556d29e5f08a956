//! One failover pass as a pure function: the instances to look at, what is known of their
//! members, and the clock's verdicts in; a [`Plan`] out (what to fail over, wait on, replace,
//! finish, and what is calm). The scheduler carries the plan out
//! ([`crate::cluster::Cluster::check_failovers`]); the rules for one instance are in
//! [`super::decide`]. No I/O, no clock.

use super::decide::{self, Health, Rules, Seen};
use crate::model::Instance;

/// What the pass does, by instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Fail over now: (instance, reason).
    pub fail_over: Vec<(String, String)>,
    /// The primary failed, but the lease wait is not over: (instance, reason, ms to wait).
    pub wait: Vec<(String, String, u128)>,
    /// The primary's node is lost but its replicas still see it: (instance, reason).
    pub witnessed: Vec<(String, String)>,
    /// Conditions reported earlier have cleared: forget them.
    pub cleared: Vec<Cleared>,
    /// Replace a lost replica: (instance, member, why).
    pub replace: Vec<(String, String, String)>,
    /// A replacement replicates: the lost member leaves (instance, lost, replacement).
    pub finish: Vec<(String, String, String)>,
    /// Nothing to do: the instance leaves the suspects.
    pub calm: Vec<String>,
    /// The mass-failure guard trips now: (instances failing, total, limit).
    pub mass_hold: Option<(usize, usize, usize)>,
}

/// An instance whose primary is fine again after a condition of it was reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleared {
    /// The instance.
    pub instance: String,
    /// A member is still lost: that its replacement could not be done stays reported (it
    /// is reported again only once the member is no longer lost and is lost anew).
    pub member_lost: bool,
}

/// The mass-failure guard's knobs.
#[derive(Debug, Clone, Copy)]
pub struct MassGuard {
    /// Share of all instances.
    pub share: f64,
    /// ... and at least this many.
    pub min: usize,
    /// The guard already holds (an operator has not resumed).
    pub holding: bool,
}

/// One instance as the pass sees it.
pub struct Candidate<'a> {
    /// The record.
    pub instance: &'a Instance,
    /// A failover, switchover or replacement of it is running, or a failover is in flight:
    /// the pass leaves it alone.
    pub busy: bool,
    /// A condition of it was reported by an event and not cleared yet.
    pub reported: bool,
}

/// Plans one pass over `candidates` (the suspects; an instance not among them is calm by
/// construction, see [`decide::calm`]). `total` counts every created instance, for the mass
/// guard. `seen(instance, member)` gives what is known of a member.
pub fn plan<'a, 'b>(
    candidates: impl IntoIterator<Item = Candidate<'a>>,
    seen: impl Fn(&Instance, &str) -> Seen<'b>,
    rules: &Rules,
    total: usize,
    guard: MassGuard,
) -> Plan {
    let mut p = Plan::default();
    for c in candidates {
        let i = c.instance;
        let name = i.spec.name.clone();
        if c.busy || i.fence_primary {
            continue; // an operation (or a switchover) is running
        }
        let seen_i = |m: &str| seen(i, m);
        let health = decide::assess(i, seen_i, rules);
        let lost = decide::lost_member(i, seen_i, rules);
        if health == Health::Fine && lost.is_none() && i.replacing.is_none() {
            p.calm.push(name.clone());
        }
        match health {
            Health::Fine if c.reported => p.cleared.push(Cleared {
                instance: name.clone(),
                member_lost: lost.is_some(),
            }),
            Health::Fine => {}
            Health::Failed { reason, wait } if wait.is_zero() => {
                p.fail_over.push((name.clone(), reason))
            }
            Health::Failed { reason, wait } => {
                p.wait.push((name.clone(), reason, wait.as_millis()))
            }
            Health::NodeLostPrimaryAlive { reason } => p.witnessed.push((name.clone(), reason)),
        }
        if let Some((member, why)) = lost {
            p.replace.push((name.clone(), member, why));
        }
        if let Some((lost, new)) = &i.replacing {
            let replicates = seen_i(new)
                .status
                .is_some_and(|s| s.healthy && s.replication_ok);
            if replicates {
                p.finish.push((name.clone(), lost.clone(), new.clone()));
            }
        }
    }
    // Mass-failure guard: many primaries failing at once is more likely the network or the
    // scheduler's own view than the databases; none fails over, an operator is asked.
    let limit = ((total as f64) * guard.share).floor() as usize;
    let limit = limit.max(guard.min);
    if p.fail_over.len() > limit || guard.holding {
        if !guard.holding {
            p.mass_hold = Some((p.fail_over.len(), total, limit));
        }
        p.fail_over.clear();
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Credentials, InstanceSpec, MemberRecord, Resources};
    use mofang_common::proto::MemberStatus;
    use mofang_common::{EngineKind, Role};
    use std::collections::HashMap;
    use std::time::Duration;

    fn inst(name: &str) -> Instance {
        let spec = InstanceSpec {
            name: name.into(),
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
        let m = |i: u32, role| MemberRecord {
            id: format!("{name}-{i}"),
            node: format!("n{i}"),
            role,
            disk_class: "ssd".into(),
        };
        let mut i = Instance::new(
            spec,
            vec![
                m(0, Role::Primary),
                m(1, Role::Replica),
                m(2, Role::Replica),
            ],
            Credentials {
                admin: "x".into(),
                repl: "x".into(),
                monitor: "x".into(),
                app: "x".into(),
            },
        );
        i.revision = 1;
        i
    }

    fn ok(member: &str) -> MemberStatus {
        MemberStatus {
            member: member.into(),
            container_state: "running".into(),
            healthy: true,
            replication_ok: !member.ends_with("-0"),
            ..Default::default()
        }
    }

    /// Statuses by member; every node alive unless listed in `dead`.
    struct World {
        st: HashMap<String, MemberStatus>,
        dead: Vec<String>,
    }

    impl World {
        fn new(instances: &[&Instance]) -> Self {
            let mut st = HashMap::new();
            for i in instances {
                for m in &i.members {
                    st.insert(m.id.clone(), ok(&m.id));
                }
            }
            World {
                st,
                dead: Vec::new(),
            }
        }
        fn hold(&mut self, member: &str) {
            if let Some(s) = self.st.get_mut(member) {
                s.held = true;
            }
        }
        fn seen(&self, _i: &Instance, m: &str) -> Seen<'_> {
            let alive = !self.dead.iter().any(|d| d == m);
            Seen {
                node_alive: alive,
                silent_for: Some(if alive {
                    Duration::from_millis(100)
                } else {
                    Duration::from_secs(120)
                }),
                lease_ttl: Duration::from_secs(10),
                zone: None,
                status: self.st.get(m),
                last_lag: Some(0),
                node_revoked: false,
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

    const GUARD: MassGuard = MassGuard {
        share: 0.5,
        min: 3,
        holding: false,
    };

    fn cand(i: &Instance) -> Candidate<'_> {
        Candidate {
            instance: i,
            busy: false,
            reported: false,
        }
    }

    #[test]
    fn healthy_instances_are_calm_and_failed_primaries_fail_over() {
        let (a, b) = (inst("a"), inst("b"));
        let mut w = World::new(&[&a, &b]);
        w.hold("b-0");
        let p = plan(
            [cand(&a), cand(&b)],
            |i, m| w.seen(i, m),
            &rules(),
            2,
            GUARD,
        );
        assert_eq!(p.calm, ["a"]);
        assert_eq!(p.fail_over.len(), 1);
        assert_eq!(p.fail_over[0].0, "b");
        assert_eq!(p.mass_hold, None);
    }

    #[test]
    fn busy_and_switching_instances_are_left_alone() {
        let (a, mut b) = (inst("a"), inst("b"));
        b.fence_primary = true;
        let mut w = World::new(&[&a, &b]);
        for id in ["a-0", "b-0"] {
            w.hold(id);
        }
        let busy = Candidate {
            busy: true,
            ..cand(&a)
        };
        let p = plan([busy, cand(&b)], |i, m| w.seen(i, m), &rules(), 2, GUARD);
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn a_cleared_condition_is_forgotten_once_and_a_lost_member_keeps_its_report() {
        let a = inst("a");
        for lost in [false, true] {
            let mut w = World::new(&[&a]);
            if lost {
                w.dead.push("a-2".into());
            }
            let reported = Candidate {
                reported: true,
                ..cand(&a)
            };
            let p = plan([reported], |i, m| w.seen(i, m), &rules(), 1, GUARD);
            let cleared = Cleared {
                instance: "a".into(),
                member_lost: lost,
            };
            assert_eq!(p.cleared, [cleared], "lost: {lost}");
            // Still replaced while lost; calm only when nothing is.
            assert_eq!(p.replace.len(), usize::from(lost), "{p:?}");
            assert_eq!(p.calm.is_empty(), lost, "{p:?}");
        }
    }

    #[test]
    fn lost_replicas_are_replaced_and_replacements_finished() {
        let mut a = inst("a");
        let mut w = World::new(&[&a]);
        w.dead.push("a-2".into());
        let p = plan([cand(&a)], |i, m| w.seen(i, m), &rules(), 1, GUARD);
        assert_eq!(p.replace.len(), 1);
        assert_eq!(
            (p.replace[0].0.as_str(), p.replace[0].1.as_str()),
            ("a", "a-2")
        );
        assert!(p.calm.is_empty());
        // The replacement a-3 replicates: the lost member leaves.
        a.members.push(MemberRecord {
            id: "a-3".into(),
            node: "n3".into(),
            role: Role::Replica,
            disk_class: "ssd".into(),
        });
        a.replacing = Some(("a-2".into(), "a-3".into()));
        w.st.insert("a-3".into(), ok("a-3"));
        let p = plan([cand(&a)], |i, m| w.seen(i, m), &rules(), 1, GUARD);
        assert_eq!(p.finish, [("a".into(), "a-2".into(), "a-3".into())]);
        assert!(p.replace.is_empty(), "one replacement at a time");
    }

    #[test]
    fn the_mass_guard_holds_every_failover_past_its_limit() {
        let all: Vec<Instance> = (0..8).map(|n| inst(&format!("i{n}"))).collect();
        let mut w = World::new(&all.iter().collect::<Vec<_>>());
        // 4 of 8 failing: at the limit (half), they fail over.
        for i in &all[..4] {
            w.hold(&format!("{}-0", i.spec.name));
        }
        let p = plan(
            all.iter().map(cand),
            |i, m| w.seen(i, m),
            &rules(),
            8,
            GUARD,
        );
        assert_eq!(p.fail_over.len(), 4);
        // 5 of 8: none does, and the guard trips once.
        w.hold("i4-0");
        let p = plan(
            all.iter().map(cand),
            |i, m| w.seen(i, m),
            &rules(),
            8,
            GUARD,
        );
        assert!(p.fail_over.is_empty());
        assert_eq!(p.mass_hold, Some((5, 8, 4)));
        // While it holds, nothing fails over, and it is not tripped again.
        let holding = MassGuard {
            holding: true,
            ..GUARD
        };
        let p = plan(
            all.iter().take(1).map(cand),
            |i, m| w.seen(i, m),
            &rules(),
            8,
            holding,
        );
        assert!(p.fail_over.is_empty() && p.mass_hold.is_none());
        // Small fleets: at least `min` may fail over at once.
        let p = plan(
            all.iter().take(3).map(cand),
            |i, m| w.seen(i, m),
            &rules(),
            3,
            GUARD,
        );
        assert_eq!(p.fail_over.len(), 3);
    }
}

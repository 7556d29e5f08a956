//! Reconcile's decisions as pure functions of the assignment, the member's local state and
//! what the runtime shows: the role an assignment asks for (parsed once), what to do with a
//! container that is not running, and what the role step must do. No I/O, no clock: the
//! caller passes `now_ms` and whether the scheduler's lease is valid. Unit-tested below.

use crate::engine::Target;
use crate::state::MemberState;
use mofang_common::proto::Assignment;
use mofang_common::rotation::{Account, RotationStep};
use mofang_common::Role;
use std::time::{Duration, Instant};

/// Restarts within [`CRASH_WINDOW_MS`] after which the agent stops restarting a member and
/// reports it failed (the scheduler replaces it).
pub const MAX_CRASH_RESTARTS: usize = 5;
/// The crash-loop window.
pub const CRASH_WINDOW_MS: i64 = 600_000;

/// The role an assignment asks for, parsed once from its strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DesiredRole {
    /// The writable member of the epoch.
    Primary {
        /// Switchover step 1: stop writes at this epoch.
        fence: bool,
        /// Switchover step 2: reach this position before opening.
        promote_after: Option<String>,
        /// Failover: the old primary may still acknowledge writes; do not open yet (keep
        /// replicating from it) until the scheduler clears this (decision 123).
        hold: bool,
    },
    /// Follows `primary`; None while the scheduler does not know the primary's address yet
    /// (the member is then kept exactly as it is).
    Replica {
        /// The primary's address.
        primary: Option<Target>,
    },
}

impl DesiredRole {
    /// Parses the assignment's role, fence, `promote_after` and `primary_address`.
    pub fn parse(a: &Assignment) -> Result<Self, String> {
        match Role::parse(&a.role) {
            Some(Role::Primary) => Ok(DesiredRole::Primary {
                fence: a.fence,
                promote_after: (!a.promote_after.is_empty()).then(|| a.promote_after.clone()),
                hold: a.hold_open,
            }),
            Some(Role::Replica) if a.primary_address.is_empty() => {
                Ok(DesiredRole::Replica { primary: None })
            }
            Some(Role::Replica) => Target::parse(&a.primary_address)
                .map(|t| DesiredRole::Replica { primary: Some(t) })
                .map_err(|_| {
                    format!(
                        "replica {} has no valid primary_address ('{}')",
                        a.member, a.primary_address
                    )
                }),
            None => Err(format!("unknown role '{}'", a.role)),
        }
    }

    /// `Primary` or `Replica`.
    pub fn role(&self) -> Role {
        match self {
            DesiredRole::Primary { .. } => Role::Primary,
            DesiredRole::Replica { .. } => Role::Replica,
        }
    }

    /// A replica whose primary's address is not known yet.
    pub fn waiting(&self) -> bool {
        matches!(self, DesiredRole::Replica { primary: None })
    }

    /// The primary to follow, for a replica that knows it.
    pub fn replica_of(&self) -> Option<&Target> {
        match self {
            DesiredRole::Replica { primary } => primary.as_ref(),
            DesiredRole::Primary { .. } => None,
        }
    }
}

/// What to do with a member whose container is not running (exited or never started).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnExit {
    /// A held primary while the scheduler can decide: keep it down and tell the scheduler at
    /// once; it decides (fail over, or this member again at a newer epoch).
    Hold,
    /// Restarted too often within the window: report it failed, do not restart.
    CrashLooping {
        /// First time: save `crash_looping`.
        newly: bool,
    },
    /// Start it again (the agent is the supervisor).
    Restart,
}

/// True when a primary with replicas has just died at the epoch it applied: it must be held
/// (recorded in `held_at_epoch`) whether or not a scheduler can decide now. Restarted by
/// itself it would reopen at its old epoch while a replica may be promoted, and MariaDB's
/// crash recovery as a primary would keep transactions no replica acknowledged (decision 14).
/// `exited`: it ran and stopped (a container only created is simply started).
pub fn newly_held(
    role: &DesiredRole,
    replicas: u32,
    epoch: u64,
    exited: bool,
    st: &MemberState,
) -> bool {
    role.role() == Role::Primary
        && replicas > 0
        && exited
        && st.applied_epoch == epoch
        && st.held_at_epoch.is_none()
}

/// Silent checks after which a deposed primary is killed ([`kill_deposed`]): with passes
/// requeued every 250 ms while it is silent, about half a second after the new epoch.
pub const DEPOSED_SILENT_CHECKS: u32 = 2;

/// A deposed primary that does not answer is killed (decision 74): its role was primary at an
/// older epoch, the scheduler now wants it a replica, and it has failed `failed_checks`
/// checks in this container (a frozen or hung server; one that answers is fenced instead).
/// Killing it cuts its clients at once (their requests fail and they reconnect to the new
/// primary, instead of waiting on a frozen server until their own timeout), and a process
/// that is gone cannot wake later and acknowledge a write on semi-sync's timeout. It
/// restarts as a replica, and its crash recovery as a replica drops what no replica
/// acknowledged. Safe for the data: the failover is decided and written before any agent
/// hears of the new epoch.
pub fn kill_deposed(role: &DesiredRole, epoch: u64, st: &MemberState, failed_checks: u32) -> bool {
    role.role() == Role::Replica
        && st.applied_role == Role::Primary.as_str()
        && st.applied_epoch < epoch
        && failed_checks >= DEPOSED_SILENT_CHECKS
}

/// Decides about a container that is not running, once [`newly_held`] is recorded in `st`.
/// A held primary stays down while the scheduler can decide (`lease_valid`); without one
/// nobody can, so it is restarted, and the role step keeps it read-only until a newer epoch.
/// Anything restarted more than [`MAX_CRASH_RESTARTS`] times in [`CRASH_WINDOW_MS`] stops.
pub fn on_exit(st: &MemberState, lease_valid: bool, now_ms: i64) -> OnExit {
    if st.held_at_epoch.is_some() && lease_valid {
        return OnExit::Hold;
    }
    if st.crash_looping {
        return OnExit::CrashLooping { newly: false };
    }
    let recent = st
        .crash_restarts_ms
        .iter()
        .filter(|t| now_ms - **t < CRASH_WINDOW_MS)
        .count();
    if recent >= MAX_CRASH_RESTARTS {
        return OnExit::CrashLooping { newly: true };
    }
    OnExit::Restart
}

/// A held primary is released by a newer epoch (the scheduler decided about it).
pub fn release_hold(st: &mut MemberState, epoch: u64) {
    if st.held_at_epoch.is_some_and(|e| epoch > e) {
        st.held_at_epoch = None;
    }
}

/// What the role step does for a member whose server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleStep {
    /// Follow the primary; `fence_first` when it was the primary of an older epoch (demoted:
    /// writes stop before it follows), `seed` when it needs a snapshot first.
    Follow {
        /// The primary.
        primary: Target,
        /// Demoted primary: fence before following.
        fence_first: bool,
        /// Fresh replica: copy a snapshot first.
        seed: bool,
    },
    /// Just started and not yet heard from the scheduler: change nothing on a guess.
    Wait,
    /// The new primary of a failover while the old one may still acknowledge writes: change
    /// nothing (it keeps replicating from the old primary, and takes no writes) until the
    /// scheduler lifts the hold.
    HoldOpen,
    /// Stop writes: the scheduler's lease ran out.
    FenceLeaseLost,
    /// Stop writes: restarted while held, without a scheduler.
    FenceHeld,
    /// Stop writes: switchover step 1.
    FenceForSwitchover,
    /// Open for writes at this epoch (promote first if it is not primary at it yet).
    Open {
        /// Position to reach first (switchover).
        after: Option<String>,
    },
    /// A replica whose primary is not known yet, or an assignment older than what the member
    /// applied: nothing.
    Ignore,
}

/// Decides the role step. `heard`: the agent has had a heartbeat acknowledged since it
/// started; `young`: it started less than a lease ago.
pub fn role_step(
    role: &DesiredRole,
    epoch: u64,
    st: &MemberState,
    lease_valid: bool,
    heard: bool,
    young: bool,
) -> RoleStep {
    if epoch < st.applied_epoch {
        return RoleStep::Ignore;
    }
    match role {
        DesiredRole::Replica { primary: None } => RoleStep::Ignore,
        DesiredRole::Replica {
            primary: Some(primary),
        } => RoleStep::Follow {
            primary: primary.clone(),
            fence_first: st.applied_role == Role::Primary.as_str() && st.applied_epoch < epoch,
            seed: st.needs_seed,
        },
        DesiredRole::Primary { .. } if !heard && young => RoleStep::Wait,
        // Not yet opened at this epoch: wait for the old primary to be gone. (One already
        // open at this epoch, should a hold come back after a scheduler restart, stays so.)
        DesiredRole::Primary { hold: true, .. }
            if !(st.applied_role == Role::Primary.as_str() && st.applied_epoch >= epoch) =>
        {
            RoleStep::HoldOpen
        }
        DesiredRole::Primary { .. } if !lease_valid => RoleStep::FenceLeaseLost,
        DesiredRole::Primary { .. } if st.held_at_epoch.is_some() => RoleStep::FenceHeld,
        DesiredRole::Primary { fence: true, .. } => RoleStep::FenceForSwitchover,
        DesiredRole::Primary { promote_after, .. } => RoleStep::Open {
            after: promote_after.clone(),
        },
    }
}

/// A member in good order is looked at again after this long.
pub const STEADY_LOOK: Duration = Duration::from_secs(1);

/// When to look at a member in good order again: after [`STEADY_LOOK`], but an open primary
/// no later than just after its lease runs out, so the fence (Redis: writes paused; MariaDB:
/// read-only) comes at `lease_ttl`, not up to a steady look later. Before, a partitioned Redis
/// primary acknowledged writes for up to `lease_ttl` + 1 s (soak: 2.9 s with a 2 s lease).
pub fn next_look(role: &DesiredRole, fenced: bool, lease_left: Option<Duration>) -> Duration {
    match (role, fenced, lease_left) {
        (DesiredRole::Primary { fence: false, .. }, false, Some(left)) => {
            STEADY_LOOK.min(left + Duration::from_millis(5))
        }
        _ => STEADY_LOOK,
    }
}

/// How often a member in good order gets a full pass when nothing changed (issue 19): its
/// position, lag, effective parameters, volume and certificate are looked at again, its
/// container inspected and its config rendered. In between it is only probed, at
/// [`next_look`]'s cadence.
pub const FULL_PASS_EVERY: Duration = Duration::from_secs(10);

/// What the last full pass left when it found the member in good order (reported healthy),
/// for deciding whether the next pass may be a probe.
#[derive(Debug, Clone, PartialEq)]
pub struct SettledView<'a> {
    /// The assignment that pass carried out.
    pub assignment: &'a Assignment,
    /// When it started.
    pub at: Instant,
    /// Whether a primary could take writes then ([`crate::link::Lease::writable`]).
    pub lease_writable: bool,
}

/// What the next pass of a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassKind {
    /// Every step, from the volume to the observation.
    Full,
    /// Only the liveness probe, compared with what the last full pass observed.
    Probe,
}

/// Whether a pass may be a probe: only after a full pass that found the member in good
/// order, for the same assignment (a new epoch, role, primary, generation, rotation or
/// setting is carried out at once), with no container event since (a container that died
/// is held or restarted at once, not a failed probe later), the lease's writability as it
/// was (an open primary is fenced by `lease_ttl - fence_budget`: decision 145), and less
/// than [`FULL_PASS_EVERY`] ago. Everything else, a member not in good order included, gets
/// a full pass as before. `now` is the caller's clock.
pub fn pass_kind(
    settled: Option<&SettledView<'_>>,
    a: &Assignment,
    now: Instant,
    container_event: bool,
    lease_writable: bool,
) -> PassKind {
    match settled {
        Some(s)
            if !container_event
                && s.assignment == a
                && s.lease_writable == lease_writable
                && now.saturating_duration_since(s.at) < FULL_PASS_EVERY =>
        {
            PassKind::Probe
        }
        _ => PassKind::Full,
    }
}

/// Whether a replica's follow step can be left out (issue 19 point 4): the last full pass in
/// this container asked it to follow the very same primary (address and TLS) and observed it
/// following that primary, replicating and read-only; it is not a demoted primary to fence
/// first, not waiting for a seed, and not fenced. `replicate_from` would change nothing then
/// but cost a session and three statements.
pub fn follow_in_order(
    followed: Option<&(String, Target)>,
    container: &str,
    primary: &Target,
    fence_first: bool,
    seed: bool,
    fenced: bool,
) -> bool {
    !fence_first
        && !seed
        && !fenced
        && followed.is_some_and(|(c, p)| c == container && p == primary)
}

/// A credential rotation step the assignment carries, parsed once.
#[derive(Clone, PartialEq, Eq)]
pub struct RotationOrder {
    /// The rotation (its start, unix ms).
    pub id: u64,
    /// The account whose password changes.
    pub account: Account,
    /// The step to carry out.
    pub step: RotationStep,
    /// The other password the member accepts during `add` and `switch` (never logged).
    pub other: String,
}

impl std::fmt::Debug for RotationOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RotationOrder({} {} {})",
            self.id, self.account, self.step
        )
    }
}

impl RotationOrder {
    /// The rotation the assignment carries; None when there is none, or it is malformed (an
    /// unknown account or step, or no other password where one is needed: nothing is done).
    pub fn parse(a: &Assignment) -> Option<Self> {
        let r = a.rotation.as_ref()?;
        let account = Account::parse(&r.account)?;
        let step = RotationStep::parse(&r.step)?;
        if step.both_accepted() && r.other_password.is_empty() {
            return None;
        }
        Some(RotationOrder {
            id: r.id,
            account,
            step,
            other: r.other_password.clone(),
        })
    }

    /// The passwords the member must accept for the account, the current one (`current`, the
    /// assignment's) first.
    pub fn accepted<'a>(&'a self, current: &'a str) -> Vec<&'a str> {
        if self.step.both_accepted() && self.other != current {
            vec![current, self.other.as_str()]
        } else {
            vec![current]
        }
    }

    /// True when this step needs replication to log in with the current password: a replica
    /// set up with the old `repl` password is pointed at its primary again with the new one.
    pub fn repoint_replication(&self, st: &MemberState) -> bool {
        self.account == Account::Repl
            && self.step >= RotationStep::Switch
            && st.repl_switched != Some(self.id)
    }

    /// What the member reports once it has carried the step out.
    pub fn done(&self) -> String {
        mofang_common::rotation::done(self.id, self.step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_primary_is_looked_at_again_when_its_lease_runs_out() {
        let open = primary();
        let left = |ms| Some(Duration::from_millis(ms));
        assert_eq!(
            next_look(&open, false, left(300)),
            Duration::from_millis(305)
        );
        assert_eq!(next_look(&open, false, left(5000)), STEADY_LOOK);
        // Lease gone (fenced next pass anyway), already fenced, or a replica: steady.
        assert_eq!(next_look(&open, false, None), STEADY_LOOK);
        assert_eq!(next_look(&open, true, left(300)), STEADY_LOOK);
        let replica = DesiredRole::Replica { primary: None };
        assert_eq!(next_look(&replica, false, left(300)), STEADY_LOOK);
    }

    /// Issue 19: a member in good order is only probed between full passes, and anything
    /// that changed brings the full pass at once.
    #[test]
    fn a_settled_member_is_probed_until_something_changes_or_a_full_pass_is_due() {
        let a = assignment("primary", "");
        let t0 = Instant::now();
        let settled = SettledView {
            assignment: &a,
            at: t0,
            lease_writable: true,
        };
        let soon = t0 + STEADY_LOOK;
        assert_eq!(pass_kind(None, &a, soon, false, true), PassKind::Full);
        assert_eq!(
            pass_kind(Some(&settled), &a, soon, false, true),
            PassKind::Probe
        );
        // A container event (it died, was paused, restarted): at once.
        assert_eq!(
            pass_kind(Some(&settled), &a, soon, true, true),
            PassKind::Full
        );
        // The lease stopped (or started) letting a primary take writes: fenced at once.
        assert_eq!(
            pass_kind(Some(&settled), &a, soon, false, false),
            PassKind::Full
        );
        // Any change of the assignment: a new epoch, a setting, a generation.
        let mut newer = a.clone();
        newer.epoch += 1;
        assert_eq!(
            pass_kind(Some(&settled), &newer, soon, false, true),
            PassKind::Full
        );
        let mut restart = a.clone();
        restart.restart_generation += 1;
        assert_eq!(
            pass_kind(Some(&settled), &restart, soon, false, true),
            PassKind::Full
        );
        // Due again after FULL_PASS_EVERY; a clock that went back never panics.
        assert_eq!(
            pass_kind(Some(&settled), &a, t0 + FULL_PASS_EVERY, false, true),
            PassKind::Full
        );
        let late = SettledView {
            at: soon,
            ..settled
        };
        assert_eq!(pass_kind(Some(&late), &a, t0, false, true), PassKind::Probe);
    }

    #[test]
    fn a_replica_observed_in_order_is_not_told_to_follow_again() {
        let p = Target::parse("10.0.0.9:3306").expect("target");
        let followed = ("c1".to_owned(), p.clone());
        assert!(follow_in_order(
            Some(&followed),
            "c1",
            &p,
            false,
            false,
            false
        ));
        assert!(
            !follow_in_order(None, "c1", &p, false, false, false),
            "never seen"
        );
        assert!(
            !follow_in_order(Some(&followed), "c2", &p, false, false, false),
            "another container"
        );
        let other = Target::parse("10.0.0.7:3306").expect("target");
        assert!(
            !follow_in_order(Some(&followed), "c1", &other, false, false, false),
            "a new primary"
        );
        let mut tls = p.clone();
        tls.tls = Some(crate::engine::ClientTls {
            ca_pem: "CA".into(),
            server_name: "db-1".into(),
        });
        assert!(
            !follow_in_order(Some(&followed), "c1", &tls, false, false, false),
            "replication over TLS from now on"
        );
        assert!(
            !follow_in_order(Some(&followed), "c1", &p, true, false, false),
            "demoted"
        );
        assert!(
            !follow_in_order(Some(&followed), "c1", &p, false, true, false),
            "seed"
        );
        assert!(
            !follow_in_order(Some(&followed), "c1", &p, false, false, true),
            "fenced"
        );
    }

    fn assignment(role: &str, primary: &str) -> Assignment {
        Assignment {
            member: "db-1".into(),
            role: role.into(),
            epoch: 3,
            primary_address: primary.into(),
            ..Default::default()
        }
    }

    fn primary() -> DesiredRole {
        DesiredRole::Primary {
            fence: false,
            promote_after: None,
            hold: false,
        }
    }

    fn state(epoch: u64, role: &str) -> MemberState {
        MemberState {
            applied_epoch: epoch,
            applied_role: role.into(),
            ..Default::default()
        }
    }

    const NOW: i64 = 10 * CRASH_WINDOW_MS;

    #[test]
    fn assignments_parse_once_into_a_role() {
        assert_eq!(
            DesiredRole::parse(&assignment("primary", "")).unwrap(),
            primary()
        );
        let r = DesiredRole::parse(&assignment("replica", "10.0.0.2:3306")).unwrap();
        assert_eq!(r.replica_of().map(|t| t.port), Some(3306));
        assert!(DesiredRole::parse(&assignment("replica", ""))
            .unwrap()
            .waiting());
        assert!(DesiredRole::parse(&assignment("replica", "x;y")).is_err());
        assert!(DesiredRole::parse(&assignment("leader", "")).is_err());
        let mut a = assignment("primary", "");
        a.fence = true;
        a.promote_after = "0-1-9".into();
        assert_eq!(
            DesiredRole::parse(&a).unwrap(),
            DesiredRole::Primary {
                fence: true,
                promote_after: Some("0-1-9".into()),
                hold: false,
            }
        );
    }

    #[test]
    fn a_dead_primary_with_replicas_is_held_while_the_scheduler_can_decide() {
        let st = state(3, "primary");
        assert!(newly_held(&primary(), 2, 3, true, &st));
        let held = MemberState {
            held_at_epoch: Some(3),
            ..st.clone()
        };
        assert_eq!(on_exit(&held, true, NOW), OnExit::Hold);
        // Already held: nothing new to record.
        assert!(!newly_held(&primary(), 2, 3, true, &held));
        // No scheduler to decide: restarted (the role step keeps it fenced, see below).
        assert_eq!(on_exit(&held, false, NOW), OnExit::Restart);
        assert_eq!(
            role_step(&primary(), 3, &held, true, true, false),
            RoleStep::FenceHeld
        );
        // A lone primary, a primary of an epoch it never applied, a replica, a container
        // only created: not held, restarted.
        assert!(!newly_held(&primary(), 0, 3, true, &st));
        assert!(!newly_held(&primary(), 2, 4, true, &st));
        let replica = DesiredRole::Replica { primary: None };
        assert!(!newly_held(&replica, 2, 3, true, &state(3, "replica")));
        assert!(!newly_held(&primary(), 2, 3, false, &st));
        assert_eq!(on_exit(&st, true, NOW), OnExit::Restart);
    }

    #[test]
    fn a_newer_epoch_releases_a_held_primary() {
        let mut st = MemberState {
            held_at_epoch: Some(3),
            ..state(3, "primary")
        };
        release_hold(&mut st, 3);
        assert_eq!(st.held_at_epoch, Some(3));
        release_hold(&mut st, 4);
        assert_eq!(st.held_at_epoch, None);
    }

    #[test]
    fn crash_loops_stop_after_five_restarts_in_ten_minutes() {
        let mut st = state(3, "replica");
        st.crash_restarts_ms = vec![NOW - 1000; MAX_CRASH_RESTARTS - 1];
        assert_eq!(on_exit(&st, true, NOW), OnExit::Restart);
        st.crash_restarts_ms.push(NOW - 10);
        assert_eq!(
            on_exit(&st, true, NOW),
            OnExit::CrashLooping { newly: true }
        );
        // Restarts older than the window do not count.
        st.crash_restarts_ms = vec![NOW - CRASH_WINDOW_MS - 1; 10];
        assert_eq!(on_exit(&st, true, NOW), OnExit::Restart);
        st.crash_looping = true;
        assert_eq!(
            on_exit(&st, true, NOW),
            OnExit::CrashLooping { newly: false }
        );
    }

    #[test]
    fn role_steps_follow_the_epoch_rule_and_the_lease() {
        let st = state(3, "primary");
        // Older assignments never act.
        assert_eq!(
            role_step(&primary(), 2, &st, true, true, false),
            RoleStep::Ignore
        );
        // Just started, nothing heard yet: no guess.
        assert_eq!(
            role_step(&primary(), 3, &st, false, false, true),
            RoleStep::Wait
        );
        assert_eq!(
            role_step(&primary(), 3, &st, false, true, false),
            RoleStep::FenceLeaseLost
        );
        let held = MemberState {
            held_at_epoch: Some(3),
            ..st.clone()
        };
        assert_eq!(
            role_step(&primary(), 3, &held, true, true, false),
            RoleStep::FenceHeld
        );
        let fence = DesiredRole::Primary {
            fence: true,
            promote_after: None,
            hold: false,
        };
        assert_eq!(
            role_step(&fence, 3, &st, true, true, false),
            RoleStep::FenceForSwitchover
        );
        let after = DesiredRole::Primary {
            fence: false,
            promote_after: Some("0-1-9".into()),
            hold: false,
        };
        assert_eq!(
            role_step(&after, 4, &state(3, "replica"), true, true, false),
            RoleStep::Open {
                after: Some("0-1-9".into())
            }
        );
        // A demoted primary is fenced before it follows; a replica is not.
        let r = DesiredRole::Replica {
            primary: Target::parse("10.0.0.3:3306").ok(),
        };
        assert!(matches!(
            role_step(&r, 4, &st, true, true, false),
            RoleStep::Follow {
                fence_first: true,
                ..
            }
        ));
        assert!(matches!(
            role_step(&r, 4, &state(3, "replica"), true, true, false),
            RoleStep::Follow {
                fence_first: false,
                ..
            }
        ));
        // A replica follows even without a lease: it takes no writes.
        assert!(matches!(
            role_step(&r, 4, &state(3, "replica"), false, true, false),
            RoleStep::Follow { .. }
        ));
    }

    fn rotating(step: &str, other: &str) -> Assignment {
        Assignment {
            rotation: Some(mofang_common::proto::CredentialRotation {
                id: 7,
                account: "repl".into(),
                step: step.into(),
                other_password: other.into(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_rotation_accepts_both_passwords_until_its_drop_step() {
        assert_eq!(RotationOrder::parse(&Assignment::default()), None);
        let add = RotationOrder::parse(&rotating("add", "NEW")).expect("add");
        assert_eq!(add.accepted("OLD"), ["OLD", "NEW"], "current one first");
        let switch = RotationOrder::parse(&rotating("switch", "OLD")).expect("switch");
        assert_eq!(switch.accepted("NEW"), ["NEW", "OLD"]);
        let drop = RotationOrder::parse(&rotating("drop", "")).expect("drop");
        assert_eq!(drop.accepted("NEW"), ["NEW"]);
        assert_eq!(drop.done(), "7:drop");
        // Nothing is done on an order the agent cannot read.
        assert_eq!(RotationOrder::parse(&rotating("add", "")), None);
        assert_eq!(RotationOrder::parse(&rotating("later", "X")), None);
        // Never printed with its password.
        assert!(!format!("{add:?}").contains("NEW"));
    }

    #[test]
    fn replication_is_repointed_once_per_rotation_from_the_switch_step() {
        let mut st = MemberState::default();
        let add = RotationOrder::parse(&rotating("add", "NEW")).expect("add");
        assert!(!add.repoint_replication(&st), "consumers keep the old one");
        let switch = RotationOrder::parse(&rotating("switch", "OLD")).expect("switch");
        assert!(switch.repoint_replication(&st));
        st.repl_switched = Some(7);
        assert!(!switch.repoint_replication(&st), "done once");
        st.repl_switched = Some(3);
        assert!(
            switch.repoint_replication(&st),
            "an earlier rotation's does not count"
        );
        let mut app = rotating("switch", "OLD");
        if let Some(r) = app.rotation.as_mut() {
            r.account = "app".into();
        }
        let app = RotationOrder::parse(&app).expect("app");
        assert!(!app.repoint_replication(&MemberState::default()));
    }

    /// Soak, Redis freeze (failover.md defect 9): the new primary opened while the frozen
    /// old one could still wake and acknowledge writes. Held, it changes nothing until the
    /// hold is lifted; one already open at the epoch stays open.
    #[test]
    fn a_held_new_primary_does_not_open_until_the_hold_is_lifted() {
        let held = DesiredRole::Primary {
            fence: false,
            promote_after: None,
            hold: true,
        };
        let mut a = assignment("primary", "");
        a.hold_open = true;
        assert_eq!(DesiredRole::parse(&a).unwrap(), held);
        let replica = state(3, "replica");
        assert_eq!(
            role_step(&held, 4, &replica, true, true, false),
            RoleStep::HoldOpen
        );
        assert_eq!(
            role_step(&primary(), 4, &replica, true, true, false),
            RoleStep::Open { after: None }
        );
        assert_eq!(
            role_step(&held, 4, &state(4, "primary"), true, true, false),
            RoleStep::Open { after: None }
        );
        // The lease and the epoch rule still come first.
        assert_eq!(
            role_step(&held, 3, &state(4, "replica"), true, true, false),
            RoleStep::Ignore
        );
    }

    #[test]
    fn only_a_silent_deposed_primary_is_killed() {
        let replica = DesiredRole::Replica { primary: None };
        let primary = DesiredRole::Primary {
            fence: false,
            promote_after: None,
            hold: false,
        };
        let was = |role: &str, epoch| MemberState {
            applied_role: role.into(),
            applied_epoch: epoch,
            ..MemberState::default()
        };
        let n = DEPOSED_SILENT_CHECKS;
        assert!(kill_deposed(&replica, 4, &was("primary", 3), n));
        assert!(
            !kill_deposed(&replica, 4, &was("primary", 3), n - 1),
            "not silent enough"
        );
        assert!(
            !kill_deposed(&primary, 3, &was("primary", 3), n + 5),
            "still the primary"
        );
        assert!(
            !kill_deposed(&replica, 4, &was("replica", 3), n + 5),
            "a replica is not deposed"
        );
        assert!(
            !kill_deposed(&replica, 4, &was("primary", 4), n + 5),
            "the role step already ran"
        );
    }
}

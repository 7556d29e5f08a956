//! Day-2 operations as durable objects (issue 17): what an operation is, its states and
//! steps, and the pure decision of its next step from the instance as observed now. The
//! cluster (`cluster/operations.rs`) stores each change before it acts and carries the
//! decisions out; nothing here does I/O.
//!
//! Built so far: `restart`, rolling. Replicas one at a time, each until it is back, healthy
//! and replicating; then a switchover to the most advanced replica; then the old primary, now
//! a replica. The plan is not fixed up front: each decision looks at the members as they are,
//! so a failover in the middle (a replica promoted, the old primary back as a replica) changes
//! what comes next and the primary is never restarted while it is the primary (but an
//! instance without replicas, whose only member is restarted in place).

pub mod batch;

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use utoipa::ToSchema;

/// How long one step may take before the operation fails: a member back and healthy after a
/// restart, or a switchover.
pub const STEP_TIMEOUT_MS: i64 = 300_000;
/// The default timeout of a whole operation.
pub const DEFAULT_TIMEOUT_MS: i64 = 3_600_000;

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Rolling restart: replicas first, then a switchover, then the old primary.
    Restart,
    /// Stop every member's container; volumes and reservations kept, no failover, no alert.
    Stop,
    /// Start a stopped instance again: the same members, the primary at the same epoch.
    Start,
    /// Rebuild one member in place: a replica's container and volume removed and seeded
    /// again from the primary; the primary is switched over first.
    Rebuild,
    /// The planned switchover, as an operation (to `member`, or the most advanced replica).
    Switchover,
}

/// Where an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OpState {
    /// Accepted, not started.
    Pending,
    /// Steps are being carried out.
    Running,
    /// Every step done.
    Succeeded,
    /// A step failed or the operation timed out; `reason` says which.
    Failed,
    /// Cancelled by an operator, at a safe point (no step half done).
    Cancelled,
}

impl OpState {
    /// Succeeded, failed or cancelled: nothing more happens.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            OpState::Succeeded | OpState::Failed | OpState::Cancelled
        )
    }
}

/// Where a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Under way.
    Running,
    /// Done.
    Done,
    /// Failed; `reason` says why.
    Failed,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum StepAction {
    /// Restart a member's container (its restart generation raised to `generation`).
    Restart {
        /// The member.
        member: String,
        /// The restart generation asked.
        generation: u64,
    },
    /// Switch the primary over to the most advanced replica.
    Switchover {
        /// The primary when the step began.
        from: String,
    },
    /// Rebuild a replica (its rebuild generation raised to `generation`).
    Rebuild {
        /// The member.
        member: String,
        /// The rebuild generation asked.
        generation: u64,
    },
    /// Mark the instance stopped: every container stops.
    Stop,
    /// Mark the instance started: every container starts.
    Start,
}

/// One step of an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OpStep {
    /// What it does.
    #[serde(flatten)]
    pub action: StepAction,
    /// Where it is.
    pub state: StepState,
    /// When it began (unix ms).
    pub started_ms: i64,
    /// When it ended (unix ms; 0 while running).
    pub ended_ms: i64,
    /// Why it failed, or what it is waiting for.
    #[serde(default)]
    pub reason: String,
}

/// A day-2 operation on one instance, stored as it goes (`operation/<id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Operation {
    /// `op-<ms>-<hex>`.
    pub id: String,
    /// The instance.
    pub instance: String,
    /// What it does.
    #[serde(rename = "type")]
    pub kind: OpKind,
    /// Where it is.
    pub state: OpState,
    /// Created (unix ms).
    pub created_ms: i64,
    /// Ended (unix ms; 0 until then).
    #[serde(default)]
    pub ended_ms: i64,
    /// The whole operation fails after this long (ms).
    pub timeout_ms: i64,
    /// Why it failed or was cancelled.
    #[serde(default)]
    pub reason: String,
    /// An operator asked to cancel: it stops at the next safe point.
    #[serde(default)]
    pub cancel_requested: bool,
    /// Who asked (token name).
    #[serde(default)]
    pub requested_by: String,
    /// Steps carried out so far, oldest first.
    #[serde(default)]
    pub steps: Vec<OpStep>,
    /// Members restarted so far.
    #[serde(default)]
    pub done: BTreeSet<String>,
    /// Members the instance had when the operation began (progress: done of these).
    #[serde(default)]
    pub total: usize,
    /// The member a `rebuild` is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
}

impl Operation {
    /// The step under way, if any.
    pub fn running_step(&self) -> Option<&OpStep> {
        self.steps.last().filter(|s| s.state == StepState::Running)
    }
}

/// A member as the decision sees it: its desired role, the restart asked of it and the one
/// its agent reports done, and what it observes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberNow {
    /// Member id.
    pub id: String,
    /// Desired role is primary.
    pub primary: bool,
    /// Restart generation asked of it.
    pub asked: u64,
    /// Restart generation its agent reports carried out.
    pub done: u64,
    /// Rebuild generation asked of it.
    pub rebuild_asked: u64,
    /// Rebuild generation its agent reports carried out.
    pub rebuild_done: u64,
    /// Reported healthy in its desired role at the instance's epoch.
    pub healthy: bool,
    /// A replica that replicates (always true for the primary).
    pub replicating: bool,
    /// Its container runs.
    pub running: bool,
}

impl MemberNow {
    fn whole(&self) -> bool {
        self.healthy && (self.primary || self.replicating)
    }
}

/// The next thing to do for an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Nothing now; look again soon. The text says what it waits for.
    Wait(String),
    /// Begin restarting `member` at restart generation `generation`.
    Restart {
        /// The member.
        member: String,
        /// Its next restart generation.
        generation: u64,
    },
    /// Begin rebuilding `member` at rebuild generation `generation`.
    Rebuild {
        /// The member.
        member: String,
        /// Its next rebuild generation.
        generation: u64,
    },
    /// Begin a switchover away from `from`.
    Switchover {
        /// The primary now.
        from: String,
    },
    /// Run the switchover step that was under way again (a new leader found it running and
    /// `from` still the primary).
    RetrySwitchover {
        /// The primary now.
        from: String,
    },
    /// Begin stopping the instance (every member).
    Stop,
    /// Begin starting the stopped instance.
    Start,
    /// The step under way is done.
    StepDone,
    /// The step under way failed: the operation fails with the reason.
    StepFailed(String),
    /// Every member restarted: the operation succeeded.
    Succeed,
    /// Cancelled at a safe point.
    Cancel,
    /// Timed out (the reason says after how long).
    Fail(String),
}

/// The next thing to do for `op` given the members as they are now. Pure: the caller stores
/// the outcome before acting on it.
pub fn next(op: &Operation, members: &[MemberNow], now_ms: i64) -> Next {
    if op.state.is_terminal() {
        return Next::Wait("finished".into());
    }
    if now_ms - op.created_ms > op.timeout_ms {
        return Next::Fail(format!(
            "timed out after {} s (timeout {} s)",
            (now_ms - op.created_ms) / 1000,
            op.timeout_ms / 1000
        ));
    }
    let find = |id: &str| members.iter().find(|m| m.id == id);
    if let Some(step) = op.running_step() {
        let overdue = now_ms - step.started_ms > STEP_TIMEOUT_MS;
        return match &step.action {
            StepAction::Restart { member, generation } => match find(member) {
                None => Next::StepFailed(format!("{member} left the instance while restarting")),
                Some(m) if m.done >= *generation && m.whole() => Next::StepDone,
                Some(m) if overdue => Next::StepFailed(format!(
                    "{member} not back within {} s after its restart (restarted: {}, healthy: {}, replicating: {})",
                    STEP_TIMEOUT_MS / 1000,
                    m.done >= *generation,
                    m.healthy,
                    m.replicating
                )),
                Some(_) => Next::Wait(format!("{member} restarting")),
            },
            StepAction::Rebuild { member, generation } => match find(member) {
                None => Next::StepFailed(format!("{member} left the instance while rebuilding")),
                Some(m) if m.rebuild_done >= *generation && m.whole() => Next::StepDone,
                Some(m) if overdue => Next::StepFailed(format!(
                    "{member} not seeded and replicating within {} s of its rebuild (rebuilt: {}, healthy: {}, replicating: {})",
                    STEP_TIMEOUT_MS / 1000,
                    m.rebuild_done >= *generation,
                    m.healthy,
                    m.replicating
                )),
                Some(_) => Next::Wait(format!("{member} rebuilding")),
            },
            StepAction::Stop => match members.iter().find(|m| m.running) {
                None => Next::StepDone,
                Some(m) if overdue => Next::StepFailed(format!(
                    "{} still running {} s after the stop",
                    m.id,
                    STEP_TIMEOUT_MS / 1000
                )),
                Some(m) => Next::Wait(format!("{} stopping", m.id)),
            },
            StepAction::Start => match members.iter().find(|m| !m.whole()) {
                None => Next::StepDone,
                Some(m) if overdue => Next::StepFailed(format!(
                    "{} not healthy and replicating {} s after the start",
                    m.id,
                    STEP_TIMEOUT_MS / 1000
                )),
                Some(m) => Next::Wait(format!("{} starting", m.id)),
            },
            StepAction::Switchover { from } => {
                if members.iter().any(|m| m.primary && &m.id != from) {
                    Next::StepDone
                } else if overdue {
                    Next::StepFailed(format!(
                        "the switchover away from {from} did not complete within {} s",
                        STEP_TIMEOUT_MS / 1000
                    ))
                } else {
                    Next::RetrySwitchover { from: from.clone() }
                }
            }
        };
    }
    // A safe point: no step half done.
    if op.cancel_requested {
        return Next::Cancel;
    }
    match op.kind {
        OpKind::Restart => next_restart(op, members),
        OpKind::Rebuild => next_rebuild(op, members),
        OpKind::Switchover if !op.steps.is_empty() => Next::Succeed,
        OpKind::Switchover => match members.iter().find(|m| m.primary) {
            Some(p) if members.len() > 1 => Next::Switchover { from: p.id.clone() },
            Some(p) => Next::Fail(format!(
                "{} is the only member: no replica to switch to",
                p.id
            )),
            None => Next::Wait("the instance has no primary".into()),
        },
        OpKind::Stop | OpKind::Start if !op.steps.is_empty() => Next::Succeed,
        OpKind::Stop => Next::Stop,
        OpKind::Start => Next::Start,
    }
}

/// The rebuild's next step (no step under way, not cancelled): the target is rebuilt while
/// a replica; a primary target is switched over first. Every other member must be whole
/// (the target may be the broken one).
fn next_rebuild(op: &Operation, members: &[MemberNow]) -> Next {
    let Some(target) = op.member.as_deref() else {
        return Next::Fail("a rebuild names no member".into());
    };
    if op.done.contains(target) {
        return Next::Succeed;
    }
    let Some(t) = members.iter().find(|m| m.id == target) else {
        return Next::Fail(format!("{target} is not a member of the instance"));
    };
    if let Some(m) = members.iter().find(|m| m.id != target && !m.whole()) {
        return Next::Wait(format!(
            "{} is not healthy and replicating: every other member must be before the rebuild",
            m.id
        ));
    }
    if t.primary {
        return if members.len() > 1 {
            Next::Switchover {
                from: target.to_owned(),
            }
        } else {
            Next::Fail(format!(
                "{target} is the only member: there is nothing to seed it from"
            ))
        };
    }
    Next::Rebuild {
        member: target.to_owned(),
        generation: t.rebuild_asked.max(t.rebuild_done) + 1,
    }
}

/// The rolling restart's next step (no step under way, not cancelled).
fn next_restart(op: &Operation, members: &[MemberNow]) -> Next {
    if let Some(m) = members.iter().find(|m| !m.whole()) {
        return Next::Wait(format!(
            "{} is not healthy{}: every member must be before the next step",
            m.id,
            if m.healthy { " and replicating" } else { "" }
        ));
    }
    let todo = |m: &&MemberNow| !op.done.contains(&m.id);
    if let Some(r) = members.iter().filter(|m| !m.primary).find(todo) {
        return Next::Restart {
            member: r.id.clone(),
            generation: r.asked.max(r.done) + 1,
        };
    }
    match members.iter().find(|m| m.primary) {
        Some(p) if todo(&p) => {
            if members.iter().any(|m| !m.primary) {
                Next::Switchover { from: p.id.clone() }
            } else {
                // No replica to hand the writes to: restarted in place (a short outage).
                Next::Restart {
                    member: p.id.clone(),
                    generation: p.asked.max(p.done) + 1,
                }
            }
        }
        Some(_) => Next::Succeed,
        None => Next::Wait("the instance has no primary".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op() -> Operation {
        Operation {
            id: "op-1".into(),
            instance: "db".into(),
            kind: OpKind::Restart,
            state: OpState::Running,
            created_ms: 0,
            ended_ms: 0,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            reason: String::new(),
            cancel_requested: false,
            requested_by: "t".into(),
            steps: Vec::new(),
            done: BTreeSet::new(),
            total: 3,
            member: None,
        }
    }

    fn m(id: &str, primary: bool, asked: u64, done: u64) -> MemberNow {
        MemberNow {
            id: id.into(),
            primary,
            asked,
            done,
            healthy: true,
            replicating: true,
            running: true,
            rebuild_asked: 0,
            rebuild_done: 0,
        }
    }

    /// Applies a decision the way the cluster does (step begun, done), for walking a plan.
    fn apply(op: &mut Operation, n: &Next, now: i64) {
        let step = |action| OpStep {
            action,
            state: StepState::Running,
            started_ms: now,
            ended_ms: 0,
            reason: String::new(),
        };
        match n {
            Next::Restart { member, generation } => op.steps.push(step(StepAction::Restart {
                member: member.clone(),
                generation: *generation,
            })),
            Next::Switchover { from } => op
                .steps
                .push(step(StepAction::Switchover { from: from.clone() })),
            Next::Rebuild { member, generation } => op.steps.push(step(StepAction::Rebuild {
                member: member.clone(),
                generation: *generation,
            })),
            Next::Stop => op.steps.push(step(StepAction::Stop)),
            Next::Start => op.steps.push(step(StepAction::Start)),
            Next::StepDone => {
                let s = op.steps.last_mut().expect("a step");
                s.state = StepState::Done;
                if let StepAction::Restart { member, .. } | StepAction::Rebuild { member, .. } =
                    &s.action
                {
                    op.done.insert(member.clone());
                }
            }
            _ => {}
        }
    }

    #[test]
    fn replicas_first_then_a_switchover_then_the_old_primary() {
        let mut op = op();
        let mut ms = vec![
            m("db-0", true, 0, 0),
            m("db-1", false, 0, 0),
            m("db-2", false, 0, 0),
        ];
        let mut seen = Vec::new();
        for now in 1..20 {
            let n = next(&op, &ms, now);
            match &n {
                Next::Restart { member, generation } => {
                    seen.push(format!("restart {member}"));
                    let m = ms.iter_mut().find(|m| &m.id == member).expect("member");
                    m.asked = *generation;
                    // The agent restarts it; it comes back.
                    m.done = *generation;
                }
                Next::Switchover { from } => {
                    seen.push(format!("switchover from {from}"));
                    // The switchover promotes db-1.
                    for m in &mut ms {
                        m.primary = m.id == "db-1";
                    }
                }
                Next::Succeed => {
                    seen.push("succeed".into());
                    break;
                }
                Next::StepDone => {}
                other => panic!("unexpected {other:?}"),
            }
            apply(&mut op, &n, now);
        }
        assert_eq!(
            seen,
            [
                "restart db-1",
                "restart db-2",
                "switchover from db-0",
                "restart db-0",
                "succeed"
            ]
        );
    }

    #[test]
    fn a_restart_is_done_only_when_the_member_is_back_whole() {
        let mut op = op();
        let mut ms = vec![m("db-0", true, 0, 0), m("db-1", false, 0, 0)];
        let n = next(&op, &ms, 1);
        assert_eq!(
            n,
            Next::Restart {
                member: "db-1".into(),
                generation: 1
            }
        );
        apply(&mut op, &n, 1);
        ms[1].asked = 1;
        assert!(
            matches!(next(&op, &ms, 2), Next::Wait(_)),
            "not restarted yet"
        );
        ms[1].done = 1;
        ms[1].replicating = false;
        assert!(
            matches!(next(&op, &ms, 3), Next::Wait(_)),
            "not replicating yet"
        );
        ms[1].replicating = true;
        assert_eq!(next(&op, &ms, 4), Next::StepDone);
        // Overdue: the step fails, naming what is missing.
        ms[1].healthy = false;
        match next(&op, &ms, STEP_TIMEOUT_MS + 2) {
            Next::StepFailed(r) => {
                assert!(r.contains("db-1") && r.contains("healthy: false"), "{r}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_primary_is_never_restarted_while_it_has_replicas() {
        let mut op = op();
        op.done = ["db-1".to_owned(), "db-2".to_owned()].into();
        let ms = vec![
            m("db-0", true, 0, 0),
            m("db-1", false, 1, 1),
            m("db-2", false, 1, 1),
        ];
        assert_eq!(
            next(&op, &ms, 1),
            Next::Switchover {
                from: "db-0".into()
            }
        );
        // Alone, it is restarted in place.
        let alone = vec![m("db-0", true, 4, 4)];
        assert_eq!(
            next(&self::op(), &alone, 1),
            Next::Restart {
                member: "db-0".into(),
                generation: 5
            }
        );
    }

    #[test]
    fn a_failover_mid_operation_changes_what_comes_next() {
        // db-1 was restarted; then db-0 died and db-1 was promoted by a failover; db-0 came
        // back as a replica. Next: db-2 (a replica, not restarted), then db-0 (now a replica,
        // not restarted), and db-1, the primary, is already done: no switchover needed.
        let mut op = op();
        op.done = ["db-1".to_owned()].into();
        let ms = vec![
            m("db-0", false, 0, 0),
            m("db-1", true, 1, 1),
            m("db-2", false, 0, 0),
        ];
        assert_eq!(
            next(&op, &ms, 1),
            Next::Restart {
                member: "db-0".into(),
                generation: 1
            }
        );
        op.done.insert("db-0".into());
        op.done.insert("db-2".into());
        assert_eq!(next(&op, &ms, 2), Next::Succeed);
    }

    #[test]
    fn nothing_begins_while_a_member_is_unhealthy() {
        let op = op();
        let mut ms = vec![m("db-0", true, 0, 0), m("db-1", false, 0, 0)];
        ms[1].replicating = false;
        match next(&op, &ms, 1) {
            Next::Wait(why) => assert!(why.contains("db-1"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cancel_waits_for_the_running_step_then_stops() {
        let mut op = op();
        let ms = vec![m("db-0", true, 0, 0), m("db-1", false, 1, 0)];
        apply(
            &mut op,
            &Next::Restart {
                member: "db-1".into(),
                generation: 1,
            },
            1,
        );
        op.cancel_requested = true;
        assert!(
            matches!(next(&op, &ms, 2), Next::Wait(_)),
            "mid-step: no cancel"
        );
        let back = vec![m("db-0", true, 0, 0), m("db-1", false, 1, 1)];
        assert_eq!(next(&op, &back, 3), Next::StepDone);
        apply(&mut op, &Next::StepDone, 3);
        assert_eq!(next(&op, &back, 4), Next::Cancel);
    }

    #[test]
    fn a_switchover_found_running_is_done_once_the_primary_moved_else_run_again() {
        let mut op = op();
        apply(
            &mut op,
            &Next::Switchover {
                from: "db-0".into(),
            },
            1,
        );
        let before = vec![m("db-0", true, 0, 0), m("db-1", false, 1, 1)];
        assert_eq!(
            next(&op, &before, 2),
            Next::RetrySwitchover {
                from: "db-0".into()
            }
        );
        let after = vec![m("db-0", false, 0, 0), m("db-1", true, 1, 1)];
        assert_eq!(next(&op, &after, 2), Next::StepDone);
    }

    #[test]
    fn an_operation_past_its_timeout_fails() {
        let mut op = op();
        op.timeout_ms = 1000;
        let ms = vec![m("db-0", true, 0, 0)];
        assert!(matches!(next(&op, &ms, 1001), Next::Fail(r) if r.contains("timed out")));
    }

    #[test]
    fn stop_ends_when_no_container_runs_and_start_when_every_member_is_whole() {
        let mut stop = op();
        stop.kind = OpKind::Stop;
        let mut ms = vec![m("db-0", true, 0, 0), m("db-1", false, 0, 0)];
        assert_eq!(next(&stop, &ms, 1), Next::Stop);
        apply(&mut stop, &Next::Stop, 1);
        assert!(matches!(next(&stop, &ms, 2), Next::Wait(w) if w.contains("db-0")));
        for m in &mut ms {
            m.running = false;
            m.healthy = false;
        }
        assert_eq!(next(&stop, &ms, 3), Next::StepDone);
        apply(&mut stop, &Next::StepDone, 3);
        assert_eq!(next(&stop, &ms, 4), Next::Succeed);

        let mut start = op();
        start.kind = OpKind::Start;
        assert_eq!(next(&start, &ms, 1), Next::Start);
        apply(&mut start, &Next::Start, 1);
        ms[0].running = true;
        ms[0].healthy = true;
        assert!(matches!(next(&start, &ms, 2), Next::Wait(w) if w.contains("db-1")));
        ms[1].running = true;
        ms[1].healthy = true;
        assert_eq!(next(&start, &ms, 3), Next::StepDone);
        match next(
            &start,
            &[m("db-0", true, 0, 0), {
                let mut r = m("db-1", false, 0, 0);
                r.replicating = false;
                r
            }],
            STEP_TIMEOUT_MS + 5,
        ) {
            Next::StepFailed(r) => assert!(r.contains("db-1"), "{r}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_rebuild_of_the_primary_switches_over_first_and_waits_for_the_seed() {
        let mut op = op();
        op.kind = OpKind::Rebuild;
        op.member = Some("db-0".into());
        let mut ms = vec![m("db-0", true, 0, 0), m("db-1", false, 0, 0)];
        // The target may be broken; the others must be whole.
        ms[0].healthy = false;
        assert_eq!(
            next(&op, &ms, 1),
            Next::Switchover {
                from: "db-0".into()
            }
        );
        let n = next(&op, &ms, 1);
        apply(&mut op, &n, 1);
        for m in &mut ms {
            m.primary = m.id == "db-1";
        }
        assert_eq!(next(&op, &ms, 2), Next::StepDone);
        apply(&mut op, &Next::StepDone, 2);
        let n = next(&op, &ms, 3);
        assert_eq!(
            n,
            Next::Rebuild {
                member: "db-0".into(),
                generation: 1
            }
        );
        apply(&mut op, &n, 3);
        ms[0].rebuild_asked = 1;
        ms[0].rebuild_done = 1;
        assert!(matches!(next(&op, &ms, 4), Next::Wait(_)), "not seeded yet");
        ms[0].healthy = true;
        assert_eq!(next(&op, &ms, 5), Next::StepDone);
        apply(&mut op, &Next::StepDone, 5);
        assert_eq!(next(&op, &ms, 6), Next::Succeed);
        // A lone member cannot be rebuilt: nothing to seed it from.
        let mut lone = self::op();
        lone.kind = OpKind::Rebuild;
        lone.member = Some("db-0".into());
        assert!(matches!(
            next(&lone, &[m("db-0", true, 0, 0)], 1),
            Next::Fail(_)
        ));
    }

    #[test]
    fn a_switchover_operation_is_one_step() {
        let mut op = op();
        op.kind = OpKind::Switchover;
        let ms = vec![m("db-0", true, 0, 0), m("db-1", false, 0, 0)];
        let n = next(&op, &ms, 1);
        assert_eq!(
            n,
            Next::Switchover {
                from: "db-0".into()
            }
        );
        apply(&mut op, &n, 1);
        let moved = vec![m("db-0", false, 0, 0), m("db-1", true, 0, 0)];
        assert_eq!(next(&op, &moved, 2), Next::StepDone);
        apply(&mut op, &Next::StepDone, 2);
        assert_eq!(next(&op, &moved, 3), Next::Succeed);
        assert!(matches!(
            next(
                &self::op_of(OpKind::Switchover),
                &[m("db-0", true, 0, 0)],
                1
            ),
            Next::Fail(_)
        ));
    }

    fn op_of(kind: OpKind) -> Operation {
        let mut o = op();
        o.kind = kind;
        o
    }

    #[test]
    fn operations_round_trip_as_stored() {
        let mut op = op();
        apply(
            &mut op,
            &Next::Restart {
                member: "db-1".into(),
                generation: 2,
            },
            5,
        );
        let json = serde_json::to_string(&op).expect("json");
        assert!(json.contains(r#""type":"restart""#), "{json}");
        assert!(json.contains(r#""action":"restart""#), "{json}");
        let back: Operation = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, op);
    }
}

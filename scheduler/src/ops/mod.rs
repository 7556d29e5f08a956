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
pub mod drift;

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
    /// Horizontal scaling to `replicas`: new replicas placed and seeded one at a time (from a
    /// healthy replica where the engine allows), or the most-lagging replicas removed one at
    /// a time; never the primary.
    Scale,
    /// Vertical scaling to `resources` (cpu, memory): the record and reservations first,
    /// CPU applied live, then a rolling restart for memory (the restart's order).
    Resize,
    /// Engine parameters (`settings`): dynamic ones applied live on every member, then a
    /// rolling restart when one needs a restart.
    Reconfigure,
    /// Volume expansion to `disk` MiB per member: reservations grown, every agent grows its
    /// member's volume (ledger and quota) in place, no restart.
    Expand,
    /// Engine upgrade to `version` (the next rung of the ladder): the record's version
    /// first, then the rolling restart's order (replicas, switchover, old primary), each
    /// member recreated on the new version's image and its data upgraded before the next.
    Upgrade,
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
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
    /// Rebuild a replica (its rebuild generation raised to `generation`), where it is or on
    /// `node` (its reservation moved there by the same record write).
    Rebuild {
        /// The member.
        member: String,
        /// The rebuild generation asked.
        generation: u64,
        /// The node the member moves to; none: rebuilt where it is.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        /// The disk class of its volume there (with `node`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disk_class: Option<String>,
        /// The backup of the instance its new volume is filled from (MariaDB, a physical
        /// copy, as a new replica's: decision 164); none, or gone: copied from a replica.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backup: Option<String>,
    },
    /// Mark the instance stopped: every container stops.
    Stop,
    /// Mark the instance started: every container starts.
    Start,
    /// A new replica placed on `node` (its reservation booked), seeded from `donor` (a
    /// healthy replica) or, with none, from the primary.
    AddReplica {
        /// The new member.
        member: String,
        /// Its node.
        node: String,
        /// The disk class its volume is on.
        disk_class: String,
        /// The replica it copies its first snapshot from (MariaDB); none: the primary.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        donor: Option<String>,
        /// The backup of the instance its volume is filled from instead (MariaDB, a
        /// physical copy; decision 164); the donor is then only the fallback.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backup: Option<String>,
    },
    /// A replica removed: it leaves the record (reservation released); its agent removes the
    /// container and the volume.
    RemoveReplica {
        /// The member.
        member: String,
    },
    /// The instance's resources set in the record (reservations re-booked); done when every
    /// member's container has the new CPU limit (applied live).
    SetResources {
        /// CPU cores.
        cpu: f64,
        /// Memory, MiB.
        memory: u64,
    },
    /// The instance's parameters set in the record at `generation`; done when every member
    /// reports it applied (dynamic ones live, all in its rendered config).
    SetParameters {
        /// The parameters generation.
        generation: u64,
    },
    /// The instance's disk set in the record (reservations grown); done when every member
    /// reports its volume at that size.
    SetDisk {
        /// Disk per member, MiB.
        disk: u64,
    },
    /// The instance's engine version set in the record: members move to it at their restart
    /// step, new members start on it. Done at once.
    SetVersion {
        /// The version (`11.8`).
        version: String,
        /// The version before.
        from: String,
    },
}

/// One step of an operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
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
    /// `rebuild`: the node the member moves to (none: rebuilt where it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// `scale`: the replica count asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// `resize`: the resources asked (disk unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<crate::model::Resources>,
    /// `resize`: the memory (MiB) when the operation began; a changed memory needs the
    /// rolling restart, a CPU change alone does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_memory: Option<u64>,
    /// `reconfigure`: the parameters asked, checked against the catalogue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<std::collections::BTreeMap<String, String>>,
    /// `reconfigure`: a parameter asked needs a restart (a rolling restart follows).
    #[serde(default)]
    pub restart_needed: bool,
    /// `upgrade`: the version asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// A `restart` started by a change of the instance's `tls`: the mode it rolls out. The
    /// operation is stored first and carries the mode; the record takes it right after, from
    /// the request or, if the scheduler stopped in between, from the operation before its
    /// first step (decision 110). Absent for every other operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "required")]
    pub tls: Option<mofang_common::DbTls>,
}

/// What an operation request carries beside its type (each type reads its own).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpArgs {
    /// `rebuild`, `switchover`: the member.
    pub member: Option<String>,
    /// `rebuild`: the node the member moves to (none: rebuilt where it is).
    pub node: Option<String>,
    /// `scale`: the replica count.
    pub replicas: Option<u32>,
    /// `resize`: CPU cores.
    pub cpu: Option<f64>,
    /// `resize`: memory, MiB.
    pub memory: Option<u64>,
    /// `reconfigure`: parameter values.
    pub settings: Option<std::collections::BTreeMap<String, String>>,
    /// `expand`: disk per member, MiB.
    pub disk: Option<u64>,
    /// `upgrade`: the engine version.
    pub version: Option<String>,
}

impl Operation {
    /// The step under way, if any.
    pub fn running_step(&self) -> Option<&OpStep> {
        self.steps.last().filter(|s| s.state == StepState::Running)
    }
}

/// A member as the decision sees it: its desired role, the restart asked of it and the one
/// its agent reports done, and what it observes.
#[derive(Debug, Clone, PartialEq)]
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
    /// CPU limit of its container as reported (0: unknown).
    pub cpu: f64,
    /// Memory limit of its container as reported, MiB (0: unknown).
    pub memory_mib: u64,
    /// Replication lag in seconds (-1: unknown).
    pub lag_seconds: i64,
    /// Its replication position's total progress ([`mofang_common::position::Position::total`]).
    pub position: u128,
    /// The parameters generation it reports applied.
    pub params_done: u64,
    /// Its volume's reservation as its agent reports it, MiB (0: unknown).
    pub volume_mib: u64,
    /// The engine version its server runs with its data upgraded (empty: unknown).
    pub version: String,
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
    /// Add the replica `member`, seeded from `donor` (none: the primary). Placed by the
    /// caller.
    AddReplica {
        /// The new member's id.
        member: String,
        /// The healthy replica it copies from.
        donor: Option<String>,
    },
    /// Remove the replica `member`.
    RemoveReplica {
        /// The member.
        member: String,
    },
    /// Set the resources asked in the record.
    SetResources,
    /// Set the parameters asked in the record (the caller gives the next generation).
    SetParameters,
    /// Set the disk asked in the record.
    SetDisk,
    /// Set the version asked in the record.
    SetVersion,
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

/// The `tls` mode a running operation must still write into its instance's record before it
/// takes any step: the one it carries, when the record has another and no step began yet
/// (decision 110). `None` once written, and for every operation that carries none.
pub fn tls_to_write(op: &Operation, record: mofang_common::DbTls) -> Option<mofang_common::DbTls> {
    op.tls
        .filter(|to| *to != record && op.steps.is_empty() && op.state == OpState::Running)
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
                Some(m) if m.done >= *generation && m.whole() && restart_took(op, m) => {
                    Next::StepDone
                }
                Some(m) if overdue => Next::StepFailed(format!(
                    "{member} not back within {} s after its restart (restarted: {}, healthy: {}, replicating: {}{})",
                    STEP_TIMEOUT_MS / 1000,
                    m.done >= *generation,
                    m.healthy,
                    m.replicating,
                    match &op.version {
                        Some(v) if op.kind == OpKind::Upgrade => format!(", on {v}: {}", m.version == *v),
                        _ => String::new(),
                    }
                )),
                Some(_) => Next::Wait(format!("{member} restarting")),
            },
            StepAction::Rebuild {
                member, generation, ..
            } => match find(member) {
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
            StepAction::AddReplica { member, .. } => match find(member) {
                Some(m) if m.whole() => Next::StepDone,
                Some(m) if overdue => Next::StepFailed(format!(
                    "{member} not seeded and replicating within {} s of its placement (running: {}, healthy: {}, replicating: {})",
                    STEP_TIMEOUT_MS / 1000,
                    m.running,
                    m.healthy,
                    m.replicating
                )),
                Some(_) => Next::Wait(format!("{member} being seeded")),
                // Not in the record yet: the caller writes it (asked again after a leader
                // change), then it appears.
                None => Next::Wait(format!("{member} being placed")),
            },
            StepAction::RemoveReplica { member } => match find(member) {
                None => Next::StepDone,
                Some(_) => Next::Wait(format!("{member} leaving the instance")),
            },
            StepAction::SetResources { cpu, .. } => {
                // Docker keeps a CFS quota: compared to a thousandth of a core, as the agent reports it.
                match members.iter().find(|m| (m.cpu - cpu).abs() > 1e-3) {
                    None => Next::StepDone,
                    Some(m) if overdue => Next::StepFailed(format!(
                        "{}'s container has {} cores, not {cpu}, {} s after the resize",
                        m.id,
                        m.cpu,
                        STEP_TIMEOUT_MS / 1000
                    )),
                    Some(m) => Next::Wait(format!("{} taking its new CPU limit", m.id)),
                }
            }
            StepAction::SetParameters { generation } => {
                match members.iter().find(|m| m.params_done < *generation) {
                    None => Next::StepDone,
                    Some(m) if overdue => Next::StepFailed(format!(
                        "{} has not applied the parameters {} s after the reconfigure",
                        m.id,
                        STEP_TIMEOUT_MS / 1000
                    )),
                    Some(m) => Next::Wait(format!("{} applying the parameters", m.id)),
                }
            }
            StepAction::SetDisk { disk } => {
                match members.iter().find(|m| m.volume_mib < *disk) {
                    None => Next::StepDone,
                    Some(m) if overdue => Next::StepFailed(format!(
                        "{}'s volume is {} MiB, not {disk} MiB, {} s after the expand (its node's disk may lack room: see the member's reason)",
                        m.id,
                        m.volume_mib,
                        STEP_TIMEOUT_MS / 1000
                    )),
                    Some(m) => Next::Wait(format!("{}'s volume growing", m.id)),
                }
            }
            StepAction::SetVersion { .. } => Next::StepDone,
            StepAction::Switchover { from } => {
                if members.iter().any(|m| m.primary && &m.id != from) {
                    Next::StepDone
                } else if overdue {
                    Next::StepFailed(format!(
                        "the switchover away from {from} did not complete within {} s",
                        STEP_TIMEOUT_MS / 1000
                    ))
                } else if let Some(m) = members.iter().find(|m| !m.whole()) {
                    // Run again only on a whole instance: a new leader sees no member healthy
                    // until its agent reports again (and a primary fenced by the cut-short
                    // switchover until the fence is lifted), and a switchover refused for
                    // that would fail the operation (decision 106).
                    Next::Wait(format!(
                        "{} is not healthy and replicating: the switchover runs again once every member is",
                        m.id
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
        OpKind::Restart => next_restart(op, members, now_ms),
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
        OpKind::Scale => next_scale(op, members),
        OpKind::Expand if !op.steps.is_empty() => Next::Succeed,
        OpKind::Expand => match members.iter().find(|m| !m.whole()) {
            Some(m) => Next::Wait(format!("{} is not healthy and replicating", m.id)),
            None => Next::SetDisk,
        },
        OpKind::Resize => {
            if op.steps.is_empty() {
                return match members.iter().find(|m| !m.whole()) {
                    Some(m) => Next::Wait(format!("{} is not healthy and replicating", m.id)),
                    None => Next::SetResources,
                };
            }
            // CPU went live with the record; memory needs each server restarted (its
            // buffers are sized from it), in the rolling restart's order.
            let memory_changed = match (op.from_memory, op.resources) {
                (Some(from), Some(to)) => from != to.memory,
                _ => false,
            };
            if memory_changed {
                next_restart(op, members, now_ms)
            } else {
                Next::Succeed
            }
        }
        OpKind::Upgrade => {
            if op.steps.is_empty() {
                return match members.iter().find(|m| !m.whole()) {
                    Some(m) => Next::Wait(format!("{} is not healthy and replicating", m.id)),
                    None => Next::SetVersion,
                };
            }
            next_restart(op, members, now_ms)
        }
        OpKind::Reconfigure => {
            if op.steps.is_empty() {
                return match members.iter().find(|m| !m.whole()) {
                    Some(m) => Next::Wait(format!("{} is not healthy and replicating", m.id)),
                    None => Next::SetParameters,
                };
            }
            if op.restart_needed {
                next_restart(op, members, now_ms)
            } else {
                Next::Succeed
            }
        }
    }
}

/// A restart step of a `resize` is done only once the member's container has the new memory
/// limit, of an `upgrade` once the member runs the new version with its data upgraded (other
/// operations: always).
fn restart_took(op: &Operation, m: &MemberNow) -> bool {
    match (op.kind, op.resources, &op.version) {
        (OpKind::Resize, Some(r), _) => m.memory_mib == r.memory,
        (OpKind::Upgrade, _, Some(v)) => m.version == *v,
        _ => true,
    }
}

/// Why each member's node cannot take `inst` resized to `new` (empty: every node can): the
/// node's free CPU and memory, counting the member's own current reservation as free.
pub fn resize_refusals(
    inst: &crate::model::Instance,
    views: &[crate::placement::NodeView<'_>],
    new: crate::model::Resources,
) -> Vec<String> {
    let old = inst.spec.resources;
    let mut out = Vec::new();
    for m in &inst.members {
        let Some(v) = views.iter().find(|v| v.node.name == m.node) else {
            out.push(format!("{} (of {}): not a known node", m.node, m.id));
            continue;
        };
        let free_cpu = (v.node.cpu - v.reserved_cpu + old.cpu).max(0.0);
        if free_cpu + 1e-9 < new.cpu {
            out.push(format!(
                "{} (of {}): cpu {} free, {} asked",
                m.node,
                m.id,
                (free_cpu * 1000.0).round() / 1000.0,
                new.cpu
            ));
        }
        let free_mib =
            ((v.node.memory_bytes >> 20) + old.memory).saturating_sub(v.reserved_memory_mib);
        if free_mib < new.memory {
            out.push(format!(
                "{} (of {}): memory {free_mib} MiB free, {} MiB asked",
                m.node, m.id, new.memory
            ));
        }
    }
    out
}

/// Why each member's node cannot grow the member's volume to `disk` MiB (empty: every node
/// can): the free MiB of the member's disk class, counting its current reservation as free.
pub fn expand_refusals(
    inst: &crate::model::Instance,
    views: &[crate::placement::NodeView<'_>],
    class_of: impl Fn(&crate::model::MemberRecord) -> String,
    disk: u64,
) -> Vec<String> {
    let old = inst.spec.resources.disk;
    let mut out = Vec::new();
    for m in &inst.members {
        let Some(v) = views.iter().find(|v| v.node.name == m.node) else {
            out.push(format!("{} (of {}): not a known node", m.node, m.id));
            continue;
        };
        let class = class_of(m);
        let capacity: u64 = v
            .node
            .disks
            .iter()
            .filter(|d| d.class == class)
            .fold(0u64, |s, d| s.saturating_add(d.capacity_bytes))
            >> 20;
        let reserved = v.reserved_disk_mib.get(&class).copied().unwrap_or(0);
        let free = (capacity + old).saturating_sub(reserved);
        if free < disk {
            out.push(format!(
                "{} (of {}): disk ({class}) {free} MiB free, {disk} MiB asked",
                m.node, m.id
            ));
        }
    }
    out
}

/// The id of a new member: `<instance>-<ordinal>`, the ordinal one past the highest in use.
pub fn new_member_id(instance: &str, members: &[MemberNow]) -> String {
    let ordinal = members
        .iter()
        .filter_map(|m| m.id.rsplit_once('-')?.1.parse::<u32>().ok())
        .max()
        .map_or(0, |n| n + 1);
    format!("{instance}-{ordinal}")
}

/// The replica to remove first: one not whole, else the most lagging (largest lag, then the
/// least advanced position), ties to the newest (highest ordinal). Never the primary.
pub fn most_lagging(members: &[MemberNow]) -> Option<&MemberNow> {
    let ordinal = |m: &MemberNow| {
        m.id.rsplit_once('-')
            .and_then(|(_, n)| n.parse::<u32>().ok())
            .unwrap_or(0)
    };
    members.iter().filter(|m| !m.primary).max_by(|a, b| {
        (!a.whole())
            .cmp(&!b.whole())
            .then(a.lag_seconds.cmp(&b.lag_seconds))
            .then(b.position.cmp(&a.position))
            .then(ordinal(a).cmp(&ordinal(b)))
    })
}

/// The replica a new one copies from: the most advanced whole replica; none (the primary)
/// when there is no whole replica.
pub fn seed_donor(members: &[MemberNow]) -> Option<&MemberNow> {
    members
        .iter()
        .filter(|m| !m.primary && m.whole())
        .max_by(|a, b| {
            b.lag_seconds
                .max(0)
                .cmp(&a.lag_seconds.max(0))
                .then(a.position.cmp(&b.position))
        })
}

/// Where a new replica's first copy comes from, in words: a backup (a physical copy), a
/// replica (a logical copy), or the primary.
pub fn seeded_from(donor: Option<&str>, backup: Option<&str>) -> String {
    match (backup, donor) {
        (Some(b), _) => format!("backup {b}"),
        (None, Some(d)) => d.to_owned(),
        (None, None) => "the primary".to_owned(),
    }
}

/// The backup a new MariaDB replica of `inst` is seeded from (decision 164): the latest
/// succeeded backup of this instance, of its engine and version (data files are not
/// portable across versions), with one data object, a GTID position to replicate from, and
/// no failed verification. None: the replica is copied from a replica instead. Whether the
/// repository still holds it and its key is checked by the caller.
pub fn seed_backup<'a>(
    backups: &'a [crate::backup::Backup],
    inst: &crate::model::Instance,
) -> Option<&'a crate::backup::Backup> {
    if inst.spec.engine != mofang_common::EngineKind::Mariadb {
        return None;
    }
    backups
        .iter()
        .filter(|b| {
            b.instance == inst.spec.name
                && b.state == crate::backup::BackupState::Succeeded
                && b.engine == inst.spec.engine.to_string()
                && b.version == inst.spec.version
                && b.objects.len() == 1
                && !b.consistent_at.gtid.is_empty()
                && b.verify_ok != Some(false)
        })
        .max_by(|a, b| a.ended_at_ms.cmp(&b.ended_at_ms).then(a.id.cmp(&b.id)))
}

/// The scale's next step (no step under way, not cancelled): one replica added or removed at
/// a time, each on a whole instance.
fn next_scale(op: &Operation, members: &[MemberNow]) -> Next {
    let Some(target) = op.replicas else {
        return Next::Fail("a scale names no replica count".into());
    };
    if let Some(m) = members.iter().find(|m| !m.whole()) {
        return Next::Wait(format!(
            "{} is not healthy and replicating: every member must be before the next step",
            m.id
        ));
    }
    let now = members.iter().filter(|m| !m.primary).count();
    let target = target as usize;
    if now < target {
        Next::AddReplica {
            member: new_member_id(&op.instance, members),
            donor: seed_donor(members).map(|m| m.id.clone()),
        }
    } else if now > target {
        match most_lagging(members) {
            Some(m) => Next::RemoveReplica {
                member: m.id.clone(),
            },
            None => Next::Fail("no replica to remove".into()),
        }
    } else {
        Next::Succeed
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

/// How long a rolling operation waits, after its last replica step, for a replica to catch
/// up with the primary before it switches over regardless.
pub const CATCH_UP_WAIT_MS: i64 = 30_000;

/// The rolling restart's next step (no step under way, not cancelled).
fn next_restart(op: &Operation, members: &[MemberNow], now_ms: i64) -> Next {
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
                // The switchover fences the primary and waits for its target to replay up
                // to the fence: a replica just restarted (on a new version, a starved CPU)
                // may still be replaying what it missed, and the writes would wait for that
                // too. So hand over once a replica has caught up, or after CATCH_UP_WAIT_MS
                // in any case (the switchover's own catch-up then bounds it, as before).
                let caught_up =
                    |m: &MemberNow| !m.primary && (m.lag_seconds == 0 || m.position >= p.position);
                let since = op
                    .steps
                    .last()
                    .map_or(op.created_ms, |s| s.ended_ms.max(s.started_ms));
                if !members.iter().any(caught_up) && now_ms - since < CATCH_UP_WAIT_MS {
                    return Next::Wait(format!(
                        "no replica has caught up with {} yet: the switchover waits for one (at most {} s)",
                        p.id,
                        CATCH_UP_WAIT_MS / 1000
                    ));
                }
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
            node: None,
            replicas: None,
            resources: None,
            from_memory: None,
            settings: None,
            restart_needed: false,
            version: None,
            tls: None,
        }
    }

    #[test]
    fn a_tls_change_is_written_into_the_record_before_the_first_step_and_only_then() {
        use mofang_common::DbTls::{Off, Required};
        assert_eq!(tls_to_write(&op(), Off), None, "carries no mode");
        let tls = Operation {
            tls: Some(Required),
            ..op()
        };
        assert_eq!(tls_to_write(&tls, Off), Some(Required), "not written yet");
        assert_eq!(tls_to_write(&tls, Required), None, "written");
        let begun = Operation {
            steps: vec![OpStep {
                action: StepAction::Restart {
                    member: "db-1".into(),
                    generation: 1,
                },
                state: StepState::Running,
                started_ms: 1,
                ended_ms: 0,
                reason: String::new(),
            }],
            ..tls.clone()
        };
        assert_eq!(tls_to_write(&begun, Off), None, "a step began: never again");
        let ended = Operation {
            state: OpState::Failed,
            ..tls
        };
        assert_eq!(
            tls_to_write(&ended, Off),
            None,
            "an ended operation writes nothing"
        );
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
            cpu: 1.0,
            memory_mib: 256,
            lag_seconds: 0,
            position: 100,
            params_done: 0,
            volume_mib: 512,
            version: "10.11".into(),
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
                node: None,
                disk_class: None,
                backup: None,
            })),
            Next::Stop => op.steps.push(step(StepAction::Stop)),
            Next::Start => op.steps.push(step(StepAction::Start)),
            Next::AddReplica { member, donor } => op.steps.push(step(StepAction::AddReplica {
                member: member.clone(),
                node: "n".into(),
                disk_class: "ssd".into(),
                donor: donor.clone(),
                backup: None,
            })),
            Next::RemoveReplica { member } => op.steps.push(step(StepAction::RemoveReplica {
                member: member.clone(),
            })),
            Next::SetResources => {
                let r = op.resources.expect("resources");
                op.steps.push(step(StepAction::SetResources {
                    cpu: r.cpu,
                    memory: r.memory,
                }))
            }
            Next::SetParameters => op
                .steps
                .push(step(StepAction::SetParameters { generation: 1 })),
            Next::SetDisk => op.steps.push(step(StepAction::SetDisk {
                disk: op.resources.expect("resources").disk,
            })),
            Next::SetVersion => op.steps.push(step(StepAction::SetVersion {
                version: op.version.clone().expect("version"),
                from: "10.11".into(),
            })),
            Next::StepDone => {
                let s = op.steps.last_mut().expect("a step");
                s.state = StepState::Done;
                if let StepAction::Restart { member, .. }
                | StepAction::Rebuild { member, .. }
                | StepAction::AddReplica { member, .. }
                | StepAction::RemoveReplica { member } = &s.action
                {
                    op.done.insert(member.clone());
                }
            }
            _ => {}
        }
    }

    /// An upgrade: the record's version first, then replicas, a switchover, the old primary;
    /// a restart step is done only once the member reports the new version (its data
    /// upgraded), so nothing moves on while a member still runs the old one.
    #[test]
    fn an_upgrade_sets_the_version_then_restarts_each_member_until_it_runs_it() {
        let mut op = Operation {
            kind: OpKind::Upgrade,
            version: Some("11.8".into()),
            ..op()
        };
        let mut ms = vec![
            m("db-0", true, 0, 0),
            m("db-1", false, 0, 0),
            m("db-2", false, 0, 0),
        ];
        let n = next(&op, &ms, 1);
        assert_eq!(n, Next::SetVersion);
        apply(&mut op, &n, 1);
        assert_eq!(next(&op, &ms, 2), Next::StepDone);
        apply(&mut op, &Next::StepDone, 2);
        let mut seen = Vec::new();
        for now in 3..40 {
            let n = next(&op, &ms, now);
            match &n {
                Next::Restart { member, generation } => {
                    seen.push(format!("restart {member}"));
                    let m = ms.iter_mut().find(|m| &m.id == member).expect("member");
                    m.asked = *generation;
                    m.done = *generation;
                    // Restarted, not yet upgraded: the step waits.
                    apply(&mut op, &n, now);
                    assert!(matches!(next(&op, &ms, now), Next::Wait(_)));
                    let m = ms.iter_mut().find(|m| &m.id == member).expect("member");
                    m.version = "11.8".into();
                    continue;
                }
                Next::Switchover { from } => {
                    seen.push(format!("switchover from {from}"));
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
        assert!(ms.iter().all(|m| m.version == "11.8"));
    }

    /// The switchover waits for a replica that has caught up (lag 0, or at the primary's
    /// position), so the fenced writes do not wait on a replica's replay; at most
    /// CATCH_UP_WAIT_MS after the last replica step.
    #[test]
    fn the_switchover_waits_for_a_replica_that_caught_up() {
        let mut op = op();
        op.done = ["db-1".to_owned(), "db-2".to_owned()].into();
        op.steps.push(OpStep {
            action: StepAction::Restart {
                member: "db-2".into(),
                generation: 1,
            },
            state: StepState::Done,
            started_ms: 1_000,
            ended_ms: 5_000,
            reason: String::new(),
        });
        let mut ms = vec![
            m("db-0", true, 0, 0),
            m("db-1", false, 1, 1),
            m("db-2", false, 1, 1),
        ];
        ms[0].position = 500;
        for r in &mut ms[1..] {
            r.lag_seconds = 4;
            r.position = 420;
        }
        match next(&op, &ms, 6_000) {
            Next::Wait(why) => assert!(why.contains("caught up with db-0"), "{why}"),
            other => panic!("switched over while replaying: {other:?}"),
        }
        // Past the wait, it switches over regardless.
        assert_eq!(
            next(&op, &ms, 5_000 + CATCH_UP_WAIT_MS),
            Next::Switchover {
                from: "db-0".into()
            }
        );
        // One replica caught up: at once.
        ms[2].lag_seconds = 0;
        assert_eq!(
            next(&op, &ms, 6_000),
            Next::Switchover {
                from: "db-0".into()
            }
        );
        // Or at the primary's reported position (Redis: seconds since the last I/O).
        ms[2].lag_seconds = 7;
        ms[2].position = 500;
        assert_eq!(
            next(&op, &ms, 6_000),
            Next::Switchover {
                from: "db-0".into()
            }
        );
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

    /// Found by the e2e test of a scheduler `kill -9` at every step of an upgrade: killed
    /// during the switchover step, the new leader ran the switchover again before any agent
    /// had reported, the switchover refused (`primary ... is not healthy`) and the operation
    /// failed. A switchover found running is run again only on a whole instance.
    #[test]
    fn a_switchover_found_running_by_a_new_leader_waits_for_the_members_reports() {
        let mut op = op();
        apply(
            &mut op,
            &Next::Switchover {
                from: "db-0".into(),
            },
            1,
        );
        // Nothing reported yet: nobody healthy.
        let mut unseen = vec![m("db-0", true, 0, 0), m("db-1", false, 1, 1)];
        for m in &mut unseen {
            m.healthy = false;
            m.replicating = false;
        }
        assert!(
            matches!(next(&op, &unseen, 2), Next::Wait(w) if w.contains("db-0")),
            "{:?}",
            next(&op, &unseen, 2)
        );
        // The primary back (its fence lifted), the replica not yet replicating.
        unseen[0].healthy = true;
        unseen[1].healthy = true;
        assert!(matches!(next(&op, &unseen, 3), Next::Wait(w) if w.contains("db-1")));
        // Whole: run again.
        unseen[1].replicating = true;
        assert_eq!(
            next(&op, &unseen, 4),
            Next::RetrySwitchover {
                from: "db-0".into()
            }
        );
        // Never whole again within the step's time: the step fails, naming the switchover.
        unseen[1].replicating = false;
        assert!(matches!(
            next(&op, &unseen, 1 + STEP_TIMEOUT_MS + 1),
            Next::StepFailed(r) if r.contains("did not complete")
        ));
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

    /// Drives `op` to its end on `ms`, the way the agents would answer: restarts carried out
    /// (with `mem` as the new memory), replicas added whole, removed ones gone, CPU and
    /// parameters applied. Returns the steps taken.
    fn walk(op: &mut Operation, ms: &mut Vec<MemberNow>, mem: u64) -> Vec<String> {
        let mut seen = Vec::new();
        for now in 1..100 {
            let n = next(op, ms, now);
            if !answer(op, ms, &n, mem, &mut seen) {
                break;
            }
            apply(op, &n, now);
        }
        seen
    }

    /// What the agents (and the switchover) do for decision `n`; false once it succeeded.
    fn answer(
        op: &Operation,
        ms: &mut Vec<MemberNow>,
        n: &Next,
        mem: u64,
        seen: &mut Vec<String>,
    ) -> bool {
        match n {
            Next::Restart { member, generation } => {
                seen.push(format!("restart {member}"));
                let m = ms.iter_mut().find(|m| &m.id == member).expect("member");
                m.asked = *generation;
                m.done = *generation;
                m.memory_mib = mem;
            }
            Next::Switchover { from } => {
                seen.push(format!("switchover from {from}"));
                let to = ms
                    .iter()
                    .find(|m| !m.primary)
                    .map(|m| m.id.clone())
                    .expect("a replica");
                for m in ms.iter_mut() {
                    m.primary = m.id == to;
                }
            }
            Next::AddReplica { member, donor } => {
                seen.push(format!(
                    "add {member} from {}",
                    donor.as_deref().unwrap_or("the primary")
                ));
                ms.push(self::m(member, false, 0, 0));
            }
            Next::RemoveReplica { member } => {
                seen.push(format!("remove {member}"));
                ms.retain(|m| &m.id != member);
            }
            Next::SetResources => {
                seen.push("set resources".into());
                let cpu = op.resources.expect("resources").cpu;
                for m in ms.iter_mut() {
                    m.cpu = cpu;
                }
            }
            Next::SetParameters => {
                seen.push("set parameters".into());
                for m in ms.iter_mut() {
                    m.params_done = 1;
                }
            }
            Next::SetDisk => {
                seen.push("set disk".into());
                let disk = op.resources.expect("resources").disk;
                for m in ms.iter_mut() {
                    m.volume_mib = disk;
                }
            }
            Next::Succeed => {
                seen.push("succeed".into());
                return false;
            }
            Next::StepDone => {}
            other => panic!("unexpected {other:?} after {seen:?}"),
        }
        true
    }

    /// A new MariaDB replica is seeded from the latest usable backup of its own instance:
    /// succeeded, same engine and version, one object, a GTID position, not failed by a
    /// verification. Anything else (or a Redis instance) is copied from a replica.
    #[test]
    fn a_scale_seeds_from_the_latest_usable_backup_of_the_instance() {
        use crate::backup::{Backup, BackupObject, BackupState};
        use crate::model::{Credentials, Instance, InstanceSpec, Resources};
        use mofang_common::EngineKind;
        let spec = InstanceSpec {
            name: "shop".into(),
            engine: EngineKind::Mariadb,
            version: "10.11".into(),
            replicas: 1,
            resources: Resources {
                cpu: 0.5,
                memory: 256,
                disk: 1024,
            },
            disk_class: None,
            placement: None,
            labels: Default::default(),
            restore: None,
            tls: Default::default(),
            backup: None,
        };
        let creds = Credentials {
            admin: "a".into(),
            repl: "r".into(),
            monitor: "m".into(),
            app: "p".into(),
        };
        let inst = Instance::new(spec.clone(), Vec::new(), creds.clone());
        let backup = |id: &str, ended: i64| Backup {
            id: id.into(),
            instance: "shop".into(),
            engine: "mariadb".into(),
            version: "10.11".into(),
            repo: "r".into(),
            member: "shop-1".into(),
            node: "a".into(),
            state: BackupState::Succeeded,
            reason: String::new(),
            requested_at_ms: ended - 10,
            started_at_ms: ended - 5,
            ended_at_ms: ended,
            bytes: 100,
            size: 10,
            consistent_at: mofang_common::backup::ConsistentAt {
                gtid: "0-1-42".into(),
                ..Default::default()
            },
            objects: vec![BackupObject {
                path: format!("backups/shop/{id}/data.mbstream.zst"),
                size: 10,
                sha256: "00".into(),
                raw_size: 100,
                encryption: None,
            }],
            manifest: String::new(),
            tools: Default::default(),
            row_counts: None,
            keys: None,
            verifying: false,
            verified_at_ms: 0,
            verify_ok: None,
            verify_reason: String::new(),
        };
        let pick = |bs: &[Backup]| seed_backup(bs, &inst).map(|b| b.id.clone());
        assert_eq!(pick(&[]), None, "no backup: a replica's copy");
        let good = [backup("b1", 1000), backup("b2", 2000)];
        assert_eq!(pick(&good).as_deref(), Some("b2"), "the latest");
        let unusable = [
            backup("b1", 1000),
            Backup {
                state: BackupState::Failed,
                ..backup("failed", 5000)
            },
            Backup {
                state: BackupState::Running,
                ..backup("running", 5000)
            },
            Backup {
                instance: "other".into(),
                ..backup("other", 5000)
            },
            Backup {
                version: "10.5".into(),
                ..backup("before-upgrade", 5000)
            },
            Backup {
                consistent_at: Default::default(),
                ..backup("no-gtid", 5000)
            },
            Backup {
                objects: Vec::new(),
                ..backup("no-object", 5000)
            },
            Backup {
                verify_ok: Some(false),
                ..backup("failed-verification", 5000)
            },
        ];
        assert_eq!(pick(&unusable).as_deref(), Some("b1"));
        let kv = Instance::new(
            InstanceSpec {
                engine: EngineKind::Redis,
                version: "7.0".into(),
                ..spec
            },
            Vec::new(),
            creds,
        );
        let redis = [Backup {
            engine: "redis".into(),
            version: "7.0".into(),
            ..backup("kv", 1000)
        }];
        assert_eq!(
            seed_backup(&redis, &kv),
            None,
            "Redis full-syncs from its primary"
        );
        assert_eq!(seeded_from(Some("shop-1"), Some("b2")), "backup b2");
        assert_eq!(seeded_from(Some("shop-1"), None), "shop-1");
        assert_eq!(seeded_from(None, None), "the primary");
    }

    #[test]
    fn scale_up_adds_replicas_one_at_a_time_seeded_from_a_replica() {
        let mut op = op_of(OpKind::Scale);
        op.replicas = Some(3);
        let mut ms = vec![m("db-0", true, 0, 0), m("db-1", false, 0, 0)];
        let seen = walk(&mut op, &mut ms, 256);
        assert_eq!(
            seen,
            ["add db-2 from db-1", "add db-3 from db-2", "succeed"],
            "the primary is never the donor while a replica is whole"
        );
        // A lone primary: the new replica copies from it (nothing else holds the data).
        let mut op = op_of(OpKind::Scale);
        op.replicas = Some(1);
        let mut ms = vec![m("db-0", true, 0, 0)];
        assert_eq!(
            walk(&mut op, &mut ms, 256),
            ["add db-1 from the primary", "succeed"]
        );
    }

    #[test]
    fn an_added_replica_is_done_only_once_seeded_and_replicating() {
        let mut op = op_of(OpKind::Scale);
        op.replicas = Some(2);
        let mut ms = vec![m("db-0", true, 0, 0), m("db-1", false, 0, 0)];
        let n = next(&op, &ms, 1);
        apply(&mut op, &n, 1);
        assert!(matches!(next(&op, &ms, 2), Next::Wait(w) if w.contains("placed")));
        let mut new = m("db-2", false, 0, 0);
        new.healthy = false;
        new.replicating = false;
        ms.push(new);
        assert!(matches!(next(&op, &ms, 3), Next::Wait(w) if w.contains("seeded")));
        match next(&op, &ms, STEP_TIMEOUT_MS + 5) {
            Next::StepFailed(r) => assert!(r.contains("db-2") && r.contains("healthy: false")),
            other => panic!("{other:?}"),
        }
        ms[2].healthy = true;
        ms[2].replicating = true;
        assert_eq!(next(&op, &ms, 4), Next::StepDone);
    }

    #[test]
    fn scale_down_removes_the_most_lagging_replica_first_never_the_primary() {
        let mut op = op_of(OpKind::Scale);
        op.replicas = Some(1);
        let mut ms = vec![
            m("db-0", true, 0, 0),
            m("db-1", false, 0, 0),
            m("db-2", false, 0, 0),
            m("db-3", false, 0, 0),
        ];
        ms[1].lag_seconds = 4;
        ms[3].position = 90;
        let seen = walk(&mut op, &mut ms, 256);
        assert_eq!(seen, ["remove db-1", "remove db-3", "succeed"]);
        assert_eq!(
            ms.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["db-0", "db-2"]
        );
        // Equal replicas: the newest goes first.
        let ms = vec![
            m("db-0", true, 0, 0),
            m("db-1", false, 0, 0),
            m("db-2", false, 0, 0),
        ];
        assert_eq!(most_lagging(&ms).map(|m| m.id.as_str()), Some("db-2"));
        // The primary is never a candidate, even lagging.
        let mut lone = vec![m("db-0", true, 0, 0)];
        lone[0].lag_seconds = 99;
        assert_eq!(most_lagging(&lone), None);
        // A failover mid-scale: the new primary is kept, the old one (now a replica) may go.
        let mut op = op_of(OpKind::Scale);
        op.replicas = Some(1);
        let ms = vec![
            m("db-0", false, 0, 0),
            m("db-1", true, 0, 0),
            m("db-2", false, 0, 0),
        ];
        assert!(matches!(next(&op, &ms, 1), Next::RemoveReplica { member } if member != "db-1"));
    }

    #[test]
    fn resize_sets_the_record_then_restarts_in_the_rolling_order_for_memory_only() {
        let mut op = op_of(OpKind::Resize);
        op.resources = Some(crate::model::Resources {
            cpu: 0.5,
            memory: 512,
            disk: 512,
        });
        op.from_memory = Some(256);
        let mut ms = vec![
            m("db-0", true, 0, 0),
            m("db-1", false, 0, 0),
            m("db-2", false, 0, 0),
        ];
        assert_eq!(
            walk(&mut op, &mut ms, 512),
            [
                "set resources",
                "restart db-1",
                "restart db-2",
                "switchover from db-0",
                "restart db-0",
                "succeed"
            ]
        );
        assert!(ms.iter().all(|m| m.memory_mib == 512 && m.cpu == 0.5));
        // CPU alone: live, no restart.
        let mut op = op_of(OpKind::Resize);
        op.resources = Some(crate::model::Resources {
            cpu: 2.0,
            memory: 256,
            disk: 512,
        });
        op.from_memory = Some(256);
        let mut ms = vec![m("db-0", true, 0, 0), m("db-1", false, 0, 0)];
        assert_eq!(walk(&mut op, &mut ms, 256), ["set resources", "succeed"]);
    }

    #[test]
    fn a_resize_restart_is_done_only_with_the_new_memory_and_cpu_waits_for_every_member() {
        let mut op = op_of(OpKind::Resize);
        op.resources = Some(crate::model::Resources {
            cpu: 0.5,
            memory: 512,
            disk: 512,
        });
        op.from_memory = Some(256);
        let mut ms = vec![m("db-0", true, 0, 0), m("db-1", false, 0, 0)];
        apply(&mut op, &Next::SetResources, 1);
        ms[0].cpu = 0.5;
        assert!(matches!(next(&op, &ms, 2), Next::Wait(w) if w.contains("db-1")));
        // Reported to a thousandth of a core (a CFS quota).
        ms[1].cpu = 0.5004;
        assert_eq!(next(&op, &ms, 3), Next::StepDone);
        apply(&mut op, &Next::StepDone, 3);
        let n = next(&op, &ms, 4);
        assert_eq!(
            n,
            Next::Restart {
                member: "db-1".into(),
                generation: 1
            }
        );
        apply(&mut op, &n, 4);
        ms[1].asked = 1;
        ms[1].done = 1;
        assert!(
            matches!(next(&op, &ms, 5), Next::Wait(_)),
            "restarted, old memory"
        );
        ms[1].memory_mib = 512;
        assert_eq!(next(&op, &ms, 6), Next::StepDone);
    }

    #[test]
    fn reconfigure_applies_live_and_restarts_only_when_a_parameter_needs_it() {
        let mut op = op_of(OpKind::Reconfigure);
        let mut ms = vec![m("db-0", true, 0, 0), m("db-1", false, 0, 0)];
        assert_eq!(
            walk(&mut op, &mut ms, 256),
            ["set parameters", "succeed"],
            "dynamic only: no restart"
        );
        let mut op = op_of(OpKind::Reconfigure);
        op.restart_needed = true;
        let mut ms = vec![m("db-0", true, 0, 0), m("db-1", false, 0, 0)];
        assert_eq!(
            walk(&mut op, &mut ms, 256),
            [
                "set parameters",
                "restart db-1",
                "switchover from db-0",
                "restart db-0",
                "succeed"
            ]
        );
        // Not applied by every member: the step waits, then fails naming it.
        let mut op = op_of(OpKind::Reconfigure);
        apply(&mut op, &Next::SetParameters, 1);
        let mut ms = vec![m("db-0", true, 0, 0), m("db-1", false, 0, 0)];
        ms[0].params_done = 1;
        assert!(matches!(next(&op, &ms, 2), Next::Wait(w) if w.contains("db-1")));
        assert!(
            matches!(next(&op, &ms, STEP_TIMEOUT_MS + 2), Next::StepFailed(r) if r.contains("db-1"))
        );
    }

    #[test]
    fn expand_grows_every_volume_in_one_step_without_a_restart() {
        let mut op = op_of(OpKind::Expand);
        op.resources = Some(crate::model::Resources {
            cpu: 0.5,
            memory: 256,
            disk: 1024,
        });
        let mut ms = vec![m("db-0", true, 0, 0), m("db-1", false, 0, 0)];
        assert_eq!(walk(&mut op, &mut ms, 256), ["set disk", "succeed"]);
        // One volume not grown: the step waits, then fails naming it.
        let mut op = op_of(OpKind::Expand);
        op.resources = Some(crate::model::Resources {
            cpu: 0.5,
            memory: 256,
            disk: 1024,
        });
        apply(&mut op, &Next::SetDisk, 1);
        let mut ms = vec![m("db-0", true, 0, 0), m("db-1", false, 0, 0)];
        ms[0].volume_mib = 1024;
        assert!(matches!(next(&op, &ms, 2), Next::Wait(w) if w.contains("db-1")));
        assert!(matches!(
            next(&op, &ms, STEP_TIMEOUT_MS + 2),
            Next::StepFailed(r) if r.contains("db-1") && r.contains("512 MiB")
        ));
    }

    /// A new leader loads the stored record and decides from it: every new kind resumes at
    /// the step it was in, from the record alone (nothing kept in memory is needed).
    #[test]
    fn the_new_kinds_resume_from_their_stored_record() {
        for kind in [
            OpKind::Scale,
            OpKind::Resize,
            OpKind::Reconfigure,
            OpKind::Expand,
        ] {
            let mut op = op_of(kind);
            op.replicas = Some(3);
            op.resources = Some(crate::model::Resources {
                cpu: 0.5,
                memory: 512,
                disk: 512,
            });
            op.from_memory = Some(256);
            op.restart_needed = true;
            op.settings = Some([("max_connections".to_owned(), "300".to_owned())].into());
            let mut ms = vec![
                m("db-0", true, 0, 0),
                m("db-1", false, 0, 0),
                m("db-2", false, 0, 0),
            ];
            // Two decisions in, the leader dies; the next one reads the stored record.
            let mut seen = Vec::new();
            for now in 1..=2 {
                let n = next(&op, &ms, now);
                answer(&op, &mut ms, &n, 512, &mut seen);
                apply(&mut op, &n, now);
            }
            let stored = serde_json::to_string(&op).expect("json");
            let resumed: Operation = serde_json::from_str(&stored).expect("parse");
            assert_eq!(resumed, op, "{kind:?}");
            assert_eq!(next(&resumed, &ms, 3), next(&op, &ms, 3), "{kind:?}");
            // And it goes on to the end like one that never stopped.
            let mut a = resumed;
            let mut b = op.clone();
            let mut ms2 = ms.clone();
            assert_eq!(
                walk(&mut a, &mut ms, 512),
                walk(&mut b, &mut ms2, 512),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn a_resize_that_a_node_cannot_hold_is_refused_with_its_figures() {
        use crate::model::{Instance, MemberRecord, Node, NodeAdmin, NodeState, Resources};
        let node = |name: &str| Node {
            name: name.into(),
            address: String::new(),
            labels: Default::default(),
            cpu: 2.0,
            memory_bytes: 1024 << 20,
            disks: vec![],
            admin: NodeAdmin::Active,
            agent_version: String::new(),
            registered_at_ms: 0,
            http_address: String::new(),
        };
        let (a, b) = (node("a"), node("b"));
        fn view(n: &Node, cpu: f64, mem: u64) -> crate::placement::NodeView<'_> {
            crate::placement::NodeView {
                node: n,
                state: NodeState::Ready,
                reserved_cpu: cpu,
                reserved_memory_mib: mem,
                reserved_disk_mib: Default::default(),
                primaries: 0,
                members: 1,
            }
        }
        let r = Resources {
            cpu: 0.5,
            memory: 256,
            disk: 512,
        };
        let spec: crate::model::InstanceSpec = serde_json::from_value(serde_json::json!({
            "name": "db", "engine": "mariadb", "version": "10.11", "replicas": 1,
            "resources": {"cpu": 0.5, "memory": 256, "disk": 512}
        }))
        .expect("spec");
        let member = |id: &str, node: &str| MemberRecord {
            id: id.into(),
            node: node.into(),
            role: mofang_common::Role::Replica,
            disk_class: "ssd".into(),
        };
        let inst = Instance::new(
            spec,
            vec![member("db-0", "a"), member("db-1", "b")],
            serde_json::from_value(serde_json::json!({
                "admin": "", "repl": "", "monitor": "", "app": ""
            }))
            .expect("credentials"),
        );
        // a: only this instance (0.5 cores, 256 MiB); b: 768 MiB more of others.
        let views = [view(&a, 0.5, 256), view(&b, 0.5, 1024)];
        assert!(resize_refusals(&inst, &views, Resources { memory: 512, ..r }).len() == 1);
        let why = resize_refusals(&inst, &views, Resources { memory: 512, ..r });
        assert_eq!(why, ["b (of db-1): memory 256 MiB free, 512 MiB asked"]);
        assert!(resize_refusals(
            &inst,
            &views,
            Resources {
                memory: 256,
                cpu: 2.0,
                ..r
            }
        )
        .is_empty());
        let why = resize_refusals(&inst, &views, Resources { cpu: 2.5, ..r });
        assert_eq!(why.len(), 2, "{why:?}");
        assert!(why[0].contains("cpu 2 free, 2.5 asked"), "{why:?}");
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

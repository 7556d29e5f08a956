//! The member's status as the heartbeat carries it: built fresh, or keeping the last
//! address and position of a member that cannot be asked now.

use super::{now_ms, Shared};
use crate::runtime::ContainerInfo;
use crate::state::MemberState;
use mofang_common::proto::{Assignment, MemberStatus};
use mofang_common::ObservedRole;

/// A status with nothing observed yet: role unknown, not healthy, read-only.
pub(super) fn status(
    sh: &Shared,
    a: &Assignment,
    st: &MemberState,
    c: Option<&ContainerInfo>,
    address: &str,
) -> MemberStatus {
    let _ = sh;
    MemberStatus {
        member: a.member.clone(),
        instance: a.instance.clone(),
        engine: a.engine.clone(),
        container_state: c
            .map(|c| format!("{:?}", c.state).to_lowercase())
            .unwrap_or_else(|| "missing".into()),
        container_id: c.map(|c| c.id.clone()).unwrap_or_default(),
        healthy: false,
        reason: String::new(),
        role: ObservedRole::Unknown.as_str().into(),
        epoch: st.applied_epoch,
        address: address.to_owned(),
        position: String::new(),
        lag_seconds: -1,
        read_only: true,
        replication_ok: false,
        restarts: st.restarts,
        checked_at_ms: now_ms(),
        failed: false,
        volume_used_bytes: 0,
        failed_checks: 0,
        held: st.held_at_epoch.is_some(),
        crash_restarts: st.crash_restarts_ms.len() as u64,
        restart_generation: st.restart_generation,
        rebuild_generation: st.rebuild_generation,
        rotation: String::new(),
        restore_bytes: 0,
        restore_total: 0,
        restore_phase: String::new(),
        restore_phase_done: 0,
        restore_phase_total: 0,
        tls: st
            .serving_tls
            .as_ref()
            .map(|t| t.mode.clone())
            .unwrap_or_default(),
        cpu: c.map_or(0.0, |c| c.cpus),
        memory_bytes: c.map_or(0, |c| u64::try_from(c.memory_bytes).unwrap_or(0)),
        parameters_generation: st.parameters_generation,
        volume_bytes: 0,
        // Reported once the member's data is on it: an upgrade waits for that.
        version: if st.upgrade_pending {
            String::new()
        } else {
            st.version.clone()
        },
        // Read by an observation (`observe::report`); none without one.
        parameters: Default::default(),
    }
}

/// A status for a member that cannot be asked now, keeping its last known address and
/// position (the scheduler compares positions when it picks a new primary).
pub(super) fn status_keeping_last(
    sh: &Shared,
    a: &Assignment,
    st: &MemberState,
    c: &ContainerInfo,
) -> MemberStatus {
    let mut s = status(sh, a, st, Some(c), "");
    if let Some(old) = sh
        .statuses
        .lock()
        .ok()
        .and_then(|m| m.get(&a.member).cloned())
    {
        s.address = old.address;
        s.position = old.position;
    }
    s
}

/// Reports a dead primary held down for the scheduler's decision.
pub(super) fn report_held(sh: &Shared, a: &Assignment, st: &MemberState, c: &ContainerInfo) {
    let mut s = status_keeping_last(sh, a, st, c);
    s.reason = format!(
        "primary container exited (code {}); held down for the scheduler's decision",
        c.exit_code.unwrap_or(-1)
    );
    sh.set_status(s);
}

/// Reports a fresh status with a reason (and `failed` when an operator must act).
pub(super) fn report(
    sh: &Shared,
    a: &Assignment,
    st: &MemberState,
    c: Option<&ContainerInfo>,
    address: Option<&str>,
    failed: bool,
    reason: String,
) {
    let mut s = status(sh, a, st, c, address.unwrap_or(""));
    s.failed = failed;
    s.reason = reason;
    sh.set_status(s);
}

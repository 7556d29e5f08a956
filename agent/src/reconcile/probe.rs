//! The pass between full passes (issue 19): a member that a full pass found in good order
//! is only probed ([`Engine::probe`]: one round trip on the agent's kept session) until
//! something changes or a full pass is due ([`decide::pass_kind`]). A probe that fails is a
//! failed check, as a failed ping is, and the next pass is a full one; a probe that sees
//! something other than what the last full pass observed (a replica's link down, another
//! primary) makes the full pass at once; the position and lag it reads are reported as they
//! move, as a full pass would report them. Container deaths come from the runtime's events,
//! which always bring a full pass.

use super::decide::{self, DesiredRole, SettledView};
use super::observe;
use super::status::status_keeping_last;
use super::{Action, Shared, WorkerMemo};
use crate::engine::{Engine, Probe, Secrets, Target};
use crate::runtime::ContainerInfo;
use crate::state::MemberState;
use mofang_common::proto::Assignment;
use std::time::{Duration, Instant};

/// What a full pass that found the member in good order leaves for the probes after it.
pub(super) struct Settled {
    /// The assignment it carried out.
    pub assignment: Assignment,
    /// When it started.
    pub at: Instant,
    /// Whether a primary could take writes then.
    pub lease_writable: bool,
    /// The engine version the member runs.
    pub version: String,
    /// The role asked for.
    pub role: DesiredRole,
    /// The member's local state after the pass.
    pub st: MemberState,
    /// Its running container.
    pub container: ContainerInfo,
    /// Where the agent reaches its server.
    pub target: Target,
    /// The address reported for it.
    pub address: String,
    /// The instance's credentials.
    pub secrets: Secrets,
    /// What the probe must see for the observation to still hold.
    pub expect: Probe,
}

impl Settled {
    /// The view [`decide::pass_kind`] takes.
    pub fn view(&self) -> SettledView<'_> {
        SettledView {
            assignment: &self.assignment,
            at: self.at,
            lease_writable: self.lease_writable,
        }
    }
}

/// A probe pass: None when the full pass must run now (nothing settled to probe, or the
/// probe saw a change), else when to look again.
pub(super) async fn pass(sh: &Shared, a: &Assignment, memo: &mut WorkerMemo) -> Option<Action> {
    let settled = memo.settled.as_ref()?;
    let engine: Box<dyn Engine> = (sh.engines)(&a.engine, &settled.version)?;
    match engine.probe(&settled.target, &settled.secrets).await {
        Ok(seen) if seen.same_order(&settled.expect) => {
            memo.ping_failures = 0;
            let lag = observe::reported_lag(&mut memo.last_lag, seen.replicating, seen.lag_seconds);
            sh.touch_status(&a.member, &seen.position, lag);
            Some(Action::Requeue(decide::next_look(
                &settled.role,
                settled.st.fenced,
                sh.lease.writable_for(),
            )))
        }
        Ok(_) => {
            // Something changed on the server: observed in full now, and a replica is told
            // whom to follow again.
            memo.settled = None;
            memo.followed = None;
            None
        }
        Err(e) => {
            memo.ping_failures += 1;
            let failed = memo.failed_checks(&settled.container.id);
            let mut s = status_keeping_last(sh, a, &settled.st, &settled.container);
            s.address = settled.address.clone();
            s.failed_checks = failed;
            s.reason = format!("not answering ({} checks): {e}", memo.ping_failures);
            sh.set_status(s);
            memo.settled = None;
            memo.followed = None;
            Some(Action::Requeue(Duration::from_millis(250)))
        }
    }
}

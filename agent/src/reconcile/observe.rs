//! Step 6, observe and report: the server's role, position and replication as it sees
//! them, turned into the member's status (healthy only when the observed role is the one
//! asked for). A replica whose replication error means it diverged is rebuilt instead.

use super::answers::Server;
use super::config::Configured;
use super::container::rebuild;
use super::decide::{self, DesiredRole};
use super::status::status;
use super::{volume, Action, Member, Result, Step, WorkerMemo};
use crate::engine::{Observation, ObservedRole, Target};
use crate::runtime::ContainerInfo;
use crate::state::MemberState;
use mofang_common::Role;
use std::time::Duration;
use tracing::warn;

/// Step 6a: what the server says of itself. A diverged replica is rebuilt from the primary
/// (container and volume go) and the pass stops.
pub(super) async fn observe(
    m: &Member<'_>,
    cfg: &Configured,
    server: &Server,
    container: &str,
) -> Result<Step<Observation>> {
    let obs = m.engine.observe(&server.target, &cfg.secrets).await?;
    if m.role.role() == Role::Replica {
        if let Some(e) = obs
            .replication_error
            .as_deref()
            .filter(|e| m.engine.diverged(e))
        {
            warn!(member = m.name(), error = %e, "replica diverged from its primary: rebuilding it from the primary");
            rebuild(m.sh, m.name(), container).await?;
            return Ok(Step::Stop(Action::Requeue(Duration::from_millis(100))));
        }
    }
    Ok(Step::Next(obs))
}

/// Step 6b: the status the heartbeat carries; `note` (from the role step) is the reason
/// when there is one. Ends the pass: look again in a second; true when the member was
/// reported healthy (in good order: the passes after it may only probe it).
pub(super) fn report(
    m: &Member<'_>,
    st: &MemberState,
    container: &ContainerInfo,
    server: &Server,
    obs: &Observation,
    note: Option<String>,
    memo: &mut WorkerMemo,
) -> (Action, bool) {
    let (sh, a) = (m.sh, m.a);
    let replica_of = m.role.replica_of();
    let usage = volume::usage(m, memo);
    let mut s = status(sh, a, st, Some(container), &server.address);
    s.role = if st.fenced {
        ObservedRole::Fenced.as_str().into()
    } else {
        obs.role.as_str().into()
    };
    s.read_only = obs.read_only;
    s.position = obs.position.clone();
    s.parameters = super::params::last(memo);
    let repl_ok = obs.replication_ok;
    let repl_error = obs.replication_error.clone();
    s.lag_seconds = reported_lag(&mut memo.last_lag, repl_ok, obs.lag_seconds);
    s.replication_ok = repl_ok;
    s.volume_used_bytes = usage.0;
    s.volume_bytes = m.sh.volumes.get(&a.member).map_or(0, |v| v.size_bytes);
    s.rotation = memo.rotated.take().unwrap_or_default();
    let role_ok = match m.role {
        DesiredRole::Primary { fence: true, .. } => st.fenced,
        DesiredRole::Primary { .. } => obs.role == ObservedRole::Primary || st.fenced,
        // A replica is healthy only while it follows the primary it was told to follow.
        DesiredRole::Replica { .. } => {
            obs.role == ObservedRole::Replica
                && repl_ok
                && follows(obs.following.as_deref(), replica_of)
        }
    };
    s.healthy = role_ok && (!st.fenced || a.fence) && memo.tls_pending.is_none();
    s.reason = match note.or_else(|| memo.tls_pending.clone()) {
        Some(note) => note,
        None => match (&repl_error, role_ok, st.fenced, usage.1) {
            (_, _, true, _) if a.fence => "fenced for switchover".into(),
            (_, _, true, _) => "fenced: scheduler lease expired".into(),
            (Some(e), _, _, _) => format!("replication: {e}"),
            (None, false, _, _)
                if obs.role == ObservedRole::Replica
                    && !follows(obs.following.as_deref(), replica_of) =>
            {
                format!(
                    "replicating from {} while {} is its primary",
                    obs.following.as_deref().unwrap_or("nobody"),
                    a.primary_address
                )
            }
            (None, false, _, _) => format!(
                "observed role {} while {} is desired",
                obs.role.as_str(),
                a.role
            ),
            (None, true, _, true) => "volume over its reservation".into(),
            _ => String::new(),
        },
    };
    let healthy = s.healthy;
    sh.set_status(s);
    let action = Action::Requeue(decide::next_look(
        m.role,
        st.fenced,
        sh.lease.writable_for(),
    ));
    (action, healthy)
}

/// True when the observation shows the server following `primary`'s address.
pub(super) fn follows_target(obs: &Observation, primary: &Target) -> bool {
    match obs.following.as_deref().map(Target::parse) {
        Some(Ok(f)) => f.host == primary.host && f.port == primary.port,
        _ => false,
    }
}

/// True when a replica observed following `following` (`host:port`) follows `primary`.
fn follows(following: Option<&str>, primary: Option<&Target>) -> bool {
    match (following.map(Target::parse), primary) {
        (Some(Ok(f)), Some(p)) => &f == p,
        _ => false,
    }
}

/// The lag to report: the observed one while the link is up, else the last one seen with
/// the link up (what the replica was behind when its primary failed); -1 when never seen.
pub(super) fn reported_lag(last: &mut Option<i64>, link_up: bool, observed: Option<i64>) -> i64 {
    if link_up {
        if let Some(l) = observed.filter(|l| *l >= 0) {
            *last = Some(l);
        }
        return observed.unwrap_or(-1);
    }
    last.unwrap_or(-1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reported_lag_is_the_observed_one_while_the_link_is_up() {
        let mut last = None;
        assert_eq!(reported_lag(&mut last, false, None), -1, "never seen");
        assert_eq!(
            reported_lag(&mut last, true, None),
            -1,
            "link up, lag unknown"
        );
        assert_eq!(reported_lag(&mut last, true, Some(2)), 2);
        assert_eq!(reported_lag(&mut last, true, Some(0)), 0);
        assert_eq!(reported_lag(&mut last, false, None), 0);
        assert_eq!(reported_lag(&mut last, true, Some(5)), 5);
        assert_eq!(
            reported_lag(&mut last, false, Some(9)),
            5,
            "link down: the last one"
        );
    }
}

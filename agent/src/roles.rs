//! Role checks for load balancers (HAProxy `option httpchk`): `GET /v1/members/{member}/primary`
//! answers 200 only for the writable primary of the current epoch, `GET
//! /v1/members/{member}/replica` only for a healthy replica within the lag limit; 503 (with
//! the reason) otherwise, 404 for a member this agent does not run.

use crate::link::Lease;
use crate::statuses::Statuses;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use mofang_common::proto::{Assignment, DesiredState, MemberStatus};
use mofang_common::{ObservedRole, Role};
use std::sync::Arc;
use tokio::sync::watch;

/// What the checks read: the agent's own view, never the scheduler's.
pub struct RoleChecks {
    /// Member statuses (the reconcile loop's last observation of each member).
    pub statuses: Statuses,
    /// Desired state (role and epoch per member).
    pub desired: watch::Receiver<Option<DesiredState>>,
    /// The scheduler lease: a primary whose agent lost it is fenced, never "primary".
    pub lease: Lease,
    /// Default lag limit for `/replica`, seconds (query `max_lag` overrides).
    pub max_lag_seconds: i64,
}

/// Query of `/replica`.
#[derive(Debug, serde::Deserialize)]
pub struct LagQuery {
    /// Replicas lagging more than this many seconds answer 503.
    pub max_lag: Option<i64>,
}

/// The routes.
pub fn router(checks: Arc<RoleChecks>) -> Router {
    Router::new()
        .route("/v1/members/{member}/primary", get(primary))
        .route("/v1/members/{member}/replica", get(replica))
        .with_state(checks)
}

type Answer = (StatusCode, String);

impl RoleChecks {
    fn lookup(&self, member: &str) -> Result<(Assignment, MemberStatus), Answer> {
        let a = self
            .desired
            .borrow()
            .as_ref()
            .and_then(|d| d.members.iter().find(|a| a.member == member).cloned())
            .ok_or((
                StatusCode::NOT_FOUND,
                format!("member {member} is not on this node\n"),
            ))?;
        let s = self
            .statuses
            .lock()
            .ok()
            .and_then(|m| m.get(member).cloned())
            .ok_or((
                StatusCode::SERVICE_UNAVAILABLE,
                format!("member {member} not observed yet\n"),
            ))?;
        Ok((a, s))
    }
}

/// Pure decision for `/primary`.
pub fn primary_answer(a: &Assignment, s: &MemberStatus, lease_valid: bool) -> Answer {
    let why = if Role::parse(&a.role) != Some(Role::Primary) {
        format!("desired role is {}", a.role)
    } else if a.fence {
        "fenced for a switchover".into()
    } else if !lease_valid {
        "agent lost the scheduler lease: fenced".into()
    } else if s.epoch != a.epoch {
        format!("epoch {} not applied yet (at {})", a.epoch, s.epoch)
    } else if !(s.healthy
        && ObservedRole::parse(&s.role) == Some(ObservedRole::Primary)
        && !s.read_only)
    {
        format!("not a writable primary: {} ({})", s.role, s.reason)
    } else {
        return (StatusCode::OK, format!("primary epoch {}\n", a.epoch));
    };
    (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"))
}

/// Pure decision for `/replica`.
pub fn replica_answer(a: &Assignment, s: &MemberStatus, max_lag: i64) -> Answer {
    let why = if Role::parse(&a.role) != Some(Role::Replica) {
        format!("desired role is {}", a.role)
    } else if !(s.healthy && s.replication_ok) {
        format!("not replicating: {}", s.reason)
    } else if s.lag_seconds < 0 || s.lag_seconds > max_lag {
        format!("lag {} s over {max_lag} s", s.lag_seconds)
    } else {
        return (StatusCode::OK, format!("replica lag {} s\n", s.lag_seconds));
    };
    (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"))
}

async fn primary(State(c): State<Arc<RoleChecks>>, Path(member): Path<String>) -> Answer {
    match c.lookup(&member) {
        Ok((a, s)) => primary_answer(&a, &s, c.lease.writable()),
        Err(e) => e,
    }
}

async fn replica(
    State(c): State<Arc<RoleChecks>>,
    Path(member): Path<String>,
    Query(q): Query<LagQuery>,
) -> Answer {
    match c.lookup(&member) {
        Ok((a, s)) => replica_answer(&a, &s, q.max_lag.unwrap_or(c.max_lag_seconds)),
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(role: &str) -> Assignment {
        Assignment {
            member: "m".into(),
            role: role.into(),
            epoch: 3,
            ..Default::default()
        }
    }

    fn s(role: &str) -> MemberStatus {
        MemberStatus {
            member: "m".into(),
            role: role.into(),
            epoch: 3,
            healthy: true,
            read_only: role != "primary",
            replication_ok: role == "replica",
            lag_seconds: 0,
            ..Default::default()
        }
    }

    #[test]
    fn only_the_writable_primary_of_the_current_epoch_is_primary() {
        assert_eq!(
            primary_answer(&a("primary"), &s("primary"), true).0,
            StatusCode::OK
        );
        assert_eq!(
            primary_answer(&a("primary"), &s("primary"), false).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let mut old = s("primary");
        old.epoch = 2;
        assert_eq!(
            primary_answer(&a("primary"), &old, true).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            primary_answer(&a("replica"), &s("primary"), true).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let mut fenced = a("primary");
        fenced.fence = true;
        assert_eq!(
            primary_answer(&fenced, &s("primary"), true).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn replicas_within_the_lag_limit() {
        assert_eq!(
            replica_answer(&a("replica"), &s("replica"), 5).0,
            StatusCode::OK
        );
        let mut lagging = s("replica");
        lagging.lag_seconds = 9;
        assert_eq!(
            replica_answer(&a("replica"), &lagging, 5).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            replica_answer(&a("primary"), &s("replica"), 5).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}

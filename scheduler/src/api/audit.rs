//! The audit log: every mutating request recorded before it is answered, and read back.

use super::*;
use crate::auth::Identity;
use crate::cluster::{self};
use crate::config::TokenRole;
use crate::model::{now_ms, AuditEntry};
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use std::net::SocketAddr;
use tracing::error;

/// Filters of `GET /v1/audit`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only entries with a larger id (oldest first from there).
    #[param(maximum = 9223372036854775807_i64)]
    pub since: Option<u64>,
    /// Only entries with a smaller id: the newest `limit` of them, oldest first (with
    /// `since`, the newest `limit` between the two).
    #[param(maximum = 9223372036854775807_i64)]
    pub before: Option<u64>,
    /// At most this many (default 1000, max 10000).
    pub limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/audit", params(AuditQuery), responses((status = 200, body = [AuditEntry]), (status = 403, body = ErrorBody)))]
pub(super) async fn audit(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    need(&id, TokenRole::Admin)?;
    let Query(q) = q.map_err(bad_query)?;
    log_window(q.since, q.before)?;
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let store = api.cluster.store();
    let entries = match q.before {
        Some(before) => store
            .audit_before(before, limit)
            .await
            .map(|es| above(es, q.since, |e| e.id)),
        None => store.audit(q.since.unwrap_or(0), limit).await,
    }
    .map_err(cluster::Error::Store)?;
    Ok(Json(entries))
}

/// Appends every mutating request to the audit log: an entry before it runs (if that cannot
/// be written the request is refused with 503 and nothing happens) and one with its result.
pub(super) async fn audit_mw(State(api): State<Api>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let who = req
        .extensions()
        .get::<Identity>()
        .map(|i| i.name.clone())
        .unwrap_or_default();
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    let action = format!("{} {}", req.method(), req.uri().path());
    let target = req.uri().path().trim_start_matches("/v1/").to_owned();
    let mut entry = AuditEntry {
        id: 0,
        at_ms: now_ms(),
        who,
        source,
        action,
        target,
        status: 0,
        result: "requested".into(),
    };
    let store = api.cluster.store().clone();
    if let Err(e) = store.append_audit(&entry).await {
        error!(error = %e, "audit log unavailable: request refused");
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "the audit log cannot be written; request refused",
        )
        .into_response();
    }
    let resp = next.run(req).await;
    entry.at_ms = now_ms();
    entry.status = resp.status().as_u16();
    entry.result = if resp.status().is_success() {
        "ok".into()
    } else {
        format!("error {}", resp.status().as_u16())
    };
    if let Err(e) = store.append_audit(&entry).await {
        error!(error = %e, action = %entry.action, "could not record the result of an audited request");
    }
    resp
}

//! The event log.

use super::*;
use crate::cluster::{self};
use crate::model::Event;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

/// Filters of `GET /v1/events`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    /// Only this instance.
    pub instance: Option<String>,
    /// Only events with a larger id (oldest first from there).
    pub since: Option<u64>,
    /// Only events with a smaller id: the newest `limit` of them, oldest first (a page older
    /// than one read before; not with `since`).
    pub before: Option<u64>,
    /// At most this many (default 1000, max 10000).
    pub limit: Option<usize>,
}

/// `since` and `before` of a log read: one direction at a time.
pub(super) fn one_direction(since: Option<u64>, before: Option<u64>) -> ApiResult<()> {
    match (since, before) {
        (Some(_), Some(_)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            "since and before read in opposite directions: give one",
        )),
        _ => Ok(()),
    }
}

pub(super) fn bad_query(e: axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text())
}

#[utoipa::path(get, path = "/v1/events", params(EventQuery), responses((status = 200, body = [Event])))]
pub(super) async fn events(
    State(api): State<Api>,
    q: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<Event>>> {
    let Query(q) = q.map_err(bad_query)?;
    one_direction(q.since, q.before)?;
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let store = api.cluster.store();
    let evs = match q.before {
        Some(before) => {
            store
                .events_before(q.instance.as_deref(), before, limit)
                .await
        }
        None => {
            store
                .events(q.instance.as_deref(), q.since.unwrap_or(0), limit)
                .await
        }
    }
    .map_err(cluster::Error::Store)?;
    Ok(Json(evs))
}

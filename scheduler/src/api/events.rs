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
    #[param(maximum = 9223372036854775807_i64)]
    pub since: Option<u64>,
    /// Only events with a smaller id: the newest `limit` of them, oldest first (a page older
    /// than one read before; with `since`, the newest `limit` between the two).
    #[param(maximum = 9223372036854775807_i64)]
    pub before: Option<u64>,
    /// At most this many (default 1000, max 10000).
    pub limit: Option<usize>,
}

/// The largest id a log read takes (`since`, `before`): ids are the store's signed 64-bit row
/// ids, so a larger one is refused rather than read as "newest" (`before=9223372036854775807`
/// is the newest page).
pub(super) const MAX_ID: u64 = i64::MAX as u64;

/// `since` and `before` of a log read, checked: each at most [`MAX_ID`]. Together they give a
/// window: the newest `limit` entries above `since` and below `before`.
pub(super) fn log_window(since: Option<u64>, before: Option<u64>) -> ApiResult<()> {
    for (name, v) in [("since", since), ("before", before)] {
        if v.is_some_and(|v| v > MAX_ID) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_query",
                format!("{name} is at most {MAX_ID}"),
            ));
        }
    }
    Ok(())
}

/// Entries of a read with `before` (the newest `limit` below it) that are above `since`.
pub(super) fn above<T>(entries: Vec<T>, since: Option<u64>, id: impl Fn(&T) -> u64) -> Vec<T> {
    match since {
        Some(s) => entries.into_iter().filter(|e| id(e) > s).collect(),
        None => entries,
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
    log_window(q.since, q.before)?;
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let store = api.cluster.store();
    let evs = match q.before {
        Some(before) => store
            .events_before(q.instance.as_deref(), before, limit)
            .await
            .map(|evs| above(evs, q.since, |e| e.id)),
        None => {
            store
                .events(q.instance.as_deref(), q.since.unwrap_or(0), limit)
                .await
        }
    }
    .map_err(cluster::Error::Store)?;
    Ok(Json(evs))
}

//! Batches: one operation across the instances a selector picks.

use super::*;
use crate::auth::Identity;
use crate::config::TokenRole;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/batches`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBatch {
    /// Label selector of the instances (`k=v,k2=v2`, `k`, `k!=v`), resolved now; one that
    /// matches no instance is answered 404 `no_match`.
    #[schema(
        pattern = r"^\s*([^,=]*=[^,]*|[A-Za-z0-9._/-]*)\s*(,\s*([^,=]*=[^,]*|[A-Za-z0-9._/-]*)\s*)*$"
    )]
    pub selector: String,
    /// The operation on each: `restart`, `stop`, `start`.
    #[serde(rename = "type")]
    #[schema(schema_with = super::schema::batch_kind)]
    pub kind: crate::ops::OpKind,
    /// Each operation's timeout (60 ..= 86400 s). Default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 60, maximum = 86400)]
    pub timeout_s: Option<i64>,
    /// At most this many operations at once (1 ..= 100). Default 1.
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 100)]
    pub max_parallel: usize,
    /// After this many failed operations no new one starts (at least 1). Default 1.
    #[serde(default = "one")]
    #[schema(minimum = 1)]
    pub max_failures: usize,
}

pub(super) fn one() -> usize {
    1
}

#[utoipa::path(post, path = "/v1/batches", request_body = NewBatch,
    responses((status = 202, body = crate::ops::batch::Batch), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn start_batch(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<crate::ops::batch::Batch>)> {
    need(&id, TokenRole::Operator)?;
    let req: NewBatch = parse_body(body)?;
    let b = api
        .cluster
        .start_batch(
            &req.selector,
            req.kind,
            req.timeout_s.map(|s| s.saturating_mul(1000)),
            req.max_parallel,
            req.max_failures,
            &id.name,
        )
        .await?;
    Ok((StatusCode::ACCEPTED, Json(b)))
}

/// Filters of `GET /v1/batches`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BatchQuery {
    /// At most this many, newest first (default 50, max 500).
    pub limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/batches", params(BatchQuery),
    responses((status = 200, body = [crate::ops::batch::Batch]), (status = 400, body = ErrorBody)))]
pub(super) async fn list_batches(
    State(api): State<Api>,
    q: Result<Query<BatchQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<crate::ops::batch::Batch>>> {
    let Query(q) = q.map_err(bad_query)?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    Ok(Json(api.cluster.batches(limit).await?))
}

#[utoipa::path(get, path = "/v1/batches/{id}", params(("id" = String, Path)),
    responses((status = 200, body = crate::ops::batch::Batch), (status = 404, body = ErrorBody)))]
pub(super) async fn get_batch(
    State(api): State<Api>,
    Path(b): Path<String>,
) -> ApiResult<Json<crate::ops::batch::Batch>> {
    Ok(Json(api.cluster.batch(&b).await?))
}

#[utoipa::path(post, path = "/v1/batches/{id}/cancel", params(("id" = String, Path)),
    responses((status = 200, body = crate::ops::batch::Batch), (status = 404, body = ErrorBody)))]
pub(super) async fn cancel_batch(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    Path(b): Path<String>,
) -> ApiResult<Json<crate::ops::batch::Batch>> {
    need(&id, TokenRole::Operator)?;
    Ok(Json(api.cluster.cancel_batch(&b).await?))
}

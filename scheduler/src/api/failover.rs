//! Switchover, manual failover and the automatic failover's switches.

use super::*;
use crate::auth::Identity;
use crate::cluster::{self, InstanceView};
use crate::config::TokenRole;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of a switchover or failover request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    /// Member to promote; default: the most advanced eligible replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Body of `PUT /v1/instances/{name}/auto-failover`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoFailover {
    /// On or off.
    pub enabled: bool,
}

pub(super) fn parse_optional<T: serde::de::DeserializeOwned + Default>(
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<T> {
    match &body {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => Ok(T::default()),
        _ => parse_body(body),
    }
}

#[utoipa::path(post, path = "/v1/instances/{name}/switchover", params(("name" = String, Path)), request_body = PromoteRequest,
    responses((status = 200, body = InstanceView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn switchover(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<InstanceView>> {
    need(&id, TokenRole::Operator)?;
    let req: PromoteRequest = parse_optional(body)?;
    Ok(Json(
        api.cluster.switchover(&name, req.target.as_deref()).await?,
    ))
}

#[utoipa::path(post, path = "/v1/instances/{name}/failover", params(("name" = String, Path)), request_body = PromoteRequest,
    responses((status = 202, body = InstanceView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn failover(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<InstanceView>)> {
    need(&id, TokenRole::Operator)?;
    let req: PromoteRequest = parse_optional(body)?;
    api.cluster
        .fail_over(
            &name,
            &format!("forced by {}", id.name),
            req.target.as_deref(),
            cluster::Trigger::Operator,
        )
        .await?;
    let view = api.cluster.instance(&name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("instance {name} not found"),
        )
    })?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

#[utoipa::path(post, path = "/v1/instances/{name}/failover/ack", params(("name" = String, Path)),
    responses((status = 200, body = InstanceView), (status = 404, body = ErrorBody)))]
pub(super) async fn failover_ack(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    Path(name): Path<String>,
) -> ApiResult<Json<InstanceView>> {
    need(&id, TokenRole::Operator)?;
    api.cluster.acknowledge_failover(&name).await?;
    get_instance(State(api), Path(name)).await
}

#[utoipa::path(put, path = "/v1/instances/{name}/auto-failover", params(("name" = String, Path)), request_body = AutoFailover,
    responses((status = 200, body = InstanceView), (status = 404, body = ErrorBody)))]
pub(super) async fn auto_failover(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<InstanceView>> {
    need(&id, TokenRole::Operator)?;
    let req: AutoFailover = parse_body(body)?;
    api.cluster.set_auto_failover(&name, req.enabled).await?;
    get_instance(State(api), Path(name)).await
}

/// Answer to `POST /v1/failover/resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Resumed {
    /// False: automatic failover runs again.
    pub mass_hold: bool,
}

#[utoipa::path(post, path = "/v1/failover/resume", responses((status = 200, body = Resumed)))]
pub(super) async fn failover_resume(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
) -> ApiResult<Json<Resumed>> {
    need(&id, TokenRole::Operator)?;
    api.cluster.resume_failover().await;
    Ok(Json(Resumed {
        mass_hold: api.cluster.mass_hold(),
    }))
}

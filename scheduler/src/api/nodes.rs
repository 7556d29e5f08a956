//! Nodes: list, show, drain, cordon, uncordon, revoke, join tokens.

use super::*;
use crate::auth::Identity;
use crate::cluster::NodeView2;
use crate::config::TokenRole;
use crate::model::NodeAdmin;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Query of `GET /v1/nodes`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct NodesQuery {
    /// Each node's usage samples of the last ten minutes; without it only the newest.
    #[serde(default)]
    pub history: bool,
}

#[utoipa::path(get, path = "/v1/nodes", params(NodesQuery), responses((status = 200, body = [NodeView2]), (status = 400, body = ErrorBody)))]
pub(super) async fn list_nodes(
    State(api): State<Api>,
    q: Result<Query<NodesQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<NodeView2>>> {
    let Query(q) = q.map_err(bad_query)?;
    let mut nodes = api.cluster.nodes();
    if !q.history {
        for n in &mut nodes {
            let newest = n.usage.pop();
            n.usage = newest.into_iter().collect();
        }
    }
    Ok(Json(nodes))
}

#[utoipa::path(get, path = "/v1/nodes/{name}", params(("name" = String, Path)), responses((status = 200, body = NodeView2), (status = 404, body = ErrorBody)))]
pub(super) async fn get_node(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> ApiResult<Json<NodeView2>> {
    api.cluster.node(&name).map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("node {name} not found"),
        )
    })
}

pub(super) async fn set_admin(
    api: &Api,
    id: &Identity,
    name: &str,
    admin: NodeAdmin,
) -> ApiResult<Json<NodeView2>> {
    need(id, TokenRole::Operator)?;
    api.cluster.set_node_admin(name, admin).await?;
    get_node(State(api.clone()), Path(name.to_owned())).await
}

#[utoipa::path(post, path = "/v1/nodes/{name}/drain", params(("name" = String, Path)), responses((status = 200, body = NodeView2), (status = 404, body = ErrorBody)))]
pub(super) async fn drain_node(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    Path(name): Path<String>,
) -> ApiResult<Json<NodeView2>> {
    set_admin(&api, &id, &name, NodeAdmin::Draining).await
}

#[utoipa::path(post, path = "/v1/nodes/{name}/cordon", params(("name" = String, Path)), responses((status = 200, body = NodeView2), (status = 404, body = ErrorBody)))]
pub(super) async fn cordon_node(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    Path(name): Path<String>,
) -> ApiResult<Json<NodeView2>> {
    set_admin(&api, &id, &name, NodeAdmin::Cordoned).await
}

#[utoipa::path(post, path = "/v1/nodes/{name}/uncordon", params(("name" = String, Path)), responses((status = 200, body = NodeView2), (status = 404, body = ErrorBody)))]
pub(super) async fn uncordon_node(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    Path(name): Path<String>,
) -> ApiResult<Json<NodeView2>> {
    set_admin(&api, &id, &name, NodeAdmin::Active).await
}

/// Body of `POST /v1/join-tokens`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenRequest {
    /// Lifetime, seconds (60 ..= 604800, one week). Default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 60, maximum = 604800)]
    pub ttl_secs: Option<u64>,
    /// The only node the token admits (a host joined again). Default: any node not
    /// registered yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^[a-z]([a-z0-9-]*[a-z0-9])?$", max_length = 63)]
    pub node: Option<String>,
}

#[utoipa::path(post, path = "/v1/join-tokens", request_body = JoinTokenRequest,
    responses((status = 201, body = crate::cluster::JoinToken), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn create_join_token(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<crate::cluster::JoinToken>)> {
    need(&id, TokenRole::Admin)?;
    let req: JoinTokenRequest = parse_body(body)?;
    let ttl = req.ttl_secs.unwrap_or(3600);
    if !(60..=604_800).contains(&ttl) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "ttl_secs must be 60 ..= 604800 (one minute to one week)",
        ));
    }
    if let Some(n) = &req.node {
        mofang_common::ids::validate_dns_label("node", n, 63).map_err(|e| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.to_string())
        })?;
    }
    let token = api
        .cluster
        .create_join_token(ttl.saturating_mul(1000), req.node, &id.name)
        .await?;
    Ok((StatusCode::CREATED, Json(token)))
}

#[utoipa::path(post, path = "/v1/nodes/{name}/revoke", params(("name" = String, Path, pattern = r"^[a-z]([a-z0-9-]*[a-z0-9])?$", max_length = 63)),
    responses((status = 200, body = crate::cluster::Revocation), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn revoke_node(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    Path(name): Path<String>,
) -> ApiResult<Json<crate::cluster::Revocation>> {
    need(&id, TokenRole::Admin)?;
    Ok(Json(api.cluster.revoke_node(&name, &id.name).await?))
}

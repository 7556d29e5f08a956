//! Day-2 operations on one instance, and the engines' parameter catalogue.

use super::*;
use crate::auth::Identity;
use crate::config::TokenRole;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// `POST /v1/instances/{name}/operations`: the type and its own fields; a client sends only
/// the fields set (absent: the default, or not the operation's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOperation {
    /// The operation: `restart` (rolling), `stop`, `start`, `rebuild` (with `member`),
    /// `switchover` (`member`: the target), `scale` (with `replicas`), `resize` (with `cpu`,
    /// `memory` or both), `reconfigure` (with `settings`), `expand` (with `disk`), `upgrade`
    /// (with `version`).
    #[serde(rename = "type")]
    pub kind: crate::ops::OpKind,
    /// The member a `rebuild` is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// `rebuild`: the node the member moves to (its container and volume made anew there,
    /// seeded as a rebuild is); absent: rebuilt where it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// `scale`: the replica count wanted (1 ..= 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 8)]
    pub replicas: Option<u32>,
    /// `resize`: CPU cores of each member (0.1 ..= 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.1, maximum = 64)]
    pub cpu: Option<f64>,
    /// `resize`: memory of each member, MiB (64 ..= 1048576).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 64, maximum = 1048576)]
    pub memory: Option<u64>,
    /// `reconfigure`: parameter values by name (`GET /v1/engines` lists them); numbers may
    /// be given as JSON numbers or strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub settings: Option<BTreeMap<String, serde_json::Value>>,
    /// `expand`: disk of each member, MiB (64 ..= 67108864), more than now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 64, maximum = 67108864)]
    pub disk: Option<u64>,
    /// `upgrade`: the engine version, the next one of the engine's ladder (`GET /v1/engines`
    /// lists the versions, newest first; one rung at a time, never down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Fails after this long (60 ..= 86400 s). Default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 60, maximum = 86400)]
    pub timeout_s: Option<i64>,
}

impl NewOperation {
    /// An operation of `kind` with no field of its own set.
    pub fn new(kind: crate::ops::OpKind) -> Self {
        NewOperation {
            kind,
            member: None,
            node: None,
            replicas: None,
            cpu: None,
            memory: None,
            settings: None,
            disk: None,
            version: None,
            timeout_s: None,
        }
    }
}

#[utoipa::path(post, path = "/v1/instances/{name}/operations", params(("name" = String, Path)), request_body = NewOperation,
    responses((status = 202, body = crate::ops::Operation), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn start_operation(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<crate::ops::Operation>)> {
    need(&id, TokenRole::Operator)?;
    let req: NewOperation = parse_body(body)?;
    let timeout_ms = req.timeout_s.map(|s| s.saturating_mul(1000));
    let settings = match req.settings {
        None => None,
        Some(m) => {
            let mut out = BTreeMap::new();
            for (k, v) in m {
                let v = match v {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Number(n) => n.to_string(),
                    other => {
                        return Err(ApiError::new(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "invalid",
                            format!("settings.{k}: {other} is not a number or a string"),
                        ))
                    }
                };
                out.insert(k, v);
            }
            Some(out)
        }
    };
    let args = crate::ops::OpArgs {
        member: req.member,
        node: req.node,
        replicas: req.replicas,
        cpu: req.cpu,
        memory: req.memory,
        settings,
        disk: req.disk,
        version: req.version,
    };
    let op = api
        .cluster
        .start_operation(&name, req.kind, args, timeout_ms, &id.name)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(op)))
}

#[utoipa::path(get, path = "/v1/instances/{name}/operations", params(("name" = String, Path)),
    responses((status = 200, body = [crate::ops::Operation])))]
pub(super) async fn list_operations(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<crate::ops::Operation>>> {
    Ok(Json(api.cluster.operations_of(&name).await?))
}

#[utoipa::path(get, path = "/v1/operations/{id}", params(("id" = String, Path)),
    responses((status = 200, body = crate::ops::Operation), (status = 404, body = ErrorBody)))]
pub(super) async fn get_operation(
    State(api): State<Api>,
    Path(op): Path<String>,
) -> ApiResult<Json<crate::ops::Operation>> {
    Ok(Json(api.cluster.operation(&op).await?))
}

#[utoipa::path(post, path = "/v1/operations/{id}/cancel", params(("id" = String, Path)),
    responses((status = 200, body = crate::ops::Operation), (status = 404, body = ErrorBody)))]
pub(super) async fn cancel_operation(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    Path(op): Path<String>,
) -> ApiResult<Json<crate::ops::Operation>> {
    need(&id, TokenRole::Operator)?;
    Ok(Json(api.cluster.cancel_operation(&op, &id.name).await?))
}

/// One settable engine parameter (`reconfigure`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EngineParameter {
    /// The engine's own name.
    pub name: String,
    /// `integer` or `enum`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Integers: the smallest allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    /// Integers: the largest allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
    /// Enums: the allowed words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Unit of an integer, empty if none.
    pub unit: String,
    /// True: applied live on every member; false: applied by a rolling restart.
    pub dynamic: bool,
    /// One line.
    pub description: String,
}

/// An engine this build runs: its versions and settable parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EngineView {
    /// `mariadb` or `redis`.
    pub engine: String,
    /// Versions, newest first.
    pub versions: Vec<String>,
    /// What `reconfigure` may set.
    pub parameters: Vec<EngineParameter>,
}

/// The engines, their versions and parameters.
pub fn engine_views() -> Vec<EngineView> {
    use mofang_common::params::{catalogue, ParamType};
    use mofang_common::EngineKind;
    [EngineKind::Mariadb, EngineKind::Redis]
        .into_iter()
        .map(|e| EngineView {
            engine: e.to_string(),
            versions: e
                .supported_versions()
                .iter()
                .map(|v| (*v).to_owned())
                .collect(),
            parameters: catalogue(e)
                .iter()
                .map(|p| {
                    let (kind, min, max, values) = match p.ty {
                        ParamType::Int { min, max } => ("integer", Some(min), Some(max), vec![]),
                        ParamType::Enum(w) => (
                            "enum",
                            None,
                            None,
                            w.iter().map(|w| (*w).to_owned()).collect(),
                        ),
                    };
                    EngineParameter {
                        name: p.name.to_owned(),
                        kind: kind.to_owned(),
                        min,
                        max,
                        values,
                        unit: p.unit.to_owned(),
                        dynamic: p.dynamic,
                        description: p.description.to_owned(),
                    }
                })
                .collect(),
        })
        .collect()
}

#[utoipa::path(get, path = "/v1/engines",
    responses((status = 200, body = [EngineView])))]
pub(super) async fn engines() -> Json<Vec<EngineView>> {
    Json(engine_views())
}

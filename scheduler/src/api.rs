//! REST API v1 (JSON, bearer tokens, audit of every mutating request, OpenAPI 3 document
//! generated from these handlers at `/v1/openapi.json`).

use crate::auth::{Identity, Tokens};
use crate::backup::Backup;
use crate::cluster::{self, BackupRepoView, Cluster, InstanceView, MemberView, NodeView2};
use crate::config::TokenRole;
use crate::model::{
    now_ms, AuditEntry, Credentials, Event, InstanceSpec, NodeAdmin, NodeState, PlacementSpec,
    Resources, Strategy,
};
use crate::secrets::{KeyStatus, KeyringStatus, Rotation, SealedStore};
use crate::store;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::error;
use utoipa::{OpenApi, ToSchema};

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct Api {
    /// The cluster.
    pub cluster: Arc<Cluster>,
    /// Known tokens.
    pub tokens: Arc<Tokens>,
    /// The sealing store and its keyrings (`/v1/keyring`); `None` in tests of other routes.
    pub sealed: Option<Arc<SealedStore>>,
    /// TLS material (`None`: plain HTTP); a follower forwards to the leader over TLS.
    pub tls: Option<Arc<crate::tls::Tls>>,
}

/// The error body: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and message of an error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable code, e.g. `unplaceable`.
    pub code: String,
    /// What went wrong, for a person.
    pub message: String,
}

/// An API error with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds for a `Retry-After` header (a 503 the client should retry).
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.into(),
                message: self.message,
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        resp
    }
}

impl From<cluster::Error> for ApiError {
    fn from(e: cluster::Error) -> Self {
        use cluster::Error as E;
        match &e {
            E::Invalid(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.to_string())
            }
            E::Unplaceable(_) => ApiError::new(StatusCode::CONFLICT, "unplaceable", e.to_string()),
            E::WarmingUp { retry_after, .. } => ApiError {
                retry_after: Some(cluster::retry_after_secs(*retry_after)),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "leader_warming_up",
                    e.to_string(),
                )
            },
            E::AlreadyExists(_) => {
                ApiError::new(StatusCode::CONFLICT, "already_exists", e.to_string())
            }
            E::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            E::Refused(r) => ApiError::new(StatusCode::CONFLICT, r.code(), r.to_string()),
            E::Rotation(r) => {
                let status = match r {
                    crate::rotation::Refusal::InProgress { .. } => StatusCode::CONFLICT,
                    crate::rotation::Refusal::GraceTooLong { .. } => {
                        StatusCode::UNPROCESSABLE_ENTITY
                    }
                };
                ApiError::new(status, r.code(), r.to_string())
            }
            E::RepoRefused(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "repo_check_failed",
                e.to_string(),
            ),
            E::OperationRunning { .. } => {
                ApiError::new(StatusCode::CONFLICT, "operation_running", e.to_string())
            }
            E::NotReady(_) => {
                ApiError::new(StatusCode::CONFLICT, "instance_not_ready", e.to_string())
            }
            E::BackupRunning { .. } => {
                ApiError::new(StatusCode::CONFLICT, "backup_running", e.to_string())
            }
            E::VerifyRunning(_) => {
                ApiError::new(StatusCode::CONFLICT, "verify_running", e.to_string())
            }
            E::NoBackupMember(_) => {
                ApiError::new(StatusCode::CONFLICT, "no_backup_member", e.to_string())
            }
            E::RestoreRefused(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "restore_refused",
                e.to_string(),
            ),
            E::RepoFailed(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "repo_unavailable",
                e.to_string(),
            ),
            E::Store(store::Error::Conflict { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", format!("{e}; retry"))
            }
            E::Store(_) => {
                error!(error = %e, "store failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the state store failed; nothing was changed",
                )
            }
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Parses a JSON body strictly: 413 over 1 MiB, 400 for bad JSON, 422 for unknown fields
/// or wrong types — always with a JSON reason.
fn parse_body<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> ApiResult<T> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request body over {MAX_BODY} bytes"),
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text())
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.to_string())
            }
            _ => ApiError::new(StatusCode::BAD_REQUEST, "bad_json", e.to_string()),
        }
    })
}

fn need(id: &Identity, role: TokenRole) -> ApiResult<()> {
    if id.role >= role {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token '{}' has role {:?}; {:?} is needed",
                id.name, id.role, role
            )
            .to_lowercase(),
        ))
    }
}

// ---- handlers ----------------------------------------------------------------------------

/// Health of the scheduler.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// True on the scheduler that leads (acts and serves the API); followers redirect.
    pub leader: bool,
}

#[utoipa::path(get, path = "/v1/health", responses((status = 200, body = Health)), security(()))]
async fn health(State(api): State<Api>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        leader: api.cluster.is_active(),
    })
}

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
async fn list_nodes(
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
async fn get_node(State(api): State<Api>, Path(name): Path<String>) -> ApiResult<Json<NodeView2>> {
    api.cluster.node(&name).map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("node {name} not found"),
        )
    })
}

async fn set_admin(
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
async fn drain_node(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    Path(name): Path<String>,
) -> ApiResult<Json<NodeView2>> {
    set_admin(&api, &id, &name, NodeAdmin::Draining).await
}

#[utoipa::path(post, path = "/v1/nodes/{name}/cordon", params(("name" = String, Path)), responses((status = 200, body = NodeView2), (status = 404, body = ErrorBody)))]
async fn cordon_node(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    Path(name): Path<String>,
) -> ApiResult<Json<NodeView2>> {
    set_admin(&api, &id, &name, NodeAdmin::Cordoned).await
}

#[utoipa::path(post, path = "/v1/nodes/{name}/uncordon", params(("name" = String, Path)), responses((status = 200, body = NodeView2), (status = 404, body = ErrorBody)))]
async fn uncordon_node(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    Path(name): Path<String>,
) -> ApiResult<Json<NodeView2>> {
    set_admin(&api, &id, &name, NodeAdmin::Active).await
}

#[utoipa::path(post, path = "/v1/instances", request_body = InstanceSpec,
    responses((status = 201, body = InstanceView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, description = "a new leader has not heard from the nodes the placement needs yet (`leader_warming_up`, with Retry-After), or the store failed", body = ErrorBody)))]
async fn create_instance(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<InstanceView>)> {
    need(&id, TokenRole::Operator)?;
    let spec: InstanceSpec = parse_body(body)?;
    let name = spec.name.clone();
    // Members' certificates are signed by this scheduler's CA (SignMemberCertificate).
    let can_sign = api.tls.as_ref().is_some_and(|t| t.current().ca.is_some());
    if spec.tls.is_on() && !can_sign {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "tls_unavailable",
            format!(
                "tls: {} needs the scheduler to sign the members' certificates, and it holds \
                 no CA key (tls.ca_key_file; TLS must not be disabled)",
                spec.tls
            ),
        ));
    }
    api.cluster.create_instance(spec).await?;
    let view = api.cluster.instance(&name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("instance {name} vanished"),
        )
    })?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Query of `GET /v1/instances`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct InstanceQuery {
    /// Label selector: `k=v,k2=v2` (all equal), `k` (present), `k!=v`.
    #[serde(default)]
    pub selector: Option<String>,
}

#[utoipa::path(get, path = "/v1/instances", params(InstanceQuery), responses((status = 200, body = [InstanceView]), (status = 422, body = ErrorBody)))]
async fn list_instances(
    State(api): State<Api>,
    q: Result<Query<InstanceQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<InstanceView>>> {
    let Query(q) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let all = api.cluster.instances();
    let Some(sel) = q.selector.filter(|s| !s.is_empty()) else {
        return Ok(Json(all));
    };
    let mut out = Vec::new();
    for v in all {
        if cluster::matches_selector(&v.spec.labels, &sel)? {
            out.push(v);
        }
    }
    Ok(Json(out))
}

/// Body of `PATCH /v1/instances/{name}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstancePatch {
    /// Labels to set; `null` removes one (JSON merge patch).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, Option<String>>,
    /// The backup policy, replaced whole; `null` removes it; absent: unchanged.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<crate::backup::schedule::BackupPolicy>)]
    pub backup: Option<Option<crate::backup::schedule::BackupPolicy>>,
    /// Database traffic TLS, changed on the running instance (MariaDB; docs/security.md):
    /// `off` <-> `optional`/`required` restarts the members one at a time, replicas first (a
    /// rolling restart operation); `optional` <-> `required` is set live. Absent: unchanged.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub tls: Option<mofang_common::DbTls>,
}

/// A field given (even as `null`) is `Some`: tells `null` from absent in a merge patch.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[utoipa::path(patch, path = "/v1/instances/{name}", params(("name" = String, Path)), request_body = InstancePatch,
    responses((status = 200, body = InstanceView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn patch_instance(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<InstanceView>> {
    need(&id, TokenRole::Operator)?;
    let req: InstancePatch = parse_body(body)?;
    if let Some(tls) = req.tls.filter(|t| t.is_on()) {
        // Members' certificates are signed by this scheduler's CA, as at creation.
        let can_sign = api.tls.as_ref().is_some_and(|t| t.current().ca.is_some());
        let was_on = api
            .cluster
            .instance(&name)
            .is_some_and(|v| v.spec.tls.is_on());
        if !can_sign && !was_on {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "tls_unavailable",
                format!(
                    "tls: {tls} needs the scheduler to sign the members' certificates, and it \
                     holds no CA key (tls.ca_key_file; TLS must not be disabled)"
                ),
            ));
        }
    }
    api.cluster
        .patch_instance(&name, &req.labels, req.backup, req.tls, &id.name)
        .await?;
    api.cluster.instance(&name).map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("instance {name} vanished"),
        )
    })
}

#[utoipa::path(get, path = "/v1/instances/{name}", params(("name" = String, Path)), responses((status = 200, body = InstanceView), (status = 404, body = ErrorBody)))]
async fn get_instance(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> ApiResult<Json<InstanceView>> {
    api.cluster.instance(&name).map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("instance {name} not found"),
        )
    })
}

#[utoipa::path(get, path = "/v1/instances/{name}/parameters", params(("name" = String, Path)),
    description = "Desired (set by `reconfigure`) against effective (what each member's server runs) engine parameters, per member, with any drift.",
    responses((status = 200, body = crate::ops::drift::ParametersView), (status = 404, body = ErrorBody)))]
async fn get_parameters(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> ApiResult<Json<crate::ops::drift::ParametersView>> {
    api.cluster.parameters(&name).map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("instance {name} not found"),
        )
    })
}

/// Body of a switchover or failover request.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    /// Member to promote; default: the most advanced eligible replica.
    #[serde(default)]
    pub target: Option<String>,
}

/// Body of `PUT /v1/instances/{name}/auto-failover`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoFailover {
    /// On or off.
    pub enabled: bool,
}

fn parse_optional<T: serde::de::DeserializeOwned + Default>(
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<T> {
    match &body {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => Ok(T::default()),
        _ => parse_body(body),
    }
}

#[utoipa::path(post, path = "/v1/instances/{name}/switchover", params(("name" = String, Path)), request_body = PromoteRequest,
    responses((status = 200, body = InstanceView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn switchover(
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
async fn failover(
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
async fn failover_ack(
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
async fn auto_failover(
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
#[derive(Serialize, ToSchema)]
pub struct Resumed {
    /// False: automatic failover runs again.
    pub mass_hold: bool,
}

#[utoipa::path(post, path = "/v1/failover/resume", responses((status = 200, body = Resumed)))]
async fn failover_resume(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
) -> ApiResult<Json<Resumed>> {
    need(&id, TokenRole::Operator)?;
    api.cluster.resume_failover().await;
    Ok(Json(Resumed {
        mass_hold: api.cluster.mass_hold(),
    }))
}

fn keyring_of(api: &Api) -> ApiResult<&Arc<SealedStore>> {
    api.sealed.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_keyring",
            "this scheduler has no keyring",
        )
    })
}

/// The data keyring: its keys, the active one, and how many stored secrets each seals.
#[utoipa::path(get, path = "/v1/keyring", responses((status = 200, body = KeyringStatus), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn keyring_status(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
) -> ApiResult<Json<KeyringStatus>> {
    need(&id, TokenRole::Admin)?;
    let sealed = keyring_of(&api)?;
    Ok(Json(sealed.status().await.map_err(cluster::Error::Store)?))
}

/// Rotates the data keyring: a new key seals from now on, every stored secret is sealed
/// again with it, and older keys that seal nothing any more are retired (listed in the
/// answer, and by a `key_retired` event).
#[utoipa::path(post, path = "/v1/keyring/rotate", responses((status = 200, body = Rotation), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn keyring_rotate(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
) -> ApiResult<Json<Rotation>> {
    need(&id, TokenRole::Admin)?;
    let sealed = keyring_of(&api)?;
    Ok(Json(crate::secrets::rotate(&api.cluster, sealed).await?))
}

/// The root keyring after `POST /v1/keyring/rotate-root`.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct RootRotation {
    /// The new root key: it seals the data keyring in the store now.
    pub root_key: u32,
    /// Root keys removed from the leader's `keyring_file`.
    pub retired_root_keys: Vec<u32>,
    /// What to do next.
    pub next: String,
}

/// Rotates the root keyring file of the leading scheduler: a new root key seals the data
/// keyring in the store, older root keys are removed from the file. Copy the file to every
/// other scheduler (docs/secrets.md).
#[utoipa::path(post, path = "/v1/keyring/rotate-root", responses((status = 200, body = RootRotation), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn keyring_rotate_root(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
) -> ApiResult<Json<RootRotation>> {
    need(&id, TokenRole::Admin)?;
    let sealed = keyring_of(&api)?;
    let (root_key, retired_root_keys) = sealed
        .vault()
        .rotate_root(sealed.inner().as_ref())
        .await
        .map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "keyring_unavailable",
            e.to_string(),
        )
    })?;
    Ok(Json(RootRotation {
        root_key,
        retired_root_keys,
        next: "copy the leader's keyring_file to every other scheduler of the cluster (mode \
               0600, owned by the service user); each reads it when it next needs it"
            .into(),
    }))
}

/// Scheduler metrics (Prometheus text): failover counters and the last failover duration,
/// binlog archive lag and readiness, backup health per instance.
async fn metrics(State(api): State<Api>) -> Response {
    let mut body = api.cluster.counters.render();
    body.push_str(&format!(
        "# HELP mofang_failover_mass_hold 1 while the mass-failure guard holds automatic failover.
         # TYPE mofang_failover_mass_hold gauge
         mofang_failover_mass_hold {}
",
        u8::from(api.cluster.mass_hold())
    ));
    body.push_str(&api.cluster.pitr_metrics());
    body.push_str(&api.cluster.schedule_metrics());
    body.push_str(&api.cluster.backup_metrics().await);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Answer to a delete.
#[derive(Serialize, ToSchema)]
pub struct Deleted {
    /// The instance.
    pub name: String,
    /// `deleting`: agents remove containers, then volumes.
    pub status: String,
}

#[utoipa::path(delete, path = "/v1/instances/{name}", params(("name" = String, Path)), responses((status = 202, body = Deleted), (status = 404, body = ErrorBody)))]
async fn delete_instance(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<Deleted>)> {
    need(&id, TokenRole::Operator)?;
    api.cluster.delete_instance(&name).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Deleted {
            name,
            status: "deleting".into(),
        }),
    ))
}

/// An instance's credentials, and the CA its members' certificates chain to.
#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialsView {
    /// The passwords.
    #[serde(flatten)]
    pub credentials: Credentials,
    /// The instance's database traffic TLS: `off`, `optional` or `required`.
    pub tls: String,
    /// With TLS on: the cluster CA (PEM) that signs the members' certificates. A client
    /// verifies a member's certificate against it with the member's address as the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

#[utoipa::path(get, path = "/v1/instances/{name}/credentials", params(("name" = String, Path)), responses((status = 200, body = CredentialsView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn credentials(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    Path(name): Path<String>,
) -> ApiResult<Json<CredentialsView>> {
    need(&id, TokenRole::Admin)?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("instance {name} not found"),
        )
    };
    let credentials = api.cluster.credentials(&name).ok_or_else(not_found)?;
    let tls = api.cluster.instance(&name).ok_or_else(not_found)?.spec.tls;
    let ca_pem = tls
        .is_on()
        .then(|| api.tls.as_ref().map(|t| t.current().ca_pem.clone()))
        .flatten();
    Ok(Json(CredentialsView {
        credentials,
        tls: tls.to_string(),
        ca_pem,
    }))
}

/// An account whose password `POST /v1/instances/{name}/credentials/rotate` changes.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RotateAccount {
    /// `mofang_admin`, the agents' account.
    Admin,
    /// `mofang_repl`, replication.
    Repl,
    /// `mofang_monitor`, metrics.
    Monitor,
    /// `app`, applications.
    App,
}

impl From<RotateAccount> for mofang_common::rotation::Account {
    fn from(a: RotateAccount) -> Self {
        use mofang_common::rotation::Account;
        match a {
            RotateAccount::Admin => Account::Admin,
            RotateAccount::Repl => Account::Repl,
            RotateAccount::Monitor => Account::Monitor,
            RotateAccount::App => Account::App,
        }
    }
}

/// Body of `POST /v1/instances/{name}/credentials/rotate`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// The account whose password changes.
    pub account: RotateAccount,
    /// How long the old password stays accepted after the new one is in use, seconds
    /// (0 ..= 604800, a week). Default 0: dropped as soon as every member uses the new one.
    #[serde(default)]
    pub grace_s: Option<u64>,
}

#[utoipa::path(post, path = "/v1/instances/{name}/credentials/rotate", params(("name" = String, Path)), request_body = RotateRequest,
    responses((status = 202, body = InstanceView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn rotate_credentials(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    extensions: axum::http::Extensions,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<InstanceView>)> {
    need(&id, TokenRole::Admin)?;
    let req: RotateRequest = parse_body(body)?;
    let account = mofang_common::rotation::Account::from(req.account);
    let grace_s = req.grace_s.unwrap_or(0);
    let grace_ms = grace_s.checked_mul(1000).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("grace_s {grace_s} is too large"),
        )
    })?;
    api.cluster
        .rotate_credentials(&name, account, grace_ms)
        .await?;
    // The audit log names the account (the request's own entries name only the path);
    // never a password.
    let entry = AuditEntry {
        id: 0,
        at_ms: now_ms(),
        who: id.name.clone(),
        source: extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.to_string())
            .unwrap_or_default(),
        action: "rotate credentials".into(),
        target: format!("instances/{name}/credentials/{account}"),
        status: StatusCode::ACCEPTED.as_u16(),
        result: format!("started: account {account}, grace {grace_s} s"),
    };
    if let Err(e) = api.cluster.store().append_audit(&entry).await {
        error!(error = %e, "could not record a credential rotation in the audit log");
    }
    let view = api.cluster.instance(&name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("instance {name} vanished"),
        )
    })?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

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
fn one_direction(since: Option<u64>, before: Option<u64>) -> ApiResult<()> {
    match (since, before) {
        (Some(_), Some(_)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            "since and before read in opposite directions: give one",
        )),
        _ => Ok(()),
    }
}

fn bad_query(e: axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text())
}

#[utoipa::path(get, path = "/v1/events", params(EventQuery), responses((status = 200, body = [Event])))]
async fn events(
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

/// Filters of `GET /v1/audit`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only entries with a larger id (oldest first from there).
    pub since: Option<u64>,
    /// Only entries with a smaller id: the newest `limit` of them, oldest first (not with
    /// `since`).
    pub before: Option<u64>,
    /// At most this many (default 1000, max 10000).
    pub limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/audit", params(AuditQuery), responses((status = 200, body = [AuditEntry]), (status = 403, body = ErrorBody)))]
async fn audit(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    need(&id, TokenRole::Admin)?;
    let Query(q) = q.map_err(bad_query)?;
    one_direction(q.since, q.before)?;
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let store = api.cluster.store();
    let entries = match q.before {
        Some(before) => store.audit_before(before, limit).await,
        None => store.audit(q.since.unwrap_or(0), limit).await,
    }
    .map_err(cluster::Error::Store)?;
    Ok(Json(entries))
}

/// Body of `POST /v1/join-tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenRequest {
    /// Lifetime, seconds (60 ..= 604800, one week). Default 3600.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// The only node the token admits (a host joined again). Default: any node not
    /// registered yet.
    #[serde(default)]
    pub node: Option<String>,
}

#[utoipa::path(post, path = "/v1/join-tokens", request_body = JoinTokenRequest,
    responses((status = 201, body = crate::cluster::JoinToken), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_join_token(
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

#[utoipa::path(post, path = "/v1/nodes/{name}/revoke", params(("name" = String, Path)),
    responses((status = 200, body = crate::cluster::Revocation), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn revoke_node(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    Path(name): Path<String>,
) -> ApiResult<Json<crate::cluster::Revocation>> {
    need(&id, TokenRole::Admin)?;
    Ok(Json(api.cluster.revoke_node(&name, &id.name).await?))
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
}

// ---- auth and audit ----------------------------------------------------------------------

/// Resolves the bearer token into an `Identity` (401 without a valid one).
async fn authenticate(State(api): State<Api>, mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match token.and_then(|t| api.tokens.check(t)) {
        Some(id) => {
            req.extensions_mut().insert(id.clone());
            next.run(req).await
        }
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid `Authorization: Bearer <token>` is needed",
        )
        .into_response(),
    }
}

/// Appends every mutating request to the audit log: an entry before it runs (if that cannot
/// be written the request is refused with 503 and nothing happens) and one with its result.
async fn audit_mw(State(api): State<Api>, req: Request, next: Next) -> Response {
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

// ---- backup repositories -----------------------------------------------------------------

/// Body of `POST /v1/backup-repos`: `name` and the repository's fields, `kind` first
/// (`s3`: `endpoint`, `bucket`, `prefix`, `region`, `access_key_id`, `secret_access_key`,
/// `path_style`; `fs`: `path`), and `encrypt`. Unknown fields are refused.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewBackupRepo {
    /// Name (a DNS label).
    pub name: String,
    /// `s3` or `fs`.
    pub kind: String,
    /// Client-side encryption of every backup and archived binlog stored in it (default
    /// false). The scheduler makes a random repository key unless `encryption_key` gives one
    /// (32 bytes, base64url without padding: the same key on another cluster, or after the
    /// repository was deleted, opens its backups). Fixed for the repository's life.
    #[serde(default)]
    pub encrypt: bool,
    /// With `encrypt`: the repository key to use rather than a new one (never shown again).
    #[serde(default)]
    pub encryption_key: Option<String>,
}

#[utoipa::path(post, path = "/v1/backup-repos", request_body = NewBackupRepo,
    responses((status = 201, body = BackupRepoView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn add_backup_repo(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<BackupRepoView>)> {
    need(&id, TokenRole::Admin)?;
    let mut fields: serde_json::Map<String, serde_json::Value> = parse_body(body)?;
    let name = match fields.remove("name") {
        Some(serde_json::Value::String(n)) => n,
        _ => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "name (a string) is required",
            ))
        }
    };
    let encrypt = match fields.remove("encrypt") {
        None => false,
        Some(serde_json::Value::Bool(b)) => b,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "encrypt must be true or false",
            ))
        }
    };
    // Never quoted in an error: serde's messages may echo the value.
    let given_key = match fields.remove("encryption_key") {
        None => None,
        Some(serde_json::Value::String(k)) if encrypt => Some(k),
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "encryption_key is a string, given only with \"encrypt\": true",
            ))
        }
    };
    let mut spec: mofang_common::repo::RepoSpec =
        serde_json::from_value(serde_json::Value::Object(fields)).map_err(|e| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.to_string())
        })?;
    if encrypt {
        use mofang_common::backup_crypt::RepoKey;
        let key = match given_key {
            Some(text) => RepoKey::parse(&text).map_err(|e| {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.to_string())
            })?,
            None => RepoKey::generate(),
        };
        spec.set_encryption_key(Some(mofang_common::repo::Secret(key.to_text().to_string())));
    }
    let repo = api.cluster.add_backup_repo(&name, spec).await?;
    Ok((StatusCode::CREATED, Json(BackupRepoView::from(&repo))))
}

#[utoipa::path(get, path = "/v1/backup-repos", responses((status = 200, body = [BackupRepoView])))]
async fn list_backup_repos(State(api): State<Api>) -> ApiResult<Json<Vec<BackupRepoView>>> {
    let repos = api.cluster.backup_repos().await?;
    Ok(Json(repos.iter().map(BackupRepoView::from).collect()))
}

#[utoipa::path(get, path = "/v1/backup-repos/{name}", params(("name" = String, Path)),
    responses((status = 200, body = BackupRepoView), (status = 404, body = ErrorBody)))]
async fn get_backup_repo(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> ApiResult<Json<BackupRepoView>> {
    let repo = api.cluster.backup_repo(&name).await?;
    Ok(Json(BackupRepoView::from(&repo)))
}

#[utoipa::path(delete, path = "/v1/backup-repos/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_backup_repo(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    need(&id, TokenRole::Admin)?;
    api.cluster.delete_backup_repo(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- day-2 operations (issue 17) -----------------------------------------------------------

/// `POST /v1/instances/{name}/operations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOperation {
    /// The operation: `restart` (rolling), `stop`, `start`, `rebuild` (with `member`),
    /// `switchover` (`member`: the target), `scale` (with `replicas`), `resize` (with `cpu`,
    /// `memory` or both), `reconfigure` (with `settings`), `expand` (with `disk`), `upgrade`
    /// (with `version`).
    #[serde(rename = "type")]
    pub kind: crate::ops::OpKind,
    /// The member a `rebuild` is for.
    #[serde(default)]
    pub member: Option<String>,
    /// `scale`: the replica count wanted (1 ..= 8).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 8)]
    pub replicas: Option<u32>,
    /// `resize`: CPU cores of each member (0.1 ..= 64).
    #[serde(default)]
    #[schema(minimum = 0.1, maximum = 64)]
    pub cpu: Option<f64>,
    /// `resize`: memory of each member, MiB (64 ..= 1048576).
    #[serde(default)]
    #[schema(minimum = 64, maximum = 1048576)]
    pub memory: Option<u64>,
    /// `reconfigure`: parameter values by name (`GET /v1/engines` lists them); numbers may
    /// be given as JSON numbers or strings.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub settings: Option<BTreeMap<String, serde_json::Value>>,
    /// `expand`: disk of each member, MiB (64 ..= 67108864), more than now.
    #[serde(default)]
    #[schema(minimum = 64, maximum = 67108864)]
    pub disk: Option<u64>,
    /// `upgrade`: the engine version, the next one of the engine's ladder (`GET /v1/engines`
    /// lists the versions, newest first; one rung at a time, never down).
    #[serde(default)]
    pub version: Option<String>,
    /// Fails after this long (60 ..= 86400 s). Default 3600.
    #[serde(default)]
    pub timeout_s: Option<i64>,
}

#[utoipa::path(post, path = "/v1/instances/{name}/operations", params(("name" = String, Path)), request_body = NewOperation,
    responses((status = 202, body = crate::ops::Operation), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn start_operation(
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
async fn list_operations(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<crate::ops::Operation>>> {
    Ok(Json(api.cluster.operations_of(&name).await?))
}

#[utoipa::path(get, path = "/v1/operations/{id}", params(("id" = String, Path)),
    responses((status = 200, body = crate::ops::Operation), (status = 404, body = ErrorBody)))]
async fn get_operation(
    State(api): State<Api>,
    Path(op): Path<String>,
) -> ApiResult<Json<crate::ops::Operation>> {
    Ok(Json(api.cluster.operation(&op).await?))
}

#[utoipa::path(post, path = "/v1/operations/{id}/cancel", params(("id" = String, Path)),
    responses((status = 200, body = crate::ops::Operation), (status = 404, body = ErrorBody)))]
async fn cancel_operation(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    Path(op): Path<String>,
) -> ApiResult<Json<crate::ops::Operation>> {
    need(&id, TokenRole::Operator)?;
    Ok(Json(api.cluster.cancel_operation(&op, &id.name).await?))
}

// ---- backups -----------------------------------------------------------------------------

/// Body of `POST /v1/instances/{name}/backups`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBackup {
    /// The backup repository to keep it in.
    pub repo: String,
    /// Take it on this member (it must be healthy).
    #[serde(default)]
    pub member: Option<String>,
    /// Take it on the primary (default: a healthy replica, the primary only if none is).
    #[serde(default)]
    pub primary: bool,
}

#[utoipa::path(post, path = "/v1/instances/{name}/backups", params(("name" = String, Path)),
    request_body = NewBackup,
    responses((status = 202, body = Backup), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_backup(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Backup>)> {
    need(&id, TokenRole::Operator)?;
    let req: NewBackup = parse_body(body)?;
    let ask = crate::backup::plan::Ask {
        member: req.member,
        primary: req.primary,
    };
    let b = api.cluster.request_backup(&name, &req.repo, ask).await?;
    Ok((StatusCode::ACCEPTED, Json(b)))
}

#[utoipa::path(get, path = "/v1/instances/{name}/backups", params(("name" = String, Path)),
    responses((status = 200, body = [Backup]), (status = 404, body = ErrorBody)))]
async fn list_backups(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<Backup>>> {
    Ok(Json(api.cluster.backups_of(&name).await?))
}

#[utoipa::path(get, path = "/v1/backups",
    description = "Every instance's backups (deleted instances' too), oldest first.",
    responses((status = 200, body = [Backup])))]
async fn list_all_backups(State(api): State<Api>) -> ApiResult<Json<Vec<Backup>>> {
    Ok(Json(api.cluster.backups().await?))
}

#[utoipa::path(get, path = "/v1/backup-health",
    description = "Per instance: its newest success, whether its newest backup and verification failed, how overdue a scheduled backup is (the `mofang_backup_*` metrics' figures).",
    responses((status = 200, body = [crate::cluster::BackupHealthView])))]
async fn backup_health(
    State(api): State<Api>,
) -> ApiResult<Json<Vec<crate::cluster::BackupHealthView>>> {
    Ok(Json(api.cluster.backup_health().await?))
}

#[utoipa::path(get, path = "/v1/backups/{id}", params(("id" = String, Path)),
    responses((status = 200, body = Backup), (status = 404, body = ErrorBody)))]
async fn get_backup(State(api): State<Api>, Path(id): Path<String>) -> ApiResult<Json<Backup>> {
    Ok(Json(api.cluster.backup(&id).await?))
}

#[utoipa::path(delete, path = "/v1/backups/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn delete_backup(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    Path(backup): Path<String>,
) -> ApiResult<StatusCode> {
    need(&id, TokenRole::Operator)?;
    api.cluster.delete_backup(&backup).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/backups/{id}/verify", params(("id" = String, Path)),
    responses((status = 202, body = Backup), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn verify_backup(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    Path(backup): Path<String>,
) -> ApiResult<(StatusCode, Json<Backup>)> {
    need(&id, TokenRole::Operator)?;
    let b = api.cluster.request_verify(&backup).await?;
    Ok((StatusCode::ACCEPTED, Json(b)))
}

/// `POST /v1/batches`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBatch {
    /// Label selector of the instances (`k=v,k2=v2`, `k`, `k!=v`), resolved now.
    pub selector: String,
    /// The operation on each: `restart`, `stop`, `start`.
    #[serde(rename = "type")]
    pub kind: crate::ops::OpKind,
    /// Each operation's timeout (60 ..= 86400 s). Default 3600.
    #[serde(default)]
    pub timeout_s: Option<i64>,
    /// At most this many operations at once (1 ..= 100). Default 1.
    #[serde(default = "one")]
    pub max_parallel: usize,
    /// After this many failed operations no new one starts (at least 1). Default 1.
    #[serde(default = "one")]
    pub max_failures: usize,
}

fn one() -> usize {
    1
}

#[utoipa::path(post, path = "/v1/batches", request_body = NewBatch,
    responses((status = 202, body = crate::ops::batch::Batch), (status = 422, body = ErrorBody)))]
async fn start_batch(
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
async fn list_batches(
    State(api): State<Api>,
    q: Result<Query<BatchQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<crate::ops::batch::Batch>>> {
    let Query(q) = q.map_err(bad_query)?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    Ok(Json(api.cluster.batches(limit).await?))
}

#[utoipa::path(get, path = "/v1/batches/{id}", params(("id" = String, Path)),
    responses((status = 200, body = crate::ops::batch::Batch), (status = 404, body = ErrorBody)))]
async fn get_batch(
    State(api): State<Api>,
    Path(b): Path<String>,
) -> ApiResult<Json<crate::ops::batch::Batch>> {
    Ok(Json(api.cluster.batch(&b).await?))
}

#[utoipa::path(post, path = "/v1/batches/{id}/cancel", params(("id" = String, Path)),
    responses((status = 200, body = crate::ops::batch::Batch), (status = 404, body = ErrorBody)))]
async fn cancel_batch(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    Path(b): Path<String>,
) -> ApiResult<Json<crate::ops::batch::Batch>> {
    need(&id, TokenRole::Operator)?;
    Ok(Json(api.cluster.cancel_batch(&b).await?))
}

/// One settable engine parameter (`reconfigure`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EngineParameter {
    /// The engine's own name.
    pub name: String,
    /// `integer` or `enum`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Integers: the smallest allowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    /// Integers: the largest allowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
    /// Enums: the allowed words.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Unit of an integer, empty if none.
    pub unit: String,
    /// True: applied live on every member; false: applied by a rolling restart.
    pub dynamic: bool,
    /// One line.
    pub description: String,
}

/// An engine this build runs: its versions and settable parameters.
#[derive(Debug, Clone, Serialize, ToSchema)]
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
async fn engines() -> Json<Vec<EngineView>> {
    Json(engine_views())
}

// ---- router and OpenAPI ------------------------------------------------------------------

#[derive(OpenApi)]
#[openapi(
    info(title = "Mofang API", version = "1", description = "MariaDB and Redis instances on your own hosts."),
    paths(
        health, list_nodes, get_node, drain_node, cordon_node, uncordon_node, create_instance,
        list_instances, get_instance, get_parameters, delete_instance, credentials, events, audit, switchover,
        failover, failover_ack, auto_failover, failover_resume, keyring_status, keyring_rotate, keyring_rotate_root,
        rotate_credentials,
        create_join_token, revoke_node, add_backup_repo, list_backup_repos, get_backup_repo,
        delete_backup_repo, patch_instance, start_operation, list_operations, get_operation, cancel_operation,
        start_batch, list_batches, get_batch, cancel_batch, engines,
        create_backup, list_backups, list_all_backups, backup_health, get_backup, delete_backup,
        verify_backup
    ),
    components(schemas(
        ErrorBody, ErrorDetail, Health, NodeView2, NodeState, NodeAdmin, InstanceSpec, Resources,
        PlacementSpec, Strategy, crate::model::RestoreRequest, crate::backup::schedule::BackupPolicy, crate::backup::schedule::Retention, crate::model::Restored, InstanceView, MemberView, Credentials, CredentialsView, Deleted, Event, AuditEntry,
        RotateRequest, RotateAccount, crate::cluster::RotationView, crate::cluster::PitrWindow, crate::cluster::RestoreProgress, crate::cluster::RestorePhaseView,
        PromoteRequest, AutoFailover, Resumed, KeyringStatus, KeyStatus, Rotation, RootRotation,
        JoinTokenRequest, crate::cluster::JoinToken, crate::cluster::Revocation,
        NewBackupRepo, BackupRepoView, InstancePatch, NewOperation, NewBatch, crate::ops::batch::Batch, crate::ops::batch::BatchItem, crate::ops::Operation, crate::ops::OpKind,
        crate::ops::OpState, crate::ops::OpStep, EngineView, EngineParameter, crate::ops::StepState, crate::ops::StepAction,
        crate::ops::drift::ParametersView, crate::ops::drift::MemberParameters, crate::ops::drift::ParameterValue,
        crate::ops::drift::ParamState, crate::ops::drift::Drift,
        NewBackup, Backup, crate::cluster::BackupHealthView, crate::backup::BackupState, crate::backup::BackupObject,
        crate::model::Node, crate::model::DiskInfo
    )),
    modifiers(&BearerAuth, &ErrorResponses),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The errors any authenticated operation may answer, whatever its handler, documented on
/// every one (an API fuzzer checks each answer's status against the document): 400 (a body
/// or query that is not what the operation reads), 401 (no or unknown token), 403 (a role too
/// low), 413 (a body over 1 MiB), 422 (a body of the wrong shape) and 503 (no leader, the
/// store or the audit log unavailable). Each is the JSON `ErrorBody`.
struct ErrorResponses;

impl utoipa::Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        const GENERIC: [(&str, &str); 6] = [
            ("400", "The body or the query cannot be read (bad_json, bad_body, bad_query)"),
            ("401", "No or unknown bearer token (unauthorized)"),
            ("403", "The token's role is too low (forbidden)"),
            ("413", "The body is over 1 MiB (body_too_large)"),
            ("422", "The body has the wrong shape or values (invalid)"),
            ("503", "No scheduler leads, or the store or the audit log cannot be written: nothing was changed"),
        ];
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                // Operations open to anyone (`security(())`, e.g. health) answer none of these.
                let public = op
                    .security
                    .as_ref()
                    .is_some_and(|s| s.iter().all(|r| r == &Default::default()));
                if public {
                    continue;
                }
                for (code, why) in GENERIC {
                    op.responses
                        .responses
                        .entry(code.to_owned())
                        .or_insert_with(|| {
                            ResponseBuilder::new()
                                .description(why)
                                .content(
                                    "application/json",
                                    ContentBuilder::new()
                                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                                        .build(),
                                )
                                .build()
                                .into()
                        });
                }
            }
        }
    }
}

/// On a follower, every API request but health is forwarded to the leader (same method,
/// path, token and body) and its answer relayed; 503 while no leader is known. Clients may
/// talk to any scheduler. (A 307 would make clients drop the token: they do not resend
/// credentials to another origin.)
/// Marks a request a follower forwarded to the leader.
const FORWARDED: &str = "x-mofang-forwarded";

async fn leader_only(State(api): State<Api>, req: Request, next: Next) -> Response {
    if api.cluster.is_active() {
        return next.run(req).await;
    }
    // A request is forwarded once at most: a follower that receives a forwarded request
    // (its leader hint is stale: the leader it named restarted on the same address and has
    // not won yet) answers instead of forwarding again, so no request loops between
    // schedulers, or from a scheduler to itself.
    let forwarded = req.headers().contains_key(FORWARDED);
    let leader = api.cluster.leader_hint().filter(|_| !forwarded);
    let Some(leader) = leader else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_leader",
            "no scheduler leads right now; retry shortly",
        )
        .into_response();
    };
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        let builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(90));
        // The leader's certificate is checked against the cluster CA, and this scheduler
        // presents its own (taken once: a CA change needs a restart of followers).
        let builder = match &api.tls {
            Some(t) => builder.use_preconfigured_tls((*t.current().client).clone()),
            None => builder,
        };
        builder.build().unwrap_or_default()
    });
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let url = format!("{}{path}", leader.trim_end_matches('/'));
    let method = req.method().clone();
    let headers = req.headers().clone();
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "request body over 1 MiB",
            )
            .into_response()
        }
    };
    let Ok(m) = reqwest::Method::from_bytes(method.as_str().as_bytes()) else {
        return method_not_allowed().await.into_response();
    };
    let mut fwd = client
        .request(m, &url)
        .header(FORWARDED, "1")
        .body(body.to_vec());
    for h in [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT] {
        if let Some(v) = headers.get(&h).and_then(|v| v.to_str().ok()) {
            fwd = fwd.header(h.as_str(), v);
        }
    }
    match fwd.send().await {
        Ok(r) => {
            let status =
                StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let ctype = r
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .to_owned();
            match r.bytes().await {
                Ok(b) => (status, [(header::CONTENT_TYPE, ctype)], b.to_vec()).into_response(),
                Err(e) => ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "leader_unreachable",
                    format!("the leader at {leader} stopped answering: {e}; the request may or may not have been applied"),
                )
                .into_response(),
            }
        }
        Err(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "leader_unreachable",
            format!("the leader at {leader} is unreachable ({e}); retry shortly"),
        )
        .into_response(),
    }
}

/// The REST API's routes alone (what the console calls in-process).
pub fn v1_router(api: Api) -> Router {
    let protected = Router::new()
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/nodes/{name}", get(get_node))
        .route("/v1/nodes/{name}/drain", post(drain_node))
        .route("/v1/nodes/{name}/cordon", post(cordon_node))
        .route("/v1/nodes/{name}/uncordon", post(uncordon_node))
        .route("/v1/nodes/{name}/revoke", post(revoke_node))
        .route("/v1/join-tokens", post(create_join_token))
        .route("/v1/instances", get(list_instances).post(create_instance))
        .route(
            "/v1/instances/{name}",
            get(get_instance)
                .delete(delete_instance)
                .patch(patch_instance),
        )
        .route("/v1/instances/{name}/credentials", get(credentials))
        .route("/v1/instances/{name}/parameters", get(get_parameters))
        .route(
            "/v1/instances/{name}/credentials/rotate",
            post(rotate_credentials),
        )
        .route("/v1/instances/{name}/switchover", post(switchover))
        .route("/v1/instances/{name}/failover", post(failover))
        .route("/v1/instances/{name}/failover/ack", post(failover_ack))
        .route("/v1/instances/{name}/auto-failover", put(auto_failover))
        .route("/v1/failover/resume", post(failover_resume))
        .route("/v1/keyring", get(keyring_status))
        .route("/v1/keyring/rotate", post(keyring_rotate))
        .route("/v1/keyring/rotate-root", post(keyring_rotate_root))
        .route("/v1/events", get(events))
        .route("/v1/audit", get(audit))
        .route(
            "/v1/backup-repos",
            get(list_backup_repos).post(add_backup_repo),
        )
        .route(
            "/v1/backup-repos/{name}",
            get(get_backup_repo).delete(delete_backup_repo),
        )
        .route(
            "/v1/instances/{name}/operations",
            get(list_operations).post(start_operation),
        )
        .route("/v1/operations/{id}", get(get_operation))
        .route("/v1/operations/{id}/cancel", post(cancel_operation))
        .route("/v1/engines", get(engines))
        .route("/v1/batches", get(list_batches).post(start_batch))
        .route("/v1/batches/{id}", get(get_batch))
        .route("/v1/batches/{id}/cancel", post(cancel_batch))
        .route(
            "/v1/instances/{name}/backups",
            get(list_backups).post(create_backup),
        )
        .route("/v1/backups", get(list_all_backups))
        .route("/v1/backup-health", get(backup_health))
        .route("/v1/backups/{id}", get(get_backup).delete(delete_backup))
        .route("/v1/backups/{id}/verify", post(verify_backup))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(api.clone(), audit_mw))
        .layer(middleware::from_fn_with_state(api.clone(), authenticate))
        .layer(middleware::from_fn_with_state(api.clone(), leader_only));
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .merge(protected)
        .fallback(not_found)
        .with_state(api)
}

/// The router of the REST listener: the API and the web console at `/ui`, which calls the
/// API router in-process with the signed-in user's token (docs/console.md).
pub fn router(api: Api) -> Router {
    let console = crate::console::Console::new(api.clone(), v1_router(api.clone()));
    v1_router(api)
        .merge(crate::console::router(console))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(read_whole_body))
}

/// Bytes of an over-limit body read and dropped before the 413 is sent ([`read_whole_body`]).
const DRAIN_MAX: usize = 64 << 20;
/// How long an over-limit body is drained before the 413 is sent regardless.
const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads a request's whole body (up to [`MAX_BODY`]) before anything answers it. A layer or
/// handler that answers before reading it (a refused token, a path that does not parse, a
/// wrong content type) left the client's bytes unread: the server then closed the connection
/// with data unread, the kernel reset it, and a TLS client still sending saw "EOF occurred in
/// violation of protocol" instead of the answer (schemathesis did, now and then, on POST
/// routes). Bodies here are small JSON documents, so holding one in memory costs nothing.
///
/// A body over the limit is read to its end too and dropped (up to [`DRAIN_MAX`] bytes and
/// [`DRAIN_FOR`]), then answered 413: answering at the first byte over the limit reset the
/// connection under a client still sending, which then saw "connection closed before message
/// completed" instead of the 413 (`bad_requests_get_json_reasons_and_change_nothing` with a
/// 2 MiB body, 2 runs in 7).
async fn read_whole_body(req: Request, next: Next) -> Response {
    use futures::StreamExt;
    let (parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    let mut kept = Vec::new();
    let mut seen = 0usize;
    // The drain's clock starts at the first byte over the limit; a body within it is read
    // at the client's pace, as before.
    let mut until: Option<tokio::time::Instant> = None;
    let complete = loop {
        let next = match until {
            Some(t) => tokio::time::timeout_at(t, stream.next()).await,
            None => Ok(stream.next().await),
        };
        match next {
            Ok(Some(Ok(chunk))) => {
                seen = seen.saturating_add(chunk.len());
                if seen <= MAX_BODY {
                    kept.extend_from_slice(&chunk);
                } else if seen > DRAIN_MAX {
                    break false;
                } else if until.is_none() {
                    kept = Vec::new();
                    until = Some(tokio::time::Instant::now() + DRAIN_FOR);
                }
            }
            Ok(None) => break true,
            // The client went away, or sends too slowly: nothing more to read.
            Ok(Some(Err(_))) | Err(_) => break false,
        }
    };
    if seen > MAX_BODY {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "request body over 1 MiB",
        )
        .into_response();
    }
    if !complete {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            "the request body could not be read to its end",
        )
        .into_response();
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(kept)))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenRole;
    use crate::store::sqlite::SqliteStore;
    use tower::ServiceExt;

    /// An activated scheduler on an in-memory store, with no token accepted.
    async fn api_without_tokens() -> Api {
        let store = Arc::new(SqliteStore::open_in_memory().expect("in-memory store"));
        let cluster = Cluster::load(store, std::time::Duration::from_secs(30))
            .await
            .expect("load");
        cluster.activate().await.expect("activate");
        Api {
            tls: None,
            cluster,
            tokens: Arc::new(Tokens::from_config(&[])),
            sealed: None,
        }
    }

    /// A create refused while a new leader warms up (decision 134): 503 with Retry-After in
    /// whole seconds (rounded up) and the JSON error naming the nodes not heard from.
    #[tokio::test]
    async fn a_leader_warming_up_answers_503_with_retry_after() {
        let e = cluster::Error::WarmingUp {
            unheard: vec!["node-a".into(), "node-b".into()],
            retry_after: std::time::Duration::from_millis(1200),
        };
        let res = ApiError::from(e).into_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[header::RETRY_AFTER], "2");
        let body = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .expect("body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(v["error"]["code"], "leader_warming_up");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("node(s) node-a, node-b") && message.contains("retry in 2s"),
            "{message}"
        );
    }

    /// A request refused before its handler (no token) still has its body read to the end, so
    /// the connection is not reset under a client still sending it.
    #[tokio::test]
    async fn a_refused_request_has_its_body_read_to_the_end() {
        use futures::StreamExt;
        use std::sync::atomic::{AtomicBool, Ordering};
        let api = api_without_tokens().await;
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let chunks = futures::stream::iter(vec![
            Ok::<_, std::io::Error>(Bytes::from_static(b"{\"replicas\":")),
            Ok(Bytes::from_static(b"2}")),
        ])
        .chain(futures::stream::poll_fn(move |_| {
            d.store(true, Ordering::SeqCst);
            std::task::Poll::Ready(None)
        }));
        let req = axum::http::Request::post("/v1/instances/db/operations")
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from_stream(chunks))
            .expect("request");
        let res = router(api).oneshot(req).await.expect("answer");
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert!(
            done.load(Ordering::SeqCst),
            "the body was not read to its end"
        );
    }

    /// A body over the limit is read to its end before the 413 (`read_whole_body`): answered
    /// at the first byte over, the client still sending saw the connection reset instead.
    #[tokio::test]
    async fn an_oversized_body_is_read_to_its_end_before_the_413() {
        use futures::StreamExt;
        use std::sync::atomic::{AtomicBool, Ordering};
        let api = api_without_tokens().await;
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let chunk = Bytes::from(vec![b' '; 64 << 10]);
        let chunks = futures::stream::iter(
            std::iter::repeat_n(chunk, 3 * MAX_BODY / (64 << 10)).map(Ok::<_, std::io::Error>),
        )
        .chain(futures::stream::poll_fn(move |_| {
            d.store(true, Ordering::SeqCst);
            std::task::Poll::Ready(None)
        }));
        let req = axum::http::Request::post("/v1/instances")
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from_stream(chunks))
            .expect("request");
        let res = router(api).oneshot(req).await.expect("answer");
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            done.load(Ordering::SeqCst),
            "the body was not read to its end"
        );
    }

    /// Every authenticated operation documents the errors any operation may answer (an API
    /// fuzzer checks each answer's status against the document); health documents none.
    #[test]
    fn every_authenticated_operation_documents_the_generic_errors() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("json");
        let paths = doc["paths"].as_object().expect("paths");
        let mut checked = 0;
        for (path, item) in paths {
            for (method, op) in item.as_object().expect("item") {
                let codes = op["responses"].as_object().expect("responses");
                if path == "/v1/health" {
                    assert!(!codes.contains_key("401"), "{method} {path}");
                    continue;
                }
                for code in ["400", "401", "403", "413", "422", "503"] {
                    assert!(codes.contains_key(code), "{method} {path} lacks {code}");
                }
                checked += 1;
            }
        }
        assert!(checked > 20, "{checked} operations");
        let rotate = &paths["/v1/instances/{name}/credentials/rotate"]["post"]["responses"];
        assert!(
            rotate["202"].is_object() && rotate["409"].is_object(),
            "{rotate}"
        );
    }

    /// `GET /v1/instances/{name}/parameters` (issue 17): documented with its view, open to a
    /// viewer, 404 JSON for an unknown instance.
    #[tokio::test]
    async fn parameters_of_an_unknown_instance_are_a_json_404_and_documented() {
        let mut api = api_without_tokens().await;
        let mut tokens = Tokens::from_config(&[]);
        tokens.insert("viewer-token-0123456789", "grafana", TokenRole::Viewer);
        api.tokens = Arc::new(tokens);
        let res = router(api)
            .oneshot(
                axum::http::Request::get("/v1/instances/nope/parameters")
                    .header(header::AUTHORIZATION, "Bearer viewer-token-0123456789")
                    .body(axum::body::Body::empty())
                    .expect("request"),
            )
            .await
            .expect("answer");
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        let b = axum::body::to_bytes(res.into_body(), MAX_BODY)
            .await
            .expect("body");
        let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(v["error"]["code"], "not_found", "{v}");
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("json");
        let op = &doc["paths"]["/v1/instances/{name}/parameters"]["get"]["responses"];
        assert!(op["200"].is_object() && op["404"].is_object(), "{op}");
        assert!(doc["components"]["schemas"]["ParametersView"].is_object());
        assert!(doc["components"]["schemas"]["ParamState"].is_object());
    }

    /// HA soak, leader kill (failover.md defect 7): a starting scheduler answered
    /// `leader: true` before its election ran, so clients and agents took it for the leader.
    #[tokio::test]
    async fn a_scheduler_that_has_not_won_says_it_does_not_lead() {
        let store = Arc::new(SqliteStore::open_in_memory().expect("in-memory store"));
        let cluster = Cluster::load(store, std::time::Duration::from_secs(30))
            .await
            .expect("load");
        let app = router(Api {
            tls: None,
            cluster: cluster.clone(),
            tokens: Arc::new(Tokens::from_config(&[])),
            sealed: None,
        });
        let leader = |app: Router| async move {
            let r = app
                .oneshot(
                    axum::http::Request::get("/v1/health")
                        .body(axum::body::Body::empty())
                        .expect("request"),
                )
                .await
                .expect("answer");
            assert_eq!(r.status(), StatusCode::OK);
            let b = axum::body::to_bytes(r.into_body(), MAX_BODY)
                .await
                .expect("body");
            let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
            v["leader"].clone()
        };
        assert_eq!(leader(app.clone()).await, serde_json::json!(false));
        cluster.activate().await.expect("activate");
        assert_eq!(leader(app).await, serde_json::json!(true));
    }

    /// HA soak, leader kill: a scheduler restarted on the leader's address was still named
    /// leader by Consul and forwarded API calls to itself, over and over. A forwarded request
    /// is never forwarded again.
    #[tokio::test]
    async fn a_forwarded_request_is_answered_not_forwarded_again() {
        let store = Arc::new(SqliteStore::open_in_memory().expect("in-memory store"));
        let cluster = Cluster::load(store, std::time::Duration::from_secs(30))
            .await
            .expect("load");
        cluster.deactivate();
        cluster.set_leader_hint(Some("http://127.0.0.1:1".into()));
        let mut tokens = Tokens::from_config(&[]);
        tokens.insert("secret-token-0123456789", "admin", TokenRole::Admin);
        let app = router(Api {
            tls: None,
            cluster,
            tokens: Arc::new(tokens),
            sealed: None,
        });
        let call = |forwarded: bool| {
            let mut b = axum::http::Request::get("/v1/instances")
                .header(header::AUTHORIZATION, "Bearer secret-token-0123456789");
            if forwarded {
                b = b.header(FORWARDED, "1");
            }
            app.clone()
                .oneshot(b.body(axum::body::Body::empty()).expect("request"))
        };
        let code = |r: Response| async move {
            let b = axum::body::to_bytes(r.into_body(), MAX_BODY)
                .await
                .expect("body");
            let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
            v["error"]["code"].as_str().unwrap_or_default().to_owned()
        };
        let direct = call(false).await.expect("answer");
        assert_eq!(direct.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(code(direct).await, "leader_unreachable", "forwarded once");
        let again = call(true).await.expect("answer");
        assert_eq!(again.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(code(again).await, "no_leader", "never forwarded twice");
    }

    /// Database TLS needs the scheduler to sign members' certificates: without a CA key the
    /// request is refused with its reason and nothing is created; a bad value names the field.
    #[tokio::test]
    async fn an_instance_with_tls_needs_a_scheduler_that_signs() {
        let store = Arc::new(SqliteStore::open_in_memory().expect("in-memory store"));
        let cluster = Cluster::load(store, std::time::Duration::from_secs(30))
            .await
            .expect("load");
        cluster.activate().await.expect("activate");
        let mut tokens = Tokens::from_config(&[]);
        tokens.insert("secret-token-0123456789", "admin", TokenRole::Admin);
        let app = router(Api {
            tls: None,
            cluster: cluster.clone(),
            tokens: Arc::new(tokens),
            sealed: None,
        });
        let create = |tls: serde_json::Value| {
            let body = serde_json::json!({"name": "shop", "engine": "mariadb", "version": "10.11",
                "replicas": 0, "resources": {"cpu": 0.5, "memory": 256, "disk": 512}, "tls": tls});
            app.clone().oneshot(
                axum::http::Request::post("/v1/instances")
                    .header(header::AUTHORIZATION, "Bearer secret-token-0123456789")
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(axum::body::Body::from(body.to_string()))
                    .expect("request"),
            )
        };
        let error = |r: Response| async move {
            let status = r.status();
            let b = axum::body::to_bytes(r.into_body(), MAX_BODY)
                .await
                .expect("body");
            let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
            (status, v["error"].clone())
        };
        let (status, e) = error(create(serde_json::json!("required")).await.expect("answer")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
        assert_eq!(e["code"], "tls_unavailable", "{e}");
        assert!(
            e["message"]
                .as_str()
                .unwrap_or_default()
                .contains("tls.ca_key_file"),
            "{e}"
        );
        let (status, e) = error(create(serde_json::json!("always")).await.expect("answer")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
        assert!(
            e["message"]
                .as_str()
                .unwrap_or_default()
                .contains("unknown variant `always`"),
            "{e}"
        );
        assert!(cluster.instances().is_empty(), "nothing created");
    }
}

//! Instances: create, list, show, change labels and policies, delete, parameters, credentials.

use super::*;
use crate::auth::Identity;
use crate::cluster::{self, InstanceView};
use crate::config::TokenRole;
use crate::model::{now_ms, AuditEntry, Credentials, InstanceSpec};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use tracing::error;
use utoipa::ToSchema;

#[utoipa::path(post, path = "/v1/instances", request_body = InstanceSpec,
    responses((status = 201, body = InstanceView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, description = "a new leader has not heard from the nodes the placement needs yet (`leader_warming_up`, with Retry-After), or the store failed", body = ErrorBody)))]
pub(super) async fn create_instance(
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
pub(super) async fn list_instances(
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

/// Body of `PATCH /v1/instances/{name}` (a JSON merge patch): what is absent stays as it
/// is, so a client sends only what it sets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstancePatch {
    /// Labels to set; `null` removes one (JSON merge patch).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, Option<String>>,
    /// The backup policy, replaced whole; `null` removes it; absent: unchanged.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<crate::backup::schedule::BackupPolicy>)]
    pub backup: Option<Option<crate::backup::schedule::BackupPolicy>>,
    /// Database traffic TLS, changed on the running instance (MariaDB; docs/security.md):
    /// `off` <-> `optional`/`required` restarts the members one at a time, replicas first (a
    /// rolling restart operation); `optional` <-> `required` is set live. Absent: unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = super::schema::db_tls)]
    pub tls: Option<mofang_common::DbTls>,
}

/// A field given (even as `null`) is `Some`: tells `null` from absent in a merge patch.
pub(super) fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[utoipa::path(patch, path = "/v1/instances/{name}", params(("name" = String, Path)), request_body = InstancePatch,
    responses((status = 200, body = InstanceView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn patch_instance(
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
pub(super) async fn get_instance(
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
pub(super) async fn get_parameters(
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

/// Answer to a delete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Deleted {
    /// The instance.
    pub name: String,
    /// `deleting`: agents remove containers, then volumes.
    pub status: String,
}

#[utoipa::path(delete, path = "/v1/instances/{name}", params(("name" = String, Path)), responses((status = 202, body = Deleted), (status = 404, body = ErrorBody)))]
pub(super) async fn delete_instance(
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
pub(super) async fn credentials(
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// The account whose password changes.
    pub account: RotateAccount,
    /// How long the old password stays accepted after the new one is in use, seconds
    /// (0 ..= 604800, a week). Default 0: dropped as soon as every member uses the new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 604800)]
    pub grace_s: Option<u64>,
}

#[utoipa::path(post, path = "/v1/instances/{name}/credentials/rotate", params(("name" = String, Path)), request_body = RotateRequest,
    responses((status = 202, body = InstanceView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn rotate_credentials(
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

//! Backup repositories and backups.

use super::*;
use crate::auth::Identity;
use crate::backup::Backup;
use crate::cluster::BackupRepoView;
use crate::config::TokenRole;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of `POST /v1/backup-repos`: `name` and the repository's fields, `kind` first
/// (`s3`: `endpoint`, `bucket`, `prefix`, `region`, `access_key_id`, `secret_access_key`,
/// `path_style`; `fs`: `path`), and `encrypt`. Unknown fields, and another kind's, are refused.
/// The document's schema and the client's body: the handler reads the JSON fields one by one
/// rather than this struct, so that it can refuse a field without quoting a secret.
// The kind's fields are `Option` so that a client leaves out what it does not set (another
// kind's are refused); the document states them as plain strings and booleans, as the kind's
// `RepoSpec` refuses `null` for them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NewBackupRepo {
    /// Name (a DNS label).
    pub name: String,
    /// `s3` or `fs`.
    pub kind: String,
    /// `s3`: endpoint URL, e.g. `http://10.0.0.5:8333`; absent or empty: AWS for `region`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String)]
    pub endpoint: Option<String>,
    /// `s3` (required): bucket name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String)]
    pub bucket: Option<String>,
    /// `s3`: key prefix inside the bucket (no leading or trailing `/` needed). Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String)]
    pub prefix: Option<String>,
    /// `s3`: region. Default `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String)]
    pub region: Option<String>,
    /// `s3` (required): access key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String)]
    pub access_key_id: Option<String>,
    /// `s3` (required): secret access key (never shown again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String)]
    pub secret_access_key: Option<mofang_common::repo::Secret>,
    /// `s3`: path-style addressing (`endpoint/bucket/key`), as S3-compatible stores want;
    /// false: virtual-hosted style (`bucket.endpoint/key`). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = bool)]
    pub path_style: Option<bool>,
    /// `fs` (required): absolute path of a directory that exists at that path on every agent
    /// host and on the scheduler (NFS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String)]
    pub path: Option<String>,
    /// Client-side encryption of every backup and archived binlog stored in it (default
    /// false). The scheduler makes a random repository key unless `encryption_key` gives one
    /// (32 bytes, base64url without padding: the same key on another cluster, or after the
    /// repository was deleted, opens its backups). Fixed for the repository's life.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypt: bool,
    /// With `encrypt`: the repository key to use rather than a new one (never shown again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub encryption_key: Option<mofang_common::repo::Secret>,
}

#[utoipa::path(post, path = "/v1/backup-repos", request_body = NewBackupRepo,
    responses((status = 201, body = BackupRepoView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn add_backup_repo(
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
        // `null` is no key, as the document's nullable field says.
        None | Some(serde_json::Value::Null) => None,
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
pub(super) async fn list_backup_repos(
    State(api): State<Api>,
) -> ApiResult<Json<Vec<BackupRepoView>>> {
    let repos = api.cluster.backup_repos().await?;
    Ok(Json(repos.iter().map(BackupRepoView::from).collect()))
}

#[utoipa::path(get, path = "/v1/backup-repos/{name}", params(("name" = String, Path)),
    responses((status = 200, body = BackupRepoView), (status = 404, body = ErrorBody)))]
pub(super) async fn get_backup_repo(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> ApiResult<Json<BackupRepoView>> {
    let repo = api.cluster.backup_repo(&name).await?;
    Ok(Json(BackupRepoView::from(&repo)))
}

#[utoipa::path(delete, path = "/v1/backup-repos/{name}", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub(super) async fn delete_backup_repo(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    need(&id, TokenRole::Admin)?;
    api.cluster.delete_backup_repo(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Body of `POST /v1/backup-repos/{name}/rotate-key` (optional: without a body, or with no
/// `encryption_key`, the scheduler makes a random key).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRepoKey {
    /// The new repository key to use rather than a random one (32 bytes, base64url without
    /// padding; never shown again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub encryption_key: Option<mofang_common::repo::Secret>,
}

#[utoipa::path(post, path = "/v1/backup-repos/{name}/rotate-key", params(("name" = String, Path)),
    request_body = RotateRepoKey,
    responses((status = 200, body = BackupRepoView), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(super) async fn rotate_repo_key(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<BackupRepoView>> {
    need(&id, TokenRole::Admin)?;
    let req: RotateRepoKey = super::failover::parse_optional(body)?;
    use mofang_common::backup_crypt::RepoKey;
    let key = match req.encryption_key {
        // Never quoted in an error: the parser's message may echo the value.
        Some(text) => RepoKey::parse(&text.0).map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                "encryption_key is not a repository key (32 bytes, base64url without padding)",
            )
        })?,
        None => RepoKey::generate(),
    };
    let repo = api.cluster.rotate_repo_key(&name, key).await?;
    Ok(Json(BackupRepoView::from(&repo)))
}

#[utoipa::path(delete, path = "/v1/backup-repos/{name}/keys/{key_id}",
    params(("name" = String, Path), ("key_id" = String, Path)),
    responses((status = 200, body = BackupRepoView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn retire_repo_key(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    Path((name, key_id)): Path<(String, String)>,
) -> ApiResult<Json<BackupRepoView>> {
    need(&id, TokenRole::Admin)?;
    let repo = api.cluster.retire_repo_key(&name, &key_id).await?;
    Ok(Json(BackupRepoView::from(&repo)))
}

/// Body of `POST /v1/instances/{name}/backups`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBackup {
    /// The backup repository to keep it in.
    #[schema(pattern = r"^[a-z]([a-z0-9-]*[a-z0-9])?$", max_length = 63)]
    pub repo: String,
    /// Take it on this member (it must be healthy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// Take it on the primary (default: a healthy replica, the primary only if none is).
    #[serde(default)]
    pub primary: bool,
}

#[utoipa::path(post, path = "/v1/instances/{name}/backups", params(("name" = String, Path)),
    request_body = NewBackup,
    responses((status = 202, body = Backup), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn create_backup(
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
pub(super) async fn list_backups(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<Backup>>> {
    Ok(Json(api.cluster.backups_of(&name).await?))
}

#[utoipa::path(get, path = "/v1/backups",
    description = "Every instance's backups (deleted instances' too), oldest first.",
    responses((status = 200, body = [Backup])))]
pub(super) async fn list_all_backups(State(api): State<Api>) -> ApiResult<Json<Vec<Backup>>> {
    Ok(Json(api.cluster.backups().await?))
}

#[utoipa::path(get, path = "/v1/backup-health",
    description = "Per instance: its newest success, whether its newest backup and verification failed, how overdue a scheduled backup is (the `mofang_backup_*` metrics' figures).",
    responses((status = 200, body = [crate::cluster::BackupHealthView])))]
pub(super) async fn backup_health(
    State(api): State<Api>,
) -> ApiResult<Json<Vec<crate::cluster::BackupHealthView>>> {
    Ok(Json(api.cluster.backup_health().await?))
}

#[utoipa::path(get, path = "/v1/backups/{id}", params(("id" = String, Path)),
    responses((status = 200, body = Backup), (status = 404, body = ErrorBody)))]
pub(super) async fn get_backup(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> ApiResult<Json<Backup>> {
    Ok(Json(api.cluster.backup(&id).await?))
}

#[utoipa::path(delete, path = "/v1/backups/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub(super) async fn delete_backup(
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
pub(super) async fn verify_backup(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
    Path(backup): Path<String>,
) -> ApiResult<(StatusCode, Json<Backup>)> {
    need(&id, TokenRole::Operator)?;
    let b = api.cluster.request_verify(&backup).await?;
    Ok((StatusCode::ACCEPTED, Json(b)))
}

//! The keyring that seals secrets at rest: status and rotations.

use super::*;
use crate::auth::Identity;
use crate::cluster::{self};
use crate::config::TokenRole;
use crate::secrets::{KeyringStatus, Rotation, SealedStore};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

pub(super) fn keyring_of(api: &Api) -> ApiResult<&Arc<SealedStore>> {
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
pub(super) async fn keyring_status(
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
pub(super) async fn keyring_rotate(
    State(api): State<Api>,
    axum::Extension(id): axum::Extension<Identity>,
) -> ApiResult<Json<Rotation>> {
    need(&id, TokenRole::Admin)?;
    let sealed = keyring_of(&api)?;
    Ok(Json(crate::secrets::rotate(&api.cluster, sealed).await?))
}

/// The root keyring after `POST /v1/keyring/rotate-root`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
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
pub(super) async fn keyring_rotate_root(
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

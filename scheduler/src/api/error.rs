//! Errors of the API: the JSON error body, the mapping from the cluster's errors, and the strict JSON body extractor.

use super::*;
use crate::cluster::{self};
use crate::store;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use tracing::error;
use utoipa::ToSchema;

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
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    message: String,
    /// Seconds for a `Retry-After` header (a 503 the client should retry).
    retry_after: Option<u64>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
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
            E::NoMatch(_) => ApiError::new(StatusCode::NOT_FOUND, "no_match", e.to_string()),
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
            E::KeyInUse(_) => ApiError::new(StatusCode::CONFLICT, "key_in_use", e.to_string()),
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

pub(super) type ApiResult<T> = Result<T, ApiError>;

/// Parses a JSON body strictly: 413 over 1 MiB, 400 for bad JSON, 422 for unknown fields
/// or wrong types — always with a JSON reason.
pub(super) fn parse_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<T> {
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
    let mut value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.to_string())
            }
            _ => ApiError::new(StatusCode::BAD_REQUEST, "bad_json", e.to_string()),
        }
    })?;
    // Every body is a JSON object: serde would also read a struct from an array of its
    // fields in order (`[null, null]`), which the document does not allow.
    if !value.is_object() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "the body must be a JSON object",
        ));
    }
    integral_floats_to_integers(&mut value);
    serde_json::from_value(value)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.to_string()))
}

/// JSON Schema's `integer` includes `3600.0`; serde's integers do not. Numbers written with a
/// fraction of zero that fit an integer are read as that integer (a client that writes every
/// number as a float is not refused); any other number is left as it is.
pub(super) fn integral_floats_to_integers(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0) {
                // Within ±2^53 a float is an exact integer; beyond, it is left a float.
                const EXACT: f64 = 9_007_199_254_740_992.0;
                if f.abs() <= EXACT {
                    *v = Value::from(f as i64);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(integral_floats_to_integers),
        Value::Object(o) => o.values_mut().for_each(integral_floats_to_integers),
        _ => {}
    }
}

pub(super) async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
}

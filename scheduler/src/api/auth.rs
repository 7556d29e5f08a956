//! Bearer tokens: who is calling, and whether their role may.

use super::*;
use crate::auth::Identity;
use crate::config::TokenRole;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub(super) fn need(id: &Identity, role: TokenRole) -> ApiResult<()> {
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

/// Resolves the bearer token into an `Identity` (401 without a valid one).
pub(super) async fn authenticate(State(api): State<Api>, mut req: Request, next: Next) -> Response {
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

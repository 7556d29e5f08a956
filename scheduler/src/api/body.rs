//! The request body, read whole before anything answers; then the request runs to its end
//! whether or not the client stays.

use super::*;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// Bytes of an over-limit body read and dropped before the 413 is sent ([`read_whole_body`]).
pub(super) const DRAIN_MAX: usize = 64 << 20;

/// How long an over-limit body is drained before the 413 is sent regardless.
pub(super) const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(10);

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
///
/// Once read, the request is handled in a task of its own, so a client that goes away
/// (a timeout, a browser on a network change) does not cancel a change halfway (decision 162).
pub(super) async fn read_whole_body(req: Request, next: Next) -> Response {
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
    // From here the request runs to its end even if the client goes away: a handler dropped
    // halfway (a switchover after its fence, before its promotion) would leave the
    // instance halfway (read-only until a restart). The console saw exactly that when
    // Chromium dropped a form post on a network change.
    let req = Request::from_parts(parts, axum::body::Body::from(kept));
    match tokio::spawn(next.run(req)).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::error!(error = %e, "request handler failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the request failed inside the scheduler; see its log",
            )
            .into_response()
        }
    }
}

//! The agent's HTTP server: `GET /metrics` (Prometheus text format or OpenMetrics, by the
//! `Accept` header), `GET /healthz` (alive) and `GET /v1/health` (ready, or why not). A port already in use is retried, never fatal: the
//! agent's first job is keeping its databases running.

use crate::metrics::model::Format;
use crate::metrics::Exporter;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// The routes, for the server and for tests.
pub fn router(exporter: Arc<Exporter>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/health", get(health))
        .with_state(exporter)
}

/// A scrape renders what was last collected: it never waits on a database.
async fn metrics(State(exporter): State<Arc<Exporter>>, headers: HeaderMap) -> Response {
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let body = exporter.render(format).await;
    if body.is_empty() {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics encoding failed\n",
        )
            .into_response();
    }
    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
}

/// Readiness: 200 when ready, 503 with the reasons when not (JSON either way).
async fn health(State(exporter): State<Arc<Exporter>>) -> Response {
    let h = exporter.health().await;
    let status = if h.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(h)).into_response()
}

/// Serves until `shutdown`. Binding is retried every 10 s while the address is unavailable.
/// `extra` routes (the role checks) are served beside `/metrics`.
pub async fn serve(
    addr: SocketAddr,
    exporter: Arc<Exporter>,
    extra: Router,
    shutdown: CancellationToken,
) {
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) => {
                error!(%addr, error = %e, "cannot listen for /metrics (http_listen); retrying in 10s");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                }
            }
        }
    };
    info!(addr = %listener.local_addr().unwrap_or(addr), "serving /metrics");
    let app = router(exporter).merge(extra);
    let stop = shutdown.clone();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
    {
        error!(error = %e, "HTTP server failed");
    }
}

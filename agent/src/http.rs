//! The agent's HTTP server: `GET /metrics` (Prometheus text format or OpenMetrics, by the
//! `Accept` header) and `GET /healthz`. A port already in use is retried, never fatal: the
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

/// Prometheus sends its scrape timeout; a member's deadline stays this far below it.
const SCRAPE_TIMEOUT_MARGIN: Duration = Duration::from_millis(500);
/// Shortest per-member deadline, whatever the scraper asks.
const MIN_MEMBER_TIMEOUT: Duration = Duration::from_millis(100);

/// The routes, for the server and for tests.
pub fn router(exporter: Arc<Exporter>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(exporter)
}

/// The per-member deadline: the configured one, shortened to fit Prometheus's own scrape
/// timeout (`X-Prometheus-Scrape-Timeout-Seconds`) when that is shorter.
fn member_timeout(configured: Duration, headers: &HeaderMap) -> Duration {
    let scraper = headers
        .get("x-prometheus-scrape-timeout-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(|s| Duration::from_secs_f64(s).saturating_sub(SCRAPE_TIMEOUT_MARGIN));
    match scraper {
        Some(s) => configured.min(s).max(MIN_MEMBER_TIMEOUT),
        None => configured,
    }
}

async fn metrics(State(exporter): State<Arc<Exporter>>, headers: HeaderMap) -> Response {
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let timeout = member_timeout(exporter.member_timeout(), &headers);
    let body = exporter.render(format, timeout).await;
    if body.is_empty() {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics encoding failed\n",
        )
            .into_response();
    }
    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_deadline_fits_the_scrapers_timeout() {
        let mut h = HeaderMap::new();
        let cfg = Duration::from_secs(2);
        assert_eq!(member_timeout(cfg, &h), cfg);
        h.insert(
            "x-prometheus-scrape-timeout-seconds",
            "1.5".parse().unwrap(),
        );
        assert_eq!(member_timeout(cfg, &h), Duration::from_secs(1));
        h.insert(
            "x-prometheus-scrape-timeout-seconds",
            "0.2".parse().unwrap(),
        );
        assert_eq!(member_timeout(cfg, &h), MIN_MEMBER_TIMEOUT);
        h.insert("x-prometheus-scrape-timeout-seconds", "30".parse().unwrap());
        assert_eq!(member_timeout(cfg, &h), cfg);
    }
}

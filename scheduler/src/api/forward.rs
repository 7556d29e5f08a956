//! A follower forwards API calls to the leader.

use super::*;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Marks a request a follower forwarded to the leader.
pub(super) const FORWARDED: &str = "x-mofang-forwarded";

/// On a follower, every API request but health is forwarded to the leader (same method,
/// path, token and body) and its answer relayed; 503 while no leader is known. Clients may
/// talk to any scheduler. (A 307 would make clients drop the token: they do not resend
/// credentials to another origin.)
pub(super) async fn leader_only(State(api): State<Api>, req: Request, next: Next) -> Response {
    if api.cluster.is_active() {
        return next.run(req).await;
    }
    // A request is forwarded once at most: a follower that receives a forwarded request
    // (its leader hint is stale: the leader it named restarted on the same address and has
    // not won yet) answers instead of forwarding again, so no request loops between
    // schedulers, or from a scheduler to itself.
    let forwarded = req.headers().contains_key(FORWARDED);
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
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
    let Ok(method) = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()) else {
        return method_not_allowed().await.into_response();
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    // A read whose leader is deposed while it waits (frozen: its sockets accept, nothing
    // answers) is asked again of whoever leads now, this scheduler included; a write is
    // not (it may have been applied), its client is told to retry.
    let mut tries = 0;
    loop {
        tries += 1;
        if api.cluster.is_active() {
            let req = Request::from_parts(parts, axum::body::Body::from(body));
            return next.run(req).await;
        }
        let leader = api.cluster.leader_hint().filter(|_| !forwarded);
        let Some(leader) = leader else {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_leader",
                "no scheduler leads right now; retry shortly",
            )
            .into_response();
        };
        let answer = relay(&api, &leader, method.clone(), &path, &parts.headers, &body);
        let now = tokio::select! {
            r = answer => return r,
            now = deposed(&api, &leader) => now,
        };
        if method != reqwest::Method::GET || tries > 1 {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "leader_changed",
                format!(
                    "the leader at {leader} stopped answering and {now} leads now; the \
                     request may or may not have been applied; retry"
                ),
            )
            .into_response();
        }
    }
}

/// How often a forwarded request's wait looks at who leads.
const LEAD_CHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// Who leads instead of `leader`, if anyone: this scheduler (`active`), or another one the
/// election names. No leader known (the old one's claim expired, nobody won yet) is not a
/// change: the request keeps waiting.
pub(super) fn successor(leader: &str, active: bool, hint: Option<&str>) -> Option<String> {
    if active {
        return Some("this scheduler".to_owned());
    }
    hint.filter(|h| *h != leader).map(str::to_owned)
}

/// Resolves once `leader` leads no more, with who leads instead.
async fn deposed(api: &Api, leader: &str) -> String {
    loop {
        tokio::time::sleep(LEAD_CHECK).await;
        let hint = api.cluster.leader_hint();
        if let Some(now) = successor(leader, api.cluster.is_active(), hint.as_deref()) {
            return now;
        }
    }
}

/// Sends one request to the leader (same method, path, token and body) and relays its answer.
async fn relay(
    api: &Api,
    leader: &str,
    method: reqwest::Method,
    path: &str,
    headers: &axum::http::HeaderMap,
    body: &axum::body::Bytes,
) -> Response {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        let builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(90));
        // The leader's certificate is checked against the cluster CA, and this scheduler
        // presents its own (taken once: a CA change needs a restart of followers).
        let builder = match &api.tls {
            Some(t) => builder.use_preconfigured_tls((*t.current().client).clone()),
            None => builder,
        };
        builder.build().unwrap_or_default()
    });
    let url = format!("{}{path}", leader.trim_end_matches('/'));
    let mut fwd = client
        .request(method, &url)
        .header(FORWARDED, "1")
        .body(body.clone());
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

use super::*;
use crate::auth::Tokens;
use crate::cluster::{self, Cluster};
use crate::config::TokenRole;
use crate::store::sqlite::SqliteStore;
use axum::body::Bytes;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::sync::Arc;
use tower::ServiceExt;
use utoipa::OpenApi;

/// A scheduler on an in-memory store, not yet leading.
async fn memory_cluster() -> Arc<Cluster> {
    let store = Arc::new(SqliteStore::open_in_memory().expect("in-memory store"));
    Cluster::load(store, std::time::Duration::from_secs(30))
        .await
        .expect("load")
}

/// An activated scheduler on an in-memory store, with no token accepted.
async fn api_without_tokens() -> Api {
    let cluster = memory_cluster().await;
    cluster.activate().await.expect("activate");
    Api {
        tls: None,
        cluster,
        tokens: Arc::new(Tokens::from_config(&[])),
        sealed: None,
    }
}

/// The admin token of [`admin_router`].
const ADMIN: &str = "secret-token-0123456789";

/// The API of `cluster` accepting [`ADMIN`] as an admin token.
fn admin_router(cluster: Arc<Cluster>) -> Router {
    let mut tokens = Tokens::from_config(&[]);
    tokens.insert(ADMIN, "admin", TokenRole::Admin);
    router(Api {
        tls: None,
        cluster,
        tokens: Arc::new(tokens),
        sealed: None,
    })
}

/// The `error.code` of a JSON error answer.
async fn error_code(r: Response) -> String {
    let b = axum::body::to_bytes(r.into_body(), MAX_BODY)
        .await
        .expect("body");
    let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
    v["error"]["code"].as_str().unwrap_or_default().to_owned()
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
    let cluster = memory_cluster().await;
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
    let cluster = memory_cluster().await;
    cluster.set_leader_hint(Some("http://127.0.0.1:1".into()));
    let app = admin_router(cluster);
    let call = |forwarded: bool| {
        let mut b = axum::http::Request::get("/v1/instances")
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"));
        if forwarded {
            b = b.header(FORWARDED, "1");
        }
        app.clone()
            .oneshot(b.body(axum::body::Body::empty()).expect("request"))
    };
    let direct = call(false).await.expect("answer");
    assert_eq!(direct.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        error_code(direct).await,
        "leader_unreachable",
        "forwarded once"
    );
    let again = call(true).await.expect("answer");
    assert_eq!(again.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        error_code(again).await,
        "no_leader",
        "never forwarded twice"
    );
}

/// Who leads instead of the leader a request was forwarded to: a change only when this
/// scheduler took charge or the election names another one.
#[test]
fn a_forwarded_request_follows_the_lead_only_when_it_moved() {
    let old = "https://10.0.0.1:8080";
    assert_eq!(successor(old, false, Some(old)), None, "still the leader");
    assert_eq!(
        successor(old, false, None),
        None,
        "nobody won yet: keep waiting"
    );
    assert_eq!(
        successor(old, false, Some("https://10.0.0.2:8080")).as_deref(),
        Some("https://10.0.0.2:8080")
    );
    assert_eq!(
        successor(old, true, Some(old)).as_deref(),
        Some("this scheduler"),
        "this one took charge before the hint moved"
    );
}

/// A leader frozen (SIGSTOP) accepts connections and answers nothing: a request a follower
/// forwarded to it waited for the client's 90 s timeout. Once another leads, a read is
/// asked again of the new leader (here this scheduler, which took charge) and a write is
/// answered 503 `leader_changed`; neither waits for the frozen one.
#[tokio::test]
async fn a_request_forwarded_to_a_frozen_leader_ends_when_the_lead_moves() {
    // The frozen leader: connections accepted and held, never read or answered.
    let frozen = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listener");
    let frozen_url = format!("http://{}", frozen.local_addr().expect("address"));
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = frozen.accept().await {
            conns.push(c);
        }
    });
    let cluster = memory_cluster().await;
    cluster.set_leader_hint(Some(frozen_url.clone()));
    let app = admin_router(cluster.clone());
    let request = |method: &str, path: &str, body: &str| {
        axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(body.to_owned()))
            .expect("request")
    };

    // A write: another scheduler is named leader while it waits.
    let write = tokio::spawn(app.clone().oneshot(request(
        "POST",
        "/v1/instances",
        r#"{"name":"w","engine":"redis","replicas":0}"#,
    )));
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert!(!write.is_finished(), "the frozen leader answered nothing");
    cluster.set_leader_hint(Some("http://127.0.0.1:9".into()));
    let r = tokio::time::timeout(std::time::Duration::from_secs(10), write)
        .await
        .expect("answered once another leads")
        .expect("task")
        .expect("answer");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(r).await, "leader_changed");

    // A read: this scheduler takes charge while it waits, and answers it itself.
    cluster.set_leader_hint(Some(frozen_url));
    let read = tokio::spawn(app.oneshot(request("GET", "/v1/instances", "")));
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert!(!read.is_finished(), "the frozen leader answered nothing");
    cluster.activate().await.expect("activate");
    let r = tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .expect("answered once this one leads")
        .expect("task")
        .expect("answer");
    assert_eq!(r.status(), StatusCode::OK);
    let b = axum::body::to_bytes(r.into_body(), MAX_BODY)
        .await
        .expect("body");
    assert_eq!(b.as_ref(), b"[]", "this scheduler's (empty) instance list");
    held.abort();
}

/// Database TLS needs the scheduler to sign members' certificates: without a CA key the
/// request is refused with its reason and nothing is created; a bad value names the field.
#[tokio::test]
async fn an_instance_with_tls_needs_a_scheduler_that_signs() {
    let cluster = memory_cluster().await;
    cluster.activate().await.expect("activate");
    let app = admin_router(cluster.clone());
    let create = |tls: serde_json::Value| {
        let body = serde_json::json!({"name": "shop", "engine": "mariadb", "version": "10.11",
            "replicas": 0, "resources": {"cpu": 0.5, "memory": 256, "disk": 512}, "tls": tls});
        app.clone().oneshot(
            axum::http::Request::post("/v1/instances")
                .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
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

/// A body is a JSON object (serde alone also reads a struct from an array of its fields),
/// and a whole number written as a float is the integer JSON Schema says it is.
#[test]
fn bodies_are_objects_and_whole_floats_are_integers() {
    let parse =
        |b: &'static str| parse_body::<JoinTokenRequest>(Ok(Bytes::from_static(b.as_bytes())));
    let err = parse("[null, null]").expect_err("an array is refused");
    assert_eq!(
        (err.status, err.code),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid")
    );
    let req = parse(r#"{"ttl_secs": 3600.0}"#).expect("a whole float is an integer");
    assert_eq!(req.ttl_secs, Some(3600));
    let err = parse(r#"{"ttl_secs": 3600.5}"#).expect_err("a fraction is not");
    assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY);
    let err = parse("{").expect_err("not JSON");
    assert_eq!(
        (err.status, err.code),
        (StatusCode::BAD_REQUEST, "bad_json")
    );
}

/// Log reads: ids above the store's signed 64-bit range are refused; `since` with `before`
/// is the newest entries between the two.
#[test]
fn log_reads_take_ids_up_to_i64_max_and_a_window() {
    assert!(log_window(Some(MAX_ID), Some(MAX_ID)).is_ok());
    let err = log_window(None, Some(MAX_ID + 1)).expect_err("past the range");
    assert_eq!(
        (err.status, err.code),
        (StatusCode::BAD_REQUEST, "bad_query")
    );
    // events_before(10, 3) gave ids 7, 8, 9; with since=7 the window is 8 and 9.
    assert_eq!(above(vec![7u64, 8, 9], Some(7), |i| *i), [8, 9]);
    assert_eq!(above(vec![7u64, 8, 9], None, |i| *i), [7, 8, 9]);
}

/// A request whose client goes away once it is sent still runs to its end (decision 162): a
/// switchover dropped after its fence left the instance read-only (a browser's form post
/// cut by a network change did exactly that).
#[tokio::test]
async fn a_request_runs_to_its_end_when_the_client_goes_away() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let app = Router::new()
        .route(
            "/slow",
            axum::routing::post(move || {
                let d = d.clone();
                async move {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    d.store(true, Ordering::SeqCst);
                    StatusCode::NO_CONTENT
                }
            }),
        )
        .layer(axum::middleware::from_fn(body::read_whole_body));
    let req = axum::http::Request::post("/slow")
        .body(axum::body::Body::empty())
        .expect("request");
    // The client gives up after 20 ms: its future is dropped.
    let gave_up =
        tokio::time::timeout(std::time::Duration::from_millis(20), app.oneshot(req)).await;
    assert!(gave_up.is_err(), "the slow handler answered within 20 ms");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert!(
        done.load(Ordering::SeqCst),
        "the handler was cancelled with its client"
    );
}

/// `encryption_key: null` is no key, as the document's nullable field says (it was a 422);
/// a key without `encrypt` is still refused.
#[tokio::test]
async fn a_null_encryption_key_is_no_key() {
    let mut api = api_without_tokens().await;
    let mut tokens = Tokens::from_config(&[]);
    tokens.insert("admin-token-0123456789", "ops", TokenRole::Admin);
    api.tokens = Arc::new(tokens);
    let dir = tempfile::tempdir().expect("dir");
    let post = |body: serde_json::Value| {
        axum::http::Request::post("/v1/backup-repos")
            .header(header::AUTHORIZATION, "Bearer admin-token-0123456789")
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(body.to_string()))
            .expect("request")
    };
    let path = dir.path().to_string_lossy().into_owned();
    let res = router(api.clone())
        .oneshot(post(serde_json::json!({
            "name": "r", "kind": "fs", "path": path, "encryption_key": null
        })))
        .await
        .expect("answer");
    let status = res.status();
    let body = axum::body::to_bytes(res.into_body(), 1 << 16)
        .await
        .expect("body");
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(v["encrypted"], false, "{v}");
    let res = router(api)
        .oneshot(post(serde_json::json!({
            "name": "r2", "kind": "fs", "path": path,
            "encryption_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        })))
        .await
        .expect("answer");
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

/// `POST /v1/backup-repos/{name}/rotate-key` and `DELETE .../keys/{key_id}` (decision 169):
/// a repository in clear has no key to rotate (422); a rotation answers the new key id
/// with the old one retired, a given key is used (and never echoed when malformed); the
/// current key cannot be retired (422), an unknown one is 404, and a retired key nothing
/// needs is forgotten.
#[tokio::test]
async fn a_repository_key_rotates_and_its_retired_key_is_forgotten() {
    let mut api = api_without_tokens().await;
    let mut tokens = Tokens::from_config(&[]);
    tokens.insert("admin-token-0123456789", "ops", TokenRole::Admin);
    api.tokens = Arc::new(tokens);
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().to_string_lossy().into_owned();
    let call = |method: &str, uri: &str, body: Option<serde_json::Value>| {
        let req = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, "Bearer admin-token-0123456789")
            .header(header::CONTENT_TYPE, "application/json");
        let api = api.clone();
        async move {
            let req = req
                .body(axum::body::Body::from(
                    body.map(|b| b.to_string()).unwrap_or_default(),
                ))
                .expect("request");
            let res = router(api).oneshot(req).await.expect("answer");
            let status = res.status();
            let body = axum::body::to_bytes(res.into_body(), 1 << 16)
                .await
                .expect("body");
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            (status, v)
        }
    };
    let (s, _) = call(
        "POST",
        "/v1/backup-repos",
        Some(serde_json::json!({"name": "clear", "kind": "fs", "path": path})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = call("POST", "/v1/backup-repos/clear/rotate-key", None).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("does not encrypt"),
        "{v}"
    );

    let (s, v) = call(
        "POST",
        "/v1/backup-repos",
        Some(serde_json::json!({"name": "enc", "kind": "fs", "path": path, "encrypt": true})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let first = v["key_id"].as_str().expect("key id").to_owned();
    let (s, v) = call("POST", "/v1/backup-repos/enc/rotate-key", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let second = v["key_id"].as_str().expect("key id").to_owned();
    assert_ne!(first, second);
    assert_eq!(v["retired_key_ids"], serde_json::json!([first]), "{v}");
    assert!(v["key_rotated_at_ms"].as_i64() > Some(0), "{v}");

    let given = mofang_common::backup_crypt::RepoKey::generate();
    let (s, v) = call(
        "POST",
        "/v1/backup-repos/enc/rotate-key",
        Some(serde_json::json!({"encryption_key": given.to_text().as_str()})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["key_id"], given.id().as_str(), "{v}");
    assert_eq!(
        v["retired_key_ids"],
        serde_json::json!([first, second]),
        "{v}"
    );
    let bad = "not-a-key-but-a-secret-looking-string";
    let (s, v) = call(
        "POST",
        "/v1/backup-repos/enc/rotate-key",
        Some(serde_json::json!({"encryption_key": bad})),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(!v.to_string().contains(bad), "the value is not echoed: {v}");

    let current = given.id();
    let (s, v) = call(
        "DELETE",
        &format!("/v1/backup-repos/enc/keys/{current}"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("rotate it first"),
        "{v}"
    );
    let (s, _) = call("DELETE", "/v1/backup-repos/enc/keys/0000000000000000", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = call(
        "DELETE",
        &format!("/v1/backup-repos/enc/keys/{first}"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["retired_key_ids"], serde_json::json!([second]), "{v}");
    let (s, v) = call("GET", "/v1/backup-repos/enc", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v["retired_key_ids"],
        serde_json::json!([second]),
        "stored: {v}"
    );
    let (s, _) = call("POST", "/v1/backup-repos/nope/rotate-key", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

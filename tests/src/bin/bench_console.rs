//! Console benchmark (`make bench-console`): how long the web console's overview takes to
//! answer with 2,000 instances in the store (issue 18: under 100 ms).
//!
//! In-process and without Docker: the scheduler's own `Cluster` on an SQLite store, nodes
//! registered and heartbeating (no agents: members are placed, not started, so instances
//! show `creating`), instances created through `Cluster::create_instance` as the API does.
//! A browser's requests go through the scheduler's router (`api::router`, the one the REST
//! listener serves) with a signed-in session cookie; TLS and the network are not in the
//! figures. Prints p50/p90/p99/max per page and the page's size.
//!
//! Backup records (`--backups N` per instance, default 3: a week of daily backups for a few
//! instances, or a few for all) are written to the store as the scheduler keeps them, for
//! the backups page and the overview's backup figures; every fifth instance's newest one
//! failed.
//!
//! Usage: bench_console [--instances N] [--nodes N] [--requests N] [--backups N]

use anyhow::{bail, Context, Result};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use mofang_common::proto::HeartbeatRequest;
use mofang_common::EngineKind;
use mofang_scheduler::api::{router, Api};
use mofang_scheduler::auth::Tokens;
use mofang_scheduler::cluster::Cluster;
use mofang_scheduler::config::TokenRole;
use mofang_scheduler::model::{DiskInfo, InstanceSpec, Node, NodeAdmin, Resources};
use mofang_scheduler::store::sqlite::SqliteStore;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::ServiceExt;

const TOKEN: &str = "bench-console-admin-token-0123456789";

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn node(i: usize) -> Node {
    Node {
        name: format!("node-{i:03}"),
        address: format!("10.0.{}.{}", i / 250, i % 250 + 1),
        labels: BTreeMap::from([("zone".into(), format!("zone-{}", i % 3))]),
        cpu: 64.0,
        memory_bytes: 256 << 30,
        disks: vec![DiskInfo {
            path: "/data".into(),
            class: "ssd".into(),
            capacity_bytes: 2 << 40,
            free_bytes: 2 << 40,
        }],
        admin: NodeAdmin::Active,
        agent_version: "bench".into(),
        registered_at_ms: 0,
        http_address: String::new(),
    }
}

fn spec(i: usize) -> InstanceSpec {
    let redis = i % 4 == 3;
    InstanceSpec {
        name: format!("db-{i:05}"),
        engine: if redis {
            EngineKind::Redis
        } else {
            EngineKind::Mariadb
        },
        version: if redis { "7.0" } else { "10.11" }.into(),
        replicas: 1,
        resources: Resources {
            cpu: 0.5,
            memory: 256,
            disk: 512,
        },
        disk_class: None,
        placement: None,
        labels: BTreeMap::from([("team".into(), format!("team-{}", i % 20))]),
        restore: None,
        tls: Default::default(),
        backup: None,
    }
}

async fn send(app: &axum::Router, req: Request<Body>) -> Result<(StatusCode, Vec<String>, usize)> {
    let r = app.clone().oneshot(req).await?;
    let status = r.status();
    let cookies = r
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .map(str::to_owned)
        .collect();
    let body = axum::body::to_bytes(r.into_body(), 1 << 30).await?;
    Ok((status, cookies, body.len()))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[tokio::main]
async fn main() -> Result<()> {
    let instances = arg("--instances", 2000);
    let nodes = arg("--nodes", 50);
    let requests = arg("--requests", 50);
    let backups = arg("--backups", 3);
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open(&dir.path().join("state.db"))?);
    let cluster = Cluster::load(store, Duration::from_secs(30)).await?;
    cluster.activate().await?;
    for i in 0..nodes {
        cluster.register(node(i)).await?;
    }
    let beat = |c: &Cluster| {
        for i in 0..nodes {
            c.heartbeat(HeartbeatRequest {
                node: format!("node-{i:03}"),
                ..Default::default()
            });
        }
    };
    beat(&cluster);
    let t = Instant::now();
    for i in 0..instances {
        if i % 200 == 0 {
            beat(&cluster);
        }
        let mut tries = 0;
        loop {
            match cluster.create_instance(spec(i)).await {
                Ok(_) => break,
                Err(e) if tries < 50 => {
                    tries += 1;
                    if tries == 1 {
                        eprintln!("create db-{i:05}: {e}; retrying");
                    }
                    beat(&cluster);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => bail!("create db-{i:05}: {e}"),
            }
        }
    }
    println!(
        "{instances} instances on {nodes} nodes created in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    {
        let store = cluster.store();
        for i in 0..instances {
            for k in 0..backups {
                let at = 1_790_000_000_000 + (k as i64) * 86_400_000;
                let failed = i % 5 == 0 && k + 1 == backups;
                let id = format!("db-{i:05}-{at}");
                let b = serde_json::json!({"id": id, "instance": format!("db-{i:05}"),
                    "engine": "mariadb", "version": "10.11", "repo": "main",
                    "member": format!("db-{i:05}-0"), "node": "node-000",
                    "state": if failed { "failed" } else { "succeeded" },
                    "reason": if failed { "disk full" } else { "" },
                    "requested_at_ms": at, "started_at_ms": at, "ended_at_ms": at + 60_000,
                    "bytes": 50 << 20, "size": 12 << 20});
                store
                    .put_meta(&format!("backup/{id}"), &b.to_string())
                    .await?;
            }
        }
        println!("{} backup records written", instances * backups);
    }
    let mut tokens = Tokens::from_config(&[]);
    tokens.insert(TOKEN, "bench", TokenRole::Admin);
    let app = router(Api {
        cluster: cluster.clone(),
        tokens: Arc::new(tokens),
        sealed: None,
        tls: None,
    });
    // Sign in as a browser does: the sign-in page's cookie, then the form.
    let (_, cookies, _) = send(&app, Request::get("/ui/login").body(Body::empty())?).await?;
    let pre = cookies
        .iter()
        .find_map(|c| c.strip_prefix("mofang_login="))
        .context("sign-in cookie")?
        .to_owned();
    let (status, cookies, _) = send(
        &app,
        Request::post("/ui/login")
            .header(header::COOKIE, format!("mofang_login={pre}"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("csrf={pre}&token={TOKEN}")))?,
    )
    .await?;
    if status != StatusCode::SEE_OTHER {
        bail!("sign-in answered {status}");
    }
    let session = cookies
        .iter()
        .find(|c| c.starts_with("mofang_session="))
        .context("session cookie")?
        .clone();
    println!("page                         p50      p90      p99      max   bytes");
    for page in [
        "/ui",
        "/ui/instances",
        "/ui/instances/db-00007",
        "/ui/problems",
        "/ui/backups",
        "/ui/events",
    ] {
        let mut times = Vec::with_capacity(requests);
        let mut bytes = 0;
        for i in 0..requests + 3 {
            beat(&cluster);
            let t = Instant::now();
            let (status, _, len) = send(
                &app,
                Request::get(page)
                    .header(header::COOKIE, &session)
                    .body(Body::empty())?,
            )
            .await?;
            let took = t.elapsed();
            if status != StatusCode::OK {
                bail!("{page}: {status}");
            }
            bytes = len;
            // The first answers fill the console's event cursor: not counted.
            if i >= 3 {
                times.push(took);
            }
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{page:<26} {:>6.1} ms {:>6.1} ms {:>6.1} ms {:>6.1} ms {bytes:>7}",
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.9)),
            ms(percentile(&times, 0.99)),
            ms(percentile(&times, 1.0)),
        );
    }
    Ok(())
}

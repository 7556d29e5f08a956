//! The scheduler end to end, on real Docker: a scheduler and three agents (one zone each) on a
//! test network, instances created through the REST API and the CLI, rows and keys read at
//! replicas, bad requests refused with JSON reasons, kill -9 of the scheduler losing nothing,
//! a silent agent's node going down.

use anyhow::{bail, Context, Result};
use mofang_agent::runtime::ContainerRuntime;
use mofang_scheduler::client::{self, LogRange};
use mofang_scheduler::model::NodeState;
use mofang_tests::cluster::binaries;
use mofang_tests::scenario::{instance_spec, mysql, replica_of, spec, Env};
use mofang_tests::{docker, eventually, unique_name};
use mysql_async::prelude::Queryable;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_with_two_replicas_across_three_hosts_via_the_cli() -> Result<()> {
    let env = Env::start(3).await?;
    let rt = docker().await;
    let name = unique_name("shop");
    // Created through the CLI, exactly as an operator would.
    let out = std::process::Command::new(binaries()?.join("mofang"))
        .args([
            "instance",
            "create",
            &name,
            "--engine",
            "mariadb",
            "--replicas",
            "2",
            "--memory",
            "384",
            "--disk",
            "512",
            "--wait",
            "--timeout",
            "120",
        ])
        .envs(env.sched.cli_env())
        .env("MOFANG_TOKEN", &env.token)
        .output()?;
    assert!(
        out.status.success(),
        "mofang instance create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("ready") && shown.contains("replica"),
        "{shown}"
    );

    let inst = env.ready(&name).await?;
    let members = &inst.members;
    assert_eq!(members.len(), 3);
    let mut nodes: Vec<&str> = members.iter().map(|m| m.node.as_str()).collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 3, "one member per host");

    let client = env.client();
    let pw = client.credentials(&name).await?.credentials.app;
    let primary = inst.primary.clone();
    let mut c = mysql(&primary, &pw).await?;
    c.query_drop("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(32))")
        .await?;
    c.exec_drop("INSERT INTO t VALUES (?, ?)", (1, "on every replica"))
        .await?;
    drop(c);
    for m in members.iter().filter(|m| m.role == "replica") {
        let addr = m.address.clone();
        let pw = pw.clone();
        let v: String = eventually("row on replica", Duration::from_secs(20), || {
            let (addr, pw) = (addr.clone(), pw.clone());
            async move {
                let mut c = mysql(&addr, &pw).await?;
                let v: Option<String> = c.query_first("SELECT v FROM t WHERE id = 1").await?;
                v.context("not yet")
            }
        })
        .await?;
        assert_eq!(v, "on every replica");
    }

    // Events and audit say what happened and who did it.
    let evs = env.instance_events(&name).await?;
    let placed = evs.iter().filter(|e| e.kind == "placed").count();
    assert_eq!(placed, 3, "{evs:?}");
    let audit = client.audit(LogRange::default()).await?;
    assert!(
        audit
            .iter()
            .any(|e| e.action == "POST /v1/instances" && e.who == "admin" && e.status == 201),
        "{audit:?}"
    );

    // Delete removes containers and volumes on every host.
    let deleted = client.delete_instance(&name).await?;
    assert_eq!(deleted.status, "deleting", "{deleted:?}");
    eventually(
        "containers and volumes gone",
        Duration::from_secs(60),
        || async {
            let mut left = 0;
            for a in &env.agents {
                left += rt.list(&[("mofang.node", a.node.as_str())]).await?.len();
                left += std::fs::read_dir(a.dir.path().join("disk0"))?
                    .filter_map(|e| e.ok())
                    .filter(|e| e.path().is_dir())
                    .count();
            }
            if left == 0 {
                Ok(())
            } else {
                bail!("{left} containers/volumes left")
            }
        },
    )
    .await?;
    Ok(())
}

/// Files under `dir` (links not followed) holding any of `secrets`, byte for byte.
fn files_holding(dir: &std::path::Path, secrets: &[String]) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let ft = e.file_type()?;
            if ft.is_dir() {
                todo.push(e.path());
            } else if ft.is_file() {
                let bytes = std::fs::read(e.path())?;
                if secrets
                    .iter()
                    .any(|s| bytes.windows(s.len()).any(|w| w == s.as_bytes()))
                {
                    found.push(e.path().display().to_string());
                }
            }
        }
    }
    Ok(found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_survives_scheduler_kill9_and_silent_agent_goes_down() -> Result<()> {
    let mut env = Env::start(2).await?;
    let rt = docker().await;
    let name = unique_name("cache");
    let inst = env.create(&name, "redis", 1).await?;
    let creds = env.client().credentials(&name).await?;
    let pw = creds.credentials.app.clone();
    // Secrets at rest (issue 15 point 5): no password in the scheduler's data directory (the
    // SQLite file and its WAL) nor in any agent's state directory.
    let c = &creds.credentials;
    let passwords: Vec<String> = vec![
        c.admin.clone(),
        c.repl.clone(),
        c.monitor.clone(),
        c.app.clone(),
    ];
    let mut dirs = vec![env.sched.dir.path().join("data")];
    dirs.extend(env.agents.iter().map(|a| a.state_dir()));
    for dir in &dirs {
        let found = files_holding(dir, &passwords)?;
        assert!(found.is_empty(), "passwords in clear: {found:?}");
    }
    let primary = inst.primary.clone();
    let client = redis::Client::open(format!("redis://app:{pw}@{primary}/"))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v1")
        .query_async(&mut conn)
        .await?;
    let replica = replica_of(&inst)?;
    let raddr = replica.address.clone();
    let rclient = redis::Client::open(format!("redis://app:{pw}@{raddr}/"))?;
    eventually("key on replica", Duration::from_secs(10), || async {
        let mut rc = rclient.get_multiplexed_async_connection().await?;
        let v: Option<String> = redis::cmd("GET").arg("k").query_async(&mut rc).await?;
        (v.as_deref() == Some("v1"))
            .then_some(())
            .context("not yet")
    })
    .await?;

    let containers_before: Vec<_> = {
        let mut v = Vec::new();
        for a in &env.agents {
            for c in rt.list(&[("mofang.node", a.node.as_str())]).await? {
                v.push((c.id, c.started_at));
            }
        }
        v.sort();
        v
    };
    assert_eq!(containers_before.len(), 2);

    // kill -9 of the scheduler: nothing acknowledged is lost, agents reconnect, nothing recreated.
    env.sched.restart()?;
    env.token = env.sched.admin_token()?;
    env.wait_ready_nodes(2).await?;
    let again = env.ready(&name).await?;
    // The same members where they were (their observations, lag and position, move on).
    let placed = |i: &mofang_scheduler::cluster::InstanceView| {
        i.members
            .iter()
            .map(|m| {
                (
                    m.id.clone(),
                    m.node.clone(),
                    m.role.clone(),
                    m.address.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(placed(&again), placed(&inst));
    assert_eq!(again.epoch, inst.epoch);
    let creds_again = env.client().credentials(&name).await?;
    assert!(
        creds_again.credentials == creds.credentials
            && creds_again.tls == creds.tls
            && creds_again.ca_pem == creds.ca_pem,
        "the restarted scheduler opens every secret"
    );
    let mut containers_after = Vec::new();
    for a in &env.agents {
        for c in rt.list(&[("mofang.node", a.node.as_str())]).await? {
            containers_after.push((c.id, c.started_at));
        }
    }
    containers_after.sort();
    assert_eq!(
        containers_before, containers_after,
        "no container recreated or restarted"
    );
    let v: String = redis::cmd("GET").arg("k").query_async(&mut conn).await?;
    assert_eq!(v, "v1");

    // An agent silent for longer than node_ttl: its node shows down.
    let silent = env.agents[1].node.clone();
    env.agents[1].kill9()?;
    let client = env.client();
    eventually("node down", Duration::from_secs(15), || async {
        let n = client.node(&silent).await?;
        if n.state == NodeState::Down {
            Ok(())
        } else {
            bail!("{n:?}")
        }
    })
    .await?;
    eventually("node_down event", Duration::from_secs(5), || async {
        let evs = client.events(None, LogRange::default()).await?;
        evs.iter()
            .any(|e| e.kind == "node_down" && e.node.as_deref() == Some(silent.as_str()))
            .then_some(())
            .context("no node_down event yet")
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_reasons_and_change_nothing() -> Result<()> {
    let env = Env::start(2).await?;
    let client = env.client();
    let post = |body: Value| env.call(reqwest::Method::POST, "/v1/instances", Some(body));
    let refused = |r: client::Result<_>| match r {
        Ok(v) => bail!("created: {v:?}"),
        Err(e) => Ok(e),
    };

    // Cannot be placed: the reason names every node and the figures.
    let mut big = instance_spec("too-big", "mariadb", 1)?;
    big.resources.memory = 4096;
    let e = refused(client.create_instance(&big).await)?;
    assert_eq!(e.status(), Some(409), "{e}");
    assert_eq!(e.code(), Some("unplaceable"), "{e}");
    let msg = match &e {
        client::Error::Api { message, .. } => message.as_str(),
        _ => "",
    };
    for a in &env.agents {
        assert!(
            msg.contains(&format!("{}: memory 2048 MiB free, 4096 MiB asked", a.node)),
            "{msg}"
        );
    }
    // Anti-affinity: three members cannot fit on two hosts.
    let e = refused(
        client
            .create_instance(&instance_spec("three", "redis", 2)?)
            .await,
    )?;
    assert_eq!(e.status(), Some(409), "{e}");

    // Each body's refusal is a JSON error (`code` and `message`): sent raw, to read its shape.

    for (body, want) in [
        (
            spec("Bad_Name", "mariadb", 1),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"name": "x", "engine": "mariadb", "version": "10.11", "replicas": 1, "resources": {"cpu": 1, "memory": 512, "disk": 1024}, "color": "red"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            spec("old", "mariadb", 1)
                .as_object()
                .map(|o| {
                    let mut o = o.clone();
                    o.insert("version".into(), json!("5.5"));
                    Value::Object(o)
                })
                .unwrap_or_default(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"name": "huge", "engine": "redis", "version": "7.0", "replicas": 1, "resources": {"cpu": 1, "memory": 512, "disk": 1u64 << 40}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"name": "neg", "engine": "redis", "version": "7.0", "replicas": -1, "resources": {"cpu": 1, "memory": 512, "disk": 512}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"name": "many", "engine": "redis", "version": "7.0", "replicas": 1000, "resources": {"cpu": 1, "memory": 512, "disk": 512}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!("just a string"), StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let (s, v) = post(body.clone()).await?;
        assert_eq!(s, want, "{body} -> {v}");
        assert!(
            v["error"]["code"].is_string() && v["error"]["message"].is_string(),
            "{v}"
        );
    }
    // Not JSON at all; over 1 MiB.
    let raw = |b: Vec<u8>| {
        env.http
            .post(format!("{}/v1/instances", env.sched.rest))
            .bearer_auth(&env.token)
            .header("content-type", "application/json")
            .body(b)
            .send()
    };
    let r = raw(b"{not json".to_vec()).await?;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.json::<Value>().await?["error"]["code"].is_string());
    let r = raw(vec![b' '; 2 << 20]).await?;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.json::<Value>().await?["error"]["code"].is_string());

    // No token, wrong token: 401. Unknown instance: 404.
    let r = env
        .http
        .get(format!("{}/v1/instances", env.sched.rest))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = env
        .http
        .get(format!("{}/v1/instances", env.sched.rest))
        .bearer_auth("wrong")
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let e = match client.instance("nope").await {
        Ok(v) => bail!("an unknown instance was found: {v:?}"),
        Err(e) => e,
    };
    assert_eq!(e.status(), Some(404), "{e}");
    // Health needs no token.
    let r = env
        .http
        .get(format!("{}/v1/health", env.sched.rest))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);

    // Nothing was created by any of that.
    let list = client.instances(None).await?;
    assert_eq!(list.len(), 0, "{list:?}");

    // The OpenAPI document validates as OpenAPI 3.
    let doc = env
        .http
        .get(format!("{}/v1/openapi.json", env.sched.rest))
        .send()
        .await?
        .text()
        .await?;
    let path = env.sched.dir.path().join("openapi.json");
    std::fs::write(&path, doc)?;
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&path)
        .output()?;
    assert!(
        out.status.success(),
        "openapi: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

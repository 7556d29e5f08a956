//! Day-2 operations end to end (issue 17): a real scheduler, three real agents, real MariaDB,
//! the Jepsen set writer of `tests/src/scenario.rs`.

use anyhow::{bail, Context, Result};
use mofang_tests::scenario::{container_of, docker_cli, set_contents, Env, SetWriter};
use mofang_tests::{eventually, unique_name};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

const FAST: &str = "[failover]\nlease_ttl_ms = 2000\nreplace_after_ms = 8000\n";

/// When each member's container last started (`docker inspect`).
fn started_at(inst: &Value) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for m in inst["members"].as_array().context("members")? {
        let id = m["id"].as_str().context("id")?.to_owned();
        let at = docker_cli(&["inspect", "-f", "{{.State.StartedAt}}", &container_of(&id)])?;
        out.insert(id, at);
    }
    Ok(out)
}

/// Waits until operation `id` has ended (succeeded, failed or cancelled); returns it.
async fn operation_ended(env: &Env, id: &str, limit: Duration) -> Result<Value> {
    eventually("operation ended", limit, || async {
        let v = env.get(&format!("/v1/operations/{id}")).await?;
        match v["state"].as_str() {
            Some("succeeded" | "failed" | "cancelled") => Ok(v),
            _ => bail!("{v}"),
        }
    })
    .await
}

/// A rolling restart of MariaDB 1 + 2 under the set writer, with the scheduler `kill -9`ed
/// and restarted mid-operation: the operation resumes and succeeds (replicas, switchover, the
/// old primary), every container was restarted, and no acknowledged write is lost. A second
/// operation while it runs is refused with 409 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_writes_survives_a_scheduler_kill_and_loses_nothing() -> Result<()> {
    let mut env = Env::start_with(3, FAST).await?;
    let name = unique_name("rr");
    let inst = env.create_ready(&name, "mariadb", 2).await?;
    let pw = env.app_password(&name).await?;
    let old_primary = Env::primary_member(&inst)?["id"]
        .as_str()
        .context("id")?
        .to_owned();
    let before = started_at(&inst)?;
    let writer = SetWriter::start(&env, &name, "mariadb", &pw).await?;
    writer.wait_acked(200, Duration::from_secs(60)).await?;

    // Through the CLI, as an operator would.
    let out = tokio::process::Command::new(mofang_tests::cluster::binaries()?.join("mofang"))
        .args(["--json", "instance", "restart", &name])
        .envs(env.sched.cli_env())
        .env("MOFANG_TOKEN", &env.token)
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "mofang instance restart: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let op: Value = serde_json::from_slice(&out.stdout)?;
    let id = op["id"].as_str().context("operation id")?.to_owned();
    assert_eq!(op["state"], "running", "{op}");

    // One at a time.
    let (s, body) = env
        .call(
            reqwest::Method::POST,
            &format!("/v1/instances/{name}/operations"),
            Some(json!({"type": "restart"})),
        )
        .await?;
    assert_eq!(s, reqwest::StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "operation_running", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&id),
        "{body}"
    );

    // The scheduler dies once the first replica's restart is done.
    eventually("a first step done", Duration::from_secs(120), || async {
        let v = env.get(&format!("/v1/operations/{id}")).await?;
        let done = v["steps"]
            .as_array()
            .is_some_and(|st| st.iter().any(|s| s["state"] == "done"));
        if done {
            Ok(())
        } else {
            bail!("{v}")
        }
    })
    .await?;
    env.sched.restart()?;

    let v = operation_ended(&env, &id, Duration::from_secs(300)).await?;
    assert_eq!(v["state"], "succeeded", "{v}");
    let steps: Vec<String> = v["steps"]
        .as_array()
        .context("steps")?
        .iter()
        .map(|s| {
            format!(
                "{} {} {}",
                s["action"].as_str().unwrap_or_default(),
                s["member"]
                    .as_str()
                    .or(s["from"].as_str())
                    .unwrap_or_default(),
                s["state"].as_str().unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(steps.len(), 4, "{steps:?}");
    assert!(
        steps[0].starts_with("restart ") && steps[1].starts_with("restart "),
        "{steps:?}"
    );
    assert_eq!(
        steps[2],
        format!("switchover {old_primary} done"),
        "{steps:?}"
    );
    assert_eq!(steps[3], format!("restart {old_primary} done"), "{steps:?}");
    assert!(steps.iter().all(|s| s.ends_with(" done")), "{steps:?}");

    // The writer goes on; nothing acknowledged is lost.
    let acked = writer.acked();
    writer
        .wait_acked(acked + 200, Duration::from_secs(60))
        .await?;
    let outcome = writer.stop().await?;
    let now = env.wait_instance_ready(&name).await?;
    let primary = Env::primary_member(&now)?;
    assert_ne!(
        primary["id"],
        old_primary.as_str(),
        "the primary moved: {now}"
    );
    let present = set_contents(
        "mariadb",
        primary["address"].as_str().context("address")?,
        &pw,
    )
    .await?;
    eprintln!(
        "rolling restart: acknowledged {}, lost {}, longest write outage {:?}",
        outcome.acked.len(),
        outcome.lost(&present).len(),
        outcome.longest_gap
    );
    assert!(
        outcome.lost(&present).is_empty(),
        "lost {:?}",
        outcome.lost(&present)
    );
    assert!(outcome.unexpected(&present).is_empty());

    // Every container was restarted.
    let after = started_at(&now)?;
    for (m, at) in &before {
        assert_ne!(after.get(m), Some(at), "{m} was not restarted");
    }
    let kinds: Vec<String> = env
        .events(&name)
        .await?
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_owned))
        .collect();
    assert!(kinds.iter().any(|k| k == "operation_started"), "{kinds:?}");
    assert!(
        kinds.iter().any(|k| k == "operation_succeeded"),
        "{kinds:?}"
    );
    // The operation is listed with the instance.
    let list = env.get(&format!("/v1/instances/{name}/operations")).await?;
    assert_eq!(list[0]["id"], id.as_str(), "{list}");
    Ok(())
}

/// Stop and start as operations, on Redis 1 + 1: a stopped instance's containers stop, its
/// status says so, nothing is failed over however long it stays stopped, other operations are
/// refused; started again it has the same primary at the same epoch and every acknowledged
/// key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_instance_is_never_failed_over_and_starts_with_its_data() -> Result<()> {
    let env = Env::start_with(3, FAST).await?;
    let name = unique_name("ss");
    let inst = env.create_ready(&name, "redis", 1).await?;
    let pw = env.app_password(&name).await?;
    let primary = Env::primary_member(&inst)?["id"]
        .as_str()
        .context("id")?
        .to_owned();
    let writer = SetWriter::start(&env, &name, "redis", &pw).await?;
    writer.wait_acked(200, Duration::from_secs(60)).await?;
    let outcome = writer.stop().await?;

    // Labels: set by PATCH, selected by the list.
    let (s, body) = env
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/instances/{name}"),
            Some(json!({"labels": {"team": "pay", "env": "prod"}})),
        )
        .await?;
    assert!(s.is_success(), "{body}");
    let names = |v: Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["name"].as_str().map(str::to_owned))
            .collect()
    };
    let hit = names(
        env.get("/v1/instances?selector=team%3Dpay%2Cenv%3Dprod")
            .await?,
    );
    assert!(hit.contains(&name), "{hit:?}");
    let miss = names(env.get("/v1/instances?selector=team%3Dops").await?);
    assert!(!miss.contains(&name), "{miss:?}");
    let (s, body) = env
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/instances/{name}"),
            Some(json!({"labels": {"bad key": "x"}})),
        )
        .await?;
    assert_eq!(s, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    let cli = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(
            mofang_tests::cluster::binaries()
                .unwrap_or_default()
                .join("mofang"),
        );
        cmd.args(args)
            .envs(env.sched.cli_env())
            .env("MOFANG_TOKEN", &env.token);
        cmd.output()
    };
    let out = cli(&["instance", "stop", &name, "--wait"]).await?;
    if !out.status.success() {
        bail!(
            "mofang instance stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for m in inst["members"].as_array().context("members")? {
        let id = m["id"].as_str().context("id")?;
        let running = docker_cli(&["inspect", "-f", "{{.State.Running}}", &container_of(id)])?;
        assert_eq!(running, "false", "{id} still runs");
    }
    // Longer than the lease and the failover detection: still nothing failed over.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let v = env.get(&format!("/v1/instances/{name}")).await?;
    assert_eq!(v["status"], "stopped", "{v}");
    assert_eq!(v["epoch"], inst["epoch"], "failed over while stopped: {v}");
    let (s, body) = env
        .call(
            reqwest::Method::POST,
            &format!("/v1/instances/{name}/operations"),
            Some(json!({"type": "restart"})),
        )
        .await?;
    assert_eq!(s, reqwest::StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "instance_not_ready", "{body}");

    let out = cli(&["instance", "start", &name, "--wait"]).await?;
    if !out.status.success() {
        bail!(
            "mofang instance start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v = env.wait_instance_ready(&name).await?;
    assert_eq!(v["epoch"], inst["epoch"], "{v}");
    let now = Env::primary_member(&v)?;
    assert_eq!(now["id"], primary.as_str(), "{v}");
    let present = set_contents("redis", now["address"].as_str().context("address")?, &pw).await?;
    assert!(
        outcome.lost(&present).is_empty(),
        "lost across stop and start: {:?}",
        outcome.lost(&present)
    );
    let kinds: Vec<String> = env
        .events(&name)
        .await?
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_owned))
        .collect();
    assert!(
        !kinds.iter().any(|k| k.starts_with("failover")),
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| *k == "operation_succeeded").count(),
        2,
        "{kinds:?}"
    );
    Ok(())
}

/// Rebuild of a replica as an operation, on MariaDB 1 + 2 over four nodes: its container and
/// volume are replaced and seeded again from the other replica, and it holds every row; a
/// rebuild without a member is refused with 422. Then a replica rebuilt on the fourth node
/// (`--node`): a node holding a member is refused with 422, the move succeeds, the member is
/// on the new node with every row, the old node's agent removed its container.
/// What a member served as a copy, counted by its server: `(Com_backup, Com_show_create_db)`.
/// `mariadb-backup` runs `BACKUP STAGE` (5 a copy, measured on MariaDB 10.11); the logical
/// copy's `mariadb-dump --databases` asks `SHOW CREATE DATABASE` for each database.
fn copies(member: &str) -> Result<(u64, u64)> {
    let out = mofang_tests::scenario::admin_sql(
        member,
        "SHOW GLOBAL STATUS WHERE Variable_name IN ('Com_backup', 'Com_show_create_db')",
    )?;
    let mut v = out.split_whitespace().skip(1).step_by(2);
    let mut next = || -> Result<u64> { Ok(v.next().context("a counter")?.parse()?) };
    Ok((next()?, next()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_replica_is_a_new_container_seeded_with_every_row() -> Result<()> {
    use mysql_async::prelude::Queryable;
    let env = Env::start_with(4, FAST).await?;
    let name = unique_name("rb");
    let inst = env.create_ready(&name, "mariadb", 2).await?;
    let pw = env.app_password(&name).await?;
    let primary = Env::primary_member(&inst)?;
    {
        let mut c =
            mofang_tests::scenario::mysql(primary["address"].as_str().context("addr")?, &pw)
                .await?;
        c.query_drop("CREATE TABLE kept (id INT PRIMARY KEY)")
            .await?;
        for i in 0..100 {
            c.exec_drop("INSERT INTO kept VALUES (?)", (i,)).await?;
        }
    }
    // Cancel: a rolling restart cancelled at once stops at its next safe point (the restart
    // under way finishes), ends `cancelled`, and leaves the instance whole.
    let (s, op) = env
        .call(
            reqwest::Method::POST,
            &format!("/v1/instances/{name}/operations"),
            Some(json!({"type": "restart"})),
        )
        .await?;
    assert_eq!(s, reqwest::StatusCode::ACCEPTED, "{op}");
    let op_id = op["id"].as_str().context("id")?.to_owned();
    let out = tokio::process::Command::new(mofang_tests::cluster::binaries()?.join("mofang"))
        .args(["operation", "cancel", &op_id])
        .envs(env.sched.cli_env())
        .env("MOFANG_TOKEN", &env.token)
        .output()
        .await?;
    assert!(
        out.status.success(),
        "mofang operation cancel: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cancelled = operation_ended(&env, &op_id, Duration::from_secs(120)).await?;
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    let steps = cancelled["steps"].as_array().context("steps")?;
    assert!(steps.len() <= 1, "{cancelled}");
    assert!(steps.iter().all(|s| s["state"] == "done"), "{cancelled}");
    let inst = env.wait_instance_ready(&name).await?;

    let replica = inst["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["role"] == "replica"))
        .context("a replica")?;
    let id = replica["id"].as_str().context("id")?.to_owned();
    let before = docker_cli(&["inspect", "-f", "{{.Id}}", &container_of(&id)])?;
    let donor_before = inst["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "replica" && m["id"] != id.as_str())
        .filter_map(|m| {
            Some((
                m["id"].as_str()?.to_owned(),
                copies(m["id"].as_str()?).ok()?,
            ))
        })
        .collect::<BTreeMap<_, _>>();

    let (s, body) = env
        .call(
            reqwest::Method::POST,
            &format!("/v1/instances/{name}/operations"),
            Some(json!({"type": "rebuild"})),
        )
        .await?;
    assert_eq!(s, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    let out = tokio::process::Command::new(mofang_tests::cluster::binaries()?.join("mofang"))
        .args(["--json", "instance", "rebuild", &name, &id, "--wait"])
        .envs(env.sched.cli_env())
        .env("MOFANG_TOKEN", &env.token)
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "mofang instance rebuild: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let op: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(op["state"], "succeeded", "{op}");
    let after = docker_cli(&["inspect", "-f", "{{.Id}}", &container_of(&id)])?;
    assert_ne!(before, after, "the same container: not rebuilt");
    let v = env.wait_instance_ready(&name).await?;
    let m = v["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["id"] == id.as_str()))
        .context("the rebuilt member")?;
    let mut c = mofang_tests::scenario::mysql(m["address"].as_str().context("addr")?, &pw).await?;
    let n: Option<i64> = c.query_first("SELECT COUNT(*) FROM kept").await?;
    assert_eq!(n, Some(100), "rows on the rebuilt replica");
    drop(c);
    // Seeded from the other replica, not the primary (the step's event names the donor).
    let other = v["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["role"] == "replica" && m["id"] != id.as_str())
        .and_then(|m| m["id"].as_str())
        .context("the other replica")?
        .to_owned();
    let seeded_from =
        format!("rebuilding {id} (container and volume removed, seeded again from {other})");
    let events = env.events(&name).await?;
    assert!(
        events.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains(&seeded_from))),
        "no event {seeded_from:?}"
    );
    // ... as a physical copy (decision 167): mariadb-backup ran there, no dump.
    let (was, now) = (donor_before.get(&other).copied(), copies(&other)?);
    assert!(
        was.is_some_and(|(b, d)| now.0 > b && now.1 == d),
        "{other} served no physical copy (Com_backup, Com_show_create_db: {was:?} before, {now:?} after)"
    );

    // A switchover as an operation, to the rebuilt member.
    let (s, op) = env
        .call(
            reqwest::Method::POST,
            &format!("/v1/instances/{name}/operations"),
            Some(json!({"type": "switchover", "member": id})),
        )
        .await?;
    assert_eq!(s, reqwest::StatusCode::ACCEPTED, "{op}");
    let op_id = op["id"].as_str().context("id")?.to_owned();
    let done = operation_ended(&env, &op_id, Duration::from_secs(120)).await?;
    assert_eq!(done["state"], "succeeded", "{done}");
    let v = env.wait_instance_ready(&name).await?;
    assert_eq!(Env::primary_member(&v)?["id"], id.as_str(), "{v}");

    // The other replica rebuilt on the node that has no member (`--node`).
    let node_of = |v: &Value, m: &str| -> Result<String> {
        v["members"]
            .as_array()
            .and_then(|ms| ms.iter().find(|x| x["id"] == m))
            .and_then(|x| x["node"].as_str())
            .map(str::to_owned)
            .context("member's node")
    };
    let from = node_of(&v, &other)?;
    let taken: Vec<String> = v["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["node"].as_str().map(str::to_owned))
        .collect();
    let free = env
        .agents
        .iter()
        .map(|a| a.node.clone())
        .find(|n| !taken.contains(n))
        .context("a node without a member")?;
    let (s, body) = env
        .call(
            reqwest::Method::POST,
            &format!("/v1/instances/{name}/operations"),
            Some(json!({"type": "rebuild", "member": other, "node": node_of(&v, &id)?})),
        )
        .await?;
    assert_eq!(s, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("node"), "{body}");
    let before = docker_cli(&["inspect", "-f", "{{.Id}}", &container_of(&other)])?;
    let out = tokio::process::Command::new(mofang_tests::cluster::binaries()?.join("mofang"))
        .args([
            "--json", "instance", "rebuild", &name, &other, "--node", &free, "--wait",
        ])
        .envs(env.sched.cli_env())
        .env("MOFANG_TOKEN", &env.token)
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "mofang instance rebuild --node: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let op: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(op["node"], free.as_str(), "{op}");
    let v = env.wait_instance_ready(&name).await?;
    assert_eq!(node_of(&v, &other)?, free, "{v}");
    let after = docker_cli(&["inspect", "-f", "{{.Id}}", &container_of(&other)])?;
    assert_ne!(before, after, "the same container: not moved");
    let labels = docker_cli(&[
        "inspect",
        "-f",
        "{{index .Config.Labels \"mofang.node\"}}",
        &container_of(&other),
    ])?;
    assert_eq!(labels.trim(), free, "the container is the new node's");
    let m = v["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["id"] == other.as_str()))
        .context("the moved member")?;
    let mut c = mofang_tests::scenario::mysql(m["address"].as_str().context("addr")?, &pw).await?;
    let n: Option<i64> = c.query_first("SELECT COUNT(*) FROM kept").await?;
    assert_eq!(n, Some(100), "rows on the moved replica");
    drop(c);
    let events = env.events(&name).await?;
    let moved = format!("rebuilding {other} on {free} (moved from {from})");
    assert!(
        events
            .iter()
            .any(|e| e["message"].as_str().is_some_and(|m| m.contains(&moved))),
        "no event {moved:?}"
    );
    Ok(())
}

/// A batch restart of four Redis instances chosen by a label, `max_parallel` 2: every one
/// succeeds, and their operations never overlap more than two at a time (from the stored
/// operations' start and end times).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_restarts_the_selected_instances_at_most_max_parallel_at_once() -> Result<()> {
    let env = Env::start_with(3, FAST).await?;
    let tag = unique_name("b");
    let mut names = Vec::new();
    for i in 0..4 {
        let name = format!("{tag}-{i}");
        env.create_ready(&name, "redis", 0).await?;
        let (s, body) = env
            .call(
                reqwest::Method::PATCH,
                &format!("/v1/instances/{name}"),
                Some(json!({"labels": {"batch": tag}})),
            )
            .await?;
        assert!(s.is_success(), "{body}");
        names.push(name);
    }
    let out = tokio::process::Command::new(mofang_tests::cluster::binaries()?.join("mofang"))
        .args([
            "--json",
            "batch",
            "create",
            "-l",
            &format!("batch={tag}"),
            "--type",
            "restart",
            "--max-parallel",
            "2",
            "--wait",
        ])
        .envs(env.sched.cli_env())
        .env("MOFANG_TOKEN", &env.token)
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "mofang batch create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let b: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(b["state"], "succeeded", "{b}");
    let items = b["items"].as_array().context("items")?;
    assert_eq!(items.len(), 4, "{b}");
    let mut spans = Vec::new();
    for it in items {
        assert_eq!(it["state"], "succeeded", "{b}");
        let op = env
            .get(&format!(
                "/v1/operations/{}",
                it["operation"].as_str().unwrap_or_default()
            ))
            .await?;
        assert_eq!(op["state"], "succeeded", "{op}");
        spans.push((
            op["created_ms"].as_i64().context("created")?,
            op["ended_ms"].as_i64().context("ended")?,
        ));
    }
    // The most operations running at any one start time.
    let most = spans
        .iter()
        .map(|(at, _)| spans.iter().filter(|(s, e)| s <= at && at < e).count())
        .max()
        .unwrap_or(0);
    // Two start in the same round and each takes seconds: exactly two overlap.
    assert_eq!(most, 2, "{most} at once: {spans:?}");

    // Listed newest first (`mofang batch list`), and its events read backward
    // (`mofang events --last`, `--before`): the newest page, then the one older than it.
    let out = mofang_cli(&env, &["--json", "batch", "list", "--limit", "5"]).await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(listed[0]["id"], b["id"], "{listed}");
    let all = env.get("/v1/events?limit=10000").await?;
    let last = all.as_array().and_then(|a| a.last()).context("events")?["id"].as_u64();
    let out = mofang_cli(&env, &["--json", "events", "--last", "5"]).await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let newest: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    let ids = |evs: &[Value]| -> Vec<u64> { evs.iter().filter_map(|e| e["id"].as_u64()).collect() };
    let top = ids(&newest);
    assert_eq!(top.len(), 5, "{newest:?}");
    assert!(top.windows(2).all(|w| w[0] < w[1]), "oldest first: {top:?}");
    assert!(
        top.last().copied() >= last,
        "the newest: {top:?} vs {last:?}"
    );
    let before = top[0].to_string();
    let out = mofang_cli(
        &env,
        &["--json", "events", "--before", &before, "--limit", "3"],
    )
    .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let older: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        ids(&older),
        ((top[0] - 3)..top[0]).collect::<Vec<_>>(),
        "{older:?}"
    );
    // `since` with `before` is a window (decision 161): the newest entries between them.
    let (s, v) = env
        .call(reqwest::Method::GET, "/v1/events?since=1&before=9", None)
        .await?;
    assert_eq!(s.as_u16(), 200, "{v}");
    let window: Vec<Value> = serde_json::from_value(v)?;
    assert_eq!(ids(&window), (2..9).collect::<Vec<_>>(), "{window:?}");
    // Ids stop at the store's signed 64-bit range.
    let (s, v) = env
        .call(
            reqwest::Method::GET,
            "/v1/events?before=9223372036854775808",
            None,
        )
        .await?;
    assert_eq!(s.as_u16(), 400, "{v}");
    Ok(())
}

/// Runs the `mofang` CLI with the environment's scheduler and token.
async fn mofang_cli(env: &Env, args: &[&str]) -> Result<std::process::Output> {
    Ok(
        tokio::process::Command::new(mofang_tests::cluster::binaries()?.join("mofang"))
            .args(args)
            .envs(env.sched.cli_env())
            .env("MOFANG_TOKEN", &env.token)
            .output()
            .await?,
    )
}

/// Starts an operation and expects a refusal: the status and a message naming `names`.
async fn refused(env: &Env, name: &str, body: Value, status: u16, names: &str) -> Result<()> {
    let (s, v) = env
        .call(
            reqwest::Method::POST,
            &format!("/v1/instances/{name}/operations"),
            Some(body.clone()),
        )
        .await?;
    assert_eq!(s.as_u16(), status, "{body} -> {v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains(names), "{body} -> {v}");
    Ok(())
}

/// The steps of an operation as `action member-or-from state`.
fn step_lines(op: &Value) -> Vec<String> {
    op["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            format!(
                "{} {} {}",
                s["action"].as_str().unwrap_or_default(),
                s["member"]
                    .as_str()
                    .or(s["from"].as_str())
                    .unwrap_or_default(),
                s["state"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

/// Scale, resize, reconfigure and expand, one MariaDB instance driven through all four under the
/// Jepsen set writer (issue 17): 1 + 1 scaled to 1 + 2 (the new replica seeded from the
/// replica, holding every acknowledged row), back to 1 + 1 (the primary unchanged, the newest
/// replica's container gone), a memory and CPU resize by rolling restart (the new limits in
/// `docker inspect` and the API), then `max_connections` changed live on every member with no
/// restart, then the volumes grown in place. Bad input answers 4xx naming the field; nothing
/// acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_resize_reconfigure_and_expand_one_instance_under_writes_lose_nothing() -> Result<()>
{
    let env = Env::start_with(3, FAST).await?;
    let name = unique_name("sc");
    let inst = env.create_ready(&name, "mariadb", 1).await?;
    let pw = env.app_password(&name).await?;
    let first = Env::primary_member(&inst)?;
    let primary = first["id"].as_str().context("id")?.to_owned();
    let replica = inst["members"]
        .as_array()
        .context("members")?
        .iter()
        .find(|m| m["role"] == "replica")
        .and_then(|m| m["id"].as_str())
        .context("replica")?
        .to_owned();
    let writer = SetWriter::start(&env, &name, "mariadb", &pw).await?;
    writer.wait_acked(100, Duration::from_secs(60)).await?;

    // Bad input: nothing starts.
    refused(&env, &name, json!({"type": "scale"}), 422, "replicas").await?;
    refused(
        &env,
        &name,
        json!({"type": "scale", "replicas": 0}),
        422,
        "replicas",
    )
    .await?;
    refused(
        &env,
        &name,
        json!({"type": "scale", "replicas": 9}),
        422,
        "replicas",
    )
    .await?;
    refused(
        &env,
        &name,
        json!({"type": "scale", "replicas": 1}),
        422,
        "already",
    )
    .await?;
    // 1 + 3 needs four nodes, one member per node: refused with each node's reason.
    refused(
        &env,
        &name,
        json!({"type": "scale", "replicas": 3}),
        409,
        "cannot place",
    )
    .await?;

    let before = (copies(&primary)?, copies(&replica)?);

    // Scale up through the CLI.
    let out = mofang_cli(
        &env,
        &[
            "--json",
            "instance",
            "scale",
            &name,
            "--replicas",
            "2",
            "--wait",
        ],
    )
    .await?;
    if !out.status.success() {
        bail!(
            "mofang instance scale: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let op: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(op["state"], "succeeded", "{op}");
    let steps = op["steps"].as_array().context("steps")?;
    assert_eq!(steps.len(), 1, "{op}");
    assert_eq!(steps[0]["action"], "add_replica", "{op}");
    assert_eq!(
        steps[0]["donor"],
        replica.as_str(),
        "seeded from the replica, not the primary: {op}"
    );
    let added = steps[0]["member"].as_str().context("member")?.to_owned();
    // A physical copy of the replica (decision 167): the replica ran mariadb-backup, nobody
    // was dumped, and the primary served nothing.
    let (after_primary, after_replica) = (copies(&primary)?, copies(&replica)?);
    assert_eq!(after_primary, before.0, "the primary served a copy");
    assert!(
        after_replica.0 > before.1 .0 && after_replica.1 == before.1 .1,
        "{replica} served no physical copy (Com_backup, Com_show_create_db: {before:?} before, {after_replica:?} after)"
    );
    let v = env.wait_instance_ready(&name).await?;
    assert_eq!(v["members"].as_array().map(Vec::len), Some(3), "{v}");
    assert_eq!(v["replicas"], 2, "{v}");
    let new = v["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["id"] == added.as_str())
        .context("the new member")?
        .clone();
    assert_eq!(new["role"], "replica", "{v}");
    assert_ne!(new["node"], first["node"], "{v}");
    // It holds every row acknowledged so far (and keeps replicating).
    let acked_now = writer.acked();
    writer
        .wait_acked(acked_now + 50, Duration::from_secs(60))
        .await?;
    let addr = new["address"].as_str().context("address")?.to_owned();
    let primary_addr = Env::primary_member(&v)?["address"]
        .as_str()
        .context("address")?
        .to_owned();
    eventually(
        "the new replica holds what the primary has",
        Duration::from_secs(60),
        || async {
            let at_primary = set_contents("mariadb", &primary_addr, &pw).await?;
            let at_new = set_contents("mariadb", &addr, &pw).await?;
            let missing = at_primary.difference(&at_new).count();
            if at_primary.len() >= 150 && missing == 0 {
                Ok(())
            } else {
                bail!("{missing} of {} rows missing", at_primary.len())
            }
        },
    )
    .await?;

    // Scale down: the newest of two equal replicas goes; the primary stays.
    let (s, op) = env
        .call(
            reqwest::Method::POST,
            &format!("/v1/instances/{name}/operations"),
            Some(json!({"type": "scale", "replicas": 1})),
        )
        .await?;
    assert_eq!(s, reqwest::StatusCode::ACCEPTED, "{op}");
    let id = op["id"].as_str().context("id")?.to_owned();
    let op = operation_ended(&env, &id, Duration::from_secs(180)).await?;
    assert_eq!(op["state"], "succeeded", "{op}");
    let lines = step_lines(&op);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("remove_replica "), "{lines:?}");
    assert!(!lines[0].contains(&primary), "never the primary: {lines:?}");
    let v = env.wait_instance_ready(&name).await?;
    assert_eq!(v["members"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(Env::primary_member(&v)?["id"], primary.as_str(), "{v}");
    assert_eq!(v["epoch"], inst["epoch"], "no failover: {v}");
    let removed = lines[0].split(' ').nth(1).context("member")?.to_owned();
    eventually(
        "the removed member's container is gone",
        Duration::from_secs(60),
        || async {
            match docker_cli(&["inspect", "-f", "{{.Id}}", &container_of(&removed)]) {
                Err(_) => Ok(()),
                Ok(id) => bail!("{removed} still has container {id}"),
            }
        },
    )
    .await?;

    // Resize: a size no node holds is refused with the figures; then memory and CPU.
    refused(&env, &name, json!({"type": "resize"}), 422, "cpu").await?;
    refused(
        &env,
        &name,
        json!({"type": "resize", "cpu": 100}),
        422,
        "cpu",
    )
    .await?;
    refused(
        &env,
        &name,
        json!({"type": "resize", "memory": 1_000_000}),
        409,
        "MiB free",
    )
    .await?;
    let before = started_at(&v)?;
    let (s, op) = env
        .call(
            reqwest::Method::POST,
            &format!("/v1/instances/{name}/operations"),
            Some(json!({"type": "resize", "cpu": 0.75, "memory": 512})),
        )
        .await?;
    assert_eq!(s, reqwest::StatusCode::ACCEPTED, "{op}");
    let id = op["id"].as_str().context("id")?.to_owned();
    let op = operation_ended(&env, &id, Duration::from_secs(300)).await?;
    assert_eq!(op["state"], "succeeded", "{op}");
    let lines = step_lines(&op);
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines[0].starts_with("set_resources"), "{lines:?}");
    assert!(
        lines[1].starts_with("restart ") && !lines[1].contains(&primary),
        "{lines:?}"
    );
    assert_eq!(lines[2], format!("switchover {primary} done"), "{lines:?}");
    assert_eq!(lines[3], format!("restart {primary} done"), "{lines:?}");
    let v = env.wait_instance_ready(&name).await?;
    assert_eq!(v["spec"]["resources"]["memory"], 512, "{v}");
    let after = started_at(&v)?;
    for m in v["members"].as_array().context("members")? {
        let id = m["id"].as_str().context("id")?;
        let limits = docker_cli(&[
            "inspect",
            "-f",
            "{{.HostConfig.Memory}} {{.HostConfig.CpuQuota}} {{.HostConfig.CpuPeriod}}",
            &container_of(id),
        ])?;
        assert_eq!(limits, format!("{} 75000 100000", 512u64 << 20), "{id}");
        assert_eq!(m["memory_bytes"], 512u64 << 20, "{v}");
        assert_eq!(m["cpu"], 0.75, "{v}");
        assert_ne!(after.get(id), before.get(id), "{id} was not restarted");
    }

    // Reconfigure: the catalogue, bad input, then max_connections live everywhere.
    let engines = env.get("/v1/engines").await?;
    let param = engines
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["engine"] == "mariadb")
        .flat_map(|e| e["parameters"].as_array().cloned().unwrap_or_default())
        .find(|p| p["name"] == "max_connections")
        .context("max_connections in /v1/engines")?;
    assert_eq!(param["dynamic"], true, "{param}");
    assert_eq!(param["type"], "integer", "{param}");
    refused(
        &env,
        &name,
        json!({"type": "reconfigure", "settings": {"max_conections": 300}}),
        422,
        "settings.max_conections",
    )
    .await?;
    refused(
        &env,
        &name,
        json!({"type": "reconfigure", "settings": {"max_connections": 5}}),
        422,
        "10 ..= 10000",
    )
    .await?;
    let before = started_at(&v)?;
    let out = mofang_cli(
        &env,
        &[
            "--json",
            "instance",
            "reconfigure",
            &name,
            "--set",
            "max_connections=321",
            "--wait",
        ],
    )
    .await?;
    if !out.status.success() {
        bail!(
            "mofang instance reconfigure: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let op: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(step_lines(&op), ["set_parameters  done"], "{op}");
    let v = env.get(&format!("/v1/instances/{name}")).await?;
    assert_eq!(v["parameters"]["max_connections"], "321", "{v}");
    for m in v["members"].as_array().context("members")? {
        use mysql_async::prelude::Queryable;
        let addr = m["address"].as_str().context("address")?;
        let mut c = mofang_tests::scenario::mysql(addr, &pw).await?;
        let n: Option<u64> = c.query_first("SELECT @@global.max_connections").await?;
        assert_eq!(n, Some(321), "{}", m["id"]);
    }
    assert_eq!(started_at(&v)?, before, "a live change restarts nothing");

    // Expand: volumes only grow, within the disk's room; in place, no restart.
    refused(
        &env,
        &name,
        json!({"type": "expand", "disk": 256}),
        422,
        "disk",
    )
    .await?;
    refused(
        &env,
        &name,
        json!({"type": "expand", "disk": 100_000}),
        409,
        "MiB free",
    )
    .await?;
    let out = mofang_cli(
        &env,
        &[
            "--json", "instance", "expand", &name, "--disk", "1024", "--wait",
        ],
    )
    .await?;
    if !out.status.success() {
        bail!(
            "mofang instance expand: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let op: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(step_lines(&op), ["set_disk  done"], "{op}");
    let v = env.get(&format!("/v1/instances/{name}")).await?;
    assert_eq!(v["spec"]["resources"]["disk"], 1024, "{v}");
    for m in v["members"].as_array().context("members")? {
        assert_eq!(m["volume_bytes"], 1024u64 << 20, "{v}");
    }
    assert_eq!(started_at(&v)?, before, "an expand restarts nothing");

    // Nothing acknowledged was lost through all of it.
    let outcome = writer.stop().await?;
    let v = env.wait_instance_ready(&name).await?;
    let present = set_contents(
        "mariadb",
        Env::primary_member(&v)?["address"]
            .as_str()
            .context("address")?,
        &pw,
    )
    .await?;
    eprintln!(
        "scale, resize, reconfigure, expand: acknowledged {}, lost {}, longest write outage {:?}",
        outcome.acked.len(),
        outcome.lost(&present).len(),
        outcome.longest_gap
    );
    assert!(
        outcome.lost(&present).is_empty(),
        "lost {:?}",
        outcome.lost(&present)
    );
    assert!(outcome.unexpected(&present).is_empty());
    Ok(())
}

/// Each member's container image (`docker inspect`) and the server binary's version in it.
fn member_versions(inst: &Value, engine: &str) -> Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    for m in inst["members"].as_array().context("members")? {
        let id = m["id"].as_str().context("id")?.to_owned();
        let c = container_of(&id);
        let image = docker_cli(&["inspect", "-f", "{{.Config.Image}}", &c])?;
        let binary = match engine {
            "mariadb" => docker_cli(&["exec", &c, "mariadbd", "--version"])?,
            _ => docker_cli(&["exec", &c, "redis-server", "--version"])?,
        };
        out.push((id, image.trim().to_owned(), binary.trim().to_owned()));
    }
    Ok(out)
}

/// An instance of `engine` on the first version of `ladder`, with two replicas, upgraded rung
/// by rung to the last under the Jepsen set writer (issue 17): a skip and a downgrade are
/// refused with 422 naming the versions; each upgrade sets the record's version, then restarts
/// the replicas, switches over and restarts the old primary, each member recreated on the new
/// version's image (the container's image and server binary checked) and reporting it; no
/// acknowledged write is lost. The longest write outage is printed beside a plain switchover's.
async fn upgrade_ladder_under_writes(engine: &str, ladder: &[&str]) -> Result<()> {
    let env = Env::start_with(3, FAST).await?;
    let name = unique_name(&format!("up{}", &engine[..1]));
    let mut body = mofang_tests::scenario::spec(&name, engine, 2);
    body["version"] = json!(ladder[0]);
    let (s, v) = env
        .call(reqwest::Method::POST, "/v1/instances", Some(body))
        .await?;
    assert_eq!(s, reqwest::StatusCode::CREATED, "{v}");
    let first = env.wait_instance_ready(&name).await?;
    let addresses = |inst: &Value| -> BTreeMap<String, String> {
        inst["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                Some((
                    m["id"].as_str()?.to_owned(),
                    m["address"].as_str()?.to_owned(),
                ))
            })
            .collect()
    };
    let before = addresses(&first);
    let pw = env.app_password(&name).await?;
    // One rung at a time, never down.
    let top = ladder[ladder.len() - 1];
    refused(
        &env,
        &name,
        json!({"type": "upgrade", "version": top}),
        422,
        &format!("skips {}", ladder[1]),
    )
    .await?;
    refused(
        &env,
        &name,
        json!({"type": "upgrade", "version": ladder[0]}),
        422,
        "already runs",
    )
    .await?;
    refused(
        &env,
        &name,
        json!({"type": "upgrade"}),
        422,
        "needs `version`",
    )
    .await?;

    let writer = SetWriter::start(&env, &name, engine, &pw).await?;
    writer.wait_acked(200, Duration::from_secs(60)).await?;
    for (from, to) in ladder.iter().zip(&ladder[1..]) {
        let started = std::time::Instant::now();
        let out = mofang_cli(&env, &["--json", "instance", "upgrade", &name, to]).await?;
        if !out.status.success() {
            bail!(
                "mofang instance upgrade: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let op: Value = serde_json::from_slice(&out.stdout)?;
        let id = op["id"].as_str().context("operation id")?.to_owned();
        let v = operation_ended(&env, &id, Duration::from_secs(600)).await?;
        let steps = step_lines(&v);
        eprintln!(
            "{engine} {from} -> {to}: {} in {:?}: {steps:?}",
            v["state"],
            started.elapsed()
        );
        assert_eq!(v["state"], "succeeded", "{v}");
        assert_eq!(steps.len(), 5, "{steps:?}");
        assert_eq!(steps[0], format!("set_version {from} done"), "{steps:?}");
        assert!(
            steps[1].starts_with("restart ") && steps[2].starts_with("restart "),
            "{steps:?}"
        );
        assert!(
            steps[3].starts_with("switchover ") && steps[4].starts_with("restart "),
            "{steps:?}"
        );
        // Downgrading back is refused.
        refused(
            &env,
            &name,
            json!({"type": "upgrade", "version": from}),
            422,
            "cannot be downgraded",
        )
        .await?;

        let inst = env.wait_instance_ready(&name).await?;
        assert_eq!(inst["version"], *to, "{inst}");
        for m in inst["members"].as_array().context("members")? {
            assert_eq!(m["version"], *to, "every member reports {to}: {inst}");
        }
        for (id, image, binary) in member_versions(&inst, engine)? {
            eprintln!("  {id}: {image}: {binary}");
            assert!(
                image.ends_with(&format!("/{engine}:{to}")),
                "{id} runs {image}"
            );
            let expect = if engine == "mariadb" {
                format!("Ver {to}.")
            } else {
                format!("v={to}.")
            };
            assert!(binary.contains(&expect), "{id}: {binary}");
        }
    }
    let acked = writer.acked();
    writer
        .wait_acked(acked + 200, Duration::from_secs(60))
        .await?;
    let upgrades = writer.stop().await?;

    // A plain switchover under a writer of its own (ids from 1,000,000 on), for the outage
    // to compare with.
    let writer = SetWriter::start_from(
        mofang_tests::scenario::PrimarySource::api(&env, &name),
        engine,
        &pw,
        1_000_000,
    )
    .await?;
    writer.wait_acked(100, Duration::from_secs(60)).await?;
    // An operation begins on a whole instance: the last upgraded member may still be
    // catching up when the instance reads ready (409 instance_not_ready meanwhile).
    let op = eventually("switchover accepted", Duration::from_secs(60), || async {
        let (s, op) = env
            .call(
                reqwest::Method::POST,
                &format!("/v1/instances/{name}/operations"),
                Some(json!({"type": "switchover"})),
            )
            .await?;
        anyhow::ensure!(s == reqwest::StatusCode::ACCEPTED, "{s} {op}");
        Ok(op)
    })
    .await?;
    let v = operation_ended(
        &env,
        op["id"].as_str().context("id")?,
        Duration::from_secs(120),
    )
    .await?;
    assert_eq!(v["state"], "succeeded", "{v}");
    let acked = writer.acked();
    writer
        .wait_acked(acked + 100, Duration::from_secs(60))
        .await?;
    let switchover = writer.stop().await?;

    let now = env.wait_instance_ready(&name).await?;
    // Every container was made again on each rung; every member kept its address.
    assert_eq!(addresses(&now), before, "{now}");
    let primary = Env::primary_member(&now)?;
    let present =
        set_contents(engine, primary["address"].as_str().context("address")?, &pw).await?;
    eprintln!(
        "{engine} upgrade {}: acknowledged {}, lost {}, longest write outage {:?}; a plain switchover's: {:?}",
        ladder.join(" -> "),
        upgrades.acked.len(),
        upgrades.lost(&present).len(),
        upgrades.longest_gap,
        switchover.longest_gap
    );
    assert!(
        upgrades.lost(&present).is_empty(),
        "lost {:?}",
        upgrades.lost(&present)
    );
    assert!(
        switchover.lost(&present).is_empty(),
        "lost {:?}",
        switchover.lost(&present)
    );
    let (first, second): (std::collections::BTreeSet<u64>, _) =
        present.iter().partition(|id| **id < 1_000_000);
    assert!(upgrades.unexpected(&first).is_empty());
    assert!(switchover.unexpected(&second).is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_upgrades_from_10_5_to_10_11_to_11_8_under_writes_losing_nothing() -> Result<()> {
    upgrade_ladder_under_writes("mariadb", &["10.5", "10.11", "11.8"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_upgrades_from_6_0_to_7_0_to_8_0_under_writes_losing_nothing() -> Result<()> {
    upgrade_ladder_under_writes("redis", &["6.0", "7.0", "8.0"]).await
}

/// Scheduler `kill -9` at every step of a rolling upgrade (issue 17): MariaDB 10.5 with two
/// replicas upgraded to 10.11 under the Jepsen set writer; each time the operation shows a
/// new step, the scheduler is killed and started again on the same data. The operation ends
/// `succeeded` with its five steps (each once), every member runs and reports 10.11, there
/// is one primary, and no acknowledged write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_resumes_after_a_scheduler_kill_at_every_step_losing_nothing() -> Result<()> {
    let (from, to) = ("10.5", "10.11");
    let mut env = Env::start_with(3, FAST).await?;
    let name = unique_name("upk");
    let mut body = mofang_tests::scenario::spec(&name, "mariadb", 2);
    body["version"] = json!(from);
    let (s, v) = env
        .call(reqwest::Method::POST, "/v1/instances", Some(body))
        .await?;
    assert_eq!(s, reqwest::StatusCode::CREATED, "{v}");
    env.wait_instance_ready(&name).await?;
    let pw = env.app_password(&name).await?;
    let writer = SetWriter::start(&env, &name, "mariadb", &pw).await?;
    writer.wait_acked(200, Duration::from_secs(60)).await?;

    let started = std::time::Instant::now();
    let (s, op) = env
        .call(
            reqwest::Method::POST,
            &format!("/v1/instances/{name}/operations"),
            Some(json!({"type": "upgrade", "version": to})),
        )
        .await?;
    assert_eq!(s, reqwest::StatusCode::ACCEPTED, "{op}");
    let id = op["id"].as_str().context("operation id")?.to_owned();

    // Each new step seen: the scheduler dies and comes back on the same data. A step done at
    // once (`set_version`) may be seen done; the kill still lands between two steps.
    let mut kills: Vec<String> = Vec::new();
    let mut seen = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(900);
    let end = loop {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the upgrade did not end in 900 s; kills at {kills:?}"
        );
        // Just restarted, the scheduler may not answer yet.
        let Ok(v) = env.get(&format!("/v1/operations/{id}")).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if matches!(
            v["state"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            break v;
        }
        let steps = step_lines(&v);
        if steps.len() > seen {
            seen = steps.len();
            let at = steps.last().cloned().unwrap_or_default();
            eprintln!("{:?}: kill -9 at {at}", started.elapsed());
            kills.push(at);
            env.sched.restart()?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let steps = step_lines(&end);
    eprintln!(
        "upgrade {from} -> {to} with {} scheduler kills: {} in {:?}: {steps:?}",
        kills.len(),
        end["state"],
        started.elapsed()
    );
    assert_eq!(end["state"], "succeeded", "{end}\nkills at {kills:?}");
    assert_eq!(steps.len(), 5, "{steps:?}");
    assert_eq!(steps[0], format!("set_version {from} done"), "{steps:?}");
    assert!(
        steps[1].starts_with("restart ") && steps[2].starts_with("restart "),
        "{steps:?}"
    );
    assert!(
        steps[3].starts_with("switchover ") && steps[4].starts_with("restart "),
        "{steps:?}"
    );
    assert!(steps.iter().all(|s| s.ends_with(" done")), "{steps:?}");
    // A kill at each step (the first may be seen already done).
    assert!(kills.len() >= 4, "kills at {kills:?}");

    let acked = writer.acked();
    writer
        .wait_acked(acked + 200, Duration::from_secs(120))
        .await?;
    let outcome = writer.stop().await?;
    let inst = env.wait_instance_ready(&name).await?;
    let members = inst["members"].as_array().context("members")?;
    assert_eq!(
        members.iter().filter(|m| m["role"] == "primary").count(),
        1,
        "one primary: {inst}"
    );
    for m in members {
        assert_eq!(m["version"], to, "every member reports {to}: {inst}");
    }
    for (id, image, binary) in member_versions(&inst, "mariadb")? {
        eprintln!("  {id}: {image}: {binary}");
        assert!(
            image.ends_with(&format!("/mariadb:{to}")),
            "{id} runs {image}"
        );
        assert!(binary.contains(&format!("Ver {to}.")), "{id}: {binary}");
    }
    let primary = Env::primary_member(&inst)?;
    let present = set_contents(
        "mariadb",
        primary["address"].as_str().context("address")?,
        &pw,
    )
    .await?;
    eprintln!(
        "upgrade under scheduler kills: acknowledged {}, lost {}, longest write outage {:?}",
        outcome.acked.len(),
        outcome.lost(&present).len(),
        outcome.longest_gap
    );
    assert!(
        outcome.lost(&present).is_empty(),
        "lost {:?}",
        outcome.lost(&present)
    );
    assert!(outcome.unexpected(&present).is_empty());
    Ok(())
}

/// Cancel mid-upgrade (issue 17): MariaDB 10.5 with two replicas, upgrading to 10.11 under
/// the Jepsen set writer, cancelled once the first replica is upgraded. The operation ends
/// `cancelled` at a safe point (a restart under way finishes first) and leaves a consistent
/// instance: every member healthy, on 10.5 or 10.11 (at least the upgraded replica on 10.11),
/// exactly one primary, writes go on, and no acknowledged write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_cancelled_after_the_first_replica_leaves_a_consistent_instance() -> Result<()> {
    let (from, to) = ("10.5", "10.11");
    let env = Env::start_with(3, FAST).await?;
    let name = unique_name("upc");
    let mut body = mofang_tests::scenario::spec(&name, "mariadb", 2);
    body["version"] = json!(from);
    let (s, v) = env
        .call(reqwest::Method::POST, "/v1/instances", Some(body))
        .await?;
    assert_eq!(s, reqwest::StatusCode::CREATED, "{v}");
    env.wait_instance_ready(&name).await?;
    let pw = env.app_password(&name).await?;
    let writer = SetWriter::start(&env, &name, "mariadb", &pw).await?;
    writer.wait_acked(200, Duration::from_secs(60)).await?;

    let (s, op) = env
        .call(
            reqwest::Method::POST,
            &format!("/v1/instances/{name}/operations"),
            Some(json!({"type": "upgrade", "version": to})),
        )
        .await?;
    assert_eq!(s, reqwest::StatusCode::ACCEPTED, "{op}");
    let id = op["id"].as_str().context("operation id")?.to_owned();
    // The first replica's restart step done: it runs 10.11 beside a 10.5 primary.
    let first = eventually(
        "the first replica upgraded",
        Duration::from_secs(300),
        || async {
            let v = env.get(&format!("/v1/operations/{id}")).await?;
            let steps = step_lines(&v);
            match steps.get(1) {
                Some(s) if s.starts_with("restart ") && s.ends_with(" done") => {
                    Ok(s.split(' ').nth(1).unwrap_or_default().to_owned())
                }
                _ => bail!("{steps:?}"),
            }
        },
    )
    .await?;
    let out = mofang_cli(&env, &["--json", "operation", "cancel", &id]).await?;
    assert!(
        out.status.success(),
        "mofang operation cancel: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let end = operation_ended(&env, &id, Duration::from_secs(600)).await?;
    let steps = step_lines(&end);
    eprintln!(
        "upgrade cancelled after {first}: {} {steps:?}",
        end["state"]
    );
    assert_eq!(end["state"], "cancelled", "{end}");
    assert!(steps.iter().all(|s| s.ends_with(" done")), "{steps:?}");

    let acked = writer.acked();
    writer
        .wait_acked(acked + 200, Duration::from_secs(120))
        .await?;
    let outcome = writer.stop().await?;
    let inst = env.wait_instance_ready(&name).await?;
    let members = inst["members"].as_array().context("members")?;
    assert_eq!(members.len(), 3, "{inst}");
    assert_eq!(
        members.iter().filter(|m| m["role"] == "primary").count(),
        1,
        "one primary: {inst}"
    );
    for m in members {
        assert_eq!(m["healthy"], true, "{inst}");
        assert!(
            m["version"] == from || m["version"] == to,
            "{} on {}: {inst}",
            m["id"],
            m["version"]
        );
        if m["id"] == first.as_str() {
            assert_eq!(m["version"], to, "{first} was upgraded: {inst}");
        }
    }
    for (id, image, binary) in member_versions(&inst, "mariadb")? {
        eprintln!("  {id}: {image}: {binary}");
        let reported = members
            .iter()
            .find(|m| m["id"] == id.as_str())
            .and_then(|m| m["version"].as_str())
            .unwrap_or_default();
        assert!(
            image.ends_with(&format!("/mariadb:{reported}")),
            "{id} reports {reported}, runs {image}"
        );
        assert!(
            binary.contains(&format!("Ver {reported}.")),
            "{id}: {binary}"
        );
    }
    let primary = Env::primary_member(&inst)?;
    let present = set_contents(
        "mariadb",
        primary["address"].as_str().context("address")?,
        &pw,
    )
    .await?;
    eprintln!(
        "cancelled upgrade: acknowledged {}, lost {}, longest write outage {:?}",
        outcome.acked.len(),
        outcome.lost(&present).len(),
        outcome.longest_gap
    );
    assert!(
        outcome.lost(&present).is_empty(),
        "lost {:?}",
        outcome.lost(&present)
    );
    assert!(outcome.unexpected(&present).is_empty());
    Ok(())
}

/// The most intervals of `spans` (start, end) open at once: counted at each start.
fn most_at_once(spans: &[(i64, i64)]) -> usize {
    spans
        .iter()
        .map(|(at, _)| spans.iter().filter(|(s, e)| s <= at && at < e).count())
        .max()
        .unwrap_or(0)
}

/// A batch restart of 20 instances with `max_parallel` 4 (issue 17): twenty single-member
/// Redis instances as small as the API takes, labelled, restarted by one batch through the
/// CLI. Every operation succeeds, and never more than four instances are restarting at once:
/// counted from each instance's events (`operation_started` to `operation_succeeded`) and
/// from the stored operations' times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_restart_of_twenty_instances_never_runs_more_than_four_at_once() -> Result<()> {
    const N: usize = 20;
    let env = Env::start_with(3, FAST).await?;
    let tag = unique_name("b20");
    let mut names = Vec::new();
    for i in 0..N {
        let name = format!("{tag}-{i}");
        let mut body = mofang_tests::scenario::spec(&name, "redis", 0);
        // Twenty on three agents of 2 cores and 2 GiB each.
        body["resources"] = json!({"cpu": 0.2, "memory": 128, "disk": 128});
        body["labels"] = json!({"batch": tag});
        let (s, v) = env
            .call(reqwest::Method::POST, "/v1/instances", Some(body))
            .await?;
        assert_eq!(s, reqwest::StatusCode::CREATED, "{v}");
        names.push(name);
    }
    for name in &names {
        env.wait_instance_ready(name).await?;
    }
    let started = std::time::Instant::now();
    let out = mofang_cli(
        &env,
        &[
            "--json",
            "batch",
            "create",
            "-l",
            &format!("batch={tag}"),
            "--type",
            "restart",
            "--max-parallel",
            "4",
            "--wait",
        ],
    )
    .await?;
    if !out.status.success() {
        bail!(
            "mofang batch create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let b: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(b["state"], "succeeded", "{b}");
    let items = b["items"].as_array().context("items")?;
    assert_eq!(items.len(), N, "{b}");

    let mut from_ops = Vec::new();
    let mut from_events = Vec::new();
    for it in items {
        assert_eq!(it["state"], "succeeded", "{b}");
        let id = it["operation"].as_str().context("operation")?;
        let op = env.get(&format!("/v1/operations/{id}")).await?;
        assert_eq!(op["state"], "succeeded", "{op}");
        from_ops.push((
            op["created_ms"].as_i64().context("created")?,
            op["ended_ms"].as_i64().context("ended")?,
        ));
        // The instance's own record of it.
        let instance = op["instance"].as_str().context("instance")?;
        let events = env.events(instance).await?;
        let at = |kind: &str| {
            events
                .iter()
                .find(|e| {
                    e["kind"] == kind && e["message"].as_str().is_some_and(|m| m.contains(id))
                })
                .and_then(|e| e["at_ms"].as_i64())
        };
        let (Some(s), Some(e)) = (at("operation_started"), at("operation_succeeded")) else {
            bail!("{instance}: no start or end event for {id}: {events:?}");
        };
        from_events.push((s, e));
    }
    let (by_events, by_ops) = (most_at_once(&from_events), most_at_once(&from_ops));
    let first = from_events.iter().map(|s| s.0).min().unwrap_or(0);
    let last = from_events.iter().map(|s| s.1).max().unwrap_or(0);
    eprintln!(
        "batch restart of {N}, max_parallel 4: all succeeded in {:?} ({} ms from the first start event to the last end); at most {by_events} at once by the events, {by_ops} by the operations",
        started.elapsed(),
        last - first
    );
    assert!(by_events <= 4, "{by_events} at once: {from_events:?}");
    assert!(by_ops <= 4, "{by_ops} at once: {from_ops:?}");
    // The limit is used, not only kept: four start together and each takes seconds.
    assert_eq!(by_ops, 4, "{from_ops:?}");
    Ok(())
}

/// The parameters of each member (issue 17, `GET /v1/instances/{name}/parameters`).
async fn parameters(env: &Env, name: &str) -> Result<Value> {
    env.get(&format!("/v1/instances/{name}/parameters")).await
}

/// One member's entry for `param` in the parameters view.
fn member_param<'v>(view: &'v Value, member: &str, param: &str) -> Result<&'v Value> {
    view["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["member"] == member)
        .and_then(|m| {
            m["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == param)
        })
        .with_context(|| format!("{member} {param} in {view}"))
}

/// Desired against effective parameters (issue 17): MariaDB 1 + 1 reconfigured live to
/// `max_connections=321` shows 321 on every member and no drift (the API and `mofang instance
/// parameters`); then `SET GLOBAL max_connections = 77` run directly in the replica's server,
/// behind the platform's back, shows that member drifting and the primary not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_show_the_live_value_on_every_member_and_a_change_behind_the_platforms_back_as_drift(
) -> Result<()> {
    let env = Env::start_with(2, FAST).await?;
    let name = unique_name("prm");
    let inst = env.create_ready(&name, "mariadb", 1).await?;
    let primary = Env::primary_member(&inst)?["id"]
        .as_str()
        .context("id")?
        .to_owned();
    let replica = inst["members"]
        .as_array()
        .context("members")?
        .iter()
        .find(|m| m["role"] == "replica")
        .and_then(|m| m["id"].as_str())
        .context("replica")?
        .to_owned();
    let members = [primary.clone(), replica.clone()];

    // Before any reconfigure: every value is the server's own, read from it; nothing drifts.
    let v = eventually(
        "every member reports its parameters",
        Duration::from_secs(60),
        || async {
            let v = parameters(&env, &name).await?;
            for m in &members {
                let p = member_param(&v, m, "max_connections")?;
                if p["state"] != "default" || !p["effective"].is_string() {
                    bail!("{m}: {p}");
                }
            }
            Ok(v)
        },
    )
    .await?;
    assert_eq!(v["drift"], json!([]), "{v}");
    assert_eq!(v["engine"], "mariadb", "{v}");
    let (s, body) = env
        .call(
            reqwest::Method::GET,
            "/v1/instances/t-no-such/parameters",
            None,
        )
        .await?;
    assert_eq!(s.as_u16(), 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found", "{body}");

    // A live reconfigure: the new value on every member, in sync, no drift.
    let before = started_at(&inst)?;
    let out = mofang_cli(
        &env,
        &[
            "--json",
            "instance",
            "reconfigure",
            &name,
            "--set",
            "max_connections=321",
            "--wait",
        ],
    )
    .await?;
    if !out.status.success() {
        bail!(
            "mofang instance reconfigure: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let op: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(op["state"], "succeeded", "{op}");
    let v = eventually(
        "every member runs max_connections 321",
        Duration::from_secs(60),
        || async {
            let v = parameters(&env, &name).await?;
            for m in &members {
                let p = member_param(&v, m, "max_connections")?;
                if p["state"] != "in_sync" {
                    bail!("{m}: {p}");
                }
            }
            Ok(v)
        },
    )
    .await?;
    assert_eq!(v["desired"], json!({"max_connections": "321"}), "{v}");
    assert_eq!(v["drift"], json!([]), "{v}");
    for m in &members {
        let p = member_param(&v, m, "max_connections")?;
        assert_eq!(p["effective"], "321", "{v}");
        assert_eq!(p["desired"], "321", "{v}");
    }
    assert_eq!(started_at(&inst)?, before, "a live change restarts nothing");
    let out = mofang_cli(&env, &["instance", "parameters", &name]).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("no drift"), "{text}");
    eprintln!("{text}");

    // Behind the platform's back: SET GLOBAL in the replica's own server.
    docker_cli(&[
        "exec",
        &container_of(&replica),
        "mariadb",
        "--defaults-extra-file=/etc/mofang/client.cnf",
        "--socket=/run/mysqld/mysqld.sock",
        "-e",
        "SET GLOBAL max_connections = 77",
    ])?;
    let v = eventually(
        "the replica shows as drifting",
        Duration::from_secs(60),
        || async {
            let v = parameters(&env, &name).await?;
            if v["drift"].as_array().is_some_and(|d| !d.is_empty()) {
                Ok(v)
            } else {
                bail!("{v}")
            }
        },
    )
    .await?;
    assert_eq!(
        v["drift"],
        json!([{"member": replica, "parameter": "max_connections", "desired": "321", "effective": "77"}]),
        "{v}"
    );
    assert_eq!(
        member_param(&v, &replica, "max_connections")?["state"],
        "drift",
        "{v}"
    );
    assert_eq!(
        member_param(&v, &primary, "max_connections")?["state"],
        "in_sync",
        "{v}"
    );
    let out = mofang_cli(&env, &["instance", "parameters", &name]).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "drift: {replica} runs max_connections=77, desired 321"
        )),
        "{text}"
    );
    eprintln!("{text}");
    let out = mofang_cli(&env, &["--json", "instance", "parameters", &name]).await?;
    let j: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(j["drift"], v["drift"], "{j}");

    // A reconfigure with the desired value sets it again: the drift is gone.
    let out = mofang_cli(
        &env,
        &[
            "--json",
            "instance",
            "reconfigure",
            &name,
            "--set",
            "max_connections=321",
            "--wait",
        ],
    )
    .await?;
    let op: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(op["state"], "succeeded", "{op}");
    eventually("the drift is gone", Duration::from_secs(60), || async {
        let v = parameters(&env, &name).await?;
        let p = member_param(&v, &replica, "max_connections")?;
        if v["drift"] == json!([]) && p["effective"] == "321" {
            Ok(())
        } else {
            bail!("{v}")
        }
    })
    .await?;
    Ok(())
}

/// Redis scale 1 -> 3 -> 1 replicas under the Jepsen set writer (issue 17): through the CLI
/// two `add_replica` steps, each new replica on a node of its own and, after a full sync
/// from the primary, holding every acknowledged write; back to one replica through the API:
/// two `remove_replica` steps, never the primary, no failover (the epoch and the primary
/// unchanged), the removed members' containers gone; nothing acknowledged lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_scales_from_one_to_three_replicas_and_back_under_writes_losing_nothing() -> Result<()>
{
    let env = Env::start_with(4, FAST).await?;
    let name = unique_name("rsc");
    let inst = env.create_ready(&name, "redis", 1).await?;
    let pw = env.app_password(&name).await?;
    let first = Env::primary_member(&inst)?;
    let primary = first["id"].as_str().context("id")?.to_owned();
    let writer = SetWriter::start(&env, &name, "redis", &pw).await?;
    writer.wait_acked(100, Duration::from_secs(60)).await?;

    // Up to three replicas through the CLI, one at a time.
    let out = mofang_cli(
        &env,
        &[
            "--json",
            "instance",
            "scale",
            &name,
            "--replicas",
            "3",
            "--wait",
        ],
    )
    .await?;
    if !out.status.success() {
        bail!(
            "mofang instance scale: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let op: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(op["state"], "succeeded", "{op}");
    let lines = step_lines(&op);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines.iter().all(|l| l.starts_with("add_replica ")),
        "{lines:?}"
    );
    let added: Vec<String> = op["steps"]
        .as_array()
        .context("steps")?
        .iter()
        .filter_map(|s| s["member"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(added.len(), 2, "{op}");
    let v = env.wait_instance_ready(&name).await?;
    assert_eq!(v["replicas"], 3, "{v}");
    let members = v["members"].as_array().context("members")?;
    assert_eq!(members.len(), 4, "{v}");
    let nodes: std::collections::BTreeSet<&str> =
        members.iter().filter_map(|m| m["node"].as_str()).collect();
    assert_eq!(nodes.len(), 4, "one member per node: {v}");
    assert_eq!(Env::primary_member(&v)?["id"], primary.as_str(), "{v}");
    assert_eq!(v["epoch"], inst["epoch"], "no failover: {v}");

    // Each new replica holds every write acknowledged before it was looked at, and follows.
    let acked_now = writer.acked();
    writer
        .wait_acked(acked_now + 50, Duration::from_secs(60))
        .await?;
    for id in &added {
        let m = members
            .iter()
            .find(|m| m["id"] == id.as_str())
            .context("new member")?;
        assert_eq!(m["role"], "replica", "{v}");
        let addr = m["address"].as_str().context("address")?.to_owned();
        let primary_addr = Env::primary_member(&v)?["address"]
            .as_str()
            .context("address")?
            .to_owned();
        eventually(
            "the new replica holds every key the primary has",
            Duration::from_secs(60),
            || async {
                let at_primary = set_contents("redis", &primary_addr, &pw).await?;
                let at_new = set_contents("redis", &addr, &pw).await?;
                let missing = at_primary.difference(&at_new).count();
                if at_primary.len() as u64 >= acked_now && missing == 0 {
                    Ok(())
                } else {
                    bail!("{id}: {missing} of {} keys missing", at_primary.len())
                }
            },
        )
        .await?;
    }

    // Back to one replica through the API: two removals, never the primary.
    let (s, op) = env
        .call(
            reqwest::Method::POST,
            &format!("/v1/instances/{name}/operations"),
            Some(json!({"type": "scale", "replicas": 1})),
        )
        .await?;
    assert_eq!(s, reqwest::StatusCode::ACCEPTED, "{op}");
    let id = op["id"].as_str().context("id")?.to_owned();
    let op = operation_ended(&env, &id, Duration::from_secs(300)).await?;
    assert_eq!(op["state"], "succeeded", "{op}");
    let lines = step_lines(&op);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let mut removed = Vec::new();
    for l in &lines {
        assert!(l.starts_with("remove_replica "), "{lines:?}");
        let m = l.split(' ').nth(1).context("member")?.to_owned();
        assert_ne!(m, primary, "never the primary: {lines:?}");
        removed.push(m);
    }
    let v = env.wait_instance_ready(&name).await?;
    assert_eq!(v["replicas"], 1, "{v}");
    assert_eq!(v["members"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(Env::primary_member(&v)?["id"], primary.as_str(), "{v}");
    assert_eq!(v["epoch"], inst["epoch"], "no failover: {v}");
    for m in &removed {
        eventually(
            "the removed member's container is gone",
            Duration::from_secs(60),
            || async {
                match docker_cli(&["inspect", "-f", "{{.Id}}", &container_of(m)]) {
                    Err(_) => Ok(()),
                    Ok(id) => bail!("{m} still has container {id}"),
                }
            },
        )
        .await?;
    }

    // Nothing acknowledged was lost; the replica left holds it all too.
    let outcome = writer.stop().await?;
    let v = env.wait_instance_ready(&name).await?;
    let present = set_contents(
        "redis",
        Env::primary_member(&v)?["address"]
            .as_str()
            .context("address")?,
        &pw,
    )
    .await?;
    let lost = outcome.lost(&present);
    eprintln!(
        "redis scale 1 -> 3 -> 1: acknowledged {}, lost {}, longest write outage {:?}, removed {removed:?}",
        outcome.acked.len(),
        lost.len(),
        outcome.longest_gap
    );
    assert!(lost.is_empty(), "lost {lost:?}");
    let left = v["members"]
        .as_array()
        .context("members")?
        .iter()
        .find(|m| m["role"] == "replica")
        .and_then(|m| m["address"].as_str())
        .context("replica")?
        .to_owned();
    eventually(
        "the replica left holds every acknowledged key",
        Duration::from_secs(60),
        || async {
            let at = set_contents("redis", &left, &pw).await?;
            let missing = outcome.lost(&at);
            if missing.is_empty() {
                Ok(())
            } else {
                bail!("{} acknowledged keys missing", missing.len())
            }
        },
    )
    .await?;
    Ok(())
}

/// `CONFIG GET <param>` on a Redis member as the platform's admin user.
async fn redis_config(addr: &str, admin: &str, param: &str) -> Result<String> {
    let mut c = mofang_tests::agent_scenarios::redis_conn(addr, "mofang_admin", admin).await?;
    let kv: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(param)
        .query_async(&mut c)
        .await?;
    kv.get(1)
        .cloned()
        .with_context(|| format!("{param}: {kv:?}"))
}

/// Redis parameters end to end (issue 17): Redis 1 + 1 under the set writer, reconfigured
/// live (`maxmemory-policy`, `hz`: every member's server runs them at once, no container
/// restarted, in sync), then with a restart-needing one (`databases`: a rolling restart,
/// the replica first, a switchover, the old primary last; every server runs it, no
/// acknowledged write lost); a `CONFIG SET`
/// behind the platform's back on the replica shows as drift on that member only, and a
/// reconfigure to the desired value clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_parameters_apply_live_or_by_rolling_restart_and_show_drift() -> Result<()> {
    let env = Env::start_with(2, FAST).await?;
    let name = unique_name("rpm");
    let inst = env.create_ready(&name, "redis", 1).await?;
    let pw = env.app_password(&name).await?;
    let creds = env
        .get(&format!("/v1/instances/{name}/credentials"))
        .await?;
    let admin = creds["admin"].as_str().context("admin")?.to_owned();
    let addresses: BTreeMap<String, String> = inst["members"]
        .as_array()
        .context("members")?
        .iter()
        .filter_map(|m| {
            Some((
                m["id"].as_str()?.to_owned(),
                m["address"].as_str()?.to_owned(),
            ))
        })
        .collect();
    let writer = SetWriter::start(&env, &name, "redis", &pw).await?;
    writer.wait_acked(50, Duration::from_secs(60)).await?;

    // Live: applied by CONFIG SET on the running servers, nothing restarted.
    let before = started_at(&inst)?;
    let reconfigure = |settings: &'static [&'static str]| {
        let env = &env;
        let name = name.clone();
        async move {
            let mut args = vec!["--json", "instance", "reconfigure", name.as_str()];
            for s in settings {
                args.extend(["--set", s]);
            }
            args.push("--wait");
            let out = mofang_cli(env, &args).await?;
            if !out.status.success() {
                bail!(
                    "mofang instance reconfigure {settings:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let op: Value = serde_json::from_slice(&out.stdout)?;
            anyhow::ensure!(op["state"] == "succeeded", "{op}");
            Ok(op)
        }
    };
    let op = reconfigure(&["maxmemory-policy=allkeys-lru", "hz=20"]).await?;
    assert!(
        step_lines(&op).iter().all(|l| !l.starts_with("restart")),
        "a live change restarts nothing: {:?}",
        step_lines(&op)
    );
    for addr in addresses.values() {
        assert_eq!(
            redis_config(addr, &admin, "maxmemory-policy").await?,
            "allkeys-lru"
        );
        assert_eq!(redis_config(addr, &admin, "hz").await?, "20");
    }
    assert_eq!(started_at(&inst)?, before, "no container restarted");
    eventually("both in sync", Duration::from_secs(60), || async {
        let v = parameters(&env, &name).await?;
        for m in addresses.keys() {
            for p in ["maxmemory-policy", "hz"] {
                let e = member_param(&v, m, p)?;
                if e["state"] != "in_sync" {
                    bail!("{m} {p}: {e}");
                }
            }
        }
        Ok(())
    })
    .await?;

    // Restart-needing: a rolling restart, replicas first; every server runs it after.
    let op = reconfigure(&["databases=32"]).await?;
    let restarts: Vec<String> = step_lines(&op)
        .into_iter()
        .filter(|l| l.starts_with("restart"))
        .collect();
    assert_eq!(
        restarts.len(),
        2,
        "each member restarted once: {:?}",
        step_lines(&op)
    );
    assert!(
        step_lines(&op).iter().any(|l| l.starts_with("switchover")),
        "the primary last, after a switchover: {:?}",
        step_lines(&op)
    );
    let v = env.wait_instance_ready(&name).await?;
    let primary = Env::primary_member(&v)?["id"]
        .as_str()
        .context("id")?
        .to_owned();
    let replica = addresses
        .keys()
        .find(|m| **m != primary)
        .context("replica")?
        .clone();
    for m in v["members"].as_array().context("members")? {
        let addr = m["address"].as_str().context("address")?;
        assert_eq!(redis_config(addr, &admin, "databases").await?, "32", "{m}");
        // The live values survive the restart (rendered into the config too).
        assert_eq!(redis_config(addr, &admin, "hz").await?, "20", "{m}");
    }
    writer
        .wait_acked(writer.acked() + 50, Duration::from_secs(60))
        .await?;
    let outcome = writer.stop().await?;
    let now = Env::primary_member(&v)?;
    let present = set_contents("redis", now["address"].as_str().context("address")?, &pw).await?;
    assert!(
        outcome.lost(&present).is_empty(),
        "lost across the rolling restart: {:?}",
        outcome.lost(&present)
    );

    // Behind the platform's back: CONFIG SET on the replica's own server.
    let replica_addr = v["members"]
        .as_array()
        .context("members")?
        .iter()
        .find(|m| m["id"] == replica.as_str())
        .and_then(|m| m["address"].as_str())
        .context("replica address")?
        .to_owned();
    let mut c =
        mofang_tests::agent_scenarios::redis_conn(&replica_addr, "mofang_admin", &admin).await?;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("hz")
        .arg("5")
        .query_async(&mut c)
        .await?;
    let v = eventually("the replica drifts", Duration::from_secs(60), || async {
        let v = parameters(&env, &name).await?;
        if v["drift"].as_array().is_some_and(|d| !d.is_empty()) {
            Ok(v)
        } else {
            bail!("{v}")
        }
    })
    .await?;
    assert_eq!(
        v["drift"],
        json!([{"member": replica, "parameter": "hz", "desired": "20", "effective": "5"}]),
        "{v}"
    );
    assert_eq!(member_param(&v, &primary, "hz")?["state"], "in_sync", "{v}");
    reconfigure(&["hz=20"]).await?;
    eventually("the drift is gone", Duration::from_secs(60), || async {
        let v = parameters(&env, &name).await?;
        if v["drift"] == json!([]) && redis_config(&replica_addr, &admin, "hz").await? == "20" {
            Ok(())
        } else {
            bail!("{v}")
        }
    })
    .await?;
    Ok(())
}

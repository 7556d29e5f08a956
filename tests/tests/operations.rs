//! Day-2 operations end to end (issue 17): a real scheduler, three real agents, real MariaDB,
//! the Jepsen set writer of `tests/src/scenario.rs`.

use anyhow::{bail, Context, Result};
use mofang_scheduler::client::{self, InstancePatch, LogRange, NewOperation};
use mofang_scheduler::cluster::InstanceView;
use mofang_scheduler::model::{Event, Resources};
use mofang_scheduler::ops::batch::Batch;
use mofang_scheduler::ops::drift::{Drift, ParamState, ParameterValue, ParametersView};
use mofang_scheduler::ops::{OpKind, OpState, OpStep, Operation, StepAction, StepState};
use mofang_tests::scenario::{
    container_of, docker_cli, instance_spec, primary_of, replica_of, set_contents, Env, SetWriter,
};
use mofang_tests::{eventually, unique_name};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

const FAST: &str = "[failover]\nlease_ttl_ms = 2000\nreplace_after_ms = 8000\n";

/// When each member's container last started (`docker inspect`).
fn started_at(inst: &InstanceView) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for m in &inst.members {
        let at = docker_cli(&[
            "inspect",
            "-f",
            "{{.State.StartedAt}}",
            &container_of(&m.id),
        ])?;
        out.insert(m.id.clone(), at);
    }
    Ok(out)
}

/// Waits until operation `id` has ended (succeeded, failed or cancelled); returns it.
async fn operation_ended(env: &Env, id: &str, limit: Duration) -> Result<Operation> {
    let c = env.client();
    eventually("operation ended", limit, || async {
        let v = c.operation(id).await?;
        if v.state.is_terminal() {
            Ok(v)
        } else {
            bail!("{v:?}")
        }
    })
    .await
}

/// The refusal a call was expected to end with; an error if it was accepted.
fn refusal<T: std::fmt::Debug>(r: client::Result<T>) -> Result<client::Error> {
    match r {
        Ok(v) => bail!("accepted: {v:?}"),
        Err(e) => Ok(e),
    }
}

/// What the scheduler said of a refusal (the API's `error.message`); empty for any other
/// failure.
fn message(e: &client::Error) -> &str {
    match e {
        client::Error::Api { message, .. } => message,
        _ => "",
    }
}

/// The labels of a PATCH that sets each of `pairs`.
fn set_labels(pairs: &[(&str, &str)]) -> InstancePatch {
    InstancePatch {
        labels: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Some((*v).to_owned())))
            .collect(),
        ..InstancePatch::default()
    }
}

/// A `reconfigure` with `settings` as JSON values.
fn reconfigure_op(settings: &[(&str, serde_json::Value)]) -> NewOperation {
    NewOperation {
        settings: Some(
            settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        ),
        ..NewOperation::new(OpKind::Reconfigure)
    }
}

/// A rolling restart of MariaDB 1 + 2 under the set writer, with the scheduler `kill -9`ed
/// and restarted mid-operation: the operation resumes and succeeds (replicas, switchover, the
/// old primary), every container was restarted, and no acknowledged write is lost. A second
/// operation while it runs is refused with 409 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_writes_survives_a_scheduler_kill_and_loses_nothing() -> Result<()> {
    let mut env = Env::start_with(3, FAST).await?;
    let name = unique_name("rr");
    let inst = env.create(&name, "mariadb", 2).await?;
    let pw = env.app_password(&name).await?;
    let old_primary = primary_of(&inst)?.id.clone();
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
    let op: Operation = serde_json::from_slice(&out.stdout)?;
    let id = op.id.clone();
    assert_eq!(op.state, OpState::Running, "{op:?}");

    // One at a time.
    let c = env.client();
    let err = refusal(
        c.start_operation(&name, &NewOperation::new(OpKind::Restart))
            .await,
    )?;
    assert_eq!(err.status(), Some(409), "{err}");
    assert_eq!(err.code(), Some("operation_running"), "{err}");
    assert!(message(&err).contains(&id), "{err}");

    // The scheduler dies once the first replica's restart is done.
    eventually("a first step done", Duration::from_secs(120), || async {
        let v = c.operation(&id).await?;
        if v.steps.iter().any(|s| s.state == StepState::Done) {
            Ok(())
        } else {
            bail!("{v:?}")
        }
    })
    .await?;
    env.sched.restart()?;

    let v = operation_ended(&env, &id, Duration::from_secs(300)).await?;
    assert_eq!(v.state, OpState::Succeeded, "{v:?}");
    let steps = step_lines(&v);
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
    let now = env.ready(&name).await?;
    let primary = primary_of(&now)?;
    assert_ne!(primary.id, old_primary, "the primary moved: {now:?}");
    let present = set_contents("mariadb", &primary.address, &pw).await?;
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
    let kinds = event_kinds(&env.instance_events(&name).await?);
    assert!(kinds.iter().any(|k| k == "operation_started"), "{kinds:?}");
    assert!(
        kinds.iter().any(|k| k == "operation_succeeded"),
        "{kinds:?}"
    );
    // The operation is listed with the instance.
    let list = env.client().operations(&name).await?;
    assert_eq!(
        list.first().map(|o| o.id.as_str()),
        Some(id.as_str()),
        "{list:?}"
    );
    Ok(())
}

/// The kinds of `events`, in order.
fn event_kinds(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.kind.clone()).collect()
}

/// Stop and start as operations, on Redis 1 + 1: a stopped instance's containers stop, its
/// status says so, nothing is failed over however long it stays stopped, other operations are
/// refused; started again it has the same primary at the same epoch and every acknowledged
/// key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_instance_is_never_failed_over_and_starts_with_its_data() -> Result<()> {
    let env = Env::start_with(3, FAST).await?;
    let name = unique_name("ss");
    let inst = env.create(&name, "redis", 1).await?;
    let pw = env.app_password(&name).await?;
    let primary = primary_of(&inst)?.id.clone();
    let writer = SetWriter::start(&env, &name, "redis", &pw).await?;
    writer.wait_acked(200, Duration::from_secs(60)).await?;
    let outcome = writer.stop().await?;

    // Labels: set by PATCH, selected by the list.
    let c = env.client();
    c.patch_instance(&name, &set_labels(&[("team", "pay"), ("env", "prod")]))
        .await
        .context("PATCH labels")?;
    let names = |v: Vec<InstanceView>| -> Vec<String> { v.into_iter().map(|i| i.name).collect() };
    let hit = names(c.instances(Some("team=pay,env=prod")).await?);
    assert!(hit.contains(&name), "{hit:?}");
    let miss = names(c.instances(Some("team=ops")).await?);
    assert!(!miss.contains(&name), "{miss:?}");
    let err = refusal(
        c.patch_instance(&name, &set_labels(&[("bad key", "x")]))
            .await,
    )?;
    assert_eq!(err.status(), Some(422), "{err}");
    assert_eq!(err.code(), Some("invalid"), "{err}");

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
    for m in &inst.members {
        let id = &m.id;
        let running = docker_cli(&["inspect", "-f", "{{.State.Running}}", &container_of(id)])?;
        assert_eq!(running, "false", "{id} still runs");
    }
    // Longer than the lease and the failover detection: still nothing failed over.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let v = c.instance(&name).await?;
    assert_eq!(v.status, "stopped", "{v:?}");
    assert_eq!(v.epoch, inst.epoch, "failed over while stopped: {v:?}");
    let err = refusal(
        c.start_operation(&name, &NewOperation::new(OpKind::Restart))
            .await,
    )?;
    assert_eq!(err.status(), Some(409), "{err}");
    assert_eq!(err.code(), Some("instance_not_ready"), "{err}");

    let out = cli(&["instance", "start", &name, "--wait"]).await?;
    if !out.status.success() {
        bail!(
            "mofang instance start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v = env.ready(&name).await?;
    assert_eq!(v.epoch, inst.epoch, "{v:?}");
    let now = primary_of(&v)?;
    assert_eq!(now.id, primary, "{v:?}");
    let present = set_contents("redis", &now.address, &pw).await?;
    assert!(
        outcome.lost(&present).is_empty(),
        "lost across stop and start: {:?}",
        outcome.lost(&present)
    );
    let kinds = event_kinds(&env.instance_events(&name).await?);
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
    let inst = env.create(&name, "mariadb", 2).await?;
    let pw = env.app_password(&name).await?;
    let primary = primary_of(&inst)?;
    {
        let mut c = mofang_tests::scenario::mysql(&primary.address, &pw).await?;
        c.query_drop("CREATE TABLE kept (id INT PRIMARY KEY)")
            .await?;
        for i in 0..100 {
            c.exec_drop("INSERT INTO kept VALUES (?)", (i,)).await?;
        }
    }
    // Cancel: a rolling restart cancelled at once stops at its next safe point (the restart
    // under way finishes), ends `cancelled`, and leaves the instance whole.
    let api = env.client();
    let op = api
        .start_operation(&name, &NewOperation::new(OpKind::Restart))
        .await?;
    let op_id = op.id.clone();
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
    assert_eq!(cancelled.state, OpState::Cancelled, "{cancelled:?}");
    let steps = &cancelled.steps;
    assert!(steps.len() <= 1, "{cancelled:?}");
    assert!(
        steps.iter().all(|s| s.state == StepState::Done),
        "{cancelled:?}"
    );
    let inst = env.ready(&name).await?;

    let replica = replica_of(&inst)?;
    let id = replica.id.clone();
    let before = docker_cli(&["inspect", "-f", "{{.Id}}", &container_of(&id)])?;
    let donor_before = inst
        .members
        .iter()
        .filter(|m| m.role == "replica" && m.id != id)
        .filter_map(|m| Some((m.id.clone(), copies(&m.id).ok()?)))
        .collect::<BTreeMap<_, _>>();

    let err = refusal(
        api.start_operation(&name, &NewOperation::new(OpKind::Rebuild))
            .await,
    )?;
    assert_eq!(err.status(), Some(422), "{err}");
    assert_eq!(err.code(), Some("invalid"), "{err}");

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
    let op: Operation = serde_json::from_slice(&out.stdout)?;
    assert_eq!(op.state, OpState::Succeeded, "{op:?}");
    let after = docker_cli(&["inspect", "-f", "{{.Id}}", &container_of(&id)])?;
    assert_ne!(before, after, "the same container: not rebuilt");
    let v = env.ready(&name).await?;
    let m = v
        .members
        .iter()
        .find(|m| m.id == id)
        .context("the rebuilt member")?;
    let mut c = mofang_tests::scenario::mysql(&m.address, &pw).await?;
    let n: Option<i64> = c.query_first("SELECT COUNT(*) FROM kept").await?;
    assert_eq!(n, Some(100), "rows on the rebuilt replica");
    drop(c);
    // Seeded from the other replica, not the primary (the step's event names the donor).
    let other = v
        .members
        .iter()
        .find(|m| m.role == "replica" && m.id != id)
        .map(|m| m.id.clone())
        .context("the other replica")?;
    let seeded_from =
        format!("rebuilding {id} (container and volume removed, seeded again from {other})");
    let events = env.instance_events(&name).await?;
    assert!(
        events.iter().any(|e| e.message.contains(&seeded_from)),
        "no event {seeded_from:?}"
    );
    // ... as a physical copy (decision 167): mariadb-backup ran there, no dump.
    let (was, now) = (donor_before.get(&other).copied(), copies(&other)?);
    assert!(
        was.is_some_and(|(b, d)| now.0 > b && now.1 == d),
        "{other} served no physical copy (Com_backup, Com_show_create_db: {was:?} before, {now:?} after)"
    );

    // A switchover as an operation, to the rebuilt member.
    let op = api
        .start_operation(
            &name,
            &NewOperation {
                member: Some(id.clone()),
                ..NewOperation::new(OpKind::Switchover)
            },
        )
        .await?;
    let done = operation_ended(&env, &op.id, Duration::from_secs(120)).await?;
    assert_eq!(done.state, OpState::Succeeded, "{done:?}");
    let v = env.ready(&name).await?;
    assert_eq!(primary_of(&v)?.id, id, "{v:?}");

    // The other replica rebuilt on the node that has no member (`--node`).
    let node_of = |v: &InstanceView, m: &str| -> Result<String> {
        v.members
            .iter()
            .find(|x| x.id == m)
            .map(|x| x.node.clone())
            .context("member's node")
    };
    let from = node_of(&v, &other)?;
    let taken: Vec<String> = v.members.iter().map(|m| m.node.clone()).collect();
    let free = env
        .agents
        .iter()
        .map(|a| a.node.clone())
        .find(|n| !taken.contains(n))
        .context("a node without a member")?;
    let err = refusal(
        api.start_operation(
            &name,
            &NewOperation {
                member: Some(other.clone()),
                node: Some(node_of(&v, &id)?),
                ..NewOperation::new(OpKind::Rebuild)
            },
        )
        .await,
    )?;
    assert_eq!(err.status(), Some(422), "{err}");
    assert_eq!(err.code(), Some("invalid"), "{err}");
    assert!(message(&err).contains("node"), "{err}");
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
    let op: Operation = serde_json::from_slice(&out.stdout)?;
    assert_eq!(op.state, OpState::Succeeded, "{op:?}");
    assert_eq!(op.node.as_deref(), Some(free.as_str()), "{op:?}");
    let v = env.ready(&name).await?;
    assert_eq!(node_of(&v, &other)?, free, "{v:?}");
    let after = docker_cli(&["inspect", "-f", "{{.Id}}", &container_of(&other)])?;
    assert_ne!(before, after, "the same container: not moved");
    let labels = docker_cli(&[
        "inspect",
        "-f",
        "{{index .Config.Labels \"mofang.node\"}}",
        &container_of(&other),
    ])?;
    assert_eq!(labels.trim(), free, "the container is the new node's");
    let m = v
        .members
        .iter()
        .find(|m| m.id == other)
        .context("the moved member")?;
    let mut c = mofang_tests::scenario::mysql(&m.address, &pw).await?;
    let n: Option<i64> = c.query_first("SELECT COUNT(*) FROM kept").await?;
    assert_eq!(n, Some(100), "rows on the moved replica");
    drop(c);
    let events = env.instance_events(&name).await?;
    let moved = format!("rebuilding {other} on {free} (moved from {from})");
    assert!(
        events.iter().any(|e| e.message.contains(&moved)),
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
    let c = env.client();
    let tag = unique_name("b");
    let mut names = Vec::new();
    for i in 0..4 {
        let name = format!("{tag}-{i}");
        env.create(&name, "redis", 0).await?;
        c.patch_instance(&name, &set_labels(&[("batch", tag.as_str())]))
            .await
            .with_context(|| format!("PATCH {name} labels"))?;
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
    let b: Batch = serde_json::from_slice(&out.stdout)?;
    assert_eq!(b.state, OpState::Succeeded, "{b:?}");
    let items = &b.items;
    assert_eq!(items.len(), 4, "{b:?}");
    let mut spans = Vec::new();
    for it in items {
        assert_eq!(it.state, "succeeded", "{b:?}");
        let op = c
            .operation(it.operation.as_deref().unwrap_or_default())
            .await?;
        assert_eq!(op.state, OpState::Succeeded, "{op:?}");
        spans.push((op.created_ms, op.ended_ms));
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
    let listed: Vec<Batch> = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        listed.first().map(|l| l.id.as_str()),
        Some(b.id.as_str()),
        "{listed:?}"
    );
    let all = c
        .events(
            None,
            LogRange {
                limit: Some(10000),
                ..LogRange::default()
            },
        )
        .await?;
    let last = all.last().context("events")?.id;
    let out = mofang_cli(&env, &["--json", "events", "--last", "5"]).await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let newest: Vec<Event> = serde_json::from_slice(&out.stdout)?;
    let ids = |evs: &[Event]| -> Vec<u64> { evs.iter().map(|e| e.id).collect() };
    let top = ids(&newest);
    assert_eq!(top.len(), 5, "{newest:?}");
    assert!(top.windows(2).all(|w| w[0] < w[1]), "oldest first: {top:?}");
    assert!(
        top.last().copied() >= Some(last),
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
    let older: Vec<Event> = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        ids(&older),
        ((top[0] - 3)..top[0]).collect::<Vec<_>>(),
        "{older:?}"
    );
    // `since` with `before` is a window (decision 161): the newest entries between them.
    let window = c
        .events(
            None,
            LogRange {
                since: Some(1),
                before: Some(9),
                limit: None,
            },
        )
        .await?;
    assert_eq!(ids(&window), (2..9).collect::<Vec<_>>(), "{window:?}");
    // Ids stop at the store's signed 64-bit range.
    let err = refusal(
        c.events(
            None,
            LogRange {
                before: Some(9_223_372_036_854_775_808),
                ..LogRange::default()
            },
        )
        .await,
    )?;
    assert_eq!(err.status(), Some(400), "{err}");
    assert_eq!(err.code(), Some("bad_query"), "{err}");
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

/// Starts an operation and expects a refusal: the status (a 422 with the code `invalid`)
/// and a message naming `names`.
async fn refused(env: &Env, name: &str, op: &NewOperation, status: u16, names: &str) -> Result<()> {
    let body = serde_json::to_string(op)?;
    let err =
        refusal(env.client().start_operation(name, op).await).with_context(|| body.clone())?;
    assert_eq!(err.status(), Some(status), "{body} -> {err}");
    if status == 422 {
        assert_eq!(err.code(), Some("invalid"), "{body} -> {err}");
    }
    assert!(message(&err).contains(names), "{body} -> {err}");
    Ok(())
}

/// The member a step is for, when it names one.
fn step_member(action: &StepAction) -> Option<&str> {
    match action {
        StepAction::Restart { member, .. }
        | StepAction::Rebuild { member, .. }
        | StepAction::AddReplica { member, .. }
        | StepAction::RemoveReplica { member } => Some(member),
        StepAction::Switchover { .. }
        | StepAction::Stop
        | StepAction::Start
        | StepAction::SetResources { .. }
        | StepAction::SetParameters { .. }
        | StepAction::SetDisk { .. }
        | StepAction::SetVersion { .. } => None,
    }
}

/// A step as `action member-or-from state`, its action and state as the API names them.
fn step_line(s: &OpStep) -> String {
    let (action, from) = match &s.action {
        StepAction::Restart { .. } => ("restart", None),
        StepAction::Rebuild { .. } => ("rebuild", None),
        StepAction::AddReplica { .. } => ("add_replica", None),
        StepAction::RemoveReplica { .. } => ("remove_replica", None),
        StepAction::Switchover { from } => ("switchover", Some(from.as_str())),
        StepAction::Stop => ("stop", None),
        StepAction::Start => ("start", None),
        StepAction::SetResources { .. } => ("set_resources", None),
        StepAction::SetParameters { .. } => ("set_parameters", None),
        StepAction::SetDisk { .. } => ("set_disk", None),
        StepAction::SetVersion { from, .. } => ("set_version", Some(from.as_str())),
    };
    let state = match s.state {
        StepState::Running => "running",
        StepState::Done => "done",
        StepState::Failed => "failed",
    };
    format!(
        "{action} {} {state}",
        step_member(&s.action).or(from).unwrap_or_default()
    )
}

/// The steps of an operation as `action member-or-from state`.
fn step_lines(op: &Operation) -> Vec<String> {
    op.steps.iter().map(step_line).collect()
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
    let api = env.client();
    let name = unique_name("sc");
    let inst = env.create(&name, "mariadb", 1).await?;
    let pw = env.app_password(&name).await?;
    let first = primary_of(&inst)?.clone();
    let primary = first.id.clone();
    let replica = replica_of(&inst)?.id.clone();
    let writer = SetWriter::start(&env, &name, "mariadb", &pw).await?;
    writer.wait_acked(100, Duration::from_secs(60)).await?;

    // Bad input: nothing starts.
    let scale = |replicas: Option<u32>| NewOperation {
        replicas,
        ..NewOperation::new(OpKind::Scale)
    };
    refused(&env, &name, &scale(None), 422, "replicas").await?;
    refused(&env, &name, &scale(Some(0)), 422, "replicas").await?;
    refused(&env, &name, &scale(Some(9)), 422, "replicas").await?;
    refused(&env, &name, &scale(Some(1)), 422, "already").await?;
    // 1 + 3 needs four nodes, one member per node: refused with each node's reason.
    refused(&env, &name, &scale(Some(3)), 409, "cannot place").await?;

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
    let op: Operation = serde_json::from_slice(&out.stdout)?;
    assert_eq!(op.state, OpState::Succeeded, "{op:?}");
    let steps = &op.steps;
    assert_eq!(steps.len(), 1, "{op:?}");
    let StepAction::AddReplica { member, donor, .. } = &steps[0].action else {
        bail!("not an add_replica step: {op:?}");
    };
    assert_eq!(
        donor.as_deref(),
        Some(replica.as_str()),
        "seeded from the replica, not the primary: {op:?}"
    );
    let added = member.clone();
    // A physical copy of the replica (decision 167): the replica ran mariadb-backup, nobody
    // was dumped, and the primary served nothing.
    let (after_primary, after_replica) = (copies(&primary)?, copies(&replica)?);
    assert_eq!(after_primary, before.0, "the primary served a copy");
    assert!(
        after_replica.0 > before.1 .0 && after_replica.1 == before.1 .1,
        "{replica} served no physical copy (Com_backup, Com_show_create_db: {before:?} before, {after_replica:?} after)"
    );
    let v = env.ready(&name).await?;
    assert_eq!(v.members.len(), 3, "{v:?}");
    assert_eq!(v.replicas, 2, "{v:?}");
    let new = v
        .members
        .iter()
        .find(|m| m.id == added)
        .context("the new member")?
        .clone();
    assert_eq!(new.role, "replica", "{v:?}");
    assert_ne!(new.node, first.node, "{v:?}");
    // It holds every row acknowledged so far (and keeps replicating).
    let acked_now = writer.acked();
    writer
        .wait_acked(acked_now + 50, Duration::from_secs(60))
        .await?;
    let addr = new.address.clone();
    let primary_addr = primary_of(&v)?.address.clone();
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
    let op = api.start_operation(&name, &scale(Some(1))).await?;
    let op = operation_ended(&env, &op.id, Duration::from_secs(180)).await?;
    assert_eq!(op.state, OpState::Succeeded, "{op:?}");
    let lines = step_lines(&op);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("remove_replica "), "{lines:?}");
    assert!(!lines[0].contains(&primary), "never the primary: {lines:?}");
    let v = env.ready(&name).await?;
    assert_eq!(v.members.len(), 2, "{v:?}");
    assert_eq!(primary_of(&v)?.id, primary, "{v:?}");
    assert_eq!(v.epoch, inst.epoch, "no failover: {v:?}");
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
    let resize = |cpu: Option<f64>, memory: Option<u64>| NewOperation {
        cpu,
        memory,
        ..NewOperation::new(OpKind::Resize)
    };
    refused(&env, &name, &resize(None, None), 422, "cpu").await?;
    refused(&env, &name, &resize(Some(100.0), None), 422, "cpu").await?;
    refused(&env, &name, &resize(None, Some(1_000_000)), 409, "MiB free").await?;
    let before = started_at(&v)?;
    let op = api
        .start_operation(&name, &resize(Some(0.75), Some(512)))
        .await?;
    let op = operation_ended(&env, &op.id, Duration::from_secs(300)).await?;
    assert_eq!(op.state, OpState::Succeeded, "{op:?}");
    let lines = step_lines(&op);
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines[0].starts_with("set_resources"), "{lines:?}");
    assert!(
        lines[1].starts_with("restart ") && !lines[1].contains(&primary),
        "{lines:?}"
    );
    assert_eq!(lines[2], format!("switchover {primary} done"), "{lines:?}");
    assert_eq!(lines[3], format!("restart {primary} done"), "{lines:?}");
    let v = env.ready(&name).await?;
    assert_eq!(v.spec.resources.memory, 512, "{v:?}");
    let after = started_at(&v)?;
    for m in &v.members {
        let id = &m.id;
        let limits = docker_cli(&[
            "inspect",
            "-f",
            "{{.HostConfig.Memory}} {{.HostConfig.CpuQuota}} {{.HostConfig.CpuPeriod}}",
            &container_of(id),
        ])?;
        assert_eq!(limits, format!("{} 75000 100000", 512u64 << 20), "{id}");
        assert_eq!(m.memory_bytes, 512u64 << 20, "{v:?}");
        assert_eq!(m.cpu, 0.75, "{v:?}");
        assert_ne!(after.get(id), before.get(id), "{id} was not restarted");
    }

    // Reconfigure: the catalogue, bad input, then max_connections live everywhere.
    let param = api
        .engines()
        .await?
        .into_iter()
        .filter(|e| e.engine == "mariadb")
        .flat_map(|e| e.parameters)
        .find(|p| p.name == "max_connections")
        .context("max_connections in /v1/engines")?;
    assert!(param.dynamic, "{param:?}");
    assert_eq!(param.kind, "integer", "{param:?}");
    refused(
        &env,
        &name,
        &reconfigure_op(&[("max_conections", json!(300))]),
        422,
        "settings.max_conections",
    )
    .await?;
    refused(
        &env,
        &name,
        &reconfigure_op(&[("max_connections", json!(5))]),
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
    let op: Operation = serde_json::from_slice(&out.stdout)?;
    assert_eq!(op.state, OpState::Succeeded, "{op:?}");
    assert_eq!(step_lines(&op), ["set_parameters  done"], "{op:?}");
    let v = api.instance(&name).await?;
    assert_eq!(
        v.parameters.get("max_connections").map(String::as_str),
        Some("321"),
        "{v:?}"
    );
    for m in &v.members {
        use mysql_async::prelude::Queryable;
        let mut c = mofang_tests::scenario::mysql(&m.address, &pw).await?;
        let n: Option<u64> = c.query_first("SELECT @@global.max_connections").await?;
        assert_eq!(n, Some(321), "{}", m.id);
    }
    assert_eq!(started_at(&v)?, before, "a live change restarts nothing");

    // Expand: volumes only grow, within the disk's room; in place, no restart.
    let expand = |disk: u64| NewOperation {
        disk: Some(disk),
        ..NewOperation::new(OpKind::Expand)
    };
    refused(&env, &name, &expand(256), 422, "disk").await?;
    refused(&env, &name, &expand(100_000), 409, "MiB free").await?;
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
    let op: Operation = serde_json::from_slice(&out.stdout)?;
    assert_eq!(op.state, OpState::Succeeded, "{op:?}");
    assert_eq!(step_lines(&op), ["set_disk  done"], "{op:?}");
    let v = api.instance(&name).await?;
    assert_eq!(v.spec.resources.disk, 1024, "{v:?}");
    for m in &v.members {
        assert_eq!(m.volume_bytes, 1024u64 << 20, "{v:?}");
    }
    assert_eq!(started_at(&v)?, before, "an expand restarts nothing");

    // Nothing acknowledged was lost through all of it.
    let outcome = writer.stop().await?;
    let v = env.ready(&name).await?;
    let present = set_contents("mariadb", &primary_of(&v)?.address, &pw).await?;
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
fn member_versions(inst: &InstanceView, engine: &str) -> Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    for m in &inst.members {
        let id = m.id.clone();
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

/// Creates an instance of `engine` on `version` with `replicas` replicas and waits until it
/// is ready.
async fn create_on(
    env: &Env,
    name: &str,
    engine: &str,
    version: &str,
    replicas: u32,
) -> Result<InstanceView> {
    let mut spec = instance_spec(name, engine, replicas)?;
    spec.version = version.to_owned();
    env.client()
        .create_instance(&spec)
        .await
        .with_context(|| format!("create {name} on {engine} {version}"))?;
    env.ready(name).await
}

/// An `upgrade` to `version`, or without one.
fn upgrade(version: Option<&str>) -> NewOperation {
    NewOperation {
        version: version.map(str::to_owned),
        ..NewOperation::new(OpKind::Upgrade)
    }
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
    let first = create_on(&env, &name, engine, ladder[0], 2).await?;
    let addresses = |inst: &InstanceView| -> BTreeMap<String, String> {
        inst.members
            .iter()
            .map(|m| (m.id.clone(), m.address.clone()))
            .collect()
    };
    let before = addresses(&first);
    let pw = env.app_password(&name).await?;
    // One rung at a time, never down.
    let top = ladder[ladder.len() - 1];
    refused(
        &env,
        &name,
        &upgrade(Some(top)),
        422,
        &format!("skips {}", ladder[1]),
    )
    .await?;
    refused(&env, &name, &upgrade(Some(ladder[0])), 422, "already runs").await?;
    refused(&env, &name, &upgrade(None), 422, "needs `version`").await?;

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
        let op: Operation = serde_json::from_slice(&out.stdout)?;
        let v = operation_ended(&env, &op.id, Duration::from_secs(600)).await?;
        let steps = step_lines(&v);
        eprintln!(
            "{engine} {from} -> {to}: {:?} in {:?}: {steps:?}",
            v.state,
            started.elapsed()
        );
        assert_eq!(v.state, OpState::Succeeded, "{v:?}");
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
            &upgrade(Some(from)),
            422,
            "cannot be downgraded",
        )
        .await?;

        let inst = env.ready(&name).await?;
        assert_eq!(inst.version, *to, "{inst:?}");
        for m in &inst.members {
            assert_eq!(m.version, *to, "every member reports {to}: {inst:?}");
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
    let api = env.client();
    let op = eventually("switchover accepted", Duration::from_secs(60), || async {
        Ok(api
            .start_operation(&name, &NewOperation::new(OpKind::Switchover))
            .await?)
    })
    .await?;
    let v = operation_ended(&env, &op.id, Duration::from_secs(120)).await?;
    assert_eq!(v.state, OpState::Succeeded, "{v:?}");
    let acked = writer.acked();
    writer
        .wait_acked(acked + 100, Duration::from_secs(60))
        .await?;
    let switchover = writer.stop().await?;

    let now = env.ready(&name).await?;
    // Every container was made again on each rung; every member kept its address.
    assert_eq!(addresses(&now), before, "{now:?}");
    let primary = primary_of(&now)?;
    let present = set_contents(engine, &primary.address, &pw).await?;
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
    create_on(&env, &name, "mariadb", from, 2).await?;
    let pw = env.app_password(&name).await?;
    let writer = SetWriter::start(&env, &name, "mariadb", &pw).await?;
    writer.wait_acked(200, Duration::from_secs(60)).await?;

    let started = std::time::Instant::now();
    let api = env.client();
    let op = api.start_operation(&name, &upgrade(Some(to))).await?;
    let id = op.id.clone();

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
        let Ok(v) = api.operation(&id).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if v.state.is_terminal() {
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
        "upgrade {from} -> {to} with {} scheduler kills: {:?} in {:?}: {steps:?}",
        kills.len(),
        end.state,
        started.elapsed()
    );
    assert_eq!(end.state, OpState::Succeeded, "{end:?}\nkills at {kills:?}");
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
    let inst = env.ready(&name).await?;
    let members = &inst.members;
    assert_eq!(
        members.iter().filter(|m| m.role == "primary").count(),
        1,
        "one primary: {inst:?}"
    );
    for m in members {
        assert_eq!(m.version, to, "every member reports {to}: {inst:?}");
    }
    for (id, image, binary) in member_versions(&inst, "mariadb")? {
        eprintln!("  {id}: {image}: {binary}");
        assert!(
            image.ends_with(&format!("/mariadb:{to}")),
            "{id} runs {image}"
        );
        assert!(binary.contains(&format!("Ver {to}.")), "{id}: {binary}");
    }
    let primary = primary_of(&inst)?;
    let present = set_contents("mariadb", &primary.address, &pw).await?;
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
    create_on(&env, &name, "mariadb", from, 2).await?;
    let pw = env.app_password(&name).await?;
    let writer = SetWriter::start(&env, &name, "mariadb", &pw).await?;
    writer.wait_acked(200, Duration::from_secs(60)).await?;

    let api = env.client();
    let op = api.start_operation(&name, &upgrade(Some(to))).await?;
    let id = op.id.clone();
    // The first replica's restart step done: it runs 10.11 beside a 10.5 primary.
    let first = eventually(
        "the first replica upgraded",
        Duration::from_secs(300),
        || async {
            let v = api.operation(&id).await?;
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
    eprintln!("upgrade cancelled after {first}: {:?} {steps:?}", end.state);
    assert_eq!(end.state, OpState::Cancelled, "{end:?}");
    assert!(steps.iter().all(|s| s.ends_with(" done")), "{steps:?}");

    let acked = writer.acked();
    writer
        .wait_acked(acked + 200, Duration::from_secs(120))
        .await?;
    let outcome = writer.stop().await?;
    let inst = env.ready(&name).await?;
    let members = &inst.members;
    assert_eq!(members.len(), 3, "{inst:?}");
    assert_eq!(
        members.iter().filter(|m| m.role == "primary").count(),
        1,
        "one primary: {inst:?}"
    );
    for m in members {
        assert!(m.healthy, "{inst:?}");
        assert!(
            m.version == from || m.version == to,
            "{} on {}: {inst:?}",
            m.id,
            m.version
        );
        if m.id == first {
            assert_eq!(m.version, to, "{first} was upgraded: {inst:?}");
        }
    }
    for (id, image, binary) in member_versions(&inst, "mariadb")? {
        eprintln!("  {id}: {image}: {binary}");
        let reported = members
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.version.as_str())
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
    let primary = primary_of(&inst)?;
    let present = set_contents("mariadb", &primary.address, &pw).await?;
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
    let api = env.client();
    let tag = unique_name("b20");
    let mut names = Vec::new();
    for i in 0..N {
        let name = format!("{tag}-{i}");
        let mut spec = instance_spec(&name, "redis", 0)?;
        // Twenty on three agents of 2 cores and 2 GiB each.
        spec.resources = Resources {
            cpu: 0.2,
            memory: 128,
            disk: 128,
        };
        spec.labels = BTreeMap::from([("batch".to_owned(), tag.clone())]);
        api.create_instance(&spec)
            .await
            .with_context(|| format!("create {name}"))?;
        names.push(name);
    }
    for name in &names {
        env.ready(name).await?;
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
    let b: Batch = serde_json::from_slice(&out.stdout)?;
    assert_eq!(b.state, OpState::Succeeded, "{b:?}");
    let items = &b.items;
    assert_eq!(items.len(), N, "{b:?}");

    let mut from_ops = Vec::new();
    let mut from_events = Vec::new();
    for it in items {
        assert_eq!(it.state, "succeeded", "{b:?}");
        let id = it.operation.as_deref().context("operation")?;
        let op = api.operation(id).await?;
        assert_eq!(op.state, OpState::Succeeded, "{op:?}");
        from_ops.push((op.created_ms, op.ended_ms));
        // The instance's own record of it.
        let instance = &op.instance;
        let events = env.instance_events(instance).await?;
        let at = |kind: &str| {
            events
                .iter()
                .find(|e| e.kind == kind && e.message.contains(id))
                .map(|e| e.at_ms)
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
async fn parameters(env: &Env, name: &str) -> Result<ParametersView> {
    Ok(env.client().parameters(name).await?)
}

/// One member's entry for `param` in the parameters view.
fn member_param<'v>(
    view: &'v ParametersView,
    member: &str,
    param: &str,
) -> Result<&'v ParameterValue> {
    view.members
        .iter()
        .find(|m| m.member == member)
        .and_then(|m| m.parameters.iter().find(|p| p.name == param))
        .with_context(|| format!("{member} {param} in {view:?}"))
}

/// One drifting value of the parameters view.
fn drift(member: &str, parameter: &str, desired: &str, effective: &str) -> Drift {
    Drift {
        member: member.to_owned(),
        parameter: parameter.to_owned(),
        desired: desired.to_owned(),
        effective: effective.to_owned(),
    }
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
    let inst = env.create(&name, "mariadb", 1).await?;
    let primary = primary_of(&inst)?.id.clone();
    let replica = replica_of(&inst)?.id.clone();
    let members = [primary.clone(), replica.clone()];

    // Before any reconfigure: every value is the server's own, read from it; nothing drifts.
    let v = eventually(
        "every member reports its parameters",
        Duration::from_secs(60),
        || async {
            let v = parameters(&env, &name).await?;
            for m in &members {
                let p = member_param(&v, m, "max_connections")?;
                if p.state != ParamState::Default || p.effective.is_none() {
                    bail!("{m}: {p:?}");
                }
            }
            Ok(v)
        },
    )
    .await?;
    assert!(v.drift.is_empty(), "{v:?}");
    assert_eq!(v.engine, "mariadb", "{v:?}");
    let err = refusal(env.client().parameters("t-no-such").await)?;
    assert_eq!(err.status(), Some(404), "{err}");
    assert_eq!(err.code(), Some("not_found"), "{err}");

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
    let op: Operation = serde_json::from_slice(&out.stdout)?;
    assert_eq!(op.state, OpState::Succeeded, "{op:?}");
    let v = eventually(
        "every member runs max_connections 321",
        Duration::from_secs(60),
        || async {
            let v = parameters(&env, &name).await?;
            for m in &members {
                let p = member_param(&v, m, "max_connections")?;
                if p.state != ParamState::InSync {
                    bail!("{m}: {p:?}");
                }
            }
            Ok(v)
        },
    )
    .await?;
    assert_eq!(
        v.desired,
        BTreeMap::from([("max_connections".to_owned(), "321".to_owned())]),
        "{v:?}"
    );
    assert!(v.drift.is_empty(), "{v:?}");
    for m in &members {
        let p = member_param(&v, m, "max_connections")?;
        assert_eq!(p.effective.as_deref(), Some("321"), "{v:?}");
        assert_eq!(p.desired.as_deref(), Some("321"), "{v:?}");
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
            if v.drift.is_empty() {
                bail!("{v:?}")
            } else {
                Ok(v)
            }
        },
    )
    .await?;
    assert_eq!(
        v.drift,
        [drift(&replica, "max_connections", "321", "77")],
        "{v:?}"
    );
    assert_eq!(
        member_param(&v, &replica, "max_connections")?.state,
        ParamState::Drift,
        "{v:?}"
    );
    assert_eq!(
        member_param(&v, &primary, "max_connections")?.state,
        ParamState::InSync,
        "{v:?}"
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
    let j: ParametersView = serde_json::from_slice(&out.stdout)?;
    assert_eq!(j.drift, v.drift, "{j:?}");

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
    let op: Operation = serde_json::from_slice(&out.stdout)?;
    assert_eq!(op.state, OpState::Succeeded, "{op:?}");
    eventually("the drift is gone", Duration::from_secs(60), || async {
        let v = parameters(&env, &name).await?;
        let p = member_param(&v, &replica, "max_connections")?;
        if v.drift.is_empty() && p.effective.as_deref() == Some("321") {
            Ok(())
        } else {
            bail!("{v:?}")
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
    let inst = env.create(&name, "redis", 1).await?;
    let pw = env.app_password(&name).await?;
    let primary = primary_of(&inst)?.id.clone();
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
    let op: Operation = serde_json::from_slice(&out.stdout)?;
    assert_eq!(op.state, OpState::Succeeded, "{op:?}");
    let lines = step_lines(&op);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines.iter().all(|l| l.starts_with("add_replica ")),
        "{lines:?}"
    );
    let added: Vec<String> = op
        .steps
        .iter()
        .filter_map(|s| step_member(&s.action).map(str::to_owned))
        .collect();
    assert_eq!(added.len(), 2, "{op:?}");
    let v = env.ready(&name).await?;
    assert_eq!(v.replicas, 3, "{v:?}");
    let members = &v.members;
    assert_eq!(members.len(), 4, "{v:?}");
    let nodes: std::collections::BTreeSet<&str> = members.iter().map(|m| m.node.as_str()).collect();
    assert_eq!(nodes.len(), 4, "one member per node: {v:?}");
    assert_eq!(primary_of(&v)?.id, primary, "{v:?}");
    assert_eq!(v.epoch, inst.epoch, "no failover: {v:?}");

    // Each new replica holds every write acknowledged before it was looked at, and follows.
    let acked_now = writer.acked();
    writer
        .wait_acked(acked_now + 50, Duration::from_secs(60))
        .await?;
    for id in &added {
        let m = members.iter().find(|m| m.id == *id).context("new member")?;
        assert_eq!(m.role, "replica", "{v:?}");
        let addr = m.address.clone();
        let primary_addr = primary_of(&v)?.address.clone();
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
    let op = env
        .client()
        .start_operation(
            &name,
            &NewOperation {
                replicas: Some(1),
                ..NewOperation::new(OpKind::Scale)
            },
        )
        .await?;
    let op = operation_ended(&env, &op.id, Duration::from_secs(300)).await?;
    assert_eq!(op.state, OpState::Succeeded, "{op:?}");
    let lines = step_lines(&op);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let mut removed = Vec::new();
    for l in &lines {
        assert!(l.starts_with("remove_replica "), "{lines:?}");
        let m = l.split(' ').nth(1).context("member")?.to_owned();
        assert_ne!(m, primary, "never the primary: {lines:?}");
        removed.push(m);
    }
    let v = env.ready(&name).await?;
    assert_eq!(v.replicas, 1, "{v:?}");
    assert_eq!(v.members.len(), 2, "{v:?}");
    assert_eq!(primary_of(&v)?.id, primary, "{v:?}");
    assert_eq!(v.epoch, inst.epoch, "no failover: {v:?}");
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
    let v = env.ready(&name).await?;
    let present = set_contents("redis", &primary_of(&v)?.address, &pw).await?;
    let lost = outcome.lost(&present);
    eprintln!(
        "redis scale 1 -> 3 -> 1: acknowledged {}, lost {}, longest write outage {:?}, removed {removed:?}",
        outcome.acked.len(),
        lost.len(),
        outcome.longest_gap
    );
    assert!(lost.is_empty(), "lost {lost:?}");
    let left = replica_of(&v)?.address.clone();
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
    let inst = env.create(&name, "redis", 1).await?;
    let pw = env.app_password(&name).await?;
    let creds = env.client().credentials(&name).await?;
    let admin = creds.credentials.admin.clone();
    let addresses: BTreeMap<String, String> = inst
        .members
        .iter()
        .map(|m| (m.id.clone(), m.address.clone()))
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
            let op: Operation = serde_json::from_slice(&out.stdout)?;
            anyhow::ensure!(op.state == OpState::Succeeded, "{op:?}");
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
                if e.state != ParamState::InSync {
                    bail!("{m} {p}: {e:?}");
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
    let v = env.ready(&name).await?;
    let primary = primary_of(&v)?.id.clone();
    let replica = addresses
        .keys()
        .find(|m| **m != primary)
        .context("replica")?
        .clone();
    for m in &v.members {
        let addr = &m.address;
        assert_eq!(
            redis_config(addr, &admin, "databases").await?,
            "32",
            "{m:?}"
        );
        // The live values survive the restart (rendered into the config too).
        assert_eq!(redis_config(addr, &admin, "hz").await?, "20", "{m:?}");
    }
    writer
        .wait_acked(writer.acked() + 50, Duration::from_secs(60))
        .await?;
    let outcome = writer.stop().await?;
    let now = primary_of(&v)?;
    let present = set_contents("redis", &now.address, &pw).await?;
    assert!(
        outcome.lost(&present).is_empty(),
        "lost across the rolling restart: {:?}",
        outcome.lost(&present)
    );

    // Behind the platform's back: CONFIG SET on the replica's own server.
    let replica_addr = v
        .members
        .iter()
        .find(|m| m.id == replica)
        .map(|m| m.address.clone())
        .context("replica address")?;
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
        if v.drift.is_empty() {
            bail!("{v:?}")
        } else {
            Ok(v)
        }
    })
    .await?;
    assert_eq!(v.drift, [drift(&replica, "hz", "20", "5")], "{v:?}");
    assert_eq!(
        member_param(&v, &primary, "hz")?.state,
        ParamState::InSync,
        "{v:?}"
    );
    reconfigure(&["hz=20"]).await?;
    eventually("the drift is gone", Duration::from_secs(60), || async {
        let v = parameters(&env, &name).await?;
        if v.drift.is_empty() && redis_config(&replica_addr, &admin, "hz").await? == "20" {
            Ok(())
        } else {
            bail!("{v:?}")
        }
    })
    .await?;
    Ok(())
}

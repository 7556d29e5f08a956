//! Credential rotation end to end (issue 15 point 6): a real scheduler, two agents, a
//! MariaDB 1+1 and a Redis 1+1 under an application writer. Each account is rotated in turn
//! (`repl`, `monitor` through the CLI, `admin`, then `app` with a grace) and after each one
//! the new password logs in, the old one does not, replication carries a new write to the
//! replica, and the agents' rendered files hold the new password only. Then a failover (MariaDB:
//! the primary's container is killed; Redis: a switchover, since Redis' asynchronous
//! replication may lose the last writes of a killed primary whatever the passwords,
//! docs/failover.md) loses no acknowledged write, and the old primary comes back as a replica
//! that logs in with the new passwords (its server restarted on the re-rendered files).

use anyhow::{bail, Context, Result};
use mofang_scheduler::client::{CredentialsView, LogRange, RotateAccount};
use mofang_scheduler::cluster::InstanceView;
use mofang_tests::scenario::{
    container_of, docker_cli, primary_of, replica_of, set_contents, Env, SetWriter,
};
use mofang_tests::{eventually, unique_name};
use serde_json::json;
use std::time::Duration;

/// Fast knobs: agents' lease 2 s (tests/src/cluster.rs), node_ttl 1.5 s.
const FAST: &str = "[failover]\nlease_ttl_ms = 2000\nreplace_after_ms = 60000\n";

/// Logs in to `addr` as `user` with `password` and runs a trivial command.
async fn login(engine: &str, addr: &str, user: &str, password: &str) -> Result<()> {
    let r = tokio::time::timeout(Duration::from_secs(10), async {
        if engine == "mariadb" {
            use mysql_async::prelude::Queryable;
            let (host, port) = addr.rsplit_once(':').context("address")?;
            let opts = mysql_async::OptsBuilder::default()
                .ip_or_hostname(host.to_owned())
                .tcp_port(port.parse()?)
                .user(Some(user))
                .pass(Some(password.to_owned()))
                .prefer_socket(false);
            let mut c = mysql_async::Conn::new(opts).await?;
            let one: Option<u8> = c.query_first("SELECT 1").await?;
            let _ = c.disconnect().await;
            anyhow::ensure!(one == Some(1), "SELECT 1 answered {one:?}");
        } else {
            let client = redis::Client::open(format!("redis://{user}:{password}@{addr}/"))?;
            let mut c = client.get_multiplexed_async_connection().await?;
            let pong: String = redis::cmd("PING").query_async(&mut c).await?;
            anyhow::ensure!(pong == "PONG", "PING answered {pong}");
        }
        anyhow::Ok(())
    })
    .await;
    match r {
        Ok(r) => r,
        Err(_) => bail!("login as {user} at {addr}: no answer in 10 s"),
    }
}

/// The user of an account.
fn user(account: &str) -> &'static str {
    match account {
        "admin" => "mofang_admin",
        "repl" => "mofang_repl",
        "monitor" => "mofang_monitor",
        _ => "app",
    }
}

/// The API's name of an account.
fn rotate_account(account: &str) -> Result<RotateAccount> {
    Ok(match account {
        "admin" => RotateAccount::Admin,
        "repl" => RotateAccount::Repl,
        "monitor" => RotateAccount::Monitor,
        "app" => RotateAccount::App,
        _ => bail!("no account {account}"),
    })
}

/// The password of `account` in `c`.
fn password<'a>(c: &'a CredentialsView, account: &str) -> Result<&'a str> {
    Ok(c.credentials.get(rotate_account(account)?.into()))
}

/// The rotation's step, if one is under way.
fn step(v: &InstanceView) -> Option<&str> {
    v.rotation.as_ref().map(|r| r.step.as_str())
}

/// Every member's client address.
fn addresses(inst: &InstanceView) -> Result<Vec<String>> {
    Ok(inst.members.iter().map(|m| m.address.clone()).collect())
}

/// The replica's address (the instance has one).
fn replica_address(inst: &InstanceView) -> Result<String> {
    Ok(replica_of(inst)?.address.clone())
}

/// Writes `id` into the `marks` set (MariaDB table `app.marks`, Redis set `marks`) at the
/// primary with the application password, and waits until the replica has it.
async fn replicated(env: &Env, name: &str, engine: &str, app: &str, id: u64) -> Result<()> {
    let inst = env.ready(name).await?;
    let primary = inst.primary.clone();
    if engine == "mariadb" {
        use mysql_async::prelude::Queryable;
        let mut c = mofang_tests::scenario::mysql(&primary, app).await?;
        c.query_drop("CREATE TABLE IF NOT EXISTS marks (id BIGINT PRIMARY KEY)")
            .await?;
        c.exec_drop("INSERT INTO marks (id) VALUES (?)", (id,))
            .await?;
    } else {
        let client = redis::Client::open(format!("redis://app:{app}@{primary}/"))?;
        let mut c = client.get_multiplexed_async_connection().await?;
        let _: i64 = redis::cmd("SADD")
            .arg("marks")
            .arg(id)
            .query_async(&mut c)
            .await?;
    }
    let replica = replica_address(&inst)?;
    eventually(
        "the write is on the replica",
        Duration::from_secs(30),
        || async {
            let has = if engine == "mariadb" {
                use mysql_async::prelude::Queryable;
                let mut c = mofang_tests::scenario::mysql(&replica, app).await?;
                let n: Option<u64> = c
                    .exec_first("SELECT COUNT(*) FROM marks WHERE id = ?", (id,))
                    .await?;
                n == Some(1)
            } else {
                let client = redis::Client::open(format!("redis://app:{app}@{replica}/"))?;
                let mut c = client.get_multiplexed_async_connection().await?;
                redis::cmd("SISMEMBER")
                    .arg("marks")
                    .arg(id)
                    .query_async::<bool>(&mut c)
                    .await?
            };
            if has {
                Ok(())
            } else {
                bail!("mark {id} not on the replica {replica} yet")
            }
        },
    )
    .await
}

/// Starts a rotation through the API.
async fn rotate(env: &Env, name: &str, account: &str, grace_s: u64) -> Result<InstanceView> {
    env.client()
        .rotate_credentials(name, rotate_account(account)?, Some(grace_s))
        .await
        .with_context(|| format!("rotate {account}"))
}

/// Waits until the instance has no rotation under way.
async fn rotation_over(env: &Env, name: &str) -> Result<InstanceView> {
    eventually("rotation over", Duration::from_secs(120), || async {
        let v = env.instance(name).await?;
        match &v.rotation {
            None => Ok(v),
            Some(r) => bail!("rotation {r:?}"),
        }
    })
    .await
}

/// After a finished rotation of `account` from `old` to `new`: on every member the new
/// password logs in and the old one is refused; the agents' rendered files hold the new one
/// and not the old one; the state directories hold neither in clear.
async fn check_rotated(
    env: &Env,
    name: &str,
    engine: &str,
    account: &str,
    old: &str,
    new: &str,
) -> Result<()> {
    assert_ne!(old, new, "{account}: a new password");
    let inst = env.ready(name).await?;
    for addr in addresses(&inst)? {
        login(engine, &addr, user(account), new)
            .await
            .with_context(|| format!("{account}: the new password at {addr}"))?;
        assert!(
            login(engine, &addr, user(account), old).await.is_err(),
            "{account}: the old password still logs in at {addr}"
        );
    }
    for a in &env.agents {
        let rendered = files_under(&a.run_dir());
        let mine: Vec<&(String, Vec<u8>)> = rendered
            .iter()
            .filter(|(p, _)| p.contains(&format!("/{name}-")))
            .collect();
        assert!(!mine.is_empty(), "rendered files of {name} on {}", a.node);
        for (p, bytes) in &mine {
            assert!(
                !contains(bytes, old),
                "{account}: the old password is still in {p}"
            );
        }
        // Every account is in redis.conf, or in MariaDB's init.sql (admin's in client.cnf too).
        assert!(
            mine.iter().any(|(_, b)| contains(b, new)),
            "{account}: the new password in {name}'s rendered files on {}",
            a.node
        );
        for (p, bytes) in files_under(&a.state_dir()) {
            assert!(
                !contains(&bytes, new) && !contains(&bytes, old),
                "{account}: a password in clear in {p}"
            );
        }
    }
    Ok(())
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Every regular file under `dir`, with its contents.
fn files_under(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => todo.push(p),
                Ok(t) if t.is_file() => {
                    if let Ok(b) = std::fs::read(&p) {
                        out.push((p.display().to_string(), b));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn credentials(env: &Env, name: &str) -> Result<CredentialsView> {
    Ok(env.client().credentials(name).await?)
}

/// Runs the `mofang` CLI with the cluster's address, CA and admin token; its JSON output
/// read as `T` (the API's type it prints).
async fn cli<T: serde::de::DeserializeOwned>(env: &Env, args: &[&str]) -> Result<T> {
    let out = tokio::process::Command::new(mofang_tests::cluster::binaries()?.join("mofang"))
        .arg("--json")
        .args(args)
        .envs(env.sched.cli_env())
        .env("MOFANG_TOKEN", &env.token)
        .output()
        .await?;
    if !out.status.success() {
        bail!("mofang {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `<engine>_up{...mofang_member="<member>"...} 1` on the member's agent's `/metrics`.
async fn scraped(env: &Env, engine: &str, inst: &InstanceView) -> Result<()> {
    let metric = if engine == "mariadb" {
        "mysql_up{"
    } else {
        "redis_up{"
    };
    for m in &inst.members {
        let id = &m.id;
        let at = &m.check_address;
        let label = format!("mofang_member=\"{id}\"");
        eventually(
            "monitoring scrapes the member",
            Duration::from_secs(30),
            || async {
                let text = env
                    .http
                    .get(format!("http://{at}/metrics"))
                    .send()
                    .await?
                    .text()
                    .await?;
                let up = text
                    .lines()
                    .find(|l| l.starts_with(metric) && l.contains(&label))
                    .with_context(|| format!("no {metric} line for {id}"))?;
                let value = up
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.trim().parse::<f64>().ok());
                if value == Some(1.0) {
                    Ok(())
                } else {
                    bail!("{up}")
                }
            },
        )
        .await?;
    }
    Ok(())
}

async fn rotate_every_account_under_writes(engine: &str) -> Result<()> {
    let mut env = Env::start_with(2, FAST).await?;
    let name = unique_name("rot");
    let inst = env.create(&name, engine, 1).await?;
    let first = credentials(&env, &name).await?;
    let app0 = first.credentials.app.clone();
    let writer = SetWriter::start(&env, &name, engine, &app0).await?;
    writer.wait_acked(100, Duration::from_secs(60)).await?;
    let mut mark = 1;

    // repl, monitor (through the CLI, as an operator would), admin: platform accounts, no
    // grace. Replication, monitoring and the agents' own checks keep working throughout.
    for account in ["repl", "monitor", "admin"] {
        let before = credentials(&env, &name).await?;
        if account == "monitor" {
            let v: InstanceView = cli(
                &env,
                &[
                    "instance",
                    "rotate-credentials",
                    &name,
                    "--account",
                    "monitor",
                ],
            )
            .await?;
            // It returns once the new password is in use.
            assert_ne!(step(&v), Some("add"), "{v:?}");
        } else {
            let v = rotate(&env, &name, account, 0).await?;
            assert_eq!(
                v.rotation.as_ref().map(|r| r.account.as_str()),
                Some(account),
                "{v:?}"
            );
            assert_eq!(step(&v), Some("add"), "{v:?}");
            // One rotation at a time.
            match env
                .client()
                .rotate_credentials(&name, RotateAccount::App, None)
                .await
            {
                Err(e) => {
                    assert_eq!(e.status(), Some(409), "{e}");
                    assert_eq!(e.code(), Some("rotation_in_progress"), "{e}");
                }
                Ok(v) => {
                    bail!("a second rotation was accepted while one is under way: {v:?}")
                }
            }
        }
        rotation_over(&env, &name).await?;
        let after = credentials(&env, &name).await?;
        for other in ["admin", "repl", "monitor", "app"] {
            if other == account {
                assert_ne!(
                    password(&after, other)?,
                    password(&before, other)?,
                    "{account} changed"
                );
            } else {
                assert_eq!(
                    password(&after, other)?,
                    password(&before, other)?,
                    "{other} unchanged"
                );
            }
        }
        let (old, new) = (password(&before, account)?, password(&after, account)?);
        check_rotated(&env, &name, engine, account, old, new).await?;
        replicated(&env, &name, engine, &app0, mark).await?;
        mark += 1;
    }
    // Monitoring scrapes with fresh connections after the agents restart: the new password
    // (databases and their containers are not touched by an agent restart).
    for a in env.agents.iter_mut() {
        a.restart()?;
    }
    let inst_now = env.ready(&name).await?;
    scraped(&env, engine, &inst_now).await?;
    // The CLI shows the new passwords.
    let shown: CredentialsView = cli(&env, &["instance", "credentials", &name]).await?;
    let now = credentials(&env, &name).await?;
    assert!(
        shown.credentials == now.credentials && shown.tls == now.tls && shown.ca_pem == now.ca_pem,
        "the CLI shows {shown:?}, the API {now:?}"
    );
    assert_ne!(shown.credentials.admin, first.credentials.admin);

    // A failover after rotating repl and admin: no acknowledged write lost.
    let old = primary_of(&inst_now)?;
    let old_id = old.id.clone();
    let epoch = inst_now.epoch;
    if engine == "mariadb" {
        docker_cli(&["kill", &container_of(&old_id)])?;
    } else {
        env.client()
            .switchover(&name, None)
            .await
            .context("switchover")?;
    }
    let after = env
        .new_primary(&name, epoch, Duration::from_secs(60))
        .await?;
    let new_primary = primary_of(&after)?;
    assert_ne!(new_primary.id, old.id, "a replica took over");
    let acked = writer.acked();
    writer
        .wait_acked(acked + 200, Duration::from_secs(120))
        .await?;
    let out = writer.stop().await?;
    let addr = &new_primary.address;
    let present = set_contents(engine, addr, &app0).await?;
    eprintln!(
        "{engine}: acknowledged {}, lost {}, outage {:?}",
        out.acked.len(),
        out.lost(&present).len(),
        out.longest_gap
    );
    assert!(
        out.lost(&present).is_empty(),
        "acknowledged writes lost: {:?}",
        out.lost(&present)
    );
    assert!(out.unexpected(&present).is_empty());
    // The old primary is a replica again (MariaDB: restarted from files rendered with the
    // new passwords), replicating with the new repl password.
    env.ready(&name).await?;
    replicated(&env, &name, engine, &app0, mark).await?;
    mark += 1;

    // app, with a grace: both passwords log in while it runs, then only the new one.
    let v = rotate(&env, &name, "app", 20).await?;
    assert_eq!(v.rotation.as_ref().map(|r| r.grace_s), Some(20), "{v:?}");
    let switched = eventually("app switched", Duration::from_secs(60), || async {
        let v = env.instance(&name).await?;
        if step(&v) == Some("switch") {
            Ok(v)
        } else {
            bail!("{:?}", v.rotation)
        }
    })
    .await?;
    let app1 = credentials(&env, &name).await?.credentials.app;
    assert_ne!(app1, app0);
    for addr in addresses(&switched)? {
        login(engine, &addr, "app", &app1).await?;
        login(engine, &addr, "app", &app0)
            .await
            .context("the old app password during the grace")?;
    }
    let still = env.instance(&name).await?;
    assert_eq!(
        step(&still),
        Some("switch"),
        "the old password was checked within the grace: {still:?}"
    );
    let writer = SetWriter::start_from(
        mofang_tests::scenario::PrimarySource::api(&env, &name),
        engine,
        &app1,
        out.attempted.last().copied().unwrap_or(0) + 1,
    )
    .await?;
    writer.wait_acked(50, Duration::from_secs(60)).await?;
    let done = rotation_over(&env, &name).await?;
    let until = switched
        .rotation
        .as_ref()
        .and_then(|r| r.old_accepted_until_ms)
        .context("until")?;
    assert!(
        now_ms() >= until,
        "the old app password was dropped before the grace ended"
    );
    check_rotated(&env, &name, engine, "app", &app0, &app1).await?;
    replicated(&env, &name, engine, &app1, mark).await?;
    let out2 = writer.stop().await?;
    let present = set_contents(engine, &done.primary, &app1).await?;
    assert!(out2.lost(&present).is_empty(), "{:?}", out2.lost(&present));

    // Audited with the account, never a password; events say what happened.
    let audit = env.client().audit(LogRange::default()).await?;
    let text = serde_json::to_string(&audit)?;
    for account in ["repl", "monitor", "admin", "app"] {
        assert!(
            audit.iter().any(|e| e.action == "rotate credentials"
                && e.target == format!("instances/{name}/credentials/{account}")),
            "audit entry for {account}: {text}"
        );
    }
    let now = credentials(&env, &name).await?;
    for c in [&first, &now] {
        for account in ["admin", "repl", "monitor", "app"] {
            assert!(
                !text.contains(password(c, account)?),
                "a password in the audit log"
            );
        }
    }
    let kinds: Vec<String> = env
        .instance_events(&name)
        .await?
        .into_iter()
        .map(|e| e.kind)
        .collect();
    for k in [
        "credentials_rotating",
        "credentials_switched",
        "credentials_rotated",
    ] {
        assert_eq!(
            kinds.iter().filter(|x| *x == k).count(),
            4,
            "{k} once per rotation: {kinds:?}"
        );
    }
    let _ = inst;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_every_account_rotates_under_writes_and_a_failover_loses_nothing() -> Result<()> {
    rotate_every_account_under_writes("mariadb").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_every_account_rotates_under_writes_and_a_switchover_loses_nothing() -> Result<()> {
    rotate_every_account_under_writes("redis").await
}

/// Refusals: an unknown account, unknown fields, a grace over a week, an unknown instance,
/// and a token below admin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rotation_requests_are_refused_with_a_reason() -> Result<()> {
    let env = Env::start(1).await?;
    let name = unique_name("rotbad");
    env.create(&name, "redis", 0).await?;
    let path = format!("/v1/instances/{name}/credentials/rotate");
    // Bodies the typed client cannot write (an unknown account or field, a negative grace,
    // no account): sent raw.
    for (body, status, code) in [
        (json!({"account": "root"}), 422, "invalid"),
        (json!({"account": "app", "later": true}), 422, "invalid"),
        (json!({"account": "app", "grace_s": -1}), 422, "invalid"),
        (json!({}), 422, "invalid"),
    ] {
        let (s, v) = env
            .call(reqwest::Method::POST, &path, Some(body.clone()))
            .await?;
        assert_eq!(s.as_u16(), status, "{body}: {v}");
        assert_eq!(v["error"]["code"], code, "{body}: {v}");
    }
    // Well-formed requests the scheduler refuses: a grace over a week, an unknown instance.
    let client = env.client();
    match client
        .rotate_credentials(&name, RotateAccount::App, Some(604_801))
        .await
    {
        Err(e) => {
            assert_eq!(e.status(), Some(422), "grace_s 604801: {e}");
            assert_eq!(e.code(), Some("invalid"), "grace_s 604801: {e}");
        }
        Ok(v) => bail!("a grace over a week was accepted: {v:?}"),
    }
    match client
        .rotate_credentials("nosuch", RotateAccount::App, None)
        .await
    {
        Err(e) => assert_eq!(e.status(), Some(404), "{e}"),
        Ok(v) => bail!("a rotation of an unknown instance was accepted: {v:?}"),
    }
    let v = env.instance(&name).await?;
    assert!(v.rotation.is_none(), "nothing started: {v:?}");
    Ok(())
}

//! Database traffic TLS end to end (issue 15 point 7): a real scheduler (TLS, its own CA),
//! agents on a Docker network, MariaDB 1+1 and Redis 1+1 created with `tls: required`. A
//! plain-text client is refused; a client that trusts only the CA from `mofang instance
//! credentials` and verifies the member's address as the name gets in; a write at the
//! primary arrives at the replica over replication that runs on verified TLS (MariaDB
//! `SHOW SLAVE STATUS`: `Master_SSL_Allowed` and `Master_SSL_Verify_Server_Cert`; Redis: the
//! primary has no plain-text port at all); a Redis backup runs over TLS; and after one kill of
//! the primary's container the write made before it is on the new primary. Bad `tls` values
//! are refused with a JSON reason.

use anyhow::{bail, ensure, Context, Result};
use mofang_common::DbTls;
use mofang_scheduler::backup::BackupState;
use mofang_scheduler::client::{
    CredentialsView, InstancePatch, LogRange, NewBackup, NewBackupRepo,
};
use mofang_scheduler::cluster::InstanceView;
use mofang_scheduler::model::InstanceSpec;
use mofang_scheduler::ops::{OpKind, OpState};
use mofang_tests::scenario::{
    container_of, docker_cli, instance_spec, primary_of, replica_of, Env,
};
use mofang_tests::{eventually, unique_name};
use mysql_async::prelude::Queryable;
use reqwest::StatusCode;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Fast knobs: agents' lease 2 s (tests/src/cluster.rs).
const FAST: &str = "[failover]\nlease_ttl_ms = 2000\nreplace_after_ms = 60000\n";

fn spec(name: &str, engine: &str, tls: DbTls) -> Result<InstanceSpec> {
    let mut s = instance_spec(name, engine, 1)?;
    s.tls = tls;
    Ok(s)
}

/// Creates `name` (1+1) with `tls` through the typed client and waits until it is ready.
async fn create_with(env: &Env, name: &str, engine: &str, tls: DbTls) -> Result<InstanceView> {
    env.client()
        .create_instance(&spec(name, engine, tls)?)
        .await
        .with_context(|| format!("create {name}"))?;
    env.ready(name).await
}

async fn create_ready(env: &Env, name: &str, engine: &str) -> Result<InstanceView> {
    let started = std::time::Instant::now();
    let ready = create_with(env, name, engine, DbTls::Required).await?;
    // A figure for the record (not asserted): the certificates are on the way to `ready`.
    eprintln!(
        "{engine} 1+1 with tls required: ready {:.1} s after the create request",
        started.elapsed().as_secs_f64()
    );
    Ok(ready)
}

fn member_address(inst: &InstanceView, role: &str) -> Result<String> {
    inst.members
        .iter()
        .find(|m| m.role == role)
        .map(|m| m.address.clone())
        .with_context(|| format!("{role} address in {inst:?}"))
}

/// A MariaDB session as `user`; over TLS trusting only `ca` and verifying the address dialed
/// (or `name` instead) when `ca` is given.
async fn mysql(
    addr: &str,
    user: &str,
    password: &str,
    ca: Option<&str>,
    name: Option<&str>,
) -> Result<mysql_async::Conn> {
    let (host, port) = addr.rsplit_once(':').context("address")?;
    let mut opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(host.to_owned())
        .tcp_port(port.parse()?)
        .user(Some(user))
        .pass(Some(password.to_owned()))
        .prefer_socket(false);
    if let Some(ca) = ca {
        opts = opts.ssl_opts(Some(
            mysql_async::SslOpts::default()
                .with_root_certs(vec![ca.as_bytes().to_vec().into()])
                .with_disable_built_in_roots(true)
                .with_danger_tls_hostname_override(name.map(str::to_owned)),
        ));
    }
    let c = tokio::time::timeout(Duration::from_secs(10), mysql_async::Conn::new(opts))
        .await
        .context("no answer in 10 s")??;
    Ok(c)
}

/// A Redis session as `user` over TLS, trusting only `ca` and verifying the host of `addr`
/// (an IP address) as the name: what any TLS client does, written with rustls here.
async fn redis_tls(
    addr: &str,
    user: &str,
    password: &str,
    ca: &str,
) -> Result<redis::aio::MultiplexedConnection> {
    let (host, port) = addr.rsplit_once(':').context("address")?;
    let mut roots = rustls::RootCertStore::empty();
    for c in mofang_common::tls::certs_from_pem(ca.as_bytes()).map_err(anyhow::Error::msg)? {
        roots.add(c)?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(mofang_common::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect((host, port.parse::<u16>()?)).await?;
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())?;
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp),
    )
    .await
    .context("TLS handshake: no answer in 10 s")??;
    let info = redis::RedisConnectionInfo {
        username: Some(user.to_owned()),
        password: Some(password.to_owned()),
        ..Default::default()
    };
    let (conn, driver) = redis::aio::MultiplexedConnection::new(&info, stream).await?;
    tokio::spawn(driver);
    Ok(conn)
}

async fn credentials(env: &Env, name: &str) -> Result<(CredentialsView, String)> {
    let c = env.client().credentials(name).await?;
    ensure!(c.tls == "required", "credentials: {c:?}");
    let ca = c.ca_pem.clone().context("ca_pem in credentials")?;
    ensure!(ca.contains("BEGIN CERTIFICATE"), "{ca}");
    Ok((c, ca))
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tls_values_are_refused_with_a_reason() -> Result<()> {
    mofang_tests::init_tracing();
    let env = Env::start(1).await?;
    // Bodies the typed client cannot write (a value no `DbTls` has, a JSON type that is not
    // a string): sent raw.
    for (engine, tls, status_wanted, want) in [
        (
            "mariadb",
            json!("sometimes"),
            422,
            "unknown variant `sometimes`, expected one of `off`, `optional`, `required`",
        ),
        // Valid JSON of the wrong type: 422 (docs/api.md), the reason naming the type.
        ("mariadb", json!(true), 422, "invalid type: boolean `true`"),
    ] {
        let mut s = mofang_tests::scenario::spec(&unique_name("bad"), engine, 1);
        s["tls"] = tls.clone();
        let (status, v) = env
            .call(reqwest::Method::POST, "/v1/instances", Some(s))
            .await?;
        ensure!(
            status.as_u16() == status_wanted,
            "{engine} {tls}: {status} {v}"
        );
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        ensure!(msg.contains(want), "{engine} {tls}: {v}");
    }
    // A well-formed request the scheduler refuses: through the typed client.
    let err = match env
        .client()
        .create_instance(&spec(&unique_name("bad"), "redis", DbTls::Optional)?)
        .await
    {
        Ok(v) => bail!("redis with tls optional was created: {v:?}"),
        Err(e) => e,
    };
    ensure!(
        err.status() == Some(422)
            && err.code() == Some("invalid")
            && err
                .to_string()
                .contains("tls: optional is not available for redis"),
        "redis optional: {err}"
    );
    let list = env.client().instances(None).await?;
    ensure!(list.is_empty(), "nothing created: {list:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_with_tls_required_refuses_plain_text_and_replicates_over_verified_tls(
) -> Result<()> {
    mofang_tests::init_tracing();
    let env = Env::start_with(2, FAST).await?;
    let name = unique_name("tlsdb");
    let inst = create_ready(&env, &name, "mariadb").await?;
    ensure!(inst.spec.tls == DbTls::Required, "{inst:?}");
    let (creds, ca) = credentials(&env, &name).await?;
    let app = creds.credentials.app.clone();
    let admin = creds.credentials.admin.clone();
    let primary = member_address(&inst, "primary")?;
    let replica = member_address(&inst, "replica")?;

    // Plain text: refused by the server.
    let plain = mysql(&primary, "app", &app, None, None).await;
    let err = match plain {
        Ok(_) => bail!("a plain-text session was accepted at {primary}"),
        Err(e) => format!("{e:#}"),
    };
    // MariaDB 10.11 answers a plain-text login under require_secure_transport with 1045
    // (access denied); the same password gets in over TLS just below.
    ensure!(
        err.contains("insecure transport") || err.contains("1045"),
        "plain text: {err}"
    );
    // TLS with a name the certificate does not carry: refused by the client.
    ensure!(
        mysql(&primary, "app", &app, Some(&ca), Some("10.9.9.9"))
            .await
            .is_err(),
        "a certificate for 10.9.9.9 was accepted"
    );
    // TLS verifying the member's address against the CA: in.
    let mut c = mysql(&primary, "app", &app, Some(&ca), None)
        .await
        .context("TLS session verifying the primary's address")?;
    let cipher: Option<(String, String)> = c
        .query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .await?;
    ensure!(
        cipher.as_ref().is_some_and(|(_, v)| !v.is_empty()),
        "{cipher:?}"
    );
    c.query_drop("CREATE TABLE app.marks (id BIGINT PRIMARY KEY)")
        .await?;
    c.query_drop("INSERT INTO app.marks VALUES (1)").await?;
    drop(c);

    // Replicated, over TLS with the primary's certificate verified.
    let arrived = eventually(
        "the row is on the replica",
        Duration::from_secs(30),
        || async {
            let mut r = mysql(&replica, "app", &app, Some(&ca), None).await?;
            let n: Option<u64> = r
                .query_first("SELECT COUNT(*) FROM app.marks WHERE id = 1")
                .await?;
            ensure!(n == Some(1), "not yet: {n:?}");
            Ok(())
        },
    )
    .await;
    if let Err(e) = arrived {
        bail!("{e:#}{}", replication_report(&inst, &admin, &ca).await);
    }
    let mut r = mysql(&replica, "mofang_admin", &admin, Some(&ca), None).await?;
    let row: mysql_async::Row = r
        .query_first("SHOW SLAVE STATUS")
        .await?
        .context("the replica has no replication")?;
    let col = |c: &str| {
        row.get_opt::<String, _>(c)
            .and_then(|v| v.ok())
            .unwrap_or_default()
    };
    ensure!(
        col("Master_SSL_Allowed") == "Yes",
        "Master_SSL_Allowed {}",
        col("Master_SSL_Allowed")
    );
    ensure!(
        col("Master_SSL_Verify_Server_Cert") == "Yes",
        "Master_SSL_Verify_Server_Cert {}",
        col("Master_SSL_Verify_Server_Cert")
    );
    ensure!(
        col("Slave_IO_Running") == "Yes",
        "IO thread {}",
        col("Slave_IO_Running")
    );
    ensure!(
        col("Master_SSL_CA_File") == "/etc/mofang/ca.pem",
        "{}",
        col("Master_SSL_CA_File")
    );
    // The replica's binlog holds no transaction of its own (an errant GTID): the agent's
    // certificate reload was binlogged once, and stopped replication at the primary's next
    // write when the replica was certified after being repointed (issue 15, db_tls defect).
    let mut p = mysql(&primary, "mofang_admin", &admin, Some(&ca), None).await?;
    let errant = errant_gtids(&mut r, &mut p).await?;
    ensure!(
        errant.is_empty(),
        "the replica's own transactions: {errant:?}"
    );
    drop((r, p));

    // The member's key: in its config directory 0600 for the database's uid (999) only, and
    // nowhere in clear in the agent's state directory or in any log.
    let primary_id = primary_of(&inst)?.id.clone();
    let agent = env.agent_running(&inst, &primary_id)?;
    let key_file = env.agents[agent]
        .run_dir()
        .join(&primary_id)
        .join("server-key.pem");
    let meta = std::fs::metadata(&key_file).with_context(|| key_file.display().to_string())?;
    {
        use std::os::unix::fs::MetadataExt;
        ensure!(
            meta.mode() & 0o777 == 0o600,
            "key mode {:o}",
            meta.mode() & 0o777
        );
        ensure!(
            meta.uid() == 999 && meta.gid() == 999,
            "key owner {}:{}",
            meta.uid(),
            meta.gid()
        );
    }
    let key = std::fs::read_to_string(&key_file)?;
    ensure!(key.contains("PRIVATE KEY"), "not a key: {key_file:?}");
    let body = key
        .lines()
        .find(|l| !l.starts_with("-----") && l.len() > 40)
        .context("key body")?
        .to_owned();
    ensure!(
        !dir_contains(&env.agents[agent].state_dir(), &body)?,
        "the member's key is in clear in the agent's state directory"
    );
    for a in &env.agents {
        ensure!(
            !a.log().contains(&body),
            "the member's key in {}'s log",
            a.node
        );
    }
    ensure!(
        !env.sched.log().contains(&body),
        "the member's key in the scheduler's log"
    );

    // The agent's own monitoring logs in over TLS too.
    let metrics_url = format!("{}/metrics", env.agents[agent].http);
    eventually("mysql_up 1 over TLS", Duration::from_secs(20), || async {
        let text = reqwest::get(&metrics_url).await?.text().await?;
        ensure!(
            text.lines().any(|l| l.starts_with("mysql_up{")
                && l.contains(&name)
                && (l.ends_with(" 1") || l.ends_with(" 1.0"))),
            "no mysql_up 1 for {name}: {:?}",
            text.lines()
                .filter(|l| l.starts_with("mysql_up"))
                .collect::<Vec<_>>()
        );
        Ok(())
    })
    .await?;

    // One kill of the primary: the new primary has the row, and serves TLS only.
    let old = primary_of(&inst)?;
    docker_cli(&["kill", &container_of(&old.id)])?;
    let after = env
        .new_primary(&name, inst.epoch, Duration::from_secs(60))
        .await?;
    let new_primary = after.primary.clone();
    ensure!(
        new_primary == replica,
        "promoted {new_primary}, expected {replica}"
    );
    let mut c = mysql(&new_primary, "app", &app, Some(&ca), None).await?;
    let n: Option<u64> = c
        .query_first("SELECT COUNT(*) FROM app.marks WHERE id = 1")
        .await?;
    ensure!(n == Some(1), "the row written before the kill: {n:?}");
    c.query_drop("INSERT INTO app.marks VALUES (2)").await?;
    ensure!(
        mysql(&new_primary, "app", &app, None, None).await.is_err(),
        "the new primary accepted plain text"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_with_tls_required_refuses_plain_text_and_replicates_over_tls() -> Result<()> {
    mofang_tests::init_tracing();
    let env = Env::start_with(2, FAST).await?;
    let name = unique_name("tlsrd");
    let inst = create_ready(&env, &name, "redis").await?;
    ensure!(inst.spec.tls == DbTls::Required, "{inst:?}");
    let (creds, ca) = credentials(&env, &name).await?;
    let app = creds.credentials.app.clone();
    let primary = member_address(&inst, "primary")?;
    let replica = member_address(&inst, "replica")?;

    // Plain text: the port speaks TLS only; a RESP client gets no answer it can read.
    let plain = tokio::time::timeout(Duration::from_secs(5), async {
        let client = redis::Client::open(format!("redis://app:{app}@{primary}/"))?;
        let mut c = client.get_multiplexed_async_connection().await?;
        let pong: String = redis::cmd("PING").query_async(&mut c).await?;
        anyhow::Ok(pong)
    })
    .await;
    ensure!(
        !matches!(plain, Ok(Ok(_))),
        "a plain-text client got an answer at {primary}"
    );

    // TLS verifying the member's address against the CA: in.
    let mut c = redis_tls(&primary, "app", &app, &ca).await?;
    let _: () = redis::cmd("SET")
        .arg("mark")
        .arg("1")
        .query_async(&mut c)
        .await?;
    eventually(
        "the key is on the replica",
        Duration::from_secs(30),
        || async {
            let mut r = redis_tls(&replica, "app", &app, &ca).await?;
            let v: Option<String> = redis::cmd("GET").arg("mark").query_async(&mut r).await?;
            ensure!(v.as_deref() == Some("1"), "not yet: {v:?}");
            Ok(())
        },
    )
    .await?;
    // The replica's link is up although its primary has no plain-text port: replication is TLS.
    let admin = creds.credentials.admin.clone();
    let mut r = redis_tls(&replica, "mofang_admin", &admin, &ca).await?;
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut r)
        .await?;
    ensure!(info.contains("master_link_status:up"), "{info}");
    let cfg: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("port")
        .query_async(&mut r)
        .await?;
    ensure!(
        cfg.get(1).map(String::as_str) == Some("0"),
        "plain port {cfg:?}"
    );
    let repl: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("tls-replication")
        .query_async(&mut r)
        .await?;
    ensure!(
        repl.get(1).map(String::as_str) == Some("yes"),
        "tls-replication {repl:?}"
    );

    // A backup (BGSAVE through the agent's TLS session with the member) to a real S3.
    let s3 = mofang_tests::s3::SeaweedFs::shared().await?;
    let client = env.client();
    client
        .add_backup_repo(&NewBackupRepo {
            name: "tlsrepo".into(),
            kind: "s3".into(),
            endpoint: Some(s3.endpoint.clone()),
            bucket: Some(s3.bucket.clone()),
            prefix: Some(unique_name("tls")),
            access_key_id: Some(s3.access_key.clone()),
            secret_access_key: Some(mofang_common::repo::Secret(s3.secret_key.clone())),
            ..NewBackupRepo::default()
        })
        .await
        .context("backup repository")?;
    let b = client
        .create_backup(
            &name,
            &NewBackup {
                repo: "tlsrepo".into(),
                primary: true,
                ..NewBackup::default()
            },
        )
        .await
        .context("backup")?;
    let id = b.id;
    let done = eventually("the backup ended", Duration::from_secs(60), || async {
        let b = client.backup(&id).await?;
        ensure!(b.state.is_final(), "{b:?}");
        Ok(b)
    })
    .await?;
    ensure!(
        done.state == BackupState::Succeeded,
        "backup of a TLS member: {done:?}"
    );

    // One kill of the primary after the write reached the replica: the new primary has it.
    let old = primary_of(&inst)?;
    docker_cli(&["kill", &container_of(&old.id)])?;
    let after = env
        .new_primary(&name, inst.epoch, Duration::from_secs(60))
        .await?;
    let new_primary = after.primary.clone();
    let mut c = redis_tls(&new_primary, "app", &app, &ca).await?;
    let v: Option<String> = redis::cmd("GET").arg("mark").query_async(&mut c).await?;
    ensure!(
        v.as_deref() == Some("1"),
        "the key written before the kill: {v:?}"
    );
    let _: () = redis::cmd("SET")
        .arg("mark")
        .arg("2")
        .query_async(&mut c)
        .await?;
    Ok(())
}

/// `mofang --json ARGS...` against the environment's scheduler, its output read as `T` (the
/// API's type the CLI prints).
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

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_with_tls_optional_through_the_cli_accepts_both_and_replicates_over_tls(
) -> Result<()> {
    mofang_tests::init_tracing();
    let env = Env::start_with(2, FAST).await?;
    let name = unique_name("tlsopt");
    let created: InstanceView = cli(
        &env,
        &[
            "instance",
            "create",
            &name,
            "--engine",
            "mariadb",
            "--replicas",
            "1",
            "--cpu",
            "0.5",
            "--memory",
            "384",
            "--disk",
            "512",
            "--tls",
            "optional",
        ],
    )
    .await?;
    ensure!(created.spec.tls == DbTls::Optional, "{created:?}");
    let inst = env.ready(&name).await?;
    let dir = tempfile::tempdir()?;
    let ca_file = dir.path().join("ca.pem");
    let creds: CredentialsView = cli(
        &env,
        &[
            "instance",
            "credentials",
            &name,
            "--ca-out",
            ca_file.to_str().context("path")?,
        ],
    )
    .await?;
    ensure!(creds.tls == "optional", "{creds:?}");
    let ca = std::fs::read_to_string(&ca_file)?;
    ensure!(
        Some(ca.as_str()) == creds.ca_pem.as_deref(),
        "--ca-out wrote the CA"
    );
    let app = creds.credentials.app.clone();
    let admin = creds.credentials.admin.clone();
    let primary = member_address(&inst, "primary")?;
    let replica = member_address(&inst, "replica")?;

    // Both: plain text, and TLS verifying the address.
    let mut plain = mysql(&primary, "app", &app, None, None).await?;
    let cipher: Option<(String, String)> = plain
        .query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .await?;
    ensure!(
        cipher.as_ref().is_some_and(|(_, v)| v.is_empty()),
        "plain: {cipher:?}"
    );
    plain
        .query_drop("CREATE TABLE app.marks (id BIGINT PRIMARY KEY)")
        .await?;
    plain.query_drop("INSERT INTO app.marks VALUES (7)").await?;
    drop(plain);
    let mut tls = mysql(&primary, "app", &app, Some(&ca), None).await?;
    let cipher: Option<(String, String)> = tls
        .query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .await?;
    ensure!(
        cipher.as_ref().is_some_and(|(_, v)| !v.is_empty()),
        "TLS: {cipher:?}"
    );
    drop(tls);

    let arrived = eventually(
        "the row is on the replica",
        Duration::from_secs(30),
        || async {
            let mut r = mysql(&replica, "app", &app, Some(&ca), None).await?;
            let n: Option<u64> = r
                .query_first("SELECT COUNT(*) FROM app.marks WHERE id = 7")
                .await?;
            ensure!(n == Some(1), "not yet: {n:?}");
            Ok(())
        },
    )
    .await;
    if let Err(e) = arrived {
        bail!("{e:#}{}", replication_report(&inst, &admin, &ca).await);
    }
    let mut r = mysql(&replica, "mofang_admin", &admin, Some(&ca), None).await?;
    let row: mysql_async::Row = r
        .query_first("SHOW SLAVE STATUS")
        .await?
        .context("the replica has no replication")?;
    let col = |c: &str| {
        row.get_opt::<String, _>(c)
            .and_then(|v| v.ok())
            .unwrap_or_default()
    };
    ensure!(
        col("Master_SSL_Allowed") == "Yes" && col("Master_SSL_Verify_Server_Cert") == "Yes",
        "replication TLS: {} {}",
        col("Master_SSL_Allowed"),
        col("Master_SSL_Verify_Server_Cert")
    );
    // The replica's binlog holds no transaction of its own (an errant GTID): the agent's
    // certificate reload was binlogged once, and stopped replication at the primary's next
    // write when the replica was certified after being repointed (issue 15, db_tls defect).
    let mut p = mysql(&primary, "mofang_admin", &admin, Some(&ca), None).await?;
    let errant = errant_gtids(&mut r, &mut p).await?;
    ensure!(
        errant.is_empty(),
        "the replica's own transactions: {errant:?}"
    );
    Ok(())
}

/// TLS turned on for a running instance (`PATCH /v1/instances/{name}` `{"tls": "required"}`):
/// a MariaDB 1+1 created plain, rows written in plain text; the change is a rolling restart
/// (replica, switchover, old primary). Then plain text is refused, verified TLS gets in,
/// replication is TLS and no row is lost; a second change while it rolls is refused (409).
/// Then `optional` through the CLI, set live (plain text in again, no restart), and `off` (a
/// second rolling restart): replication in plain text, no row lost.
/// A replica whose primary refuses its connection (here: the replication account made to
/// require TLS the replica does not use, as when a primary turned to `required` and the
/// replica cannot connect) is reported not healthy with MariaDB's `Last_IO_Error` as the
/// reason while its I/O thread retries, and its agent's replica check answers 503; once the
/// primary accepts it again it reconnects and stays healthy (no flapping), and a row written
/// meanwhile reaches it (issue 15, open point 1).
/// A running HAProxy, stopped when dropped.
struct Haproxy(std::process::Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `mofang instance haproxy-config NAME ... --ca-file CA` written to `file` (after `edit`),
/// checked by `haproxy -c` and run.
fn run_haproxy(
    env: &Env,
    name: &str,
    ca: &std::path::Path,
    file: &str,
    edit: impl Fn(String) -> String,
) -> Result<(Haproxy, u16, u16)> {
    use mofang_tests::coord::free_port;
    use std::process::Command;
    let (rw, ro) = (free_port()?, free_port()?);
    let out = Command::new(mofang_tests::cluster::binaries()?.join("mofang"))
        .args(["instance", "haproxy-config", name, "--bind", "127.0.0.1"])
        .args(["--rw-port", &rw.to_string(), "--ro-port", &ro.to_string()])
        .arg("--ca-file")
        .arg(ca)
        .envs(env.sched.cli_env())
        .env("MOFANG_TOKEN", &env.token)
        .output()?;
    ensure!(
        out.status.success(),
        "haproxy-config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = edit(String::from_utf8(out.stdout)?);
    let path = env.sched.dir.path().join(file);
    std::fs::write(&path, &cfg)?;
    let check = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .output()?;
    ensure!(
        check.status.success(),
        "haproxy -c: {}\n{cfg}",
        String::from_utf8_lossy(&check.stderr)
    );
    let h = Haproxy(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    Ok((h, rw, ro))
}

/// A plain RESP session through HAProxy as `app`: PING, then SET / GET of `key`.
async fn through(at: &str, app: &str, key: &str, set: bool) -> Result<Option<String>> {
    tokio::time::timeout(Duration::from_secs(5), async {
        let client = redis::Client::open(format!("redis://app:{app}@{at}/"))?;
        let mut c = client.get_multiplexed_async_connection().await?;
        if set {
            let _: () = redis::cmd("SET")
                .arg(key)
                .arg("via")
                .query_async(&mut c)
                .await?;
        }
        let v: Option<String> = redis::cmd("GET").arg(key).query_async(&mut c).await?;
        anyhow::Ok(v)
    })
    .await
    .context("no answer in 5 s")?
}

/// HAProxy rendered with `--ca-file` for a Redis instance with `tls: required` speaks TLS to
/// the members and verifies each one's certificate and name (issue 15, open point 3): writes
/// through its read-write port reach the primary and reads through the read-only port the
/// replica; the same config with another name to verify (`verifyhost`) forwards nothing.
#[tokio::test(flavor = "multi_thread")]
async fn haproxy_reaches_redis_members_over_tls_verifying_each_members_name() -> Result<()> {
    mofang_tests::init_tracing();
    let env = Env::start_with(2, FAST).await?;
    let name = unique_name("hatls");
    let inst = create_ready(&env, &name, "redis").await?;
    let (creds, ca) = credentials(&env, &name).await?;
    let app = creds.credentials.app.clone();
    let ca_file = env.sched.dir.path().join("instance-ca.pem");
    std::fs::write(&ca_file, &ca)?;

    let (_h, rw, ro) = run_haproxy(&env, &name, &ca_file, "haproxy.cfg", |c| c)?;
    let (rw_at, ro_at) = (format!("127.0.0.1:{rw}"), format!("127.0.0.1:{ro}"));
    eventually(
        "a write through the read-write port",
        Duration::from_secs(30),
        || async {
            let v = through(&rw_at, &app, "via-haproxy", true).await?;
            ensure!(v.as_deref() == Some("via"), "{v:?}");
            Ok(())
        },
    )
    .await?;
    eventually(
        "the key read through the read-only port (the replica)",
        Duration::from_secs(30),
        || async {
            let v = through(&ro_at, &app, "via-haproxy", false).await?;
            ensure!(v.as_deref() == Some("via"), "{v:?}");
            Ok(())
        },
    )
    .await?;

    // The same config, but each member checked against a name its certificate does not
    // carry: HAProxy refuses the handshake and forwards nothing, though the chain is good.
    let ids: Vec<String> = inst.members.iter().map(|m| m.id.clone()).collect();
    ensure!(ids.len() == 2, "{inst:?}");
    let (_wrong, rw2, _) = run_haproxy(&env, &name, &ca_file, "haproxy-wrong.cfg", |c| {
        ids.iter().fold(c, |c, id| {
            // HAProxy checks the SNI name when one is sent (`verifyhost` otherwise, seen
            // with `openssl s_server` behind HAProxy 2.6): both are changed.
            c.replace(
                &format!("verifyhost {id} sni str({id})"),
                "verifyhost someone-else.mofang sni str(someone-else.mofang)",
            )
        })
    })?;
    let at = format!("127.0.0.1:{rw2}");
    // Give HAProxy time to mark its servers up by the agents' checks, then try for a while.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..5 {
        let r = through(&at, &app, "via-haproxy", false).await;
        ensure!(
            r.is_err(),
            "an answer through a server whose name does not match: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mariadb_replica_whose_primary_refuses_it_is_not_healthy_until_it_reconnects(
) -> Result<()> {
    mofang_tests::init_tracing();
    let env = Env::start_with(2, FAST).await?;
    let name = unique_name("refused");
    let inst = create_with(&env, &name, "mariadb", DbTls::Off).await?;
    let creds = env.client().credentials(&name).await?;
    let admin = creds.credentials.admin.clone();
    let app = creds.credentials.app.clone();
    let primary_at = member_address(&inst, "primary")?;
    let replica = replica_of(&inst)?;
    let replica_id = replica.id.clone();
    let check = format!(
        "http://{}/v1/members/{replica_id}/replica",
        replica.check_address
    );

    // The primary refuses the replication account in plain text, and the replica's current
    // connection is cut: its I/O thread retries and is refused every second.
    let mut p = mysql(&primary_at, "mofang_admin", &admin, None, None).await?;
    p.query_drop("SET SESSION sql_log_bin = 0").await?;
    p.query_drop("ALTER USER 'mofang_repl'@'%' REQUIRE SSL")
        .await?;
    let dumps: Vec<u64> = p
        .query("SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'")
        .await?;
    ensure!(
        !dumps.is_empty(),
        "no replication connection at the primary"
    );
    for id in dumps {
        p.query_drop(format!("KILL {id}")).await?;
    }
    let replica_of = |v: &InstanceView| {
        v.members
            .iter()
            .find(|m| m.id == replica_id)
            .cloned()
            .context("replica")
    };
    let refused = eventually(
        "the replica is reported not healthy, with the reason",
        Duration::from_secs(30),
        || async {
            let m = replica_of(&env.instance(&name).await?)?;
            ensure!(!m.healthy, "{m:?}");
            Ok(m)
        },
    )
    .await?;
    let reason = &refused.reason;
    ensure!(
        reason.contains("connecting to master") && reason.contains("Access denied"),
        "the reason names MariaDB's Last_IO_Error: {refused:?}"
    );
    // What a load balancer asks: not a replica to send reads to.
    let r = env.http.get(&check).send().await?;
    ensure!(
        r.status() == StatusCode::SERVICE_UNAVAILABLE,
        "replica check while refused: {}",
        r.status()
    );
    // It stays so while the retries go on (the state is not a transient of one look).
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let v = env.instance(&name).await?;
        ensure!(
            v.status != "ready",
            "ready while its replica is refused: {v:?}"
        );
    }

    // Accepted again: the next retry connects and the replica is healthy, and stays so.
    p.query_drop("ALTER USER 'mofang_repl'@'%' REQUIRE NONE")
        .await?;
    drop(p);
    let mut w = mysql(&primary_at, "app", &app, None, None).await?;
    w.query_drop("CREATE TABLE app.after_refusal (id BIGINT PRIMARY KEY)")
        .await?;
    w.query_drop("INSERT INTO app.after_refusal VALUES (1)")
        .await?;
    drop(w);
    env.ready(&name).await?;
    for i in 0..10 {
        let m = replica_of(&env.instance(&name).await?)?;
        ensure!(
            m.healthy && m.reason.is_empty(),
            "sample {i}: the reconnected replica flapped: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let r = env.http.get(&check).send().await?;
    ensure!(
        r.status() == StatusCode::OK,
        "replica check: {}",
        r.status()
    );
    let replica_at = member_address(&env.instance(&name).await?, "replica")?;
    eventually(
        "the row is on the replica",
        Duration::from_secs(30),
        || async {
            let mut c = mysql(&replica_at, "app", &app, None, None).await?;
            let n: Option<u64> = c
                .query_first("SELECT COUNT(*) FROM app.after_refusal")
                .await?;
            ensure!(n == Some(1), "{n:?}");
            Ok(())
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_tls_turned_on_and_off_on_a_running_instance_loses_no_row() -> Result<()> {
    mofang_tests::init_tracing();
    let env = Env::start_with(2, FAST).await?;
    let name = unique_name("tlsup");
    let inst = create_with(&env, &name, "mariadb", DbTls::Off).await?;
    let client = env.client();
    let creds = client.credentials(&name).await?;
    ensure!(creds.tls == "off", "{creds:?}");
    let app = creds.credentials.app.clone();
    let admin = creds.credentials.admin.clone();
    let mut c = mysql(&member_address(&inst, "primary")?, "app", &app, None, None).await?;
    c.query_drop("CREATE TABLE app.marks (id BIGINT PRIMARY KEY)")
        .await?;
    c.query_drop("INSERT INTO app.marks VALUES (1), (2), (3)")
        .await?;
    drop(c);

    let tls = |t: DbTls| InstancePatch {
        tls: Some(t),
        ..InstancePatch::default()
    };
    let v = client
        .patch_instance(&name, &tls(DbTls::Required))
        .await
        .context("patch tls")?;
    ensure!(v.spec.tls == DbTls::Required, "{v:?}");
    // One change at a time: the rolling restart is under way.
    match client.patch_instance(&name, &tls(DbTls::Optional)).await {
        Ok(v) => bail!("a second change while the first rolls was accepted: {v:?}"),
        Err(e) => ensure!(
            e.status() == Some(409) && e.code() == Some("operation_running"),
            "a second change while the first rolls: {e}"
        ),
    }
    let op = eventually(
        "the rolling restart succeeded",
        Duration::from_secs(240),
        || async {
            let ops = client.operations(&name).await?;
            let op = ops.first().cloned().context("no operation")?;
            if matches!(op.state, OpState::Failed | OpState::Cancelled) {
                return Ok(Err(op));
            }
            ensure!(op.state == OpState::Succeeded, "{op:?}");
            Ok(Ok(op))
        },
    )
    .await?;
    let op = op.map_err(|op| anyhow::anyhow!("the rolling restart did not succeed: {op:?}"))?;
    ensure!(op.kind == OpKind::Restart, "{op:?}");

    let inst = env.ready(&name).await?;
    let (_, ca) = credentials(&env, &name).await?;
    let primary = member_address(&inst, "primary")?;
    let replica = member_address(&inst, "replica")?;
    for at in [&primary, &replica] {
        ensure!(
            mysql(at, "app", &app, None, None).await.is_err(),
            "plain text accepted at {at} after tls required"
        );
    }
    let mut c = mysql(&primary, "app", &app, Some(&ca), None)
        .await
        .context("TLS session verifying the primary's address")?;
    let n: Option<u64> = c.query_first("SELECT COUNT(*) FROM app.marks").await?;
    ensure!(n == Some(3), "the rows written in plain text: {n:?}");
    c.query_drop("INSERT INTO app.marks VALUES (4)").await?;
    drop(c);
    let arrived = eventually(
        "the row is on the replica",
        Duration::from_secs(30),
        || async {
            let mut r = mysql(&replica, "app", &app, Some(&ca), None).await?;
            let n: Option<u64> = r.query_first("SELECT COUNT(*) FROM app.marks").await?;
            ensure!(n == Some(4), "not yet: {n:?}");
            Ok(())
        },
    )
    .await;
    if let Err(e) = arrived {
        bail!("{e:#}{}", replication_report(&inst, &admin, &ca).await);
    }
    let mut r = mysql(&replica, "mofang_admin", &admin, Some(&ca), None).await?;
    let row: mysql_async::Row = r
        .query_first("SHOW SLAVE STATUS")
        .await?
        .context("the replica has no replication")?;
    let col = |c: &str| {
        row.get_opt::<String, _>(c)
            .and_then(|v| v.ok())
            .unwrap_or_default()
    };
    ensure!(
        col("Master_SSL_Allowed") == "Yes"
            && col("Master_SSL_Verify_Server_Cert") == "Yes"
            && col("Slave_IO_Running") == "Yes",
        "replication after the change: SSL {} verify {} IO {}",
        col("Master_SSL_Allowed"),
        col("Master_SSL_Verify_Server_Cert"),
        col("Slave_IO_Running")
    );
    let mut p = mysql(&primary, "mofang_admin", &admin, Some(&ca), None).await?;
    let errant = errant_gtids(&mut r, &mut p).await?;
    ensure!(
        errant.is_empty(),
        "the replica's own transactions: {errant:?}"
    );
    drop((r, p));

    // Back: `optional` (through the CLI) is set live (no restart, no operation): plain text
    // gets in again.
    let v: InstanceView = cli(&env, &["instance", "tls", &name, "optional"]).await?;
    ensure!(v.spec.tls == DbTls::Optional, "{v:?}");
    eventually(
        "plain text accepted with tls optional",
        Duration::from_secs(20),
        || async {
            mysql(&primary, "app", &app, None, None).await?;
            Ok(())
        },
    )
    .await?;
    let ops = client.operations(&name).await?;
    ensure!(
        ops.len() == 1,
        "optional <-> required restarts nothing: {ops:?}"
    );
    // And off: a second rolling restart; replication back to plain text, no row lost.
    client
        .patch_instance(&name, &tls(DbTls::Off))
        .await
        .context("patch tls off")?;
    eventually(
        "the second rolling restart succeeded",
        Duration::from_secs(240),
        || async {
            let ops = client.operations(&name).await?;
            let states: Vec<OpState> = ops.iter().map(|o| o.state).collect();
            ensure!(
                states == [OpState::Succeeded, OpState::Succeeded],
                "{ops:?}"
            );
            Ok(())
        },
    )
    .await?;
    let inst = env.ready(&name).await?;
    let primary = member_address(&inst, "primary")?;
    let replica = member_address(&inst, "replica")?;
    let mut c = mysql(&primary, "app", &app, None, None).await?;
    c.query_drop("INSERT INTO app.marks VALUES (5)").await?;
    drop(c);
    eventually(
        "the row is on the replica over plain text",
        Duration::from_secs(30),
        || async {
            let mut r = mysql(&replica, "app", &app, None, None).await?;
            let n: Option<u64> = r.query_first("SELECT COUNT(*) FROM app.marks").await?;
            ensure!(n == Some(5), "not yet: {n:?}");
            let mut r = mysql(&replica, "mofang_admin", &admin, None, None).await?;
            let row: mysql_async::Row = r
                .query_first("SHOW SLAVE STATUS")
                .await?
                .context("the replica has no replication")?;
            let ssl: Option<String> = row.get_opt("Master_SSL_Allowed").and_then(|v| v.ok());
            ensure!(ssl.as_deref() == Some("No"), "Master_SSL_Allowed {ssl:?}");
            Ok(())
        },
    )
    .await?;

    // The changes are events, and their requests are in the audit log.
    let events = env.instance_events(&name).await?;
    ensure!(
        events
            .iter()
            .any(|e| e.message.contains("tls off -> required")),
        "no event for the change: {events:?}"
    );
    let audit = client.audit(LogRange::default()).await?;
    ensure!(
        audit
            .iter()
            .any(|e| e.action == format!("PATCH /v1/instances/{name}") && e.status == 200),
        "no audit entry for the change"
    );
    Ok(())
}

/// The GTIDs in the replica's binlog its primary's lacks (`gtid_binlog_state`, per domain and
/// server id): transactions of its own (errant GTIDs), which stop replication under
/// gtid_strict_mode once the primary's sequence numbers meet them, and make failover
/// positions lie. A replica that was the primary before keeps its own older GTIDs: the
/// primary has them too.
async fn errant_gtids(
    replica: &mut mysql_async::Conn,
    primary: &mut mysql_async::Conn,
) -> Result<Vec<String>> {
    async fn state(c: &mut mysql_async::Conn) -> Result<Vec<(String, u64)>> {
        let s: Option<String> = c.query_first("SELECT @@GLOBAL.gtid_binlog_state").await?;
        Ok(s.unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter_map(|g| {
                let (domain_server, seq) = g.rsplit_once('-')?;
                Some((domain_server.to_owned(), seq.parse().ok()?))
            })
            .collect())
    }
    let on_primary = state(primary).await?;
    Ok(state(replica)
        .await?
        .into_iter()
        .filter(|(ds, seq)| !on_primary.iter().any(|(p, n)| p == ds && n >= seq))
        .map(|(ds, seq)| format!("{ds}-{seq}"))
        .collect())
}

/// What the replication looks like when a row did not arrive, for the failure message:
/// each member's `SHOW SLAVE STATUS` essentials and the tail of its server log.
async fn replication_report(inst: &InstanceView, admin: &str, ca: &str) -> String {
    let mut out = String::new();
    for m in &inst.members {
        let (id, addr) = (m.id.as_str(), m.address.as_str());
        out.push_str(&format!("\n---- {id} at {addr} ({})\n", m.role));
        match mysql(addr, "mofang_admin", admin, Some(ca), None).await {
            Ok(mut c) => {
                let row: Result<Option<mysql_async::Row>, _> =
                    c.query_first("SHOW SLAVE STATUS").await;
                if let Ok(Some(row)) = row {
                    for col in [
                        "Master_Host",
                        "Slave_IO_Running",
                        "Slave_SQL_Running",
                        "Last_IO_Error",
                        "Last_SQL_Error",
                        "Gtid_IO_Pos",
                        "Master_SSL_Allowed",
                    ] {
                        let v = row
                            .get_opt::<String, _>(col)
                            .and_then(|v| v.ok())
                            .unwrap_or_default();
                        out.push_str(&format!("{col}: {v}\n"));
                    }
                }
                let pos: Result<Option<String>, _> =
                    c.query_first("SELECT @@GLOBAL.gtid_current_pos").await;
                out.push_str(&format!("gtid_current_pos: {pos:?}\n"));
            }
            Err(e) => out.push_str(&format!("no session: {e:#}\n")),
        }
        let logs = std::process::Command::new("docker")
            .args(["logs", "--tail", "40", &container_of(id)])
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default();
        out.push_str(&logs);
    }
    out
}

/// True when any file under `dir` contains `needle`.
fn dir_contains(dir: &std::path::Path, needle: &str) -> Result<bool> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            if dir_contains(&p, needle)? {
                return Ok(true);
            }
        } else if std::fs::read(&p)
            .map(|b| String::from_utf8_lossy(&b).contains(needle))
            .unwrap_or(false)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

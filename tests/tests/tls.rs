//! Mutual TLS end to end (issue 15 points 1-3): real scheduler and agent processes with a CA
//! made for the test, raw gRPC clients as the probes anyone reaching the agent port could
//! send, the `mofang` CLI over TLS, join tokens and revocation.

use anyhow::{bail, ensure, Context, Result};
use mofang_common::proto::{HeartbeatRequest, RegisterRequest, WatchRequest};
use mofang_common::tls::pki::{CertKind, OffsetDateTime, TimeDuration};
use mofang_scheduler::client::LogRange;
use mofang_scheduler::model::{Event, NodeState};
use mofang_tests::cluster::{binaries, AgentProcess, SchedulerProcess, Timings};
use mofang_tests::pki::{grpc_client, TestPki};
use mofang_tests::scenario::{primary_of, Env};
use mofang_tests::{eventually, unique_name};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tonic::Code;

/// Runs the `mofang` CLI against `sched` with `args`; returns (success, stdout, stderr).
fn cli(
    sched: &SchedulerProcess,
    token: &str,
    ca: bool,
    args: &[&str],
) -> Result<(bool, String, String)> {
    let mut cmd = Command::new(binaries()?.join("mofang"));
    cmd.args(args)
        .env_remove("MOFANG_CACERT")
        .env("MOFANG_ADDR", &sched.rest)
        .env("MOFANG_TOKEN", token);
    if ca {
        cmd.envs(sched.cli_env());
    }
    let out = cmd.output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Events or audit entries: up to 10000 (`?limit=10000`).
const ALL: LogRange = LogRange {
    since: None,
    before: None,
    limit: Some(10000),
};

fn code_of<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    match r {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(s) => s.code(),
    }
}

fn register(node: &str) -> RegisterRequest {
    RegisterRequest {
        node: node.to_owned(),
        advertise_address: "10.6.6.6".into(),
        cpu: 1024.0,
        memory_bytes: 16 << 40,
        ..Default::default()
    }
}

fn heartbeat(node: &str) -> HeartbeatRequest {
    HeartbeatRequest {
        node: node.to_owned(),
        ..Default::default()
    }
}

fn watch(node: &str) -> WatchRequest {
    WatchRequest {
        node: node.to_owned(),
        known_revision: 0,
    }
}

/// The probe of issue 15: no certificate, then another node's certificate, then foreign
/// certificates (another CA, expired, a server's). Each is refused; the rogue node never
/// appears; refusals leave an event and an audit entry with the caller's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_calls_act_only_as_the_node_their_certificate_names() -> Result<()> {
    mofang_tests::init_tracing();
    let env = Env::start(2).await?;
    let pki = env.sched.pki.clone().context("the harness runs TLS")?;
    let (a, b) = (env.agents[0].node.clone(), env.agents[1].node.clone());
    let probes = tempfile::tempdir()?;
    let grpc = &env.sched.grpc;

    // 1. No certificate at all: Unauthenticated for Register and WatchAssignments.
    let mut anon = grpc_client(grpc, &pki.ca_file(), None).await?;
    assert_eq!(
        code_of(anon.register(register("rogue-node")).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code_of(anon.watch_assignments(watch(&a)).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code_of(anon.heartbeat(heartbeat(&a)).await),
        Code::Unauthenticated
    );

    // 2. Node b's certificate: b may act as b, never as a (nor register a rogue node).
    let b_cert = pki.issue(&CertKind::Agent(b.clone()), probes.path())?;
    let mut as_b = grpc_client(grpc, &pki.ca_file(), Some(&b_cert)).await?;
    as_b.heartbeat(heartbeat(&b))
        .await
        .context("node b's own certificate must work for node b")?;
    assert_eq!(
        code_of(as_b.heartbeat(heartbeat(&a)).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code_of(as_b.watch_assignments(watch(&a)).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code_of(as_b.register(register("rogue-node")).await),
        Code::PermissionDenied
    );

    // 3. A server certificate of the same CA is not an agent's.
    let server = pki.issue(&CertKind::Server("impostor".into()), probes.path())?;
    let mut as_server = grpc_client(grpc, &pki.ca_file(), Some(&server)).await?;
    assert_eq!(
        code_of(as_server.heartbeat(heartbeat(&a)).await),
        Code::PermissionDenied
    );

    // 4. Another CA's certificate for node a, and an expired one of ours: the handshake
    //    fails, no call gets through.
    let other = TestPki::new()?;
    let foreign = other.issue(&CertKind::Agent(a.clone()), probes.path())?;
    let refused = match grpc_client(grpc, &pki.ca_file(), Some(&foreign)).await {
        Err(_) => true,
        Ok(mut c) => c.heartbeat(heartbeat(&a)).await.is_err(),
    };
    ensure!(refused, "a certificate of another CA got through");
    let now = OffsetDateTime::now_utc();
    let expired = pki.ca().issue_valid_between(
        &CertKind::Agent(a.clone()),
        now - TimeDuration::days(3),
        now - TimeDuration::days(1),
    )?;
    let expired_files = mofang_common::tls::KeyPairFiles {
        cert: probes.path().join("expired.pem"),
        key: probes.path().join("expired-key.pem"),
    };
    std::fs::write(&expired_files.cert, &expired.cert_pem)?;
    std::fs::write(&expired_files.key, &expired.key_pem)?;
    let refused = match grpc_client(grpc, &pki.ca_file(), Some(&expired_files)).await {
        Err(_) => true,
        Ok(mut c) => c.heartbeat(heartbeat(&a)).await.is_err(),
    };
    ensure!(refused, "an expired certificate got through");
    eventually(
        "the scheduler's log names why handshakes failed",
        Duration::from_secs(10),
        || async {
            let log = env.sched.log();
            if log.contains("has expired") && log.contains("not signed by the trusted CA") {
                Ok(())
            } else {
                bail!("no reasons in the log")
            }
        },
    )
    .await?;

    // The rogue node never appeared, the real ones are still ready.
    let client = env.client();
    let nodes = client.nodes().await?;
    let names: Vec<&str> = nodes.iter().map(|n| n.node.name.as_str()).collect();
    ensure!(!names.contains(&"rogue-node"), "{names:?}");
    env.wait_ready_nodes(2).await?;

    // Events and audit entries with the caller's address.
    let events = client.events(None, ALL).await?;
    let refused: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == "agent_refused")
        .collect();
    ensure!(
        refused
            .iter()
            .any(|e| e.node.as_deref() == Some(a.as_str())
                && e.message.contains(&format!("node {b}'s"))),
        "an agent_refused event for node b acting as a: {refused:?}"
    );
    let audit = client.audit(ALL).await?;
    let entry = audit
        .iter()
        .find(|e| {
            e.who == format!("node:{b}")
                && e.action == "gRPC Heartbeat"
                && e.target == format!("nodes/{a}")
        })
        .with_context(|| format!("an audit entry for b's heartbeat as a: {audit:?}"))?;
    ensure!(entry.result == "refused: other_node", "{entry:?}");
    ensure!(
        entry.source.starts_with("127.0.0.1:"),
        "the peer address is recorded: {entry:?}"
    );
    ensure!(
        audit
            .iter()
            .any(|e| e.who == "no certificate" && e.result == "refused: no_certificate"),
        "the anonymous probe is audited: {audit:?}"
    );
    Ok(())
}

/// A revoked node is refused on its very next call (the check is on every call), its real
/// agent loses the scheduler, the node goes down and its primary fails over as on a node
/// loss. The other node is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_refused_at_once_and_handled_as_lost() -> Result<()> {
    mofang_tests::init_tracing();
    let env = Env::start(2).await?;
    let pki = env.sched.pki.clone().context("TLS")?;
    let name = unique_name("cache");
    let inst = env.create(&name, "redis", 1).await?;
    let victim = primary_of(&inst)?.node.clone();
    let epoch = inst.epoch;
    let probes = tempfile::tempdir()?;
    let victim_cert = pki.issue(&CertKind::Agent(victim.clone()), probes.path())?;
    let mut probe = grpc_client(&env.sched.grpc, &pki.ca_file(), Some(&victim_cert)).await?;
    // (A watch, not a heartbeat: an empty heartbeat would say the node runs nothing.)
    probe
        .watch_assignments(watch(&victim))
        .await
        .context("before the revocation")?;

    let (ok, out, err) = cli(&env.sched, &env.token, true, &["node", "revoke", &victim])?;
    ensure!(ok, "mofang node revoke: {out}{err}");

    // The very next call with a certificate issued before the revocation is refused.
    let status = probe
        .heartbeat(heartbeat(&victim))
        .await
        .err()
        .context("a heartbeat right after the revocation was accepted")?;
    ensure!(status.code() == Code::PermissionDenied, "{status:?}");
    ensure!(status.message().contains("revoked"), "{status:?}");

    // The real agent is refused too, the node goes down, the primary fails over.
    let client = env.client();
    eventually("the revoked node down", Duration::from_secs(30), || async {
        let n = client.node(&victim).await?;
        if n.state == NodeState::Down {
            Ok(())
        } else {
            bail!("{n:?}")
        }
    })
    .await?;
    let after = env
        .new_primary(&name, epoch, Duration::from_secs(60))
        .await?;
    let new_primary = primary_of(&after)?;
    ensure!(new_primary.node != victim, "{after:?}");
    let i = env
        .agents
        .iter()
        .position(|a| a.node == victim)
        .context("victim agent")?;
    ensure!(
        env.agents[i].log().contains("revoked"),
        "the agent's log says why"
    );
    let audit = client.audit(ALL).await?;
    ensure!(
        audit
            .iter()
            .any(|e| e.who == format!("node:{victim}") && e.result == "refused: revoked"),
        "{audit:?}"
    );
    // The survivor keeps working.
    let other = env
        .agents
        .iter()
        .find(|a| a.node != victim)
        .context("other agent")?;
    let n = client.node(&other.node).await?;
    ensure!(n.state == NodeState::Ready, "{n:?}");
    Ok(())
}

/// A join token admits one new agent: it makes its key, gets its certificate (both 0600)
/// and becomes ready; a second agent with the same token is refused and never appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_works_once() -> Result<()> {
    mofang_tests::init_tracing();
    let env = Env::start(1).await?;
    let pki = env.sched.pki.clone().context("TLS")?;
    let (ok, token, err) = cli(
        &env.sched,
        &env.token,
        true,
        &["node", "join-token", "create", "--ttl", "10m"],
    )?;
    ensure!(ok, "join-token create: {err}");
    let token = token.trim().to_owned();
    ensure!(token.len() >= 32, "{token:?}");
    let tls = format!(
        "[tls]\nca_file = \"{}\"\njoin_token = \"{token}\"\n",
        pki.ca_file().display()
    );
    let first = AgentProcess::start_secure(
        &unique_name("joined"),
        std::slice::from_ref(&env.sched.grpc),
        None,
        &env.net.name,
        1024,
        &tls,
        &Timings::FAST,
    )?;
    env.wait_ready_nodes(2).await?;
    for f in ["tls/agent.pem", "tls/agent-key.pem"] {
        let mode = std::fs::metadata(first.state_dir().join(f))?
            .permissions()
            .mode()
            & 0o777;
        ensure!(mode == 0o600, "{f}: {mode:o}");
    }
    let second = AgentProcess::start_secure(
        &unique_name("joined"),
        std::slice::from_ref(&env.sched.grpc),
        None,
        &env.net.name,
        1024,
        &tls,
        &Timings::FAST,
    )?;
    eventually(
        "the second join refused",
        Duration::from_secs(30),
        || async {
            if second.log().contains("already used") {
                Ok(())
            } else {
                bail!("{}", second.log())
            }
        },
    )
    .await?;
    ensure!(
        !second.state_dir().join("tls/agent.pem").exists(),
        "no certificate for the second agent"
    );
    let client = env.client();
    let nodes = serde_json::to_string(&client.nodes().await?)?;
    ensure!(
        !nodes.contains(&second.node),
        "the refused node never appears: {nodes}"
    );
    let events = client.events(None, ALL).await?;
    ensure!(
        events
            .iter()
            .any(|e| e.kind == "node_joined" && e.node.as_deref() == Some(first.node.as_str())),
        "{events:?}"
    );
    Ok(())
}

/// The CLI over TLS: works with the CA, fails clearly without it, and a plain-HTTP client is
/// told to use HTTPS. `mofang tls` makes a CA and certificates with private keys 0600.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_trusts_the_ca_it_is_given_and_nothing_else() -> Result<()> {
    mofang_tests::init_tracing();
    let sched = SchedulerProcess::start("")?;
    let token = sched.admin_token()?;
    ensure!(sched.rest.starts_with("https://"), "TLS is on by default");

    let (ok, out, err) = cli(&sched, &token, true, &["node", "list"])?;
    ensure!(ok, "with --ca-cert: {out}{err}");
    let (ok, _, err) = cli(&sched, &token, false, &["node", "list"])?;
    ensure!(!ok, "without the CA the scheduler is not trusted");
    ensure!(
        err.contains("not signed by the trusted CA") && err.contains("MOFANG_CACERT"),
        "{err}"
    );

    // Plain HTTP to the TLS port: a clear answer, from the CLI and from any client.
    let plain = sched.rest.replacen("https://", "http://", 1);
    let out = Command::new(binaries()?.join("mofang"))
        .args(["node", "list"])
        .env("MOFANG_ADDR", &plain)
        .env("MOFANG_TOKEN", &token)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("tls_required"),
        "{err}"
    );
    let resp = reqwest::get(format!("{plain}/v1/health")).await?;
    ensure!(resp.status() == 400, "{}", resp.status());
    let v: Value = resp.json().await?;
    ensure!(v["error"]["code"] == "tls_required", "{v}");

    // The PKI commands.
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_string_lossy().into_owned();
    let run = |args: &[&str]| -> Result<(bool, String)> {
        let out = Command::new(binaries()?.join("mofang"))
            .args(args)
            .output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let (ok, err) = run(&["tls", "ca", "create", "--dir", &d])?;
    ensure!(ok, "{err}");
    let (ok, err) = run(&["tls", "ca", "create", "--dir", &d])?;
    ensure!(
        !ok && err.contains("exists"),
        "a CA is never replaced: {err}"
    );
    let (ok, err) = run(&[
        "tls",
        "cert",
        "create",
        "--server",
        "sched-1",
        "--dir",
        &d,
        "--san",
        "10.1.2.3",
        "db.example.org",
    ])?;
    ensure!(ok, "{err}");
    let (ok, err) = run(&["tls", "cert", "create", "--agent", "node-7", "--dir", &d])?;
    ensure!(ok, "{err}");
    let (ok, err) = run(&["tls", "cert", "create", "--cli", "ops", "--dir", &d])?;
    ensure!(ok, "{err}");
    for key in [
        "ca-key.pem",
        "server-sched-1-key.pem",
        "agent-node-7-key.pem",
        "cli-ops-key.pem",
    ] {
        let mode = std::fs::metadata(dir.path().join(key))?
            .permissions()
            .mode()
            & 0o777;
        ensure!(mode == 0o600, "{key}: {mode:o}");
    }
    let ca = std::fs::read_to_string(dir.path().join("ca.pem"))?;
    let server = std::fs::read_to_string(dir.path().join("server-sched-1.pem"))?;
    for name in ["sched-1", "server.mofang", "10.1.2.3", "db.example.org"] {
        mofang_common::tls::verify_server_cert(&ca, &server, name)
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    }
    let agent = std::fs::read(dir.path().join("agent-node-7.pem"))?;
    let der = mofang_common::tls::certs_from_pem(&agent).map_err(anyhow::Error::msg)?;
    ensure!(mofang_common::tls::node_identity(&der[0])?.node == "node-7");
    let (ok, err) = run(&[
        "tls",
        "cert",
        "create",
        "--agent",
        "x",
        "--dir",
        &d,
        "--ca-key",
        "/nonexistent/key.pem",
    ])?;
    ensure!(!ok && err.contains("--ca-key"), "{err}");
    Ok(())
}

/// A daemon whose own TLS files are missing exits 64 naming the config field, before it
/// starts anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_tls_file_exits_64_naming_its_field() -> Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let good = pki.scheduler_toml();
    let cases = [
        (
            good.replace("server-mofang-test-key.pem", "gone-key.pem"),
            "tls.key_file",
        ),
        (
            good.replace("server-mofang-test.pem", "gone.pem"),
            "tls.cert_file",
        ),
        (good.replace("/ca.pem", "/gone-ca.pem"), "tls.ca_file"),
    ];
    for (tls, field) in cases {
        let cfg = dir.path().join("s.toml");
        std::fs::write(
            &cfg,
            format!(
                "rest_listen = \"127.0.0.1:0\"\ngrpc_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n{tls}",
                dir.path().join("data").display()
            ),
        )?;
        let out = Command::new(binaries()?.join("mofang-scheduler"))
            .arg("--config")
            .arg(&cfg)
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(64),
            "{field}: {:?} {err}",
            out.status
        );
        ensure!(err.contains(field), "{field}: {err}");
    }

    // The agent: no certificate and no join token; a certificate without its key.
    let agent_cfg = |tls: &str| -> Result<std::path::PathBuf> {
        let p = dir.path().join("agent.toml");
        std::fs::write(
            &p,
            format!(
                "node = \"n1\"\nschedulers = [\"https://127.0.0.1:9\"]\nstate_dir = \"{}\"\n\
                 [[disks]]\npath = \"{}\"\n{tls}",
                dir.path().join("state").display(),
                dir.path().join("disk").display()
            ),
        )?;
        Ok(p)
    };
    let ca_line = format!("[tls]\nca_file = \"{}\"\n", pki.ca_file().display());
    let agent = |cfg: &Path| -> Result<(Option<i32>, String)> {
        let out = Command::new(binaries()?.join("mofang-agent"))
            .arg("--config")
            .arg(cfg)
            .output()?;
        Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let (code, err) = agent(&agent_cfg(&ca_line)?)?;
    ensure!(
        code == Some(64) && err.contains("tls.cert_file"),
        "{code:?} {err}"
    );
    let own = pki.issue(&CertKind::Agent("n1".into()), dir.path())?;
    std::fs::remove_file(&own.key)?;
    let (code, err) = agent(&agent_cfg(&format!(
        "{ca_line}cert_file = \"{}\"\nkey_file = \"{}\"\n",
        own.cert.display(),
        own.key.display()
    ))?)?;
    ensure!(
        code == Some(64) && err.contains("tls.key_file"),
        "{code:?} {err}"
    );
    Ok(())
}

/// A renewed agent certificate is picked up without a restart: the agent sees the files
/// change, reconnects with them, and its database container keeps running untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_renews_its_certificate_without_restarting_its_databases() -> Result<()> {
    mofang_tests::init_tracing();
    let env = Env::start(1).await?;
    let pki = env.sched.pki.clone().context("TLS")?;
    let name = unique_name("renew");
    env.create(&name, "redis", 0).await?;
    let agent = &env.agents[0];
    let started = |agent: &AgentProcess| -> Result<String> {
        let out = Command::new("docker")
            .args([
                "ps",
                "-q",
                "--filter",
                &format!("label=mofang.node={}", agent.node),
            ])
            .output()?;
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        ensure!(!id.is_empty(), "no container on {}", agent.node);
        let out = Command::new("docker")
            .args(["inspect", "-f", "{{.Id}} {{.State.StartedAt}}", &id])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let before = started(agent)?;
    // A new certificate over the old files (written aside and renamed, as an operator would).
    pki.issue(&CertKind::Agent(agent.node.clone()), agent.dir.path())?;
    eventually(
        "the agent reconnects with its new certificate",
        Duration::from_secs(20),
        || async {
            if agent
                .log()
                .contains("certificate files changed: reconnecting")
            {
                Ok(())
            } else {
                bail!("not yet")
            }
        },
    )
    .await?;
    env.wait_ready_nodes(1).await?;
    env.ready(&name).await?;
    ensure!(
        started(agent)? == before,
        "the database container was not restarted"
    );
    Ok(())
}

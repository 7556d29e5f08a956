//! The agent on real Docker with the real images, driven by an in-process scheduler stand-in:
//! replication (MariaDB GTID + semi-sync, Redis), self-healing after `kill -9` of the
//! database, adoption after `kill -9` of the agent, fencing, and refusal of bad input; and
//! the runtime's report of an OOM kill, as on containerd.

use anyhow::{bail, Context, Result};
use mofang_agent::engine::Secrets;
use mofang_agent::runtime::{ContainerRuntime, ContainerState};
use mofang_tests::agent_scenarios::{
    assignment, healthy, redis_conn, wait_member, Member, RedisPair, MIB,
};
use mofang_tests::cluster::{AgentProcess, TestNetwork};
use mofang_tests::fake_scheduler::FakeScheduler;
use mofang_tests::{docker, eventually, unique_name};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_primary_and_replica_replicate_heal_and_fence() -> Result<()> {
    let rt = docker().await;
    mofang_tests::agent_scenarios::mariadb_replicate_heal_and_fence(&rt, "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_primary_and_replica_replicate_and_fence() -> Result<()> {
    let _rt = docker().await;
    mofang_tests::agent_scenarios::redis_replicate_and_fence("").await
}

/// OOM-kill detection on Docker, the twin of the containerd test of the same name
/// (decision 160): Docker's `State.OOMKilled` until the next start; a `kill -9` is not.
#[tokio::test(flavor = "multi_thread")]
async fn an_oom_killed_task_is_reported_until_started_again_and_a_kill_9_is_not() -> Result<()> {
    let rt = docker().await;
    let restarted = async {
        let rt = mofang_agent::runtime::DockerRuntime::connect().await?;
        Ok(Box::new(rt) as Box<dyn ContainerRuntime>)
    };
    mofang_tests::runtime_scenarios::oom_kill_is_reported_until_the_next_start(&rt, restarted).await
}

/// Files under `dir` (links not followed, as `grep -r` does) that hold any of the passwords.
fn files_holding(dir: &std::path::Path, s: &Secrets) -> Result<Vec<String>> {
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
                for (account, pw) in [
                    ("admin", &s.admin),
                    ("repl", &s.repl),
                    ("monitor", &s.monitor),
                    ("app", &s.app),
                ] {
                    if bytes.windows(pw.len()).any(|w| w == pw.as_bytes()) {
                        found.push(format!("{account} in {}", e.path().display()));
                    }
                }
            }
        }
    }
    Ok(found)
}

/// Issue 15 point 5: once members run, the agent's state directory holds no password (the
/// desired state, secrets and config copies are sealed with the node's key; the files the
/// servers read are in the run directory). An agent restarted without its scheduler, after a
/// "reboot" emptied the run directory and with its replica dead, still manages its members
/// from the sealed state: the replica is started again and replicates with the repl password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_directory_holds_no_password_and_a_restart_still_manages_members() -> Result<()> {
    let _rt = docker().await;
    let fake = FakeScheduler::start().await?;
    let net = TestNetwork::create(&unique_name("net"))?;
    let mut agent =
        AgentProcess::start(&unique_name("node"), &fake.endpoint(), &net.name, 4096, "")?;
    let s = Secrets::generate();
    let inst = unique_name("vault");
    let (m0, m1) = (format!("{inst}-0"), format!("{inst}-1"));
    let p = assignment(
        Member {
            instance: &inst,
            member: &m0,
            engine: "redis",
            role: "primary",
            primary: "",
        },
        &s,
    );
    fake.set_desired(&agent.node, vec![p.clone()]);
    let primary = wait_member(
        &fake,
        &agent,
        &m0,
        "primary healthy",
        Duration::from_secs(60),
        healthy,
    )
    .await?;
    let r = assignment(
        Member {
            instance: &inst,
            member: &m1,
            engine: "redis",
            role: "replica",
            primary: &primary.address,
        },
        &s,
    );
    fake.set_desired(&agent.node, vec![p, r]);
    let replica = wait_member(
        &fake,
        &agent,
        &m1,
        "replica healthy",
        Duration::from_secs(60),
        |m| m.healthy && m.replication_ok,
    )
    .await?;
    let mut pc = redis_conn(&primary.address, "app", &s.app).await?;
    let _: () = redis::cmd("SET")
        .arg("greeting")
        .arg("sealed")
        .query_async(&mut pc)
        .await?;

    let in_state = files_holding(&agent.state_dir(), &s)?;
    assert!(
        in_state.is_empty(),
        "passwords in the state directory: {in_state:?}"
    );
    // The servers' own config files do hold them (the search finds what is there).
    let in_run = files_holding(&agent.run_dir(), &s)?;
    assert!(
        in_run
            .iter()
            .any(|f| f.starts_with("repl in") && f.ends_with("redis.conf")),
        "{in_run:?}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(agent.key_file())?.permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "key file mode");

    // The scheduler goes away, the agent dies, the host "reboots" (run directory emptied)
    // and the replica's container dies with it.
    let started_at = || -> Result<String> {
        let out = std::process::Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{.State.StartedAt}}",
                &format!("mofang-{m1}"),
            ])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let first_start = started_at()?;
    fake.stop().await;
    agent.kill9()?;
    std::fs::remove_dir_all(agent.run_dir())?;
    let out = std::process::Command::new("docker")
        .args(["kill", &format!("mofang-{m1}")])
        .output()?;
    assert!(out.status.success(), "docker kill: {out:?}");
    agent.restart()?;

    let link = eventually(
        "replica started again and replicating",
        Duration::from_secs(90),
        || {
            let (addr, pw) = (replica.address.clone(), s.admin.clone());
            async move {
                let mut c = redis_conn(&addr, "mofang_admin", &pw).await?;
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut c)
                    .await?;
                let v: Option<String> = redis::cmd("GET")
                    .arg("greeting")
                    .query_async(&mut c)
                    .await?;
                if info.contains("master_link_status:up") && v.as_deref() == Some("sealed") {
                    Ok(info)
                } else {
                    bail!("{info}")
                }
            }
        },
    )
    .await;
    if link.is_err() {
        eprintln!("---- agent log ----\n{}", agent.log());
    }
    link?;
    assert_ne!(
        started_at()?,
        first_start,
        "the agent started the replica again"
    );
    let log = agent.log();
    assert!(log.contains("loaded persisted desired state"), "{log}");
    assert!(log.contains("config files restored"), "{log}");
    let in_state = files_holding(&agent.state_dir(), &s)?;
    assert!(in_state.is_empty(), "after the restart: {in_state:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_adopts_containers_and_bad_assignments_stay_isolated() -> Result<()> {
    let rt = docker().await;
    let fake = FakeScheduler::start().await?;
    let net = TestNetwork::create(&unique_name("net"))?;
    // 2 GiB of disk: 512 MiB fits, 4 GiB does not.
    let mut agent =
        AgentProcess::start(&unique_name("node"), &fake.endpoint(), &net.name, 2048, "")?;
    let s = Secrets::generate();
    let good = assignment(
        Member {
            instance: "good",
            member: "good-0",
            engine: "redis",
            role: "primary",
            primary: "",
        },
        &s,
    );
    let mut bad_engine = assignment(
        Member {
            instance: "odd",
            member: "odd-0",
            engine: "oracle",
            role: "primary",
            primary: "",
        },
        &s,
    );
    bad_engine.version = "19".into();
    let mut too_big = assignment(
        Member {
            instance: "big",
            member: "big-0",
            engine: "redis",
            role: "primary",
            primary: "",
        },
        &s,
    );
    too_big.disk_bytes = 4096 * MIB;
    fake.set_desired(&agent.node, vec![good.clone(), bad_engine, too_big]);

    let g = wait_member(
        &fake,
        &agent,
        "good-0",
        "good member healthy",
        Duration::from_secs(60),
        healthy,
    )
    .await?;
    let odd = wait_member(
        &fake,
        &agent,
        "odd-0",
        "bad engine reported",
        Duration::from_secs(20),
        |m| m.failed,
    )
    .await?;
    assert!(
        odd.reason.contains("unsupported engine oracle 19"),
        "{}",
        odd.reason
    );
    let big = wait_member(
        &fake,
        &agent,
        "big-0",
        "over-reservation reported",
        Duration::from_secs(20),
        |m| m.failed,
    )
    .await?;
    assert!(
        big.reason.contains("4096 MiB asked"),
        "reason must give the figures: {}",
        big.reason
    );
    assert!(
        big.reason.contains("disk0"),
        "reason must name the disk: {}",
        big.reason
    );

    // A container of another node, even one naming the same member, is never touched.
    let foreign_name = unique_name("foreign");
    let (tk, tv) = mofang_tests::test_label();
    let out = std::process::Command::new("docker")
        .args([
            "run",
            "-d",
            "--name",
            &foreign_name,
            "--label",
            &format!("{tk}={tv}"),
        ])
        .args([
            "--label",
            "mofang.node=someone-else",
            "--label",
            "mofang.member=good-0",
        ])
        .args(["--network", &net.name, "mofang/redis:7.0"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let foreign = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let foreign_started = rt.inspect(&foreign).await?.started_at;

    let before = rt.inspect(&g.container_id).await?;
    agent.kill9()?;
    let beats_before = fake.heartbeats(&agent.node);
    agent.restart()?;
    // Reported healthy again by the new process (heartbeats after the restart).
    eventually(
        "healthy after agent restart",
        Duration::from_secs(30),
        || async {
            if fake.heartbeats(&agent.node) < beats_before + 3 {
                bail!("new agent not heartbeating yet");
            }
            let hb = fake.last_heartbeat(&agent.node).context("no heartbeat")?;
            let m = hb
                .members
                .iter()
                .find(|m| m.member == "good-0")
                .context("not reported")?;
            if m.healthy {
                Ok(())
            } else {
                bail!("{m:?}")
            }
        },
    )
    .await?;
    let after = rt.inspect(&g.container_id).await?;
    assert_eq!(after.id, before.id, "same container");
    assert_eq!(
        after.started_at, before.started_at,
        "the container was not restarted"
    );
    assert_eq!(
        rt.list(&[("mofang.node", agent.node.as_str())])
            .await?
            .len(),
        1,
        "only the good member runs"
    );
    assert_eq!(
        rt.inspect(&foreign).await?.started_at,
        foreign_started,
        "a foreign container is never touched"
    );

    // The scheduler goes away and the agent restarts: it keeps serving from the desired
    // state it persisted, and still brings a dead database back.
    fake.stop().await;
    agent.restart()?;
    let out = rt
        .exec(&g.container_id, &["pkill", "-9", "redis-server"], None)
        .await?;
    assert!([0, 137].contains(&out.exit_code), "pkill: {out:?}");
    eventually(
        "restarted without a scheduler",
        Duration::from_secs(30),
        || async {
            let c = rt.inspect(&g.container_id).await?;
            if c.state == ContainerState::Running && c.started_at != after.started_at {
                Ok(())
            } else {
                bail!("{:?} started {:?}", c.state, c.started_at)
            }
        },
    )
    .await?;
    assert_eq!(
        rt.inspect(&foreign).await?.started_at,
        foreign_started,
        "a foreign container is never touched"
    );
    rt.remove(&foreign, true).await?;
    Ok(())
}

#[test]
fn docker_unreachable_is_retried_not_fatal() -> Result<()> {
    let bin = mofang_tests::cluster::binaries()?.join("mofang-agent");
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "node = \"lonely\"\nstate_dir = \"{}\"\nschedulers = [\"http://127.0.0.1:1\"]\n[tls]\ndisable = true\n\
             [[disks]]\npath = \"{}\"\ncapacity_mib = 100\n",
            dir.path().join("state").display(),
            dir.path().join("disk").display()
        ),
    )?;
    let log = std::fs::File::create(dir.path().join("log"))?;
    let mut child = std::process::Command::new(&bin)
        .arg("--config")
        .arg(&cfg)
        .env(
            "DOCKER_HOST",
            format!("unix://{}/no-docker.sock", dir.path().display()),
        )
        .stderr(log.try_clone()?)
        .stdout(log)
        .spawn()?;
    std::thread::sleep(Duration::from_secs(3));
    let still_running = child.try_wait()?.is_none();
    child.kill()?;
    child.wait()?;
    let text = std::fs::read_to_string(dir.path().join("log"))?;
    assert!(
        still_running,
        "the agent must keep retrying, not exit: {text}"
    );
    assert!(
        text.matches("container runtime unreachable").count() >= 2,
        "retried with backoff: {text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    Ok(())
}

#[test]
fn bad_config_exits_64_naming_the_field() -> Result<()> {
    let bin = mofang_tests::cluster::binaries()?.join("mofang-agent");
    let dir = tempfile::tempdir()?;
    let cases = [
        (
            "node = \"node-a\"\nbogus = 1\n[[disks]]\npath = \"/d\"\n",
            "bogus",
        ),
        ("node = \"Node A\"\n[[disks]]\npath = \"/d\"\n", "node"),
        ("node = \"node-a\"\n", "disks"),
        (
            "node = \"node-a\"\nlease_ttl_ms = \"ten\"\n[[disks]]\npath = \"/d\"\n",
            "lease_ttl_ms",
        ),
    ];
    for (text, field) in cases {
        let p = dir.path().join("agent.toml");
        std::fs::write(&p, text)?;
        let out = std::process::Command::new(&bin)
            .arg("--config")
            .arg(&p)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "config {text:?}: {stderr}");
        assert!(
            stderr.contains(field),
            "message must name `{field}`: {stderr}"
        );
    }
    let out = std::process::Command::new(&bin)
        .arg("--config")
        .arg("/nonexistent/agent.toml")
        .output()?;
    assert_eq!(out.status.code(), Some(64));

    // Secrets at rest: a state directory sealed with a key that is gone, or with another
    // key, is refused naming `key_file`, before anything runs (docs/secrets.md).
    let state = dir.path().join("state");
    let key = dir.path().join("state.key");
    let sealed = mofang_agent::state::LocalState::open(&state, &key, &dir.path().join("run"))?;
    sealed.secrets("db", Some(Secrets::generate()))?;
    let p = dir.path().join("agent.toml");
    std::fs::write(
        &p,
        format!(
            "node = \"node-a\"\nstate_dir = \"{}\"\nrun_dir = \"{}\"\n\
             schedulers = [\"http://127.0.0.1:1\"]\n[tls]\ndisable = true\n[[disks]]\npath = \"{}\"\n",
            state.display(),
            dir.path().join("run").display(),
            dir.path().join("disk").display()
        ),
    )?;
    for case in ["missing", "another key"] {
        std::fs::remove_file(&key)?;
        if case == "another key" {
            mofang_common::sealed::Keyring::generate().save(&key)?;
        }
        let out = std::process::Command::new(&bin)
            .arg("--config")
            .arg(&p)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{case}: {stderr}");
        assert!(stderr.contains("key_file"), "{case}: {stderr}");
        if case == "missing" {
            assert!(!key.exists(), "no new key made for a sealed state");
            mofang_common::sealed::Keyring::generate().save(&key)?;
        }
    }
    Ok(())
}

/// On a Docker network a member's address outlives its database process (the runtime's
/// network-namespace holder): a client of a killed member is refused at once instead of
/// waiting out a connect timeout on a silent address, and the restarted member answers at
/// the same address. Before the holder the address went away with the process, and
/// connections to it went unanswered until the member was back (a semi-sync replica's
/// `STOP SLAVE` waited on it: issue 13, RTO); this test failed on that code.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_members_address_refuses_at_once_and_outlives_the_restart() -> Result<()> {
    let _rt = docker().await;
    let RedisPair {
        fake,
        net: _net,
        agent,
        inst,
        replica,
        ..
    } = RedisPair::start("").await?;
    let m1 = format!("{inst}-1");

    let out = std::process::Command::new("docker")
        .args(["kill", &format!("mofang-{m1}")])
        .output()?;
    assert!(out.status.success(), "docker kill: {out:?}");
    // Refused, not silent: the address is still up and nothing listens on it. `docker kill`
    // returns once the signal is sent, so connect until the first failure.
    let first_failure = eventually("a failed connect", Duration::from_secs(10), || async {
        match tokio::time::timeout(
            Duration::from_secs(3),
            tokio::net::TcpStream::connect(&replica.address),
        )
        .await
        {
            Ok(Ok(_)) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                bail!("still answering")
            }
            Ok(Err(e)) => Ok(Some(e)),
            Err(_) => Ok(None),
        }
    })
    .await?;
    match first_failure {
        Some(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "a killed member's address must refuse: {e}"
        ),
        None => bail!("a killed member's address went silent (no answer within 3 s)"),
    }
    // The agent starts it again, in the same namespace: same address, replicating again.
    let back = wait_member(
        &fake,
        &agent,
        &m1,
        "replica restarted and replicating",
        Duration::from_secs(60),
        |m| m.healthy && m.replication_ok && m.restarts > 0,
    )
    .await?;
    assert_eq!(
        back.address, replica.address,
        "the restarted member keeps its address"
    );
    let holders = std::process::Command::new("docker")
        .args(["ps", "-q", "--filter", &format!("name=^mofang-{m1}-net$")])
        .output()?;
    assert!(!holders.stdout.is_empty(), "the member's holder runs");

    // Removing the member removes its holder too.
    fake.set_desired(&agent.node, vec![]);
    eventually(
        "members and holders gone",
        Duration::from_secs(60),
        || async {
            let out = std::process::Command::new("docker")
                .args(["ps", "-aq", "--filter", &format!("name=^mofang-{inst}")])
                .output()?;
            if out.stdout.is_empty() {
                Ok(())
            } else {
                bail!("still there: {}", String::from_utf8_lossy(&out.stdout))
            }
        },
    )
    .await
}

/// The state directory's key rotated (issue 15, open point 5): refused while the agent runs;
/// with the agent stopped, `mofang-agent --rotate-key` seals every file again with a new key
/// and removes the old one; the agent started again manages its member as before and its
/// state directory holds no password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_key_is_rotated_with_the_agent_stopped_and_the_member_is_still_managed(
) -> Result<()> {
    let _rt = docker().await;
    let fake = FakeScheduler::start().await?;
    let net = TestNetwork::create(&unique_name("net"))?;
    let mut agent =
        AgentProcess::start(&unique_name("node"), &fake.endpoint(), &net.name, 4096, "")?;
    let s = Secrets::generate();
    let inst = unique_name("rekey");
    let m0 = format!("{inst}-0");
    let p = assignment(
        Member {
            instance: &inst,
            member: &m0,
            engine: "redis",
            role: "primary",
            primary: "",
        },
        &s,
    );
    fake.set_desired(&agent.node, vec![p]);
    let primary = wait_member(
        &fake,
        &agent,
        &m0,
        "primary healthy",
        Duration::from_secs(60),
        healthy,
    )
    .await?;
    let mut pc = redis_conn(&primary.address, "app", &s.app).await?;
    let _: () = redis::cmd("SET")
        .arg("greeting")
        .arg("rekeyed")
        .query_async(&mut pc)
        .await?;
    let config = agent
        .key_file()
        .parent()
        .context("agent dir")?
        .join("agent.toml");
    let bin = mofang_tests::cluster::binaries()?.join("mofang-agent");
    let rotate = || {
        std::process::Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .arg("--rotate-key")
            .output()
    };
    let before = mofang_common::sealed::Keyring::load(&agent.key_file())?.ids();

    // While the agent runs: refused, nothing changed.
    let out = rotate()?;
    anyhow::ensure!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("is the agent running?"),
        "rotation while running: {out:?}"
    );
    anyhow::ensure!(mofang_common::sealed::Keyring::load(&agent.key_file())?.ids() == before);

    agent.kill9()?;
    let out = rotate()?;
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(out.status.success(), "rotate: {out:?}");
    let after = mofang_common::sealed::Keyring::load(&agent.key_file())?.ids();
    anyhow::ensure!(
        after.len() == 1 && !before.contains(&after[0]),
        "key ids before {before:?}, after {after:?}: {said}"
    );
    anyhow::ensure!(said.contains("retired keys"), "{said}");

    agent.restart()?;
    // It opened its sealed desired state with the new key (an agent that cannot exits 64).
    eventually(
        "the restarted agent loaded its sealed state",
        Duration::from_secs(30),
        || async {
            let log = agent.log();
            anyhow::ensure!(
                log.matches("loaded persisted desired state").count() >= 1,
                "not yet"
            );
            Ok(())
        },
    )
    .await?;
    wait_member(
        &fake,
        &agent,
        &m0,
        "primary healthy after the rotation",
        Duration::from_secs(60),
        healthy,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    anyhow::ensure!(
        !agent.log().contains("cannot open its state"),
        "{}",
        agent.log()
    );
    let mut pc = redis_conn(&primary.address, "app", &s.app).await?;
    let v: Option<String> = redis::cmd("GET")
        .arg("greeting")
        .query_async(&mut pc)
        .await?;
    anyhow::ensure!(v.as_deref() == Some("rekeyed"), "{v:?}");
    let in_state = files_holding(&agent.state_dir(), &s)?;
    anyhow::ensure!(in_state.is_empty(), "after the rotation: {in_state:?}");
    Ok(())
}

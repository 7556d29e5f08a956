//! Runtime-level scenarios shared by the runtimes' test binaries: the same calls on Docker
//! (`tests/agent.rs`) and on containerd (`tests/containerd.rs`), so both runtimes are proven
//! to answer alike.

use crate::{eventually, test_label, unique_name};
use anyhow::{ensure, Context, Result};
use mofang_agent::runtime::{
    ContainerInfo, ContainerRuntime, ContainerSpec, ContainerState, Mount, Network,
};
use mofang_common::labels;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A Redis on the member image that listens on a Unix socket only (no port to clash with
/// other tests on the host network), keeps nothing on disk and has no `maxmemory`: a write
/// can push the server past the container's memory limit.
const REDIS_CONF: &str = "port 0\nunixsocket /tmp/redis.sock\nunixsocketperm 700\n\
    dir /tmp\nsave \"\"\nappendonly no\n";

/// Its memory limit: far below the string the test writes.
const LIMIT: i64 = 64 << 20;

fn redis_cli(args: &[&'static str]) -> Vec<&'static str> {
    let mut cmd = vec!["redis-cli", "-s", "/tmp/redis.sock"];
    cmd.extend_from_slice(args);
    cmd
}

async fn pong(rt: &dyn ContainerRuntime, id: &str) -> Result<()> {
    let o = rt.exec(id, &redis_cli(&["PING"]), None).await?;
    ensure!(o.exit_code == 0 && o.stdout.trim() == "PONG", "{o:?}");
    Ok(())
}

async fn exited(rt: &dyn ContainerRuntime, id: &str, what: &str) -> Result<ContainerInfo> {
    eventually(what, Duration::from_secs(60), || async {
        let c = rt.inspect(id).await?;
        ensure!(c.state == ContainerState::Exited, "{:?}", c.state);
        Ok(c)
    })
    .await
}

/// OOM-kill detection in `inspect` (decision 160): a member's server pushed past its memory
/// limit by the kernel's OOM killer exits 137 and is reported `oom_killed`, also by a runtime
/// connected afresh (an agent restart); started again it is not, while it runs; a `kill -9`
/// by hand also exits 137 and is not reported `oom_killed`. `restarted` is a second runtime
/// on the same daemon, connected after the first.
pub async fn oom_kill_is_reported_until_the_next_start(
    rt: &dyn ContainerRuntime,
    restarted: impl std::future::Future<Output = Result<Box<dyn ContainerRuntime>>>,
) -> Result<()> {
    let work = tempfile::tempdir()?;
    let conf = work.path().join("conf");
    std::fs::create_dir_all(&conf)?;
    std::fs::write(conf.join("redis.conf"), REDIS_CONF)?;
    let name = unique_name("oom");
    let (tk, tv) = test_label();
    let spec = ContainerSpec {
        name: name.clone(),
        image: "mofang/redis:7.0".into(),
        args: vec![],
        env: vec![],
        labels: BTreeMap::from([(labels::NODE.to_owned(), name.clone()), (tk, tv)]),
        mounts: vec![Mount {
            source: conf,
            target: "/etc/mofang".into(),
            read_only: true,
        }],
        network: Network::Host,
        publish: None,
        cpus: 1.0,
        memory_bytes: LIMIT,
        pids_limit: 256,
        cap_add: vec![],
        user: "999:999".into(),
        stop_grace: Duration::from_secs(5),
    };
    let id = rt.create(&spec).await?;
    let result = scenario(rt, &id, restarted).await;
    let removed = rt.remove(&id, true).await;
    result?;
    removed.with_context(|| format!("removing {id}"))
}

async fn scenario(
    rt: &dyn ContainerRuntime,
    id: &str,
    restarted: impl std::future::Future<Output = Result<Box<dyn ContainerRuntime>>>,
) -> Result<()> {
    rt.start(id).await?;
    eventually("redis answers", Duration::from_secs(30), || pong(rt, id)).await?;
    let running = rt.inspect(id).await?;
    ensure!(running.memory_bytes == LIMIT, "{running:?}");
    ensure!(
        !running.oom_killed,
        "running, never OOM-killed: {running:?}"
    );

    // A 200 MB string into 64 MiB: the kernel kills the server, the biggest process of the
    // container; tini, its parent, exits 128 + 9. (Many small keys, `DEBUG POPULATE`, make
    // the kernel reclaim the server's own code pages for a minute before it gives up.)
    let t = Instant::now();
    let cmd = redis_cli(&["SETRANGE", "big", "200000000", "x"]);
    let write = rt.exec(id, &cmd, None);
    // The exec dies with its container; what it answers does not matter.
    let _ = tokio::time::timeout(Duration::from_secs(60), write).await;
    let dead = exited(rt, id, "the server is OOM-killed").await?;
    println!(
        "figure: OOM-killed, exited {:?} after the write: exit {:?}",
        t.elapsed(),
        dead.exit_code
    );
    ensure!(dead.exit_code == Some(137), "{dead:?}");
    ensure!(dead.oom_killed, "the OOM kill must be reported: {dead:?}");
    // An agent restarted meanwhile sees the same: nothing was kept in the old one's memory.
    let fresh = restarted.await?;
    let again = fresh.inspect(id).await?;
    ensure!(again.oom_killed, "after a reconnect: {again:?}");

    // Started again: the flag describes the last exit, and this run has not exited.
    rt.start(id).await?;
    eventually("redis answers again", Duration::from_secs(30), || {
        pong(rt, id)
    })
    .await?;
    let up = rt.inspect(id).await?;
    ensure!(up.state == ContainerState::Running, "{up:?}");
    ensure!(!up.oom_killed, "cleared by the start: {up:?}");

    // kill -9 by hand: the same exit code, and no OOM kill.
    rt.kill(id, "SIGKILL").await?;
    let killed = exited(rt, id, "the container dies of kill -9").await?;
    ensure!(killed.exit_code == Some(137), "{killed:?}");
    ensure!(!killed.oom_killed, "a kill -9 is no OOM kill: {killed:?}");
    Ok(())
}

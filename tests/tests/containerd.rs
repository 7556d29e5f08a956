//! The containerd runtime against a standalone containerd (Debian's binary, started by the
//! test setup with its own root and socket) and the real Redis image imported from Docker:
//! create, start, exec, limits in the task's cgroup, uid 999 without privileges, the member's
//! own address on the CNI bridge, list by label, the event stream, kill, stop with grace,
//! update of limits, remove; an OOM kill told from a `kill -9`; a missing image, a missing
//! socket and Docker's namespace refused.

use anyhow::{bail, ensure, Context, Result};
use futures::StreamExt;
use mofang_agent::runtime::{
    ContainerRuntime, ContainerSpec, ContainerState, ContainerdRuntime, Error, Mount, Network,
};
use mofang_common::labels;
use mofang_tests::containerd::containerd;
use mofang_tests::scenario::cgroup_dir;
use mofang_tests::{eventually, unique_name};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: i64 = 1 << 20;
const NET: &str = "t-ctrd-net";

fn read_num(p: &Path) -> Result<i64> {
    let s = std::fs::read_to_string(p).with_context(|| p.display().to_string())?;
    s.trim()
        .parse()
        .with_context(|| format!("{}: {s}", p.display()))
}

fn status_field(pid: u32, field: &str) -> Result<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// A real Redis round trip over TCP from the host.
fn redis_ping(ip: &str) -> Result<()> {
    let mut s = std::net::TcpStream::connect_timeout(
        &format!("{ip}:6379").parse()?,
        Duration::from_secs(2),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"PING\r\n")?;
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf)?;
    ensure!(
        &buf == b"+PONG\r\n",
        "answer {:?}",
        String::from_utf8_lossy(&buf)
    );
    Ok(())
}

fn redis_spec(name: &str, node: &str, data: &Path, conf: &Path) -> ContainerSpec {
    ContainerSpec {
        name: name.into(),
        image: "mofang/redis:7.0".into(),
        args: vec![],
        env: vec![],
        labels: BTreeMap::from([
            (labels::NODE.to_owned(), node.to_owned()),
            (labels::MEMBER.to_owned(), name.to_owned()),
            (labels::TEST.to_owned(), std::process::id().to_string()),
        ]),
        mounts: vec![
            Mount {
                source: data.to_owned(),
                target: "/var/lib/redis".into(),
                read_only: false,
            },
            Mount {
                source: conf.to_owned(),
                target: "/etc/mofang".into(),
                read_only: true,
            },
        ],
        network: Network::Named(NET.into()),
        publish: None,
        cpus: 0.5,
        memory_bytes: 128 * MIB,
        pids_limit: 256,
        cap_add: vec![],
        user: "999:999".into(),
        stop_grace: Duration::from_secs(10),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_runs_on_a_standalone_containerd_with_the_dockers_limits_and_hardening(
) -> Result<()> {
    mofang_tests::init_tracing();
    let ctrd = containerd()?;
    let t = Instant::now();
    ctrd.import_images(&["mofang/redis:7.0"])?;
    println!(
        "figure: image import into containerd took {:?}",
        t.elapsed()
    );
    let work = tempfile::tempdir()?;
    let rt = ContainerdRuntime::connect(ctrd.options(&work.path().join("rt"), NET)).await?;

    let node = unique_name("ctrd");
    let name = format!("mofang-{node}-r1");
    let (data, conf) = (work.path().join("data"), work.path().join("conf"));
    std::fs::create_dir_all(&data)?;
    std::fs::create_dir_all(&conf)?;
    std::os::unix::fs::chown(&data, Some(999), Some(999))?;
    std::fs::write(
        conf.join("redis.conf"),
        "bind 0.0.0.0\nport 6379\nprotected-mode no\ndir /var/lib/redis\n",
    )?;
    let spec = redis_spec(&name, &node, &data, &conf);
    let mut events = rt.events((labels::NODE, &node));

    let id = rt.create(&spec).await?;
    let created = rt.inspect(&id).await?;
    assert_eq!(created.state, ContainerState::Created);
    assert_eq!(created.image, "mofang/redis:7.0");
    assert_eq!(created.labels.get(labels::NODE), Some(&node));
    rt.start(&id).await?;

    let out = eventually(
        "redis answers in the container",
        Duration::from_secs(30),
        || async {
            let o = rt.exec(&id, &["redis-cli", "PING"], None).await?;
            ensure!(o.exit_code == 0 && o.stdout.trim() == "PONG", "{o:?}");
            Ok(o)
        },
    )
    .await?;
    assert_eq!(out.stdout.trim(), "PONG");

    // exec: exit code, stdout and stderr apart, the container's user.
    let o = rt
        .exec(&id, &["sh", "-c", "echo out; echo err >&2; exit 3"], None)
        .await?;
    assert_eq!(
        (o.exit_code, o.stdout.as_str(), o.stderr.as_str()),
        (3, "out\n", "err\n")
    );
    let o = rt.exec(&id, &["id", "-u"], None).await?;
    assert_eq!(o.stdout.trim(), "999");
    let o = rt.exec(&id, &["touch", "/etc/mofang/x"], None).await?;
    assert_ne!(o.exit_code, 0, "the config mount must be read-only");
    let o = rt.exec(&id, &["touch", "/var/lib/redis/x"], None).await?;
    assert_eq!(o.exit_code, 0, "the data volume must be writable: {o:?}");
    assert!(data.join("x").exists());

    // The task: running as 999, no capabilities, no new privileges, the limits in its cgroup.
    let info = rt.inspect(&id).await?;
    assert_eq!(info.state, ContainerState::Running);
    let pid = info.pid.context("a running task has a pid")?;
    let server = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
    let server: u32 = server
        .split_whitespace()
        .next()
        .context("tini has a child")?
        .parse()?;
    for p in [pid, server] {
        assert!(status_field(p, "Uid")?.starts_with("999\t"), "uid of {p}");
        assert_eq!(status_field(p, "CapEff")?, "0000000000000000");
        assert_eq!(status_field(p, "CapBnd")?, "0000000000000000");
        assert_eq!(status_field(p, "NoNewPrivs")?, "1");
    }
    assert_eq!((info.cpus, info.memory_bytes), (0.5, 128 * MIB));
    let mem = cgroup_dir(pid, "memory")?;
    assert_eq!(read_num(&mem.join("memory.limit_in_bytes"))?, 128 * MIB);
    if mem.join("memory.memsw.limit_in_bytes").exists() {
        assert_eq!(
            read_num(&mem.join("memory.memsw.limit_in_bytes"))?,
            128 * MIB
        );
    }
    let cpu = cgroup_dir(pid, "cpu")?;
    assert_eq!(read_num(&cpu.join("cpu.cfs_quota_us"))?, 50_000);
    assert_eq!(read_num(&cpu.join("cpu.cfs_period_us"))?, 100_000);
    assert_eq!(read_num(&cgroup_dir(pid, "pids")?.join("pids.max"))?, 256);
    assert!(info.started_at.is_some());

    // Its own address on the CNI bridge, reachable from the host.
    let ip = info
        .ips
        .get(NET)
        .context("an address on the CNI network")?
        .clone();
    assert!(
        ip.starts_with(ctrd.subnet.trim_end_matches("0/24")),
        "{ip} in {}",
        ctrd.subnet
    );
    eventually(
        "redis answers at its address",
        Duration::from_secs(10),
        || async { redis_ping(&ip) },
    )
    .await?;

    // List by label: this node's container, nobody else's.
    let listed = rt.list(&[(labels::NODE, &node)]).await?;
    assert_eq!(
        listed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        [id.as_str()]
    );
    assert!(rt.list(&[(labels::NODE, "someone-else")]).await?.is_empty());
    assert!(!rt.list(&[(labels::NODE, "")]).await?.is_empty());

    // Limits changed while it runs: the cgroup takes them at once.
    rt.update_limits(&id, 1.0, 256 * MIB).await?;
    assert_eq!(read_num(&mem.join("memory.limit_in_bytes"))?, 256 * MIB);
    assert_eq!(read_num(&cpu.join("cpu.cfs_quota_us"))?, 100_000);
    let info = rt.inspect(&id).await?;
    assert_eq!((info.cpus, info.memory_bytes), (1.0, 256 * MIB));

    // kill -9: the death is on the event stream.
    let killed = Instant::now();
    rt.kill(&id, "SIGKILL").await?;
    let die = loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), events.next())
            .await
            .context("no die event within 30 s")?
            .context("the event stream ended")??;
        if ev.action == "die" {
            break ev;
        }
    };
    println!("figure: die event {:?} after kill -9", killed.elapsed());
    assert_eq!(die.id, id);
    assert_eq!(die.labels.get(labels::NODE), Some(&node));
    let dead = rt.inspect(&id).await?;
    assert_eq!(dead.state, ContainerState::Exited);
    assert_eq!(dead.exit_code, Some(137));
    assert_eq!(dead.pid, None);
    assert!(rt.exec(&id, &["true"], None).await.is_err());

    // Started again: same address, limits kept from the update.
    rt.start(&id).await?;
    eventually(
        "redis answers again at the same address",
        Duration::from_secs(30),
        || async { redis_ping(&ip) },
    )
    .await?;
    let again = rt.inspect(&id).await?;
    assert_eq!(again.ips.get(NET), Some(&ip));
    assert_eq!(again.memory_bytes, 256 * MIB);

    // Stop with grace: SIGTERM is enough for Redis (exit 0) ...
    let t = Instant::now();
    rt.stop(&id, Duration::from_secs(10)).await?;
    println!("figure: stop (SIGTERM) took {:?}", t.elapsed());
    let stopped = rt.inspect(&id).await?;
    assert_eq!(
        (stopped.state, stopped.exit_code),
        (ContainerState::Exited, Some(0))
    );
    // ... and a task that cannot act on SIGTERM (frozen by SIGSTOP) is killed after the grace.
    rt.start(&id).await?;
    eventually(
        "redis up for the grace test",
        Duration::from_secs(30),
        || async { redis_ping(&ip) },
    )
    .await?;
    rt.kill(&id, "SIGSTOP").await?;
    rt.stop(&id, Duration::from_secs(1)).await?;
    let forced = rt.inspect(&id).await?;
    assert_eq!(
        (forced.state, forced.exit_code),
        (ContainerState::Exited, Some(137))
    );

    // Removed to be made again at once (an upgrade): the new container, on the same
    // namespace, answers at the same address.
    rt.remove_keeping_address(&id).await?;
    assert!(matches!(rt.inspect(&id).await, Err(Error::NotFound(_))));
    let id = rt.create(&spec).await?;
    rt.start(&id).await?;
    eventually(
        "redis made again answers at the same address",
        Duration::from_secs(30),
        || async { redis_ping(&ip) },
    )
    .await?;
    assert_eq!(rt.inspect(&id).await?.ips.get(NET), Some(&ip));

    // Removed: gone from containerd, its network namespace and address released.
    rt.remove(&id, true).await?;
    assert!(matches!(rt.inspect(&id).await, Err(Error::NotFound(_))));
    assert!(!Path::new(&format!("/var/run/netns/{}-{id}", ctrd.namespace)).exists());
    assert!(rt.list(&[(labels::NODE, &node)]).await?.is_empty());

    // A one-shot container (a restore's unpack): input on stdin, the data volume mounted,
    // its output and exit code, removed after.
    let input: Vec<Result<bytes::Bytes, String>> = (0..1000)
        .map(|_| Ok(bytes::Bytes::from_static(b"hello world\n")))
        .collect();
    let once = mofang_agent::runtime::OneShot {
        name: format!("{name}-once"),
        image: "mofang/redis:7.0".into(),
        cmd: vec![
            "sh".into(),
            "-c".into(),
            "cat > /var/lib/redis/in.txt; wc -c < /var/lib/redis/in.txt; id -u; echo done >&2; exit 4"
                .into(),
        ],
        mounts: vec![Mount {
            source: data.clone(),
            target: "/var/lib/redis".into(),
            read_only: false,
        }],
        user: "999:999".into(),
        labels: BTreeMap::from([(labels::NODE.to_owned(), node.clone())]),
    };
    let out = rt
        .run_once(&once, futures::stream::iter(input).boxed())
        .await?;
    assert_eq!(out.exit_code, 4, "{out:?}");
    assert_eq!(out.stdout, "12000\n999\ndone\n");
    assert_eq!(std::fs::metadata(data.join("in.txt"))?.len(), 12_000);
    assert!(matches!(
        rt.inspect(&once.name).await,
        Err(Error::NotFound(_))
    ));
    // An input that fails is an error, whatever the command made of what it got.
    let failing: Vec<Result<bytes::Bytes, String>> = vec![
        Ok(bytes::Bytes::from_static(b"partial")),
        Err("the backup object ended early".into()),
    ];
    match rt
        .run_once(&once, futures::stream::iter(failing).boxed())
        .await
    {
        Err(e) => assert!(e.to_string().contains("ended early"), "{e}"),
        Ok(o) => bail!("a failed input must fail the run: {o:?}"),
    }

    // A missing image: the member cannot be created, and says why.
    let mut missing = redis_spec(&format!("{name}-x"), &node, &data, &conf);
    missing.image = "mofang/redis:0.0".into();
    match rt.create(&missing).await {
        Err(Error::ImageMissing(i)) => assert!(i.contains("mofang/redis:0.0"), "{i}"),
        other => bail!("a missing image must be ImageMissing, got {other:?}"),
    }
    Ok(())
}

/// OOM-kill detection on containerd (decision 160): the server of a member pushed past its
/// memory limit is reported `oom_killed` (by a runtime connected afresh too) until the next
/// start; a `kill -9` by hand, the same exit code 137, is not. The Docker twin is in
/// `tests/agent.rs`.
#[tokio::test(flavor = "multi_thread")]
async fn an_oom_killed_task_is_reported_until_started_again_and_a_kill_9_is_not() -> Result<()> {
    let ctrd = containerd()?;
    ctrd.import_images(&["mofang/redis:7.0"])?;
    let work = tempfile::tempdir()?;
    let opts = ctrd.options(&work.path().join("rt"), NET);
    let rt = ContainerdRuntime::connect(opts.clone()).await?;
    let restarted = async move {
        let rt = ContainerdRuntime::connect(opts).await?;
        Ok(Box::new(rt) as Box<dyn ContainerRuntime>)
    };
    mofang_tests::runtime_scenarios::oom_kill_is_reported_until_the_next_start(&rt, restarted).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_socket_is_unreachable_and_dockers_namespace_is_refused() -> Result<()> {
    let ctrd = containerd()?;
    let work = tempfile::tempdir()?;
    let mut opts = ctrd.options(work.path(), NET);
    opts.socket = work.path().join("none.sock");
    match ContainerdRuntime::connect(opts).await {
        Err(Error::Unreachable(m)) => assert!(m.contains("none.sock"), "{m}"),
        other => bail!("expected Unreachable, got {other:?}"),
    }
    let mut opts = ctrd.options(work.path(), NET);
    opts.namespace = "moby".into();
    assert!(ContainerdRuntime::connect(opts).await.is_err());
    Ok(())
}

/// Asserts that process `pid`'s CPU cgroup is a child of cgroup `parent`, whose weight is
/// `weight` (v1: `cpu.shares` = weight × 1024 / 100; v2: `cpu.weight`). The directories are
/// found as the agent's metrics find them (`/proc/<pid>/cgroup` and the host's mounts).
fn assert_weighted(pid: u32, parent: &str, weight: u64) -> Result<()> {
    let paths = mofang_agent::metrics::cgroup::Mounts::detect()
        .paths_of(pid)
        .context("the member's cgroup")?;
    let (dir, file, want) = match (paths.v1.get("cpu"), paths.v2) {
        (Some(v1), _) => (v1.clone(), "cpu.shares", weight * 1024 / 100),
        (None, Some(v2)) => (v2, "cpu.weight", weight),
        (None, None) => bail!("no cpu cgroup for {pid}"),
    };
    let up = dir.parent().context("a member's cgroup has a parent")?;
    ensure!(
        up.ends_with(parent.trim_start_matches('/')),
        "{} is not under {parent}",
        dir.display()
    );
    assert_eq!(read_num(&up.join(file))?, want as i64, "{}", up.display());
    Ok(())
}

/// Only the container families (cAdvisor's names) of an exposition, for promtool.
fn container_families(exposition: &str) -> String {
    exposition
        .lines()
        .filter(|l| {
            let name = l
                .strip_prefix("# HELP ")
                .or_else(|| l.strip_prefix("# TYPE "))
                .unwrap_or(l);
            name.starts_with("container_")
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// How a test kills a member's container: through the runtime its host runs.
async fn kill_member(
    env: &mofang_tests::scenario::Env,
    rt: &ContainerdRuntime,
    docker_agent: usize,
    inst: &mofang_scheduler::cluster::InstanceView,
    member: &str,
) -> Result<()> {
    let container = format!("mofang-{member}");
    if env.agent_running(inst, member)? == docker_agent {
        mofang_tests::scenario::docker_cli(&["kill", &container])?;
    } else {
        rt.kill(&container, "SIGKILL").await?;
    }
    Ok(())
}

/// The agent end to end on containerd, in a mixed cluster: a real scheduler and three
/// agents, one on Docker (zone a) and two with `runtime = "containerd"` on the standalone
/// containerd (zones b, c). MariaDB primary + replicas across both runtimes (the row on every
/// replica), Redis the same; container metrics of a containerd member under cAdvisor's names,
/// promtool-clean; a containerd agent `kill -9`ed and restarted adopts its running tasks
/// without restarting them; the primary killed under writes (through its own runtime) fails
/// over with nothing acknowledged lost; an image missing from containerd is the member's
/// reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_cluster_on_docker_and_containerd_replicates_adopts_and_fails_over() -> Result<()> {
    use mofang_tests::cluster::Timings;
    use mofang_tests::scenario::{instance_spec, mysql, primary_of, set_contents, Env, SetWriter};
    use mysql_async::prelude::Queryable;

    let ctrd = containerd()?;
    ctrd.import_images(&["mofang/mariadb:10.11", "mofang/redis:7.0"])?;
    let work = tempfile::tempdir()?;
    // Every agent weighs its members' parent cgroup: the Docker one a parent of its own,
    // the containerd ones their namespace's.
    let on_containerd = format!(
        "runtime = \"containerd\"\nmember_cpu_weight = 400\n{}",
        ctrd.agent_toml()
    );
    let docker_parent = format!("/{}-docker", ctrd.namespace);
    let on_docker =
        format!("member_cgroup_parent = \"{docker_parent}\"\nmember_cpu_weight = 400\n");
    // The third agent's tasks under a parent of its own instead of the namespace's.
    let ctrd_own_parent = format!("/{}-ctrd", ctrd.namespace);
    let on_containerd_own =
        format!("member_cgroup_parent = \"{ctrd_own_parent}\"\n{on_containerd}");
    const DOCKER_AGENT: usize = 0;
    let mut env = Env::start_each_with(
        "[failover]\nlease_ttl_ms = 2000\nreplace_after_ms = 8000\nfailover_block_period_ms = 0\n",
        &[on_docker, on_containerd.clone(), on_containerd_own],
        &Timings::FAST,
        4096,
    )
    .await?;
    let rt =
        ContainerdRuntime::connect(ctrd.options(&work.path().join("rt"), &env.net.name)).await?;
    let docker = mofang_tests::docker().await;

    // MariaDB: a primary and two replicas, on both runtimes; the row on every replica.
    let name = unique_name("cdb");
    let t = Instant::now();
    let inst = env.create(&name, "mariadb", 2).await?;
    println!(
        "figure: MariaDB primary + 2 replicas ready (Docker + containerd) in {:?}",
        t.elapsed()
    );
    let pw = env.app_password(&name).await?;
    let members = inst.members.clone();
    let primary = primary_of(&inst)?;
    let primary_id = primary.id.clone();
    let mut c = mysql(&primary.address, &pw).await?;
    c.query_drop("CREATE TABLE orders (id INT PRIMARY KEY, item VARCHAR(64))")
        .await?;
    c.exec_drop("INSERT INTO orders VALUES (?, ?)", (1, "first"))
        .await?;
    drop(c);
    for replica in members.iter().filter(|m| m.role == "replica") {
        let raddr = replica.address.clone();
        let item: String = eventually("row on the replica", Duration::from_secs(30), || async {
            let mut rc = mysql(&raddr, &pw).await?;
            let v: Option<String> = rc
                .query_first("SELECT item FROM orders WHERE id = 1")
                .await?;
            v.context("no row yet")
        })
        .await?;
        assert_eq!(item, "first", "on {replica:?}");
    }
    // Members of the containerd hosts are containerd tasks; the Docker host's, a container.
    let mut on_ctrd = Vec::new();
    for m in &members {
        if env.agent_running(&inst, &m.id)? != DOCKER_AGENT {
            on_ctrd.push(m.id.clone());
        }
    }
    let tasks = rt.list(&[(labels::INSTANCE, &name)]).await?;
    assert_eq!(
        tasks.len(),
        on_ctrd.len(),
        "one task per containerd member: {tasks:?}"
    );
    assert!(
        !on_ctrd.is_empty(),
        "members on containerd hosts: {members:?}"
    );
    assert!(tasks.iter().all(|t| t.state == ContainerState::Running));
    let in_docker = docker.list(&[(labels::INSTANCE, &name)]).await?;
    assert_eq!(
        in_docker.len(),
        members.len() - on_ctrd.len(),
        "{in_docker:?}"
    );
    // Each member's CPU cgroup is a child of its agent's parent, weighted 400 (cgroup v1:
    // 4096 shares) against the host's other work.
    let ctrd_parent = format!("/{}", ctrd.namespace);
    let own_node = env.agents[2].node.clone();
    for (c, parent) in tasks
        .iter()
        .map(|t| {
            let own = t.labels.get(labels::NODE) == Some(&own_node);
            (t, if own { &ctrd_own_parent } else { &ctrd_parent })
        })
        .chain(in_docker.iter().map(|c| (c, &docker_parent)))
    {
        let pid = c.pid.context("a running member has a pid")?;
        assert_weighted(pid, parent, 400)?;
    }

    // Container metrics of a containerd member: cAdvisor's names, promtool-clean.
    let ctrd_member = on_ctrd[0].clone();
    let ca = env.agent_running(&inst, &ctrd_member)?;
    let metrics = env
        .http
        .get(format!("{}/metrics", env.agents[ca].http))
        .send()
        .await?
        .text()
        .await?;
    let cname = format!("name=\"mofang-{ctrd_member}\"");
    for family in [
        "container_memory_usage_bytes",
        "container_spec_memory_limit_bytes",
        "container_cpu_usage_seconds_total",
        "container_start_time_seconds",
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(family) && l.contains(&cname)),
            "{family} for {cname} missing"
        );
    }
    mofang_tests::promtool::check_metrics(&container_families(&metrics))?;

    // Redis: primary and replicas, the writes on every replica.
    let rname = unique_name("crd");
    let rinst = env.create(&rname, "redis", 2).await?;
    let rpw = env.app_password(&rname).await?;
    let rwriter = SetWriter::start(&env, &rname, "redis", &rpw).await?;
    rwriter.wait_acked(50, Duration::from_secs(60)).await?;
    let rout = rwriter.stop().await?;
    for rep in rinst.members.iter().filter(|m| m.role == "replica") {
        let addr = rep.address.clone();
        eventually(
            "redis writes on the replica",
            Duration::from_secs(30),
            || async {
                let s = set_contents("redis", &addr, &rpw).await?;
                ensure!(rout.lost(&s).is_empty(), "{} missing", rout.lost(&s).len());
                Ok(())
            },
        )
        .await?;
    }

    // A containerd agent killed and restarted adopts its tasks: same process, no restart.
    let node = env.agents[ca].node.clone();
    let before = rt.list(&[(labels::NODE, &node)]).await?;
    ensure!(!before.is_empty(), "the node runs tasks");
    env.agents[ca].kill9()?;
    env.agents[ca].restart()?;
    eventually(
        "restarted agent reports its members",
        Duration::from_secs(60),
        || async {
            let v = env.instance(&name).await?;
            let m = v
                .members
                .iter()
                .find(|m| m.id == ctrd_member)
                .context("member")?;
            ensure!(m.healthy, "{m:?}");
            Ok(())
        },
    )
    .await?;
    // A few reconcile passes after adoption, then the same processes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rt.list(&[(labels::NODE, &node)]).await?;
    for b in &before {
        let a = after
            .iter()
            .find(|a| a.id == b.id)
            .with_context(|| format!("{} gone after the agent restart", b.id))?;
        assert_eq!(
            (a.pid, &a.started_at),
            (b.pid, &b.started_at),
            "{} restarted",
            b.id
        );
    }

    // The MariaDB primary killed under writes (through its host's runtime): failover to a
    // replica, whichever runtime it is on, nothing acknowledged lost.
    let writer = SetWriter::start(&env, &name, "mariadb", &pw).await?;
    writer.wait_acked(300, Duration::from_secs(60)).await?;
    let killed = Instant::now();
    kill_member(&env, &rt, DOCKER_AGENT, &inst, &primary_id).await?;
    let after = env
        .new_primary(&name, inst.epoch, Duration::from_secs(60))
        .await?;
    println!(
        "figure: new primary healthy {:?} after the primary was killed (old primary on {})",
        killed.elapsed(),
        if env.agent_running(&inst, &primary_id)? == DOCKER_AGENT {
            "Docker"
        } else {
            "containerd"
        }
    );
    let acked = writer.acked();
    writer
        .wait_acked(acked + 200, Duration::from_secs(60))
        .await?;
    let out = writer.stop().await?;
    let new = primary_of(&after)?.clone();
    assert_ne!(new.id, primary_id, "a replica took over");
    let present = set_contents("mariadb", &new.address, &pw).await?;
    println!(
        "figure: failover in the mixed cluster: acknowledged {}, lost {}, longest gap {:?}",
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

    // The first primary was on Docker: its successor, on containerd, is killed as well (its
    // task), and a replica takes over again with nothing acknowledged lost.
    if env.agent_running(&inst, &primary_id)? == DOCKER_AGENT {
        let current = after;
        let victim = new.id.clone();
        assert_ne!(
            env.agent_running(&inst, &victim)?,
            DOCKER_AGENT,
            "successor on containerd"
        );
        // The second fault after recovery, not during it: the old primary, restarted as a
        // replica, must be back first. While it does not answer its checks the failover
        // rightly waits (decision 38: a live replica that does not answer may hold what the
        // others lack); before ids went on from the first writer's, the duplicates below hid
        // this wait by delaying the kill by seconds.
        env.ready(&name).await?;
        // Ids go on from the first writer's: from 1 again, every write would be a
        // duplicate of a row already there until past them, and the first acknowledgement
        // (the gap's start) seconds late.
        let first_id = out.attempted.iter().max().map_or(1, |m| m + 1);
        let writer = SetWriter::start_from(
            mofang_tests::scenario::PrimarySource::api(&env, &name),
            "mariadb",
            &pw,
            first_id,
        )
        .await?;
        writer.wait_acked(300, Duration::from_secs(60)).await?;
        let killed = Instant::now();
        kill_member(&env, &rt, DOCKER_AGENT, &current, &victim).await?;
        let next = env
            .new_primary(&name, current.epoch, Duration::from_secs(60))
            .await?;
        println!(
            "figure: new primary healthy {:?} after the primary was killed (old primary on {})",
            killed.elapsed(),
            if env.agent_running(&current, &victim)? == DOCKER_AGENT {
                "Docker"
            } else {
                "containerd"
            }
        );
        let acked = writer.acked();
        writer
            .wait_acked(acked + 200, Duration::from_secs(60))
            .await?;
        let first = out;
        let out = writer.stop().await?;
        let np = primary_of(&next)?;
        assert_ne!(np.id, victim, "a replica took over");
        let present = set_contents("mariadb", &np.address, &pw).await?;
        println!(
            "figure: failover in the mixed cluster: acknowledged {}, lost {}, longest gap {:?}",
            out.acked.len(),
            out.lost(&present).len(),
            out.longest_gap
        );
        assert!(
            out.lost(&present).is_empty(),
            "acknowledged writes lost: {:?}",
            out.lost(&present)
        );
        // Every row is one of the two writers'.
        let unexpected: Vec<u64> = first
            .unexpected(&present)
            .into_iter()
            .filter(|id| !out.attempted.contains(id))
            .collect();
        assert!(unexpected.is_empty(), "rows never written: {unexpected:?}");
    }

    // An image not imported into containerd (MariaDB 10.5 is built for Docker only here): a
    // member on a containerd host cannot start and says why.
    let missing = unique_name("cmi");
    let mut spec = instance_spec(&missing, "mariadb", 2)?;
    spec.version = "10.5".into();
    env.client()
        .create_instance(&spec)
        .await
        .with_context(|| format!("create {missing}"))?;
    let reason = eventually(
        "a containerd member reports the missing image",
        Duration::from_secs(60),
        || async {
            let v = env.instance(&missing).await?;
            let m = v
                .members
                .into_iter()
                .find(|m| {
                    env.agents
                        .iter()
                        .position(|a| m.node == a.node)
                        .is_some_and(|i| i != DOCKER_AGENT)
                })
                .context("a member on a containerd host")?;
            ensure!(!m.healthy && m.reason.contains("not present"), "{m:?}");
            Ok(m.reason)
        },
    )
    .await?;
    assert!(reason.contains("mofang/mariadb:10.5"), "{reason}");
    assert!(reason.contains("containerd-import"), "{reason}");
    Ok(())
}

/// The agent binary: an unknown `runtime` or Docker's namespace exits 64 naming the field; a
/// containerd socket that is missing is logged and retried with backoff (never a panic), and
/// the agent connects once the socket is there.
#[test]
fn the_agent_refuses_a_bad_runtime_and_waits_for_a_missing_containerd() -> Result<()> {
    let ctrd = containerd()?;
    let bin = mofang_tests::cluster::binaries()?.join("mofang-agent");
    let dir = tempfile::tempdir()?;
    let base = format!(
        "node = \"lonely\"\nstate_dir = \"{}\"\nschedulers = [\"http://127.0.0.1:1\"]\n",
        dir.path().join("state").display()
    );
    let tail = format!(
        "[tls]\ndisable = true\n[[disks]]\npath = \"{}\"\ncapacity_mib = 100\n",
        dir.path().join("disk").display()
    );
    let cfg = dir.path().join("agent.toml");
    for (text, field) in [
        (format!("{base}runtime = \"podman\"\n{tail}"), "runtime"),
        (
            format!("{base}runtime = \"containerd\"\n{tail}[containerd]\nnamespace = \"moby\"\n"),
            "containerd.namespace",
        ),
    ] {
        std::fs::write(&cfg, &text)?;
        let out = std::process::Command::new(&bin)
            .arg("--config")
            .arg(&cfg)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{text}: {stderr}");
        assert!(stderr.contains(field), "must name `{field}`: {stderr}");
    }

    let socket = dir.path().join("containerd.sock");
    std::fs::write(
        &cfg,
        format!(
            "{base}runtime = \"containerd\"\n{tail}[containerd]\nsocket = \"{}\"\nnamespace = \"{}\"\nstate_dir = \"{}\"\n",
            socket.display(),
            ctrd.namespace,
            dir.path().join("rt").display()
        ),
    )?;
    let log_path = dir.path().join("log");
    let log = std::fs::File::create(&log_path)?;
    let mut child = std::process::Command::new(&bin)
        .arg("--config")
        .arg(&cfg)
        .stderr(log.try_clone()?)
        .stdout(log)
        .spawn()?;
    std::thread::sleep(Duration::from_secs(3));
    let still_running = child.try_wait()?.is_none();
    let text = std::fs::read_to_string(&log_path)?;
    // The socket appears (a symlink to the standalone containerd's): the agent connects.
    std::os::unix::fs::symlink(&ctrd.socket, &socket)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let connected = loop {
        let t = std::fs::read_to_string(&log_path)?;
        if t.contains("container runtime connected") || Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    child.kill()?;
    child.wait()?;
    assert!(
        still_running,
        "the agent must keep retrying, not exit: {text}"
    );
    assert!(
        text.matches("container runtime unreachable").count() >= 2,
        "retried with backoff: {text}"
    );
    assert!(
        text.contains(&socket.display().to_string()),
        "names the socket: {text}"
    );
    assert!(!connected.contains("panicked"), "{connected}");
    assert!(
        connected.contains("container runtime connected"),
        "connected once the socket was there: {connected}"
    );
    Ok(())
}

/// The agent scenario of `tests/agent.rs` (`mariadb_primary_and_replica_replicate_heal_and_fence`)
/// on containerd: the same code, the runtime a parameter. Replication, `kill -9` of mariadbd
/// in the task held and brought back in place with its data, fence on lease loss and unfence,
/// removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_on_containerd_replicates_heals_and_fences() -> Result<()> {
    let ctrd = containerd()?;
    ctrd.import_images(&["mofang/mariadb:10.11"])?;
    let work = tempfile::tempdir()?;
    // Members on the CNI network named like the scenario's network (its Docker network is
    // made but unused by a containerd agent).
    let extra = format!("runtime = \"containerd\"\n{}", ctrd.agent_toml());
    let rt = ContainerdRuntime::connect(ctrd.options(&work.path().join("rt"), NET)).await?;
    mofang_tests::agent_scenarios::mariadb_replicate_heal_and_fence(&rt, &extra).await
}

/// The Redis agent scenario of `tests/agent.rs` on containerd: replication, the replica
/// read-only, fence and unfence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_on_containerd_replicates_and_fences() -> Result<()> {
    let ctrd = containerd()?;
    ctrd.import_images(&["mofang/redis:7.0"])?;
    let extra = format!("runtime = \"containerd\"\n{}", ctrd.agent_toml());
    mofang_tests::agent_scenarios::redis_replicate_and_fence(&extra).await
}

/// Backups on containerd (issues 16 and 20): on three agents that run containerd alone, a
/// MariaDB backup streamed out of the replica's task (`exec_stream`) to real S3, its
/// verification (a one-shot task that restores and counts), a scale-up whose new replica is
/// seeded from it (a one-shot task restores it into the new member's volume; decision 164),
/// and a new instance restored from it, each holding exactly the rows it should.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_verify_seed_and_restore_on_containerd() -> Result<()> {
    use mofang_common::repo::Secret;
    use mofang_scheduler::backup::BackupState;
    use mofang_scheduler::client::{NewBackup, NewBackupRepo, NewOperation};
    use mofang_scheduler::cluster::InstanceView;
    use mofang_scheduler::model::RestoreRequest;
    use mofang_scheduler::ops::{OpKind, OpState, StepAction};
    use mofang_tests::cluster::Timings;
    use mofang_tests::scenario::{instance_spec, mysql, primary_of, replica_of, Env};
    use mysql_async::prelude::Queryable;

    let ctrd = containerd()?;
    ctrd.import_images(&["mofang/mariadb:10.11"])?;
    let s3 = mofang_tests::s3::SeaweedFs::shared().await?;
    let on_containerd = format!("runtime = \"containerd\"\n{}", ctrd.agent_toml());
    let env = Env::start_each_with("", &vec![on_containerd; 3], &Timings::FAST, 4096).await?;
    let client = env.client();
    client
        .add_backup_repo(&NewBackupRepo {
            name: "main".into(),
            kind: "s3".into(),
            endpoint: Some(s3.endpoint.clone()),
            bucket: Some(s3.bucket.clone()),
            prefix: Some(unique_name("ctrd")),
            access_key_id: Some(s3.access_key.clone()),
            secret_access_key: Some(Secret(s3.secret_key.clone())),
            ..NewBackupRepo::default()
        })
        .await
        .context("backup repository")?;
    let name = unique_name("cbk");
    let inst = env.create(&name, "mariadb", 1).await?;
    let pw = env.app_password(&name).await?;
    let addr = |inst: &InstanceView, id: &str| -> Result<String> {
        inst.members
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.address.clone())
            .context("member address")
    };
    let primary = primary_of(&inst)?.address.clone();
    let mut c = mysql(&primary, &pw).await?;
    c.query_drop("CREATE TABLE t (id INT PRIMARY KEY)").await?;
    c.query_drop("INSERT INTO t SELECT seq FROM seq_1_to_300")
        .await?;
    let rows = |a: String, pw: String| async move {
        let mut c = mysql(&a, &pw).await?;
        // MAX is NULL on an empty table (a replica that has not caught up yet).
        let r: Option<(u64, u64, Option<u64>)> = c
            .query_first("SELECT COUNT(*), COUNT(DISTINCT id), MAX(id) FROM t")
            .await?;
        let (n, distinct, max) = r.context("no row")?;
        Ok::<_, anyhow::Error>((n, distinct, max.unwrap_or(0)))
    };
    // Taken on the replica once it has every row (the backup's default member).
    let replica_id = replica_of(&inst)?.id.clone();
    let replica = addr(&inst, &replica_id)?;
    eventually("the replica has every row", Duration::from_secs(60), || {
        let (a, pw) = (replica.clone(), pw.clone());
        async move {
            let got = rows(a, pw).await?;
            ensure!(got == (300, 300, 300), "{got:?}");
            Ok(())
        }
    })
    .await?;

    // No backup yet: a new replica is a physical copy streamed from the replica's agent
    // (decision 167), its `mariadb-backup` run by a containerd exec. The donor's server
    // counts the copy's `BACKUP STAGE`s; no member answers `SHOW CREATE DATABASE` (the
    // logical copy's signature).
    let served = |a: String, pw: String| async move {
        let mut c = mysql(&a, &pw).await?;
        let r: Vec<(String, String)> = c
            .query("SHOW GLOBAL STATUS WHERE Variable_name IN ('Com_backup', 'Com_show_create_db')")
            .await?;
        let get = |n: &str| -> Result<u64> {
            Ok(r.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .with_context(|| format!("{n}: {r:?}"))?
                .1
                .parse()?)
        };
        Ok::<_, anyhow::Error>((get("Com_backup")?, get("Com_show_create_db")?))
    };
    let before = (
        served(primary.clone(), pw.clone()).await?,
        served(replica.clone(), pw.clone()).await?,
    );
    let mut up = NewOperation::new(OpKind::Scale);
    up.replicas = Some(2);
    let op = env
        .run_operation(&name, &up, Duration::from_secs(300))
        .await?;
    ensure!(op.state == OpState::Succeeded, "{op:?}");
    let after = (
        served(primary.clone(), pw.clone()).await?,
        served(replica.clone(), pw.clone()).await?,
    );
    ensure!(
        after.0 == before.0 && after.1 .0 > before.1 .0 && after.1 .1 == before.1 .1,
        "the copy was not a physical one from {replica_id} ((Com_backup, Com_show_create_db) of \
         the primary and the replica: {before:?} before, {after:?} after)"
    );
    let copied = env.instance(&name).await?;
    let copy = copied
        .members
        .iter()
        .find(|m| m.id != replica_id && m.role == "replica")
        .map(|m| m.address.clone())
        .context("the new replica")?;
    eventually(
        "the physical copy holds every row",
        Duration::from_secs(60),
        || {
            let (a, pw) = (copy.clone(), pw.clone());
            async move {
                let got = rows(a, pw).await?;
                ensure!(got == (300, 300, 300), "{got:?}");
                Ok(())
            }
        },
    )
    .await?;
    let mut down = NewOperation::new(OpKind::Scale);
    down.replicas = Some(1);
    let op = env
        .run_operation(&name, &down, Duration::from_secs(300))
        .await?;
    ensure!(op.state == OpState::Succeeded, "{op:?}");
    // The replica kept (the most lagging one went): the backup's member below.
    let inst = env.instance(&name).await?;
    let replica_id = replica_of(&inst)?.id.clone();
    let b = client
        .create_backup(
            &name,
            &NewBackup {
                repo: "main".into(),
                ..NewBackup::default()
            },
        )
        .await
        .context("backup")?;
    let id = b.id;
    let b = eventually("the backup ended", Duration::from_secs(180), || async {
        let b = client.backup(&id).await?;
        ensure!(
            b.state == BackupState::Succeeded || b.state == BackupState::Failed,
            "{b:?}"
        );
        Ok(b)
    })
    .await?;
    ensure!(
        b.state == BackupState::Succeeded && b.member == replica_id,
        "{b:?}"
    );
    ensure!(
        b.row_counts.as_ref().and_then(|r| r.get("app.t")) == Some(&300),
        "row counts in the manifest: {b:?}"
    );

    // Verified by a one-shot task that restores it and counts its rows.
    client.verify_backup(&id).await.context("verify")?;
    let v = eventually("verified", Duration::from_secs(180), || async {
        let b = client.backup(&id).await?;
        ensure!(!b.verifying && b.verified_at_ms > 0, "{b:?}");
        Ok(b)
    })
    .await?;
    ensure!(v.verify_ok == Some(true), "verification: {v:?}");

    // A new replica seeded from it, then following the primary past it.
    c.query_drop("INSERT INTO t SELECT seq FROM seq_301_to_350")
        .await?;
    drop(c);
    let mut scale = NewOperation::new(OpKind::Scale);
    scale.replicas = Some(2);
    // Only what the agents log from here on counts (the member id of the copy above may
    // be used again).
    let marks: Vec<usize> = env.agents.iter().map(|a| a.log().len()).collect();
    let op = env
        .run_operation(&name, &scale, Duration::from_secs(300))
        .await?;
    ensure!(op.state == OpState::Succeeded, "{op:?}");
    let add = op
        .steps
        .iter()
        .find(|s| matches!(s.action, StepAction::AddReplica { .. }))
        .context("an add_replica step")?;
    let StepAction::AddReplica { member, backup, .. } = &add.action else {
        bail!("{add:?}");
    };
    ensure!(backup.as_deref() == Some(id.as_str()), "{add:?}");
    let new = member.clone();
    let inst = env.instance(&name).await?;
    let k = env.agent_running(&inst, &new)?;
    let log = env.agents[k].log();
    let log = &log[marks[k].min(log.len())..];
    ensure!(
        log.lines()
            .any(|l| l.contains("data volume restored") && l.contains(&new))
            && !log
                .lines()
                .any(|l| l.contains("seeding replica") && l.contains(&new)),
        "{new} was not seeded from the backup:\n{log}"
    );
    let new_addr = addr(&inst, &new)?;
    eventually(
        "the seeded replica has every row",
        Duration::from_secs(60),
        || {
            let (a, pw) = (new_addr.clone(), pw.clone());
            async move {
                let got = rows(a, pw).await?;
                ensure!(got == (350, 350, 350), "{got:?}");
                Ok(())
            }
        },
    )
    .await?;

    // A new instance restored from it: exactly the backup's rows.
    let copy = unique_name("cre");
    let mut spec = instance_spec(&copy, "mariadb", 1)?;
    spec.restore = Some(RestoreRequest {
        from_instance: name.clone(),
        backup: Some(id.clone()),
        time: None,
    });
    client
        .create_instance(&spec)
        .await
        .with_context(|| format!("create {copy}"))?;
    let restored = env.ready(&copy).await?;
    let rpw = env.app_password(&copy).await?;
    let rprimary = primary_of(&restored)?.address.clone();
    let got = rows(rprimary, rpw).await?;
    ensure!(got == (300, 300, 300), "restored: {got:?}");
    Ok(())
}

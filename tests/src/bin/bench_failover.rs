//! Failover benchmark (`make bench-failover`, issue 6 point 9): repeated failovers of one
//! instance under a Jepsen-style writer, with the RTO a client sees and the acknowledged
//! writes lost in each round; Redis Sentinel (Debian's `redis-sentinel`) on the same Redis
//! image as the side-by-side anchor. Prints figures; asserts no timing.
//!
//! RTO: from the last write acknowledged by the old primary to the first write acknowledged
//! by the new one, the writer finding the primary as a client would (the instance's
//! `primary` in the API, or `SENTINEL get-master-addr-by-name`) on every reconnect.
//!
//! Usage: bench_failover [--rounds N] [--scenarios a,b,...] [--logs DIR]
//! Scenarios: mariadb-kill, mariadb-partition, redis-kill, sentinel-kill (the default set),
//! and mariadb-partition-production (the daemons' default timers: lease 10 s, node_ttl 5 s).

use anyhow::{bail, Context, Result};
use mofang_tests::cluster::{TestNetwork, Timings};
use mofang_tests::faults::{isolate, rejoin};
use mofang_tests::scenario::{
    container_of, docker_cli, set_contents, Env, PrimarySource, SetOutcome, SetWriter,
};
use mofang_tests::{eventually, test_label, unique_name};
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Writes acknowledged before each fault, and after the new primary took over.
const WARMUP_ACKS: u64 = 200;
const AFTER_ACKS: u64 = 200;
/// Ids of round `r` are `(r + 1) * ID_BLOCK + 1 ...`, so rounds never collide.
const ID_BLOCK: u64 = 10_000_000;

/// The agent stops restarting a member after 5 restarts within 10 minutes (its crash-loop
/// guard, `MAX_CRASH_RESTARTS` in agent/src/reconcile.rs), and a `docker kill` counts as a
/// crash: the kill scenarios move to a fresh instance every this many kills, so that no member
/// is killed more than 5 times.
const KILLS_PER_INSTANCE: usize = 10;

/// Mofang's budget to call an unanswering database dead: `failover.failed_checks` (3)
/// consecutive failed checks, one every 250 ms. Sentinel's `down-after-milliseconds`.
const DETECTION_BUDGET_MS: u64 = 750;
/// Sentinel refuses a new failover of one master name within twice this (default 180 s,
/// which would allow one failover every 6 minutes); it also bounds a stuck failover.
const SENTINEL_FAILOVER_TIMEOUT_MS: u64 = 5000;

fn str_arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// One failover.
#[derive(Debug, Clone)]
struct Round {
    /// Client-observed: last ack by the old primary to first ack by the new one.
    rto: Duration,
    /// Fault to the API (or Sentinel) naming the new primary.
    switched: Duration,
    /// Acknowledged writes in this round.
    acked: usize,
    /// Acknowledged writes missing on the new primary.
    lost: usize,
    /// Writes on the new primary never attempted.
    unexpected: usize,
    /// End of the round to the instance being whole again (old primary a replica).
    healed: Duration,
}

struct Scenario {
    name: &'static str,
    what: String,
    rounds: Vec<Round>,
}

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// The RTO of one round from the writer's acknowledgements.
fn rto_of(out: &SetOutcome, old: &str, new: &str, fault: Instant) -> Result<Duration> {
    let first_new = out
        .acks
        .iter()
        .find(|a| a.at > fault && &*a.primary == new)
        .map(|a| a.at)
        .with_context(|| format!("no write acknowledged by the new primary {new}"))?;
    let last_old = out
        .acks
        .iter()
        .rev()
        .find(|a| a.at <= first_new && &*a.primary == old)
        .map(|a| a.at)
        .with_context(|| format!("no write acknowledged by the old primary {old}"))?;
    Ok(first_new.saturating_duration_since(last_old))
}

/// (lost, unexpected) of one round: `present` is the new primary's set.
fn count_loss(out: &SetOutcome, present: &BTreeSet<u64>, first_id: u64) -> (usize, usize) {
    let mine: BTreeSet<u64> = present
        .range(first_id..first_id + ID_BLOCK)
        .copied()
        .collect();
    (out.lost(&mine).len(), out.unexpected(&mine).len())
}

fn print_round(scenario: &str, i: usize, r: &Round) {
    println!(
        "  {scenario} round {:>2}: RTO {:>7}  new primary named after {:>7}  acked {:>5}  lost {}  unexpected {}  whole again after {}",
        i + 1,
        secs(r.rto),
        secs(r.switched),
        r.acked,
        r.lost,
        r.unexpected,
        secs(r.healed)
    );
}

// ---------------------------------------------------------------------------------------
// Mofang

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// `docker kill` of the primary's container.
    Kill,
    /// The primary's host: its agent's link to the scheduler cut, its container cut off
    /// from the other members (iptables); healed after the failover.
    Partition,
}

/// How long an instance must look whole before the next fault: a member's first report
/// after it rejoined can look healthy for a moment before its replication fails (it is then
/// found diverged and rebuilt).
const SETTLED_FOR: Duration = Duration::from_millis(1500);

/// Why an instance view is not whole: every member healthy in its assigned role at the
/// instance's epoch, every replica replicating (lag known), and for MariaDB every member at
/// the same GTID position (the writer is stopped, so replicas catch up).
fn not_whole(v: &Value) -> Option<String> {
    let ms = v["members"].as_array()?;
    let members_ok = ms.iter().all(|m| {
        m["healthy"] == true
            && m["role"] == m["observed_role"]
            && m["epoch"] == v["epoch"]
            && (m["role"] == "primary"
                || m["lag_seconds"]
                    .as_i64()
                    .is_some_and(|l| (0..=1).contains(&l)))
    });
    let positions: BTreeSet<&str> = ms.iter().filter_map(|m| m["position"].as_str()).collect();
    let caught_up = v["engine"] != "mariadb" || positions.len() == 1;
    (v["status"] != "ready" || !members_ok || !caught_up).then(|| v.to_string())
}

/// Waits until the instance has been whole (see [`not_whole`]) for [`SETTLED_FOR`]: ready
/// for the next fault.
async fn wait_whole(env: &Env, name: &str, limit: Duration) -> Result<Value> {
    let until = Instant::now() + limit;
    let mut since: Option<Instant> = None;
    loop {
        let why = match env.get(&format!("/v1/instances/{name}")).await {
            Ok(v) => match not_whole(&v) {
                None => {
                    if since.get_or_insert_with(Instant::now).elapsed() >= SETTLED_FOR {
                        return Ok(v);
                    }
                    None
                }
                Some(why) => Some(why),
            },
            Err(e) => Some(format!("{e:#}")),
        };
        if let Some(why) = why {
            since = None;
            if Instant::now() > until {
                bail!("instance not whole again within {limit:?}: {why}");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn mofang_round(
    env: &Env,
    name: &str,
    engine: &str,
    pw: &str,
    fault: Fault,
    round: usize,
) -> Result<Round> {
    let inst = wait_whole(env, name, Duration::from_secs(180)).await?;
    let epoch = inst["epoch"].as_u64().context("epoch")?;
    let old = Env::primary_member(&inst)?;
    let old_id = old["id"].as_str().context("id")?.to_owned();
    let old_addr = old["address"].as_str().context("address")?.to_owned();
    let first_id = (round as u64 + 1) * ID_BLOCK + 1;

    let writer = SetWriter::start_from(PrimarySource::api(env, name), engine, pw, first_id).await?;
    writer
        .wait_acked(WARMUP_ACKS, Duration::from_secs(60))
        .await?;
    let container = container_of(&old_id);
    let agent = env.agent_of(&inst, &old_id)?;
    let fault_at = Instant::now();
    match fault {
        Fault::Kill => {
            docker_cli(&["kill", &container])?;
        }
        Fault::Partition => {
            let peers: Vec<String> = inst["members"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["id"] != old["id"])
                .filter_map(|m| Some(m["address"].as_str()?.rsplit_once(':')?.0.to_owned()))
                .collect();
            env.links[agent].cut();
            isolate(&container, &peers)?;
        }
    }
    // When the API names another primary (what a reconnecting client gets).
    let switched = loop {
        let v = env.get(&format!("/v1/instances/{name}")).await?;
        let p = v["primary"].as_str().unwrap_or_default();
        if !p.is_empty() && p != old_addr {
            break fault_at.elapsed();
        }
        if fault_at.elapsed() > Duration::from_secs(120) {
            bail!("no new primary named within 120 s: {v}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let after = env
        .wait_new_primary(name, epoch, Duration::from_secs(120))
        .await?;
    let new_addr = Env::primary_member(&after)?["address"]
        .as_str()
        .context("address")?
        .to_owned();
    let n = writer.acked();
    writer
        .wait_acked(n + AFTER_ACKS, Duration::from_secs(60))
        .await?;
    let out = writer.stop().await?;
    let present = set_contents(engine, &new_addr, pw).await?;
    let (lost, unexpected) = count_loss(&out, &present, first_id);
    let rto = rto_of(&out, &old_addr, &new_addr, fault_at)?;

    let heal_at = Instant::now();
    if fault == Fault::Partition {
        rejoin(&container)?;
        env.links[agent].heal();
    }
    wait_whole(env, name, Duration::from_secs(180)).await?;
    Ok(Round {
        rto,
        switched,
        acked: out.acked.len(),
        lost,
        unexpected,
        healed: heal_at.elapsed(),
    })
}

async fn mofang_scenario(
    label: &'static str,
    engine: &str,
    fault: Fault,
    timings: Timings,
    rounds: usize,
) -> Result<Scenario> {
    // The bench fails over the same instance every round: no block period, no replacement
    // of the partitioned host's members while it is cut off.
    let extra = format!(
        "[failover]\nlease_ttl_ms = {}\nfailover_block_period_s = 0\nreplace_after_s = 3600\n",
        timings.lease_ttl_ms
    );
    let env = Env::start_timed(3, &extra, &timings).await?;
    let what = format!(
        "{engine}, 1 primary + 2 replicas on 3 agents; agents' lease {} s, node_ttl {} s, heartbeats every {} ms",
        timings.lease_ttl_ms as f64 / 1000.0,
        timings.node_ttl_ms as f64 / 1000.0,
        timings.heartbeat_interval_ms
    );
    println!("{label}: {what}");
    let mut out = Vec::new();
    let result = async {
        let mut instance: Option<(String, String)> = None;
        for r in 0..rounds {
            if fault == Fault::Kill && r % KILLS_PER_INSTANCE == 0 {
                if let Some((old, _)) = instance.take() {
                    env.call(
                        reqwest::Method::DELETE,
                        &format!("/v1/instances/{old}"),
                        None,
                    )
                    .await?;
                }
            }
            let (name, pw) = match &instance {
                Some(i) => i.clone(),
                None => {
                    let name = unique_name("bench");
                    let t = Instant::now();
                    env.create_ready(&name, engine, 2).await?;
                    println!("  {label}: instance {name} ready in {}", secs(t.elapsed()));
                    let pw = env.app_password(&name).await?;
                    instance.insert((name, pw)).clone()
                }
            };
            let round = mofang_round(&env, &name, engine, &pw, fault, r)
                .await
                .with_context(|| format!("{label} round {}", r + 1))?;
            print_round(label, r, &round);
            out.push(round);
        }
        anyhow::Ok(())
    }
    .await;
    if let Some(dir) = str_arg("--logs") {
        // For a breakdown of each failover (lease lost, decision, promotion) afterwards.
        std::fs::create_dir_all(&dir)?;
        for (i, a) in env.agents.iter().enumerate() {
            std::fs::write(format!("{dir}/{label}-agent{i}.log"), a.log())?;
        }
        std::fs::write(format!("{dir}/{label}-scheduler.log"), env.sched.log())?;
    }
    result?;
    Ok(Scenario {
        name: label,
        what,
        rounds: out,
    })
}

// ---------------------------------------------------------------------------------------
// Redis Sentinel

const MASTER: &str = "mymaster";

/// Three `mofang/redis:7.0` containers (primary + 2 replicas) at fixed addresses on a
/// bench-owned network, and three `redis-sentinel` processes on loopback.
struct SentinelSetup {
    containers: Vec<String>,
    ips: Vec<String>,
    sentinels: Vec<Child>,
    sentinel_addrs: Vec<String>,
    password: String,
    // Dropped after the containers are removed (field order).
    _net: TestNetwork,
    _dir: tempfile::TempDir,
}

impl Drop for SentinelSetup {
    fn drop(&mut self) {
        for c in &mut self.sentinels {
            let _ = c.kill();
            let _ = c.wait();
        }
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", "-v", c]).output();
        }
    }
}

/// A labelled bridge network with a subnet of Docker's choosing (needed for fixed
/// addresses): Docker picks a free subnet, then the network is made again with it.
fn network_with_subnet() -> Result<(TestNetwork, std::net::Ipv4Addr)> {
    let probe = TestNetwork::create(&unique_name("snet"))?;
    let subnet = docker_cli(&[
        "network",
        "inspect",
        "-f",
        "{{(index .IPAM.Config 0).Subnet}}",
        &probe.name,
    ])?;
    let name = probe.name.clone();
    drop(probe);
    let (k, v) = test_label();
    docker_cli(&[
        "network",
        "create",
        "--driver",
        "bridge",
        "--subnet",
        &subnet,
        "--label",
        &format!("{k}={v}"),
        &name,
    ])?;
    let base: std::net::Ipv4Addr = subnet
        .split_once('/')
        .context("subnet")?
        .0
        .parse()
        .context("subnet address")?;
    Ok((TestNetwork { name }, base))
}

fn redis_conf(password: &str, replica_of: Option<&str>) -> String {
    // As the agent renders it (agent/src/engine/redis.rs), with a 384 MiB memory limit.
    let maxmemory = (384u64 << 20) / 4 * 3;
    let mut c = format!(
        "bind 0.0.0.0\nport 6379\nprotected-mode no\ndaemonize no\ndir /var/lib/redis\n\
         appendonly yes\nappendfsync everysec\nmaxmemory {maxmemory}\n\
         maxmemory-policy noeviction\nreplica-read-only yes\nrepl-timeout 5\n\
         repl-ping-replica-period 1\nmasteruser admin\nmasterauth {password}\n\
         user default off\nuser admin on >{password} ~* &* +@all\n\
         user app on >{password} ~* &* +@all -@admin -@dangerous\n"
    );
    if let Some(p) = replica_of {
        c.push_str(&format!("replicaof {p} 6379\n"));
    }
    c
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl SentinelSetup {
    async fn start() -> Result<SentinelSetup> {
        let _ = mofang_tests::docker().await;
        if Command::new("redis-sentinel")
            .arg("--version")
            .output()
            .is_err()
        {
            bail!("redis-sentinel not found: run scripts/setup (Debian package redis-sentinel)");
        }
        let dir = tempfile::Builder::new()
            .prefix("mofang-sentinel-bench-")
            .tempdir_in("/var/tmp")?;
        let (net, base) = network_with_subnet()?;
        let base = u32::from(base);
        let password = format!("bench{}", std::process::id());
        let (k, v) = test_label();
        let ips: Vec<String> = (0..3)
            .map(|i| std::net::Ipv4Addr::from(base + 10 + i).to_string())
            .collect();
        let mut setup = SentinelSetup {
            containers: Vec::new(),
            ips: ips.clone(),
            sentinels: Vec::new(),
            sentinel_addrs: Vec::new(),
            password: password.clone(),
            _net: net,
            _dir: dir,
        };
        use std::os::unix::fs::PermissionsExt;
        for (i, ip) in ips.iter().enumerate() {
            // Sentinel rewrites the config (CONFIG REWRITE) when it repoints a member: the
            // directory is writable by the image's redis user.
            let cdir = setup._dir.path().join(format!("redis{i}"));
            std::fs::create_dir(&cdir)?;
            let conf = cdir.join("redis.conf");
            std::fs::write(&conf, redis_conf(&password, (i > 0).then_some(&ips[0])))?;
            std::fs::set_permissions(&cdir, std::fs::Permissions::from_mode(0o777))?;
            std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o666))?;
            let name = unique_name("sentinel-redis");
            docker_cli(&[
                "run",
                "-d",
                "--name",
                &name,
                "--label",
                &format!("{k}={v}"),
                "--network",
                &setup._net.name,
                "--ip",
                ip,
                "--cpus",
                "0.5",
                "--memory",
                "384m",
                "-v",
                &format!("{}:/etc/mofang", cdir.display()),
                "mofang/redis:7.0",
            ])?;
            setup.containers.push(name);
        }
        for i in 0..3 {
            let port = free_port()?;
            let sdir = setup._dir.path().join(format!("sentinel{i}"));
            std::fs::create_dir(&sdir)?;
            let conf = sdir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\n\
                     dir {dir}\nlogfile {dir}/sentinel.log\n\
                     sentinel announce-ip 127.0.0.1\nsentinel announce-port {port}\n\
                     sentinel monitor {MASTER} {ip} 6379 2\n\
                     sentinel auth-user {MASTER} admin\nsentinel auth-pass {MASTER} {password}\n\
                     sentinel down-after-milliseconds {MASTER} {DETECTION_BUDGET_MS}\n\
                     sentinel failover-timeout {MASTER} {SENTINEL_FAILOVER_TIMEOUT_MS}\n\
                     sentinel parallel-syncs {MASTER} 1\n",
                    dir = sdir.display(),
                    ip = ips[0],
                ),
            )?;
            let child = Command::new("redis-sentinel")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting redis-sentinel")?;
            setup.sentinels.push(child);
            setup.sentinel_addrs.push(format!("127.0.0.1:{port}"));
        }
        // The sentinels find each other through the master's hello channel.
        eventually(
            "sentinels know each other",
            Duration::from_secs(60),
            || async {
                for s in &setup.sentinel_addrs {
                    let others: Vec<Vec<String>> = sentinel_cmd(s, &["sentinels", MASTER]).await?;
                    if others.len() != 2 {
                        bail!("{s} knows {} other sentinels", others.len());
                    }
                }
                Ok(())
            },
        )
        .await?;
        Ok(setup)
    }

    fn source(&self) -> PrimarySource {
        PrimarySource::Sentinel {
            sentinels: self.sentinel_addrs.clone(),
            master: MASTER.into(),
        }
    }

    fn container_at(&self, addr: &str) -> Result<&str> {
        let ip = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        self.ips
            .iter()
            .position(|i| i == ip)
            .map(|i| self.containers[i].as_str())
            .with_context(|| format!("no container at {addr}"))
    }

    /// INFO replication of the member at `ip`, as key/value pairs.
    async fn info(&self, ip: &str) -> Result<std::collections::HashMap<String, String>> {
        tokio::time::timeout(Duration::from_secs(2), async {
            let client =
                redis::Client::open(format!("redis://admin:{}@{ip}:6379/", self.password))?;
            let mut c = client.get_multiplexed_async_connection().await?;
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut c)
                .await?;
            anyhow::Ok(
                info.lines()
                    .filter_map(|l| l.trim().split_once(':'))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            )
        })
        .await
        .context("INFO timed out")?
    }

    /// Waits until every sentinel names the same master and counts both replicas up (not
    /// down, not disconnected), and both replicas replicate from that master: ready for the
    /// next fault.
    async fn wait_whole(&self, limit: Duration) -> Result<String> {
        eventually("sentinel set whole again", limit, || async {
            let mut master = None;
            for s in &self.sentinel_addrs {
                let (h, p): (String, u16) =
                    sentinel_cmd(s, &["get-master-addr-by-name", MASTER]).await?;
                let a = format!("{h}:{p}");
                if master.get_or_insert_with(|| a.clone()) != &a {
                    bail!("sentinels disagree on the master");
                }
                let replicas: Vec<Vec<String>> = sentinel_cmd(s, &["replicas", MASTER]).await?;
                let up = replicas
                    .iter()
                    .filter(|r| {
                        let f = |k: &str| {
                            r.chunks(2)
                                .find(|kv| kv[0] == k)
                                .and_then(|kv| kv.get(1).cloned())
                                .unwrap_or_default()
                        };
                        // Its link state comes from INFO every 10 s: checked below, directly.
                        f("flags") == "slave"
                    })
                    .count();
                if up != 2 {
                    bail!("{s} sees {up} healthy replicas");
                }
            }
            let master = master.context("no sentinel")?;
            let mip = master.rsplit_once(':').map_or(master.as_str(), |(h, _)| h);
            let info = self.info(mip).await?;
            if info.get("role").map(String::as_str) != Some("master")
                || info.get("connected_slaves").map(String::as_str) != Some("2")
            {
                bail!("master {master}: {info:?}");
            }
            for ip in self.ips.iter().filter(|i| *i != mip) {
                let info = self.info(ip).await?;
                if info.get("master_host").map(String::as_str) != Some(mip)
                    || info.get("master_link_status").map(String::as_str) != Some("up")
                {
                    bail!("replica {ip}: {info:?}");
                }
            }
            Ok(master)
        })
        .await
    }
}

/// `SENTINEL <args>` on one sentinel.
async fn sentinel_cmd<T: redis::FromRedisValue>(addr: &str, args: &[&str]) -> Result<T> {
    tokio::time::timeout(Duration::from_secs(2), async {
        let client = redis::Client::open(format!("redis://{addr}/"))?;
        let mut c = client.get_multiplexed_async_connection().await?;
        let mut cmd = redis::cmd("SENTINEL");
        for a in args {
            cmd.arg(*a);
        }
        anyhow::Ok(cmd.query_async(&mut c).await?)
    })
    .await
    .with_context(|| format!("sentinel {addr} timed out"))?
}

async fn sentinel_round(
    setup: &SentinelSetup,
    round: usize,
    last_fault: &mut Option<Instant>,
) -> Result<Round> {
    let old_addr = setup.wait_whole(Duration::from_secs(180)).await?;
    // Sentinel starts no second failover of one master within 2 x failover-timeout.
    if let Some(t) = *last_fault {
        let gap = Duration::from_millis(2 * SENTINEL_FAILOVER_TIMEOUT_MS + 500);
        tokio::time::sleep(gap.saturating_sub(t.elapsed())).await;
    }
    let first_id = (round as u64 + 1) * ID_BLOCK + 1;
    let writer = SetWriter::start_from(setup.source(), "redis", &setup.password, first_id).await?;
    writer
        .wait_acked(WARMUP_ACKS, Duration::from_secs(60))
        .await?;
    let container = setup.container_at(&old_addr)?.to_owned();
    let fault_at = Instant::now();
    *last_fault = Some(fault_at);
    docker_cli(&["kill", &container])?;
    let source = setup.source();
    let (switched, new_addr) = loop {
        if let Ok(p) = source.primary().await {
            if p != old_addr {
                break (fault_at.elapsed(), p);
            }
        }
        if fault_at.elapsed() > Duration::from_secs(120) {
            bail!("sentinel named no new master within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let n = writer.acked();
    writer
        .wait_acked(n + AFTER_ACKS, Duration::from_secs(60))
        .await?;
    let out = writer.stop().await?;
    let present = set_contents("redis", &new_addr, &setup.password).await?;
    let (lost, unexpected) = count_loss(&out, &present, first_id);
    let rto = rto_of(&out, &old_addr, &new_addr, fault_at)?;
    // The killed member comes back (as Mofang's agent restarts it); Sentinel turns it into
    // a replica of the new master.
    let heal_at = Instant::now();
    docker_cli(&["start", &container])?;
    setup.wait_whole(Duration::from_secs(180)).await?;
    Ok(Round {
        rto,
        switched,
        acked: out.acked.len(),
        lost,
        unexpected,
        healed: heal_at.elapsed(),
    })
}

async fn sentinel_scenario(rounds: usize) -> Result<Scenario> {
    let label = "sentinel-kill";
    let setup = SentinelSetup::start().await?;
    let what = format!(
        "redis 7.0 (same image), 1 master + 2 replicas, 3 redis-sentinel (quorum 2), down-after-milliseconds {DETECTION_BUDGET_MS}, failover-timeout {SENTINEL_FAILOVER_TIMEOUT_MS}"
    );
    println!("{label}: {what}");
    let mut out = Vec::new();
    let mut last_fault = None;
    for r in 0..rounds {
        let round = sentinel_round(&setup, r, &mut last_fault)
            .await
            .with_context(|| format!("{label} round {}", r + 1))?;
        print_round(label, r, &round);
        out.push(round);
    }
    Ok(Scenario {
        name: label,
        what,
        rounds: out,
    })
}

// ---------------------------------------------------------------------------------------

fn summary(scenarios: &[Scenario]) {
    println!("\n| scenario | rounds | RTO p50 | RTO p99 | RTO max | new primary named, p50 / max | lost acknowledged writes per round | unexpected |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for s in scenarios {
        let mut rto: Vec<Duration> = s.rounds.iter().map(|r| r.rto).collect();
        rto.sort();
        let mut sw: Vec<Duration> = s.rounds.iter().map(|r| r.switched).collect();
        sw.sort();
        let lost: Vec<String> = s.rounds.iter().map(|r| r.lost.to_string()).collect();
        let unexpected: usize = s.rounds.iter().map(|r| r.unexpected).sum();
        println!(
            "| {} | {} | {} | {} | {} | {} / {} | {} | {} |",
            s.name,
            s.rounds.len(),
            secs(pct(&rto, 0.50)),
            secs(pct(&rto, 0.99)),
            secs(rto.last().copied().unwrap_or_default()),
            secs(pct(&sw, 0.50)),
            secs(sw.last().copied().unwrap_or_default()),
            lost.join(" "),
            unexpected
        );
    }
    for s in scenarios {
        println!("{}: {}", s.name, s.what);
    }
}

/// The machine's 1, 5 and 15 minute load averages: the bench shares 2 cores with whatever
/// else runs, and the figures move with it.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn run(rounds: usize, which: &[String]) -> Result<()> {
    let started = Instant::now();
    println!("load average at start: {}", loadavg());
    let mut done = Vec::new();
    for w in which {
        let s = match w.as_str() {
            "mariadb-kill" => {
                mofang_scenario(
                    "mariadb-kill",
                    "mariadb",
                    Fault::Kill,
                    Timings::FAST,
                    rounds,
                )
                .await?
            }
            "mariadb-partition" => {
                mofang_scenario(
                    "mariadb-partition",
                    "mariadb",
                    Fault::Partition,
                    Timings::FAST,
                    rounds,
                )
                .await?
            }
            "mariadb-partition-production" => {
                mofang_scenario(
                    "mariadb-partition-production",
                    "mariadb",
                    Fault::Partition,
                    Timings::PRODUCTION,
                    rounds,
                )
                .await?
            }
            "redis-kill" => {
                mofang_scenario("redis-kill", "redis", Fault::Kill, Timings::FAST, rounds).await?
            }
            "sentinel-kill" => sentinel_scenario(rounds).await?,
            other => bail!("unknown scenario {other}"),
        };
        done.push(s);
        println!(
            "  ({} elapsed; load average {})",
            secs(started.elapsed()),
            loadavg()
        );
    }
    summary(&done);
    println!("total: {}", secs(started.elapsed()));
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let rounds = str_arg("--rounds")
        .map(|r| r.parse::<usize>())
        .transpose()
        .context("--rounds")?
        .unwrap_or(20);
    let which: Vec<String> = str_arg("--scenarios")
        .unwrap_or_else(|| "mariadb-kill,mariadb-partition,redis-kill,sentinel-kill".into())
        .split(',')
        .map(str::to_owned)
        .collect();
    println!(
        "failover benchmark: {rounds} rounds per scenario; scenarios {}; machine: {} cores",
        which.join(", "),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // Ctrl-C drops the scenario in progress: its processes, containers and networks go.
    tokio::select! {
        r = run(rounds, &which) => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    }
}

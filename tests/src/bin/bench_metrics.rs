//! Metrics benchmark (`make bench-metrics`): one release-built `mofang-agent` managing N real
//! database containers (half MariaDB, half Redis), against Debian's `prometheus-mysqld-exporter`
//! (one process per MariaDB, its 0.14 has no multi-target mode) plus one
//! `prometheus-redis-exporter` (multi-target `/scrape?target=`) scraping the same databases
//! with the same monitoring account, plus one `prometheus-node-exporter` for the host. Prints scrape latency (median, p99), RSS and CPU seconds
//! per scrape. Figures only: nothing here asserts on time.
//!
//! Idle CPU is measured twice: over the first `--settle-secs` after the members are ready and
//! warmed up (connections opening, first collections, the tail of the creation's container
//! events), then over `--idle-secs` after that (the steady cost the target is about).
//!
//! The agent collects on its scrapers' cadence and once a minute while nobody scrapes
//! (decision 168): `--idle-scrape-secs N` scrapes every N s through settle and idle, as a
//! Prometheus would (15 by default), and the idle figures then include those scrapes; 0:
//! no scraper.
//!
//! Options: `--containers 10,50` `--scrapes 100` `--idle-secs 60` `--settle-secs 30`
//! `--idle-scrape-secs 15`, and `--agents
//! NAME=PATH,NAME=PATH` to measure given `mofang-agent` binaries one after the other in the
//! same run (side by side: before and after a change) instead of building this workspace's.

use anyhow::{bail, Context, Result};
use mofang_agent::engine::Secrets;
use mofang_common::proto::{Assignment, MemberStatus};
use mofang_tests::cluster::TestNetwork;
use mofang_tests::fake_scheduler::FakeScheduler;
use mofang_tests::unique_name;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

/// User + system CPU seconds of a process.
fn cpu_seconds(pid: u32) -> f64 {
    mofang_agent::metrics::procfs::process_stats(&pid.to_string())
        .map(|s| s.cpu_seconds)
        .unwrap_or(0.0)
}

/// Of a process's resident memory, the anonymous part (its heap and stacks) and the part
/// mapped from files (its binary's code and read-only data: shared, clean, reclaimable), in
/// MiB, from `/proc/<pid>/status`.
fn rss_split_mib(pid: u32) -> (f64, f64) {
    let status = procfs::process::Process::new(pid as i32).and_then(|p| p.status());
    let mib = |kib: Option<u64>| kib.unwrap_or(0) as f64 / 1024.0;
    match status {
        Ok(s) => (mib(s.rssanon), mib(s.rssfile)),
        Err(_) => (0.0, 0.0),
    }
}

fn rss_mib(pid: u32) -> f64 {
    mofang_agent::metrics::procfs::process_stats(&pid.to_string())
        .map(|s| s.rss_bytes as f64 / MIB as f64)
        .unwrap_or(0.0)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Children killed on drop.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"))
}

fn assignment(i: usize, secrets: &HashMap<String, String>) -> Assignment {
    let redis = i % 2 == 1;
    let instance = format!("b{i}");
    Assignment {
        member: format!("{instance}-0"),
        instance,
        engine: if redis { "redis" } else { "mariadb" }.into(),
        version: if redis { "7.0" } else { "10.11" }.into(),
        role: "primary".into(),
        epoch: 1,
        cpu: 0.5,
        memory_bytes: if redis { 64 * MIB } else { 256 * MIB },
        disk_bytes: 256 * MIB,
        disk_class: "ssd".into(),
        primary_address: String::new(),
        secrets: secrets.clone(),
        settings: HashMap::new(),
        ..Default::default()
    }
}

struct Run {
    containers: usize,
    agent_p50_ms: f64,
    agent_p99_ms: f64,
    slowest_db_p50_ms: f64,
    agent_bytes: usize,
    agent_rss: f64,
    /// `agent_rss` as (anonymous, file-backed).
    agent_rss_split: (f64, f64),
    agent_cpu_ms: f64,
    agent_idle_cpu_pct: f64,
    agent_settle_cpu_pct: f64,
    exp_p50_ms: f64,
    exp_p99_ms: f64,
    exp_rss: f64,
    exp_cpu_ms: f64,
    exp_procs: usize,
}

async fn wait_healthy(fake: &FakeScheduler, node: &str, n: usize) -> Result<Vec<MemberStatus>> {
    let start = Instant::now();
    loop {
        if let Some(hb) = fake.last_heartbeat(node) {
            let healthy = hb.members.iter().filter(|m| m.healthy).count();
            if healthy == n {
                return Ok(hb.members);
            }
            if start.elapsed() > Duration::from_secs(900) {
                bail!("only {healthy} of {n} members healthy after 15 min");
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn run(
    n: usize,
    scrapes: usize,
    (settle, idle, idle_scrape): (Duration, Duration, Duration),
    agent_bin: &Path,
) -> Result<Run> {
    let fake = FakeScheduler::start().await?;
    let net = TestNetwork::create(&unique_name("bench-net"))?;
    let node = unique_name("bench-node");
    let dir = tempfile::Builder::new()
        .prefix("mofang-bench-metrics-")
        .tempdir_in("/var/tmp")?;
    let http_port = free_port()?;
    std::fs::write(
        dir.path().join("agent.toml"),
        format!(
            "node = \"{node}\"\nschedulers = [\"{}\"]\nnetwork = \"{}\"\nstate_dir = \"{}\"\n\
             stop_grace_ms = 5000\nhttp_listen = \"127.0.0.1:{http_port}\"\n\
             [tls]\ndisable = true\n\
             [[disks]]\npath = \"{}\"\nclass = \"ssd\"\ncapacity_mib = {}\n",
            fake.endpoint(),
            net.name,
            dir.path().join("state").display(),
            dir.path().join("disk0").display(),
            (n as u64 + 4) * 256,
        ),
    )?;
    let mut procs = Procs(vec![]);
    let agent = Command::new(agent_bin)
        .arg("--config")
        .arg(dir.path().join("agent.toml"))
        // MOFANG_BENCH_RUST_LOG: the agent's log filter (its log is kept in the run's
        // directory under /var/tmp while the run lasts).
        .env(
            "RUST_LOG",
            std::env::var("MOFANG_BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(
            dir.path().join("agent.log"),
        )?))
        .spawn()?;
    let agent_pid = agent.id();
    procs.0.push(agent);

    let s = Secrets::generate();
    let secrets = HashMap::from([
        ("admin".to_owned(), s.admin.clone()),
        ("repl".to_owned(), s.repl.clone()),
        ("monitor".to_owned(), s.monitor.clone()),
        ("app".to_owned(), s.app.clone()),
    ]);
    let assignments: Vec<Assignment> = (0..n).map(|i| assignment(i, &secrets)).collect();
    fake.set_desired(&node, assignments.clone());
    let t0 = Instant::now();
    let statuses = wait_healthy(&fake, &node, n).await?;
    eprintln!(
        "  {n} members healthy after {:.0}s",
        t0.elapsed().as_secs_f64()
    );

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let url = format!("http://127.0.0.1:{http_port}/metrics");
    // Warm up: connections to every member open, inventory filled.
    let mut body_len = 0;
    for _ in 0..5 {
        body_len = http.get(&url).send().await?.text().await?.len();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The agent's background work (reconcile passes, heartbeats, collections) without
    // scrapes, or with a scraper's every `idle_scrape`.
    let scraper = (!idle_scrape.is_zero()).then(|| {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(idle_scrape).await;
                if let Ok(r) = http.get(&url).send().await {
                    let _ = r.text().await;
                }
            }
        })
    });
    eprintln!(
        "  agent pid {agent_pid}: settling for {} s",
        settle.as_secs_f64()
    );
    let s0 = cpu_seconds(agent_pid);
    tokio::time::sleep(settle).await;
    let settle_rate = (cpu_seconds(agent_pid) - s0) / settle.as_secs_f64().max(0.001);
    eprintln!("  agent pid {agent_pid}: idle for {} s", idle.as_secs_f64());
    let c0 = cpu_seconds(agent_pid);
    tokio::time::sleep(idle).await;
    let idle_rate = (cpu_seconds(agent_pid) - c0) / idle.as_secs_f64();
    if let Some(s) = scraper {
        s.abort();
    }

    let mut lat = Vec::with_capacity(scrapes);
    let mut slowest_db = Vec::with_capacity(scrapes);
    let c0 = cpu_seconds(agent_pid);
    let w0 = Instant::now();
    for _ in 0..scrapes {
        let t = Instant::now();
        let b = http.get(&url).send().await?.text().await?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        body_len = b.len();
        // The slowest member's database answer in this scrape (they run concurrently).
        let slowest = b
            .lines()
            .filter(|l| l.starts_with("mofang_db_scrape_duration_seconds{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .fold(0.0f64, f64::max);
        slowest_db.push(slowest * 1000.0);
    }
    slowest_db.sort_by(f64::total_cmp);
    let window = w0.elapsed().as_secs_f64();
    let agent_cpu = (cpu_seconds(agent_pid) - c0 - idle_rate * window).max(0.0) / scrapes as f64;
    let agent_rss = rss_mib(agent_pid);
    let agent_rss_split = rss_split_mib(agent_pid);
    lat.sort_by(f64::total_cmp);

    // The exporters, on the same members with the same account.
    let addr = |m: &str| -> Option<String> {
        statuses
            .iter()
            .find(|s| s.member == m)
            .map(|s| s.address.clone())
    };
    let mut exporter_urls = Vec::new();
    let mut exporter_pids = Vec::new();
    let redis_port = free_port()?;
    let redis_exporter = Command::new("prometheus-redis-exporter")
        .arg(format!("-web.listen-address=127.0.0.1:{redis_port}"))
        .arg("-redis.user=mofang_monitor")
        .arg(format!("-redis.password={}", s.monitor))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("prometheus-redis-exporter (run scripts/setup)")?;
    exporter_pids.push(redis_exporter.id());
    procs.0.push(redis_exporter);
    // The host's statistics, which the agent serves too under node_exporter's names: Debian's
    // node exporter with its default collectors, scraped in every round.
    let node_port = free_port()?;
    let node_exporter = Command::new("prometheus-node-exporter")
        .arg(format!("--web.listen-address=127.0.0.1:{node_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("prometheus-node-exporter (run scripts/setup)")?;
    exporter_pids.push(node_exporter.id());
    procs.0.push(node_exporter);
    exporter_urls.push(format!("http://127.0.0.1:{node_port}/metrics"));
    for a in &assignments {
        let Some(address) = addr(&a.member) else {
            continue;
        };
        if a.engine == "redis" {
            exporter_urls.push(format!(
                "http://127.0.0.1:{redis_port}/scrape?target=redis://{address}"
            ));
        } else {
            let port = free_port()?;
            let c = Command::new("prometheus-mysqld-exporter")
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                // The agent reads global status, global variables and slave status: the
                // exporter's other default collectors are turned off for a like-for-like run.
                .args([
                    "--collect.global_status",
                    "--collect.global_variables",
                    "--collect.slave_status",
                    "--no-collect.info_schema.innodb_cmp",
                    "--no-collect.info_schema.innodb_cmpmem",
                    "--no-collect.info_schema.query_response_time",
                ])
                .env(
                    "DATA_SOURCE_NAME",
                    format!("mofang_monitor:{}@({address})/", s.monitor),
                )
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("prometheus-mysqld-exporter (run scripts/setup)")?;
            exporter_pids.push(c.id());
            procs.0.push(c);
            exporter_urls.push(format!("http://127.0.0.1:{port}/metrics"));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let round = |http: reqwest::Client, urls: Vec<String>| async move {
        let t = Instant::now();
        let bodies = futures::future::join_all(urls.iter().map(|u| {
            let http = http.clone();
            async move { http.get(u).send().await?.text().await }
        }))
        .await;
        let ok = bodies
            .iter()
            .filter(|b| {
                b.as_ref().is_ok_and(|b| {
                    b.lines().any(|l| {
                        l == "mysql_up 1"
                            || l == "redis_up 1"
                            || l.starts_with("node_exporter_build_info{")
                    })
                })
            })
            .count();
        (t.elapsed().as_secs_f64() * 1000.0, ok)
    };
    for _ in 0..3 {
        let (_, ok) = round(http.clone(), exporter_urls.clone()).await;
        if ok != exporter_urls.len() {
            eprintln!(
                "  warning: {ok} of {} exporter targets report up",
                exporter_urls.len()
            );
        }
    }
    let cpu_all = |pids: &[u32]| pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let mut elat = Vec::with_capacity(scrapes);
    let c0 = cpu_all(&exporter_pids);
    for _ in 0..scrapes {
        let (ms, _) = round(http.clone(), exporter_urls.clone()).await;
        elat.push(ms);
    }
    let exp_cpu = (cpu_all(&exporter_pids) - c0) / scrapes as f64;
    let exp_rss: f64 = exporter_pids.iter().map(|p| rss_mib(*p)).sum();
    elat.sort_by(f64::total_cmp);
    eprintln!("  agent exposition: {} KiB", body_len / 1024);

    drop(procs);
    // The agent is gone; remove its containers (they carry its node label).
    if let Ok(out) = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=mofang.node={node}"),
        ])
        .output()
    {
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("docker").args(["rm", "-f", id]).output();
        }
    }
    drop(net);
    Ok(Run {
        containers: n,
        agent_p50_ms: percentile(&lat, 0.5),
        agent_p99_ms: percentile(&lat, 0.99),
        slowest_db_p50_ms: percentile(&slowest_db, 0.5),
        agent_bytes: body_len,
        agent_rss,
        agent_rss_split,
        agent_cpu_ms: agent_cpu * 1000.0,
        agent_idle_cpu_pct: idle_rate * 100.0,
        agent_settle_cpu_pct: settle_rate * 100.0,
        exp_p50_ms: percentile(&elat, 0.5),
        exp_p99_ms: percentile(&elat, 0.99),
        exp_rss,
        exp_cpu_ms: exp_cpu * 1000.0,
        exp_procs: exporter_pids.len(),
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let sizes: Vec<usize> = arg("--containers", "10,50")
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let scrapes: usize = arg("--scrapes", "100").parse().unwrap_or(100);
    let idle = Duration::from_secs(arg("--idle-secs", "60").parse().unwrap_or(60));
    let settle = Duration::from_secs(arg("--settle-secs", "30").parse().unwrap_or(30));
    let idle_scrape = Duration::from_secs(arg("--idle-scrape-secs", "15").parse().unwrap_or(15));

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let given: Vec<(String, PathBuf)> = arg("--agents", "")
        .split(',')
        .filter(|a| !a.is_empty())
        .map(|a| {
            let (name, path) = a
                .split_once('=')
                .with_context(|| format!("--agents: '{a}' is not NAME=PATH"))?;
            Ok((name.to_owned(), PathBuf::from(path)))
        })
        .collect::<Result<_>>()?;
    let agents = if given.is_empty() {
        vec![(String::new(), build_agent(&root)?)]
    } else {
        given
    };
    println!(
        "mofang metrics benchmark: agent /metrics vs prometheus-mysqld-exporter + prometheus-redis-exporter + prometheus-node-exporter, {scrapes} scrapes each"
    );
    println!(
        "machine: {} cores; agent: release build; containers: half MariaDB 10.11, half Redis 7.0, on a Docker bridge network",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let mut runs = Vec::new();
    for n in sizes {
        for (name, bin) in &agents {
            eprintln!("running with {n} containers {name}...");
            runs.push((
                name.clone(),
                run(n, scrapes, (settle, idle, idle_scrape), bin).await?,
            ));
        }
    }
    println!();
    let settle_s = settle.as_secs();
    if idle_scrape.is_zero() {
        println!("idle: no scraper during settle and idle (the agent collects once a minute when nobody scrapes, decision 168)");
    } else {
        println!(
            "idle: a scrape every {} s during settle and idle, counted in the idle figures",
            idle_scrape.as_secs()
        );
    }
    println!("| agent | containers | agent p50 | agent p99 | slowest database in a scrape, p50 | agent CPU/scrape | agent RSS (anon + file) | agent idle CPU | idle CPU, first {settle_s} s | exporters p50 | exporters p99 | exporters CPU/scrape | exporters RSS (procs) | agent body |");
    println!(
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for (name, r) in &runs {
        println!(
            "| {name} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.2} ms | {:.1} MiB ({:.1} + {:.1}) | {:.1} % | {:.1} % | {:.1} ms | {:.1} ms | {:.2} ms | {:.1} MiB ({}) | {} KiB |",
            r.containers,
            r.agent_p50_ms,
            r.agent_p99_ms,
            r.slowest_db_p50_ms,
            r.agent_cpu_ms,
            r.agent_rss,
            r.agent_rss_split.0,
            r.agent_rss_split.1,
            r.agent_idle_cpu_pct,
            r.agent_settle_cpu_pct,
            r.exp_p50_ms,
            r.exp_p99_ms,
            r.exp_cpu_ms,
            r.exp_rss,
            r.exp_procs,
            r.agent_bytes / 1024,
        );
    }
    Ok(())
}

/// Builds this workspace's agent (release) and returns its path.
fn build_agent(root: &Path) -> Result<PathBuf> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "mofang-agent",
            "--bin",
            "mofang-agent",
        ])
        .current_dir(root)
        .status()?;
    if !status.success() {
        bail!("building the agent failed");
    }
    Ok(target_dir(root).join("release/mofang-agent"))
}

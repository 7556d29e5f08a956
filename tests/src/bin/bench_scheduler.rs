//! Scheduler benchmark (`make bench`): a real `mofang-scheduler` process (release build),
//! 1,000 simulated agents over real gRPC (register, heartbeat at 1 Hz, watch assignments),
//! then 10,000 instance creations through the REST API. Prints placements committed per
//! second, API latency p50/p99, the scheduler's CPU for heartbeats, and its RSS.
//!
//! Runs twice, side by side: plain text (`tls.disable`), then TLS as shipped (mutual TLS on
//! gRPC with an agent certificate per simulated node, HTTPS on the API), and prints both and
//! their ratios.
//!
//! Usage: bench_scheduler [--agents N] [--instances N] [--concurrency N] [--idle-secs N]
//!        [--modes plain,tls]

use anyhow::{bail, Context, Result};
use mofang_common::proto::agent_control_client::AgentControlClient;
use mofang_common::proto::{Disk, HeartbeatRequest, MemberStatus, RegisterRequest, WatchRequest};
use mofang_scheduler::client::{self, Client};
use mofang_scheduler::model::NodeState;
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat format")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    Ok(ticks / 100.0) // USER_HZ is 100 on Linux
}

/// (VmRSS, VmHWM) in MiB.
fn rss_mib(pid: u32) -> Result<(f64, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let get = |k: &str| -> f64 {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    Ok((get("VmRSS:"), get("VmHWM:")))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

// One simulated agent's settings and counters, each its own argument (a bench binary).
#[allow(clippy::too_many_arguments)]
async fn agent(
    endpoint: String,
    tls: Option<tonic::transport::ClientTlsConfig>,
    node: String,
    zone: String,
    beats: Arc<AtomicU64>,
    statuses: Arc<AtomicU64>,
    full_beats: Arc<std::sync::atomic::AtomicBool>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<()> {
    let mut ep = tonic::transport::Endpoint::from_shared(endpoint)?;
    if let Some(tls) = tls {
        ep = ep.tls_config(tls)?;
    }
    let channel = ep.connect().await?;
    let mut client = AgentControlClient::new(channel);
    client
        .register(RegisterRequest {
            node: node.clone(),
            advertise_address: "127.0.0.1".into(),
            labels: HashMap::from([("zone".to_owned(), zone)]),
            cpu: 64.0,
            memory_bytes: 256 << 30,
            disks: vec![Disk {
                path: "/data".into(),
                class: "ssd".into(),
                capacity_bytes: 10 << 40,
                free_bytes: 10 << 40,
                reserved_bytes: 0,
            }],
            agent_version: "bench".into(),
            lease_ttl_ms: 10_000,
            http_address: String::new(),
        })
        .await?;
    let mut watch = client
        .watch_assignments(WatchRequest {
            node: node.clone(),
            known_revision: 0,
        })
        .await?
        .into_inner();
    let members = Arc::new(std::sync::Mutex::new(Vec::<MemberStatus>::new()));
    let m2 = members.clone();
    let stop2 = stop.clone();
    // Follow the desired state like an agent and report every member healthy.
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop2.cancelled() => break,
                msg = watch.next() => match msg {
                    Some(Ok(ds)) => {
                        DESIRED.fetch_add(1, Ordering::Relaxed);
                        let st: Vec<MemberStatus> = ds.members.iter().map(|a| MemberStatus {
                            member: a.member.clone(), instance: a.instance.clone(), engine: a.engine.clone(),
                            container_state: "running".into(), healthy: true, role: a.role.clone(), epoch: a.epoch,
                            address: format!("127.0.0.1:{}", 33000 + rand_ms(&a.member)), lag_seconds: 0, ..Default::default()
                        }).collect();
                        if let Ok(mut m) = m2.lock() { *m = st; }
                    }
                    _ => break,
                }
            }
        }
    });
    // Spread heartbeats over the second like real agents started at different times.
    tokio::time::sleep(Duration::from_millis(rand_ms(&node))).await;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // As the agent does (decision 75): only changed statuses, unless complete beats are asked.
    let mut delta = mofang_agent::link::delta::Delta::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {
                let ms = members.lock().map(|m| m.clone()).unwrap_or_default();
                let hb = HeartbeatRequest { node: node.clone(), members: ms, ..Default::default() };
                let hb = if full_beats.load(Ordering::Relaxed) { hb } else { delta.next(hb) };
                let n = hb.members.len() as u64;
                match client.heartbeat(hb).await {
                    Ok(a) => {
                        delta.answered(a.into_inner().want_full);
                        beats.fetch_add(1, Ordering::Relaxed);
                        statuses.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(_) => delta.missed(),
                }
            }
        }
    }
}

/// Desired states the simulated agents received, all together.
static DESIRED: AtomicU64 = AtomicU64::new(0);

fn rand_ms(seed: &str) -> u64 {
    seed.bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
        % 1000
}

/// Plain text or TLS as shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    Tls,
}

/// What one run measured.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    placements_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    heartbeat_cpu_pct: f64,
    heartbeat_ms_cpu: f64,
    create_cpu_pct: f64,
    create_ms_cpu: f64,
    bench_cpu_pct: f64,
    steady_cpu_pct: f64,
    steady_full_cpu_pct: f64,
    rss_idle_mib: f64,
    rss_full_mib: f64,
}

/// Quiet time between the last agent becoming ready and the heartbeat window.
const SETTLE: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> Result<()> {
    let n_agents = arg("--agents", 1000);
    let n_instances = arg("--instances", 10_000);
    let concurrency = arg("--concurrency", 64);
    let idle_secs = arg("--idle-secs", 20) as u64;
    let args: Vec<String> = std::env::args().collect();
    let modes: Vec<Mode> = match args.iter().position(|a| a == "--modes") {
        Some(i) => args
            .get(i + 1)
            .map(String::as_str)
            .unwrap_or_default()
            .split(',')
            .map(|m| match m {
                "plain" => Ok(Mode::Plain),
                "tls" => Ok(Mode::Tls),
                other => bail!("--modes: unknown mode {other:?} (plain, tls)"),
            })
            .collect::<Result<_>>()?,
        None => vec![Mode::Plain, Mode::Tls],
    };

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "mofang-scheduler",
            "--bin",
            "mofang-scheduler",
        ])
        .current_dir(&root)
        .status()?;
    if !status.success() {
        bail!("building the scheduler failed");
    }
    let bin = root.join("target/release/mofang-scheduler");
    println!("mofang scheduler benchmark: {n_agents} agents over gRPC at 1 Hz, {n_instances} creations over REST ({concurrency} in flight)");
    println!(
        "machine: {} cores; scheduler: release build, embedded SQLite (WAL, synchronous=FULL); load average {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    let mut results = Vec::new();
    for mode in modes {
        println!("\n== {} ==", match mode {
            Mode::Plain => "plain text (tls.disable = true)",
            Mode::Tls => "TLS as shipped: mutual TLS on gRPC (an agent certificate per node), HTTPS on the API",
        });
        let f = run(&bin, mode, n_agents, n_instances, concurrency, idle_secs).await?;
        results.push((mode, f));
    }
    if let (Some((_, p)), Some((_, t))) = (
        results.iter().find(|(m, _)| *m == Mode::Plain),
        results.iter().find(|(m, _)| *m == Mode::Tls),
    ) {
        let pct = |a: f64, b: f64| if a > 0.0 { (b / a - 1.0) * 100.0 } else { 0.0 };
        println!("\nside by side (plain | TLS | change), same run:");
        println!(
            "  placements/s:            {:>8.0} | {:>8.0} | {:+.1}%   (target: TLS >= 3,500/s)",
            p.placements_per_s,
            t.placements_per_s,
            pct(p.placements_per_s, t.placements_per_s)
        );
        println!(
            "  POST p50 / p99 (ms):     {:>4.1} / {:<4.1} | {:>4.1} / {:<4.1}",
            p.p50_ms, p.p99_ms, t.p50_ms, t.p99_ms
        );
        println!(
            "  heartbeat CPU (% core):  {:>8.1} | {:>8.1} | {:+.1}%   (target: growth <= 15%)",
            p.heartbeat_cpu_pct,
            t.heartbeat_cpu_pct,
            pct(p.heartbeat_cpu_pct, t.heartbeat_cpu_pct)
        );
        println!(
            "  ms CPU per heartbeat:    {:>8.3} | {:>8.3} | {:+.1}%",
            p.heartbeat_ms_cpu,
            t.heartbeat_ms_cpu,
            pct(p.heartbeat_ms_cpu, t.heartbeat_ms_cpu)
        );
        println!(
            "  CPU creating (% core):   {:>8.0} | {:>8.0} | {:+.1}%",
            p.create_cpu_pct,
            t.create_cpu_pct,
            pct(p.create_cpu_pct, t.create_cpu_pct)
        );
        println!(
            "  ms CPU per placement:    {:>8.3} | {:>8.3} | {:+.1}%",
            p.create_ms_cpu,
            t.create_ms_cpu,
            pct(p.create_ms_cpu, t.create_ms_cpu)
        );
        println!(
            "  bench's own CPU creating:{:>8.0} | {:>8.0} |   (its clients and agents, same cores)",
            p.bench_cpu_pct, t.bench_cpu_pct
        );
        println!(
            "  steady CPU (% core):     {:>8.1} | {:>8.1} | {:+.1}%",
            p.steady_cpu_pct,
            t.steady_cpu_pct,
            pct(p.steady_cpu_pct, t.steady_cpu_pct)
        );
        println!(
            "  steady CPU, complete beats: {:>5.1} | {:>8.1} | {:+.1}%   (as before decision 75)",
            p.steady_full_cpu_pct,
            t.steady_full_cpu_pct,
            pct(p.steady_full_cpu_pct, t.steady_full_cpu_pct)
        );
        println!(
            "  RSS idle / full (MiB):   {:>4.0} / {:<4.0} | {:>4.0} / {:<4.0}",
            p.rss_idle_mib, p.rss_full_mib, t.rss_idle_mib, t.rss_full_mib
        );
    }
    Ok(())
}

async fn run(
    bin: &Path,
    mode: Mode,
    n_agents: usize,
    n_instances: usize,
    concurrency: usize,
    idle_secs: u64,
) -> Result<Figures> {
    let mut figures = Figures::default();
    let dir = tempfile::Builder::new()
        .prefix("mofang-bench-")
        .tempdir_in("/var/tmp")?;
    let (rest, grpc) = (free_port()?, free_port()?);
    let pki = match mode {
        Mode::Plain => None,
        Mode::Tls => Some(mofang_tests::pki::TestPki::new()?),
    };
    let tls_section = match &pki {
        None => "[tls]\ndisable = true\n".to_owned(),
        Some(p) => p.scheduler_toml(),
    };
    std::fs::write(
        dir.path().join("s.toml"),
        format!(
            "rest_listen = \"127.0.0.1:{rest}\"\ngrpc_listen = \"127.0.0.1:{grpc}\"\ndata_dir = \"{}\"\n{tls_section}",
            dir.path().join("data").display()
        ),
    )?;
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(dir.path().join("s.toml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(
            dir.path().join("scheduler.log"),
        )?))
        .spawn()?;
    let pid = child.id();
    let token_path = dir.path().join("data/admin.token");
    wait_for(&token_path).await?;
    let token = std::fs::read_to_string(&token_path)?.trim().to_owned();
    let scheme = if pki.is_some() { "https" } else { "http" };
    let base = format!("{scheme}://127.0.0.1:{rest}");

    let stop = tokio_util::sync::CancellationToken::new();
    let beats = Arc::new(AtomicU64::new(0));
    let statuses = Arc::new(AtomicU64::new(0));
    let full_beats = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut handles = Vec::new();
    for i in 0..n_agents {
        let (ep, b, st, s) = (
            format!("{scheme}://127.0.0.1:{grpc}"),
            beats.clone(),
            statuses.clone(),
            stop.clone(),
        );
        let zone = ["z1", "z2", "z3"][i % 3].to_owned();
        let node = format!("bench-{i:04}");
        let tls = match &pki {
            None => None,
            Some(p) => {
                use tonic::transport::{Certificate, ClientTlsConfig, Identity};
                let own = p.ca().issue(
                    &mofang_common::tls::pki::CertKind::Agent(node.clone()),
                    &[],
                    2,
                )?;
                Some(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(p.ca().cert_pem()))
                        .identity(Identity::from_pem(&own.cert_pem, &own.key_pem))
                        .domain_name(mofang_common::tls::SERVER_NAME),
                )
            }
        };
        let fb = full_beats.clone();
        handles.push(tokio::spawn(agent(ep, tls, node, zone, b, st, fb, s)));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut http = reqwest::Client::builder().pool_max_idle_per_host(concurrency);
    if let Some(p) = &pki {
        http = http.use_preconfigured_tls(mofang_common::tls::client_config(&p.ca_file(), None)?);
    }
    let http = http.build()?;
    let api = Client::new(base.clone(), http.clone()).with_token(Some(token.clone()));
    // Wait until every node is registered and heartbeating.
    let t0 = Instant::now();
    loop {
        // A refusal counts no node ready (its JSON error is no list of nodes).
        let ready = match api.nodes().await {
            Ok(nodes) => nodes.iter().filter(|n| n.state == NodeState::Ready).count(),
            Err(client::Error::Api { .. }) => 0,
            Err(e) => return Err(e.into()),
        };
        if ready == n_agents {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("only {ready}/{n_agents} nodes ready after 60s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Phase 1: heartbeats only, after SETTLE: the last agents' handshakes, registrations and
    // first assignment streams are not heartbeats (with TLS each of 1,000 connections costs
    // a mutual handshake), so they stay out of the window; the settle window is printed.
    let (cpu_s, w_s) = (cpu_seconds(pid)?, Instant::now());
    tokio::time::sleep(SETTLE).await;
    println!(
        "settling after the last agent was ready: scheduler CPU {:.1}% of one core over {:.0} s",
        (cpu_seconds(pid)? - cpu_s) / w_s.elapsed().as_secs_f64() * 100.0,
        SETTLE.as_secs_f64()
    );
    let (cpu0, b0, w0) = (
        cpu_seconds(pid)?,
        beats.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let (cpu1, b1, wall) = (
        cpu_seconds(pid)?,
        beats.load(Ordering::Relaxed),
        w0.elapsed().as_secs_f64(),
    );
    let hb_rate = (b1 - b0) as f64 / wall;
    let hb_core = (cpu1 - cpu0) / wall * 100.0;
    let (rss_idle, _) = rss_mib(pid)?;
    figures.heartbeat_cpu_pct = hb_core;
    figures.heartbeat_ms_cpu = (cpu1 - cpu0) * 1000.0 / (b1 - b0).max(1) as f64;
    figures.rss_idle_mib = rss_idle;
    println!("heartbeats: {hb_rate:.0}/s handled; scheduler CPU {hb_core:.1}% of one core ({:.3} ms CPU per heartbeat); RSS {rss_idle:.0} MiB", (cpu1 - cpu0) * 1000.0 / (b1 - b0).max(1) as f64);

    // Phase 2: creations through the REST API, heartbeats continuing.
    let next = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n_instances)));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let own_cpu = cpu_seconds(std::process::id())?;
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (http, base, token, next, lat, errors) = (
            http.clone(),
            base.clone(),
            token.clone(),
            next.clone(),
            lat.clone(),
            errors.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n_instances as u64 {
                    break;
                }
                let engine = if i % 2 == 0 { ("mariadb", "10.11") } else { ("redis", "7.0") };
                let body = json!({"name": format!("b{i}"), "engine": engine.0, "version": engine.1, "replicas": 1,
                                  "resources": {"cpu": 0.5, "memory": 512, "disk": 1024}});
                let t = Instant::now();
                let r = http.post(format!("{base}/v1/instances")).bearer_auth(&token).json(&body).send().await;
                // The answer is read to its end, as a client does: a response dropped unread
                // may cost its connection (a new TCP, and TLS, handshake for the next).
                let created = match r {
                    Ok(r) => r.status().as_u16() == 201 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                let d = t.elapsed();
                if created {
                    if let Ok(mut l) = lat.lock() {
                        l.push(d);
                    }
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu2 = cpu_seconds(pid)?;
    let own_cpu = cpu_seconds(std::process::id())? - own_cpu;
    let mut l = lat.lock().map(|l| l.clone()).unwrap_or_default();
    l.sort();
    let ok = l.len();
    let (rss, hwm) = rss_mib(pid)?;
    println!(
        "creations: {ok} committed in {secs:.2}s = {:.0} placements/s ({} members); {} errors",
        ok as f64 / secs,
        ok * 2,
        errors.load(Ordering::Relaxed)
    );
    println!(
        "API latency (POST /v1/instances): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&l, 0.5).as_secs_f64() * 1000.0,
        percentile(&l, 0.99).as_secs_f64() * 1000.0,
        l.last().copied().unwrap_or_default().as_secs_f64() * 1000.0
    );
    // The machine's cores are shared with this process (64 HTTP clients and the simulated
    // agents), so CPU per placement is the figure that does not depend on the share.
    println!(
        "scheduler CPU during creations: {:.0}% of one core ({:.3} ms CPU per placement); \
         this benchmark's own clients and agents: {:.0}% of one core",
        (cpu2 - cpu1) / secs * 100.0,
        (cpu2 - cpu1) * 1000.0 / ok.max(1) as f64,
        own_cpu / secs * 100.0
    );
    figures.placements_per_s = ok as f64 / secs;
    figures.p50_ms = percentile(&l, 0.5).as_secs_f64() * 1000.0;
    figures.p99_ms = percentile(&l, 0.99).as_secs_f64() * 1000.0;
    figures.create_cpu_pct = (cpu2 - cpu1) / secs * 100.0;
    figures.create_ms_cpu = (cpu2 - cpu1) * 1000.0 / ok.max(1) as f64;
    figures.bench_cpu_pct = own_cpu / secs * 100.0;
    println!("scheduler RSS: {rss:.0} MiB now, {hwm:.0} MiB peak");

    // Phase 3: steady state with every instance placed: each heartbeat now carries a status
    // for every member on its node, and the failover loop watches every instance.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let d3 = DESIRED.load(Ordering::Relaxed);
    let (cpu3, b3, s3, w3) = (
        cpu_seconds(pid)?,
        beats.load(Ordering::Relaxed),
        statuses.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let (cpu4, b4, s4, wall) = (
        cpu_seconds(pid)?,
        beats.load(Ordering::Relaxed),
        statuses.load(Ordering::Relaxed),
        w3.elapsed().as_secs_f64(),
    );
    let d4 = DESIRED.load(Ordering::Relaxed);
    let (rss_full, _) = rss_mib(pid)?;
    figures.steady_cpu_pct = (cpu4 - cpu3) / wall * 100.0;
    figures.rss_full_mib = rss_full;
    println!(
        "steady state with {ok} instances, changed statuses only (decision 75): {:.0} heartbeats/s carrying {:.0} member statuses/s ({:.0} desired states/s sent to the agents); scheduler CPU {:.1}% of one core (heartbeats + failover checks); RSS {rss_full:.0} MiB",
        (b4 - b3) as f64 / wall,
        (s4 - s3) as f64 / wall,
        (d4 - d3) as f64 / wall,
        (cpu4 - cpu3) / wall * 100.0
    );
    // The same, every heartbeat carrying every status (as before decision 75).
    full_beats.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (cpu5, b5, s5, w5) = (
        cpu_seconds(pid)?,
        beats.load(Ordering::Relaxed),
        statuses.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let (cpu6, b6, s6, wall) = (
        cpu_seconds(pid)?,
        beats.load(Ordering::Relaxed),
        statuses.load(Ordering::Relaxed),
        w5.elapsed().as_secs_f64(),
    );
    figures.steady_full_cpu_pct = (cpu6 - cpu5) / wall * 100.0;
    println!(
        "steady state, every status in every heartbeat: {:.0} heartbeats/s carrying {:.0} member statuses/s; scheduler CPU {:.1}% of one core",
        (b6 - b5) as f64 / wall,
        (s6 - s5) as f64 / wall,
        figures.steady_full_cpu_pct
    );
    println!(
        "steady CPU, changed-only vs complete heartbeats: {:.1} % vs {:.1} % of one core ({:+.0} %)",
        figures.steady_cpu_pct,
        figures.steady_full_cpu_pct,
        if figures.steady_full_cpu_pct > 0.0 {
            (figures.steady_cpu_pct / figures.steady_full_cpu_pct - 1.0) * 100.0
        } else {
            0.0
        }
    );

    // Everything committed is durable: a restart sees it.
    stop.cancel();
    let _ = child.kill();
    let _ = child.wait();
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(dir.path().join("s.toml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut seen = 0;
    for _ in 0..100 {
        match api.instances(None).await {
            Ok(v) => {
                seen = v.len();
                break;
            }
            // An answer, but a refusal (its JSON error is no list of instances): none seen.
            Err(client::Error::Api { .. }) => break,
            // Not up yet, or no answer that parses: again.
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("after kill -9 and restart: {seen} of {ok} acknowledged instances present");
    let _ = child.kill();
    let _ = child.wait();
    if seen != ok {
        bail!("acknowledged instances lost: {seen} of {ok}");
    }
    for h in handles {
        h.abort();
    }
    Ok(figures)
}

async fn wait_for(p: &Path) -> Result<()> {
    for _ in 0..100 {
        if p.exists() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("scheduler did not start")
}

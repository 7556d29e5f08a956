//! Provisioning latency benchmark (`make bench-provision`, issue 14 point 3): how long a new
//! MariaDB or Redis instance of 1 primary + 2 replicas takes from `POST /v1/instances` to
//! `ready`, phase by phase, next to a bare `docker run` of the same image until its server
//! answers a ping, in the same run. Prints figures; asserts no timing.
//!
//! Usage: bench_provision [--runs N]   (default 5 per engine)
//!
//! Bare anchor: `docker run -d` of the image with its default config, then the ping a user
//! would run in it (`mariadb-admin ping`, `redis-cli ping`) every 50 ms through the Engine
//! API's exec (the call `docker exec` makes, without a CLI process per poll), once without
//! limits (the anchor) and once with the members' limits (0.5 CPU, 384 MiB).
//!
//! Mofang: a scheduler and three agents with the daemons' default timers (as `make demo`),
//! and per run one instance created and deleted (its containers gone before the next run).
//! Each phase is the first time it was seen, counted from the moment the POST was sent:
//! - API answered: the 201; placement and the store write happen inside the request;
//! - placement decided: the `placed` events' time (the scheduler stamps them just before it
//!   writes the instance, on this machine's clock, ms): committed by the API's answer;
//! - containers created: the members' containers exist (Docker, polled every 100 ms);
//! - answering, probed: one protocol round trip from the bench to the address the API
//!   reports for the member (MariaDB's greeting, Redis' reply to PING), every 25 ms: the
//!   bare anchor's question;
//! - answering, reported: the member's `observed_role` is known in the API. The agent
//!   reports that only after its own ping passed (tried every 250 ms), the role step ran (a
//!   replica: seeded from the primary and pointed at it) and the server was observed;
//! - replication established: every replica `healthy` in the API (the agent sees it
//!   replicating from the primary it was told to follow);
//! - semi-sync on (MariaDB): the primary's `Rpl_semi_sync_master_status` is ON with every
//!   replica counted in `Rpl_semi_sync_master_clients`, asked as the application account;
//! - instance ready: the API's `status` (polled every 25 ms).

use anyhow::{bail, Context, Result};
use futures::future::join_all;
use mofang_agent::runtime::{ContainerRuntime, DockerRuntime};
use mofang_common::{labels, EngineKind};
use mofang_scheduler::client::{Client, LogRange};
use mofang_scheduler::cluster::InstanceView;
use mofang_tests::cluster::{binaries, Timings};
use mofang_tests::scenario::{docker_cli, instance_spec, loadavg, mysql, percentile, Env};
use mofang_tests::{eventually, test_label, unique_name};
use mysql_async::prelude::Queryable;
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{interval, Interval, MissedTickBehavior};

/// Replicas besides the primary.
const REPLICAS: u32 = 2;
/// What `scenario::spec` gives each member (0.5 CPU, 384 MiB), for the bare anchor's second
/// variant.
const MEMBER_LIMITS: [&str; 4] = ["--cpus", "0.5", "--memory", "384m"];
const API_POLL: Duration = Duration::from_millis(25);
const PROBE_POLL: Duration = Duration::from_millis(25);
const CONTAINER_POLL: Duration = Duration::from_millis(100);
const BARE_POLL: Duration = Duration::from_millis(50);
/// One probe's connect and answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// A start or creation not done by then has failed.
const LIMIT: Duration = Duration::from_secs(180);

fn ticker(period: Duration) -> Interval {
    let mut t = interval(period);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

// ---------------------------------------------------------------------------------------
// Bare anchor

/// A container of the bare anchor, removed with its volumes when dropped: after its run, on
/// an error or on Ctrl-C.
struct BareContainer(String);

impl Drop for BareContainer {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", "-v", &self.0])
            .output();
    }
}

/// The ping a user runs in the container. `mariadb-admin ping` exits 0 once the server
/// answers (even if it refuses the account); the Redis image's default config has no
/// password, so `redis-cli ping` gets PONG from inside.
fn ping_command(engine: EngineKind) -> &'static [&'static str] {
    match engine {
        EngineKind::Mariadb => &["mariadb-admin", "ping"],
        EngineKind::Redis => &["redis-cli", "ping"],
    }
}

/// `docker run -d` of the engine's image (with `limits`) to the first ping that succeeds.
async fn bare_start(rt: &DockerRuntime, engine: EngineKind, limits: &[&str]) -> Result<Duration> {
    let image = engine.image(engine.supported_versions()[0]);
    let name = unique_name("bare");
    let (k, v) = test_label();
    let label = format!("{k}={v}");
    let mut args = vec!["run", "-d", "--name", &name, "--label", &label];
    args.extend_from_slice(limits);
    args.push(&image);
    // Before the run: a run that fails half-way leaves nothing behind either.
    let _container = BareContainer(name.clone());
    let t0 = Instant::now();
    docker_cli(&args).with_context(|| format!("docker run of {image}"))?;
    let mut tick = ticker(BARE_POLL);
    loop {
        tick.tick().await;
        let out = rt.exec(&name, ping_command(engine), None).await;
        if let Ok(o) = &out {
            if o.exit_code == 0 && (engine == EngineKind::Mariadb || o.stdout.trim() == "PONG") {
                return Ok(t0.elapsed());
            }
        }
        if t0.elapsed() > LIMIT {
            bail!("bare {image} did not answer its ping within {LIMIT:?}: {out:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Mofang

/// A time per member.
type PerMember = BTreeMap<String, Duration>;

/// When each phase of one creation was first seen, from the moment the POST was sent.
#[derive(Debug)]
struct Creation {
    api: Duration,
    placed: Duration,
    primary: String,
    created: PerMember,
    probed: PerMember,
    reported: PerMember,
    /// Replicas only.
    replicating: PerMember,
    /// MariaDB only.
    semi_sync: Option<Duration>,
    ready: Duration,
}

/// One phase of a creation: its name in the table, a short one for the per-run line.
struct Phase {
    name: &'static str,
    short: &'static str,
    at: Duration,
}

impl Phase {
    fn new(name: &'static str, short: &'static str, at: Duration) -> Self {
        Phase { name, short, at }
    }
}

impl Creation {
    /// The phases in order.
    fn phases(&self) -> Vec<Phase> {
        let all = |m: &PerMember| m.values().max().copied().unwrap_or_default();
        let primary = |m: &PerMember| m.get(&self.primary).copied().unwrap_or_default();
        let mut p = vec![
            Phase::new("API answered (201)", "api", self.api),
            Phase::new("placement decided (`placed` events)", "placed", self.placed),
            Phase::new(
                "primary's container created",
                "primary-container",
                primary(&self.created),
            ),
            Phase::new("all containers created", "containers", all(&self.created)),
            Phase::new(
                "primary answering, probed",
                "primary-probed",
                primary(&self.probed),
            ),
            Phase::new("all answering, probed", "probed", all(&self.probed)),
            Phase::new(
                "primary answering, agent's report",
                "primary-reported",
                primary(&self.reported),
            ),
            Phase::new(
                "all answering, agents' reports",
                "reported",
                all(&self.reported),
            ),
            Phase::new(
                "replication established (replicas healthy)",
                "replicating",
                all(&self.replicating),
            ),
        ];
        if let Some(at) = self.semi_sync {
            p.push(Phase::new(
                "semi-sync on (every replica a client)",
                "semi-sync",
                at,
            ));
        }
        p.push(Phase::new("instance ready", "ready", self.ready));
        p
    }
}

/// What the API poll saw.
#[derive(Debug, Default)]
struct ApiSeen {
    reported: PerMember,
    replicating: PerMember,
    ready: Duration,
}

/// Polls the instance every 25 ms until it is ready, sharing each view with the probes.
async fn watch_api(
    c: &Client,
    name: &str,
    t0: Instant,
    view: watch::Sender<InstanceView>,
) -> Result<ApiSeen> {
    let mut seen = ApiSeen::default();
    let mut tick = ticker(API_POLL);
    loop {
        tick.tick().await;
        let inst = c
            .instance(name)
            .await
            .with_context(|| format!("instance {name}"))?;
        let at = t0.elapsed();
        for m in &inst.members {
            if !matches!(m.observed_role.as_str(), "" | "unknown") {
                seen.reported.entry(m.id.clone()).or_insert(at);
            }
            if m.role == "replica" && m.healthy {
                seen.replicating.entry(m.id.clone()).or_insert(at);
            }
        }
        let ready = inst.status == "ready";
        view.send_replace(inst);
        if ready {
            seen.ready = at;
            return Ok(seen);
        }
        if at > LIMIT {
            bail!("not ready within {LIMIT:?}: {:?}", *view.borrow());
        }
    }
}

/// Polls Docker every 100 ms until every member's container exists.
async fn watch_containers(
    rt: &DockerRuntime,
    name: &str,
    members: usize,
    t0: Instant,
) -> Result<PerMember> {
    let mut created = PerMember::new();
    let mut tick = ticker(CONTAINER_POLL);
    while created.len() < members {
        tick.tick().await;
        let found = rt
            .list(&[(labels::INSTANCE, name)])
            .await
            .context("listing the instance's containers")?;
        let at = t0.elapsed();
        for c in found {
            if let Some(m) = c.labels.get(labels::MEMBER) {
                created.entry(m.clone()).or_insert(at);
            }
        }
        if at > LIMIT {
            bail!("containers not all created within {LIMIT:?}: {created:?}");
        }
    }
    Ok(created)
}

/// One protocol round trip: MariaDB greets on connect; Redis answers PING (`-NOAUTH` counts,
/// the server answers; `-LOADING` does not).
async fn answers(engine: EngineKind, addr: &str) -> bool {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        if engine == EngineKind::Redis {
            s.write_all(b"PING\r\n").await?;
        }
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).await?;
        std::io::Result::Ok(n > 0 && !buf[..n].starts_with(b"-LOADING"))
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, probe).await,
        Ok(Ok(true))
    )
}

/// Probes every member at the address the API reports, every 25 ms, until all answer.
async fn watch_probes(
    engine: EngineKind,
    view: watch::Receiver<InstanceView>,
    members: usize,
    t0: Instant,
) -> Result<PerMember> {
    let mut answered = PerMember::new();
    let mut tick = ticker(PROBE_POLL);
    while answered.len() < members {
        tick.tick().await;
        let targets: Vec<(String, String)> = view
            .borrow()
            .members
            .iter()
            .filter(|m| !m.address.is_empty() && !answered.contains_key(&m.id))
            .map(|m| (m.id.clone(), m.address.clone()))
            .collect();
        let probed = join_all(targets.into_iter().map(|(id, addr)| async move {
            let ok = answers(engine, &addr).await;
            (id, ok, t0.elapsed())
        }))
        .await;
        for (id, ok, at) in probed {
            if ok {
                answered.insert(id, at);
            }
        }
        if t0.elapsed() > LIMIT {
            bail!("servers not all answering within {LIMIT:?}: {answered:?}");
        }
    }
    Ok(answered)
}

/// The primary's semi-sync status and clients, on a connection kept between calls.
async fn semi_sync_status(
    conn: &mut Option<mysql_async::Conn>,
    addr: &str,
    password: &str,
) -> Result<(bool, u32)> {
    tokio::time::timeout(Duration::from_secs(1), async {
        let c = match conn {
            Some(c) => c,
            None => conn.insert(mysql(addr, password).await?),
        };
        let rows: Vec<(String, String)> = c
            .query("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_%'")
            .await?;
        let get = |k: &str| {
            rows.iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
        };
        anyhow::Ok((
            get("Rpl_semi_sync_master_status") == Some("ON"),
            get("Rpl_semi_sync_master_clients")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        ))
    })
    .await
    .context("no answer within 1 s")?
}

/// MariaDB: asks the primary (as the application account) every 25 ms until semi-sync is on
/// with every replica counted. Redis has no semi-sync: None.
async fn watch_semi_sync(
    env: &Env,
    name: &str,
    engine: EngineKind,
    view: watch::Receiver<InstanceView>,
    t0: Instant,
) -> Result<Option<Duration>> {
    if engine != EngineKind::Mariadb {
        return Ok(None);
    }
    let password = env.app_password(name).await?;
    let mut conn = None;
    let mut last = "the primary's address is not reported yet".to_owned();
    let mut tick = ticker(PROBE_POLL);
    loop {
        tick.tick().await;
        let primary = view.borrow().primary.clone();
        if !primary.is_empty() {
            match semi_sync_status(&mut conn, &primary, &password).await {
                Ok((true, clients)) if clients >= REPLICAS => return Ok(Some(t0.elapsed())),
                Ok((on, clients)) => last = format!("status on: {on}, {clients} clients"),
                Err(e) => {
                    conn = None;
                    last = format!("{e:#}");
                }
            }
        }
        if t0.elapsed() > LIMIT {
            bail!("semi-sync not on within {LIMIT:?}: {last}");
        }
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Creates instance `name` and watches it until every phase was seen.
async fn create(env: &Env, rt: &DockerRuntime, engine: EngineKind, name: &str) -> Result<Creation> {
    let c = env.client();
    let body = instance_spec(name, engine.as_str(), REPLICAS)?;
    let sent_ms = unix_ms();
    let t0 = Instant::now();
    let answer = c.create_instance(&body).await;
    let api = t0.elapsed();
    let inst = answer.with_context(|| format!("create {name}"))?;
    let members = inst.members.len();
    let primary = inst
        .members
        .iter()
        .find(|m| m.role == "primary")
        .context("no primary member")?
        .id
        .clone();
    let (tx, rx) = watch::channel(inst);
    let (api_seen, created, probed, semi_sync) = tokio::try_join!(
        watch_api(&c, name, t0, tx),
        watch_containers(rt, name, members, t0),
        watch_probes(engine, rx.clone(), members, t0),
        watch_semi_sync(env, name, engine, rx, t0),
    )?;
    let events = c
        .events(Some(name), LogRange::default())
        .await
        .context("events")?;
    let placed_ms = events
        .iter()
        .filter(|e| e.kind == "placed")
        .map(|e| e.at_ms)
        .max()
        .context("no placed event")?;
    Ok(Creation {
        api,
        placed: Duration::from_millis((placed_ms - sent_ms).max(0) as u64),
        primary,
        created,
        probed,
        reported: api_seen.reported,
        replicating: api_seen.replicating,
        semi_sync,
        ready: api_seen.ready,
    })
}

/// Deletes the instance and waits until its containers are gone.
async fn delete(env: &Env, rt: &DockerRuntime, name: &str) -> Result<()> {
    env.client()
        .delete_instance(name)
        .await
        .with_context(|| format!("delete {name}"))?;
    eventually("containers removed", Duration::from_secs(120), || async {
        let left = rt.list(&[(labels::INSTANCE, name)]).await?;
        if left.is_empty() {
            Ok(())
        } else {
            bail!("{} containers left", left.len())
        }
    })
    .await
    .with_context(|| format!("deleting {name}"))
}

// ---------------------------------------------------------------------------------------

/// One engine's samples.
struct Samples {
    engine: EngineKind,
    bare: Vec<Duration>,
    bare_limited: Vec<Duration>,
    creations: Vec<Creation>,
}

fn p50_p99(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (percentile(&v, 0.50), percentile(&v, 0.99))
}

fn summary(s: &Samples) {
    let n = s.creations.len();
    println!(
        "\n{}, 1 primary + {REPLICAS} replicas, {n} runs (nearest rank; p99 of {n} runs is the slowest)",
        s.engine
    );
    println!("| phase | p50 | p99 |");
    println!("| --- | --- | --- |");
    let row = |name: &str, v: Vec<Duration>| {
        let (p50, p99) = p50_p99(v);
        println!("| {name} | {} | {} |", secs(p50), secs(p99));
        p50
    };
    let bare = row("bare `docker run` to ping, no limits", s.bare.clone());
    let limited = row(
        "bare `docker run` to ping, members' limits",
        s.bare_limited.clone(),
    );
    let names: Vec<&str> = s
        .creations
        .first()
        .map(|c| c.phases().iter().map(|p| p.name).collect())
        .unwrap_or_default();
    for (i, name) in names.into_iter().enumerate() {
        let v = s
            .creations
            .iter()
            .filter_map(|c| c.phases().get(i).map(|p| p.at))
            .collect();
        row(name, v);
    }
    let (ready, _) = p50_p99(s.creations.iter().map(|c| c.ready).collect());
    let ratio = |anchor: Duration| {
        let r = ready.as_secs_f64() / anchor.as_secs_f64().max(f64::EPSILON);
        format!("{r:.2}× ({})", if r <= 1.5 { "met" } else { "not met" })
    };
    println!(
        "instance ready p50 / bare start+ping p50 (target ≤ 1.5×): {} against the bare run without limits, {} against the bare run with the members' limits",
        ratio(bare),
        ratio(limited)
    );
}

async fn run(runs: usize) -> Result<()> {
    println!(
        "provisioning benchmark: {runs} runs per engine; machine: {} cores; load average at start: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    let rt = mofang_tests::docker().await;
    let engines = [EngineKind::Mariadb, EngineKind::Redis];
    let mut samples: Vec<Samples> = engines
        .iter()
        .map(|&engine| Samples {
            engine,
            bare: Vec::new(),
            bare_limited: Vec::new(),
            creations: Vec::new(),
        })
        .collect();
    for s in &mut samples {
        for i in 1..=runs {
            let bare = bare_start(&rt, s.engine, &[]).await?;
            let limited = bare_start(&rt, s.engine, &MEMBER_LIMITS).await?;
            println!(
                "  bare {} run {i}: {} without limits, {} with the members' limits",
                s.engine,
                secs(bare),
                secs(limited)
            );
            s.bare.push(bare);
            s.bare_limited.push(limited);
        }
    }

    let env = Env::start_timed(3, "", &Timings::PRODUCTION).await?;
    println!(
        "Mofang: scheduler and 3 agents from {}, the daemons' default timers (heartbeats every {} ms); members 0.5 CPU, 384 MiB",
        binaries()?.display(),
        Timings::PRODUCTION.heartbeat_interval_ms
    );
    for s in &mut samples {
        for i in 1..=runs {
            let name = unique_name("prov");
            let c = create(&env, &rt, s.engine, &name)
                .await
                .with_context(|| format!("{} run {i} ({name})", s.engine))?;
            let line: Vec<String> = c
                .phases()
                .iter()
                .map(|p| format!("{} {:.2}", p.short, p.at.as_secs_f64()))
                .collect();
            println!("  {} run {i} (s): {}", s.engine, line.join(", "));
            s.creations.push(c);
            delete(&env, &rt, &name).await?;
        }
    }
    for s in &samples {
        summary(s);
    }
    println!("load average at the end: {}", loadavg());
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs = match args.as_slice() {
        [] => 5,
        [flag, n] if flag == "--runs" => n.parse().with_context(|| format!("--runs {n}"))?,
        other => bail!("usage: bench-provision [--runs N]; got {other:?}"),
    };
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    // Ctrl-C drops the run in progress: the bare container, the daemons and their
    // containers go with it.
    tokio::select! {
        r = run(runs) => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    }
}

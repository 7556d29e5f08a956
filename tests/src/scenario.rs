//! A whole cluster for end-to-end tests: scheduler, agents on one Docker network (one zone
//! each), REST helpers, and a MariaDB client for the application account.

use crate::cluster::{AgentProcess, SchedulerProcess, TestNetwork, Timings};
use crate::faults::Link;
use crate::{docker, eventually, unique_name};
use anyhow::{bail, Context, Result};
use mofang_scheduler::client::{LogRange, NewOperation};
use mofang_scheduler::cluster::{InstanceView, MemberView};
use mofang_scheduler::model::Event;
use mofang_scheduler::ops::Operation;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

/// A scheduler and agents (one zone each: a, b, c, d, ...) on one test network, each agent
/// reaching the scheduler through its own [`Link`] (cut to partition it); or, from
/// [`Env::start_ha`], three schedulers on one Consul that every agent knows directly.
pub struct Env {
    /// The scheduler (the first of an HA environment).
    pub sched: SchedulerProcess,
    /// The other schedulers of an HA environment; empty with one scheduler.
    pub peers: Vec<SchedulerProcess>,
    /// The agents, in zone order.
    pub agents: Vec<AgentProcess>,
    /// Each agent's link to the scheduler (none in an HA environment).
    pub links: Vec<Link>,
    /// The members' network.
    pub net: TestNetwork,
    /// HTTP client.
    pub http: reqwest::Client,
    /// Admin token.
    pub token: String,
}

impl Env {
    /// `nodes` agents and a scheduler with default settings.
    pub async fn start(nodes: usize) -> Result<Env> {
        Self::start_with(nodes, "").await
    }

    /// `nodes` agents and a scheduler with `sched_extra` appended to its config.
    pub async fn start_with(nodes: usize, sched_extra: &str) -> Result<Env> {
        Self::start_timed(nodes, sched_extra, &Timings::FAST).await
    }

    /// [`Env::start_with`] with the heartbeat interval, node_ttl and lease of `timings`.
    pub async fn start_timed(nodes: usize, sched_extra: &str, timings: &Timings) -> Result<Env> {
        Self::start_sized(nodes, sched_extra, timings, 4096).await
    }

    /// [`Env::start_timed`] with agents whose data disk has `disk_mib` (a benchmark's large
    /// dataset).
    pub async fn start_sized(
        nodes: usize,
        sched_extra: &str,
        timings: &Timings,
        disk_mib: u64,
    ) -> Result<Env> {
        Self::start_sized_with(nodes, sched_extra, "", timings, disk_mib).await
    }

    /// As [`Env::start_sized`], each agent's config also holding `agent_extra`.
    pub async fn start_sized_with(
        nodes: usize,
        sched_extra: &str,
        agent_extra: &str,
        timings: &Timings,
        disk_mib: u64,
    ) -> Result<Env> {
        let extras = vec![agent_extra.to_owned(); nodes];
        Self::start_each_with(sched_extra, &extras, timings, disk_mib).await
    }

    /// One agent per entry of `agent_extras` (zones a, b, c, ...), each config also holding its
    /// entry: hosts that differ, e.g. one on Docker and two on containerd.
    pub async fn start_each_with(
        sched_extra: &str,
        agent_extras: &[String],
        timings: &Timings,
        disk_mib: u64,
    ) -> Result<Env> {
        let nodes = agent_extras.len();
        let _ = docker().await;
        let net = TestNetwork::create(&unique_name("net"))?;
        let sched = SchedulerProcess::start_timed(sched_extra, timings)?;
        let mut agents = Vec::new();
        let mut links = Vec::new();
        for (z, agent_extra) in ["a", "b", "c", "d", "e"].iter().zip(agent_extras) {
            let link = Link::start(&sched.grpc).await?;
            // 2 GiB of memory to place members in, unless the entry says how much.
            let memory = if agent_extra.lines().any(|l| l.starts_with("memory_mib")) {
                ""
            } else {
                "memory_mib = 2048\n"
            };
            let extra = format!("labels = {{ zone = \"{z}\" }}\ncpu = 2.0\n{memory}{agent_extra}");
            agents.push(AgentProcess::start_secure(
                &unique_name("node"),
                std::slice::from_ref(&link.endpoint),
                sched.pki.as_deref(),
                &net.name,
                disk_mib,
                &extra,
                timings,
            )?);
            links.push(link);
        }
        let token = sched.admin_token()?;
        let http = sched.http.clone();
        let env = Env {
            sched,
            peers: Vec::new(),
            agents,
            links,
            net,
            http,
            token,
        };
        env.wait_ready_nodes(nodes).await?;
        Ok(env)
    }

    /// Three schedulers on the Consul at `consul` (one store prefix, session TTL 10 s,
    /// lock-delay 1 s, one configured admin token), `sched_extra` appended to each config,
    /// and `nodes` agents that know all three. No links: no partitions here.
    pub async fn start_ha(
        nodes: usize,
        consul: &str,
        sched_extra: &str,
        timings: &Timings,
    ) -> Result<Env> {
        let _ = docker().await;
        let net = TestNetwork::create(&unique_name("net"))?;
        let token = format!("{}-admin-token", unique_name("ha"));
        let config = format!(
            "store = \"consul\"\n{sched_extra}\n[consul]\naddress = \"{consul}\"\n\
             prefix = \"{}/\"\nsession_ttl_secs = 10\nlock_delay_ms = 1000\n\
             [[tokens]]\nname = \"admin\"\nrole = \"admin\"\nsecret = \"{token}\"\n",
            unique_name("mofang")
        );
        // One CA and one root keyring for the three (docs/security.md, docs/secrets.md):
        // agents and followers check any scheduler's certificate.
        let pki = crate::pki::TestPki::new()?;
        let mut scheds: Vec<SchedulerProcess> = Vec::new();
        for n in 0..3 {
            // Each one its own copy of the first one's file, as an operator installs them:
            // a shared path would carry a root rotation to all without the copy it needs.
            let keyring = match scheds.first() {
                Some(s) => {
                    let copy = s.keyring_file().with_file_name(format!("keyring-{n}.json"));
                    std::fs::copy(s.keyring_file(), &copy)?;
                    format!("keyring_file = \"{}\"\n", copy.display())
                }
                None => String::new(),
            };
            scheds.push(SchedulerProcess::start_with_pki(
                &format!("{keyring}{config}"),
                timings,
                Some(pki.clone()),
            )?);
        }
        let endpoints: Vec<String> = scheds.iter().map(|s| s.grpc.clone()).collect();
        let mut agents = Vec::new();
        for z in ["a", "b", "c", "d", "e"].iter().take(nodes) {
            let extra = format!("labels = {{ zone = \"{z}\" }}\ncpu = 2.0\nmemory_mib = 2048");
            agents.push(AgentProcess::start_secure(
                &unique_name("node"),
                &endpoints,
                scheds[0].pki.as_deref(),
                &net.name,
                4096,
                &extra,
                timings,
            )?);
        }
        let sched = scheds.remove(0);
        let env = Env {
            sched,
            peers: scheds,
            agents,
            links: Vec::new(),
            net,
            // A follower forwards to the leader; while the leader is changing, a forwarded
            // call can hang: the caller tries again.
            http: pki.http_client(Some(Duration::from_secs(10)))?,
            token,
        };
        env.leader(Duration::from_secs(60)).await?;
        env.wait_ready_nodes(nodes).await?;
        Ok(env)
    }

    /// Every scheduler: [`Env::sched`], then the [`Env::peers`].
    pub fn schedulers(&self) -> impl Iterator<Item = &SchedulerProcess> {
        std::iter::once(&self.sched).chain(&self.peers)
    }

    /// Scheduler `i` in [`Env::schedulers`] order.
    pub fn scheduler_mut(&mut self, i: usize) -> Result<&mut SchedulerProcess> {
        match i {
            0 => Ok(&mut self.sched),
            _ => self.peers.get_mut(i - 1).context("no such scheduler"),
        }
    }

    /// Index (in [`Env::schedulers`] order) of the scheduler whose `/v1/health` says it
    /// leads, waiting up to `limit` for one.
    pub async fn leader(&self, limit: Duration) -> Result<usize> {
        eventually("a scheduler leads", limit, || async {
            for (i, s) in self.schedulers().enumerate() {
                let c = mofang_scheduler::client::Client::new(s.rest.clone(), self.http.clone());
                let h = tokio::time::timeout(Duration::from_secs(2), c.health()).await;
                if matches!(h, Ok(Ok(h)) if h.leader) {
                    return Ok(i);
                }
            }
            bail!("no scheduler leads")
        })
        .await
    }

    /// A REST call, to the first scheduler that answers: one that is down or answers 503
    /// (it knows no leader, or cannot reach it: nothing was applied) is passed over for the
    /// next. A follower forwards the call to the leader and relays its answer.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let count = 1 + self.peers.len();
        for (i, s) in self.schedulers().enumerate() {
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", s.rest))
                .bearer_auth(&self.token);
            if let Some(b) = &body {
                req = req.json(b);
            }
            let last = i + 1 == count;
            let resp = match req.send().await {
                Ok(r) => r,
                Err(_) if !last => continue,
                Err(e) => return Err(e.into()),
            };
            let status = resp.status();
            if status == StatusCode::SERVICE_UNAVAILABLE && !last {
                continue;
            }
            let v = resp.json::<Value>().await.unwrap_or(Value::Null);
            return Ok((status, v));
        }
        bail!("no scheduler")
    }

    /// The typed API client of the first scheduler (a follower forwards to the leader),
    /// with the admin token. Unlike [`Env::call`] it does not pass over a scheduler that is
    /// down; it sends a request again while a new leader warms up.
    pub fn client(&self) -> mofang_scheduler::client::Client {
        mofang_scheduler::client::Client::new(self.sched.rest.clone(), self.http.clone())
            .with_token(Some(self.token.clone()))
    }

    /// See the test files.
    pub async fn wait_ready_nodes(&self, n: usize) -> Result<()> {
        eventually("nodes ready", Duration::from_secs(30), || async {
            let nodes = self.client().nodes().await?;
            let ready = nodes
                .iter()
                .filter(|n| n.state == mofang_scheduler::model::NodeState::Ready)
                .count();
            if ready == n {
                Ok(())
            } else {
                bail!("{ready}/{n} ready: {}", serde_json::to_string(&nodes)?)
            }
        })
        .await
    }

    /// `call` with the typed client of each scheduler in turn, as [`Env::call`] does: one
    /// that is down (the request is not sent) or answers 503 (it knows no leader, or cannot
    /// reach it: nothing was applied) is passed over for the next.
    pub async fn on_any<T, F, Fut>(&self, call: F) -> Result<T, mofang_scheduler::client::Error>
    where
        F: Fn(mofang_scheduler::client::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, mofang_scheduler::client::Error>>,
    {
        use mofang_scheduler::client::{Client, Error};
        let client = |s: &SchedulerProcess| {
            Client::new(s.rest.clone(), self.http.clone()).with_token(Some(self.token.clone()))
        };
        let passed_over = |r: &Result<T, Error>| match r {
            Err(Error::Send { .. }) => true,
            Err(e) => e.status() == Some(503),
            Ok(_) => false,
        };
        let mut r = call(client(&self.sched)).await;
        for s in &self.peers {
            if !passed_over(&r) {
                break;
            }
            r = call(client(s)).await;
        }
        r
    }

    /// The instance as the API shows it, through the typed client of the first scheduler
    /// that answers ([`Env::on_any`]).
    pub async fn instance(&self, name: &str) -> Result<InstanceView> {
        self.on_any(|c| async move { c.instance(name).await })
            .await
            .with_context(|| format!("instance {name}"))
    }

    /// Waits up to 120 s until the instance is `ready`; on failure prints why and the
    /// agents' logs.
    pub async fn ready(&self, name: &str) -> Result<InstanceView> {
        let r = eventually("instance ready", Duration::from_secs(120), || async {
            let v = self.instance(name).await?;
            if v.status == "ready" {
                Ok(v)
            } else {
                bail!("{}", serde_json::to_string(&v)?)
            }
        })
        .await;
        self.report_not_ready(name, &r);
        r
    }

    fn report_not_ready<T>(&self, name: &str, r: &Result<T>) {
        if let Err(e) = r {
            // The reason first: CI keeps the head and the tail of a failure's output, and the
            // agents' logs in between are long.
            eprintln!("---- {name} not ready ----\n{e:#}");
            for a in &self.agents {
                // Without the inventory refreshes every 10 s: they hide what happened.
                let log = a.log();
                let kept: Vec<&str> = log
                    .lines()
                    .filter(|l| !l.contains("metrics inventory refreshed"))
                    .collect();
                eprintln!("---- {} ----\n{}", a.node, kept.join("\n"));
            }
        }
    }
}

/// A create request with small resources.
pub fn spec(name: &str, engine: &str, replicas: u32) -> Value {
    let version = if engine == "redis" { "7.0" } else { "10.11" };
    json!({"name": name, "engine": engine, "version": version, "replicas": replicas,
           "resources": {"cpu": 0.5, "memory": 384, "disk": 512}})
}

/// [`spec`] as the API's own type, for [`Env::client`].
pub fn instance_spec(
    name: &str,
    engine: &str,
    replicas: u32,
) -> Result<mofang_scheduler::model::InstanceSpec> {
    Ok(serde_json::from_value(spec(name, engine, replicas))?)
}

/// The application account's connection to `addr` (database `app`).
pub async fn mysql(addr: &str, pass: &str) -> Result<mysql_async::Conn> {
    let (host, port) = addr.rsplit_once(':').context("address")?;
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(host.to_owned())
        .tcp_port(port.parse()?)
        .user(Some("app"))
        .pass(Some(pass.to_owned()))
        .db_name(Some("app"))
        .prefer_socket(false);
    Ok(mysql_async::Conn::new(opts).await?)
}

/// The outcome of a [`SetWriter`] run (Jepsen's set test): every id was attempted once.
#[derive(Debug, Default, Clone)]
pub struct SetOutcome {
    /// Ids whose write was acknowledged.
    pub acked: std::collections::BTreeSet<u64>,
    /// Ids attempted (acknowledged, refused or unknown).
    pub attempted: std::collections::BTreeSet<u64>,
    /// The longest time between two consecutive acknowledgements (the outage).
    pub longest_gap: Duration,
    /// When that gap ended (first acknowledgement after it).
    pub gap_end: Option<std::time::Instant>,
    /// Every acknowledgement in order: when, and by which primary address.
    pub acks: Vec<Ack>,
}

/// One acknowledged write of a [`SetWriter`].
#[derive(Debug, Clone)]
pub struct Ack {
    /// When the acknowledgement arrived.
    pub at: std::time::Instant,
    /// The primary address the writer was connected to.
    pub primary: std::sync::Arc<str>,
    /// The id written.
    pub id: u64,
}

/// Where a [`SetWriter`] learns the primary's address, asked on every (re)connect as a
/// client library would.
#[derive(Debug, Clone)]
pub enum PrimarySource {
    /// The instance's `primary` as the Mofang API reports it.
    Api {
        /// The typed API client.
        client: mofang_scheduler::client::Client,
        /// Instance name.
        instance: String,
    },
    /// One fixed `host:port`: a server run by hand (the anchors of `bench-operations`).
    Fixed(String),
    /// Redis Sentinel: `SENTINEL get-master-addr-by-name`, from the first sentinel that answers.
    Sentinel {
        /// Sentinel addresses (`host:port`).
        sentinels: Vec<String>,
        /// The monitored master's name.
        master: String,
    },
}

impl PrimarySource {
    /// The Mofang API of `env` for `instance`.
    pub fn api(env: &Env, instance: &str) -> Self {
        PrimarySource::Api {
            client: env.client(),
            instance: instance.to_owned(),
        }
    }

    /// The current primary's `host:port`.
    pub async fn primary(&self) -> Result<String> {
        match self {
            PrimarySource::Api { client, instance } => Ok(client.instance(instance).await?.primary),
            PrimarySource::Fixed(addr) => Ok(addr.clone()),
            PrimarySource::Sentinel { sentinels, master } => {
                let mut last = anyhow::anyhow!("no sentinel configured");
                for s in sentinels {
                    let r = tokio::time::timeout(Duration::from_millis(500), async {
                        let client = redis::Client::open(format!("redis://{s}/"))?;
                        let mut c = client.get_multiplexed_async_connection().await?;
                        let a: Option<(String, u16)> = redis::cmd("SENTINEL")
                            .arg("get-master-addr-by-name")
                            .arg(master)
                            .query_async(&mut c)
                            .await?;
                        let (h, p) = a.context("sentinel knows no such master")?;
                        anyhow::Ok(format!("{h}:{p}"))
                    })
                    .await;
                    match r {
                        Ok(Ok(a)) => return Ok(a),
                        Ok(Err(e)) => last = e,
                        Err(_) => last = anyhow::anyhow!("sentinel {s} timed out"),
                    }
                }
                Err(last)
            }
        }
    }
}

impl SetOutcome {
    /// Acknowledged ids missing from `present`.
    pub fn lost(&self, present: &std::collections::BTreeSet<u64>) -> Vec<u64> {
        self.acked.difference(present).copied().collect()
    }
    /// Ids in `present` that were never attempted.
    pub fn unexpected(&self, present: &std::collections::BTreeSet<u64>) -> Vec<u64> {
        present.difference(&self.attempted).copied().collect()
    }
}

/// Writes unique ids to an instance's current primary (as the API reports it) until
/// stopped: MariaDB rows in `app.jepsen`, Redis members of the set `jepsen`.
pub struct SetWriter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<SetOutcome>,
}

enum Conn {
    My(mysql_async::Conn),
    Redis(redis::aio::MultiplexedConnection),
}

impl SetWriter {
    /// Starts writing; MariaDB's table is created first.
    pub async fn start(env: &Env, instance: &str, engine: &str, password: &str) -> Result<Self> {
        Self::start_from(PrimarySource::api(env, instance), engine, password, 1).await
    }

    /// Starts writing ids `first_id`, `first_id + 1`, ... (as the `app` account) to the
    /// primary that `source` names; MariaDB's table is created first.
    pub async fn start_from(
        source: PrimarySource,
        engine: &str,
        password: &str,
        first_id: u64,
    ) -> Result<Self> {
        let (engine, password) = (engine.to_owned(), password.to_owned());
        if engine == "mariadb" {
            // The primary may refuse for a moment (fenced while its agent's lease lapsed on a
            // saturated machine, then unfenced): the table is made once it takes writes.
            eventually("the writer's table", Duration::from_secs(30), || async {
                let mut c = mysql(&source.primary().await?, &password).await?;
                use mysql_async::prelude::Queryable;
                c.query_drop("CREATE TABLE IF NOT EXISTS jepsen (id BIGINT PRIMARY KEY)")
                    .await?;
                Ok(())
            })
            .await?;
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (s, a) = (stop.clone(), acked.clone());
        // MOFANG_WRITER_TRACE=1: each failed connect or write on standard error, with the
        // time since the writer started and the address it went to (where a gap went).
        let trace = std::env::var_os("MOFANG_WRITER_TRACE").is_some();
        let t0 = std::time::Instant::now();
        let task = tokio::spawn(async move {
            use std::sync::atomic::Ordering;
            let mut out = SetOutcome::default();
            let mut conn: Option<Conn> = None;
            let mut last_ack = std::time::Instant::now();
            let mut id = first_id.saturating_sub(1);
            let mut primary: std::sync::Arc<str> = std::sync::Arc::from("");
            while !s.load(Ordering::SeqCst) {
                if conn.is_none() {
                    primary = source.primary().await.unwrap_or_default().into();
                    let c = tokio::time::timeout(Duration::from_secs(2), async {
                        if engine == "mariadb" {
                            anyhow::Ok(Conn::My(mysql(&primary, &password).await?))
                        } else {
                            let client =
                                redis::Client::open(format!("redis://app:{password}@{primary}/"))?;
                            anyhow::Ok(Conn::Redis(
                                client.get_multiplexed_async_connection().await?,
                            ))
                        }
                    })
                    .await;
                    match c {
                        Ok(Ok(c)) => conn = Some(c),
                        other => {
                            if trace {
                                let why = match other {
                                    Err(_) => "timed out (2 s)".to_owned(),
                                    Ok(Err(e)) => format!("{e:#}"),
                                    Ok(Ok(_)) => String::new(),
                                };
                                eprintln!(
                                    "writer {:>8.3}s: connect to {primary:?} failed: {why}",
                                    t0.elapsed().as_secs_f64()
                                );
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    }
                }
                id += 1;
                out.attempted.insert(id);
                let r = tokio::time::timeout(Duration::from_secs(5), async {
                    match conn.as_mut() {
                        Some(Conn::My(c)) => {
                            use mysql_async::prelude::Queryable;
                            c.exec_drop("INSERT INTO jepsen (id) VALUES (?)", (id,))
                                .await?;
                        }
                        Some(Conn::Redis(c)) => {
                            let _: i64 = redis::cmd("SADD")
                                .arg("jepsen")
                                .arg(id)
                                .query_async(c)
                                .await?;
                        }
                        None => bail!("no connection"),
                    }
                    anyhow::Ok(())
                })
                .await;
                match r {
                    Ok(Ok(())) => {
                        let now = std::time::Instant::now();
                        let gap = now - last_ack;
                        if gap > out.longest_gap {
                            out.longest_gap = gap;
                            out.gap_end = Some(now);
                        }
                        last_ack = now;
                        out.acked.insert(id);
                        out.acks.push(Ack {
                            at: now,
                            primary: primary.clone(),
                            id,
                        });
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                    other => {
                        if trace {
                            let why = match other {
                                Err(_) => "timed out (5 s)".to_owned(),
                                Ok(Err(e)) => format!("{e:#}"),
                                Ok(Ok(())) => String::new(),
                            };
                            eprintln!(
                                "writer {:>8.3}s: write {id} to {primary:?} failed: {why}",
                                t0.elapsed().as_secs_f64()
                            );
                        }
                        conn = None;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            out
        });
        Ok(SetWriter { stop, acked, task })
    }

    /// Acknowledged writes so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until at least `n` writes are acknowledged.
    pub async fn wait_acked(&self, n: u64, limit: Duration) -> Result<()> {
        let until = std::time::Instant::now() + limit;
        while self.acked() < n {
            if std::time::Instant::now() > until {
                bail!(
                    "only {} of {n} writes acknowledged in {limit:?}",
                    self.acked()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Stops and returns what happened.
    pub async fn stop(self) -> Result<SetOutcome> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(self.task.await?)
    }
}

/// The ids present in an instance (read at `addr` with the application account).
pub async fn set_contents(
    engine: &str,
    addr: &str,
    password: &str,
) -> Result<std::collections::BTreeSet<u64>> {
    if engine == "mariadb" {
        use mysql_async::prelude::Queryable;
        let mut c = mysql(addr, password).await?;
        let ids: Vec<u64> = c.query("SELECT id FROM jepsen").await?;
        Ok(ids.into_iter().collect())
    } else {
        let client = redis::Client::open(format!("redis://app:{password}@{addr}/"))?;
        let mut c = client.get_multiplexed_async_connection().await?;
        let ids: Vec<u64> = redis::cmd("SMEMBERS")
            .arg("jepsen")
            .query_async(&mut c)
            .await?;
        Ok(ids.into_iter().collect())
    }
}

impl Env {
    /// The app password of an instance.
    pub async fn app_password(&self, name: &str) -> Result<String> {
        Ok(self.client().credentials(name).await?.credentials.app)
    }

    /// Creates an instance from [`instance_spec`] through the typed client and waits until
    /// it is ready.
    pub async fn create(&self, name: &str, engine: &str, replicas: u32) -> Result<InstanceView> {
        self.client()
            .create_instance(&instance_spec(name, engine, replicas)?)
            .await
            .with_context(|| format!("create {name}"))?;
        self.ready(name).await
    }

    /// The agent (index) running `member` of the instance.
    pub fn agent_running(&self, inst: &InstanceView, member: &str) -> Result<usize> {
        let node = &inst
            .members
            .iter()
            .find(|m| m.id == member)
            .with_context(|| format!("no member {member}"))?
            .node;
        self.agents
            .iter()
            .position(|a| &a.node == node)
            .with_context(|| format!("no agent on node {node}"))
    }

    /// An instance's events, oldest first.
    pub async fn instance_events(&self, name: &str) -> Result<Vec<Event>> {
        Ok(self
            .client()
            .events(Some(name), LogRange::default())
            .await?)
    }

    /// Starts `op` on instance `name` through the typed client and waits up to `limit` for
    /// it to end (succeeded, failed or cancelled); returns it as it ended.
    pub async fn run_operation(
        &self,
        name: &str,
        op: &NewOperation,
        limit: Duration,
    ) -> Result<Operation> {
        let c = self.client();
        let started = c.start_operation(name, op).await?;
        let id = started.id;
        eventually("the operation ended", limit, || async {
            let o = c.operation(&id).await?;
            if o.state.is_terminal() {
                Ok(o)
            } else {
                bail!("{}", serde_json::to_string(&o)?)
            }
        })
        .await
    }

    /// Waits until the instance has a new healthy primary at an epoch above `epoch`
    /// (typed: [`Env::wait_new_primary`]).
    pub async fn new_primary(
        &self,
        name: &str,
        epoch: u64,
        limit: Duration,
    ) -> Result<InstanceView> {
        eventually("new primary", limit, || async {
            let v = self.instance(name).await?;
            let p = primary_of(&v)?;
            if v.epoch > epoch && p.healthy && p.epoch == v.epoch && p.observed_role == "primary" {
                Ok(v)
            } else {
                bail!("epoch {} primary {p:?}", v.epoch)
            }
        })
        .await
    }
}

/// The member whose desired role is primary.
pub fn primary_of(inst: &InstanceView) -> Result<&MemberView> {
    inst.members
        .iter()
        .find(|m| m.role == "primary")
        .with_context(|| format!("{}: no primary member", inst.name))
}

/// The first member whose desired role is replica.
pub fn replica_of(inst: &InstanceView) -> Result<&MemberView> {
    inst.members
        .iter()
        .find(|m| m.role == "replica")
        .with_context(|| format!("{}: no replica member", inst.name))
}

/// `docker` CLI, failing with its stderr.
/// `docker unpause`; a container that is no longer paused is fine: its agent kills a
/// deposed primary that stays silent (decision 74), and restarts it.
pub fn unpause(container: &str) -> Result<()> {
    match docker_cli(&["unpause", container]) {
        Err(e) if e.to_string().contains("is not paused") => Ok(()),
        r => r.map(|_| ()),
    }
}

pub fn docker_cli(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("docker").args(args).output()?;
    if !out.status.success() {
        bail!("docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A member's container name.
pub fn container_of(member: &str) -> String {
    format!("mofang-{member}")
}

/// SQL as a MariaDB member's admin, through its container's client (`-N`: no column names).
pub fn admin_sql(member: &str, query: &str) -> Result<String> {
    docker_cli(&[
        "exec",
        &container_of(member),
        "mariadb",
        "--defaults-extra-file=/etc/mofang/client.cnf",
        "-N",
        "-e",
        query,
    ])
}

/// Nearest-rank percentile (`p` in 0..=1) of sorted samples; zero for none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The machine's 1, 5 and 15 minute load averages: benchmarks share the machine with
/// whatever else runs, and their figures move with it.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The cgroup v1 directory of `controller` for process `pid`.
pub fn cgroup_dir(pid: u32, controller: &str) -> Result<std::path::PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let path = text
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            ctrls
                .split(',')
                .any(|c| c == controller)
                .then(|| path.to_owned())
        })
        .with_context(|| format!("no {controller} cgroup for {pid}"))?;
    let mount = match controller {
        "cpu" => "cpu,cpuacct",
        other => other,
    };
    let base = std::path::Path::new("/sys/fs/cgroup");
    let dir = if base.join(mount).exists() {
        base.join(mount)
    } else {
        base.join(controller)
    };
    Ok(dir.join(path.trim_start_matches('/')))
}

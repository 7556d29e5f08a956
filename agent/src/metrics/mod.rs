//! The agent's Prometheus metrics: in one scrape, container metrics under cAdvisor's names
//! (from cgroup files), host metrics under node_exporter's names (from `/proc` and statvfs),
//! database metrics under mysqld_exporter's and redis_exporter's names (over the wire, as the
//! monitoring account), and the agent's own. Databases are collected in the background
//! ([`db::Collector`], every `metrics_interval_ms`) and a scrape renders their last answers with
//! their age, so it never waits on a database; cgroup and `/proc` files are read in the
//! background too ([`Exporter::run_files`], every `metrics_interval_ms` and when the
//! containers change), so a scrape reads no file either: it copies lines written at
//! collection time (decision 154). Samples carry no timestamps
//! (https://prometheus.io/docs/instrumenting/writing_exporters/): the age is a gauge of its own.

pub mod cadence;
pub mod cgroup;
pub mod container;
pub mod db;
pub mod histogram;
pub mod model;
pub mod mysql;
pub mod procfs;
pub mod redis;

use crate::config::{AgentConfig, NetworkMode};
use crate::engine::Secrets;
use crate::runtime::ContainerRuntime;
use crate::state::LocalState;
use crate::statuses::{ReconcileStats, Statuses, STOPPED};
use crate::volume::VolumeManager;
use container::{reuse_or_inspect, DeviceNames, Tracked, VolumeFs};
use futures::StreamExt;
use model::{label, Families, Format, Kind, Rendered};
use mofang_common::labels;
use mofang_common::proto::DesiredState;
use mofang_common::{EngineKind, ObservedRole};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How often the container inventory is refreshed without an event.
const INVENTORY_REFRESH: Duration = Duration::from_secs(10);

/// The agent's own counters, updated by the parts of the agent they describe.
#[derive(Debug, Default)]
pub struct AgentCounters {
    heartbeats_ok: AtomicU64,
    heartbeats_failed: AtomicU64,
    scrapes: AtomicU64,
    last_ack: std::sync::Mutex<Option<std::time::Instant>>,
}

impl AgentCounters {
    /// Records one heartbeat's outcome.
    pub fn heartbeat(&self, ok: bool) {
        let c = if ok {
            if let Ok(mut at) = self.last_ack.lock() {
                *at = Some(std::time::Instant::now());
            }
            &self.heartbeats_ok
        } else {
            &self.heartbeats_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// How long ago the scheduler last acknowledged a heartbeat; None before the first.
    pub fn ack_age(&self) -> Option<Duration> {
        self.last_ack.lock().ok()?.map(|at| at.elapsed())
    }
}

/// What the metrics need from the rest of the agent.
pub struct Sources {
    /// Agent config (node name, network mode, state directory, timeouts).
    pub cfg: AgentConfig,
    /// Reconcile pass counts and durations.
    pub reconcile: Arc<ReconcileStats>,
    /// The container runtime (container list, events; never stats).
    pub runtime: Arc<dyn ContainerRuntime>,
    /// Data volumes.
    pub volumes: Arc<VolumeManager>,
    /// Local state (member ports in host network mode).
    pub state: LocalState,
    /// Member statuses from the reconcile loop.
    pub statuses: Statuses,
    /// The desired state (which members, engines, instances, secrets).
    pub desired: watch::Receiver<Option<DesiredState>>,
    /// The agent's own counters.
    pub counters: Arc<AgentCounters>,
}

/// Members by the state of their last reconcile: healthy, unhealthy, failed, stopped (each
/// named, zero or not).
fn members_by_state<'a>(
    statuses: impl Iterator<Item = &'a mofang_common::proto::MemberStatus>,
) -> BTreeMap<&'static str, u64> {
    let mut by_state: BTreeMap<&'static str, u64> = [
        ("healthy", 0),
        ("unhealthy", 0),
        ("failed", 0),
        ("stopped", 0),
    ]
    .into();
    for s in statuses {
        let state = if s.failed {
            "failed"
        } else if s.container_state == STOPPED {
            "stopped"
        } else if s.healthy {
            "healthy"
        } else {
            "unhealthy"
        };
        *by_state.entry(state).or_default() += 1;
    }
    by_state
}

/// Whether two inventories hold the same containers in the same states (the files to read
/// are the same).
fn same_containers(old: &[Tracked], new: &[Tracked]) -> bool {
    old.len() == new.len()
        && old
            .iter()
            .zip(new)
            .all(|(a, b)| a.info.id == b.info.id && a.info.state == b.info.state)
}

/// Capacity of a data disk, known at start-up (it does not change while running).
#[derive(Debug, Clone)]
struct DiskInfo {
    path: PathBuf,
    class: String,
    capacity: u64,
}

/// Gathers and encodes the metrics; shared by the HTTP handlers.
pub struct Exporter {
    src: Sources,
    mounts: cgroup::Mounts,
    host_netns: Option<String>,
    inventory: RwLock<Arc<Vec<Tracked>>>,
    refresh: Notify,
    collector: Arc<db::Collector>,
    devices: DeviceNames,
    disks: Vec<DiskInfo>,
    files_seconds: histogram::Histogram,
    /// The containers' and the host's file statistics as last read ([`Exporter::run_files`]).
    files: RwLock<Option<Arc<FilesReading>>>,
    /// Read the files again now (the containers changed).
    files_wake: Notify,
    /// How often the collections run: the scrapes' cadence (decision 168).
    cadence: Arc<cadence::Cadence>,
}

/// One reading of the cgroup and `/proc` files, written to sample lines: what every scrape
/// until the next reading copies.
struct FilesReading {
    /// The lines (no labels of their own: the part's label set is empty).
    part: Arc<(model::Labels, Rendered)>,
    at: std::time::Instant,
    took: Duration,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl Exporter {
    /// Builds the exporter; call [`Exporter::run_inventory`] to keep its container list fresh.
    pub fn new(src: Sources) -> Arc<Self> {
        let disks = src
            .volumes
            .disks()
            .into_iter()
            .map(|d| DiskInfo {
                path: d.path,
                class: d.class,
                capacity: d.capacity_bytes,
            })
            .collect();
        Arc::new(Exporter {
            src,
            mounts: cgroup::Mounts::detect(),
            // The agent runs in the host's network namespace (systemd unit); PID 1's may not
            // be readable (containers, sandboxes), the agent's own always is.
            host_netns: procfs::net_namespace("self"),
            inventory: RwLock::default(),
            refresh: Notify::new(),
            collector: Arc::default(),
            devices: DeviceNames::default(),
            disks,
            files_seconds: histogram::Histogram::default(),
            files: RwLock::default(),
            files_wake: Notify::new(),
            cadence: Arc::default(),
        })
    }

    /// A snapshot of the members' statuses reconcile published.
    fn statuses(&self) -> BTreeMap<String, mofang_common::proto::MemberStatus> {
        self.src
            .statuses
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    fn inventory(&self) -> Arc<Vec<Tracked>> {
        self.inventory.read().map(|g| g.clone()).unwrap_or_default()
    }

    /// Lists the node's containers again. `full`: inspects every one (after a container
    /// event, or when a scrape found one gone); otherwise only those new or whose state
    /// changed since they were inspected ([`reuse_or_inspect`]), so an idle node costs one
    /// listing per refresh.
    async fn refresh_inventory(&self, full: bool) {
        let node = self.src.cfg.node.as_str();
        let listed = if full {
            self.src.runtime.list(&[(labels::NODE, node)]).await
        } else {
            match self.src.runtime.list_brief(&[(labels::NODE, node)]).await {
                Ok(briefs) => {
                    let (mut kept, ids) = reuse_or_inspect(&self.inventory(), briefs);
                    let mut failed = None;
                    for id in ids {
                        match self.src.runtime.inspect(&id).await {
                            Ok(c) => {
                                kept.push(Tracked::new(c, &self.mounts, self.host_netns.as_deref()))
                            }
                            // Removed between the listing and the inspection.
                            Err(crate::runtime::Error::NotFound(_)) => {}
                            Err(e) => failed = Some(e),
                        }
                    }
                    match failed {
                        Some(e) => Err(e),
                        None => {
                            self.set_inventory(kept);
                            return;
                        }
                    }
                }
                Err(e) => Err(e),
            }
        };
        match listed {
            Ok(list) => self.set_inventory(
                list.into_iter()
                    .map(|c| Tracked::new(c, &self.mounts, self.host_netns.as_deref()))
                    .collect(),
            ),
            Err(e) => warn!(error = %e, "metrics: cannot list containers"),
        }
    }

    fn set_inventory(&self, tracked: Vec<Tracked>) {
        debug!(containers = tracked.len(), "metrics inventory refreshed");
        let changed = match self.inventory.write() {
            Ok(mut g) => {
                let changed = !same_containers(&g, &tracked);
                *g = Arc::new(tracked);
                changed
            }
            Err(_) => false,
        };
        if changed {
            // A new, stopped or removed container shows in the next scrape, not one
            // `metrics_interval` later.
            self.files_wake.notify_one();
        }
    }

    /// Keeps the container inventory fresh until shutdown: every 10 s, on each container event
    /// of this node, and when a scrape finds a container gone.
    pub async fn run_inventory(self: Arc<Self>, shutdown: CancellationToken) {
        let node = self.src.cfg.node.clone();
        let mut events = self.src.runtime.events((labels::NODE, node.as_str()));
        let mut full = true;
        loop {
            self.refresh_inventory(full).await;
            let sleep = tokio::time::sleep(INVENTORY_REFRESH);
            tokio::pin!(sleep);
            let mut missed = false;
            full = loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = &mut sleep => break missed,
                    _ = self.refresh.notified() => break true,
                    ev = events.next() => match ev {
                        Some(Ok(_)) => {
                            // Let a burst of events (create, start, ...) settle, then take all
                            // of it into one refresh.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            if crate::runtime::ready_events(&mut events).broken {
                                events = self.src.runtime.events((labels::NODE, node.as_str()));
                            }
                            break true;
                        }
                        Some(Err(_)) | None => {
                            // Events may be lost meanwhile: the next refresh inspects all.
                            missed = true;
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            events = self.src.runtime.events((labels::NODE, node.as_str()));
                        }
                    },
                }
            };
        }
    }

    /// The members to scrape: desired members of this node, with where they answer.
    fn db_targets(&self, inventory: &[Tracked]) -> Vec<db::Target> {
        let desired = self.src.desired.borrow().clone();
        let Some(desired) = desired else {
            return Vec::new();
        };
        let statuses = self.statuses();
        let by_member: BTreeMap<&str, &Tracked> = inventory
            .iter()
            .filter_map(|t| Some((t.member()?, t)))
            .collect();
        desired
            .members
            .iter()
            // A stopped instance's members are not scraped: no `mysql_up 0`, no alert.
            .filter(|a| !a.stopped)
            .filter_map(|a| {
                let engine = EngineKind::parse(&a.engine)?;
                let role = statuses
                    .get(&a.member)
                    .map(|s| s.role.clone())
                    .filter(|r| {
                        !r.is_empty() && ObservedRole::parse(r) != Some(ObservedRole::Unknown)
                    })
                    .unwrap_or_else(|| a.role.clone());
                let running = by_member
                    .get(a.member.as_str())
                    .filter(|t| t.info.state.has_processes());
                let addr = running.and_then(|t| match self.src.cfg.network_mode() {
                    NetworkMode::Host => self
                        .src
                        .state
                        .load_member(&a.member)
                        .ok()?
                        .port
                        .map(|p| ("127.0.0.1".to_owned(), p)),
                    NetworkMode::Docker(net) => {
                        t.info.ips.get(&net).map(|ip| (ip.clone(), engine.port()))
                    }
                });
                let password = Secrets::from_map(&a.secrets)
                    .or_else(|| self.stored_secrets(&a.instance))
                    .map(|s| s.monitor);
                Some(db::Target {
                    engine,
                    labels: vec![
                        label("mofang_instance", a.instance.clone()),
                        label("mofang_member", a.member.clone()),
                        label("role", role),
                    ],
                    member: a.member.clone(),
                    addr,
                    password,
                    tls: mofang_common::DbTls::parse(&a.tls)
                        .filter(|t| t.is_on())
                        .and_then(|_| self.src.state.member_tls(&a.member).ok().flatten())
                        .map(|t| crate::engine::ClientTls {
                            ca_pem: t.ca_pem,
                            server_name: a.member.clone(),
                        }),
                })
            })
            .collect()
    }

    /// The instance's secrets as the agent stored them (`LocalState::secrets`), read only: the
    /// metrics never create secrets, that is the reconcile loop's job.
    /// The instance's secrets as the agent keeps them (sealed): for members whose
    /// assignment carries none.
    fn stored_secrets(&self, instance: &str) -> Option<Secrets> {
        self.src.state.stored_secrets(instance).ok().flatten()
    }

    fn host_families(&self, out: &mut Families) {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let cpus = procfs::parse_cpu_times(&stat);
        out.add(
            "machine_cpu_cores",
            "Number of logical CPU cores.",
            Kind::Gauge,
            vec![],
            cpus.len() as f64,
        );
        for c in &cpus {
            for (mode, secs) in &c.modes {
                out.add(
                    "node_cpu_seconds",
                    "Seconds the CPUs spent in each mode.",
                    Kind::Counter,
                    vec![label("cpu", c.cpu.clone()), label("mode", *mode)],
                    *secs,
                );
            }
        }
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        for (k, v) in procfs::parse_meminfo(&meminfo) {
            if k == "MemTotal" {
                out.add(
                    "machine_memory_bytes",
                    "Amount of memory installed on the machine.",
                    Kind::Gauge,
                    vec![],
                    v as f64,
                );
            }
            if matches!(
                k.as_str(),
                "MemTotal"
                    | "MemFree"
                    | "MemAvailable"
                    | "Buffers"
                    | "Cached"
                    | "SwapTotal"
                    | "SwapFree"
            ) {
                out.add(
                    format!("node_memory_{k}_bytes"),
                    format!("Memory information field {k}_bytes."),
                    Kind::Gauge,
                    vec![],
                    v as f64,
                );
            }
        }
        if let Some([l1, l5, l15]) = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|t| procfs::parse_loadavg(&t))
        {
            out.add("node_load1", "1m load average.", Kind::Gauge, vec![], l1);
            out.add("node_load5", "5m load average.", Kind::Gauge, vec![], l5);
            out.add("node_load15", "15m load average.", Kind::Gauge, vec![], l15);
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut reserved: BTreeMap<PathBuf, u64> = BTreeMap::new();
        for v in self.src.volumes.list() {
            *reserved.entry(v.disk).or_default() += v.size_bytes;
        }
        for d in &self.disks {
            let fs_labels = |m: &Option<(String, String, String)>| match m {
                Some((dev, fstype, point)) => vec![
                    label("device", dev.clone()),
                    label("fstype", fstype.clone()),
                    label("mountpoint", point.clone()),
                ],
                None => vec![label("mountpoint", d.path.to_string_lossy().into_owned())],
            };
            let mount = procfs::mount_of(&mountinfo, &d.path);
            if let Some((size, avail)) = procfs::fs_size_avail(&d.path) {
                let l = fs_labels(&mount);
                out.add(
                    "node_filesystem_size_bytes",
                    "Filesystem size in bytes.",
                    Kind::Gauge,
                    l.clone(),
                    size as f64,
                );
                out.add(
                    "node_filesystem_avail_bytes",
                    "Filesystem space available to non-root users in bytes.",
                    Kind::Gauge,
                    l,
                    avail as f64,
                );
            }
            let l = vec![
                label("disk", d.path.to_string_lossy().into_owned()),
                label("class", d.class.clone()),
            ];
            out.add(
                "mofang_volume_reserved_bytes",
                "Bytes reserved for member volumes on the data disk.",
                Kind::Gauge,
                l.clone(),
                reserved.get(&d.path).copied().unwrap_or(0) as f64,
            );
            out.add(
                "mofang_volume_capacity_bytes",
                "Bytes the data disk offers to member volumes.",
                Kind::Gauge,
                l,
                d.capacity as f64,
            );
        }
    }

    fn agent_families(&self, out: &mut Families) {
        let c = &self.src.counters;
        out.add(
            "mofang_agent_build",
            "The agent's version.",
            Kind::Info,
            vec![
                label("version", env!("CARGO_PKG_VERSION")),
                label("node", self.src.cfg.node.clone()),
            ],
            1.0,
        );
        for (result, n) in [
            ("success", c.heartbeats_ok.load(Ordering::Relaxed)),
            ("failure", c.heartbeats_failed.load(Ordering::Relaxed)),
        ] {
            out.add(
                "mofang_agent_heartbeats",
                "Heartbeats sent to the scheduler, by outcome.",
                Kind::Counter,
                vec![label("result", result)],
                n as f64,
            );
        }
        let r = &self.src.reconcile;
        for (result, n) in [
            ("success", r.ok.load(Ordering::Relaxed)),
            ("error", r.errors.load(Ordering::Relaxed)),
        ] {
            out.add(
                "mofang_agent_reconcile_passes",
                "Reconcile passes over members, by outcome.",
                Kind::Counter,
                vec![label("result", result)],
                n as f64,
            );
        }
        out.add(
            "mofang_agent_reconcile_duration_seconds",
            "Time spent in reconcile passes (divide its rate by the passes' rate for the mean).",
            Kind::Counter,
            vec![],
            r.micros.load(Ordering::Relaxed) as f64 / 1e6,
        );
        let (cum, sum) = r.pass_seconds.snapshot();
        out.add_histogram(
            "mofang_agent_reconcile_pass_seconds",
            "How long reconcile passes over one member took (probes and full passes).",
            vec![],
            (&histogram::BOUNDS, &cum, sum),
        );
        for (source, h) in [
            ("database", &self.collector.durations),
            ("files", &self.files_seconds),
        ] {
            let (cum, sum) = h.snapshot();
            out.add_histogram(
                "mofang_agent_collect_seconds",
                "How long collections from the source took (databases: each member's).",
                vec![label("source", source)],
                (&histogram::BOUNDS, &cum, sum),
            );
        }
        if let Some(age) = c.ack_age() {
            out.add(
                "mofang_agent_heartbeat_ack_age_seconds",
                "Seconds since the scheduler last acknowledged a heartbeat (absent before the first).",
                Kind::Gauge,
                vec![],
                age.as_secs_f64(),
            );
        }
        out.add(
            "mofang_agent_scrapes",
            "Scrapes of this endpoint served.",
            Kind::Counter,
            vec![],
            c.scrapes.load(Ordering::Relaxed) as f64,
        );
        let statuses = self.statuses();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        for s in statuses.values() {
            let l = vec![
                label("mofang_instance", s.instance.clone()),
                label("mofang_member", s.member.clone()),
                label("role", s.role.clone()),
                label("engine", s.engine.clone()),
            ];
            out.add(
                "mofang_member_healthy",
                "1 if the member's last reconcile found it healthy in its desired role.",
                Kind::Gauge,
                l.clone(),
                if s.healthy { 1.0 } else { 0.0 },
            );
            out.add(
                "mofang_member_restarts",
                "Times the agent restarted the member's container after it died.",
                Kind::Counter,
                l.clone(),
                s.restarts as f64,
            );
            out.add(
                "mofang_member_last_reconcile_age_seconds",
                "Seconds since the reconcile loop last finished a pass on the member.",
                Kind::Gauge,
                l,
                ((now_ms - s.checked_at_ms).max(0) as f64) / 1000.0,
            );
        }
        for (state, n) in members_by_state(statuses.values()) {
            out.add(
                "mofang_agent_members",
                "Members on this node by state of their last reconcile.",
                Kind::Gauge,
                vec![label("state", state)],
                n as f64,
            );
        }
        if let Some(p) = procfs::process_stats("self") {
            out.add(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                Kind::Counter,
                vec![],
                p.cpu_seconds,
            );
            out.add(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                Kind::Gauge,
                vec![],
                p.rss_bytes as f64,
            );
            out.add(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                Kind::Gauge,
                vec![],
                p.virtual_bytes as f64,
            );
            out.add(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                Kind::Gauge,
                vec![],
                p.start_time,
            );
            out.add(
                "process_open_fds",
                "Number of open file descriptors.",
                Kind::Gauge,
                vec![],
                p.open_fds as f64,
            );
        }
    }

    /// Keeps one database collector per member of this node until shutdown: the member list
    /// is looked at again every second and on container events (the inventory's refresh).
    pub async fn run_collectors(self: Arc<Self>, shutdown: CancellationToken) {
        let interval = self.src.cfg.metrics_interval();
        let timeout = self.src.cfg.metrics_timeout();
        loop {
            let targets = self.db_targets(&self.inventory());
            self.collector
                .sync(&targets, (interval, timeout), &self.cadence, &shutdown);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Reads the containers' cgroup and `/proc` files and the host's once (blocking file I/O,
    /// off the async threads), writes them to sample lines and keeps them for the scrapes.
    async fn collect_files(self: &Arc<Self>) -> Option<Arc<FilesReading>> {
        let me = self.clone();
        let inv = self.inventory();
        let read = tokio::task::spawn_blocking(move || {
            let start = std::time::Instant::now();
            let statuses = me.statuses();
            let mut readings = Vec::with_capacity(inv.len());
            let mut gone = false;
            for t in inv.iter() {
                if !t.info.state.has_processes() {
                    continue;
                }
                let volume = t.member().and_then(|m| {
                    let v = me.src.volumes.get(m)?;
                    Some(VolumeFs {
                        path: v.path,
                        used: statuses.get(m).map(|s| s.volume_used_bytes).unwrap_or(0),
                        limit: v.size_bytes,
                    })
                });
                match container::read(t, volume) {
                    Some(r) => readings.push(r),
                    None => gone = true,
                }
            }
            let mut out = Families::default();
            container::families(&readings, &me.devices, &mut out);
            me.host_families(&mut out);
            let rendered = out.render();
            let took = start.elapsed();
            me.files_seconds.observe(took);
            (
                FilesReading {
                    part: Arc::new((Vec::new(), rendered)),
                    at: start,
                    took,
                },
                gone,
            )
        });
        match read.await {
            Ok((reading, gone)) => {
                if gone {
                    self.refresh.notify_one();
                }
                let reading = Arc::new(reading);
                if let Ok(mut g) = self.files.write() {
                    *g = Some(reading.clone());
                }
                Some(reading)
            }
            Err(e) => {
                warn!(error = %e, "metrics: reading cgroup files failed");
                None
            }
        }
    }

    /// Reads the files on the scrapes' cadence (at most every `metrics_interval`, decision
    /// 168) and at once when the containers change, until shutdown (cAdvisor's housekeeping):
    /// a scrape never reads a file.
    pub async fn run_files(self: Arc<Self>, shutdown: CancellationToken) {
        let interval = self.src.cfg.metrics_interval();
        loop {
            let took = self
                .collect_files()
                .await
                .map_or(Duration::ZERO, |r| r.took);
            let wait = self.cadence.next_wait(interval, "files", took);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.files_wake.notified() => {}
                _ = self.cadence.woken() => {}
            }
        }
    }

    /// Gathers everything once: files and databases as last collected (written when
    /// collected: only copied here). Before the first file reading, the files are read now.
    pub async fn gather(self: &Arc<Self>) -> (Families, Vec<Arc<(model::Labels, Rendered)>>) {
        self.src.counters.scrapes.fetch_add(1, Ordering::Relaxed);
        let inventory = self.inventory();
        let targets = self.db_targets(&inventory);
        let collected = self.collector.last(&targets);
        let kept = self.files.read().ok().and_then(|g| g.clone());
        let files = match kept {
            Some(f) => Some(f),
            None => self.collect_files().await,
        };
        let mut out = Families::default();
        let mut parts = Vec::with_capacity(targets.len() + 1);
        if let Some(f) = files {
            out.add(
                "mofang_agent_collect_duration_seconds",
                "How long the last collection from the source took.",
                Kind::Gauge,
                vec![label("source", "files")],
                f.took.as_secs_f64(),
            );
            out.add(
                "mofang_agent_collect_age_seconds",
                "Seconds since the source's values served here were collected.",
                Kind::Gauge,
                vec![label("source", "files")],
                f.at.elapsed().as_secs_f64(),
            );
            parts.push(f.part.clone());
        }
        parts.extend(db::render(
            &targets,
            &collected,
            std::time::Instant::now(),
            &mut out,
        ));
        self.agent_families(&mut out);
        (out, parts)
    }

    /// The agent's readiness and why not (`GET /v1/health`): the link to the scheduler, the
    /// runtime (pinged within 2 s), and members by state.
    pub async fn health(&self) -> crate::health::Health {
        let runtime =
            match tokio::time::timeout(Duration::from_secs(2), self.src.runtime.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no answer to a ping within 2 s".to_owned()),
            };
        let statuses = self.statuses();
        crate::health::decide(&crate::health::Inputs {
            desired: self.src.desired.borrow().is_some(),
            ack_age: self.src.counters.ack_age(),
            lease_ttl: Duration::from_millis(self.src.cfg.lease_ttl_ms),
            runtime,
            members: members_by_state(statuses.values()),
        })
    }

    /// Gathers and encodes in `format`.
    pub async fn render(self: &Arc<Self>, format: Format) -> String {
        let (families, parts) = self.gather().await;
        let own = families.render();
        let mut all: Vec<&Rendered> = Vec::with_capacity(parts.len() + 1);
        all.push(&own);
        all.extend(parts.iter().map(|p| &p.1));
        let body = model::write(&all, format);
        // The collections follow the scrapes (decision 168); the first scrape after an idle
        // spell wakes them once its own body is written, so their burst does not slow it.
        self.cadence.scraped();
        body
    }
}

#[cfg(test)]
mod tests {
    use super::container::tests::tracked;
    use super::same_containers;
    use crate::runtime::ContainerState;

    /// The files are read again at once only when the containers to read changed: an idle
    /// inventory refresh (the same containers, the same states) leaves them to the cadence.
    #[test]
    fn the_files_are_read_again_when_the_containers_change_and_only_then() {
        let a = vec![
            tracked("a", ContainerState::Running),
            tracked("b", ContainerState::Running),
        ];
        assert!(same_containers(&a, &a.clone()), "idle refresh");
        let stopped = vec![
            tracked("a", ContainerState::Running),
            tracked("b", ContainerState::Exited),
        ];
        assert!(!same_containers(&a, &stopped), "one stopped");
        assert!(!same_containers(&a, &a[..1]), "one removed");
        let replaced = vec![
            tracked("a", ContainerState::Running),
            tracked("c", ContainerState::Running),
        ];
        assert!(!same_containers(&a, &replaced), "one recreated");
    }
}

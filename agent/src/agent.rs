//! Wires the agent together: runtime (with retry), volumes, local state, the scheduler link
//! and the reconcile loop; answers the link's questions about this node.

use crate::config::AgentConfig;
use crate::config::RuntimeKind;
use crate::link::{self, Lease, LinkConfig, NodeSource};
use crate::metrics::{AgentCounters, Exporter, Sources};
use crate::reconcile::{self, Shared, Statuses};
use crate::runtime::{Cni, ContainerRuntime, ContainerdOptions, ContainerdRuntime, DockerRuntime};
use crate::state::LocalState;
use crate::volume::VolumeManager;
use mofang_common::proto::{DesiredState, Disk, HeartbeatRequest, HostUsage, RegisterRequest};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

/// Errors that stop the agent from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The volume manager could not open the data disks.
    #[error(transparent)]
    Volume(#[from] crate::volume::Error),
    /// The state directory is unusable.
    #[error(transparent)]
    State(#[from] crate::state::Error),
}

/// Result of agent start-up.
pub type Result<T, E = Error> = std::result::Result<T, E>;

struct Source {
    cfg: AgentConfig,
    counters: Arc<AgentCounters>,
    volumes: Arc<VolumeManager>,
    statuses: Statuses,
    desired: watch::Receiver<Option<DesiredState>>,
    changed: Arc<tokio::sync::Notify>,
    jobs: crate::backup::Jobs,
    /// The host's CPU time at the previous heartbeat (its usage is the difference).
    cpu_before: std::sync::Mutex<Option<crate::metrics::procfs::CpuSample>>,
}

impl Source {
    /// The host's CPU use since the previous heartbeat and its memory in use now.
    fn host_usage(&self) -> Option<HostUsage> {
        use crate::metrics::procfs;
        let now = procfs::cpu_sample(&std::fs::read_to_string("/proc/stat").ok()?)?;
        let before = self.cpu_before.lock().ok().and_then(|mut b| b.replace(now));
        let (memory_used_bytes, memory_total_bytes) =
            procfs::memory_used(&std::fs::read_to_string("/proc/meminfo").ok()?);
        Some(HostUsage {
            cpu_cores_busy: before.map_or(0.0, |b| procfs::cores_busy(&b, &now)),
            cpu_cores: now.cpus,
            memory_used_bytes,
            memory_total_bytes,
        })
    }
}

fn disks(v: &VolumeManager) -> Vec<Disk> {
    v.disks()
        .into_iter()
        .map(|d| Disk {
            path: d.path.to_string_lossy().into_owned(),
            class: d.class,
            capacity_bytes: d.capacity_bytes,
            free_bytes: d.free_bytes,
            reserved_bytes: d.reserved_bytes,
        })
        .collect()
}

fn host_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

impl NodeSource for Source {
    fn register_request(&self) -> RegisterRequest {
        let cpu = self.cfg.cpu.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as f64)
                .unwrap_or(1.0)
        });
        let memory = self
            .cfg
            .memory_mib
            .map(|m| m << 20)
            .unwrap_or_else(|| host_memory_bytes().saturating_sub(1 << 30));
        RegisterRequest {
            node: self.cfg.node.clone(),
            advertise_address: self.cfg.advertise_address.clone(),
            labels: self.cfg.labels.clone().into_iter().collect(),
            cpu,
            memory_bytes: memory,
            disks: disks(&self.volumes),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            lease_ttl_ms: self.cfg.lease_ttl_ms,
            http_address: http_address(&self.cfg),
        }
    }

    fn heartbeat_request(&self) -> HeartbeatRequest {
        let members = self
            .statuses
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        HeartbeatRequest {
            node: self.cfg.node.clone(),
            applied_revision: self
                .desired
                .borrow()
                .as_ref()
                .map(|d| d.revision)
                .unwrap_or(0),
            disks: disks(&self.volumes),
            members,
            sent_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            jobs: self.jobs.statuses(),
            usage: self.host_usage(),
            // Complete: the link reduces it to what changed (link::delta) and numbers it.
            ..Default::default()
        }
    }

    fn status_changed(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.changed.clone())
    }

    fn heartbeat_result(&self, acknowledged: bool) {
        self.counters.heartbeat(acknowledged);
    }
}

/// Where others reach this agent's HTTP server: `http_listen`, with an unspecified host
/// (`0.0.0.0`, `[::]`) replaced by `advertise_address`.
fn http_address(cfg: &AgentConfig) -> String {
    match cfg.http_listen.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => format!("{}:{}", cfg.advertise_address, a.port()),
        Ok(a) => a.to_string(),
        Err(_) => String::new(),
    }
}

/// The containerd runtime's options from the config.
fn containerd_options(cfg: &AgentConfig) -> ContainerdOptions {
    let state_dir = cfg.containerd_state_dir();
    ContainerdOptions {
        socket: cfg.containerd.socket.clone(),
        namespace: cfg.containerd.namespace.clone(),
        snapshotter: cfg.containerd.snapshotter.clone(),
        cni: Cni {
            plugin_dir: cfg.containerd.cni_plugin_dir.clone(),
            network: cfg.network.clone(),
            bridge: cfg.containerd.bridge.clone(),
            subnet: cfg.containerd.subnet.clone(),
            data_dir: state_dir.join("cni"),
        },
        state_dir,
        cgroup_parent: cfg.member_cgroup_parent.clone(),
    }
}

/// Gives the members' parent cgroup its `member_cpu_weight`, when one is configured, before
/// any member is made under it. A failure (no rights on the cgroup files) is logged: the
/// members still run, at the runtime's default weight.
fn weigh_members(cfg: &AgentConfig) {
    let (Some(weight), Some(parent)) = (cfg.member_cpu_weight, cfg.members_cgroup()) else {
        return;
    };
    let writes = crate::metrics::cgroup::Mounts::detect().cpu_weight_writes(&parent, weight);
    if writes.is_empty() {
        warn!(cgroup = %parent, "member_cpu_weight: this host mounts no cpu cgroup controller");
        return;
    }
    match crate::metrics::cgroup::apply_writes(&writes) {
        Ok(()) => info!(cgroup = %parent, weight, "members' CPU weight set"),
        Err(e) => warn!(
            cgroup = %parent,
            error = %e,
            "member_cpu_weight not set: the members run at the runtime's default weight"
        ),
    }
}

/// Connects to the configured runtime (Docker or containerd), retrying with backoff until it
/// answers or shutdown: a missing socket or a daemon down is logged, never fatal.
async fn connect_runtime(
    cfg: &AgentConfig,
    shutdown: &CancellationToken,
) -> Option<Arc<dyn ContainerRuntime>> {
    let mut delay = Duration::from_millis(500);
    let kind = cfg.runtime_kind().unwrap_or(RuntimeKind::Docker);
    loop {
        let connected: crate::runtime::Result<Arc<dyn ContainerRuntime>> = match kind {
            RuntimeKind::Docker => DockerRuntime::connect().await.map(|rt| {
                Arc::new(rt.with_cgroup_parent(cfg.member_cgroup_parent.clone()))
                    as Arc<dyn ContainerRuntime>
            }),
            RuntimeKind::Containerd => ContainerdRuntime::connect(containerd_options(cfg))
                .await
                .map(|rt| Arc::new(rt) as Arc<dyn ContainerRuntime>),
        };
        match connected {
            Ok(rt) => {
                info!(runtime = %cfg.runtime, "container runtime connected");
                return Some(rt);
            }
            Err(e) => {
                warn!(runtime = %cfg.runtime, error = %e, retry_in = ?delay, "container runtime unreachable");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Runs the agent until `shutdown` is cancelled. Database containers keep running after it
/// returns: the agent adopts them again on its next start.
pub async fn run(cfg: AgentConfig, shutdown: CancellationToken) -> Result<()> {
    let state = LocalState::open(&cfg.state_dir, &cfg.key_file(), &cfg.run_dir)?;
    let volumes = Arc::new(VolumeManager::open(cfg.disks.clone())?);
    let lease = Lease::with_fence_budget(cfg.lease_ttl(), cfg.fence_budget());
    // Serve the last desired state we saw while the scheduler is away.
    let persisted = state.load_desired()?;
    if let Some(d) = &persisted {
        info!(
            revision = d.revision,
            members = d.members.len(),
            "loaded persisted desired state"
        );
    }
    let (desired_tx, desired_rx) = watch::channel(persisted);

    let Some(runtime) = connect_runtime(&cfg, &shutdown).await else {
        return Ok(());
    };
    weigh_members(&cfg);
    let shared = Shared::new(
        cfg.clone(),
        runtime,
        volumes.clone(),
        state,
        lease.clone(),
        desired_rx.clone(),
    );

    let counters = Arc::new(AgentCounters::default());
    let exporter = Exporter::new(Sources {
        cfg: cfg.clone(),
        reconcile: shared.stats.clone(),
        runtime: shared.runtime.clone(),
        volumes: volumes.clone(),
        state: shared.state.clone(),
        statuses: shared.statuses.clone(),
        desired: desired_rx.clone(),
        counters: counters.clone(),
    });
    let jobs = crate::backup::Jobs::new(&cfg.node, shared.status_changed.clone()).with_backups(
        crate::backup::BackupContext {
            runtime: shared.runtime.clone(),
            statuses: shared.statuses.clone(),
            state: shared.state.clone(),
            image: {
                let cfg = cfg.clone();
                std::sync::Arc::new(move |engine: &str, version: &str| cfg.image(engine, version))
            },
            // A verification unpacks a whole backup: on the first data disk, not the state dir.
            scratch: cfg
                .disks
                .first()
                .map(|d| d.path.join(".mofang-verify"))
                .unwrap_or_else(|| cfg.state_dir.join("verify")),
            nice: cfg.backup_nice,
            tuning: crate::backup::run::Tuning {
                throttle_mib_s: cfg.backup_throttle_mib_s,
                ionice_idle: cfg.backup_ionice_idle,
                zstd_threads: cfg.backup_zstd_threads,
            },
        },
    );
    let job_runner = tokio::spawn(
        jobs.clone()
            .run_loop(desired_rx.clone(), shutdown.child_token())
            .instrument(tracing::info_span!("jobs")),
    );
    // Binlog archiving of this node's primaries, when their assignment asks (issue 16).
    let archivers = tokio::spawn(
        crate::backup::archive::Archivers::new(shared.runtime.clone(), shared.state.clone())
            .run_loop(desired_rx.clone(), shutdown.child_token())
            .instrument(tracing::info_span!("archivers")),
    );
    let source = Arc::new(Source {
        cfg: cfg.clone(),
        counters,
        volumes,
        statuses: shared.statuses.clone(),
        desired: desired_rx,
        changed: shared.status_changed.clone(),
        jobs,
        cpu_before: std::sync::Mutex::new(None),
    });
    let link_cfg = LinkConfig {
        node: cfg.node.clone(),
        schedulers: cfg.schedulers.clone(),
        heartbeat_interval: cfg.heartbeat_interval(),
        lease_ttl: cfg.lease_ttl(),
        consul: cfg.consul.clone(),
        tls: crate::tls::LinkTls::from_config(&cfg),
        current: shared.scheduler.clone(),
    };
    if cfg.tls.disable {
        warn!(
            field = "tls.disable",
            "TLS is disabled: plain gRPC to the scheduler; anyone on the path can read this \
             node's assignments and act as it"
        );
    }
    let checks = crate::roles::router(Arc::new(crate::roles::RoleChecks {
        statuses: shared.statuses.clone(),
        desired: shared.desired.clone(),
        lease: lease.clone(),
        max_lag_seconds: 30,
    }))
    .merge(crate::seed::router(Arc::new(crate::seed::Donor::new(
        shared.desired.clone(),
        shared.statuses.clone(),
        shared.runtime.clone(),
        cfg.backup_nice,
        crate::backup::run::Tuning {
            throttle_mib_s: cfg.backup_throttle_mib_s,
            ionice_idle: cfg.backup_ionice_idle,
            zstd_threads: cfg.backup_zstd_threads,
        },
        shared.state.clone(),
    ))));
    let link = tokio::spawn(
        link::run(link_cfg, source, desired_tx, lease, shutdown.child_token())
            .instrument(tracing::info_span!("link")),
    );
    let rec = tokio::spawn(
        reconcile::run(shared, shutdown.child_token()).instrument(tracing::info_span!("reconcile")),
    );
    let inventory = tokio::spawn(
        exporter
            .clone()
            .run_inventory(shutdown.child_token())
            .instrument(tracing::info_span!("metrics")),
    );
    let collectors = tokio::spawn(
        exporter
            .clone()
            .run_collectors(shutdown.child_token())
            .instrument(tracing::info_span!("metrics")),
    );
    let files = tokio::spawn(
        exporter
            .clone()
            .run_files(shutdown.child_token())
            .instrument(tracing::info_span!("metrics")),
    );
    // Validated by the config: a bad address never gets here.
    let http = match cfg.http_listen.parse() {
        Ok(addr) => tokio::spawn(
            crate::http::serve(addr, exporter, checks, shutdown.child_token())
                .instrument(tracing::info_span!("http")),
        ),
        Err(_) => tokio::spawn(async {}),
    };
    info!(node = %cfg.node, network = %cfg.network, http = %cfg.http_listen, "agent running");
    let _ = tokio::join!(link, rec, inventory, collectors, files, http, job_runner, archivers);
    info!("agent stopped; database containers keep running");
    Ok(())
}

//! The agent's TOML config file: what the node offers and how it reaches the scheduler.
//! Unknown fields are refused; every default is documented next to its field.

use crate::volume::DiskConfig;
use mofang_common::ids::validate_dns_label;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mofang_common::config::invalid;
pub use mofang_common::config::{Error, Result};

/// How member containers reach the network.
#[derive(Debug, Clone, PartialEq)]
pub enum NetworkMode {
    /// Host network; each member gets a port from `port_range` on `advertise_address`.
    Host,
    /// A named Docker network; each member has its own IP there and the engine's default port.
    Docker(String),
}

/// The agent's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This node's name (DNS label). Required.
    pub node: String,
    /// Scheduler gRPC endpoints, tried in turn: `https://` with TLS (the default), `http://`
    /// with `tls.disable = true`. Default `["https://127.0.0.1:9090"]`.
    #[serde(default = "default_schedulers")]
    pub schedulers: Vec<String>,
    /// The address clients use to reach this host (host network mode). Default `127.0.0.1`.
    #[serde(default = "default_advertise")]
    pub advertise_address: String,
    /// Where the agent keeps its state (desired state, member configs, secrets).
    /// Default `/var/lib/mofang/agent`.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Key file (mode 0600) that seals the secrets kept in `state_dir` (docs/secrets.md).
    /// Created on first start. Default: beside the state directory, `<state_dir>.key`
    /// (`/var/lib/mofang/agent.key`).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Where the members' rendered config files go: they hold the passwords the databases
    /// read, so they live in RAM (tmpfs), mode 0700, and are rendered again from the sealed
    /// copy in `state_dir` after a reboot. Default `/run/mofang-agent`.
    #[serde(default = "default_run_dir")]
    pub run_dir: PathBuf,
    /// The container runtime members run on: `docker` (Docker Engine at `DOCKER_HOST` or
    /// `/var/run/docker.sock`) or `containerd` (settings in `[containerd]`). Default `docker`.
    #[serde(default = "default_runtime")]
    pub runtime: String,
    /// `[containerd]`: the containerd runtime's socket, namespace and CNI network.
    #[serde(default)]
    pub containerd: ContainerdConfig,
    /// `host`, or the name of the network members attach to: a Docker network (runtime
    /// `docker`) or the CNI bridge network the agent defines (runtime `containerd`). Default `host`.
    #[serde(default = "default_network")]
    pub network: String,
    /// Ports for members in host network mode, inclusive. Default `[33000, 33999]`.
    #[serde(default = "default_port_range")]
    pub port_range: [u16; 2],
    /// Node labels sent to the scheduler (`zone`, `region`, ...). Default none.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// CPU cores offered to members. Default: all cores of the host.
    #[serde(default)]
    pub cpu: Option<f64>,
    /// Memory offered to members in MiB. Default: the host's memory less 1 GiB.
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Data disks. At least one is required.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// Heartbeat interval in ms. Default 1000.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_interval_ms: u64,
    /// Without an acknowledged heartbeat for this long, primaries are fenced. Default 10000.
    #[serde(default = "default_lease_ms")]
    pub lease_ttl_ms: u64,
    /// A primary stops writes (is fenced) this long before its lease runs out, and is killed
    /// if the fence has not finished when the lease runs out (decision 145). Must be below
    /// `lease_ttl_ms`. Default: three tenths of the lease (3000 of the default 10000).
    #[serde(default)]
    pub fence_budget_ms: Option<u64>,
    /// Image per `engine:version`, e.g. `"mariadb:10.11" = "mofang/mariadb:10.11"`.
    /// Default: `mofang/<engine>:<version>` (built by packaging/images/build).
    #[serde(default)]
    pub images: BTreeMap<String, String>,
    /// Milliseconds a database gets to shut down cleanly before SIGKILL. Default 30000.
    #[serde(default = "default_stop_grace")]
    pub stop_grace_ms: u64,
    /// Deprecated name of `stop_grace_ms`, in seconds (every duration is `_ms` now).
    #[serde(default, rename = "stop_grace_secs")]
    pub deprecated_stop_grace_secs: Option<u64>,
    /// Log as JSON lines (for EFK). Default false.
    #[serde(default)]
    pub log_json: bool,
    /// Consul HTTP address (e.g. `http://127.0.0.1:8500`): schedulers are found there
    /// (healthy `mofang-scheduler` services), `schedulers` is the fallback. Default none.
    #[serde(default)]
    pub consul: Option<String>,
    /// Address of the agent's HTTP server (`GET /metrics`). Default `0.0.0.0:9187`: Prometheus
    /// scrapes from another host; use `127.0.0.1:9187` to keep it local.
    #[serde(default = "default_http_listen")]
    pub http_listen: String,
    /// How long one member's database may take to answer a metrics collection before it shows
    /// `mysql_up 0` / `redis_up 0`, in ms. Default 2000.
    #[serde(default = "default_metrics_timeout_ms")]
    pub metrics_timeout_ms: u64,
    /// How often each member's database statistics are collected in the background, in ms;
    /// scrapes serve the last collection (`mofang_agent_collect_age_seconds`). Default 5000.
    #[serde(default = "default_metrics_interval_ms")]
    pub metrics_interval_ms: u64,
    /// Nice value (0 ..= 19) of a backup's work: mariadb-backup in the member's container and
    /// the agent's zstd threads. 19 (the default): the databases of the host run first and the
    /// backup takes what CPU is left; 0: the backup competes as an equal (docs/backup.md).
    #[serde(default = "default_backup_nice")]
    pub backup_nice: i32,
    /// Limit of a MariaDB backup's reads of InnoDB data files, in MiB/s (`mariadb-backup
    /// --throttle`: I/O operations of 1 MiB per second). 0 (the default): no limit. The
    /// backup then lasts at least its data size divided by the limit (docs/backup.md).
    #[serde(default)]
    pub backup_throttle_mib_s: u32,
    /// Run mariadb-backup in the idle I/O class (`ionice -c 3`). Only a disk scheduler that
    /// honours I/O classes (BFQ) acts on it; mq-deadline and none ignore it. Default false.
    #[serde(default)]
    pub backup_ionice_idle: bool,
    /// zstd worker threads of a full backup's compression. 0 (the default): the host's
    /// cores, at most 4.
    #[serde(default)]
    pub backup_zstd_threads: u32,
    /// The cgroup the members' containers are made under (Docker's `--cgroup-parent`): an
    /// absolute path such as `/mofang` with Docker's cgroupfs driver, a slice such as
    /// `mofang.slice` with its systemd driver. On containerd, the path that replaces the
    /// default `/<containerd.namespace>`. Default none: the runtime's own (`/docker`, or
    /// `/system.slice` under systemd). Changes apply to containers made after it.
    #[serde(default)]
    pub member_cgroup_parent: Option<String>,
    /// CPU weight of that parent cgroup against the host's other work (1 ..= 10000, the scale
    /// of cgroup v2's `cpu.weight` and systemd's `CPUWeight=`; 100 is a default process's;
    /// on cgroup v1 written as `cpu.shares` = weight × 1024 / 100). The agent writes it when
    /// it starts, so it needs write access to the cgroup files (not under the packaged
    /// unit: there, set `CPUWeight=` on the slice). Default none: not written
    /// (docs/agent.md, "CPU weight of the members").
    #[serde(default)]
    pub member_cpu_weight: Option<u32>,
    /// `[tls]`: how the agent proves its node and checks the scheduler (docs/security.md).
    #[serde(default)]
    pub tls: AgentTlsConfig,
}

/// Which container runtime runs the members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// Docker Engine.
    Docker,
    /// containerd, through its gRPC API.
    Containerd,
}

/// `[containerd]`: used when `runtime = "containerd"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerdConfig {
    /// containerd's gRPC socket. Default `/run/containerd/containerd.sock`.
    #[serde(default = "default_containerd_socket")]
    pub socket: PathBuf,
    /// The containerd namespace of the agent's images and containers; `moby` (Docker Engine's)
    /// is refused. Default `mofang`.
    #[serde(default = "default_containerd_namespace")]
    pub namespace: String,
    /// Snapshotter of the members' root filesystems. Default `overlayfs`.
    #[serde(default = "default_snapshotter")]
    pub snapshotter: String,
    /// Where the runtime keeps task logs, exec pipes and CNI address allocations.
    /// Default `<state_dir>/containerd`.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// CNI plugin binaries (Debian's `containernetworking-plugins`). Default `/usr/lib/cni`.
    #[serde(default = "default_cni_plugin_dir")]
    pub cni_plugin_dir: PathBuf,
    /// The Linux bridge of the members' network (at most 15 characters). Default `mofang0`.
    #[serde(default = "default_cni_bridge")]
    pub bridge: String,
    /// The subnet members get addresses from (IPv4 CIDR). Default `10.213.0.0/16`.
    #[serde(default = "default_cni_subnet")]
    pub subnet: String,
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        ContainerdConfig {
            socket: default_containerd_socket(),
            namespace: default_containerd_namespace(),
            snapshotter: default_snapshotter(),
            state_dir: None,
            cni_plugin_dir: default_cni_plugin_dir(),
            bridge: default_cni_bridge(),
            subnet: default_cni_subnet(),
        }
    }
}

fn default_runtime() -> String {
    "docker".into()
}
fn default_containerd_socket() -> PathBuf {
    PathBuf::from("/run/containerd/containerd.sock")
}
fn default_containerd_namespace() -> String {
    "mofang".into()
}
fn default_snapshotter() -> String {
    "overlayfs".into()
}
fn default_cni_plugin_dir() -> PathBuf {
    PathBuf::from("/usr/lib/cni")
}
fn default_cni_bridge() -> String {
    "mofang0".into()
}
fn default_cni_subnet() -> String {
    "10.213.0.0/16".into()
}

/// Whether `s` is an IPv4 CIDR (`a.b.c.d/n`, n in 8 ..= 30).
fn is_ipv4_cidr(s: &str) -> bool {
    let Some((ip, len)) = s.split_once('/') else {
        return false;
    };
    ip.parse::<std::net::Ipv4Addr>().is_ok()
        && len.parse::<u8>().is_ok_and(|n| (8..=30).contains(&n))
}

/// `[tls]`: the agent's side of mutual TLS with the scheduler.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentTlsConfig {
    /// Plain gRPC: the scheduler cannot tell this agent from anyone else. Only for a closed
    /// test network; logged as a WARN at start. Default false.
    #[serde(default)]
    pub disable: bool,
    /// The cluster CA certificate: the scheduler's certificate must chain to it. Required
    /// unless `disable`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// This node's certificate (`mofang tls cert create --agent NODE`, or obtained with
    /// `join_token`). Re-read when it changes, without restarting anything.
    /// Default `<state_dir>/tls/agent.pem`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Its private key (0600). Default `<state_dir>/tls/agent-key.pem`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name the scheduler's certificate must carry. Default `server.mofang` (every
    /// scheduler certificate `mofang tls cert create --server` makes has it).
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// A one-time join token (`mofang node join-token create`): with no certificate at
    /// `cert_file`, the agent makes a key there, has the scheduler sign a request for it,
    /// and goes on. Never logged. Default none.
    #[serde(default)]
    pub join_token: Option<String>,
}

impl Default for AgentTlsConfig {
    fn default() -> Self {
        AgentTlsConfig {
            disable: false,
            ca_file: None,
            cert_file: None,
            key_file: None,
            server_name: default_server_name(),
            join_token: None,
        }
    }
}

impl std::fmt::Debug for AgentTlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentTlsConfig")
            .field("disable", &self.disable)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("server_name", &self.server_name)
            .field(
                "join_token",
                &self.join_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

fn default_server_name() -> String {
    mofang_common::tls::SERVER_NAME.to_owned()
}

fn default_schedulers() -> Vec<String> {
    vec!["https://127.0.0.1:9090".into()]
}
fn default_advertise() -> String {
    "127.0.0.1".into()
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/mofang/agent")
}
fn default_run_dir() -> PathBuf {
    PathBuf::from("/run/mofang-agent")
}
fn default_network() -> String {
    "host".into()
}
fn default_port_range() -> [u16; 2] {
    [33000, 33999]
}
fn default_heartbeat_ms() -> u64 {
    1000
}
fn default_lease_ms() -> u64 {
    10_000
}
fn default_stop_grace() -> u64 {
    30_000
}
fn default_http_listen() -> String {
    "0.0.0.0:9187".into()
}
fn default_metrics_timeout_ms() -> u64 {
    2000
}
fn default_metrics_interval_ms() -> u64 {
    5000
}

fn default_backup_nice() -> i32 {
    19
}

impl AgentConfig {
    /// The key file: `key_file`, or `<state_dir>.key`.
    pub fn key_file(&self) -> PathBuf {
        self.key_file.clone().unwrap_or_else(|| {
            let mut p = self.state_dir.clone().into_os_string();
            p.push(".key");
            PathBuf::from(p)
        })
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = mofang_common::config::read(path)?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut cfg: AgentConfig = mofang_common::config::parse_toml(text, path)?;
        if let Some(secs) = cfg.deprecated_stop_grace_secs.take() {
            if cfg.stop_grace_ms != default_stop_grace() {
                return Err(invalid(
                    "stop_grace_secs",
                    "given with stop_grace_ms: keep only stop_grace_ms",
                ));
            }
            tracing::warn!(
                field = "stop_grace_secs",
                "deprecated config name: use stop_grace_ms (value in milliseconds)"
            );
            cfg.stop_grace_ms = secs.saturating_mul(1000);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        validate_dns_label("node", &self.node, 63).map_err(|e| invalid("node", e.to_string()))?;
        if self.schedulers.is_empty() {
            return Err(invalid(
                "schedulers",
                "at least one scheduler endpoint is needed",
            ));
        }
        let scheme = if self.tls.disable {
            "http://"
        } else {
            "https://"
        };
        for (i, s) in self.schedulers.iter().enumerate() {
            if !s.starts_with(scheme) {
                return Err(invalid(
                    format!("schedulers[{i}]"),
                    if self.tls.disable {
                        format!("'{s}' must start with http:// (tls.disable = true)")
                    } else {
                        format!("'{s}' must start with https:// (TLS is on; tls.disable = true for plain gRPC)")
                    },
                ));
            }
        }
        if self.disks.is_empty() {
            return Err(invalid(
                "disks",
                "at least one data disk ([[disks]] path = ...) is needed",
            ));
        }
        for (i, d) in self.disks.iter().enumerate() {
            if !d.path.is_absolute() {
                return Err(invalid(
                    format!("disks[{i}].path"),
                    "must be an absolute path",
                ));
            }
        }
        if !self.run_dir.is_absolute() {
            return Err(invalid("run_dir", "must be an absolute path"));
        }
        if self.run_dir.starts_with(&self.state_dir) {
            return Err(invalid(
                "run_dir",
                "must not be inside state_dir: it holds passwords in clear",
            ));
        }
        if let Some(k) = &self.key_file {
            if k.as_os_str().is_empty() || k.starts_with(&self.state_dir) {
                return Err(invalid(
                    "key_file",
                    "must be a file outside state_dir (it opens what state_dir holds)",
                ));
            }
        }
        if self.port_range[0] == 0 || self.port_range[0] > self.port_range[1] {
            return Err(invalid(
                "port_range",
                "must be [low, high] with 0 < low <= high",
            ));
        }
        if self.network.is_empty() {
            return Err(invalid(
                "network",
                "must be `host` or a Docker network name",
            ));
        }
        if self.heartbeat_interval_ms == 0 || self.heartbeat_interval_ms >= self.lease_ttl_ms {
            return Err(invalid(
                "heartbeat_interval_ms",
                "must be > 0 and below lease_ttl_ms",
            ));
        }
        if self.fence_budget_ms.is_some_and(|b| b >= self.lease_ttl_ms) {
            return Err(invalid("fence_budget_ms", "must be below lease_ttl_ms"));
        }
        if let Some(cpu) = self.cpu {
            if !(cpu.is_finite() && cpu > 0.0) {
                return Err(invalid("cpu", "must be a positive number of cores"));
            }
        }
        if self.stop_grace_ms > 3_600_000 {
            return Err(invalid("stop_grace_ms", "at most 3600000"));
        }
        if self.http_listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "http_listen",
                format!("'{}' is not an ip:port address", self.http_listen),
            ));
        }
        if !(10..=60_000).contains(&self.metrics_timeout_ms) {
            return Err(invalid(
                "metrics_timeout_ms",
                "must be between 10 and 60000",
            ));
        }
        if !(250..=300_000).contains(&self.metrics_interval_ms) {
            return Err(invalid(
                "metrics_interval_ms",
                "must be between 250 and 300000",
            ));
        }
        if !(0..=19).contains(&self.backup_nice) {
            return Err(invalid("backup_nice", "must be between 0 and 19"));
        }
        if self.backup_throttle_mib_s > 100_000 {
            return Err(invalid(
                "backup_throttle_mib_s",
                "must be between 0 (no limit) and 100000",
            ));
        }
        if self.backup_zstd_threads > 64 {
            return Err(invalid(
                "backup_zstd_threads",
                "must be between 0 (the host's cores, at most 4) and 64",
            ));
        }
        self.validate_runtime()?;
        self.validate_cgroup()?;
        // Last: a config with other mistakes names those first.
        self.validate_tls()
    }

    fn validate_cgroup(&self) -> Result<()> {
        if let Some(p) = &self.member_cgroup_parent {
            let slice = p.ends_with(".slice") && !p.contains('/');
            let path = p.starts_with('/')
                && p.len() > 1
                && p.split('/')
                    .skip(1)
                    .all(|c| !c.is_empty() && c != "." && c != "..");
            if !slice && !path {
                return Err(invalid(
                    "member_cgroup_parent",
                    format!(
                        "'{p}' is neither an absolute cgroup path such as /mofang nor a \
                         systemd slice such as mofang.slice"
                    ),
                ));
            }
            if slice && self.runtime_kind() == Some(RuntimeKind::Containerd) {
                return Err(invalid(
                    "member_cgroup_parent",
                    "the containerd runtime makes cgroupfs paths: an absolute path such as /mofang",
                ));
            }
        }
        let Some(w) = self.member_cpu_weight else {
            return Ok(());
        };
        if !(1..=10_000).contains(&w) {
            return Err(invalid("member_cpu_weight", "must be between 1 and 10000"));
        }
        match self.members_cgroup() {
            Some(p) if p.ends_with(".slice") => Err(invalid(
                "member_cpu_weight",
                "systemd owns a slice's weight: set CPUWeight= on the slice unit instead",
            )),
            Some(_) => Ok(()),
            None => Err(invalid(
                "member_cpu_weight",
                "needs member_cgroup_parent with the docker runtime (Docker's own parent is shared)",
            )),
        }
    }

    /// The cgroup path the members' cgroups are made under, when the agent knows it:
    /// `member_cgroup_parent`, or on containerd `/<containerd.namespace>`.
    pub fn members_cgroup(&self) -> Option<String> {
        match (&self.member_cgroup_parent, self.runtime_kind()) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(RuntimeKind::Containerd)) => {
                Some(format!("/{}", self.containerd.namespace))
            }
            (None, _) => None,
        }
    }

    fn validate_runtime(&self) -> Result<()> {
        if self.runtime_kind().is_none() {
            return Err(invalid(
                "runtime",
                format!(
                    "'{}' is not a runtime: `docker` or `containerd`",
                    self.runtime
                ),
            ));
        }
        let c = &self.containerd;
        if !c.socket.is_absolute() {
            return Err(invalid("containerd.socket", "must be an absolute path"));
        }
        let ns_ok = !c.namespace.is_empty()
            && c.namespace.len() <= 76
            && c.namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ns_ok {
            return Err(invalid(
                "containerd.namespace",
                "must be letters, digits, '-', '_' or '.' (at most 76)",
            ));
        }
        if c.namespace == "moby" {
            return Err(invalid(
                "containerd.namespace",
                "`moby` is Docker Engine's namespace: the agent never touches its containers",
            ));
        }
        if c.snapshotter.is_empty() {
            return Err(invalid("containerd.snapshotter", "must not be empty"));
        }
        if c.state_dir.as_ref().is_some_and(|d| !d.is_absolute()) {
            return Err(invalid("containerd.state_dir", "must be an absolute path"));
        }
        if !c.cni_plugin_dir.is_absolute() {
            return Err(invalid(
                "containerd.cni_plugin_dir",
                "must be an absolute path",
            ));
        }
        if c.bridge.is_empty()
            || c.bridge.len() > 15
            || !c
                .bridge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(invalid(
                "containerd.bridge",
                "must be an interface name: 1 to 15 letters, digits, '-', '_' or '.'",
            ));
        }
        if !is_ipv4_cidr(&c.subnet) {
            return Err(invalid(
                "containerd.subnet",
                format!("'{}' is not an IPv4 CIDR such as 10.213.0.0/16", c.subnet),
            ));
        }
        Ok(())
    }

    /// The runtime chosen by `runtime`; None for a name that is not one.
    pub fn runtime_kind(&self) -> Option<RuntimeKind> {
        match self.runtime.as_str() {
            "docker" => Some(RuntimeKind::Docker),
            "containerd" => Some(RuntimeKind::Containerd),
            _ => None,
        }
    }

    /// The containerd runtime's directory: `containerd.state_dir`, or `<state_dir>/containerd`.
    pub fn containerd_state_dir(&self) -> PathBuf {
        self.containerd
            .state_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("containerd"))
    }

    fn validate_tls(&self) -> Result<()> {
        let t = &self.tls;
        if t.disable {
            for (field, set) in [
                ("tls.ca_file", t.ca_file.is_some()),
                ("tls.cert_file", t.cert_file.is_some()),
                ("tls.key_file", t.key_file.is_some()),
                ("tls.join_token", t.join_token.is_some()),
            ] {
                if set {
                    return Err(invalid(
                        field,
                        "given with tls.disable = true: plain gRPC uses no certificate; drop one",
                    ));
                }
            }
            return Ok(());
        }
        if t.ca_file.is_none() {
            return Err(invalid(
                "tls.ca_file",
                "the cluster CA certificate is needed to check the scheduler \
                 (or tls.disable = true for plain gRPC)",
            ));
        }
        if t.server_name.is_empty() {
            return Err(invalid("tls.server_name", "must not be empty"));
        }
        if let Some(token) = &t.join_token {
            if token.trim().is_empty() || !token.trim().bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(
                    "tls.join_token",
                    "must be the token `mofang node join-token create` printed",
                ));
            }
        }
        Ok(())
    }

    /// This node's certificate file.
    pub fn cert_path(&self) -> PathBuf {
        self.tls
            .cert_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("tls/agent.pem"))
    }

    /// This node's key file.
    pub fn key_path(&self) -> PathBuf {
        self.tls
            .key_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("tls/agent-key.pem"))
    }

    /// The network mode.
    pub fn network_mode(&self) -> NetworkMode {
        if self.network == "host" {
            NetworkMode::Host
        } else {
            NetworkMode::Docker(self.network.clone())
        }
    }

    /// The image for an engine version.
    pub fn image(&self, engine: &str, version: &str) -> String {
        self.images
            .get(&format!("{engine}:{version}"))
            .cloned()
            .unwrap_or_else(|| format!("mofang/{engine}:{version}"))
    }

    /// Heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// Lease ttl.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }

    /// How long before the lease runs out a primary stops writes.
    pub fn fence_budget(&self) -> Duration {
        self.fence_budget_ms.map_or_else(
            || crate::link::default_fence_budget(self.lease_ttl()),
            Duration::from_millis,
        )
    }

    /// Per-member deadline of a database metrics collection.
    pub fn metrics_timeout(&self) -> Duration {
        Duration::from_millis(self.metrics_timeout_ms)
    }

    /// `metrics_interval_ms` as a duration.
    pub fn metrics_interval(&self) -> Duration {
        Duration::from_millis(self.metrics_interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `s`, with a CA file added when it has no `[tls]` (TLS is on by default).
    fn parse(s: &str) -> Result<AgentConfig> {
        if s.contains("[tls]") {
            raw(s)
        } else {
            raw(&format!("{s}\n[tls]\nca_file = \"/etc/mofang/ca.pem\"\n"))
        }
    }

    fn raw(s: &str) -> Result<AgentConfig> {
        AgentConfig::parse(s, Path::new("agent.toml"))
    }

    #[test]
    fn stop_grace_is_ms_and_the_old_seconds_name_still_reads() {
        let base = "node = \"node-a\"\n[[disks]]\npath = \"/data/ssd0\"\n";
        assert_eq!(parse(base).unwrap().stop_grace_ms, 30_000);
        let c = parse(&format!("stop_grace_secs = 5\n{base}")).unwrap();
        assert_eq!(c.stop_grace_ms, 5000);
        let e = parse(&format!(
            "stop_grace_secs = 5\nstop_grace_ms = 7000\n{base}"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("stop_grace_secs"), "{e}");
    }

    #[test]
    fn the_runtime_is_docker_unless_containerd_is_chosen_and_bad_fields_are_named() {
        let base = "node = \"node-a\"\n[[disks]]\npath = \"/data/ssd0\"\n";
        let c = parse(base).unwrap();
        assert_eq!(c.runtime_kind(), Some(RuntimeKind::Docker));
        assert_eq!(c.containerd.namespace, "mofang");
        assert_eq!(
            c.containerd.socket,
            Path::new("/run/containerd/containerd.sock")
        );
        assert_eq!(
            c.containerd_state_dir(),
            Path::new("/var/lib/mofang/agent/containerd")
        );
        let c = parse(&format!(
            "runtime = \"containerd\"\n{base}[containerd]\nsocket = \"/tmp/c.sock\"\nnamespace = \"db\"\n"
        ))
        .unwrap();
        assert_eq!(c.runtime_kind(), Some(RuntimeKind::Containerd));
        assert_eq!(c.containerd.namespace, "db");
        for (text, field) in [
            (format!("runtime = \"podman\"\n{base}"), "runtime"),
            (
                format!("{base}[containerd]\nnamespace = \"moby\"\n"),
                "containerd.namespace",
            ),
            (
                format!("{base}[containerd]\nnamespace = \"a/b\"\n"),
                "containerd.namespace",
            ),
            (
                format!("{base}[containerd]\nsocket = \"c.sock\"\n"),
                "containerd.socket",
            ),
            (
                format!("{base}[containerd]\nbridge = \"a-very-long-bridge-name\"\n"),
                "containerd.bridge",
            ),
            (
                format!("{base}[containerd]\nsubnet = \"10.0.0.0\"\n"),
                "containerd.subnet",
            ),
        ] {
            let e = parse(&text).unwrap_err();
            assert!(
                matches!(&e, Error::Invalid { field: f, .. } if f == field),
                "{field}: {e}"
            );
        }
    }

    #[test]
    fn the_members_cgroup_and_its_weight() {
        let base = "node = \"a\"\n[[disks]]\npath = \"/d\"\n";
        let c = parse(base).unwrap();
        assert_eq!(c.members_cgroup(), None, "Docker's own parent by default");
        let c = parse(&format!("runtime = \"containerd\"\n{base}")).unwrap();
        assert_eq!(c.members_cgroup().as_deref(), Some("/mofang"));
        let c = parse(&format!(
            "member_cgroup_parent = \"/db/members\"\nmember_cpu_weight = 1000\n{base}"
        ))
        .unwrap();
        assert_eq!(c.members_cgroup().as_deref(), Some("/db/members"));
        assert_eq!(c.member_cpu_weight, Some(1000));
        let c = parse(&format!("member_cgroup_parent = \"mofang.slice\"\n{base}")).unwrap();
        assert_eq!(c.members_cgroup().as_deref(), Some("mofang.slice"));
        for (bad, field, says) in [
            (
                "member_cgroup_parent = \"mofang\"",
                "member_cgroup_parent",
                "absolute",
            ),
            (
                "member_cgroup_parent = \"/\"",
                "member_cgroup_parent",
                "absolute",
            ),
            (
                "member_cgroup_parent = \"/a/../b\"",
                "member_cgroup_parent",
                "absolute",
            ),
            (
                "member_cgroup_parent = \"/a//b\"",
                "member_cgroup_parent",
                "absolute",
            ),
            (
                "runtime = \"containerd\"\nmember_cgroup_parent = \"m.slice\"",
                "member_cgroup_parent",
                "cgroupfs",
            ),
            (
                "member_cpu_weight = 100",
                "member_cpu_weight",
                "member_cgroup_parent",
            ),
            (
                "member_cgroup_parent = \"/m\"\nmember_cpu_weight = 0",
                "member_cpu_weight",
                "1 and 10000",
            ),
            (
                "member_cgroup_parent = \"/m\"\nmember_cpu_weight = 10001",
                "member_cpu_weight",
                "1 and 10000",
            ),
            (
                "member_cgroup_parent = \"m.slice\"\nmember_cpu_weight = 500",
                "member_cpu_weight",
                "CPUWeight=",
            ),
        ] {
            let e = parse(&format!("{bad}\n{base}")).unwrap_err();
            assert!(
                matches!(&e, Error::Invalid { field: f, .. } if f == field),
                "{bad}: {e}"
            );
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
        let c = parse(&format!(
            "runtime = \"containerd\"\nmember_cpu_weight = 10000\n{base}"
        ))
        .unwrap();
        assert_eq!(c.member_cpu_weight, Some(10000), "the namespace's cgroup");
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(
            "node = \"node-a\"\n[[disks]]\npath = \"/data/ssd0\"\n[tls]\nca_file = \"/etc/mofang/ca.pem\"\n",
        )
        .unwrap();
        assert_eq!(c.schedulers, vec!["https://127.0.0.1:9090"]);
        assert_eq!(c.tls.server_name, "server.mofang");
        assert_eq!(
            c.cert_path(),
            Path::new("/var/lib/mofang/agent/tls/agent.pem")
        );
        assert_eq!(c.network_mode(), NetworkMode::Host);
        assert_eq!(c.image("mariadb", "10.11"), "mofang/mariadb:10.11");
        assert_eq!(c.lease_ttl(), Duration::from_secs(10));
        assert_eq!(c.fence_budget(), Duration::from_secs(3));
    }

    #[test]
    fn the_fence_budget_is_set_below_the_lease() {
        let base = "node = \"a\"\n[[disks]]\npath = \"/d\"\n[tls]\nca_file = \"/ca.pem\"\n";
        let c = parse(&format!(
            "lease_ttl_ms = 2000\nfence_budget_ms = 500\n{base}"
        ))
        .unwrap();
        assert_eq!(c.fence_budget(), Duration::from_millis(500));
        let c = parse(&format!("lease_ttl_ms = 2000\n{base}")).unwrap();
        assert_eq!(c.fence_budget(), Duration::from_millis(600));
        let e = parse(&format!(
            "lease_ttl_ms = 2000\nfence_budget_ms = 2000\n{base}"
        ))
        .unwrap_err();
        assert!(
            matches!(&e, Error::Invalid { field, .. } if field == "fence_budget_ms"),
            "{e}"
        );
    }

    #[test]
    fn tls_is_on_unless_disabled_and_the_token_is_never_printed() {
        let base = "node = \"a\"\n[[disks]]\npath = \"/d\"\n";
        let e = raw(base).unwrap_err();
        assert!(e.to_string().contains("tls.ca_file"), "{e}");
        let plain = parse(&format!(
            "schedulers = [\"http://s:9090\"]\n{base}[tls]\ndisable = true\n"
        ))
        .unwrap();
        assert!(plain.tls.disable);
        for (text, field) in [
            (
                format!("schedulers = [\"http://s:9090\"]\n{base}[tls]\nca_file = \"/ca.pem\"\n"),
                "schedulers[0]",
            ),
            (
                format!("schedulers = [\"https://s:9090\"]\n{base}[tls]\ndisable = true\n"),
                "schedulers[0]",
            ),
            (
                format!("schedulers = [\"http://s:9090\"]\n{base}[tls]\ndisable = true\njoin_token = \"x\"\n"),
                "tls.join_token",
            ),
            (
                format!("{base}[tls]\nca_file = \"/ca.pem\"\njoin_token = \"two words\"\n"),
                "tls.join_token",
            ),
        ] {
            let e = parse(&text).unwrap_err();
            assert!(e.to_string().contains(field), "{text}: {e}");
        }
        let c = parse(&format!(
            "{base}[tls]\nca_file = \"/ca.pem\"\njoin_token = \"0123456789abcdef\"\n"
        ))
        .unwrap();
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse("node = \"node-a\"\nbogus = 1\n[[disks]]\npath = \"/d\"\n").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = parse("node = \"Node A\"\n[[disks]]\npath = \"/d\"\n").unwrap_err();
        assert!(e.to_string().contains("`node`"), "{e}");
        let e = parse("node = \"a\"\n").unwrap_err();
        assert!(e.to_string().contains("`disks`"), "{e}");
        let e = parse("node = \"a\"\n[[disks]]\npath = \"rel\"\n").unwrap_err();
        assert!(e.to_string().contains("disks[0].path"), "{e}");
        let e = parse("node = \"a\"\nport_range = [5, 1]\n[[disks]]\npath = \"/d\"\n").unwrap_err();
        assert!(e.to_string().contains("port_range"), "{e}");
        let e = parse("node = \"a\"\nhttp_listen = \"localhost\"\n[[disks]]\npath = \"/d\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("http_listen"), "{e}");
        let e =
            parse("node = \"a\"\nmetrics_timeout_ms = 0\n[[disks]]\npath = \"/d\"\n").unwrap_err();
        assert!(e.to_string().contains("metrics_timeout_ms"), "{e}");
        let e = parse("node = \"a\"\nmetrics_interval_ms = 10\n[[disks]]\npath = \"/d\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("metrics_interval_ms"), "{e}");
        let e = parse("node = \"a\"\nbackup_nice = 20\n[[disks]]\npath = \"/d\"\n").unwrap_err();
        assert!(e.to_string().contains("backup_nice"), "{e}");
        for bad in ["backup_throttle_mib_s = 100001", "backup_zstd_threads = 65"] {
            let e = parse(&format!("node = \"a\"\n{bad}\n[[disks]]\npath = \"/d\"\n")).unwrap_err();
            let field = bad.split(' ').next().unwrap_or_default();
            assert!(e.to_string().contains(field), "{e}");
        }
        let e = parse("node = 5\n").unwrap_err();
        assert!(e.to_string().contains("node"), "{e}");
        // Secrets at rest: the key and the clear config files never inside state_dir.
        let e = parse(
            "node = \"a\"\nstate_dir = \"/s\"\nkey_file = \"/s/k\"\n[[disks]]\npath = \"/d\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("`key_file`"), "{e}");
        let e = parse(
            "node = \"a\"\nstate_dir = \"/s\"\nrun_dir = \"/s/run\"\n[[disks]]\npath = \"/d\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("`run_dir`"), "{e}");
        let c =
            parse("node = \"a\"\nstate_dir = \"/v/agent\"\n[[disks]]\npath = \"/d\"\n").unwrap();
        assert_eq!(c.key_file(), PathBuf::from("/v/agent.key"));
        assert_eq!(c.run_dir, PathBuf::from("/run/mofang-agent"));
    }
}

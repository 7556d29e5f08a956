//! The scheduler's TOML config: listen addresses, state directory, timings, API tokens, and
//! the store backend (SQLite, Consul, etcd) with its connection settings.
//! Unknown fields are refused; defaults are documented next to each field.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mofang_common::config::invalid;
pub use mofang_common::config::{Error, Result};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenRole {
    /// Read everything but credentials and audit.
    Viewer,
    /// Also create, delete, drain, cordon.
    Operator,
    /// Also credentials and the audit log.
    Admin,
}

/// An API token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Name recorded in the audit log.
    pub name: String,
    /// Role.
    pub role: TokenRole,
    /// The token's SHA-256 in hex (preferred: the config then holds no secret) ...
    #[serde(default)]
    pub sha256: Option<String>,
    /// ... or the token itself.
    #[serde(default)]
    pub secret: Option<String>,
}

/// The scheduler's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// REST API listen address. Default `0.0.0.0:8080`.
    #[serde(default = "default_rest")]
    pub rest_listen: SocketAddr,
    /// Agent gRPC listen address. Default `0.0.0.0:9090`.
    #[serde(default = "default_grpc")]
    pub grpc_listen: SocketAddr,
    /// State directory (SQLite store, generated token). Default `/var/lib/mofang/scheduler`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Root keyring file (0600) whose key seals the store's data keyring, which seals every
    /// secret in the store (docs/secrets.md). Created on first start when the store holds no
    /// secrets yet; several schedulers on one Consul or etcd store need the same file.
    /// Default `<data_dir>/keyring.json`.
    #[serde(default)]
    pub keyring_file: Option<PathBuf>,
    /// A node without a heartbeat this long is `down`. Default 5000.
    #[serde(default = "default_node_ttl")]
    pub node_ttl_ms: u64,
    /// Heartbeat interval asked of agents. Default 1000.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval_ms: u64,
    /// API tokens. None: an admin token is generated on first start.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// JSON log lines. Default false.
    #[serde(default)]
    pub log_json: bool,
    /// Address other schedulers, clients and Consul reach this one at (its REST port is
    /// added). Followers redirect API requests to the leader's. Also this scheduler's identity
    /// in the election: a campaign clears a claim left under the same address (a dead earlier
    /// run), so each scheduler needs its own (docs/ha.md). Default `127.0.0.1`.
    #[serde(default = "default_advertise")]
    pub advertise_address: String,
    /// Failover, switchover and self-healing knobs (docs/failover.md).
    #[serde(default)]
    pub failover: crate::failover::FailoverConfig,
    /// Where the state lives: `sqlite` (a file in `data_dir`, one scheduler), `consul` or
    /// `etcd` (shared by several schedulers). Default `sqlite`.
    #[serde(default)]
    pub store: StoreKind,
    /// Consul connection, used when `store = "consul"`.
    #[serde(default)]
    pub consul: ConsulConfig,
    /// etcd connection, used when `store = "etcd"`.
    #[serde(default)]
    pub etcd: EtcdConfig,
    /// `[tls]`: certificates of the REST API and the agents' gRPC port (docs/security.md).
    /// Absent: TLS on with a CA and certificate the scheduler makes in `<data_dir>/tls/`.
    #[serde(default)]
    pub tls: TlsConfig,
    /// `[backup]`: backup and binlog archiving knobs (docs/backup.md).
    #[serde(default)]
    pub backup: BackupConfig,
    /// `[history]`: how long events and finished operations are kept (decision 174).
    #[serde(default)]
    pub history: HistoryConfig,
}

/// `[history]`: retention of the store's history. The audit log is never pruned: it is the
/// record of who did what, and is exported (`mofang audit`), not aged out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// Events older than this many days are deleted by the leader (0: kept forever).
    /// Default 90.
    #[serde(default = "default_keep_days")]
    pub events_keep_days: u32,
    /// Finished day-2 operations and batches that ended more than this many days ago are
    /// deleted by the leader (0: kept forever); an operation of a batch still kept stays.
    /// Default 90.
    #[serde(default = "default_keep_days")]
    pub operations_keep_days: u32,
}

fn default_keep_days() -> u32 {
    90
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            events_keep_days: default_keep_days(),
            operations_keep_days: default_keep_days(),
        }
    }
}

/// `[backup]`: backup and binlog archiving knobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// The primary's binlog is flushed (closed and archived) when this many seconds passed
    /// without a rotation while it holds unarchived transactions: the archive's lag, and so
    /// the latest time a point-in-time restore reaches, stays within about this. Default 60.
    #[serde(default = "default_archive_interval")]
    pub archive_interval_s: u64,
}

fn default_archive_interval() -> u64 {
    60
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            archive_interval_s: default_archive_interval(),
        }
    }
}

/// `[tls]`: the scheduler's TLS. Given files are read at start (a missing one exits 64
/// naming its field) and again on SIGHUP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Plain HTTP and plain gRPC: anyone who reaches the ports acts as any node and reads
    /// tokens off the wire. Only for a closed test network; logged as a WARN at start.
    /// Default false.
    #[serde(default)]
    pub disable: bool,
    /// The cluster CA certificate: agents' (and, with `rest_verify_clients`, users')
    /// client certificates must chain to it. With `cert_file` and `key_file`. Default: none,
    /// and then all three are made in `<data_dir>/tls/` (one scheduler only).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The scheduler's certificate (`mofang tls cert create --server NAME`), for gRPC and,
    /// unless `rest_cert_file` is set, REST.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Its private key (0600).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The CA's private key: signs agent certificates for join tokens. Default none: join
    /// tokens cannot be used (agents get certificates from `mofang tls cert create`).
    #[serde(default)]
    pub ca_key_file: Option<PathBuf>,
    /// REST's own certificate (e.g. from a public CA), with `rest_key_file`. Default:
    /// `cert_file`.
    #[serde(default)]
    pub rest_cert_file: Option<PathBuf>,
    /// Its private key.
    #[serde(default)]
    pub rest_key_file: Option<PathBuf>,
    /// REST clients must present a certificate signed by `ca_file` (besides their token).
    /// Default false.
    #[serde(default)]
    pub rest_verify_clients: bool,
    /// Validity of agent certificates signed for join tokens, days (1 ..= 7300). Default 365.
    #[serde(default = "default_join_cert_days")]
    pub join_cert_days: u32,
}

fn default_join_cert_days() -> u32 {
    365
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            disable: false,
            ca_file: None,
            cert_file: None,
            key_file: None,
            ca_key_file: None,
            rest_cert_file: None,
            rest_key_file: None,
            rest_verify_clients: false,
            join_cert_days: default_join_cert_days(),
        }
    }
}

impl TlsConfig {
    /// True when the scheduler makes its own CA and certificate (`[tls]` names no files).
    pub fn automatic(&self) -> bool {
        !self.disable
            && self.ca_file.is_none()
            && self.cert_file.is_none()
            && self.key_file.is_none()
    }

    fn validate(&self, store: StoreKind) -> Result<()> {
        let files = [
            ("tls.ca_file", &self.ca_file),
            ("tls.cert_file", &self.cert_file),
            ("tls.key_file", &self.key_file),
            ("tls.ca_key_file", &self.ca_key_file),
            ("tls.rest_cert_file", &self.rest_cert_file),
            ("tls.rest_key_file", &self.rest_key_file),
        ];
        if self.disable {
            if let Some((field, _)) = files.iter().find(|(_, f)| f.is_some()) {
                return Err(invalid(
                    *field,
                    "given with tls.disable = true: plain text uses no certificate; drop one",
                ));
            }
            return Ok(());
        }
        for (field, f) in files {
            if f.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(invalid(field, "must not be empty"));
            }
        }
        let trio = [
            ("tls.ca_file", self.ca_file.is_some()),
            ("tls.cert_file", self.cert_file.is_some()),
            ("tls.key_file", self.key_file.is_some()),
        ];
        if trio.iter().any(|(_, set)| *set) {
            if let Some((field, _)) = trio.iter().find(|(_, set)| !*set) {
                return Err(invalid(
                    *field,
                    "needed with the other two of ca_file, cert_file, key_file",
                ));
            }
        } else {
            if self.ca_key_file.is_some() {
                return Err(invalid(
                    "tls.ca_key_file",
                    "needs tls.ca_file, tls.cert_file and tls.key_file",
                ));
            }
            if store != StoreKind::Sqlite {
                return Err(invalid(
                    "tls.ca_file",
                    "several schedulers must share one CA: create it with `mofang tls ca create` \
                     and give ca_file, cert_file and key_file",
                ));
            }
        }
        match (&self.rest_cert_file, &self.rest_key_file) {
            (Some(_), None) => {
                return Err(invalid("tls.rest_key_file", "needed with rest_cert_file"))
            }
            (None, Some(_)) => {
                return Err(invalid("tls.rest_cert_file", "needed with rest_key_file"))
            }
            _ => {}
        }
        if self.join_cert_days == 0 || self.join_cert_days > mofang_common::tls::pki::MAX_DAYS {
            return Err(invalid("tls.join_cert_days", "must be 1 ..= 7300"));
        }
        Ok(())
    }
}

/// Store backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Embedded SQLite file in `data_dir`.
    #[default]
    Sqlite,
    /// Consul KV.
    Consul,
    /// etcd v3.
    Etcd,
}

/// `[consul]`: how to reach Consul and how to use it.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsulConfig {
    /// Address of the local Consul agent: `http://host:port`, or `https://host:port` with
    /// `ca_file`. Default `http://127.0.0.1:8500`.
    #[serde(default = "default_consul_address")]
    pub address: String,
    /// Prefix of every KV key the scheduler writes; ends with `/`. Default `mofang/`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// ACL token, sent as `X-Consul-Token` (never logged). Default none.
    #[serde(default)]
    pub token: Option<String>,
    /// TTL of the leader election session, seconds (10 ..= 86400; Consul may expire a
    /// session up to twice as late). Default 10.
    #[serde(default = "default_session_ttl")]
    pub session_ttl_secs: u64,
    /// Lock-delay of the leader lock, milliseconds (1000 ..= 60000): after a leader's
    /// session is invalidated nobody leads for this long, and a leader that cannot renew its
    /// session steps down within it. Default 5000.
    #[serde(default = "default_lock_delay")]
    pub lock_delay_ms: u64,
    /// TLS to Consul (`https://` addresses): the CA that signed Consul's certificate (its
    /// name is checked against the address), and the scheduler's client certificate and key
    /// when Consul has `verify_incoming`. Default none.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) presented to the servers, with `key_file`. Default none.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM, 0600). Default none.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// TLS toward Consul or etcd (`ca_file`, `cert_file`, `key_file` of `[consul]` and `[etcd]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendTls {
    /// CA certificate (PEM) that signed the servers' certificates; only it is trusted.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) the scheduler presents, with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM, 0600).
    pub key_file: Option<PathBuf>,
}

impl BackendTls {
    /// A rustls client config trusting `ca_file` and presenting `cert_file` if given; None
    /// without `ca_file` (plain HTTP).
    pub fn client_config(
        &self,
    ) -> std::result::Result<Option<rustls::ClientConfig>, mofang_common::tls::Error> {
        let Some(ca) = &self.ca_file else {
            return Ok(None);
        };
        let own = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some(mofang_common::tls::KeyPairFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        mofang_common::tls::client_config(ca, own.as_ref()).map(Some)
    }

    /// Reads the files and builds the client config once, so that a missing or bad file is
    /// a config error naming `<section>.<field>` (the daemon exits 64) before anything starts.
    pub fn check_files(&self, section: &str) -> Result<()> {
        let files = [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ];
        for (name, f) in files {
            if let Some(path) = f {
                std::fs::read(path).map_err(|e| {
                    invalid(
                        format!("{section}.{name}"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
            }
        }
        self.client_config().map_err(|e| {
            let field = match &e {
                mofang_common::tls::Error::Rustls { .. } => "key_file",
                _ => "ca_file",
            };
            invalid(format!("{section}.{field}"), e.to_string())
        })?;
        Ok(())
    }

    fn validate(&self, section: &str, https: bool) -> Result<()> {
        let files = [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ];
        for (name, f) in files {
            if f.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(invalid(format!("{section}.{name}"), "must not be empty"));
            }
        }
        if https && self.ca_file.is_none() {
            return Err(invalid(
                format!("{section}.ca_file"),
                "needed with https:// (the CA that signed the server's certificate)",
            ));
        }
        if !https {
            if let Some((name, _)) = files.iter().find(|(_, f)| f.is_some()) {
                return Err(invalid(
                    format!("{section}.{name}"),
                    "given with an http:// address: use https://",
                ));
            }
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => Err(invalid(
                format!("{section}.key_file"),
                "needed with cert_file",
            )),
            (None, Some(_)) => Err(invalid(
                format!("{section}.cert_file"),
                "needed with key_file",
            )),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Debug for ConsulConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulConfig")
            .field("address", &self.address)
            .field("prefix", &self.prefix)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("session_ttl_secs", &self.session_ttl_secs)
            .field("lock_delay_ms", &self.lock_delay_ms)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish()
    }
}

impl Default for ConsulConfig {
    fn default() -> Self {
        ConsulConfig {
            address: default_consul_address(),
            prefix: default_prefix(),
            token: None,
            session_ttl_secs: default_session_ttl(),
            lock_delay_ms: default_lock_delay(),
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

impl ConsulConfig {
    /// A client of the configured agent.
    pub fn client(&self) -> crate::consul::Result<crate::consul::ConsulClient> {
        let tls = self
            .tls()
            .client_config()
            .map_err(|e| crate::consul::Error::Address {
                address: self.address.clone(),
                message: e.to_string(),
            })?;
        crate::consul::ConsulClient::with_tls(&self.address, self.token.clone(), tls)
    }

    /// Its TLS settings.
    pub fn tls(&self) -> BackendTls {
        BackendTls {
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        }
    }

    /// The leader lock key: `<prefix>leader`.
    pub fn leader_key(&self) -> String {
        format!("{}leader", self.prefix)
    }

    /// Session TTL.
    pub fn session_ttl(&self) -> Duration {
        Duration::from_secs(self.session_ttl_secs)
    }

    /// Lock-delay.
    pub fn lock_delay(&self) -> Duration {
        Duration::from_millis(self.lock_delay_ms)
    }
}

/// `[etcd]`: how to reach etcd and how to use it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members, all `http://`, or all `https://` with `ca_file`.
    /// Default `["http://127.0.0.1:2379"]`.
    #[serde(default = "default_etcd_endpoints")]
    pub endpoints: Vec<String>,
    /// Prefix of every key the scheduler writes; ends with `/`. Default `mofang/`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// TTL of the leader's lease, seconds (2 ..= 300): a dead leader's key goes after this,
    /// and a leader that cannot renew steps down within it. Default 5.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl_secs: u64,
    /// TLS to etcd (`https://` endpoints): the CA that signed etcd's certificates, and the
    /// scheduler's client certificate and key when etcd has `--client-cert-auth`. Default none.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) presented to the servers, with `key_file`. Default none.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM, 0600). Default none.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: default_etcd_endpoints(),
            prefix: default_prefix(),
            lease_ttl_secs: default_lease_ttl(),
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

impl EtcdConfig {
    /// Its TLS settings.
    pub fn tls(&self) -> BackendTls {
        BackendTls {
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        }
    }

    /// The leader key: `<prefix>leader`.
    pub fn leader_key(&self) -> String {
        format!("{}leader", self.prefix)
    }

    /// Lease TTL.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_secs)
    }
}

fn default_consul_address() -> String {
    "http://127.0.0.1:8500".to_owned()
}
fn default_prefix() -> String {
    "mofang/".to_owned()
}
fn default_session_ttl() -> u64 {
    10
}
fn default_lock_delay() -> u64 {
    5000
}
fn default_etcd_endpoints() -> Vec<String> {
    vec!["http://127.0.0.1:2379".to_owned()]
}
fn default_lease_ttl() -> u64 {
    5
}

/// A key prefix: non-empty, ends with `/`, no leading `/`, printable ASCII without spaces.
fn check_prefix(field: &str, prefix: &str) -> Result<()> {
    if prefix.is_empty()
        || !prefix.ends_with('/')
        || prefix.starts_with('/')
        || prefix.contains("//")
        || !prefix.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(invalid(
            field,
            "must end with `/`, not start with `/`, and hold printable ASCII without spaces",
        ));
    }
    Ok(())
}

/// An `http://host:port` URL.
/// Checks an `http://` or `https://` URL with a host and no path; true for `https://`.
fn check_http_url(field: &str, url: &str) -> Result<bool> {
    let parsed = reqwest::Url::parse(url).map_err(|e| invalid(field, format!("{url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(
            field,
            format!("{url:?}: only http:// and https:// are supported"),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) || parsed.port_or_known_default().is_none() {
        return Err(invalid(field, format!("{url:?}: needs a host")));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() || parsed.path() != "/" {
        return Err(invalid(
            field,
            format!("{url:?}: no path, query or fragment"),
        ));
    }
    Ok(parsed.scheme() == "https")
}

fn default_advertise() -> String {
    "127.0.0.1".into()
}
fn default_rest() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
fn default_grpc() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9090))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/mofang/scheduler")
}
fn default_node_ttl() -> u64 {
    5000
}
fn default_heartbeat() -> u64 {
    1000
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            rest_listen: default_rest(),
            grpc_listen: default_grpc(),
            data_dir: default_data_dir(),
            keyring_file: None,
            node_ttl_ms: default_node_ttl(),
            heartbeat_interval_ms: default_heartbeat(),
            tokens: Vec::new(),
            log_json: false,
            failover: Default::default(),
            advertise_address: default_advertise(),
            store: StoreKind::default(),
            consul: ConsulConfig::default(),
            etcd: EtcdConfig::default(),
            tls: TlsConfig::default(),
            backup: BackupConfig::default(),
            history: HistoryConfig::default(),
        }
    }
}

impl SchedulerConfig {
    /// The root keyring file: `keyring_file`, or `<data_dir>/keyring.json`.
    pub fn keyring_file(&self) -> PathBuf {
        self.keyring_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keyring.json"))
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = mofang_common::config::read(path)?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut cfg: SchedulerConfig = mofang_common::config::parse_toml(text, path)?;
        match cfg.failover.take_deprecated() {
            Ok(used) => {
                for old in used {
                    tracing::warn!(
                        field = %format!("failover.{old}"),
                        "deprecated config name: use the _ms name (value in milliseconds)"
                    );
                }
            }
            Err((field, why)) => return Err(invalid(field, why)),
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        if self.node_ttl_ms < 500 {
            return Err(invalid("node_ttl_ms", "at least 500"));
        }
        if self.heartbeat_interval_ms == 0 || self.heartbeat_interval_ms >= self.node_ttl_ms {
            return Err(invalid(
                "heartbeat_interval_ms",
                "must be > 0 and below node_ttl_ms",
            ));
        }
        if !(1..=86_400).contains(&self.backup.archive_interval_s) {
            return Err(invalid(
                "backup.archive_interval_s",
                "between 1 and 86400 seconds",
            ));
        }
        for (field, days) in [
            ("history.events_keep_days", self.history.events_keep_days),
            (
                "history.operations_keep_days",
                self.history.operations_keep_days,
            ),
        ] {
            if days > 36_500 {
                return Err(invalid(field, "at most 36500 days (0 keeps forever)"));
            }
        }
        if let Err((field, why)) = self.failover.validate() {
            return Err(invalid(field, why));
        }
        if self
            .keyring_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty() || p.is_dir())
        {
            return Err(invalid("keyring_file", "must name a file"));
        }
        for (i, t) in self.tokens.iter().enumerate() {
            if t.name.is_empty() {
                return Err(invalid(format!("tokens[{i}].name"), "must not be empty"));
            }
            match (&t.sha256, &t.secret) {
                (Some(h), None) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {}
                (Some(_), None) => {
                    return Err(invalid(
                        format!("tokens[{i}].sha256"),
                        "must be 64 hex digits",
                    ))
                }
                (None, Some(s)) if s.len() >= 16 => {}
                (None, Some(_)) => {
                    return Err(invalid(
                        format!("tokens[{i}].secret"),
                        "at least 16 characters",
                    ))
                }
                _ => {
                    return Err(invalid(
                        format!("tokens[{i}]"),
                        "exactly one of `sha256` or `secret` is needed",
                    ))
                }
            }
        }
        self.validate_backends()?;
        self.tls.validate(self.store)
    }

    fn validate_backends(&self) -> Result<()> {
        let c = &self.consul;
        let https = check_http_url("consul.address", &c.address)?;
        c.tls().validate("consul", https)?;
        check_prefix("consul.prefix", &c.prefix)?;
        if let Some(token) = &c.token {
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(
                    "consul.token",
                    "must be non-empty printable ASCII without spaces",
                ));
            }
        }
        if !(10..=86_400).contains(&c.session_ttl_secs) {
            return Err(invalid("consul.session_ttl_secs", "must be 10 ..= 86400"));
        }
        if !(1000..=60_000).contains(&c.lock_delay_ms) {
            return Err(invalid("consul.lock_delay_ms", "must be 1000 ..= 60000"));
        }
        let e = &self.etcd;
        if e.endpoints.is_empty() {
            return Err(invalid("etcd.endpoints", "must list at least one URL"));
        }
        let mut schemes = Vec::new();
        for (i, url) in e.endpoints.iter().enumerate() {
            schemes.push(check_http_url(&format!("etcd.endpoints[{i}]"), url)?);
        }
        if schemes.iter().any(|h| *h != schemes[0]) {
            return Err(invalid(
                "etcd.endpoints",
                "mixes http:// and https://: all or none over TLS",
            ));
        }
        e.tls().validate("etcd", schemes[0])?;
        check_prefix("etcd.prefix", &e.prefix)?;
        if !(2..=300).contains(&e.lease_ttl_secs) {
            return Err(invalid("etcd.lease_ttl_secs", "must be 2 ..= 300"));
        }
        Ok(())
    }

    /// Node ttl.
    pub fn node_ttl(&self) -> Duration {
        Duration::from_millis(self.node_ttl_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let c = SchedulerConfig::parse("", Path::new("s.toml")).unwrap();
        assert_eq!(c.rest_listen.port(), 8080);
        let e = SchedulerConfig::parse("bogus = 1", Path::new("s.toml")).unwrap_err();
        assert!(e.to_string().contains("bogus"));
        let e = SchedulerConfig::parse(
            "[[tokens]]\nname = \"x\"\nrole = \"admin\"\n",
            Path::new("s"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("tokens[0]"));
        let e = SchedulerConfig::parse("node_ttl_ms = 1", Path::new("s")).unwrap_err();
        assert!(e.to_string().contains("node_ttl_ms"));
    }

    #[test]
    fn history_retention_defaults_to_90_days_and_0_keeps_forever() {
        let c = SchedulerConfig::parse("", Path::new("s")).unwrap();
        assert_eq!(
            (c.history.events_keep_days, c.history.operations_keep_days),
            (90, 90)
        );
        let c = SchedulerConfig::parse(
            "[history]\nevents_keep_days = 0\noperations_keep_days = 7\n",
            Path::new("s"),
        )
        .unwrap();
        assert_eq!(
            (c.history.events_keep_days, c.history.operations_keep_days),
            (0, 7)
        );
        let e = SchedulerConfig::parse("[history]\nevents_keep_days = 40000\n", Path::new("s"))
            .unwrap_err();
        assert!(e.to_string().contains("history.events_keep_days"), "{e}");
        let e =
            SchedulerConfig::parse("[history]\naudit_keep_days = 1\n", Path::new("s")).unwrap_err();
        assert!(e.to_string().contains("audit_keep_days"), "{e}");
        let e = SchedulerConfig::parse("[history]\nevents_keep_days = -1\n", Path::new("s"))
            .unwrap_err();
        assert!(e.to_string().contains("events_keep_days"), "{e}");
    }

    #[test]
    fn durations_are_ms_and_the_old_second_names_still_read() {
        let c = SchedulerConfig::parse(
            "[failover]\nfailover_block_period_s = 0\nreplace_after_s = 8\n",
            Path::new("s"),
        )
        .unwrap();
        assert_eq!(c.failover.failover_block_period_ms, 0);
        assert_eq!(c.failover.replace_after_ms, 8000);
        assert_eq!(c.failover.deprecated_replace_after_s, None);
        let c = SchedulerConfig::parse("[failover]\nreplace_after_ms = 8000\n", Path::new("s"))
            .unwrap();
        assert_eq!(c.failover.rules().replace_after, Duration::from_secs(8));
        let e = SchedulerConfig::parse(
            "[failover]\nreplace_after_s = 8\nreplace_after_ms = 9000\n",
            Path::new("s"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("failover.replace_after_s"), "{e}");
    }

    #[test]
    fn tls_section() {
        let c = SchedulerConfig::parse("", Path::new("s")).unwrap();
        assert!(
            c.tls.automatic(),
            "no [tls]: TLS on with files the scheduler makes"
        );
        assert_eq!(c.tls.join_cert_days, 365);
        let c = SchedulerConfig::parse("[tls]\ndisable = true\n", Path::new("s")).unwrap();
        assert!(c.tls.disable && !c.tls.automatic());
        let full = "[tls]\nca_file = \"/p/ca.pem\"\ncert_file = \"/p/s.pem\"\nkey_file = \"/p/s-key.pem\"\n";
        let c = SchedulerConfig::parse(full, Path::new("s")).unwrap();
        assert!(!c.tls.automatic());
        let c = SchedulerConfig::parse(&format!("store = \"consul\"\n{full}"), Path::new("s"));
        assert!(c.is_ok(), "HA with one CA");
        for (text, field) in [
            (
                "[tls]\ncert_file = \"/p/s.pem\"\nkey_file = \"/p/k.pem\"",
                "tls.ca_file",
            ),
            (
                "[tls]\nca_file = \"/p/ca.pem\"\nkey_file = \"/p/k.pem\"",
                "tls.cert_file",
            ),
            (
                "[tls]\nca_file = \"/p/ca.pem\"\ncert_file = \"/p/s.pem\"",
                "tls.key_file",
            ),
            ("[tls]\nca_key_file = \"/p/ca-key.pem\"", "tls.ca_key_file"),
            (
                "[tls]\ndisable = true\nca_file = \"/p/ca.pem\"",
                "tls.ca_file",
            ),
            ("[tls]\njoin_cert_days = 0", "tls.join_cert_days"),
            ("[tls]\nrest_cert_file = \"/p/r.pem\"", "tls.rest_key_file"),
            ("[tls]\nbogus = 1", "bogus"),
            // Several schedulers cannot each make their own CA.
            ("store = \"etcd\"", "tls.ca_file"),
        ] {
            let e = SchedulerConfig::parse(text, Path::new("s")).unwrap_err();
            assert!(e.to_string().contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn store_backends() {
        let c = SchedulerConfig::parse("", Path::new("s")).unwrap();
        assert_eq!(c.store, StoreKind::Sqlite);
        assert_eq!(c.consul.address, "http://127.0.0.1:8500");
        assert_eq!(c.consul.prefix, "mofang/");
        assert_eq!(c.etcd.endpoints, ["http://127.0.0.1:2379"]);

        let c = SchedulerConfig::parse(
            "store = \"consul\"\n[consul]\naddress = \"http://10.0.0.1:8500\"\n\
             prefix = \"prod/mofang/\"\ntoken = \"s3cr3t-token\"\n[tls]\ndisable = true\n",
            Path::new("s"),
        )
        .unwrap();
        assert_eq!(c.store, StoreKind::Consul);
        assert_eq!(c.consul.leader_key(), "prod/mofang/leader");
        assert!(!format!("{c:?}").contains("s3cr3t-token"));

        let c = SchedulerConfig::parse(
            "store = \"etcd\"\n[etcd]\nendpoints = [\"http://a:2379\", \"http://b:2379\"]\n\
             [tls]\ndisable = true\n",
            Path::new("s"),
        )
        .unwrap();
        assert_eq!(c.store, StoreKind::Etcd);
        assert_eq!(c.etcd.endpoints.len(), 2);

        for (text, field) in [
            ("store = \"zookeeper\"", "store"),
            ("[consul]\nprefix = \"mofang\"", "consul.prefix"),
            ("[consul]\nprefix = \"/mofang/\"", "consul.prefix"),
            ("[consul]\naddress = \"https://c:8501\"", "consul.ca_file"),
            ("[consul]\naddress = \"ftp://c:8501\"", "consul.address"),
            ("[consul]\nca_file = \"/ca.pem\"", "consul.ca_file"),
            (
                "[consul]\naddress = \"https://c:8501\"\nca_file = \"/ca.pem\"\ncert_file = \"/c.pem\"",
                "consul.key_file",
            ),
            (
                "[etcd]\nendpoints = [\"https://a:2379\", \"http://b:2379\"]\nca_file = \"/ca.pem\"",
                "etcd.endpoints",
            ),
            ("[etcd]\nendpoints = [\"https://a:2379\"]", "etcd.ca_file"),
            ("[etcd]\nkey_file = \"/k.pem\"", "etcd.key_file"),
            ("[consul]\naddress = \"c:8500\"", "consul.address"),
            ("[consul]\ntoken = \"\"", "consul.token"),
            ("[consul]\nsession_ttl_secs = 5", "consul.session_ttl_secs"),
            ("[consul]\nlock_delay_ms = 0", "consul.lock_delay_ms"),
            ("[consul]\nbogus = 1", "bogus"),
            ("[etcd]\nendpoints = []", "etcd.endpoints"),
            ("[etcd]\nendpoints = [\"x\"]", "etcd.endpoints[0]"),
            ("[etcd]\nprefix = \"\"", "etcd.prefix"),
            ("[etcd]\nlease_ttl_secs = 1", "etcd.lease_ttl_secs"),
        ] {
            let e = SchedulerConfig::parse(text, Path::new("s")).unwrap_err();
            assert!(e.to_string().contains(field), "{text}: {e}");
        }
    }
}

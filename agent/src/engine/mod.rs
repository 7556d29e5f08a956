//! Engine adapters: everything engine-specific (config files, accounts, replication, roles,
//! observation) behind one `Engine` trait, so reconcile speaks of members, not of SQL or RESP.

mod kept;
mod mariadb;
mod redis;

pub use mariadb::{ssl_opts as mariadb_ssl_opts, MariaDb};
pub use redis::{snapshot as redis_snapshot, Redis, Snapshot as RedisSnapshot};

use async_trait::async_trait;
use mofang_common::rotation::Account;
use mofang_common::EngineKind;
pub use mofang_common::ObservedRole;
use std::collections::BTreeMap;
use std::time::Duration;

/// Errors of an engine adapter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server did not answer within the time allowed.
    #[error("{engine} at {addr}: no answer within {timeout:?}")]
    Timeout {
        /// Engine name.
        engine: &'static str,
        /// Address tried.
        addr: String,
        /// The limit.
        timeout: Duration,
    },
    /// The server answered with an error, or the connection failed.
    #[error("{engine} at {addr}: {message}")]
    Server {
        /// Engine name.
        engine: &'static str,
        /// Address tried.
        addr: String,
        /// What went wrong.
        message: String,
    },
    /// A value the engine needs is missing or malformed (e.g. a primary address).
    #[error("{0}")]
    Invalid(String),
}

/// Result of engine calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How long one engine call may take before it counts as failed.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a health check (ping) may take: a hung database counts as a failed check soon.
pub const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// Instance-wide credentials. Generated once per instance, stored 0600, never logged.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Secrets {
    /// Administrative account (`mofang_admin`): used by the agent only.
    pub admin: String,
    /// Replication account (`mofang_repl`).
    pub repl: String,
    /// Monitoring account (`mofang_monitor`).
    pub monitor: String,
    /// Application account (`app`): what users connect with.
    pub app: String,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(<redacted>)")
    }
}

impl Secrets {
    /// The password of `account`.
    pub fn get(&self, account: Account) -> &str {
        match account {
            Account::Admin => &self.admin,
            Account::Repl => &self.repl,
            Account::Monitor => &self.monitor,
            Account::App => &self.app,
        }
    }

    /// Fresh random passwords (32 alphanumerics each: no quoting issues in any config).
    pub fn generate() -> Self {
        Secrets {
            admin: password(),
            repl: password(),
            monitor: password(),
            app: password(),
        }
    }

    /// From the scheduler's map (`admin`, `repl`, `monitor`, `app`); None if any is missing.
    pub fn from_map(m: &std::collections::HashMap<String, String>) -> Option<Self> {
        let get = |k: &str| m.get(k).filter(|v| is_safe_password(v)).cloned();
        Some(Secrets {
            admin: get("admin")?,
            repl: get("repl")?,
            monitor: get("monitor")?,
            app: get("app")?,
        })
    }
}

fn password() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

/// Passwords go into config files and SQL literals: only accept ones that need no quoting.
pub fn is_safe_password(p: &str) -> bool {
    (16..=128).contains(&p.len())
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Where a member's server answers, from the agent's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host or IP.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Talk TLS to it (its instance has TLS on); None: plain text.
    pub tls: Option<ClientTls>,
}

/// How the agent talks TLS to a member (issue 15 point 7): the cluster CA to verify its
/// certificate against and the name to verify, the member id (a name its certificate always
/// carries, whatever address the agent dials: `127.0.0.1` with host networking, or an IP the
/// certificate does not name yet on a Docker network).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// The cluster CA, PEM.
    pub ca_pem: String,
    /// The name the member's certificate must carry.
    pub server_name: String,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// A rustls client config trusting only the CA.
    pub fn rustls_config(&self) -> std::io::Result<std::sync::Arc<rustls::ClientConfig>> {
        let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let mut roots = rustls::RootCertStore::empty();
        for c in mofang_common::tls::certs_from_pem(self.ca_pem.as_bytes()).map_err(bad)? {
            roots.add(c).map_err(|e| bad(e.to_string()))?;
        }
        let cfg = rustls::ClientConfig::builder_with_provider(mofang_common::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(std::sync::Arc::new(cfg))
    }

    /// Opens a TLS session over `tcp`, verifying the member's certificate.
    pub async fn connect(
        &self,
        tcp: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let name = rustls::pki_types::ServerName::try_from(self.server_name.clone())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        tokio_rustls::TlsConnector::from(self.rustls_config()?)
            .connect(name, tcp)
            .await
    }
}

/// A member's TLS material for its config directory: rendered as `server.pem`,
/// `server-key.pem` and `ca.pem` (0600, owned by the server's uid, like every config file).
#[derive(Clone, PartialEq, Eq)]
pub struct MemberTls {
    /// `optional` or `required`.
    pub mode: mofang_common::DbTls,
    /// The member's certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM. Never logged.
    pub key_pem: String,
    /// The cluster CA, PEM.
    pub ca_pem: String,
}

impl std::fmt::Debug for MemberTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberTls")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// Where a member's TLS files are inside its container.
pub const TLS_CERT: &str = "/etc/mofang/server.pem";
/// The member's key inside its container.
pub const TLS_KEY: &str = "/etc/mofang/server-key.pem";
/// The cluster CA inside the container.
pub const TLS_CA: &str = "/etc/mofang/ca.pem";

impl MemberTls {
    /// The three files.
    pub fn files(&self) -> Vec<ConfigFile> {
        vec![
            ConfigFile {
                name: "server.pem",
                contents: self.cert_pem.clone(),
            },
            ConfigFile {
                name: "server-key.pem",
                contents: self.key_pem.clone(),
            },
            ConfigFile {
                name: "ca.pem",
                contents: self.ca_pem.clone(),
            },
        ]
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl Target {
    /// Parses `host:port`.
    pub fn parse(s: &str) -> Result<Self> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| Error::Invalid(format!("address '{s}' is not host:port")))?;
        let port = port
            .parse()
            .map_err(|_| Error::Invalid(format!("address '{s}': bad port")))?;
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':');
        if !host_ok {
            return Err(Error::Invalid(format!("address '{s}': bad host")));
        }
        Ok(Target {
            host: host.to_owned(),
            port,
            tls: None,
        })
    }
}

/// What the agent needs to render a member's config.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    /// Member id (server identity).
    pub member: String,
    /// Port the server listens on.
    pub port: u16,
    /// Address other members and clients use for this member (Redis announces it).
    pub announce: Target,
    /// Memory limit in bytes (buffers are sized from it).
    pub memory_bytes: u64,
    /// Start as a replica of this primary (None: primary role, still read-only until promoted).
    pub replica_of: Option<Target>,
    /// Engine settings from the assignment.
    pub settings: BTreeMap<String, String>,
    /// During a credential rotation: an account that accepts a second password beside its
    /// one in [`Secrets`] (rendered so a server restarted mid-rotation accepts both).
    pub also_accepted: Option<(Account, String)>,
    /// Database traffic TLS: the member's certificate, key and CA; None: plain text.
    pub tls: Option<MemberTls>,
}

/// The parameters of [`mofang_common::params`] in `settings` (`reconfigure`), each checked
/// against the catalogue (anything else is left out), as `(name, value)`.
pub fn catalogue_settings(
    engine: mofang_common::EngineKind,
    settings: &BTreeMap<String, String>,
) -> Vec<(&'static str, String)> {
    mofang_common::params::catalogue(engine)
        .iter()
        .filter_map(|p| {
            let v = settings.get(p.name)?;
            mofang_common::params::check(engine, p.name, v)
                .ok()
                .map(|(p, v)| (p.name, v))
        })
        .collect()
}

/// A config file to mount read-only at `/etc/mofang/<name>`, owned by the server user, 0600.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFile {
    /// File name.
    pub name: &'static str,
    /// Contents (may hold secrets: never log).
    pub contents: String,
}

/// What one observation of a server says.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Role as the server sees itself.
    pub role: ObservedRole,
    /// Refuses writes from applications.
    pub read_only: bool,
    /// Replication position (MariaDB `gtid_current_pos`, Redis `master_repl_offset`).
    pub position: String,
    /// Replica: replication threads/link are up.
    pub replication_ok: bool,
    /// Replica: the primary it follows (`host:port`).
    pub following: Option<String>,
    /// Replica: lag in seconds, when known.
    pub lag_seconds: Option<i64>,
    /// Replica: why replication is not OK (last IO/SQL error, link down).
    pub replication_error: Option<String>,
    /// Engine-specific facts shown to operators (GTID mode, semi-sync status, ...).
    pub details: BTreeMap<String, String>,
}

/// What the fast liveness check sees besides an answer ([`Engine::probe`]): enough to tell
/// whether the member's last full observation still holds, and where the server is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Probe {
    /// The server replicates with its link up ([`Observation::replication_ok`]).
    pub replicating: bool,
    /// The primary it is set to follow (`host:port`), if any ([`Observation::following`]).
    pub following: Option<String>,
    /// Its position, read as [`Observation::position`] is: it moves with every write, so it
    /// is reported, never compared ([`Probe::same_order`]).
    pub position: String,
    /// A replica's lag, read as [`Observation::lag_seconds`] is; reported, never compared.
    pub lag_seconds: Option<i64>,
}

impl Probe {
    /// The probe of an observation.
    pub fn of(o: &Observation) -> Probe {
        Probe {
            replicating: o.replication_ok,
            following: o.following.clone(),
            position: o.position.clone(),
            lag_seconds: o.lag_seconds,
        }
    }

    /// Whether the server is in the order `expect` (a full observation's probe) found it:
    /// replicating or not, following the same primary. Position and lag move on their own.
    pub fn same_order(&self, expect: &Probe) -> bool {
        self.replicating == expect.replicating && self.following == expect.following
    }
}

/// An engine adapter. Every method is idempotent: reconcile may call it again at any time.
#[async_trait]
pub trait Engine: Send + Sync {
    /// Which engine.
    fn kind(&self) -> EngineKind;
    /// uid:gid the server runs as inside its image (owner of the volume and config files).
    fn uid(&self) -> u32 {
        999
    }
    /// Where the data volume is mounted in the container.
    fn data_dir(&self) -> &'static str;
    /// Capabilities the server needs beyond none.
    fn capabilities(&self) -> Vec<String> {
        Vec::new()
    }
    /// The config files for a member (the server's config and account setup).
    fn render(&self, member: &MemberConfig, secrets: &Secrets) -> Vec<ConfigFile>;
    /// A real protocol round trip with the admin account.
    async fn ping(&self, at: &Target, secrets: &Secrets) -> Result<()>;
    /// Observes role, position, replication.
    async fn observe(&self, at: &Target, secrets: &Secrets) -> Result<Observation>;
    /// The fast liveness check between full observations (issue 19): one round trip within
    /// [`PING_TIMEOUT`] that also says whether the server replicates and from where, so
    /// reconcile can tell whether its last observation still holds. The engines answer it on
    /// a kept session; this default observes in full.
    async fn probe(&self, at: &Target, secrets: &Secrets) -> Result<Probe> {
        let o = timed_for("engine", at, PING_TIMEOUT, self.observe(at, secrets)).await?;
        Ok(Probe::of(&o))
    }
    /// The effective value of every parameter of the engine's catalogue
    /// ([`mofang_common::params`]) as the server reports it, in canonical form
    /// ([`mofang_common::params::canonical_effective`]). Read on a slower cadence than
    /// [`Engine::observe`] (`reconcile::params::read`): a few hundred variables are no
    /// liveness check.
    async fn parameters(&self, at: &Target, secrets: &Secrets) -> Result<BTreeMap<String, String>>;
    /// Makes the member a writable primary (stops replicating). `replicas` is how many
    /// replicas the instance has (MariaDB enables semi-sync waiting only when > 0). A replica
    /// first applies everything it has received (an acknowledged write may sit unapplied in
    /// its relay log), and when `after` is given, first waits to reach that position.
    async fn promote(
        &self,
        at: &Target,
        secrets: &Secrets,
        replicas: u32,
        after: Option<&str>,
    ) -> Result<()>;
    /// Makes the member a read-only replica of `primary` (no-op if it already is).
    async fn replicate_from(&self, at: &Target, secrets: &Secrets, primary: &Target) -> Result<()>;
    /// Stops application writes at once (MariaDB read_only + kill sessions; Redis CLIENT PAUSE WRITE).
    async fn fence(&self, at: &Target, secrets: &Secrets) -> Result<()>;
    /// Lifts a fence.
    async fn unfence(&self, at: &Target, secrets: &Secrets) -> Result<()>;
    /// Makes the server accept exactly `passwords` for `account` (credential rotation),
    /// logged in with `secrets.admin`; changes nothing when it already does. True when it
    /// changed something. Accounts are per member: nothing is replicated.
    async fn set_passwords(
        &self,
        at: &Target,
        secrets: &Secrets,
        account: Account,
        passwords: &[&str],
    ) -> Result<bool>;
    /// Replication logs in with `secrets.repl` from now on: a replica's link to its primary
    /// is set up again with it (MariaDB `MASTER_PASSWORD`), or the server's `masterauth` is
    /// set (Redis). Nothing on a MariaDB member that does not replicate.
    async fn use_repl_password(&self, at: &Target, secrets: &Secrets) -> Result<()>;
    /// Makes the server read its certificate files again (they were renewed or gained a
    /// name): MariaDB `FLUSH SSL`, Redis `CONFIG SET tls-cert-file ...`.
    async fn reload_tls(&self, _at: &Target, _secrets: &Secrets) -> Result<()> {
        Ok(())
    }
    /// Makes a server that serves TLS refuse plain-text sessions (`required`) or accept them
    /// (`optional`) without a restart: MariaDB `require_secure_transport`. Engines without
    /// the choice (Redis has no `optional`) refuse.
    async fn require_tls(&self, _at: &Target, _secrets: &Secrets, _required: bool) -> Result<()> {
        Err(Error::Invalid(
            "this engine cannot change its TLS mode without a restart".into(),
        ))
    }
    /// Sets a dynamic server parameter of [`mofang_common::params`] live (MariaDB
    /// `SET GLOBAL`, Redis `CONFIG SET`). `name` and `value` were checked against the
    /// catalogue by the caller.
    async fn set_parameter(
        &self,
        _at: &Target,
        _secrets: &Secrets,
        _name: &str,
        _value: &str,
    ) -> Result<()> {
        Ok(())
    }
    /// A shell script run inside a new replica's own container that copies a consistent
    /// snapshot from `primary` and sets the replication position to it; None when the
    /// engine's replication copies everything by itself (Redis full sync).
    fn seed_script(&self, _primary: &Target, _local: &Target) -> Option<String> {
        None
    }
    /// True when a replication error means the replica holds transactions its primary
    /// lacks (diverged): it must be rebuilt from the primary.
    fn diverged(&self, _replication_error: &str) -> bool {
        false
    }
    /// The command run once inside the member's container after it first starts on a newer
    /// version, upgrading its data (MariaDB: `mariadb-upgrade`); None: nothing to run.
    fn upgrade_command(&self) -> Option<Vec<&'static str>> {
        None
    }

    /// True when a new replica's server can start before its primary's address is known:
    /// its config does not name the primary and it starts unable to take writes, the role
    /// step pointing it at the primary later. Its start then overlaps the primary's
    /// (issue 14, provisioning latency). False when the config names the primary (Redis
    /// `replicaof`: without it the server would start as a writable primary).
    fn starts_before_primary_known(&self) -> bool {
        false
    }
}

/// How long a promotion may wait for a replica to apply what it has received.
pub const PROMOTE_TIMEOUT: Duration = Duration::from_secs(60);

/// The adapter for an engine kind and version, or None if this build cannot run it.
pub fn for_kind(kind: &str, version: &str) -> Option<Box<dyn Engine>> {
    let kind = EngineKind::parse(kind)?;
    if !kind.supported_versions().contains(&version) {
        return None;
    }
    Some(match kind {
        EngineKind::Mariadb => Box::new(MariaDb),
        EngineKind::Redis => Box::new(Redis::for_version(version)),
    })
}

/// Runs `f` with `CALL_TIMEOUT`, mapping a time-out to `Error::Timeout`.
pub(crate) async fn timed<T>(
    engine: &'static str,
    at: &Target,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    timed_for(engine, at, CALL_TIMEOUT, f).await
}

/// Like [`timed`] with an explicit limit (promotion waits for replication to catch up).
pub(crate) async fn timed_for<T>(
    engine: &'static str,
    at: &Target,
    limit: Duration,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout {
            engine,
            addr: at.to_string(),
            timeout: limit,
        }),
    }
}

/// A stable server identity from a member id (MariaDB server_id must differ per member).
pub fn server_id(member: &str) -> u32 {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(member.as_bytes());
    (u32::from_be_bytes([h[0], h[1], h[2], h[3]]) % 0x7fff_fffe) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secrets::generate();
        assert!(!format!("{s:?}").contains(&s.admin));
        assert!(is_safe_password(&s.admin));
    }

    #[test]
    fn targets_parse_and_refuse_injection() {
        assert_eq!(Target::parse("10.0.0.1:3306").unwrap().port, 3306);
        assert!(Target::parse("a';DROP:3306").is_err());
        assert!(Target::parse("nohost").is_err());
    }

    #[test]
    fn unknown_engines_and_versions() {
        assert!(for_kind("mariadb", "10.11").is_some());
        assert!(for_kind("redis", "7.0").is_some());
        assert!(for_kind("mariadb", "5.5").is_none());
        assert!(for_kind("oracle", "19").is_none());
    }

    #[test]
    fn server_ids_differ() {
        assert_ne!(server_id("orders-0"), server_id("orders-1"));
        assert!(server_id("x") > 0);
    }
}

//! Redis adapter (6.0, 7.0, 8.0): redis.conf with ACL users, REPLICAOF replication announcing
//! the member's reported address, CLIENT PAUSE fencing (on 6.0, which has no write-only
//! pause, the application user's write commands are taken away instead). Talks to the server
//! as `mofang_admin`.

use super::kept::{on_kept, Sessions};
use super::{
    timed, timed_for, ConfigFile, Engine, Error, MemberConfig, Observation, ObservedRole, Probe,
    Result, Secrets, Target,
};
use async_trait::async_trait;
use mofang_common::rotation::Account;
use mofang_common::EngineKind;
use redis::aio::MultiplexedConnection;
use std::collections::BTreeMap;
use std::sync::LazyLock;

/// The kept admin connections to Redis servers (`kept.rs`).
static KEPT: LazyLock<Sessions<MultiplexedConnection>> = LazyLock::new(Sessions::default);

/// The Redis adapter, for one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redis {
    /// Redis 6.0 (Debian bullseye), which lacks what 6.2 and 7.0 added and the other
    /// versions use: `CLIENT PAUSE ... WRITE` / `CLIENT UNPAUSE`, pub/sub channel rules in
    /// ACLs (`&*`) and `repl-diskless-sync-max-replicas`.
    pub v6_0: bool,
}

impl Redis {
    /// The adapter of Redis 7.0 and later.
    pub const V7: Redis = Redis { v6_0: false };

    /// Lifts a fence: the write pause, or on 6.0 the application user's commands as
    /// redis.conf gives them.
    async fn lift_fence(&self, c: &mut MultiplexedConnection, at: &Target) -> Result<()> {
        if self.v6_0 {
            let mut args = vec!["ACL", "SETUSER", "app"];
            args.extend(APP_COMMANDS.split(' '));
            let _: String = cmd(c, at, &args).await?;
        } else {
            let _: String = cmd(c, at, &["CLIENT", "UNPAUSE"]).await?;
        }
        Ok(())
    }

    /// `replicate_from` on a connection.
    async fn replicate_on(
        &self,
        c: &mut MultiplexedConnection,
        at: &Target,
        s: &Secrets,
        primary: &Target,
    ) -> Result<()> {
        let info: String = cmd(c, at, &["INFO", "replication"]).await?;
        let info = parse_info(&info);
        let same = info.get("role").map(String::as_str) == Some("slave")
            && info.get("master_host") == Some(&primary.host)
            && info.get("master_port") == Some(&primary.port.to_string());
        if !same {
            // A switchover's target still catching up from this member's history: not
            // yet (see `hold_off`). Unreachable: follow it anyway, as before.
            if let Ok(mut t) = connect(primary, s).await {
                if let Ok(text) = cmd::<String>(&mut t, primary, &["INFO", "replication"]).await {
                    if hold_off(&info, &parse_info(&text)) {
                        tracing::debug!(member_at = %at, primary = %primary,
                            "new primary still behind this member: following it once it caught up");
                        return Ok(());
                    }
                }
            }
            let port = primary.port.to_string();
            let _: String = cmd(c, at, &["REPLICAOF", &primary.host, &port]).await?;
        }
        Ok(())
    }

    /// The adapter of a version (`6.0`, `7.0`, `8.0`).
    pub fn for_version(version: &str) -> Redis {
        Redis {
            v6_0: version == "6.0",
        }
    }
}

/// The application account's commands: everything but administration (CONFIG, SHUTDOWN,
/// DEBUG, ...). Written in redis.conf and given back by a 6.0 member's unfence.
const APP_COMMANDS: &str = "+@all -@admin -@dangerous";

const NAME: &str = "redis";
/// A fence lasts until lifted; CLIENT PAUSE needs a bound, so a day, renewed by reconcile.
const FENCE_MS: u64 = 86_400_000;

fn err(at: &Target, e: impl std::fmt::Display) -> Error {
    Error::Server {
        engine: NAME,
        addr: at.to_string(),
        message: e.to_string(),
    }
}

async fn connect(at: &Target, s: &Secrets) -> Result<MultiplexedConnection> {
    if let Some(tls) = &at.tls {
        // TLS with the cluster CA and the member's name (redis-rs would verify the dialed
        // address, which is not what the agent verifies: see `ClientTls`).
        let tcp = tokio::net::TcpStream::connect((at.host.as_str(), at.port))
            .await
            .map_err(|e| err(at, e))?;
        let _ = tcp.set_nodelay(true);
        let stream = tls.connect(tcp).await.map_err(|e| err(at, e))?;
        let info = redis::RedisConnectionInfo {
            username: Some("mofang_admin".into()),
            password: Some(s.admin.clone()),
            ..Default::default()
        };
        let (conn, driver) = MultiplexedConnection::new(&info, stream)
            .await
            .map_err(|e| err(at, e))?;
        tokio::spawn(driver);
        return Ok(conn);
    }
    // Passwords are alphanumeric (see Secrets), so the URL needs no escaping.
    let host = if at.host.contains(':') {
        format!("[{}]", at.host)
    } else {
        at.host.clone()
    };
    let client = redis::Client::open(format!(
        "redis://mofang_admin:{}@{host}:{}/",
        s.admin, at.port
    ))
    .map_err(|e| err(at, e))?;
    client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| err(at, e))
}

async fn cmd<T: redis::FromRedisValue>(
    c: &mut MultiplexedConnection,
    at: &Target,
    args: &[&str],
) -> Result<T> {
    let mut command = redis::cmd(args[0]);
    for a in &args[1..] {
        command.arg(*a);
    }
    command.query_async(c).await.map_err(|e| err(at, e))
}

/// An ACL user's passwords in `redis.conf`: `>current`, and during a credential rotation
/// `>other` too (an ACL user may hold several passwords).
fn acl_passwords(m: &MemberConfig, s: &Secrets, account: Account) -> String {
    let current = s.get(account);
    match &m.also_accepted {
        Some((a, other)) if *a == account && other != current => format!(">{current} >{other}"),
        _ => format!(">{current}"),
    }
}

/// The SHA-256 (lowercase hex) Redis keeps of an ACL password.
fn acl_hash(password: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(password.as_bytes()))
}

/// The `passwords` of an `ACL GETUSER` answer (a map, or a flat list of name and value).
fn acl_user_hashes(v: &redis::Value) -> Option<std::collections::BTreeSet<String>> {
    use redis::Value as V;
    let pairs: Vec<(&V, &V)> = match v {
        V::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
        V::Array(items) => items
            .chunks(2)
            .filter_map(|c| Some((c.first()?, c.get(1)?)))
            .collect(),
        _ => return None,
    };
    let text = |v: &V| match v {
        V::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        V::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let (_, list) = pairs
        .into_iter()
        .find(|(k, _)| text(k).as_deref() == Some("passwords"))?;
    match list {
        V::Array(items) | V::Set(items) => Some(items.iter().filter_map(text).collect()),
        _ => None,
    }
}

/// The TLS lines of `redis.conf` (https://redis.io/docs/latest/operate/oss_and_stack/management/security/encryption/):
/// TLS on the member's port (`port 0`: no plain text; `optional` is refused at creation for
/// Redis, a port speaks one or the other), clients authenticate by password and need no
/// certificate, replication over TLS with the primary's certificate checked against the CA.
fn tls_lines(m: &MemberConfig) -> String {
    if m.tls.is_none() {
        return String::new();
    }
    format!(
        "# Database traffic TLS: plain text is refused (port 0).\n\
         port 0\n\
         tls-port {port}\n\
         tls-cert-file {cert}\n\
         tls-key-file {key}\n\
         tls-ca-cert-file {ca}\n\
         tls-auth-clients no\n\
         tls-replication yes\n",
        port = m.port,
        cert = super::TLS_CERT,
        key = super::TLS_KEY,
        ca = super::TLS_CA,
    )
}

/// What `INFO replication` says of a server: the observation (and the probe) read from it.
fn observation_of(info: &BTreeMap<String, String>) -> Observation {
    let offset = info.get("master_repl_offset").cloned().unwrap_or_default();
    let mut details = BTreeMap::new();
    if let Some(n) = info.get("connected_slaves") {
        details.insert("connected_replicas".into(), n.clone());
    }
    if info.get("role").map(String::as_str) == Some("slave") {
        let (link_up, link_error) = replica_link(info);
        let lag = info
            .get("master_last_io_seconds_ago")
            .and_then(|v| v.parse::<i64>().ok());
        Observation {
            role: ObservedRole::Replica,
            read_only: true,
            position: info.get("slave_repl_offset").cloned().unwrap_or(offset),
            replication_ok: link_up,
            following: Some(following(info)),
            lag_seconds: if link_up {
                lag.filter(|l| *l >= 0)
            } else {
                None
            },
            replication_error: link_error,
            details,
        }
    } else {
        Observation {
            role: ObservedRole::Primary,
            read_only: false,
            position: offset,
            replication_ok: false,
            following: None,
            lag_seconds: None,
            replication_error: None,
            details,
        }
    }
}

/// The primary an `INFO replication` of a replica follows, `host:port`.
fn following(info: &BTreeMap<String, String>) -> String {
    let host = info.get("master_host").map_or("", String::as_str);
    let port = info.get("master_port").map_or("", String::as_str);
    format!("{host}:{port}")
}

/// A replica's link to its primary, from `INFO replication`: up while Redis says so and the
/// primary was heard from (data or its once-a-second ping) less than [`LINK_SILENT_S`] ago.
/// A frozen or hung primary keeps the TCP connection open, so Redis itself calls the link
/// down only after `repl-timeout` (5 s); a replica reported still linked cannot be promoted
/// (its position may not be final), so waiting for that made a frozen Redis primary's
/// failover take 7 s (issue 13). Silence tells the same sooner: nothing has come for 2 s, so
/// what the replica holds is what it reports.
fn replica_link(info: &BTreeMap<String, String>) -> (bool, Option<String>) {
    if info.get("master_link_status").map(String::as_str) != Some("up") {
        return (false, Some("master_link_status:down".to_owned()));
    }
    match info
        .get("master_last_io_seconds_ago")
        .and_then(|v| v.parse::<i64>().ok())
    {
        Some(s) if s >= LINK_SILENT_S => (
            false,
            Some(format!(
                "nothing from the primary for {s} s (link still open)"
            )),
        ),
        _ => (true, None),
    }
}

/// Seconds without data or a ping from the primary after which a replica's link counts as
/// down (`repl-ping-replica-period` is 1 s).
pub const LINK_SILENT_S: i64 = 2;

/// Parses `INFO` output into key -> value.
/// Whether a member (`own`, its `INFO replication`) holds off following a new primary
/// (`target`'s): while the target is still a replica of the same history (same replication
/// id) and behind this member. That is a switchover's target still applying the fenced
/// primary's last writes; followed now, the target would serve this member a full resync of
/// its older dataset, and the fenced old primary, its only source, would lose the writes
/// the target was still fetching (decision 144). Once the target is promoted, or is on
/// another history (a failover), it is followed at once.
fn hold_off(own: &BTreeMap<String, String>, target: &BTreeMap<String, String>) -> bool {
    let offset = |m: &BTreeMap<String, String>| {
        m.get("master_repl_offset")
            .and_then(|v| v.parse::<u64>().ok())
    };
    target.get("role").map(String::as_str) == Some("slave")
        && own.get("master_replid").is_some()
        && own.get("master_replid") == target.get("master_replid")
        && matches!((offset(own), offset(target)), (Some(mine), Some(theirs)) if mine > theirs)
}

fn parse_info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// A snapshot `BGSAVE` made ([`snapshot`]): where the RDB file is inside the container and
/// the replication offset the server was at when the save forked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The RDB file's path inside the container (`CONFIG GET dir` + `dbfilename`).
    pub path: String,
    /// `master_repl_offset` (a replica: `slave_repl_offset`) read right after BGSAVE forked.
    pub offset: u64,
}

/// Runs `BGSAVE` (waiting for a save already under way first), waits until
/// `rdb_bgsave_in_progress:0`, and checks `rdb_last_bgsave_status:ok` and that the last save
/// is the one asked for. Polls every 200 ms for at most `limit`.
pub async fn snapshot(at: &Target, s: &Secrets, limit: std::time::Duration) -> Result<Snapshot> {
    timed_for(NAME, at, limit, async {
        let mut c = connect(at, s).await?;
        let persistence = |text: String| parse_info(&text);
        // A save of Redis' own (a replica's full sync) may be running: BGSAVE then fails
        // with "already in progress"; wait for it and ask again.
        loop {
            let before = persistence(cmd(&mut c, at, &["INFO", "persistence"]).await?);
            if before.get("rdb_bgsave_in_progress").map(String::as_str) == Some("1") {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                continue;
            }
            let last_before = before
                .get("rdb_saves")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            match cmd::<String>(&mut c, at, &["BGSAVE"]).await {
                Ok(_) => {}
                Err(e) if e.to_string().contains("in progress") => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
                Err(e) => return Err(e),
            }
            let repl = parse_info(&cmd::<String>(&mut c, at, &["INFO", "replication"]).await?);
            let offset = repl
                .get("slave_repl_offset")
                .or_else(|| repl.get("master_repl_offset"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                let p = persistence(cmd(&mut c, at, &["INFO", "persistence"]).await?);
                if p.get("rdb_bgsave_in_progress").map(String::as_str) != Some("0") {
                    continue;
                }
                let status = p.get("rdb_last_bgsave_status").cloned().unwrap_or_default();
                if status != "ok" {
                    return Err(err(
                        at,
                        format!("BGSAVE failed: rdb_last_bgsave_status:{status}"),
                    ));
                }
                let saves = p
                    .get("rdb_saves")
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                if p.contains_key("rdb_saves") && saves <= last_before {
                    return Err(err(
                        at,
                        "BGSAVE ended without a new save (rdb_saves unchanged)",
                    ));
                }
                break;
            }
            let dir: Vec<String> = cmd(&mut c, at, &["CONFIG", "GET", "dir"]).await?;
            let file: Vec<String> = cmd(&mut c, at, &["CONFIG", "GET", "dbfilename"]).await?;
            let (Some(dir), Some(file)) = (dir.get(1), file.get(1)) else {
                return Err(err(at, "CONFIG GET dir/dbfilename answered nothing"));
            };
            return Ok(Snapshot {
                path: format!("{}/{}", dir.trim_end_matches('/'), file),
                offset,
            });
        }
    })
    .await
}

#[async_trait]
impl Engine for Redis {
    fn kind(&self) -> EngineKind {
        EngineKind::Redis
    }

    fn data_dir(&self) -> &'static str {
        "/var/lib/redis"
    }

    fn render(&self, m: &MemberConfig, s: &Secrets) -> Vec<ConfigFile> {
        let setting = |k: &str, d: u64| {
            m.settings
                .get(k)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(d)
        };
        // Leave a quarter of the limit for fork (RDB/AOF rewrite) copy-on-write and buffers.
        let maxmemory = m.memory_bytes / 4 * 3;
        let mut conf = format!(
            "# Rendered by mofang-agent for member {member}. Do not edit: the agent rewrites it.\n\
             bind 0.0.0.0\n\
             port {port}\n\
             protected-mode no\n\
             daemonize no\n\
             dir /var/lib/redis\n\
             appendonly yes\n\
             appendfsync {fsync}\n\
             maxmemory {maxmemory}\n\
             maxmemory-policy noeviction\n\
             replica-read-only yes\n\
             # A dead or cut-off primary is noticed in seconds (default 60 s), so replicas\n\
             # report their link down in time for the scheduler's failover decision.\n\
             repl-timeout 5\n\
             repl-ping-replica-period 1\n\
             # A full sync (diskless) starts as soon as every replica of the instance has asked\n\
             # for one, instead of after Redis' default 5 s wait for more replicas to share the\n\
             # fork: a new instance's replicas are in sync seconds sooner (issue 14). A lone\n\
             # replica asking later waits 1 s for company.\n\
             repl-diskless-sync-delay 1\n\
             {sync_max}\
             replica-announce-ip {announce_ip}\n\
             replica-announce-port {announce_port}\n\
             min-replicas-to-write {min_replicas}\n\
             min-replicas-max-lag {max_lag}\n\
             masteruser mofang_repl\n\
             masterauth {repl}\n\
             # ACL: no default user; each account gets only what it needs.\n\
             user default off\n\
             user mofang_admin on {admin} ~* {channels}+@all\n\
             user mofang_repl on {repl_pw} +psync +sync +replconf +ping\n\
             user mofang_monitor on {monitor} +ping +info +client|list +config|get +slowlog|get +latency|latest +memory|stats\n\
             user app on {app} ~* {channels}{APP_COMMANDS}\n",
            member = m.member,
            port = m.port,
            fsync = m.settings.get("appendfsync").map(String::as_str).filter(|v| ["always", "everysec", "no"].contains(v)).unwrap_or("everysec"),
            announce_ip = m.announce.host,
            announce_port = m.announce.port,
            // 7.0 and later: the sync starts once every replica asked.
            sync_max = if self.v6_0 {
                String::new()
            } else {
                format!("repl-diskless-sync-max-replicas {}\n", setting("replicas", 0))
            },
            // 6.2 and later: pub/sub channels are ACL-checked (6.0 allows every channel).
            channels = if self.v6_0 { "" } else { "&* " },
            min_replicas = setting("min_replicas_to_write", 0),
            max_lag = setting("min_replicas_max_lag", 10),
            repl = s.repl,
            repl_pw = acl_passwords(m, s, Account::Repl),
            admin = acl_passwords(m, s, Account::Admin),
            monitor = acl_passwords(m, s, Account::Monitor),
            app = acl_passwords(m, s, Account::App),
        );
        conf.push_str(&tls_lines(m));
        // Set by `reconfigure`: after the defaults above, so they win (the last one counts).
        for (k, v) in super::catalogue_settings(EngineKind::Redis, &m.settings) {
            conf.push_str(&format!("{k} {v}\n"));
        }
        // A replica restarted by the agent comes back as a replica, never as an empty primary.
        if let Some(p) = &m.replica_of {
            conf.push_str(&format!("replicaof {} {}\n", p.host, p.port));
        }
        let mut files = vec![ConfigFile {
            name: "redis.conf",
            contents: conf,
        }];
        files.extend(m.tls.iter().flat_map(super::MemberTls::files));
        files
    }

    async fn ping(&self, at: &Target, s: &Secrets) -> Result<()> {
        timed_for(NAME, at, super::PING_TIMEOUT, async {
            let pong: String =
                on_kept!(KEPT, connect, at, s, |c| cmd(&mut c, at, &["PING"]).await)?;
            if pong == "PONG" {
                Ok(())
            } else {
                Err(err(at, format!("PING answered {pong:?}")))
            }
        })
        .await
    }

    async fn probe(&self, at: &Target, s: &Secrets) -> Result<Probe> {
        // One round trip: the section `observe` reads everything from.
        let info = timed_for(NAME, at, super::PING_TIMEOUT, async {
            on_kept!(KEPT, connect, at, s, |c| cmd::<String>(
                &mut c,
                at,
                &["INFO", "replication"]
            )
            .await)
        })
        .await?;
        Ok(Probe::of(&observation_of(&parse_info(&info))))
    }

    async fn observe(&self, at: &Target, s: &Secrets) -> Result<Observation> {
        timed(NAME, at, async {
            let info: String = on_kept!(KEPT, connect, at, s, |c| cmd(
                &mut c,
                at,
                &["INFO", "replication"]
            )
            .await)?;
            Ok(observation_of(&parse_info(&info)))
        })
        .await
    }

    async fn parameters(&self, at: &Target, s: &Secrets) -> Result<BTreeMap<String, String>> {
        timed(NAME, at, async {
            on_kept!(KEPT, connect, at, s, |c| effective_parameters(&mut c)
                .await
                .map_err(|e| err(at, e)))
        })
        .await
    }

    async fn promote(
        &self,
        at: &Target,
        s: &Secrets,
        _replicas: u32,
        after: Option<&str>,
    ) -> Result<()> {
        timed_for(NAME, at, super::PROMOTE_TIMEOUT, async {
            let mut c = connect(at, s).await?;
            if let Some(want) = after.and_then(|p| p.parse::<u64>().ok()) {
                // Switchover: the old primary is paused at offset `want`; reach it first.
                loop {
                    let info: String = cmd(&mut c, at, &["INFO", "replication"]).await?;
                    let have = parse_info(&info)
                        .get("master_repl_offset")
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                    if have >= want {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
            let _: String = cmd(&mut c, at, &["REPLICAOF", "NO", "ONE"]).await?;
            // A promoted member takes writes: a pause left by a fence at an earlier epoch (a
            // demoted primary is fenced before it follows) must not outlive the promotion.
            self.lift_fence(&mut c, at).await
        })
        .await
    }

    async fn replicate_from(&self, at: &Target, s: &Secrets, primary: &Target) -> Result<()> {
        timed(NAME, at, async {
            on_kept!(KEPT, connect, at, s, |c| self
                .replicate_on(&mut c, at, s, primary)
                .await)
        })
        .await
    }

    async fn fence(&self, at: &Target, s: &Secrets) -> Result<()> {
        timed(NAME, at, async {
            let mut c = connect(at, s).await?;
            if self.v6_0 {
                // No write-only pause before 6.2 (a whole pause would stop the agent's own
                // commands too): the application user loses its write commands, at once on
                // every open connection, until the fence is lifted.
                let _: String = cmd(&mut c, at, &["ACL", "SETUSER", "app", "-@write"]).await?;
                return Ok(());
            }
            let ms = FENCE_MS.to_string();
            let _: String = cmd(&mut c, at, &["CLIENT", "PAUSE", &ms, "WRITE"]).await?;
            Ok(())
        })
        .await
    }
    async fn unfence(&self, at: &Target, s: &Secrets) -> Result<()> {
        timed(NAME, at, async {
            let mut c = connect(at, s).await?;
            self.lift_fence(&mut c, at).await
        })
        .await
    }

    async fn set_passwords(
        &self,
        at: &Target,
        s: &Secrets,
        account: Account,
        passwords: &[&str],
    ) -> Result<bool> {
        if passwords.is_empty() {
            return Err(Error::Invalid("no password to set".into()));
        }
        timed(NAME, at, async {
            let mut c = connect(at, s).await?;
            let user: redis::Value = cmd(&mut c, at, &["ACL", "GETUSER", account.user()]).await?;
            let want: std::collections::BTreeSet<String> =
                passwords.iter().map(|p| acl_hash(p)).collect();
            if acl_user_hashes(&user) == Some(want) {
                return Ok(false);
            }
            // One command: the user never holds no password. ACL changes do not replicate:
            // every member's agent sets its own.
            let adds: Vec<String> = passwords.iter().map(|p| format!(">{p}")).collect();
            let mut args = vec!["ACL", "SETUSER", account.user(), "resetpass"];
            args.extend(adds.iter().map(String::as_str));
            let _: String = cmd(&mut c, at, &args).await?;
            Ok(true)
        })
        .await
    }

    async fn set_parameter(&self, at: &Target, s: &Secrets, name: &str, value: &str) -> Result<()> {
        timed(NAME, at, async {
            let mut c = connect(at, s).await?;
            let _: String = cmd(&mut c, at, &["CONFIG", "SET", name, value]).await?;
            Ok(())
        })
        .await
    }

    async fn reload_tls(&self, at: &Target, s: &Secrets) -> Result<()> {
        timed(NAME, at, async {
            let mut c = connect(at, s).await?;
            // Setting a TLS file, even to the same path, makes Redis load the files again.
            let _: String = cmd(
                &mut c,
                at,
                &[
                    "CONFIG",
                    "SET",
                    "tls-cert-file",
                    super::TLS_CERT,
                    "tls-key-file",
                    super::TLS_KEY,
                    "tls-ca-cert-file",
                    super::TLS_CA,
                ],
            )
            .await?;
            Ok(())
        })
        .await
    }

    async fn use_repl_password(&self, at: &Target, s: &Secrets) -> Result<()> {
        timed(NAME, at, async {
            let mut c = connect(at, s).await?;
            // A replica's open link stays; its next one (and a later demotion's) logs in with
            // the new password.
            let _: String = cmd(&mut c, at, &["CONFIG", "SET", "masterauth", &s.repl]).await?;
            Ok(())
        })
        .await
    }
}

/// The catalogue's parameters as the server runs them, one `CONFIG GET` each in one
/// pipeline (Redis 6.0 takes one pattern per call), in canonical form.
async fn effective_parameters(
    c: &mut MultiplexedConnection,
) -> redis::RedisResult<BTreeMap<String, String>> {
    let mut pipe = redis::pipe();
    for p in mofang_common::params::catalogue(EngineKind::Redis) {
        pipe.cmd("CONFIG").arg("GET").arg(p.name);
    }
    let answers = pipe.query_async::<Vec<redis::Value>>(c).await?;
    Ok(answers
        .iter()
        .flat_map(config_pairs)
        .map(|(name, value)| {
            let v = mofang_common::params::canonical_effective(EngineKind::Redis, &name, &value);
            (name, v)
        })
        .collect())
}

/// The `(name, value)` pairs of a `CONFIG GET` answer: a map (RESP3) or a flat list of
/// names and values (RESP2).
fn config_pairs(v: &redis::Value) -> Vec<(String, String)> {
    use redis::Value as V;
    let text = |v: &V| match v {
        V::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        V::SimpleString(s) => Some(s.clone()),
        V::Int(n) => Some(n.to_string()),
        _ => None,
    };
    let pairs: Vec<(&V, &V)> = match v {
        V::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
        V::Array(items) => items
            .chunks(2)
            .filter_map(|c| Some((c.first()?, c.get(1)?)))
            .collect(),
        _ => return Vec::new(),
    };
    pairs
        .into_iter()
        .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    /// A switchover's target still behind: held off; caught up, promoted, or on another
    /// history: followed.
    #[test]
    fn a_member_ahead_holds_off_following_a_target_still_catching_up() {
        let info = |role: &str, id: &str, off: u64| {
            super::parse_info(&format!(
                "# Replication\r\nrole:{role}\r\nmaster_replid:{id}\r\nmaster_repl_offset:{off}\r\n"
            ))
        };
        let old_primary = info("master", "aaa", 1000);
        assert!(super::hold_off(&old_primary, &info("slave", "aaa", 900)));
        assert!(
            !super::hold_off(&old_primary, &info("slave", "aaa", 1000)),
            "caught up"
        );
        assert!(
            !super::hold_off(&old_primary, &info("master", "bbb", 900)),
            "promoted"
        );
        assert!(
            !super::hold_off(&old_primary, &info("slave", "ccc", 900)),
            "other history"
        );
        // A replica of the fenced primary, ahead of the target: the same.
        assert!(super::hold_off(
            &info("slave", "aaa", 1000),
            &info("slave", "aaa", 990)
        ));
        assert!(
            !super::hold_off(&old_primary, &BTreeMap::new()),
            "nothing known"
        );
    }

    use super::*;

    #[test]
    fn config_get_answers_give_name_value_pairs_in_either_protocol() {
        use redis::Value as V;
        let b = |s: &str| V::BulkString(s.as_bytes().to_vec());
        assert_eq!(
            config_pairs(&V::Array(vec![b("hz"), b("10")])),
            [("hz".to_owned(), "10".to_owned())]
        );
        assert_eq!(
            config_pairs(&V::Map(vec![(b("maxmemory-policy"), b("allkeys-lru"))])),
            [("maxmemory-policy".to_owned(), "allkeys-lru".to_owned())]
        );
        assert!(config_pairs(&V::Nil).is_empty());
    }

    #[test]
    fn info_parsing() {
        let i = parse_info(
            "# Replication\r\nrole:slave\r\nmaster_host:10.0.0.2\r\nmaster_link_status:up\r\n",
        );
        assert_eq!(i["role"], "slave");
        assert_eq!(i["master_link_status"], "up");
    }

    /// Issue 13: a frozen primary's replicas count their link down after 2 s of silence, not
    /// after Redis' own `repl-timeout`.
    #[test]
    fn a_silent_link_is_down_before_redis_says_so() {
        let link = |status: &str, ago: &str| {
            replica_link(&parse_info(&format!(
                "role:slave\r\nmaster_link_status:{status}\r\nmaster_last_io_seconds_ago:{ago}\r\n"
            )))
        };
        assert_eq!(link("up", "0"), (true, None));
        assert_eq!(link("up", "1"), (true, None));
        let (ok, why) = link("up", "2");
        assert!(!ok && why.is_some_and(|w| w.contains("nothing from the primary for 2 s")));
        assert!(!link("down", "0").0);
        assert!(!link("down", "-1").0);
    }

    #[test]
    fn replica_config_carries_replicaof_and_no_default_user() {
        let m = MemberConfig {
            member: "c-1".into(),
            port: 6379,
            announce: Target {
                host: "10.1.0.5".into(),
                port: 6379,
                tls: None,
            },
            memory_bytes: 256 << 20,
            replica_of: Some(Target {
                host: "10.1.0.4".into(),
                port: 6379,
                tls: None,
            }),
            settings: BTreeMap::from([
                ("min_replicas_to_write".into(), "1".into()),
                ("replicas".into(), "2".into()),
            ]),
            also_accepted: None,
            tls: None,
        };
        let conf = &Redis::V7.render(&m, &Secrets::generate())[0].contents;
        // The full sync starts once both replicas ask, not after Redis' 5 s default wait.
        assert!(conf.contains("repl-diskless-sync-max-replicas 2"));
        assert!(conf.contains("replicaof 10.1.0.4 6379"));
        assert!(conf.contains("replica-announce-ip 10.1.0.5"));
        assert!(conf.contains("min-replicas-to-write 1"));
        assert!(conf.contains("user default off"));
        assert!(conf.contains("user app on ") && conf.contains(" ~* &* +@all -@admin -@dangerous"));

        // Redis 6.0 refuses to start on what it does not know: no sync limit, no channel
        // rules (real 6.0 servers start on this in tests/tests/operations.rs).
        let old = &Redis::for_version("6.0").render(&m, &Secrets::generate())[0].contents;
        assert!(!old.contains("repl-diskless-sync-max-replicas"), "{old}");
        assert!(!old.contains("&*"), "{old}");
        assert!(old.contains(" ~* +@all -@admin -@dangerous"), "{old}");
        assert!(old.contains("replicaof 10.1.0.4 6379"));
        assert_eq!(Redis::for_version("8.0"), Redis::V7);
    }

    #[test]
    fn a_rotating_acl_user_holds_both_passwords() {
        let s = Secrets::generate();
        let mut m = MemberConfig {
            member: "c-0".into(),
            port: 6379,
            announce: Target {
                host: "10.1.0.5".into(),
                port: 6379,
                tls: None,
            },
            memory_bytes: 256 << 20,
            replica_of: None,
            settings: BTreeMap::new(),
            also_accepted: Some((Account::App, "OTHERpassword123456".into())),
            tls: None,
        };
        let conf = &Redis::V7.render(&m, &s)[0].contents;
        assert!(
            conf.contains(&format!("user app on >{} >OTHERpassword123456 ~*", s.app)),
            "both app passwords"
        );
        assert!(conf.contains(&format!("user mofang_repl on >{} +psync", s.repl)));
        m.also_accepted = None;
        assert!(!Redis::V7.render(&m, &s)[0]
            .contents
            .contains("OTHERpassword"));
        // ACL GETUSER's passwords, as RESP2 lists them.
        let v = redis::Value::Array(vec![
            redis::Value::BulkString(b"flags".to_vec()),
            redis::Value::Array(vec![]),
            redis::Value::BulkString(b"passwords".to_vec()),
            redis::Value::Array(vec![redis::Value::BulkString(acl_hash("x").into_bytes())]),
        ]);
        assert_eq!(acl_user_hashes(&v), Some([acl_hash("x")].into()));
    }

    #[test]
    fn tls_required_serves_tls_only_on_the_member_port_and_replicates_over_it() {
        let mut m = MemberConfig {
            member: "c-0".into(),
            port: 6379,
            announce: Target {
                host: "10.1.0.5".into(),
                port: 6379,
                tls: None,
            },
            memory_bytes: 256 << 20,
            replica_of: None,
            settings: BTreeMap::new(),
            also_accepted: None,
            tls: Some(crate::engine::MemberTls {
                mode: mofang_common::DbTls::Required,
                cert_pem: "CERT".into(),
                key_pem: "KEY".into(),
                ca_pem: "CA".into(),
            }),
        };
        let files = Redis::V7.render(&m, &Secrets::generate());
        let conf = &files[0].contents;
        for line in [
            "tls-port 6379\n",
            "tls-cert-file /etc/mofang/server.pem\n",
            "tls-key-file /etc/mofang/server-key.pem\n",
            "tls-ca-cert-file /etc/mofang/ca.pem\n",
            "tls-auth-clients no\n",
            "tls-replication yes\n",
        ] {
            assert!(conf.contains(line), "{line} in {conf}");
        }
        // The last `port` wins in redis.conf: plain text is off.
        let ports: Vec<&str> = conf.lines().filter(|l| l.starts_with("port ")).collect();
        assert_eq!(ports.last(), Some(&"port 0"), "{ports:?}");
        let names: Vec<&str> = files.iter().map(|f| f.name).collect();
        assert_eq!(
            names,
            ["redis.conf", "server.pem", "server-key.pem", "ca.pem"]
        );
        m.tls = None;
        let conf = &Redis::V7.render(&m, &Secrets::generate())[0].contents;
        assert!(!conf.contains("tls-") && conf.contains("port 6379\n"));
    }
}

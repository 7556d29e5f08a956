//! MariaDB 10.11 adapter: my.cnf, least-privilege accounts, GTID + semi-sync replication,
//! read_only fencing. Talks to the server with mysql_async as `mofang_admin`.

use super::kept::{on_kept, Sessions};
use super::{
    timed, timed_for, ConfigFile, Engine, Error, MemberConfig, Observation, ObservedRole, Probe,
    Result, Secrets, Target,
};
use async_trait::async_trait;
use mofang_common::rotation::Account;
use mofang_common::EngineKind;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row};
use std::collections::BTreeMap;
use std::sync::LazyLock;

/// The MariaDB adapter.
#[derive(Debug, Clone, Copy)]
pub struct MariaDb;

const NAME: &str = "mariadb";
/// Accounts whose sessions survive a fence (the agent, replication, monitoring).
const SYSTEM_USERS: &[&str] = &[
    "mofang_admin",
    "mofang_repl",
    "mofang_monitor",
    "system user",
    "event_scheduler",
    "",
];

fn err(at: &Target, e: impl std::fmt::Display) -> Error {
    Error::Server {
        engine: NAME,
        addr: at.to_string(),
        message: e.to_string(),
    }
}

async fn connect(at: &Target, secrets: &Secrets) -> Result<Conn> {
    let opts = OptsBuilder::default()
        .ip_or_hostname(at.host.clone())
        .tcp_port(at.port)
        .user(Some("mofang_admin"))
        .pass(Some(secrets.admin.clone()))
        .prefer_socket(false)
        .ssl_opts(at.tls.as_ref().map(ssl_opts));
    Conn::new(opts).await.map_err(|e| err(at, e))
}

/// The kept admin sessions to MariaDB servers (`kept.rs`).
static KEPT: LazyLock<Sessions<Conn>> = LazyLock::new(Sessions::default);

/// TLS to a member: only the cluster CA is trusted (no bundled public roots) and the
/// certificate must name the member (`ClientTls::server_name`), whatever address is dialed.
pub fn ssl_opts(t: &super::ClientTls) -> mysql_async::SslOpts {
    mysql_async::SslOpts::default()
        .with_root_certs(vec![t.ca_pem.as_bytes().to_vec().into()])
        .with_disable_built_in_roots(true)
        .with_danger_tls_hostname_override(Some(t.server_name.clone()))
}

/// The `[mysqld]` lines of a member with TLS: its certificate, key and CA, and with
/// `required` no plain-text TCP session (the local socket stays open to tools in the
/// container, https://mariadb.com/kb/en/server-system-variables/#require_secure_transport).
fn tls_lines(tls: Option<&super::MemberTls>) -> String {
    let Some(t) = tls else {
        return String::new();
    };
    let mut out = format!(
        "ssl_cert = {}\nssl_key = {}\nssl_ca = {}\n",
        super::TLS_CERT,
        super::TLS_KEY,
        super::TLS_CA
    );
    if t.mode == mofang_common::DbTls::Required {
        out.push_str("require_secure_transport = ON\n");
    }
    out
}

/// The TLS part of `CHANGE MASTER`: replication over TLS, the primary's certificate verified
/// against the cluster CA and its address (`MASTER_HOST`), when the instance has TLS.
/// Makes the server load its certificate files again. `NO_WRITE_TO_BINLOG`: a plain `FLUSH
/// SSL` is written to the binary log like most FLUSH statements, so on a replica it was a
/// transaction of its own (an errant GTID of its server id), and a replica certified after it
/// was repointed stopped at the primary's next write with gtid_strict_mode's out-of-order
/// error 1950 (docs/security.md, "Defects found").
/// <https://mariadb.com/kb/en/flush/>
const RELOAD_TLS: &str = "FLUSH NO_WRITE_TO_BINLOG SSL";

/// The TLS options of `CHANGE MASTER TO`, both ways: the statement keeps every option it is
/// not given, so a replica turned back to plain text must be told `MASTER_SSL = 0` or it goes
/// on over TLS (and is repointed on every pass, never matching what is wanted).
fn master_ssl(tls: bool) -> String {
    if tls {
        format!(
            ", MASTER_SSL = 1, MASTER_SSL_CA = {}, MASTER_SSL_VERIFY_SERVER_CERT = 1",
            lit(super::TLS_CA)
        )
    } else {
        ", MASTER_SSL = 0, MASTER_SSL_VERIFY_SERVER_CERT = 0".into()
    }
}

/// Milliseconds per named step since the previous one, for a debug log line.
struct Steps {
    last: std::time::Instant,
    done: Vec<(&'static str, u128)>,
}

impl Steps {
    fn new() -> Self {
        Steps {
            last: std::time::Instant::now(),
            done: Vec::new(),
        }
    }

    fn mark(&mut self, step: &'static str) {
        let now = std::time::Instant::now();
        self.done.push((step, (now - self.last).as_millis()));
        self.last = now;
    }
}

impl std::fmt::Display for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (step, ms)) in self.done.iter().enumerate() {
            write!(f, "{}{step}={ms}ms", if i > 0 { " " } else { "" })?;
        }
        Ok(())
    }
}

/// SQL string literal for values we generated or validated (addresses, passwords).
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The other password `account` accepts during a credential rotation, if any.
fn other(m: &MemberConfig, account: Account) -> Option<&str> {
    m.also_accepted
        .as_ref()
        .filter(|(a, _)| *a == account)
        .map(|(_, p)| p.as_str())
}

/// The `IDENTIFIED ...` clause of an account with its password and, during a rotation, a
/// second one: MariaDB 10.4+ tries each authentication of an `OR` chain in turn, so both
/// passwords log in (https://mariadb.com/kb/en/alter-user/#identified-viawith).
fn identified(password: &str, other: Option<&str>) -> String {
    match other.filter(|o| *o != password) {
        None => format!("IDENTIFIED BY {}", lit(password)),
        Some(o) => format!(
            "IDENTIFIED VIA mysql_native_password USING PASSWORD({}) \
             OR mysql_native_password USING PASSWORD({})",
            lit(password),
            lit(o)
        ),
    }
}

/// The `mysql_native_password` hashes (`*` and 40 hex digits) in a `SHOW CREATE USER`.
fn native_hashes(create_user: &str) -> std::collections::BTreeSet<String> {
    create_user
        .split('\'')
        .filter(|t| {
            t.len() == 41 && t.starts_with('*') && t[1..].bytes().all(|b| b.is_ascii_hexdigit())
        })
        .map(|t| t.to_ascii_uppercase())
        .collect()
}

/// A replica's two replication threads as `SHOW SLAVE STATUS` shows them.
struct Threads<'a> {
    io: &'a str,
    sql: &'a str,
    /// `Master_Log_File`: empty after `CHANGE MASTER` until the primary's first event (the
    /// binlog file it streams from) has arrived.
    master_log_file: &'a str,
    io_errno: u32,
    io_error: &'a str,
    sql_errno: u32,
    sql_error: &'a str,
}

/// Whether a replica replicates, and the reason when it does not. Both threads must run
/// (`Yes`: the I/O thread connected and reading; `Connecting` and `Preparing` are retries or
/// a connection not set up yet) **and** neither may carry an error: an I/O error is what a
/// retrying connection leaves (a refused TLS handshake, a primary gone, access denied), and
/// MariaDB clears it once a connection succeeds, so a replica that reconnected fine is
/// replicating again (no flapping). The reason is MariaDB's own error text. And the primary
/// must have begun to stream: between the I/O thread's `Yes` ("Waiting for master to send
/// event") and the primary's first event or refusal there is a moment with no error yet, in
/// which a replica whose position the primary's binlogs no longer reach (error 1236, purged)
/// looked replicating (a scale's step once ended on it; seen against MariaDB 10.11:
/// `Master_Log_File` stays empty until the first event names the binlog file).
fn replication_state(t: &Threads<'_>) -> (bool, Option<String>) {
    let running = t.io == "Yes" && t.sql == "Yes";
    if running && t.io_errno == 0 && t.sql_errno == 0 {
        if t.master_log_file.is_empty() {
            return (
                false,
                Some("connected; waiting for the primary's first event".into()),
            );
        }
        return (true, None);
    }
    let mut why = Vec::new();
    if t.io_errno != 0 || !t.io_error.is_empty() {
        why.push(if t.io_error.is_empty() {
            format!("IO thread error {}", t.io_errno)
        } else {
            t.io_error.to_owned()
        });
    }
    if t.sql_errno != 0 || !t.sql_error.is_empty() {
        why.push(if t.sql_error.is_empty() {
            format!("SQL thread error {}", t.sql_errno)
        } else {
            t.sql_error.to_owned()
        });
    }
    if why.is_empty() {
        why.push(format!("IO thread {}, SQL thread {}", t.io, t.sql));
    }
    (false, Some(why.join("; ")))
}

/// [`replication_state`] of a `SHOW SLAVE STATUS` row.
fn replication_of(row: &Row) -> (bool, Option<String>) {
    let col = |c| get_str(row, c).unwrap_or_default();
    let errno = |c| get_str(row, c).and_then(|v| v.parse().ok()).unwrap_or(0);
    let (io, sql, io_error, sql_error) = (
        col("Slave_IO_Running"),
        col("Slave_SQL_Running"),
        col("Last_IO_Error"),
        col("Last_SQL_Error"),
    );
    let master_log_file = col("Master_Log_File");
    replication_state(&Threads {
        io: &io,
        sql: &sql,
        master_log_file: &master_log_file,
        io_errno: errno("Last_IO_Errno"),
        io_error: &io_error,
        sql_errno: errno("Last_SQL_Errno"),
        sql_error: &sql_error,
    })
}

/// The primary a `SHOW SLAVE STATUS` row follows, `host:port`.
fn following_of(row: &Row) -> String {
    let host = get_str(row, "Master_Host").unwrap_or_default();
    let port = get_str(row, "Master_Port").unwrap_or_default();
    format!("{host}:{port}")
}

/// A server's position and, for a replica, its lag, from `@@GLOBAL.gtid_current_pos` and its
/// `SHOW SLAVE STATUS` row: what `observe` and the probe both report.
fn position_and_lag(current: &str, row: Option<&Row>) -> (String, Option<i64>) {
    match row {
        Some(row) => {
            // Received counts, not only applied: promotion applies the rest first.
            let io_pos = get_str(row, "Gtid_IO_Pos").unwrap_or_default();
            let lag = get_str(row, "Seconds_Behind_Master").and_then(|v| v.parse().ok());
            (merge_positions(current, &io_pos), lag)
        }
        None => (current.to_owned(), None),
    }
}

/// The probe's reading of the position and the `SHOW SLAVE STATUS` row (none: not a
/// replica), the same as `observe` makes of them.
fn probe_of(current: &str, row: Option<&Row>) -> Probe {
    let (position, lag_seconds) = position_and_lag(current, row);
    Probe {
        replicating: row.is_some_and(|r| replication_of(r).0),
        following: row.map(following_of),
        position,
        lag_seconds,
    }
}

fn get_str(row: &Row, col: &str) -> Option<String> {
    row.get_opt::<Option<String>, _>(col)
        .and_then(|r| r.ok())
        .flatten()
}

impl MariaDb {
    /// What `observe` reads: position and read_only, the semi-sync status, the replica row.
    async fn observe_on(
        c: &mut Conn,
        at: &Target,
    ) -> Result<(String, u8, Option<(String, String)>, Option<Row>)> {
        let (pos, ro): (String, u8) = c
            .query_first("SELECT @@GLOBAL.gtid_current_pos, @@GLOBAL.read_only")
            .await
            .map_err(|e| err(at, e))?
            .ok_or_else(|| err(at, "no row for gtid_current_pos"))?;
        let semi: Option<(String, String)> = c
            .query_first("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_status'")
            .await
            .map_err(|e| err(at, e))?;
        let slave = Self::slave_status(c, at).await?;
        Ok((pos, ro, semi, slave))
    }

    /// The probe's statements in one round trip: the position and the replica row.
    async fn probe_on(c: &mut Conn, at: &Target) -> Result<(String, Option<Row>)> {
        let mut r = c
            .query_iter("SELECT @@GLOBAL.gtid_current_pos; SHOW SLAVE STATUS")
            .await
            .map_err(|e| err(at, e))?;
        let current: Vec<Row> = r.collect().await.map_err(|e| err(at, e))?;
        let slave: Vec<Row> = r.collect().await.map_err(|e| err(at, e))?;
        r.drop_result().await.map_err(|e| err(at, e))?;
        let current = current
            .first()
            .and_then(|row| row.get_opt::<String, _>(0)?.ok())
            .ok_or_else(|| err(at, "no row for gtid_current_pos"))?;
        Ok((current, slave.into_iter().next()))
    }

    /// `replicate_from` on a session.
    async fn replicate_on(c: &mut Conn, at: &Target, s: &Secrets, primary: &Target) -> Result<()> {
        let mut steps = Steps::new();
        c.query_drop("SET GLOBAL read_only = ON")
            .await
            .map_err(|e| err(at, e))?;
        // A replica never waits for semi-sync acks itself.
        c.query_drop("SET GLOBAL rpl_semi_sync_master_enabled = OFF")
            .await
            .map_err(|e| err(at, e))?;
        if let Some(row) = Self::slave_status(c, at).await? {
            let ssl = get_str(&row, "Master_SSL_Allowed").as_deref() == Some("Yes");
            let same = get_str(&row, "Master_Host").as_deref() == Some(primary.host.as_str())
                && get_str(&row, "Master_Port") == Some(primary.port.to_string())
                && get_str(&row, "Using_Gtid").as_deref() == Some("Slave_Pos")
                && ssl == primary.tls.is_some();
            if same {
                // Already pointed right; restart only stopped threads (after a crash).
                if get_str(&row, "Slave_IO_Running").as_deref() != Some("Yes")
                    || get_str(&row, "Slave_SQL_Running").as_deref() != Some("Yes")
                {
                    // An SQL error (diverged data) stays visible: START SLAVE is a no-op
                    // for a thread that stopped on an error it would hit again.
                    c.query_drop("START SLAVE").await.map_err(|e| err(at, e))?;
                }
                return Ok(());
            }
            c.query_drop("STOP SLAVE").await.map_err(|e| err(at, e))?;
            steps.mark("stop");
        } else {
            // Not a replica until now (a demoted or rejoining old primary): it continues
            // from everything it has, its own binlog included.
            c.query_drop("SET GLOBAL gtid_slave_pos = @@GLOBAL.gtid_current_pos")
                .await
                .map_err(|e| err(at, e))?;
        }
        c.query_drop(format!(
            "CHANGE MASTER TO MASTER_HOST = {}, MASTER_PORT = {}, MASTER_USER = 'mofang_repl', \
             MASTER_PASSWORD = {}, MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1, \
             MASTER_HEARTBEAT_PERIOD = 0.5{}",
            lit(&primary.host),
            primary.port,
            lit(&s.repl),
            master_ssl(primary.tls.is_some()),
        ))
        .await
        .map_err(|e| err(at, e))?;
        c.query_drop("START SLAVE").await.map_err(|e| err(at, e))?;
        steps.mark("repointed");
        tracing::debug!(member_at = %at, steps = %steps, "repoint steps");
        Ok(())
    }

    async fn slave_status(conn: &mut Conn, at: &Target) -> Result<Option<Row>> {
        let rows: Vec<Row> = conn
            .query("SHOW SLAVE STATUS")
            .await
            .map_err(|e| err(at, e))?;
        Ok(rows.into_iter().next())
    }

    async fn kill_app_sessions(conn: &mut Conn, at: &Target) -> Result<usize> {
        let rows: Vec<(u64, String)> = conn
            .query(
                "SELECT ID, USER FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID()",
            )
            .await
            .map_err(|e| err(at, e))?;
        let mut killed = 0;
        for (id, user) in rows {
            if SYSTEM_USERS.contains(&user.as_str()) {
                continue;
            }
            // The session may end on its own meanwhile: "Unknown thread id" is fine.
            if conn
                .query_drop(format!("KILL CONNECTION {id}"))
                .await
                .is_ok()
            {
                killed += 1;
            }
        }
        Ok(killed)
    }
}

#[async_trait]
impl Engine for MariaDb {
    fn kind(&self) -> EngineKind {
        EngineKind::Mariadb
    }

    fn data_dir(&self) -> &'static str {
        "/var/lib/mysql"
    }

    fn upgrade_command(&self) -> Option<Vec<&'static str>> {
        // As the admin account over the socket; not binlogged (the default, said anyway): a
        // replica's system table changes are its own, never an errant GTID.
        Some(vec![
            "mariadb-upgrade",
            "--defaults-extra-file=/etc/mofang/client.cnf",
            "--socket=/run/mysqld/mysqld.sock",
            "--skip-write-binlog",
        ])
    }

    fn render(&self, m: &MemberConfig, s: &Secrets) -> Vec<ConfigFile> {
        let mib = m.memory_bytes >> 20;
        // InnoDB gets half the container's memory: the rest is connections, sort buffers and
        // the page cache, and an OOM kill is worse than a cold buffer pool.
        let pool_mib = (mib / 2).max(32);
        let max_conn: u64 = m
            .settings
            .get("max_connections")
            .and_then(|v| v.parse().ok())
            .unwrap_or(200);
        let semi_timeout: u64 = m
            .settings
            .get("semi_sync_timeout_ms")
            .and_then(|v| v.parse().ok())
            // Longer than the agents' lease (10 s by default): a primary cut off from its
            // replicas is fenced (sessions killed, no acknowledgement) before semi-sync
            // would give up waiting and acknowledge a write no replica has.
            .unwrap_or(30_000);
        // A member that starts as a replica (e.g. an old primary rejoining after a crash)
        // truncates binlog transactions that were prepared but never committed, which no
        // replica acknowledged: it rejoins without diverging (MariaDB semi-sync recovery).
        let rpl_role = if m.replica_of.is_some() {
            "SLAVE"
        } else {
            "MASTER"
        };
        let cnf = format!(
            "# Rendered by mofang-agent for member {member}. Do not edit: the agent rewrites it.\n\
             [mysqld]\n\
             datadir = /var/lib/mysql\n\
             socket = /run/mysqld/mysqld.sock\n\
             port = {port}\n\
             bind-address = 0.0.0.0\n\
             skip-name-resolve\n\
             server_id = {server_id}\n\
             # Every member starts read-only; the agent lifts it only for the primary of the\n\
             # current epoch, so a restarted old primary can never take writes by itself.\n\
             read_only = ON\n\
             skip_slave_start = ON\n\
             log_bin = mysql-bin\n\
             log_slave_updates = ON\n\
             binlog_format = ROW\n\
             gtid_strict_mode = ON\n\
             relay_log = relay-bin\n\
             relay_log_recovery = ON\n\
             # With MASTER_HEARTBEAT_PERIOD 0.5, a silent primary is noticed in 1 s (default\n\
             # 60 s): replicas report their link down in time for the failover decision.\n\
             # It is also the I/O thread's connect timeout, and STOP SLAVE waits for a\n\
             # connect to a dead primary to time out: this bounds that wait in a promotion\n\
             # (issue 13, RTO). A false \"link down\" alone fails nothing over.\n\
             slave_net_timeout = 1\n\
             sync_binlog = 1\n\
             innodb_flush_log_at_trx_commit = 1\n\
             innodb_buffer_pool_size = {pool_mib}M\n\
             max_connections = {max_conn}\n\
             # Semi-sync: a commit is acknowledged only once a replica has the event\n\
             # (AFTER_SYNC, lossless; MariaDB's default AFTER_COMMIT can expose commits a\n\
             # failover then loses: https://mariadb.com/kb/en/semisynchronous-replication/).\n\
             rpl_semi_sync_master_wait_point = AFTER_SYNC\n\
             rpl_semi_sync_master_timeout = {semi_timeout}\n\
             rpl_semi_sync_slave_enabled = ON\n\
             init_rpl_role = {rpl_role}\n\
             init_file = /etc/mofang/init.sql\n\
             {params}\
             {tls}\
             [client]\n\
             socket = /run/mysqld/mysqld.sock\n",
            tls = tls_lines(m.tls.as_ref()),
            // Set by `reconfigure`: after the defaults above, so they win.
            params = super::catalogue_settings(EngineKind::Mariadb, &m.settings)
                .into_iter()
                .filter(|(k, _)| *k != "max_connections")
                .map(|(k, v)| format!("{k} = {v}\n"))
                .collect::<String>(),
            member = m.member,
            port = m.port,
            server_id = super::server_id(&m.member),
        );
        // Runs at every start as the bootstrap thread. Not binlogged: accounts are per member,
        // and a binlogged write here would be an errant GTID on a replica.
        let id = |account: Account| identified(s.get(account), other(m, account));
        let init = format!(
            "SET SESSION sql_log_bin = 0;\n\
             CREATE USER IF NOT EXISTS 'mofang_admin'@'%' {admin};\n\
             ALTER USER 'mofang_admin'@'%' {admin};\n\
             GRANT ALL PRIVILEGES ON *.* TO 'mofang_admin'@'%' WITH GRANT OPTION;\n\
             CREATE USER IF NOT EXISTS 'mofang_repl'@'%' {repl};\n\
             ALTER USER 'mofang_repl'@'%' {repl};\n\
             GRANT REPLICATION SLAVE ON *.* TO 'mofang_repl'@'%';\n\
             CREATE USER IF NOT EXISTS 'mofang_monitor'@'%' {monitor} WITH MAX_USER_CONNECTIONS 3;\n\
             ALTER USER 'mofang_monitor'@'%' {monitor};\n\
             GRANT PROCESS, REPLICATION CLIENT, SLAVE MONITOR, SELECT ON *.* TO 'mofang_monitor'@'%';\n\
             CREATE DATABASE IF NOT EXISTS app;\n\
             CREATE USER IF NOT EXISTS 'app'@'%' {app};\n\
             ALTER USER 'app'@'%' {app};\n\
             GRANT ALL PRIVILEGES ON app.* TO 'app'@'%';\n",
            admin = id(Account::Admin),
            repl = id(Account::Repl),
            monitor = id(Account::Monitor),
            app = id(Account::App),
        );
        let mut files = vec![
            ConfigFile {
                name: "my.cnf",
                contents: cnf,
            },
            ConfigFile {
                name: "init.sql",
                contents: init,
            },
            // For tools the agent runs inside the container (replica seeding).
            ConfigFile {
                name: "client.cnf",
                contents: format!("[client]\nuser = mofang_admin\npassword = {}\n", s.admin),
            },
        ];
        files.extend(m.tls.iter().flat_map(super::MemberTls::files));
        files
    }

    async fn ping(&self, at: &Target, s: &Secrets) -> Result<()> {
        timed_for(NAME, at, super::PING_TIMEOUT, async {
            on_kept!(KEPT, connect, at, s, |c| c
                .ping()
                .await
                .map_err(|e| err(at, e)))
        })
        .await
    }

    async fn probe(&self, at: &Target, s: &Secrets) -> Result<Probe> {
        // One round trip; its answers are those `observe` reads the position and the
        // replication from.
        timed_for(NAME, at, super::PING_TIMEOUT, async {
            on_kept!(KEPT, connect, at, s, |c| Self::probe_on(&mut c, at).await)
        })
        .await
        .map(|(current, row)| probe_of(&current, row.as_ref()))
    }

    async fn observe(&self, at: &Target, s: &Secrets) -> Result<Observation> {
        timed(NAME, at, async {
            let (pos, ro, semi, slave) =
                on_kept!(KEPT, connect, at, s, |c| Self::observe_on(&mut c, at).await)?;

            let mut details = BTreeMap::new();
            if let Some((_, v)) = semi {
                details.insert("semi_sync_master_status".into(), v);
            }
            let read_only = ro != 0;
            let obs = match slave {
                Some(row) => {
                    let gtid = get_str(&row, "Using_Gtid").unwrap_or_default();
                    let (position, lag) = position_and_lag(&pos, Some(&row));
                    details.insert("using_gtid".into(), gtid);
                    let (ok, error) = replication_of(&row);
                    Observation {
                        role: ObservedRole::Replica,
                        read_only,
                        position,
                        replication_ok: ok,
                        following: Some(following_of(&row)),
                        lag_seconds: lag,
                        replication_error: error,
                        details,
                    }
                }
                None => Observation {
                    role: if read_only {
                        ObservedRole::ReadOnly
                    } else {
                        ObservedRole::Primary
                    },
                    read_only,
                    position: pos,
                    replication_ok: false,
                    following: None,
                    lag_seconds: None,
                    replication_error: None,
                    details,
                },
            };
            Ok(obs)
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
        replicas: u32,
        after: Option<&str>,
    ) -> Result<()> {
        timed_for(NAME, at, super::PROMOTE_TIMEOUT, async {
            // Where a promotion's time goes (issue 13, RTO): logged at debug, per step.
            let mut steps = Steps::new();
            let mut c = connect(at, s).await?;
            steps.mark("connect");
            if let Some(pos) = after.filter(|p| !p.is_empty()) {
                // Switchover: the old primary is fenced at `pos`; reach it before opening.
                let limit = super::PROMOTE_TIMEOUT.as_secs() - 5;
                let r: Option<Option<i64>> = c
                    .query_first(format!("SELECT MASTER_GTID_WAIT({}, {limit})", lit(pos)))
                    .await
                    .map_err(|e| err(at, e))?;
                if r.flatten() != Some(0) {
                    return Err(err(
                        at,
                        format!("did not reach position {pos} in {limit} s"),
                    ));
                }
            }
            if let Some(row) = Self::slave_status(&mut c, at).await? {
                // Everything received is applied before the replica opens for writes: with
                // semi-sync a write is acknowledged once a replica has *received* it, so
                // stopping the SQL thread early would lose acknowledged writes.
                c.query_drop("STOP SLAVE IO_THREAD")
                    .await
                    .map_err(|e| err(at, e))?;
                steps.mark("stop_io");
                let received = Self::slave_status(&mut c, at)
                    .await?
                    .and_then(|r| get_str(&r, "Gtid_IO_Pos"))
                    .or_else(|| get_str(&row, "Gtid_IO_Pos"))
                    .unwrap_or_default();
                if !received.is_empty() {
                    let sql_running = get_str(&row, "Slave_SQL_Running").as_deref() == Some("Yes");
                    if !sql_running {
                        c.query_drop("START SLAVE SQL_THREAD")
                            .await
                            .map_err(|e| err(at, e))?;
                    }
                    let limit = super::PROMOTE_TIMEOUT.as_secs() - 5;
                    let r: Option<Option<i64>> = c
                        .query_first(format!(
                            "SELECT MASTER_GTID_WAIT({}, {limit})",
                            lit(&received)
                        ))
                        .await
                        .map_err(|e| err(at, e))?;
                    if r.flatten() != Some(0) {
                        return Err(err(
                            at,
                            format!("relay log not applied up to {received} in {limit} s"),
                        ));
                    }
                    steps.mark("relay_applied");
                }
                c.query_drop("STOP SLAVE").await.map_err(|e| err(at, e))?;
                c.query_drop("RESET SLAVE ALL")
                    .await
                    .map_err(|e| err(at, e))?;
                steps.mark("reset");
            }
            // Semi-sync waits only when there are replicas to wait for; a lone primary
            // would otherwise stall every commit for rpl_semi_sync_master_timeout.
            let semi = if replicas > 0 { "ON" } else { "OFF" };
            c.query_drop(format!("SET GLOBAL rpl_semi_sync_master_enabled = {semi}"))
                .await
                .map_err(|e| err(at, e))?;
            c.query_drop("SET GLOBAL read_only = OFF")
                .await
                .map_err(|e| err(at, e))?;
            steps.mark("open");
            tracing::debug!(member_at = %at, steps = %steps, "promotion steps");
            let _ = c.disconnect().await;
            Ok(())
        })
        .await
    }

    async fn replicate_from(&self, at: &Target, s: &Secrets, primary: &Target) -> Result<()> {
        timed(NAME, at, async {
            on_kept!(KEPT, connect, at, s, |c| Self::replicate_on(
                &mut c, at, s, primary
            )
            .await)
        })
        .await
    }

    async fn fence(&self, at: &Target, s: &Secrets) -> Result<()> {
        timed(NAME, at, async {
            let mut c = connect(at, s).await?;
            // Kill first so a long transaction cannot hold up SET read_only (it waits for
            // commits in flight), then again for sessions that slipped in between.
            Self::kill_app_sessions(&mut c, at).await?;
            c.query_drop("SET GLOBAL read_only = ON")
                .await
                .map_err(|e| err(at, e))?;
            Self::kill_app_sessions(&mut c, at).await?;
            let _ = c.disconnect().await;
            Ok(())
        })
        .await
    }

    async fn unfence(&self, at: &Target, s: &Secrets) -> Result<()> {
        timed(NAME, at, async {
            let mut c = connect(at, s).await?;
            c.query_drop("SET GLOBAL read_only = OFF")
                .await
                .map_err(|e| err(at, e))?;
            let _ = c.disconnect().await;
            Ok(())
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
        let Some(first) = passwords.first() else {
            return Err(Error::Invalid("no password to set".into()));
        };
        timed(NAME, at, async {
            let mut c = connect(at, s).await?;
            let user = format!("{}@'%'", lit(account.user()));
            let shown: Option<String> = c
                .query_first(format!("SHOW CREATE USER {user}"))
                .await
                .map_err(|e| err(at, e))?;
            let mut want = std::collections::BTreeSet::new();
            for p in passwords {
                let h: Option<String> = c
                    .query_first(format!("SELECT PASSWORD({})", lit(p)))
                    .await
                    .map_err(|e| err(at, e))?;
                want.extend(h.map(|h| h.to_ascii_uppercase()));
            }
            if shown.as_deref().map(native_hashes) == Some(want) {
                let _ = c.disconnect().await;
                return Ok(false);
            }
            // Accounts are per member (init.sql): never binlogged, so no replica sees an
            // errant transaction; each member's agent changes its own.
            c.query_drop("SET SESSION sql_log_bin = 0")
                .await
                .map_err(|e| err(at, e))?;
            c.query_drop(format!(
                "ALTER USER {user} {}",
                identified(first, passwords.get(1).copied())
            ))
            .await
            .map_err(|e| err(at, e))?;
            let _ = c.disconnect().await;
            Ok(true)
        })
        .await
    }

    async fn use_repl_password(&self, at: &Target, s: &Secrets) -> Result<()> {
        timed(NAME, at, async {
            let mut c = connect(at, s).await?;
            if Self::slave_status(&mut c, at).await?.is_some() {
                // The link logs in again at once with the new password; every other setting
                // (primary, GTID position) is kept.
                c.query_drop("STOP SLAVE").await.map_err(|e| err(at, e))?;
                c.query_drop(format!(
                    "CHANGE MASTER TO MASTER_PASSWORD = {}",
                    lit(&s.repl)
                ))
                .await
                .map_err(|e| err(at, e))?;
                c.query_drop("START SLAVE").await.map_err(|e| err(at, e))?;
            }
            let _ = c.disconnect().await;
            Ok(())
        })
        .await
    }

    async fn reload_tls(&self, at: &Target, s: &Secrets) -> Result<()> {
        timed(NAME, at, async {
            let mut c = connect(at, s).await?;
            c.query_drop(RELOAD_TLS).await.map_err(|e| err(at, e))?;
            let _ = c.disconnect().await;
            Ok(())
        })
        .await
    }

    async fn require_tls(&self, at: &Target, s: &Secrets, required: bool) -> Result<()> {
        timed(NAME, at, async {
            let mut c = connect(at, s).await?;
            let on = if required { "ON" } else { "OFF" };
            c.query_drop(format!("SET GLOBAL require_secure_transport = {on}"))
                .await
                .map_err(|e| err(at, e))?;
            let _ = c.disconnect().await;
            Ok(())
        })
        .await
    }

    async fn set_parameter(&self, at: &Target, s: &Secrets, name: &str, value: &str) -> Result<()> {
        // Both come from the catalogue's check: an identifier of the catalogue and a whole
        // number (MariaDB's parameters there are all integers).
        if !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            || value.parse::<i64>().is_err()
        {
            return Err(Error::Invalid(format!("parameter {name}={value}")));
        }
        timed(NAME, at, async {
            let mut c = connect(at, s).await?;
            c.query_drop(format!("SET GLOBAL {name} = {value}"))
                .await
                .map_err(|e| err(at, e))?;
            let _ = c.disconnect().await;
            Ok(())
        })
        .await
    }

    fn seed_script(&self, primary: &Target, local: &Target) -> Option<String> {
        // A consistent snapshot of the application schemas (InnoDB, one transaction) with
        // the GTID position it is at; restored without binlogging (no errant GTIDs here).
        // Accounts are per member (init.sql) and never copied. With TLS the copy from the
        // primary is encrypted and the primary's certificate verified against the cluster CA
        // and its address; the local server is reached over its socket.
        // The copy is over TLS when replication is (`primary.tls`: the replica has the CA and
        // its primary serves TLS); the local server, when it serves TLS, over its socket.
        let remote_tls = if primary.tls.is_some() {
            format!(" --ssl --ssl-ca={} --ssl-verify-server-cert", super::TLS_CA)
        } else {
            String::new()
        };
        let local_at = if local.tls.is_some() {
            "--protocol=socket --socket=/run/mysqld/mysqld.sock".to_owned()
        } else {
            format!("-h 127.0.0.1 -P {}", local.port)
        };
        Some(format!(
            "set -euo pipefail\n\
             opts=--defaults-extra-file=/etc/mofang/client.cnf\n\
             remote=\"-h {host} -P {port}{remote_tls}\"\n\
             dbs=$(mariadb $opts $remote -N -B -e \"SELECT schema_name FROM information_schema.schemata WHERE schema_name NOT IN ('mysql','information_schema','performance_schema','sys')\")\n\
             mariadb-dump $opts $remote --single-transaction --gtid --master-data=1 \
               --routines --events --triggers --hex-blob --databases $dbs \
             | mariadb $opts {local_at} --init-command='SET SESSION sql_log_bin=0'\n",
            host = primary.host,
            port = primary.port,
        ))
    }

    /// Every member starts `read_only` with `skip_slave_start`; replication is set up by SQL
    /// (`CHANGE MASTER`) in the role step, never by the config.
    fn starts_before_primary_known(&self) -> bool {
        true
    }

    fn diverged(&self, replication_error: &str) -> bool {
        // Error 1236 with GTIDs comes in two forms. "... which is not in the master's binlog.
        // Since the master's binlog contains GTIDs with higher sequence numbers, it probably
        // means that the slave has diverged ...": the primary went on without the replica's
        // last transactions, so they are not its primary's history. The short form alone
        // ("... which is not in the master's binlog") says the primary has nothing that far
        // yet: the replica is AHEAD, which is what every replica is during a switchover
        // while the new primary still applies the fenced primary's last transactions. That
        // replica (and the fenced old primary) holds acknowledged writes the new primary is
        // still fetching from it: rebuilding it destroyed them (a three-member upgrade lost
        // every full copy this way, session 13). It is no divergence: the role step starts
        // replication again on every pass until the primary has caught up, and the member
        // stays unhealthy meanwhile. Should the primary never reach it (an old primary's
        // unacknowledged transactions after a failover), the first write the new primary
        // takes turns the error into the long form, and the member is rebuilt then.
        replication_error.contains("diverged")
            // A row the replica already has, or lacks, on a read-only replica: its data is
            // not its primary's (e.g. seeded from a primary that was deposed meanwhile).
            || replication_error.contains("Duplicate entry")
            || replication_error.contains("Can't find record")
            // Error 1950 under gtid_strict_mode: the replica's binlog holds a GTID of the
            // domain the primary's stream does not (a transaction of its own, e.g. the
            // binlogged FLUSH SSL of agents before the fix): its history is not its primary's.
            || replication_error.contains("out-of-order sequence number")
            // Error 1236 when the primary's binlogs no longer reach back to the replica's
            // position (a replica seeded from an older backup, or one down for longer than
            // the binlogs are kept): it can never catch up; a fresh copy is the only way.
            || replication_error.contains("required binlog files have been purged")
    }
}

/// The further of two GTID lists per domain (applied and received positions).
fn merge_positions(applied: &str, received: &str) -> String {
    let mut by_domain: BTreeMap<&str, (&str, u64)> = BTreeMap::new();
    for g in applied.split(',').chain(received.split(',')).map(str::trim) {
        let mut f = g.splitn(3, '-');
        let (Some(d), Some(_), Some(n)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        let e = by_domain.entry(d).or_insert((g, n));
        if n > e.1 {
            *e = (g, n);
        }
    }
    by_domain
        .values()
        .map(|(g, _)| *g)
        .collect::<Vec<_>>()
        .join(",")
}

/// The catalogue's parameters as the server runs them (`SHOW GLOBAL VARIABLES`), in
/// canonical form.
async fn effective_parameters(
    c: &mut Conn,
) -> Result<BTreeMap<String, String>, mysql_async::Error> {
    let names: Vec<String> = mofang_common::params::catalogue(EngineKind::Mariadb)
        .iter()
        .map(|p| format!("'{}'", p.name))
        .collect();
    // The names are identifiers of the catalogue (a unit test holds them to that).
    let q = format!(
        "SHOW GLOBAL VARIABLES WHERE Variable_name IN ({})",
        names.join(",")
    );
    let rows = c.query::<(String, String), _>(q).await?;
    Ok(rows
        .into_iter()
        .map(|(name, value)| {
            let v = mofang_common::params::canonical_effective(EngineKind::Mariadb, &name, &value);
            (name, v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threads<'a>(io: &'a str, io_errno: u32, io_error: &'a str) -> Threads<'a> {
        Threads {
            io,
            sql: "Yes",
            master_log_file: "mysql-bin.000001",
            io_errno,
            io_error,
            sql_errno: 0,
            sql_error: "",
        }
    }

    #[test]
    fn a_replica_retrying_its_connection_is_not_replicating_and_says_why() {
        let healthy = threads("Yes", 0, "");
        assert_eq!(replication_state(&healthy), (true, None));
        // What MariaDB 10.11 shows while the I/O thread retries (seen against a real server:
        // primary stopped, paused, requiring TLS the replica lacks, a certificate that fails
        // verification).
        for (io, errno, e) in [
            ("Connecting", 2026, "error connecting to master 'mofang_repl@10.0.0.2:3306' - retry-time: 1  maximum-retries: 100000  message: SSL connection error: SSL certificate validation failure"),
            ("Connecting", 1045, "error connecting to master 'mofang_repl@10.0.0.2:3306' - retry-time: 1  maximum-retries: 100000  message: Access denied for user 'mofang_repl'@'10.0.0.3' (using password: YES)"),
            ("Connecting", 2003, "error reconnecting to master 'mofang_repl@10.0.0.2:3306' - retry-time: 1  maximum-retries: 100000  message: Can't connect to server on '10.0.0.2' (111 \"Connection refused\")"),
            // The I/O thread's own state says Yes while an error of the retry is still set:
            // the error decides.
            ("Yes", 2013, "error reconnecting to master 'mofang_repl@10.0.0.2:3306' - retry-time: 1  maximum-retries: 100000  message: Lost connection to server"),
            ("Preparing", 0, ""),
        ] {
            let (ok, why) = replication_state(&threads(io, errno, e));
            assert!(!ok, "{io} {errno}");
            let why = why.unwrap_or_default();
            if e.is_empty() {
                assert_eq!(why, "IO thread Preparing, SQL thread Yes");
            } else {
                assert_eq!(why, e, "the reason is MariaDB's Last_IO_Error");
            }
        }
        // A number without a text still counts.
        let (ok, why) = replication_state(&threads("Yes", 2003, ""));
        assert!(!ok);
        assert_eq!(why.as_deref(), Some("IO thread error 2003"));
        // Reconnected: MariaDB cleared the error; replicating again.
        assert_eq!(replication_state(&threads("Yes", 0, "")), (true, None));
        // Connected, the primary's first event (or its refusal, 1236) not there yet.
        let waiting = Threads {
            master_log_file: "",
            ..threads("Yes", 0, "")
        };
        assert_eq!(
            replication_state(&waiting),
            (
                false,
                Some("connected; waiting for the primary's first event".into())
            )
        );
        // An SQL error with both threads up (a retried transaction's) is not hidden either.
        let sql = Threads {
            sql_errno: 1205,
            sql_error: "Lock wait timeout exceeded",
            ..threads("Yes", 0, "")
        };
        assert_eq!(
            replication_state(&sql),
            (false, Some("Lock wait timeout exceeded".into()))
        );
        // Both stopped without an error: the threads' states.
        let stopped = Threads {
            sql: "No",
            ..threads("No", 0, "")
        };
        assert_eq!(
            replication_state(&stopped).1.as_deref(),
            Some("IO thread No, SQL thread No")
        );
    }

    #[test]
    fn promotion_steps_print_as_one_line() {
        let mut st = Steps::new();
        st.mark("connect");
        st.mark("open");
        let line = st.to_string();
        assert!(
            line.starts_with("connect=") && line.contains(" open="),
            "{line}"
        );
        assert!(line.ends_with("ms"), "{line}");
    }

    #[test]
    fn a_rotating_account_is_identified_by_both_passwords() {
        assert_eq!(identified("aaaa", None), "IDENTIFIED BY 'aaaa'");
        assert_eq!(identified("aaaa", Some("aaaa")), "IDENTIFIED BY 'aaaa'");
        let both = identified("aaaa", Some("bbbb"));
        assert!(
            both.contains("PASSWORD('aaaa') OR mysql_native_password USING PASSWORD('bbbb')"),
            "{both}"
        );
        let shown = "CREATE USER `u`@`%` IDENTIFIED VIA mysql_native_password USING \
                     '*12B62069D358C5BD67214B07EDC17B22E9253132' OR mysql_native_password \
                     USING '*f2ed0116d28baf2d2c9be5a64c29d2240bd30010'";
        let h = native_hashes(shown);
        assert_eq!(h.len(), 2);
        assert!(h.contains("*F2ED0116D28BAF2D2C9BE5A64C29D2240BD30010"));
        assert!(native_hashes("CREATE USER `u`@`%`").is_empty());
    }

    fn member(tls: Option<mofang_common::DbTls>) -> MemberConfig {
        MemberConfig {
            member: "shop-1".into(),
            port: 3306,
            announce: Target {
                host: "10.1.0.5".into(),
                port: 3306,
                tls: None,
            },
            memory_bytes: 512 << 20,
            replica_of: None,
            settings: BTreeMap::new(),
            also_accepted: None,
            tls: tls.map(|mode| crate::engine::MemberTls {
                mode,
                cert_pem: "CERT".into(),
                key_pem: "KEY".into(),
                ca_pem: "CA".into(),
            }),
        }
    }

    #[test]
    fn parameters_of_the_catalogue_are_rendered_in_mysqld_and_nothing_else() {
        let mut m = member(None);
        m.settings = [
            ("max_connections", "321"),
            ("innodb_log_buffer_size", "8388608"),
            ("wait_timeout", "5; DROP"),
            ("bogus", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let cnf = &MariaDb.render(&m, &Secrets::generate())[0].contents;
        assert!(cnf.contains("max_connections = 321\n"), "{cnf}");
        assert_eq!(cnf.matches("max_connections").count(), 1, "{cnf}");
        assert!(cnf.contains("innodb_log_buffer_size = 8388608\n"), "{cnf}");
        assert!(
            !cnf.contains("wait_timeout") && !cnf.contains("bogus"),
            "{cnf}"
        );
        assert!(cnf.find("innodb_log_buffer_size").unwrap() < cnf.find("[client]").unwrap());
    }

    #[test]
    fn tls_renders_the_certificate_files_and_required_refuses_plain_text() {
        use mofang_common::DbTls;
        let s = Secrets::generate();
        let files = MariaDb.render(&member(Some(DbTls::Required)), &s);
        let get = |name: &str| {
            files
                .iter()
                .find(|f| f.name == name)
                .map(|f| f.contents.clone())
                .unwrap_or_default()
        };
        let cnf = get("my.cnf");
        assert!(cnf.contains("ssl_cert = /etc/mofang/server.pem\n"), "{cnf}");
        assert!(cnf.contains("ssl_key = /etc/mofang/server-key.pem\n"));
        assert!(cnf.contains("ssl_ca = /etc/mofang/ca.pem\n"));
        assert!(cnf.contains("require_secure_transport = ON\n"));
        // In [mysqld], before [client].
        assert!(cnf.find("ssl_cert").unwrap() < cnf.find("[client]").unwrap());
        assert_eq!(
            (get("server.pem"), get("server-key.pem"), get("ca.pem")),
            ("CERT".into(), "KEY".into(), "CA".into())
        );
        // optional: TLS offered, plain text still accepted.
        let cnf = &MariaDb.render(&member(Some(DbTls::Optional)), &s)[0].contents;
        assert!(cnf.contains("ssl_cert") && !cnf.contains("require_secure_transport"));
        // off: nothing of it.
        let files = MariaDb.render(&member(None), &s);
        assert!(!files[0].contents.contains("ssl_"));
        assert!(files.iter().all(|f| !f.name.ends_with(".pem")));
    }

    #[test]
    fn a_replica_with_a_transaction_of_its_own_is_diverged() {
        // The SQL thread's error of a replica certified after it was repointed, before the
        // certificate reload stopped being binlogged (db_tls, issue 15 point 7).
        let e = "An attempt was made to binlog GTID 0-1476458121-2 which would create an \
                 out-of-order sequence number with existing GTID 0-175817257-2, and gtid strict \
                 mode is enabled";
        assert!(MariaDb.diverged(e));
        assert!(MariaDb.diverged(
            "Got fatal error 1236 from master when reading data from binary log: 'Error: \
             connecting slave requested to start from GTID 0-2-9, which is not in the master's \
             binlog. Since the master's binlog contains GTIDs with higher sequence numbers, it \
             probably means that the slave has diverged due to executing extra erroneous \
             transactions'"
        ));
        // Ahead of a primary still catching up (switchover): not diverged, never rebuilt.
        assert!(!MariaDb.diverged(
            "Got fatal error 1236 from master when reading data from binary log: 'Error: \
             connecting slave requested to start from GTID 0-2-9, which is not in the master's binlog'"
        ));
        // Older than the primary's binlogs reach (a seed from an old backup): a fresh copy.
        assert!(MariaDb.diverged(
            "Got fatal error 1236 from master when reading data from binary log: 'Could not \
             find GTID state requested by slave in any binlog files. Probably the slave state \
             is too old and required binlog files have been purged.'"
        ));
        assert!(!MariaDb
            .diverged("error connecting to master 'mofang_repl@172.18.0.2:3306' - retry-time: 1"));
        assert!(!MariaDb.diverged("IO thread Connecting, SQL thread Yes"));
    }

    #[test]
    fn the_certificate_reload_is_never_binlogged() {
        // A binlogged FLUSH is a transaction of the member's own server id: errant on a
        // replica. The statement's effect on the binlog is checked against a real MariaDB in
        // tests/tests/db_tls.rs (gtid_binlog_state).
        assert_eq!(RELOAD_TLS, "FLUSH NO_WRITE_TO_BINLOG SSL");
    }

    #[test]
    fn replication_and_seeding_run_over_verified_tls_when_on() {
        let on = master_ssl(true);
        assert!(on.contains("MASTER_SSL = 1"), "{on}");
        assert!(on.contains("MASTER_SSL_CA = '/etc/mofang/ca.pem'"));
        assert!(on.contains("MASTER_SSL_VERIFY_SERVER_CERT = 1"));
        // CHANGE MASTER keeps what it is not given: plain text is said, not left out.
        let off = master_ssl(false);
        assert!(off.contains("MASTER_SSL = 0"), "{off}");
        assert!(!off.contains("MASTER_SSL_CA"), "{off}");
        let mut primary = Target::parse("172.18.0.2:3306").unwrap();
        let mut local = Target::parse("172.18.0.3:3306").unwrap();
        let plain = MariaDb.seed_script(&primary, &local).unwrap();
        assert!(!plain.contains("--ssl") && plain.contains("-h 127.0.0.1 -P 3306"));
        let tls = || {
            Some(crate::engine::ClientTls {
                ca_pem: "CA".into(),
                server_name: "shop-1".into(),
            })
        };
        // TLS being turned on, the primary not restarted yet: the copy is plain text, the
        // local server (serving TLS) is reached over its socket.
        local.tls = tls();
        let mixed = MariaDb.seed_script(&primary, &local).unwrap();
        assert!(!mixed.contains("--ssl") && mixed.contains("--protocol=socket"));
        primary.tls = tls();
        let tls = MariaDb.seed_script(&primary, &local).unwrap();
        assert!(
            tls.contains(
                "-h 172.18.0.2 -P 3306 --ssl --ssl-ca=/etc/mofang/ca.pem --ssl-verify-server-cert"
            ),
            "{tls}"
        );
        assert!(tls.contains("--protocol=socket"), "{tls}");
    }
}

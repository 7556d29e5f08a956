//! `mofang`: the CLI, a thin client of the REST API (MOFANG_ADDR, MOFANG_TOKEN, and over
//! TLS MOFANG_CACERT, MOFANG_CLIENT_CERT, MOFANG_CLIENT_KEY). Tables by default, `--json` for
//! scripts. `mofang tls ...` makes the cluster's CA and certificates, offline.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use mofang_scheduler::model::now_ms;
use mofang_scheduler::ops::drift::{ParamState, ParametersView};
use mofang_scheduler::secrets::{KeyringStatus, Rotation};

mod backup;
mod haproxy;
mod tls;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Mofang: MariaDB and Redis on your own hosts.
#[derive(Parser, Debug)]
#[command(name = "mofang", version, about)]
struct Cli {
    /// Scheduler REST address.
    #[arg(
        long,
        env = "MOFANG_ADDR",
        default_value = "https://127.0.0.1:8080",
        global = true
    )]
    addr: String,
    /// The cluster CA the scheduler's certificate must chain to.
    #[arg(long, env = "MOFANG_CACERT", global = true)]
    ca_cert: Option<std::path::PathBuf>,
    /// A client certificate to present (scheduler `tls.rest_verify_clients`).
    #[arg(long, env = "MOFANG_CLIENT_CERT", global = true)]
    client_cert: Option<std::path::PathBuf>,
    /// Its key.
    #[arg(long, env = "MOFANG_CLIENT_KEY", global = true)]
    client_key: Option<std::path::PathBuf>,
    /// API token.
    #[arg(long, env = "MOFANG_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Database instances.
    #[command(subcommand)]
    Instance(InstanceCmd),
    /// Nodes (hosts running an agent).
    #[command(subcommand)]
    Node(NodeCmd),
    /// What happened (placements, state changes, failovers).
    Events {
        /// Only this instance.
        #[arg(long)]
        instance: Option<String>,
        /// Only events after this id.
        #[arg(long, default_value_t = 0)]
        since: u64,
        #[command(flatten)]
        back: Backward,
    },
    /// Resume automatic failover after the mass-failure guard stopped it.
    FailoverResume,
    /// The data keyring that seals secrets in the store (admin; docs/secrets.md).
    #[command(subcommand)]
    Keyring(KeyringCmd),
    /// The audit log (admin).
    Audit {
        /// Only entries after this id.
        #[arg(long, default_value_t = 0)]
        since: u64,
        #[command(flatten)]
        back: Backward,
    },
    /// The cluster PKI: CA and certificates (works offline, on files).
    #[command(subcommand)]
    Tls(tls::TlsCmd),
    /// Day-2 operations (rolling restart, ...): show, list, cancel.
    #[command(subcommand)]
    Operation(OperationCmd),
    /// Full backups of instances (docs/backup.md).
    #[command(subcommand)]
    Backup(backup::BackupCmd),
    /// Where backups are kept.
    #[command(subcommand)]
    BackupRepo(backup::BackupRepoCmd),
    /// One operation on every instance a label selector chooses.
    #[command(subcommand)]
    Batch(BatchCmd),
    /// The engines, their versions and the parameters `instance reconfigure` may set.
    Engines,
}

/// Reading a log backward: a page older than an id, or the newest entries.
#[derive(clap::Args, Debug)]
struct Backward {
    /// Only the newest `--limit` entries before this id (a page older than one seen).
    #[arg(long, conflicts_with_all = ["since", "last"])]
    before: Option<u64>,
    /// The newest this many entries.
    #[arg(long, conflicts_with = "since")]
    last: Option<usize>,
    /// At most this many (with --before; at most 10000).
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

impl Backward {
    /// The query of a log read: forward from `since`, or backward.
    fn query(&self, since: u64) -> String {
        match (self.before, self.last) {
            (Some(before), _) => format!("before={before}&limit={}", self.limit),
            (None, Some(last)) => format!("before={}&limit={last}", u64::MAX),
            (None, None) => format!("since={since}"),
        }
    }
}

#[derive(Subcommand, Debug)]
enum BatchCmd {
    /// Start a batch.
    Create {
        /// Label selector (`k=v,k2=v2`, `k`, `k!=v`).
        #[arg(long, short = 'l')]
        selector: String,
        /// restart, stop or start.
        #[arg(long = "type")]
        kind: String,
        /// At most this many operations at once.
        #[arg(long, default_value_t = 1)]
        max_parallel: usize,
        /// After this many failed operations no new one starts.
        #[arg(long, default_value_t = 1)]
        max_failures: usize,
        /// Wait until the batch ends, showing its progress.
        #[arg(long)]
        wait: bool,
    },
    /// The newest batches, newest first.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One batch with each instance's operation.
    Show {
        /// Batch id.
        id: String,
    },
    /// Stop a batch: its running operations are cancelled, none started.
    Cancel {
        /// Batch id.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum OperationCmd {
    /// One operation with its steps.
    Show {
        /// Operation id.
        id: String,
    },
    /// The operations of an instance, newest first.
    List {
        /// Instance name.
        instance: String,
    },
    /// Stop an operation at its next safe point (no step half done).
    Cancel {
        /// Operation id.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum KeyringCmd {
    /// Keys, the active one, and how many stored secrets each seals. A key that is no
    /// longer listed is retired: nothing in the store is sealed with it.
    Status,
    /// A new key seals from now on; every stored secret is sealed again with it and older
    /// keys that seal nothing any more are retired.
    Rotate,
    /// Rotate the root keyring file (`keyring_file`) on the leader: a new root key seals the
    /// data keyring, the old one leaves the file. Then copy the file to every other
    /// scheduler.
    RotateRoot,
}

/// An instance's backup policy on the command line.
#[derive(clap::Args, Debug)]
struct BackupPolicyArgs {
    /// Repository of the scheduled backups.
    #[arg(long, requires = "backup_schedule")]
    backup_repo: Option<String>,
    /// When to back up: cron in UTC, five fields (`0 3 * * *`) or six with seconds first.
    #[arg(long, requires = "backup_repo")]
    backup_schedule: Option<String>,
    /// Keep backups this many days (the newest is always kept).
    #[arg(long, requires = "backup_schedule")]
    retention_days: Option<u32>,
    /// Keep only the newest this many succeeded backups.
    #[arg(long, requires = "backup_schedule")]
    retention_count: Option<u32>,
    /// When to verify the latest backup (cron, as --backup-schedule).
    #[arg(long, requires = "backup_schedule")]
    verify_schedule: Option<String>,
}

impl BackupPolicyArgs {
    /// The API's `backup` field, if a schedule was given.
    fn json(&self) -> Option<Value> {
        let (repo, schedule) = (self.backup_repo.as_ref()?, self.backup_schedule.as_ref()?);
        let mut retention = json!({});
        if let Some(d) = self.retention_days {
            retention["days"] = json!(d);
        }
        if let Some(n) = self.retention_count {
            retention["count"] = json!(n);
        }
        let mut p = json!({"repo": repo, "schedule": schedule, "retention": retention});
        if let Some(v) = &self.verify_schedule {
            p["verify"] = json!(v);
        }
        Some(p)
    }
}

// Parsed once per run: the size of its largest variant (create's many flags) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum InstanceCmd {
    /// Create an instance.
    Create {
        /// Name (DNS label).
        name: String,
        /// mariadb or redis.
        #[arg(long, default_value = "mariadb")]
        engine: String,
        /// Engine version (default: 10.11 for MariaDB, 7.0 for Redis).
        #[arg(long)]
        version: Option<String>,
        /// Replicas besides the primary.
        #[arg(long, default_value_t = 1)]
        replicas: u32,
        /// CPU cores per member.
        #[arg(long, default_value_t = 0.5)]
        cpu: f64,
        /// Memory per member, MiB.
        #[arg(long, default_value_t = 512)]
        memory: u64,
        /// Disk per member, MiB.
        #[arg(long, default_value_t = 1024)]
        disk: u64,
        /// Disk class.
        #[arg(long)]
        disk_class: Option<String>,
        /// Allowed zones (comma separated).
        #[arg(long, value_delimiter = ',')]
        zones: Vec<String>,
        /// spread or binpack.
        #[arg(long)]
        strategy: Option<String>,
        /// A label `k=v` (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Restore a backup of this instance (which may have been deleted) into the new one.
        #[arg(long)]
        restore_from: Option<String>,
        /// The backup to restore (default: the latest succeeded one).
        #[arg(long, requires = "restore_from")]
        backup: Option<String>,
        /// Restore to this time (MariaDB, RFC 3339 in whole seconds, e.g.
        /// 2026-12-01T14:45:10Z): within the source's pitr_window.
        #[arg(long, requires = "restore_from")]
        restore_time: Option<String>,
        /// Database traffic TLS: off (default), optional (MariaDB only) or required.
        #[arg(long)]
        tls: Option<String>,
        /// Scheduled backups, retention and verification (docs/backup.md).
        #[command(flatten)]
        policy: BackupPolicyArgs,
        /// Wait until every member is healthy, showing progress.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Set an instance's backup schedule, retention and verification schedule (the policy
    /// is replaced whole), or remove it with --none.
    BackupPolicy {
        /// Name.
        name: String,
        /// The policy.
        #[command(flatten)]
        policy: BackupPolicyArgs,
        /// Remove the policy: no more scheduled backups, verifications or retention.
        #[arg(long, conflicts_with_all = ["backup_repo", "backup_schedule"])]
        none: bool,
    },
    /// Change an instance's database traffic TLS (MariaDB): off <-> optional/required
    /// restarts the members one at a time, replicas first (a rolling restart operation,
    /// shown by `mofang operation list NAME`); optional <-> required is set live.
    Tls {
        /// Name.
        name: String,
        /// off, optional or required.
        mode: String,
    },
    /// List instances.
    List {
        /// Only instances whose labels match: `k=v,k2=v2`, `k`, `k!=v`.
        #[arg(long, short = 'l')]
        selector: Option<String>,
    },
    /// Set (`k=v`) or remove (`k-`) labels of an instance.
    Label {
        /// Name.
        name: String,
        /// `k=v` to set, `k-` to remove.
        #[arg(required = true)]
        labels: Vec<String>,
    },
    /// Show one instance with its members.
    Show {
        /// Name.
        name: String,
    },
    /// Engine parameters: the desired value (set by `reconfigure`) and the value each
    /// member's server runs, with any drift.
    Parameters {
        /// Name.
        name: String,
    },
    /// Delete an instance (containers, then volumes).
    Delete {
        /// Name.
        name: String,
    },
    /// Show an instance's credentials (admin), and with TLS on the CA to verify its members
    /// against.
    Credentials {
        /// Name.
        name: String,
        /// With TLS on: write the CA certificate (PEM) to this file instead of printing it.
        #[arg(long)]
        ca_out: Option<std::path::PathBuf>,
    },
    /// Rolling restart as an operation: replicas one at a time, then a switchover, then
    /// the old primary; each member back, healthy and replicating before the next.
    Restart {
        /// Name.
        name: String,
        /// Wait until the operation ends, showing its steps.
        #[arg(long)]
        wait: bool,
        /// The operation fails after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Stop every member's container as an operation: volumes and reservations kept, no
    /// failover, no alert.
    Stop {
        /// Name.
        name: String,
        /// Wait until the operation ends.
        #[arg(long)]
        wait: bool,
        /// The operation fails after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Rebuild one member in place as an operation: a replica's container and volume are
    /// removed and seeded again from the primary; a primary is switched over first.
    Rebuild {
        /// Name.
        name: String,
        /// The member.
        member: String,
        /// Wait until the operation ends.
        #[arg(long)]
        wait: bool,
        /// The operation fails after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Scale to N replicas as an operation: new replicas placed and seeded one at a time
    /// (MariaDB: copied from a healthy replica), or the most-lagging replicas removed one at
    /// a time; never the primary.
    Scale {
        /// Name.
        name: String,
        /// The replica count wanted (1 ..= 8).
        #[arg(long)]
        replicas: u32,
        /// Wait until the operation ends, showing its steps.
        #[arg(long)]
        wait: bool,
        /// The operation fails after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Change every member's CPU and/or memory as an operation: reservations re-booked,
    /// CPU applied live, memory by a rolling restart.
    Resize {
        /// Name.
        name: String,
        /// CPU cores of each member.
        #[arg(long)]
        cpu: Option<f64>,
        /// Memory of each member, MiB.
        #[arg(long)]
        memory: Option<u64>,
        /// Wait until the operation ends, showing its steps.
        #[arg(long)]
        wait: bool,
        /// The operation fails after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Upgrade the engine to the next version of its ladder as an operation (`mofang
    /// engines` lists them): replicas first, a switchover, the old primary last, each
    /// recreated on the new version's image with its data upgraded.
    Upgrade {
        /// Name.
        name: String,
        /// The version (e.g. 11.8).
        version: String,
        /// Wait until the operation ends, showing its steps.
        #[arg(long)]
        wait: bool,
        /// The operation fails after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Grow every member's volume as an operation: reservations and quotas grown in place,
    /// no restart.
    Expand {
        /// Name.
        name: String,
        /// Disk of each member, MiB (more than now).
        #[arg(long)]
        disk: u64,
        /// Wait until the operation ends, showing its steps.
        #[arg(long)]
        wait: bool,
        /// The operation fails after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Set engine parameters as an operation (`mofang engines` lists them): dynamic ones
    /// live on every member, the others by a rolling restart.
    Reconfigure {
        /// Name.
        name: String,
        /// `name=value`, repeated.
        #[arg(long = "set", value_parser = parse_setting, required = true)]
        settings: Vec<(String, String)>,
        /// Wait until the operation ends, showing its steps.
        #[arg(long)]
        wait: bool,
        /// The operation fails after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Start a stopped instance again as an operation: the same members, the same primary.
    Start {
        /// Name.
        name: String,
        /// Wait until the operation ends.
        #[arg(long)]
        wait: bool,
        /// The operation fails after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Rotate an account's password (admin): every member accepts the new one beside the old,
    /// then everything switches to the new one, then the old one is dropped after the grace.
    /// Waits until the new password is in use.
    RotateCredentials {
        /// Name.
        name: String,
        /// The account: app, admin, repl or monitor.
        #[arg(long, default_value = "app", value_parser = ["app", "admin", "repl", "monitor"])]
        account: String,
        /// How long the old password stays accepted once the new one is in use: 90s, 10m,
        /// 2h, 1d (at most 7d). Default 0.
        #[arg(long, value_parser = parse_grace)]
        grace: Option<u64>,
        /// Give up waiting after this many seconds (the rotation goes on).
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Planned switchover without loss: fence the primary, let the target catch up,
    /// promote it. Waits until done.
    Switchover {
        /// Name.
        name: String,
        /// Member to promote (default: the most advanced replica).
        #[arg(long)]
        target: Option<String>,
    },
    /// Forced failover of an instance whose primary is not healthy (ignores the block
    /// period and the auto-failover switches).
    Failover {
        /// Name.
        name: String,
        /// Member to promote (default: the most advanced eligible replica).
        #[arg(long)]
        target: Option<String>,
    },
    /// Acknowledge the last failover: the next one may happen within the block period.
    Ack {
        /// Name.
        name: String,
    },
    /// Print an HAProxy config: a read-write port to the primary, a read-only port over the
    /// replicas, with health checks answered by the members' agents.
    HaproxyConfig {
        /// Name.
        name: String,
        /// Address to bind.
        #[arg(long, default_value = "0.0.0.0")]
        bind: String,
        /// Read-write port.
        #[arg(long, default_value_t = 3306)]
        rw_port: u16,
        /// Read-only port.
        #[arg(long, default_value_t = 3307)]
        ro_port: u16,
        /// Replicas lagging more than this many seconds get no reads.
        #[arg(long, default_value_t = 10)]
        max_lag: u32,
        /// The cluster CA (`mofang instance credentials NAME --ca-out FILE`): HAProxy speaks
        /// TLS to the members and verifies each one's certificate and name (Redis with TLS).
        #[arg(long)]
        ca_file: Option<String>,
        /// HAProxy's own certificate and key in one PEM file: clients speak TLS to HAProxy.
        #[arg(long)]
        frontend_cert: Option<String>,
    },
    /// Switch automatic failover of an instance on or off.
    AutoFailover {
        /// Name.
        name: String,
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
}

#[derive(Subcommand, Debug)]
enum NodeCmd {
    /// List nodes.
    List,
    /// Show one node.
    Show {
        /// Name.
        name: String,
    },
    /// Stop placing on a node and move its members away.
    Drain {
        /// Name.
        name: String,
    },
    /// Stop placing on a node.
    Cordon {
        /// Name.
        name: String,
    },
    /// Allow placing on a node again.
    Uncordon {
        /// Name.
        name: String,
    },
    /// Refuse a node's certificates from now on (admin); its members are handled as on a
    /// node loss. A new certificate (a join token made with --node) admits it again.
    Revoke {
        /// Name.
        name: String,
    },
    /// One-time tokens with which a new agent gets its certificate (admin).
    #[command(subcommand)]
    JoinToken(JoinTokenCmd),
}

#[derive(Subcommand, Debug)]
enum JoinTokenCmd {
    /// Create a token; give it to one agent as `tls.join_token`.
    Create {
        /// Lifetime: 90s, 30m, 1h, 2d (one minute to one week).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Admit only this node (a host joined again); default: any node not registered.
        #[arg(long)]
        node: Option<String>,
    },
}

/// A grace period in seconds from `90`, `90s`, `10m`, `2h` or `1d`.
fn parse_grace(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let (num, unit) = match v.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{v}' is not a duration like 90s, 10m, 2h or 1d"))?;
    let per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("'{v}': unit must be s, m, h or d")),
    };
    n.checked_mul(per)
        .ok_or_else(|| format!("'{v}' is too long"))
}

/// The longest the CLI waits in all for a new leader to warm up before it gives its refusal.
const WARM_UP_PATIENCE: Duration = Duration::from_secs(30);

/// How long to wait before sending a request again: only after a 503 `leader_warming_up`
/// (nothing was done: a new leader has not heard from its nodes yet, decision 134), for the
/// `Retry-After` it gave, and not past [`WARM_UP_PATIENCE`] in all.
fn warm_up_wait(
    status: u16,
    code: &str,
    retry_after_secs: Option<u64>,
    waited: Duration,
) -> Option<Duration> {
    if status != 503 || code != "leader_warming_up" {
        return None;
    }
    let wait = Duration::from_secs(retry_after_secs.unwrap_or(1).clamp(1, 10));
    (waited + wait <= WARM_UP_PATIENCE).then_some(wait)
}

struct Client {
    http: reqwest::Client,
    addr: String,
    token: Option<String>,
    has_ca: bool,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let url = format!("{}{}", self.addr.trim_end_matches('/'), path);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let mut waited = Duration::ZERO;
        let (status, v) = loop {
            let Some(attempt) = req.try_clone() else {
                bail!("request to {url} cannot be sent again");
            };
            let resp = match attempt.send().await {
                Ok(r) => r,
                Err(e) => bail!("{}", tls::explain_send_error(&e, &self.addr, self.has_ca)),
            };
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<u64>().ok());
            let text = resp.text().await.context("reading the answer")?;
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            let code = v["error"]["code"].as_str().unwrap_or_default();
            match warm_up_wait(status.as_u16(), code, retry_after, waited) {
                Some(wait) => {
                    eprintln!("the scheduler has just begun to lead and waits to hear from its nodes; retrying in {}s", wait.as_secs());
                    tokio::time::sleep(wait).await;
                    waited += wait;
                }
                None => break (status, v),
            }
        };
        if !status.is_success() {
            let code = v["error"]["code"].as_str().unwrap_or("error");
            let msg = v["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string());
            bail!("{} ({}): {}", code, status.as_u16(), msg);
        }
        Ok(v)
    }
    async fn get(&self, path: &str) -> Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }
    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    print!("{}", render_table(headers, rows));
}

/// The table `table` prints: columns padded to their widest cell, two spaces apart.
fn render_table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let mut text = String::new();
    let mut line = |cells: Vec<String>| {
        let out: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<width$}", c, width = w[i]))
            .collect();
        text.push_str(out.join("  ").trim_end());
        text.push('\n');
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
    text
}

/// A member's version as its agent reports it; `-` before it has reported one (a MariaDB
/// member reports none until `mariadb-upgrade` has run on a new version).
fn member_version(m: &Value) -> String {
    match m["version"].as_str() {
        Some(v) if !v.is_empty() => v.to_owned(),
        _ => "-".into(),
    }
}

/// The distinct versions an instance's members report, in the order first seen: one value
/// normally, two in the middle of an upgrade.
fn member_versions(i: &Value) -> String {
    let mut seen: Vec<String> = Vec::new();
    for m in i["members"].as_array().into_iter().flatten() {
        let v = member_version(m);
        if !seen.contains(&v) {
            seen.push(v);
        }
    }
    if seen.is_empty() {
        "-".into()
    } else {
        seen.join(",")
    }
}

fn print_instance(v: &Value) {
    print!("{}", render_instance(v));
}

fn render_instance(v: &Value) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    // Writing into a String cannot fail.
    macro_rules! line {
        ($($arg:tt)*) => { let _ = writeln!(o, $($arg)*); };
    }
    line!("name:     {}", s(&v["name"]));
    line!("engine:   {} {}", s(&v["engine"]), s(&v["version"]));
    line!("status:   {}", s(&v["status"]));
    line!("epoch:    {}", s(&v["epoch"]));
    line!("primary:  {}", s(&v["primary"]));
    if let Some(ready) = v["pitr_ready"].as_bool() {
        let w = &v["pitr_window"];
        let window = if w.is_object() {
            format!("{} to {}", s(&w["from"]), s(&w["to"]))
        } else {
            "none yet".into()
        };
        let why = v["pitr_reason"]
            .as_str()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        line!(
            "pitr:     {}, window {window}{why}",
            if ready { "ready" } else { "NOT ready" }
        );
    }
    line!("tls:      {}", s(&v["spec"]["tls"]));
    let r = &v["rotation"];
    if r.is_object() {
        line!(
            "rotation: {} password, step {}{}",
            s(&r["account"]),
            s(&r["step"]),
            match r["waiting_for"].as_array() {
                Some(w) if !w.is_empty() => format!(", waiting for {}", s(&r["waiting_for"])),
                _ => String::new(),
            }
        );
    }
    line!();
    let rows = v["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    let lag = m["lag_seconds"].as_i64().unwrap_or(-1);
                    vec![
                        s(&m["id"]),
                        s(&m["node"]),
                        s(&m["role"]),
                        s(&m["state"]),
                        s(&m["address"]),
                        if lag < 0 {
                            "-".into()
                        } else {
                            format!("{lag}s")
                        },
                        s(&m["epoch"]),
                        member_version(m),
                        if m["healthy"].as_bool() == Some(true) {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                        s(&m["reason"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    o.push_str(&render_table(
        &[
            "MEMBER", "NODE", "ROLE", "STATE", "ADDRESS", "LAG", "EPOCH", "VERSION", "HEALTHY",
            "REASON",
        ],
        rows,
    ));
    o
}

/// `instance list`: one line per instance; ENGINE is the version asked, VERSIONS what its
/// members report (two during an upgrade).
/// `instance parameters`: a row per parameter, its desired value and each member's
/// effective one (marked when pending or drifting), then the drift.
fn render_parameters(v: &ParametersView) -> String {
    let mut headers = vec!["PARAMETER".to_owned(), "DESIRED".to_owned()];
    headers.extend(
        v.members
            .iter()
            .map(|m| format!("{} ({})", m.member, m.role)),
    );
    let names: Vec<&str> = v
        .members
        .first()
        .map(|m| m.parameters.iter().map(|p| p.name.as_str()).collect())
        .unwrap_or_default();
    let rows = names
        .iter()
        .map(|name| {
            let mut row = vec![
                (*name).to_owned(),
                v.desired
                    .get(*name)
                    .cloned()
                    .unwrap_or_else(|| "(default)".into()),
            ];
            for m in &v.members {
                let cell = match m.parameters.iter().find(|p| p.name == *name) {
                    Some(p) => {
                        let value = p.effective.clone().unwrap_or_else(|| "?".into());
                        match p.state {
                            ParamState::Drift => format!("{value} DRIFT"),
                            ParamState::Pending => format!("{value} (pending)"),
                            _ => value,
                        }
                    }
                    None => "?".into(),
                };
                row.push(cell);
            }
            row
        })
        .collect();
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let mut text = format!(
        "instance: {} ({}), parameters generation {}\n",
        v.instance, v.engine, v.generation
    );
    text.push_str(&render_table(&headers, rows));
    if v.drift.is_empty() {
        text.push_str("no drift\n");
    } else {
        for d in &v.drift {
            text.push_str(&format!(
                "drift: {} runs {}={}, desired {}\n",
                d.member, d.parameter, d.effective, d.desired
            ));
        }
    }
    text
}

fn render_instance_list(v: &Value) -> String {
    let rows = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| {
                    let n = i["members"].as_array().map(|m| m.len()).unwrap_or(0);
                    vec![
                        s(&i["name"]),
                        format!("{} {}", s(&i["engine"]), s(&i["version"])),
                        n.to_string(),
                        s(&i["status"]),
                        s(&i["primary"]),
                        s(&i["epoch"]),
                        member_versions(i),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    render_table(
        &[
            "NAME", "ENGINE", "MEMBERS", "STATUS", "PRIMARY", "EPOCH", "VERSIONS",
        ],
        rows,
    )
}

fn ms_to_time(ms: &Value) -> String {
    let ms = ms.as_i64().unwrap_or(0);
    let secs = ms / 1000;
    let (h, m, sec) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{sec:02}.{:03}Z", ms % 1000)
}

async fn run(cli: Cli) -> Result<()> {
    if let Cmd::Tls(cmd) = cli.cmd {
        return tls::run(cmd);
    }
    let c = Client {
        http: tls::http_client(
            cli.ca_cert.as_deref(),
            cli.client_cert.as_deref(),
            cli.client_key.as_deref(),
        )?,
        addr: cli.addr.clone(),
        token: cli.token.clone(),
        has_ca: cli.ca_cert.is_some(),
    };
    let out = |v: &Value| println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    match cli.cmd {
        Cmd::Instance(InstanceCmd::Create {
            name,
            engine,
            version,
            replicas,
            cpu,
            memory,
            disk,
            disk_class,
            zones,
            strategy,
            labels,
            restore_from,
            backup,
            restore_time,
            tls,
            policy,
            wait,
            timeout,
        }) => {
            let version = version.unwrap_or_else(|| {
                if engine == "redis" {
                    "7.0".into()
                } else {
                    "10.11".into()
                }
            });
            let mut body = json!({
                "name": name, "engine": engine, "version": version, "replicas": replicas,
                "resources": {"cpu": cpu, "memory": memory, "disk": disk},
            });
            if let Some(dc) = disk_class {
                body["disk_class"] = json!(dc);
            }
            if !labels.is_empty() {
                let mut map = serde_json::Map::new();
                for l in &labels {
                    let (k, v) = l
                        .split_once('=')
                        .with_context(|| format!("--label {l:?}: use k=v"))?;
                    map.insert(k.to_owned(), json!(v));
                }
                body["labels"] = Value::Object(map);
            }
            if !zones.is_empty() || strategy.is_some() {
                let mut p = json!({});
                if !zones.is_empty() {
                    p["zones"] = json!(zones);
                }
                if let Some(st) = strategy {
                    p["spread"] = json!(st);
                }
                body["placement"] = p;
            }
            if let Some(from) = restore_from {
                body["restore"] =
                    json!({ "from_instance": from, "backup": backup, "time": restore_time });
            }
            if let Some(t) = tls {
                body["tls"] = json!(t);
            }
            if let Some(p) = policy.json() {
                body["backup"] = p;
            }
            let v = c.post("/v1/instances", body).await?;
            if !wait {
                if cli.json {
                    out(&v)
                } else {
                    print_instance(&v)
                }
                return Ok(());
            }
            let start = Instant::now();
            let mut last = String::new();
            let mut last_phases = String::new();
            let (mut prev_bytes, mut prev_at) = (0u64, Instant::now());
            loop {
                let v = c.get(&format!("/v1/instances/{name}")).await?;
                // A restore's progress (the primary filling its volume): a bar per update.
                let p = &v["restore_progress"];
                // Past the data (binlogs before it, prepare and replay after): a line per
                // change of phase or counter.
                if let Ok(progress) =
                    serde_json::from_value::<mofang_scheduler::cluster::RestoreProgress>(p.clone())
                {
                    let line = backup::restore_phases_line(&progress);
                    if progress.phase != "data" && line != last_phases && !cli.json {
                        eprintln!("[{:>5.1}s] {line}", start.elapsed().as_secs_f64());
                        last_phases = line;
                    }
                }
                if let (Some(bytes), Some(total)) = (p["bytes"].as_u64(), p["total"].as_u64()) {
                    if bytes != prev_bytes && !cli.json {
                        let dt = prev_at.elapsed().as_secs_f64().max(0.001);
                        let rate = bytes.saturating_sub(prev_bytes) as f64 / dt / (1 << 20) as f64;
                        eprintln!(
                            "[{:>5.1}s] {}",
                            start.elapsed().as_secs_f64(),
                            backup::restore_bar(&s(&p["backup"]), bytes, total, rate)
                        );
                        (prev_bytes, prev_at) = (bytes, Instant::now());
                    }
                }
                let members = v["members"].as_array().cloned().unwrap_or_default();
                let ready = members
                    .iter()
                    .filter(|m| m["healthy"].as_bool() == Some(true))
                    .count();
                let progress = format!(
                    "{name}: {ready}/{} members ready ({})",
                    members.len(),
                    members
                        .iter()
                        .map(|m| {
                            let reason = m["reason"].as_str().unwrap_or_default();
                            // Shown by the bar above when the view has the progress.
                            if reason.starts_with("restoring") && p.is_null() {
                                format!("{}={}: {reason}", s(&m["id"]), s(&m["state"]))
                            } else {
                                format!("{}={}", s(&m["id"]), s(&m["state"]))
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                if progress != last && !cli.json {
                    eprintln!("[{:>5.1}s] {progress}", start.elapsed().as_secs_f64());
                    last = progress;
                }
                if ready == members.len() && !members.is_empty() {
                    if cli.json {
                        out(&v)
                    } else {
                        print_instance(&v)
                    }
                    return Ok(());
                }
                if start.elapsed() > Duration::from_secs(timeout) {
                    bail!("{name} not ready after {timeout}s: {last}");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Cmd::Instance(InstanceCmd::BackupPolicy { name, policy, none }) => {
            let p = match (none, policy.json()) {
                (true, _) => Value::Null,
                (false, Some(p)) => p,
                (false, None) => bail!("give --backup-repo and --backup-schedule, or --none"),
            };
            let v = c
                .call(
                    reqwest::Method::PATCH,
                    &format!("/v1/instances/{name}"),
                    Some(json!({ "backup": p })),
                )
                .await?;
            if cli.json {
                out(&v)
            } else {
                println!("{name}: backup policy {}", v["spec"]["backup"]);
            }
        }
        Cmd::Instance(InstanceCmd::Tls { name, mode }) => {
            let v = c
                .call(
                    reqwest::Method::PATCH,
                    &format!("/v1/instances/{name}"),
                    Some(json!({ "tls": mode })),
                )
                .await?;
            if cli.json {
                out(&v)
            } else {
                println!(
                    "{name}: tls {} (members take it as they restart: see the instance's operations and events)",
                    v["spec"]["tls"].as_str().unwrap_or("?")
                );
            }
        }
        Cmd::Instance(InstanceCmd::Label { name, labels }) => {
            let mut patch = serde_json::Map::new();
            for l in &labels {
                if let Some((k, v)) = l.split_once('=') {
                    patch.insert(k.to_owned(), json!(v));
                } else if let Some(k) = l.strip_suffix('-') {
                    patch.insert(k.to_owned(), Value::Null);
                } else {
                    bail!("{l:?}: use k=v to set a label, k- to remove it");
                }
            }
            let v = c
                .call(
                    reqwest::Method::PATCH,
                    &format!("/v1/instances/{name}"),
                    Some(json!({ "labels": patch })),
                )
                .await?;
            if cli.json {
                out(&v)
            } else {
                println!("{name}: labels {}", v["spec"]["labels"]);
            }
        }
        Cmd::Instance(InstanceCmd::List { selector }) => {
            let path = match &selector {
                Some(sel) => {
                    // Encoded: a selector holds `=`, `,` and `!`.
                    let mut u = reqwest::Url::parse("http://x/v1/instances")?;
                    u.query_pairs_mut().append_pair("selector", sel);
                    format!("/v1/instances?{}", u.query().unwrap_or_default())
                }
                None => "/v1/instances".to_owned(),
            };
            let v = c.get(&path).await?;
            if cli.json {
                out(&v);
                return Ok(());
            }
            print!("{}", render_instance_list(&v));
        }
        Cmd::Instance(InstanceCmd::Show { name }) => {
            let v = c.get(&format!("/v1/instances/{name}")).await?;
            if cli.json {
                out(&v)
            } else {
                print_instance(&v)
            }
        }
        Cmd::Instance(InstanceCmd::Parameters { name }) => {
            let v = c.get(&format!("/v1/instances/{name}/parameters")).await?;
            if cli.json {
                out(&v)
            } else {
                let view: ParametersView = serde_json::from_value(v)
                    .context("the scheduler's parameters view did not parse")?;
                print!("{}", render_parameters(&view));
            }
        }
        Cmd::Instance(InstanceCmd::Delete { name }) => {
            let v = c
                .call(
                    reqwest::Method::DELETE,
                    &format!("/v1/instances/{name}"),
                    None,
                )
                .await?;
            if cli.json {
                out(&v)
            } else {
                println!("{name}: {}", s(&v["status"]))
            }
        }
        Cmd::Instance(InstanceCmd::Restart {
            name,
            wait,
            timeout,
        }) => run_operation(&c, &name, "restart", None, wait, timeout, cli.json).await?,
        Cmd::Instance(InstanceCmd::Rebuild {
            name,
            member,
            wait,
            timeout,
        }) => run_operation(&c, &name, "rebuild", Some(&member), wait, timeout, cli.json).await?,
        Cmd::Instance(InstanceCmd::Stop {
            name,
            wait,
            timeout,
        }) => run_operation(&c, &name, "stop", None, wait, timeout, cli.json).await?,
        Cmd::Instance(InstanceCmd::Scale {
            name,
            replicas,
            wait,
            timeout,
        }) => {
            let extra = json!({ "replicas": replicas });
            run_operation_with(&c, &name, "scale", extra, wait, timeout, cli.json).await?
        }
        Cmd::Instance(InstanceCmd::Resize {
            name,
            cpu,
            memory,
            wait,
            timeout,
        }) => {
            let mut extra = json!({});
            if let Some(cpu) = cpu {
                extra["cpu"] = json!(cpu);
            }
            if let Some(m) = memory {
                extra["memory"] = json!(m);
            }
            run_operation_with(&c, &name, "resize", extra, wait, timeout, cli.json).await?
        }
        Cmd::Instance(InstanceCmd::Upgrade {
            name,
            version,
            wait,
            timeout,
        }) => {
            let extra = json!({ "version": version });
            run_operation_with(&c, &name, "upgrade", extra, wait, timeout, cli.json).await?
        }
        Cmd::Instance(InstanceCmd::Expand {
            name,
            disk,
            wait,
            timeout,
        }) => {
            let extra = json!({ "disk": disk });
            run_operation_with(&c, &name, "expand", extra, wait, timeout, cli.json).await?
        }
        Cmd::Instance(InstanceCmd::Reconfigure {
            name,
            settings,
            wait,
            timeout,
        }) => {
            let map: serde_json::Map<String, Value> = settings
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            let extra = json!({ "settings": map });
            run_operation_with(&c, &name, "reconfigure", extra, wait, timeout, cli.json).await?
        }
        Cmd::Engines => {
            let v = c.get("/v1/engines").await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                for e in v.as_array().into_iter().flatten() {
                    println!(
                        "{} (versions {})",
                        s(&e["engine"]),
                        e["versions"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(s)
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    for p in e["parameters"].as_array().into_iter().flatten() {
                        let range = match p["type"].as_str() {
                            Some("integer") => format!("{} ..= {}", s(&p["min"]), s(&p["max"])),
                            _ => p["values"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .map(s)
                                .collect::<Vec<_>>()
                                .join("|"),
                        };
                        println!(
                            "  {:<24} {:<8} {:<32} {:<8} {}",
                            s(&p["name"]),
                            s(&p["type"]),
                            range,
                            if p["dynamic"] == true {
                                "live"
                            } else {
                                "restart"
                            },
                            s(&p["description"])
                        );
                    }
                }
            }
        }
        Cmd::Instance(InstanceCmd::Start {
            name,
            wait,
            timeout,
        }) => run_operation(&c, &name, "start", None, wait, timeout, cli.json).await?,
        Cmd::Batch(BatchCmd::Create {
            selector,
            kind,
            max_parallel,
            max_failures,
            wait,
        }) => {
            let v = c
                .post(
                    "/v1/batches",
                    json!({"selector": selector, "type": kind, "max_parallel": max_parallel, "max_failures": max_failures}),
                )
                .await?;
            let id = s(&v["id"]);
            if !wait {
                if cli.json {
                    out(&v)
                } else {
                    print_batch(&v)
                }
                return Ok(());
            }
            let start = Instant::now();
            let mut last = String::new();
            let v = loop {
                let v = c.get(&format!("/v1/batches/{id}")).await?;
                let line = batch_line(&v);
                if line != last && !cli.json {
                    eprintln!("[{:>6.1}s] {line}", start.elapsed().as_secs_f64());
                    last = line;
                }
                if matches!(
                    v["state"].as_str(),
                    Some("succeeded" | "failed" | "cancelled")
                ) {
                    break v;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            };
            if cli.json {
                out(&v)
            } else {
                print_batch(&v)
            }
            if v["state"] != "succeeded" {
                bail!("batch {id} {}", s(&v["state"]));
            }
        }
        Cmd::Batch(BatchCmd::List { limit }) => {
            let v = c.get(&format!("/v1/batches?limit={limit}")).await?;
            if cli.json {
                out(&v)
            } else {
                println!("{:<28} {:<20} PROGRESS", "BATCH", "SELECTOR");
                for b in v.as_array().into_iter().flatten() {
                    println!(
                        "{:<28} {:<20} {}",
                        s(&b["id"]),
                        s(&b["selector"]),
                        batch_line(b)
                    );
                }
            }
        }
        Cmd::Batch(BatchCmd::Show { id }) => {
            let v = c.get(&format!("/v1/batches/{id}")).await?;
            if cli.json {
                out(&v)
            } else {
                print_batch(&v)
            }
        }
        Cmd::Batch(BatchCmd::Cancel { id }) => {
            let v = c
                .post(&format!("/v1/batches/{id}/cancel"), json!({}))
                .await?;
            if cli.json {
                out(&v)
            } else {
                println!("batch {id}: cancel asked");
            }
        }
        Cmd::Operation(OperationCmd::Show { id }) => {
            let v = c.get(&format!("/v1/operations/{id}")).await?;
            if cli.json {
                out(&v)
            } else {
                print_operation(&v)
            }
        }
        Cmd::Operation(OperationCmd::List { instance }) => {
            let v = c
                .get(&format!("/v1/instances/{instance}/operations"))
                .await?;
            if cli.json {
                out(&v);
                return Ok(());
            }
            println!(
                "{:<24} {:<8} {:<10} {:>5}  REASON",
                "ID", "TYPE", "STATE", "DONE"
            );
            for o in v.as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:<8} {:<10} {:>2}/{:<2}  {}",
                    s(&o["id"]),
                    s(&o["type"]),
                    s(&o["state"]),
                    o["done"].as_array().map_or(0, Vec::len),
                    s(&o["total"]),
                    s(&o["reason"])
                );
            }
        }
        Cmd::Operation(OperationCmd::Cancel { id }) => {
            let v = c
                .post(&format!("/v1/operations/{id}/cancel"), json!({}))
                .await?;
            if cli.json {
                out(&v)
            } else {
                println!("operation {id}: cancel asked; it stops at its next safe point");
            }
        }
        Cmd::Instance(InstanceCmd::RotateCredentials {
            name,
            account,
            grace,
            timeout,
        }) => {
            let mut body = json!({ "account": account });
            if let Some(g) = grace {
                body["grace_s"] = json!(g);
            }
            let started = c
                .post(&format!("/v1/instances/{name}/credentials/rotate"), body)
                .await?;
            let start = std::time::Instant::now();
            let mut v = started;
            let mut last = String::new();
            // Until the new password is in use (step switch or later, or the rotation over).
            loop {
                let r = &v["rotation"];
                let step = r["step"].as_str().unwrap_or("done");
                if step != "add" {
                    break;
                }
                let progress = format!(
                    "{name}: {account} step {step}, waiting for {}",
                    s(&r["waiting_for"])
                );
                if progress != last && !cli.json {
                    eprintln!("[{:>5.1}s] {progress}", start.elapsed().as_secs_f64());
                    last = progress;
                }
                if start.elapsed() > Duration::from_secs(timeout) {
                    bail!("{name}: the new {account} password is not in use after {timeout}s ({last}); the rotation goes on: `mofang instance show {name}`");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                v = c.get(&format!("/v1/instances/{name}")).await?;
            }
            if cli.json {
                out(&v);
                return Ok(());
            }
            match v["rotation"]["old_accepted_until_ms"].as_i64() {
                Some(until) if v["rotation"]["step"] == "switch" => println!(
                    "{name}: the new {account} password is in use (`mofang instance credentials {name}`); the old one is accepted for {} s more",
                    ((until - now_ms()) / 1000).max(0)
                ),
                _ => println!(
                    "{name}: the new {account} password is in use (`mofang instance credentials {name}`); the old one is being dropped"
                ),
            }
        }
        Cmd::Instance(InstanceCmd::Switchover { name, target }) => {
            if !cli.json {
                eprintln!("switching over {name} ...");
            }
            let v = c
                .post(
                    &format!("/v1/instances/{name}/switchover"),
                    json!({ "target": target }),
                )
                .await?;
            if cli.json {
                out(&v)
            } else {
                print_instance(&v)
            }
        }
        Cmd::Instance(InstanceCmd::Failover { name, target }) => {
            let v = c
                .post(
                    &format!("/v1/instances/{name}/failover"),
                    json!({ "target": target }),
                )
                .await?;
            if cli.json {
                out(&v)
            } else {
                println!("failover of {name} decided at epoch {}; follow it with `mofang events --instance {name}`", s(&v["epoch"]));
            }
        }
        Cmd::Instance(InstanceCmd::HaproxyConfig {
            name,
            bind,
            rw_port,
            ro_port,
            max_lag,
            ca_file,
            frontend_cert,
        }) => {
            let v = c.get(&format!("/v1/instances/{name}")).await?;
            let cfg = haproxy::render(
                &v,
                &haproxy::Ports {
                    bind,
                    rw: rw_port,
                    ro: ro_port,
                    max_lag,
                    ca_file,
                    frontend_cert,
                },
            )
            .map_err(anyhow::Error::msg)?;
            print!("{cfg}");
        }
        Cmd::Instance(InstanceCmd::Ack { name }) => {
            let v = c
                .post(&format!("/v1/instances/{name}/failover/ack"), json!({}))
                .await?;
            if cli.json {
                out(&v)
            } else {
                println!("{name}: last failover acknowledged");
            }
        }
        Cmd::Instance(InstanceCmd::AutoFailover { name, state }) => {
            let v = c
                .call(
                    reqwest::Method::PUT,
                    &format!("/v1/instances/{name}/auto-failover"),
                    Some(json!({ "enabled": state == "on" })),
                )
                .await?;
            if cli.json {
                out(&v)
            } else {
                println!("{name}: automatic failover {state}");
            }
        }
        Cmd::Instance(InstanceCmd::Credentials { name, ca_out }) => {
            let v = c.get(&format!("/v1/instances/{name}/credentials")).await?;
            let ca = v["ca_pem"].as_str().map(str::to_owned);
            if let (Some(path), Some(ca)) = (&ca_out, &ca) {
                std::fs::write(path, ca)
                    .with_context(|| format!("--ca-out {}: cannot write", path.display()))?;
            }
            if cli.json {
                out(&v);
                return Ok(());
            }
            table(
                &["ACCOUNT", "USER", "PASSWORD"],
                vec![
                    vec!["application".into(), "app".into(), s(&v["app"])],
                    vec!["admin".into(), "mofang_admin".into(), s(&v["admin"])],
                    vec!["replication".into(), "mofang_repl".into(), s(&v["repl"])],
                    vec![
                        "monitoring".into(),
                        "mofang_monitor".into(),
                        s(&v["monitor"]),
                    ],
                ],
            );
            match (ca, ca_out) {
                (Some(_), Some(path)) => println!(
                    "\ntls: {}; the members' CA is in {} (verify a member with its address as the name)",
                    s(&v["tls"]),
                    path.display()
                ),
                (Some(ca), None) => println!(
                    "\ntls: {}; verify a member against this CA with its address as the name:\n{}",
                    s(&v["tls"]),
                    ca.trim_end()
                ),
                (None, _) => println!("\ntls: {}", s(&v["tls"])),
            }
        }
        Cmd::Node(NodeCmd::List) => {
            let v = c.get("/v1/nodes").await?;
            if cli.json {
                out(&v);
                return Ok(());
            }
            let rows = v
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|n| {
                            vec![
                                s(&n["name"]),
                                s(&n["state"]),
                                s(&n["address"]),
                                s(&n["labels"]["zone"]),
                                format!(
                                    "{:.1}/{}",
                                    n["reserved_cpu"].as_f64().unwrap_or(0.0),
                                    s(&n["cpu"])
                                ),
                                format!(
                                    "{}/{}",
                                    s(&n["reserved_memory_mib"]),
                                    n["memory_bytes"].as_u64().unwrap_or(0) >> 20
                                ),
                                s(&n["members"]),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            table(
                &[
                    "NAME",
                    "STATE",
                    "ADDRESS",
                    "ZONE",
                    "CPU",
                    "MEMORY MIB",
                    "MEMBERS",
                ],
                rows,
            );
        }
        Cmd::Node(NodeCmd::Show { name }) => out(&c.get(&format!("/v1/nodes/{name}")).await?),
        Cmd::Node(NodeCmd::Drain { name }) => node_action(&c, &name, "drain", cli.json).await?,
        Cmd::Node(NodeCmd::Cordon { name }) => node_action(&c, &name, "cordon", cli.json).await?,
        Cmd::Node(NodeCmd::Uncordon { name }) => {
            node_action(&c, &name, "uncordon", cli.json).await?
        }
        Cmd::Node(NodeCmd::Revoke { name }) => {
            let v = c
                .post(&format!("/v1/nodes/{name}/revoke"), json!({}))
                .await?;
            if cli.json {
                out(&v)
            } else {
                println!(
                    "node {name} revoked: its certificates issued before now are refused; \
                     its members are handled as on a node loss"
                );
            }
        }
        Cmd::Node(NodeCmd::JoinToken(JoinTokenCmd::Create { ttl, node })) => {
            let secs = tls::parse_ttl(&ttl)?;
            let v = c
                .post("/v1/join-tokens", json!({ "ttl_secs": secs, "node": node }))
                .await?;
            if cli.json {
                out(&v)
            } else {
                println!("{}", s(&v["token"]));
                eprintln!(
                    "one-time join token for {}, valid until {}: set it as tls.join_token in the agent's config",
                    v["node"].as_str().map_or("a new node".to_owned(), |n| format!("node {n}")),
                    ms_to_time(&v["expires_at_ms"])
                );
            }
        }
        Cmd::Tls(_) => {}
        Cmd::FailoverResume => {
            let v = c.post("/v1/failover/resume", json!({})).await?;
            if cli.json {
                out(&v)
            } else {
                println!("automatic failover resumed");
            }
        }
        Cmd::Events {
            instance,
            since,
            back,
        } => {
            let mut path = format!("/v1/events?{}", back.query(since));
            if let Some(i) = instance {
                path.push_str(&format!("&instance={i}"));
            }
            let v = c.get(&path).await?;
            if cli.json {
                out(&v);
                return Ok(());
            }
            let rows = v
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|e| {
                            vec![
                                s(&e["id"]),
                                ms_to_time(&e["at_ms"]),
                                s(&e["kind"]),
                                s(&e["instance"]),
                                s(&e["node"]),
                                s(&e["message"]),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            table(&["ID", "TIME", "KIND", "INSTANCE", "NODE", "MESSAGE"], rows);
        }
        Cmd::Backup(cmd) => backup::run_backup(&c, cmd, cli.json).await?,
        Cmd::BackupRepo(cmd) => backup::run_repo(&c, cmd, cli.json).await?,
        Cmd::Keyring(KeyringCmd::Status) => {
            let v = c.get("/v1/keyring").await?;
            if cli.json {
                out(&v);
                return Ok(());
            }
            let status: KeyringStatus =
                serde_json::from_value(v).context("unexpected answer from the scheduler")?;
            print_keyring(&status);
        }
        Cmd::Keyring(KeyringCmd::Rotate) => {
            let v = c.post("/v1/keyring/rotate", json!({})).await?;
            if cli.json {
                out(&v);
                return Ok(());
            }
            let r: Rotation =
                serde_json::from_value(v).context("unexpected answer from the scheduler")?;
            println!(
                "key {} is active; {} instance(s) sealed again",
                r.active_key, r.resealed_instances
            );
            if r.retired_keys.is_empty() {
                println!("no key retired");
            } else {
                println!(
                    "retired keys: {:?} (nothing in the store is sealed with them)",
                    r.retired_keys
                );
            }
            print_keyring(&r.status);
        }
        Cmd::Keyring(KeyringCmd::RotateRoot) => {
            let v = c.post("/v1/keyring/rotate-root", json!({})).await?;
            if cli.json {
                out(&v);
                return Ok(());
            }
            println!(
                "root key {} seals the data keyring; retired root keys: {}",
                v["root_key"], v["retired_root_keys"]
            );
            println!("{}", v["next"].as_str().unwrap_or_default());
        }
        Cmd::Audit { since, back } => {
            let v = c.get(&format!("/v1/audit?{}", back.query(since))).await?;
            if cli.json {
                out(&v);
                return Ok(());
            }
            let rows = v
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|e| {
                            vec![
                                s(&e["id"]),
                                ms_to_time(&e["at_ms"]),
                                s(&e["who"]),
                                s(&e["source"]),
                                s(&e["action"]),
                                s(&e["status"]),
                                s(&e["result"]),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            table(
                &["ID", "TIME", "WHO", "SOURCE", "ACTION", "STATUS", "RESULT"],
                rows,
            );
        }
    }
    Ok(())
}

fn print_keyring(k: &KeyringStatus) {
    let rows = k
        .keys
        .iter()
        .map(|key| {
            vec![
                key.id.to_string(),
                if key.active { "yes" } else { "" }.to_owned(),
                key.sealed_values.to_string(),
                ms_to_time(&json!(key.created_at_ms)),
            ]
        })
        .collect();
    table(&["KEY", "ACTIVE", "SEALED", "CREATED"], rows);
    if k.clear_values > 0 || k.pending_instances > 0 || k.pending_records > 0 {
        println!(
            "{} secret(s) in clear, {} instance(s) and {} other record(s) not yet sealed with the active key: re-encryption pending",
            k.clear_values, k.pending_instances, k.pending_records
        );
    }
}

async fn node_action(c: &Client, name: &str, action: &str, json: bool) -> Result<()> {
    let v = c
        .post(&format!("/v1/nodes/{name}/{action}"), json!({}))
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!("{name}: {}", s(&v["state"]));
    }
    Ok(())
}

fn batch_line(v: &Value) -> String {
    let items = v["items"].as_array().cloned().unwrap_or_default();
    let count = |st: &str| items.iter().filter(|i| i["state"] == st).count();
    format!(
        "{} {}: {} succeeded, {} running, {} pending, {} failed of {}",
        s(&v["type"]),
        s(&v["state"]),
        count("succeeded"),
        count("running"),
        count("pending"),
        count("failed"),
        items.len()
    )
}

fn print_batch(v: &Value) {
    println!("batch:    {}", s(&v["id"]));
    println!("selector: {}", s(&v["selector"]));
    println!("{}", batch_line(v));
    for i in v["items"].as_array().into_iter().flatten() {
        println!(
            "  {:<24} {:<12} {:<28} {}",
            s(&i["instance"]),
            s(&i["state"]),
            s(&i["operation"]),
            s(&i["reason"])
        );
    }
}

/// Starts an operation of `kind` on `name`; with `wait`, follows it to its end.
async fn run_operation(
    c: &Client,
    name: &str,
    kind: &str,
    member: Option<&str>,
    wait: bool,
    timeout: u64,
    json: bool,
) -> Result<()> {
    let extra = match member {
        Some(m) => json!({ "member": m }),
        None => json!({}),
    };
    run_operation_with(c, name, kind, extra, wait, timeout, json).await
}

/// `name=value` of `--set`.
fn parse_setting(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!("{s:?}: use name=value")),
    }
}

/// Starts an operation with the type's own fields in `extra` (an object), and with `wait`
/// follows it to its end.
async fn run_operation_with(
    c: &Client,
    name: &str,
    kind: &str,
    extra: Value,
    wait: bool,
    timeout: u64,
    json: bool,
) -> Result<()> {
    let out = |v: &Value| println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    let mut body = json!({ "type": kind, "timeout_s": timeout });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    let v = c
        .post(&format!("/v1/instances/{name}/operations"), body)
        .await?;
    let id = s(&v["id"]);
    if !wait {
        if json {
            out(&v)
        } else {
            println!("operation {id} ({kind} of {name}) started; follow it with `mofang operation show {id}`");
        }
        return Ok(());
    }
    let v = wait_operation(c, &id, json).await?;
    if json {
        out(&v)
    } else {
        print_operation(&v)
    }
    if v["state"] != "succeeded" {
        bail!("operation {id} {}: {}", s(&v["state"]), s(&v["reason"]));
    }
    Ok(())
}

/// Polls an operation until it ends, printing each step as it changes.
async fn wait_operation(c: &Client, id: &str, quiet: bool) -> Result<Value> {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let v = c.get(&format!("/v1/operations/{id}")).await?;
        let step = v["steps"]
            .as_array()
            .and_then(|st| st.last())
            .map(step_line)
            .unwrap_or_default();
        let line = format!(
            "{} {}/{} done; {step}{}",
            s(&v["state"]),
            v["done"].as_array().map_or(0, Vec::len),
            s(&v["total"]),
            if v["reason"].as_str().is_some_and(|r| !r.is_empty()) {
                format!(" ({})", s(&v["reason"]))
            } else {
                String::new()
            }
        );
        if line != last && !quiet {
            eprintln!("[{:>6.1}s] {line}", start.elapsed().as_secs_f64());
            last = line;
        }
        if matches!(
            v["state"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn step_line(st: &Value) -> String {
    let what = match st["action"].as_str() {
        Some("restart") => format!("restart {}", s(&st["member"])),
        Some("rebuild") => format!("rebuild {}", s(&st["member"])),
        Some("stop") => "stop every member".into(),
        Some("start") => "start every member".into(),
        Some("switchover") => format!("switchover from {}", s(&st["from"])),
        Some("add_replica") => format!(
            "add {} on {} (seeded from {})",
            s(&st["member"]),
            s(&st["node"]),
            st["donor"].as_str().unwrap_or("the primary")
        ),
        Some("remove_replica") => format!("remove {}", s(&st["member"])),
        Some("set_resources") => format!("set {} cores, {} MiB", s(&st["cpu"]), s(&st["memory"])),
        Some("set_disk") => format!("grow volumes to {} MiB", s(&st["disk"])),
        Some("set_parameters") => format!("set parameters (generation {})", s(&st["generation"])),
        other => other.unwrap_or("?").to_owned(),
    };
    let reason = st["reason"].as_str().filter(|r| !r.is_empty());
    format!(
        "{what}: {}{}",
        s(&st["state"]),
        reason.map(|r| format!(" ({r})")).unwrap_or_default()
    )
}

fn print_operation(v: &Value) {
    println!("operation: {}", s(&v["id"]));
    println!("instance:  {}", s(&v["instance"]));
    println!("type:      {}", s(&v["type"]));
    println!("state:     {}", s(&v["state"]));
    if v["reason"].as_str().is_some_and(|r| !r.is_empty()) {
        println!("reason:    {}", s(&v["reason"]));
    }
    println!(
        "done:      {} of {} members",
        v["done"].as_array().map_or(0, Vec::len),
        s(&v["total"])
    );
    for (i, st) in v["steps"].as_array().into_iter().flatten().enumerate() {
        let secs = match (st["started_ms"].as_i64(), st["ended_ms"].as_i64()) {
            (Some(a), Some(b)) if b >= a => format!("{:.1}s", (b - a) as f64 / 1000.0),
            _ => "-".into(),
        };
        println!("  {:>2}. {:<40} {secs}", i + 1, step_line(st));
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mofang: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_create_refused_while_the_leader_warms_up_is_sent_again_within_a_bound() {
        use super::{warm_up_wait, Duration};
        let s = Duration::from_secs;
        assert_eq!(
            warm_up_wait(503, "leader_warming_up", Some(2), s(0)),
            Some(s(2))
        );
        assert_eq!(
            warm_up_wait(503, "leader_warming_up", None, s(0)),
            Some(s(1))
        );
        assert_eq!(
            warm_up_wait(503, "leader_warming_up", Some(600), s(0)),
            Some(s(10))
        );
        assert_eq!(warm_up_wait(503, "leader_warming_up", Some(2), s(29)), None);
        assert_eq!(warm_up_wait(503, "no_leader", Some(2), s(0)), None);
        assert_eq!(warm_up_wait(409, "unplaceable", None, s(0)), None);
        assert_eq!(warm_up_wait(201, "", None, s(0)), None);
    }

    use super::{parse_grace, render_instance, render_instance_list, render_parameters};
    use serde_json::json;

    #[test]
    fn instance_parameters_mark_the_drifting_member() {
        let v = serde_json::from_value(json!({
            "instance": "shop", "engine": "mariadb", "generation": 1,
            "desired": {"max_connections": "321"},
            "members": [
                {"member": "shop-0", "role": "primary", "applied_generation": 1, "parameters": [
                    {"name": "max_connections", "desired": "321", "effective": "321", "state": "in_sync"},
                    {"name": "wait_timeout", "effective": "28800", "state": "default"}]},
                {"member": "shop-1", "role": "replica", "applied_generation": 1, "parameters": [
                    {"name": "max_connections", "desired": "321", "effective": "77", "state": "drift"},
                    {"name": "wait_timeout", "state": "unknown"}]}],
            "drift": [{"member": "shop-1", "parameter": "max_connections", "desired": "321", "effective": "77"}]
        }))
        .expect("view");
        let text = render_parameters(&v);
        let row = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            row("max_connections"),
            ["max_connections", "321", "321", "77", "DRIFT"]
        );
        assert_eq!(
            row("wait_timeout"),
            ["wait_timeout", "(default)", "28800", "?"]
        );
        assert!(text.contains("shop-1 (replica)"), "{text}");
        assert!(
            text.contains("drift: shop-1 runs max_connections=77, desired 321"),
            "{text}"
        );
    }

    /// An instance half-way through an upgrade from 10.5 to 10.11, as `GET /v1/instances/{name}`
    /// answers: one replica done, one member not reporting a version yet.
    fn upgrading() -> serde_json::Value {
        let member = |id: &str, role: &str, version: &str| {
            json!({"id": id, "node": format!("node-{id}"), "role": role, "state": "running",
                   "address": "10.0.0.1:3306", "lag_seconds": 0, "epoch": 3,
                   "healthy": true, "version": version, "reason": null})
        };
        json!({"name": "shop", "engine": "mariadb", "version": "10.11", "status": "running",
               "epoch": 3, "primary": "shop-1", "spec": {"tls": "off"},
               "members": [member("shop-1", "primary", "10.5"),
                           member("shop-2", "replica", "10.11"),
                           member("shop-3", "replica", "")]})
    }

    #[test]
    fn instance_show_has_each_members_version() {
        let text = render_instance(&upgrading());
        let lines: Vec<&str> = text.lines().collect();
        let header = lines.iter().find(|l| l.starts_with("MEMBER")).unwrap();
        let col = header.find("VERSION").unwrap();
        let cell = |id: &str| {
            let l = lines.iter().find(|l| l.starts_with(id)).unwrap();
            l[col..].split_whitespace().next().unwrap().to_owned()
        };
        assert_eq!(cell("shop-1"), "10.5");
        assert_eq!(cell("shop-2"), "10.11");
        assert_eq!(cell("shop-3"), "-", "no version reported yet");
        assert!(text.contains("engine:   mariadb 10.11"));
    }

    #[test]
    fn instance_list_shows_the_versions_members_run() {
        let text = render_instance_list(&json!([upgrading()]));
        let mut lines = text.lines();
        assert!(lines.next().unwrap().ends_with("VERSIONS"));
        let row = lines.next().unwrap();
        assert!(row.starts_with("shop"));
        assert!(row.contains("mariadb 10.11"));
        assert!(row.ends_with("10.5,10.11,-"), "{row}");
    }

    #[test]
    fn grace_periods_read_with_their_unit() {
        assert_eq!(parse_grace("90"), Ok(90));
        assert_eq!(parse_grace("90s"), Ok(90));
        assert_eq!(parse_grace("10m"), Ok(600));
        assert_eq!(parse_grace("2h"), Ok(7200));
        assert_eq!(parse_grace("1d"), Ok(86_400));
        assert!(parse_grace("10 minutes").is_err());
        assert!(parse_grace("m").is_err());
        assert!(parse_grace("99999999999999999999d").is_err());
    }
}

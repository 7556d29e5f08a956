//! Redis metrics under redis_exporter's names, from `INFO ALL` read as the `mofang_monitor` ACL
//! user over a minimal RESP2 client (two commands need no client library). Field mapping
//! follows redis_exporter's `metricMapGauges`/`metricMapCounters` and its `slaveN`,
//! `dbN`, `cmdstat_*` parsing.

use super::model::{label, Families, Kind, LabelSet, Labels};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The monitoring ACL user (created by the Redis engine adapter's `redis.conf`).
pub const MONITOR_USER: &str = "mofang_monitor";

/// Largest bulk reply accepted (INFO ALL is a few tens of KiB).
const MAX_BULK: usize = 16 << 20;

/// A byte stream to a server: plain TCP, or TLS over it.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync> Stream for T {}

/// A RESP connection authenticated as the monitoring user.
pub struct Client {
    io: BufReader<Box<dyn Stream>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

/// What went wrong talking RESP.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket failed.
    #[error("redis connection: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered an error (`-ERR ...`).
    #[error("redis answered: {0}")]
    Server(String),
    /// The reply was not what RESP allows here.
    #[error("unexpected redis reply: {0}")]
    Protocol(String),
}

/// A reply we care about.
#[derive(Debug, PartialEq)]
enum Reply {
    Simple(String),
    Bulk(Option<Vec<u8>>),
    Int(i64),
}

impl Client {
    /// Connects (over TLS when `tls` is given) and authenticates.
    pub async fn connect(
        host: &str,
        port: u16,
        password: &str,
        tls: Option<&crate::engine::ClientTls>,
    ) -> Result<Self, Error> {
        let stream = TcpStream::connect((host, port)).await?;
        stream.set_nodelay(true)?;
        let stream: Box<dyn Stream> = match tls {
            Some(t) => Box::new(t.connect(stream).await?),
            None => Box::new(stream),
        };
        let mut c = Client {
            io: BufReader::new(stream),
        };
        match c.call(&["AUTH", MONITOR_USER, password]).await? {
            Reply::Simple(s) if s == "OK" => Ok(c),
            other => Err(Error::Protocol(format!("AUTH: {other:?}"))),
        }
    }

    async fn call(&mut self, args: &[&str]) -> Result<Reply, Error> {
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a.as_bytes());
            req.extend_from_slice(b"\r\n");
        }
        self.io.get_mut().write_all(&req).await?;
        self.read_reply().await
    }

    async fn read_line(&mut self) -> Result<String, Error> {
        let mut line = String::new();
        let n = self.io.read_line(&mut line).await?;
        if n == 0 {
            return Err(Error::Protocol("connection closed".into()));
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }

    async fn read_reply(&mut self) -> Result<Reply, Error> {
        let line = self.read_line().await?;
        let (kind, rest) = line.split_at(line.len().min(1));
        match kind {
            "+" => Ok(Reply::Simple(rest.to_owned())),
            "-" => Err(Error::Server(rest.to_owned())),
            ":" => rest
                .parse()
                .map(Reply::Int)
                .map_err(|_| Error::Protocol(line.clone())),
            "$" => {
                let len: i64 = rest.parse().map_err(|_| Error::Protocol(line.clone()))?;
                if len < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let len = usize::try_from(len).map_err(|_| Error::Protocol(line.clone()))?;
                if len > MAX_BULK {
                    return Err(Error::Protocol(format!("bulk of {len} bytes")));
                }
                let mut buf = vec![0u8; len + 2];
                self.io.read_exact(&mut buf).await?;
                buf.truncate(len);
                Ok(Reply::Bulk(Some(buf)))
            }
            _ => Err(Error::Protocol(line.clone())),
        }
    }

    /// `INFO ALL` text.
    pub async fn info_all(&mut self) -> Result<String, Error> {
        match self.call(&["INFO", "ALL"]).await? {
            Reply::Bulk(Some(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
            other => Err(Error::Protocol(format!("INFO: {other:?}"))),
        }
    }
}

/// `INFO` text into `field -> value`.
pub fn parse_info(text: &str) -> BTreeMap<&str, &str> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect()
}

/// `a=1,b=2` into pairs.
fn kv_list(s: &str) -> BTreeMap<&str, &str> {
    s.split(',').filter_map(|p| p.split_once('=')).collect()
}

/// INFO fields exported as gauges: `(field, metric name without redis_)`.
const GAUGES: &[(&str, &str)] = &[
    ("uptime_in_seconds", "uptime_in_seconds"),
    ("process_id", "process_id"),
    ("io_threads_active", "io_threads_active"),
    ("connected_clients", "connected_clients"),
    ("blocked_clients", "blocked_clients"),
    ("maxclients", "max_clients"),
    ("tracking_clients", "tracking_clients"),
    ("clients_in_timeout_table", "clients_in_timeout_table"),
    (
        "client_recent_max_output_buffer",
        "client_recent_max_output_buffer_bytes",
    ),
    (
        "client_recent_max_input_buffer",
        "client_recent_max_input_buffer_bytes",
    ),
    ("allocator_active", "allocator_active_bytes"),
    ("allocator_allocated", "allocator_allocated_bytes"),
    ("allocator_resident", "allocator_resident_bytes"),
    ("allocator_frag_ratio", "allocator_frag_ratio"),
    ("allocator_frag_bytes", "allocator_frag_bytes"),
    ("allocator_rss_ratio", "allocator_rss_ratio"),
    ("allocator_rss_bytes", "allocator_rss_bytes"),
    ("used_memory", "memory_used_bytes"),
    ("used_memory_rss", "memory_used_rss_bytes"),
    ("used_memory_peak", "memory_used_peak_bytes"),
    ("used_memory_lua", "memory_used_lua_bytes"),
    ("used_memory_overhead", "memory_used_overhead_bytes"),
    ("used_memory_startup", "memory_used_startup_bytes"),
    ("used_memory_dataset", "memory_used_dataset_bytes"),
    ("used_memory_scripts", "memory_used_scripts_bytes"),
    ("maxmemory", "memory_max_bytes"),
    ("mem_fragmentation_ratio", "mem_fragmentation_ratio"),
    ("mem_fragmentation_bytes", "mem_fragmentation_bytes"),
    ("mem_clients_slaves", "mem_clients_slaves"),
    ("mem_clients_normal", "mem_clients_normal"),
    ("lazyfree_pending_objects", "lazyfree_pending_objects"),
    ("active_defrag_running", "active_defrag_running"),
    ("loading", "loading_dump_file"),
    ("rdb_changes_since_last_save", "rdb_changes_since_last_save"),
    ("rdb_bgsave_in_progress", "rdb_bgsave_in_progress"),
    ("rdb_last_save_time", "rdb_last_save_timestamp_seconds"),
    ("rdb_last_bgsave_status", "rdb_last_bgsave_status"),
    ("rdb_last_bgsave_time_sec", "rdb_last_bgsave_duration_sec"),
    (
        "rdb_current_bgsave_time_sec",
        "rdb_current_bgsave_duration_sec",
    ),
    ("rdb_last_cow_size", "rdb_last_cow_size_bytes"),
    ("aof_enabled", "aof_enabled"),
    ("aof_rewrite_in_progress", "aof_rewrite_in_progress"),
    ("aof_rewrite_scheduled", "aof_rewrite_scheduled"),
    ("aof_last_rewrite_time_sec", "aof_last_rewrite_duration_sec"),
    (
        "aof_current_rewrite_time_sec",
        "aof_current_rewrite_duration_sec",
    ),
    ("aof_last_cow_size", "aof_last_cow_size_bytes"),
    ("aof_current_size", "aof_current_size_bytes"),
    ("aof_base_size", "aof_base_size_bytes"),
    ("aof_pending_rewrite", "aof_pending_rewrite"),
    ("aof_buffer_length", "aof_buffer_length"),
    ("aof_pending_bio_fsync", "aof_pending_bio_fsync"),
    ("aof_delayed_fsync", "aof_delayed_fsync"),
    ("aof_last_bgrewrite_status", "aof_last_bgrewrite_status"),
    ("aof_last_write_status", "aof_last_write_status"),
    ("pubsub_channels", "pubsub_channels"),
    ("pubsub_patterns", "pubsub_patterns"),
    ("latest_fork_usec", "latest_fork_usec"),
    ("connected_slaves", "connected_slaves"),
    ("repl_backlog_size", "replication_backlog_bytes"),
    ("repl_backlog_active", "repl_backlog_is_active"),
    (
        "repl_backlog_first_byte_offset",
        "repl_backlog_first_byte_offset",
    ),
    ("repl_backlog_histlen", "repl_backlog_history_bytes"),
    ("master_repl_offset", "master_repl_offset"),
    ("second_repl_offset", "second_repl_offset"),
    ("slave_expires_tracked_keys", "slave_expires_tracked_keys"),
    ("slave_priority", "slave_priority"),
    ("sync_full", "replica_resyncs_full"),
    ("sync_partial_ok", "replica_partial_resync_accepted"),
    ("sync_partial_err", "replica_partial_resync_denied"),
    ("master_last_io_seconds_ago", "master_last_io_seconds_ago"),
    ("master_sync_in_progress", "master_sync_in_progress"),
    ("slave_repl_offset", "slave_repl_offset"),
];

/// INFO fields exported as counters: `(field, metric name without redis_ and _total)`.
const COUNTERS: &[(&str, &str)] = &[
    ("total_connections_received", "connections_received"),
    ("total_commands_processed", "commands_processed"),
    ("rejected_connections", "rejected_connections"),
    ("total_net_input_bytes", "net_input_bytes"),
    ("total_net_output_bytes", "net_output_bytes"),
    ("expired_keys", "expired_keys"),
    ("evicted_keys", "evicted_keys"),
    ("keyspace_hits", "keyspace_hits"),
    ("keyspace_misses", "keyspace_misses"),
    ("used_cpu_sys", "cpu_sys_seconds"),
    ("used_cpu_user", "cpu_user_seconds"),
    ("used_cpu_sys_children", "cpu_sys_children_seconds"),
    ("used_cpu_user_children", "cpu_user_children_seconds"),
    ("total_error_replies", "errors"),
];

fn num(v: &str) -> Option<f64> {
    match v {
        "ok" | "up" => Some(1.0),
        "err" | "down" => Some(0.0),
        _ => v.parse().ok(),
    }
}

fn with(base: &Arc<Labels>, extra: &[(&'static str, &str)]) -> LabelSet {
    LabelSet::new(base, extra.iter().map(|(k, v)| label(k, *v)).collect())
}

/// Turns `INFO ALL` text into families, every sample carrying `base` labels.
pub fn families(info_text: &str, base: &Arc<Labels>, out: &mut Families) {
    let info = parse_info(info_text);
    let get = |k: &str| info.get(k).copied().unwrap_or("");
    // As in redis_exporter, `role` here is Redis's own word (master/slave); it replaces the
    // agent's role label, which every other Redis family carries.
    let mut info_base: Labels = base.as_ref().clone();
    info_base.retain(|(k, _)| k != "role");
    let info_base = Arc::new(info_base);
    out.add(
        "redis_instance",
        "Information about the Redis instance",
        Kind::Info,
        with(
            &info_base,
            &[
                ("role", get("role")),
                ("redis_version", get("redis_version")),
                ("redis_mode", get("redis_mode")),
                ("maxmemory_policy", get("maxmemory_policy")),
                ("tcp_port", get("tcp_port")),
                ("run_id", get("run_id")),
            ],
        ),
        1.0,
    );
    for (field, name) in GAUGES {
        if let Some(v) = info.get(field).and_then(|v| num(v)) {
            out.add(
                format!("redis_{name}"),
                format!("{field} metric"),
                Kind::Gauge,
                with(base, &[]),
                v,
            );
        }
    }
    if let Some(up) = info.get("master_link_status").and_then(|v| num(v)) {
        out.add(
            "redis_master_link_up",
            "master_link_status metric",
            Kind::Gauge,
            with(base, &[]),
            up,
        );
    }
    for (field, name) in COUNTERS {
        if let Some(v) = info.get(field).and_then(|v| num(v)) {
            out.add(
                format!("redis_{name}"),
                format!("{field} metric"),
                Kind::Counter,
                with(base, &[]),
                v,
            );
        }
    }
    let mut dbs = 0;
    for (k, v) in &info {
        if let Some(n) = k.strip_prefix("slave").filter(|n| n.parse::<u32>().is_ok()) {
            let _ = n;
            let kv = kv_list(v);
            let l = with(
                base,
                &[
                    ("slave_ip", kv.get("ip").copied().unwrap_or("")),
                    ("slave_port", kv.get("port").copied().unwrap_or("")),
                    ("slave_state", kv.get("state").copied().unwrap_or("")),
                ],
            );
            if let Some(off) = kv.get("offset").and_then(|v| v.parse::<f64>().ok()) {
                out.add(
                    "redis_connected_slave_offset_bytes",
                    "Offset of connected slave",
                    Kind::Gauge,
                    l.clone(),
                    off,
                );
            }
            if let Some(lag) = kv.get("lag").and_then(|v| v.parse::<f64>().ok()) {
                out.add(
                    "redis_connected_slave_lag_seconds",
                    "Lag of connected slave",
                    Kind::Gauge,
                    l,
                    lag,
                );
            }
        } else if k.starts_with("db") && k[2..].parse::<u32>().is_ok() {
            dbs += 1;
            let kv = kv_list(v);
            let l = with(base, &[("db", k)]);
            if let Some(n) = kv.get("keys").and_then(|v| v.parse::<f64>().ok()) {
                out.add(
                    "redis_db_keys",
                    "Total number of keys by DB",
                    Kind::Gauge,
                    l.clone(),
                    n,
                );
            }
            if let Some(n) = kv.get("expires").and_then(|v| v.parse::<f64>().ok()) {
                out.add(
                    "redis_db_keys_expiring",
                    "Total number of expiring keys by DB",
                    Kind::Gauge,
                    l.clone(),
                    n,
                );
            }
            if let Some(ms) = kv.get("avg_ttl").and_then(|v| v.parse::<f64>().ok()) {
                out.add(
                    "redis_db_avg_ttl_seconds",
                    "Avg TTL in seconds",
                    Kind::Gauge,
                    l,
                    ms / 1000.0,
                );
            }
        } else if let Some(cmd) = k.strip_prefix("cmdstat_") {
            let kv = kv_list(v);
            let l = with(base, &[("cmd", cmd)]);
            if let Some(calls) = kv.get("calls").and_then(|v| v.parse::<f64>().ok()) {
                out.add(
                    "redis_commands",
                    "Total number of calls per command",
                    Kind::Counter,
                    l.clone(),
                    calls,
                );
            }
            if let Some(us) = kv.get("usec").and_then(|v| v.parse::<f64>().ok()) {
                out.add(
                    "redis_commands_duration_seconds",
                    "Total amount of time in seconds spent per command",
                    Kind::Counter,
                    l,
                    us / 1e6,
                );
            }
        } else if let Some(err) = k.strip_prefix("errorstat_") {
            if let Some(n) = kv_list(v).get("count").and_then(|v| v.parse::<f64>().ok()) {
                out.add(
                    "redis_errors",
                    "Total number of errors per error type",
                    Kind::Counter,
                    with(base, &[("err", err)]),
                    n,
                );
            }
        }
    }
    // An empty keyspace still answers "db0 has no keys", as redis_exporter does.
    if dbs == 0 {
        out.add(
            "redis_db_keys",
            "Total number of keys by DB",
            Kind::Gauge,
            with(base, &[("db", "db0")]),
            0.0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::model::{encode, Format};

    const INFO: &str = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\nrun_id:abc\r\ntcp_port:6379\r\nuptime_in_seconds:42\r\n\
        # Clients\r\nconnected_clients:3\r\nblocked_clients:0\r\n# Memory\r\nused_memory:1048576\r\nmaxmemory:201326592\r\nmaxmemory_policy:noeviction\r\n\
        # Persistence\r\nrdb_last_save_time:1700000000\r\nrdb_last_bgsave_status:ok\r\n\
        # Stats\r\ntotal_commands_processed:100\r\nkeyspace_hits:5\r\nkeyspace_misses:6\r\nevicted_keys:0\r\n\
        # Replication\r\nrole:master\r\nconnected_slaves:1\r\nslave0:ip=10.1.0.5,port=6379,state=online,offset=1234,lag=1\r\nmaster_repl_offset:1234\r\n\
        # Commandstats\r\ncmdstat_get:calls=7,usec=14,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\n\
        # Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=5000\r\n";

    #[test]
    fn info_maps_to_redis_exporter_names() {
        let mut f = Families::default();
        families(INFO, &Arc::new(vec![label("mofang_member", "c-0")]), &mut f);
        let t = encode(&f, Format::Text);
        for want in [
            "redis_instance_info{mofang_member=\"c-0\",role=\"master\",redis_version=\"7.0.15\"",
            "redis_uptime_in_seconds{mofang_member=\"c-0\"} 42",
            "redis_connected_clients{mofang_member=\"c-0\"} 3",
            "redis_memory_used_bytes{mofang_member=\"c-0\"} 1048576",
            "redis_memory_max_bytes{mofang_member=\"c-0\"} 201326592",
            "redis_connected_slaves{mofang_member=\"c-0\"} 1",
            "redis_master_repl_offset{mofang_member=\"c-0\"} 1234",
            "redis_connected_slave_offset_bytes{mofang_member=\"c-0\",slave_ip=\"10.1.0.5\",slave_port=\"6379\",slave_state=\"online\"} 1234",
            "redis_connected_slave_lag_seconds{mofang_member=\"c-0\",slave_ip=\"10.1.0.5\",slave_port=\"6379\",slave_state=\"online\"} 1",
            "redis_commands_processed_total{mofang_member=\"c-0\"} 100",
            "redis_keyspace_hits_total{mofang_member=\"c-0\"} 5",
            "redis_keyspace_misses_total{mofang_member=\"c-0\"} 6",
            "redis_evicted_keys_total{mofang_member=\"c-0\"} 0",
            "redis_db_keys{mofang_member=\"c-0\",db=\"db0\"} 3",
            "redis_db_avg_ttl_seconds{mofang_member=\"c-0\",db=\"db0\"} 5",
            "redis_rdb_last_save_timestamp_seconds{mofang_member=\"c-0\"} 1700000000",
            "redis_rdb_last_bgsave_status{mofang_member=\"c-0\"} 1",
            "redis_commands_total{mofang_member=\"c-0\",cmd=\"get\"} 7",
        ] {
            assert!(t.contains(want), "missing {want} in\n{t}");
        }
    }

    #[test]
    fn replica_reports_link_state() {
        let mut f = Families::default();
        families(
            "role:slave\r\nmaster_link_status:down\r\nmaster_last_io_seconds_ago:-1\r\n",
            &Arc::new(vec![]),
            &mut f,
        );
        let t = encode(&f, Format::Text);
        assert!(t.contains("redis_master_link_up 0"), "{t}");
        assert!(t.contains("redis_db_keys{db=\"db0\"} 0"), "{t}");
    }
}

//! MariaDB metrics under mysqld_exporter's names, read over the MySQL protocol as the
//! `mofang_monitor` account: `SHOW GLOBAL STATUS`, `SHOW GLOBAL VARIABLES`, `SHOW SLAVE STATUS`.
//! Name mapping and value parsing follow mysqld_exporter's `global_status.go`,
//! `global_variables.go` and `slave_status.go`, so its dashboards and alert rules apply.

use super::model::{label, Families, Kind, LabelSet, Labels};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The monitoring account (created by the MariaDB engine adapter's `init.sql`).
pub const MONITOR_USER: &str = "mofang_monitor";

/// Opens a connection as the monitoring account.
pub async fn connect(
    host: &str,
    port: u16,
    password: &str,
    tls: Option<&crate::engine::ClientTls>,
) -> Result<Conn, mysql_async::Error> {
    let opts = OptsBuilder::default()
        .ip_or_hostname(host.to_owned())
        .tcp_port(port)
        .user(Some(MONITOR_USER))
        .pass(Some(password.to_owned()))
        .prefer_socket(false)
        .stmt_cache_size(0)
        .ssl_opts(tls.map(crate::engine::mariadb_ssl_opts));
    Conn::new(opts).await
}

/// Raw answers of one scrape.
#[derive(Debug, Default)]
pub struct Raw {
    /// `SHOW GLOBAL STATUS` rows.
    pub status: Vec<(String, String)>,
    /// `SHOW GLOBAL VARIABLES` rows (kept between collections: [`VARIABLES_EVERY`]).
    pub variables: Arc<Vec<(String, String)>>,
    /// `SHOW SLAVE STATUS` columns of each row (one per replication connection).
    pub slaves: Vec<Vec<(String, Option<String>)>>,
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::NULL => None,
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Int(i) => Some(i.to_string()),
        Value::UInt(u) => Some(u.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Double(d) => Some(d.to_string()),
        _ => None,
    }
}

/// How long a connection's `SHOW GLOBAL VARIABLES` answer serves (issue 19): about 650 rows,
/// half of what a MariaDB member answers, and they change only when an operator reconfigures
/// the server. Those a failover or a fence changes ([`ROLE_VARIABLES`]) are read on every
/// collection.
pub const VARIABLES_EVERY: Duration = Duration::from_secs(60);

/// The variables the agent itself changes when a member's role changes, read on every
/// collection: dashboards and alerts follow a failover at the next collection.
const ROLE_VARIABLES: &str = "SHOW GLOBAL VARIABLES WHERE Variable_name IN \
     ('read_only', 'rpl_semi_sync_master_enabled', 'rpl_semi_sync_slave_enabled')";

/// The variables last read on a connection, and when (a new connection reads them again).
#[derive(Debug)]
pub struct KeptVariables {
    at: Instant,
    variables: Arc<Vec<(String, String)>>,
}

/// Whether the kept variables still serve at `now`.
fn variables_fresh(kept: Option<&KeptVariables>, now: Instant) -> bool {
    kept.is_some_and(|k| now.saturating_duration_since(k.at) < VARIABLES_EVERY)
}

/// `variables` with `name` set to `value` (copied only when the value changed).
fn with_variable(variables: &mut Arc<Vec<(String, String)>>, name: &str, value: &str) {
    let Some(i) = variables
        .iter()
        .position(|(k, _)| k.eq_ignore_ascii_case(name))
    else {
        return;
    };
    if variables[i].1 != value {
        Arc::make_mut(variables)[i].1 = value.to_owned();
    }
}

/// The first two columns of each row as text, the rows' own bytes moved rather than copied
/// (about 1,300 values per MariaDB collection).
fn pairs(rows: Vec<Row>) -> Vec<(String, String)> {
    rows.into_iter()
        .filter_map(|r| {
            // `unwrap_raw`, not `unwrap`: the latter panics on a value already taken.
            let mut values = r.unwrap_raw().into_iter().map(|v| v.unwrap_or(Value::NULL));
            let name = owned_text(values.next()?)?;
            Some((name, values.next().and_then(owned_text).unwrap_or_default()))
        })
        .collect()
}

/// [`text`] of a value that is given away: valid UTF-8 bytes become the string as they are.
fn owned_text(v: Value) -> Option<String> {
    match v {
        Value::Bytes(b) => Some(
            String::from_utf8(b)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        ),
        v => text(&v),
    }
}

/// Runs the statements on `conn`: `SHOW GLOBAL STATUS` and `SHOW SLAVE STATUS` every time,
/// `SHOW GLOBAL VARIABLES` when `kept` is older than [`VARIABLES_EVERY`] (else only the
/// [`ROLE_VARIABLES`], patched into the kept answer).
pub async fn query(
    conn: &mut Conn,
    kept: &mut Option<KeptVariables>,
    now: Instant,
) -> Result<Raw, mysql_async::Error> {
    let status: Vec<Row> = conn.query("SHOW GLOBAL STATUS").await?;
    let variables = match kept {
        Some(k) if variables_fresh(Some(k), now) => {
            let ro: Vec<Row> = conn.query(ROLE_VARIABLES).await?;
            for (name, value) in pairs(ro) {
                with_variable(&mut k.variables, &name, &value);
            }
            k.variables.clone()
        }
        _ => {
            let rows: Vec<Row> = conn.query("SHOW GLOBAL VARIABLES").await?;
            let variables = Arc::new(pairs(rows));
            *kept = Some(KeptVariables {
                at: now,
                variables: variables.clone(),
            });
            variables
        }
    };
    let slaves: Vec<Row> = conn.query("SHOW SLAVE STATUS").await?;
    Ok(Raw {
        status: pairs(status),
        variables,
        slaves: slaves
            .iter()
            .map(|r| {
                r.columns_ref()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name_str().into_owned(), r.as_ref(i).and_then(text)))
                    .collect()
            })
            .collect(),
    })
}

/// mysqld_exporter's `parseStatus`: booleans and replication words to 0/1, else a float.
pub fn parse_value(s: &str) -> Option<f64> {
    // Without lower-casing a copy: this runs for each of about 1,300 values per collection.
    let is = |w: &str| s.eq_ignore_ascii_case(w);
    if ["yes", "on", "primary"].into_iter().any(is) {
        return Some(1.0);
    }
    if [
        "no",
        "off",
        "disabled",
        "connecting",
        "non-primary",
        "disconnected",
    ]
    .into_iter()
    .any(is)
    {
        return Some(0.0);
    }
    s.parse::<f64>().ok()
}

/// mysqld_exporter's `validPrometheusName`: anything but `[a-zA-Z0-9_]` becomes `_`, lower-cased.
pub fn metric_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn with(base: &Arc<Labels>, extra: &[(&'static str, &str)]) -> LabelSet {
    LabelSet::new(base, extra.iter().map(|(k, v)| label(k, *v)).collect())
}

/// Appends mysqld_exporter's `validPrometheusName` of `s` to `out`.
fn push_metric_name(out: &mut String, s: &str) {
    out.extend(s.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c.to_ascii_lowercase()
        } else {
            '_'
        }
    }));
}

/// Turns one scrape's answers into families, every sample carrying `base` labels.
pub fn families(raw: &Raw, base: &Arc<Labels>, out: &mut Families) {
    const STATUS_HELP: &str = "Generic metric from SHOW GLOBAL STATUS.";
    let mut key = String::with_capacity(64);
    let mut name = String::with_capacity(96);
    for (k, v) in &raw.status {
        let Some(val) = parse_value(v) else { continue };
        key.clear();
        push_metric_name(&mut key, k);
        // The exporter's labelled families: ^(com|handler|connection_errors|
        // innodb_buffer_pool_pages|innodb_rows|performance_schema)_(.*)$
        let split = |p: &str| key.strip_prefix(p).filter(|r| !r.is_empty());
        if let Some(cmd) = split("com_") {
            out.add(
                "mysql_global_status_commands",
                "Total number of executed MySQL commands.",
                Kind::Counter,
                with(base, &[("command", cmd)]),
                val,
            );
        } else if let Some(h) = split("handler_") {
            out.add(
                "mysql_global_status_handlers",
                "Total number of executed MySQL handlers.",
                Kind::Counter,
                with(base, &[("handler", h)]),
                val,
            );
        } else if let Some(e) = split("connection_errors_") {
            out.add(
                "mysql_global_status_connection_errors",
                "Total number of MySQL connection errors.",
                Kind::Counter,
                with(base, &[("error", e)]),
                val,
            );
        } else if let Some(p) = split("innodb_buffer_pool_pages_") {
            match p {
                "data" | "free" | "misc" | "old" => out.add(
                    "mysql_global_status_buffer_pool_pages",
                    "Innodb buffer pool pages by state.",
                    Kind::Gauge,
                    with(base, &[("state", p)]),
                    val,
                ),
                "dirty" => out.add(
                    "mysql_global_status_buffer_pool_dirty_pages",
                    "Innodb buffer pool dirty pages.",
                    Kind::Gauge,
                    with(base, &[]),
                    val,
                ),
                "total" => {}
                _ => out.add(
                    "mysql_global_status_buffer_pool_page_changes",
                    "Innodb buffer pool page state changes.",
                    Kind::Counter,
                    with(base, &[("operation", p)]),
                    val,
                ),
            }
        } else if let Some(op) = split("innodb_rows_") {
            out.add(
                "mysql_global_status_innodb_row_ops",
                "Total number of MySQL InnoDB row operations.",
                Kind::Counter,
                with(base, &[("operation", op)]),
                val,
            );
        } else if let Some(i) = split("performance_schema_") {
            out.add(
                "mysql_global_status_performance_schema_lost",
                "Total number of MySQL instrumentations that could not be loaded or created due to memory constraints.",
                Kind::Counter,
                with(base, &[("instrumentation", i)]),
                val,
            );
        } else {
            name.clear();
            name.push_str("mysql_global_status_");
            name.push_str(&key);
            out.add_named(&name, STATUS_HELP, Kind::Unknown, with(base, &[]), val);
        }
    }

    let var = |n: &str| {
        raw.variables
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    for (k, v) in raw.variables.iter() {
        let Some(val) = parse_value(v) else { continue };
        name.clear();
        name.push_str("mysql_global_variables_");
        push_metric_name(&mut name, k);
        out.add_named(
            &name,
            "Generic gauge metric from SHOW GLOBAL VARIABLES.",
            Kind::Unknown,
            with(base, &[]),
            val,
        );
    }
    if !raw.variables.is_empty() {
        out.add(
            "mysql_version",
            "MySQL version and distribution.",
            Kind::Info,
            with(
                base,
                &[
                    ("innodb_version", var("innodb_version")),
                    ("version", var("version")),
                    ("version_comment", var("version_comment")),
                ],
            ),
            1.0,
        );
    }

    for row in &raw.slaves {
        let col = |n: &str| {
            row.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .and_then(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let (host, uuid, channel, conn) = (
            col("Master_Host"),
            col("Master_UUID"),
            col("Channel_Name"),
            col("Connection_name"),
        );
        let labels = with(
            base,
            &[
                ("master_host", &host),
                ("master_uuid", &uuid),
                ("channel_name", &channel),
                ("connection_name", &conn),
            ],
        );
        for (k, v) in row {
            // NULL (Seconds_Behind_Master with the IO thread down) is no sample, as in the exporter.
            let Some(val) = v.as_deref().and_then(parse_value) else {
                continue;
            };
            name.clear();
            name.push_str("mysql_slave_status_");
            push_metric_name(&mut name, k);
            out.add_named(
                &name,
                "Generic metric from SHOW SLAVE STATUS.",
                Kind::Unknown,
                labels.clone(),
                val,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::model::{encode, Format};

    #[test]
    fn values_parse_like_the_exporter() {
        assert_eq!(parse_value("ON"), Some(1.0));
        assert_eq!(parse_value("Yes"), Some(1.0));
        assert_eq!(parse_value("Connecting"), Some(0.0));
        assert_eq!(parse_value("12.5"), Some(12.5));
        assert_eq!(parse_value("mysql-bin"), None);
        assert_eq!(metric_name("Innodb_buffer-pool.x"), "innodb_buffer_pool_x");
    }

    #[test]
    fn status_variables_and_slave_status_map_to_exporter_names() {
        let raw = Raw {
            status: vec![
                ("Com_select".into(), "10".into()),
                ("Handler_read_key".into(), "3".into()),
                ("Innodb_buffer_pool_pages_free".into(), "100".into()),
                ("Innodb_buffer_pool_pages_dirty".into(), "2".into()),
                ("Innodb_buffer_pool_pages_total".into(), "200".into()),
                ("Innodb_buffer_pool_pages_flushed".into(), "7".into()),
                ("Innodb_rows_read".into(), "9".into()),
                ("Rpl_semi_sync_master_status".into(), "ON".into()),
                ("Uptime".into(), "42".into()),
                ("Ssl_cipher".into(), "".into()),
            ],
            variables: Arc::new(vec![
                ("read_only".into(), "OFF".into()),
                ("max_connections".into(), "200".into()),
                ("version".into(), "10.11.6-MariaDB-0+deb12u1-log".into()),
                ("version_comment".into(), "Debian 12".into()),
                ("innodb_version".into(), "10.11.6".into()),
            ]),
            slaves: vec![vec![
                ("Master_Host".into(), Some("10.0.0.2".into())),
                ("Slave_IO_Running".into(), Some("Yes".into())),
                ("Slave_SQL_Running".into(), Some("No".into())),
                ("Seconds_Behind_Master".into(), None),
                ("Connection_name".into(), Some("".into())),
            ]],
        };
        let base = Arc::new(vec![label("mofang_member", "db-0")]);
        let mut f = Families::default();
        families(&raw, &base, &mut f);
        let t = encode(&f, Format::Text);
        for want in [
            "mysql_global_status_commands_total{mofang_member=\"db-0\",command=\"select\"} 10",
            "mysql_global_status_handlers_total{mofang_member=\"db-0\",handler=\"read_key\"} 3",
            "mysql_global_status_buffer_pool_pages{mofang_member=\"db-0\",state=\"free\"} 100",
            "mysql_global_status_buffer_pool_dirty_pages{mofang_member=\"db-0\"} 2",
            "mysql_global_status_buffer_pool_page_changes_total{mofang_member=\"db-0\",operation=\"flushed\"} 7",
            "mysql_global_status_innodb_row_ops_total{mofang_member=\"db-0\",operation=\"read\"} 9",
            "mysql_global_status_rpl_semi_sync_master_status{mofang_member=\"db-0\"} 1",
            "# TYPE mysql_global_status_uptime untyped",
            "mysql_global_variables_read_only{mofang_member=\"db-0\"} 0",
            "mysql_version_info{mofang_member=\"db-0\",innodb_version=\"10.11.6\",version=\"10.11.6-MariaDB-0+deb12u1-log\",version_comment=\"Debian 12\"} 1",
            "mysql_slave_status_slave_io_running{mofang_member=\"db-0\",master_host=\"10.0.0.2\",master_uuid=\"\",channel_name=\"\",connection_name=\"\"} 1",
            "mysql_slave_status_slave_sql_running{mofang_member=\"db-0\",master_host=\"10.0.0.2\",master_uuid=\"\",channel_name=\"\",connection_name=\"\"} 0",
        ] {
            assert!(t.contains(want), "missing {want} in\n{t}");
        }
        assert!(!t.contains("pages_total"), "{t}");
        assert!(!t.contains("seconds_behind_master"), "{t}");
        assert!(!t.contains("ssl_cipher"), "{t}");
    }

    /// Issue 19: the variables are read again once a minute; `read_only` is patched in between
    /// (a failover's change shows at the next collection), copying the rows only when it moved.
    #[test]
    fn kept_variables_serve_a_minute_and_read_only_is_patched_in() {
        let t0 = Instant::now();
        let kept = KeptVariables {
            at: t0,
            variables: Arc::new(vec![
                ("max_connections".into(), "200".into()),
                ("read_only".into(), "OFF".into()),
            ]),
        };
        assert!(!variables_fresh(None, t0));
        assert!(variables_fresh(Some(&kept), t0 + Duration::from_secs(59)));
        assert!(!variables_fresh(Some(&kept), t0 + VARIABLES_EVERY));
        // A clock read before `at` (another task's Instant) is fresh, never a panic.
        assert!(variables_fresh(
            Some(&kept),
            t0.checked_sub(Duration::from_secs(1)).unwrap_or(t0)
        ));

        let mut vars = kept.variables.clone();
        with_variable(&mut vars, "READ_ONLY", "OFF");
        assert!(Arc::ptr_eq(&vars, &kept.variables), "unchanged: no copy");
        with_variable(&mut vars, "read_only", "ON");
        assert_eq!(vars[1], ("read_only".to_owned(), "ON".to_owned()));
        assert_eq!(
            kept.variables[1].1, "OFF",
            "the kept answer a scrape serves is not changed under it"
        );
        with_variable(&mut vars, "no_such_variable", "1");
        assert_eq!(vars.len(), 2);
    }
}

//! The scheduler's own Prometheus metrics, built with `prometheus-client`: failover counters
//! and the last failover's duration, the mass-failure guard, binlog archive lag and readiness,
//! missed schedules and backup health per instance. The values are read into a [`Snapshot`]
//! first (the I/O), then written by [`render`] (pure), in OpenMetrics or the Prometheus text
//! format as the scrape's `Accept` header asks.

use super::*;
use crate::cluster::BackupHealthView;
use mofang_common::exposition::Format;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};

/// What `/metrics` exports, read from the cluster at the scrape.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Snapshot {
    /// Failovers completed.
    pub completed: u64,
    /// Failovers that did not complete.
    pub unsuccessful: u64,
    /// Automatic failovers held back.
    pub blocked: u64,
    /// Switchovers completed.
    pub switchovers: u64,
    /// Members rebuilt elsewhere.
    pub replaced: u64,
    /// The last completed failover, seconds.
    pub last_failover_s: f64,
    /// Whether the mass-failure guard holds.
    pub mass_hold: bool,
    /// Per archiving instance: archive lag (seconds, if known) and PITR readiness.
    pub pitr: Vec<(String, Option<i64>, bool)>,
    /// Missed scheduled runs per instance with a backup policy.
    pub missed: BTreeMap<String, u64>,
    /// Backup health per instance.
    pub health: Vec<BackupHealthView>,
}

impl Snapshot {
    /// Reads the values; the per-instance ones only on the leader (a follower's are stale).
    async fn read(cluster: &Cluster) -> Snapshot {
        let c = &cluster.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let health = if cluster.is_active() {
            cluster.backup_health().await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "backup records not read for /metrics");
                Vec::new()
            })
        } else {
            Vec::new()
        };
        Snapshot {
            completed: g(&c.completed),
            unsuccessful: g(&c.unsuccessful),
            blocked: g(&c.blocked),
            switchovers: g(&c.switchovers),
            replaced: g(&c.replaced),
            last_failover_s: g(&c.last_duration_ms) as f64 / 1000.0,
            mass_hold: cluster.mass_hold(),
            pitr: cluster.pitr_states(),
            missed: cluster.backup_missed(),
            health,
        }
    }
}

type Labels = Vec<(&'static str, String)>;

fn instance(name: &str) -> Labels {
    vec![("mofang_instance", name.to_owned())]
}

/// A gauge family per instance, registered under `name`.
fn per_instance(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    reg.register(name, help, f.clone());
    f
}

/// A gauge family of seconds (or other fractions) per instance.
fn per_instance_f64(
    reg: &mut Registry,
    name: &str,
    help: &str,
) -> Family<Labels, Gauge<f64, AtomicU64>> {
    let f = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    reg.register(name, help, f.clone());
    f
}

fn counter(reg: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    reg.register(name, help, c);
}

/// Seconds from unix milliseconds.
fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// The exposition of a snapshot. Counters are registered without `_total`: the encoder adds
/// it to their samples (and, in the text format, [`to_text`] to their metadata).
pub(super) fn render(s: &Snapshot, format: Format) -> String {
    let mut reg = Registry::default();
    let failovers = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
    reg.register(
        "mofang_failovers",
        "Failovers by outcome.",
        failovers.clone(),
    );
    failovers
        .get_or_create(&vec![("result", "completed")])
        .inc_by(s.completed);
    failovers
        .get_or_create(&vec![("result", "unsuccessful")])
        .inc_by(s.unsuccessful);
    counter(
        &mut reg,
        "mofang_failovers_blocked",
        "Automatic failovers held back by a safety rail.",
        s.blocked,
    );
    counter(
        &mut reg,
        "mofang_switchovers",
        "Planned switchovers completed.",
        s.switchovers,
    );
    counter(
        &mut reg,
        "mofang_members_replaced",
        "Members rebuilt on another node.",
        s.replaced,
    );
    let last = Gauge::<f64, AtomicU64>::default();
    last.set(s.last_failover_s);
    reg.register(
        "mofang_failover_last_duration_seconds",
        "Decision to healthy new primary, last failover.",
        last,
    );
    let hold = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    hold.set(i64::from(s.mass_hold));
    reg.register(
        "mofang_failover_mass_hold",
        "1 while the mass-failure guard holds automatic failover.",
        hold,
    );

    let lag = per_instance(
        &mut reg,
        "mofang_pitr_archive_lag_seconds",
        "Seconds since the latest archived binlog event while the primary holds unarchived transactions (0: none).",
    );
    let ready = per_instance(
        &mut reg,
        "mofang_pitr_ready",
        "1 when the binlog archive continues the latest full backup without a gap.",
    );
    for (name, l, r) in &s.pitr {
        if let Some(l) = l {
            lag.get_or_create(&instance(name)).set(*l);
        }
        ready.get_or_create(&instance(name)).set(i64::from(*r));
    }

    let missed = Family::<Labels, Counter>::default();
    reg.register(
        "mofang_backup_missed",
        "Scheduled backups and verifications that did not run at their slot, since this scheduler leads.",
        missed.clone(),
    );
    for (name, n) in &s.missed {
        missed.get_or_create(&instance(name)).inc_by(*n);
    }

    let success = per_instance_f64(
        &mut reg,
        "mofang_backup_last_success_timestamp_seconds",
        "End of the newest succeeded backup (unix seconds).",
    );
    let duration = per_instance_f64(
        &mut reg,
        "mofang_backup_duration_seconds",
        "Duration of the newest succeeded backup.",
    );
    let size = per_instance(
        &mut reg,
        "mofang_backup_size_bytes",
        "Bytes stored by the newest succeeded backup.",
    );
    let failed = per_instance(
        &mut reg,
        "mofang_backup_last_failed",
        "1 when the newest finished backup failed.",
    );
    let verify_failed = per_instance(
        &mut reg,
        "mofang_backup_verify_last_failed",
        "1 when the newest verification of a backup failed.",
    );
    let overdue = per_instance(
        &mut reg,
        "mofang_backup_overdue_seconds",
        "Seconds since the first slot of the backup schedule after the newest succeeded backup was asked for; 0 before it.",
    );
    for h in &s.health {
        let l = instance(&h.instance);
        if let (Some(end), Some(took), Some(bytes)) =
            (h.last_success_ms, h.last_duration_ms, h.last_size)
        {
            success.get_or_create(&l).set(secs(end));
            duration.get_or_create(&l).set(secs(took));
            size.get_or_create(&l)
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        if let Some(f) = h.last_failed {
            failed.get_or_create(&l).set(i64::from(f));
        }
        if let Some(f) = h.verify_failed {
            verify_failed.get_or_create(&l).set(i64::from(f));
        }
        if let Some(o) = h.overdue_s {
            overdue.get_or_create(&l).set(o);
        }
    }

    let mut out = String::new();
    if let Err(e) = encode(&mut out, &reg) {
        // Writing to a String does not fail; were it to, the scrape gets what was written.
        tracing::warn!(error = %e, "metrics not encoded");
    }
    match format {
        Format::OpenMetrics => out,
        Format::Text => to_text(&out),
    }
}

/// The Prometheus text format (0.0.4) of an OpenMetrics exposition: a counter's metadata
/// names its samples' `_total` name, and `# UNIT` and `# EOF` lines go (the sample lines are
/// the same in both).
pub(super) fn to_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len() + 16 * counters.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{p}{name}{suffix} {tail}"));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// `GET /metrics` (no token: Prometheus scrapes it; it holds counts and figures, no secrets).
pub(super) async fn metrics(State(api): State<Api>, headers: axum::http::HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    let body = render(&Snapshot::read(&api.cluster).await, format);
    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            completed: 2,
            unsuccessful: 1,
            last_failover_s: 1.25,
            mass_hold: true,
            pitr: vec![("db".into(), Some(0), true), ("new".into(), None, false)],
            missed: [("db".to_owned(), 3)].into(),
            health: vec![BackupHealthView {
                instance: "db".into(),
                schedule: Some("0 * * * *".into()),
                backups: 4,
                last_success_ms: Some(1_700_000_000_500),
                last_duration_ms: Some(2_000),
                last_size: Some(1 << 20),
                last_failed: Some(false),
                verify_failed: Some(true),
                overdue_s: Some(0),
            }],
            ..Snapshot::default()
        }
    }

    #[test]
    fn the_text_format_has_every_family_under_its_sample_name() {
        let t = render(&sample(), Format::Text);
        for line in [
            "# TYPE mofang_failovers_total counter",
            "mofang_failovers_total{result=\"completed\"} 2",
            "mofang_failovers_total{result=\"unsuccessful\"} 1",
            "mofang_failovers_blocked_total 0",
            "# TYPE mofang_failover_last_duration_seconds gauge",
            "mofang_failover_last_duration_seconds 1.25",
            "mofang_failover_mass_hold 1",
            "mofang_pitr_archive_lag_seconds{mofang_instance=\"db\"} 0",
            "mofang_pitr_ready{mofang_instance=\"db\"} 1",
            "mofang_pitr_ready{mofang_instance=\"new\"} 0",
            "# HELP mofang_backup_missed_total Scheduled backups",
            "mofang_backup_missed_total{mofang_instance=\"db\"} 3",
            "mofang_backup_last_success_timestamp_seconds{mofang_instance=\"db\"} 1700000000.5",
            "mofang_backup_duration_seconds{mofang_instance=\"db\"} 2.0",
            "mofang_backup_size_bytes{mofang_instance=\"db\"} 1048576",
            "mofang_backup_last_failed{mofang_instance=\"db\"} 0",
            "mofang_backup_verify_last_failed{mofang_instance=\"db\"} 1",
            "mofang_backup_overdue_seconds{mofang_instance=\"db\"} 0",
        ] {
            assert!(t.contains(line), "{line:?} missing from:\n{t}");
        }
        // The instance whose lag is not known yet has no lag sample, and nothing is
        // indented (the hand-written text had the mass hold's lines indented).
        assert!(!t.contains("lag_seconds{mofang_instance=\"new\"}"), "{t}");
        assert!(t.lines().all(|l| !l.starts_with(' ')), "{t}");
        assert!(!t.contains("# EOF"), "{t}");
    }

    #[test]
    fn openmetrics_names_counter_families_without_total_and_ends_with_eof() {
        let om = render(&sample(), Format::OpenMetrics);
        assert!(om.contains("# TYPE mofang_failovers counter\n"), "{om}");
        assert!(
            om.contains("mofang_failovers_total{result=\"completed\"} 2\n"),
            "{om}"
        );
        assert!(om.ends_with("# EOF\n"), "{om}");
    }

    #[test]
    fn to_text_renames_counter_metadata_only() {
        let om = "# HELP a Things.\n# TYPE a counter\na_total 1\n# HELP b_total Odd gauge.\n# TYPE b_total gauge\nb_total 2\n# UNIT c seconds\n# EOF\n";
        assert_eq!(
            to_text(om),
            "# HELP a_total Things.\n# TYPE a_total counter\na_total 1\n# HELP b_total Odd gauge.\n# TYPE b_total gauge\nb_total 2\n"
        );
    }
}

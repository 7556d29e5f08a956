//! Container metrics under cAdvisor's names, types and base labels (`id`, `name`, `image`,
//! `container_label_*`), for every container carrying this node's `mofang.node` label.
//! The container list comes from a cached inventory (refreshed in the background and on
//! container events); a scrape itself only reads cgroup and `/proc` files.

use super::cgroup::{self, Mounts, Paths, Stats};
use super::model::{label, Families, Kind, Labels};
use super::procfs;
use crate::runtime::{Brief, ContainerInfo};
use mofang_common::labels;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// A managed container as the inventory last saw it, with its cgroup directories.
#[derive(Debug, Clone)]
pub struct Tracked {
    /// What the runtime said.
    pub info: ContainerInfo,
    /// cgroup directories (None unless running or paused).
    pub paths: Option<Paths>,
    /// Whether it has its own network namespace (not the host's, which the agent runs in).
    pub own_netns: bool,
    /// Start time, seconds since the epoch.
    pub started: Option<f64>,
}

impl Tracked {
    /// Resolves what a scrape needs from an inspected container.
    pub fn new(info: ContainerInfo, mounts: &Mounts, host_netns: Option<&str>) -> Self {
        let live = info.state.has_processes();
        let pid = info.pid.filter(|_| live);
        let paths = pid.and_then(|p| mounts.paths_of(p));
        let own_netns = match (
            pid.and_then(|p| procfs::net_namespace(&p.to_string())),
            host_netns,
        ) {
            (Some(ns), Some(host)) => ns != host,
            _ => false,
        };
        let started = info.started_at.as_deref().and_then(parse_rfc3339);
        Tracked {
            info,
            paths,
            own_netns,
            started,
        }
    }

    /// `mofang.member` label.
    pub fn member(&self) -> Option<&str> {
        self.info.labels.get(labels::MEMBER).map(String::as_str)
    }
}

/// Seconds since the epoch of an RFC 3339 UTC time as Docker writes it
/// (`2024-05-01T10:20:30.123456789Z`); None for anything else (e.g. the zero time).
pub fn parse_rfc3339(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if y < 1970 || !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let frac: f64 = format!("0.{frac}").parse().unwrap_or(0.0);
    Some((days * 86_400 + hh * 3600 + mm * 60 + ss) as f64 + frac)
}

/// Caches `major:minor` → `/dev/name`.
#[derive(Debug, Default)]
pub struct DeviceNames(Mutex<HashMap<String, String>>);

impl DeviceNames {
    fn get(&self, majmin: &str) -> String {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(majmin.to_owned())
            .or_insert_with(|| cgroup::device_name(majmin))
            .clone()
    }
}

/// The member's volume as the container's filesystem (`container_fs_*`).
#[derive(Debug, Clone)]
pub struct VolumeFs {
    /// Volume directory (the `device` label).
    pub path: PathBuf,
    /// Bytes used (the reconcile loop's last measurement).
    pub used: u64,
    /// Reserved size.
    pub limit: u64,
}

/// cAdvisor reports limits above 2^62 (the kernel's "unlimited") as 0.
fn spec_memory(v: u64) -> f64 {
    if v > (1 << 62) {
        0.0
    } else {
        v as f64
    }
}

/// Everything read for one container during a scrape.
#[derive(Debug)]
pub struct Reading {
    /// Base labels.
    pub labels: Labels,
    /// cgroup figures.
    pub stats: Stats,
    /// Network interfaces (own namespace only).
    pub net: Vec<procfs::NetDev>,
    /// Start time.
    pub started: Option<f64>,
    /// The member's volume.
    pub volume: Option<VolumeFs>,
}

/// cAdvisor's base labels plus the Mofang ones.
pub fn base_labels(t: &Tracked) -> Labels {
    let l = |k: &str| t.info.labels.get(k).cloned().unwrap_or_default();
    vec![
        label(
            "id",
            t.paths
                .as_ref()
                .map(|p| p.id.clone())
                .unwrap_or_else(|| format!("/docker/{}", t.info.id)),
        ),
        label("name", t.info.name.clone()),
        label("image", t.info.image.clone()),
        label("container_label_mofang_instance", l(labels::INSTANCE)),
        label("container_label_mofang_member", l(labels::MEMBER)),
        label("container_label_mofang_node", l(labels::NODE)),
    ]
}

/// Reads one running container's files (blocking I/O: call off the async threads).
pub fn read(t: &Tracked, volume: Option<VolumeFs>) -> Option<Reading> {
    let paths = t.paths.as_ref()?;
    let stats = cgroup::read_stats(paths);
    // A container that stopped since the inventory was taken has no cgroup files any more.
    stats.memory_usage?;
    let net = match (t.own_netns, t.info.pid) {
        (true, Some(pid)) => std::fs::read_to_string(format!("/proc/{pid}/net/dev"))
            .map(|s| procfs::parse_net_dev(&s))
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    Some(Reading {
        labels: base_labels(t),
        stats,
        net,
        started: t.started,
        volume,
    })
}

fn with(base: &Labels, extra: &[(&'static str, String)]) -> Labels {
    let mut l = base.clone();
    l.extend(extra.iter().map(|(k, v)| label(k, v.clone())));
    l
}

/// Writes the cAdvisor families of the readings.
pub fn families(readings: &[Reading], devices: &DeviceNames, out: &mut Families) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as f64)
        .unwrap_or(0.0);
    for r in readings {
        let b = &r.labels;
        let s = &r.stats;
        let mut opt = |name: &'static str, help: &'static str, kind: Kind, v: Option<f64>| {
            if let Some(v) = v {
                out.add(name, help, kind, b.clone(), v);
            }
        };
        opt(
            "container_last_seen",
            "Last time a container was seen by the exporter",
            Kind::Gauge,
            Some(now),
        );
        opt(
            "container_start_time_seconds",
            "Start time of the container since unix epoch in seconds.",
            Kind::Gauge,
            r.started,
        );
        opt(
            "container_cpu_user_seconds",
            "Cumulative user cpu time consumed in seconds.",
            Kind::Counter,
            s.cpu_user,
        );
        opt(
            "container_cpu_system_seconds",
            "Cumulative system cpu time consumed in seconds.",
            Kind::Counter,
            s.cpu_system,
        );
        // The CFS figures only mean something with a quota, so cAdvisor leaves them out without.
        let quota = s.cpu_quota_us.filter(|q| *q > 0);
        if quota.is_some() {
            opt(
                "container_cpu_cfs_periods",
                "Number of elapsed enforcement period intervals.",
                Kind::Counter,
                s.cfs_periods.map(|v| v as f64),
            );
            opt(
                "container_cpu_cfs_throttled_periods",
                "Number of throttled period intervals.",
                Kind::Counter,
                s.cfs_throttled_periods.map(|v| v as f64),
            );
            opt(
                "container_cpu_cfs_throttled_seconds",
                "Total time duration the container has been throttled.",
                Kind::Counter,
                s.cfs_throttled_seconds,
            );
            opt(
                "container_spec_cpu_quota",
                "CPU quota of the container.",
                Kind::Gauge,
                quota.map(|v| v as f64),
            );
        }
        opt(
            "container_spec_cpu_period",
            "CPU period of the container.",
            Kind::Gauge,
            s.cpu_period_us.map(|v| v as f64),
        );
        opt(
            "container_memory_usage_bytes",
            "Current memory usage in bytes, including all memory regardless of when it was accessed",
            Kind::Gauge,
            s.memory_usage.map(|v| v as f64),
        );
        opt(
            "container_memory_working_set_bytes",
            "Current working set in bytes.",
            Kind::Gauge,
            s.working_set().map(|v| v as f64),
        );
        opt(
            "container_memory_rss",
            "Size of RSS in bytes.",
            Kind::Gauge,
            s.memory_rss.map(|v| v as f64),
        );
        opt(
            "container_memory_cache",
            "Number of bytes of page cache memory.",
            Kind::Gauge,
            s.memory_cache.map(|v| v as f64),
        );
        opt(
            "container_memory_swap",
            "Container swap usage in bytes.",
            Kind::Gauge,
            s.memory_swap.map(|v| v as f64),
        );
        opt(
            "container_memory_mapped_file",
            "Size of memory mapped files in bytes.",
            Kind::Gauge,
            s.memory_mapped_file.map(|v| v as f64),
        );
        opt(
            "container_memory_failcnt",
            "Number of memory usage hits limits",
            Kind::Counter,
            s.memory_failcnt.map(|v| v as f64),
        );
        opt(
            "container_spec_memory_limit_bytes",
            "Memory limit for the container.",
            Kind::Gauge,
            s.memory_limit.map(spec_memory).or(Some(0.0)),
        );
        opt(
            "container_oom_events",
            "Count of out of memory events observed for the container",
            Kind::Counter,
            s.oom_kills.map(|v| v as f64),
        );
        opt(
            "container_processes",
            "Number of processes running inside the container.",
            Kind::Gauge,
            s.processes.map(|v| v as f64),
        );
        opt(
            "container_threads",
            "Number of threads running inside the container",
            Kind::Gauge,
            s.threads.map(|v| v as f64),
        );
        opt(
            "container_threads_max",
            "Maximum number of threads allowed inside the container, infinity if value is zero",
            Kind::Gauge,
            s.threads_max.map(|v| v as f64),
        );
        out.add(
            "container_cpu_usage_seconds",
            "Cumulative cpu time consumed in seconds.",
            Kind::Counter,
            with(b, &[("cpu", "total".into())]),
            s.cpu_usage.unwrap_or(0.0),
        );
        for (ty, scope, v) in [
            ("pgfault", "container", s.pgfault),
            ("pgmajfault", "container", s.pgmajfault),
            ("pgfault", "hierarchy", s.pgfault_hierarchy),
            ("pgmajfault", "hierarchy", s.pgmajfault_hierarchy),
        ] {
            if let Some(v) = v {
                out.add(
                    "container_memory_failures",
                    "Cumulative count of memory allocation failures.",
                    Kind::Counter,
                    with(b, &[("failure_type", ty.into()), ("scope", scope.into())]),
                    v as f64,
                );
            }
        }
        for (dev, io) in &s.io {
            let l = with(b, &[("device", devices.get(dev))]);
            out.add(
                "container_fs_reads_bytes",
                "Cumulative count of bytes read",
                Kind::Counter,
                l.clone(),
                io.read_bytes as f64,
            );
            out.add(
                "container_fs_writes_bytes",
                "Cumulative count of bytes written",
                Kind::Counter,
                l,
                io.write_bytes as f64,
            );
        }
        if let Some(v) = &r.volume {
            let l = with(b, &[("device", v.path.to_string_lossy().into_owned())]);
            out.add(
                "container_fs_usage_bytes",
                "Number of bytes that are consumed by the container on this filesystem.",
                Kind::Gauge,
                l.clone(),
                v.used as f64,
            );
            out.add(
                "container_fs_limit_bytes",
                "Number of bytes that can be consumed by the container on this filesystem.",
                Kind::Gauge,
                l,
                v.limit as f64,
            );
        }
        for n in &r.net {
            let l = with(b, &[("interface", n.interface.clone())]);
            for (name, help, v) in [
                (
                    "container_network_receive_bytes",
                    "Cumulative count of bytes received",
                    n.rx_bytes,
                ),
                (
                    "container_network_receive_packets",
                    "Cumulative count of packets received",
                    n.rx_packets,
                ),
                (
                    "container_network_receive_errors",
                    "Cumulative count of errors encountered while receiving",
                    n.rx_errors,
                ),
                (
                    "container_network_receive_packets_dropped",
                    "Cumulative count of packets dropped while receiving",
                    n.rx_dropped,
                ),
                (
                    "container_network_transmit_bytes",
                    "Cumulative count of bytes transmitted",
                    n.tx_bytes,
                ),
                (
                    "container_network_transmit_packets",
                    "Cumulative count of packets transmitted",
                    n.tx_packets,
                ),
                (
                    "container_network_transmit_errors",
                    "Cumulative count of errors encountered while transmitting",
                    n.tx_errors,
                ),
                (
                    "container_network_transmit_packets_dropped",
                    "Cumulative count of packets dropped while transmitting",
                    n.tx_dropped,
                ),
            ] {
                out.add(name, help, Kind::Counter, l.clone(), v as f64);
            }
        }
        for (res, p) in [
            ("cpu", s.psi_cpu),
            ("memory", s.psi_memory),
            ("io", s.psi_io),
        ] {
            let Some(p) = p else { continue };
            let (wait_name, stall_name, what) = match res {
                "cpu" => (
                    "container_pressure_cpu_waiting_seconds",
                    "container_pressure_cpu_stalled_seconds",
                    "CPU",
                ),
                "memory" => (
                    "container_pressure_memory_waiting_seconds",
                    "container_pressure_memory_stalled_seconds",
                    "memory",
                ),
                _ => (
                    "container_pressure_io_waiting_seconds",
                    "container_pressure_io_stalled_seconds",
                    "IO",
                ),
            };
            out.add(
                wait_name,
                format!("Total time duration tasks in the container have waited due to {what} congestion."),
                Kind::Counter,
                b.clone(),
                p.waiting,
            );
            if let Some(st) = p.stalled {
                out.add(
                    stall_name,
                    format!("Total time duration no tasks in the container could make progress due to {what} congestion."),
                    Kind::Counter,
                    b.clone(),
                    st,
                );
            }
        }
    }
}

/// A periodic inventory refresh from a listing: a container listed in the state it had when
/// last inspected is kept as it was (its pid, cgroup paths and limits cannot have changed
/// without an event, which refreshes everything); the others, new or changed, are to be
/// inspected. Gone containers drop out. Returns what is kept and the ids to inspect.
pub fn reuse_or_inspect(old: &[Tracked], listed: Vec<Brief>) -> (Vec<Tracked>, Vec<String>) {
    let mut kept = Vec::with_capacity(listed.len());
    let mut inspect = Vec::new();
    for b in listed {
        match old
            .iter()
            .find(|t| t.info.id == b.id && t.info.state == b.state)
        {
            Some(t) => kept.push(t.clone()),
            None => inspect.push(b.id),
        }
    }
    (kept, inspect)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::runtime::ContainerState;

    pub(crate) fn tracked(id: &str, state: ContainerState) -> Tracked {
        Tracked {
            info: ContainerInfo {
                id: id.into(),
                name: id.into(),
                image: "mofang/mariadb:10.11".into(),
                labels: Default::default(),
                state,
                exit_code: None,
                oom_killed: false,
                pid: Some(42),
                ips: Default::default(),
                published: Default::default(),
                started_at: None,
                cpus: 1.0,
                memory_bytes: 1 << 30,
            },
            paths: None,
            own_netns: true,
            started: None,
        }
    }

    fn brief(id: &str, state: ContainerState) -> Brief {
        Brief {
            id: id.into(),
            labels: Default::default(),
            state,
        }
    }

    #[test]
    fn an_idle_refresh_inspects_only_new_and_changed_containers() {
        use ContainerState::*;
        let old = [
            tracked("a", Running),
            tracked("b", Running),
            tracked("gone", Running),
        ];
        let (kept, inspect) = reuse_or_inspect(
            &old,
            vec![
                brief("a", Running),
                brief("b", Exited),
                brief("new", Created),
            ],
        );
        let kept: Vec<&str> = kept.iter().map(|t| t.info.id.as_str()).collect();
        assert_eq!(kept, ["a"], "unchanged kept, the gone one dropped");
        assert_eq!(
            inspect,
            ["b", "new"],
            "a changed state and a new one inspected"
        );
        // Nothing changed: no inspection at all.
        let (kept, inspect) =
            reuse_or_inspect(&old[..2], vec![brief("a", Running), brief("b", Running)]);
        assert_eq!(kept.len(), 2);
        assert!(inspect.is_empty());
    }

    #[test]
    fn docker_timestamps() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(
            parse_rfc3339("2024-05-01T10:20:30.5Z"),
            Some(1_714_558_830.5)
        );
        assert_eq!(parse_rfc3339("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("garbage"), None);
    }

    #[test]
    fn unlimited_memory_is_zero_like_cadvisor() {
        assert_eq!(spec_memory(9_223_372_036_854_771_712), 0.0);
        assert_eq!(spec_memory(268_435_456), 268_435_456.0);
    }
}

//! Readers of `/proc`: host CPU, memory and load (node_exporter's sources), a process's network
//! counters (`/proc/<pid>/net/dev`, its network namespace's view), and the agent's own process
//! figures. Filesystem sizes come from statvfs(3), like node_exporter.
//!
//! The `procfs` crate parses what it covers: `/proc/stat`, `net/dev`, `mountinfo` and a
//! process's `stat`, `status` and `fd` (decision 150). Two files stay hand-read here:
//! `meminfo`, which node_exporter exports line by line whatever the kernel lists (the crate's
//! `Meminfo` is a fixed struct of the fields it knows), and `loadavg`, which the crate keeps as
//! `f32` (0.52 would be exposed as 0.519999980926).

use procfs::net::InterfaceDeviceStatus;
use procfs::prelude::*;
use procfs::process::MountInfos;
use procfs::{CpuTime, KernelStats};
use std::path::Path;

/// One CPU's times from `/proc/stat`, in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuTimes {
    /// `0`, `1`, ...
    pub cpu: String,
    /// `(mode, seconds)` in node_exporter's mode names.
    pub modes: Vec<(&'static str, f64)>,
}

/// Per-CPU times (`cpuN` lines, numbered in the order the kernel lists them, which is the
/// CPU's number unless a CPU is offline; guest time is already inside user and nice, as
/// node_exporter reports it). Text that does not parse gives none.
pub fn parse_cpu_times(stat: &str) -> Vec<CpuTimes> {
    let Ok(k) = KernelStats::from_read(stat.as_bytes(), procfs::current_system_info()) else {
        return Vec::new();
    };
    k.cpu_time
        .iter()
        .enumerate()
        .map(|(i, t)| CpuTimes {
            cpu: i.to_string(),
            modes: modes(t),
        })
        .collect()
}

/// A CPU's times in seconds, in node_exporter's mode names; modes the kernel does not report
/// are left out.
fn modes(t: &CpuTime) -> Vec<(&'static str, f64)> {
    let secs = |ms: u64| ms as f64 / 1000.0;
    let mut out = vec![
        ("user", secs(t.user_ms())),
        ("nice", secs(t.nice_ms())),
        ("system", secs(t.system_ms())),
        ("idle", secs(t.idle_ms())),
    ];
    let optional = [
        ("iowait", t.iowait_ms()),
        ("irq", t.irq_ms()),
        ("softirq", t.softirq_ms()),
        ("steal", t.steal_ms()),
    ];
    out.extend(
        optional
            .into_iter()
            .filter_map(|(m, v)| Some((m, secs(v?)))),
    );
    out
}

/// `/proc/stat` `btime`: boot time, seconds since the epoch.
pub fn boot_time(stat: &str) -> Option<u64> {
    KernelStats::from_read(stat.as_bytes(), procfs::current_system_info())
        .ok()
        .map(|k| k.btime)
}

/// The host's CPU time so far (`/proc/stat`'s `cpu` line), in seconds: busy (all but idle
/// and iowait) and in all; with the number of CPUs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuSample {
    pub busy_secs: f64,
    pub total_secs: f64,
    pub cpus: u32,
}

/// [`CpuSample`] of `/proc/stat`; none when it does not parse.
pub fn cpu_sample(stat: &str) -> Option<CpuSample> {
    let k = KernelStats::from_read(stat.as_bytes(), procfs::current_system_info()).ok()?;
    let modes = modes(&k.total);
    let total: f64 = modes.iter().map(|(_, s)| s).sum();
    let idle: f64 = modes
        .iter()
        .filter(|(m, _)| matches!(*m, "idle" | "iowait"))
        .map(|(_, s)| s)
        .sum();
    Some(CpuSample {
        busy_secs: total - idle,
        total_secs: total,
        cpus: u32::try_from(k.cpu_time.len()).unwrap_or(u32::MAX),
    })
}

/// Cores busy between two samples: the busy share of the CPU time that passed, times the
/// CPUs. Zero without time passing (or a counter that went back).
pub fn cores_busy(before: &CpuSample, now: &CpuSample) -> f64 {
    let total = now.total_secs - before.total_secs;
    let busy = now.busy_secs - before.busy_secs;
    if total <= 0.0 || busy < 0.0 {
        return 0.0;
    }
    (busy / total).min(1.0) * f64::from(now.cpus)
}

/// Memory in use and installed, from `/proc/meminfo`: MemTotal less MemAvailable, MemTotal.
pub fn memory_used(meminfo: &str) -> (u64, u64) {
    let fields = parse_meminfo(meminfo);
    let get = |k: &str| fields.iter().find(|(f, _)| f == k).map_or(0, |(_, v)| *v);
    let total = get("MemTotal");
    (total.saturating_sub(get("MemAvailable")), total)
}

/// `/proc/meminfo` as `(field, bytes)`.
pub fn parse_meminfo(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let mut w = v.split_whitespace();
            let n: u64 = w.next()?.parse().ok()?;
            let mult = match w.next() {
                Some("kB") => 1024,
                _ => 1,
            };
            // node_exporter writes `(anon)` as `_anon`.
            let k = k.replace('(', "_").replace(')', "");
            Some((k, n * mult))
        })
        .collect()
}

/// `/proc/loadavg`: 1, 5 and 15 minute load.
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut w = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([w.next()??, w.next()??, w.next()??])
}

/// One interface's counters from `/proc/<pid>/net/dev`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetDev {
    /// Interface name.
    pub interface: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// Sent packets dropped.
    pub tx_dropped: u64,
}

/// Parses `net/dev`, leaving out `lo` (cAdvisor ignores it too), sorted by interface.
pub fn parse_net_dev(text: &str) -> Vec<NetDev> {
    let Ok(InterfaceDeviceStatus(devs)) = InterfaceDeviceStatus::from_read(text.as_bytes()) else {
        return Vec::new();
    };
    let mut out: Vec<NetDev> = devs
        .into_values()
        .filter(|d| d.name != "lo")
        .map(|d| NetDev {
            interface: d.name,
            rx_bytes: d.recv_bytes,
            rx_packets: d.recv_packets,
            rx_errors: d.recv_errs,
            rx_dropped: d.recv_drop,
            tx_bytes: d.sent_bytes,
            tx_packets: d.sent_packets,
            tx_errors: d.sent_errs,
            tx_dropped: d.sent_drop,
        })
        .collect();
    out.sort_by(|a, b| a.interface.cmp(&b.interface));
    out
}

/// The network namespace of a process (`net:[4026531992]`; `pid` may be `self`), to tell
/// host-network containers (in the agent's own namespace) from those with their own.
pub fn net_namespace(pid: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// Size and free space of the filesystem holding `path`: `(size, avail)` bytes, computed like
/// node_exporter (`f_blocks * f_bsize`, `f_bavail * f_bsize`).
pub fn fs_size_avail(path: &Path) -> Option<(u64, u64)> {
    let s = rustix::fs::statvfs(path).ok()?;
    Some((
        s.f_blocks.saturating_mul(s.f_bsize),
        s.f_bavail.saturating_mul(s.f_bsize),
    ))
}

/// The mount (`device`, `fstype`, `mountpoint`) holding `path`, from mountinfo: the longest
/// mount point that is a prefix of the canonical path.
pub fn mount_of(mountinfo: &str, path: &Path) -> Option<(String, String, String)> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let MountInfos(mounts) = MountInfos::from_read(mountinfo.as_bytes()).ok()?;
    mounts
        .into_iter()
        .filter(|m| path.starts_with(&m.mount_point))
        // The last of the longest: a later mount over the same point hides the earlier.
        .max_by_key(|m| m.mount_point.as_os_str().len())
        .map(|m| {
            (
                m.mount_source.unwrap_or_default(),
                m.fs_type,
                m.mount_point.to_string_lossy().into_owned(),
            )
        })
}

/// A process's own figures (`process_*` metrics, and the benchmark's RSS/CPU).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    /// User + system CPU, seconds.
    pub cpu_seconds: f64,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// Virtual memory, bytes.
    pub virtual_bytes: u64,
    /// Start time, seconds since the epoch.
    pub start_time: f64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// Threads.
    pub threads: u64,
}

/// Reads `/proc/<pid>/{stat,status,fd}` (`pid` may be `self`).
pub fn process_stats(pid: &str) -> Option<ProcessStats> {
    let p = match pid {
        "self" => procfs::process::Process::myself(),
        n => procfs::process::Process::new(n.parse().ok()?),
    }
    .ok()?;
    let stat = p.stat().ok()?;
    let tps = procfs::ticks_per_second() as f64;
    // VmRSS from status, as before; the stat's page count if status cannot be read.
    let rss_bytes = p
        .status()
        .ok()
        .and_then(|s| s.vmrss)
        .map(|kib| kib * 1024)
        .unwrap_or_else(|| stat.rss.saturating_mul(procfs::page_size()));
    let btime = procfs::boot_time_secs().unwrap_or(0);
    Some(ProcessStats {
        cpu_seconds: (stat.utime + stat.stime) as f64 / tps,
        rss_bytes,
        virtual_bytes: stat.vsize,
        start_time: btime as f64 + stat.starttime as f64 / tps,
        open_fds: p.fd_count().map(|n| n as u64).unwrap_or(0),
        threads: u64::try_from(stat.num_threads).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_times_per_cpu_in_seconds() {
        let stat =
            "cpu  71039 0 18055 43542 597 0 238 231 0 0\ncpu0 34763 0 8518 23313 122 0 16 104 0 0\ncpu1 36275 0 9537 20229 475 0 222 126 0 0\nintr 1\nctxt 12345\nbtime 1700000000\nprocesses 4321\nprocs_running 2\nprocs_blocked 0\n";
        assert_eq!(boot_time(stat), Some(1_700_000_000));
        let t = parse_cpu_times(stat);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].cpu, "0");
        assert_eq!(t[0].modes[0], ("user", 347.63));
        assert_eq!(t[1].modes[3], ("idle", 202.29));
        assert_eq!(t[1].modes.len(), 8);
    }

    #[test]
    fn cores_busy_is_the_busy_share_of_the_time_passed_times_the_cpus() {
        // user nice system idle iowait irq softirq steal (hundredths of a second).
        // The fields the kernel always writes after the CPU lines.
        let rest = "intr 1\nctxt 12345\nbtime 1700000000\nprocesses 4321\nprocs_running 2\nprocs_blocked 0\n";
        let two_cpus = "cpu0 1 0 0 0 0 0 0 0 0 0\ncpu1 1 0 0 0 0 0 0 0 0 0\n";
        let before = cpu_sample(&format!(
            "cpu  1000 0 1000 8000 0 0 0 0 0 0\n{two_cpus}{rest}"
        ))
        .expect("a sample");
        assert_eq!(before.cpus, 2);
        assert!((before.busy_secs - 20.0).abs() < 1e-9, "{before:?}");
        assert!((before.total_secs - 100.0).abs() < 1e-9, "{before:?}");
        // 100 s of CPU time later (50 s on each of two CPUs): 30 busy, 70 idle or iowait.
        let now = cpu_sample(&format!(
            "cpu  3000 0 2000 13000 2000 0 0 0 0 0\n{two_cpus}{rest}"
        ))
        .expect("a sample");
        assert!((cores_busy(&before, &now) - 0.6).abs() < 1e-9);
        assert_eq!(cores_busy(&now, &now), 0.0, "no time passed");
        assert_eq!(cores_busy(&now, &before), 0.0, "a counter that went back");
        assert_eq!(cpu_sample("garbage"), None);
        let (used, total) =
            memory_used("MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 400 kB\n");
        assert_eq!((used, total), (600 * 1024, 1000 * 1024));
        // This host's own: a real sample, the memory in use within what is installed.
        let here = cpu_sample(&std::fs::read_to_string("/proc/stat").unwrap()).expect("here");
        assert!(here.cpus >= 1 && here.busy_secs > 0.0 && here.total_secs > here.busy_secs);
        let (used, total) = memory_used(&std::fs::read_to_string("/proc/meminfo").unwrap());
        assert!(used > 0 && used < total, "{used} of {total}");
    }

    #[test]
    fn this_hosts_proc_stat_gives_every_cpu_and_the_boot_time() {
        let stat = std::fs::read_to_string("/proc/stat").unwrap();
        let cpus = parse_cpu_times(&stat);
        let online = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(cpus.len() >= online, "{} CPUs, {online} online", cpus.len());
        assert!(cpus.iter().all(|c| c.modes.len() == 8), "{cpus:?}");
        assert!(boot_time(&stat).is_some_and(|b| b > 1_500_000_000));
    }

    #[test]
    fn meminfo_loadavg_netdev() {
        let m = parse_meminfo("MemTotal:       24684000 kB\nMemAvailable:   23000000 kB\nActive(anon):  4 kB\nHugePages_Total: 0\n");
        assert_eq!(m[0], ("MemTotal".to_owned(), 24684000 * 1024));
        assert_eq!(m[2].0, "Active_anon");
        assert_eq!(m[3], ("HugePages_Total".to_owned(), 0));
        assert_eq!(
            parse_loadavg("1.99 1.76 1.07 4/134 8184\n"),
            Some([1.99, 1.76, 1.07])
        );
        let n = parse_net_dev(
            "Inter-|   Receive |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:       5       1    0    0    0     0          0         0        5       1    0    0    0     0       0          0\n  eth0:     200       2    3    4    0     0          0         0      300       5    6    7    0     0       0          0\n",
        );
        assert_eq!(n.len(), 1);
        assert_eq!(
            n[0],
            NetDev {
                interface: "eth0".into(),
                rx_bytes: 200,
                rx_packets: 2,
                rx_errors: 3,
                rx_dropped: 4,
                tx_bytes: 300,
                tx_packets: 5,
                tx_errors: 6,
                tx_dropped: 7
            }
        );
    }

    #[test]
    fn own_process_stats_are_plausible() {
        let s = process_stats("self").unwrap();
        assert!(
            s.rss_bytes > 0 && s.threads >= 1 && s.open_fds >= 3,
            "{s:?}"
        );
        assert!(s.start_time > 1.5e9, "{s:?}");
    }

    #[test]
    fn mount_of_picks_longest_prefix() {
        let mi = "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n2 1 8:2 / /data rw - xfs /dev/sdb rw\n";
        let m = mount_of(mi, Path::new("/data/ssd0-does-not-exist")).unwrap();
        assert_eq!(m, ("/dev/sdb".into(), "xfs".into(), "/data".into()));
        assert!(fs_size_avail(Path::new("/")).is_some_and(|(s, a)| s >= a && s > 0));
    }
}

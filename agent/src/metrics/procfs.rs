//! Readers of `/proc`: host CPU, memory and load (node_exporter's sources), a process's network
//! counters (`/proc/<pid>/net/dev`, its network namespace's view), and the agent's own process
//! figures. Filesystem sizes come from statvfs(3), like node_exporter.

use std::path::Path;

/// Clock ticks per second of `/proc/stat` and `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// One CPU's times from `/proc/stat`, in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuTimes {
    /// `0`, `1`, ...
    pub cpu: String,
    /// `(mode, seconds)` in node_exporter's mode names.
    pub modes: Vec<(&'static str, f64)>,
}

/// Per-CPU times (`cpuN` lines; guest time is already inside user and nice, as node_exporter
/// reports it).
pub fn parse_cpu_times(stat: &str) -> Vec<CpuTimes> {
    const MODES: [&str; 8] = [
        "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
    ];
    stat.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let cpu = w.next()?.strip_prefix("cpu")?;
            if cpu.is_empty() {
                return None;
            }
            let vals: Vec<f64> = w.filter_map(|v| v.parse::<f64>().ok()).collect();
            Some(CpuTimes {
                cpu: cpu.to_owned(),
                modes: MODES
                    .iter()
                    .zip(vals.iter())
                    .map(|(m, v)| (*m, v / USER_HZ))
                    .collect(),
            })
        })
        .collect()
}

/// `/proc/stat` `btime`: boot time, seconds since the epoch.
pub fn boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
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

/// Parses `net/dev`, leaving out `lo` (cAdvisor ignores it too).
pub fn parse_net_dev(text: &str) -> Vec<NetDev> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let name = name.trim();
            if name == "lo" {
                return None;
            }
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if v.len() < 12 {
                return None;
            }
            Some(NetDev {
                interface: name.to_owned(),
                rx_bytes: v[0],
                rx_packets: v[1],
                rx_errors: v[2],
                rx_dropped: v[3],
                tx_bytes: v[8],
                tx_packets: v[9],
                tx_errors: v[10],
                tx_dropped: v[11],
            })
        })
        .collect()
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
    let mut best: Option<(usize, (String, String, String))> = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let (Some(point), Some(fstype), Some(source)) = (
            left.split(' ').nth(4),
            right.split(' ').next(),
            right.split(' ').nth(1),
        ) else {
            continue;
        };
        if path.starts_with(point) && best.as_ref().is_none_or(|(len, _)| point.len() >= *len) {
            best = Some((
                point.len(),
                (source.to_owned(), fstype.to_owned(), point.to_owned()),
            ));
        }
    }
    best.map(|(_, m)| m)
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

/// Reads `/proc/<pid>/{stat,status,fd}`.
pub fn process_stats(pid: &str) -> Option<ProcessStats> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command, which may hold spaces: cut at the last ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // proc(5) numbering: state is field 3, so index = field - 3.
    let num =
        |field: usize| -> f64 { f.get(field - 3).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
    let cpu_seconds = (num(14) + num(15)) / USER_HZ;
    let threads = num(20) as u64;
    let start_ticks = num(22);
    let virtual_bytes = num(23) as u64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_bytes = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or(0);
    let btime = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| boot_time(&s))
        .unwrap_or(0);
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Some(ProcessStats {
        cpu_seconds,
        rss_bytes,
        virtual_bytes,
        start_time: btime as f64 + start_ticks / USER_HZ,
        open_fds,
        threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_times_per_cpu_in_seconds() {
        let t = parse_cpu_times(
            "cpu  71039 0 18055 43542 597 0 238 231 0 0\ncpu0 34763 0 8518 23313 122 0 16 104 0 0\ncpu1 36275 0 9537 20229 475 0 222 126 0 0\nintr 1\nbtime 1700000000\n",
        );
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].cpu, "0");
        assert_eq!(t[0].modes[0], ("user", 347.63));
        assert_eq!(t[1].modes[3], ("idle", 202.29));
        assert_eq!(t[1].modes.len(), 8);
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

//! Container resource usage straight from cgroup files, the way cAdvisor and runc read them:
//! cgroup v2 (`cpu.stat`, `cpu.max`, `memory.*`, `io.stat`, `pids.current`, `*.pressure`) and
//! the v1 equivalents (`cpuacct.*`, `cpu.cfs_*`, `memory.*`, `blkio.*`). Hybrid hosts (v1
//! controllers plus a v2 hierarchy at `/sys/fs/cgroup/unified`) get PSI from the v2 side.
//! A cgroup is found from the container's main PID (`/proc/<pid>/cgroup`) and the host's mount
//! table (`/proc/self/mountinfo`), never from the Docker API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where the cgroup hierarchies are mounted on this host.
#[derive(Debug, Clone, Default)]
pub struct Mounts {
    /// The cgroup v2 mount, when there is one (pure v2, or hybrid `unified`).
    v2: Option<Mount>,
    /// cgroup v1 mounts by controller (`memory`, `cpu`, `cpuacct`, `blkio`, `pids`).
    v1: BTreeMap<String, Mount>,
}

#[derive(Debug, Clone)]
struct Mount {
    /// The mount point.
    point: PathBuf,
    /// The cgroup path mounted there (`/` on the host; deeper inside a container).
    root: String,
}

impl Mount {
    /// The directory of cgroup `path` (as `/proc/<pid>/cgroup` gives it) in this mount.
    fn dir(&self, path: &str) -> PathBuf {
        let rel = if self.root == "/" {
            path
        } else {
            path.strip_prefix(self.root.as_str()).unwrap_or(path)
        };
        self.point.join(rel.trim_start_matches('/'))
    }
}

impl Mounts {
    /// Reads the host's cgroup mounts from `/proc/self/mountinfo`.
    pub fn detect() -> Self {
        std::fs::read_to_string("/proc/self/mountinfo")
            .map(|t| Self::parse(&t))
            .unwrap_or_default()
    }

    /// Parses mountinfo text (proc(5): `id parent maj:min root point opts [tags] - fstype src superopts`).
    pub fn parse(mountinfo: &str) -> Self {
        let mut m = Mounts::default();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            let (Some(root), Some(point), Some(fstype)) = (l.get(3), l.get(4), r.first()) else {
                continue;
            };
            let mount = Mount {
                point: PathBuf::from(unescape(point)),
                root: unescape(root),
            };
            match *fstype {
                "cgroup2" if m.v2.is_none() => m.v2 = Some(mount),
                "cgroup" => {
                    for opt in r.get(2).map(|o| o.split(',')).into_iter().flatten() {
                        if matches!(opt, "memory" | "cpu" | "cpuacct" | "blkio" | "pids") {
                            m.v1.entry(opt.to_owned()).or_insert_with(|| mount.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        m
    }

    /// Whether this host runs cgroup v1 controllers (v1 or hybrid).
    pub fn is_v1(&self) -> bool {
        self.v1.contains_key("memory")
    }

    /// The cgroup directories of process `pid`, from `/proc/<pid>/cgroup`.
    pub fn paths_of(&self, pid: u32) -> Option<Paths> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        Some(self.paths_from(&text))
    }

    /// The cgroup directories named by `/proc/<pid>/cgroup` text.
    pub fn paths_from(&self, proc_cgroup: &str) -> Paths {
        let mut p = Paths::default();
        for line in proc_cgroup.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if ctrls.is_empty() {
                p.id = path.to_owned();
                p.v2 = self.v2.as_ref().map(|m| m.dir(path));
                continue;
            }
            for c in ctrls.split(',') {
                if let Some(m) = self.v1.get(c) {
                    p.v1.insert(c.to_owned(), m.dir(path));
                    if c == "memory" {
                        // cAdvisor's `id` label is the cgroup path; on v1 the memory one.
                        p.id = path.to_owned();
                    }
                }
            }
        }
        p
    }

    /// The directories of cgroup `path` named outright rather than read from a process: a
    /// runtime spec's `cgroupsPath` under runc's cgroupfs driver (`/<namespace>/<id>` on
    /// containerd). A task that has exited has no process to ask, and its cgroup stays
    /// until the task is deleted.
    pub fn paths_named(&self, path: &str) -> Paths {
        Paths {
            id: path.to_owned(),
            v2: self.v2.as_ref().map(|m| m.dir(path)),
            v1: self
                .v1
                .iter()
                .map(|(c, m)| (c.clone(), m.dir(path)))
                .collect(),
        }
    }

    /// The file writes that give cgroup `path` the CPU weight `weight` (cgroup v2's scale,
    /// 1 ..= 10000), in order. cgroup v1 (the `cpu` controller mounted): its `cpu.shares`,
    /// `weight × 1024 / 100` as systemd maps `CPUWeight=`. cgroup v2: `+cpu` in the
    /// `cgroup.subtree_control` of every ancestor below the mount (the controller must be
    /// enabled above a cgroup for its `cpu.weight` to exist), then its `cpu.weight`. Empty when
    /// the host mounts no cpu controller. Pure: [`apply_writes`] does them.
    pub fn cpu_weight_writes(&self, path: &str, weight: u32) -> Vec<(PathBuf, String)> {
        if let Some(m) = self.v1.get("cpu") {
            let shares = (u64::from(weight) * 1024 / 100).clamp(2, 262_144);
            return vec![(m.dir(path).join("cpu.shares"), shares.to_string())];
        }
        let Some(m) = &self.v2 else {
            return Vec::new();
        };
        let dir = m.dir(path);
        let mut writes: Vec<(PathBuf, String)> = dir
            .ancestors()
            .skip(1)
            .take_while(|a| a.starts_with(&m.point))
            .map(|a| (a.join("cgroup.subtree_control"), "+cpu".to_owned()))
            .collect();
        writes.reverse();
        writes.push((dir.join("cpu.weight"), weight.to_string()));
        writes
    }
}

/// Does `writes` in order, making each file's directory first (a cgroup directory made by
/// `mkdir` is a new cgroup). The first failure stops, naming the file.
pub fn apply_writes(writes: &[(PathBuf, String)]) -> std::io::Result<()> {
    for (file, value) in writes {
        let named =
            |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", file.display()));
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(named)?;
        }
        std::fs::write(file, value).map_err(named)?;
    }
    Ok(())
}

/// Octal escapes (`\040` for a space) in mountinfo fields.
fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_owned();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One container's cgroup directories.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Paths {
    /// The cgroup path (cAdvisor's `id` label), e.g. `/docker/<id>`.
    pub id: String,
    /// Its v2 directory (pure v2 host; on a hybrid host, where PSI lives).
    pub v2: Option<PathBuf>,
    /// Its v1 directories by controller.
    pub v1: BTreeMap<String, PathBuf>,
}

/// Pressure stall totals of one resource, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pressure {
    /// `some`: time at least one task waited.
    pub waiting: f64,
    /// `full`: time all tasks stalled (absent for CPU on older kernels).
    pub stalled: Option<f64>,
}

/// Block I/O of one device.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DeviceIo {
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
}

/// Everything read from one container's cgroup. `None` means the file was not there.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// CPU time, seconds.
    pub cpu_usage: Option<f64>,
    /// User CPU time, seconds.
    pub cpu_user: Option<f64>,
    /// System CPU time, seconds.
    pub cpu_system: Option<f64>,
    /// CFS enforcement periods elapsed.
    pub cfs_periods: Option<u64>,
    /// CFS periods throttled.
    pub cfs_throttled_periods: Option<u64>,
    /// Time throttled, seconds.
    pub cfs_throttled_seconds: Option<f64>,
    /// CFS quota in µs (None: unlimited).
    pub cpu_quota_us: Option<u64>,
    /// CFS period in µs.
    pub cpu_period_us: Option<u64>,
    /// Memory usage, bytes (v1 `usage_in_bytes`, v2 `memory.current`).
    pub memory_usage: Option<u64>,
    /// Inactive file pages (subtracted for the working set).
    pub memory_inactive_file: Option<u64>,
    /// Anonymous memory (RSS).
    pub memory_rss: Option<u64>,
    /// Page cache.
    pub memory_cache: Option<u64>,
    /// Swap in use.
    pub memory_swap: Option<u64>,
    /// Memory-mapped files.
    pub memory_mapped_file: Option<u64>,
    /// Page faults (container scope).
    pub pgfault: Option<u64>,
    /// Major page faults (container scope).
    pub pgmajfault: Option<u64>,
    /// Page faults including descendants.
    pub pgfault_hierarchy: Option<u64>,
    /// Major page faults including descendants.
    pub pgmajfault_hierarchy: Option<u64>,
    /// Times usage hit the limit (v1 failcnt, v2 `memory.events` max).
    pub memory_failcnt: Option<u64>,
    /// Memory limit, bytes (None: unlimited).
    pub memory_limit: Option<u64>,
    /// OOM kills in this cgroup.
    pub oom_kills: Option<u64>,
    /// Block I/O by `major:minor`.
    pub io: BTreeMap<String, DeviceIo>,
    /// Tasks (threads) in the cgroup.
    pub threads: Option<u64>,
    /// Thread limit.
    pub threads_max: Option<u64>,
    /// Processes in the cgroup (`cgroup.procs`).
    pub processes: Option<u64>,
    /// CPU pressure.
    pub psi_cpu: Option<Pressure>,
    /// Memory pressure.
    pub psi_memory: Option<Pressure>,
    /// I/O pressure.
    pub psi_io: Option<Pressure>,
}

impl Stats {
    /// Working set as cAdvisor computes it: usage minus inactive file pages, never below 0.
    pub fn working_set(&self) -> Option<u64> {
        let usage = self.memory_usage?;
        Some(usage.saturating_sub(self.memory_inactive_file.unwrap_or(0)))
    }
}

fn read(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file)).ok()
}

fn read_u64(dir: &Path, file: &str) -> Option<u64> {
    read(dir, file)?.trim().parse().ok()
}

/// `key value` lines (`cpu.stat`, `memory.stat`, `memory.events`, ...).
fn flat_keyed(text: &str) -> BTreeMap<&str, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k, v.trim().parse().ok()?))
        })
        .collect()
}

/// A PSI file: `some avg10=.. avg60=.. avg300=.. total=<µs>` and optionally a `full` line.
pub fn parse_pressure(text: &str) -> Option<Pressure> {
    let total = |prefix: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.starts_with(prefix))?;
        let us: u64 = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("total="))?
            .parse()
            .ok()?;
        Some(us as f64 / 1e6)
    };
    Some(Pressure {
        waiting: total("some ")?,
        stalled: total("full "),
    })
}

fn pressure(dir: Option<&Path>, file: &str) -> Option<Pressure> {
    parse_pressure(&read(dir?, file)?)
}

fn count_lines(dir: &Path, file: &str) -> Option<u64> {
    Some(
        read(dir, file)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count() as u64,
    )
}

/// The `oom_kill` counter of v1 `memory.oom_control` or v2 `memory.events` text (both
/// flat-keyed; v1 has it since Linux 4.13).
pub fn parse_oom_kills(text: &str) -> Option<u64> {
    flat_keyed(text).get("oom_kill").copied()
}

/// OOM kills counted by a cgroup since it was made, read from that one file (v1
/// `memory.oom_control`, else v2 `memory.events`): None when the cgroup or the counter is
/// not there.
pub fn oom_kills(p: &Paths) -> Option<u64> {
    if let Some(dir) = p.v1.get("memory") {
        read(dir, "memory.oom_control").and_then(|t| parse_oom_kills(&t))
    } else {
        read(p.v2.as_deref()?, "memory.events").and_then(|t| parse_oom_kills(&t))
    }
}

/// Reads one container's cgroup files.
pub fn read_stats(p: &Paths) -> Stats {
    if p.v1.contains_key("memory") {
        read_v1(p)
    } else if let Some(dir) = &p.v2 {
        read_v2(dir)
    } else {
        Stats::default()
    }
}

fn read_v2(dir: &Path) -> Stats {
    let mut s = Stats::default();
    if let Some(t) = read(dir, "cpu.stat") {
        let kv = flat_keyed(&t);
        let sec = |k: &str| kv.get(k).map(|us| *us as f64 / 1e6);
        s.cpu_usage = sec("usage_usec");
        s.cpu_user = sec("user_usec");
        s.cpu_system = sec("system_usec");
        s.cfs_periods = kv.get("nr_periods").copied();
        s.cfs_throttled_periods = kv.get("nr_throttled").copied();
        s.cfs_throttled_seconds = sec("throttled_usec");
    }
    if let Some(t) = read(dir, "cpu.max") {
        let mut w = t.split_whitespace();
        s.cpu_quota_us = w.next().and_then(|q| q.parse().ok());
        s.cpu_period_us = w.next().and_then(|p| p.parse().ok());
    }
    s.memory_usage = read_u64(dir, "memory.current");
    if let Some(t) = read(dir, "memory.stat") {
        let kv = flat_keyed(&t);
        s.memory_inactive_file = kv.get("inactive_file").copied();
        s.memory_rss = kv.get("anon").copied();
        s.memory_cache = kv.get("file").copied();
        s.memory_mapped_file = kv.get("file_mapped").copied();
        // v2 has one scope: the cgroup counts its descendants.
        s.pgfault = kv.get("pgfault").copied();
        s.pgmajfault = kv.get("pgmajfault").copied();
        s.pgfault_hierarchy = s.pgfault;
        s.pgmajfault_hierarchy = s.pgmajfault;
    }
    s.memory_swap = read_u64(dir, "memory.swap.current");
    s.memory_limit = read_u64(dir, "memory.max");
    if let Some(t) = read(dir, "memory.events") {
        let kv = flat_keyed(&t);
        s.oom_kills = parse_oom_kills(&t);
        s.memory_failcnt = kv.get("max").copied();
    }
    if let Some(t) = read(dir, "io.stat") {
        s.io = parse_io_stat(&t);
    }
    s.threads = read_u64(dir, "pids.current");
    s.threads_max = read_u64(dir, "pids.max");
    s.processes = count_lines(dir, "cgroup.procs");
    s.psi_cpu = pressure(Some(dir), "cpu.pressure");
    s.psi_memory = pressure(Some(dir), "memory.pressure");
    s.psi_io = pressure(Some(dir), "io.pressure");
    s
}

/// v2 `io.stat`: `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..`.
pub fn parse_io_stat(text: &str) -> BTreeMap<String, DeviceIo> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let Some(dev) = w.next() else { continue };
        let mut io = DeviceIo::default();
        for kv in w {
            match kv.split_once('=') {
                Some(("rbytes", v)) => io.read_bytes = v.parse().unwrap_or(0),
                Some(("wbytes", v)) => io.write_bytes = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        out.insert(dev.to_owned(), io);
    }
    out
}

/// v1 `blkio.*io_service_bytes*`: `MAJ:MIN Read N` ... and a final `Total N`.
pub fn parse_blkio(text: &str) -> BTreeMap<String, DeviceIo> {
    let mut out: BTreeMap<String, DeviceIo> = BTreeMap::new();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let [dev, op, v] = w[..] else { continue };
        let Ok(v) = v.parse::<u64>() else { continue };
        let e = out.entry(dev.to_owned()).or_default();
        match op {
            "Read" => e.read_bytes = v,
            "Write" => e.write_bytes = v,
            _ => {}
        }
    }
    out
}

fn read_v1(p: &Paths) -> Stats {
    let mut s = Stats::default();
    if let Some(dir) = p.v1.get("cpuacct") {
        s.cpu_usage = read_u64(dir, "cpuacct.usage").map(|ns| ns as f64 / 1e9);
        // Nanoseconds where the kernel has them; cpuacct.stat is in USER_HZ (100/s).
        let user = read_u64(dir, "cpuacct.usage_user");
        let sys = read_u64(dir, "cpuacct.usage_sys");
        if let (Some(u), Some(y)) = (user, sys) {
            s.cpu_user = Some(u as f64 / 1e9);
            s.cpu_system = Some(y as f64 / 1e9);
        } else if let Some(t) = read(dir, "cpuacct.stat") {
            let kv = flat_keyed(&t);
            s.cpu_user = kv.get("user").map(|t| *t as f64 / 100.0);
            s.cpu_system = kv.get("system").map(|t| *t as f64 / 100.0);
        }
    }
    if let Some(dir) = p.v1.get("cpu") {
        if let Some(t) = read(dir, "cpu.stat") {
            let kv = flat_keyed(&t);
            s.cfs_periods = kv.get("nr_periods").copied();
            s.cfs_throttled_periods = kv.get("nr_throttled").copied();
            s.cfs_throttled_seconds = kv.get("throttled_time").map(|ns| *ns as f64 / 1e9);
        }
        // -1 means no quota.
        s.cpu_quota_us = read(dir, "cpu.cfs_quota_us").and_then(|q| q.trim().parse().ok());
        s.cpu_period_us = read_u64(dir, "cpu.cfs_period_us");
    }
    if let Some(dir) = p.v1.get("memory") {
        s.memory_usage = read_u64(dir, "memory.usage_in_bytes");
        if let Some(t) = read(dir, "memory.stat") {
            let kv = flat_keyed(&t);
            s.memory_inactive_file = kv.get("total_inactive_file").copied();
            s.memory_rss = kv.get("total_rss").copied();
            s.memory_cache = kv.get("total_cache").copied();
            s.memory_mapped_file = kv.get("total_mapped_file").copied();
            s.pgfault = kv.get("pgfault").copied();
            s.pgmajfault = kv.get("pgmajfault").copied();
            s.pgfault_hierarchy = kv.get("total_pgfault").copied();
            s.pgmajfault_hierarchy = kv.get("total_pgmajfault").copied();
        }
        // Swap is memory+swap minus memory (as runc computes it), when swap accounting is on.
        if let (Some(memsw), Some(usage)) =
            (read_u64(dir, "memory.memsw.usage_in_bytes"), s.memory_usage)
        {
            s.memory_swap = Some(memsw.saturating_sub(usage));
        }
        s.memory_failcnt = read_u64(dir, "memory.failcnt");
        s.memory_limit = read_u64(dir, "memory.limit_in_bytes");
        s.oom_kills = read(dir, "memory.oom_control").and_then(|t| parse_oom_kills(&t));
        s.processes = count_lines(dir, "cgroup.procs");
    }
    if let Some(dir) = p.v1.get("blkio") {
        // runc's order: the CFQ/BFQ file when the scheduler fills it, else the throttle one.
        for f in [
            "blkio.io_service_bytes_recursive",
            "blkio.throttle.io_service_bytes_recursive",
        ] {
            if let Some(t) = read(dir, f) {
                let io = parse_blkio(&t);
                if !io.is_empty() {
                    s.io = io;
                    break;
                }
            }
        }
    }
    if let Some(dir) = p.v1.get("pids") {
        s.threads = read_u64(dir, "pids.current");
        s.threads_max = read_u64(dir, "pids.max");
    }
    // Hybrid hosts keep PSI on the v2 hierarchy.
    s.psi_cpu = pressure(p.v2.as_deref(), "cpu.pressure");
    s.psi_memory = pressure(p.v2.as_deref(), "memory.pressure");
    s.psi_io = pressure(p.v2.as_deref(), "io.pressure");
    s
}

/// Block device names by `major:minor`, from `/sys/dev/block/<maj:min>/uevent` (`DEVNAME=`),
/// so I/O is labelled `/dev/sda` like cAdvisor does.
pub fn device_name(majmin: &str) -> String {
    std::fs::read_to_string(format!("/sys/dev/block/{majmin}/uevent"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("DEVNAME=").map(|d| format!("/dev/{d}")))
        })
        .unwrap_or_else(|| majmin.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn a_cpu_weight_is_shares_on_v1_and_weight_under_enabled_ancestors_on_v2() {
        let hybrid = Mounts::parse(HYBRID);
        assert_eq!(
            hybrid.cpu_weight_writes("/mofang", 1000),
            vec![(
                PathBuf::from("/sys/fs/cgroup/cpu/mofang/cpu.shares"),
                "10240".to_owned()
            )],
            "v1 controllers take precedence over a hybrid's empty unified tree"
        );
        assert_eq!(hybrid.cpu_weight_writes("/m", 1)[0].1, "10", "1024 / 100");
        assert_eq!(hybrid.cpu_weight_writes("/m", 10_000)[0].1, "102400");
        let v2 = Mounts::parse(
            "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        assert_eq!(
            v2.cpu_weight_writes("/db/members", 500),
            vec![
                (
                    PathBuf::from("/sys/fs/cgroup/cgroup.subtree_control"),
                    "+cpu".to_owned()
                ),
                (
                    PathBuf::from("/sys/fs/cgroup/db/cgroup.subtree_control"),
                    "+cpu".to_owned()
                ),
                (
                    PathBuf::from("/sys/fs/cgroup/db/members/cpu.weight"),
                    "500".to_owned()
                ),
            ]
        );
        assert!(Mounts::default().cpu_weight_writes("/m", 100).is_empty());
    }

    #[test]
    fn writes_make_the_directories_and_name_the_failing_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a/b/cpu.shares");
        apply_writes(&[(file.clone(), "2048".into())]).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "2048");
        let blocked = dir.path().join("a/b/cpu.shares/x");
        let e = apply_writes(&[(blocked.clone(), "1".into())]).unwrap_err();
        assert!(
            e.to_string().contains(&blocked.display().to_string()),
            "{e}"
        );
    }

    const HYBRID: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
        32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
        33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n\
        35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
        38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio\n\
        39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n\
        41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";

    #[test]
    fn hybrid_host_paths_from_proc_cgroup() {
        let m = Mounts::parse(HYBRID);
        assert!(m.is_v1());
        let p = m.paths_from(
            "8:pids:/docker/abc\n4:memory:/docker/abc\n2:cpuacct:/docker/abc\n1:cpu:/docker/abc\n7:blkio:/docker/abc\n0::/docker/abc\n",
        );
        assert_eq!(p.id, "/docker/abc");
        assert_eq!(
            p.v1["memory"],
            PathBuf::from("/sys/fs/cgroup/memory/docker/abc")
        );
        assert_eq!(
            p.v2,
            Some(PathBuf::from("/sys/fs/cgroup/unified/docker/abc"))
        );
    }

    #[test]
    fn v2_host_with_a_mount_root() {
        let m = Mounts::parse(
            "30 23 0:26 /system.slice /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        assert!(!m.is_v1());
        let p = m.paths_from("0::/system.slice/docker-abc.scope\n");
        assert_eq!(p.id, "/system.slice/docker-abc.scope");
        assert_eq!(p.v2, Some(PathBuf::from("/sys/fs/cgroup/docker-abc.scope")));
    }

    #[test]
    fn psi_io_and_blkio_parse() {
        let p = parse_pressure(
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=16997\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=14246\n",
        )
        .unwrap();
        assert_eq!(p.waiting, 0.016997);
        assert_eq!(p.stalled, Some(0.014246));
        let io = parse_io_stat("8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n");
        assert_eq!(
            io["8:0"],
            DeviceIo {
                read_bytes: 4096,
                write_bytes: 8192
            }
        );
        let b = parse_blkio("8:0 Read 10\n8:0 Write 20\n8:0 Sync 5\n8:0 Total 30\nTotal 30\n");
        assert_eq!(
            b["8:0"],
            DeviceIo {
                read_bytes: 10,
                write_bytes: 20
            }
        );
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn working_set_is_usage_minus_inactive_file() {
        let s = Stats {
            memory_usage: Some(100),
            memory_inactive_file: Some(30),
            ..Default::default()
        };
        assert_eq!(s.working_set(), Some(70));
        let s = Stats {
            memory_usage: Some(10),
            memory_inactive_file: Some(30),
            ..Default::default()
        };
        assert_eq!(s.working_set(), Some(0));
    }

    #[test]
    fn a_cgroup_named_by_path_and_its_oom_kills() {
        let p = Mounts::parse(HYBRID).paths_named("/mofang/mofang-db-0");
        assert_eq!(p.id, "/mofang/mofang-db-0");
        assert_eq!(
            p.v1["memory"],
            PathBuf::from("/sys/fs/cgroup/memory/mofang/mofang-db-0")
        );
        assert_eq!(
            p.v1["pids"],
            PathBuf::from("/sys/fs/cgroup/pids/mofang/mofang-db-0")
        );
        let v2 = Mounts::parse("30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
            .paths_named("/mofang/x");
        assert_eq!(v2.v2, Some(PathBuf::from("/sys/fs/cgroup/mofang/x")));
        assert!(v2.v1.is_empty());
        // v1 `memory.oom_control` and v2 `memory.events` as the kernel writes them.
        assert_eq!(
            parse_oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            Some(2)
        );
        assert_eq!(
            parse_oom_kills("low 0\nhigh 0\nmax 31\noom 1\noom_kill 1\noom_group_kill 0\n"),
            Some(1)
        );
        // A kernel before 4.13 has no counter in v1's file.
        assert_eq!(parse_oom_kills("oom_kill_disable 0\nunder_oom 0\n"), None);
    }

    #[test]
    fn mountinfo_octal_escapes() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}

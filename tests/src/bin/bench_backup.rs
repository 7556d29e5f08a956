//! Backup benchmark (`make bench-backup`, issue 16): in one run, on one generated dataset,
//! - **backup throughput**: a Mofang backup of the replica (API, the agent's stream: zstd,
//!   multipart upload to SeaweedFS) next to the same by hand: `docker exec <the replica's
//!   container> mariadb-backup --backup --stream=mbstream | zstd -3 -T<n>`, uploaded by this
//!   process to the same bucket in 8 MiB parts, 4 in flight (the agent's settings), with no
//!   other work running for either;
//! - **restore time**: `POST /v1/instances` with `restore` to `ready` (the scheduler's check of
//!   the object, placement, the agent's download, unpack, prepare, start), next to the same by
//!   hand: the object downloaded, `zstd -d`, then in a one-shot container of the same image
//!   `mbstream -x`, `mariadb-backup --prepare` and a server started until it answers;
//! - **the primary's write latency** (single-row autocommit inserts, one every 20 ms, over
//!   semi-synchronous replication) for `--write-secs` without a backup, and while a backup of
//!   the replica runs: p50 and p99 side by side.
//!
//! Prints figures; asserts no timing. Usage: bench-backup [--mib N] [--write-secs S]
//! [--backup-nice N] [--throttle MIB_S] [--ionice] [--zstd-threads N] [--replicas 1|2]
//! [--rounds N] [--latency-only] [--split-cores] [--replica-disk DIR] [--replicas-on-containerd]
//! [--member-cpu-weight N] [--member-memory-mib N] (default 2048 MiB of rows, half random
//! bytes and half text; 30 s; the agents' defaults: `backup_nice` 19, no throttle, no
//! ionice, zstd on the cores (at most 4); one replica; one round). The knobs set the agents'
//! `backup_*` settings;
//! `--replicas 2` makes the instance a primary and two replicas (three agents), so the
//! semi-sync acknowledgement can come from the replica not being backed up. With `--rounds N`
//! the latency figures pool N rounds of (writes with no backup for as long as the previous
//! backup ran, then writes during a backup): both sides see the same drift of a shared
//! machine's load. `--latency-only` skips the by-hand backup and both restores. The
//! primary's semi-sync status counters are read around each window: how much of a commit
//! waited for a replica's acknowledgement. `--split-cores` puts the two sides on cores of
//! their own, as if on two hosts sharing one disk: CPU 0 for the primary's container and
//! agent, the scheduler and this process (the application); CPU 1 for the replicas'
//! containers and agents, SeaweedFS and the container engine (the backup's reading,
//! compressing, carrying and storing; the engine is given every core back at the end), and
//! SeaweedFS's data on /dev/shm (the store's disk is another host's; the replica's volume
//! stays on the primary's disk). `--replica-disk DIR` puts the replicas' volumes under DIR
//! (another disk, or a tmpfs: its pages count against the container's memory limit, so keep
//! `--mib` well under the member's memory, 1 GiB unless `--member-memory-mib` says more) and
//! the primary's on this machine's disk (a switchover makes the first agent's member the
//! primary). `--replicas-on-containerd` runs
//! the replicas' agents on the tests' standalone containerd. `--member-cpu-weight N` sets every
//! agent's `member_cpu_weight` (the members' parent cgroup's weight against the host's other
//! work; the Docker agents' members under `member_cgroup_parent = "/mofang-bench"`, the
//! containerd agents' under their namespace's cgroup; the agents write the weight).
//! `--member-memory-mib N` gives every member N MiB (the agents room for three such members).

use anyhow::{bail, ensure, Context, Result};
use mofang_common::repo::Secret;
use mofang_common::EngineKind;
use mofang_scheduler::backup::{Backup, BackupState};
use mofang_scheduler::client::{Client, NewBackup, NewBackupRepo};
use mofang_scheduler::cluster::InstanceView;
use mofang_scheduler::model::{InstanceSpec, Resources, RestoreRequest};
use mofang_tests::cluster::Timings;
use mofang_tests::s3::SeaweedFs;
use mofang_tests::scenario::{
    cgroup_dir, container_of, docker_cli, loadavg, mysql, percentile, Env,
};
use mysql_async::prelude::Queryable;
use object_store::{ObjectStore, WriteMultipart};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: f64 = 1024.0 * 1024.0;
/// Rows inserted per statement while loading (32 MiB of rows).
const BATCH: u64 = 32 * 1024;
/// The hand-run upload: the agent's part size and parts in flight.
const PART: usize = 8 << 20;
const IN_FLIGHT: usize = 4;

/// The member's `mariadb-backup`, as the agent runs it.
const MARIADB_BACKUP: &str =
    "mariadb-backup --defaults-extra-file=/etc/mofang/client.cnf --backup \
    --stream=mbstream --target-dir=/tmp --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock";

fn zstd_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().min(4))
        .unwrap_or(1)
}

fn member(inst: &InstanceView, role: &str) -> Result<(String, String)> {
    let m = inst
        .members
        .iter()
        .find(|m| m.role == role)
        .with_context(|| format!("{role} of {inst:?}"))?;
    Ok((m.id.clone(), m.address.clone()))
}

/// One insert every 20 ms until `stop`: each one's send time and latency.
fn writer(
    addr: String,
    pass: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<Vec<(Instant, Duration)>>> {
    tokio::spawn(async move {
        let mut c = mysql(&addr, &pass).await?;
        let mut out = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.load(Ordering::SeqCst) {
            tick.tick().await;
            let t = Instant::now();
            c.query_drop("INSERT INTO w (v) VALUES (REPEAT('x', 100))")
                .await?;
            out.push((t, t.elapsed()));
        }
        Ok(out)
    })
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn p50_p99(mut v: Vec<Duration>) -> (Duration, Duration, usize) {
    v.sort();
    (percentile(&v, 0.50), percentile(&v, 0.99), v.len())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// How often a backup's state is read while waiting for it (and in the quiet windows).
const POLL: Duration = Duration::from_millis(100);

async fn wait_backup(c: &Client, id: &str) -> Result<(Backup, Option<Instant>, Instant)> {
    let mut running = None;
    loop {
        let b = c.backup(id).await.with_context(|| format!("backup {id}"))?;
        if b.state == BackupState::Running && running.is_none() {
            running = Some(Instant::now());
        }
        if b.state == BackupState::Succeeded {
            return Ok((b, running, Instant::now()));
        }
        ensure!(b.state != BackupState::Failed, "backup failed: {b:?}");
        tokio::time::sleep(POLL).await;
    }
}

async fn mofang_backup(c: &Client, repo: &str) -> Result<(Backup, Option<Instant>, Instant)> {
    let req = NewBackup {
        repo: repo.to_owned(),
        ..NewBackup::default()
    };
    let b = c
        .create_backup("bb", &req)
        .await
        .with_context(|| format!("a backup of bb into {repo}"))?;
    wait_backup(c, &b.id).await
}

/// The same backup by hand: the member's mariadb-backup piped into zstd, uploaded by this
/// process. Returns (raw bytes, stored bytes, seconds).
async fn hand_backup(s3: &SeaweedFs, replica: &str) -> Result<(u64, u64, f64)> {
    let dir = tempfile::tempdir()?;
    let raw_file = dir.path().join("raw");
    let log = dir.path().join("log");
    let script = format!(
        "set -o pipefail; docker exec {c} {MARIADB_BACKUP} 2>{log} | tee >(wc -c > {raw}) | zstd -3 -T{t} -q -c",
        c = container_of(replica),
        log = log.display(),
        raw = raw_file.display(),
        t = zstd_threads()
    );
    let store = s3.object_store()?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut out = child.stdout.take().context("stdout")?;
    let upload = store
        .put_multipart(&"bench/hand/full.mbstream.zst".into())
        .await?;
    let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
    let mut buf = vec![0u8; 1 << 20];
    let mut stored = 0u64;
    loop {
        let n = out.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        stored += n as u64;
        w.wait_for_capacity(IN_FLIGHT).await?;
        w.write(&buf[..n]);
    }
    let status = child.wait().await?;
    ensure!(status.success(), "the hand-run pipeline: {status}");
    w.finish().await?;
    let took = started.elapsed().as_secs_f64();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    ensure!(
        log.contains("completed OK"),
        "mariadb-backup by hand: {}",
        log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
    );
    let mut raw = 0;
    for _ in 0..50 {
        raw = std::fs::read_to_string(&raw_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if raw > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((raw, stored, took))
}

/// A restore by hand of the object at `path`: downloaded, `zstd -d`, then unpacked, prepared
/// and started in a one-shot container of the image (as uid 999, no network). Seconds.
async fn hand_restore(s3: &SeaweedFs, path: &str) -> Result<f64> {
    let dir = tempfile::tempdir_in("/var/tmp")?;
    std::os::unix::fs::chown(dir.path(), Some(999), Some(999))?;
    let scripts = tempfile::tempdir()?;
    std::fs::write(
        scripts.path().join("restore.sh"),
        "set -e\ncd /var/lib/mysql\nmbstream -x\n\
         mariadb-backup --prepare --target-dir=/var/lib/mysql >/tmp/p.log 2>&1 || { tail -5 /tmp/p.log; exit 1; }\n\
         mariadbd --no-defaults --datadir=/var/lib/mysql --skip-networking --socket=/tmp/s.sock \
           --skip-grant-tables --log-error=/tmp/e.log &\n\
         for i in $(seq 1 1200); do mariadb -S /tmp/s.sock -e 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.1; done\n\
         mariadb -S /tmp/s.sock -N -e 'SELECT COUNT(*) FROM app.data'\n\
         mariadb -S /tmp/s.sock -e SHUTDOWN\nwait\n",
    )?;
    let script = format!(
        "set -o pipefail; zstd -d -q -c | docker run -i --rm --network none --user 999:999 \
         --entrypoint bash -v {}:/var/lib/mysql -v {}:/bench:ro mofang/mariadb:10.11 /bench/restore.sh",
        dir.path().display(),
        scripts.path().display()
    );
    let store = s3.object_store()?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut body = store.get(&path.into()).await?.into_stream();
    use futures::StreamExt;
    while let Some(chunk) = body.next().await {
        stdin.write_all(&chunk?).await?;
    }
    drop(stdin);
    let out = child.wait_with_output().await?;
    let took = started.elapsed().as_secs_f64();
    ensure!(
        out.status.success(),
        "restore by hand: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    println!(
        "  by hand: the restored copy holds {} rows in app.data",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    // The copy's files are uid 999's; this process is root.
    Ok(took)
}

/// `--split-cores`: the primary's side.
const PRIMARY_CPU: u32 = 0;
/// `--split-cores`: the replicas' side (the backup's).
const REPLICA_CPU: u32 = 1;

/// Binds every thread of process `pid` to `cpu` (threads it starts later inherit it).
fn pin(pid: u32, cpu: u32) -> Result<()> {
    let out = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .output()
        .context("taskset")?;
    ensure!(
        out.status.success(),
        "taskset {pid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Binds a member's container (and every `docker exec` in it: `mariadb-backup`) to `cpu`.
fn pin_container(member: &str, cpu: u32) -> Result<()> {
    docker_cli(&[
        "update",
        "--cpuset-cpus",
        &cpu.to_string(),
        &container_of(member),
    ])?;
    Ok(())
}

/// The standalone containerd (socket, namespace) the replicas run on, with
/// `--replicas-on-containerd`.
static CONTAINERD: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();

/// SQL as a member's admin through its container's client: Docker's, or containerd's for a
/// member there.
fn admin_sql(member: &str, query: &str) -> Result<String> {
    let docker = mofang_tests::scenario::admin_sql(member, query);
    let (Err(e), Some((socket, ns))) = (&docker, CONTAINERD.get()) else {
        return docker;
    };
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let exec_id = format!(
        "sql-{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let out = std::process::Command::new("ctr")
        .args([
            "-a",
            socket,
            "-n",
            ns,
            "tasks",
            "exec",
            "--exec-id",
            &exec_id,
        ])
        .arg(container_of(member))
        .args([
            "mariadb",
            "--defaults-extra-file=/etc/mofang/client.cnf",
            "-N",
            "-e",
            query,
        ])
        .output()
        .context("ctr")?;
    ensure!(
        out.status.success(),
        "{e:#}; ctr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Binds every process of a containerd member (its task's cgroup ends with its container's
/// name) to `cpu`; its `exec`s (mariadb-backup) start from the shim, bound with the engine.
fn pin_cgroup(member: &str, cpu: u32) -> Result<()> {
    let pids = pids_in_cgroup_of(member)?;
    ensure!(
        !pids.is_empty(),
        "no process in a cgroup ending with /{}",
        container_of(member)
    );
    for pid in pids {
        pin(pid, cpu)?;
    }
    Ok(())
}

/// The processes of a containerd member: those whose cgroup ends with its container's name.
fn pids_in_cgroup_of(member: &str) -> Result<Vec<u32>> {
    let needle = format!("/{}", container_of(member));
    pids_where(|proc_dir| {
        let cgroups = std::fs::read_to_string(proc_dir.join("cgroup")).unwrap_or_default();
        cgroups.lines().any(|l| l.ends_with(&needle))
    })
}

/// The processes whose `/proc/<pid>` directory satisfies `matches`.
fn pids_where(matches: impl Fn(&std::path::Path) -> bool) -> Result<Vec<u32>> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc")? {
        let e = e?;
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if matches(&e.path()) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// The user-space storage driver serving a member's container's root file system (Docker's
/// `fuse-overlayfs` driver runs one `fuse-overlayfs` process per container, outside it):
/// every `docker exec` in the container (`mariadb-backup` and its libraries) reads through
/// it. Empty with a kernel driver (overlay2), whose work runs in the reading process.
fn storage_pids(member: &str) -> Result<Vec<u32>> {
    let merged = docker_cli(&[
        "inspect",
        "-f",
        "{{.GraphDriver.Data.MergedDir}}",
        &container_of(member),
    ])?;
    // `/var/lib/docker/fuse-overlayfs/<layer>/merged`: the process names `<layer>/diff`.
    let Some(layer) = std::path::Path::new(merged.trim())
        .parent()
        .and_then(|p| p.file_name())
        .map(|l| format!("/{}/", l.to_string_lossy()))
    else {
        return Ok(Vec::new());
    };
    pids_where(|proc_dir| {
        let comm = std::fs::read_to_string(proc_dir.join("comm")).unwrap_or_default();
        comm.trim() == "fuse-overlayfs"
            && std::fs::read(proc_dir.join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&layer))
    })
}

/// The cores each container is bound to, as Docker reports them.
fn cpuset_of(member: &str) -> String {
    docker_cli(&[
        "inspect",
        "-f",
        "{{.HostConfig.CpusetCpus}}",
        &container_of(member),
    ])
    .map_or_else(|e| format!("unknown ({e:#})"), |s| s.trim().to_owned())
}

/// The container engine's processes: `dockerd`, `containerd` and the shims.
fn engine_pids() -> Result<Vec<u32>> {
    pids_where(|proc_dir| {
        let comm = std::fs::read_to_string(proc_dir.join("comm")).unwrap_or_default();
        matches!(comm.trim(), "dockerd" | "containerd") || comm.starts_with("containerd-shim")
    })
}

/// Gives the container engine every core again (`--split-cores` bound it to one).
struct EngineUnpinned;

impl Drop for EngineUnpinned {
    fn drop(&mut self) {
        // The machine's cores, not this process's (bound to one since the start).
        let all = std::fs::read_to_string("/sys/devices/system/cpu/online")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "0-1".to_owned());
        for pid in engine_pids().unwrap_or_default() {
            let _ = std::process::Command::new("taskset")
                .args(["-a", "-p", "-c", &all, &pid.to_string()])
                .output();
        }
    }
}

/// The Docker agents' `member_cgroup_parent` with `--member-cpu-weight`.
const BENCH_CGROUP: &str = "/mofang-bench";

/// Where member `m`'s CPU cgroup is and its parent's weight as the agent wrote it (cgroup v1:
/// `cpu.shares`), for the run's record.
fn weight_of_parent(
    m: &mofang_scheduler::cluster::MemberView,
    replicas: &[String],
    replicas_on_containerd: bool,
) -> Result<String> {
    let pid = if replicas_on_containerd && replicas.contains(&m.id) {
        pids_in_cgroup_of(&m.id)?
            .first()
            .copied()
            .with_context(|| format!("no process of {}", m.id))?
    } else {
        docker_cli(&["inspect", "-f", "{{.State.Pid}}", &container_of(&m.id)])?
            .trim()
            .parse()
            .context("docker inspect: the member's pid")?
    };
    let own = cgroup_dir(pid, "cpu").context("--member-cpu-weight is reported on cgroup v1")?;
    let parent = own.parent().context("the member's cgroup has no parent")?;
    let shares = std::fs::read_to_string(parent.join("cpu.shares"))
        .with_context(|| parent.display().to_string())?;
    Ok(format!(
        "{} ({}) in {}, cpu.shares {}",
        m.id,
        m.role,
        own.display(),
        shares.trim()
    ))
}

/// Moves the replicas' containers and agents and SeaweedFS to [`REPLICA_CPU`] and binds the
/// primary's container to [`PRIMARY_CPU`] (its agent, the scheduler and this process are
/// there since [`pin`] at the start).
fn split_cores(
    env: &Env,
    inst: &InstanceView,
    s3: &SeaweedFs,
    replicas_on_containerd: bool,
) -> Result<()> {
    for m in &inst.members {
        let cpu = if m.role == "primary" {
            PRIMARY_CPU
        } else {
            REPLICA_CPU
        };
        if cpu == REPLICA_CPU && replicas_on_containerd {
            pin_cgroup(&m.id, cpu)?;
        } else {
            pin_container(&m.id, cpu)?;
            // On two hosts the container's storage driver is its host's.
            for pid in storage_pids(&m.id)? {
                pin(pid, cpu)?;
            }
        }
        if cpu == REPLICA_CPU {
            let agent = &env.agents[env.agent_running(inst, &m.id)?];
            pin(
                agent.pid().context("the replica's agent is not running")?,
                cpu,
            )?;
        }
    }
    let weed = std::fs::read_to_string(s3.dir.join("weed.pid")).context("weed.pid")?;
    pin(weed.trim().parse().context("weed.pid")?, REPLICA_CPU)?;
    // The container engine carries the backup's stream (`docker exec`'s output through the
    // daemon to the agent): on two hosts it is the replica's host's engine.
    for pid in engine_pids()? {
        pin(pid, REPLICA_CPU)?;
    }
    println!(
        "split cores: CPU {PRIMARY_CPU}: the primary's container (and its storage driver) and \
        agent, the scheduler, the writer; CPU {REPLICA_CPU}: the replicas' containers (and \
        their storage drivers) and agents, SeaweedFS (its data on /dev/shm), the container \
        engine (dockerd, containerd, shims)"
    );
    Ok(())
}

/// A member's memory unless `--member-memory-mib` says otherwise, MiB.
const DEFAULT_MEMBER_MEMORY_MIB: u64 = 1024;

/// What the command line asks.
#[derive(Debug, Clone)]
struct Args {
    mib: u64,
    write_secs: u64,
    nice: Option<i32>,
    throttle: Option<u32>,
    ionice: bool,
    zstd_threads: Option<u32>,
    replicas: u32,
    rounds: u32,
    latency_only: bool,
    split_cores: bool,
    replica_disk: Option<std::path::PathBuf>,
    /// The replicas' agents on the containerd runtime (a standalone containerd): the backup
    /// stream leaves through its shim's FIFO, not through `dockerd`.
    replicas_on_containerd: bool,
    /// The agents' `member_cpu_weight` (the Docker agents' members under
    /// [`BENCH_CGROUP`], the containerd agents' under their namespace).
    member_cpu_weight: Option<u32>,
    /// Each member's memory, MiB (the agents' `memory_mib` made room for three).
    member_memory_mib: u64,
}

impl Args {
    /// The agents' config lines for the knobs given.
    fn agent_extra(&self) -> String {
        let mut extra = String::new();
        if let Some(n) = self.nice {
            extra.push_str(&format!("backup_nice = {n}\n"));
        }
        if let Some(n) = self.throttle {
            extra.push_str(&format!("backup_throttle_mib_s = {n}\n"));
        }
        if self.ionice {
            extra.push_str("backup_ionice_idle = true\n");
        }
        if let Some(n) = self.zstd_threads {
            extra.push_str(&format!("backup_zstd_threads = {n}\n"));
        }
        if let Some(w) = self.member_cpu_weight {
            extra.push_str(&format!("member_cpu_weight = {w}\n"));
        }
        if self.member_memory_mib > DEFAULT_MEMBER_MEMORY_MIB {
            extra.push_str(&format!("memory_mib = {}\n", self.member_memory_mib * 3));
        }
        extra
    }
}

/// The primary's semi-sync counters: (transactions that waited for an acknowledgement,
/// total microseconds they waited, transactions that got none).
fn semi_sync(primary: &str) -> Result<(u64, u64, u64)> {
    let out = admin_sql(
        primary,
        "SHOW GLOBAL STATUS WHERE Variable_name IN ('Rpl_semi_sync_master_tx_waits', \
         'Rpl_semi_sync_master_tx_wait_time', 'Rpl_semi_sync_master_no_tx')",
    )?;
    let get = |k: &str| -> u64 {
        out.lines()
            .filter_map(|l| l.split_once('\t'))
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0)
    };
    Ok((
        get("Rpl_semi_sync_master_tx_waits"),
        get("Rpl_semi_sync_master_tx_wait_time"),
        get("Rpl_semi_sync_master_no_tx"),
    ))
}

/// Semi-sync figures of a window: the mean wait for an acknowledgement per acknowledged
/// transaction, and how many got none.
fn semi_sync_delta(before: (u64, u64, u64), after: (u64, u64, u64)) -> String {
    let tx = after.0.saturating_sub(before.0);
    let waited = after.1.saturating_sub(before.1);
    format!(
        "semi-sync: {tx} commits waited, mean wait {:.2} ms, {} without acknowledgement",
        waited as f64 / 1000.0 / tx.max(1) as f64,
        after.2.saturating_sub(before.2)
    )
}

/// One window of writes: latencies of the writes sent in it, and the semi-sync figures.
struct Window {
    latencies: Vec<Duration>,
    semi: String,
}

/// Writes for `secs` with no backup running, reading a backup (`poll`'s id) or, before there
/// is one, the instance as often as [`wait_backup`] reads a running backup: the bench's own
/// requests and the scheduler's answers (on the primary's core with `--split-cores`) weigh
/// on both windows alike, so they are not counted as the backup's cost.
async fn idle_window(
    primary: &str,
    addr: &str,
    pass: &str,
    secs: f64,
    c: &Client,
    poll: Option<&str>,
) -> Result<Window> {
    let before = semi_sync(primary)?;
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(addr.to_owned(), pass.to_owned(), stop.clone());
    let until = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < until {
        match poll {
            Some(id) => {
                c.backup(id).await.with_context(|| format!("backup {id}"))?;
            }
            None => {
                c.instance("bb").await.context("instance bb")?;
            }
        }
        tokio::time::sleep(POLL.min(until.saturating_duration_since(Instant::now()))).await;
    }
    stop.store(true, Ordering::SeqCst);
    let latencies = w.await??.into_iter().map(|(_, d)| d).collect();
    Ok(Window {
        latencies,
        semi: semi_sync_delta(before, semi_sync(primary)?),
    })
}

/// Writes while a backup of a replica runs (only those sent while it was seen running); the
/// backup and the seconds it was seen running.
async fn backup_window(
    c: &Client,
    primary: &str,
    addr: &str,
    pass: &str,
) -> Result<(Window, Backup, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(addr.to_owned(), pass.to_owned(), stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = semi_sync(primary)?;
    let (b, running, ended) = mofang_backup(c, "bench").await?;
    let after = semi_sync(primary)?;
    stop.store(true, Ordering::SeqCst);
    let running = running.context("the backup was never seen running")?;
    let sent: Vec<(Instant, Duration)> = w
        .await??
        .into_iter()
        .filter(|(t, _)| *t >= running && *t <= ended)
        .collect();
    // When the slowest writes were sent, as a share of the time the backup was seen running
    // (a tail bunched at one phase of mariadb-backup points at that phase, not at the CPU).
    let mut slowest = sent.clone();
    slowest.sort_by_key(|(_, d)| std::cmp::Reverse(*d));
    let span = (ended - running).as_secs_f64().max(f64::EPSILON);
    // And against the end the scheduler recorded (wall clock): a slow write just after it
    // comes from what the completion sets off, not from the backup.
    let (now, wall_ms) = (Instant::now(), unix_ms());
    let wall = |t: Instant| wall_ms as f64 - (now - t).as_secs_f64() * 1000.0;
    let recorded_end = |t: Instant| (wall(t) - b.ended_at_ms as f64) / 1000.0;
    let at: Vec<String> = slowest
        .iter()
        .take(5)
        .map(|(t, d)| {
            let after = (*t - running).as_secs_f64();
            format!(
                "{} at {after:.1} s ({:.0}%, end{:+.2} s, unix {:.3})",
                ms(*d),
                after / span * 100.0,
                recorded_end(*t),
                wall(*t) / 1000.0
            )
        })
        .collect();
    Ok((
        Window {
            latencies: sent.into_iter().map(|(_, d)| d).collect(),
            semi: format!(
                "{}; slowest: {}",
                semi_sync_delta(before, after),
                at.join(", ")
            ),
        },
        b,
        (ended - running).as_secs_f64(),
    ))
}

async fn run(args: Args) -> Result<()> {
    let Args {
        mib,
        write_secs,
        nice,
        ..
    } = args.clone();
    println!(
        "backup benchmark: {mib} MiB of rows; machine: {} cores; load average at start: {}; agents' backup_nice: {}; {args:?}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg(),
        nice.map_or("default (19)".to_owned(), |n| n.to_string())
    );
    if args.split_cores {
        // Before anything starts: every process this one starts inherits CPU 0; the replica
        // side is moved to CPU 1 once the instance is up.
        pin(std::process::id(), PRIMARY_CPU)?;
    }
    let s3 = if args.split_cores {
        // The store on a host of its own: its writes do not share the members' disk.
        SeaweedFs::start_in(std::path::Path::new("/dev/shm")).await?
    } else {
        SeaweedFs::start().await?
    };
    let disk = mib * 8 + 8192;
    // `--replica-disk`: every member's volume on a disk class `bench` each agent has: the
    // first agent's on this machine's disk, the others' under the directory given.
    let scratch = tempfile::Builder::new()
        .prefix("bench-backup-")
        .tempdir_in("/var/tmp")?;
    // The replicas' volumes under `--replica-disk`, removed at the end like `scratch` (after
    // `env`, declared later, has removed the members): on a tmpfs a run's volumes left
    // behind hold memory until the next reboot.
    let replica_dir = match &args.replica_disk {
        Some(dir) => Some(tempfile::TempDir::with_prefix_in("bench-backup-", dir)?),
        None => None,
    };
    // A replica's agent on containerd: the top-level key first, its table after every other
    // line (a key after a table header belongs to that table).
    let (runtime_key, runtime_table) = if args.replicas_on_containerd {
        let ctrd = mofang_tests::containerd::containerd()?;
        ctrd.import_images(&["mofang/mariadb:10.11"])?;
        let _ = CONTAINERD.set((ctrd.socket.display().to_string(), ctrd.namespace.clone()));
        ("runtime = \"containerd\"\n", ctrd.agent_toml())
    } else {
        ("", String::new())
    };
    let extras: Vec<String> = (0..=args.replicas)
        .map(|i| -> Result<String> {
            let on_docker = i == 0 || !args.replicas_on_containerd;
            let parent = if on_docker && args.member_cpu_weight.is_some() {
                format!("member_cgroup_parent = \"{BENCH_CGROUP}\"\n")
            } else {
                String::new()
            };
            let (key, table) = if i == 0 {
                (parent.as_str(), "")
            } else if on_docker {
                (parent.as_str(), runtime_table.as_str())
            } else {
                (runtime_key, runtime_table.as_str())
            };
            let Some(elsewhere) = &replica_dir else {
                return Ok(format!("{}{key}{table}", args.agent_extra()));
            };
            let base = if i == 0 { scratch.path() } else { elsewhere.path() };
            let dir = base.join(format!("bench-{i}"));
            std::fs::create_dir_all(&dir)?;
            Ok(format!(
                "{}{key}\n[[disks]]\npath = \"{}\"\nclass = \"bench\"\ncapacity_mib = {disk}\n{table}",
                args.agent_extra(),
                dir.display()
            ))
        })
        .collect::<Result<_>>()?;
    let env = Env::start_each_with("", &extras, &Timings::PRODUCTION, disk).await?;
    let api = env.client();
    let repo = |name: &str, encrypt: bool| NewBackupRepo {
        name: name.to_owned(),
        kind: "s3".to_owned(),
        endpoint: Some(s3.endpoint.clone()),
        bucket: Some(s3.bucket.clone()),
        prefix: Some(name.to_owned()),
        access_key_id: Some(s3.access_key.clone()),
        secret_access_key: Some(Secret(s3.secret_key.clone())),
        encrypt,
        ..NewBackupRepo::default()
    };
    api.add_backup_repo(&repo("bench", false))
        .await
        .context("adding the repository bench")?;
    // The same store, encrypting (decision 119): the cost of encryption, side by side.
    api.add_backup_repo(&repo("bench-enc", true))
        .await
        .context("adding the repository bench-enc")?;
    let member_disk = mib * 3 + 2048;
    let spec = |name: &str, replicas: u32| InstanceSpec {
        name: name.to_owned(),
        engine: EngineKind::Mariadb,
        version: "10.11".to_owned(),
        replicas,
        resources: Resources {
            cpu: 1.0,
            memory: args.member_memory_mib,
            disk: member_disk,
        },
        disk_class: args.replica_disk.as_ref().map(|_| "bench".to_owned()),
        placement: None,
        labels: Default::default(),
        restore: None,
        tls: Default::default(),
        backup: None,
    };
    api.create_instance(&spec("bb", args.replicas))
        .await
        .context("creating bb")?;
    let mut inst = env.ready("bb").await?;
    if args.replica_disk.is_some() || args.replicas_on_containerd {
        // The primary on the first agent (Docker), whose volume is on this machine's disk.
        let first = &env.agents[0].node;
        let on_first = inst
            .members
            .iter()
            .find(|m| &m.node == first)
            .context("no member on the first agent")?;
        if on_first.role != "primary" {
            let target = on_first.id.clone();
            api.switchover("bb", Some(&target)).await?;
            inst = mofang_tests::eventually(
                "the switchover to the first agent's member",
                Duration::from_secs(120),
                || async {
                    let v = env.ready("bb").await?;
                    ensure!(
                        v.members.iter().any(|m| m.id == target
                            && m.role == "primary"
                            && m.observed_role == "primary"),
                        "{v:?}"
                    );
                    Ok(v)
                },
            )
            .await?;
        }
        println!(
            "volumes: the primary's on this machine's disk ({}), the replicas' under {}",
            scratch.path().display(),
            args.replica_disk
                .as_ref()
                .map_or(String::new(), |d| d.display().to_string())
        );
    }
    let (primary, primary_addr) = member(&inst, "primary")?;
    let (replica, _) = member(&inst, "replica")?;
    let replicas: Vec<String> = inst
        .members
        .iter()
        .filter(|m| m.role == "replica")
        .map(|m| m.id.clone())
        .collect();
    let pass = env.app_password("bb").await?;
    let _unpinned = args.split_cores.then_some(EngineUnpinned);
    if args.split_cores {
        split_cores(&env, &inst, &s3, args.replicas_on_containerd)?;
    }
    if args.member_cpu_weight.is_some() {
        for m in &inst.members {
            println!(
                "cgroup: {}",
                weight_of_parent(m, &replicas, args.replicas_on_containerd)?
            );
        }
    }

    // ---- the dataset -------------------------------------------------------------------
    let loading = Instant::now();
    let mut c = mysql(&primary_addr, &pass).await?;
    c.query_drop(
        "CREATE TABLE data (id BIGINT PRIMARY KEY, r VARBINARY(512), t VARCHAR(512)) ENGINE=InnoDB",
    )
    .await?;
    c.query_drop("CREATE TABLE w (id BIGINT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(128))")
        .await?;
    let rows = mib * 1024;
    let mut from = 1;
    while from <= rows {
        let to = (from + BATCH - 1).min(rows);
        c.query_drop(format!(
            "INSERT INTO data SELECT seq, RANDOM_BYTES(480), RPAD(CONCAT('row ', seq, ' of the benchmark dataset '), 480, 'abcdefgh ') FROM seq_{from}_to_{to}"
        ))
        .await?;
        from = to + 1;
    }
    drop(c);
    let target = admin_sql(&primary, "SELECT @@gtid_binlog_pos")?;
    for r in &replicas {
        mofang_tests::eventually(
            "the replicas caught up",
            Duration::from_secs(1800),
            || async {
                let at = admin_sql(r, "SELECT @@gtid_slave_pos")?;
                ensure!(at == target, "{r} at {at}, primary at {target}");
                Ok(())
            },
        )
        .await?;
    }
    for m in std::iter::once(&primary).chain(&replicas) {
        admin_sql(m, "FLUSH BINARY LOGS")?;
        admin_sql(m, "PURGE BINARY LOGS BEFORE NOW() + INTERVAL 1 SECOND")?;
    }
    let innodb: f64 = admin_sql(
        &replica,
        "SELECT SUM(file_size) FROM information_schema.innodb_sys_tablespaces WHERE name LIKE 'app/%'",
    )?
    .parse()?;
    println!(
        "dataset: {rows} rows ({mib} MiB of row data, half random bytes), {:.0} MiB in InnoDB; loaded and replicated in {:.0} s",
        innodb / MIB,
        loading.elapsed().as_secs_f64()
    );

    // ---- write latency without a backup --------------------------------------------------
    println!(
        "semi-sync clients of the primary: {}",
        admin_sql(
            &primary,
            "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'RPL_SEMI_SYNC_MASTER_CLIENTS'"
        )?
    );
    let first = idle_window(
        &primary,
        &primary_addr,
        &pass,
        write_secs as f64,
        &api,
        None,
    )
    .await?;
    println!("no backup ({write_secs} s): {}", first.semi);
    let mut idle_all = first.latencies;

    // ---- throughput: Mofang, then by hand, nothing else running --------------------------
    let (b, _, _) = mofang_backup(&api, "bench").await?;
    let raw = b.objects.first().context("raw_size")?.raw_size;
    let size = b.size;
    let agent_secs = |b: &Backup| (b.ended_at_ms - b.started_at_ms) as f64 / 1000.0;
    let took = agent_secs(&b);
    let wall = (b.ended_at_ms - b.requested_at_ms) as f64 / 1000.0;
    let ours = raw as f64 / MIB / took;
    println!(
        "Mofang backup {}: {:.0} MiB read, {:.0} MiB stored, {took:.1} s in the agent ({wall:.1} s from the request): {ours:.1} MiB/s",
        b.id,
        raw as f64 / MIB,
        size as f64 / MIB
    );
    // What the agent does after the stream: the row count in a consistent snapshot (a full
    // scan of every table), timed here by itself.
    let counting = Instant::now();
    admin_sql(
        &replica,
        "START TRANSACTION WITH CONSISTENT SNAPSHOT; SELECT COUNT(*) FROM app.data; SELECT COUNT(*) FROM app.w; COMMIT",
    )?;
    let count_took = counting.elapsed().as_secs_f64();
    let streamed = raw as f64 / MIB / (took - count_took).max(0.001);
    println!(
        "  the row count by itself (consistent snapshot, every table): {count_took:.1} s; the stream alone then ~{streamed:.1} MiB/s"
    );
    // The same, into the encrypting repository, right after.
    let (be, _, _) = mofang_backup(&api, "bench-enc").await?;
    let (eraw, etook) = (
        be.objects.first().context("raw_size")?.raw_size,
        agent_secs(&be),
    );
    ensure!(
        be.objects.first().is_some_and(|o| o.encryption.is_some()),
        "the backup into bench-enc is not encrypted: {be:?}"
    );
    let encrypted = eraw as f64 / MIB / etook;
    println!(
        "Mofang backup {} into the encrypting repository: {:.0} MiB read, {:.0} MiB stored, {etook:.1} s in the agent: {encrypted:.1} MiB/s",
        be.id,
        eraw as f64 / MIB,
        be.size as f64 / MIB
    );
    let hand = if args.latency_only {
        f64::NAN
    } else {
        // On the replica's side, as the agent's own backup is: with `--split-cores` the
        // pipeline's zstd and this process's upload would otherwise have the primary's idle
        // core to themselves.
        if args.split_cores {
            pin(std::process::id(), REPLICA_CPU)?;
        }
        let hand = hand_backup(&s3, &replica).await;
        if args.split_cores {
            pin(std::process::id(), PRIMARY_CPU)?;
        }
        let (hraw, hsize, htook) = hand?;
        println!(
            "by hand (mariadb-backup | zstd -3 -T{} | multipart upload): {:.0} MiB read, {:.0} MiB stored, {htook:.1} s: {:.1} MiB/s",
            zstd_threads(),
            hraw as f64 / MIB,
            hsize as f64 / MIB,
            hraw as f64 / MIB / htook
        );
        hraw as f64 / MIB / htook
    };
    let encryption_row = format!(
        "| backup throughput (MiB/s read, the whole job), encrypting repository vs plain, same run | {encrypted:.1} | {ours:.1} (plain) | {:.2} | |",
        encrypted / ours
    );

    // ---- write latency while a backup of a replica runs, in rounds ------------------------
    let mut during_all = Vec::new();
    let mut backed_up = String::new();
    for round in 1..=args.rounds {
        let (w, b2, seen) = backup_window(&api, &primary, &primary_addr, &pass).await?;
        backed_up = b2.member.clone();
        let (p50, p99, n) = p50_p99(w.latencies.clone());
        println!(
            "round {round}: writes during backup {} (on {backed_up}, {seen:.1} s seen running): p50 {} p99 {} ({n} writes); {}",
            b2.id,
            ms(p50),
            ms(p99),
            w.semi
        );
        during_all.extend(w.latencies);
        if round < args.rounds {
            // As long as that backup ran, with no backup: the same stretch of the machine's
            // load on both sides.
            let quiet = idle_window(
                &primary,
                &primary_addr,
                &pass,
                seen.max(5.0),
                &api,
                Some(&b2.id),
            )
            .await?;
            let (p50, p99, n) = p50_p99(quiet.latencies.clone());
            println!(
                "round {}: no backup ({:.1} s): p50 {} p99 {} ({n} writes); {}",
                round + 1,
                seen.max(5.0),
                ms(p50),
                ms(p99),
                quiet.semi
            );
            idle_all.extend(quiet.latencies);
        }
    }
    let idle = p50_p99(idle_all);
    let during = p50_p99(during_all);
    if args.split_cores {
        // Still where they were put: nothing (an agent's update) undid the binding.
        for m in &inst.members {
            println!("  {} ({}): cores {}", m.id, m.role, cpuset_of(&m.id));
        }
    }

    if args.latency_only {
        println!();
        println!("| figure | Mofang | anchor | ratio | target |");
        println!("| --- | --- | --- | --- | --- |");
        println!("{encryption_row}");
        println!();
        print_latency(&idle, &during, write_secs, args.rounds, &backed_up);
        println!("load average at the end: {}", loadavg());
        return Ok(());
    }

    // ---- restore -------------------------------------------------------------------------
    let mut r = spec("bb-copy", 0);
    r.restore = Some(RestoreRequest {
        from_instance: "bb".to_owned(),
        backup: Some(b.id.clone()),
        time: None,
    });
    let started = Instant::now();
    api.create_instance(&r).await.context("creating bb-copy")?;
    let answered = started.elapsed().as_secs_f64();
    let copy = env.ready("bb-copy").await?;
    let restored = started.elapsed().as_secs_f64();
    let (copy_primary, _) = member(&copy, "primary")?;
    let n = admin_sql(&copy_primary, "SELECT COUNT(*) FROM app.data")?;
    ensure!(n == rows.to_string(), "the copy holds {n} rows, not {rows}");
    let path = format!("bench/{}", b.objects.first().context("path")?.path);
    println!(
        "Mofang restore: the API answered after {answered:.1} s (its check of the object), ready after {restored:.1} s, {n} rows"
    );
    let hand_restored = match hand_restore(&s3, &path).await {
        Ok(t) => t,
        Err(e) => {
            println!("restore by hand failed: {e:#}");
            f64::NAN
        }
    };

    // ---- side by side ----------------------------------------------------------------------
    println!();
    println!("| figure | Mofang | by hand | ratio | target |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| backup throughput (MiB/s read from the server), the whole job with its row count | {ours:.1} | {hand:.1} | {:.2} | >= 0.9 |",
        ours / hand
    );
    println!(
        "| the same without the row count ({count_took:.1} s timed alone) | {streamed:.1} | {hand:.1} | {:.2} | >= 0.9 |",
        streamed / hand
    );
    println!("{encryption_row}");
    println!(
        "| restore of {:.0} MiB (InnoDB) to a server answering | {restored:.1} s (API answered after its object check: {answered:.1} s) | {hand_restored:.1} s | {:.2} | |",
        innodb / MIB,
        restored / hand_restored
    );
    println!();
    print_latency(&idle, &during, write_secs, args.rounds, &backed_up);
    println!("load average at the end: {}", loadavg());
    Ok(())
}

/// The latency table, side by side with the bar.
fn print_latency(
    idle: &(Duration, Duration, usize),
    during: &(Duration, Duration, usize),
    write_secs: u64,
    rounds: u32,
    member: &str,
) {
    println!("| primary writes (insert, semi-sync) | p50 | p99 | writes |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| no backup ({write_secs} s, then between rounds; {rounds} round(s)) | {} | {} | {} |",
        ms(idle.0),
        ms(idle.1),
        idle.2
    );
    println!(
        "| backup of replica {member} running | {} | {} | {} |",
        ms(during.0),
        ms(during.1),
        during.2
    );
    println!(
        "p99 during / without: {:.2} (target <= 1.20)",
        during.1.as_secs_f64() / idle.1.as_secs_f64().max(1e-9)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut args = Args {
        mib: 2048,
        write_secs: 30,
        nice: None,
        throttle: None,
        ionice: false,
        zstd_threads: None,
        replicas: 1,
        rounds: 1,
        latency_only: false,
        split_cores: false,
        replica_disk: None,
        replicas_on_containerd: false,
        member_cpu_weight: None,
        member_memory_mib: DEFAULT_MEMBER_MEMORY_MIB,
    };
    let usage =
        "usage: bench-backup [--mib N] [--write-secs S] [--backup-nice 0..19] [--throttle MIB_S] \
        [--ionice] [--zstd-threads N] [--replicas 1|2] [--rounds N] [--latency-only] [--split-cores] [--replica-disk DIR] \
        [--replicas-on-containerd] [--member-cpu-weight N] [--member-memory-mib N]";
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--ionice" => {
                args.ionice = true;
                continue;
            }
            "--latency-only" => {
                args.latency_only = true;
                continue;
            }
            "--split-cores" => {
                args.split_cores = true;
                continue;
            }
            "--replicas-on-containerd" => {
                args.replicas_on_containerd = true;
                continue;
            }
            _ => {}
        }
        let v = it.next().with_context(|| format!("{a} needs a value"))?;
        let bad = || format!("{a} {v}");
        match a.as_str() {
            "--mib" => args.mib = v.parse().with_context(bad)?,
            "--write-secs" => args.write_secs = v.parse().with_context(bad)?,
            "--backup-nice" => args.nice = Some(v.parse().with_context(bad)?),
            "--throttle" => args.throttle = Some(v.parse().with_context(bad)?),
            "--zstd-threads" => args.zstd_threads = Some(v.parse().with_context(bad)?),
            "--replicas" => args.replicas = v.parse().with_context(bad)?,
            "--rounds" => args.rounds = v.parse().with_context(bad)?,
            "--replica-disk" => args.replica_disk = Some(v.into()),
            "--member-cpu-weight" => args.member_cpu_weight = Some(v.parse().with_context(bad)?),
            "--member-memory-mib" => args.member_memory_mib = v.parse().with_context(bad)?,
            other => bail!("{usage}; got {other:?}"),
        }
    }
    if args.mib == 0 || args.write_secs == 0 || args.rounds == 0 {
        bail!("--mib, --write-secs and --rounds must be at least 1");
    }
    if !(1..=2).contains(&args.replicas) {
        bail!("--replicas must be 1 or 2");
    }
    if args.split_cores && std::thread::available_parallelism().map_or(0, |n| n.get()) < 2 {
        bail!("--split-cores needs two cores");
    }
    // Ctrl-C drops the run: the daemons, their containers and SeaweedFS go with it.
    let weighted = args.member_cpu_weight.is_some();
    let outcome = tokio::select! {
        r = run(args) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if weighted {
        remove_bench_cgroups();
    }
    outcome
}

/// The Docker agents' members' parent ([`BENCH_CGROUP`]) under every cgroup mount, once its
/// containers are gone: removed when empty, deepest first (a directory still holding a
/// process is left).
fn remove_bench_cgroups() {
    let mounts = ["/sys/fs/cgroup"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .chain(
            std::fs::read_dir("/sys/fs/cgroup")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path()),
        );
    for mount in mounts {
        let top = mount.join(BENCH_CGROUP.trim_start_matches('/'));
        if !top.is_dir() {
            continue;
        }
        let mut dirs = vec![top.clone()];
        let mut k = 0;
        while k < dirs.len() {
            if let Ok(entries) = std::fs::read_dir(&dirs[k]) {
                dirs.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
            k += 1;
        }
        for dir in dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

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
//! [--backup-nice N] (default 2048 MiB of rows, half random bytes and half text; 30 s; the
//! agents' default `backup_nice`, 19: `--backup-nice 0` measures backups at normal priority).

use anyhow::{bail, ensure, Context, Result};
use mofang_tests::cluster::Timings;
use mofang_tests::s3::SeaweedFs;
use mofang_tests::scenario::{container_of, docker_cli, loadavg, mysql, percentile, Env};
use mysql_async::prelude::Queryable;
use object_store::{ObjectStore, WriteMultipart};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
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

/// SQL as the member's admin, through its container's client.
fn admin_sql(member: &str, query: &str) -> Result<String> {
    docker_cli(&[
        "exec",
        &container_of(member),
        "mariadb",
        "--defaults-extra-file=/etc/mofang/client.cnf",
        "-N",
        "-e",
        query,
    ])
}

fn member(inst: &Value, role: &str) -> Result<(String, String)> {
    let m = inst["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["role"] == role))
        .with_context(|| format!("{role} of {inst}"))?;
    Ok((
        m["id"].as_str().context("id")?.to_owned(),
        m["address"].as_str().context("address")?.to_owned(),
    ))
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

fn p50_p99(mut v: Vec<Duration>) -> (Duration, Duration, usize) {
    v.sort();
    (percentile(&v, 0.50), percentile(&v, 0.99), v.len())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn wait_backup(env: &Env, id: &str) -> Result<(Value, Option<Instant>, Instant)> {
    let mut running = None;
    loop {
        let b = env.get(&format!("/v1/backups/{id}")).await?;
        if b["state"] == "running" && running.is_none() {
            running = Some(Instant::now());
        }
        if b["state"] == "succeeded" {
            return Ok((b, running, Instant::now()));
        }
        ensure!(b["state"] != "failed", "backup failed: {b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn mofang_backup(env: &Env) -> Result<(Value, Option<Instant>, Instant)> {
    let (s, v) = env
        .call(
            Method::POST,
            "/v1/instances/bb/backups",
            Some(json!({"repo": "bench"})),
        )
        .await?;
    ensure!(s == StatusCode::ACCEPTED, "{s} {v}");
    wait_backup(env, v["id"].as_str().context("id")?).await
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

async fn run(mib: u64, write_secs: u64, nice: Option<i32>) -> Result<()> {
    println!(
        "backup benchmark: {mib} MiB of rows; machine: {} cores; load average at start: {}; agents' backup_nice: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg(),
        nice.map_or("default (19)".to_owned(), |n| n.to_string())
    );
    let s3 = SeaweedFs::start().await?;
    let disk = mib * 8 + 8192;
    let extra = nice.map_or(String::new(), |n| format!("backup_nice = {n}\n"));
    let env = Env::start_sized_with(2, "", &extra, &Timings::PRODUCTION, disk).await?;
    let (s, v) = env
        .call(
            Method::POST,
            "/v1/backup-repos",
            Some(
                json!({"name": "bench", "kind": "s3", "endpoint": s3.endpoint,
                "bucket": s3.bucket, "prefix": "bench", "access_key_id": s3.access_key,
                "secret_access_key": s3.secret_key}),
            ),
        )
        .await?;
    ensure!(s == StatusCode::CREATED, "{s} {v}");
    let member_disk = mib * 3 + 2048;
    let spec = |name: &str, replicas: u32| {
        json!({"name": name, "engine": "mariadb", "version": "10.11", "replicas": replicas,
               "resources": {"cpu": 1.0, "memory": 1024, "disk": member_disk}})
    };
    let (s, v) = env
        .call(Method::POST, "/v1/instances", Some(spec("bb", 1)))
        .await?;
    ensure!(s == StatusCode::CREATED, "{s} {v}");
    let inst = env.wait_instance_ready("bb").await?;
    let (primary, primary_addr) = member(&inst, "primary")?;
    let (replica, _) = member(&inst, "replica")?;
    let pass = env.app_password("bb").await?;

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
    mofang_tests::eventually(
        "the replica caught up",
        Duration::from_secs(1800),
        || async {
            let at = admin_sql(&replica, "SELECT @@gtid_slave_pos")?;
            ensure!(at == target, "replica at {at}, primary at {target}");
            Ok(())
        },
    )
    .await?;
    for m in [&primary, &replica] {
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
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(primary_addr.clone(), pass.clone(), stop.clone());
    tokio::time::sleep(Duration::from_secs(write_secs)).await;
    stop.store(true, Ordering::SeqCst);
    let idle = p50_p99(w.await??.into_iter().map(|(_, d)| d).collect());

    // ---- throughput: Mofang, then by hand, nothing else running --------------------------
    let (b, _, _) = mofang_backup(&env).await?;
    let raw = b["objects"][0]["raw_size"].as_u64().context("raw_size")?;
    let size = b["size"].as_u64().context("size")?;
    let took = (b["ended_at_ms"].as_i64().unwrap_or(0) - b["started_at_ms"].as_i64().unwrap_or(0))
        as f64
        / 1000.0;
    let wall = (b["ended_at_ms"].as_i64().unwrap_or(0) - b["requested_at_ms"].as_i64().unwrap_or(0))
        as f64
        / 1000.0;
    let ours = raw as f64 / MIB / took;
    println!(
        "Mofang backup {}: {:.0} MiB read, {:.0} MiB stored, {took:.1} s in the agent ({wall:.1} s from the request): {ours:.1} MiB/s",
        b["id"].as_str().unwrap_or_default(),
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
    let (hraw, hsize, htook) = hand_backup(&s3, &replica).await?;
    let hand = hraw as f64 / MIB / htook;
    println!(
        "by hand (mariadb-backup | zstd -3 -T{} | multipart upload): {:.0} MiB read, {:.0} MiB stored, {htook:.1} s: {hand:.1} MiB/s",
        zstd_threads(),
        hraw as f64 / MIB,
        hsize as f64 / MIB
    );

    // ---- write latency while a backup of the replica runs ---------------------------------
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(primary_addr.clone(), pass.clone(), stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (b2, running, ended) = mofang_backup(&env).await?;
    stop.store(true, Ordering::SeqCst);
    let running = running.context("the backup was never seen running")?;
    let during = p50_p99(
        w.await??
            .into_iter()
            .filter(|(t, _)| *t >= running && *t <= ended)
            .map(|(_, d)| d)
            .collect(),
    );
    println!(
        "writes during backup {} (on {replica}, {:.1} s seen running)",
        b2["id"].as_str().unwrap_or_default(),
        (ended - running).as_secs_f64()
    );

    // ---- restore -------------------------------------------------------------------------
    let mut r = spec("bb-copy", 0);
    r["restore"] = json!({"from_instance": "bb", "backup": b["id"]});
    let started = Instant::now();
    let (s, v) = env.call(Method::POST, "/v1/instances", Some(r)).await?;
    ensure!(s == StatusCode::CREATED, "{s} {v}");
    let answered = started.elapsed().as_secs_f64();
    let copy = env.wait_instance_ready("bb-copy").await?;
    let restored = started.elapsed().as_secs_f64();
    let (copy_primary, _) = member(&copy, "primary")?;
    let n = admin_sql(&copy_primary, "SELECT COUNT(*) FROM app.data")?;
    ensure!(n == rows.to_string(), "the copy holds {n} rows, not {rows}");
    let path = format!(
        "bench/{}",
        b["objects"][0]["path"].as_str().context("path")?
    );
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
    println!(
        "| restore of {:.0} MiB (InnoDB) to a server answering | {restored:.1} s (API answered after its object check: {answered:.1} s) | {hand_restored:.1} s | {:.2} | |",
        innodb / MIB,
        restored / hand_restored
    );
    println!();
    println!("| primary writes (insert, semi-sync) | p50 | p99 | writes |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| no backup ({write_secs} s) | {} | {} | {} |",
        ms(idle.0),
        ms(idle.1),
        idle.2
    );
    println!(
        "| backup of the replica running | {} | {} | {} |",
        ms(during.0),
        ms(during.1),
        during.2
    );
    println!(
        "p99 during / without: {:.2} (target <= 1.20)",
        during.1.as_secs_f64() / idle.1.as_secs_f64().max(1e-9)
    );
    println!("load average at the end: {}", loadavg());
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut mib, mut write_secs, mut nice) = (2048u64, 30u64, None::<i32>);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().with_context(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--mib" => mib = v.parse().with_context(|| format!("--mib {v}"))?,
            "--write-secs" => {
                write_secs = v.parse().with_context(|| format!("--write-secs {v}"))?
            }
            "--backup-nice" => {
                nice = Some(v.parse().with_context(|| format!("--backup-nice {v}"))?)
            }
            other => bail!(
                "usage: bench-backup [--mib N] [--write-secs S] [--backup-nice 0..19]; got {other:?}"
            ),
        }
    }
    if mib == 0 || write_secs == 0 {
        bail!("--mib and --write-secs must be at least 1");
    }
    // Ctrl-C drops the run: the daemons, their containers and SeaweedFS go with it.
    tokio::select! {
        r = run(mib, write_secs, nice) => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    }
}

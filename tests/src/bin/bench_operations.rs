//! Day-2 operations benchmark (`make bench-operations`, issue 17): the time and the longest
//! write outage of each operation type on a 3-member MariaDB instance (1 primary + 2
//! replicas) under the Jepsen set writer, side by side with the same work done by hand on
//! the server an application writes to. Prints figures; asserts no timing.
//!
//! Usage: bench-operations
//!
//! Mofang: a scheduler and four agents with the daemons' default timers (as `make demo`),
//! one instance created on MariaDB 10.5 (0.5 CPU, 384 MiB, as the tests' `spec`), the set
//! writer writing to its primary (asked of the API on every reconnect, as a client library
//! would) throughout, and one operation after another through the API: `restart`, `resize`
//! of the memory (384 -> 512 MiB), `upgrade` to 10.11, `scale` to 3 replicas and back to 2.
//! The time is from the POST to the operation's end as `GET /v1/operations/{id}` shows it
//! (polled every 100 ms); the outage is the longest time between two acknowledged writes
//! from the POST to the first write after the end. The primary's semi-sync counters are read
//! every 250 ms meanwhile, and what they showed during each longest outage is printed (is
//! the primary waiting for a replica's acknowledgement then?).
//!
//! By hand: one `docker run` of the same image on a named volume, port published, its
//! default config, the `app` account made inside it, the same writer writing to it; then
//! what an operator types: `docker restart -t 30`; `docker stop -t 30`, `docker update
//! --memory 512m`, `docker start`; `docker stop -t 30`, `docker rm`, `docker run` of the
//! 10.11 image on the same volume, `mariadb-upgrade`; a second container run and loaded with
//! `mariadb-dump --single-transaction | mariadb` (no replication set up: a lower bound for
//! adding a replica by hand), and removed with its volume. The time is from the first
//! command to the server answering `mariadb-admin ping` (the copy's end for the scale); the
//! outage as above. One server by hand has no replica to switch to, so its outage is the
//! whole stop and start: that difference is what the figures show.

use anyhow::{bail, Context, Result};
use mofang_scheduler::client::{Client, NewOperation};
use mofang_scheduler::ops::{OpKind, OpState};
use mofang_tests::scenario::{
    docker_cli, instance_spec, loadavg, set_contents, Ack, Env, PrimarySource, SetOutcome,
    SetWriter,
};
use mofang_tests::{test_label, unique_name};
use std::time::{Duration, Instant};

/// A server or operation not done by then has failed.
const LIMIT: Duration = Duration::from_secs(900);
const POLL: Duration = Duration::from_millis(100);
/// Writes acknowledged between two operations before the next begins.
const SETTLE_WRITES: u64 = 100;

/// One operation measured.
struct Measured {
    what: String,
    took: Duration,
    from: Instant,
    to: Instant,
    note: String,
    /// The operation's steps: what, and when each began and ended after `from`.
    steps: Vec<(String, Duration, Duration)>,
}

/// The longest time without an acknowledged write from `from` to the first
/// acknowledgement after `to` (counting from the last one at or before `from`).
fn outage(acks: &[Ack], from: Instant, to: Instant) -> Duration {
    longest_gap(acks, from, to).0
}

/// [`outage`] and the acknowledgement that began it.
fn longest_gap(acks: &[Ack], from: Instant, to: Instant) -> (Duration, Instant) {
    let mut prev = acks
        .iter()
        .rev()
        .find(|a| a.at <= from)
        .map_or(from, |a| a.at);
    let (mut longest, mut began) = (Duration::ZERO, from);
    for a in acks.iter().filter(|a| a.at > from) {
        if a.at - prev > longest {
            (longest, began) = (a.at - prev, prev);
        }
        prev = a.at;
        if a.at > to {
            break;
        }
    }
    (longest, began)
}

/// Where an operation's longest write outage fell: its start and end after the POST, and
/// the steps running then (the switchover, normally).
fn outage_place(m: &Measured, acks: &[Ack]) -> String {
    let (gap, began) = longest_gap(acks, m.from, m.to);
    let (a, b) = (
        began.saturating_duration_since(m.from),
        began.saturating_duration_since(m.from) + gap,
    );
    let during: Vec<String> = m
        .steps
        .iter()
        .filter(|(_, s, e)| *s < b && *e > a)
        .map(|(what, s, e)| {
            format!(
                "{what} (+{:.2} to +{:.2} s)",
                s.as_secs_f64(),
                e.as_secs_f64()
            )
        })
        .collect();
    format!(
        "{}: {} from +{:.2} s, during {}",
        m.what,
        secs(gap),
        a.as_secs_f64(),
        if during.is_empty() {
            "no step".to_owned()
        } else {
            during.join(", ")
        }
    )
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

// ---------------------------------------------------------------------------------------
// Mofang

/// Waits until the writer has `more` acknowledgements beyond now.
async fn settle(writer: &SetWriter) -> Result<()> {
    let n = writer.acked();
    writer
        .wait_acked(n + SETTLE_WRITES, Duration::from_secs(120))
        .await
}

/// Runs one operation through the API until it ends; fails unless it succeeded.
async fn operation(c: &Client, name: &str, what: &str, op: NewOperation) -> Result<Measured> {
    let from = Instant::now();
    let from_ms = mofang_scheduler::model::now_ms();
    let started = c
        .start_operation(name, &op)
        .await
        .with_context(|| what.to_owned())?;
    let ended = tokio::time::timeout(LIMIT, c.wait_operation(&started.id, POLL, |_| {}))
        .await
        .with_context(|| format!("{what}: not done within {LIMIT:?}"))??;
    if ended.state != OpState::Succeeded {
        bail!("{what}: {ended:?}");
    }
    let to = Instant::now();
    let after = |ms: i64| Duration::from_millis(u64::try_from(ms - from_ms).unwrap_or(0));
    let steps = ended
        .steps
        .iter()
        .map(|s| {
            (
                format!("{:?}", s.action),
                after(s.started_ms),
                after(s.ended_ms),
            )
        })
        .collect();
    Ok(Measured {
        what: what.to_owned(),
        took: to - from,
        from,
        to,
        note: format!("{} step(s)", ended.steps.len()),
        steps,
    })
}

/// One reading of the primary's semi-sync counters: is an outage the primary waiting for a
/// replica's acknowledgement (issue 17, the saturated upgrade)?
struct SemiSync {
    at: Instant,
    primary: String,
    /// `Rpl_semi_sync_master_status`: ON, or OFF once a wait timed out.
    status: String,
    /// Semi-sync replicas connected.
    clients: u64,
    /// Sessions waiting for an acknowledgement now.
    wait_sessions: u64,
    /// Commits acknowledged without a replica (after a timeout), so far.
    no_tx: u64,
}

/// Reads the current primary's semi-sync counters every 250 ms until `stop`; a primary that
/// does not answer within a second is skipped (the reading is missing then).
async fn sample_semi_sync(
    c: Client,
    name: String,
    pw: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<SemiSync> {
    use mysql_async::prelude::Queryable;
    let mut out = Vec::new();
    let mut conn: Option<(String, mysql_async::Conn)> = None;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let primary = c.instance(&name).await.ok().and_then(|v| {
            v.members
                .iter()
                .find(|m| m.role == "primary")
                .map(|m| m.address.clone())
        });
        if let Some(addr) = primary {
            if conn.as_ref().is_none_or(|(a, _)| *a != addr) {
                conn = tokio::time::timeout(
                    Duration::from_secs(1),
                    mofang_tests::scenario::mysql(&addr, &pw),
                )
                .await
                .ok()
                .and_then(Result::ok)
                .map(|cn| (addr.clone(), cn));
            }
            if let Some((a, cn)) = conn.as_mut() {
                let q = cn.query::<(String, String), _>(
                    "SHOW GLOBAL STATUS WHERE Variable_name IN ('Rpl_semi_sync_master_status', \
                     'Rpl_semi_sync_master_clients', 'Rpl_semi_sync_master_wait_sessions', \
                     'Rpl_semi_sync_master_no_tx')",
                );
                match tokio::time::timeout(Duration::from_secs(1), q).await {
                    Ok(Ok(rows)) => {
                        let get = |k: &str| {
                            rows.iter()
                                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                                .map(|(_, v)| v.clone())
                                .unwrap_or_default()
                        };
                        let num = |k: &str| get(k).parse().unwrap_or(0);
                        out.push(SemiSync {
                            at: Instant::now(),
                            primary: a.clone(),
                            status: get("Rpl_semi_sync_master_status"),
                            clients: num("Rpl_semi_sync_master_clients"),
                            wait_sessions: num("Rpl_semi_sync_master_wait_sessions"),
                            no_tx: num("Rpl_semi_sync_master_no_tx"),
                        });
                    }
                    _ => conn = None,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    out
}

/// What the primary's semi-sync counters showed during an operation's longest outage.
fn semi_sync_during(m: &Measured, acks: &[Ack], samples: &[SemiSync]) -> String {
    let (gap, began) = longest_gap(acks, m.from, m.to);
    let inside: Vec<&SemiSync> = samples
        .iter()
        .filter(|s| s.at >= began && s.at <= began + gap)
        .collect();
    let before = samples.iter().rev().find(|s| s.at < began);
    let Some(last) = inside.last() else {
        return format!("{}: no reading within its {} outage", m.what, secs(gap));
    };
    let waiting = inside.iter().map(|s| s.wait_sessions).max().unwrap_or(0);
    let clients = inside.iter().map(|s| s.clients).min().unwrap_or(0);
    let mut status: Vec<&str> = inside.iter().map(|s| s.status.as_str()).collect();
    status.dedup();
    let primaries: std::collections::BTreeSet<&str> =
        inside.iter().map(|s| s.primary.as_str()).collect();
    format!(
        "{}: {} readings in its {} outage: sessions waiting for an ack at most {waiting}, semi-sync replicas at least {clients}, status {}, commits without an ack +{}, primary {}",
        m.what,
        inside.len(),
        secs(gap),
        status.join(" -> "),
        before.map_or(0, |b| last.no_tx.saturating_sub(b.no_tx)),
        primaries.into_iter().collect::<Vec<_>>().join(", ")
    )
}

async fn mofang() -> Result<(Vec<Measured>, SetOutcome, usize, Vec<SemiSync>)> {
    let env = Env::start_with(4, "").await?;
    let c = env.client();
    let name = unique_name("bop");
    let mut spec = instance_spec(&name, "mariadb", 2)?;
    spec.version = "10.5".into();
    c.create_instance(&spec)
        .await
        .with_context(|| format!("create {name}"))?;
    env.ready(&name).await?;
    let pw = c.credentials(&name).await?.credentials.app;
    let writer = SetWriter::start(&env, &name, "mariadb", &pw).await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = tokio::spawn(sample_semi_sync(
        env.client(),
        name.clone(),
        pw.clone(),
        stop.clone(),
    ));
    let with = |kind: OpKind, set: fn(&mut NewOperation)| {
        let mut op = NewOperation::new(kind);
        set(&mut op);
        op
    };
    let ops = [
        ("restart", NewOperation::new(OpKind::Restart)),
        (
            "resize memory 384 -> 512 MiB",
            with(OpKind::Resize, |o| o.memory = Some(512)),
        ),
        (
            "upgrade 10.5 -> 10.11",
            with(OpKind::Upgrade, |o| o.version = Some("10.11".into())),
        ),
        (
            "scale up 2 -> 3 replicas",
            with(OpKind::Scale, |o| o.replicas = Some(3)),
        ),
        (
            "scale down 3 -> 2 replicas",
            with(OpKind::Scale, |o| o.replicas = Some(2)),
        ),
    ];
    let mut out = Vec::new();
    for (what, op) in ops {
        env.ready(&name).await?;
        settle(&writer).await?;
        let m = operation(&c, &name, what, op).await?;
        eprintln!("mofang: {what}: {}", secs(m.took));
        out.push(m);
    }
    settle(&writer).await?;
    let outcome = writer.stop().await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = sampler.await?;
    env.ready(&name).await?;
    let v = c.instance(&name).await?;
    let primary = v
        .members
        .iter()
        .find(|m| m.role == "primary")
        .context("no primary member")?;
    let present = set_contents("mariadb", &primary.address, &pw).await?;
    let lost = outcome.lost(&present).len();
    let _ = c.delete_instance(&name).await;
    Ok((out, outcome, lost, samples))
}

// ---------------------------------------------------------------------------------------
// By hand

/// The containers and volumes run by hand, removed when dropped: after the run, on an error
/// or on Ctrl-C.
struct ByHand {
    containers: Vec<String>,
    volumes: Vec<String>,
}

impl Drop for ByHand {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", "-v", c])
                .output();
        }
        for v in &self.volumes {
            let _ = std::process::Command::new("docker")
                .args(["volume", "rm", "-f", v])
                .output();
        }
    }
}

/// A free TCP port on 127.0.0.1 (the kernel's choice, released at once).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `docker run -d` of `image` on `volume`, its port published on `port` (0: none).
fn run_server(name: &str, volume: &str, port: u16, memory: &str, image: &str) -> Result<()> {
    let (k, v) = test_label();
    let label = format!("{k}={v}");
    let mount = format!("{volume}:/var/lib/mysql");
    let publish = format!("127.0.0.1:{port}:3306");
    let mut args = vec![
        "run", "-d", "--name", name, "--label", &label, "-v", &mount, "--cpus", "0.5", "--memory",
        memory,
    ];
    if port != 0 {
        args.extend(["-p", publish.as_str()]);
    }
    args.push(image);
    docker_cli(&args).with_context(|| format!("docker run of {image}"))?;
    Ok(())
}

/// Waits until the server in `name` answers `mariadb-admin ping`.
async fn answering(name: &str) -> Result<()> {
    let t0 = Instant::now();
    loop {
        if docker_cli(&["exec", "-u", "root", name, "mariadb-admin", "ping"]).is_ok() {
            return Ok(());
        }
        if t0.elapsed() > LIMIT {
            bail!("{name} did not answer within {LIMIT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Runs `work` as one operation done by hand.
async fn by_hand_step<F, Fut>(what: &str, note: &str, work: F) -> Result<Measured>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let from = Instant::now();
    work().await.with_context(|| what.to_owned())?;
    let to = Instant::now();
    eprintln!("by hand: {what}: {}", secs(to - from));
    Ok(Measured {
        what: what.to_owned(),
        took: to - from,
        from,
        to,
        note: note.to_owned(),
        steps: Vec::new(),
    })
}

async fn by_hand() -> Result<(Vec<Measured>, SetOutcome, usize)> {
    let name = unique_name("hand");
    let second = unique_name("hand");
    let volume = unique_name("hand-vol");
    let volume2 = unique_name("hand-vol");
    let _cleanup = ByHand {
        containers: vec![name.clone(), second.clone()],
        volumes: vec![volume.clone(), volume2.clone()],
    };
    let port = free_port()?;
    let old = "mofang/mariadb:10.5";
    let new = "mofang/mariadb:10.11";
    run_server(&name, &volume, port, "384m", old)?;
    answering(&name).await?;
    let pw = format!("hand{}", std::process::id());
    docker_cli(&[
        "exec",
        "-u",
        "root",
        &name,
        "mariadb",
        "-e",
        &format!(
            "CREATE DATABASE app; CREATE USER app@'%' IDENTIFIED BY '{pw}'; \
             GRANT ALL ON app.* TO app@'%';"
        ),
    ])?;
    let addr = format!("127.0.0.1:{port}");
    let writer =
        SetWriter::start_from(PrimarySource::Fixed(addr.clone()), "mariadb", &pw, 1).await?;
    let mut out = Vec::new();

    settle(&writer).await?;
    out.push(
        by_hand_step("restart", "docker restart -t 30", || async {
            docker_cli(&["restart", "-t", "30", &name])?;
            answering(&name).await
        })
        .await?,
    );
    settle(&writer).await?;
    out.push(
        by_hand_step(
            "resize memory 384 -> 512 MiB",
            "docker stop, update --memory, start",
            || async {
                docker_cli(&["stop", "-t", "30", &name])?;
                docker_cli(&["update", "--memory", "512m", "--memory-swap", "512m", &name])?;
                docker_cli(&["start", &name])?;
                answering(&name).await
            },
        )
        .await?,
    );
    settle(&writer).await?;
    out.push(
        by_hand_step(
            "upgrade 10.5 -> 10.11",
            "docker stop, rm, run 10.11 on the volume, mariadb-upgrade",
            || async {
                docker_cli(&["stop", "-t", "30", &name])?;
                docker_cli(&["rm", &name])?;
                run_server(&name, &volume, port, "512m", new)?;
                answering(&name).await?;
                docker_cli(&["exec", "-u", "root", &name, "mariadb-upgrade"])?;
                Ok(())
            },
        )
        .await?,
    );
    settle(&writer).await?;
    out.push(
        by_hand_step(
            "scale up 2 -> 3 replicas",
            "docker run, mariadb-dump piped to mariadb (no replication set up)",
            || async {
                run_server(&second, &volume2, 0, "512m", new)?;
                answering(&second).await?;
                let copy = format!(
                    "docker exec -u root {name} mariadb-dump --single-transaction --databases app \
                     | docker exec -i -u root {second} mariadb"
                );
                let o = std::process::Command::new("sh")
                    .args(["-c", &copy])
                    .output()?;
                if !o.status.success() {
                    bail!("copy: {}", String::from_utf8_lossy(&o.stderr));
                }
                Ok(())
            },
        )
        .await?,
    );
    settle(&writer).await?;
    out.push(
        by_hand_step(
            "scale down 3 -> 2 replicas",
            "docker rm -f -v, volume rm",
            || async {
                docker_cli(&["rm", "-f", "-v", &second])?;
                docker_cli(&["volume", "rm", &volume2])?;
                Ok(())
            },
        )
        .await?,
    );
    settle(&writer).await?;
    let outcome = writer.stop().await?;
    let present = set_contents("mariadb", &addr, &pw).await?;
    let lost = outcome.lost(&present).len();
    Ok((out, outcome, lost))
}

// ---------------------------------------------------------------------------------------

#[tokio::main]
async fn main() -> Result<()> {
    mofang_tests::init_tracing();
    eprintln!("load before: {}", loadavg());
    let (hand, hand_outcome, hand_lost) = by_hand().await?;
    let (ops, outcome, lost, samples) = mofang().await?;
    println!();
    println!(
        "Day-2 operations on MariaDB, 3 members (Mofang) vs the same work by hand on one server"
    );
    println!("(load average at the end: {})", loadavg());
    println!();
    println!(
        "| operation | Mofang: time | Mofang: longest write outage | by hand: time | by hand: longest write outage | Mofang steps | by hand |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for m in &ops {
        let h = hand.iter().find(|h| h.what == m.what);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            m.what,
            secs(m.took),
            secs(outage(&outcome.acks, m.from, m.to)),
            h.map_or("-".into(), |h| secs(h.took)),
            h.map_or("-".into(), |h| secs(outage(
                &hand_outcome.acks,
                h.from,
                h.to
            ))),
            m.note,
            h.map_or("-", |h| h.note.as_str()),
        );
    }
    println!();
    println!(
        "writes: Mofang {} acknowledged, {lost} lost; by hand {} acknowledged, {hand_lost} lost",
        outcome.acked.len(),
        hand_outcome.acked.len()
    );
    println!();
    println!("where each Mofang outage fell (after the operation's POST):");
    for m in &ops {
        println!("- {}", outage_place(m, &outcome.acks));
    }
    println!();
    println!("the primary's semi-sync counters during each longest outage (read every 250 ms):");
    for m in &ops {
        println!("- {}", semi_sync_during(m, &outcome.acks, &samples));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_outage_is_the_longest_gap_around_the_window() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let acks: Vec<Ack> = [0, 10, 20, 500, 510, 2000, 2010]
            .into_iter()
            .enumerate()
            .map(|(i, ms)| Ack {
                at: at(ms),
                primary: Arc::from("p"),
                id: i as u64,
            })
            .collect();
        // From 15 to 600: the gap 20 -> 500 counts, 510 -> 2000 too (the first write after
        // the end closes the window).
        assert_eq!(outage(&acks, at(15), at(600)), Duration::from_millis(1490));
        assert_eq!(outage(&acks, at(15), at(400)), Duration::from_millis(480));
        assert_eq!(outage(&acks, at(2005), at(2006)), Duration::from_millis(10));
        // The gap 510 -> 2000 began at the acknowledgement at 510.
        assert_eq!(
            longest_gap(&acks, at(15), at(600)),
            (Duration::from_millis(1490), at(510))
        );
        let m = Measured {
            what: "upgrade".into(),
            took: Duration::from_millis(600),
            from: at(0),
            to: at(600),
            note: String::new(),
            steps: vec![
                ("restart".into(), Duration::ZERO, Duration::from_millis(400)),
                (
                    "switchover".into(),
                    Duration::from_millis(450),
                    Duration::from_millis(2100),
                ),
            ],
        };
        assert_eq!(
            outage_place(&m, &acks),
            "upgrade: 1.49 s from +0.51 s, during switchover (+0.45 to +2.10 s)"
        );
    }
}

//! Database endpoints that follow the primary, end to end: the scheduler registers members in a
//! real Consul with `primary`/`replica` tags and agent-answered health checks; a real HAProxy
//! runs the config `mofang instance haproxy-config` renders. The primary is killed: Consul's
//! `primary` tag follows within seconds, and an application writing through HAProxy's
//! read-write port keeps working through the same port.

use anyhow::{bail, Context, Result};
use mofang_tests::cluster::binaries;
use mofang_tests::coord::{free_port, ConsulProcess};
use mofang_tests::eventually;
use mofang_tests::scenario::{container_of, docker_cli, mysql, primary_of, Env};
use mysql_async::prelude::Queryable;
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The members Consul resolves for `tag` (passing checks only), as `(id, address:port)`.
async fn consul_members(consul: &str, service: &str, tag: &str) -> Result<Vec<(String, String)>> {
    let v: Value = reqwest::get(format!(
        "{consul}/v1/health/service/{service}?tag={tag}&passing=true"
    ))
    .await?
    .json()
    .await?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let s = &e["Service"];
            (
                s["ID"].as_str().unwrap_or_default().to_owned(),
                format!(
                    "{}:{}",
                    s["Address"].as_str().unwrap_or_default(),
                    s["Port"]
                ),
            )
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_tags_and_haproxy_follow_a_failover() -> Result<()> {
    let consul = ConsulProcess::start().await?;
    let prefix = mofang_tests::unique_name("mofang");
    let env = Env::start_with(
        3,
        &format!(
            "store = \"consul\"\n[consul]\naddress = \"{}\"\nprefix = \"{prefix}/\"\n\
             [failover]\nlease_ttl_ms = 2000\n",
            consul.http
        ),
    )
    .await?;
    let name = mofang_tests::unique_name("ep");
    let inst = env.create(&name, "mariadb", 2).await?;
    let pw = env.app_password(&name).await?;
    let primary = primary_of(&inst)?;
    let pid = primary.id.clone();

    // Consul: exactly the primary behind `primary.<instance>`, the replicas behind `replica`.
    eventually("primary in Consul", Duration::from_secs(30), || async {
        let p = consul_members(&consul.http, &name, "primary").await?;
        let r = consul_members(&consul.http, &name, "replica").await?;
        if p.len() == 1 && p[0].0 == pid && p[0].1 == primary.address && r.len() == 2 {
            Ok(())
        } else {
            bail!("primary {p:?} replicas {r:?}")
        }
    })
    .await?;

    // HAProxy with the rendered config.
    let (rw, ro) = (free_port()?, free_port()?);
    let out = Command::new(binaries()?.join("mofang"))
        .args([
            "instance",
            "haproxy-config",
            &name,
            "--bind",
            "127.0.0.1",
            "--rw-port",
            &rw.to_string(),
            "--ro-port",
            &ro.to_string(),
        ])
        .envs(env.sched.cli_env())
        .env("MOFANG_TOKEN", &env.token)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = env.sched.dir.path().join("haproxy.cfg");
    std::fs::write(&cfg, &out.stdout)?;
    let check = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .output()?;
    assert!(
        check.status.success(),
        "haproxy -c: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let _haproxy = Haproxy(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    let rw_addr = format!("127.0.0.1:{rw}");
    let ro_addr = format!("127.0.0.1:{ro}");
    eventually(
        "writes through the read-write port",
        Duration::from_secs(30),
        || async {
            let mut c = mysql(&rw_addr, &pw).await?;
            c.query_drop("CREATE TABLE IF NOT EXISTS via (id BIGINT PRIMARY KEY)")
                .await?;
            Ok(())
        },
    )
    .await?;

    // The read-only port spreads reads over the replicas, and takes no writes.
    let ids = eventually(
        "reads spread over both replicas",
        Duration::from_secs(30),
        || async {
            let mut seen = BTreeSet::new();
            for _ in 0..8 {
                let mut c = mysql(&ro_addr, &pw).await?;
                let id: Option<u64> = c.query_first("SELECT @@server_id").await?;
                seen.insert(id.context("server_id")?);
            }
            if seen.len() == 2 {
                Ok(seen)
            } else {
                bail!("{seen:?}")
            }
        },
    )
    .await?;
    let mut c = mysql(&rw_addr, &pw).await?;
    let primary_id: Option<u64> = c.query_first("SELECT @@server_id").await?;
    assert!(
        !ids.contains(&primary_id.context("id")?),
        "reads go to replicas only"
    );
    drop(c);
    let mut c = mysql(&ro_addr, &pw).await?;
    assert!(
        c.query_drop("INSERT INTO via VALUES (0)").await.is_err(),
        "read-only port refuses writes"
    );
    drop(c);

    // An application writes through the read-write port while the primary dies.
    let (addr, pass) = (rw_addr.clone(), pw.clone());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let app = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut id = 0u64;
        while !s2.load(std::sync::atomic::Ordering::SeqCst) {
            id += 1;
            let r = tokio::time::timeout(Duration::from_secs(3), async {
                let mut c = mysql(&addr, &pass).await?;
                c.exec_drop("INSERT INTO via VALUES (?)", (id,)).await?;
                anyhow::Ok(())
            })
            .await;
            if matches!(r, Ok(Ok(()))) {
                acked.push((Instant::now(), id));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        acked
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = Instant::now();
    docker_cli(&["kill", &container_of(&pid)])?;
    let after = env
        .new_primary(&name, inst.epoch, Duration::from_secs(60))
        .await?;
    let healthy_at = Instant::now();
    let new = primary_of(&after)?;
    let nid = new.id.clone();
    eventually(
        "Consul's primary tag follows",
        Duration::from_secs(30),
        || async {
            let p = consul_members(&consul.http, &name, "primary").await?;
            if p.len() == 1 && p[0].0 == nid {
                Ok(())
            } else {
                bail!("{p:?}")
            }
        },
    )
    .await?;
    let tag_moved = healthy_at.elapsed();
    eprintln!("Consul primary tag on {nid} {tag_moved:?} after the new primary was healthy ({:?} after the kill)", killed.elapsed());
    assert!(
        tag_moved < Duration::from_secs(5),
        "primary tag follows within 5 s: {tag_moved:?}"
    );

    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acked = app.await?;
    let after_kill: Vec<u64> = acked
        .iter()
        .filter(|(t, _)| *t > killed)
        .map(|(_, i)| *i)
        .collect();
    eprintln!(
        "{} writes acknowledged through HAProxy, {} after the kill",
        acked.len(),
        after_kill.len()
    );
    assert!(
        !after_kill.is_empty(),
        "writes work again through the same port after the failover"
    );
    let mut c = mysql(&new.address, &pw).await?;
    let present: BTreeSet<u64> = c
        .query::<u64, _>("SELECT id FROM via")
        .await?
        .into_iter()
        .collect();
    let lost: Vec<u64> = acked
        .iter()
        .map(|(_, i)| *i)
        .filter(|i| !present.contains(i))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged through HAProxy, lost: {lost:?}"
    );
    Ok(())
}

//! Agent scenarios shared by the runtimes' test binaries: the same scenario runs on Docker
//! (`tests/agent.rs`) and on containerd (`tests/containerd.rs`), driven by an in-process
//! scheduler stand-in, the runtime a parameter (issue 20: one suite for both runtimes).

use crate::cluster::{AgentProcess, TestNetwork};
use crate::eventually;
use crate::fake_scheduler::FakeScheduler;
use crate::unique_name;
use anyhow::{bail, Context, Result};
use mofang_agent::engine::{self, Secrets, Target};
use mofang_agent::runtime::ContainerRuntime;
use mofang_common::proto::{Assignment, MemberStatus};
use mysql_async::prelude::Queryable;
use std::collections::HashMap;
use std::time::Duration;

/// One MiB.
pub const MIB: u64 = 1 << 20;

/// The secrets as an assignment carries them.
pub fn secret_map(s: &Secrets) -> HashMap<String, String> {
    HashMap::from([
        ("admin".into(), s.admin.clone()),
        ("repl".into(), s.repl.clone()),
        ("monitor".into(), s.monitor.clone()),
        ("app".into(), s.app.clone()),
    ])
}

/// Who a test assignment is for.
pub struct Member<'a> {
    /// Instance name.
    pub instance: &'a str,
    /// Member name.
    pub member: &'a str,
    /// `mariadb` or `redis`.
    pub engine: &'a str,
    /// `primary` or `replica`.
    pub role: &'a str,
    /// The primary's address (replicas).
    pub primary: &'a str,
}

/// A small assignment (0.5 core, 384 MiB, 512 MiB disk) at epoch 1.
pub fn assignment(m: Member<'_>, s: &Secrets) -> Assignment {
    let version = if m.engine == "redis" { "7.0" } else { "10.11" };
    Assignment {
        member: m.member.into(),
        instance: m.instance.into(),
        engine: m.engine.into(),
        version: version.into(),
        role: m.role.into(),
        epoch: 1,
        cpu: 0.5,
        memory_bytes: 384 * MIB,
        disk_bytes: 512 * MIB,
        disk_class: "ssd".into(),
        primary_address: m.primary.into(),
        secrets: secret_map(s),
        settings: HashMap::from([("replicas".into(), "1".into())]),
        ..Default::default()
    }
}

/// Waits until the node's heartbeat reports `member` and `pred` holds for it.
pub async fn wait_member(
    fake: &FakeScheduler,
    agent: &AgentProcess,
    member: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&MemberStatus) -> bool,
) -> Result<MemberStatus> {
    let r = eventually(what, timeout, || async {
        let hb = fake
            .last_heartbeat(&agent.node)
            .context("no heartbeat yet")?;
        let m = hb
            .members
            .into_iter()
            .find(|m| m.member == member)
            .context("member not reported")?;
        if pred(&m) {
            Ok(m)
        } else {
            bail!("{member}: {m:?}")
        }
    })
    .await;
    if r.is_err() {
        eprintln!("---- agent log ----\n{}", agent.log());
    }
    r
}

/// The member is healthy.
pub fn healthy(m: &MemberStatus) -> bool {
    m.healthy
}

/// A MariaDB connection to database `app` at `addr`.
pub async fn mysql(addr: &str, user: &str, pass: &str) -> Result<mysql_async::Conn> {
    let t = Target::parse(addr)?;
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(t.host)
        .tcp_port(t.port)
        .user(Some(user))
        .pass(Some(pass))
        .db_name(Some("app"))
        .prefer_socket(false);
    Ok(mysql_async::Conn::new(opts).await?)
}

/// MariaDB primary + replica on one agent: the row on the replica, GTID replication and
/// lossless semi-sync, `kill -9` of mariadbd held and brought back in place with its data,
/// fenced on lease loss and unfenced, removed when no longer desired. `rt` is the runtime
/// the agent runs on (its config in `agent_extra`).
pub async fn mariadb_replicate_heal_and_fence(
    rt: &dyn ContainerRuntime,
    agent_extra: &str,
) -> Result<()> {
    let fake = FakeScheduler::start().await?;
    let net = TestNetwork::create(&unique_name("net"))?;
    let agent = AgentProcess::start(
        &unique_name("node"),
        &fake.endpoint(),
        &net.name,
        4096,
        agent_extra,
    )?;
    let s = Secrets::generate();
    let inst = unique_name("db");
    let (m0, m1) = (format!("{inst}-0"), format!("{inst}-1"));

    // The primary first; the replica once the primary's address is known (as the scheduler does).
    let p = assignment(
        Member {
            instance: &inst,
            member: &m0,
            engine: "mariadb",
            role: "primary",
            primary: "",
        },
        &s,
    );
    fake.set_desired(&agent.node, vec![p.clone()]);
    let primary = wait_member(
        &fake,
        &agent,
        &m0,
        "primary healthy",
        Duration::from_secs(90),
        healthy,
    )
    .await?;
    let r = assignment(
        Member {
            instance: &inst,
            member: &m1,
            engine: "mariadb",
            role: "replica",
            primary: &primary.address,
        },
        &s,
    );
    fake.set_desired(&agent.node, vec![p.clone(), r.clone()]);
    let replica = wait_member(
        &fake,
        &agent,
        &m1,
        "replica healthy",
        Duration::from_secs(90),
        |m| m.healthy && m.replication_ok,
    )
    .await?;

    // A row written on the primary by the application account is read on the replica.
    let mut c = mysql(&primary.address, "app", &s.app).await?;
    c.query_drop("CREATE TABLE orders (id INT PRIMARY KEY, item VARCHAR(64))")
        .await?;
    c.exec_drop("INSERT INTO orders VALUES (?, ?)", (1, "first"))
        .await?;
    drop(c);
    let raddr = replica.address.clone();
    let app = s.app.clone();
    let item: String = eventually("row on replica", Duration::from_secs(20), || {
        let (raddr, app) = (raddr.clone(), app.clone());
        async move {
            let mut rc = mysql(&raddr, "app", &app).await?;
            let v: Option<String> = rc
                .query_first("SELECT item FROM orders WHERE id = 1")
                .await?;
            v.context("no row yet")
        }
    })
    .await?;
    assert_eq!(item, "first");
    // Issue 19: both members' reported positions follow each write within a few seconds,
    // between the full passes (every 10 s): the probe reads them every second. Three writes,
    // so a full pass falling in the window by chance cannot pass this for it.
    let mut c = mysql(&primary.address, "app", &s.app).await?;
    for id in 10..13 {
        c.exec_drop("INSERT INTO orders VALUES (?, ?)", (id, "moving"))
            .await?;
        let pos: String = c
            .query_first("SELECT @@GLOBAL.gtid_current_pos")
            .await?
            .context("gtid_current_pos")?;
        for m in [&m0, &m1] {
            wait_member(
                &fake,
                &agent,
                m,
                "position reported between full passes",
                Duration::from_secs(4),
                |st| st.position == pos,
            )
            .await?;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(c);
    // The application cannot write on the replica.
    let mut rc = mysql(&replica.address, "app", &s.app).await?;
    assert!(
        rc.query_drop("INSERT INTO orders VALUES (2, 'x')")
            .await
            .is_err(),
        "replica must be read-only"
    );
    drop(rc);

    // GTID replication on the replica, lossless semi-sync active on the primary.
    let mut admin_r = mysql(&replica.address, "mofang_admin", &s.admin).await?;
    let row: mysql_async::Row = admin_r
        .query_first("SHOW SLAVE STATUS")
        .await?
        .context("no slave status")?;
    assert_eq!(
        row.get::<String, _>("Using_Gtid").as_deref(),
        Some("Slave_Pos")
    );
    drop(admin_r);
    let mut admin_p = mysql(&primary.address, "mofang_admin", &s.admin).await?;
    let (_, semi): (String, String) = admin_p
        .query_first("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_status'")
        .await?
        .context("no status")?;
    assert_eq!(semi, "ON");
    let wait_point: String = admin_p
        .query_first("SELECT @@rpl_semi_sync_master_wait_point")
        .await?
        .context("none")?;
    assert_eq!(wait_point, "AFTER_SYNC");
    let (_, yes_tx): (String, String) = admin_p
        .query_first("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_yes_tx'")
        .await?
        .context("none")?;
    assert!(
        yes_tx.parse::<u64>()? >= 1,
        "the insert must have been acknowledged by the replica"
    );
    drop(admin_p);

    // kill -9 of mariadbd inside the primary: a primary with replicas is held down and
    // reported at once, for the scheduler to decide; re-elected at a newer epoch, the agent
    // brings it back on the same container and volume.
    let before = primary.container_id.clone();
    let out = rt.exec(&before, &["pkill", "-9", "mariadbd"], None).await?;
    // 137: the exec itself died with the container, which is the point.
    assert!([0, 137].contains(&out.exit_code), "pkill: {out:?}");
    let held = wait_member(
        &fake,
        &agent,
        &m0,
        "dead primary held",
        Duration::from_secs(30),
        |m| m.held && !m.healthy,
    )
    .await?;
    assert_eq!(held.container_state, "exited", "held down, not restarted");
    let mut again = p.clone();
    again.epoch += 1;
    let mut r2 = r.clone();
    r2.epoch += 1;
    fake.set_desired(&agent.node, vec![again, r2]);
    let healed = wait_member(
        &fake,
        &agent,
        &m0,
        "primary restarted",
        Duration::from_secs(60),
        |m| m.healthy && m.restarts >= 1,
    )
    .await?;
    assert_eq!(
        healed.container_id, before,
        "same container, restarted in place"
    );
    let mut c = mysql(&healed.address, "app", &s.app).await?;
    let item: Option<String> = c
        .query_first("SELECT item FROM orders WHERE id = 1")
        .await?;
    assert_eq!(
        item.as_deref(),
        Some("first"),
        "data written before the crash survives"
    );
    c.exec_drop("INSERT INTO orders VALUES (?, ?)", (3, "after-restart"))
        .await?;
    drop(c);

    // Scheduler lease lost: the agent fences its primary; application writes fail.
    fake.refuse_heartbeats(true);
    let addr = healed.address.clone();
    let attempt = std::sync::atomic::AtomicU32::new(1000);
    eventually(
        "write refused while fenced",
        Duration::from_secs(15),
        || {
            let (addr, app) = (addr.clone(), app.clone());
            let id = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move {
                let mut c = mysql(&addr, "app", &app).await?;
                match c
                    .exec_drop("INSERT INTO orders VALUES (?, ?)", (id, "before fence"))
                    .await
                {
                    Err(e) if e.to_string().contains("read-only") => Ok(()),
                    Err(e) => bail!("unexpected error {e}"),
                    Ok(()) => bail!("write accepted: not fenced yet"),
                }
            }
        },
    )
    .await?;
    // Once fenced, it stays fenced while the lease is lost: every later write is refused.
    // The fence also ends application sessions (again on each pass while the lease is out),
    // so a session can be closed as it opens: that write is refused too. The count below
    // proves that none of them was accepted.
    for i in 0..5 {
        match mysql(&addr, "app", &app).await {
            Ok(mut c) => {
                let r = c
                    .exec_drop(
                        "INSERT INTO orders VALUES (?, ?)",
                        (2000 + i, "while fenced"),
                    )
                    .await;
                assert!(r.is_err(), "write {i} accepted while fenced");
            }
            Err(e) => eprintln!("write {i}: session refused while fenced: {e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Lease back: unfenced, writes work again.
    fake.refuse_heartbeats(false);
    eventually(
        "write accepted after unfence",
        Duration::from_secs(15),
        || {
            let (addr, app) = (addr.clone(), app.clone());
            async move {
                let mut c = mysql(&addr, "app", &app).await?;
                c.exec_drop("INSERT INTO orders VALUES (?, ?)", (3000, "unfenced"))
                    .await?;
                Ok(())
            }
        },
    )
    .await?;
    let mut c = mysql(&addr, "app", &app).await?;
    let n: Option<i64> = c
        .query_first("SELECT COUNT(*) FROM orders WHERE id BETWEEN 2000 AND 2999")
        .await?;
    assert_eq!(n, Some(0), "no write was accepted while fenced");
    drop(c);

    // Leaving desired state removes container and volume.
    fake.set_desired(&agent.node, vec![]);
    eventually("members removed", Duration::from_secs(60), || async {
        let left = rt.list(&[("mofang.node", agent.node.as_str())]).await?;
        let vols = std::fs::read_dir(agent.dir.path().join("disk0"))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .count();
        if left.is_empty() && vols == 0 {
            Ok(())
        } else {
            bail!("{} containers, {vols} volume dirs left", left.len())
        }
    })
    .await?;
    Ok(())
}

/// A Redis connection as `user`.
pub async fn redis_conn(
    addr: &str,
    user: &str,
    pass: &str,
) -> Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://{user}:{pass}@{addr}/"))?;
    Ok(client.get_multiplexed_async_connection().await?)
}

/// A Redis primary and its replica on one agent driven by the scheduler stand-in, both
/// healthy and replicating.
pub struct RedisPair {
    /// The scheduler stand-in.
    pub fake: FakeScheduler,
    /// The members' network.
    pub net: TestNetwork,
    /// The agent.
    pub agent: AgentProcess,
    /// The instance's secrets.
    pub s: Secrets,
    /// Instance name.
    pub inst: String,
    /// The primary's last status.
    pub primary: MemberStatus,
    /// The replica's last status.
    pub replica: MemberStatus,
}

impl RedisPair {
    /// Starts both on a new agent whose config holds `agent_extra`.
    pub async fn start(agent_extra: &str) -> Result<Self> {
        let fake = FakeScheduler::start().await?;
        let net = TestNetwork::create(&unique_name("net"))?;
        let agent = AgentProcess::start(
            &unique_name("node"),
            &fake.endpoint(),
            &net.name,
            4096,
            agent_extra,
        )?;
        let s = Secrets::generate();
        let inst = unique_name("cache");
        let (m0, m1) = (format!("{inst}-0"), format!("{inst}-1"));
        let p = assignment(
            Member {
                instance: &inst,
                member: &m0,
                engine: "redis",
                role: "primary",
                primary: "",
            },
            &s,
        );
        fake.set_desired(&agent.node, vec![p.clone()]);
        let primary = wait_member(
            &fake,
            &agent,
            &m0,
            "primary healthy",
            Duration::from_secs(60),
            healthy,
        )
        .await?;
        let r = assignment(
            Member {
                instance: &inst,
                member: &m1,
                engine: "redis",
                role: "replica",
                primary: &primary.address,
            },
            &s,
        );
        fake.set_desired(&agent.node, vec![p, r]);
        let replica = wait_member(
            &fake,
            &agent,
            &m1,
            "replica healthy",
            Duration::from_secs(60),
            |m| m.healthy && m.replication_ok,
        )
        .await?;
        Ok(RedisPair {
            fake,
            net,
            agent,
            s,
            inst,
            primary,
            replica,
        })
    }
}

/// Redis primary + replica on one agent: the key on the replica, the replica refuses writes,
/// fence (`CLIENT PAUSE WRITE`) holds writes and unfence releases them. The agent's runtime
/// is set by `agent_extra`.
pub async fn redis_replicate_and_fence(agent_extra: &str) -> Result<()> {
    let RedisPair {
        fake: _fake,
        net: _net,
        agent: _agent,
        s,
        primary,
        replica,
        ..
    } = RedisPair::start(agent_extra).await?;

    let mut pc = redis_conn(&primary.address, "app", &s.app).await?;
    let _: () = redis::cmd("SET")
        .arg("greeting")
        .arg("hello")
        .query_async(&mut pc)
        .await?;
    let rc = redis_conn(&replica.address, "app", &s.app).await?;
    let v: String = eventually("key on replica", Duration::from_secs(10), || {
        let mut rc = rc.clone();
        async move {
            let v: Option<String> = redis::cmd("GET")
                .arg("greeting")
                .query_async(&mut rc)
                .await?;
            v.context("not replicated yet")
        }
    })
    .await?;
    assert_eq!(v, "hello");
    let mut rc = rc;
    let denied: redis::RedisResult<()> = redis::cmd("SET")
        .arg("x")
        .arg("y")
        .query_async(&mut rc)
        .await;
    assert!(denied.is_err(), "replica must refuse writes");

    // Fence primitive: CLIENT PAUSE WRITE holds application writes; unfence releases them.
    let target = Target::parse(&primary.address)?;
    let redis = engine::for_kind("redis", "7.0").context("redis engine")?;
    redis.fence(&target, &s).await?;
    let blocked = tokio::time::timeout(Duration::from_secs(1), async {
        let r: redis::RedisResult<()> = redis::cmd("SET")
            .arg("during")
            .arg("fence")
            .query_async(&mut pc)
            .await;
        r
    })
    .await;
    assert!(blocked.is_err(), "a write must not complete while fenced");
    redis.unfence(&target, &s).await?;
    let mut pc2 = redis_conn(&primary.address, "app", &s.app).await?;
    let _: () = redis::cmd("SET")
        .arg("after")
        .arg("unfence")
        .query_async(&mut pc2)
        .await?;
    let v: String = redis::cmd("GET").arg("after").query_async(&mut pc2).await?;
    assert_eq!(v, "unfence");
    Ok(())
}

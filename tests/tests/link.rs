//! The agent's scheduler link against the fake scheduler: register, heartbeat and hold the lease, follow the
//! desired state, lose the lease when the scheduler goes away, and fail over past a dead endpoint.

use anyhow::{bail, Context, Result};
use mofang_agent::link::{self, Lease, LinkConfig, NodeSource};
use mofang_common::proto::{Assignment, DesiredState, HeartbeatRequest, RegisterRequest};
use mofang_tests::fake_scheduler::FakeScheduler;
use mofang_tests::{init_tracing, unique_name};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long any expected state may take to show up.
const DEADLINE: Duration = Duration::from_secs(15);

/// A node with nothing on it.
struct Node(String);

impl NodeSource for Node {
    fn register_request(&self) -> RegisterRequest {
        RegisterRequest {
            node: self.0.clone(),
            advertise_address: "127.0.0.1".into(),
            cpu: 2.0,
            memory_bytes: 1 << 30,
            agent_version: "test".into(),
            ..Default::default()
        }
    }

    fn heartbeat_request(&self) -> HeartbeatRequest {
        HeartbeatRequest {
            node: self.0.clone(),
            ..Default::default()
        }
    }
}

/// A running link and what it publishes.
struct Link {
    node: String,
    lease: Lease,
    desired: watch::Receiver<Option<DesiredState>>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Link {
    fn start(schedulers: Vec<String>) -> Link {
        let node = unique_name("link");
        let cfg = LinkConfig {
            node: node.clone(),
            schedulers,
            heartbeat_interval: Duration::from_millis(200),
            lease_ttl: Duration::from_secs(1),
            consul: None,
            tls: None,
            current: Default::default(),
        };
        let lease = Lease::new(cfg.lease_ttl);
        let (tx, desired) = watch::channel(None);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(link::run(
            cfg,
            Arc::new(Node(node.clone())),
            tx,
            lease.clone(),
            shutdown.clone(),
        ));
        Link {
            node,
            lease,
            desired,
            shutdown,
            task,
        }
    }

    fn revision(&self) -> Option<u64> {
        self.desired.borrow().as_ref().map(|d| d.revision)
    }

    async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .context("link did not stop on shutdown")?
            .context("link task failed")
    }
}

/// Polls `ok` every 50 ms until it holds or the deadline passes.
async fn until(what: &str, mut ok: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > DEADLINE {
            bail!("{what}: not true after {DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn member(name: &str) -> Assignment {
    Assignment {
        member: name.into(),
        instance: "i1".into(),
        engine: "redis".into(),
        version: "7.0".into(),
        role: "primary".into(),
        epoch: 1,
        ..Default::default()
    }
}

#[tokio::test]
async fn registers_heartbeats_and_holds_the_lease() -> Result<()> {
    init_tracing();
    let fake = FakeScheduler::start().await?;
    let link = Link::start(vec![fake.endpoint()]);

    until("registration arrives", || {
        fake.registered(&link.node).is_some()
    })
    .await?;
    let reg = fake.registered(&link.node).context("registration")?;
    assert_eq!(reg.agent_version, "test");
    until("two heartbeats arrive", || fake.heartbeats(&link.node) >= 2).await?;
    let hb = fake.last_heartbeat(&link.node).context("heartbeat")?;
    assert_eq!(hb.node, link.node);
    until("lease becomes valid", || link.lease.valid()).await?;
    // The watch delivers the node's state at once, even before anything was set.
    until("initial desired state", || link.revision() == Some(0)).await?;

    link.stop().await?;
    fake.stop().await;
    Ok(())
}

#[tokio::test]
async fn follows_the_desired_state() -> Result<()> {
    init_tracing();
    let fake = FakeScheduler::start().await?;
    let mut link = Link::start(vec![fake.endpoint()]);
    until("initial desired state", || link.revision() == Some(0)).await?;

    let rev = fake.set_desired(&link.node, vec![member("m1")]);
    until("revision 1 arrives", || link.revision() == Some(rev)).await?;
    let rev = fake.set_desired(&link.node, vec![member("m1"), member("m2")]);
    tokio::time::timeout(
        DEADLINE,
        link.desired
            .wait_for(|d| d.as_ref().is_some_and(|d| d.revision == rev)),
    )
    .await
    .context("revision 2 did not arrive")?
    .context("desired watch closed")?;
    let members = link.desired.borrow().as_ref().map(|d| {
        d.members
            .iter()
            .map(|m| m.member.clone())
            .collect::<Vec<_>>()
    });
    assert_eq!(members, Some(vec!["m1".to_owned(), "m2".to_owned()]));

    link.stop().await?;
    fake.stop().await;
    Ok(())
}

#[tokio::test]
async fn loses_the_lease_when_the_scheduler_goes_away() -> Result<()> {
    init_tracing();
    let fake = FakeScheduler::start().await?;
    let link = Link::start(vec![fake.endpoint()]);
    until("lease becomes valid", || link.lease.valid()).await?;
    let rev = fake.set_desired(&link.node, vec![member("m1")]);
    until("desired state arrives", || link.revision() == Some(rev)).await?;

    fake.stop().await;
    until("lease expires", || !link.lease.valid()).await?;
    // What was desired stays known while the scheduler is away.
    assert_eq!(link.revision(), Some(rev));

    link.stop().await?;
    Ok(())
}

#[tokio::test]
async fn refused_heartbeats_expire_the_lease_and_it_comes_back() -> Result<()> {
    init_tracing();
    let fake = FakeScheduler::start().await?;
    let link = Link::start(vec![fake.endpoint()]);
    until("lease becomes valid", || link.lease.valid()).await?;

    fake.refuse_heartbeats(true);
    until("lease expires", || !link.lease.valid()).await?;
    fake.refuse_heartbeats(false);
    until("lease is back", || link.lease.valid()).await?;

    link.stop().await?;
    fake.stop().await;
    Ok(())
}

#[tokio::test]
async fn fails_over_past_a_dead_endpoint() -> Result<()> {
    init_tracing();
    let fake = FakeScheduler::start().await?;
    let link = Link::start(vec!["http://127.0.0.1:1".into(), fake.endpoint()]);

    until("registration arrives", || {
        fake.registered(&link.node).is_some()
    })
    .await?;
    until("two heartbeats arrive", || fake.heartbeats(&link.node) >= 2).await?;
    until("lease becomes valid", || link.lease.valid()).await?;
    let rev = fake.set_desired(&link.node, vec![member("m1")]);
    until("desired state arrives", || link.revision() == Some(rev)).await?;

    link.stop().await?;
    fake.stop().await;
    Ok(())
}

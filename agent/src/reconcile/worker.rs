//! The member workers and their supervisor: one worker per member runs passes
//! ([`reconcile_member`]) on wake-up or requeue, backs off on errors, and tears the member
//! down when it leaves the desired state. A container event makes the member's next pass a
//! full one; other wake-ups (a new desired state, the sweep) leave that to
//! [`super::decide::pass_kind`].

use super::status::{status, status_keeping_last};
use super::{reconcile_member, Action, Error, Result, Shared, WorkerMemo};
use futures::StreamExt;
use mofang_common::labels;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

/// How the supervisor wakes a member's worker: at once, and with a full pass when the
/// member's container had an event (a member in good order is otherwise only probed).
#[derive(Default)]
struct Wake {
    notify: Notify,
    container_event: AtomicBool,
}

impl Wake {
    /// Wakes the worker for a look (a new desired state, the sweep).
    fn look(&self) {
        self.notify.notify_one();
    }

    /// Wakes the worker for a full pass: its container had an event, or events may have
    /// been missed.
    fn container_event(&self) {
        self.container_event.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }
}

/// Removes a member that left the desired state: container first, then its volume.
async fn teardown(sh: &Shared, member: &str) -> Result<()> {
    if let Some(c) = sh.find_container(member).await? {
        info!(member, container = %c.name, "member left desired state: removing its container");
        sh.runtime
            .stop(&c.id, Duration::from_millis(sh.cfg.stop_grace_ms))
            .await?;
        sh.runtime.remove(&c.id, true).await?;
    }
    // Only now, with the container gone and the member out of desired state, does the
    // volume go (architecture: a volume lives as long as its member).
    if sh.volumes.get(member).is_some() {
        sh.volumes.delete(member)?;
        info!(member, "volume deleted");
    }
    sh.state.remove_member(member)?;
    if let Ok(mut m) = sh.statuses.lock() {
        m.remove(member);
    }
    Ok(())
}

/// A member's worker: reconciles on wake-up or requeue until the member leaves desired state.
async fn member_worker(
    sh: Arc<Shared>,
    member: String,
    wake: Arc<Wake>,
    shutdown: CancellationToken,
) {
    let mut memo = WorkerMemo::default();
    let mut failures = 0u32;
    loop {
        let Some(a) = sh.assignment(&member) else {
            match teardown(&sh, &member).await {
                Ok(()) => return,
                Err(e) => {
                    warn!(member, error = %e, "teardown failed, retrying");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
            }
        };
        let started = Instant::now();
        let container_event = wake.container_event.swap(false, Ordering::Relaxed);
        let outcome = reconcile_member(&sh, &a, &mut memo, container_event).await;
        {
            use std::sync::atomic::Ordering::Relaxed;
            let took = started.elapsed();
            sh.stats.pass_seconds.observe(took);
            let us = took.as_micros().min(u128::from(u64::MAX)) as u64;
            sh.stats.micros.fetch_add(us, Relaxed);
            match &outcome {
                Ok(_) => sh.stats.ok.fetch_add(1, Relaxed),
                Err(_) => sh.stats.errors.fetch_add(1, Relaxed),
            };
        }
        let delay = match outcome {
            Ok(Action::Requeue(d)) => {
                failures = 0;
                d
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let failed = matches!(
                    e,
                    Error::UnsupportedEngine { .. } | Error::BadAssignment(_) | Error::Volume(_)
                );
                if failures == 1 || failures % 30 == 0 {
                    warn!(member, error = %e, failures, "reconcile failed");
                }
                let st = sh.state.load_member(&member).unwrap_or_default();
                let c = sh.find_container(&member).await.ok().flatten();
                // The last address and position stay: a member whose server did not answer
                // still holds what it had (the scheduler compares positions on failover).
                let mut s = match &c {
                    Some(c) => status_keeping_last(&sh, &a, &st, c),
                    None => status(&sh, &a, &st, None, ""),
                };
                if let (Error::Engine(_), Some(c)) = (&e, &c) {
                    // The server did not answer in time: that is a failed check.
                    memo.ping_failures += 1;
                    s.failed_checks = memo.failed_checks(&c.id);
                }
                s.failed = failed;
                s.reason = e.to_string();
                sh.set_status(s);
                // Back off on repeated failures: 0.5 s, 1 s, 2 s ... 10 s.
                Duration::from_millis((250u64 << failures.min(6)).min(10_000))
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake.notify.notified() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Runs the reconcile supervisor until shutdown: one worker per desired member, container
/// events wake the worker concerned, members and containers no longer desired are removed.
/// Stopping the agent never stops the databases.
pub async fn run(sh: Arc<Shared>, shutdown: CancellationToken) {
    let mut workers: HashMap<String, (Arc<Wake>, tokio::task::JoinHandle<()>)> = HashMap::new();
    let mut desired = sh.desired.clone();
    let mut events = sh.runtime.events((labels::NODE, sh.cfg.node.as_str()));
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    loop {
        // Spawn workers for desired members, and for members on disk or in Docker that are
        // no longer desired (their worker tears them down). Nothing is removed before a
        // desired state is known.
        // Revision 0 is a scheduler that has nothing for this node yet: not authoritative.
        let current = desired.borrow_and_update().clone();
        if let Some(ds) = current.filter(|d| d.revision > 0) {
            let mut names: Vec<String> = ds.members.iter().map(|a| a.member.clone()).collect();
            names.extend(sh.state.members());
            names.extend(sh.volumes.list().into_iter().map(|v| v.member));
            // Which members have a container: one listing, nothing inspected.
            if let Ok(cs) = sh
                .runtime
                .list_brief(&[(labels::NODE, sh.cfg.node.as_str())])
                .await
            {
                names.extend(
                    cs.into_iter()
                        .filter_map(|c| c.labels.get(labels::MEMBER).cloned()),
                );
            }
            workers.retain(|_, (_, h)| !h.is_finished());
            for name in names {
                if mofang_common::MemberId::new(name.clone()).is_err() {
                    continue;
                }
                match workers.get(&name) {
                    Some((wake, _)) => wake.look(),
                    None => {
                        let wake = Arc::new(Wake::default());
                        let h = tokio::spawn(
                            member_worker(
                                sh.clone(),
                                name.clone(),
                                wake.clone(),
                                shutdown.child_token(),
                            )
                            .instrument(tracing::info_span!("member", member = %name)),
                        );
                        workers.insert(name, (wake, h));
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = desired.changed() => {
                if r.is_err() { break; }
                if let Some(ds) = desired.borrow().as_ref() {
                    if let Err(e) = sh.state.save_desired(ds) {
                        warn!(error = %e, "could not persist desired state");
                    }
                    debug!(revision = ds.revision, members = ds.members.len(), "desired state received");
                }
            }
            ev = events.next() => match ev {
                Some(Ok(ev)) => {
                    // The rest of a burst is handled now too: one listing for all of it.
                    let more = crate::runtime::ready_events(&mut events);
                    for ev in std::iter::once(ev).chain(more.events) {
                        if let Some(m) = ev.labels.get(labels::MEMBER) {
                            if let Some((wake, _)) = workers.get(m) {
                                debug!(member = %m, action = %ev.action, "container event");
                                wake.container_event();
                            }
                        }
                    }
                    if more.broken {
                        workers.values().for_each(|(wake, _)| wake.container_event());
                        events = sh.runtime.events((labels::NODE, sh.cfg.node.as_str()));
                    }
                    continue;
                }
                Some(Err(e)) => {
                    warn!(error = %e, "container event stream failed, reconnecting");
                    // Events may be lost meanwhile: every member gets a full pass.
                    workers.values().for_each(|(wake, _)| wake.container_event());
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    events = sh.runtime.events((labels::NODE, sh.cfg.node.as_str()));
                }
                None => {
                    workers.values().for_each(|(wake, _)| wake.container_event());
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    events = sh.runtime.events((labels::NODE, sh.cfg.node.as_str()));
                }
            },
            _ = sweep.tick() => {}
        }
    }
    for (_, (_, h)) in workers {
        let _ = h.await;
    }
}

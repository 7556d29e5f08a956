//! Step 3, the member's container: created and started when missing; when not running,
//! restarted, held (a dead primary waits for the scheduler) or left alone in a crash loop,
//! as [`decide::on_exit`] says. The agent is the supervisor (restart policy `no`). Also the
//! container's spec and the rebuild of a diverged replica.

use super::config::Configured;
use super::decide::{self, OnExit};
use super::status::{report, report_held, status_keeping_last};
use super::{now_ms, replicas_of, Action, Member, Result, Shared, Step, WorkerMemo};
use super::{CRASH_WINDOW_MS, MAX_CRASH_RESTARTS};
use crate::config::NetworkMode;
use crate::engine::Engine;
use crate::runtime::{ContainerInfo, ContainerSpec, ContainerState, Mount, Network};
use crate::state::MemberState;
use crate::volume::Volume;
use mofang_common::proto::Assignment;
use mofang_common::{labels, Role};
use std::collections::BTreeMap;
use std::time::Duration;
use tracing::{info, warn};

/// Step 3a: the member's container, created and started when missing. A replica still
/// waiting for its primary's address gets none yet (the pass stops there), unless its
/// engine starts it read-only without naming the primary (MariaDB): then its server boots
/// while the primary's does, and the role step waits for the address instead.
pub(super) async fn present(
    m: &Member<'_>,
    cfg: &Configured,
    vol: &Volume,
    st: &mut MemberState,
) -> Result<Step<ContainerInfo>> {
    let (sh, a, member) = (m.sh, m.a, m.name());
    if let Some(c) = sh.find_container(member).await? {
        return Ok(Step::Next(c));
    }
    if m.role.waiting() && !m.engine.starts_before_primary_known() {
        report(
            sh,
            a,
            st,
            None,
            None,
            false,
            "waiting for the primary's address".into(),
        );
        return Ok(Step::Stop(Action::Requeue(Duration::from_secs(1))));
    }
    // A restored instance's primary, or a replica seeded from a backup: its volume is filled
    // from the backup first.
    if let Step::Stop(action) = super::restore::fill(m, vol, st).await? {
        return Ok(Step::Stop(action));
    }
    // A new or rebuilt MariaDB replica with a donor agent named: a physical copy of the
    // donor (decision 167); a failed one leaves the logical copy below.
    if let Step::Stop(action) = super::seed::copy(m, vol, st).await? {
        return Ok(Step::Stop(action));
    }
    // A replica on a fresh volume copies a snapshot of its primary first.
    let fresh = vol.is_fresh();
    if fresh && m.role.role() == Role::Replica && !st.needs_seed {
        st.needs_seed = true;
        sh.state.save_member(member, st)?;
    }
    let spec = container_spec(
        sh,
        a,
        m.engine,
        m.version,
        &vol.path,
        &cfg.network,
        cfg.port,
    );
    let id = sh.runtime.create(&spec).await?;
    info!(member, container = %&id[..12.min(id.len())], image = %spec.image, "created container");
    sh.runtime.start(&id).await?;
    // A container started now carries out every restart and rebuild asked so far.
    if st.restart_generation < a.restart_generation || st.rebuild_generation < a.rebuild_generation
    {
        st.restart_generation = st.restart_generation.max(a.restart_generation);
        st.rebuild_generation = st.rebuild_generation.max(a.rebuild_generation);
        sh.state.save_member(member, st)?;
    }
    Ok(Step::Next(sh.runtime.inspect(&id).await?))
}

/// A member of a stopped instance: its container stopped (with the grace period) and kept
/// so, volume and state kept; reported as stopped, never as a failure or a held primary.
pub(super) async fn stopped(
    m: &Member<'_>,
    st: &mut MemberState,
    memo: &mut WorkerMemo,
) -> Result<Action> {
    let (sh, a, member) = (m.sh, m.a, m.name());
    let found = sh.find_container(member).await?;
    if let Some(c) = &found {
        if c.state == ContainerState::Running || c.state == ContainerState::Paused {
            info!(member, "stopping the member: its instance is stopped");
            sh.runtime
                .stop(&c.id, Duration::from_millis(sh.cfg.stop_grace_ms))
                .await?;
        }
    }
    // A stop is not a death: nothing is held, no crash counted; and once started again the
    // server's silence while it boots is no failed check until it has answered.
    memo.answered_in = None;
    memo.ping_failures = 0;
    st.held_at_epoch = None;
    st.stopped = true;
    sh.state.save_member(member, st)?;
    let c = match found {
        Some(c) => Some(sh.runtime.inspect(&c.id).await?),
        None => None,
    };
    let mut s = super::status::status(sh, a, st, c.as_ref(), "");
    s.container_state = super::STOPPED.into();
    s.reason = "stopped: the instance is stopped".into();
    sh.set_status(s);
    Ok(Action::Requeue(Duration::from_secs(5)))
}

/// After an upgrade's restart, once the server answers on its new version: the engine's
/// upgrade of its data (MariaDB: `mariadb-upgrade`, not binlogged), once; until it has run
/// the member reports no version and is not healthy, so the upgrade waits for it.
pub(super) async fn finish_upgrade(
    m: &Member<'_>,
    container: &ContainerInfo,
    st: &mut MemberState,
) -> Result<Step<()>> {
    let (sh, a, member) = (m.sh, m.a, m.name());
    let Some(cmd) = m.engine.upgrade_command().filter(|_| st.upgrade_pending) else {
        return Ok(Step::Next(()));
    };
    let out = sh.runtime.exec(&container.id, &cmd, None).await?;
    if out.exit_code != 0 {
        let why = format!(
            "{} on {} failed (exit code {}): {}",
            cmd[0],
            m.version,
            out.exit_code,
            out.stderr
                .lines()
                .chain(out.stdout.lines())
                .last()
                .unwrap_or_default()
        );
        warn!(member, "{why}");
        report(sh, a, st, Some(container), None, false, why);
        return Ok(Step::Stop(Action::Requeue(Duration::from_secs(5))));
    }
    info!(
        member,
        version = m.version,
        "data upgraded to the new version"
    );
    st.upgrade_pending = false;
    sh.state.save_member(member, st)?;
    Ok(Step::Next(()))
}

/// Whether the scheduler asked for a restart this member has not had yet.
pub(super) fn restart_due(asked: u64, done: u64) -> bool {
    asked > done
}

/// Step 3b: the container is running. One that exited is held, left in its crash loop, or
/// started again on the same volume; one paused, restarting or dead counts as a failed
/// check like an unanswered ping.
pub(super) async fn running(
    m: &Member<'_>,
    container: ContainerInfo,
    st: &mut MemberState,
    memo: &mut WorkerMemo,
) -> Result<Step<ContainerInfo>> {
    let (sh, a, member) = (m.sh, m.a, m.name());
    match container.state {
        _ if restart_due(a.rebuild_generation, st.rebuild_generation)
            && m.role.role() == Role::Replica =>
        {
            // A rebuild the scheduler asked for (never of the primary: it switches over
            // first): container and volume go, the next pass seeds a fresh one from the
            // primary. Recorded once done: an agent that dies in between rebuilds again.
            warn!(
                member,
                generation = a.rebuild_generation,
                "rebuilding the member as the scheduler asked: container and volume removed"
            );
            rebuild(sh, member, &container.id).await?;
            *st = sh.state.load_member(member)?;
            st.rebuild_generation = a.rebuild_generation;
            // The scheduler may fill it from a backup again, even one it was filled from
            // before (a rebuild this agent decides, on divergence, keeps the mark: the same
            // backup would diverge the same way, so it copies from a live member instead).
            st.restored_from = None;
            st.restore_attempt = None;
            st.restart_generation = st.restart_generation.max(a.restart_generation);
            sh.state.save_member(member, st)?;
            memo.answered_in = None;
            memo.ping_failures = 0;
            report(
                sh,
                a,
                st,
                None,
                None,
                false,
                "rebuilding: seeded again from the primary".into(),
            );
            Ok(Step::Stop(Action::Requeue(Duration::from_millis(100))))
        }
        ContainerState::Running
            if restart_due(a.restart_generation, st.restart_generation)
                && a.version != st.version =>
        {
            // An upgrade's restart step: the server stopped with the grace period (a clean
            // shutdown: a newer InnoDB reads no older redo log), its container removed and
            // created again on the new version's image by the next pass, on the same volume.
            // The new version is recorded first: an agent that dies in between creates the
            // new container, never the old one again.
            info!(
                member,
                from = %st.version,
                to = %a.version,
                generation = a.restart_generation,
                "upgrading the member as the scheduler asked: container recreated on the new version"
            );
            sh.runtime
                .stop(&container.id, Duration::from_millis(sh.cfg.stop_grace_ms))
                .await?;
            st.version = a.version.clone();
            st.upgrade_pending = m.engine.upgrade_command().is_some();
            sh.state.save_member(member, st)?;
            // Its address stays: clients, replicas and the member's certificate keep it.
            sh.runtime.remove_keeping_address(&container.id).await?;
            memo.answered_in = None;
            memo.ping_failures = 0;
            report(
                sh,
                a,
                st,
                None,
                None,
                false,
                format!("upgrading to {}: container recreated", a.version),
            );
            Ok(Step::Stop(Action::Requeue(Duration::from_millis(100))))
        }
        ContainerState::Running if restart_due(a.restart_generation, st.restart_generation) => {
            // A restart the scheduler asked for (rolling restart): stopped with the grace
            // period and started again on the same container and volume. Not a crash: the
            // crash-loop window is left alone. Recorded once started again: an agent that
            // dies in between restarts it once more rather than never.
            info!(
                member,
                generation = a.restart_generation,
                "restarting the member as the scheduler asked"
            );
            sh.runtime
                .stop(&container.id, Duration::from_millis(sh.cfg.stop_grace_ms))
                .await?;
            // A resize's memory (and CPU) limits are taken while it is down: the server
            // starts with the buffers its new config sizes from them.
            let (cpus, memory) = limits(a);
            if differs(&container, cpus, memory) {
                info!(
                    member,
                    cpus,
                    memory_mib = memory >> 20,
                    "new container limits"
                );
                sh.runtime
                    .update_limits(&container.id, cpus, memory)
                    .await?;
            }
            sh.runtime.start(&container.id).await?;
            // Booting again: silence is no failed check until the server has answered.
            memo.answered_in = None;
            memo.ping_failures = 0;
            st.restart_generation = a.restart_generation;
            sh.state.save_member(member, st)?;
            Ok(Step::Next(sh.runtime.inspect(&container.id).await?))
        }
        ContainerState::Running
            if container.memory_bytes > 0 && (container.cpus - limits(a).0).abs() > 1e-3 =>
        {
            // A resize's CPU limit is taken live (no restart); memory waits for the member's
            // restart step, so the server's buffers follow it.
            let cpus = limits(a).0;
            info!(
                member,
                cpus,
                was = container.cpus,
                "new CPU limit, applied live"
            );
            sh.runtime
                .update_limits(&container.id, cpus, container.memory_bytes)
                .await?;
            Ok(Step::Next(sh.runtime.inspect(&container.id).await?))
        }
        ContainerState::Running => Ok(Step::Next(container)),
        ContainerState::Exited | ContainerState::Created if st.stopped => {
            // Stopped with its instance, which is started again: not a death.
            info!(member, "starting the member: its instance is started");
            sh.runtime.start(&container.id).await?;
            memo.answered_in = None;
            memo.ping_failures = 0;
            st.stopped = false;
            sh.state.save_member(member, st)?;
            Ok(Step::Next(sh.runtime.inspect(&container.id).await?))
        }
        ContainerState::Exited | ContainerState::Created => {
            let exited = container.state == ContainerState::Exited;
            if decide::newly_held(m.role, replicas_of(a), a.epoch, exited, st) {
                warn!(
                    member,
                    epoch = a.epoch,
                    exit_code = container.exit_code.unwrap_or(-1),
                    "primary container died: held for the scheduler's decision"
                );
                st.held_at_epoch = Some(a.epoch);
                sh.state.save_member(member, st)?;
            }
            match decide::on_exit(st, sh.lease.valid(), now_ms()) {
                OnExit::Hold => {
                    // The scheduler hears of it at once (urgent heartbeat) and decides.
                    report_held(sh, a, st, &container);
                    return Ok(Step::Stop(Action::Requeue(Duration::from_secs(1))));
                }
                OnExit::CrashLooping { newly } => {
                    if newly {
                        warn!(
                            member,
                            restarts = st.crash_restarts_ms.len(),
                            "crash loop: no more restarts"
                        );
                        st.crash_looping = true;
                        sh.state.save_member(member, st)?;
                    }
                    report(
                        sh,
                        a,
                        st,
                        Some(&container),
                        None,
                        true,
                        format!(
                            "crash loop: {MAX_CRASH_RESTARTS} restarts within {} s; not restarted",
                            CRASH_WINDOW_MS / 1000
                        ),
                    );
                    return Ok(Step::Stop(Action::Requeue(Duration::from_secs(5))));
                }
                OnExit::Restart => {}
            }
            let now = now_ms();
            st.crash_restarts_ms.retain(|t| now - t < CRASH_WINDOW_MS);
            if memo.killed_deposed.as_deref() != Some(container.id.as_str()) {
                st.crash_restarts_ms.push(now);
            }
            // The agent is the supervisor (restart policy `no`): bring it back on the same
            // container and volume, with the data it had.
            warn!(
                member,
                exit_code = container.exit_code.unwrap_or(-1),
                oom_killed = container.oom_killed,
                "member container is not running, starting it again"
            );
            sh.runtime.start(&container.id).await?;
            // Booting again in the same container: silence is no failed check until the
            // server has answered (else a silent deposed primary's restart is killed again).
            memo.answered_in = None;
            memo.ping_failures = 0;
            st.restarts += 1;
            sh.state.save_member(member, st)?;
            Ok(Step::Next(sh.runtime.inspect(&container.id).await?))
        }
        other => {
            // Paused, restarting, dead: the database does not answer; it counts as a
            // failed check like an unanswered ping.
            memo.ping_failures += 1;
            let failed = memo.failed_checks(&container.id);
            if kill_if_deposed(m, st, &container, failed, memo).await? {
                return Ok(Step::Stop(Action::Requeue(Duration::from_millis(100))));
            }
            let mut s = status_keeping_last(sh, a, st, &container);
            s.failed_checks = failed;
            s.reason = format!("container {other:?} ({} checks)", memo.ping_failures);
            sh.set_status(s);
            Ok(Step::Stop(Action::Requeue(Duration::from_millis(250))))
        }
    }
}

/// Kills a deposed primary that stopped answering ([`decide::kill_deposed`]); true when it
/// did. Its exit is then not counted as a crash.
pub(super) async fn kill_if_deposed(
    m: &Member<'_>,
    st: &MemberState,
    container: &ContainerInfo,
    failed_checks: u32,
    memo: &mut WorkerMemo,
) -> Result<bool> {
    if !decide::kill_deposed(m.role, m.a.epoch, st, failed_checks) {
        return Ok(false);
    }
    warn!(
        member = m.name(),
        epoch = m.a.epoch,
        failed_checks,
        "deposed primary does not answer: killed, so its clients are cut at once and it can \
         acknowledge nothing when it wakes; it restarts as a replica"
    );
    m.sh.runtime.kill(&container.id, "KILL").await?;
    memo.killed_deposed = Some(container.id.clone());
    // Reported at once: the new primary opens only once this one is known dead (decision
    // 119), and Docker answers a kill once the process is gone.
    if let Ok(c) = m.sh.runtime.inspect(&container.id).await {
        let mut s = status_keeping_last(m.sh, m.a, st, &c);
        s.reason = format!("deposed primary killed after {failed_checks} failed checks");
        m.sh.set_status(s);
    }
    Ok(true)
}

/// Rebuilds a diverged replica: container and volume go, a fresh one is seeded next pass.
pub(super) async fn rebuild(sh: &Shared, member: &str, container: &str) -> Result<()> {
    sh.runtime
        .stop(container, Duration::from_millis(sh.cfg.stop_grace_ms))
        .await?;
    sh.runtime.remove(container, true).await?;
    sh.volumes.delete(member)?;
    let mut st = sh.state.load_member(member)?;
    st.needs_seed = true;
    st.fenced = false;
    st.held_at_epoch = None;
    sh.state.save_member(member, &st)?;
    Ok(())
}

/// The container limits an assignment asks for: CPU cores and memory bytes (unset: one
/// core; at least 64 MiB).
fn limits(a: &Assignment) -> (f64, i64) {
    (
        if a.cpu > 0.0 { a.cpu } else { 1.0 },
        i64::try_from(a.memory_bytes)
            .unwrap_or(i64::MAX)
            .max(64 << 20),
    )
}

/// Whether a container's limits are not the ones asked.
fn differs(c: &ContainerInfo, cpus: f64, memory: i64) -> bool {
    (c.cpus - cpus).abs() > 1e-3 || c.memory_bytes != memory
}

fn container_spec(
    sh: &Shared,
    a: &Assignment,
    engine: &dyn Engine,
    version: &str,
    volume: &std::path::Path,
    network: &NetworkMode,
    port: u16,
) -> ContainerSpec {
    let labels = BTreeMap::from([
        (labels::NODE.to_owned(), sh.cfg.node.clone()),
        (labels::INSTANCE.to_owned(), a.instance.clone()),
        (labels::MEMBER.to_owned(), a.member.clone()),
        (labels::ENGINE.to_owned(), a.engine.clone()),
        ("mofang.version".to_owned(), version.to_owned()),
        ("mofang.port".to_owned(), port.to_string()),
    ]);
    // MariaDB runs a thread per connection, and each thread counts against pids.max.
    let pids_limit = match engine.kind() {
        mofang_common::EngineKind::Mariadb => 2048,
        mofang_common::EngineKind::Redis => 256,
    };
    ContainerSpec {
        name: Shared::container_name(&a.member),
        image: sh.cfg.image(&a.engine, version),
        args: vec![],
        env: vec![],
        labels,
        mounts: vec![
            Mount {
                source: volume.to_owned(),
                target: engine.data_dir().into(),
                read_only: false,
            },
            Mount {
                source: sh.state.config_dir(&a.member),
                target: "/etc/mofang".into(),
                read_only: true,
            },
        ],
        network: match network {
            NetworkMode::Host => Network::Host,
            NetworkMode::Docker(n) => Network::Named(n.clone()),
        },
        publish: None,
        cpus: limits(a).0,
        memory_bytes: limits(a).1,
        pids_limit,
        cap_add: engine.capabilities(),
        user: format!("{0}:{0}", engine.uid()),
        stop_grace: Duration::from_millis(sh.cfg.stop_grace_ms),
    }
}

#[cfg(test)]
mod tests {
    //! The container step on the recording fake runtime.

    use super::super::decide::DesiredRole;
    use super::super::fake::{assignment, rig};
    use super::super::{config, volume};
    use super::*;

    #[tokio::test]
    async fn a_missing_container_is_created_with_the_assignments_limits_and_started() {
        let r = rig(Duration::from_secs(10));
        let a = assignment("primary", 3, "");
        let role = DesiredRole::parse(&a).expect("role");
        let m = Member {
            sh: &r.sh,
            a: &a,
            engine: &r.db,
            role: &role,
            version: "10.11",
        };
        let mut st = MemberState::default();
        let vol = volume::ensure(&m).expect("volume");
        let cfg = config::write(&m, &mut st, None).expect("config");

        let Step::Next(c) = present(&m, &cfg, &vol, &mut st).await.expect("present") else {
            panic!("the pass stopped without a container");
        };
        assert_eq!(r.rt.take_calls(), ["create mofang-db-0", "start c1"]);
        assert_eq!((c.id.as_str(), c.state), ("c1", ContainerState::Running));
        let specs = r.rt.created();
        let [spec] = specs.as_slice() else {
            panic!("one container, not {specs:?}");
        };
        assert_eq!(spec.name, "mofang-db-0");
        assert_eq!(spec.cpus, 0.5);
        assert_eq!(spec.memory_bytes, 256 << 20);
        assert_eq!(spec.pids_limit, 2048, "a MariaDB thread per connection");
        assert_eq!(spec.user, "999:999");
        assert_eq!(spec.network, Network::Host);
        assert_eq!(
            spec.mounts,
            [
                Mount {
                    source: vol.path.clone(),
                    target: "/var/lib/mysql".into(),
                    read_only: false,
                },
                Mount {
                    source: r.sh.state.config_dir("db-0"),
                    target: "/etc/mofang".into(),
                    read_only: true,
                },
            ]
        );
        let label = |k: &str| spec.labels.get(k).map(String::as_str);
        assert_eq!(label(labels::NODE), Some("n1"));
        assert_eq!(label(labels::MEMBER), Some("db-0"));
        assert_eq!(label("mofang.port"), Some(cfg.port.to_string().as_str()));

        // Found the next time, not created again.
        let Step::Next(again) = present(&m, &cfg, &vol, &mut st).await.expect("present") else {
            panic!("the pass stopped without a container");
        };
        assert_eq!(again.id, "c1");
        assert!(r.rt.take_calls().is_empty());
    }

    #[tokio::test]
    async fn a_replica_without_its_primarys_address_gets_no_container_yet() {
        let r = rig(Duration::from_secs(10));
        let a = assignment("replica", 3, "");
        let role = DesiredRole::parse(&a).expect("role");
        let m = Member {
            sh: &r.sh,
            a: &a,
            engine: &r.db,
            role: &role,
            version: "10.11",
        };
        let mut st = MemberState::default();
        let vol = volume::ensure(&m).expect("volume");
        let cfg = config::write(&m, &mut st, None).expect("config");
        let step = present(&m, &cfg, &vol, &mut st).await.expect("present");
        assert!(
            matches!(step, Step::Stop(Action::Requeue(d)) if d == Duration::from_secs(1)),
            "{step:?}"
        );
        assert!(r.rt.take_calls().is_empty(), "nothing created");
        let s = r.sh.statuses.lock().expect("statuses")["db-0"].clone();
        assert_eq!(s.container_state, "missing");
        assert_eq!(s.reason, "waiting for the primary's address");
    }

    #[tokio::test]
    async fn a_replica_of_an_engine_that_starts_read_only_boots_before_its_primary_is_known() {
        let mut r = rig(Duration::from_secs(10));
        r.db.0.lock().expect("db").starts_early = true;
        // No address yet: the server boots anyway, but is not pointed anywhere.
        let s = r.pass(&assignment("replica", 3, "")).await;
        assert_eq!(r.rt.take_calls(), ["create mofang-db-0", "start c1"]);
        assert!(r.db.take_calls().is_empty(), "no role applied: {s:?}");
        assert_eq!(s.reason, "waiting for the primary's address");
        assert!(!s.healthy, "{s:?}");
        // The address arrives: the same container follows the primary, nothing recreated.
        let s = r.pass(&assignment("replica", 3, "10.0.0.9:3306")).await;
        assert!(r.rt.take_calls().is_empty(), "container kept");
        assert_eq!(r.db.take_calls(), ["replicate_from 10.0.0.9:3306"]);
        assert!(s.healthy && s.role == "replica", "{s:?}");
    }

    #[test]
    fn limits_left_at_zero_get_one_core_and_at_least_64_mib() {
        let r = rig(Duration::from_secs(10));
        let mut a = assignment("primary", 3, "");
        a.cpu = 0.0;
        a.memory_bytes = 1 << 20;
        let spec = container_spec(
            &r.sh,
            &a,
            &r.db,
            "10.11",
            std::path::Path::new("/data/db-0"),
            &NetworkMode::Docker("mofang".into()),
            3306,
        );
        assert_eq!(spec.cpus, 1.0);
        assert_eq!(spec.memory_bytes, 64 << 20);
        assert_eq!(spec.network, Network::Named("mofang".into()));
    }
}

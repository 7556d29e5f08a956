//! The reconcile loop (kube-runtime style): desired members of this node against actual
//! containers. One worker per member, idempotent steps, periodic requeue, woken at once by
//! container events. Steps: volume -> config -> container -> server answers -> role. The
//! decisions (the role asked for, a container that is not running, the role step) are pure
//! functions in [`decide`]; this file carries them out.

pub mod decide;

use crate::config::{AgentConfig, NetworkMode};
use crate::engine::{self, Engine, MemberConfig, ObservedRole, Secrets, Target};
use crate::link::Lease;
use crate::runtime::{self, ContainerRuntime, ContainerSpec, ContainerState, Mount, Network};
use crate::state::{self, LocalState, MemberState};
use crate::volume::{self, VolumeManager};
use decide::{DesiredRole, OnExit, RoleStep};
pub use decide::{CRASH_WINDOW_MS, MAX_CRASH_RESTARTS};
use futures::StreamExt;
use mofang_common::labels;
use mofang_common::proto::{Assignment, DesiredState, MemberStatus};
use mofang_common::Role;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

/// Why reconciling a member failed. The member's status carries the message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The assignment names an engine or version this agent cannot run.
    #[error("unsupported engine {engine} {version}")]
    UnsupportedEngine {
        /// Engine asked for.
        engine: String,
        /// Version asked for.
        version: String,
    },
    /// The assignment is malformed (e.g. a replica without a primary address).
    #[error("bad assignment: {0}")]
    BadAssignment(String),
    /// No port is free in the agent's port range.
    #[error("no free port in port_range {0}-{1}")]
    NoFreePort(u16, u16),
    /// Volume reservation failed.
    #[error(transparent)]
    Volume(#[from] volume::Error),
    /// The container runtime failed.
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    /// Local state could not be read or written.
    #[error(transparent)]
    State(#[from] state::Error),
    /// The database did not do what was asked.
    #[error(transparent)]
    Engine(#[from] engine::Error),
    /// Copying a snapshot from the primary into a new replica failed.
    #[error("seeding from the primary failed: {0}")]
    Seed(String),
}

/// Result of reconcile steps.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Member statuses, shared with the heartbeat.
pub type Statuses = Arc<Mutex<BTreeMap<String, MemberStatus>>>;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Reconcile passes, for the agent's metrics.
#[derive(Debug, Default)]
pub struct ReconcileStats {
    /// Passes that ended well.
    pub ok: std::sync::atomic::AtomicU64,
    /// Passes that ended with an error.
    pub errors: std::sync::atomic::AtomicU64,
    /// Total time spent in passes, microseconds.
    pub micros: std::sync::atomic::AtomicU64,
}

/// Makes the engine adapter for an engine kind and version ([`engine::for_kind`]; a fake in
/// unit tests).
pub type EngineFactory = Arc<dyn Fn(&str, &str) -> Option<Box<dyn Engine>> + Send + Sync>;

/// Everything a member worker needs; shared by all workers.
pub struct Shared {
    /// Agent config.
    pub cfg: AgentConfig,
    /// Container runtime.
    pub runtime: Arc<dyn ContainerRuntime>,
    /// Data volumes.
    pub volumes: Arc<VolumeManager>,
    /// State directory.
    pub state: LocalState,
    /// Scheduler lease (fencing when lost).
    pub lease: Lease,
    /// Latest desired state.
    pub desired: watch::Receiver<Option<DesiredState>>,
    /// Statuses reported in heartbeats.
    pub statuses: Statuses,
    /// Woken when a status changed in a way the scheduler must learn at once.
    pub status_changed: Arc<Notify>,
    /// Pass counts and durations.
    pub stats: Arc<ReconcileStats>,
    /// Engine adapters.
    engines: EngineFactory,
    /// Serialises port allocation across workers.
    ports: Mutex<()>,
    /// When this agent process started.
    started: Instant,
}

impl Shared {
    /// Bundles the parts.
    pub fn new(
        cfg: AgentConfig,
        runtime: Arc<dyn ContainerRuntime>,
        volumes: Arc<VolumeManager>,
        state: LocalState,
        lease: Lease,
        desired: watch::Receiver<Option<DesiredState>>,
    ) -> Arc<Self> {
        Arc::new(Shared {
            cfg,
            runtime,
            volumes,
            state,
            lease,
            desired,
            statuses: Arc::default(),
            status_changed: Arc::new(Notify::new()),
            stats: Arc::default(),
            engines: Arc::new(engine::for_kind),
            ports: Mutex::new(()),
            started: Instant::now(),
        })
    }

    fn assignment(&self, member: &str) -> Option<Assignment> {
        self.desired
            .borrow()
            .as_ref()?
            .members
            .iter()
            .find(|a| a.member == member)
            .cloned()
    }

    fn set_status(&self, s: MemberStatus) {
        let urgent = match self.statuses.lock() {
            Ok(mut m) => {
                let urgent = m.get(&s.member).is_none_or(|o| {
                    o.healthy != s.healthy
                        || o.held != s.held
                        || o.failed != s.failed
                        || o.container_state != s.container_state
                        || o.role != s.role
                        || o.epoch != s.epoch
                });
                m.insert(s.member.clone(), s);
                urgent
            }
            Err(_) => false,
        };
        if urgent {
            self.status_changed.notify_one();
        }
    }

    fn container_name(member: &str) -> String {
        format!("mofang-{member}")
    }

    async fn find_container(&self, member: &str) -> Result<Option<runtime::ContainerInfo>> {
        let node = self.cfg.node.as_str();
        let mut found = self
            .runtime
            .list(&[(labels::NODE, node), (labels::MEMBER, member)])
            .await?;
        Ok(found.pop())
    }

    fn allocate_port(&self, member: &str) -> Result<u16> {
        let _guard = self.ports.lock().map_err(|_| Error::NoFreePort(0, 0))?;
        let used: Vec<u16> = self
            .state
            .members()
            .iter()
            .filter(|m| m.as_str() != member)
            .filter_map(|m| self.state.load_member(m).ok()?.port)
            .collect();
        let [lo, hi] = self.cfg.port_range;
        let port = (lo..=hi)
            .find(|p| !used.contains(p))
            .ok_or(Error::NoFreePort(lo, hi))?;
        let mut st = self.state.load_member(member)?;
        st.port = Some(port);
        self.state.save_member(member, &st)?;
        Ok(port)
    }
}

/// One reconcile pass's outcome: when to look again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Look again after this long.
    Requeue(Duration),
}

fn replicas_of(a: &Assignment) -> u32 {
    a.settings
        .get("replicas")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Per-member worker memory that need not survive restarts.
#[derive(Default)]
struct WorkerMemo {
    last_usage: Option<(Instant, u64, bool)>,
    ping_failures: u32,
    /// The container in which the server last answered: failed checks count only after
    /// the server answered once (a starting server is not a dead one).
    answered_in: Option<String>,
    /// The replica's lag the last time its link was up: reported while the link is down,
    /// so a scheduler that restarted after the primary failed still knows it.
    last_lag: Option<i64>,
}

impl WorkerMemo {
    fn failed_checks(&self, container: &str) -> u32 {
        if self.answered_in.as_deref() == Some(container) {
            self.ping_failures
        } else {
            0
        }
    }
}

/// The lag to report: the observed one while the link is up, else the last one seen with
/// the link up (what the replica was behind when its primary failed); -1 when never seen.
fn reported_lag(last: &mut Option<i64>, link_up: bool, observed: Option<i64>) -> i64 {
    if link_up {
        if let Some(l) = observed.filter(|l| *l >= 0) {
            *last = Some(l);
        }
        return observed.unwrap_or(-1);
    }
    last.unwrap_or(-1)
}

/// Reconciles one member once.
async fn reconcile_member(sh: &Shared, a: &Assignment, memo: &mut WorkerMemo) -> Result<Action> {
    let member = a.member.as_str();
    let engine = (sh.engines)(&a.engine, &a.version).ok_or_else(|| Error::UnsupportedEngine {
        engine: a.engine.clone(),
        version: a.version.clone(),
    })?;
    let role = DesiredRole::parse(a).map_err(Error::BadAssignment)?;
    let mut st = sh.state.load_member(member)?;
    let orig = st.clone();
    // The scheduler decided about a held primary: a newer epoch releases it.
    decide::release_hold(&mut st, a.epoch);

    // 1. Volume.
    let class = (!a.disk_class.is_empty()).then_some(a.disk_class.as_str());
    let vol = sh
        .volumes
        .ensure(member, class, a.disk_bytes, engine.uid(), engine.uid())?;

    // 2. Secrets and config.
    let secrets = sh
        .state
        .secrets(&a.instance, Secrets::from_map(&a.secrets))?;
    let network = sh.cfg.network_mode();
    let port = match network {
        NetworkMode::Host => match st.port {
            Some(p) => p,
            None => {
                let p = sh.allocate_port(member)?;
                st.port = Some(p);
                p
            }
        },
        NetworkMode::Docker(_) => engine.kind().port(),
    };
    // A replica whose primary's address the scheduler does not know yet (just created, or the
    // scheduler just restarted) is kept exactly as it is: no new config, no role change.
    let waiting = role.waiting();
    let replica_of = role.replica_of().cloned();
    let announce = match &network {
        NetworkMode::Host => Target {
            host: sh.cfg.advertise_address.clone(),
            port,
        },
        // On a Docker network the container name resolves for every peer on it.
        NetworkMode::Docker(_) => Target {
            host: Shared::container_name(member),
            port,
        },
    };
    let mc = MemberConfig {
        member: member.to_owned(),
        port,
        announce,
        memory_bytes: a.memory_bytes,
        replica_of: replica_of.clone(),
        settings: a
            .settings
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    if !waiting {
        sh.state
            .write_config(member, &engine.render(&mc, &secrets), engine.uid())?;
    }

    // 3. Container.
    let container = match sh.find_container(member).await? {
        Some(c) => c,
        None if waiting => {
            report(
                sh,
                a,
                &st,
                None,
                None,
                false,
                "waiting for the primary's address".into(),
            );
            return Ok(Action::Requeue(Duration::from_secs(1)));
        }
        None => {
            // A replica on a fresh volume copies a snapshot of its primary first.
            let fresh = std::fs::read_dir(&vol.path)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
            if fresh && role.role() == Role::Replica && !st.needs_seed {
                st.needs_seed = true;
                sh.state.save_member(member, &st)?;
            }
            let spec = container_spec(sh, a, engine.as_ref(), &vol.path, &network, port);
            let id = sh.runtime.create(&spec).await?;
            info!(member, container = %&id[..12.min(id.len())], image = %spec.image, "created container");
            sh.runtime.start(&id).await?;
            sh.runtime.inspect(&id).await?
        }
    };
    let container = match container.state {
        ContainerState::Running => container,
        ContainerState::Exited | ContainerState::Created => {
            let exited = container.state == ContainerState::Exited;
            if decide::newly_held(&role, replicas_of(a), a.epoch, exited, &st) {
                warn!(
                    member,
                    epoch = a.epoch,
                    exit_code = container.exit_code.unwrap_or(-1),
                    "primary container died: held for the scheduler's decision"
                );
                st.held_at_epoch = Some(a.epoch);
                sh.state.save_member(member, &st)?;
            }
            match decide::on_exit(&st, sh.lease.valid(), now_ms()) {
                OnExit::Hold => {
                    // The scheduler hears of it at once (urgent heartbeat) and decides.
                    report_held(sh, a, &st, &container);
                    return Ok(Action::Requeue(Duration::from_secs(1)));
                }
                OnExit::CrashLooping { newly } => {
                    if newly {
                        warn!(
                            member,
                            restarts = st.crash_restarts_ms.len(),
                            "crash loop: no more restarts"
                        );
                        st.crash_looping = true;
                        sh.state.save_member(member, &st)?;
                    }
                    report(
                        sh,
                        a,
                        &st,
                        Some(&container),
                        None,
                        true,
                        format!(
                            "crash loop: {MAX_CRASH_RESTARTS} restarts within {} s; not restarted",
                            CRASH_WINDOW_MS / 1000
                        ),
                    );
                    return Ok(Action::Requeue(Duration::from_secs(5)));
                }
                OnExit::Restart => {}
            }
            let now = now_ms();
            st.crash_restarts_ms.retain(|t| now - t < CRASH_WINDOW_MS);
            st.crash_restarts_ms.push(now);
            // The agent is the supervisor (restart policy `no`): bring it back on the same
            // container and volume, with the data it had.
            warn!(
                member,
                exit_code = container.exit_code.unwrap_or(-1),
                oom_killed = container.oom_killed,
                "member container is not running, starting it again"
            );
            sh.runtime.start(&container.id).await?;
            st.restarts += 1;
            sh.state.save_member(member, &st)?;
            sh.runtime.inspect(&container.id).await?
        }
        other => {
            // Paused, restarting, dead: the database does not answer; it counts as a
            // failed check like an unanswered ping.
            memo.ping_failures += 1;
            let mut s = status_keeping_last(sh, a, &st, &container);
            s.failed_checks = memo.failed_checks(&container.id);
            s.reason = format!("container {other:?} ({} checks)", memo.ping_failures);
            sh.set_status(s);
            return Ok(Action::Requeue(Duration::from_millis(250)));
        }
    };
    if st != orig {
        sh.state.save_member(member, &st)?;
    }

    // 4. The server answers a real protocol round trip.
    let target = match &network {
        NetworkMode::Host => Target {
            host: "127.0.0.1".into(),
            port,
        },
        NetworkMode::Docker(net) => match container.ips.get(net) {
            Some(ip) => Target {
                host: ip.clone(),
                port,
            },
            None => {
                report(
                    sh,
                    a,
                    &st,
                    Some(&container),
                    None,
                    false,
                    format!("no IP on network {net} yet"),
                );
                return Ok(Action::Requeue(Duration::from_millis(250)));
            }
        },
    };
    let address = match &network {
        NetworkMode::Host => format!("{}:{port}", sh.cfg.advertise_address),
        NetworkMode::Docker(_) => target.to_string(),
    };
    if let Err(e) = engine.ping(&target, &secrets).await {
        memo.ping_failures += 1;
        // Its last position is kept: a replica that does not answer still holds what it
        // received, and the scheduler compares positions when it picks a new primary.
        let mut s = status_keeping_last(sh, a, &st, &container);
        s.address = address.clone();
        s.failed_checks = memo.failed_checks(&container.id);
        s.reason = format!("not answering ({} checks): {e}", memo.ping_failures);
        sh.set_status(s);
        return Ok(Action::Requeue(Duration::from_millis(250)));
    }
    memo.ping_failures = 0;
    memo.answered_in = Some(container.id.clone());

    // 5. Role, under the epoch rule.
    let mut reason = String::new();
    if waiting {
        reason = "waiting for the primary's address".into();
    } else if a.epoch < st.applied_epoch {
        reason = format!(
            "ignored assignment of epoch {} (member has {})",
            a.epoch, st.applied_epoch
        );
        warn!(
            member,
            epoch = a.epoch,
            applied = st.applied_epoch,
            "stale role assignment ignored"
        );
    } else {
        let step = decide::role_step(
            &role,
            a.epoch,
            &st,
            sh.lease.valid(),
            sh.lease.last_ack().is_some(),
            sh.started.elapsed() < sh.lease.ttl(),
        );
        apply_role(
            sh,
            a,
            engine.as_ref(),
            (&target, &container.id),
            &secrets,
            step,
            &mut st,
        )
        .await?;
        if st.applied_epoch != a.epoch || st.applied_role != a.role {
            info!(member, epoch = a.epoch, role = %a.role, "role applied");
            st.applied_epoch = a.epoch;
            st.applied_role = a.role.clone();
        }
        if st != orig {
            sh.state.save_member(member, &st)?;
        }
    }

    // 6. Observe and report.
    let obs = engine.observe(&target, &secrets).await?;
    if role.role() == Role::Replica {
        if let Some(e) = obs
            .replication_error
            .as_deref()
            .filter(|e| engine.diverged(e))
        {
            warn!(member, error = %e, "replica diverged from its primary: rebuilding it from the primary");
            rebuild(sh, member, &container.id).await?;
            return Ok(Action::Requeue(Duration::from_millis(100)));
        }
    }
    let usage = match memo.last_usage {
        Some((at, used, over)) if at.elapsed() < Duration::from_secs(15) => (used, over),
        _ => {
            let (used, over) = sh
                .volumes
                .usage(member)
                .map(|u| (u.used_bytes, u.over))
                .unwrap_or((0, false));
            if over {
                warn!(
                    member,
                    used,
                    size = a.disk_bytes,
                    "volume over its reservation"
                );
            }
            memo.last_usage = Some((Instant::now(), used, over));
            (used, over)
        }
    };
    let mut s = status(sh, a, &st, Some(&container), &address);
    s.role = if st.fenced {
        ObservedRole::Fenced.as_str().into()
    } else {
        obs.role.as_str().into()
    };
    s.read_only = obs.read_only;
    s.position = obs.position.clone();
    s.lag_seconds = reported_lag(&mut memo.last_lag, obs.replication_ok, obs.lag_seconds);
    s.replication_ok = obs.replication_ok;
    s.volume_used_bytes = usage.0;
    let role_ok = match &role {
        DesiredRole::Primary { fence: true, .. } => st.fenced,
        DesiredRole::Primary { .. } => obs.role == ObservedRole::Primary || st.fenced,
        // A replica is healthy only while it follows the primary it was told to follow.
        DesiredRole::Replica { .. } => {
            obs.role == ObservedRole::Replica
                && obs.replication_ok
                && follows(obs.following.as_deref(), replica_of.as_ref())
        }
    };
    s.healthy = role_ok && (!st.fenced || a.fence);
    if reason.is_empty() {
        reason = match (&obs.replication_error, role_ok, st.fenced, usage.1) {
            (_, _, true, _) if a.fence => "fenced for switchover".into(),
            (_, _, true, _) => "fenced: scheduler lease expired".into(),
            (Some(e), _, _, _) => format!("replication: {e}"),
            (None, false, _, _)
                if obs.role == ObservedRole::Replica
                    && !follows(obs.following.as_deref(), replica_of.as_ref()) =>
            {
                format!(
                    "replicating from {} while {} is its primary",
                    obs.following.as_deref().unwrap_or("nobody"),
                    a.primary_address
                )
            }
            (None, false, _, _) => format!(
                "observed role {} while {} is desired",
                obs.role.as_str(),
                a.role
            ),
            (None, true, _, true) => "volume over its reservation".into(),
            _ => String::new(),
        };
    }
    s.reason = reason;
    sh.set_status(s);
    Ok(Action::Requeue(Duration::from_secs(1)))
}

/// True when a replica observed following `following` (`host:port`) follows `primary`.
fn follows(following: Option<&str>, primary: Option<&Target>) -> bool {
    match (following.map(Target::parse), primary) {
        (Some(Ok(f)), Some(p)) => &f == p,
        _ => false,
    }
}

/// Carries out the role step [`decide::role_step`] chose.
async fn apply_role(
    sh: &Shared,
    a: &Assignment,
    engine: &dyn Engine,
    (at, container): (&Target, &str),
    secrets: &Secrets,
    step: RoleStep,
    st: &mut MemberState,
) -> Result<()> {
    match step {
        RoleStep::Follow {
            primary,
            fence_first,
            seed,
        } => {
            if seed {
                if let Some(script) = engine.seed_script(&primary, at.port) {
                    info!(member = %a.member, primary = %primary, "seeding replica from the primary");
                    let out = sh
                        .runtime
                        .exec(container, &["bash", "-c", &script], None)
                        .await?;
                    if out.exit_code != 0 {
                        return Err(Error::Seed(out.stderr.trim().chars().take(400).collect()));
                    }
                    // The copy is of the primary of `a.epoch`. If another member was promoted
                    // meanwhile, its position means nothing to the new primary: start over.
                    if sh.assignment(&a.member).map(|x| x.epoch) != Some(a.epoch) {
                        warn!(member = %a.member, epoch = a.epoch, "primary changed while seeding: rebuilding");
                        rebuild(sh, &a.member, container).await?;
                        return Err(Error::Seed(
                            "the primary changed while seeding; seeding again from the new one"
                                .into(),
                        ));
                    }
                    info!(member = %a.member, "replica seeded");
                }
                st.needs_seed = false;
                sh.state.save_member(&a.member, st)?;
            }
            if fence_first {
                // Demoted: stop application writes first, killing sessions, so a commit that
                // waits for a semi-sync acknowledgement from a replica that now follows the
                // new primary can never complete and be acknowledged later.
                engine.fence(at, secrets).await?;
            }
            // Read-only first (MariaDB), then follow the new primary.
            engine.replicate_from(at, secrets, &primary).await?;
            if st.fenced {
                // A Redis replica takes no application writes anyway; lift its pause. (A
                // MariaDB fence is read_only, which a replica keeps.)
                if engine.kind() == mofang_common::EngineKind::Redis {
                    engine.unfence(at, secrets).await?;
                }
                st.fenced = false;
            }
        }
        // Just (re)started and not yet heard from the scheduler: neither fence nor promote
        // on a guess; the primary keeps whatever it was doing for up to lease_ttl.
        RoleStep::Wait | RoleStep::Ignore => {}
        RoleStep::FenceLeaseLost => {
            // Cut off from the scheduler for lease_ttl: another member may be promoted
            // elsewhere, so this primary stops taking writes (architecture: fencing).
            if !st.fenced {
                warn!(member = %a.member, epoch = a.epoch, "scheduler lease lost: fencing primary");
            }
            engine.fence(at, secrets).await?;
            st.fenced = true;
        }
        RoleStep::FenceHeld => {
            // Restarted while held (no scheduler): stays read-only until a newer epoch.
            engine.fence(at, secrets).await?;
            st.fenced = true;
        }
        RoleStep::FenceForSwitchover => {
            // Switchover step 1: stop writes, keep the epoch; the target catches up next.
            if !st.fenced {
                info!(member = %a.member, epoch = a.epoch, "fencing primary for switchover");
            }
            engine.fence(at, secrets).await?;
            st.fenced = true;
        }
        RoleStep::Open { after } => {
            let obs = engine.observe(at, secrets).await?;
            if obs.role != ObservedRole::Primary || st.applied_epoch != a.epoch {
                engine
                    .promote(at, secrets, replicas_of(a), after.as_deref())
                    .await?;
            }
            if st.fenced {
                engine.unfence(at, secrets).await?;
                info!(member = %a.member, "primary unfenced");
                st.fenced = false;
            }
        }
    }
    Ok(())
}

/// Rebuilds a diverged replica: container and volume go, a fresh one is seeded next pass.
async fn rebuild(sh: &Shared, member: &str, container: &str) -> Result<()> {
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

fn container_spec(
    sh: &Shared,
    a: &Assignment,
    engine: &dyn Engine,
    volume: &std::path::Path,
    network: &NetworkMode,
    port: u16,
) -> ContainerSpec {
    let labels = BTreeMap::from([
        (labels::NODE.to_owned(), sh.cfg.node.clone()),
        (labels::INSTANCE.to_owned(), a.instance.clone()),
        (labels::MEMBER.to_owned(), a.member.clone()),
        (labels::ENGINE.to_owned(), a.engine.clone()),
        ("mofang.version".to_owned(), a.version.clone()),
        ("mofang.port".to_owned(), port.to_string()),
    ]);
    // MariaDB runs a thread per connection, and each thread counts against pids.max.
    let pids_limit = match engine.kind() {
        mofang_common::EngineKind::Mariadb => 2048,
        mofang_common::EngineKind::Redis => 256,
    };
    ContainerSpec {
        name: Shared::container_name(&a.member),
        image: sh.cfg.image(&a.engine, &a.version),
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
        cpus: if a.cpu > 0.0 { a.cpu } else { 1.0 },
        memory_bytes: i64::try_from(a.memory_bytes)
            .unwrap_or(i64::MAX)
            .max(64 << 20),
        pids_limit,
        cap_add: engine.capabilities(),
        user: format!("{0}:{0}", engine.uid()),
        stop_grace: Duration::from_millis(sh.cfg.stop_grace_ms),
    }
}

fn status(
    sh: &Shared,
    a: &Assignment,
    st: &MemberState,
    c: Option<&runtime::ContainerInfo>,
    address: &str,
) -> MemberStatus {
    let _ = sh;
    MemberStatus {
        member: a.member.clone(),
        instance: a.instance.clone(),
        engine: a.engine.clone(),
        container_state: c
            .map(|c| format!("{:?}", c.state).to_lowercase())
            .unwrap_or_else(|| "missing".into()),
        container_id: c.map(|c| c.id.clone()).unwrap_or_default(),
        healthy: false,
        reason: String::new(),
        role: ObservedRole::Unknown.as_str().into(),
        epoch: st.applied_epoch,
        address: address.to_owned(),
        position: String::new(),
        lag_seconds: -1,
        read_only: true,
        replication_ok: false,
        restarts: st.restarts,
        checked_at_ms: now_ms(),
        failed: false,
        volume_used_bytes: 0,
        failed_checks: 0,
        held: st.held_at_epoch.is_some(),
        crash_restarts: st.crash_restarts_ms.len() as u64,
    }
}

/// A status for a member that cannot be asked now, keeping its last known address and
/// position (the scheduler compares positions when it picks a new primary).
fn status_keeping_last(
    sh: &Shared,
    a: &Assignment,
    st: &MemberState,
    c: &runtime::ContainerInfo,
) -> MemberStatus {
    let mut s = status(sh, a, st, Some(c), "");
    if let Some(old) = sh
        .statuses
        .lock()
        .ok()
        .and_then(|m| m.get(&a.member).cloned())
    {
        s.address = old.address;
        s.position = old.position;
    }
    s
}

fn report_held(sh: &Shared, a: &Assignment, st: &MemberState, c: &runtime::ContainerInfo) {
    let mut s = status_keeping_last(sh, a, st, c);
    s.reason = format!(
        "primary container exited (code {}); held down for the scheduler's decision",
        c.exit_code.unwrap_or(-1)
    );
    sh.set_status(s);
}

fn report(
    sh: &Shared,
    a: &Assignment,
    st: &MemberState,
    c: Option<&runtime::ContainerInfo>,
    address: Option<&str>,
    failed: bool,
    reason: String,
) {
    let mut s = status(sh, a, st, c, address.unwrap_or(""));
    s.failed = failed;
    s.reason = reason;
    sh.set_status(s);
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
    wake: Arc<Notify>,
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
        let outcome = reconcile_member(&sh, &a, &mut memo).await;
        {
            use std::sync::atomic::Ordering::Relaxed;
            let us = started.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
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
            _ = wake.notified() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Runs the reconcile supervisor until shutdown: one worker per desired member, container
/// events wake the worker concerned, members and containers no longer desired are removed.
/// Stopping the agent never stops the databases.
pub async fn run(sh: Arc<Shared>, shutdown: CancellationToken) {
    let mut workers: HashMap<String, (Arc<Notify>, tokio::task::JoinHandle<()>)> = HashMap::new();
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
            if let Ok(cs) = sh
                .runtime
                .list(&[(labels::NODE, sh.cfg.node.as_str())])
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
                    Some((wake, _)) => wake.notify_one(),
                    None => {
                        let wake = Arc::new(Notify::new());
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
                    if let Some(m) = ev.labels.get(labels::MEMBER) {
                        if let Some((wake, _)) = workers.get(m) {
                            debug!(member = %m, action = %ev.action, "container event");
                            wake.notify_one();
                        }
                    }
                    continue;
                }
                Some(Err(e)) => {
                    warn!(error = %e, "container event stream failed, reconnecting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    events = sh.runtime.events((labels::NODE, sh.cfg.node.as_str()));
                }
                None => {
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

#[cfg(test)]
mod fake;

#[cfg(test)]
mod tests {
    //! Reconcile's role paths on a recording fake runtime and engine: held primary, crash
    //! loop, epochs, fences. The same paths against real Docker and databases are in
    //! `tests/tests/{agent,failover}.rs`.

    use super::fake::{FakeEngine, FakeRuntime};
    use super::*;
    use std::collections::HashMap;

    struct Rig {
        sh: Arc<Shared>,
        rt: Arc<FakeRuntime>,
        db: FakeEngine,
        memo: WorkerMemo,
        _dir: tempfile::TempDir,
    }

    fn rig(lease_ttl: Duration) -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let text = format!(
            "node = \"n1\"\nstate_dir = \"{}\"\nnetwork = \"host\"\nadvertise_address = \"127.0.0.1\"\n\
             [[disks]]\npath = \"{}\"\nclass = \"ssd\"\ncapacity_mib = 4096\n",
            root.join("state").display(),
            root.join("disk").display()
        );
        let cfg = AgentConfig::parse(&text, &root.join("agent.toml")).expect("config");
        let volumes = Arc::new(VolumeManager::open(cfg.disks.clone()).expect("volumes"));
        let state = LocalState::open(&cfg.state_dir).expect("state");
        let rt = Arc::new(FakeRuntime::default());
        let db = FakeEngine::default();
        let (_tx, rx) = watch::channel(None);
        let mut sh = Shared::new(cfg, rt.clone(), volumes, state, Lease::new(lease_ttl), rx);
        let engine = db.clone();
        if let Some(s) = Arc::get_mut(&mut sh) {
            s.engines = Arc::new(move |_, _| Some(Box::new(engine.clone()) as Box<dyn Engine>));
        }
        Rig {
            sh,
            rt,
            db,
            memo: WorkerMemo::default(),
            _dir: dir,
        }
    }

    fn assignment(role: &str, epoch: u64, primary: &str) -> Assignment {
        let pw = "Abcdefghijklmnop0123456789";
        Assignment {
            member: "db-0".into(),
            instance: "db".into(),
            engine: "mariadb".into(),
            version: "10.11".into(),
            role: role.into(),
            epoch,
            cpu: 0.5,
            memory_bytes: 256 << 20,
            disk_bytes: 64 << 20,
            primary_address: primary.into(),
            secrets: HashMap::from(
                ["admin", "repl", "monitor", "app"].map(|k| (k.to_owned(), pw.to_owned())),
            ),
            settings: HashMap::from([("replicas".to_owned(), "2".to_owned())]),
            ..Default::default()
        }
    }

    impl Rig {
        async fn pass(&mut self, a: &Assignment) -> MemberStatus {
            reconcile_member(&self.sh, a, &mut self.memo)
                .await
                .expect("reconcile");
            self.status()
        }
        fn status(&self) -> MemberStatus {
            self.sh
                .statuses
                .lock()
                .expect("statuses")
                .get("db-0")
                .cloned()
                .expect("a status")
        }
    }

    #[tokio::test]
    async fn a_dead_primary_is_held_until_a_newer_epoch_then_rejoins_fenced_first() {
        let mut r = rig(Duration::from_secs(10));
        r.sh.lease.renew();
        let s = r.pass(&assignment("primary", 3, "")).await;
        assert_eq!(r.rt.take_calls(), ["create mofang-db-0", "start c1"]);
        assert_eq!(r.db.take_calls(), ["promote after=None"]);
        assert!(s.healthy && s.role == "primary" && s.epoch == 3, "{s:?}");

        // The container dies: held, not restarted, however often reconcile runs.
        r.rt.set_state(ContainerState::Exited, Some(137));
        for _ in 0..3 {
            let s = r.pass(&assignment("primary", 3, "")).await;
            assert!(s.held && !s.healthy, "{s:?}");
            assert_eq!(s.position, "0-1-5", "the last position is kept");
        }
        assert!(r.rt.take_calls().is_empty(), "never restarted while held");
        assert!(r.db.take_calls().is_empty());

        // The scheduler failed over: a replica at epoch 4. Released, restarted, fenced before
        // it follows the new primary.
        let s = r.pass(&assignment("replica", 4, "10.0.0.9:3306")).await;
        assert_eq!(r.rt.take_calls(), ["start c1"]);
        assert_eq!(r.db.take_calls(), ["fence", "replicate_from 10.0.0.9:3306"]);
        assert!(
            !s.held && s.healthy && s.role == "replica" && s.epoch == 4,
            "{s:?}"
        );

        // An order of an older epoch is never applied.
        let s = r.pass(&assignment("primary", 3, "")).await;
        assert!(r.db.take_calls().is_empty());
        assert!(s.reason.contains("ignored assignment of epoch 3"), "{s:?}");
    }

    #[tokio::test]
    async fn without_a_scheduler_a_dead_primary_restarts_read_only() {
        let mut r = rig(Duration::from_millis(50));
        r.sh.lease.renew();
        r.pass(&assignment("primary", 3, "")).await;
        r.rt.take_calls();
        r.db.take_calls();
        tokio::time::sleep(Duration::from_millis(80)).await;
        r.rt.set_state(ContainerState::Exited, Some(137));
        let s = r.pass(&assignment("primary", 3, "")).await;
        assert_eq!(r.rt.take_calls(), ["start c1"]);
        assert_eq!(r.db.take_calls(), ["fence"]);
        assert!(s.held && !s.healthy, "{s:?}");
        // The lease comes back: still held (fenced) until the scheduler's newer epoch.
        r.sh.lease.renew();
        let s = r.pass(&assignment("primary", 3, "")).await;
        assert!(s.held, "{s:?}");
        assert!(!r.db.take_calls().contains(&"unfence".to_owned()));
        let s = r.pass(&assignment("primary", 4, "")).await;
        let calls = r.db.take_calls();
        assert!(calls.contains(&"unfence".to_owned()), "{calls:?}");
        assert!(!s.held && s.healthy && s.epoch == 4, "{s:?}");
    }

    #[tokio::test]
    async fn a_lost_lease_fences_the_primary_and_a_renewed_one_lifts_it() {
        let mut r = rig(Duration::from_millis(50));
        r.sh.lease.renew();
        r.pass(&assignment("primary", 3, "")).await;
        r.db.take_calls();
        tokio::time::sleep(Duration::from_millis(80)).await;
        let s = r.pass(&assignment("primary", 3, "")).await;
        assert_eq!(r.db.take_calls(), ["fence"]);
        assert!(!s.healthy && s.role == "fenced", "{s:?}");
        assert!(s.reason.contains("lease expired"), "{s:?}");
        r.sh.lease.renew();
        let s = r.pass(&assignment("primary", 3, "")).await;
        assert_eq!(r.db.take_calls(), ["promote after=None", "unfence"]);
        assert!(s.healthy && s.role == "primary", "{s:?}");
    }

    #[tokio::test]
    async fn a_switchover_fences_at_the_same_epoch_and_reports_healthy() {
        let mut r = rig(Duration::from_secs(10));
        r.sh.lease.renew();
        r.pass(&assignment("primary", 3, "")).await;
        r.db.take_calls();
        let mut a = assignment("primary", 3, "");
        a.fence = true;
        let s = r.pass(&a).await;
        assert_eq!(r.db.take_calls(), ["fence"]);
        assert!(s.healthy && s.role == "fenced", "{s:?}");
    }

    #[tokio::test]
    async fn a_replica_that_keeps_dying_stops_being_restarted() {
        let mut r = rig(Duration::from_secs(10));
        r.sh.lease.renew();
        let a = assignment("replica", 3, "10.0.0.9:3306");
        r.pass(&a).await;
        r.rt.take_calls();
        for _ in 0..MAX_CRASH_RESTARTS {
            r.rt.set_state(ContainerState::Exited, Some(1));
            let s = r.pass(&a).await;
            assert!(!s.failed, "{s:?}");
        }
        assert_eq!(r.rt.take_calls().len(), MAX_CRASH_RESTARTS);
        r.rt.set_state(ContainerState::Exited, Some(1));
        let s = r.pass(&a).await;
        let s = if s.failed { s } else { r.pass(&a).await };
        assert!(s.failed && s.reason.contains("crash loop"), "{s:?}");
        assert!(r.rt.take_calls().is_empty(), "no sixth restart");
    }

    #[tokio::test]
    async fn a_replica_following_another_address_is_not_healthy() {
        let mut r = rig(Duration::from_secs(10));
        r.sh.lease.renew();
        let s = r.pass(&assignment("replica", 3, "10.0.0.9:3306")).await;
        assert!(s.healthy, "{s:?}");
        // The server follows another address, whatever it is told.
        if let Ok(mut db) = r.db.0.lock() {
            db.stuck_following = Some("10.0.0.7:3306".into());
        }
        let s = r.pass(&assignment("replica", 3, "10.0.0.9:3306")).await;
        assert!(
            !s.healthy && s.reason.contains("replicating from 10.0.0.7:3306"),
            "{s:?}"
        );
    }

    #[tokio::test]
    async fn a_replica_whose_link_went_down_keeps_reporting_its_last_lag() {
        // A scheduler that starts after the primary failed learns the replicas' lag from
        // these reports; without them it finds no candidate (soak: scheduler kill -9).
        let mut r = rig(Duration::from_secs(10));
        r.sh.lease.renew();
        if let Ok(mut db) = r.db.0.lock() {
            db.lag = 3;
        }
        let a = assignment("replica", 3, "10.0.0.9:3306");
        let s = r.pass(&a).await;
        assert!(s.replication_ok && s.lag_seconds == 3, "{s:?}");
        if let Ok(mut db) = r.db.0.lock() {
            db.link_up = false;
            db.lag = 0;
        }
        let s = r.pass(&a).await;
        assert!(!s.replication_ok, "{s:?}");
        assert_eq!(s.lag_seconds, 3, "the last lag seen with the link up");
    }

    #[test]
    fn the_reported_lag_is_the_observed_one_while_the_link_is_up() {
        let mut last = None;
        assert_eq!(reported_lag(&mut last, false, None), -1, "never seen");
        assert_eq!(
            reported_lag(&mut last, true, None),
            -1,
            "link up, lag unknown"
        );
        assert_eq!(reported_lag(&mut last, true, Some(2)), 2);
        assert_eq!(reported_lag(&mut last, true, Some(0)), 0);
        assert_eq!(reported_lag(&mut last, false, None), 0);
        assert_eq!(reported_lag(&mut last, true, Some(5)), 5);
        assert_eq!(
            reported_lag(&mut last, false, Some(9)),
            5,
            "link down: the last one"
        );
    }
}

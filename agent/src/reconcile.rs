//! The reconcile loop (kube-runtime style): desired members of this node against actual
//! containers. One worker per member, idempotent steps, periodic requeue, woken at once by
//! container events. Steps: volume -> config -> container -> server answers -> role.

use crate::config::{AgentConfig, NetworkMode};
use crate::engine::{self, Engine, MemberConfig, ObservedRole, Secrets, Target};
use crate::link::Lease;
use crate::runtime::{self, ContainerRuntime, ContainerSpec, ContainerState, Mount, Network};
use crate::state::{self, LocalState, MemberState};
use crate::volume::{self, VolumeManager};
use futures::StreamExt;
use mofang_common::labels;
use mofang_common::proto::{Assignment, DesiredState, MemberStatus};
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

/// Restarts within [`CRASH_WINDOW_MS`] after which the agent stops restarting a member and
/// reports it failed (the scheduler replaces it).
pub const MAX_CRASH_RESTARTS: usize = 5;
/// The crash-loop window.
pub const CRASH_WINDOW_MS: i64 = 600_000;

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

/// Reconciles one member once.
async fn reconcile_member(sh: &Shared, a: &Assignment, memo: &mut WorkerMemo) -> Result<Action> {
    let member = a.member.as_str();
    let engine =
        engine::for_kind(&a.engine, &a.version).ok_or_else(|| Error::UnsupportedEngine {
            engine: a.engine.clone(),
            version: a.version.clone(),
        })?;
    let mut st = sh.state.load_member(member)?;
    let orig = st.clone();
    // The scheduler decided about a held primary: a newer epoch releases it.
    if st.held_at_epoch.is_some_and(|e| a.epoch > e) {
        st.held_at_epoch = None;
    }

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
    let waiting = a.role == "replica" && a.primary_address.is_empty();
    let replica_of = match a.role.as_str() {
        "replica" if waiting => None,
        "replica" => Some(Target::parse(&a.primary_address).map_err(|_| {
            Error::BadAssignment(format!(
                "replica {member} has no valid primary_address ('{}')",
                a.primary_address
            ))
        })?),
        "primary" => None,
        other => return Err(Error::BadAssignment(format!("unknown role '{other}'"))),
    };
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
            if fresh && a.role == "replica" && !st.needs_seed {
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
            // A primary with replicas that died is held down for the scheduler to decide:
            // fail over to a replica, or this member again at a newer epoch. Restarted by
            // itself it would reopen at its old epoch, racing a promotion elsewhere, and
            // recover as a primary (keeping transactions no replica acknowledged).
            if a.role == "primary"
                && replicas_of(a) > 0
                && container.state == ContainerState::Exited
                && st.applied_epoch == a.epoch
                && st.held_at_epoch.is_none()
            {
                warn!(
                    member,
                    epoch = a.epoch,
                    exit_code = container.exit_code.unwrap_or(-1),
                    "primary container died: held for the scheduler's decision"
                );
                st.held_at_epoch = Some(a.epoch);
                sh.state.save_member(member, &st)?;
            }
            if st.held_at_epoch.is_some() && sh.lease.valid() {
                // The scheduler hears of it at once (urgent heartbeat) and decides.
                report_held(sh, a, &st, &container);
                return Ok(Action::Requeue(Duration::from_secs(1)));
            }
            // Without a scheduler nobody can decide: restart it, read-only, so its data
            // stays served for reads; it reopens for writes only at a newer epoch.
            if st.crash_looping {
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
            let now = now_ms();
            st.crash_restarts_ms.retain(|t| now - t < CRASH_WINDOW_MS);
            if st.crash_restarts_ms.len() >= MAX_CRASH_RESTARTS {
                warn!(
                    member,
                    restarts = st.crash_restarts_ms.len(),
                    "crash loop: no more restarts"
                );
                st.crash_looping = true;
                sh.state.save_member(member, &st)?;
                return Ok(Action::Requeue(Duration::from_millis(10)));
            }
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
        apply_role(
            sh,
            a,
            engine.as_ref(),
            (&target, &container.id),
            &secrets,
            replica_of.as_ref(),
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
    if a.role == "replica" {
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
        "fenced".into()
    } else {
        obs.role.as_str().into()
    };
    s.read_only = obs.read_only;
    s.position = obs.position.clone();
    s.lag_seconds = obs.lag_seconds.unwrap_or(-1);
    s.replication_ok = obs.replication_ok;
    s.volume_used_bytes = usage.0;
    let role_ok = match a.role.as_str() {
        "primary" if a.fence => st.fenced,
        "primary" => obs.role == ObservedRole::Primary || st.fenced,
        // A replica is healthy only while it follows the primary it was told to follow.
        _ => {
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

async fn apply_role(
    sh: &Shared,
    a: &Assignment,
    engine: &dyn Engine,
    (at, container): (&Target, &str),
    secrets: &Secrets,
    replica_of: Option<&Target>,
    st: &mut MemberState,
) -> Result<()> {
    match replica_of {
        Some(primary) => {
            if st.needs_seed {
                if let Some(script) = engine.seed_script(primary, at.port) {
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
            if st.applied_role == "primary" && st.applied_epoch < a.epoch {
                // Demoted: stop application writes first, killing sessions, so a commit that
                // waits for a semi-sync acknowledgement from a replica that now follows the
                // new primary can never complete and be acknowledged later.
                engine.fence(at, secrets).await?;
            }
            // Read-only first (MariaDB), then follow the new primary.
            engine.replicate_from(at, secrets, primary).await?;
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
        None if sh.lease.last_ack().is_none() && sh.started.elapsed() < sh.lease.ttl() => {}
        None if !sh.lease.valid() => {
            // Cut off from the scheduler for lease_ttl: another member may be promoted
            // elsewhere, so this primary stops taking writes (architecture: fencing).
            if !st.fenced {
                warn!(member = %a.member, epoch = a.epoch, "scheduler lease lost: fencing primary");
            }
            engine.fence(at, secrets).await?;
            st.fenced = true;
        }
        None if st.held_at_epoch.is_some() => {
            // Restarted while held (no scheduler): stays read-only until a newer epoch.
            engine.fence(at, secrets).await?;
            st.fenced = true;
        }
        None if a.fence => {
            // Switchover step 1: stop writes, keep the epoch; the target catches up next.
            if !st.fenced {
                info!(member = %a.member, epoch = a.epoch, "fencing primary for switchover");
            }
            engine.fence(at, secrets).await?;
            st.fenced = true;
        }
        None => {
            let obs = engine.observe(at, secrets).await?;
            if obs.role != ObservedRole::Primary || st.applied_epoch != a.epoch {
                let after = (!a.promote_after.is_empty()).then_some(a.promote_after.as_str());
                engine.promote(at, secrets, replicas_of(a), after).await?;
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
        .stop(container, Duration::from_secs(sh.cfg.stop_grace_secs))
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
        stop_grace: Duration::from_secs(sh.cfg.stop_grace_secs),
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
        role: "unknown".into(),
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
            .stop(&c.id, Duration::from_secs(sh.cfg.stop_grace_secs))
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

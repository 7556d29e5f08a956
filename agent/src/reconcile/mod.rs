//! The reconcile loop (kube-runtime style): desired members of this node against actual
//! containers. One worker per member (`worker.rs`), idempotent steps, periodic requeue,
//! woken at once by container events. A pass is the list of steps in `reconcile_member`,
//! a file each: `volume.rs` -> `certs.rs` (database TLS: the member's certificate) -> `config.rs` -> `restore.rs` (a restored primary's volume) -> `container.rs` -> `certs.rs` (its address named, the mode its server serves, the certificate loaded) -> `answers.rs` (the server
//! answers a ping) -> `accounts.rs` (a credential rotation's step) -> `role.rs` -> `observe.rs` (observe and report). Each step hands the
//! next what it produced, or reports the member's status and ends the pass with an
//! [`Action`]. Between full passes a member in good order is only probed (`probe.rs`,
//! decision 146: issue 19, an idle agent's CPU). The decisions (the role asked for, a
//! container that is not running, the role step, probe or full pass) are pure functions in
//! [`decide`]; `status.rs` builds the statuses the steps report.

mod accounts;
mod answers;
mod certs;
mod config;
mod container;
pub mod decide;
mod observe;
mod params;
mod probe;
mod restore;
mod role;
mod seed;
mod shared;
mod status;
mod volume;
mod worker;

use crate::engine::{self, Engine};
use crate::runtime;
use crate::state;
use decide::DesiredRole;
pub use decide::{CRASH_WINDOW_MS, MAX_CRASH_RESTARTS};
use mofang_common::proto::Assignment;
pub use shared::{EngineFactory, ReconcileStats, Shared, Statuses};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
pub use worker::run;

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
    Volume(#[from] crate::volume::Error),
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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One reconcile pass's outcome: when to look again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Look again after this long.
    Requeue(Duration),
}

/// What one step of a pass says: go on with what it produced, or end the pass here (the
/// step has reported the member's status).
#[derive(Debug)]
enum Step<T> {
    /// Go on to the next step with this.
    Next(T),
    /// End the pass: look again as the action says.
    Stop(Action),
}

/// The value of a step that goes on; returns the action of one that stops the pass.
macro_rules! step {
    ($step:expr) => {
        match $step? {
            Step::Next(v) => v,
            Step::Stop(action) => return Ok(action),
        }
    };
}

/// One pass's view of the member: what every step reads and none changes.
struct Member<'a> {
    sh: &'a Shared,
    a: &'a Assignment,
    engine: &'a dyn Engine,
    role: &'a DesiredRole,
    /// The engine version the member's container runs ([`MemberState::version`]): the
    /// assignment's, but for a member an `upgrade` has not restarted yet.
    version: &'a str,
}

impl Member<'_> {
    fn name(&self) -> &str {
        &self.a.member
    }
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
    /// The credential rotation step this pass carried out (`<id>:<step>`), for its report.
    rotated: Option<String>,
    /// The container the agent killed as a silent deposed primary: its exit is no crash.
    killed_deposed: Option<String>,
    /// The container and the certificate its server was last told to load (TLS).
    tls_loaded: Option<(String, String)>,
    /// No new certificate is asked for before this (after a refusal; the kept one serves).
    tls_retry_at: Option<Instant>,
    /// Why the member's TLS is not what clients need yet (its certificate does not name its
    /// address yet, or the server has not loaded it): it is not reported healthy meanwhile,
    /// so `ready` means a client verifying the member's address gets in.
    tls_pending: Option<String>,
    /// The effective parameters as last read ([`params::read`]) and when.
    parameters: std::collections::BTreeMap<String, String>,
    parameters_read: Option<params::ParametersRead>,
    /// What the last full pass left when it found the member in good order: the passes
    /// after it only probe ([`probe`], [`decide::pass_kind`]).
    settled: Option<probe::Settled>,
    /// The primary (address and TLS) a replica was last told to follow, in which container
    /// it was then observed following it in order ([`decide::follow_in_order`]).
    followed: Option<(String, engine::Target)>,
    /// The primary this pass's role step asked the replica to follow.
    follow_asked: Option<engine::Target>,
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

pub use crate::statuses::STOPPED;

/// Reconciles one member once: a probe when the member is in good order and nothing changed
/// ([`decide::pass_kind`]), else the steps in order, each either going on or ending the pass.
/// `container_event`: the runtime reported an event of the member's container since the
/// last pass.
async fn reconcile_member(
    sh: &Shared,
    a: &Assignment,
    memo: &mut WorkerMemo,
    container_event: bool,
) -> Result<Action> {
    let started = Instant::now();
    let lease_writable = sh.lease.writable();
    let kind = decide::pass_kind(
        memo.settled.as_ref().map(probe::Settled::view).as_ref(),
        a,
        started,
        container_event,
        lease_writable,
    );
    if kind == decide::PassKind::Probe {
        if let Some(action) = probe::pass(sh, a, memo).await {
            return Ok(action);
        }
    }
    memo.settled = None;
    memo.follow_asked = None;
    let mut st = sh.state.load_member(&a.member)?;
    let orig = st.clone();
    // A new member, or one from before upgrades existed, is on the assignment's version; an
    // upgraded assignment reaches the member at its restart step (`container::running`).
    if st.version.is_empty() {
        st.version = a.version.clone();
    }
    let version = st.version.clone();
    let engine = (sh.engines)(&a.engine, &version).ok_or_else(|| Error::UnsupportedEngine {
        engine: a.engine.clone(),
        version: version.clone(),
    })?;
    let role = DesiredRole::parse(a).map_err(Error::BadAssignment)?;
    let m = Member {
        sh,
        a,
        engine: engine.as_ref(),
        role: &role,
        version: &version,
    };
    // The scheduler decided about a held primary: a newer epoch releases it.
    decide::release_hold(&mut st, a.epoch);

    let vol = volume::ensure(&m)?;
    if a.stopped {
        return container::stopped(&m, &mut st, memo).await;
    }
    let tls = step!(certs::material(&m, &st).await);
    let mut cfg = config::write(&m, &mut st, tls)?;
    let found = step!(container::present(&m, &cfg, &vol, &mut st).await);
    let running = step!(container::running(&m, found, &mut st, memo).await);
    if st != orig {
        sh.state.save_member(&a.member, &st)?;
    }
    certs::name_address(&m, &mut cfg, &mut st, &running, memo).await?;
    certs::serving(&m, &mut cfg, &mut st, &running)?;
    let server = step!(answers::ping(&m, &cfg, &running, &st, memo).await);
    step!(container::finish_upgrade(&m, &running, &mut st).await);
    certs::load(&m, &cfg, &server, &running, memo).await;
    certs::set_live(&m, &cfg, &server, &mut st).await?;
    memo.rotated = accounts::rotate(&m, &cfg, &server, &mut st).await;
    params::apply(&m, &cfg, &server, &mut st).await;
    let note = role::apply(&m, &cfg, &server, &running.id, &mut st, &orig, memo).await?;
    let obs = step!(observe::observe(&m, &cfg, &server, &running.id).await);
    // A restart keeps the container id: its start time tells the server process apart.
    let this_start = format!(
        "{}@{}",
        running.id,
        running.started_at.as_deref().unwrap_or_default()
    );
    params::read(&m, &cfg, &server, &this_start, &st, memo).await;
    memo.followed = memo
        .follow_asked
        .take()
        .filter(|p| obs.replication_ok && obs.read_only && observe::follows_target(&obs, p))
        .map(|p| (running.id.clone(), p));
    let (action, healthy) = observe::report(&m, &st, &running, &server, &obs, note, memo);
    if healthy {
        memo.settled = Some(probe::Settled {
            assignment: a.clone(),
            at: started,
            lease_writable,
            version,
            role,
            st,
            container: running,
            target: server.target,
            address: server.address,
            secrets: cfg.secrets,
            expect: engine::Probe::of(&obs),
        });
    }
    Ok(action)
}

#[cfg(test)]
mod fake;

#[cfg(test)]
mod tests {
    //! Whole passes on a recording fake runtime and engine: held primary, crash loop,
    //! epochs, fences. The same paths against real Docker and databases are in
    //! `tests/tests/{agent,failover}.rs`.

    use super::fake::{assignment, rig, Rig};
    use super::MAX_CRASH_RESTARTS;
    use crate::runtime::ContainerState;
    use std::time::Duration;

    /// The server answers (true) or not.
    fn answering(r: &Rig, yes: bool) {
        if let Ok(mut db) = r.db.0.lock() {
            db.answering = yes;
        }
    }

    #[tokio::test]
    async fn a_frozen_deposed_primary_is_killed_and_rejoins_with_no_crash_counted() {
        let mut r = rig(Duration::from_secs(10));
        r.sh.lease.renew();
        r.pass(&assignment("primary", 3, "")).await;
        r.rt.take_calls();
        r.db.take_calls();

        // Frozen while it is the primary of its epoch: silent, reported, never killed (the
        // scheduler decides whether to fail over).
        r.rt.set_state(ContainerState::Paused, None);
        for _ in 0..4 {
            let s = r.pass(&assignment("primary", 3, "")).await;
            assert!(!s.healthy && s.failed_checks > 0, "{s:?}");
        }
        assert!(
            r.rt.take_calls().is_empty(),
            "the epoch's primary is never killed"
        );

        // Deposed (a replica at epoch 4) and still silent: killed at once.
        r.pass(&assignment("replica", 4, "10.0.0.9:3306")).await;
        assert_eq!(r.rt.take_calls(), ["kill c1 KILL"]);
        // Started again as a replica, fenced before it follows; not a crash.
        let s = r.pass(&assignment("replica", 4, "10.0.0.9:3306")).await;
        assert_eq!(r.rt.take_calls(), ["start c1"]);
        assert_eq!(r.db.take_calls(), ["fence", "replicate_from 10.0.0.9:3306"]);
        assert!(s.healthy && s.role == "replica" && s.epoch == 4, "{s:?}");
        assert_eq!((s.restarts, s.crash_restarts), (1, 0), "{s:?}");
    }

    /// Decision 123, soak (failover.md defect 9): a held new primary must not open, on this
    /// pass or any later one, until the hold is lifted. The first fix recorded the held role
    /// as applied, and the next pass took it for a primary already open and opened it.
    #[tokio::test]
    async fn a_held_new_primary_stays_a_replica_until_the_hold_is_lifted() {
        let mut r = rig(Duration::from_secs(10));
        r.sh.lease.renew();
        r.pass(&assignment("replica", 3, "10.0.0.9:3306")).await;
        r.rt.take_calls();
        r.db.take_calls();
        let mut held = assignment("primary", 4, "");
        held.hold_open = true;
        for _ in 0..3 {
            let s = r.pass(&held).await;
            assert!(s.reason.contains("waiting until the old primary"), "{s:?}");
            assert_ne!(
                s.epoch, 4,
                "the held role is not recorded as applied: {s:?}"
            );
        }
        assert!(
            !r.db.take_calls().iter().any(|c| c.starts_with("promote")),
            "never opened while held"
        );
        let s = r.pass(&assignment("primary", 4, "")).await;
        assert_eq!(r.db.take_calls(), ["promote after=None"]);
        assert!(s.role == "primary" && s.epoch == 4, "{s:?}");
    }

    #[tokio::test]
    async fn a_hung_deposed_primary_is_killed_but_a_starting_one_is_not() {
        let mut r = rig(Duration::from_secs(10));
        r.sh.lease.renew();
        r.pass(&assignment("primary", 3, "")).await;
        r.rt.take_calls();
        answering(&r, false);
        r.pass(&assignment("replica", 4, "10.0.0.9:3306")).await;
        assert!(
            r.rt.take_calls().is_empty(),
            "one silent check is not enough"
        );
        r.pass(&assignment("replica", 4, "10.0.0.9:3306")).await;
        assert_eq!(r.rt.take_calls(), ["kill c1 KILL"]);
        // Restarted; silent while it boots: no failed check, so never killed again.
        for _ in 0..4 {
            r.pass(&assignment("replica", 4, "10.0.0.9:3306")).await;
        }
        assert_eq!(r.rt.take_calls(), ["start c1"]);
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

    /// Issue 19: a member in good order is only probed on the steady cadence; the probe
    /// seeing its replica's link go down brings the full pass (and the report) at once.
    #[tokio::test]
    async fn a_member_in_good_order_is_only_probed_until_its_server_shows_a_change() {
        let mut r = rig(Duration::from_secs(10));
        r.sh.lease.renew();
        let a = assignment("replica", 3, "10.0.0.9:3306");
        let s = r.pass(&a).await;
        assert!(s.healthy && s.replication_ok, "{s:?}");
        r.rt.take_calls();
        r.db.take_calls();
        for _ in 0..3 {
            let (action, s) = r.steady_pass(&a).await;
            assert_eq!(r.db.take_calls(), ["probe"], "nothing but the probe");
            assert!(r.rt.take_calls().is_empty(), "no runtime call");
            assert!(s.healthy && s.replication_ok, "{s:?}");
            assert_eq!(action, super::Action::Requeue(super::decide::STEADY_LOOK));
        }
        // The primary is gone: the replica's link goes down. Seen by the next probe, observed
        // and reported in the same pass, and the replica is told to follow again.
        r.db.0.lock().expect("db").link_up = false;
        let (_, s) = r.steady_pass(&a).await;
        assert!(!s.healthy && !s.replication_ok, "{s:?}");
        assert_eq!(r.db.take_calls(), ["probe", "replicate_from 10.0.0.9:3306"]);
        // Not in good order: full passes until it is again.
        r.steady_pass(&a).await;
        assert!(!r.db.take_calls().contains(&"probe".to_owned()));
        r.db.0.lock().expect("db").link_up = true;
        assert!(r.steady_pass(&a).await.1.healthy);
        r.db.take_calls();
        r.steady_pass(&a).await;
        assert_eq!(r.db.take_calls(), ["probe"]);
        // A new assignment is carried out at once.
        let (_, s) = r
            .steady_pass(&assignment("replica", 4, "10.0.0.7:3306"))
            .await;
        assert_eq!(r.db.take_calls(), ["replicate_from 10.0.0.7:3306"]);
        assert!(s.healthy && s.epoch == 4, "{s:?}");
    }

    /// Between full passes a replica's position and lag still move in its report: the probe
    /// reads them (as `observe` does) and they are reported without a full pass, so an
    /// instance is seen caught up as soon as it is, not at the next full pass.
    #[tokio::test]
    async fn a_probed_member_reports_its_position_and_lag_as_they_move() {
        let mut r = rig(Duration::from_secs(10));
        r.sh.lease.renew();
        let a = assignment("replica", 3, "10.0.0.9:3306");
        let s = r.pass(&a).await;
        assert!(s.healthy, "{s:?}");
        r.db.take_calls();
        {
            let mut db = r.db.0.lock().expect("db");
            db.position = "0-1-42".into();
            db.lag = 3;
        }
        let (_, s) = r.steady_pass(&a).await;
        assert_eq!(
            r.db.take_calls(),
            ["probe"],
            "no full pass for a moved position"
        );
        assert_eq!((s.position.as_str(), s.lag_seconds), ("0-1-42", 3), "{s:?}");
        assert!(s.healthy, "{s:?}");
    }

    /// A probe that is not answered is a failed check, as a failed ping is; the passes after
    /// it are full ones, so a frozen server is counted down at the same cadence as before.
    #[tokio::test]
    async fn an_unanswered_probe_is_a_failed_check_and_the_next_pass_is_full() {
        let mut r = rig(Duration::from_secs(10));
        r.sh.lease.renew();
        let a = assignment("primary", 3, "");
        assert!(r.pass(&a).await.healthy);
        r.db.take_calls();
        answering(&r, false);
        let (action, s) = r.steady_pass(&a).await;
        assert_eq!(r.db.take_calls(), ["probe"]);
        assert!(!s.healthy && s.failed_checks == 1, "{s:?}");
        assert_eq!(
            action,
            super::Action::Requeue(Duration::from_millis(250)),
            "looked at again soon"
        );
        let (_, s) = r.steady_pass(&a).await;
        assert!(r.db.take_calls().is_empty(), "a full pass: the ping fails");
        assert_eq!(s.failed_checks, 2, "{s:?}");
        answering(&r, true);
        let (_, s) = r.steady_pass(&a).await;
        assert!(s.healthy && s.failed_checks == 0, "{s:?}");
    }

    /// Decision 145 kept: an open primary is looked at when its lease stops being writable,
    /// and that look is a full pass that fences it, probe cadence or not.
    #[tokio::test]
    async fn an_open_primary_is_fenced_when_its_lease_stops_being_writable_between_probes() {
        let mut r = rig(Duration::from_millis(500));
        r.sh.lease.renew();
        let a = assignment("primary", 3, "");
        assert!(r.pass(&a).await.healthy);
        r.db.take_calls();
        let (action, _) = r.steady_pass(&a).await;
        assert_eq!(r.db.take_calls(), ["probe"]);
        let super::Action::Requeue(next) = action;
        // No later than the lease's writable time after its renewal (and a 5 ms margin).
        let writable = r.sh.lease.ttl() - r.sh.lease.fence_budget();
        assert!(
            next <= writable + Duration::from_millis(5),
            "looked at again when the lease stops being writable: {next:?} > {writable:?}"
        );
        tokio::time::sleep(next).await;
        let (_, s) = r.steady_pass(&a).await;
        assert!(r.db.take_calls().contains(&"fence".to_owned()));
        assert_eq!(s.role, "fenced", "{s:?}");
    }

    /// Issue 19 point 4: a replica observed following its primary is not told to again.
    #[tokio::test]
    async fn a_replica_in_order_is_not_repointed_at_every_pass() {
        let mut r = rig(Duration::from_secs(10));
        r.sh.lease.renew();
        let a = assignment("replica", 3, "10.0.0.9:3306");
        r.pass(&a).await;
        assert_eq!(r.db.take_calls(), ["replicate_from 10.0.0.9:3306"]);
        let s = r.pass(&a).await;
        assert!(r.db.take_calls().is_empty(), "in order: left alone");
        assert!(s.healthy, "{s:?}");
        // Its replication stops: told to follow again (which restarts it).
        r.db.0.lock().expect("db").link_up = false;
        r.pass(&a).await;
        r.db.0.lock().expect("db").link_up = true;
        r.pass(&a).await;
        assert_eq!(r.db.take_calls(), ["replicate_from 10.0.0.9:3306"]);
    }

    /// The engine calls of a rotation (the role step's, every pass, left out).
    fn rotation_calls(r: &super::fake::Rig) -> Vec<String> {
        r.db.take_calls()
            .into_iter()
            .filter(|c| c.starts_with("set_passwords") || c == "use_repl_password")
            .collect()
    }

    #[tokio::test]
    async fn a_rotation_step_is_carried_out_every_pass_and_reported_and_replication_switches_once()
    {
        let mut r = rig(Duration::from_secs(10));
        r.sh.lease.renew();
        let rotating = |step: &str, other: &str| {
            let mut a = assignment("replica", 3, "10.0.0.9:3306");
            a.rotation = Some(mofang_common::proto::CredentialRotation {
                id: 42,
                account: "repl".into(),
                step: step.into(),
                other_password: other.into(),
            });
            a
        };
        r.pass(&assignment("replica", 3, "10.0.0.9:3306")).await;
        let s = r.pass(&assignment("replica", 3, "10.0.0.9:3306")).await;
        assert!(s.healthy, "{s:?}");
        assert_eq!(s.rotation, "", "no rotation, nothing reported");
        rotation_calls(&r);
        let s = r.pass(&rotating("add", "Newpassword0123456789")).await;
        assert_eq!(rotation_calls(&r), ["set_passwords repl x2"]);
        assert_eq!(s.rotation, "42:add");
        assert!(s.healthy, "{s:?}");
        // From the switch on, replication logs in with the new password: once.
        let s = r.pass(&rotating("switch", "Oldpassword0123456789")).await;
        assert_eq!(
            rotation_calls(&r),
            ["set_passwords repl x2", "use_repl_password"]
        );
        assert_eq!(s.rotation, "42:switch");
        let s = r.pass(&rotating("switch", "Oldpassword0123456789")).await;
        assert_eq!(rotation_calls(&r), ["set_passwords repl x2"]);
        assert_eq!(s.rotation, "42:switch");
        let s = r.pass(&rotating("drop", "")).await;
        assert_eq!(rotation_calls(&r), ["set_passwords repl x1"]);
        assert_eq!(s.rotation, "42:drop");
        // An order it cannot read is not carried out, and not reported done.
        let s = r.pass(&rotating("add", "")).await;
        assert!(rotation_calls(&r).is_empty());
        assert_eq!(s.rotation, "");
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

    /// Decision 145: the fence comes a budget before the lease runs out, while the lease
    /// still holds; the HTTP role check stops naming it the primary from then.
    #[tokio::test]
    async fn a_primary_is_fenced_a_budget_before_its_lease_runs_out() {
        let mut r = rig(Duration::from_millis(1000));
        r.sh.lease.renew();
        let s = r.pass(&assignment("primary", 3, "")).await;
        assert!(s.healthy && s.role == "primary", "{s:?}");
        r.db.take_calls();
        // 800 ms into a 1 s lease with the default 300 ms budget: valid, not writable.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(r.sh.lease.valid() && !r.sh.lease.writable());
        let s = r.pass(&assignment("primary", 3, "")).await;
        assert_eq!(r.db.take_calls(), ["fence"]);
        assert!(!s.healthy && s.role == "fenced", "{s:?}");
    }

    #[tokio::test]
    async fn a_restart_asked_by_the_scheduler_happens_once_per_generation() {
        let mut r = rig(Duration::from_secs(10));
        r.sh.lease.renew();
        let mut a = assignment("replica", 3, "10.0.0.9:3306");
        a.restart_generation = 2;
        // A new container carries out every restart asked so far: none now.
        let s = r.pass(&a).await;
        assert_eq!(s.restart_generation, 2, "{s:?}");
        assert!(!r.rt.take_calls().iter().any(|c| c.starts_with("stop")));
        // A newer generation: stopped and started again, once, however often it passes.
        a.restart_generation = 3;
        let s = r.pass(&a).await;
        assert_eq!(r.rt.take_calls(), ["stop c1", "start c1"]);
        assert_eq!(s.restart_generation, 3, "{s:?}");
        r.pass(&a).await;
        r.pass(&a).await;
        assert!(r.rt.take_calls().is_empty());
        // Not a crash: the crash-loop window is untouched.
        assert_eq!(r.status().crash_restarts, 0);
    }

    #[tokio::test]
    async fn a_rebuild_asked_by_the_scheduler_replaces_a_replicas_container_and_volume_once() {
        let mut r = rig(Duration::from_secs(10));
        r.sh.lease.renew();
        let mut a = assignment("replica", 3, "10.0.0.9:3306");
        a.rebuild_generation = 1;
        let s = r.pass(&a).await;
        assert_eq!(
            s.rebuild_generation, 1,
            "a new container needs no rebuild: {s:?}"
        );
        r.rt.take_calls();
        a.rebuild_generation = 2;
        let s = r.pass(&a).await;
        assert_eq!(r.rt.take_calls(), ["stop c1", "remove c1"]);
        assert_eq!(s.rebuild_generation, 2, "{s:?}");
        // The next pass makes a fresh container, seeded from the primary; once only.
        r.pass(&a).await;
        let calls = r.rt.take_calls();
        assert!(calls.iter().any(|c| c.starts_with("create")), "{calls:?}");
        r.pass(&a).await;
        let calls = r.rt.take_calls();
        assert!(!calls.iter().any(|c| c.starts_with("remove")), "{calls:?}");
        // Never the primary.
        let mut p = assignment("primary", 4, "");
        p.rebuild_generation = 9;
        r.pass(&p).await;
        let calls = r.rt.take_calls();
        assert!(!calls.iter().any(|c| c.starts_with("remove")), "{calls:?}");
    }

    #[tokio::test]
    async fn a_stopped_instance_keeps_its_container_stopped_and_is_not_held() {
        let mut r = rig(Duration::from_secs(10));
        r.sh.lease.renew();
        let mut a = assignment("primary", 3, "");
        r.pass(&a).await;
        r.rt.take_calls();
        a.stopped = true;
        let s = r.pass(&a).await;
        assert_eq!(r.rt.take_calls(), ["stop c1"]);
        assert!(!s.healthy && !s.held && !s.failed, "{s:?}");
        assert_eq!(s.container_state, "stopped", "{s:?}");
        // Stays stopped: no restart, however often it passes.
        r.pass(&a).await;
        assert!(r.rt.take_calls().is_empty());
        // Started again: the same container. While its server boots, its silence is no
        // failed check (it answered in this container before the stop: a scheduler counting
        // those would fail the primary over; found end to end).
        a.stopped = false;
        r.db.0.lock().expect("db").answering = false;
        let s = r.pass(&a).await;
        assert_eq!(r.rt.take_calls(), ["start c1"]);
        assert_eq!(s.failed_checks, 0, "{s:?}");
        r.db.0.lock().expect("db").answering = true;
        let s = r.pass(&a).await;
        assert!(s.healthy && s.role == "primary" && s.epoch == 3, "{s:?}");
        assert_eq!(s.crash_restarts, 0, "{s:?}");
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

    #[tokio::test]
    async fn a_demoted_redis_primary_promoted_again_takes_writes() {
        // Soak, Redis round 3: the first primary, killed, came back fenced (CLIENT PAUSE
        // WRITE) as a replica and was promoted again with the pause still on.
        let mut r = rig(Duration::from_secs(10));
        r.sh.lease.renew();
        if let Ok(mut db) = r.db.0.lock() {
            db.kind = mofang_common::EngineKind::Redis;
        }
        r.pass(&assignment("primary", 3, "")).await;
        let s = r.pass(&assignment("replica", 4, "10.0.0.9:6379")).await;
        assert_eq!(
            r.db.take_calls(),
            [
                "promote after=None",
                "fence",
                "replicate_from 10.0.0.9:6379",
                "unfence"
            ]
        );
        assert!(s.healthy && s.role == "replica", "{s:?}");
        assert!(!r.db.0.lock().expect("db").paused, "the pause is lifted");
        let s = r.pass(&assignment("primary", 5, "")).await;
        assert!(s.healthy && s.role == "primary" && s.epoch == 5, "{s:?}");
        assert!(
            !r.db.0.lock().expect("db").paused,
            "the primary takes writes"
        );
    }

    /// An upgrade (issue 17): the assignment's new version reaches the member only at its
    /// restart step; then the container is recreated on the new image (same volume), the
    /// engine's data upgrade runs once the server answers, and only then is the new version
    /// reported.
    #[tokio::test]
    async fn an_upgrade_recreates_the_container_at_its_restart_step_and_reports_once_upgraded() {
        let mut r = rig(Duration::from_secs(10));
        r.sh.lease.renew();
        let mut a = assignment("primary", 3, "");
        let s = r.pass(&a).await;
        assert_eq!(s.version, "10.11", "{s:?}");
        r.rt.take_calls();

        a.version = "11.8".into();
        let s = r.pass(&a).await;
        assert!(r.rt.take_calls().is_empty(), "not before its restart step");
        assert_eq!(s.version, "10.11", "still on its old version: {s:?}");

        a.restart_generation = 1;
        let s = r.pass(&a).await;
        assert_eq!(r.rt.take_calls(), ["stop c1", "remove c1"]);
        assert!(
            !s.healthy && s.reason.contains("upgrading to 11.8"),
            "{s:?}"
        );
        let s = r.pass(&a).await;
        assert_eq!(
            r.rt.take_calls(),
            ["create mofang-db-0", "start c2", "exec c2 mariadb-upgrade"]
        );
        assert_eq!(r.rt.created()[1].image, "mofang/mariadb:11.8");
        assert_eq!(r.rt.created()[1].labels["mofang.version"], "11.8");
        assert!(
            s.healthy && s.version == "11.8" && s.restart_generation == 1,
            "{s:?}"
        );
        // Once: the next passes run nothing more.
        r.pass(&a).await;
        assert!(r.rt.take_calls().is_empty());
    }

    /// Resize (issue 17): a new CPU limit is applied to the running container at once, with
    /// no restart; new memory waits for the member's restart and is applied while it is down.
    /// Both are reported.
    #[tokio::test]
    async fn a_new_cpu_limit_goes_live_and_new_memory_waits_for_the_restart() {
        let mut r = rig(Duration::from_secs(10));
        r.sh.lease.renew();
        let mut a = assignment("primary", 3, "");
        let s = r.pass(&a).await;
        assert_eq!((s.cpu, s.memory_bytes), (0.5, 256 << 20), "{s:?}");
        r.rt.take_calls();
        a.cpu = 1.0;
        a.memory_bytes = 512 << 20;
        let s = r.pass(&a).await;
        assert_eq!(r.rt.take_calls(), ["update c1 1 256"], "CPU only, live");
        assert_eq!((s.cpu, s.memory_bytes), (1.0, 256 << 20), "{s:?}");
        r.pass(&a).await;
        assert!(r.rt.take_calls().is_empty(), "applied once");
        a.restart_generation = 1;
        let s = r.pass(&a).await;
        assert_eq!(
            r.rt.take_calls(),
            ["stop c1", "update c1 1 512", "start c1"],
            "memory while it is down"
        );
        assert_eq!((s.cpu, s.memory_bytes), (1.0, 512 << 20), "{s:?}");
        assert_eq!(s.restart_generation, 1);
    }

    /// Reconfigure (issue 17): the parameters generation is reported once applied, and only a
    /// newer one is applied again; the status carries the values the server runs.
    #[tokio::test]
    async fn parameters_are_applied_once_per_generation_and_reported() {
        let mut r = rig(Duration::from_secs(10));
        r.sh.lease.renew();
        let mut a = assignment("primary", 3, "");
        assert_eq!(r.pass(&a).await.parameters_generation, 0);
        a.settings.insert("max_connections".into(), "321".into());
        a.parameters_generation = 2;
        let s = r.pass(&a).await;
        assert_eq!(s.parameters_generation, 2);
        assert_eq!(
            s.parameters.get("max_connections").map(String::as_str),
            Some("321"),
            "the effective value, as the server reports it: {s:?}"
        );
        let st = r.sh.state.load_member("db-0").expect("state");
        assert_eq!(st.parameters_generation, 2);
        r.db.take_calls();
        // Changed on the server behind the agent's back: not read back at every pass (the
        // pass is the liveness check), reported as the server runs it once the read is due,
        // and not set again (the generation is applied).
        r.db.0
            .lock()
            .expect("db")
            .parameters
            .insert("max_connections".into(), "77".into());
        let s = r.pass(&a).await;
        assert_eq!(
            s.parameters.get("max_connections").map(String::as_str),
            Some("321"),
            "read again only when due: {s:?}"
        );
        let read = r.memo.parameters_read.as_mut().expect("parameters read");
        read.at = read
            .at
            .checked_sub(super::params::PARAMETERS_EVERY)
            .expect("an instant 10 s back");
        let s = r.pass(&a).await;
        assert_eq!(
            s.parameters.get("max_connections").map(String::as_str),
            Some("77")
        );
        assert!(
            !r.db
                .take_calls()
                .iter()
                .any(|c| c.starts_with("set_parameter")),
            "an applied generation is not set again"
        );
    }

    /// The parameters' cadence: first read at once, again in a new container, after the
    /// same container restarted (its start time) or after a new generation was applied,
    /// otherwise only every `PARAMETERS_EVERY`.
    #[test]
    fn parameters_are_read_when_due_and_not_at_every_pass() {
        use super::params::{parameters_due, ParametersRead, PARAMETERS_EVERY};
        let t0 = std::time::Instant::now();
        let c1 = "c1@2026-12-03T14:00:00Z";
        assert!(parameters_due(None, t0, c1, 0));
        let last = ParametersRead {
            at: t0,
            container: c1.into(),
            generation: 2,
        };
        let soon = t0 + Duration::from_millis(250);
        assert!(!parameters_due(Some(&last), soon, c1, 2));
        assert!(
            parameters_due(Some(&last), soon, "c2@2026-12-03T14:00:05Z", 2),
            "recreated"
        );
        assert!(
            parameters_due(Some(&last), soon, "c1@2026-12-03T14:00:05Z", 2),
            "restarted in place (a rolling restart)"
        );
        assert!(parameters_due(Some(&last), soon, c1, 3), "new generation");
        assert!(parameters_due(Some(&last), t0 + PARAMETERS_EVERY, c1, 2));
        // A clock that went back never makes a read overdue forever nor panics.
        assert!(!parameters_due(Some(&last), t0, c1, 2));
    }
}

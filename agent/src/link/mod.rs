//! The agent's link to the scheduler: dial, register, heartbeat to hold the lease, and follow the desired state.
//!
//! The agent is the gRPC client (the scheduler never dials agents). One session is: connect, `Register`, then
//! `Heartbeat` on a timer and a `WatchAssignments` stream side by side; the first failure of either ends the
//! session, and the link backs off and dials the next scheduler endpoint. The lease says whether the scheduler
//! acknowledged us recently; the rest of the agent uses it to decide whether it may still act (fencing).

use mofang_common::proto::agent_control_client::AgentControlClient;
use mofang_common::proto::{DesiredState, HeartbeatRequest, RegisterRequest, WatchRequest};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, error, info, warn, Instrument};

pub mod delta;

/// Default time between two heartbeats.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Default lifetime of the lease after the last acknowledged heartbeat.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// How long dialing one endpoint may take (the TCP connection) ...
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// ... and the whole connection with its TLS and HTTP/2 handshakes: a frozen scheduler
/// (stopped, hung) still completes the TCP connection in its kernel and then never answers
/// the handshake, which held the agent there for as long as it stayed frozen, away from the
/// new leader (found by the console's follower test, a leader under SIGSTOP).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(4);
/// How long `Register` and opening the watch stream may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// First delay between two sessions.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest delay between two sessions.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Delay before the next scheduler after a follower answered: it is up, only not leading
/// (an election is under way), so the agent polls the schedulers at this pace instead of
/// backing off, and reaches the new leader within it of its win.
const FOLLOWER_RETRY: Duration = Duration::from_millis(250);
/// A zero interval would make `tokio::time::interval` panic and the link spin.
const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(10);

/// Errors of one link session; they end the session, never the link.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No scheduler endpoint is configured.
    #[error("no scheduler endpoints configured")]
    NoSchedulers,
    /// The endpoint is not a valid URI.
    #[error("invalid scheduler endpoint {endpoint:?}")]
    InvalidEndpoint {
        /// The endpoint as configured.
        endpoint: String,
        /// Why it was rejected.
        #[source]
        source: tonic::transport::Error,
    },
    /// The scheduler could not be dialed (refused, unreachable, timed out).
    #[error("cannot connect to the scheduler")]
    Connect(#[source] tonic::transport::Error),
    /// A call was answered with an error status.
    #[error("{call} failed")]
    Call {
        /// The RPC.
        call: &'static str,
        /// The status the scheduler (or the transport) returned.
        #[source]
        status: tonic::Status,
    },
    /// A call got no answer in time.
    #[error("{call} timed out after {after:?}")]
    Timeout {
        /// The RPC.
        call: &'static str,
        /// The time allowed.
        after: Duration,
    },
    /// The scheduler ended the assignments stream.
    #[error("the scheduler closed the assignments stream")]
    StreamEnded,
    /// TLS set-up failed (a file unreadable) or the join was refused.
    #[error(transparent)]
    Tls(#[from] crate::tls::Error),
}

/// Result of link operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The call reached a scheduler that is up but does not lead (it marks its answer).
    fn is_follower_answer(&self) -> bool {
        matches!(self, Error::Call { status, .. }
            if status.code() == tonic::Code::Unavailable
                && status.metadata().contains_key(mofang_common::FOLLOWER_METADATA))
    }
}

/// Where and how often the link talks to the scheduler.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// This node's name, as registered.
    pub node: String,
    /// Scheduler gRPC endpoints, e.g. `["http://127.0.0.1:9090"]`; tried in turn (round robin) on failure.
    pub schedulers: Vec<String>,
    /// Time between two heartbeats. Default 1 s.
    pub heartbeat_interval: Duration,
    /// Lifetime of the lease after the last acknowledged heartbeat. Default 10 s.
    pub lease_ttl: Duration,
    /// Consul HTTP address to find schedulers at (service `mofang-scheduler`); the static
    /// list is the fallback. Default none.
    pub consul: Option<String>,
    /// Mutual TLS (certificate files, server name, join token); `None`: plain gRPC.
    pub tls: Option<crate::tls::LinkTls>,
    /// Where the session's client is published for the agent's other calls.
    pub current: Current,
}

/// The client of the link's current session with the leading scheduler, published for the
/// agent's calls outside the link (a member's certificate, `SignMemberCertificate`); None
/// between sessions.
#[derive(Clone, Default)]
pub struct Current(Arc<std::sync::Mutex<Option<AgentControlClient<Channel>>>>);

impl std::fmt::Debug for Current {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Current")
    }
}

impl Current {
    /// The current session's client, if a session is up.
    pub fn get(&self) -> Option<AgentControlClient<Channel>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, client: Option<AgentControlClient<Channel>>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = client;
    }
}

/// Clears the published client when a session ends, however it ends.
struct Published<'a>(&'a Current);

impl Drop for Published<'_> {
    fn drop(&mut self) {
        self.0.set(None);
    }
}

impl LinkConfig {
    /// A config with the default heartbeat interval and lease ttl.
    pub fn new(node: impl Into<String>, schedulers: Vec<String>) -> Self {
        Self {
            node: node.into(),
            schedulers,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            lease_ttl: DEFAULT_LEASE_TTL,
            consul: None,
            tls: None,
            current: Current::default(),
        }
    }

    /// The heartbeat interval, never zero.
    fn interval(&self) -> Duration {
        self.heartbeat_interval.max(MIN_HEARTBEAT_INTERVAL)
    }

    /// How long one heartbeat may take: one and a half intervals, or a quarter of the lease if
    /// that is longer. A late answer is still a safe renewal (the lease counts from when the
    /// heartbeat was sent), so a loaded scheduler that answers in 400 ms must not cost the
    /// lease of an agent beating every 200 ms; a hung one is still given up well within it.
    fn heartbeat_timeout(&self) -> Duration {
        (self.interval().saturating_mul(3) / 2).max(self.lease_ttl / 4)
    }

    /// How long the link waits for a heartbeat's answer: [`heartbeat_timeout`] when another
    /// endpoint could answer sooner; the whole lease with a sole endpoint. A heartbeat given
    /// up is cancelled, and a scheduler that had not yet handled it never sees the statuses it
    /// carried: with a 500 ms timeout on a saturated machine most beats were given up and a
    /// dead primary's report reached the scheduler 3 to 6 s late (session 14). A late answer
    /// still renews the lease from when the beat was sent.
    ///
    /// [`heartbeat_timeout`]: Self::heartbeat_timeout
    fn heartbeat_wait(&self) -> Duration {
        if self.sole_endpoint() {
            self.lease_ttl.max(self.heartbeat_timeout())
        } else {
            self.heartbeat_timeout()
        }
    }

    /// One scheduler endpoint and no Consul to find others: a slow link is never traded for
    /// another ([`keep_link_after_miss`]).
    fn sole_endpoint(&self) -> bool {
        self.schedulers.len() == 1 && self.consul.is_none()
    }
}

/// The fence budget when none is configured: three tenths of the lease (3 s of the default
/// 10 s).
pub fn default_fence_budget(ttl: Duration) -> Duration {
    ttl * 3 / 10
}

/// Shared lease: the time of the last heartbeat the scheduler acknowledged.
#[derive(Clone, Debug)]
pub struct Lease {
    inner: Arc<LeaseInner>,
}

#[derive(Debug)]
struct LeaseInner {
    ttl: Duration,
    fence_budget: Duration,
    last_ack: Mutex<Option<Instant>>,
}

impl Lease {
    /// A lease that is not valid until the first [`renew`](Self::renew), whose primaries
    /// stop writes [`default_fence_budget`] before it runs out.
    pub fn new(ttl: Duration) -> Self {
        Self::with_fence_budget(ttl, default_fence_budget(ttl))
    }

    /// A lease whose primaries stop writes `fence_budget` before it runs out (decision 145):
    /// a fence is a call to a server that may be starved, and the scheduler may open another
    /// primary as soon as the lease has run out.
    pub fn with_fence_budget(ttl: Duration, fence_budget: Duration) -> Self {
        Self {
            inner: Arc::new(LeaseInner {
                ttl,
                fence_budget: fence_budget.min(ttl),
                last_ack: Mutex::new(None),
            }),
        }
    }

    /// True while a primary may take writes: the lease holds for longer than the fence
    /// budget. Once false, the primary is fenced, and killed if the fence has not finished
    /// when the lease runs out.
    pub fn writable(&self) -> bool {
        self.writable_for().is_some()
    }

    /// How long a primary may still take writes: None when it may not now.
    pub fn writable_for(&self) -> Option<Duration> {
        self.remaining()?
            .checked_sub(self.inner.fence_budget)
            .filter(|d| !d.is_zero())
    }

    /// How long before the lease runs out a primary stops writes.
    pub fn fence_budget(&self) -> Duration {
        self.inner.fence_budget
    }

    /// True while the last acknowledged heartbeat is younger than the ttl. False before the first ack.
    pub fn valid(&self) -> bool {
        self.valid_at(Instant::now())
    }

    /// Records an acknowledgement now.
    pub fn renew(&self) {
        self.renew_at(Instant::now());
    }

    /// The time of the last acknowledgement, if any.
    pub fn last_ack(&self) -> Option<Instant> {
        *self.lock()
    }

    /// The lease's lifetime after an acknowledgement.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// How long the lease still holds: None when it does not hold now.
    pub fn remaining(&self) -> Option<Duration> {
        let at = self.last_ack()?;
        self.inner
            .ttl
            .checked_sub(at.elapsed())
            .filter(|d| !d.is_zero())
    }

    /// Whether the lease holds at `now`.
    fn valid_at(&self, now: Instant) -> bool {
        self.last_ack()
            .is_some_and(|at| now.saturating_duration_since(at) < self.inner.ttl)
    }

    /// Records an acknowledgement dated `at`; never moves the lease backwards.
    ///
    /// The link dates an ack by when the heartbeat was *sent*: the scheduler saw it no earlier, so the
    /// agent's lease always runs out before the scheduler's view of it does, and the agent stops acting as
    /// an owner before the scheduler hands its members to another node.
    fn renew_at(&self, at: Instant) {
        let mut last = self.lock();
        if last.is_none_or(|prev| prev < at) {
            *last = Some(at);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // The guarded value is a plain `Option<Instant>`: a panic while holding it cannot leave it torn.
        self.inner
            .last_ack
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the link asks the rest of the agent for.
pub trait NodeSource: Send + Sync + 'static {
    /// The registration sent on every (re)connect.
    fn register_request(&self) -> RegisterRequest;
    /// The observed state sent on every heartbeat.
    fn heartbeat_request(&self) -> HeartbeatRequest;
    /// Woken when a member's status changed in a way the scheduler must learn at once (a
    /// primary died): the next heartbeat goes out without waiting for the interval.
    fn status_changed(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }
    /// Told the outcome of each heartbeat (for the agent's metrics). Default: ignored.
    fn heartbeat_result(&self, _acknowledged: bool) {}
}

/// Exponential backoff between sessions, with jitter.
#[derive(Debug, Clone)]
struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// Back to the shortest delay (after a successful `Register`).
    fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The upper bound of the next delay: `min * 2^attempt`, capped at `max`.
    fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next delay, given `jitter` in [0, 1]: between half the ceiling and the ceiling ("equal jitter"),
    /// so that agents cut off together by a scheduler restart do not all dial back at the same instant.
    fn next_delay(&mut self, jitter: f64) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let half = ceiling / 2;
        half + half.mul_f64(jitter)
    }
}

/// Runs the link until `shutdown` is cancelled.
///
/// Connects (round robin over `cfg.schedulers`), registers, then heartbeats every interval (renewing `lease` on
/// each acknowledgement) while following `WatchAssignments`: each desired state received is published in
/// `desired` unless its revision is older than the one already there. Any failure is logged, then the link
/// backs off and tries the next endpoint. Returns only on shutdown.
pub async fn run(
    cfg: LinkConfig,
    source: Arc<dyn NodeSource>,
    desired: watch::Sender<Option<DesiredState>>,
    lease: Lease,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("scheduler_link", node = %cfg.node);
    run_inner(cfg, source, desired, lease, shutdown)
        .instrument(span)
        .await;
}

async fn run_inner(
    cfg: LinkConfig,
    source: Arc<dyn NodeSource>,
    desired: watch::Sender<Option<DesiredState>>,
    lease: Lease,
    shutdown: CancellationToken,
) {
    if cfg.schedulers.is_empty() {
        error!(error = %Error::NoSchedulers, "scheduler link cannot start");
        shutdown.cancelled().await;
        return;
    }
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    let mut next = 0usize;
    loop {
        // Schedulers registered in Consul (healthy ones), else the static list.
        let found = match &cfg.consul {
            Some(c) => discover(c, cfg.tls.is_some()).await,
            None => Vec::new(),
        };
        let list = if found.is_empty() {
            &cfg.schedulers
        } else {
            &found
        };
        let endpoint = &list[next % list.len()];
        next = next.wrapping_add(1);

        let outcome = tokio::select! {
            _ = shutdown.cancelled() => break,
            outcome = session(endpoint, &cfg, source.as_ref(), &desired, &lease, &mut backoff) => outcome,
        };
        match &outcome {
            // The certificate files changed (a renewal): reconnect at once, to the same
            // scheduler, with the new certificate. Database containers are not touched.
            Ok(()) => {
                info!(endpoint = %endpoint, "certificate files changed: reconnecting with them");
                next = next.wrapping_sub(1);
                continue;
            }
            Err(Error::Tls(e @ crate::tls::Error::Refused(_))) => {
                error!(endpoint = %endpoint, error = %ErrorChain(e), "cannot join the cluster: the join token was refused; give a new one (tls.join_token)");
            }
            Err(e) => {
                warn!(endpoint = %endpoint, error = %ErrorChain(e), "scheduler link lost");
            }
        }

        // A follower's answer shows the schedulers up and reachable: no backoff (which
        // would otherwise grow with each try of a dead leader's address during the election
        // and could hold the agent off for seconds after the new leader won).
        let delay = match &outcome {
            Err(e) if e.is_follower_answer() => {
                backoff.reset();
                FOLLOWER_RETRY
            }
            _ => backoff.next_delay(rand::random::<f64>()),
        };
        debug!(
            delay_ms = delay.as_millis() as u64,
            "backing off before the next scheduler"
        );
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    info!("scheduler link stopped");
}

/// The gRPC endpoints of the healthy `mofang-scheduler` services in Consul (its catalog, the
/// same data its DNS answers from); empty when Consul cannot be asked.
pub async fn discover(consul: &str, tls: bool) -> Vec<String> {
    let scheme = if tls { "https" } else { "http" };
    let url = format!(
        "{}/v1/health/service/mofang-scheduler?passing=true",
        consul.trim_end_matches('/')
    );
    let answer = async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        client
            .get(&url)
            .send()
            .await?
            .json::<serde_json::Value>()
            .await
    }
    .await;
    let entries = match answer {
        Ok(v) => v,
        Err(e) => {
            warn!(consul = %consul, error = %e, "cannot ask Consul for schedulers; using the static list");
            return Vec::new();
        }
    };
    let mut out: Vec<String> = entries
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let svc = &e["Service"];
            let addr = svc["Address"]
                .as_str()
                .filter(|a| !a.is_empty())
                .or_else(|| e["Node"]["Address"].as_str())?;
            let port = svc["Meta"]["grpc_port"].as_str()?.parse::<u16>().ok()?;
            Some(format!("{scheme}://{addr}:{port}"))
        })
        .collect();
    out.sort();
    out
}

/// One session against one endpoint; returns when it fails.
async fn session(
    endpoint: &str,
    cfg: &LinkConfig,
    source: &dyn NodeSource,
    desired: &watch::Sender<Option<DesiredState>>,
    lease: &Lease,
    backoff: &mut Backoff,
) -> Result<()> {
    if let Some(tls) = &cfg.tls {
        if !tls.has_certificate() {
            tls.join(endpoint, CONNECT_TIMEOUT).await?;
        }
    }
    let stamp = cfg.tls.as_ref().map(|t| t.stamp());
    let mut client = connect(endpoint, cfg.tls.as_ref()).await?;

    let request = source.register_request();
    let answer = tokio::time::timeout(CALL_TIMEOUT, client.register(request))
        .await
        .map_err(|_| Error::Timeout {
            call: "Register",
            after: CALL_TIMEOUT,
        })?
        .map_err(|status| Error::Call {
            call: "Register",
            status,
        })?
        .into_inner();
    backoff.reset();
    info!(
        endpoint = %endpoint,
        scheduler_heartbeat_interval_ms = answer.heartbeat_interval_ms,
        scheduler_lease_ttl_ms = answer.lease_ttl_ms,
        "registered with the scheduler"
    );

    cfg.current.set(Some(client.clone()));
    let _published = Published(&cfg.current);
    tokio::select! {
        r = heartbeats(client.clone(), cfg, source, desired, lease) => r,
        r = follow_assignments(client, cfg, desired) => r,
        () = files_changed(cfg.tls.as_ref(), stamp) => Ok(()),
    }
}

/// Returns when the certificate, key or CA file changes (checked every 2 s); never without
/// TLS.
async fn files_changed(
    tls: Option<&crate::tls::LinkTls>,
    stamp: Option<Vec<Option<std::time::SystemTime>>>,
) {
    let (Some(tls), Some(stamp)) = (tls, stamp) else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        if tls.stamp() != stamp {
            return;
        }
    }
}

async fn connect(
    endpoint: &str,
    tls: Option<&crate::tls::LinkTls>,
) -> Result<AgentControlClient<Channel>> {
    let mut ep =
        Endpoint::from_shared(endpoint.to_owned()).map_err(|source| Error::InvalidEndpoint {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    if let Some(tls) = tls {
        ep = ep
            .tls_config(tls.client_config(false)?)
            .map_err(|source| Error::InvalidEndpoint {
                endpoint: endpoint.to_owned(),
                source,
            })?;
    }
    let ep = ep
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        // A silently vanished scheduler (partition, dead host) must end the watch stream too.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let channel = tokio::time::timeout(HANDSHAKE_TIMEOUT, ep.connect())
        .await
        .map_err(|_| Error::Timeout {
            call: "Connect (TLS and HTTP/2 handshakes)",
            after: HANDSHAKE_TIMEOUT,
        })?
        .map_err(Error::Connect)?;
    debug!(endpoint = %endpoint, "connected to the scheduler");
    Ok(AgentControlClient::new(channel))
}

/// Heartbeats every interval, renewing the lease on each answer; returns on the first failure.
async fn heartbeats(
    mut client: AgentControlClient<Channel>,
    cfg: &LinkConfig,
    source: &dyn NodeSource,
    desired: &watch::Sender<Option<DesiredState>>,
    lease: &Lease,
) -> Result<()> {
    let timeout = cfg.heartbeat_wait();
    let mut ticker = tokio::time::interval(cfg.interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let changed = source.status_changed();
    // Complete on the first beat of every session, then only what changed (decision 75).
    let mut delta = delta::Delta::default();
    let mut now_full = false;
    loop {
        match &changed {
            // The scheduler asked for every status: no wait.
            _ if now_full => now_full = false,
            Some(n) => {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = n.notified() => ticker.reset(),
                }
            }
            None => {
                ticker.tick().await;
            }
        }
        let sent = Instant::now();
        let mut request = delta.next(source.heartbeat_request());
        request.boot = boot();
        request.seq = next_seq();
        let was_partial = request.partial;
        let answer = tokio::time::timeout(timeout, client.heartbeat(request))
            .await
            .map_err(|_| Error::Timeout {
                call: "Heartbeat",
                after: timeout,
            })
            .and_then(|r| {
                r.map_err(|status| Error::Call {
                    call: "Heartbeat",
                    status,
                })
            });
        source.heartbeat_result(answer.is_ok());
        let answer = match answer {
            Ok(a) => a.into_inner(),
            // A slow scheduler (a loaded machine) gets another chance on the same connection
            // while half the lease is left: tearing the link down would re-register and
            // re-watch, more work for a scheduler that is already late. The lease is not
            // renewed by a missed answer, so safety does not depend on this.
            Err(e @ Error::Timeout { .. })
                if keep_link_after_miss(
                    lease.last_ack().map(|t| t.elapsed()),
                    lease.ttl(),
                    cfg.sole_endpoint(),
                ) =>
            {
                debug!(error = %e, "heartbeat not answered in time; trying again on this link");
                delta.missed();
                continue;
            }
            Err(e) => return Err(e),
        };
        delta.answered(answer.want_full);
        // At once, but only after a partial beat: a scheduler that asked again after a
        // complete one is answered at the next tick, not in a loop.
        now_full = answer.want_full && was_partial;
        lease.renew_at(sent);
        let known = revision(&desired.borrow());
        if answer.revision > known {
            // Normal for a moment (the stream delivers it next); for long, the stream is stuck.
            debug!(
                scheduler_revision = answer.revision,
                known_revision = known,
                "scheduler is ahead of the assignments received"
            );
        }
    }
}

/// This agent process, for the scheduler to tell its heartbeats from an earlier process's.
fn boot() -> u64 {
    static BOOT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BOOT.get_or_init(|| rand::random::<u64>().max(1))
}

/// The next heartbeat's number in this process (from 1; 0 means "not numbered").
fn next_seq() -> u64 {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
}

/// After a heartbeat that got no answer in time: keep the link while the last acknowledged
/// heartbeat is younger than half the lease; after that, another scheduler endpoint gets the
/// other half; a link with no acknowledgement yet is given up at once. With one endpoint and
/// nothing to discover others there is no other to try: the link is always kept (HTTP/2
/// keep-alive ends a connection to a scheduler that vanished, and an error answer ends the
/// session). Re-registering over a new TLS connection took 1.3 to 3 s on a saturated machine,
/// the whole of a 2 s lease, and a node whose first heartbeat came late was marked down
/// (`scripts/stress-failover`, session 14).
fn keep_link_after_miss(since_last_ack: Option<Duration>, lease_ttl: Duration, sole: bool) -> bool {
    sole || since_last_ack.is_some_and(|d| d < lease_ttl / 2)
}

/// Follows `WatchAssignments`, publishing each desired state that is not older than the current one.
async fn follow_assignments(
    mut client: AgentControlClient<Channel>,
    cfg: &LinkConfig,
    desired: &watch::Sender<Option<DesiredState>>,
) -> Result<()> {
    let request = WatchRequest {
        node: cfg.node.clone(),
        known_revision: revision(&desired.borrow()),
    };
    let mut stream = tokio::time::timeout(CALL_TIMEOUT, client.watch_assignments(request))
        .await
        .map_err(|_| Error::Timeout {
            call: "WatchAssignments",
            after: CALL_TIMEOUT,
        })?
        .map_err(|status| Error::Call {
            call: "WatchAssignments",
            status,
        })?
        .into_inner();
    loop {
        let state = stream
            .message()
            .await
            .map_err(|status| Error::Call {
                call: "WatchAssignments",
                status,
            })?
            .ok_or(Error::StreamEnded)?;
        if state.node != cfg.node {
            warn!(for_node = %state.node, revision = state.revision, "ignoring desired state for another node");
            continue;
        }
        let rev = state.revision;
        let members = state.members.len();
        if publish(desired, state) {
            info!(revision = rev, members, "new desired state");
        } else {
            debug!(
                revision = rev,
                "desired state not newer; kept the current one"
            );
        }
    }
}

/// Publishes `state` unless the watch already holds a newer revision or the very same state.
/// Returns whether receivers were notified.
fn publish(desired: &watch::Sender<Option<DesiredState>>, state: DesiredState) -> bool {
    desired.send_if_modified(|current| {
        let newer_or_same_revision = state.revision >= revision(current);
        if newer_or_same_revision && current.as_ref() != Some(&state) {
            *current = Some(state);
            true
        } else {
            false
        }
    })
}

/// The revision held in the watch, 0 if none.
fn revision(state: &Option<DesiredState>) -> u64 {
    state.as_ref().map_or(0, |s| s.revision)
}

/// Displays an error with its sources, `outer: inner: innermost` (tonic's transport errors say little
/// without them).
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mofang_common::proto::Assignment;

    #[test]
    fn lease_is_invalid_before_the_first_ack() {
        let lease = Lease::new(Duration::from_secs(10));
        assert!(!lease.valid());
        assert!(lease.last_ack().is_none());
    }

    #[test]
    fn lease_holds_for_the_ttl_after_an_ack() {
        let ttl = Duration::from_secs(10);
        let lease = Lease::new(ttl);
        lease.renew();
        let at = lease.last_ack().unwrap();
        assert!(lease.valid());
        assert!(lease.valid_at(at + ttl - Duration::from_millis(1)));
        assert!(!lease.valid_at(at + ttl));
        assert!(!lease.valid_at(at + ttl + Duration::from_secs(1)));
    }

    #[test]
    fn a_primary_stops_writes_a_fence_budget_before_the_lease_runs_out() {
        let lease = Lease::with_fence_budget(Duration::from_secs(10), Duration::from_secs(3));
        assert!(!lease.writable());
        let now = Instant::now();
        lease.renew_at(now);
        let left = lease.writable_for().expect("writable");
        assert!(
            left <= Duration::from_secs(7) && left > Duration::from_secs(6),
            "{left:?}"
        );
        // Six tenths of the way through a 1 s lease with a 300 ms budget: valid, not writable.
        let short = Lease::with_fence_budget(Duration::from_secs(1), Duration::from_millis(300));
        short.renew_at(now - Duration::from_millis(750));
        assert!(short.valid() && !short.writable());
        // The budget never exceeds the lease; the default is three tenths of it.
        let odd = Lease::with_fence_budget(Duration::from_secs(1), Duration::from_secs(5));
        assert_eq!(odd.fence_budget(), Duration::from_secs(1));
        let dflt = Lease::new(Duration::from_secs(10));
        assert_eq!(dflt.fence_budget(), Duration::from_secs(3));
    }

    #[test]
    fn lease_is_shared_between_clones() {
        let lease = Lease::new(Duration::from_secs(10));
        let other = lease.clone();
        other.renew();
        assert!(lease.valid());
        assert_eq!(lease.last_ack(), other.last_ack());
    }

    #[test]
    fn lease_never_moves_backwards() {
        let lease = Lease::new(Duration::from_secs(10));
        let now = Instant::now();
        lease.renew_at(now);
        lease.renew_at(now - Duration::from_secs(5));
        assert_eq!(lease.last_ack(), Some(now));
        let later = now + Duration::from_secs(1);
        lease.renew_at(later);
        assert_eq!(lease.last_ack(), Some(later));
    }

    #[test]
    fn only_a_marked_follower_answer_skips_the_backoff() {
        let mut follower = tonic::Status::unavailable("this scheduler follows");
        follower.metadata_mut().insert(
            mofang_common::FOLLOWER_METADATA,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        let call = |status| Error::Call {
            call: "Register",
            status,
        };
        assert!(call(follower).is_follower_answer());
        // Unmarked: a proxy or an overloaded scheduler; back off as before.
        assert!(!call(tonic::Status::unavailable("overloaded")).is_follower_answer());
        assert!(!call(tonic::Status::internal("boom")).is_follower_answer());
        assert!(!Error::StreamEnded.is_follower_answer());
    }

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let delays: Vec<_> = (0..8).map(|_| b.next_delay(1.0)).collect();
        let ms: Vec<_> = delays.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }

    #[test]
    fn backoff_jitter_stays_between_half_and_full_ceiling() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        assert_eq!(b.next_delay(0.0), Duration::from_millis(100));
        assert_eq!(b.next_delay(0.5), Duration::from_millis(300));
        for jitter in [-1.0, 2.0, f64::NAN, f64::INFINITY] {
            let d = b.next_delay(jitter);
            assert!(d <= Duration::from_secs(5), "{jitter}: {d:?}");
        }
    }

    #[test]
    fn backoff_resets_and_survives_many_attempts() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        for _ in 0..1000 {
            assert!(b.next_delay(1.0) <= Duration::from_secs(5));
        }
        b.reset();
        assert_eq!(b.next_delay(1.0), Duration::from_millis(200));
    }

    #[test]
    fn a_slow_scheduler_keeps_its_link_for_half_the_lease() {
        let ttl = Duration::from_secs(10);
        assert!(keep_link_after_miss(
            Some(Duration::from_secs(1)),
            ttl,
            false
        ));
        assert!(keep_link_after_miss(
            Some(Duration::from_millis(4999)),
            ttl,
            false
        ));
        assert!(!keep_link_after_miss(
            Some(Duration::from_secs(5)),
            ttl,
            false
        ));
        assert!(!keep_link_after_miss(None, ttl, false));
        // The sole endpoint: kept however late, even before its first answer.
        assert!(keep_link_after_miss(
            Some(Duration::from_secs(60)),
            ttl,
            true
        ));
        assert!(keep_link_after_miss(None, ttl, true));
        let one = LinkConfig::new("n1", vec!["https://s:9090".into()]);
        assert!(one.sole_endpoint());
        assert_eq!(one.heartbeat_wait(), one.lease_ttl);
        let two = LinkConfig::new("n1", vec!["https://s:9090".into(), "https://t:9090".into()]);
        assert!(!two.sole_endpoint());
        assert_eq!(two.heartbeat_wait(), two.heartbeat_timeout());
        let found = LinkConfig {
            consul: Some("127.0.0.1:8500".into()),
            ..one
        };
        assert!(!found.sole_endpoint());
    }

    #[test]
    fn heartbeat_timeout_leaves_room_in_the_lease_and_is_never_zero() {
        let mut cfg = LinkConfig::new("n1", vec![]);
        assert_eq!(cfg.heartbeat_interval, DEFAULT_HEARTBEAT_INTERVAL);
        assert_eq!(cfg.lease_ttl, DEFAULT_LEASE_TTL);
        assert_eq!(cfg.heartbeat_timeout(), Duration::from_millis(2500));
        assert!(cfg.heartbeat_timeout() < cfg.lease_ttl / 2);
        // Short intervals: a quarter of the lease, still well within it.
        let fast = LinkConfig {
            heartbeat_interval: Duration::from_millis(200),
            lease_ttl: Duration::from_secs(2),
            ..cfg.clone()
        };
        assert_eq!(fast.heartbeat_timeout(), Duration::from_millis(500));
        cfg.heartbeat_interval = Duration::ZERO;
        assert!(cfg.interval() > Duration::ZERO);
        assert!(cfg.heartbeat_timeout() > Duration::ZERO);
    }

    fn state(revision: u64, members: &[&str]) -> DesiredState {
        DesiredState {
            node: "n1".into(),
            revision,
            members: members
                .iter()
                .map(|m| Assignment {
                    member: (*m).into(),
                    ..Default::default()
                })
                .collect(),
            jobs: vec![],
        }
    }

    #[test]
    fn desired_state_never_goes_backwards() {
        let (tx, rx) = watch::channel(None);
        assert!(publish(&tx, state(0, &[])));
        assert!(publish(&tx, state(3, &["a"])));
        assert!(!publish(&tx, state(2, &["old"])));
        assert_eq!(rx.borrow().as_ref().map(|s| s.revision), Some(3));
        // The same revision again (a reconnect) changes nothing and wakes nobody.
        assert!(!publish(&tx, state(3, &["a"])));
        assert!(publish(&tx, state(4, &["a", "b"])));
        assert_eq!(rx.borrow().as_ref().map(|s| s.members.len()), Some(2));
    }

    struct Node;

    impl NodeSource for Node {
        fn register_request(&self) -> RegisterRequest {
            RegisterRequest::default()
        }
        fn heartbeat_request(&self) -> HeartbeatRequest {
            HeartbeatRequest::default()
        }
    }

    #[tokio::test]
    async fn run_returns_on_shutdown_even_when_nothing_answers() {
        let shutdown = CancellationToken::new();
        let (tx, _rx) = watch::channel(None);
        let lease = Lease::new(Duration::from_secs(1));
        let task = tokio::spawn(run(
            LinkConfig::new("n1", vec!["http://127.0.0.1:1".into(), "not a uri".into()]),
            Arc::new(Node),
            tx,
            lease.clone(),
            shutdown.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert!(!lease.valid());
    }

    /// A scheduler frozen (SIGSTOP) still completes the TCP connection in its kernel and
    /// never answers the TLS handshake: the dial gives up after `HANDSHAKE_TIMEOUT`, so the
    /// link goes on to the next scheduler (the new leader) instead of waiting there.
    #[tokio::test]
    async fn a_scheduler_that_accepts_and_never_answers_is_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let ca = mofang_common::tls::pki::Ca::create("test CA", 1).unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        let issued = ca
            .issue(
                &mofang_common::tls::pki::CertKind::Agent("n1".into()),
                &[],
                1,
            )
            .unwrap();
        let (cert_file, key_file) = (dir.path().join("n1.pem"), dir.path().join("n1.key"));
        std::fs::write(&cert_file, &issued.cert_pem).unwrap();
        std::fs::write(&key_file, &issued.key_pem).unwrap();
        let tls = crate::tls::LinkTls {
            node: "n1".into(),
            ca_file,
            cert_file,
            key_file,
            server_name: "mofang-scheduler".into(),
            join_token: None,
        };
        // Accepts (the kernel's part) and holds every connection without a byte back.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                kept.push(sock);
            }
        });
        let started = std::time::Instant::now();
        let r = connect(&format!("https://127.0.0.1:{port}"), Some(&tls)).await;
        let took = started.elapsed();
        held.abort();
        assert!(matches!(r, Err(Error::Timeout { .. })), "{:?}", r.err());
        assert!(
            took < HANDSHAKE_TIMEOUT + Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn run_without_schedulers_waits_for_shutdown() {
        let shutdown = CancellationToken::new();
        let (tx, _rx) = watch::channel(None);
        let task = tokio::spawn(run(
            LinkConfig::new("n1", vec![]),
            Arc::new(Node),
            tx,
            Lease::new(Duration::from_secs(1)),
            shutdown.clone(),
        ));
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}

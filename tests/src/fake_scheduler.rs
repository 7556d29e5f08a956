//! An in-process gRPC server playing the scheduler in agent tests: records what agents send, serves the
//! desired state a test sets, and can refuse heartbeats or go away.

use anyhow::{Context, Result};
use futures::Stream;
use mofang_common::proto::agent_control_server::{AgentControl, AgentControlServer};
use mofang_common::proto::{
    Assignment, DesiredState, HeartbeatRequest, HeartbeatResponse, RegisterRequest,
    RegisterResponse, WatchRequest,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn, Instrument};

/// What the fake answers in `RegisterResponse` (the scheduler's defaults).
const HEARTBEAT_INTERVAL_MS: u64 = 1_000;
const LEASE_TTL_MS: u64 = 10_000;
/// How long `stop` waits for open connections to close before cutting them.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Handle to a running fake scheduler; dropping it stops the server.
pub struct FakeScheduler {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

/// State shared between the handle and the gRPC service.
#[derive(Default)]
struct Shared {
    nodes: Mutex<HashMap<String, NodeRecord>>,
    refuse_heartbeats: AtomicBool,
    shutdown: CancellationToken,
}

/// Everything known about one node.
struct NodeRecord {
    registered: Option<RegisterRequest>,
    /// The last heartbeat, its `members` replaced by every status held (as the real
    /// scheduler holds them: complete beats replace, partial ones update).
    last_heartbeat: Option<HeartbeatRequest>,
    /// Every member's last status, once a complete heartbeat has come.
    members: Option<std::collections::BTreeMap<String, mofang_common::proto::MemberStatus>>,
    heartbeats: u64,
    /// The node's desired state; every open `WatchAssignments` stream holds a receiver.
    desired: watch::Sender<DesiredState>,
}

impl NodeRecord {
    fn new(node: &str) -> Self {
        let (desired, _) = watch::channel(DesiredState {
            node: node.to_owned(),
            revision: 0,
            members: vec![],
            jobs: vec![],
        });
        Self {
            registered: None,
            last_heartbeat: None,
            members: None,
            heartbeats: 0,
            desired,
        }
    }
}

impl Shared {
    fn nodes(&self) -> MutexGuard<'_, HashMap<String, NodeRecord>> {
        // Plain records: a panicking test thread cannot leave them half-written in a way that matters.
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the node's record, creating it if needed.
    fn with_node<T>(&self, node: &str, f: impl FnOnce(&mut NodeRecord) -> T) -> T {
        let mut nodes = self.nodes();
        let record = nodes
            .entry(node.to_owned())
            .or_insert_with(|| NodeRecord::new(node));
        f(record)
    }
}

impl FakeScheduler {
    /// Binds 127.0.0.1:0, serves AgentControl in a spawned task; returns the handle.
    pub async fn start() -> Result<FakeScheduler> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the fake scheduler")?;
        let addr = listener.local_addr().context("fake scheduler address")?;
        let shared = Arc::new(Shared::default());
        let service = AgentControlServer::new(Service {
            shared: shared.clone(),
        });
        let shutdown = shared.shutdown.clone();
        let task = tokio::spawn(
            async move {
                let served = tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(
                        TcpListenerStream::new(listener),
                        shutdown.cancelled_owned(),
                    )
                    .await;
                match served {
                    Ok(()) => info!("fake scheduler stopped"),
                    Err(e) => warn!(error = %e, "fake scheduler failed"),
                }
            }
            .instrument(tracing::info_span!("fake_scheduler", %addr)),
        );
        info!(%addr, "fake scheduler listening");
        Ok(FakeScheduler {
            addr,
            shared,
            task: Some(task),
        })
    }

    /// "http://127.0.0.1:<port>"
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets the desired state for `node` (bumps the revision by one and pushes it to every open
    /// WatchAssignments stream of that node). Returns the new revision.
    pub fn set_desired(&self, node: &str, members: Vec<Assignment>) -> u64 {
        self.shared.with_node(node, |record| {
            let mut revision = 0;
            record.desired.send_modify(|state| {
                state.revision += 1;
                state.members = members;
                revision = state.revision;
            });
            info!(node = %node, revision, "fake scheduler: desired state set");
            revision
        })
    }

    /// Registrations received (latest per node).
    pub fn registered(&self, node: &str) -> Option<RegisterRequest> {
        self.shared
            .nodes()
            .get(node)
            .and_then(|r| r.registered.clone())
    }

    /// The last heartbeat received from a node.
    pub fn last_heartbeat(&self, node: &str) -> Option<HeartbeatRequest> {
        self.shared
            .nodes()
            .get(node)
            .and_then(|r| r.last_heartbeat.clone())
    }

    /// Number of heartbeats received from a node.
    pub fn heartbeats(&self, node: &str) -> u64 {
        self.shared.nodes().get(node).map_or(0, |r| r.heartbeats)
    }

    /// Makes Heartbeat answer Unavailable while true (to test lease expiry without killing the server).
    pub fn refuse_heartbeats(&self, refuse: bool) {
        self.shared
            .refuse_heartbeats
            .store(refuse, Ordering::SeqCst);
    }

    /// Stops serving (drop of the handle also stops it): used to simulate the scheduler going away.
    pub async fn stop(mut self) {
        self.shared.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(STOP_GRACE, task).await.is_err() {
                warn!(addr = %self.addr, "fake scheduler did not stop in time; aborting it");
                abort.abort();
            }
        }
    }
}

impl Drop for FakeScheduler {
    fn drop(&mut self) {
        // Open watch streams end on the token, so the server drains on its own; no waiting in drop.
        self.shared.shutdown.cancel();
    }
}

/// The gRPC service.
struct Service {
    shared: Arc<Shared>,
}

type DesiredStream = Pin<Box<dyn Stream<Item = Result<DesiredState, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AgentControl for Service {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let request = request.into_inner();
        if request.node.is_empty() {
            return Err(Status::invalid_argument("node is empty"));
        }
        info!(node = %request.node, "fake scheduler: register");
        let node = request.node.clone();
        self.shared
            .with_node(&node, |r| r.registered = Some(request));
        Ok(Response::new(RegisterResponse {
            heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS,
            lease_ttl_ms: LEASE_TTL_MS,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        if self.shared.refuse_heartbeats.load(Ordering::SeqCst) {
            return Err(Status::unavailable("fake scheduler refuses heartbeats"));
        }
        let request = request.into_inner();
        debug!(node = %request.node, applied_revision = request.applied_revision, "fake scheduler: heartbeat");
        let node = request.node.clone();
        let (revision, want_full) = self.shared.with_node(&node, |r| {
            r.heartbeats += 1;
            let mut request = request;
            if !request.partial {
                r.members = Some(Default::default());
            }
            let want_full = r.members.is_none();
            let held = r.members.get_or_insert_with(Default::default);
            for id in &request.gone {
                held.remove(id);
            }
            for m in std::mem::take(&mut request.members) {
                held.insert(m.member.clone(), m);
            }
            request.members = held.values().cloned().collect();
            if want_full {
                r.members = None;
            }
            r.last_heartbeat = Some(request);
            (r.desired.borrow().revision, want_full)
        });
        Ok(Response::new(HeartbeatResponse {
            revision,
            want_full,
        }))
    }

    type WatchAssignmentsStream = DesiredStream;

    async fn watch_assignments(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchAssignmentsStream>, Status> {
        let request = request.into_inner();
        info!(node = %request.node, known_revision = request.known_revision, "fake scheduler: watch");
        let mut rx = self
            .shared
            .with_node(&request.node, |r| r.desired.subscribe());
        // The current state goes out at once, whatever the agent already knows.
        rx.mark_changed();
        let shutdown = self.shared.shutdown.clone();
        // Ends on shutdown: the server's graceful stop waits for open streams, and a watch never ends by itself.
        let stream = futures::stream::unfold((rx, shutdown), |(mut rx, shutdown)| async move {
            tokio::select! {
                _ = shutdown.cancelled() => None,
                changed = rx.changed() => {
                    changed.ok()?;
                    let state = rx.borrow_and_update().clone();
                    Some((Ok(state), (rx, shutdown)))
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn join(
        &self,
        _request: Request<mofang_common::proto::JoinRequest>,
    ) -> Result<Response<mofang_common::proto::JoinResponse>, Status> {
        Err(Status::unimplemented(
            "the fake scheduler speaks plain gRPC: no joins",
        ))
    }

    async fn sign_member_certificate(
        &self,
        _request: Request<mofang_common::proto::MemberCertificateRequest>,
    ) -> Result<Response<mofang_common::proto::MemberCertificateResponse>, Status> {
        Err(Status::unimplemented(
            "the fake scheduler holds no CA: no member certificates",
        ))
    }
}

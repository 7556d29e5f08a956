//! The agent control plane: the gRPC server side of `Register`, `Heartbeat`,
//! `WatchAssignments` and `Join`. Agents dial in; each stream carries its node's full desired
//! state. With TLS on, every call but `Join` acts only as the node its client certificate
//! names (`tls::authz`); a refusal is answered `Unauthenticated` / `PermissionDenied` and
//! recorded as an `agent_refused` event and an audit entry with the peer address.

use crate::cluster::{Cluster, JoinRefusal, MemberCertRefusal};
use crate::model::{now_ms, AuditEntry, DiskInfo, EventKind, Node, NodeAdmin};
use crate::tls::authz::{authorize, Caller, Refusal};
use crate::tls::Tls;
use futures::Stream;
use mofang_common::proto::agent_control_server::AgentControl;
use mofang_common::proto::{
    DesiredState, HeartbeatRequest, HeartbeatResponse, JoinRequest, JoinResponse,
    MemberCertificateRequest, MemberCertificateResponse, RegisterRequest, RegisterResponse,
    WatchRequest,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

/// The same refusal (who, call, node, reason) is recorded at most once in this long: an
/// agent retrying with a wrong certificate must not fill the store.
const RECORD_SPACING: Duration = Duration::from_secs(10);

/// The gRPC service.
pub struct AgentService {
    cluster: Arc<Cluster>,
    heartbeat_interval_ms: u64,
    lease_ttl_ms: u64,
    /// TLS material; `None`: plain text, calls are not checked.
    tls: Option<Arc<Tls>>,
    /// Validity of certificates signed for joins, days.
    join_cert_days: u32,
    /// When each refusal was last recorded.
    recorded: Mutex<HashMap<String, Instant>>,
    /// What each client certificate (DER) names, read once: a heartbeat a second per agent
    /// would otherwise parse its X.509 certificate every second (`make bench`, TLS side).
    identities: Mutex<HashMap<Vec<u8>, Caller>>,
}

/// Client certificates remembered at most (a cluster has one per agent; renewals add more):
/// past it the memory starts afresh.
const IDENTITIES_MAX: usize = 16_384;

impl AgentService {
    /// A service over the cluster, plain text (no call is checked).
    pub fn new(cluster: Arc<Cluster>, heartbeat_interval_ms: u64, lease_ttl_ms: u64) -> Self {
        AgentService {
            cluster,
            heartbeat_interval_ms,
            lease_ttl_ms,
            tls: None,
            join_cert_days: 365,
            recorded: Mutex::new(HashMap::new()),
            identities: Mutex::new(HashMap::new()),
        }
    }

    /// With TLS: every call is checked against the caller's certificate, and joins are
    /// signed (certificates valid `join_cert_days`).
    pub fn with_tls(mut self, tls: Option<Arc<Tls>>, join_cert_days: u32) -> Self {
        self.tls = tls;
        self.join_cert_days = join_cert_days;
        self
    }

    /// Checks that the caller of `call` may act as `asked`; records a refusal.
    async fn check<T>(
        &self,
        req: &Request<T>,
        call: &'static str,
        asked: &str,
    ) -> Result<(), Status> {
        if self.tls.is_none() {
            return Ok(());
        }
        let caller = self.caller(req);
        let verdict = self
            .cluster
            .with_revoked(|revoked| authorize(&caller, asked, revoked));
        match verdict {
            Ok(()) => Ok(()),
            Err(refusal) => {
                let who = match &caller {
                    Caller::Anonymous => "no certificate".to_owned(),
                    Caller::Certified(Ok(id)) => format!("node:{}", id.node),
                    Caller::Certified(Err(_)) => "certificate without a node".to_owned(),
                };
                let status = if matches!(refusal, Refusal::NoCertificate) {
                    401
                } else {
                    403
                };
                self.record(
                    req.remote_addr(),
                    &who,
                    call,
                    asked,
                    status,
                    refusal.code(),
                    &refusal.to_string(),
                )
                .await;
                Err(refusal.status())
            }
        }
    }

    /// Records a refused call as an `agent_refused` event and an audit entry (at most once
    /// per `RECORD_SPACING` for the same who, call, node and reason).
    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        peer: Option<SocketAddr>,
        who: &str,
        call: &str,
        asked: &str,
        status: u16,
        code: &str,
        why: &str,
    ) {
        let peer = peer
            .map(|p| p.to_string())
            .unwrap_or_else(|| "unknown".into());
        warn!(peer = %peer, who = %who, call, node = %asked, reason = code, "agent call refused: {why}");
        let key = format!("{who}|{call}|{asked}|{code}");
        {
            let mut recorded = self.recorded.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            if recorded
                .get(&key)
                .is_some_and(|t| now.duration_since(*t) < RECORD_SPACING)
            {
                return;
            }
            if recorded.len() > 10_000 {
                recorded.retain(|_, t| now.duration_since(*t) < RECORD_SPACING);
            }
            recorded.insert(key, now);
        }
        let store = self.cluster.store();
        let ev = crate::model::Event {
            id: 0,
            at_ms: now_ms(),
            instance: None,
            node: (!asked.is_empty()).then(|| asked.to_owned()),
            kind: EventKind::AgentRefused.as_str().to_owned(),
            message: format!("{call} as node {asked} from {peer} ({who}) refused: {why}"),
        };
        if let Err(e) = store.append_events(&[ev]).await {
            warn!(error = %e, "could not record the agent_refused event");
        }
        let entry = AuditEntry {
            id: 0,
            at_ms: now_ms(),
            who: who.to_owned(),
            source: peer,
            action: format!("gRPC {call}"),
            target: format!("nodes/{asked}"),
            status,
            result: format!("refused: {code}"),
        };
        if let Err(e) = store.append_audit(&entry).await {
            warn!(error = %e, "could not audit a refused agent call");
        }
    }
}

impl AgentService {
    /// What the TLS layer saw of the caller: its verified client certificate, read for a
    /// node (once per certificate: the same bytes always name the same node and validity).
    fn caller<T>(&self, req: &Request<T>) -> Caller {
        let Some(certs) = req.peer_certs() else {
            return Caller::Anonymous;
        };
        let Some(leaf) = certs.first() else {
            return Caller::Anonymous;
        };
        let der: &[u8] = leaf.as_ref();
        let mut known = self
            .identities
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = known.get(der) {
            return c.clone();
        }
        let c = Caller::Certified(mofang_common::tls::node_identity(der));
        if known.len() >= IDENTITIES_MAX {
            known.clear();
        }
        known.insert(der.to_vec(), c.clone());
        c
    }
}

fn check_node(name: &str) -> Result<(), Status> {
    mofang_common::ids::validate_dns_label("node", name, 63)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

impl AgentService {
    /// Only the leader talks to agents: a follower sends them on to the next scheduler.
    fn leading(&self) -> Result<(), Status> {
        if self.cluster.is_active() {
            return Ok(());
        }
        let mut status = Status::unavailable(match self.cluster.leader_hint() {
            Some(l) => format!("this scheduler follows; the leader is {l}"),
            None => "this scheduler follows; no leader is known".to_owned(),
        });
        status.metadata_mut().insert(
            mofang_common::FOLLOWER_METADATA,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        Err(status)
    }
}

#[tonic::async_trait]
impl AgentControl for AgentService {
    async fn register(
        &self,
        req: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        self.leading()?;
        // Who is asking first: an anonymous caller learns nothing, not even about names.
        let node = req.get_ref().node.clone();
        self.check(&req, "Register", &node).await?;
        check_node(&node)?;
        let r = req.into_inner();
        if !(r.cpu.is_finite() && r.cpu >= 0.0) {
            return Err(Status::invalid_argument(
                "cpu must be a non-negative number",
            ));
        }
        let lease_ttl_ms = r.lease_ttl_ms;
        let node = Node {
            name: r.node.clone(),
            address: r.advertise_address,
            labels: r.labels.into_iter().collect(),
            cpu: r.cpu,
            memory_bytes: r.memory_bytes,
            disks: r
                .disks
                .into_iter()
                .map(|d| DiskInfo {
                    path: d.path,
                    class: d.class,
                    capacity_bytes: d.capacity_bytes,
                    free_bytes: d.free_bytes,
                })
                .collect(),
            admin: NodeAdmin::Active,
            agent_version: r.agent_version,
            registered_at_ms: now_ms(),
            http_address: r.http_address,
        };
        self.cluster
            .register(node)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        self.cluster.note_lease(&r.node, lease_ttl_ms);
        info!(node = %r.node, "agent registered");
        Ok(Response::new(RegisterResponse {
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            lease_ttl_ms: self.lease_ttl_ms,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.leading()?;
        let node = req.get_ref().node.clone();
        self.check(&req, "Heartbeat", &node).await?;
        let hb = req.into_inner();
        let node = hb.node.clone();
        match self.cluster.heartbeat(hb) {
            Some(beat) => Ok(Response::new(HeartbeatResponse {
                revision: beat.revision,
                want_full: beat.want_full,
            })),
            // Unknown node: the agent registers again on this error.
            None => Err(Status::failed_precondition(format!(
                "node {node} is not registered"
            ))),
        }
    }

    type WatchAssignmentsStream =
        Pin<Box<dyn Stream<Item = Result<DesiredState, Status>> + Send + 'static>>;

    async fn watch_assignments(
        &self,
        req: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchAssignmentsStream>, Status> {
        self.leading()?;
        // Who is asking first: an anonymous caller learns nothing, not even about names.
        let node = req.get_ref().node.clone();
        self.check(&req, "WatchAssignments", &node).await?;
        check_node(&node)?;
        let w = req.into_inner();
        debug!(node = %w.node, known = w.known_revision, "agent watching assignments");
        let rx = self.cluster.watch(&w.node);
        Ok(Response::new(Box::pin(rx.into_stream().map(Ok))))
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        self.leading()?;
        let Some(tls) = &self.tls else {
            return Err(Status::failed_precondition(
                "TLS is disabled on this scheduler: there is no certificate to join with",
            ));
        };
        let peer = req.remote_addr();
        let r = req.into_inner();
        let node = mofang_common::tls::pki::csr_node(&r.csr_pem)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let material = tls.current();
        let Some(ca) = material.ca.clone() else {
            return Err(Status::failed_precondition(
                "this scheduler holds no CA key (tls.ca_key_file): join tokens cannot be used; \
                 create the agent's certificate with `mofang tls cert create --agent NODE`",
            ));
        };
        let days = self.join_cert_days;
        let csr = r.csr_pem;
        let signed = self
            .cluster
            .join(&r.token, &node, || {
                ca.sign_agent_csr(&csr, &node, days)
                    .map_err(|e| e.to_string())
            })
            .await;
        match signed {
            Ok(cert_pem) => Ok(Response::new(JoinResponse {
                cert_pem,
                ca_pem: material.ca_pem.clone(),
            })),
            Err(refusal) => {
                self.record(
                    peer,
                    "join token",
                    "Join",
                    &node,
                    403,
                    refusal.code(),
                    &refusal.to_string(),
                )
                .await;
                Err(match refusal {
                    JoinRefusal::Store(_) => Status::unavailable(refusal.to_string()),
                    JoinRefusal::Sign(_) => Status::invalid_argument(refusal.to_string()),
                    _ => Status::permission_denied(refusal.to_string()),
                })
            }
        }
    }

    async fn sign_member_certificate(
        &self,
        req: Request<MemberCertificateRequest>,
    ) -> Result<Response<MemberCertificateResponse>, Status> {
        self.leading()?;
        let node = req.get_ref().node.clone();
        self.check(&req, "SignMemberCertificate", &node).await?;
        let r = req.into_inner();
        let Some(tls) = &self.tls else {
            return Err(Status::failed_precondition(
                "TLS is disabled on this scheduler: it signs no member certificate",
            ));
        };
        let material = tls.current();
        let Some(ca) = material.ca.clone() else {
            return Err(Status::failed_precondition(
                "this scheduler holds no CA key (tls.ca_key_file): it cannot sign member \
                 certificates",
            ));
        };
        let names = self
            .cluster
            .member_cert_names(&r.node, &r.member, &r.names)
            .map_err(|refusal| match refusal {
                MemberCertRefusal::NotOnNode { .. } => {
                    Status::permission_denied(refusal.to_string())
                }
                _ => Status::failed_precondition(refusal.to_string()),
            })?;
        let cert_pem = ca
            .sign_member_csr(&r.csr_pem, &r.member, &names, self.join_cert_days)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        info!(node = %r.node, member = %r.member, names = ?names, "member certificate signed");
        Ok(Response::new(MemberCertificateResponse {
            cert_pem,
            ca_pem: material.ca_pem.clone(),
        }))
    }
}

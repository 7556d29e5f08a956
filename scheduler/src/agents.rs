//! The agent control plane: the gRPC server side of `Register`, `Heartbeat` and
//! `WatchAssignments`. Agents dial in; each stream carries its node's full desired state.

use crate::cluster::Cluster;
use crate::model::{now_ms, DiskInfo, Node, NodeAdmin};
use futures::Stream;
use mofang_common::proto::agent_control_server::AgentControl;
use mofang_common::proto::{
    DesiredState, HeartbeatRequest, HeartbeatResponse, RegisterRequest, RegisterResponse,
    WatchRequest,
};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};
use tracing::{debug, info};

/// The gRPC service.
pub struct AgentService {
    cluster: Arc<Cluster>,
    heartbeat_interval_ms: u64,
    lease_ttl_ms: u64,
}

impl AgentService {
    /// A service over the cluster.
    pub fn new(cluster: Arc<Cluster>, heartbeat_interval_ms: u64, lease_ttl_ms: u64) -> Self {
        AgentService {
            cluster,
            heartbeat_interval_ms,
            lease_ttl_ms,
        }
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
        let r = req.into_inner();
        check_node(&r.node)?;
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
        let hb = req.into_inner();
        let node = hb.node.clone();
        match self.cluster.heartbeat(hb) {
            Some(revision) => Ok(Response::new(HeartbeatResponse { revision })),
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
        let w = req.into_inner();
        check_node(&w.node)?;
        debug!(node = %w.node, known = w.known_revision, "agent watching assignments");
        let rx = self.cluster.watch(&w.node);
        Ok(Response::new(Box::pin(WatchStream::new(rx).map(Ok))))
    }
}

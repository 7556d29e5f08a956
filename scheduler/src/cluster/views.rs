//! API views: nodes and instances as the REST API shows them, each record joined with
//! what its agents report and what is reserved on it.

use super::{lock, Cluster, Inner};
use crate::model::{Credentials, Instance, InstanceSpec, Node, NodeState};
use mofang_common::Role;

/// A member as the API shows it: decision plus observation.
#[derive(
    Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct MemberView {
    /// Member id.
    pub id: String,
    /// Node.
    pub node: String,
    /// Desired role.
    pub role: String,
    /// Observed state: `running`, `starting`, `failed`, `unknown` (node silent).
    pub state: String,
    /// Address clients use.
    pub address: String,
    /// Healthy as the agent sees it.
    pub healthy: bool,
    /// Observed role.
    pub observed_role: String,
    /// Replication lag in seconds (-1 unknown).
    pub lag_seconds: i64,
    /// Epoch applied by the agent.
    pub epoch: u64,
    /// Replication position.
    pub position: String,
    /// Why not healthy.
    pub reason: String,
    /// The member's agent's HTTP address, for load balancer checks
    /// (`/v1/members/{id}/primary`).
    pub check_address: String,
    /// CPU limit of its container as its agent reads it from Docker (cores; 0: unknown).
    pub cpu: f64,
    /// Memory limit of its container as its agent reads it from Docker (bytes; 0: unknown).
    pub memory_bytes: u64,
    /// Its volume's reservation on its node (bytes; 0: unknown); `expand` grows it.
    pub volume_bytes: u64,
    /// The engine version its server runs with its data upgraded, as its agent reports it
    /// (empty: unknown); differs from the instance's during an `upgrade`.
    pub version: String,
}

/// An instance as the API shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct InstanceView {
    /// Name.
    pub name: String,
    /// Engine.
    pub engine: String,
    /// Version.
    pub version: String,
    /// Replicas besides the primary.
    pub replicas: u32,
    /// Current epoch.
    pub epoch: u64,
    /// `ready` when every member is healthy, else `creating`/`degraded`; `stopped` when an
    /// operator stopped it.
    pub status: String,
    /// Address of the primary, when known.
    pub primary: String,
    /// Members.
    pub members: Vec<MemberView>,
    /// The spec.
    pub spec: InstanceSpec,
    /// Creation time, ms.
    pub created_at_ms: i64,
    /// Automatic failover switched on for this instance.
    pub auto_failover: bool,
    /// When the last failover was decided (unix ms; 0: never).
    pub last_failover_ms: i64,
    /// The backup it was restored from (its primary's member shows the restore's progress in
    /// `reason` until its server starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
    /// While the primary of a restored instance fills its volume from the backup: how far
    /// (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_progress: Option<RestoreProgress>,
    /// A credential rotation under way, if any.
    pub rotation: Option<super::RotationView>,
    /// MariaDB with a full backup: whether the binlog archive continues its latest full
    /// backup without a gap (false: `pitr_reason` says where the gap is; the next full backup
    /// closes it). Absent: no archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pitr_ready: Option<bool>,
    /// Why it is not ready, or has no window yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pitr_reason: Option<String>,
    /// The range of times it can be restored to (`restore.time`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pitr_window: Option<super::PitrWindow>,
    /// Seconds since the latest archived binlog event while the primary holds unarchived
    /// transactions (0: none; absent: no archive or the primary's position unknown), as at
    /// the last refresh: `mofang_pitr_archive_lag_seconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pitr_lag_s: Option<i64>,
    /// Engine parameters set by `reconfigure` (name: value); empty: the defaults.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub parameters: std::collections::BTreeMap<String, String>,
}

/// A restore under way: the primary's volume being filled from the backup.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RestoreProgress {
    /// The backup restored.
    pub backup: String,
    /// Bytes of its data object read and unpacked so far (decompressed).
    pub bytes: u64,
    /// Bytes in all (decompressed), as recorded.
    pub total: u64,
    /// The phase under way: `binlogs`, `data`, `prepare` or `replay`.
    #[serde(default)]
    pub phase: String,
    /// Every phase of this restore in order, each with its state and counters: `binlogs`
    /// (a point-in-time restore's archived files read from the repository: files), `data`
    /// (the data object: bytes, decompressed), `prepare` (MariaDB: `mariadb-backup
    /// --prepare` and a server started to replay into: no counter), `replay` (binlog files
    /// replayed: files).
    #[serde(default)]
    pub phases: Vec<RestorePhaseView>,
}

/// One phase of a restore (`mofang_common::restore_phase`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RestorePhaseView {
    /// `binlogs`, `data`, `prepare` or `replay`.
    pub name: String,
    /// `done`, `running` or `pending`.
    pub state: String,
    /// Units done.
    pub done: u64,
    /// Units in all (0: no counter).
    pub total: u64,
    /// What the counters count: `bytes`, `files`, or empty.
    pub unit: String,
}

impl RestorePhaseView {
    fn from_progress(p: &mofang_common::restore_phase::PhaseProgress) -> Self {
        use mofang_common::restore_phase::PhaseState;
        RestorePhaseView {
            name: p.phase.as_str().to_owned(),
            state: match p.state {
                PhaseState::Done => "done",
                PhaseState::Running => "running",
                PhaseState::Pending => "pending",
            }
            .to_owned(),
            done: p.done,
            total: p.total,
            unit: p.unit.to_owned(),
        }
    }
}

/// A node as the API shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct NodeView2 {
    /// The record.
    #[serde(flatten)]
    pub node: Node,
    /// State.
    pub state: NodeState,
    /// Last heartbeat, ms (0: none since the scheduler started).
    pub last_heartbeat_ms: i64,
    /// Reserved CPU.
    pub reserved_cpu: f64,
    /// Reserved memory, MiB.
    pub reserved_memory_mib: u64,
    /// Reserved disk, MiB, per disk class.
    pub reserved_disk_mib: std::collections::BTreeMap<String, u64>,
    /// Members placed here.
    pub members: u32,
    /// The host's CPU and memory use over the last ten minutes, a sample per 10 s, oldest
    /// first (the leader's memory; empty from agents that do not report it).
    pub usage: Vec<crate::cluster::UsageSample>,
}

impl Cluster {
    /// All nodes with their state.
    pub fn nodes(&self) -> Vec<NodeView2> {
        let inner = lock(&self.inner);
        inner
            .nodes
            .values()
            .map(|n| self.node_view(&inner, n))
            .collect()
    }

    /// One node.
    pub fn node(&self, name: &str) -> Option<NodeView2> {
        let inner = lock(&self.inner);
        inner.nodes.get(name).map(|n| self.node_view(&inner, n))
    }

    fn node_view(&self, inner: &Inner, n: &Node) -> NodeView2 {
        let r = inner.reserved.get(&n.name).cloned().unwrap_or_default();
        NodeView2 {
            node: n.clone(),
            state: self.node_state(inner, n),
            last_heartbeat_ms: inner
                .live
                .get(&n.name)
                .map(|l| l.last_heartbeat_ms)
                .unwrap_or(0),
            reserved_cpu: r.cpu,
            reserved_memory_mib: r.memory_mib,
            reserved_disk_mib: r.disk_mib.clone(),
            members: r.members,
            usage: inner
                .live
                .get(&n.name)
                .map(|l| l.usage.samples())
                .unwrap_or_default(),
        }
    }

    /// All instances (created ones; not those still being written).
    pub fn instances(&self) -> Vec<InstanceView> {
        let inner = lock(&self.inner);
        inner
            .instances
            .values()
            .filter(|i| i.revision > 0)
            .map(|i| self.instance_view(&inner, i))
            .collect()
    }

    /// One instance.
    pub fn instance(&self, name: &str) -> Option<InstanceView> {
        let inner = lock(&self.inner);
        inner
            .instances
            .get(name)
            .filter(|i| i.revision > 0)
            .map(|i| self.instance_view(&inner, i))
    }

    /// Desired against effective parameters of an instance's members, with any drift
    /// (`GET /v1/instances/{name}/parameters`); None: no such instance. A member whose node
    /// is down reports nothing (unknown).
    pub fn parameters(&self, name: &str) -> Option<crate::ops::drift::ParametersView> {
        use crate::ops::drift::{view, Desired, MemberSeen};
        let inner = lock(&self.inner);
        let i = inner.instances.get(name).filter(|i| i.revision > 0)?;
        let roles: Vec<String> = i.members.iter().map(|m| m.role.to_string()).collect();
        let seen: Vec<MemberSeen<'_>> = i
            .members
            .iter()
            .zip(&roles)
            .map(|(m, role)| {
                let node_alive = inner
                    .nodes
                    .get(&m.node)
                    .is_some_and(|n| self.node_state(&inner, n) != NodeState::Down);
                let obs = inner
                    .live
                    .get(&m.node)
                    .and_then(|l| l.members.get(&m.id))
                    .filter(|_| node_alive);
                MemberSeen {
                    member: &m.id,
                    role,
                    applied_generation: obs.map_or(0, |o| o.parameters_generation),
                    effective: obs.map(|o| &o.parameters),
                }
            })
            .collect();
        let operation_running = inner.operations.values().any(|o| o.instance == name);
        Some(view(
            Desired {
                instance: &i.spec.name,
                engine: i.spec.engine,
                values: &i.parameters,
                generation: i.parameters_generation,
                operation_running,
            },
            &seen,
        ))
    }

    /// An instance's credentials.
    pub fn credentials(&self, name: &str) -> Option<Credentials> {
        lock(&self.inner)
            .instances
            .get(name)
            .filter(|i| i.revision > 0)
            .map(|i| i.credentials.clone())
    }

    fn instance_view(&self, inner: &Inner, i: &Instance) -> InstanceView {
        let members: Vec<MemberView> = i
            .members
            .iter()
            .map(|m| {
                let node_alive = inner
                    .nodes
                    .get(&m.node)
                    .is_some_and(|n| self.node_state(inner, n) != NodeState::Down);
                let obs = inner.live.get(&m.node).and_then(|l| l.members.get(&m.id));
                let state = match (node_alive, obs) {
                    (false, _) => "unknown",
                    (true, None) => "pending",
                    (true, Some(o)) if o.failed => "failed",
                    (true, Some(o)) if o.healthy => "running",
                    (true, Some(_)) => "starting",
                };
                MemberView {
                    id: m.id.clone(),
                    node: m.node.clone(),
                    role: m.role.to_string(),
                    state: state.into(),
                    address: obs.map(|o| o.address.clone()).unwrap_or_default(),
                    healthy: node_alive && obs.is_some_and(|o| o.healthy),
                    observed_role: obs.map(|o| o.role.clone()).unwrap_or_default(),
                    lag_seconds: obs.map(|o| o.lag_seconds).unwrap_or(-1),
                    epoch: obs.map(|o| o.epoch).unwrap_or(0),
                    position: obs.map(|o| o.position.clone()).unwrap_or_default(),
                    reason: obs.map(|o| o.reason.clone()).unwrap_or_default(),
                    check_address: inner
                        .nodes
                        .get(&m.node)
                        .map(|n| n.http_address.clone())
                        .unwrap_or_default(),
                    cpu: obs.map(|o| o.cpu).unwrap_or(0.0),
                    memory_bytes: obs.map(|o| o.memory_bytes).unwrap_or(0),
                    volume_bytes: obs.map(|o| o.volume_bytes).unwrap_or(0),
                    version: obs.map(|o| o.version.clone()).unwrap_or_default(),
                }
            })
            .collect();
        let all_ok = members.iter().all(|m| m.healthy);
        let any_seen = members.iter().any(|m| m.healthy);
        let primary = i
            .members
            .iter()
            .zip(&members)
            .find(|(r, _)| r.role == Role::Primary)
            .map(|(_, v)| v.address.clone())
            .unwrap_or_default();
        let (pitr_ready, pitr_reason, pitr_window, pitr_lag_s) =
            Cluster::pitr_view(inner, &i.spec.name);
        let restore_progress = i.restored.as_ref().and_then(|r| {
            let p = i.primary()?;
            let o = inner.live.get(&p.node)?.members.get(&p.id)?;
            use mofang_common::restore_phase::{self, Phase, Reported};
            let reported = Reported {
                phase: Phase::parse(&o.restore_phase),
                done: o.restore_phase_done,
                total: o.restore_phase_total,
                data_bytes: o.restore_bytes,
                data_total: o.restore_total,
            };
            let phases = restore_phase::phases(i.spec.engine.as_str(), r.binlogs.len(), &reported);
            (o.restore_total > 0 || o.restore_bytes > 0 || reported.phase.is_some()).then(|| {
                RestoreProgress {
                    backup: r.backup.clone(),
                    bytes: o.restore_bytes,
                    total: o.restore_total,
                    phase: phases
                        .iter()
                        .find(|p| p.state == restore_phase::PhaseState::Running)
                        .map(|p| p.phase.as_str().to_owned())
                        .unwrap_or_default(),
                    phases: phases.iter().map(RestorePhaseView::from_progress).collect(),
                }
            })
        });
        InstanceView {
            name: i.spec.name.clone(),
            engine: i.spec.engine.to_string(),
            version: i.spec.version.clone(),
            replicas: i.spec.replicas,
            epoch: i.epoch,
            status: if i.stopped {
                "stopped"
            } else if all_ok {
                "ready"
            } else if any_seen {
                "degraded"
            } else {
                "creating"
            }
            .into(),
            primary,
            members,
            spec: i.spec.clone(),
            created_at_ms: i.created_at_ms,
            auto_failover: i.auto_failover,
            restored_from: i.restored.as_ref().map(|r| r.backup.clone()),
            restore_progress,
            last_failover_ms: i.last_failover_ms,
            rotation: self.rotation_view(inner, i),
            pitr_ready,
            pitr_reason,
            pitr_window,
            pitr_lag_s,
            parameters: i.parameters.clone(),
        }
    }
}

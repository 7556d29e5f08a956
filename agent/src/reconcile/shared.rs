//! What every member worker shares: config, runtime, volumes, local state, lease, the
//! desired state, the statuses the heartbeat carries, and the port allocator.

use super::{Error, Result};
use crate::config::AgentConfig;
use crate::engine::{self, Engine};
use crate::link::Lease;
use crate::runtime::{self, ContainerRuntime};
use crate::state::LocalState;
use crate::volume::VolumeManager;
use mofang_common::labels;
use mofang_common::proto::{Assignment, DesiredState, MemberStatus};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{watch, Notify};

pub use crate::statuses::{ReconcileStats, Statuses};

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
    pub(super) engines: EngineFactory,
    /// The scheduler link's current client (members' certificates are signed through it).
    pub scheduler: crate::link::Current,
    /// Serialises port allocation across workers.
    ports: Mutex<()>,
    /// When this agent process started.
    pub(super) started: Instant,
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
            scheduler: crate::link::Current::default(),
            ports: Mutex::new(()),
            started: Instant::now(),
        })
    }

    pub(super) fn assignment(&self, member: &str) -> Option<Assignment> {
        self.desired
            .borrow()
            .as_ref()?
            .members
            .iter()
            .find(|a| a.member == member)
            .cloned()
    }

    pub(super) fn set_status(&self, s: MemberStatus) {
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

    /// Records that a member's status still holds as of now (a probe found the server as
    /// last observed): its check time, position and lag move on, nothing the scheduler acts
    /// on changes.
    pub(super) fn touch_status(&self, member: &str, position: &str, lag_seconds: i64) {
        if let Ok(mut m) = self.statuses.lock() {
            if let Some(s) = m.get_mut(member) {
                s.checked_at_ms = super::now_ms();
                if s.position != position {
                    position.clone_into(&mut s.position);
                }
                s.lag_seconds = lag_seconds;
            }
        }
    }

    pub(super) fn container_name(member: &str) -> String {
        format!("mofang-{member}")
    }

    pub(super) async fn find_container(
        &self,
        member: &str,
    ) -> Result<Option<runtime::ContainerInfo>> {
        let node = self.cfg.node.as_str();
        let mut found = self
            .runtime
            .list(&[(labels::NODE, node), (labels::MEMBER, member)])
            .await?;
        Ok(found.pop())
    }

    pub(super) fn allocate_port(&self, member: &str) -> Result<u16> {
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

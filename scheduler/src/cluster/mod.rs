//! The scheduler's view of the cluster: durable records (through the `Store`) plus what
//! agents report. It takes the decisions (create, delete, node admin) and computes each
//! node's desired state, pushed to agents over `WatchAssignments`.

mod endpoints;
mod failover;

pub use endpoints::Registered;

pub use failover::Trigger;

use crate::failover::{Counters, FailoverConfig};
use crate::model::{
    now_ms, Credentials, Event, EventKind, Instance, InstanceSpec, MemberRecord, Node, NodeAdmin,
    NodeState,
};
use crate::placement::{self, NodeView};
use crate::store::{self, Store};
use mofang_common::proto::{Assignment, DesiredState, HeartbeatRequest, MemberStatus};
use mofang_common::Role;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{info, warn};

/// Errors of cluster operations; the API maps them to HTTP statuses.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is invalid (422).
    #[error("{0}")]
    Invalid(String),
    /// No placement exists (409 with the reason per node).
    #[error(transparent)]
    Unplaceable(#[from] placement::Error),
    /// The name is taken (409).
    #[error("instance {0} already exists")]
    AlreadyExists(String),
    /// No such object (404).
    #[error("{0} not found")]
    NotFound(String),
    /// The store refused or failed.
    #[error(transparent)]
    Store(store::Error),
    /// A failover or switchover is refused (409, one error code per reason): no replica can
    /// be promoted, a safety rail holds, or another operation is running.
    #[error(transparent)]
    Refused(#[from] crate::failover::rails::Refusal),
}

impl From<store::Error> for Error {
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::AlreadyExists(n) => Error::AlreadyExists(n),
            store::Error::NotFound(n) => Error::NotFound(n),
            other => Error::Store(other),
        }
    }
}

/// Result of cluster operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What agents told us about a node, in memory only.
#[derive(Debug, Clone)]
struct Live {
    last_heartbeat: Instant,
    last_heartbeat_ms: i64,
    members: HashMap<String, MemberStatus>,
    down_reported: bool,
}

/// Resources reserved on a node by placed members.
#[derive(Debug, Clone, Default)]
struct Reserved {
    cpu: f64,
    memory_mib: u64,
    disk_mib: BTreeMap<String, u64>,
    primaries: u32,
    members: u32,
    instances: BTreeSet<String>,
}

#[derive(Default)]
struct Inner {
    nodes: BTreeMap<String, Node>,
    instances: BTreeMap<String, Instance>,
    // Ordered by node name like `nodes`, so placement walks all three in step, no hashing.
    reserved: BTreeMap<String, Reserved>,
    live: BTreeMap<String, Live>,
    watchers: HashMap<String, watch::Sender<DesiredState>>,
    revision: u64,
    /// Last replication lag each member reported while replicating (failover eligibility).
    last_lag: HashMap<String, i64>,
    /// Lease each node's agent announced at registration.
    node_lease: HashMap<String, Duration>,
    /// Failovers decided and not yet confirmed, by instance.
    inflight: HashMap<String, failover::InFlight>,
    /// Instances a failover, switchover or replacement is being carried out for.
    busy: BTreeSet<String>,
    /// Conditions already reported by an event (reported once until they clear).
    reported: BTreeSet<String>,
    /// Mass-failure guard tripped: automatic failovers wait for an operator.
    mass_hold: bool,
    /// Instances with a member whose agent reported trouble (see [`crate::failover::decide::calm`]); the failover
    /// pass assesses these and those on silent nodes, not every instance.
    suspects: HashSet<String>,
    /// Registered nodes ordered by placement score, kept in step with `nodes` and `reserved`.
    ranking: placement::Ranking,
    /// Distinct `zone` labels among registered nodes (no label counts as one zone).
    zones_total: usize,
}

impl Inner {
    /// Puts a node back in its place in the ranking after its record or reservations changed.
    fn rerank(&mut self, name: &str) {
        match self.nodes.get(name) {
            Some(n) => {
                let r = self.reserved.get(name);
                self.ranking.update(
                    name,
                    n.memory_bytes,
                    r.map_or(0, |r| r.memory_mib),
                    r.map_or(0, |r| r.members),
                );
            }
            None => self.ranking.remove(name),
        }
    }

    /// Adds or replaces a node record.
    fn put_node(&mut self, node: Node) {
        let name = node.name.clone();
        self.nodes.insert(name.clone(), node);
        self.rerank(&name);
        self.count_zones();
    }

    /// Rebuilds the ranking and the zone count from `nodes` and `reserved`.
    fn rerank_all(&mut self) {
        self.ranking = placement::Ranking::default();
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for n in names {
            self.rerank(&n);
        }
        self.count_zones();
    }

    fn count_zones(&mut self) {
        self.zones_total = self
            .nodes
            .values()
            .map(|n| n.labels.get(placement::ZONE_LABEL))
            .collect::<BTreeSet<_>>()
            .len();
    }
}

/// The cluster: one per scheduler process.
pub struct Cluster {
    store: Arc<dyn Store>,
    inner: Mutex<Inner>,
    node_ttl: Duration,
    failover: FailoverConfig,
    /// Failover counters for `/metrics`.
    pub counters: Counters,
    /// This scheduler leads (always, with the embedded store). Followers decide nothing.
    active: std::sync::atomic::AtomicBool,
    /// The leader's REST address, as the election reports it (followers redirect there).
    leader: Mutex<Option<String>>,
}

/// A member as the API shows it: decision plus observation.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
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
}

/// An instance as the API shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
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
    /// `ready` when every member is healthy, else `creating`/`degraded`.
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
}

/// A node as the API shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
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
    /// Members placed here.
    pub members: u32,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn password() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

fn event(kind: EventKind, instance: Option<&str>, node: Option<&str>, message: String) -> Event {
    Event {
        id: 0,
        at_ms: now_ms(),
        instance: instance.map(str::to_owned),
        node: node.map(str::to_owned),
        kind: kind.as_str().to_owned(),
        message,
    }
}

/// Validates a create request beyond what serde checks.
pub fn validate_spec(spec: &InstanceSpec) -> Result<()> {
    mofang_common::ids::validate_dns_label("instance", &spec.name, 40)
        .map_err(|e| Error::Invalid(e.to_string()))?;
    if !spec
        .engine
        .supported_versions()
        .contains(&spec.version.as_str())
    {
        return Err(Error::Invalid(format!(
            "{} version {} is not supported (supported: {})",
            spec.engine,
            spec.version,
            spec.engine.supported_versions().join(", ")
        )));
    }
    if spec.replicas > 8 {
        return Err(Error::Invalid(format!(
            "replicas {} is absurd: at most 8",
            spec.replicas
        )));
    }
    let r = &spec.resources;
    if !(r.cpu.is_finite() && (0.1..=64.0).contains(&r.cpu)) {
        return Err(Error::Invalid(format!(
            "resources.cpu {} must be within 0.1 .. 64",
            r.cpu
        )));
    }
    if !(64..=1 << 20).contains(&r.memory) {
        return Err(Error::Invalid(format!(
            "resources.memory {} MiB must be within 64 MiB .. 1 TiB",
            r.memory
        )));
    }
    if !(64..=64 << 20).contains(&r.disk) {
        return Err(Error::Invalid(format!(
            "resources.disk {} MiB must be within 64 MiB .. 64 TiB",
            r.disk
        )));
    }
    if let Some(c) = &spec.disk_class {
        mofang_common::ids::validate_dns_label("disk_class", c, 32)
            .map_err(|e| Error::Invalid(e.to_string()))?;
    }
    Ok(())
}

impl Cluster {
    /// Loads nodes and instances from the store.
    pub async fn load(store: Arc<dyn Store>, node_ttl: Duration) -> Result<Arc<Self>> {
        Self::load_with(store, node_ttl, FailoverConfig::default()).await
    }

    /// Loads nodes and instances from the store, with failover settings.
    pub async fn load_with(
        store: Arc<dyn Store>,
        node_ttl: Duration,
        failover: FailoverConfig,
    ) -> Result<Arc<Self>> {
        let nodes = store.nodes().await?;
        let instances = store.instances().await?;
        let mut inner = Inner::default();
        for n in nodes {
            inner.nodes.insert(n.name.clone(), n);
        }
        for i in instances {
            reserve(&mut inner, &i, true);
            inner.instances.insert(i.spec.name.clone(), i);
        }
        inner.rerank_all();
        info!(
            nodes = inner.nodes.len(),
            instances = inner.instances.len(),
            "cluster state loaded"
        );
        Ok(Arc::new(Cluster {
            store,
            inner: Mutex::new(inner),
            node_ttl,
            failover,
            counters: Counters::default(),
            active: std::sync::atomic::AtomicBool::new(true),
            leader: Mutex::new(None),
        }))
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// True while this scheduler leads and acts.
    pub fn is_active(&self) -> bool {
        self.active.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The leader's REST address, when this one follows.
    pub fn leader_hint(&self) -> Option<String> {
        self.leader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records who leads (from the election's watch).
    pub fn set_leader_hint(&self, address: Option<String>) {
        *self.leader.lock().unwrap_or_else(PoisonError::into_inner) = address;
    }

    /// Stops acting at once: decisions stop, agent streams close (agents go to the leader).
    pub fn deactivate(&self) {
        self.active
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let mut inner = lock(&self.inner);
        inner.watchers.clear();
        inner.inflight.clear();
    }

    /// Becomes the leader: reloads every record from the shared store (another scheduler
    /// may have written since), forgets what agents told the previous term, then acts.
    pub async fn activate(&self) -> Result<()> {
        let nodes = self.store.nodes().await?;
        let instances = self.store.instances().await?;
        {
            let mut inner = lock(&self.inner);
            inner.nodes = nodes.into_iter().map(|n| (n.name.clone(), n)).collect();
            inner.reserved.clear();
            inner.instances.clear();
            for i in instances {
                reserve(&mut inner, &i, true);
                inner.instances.insert(i.spec.name.clone(), i);
            }
            inner.rerank_all();
            inner.live.clear();
            inner.watchers.clear();
            inner.inflight.clear();
            inner.reported.clear();
            inner.last_lag.clear();
            inner.suspects.clear();
        }
        self.active.store(true, std::sync::atomic::Ordering::SeqCst);
        self.abandon_switchovers().await
    }

    fn node_state(&self, inner: &Inner, node: &Node) -> NodeState {
        self.node_state_at(inner, node, Instant::now())
    }

    fn node_state_at(&self, inner: &Inner, node: &Node, now: Instant) -> NodeState {
        let alive = inner
            .live
            .get(&node.name)
            .is_some_and(|l| now.saturating_duration_since(l.last_heartbeat) < self.node_ttl);
        state_of(alive, node.admin)
    }

    /// Every node as placement sees it: merge join over the maps sorted by node name.
    fn node_views<'a>(&self, inner: &'a Inner) -> Vec<NodeView<'a>> {
        static EMPTY: std::sync::OnceLock<Reserved> = std::sync::OnceLock::new();
        let empty = EMPTY.get_or_init(Reserved::default);
        let now = Instant::now();
        let ttl = self.node_ttl;
        let mut reserved = inner.reserved.iter().peekable();
        let mut live = inner.live.iter().peekable();
        let mut views: Vec<NodeView<'_>> = Vec::with_capacity(inner.nodes.len());
        for (name, n) in &inner.nodes {
            while reserved
                .next_if(|(k, _)| k.as_str() < name.as_str())
                .is_some()
            {}
            while live.next_if(|(k, _)| k.as_str() < name.as_str()).is_some() {}
            let r = reserved
                .next_if(|(k, _)| *k == name)
                .map(|(_, r)| r)
                .unwrap_or(empty);
            let alive = live
                .next_if(|(k, _)| *k == name)
                .is_some_and(|(_, l)| now.saturating_duration_since(l.last_heartbeat) < ttl);
            views.push(NodeView {
                node: n,
                state: state_of(alive, n.admin),
                reserved_cpu: r.cpu,
                reserved_memory_mib: r.memory_mib,
                reserved_disk_mib: std::borrow::Cow::Borrowed(&r.disk_mib),
                primaries: r.primaries,
                members: r.members,
            });
        }
        views
    }

    /// Places `spec` walking the ranking from the top (a few nodes, usually); when that finds
    /// too few nodes, over every node, which also says why each one was refused.
    fn place(&self, inner: &Inner, spec: &InstanceSpec) -> placement::Result<placement::Placed> {
        static EMPTY: std::sync::OnceLock<Reserved> = std::sync::OnceLock::new();
        let empty = EMPTY.get_or_init(Reserved::default);
        let now = Instant::now();
        let strategy = spec
            .placement
            .as_ref()
            .and_then(|p| p.spread)
            .unwrap_or_default();
        let ranked = inner.ranking.names(strategy).filter_map(|name| {
            let node = inner.nodes.get(name)?;
            let r = inner.reserved.get(name).unwrap_or(empty);
            Some(NodeView {
                node,
                state: self.node_state_at(inner, node, now),
                reserved_cpu: r.cpu,
                reserved_memory_mib: r.memory_mib,
                reserved_disk_mib: std::borrow::Cow::Borrowed(&r.disk_mib),
                primaries: r.primaries,
                members: r.members,
            })
        });
        match placement::place_ranked(spec, ranked, inner.zones_total) {
            Some(placed) => Ok(placed),
            None => placement::place(spec, &self.node_views(inner)),
        }
    }

    // ---- decisions -------------------------------------------------------------------

    /// Places and durably creates an instance. Placement and the in-memory reservation
    /// happen under one lock (no two requests can take the same capacity); the store write
    /// happens outside it so concurrent creations share a commit.
    pub async fn create_instance(&self, spec: InstanceSpec) -> Result<Instance> {
        validate_spec(&spec)?;
        let inst = {
            let mut inner = lock(&self.inner);
            if inner.instances.contains_key(&spec.name) {
                return Err(Error::AlreadyExists(spec.name.clone()));
            }
            let placed = self.place(&inner, &spec)?;
            let inst = Instance::new(
                spec.clone(),
                placed.members,
                Credentials {
                    admin: password(),
                    repl: password(),
                    monitor: password(),
                    app: password(),
                },
            );
            // Reserve now; undone below if the store refuses.
            reserve(&mut inner, &inst, true);
            inner.instances.insert(spec.name.clone(), inst.clone());
            inst
        };
        let mut events = vec![event(
            EventKind::InstanceCreated,
            Some(&spec.name),
            None,
            format!(
                "{} {} with {} replicas",
                spec.engine, spec.version, spec.replicas
            ),
        )];
        for m in &inst.members {
            events.push(event(
                EventKind::Placed,
                Some(&spec.name),
                Some(&m.node),
                format!("{} ({}) on {}", m.id, m.role, m.node),
            ));
        }
        match self.store.create_instance(&inst, &events).await {
            Ok(stored) => {
                let mut inner = lock(&self.inner);
                inner.instances.insert(spec.name.clone(), stored.clone());
                let nodes: Vec<String> = stored.members.iter().map(|m| m.node.clone()).collect();
                self.push_nodes(&mut inner, &nodes);
                Ok(stored)
            }
            Err(e) => {
                let mut inner = lock(&self.inner);
                if inner
                    .instances
                    .get(&spec.name)
                    .is_some_and(|i| i.revision == 0)
                {
                    inner.instances.remove(&spec.name);
                    reserve(&mut inner, &inst, false);
                }
                Err(e.into())
            }
        }
    }

    /// Deletes an instance: its members leave desired state; agents remove containers, then volumes.
    pub async fn delete_instance(&self, name: &str) -> Result<()> {
        let inst = lock(&self.inner)
            .instances
            .get(name)
            .filter(|i| i.revision > 0)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("instance {name}")))?;
        let ev = vec![event(
            EventKind::InstanceDeleted,
            Some(name),
            None,
            format!("{} members removed", inst.members.len()),
        )];
        self.store.delete_instance(name, inst.revision, &ev).await?;
        let mut inner = lock(&self.inner);
        if let Some(i) = inner.instances.remove(name) {
            reserve(&mut inner, &i, false);
            let nodes: Vec<String> = i.members.iter().map(|m| m.node.clone()).collect();
            self.push_nodes(&mut inner, &nodes);
        }
        Ok(())
    }

    /// Sets a node's admin state.
    pub async fn set_node_admin(&self, name: &str, admin: NodeAdmin) -> Result<Node> {
        let node = self.store.set_node_admin(name, admin).await?;
        self.store
            .append_events(&[event(
                EventKind::NodeAdmin,
                None,
                Some(name),
                format!("node set {admin:?}").to_lowercase(),
            )])
            .await?;
        lock(&self.inner).put_node(node.clone());
        Ok(node)
    }

    // ---- agents ------------------------------------------------------------------------

    /// An agent registered: record the node (keeping its admin state).
    pub async fn register(&self, mut node: Node) -> Result<()> {
        let existing = lock(&self.inner).nodes.get(&node.name).cloned();
        if let Some(e) = &existing {
            node.admin = e.admin;
            node.registered_at_ms = e.registered_at_ms;
        }
        if existing.as_ref() != Some(&node) {
            self.store.put_node(&node).await?;
            let kind = if existing.is_none() {
                EventKind::NodeRegistered
            } else {
                EventKind::NodeUpdated
            };
            self.store
                .append_events(&[event(
                    kind,
                    None,
                    Some(&node.name),
                    format!("{} at {}", node.name, node.address),
                )])
                .await?;
        }
        lock(&self.inner).put_node(node);
        Ok(())
    }

    /// A heartbeat: remember what the agent sees; push new desired states if a primary's
    /// address changed (replicas follow it).
    /// Returns the node's latest desired-state revision, or None for an unregistered node.
    pub fn heartbeat(&self, hb: HeartbeatRequest) -> Option<u64> {
        let mut inner = lock(&self.inner);
        if !inner.nodes.contains_key(&hb.node) {
            return None;
        }
        let mut moved_primaries = Vec::new();
        let Inner {
            live,
            instances,
            last_lag,
            suspects,
            ..
        } = &mut *inner;
        let live = live.entry(hb.node.clone()).or_insert_with(|| Live {
            last_heartbeat: Instant::now(),
            last_heartbeat_ms: 0,
            members: HashMap::new(),
            down_reported: false,
        });
        live.last_heartbeat = Instant::now();
        live.last_heartbeat_ms = now_ms();
        let was_down = std::mem::replace(&mut live.down_reported, false);
        for m in hb.members {
            let moved = !m.address.is_empty()
                && live.members.get(&m.member).map(|o| o.address.as_str())
                    != Some(m.address.as_str());
            // Only a primary's address matters to others: its replicas follow it.
            if moved
                && instances.get(&m.instance).is_some_and(|i| {
                    i.members
                        .iter()
                        .any(|r| r.id == m.member && r.role == Role::Primary)
                })
            {
                moved_primaries.push(m.instance.clone());
            }
            // Agents report the last lag seen with the link up while it is down, so a
            // scheduler that started after the primary failed learns it too.
            if m.lag_seconds >= 0 {
                match last_lag.get_mut(&m.member) {
                    Some(lag) => *lag = m.lag_seconds,
                    None => {
                        last_lag.insert(m.member.clone(), m.lag_seconds);
                    }
                }
            }
            if !crate::failover::decide::calm(&m) && !suspects.contains(&m.instance) {
                suspects.insert(m.instance.clone());
            }
            match live.members.get_mut(&m.member) {
                Some(slot) => *slot = m,
                None => {
                    live.members.insert(m.member.clone(), m);
                }
            }
        }
        if was_down {
            info!(node = %hb.node, "node is back");
        }
        // Replicas learn the primary's (new) address.
        let mut nodes = Vec::new();
        for name in moved_primaries {
            if let Some(i) = inner.instances.get(&name) {
                nodes.extend(i.members.iter().map(|m| m.node.clone()));
            }
        }
        if !nodes.is_empty() {
            nodes.sort();
            nodes.dedup();
            self.push_nodes(&mut inner, &nodes);
        }
        Some(
            inner
                .watchers
                .get(&hb.node)
                .map(|w| w.borrow().revision)
                .unwrap_or(0),
        )
    }

    /// Subscribes to a node's desired state (sent on connect, then on every change).
    pub fn watch(&self, node: &str) -> watch::Receiver<DesiredState> {
        let mut inner = lock(&self.inner);
        if let Some(tx) = inner.watchers.get(node) {
            return tx.subscribe();
        }
        let rev = next_revision(&mut inner);
        let ds = desired_for(&inner, node, rev);
        let (tx, rx) = watch::channel(ds);
        inner.watchers.insert(node.to_owned(), tx);
        rx
    }

    fn push_nodes(&self, inner: &mut Inner, nodes: &[String]) {
        for n in nodes {
            if inner.watchers.contains_key(n) {
                let rev = next_revision(inner);
                let ds = desired_for(inner, n, rev);
                if let Some(tx) = inner.watchers.get(n) {
                    tx.send_replace(ds);
                }
            }
        }
    }

    /// Marks nodes without heartbeats for `node_ttl` down (once), with an event.
    pub async fn check_nodes(&self) {
        let newly_down: Vec<String> = {
            let mut inner = lock(&self.inner);
            let ttl = self.node_ttl;
            inner
                .live
                .iter_mut()
                .filter(|(_, l)| !l.down_reported && l.last_heartbeat.elapsed() >= ttl)
                .map(|(n, l)| {
                    l.down_reported = true;
                    n.clone()
                })
                .collect()
        };
        for n in newly_down {
            warn!(node = %n, "node down: no heartbeat for node_ttl");
            let ev = event(
                EventKind::NodeDown,
                None,
                Some(&n),
                format!("no heartbeat for {} ms", self.node_ttl.as_millis()),
            );
            if let Err(e) = self.store.append_events(&[ev]).await {
                warn!(error = %e, "could not record node_down event");
            }
        }
    }

    // ---- views -------------------------------------------------------------------------

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
            members: r.members,
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
        InstanceView {
            name: i.spec.name.clone(),
            engine: i.spec.engine.to_string(),
            version: i.spec.version.clone(),
            replicas: i.spec.replicas,
            epoch: i.epoch,
            status: if all_ok {
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
            last_failover_ms: i.last_failover_ms,
        }
    }
}

fn state_of(alive: bool, admin: NodeAdmin) -> NodeState {
    match (alive, admin) {
        (false, _) => NodeState::Down,
        (true, NodeAdmin::Active) => NodeState::Ready,
        (true, NodeAdmin::Cordoned) => NodeState::Cordoned,
        (true, NodeAdmin::Draining) => NodeState::Draining,
    }
}

/// Revisions must grow across scheduler restarts too (agents ignore older ones), so they
/// follow the clock in microseconds and only ever step forward.
fn next_revision(inner: &mut Inner) -> u64 {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    inner.revision = (inner.revision + 1).max(now_us);
    inner.revision
}

/// Adds (or removes) an instance's reservations.
fn reserve(inner: &mut Inner, i: &Instance, add: bool) {
    let r = &i.spec.resources;
    for m in &i.members {
        let class = disk_class_of(&inner.nodes, i, m);
        let e = inner.reserved.entry(m.node.clone()).or_default();
        if add {
            e.cpu += r.cpu;
            e.memory_mib += r.memory;
            *e.disk_mib.entry(class.clone()).or_default() += r.disk;
            e.members += 1;
            e.primaries += u32::from(m.role == Role::Primary);
            e.instances.insert(i.spec.name.clone());
        } else {
            e.cpu = (e.cpu - r.cpu).max(0.0);
            e.memory_mib = e.memory_mib.saturating_sub(r.memory);
            if let Some(d) = e.disk_mib.get_mut(&class) {
                *d = d.saturating_sub(r.disk);
            }
            e.members = e.members.saturating_sub(1);
            e.primaries = e
                .primaries
                .saturating_sub(u32::from(m.role == Role::Primary));
            e.instances.remove(&i.spec.name);
        }
        inner.rerank(&m.node);
    }
}

/// The disk class a member's volume is on: the one placement recorded; for records written
/// before it was recorded, the request's class, else the class of the node's first disk.
fn disk_class_of(nodes: &BTreeMap<String, Node>, i: &Instance, m: &MemberRecord) -> String {
    if !m.disk_class.is_empty() {
        return m.disk_class.clone();
    }
    i.spec
        .disk_class
        .clone()
        .or_else(|| Some(nodes.get(&m.node)?.disks.first()?.class.clone()))
        .unwrap_or_default()
}

/// A node's full desired state: one assignment per member placed on it.
fn desired_for(inner: &Inner, node: &str, revision: u64) -> DesiredState {
    let mut members = Vec::new();
    if let Some(r) = inner.reserved.get(node) {
        for name in &r.instances {
            let Some(i) = inner.instances.get(name).filter(|i| i.revision > 0) else {
                continue;
            };
            let primary = i.members.iter().find(|m| m.role == Role::Primary);
            let primary_address = primary
                .and_then(|p| inner.live.get(&p.node)?.members.get(&p.id))
                .map(|s| s.address.clone())
                .unwrap_or_default();
            for m in i.members.iter().filter(|m| m.node == node) {
                // A member is never left out of its node's desired state (the agent would remove
                // it). A replica whose primary's address is not known yet (just created, or the
                // scheduler just restarted) gets an empty address: the agent keeps it as it is.
                let c = &i.credentials;
                members.push(Assignment {
                    member: m.id.clone(),
                    instance: i.spec.name.clone(),
                    engine: i.spec.engine.to_string(),
                    version: i.spec.version.clone(),
                    role: m.role.to_string(),
                    epoch: i.epoch,
                    cpu: i.spec.resources.cpu,
                    memory_bytes: i.spec.resources.memory << 20,
                    disk_bytes: i.spec.resources.disk << 20,
                    disk_class: disk_class_of(&inner.nodes, i, m),
                    primary_address: if m.role == Role::Replica {
                        primary_address.clone()
                    } else {
                        String::new()
                    },
                    secrets: HashMap::from([
                        ("admin".into(), c.admin.clone()),
                        ("repl".into(), c.repl.clone()),
                        ("monitor".into(), c.monitor.clone()),
                        ("app".into(), c.app.clone()),
                    ]),
                    settings: HashMap::from([("replicas".into(), i.spec.replicas.to_string())]),
                    fence: m.role == Role::Primary && i.fence_primary,
                    promote_after: if m.role == Role::Primary {
                        i.promote_after.clone()
                    } else {
                        String::new()
                    },
                });
            }
        }
    }
    DesiredState {
        node: node.to_owned(),
        revision,
        members,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::rails::Trigger;
    use crate::model::{DiskInfo, Resources};
    use crate::store::sqlite::SqliteStore;
    use mofang_common::EngineKind;

    const MIB: u64 = 1 << 20;

    fn node(name: &str, disks: &[(&str, u64)]) -> Node {
        Node {
            name: name.into(),
            address: "127.0.0.1".into(),
            labels: BTreeMap::from([("zone".into(), name.into())]),
            cpu: 8.0,
            memory_bytes: 16 << 30,
            disks: disks
                .iter()
                .enumerate()
                .map(|(i, (class, mib))| DiskInfo {
                    path: format!("/data{i}"),
                    class: (*class).into(),
                    capacity_bytes: mib * MIB,
                    free_bytes: mib * MIB,
                })
                .collect(),
            admin: NodeAdmin::Active,
            agent_version: "test".into(),
            registered_at_ms: 0,
            http_address: String::new(),
        }
    }

    fn spec(name: &str, disk_mib: u64, class: Option<&str>) -> InstanceSpec {
        InstanceSpec {
            name: name.into(),
            engine: EngineKind::Mariadb,
            version: "10.11".into(),
            replicas: 2,
            resources: Resources {
                cpu: 0.5,
                memory: 256,
                disk: disk_mib,
            },
            disk_class: class.map(str::to_owned),
            placement: None,
        }
    }

    async fn cluster(nodes: &[Node]) -> Arc<Cluster> {
        let store = Arc::new(SqliteStore::open_in_memory().expect("in-memory store"));
        let c = Cluster::load(store, Duration::from_secs(30))
            .await
            .expect("load");
        for n in nodes {
            c.register(n.clone()).await.expect("register");
            c.heartbeat(HeartbeatRequest {
                node: n.name.clone(),
                ..Default::default()
            });
        }
        c
    }

    /// Issue 13, point 4: with no class asked for, placement picks a class per node, and the
    /// books and the agent must follow that pick. Before, the books said `ssd` whatever was
    /// picked, so an all-hdd node never filled up.
    #[tokio::test]
    async fn an_hdd_only_node_books_what_placement_chose_and_fills_up() {
        let nodes: Vec<Node> = ["a", "b", "c"]
            .iter()
            .map(|n| node(n, &[("hdd", 1000)]))
            .collect();
        let c = cluster(&nodes).await;
        let i = c
            .create_instance(spec("one", 600, None))
            .await
            .expect("first instance fits");
        assert!(i.members.iter().all(|m| m.disk_class == "hdd"), "{i:?}");
        let ds = c.watch("a").borrow().clone();
        assert!(
            ds.members.iter().all(|a| a.disk_class == "hdd"),
            "the agent is told the class: {ds:?}"
        );
        let e = c
            .create_instance(spec("two", 600, None))
            .await
            .expect_err("400 MiB left per node");
        assert!(e.to_string().contains("disk (hdd) 400 MiB free"), "{e}");
        // Deleting gives the space back under the same class.
        c.delete_instance("one").await.expect("delete");
        c.create_instance(spec("two", 600, None))
            .await
            .expect("space given back");
    }

    /// Found reading the code (decision 33): a scheduler killed between a switchover's fence
    /// and its promotion left the primary fenced for good.
    #[tokio::test]
    async fn a_switchover_cut_short_by_a_restart_is_undone() {
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open_in_memory().expect("in-memory store"));
        let c = Cluster::load(store.clone(), Duration::from_secs(30))
            .await
            .expect("load");
        for n in ["a", "b", "c"] {
            c.register(node(n, &[("ssd", 1000)]))
                .await
                .expect("register");
            c.heartbeat(HeartbeatRequest {
                node: n.into(),
                ..Default::default()
            });
        }
        let i = c
            .create_instance(spec("one", 100, None))
            .await
            .expect("create");
        let mut fenced = i.clone();
        fenced.fence_primary = true;
        c.write(fenced, vec![]).await.expect("fence");
        // A new scheduler on the same store.
        let c = Cluster::load(store.clone(), Duration::from_secs(30))
            .await
            .expect("reload");
        c.activate().await.expect("activate");
        let after = store.instances().await.expect("instances");
        assert!(after.iter().all(|i| !i.fence_primary), "{after:?}");
        assert_eq!(after[0].epoch, i.epoch, "nothing else changed");
        let ev = store.events(Some("one"), 0, 100).await.expect("events");
        assert!(
            ev.iter()
                .any(|e| e.kind == EventKind::SwitchoverAbandoned.as_str()),
            "{ev:?}"
        );
    }

    #[tokio::test]
    async fn mixed_classes_book_each_member_under_its_own() {
        let c = cluster(&[
            node("a", &[("hdd", 1000)]),
            node("b", &[("ssd", 1000)]),
            node("c", &[("hdd", 100), ("ssd", 2000)]),
        ])
        .await;
        let i = c
            .create_instance(spec("one", 500, None))
            .await
            .expect("fits");
        let class: BTreeMap<&str, &str> = i
            .members
            .iter()
            .map(|m| (m.node.as_str(), m.disk_class.as_str()))
            .collect();
        assert_eq!(
            class,
            BTreeMap::from([("a", "hdd"), ("b", "ssd"), ("c", "ssd")])
        );
        let inner = lock(&c.inner);
        assert_eq!(inner.reserved["a"].disk_mib.get("hdd"), Some(&500));
        assert_eq!(inner.reserved["c"].disk_mib.get("ssd"), Some(&500));
        assert_eq!(inner.reserved["c"].disk_mib.get("hdd"), None);
    }

    /// Soak, scheduler `kill -9` during a failover: the new scheduler never saw a replica's
    /// link up, so it knew no lag, found no candidate and brought the held old primary back
    /// instead of promoting a replica. Agents now report the last lag seen with the link up.
    #[tokio::test]
    async fn a_scheduler_started_after_the_primary_died_promotes_a_replica() {
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open_in_memory().expect("in-memory store"));
        let first = Cluster::load(store.clone(), Duration::from_secs(30))
            .await
            .expect("load");
        for n in ["a", "b", "c"] {
            first
                .register(node(n, &[("ssd", 1000)]))
                .await
                .expect("register");
            first.heartbeat(HeartbeatRequest {
                node: n.into(),
                ..Default::default()
            });
        }
        let i = first
            .create_instance(spec("one", 100, None))
            .await
            .expect("create");
        drop(first);
        // A new scheduler on the same store; the primary is held dead, the replicas' links
        // are down (they were down before this scheduler started).
        let c = Cluster::load(store.clone(), Duration::from_secs(30))
            .await
            .expect("reload");
        c.activate().await.expect("activate");
        let old = i.primary().expect("primary").clone();
        for m in &i.members {
            let primary = m.id == old.id;
            let status = MemberStatus {
                member: m.id.clone(),
                instance: "one".into(),
                engine: "mariadb".into(),
                container_state: if primary { "exited" } else { "running" }.into(),
                role: if primary { "unknown" } else { "replica" }.into(),
                epoch: i.epoch,
                address: format!("10.0.0.{}:3306", m.node.len()),
                position: "0-1-40".into(),
                lag_seconds: if primary { -1 } else { 0 },
                held: primary,
                read_only: !primary,
                replication_ok: false,
                checked_at_ms: now_ms(),
                ..Default::default()
            };
            c.heartbeat(HeartbeatRequest {
                node: m.node.clone(),
                members: vec![status],
                ..Default::default()
            });
        }
        let after = c
            .fail_over("one", "test", None, Trigger::Operator)
            .await
            .expect("fails over");
        let new = after.primary().expect("new primary");
        assert_ne!(
            new.id, old.id,
            "a replica is promoted, not the held primary: {after:?}"
        );
        assert_eq!(after.epoch, i.epoch + 1);
    }
}

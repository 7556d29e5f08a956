//! Placement: which nodes get the members of a new instance, as a pure function of the cluster
//! state and the request.
//!
//! The steps follow the Kubernetes scheduler's filter-then-score model
//! (<https://kubernetes.io/docs/concepts/scheduling-eviction/kube-scheduler/>): every node is
//! filtered (state, zone, cpu, memory, disk), the survivors are ranked by the strategy's score,
//! and members are picked greedily so that they land in as many zones as possible, one member per
//! node at most. The primary then goes to the chosen node carrying the fewest primaries, so that
//! write load spreads over the hosts.
//!
//! Nothing here does I/O or reads the clock: the same input always gives the same output, so the
//! reconcile loop may retry a placement and get the same answer.

use crate::model::{InstanceSpec, MemberRecord, Node, NodeAdmin, NodeState, Strategy};
use mofang_common::Role;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

/// The label holding a node's zone.
pub const ZONE_LABEL: &str = "zone";

const MIB: u64 = 1024 * 1024;

/// Slack on cpu comparisons, so that `0.3 - 0.2` cores free still fit a `0.1` core member.
const CPU_EPSILON: f64 = 1e-9;

/// What placement needs to know about a node right now.
#[derive(Debug, Clone)]
pub struct NodeView<'a> {
    /// The node record.
    pub node: &'a Node,
    /// Its current state; only `Ready` nodes are schedulable.
    pub state: NodeState,
    /// CPU cores already reserved on this node by members of existing instances.
    pub reserved_cpu: f64,
    /// Memory MiB already reserved on this node by members of existing instances.
    pub reserved_memory_mib: u64,
    /// Reserved disk MiB per disk class on this node. A class may have several disks: the
    /// capacity of a class is the sum of its disks' `capacity_bytes`, in MiB.
    pub reserved_disk_mib: std::borrow::Cow<'a, BTreeMap<String, u64>>,
    /// Number of primaries currently on this node (for primary balancing).
    pub primaries: u32,
    /// Number of members currently on this node.
    pub members: u32,
}

/// The outcome of a placement.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    /// `members[0]` is the primary, the rest are replicas; ids are `<instance>-<ordinal>`.
    pub members: Vec<MemberRecord>,
}

/// Why an instance cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not enough nodes pass the filters for the hard anti-affinity (one member per node).
    #[error("cannot place {wanted} members of {instance}: {fit} nodes fit; {}", listed(.reasons))]
    Unplaceable {
        /// Instance name.
        instance: String,
        /// Members asked for (primary plus replicas).
        wanted: usize,
        /// Nodes that passed every filter.
        fit: usize,
        /// Why each other node was filtered out, one entry per failed check,
        /// e.g. `node-b: memory 512 MiB free, 1024 MiB asked`.
        reasons: Vec<String>,
    },
}

/// Reasons shown in an error's text; the rest are counted. The text goes into events and
/// API answers, so it stays short however many nodes there are (1,000 nodes, all down, made
/// an 18 KB event).
const REASONS_SHOWN: usize = 10;

fn listed(reasons: &[String]) -> String {
    match reasons.len() {
        n if n <= REASONS_SHOWN => reasons.join("; "),
        n => format!(
            "{}; and {} more",
            reasons[..REASONS_SHOWN].join("; "),
            n - REASONS_SHOWN
        ),
    }
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A node that passed the filters, with what scoring needs.
struct Candidate<'a> {
    name: &'a str,
    /// `None` for a node without a zone label; such nodes count as one zone together.
    zone: Option<&'a str>,
    free_memory_mib: u64,
    memory_mib: u64,
    members: u32,
    primaries: u32,
    /// The disk class its member would get ([`disk_class_for`]).
    disk_class: &'a str,
}

/// Places `1 + spec.replicas` members of `spec` on `nodes`, at most one per node.
///
/// `nodes` holds one view per node (names unique); their order does not matter.
///
/// Cost: one pass over the nodes, no allocation per node. Ranking does not sort every
/// candidate: the greedy pick below only ever takes a zone's best node or one of the
/// `wanted` best overall, and all of those are among the `wanted` best of their zone, so only
/// those ("finalists") are ranked. The answer is the same as ranking everything (a unit test
/// checks this against the full sort on random clusters).
pub fn place(spec: &InstanceSpec, nodes: &[NodeView<'_>]) -> Result<Placed> {
    let mut finalists = Finalists::new(spec);
    for view in nodes {
        finalists.offer(view);
    }
    if finalists.fit < finalists.wanted {
        // The rare path: a second pass for the reason each node was filtered out.
        let mut reasons = Vec::new();
        for view in nodes {
            check(spec, finalists.zones, view, Some(&mut reasons));
        }
        return Err(Error::Unplaceable {
            instance: spec.name.clone(),
            wanted: finalists.wanted,
            fit: finalists.fit,
            reasons,
        });
    }
    Ok(finalists.pick())
}

/// Places like [`place`], walking `ranked`: the nodes in the order of a [`Ranking`] (best
/// first for `spread`, reversed for `binpack`: exactly the strategy's score order). It stops
/// as soon as the nodes seen decide the answer: at least `wanted` fit, in at least
/// `min(wanted, zones_total)` zones (`zones_total`: how many distinct zones the cluster has, a
/// node without a zone label counting as one). Every node after such a prefix ranks lower and
/// cannot change the greedy pick, so the answer equals [`place`]'s. `None` when the walk ends
/// with too few fitting nodes: the caller runs [`place`] over every node for the reasons.
pub fn place_ranked<'a>(
    spec: &InstanceSpec,
    ranked: impl Iterator<Item = NodeView<'a>>,
    zones_total: usize,
) -> Option<Placed> {
    let mut finalists = Finalists::new(spec);
    let zones_needed = finalists
        .wanted
        .min(zones_total)
        .min(finalists.zones.map_or(usize::MAX, <[String]>::len));
    for view in ranked {
        if finalists.fit >= finalists.wanted && finalists.zone_count() >= zones_needed {
            break;
        }
        finalists.offer(&view);
    }
    (finalists.fit >= finalists.wanted).then(|| finalists.pick())
}

/// The candidates that can still be picked, per zone, as nodes are offered.
struct Finalists<'s, 'a> {
    spec: &'s InstanceSpec,
    strategy: Strategy,
    zones: Option<&'s [String]>,
    wanted: usize,
    /// Nodes that passed every filter.
    fit: usize,
    /// Per zone, its best `wanted` candidates so far, best first.
    by_zone: BTreeMap<Option<&'a str>, Vec<Candidate<'a>>>,
}

impl<'s, 'a> Finalists<'s, 'a> {
    fn new(spec: &'s InstanceSpec) -> Self {
        let placement = spec.placement.as_ref();
        Finalists {
            spec,
            strategy: placement.and_then(|p| p.spread).unwrap_or_default(),
            // An empty list is read as "no constraint" rather than "no node may be used".
            zones: placement
                .and_then(|p| p.zones.as_deref())
                .filter(|z| !z.is_empty()),
            wanted: usize::try_from(spec.replicas)
                .unwrap_or(usize::MAX)
                .saturating_add(1),
            fit: 0,
            by_zone: BTreeMap::new(),
        }
    }

    fn zone_count(&self) -> usize {
        self.by_zone.len()
    }

    /// Filters one node and keeps it if it is among its zone's best `wanted`.
    fn offer(&mut self, view: &NodeView<'a>) {
        if !check(self.spec, self.zones, view, None) {
            return;
        }
        self.fit += 1;
        let memory_mib = view.node.memory_bytes / MIB;
        let candidate = Candidate {
            name: &view.node.name,
            zone: view.node.labels.get(ZONE_LABEL).map(String::as_str),
            free_memory_mib: memory_mib.saturating_sub(view.reserved_memory_mib),
            memory_mib,
            members: view.members,
            primaries: view.primaries,
            disk_class: disk_class_for(self.spec, view).map_or("", |(c, _)| c),
        };
        let strategy = self.strategy;
        let best = self.by_zone.entry(candidate.zone).or_default();
        let at = best.partition_point(|c| by_score(strategy, c, &candidate) == Ordering::Less);
        if at < self.wanted {
            best.insert(at, candidate);
            best.truncate(self.wanted);
        }
    }

    /// The greedy pick over the finalists; needs `fit >= wanted`.
    fn pick(self) -> Placed {
        let (spec, strategy, wanted) = (self.spec, self.strategy, self.wanted);
        // Rank the finalists once; a candidate's position is its score rank from here on.
        let mut candidates: Vec<Candidate<'_>> = self.by_zone.into_values().flatten().collect();
        candidates.sort_by(|a, b| by_score(strategy, a, b));

        // Greedy zone spread: take the best-ranked node of a zone not used yet, else the best-ranked
        // node left. Every zone among the candidates has at least one node, so this reaches
        // min(wanted, zones) distinct zones, the most possible.
        let mut taken = vec![false; candidates.len()];
        let mut used_zones: BTreeSet<Option<&str>> = BTreeSet::new();
        let mut chosen: Vec<usize> = Vec::with_capacity(wanted);
        for _ in 0..wanted {
            let mut first_free = None;
            let mut first_new_zone = None;
            for (rank, candidate) in candidates.iter().enumerate() {
                if taken[rank] {
                    continue;
                }
                first_free.get_or_insert(rank);
                if !used_zones.contains(&candidate.zone) {
                    first_new_zone = Some(rank);
                    break;
                }
            }
            // There are at least `wanted` candidates, so one is always left.
            let Some(rank) = first_new_zone.or(first_free) else {
                break;
            };
            taken[rank] = true;
            used_zones.insert(candidates[rank].zone);
            chosen.push(rank);
        }

        // Primary balancing: fewest primaries, ties to the best-ranked node.
        if let Some(pos) = chosen
            .iter()
            .enumerate()
            .min_by_key(|&(_, &rank)| (candidates[rank].primaries, rank))
            .map(|(pos, _)| pos)
        {
            let primary = chosen.remove(pos);
            chosen.insert(0, primary);
        }

        let members = chosen
            .iter()
            .enumerate()
            .map(|(ordinal, &rank)| MemberRecord {
                id: format!("{}-{ordinal}", spec.name),
                node: candidates[rank].name.to_owned(),
                role: if ordinal == 0 {
                    Role::Primary
                } else {
                    Role::Replica
                },
                disk_class: candidates[rank].disk_class.to_owned(),
            })
            .collect();
        Placed { members }
    }
}

/// Runs the filters on one node: true if it fits. With `reasons`, pushes one reason per
/// failed check (a node that is not schedulable at all gets only that reason: its free
/// resources would be noise); without, stops at the first failed check and formats nothing.
fn check(
    spec: &InstanceSpec,
    zones: Option<&[String]>,
    view: &NodeView<'_>,
    mut reasons: Option<&mut Vec<String>>,
) -> bool {
    let node = view.node;
    let name = node.name.as_str();
    let mut fits = true;
    // Records a failed check; `false` means "stop here" (no reasons wanted).
    let mut fail = |reason: &dyn Fn() -> String| -> bool {
        fits = false;
        match reasons.as_deref_mut() {
            Some(r) => {
                r.push(format!("{name}: {}", reason()));
                true
            }
            None => false,
        }
    };

    let unschedulable = match (view.state, node.admin) {
        (NodeState::Down, _) => Some("down"),
        (NodeState::Cordoned, _) | (NodeState::Ready, NodeAdmin::Cordoned) => Some("cordoned"),
        (NodeState::Draining, _) | (NodeState::Ready, NodeAdmin::Draining) => Some("draining"),
        (NodeState::Ready, NodeAdmin::Active) => None,
    };
    if let Some(state) = unschedulable {
        fail(&|| state.to_owned());
        return false;
    }

    if let Some(zones) = zones {
        let more = match node.labels.get(ZONE_LABEL) {
            None => fail(&|| "no zone label".to_owned()),
            Some(zone) if !zones.contains(zone) => {
                fail(&|| format!("zone {zone} not in [{}]", zones.join(", ")))
            }
            Some(_) => true,
        };
        if !more {
            return false;
        }
    }

    let asked = &spec.resources;
    let free_cpu = (node.cpu - view.reserved_cpu).max(0.0);
    if (free_cpu + CPU_EPSILON < asked.cpu || asked.cpu.is_nan())
        && !fail(&|| format!("cpu {} free, {} asked", cores(free_cpu), cores(asked.cpu)))
    {
        return false;
    }

    let free_memory = (node.memory_bytes / MIB).saturating_sub(view.reserved_memory_mib);
    if free_memory < asked.memory
        && !fail(&|| format!("memory {free_memory} MiB free, {} MiB asked", asked.memory))
    {
        return false;
    }

    let best = match (spec.disk_class.as_deref(), disk_class_for(spec, view)) {
        (Some(class), None) => {
            fail(&|| format!("no disk of class {class}"));
            return false;
        }
        (_, best) => best,
    };
    match best {
        None => {
            fail(&|| "no disk".to_owned());
        }
        Some((class, free)) if free < asked.disk => {
            fail(&|| format!("disk ({class}) {free} MiB free, {} MiB asked", asked.disk));
        }
        Some(_) => {}
    }
    fits
}

/// The disk class a member of `spec` gets on this node, with its free MiB: the requested
/// class, or, when none is requested, the class with the most free space (ties to the first
/// by name). None when the node has no disk of a requested class, or no disk at all. The
/// choice is recorded on the member ([`MemberRecord::disk_class`]): reservations and the agent
/// follow it.
pub fn disk_class_for<'a>(spec: &InstanceSpec, view: &NodeView<'a>) -> Option<(&'a str, u64)> {
    let node = view.node;
    let free_disk = |class: &str| {
        let bytes = node
            .disks
            .iter()
            .filter(|d| d.class == class)
            .fold(0u64, |sum, d| sum.saturating_add(d.capacity_bytes));
        let reserved = view.reserved_disk_mib.get(class).copied().unwrap_or(0);
        (bytes / MIB).saturating_sub(reserved)
    };
    match spec.disk_class.as_deref() {
        Some(class) => node
            .disks
            .iter()
            .find(|d| d.class == class)
            .map(|d| (d.class.as_str(), free_disk(class))),
        None => node
            .disks
            .iter()
            .map(|d| (d.class.as_str(), free_disk(&d.class)))
            .fold(
                None,
                |best: Option<(&str, u64)>, (class, free)| match best {
                    Some((most_class, most))
                        if most > free || (most == free && most_class <= class) =>
                    {
                        best
                    }
                    _ => Some((class, free)),
                },
            ),
    }
}

/// Cores rounded to thousandths, so reasons read `0.1`, not `0.09999999999999998`.
fn cores(cpu: f64) -> f64 {
    (cpu * 1000.0).round() / 1000.0
}

/// Orders candidates best first under `strategy`.
fn by_score(strategy: Strategy, a: &Candidate<'_>, b: &Candidate<'_>) -> Ordering {
    match strategy {
        Strategy::Spread => free_fraction(b, a)
            .then(a.members.cmp(&b.members))
            .then(a.name.cmp(b.name)),
        // Exactly spread's order reversed (fullest first, then more members, then the later
        // name), so that one `Ranking` serves both strategies.
        Strategy::Binpack => free_fraction(a, b)
            .then(b.members.cmp(&a.members))
            .then(b.name.cmp(a.name)),
    }
}

/// Compares the free memory fractions of `a` and `b` exactly, by cross-multiplying instead of
/// dividing floats. A node offering no memory counts as fully used.
fn free_fraction(a: &Candidate<'_>, b: &Candidate<'_>) -> Ordering {
    let (a_free, a_total) = fraction(a);
    let (b_free, b_total) = fraction(b);
    (a_free * b_total).cmp(&(b_free * a_total))
}

fn fraction(c: &Candidate<'_>) -> (u128, u128) {
    if c.memory_mib == 0 {
        (0, 1)
    } else {
        (u128::from(c.free_memory_mib), u128::from(c.memory_mib))
    }
}

fn cmp_fraction((a_free, a_total): (u128, u128), (b_free, b_total): (u128, u128)) -> Ordering {
    (a_free * b_total).cmp(&(b_free * a_total))
}

/// Where a node stands in the ranking.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RankKey {
    free_mib: u64,
    total_mib: u64,
    members: u32,
    name: String,
}

impl RankKey {
    fn fraction(&self) -> (u128, u128) {
        if self.total_mib == 0 {
            (0, 1)
        } else {
            (u128::from(self.free_mib), u128::from(self.total_mib))
        }
    }
}

impl Ord for RankKey {
    /// `spread`'s order, best first: most free memory fraction, fewest members, name.
    fn cmp(&self, other: &Self) -> Ordering {
        cmp_fraction(other.fraction(), self.fraction())
            .then(self.members.cmp(&other.members))
            .then_with(|| self.name.cmp(&other.name))
    }
}

impl PartialOrd for RankKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Every node ordered by `spread`'s score (most free memory fraction first), kept up to date
/// as reservations change, so that a placement walks a few nodes from the top instead of all
/// of them ([`place_ranked`]). `binpack` walks it from the bottom.
#[derive(Debug, Default)]
pub struct Ranking {
    order: BTreeSet<RankKey>,
    keys: std::collections::HashMap<String, RankKey>,
}

impl Ranking {
    /// Sets a node's place: `memory_bytes` it offers, `reserved_memory_mib` and `members`
    /// already placed on it.
    pub fn update(
        &mut self,
        name: &str,
        memory_bytes: u64,
        reserved_memory_mib: u64,
        members: u32,
    ) {
        let total_mib = memory_bytes / MIB;
        let key = RankKey {
            free_mib: total_mib.saturating_sub(reserved_memory_mib),
            total_mib,
            members,
            name: name.to_owned(),
        };
        if self.keys.get(name) == Some(&key) {
            return;
        }
        if let Some(old) = self.keys.insert(name.to_owned(), key.clone()) {
            self.order.remove(&old);
        }
        self.order.insert(key);
    }

    /// Forgets a node.
    pub fn remove(&mut self, name: &str) {
        if let Some(old) = self.keys.remove(name) {
            self.order.remove(&old);
        }
    }

    /// Node names, best first for `strategy` (the order of `by_score`).
    pub fn names(&self, strategy: Strategy) -> Box<dyn Iterator<Item = &str> + '_> {
        match strategy {
            Strategy::Spread => Box::new(self.order.iter().map(|k| k.name.as_str())),
            Strategy::Binpack => Box::new(self.order.iter().rev().map(|k| k.name.as_str())),
        }
    }

    /// Number of nodes ranked.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no node is ranked.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DiskInfo, PlacementSpec, Resources};
    use mofang_common::EngineKind;

    const GIB: u64 = 1024 * MIB;

    fn node(name: &str, zone: Option<&str>) -> Node {
        Node {
            name: name.to_owned(),
            address: format!("10.0.0.{}", name.len()),
            labels: zone
                .map(|z| BTreeMap::from([(ZONE_LABEL.to_owned(), z.to_owned())]))
                .unwrap_or_default(),
            cpu: 8.0,
            memory_bytes: 16 * GIB,
            disks: vec![DiskInfo {
                path: "/data".to_owned(),
                class: "ssd".to_owned(),
                capacity_bytes: 100 * GIB,
                free_bytes: 100 * GIB,
            }],
            admin: NodeAdmin::Active,
            agent_version: "0.1.0".to_owned(),
            registered_at_ms: 0,
            http_address: String::new(),
        }
    }

    fn view(node: &Node) -> NodeView<'_> {
        NodeView {
            node,
            state: NodeState::Ready,
            reserved_cpu: 0.0,
            reserved_memory_mib: 0,
            reserved_disk_mib: std::borrow::Cow::Owned(BTreeMap::new()),
            primaries: 0,
            members: 0,
        }
    }

    fn spec(replicas: u32) -> InstanceSpec {
        InstanceSpec {
            name: "db".to_owned(),
            engine: EngineKind::Mariadb,
            version: "10.11".to_owned(),
            replicas,
            resources: Resources {
                cpu: 1.0,
                memory: 1024,
                disk: 1024,
            },
            disk_class: None,
            placement: None,
            labels: Default::default(),
            restore: None,
            tls: Default::default(),
            backup: None,
        }
    }

    fn with_strategy(mut spec: InstanceSpec, strategy: Strategy) -> InstanceSpec {
        spec.placement = Some(PlacementSpec {
            zones: None,
            spread: Some(strategy),
        });
        spec
    }

    fn nodes_of(placed: &Placed) -> Vec<&str> {
        placed.members.iter().map(|m| m.node.as_str()).collect()
    }

    fn reasons_of(err: Error) -> Vec<String> {
        let Error::Unplaceable { reasons, .. } = err;
        reasons
    }

    #[test]
    fn three_nodes_in_three_zones_get_one_member_each() {
        let nodes = [
            node("node-a", Some("z1")),
            node("node-b", Some("z2")),
            node("node-c", Some("z3")),
        ];
        let views: Vec<_> = nodes.iter().map(view).collect();
        let placed = place(&spec(2), &views).unwrap();

        assert_eq!(placed.members.len(), 3);
        let ids: Vec<_> = placed.members.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["db-0", "db-1", "db-2"]);
        let roles: Vec<_> = placed.members.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::Primary, Role::Replica, Role::Replica]);
        let on: BTreeSet<_> = nodes_of(&placed).into_iter().collect();
        assert_eq!(on, BTreeSet::from(["node-a", "node-b", "node-c"]));
    }

    #[test]
    fn too_few_nodes_is_unplaceable_with_each_reason() {
        let nodes = [
            node("node-a", Some("z1")),
            node("node-b", Some("z2")),
            node("node-c", Some("z3")),
        ];
        let mut views: Vec<_> = nodes.iter().map(view).collect();
        views[1].reserved_memory_mib = 16 * 1024 - 512;
        views[2].reserved_cpu = 7.5;

        let err = place(&spec(2), &views).unwrap_err();
        assert_eq!(
            err,
            Error::Unplaceable {
                instance: "db".to_owned(),
                wanted: 3,
                fit: 1,
                reasons: vec![
                    "node-b: memory 512 MiB free, 1024 MiB asked".to_owned(),
                    "node-c: cpu 0.5 free, 1 asked".to_owned(),
                ],
            }
        );
        assert_eq!(
            err.to_string(),
            "cannot place 3 members of db: 1 nodes fit; \
             node-b: memory 512 MiB free, 1024 MiB asked; node-c: cpu 0.5 free, 1 asked"
        );
    }

    #[test]
    fn an_error_names_ten_reasons_and_counts_the_rest() {
        let err = Error::Unplaceable {
            instance: "db".to_owned(),
            wanted: 1,
            fit: 0,
            reasons: (0..1000).map(|i| format!("node-{i:04}: down")).collect(),
        };
        let text = err.to_string();
        assert!(
            text.starts_with("cannot place 1 members of db: 0 nodes fit; node-0000: down; "),
            "{text}"
        );
        assert!(text.ends_with("node-0009: down; and 990 more"), "{text}");
        assert!(text.len() < 300, "{} bytes", text.len());
    }

    #[test]
    fn more_members_than_nodes_is_unplaceable() {
        let nodes = [node("node-a", Some("z1")), node("node-b", Some("z1"))];
        let views: Vec<_> = nodes.iter().map(view).collect();
        let err = place(&spec(2), &views).unwrap_err();
        assert!(matches!(
            err,
            Error::Unplaceable {
                wanted: 3,
                fit: 2,
                ..
            }
        ));
    }

    #[test]
    fn down_cordoned_and_draining_nodes_are_excluded() {
        let mut nodes = [
            node("node-a", Some("z1")),
            node("node-b", Some("z1")),
            node("node-c", Some("z1")),
            node("node-d", Some("z1")),
            node("node-e", Some("z1")),
            node("node-f", Some("z1")),
        ];
        // Admin set but the state not yet refreshed: still not schedulable.
        nodes[3].admin = NodeAdmin::Cordoned;
        nodes[4].admin = NodeAdmin::Draining;
        let mut views: Vec<_> = nodes.iter().map(view).collect();
        views[0].state = NodeState::Down;
        views[1].state = NodeState::Cordoned;
        views[2].state = NodeState::Draining;

        let placed = place(&spec(0), &views).unwrap();
        assert_eq!(nodes_of(&placed), ["node-f"]);

        let reasons = reasons_of(place(&spec(1), &views).unwrap_err());
        assert_eq!(
            reasons,
            [
                "node-a: down",
                "node-b: cordoned",
                "node-c: draining",
                "node-d: cordoned",
                "node-e: draining",
            ]
        );
    }

    #[test]
    fn zones_constraint_limits_the_nodes() {
        let nodes = [
            node("node-a", Some("a")),
            node("node-b", Some("b")),
            node("node-c", Some("eu-1")),
            node("node-d", None),
        ];
        let views: Vec<_> = nodes.iter().map(view).collect();
        let mut wanted = spec(1);
        wanted.placement = Some(PlacementSpec {
            zones: Some(vec!["a".to_owned(), "b".to_owned()]),
            spread: None,
        });

        let placed = place(&wanted, &views).unwrap();
        let on: BTreeSet<_> = nodes_of(&placed).into_iter().collect();
        assert_eq!(on, BTreeSet::from(["node-a", "node-b"]));

        wanted.replicas = 2;
        let reasons = reasons_of(place(&wanted, &views).unwrap_err());
        assert_eq!(
            reasons,
            ["node-c: zone eu-1 not in [a, b]", "node-d: no zone label"]
        );
    }

    #[test]
    fn disk_class_is_honoured() {
        let mut nodes = [
            node("node-a", Some("z1")),
            node("node-b", Some("z2")),
            node("node-c", Some("z3")),
        ];
        // node-b: two hdd disks whose sum fits, though neither does alone.
        nodes[1].disks = vec![
            DiskInfo {
                path: "/hdd1".to_owned(),
                class: "hdd".to_owned(),
                capacity_bytes: 600 * MIB,
                free_bytes: 600 * MIB,
            },
            DiskInfo {
                path: "/hdd2".to_owned(),
                class: "hdd".to_owned(),
                capacity_bytes: 600 * MIB,
                free_bytes: 600 * MIB,
            },
        ];
        nodes[2].disks[0].class = "hdd".to_owned();
        let mut views: Vec<_> = nodes.iter().map(view).collect();
        views[2]
            .reserved_disk_mib
            .to_mut()
            .insert("hdd".to_owned(), 100 * 1024 - 100);

        let mut wanted = spec(0);
        wanted.disk_class = Some("hdd".to_owned());
        let placed = place(&wanted, &views).unwrap();
        assert_eq!(nodes_of(&placed), ["node-b"]);

        wanted.replicas = 1;
        let reasons = reasons_of(place(&wanted, &views).unwrap_err());
        assert_eq!(
            reasons,
            [
                "node-a: no disk of class hdd",
                "node-c: disk (hdd) 100 MiB free, 1024 MiB asked",
            ]
        );
    }

    #[test]
    fn any_disk_class_uses_the_class_with_most_free() {
        let mut nodes = [node("node-a", Some("z1")), node("node-b", Some("z2"))];
        nodes[0].disks.push(DiskInfo {
            path: "/hdd".to_owned(),
            class: "hdd".to_owned(),
            capacity_bytes: 2 * GIB,
            free_bytes: 2 * GIB,
        });
        nodes[1].disks.clear();
        let mut views: Vec<_> = nodes.iter().map(view).collect();
        // ssd full, hdd has room: node-a still fits.
        views[0]
            .reserved_disk_mib
            .to_mut()
            .insert("ssd".to_owned(), 100 * 1024);

        let placed = place(&spec(0), &views).unwrap();
        assert_eq!(nodes_of(&placed), ["node-a"]);

        views[0]
            .reserved_disk_mib
            .to_mut()
            .insert("hdd".to_owned(), 1948);
        let reasons = reasons_of(place(&spec(0), &views).unwrap_err());
        assert_eq!(
            reasons,
            [
                "node-a: disk (hdd) 100 MiB free, 1024 MiB asked",
                "node-b: no disk",
            ]
        );
    }

    #[test]
    fn spread_takes_the_emptiest_and_binpack_the_fullest_that_fits() {
        let nodes = [
            node("node-a", Some("z1")),
            node("node-b", Some("z1")),
            node("node-c", Some("z1")),
            node("node-d", Some("z1")),
        ];
        let mut views: Vec<_> = nodes.iter().map(view).collect();
        views[0].reserved_memory_mib = 4 * 1024;
        views[1].reserved_memory_mib = 1024;
        views[2].reserved_memory_mib = 14 * 1024;
        // Fullest of all, but 512 MiB free does not fit.
        views[3].reserved_memory_mib = 16 * 1024 - 512;

        let spread = place(&spec(0), &views).unwrap();
        assert_eq!(nodes_of(&spread), ["node-b"]);
        let explicit = place(&with_strategy(spec(0), Strategy::Spread), &views).unwrap();
        assert_eq!(explicit, spread);

        let binpack = place(&with_strategy(spec(0), Strategy::Binpack), &views).unwrap();
        assert_eq!(nodes_of(&binpack), ["node-c"]);
    }

    #[test]
    fn spread_compares_fractions_not_mebibytes() {
        let mut nodes = [node("big", Some("z1")), node("small", Some("z1"))];
        nodes[0].memory_bytes = 64 * GIB;
        let mut views: Vec<_> = nodes.iter().map(view).collect();
        // big: 16 GiB free of 64 (25%); small: 8 GiB free of 16 (50%).
        views[0].reserved_memory_mib = 48 * 1024;
        views[1].reserved_memory_mib = 8 * 1024;

        let placed = place(&spec(0), &views).unwrap();
        assert_eq!(nodes_of(&placed), ["small"]);
    }

    #[test]
    fn spread_ties_go_to_fewer_members_then_name() {
        let nodes = [
            node("node-c", Some("z1")),
            node("node-b", Some("z1")),
            node("node-a", Some("z1")),
        ];
        let mut views: Vec<_> = nodes.iter().map(view).collect();
        views[2].members = 3;

        let placed = place(&spec(1), &views).unwrap();
        assert_eq!(nodes_of(&placed), ["node-b", "node-c"]);
    }

    #[test]
    fn primary_goes_to_the_node_with_fewest_primaries() {
        let nodes = [
            node("node-a", Some("z1")),
            node("node-b", Some("z2")),
            node("node-c", Some("z3")),
        ];
        let mut views: Vec<_> = nodes.iter().map(view).collect();
        views[0].primaries = 2;
        views[1].primaries = 0;
        views[2].primaries = 1;
        // Make node-a the best-scored, so it would get the primary without balancing.
        views[1].reserved_memory_mib = 2048;
        views[2].reserved_memory_mib = 1024;

        let placed = place(&spec(2), &views).unwrap();
        assert_eq!(placed.members[0].node, "node-b");
        assert_eq!(placed.members[0].role, Role::Primary);
        assert_eq!(placed.members[0].id, "db-0");
        assert_eq!(nodes_of(&placed)[1..], ["node-a", "node-c"]);

        // Ties on primaries: the best-scored node wins.
        views[1].primaries = 2;
        views[2].primaries = 2;
        let placed = place(&spec(2), &views).unwrap();
        assert_eq!(placed.members[0].node, "node-a");
    }

    #[test]
    fn two_members_on_four_nodes_in_two_zones_use_both_zones() {
        let nodes = [
            node("node-a", Some("z1")),
            node("node-b", Some("z1")),
            node("node-c", Some("z2")),
            node("node-d", Some("z2")),
        ];
        let mut views: Vec<_> = nodes.iter().map(view).collect();
        // Scoring alone would pick node-a and node-b, both in z1.
        views[2].reserved_memory_mib = 4096;
        views[3].reserved_memory_mib = 8192;

        for strategy in [Strategy::Spread, Strategy::Binpack] {
            let placed = place(&with_strategy(spec(1), strategy), &views).unwrap();
            let zones: BTreeSet<_> = placed
                .members
                .iter()
                .map(|m| {
                    nodes
                        .iter()
                        .find(|n| n.name == m.node)
                        .and_then(|n| n.labels.get(ZONE_LABEL))
                        .unwrap()
                        .as_str()
                })
                .collect();
            assert_eq!(zones, BTreeSet::from(["z1", "z2"]), "{strategy:?}");
        }
        let placed = place(&spec(1), &views).unwrap();
        assert_eq!(nodes_of(&placed), ["node-a", "node-c"]);
    }

    #[test]
    fn same_input_gives_same_output_whatever_the_order() {
        let nodes: Vec<_> = (0..12)
            .map(|i| node(&format!("node-{i:02}"), Some(["z1", "z2", "z3"][i % 3])))
            .collect();
        let mut views: Vec<_> = nodes.iter().map(view).collect();
        // Several exact ties on score, broken by name.
        for (i, v) in views.iter_mut().enumerate() {
            v.reserved_memory_mib = (i as u64 % 4) * 1024;
            v.primaries = i as u32 % 2;
        }
        let wanted = spec(4);
        let first = place(&wanted, &views).unwrap();
        assert_eq!(place(&wanted, &views).unwrap(), first);

        views.reverse();
        assert_eq!(place(&wanted, &views).unwrap(), first);
        views.rotate_left(5);
        assert_eq!(place(&wanted, &views).unwrap(), first);
    }

    #[test]
    fn a_thousand_nodes_are_placed() {
        let nodes: Vec<_> = (0..1000)
            .map(|i| {
                node(
                    &format!("node-{i:04}"),
                    Some(["z1", "z2", "z3", "z4"][i % 4]),
                )
            })
            .collect();
        let mut views: Vec<_> = nodes.iter().map(view).collect();
        for (i, v) in views.iter_mut().enumerate() {
            v.reserved_memory_mib = (i as u64 * 7) % (16 * 1024);
        }
        let placed = place(&spec(8), &views).unwrap();
        assert_eq!(placed.members.len(), 9);
        let distinct: BTreeSet<_> = nodes_of(&placed).into_iter().collect();
        assert_eq!(distinct.len(), 9);
    }

    #[test]
    fn fractional_cpu_fits_despite_float_rounding() {
        let mut nodes = [node("node-a", Some("z1"))];
        nodes[0].cpu = 0.3;
        let mut views: Vec<_> = nodes.iter().map(view).collect();
        views[0].reserved_cpu = 0.2;
        let mut wanted = spec(0);
        wanted.resources.cpu = 0.1;
        assert!(place(&wanted, &views).is_ok());

        wanted.resources.cpu = 0.2;
        let reasons = reasons_of(place(&wanted, &views).unwrap_err());
        assert_eq!(reasons, ["node-a: cpu 0.1 free, 0.2 asked"]);
    }

    /// The reference: rank every candidate with a full sort, then the same greedy pick.
    fn place_by_full_sort(spec: &InstanceSpec, nodes: &[NodeView<'_>]) -> Option<Vec<String>> {
        let wanted = spec.replicas as usize + 1;
        let strategy = spec
            .placement
            .as_ref()
            .and_then(|p| p.spread)
            .unwrap_or_default();
        let zones = spec
            .placement
            .as_ref()
            .and_then(|p| p.zones.as_deref())
            .filter(|z| !z.is_empty());
        let mut c: Vec<Candidate<'_>> = nodes
            .iter()
            .filter(|v| check(spec, zones, v, None))
            .map(|v| Candidate {
                name: &v.node.name,
                zone: v.node.labels.get(ZONE_LABEL).map(String::as_str),
                free_memory_mib: (v.node.memory_bytes / MIB).saturating_sub(v.reserved_memory_mib),
                memory_mib: v.node.memory_bytes / MIB,
                members: v.members,
                primaries: v.primaries,
                disk_class: disk_class_for(spec, v).map_or("", |(c, _)| c),
            })
            .collect();
        if c.len() < wanted {
            return None;
        }
        c.sort_by(|a, b| by_score(strategy, a, b));
        let mut taken = vec![false; c.len()];
        let mut used = BTreeSet::new();
        let mut chosen = Vec::new();
        for _ in 0..wanted {
            let free = (0..c.len()).find(|&r| !taken[r]).unwrap();
            let rank = (0..c.len())
                .find(|&r| !taken[r] && !used.contains(&c[r].zone))
                .unwrap_or(free);
            taken[rank] = true;
            used.insert(c[rank].zone);
            chosen.push(rank);
        }
        let pos = (0..chosen.len())
            .min_by_key(|&p| (c[chosen[p]].primaries, chosen[p]))
            .unwrap();
        let primary = chosen.remove(pos);
        chosen.insert(0, primary);
        Some(chosen.iter().map(|&r| c[r].name.to_owned()).collect())
    }

    /// Up to `max_nodes` nodes in up to `max_zones - 1` zones (some without a zone label),
    /// with 4 .. 4 * (`max_memory` - 1) GiB of memory.
    fn random_nodes(
        rng: &mut rand::rngs::StdRng,
        max_nodes: usize,
        max_zones: u32,
        max_memory: u64,
    ) -> Vec<Node> {
        use rand::Rng;
        let zone_count = rng.random_range(1..max_zones);
        (0..rng.random_range(1..max_nodes))
            .map(|i| {
                let zone = rng.random_range(0..=zone_count);
                let zone = (zone < zone_count).then(|| format!("z{zone}"));
                let mut node = node(&format!("node-{i:03}"), zone.as_deref());
                node.memory_bytes = rng.random_range(1..max_memory) * 4 * GIB;
                node
            })
            .collect()
    }

    /// Views with random reservations (some too full for a 1-core member), member and
    /// primary counts, and one node in ten down.
    fn random_views<'a>(rng: &mut rand::rngs::StdRng, nodes: &'a [Node]) -> Vec<NodeView<'a>> {
        use rand::Rng;
        nodes
            .iter()
            .map(|nd| {
                let mut v = view(nd);
                v.reserved_memory_mib = rng.random_range(0..4u64) * 2048;
                v.reserved_cpu = if rng.random_ratio(1, 5) { 7.5 } else { 0.0 };
                v.members = rng.random_range(0..4);
                v.primaries = rng.random_range(0..3);
                if rng.random_ratio(1, 10) {
                    v.state = NodeState::Down;
                }
                v
            })
            .collect()
    }

    #[test]
    fn ranking_only_the_finalists_gives_the_full_sorts_answer() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        for round in 0..300 {
            let nodes = random_nodes(&mut rng, 60, 6, 8);
            let views = random_views(&mut rng, &nodes);
            let strategy = if round % 2 == 0 {
                Strategy::Spread
            } else {
                Strategy::Binpack
            };
            let wanted = with_strategy(spec(rng.random_range(0..5)), strategy);
            let fast = place(&wanted, &views)
                .ok()
                .map(|p| p.members.into_iter().map(|m| m.node).collect::<Vec<_>>());
            assert_eq!(fast, place_by_full_sort(&wanted, &views), "round {round}");
        }
    }

    #[test]
    fn walking_the_ranking_gives_the_same_answer_as_every_node() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut walked_less = 0;
        for round in 0..400 {
            let nodes = random_nodes(&mut rng, 80, 5, 5);
            let n = nodes.len();
            let views = random_views(&mut rng, &nodes);
            let mut ranking = Ranking::default();
            for v in &views {
                ranking.update(
                    &v.node.name,
                    v.node.memory_bytes,
                    v.reserved_memory_mib,
                    v.members,
                );
            }
            let zones_total = nodes
                .iter()
                .map(|n| n.labels.get(ZONE_LABEL))
                .collect::<BTreeSet<_>>()
                .len();
            let strategy = if round % 2 == 0 {
                Strategy::Spread
            } else {
                Strategy::Binpack
            };
            let mut wanted = with_strategy(spec(rng.random_range(0..4)), strategy);
            if round % 7 == 0 {
                wanted.placement.as_mut().unwrap().zones = Some(vec!["z0".into(), "z1".into()]);
            }
            let by_name: BTreeMap<&str, &NodeView<'_>> =
                views.iter().map(|v| (v.node.name.as_str(), v)).collect();
            let seen = std::cell::Cell::new(0);
            let ranked = ranking.names(strategy).map(|name| {
                seen.set(seen.get() + 1);
                by_name[name].clone()
            });
            let walked = place_ranked(&wanted, ranked, zones_total);
            if seen.get() < n {
                walked_less += 1;
            }
            let full = place(&wanted, &views).ok();
            assert_eq!(walked, full, "round {round}");
        }
        // The point of the ranking: most placements stop early.
        assert!(
            walked_less > 200,
            "only {walked_less} of 400 placements stopped early"
        );
    }

    #[test]
    fn the_ranking_follows_updates() {
        let mut ranking = Ranking::default();
        ranking.update("a", 16 * GIB, 0, 0);
        ranking.update("b", 16 * GIB, 8192, 1);
        ranking.update("c", 32 * GIB, 8192, 1);
        let order = |r: &Ranking, s| r.names(s).map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(order(&ranking, Strategy::Spread), ["a", "c", "b"]);
        assert_eq!(order(&ranking, Strategy::Binpack), ["b", "c", "a"]);
        ranking.update("a", 16 * GIB, 12288, 2);
        assert_eq!(order(&ranking, Strategy::Spread), ["c", "b", "a"]);
        ranking.remove("c");
        assert_eq!(order(&ranking, Strategy::Spread), ["b", "a"]);
        assert_eq!(ranking.len(), 2);
    }
}

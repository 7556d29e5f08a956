//! The books: what placed members reserve on each node (CPU, memory, disk per class,
//! member and primary counts) and the placement ranking kept in step with them. Placement
//! itself is pure ([`crate::placement`]); here it meets the reservations.

use super::observed::state_of;
use super::{Cluster, Error, Inner, Result};
use crate::model::{Instance, InstanceSpec, MemberRecord, Node};
use crate::placement::{self, NodeView};
use mofang_common::Role;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// Resources reserved on a node by placed members.
#[derive(Debug, Clone, Default)]
pub(super) struct Reserved {
    pub(super) cpu: f64,
    pub(super) memory_mib: u64,
    pub(super) disk_mib: BTreeMap<String, u64>,
    pub(super) primaries: u32,
    pub(super) members: u32,
    pub(super) instances: BTreeSet<String>,
}

impl Inner {
    /// Puts a node back in its place in the ranking after its record or reservations changed.
    pub(super) fn rerank(&mut self, name: &str) {
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
    pub(super) fn put_node(&mut self, node: Node) {
        let name = node.name.clone();
        self.nodes.insert(name.clone(), node);
        self.rerank(&name);
        self.count_zones();
    }

    /// Rebuilds the ranking and the zone count from `nodes` and `reserved`.
    pub(super) fn rerank_all(&mut self) {
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

impl Cluster {
    /// Every node as placement sees it: merge join over the maps sorted by node name.
    pub(super) fn node_views<'a>(&self, inner: &'a Inner) -> Vec<NodeView<'a>> {
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
    pub(super) fn place(
        &self,
        inner: &Inner,
        spec: &InstanceSpec,
    ) -> placement::Result<placement::Placed> {
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
}

impl Cluster {
    /// Places a new instance: [`Cluster::place`], except that while this scheduler warms
    /// up as a new leader (decision 134) a refusal that counting the nodes it has not heard
    /// from yet as up would lift is [`Error::WarmingUp`] ("retry shortly"), not a 409: their
    /// agents may not have found the new leader yet.
    pub(super) fn place_new(
        &self,
        inner: &Inner,
        spec: &InstanceSpec,
    ) -> Result<placement::Placed> {
        let refused = match self.place(inner, spec) {
            Ok(placed) => return Ok(placed),
            Err(e) => e,
        };
        let Some(left) = self.warming_up(Instant::now()) else {
            return Err(refused.into());
        };
        let mut views = self.node_views(inner);
        let mut unheard = Vec::new();
        for v in &mut views {
            if !inner.live.contains_key(&v.node.name) {
                v.state = state_of(true, v.node.admin);
                unheard.push(v.node.name.clone());
            }
        }
        if unheard.is_empty() || placement::place(spec, &views).is_err() {
            return Err(refused.into());
        }
        Err(Error::WarmingUp {
            unheard,
            retry_after: left,
        })
    }
}

/// Adds (or removes) an instance's reservations.
pub(super) fn reserve(inner: &mut Inner, i: &Instance, add: bool) {
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
pub(super) fn disk_class_of(
    nodes: &BTreeMap<String, Node>,
    i: &Instance,
    m: &MemberRecord,
) -> String {
    if !m.disk_class.is_empty() {
        return m.disk_class.clone();
    }
    i.spec
        .disk_class
        .clone()
        .or_else(|| Some(nodes.get(&m.node)?.disks.first()?.class.clone()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::super::lock;
    use super::super::testkit::{cluster, cluster_on, node, spec, three_ssd_nodes};
    use super::*;
    use crate::store::{sqlite::SqliteStore, Store};
    use mofang_common::proto::HeartbeatRequest;
    use std::sync::Arc;
    use std::time::Duration;

    /// A scheduler that begins to lead on `store` (whose nodes another one registered), with
    /// `node_ttl`, before any agent has reached it.
    async fn new_leader(store: Arc<dyn Store>, node_ttl: Duration) -> Arc<Cluster> {
        let c = Cluster::load(store, node_ttl).await.expect("load");
        c.activate().await.expect("activate");
        c
    }

    fn memory_store() -> Arc<dyn Store> {
        Arc::new(SqliteStore::open_in_memory().expect("in-memory store"))
    }

    /// Issue 15 rough edge (decision 134): right after a leader change every node looked down
    /// to the new leader until its agent heartbeated it, so a create was refused 409
    /// `unplaceable`. Now, while the leader warms up (one node_ttl) and counting the nodes
    /// it has not heard from as up would place the instance, the answer is "retry" with how
    /// long; nothing is written; a placement no node could take stays a 409; once the agents
    /// are heard it places.
    #[tokio::test]
    async fn a_new_leader_asks_to_retry_a_create_until_it_has_heard_the_nodes() {
        let store = memory_store();
        drop(cluster_on(store.clone(), &three_ssd_nodes()).await);
        let c = new_leader(store.clone(), Duration::from_secs(30)).await;

        let e = c
            .create_instance(spec("db", 100, None))
            .await
            .expect_err("no node heard yet");
        match &e {
            Error::WarmingUp {
                unheard,
                retry_after,
            } => {
                assert_eq!(unheard, &["a", "b", "c"]);
                assert!(
                    *retry_after > Duration::from_secs(25)
                        && *retry_after <= Duration::from_secs(30),
                    "{retry_after:?}"
                );
            }
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("retry in 30s"), "{e}");
        assert!(
            store.instances().await.expect("instances").is_empty(),
            "nothing created"
        );

        // More disk than any node has: refused for what it is, warm-up or not.
        let e = c
            .create_instance(spec("huge", 5000, None))
            .await
            .expect_err("too big");
        assert!(matches!(e, Error::Unplaceable(_)), "{e}");

        // Two agents heard: a third node is still needed (three zones), still "retry".
        for n in ["a", "b"] {
            c.heartbeat(HeartbeatRequest {
                node: n.into(),
                ..Default::default()
            });
        }
        let e = c
            .create_instance(spec("db", 100, None))
            .await
            .expect_err("c not heard");
        assert!(
            matches!(&e, Error::WarmingUp { unheard, .. } if unheard == &["c"]),
            "{e}"
        );
        c.heartbeat(HeartbeatRequest {
            node: "c".into(),
            ..Default::default()
        });
        c.create_instance(spec("db", 100, None))
            .await
            .expect("placed once every agent is heard");
    }

    /// After one node_ttl of leading, a node never heard from is down like any silent one:
    /// the create is refused 409 `unplaceable`, as before.
    #[tokio::test]
    async fn after_the_warm_up_a_node_never_heard_is_down() {
        let store = memory_store();
        drop(cluster_on(store.clone(), &three_ssd_nodes()).await);
        let c = new_leader(store, Duration::from_millis(50)).await;
        tokio::time::sleep(Duration::from_millis(80)).await;
        let e = c
            .create_instance(spec("db", 100, None))
            .await
            .expect_err("every node down");
        assert!(matches!(e, Error::Unplaceable(_)), "{e}");
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
        let ds = c.watch("a").current();
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

    /// One node's books as figures: (cpu, memory MiB, disk MiB per class, members,
    /// primaries, instances). A class booked down to zero counts as not booked.
    type Figures = (f64, u64, BTreeMap<String, u64>, u32, u32, BTreeSet<String>);

    fn figures(c: &Cluster) -> BTreeMap<String, Figures> {
        lock(&c.inner)
            .reserved
            .iter()
            .map(|(n, r)| {
                let disk = r
                    .disk_mib
                    .iter()
                    .filter(|(_, mib)| **mib > 0)
                    .map(|(class, mib)| (class.clone(), *mib))
                    .collect();
                let f = (
                    r.cpu,
                    r.memory_mib,
                    disk,
                    r.members,
                    r.primaries,
                    r.instances.clone(),
                );
                (n.clone(), f)
            })
            .filter(|(_, f)| *f != Figures::default())
            .collect()
    }

    /// Deleting an instance gives back exactly what it booked, member by member, under the
    /// disk class each member's volume is on, and leaves other instances' bookings alone.
    #[tokio::test]
    async fn deleting_an_instance_gives_back_exactly_what_it_booked_per_class() {
        let c = cluster(&[
            node("a", &[("hdd", 1000)]),
            node("b", &[("ssd", 1000)]),
            node("c", &[("hdd", 100), ("ssd", 2000)]),
            node("d", &[("hdd", 3000), ("ssd", 3000)]),
        ])
        .await;
        let mut small = spec("small", 100, None);
        small.replicas = 1;
        c.create_instance(small).await.expect("small fits");
        let before = figures(&c);

        let mut big = spec("big", 700, None);
        big.resources.cpu = 1.5;
        big.resources.memory = 1024;
        let i = c.create_instance(big).await.expect("big fits");
        assert_eq!(i.members.len(), 3);
        let during = figures(&c);
        for m in &i.members {
            let was = before.get(&m.node).cloned().unwrap_or_default();
            let now = &during[&m.node];
            assert_eq!(now.0, was.0 + 1.5, "cpu on {}", m.node);
            assert_eq!(now.1, was.1 + 1024, "memory on {}", m.node);
            let was_disk = was.2.get(&m.disk_class).copied().unwrap_or(0);
            assert_eq!(
                now.2.get(&m.disk_class),
                Some(&(was_disk + 700)),
                "{} on {}",
                m.disk_class,
                m.node
            );
            assert_eq!(now.3, was.3 + 1, "members on {}", m.node);
            assert!(now.5.contains("big"));
        }
        let primaries = |f: &BTreeMap<String, Figures>| f.values().map(|f| f.4).sum::<u32>();
        assert_eq!(primaries(&during), primaries(&before) + 1);

        c.delete_instance("big").await.expect("delete");
        assert_eq!(figures(&c), before, "every node as it was before `big`");
        assert!(c.instance("small").is_some(), "the other instance stays");
    }
}

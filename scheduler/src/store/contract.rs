//! The [`Store`] contract: what every backend must do, as test functions over a
//! [`Backend`] that opens stores. Run as unit tests on SQLite (in memory and on files) and on
//! the key/value core over an in-memory [`super::kv::Kv`], and in `tests/tests/store_backends.rs`
//! on real Consul and etcd: the same functions everywhere.
//!
//! Built for the crate's own tests and, with the `store-contract` feature, for `tests/`.

use super::{Error as StoreError, Store};
use crate::model::{
    AuditEntry, Credentials, Event, Instance, InstanceSpec, MemberRecord, Node, NodeAdmin,
    Resources,
};
use anyhow::{bail, ensure, Context, Result};
use mofang_common::{EngineKind, Role};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Where the contract runs.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// The backend's name, for messages.
    fn name(&self) -> &str;
    /// A store on `space`: a new space gives an empty store, the same space a second view of
    /// the same state (a second scheduler on the same prefix, file or key space).
    async fn open(&self, space: &str) -> Result<Arc<dyn Store>>;
}

/// Runs every check of the contract on `b`; the first failure names its check.
pub async fn run(b: &dyn Backend) -> Result<()> {
    macro_rules! check {
        ($f:ident) => {
            $f(b)
                .await
                .with_context(|| format!("{}: {}", b.name(), stringify!($f)))?
        };
    }
    check!(create_get_list);
    check!(create_existing_name_fails_and_appends_nothing);
    check!(update_is_compare_and_set);
    check!(delete_is_compare_and_set);
    check!(events_filter_by_instance_and_since);
    check!(audit_append_and_list);
    check!(meta_get_and_put);
    check!(meta_by_prefix_and_delete);
    check!(nodes_keep_admin_and_first_registration);
    check!(concurrent_upserts_and_misses);
    check!(concurrent_creates_all_commit_with_dense_ids);
    check!(failed_requests_in_a_batch_fail_alone);
    check!(concurrent_updates_at_one_revision_one_wins);
    check!(ids_stay_ordered_across_chunks);
    check!(old_events_are_pruned_and_ids_go_on);
    check!(two_schedulers_on_one_prefix);
    Ok(())
}

// ---- Records ---------------------------------------------------------------------------------

/// A one-member MariaDB instance record.
pub fn instance(name: &str) -> Instance {
    let mut i = Instance::new(
        InstanceSpec {
            name: name.to_owned(),
            engine: EngineKind::Mariadb,
            version: "10.11".to_owned(),
            replicas: 1,
            resources: Resources {
                cpu: 1.0,
                memory: 1024,
                disk: 10240,
            },
            disk_class: None,
            placement: None,
            labels: Default::default(),
            restore: None,
            tls: Default::default(),
            backup: None,
        },
        vec![MemberRecord {
            id: format!("{name}-0"),
            node: "n1".to_owned(),
            role: Role::Primary,
            disk_class: "ssd".to_owned(),
        }],
        Credentials {
            admin: "a".to_owned(),
            repl: "r".to_owned(),
            monitor: "m".to_owned(),
            app: "p".to_owned(),
        },
    );
    i.created_at_ms = 1_700_000_000_000;
    i
}

/// An event of `kind`, about `instance` if given.
pub fn event(instance: Option<&str>, kind: &str) -> Event {
    Event {
        id: 0,
        at_ms: 1_700_000_000_000,
        instance: instance.map(str::to_owned),
        node: None,
        kind: kind.to_owned(),
        message: format!("{kind} happened"),
    }
}

/// A succeeded `restart` operation record of `instance` (stored as metadata
/// `operation/<id>`) that ended at `ended_ms`.
pub fn finished_operation(id: &str, instance: &str, ended_ms: i64) -> String {
    serde_json::json!({
        "id": id, "instance": instance, "type": "restart", "state": "succeeded",
        "created_ms": ended_ms - 60_000, "ended_ms": ended_ms, "timeout_ms": 600_000,
    })
    .to_string()
}

/// A node record, first registered at 1 ms.
pub fn node(name: &str) -> Node {
    Node {
        name: name.to_owned(),
        address: "10.0.0.1".to_owned(),
        labels: BTreeMap::from([("zone".to_owned(), "a".to_owned())]),
        cpu: 8.0,
        memory_bytes: 1 << 34,
        disks: Vec::new(),
        admin: NodeAdmin::Active,
        agent_version: "0.1.0".to_owned(),
        registered_at_ms: 1,
        http_address: String::new(),
    }
}

/// An audit entry for `action`.
pub fn audit_entry(action: &str) -> AuditEntry {
    AuditEntry {
        id: 0,
        at_ms: 1,
        who: "admin".to_owned(),
        source: "127.0.0.1".to_owned(),
        action: action.to_owned(),
        target: "db1".to_owned(),
        status: 201,
        result: "ok".to_owned(),
    }
}

fn kinds(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

/// A space no check used before in this process.
fn space() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("contract-{}/", NEXT.fetch_add(1, Ordering::Relaxed))
}

// ---- The checks ------------------------------------------------------------------------------

async fn create_get_list(b: &dyn Backend) -> Result<()> {
    let store = b.open(&space()).await?;
    let created = store
        .create_instance(&instance("db2"), &[event(Some("db2"), "instance_created")])
        .await?;
    ensure!(created.revision == 1, "revision {}", created.revision);
    store.create_instance(&instance("db1"), &[]).await?;
    ensure!(store.instance("db2").await? == Some(created));
    ensure!(store.instance("nope").await?.is_none());
    let names: Vec<_> = store
        .instances()
        .await?
        .into_iter()
        .map(|i| (i.spec.name, i.revision))
        .collect();
    ensure!(
        names == [("db1".to_owned(), 1), ("db2".to_owned(), 1)],
        "{names:?}"
    );
    let events = store.events(None, 0, 10).await?;
    ensure!(events.len() == 1 && events[0].id == 1, "{events:?}");
    ensure!(events[0].kind == "instance_created");
    Ok(())
}

async fn create_existing_name_fails_and_appends_nothing(b: &dyn Backend) -> Result<()> {
    let store = b.open(&space()).await?;
    store.create_instance(&instance("db1"), &[]).await?;
    let mut other = instance("db1");
    other.epoch = 7;
    match store
        .create_instance(&other, &[event(Some("db1"), "instance_created")])
        .await
    {
        Err(StoreError::AlreadyExists(n)) if n == "db1" => {}
        other => bail!("expected AlreadyExists, got {other:?}"),
    }
    ensure!(store.instance("db1").await?.map(|i| i.epoch) == Some(1));
    ensure!(store.events(None, 0, 10).await?.is_empty());
    Ok(())
}

async fn update_is_compare_and_set(b: &dyn Backend) -> Result<()> {
    let store = b.open(&space()).await?;
    let mut inst = store.create_instance(&instance("db1"), &[]).await?;
    inst.epoch = 2;
    let updated = store
        .update_instance(&inst, &[event(Some("db1"), "failover")])
        .await?;
    ensure!(updated.revision == 2 && updated.epoch == 2, "{updated:?}");
    ensure!(store.instance("db1").await? == Some(updated.clone()));

    // `inst` still carries revision 1: stale.
    inst.epoch = 3;
    match store
        .update_instance(&inst, &[event(Some("db1"), "failover")])
        .await
    {
        Err(StoreError::Conflict {
            name,
            expected: 1,
            actual: 2,
        }) if name == "db1" => {}
        other => bail!("expected a conflict, got {other:?}"),
    }
    ensure!(store.instance("db1").await? == Some(updated));
    ensure!(store.events(None, 0, 10).await?.len() == 1);
    match store.update_instance(&instance("ghost"), &[]).await {
        Err(StoreError::NotFound(n)) if n == "ghost" => {}
        other => bail!("expected NotFound, got {other:?}"),
    }
    Ok(())
}

async fn delete_is_compare_and_set(b: &dyn Backend) -> Result<()> {
    let store = b.open(&space()).await?;
    store.create_instance(&instance("db1"), &[]).await?;
    match store.delete_instance("db1", 5, &[]).await {
        Err(StoreError::Conflict {
            expected: 5,
            actual: 1,
            ..
        }) => {}
        other => bail!("expected a conflict, got {other:?}"),
    }
    ensure!(store.instance("db1").await?.is_some());
    store
        .delete_instance("db1", 1, &[event(Some("db1"), "instance_deleted")])
        .await?;
    ensure!(store.instance("db1").await?.is_none());
    match store.delete_instance("db1", 1, &[]).await {
        Err(StoreError::NotFound(_)) => {}
        other => bail!("expected NotFound, got {other:?}"),
    }
    ensure!(kinds(&store.events(Some("db1"), 0, 10).await?) == ["instance_deleted"]);
    // The name is free again.
    ensure!(store.create_instance(&instance("db1"), &[]).await?.revision == 1);
    Ok(())
}

async fn events_filter_by_instance_and_since(b: &dyn Backend) -> Result<()> {
    let store = b.open(&space()).await?;
    let stored = store
        .append_events(&[
            event(Some("a"), "e1"),
            event(Some("b"), "e2"),
            event(None, "e3"),
            event(Some("a"), "e4"),
            event(Some("a"), "e5"),
        ])
        .await?;
    let ids: Vec<_> = stored.iter().map(|e| e.id).collect();
    ensure!(ids == [1, 2, 3, 4, 5], "{ids:?}");
    ensure!(store.events(None, 0, 100).await? == stored);
    ensure!(kinds(&store.events(None, 2, 100).await?) == ["e3", "e4", "e5"]);
    ensure!(kinds(&store.events(None, 0, 2).await?) == ["e1", "e2"]);
    ensure!(kinds(&store.events(Some("a"), 0, 100).await?) == ["e1", "e4", "e5"]);
    ensure!(kinds(&store.events(Some("a"), 1, 1).await?) == ["e4"]);
    ensure!(store.events(Some("a"), 5, 100).await?.is_empty());
    ensure!(store.events(None, 0, 0).await?.is_empty());
    ensure!(store.events(None, u64::MAX, usize::MAX).await?.is_empty());
    // Backward: the newest `limit` below an id, oldest first.
    ensure!(store.events_before(None, 6, 100).await? == stored);
    ensure!(kinds(&store.events_before(None, 5, 2).await?) == ["e3", "e4"]);
    ensure!(kinds(&store.events_before(None, u64::MAX, 1).await?) == ["e5"]);
    ensure!(kinds(&store.events_before(Some("a"), 5, 100).await?) == ["e1", "e4"]);
    ensure!(kinds(&store.events_before(Some("a"), 4, 1).await?) == ["e1"]);
    ensure!(kinds(&store.events_before(Some("a"), u64::MAX, 2).await?) == ["e4", "e5"]);
    ensure!(store.events_before(Some("a"), 1, 100).await?.is_empty());
    ensure!(store
        .events_before(Some("zz"), u64::MAX, 100)
        .await?
        .is_empty());
    ensure!(store.events_before(None, 1, 100).await?.is_empty());
    ensure!(store.events_before(None, 0, 100).await?.is_empty());
    ensure!(store.events_before(None, 6, 0).await?.is_empty());
    let more = store.append_events(&[event(Some("b"), "e6")]).await?;
    ensure!(more[0].id == 6);
    Ok(())
}

async fn audit_append_and_list(b: &dyn Backend) -> Result<()> {
    let store = b.open(&space()).await?;
    let first = store
        .append_audit(&audit_entry("POST /v1/instances"))
        .await?;
    let second = store
        .append_audit(&audit_entry("DELETE /v1/instances/db1"))
        .await?;
    ensure!((first.id, second.id) == (1, 2));
    ensure!(store.audit(0, 10).await? == [first.clone(), second.clone()]);
    ensure!(store.audit(1, 10).await? == std::slice::from_ref(&second));
    ensure!(store.audit(0, 1).await? == std::slice::from_ref(&first));
    ensure!(store.audit_before(3, 10).await? == [first.clone(), second.clone()]);
    ensure!(store.audit_before(u64::MAX, 1).await? == [second]);
    ensure!(store.audit_before(2, 10).await? == [first]);
    ensure!(store.audit_before(1, 10).await?.is_empty());
    Ok(())
}

async fn meta_get_and_put(b: &dyn Backend) -> Result<()> {
    let store = b.open(&space()).await?;
    ensure!(store.get_meta("token_hash").await?.is_none());
    store.put_meta("token_hash", "abc").await?;
    store.put_meta("token_hash", "def").await?;
    ensure!(store.get_meta("token_hash").await?.as_deref() == Some("def"));
    Ok(())
}

async fn meta_by_prefix_and_delete(b: &dyn Backend) -> Result<()> {
    let store = b.open(&space()).await?;
    store.put_meta("backup-repo/b", "2").await?;
    store.put_meta("backup-repo/a", "1").await?;
    store.put_meta("backup-repos", "not this").await?;
    store.put_meta("backup/x", "other").await?;
    let got = store.meta_with_prefix("backup-repo/").await?;
    ensure!(
        got == [
            ("backup-repo/a".to_owned(), "1".to_owned()),
            ("backup-repo/b".to_owned(), "2".to_owned())
        ],
        "{got:?}"
    );
    store.delete_meta("backup-repo/a").await?;
    store.delete_meta("backup-repo/missing").await?;
    ensure!(store.get_meta("backup-repo/a").await?.is_none());
    ensure!(store.meta_with_prefix("backup-repo/").await?.len() == 1);
    Ok(())
}

async fn nodes_keep_admin_and_first_registration(b: &dyn Backend) -> Result<()> {
    let store = b.open(&space()).await?;
    store.put_node(&node("n2")).await?;
    store.put_node(&node("n1")).await?;
    let cordoned = store.set_node_admin("n1", NodeAdmin::Cordoned).await?;
    ensure!(cordoned.admin == NodeAdmin::Cordoned);
    let mut again = node("n1");
    again.agent_version = "0.2.0".to_owned();
    again.registered_at_ms = 99;
    store.put_node(&again).await?;
    let nodes = store.nodes().await?;
    ensure!(nodes.len() == 2, "{nodes:?}");
    ensure!(nodes[0].name == "n1" && nodes[0].agent_version == "0.2.0");
    ensure!(nodes[0].admin == NodeAdmin::Cordoned && nodes[0].registered_at_ms == 1);
    ensure!(nodes[1] == node("n2"));
    match store.set_node_admin("ghost", NodeAdmin::Draining).await {
        Err(StoreError::NotFound(n)) if n == "ghost" => {}
        other => bail!("expected NotFound, got {other:?}"),
    }
    Ok(())
}

/// Many node upserts queued with writes of missing records: one batch reads present and
/// missing keys together.
async fn concurrent_upserts_and_misses(b: &dyn Backend) -> Result<()> {
    let store = b.open(&space()).await?;
    store.put_node(&node("n0")).await?;
    store.set_node_admin("n0", NodeAdmin::Draining).await?;
    let upserts: Vec<_> = (0..20)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.put_node(&node(&format!("n{i}"))).await })
        })
        .collect();
    let ghost = instance("ghost");
    let (x, y) = ([event(Some("ghost"), "x")], [event(Some("ghost"), "y")]);
    let (admin, update, delete) = tokio::join!(
        store.set_node_admin("ghost", NodeAdmin::Cordoned),
        store.update_instance(&ghost, &x),
        store.delete_instance("ghost", 1, &y),
    );
    for task in upserts {
        task.await??;
    }
    ensure!(matches!(admin, Err(StoreError::NotFound(_))), "{admin:?}");
    ensure!(matches!(update, Err(StoreError::NotFound(_))), "{update:?}");
    ensure!(matches!(delete, Err(StoreError::NotFound(_))), "{delete:?}");
    let nodes = store.nodes().await?;
    ensure!(nodes.len() == 20, "{} nodes", nodes.len());
    ensure!(nodes[0].name == "n0" && nodes[0].admin == NodeAdmin::Draining);
    ensure!(store.events(None, 0, 10).await?.is_empty());
    Ok(())
}

async fn concurrent_creates_all_commit_with_dense_ids(b: &dyn Backend) -> Result<()> {
    let store = b.open(&space()).await?;
    let started = Instant::now();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let name = format!("db{i}");
                store
                    .create_instance(
                        &instance(&name),
                        &[
                            event(Some(&name), "placed"),
                            event(Some(&name), "instance_created"),
                        ],
                    )
                    .await
            })
        })
        .collect();
    for task in tasks {
        ensure!(task.await??.revision == 1);
    }
    println!(
        "{}: 200 concurrent creates (2 events each) committed in {:?}",
        b.name(),
        started.elapsed()
    );
    ensure!(store.instances().await?.len() == 200);
    let events = store.events(None, 0, 1000).await?;
    let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
    ensure!(
        ids == (1..=400).collect::<Vec<_>>(),
        "ids not 1..=400 in order"
    );
    // Each instance's two events are adjacent: they were written in one transaction.
    for i in 0..200 {
        let mine = store.events(Some(&format!("db{i}")), 0, 10).await?;
        ensure!(
            kinds(&mine) == ["placed", "instance_created"],
            "db{i}: {mine:?}"
        );
        ensure!(mine[1].id == mine[0].id + 1, "db{i}: {mine:?}");
    }
    Ok(())
}

async fn failed_requests_in_a_batch_fail_alone(b: &dyn Backend) -> Result<()> {
    let store = b.open(&space()).await?;
    // 100 creates of one name and 100 of distinct names, queued together.
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = Arc::clone(&store);
            let name = if i % 2 == 0 {
                "dup".to_owned()
            } else {
                format!("db{i}")
            };
            tokio::spawn(async move {
                store
                    .create_instance(&instance(&name), &[event(Some(&name), "created")])
                    .await
            })
        })
        .collect();
    let (mut created, mut duplicates) = (0, 0);
    for task in tasks {
        match task.await? {
            Ok(_) => created += 1,
            Err(StoreError::AlreadyExists(name)) if name == "dup" => duplicates += 1,
            Err(e) => bail!("unexpected error: {e}"),
        }
    }
    ensure!((created, duplicates) == (101, 99), "{created} {duplicates}");
    ensure!(store.instances().await?.len() == 101);
    ensure!(store.events(Some("dup"), 0, 1000).await?.len() == 1);
    ensure!(store.events(None, 0, 1000).await?.len() == 101);
    Ok(())
}

async fn concurrent_updates_at_one_revision_one_wins(b: &dyn Backend) -> Result<()> {
    let store = b.open(&space()).await?;
    let base = store.create_instance(&instance("db1"), &[]).await?;
    let tasks: Vec<_> = (0..2u64)
        .map(|i| {
            let store = Arc::clone(&store);
            let mut inst = base.clone();
            inst.epoch = 10 + i;
            tokio::spawn(async move {
                store
                    .update_instance(&inst, &[event(Some("db1"), "failover")])
                    .await
            })
        })
        .collect();
    let mut won = Vec::new();
    let mut conflicts = 0;
    for task in tasks {
        match task.await? {
            Ok(inst) => won.push(inst),
            Err(StoreError::Conflict {
                expected: 1,
                actual: 2,
                ..
            }) => conflicts += 1,
            Err(e) => bail!("unexpected error: {e}"),
        }
    }
    ensure!((won.len(), conflicts) == (1, 1), "{won:?} {conflicts}");
    ensure!(won[0].revision == 2, "{won:?}");
    ensure!(store.instance("db1").await? == Some(won[0].clone()));
    ensure!(store.events(Some("db1"), 0, 10).await?.len() == 1);
    Ok(())
}

/// More than one chunk of ids (1000 per chunk in the key/value layout).
async fn ids_stay_ordered_across_chunks(b: &dyn Backend) -> Result<()> {
    let store = b.open(&space()).await?;
    let tasks: Vec<_> = (0..1100)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let name = if i % 2 == 0 { "even" } else { "odd" };
                store
                    .append_events(&[event(Some(name), &format!("e{i}"))])
                    .await?;
                store.append_audit(&audit_entry(&format!("a{i}"))).await
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let all = store.events(None, 0, usize::MAX).await?;
    ensure!(all.len() == 1100, "{} events", all.len());
    ensure!(
        all.iter().map(|e| e.id).eq(1..=1100),
        "event ids not 1..=1100 in order"
    );
    let window: Vec<u64> = store
        .events(None, 990, 20)
        .await?
        .iter()
        .map(|e| e.id)
        .collect();
    ensure!(window == (991..=1010).collect::<Vec<_>>(), "{window:?}");
    let even = store.events(Some("even"), 0, usize::MAX).await?;
    ensure!(even.len() == 550 && even.windows(2).all(|w| w[0].id < w[1].id));
    let audit = store.audit(998, 5).await?;
    ensure!(audit.iter().map(|a| a.id).eq(999..=1003), "{audit:?}");
    ensure!(store.audit(0, usize::MAX).await?.len() == 1100);
    // Backward across the chunk boundary at 1000 (the key-value stores chunk ids by 1000).
    let back: Vec<u64> = store
        .events_before(None, 1005, 10)
        .await?
        .iter()
        .map(|e| e.id)
        .collect();
    ensure!(back == (995..=1004).collect::<Vec<_>>(), "{back:?}");
    let all_back = store.events_before(None, u64::MAX, usize::MAX).await?;
    ensure!(all_back == all, "the whole log backward");
    let audit_back = store.audit_before(1002, 4).await?;
    ensure!(
        audit_back.iter().map(|a| a.id).eq(998..=1001),
        "{audit_back:?}"
    );
    let even_back = store.events_before(Some("even"), u64::MAX, 3).await?;
    ensure!(even_back[..] == even[547..], "{even_back:?}");
    Ok(())
}

/// History retention (decision 174): the oldest events go, from the log and from their
/// instance's, a prefix of the log at a time and across a chunk boundary; ids go on.
async fn old_events_are_pruned_and_ids_go_on(b: &dyn Backend) -> Result<()> {
    let store = b.open(&space()).await?;
    // Event n (1 ..= 1005) at 10 n ms; instances a, b and none in turn.
    let at = |n: u64| 10 * n as i64;
    let mut n = 0u64;
    while n < 1005 {
        let batch: Vec<Event> = (n + 1..=(n + 5).min(1005))
            .map(|k| {
                let who = ["a", "b", ""][(k % 3) as usize];
                let mut e = event((!who.is_empty()).then_some(who), &format!("e{k}"));
                e.at_ms = at(k);
                e
            })
            .collect();
        n += batch.len() as u64;
        store.append_events(&batch).await?;
    }
    let ids = |v: &[Event]| v.iter().map(|e| e.id).collect::<Vec<_>>();
    // Nothing older than the oldest event: nothing goes.
    ensure!(store.prune_events(at(1), 100).await? == 0);
    // At most `limit`, oldest first.
    ensure!(store.prune_events(at(1003), 25).await? == 25);
    ensure!(ids(&store.events(None, 0, 3).await?) == [26, 27, 28]);
    // The rest before event 1003, across the chunk boundary at 1000.
    let went = store.prune_events(at(1003), usize::MAX).await?;
    ensure!(went == 977, "{went} pruned");
    ensure!(ids(&store.events(None, 0, usize::MAX).await?) == [1003, 1004, 1005]);
    ensure!(ids(&store.events_before(None, u64::MAX, usize::MAX).await?) == [1003, 1004, 1005]);
    ensure!(ids(&store.events(Some("a"), 0, usize::MAX).await?) == [1005]);
    ensure!(ids(&store.events(Some("b"), 0, usize::MAX).await?) == [1003]);
    ensure!(store.events_before(Some("a"), 1005, 10).await?.is_empty());
    ensure!(store.events(None, 500, 10).await?.len() == 3);
    ensure!(store.prune_events(at(1003), usize::MAX).await? == 0);
    // Ids are not handed out again, even once the log is empty.
    ensure!(ids(&store.append_events(&[event(Some("a"), "late")]).await?) == [1006]);
    ensure!(store.prune_events(i64::MAX, usize::MAX).await? == 4);
    ensure!(store.events(None, 0, usize::MAX).await?.is_empty());
    ensure!(store.events_before(None, u64::MAX, 10).await?.is_empty());
    ensure!(ids(&store.append_events(&[event(None, "next")]).await?) == [1007]);
    // The audit log is never pruned.
    store.append_audit(&audit_entry("kept")).await?;
    ensure!(store.audit(0, 10).await?.len() == 1);
    Ok(())
}

/// Two stores on one prefix, as two schedulers: a compare-and-set is won by one of them
/// only, and ids stay unique and dense.
async fn two_schedulers_on_one_prefix(b: &dyn Backend) -> Result<()> {
    let p = space();
    let one = b.open(&p).await?;
    let two = b.open(&p).await?;
    let base = one.create_instance(&instance("db1"), &[]).await?;
    ensure!(two.instance("db1").await? == Some(base.clone()));
    for round in 0..5u64 {
        let current = one.instance("db1").await?.context("db1 disappeared")?;
        let mut a = current.clone();
        a.epoch = 100 + round;
        let mut c = current.clone();
        c.epoch = 200 + round;
        let (ea, ec) = (
            [event(Some("db1"), "by-one")],
            [event(Some("db1"), "by-two")],
        );
        let (ra, rc) = tokio::join!(one.update_instance(&a, &ea), two.update_instance(&c, &ec));
        let winners = [&ra, &rc].iter().filter(|r| r.is_ok()).count();
        ensure!(winners == 1, "round {round}: {ra:?} / {rc:?}");
        for r in [&ra, &rc] {
            if let Err(e) = r {
                ensure!(
                    matches!(e, StoreError::Conflict { .. }),
                    "round {round}: {e}"
                );
            }
        }
        let stored = two.instance("db1").await?.context("db1 disappeared")?;
        ensure!(stored.revision == current.revision + 1);
        ensure!(Some(&stored) == ra.as_ref().ok().or(rc.as_ref().ok()));
    }
    ensure!(one.events(Some("db1"), 0, 100).await?.len() == 5);

    let appends = |store: Arc<dyn Store>, who: &'static str| {
        tokio::spawn(async move {
            for i in 0..60 {
                store
                    .append_events(&[event(None, &format!("{who}{i}"))])
                    .await?;
            }
            Ok::<_, StoreError>(())
        })
    };
    let (x, y) = tokio::join!(
        appends(Arc::clone(&one), "x"),
        appends(Arc::clone(&two), "y")
    );
    x??;
    y??;
    let all = two.events(None, 0, usize::MAX).await?;
    ensure!(all.len() == 125, "{} events", all.len());
    ensure!(all.iter().map(|e| e.id).eq(1..=125), "ids not dense");
    Ok(())
}

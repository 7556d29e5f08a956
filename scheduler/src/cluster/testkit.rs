//! Builders shared by the cluster's unit tests: nodes, instance specs, and a loaded cluster
//! on an in-memory store with its nodes registered and heartbeating.

use super::Cluster;
use crate::model::{DiskInfo, Instance, InstanceSpec, Node, NodeAdmin, Resources};
use crate::store::sqlite::SqliteStore;
use crate::store::Store;
use mofang_common::proto::HeartbeatRequest;
use mofang_common::EngineKind;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// A node in its own zone (named after it) with one disk per `(class, MiB)`.
pub(super) fn node(name: &str, disks: &[(&str, u64)]) -> Node {
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

/// A MariaDB instance with two replicas, half a CPU, 256 MiB of memory and `disk_mib` of disk.
pub(super) fn spec(name: &str, disk_mib: u64, class: Option<&str>) -> InstanceSpec {
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
        labels: Default::default(),
        restore: None,
        tls: Default::default(),
        backup: None,
    }
}

/// A cluster on a fresh in-memory store with `nodes` registered and heartbeating.
pub(super) async fn cluster(nodes: &[Node]) -> Arc<Cluster> {
    let store = Arc::new(SqliteStore::open_in_memory().expect("in-memory store"));
    cluster_on(store, nodes).await
}

/// A cluster loaded from `store` with `nodes` registered and heartbeating (a scheduler
/// started on a store another one wrote).
pub(super) async fn cluster_on(store: Arc<dyn Store>, nodes: &[Node]) -> Arc<Cluster> {
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

/// A fresh in-memory store, a cluster on it with [`three_ssd_nodes`], and instance `one`
/// (three members, one a node) created.
pub(super) async fn one_on_three_nodes() -> (Arc<dyn Store>, Arc<Cluster>, Instance) {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().expect("in-memory store"));
    let c = cluster_on(store.clone(), &three_ssd_nodes()).await;
    let i = c
        .create_instance(spec("one", 100, None))
        .await
        .expect("create");
    (store, c, i)
}

/// Three ssd nodes `a`, `b`, `c` with 1000 MiB each.
pub(super) fn three_ssd_nodes() -> Vec<Node> {
    ["a", "b", "c"]
        .iter()
        .map(|n| node(n, &[("ssd", 1000)]))
        .collect()
}

/// A MariaDB backup record of `instance` in `repo`, ended at `ended` ms, consistent at GTID
/// `0-1-<ended>`, with no object.
pub(super) fn backup_record(
    id: &str,
    instance: &str,
    state: crate::backup::BackupState,
    ended: i64,
    repo: &str,
) -> crate::backup::Backup {
    crate::backup::Backup {
        id: id.into(),
        instance: instance.into(),
        engine: "mariadb".into(),
        version: "10.11".into(),
        repo: repo.into(),
        member: String::new(),
        node: String::new(),
        state,
        reason: String::new(),
        requested_at_ms: 0,
        started_at_ms: 0,
        ended_at_ms: ended,
        bytes: 0,
        size: 0,
        consistent_at: mofang_common::backup::ConsistentAt {
            gtid: format!("0-1-{ended}"),
            ..Default::default()
        },
        objects: vec![],
        manifest: String::new(),
        tools: Default::default(),
        row_counts: None,
        keys: None,
        verifying: false,
        verified_at_ms: 0,
        verify_ok: None,
        verify_reason: String::new(),
    }
}

/// Stores a backup repository record `r` of kind `fs` at `dir`, in clear.
pub(super) async fn put_fs_repo(store: &dyn Store, dir: &std::path::Path) {
    let repo = super::BackupRepo {
        name: "r".into(),
        spec: mofang_common::repo::RepoSpec::Fs {
            path: dir.to_string_lossy().into_owned(),
            encryption_key: None,
            retired_keys: Vec::new(),
        },
        created_at_ms: 0,
        key_rotated_at_ms: 0,
    };
    store
        .put_meta(
            "backup-repo/r",
            &serde_json::to_string(&repo).expect("json"),
        )
        .await
        .expect("repository record");
}

//! Durable records: the decisions that write the store first (create and delete an
//! instance, set a node's admin state, register a node) and the checks on a request.

use super::books::reserve;
use super::{event, lock, Cluster, Error, Result};
use crate::model::{Credentials, EventKind, Instance, InstanceSpec, Node, NodeAdmin};
use mofang_common::DbTls;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Validates a create request beyond what serde checks.
/// Labels: at most 32; keys 1-63 of letters, digits, `.`, `_`, `-`, `/`; values at most 63
/// of letters, digits, `.`, `_`, `-`.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    if labels.len() > 32 {
        return Err(Error::Invalid(format!(
            "labels: {} given, at most 32",
            labels.len()
        )));
    }
    let ok = |s: &str, extra: &[u8]| {
        s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b) || extra.contains(&b))
    };
    for (k, v) in labels {
        if k.is_empty() || !ok(k, b"/") {
            return Err(Error::Invalid(format!(
                "label key {k:?}: 1-63 letters, digits, '.', '_', '-', '/'"
            )));
        }
        if !ok(v, b"") {
            return Err(Error::Invalid(format!(
                "label {k}: value {v:?}: at most 63 letters, digits, '.', '_', '-'"
            )));
        }
    }
    Ok(())
}

/// Whether `labels` match `selector` (`k=v,k2=v2`: every pair equal; `k`: the key present;
/// `k!=v`: the key absent or another value). An empty selector matches everything.
pub fn matches_selector(labels: &BTreeMap<String, String>, selector: &str) -> Result<bool> {
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let hit = if let Some((k, v)) = term.split_once("!=") {
            labels.get(k.trim()).map(String::as_str) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once('=') {
            labels.get(k.trim()).map(String::as_str) == Some(v.trim())
        } else if term
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
        {
            labels.contains_key(term)
        } else {
            return Err(Error::Invalid(format!(
                "selector term {term:?}: use k=v, k!=v or k"
            )));
        };
        if !hit {
            return Ok(false);
        }
    }
    Ok(true)
}

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
    validate_labels(&spec.labels)?;
    if spec.engine == mofang_common::EngineKind::Redis && spec.tls == DbTls::Optional {
        return Err(Error::Invalid(
            "tls: optional is not available for redis (a Redis port speaks TLS or plain text, \
             not both): use off or required"
                .into(),
        ));
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
    if let Some(b) = &spec.backup {
        b.validate().map_err(Error::Invalid)?;
    }
    Ok(())
}

impl Cluster {
    /// Places and durably creates an instance. Placement and the in-memory reservation
    /// happen under one lock (no two requests can take the same capacity); the store write
    /// happens outside it so concurrent creations share a commit.
    pub async fn create_instance(&self, spec: InstanceSpec) -> Result<Instance> {
        validate_spec(&spec)?;
        if let Some(b) = &spec.backup {
            self.backup_repo(&b.repo).await.map_err(|e| match e {
                Error::NotFound(what) => Error::Invalid(format!("backup.repo: {what} not found")),
                other => other,
            })?;
        }
        // Checked before anything is placed or written: a refused restore creates nothing.
        let restored = match &spec.restore {
            Some(r) => Some(self.check_restore(&spec, r).await?),
            None => None,
        };
        let inst = {
            let mut inner = lock(&self.inner);
            if inner.instances.contains_key(&spec.name) {
                return Err(Error::AlreadyExists(spec.name.clone()));
            }
            let placed = self.place_new(&inner, &spec)?;
            let mut inst = Instance::new(
                spec.clone(),
                placed.members,
                Credentials {
                    admin: password(),
                    repl: password(),
                    monitor: password(),
                    app: password(),
                },
            );
            inst.restored = restored.clone().map(Box::new);
            // Schedules count their slots from now: nothing is missed before creation.
            inst.backup_slot_ms = inst.created_at_ms;
            inst.verify_slot_ms = inst.created_at_ms;
            // Reserve now; undone below if the store refuses.
            reserve(&mut inner, &inst, true);
            inner.instances.insert(spec.name.clone(), inst.clone());
            inst
        };
        let mut events = vec![event(
            EventKind::InstanceCreated,
            Some(&spec.name),
            None,
            match &restored {
                Some(r) => format!(
                    "{} {} with {} replicas, restored from backup {}{}",
                    spec.engine,
                    spec.version,
                    spec.replicas,
                    r.backup,
                    match &r.time {
                        Some(t) => format!(
                            " to {t} ({} archived binlog files replayed)",
                            r.binlogs.len()
                        ),
                        None => String::new(),
                    }
                ),
                None => format!(
                    "{} {} with {} replicas",
                    spec.engine, spec.version, spec.replicas
                ),
            },
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

    /// Writes an instance again exactly as it is, so the store seals its secrets with the
    /// keyring's active key (migration from clear text, key rotation; docs/secrets.md).
    /// Nothing an agent sees changes, so no desired state is pushed.
    pub async fn reseal_instance(self: &Arc<Self>, name: &str) -> Result<Resealed> {
        let Some(_busy) = self.begin(name) else {
            return Ok(Resealed::Busy);
        };
        let Some(current) = lock(&self.inner)
            .instances
            .get(name)
            .filter(|i| i.revision > 0)
            .cloned()
        else {
            return Ok(Resealed::Unknown);
        };
        let stored = match self.store.update_instance(&current, &[]).await {
            Ok(stored) => stored,
            Err(crate::store::Error::NotFound(_)) => return Ok(Resealed::Unknown),
            Err(e) => return Err(e.into()),
        };
        if let Some(i) = lock(&self.inner).instances.get_mut(name) {
            if i.revision == current.revision {
                i.revision = stored.revision;
            }
        }
        Ok(Resealed::Written)
    }
}

/// What [`Cluster::reseal_instance`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resealed {
    /// Written again: the active key seals it.
    Written,
    /// Busy with an operation: try again later.
    Busy,
    /// Not an instance this scheduler knows (deleted meanwhile).
    Unknown,
}

/// A fresh random password: 32 alphanumerics.
pub(super) fn password() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

/// How a change of an instance's `tls` is carried out (decision 95).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsChange {
    /// The same mode: nothing to do.
    Same,
    /// `optional` <-> `required`: each agent sets it on the running server.
    Live,
    /// TLS turned on or off: every member restarts with it, one at a time, replicas first
    /// (the rolling restart operation).
    Rolling,
    /// A stopped instance: its members start with the new mode.
    AtStart,
}

/// How an instance of `engine` at `from` goes to `to` ([`TlsChange`]), or why it cannot.
pub fn tls_change(
    engine: mofang_common::EngineKind,
    from: DbTls,
    to: DbTls,
    stopped: bool,
) -> Result<TlsChange> {
    if from == to {
        return Ok(TlsChange::Same);
    }
    if engine == mofang_common::EngineKind::Redis {
        // A Redis port speaks TLS or plain text: a member restarted with TLS could not
        // replicate from a primary not restarted yet, nor one without from one with it.
        return Err(Error::Invalid(format!(
            "tls: a redis instance keeps the mode it was created with ({from}); changing it \
             would stop replication between the members restarted and the others (create a \
             new instance and restore a backup into it)"
        )));
    }
    Ok(if stopped {
        TlsChange::AtStart
    } else if from.is_on() == to.is_on() {
        TlsChange::Live
    } else {
        TlsChange::Rolling
    })
}

impl Cluster {
    /// Changes an instance's labels, JSON merge-patch style: a value sets the label, `null`
    /// removes it.
    pub async fn patch_labels(
        &self,
        name: &str,
        patch: &BTreeMap<String, Option<String>>,
    ) -> Result<Instance> {
        self.patch_instance(name, patch, None, None, "").await
    }

    /// `PATCH /v1/instances/{name}`: labels (merge patch) and, when `backup` is given, the
    /// backup policy (`Some(None)` removes it). A new or changed schedule counts its slots
    /// from now. A new `tls` mode ([`tls_change`]) is written, then, when TLS is turned on or
    /// off on a running instance, rolled out by a rolling restart started by `by`; refused
    /// while an operation runs or, for a restart, while a member is not whole.
    pub async fn patch_instance(
        &self,
        name: &str,
        patch: &BTreeMap<String, Option<String>>,
        backup: Option<Option<crate::backup::schedule::BackupPolicy>>,
        tls: Option<DbTls>,
        by: &str,
    ) -> Result<Instance> {
        // An unknown instance is 404 whatever the patch holds.
        self.existing(name)?;
        if let Some(Some(b)) = &backup {
            b.validate().map_err(Error::Invalid)?;
            self.backup_repo(&b.repo).await.map_err(|e| match e {
                Error::NotFound(what) => Error::Invalid(format!("backup.repo: {what} not found")),
                other => other,
            })?;
        }
        let mut next = lock(&self.inner)
            .instances
            .get(name)
            .filter(|i| i.revision > 0)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("instance {name}")))?;
        for (k, v) in patch {
            match v {
                Some(v) => next.spec.labels.insert(k.clone(), v.clone()),
                None => next.spec.labels.remove(k),
            };
        }
        validate_labels(&next.spec.labels)?;
        let mut what = Vec::new();
        let mut rolled = None;
        if let Some(to) = tls {
            let from = next.spec.tls;
            let change = tls_change(next.spec.engine, from, to, next.stopped)?;
            match change {
                TlsChange::Same => {}
                TlsChange::AtStart | TlsChange::Live => self.operation_blocker(name, false)?,
                TlsChange::Rolling => self.operation_blocker(name, true)?,
            }
            if change != TlsChange::Same {
                what.push(format!(
                    "tls {from} -> {to}{}",
                    match change {
                        TlsChange::Rolling => ": members restart one at a time, replicas first",
                        TlsChange::Live => ": set on the running servers",
                        _ => ": at the next start",
                    }
                ));
                next.spec.tls = to;
                if change == TlsChange::Rolling {
                    rolled = Some(to);
                }
            }
        }
        // A rolling change is one decision stored once: the operation, carrying the mode, is
        // stored before the record is written. If it cannot start, nothing has changed; once
        // stored, the mode reaches the record (here, or from the operation before its first
        // step if this scheduler stops first) (decision 110).
        let op = match rolled {
            Some(to) => Some(
                self.start_operation_carrying(
                    name,
                    crate::ops::OpKind::Restart,
                    Default::default(),
                    None,
                    by,
                    Some(to),
                )
                .await?,
            ),
            None => None,
        };
        if let Some(policy) = backup {
            let now = crate::model::now_ms();
            let old = next.spec.backup.clone();
            if old.as_ref().map(|p| &p.schedule) != policy.as_ref().map(|p| &p.schedule) {
                next.backup_slot_ms = now;
            }
            if old.as_ref().and_then(|p| p.verify.as_ref())
                != policy.as_ref().and_then(|p| p.verify.as_ref())
            {
                next.verify_slot_ms = now;
            }
            what.push(match &policy {
                Some(p) => format!(
                    "backup schedule {:?} to repository {}, retention {}, verify {}",
                    p.schedule,
                    p.repo,
                    serde_json::to_string(&p.retention).unwrap_or_default(),
                    p.verify.as_deref().unwrap_or("never")
                ),
                None => "no backup schedule".to_owned(),
            });
            next.spec.backup = policy;
        }
        let text = next
            .spec
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let written = self
            .write(
                next,
                vec![event(
                    EventKind::InstanceUpdated,
                    Some(name),
                    None,
                    if what.is_empty() {
                        format!("labels now {{{text}}}")
                    } else {
                        format!("labels now {{{text}}}; {}", what.join("; "))
                    },
                )],
            )
            .await;
        match (written, op) {
            (Ok(w), _) => Ok(w),
            // The operation is stored and will write the mode itself before its first step
            // (a concurrent write of the record, or the store failing just now); labels and
            // backup policy of this request were not written.
            (Err(e), Some(op)) => {
                tracing::warn!(instance = name, id = %op.id, error = %e, "tls change: the record write failed; the operation writes the mode before its first step");
                self.write_operation_tls(&op, op.tls.unwrap_or_default())
                    .await
            }
            (Err(e), None) => Err(e),
        }
    }

    /// Writes the `tls` mode a rolling operation carries into its instance's record (the
    /// record as it is now, compare-and-set, a few tries on a concurrent write), with the
    /// change's event; the record unchanged when it has the mode already.
    pub(super) async fn write_operation_tls(
        &self,
        op: &crate::ops::Operation,
        to: DbTls,
    ) -> Result<Instance> {
        let mut last = None;
        for _ in 0..5 {
            let mut next = lock(&self.inner)
                .instances
                .get(&op.instance)
                .filter(|i| i.revision > 0)
                .cloned()
                .ok_or_else(|| Error::NotFound(format!("instance {}", op.instance)))?;
            if next.spec.tls == to {
                return Ok(next);
            }
            let from = next.spec.tls;
            next.spec.tls = to;
            match self
                .write(
                    next,
                    vec![event(
                        EventKind::InstanceUpdated,
                        Some(&op.instance),
                        None,
                        format!(
                            "tls {from} -> {to}: members restart one at a time, replicas first (operation {})",
                            op.id
                        ),
                    )],
                )
                .await
            {
                Ok(w) => return Ok(w),
                Err(e @ Error::Store(crate::store::Error::Conflict { .. })) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last
            .unwrap_or_else(|| Error::NotReady(format!("instance {} kept changing", op.instance))))
    }
}

#[cfg(test)]
mod label_tests {
    use super::*;

    #[test]
    fn tls_is_turned_on_or_off_by_a_rolling_restart_and_set_live_between_on_modes() {
        use mofang_common::EngineKind::{Mariadb as MariaDb, Redis};
        use DbTls::*;
        let ok = |e, from, to, stopped| tls_change(e, from, to, stopped).expect("allowed");
        assert_eq!(ok(MariaDb, Off, Required, false), TlsChange::Rolling);
        assert_eq!(ok(MariaDb, Off, Optional, false), TlsChange::Rolling);
        assert_eq!(ok(MariaDb, Required, Off, false), TlsChange::Rolling);
        assert_eq!(ok(MariaDb, Optional, Required, false), TlsChange::Live);
        assert_eq!(ok(MariaDb, Required, Optional, false), TlsChange::Live);
        assert_eq!(ok(MariaDb, Off, Required, true), TlsChange::AtStart);
        assert_eq!(ok(MariaDb, Required, Required, false), TlsChange::Same);
        assert_eq!(ok(Redis, Required, Required, false), TlsChange::Same);
        for (from, to) in [(Off, Required), (Required, Off), (Off, Optional)] {
            let e = tls_change(Redis, from, to, false).expect_err("redis");
            assert!(
                matches!(&e, Error::Invalid(m) if m.contains("redis instance keeps the mode")),
                "{e}"
            );
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn selectors_match_equal_present_and_not_equal() {
        let l = labels(&[("team", "pay"), ("env", "prod")]);
        assert!(matches_selector(&l, "").unwrap());
        assert!(matches_selector(&l, "team=pay").unwrap());
        assert!(matches_selector(&l, "team=pay, env=prod").unwrap());
        assert!(!matches_selector(&l, "team=pay,env=dev").unwrap());
        assert!(matches_selector(&l, "env").unwrap());
        assert!(!matches_selector(&l, "tier").unwrap());
        assert!(matches_selector(&l, "env!=dev").unwrap());
        assert!(!matches_selector(&l, "env!=prod").unwrap());
        assert!(matches_selector(&l, "tier!=gold").unwrap());
        assert!(matches_selector(&l, "a b").is_err());
    }

    #[test]
    fn labels_are_checked() {
        assert!(validate_labels(&labels(&[("team", "pay"), ("k8s.io/app", "")])).is_ok());
        assert!(validate_labels(&labels(&[("", "x")])).is_err());
        assert!(validate_labels(&labels(&[("team", "a b")])).is_err());
        assert!(validate_labels(&labels(&[("t=x", "y")])).is_err());
        let many: BTreeMap<String, String> =
            (0..33).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(validate_labels(&many).is_err());
    }
}

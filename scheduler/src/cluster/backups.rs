//! Carrying out backups (issue 16): a request becomes a `pending` record (store metadata
//! `backup/<id>`), a `backup` job in the chosen member's node's desired state, then
//! `running` when its agent reports it, and `succeeded` (with the manifest the agent wrote) or
//! `failed` (with the reason) when it ends or its node goes down. One task per backup drives
//! it on the leader; a new leader fails the backups the old one was driving (decision 68).
//! Deleting a backup deletes its objects; deleting an instance never touches its backups.

use super::{event, lock, Cluster, Error, Result};
use crate::backup::plan::{self, Ask, Candidate, NoMember};
use crate::backup::{Backup, BackupState, PREFIX};
use crate::model::{now_ms, AuditEntry, EventKind, NodeState};
use futures::TryStreamExt;
use mofang_common::backup::{self as common, params, Manifest};
use mofang_common::proto::Job;
use mofang_common::Role;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn, Instrument};

/// How often a running backup's record is looked at when no heartbeat wakes its task.
const TICK: Duration = Duration::from_secs(1);

fn job_id(backup: &str) -> String {
    format!("backup-{backup}")
}

fn corrupt(key: &str, e: serde_json::Error) -> Error {
    Error::Store(crate::store::Error::Backend(format!(
        "corrupt record {key}: {e}"
    )))
}

impl Cluster {
    /// Records a backup of `instance` in `repo` and starts it on the member [`plan::choose`]
    /// picks; answers at once with the `pending` record.
    pub async fn request_backup(
        self: &Arc<Self>,
        instance: &str,
        repo: &str,
        ask: Ask,
    ) -> Result<Backup> {
        // An unknown instance is 404 whatever the request names.
        self.existing(instance)?;
        let spec = self.backup_repo(repo).await.map_err(|e| match e {
            Error::NotFound(what) => Error::Invalid(format!("{what} not found")),
            other => other,
        })?;
        let repo_json =
            serde_json::to_string(&spec.spec).map_err(|e| Error::Invalid(e.to_string()))?;
        let (backup, job) = {
            let mut inner = lock(&self.inner);
            let inst = inner
                .instances
                .get(instance)
                .filter(|i| i.revision > 0)
                .ok_or_else(|| Error::NotFound(format!("instance {instance}")))?
                .clone();
            if let Some(id) = inner.backups_running.get(instance) {
                return Err(Error::BackupRunning {
                    instance: instance.to_owned(),
                    id: id.clone(),
                });
            }
            let candidates: Vec<Candidate> = inst
                .members
                .iter()
                .map(|m| {
                    let status = inner.live.get(&m.node).and_then(|l| l.members.get(&m.id));
                    let node_up = inner
                        .nodes
                        .get(&m.node)
                        .is_some_and(|n| self.node_state(&inner, n) != NodeState::Down);
                    let healthy = node_up
                        && status.is_some_and(|s| {
                            s.healthy && (m.role == Role::Primary || s.replication_ok)
                        });
                    Candidate {
                        id: m.id.clone(),
                        node: m.node.clone(),
                        role: m.role,
                        healthy,
                        lag_seconds: status.map(|s| s.lag_seconds).filter(|l| *l >= 0),
                    }
                })
                .collect();
            let chosen = plan::choose(instance, &candidates, &ask).map_err(|e| match e {
                NoMember::Unknown { .. } | NoMember::Ambiguous => Error::Invalid(e.to_string()),
                other => Error::NoBackupMember(other),
            })?;
            let now = now_ms();
            let backup = Backup {
                id: format!("{instance}-{now}"),
                instance: instance.to_owned(),
                engine: inst.spec.engine.to_string(),
                version: inst.spec.version.clone(),
                repo: repo.to_owned(),
                member: chosen.id.clone(),
                node: chosen.node.clone(),
                state: BackupState::Pending,
                reason: String::new(),
                requested_at_ms: now,
                started_at_ms: 0,
                ended_at_ms: 0,
                bytes: 0,
                size: 0,
                consistent_at: Default::default(),
                objects: vec![],
                manifest: String::new(),
                tools: Default::default(),
                row_counts: None,
                keys: None,
                verifying: false,
                verified_at_ms: 0,
                verify_ok: None,
                verify_reason: String::new(),
            };
            inner
                .backups_running
                .insert(instance.to_owned(), backup.id.clone());
            let job = Job {
                id: job_id(&backup.id),
                kind: common::JOB_KIND.into(),
                repo: repo_json,
                member: backup.member.clone(),
                params: HashMap::from([
                    (params::ID.to_owned(), backup.id.clone()),
                    (params::INSTANCE.to_owned(), instance.to_owned()),
                    (params::ENGINE.to_owned(), backup.engine.clone()),
                    (params::VERSION.to_owned(), backup.version.clone()),
                ]),
            };
            (backup, job)
        };
        if let Err(e) = self.put_backup(&backup).await {
            lock(&self.inner).backups_running.remove(instance);
            return Err(e);
        }
        self.backup_step(
            &backup,
            EventKind::BackupRequested,
            format!(
                "backup {} of {} on {} ({}) to repository {}",
                backup.id, instance, backup.member, backup.node, repo
            ),
        )
        .await;
        info!(backup = %backup.id, instance, member = %backup.member, node = %backup.node,
            repo, "backup requested");
        self.start_jobs(vec![(backup.node.clone(), job)]);
        let this = self.clone();
        let span = tracing::info_span!("backup", id = %backup.id, instance);
        tokio::spawn(this.drive_backup(backup.clone()).instrument(span));
        Ok(backup)
    }

    /// Follows one backup's job until it ends, its node goes down, or this scheduler stops
    /// leading (the next leader fails it: [`Cluster::fail_orphaned_backups`]).
    async fn drive_backup(self: Arc<Self>, mut b: Backup) {
        let jid = job_id(&b.id);
        let outcome: std::result::Result<Manifest, String> = loop {
            if !self.is_active() {
                info!("no longer leading: the next leader fails this backup");
                return;
            }
            let (status, node_down) = {
                let inner = lock(&self.inner);
                let down = inner
                    .nodes
                    .get(&b.node)
                    .is_none_or(|n| self.node_state(&inner, n) == NodeState::Down);
                (inner.job_status.get(&jid).cloned(), down)
            };
            if let Some(s) = status {
                if b.state == BackupState::Pending {
                    b.state = BackupState::Running;
                    b.started_at_ms = now_ms();
                    if let Err(e) = self.put_backup(&b).await {
                        warn!(error = %e, "backup record not updated (running)");
                    }
                    self.backup_step(
                        &b,
                        EventKind::BackupStarted,
                        format!("backup {} running on {} ({})", b.id, b.member, b.node),
                    )
                    .await;
                }
                match s.state.as_str() {
                    "succeeded" => {
                        break serde_json::from_str::<Manifest>(&s.result)
                            .map_err(|e| format!("the agent's manifest is unreadable: {e}"))
                    }
                    "failed" => break Err(format!("{} failed: {}", s.step, s.message)),
                    _ => {}
                }
            }
            if node_down {
                break Err(format!(
                    "node {} went down during the backup (its agent stopped reporting)",
                    b.node
                ));
            }
            let _ = tokio::time::timeout(TICK, self.jobs_changed.notified()).await;
        };
        self.end_jobs(&[jid]);
        let dir = common::dir(&b.instance, &b.id);
        b.ended_at_ms = now_ms();
        match outcome {
            Ok(m) => {
                b.apply_manifest(&m, &dir);
                b.state = BackupState::Succeeded;
                info!(bytes = b.size, gtid = %b.consistent_at.gtid, "backup succeeded");
            }
            Err(reason) => {
                b.state = BackupState::Failed;
                b.reason = reason;
                warn!(reason = %b.reason, "backup failed");
                // The agent aborts its upload; this also removes a manifest or an object an
                // agent completed after its node was given up on.
                if let Err(e) = self.delete_objects(&b).await {
                    warn!(error = %e, "objects of a failed backup not deleted");
                }
            }
        }
        if let Err(e) = self.put_backup(&b).await {
            warn!(error = %e, "backup record not updated (final)");
        }
        if b.state == BackupState::Succeeded {
            // Its primary archives binlogs from this backup on, to its repository.
            if let Err(e) = self.refresh_archives().await {
                warn!(error = %e, "archive targets not refreshed");
            }
        }
        let (kind, message) = match b.state {
            BackupState::Succeeded => (
                EventKind::BackupSucceeded,
                format!(
                    "backup {} stored: {} bytes ({} read), consistent at {}",
                    b.id,
                    b.size,
                    b.bytes,
                    position(&b)
                ),
            ),
            _ => (
                EventKind::BackupFailed,
                format!("backup {} failed: {}", b.id, b.reason),
            ),
        };
        self.backup_step(&b, kind, message).await;
        let mut inner = lock(&self.inner);
        if inner.backups_running.get(&b.instance) == Some(&b.id) {
            inner.backups_running.remove(&b.instance);
        }
    }

    /// On taking charge: backups a previous leader was driving (pending or running in the
    /// store) have lost their driver and their job; they are failed, their objects deleted.
    pub(super) async fn fail_orphaned_backups(&self) -> Result<()> {
        for mut b in self.all_backups().await? {
            if b.state.is_final() {
                continue;
            }
            b.state = BackupState::Failed;
            b.reason = "the scheduler driving it stopped leading before it ended".into();
            b.ended_at_ms = now_ms();
            if let Err(e) = self.delete_objects(&b).await {
                warn!(backup = %b.id, error = %e, "objects of an orphaned backup not deleted");
            }
            self.put_backup(&b).await?;
            self.backup_step(
                &b,
                EventKind::BackupFailed,
                format!("backup {} failed: {}", b.id, b.reason),
            )
            .await;
        }
        lock(&self.inner).backups_running.clear();
        Ok(())
    }

    /// Resolves and checks the restore of a create request before anything is created: the
    /// backup (named, or the latest succeeded one of `from_instance`), its engine and version
    /// against the request's, its repository, its manifest and each data object, read whole
    /// and compared with the recorded size and sha256. The first fault is the refusal, naming
    /// the object.
    pub(super) async fn check_restore(
        &self,
        spec: &crate::model::InstanceSpec,
        req: &crate::model::RestoreRequest,
    ) -> Result<crate::model::Restored> {
        let refuse = |m: String| Error::RestoreRefused(m);
        let mut pitr = None;
        let b = match (&req.backup, &req.time) {
            (named, Some(time)) => {
                if spec.engine != mofang_common::EngineKind::Mariadb {
                    return Err(refuse(format!(
                        "a restore to a time needs MariaDB; the new instance is {}",
                        spec.engine
                    )));
                }
                let (b, files, at) = self
                    .plan_pitr(&req.from_instance, named.as_deref(), time)
                    .await?;
                pitr = Some((files, mofang_common::pitr::format_utc(at)));
                b
            }
            (Some(id), None) => {
                let b = self.backup(id).await.map_err(|e| match e {
                    Error::NotFound(_) => refuse(format!("backup {id} not found")),
                    other => other,
                })?;
                if b.instance != req.from_instance {
                    return Err(refuse(format!(
                        "backup {id} is of instance {}, not {}",
                        b.instance, req.from_instance
                    )));
                }
                if b.state != BackupState::Succeeded {
                    return Err(refuse(format!("backup {id} is {}, not succeeded", b.state)));
                }
                b
            }
            (None, None) => self
                .all_backups()
                .await?
                .into_iter()
                .filter(|b| b.instance == req.from_instance && b.state == BackupState::Succeeded)
                .max_by(|a, b| a.ended_at_ms.cmp(&b.ended_at_ms).then(a.id.cmp(&b.id)))
                .ok_or_else(|| {
                    refuse(format!(
                        "instance {} has no succeeded backup",
                        req.from_instance
                    ))
                })?,
        };
        if b.engine != spec.engine.to_string() || b.version != spec.version {
            return Err(refuse(format!(
                "backup {} is of {} {}; the new instance is {} {}",
                b.id, b.engine, b.version, spec.engine, spec.version
            )));
        }
        let [object] = b.objects.as_slice() else {
            return Err(refuse(format!(
                "backup {} has {} data objects, not one",
                b.id,
                b.objects.len()
            )));
        };
        let repo = self.backup_repo(&b.repo).await.map_err(|e| match e {
            Error::NotFound(_) => refuse(format!(
                "backup repository {} of backup {} is gone",
                b.repo, b.id
            )),
            other => other,
        })?;
        let store = repo
            .spec
            .open()
            .map_err(|e| refuse(format!("repository {}: {e}", b.repo)))?;
        // An encrypted object whose key the repository no longer holds (a repository added
        // again with another key) is refused by name before anything is created.
        if let Some(enc) = &object.encryption {
            store
                .opening_key(enc, &object.path)
                .map_err(|e| refuse(format!("backup {} in repository {}: {e}", b.id, b.repo)))?;
        }
        let manifest = store.path(&b.manifest);
        if let Err(e) = store.store.head(&manifest).await {
            return Err(refuse(format!(
                "object {} of backup {} in repository {}: {e}",
                b.manifest, b.id, b.repo
            )));
        }
        let path = store.path(&object.path);
        let mut body = match store.store.get(&path).await {
            Ok(r) => r.into_stream(),
            Err(e) => {
                return Err(refuse(format!(
                    "object {} of backup {} in repository {}: {e}",
                    object.path, b.id, b.repo
                )))
            }
        };
        use futures::StreamExt;
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                refuse(format!(
                    "object {} of backup {}: reading failed: {e}",
                    object.path, b.id
                ))
            })?;
            hash.update(&chunk);
            size += chunk.len() as u64;
        }
        let sha = hex::encode(hash.finalize());
        if sha != object.sha256 || size != object.size {
            return Err(refuse(format!(
                "object {} of backup {} is not the one backed up: {size} bytes with sha256 {sha}, \
                 recorded {} bytes with sha256 {}",
                object.path, b.id, object.size, object.sha256
            )));
        }
        Ok(crate::model::Restored {
            backup: b.id.clone(),
            repo: b.repo.clone(),
            object: object.path.clone(),
            size: object.size,
            sha256: object.sha256.clone(),
            raw_size: object.raw_size,
            encryption: object.encryption.clone(),
            time: pitr.as_ref().map(|(_, t)| t.clone()),
            binlogs: pitr.map(|(f, _)| f).unwrap_or_default(),
        })
    }

    /// Every backup record.
    pub(super) async fn all_backups(&self) -> Result<Vec<Backup>> {
        self.backup_records(PREFIX).await
    }

    /// The backup records under store key `prefix`.
    async fn backup_records(&self, prefix: &str) -> Result<Vec<Backup>> {
        self.store
            .meta_with_prefix(prefix)
            .await?
            .into_iter()
            .map(|(key, json)| serde_json::from_str(&json).map_err(|e| corrupt(&key, e)))
            .collect()
    }

    /// Backups of `instance` (which may have been deleted), oldest first, with the bytes a
    /// running one has read so far. 404 when neither the instance nor a backup of it exists.
    pub async fn backups_of(&self, instance: &str) -> Result<Vec<Backup>> {
        // Ids are `<instance>-<ms>`: only the records under that prefix are read (another
        // instance whose name extends this one's is filtered out).
        let list = self
            .backups_where(&format!("{PREFIX}{instance}-"), |b| b.instance == instance)
            .await?;
        if list.is_empty() && !lock(&self.inner).instances.contains_key(instance) {
            return Err(Error::NotFound(format!("instance {instance}")));
        }
        Ok(list)
    }

    /// Every backup of every instance (deleted ones' too), oldest first, with the bytes a
    /// running one has read so far: `GET /v1/backups`.
    pub async fn backups(&self) -> Result<Vec<Backup>> {
        self.backups_where(PREFIX, |_| true).await
    }

    /// The backups under store key `prefix` that `keep` keeps, oldest first, with the bytes
    /// running ones have read so far.
    async fn backups_where(
        &self,
        prefix: &str,
        keep: impl Fn(&Backup) -> bool,
    ) -> Result<Vec<Backup>> {
        let mut list: Vec<Backup> = self
            .backup_records(prefix)
            .await?
            .into_iter()
            .filter(|b| keep(b))
            .collect();
        list.sort_by(|a, b| {
            a.requested_at_ms
                .cmp(&b.requested_at_ms)
                .then(a.id.cmp(&b.id))
        });
        let inner = lock(&self.inner);
        for b in list.iter_mut().filter(|b| !b.state.is_final()) {
            if let Some(s) = inner.job_status.get(&job_id(&b.id)) {
                b.bytes = s.bytes;
            }
        }
        Ok(list)
    }

    /// One backup.
    pub async fn backup(&self, id: &str) -> Result<Backup> {
        let key = format!("{PREFIX}{id}");
        let json = self
            .store
            .get_meta(&key)
            .await?
            .ok_or_else(|| Error::NotFound(format!("backup {id}")))?;
        let mut b: Backup = serde_json::from_str(&json).map_err(|e| corrupt(&key, e))?;
        if !b.state.is_final() {
            if let Some(s) = lock(&self.inner).job_status.get(&job_id(id)) {
                b.bytes = s.bytes;
            }
        }
        Ok(b)
    }

    /// Deletes a backup's objects, then its record. A running backup is refused (409).
    pub async fn delete_backup(&self, id: &str) -> Result<()> {
        let b = self.backup(id).await?;
        if !b.state.is_final() {
            return Err(Error::BackupRunning {
                instance: b.instance.clone(),
                id: b.id.clone(),
            });
        }
        self.delete_objects(&b).await?;
        self.store.delete_meta(&format!("{PREFIX}{id}")).await?;
        self.backup_step(
            &b,
            EventKind::BackupDeleted,
            format!("backup {} deleted with its objects", b.id),
        )
        .await;
        info!(backup = %id, instance = %b.instance, "backup deleted");
        Ok(())
    }

    /// Deletes every object under the backup's directory in its repository.
    pub(super) async fn delete_objects(&self, b: &Backup) -> Result<()> {
        let repo = self.backup_repo(&b.repo).await.map_err(|e| match e {
            Error::NotFound(_) => Error::Invalid(format!(
                "backup repository {} is gone: the objects of backup {} cannot be deleted",
                b.repo, b.id
            )),
            other => other,
        })?;
        let repo = repo
            .spec
            .open()
            .map_err(|e| Error::Invalid(format!("repository {}: {e}", b.repo)))?;
        let dir = repo.path(&common::dir(&b.instance, &b.id));
        let objects: Vec<_> = repo
            .store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| Error::RepoFailed(format!("listing {dir}: {e}")))?;
        for o in objects {
            repo.store
                .delete(&o.location)
                .await
                .map_err(|e| Error::RepoFailed(format!("deleting {}: {e}", o.location)))?;
        }
        Ok(())
    }

    pub(super) async fn put_backup(&self, b: &Backup) -> Result<()> {
        let json = serde_json::to_string(b).map_err(|e| Error::Invalid(e.to_string()))?;
        self.store
            .put_meta(&format!("{PREFIX}{}", b.id), &json)
            .await?;
        Ok(())
    }

    /// An event and an audit entry for one step of a backup (the store failing to take them
    /// is logged; the backup goes on).
    pub(super) async fn backup_step(&self, b: &Backup, kind: EventKind, message: String) {
        let ev = event(kind, Some(&b.instance), Some(&b.node), message.clone());
        if let Err(e) = self.store.append_events(&[ev]).await {
            warn!(error = %e, "backup event not recorded");
        }
        let entry = AuditEntry {
            id: 0,
            at_ms: now_ms(),
            who: "scheduler".into(),
            source: String::new(),
            action: kind.as_str().to_owned(),
            target: format!("backups/{}", b.id),
            status: 0,
            result: message,
        };
        if let Err(e) = self.store.append_audit(&entry).await {
            warn!(error = %e, "backup audit entry not recorded");
        }
    }
}

/// The position a backup is consistent at, for a message.
fn position(b: &Backup) -> String {
    match (&b.consistent_at.offset, b.consistent_at.gtid.as_str()) {
        (Some(o), _) => format!("offset {o}"),
        (None, "") => "an unknown position".into(),
        (None, g) => format!("GTID {g}"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{cluster, spec, three_ssd_nodes};
    use super::*;
    use mofang_common::proto::{HeartbeatRequest, JobStatus, MemberStatus};

    async fn wait_state(c: &Cluster, id: &str, state: BackupState) -> Backup {
        for _ in 0..500 {
            let b = c.backup(id).await.expect("backup");
            if b.state == state {
                return b;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("backup {id} never became {state}");
    }

    /// An instance's backups are read under its id prefix: another instance whose name
    /// extends it (`db-2` of `db`) is not listed with it; the fleet list has both, oldest
    /// first.
    #[tokio::test]
    async fn backups_of_an_instance_are_its_own_and_the_fleet_list_has_all() {
        let c = cluster(&three_ssd_nodes()).await;
        for (id, instance, at) in [("db-2-5", "db-2", 5), ("db-7", "db", 7), ("db-3", "db", 3)] {
            let b = serde_json::json!({"id": id, "instance": instance, "engine": "mariadb",
                "version": "10.11", "repo": "r", "member": "m", "node": "n",
                "state": "succeeded", "requested_at_ms": at});
            c.store
                .put_meta(&format!("{PREFIX}{id}"), &b.to_string())
                .await
                .expect("record");
        }
        let ids = |bs: Vec<Backup>| bs.into_iter().map(|b| b.id).collect::<Vec<_>>();
        assert_eq!(ids(c.backups_of("db").await.expect("db")), ["db-3", "db-7"]);
        assert_eq!(ids(c.backups_of("db-2").await.expect("db-2")), ["db-2-5"]);
        assert!(c.backups_of("nope").await.is_err());
        assert_eq!(
            ids(c.backups().await.expect("all")),
            ["db-3", "db-2-5", "db-7"]
        );
    }

    /// The record follows the job: pending at once (on the least lagging healthy replica, a
    /// job in its node's desired state), 409 for a second one, running when the agent reports
    /// it, succeeded with the manifest's objects and GTID (the job leaves the desired state), or
    /// failed naming the step; the next one may start once one ended.
    #[tokio::test]
    async fn a_backup_record_follows_its_job() {
        let nodes = three_ssd_nodes();
        let c = cluster(&nodes).await;
        c.activate().await.expect("activate");
        for n in &nodes {
            c.heartbeat(HeartbeatRequest {
                node: n.name.clone(),
                ..Default::default()
            });
        }
        let dir = tempfile::tempdir().expect("tempdir");
        super::super::testkit::put_fs_repo(&*c.store, dir.path()).await;
        let inst = c
            .create_instance(spec("one", 100, None))
            .await
            .expect("create");
        let replicas: Vec<_> = inst
            .members
            .iter()
            .filter(|m| m.role == Role::Replica)
            .cloned()
            .collect();
        for (k, m) in inst.members.iter().enumerate() {
            c.heartbeat(HeartbeatRequest {
                node: m.node.clone(),
                members: vec![MemberStatus {
                    member: m.id.clone(),
                    instance: "one".into(),
                    healthy: true,
                    replication_ok: m.role == Role::Replica,
                    lag_seconds: if m.id == replicas[1].id {
                        0
                    } else {
                        k as i64 + 5
                    },
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        let b = c
            .request_backup("one", "r", Ask::default())
            .await
            .expect("request");
        assert_eq!(b.state, BackupState::Pending);
        assert_eq!(b.member, replicas[1].id, "the least lagging replica");
        let job = c.watch(&b.node).current().jobs.clone();
        assert_eq!(job.len(), 1);
        assert_eq!(job[0].kind, common::JOB_KIND);
        assert_eq!(job[0].params[params::ID], b.id);
        match c.request_backup("one", "r", Ask::default()).await {
            Err(Error::BackupRunning { id, .. }) => assert_eq!(id, b.id),
            other => panic!("a second backup while one runs: {other:?}"),
        }

        let report = |state: &str, step: &str, result: String| HeartbeatRequest {
            node: b.node.clone(),
            jobs: vec![JobStatus {
                id: job[0].id.clone(),
                state: state.into(),
                step: step.into(),
                message: "boom".into(),
                bytes: 42,
                result,
            }],
            ..Default::default()
        };
        c.heartbeat(report("running", "", String::new()));
        let running = wait_state(&c, &b.id, BackupState::Running).await;
        assert_eq!(running.bytes, 42);
        let manifest = Manifest {
            id: b.id.clone(),
            instance: "one".into(),
            engine: "mariadb".into(),
            version: "10.11".into(),
            member: b.member.clone(),
            node: b.node.clone(),
            started_at_ms: 1,
            ended_at_ms: 2,
            consistent_at: common::ConsistentAt {
                gtid: "0-1-9".into(),
                ..Default::default()
            },
            objects: vec![common::ManifestObject {
                name: common::MARIADB_DATA.into(),
                size: 10,
                sha256: "ab".into(),
                raw_size: 30,
                compression: "zstd".into(),
                encryption: None,
            }],
            tools: Default::default(),
            row_counts: None,
            keys: None,
        };
        c.heartbeat(report(
            "succeeded",
            "",
            serde_json::to_string(&manifest).expect("json"),
        ));
        let done = wait_state(&c, &b.id, BackupState::Succeeded).await;
        assert_eq!(done.consistent_at.gtid, "0-1-9");
        assert_eq!(
            done.objects[0].path,
            format!("backups/one/{}/{}", b.id, common::MARIADB_DATA)
        );
        assert_eq!((done.size, done.bytes), (10, 30));
        for _ in 0..500 {
            if c.watch(&b.node).current().jobs.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(c.watch(&b.node).current().jobs.is_empty(), "job taken out");

        // The next one may start; it fails at the agent.
        let mut second = None;
        for _ in 0..500 {
            match c.request_backup("one", "r", Ask::default()).await {
                Ok(b) => {
                    second = Some(b);
                    break;
                }
                Err(Error::BackupRunning { .. }) => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
        let second = second.expect("a second backup once the first ended");
        let jid = job_id(&second.id);
        c.heartbeat(HeartbeatRequest {
            node: second.node.clone(),
            jobs: vec![JobStatus {
                id: jid,
                state: "failed".into(),
                step: "stream".into(),
                message: "mariadb-backup exited with code 137".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let failed = wait_state(&c, &second.id, BackupState::Failed).await;
        assert_eq!(
            failed.reason,
            "stream failed: mariadb-backup exited with code 137"
        );
        let listed = c.backups_of("one").await.expect("list");
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].id, b.id, "oldest first");
    }

    /// A restore is checked before anything is made: the latest succeeded backup when none
    /// is named; a backup of another engine, a missing object and an object whose bytes
    /// changed are refused naming the object; a good one resolves to its object.
    #[tokio::test]
    async fn a_restore_is_refused_naming_the_object_before_anything_is_made() {
        use crate::model::{InstanceSpec, RestoreRequest};
        use sha2::Digest;
        let c = cluster(&three_ssd_nodes()).await;
        let dir = tempfile::tempdir().expect("tempdir");
        super::super::testkit::put_fs_repo(&*c.store, dir.path()).await;
        let data = b"the backed-up bytes".to_vec();
        let backup = |id: &str, state: BackupState, ended: i64, engine: &str| {
            let d = common::dir("old", id);
            std::fs::create_dir_all(dir.path().join(&d)).expect("dir");
            std::fs::write(dir.path().join(&d).join(common::MARIADB_DATA), &data).expect("data");
            std::fs::write(dir.path().join(&d).join(common::MANIFEST), "{}").expect("manifest");
            Backup {
                id: id.into(),
                instance: "old".into(),
                engine: engine.into(),
                version: "10.11".into(),
                repo: "r".into(),
                member: "old-1".into(),
                node: "a".into(),
                state,
                reason: String::new(),
                requested_at_ms: ended - 10,
                started_at_ms: ended - 5,
                ended_at_ms: ended,
                bytes: 100,
                size: data.len() as u64,
                consistent_at: Default::default(),
                objects: vec![crate::backup::BackupObject {
                    path: format!("{d}/{}", common::MARIADB_DATA),
                    size: data.len() as u64,
                    sha256: hex::encode(sha2::Sha256::digest(&data)),
                    raw_size: 100,
                    encryption: None,
                }],
                manifest: format!("{d}/{}", common::MANIFEST),
                tools: Default::default(),
                row_counts: None,
                keys: None,
                verifying: false,
                verified_at_ms: 0,
                verify_ok: None,
                verify_reason: String::new(),
            }
        };
        for b in [
            backup("old-1", BackupState::Succeeded, 1000, "mariadb"),
            backup("old-2", BackupState::Succeeded, 2000, "mariadb"),
            backup("old-3", BackupState::Failed, 3000, "mariadb"),
            backup("old-4", BackupState::Succeeded, 500, "redis"),
        ] {
            c.put_backup(&b).await.expect("record");
        }
        let spec: InstanceSpec = super::super::testkit::spec("new", 100, None);
        let ask = |backup: Option<&str>| RestoreRequest {
            from_instance: "old".into(),
            backup: backup.map(str::to_owned),
            time: None,
        };
        let latest = c.check_restore(&spec, &ask(None)).await.expect("latest");
        assert_eq!(latest.backup, "old-2", "the latest succeeded");
        let refused = |r: Result<crate::model::Restored>| match r {
            Err(Error::RestoreRefused(m)) => m,
            other => panic!("not refused: {other:?}"),
        };
        assert!(refused(c.check_restore(&spec, &ask(Some("old-3"))).await).contains("failed"));
        assert!(refused(c.check_restore(&spec, &ask(Some("old-4"))).await).contains("redis"));
        let object = format!("backups/old/old-1/{}", common::MARIADB_DATA);
        std::fs::remove_file(dir.path().join(&object)).expect("remove");
        let m = refused(c.check_restore(&spec, &ask(Some("old-1"))).await);
        assert!(m.contains(&object), "{m}");
        std::fs::write(dir.path().join(&object), b"the backed-up bytez").expect("tamper");
        let m = refused(c.check_restore(&spec, &ask(Some("old-1"))).await);
        assert!(m.contains(&object) && m.contains("sha256"), "{m}");
        let mut other = spec.clone();
        other.name = "elsewhere".into();
        assert!(refused(
            c.check_restore(
                &other,
                &RestoreRequest {
                    from_instance: "nobody".into(),
                    backup: None,
                    time: None,
                }
            )
            .await
        )
        .contains("no succeeded backup"));
    }
}

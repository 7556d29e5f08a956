//! Carrying out instances' backup policies on the leader (issue 16): each pass takes the
//! slot of `backup.schedule` (and of `backup.verify`) that is due ([`schedule::next_due`]),
//! records it on the instance with a compare-and-set *before* starting the backup (a new
//! leader reloads the record and never runs a slot twice; two schedulers racing on one slot
//! cannot both win), reports missed slots (an event, `mofang_backup_missed_total`), and every
//! [`RETENTION_EVERY`] deletes the backups retention has expired ([`schedule::expired`]) and the
//! archived binlog files no retained backup needs ([`schedule::binlogs_unneeded`]).

use super::{lock, Cluster, Error, Result};
use crate::backup::plan::Ask;
use crate::backup::schedule::{self, Archived, BackupPolicy, Kept};
use crate::backup::{Backup, BackupState, PREFIX};
use crate::model::{now_ms, EventKind, Instance};
use mofang_common::pitr;
use std::sync::Arc;
use tracing::{info, warn};

/// How often retention looks at an instance's backups and archive.
pub const RETENTION_EVERY_MS: i64 = 5_000;

/// Which of an instance's schedules a slot is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Backup,
    Verify,
}

impl Cluster {
    /// One pass of the leader over every instance with a backup policy.
    pub async fn run_schedules(self: &Arc<Self>) {
        self.run_schedules_at(now_ms()).await
    }

    /// [`Cluster::run_schedules`] at the time `now` (unix ms).
    pub(super) async fn run_schedules_at(self: &Arc<Self>, now: i64) {
        let with_policy: Vec<Instance> = lock(&self.inner)
            .instances
            .values()
            .filter(|i| i.revision > 0 && i.spec.backup.is_some())
            .cloned()
            .collect();
        for inst in with_policy {
            let Some(policy) = inst.spec.backup.clone() else {
                continue;
            };
            let inst = match self.take_slot(inst, &policy, Which::Backup, now).await {
                Ok(i) => i,
                Err(e) => {
                    warn!(error = %e, "backup schedule not evaluated");
                    continue;
                }
            };
            if let Err(e) = self
                .take_slot(inst.clone(), &policy, Which::Verify, now)
                .await
            {
                warn!(instance = %inst.spec.name, error = %e, "verify schedule not evaluated");
            }
            let due = {
                let mut inner = lock(&self.inner);
                let last = inner
                    .retention_at
                    .get(&inst.spec.name)
                    .copied()
                    .unwrap_or(0);
                let due = now - last >= RETENTION_EVERY_MS;
                if due {
                    inner.retention_at.insert(inst.spec.name.clone(), now);
                }
                due
            };
            if due {
                if let Err(e) = self.apply_retention(&inst.spec.name, &policy, now).await {
                    warn!(instance = %inst.spec.name, error = %e, "retention not applied; retried at its next pass");
                }
            }
        }
    }

    /// Runs the slot of one schedule if one is due: recorded first (compare-and-set on the
    /// instance's revision: a conflict means another writer, perhaps another leader, moved
    /// it; the next pass looks again), then the backup or verification asked for. Returns
    /// the instance as stored.
    async fn take_slot(
        self: &Arc<Self>,
        inst: Instance,
        policy: &BackupPolicy,
        which: Which,
        now: i64,
    ) -> Result<Instance> {
        let name = inst.spec.name.clone();
        let (expr, last) = match which {
            Which::Backup => (Some(policy.schedule.as_str()), inst.backup_slot_ms),
            Which::Verify => (policy.verify.as_deref(), inst.verify_slot_ms),
        };
        let Some(expr) = expr else {
            return Ok(inst);
        };
        let cron = schedule::parse_cron(expr).map_err(Error::Invalid)?;
        let Some(due) = schedule::next_due(&cron, last, now) else {
            return Ok(inst);
        };
        let mut next = inst.clone();
        match which {
            Which::Backup => next.backup_slot_ms = due.slot_ms,
            Which::Verify => next.verify_slot_ms = due.slot_ms,
        }
        let stored = self.write(next, vec![]).await?;
        let what = match which {
            Which::Backup => "backup",
            Which::Verify => "verification",
        };
        if due.missed > 0 {
            self.report_missed(
                &name,
                u64::from(due.missed),
                format!(
                    "{} slots of the {what} schedule {expr:?} passed without a run (no scheduler leading); running the latest, {}",
                    due.missed,
                    pitr::format_utc(due.slot_ms / 1000)
                ),
            )
            .await;
        }
        let outcome = match which {
            Which::Backup => self
                .request_backup(&name, &policy.repo, Ask::default())
                .await
                .map(|b| b.id),
            Which::Verify => match self.latest_succeeded(&name).await {
                Ok(Some(b)) => self.request_verify(&b.id).await.map(|b| b.id),
                Ok(None) => Err(Error::Invalid(format!(
                    "instance {name} has no succeeded backup to verify"
                ))),
                Err(e) => Err(e),
            },
        };
        match outcome {
            Ok(id) => {
                info!(instance = %name, slot = due.slot_ms, backup = %id, "scheduled {what} started")
            }
            Err(e) => {
                self.report_missed(
                    &name,
                    1,
                    format!(
                        "the scheduled {what} of {} did not start: {e}",
                        pitr::format_utc(due.slot_ms / 1000)
                    ),
                )
                .await
            }
        }
        Ok(stored)
    }

    async fn report_missed(&self, instance: &str, n: u64, message: String) {
        warn!(instance, missed = n, "{message}");
        *lock(&self.inner)
            .backup_missed
            .entry(instance.to_owned())
            .or_default() += n;
        let ev = super::event(EventKind::BackupMissed, Some(instance), None, message);
        if let Err(e) = self.store.append_events(&[ev]).await {
            warn!(error = %e, "backup_missed event not recorded");
        }
    }

    /// The newest succeeded backup of `instance` (by end time), if any.
    pub(super) async fn latest_succeeded(&self, instance: &str) -> Result<Option<Backup>> {
        Ok(self
            .all_backups()
            .await?
            .into_iter()
            .filter(|b| b.instance == instance && b.state == BackupState::Succeeded)
            .max_by(|a, b| a.ended_at_ms.cmp(&b.ended_at_ms).then(a.id.cmp(&b.id))))
    }

    /// Deletes what retention expired of `instance` in the policy's repository: backups
    /// (objects, then record), then archived binlog files that end at or before the oldest
    /// retained backup's GTID (index first: data without an index is ignored).
    async fn apply_retention(&self, instance: &str, policy: &BackupPolicy, now: i64) -> Result<()> {
        let mine: Vec<Backup> = self
            .all_backups()
            .await?
            .into_iter()
            .filter(|b| b.instance == instance && b.repo == policy.repo)
            .collect();
        let seen: Vec<Kept> = mine
            .iter()
            .map(|b| Kept {
                id: b.id.clone(),
                succeeded: b.state == BackupState::Succeeded,
                ended: b.state.is_final(),
                ended_at_ms: b.ended_at_ms,
            })
            .collect();
        let expired = schedule::expired(&seen, &policy.retention, now);
        for id in &expired {
            let Some(b) = mine.iter().find(|b| &b.id == id) else {
                continue;
            };
            if b.verifying {
                continue;
            }
            self.delete_objects(b).await?;
            self.store.delete_meta(&format!("{PREFIX}{id}")).await?;
            self.backup_step(
                b,
                EventKind::BackupExpired,
                format!(
                    "backup {id} expired (retention {}): deleted with its objects",
                    serde_json::to_string(&policy.retention).unwrap_or_default()
                ),
            )
            .await;
            info!(backup = %id, instance, "backup expired: deleted");
        }
        let oldest = mine
            .iter()
            .filter(|b| b.state == BackupState::Succeeded && !expired.contains(&b.id))
            .min_by(|a, b| a.ended_at_ms.cmp(&b.ended_at_ms).then(a.id.cmp(&b.id)));
        let Some(oldest) = oldest else {
            return Ok(());
        };
        if oldest.engine != "mariadb" {
            return Ok(());
        }
        let indexes = self.archive_indexes(&policy.repo, instance).await?;
        let files: Vec<Archived> = indexes
            .iter()
            .map(|i| Archived {
                domain: i.domain,
                last: i.last,
            })
            .collect();
        let unneeded =
            schedule::binlogs_unneeded(&files, pitr::single_domain(&oldest.consistent_at.gtid));
        if unneeded.is_empty() {
            return Ok(());
        }
        let spec = self.backup_repo(&policy.repo).await?;
        let repo = spec
            .spec
            .open()
            .map_err(|e| Error::RepoFailed(format!("repository {}: {e}", policy.repo)))?;
        for k in &unneeded {
            let idx = &indexes[*k];
            let index = repo.path(&pitr::index_object(instance, idx));
            let key = format!("{}/{index}", policy.repo);
            repo.store
                .delete(&index)
                .await
                .map_err(|e| Error::RepoFailed(format!("deleting {index}: {e}")))?;
            lock(&self.inner).binlog_indexes.remove(&key);
            let data = repo.path(&idx.object);
            repo.store
                .delete(&data)
                .await
                .map_err(|e| Error::RepoFailed(format!("deleting {data}: {e}")))?;
        }
        let message = format!(
            "{} archived binlog files ending at or before GTID {} of backup {}, the oldest retained, deleted",
            unneeded.len(),
            oldest.consistent_at.gtid,
            oldest.id
        );
        info!(instance, files = unneeded.len(), "{message}");
        self.backup_step(oldest, EventKind::BackupExpired, message)
            .await;
        Ok(())
    }

    /// Scheduled backups and verifications missed per instance with a backup policy, by
    /// name (`mofang_backup_missed_total`), from 0 so that `increase()` sees the first miss.
    /// Leader only: empty on a follower.
    pub fn backup_missed(&self) -> std::collections::BTreeMap<String, u64> {
        if !self.is_active() {
            return Default::default();
        }
        let inner = lock(&self.inner);
        let mut missed: std::collections::BTreeMap<String, u64> = inner
            .instances
            .values()
            .filter(|i| i.spec.backup.is_some())
            .map(|i| (i.spec.name.clone(), 0))
            .collect();
        for (name, n) in &inner.backup_missed {
            missed.insert(name.clone(), *n);
        }
        missed
    }

    /// Backup health per existing instance, by name, from the backup records
    /// ([`schedule::health`]): what `GET /v1/backup-health` answers and what `/metrics`
    /// exports.
    pub async fn backup_health(&self) -> Result<Vec<BackupHealthView>> {
        let backups = self.all_backups().await?;
        let instances: Vec<(String, Option<String>, i64)> = lock(&self.inner)
            .instances
            .values()
            .map(|i| {
                (
                    i.spec.name.clone(),
                    i.spec.backup.as_ref().map(|p| p.schedule.clone()),
                    i.backup_slot_ms,
                )
            })
            .collect();
        let now = now_ms();
        // Grouped once: the fleet's backups are read once for all instances.
        let mut by_instance: std::collections::HashMap<&str, Vec<&Backup>> =
            std::collections::HashMap::new();
        for b in &backups {
            by_instance.entry(b.instance.as_str()).or_default().push(b);
        }
        let mut out: Vec<BackupHealthView> = instances
            .into_iter()
            .map(|(name, expr, slot_ms)| {
                let seen: Vec<schedule::Seen> = by_instance
                    .get(name.as_str())
                    .into_iter()
                    .flatten()
                    .map(|b| schedule::Seen {
                        requested_ms: b.requested_at_ms,
                        started_ms: b.started_at_ms,
                        ended_ms: b.ended_at_ms,
                        succeeded: match b.state {
                            BackupState::Succeeded => Some(true),
                            BackupState::Failed => Some(false),
                            _ => None,
                        },
                        size: b.size,
                        verified_ms: b.verified_at_ms,
                        verify_ok: b.verify_ok,
                    })
                    .collect();
                let cron = expr.as_deref().and_then(|e| schedule::parse_cron(e).ok());
                let h = schedule::health(&seen, cron.as_ref(), slot_ms, now);
                BackupHealthView {
                    instance: name,
                    schedule: expr,
                    backups: seen.len(),
                    last_success_ms: h.last_success.map(|s| s.0),
                    last_duration_ms: h.last_success.map(|s| s.1),
                    last_size: h.last_success.map(|s| s.2),
                    last_failed: h.last_failed,
                    verify_failed: h.verify_failed,
                    overdue_s: h.overdue_s,
                }
            })
            .collect();
        out.sort_by(|a, b| a.instance.cmp(&b.instance));
        Ok(out)
    }
}

/// What an instance's backups say about its health (`GET /v1/backup-health`; the same
/// figures as the `mofang_backup_*` metrics).
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct BackupHealthView {
    /// The instance.
    pub instance: String,
    /// Its backup schedule (cron), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// How many backup records it has.
    pub backups: usize,
    /// End of the newest succeeded backup (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_ms: Option<i64>,
    /// Its duration (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_duration_ms: Option<i64>,
    /// Bytes it stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_size: Option<u64>,
    /// Whether the newest finished backup failed (absent: none finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed: Option<bool>,
    /// Whether the newest verification failed (absent: none ended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_failed: Option<bool>,
    /// With a schedule: seconds since the first slot after the newest succeeded backup was
    /// asked for, 0 before it (`mofang_backup_overdue_seconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overdue_s: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{cluster_on, spec, three_ssd_nodes};
    use super::*;
    use crate::backup::schedule::Retention;
    use crate::store::sqlite::SqliteStore;
    use crate::store::Store;

    async fn kinds(store: &dyn Store) -> Vec<String> {
        store
            .events(Some("one"), 0, 1000)
            .await
            .expect("events")
            .into_iter()
            .filter(|e| e.kind == "backup_missed")
            .map(|e| e.message)
            .collect()
    }

    /// A slot is recorded on the instance before it runs and runs once: again at the same
    /// time nothing happens, a new leader loaded from the store does not run it again, the old
    /// leader's stale record loses the compare-and-set; slots that passed unrun are reported
    /// (and a backup that cannot start is reported too), and counted in the metrics.
    #[tokio::test]
    async fn a_slot_runs_once_across_leaders_and_missed_ones_are_reported() {
        let nodes = three_ssd_nodes();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open_in_memory().expect("in-memory store"));
        let beat = |c: &Cluster| {
            for n in &nodes {
                c.heartbeat(mofang_common::proto::HeartbeatRequest {
                    node: n.name.clone(),
                    ..Default::default()
                });
            }
        };
        let c1 = cluster_on(store.clone(), &nodes).await;
        c1.activate().await.expect("activate");
        beat(&c1);
        let dir = tempfile::tempdir().expect("tempdir");
        super::super::testkit::put_fs_repo(&*store, dir.path()).await;
        let mut s = spec("one", 100, None);
        s.backup = Some(BackupPolicy {
            repo: "r".into(),
            schedule: "* * * * * *".into(),
            retention: Retention::default(),
            verify: None,
        });
        let inst = c1.create_instance(s).await.expect("create");
        assert_eq!(inst.backup_slot_ms, inst.created_at_ms);
        // 2.5 s later: two or three slots passed; the latest runs (and cannot start: no member
        // reported healthy), the others are reported missed.
        let t = (inst.created_at_ms / 1000 + 3) * 1000 + 500;
        c1.run_schedules_at(t).await;
        let stored = store.instance("one").await.expect("read").expect("one");
        assert_eq!(stored.backup_slot_ms, t - 500, "the latest slot, recorded");
        let first = kinds(store.as_ref()).await;
        assert_eq!(first.len(), 2, "{first:?}");
        assert!(first[0].contains("passed without a run"), "{first:?}");
        assert!(first[1].contains("did not start"), "{first:?}");
        c1.run_schedules_at(t).await;
        assert_eq!(kinds(store.as_ref()).await.len(), 2, "a slot runs once");

        // A new leader on the same store: the slot is taken already.
        let c2 = cluster_on(store.clone(), &nodes).await;
        c2.activate().await.expect("activate");
        beat(&c2);
        c2.run_schedules_at(t).await;
        assert_eq!(
            kinds(store.as_ref()).await.len(),
            2,
            "not run again by a new leader"
        );
        c2.run_schedules_at(t + 1000).await;
        assert_eq!(kinds(store.as_ref()).await.len(), 3, "the next slot runs");
        // The old leader, unaware, with its stale record: its write loses.
        c1.run_schedules_at(t + 1000).await;
        assert_eq!(kinds(store.as_ref()).await.len(), 3, "no double run");
        assert_eq!(
            store
                .instance("one")
                .await
                .expect("read")
                .expect("one")
                .backup_slot_ms,
            t + 500
        );
        assert_eq!(c2.backup_missed().get("one"), Some(&1));
        // Backup health: the schedule's overdue figure for the instance, on the leader.
        let health = c2.backup_health().await.expect("health");
        assert!(health
            .iter()
            .any(|h| h.instance == "one" && h.overdue_s.is_some()));
    }
}

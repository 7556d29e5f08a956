//! Point-in-time restore on the scheduler (issue 16): which repository each MariaDB
//! instance's primary archives its binlogs to (that of its latest succeeded full backup, from
//! that backup's GTID on: `Assignment.archive`), the archive's readiness and window per
//! instance, refreshed from the repository by the leader every few seconds (events when a
//! gap appears or is closed), and the plan of a restore to a time. The decisions are
//! `mofang_common::pitr`'s pure functions; this file reads the repository and the records.

use super::{event, lock, Cluster, Error, Result};
use crate::backup::{Backup, BackupState};
use crate::model::{now_ms, EventKind};
use futures::TryStreamExt;
use mofang_common::backup::RestoreBinlog;
use mofang_common::pitr::{self, BackupPoint, BinlogIndex, Readiness};
use mofang_common::{EngineKind, Role};
use std::collections::BTreeMap;
use tracing::{info, warn};

/// Where an instance's primary archives: the repository and GTID of its latest full backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ArchiveFrom {
    pub repo: String,
    pub gtid: String,
}

/// The PITR state of an instance as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct PitrWindow {
    /// Earliest time it can be restored to (RFC 3339, whole seconds).
    pub from: String,
    /// Latest time it can be restored to.
    pub to: String,
}

/// An archive as the API shows it: ready, why not, the window, the lag in seconds (the
/// figure `mofang_pitr_archive_lag_seconds` exports).
pub(super) type PitrView = (
    Option<bool>,
    Option<String>,
    Option<PitrWindow>,
    Option<i64>,
);

/// The archive seen at the last refresh.
#[derive(Debug, Clone, Default)]
pub(super) struct PitrSeen {
    pub readiness: Readiness,
    /// Seconds between now and the latest event archived, at the refresh.
    pub lag_s: Option<i64>,
    /// Why the last refresh could not read the archive (the readiness is the one before).
    pub error: Option<String>,
}

fn points(backups: &[Backup], instance: &str, repo: &str) -> Vec<BackupPoint> {
    backups
        .iter()
        .filter(|b| {
            b.instance == instance
                && b.repo == repo
                && b.state == BackupState::Succeeded
                && b.engine == EngineKind::Mariadb.to_string()
        })
        .map(|b| BackupPoint {
            id: b.id.clone(),
            gtid: b.consistent_at.gtid.clone(),
            ended_at_ms: b.ended_at_ms,
        })
        .collect()
}

/// The latest succeeded MariaDB backup of each instance: where its archive goes.
fn latest_backups(backups: &[Backup]) -> BTreeMap<String, ArchiveFrom> {
    let mut out: BTreeMap<String, (i64, ArchiveFrom)> = BTreeMap::new();
    for b in backups.iter().filter(|b| {
        b.state == BackupState::Succeeded && b.engine == EngineKind::Mariadb.to_string()
    }) {
        let newer = out.get(&b.instance).is_none_or(|(t, _)| b.ended_at_ms > *t);
        if newer {
            out.insert(
                b.instance.clone(),
                (
                    b.ended_at_ms,
                    ArchiveFrom {
                        repo: b.repo.clone(),
                        gtid: b.consistent_at.gtid.clone(),
                    },
                ),
            );
        }
    }
    out.into_iter().map(|(k, (_, a))| (k, a)).collect()
}

impl Cluster {
    /// `[backup] archive_interval_s`.
    pub fn set_archive_interval(&self, seconds: u64) {
        lock(&self.inner).archive_interval_s = seconds;
    }

    /// The archive target of `instance`'s primary (JSON), or empty.
    pub(super) fn archive_target(inner: &super::Inner, i: &crate::model::Instance) -> String {
        if i.spec.engine != EngineKind::Mariadb {
            return String::new();
        }
        let Some(from) = inner.archives.get(&i.spec.name) else {
            return String::new();
        };
        let Some(repo) = inner.repos.get(&from.repo) else {
            return String::new();
        };
        let target = pitr::ArchiveTarget {
            repo: repo.clone(),
            instance: i.spec.name.clone(),
            after: from.gtid.clone(),
            interval_s: if inner.archive_interval_s == 0 {
                60
            } else {
                inner.archive_interval_s
            },
        };
        serde_json::to_string(&target).unwrap_or_default()
    }

    /// Sets where each instance archives from the backup records; the primaries whose target
    /// changed get a new desired state.
    pub(super) async fn refresh_archives(&self) -> Result<()> {
        let backups = self.all_backups().await?;
        self.set_archives(&backups);
        Ok(())
    }

    fn set_archives(&self, backups: &[Backup]) {
        let latest = latest_backups(backups);
        let mut inner = lock(&self.inner);
        let mut nodes = Vec::new();
        for (name, i) in &inner.instances {
            if latest.get(name) != inner.archives.get(name) {
                nodes.extend(
                    i.members
                        .iter()
                        .filter(|m| m.role == Role::Primary)
                        .map(|m| m.node.clone()),
                );
            }
        }
        inner.archives = latest;
        self.push_nodes(&mut inner, &nodes);
    }

    /// The archive's indexes of `instance` in `repo`: listed, and each new one read once
    /// (they never change).
    pub(super) async fn archive_indexes(
        &self,
        repo: &str,
        instance: &str,
    ) -> Result<Vec<BinlogIndex>> {
        let spec = lock(&self.inner)
            .repos
            .get(repo)
            .cloned()
            .ok_or_else(|| Error::RepoFailed(format!("repository {repo} is gone")))?;
        let store = spec
            .open()
            .map_err(|e| Error::RepoFailed(format!("repository {repo}: {e}")))?;
        let dir = store.path(&pitr::archive_dir(instance));
        let listed: Vec<_> = store
            .store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| Error::RepoFailed(format!("listing {dir}: {e}")))?;
        let mut out = Vec::new();
        for o in listed {
            let key = format!("{repo}/{}", o.location);
            if pitr::last_from_index_name(o.location.as_ref()).is_none() {
                continue;
            }
            if let Some(idx) = lock(&self.inner).binlog_indexes.get(&key).cloned() {
                out.push(idx);
                continue;
            }
            let bytes = store
                .store
                .get(&o.location)
                .await
                .map_err(|e| Error::RepoFailed(format!("reading {}: {e}", o.location)))?
                .bytes()
                .await
                .map_err(|e| Error::RepoFailed(format!("reading {}: {e}", o.location)))?;
            match serde_json::from_slice::<BinlogIndex>(&bytes) {
                Ok(idx) => {
                    lock(&self.inner).binlog_indexes.insert(key, idx.clone());
                    out.push(idx);
                }
                Err(e) => {
                    warn!(object = %o.location, error = %e, "binlog index unreadable: ignored")
                }
            }
        }
        Ok(out)
    }

    /// The leader's refresh: archive targets from the backup records, then each archiving
    /// instance's readiness and window from its archive, with an event when a gap appears
    /// (`pitr_gap`) or is closed (`pitr_ready`).
    pub async fn refresh_pitr(&self) {
        let backups = match self.all_backups().await {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "backups not read: archive targets not refreshed");
                return;
            }
        };
        self.set_archives(&backups);
        let targets: Vec<(String, String)> = {
            let inner = lock(&self.inner);
            inner
                .archives
                .iter()
                .filter(|(name, _)| inner.instances.contains_key(*name))
                .map(|(name, a)| (name.clone(), a.repo.clone()))
                .collect()
        };
        for (instance, repo) in targets {
            let indexes = match self.archive_indexes(&repo, &instance).await {
                Ok(i) => i,
                Err(e) => {
                    let e = e.to_string();
                    let mut inner = lock(&self.inner);
                    let seen = inner.pitr.entry(instance.clone()).or_default();
                    // Logged once per distinct error, not every refresh.
                    if seen.error.as_ref() != Some(&e) {
                        warn!(instance = %instance, error = %e, "binlog archive not read");
                        seen.error = Some(e);
                    }
                    continue;
                }
            };
            let pts = points(&backups, &instance, &repo);
            let r = pitr::readiness(&pts, &indexes);
            // The primary's position (heartbeats) beyond what is archived: the oldest
            // unarchived transaction is at most this old.
            let primary_seq = {
                let inner = lock(&self.inner);
                inner
                    .instances
                    .get(&instance)
                    .and_then(|i| i.members.iter().find(|m| m.role == Role::Primary))
                    .and_then(|m| inner.live.get(&m.node)?.members.get(&m.id))
                    .map(|s| {
                        mofang_common::position::Position::parse(&s.position)
                            .domains()
                            .map(|(_, n)| n)
                            .max()
                            .unwrap_or(0)
                    })
            };
            let since = r
                .archived_ts
                .or_else(|| pts.iter().map(|b| b.ended_at_ms / 1000).max());
            let lag_s = match (primary_seq, since) {
                (Some(seq), Some(t)) if seq > r.reached => Some((now_ms() / 1000 - t).max(0)),
                (Some(_), _) => Some(0),
                (None, _) => None,
            };
            let before = lock(&self.inner)
                .pitr
                .insert(
                    instance.clone(),
                    PitrSeen {
                        readiness: r.clone(),
                        lag_s,
                        error: None,
                    },
                )
                .map(|s| s.readiness.ready);
            let changed = match before {
                None => !r.ready,
                Some(was) => was != r.ready,
            };
            if changed {
                let (kind, message) = if r.ready {
                    info!(instance = %instance, "binlog archive continues the latest backup again");
                    (
                        EventKind::PitrReady,
                        "the binlog archive continues the latest full backup: point-in-time restore is ready".to_owned(),
                    )
                } else {
                    warn!(instance = %instance, reason = %r.reason, "point-in-time restore not ready");
                    (
                        EventKind::PitrGap,
                        format!("point-in-time restore not ready: {}", r.reason),
                    )
                };
                let ev = event(kind, Some(&instance), None, message);
                if let Err(e) = self.store.append_events(&[ev]).await {
                    warn!(error = %e, "pitr event not recorded");
                }
            }
        }
    }

    /// What the API shows of an instance's archive: ready, why not, the window, the lag.
    pub(super) fn pitr_view(inner: &super::Inner, instance: &str) -> PitrView {
        match inner.pitr.get(instance) {
            None => (None, None, None, None),
            Some(s) => (
                Some(s.readiness.ready),
                match &s.error {
                    Some(e) => Some(format!("the binlog archive could not be read: {e}")),
                    None => Some(s.readiness.reason.clone()).filter(|r| !r.is_empty()),
                },
                s.readiness.window.map(|w| PitrWindow {
                    from: pitr::format_utc(w.from),
                    to: pitr::format_utc(w.to),
                }),
                s.lag_s,
            ),
        }
    }

    /// What `/metrics` exports of the binlog archives, per archiving instance by name: the
    /// archive lag (`mofang_pitr_archive_lag_seconds`: 0 when the primary holds nothing
    /// unarchived, else the seconds since the latest archived event; `None` not known yet) and
    /// whether the archive continues the latest full backup (`mofang_pitr_ready`). Only the
    /// leader, which refreshes them, exports them: empty on a follower.
    pub fn pitr_states(&self) -> Vec<(String, Option<i64>, bool)> {
        if !self.is_active() {
            return Vec::new();
        }
        let inner = lock(&self.inner);
        inner
            .pitr
            .iter()
            .filter(|(k, _)| inner.instances.contains_key(*k))
            .map(|(name, s)| (name.clone(), s.lag_s, s.readiness.ready))
            .collect()
    }

    /// Plans a restore of `from_instance` to `time`: the backup (named, or the latest that
    /// ended at or before it) and the archived files to replay, each checked to exist with
    /// its recorded size. Refused (422) naming the window when the time is outside it.
    pub(super) async fn plan_pitr(
        &self,
        from_instance: &str,
        named: Option<&str>,
        time: &str,
    ) -> Result<(Backup, Vec<RestoreBinlog>, i64)> {
        let refuse = |m: String| Error::RestoreRefused(m);
        let at = pitr::parse_utc(time).map_err(|e| Error::Invalid(format!("restore.time: {e}")))?;
        let backups = self.all_backups().await?;
        // The archive is per repository: the one of the latest backup (where it goes now).
        let latest = latest_backups(&backups);
        let Some(from) = latest.get(from_instance) else {
            return Err(refuse(format!(
                "instance {from_instance} has no succeeded MariaDB backup to restore to a time from"
            )));
        };
        let indexes = self
            .archive_indexes(&from.repo, from_instance)
            .await
            .map_err(|e| refuse(e.to_string()))?;
        let pts = points(&backups, from_instance, &from.repo);
        let plan = pitr::plan(from_instance, &pts, &indexes, at, named)
            .map_err(|e| refuse(e.to_string()))?;
        let b = backups
            .into_iter()
            .find(|b| b.id == plan.backup)
            .ok_or_else(|| refuse(format!("backup {} not found", plan.backup)))?;
        let spec = lock(&self.inner)
            .repos
            .get(&from.repo)
            .cloned()
            .ok_or_else(|| refuse(format!("repository {} is gone", from.repo)))?;
        let store = spec
            .open()
            .map_err(|e| refuse(format!("repository {}: {e}", from.repo)))?;
        let mut files = Vec::new();
        for s in &plan.steps {
            let idx = &indexes[s.index];
            match store.store.head(&store.path(&idx.object)).await {
                Ok(m) if m.size == idx.size => {}
                Ok(m) => {
                    return Err(refuse(format!(
                        "binlog object {} is {} bytes, recorded {}",
                        idx.object, m.size, idx.size
                    )))
                }
                Err(e) => {
                    return Err(refuse(format!(
                        "binlog object {} in repository {}: {e}",
                        idx.object, from.repo
                    )))
                }
            }
            files.push(RestoreBinlog {
                object: idx.object.clone(),
                size: idx.size,
                sha256: idx.sha256.clone(),
                after: s.after.clone(),
                encryption: idx.encryption.clone(),
            });
        }
        info!(instance = %from_instance, backup = %b.id, files = files.len(), at = %pitr::format_utc(at),
            "point-in-time restore planned");
        Ok((b, files, at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::testkit::backup_record as backup;

    /// Each instance archives to the repository of its latest succeeded backup, from its GTID.
    #[test]
    fn the_latest_succeeded_backup_says_where_to_archive() {
        let l = latest_backups(&[
            backup("a1", "a", BackupState::Succeeded, 10, "r1"),
            backup("a2", "a", BackupState::Succeeded, 20, "r2"),
            backup("a3", "a", BackupState::Failed, 30, "r1"),
            backup("b1", "b", BackupState::Running, 5, "r1"),
        ]);
        assert_eq!(
            l.get("a"),
            Some(&ArchiveFrom {
                repo: "r2".into(),
                gtid: "0-1-20".into()
            })
        );
        assert!(!l.contains_key("b"));
    }

    /// Through the cluster, on a directory repository: a gap in the archive after the latest
    /// backup is shown (`pitr_ready: false`, the reason, the window up to the gap), recorded
    /// as a `pitr_gap` event and as `mofang_pitr_ready 0`; the next backup, taken after the
    /// gap, closes it (`pitr_ready` event, the window from that backup) and the primary's
    /// assignment archives from its GTID.
    #[tokio::test]
    async fn a_gap_is_reported_and_closed_by_the_next_backup() {
        use super::super::testkit::{cluster, spec, three_ssd_nodes};
        let nodes = three_ssd_nodes();
        let c = cluster(&nodes).await;
        let dir = tempfile::tempdir().expect("tempdir");
        super::super::testkit::put_fs_repo(&*c.store, dir.path()).await;
        c.activate().await.expect("activate");
        for n in &nodes {
            c.heartbeat(mofang_common::proto::HeartbeatRequest {
                node: n.name.clone(),
                ..Default::default()
            });
        }
        let inst = c
            .create_instance(spec("db", 100, None))
            .await
            .expect("create");
        let put_backup = |id: &str, seq: u64, ended_ms: i64| {
            let mut b = backup(id, "db", BackupState::Succeeded, ended_ms, "r");
            b.consistent_at.gtid = format!("0-1-{seq}");
            let c = c.clone();
            async move {
                c.store
                    .put_meta(
                        &format!("backup/{}", b.id),
                        &serde_json::to_string(&b).expect("json"),
                    )
                    .await
                    .expect("backup record");
            }
        };
        let put_index = |begin: u64, first: u64, last: u64, ts: (i64, i64)| {
            let idx = BinlogIndex {
                instance: "db".into(),
                member: "db-0".into(),
                server_id: 1,
                file: format!("mysql-bin.{first:06}"),
                object: format!("binlogs/db/data/{first}.zst"),
                size: 1,
                sha256: String::new(),
                raw_size: 1,
                domain: 0,
                begin,
                first,
                last,
                first_gtid: format!("0-1-{first}"),
                last_gtid: format!("0-1-{last}"),
                transactions: last - first + 1,
                first_ts: ts.0,
                last_ts: ts.1,
                archived_at_ms: ts.1 * 1000,
                encryption: None,
            };
            let path = dir.path().join(pitr::index_object("db", &idx));
            std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
            std::fs::write(path, serde_json::to_vec(&idx).expect("json")).expect("index");
        };
        put_backup("db-1", 10, 100_500).await;
        put_index(0, 1, 30, (100, 130));
        put_index(45, 46, 70, (150, 170)); // 31..=45 were never archived
        c.refresh_pitr().await;
        let v = c.instance("db").expect("view");
        assert_eq!(v.pitr_ready, Some(false));
        assert!(
            v.pitr_reason
                .as_deref()
                .unwrap_or("")
                .contains("0-*-31..45"),
            "{v:?}"
        );
        assert_eq!(
            v.pitr_window,
            Some(PitrWindow {
                from: pitr::format_utc(101),
                to: pitr::format_utc(130)
            })
        );
        assert_eq!(c.pitr_states(), [("db".to_owned(), None, false)]);
        let kinds = |evs: Vec<crate::model::Event>| -> Vec<String> {
            evs.into_iter()
                .map(|e| e.kind)
                .filter(|k| k.starts_with("pitr"))
                .collect()
        };
        let evs = c.store.events(Some("db"), 0, 100).await.expect("events");
        assert_eq!(kinds(evs), ["pitr_gap"]);

        put_backup("db-2", 50, 155_000).await;
        c.refresh_pitr().await;
        let v = c.instance("db").expect("view");
        assert_eq!(
            (v.pitr_ready, v.pitr_reason.clone()),
            (Some(true), None),
            "{v:?}"
        );
        assert_eq!(
            v.pitr_window,
            Some(PitrWindow {
                from: pitr::format_utc(155),
                to: pitr::format_utc(170)
            })
        );
        let evs = c.store.events(Some("db"), 0, 100).await.expect("events");
        assert_eq!(kinds(evs), ["pitr_gap", "pitr_ready"]);
        let primary = inst
            .members
            .iter()
            .find(|m| m.role == Role::Primary)
            .expect("primary");
        let ds = c.watch(&primary.node).current();
        let a = ds
            .members
            .iter()
            .find(|a| a.member == primary.id)
            .expect("assignment");
        let target: pitr::ArchiveTarget = serde_json::from_str(&a.archive).expect("archive target");
        assert_eq!(
            (target.after.as_str(), target.instance.as_str()),
            ("0-1-50", "db")
        );
        assert!(ds
            .members
            .iter()
            .filter(|x| x.member != primary.id)
            .all(|x| x.archive.is_empty()));
    }
}

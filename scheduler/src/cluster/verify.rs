//! Verifying backups (issue 16): a `verify` job on an agent restores the backup into a
//! throwaway container (the restore path: object read with its sha256 checked, MariaDB
//! unpacked and prepared, a server started on it; Redis loaded from the RDB) and reports what
//! it counted; the scheduler compares that with the counts the manifest recorded at backup
//! time ([`schedule::count_mismatch`]) and records the outcome on the backup (`verified_at_ms`,
//! `verify_ok`, `verify_reason`). One task per verification on the leader, like a backup's.

use super::{lock, Cluster, Error, Result};
use crate::backup::schedule;
use crate::backup::{Backup, BackupState};
use crate::model::{now_ms, EventKind, NodeState};
use mofang_common::backup::{self as common, params, verify_params, VerifyFound};
use mofang_common::proto::Job;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn, Instrument};

/// How often a verification's job is looked at when no heartbeat wakes its task.
const TICK: Duration = Duration::from_secs(1);

/// A job id of its own per verification: a verification asked again right after one ended
/// must not be taken for the old job by an agent that has not yet dropped it.
fn job_id(backup: &str) -> String {
    format!("verify-{backup}-{}", now_ms())
}

/// The node a verification runs on: the backup's own node if it is up (its agent reached the
/// repository), else the first node up by name. Pure.
pub fn verify_node(backup_node: &str, up: &[String]) -> Option<String> {
    if up.iter().any(|n| n == backup_node) {
        return Some(backup_node.to_owned());
    }
    let mut up = up.to_vec();
    up.sort();
    up.into_iter().next()
}

/// The outcome of a verification from what the agent counted and what the manifest
/// recorded: `(ok, reason)`.
pub fn judge(b: &Backup, found: &VerifyFound) -> (bool, String) {
    if b.engine == "redis" {
        return match (b.keys, found.keys) {
            (Some(r), Some(f)) if r == f => (
                true,
                format!("the RDB loaded; {f} keys, as recorded at backup time"),
            ),
            (Some(r), Some(f)) => (
                false,
                format!("key count differs: {r} recorded at backup time, {f} loaded"),
            ),
            (None, Some(f)) => (
                true,
                format!("the RDB loaded with {f} keys; no key count was recorded at backup time"),
            ),
            (_, None) => (false, "the throwaway server reported no key count".into()),
        };
    }
    let tables = found.row_counts.len();
    let rows: u64 = found.row_counts.values().sum();
    match &b.row_counts {
        Some(rec) => match schedule::count_mismatch(rec, &found.row_counts) {
            None => (
                true,
                format!(
                    "recovery succeeded; row counts of {tables} tables ({rows} rows) match those recorded at backup time"
                ),
            ),
            Some(diff) => (false, format!("row counts differ: {diff}")),
        },
        None => (
            true,
            format!(
                "recovery succeeded; {tables} tables, {rows} rows; no row counts were recorded at backup time, so none were compared"
            ),
        ),
    }
}

impl Cluster {
    /// Starts a verification of backup `id` (it must have succeeded; one at a time per
    /// backup) on [`verify_node`]; answers at once with the record (`verifying: true`).
    pub async fn request_verify(self: &Arc<Self>, id: &str) -> Result<Backup> {
        let mut b = self.backup(id).await?;
        if b.state != BackupState::Succeeded {
            return Err(Error::Invalid(format!(
                "backup {id} is {}: only a succeeded backup can be verified",
                b.state
            )));
        }
        let [object] = b.objects.as_slice() else {
            return Err(Error::Invalid(format!(
                "backup {id} has {} data objects, not one",
                b.objects.len()
            )));
        };
        let repo = self.backup_repo(&b.repo).await.map_err(|e| match e {
            Error::NotFound(_) => Error::Invalid(format!(
                "backup repository {} of backup {id} is gone",
                b.repo
            )),
            other => other,
        })?;
        let repo_json =
            serde_json::to_string(&repo.spec).map_err(|e| Error::Invalid(e.to_string()))?;
        let node = {
            let mut inner = lock(&self.inner);
            if inner.verifying.contains(id) {
                return Err(Error::VerifyRunning(id.to_owned()));
            }
            let up: Vec<String> = inner
                .nodes
                .values()
                .filter(|n| self.node_state(&inner, n) != NodeState::Down)
                .map(|n| n.name.clone())
                .collect();
            let node = verify_node(&b.node, &up)
                .ok_or_else(|| Error::Invalid(format!("no node is up to verify backup {id} on")))?;
            inner.verifying.insert(id.to_owned());
            node
        };
        b.verifying = true;
        if let Err(e) = self.put_backup(&b).await {
            lock(&self.inner).verifying.remove(id);
            return Err(e);
        }
        let jid = job_id(id);
        let job = Job {
            id: jid.clone(),
            kind: common::VERIFY_JOB_KIND.into(),
            repo: repo_json,
            member: String::new(),
            params: HashMap::from([
                (params::ID.to_owned(), b.id.clone()),
                (params::INSTANCE.to_owned(), b.instance.clone()),
                (params::ENGINE.to_owned(), b.engine.clone()),
                (params::VERSION.to_owned(), b.version.clone()),
                (verify_params::OBJECT.to_owned(), object.path.clone()),
                (verify_params::SIZE.to_owned(), object.size.to_string()),
                (verify_params::SHA256.to_owned(), object.sha256.clone()),
                (
                    verify_params::RAW_SIZE.to_owned(),
                    object.raw_size.to_string(),
                ),
            ])
            .into_iter()
            .chain(
                object
                    .encryption
                    .as_ref()
                    .and_then(|e| serde_json::to_string(e).ok())
                    .map(|e| (verify_params::ENCRYPTION.to_owned(), e)),
            )
            .collect(),
        };
        self.backup_step(
            &b,
            EventKind::VerifyStarted,
            format!("verification of backup {id} started on {node}"),
        )
        .await;
        info!(backup = %id, node = %node, "verification requested");
        self.start_jobs(vec![(node.clone(), job)]);
        let span = tracing::info_span!("verify", id = %id, node = %node);
        tokio::spawn(
            self.clone()
                .drive_verify(b.id.clone(), node, jid)
                .instrument(span),
        );
        Ok(b)
    }

    async fn drive_verify(self: Arc<Self>, id: String, node: String, jid: String) {
        let outcome: std::result::Result<VerifyFound, String> = loop {
            if !self.is_active() {
                info!("no longer leading: the next leader clears this verification");
                return;
            }
            let (status, down) = {
                let inner = lock(&self.inner);
                let down = inner
                    .nodes
                    .get(&node)
                    .is_none_or(|n| self.node_state(&inner, n) == NodeState::Down);
                (inner.job_status.get(&jid).cloned(), down)
            };
            if let Some(s) = status {
                match s.state.as_str() {
                    "succeeded" => {
                        break serde_json::from_str::<VerifyFound>(&s.result)
                            .map_err(|e| format!("the agent's answer is unreadable: {e}"))
                    }
                    "failed" => break Err(format!("{} failed: {}", s.step, s.message)),
                    _ => {}
                }
            }
            if down {
                break Err(format!(
                    "node {node} went down during the verification (its agent stopped reporting)"
                ));
            }
            let _ = tokio::time::timeout(TICK, self.jobs_changed.notified()).await;
        };
        self.end_jobs(&[jid]);
        lock(&self.inner).verifying.remove(&id);
        let mut b = match self.backup(&id).await {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "the verified backup's record is gone");
                return;
            }
        };
        let (ok, reason) = match outcome {
            Ok(found) => judge(&b, &found),
            Err(reason) => (false, reason),
        };
        b.verifying = false;
        b.verified_at_ms = now_ms();
        b.verify_ok = Some(ok);
        b.verify_reason = reason.clone();
        if let Err(e) = self.put_backup(&b).await {
            warn!(error = %e, "backup record not updated (verification)");
        }
        if ok {
            info!(reason = %reason, "verification passed");
        } else {
            warn!(reason = %reason, "verification failed");
        }
        let kind = if ok {
            EventKind::VerifySucceeded
        } else {
            EventKind::VerifyFailed
        };
        self.backup_step(
            &b,
            kind,
            format!(
                "verification of backup {id} {}: {reason}",
                if ok { "passed" } else { "failed" }
            ),
        )
        .await;
    }

    /// On taking charge: verifications a previous leader was driving lost their driver and
    /// job; they are recorded as failed.
    pub(super) async fn clear_orphaned_verifications(&self) -> Result<()> {
        for mut b in self.all_backups().await? {
            if !b.verifying {
                continue;
            }
            b.verifying = false;
            b.verified_at_ms = now_ms();
            b.verify_ok = Some(false);
            b.verify_reason =
                "the scheduler driving the verification stopped leading before it ended".into();
            self.put_backup(&b).await?;
        }
        lock(&self.inner).verifying.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(engine: &str) -> Backup {
        Backup {
            id: "b".into(),
            instance: "i".into(),
            engine: engine.into(),
            version: String::new(),
            repo: "r".into(),
            member: "i-1".into(),
            node: "a".into(),
            state: BackupState::Succeeded,
            reason: String::new(),
            requested_at_ms: 0,
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
        }
    }

    /// The backup's node when up, else the first up; none when none is up.
    #[test]
    fn a_verification_runs_on_the_backups_node_if_up() {
        let up = vec!["c".to_owned(), "b".to_owned()];
        assert_eq!(verify_node("c", &up).as_deref(), Some("c"));
        assert_eq!(verify_node("a", &up).as_deref(), Some("b"));
        assert_eq!(verify_node("a", &[]), None);
    }

    /// Equal counts pass; a difference fails naming the table; without recorded counts it
    /// passes saying none were compared; Redis compares the key count.
    #[test]
    fn counts_decide_the_outcome() {
        let mut b = backup("mariadb");
        let found = VerifyFound {
            row_counts: [("shop.t".to_owned(), 5u64)].into(),
            keys: None,
        };
        let (ok, why) = judge(&b, &found);
        assert!(ok && why.contains("none were compared"), "{why}");
        b.row_counts = Some([("shop.t".to_owned(), 5u64)].into());
        assert!(judge(&b, &found).0);
        b.row_counts = Some([("shop.t".to_owned(), 6u64)].into());
        let (ok, why) = judge(&b, &found);
        assert!(
            !ok && why.contains("shop.t: 6 rows recorded, 5 found"),
            "{why}"
        );
        let mut r = backup("redis");
        r.keys = Some(500);
        let k = |n| VerifyFound {
            row_counts: Default::default(),
            keys: Some(n),
        };
        assert!(judge(&r, &k(500)).0);
        let (ok, why) = judge(&r, &k(499));
        assert!(!ok && why.contains("500 recorded"), "{why}");
    }
}

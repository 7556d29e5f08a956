//! Jobs the scheduler asks of this agent through the desired state (issue 16): each `Job`
//! has an id, is started once when it first appears, and its `JobStatus` is reported in every
//! heartbeat while the job stays in the desired state; a job that leaves it is forgotten
//! (and cancelled if it still runs).
//!
//! Kinds: `repo_probe` (write, read back, list and delete a probe object in a backup
//! repository, and for an encrypting one an encrypted round trip, `mofang_common::repo`); `backup` (a full backup of a member on this node,
//! [`run`]), whose `JobStatus.result` is the manifest (JSON) and `bytes` the bytes read so far;
//! `verify` (a backup restored in a throwaway container, [`verify`]), whose result is what it
//! counted ([`mofang_common::backup::VerifyFound`]).

use mofang_common::proto::{DesiredState, Job, JobStatus};
use mofang_common::repo::{self, RepoSpec};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

pub mod archive;
pub mod binlog;
pub mod counts;
pub mod restore;
pub mod run;
pub mod stream;
pub mod verify;

pub use run::BackupContext;

/// Job states as reported.
pub const RUNNING: &str = "running";
/// The job ended well.
pub const SUCCEEDED: &str = "succeeded";
/// The job failed; `step` and `message` say where and why.
pub const FAILED: &str = "failed";

struct Entry {
    status: JobStatus,
    cancel: CancellationToken,
}

/// The jobs of this agent and their statuses.
#[derive(Clone)]
pub struct Jobs {
    node: String,
    backup: Option<BackupContext>,
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    changed: Arc<Notify>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs").field("node", &self.node).finish()
    }
}

impl Jobs {
    /// Jobs of `node`; `changed` is notified when a status changes (the next heartbeat goes
    /// out at once).
    pub fn new(node: &str, changed: Arc<Notify>) -> Self {
        Jobs {
            node: node.to_owned(),
            backup: None,
            entries: Arc::default(),
            changed,
        }
    }

    /// Also runs backups, with the agent's runtime and member statuses.
    pub fn with_backups(mut self, ctx: BackupContext) -> Self {
        self.backup = Some(ctx);
        self
    }

    /// The statuses to report, ordered by id.
    pub fn statuses(&self) -> Vec<JobStatus> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<JobStatus> = entries.values().map(|e| e.status.clone()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    fn set(&self, id: &str, f: impl FnOnce(&mut JobStatus)) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = entries.get_mut(id) {
            f(&mut e.status);
        }
        drop(entries);
        self.changed.notify_one();
    }

    /// Starts the jobs of `desired` not seen before; forgets (and cancels) those it no
    /// longer holds.
    pub fn sync(&self, desired: &DesiredState) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|id, e| {
            let keep = desired.jobs.iter().any(|j| &j.id == id);
            if !keep {
                e.cancel.cancel();
            }
            keep
        });
        for job in &desired.jobs {
            if entries.contains_key(&job.id) {
                continue;
            }
            let cancel = CancellationToken::new();
            entries.insert(
                job.id.clone(),
                Entry {
                    status: JobStatus {
                        id: job.id.clone(),
                        state: RUNNING.into(),
                        ..JobStatus::default()
                    },
                    cancel: cancel.clone(),
                },
            );
            let this = self.clone();
            let job = job.clone();
            let assignment = desired
                .members
                .iter()
                .find(|a| a.member == job.member)
                .cloned();
            let span = tracing::info_span!("job", id = %job.id, kind = %job.kind);
            tokio::spawn(
                async move {
                    tokio::select! {
                        _ = cancel.cancelled() => info!("job left the desired state: cancelled"),
                        () = this.run(&job, assignment) => {}
                    }
                }
                .instrument(span),
            );
        }
    }

    async fn run(&self, job: &Job, assignment: Option<mofang_common::proto::Assignment>) {
        let outcome = match job.kind.as_str() {
            "repo_probe" => self.repo_probe(job).await,
            mofang_common::backup::JOB_KIND => self.backup(job, assignment).await,
            mofang_common::backup::VERIFY_JOB_KIND => self.verify(job).await,
            other => Err(("start".to_owned(), format!("unknown job kind {other:?}"))),
        };
        match outcome {
            Ok(()) => {
                info!("job succeeded");
                self.set(&job.id, |s| s.state = SUCCEEDED.into());
            }
            Err((step, message)) => {
                warn!(step = %step, error = %message, "job failed");
                self.set(&job.id, |s| {
                    s.state = FAILED.into();
                    s.step = step;
                    s.message = message;
                });
            }
        }
    }

    async fn backup(
        &self,
        job: &Job,
        assignment: Option<mofang_common::proto::Assignment>,
    ) -> Result<(), (String, String)> {
        let ctx = self
            .backup
            .as_ref()
            .ok_or_else(|| ("start".to_owned(), "this agent runs no backups".to_owned()))?;
        info!(member = %job.member, "backup started");
        let id = job.id.clone();
        let this = self.clone();
        // Progress is reported with the next heartbeat, not pushed at once.
        let progress = move |n: u64| {
            let mut entries = this.entries.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(e) = entries.get_mut(&id) {
                e.status.bytes = n;
            }
        };
        let manifest = run::run(ctx, &self.node, job, assignment, &progress).await?;
        let result =
            serde_json::to_string(&manifest).map_err(|e| ("manifest".to_owned(), e.to_string()))?;
        info!(member = %job.member, bytes = manifest.objects.iter().map(|o| o.size).sum::<u64>(),
            gtid = %manifest.consistent_at.gtid, "backup stored");
        self.set(&job.id, |s| s.result = result);
        Ok(())
    }

    async fn verify(&self, job: &Job) -> Result<(), (String, String)> {
        let ctx = self
            .backup
            .as_ref()
            .ok_or_else(|| ("start".to_owned(), "this agent runs no backups".to_owned()))?;
        info!("verification started");
        let id = job.id.clone();
        let this = self.clone();
        let progress = move |n: u64| {
            let mut entries = this.entries.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(e) = entries.get_mut(&id) {
                e.status.bytes = n;
            }
        };
        let found = verify::run(ctx, job, &progress).await?;
        let result =
            serde_json::to_string(&found).map_err(|e| ("result".to_owned(), e.to_string()))?;
        self.set(&job.id, |s| s.result = result);
        Ok(())
    }

    async fn repo_probe(&self, job: &Job) -> Result<(), (String, String)> {
        let spec: RepoSpec = serde_json::from_str(&job.repo)
            .map_err(|e| ("open".to_owned(), format!("repository description: {e}")))?;
        match repo::check(&spec, &self.node, &job.id).await {
            Ok(()) => {
                // An encrypting repository's probe also sealed and opened an object.
                let encrypted = spec.encryption_key().is_some();
                info!(
                    encrypted,
                    "repository probe passed: write, read, list, delete{}",
                    if encrypted { ", encrypt" } else { "" }
                );
                Ok(())
            }
            Err(repo::Error::Probe { step, message, .. }) => Err((step.to_string(), message)),
            Err(e) => Err(("open".to_owned(), e.to_string())),
        }
    }

    /// Follows the desired state until shutdown.
    pub async fn run_loop(
        self,
        mut desired: watch::Receiver<Option<DesiredState>>,
        shutdown: CancellationToken,
    ) {
        loop {
            if let Some(d) = desired.borrow_and_update().as_ref() {
                self.sync(d);
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = desired.changed() => if r.is_err() { break },
            }
        }
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        for e in entries.values() {
            e.cancel.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(jobs: Vec<Job>) -> DesiredState {
        DesiredState {
            node: "n1".into(),
            revision: 1,
            members: vec![],
            jobs,
        }
    }

    async fn wait_done(jobs: &Jobs, id: &str) -> JobStatus {
        for _ in 0..200 {
            if let Some(s) = jobs.statuses().into_iter().find(|s| s.id == id) {
                if s.state != RUNNING {
                    return s;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("job {id} did not end");
    }

    /// A probe of a real directory succeeds; of a missing one fails at `open`; a job that
    /// leaves the desired state is no longer reported; an unknown kind fails naming it.
    #[tokio::test]
    async fn probe_jobs_report_their_outcome_and_are_forgotten_when_gone() {
        let dir = std::env::temp_dir().join(format!("mofang-jobs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = serde_json::json!({"kind": "fs", "path": dir}).to_string();
        let bad = serde_json::json!({"kind": "fs", "path": dir.join("missing")}).to_string();
        let jobs = Jobs::new("n1", Arc::new(Notify::new()));
        let job = |id: &str, kind: &str, repo: &str| Job {
            id: id.into(),
            kind: kind.into(),
            repo: repo.into(),
            ..Job::default()
        };
        jobs.sync(&desired(vec![
            job("p1", "repo_probe", &good),
            job("p2", "repo_probe", &bad),
            job("x", "teleport", ""),
        ]));
        assert_eq!(wait_done(&jobs, "p1").await.state, SUCCEEDED);
        let p2 = wait_done(&jobs, "p2").await;
        assert_eq!((p2.state.as_str(), p2.step.as_str()), (FAILED, "open"));
        assert!(wait_done(&jobs, "x").await.message.contains("teleport"));
        jobs.sync(&desired(vec![job("p1", "repo_probe", &good)]));
        let ids: Vec<String> = jobs.statuses().into_iter().map(|s| s.id).collect();
        assert_eq!(ids, vec!["p1".to_owned()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

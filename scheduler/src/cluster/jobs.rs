//! Jobs asked of agents (issue 16): a job is put in its node's desired state with an id, the
//! agent runs it once and reports its status in heartbeats; the scheduler waits for the
//! outcome and then takes the job out again.
//!
//! Jobs are kept in memory only: the only kind today (`repo_probe`) lives for the length of
//! one API request, so a scheduler that dies meanwhile loses nothing the caller is not told
//! about (the request fails).

use super::{lock, Cluster};
use mofang_common::proto::{Job, JobStatus};
use std::collections::HashMap;
use std::time::{Duration, Instant};

impl Cluster {
    /// Puts `jobs` (node, job) in their nodes' desired states and pushes those.
    pub(super) fn start_jobs(&self, jobs: Vec<(String, Job)>) {
        let mut inner = lock(&self.inner);
        let mut nodes: Vec<String> = Vec::new();
        for (node, job) in jobs {
            inner.job_status.remove(&job.id);
            inner.jobs.entry(node.clone()).or_default().push(job);
            nodes.push(node);
        }
        nodes.sort();
        nodes.dedup();
        self.push_nodes(&mut inner, &nodes);
    }

    /// Takes jobs out of the desired states (and forgets their statuses).
    pub(super) fn end_jobs(&self, ids: &[String]) {
        let mut inner = lock(&self.inner);
        let mut nodes = Vec::new();
        for (node, jobs) in inner.jobs.iter_mut() {
            let before = jobs.len();
            jobs.retain(|j| !ids.contains(&j.id));
            if jobs.len() != before {
                nodes.push(node.clone());
            }
        }
        inner.jobs.retain(|_, jobs| !jobs.is_empty());
        for id in ids {
            inner.job_status.remove(id);
        }
        self.push_nodes(&mut inner, &nodes);
    }

    /// Waits until each job of `ids` has ended (succeeded or failed) or `timeout` passed;
    /// returns the statuses of those that ended.
    pub(super) async fn wait_jobs(
        &self,
        ids: &[String],
        timeout: Duration,
    ) -> HashMap<String, JobStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let ended: HashMap<String, JobStatus> = {
                let inner = lock(&self.inner);
                ids.iter()
                    .filter_map(|id| inner.job_status.get(id))
                    .filter(|s| s.state == "succeeded" || s.state == "failed")
                    .map(|s| (s.id.clone(), s.clone()))
                    .collect()
            };
            let now = Instant::now();
            if ended.len() == ids.len() || now >= deadline {
                return ended;
            }
            let wait = (deadline - now).min(Duration::from_millis(200));
            let _ = tokio::time::timeout(wait, self.jobs_changed.notified()).await;
        }
    }
}

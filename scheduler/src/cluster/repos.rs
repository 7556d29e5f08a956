//! Backup repositories (issue 16): added only after the scheduler and every live agent have
//! written, read back, listed and deleted a probe object in it (`mofang_common::repo`), and
//! kept in the store as metadata `backup-repo/<name>`.
//!
//! The record (with its S3 secret) is sealed whole by `secrets::SealedStore` before the backend
//! sees it (metadata keys `backup-repo/`). Views never show the secret.

use super::{lock, Cluster, Error, Result};
use crate::model::now_ms;
use mofang_common::proto::{Job, JobStatus};
use mofang_common::repo::{self, RepoSpec};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;
use tracing::{info, warn};
use utoipa::ToSchema;

/// How long agents have to answer a probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Store metadata prefix of repository records.
const PREFIX: &str = "backup-repo/";

/// A backup repository as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupRepo {
    /// Name (a DNS label).
    pub name: String,
    /// Where and how (with the S3 secret).
    pub spec: RepoSpec,
    /// When it was added (unix ms).
    pub created_at_ms: i64,
}

/// A backup repository as the API shows it: everything but the secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BackupRepoView {
    /// Name.
    pub name: String,
    /// `s3` or `fs`.
    pub kind: String,
    /// S3: endpoint URL (empty: AWS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// S3: bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// S3: key prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// S3: region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// S3: access key id (the secret is never shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// S3: path-style addressing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
    /// fs: the directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Backups and archived binlogs are encrypted by the agents before they leave the host
    /// (client-side; the key is never shown).
    pub encrypted: bool,
    /// The id of the repository key (what manifests record), when encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// When it was added (unix ms).
    pub created_at_ms: i64,
}

impl From<&BackupRepo> for BackupRepoView {
    fn from(r: &BackupRepo) -> Self {
        let mut v = BackupRepoView {
            name: r.name.clone(),
            kind: r.spec.kind().to_owned(),
            endpoint: None,
            bucket: None,
            prefix: None,
            region: None,
            access_key_id: None,
            path_style: None,
            path: None,
            encrypted: r.spec.encryption_key().is_some(),
            key_id: r.spec.key().ok().flatten().map(|k| k.id()),
            created_at_ms: r.created_at_ms,
        };
        match &r.spec {
            RepoSpec::S3 {
                endpoint,
                bucket,
                prefix,
                region,
                access_key_id,
                path_style,
                ..
            } => {
                v.endpoint = Some(endpoint.clone());
                v.bucket = Some(bucket.clone());
                v.prefix = Some(prefix.clone());
                v.region = Some(region.clone());
                v.access_key_id = Some(access_key_id.clone());
                v.path_style = Some(*path_style);
            }
            RepoSpec::Fs { path, .. } => v.path = Some(path.clone()),
        }
        v
    }
}

/// A repository failed its check on one host: which host, which step, why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("backup repository check failed on {host} at step {step}: {message}")]
pub struct RepoRefusal {
    /// `scheduler` or the node's name.
    pub host: String,
    /// `open`, `write`, `read`, `list`, `delete`, or `answer` (the agent did not report in
    /// time).
    pub step: String,
    /// What failed.
    pub message: String,
}

/// The verdict on the agents' probes: the first node (by name) that failed or did not answer.
pub fn judge(
    asked: &[(String, String)],
    ended: &HashMap<String, JobStatus>,
    timeout: Duration,
) -> std::result::Result<(), RepoRefusal> {
    let mut asked = asked.to_vec();
    asked.sort();
    for (node, id) in asked {
        match ended.get(&id) {
            Some(s) if s.state == "succeeded" => {}
            Some(s) => {
                return Err(RepoRefusal {
                    host: node,
                    step: s.step.clone(),
                    message: s.message.clone(),
                })
            }
            None => {
                return Err(RepoRefusal {
                    host: node,
                    step: "answer".into(),
                    message: format!("the agent did not report the probe within {timeout:?}"),
                })
            }
        }
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl Cluster {
    /// Checks a repository from this scheduler and from every live agent, then stores it.
    pub async fn add_backup_repo(&self, name: &str, spec: RepoSpec) -> Result<BackupRepo> {
        if !valid_name(name) {
            return Err(Error::Invalid(format!(
                "repository name {name:?} is not a DNS label (a-z, 0-9, -; at most 63)"
            )));
        }
        spec.validate().map_err(|e| Error::Invalid(e.to_string()))?;
        if self
            .store
            .get_meta(&format!("{PREFIX}{name}"))
            .await?
            .is_some()
        {
            return Err(Error::AlreadyExists(format!("backup repository {name}")));
        }
        let nonce = format!("{:016x}", rand::random::<u64>());
        if let Err(e) = repo::check(&spec, "scheduler", &nonce).await {
            let (step, message) = match e {
                repo::Error::Probe { step, message, .. } => (step.to_string(), message),
                other => ("open".to_owned(), other.to_string()),
            };
            warn!(repo = %name, host = "scheduler", step = %step, error = %message,
                "backup repository refused");
            return Err(RepoRefusal {
                host: "scheduler".into(),
                step,
                message,
            }
            .into());
        }
        let nodes: Vec<String> = {
            let inner = lock(&self.inner);
            inner
                .nodes
                .values()
                .filter(|n| self.node_state(&inner, n) != crate::model::NodeState::Down)
                .map(|n| n.name.clone())
                .collect()
        };
        let repo_json = serde_json::to_string(&spec).map_err(|e| Error::Invalid(e.to_string()))?;
        let asked: Vec<(String, String)> = nodes
            .iter()
            .map(|n| (n.clone(), format!("probe-{nonce}-{n}")))
            .collect();
        self.start_jobs(
            asked
                .iter()
                .map(|(node, id)| {
                    (
                        node.clone(),
                        Job {
                            id: id.clone(),
                            kind: "repo_probe".into(),
                            repo: repo_json.clone(),
                            ..Job::default()
                        },
                    )
                })
                .collect(),
        );
        let ids: Vec<String> = asked.iter().map(|(_, id)| id.clone()).collect();
        let ended = self.wait_jobs(&ids, PROBE_TIMEOUT).await;
        self.end_jobs(&ids);
        if let Err(refusal) = judge(&asked, &ended, PROBE_TIMEOUT) {
            warn!(repo = %name, host = %refusal.host, step = %refusal.step,
                error = %refusal.message, "backup repository refused");
            return Err(refusal.into());
        }
        let record = BackupRepo {
            name: name.to_owned(),
            spec,
            created_at_ms: now_ms(),
        };
        let json = serde_json::to_string(&record).map_err(|e| Error::Invalid(e.to_string()))?;
        let writing = self.repo_writes.lock().await;
        self.store
            .put_meta(&format!("{PREFIX}{name}"), &json)
            .await?;
        drop(writing);
        lock(&self.inner)
            .repos
            .insert(name.to_owned(), record.spec.clone());
        info!(repo = %name, kind = record.spec.kind(), agents = nodes.len(),
            "backup repository added");
        Ok(record)
    }

    /// Every repository, by name.
    pub async fn backup_repos(&self) -> Result<Vec<BackupRepo>> {
        self.store
            .meta_with_prefix(PREFIX)
            .await?
            .into_iter()
            .map(|(key, json)| {
                serde_json::from_str(&json).map_err(|e| {
                    Error::Store(crate::store::Error::Backend(format!(
                        "corrupt record {key}: {e}"
                    )))
                })
            })
            .collect()
    }

    /// One repository.
    pub async fn backup_repo(&self, name: &str) -> Result<BackupRepo> {
        let json = self
            .store
            .get_meta(&format!("{PREFIX}{name}"))
            .await?
            .ok_or_else(|| Error::NotFound(format!("backup repository {name}")))?;
        serde_json::from_str(&json).map_err(|e| {
            Error::Store(crate::store::Error::Backend(format!(
                "corrupt record {PREFIX}{name}: {e}"
            )))
        })
    }

    /// Writes a record sealed whole (`key`, e.g. `backup-repo/main`) again as it reads, so
    /// the active data key seals it (the re-encryption pass after a rotation). False when it
    /// is gone.
    pub async fn reseal_record(&self, key: &str) -> Result<bool> {
        let _writing = self.repo_writes.lock().await;
        let Some(value) = self.store.get_meta(key).await? else {
            return Ok(false);
        };
        self.store.put_meta(key, &value).await?;
        info!(record = %key, "record sealed again with the active data key");
        Ok(true)
    }

    /// Forgets a repository (what it holds stays where it is).
    pub async fn delete_backup_repo(&self, name: &str) -> Result<()> {
        let _writing = self.repo_writes.lock().await;
        self.backup_repo(name).await?;
        self.store.delete_meta(&format!("{PREFIX}{name}")).await?;
        lock(&self.inner).repos.remove(name);
        info!(repo = %name, "backup repository deleted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: &str, state: &str, step: &str) -> (String, JobStatus) {
        (
            id.to_owned(),
            JobStatus {
                id: id.into(),
                state: state.into(),
                step: step.into(),
                message: "boom".into(),
                ..JobStatus::default()
            },
        )
    }

    /// All succeeded: accepted. Otherwise the first node by name that failed (its step) or
    /// did not answer (`answer`) is named.
    #[test]
    fn judge_names_the_first_failing_or_silent_node() {
        let asked = vec![
            ("n2".to_owned(), "j2".to_owned()),
            ("n1".to_owned(), "j1".to_owned()),
            ("n3".to_owned(), "j3".to_owned()),
        ];
        let t = Duration::from_secs(1);
        let all: HashMap<_, _> = [
            status("j1", "succeeded", ""),
            status("j2", "succeeded", ""),
            status("j3", "succeeded", ""),
        ]
        .into();
        assert_eq!(judge(&asked, &all, t), Ok(()));
        let mut some = all.clone();
        some.insert("j3".into(), status("j3", "failed", "list").1);
        some.remove("j2");
        let r = judge(&asked, &some, t).unwrap_err();
        assert_eq!((r.host.as_str(), r.step.as_str()), ("n2", "answer"));
        some.insert("j2".into(), status("j2", "succeeded", "").1);
        let r = judge(&asked, &some, t).unwrap_err();
        assert_eq!((r.host.as_str(), r.step.as_str()), ("n3", "list"));
        assert!(judge(&[], &HashMap::new(), t).is_ok());
    }

    #[test]
    fn names_are_dns_labels() {
        assert!(valid_name("s3-main"));
        assert!(!valid_name("S3"));
        assert!(!valid_name("-a"));
        assert!(!valid_name(""));
        assert!(!valid_name("a/b"));
    }
}

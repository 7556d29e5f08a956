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
    /// When its encryption key was last replaced (unix ms; 0: never).
    #[serde(default)]
    pub key_rotated_at_ms: i64,
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
    /// Ids of the keys a rotation replaced, oldest first: they still open what they
    /// encrypted and encrypt nothing (`DELETE /v1/backup-repos/{name}/keys/{key_id}` forgets
    /// one once nothing stored needs it).
    #[serde(default)]
    pub retired_key_ids: Vec<String>,
    /// When the key was last replaced (unix ms; 0: never).
    #[serde(default)]
    pub key_rotated_at_ms: i64,
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
            retired_key_ids: r
                .spec
                .retired()
                .map(|ks| ks.iter().map(|k| k.id()).collect())
                .unwrap_or_default(),
            key_rotated_at_ms: r.key_rotated_at_ms,
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

/// What a retired key of a repository still protects, as the scheduler finds it: the
/// repository's backup records and, per instance archiving into it, its binlog indexes.
pub struct KeyUse<'a> {
    /// The repository's backups (any state).
    pub backups: &'a [crate::backup::Backup],
    /// Instances archiving into the repository now, each with its archive's indexes.
    pub archives: &'a [(String, Vec<mofang_common::pitr::BinlogIndex>)],
    /// The repository's current key id.
    pub current: &'a str,
}

/// Why the retired key `id` cannot be forgotten yet (decision 169), or `None`: a backup or
/// an archived binlog is encrypted with it; a backup is under way (it may have begun with
/// it); or an instance archiving into the repository has stored nothing with the current
/// key yet (an upload begun before the rotation may still be using it: archiving is one file
/// after another, so once a file is stored with the new key, none is in flight with the old).
pub fn retire_refusal(id: &str, using: &KeyUse) -> Option<String> {
    use crate::backup::BackupState;
    let encrypted_with = |e: &Option<mofang_common::backup::ObjectEncryption>| {
        e.as_ref().is_some_and(|e| e.key_id == id)
    };
    let mut why = Vec::new();
    let held: Vec<&str> = using
        .backups
        .iter()
        .filter(|b| b.objects.iter().any(|o| encrypted_with(&o.encryption)))
        .map(|b| b.id.as_str())
        .collect();
    if !held.is_empty() {
        why.push(format!(
            "{} backup(s) are encrypted with it ({}): delete them, or let retention expire them",
            held.len(),
            shortlist(&held)
        ));
    }
    let running: Vec<&str> = using
        .backups
        .iter()
        .filter(|b| matches!(b.state, BackupState::Pending | BackupState::Running))
        .map(|b| b.id.as_str())
        .collect();
    if !running.is_empty() {
        why.push(format!(
            "backup(s) {} are under way and may be encrypting with it",
            shortlist(&running)
        ));
    }
    for (instance, indexes) in using.archives {
        let old = indexes
            .iter()
            .filter(|i| encrypted_with(&i.encryption))
            .count();
        if old > 0 {
            why.push(format!(
                "{old} archived binlog file(s) of instance {instance} are encrypted with it \
                 (kept until retention deletes the binlogs no retained backup needs)"
            ));
        }
        let newest = indexes.iter().max_by_key(|i| (i.archived_at_ms, i.last));
        let fresh = newest
            .and_then(|i| i.encryption.as_ref())
            .is_some_and(|e| e.key_id == using.current);
        if !fresh {
            why.push(format!(
                "instance {instance} has archived no binlog with the current key {} yet: an \
                 upload begun before the rotation may still be using this one",
                using.current
            ));
        }
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// The first few of `ids`, and how many more.
fn shortlist(ids: &[&str]) -> String {
    const SHOWN: usize = 5;
    let mut s = ids
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > SHOWN {
        s.push_str(&format!(" and {} more", ids.len() - SHOWN));
    }
    s
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
        let _editing = self.repo_edits.lock().await;
        if self
            .store
            .get_meta(&format!("{PREFIX}{name}"))
            .await?
            .is_some()
        {
            return Err(Error::AlreadyExists(format!("backup repository {name}")));
        }
        let agents = self.probe_everywhere(name, &spec).await?;
        let record = BackupRepo {
            name: name.to_owned(),
            spec,
            created_at_ms: now_ms(),
            key_rotated_at_ms: 0,
        };
        self.write_repo(&record).await?;
        info!(repo = %name, kind = record.spec.kind(), agents, "backup repository added");
        Ok(record)
    }

    /// Writes a repository's record (sealed whole by the store) and makes it the one jobs
    /// and assignments carry from now on; every node gets a new desired state (an archive
    /// target or a restore source may carry it).
    async fn write_repo(&self, record: &BackupRepo) -> Result<()> {
        let json = serde_json::to_string(record).map_err(|e| Error::Invalid(e.to_string()))?;
        let writing = self.repo_writes.lock().await;
        self.store
            .put_meta(&format!("{PREFIX}{}", record.name), &json)
            .await?;
        drop(writing);
        let mut inner = lock(&self.inner);
        inner.repos.insert(record.name.clone(), record.spec.clone());
        let nodes: Vec<String> = inner.nodes.keys().cloned().collect();
        self.push_nodes(&mut inner, &nodes);
        Ok(())
    }

    /// Replaces an encrypting repository's key (decision 169): checked from this scheduler
    /// and every live agent with the new key first (as when a repository is added), then
    /// written; what is stored from then on is encrypted with the new key, and the old one is
    /// kept, retired, to open what it encrypted.
    pub async fn rotate_repo_key(
        &self,
        name: &str,
        new: mofang_common::backup_crypt::RepoKey,
    ) -> Result<BackupRepo> {
        let _editing = self.repo_edits.lock().await;
        let mut record = self.backup_repo(name).await?;
        let new_id = new.id();
        record.spec.rotate_key(new).map_err(|e| match e {
            repo::Error::Invalid(m) => Error::Invalid(format!("backup repository {name}: {m}")),
            other => Error::Invalid(format!("backup repository {name}: {other}")),
        })?;
        self.probe_everywhere(name, &record.spec).await?;
        record.key_rotated_at_ms = now_ms();
        self.write_repo(&record).await?;
        info!(repo = %name, key_id = %new_id, retired = record.spec.retired_keys().len(),
            "backup repository key replaced");
        Ok(record)
    }

    /// Forgets a retired key of a repository once nothing stored needs it
    /// ([`retire_refusal`]): 404 for no retired key with that id, 422 for the current key.
    pub async fn retire_repo_key(&self, name: &str, id: &str) -> Result<BackupRepo> {
        let _editing = self.repo_edits.lock().await;
        let mut record = self.backup_repo(name).await?;
        let current = record
            .spec
            .key()
            .map_err(|e| Error::Invalid(e.to_string()))?
            .map(|k| k.id())
            .unwrap_or_default();
        if current == id {
            return Err(Error::Invalid(format!(
                "key {id} is the current key of backup repository {name}: rotate it first"
            )));
        }
        let mut check = record.spec.clone();
        if !check
            .retire_key(id)
            .map_err(|e| Error::Invalid(e.to_string()))?
        {
            return Err(Error::NotFound(format!(
                "retired key {id} of backup repository {name}"
            )));
        }
        let backups: Vec<crate::backup::Backup> = self
            .all_backups()
            .await?
            .into_iter()
            .filter(|b| b.repo == name)
            .collect();
        let archiving: Vec<String> = lock(&self.inner)
            .archives
            .iter()
            .filter(|(_, a)| a.repo == name)
            .map(|(i, _)| i.clone())
            .collect();
        let mut archives = Vec::new();
        for instance in archiving {
            let indexes = self.archive_indexes(name, &instance).await?;
            archives.push((instance, indexes));
        }
        let using = KeyUse {
            backups: &backups,
            archives: &archives,
            current: &current,
        };
        if let Some(why) = retire_refusal(id, &using) {
            return Err(Error::KeyInUse(format!(
                "key {id} of backup repository {name} is still needed: {why}"
            )));
        }
        record.spec = check;
        self.write_repo(&record).await?;
        info!(repo = %name, key_id = %id, "retired backup repository key forgotten");
        Ok(record)
    }

    /// Probes `spec` from this scheduler, then from every live agent; the first failure is
    /// the refusal. Returns how many agents checked it.
    async fn probe_everywhere(&self, name: &str, spec: &RepoSpec) -> Result<usize> {
        let nonce = format!("{:016x}", rand::random::<u64>());
        if let Err(e) = repo::check(spec, "scheduler", &nonce).await {
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
        let repo_json = serde_json::to_string(spec).map_err(|e| Error::Invalid(e.to_string()))?;
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
        Ok(nodes.len())
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
        let _editing = self.repo_edits.lock().await;
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

    /// A retired key is needed while a backup or an archived binlog is encrypted with it,
    /// while a backup is under way, and while an instance archiving into the repository has
    /// stored nothing with the current key; once none holds, it can go. Long lists are cut.
    #[test]
    fn a_retired_key_goes_only_once_nothing_needs_it() {
        use crate::backup::{BackupObject, BackupState};
        use mofang_common::backup::ObjectEncryption;
        let enc = |id: &str| {
            Some(ObjectEncryption {
                algorithm: mofang_common::backup_crypt::ALGORITHM.into(),
                key_id: id.into(),
            })
        };
        let with_key = |id: &str, key: &str, state: BackupState| {
            let mut b = super::super::testkit::backup_record(id, "db", state, 1, "r");
            b.objects.push(BackupObject {
                path: format!("bk/{id}"),
                size: 1,
                sha256: String::new(),
                raw_size: 1,
                encryption: enc(key),
            });
            b
        };
        let index = |at_ms: i64, key: &str| {
            let mut i: mofang_common::pitr::BinlogIndex = serde_json::from_value(serde_json::json!({
                "instance": "db", "member": "db-1", "server_id": 1, "file": "mysql-bin.000001",
                "object": "binlogs/db/1.zst", "size": 1, "sha256": "", "raw_size": 1, "domain": 0,
                "begin": 0, "first": 1, "last": 2, "first_gtid": "0-1-1", "last_gtid": "0-1-2",
                "transactions": 2, "first_ts": 1, "last_ts": 2, "archived_at_ms": at_ms
            }))
            .expect("index");
            i.encryption = enc(key);
            i
        };
        let nothing: Vec<(String, Vec<mofang_common::pitr::BinlogIndex>)> = vec![];
        let ok = |backups: &[crate::backup::Backup], archives: &[(String, Vec<_>)]| {
            retire_refusal(
                "old",
                &KeyUse {
                    backups,
                    archives,
                    current: "new",
                },
            )
        };

        // Nothing stored with it, nothing under way: it can go.
        let done = [with_key("b2", "new", BackupState::Succeeded)];
        assert_eq!(ok(&done, &nothing), None);
        let fresh = vec![("db".to_owned(), vec![index(1, "old"), index(2, "new")])];
        let why = ok(&done, &fresh).expect("an old binlog");
        assert!(
            why.contains("1 archived binlog file(s) of instance db"),
            "{why}"
        );
        assert!(!why.contains("no binlog with the current key"), "{why}");

        let held = [
            with_key("b1", "old", BackupState::Succeeded),
            with_key("b2", "new", BackupState::Succeeded),
        ];
        let why = ok(&held, &nothing).expect("b1");
        assert!(
            why.contains("1 backup(s)") && why.contains("b1") && !why.contains("b2"),
            "{why}"
        );

        let running = [with_key("b3", "new", BackupState::Running)];
        let why = ok(&running, &nothing).expect("under way");
        assert!(why.contains("b3 are under way"), "{why}");

        // Archiving, the newest file still with the old key (or none yet): an upload may be
        // in flight with it.
        let stale = vec![("db".to_owned(), vec![])];
        let why = ok(&done, &stale).expect("nothing archived with the new key");
        assert!(
            why.contains("instance db has archived no binlog with the current key new"),
            "{why}"
        );

        let many: Vec<_> = (0..7)
            .map(|i| with_key(&format!("b{i}"), "old", BackupState::Succeeded))
            .collect();
        let why = ok(&many, &nothing).expect("many");
        assert!(
            why.contains("7 backup(s)") && why.contains("and 2 more") && !why.contains("b6"),
            "{why}"
        );
    }
}

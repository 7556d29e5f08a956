//! Backups as records (issue 16): the `Backup` record kept as store metadata `backup/<id>`
//! (decision 65), its states and the transitions allowed between them, and (in [`plan`]) the
//! choice of the member a backup is taken on. Pure: no I/O, no clock; the cluster
//! (`cluster/backups.rs`) carries the decisions out.

pub mod plan;
pub mod schedule;

use mofang_common::backup::{ConsistentAt, Manifest, ManifestObject};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Store metadata prefix of backup records.
pub const PREFIX: &str = "backup/";

/// Where a backup is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackupState {
    /// Recorded; not yet handed to the member's agent.
    Pending,
    /// The member's agent is taking it.
    Running,
    /// Every object and the manifest are stored.
    Succeeded,
    /// It failed; `reason` says why. Nothing of it is left in the repository.
    Failed,
}

impl BackupState {
    /// Succeeded or failed: nothing more happens to it.
    pub fn is_final(self) -> bool {
        matches!(self, BackupState::Succeeded | BackupState::Failed)
    }

    /// Whether a record may go from `self` to `to`: pending → running → succeeded | failed,
    /// and pending → failed (it never reached the agent).
    pub fn may_become(self, to: BackupState) -> bool {
        use BackupState::*;
        matches!(
            (self, to),
            (Pending, Running) | (Pending, Failed) | (Running, Succeeded) | (Running, Failed)
        )
    }
}

impl std::fmt::Display for BackupState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackupState::Pending => "pending",
            BackupState::Running => "running",
            BackupState::Succeeded => "succeeded",
            BackupState::Failed => "failed",
        })
    }
}

/// One object of a backup, as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BackupObject {
    /// Path in the repository (under its prefix).
    pub path: String,
    /// Bytes stored.
    pub size: u64,
    /// sha256 of the stored bytes, hex.
    pub sha256: String,
    /// Bytes before compression.
    pub raw_size: u64,
    /// Client-side encryption (algorithm, repository key id); absent: stored in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub encryption: Option<mofang_common::backup::ObjectEncryption>,
}

/// A backup: the record stored as `backup/<id>` and what the API shows. It holds no secret
/// (the repository is named, not copied), so it is stored as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Backup {
    /// Id: `<instance>-<unix ms>`.
    pub id: String,
    /// The instance it is of (which may since have been deleted).
    pub instance: String,
    /// `mariadb` or `redis`.
    pub engine: String,
    /// Engine version of the instance.
    pub version: String,
    /// The repository it is kept in.
    pub repo: String,
    /// The member it is taken on, and its node.
    pub member: String,
    /// Node of that member.
    pub node: String,
    /// State.
    pub state: BackupState,
    /// Why it failed (empty otherwise).
    #[serde(default)]
    pub reason: String,
    /// When it was asked for (unix ms).
    pub requested_at_ms: i64,
    /// When the agent started it (unix ms; 0: not yet).
    #[serde(default)]
    pub started_at_ms: i64,
    /// When it ended (unix ms; 0: not yet).
    #[serde(default)]
    pub ended_at_ms: i64,
    /// Source bytes read so far (while running) or in all.
    #[serde(default)]
    pub bytes: u64,
    /// Bytes stored in the repository (compressed), once succeeded.
    #[serde(default)]
    pub size: u64,
    /// The position it is consistent at: MariaDB GTID, Redis replication offset.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub consistent_at: ConsistentAt,
    /// Its data objects, once succeeded.
    #[serde(default)]
    pub objects: Vec<BackupObject>,
    /// The manifest's path in the repository, once succeeded.
    #[serde(default)]
    pub manifest: String,
    /// Versions of the tools that made it.
    #[serde(default)]
    pub tools: std::collections::BTreeMap<String, String>,
    /// MariaDB: rows per application table (`schema.table`) at the backup's GTID, from the
    /// manifest; absent when they could not be tied to it (verification then only shows
    /// what it counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_counts: Option<std::collections::BTreeMap<String, u64>>,
    /// Redis: keys in the RDB, from the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<u64>,
    /// A verification of it is running.
    #[serde(default)]
    pub verifying: bool,
    /// When its last verification ended (unix ms; 0: never verified).
    #[serde(default)]
    pub verified_at_ms: i64,
    /// Whether its last verification passed (absent: never verified).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_ok: Option<bool>,
    /// What the last verification found, or why it failed.
    #[serde(default)]
    pub verify_reason: String,
}

impl Backup {
    /// Records what the agent's manifest says (`dir` is the backup's directory in the
    /// repository, prefix included).
    pub fn apply_manifest(&mut self, m: &Manifest, dir: &str) {
        let path = |o: &ManifestObject| format!("{dir}/{}", o.name);
        self.started_at_ms = m.started_at_ms;
        self.consistent_at = m.consistent_at.clone();
        self.objects = m
            .objects
            .iter()
            .map(|o| BackupObject {
                path: path(o),
                size: o.size,
                sha256: o.sha256.clone(),
                raw_size: o.raw_size,
                encryption: o.encryption.clone(),
            })
            .collect();
        self.size = m.objects.iter().map(|o| o.size).sum();
        self.bytes = m.objects.iter().map(|o| o.raw_size).sum();
        self.manifest = format!("{dir}/{}", mofang_common::backup::MANIFEST);
        self.tools = m.tools.clone();
        self.row_counts = m.row_counts.clone();
        self.keys = m.keys;
    }
}

#[cfg(test)]
mod tests {
    use super::BackupState::*;
    use super::*;

    /// Only forward moves: a final state stays final, nothing goes back to pending, and a
    /// pending backup may fail without having run.
    #[test]
    fn states_only_move_forward() {
        let all = [Pending, Running, Succeeded, Failed];
        let allowed: Vec<(BackupState, BackupState)> = all
            .iter()
            .flat_map(|a| all.iter().map(move |b| (*a, *b)))
            .filter(|(a, b)| a.may_become(*b))
            .collect();
        assert_eq!(
            allowed,
            vec![
                (Pending, Running),
                (Pending, Failed),
                (Running, Succeeded),
                (Running, Failed)
            ]
        );
        assert!(Succeeded.is_final() && Failed.is_final());
        assert!(!Pending.is_final() && !Running.is_final());
        assert_eq!(
            serde_json::to_string(&Succeeded).expect("json"),
            "\"succeeded\""
        );
    }
}

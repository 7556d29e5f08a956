//! Backups as both daemons see them: where a backup's objects live in a repository, the
//! manifest the agent writes beside them (and reports to the scheduler), and the parameters
//! of a `backup` job. One file so the agent that writes and the scheduler that reads, lists
//! and deletes cannot disagree on a name.

use serde::{Deserialize, Serialize};

/// Job kind of a backup (`Job.kind`).
pub const JOB_KIND: &str = "backup";
/// Name of the manifest object in a backup's directory.
pub const MANIFEST: &str = "manifest.json";
/// Name of the data object of a MariaDB backup (`mariadb-backup --stream=mbstream`, zstd).
pub const MARIADB_DATA: &str = "full.mbstream.zst";
/// Name of the data object of a Redis backup (the RDB file, zstd).
pub const REDIS_DATA: &str = "dump.rdb.zst";
/// Job kind of a verification (`Job.kind`): the backup restored in a throwaway container.
pub const VERIFY_JOB_KIND: &str = "verify";

/// SQL (MariaDB) that writes the query counting the rows of every application table: one
/// `SELECT '<schema>', '<table>', COUNT(*) FROM ...` per base table outside the system
/// schemas, joined by `UNION ALL` (`NULL` when there is none). Run with `-N -B`, its output
/// is the query; the query's output is `schema<TAB>table<TAB>rows` lines. The same text
/// counts at backup time (on the member) and at verification (in the throwaway), so the two
/// cannot count differently.
pub const COUNT_QUERY_SQL: &str = "SET SESSION group_concat_max_len = 67108864; \
SELECT GROUP_CONCAT(CONCAT('SELECT ', QUOTE(table_schema), ', ', QUOTE(table_name), ', COUNT(*) FROM `', \
REPLACE(table_schema, '`', '``'), '`.`', REPLACE(table_name, '`', '``'), '`') \
ORDER BY table_schema, table_name SEPARATOR ' UNION ALL ') \
FROM information_schema.tables WHERE table_type = 'BASE TABLE' \
AND table_schema NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys')";

/// Reads `schema<TAB>table<TAB>rows` lines (the count query's output, after an optional
/// `prefix` on each line) into `schema.table -> rows`; other lines are ignored.
pub fn parse_row_counts(out: &str, prefix: &str) -> std::collections::BTreeMap<String, u64> {
    out.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|l| {
            let mut it = l.split('\t');
            let (s, t, n) = (it.next()?, it.next()?, it.next()?.trim().parse().ok()?);
            Some((format!("{s}.{t}"), n))
        })
        .collect()
}

/// Verification job parameter keys (`Job.params`), besides [`params::ID`], [`params::ENGINE`]
/// and [`params::VERSION`].
pub mod verify_params {
    /// The data object's path in the repository.
    pub const OBJECT: &str = "object";
    /// Its recorded size.
    pub const SIZE: &str = "size";
    /// Its recorded sha256.
    pub const SHA256: &str = "sha256";
    /// Bytes once decompressed.
    pub const RAW_SIZE: &str = "raw_size";
    /// The object's [`super::ObjectEncryption`] as JSON; absent: stored in clear.
    pub const ENCRYPTION: &str = "encryption";
}

/// How a stored object is encrypted (client-side, `crate::backup_crypt`): the algorithm and
/// the id of the repository key its own key is derived from. The key itself is never here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ObjectEncryption {
    /// `crate::backup_crypt::ALGORITHM`.
    pub algorithm: String,
    /// `crate::backup_crypt::RepoKey::id` of the repository key.
    pub key_id: String,
}

impl ObjectEncryption {
    /// What an object encrypted now with `key` records.
    pub fn with(key: &crate::backup_crypt::RepoKey) -> Self {
        ObjectEncryption {
            algorithm: crate::backup_crypt::ALGORITHM.to_owned(),
            key_id: key.id(),
        }
    }

    /// The key that opens an object of `rel` encrypted like this, derived from the
    /// repository's current `key` or one of its `retired` keys (decision 169), whichever has
    /// the recorded id; or why none can: another algorithm, no key, or no key with that id.
    pub fn key_for(
        &self,
        rel: &str,
        key: Option<&crate::backup_crypt::RepoKey>,
        retired: &[crate::backup_crypt::RepoKey],
    ) -> Result<zeroize::Zeroizing<[u8; 32]>, String> {
        if let Some(k) = retired.iter().find(|k| k.id() == self.key_id) {
            if self.algorithm == crate::backup_crypt::ALGORITHM {
                return Ok(k.object_key(rel));
            }
        }
        if self.algorithm != crate::backup_crypt::ALGORITHM {
            return Err(format!(
                "object {rel} is encrypted with {:?}, which this version does not know",
                self.algorithm
            ));
        }
        match key {
            None => Err(format!(
                "object {rel} is encrypted (repository key {}) but the repository has no \
                 encryption key",
                self.key_id
            )),
            Some(k) if k.id() != self.key_id => {
                Err(format!(
                "object {rel} was encrypted with repository key {}, the repository holds key {}{}",
                self.key_id,
                k.id(),
                if retired.is_empty() {
                    String::new()
                } else {
                    format!(
                        " and retired keys {}",
                        retired.iter().map(|k| k.id()).collect::<Vec<_>>().join(", ")
                    )
                }
            ))
            }
            Some(k) => Ok(k.object_key(rel)),
        }
    }
}

/// What a verification found in its throwaway container (`JobStatus.result`, JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct VerifyFound {
    /// MariaDB: rows per application table, `schema.table`.
    #[serde(default)]
    pub row_counts: std::collections::BTreeMap<String, u64>,
    /// Redis: `DBSIZE` once the RDB is loaded.
    #[serde(default)]
    pub keys: Option<u64>,
}

/// A backup's directory in its repository: `backups/<instance>/<id>`.
pub fn dir(instance: &str, id: &str) -> String {
    format!("backups/{instance}/{id}")
}

/// Job parameter keys (`Job.params`) of a backup.
pub mod params {
    /// The backup's id.
    pub const ID: &str = "backup_id";
    /// The instance.
    pub const INSTANCE: &str = "instance";
    /// `mariadb` or `redis`.
    pub const ENGINE: &str = "engine";
    /// The engine version of the instance (`10.11`, `7.0`).
    pub const VERSION: &str = "version";
}

/// One object of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestObject {
    /// Path relative to the backup's directory, e.g. `full.mbstream.zst`.
    pub name: String,
    /// Bytes stored (compressed).
    pub size: u64,
    /// sha256 of the stored bytes, hex.
    pub sha256: String,
    /// Bytes before compression.
    pub raw_size: u64,
    /// `zstd` or empty.
    pub compression: String,
    /// Encrypted after compression (`size` and `sha256` are then the encrypted bytes'):
    /// how; absent: stored in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<ObjectEncryption>,
}

/// The point a backup is consistent at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConsistentAt {
    /// MariaDB: the GTID list (`0-1-42`) mariadb-backup recorded (`xtrabackup_binlog_info`,
    /// "GTID of the last change"). Empty for Redis.
    #[serde(default)]
    pub gtid: String,
    /// MariaDB: binlog file and position of the member the backup was taken on.
    #[serde(default)]
    pub binlog: String,
    /// Redis: the replication offset (`master_repl_offset`) read as BGSAVE forked.
    #[serde(default)]
    pub offset: Option<u64>,
}

/// What a backup holds: written as `manifest.json` beside the data, kept on the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Backup id.
    pub id: String,
    /// Instance it was taken of.
    pub instance: String,
    /// `mariadb` or `redis`.
    pub engine: String,
    /// Engine version of the instance (`10.11`, `7.0`).
    pub version: String,
    /// The member it was taken on.
    pub member: String,
    /// Node of that member.
    pub node: String,
    /// When the agent started it (unix ms).
    pub started_at_ms: i64,
    /// When its last object was stored (unix ms).
    pub ended_at_ms: i64,
    /// The position the backup is consistent at.
    pub consistent_at: ConsistentAt,
    /// The data objects.
    pub objects: Vec<ManifestObject>,
    /// Versions of the tools that made it (`mariadb-backup`, `redis-server`, `mofang-agent`).
    pub tools: std::collections::BTreeMap<String, String>,
    /// MariaDB: rows per application table (`schema.table`) at the backup's position:
    /// counted in a consistent snapshot after it and moved back by the row events logged
    /// in between (decision 87); absent when they could not be tied to that position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_counts: Option<std::collections::BTreeMap<String, u64>>,
    /// Redis: the keys in the RDB (`redis-check-rdb` on the snapshot file that was uploaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<u64>,
}

/// What the agent fills a restored instance's primary from (`Assignment.restore`, as JSON).
/// It carries the repository with its secret: it travels and is kept like a backup job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreSource {
    /// The backup's id.
    pub backup: String,
    /// `mariadb` or `redis`.
    pub engine: String,
    /// The repository; `None` when the scheduler no longer knows it (the agent refuses).
    pub repo: Option<crate::repo::RepoSpec>,
    /// The data object's path in the repository (under its prefix).
    pub object: String,
    /// Its size and sha256 as recorded: checked again as it is read.
    pub size: u64,
    /// sha256, hex.
    pub sha256: String,
    /// Bytes once decompressed (for progress).
    pub raw_size: u64,
    /// How the data object is encrypted (its key derived from the repository's); absent:
    /// in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<ObjectEncryption>,
    /// Point-in-time restore: archived binlog files replayed after the backup, in order.
    #[serde(default)]
    pub binlogs: Vec<RestoreBinlog>,
    /// Point-in-time restore: replay stops at the first event at or after this time
    /// (`mariadb-binlog --stop-datetime`, UTC, `2026-12-01 14:45:10`); empty: none.
    #[serde(default)]
    pub stop_datetime: String,
    /// The volume of a new replica of the backup's own instance (a scale-up seeded from the
    /// backup, decision 164): its replication starts at the backup's GTID position instead
    /// of being cleared, and it follows its primary from there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replica: bool,
}

/// One archived binlog file a point-in-time restore replays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreBinlog {
    /// The data object's path in the repository (zstd).
    pub object: String,
    /// Its size and sha256, checked as it is read.
    pub size: u64,
    /// sha256, hex.
    pub sha256: String,
    /// The replay starts after this GTID (`--start-position`); empty: from the file's start.
    pub after: String,
    /// How the object is encrypted; absent: in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<ObjectEncryption>,
}

/// Reads "GTID of the last change '<gtid>'" and the binlog file/position from what
/// `mariadb-backup --backup` printed on standard error (the same values it writes to
/// `mariadb_backup_binlog_info`). Returns `(gtid, "file:position")`, empty when absent.
pub fn mariadb_position_from_log(stderr: &str) -> (String, String) {
    let quoted = |line: &str, key: &str| -> Option<String> {
        let rest = &line[line.find(key)? + key.len()..];
        let rest = rest.strip_prefix('\'')?;
        Some(rest[..rest.find('\'')?].to_owned())
    };
    let mut gtid = String::new();
    let mut binlog = String::new();
    for line in stderr.lines().filter(|l| l.contains("binlog position")) {
        if line.contains("slave binlog position") {
            continue;
        }
        if let Some(g) = quoted(line, "GTID of the last change ") {
            gtid = g;
        }
        if let (Some(f), Some(p)) = (quoted(line, "filename "), quoted(line, "position ")) {
            binlog = format!("{f}:{p}");
        }
    }
    (gtid, binlog)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mariadb_position_is_read_from_the_backup_log() {
        let log = "[00] 2026-12-01 12:00:00 Backup created in directory '/tmp/xtrabackup_backupfiles/'\n\
            [00] 2026-12-01 12:00:00 MySQL binlog position: filename 'mysql-bin.000002', position '3456', GTID of the last change '0-11-7,1-12-3'\n\
            [00] 2026-12-01 12:00:00 completed OK!\n";
        assert_eq!(
            mariadb_position_from_log(log),
            (
                "0-11-7,1-12-3".to_owned(),
                "mysql-bin.000002:3456".to_owned()
            )
        );
        assert_eq!(
            mariadb_position_from_log("completed OK!"),
            (String::new(), String::new())
        );
        assert_eq!(dir("db", "db-1"), "backups/db/db-1");
    }

    /// The count query's output, with or without a prefix per line; other lines ignored.
    #[test]
    fn row_counts_are_read_from_tab_separated_lines() {
        let out = "ROWS\tshop\torders\t1000\nnoise\nROWS\tshop\tusers\t7\n";
        let got = parse_row_counts(out, "ROWS\t");
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            vec![
                ("shop.orders".to_owned(), 1000),
                ("shop.users".to_owned(), 7)
            ]
        );
        assert_eq!(parse_row_counts("app\tt\t3\n", "").get("app.t"), Some(&3));
        assert!(COUNT_QUERY_SQL.contains("UNION ALL") && !COUNT_QUERY_SQL.contains('\n'));
    }
}

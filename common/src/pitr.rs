//! Point-in-time restore (issue 16): the binlog archive's layout and index, what the primary's
//! agent is asked to archive (`Assignment.archive`), and the planner, a pure function of the
//! backups and the archived files' indexes: which chain of files continues a backup without
//! a gap or a duplicate, the window an instance can be restored to, and for a time `T` which
//! backup and which files to replay.
//!
//! GTIDs are compared by sequence number in one replication domain (MariaDB keeps sequence
//! numbers growing across a failover, whoever is primary), so files archived by different
//! primaries chain by GTID, not by file name. Times are whole unix seconds, as MariaDB writes
//! them in binlog event headers.

use crate::repo::RepoSpec;
use serde::{Deserialize, Serialize};

/// `Job`-less archive of an instance: `binlogs/<instance>/` in the repository.
pub fn archive_dir(instance: &str) -> String {
    format!("binlogs/{instance}")
}

/// Path of an archived binlog file's data (zstd) in the repository.
pub fn data_object(instance: &str, server_id: u32, file: &str, at_ms: i64) -> String {
    format!("binlogs/{instance}/data/{server_id}-{file}-{at_ms}.zst")
}

/// Path of an archived file's index, written after its data (the index is the commit: a
/// data object without one is ignored). Named by its last sequence number so a listing
/// sorts by GTID.
pub fn index_object(instance: &str, idx: &BinlogIndex) -> String {
    format!(
        "binlogs/{instance}/{:020}-{}-{}-{}.json",
        idx.last, idx.server_id, idx.file, idx.archived_at_ms
    )
}

/// Reads the last sequence number from an index object's name (`…/<last>-….json`).
pub fn last_from_index_name(path: &str) -> Option<u64> {
    let name = path.rsplit('/').next()?;
    if !name.ends_with(".json") {
        return None;
    }
    name.split('-').next()?.parse().ok()
}

/// What the primary's agent archives (`Assignment.archive`, JSON; empty: nothing). It
/// carries the repository with its secret, like a restore source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveTarget {
    /// The repository (the one of the instance's latest full backup).
    pub repo: RepoSpec,
    /// The instance.
    pub instance: String,
    /// GTID of that backup: transactions up to it need no archiving.
    pub after: String,
    /// A binlog holding unarchived transactions is flushed (closed) once this long has
    /// passed without a rotation.
    pub interval_s: u64,
}

/// The index of one archived binlog file: where it is, its GTID range and event times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinlogIndex {
    /// The instance.
    pub instance: String,
    /// The member whose binlog it is, and its `server_id`.
    pub member: String,
    /// `server_id` of that member.
    pub server_id: u32,
    /// The binlog file's name on that member (`mysql-bin.000003`).
    pub file: String,
    /// Data object's path in the repository (zstd).
    pub object: String,
    /// Bytes stored.
    pub size: u64,
    /// sha256 of the stored bytes, hex.
    pub sha256: String,
    /// Bytes of the binlog file.
    pub raw_size: u64,
    /// GTID domain of its transactions.
    pub domain: u32,
    /// Sequence number the file starts after (its `Gtid_list` event); 0: none.
    pub begin: u64,
    /// First and last transaction's sequence numbers.
    pub first: u64,
    /// Last transaction's sequence number.
    pub last: u64,
    /// First and last transaction's GTIDs (`0-11-42`).
    pub first_gtid: String,
    /// Last transaction's GTID.
    pub last_gtid: String,
    /// Transactions in the file.
    pub transactions: u64,
    /// Earliest and latest event timestamp in the file (unix seconds); the latest is the
    /// rotation's, which closed it.
    pub first_ts: i64,
    /// Latest event timestamp.
    pub last_ts: i64,
    /// When it was archived (unix ms).
    pub archived_at_ms: i64,
    /// How the data object is encrypted; absent: in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<crate::backup::ObjectEncryption>,
}

/// A full backup as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupPoint {
    /// Backup id.
    pub id: String,
    /// The GTID it is consistent at (empty: no transaction yet).
    pub gtid: String,
    /// When it ended (unix ms): its consistent point is before.
    pub ended_at_ms: i64,
}

/// `(domain, seq)` of the last GTID of a list with one domain; `(0, 0)` for an empty one;
/// `None` for several domains (point-in-time restore follows one).
pub fn single_domain(gtid: &str) -> Option<(u32, u64)> {
    let p = crate::position::Position::parse(gtid);
    let mut it = p.domains();
    match (it.next(), it.next()) {
        (None, _) => Some((0, 0)),
        (Some(d), None) => Some(d),
        _ => None,
    }
}

/// One file to replay: its index (into the slice given) and the GTID it continues after
/// (empty: from its beginning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Index into the indexes slice.
    pub index: usize,
    /// `--start-position` of the replay.
    pub after: String,
}

/// Missing transactions: none of the archived files continues after `after`, but later ones
/// exist (they start after `resumes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// Domain.
    pub domain: u32,
    /// The last sequence number the chain holds.
    pub after: u64,
    /// The lowest starting point of the files beyond it.
    pub resumes: u64,
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the binlog archive has no transactions {}-*-{}..{} (domain {}); the next full backup closes the gap",
            self.domain,
            self.after + 1,
            self.resumes,
            self.domain
        )
    }
}

/// Files that continue a position without a gap or a duplicate, in replay order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chain {
    /// The files.
    pub steps: Vec<Step>,
    /// The last sequence number reached.
    pub reached: u64,
    /// A gap after `reached`, if archived files go further.
    pub gap: Option<Gap>,
}

/// The chain of archived files from `(domain, from)`: each step takes, among the files whose
/// start is at or before the position reached (so nothing is missing) and that go beyond it,
/// the one that goes furthest; its replay starts after the position reached (so nothing is
/// applied twice: files of two primaries overlap after a switchover).
pub fn chain(indexes: &[BinlogIndex], domain: u32, from: u64, from_gtid: &str) -> Chain {
    let mut c = Chain {
        reached: from,
        ..Chain::default()
    };
    let mut after = from_gtid.to_owned();
    loop {
        let next = indexes
            .iter()
            .enumerate()
            .filter(|(_, i)| {
                i.domain == domain
                    && i.transactions > 0
                    && i.begin <= c.reached
                    && i.last > c.reached
            })
            .max_by(|(_, a), (_, b)| {
                a.last
                    .cmp(&b.last)
                    .then(a.archived_at_ms.cmp(&b.archived_at_ms))
            });
        let Some((k, i)) = next else { break };
        c.steps.push(Step {
            index: k,
            after: std::mem::take(&mut after),
        });
        c.reached = i.last;
        after = i.last_gtid.clone();
    }
    c.gap = indexes
        .iter()
        .filter(|i| i.domain == domain && i.transactions > 0 && i.last > c.reached)
        .map(|i| i.begin)
        .min()
        .map(|resumes| Gap {
            domain,
            after: c.reached,
            resumes,
        });
    c
}

/// The range of times an instance can be restored to, in unix seconds, both included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Earliest: the end of the oldest full backup from which the archive continues.
    pub from: i64,
    /// Latest: the latest event time archived after it.
    pub to: i64,
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} to {}", format_utc(self.from), format_utc(self.to))
    }
}

/// Whether an instance can be restored to a time, and to which.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Readiness {
    /// No gap after the latest full backup.
    pub ready: bool,
    /// Why not (or why there is no window yet).
    pub reason: String,
    /// The range of times it can be restored to, once a file is archived after a backup.
    pub window: Option<Window>,
    /// The last sequence number archived after the latest backup.
    pub reached: u64,
    /// Latest event time archived at all (for the archive's lag).
    pub archived_ts: Option<i64>,
}

fn ceil_s(ms: i64) -> i64 {
    ms.div_euclid(1000) + i64::from(ms.rem_euclid(1000) != 0)
}

fn chain_to(indexes: &[BinlogIndex], c: &Chain) -> Option<i64> {
    c.steps.iter().map(|s| indexes[s.index].last_ts).max()
}

/// Readiness of an instance from its succeeded full backups and the archive's indexes: a gap
/// after the latest backup makes it not ready (the next backup, taken after the gap, makes
/// it ready again); the window runs from the oldest backup whose chain reaches as far as the
/// latest one's to the latest event time of that chain.
pub fn readiness(backups: &[BackupPoint], indexes: &[BinlogIndex]) -> Readiness {
    let archived_ts = indexes.iter().map(|i| i.last_ts).max();
    let Some(latest) = backups.iter().max_by_key(|b| b.ended_at_ms) else {
        return Readiness {
            reason: "no full backup yet".into(),
            archived_ts,
            ..Readiness::default()
        };
    };
    let Some((domain, seq)) = single_domain(&latest.gtid) else {
        return Readiness {
            reason: format!(
                "backup {} is at GTID {}: more than one domain, which point-in-time restore does not follow",
                latest.id, latest.gtid
            ),
            archived_ts,
            ..Readiness::default()
        };
    };
    let c = chain(indexes, domain, seq, &latest.gtid);
    let to = chain_to(indexes, &c);
    let mut from = ceil_s(latest.ended_at_ms);
    let mut older: Vec<&BackupPoint> = backups.iter().collect();
    older.sort_by_key(|b| b.ended_at_ms);
    let reaches = |b: &BackupPoint| match single_domain(&b.gtid) {
        Some((d, s)) => {
            d == domain && s <= seq && chain(indexes, d, s, &b.gtid).reached >= c.reached
        }
        None => false,
    };
    if let Some(b) = older.into_iter().find(|b| reaches(b)) {
        from = from.min(ceil_s(b.ended_at_ms));
    }
    let window = to.filter(|t| *t >= from).map(|to| Window { from, to });
    match &c.gap {
        Some(g) => Readiness {
            ready: false,
            reason: g.to_string(),
            window,
            reached: c.reached,
            archived_ts,
        },
        None => Readiness {
            ready: true,
            reason: if window.is_none() {
                format!("no binlog archived since backup {} yet", latest.id)
            } else {
                String::new()
            },
            window,
            reached: c.reached,
            archived_ts,
        },
    }
}

/// What a restore to a time replays: the backup and the files, in order; the replay of each
/// stops at the first event timestamped at or after `stop` (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The backup restored first.
    pub backup: String,
    /// The files replayed after it.
    pub steps: Vec<Step>,
    /// The time.
    pub stop: i64,
}

/// Why a time cannot be restored to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The time is outside the window (or there is none).
    #[error("time {} is outside the point-in-time window of {instance}: {}", format_utc(*.at), .window.map(|w| w.to_string()).unwrap_or_else(|| "none yet".into()))]
    OutsideWindow {
        /// The instance.
        instance: String,
        /// The time asked.
        at: i64,
        /// The window.
        window: Option<Window>,
    },
    /// The named backup is not one the archive continues (not succeeded, another engine or
    /// another repository than the archive's).
    #[error("backup {backup} of {instance} is not a succeeded MariaDB backup in the repository its binlogs are archived to")]
    UnknownBackup {
        /// The instance.
        instance: String,
        /// The backup.
        backup: String,
    },
    /// The named backup ended after the time.
    #[error("backup {backup} ended at {}, after {}: name an earlier backup or none", format_utc(*.ended), format_utc(*.at))]
    BackupAfter {
        /// The backup.
        backup: String,
        /// Its end (seconds, rounded up).
        ended: i64,
        /// The time asked.
        at: i64,
    },
}

/// Plans a restore of `instance` to `at`: the newest backup that ended at or before `at`
/// (or the one named), then the chain of files from its GTID up to and including the first
/// file holding an event at or after `at`. Refused when no backup ended before `at` or the
/// archive does not reach `at` without a gap.
pub fn plan(
    instance: &str,
    backups: &[BackupPoint],
    indexes: &[BinlogIndex],
    at: i64,
    named: Option<&str>,
) -> Result<Plan, Refusal> {
    let outside = || Refusal::OutsideWindow {
        instance: instance.to_owned(),
        at,
        window: readiness(backups, indexes).window,
    };
    let b = match named {
        Some(id) => {
            let b = backups
                .iter()
                .find(|b| b.id == id)
                .ok_or_else(|| Refusal::UnknownBackup {
                    instance: instance.to_owned(),
                    backup: id.to_owned(),
                })?;
            if ceil_s(b.ended_at_ms) > at {
                return Err(Refusal::BackupAfter {
                    backup: b.id.clone(),
                    ended: ceil_s(b.ended_at_ms),
                    at,
                });
            }
            b
        }
        None => backups
            .iter()
            .filter(|b| ceil_s(b.ended_at_ms) <= at)
            .max_by_key(|b| b.ended_at_ms)
            .ok_or_else(outside)?,
    };
    let (domain, seq) = single_domain(&b.gtid).ok_or_else(outside)?;
    let c = chain(indexes, domain, seq, &b.gtid);
    let end = c
        .steps
        .iter()
        .position(|s| indexes[s.index].last_ts >= at)
        .ok_or_else(outside)?;
    Ok(Plan {
        backup: b.id.clone(),
        steps: c.steps[..=end].to_vec(),
        stop: at,
    })
}

/// `2026-12-01T14:45:10Z` for unix seconds.
pub fn format_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `2026-12-01 14:45:10` (UTC), as `mariadb-binlog --stop-datetime` reads it with `TZ=UTC`.
pub fn format_sql_utc(secs: i64) -> String {
    format_utc(secs).replace('T', " ").replace('Z', "")
}

/// Reads an RFC 3339 time in whole seconds (`2026-12-01T14:45:10Z`, or with an offset
/// `+02:00`). Fractions of a second are refused: binlog times are whole seconds, so a
/// restore cannot tell apart two transactions within one second.
pub fn parse_utc(s: &str) -> Result<i64, String> {
    let bad = || format!("{s:?} is not an RFC 3339 time like 2026-12-01T14:45:10Z");
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        s.get(r)
            .filter(|t| t.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|t| t.parse().ok())
            .ok_or_else(bad)
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return Err(bad());
    }
    let rest = &s[19..];
    if rest.starts_with('.') {
        return Err(format!(
            "{s:?} has a fraction of a second: binlog times are whole seconds, give one"
        ));
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let oh = num(20..22)?;
            let om = num(23..25)?;
            if &rest[3..4] != ":" {
                return Err(bad());
            }
            let o = oh * 3600 + om * 60;
            if rest.starts_with('-') {
                -o
            } else {
                o
            }
        }
        _ => return Err(bad()),
    };
    Ok(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset)
}

// Howard Hinnant's civil calendar algorithms (public domain).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `server` holding transactions `first..=last` of domain 0, starting after
    /// `begin`, its events timestamped `first_ts..=last_ts`.
    fn file(server: u32, begin: u64, first: u64, last: u64, ts: (i64, i64)) -> BinlogIndex {
        BinlogIndex {
            instance: "db".into(),
            member: format!("db-{server}"),
            server_id: server,
            file: format!("mysql-bin.{first:06}"),
            object: format!("binlogs/db/data/{server}-{first}.zst"),
            size: 1,
            sha256: String::new(),
            raw_size: 1,
            domain: 0,
            begin,
            first,
            last,
            first_gtid: format!("0-{server}-{first}"),
            last_gtid: format!("0-{server}-{last}"),
            transactions: last - first + 1,
            first_ts: ts.0,
            last_ts: ts.1,
            archived_at_ms: ts.1 * 1000,
            encryption: None,
        }
    }

    fn backup(id: &str, seq: u64, ended_s: i64) -> BackupPoint {
        BackupPoint {
            id: id.into(),
            gtid: format!("0-1-{seq}"),
            ended_at_ms: ended_s * 1000 + 250,
        }
    }

    /// The archive of a switchover then a failover: the old primary's files, then the new
    /// primary's, whose first file overlaps the old one's (it replicated those transactions
    /// into its own binlog). The chain takes each transaction once, from the file that goes
    /// furthest, and each replay starts after the last GTID already applied.
    #[test]
    fn files_of_several_primaries_chain_by_gtid_without_duplicates() {
        let idx = vec![
            file(1, 0, 1, 10, (90, 100)),    // 0: old primary, before the backup
            file(1, 10, 11, 30, (100, 120)), // 1: old primary
            file(2, 5, 6, 40, (95, 140)),    // 2: new primary, overlapping 1 (replicated)
            file(2, 40, 41, 60, (140, 160)), // 3: new primary
            file(3, 55, 56, 80, (150, 180)), // 4: after a failover, overlapping 3
        ];
        let c = chain(&idx, 0, 20, "0-1-20");
        let order: Vec<(usize, &str)> = c
            .steps
            .iter()
            .map(|s| (s.index, s.after.as_str()))
            .collect();
        assert_eq!(order, vec![(2, "0-1-20"), (3, "0-2-40"), (4, "0-2-60")]);
        assert_eq!((c.reached, c.gap.clone()), (80, None));

        let backups = [backup("b1", 20, 110)];
        let r = readiness(&backups, &idx);
        assert!(r.ready, "{r:?}");
        assert_eq!(r.window, Some(Window { from: 111, to: 180 }));

        // To 150: the backup, then files up to the first holding an event at or after 150.
        let p = plan("db", &backups, &idx, 150, None).expect("plan");
        assert_eq!(p.backup, "b1");
        let files: Vec<usize> = p.steps.iter().map(|s| s.index).collect();
        assert_eq!(files, vec![2, 3]);
        // Exactly the backup's end (rounded up): the first file only.
        let p = plan("db", &backups, &idx, 111, None).expect("plan");
        assert_eq!(p.steps.len(), 1);
        // Outside: before the backup, after the archive.
        for at in [100, 181] {
            let e = plan("db", &backups, &idx, at, None).unwrap_err();
            assert_eq!(
                e,
                Refusal::OutsideWindow {
                    instance: "db".into(),
                    at,
                    window: Some(Window { from: 111, to: 180 })
                }
            );
            assert!(
                e.to_string()
                    .contains("1970-01-01T00:01:51Z to 1970-01-01T00:03:00Z"),
                "{e}"
            );
        }
    }

    /// A new primary whose binlog does not hold the transactions after the last archived one
    /// (its binlog starts later): a gap, reported, the window stops before it; a backup taken
    /// after the gap closes it and the window starts at that backup.
    #[test]
    fn a_gap_makes_the_instance_not_ready_until_the_next_backup() {
        let idx = vec![
            file(1, 0, 1, 30, (100, 130)),
            file(2, 45, 46, 70, (150, 170)), // 31..=45 never archived
        ];
        let one = [backup("b1", 10, 105)];
        let r = readiness(&one, &idx);
        assert!(!r.ready);
        assert!(r.reason.contains("0-*-31..45"), "{}", r.reason);
        assert_eq!(r.window, Some(Window { from: 106, to: 130 }));
        assert!(
            plan("db", &one, &idx, 160, None).is_err(),
            "not across the gap"
        );
        assert!(plan("db", &one, &idx, 120, None).is_ok(), "before it");

        let two = [backup("b1", 10, 105), backup("b2", 50, 155)];
        let r = readiness(&two, &idx);
        assert!(r.ready, "{r:?}");
        assert_eq!(r.window, Some(Window { from: 156, to: 170 }));
        let p = plan("db", &two, &idx, 160, None).expect("after the new backup");
        assert_eq!(
            (p.backup.as_str(), p.steps[0].after.as_str()),
            ("b2", "0-1-50")
        );
        // Before the new backup, the old one still serves, up to the gap.
        assert_eq!(plan("db", &two, &idx, 120, None).expect("old").backup, "b1");
        // A named backup that ended after the time is refused as such; an unknown one too.
        assert!(matches!(
            plan("db", &two, &idx, 120, Some("b2")),
            Err(Refusal::BackupAfter { .. })
        ));
        assert!(matches!(
            plan("db", &two, &idx, 120, Some("b9")),
            Err(Refusal::UnknownBackup { .. })
        ));
        assert_eq!(
            plan("db", &two, &idx, 120, Some("b1"))
                .expect("named")
                .backup,
            "b1"
        );
    }

    /// No backup, no archive yet, several domains: not ready or no window, with the reason.
    #[test]
    fn readiness_says_why_there_is_no_window() {
        assert_eq!(readiness(&[], &[]).reason, "no full backup yet");
        let r = readiness(&[backup("b1", 3, 10)], &[]);
        assert!(
            r.ready && r.window.is_none() && r.reason.contains("b1"),
            "{r:?}"
        );
        let multi = BackupPoint {
            id: "m".into(),
            gtid: "0-1-5,1-1-2".into(),
            ended_at_ms: 1,
        };
        assert!(readiness(&[multi], &[])
            .reason
            .contains("more than one domain"));
        // An empty backup (no transaction yet) chains from the first file.
        let empty = BackupPoint {
            id: "e".into(),
            gtid: String::new(),
            ended_at_ms: 5000,
        };
        let p = plan("db", &[empty], &[file(1, 0, 1, 4, (6, 9))], 8, None).expect("plan");
        assert_eq!(p.steps[0].after, "");
    }

    #[test]
    fn times_are_rfc3339_in_whole_seconds() {
        assert_eq!(format_utc(1_796_136_310), "2026-12-01T14:45:10Z");
        assert_eq!(format_sql_utc(1_796_136_310), "2026-12-01 14:45:10");
        assert_eq!(parse_utc("2026-12-01T14:45:10Z"), Ok(1_796_136_310));
        assert_eq!(parse_utc("2026-12-01T16:45:10+02:00"), Ok(1_796_136_310));
        assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_utc("2024-02-29T00:00:00Z").map(format_utc),
            Ok("2024-02-29T00:00:00Z".into())
        );
        assert!(parse_utc("2026-12-01T14:45:10.5Z")
            .unwrap_err()
            .contains("whole seconds"));
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-12-01T14:45:10",
            "2026-12-01T14:45:10+0200",
        ] {
            assert!(parse_utc(bad).is_err(), "{bad}");
        }
        assert_eq!(
            last_from_index_name("p/binlogs/db/00000000000000000042-7-mysql-bin.000003-1.json"),
            Some(42)
        );
        assert_eq!(
            last_from_index_name("p/binlogs/db/data/7-mysql-bin.000003-1.zst"),
            None
        );
    }
}

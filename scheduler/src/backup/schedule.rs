//! Backup schedules, retention and verification of an instance (issue 16): the policy a user
//! sets (`backup: {repo, schedule, retention, verify}`), and the decisions taken on it as pure
//! functions of what was seen and the time given, no clock and no I/O inside: which cron slot
//! is due (and how many were missed), which backups have expired, which archived binlog files
//! no retained backup needs, and whether a verification's row counts match the manifest's.

use croner::Cron;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::str::FromStr;
use utoipa::ToSchema;

/// Most slots counted as missed at once (a schedule of every second left for a year must not
/// make the leader iterate for a year).
pub const MISSED_CAP: u32 = 10_000;

/// `backup` of an instance: where and when it is backed up, how long backups are kept, and
/// when the latest is verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupPolicy {
    /// The backup repository (`/v1/backup-repos`).
    #[schema(pattern = r"^[a-z]([a-z0-9-]*[a-z0-9])?$", max_length = 63)]
    pub repo: String,
    /// When to take a full backup: cron, UTC, five fields (`0 3 * * *`) or six with seconds
    /// first (`*/30 * * * * *`); `@daily`, `@hourly` and the like too.
    pub schedule: String,
    /// How long backups are kept.
    #[serde(default)]
    pub retention: Retention,
    /// When to verify the latest succeeded backup (cron, as `schedule`); none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<String>,
}

/// Retention of an instance's backups in its policy's repository. A succeeded backup is kept
/// while it is among the newest `count` and younger than `days`; the newest succeeded backup
/// is always kept. No limit when a field is absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Days a backup is kept after it ended (1 ..= 36500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 36500)]
    pub days: Option<u32>,
    /// How many succeeded backups are kept (1 ..= 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 10000)]
    pub count: Option<u32>,
}

/// Parses a cron expression (UTC; seconds optional).
pub fn parse_cron(s: &str) -> Result<Cron, String> {
    Cron::from_str(s).map_err(|e| format!("{s:?} is not a cron expression: {e}"))
}

impl BackupPolicy {
    /// Checks the policy; the error names the field (`backup.schedule`, ...).
    pub fn validate(&self) -> Result<(), String> {
        if self.repo.trim().is_empty() {
            return Err("backup.repo: a repository name is required".into());
        }
        parse_cron(&self.schedule).map_err(|e| format!("backup.schedule: {e}"))?;
        if let Some(v) = &self.verify {
            parse_cron(v).map_err(|e| format!("backup.verify: {e}"))?;
        }
        if let Some(d) = self.retention.days {
            if !(1..=36_500).contains(&d) {
                return Err(format!(
                    "backup.retention.days: {d} is not within 1 ..= 36500"
                ));
            }
        }
        if let Some(c) = self.retention.count {
            if !(1..=10_000).contains(&c) {
                return Err(format!(
                    "backup.retention.count: {c} is not within 1 ..= 10000"
                ));
            }
        }
        Ok(())
    }
}

/// A slot that is due: the latest one at or before now and after the last one run, and how
/// many slots between them passed without a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The slot (unix ms) to run now.
    pub slot_ms: i64,
    /// Slots after `last` and before `slot_ms` that were not run (at most [`MISSED_CAP`]).
    pub missed: u32,
}

fn utc(ms: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp_millis(ms)
}

/// The slot of `cron` due at `now_ms` when the last slot run (or the time the schedule was
/// set) is `last_ms`: `None` while no slot lies in `(last_ms, now_ms]`.
pub fn next_due(cron: &Cron, last_ms: i64, now_ms: i64) -> Option<Due> {
    let mut t = utc(last_ms)?;
    let now = utc(now_ms)?;
    let mut latest = None;
    let mut seen: u32 = 0;
    while let Ok(next) = cron.find_next_occurrence(&t, false) {
        if next > now {
            break;
        }
        seen += 1;
        latest = Some(next);
        t = next;
        if seen > MISSED_CAP {
            // Jump: the latest slot at or before now, found backwards.
            latest = cron.find_previous_occurrence(&now, true).ok().or(latest);
            break;
        }
    }
    latest.map(|l| Due {
        slot_ms: l.timestamp_millis(),
        missed: seen.saturating_sub(1).min(MISSED_CAP),
    })
}

/// A backup as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// Backup id.
    pub id: String,
    /// It succeeded (its objects are in the repository).
    pub succeeded: bool,
    /// It ended (succeeded or failed); a running one is never expired.
    pub ended: bool,
    /// When it ended (unix ms).
    pub ended_at_ms: i64,
}

/// The backups of one instance in its policy's repository that have expired at `now_ms`:
/// succeeded ones beyond the newest `count` or older than `days` (the newest succeeded one
/// never), and failed records older than the oldest succeeded backup kept. Oldest first.
pub fn expired(backups: &[Kept], r: &Retention, now_ms: i64) -> Vec<String> {
    let mut ok: Vec<&Kept> = backups.iter().filter(|b| b.succeeded).collect();
    ok.sort_by(|a, b| b.ended_at_ms.cmp(&a.ended_at_ms).then(b.id.cmp(&a.id)));
    let mut out: Vec<&Kept> = Vec::new();
    let mut oldest_kept = None;
    for (i, b) in ok.iter().enumerate() {
        let by_count = r.count.is_some_and(|c| i >= c as usize);
        let by_age = r
            .days
            .is_some_and(|d| now_ms - b.ended_at_ms >= i64::from(d) * 86_400_000);
        if i > 0 && (by_count || by_age) {
            out.push(*b);
        } else {
            oldest_kept = Some(b.ended_at_ms);
        }
    }
    let mut failed: Vec<&Kept> = match oldest_kept {
        Some(t) => backups
            .iter()
            .filter(|b| b.ended && !b.succeeded && b.ended_at_ms < t)
            .collect(),
        None => vec![],
    };
    out.append(&mut failed);
    out.sort_by(|a, b| a.ended_at_ms.cmp(&b.ended_at_ms).then(a.id.cmp(&b.id)));
    out.into_iter().map(|b| b.id.clone()).collect()
}

/// An archived binlog file as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    /// Its GTID domain.
    pub domain: u32,
    /// The last sequence number it holds.
    pub last: u64,
}

/// Which archived files (indexes into `files`) no retained backup needs: those in the domain
/// of the oldest retained backup's GTID `(domain, seq)` whose last transaction is at or before
/// it (a restore from that backup or a later one replays only what comes after). Nothing when
/// no backup is retained or its GTID is unknown.
pub fn binlogs_unneeded(files: &[Archived], oldest_retained: Option<(u32, u64)>) -> Vec<usize> {
    let Some((domain, seq)) = oldest_retained else {
        return vec![];
    };
    files
        .iter()
        .enumerate()
        .filter(|(_, f)| f.domain == domain && f.last <= seq)
        .map(|(i, _)| i)
        .collect()
}

/// Compares the row counts a verification found with those the manifest recorded: `None` when
/// equal, else the differences (`shop.orders: 1000 recorded, 998 found`, a table missing or
/// unexpected), at most 10 named.
pub fn count_mismatch(
    recorded: &BTreeMap<String, u64>,
    found: &BTreeMap<String, u64>,
) -> Option<String> {
    let mut diffs = Vec::new();
    for (t, n) in recorded {
        match found.get(t) {
            Some(m) if m == n => {}
            Some(m) => diffs.push(format!("{t}: {n} rows recorded, {m} found")),
            None => diffs.push(format!("{t}: {n} rows recorded, table missing")),
        }
    }
    for (t, m) in found {
        if !recorded.contains_key(t) {
            diffs.push(format!("{t}: not recorded, {m} rows found"));
        }
    }
    if diffs.is_empty() {
        return None;
    }
    let more = diffs.len().saturating_sub(10);
    diffs.truncate(10);
    let mut s = diffs.join("; ");
    if more > 0 {
        s.push_str(&format!("; and {more} more"));
    }
    Some(s)
}

/// A backup as the health metrics see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// When it was asked for (unix ms): for a scheduled one, just after its slot.
    pub requested_ms: i64,
    /// When the agent started it and when it ended (0: not yet).
    pub started_ms: i64,
    /// When it ended (0: not yet).
    pub ended_ms: i64,
    /// Succeeded (`Some(true)`), failed (`Some(false)`) or still pending/running (`None`).
    pub succeeded: Option<bool>,
    /// Bytes stored.
    pub size: u64,
    /// When its last verification ended (0: never) and whether it passed.
    pub verified_ms: i64,
    /// Whether that verification passed.
    pub verify_ok: Option<bool>,
}

/// What an instance's backups say about its health, for `/metrics` and the alert rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// The newest succeeded backup (by end): its end (unix ms), duration (ms) and size.
    pub last_success: Option<(i64, i64, u64)>,
    /// Whether the newest finished backup (by end) failed (`None`: none finished).
    pub last_failed: Option<bool>,
    /// Whether the newest verification (by end) failed (`None`: none ended).
    pub verify_failed: Option<bool>,
    /// With a schedule: seconds since the first slot after the newest succeeded backup was
    /// asked for (or, with none, after the first backup was asked for, or else after
    /// `slot_ms`, the last slot run or when the schedule was set); 0 before that slot.
    pub overdue_s: Option<i64>,
}

/// An instance's backup health at `now_ms`, from its backups and its schedule (`cron`, and
/// `slot_ms` as on the instance record). A backup that ends after its slot resets the count;
/// one that fails does not.
pub fn health(backups: &[Seen], cron: Option<&Cron>, slot_ms: i64, now_ms: i64) -> Health {
    let finished = backups
        .iter()
        .filter(|b| b.succeeded.is_some())
        .max_by_key(|b| (b.ended_ms, b.requested_ms));
    let success = backups
        .iter()
        .filter(|b| b.succeeded == Some(true))
        .max_by_key(|b| (b.ended_ms, b.requested_ms));
    let verified = backups
        .iter()
        .filter(|b| b.verified_ms > 0 && b.verify_ok.is_some())
        .max_by_key(|b| b.verified_ms);
    let overdue_s = cron.map(|cron| {
        let since = success
            .map(|b| b.requested_ms)
            .or_else(|| backups.iter().map(|b| b.requested_ms).min())
            .unwrap_or(slot_ms);
        let due = utc(since)
            .and_then(|t| cron.find_next_occurrence(&t, false).ok())
            .map(|t| t.timestamp_millis());
        match due {
            Some(due) if now_ms > due => (now_ms - due) / 1000,
            _ => 0,
        }
    });
    Health {
        last_success: success.map(|b| {
            (
                b.ended_ms,
                (b.ended_ms - b.started_ms.max(b.requested_ms)).max(0),
                b.size,
            )
        }),
        last_failed: finished.map(|b| b.succeeded == Some(false)),
        verify_failed: verified.map(|b| b.verify_ok == Some(false)),
        overdue_s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s)
            .expect("time")
            .timestamp_millis()
    }

    fn policy(schedule: &str) -> BackupPolicy {
        BackupPolicy {
            repo: "main".into(),
            schedule: schedule.into(),
            retention: Retention::default(),
            verify: None,
        }
    }

    /// A bad cron, an empty repository or a retention out of range is refused naming the
    /// field; five fields, six (seconds) and `@daily` are taken.
    #[test]
    fn a_policy_is_checked_naming_the_field() {
        for ok in ["0 3 * * *", "*/5 * * * * *", "@daily"] {
            assert_eq!(policy(ok).validate(), Ok(()), "{ok}");
        }
        let e = policy("every day").validate().unwrap_err();
        assert!(e.starts_with("backup.schedule: "), "{e}");
        let e = policy("61 * * * *").validate().unwrap_err();
        assert!(e.starts_with("backup.schedule: "), "{e}");
        let mut p = policy("@daily");
        p.verify = Some("* * *".into());
        assert!(p.validate().unwrap_err().starts_with("backup.verify: "));
        p.verify = None;
        p.retention.count = Some(0);
        assert!(p
            .validate()
            .unwrap_err()
            .starts_with("backup.retention.count: "));
        p.retention = Retention {
            days: Some(0),
            count: None,
        };
        assert!(p
            .validate()
            .unwrap_err()
            .starts_with("backup.retention.days: "));
        p.retention.days = Some(7);
        p.repo = " ".into();
        assert!(p.validate().unwrap_err().starts_with("backup.repo: "));
    }

    /// Nothing is due until a slot passes; then that slot, once (the next call with it as the
    /// last slot finds nothing); a leader that was away for three slots runs the latest and
    /// reports two missed; seconds are honoured.
    #[test]
    fn the_latest_passed_slot_is_due_once_and_missed_ones_are_counted() {
        let hourly = parse_cron("0 * * * *").expect("cron");
        let set = ms("2026-12-01T10:20:00Z");
        assert_eq!(next_due(&hourly, set, ms("2026-12-01T10:59:59Z")), None);
        let due = next_due(&hourly, set, ms("2026-12-01T11:00:00Z")).expect("due");
        assert_eq!(
            due,
            Due {
                slot_ms: ms("2026-12-01T11:00:00Z"),
                missed: 0
            }
        );
        assert_eq!(
            next_due(&hourly, due.slot_ms, ms("2026-12-01T11:00:30Z")),
            None,
            "a slot runs once"
        );
        let late = next_due(&hourly, due.slot_ms, ms("2026-12-01T14:10:00Z")).expect("due");
        assert_eq!(
            late,
            Due {
                slot_ms: ms("2026-12-01T14:00:00Z"),
                missed: 2
            }
        );
        let every5s = parse_cron("*/5 * * * * *").expect("cron");
        let d = next_due(
            &every5s,
            ms("2026-12-01T10:00:00Z"),
            ms("2026-12-01T10:00:07Z"),
        )
        .expect("due");
        assert_eq!((d.slot_ms, d.missed), (ms("2026-12-01T10:00:05Z"), 0));
        // A schedule of every second left alone for a day: capped, the latest slot still run.
        let every1s = parse_cron("* * * * * *").expect("cron");
        let d = next_due(
            &every1s,
            ms("2026-12-01T00:00:00Z"),
            ms("2026-12-02T00:00:00Z"),
        )
        .expect("due");
        assert_eq!(
            (d.slot_ms, d.missed),
            (ms("2026-12-02T00:00:00Z"), MISSED_CAP)
        );
    }

    fn kept(id: &str, succeeded: bool, ended_at_ms: i64) -> Kept {
        Kept {
            id: id.into(),
            succeeded,
            ended: true,
            ended_at_ms,
        }
    }

    /// Count keeps the newest n succeeded; days drops the older ones; the newest succeeded is
    /// kept whatever its age; failed records older than the oldest kept go too; a running
    /// backup never; no limit keeps everything.
    #[test]
    fn retention_keeps_the_newest_and_never_the_last_one() {
        let day = 86_400_000;
        let now = 100 * day;
        let all = vec![
            kept("a", true, now - 10 * day),
            kept("b", true, now - 5 * day),
            kept("f", false, now - 4 * day),
            kept("c", true, now - 3 * day),
            kept("d", true, now - day),
            Kept {
                id: "r".into(),
                succeeded: false,
                ended: false,
                ended_at_ms: 0,
            },
        ];
        let count2 = Retention {
            days: None,
            count: Some(2),
        };
        assert_eq!(expired(&all, &count2, now), vec!["a", "b", "f"]);
        let days4 = Retention {
            days: Some(4),
            count: None,
        };
        assert_eq!(expired(&all, &days4, now), vec!["a", "b", "f"]);
        let days2 = Retention {
            days: Some(2),
            count: Some(10),
        };
        assert_eq!(expired(&all, &days2, now), vec!["a", "b", "f", "c"]);
        let days1 = Retention {
            days: Some(1),
            count: Some(1),
        };
        assert_eq!(
            expired(&all, &days1, now + 30 * day),
            vec!["a", "b", "f", "c"],
            "the newest stays"
        );
        assert!(expired(&all, &Retention::default(), now).is_empty());
        assert!(expired(&[kept("x", false, 1)], &count2, now).is_empty());
    }

    /// Files ending at or before the oldest retained backup's GTID go, those after it or
    /// spanning it stay, other domains stay, and nothing goes without a retained backup.
    #[test]
    fn binlogs_before_the_oldest_retained_backup_are_unneeded() {
        let f = |domain, last| Archived { domain, last };
        let files = vec![f(0, 10), f(0, 20), f(0, 25), f(0, 40), f(1, 5)];
        assert_eq!(binlogs_unneeded(&files, Some((0, 20))), vec![0, 1]);
        assert_eq!(binlogs_unneeded(&files, Some((0, 9))), Vec::<usize>::new());
        assert!(binlogs_unneeded(&files, None).is_empty());
    }

    /// Equal counts pass; a changed count, a missing and an unexpected table are named.
    #[test]
    fn row_counts_are_compared_table_by_table() {
        let m = |v: &[(&str, u64)]| -> BTreeMap<String, u64> {
            v.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
        };
        let rec = m(&[("shop.orders", 1000), ("shop.users", 10)]);
        assert_eq!(count_mismatch(&rec, &rec), None);
        let got = m(&[("shop.orders", 998), ("shop.extra", 1)]);
        assert_eq!(
            count_mismatch(&rec, &got).expect("mismatch"),
            "shop.orders: 1000 rows recorded, 998 found; shop.users: 10 rows recorded, table missing; shop.extra: not recorded, 1 rows found"
        );
    }

    fn seen(requested: &str, ended: &str, ok: Option<bool>) -> Seen {
        Seen {
            requested_ms: ms(requested),
            started_ms: ms(requested) + 1_000,
            ended_ms: if ok.is_some() { ms(ended) } else { 0 },
            succeeded: ok,
            size: 100,
            verified_ms: 0,
            verify_ok: None,
        }
    }

    /// The newest success, the newest outcome, the newest verification; overdue counted from
    /// the first slot after the newest success was asked for, failures not resetting it.
    #[test]
    fn backup_health_follows_the_newest_outcomes_and_the_schedule() {
        let cron = parse_cron("0 3 * * *").expect("cron");
        let ok = seen("2026-12-01T03:00:00Z", "2026-12-01T03:10:00Z", Some(true));
        let failed = seen("2026-12-02T03:00:00Z", "2026-12-02T03:01:00Z", Some(false));
        let running = seen("2026-12-03T03:00:00Z", "", None);
        // Before the next slot: not overdue, the last backup succeeded.
        let h = health(
            std::slice::from_ref(&ok),
            Some(&cron),
            0,
            ms("2026-12-02T02:00:00Z"),
        );
        assert_eq!(
            h,
            Health {
                last_success: Some((ms("2026-12-01T03:10:00Z"), 599_000, 100)),
                last_failed: Some(false),
                verify_failed: None,
                overdue_s: Some(0),
            }
        );
        // The next slot's backup failed and the one after runs: overdue since the next slot.
        let h = health(
            &[ok.clone(), failed.clone(), running],
            Some(&cron),
            0,
            ms("2026-12-03T03:30:00Z"),
        );
        assert_eq!(h.last_failed, Some(true));
        assert_eq!(h.overdue_s, Some(24 * 3600 + 1800));
        assert_eq!(
            h.last_success.map(|s| s.0),
            Some(ms("2026-12-01T03:10:00Z"))
        );
        // A later success resets it; no schedule, no overdue figure.
        let later = seen("2026-12-03T03:00:00Z", "2026-12-03T03:20:00Z", Some(true));
        let h = health(
            &[ok, failed, later],
            Some(&cron),
            0,
            ms("2026-12-03T04:00:00Z"),
        );
        assert_eq!((h.last_failed, h.overdue_s), (Some(false), Some(0)));
        assert_eq!(health(&[], None, 0, 0), Health::default());
        // Never a backup: from the slot recorded when the schedule was set.
        let h = health(
            &[],
            Some(&cron),
            ms("2026-12-01T12:00:00Z"),
            ms("2026-12-02T04:00:00Z"),
        );
        assert_eq!(h.overdue_s, Some(3600));
    }

    /// The newest verification decides, whichever backup it was of.
    #[test]
    fn the_newest_verification_decides() {
        let mut a = seen("2026-12-01T03:00:00Z", "2026-12-01T03:10:00Z", Some(true));
        let mut b = seen("2026-12-02T03:00:00Z", "2026-12-02T03:10:00Z", Some(true));
        a.verified_ms = ms("2026-12-02T05:00:00Z");
        a.verify_ok = Some(false);
        b.verified_ms = ms("2026-12-02T04:00:00Z");
        b.verify_ok = Some(true);
        assert_eq!(
            health(&[a.clone(), b.clone()], None, 0, 0).verify_failed,
            Some(true)
        );
        b.verified_ms = ms("2026-12-02T06:00:00Z");
        assert_eq!(health(&[a, b], None, 0, 0).verify_failed, Some(false));
    }
}

//! Row counts per table at a MariaDB backup's consistent point, taken without stopping
//! replication (decision 87). Right after the backup, one session opens a consistent
//! snapshot (`START TRANSACTION WITH CONSISTENT SNAPSHOT`: InnoDB's MVCC, no lock, the
//! replica keeps applying) and counts every application table in it; MariaDB tells that
//! snapshot's position in the member's own binlog (`Binlog_snapshot_file`,
//! `Binlog_snapshot_position`). The backup's position in the same binlog is what
//! mariadb-backup recorded (`consistent_at.binlog`). The transactions between the two are
//! read back from the member's binlog (`mariadb-binlog -v`, row format), and their inserted and
//! deleted rows taken off the snapshot's counts: what is left is the counts at the backup's
//! point. Anything whose effect on row counts a row event does not show (DDL, `TRUNCATE`, a
//! statement-logged change) makes the counts unknown: they are left out rather than recorded
//! wrong. The parsing and the arithmetic are pure functions, unit-tested on real
//! `mariadb-binlog` output.

use std::collections::BTreeMap;

/// Schemas the counts leave out (as `COUNT_QUERY_SQL` does); row events on them are ignored.
const SYSTEM_SCHEMAS: [&str; 4] = ["mysql", "information_schema", "performance_schema", "sys"];

/// Net rows each table gained (`schema.table` -> inserted minus deleted) over a stretch of
/// binlog, read from `mariadb-binlog -v --base64-output=DECODE-ROWS` output (the value lines
/// `###   @n=...` may have been filtered out). `Err` names the first event whose effect on row
/// counts is not shown by row events: a DDL (`GTID ... ddl`) or a statement other than
/// `BEGIN`/`COMMIT`.
pub fn row_delta(out: &str) -> Result<BTreeMap<String, i64>, String> {
    #[derive(PartialEq)]
    enum In {
        Other,
        Query,
    }
    let mut state = In::Other;
    let mut delta: BTreeMap<String, i64> = BTreeMap::new();
    for line in out.lines() {
        if line.starts_with("# at ")
            || line.starts_with("DELIMITER")
            || line.starts_with("# End of log file")
        {
            state = In::Other;
            continue;
        }
        if let Some(header) = event_header(line) {
            if let Some(gtid) = header.strip_prefix("GTID ") {
                if gtid.split_whitespace().any(|w| w == "ddl") {
                    return Err(format!("a DDL in the binlog (GTID {gtid})"));
                }
            }
            state = if header.starts_with("Query") {
                In::Query
            } else {
                In::Other
            };
            continue;
        }
        if let Some(rest) = line.strip_prefix("### INSERT INTO ") {
            *delta.entry(table_of(rest)?).or_default() += 1;
            continue;
        }
        if let Some(rest) = line.strip_prefix("### DELETE FROM ") {
            *delta.entry(table_of(rest)?).or_default() -= 1;
            continue;
        }
        if state != In::Query || line.starts_with('#') || line.starts_with("/*") {
            continue;
        }
        // A Query event's own statement (its `SET` and `use` lines set its session).
        let text = line.trim().trim_end_matches("/*!*/;").trim();
        let upper = text.to_ascii_uppercase();
        if text.is_empty() || upper.starts_with("SET ") || upper.starts_with("USE ") {
            continue;
        }
        if !matches!(
            upper.as_str(),
            "BEGIN" | "COMMIT" | "ROLLBACK" | "START TRANSACTION"
        ) {
            return Err(format!("a statement in the binlog: {text:.80}"));
        }
    }
    Ok(delta)
}

/// The event kind of a `mariadb-binlog` event header line
/// (`#261201 17:50:11 server id 1  end_log_pos 427 CRC32 0x4ee2e8d2 \tGTID 0-1-4 trans`):
/// the field after its first tab, `None` for any other line.
fn event_header(line: &str) -> Option<&str> {
    let rest = line.strip_prefix('#')?;
    if !rest.starts_with(|c: char| c.is_ascii_digit()) || !rest.contains(" server id ") {
        return None;
    }
    Some(rest.split('\t').nth(1)?.trim())
}

/// `schema.table` from a row line's `` `schema`.`table` `` (backquotes doubled inside).
fn table_of(quoted: &str) -> Result<String, String> {
    let bad = || format!("a row event on {quoted:.80}");
    let mut parts = Vec::new();
    let mut chars = quoted.trim().chars().peekable();
    while parts.len() < 2 {
        if chars.next() != Some('`') {
            return Err(bad());
        }
        let mut name = String::new();
        loop {
            match chars.next() {
                Some('`') if chars.peek() == Some(&'`') => {
                    chars.next();
                    name.push('`');
                }
                Some('`') => break,
                Some(c) => name.push(c),
                None => return Err(bad()),
            }
        }
        parts.push(name);
        if parts.len() == 1 && chars.next() != Some('.') {
            return Err(bad());
        }
    }
    Ok(format!("{}.{}", parts[0], parts[1]))
}

/// The counts at the backup's point: the snapshot's counts with the rows the transactions
/// after the backup inserted taken off and those they deleted put back. Row events on system
/// schemas are ignored; one on a table the snapshot did not count, or a count that would go
/// below zero, makes the counts unknown (`Err` saying why).
pub fn at_backup(
    snapshot: &BTreeMap<String, u64>,
    delta: &BTreeMap<String, i64>,
) -> Result<BTreeMap<String, u64>, String> {
    let mut out = snapshot.clone();
    for (table, n) in delta {
        let schema = table.split('.').next().unwrap_or_default();
        if SYSTEM_SCHEMAS.contains(&schema) {
            continue;
        }
        let Some(count) = out.get_mut(table) else {
            return Err(format!("rows changed in {table}, which was not counted"));
        };
        let before = i128::from(*count) - i128::from(*n);
        *count = u64::try_from(before)
            .map_err(|_| format!("{table}: {count} rows counted, {n} gained since the backup"))?;
    }
    Ok(out)
}

/// A binlog position `file:offset` (as `consistent_at.binlog` holds it).
pub fn parse_position(pos: &str) -> Option<(String, u64)> {
    let (file, offset) = pos.rsplit_once(':')?;
    (!file.is_empty()).then_some(())?;
    Some((file.to_owned(), offset.trim().parse().ok()?))
}

/// The binlog files from `from` to `to`, both included, in order, out of `SHOW BINARY LOGS`
/// output (`name<TAB>size` lines). `Err` when either is not listed (purged meanwhile).
pub fn files_between(listed: &str, from: &str, to: &str) -> Result<Vec<String>, String> {
    let names: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split('\t').next())
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    let at = |f: &str| {
        names
            .iter()
            .position(|n| *n == f)
            .ok_or_else(|| format!("binlog {f} is no longer on the member"))
    };
    let (a, b) = (at(from)?, at(to)?);
    if a > b {
        return Err(format!("binlog {from} comes after {to}"));
    }
    Ok(names[a..=b].iter().map(|s| (*s).to_owned()).collect())
}

/// The snapshot's binlog position out of `SHOW STATUS LIKE 'binlog_snapshot_%'` lines
/// (`Binlog_snapshot_file<TAB>mysql-bin.000002`, `Binlog_snapshot_position<TAB>1633`).
pub fn snapshot_position(out: &str) -> Option<(String, u64)> {
    let value = |key: &str| {
        out.lines().find_map(|l| {
            let (k, v) = l.split_once('\t')?;
            k.eq_ignore_ascii_case(key).then(|| v.trim().to_owned())
        })
    };
    let file = value("Binlog_snapshot_file").filter(|f| !f.is_empty())?;
    Some((file, value("Binlog_snapshot_position")?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real `mariadb-binlog -v --base64-output=DECODE-ROWS` output of MariaDB 10.11 (row
    /// format): 3 rows inserted in `app.t`, one in `` app.`we`ird` ``, one updated, one
    /// deleted, then a transaction inserting one and deleting one.
    const ROWS: &str = include_str!("testdata/binlog-rows.txt");
    /// The same, followed by `TRUNCATE app.t`.
    const DDL: &str = include_str!("testdata/binlog-ddl.txt");

    #[test]
    fn row_events_give_the_net_rows_per_table() {
        let d = row_delta(ROWS).expect("rows only");
        assert_eq!(
            d.into_iter().collect::<Vec<_>>(),
            vec![("app.t".to_owned(), 2), ("app.we`ird".to_owned(), 1)]
        );
        // The value lines filtered out (as the agent does) change nothing.
        let filtered: String = ROWS
            .lines()
            .filter(|l| !l.starts_with("###   ") && *l != "### SET" && *l != "### WHERE")
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(row_delta(&filtered), row_delta(ROWS));
        assert_eq!(row_delta(""), Ok(BTreeMap::new()));
    }

    #[test]
    fn a_ddl_or_a_statement_makes_the_counts_unknown() {
        let e = row_delta(DDL).expect_err("TRUNCATE");
        assert!(e.contains("DDL") && e.contains("0-1-9"), "{e}");
        // A statement-logged change in a Query event (no `ddl` flag).
        let stmt = "# at 10\n#261201 17:50:11 server id 1  end_log_pos 99 CRC32 0x0 \tQuery\tthread_id=9\texec_time=0\terror_code=0\n\
            SET TIMESTAMP=1796147411/*!*/;\nuse `app`/*!*/;\nDELETE FROM t\n/*!*/;\n";
        let e = row_delta(stmt).expect_err("statement");
        assert!(e.contains("DELETE FROM t"), "{e}");
        let begin = stmt.replace("DELETE FROM t", "BEGIN");
        assert_eq!(row_delta(&begin), Ok(BTreeMap::new()));
        assert!(row_delta("### INSERT INTO `app`.t\n").is_err());
    }

    #[test]
    fn counts_are_moved_back_to_the_backup() {
        let snap = BTreeMap::from([("app.t".to_owned(), 10u64), ("app.u".to_owned(), 3)]);
        let delta = BTreeMap::from([
            ("app.t".to_owned(), 4i64),
            ("app.u".to_owned(), -2),
            ("mysql.gtid_slave_pos".to_owned(), 7),
        ]);
        assert_eq!(
            at_backup(&snap, &delta),
            Ok(BTreeMap::from([
                ("app.t".to_owned(), 6),
                ("app.u".to_owned(), 5)
            ]))
        );
        let e = at_backup(&snap, &BTreeMap::from([("app.v".to_owned(), 1)])).unwrap_err();
        assert!(e.contains("app.v"), "{e}");
        let e = at_backup(&snap, &BTreeMap::from([("app.u".to_owned(), 4)])).unwrap_err();
        assert!(e.contains("app.u"), "{e}");
        assert_eq!(at_backup(&snap, &BTreeMap::new()), Ok(snap.clone()));
    }

    #[test]
    fn positions_and_files_are_read_from_the_server() {
        assert_eq!(
            parse_position("mysql-bin.000002:385"),
            Some(("mysql-bin.000002".to_owned(), 385))
        );
        assert_eq!(parse_position(""), None);
        assert_eq!(parse_position(":4"), None);
        let listed = "mysql-bin.000001\t400\nmysql-bin.000002\t1752\nmysql-bin.000003\t385\n";
        assert_eq!(
            files_between(listed, "mysql-bin.000002", "mysql-bin.000003"),
            Ok(vec![
                "mysql-bin.000002".to_owned(),
                "mysql-bin.000003".to_owned()
            ])
        );
        assert!(files_between(listed, "mysql-bin.000000", "mysql-bin.000003").is_err());
        assert!(files_between(listed, "mysql-bin.000003", "mysql-bin.000002").is_err());
        assert_eq!(
            snapshot_position(
                "Binlog_snapshot_file\tmysql-bin.000002\nBinlog_snapshot_position\t1633\napp\tt\t2\n"
            ),
            Some(("mysql-bin.000002".to_owned(), 1633))
        );
        assert_eq!(snapshot_position("Binlog_snapshot_file\t\n"), None);
    }
}

//! Continuous binlog archiving (issue 16): the agent of an instance's primary uploads each of
//! its closed binlog files to the repository the scheduler names in the primary's assignment
//! (`Assignment.archive`), with an index of the file's GTID range and event times
//! ([`super::binlog`]), and flushes the binlog when `interval_s` has passed without a rotation
//! while it holds unarchived transactions.
//!
//! Where to start is read from the repository, not remembered: the last sequence number
//! archived (from the index objects' names) or the backup's GTID, whichever is further. So a
//! new primary (switchover, failover) continues after the last transaction its predecessor
//! archived, from its own binlog, which holds the replicated transactions too
//! (`log_slave_updates`); files that hold nothing new are not uploaded, and a file that
//! overlaps is chained by GTID at restore time (`mofang_common::pitr::chain`).
//!
//! Archiving runs beside the member, in its own task, through `docker exec` (`SHOW BINARY
//! LOGS`, `SHOW BINLOG EVENTS … LIMIT`, `FLUSH BINARY LOGS`, `cat` of a closed file): it never
//! holds a lock the server or a failover waits for, and costs the primary one read of each
//! file. It stops when the member's assignment no longer asks for it.

use super::binlog::Scanner;
use super::stream::{self, Zstd};
use crate::runtime::{exec_piped, ContainerRuntime, PipeDir};
use crate::state::LocalState;
use futures::{StreamExt, TryStreamExt};
use mofang_common::pitr::{self, ArchiveTarget, BinlogIndex};
use mofang_common::position::Position;
use mofang_common::proto::DesiredState;
use mofang_common::repo::Repo;
use object_store::PutPayload;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

const CLIENT: [&str; 5] = [
    "mariadb",
    "--defaults-extra-file=/etc/mofang/client.cnf",
    "-N",
    "-B",
    "-e",
];

/// The archivers of this node's primaries, one task per member whose assignment asks.
#[derive(Clone)]
pub struct Archivers {
    runtime: Arc<dyn ContainerRuntime>,
    state: LocalState,
    running: Arc<Mutex<HashMap<String, Running>>>,
}

/// A member's archiver task: its target (the starting point can move under it) and how to
/// stop it.
struct Running {
    target: watch::Sender<ArchiveTarget>,
    cancel: CancellationToken,
}

/// What [`Archivers::sync`] does to one member's archiver.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    Start(String, ArchiveTarget),
    Stop(String),
    /// Same repository, instance and interval; only `after` moved.
    Update(String, ArchiveTarget),
}

/// From the running archivers' targets to the wanted ones: a task is kept when only its
/// starting point (`after`) moves, restarted when anything else changes. Stops come first,
/// so a restart is a stop then a start.
fn changes(
    running: &HashMap<String, ArchiveTarget>,
    mut wanted: HashMap<String, ArchiveTarget>,
) -> Vec<Change> {
    let mut stops = Vec::new();
    let mut rest = Vec::new();
    let mut members: Vec<&String> = running.keys().collect();
    members.sort();
    for member in members {
        let now = &running[member];
        match wanted.remove(member) {
            Some(t) if t == *now => {}
            Some(t)
                if ArchiveTarget {
                    after: now.after.clone(),
                    ..t.clone()
                } == *now =>
            {
                rest.push(Change::Update(member.clone(), t));
            }
            Some(t) => {
                stops.push(Change::Stop(member.clone()));
                rest.push(Change::Start(member.clone(), t));
            }
            None => stops.push(Change::Stop(member.clone())),
        }
    }
    let mut new: Vec<(String, ArchiveTarget)> = wanted.into_iter().collect();
    new.sort_by(|a, b| a.0.cmp(&b.0));
    rest.extend(new.into_iter().map(|(m, t)| Change::Start(m, t)));
    stops.extend(rest);
    stops
}

impl std::fmt::Debug for Archivers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archivers").finish()
    }
}

impl Archivers {
    /// Archivers using `runtime`; a member's files are read through a FIFO in its
    /// configuration directory (`state`'s).
    pub fn new(runtime: Arc<dyn ContainerRuntime>, state: LocalState) -> Self {
        Archivers {
            runtime,
            state,
            running: Arc::default(),
        }
    }

    /// Starts an archiver for each assignment that asks for one (or asks differently),
    /// stops those no longer asked for, and hands a running one its new starting point when
    /// only that changed (each full backup moves it: restarting would throw away what the
    /// task knows and cost the primary one `SHOW BINLOG EVENTS` per closed file).
    pub fn sync(&self, desired: &DesiredState) {
        let mut wanted: HashMap<String, ArchiveTarget> = HashMap::new();
        for a in desired.members.iter().filter(|a| !a.archive.is_empty()) {
            match serde_json::from_str(&a.archive) {
                Ok(t) => {
                    wanted.insert(a.member.clone(), t);
                }
                Err(e) => warn!(member = %a.member, error = %e, "archive target unreadable"),
            }
        }
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let current: HashMap<String, ArchiveTarget> = running
            .iter()
            .map(|(m, r)| (m.clone(), r.target.borrow().clone()))
            .collect();
        for change in changes(&current, wanted) {
            match change {
                Change::Stop(member) => {
                    if let Some(r) = running.remove(&member) {
                        r.cancel.cancel();
                    }
                }
                Change::Update(member, target) => {
                    if let Some(r) = running.get(&member) {
                        debug!(member = %member, after = %target.after, "archive starting point moved");
                        r.target.send_replace(target);
                    }
                }
                Change::Start(member, target) => {
                    let cancel = CancellationToken::new();
                    let (tx, rx) = watch::channel(target.clone());
                    running.insert(
                        member.clone(),
                        Running {
                            target: tx,
                            cancel: cancel.clone(),
                        },
                    );
                    let runtime = self.runtime.clone();
                    let pipe = PipeDir::config(self.state.config_dir(&member));
                    let span = tracing::info_span!("archive", member = %member, instance = %target.instance);
                    tokio::spawn(
                        async move {
                            info!("binlog archiving started");
                            tokio::select! {
                                _ = cancel.cancelled() => info!("binlog archiving stopped"),
                                () = archive(runtime, pipe, member, rx) => {}
                            }
                        }
                        .instrument(span),
                    );
                }
            }
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
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        for r in running.values() {
            r.cancel.cancel();
        }
    }
}

/// One member's archiver: a pass every `interval / 4` (1 to 10 s); a failed pass is logged
/// (once per distinct error) and the next one tries again.
async fn archive(
    runtime: Arc<dyn ContainerRuntime>,
    pipe: PipeDir,
    member: String,
    mut targets: watch::Receiver<ArchiveTarget>,
) {
    let target = targets.borrow_and_update().clone();
    let interval = Duration::from_secs(target.interval_s.max(1));
    let tick = (interval / 4).clamp(Duration::from_secs(1), Duration::from_secs(10));
    let mut a = Archiver {
        runtime,
        pipe,
        container: format!("mofang-{member}"),
        server_id: crate::engine::server_id(&member),
        member,
        target,
        repo: None,
        reached: None,
        done: HashSet::new(),
        closed_seen: 0,
        last_rotation: Instant::now(),
        interval,
    };
    let mut last_error = String::new();
    loop {
        if targets.has_changed().unwrap_or(false) {
            a.target.after = targets.borrow_and_update().after.clone();
        }
        match a.pass().await {
            Ok(again) => {
                last_error.clear();
                if again {
                    continue;
                }
            }
            Err(e) => {
                // Listed again next time: another primary may have archived meanwhile.
                a.reached = None;
                if e != last_error {
                    warn!(error = %e, "binlog archiving pass failed; trying again");
                    last_error = e;
                }
            }
        }
        tokio::time::sleep(tick).await;
    }
}

struct Archiver {
    runtime: Arc<dyn ContainerRuntime>,
    /// Where a file's FIFO is made (the member's configuration directory).
    pipe: PipeDir,
    member: String,
    container: String,
    server_id: u32,
    target: ArchiveTarget,
    repo: Option<Repo>,
    /// The last sequence number archived, once listed (kept up to date by this task's own
    /// uploads; listed again after an error).
    reached: Option<u64>,
    /// Closed files already archived or found to hold nothing new.
    done: HashSet<String>,
    closed_seen: usize,
    last_rotation: Instant,
    interval: Duration,
}

impl Archiver {
    async fn sql(&self, query: &str) -> Result<String, String> {
        let mut cmd: Vec<&str> = CLIENT.to_vec();
        cmd.push(query);
        let out = self
            .runtime
            .exec(&self.container, &cmd, None)
            .await
            .map_err(|e| format!("{query}: {e}"))?;
        if out.exit_code != 0 {
            return Err(format!("{query}: {}", out.stderr.trim()));
        }
        Ok(out.stdout)
    }

    /// The last sequence number archived (the backup's if nothing after it): listed from the
    /// index names in the repository the first time.
    async fn archived(&mut self, after: u64) -> Result<u64, String> {
        if let Some(r) = self.reached {
            return Ok(r.max(after));
        }
        if self.repo.is_none() {
            self.repo = Some(self.target.repo.open().map_err(|e| e.to_string())?);
        }
        let Some(repo) = self.repo.as_ref() else {
            return Err("no repository".into());
        };
        let dir = repo.path(&pitr::archive_dir(&self.target.instance));
        let listed: Vec<_> = repo
            .store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| format!("listing {dir}: {e}"))?;
        let reached = listed
            .iter()
            .filter_map(|o| pitr::last_from_index_name(o.location.as_ref()))
            .fold(after, u64::max);
        self.reached = Some(reached);
        Ok(reached)
    }

    /// One pass: archive what is closed and new; flush when due. `Ok(true)`: look again at
    /// once (a file was archived or the binlog was just flushed).
    async fn pass(&mut self) -> Result<bool, String> {
        let (domain, after) = pitr::single_domain(&self.target.after).unwrap_or((0, 0));
        let out = self
            .sql("SHOW BINARY LOGS; SELECT @@GLOBAL.gtid_binlog_pos")
            .await?;
        let (files, pos) = parse_binary_logs(&out);
        let Some((_, closed)) = files.split_last() else {
            return Err("the server has no binlog".into());
        };
        if closed.len() != self.closed_seen {
            self.closed_seen = closed.len();
            self.last_rotation = Instant::now();
        }
        let todo: Vec<usize> = (0..closed.len())
            .filter(|k| !self.done.contains(&closed[*k]))
            .collect();
        let mut reached = None;
        for k in todo {
            let reached = match reached {
                Some(r) => r,
                None => *reached.insert(self.archived(after).await?),
            };
            // A closed file holds what its successor's Gtid_list says was logged by its end.
            let next = &files[k + 1];
            let end = self.gtid_list(next).await?;
            let end_seq = end
                .domains()
                .find(|(d, _)| *d == domain)
                .map_or(0, |(_, s)| s);
            if end_seq <= reached {
                debug!(file = %closed[k], "nothing new in it");
                self.done.insert(closed[k].clone());
                continue;
            }
            let idx = match self.upload(&closed[k]).await {
                Ok(idx) => idx,
                Err(Upload::Unreadable(e)) => {
                    // Reading it again would fail again (and cost the primary a read each
                    // pass): left out, which the scheduler reports as a gap.
                    warn!(file = %closed[k], error = %e, "binlog file not archivable: left out");
                    self.done.insert(closed[k].clone());
                    return Err(e);
                }
                Err(Upload::Failed(e)) => return Err(e),
            };
            if idx.begin > reached {
                warn!(file = %idx.file, begin = idx.begin, archived = reached,
                    "binlog archive gap: this member's binlog does not hold the transactions after the last archived one");
            }
            info!(file = %idx.file, first = %idx.first_gtid, last = %idx.last_gtid,
                transactions = idx.transactions, bytes = idx.size, "binlog archived");
            self.reached = Some(reached.max(idx.last));
            self.done.insert(closed[k].clone());
            return Ok(true);
        }
        let current = Position::parse(&pos)
            .domains()
            .find(|(d, _)| *d == domain)
            .map_or(0, |(_, s)| s);
        let reached = match reached {
            Some(r) => r,
            None if current > after => self.archived(after).await?,
            None => after,
        };
        if current > reached && self.last_rotation.elapsed() >= self.interval {
            self.sql("FLUSH BINARY LOGS").await?;
            self.last_rotation = Instant::now();
            debug!("binlog flushed: unarchived transactions older than the interval");
            return Ok(true);
        }
        Ok(false)
    }

    async fn gtid_list(&self, file: &str) -> Result<Position, String> {
        if !valid_file(file) {
            return Err(format!("binlog file name {file:?}"));
        }
        let out = self
            .sql(&format!("SHOW BINLOG EVENTS IN '{file}' LIMIT 4"))
            .await?;
        Ok(parse_gtid_list(&out))
    }

    /// Streams a closed file to the repository, reading its index on the way, then writes
    /// the index (the commit: a data object without one is ignored).
    async fn upload(&self, file: &str) -> Result<BinlogIndex, Upload> {
        if !valid_file(file) {
            return Err(Upload::Unreadable(format!("binlog file name {file:?}")));
        }
        let Some(repo) = self.repo.as_ref() else {
            return Err(Upload::Failed("no repository".into()));
        };
        let at_ms = now_ms();
        let rel = pitr::data_object(&self.target.instance, self.server_id, file, at_ms);
        let path = format!("/var/lib/mysql/{file}");
        let exec = exec_piped(
            self.runtime.as_ref(),
            &self.container,
            &self.pipe,
            &["cat", &path],
        )
        .await
        .map_err(|e| Upload::Failed(format!("cat {path}: {e}")))?;
        let scanner = Arc::new(Mutex::new(Scanner::default()));
        let fed = scanner.clone();
        let done = exec.done;
        let verdict = futures::stream::once(async move {
            match done.await {
                Ok(Ok(out)) if out.exit_code == 0 => None,
                Ok(Ok(out)) => Some(Err(format!(
                    "cat exited with code {}: {}",
                    out.exit_code,
                    out.stderr.trim()
                ))),
                Ok(Err(e)) => Some(Err(format!("cat: {e}"))),
                Err(_) => Some(Err("cat: the runtime dropped the command".to_owned())),
            }
        })
        .filter_map(futures::future::ready);
        let input = exec
            .stdout
            .map(move |r| {
                let chunk = r.map_err(|e| format!("cat: {e}"))?;
                fed.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .feed(&chunk);
                Ok(chunk)
            })
            .chain(verdict)
            .boxed();
        let zstd = Some(Zstd {
            level: 3,
            threads: 0,
            nice: 0,
        });
        let stored = stream::store::<String>(repo, &rel, input, zstd, &|_| {})
            .await
            .map_err(|e| Upload::Failed(e.to_string()))?;
        let scanned = std::mem::take(&mut *scanner.lock().unwrap_or_else(PoisonError::into_inner));
        let sum = match scanned.finish() {
            Ok(s) => s,
            Err(e) => {
                // No index will name it: the data object is deleted.
                let _ = repo.store.delete(&repo.path(&rel)).await;
                return Err(Upload::Unreadable(format!("{file}: {e}")));
            }
        };
        let gtid = |g: Option<(u32, u64)>| {
            g.map(|(s, n)| format!("{}-{s}-{n}", sum.domain))
                .unwrap_or_default()
        };
        let idx = BinlogIndex {
            instance: self.target.instance.clone(),
            member: self.member.clone(),
            server_id: self.server_id,
            file: file.to_owned(),
            object: rel,
            size: stored.size,
            sha256: stored.sha256,
            raw_size: stored.source_bytes,
            encryption: stored.encryption,
            domain: sum.domain,
            // The file holds every transaction after `begin`: after its Gtid_list, and (a
            // member seeded by a dump logs nothing before its seed point) before its first.
            begin: sum
                .first
                .map_or(sum.begin, |(_, n)| sum.begin.max(n.saturating_sub(1))),
            first: sum.first.map_or(0, |(_, n)| n),
            last: sum.last.map_or(sum.begin, |(_, n)| n),
            first_gtid: gtid(sum.first),
            last_gtid: gtid(sum.last),
            transactions: sum.transactions,
            first_ts: sum.first_ts,
            last_ts: sum.last_ts,
            archived_at_ms: at_ms,
        };
        let body = serde_json::to_vec_pretty(&idx).map_err(|e| Upload::Failed(e.to_string()))?;
        let index = pitr::index_object(&self.target.instance, &idx);
        repo.store
            .put(&repo.path(&index), PutPayload::from(body))
            .await
            .map_err(|e| Upload::Failed(format!("writing {index}: {e}")))?;
        Ok(idx)
    }
}

/// Why a file was not archived.
enum Upload {
    /// Trying again may work (the container, the repository).
    Failed(String),
    /// The file itself cannot be archived (not a binlog, several GTID domains): trying again
    /// would fail the same way.
    Unreadable(String),
}

/// A binlog file name as the server lists it (no quoting, no path).
fn valid_file(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-' || c == b'_')
}

/// `SHOW BINARY LOGS; SELECT @@GLOBAL.gtid_binlog_pos` (`-N -B`): the files in order (the
/// last one open) and the GTID position.
fn parse_binary_logs(out: &str) -> (Vec<String>, String) {
    let mut files = Vec::new();
    let mut pos = String::new();
    for line in out.lines() {
        match line.split('\t').collect::<Vec<_>>().as_slice() {
            [name, _size, ..] => files.push((*name).to_owned()),
            [single] => pos = (*single).trim().to_owned(),
            _ => {}
        }
    }
    (files, pos)
}

/// The `Gtid_list` event's position from `SHOW BINLOG EVENTS … LIMIT` (`-N -B`): the Info
/// column is `[0-7-4]` (empty list: `[]`).
fn parse_gtid_list(out: &str) -> Position {
    out.lines()
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .find(|cols| cols.get(2) == Some(&"Gtid_list"))
        .and_then(|cols| {
            cols.get(5)
                .map(|i| i.trim_matches(|c| c == '[' || c == ']').to_owned())
        })
        .map(|list| Position::parse(&list))
        .unwrap_or_default()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the client prints (`-N -B`), from a real MariaDB 10.11.
    #[test]
    fn the_servers_answers_are_read() {
        let (files, pos) = parse_binary_logs(
            "mysql-bin.000001\t1050\nmysql-bin.000002\t1035\nmysql-bin.000003\t342\n0-7-7\n",
        );
        assert_eq!(
            files,
            ["mysql-bin.000001", "mysql-bin.000002", "mysql-bin.000003"]
        );
        assert_eq!(pos, "0-7-7");
        let (_, empty) = parse_binary_logs("mysql-bin.000001\t256\n\n");
        assert_eq!(empty, "");
        let events = "mysql-bin.000002\t4\tFormat_desc\t7\t256\tServer ver: 10.11.18-MariaDB-0+deb12u1-log, Binlog ver: 4\n\
                      mysql-bin.000002\t256\tGtid_list\t7\t299\t[0-7-4]\n\
                      mysql-bin.000002\t299\tBinlog_checkpoint\t7\t342\tmysql-bin.000001\n";
        assert_eq!(parse_gtid_list(events), Position::parse("0-7-4"));
        assert_eq!(
            parse_gtid_list("mysql-bin.000001\t256\tGtid_list\t7\t285\t[]\n"),
            Position::default()
        );
        assert!(valid_file("mysql-bin.000003"));
        assert!(!valid_file("x'; DROP TABLE t; --"));
    }

    fn target(after: &str, interval_s: u64) -> ArchiveTarget {
        serde_json::from_value(serde_json::json!({
            "repo": {"kind": "fs", "path": "/srv/backups"},
            "instance": "orders",
            "after": after,
            "interval_s": interval_s,
        }))
        .expect("a target")
    }

    #[test]
    fn a_moved_starting_point_keeps_the_task_anything_else_restarts_it() {
        let running: HashMap<String, ArchiveTarget> = [
            ("m1".to_owned(), target("0-1-10", 60)),
            ("m2".to_owned(), target("0-1-10", 60)),
            ("m3".to_owned(), target("0-1-10", 60)),
            ("m4".to_owned(), target("0-1-10", 60)),
        ]
        .into();
        let wanted: HashMap<String, ArchiveTarget> = [
            // The same: nothing to do.
            ("m1".to_owned(), target("0-1-10", 60)),
            // A full backup moved the starting point: kept, told.
            ("m2".to_owned(), target("0-1-42", 60)),
            // Another interval: restarted.
            ("m3".to_owned(), target("0-1-42", 30)),
            // m4 no longer primary: stopped. m5 new primary: started.
            ("m5".to_owned(), target("0-1-42", 60)),
        ]
        .into();
        assert_eq!(
            changes(&running, wanted),
            [
                Change::Stop("m3".into()),
                Change::Stop("m4".into()),
                Change::Update("m2".into(), target("0-1-42", 60)),
                Change::Start("m3".into(), target("0-1-42", 30)),
                Change::Start("m5".into(), target("0-1-42", 60)),
            ]
        );
        assert_eq!(changes(&running, HashMap::new()).len(), 4);
        assert!(changes(&HashMap::new(), HashMap::new()).is_empty());
    }
}

//! SQLite implementation of [`Store`]: one WAL file, writes group-committed on one thread.
//!
//! Every write goes to a dedicated OS thread that owns the write connection. The thread takes
//! every request queued at that moment (up to [`MAX_BATCH`]), runs each in its own SAVEPOINT
//! inside one transaction, commits once (one fsync with `synchronous=FULL`), and only then
//! answers the callers. A request that fails (a CAS conflict, a duplicate name) rolls back
//! its own savepoint and nothing else. Reads use separate connections, which WAL keeps on a
//! consistent committed snapshot (<https://www.sqlite.org/wal.html#concurrency>).

use super::{Error, Result, Store};
use crate::model::{AuditEntry, Event, Instance, Node, NodeAdmin};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, ToSql};
use serde::{de::DeserializeOwned, Serialize};
use std::fmt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

/// Most requests committed by one transaction.
const MAX_BATCH: usize = 512;
/// Read connections of a file-backed store.
const READERS: usize = 4;
/// How long a connection waits for a lock held by another process before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// `PRAGMA user_version` of the schema below.
const SCHEMA_VERSION: i64 = 1;

/// Tables hold each record as JSON; the key columns (`name`, `id`, `revision`) are
/// authoritative and overwrite the same fields of the JSON when read, because ids are
/// assigned by the insert that stores the JSON.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY NOT NULL,
    json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    name TEXT PRIMARY KEY NOT NULL,
    revision INTEGER NOT NULL,
    json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    instance TEXT,
    json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_instance_id ON events (instance, id);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
";

/// A [`Store`] kept in one SQLite file (or in memory, for tests of callers).
pub struct SqliteStore {
    /// Path of the file, or `:memory:`.
    location: String,
    /// Queue of the writer thread; `None` only while dropping.
    writer: Option<mpsc::Sender<Box<dyn Job>>>,
    /// The writer thread, joined on drop so the file is closed when the store is gone.
    thread: Option<JoinHandle<()>>,
    /// Read connections. In memory this is the writer's own connection: a private
    /// in-memory database cannot be opened twice.
    readers: Vec<Arc<Mutex<Connection>>>,
    /// Round-robin position in `readers`.
    next_reader: AtomicUsize,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if missing, with mode 0600) the database file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        create_private(path)?;
        let location = path.display().to_string();
        let writer = Connection::open(path).context(&format!("open {location}"))?;
        configure_writer(&writer, true)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .context(&format!("open {location} for reading"))?;
            reader
                .busy_timeout(BUSY_TIMEOUT)
                .context("set busy_timeout")?;
            reader
                .pragma_update(None, "query_only", true)
                .context("set query_only")?;
            readers.push(Arc::new(Mutex::new(reader)));
        }
        info!(path = %location, "store opened");
        Self::start(location, Arc::new(Mutex::new(writer)), readers)
    }

    /// Opens a private in-memory database: nothing survives the store. For tests.
    pub fn open_in_memory() -> Result<Self> {
        let conn = Connection::open_in_memory().context("open in-memory database")?;
        configure_writer(&conn, false)?;
        let conn = Arc::new(Mutex::new(conn));
        Self::start(":memory:".to_owned(), Arc::clone(&conn), vec![conn])
    }

    fn start(
        location: String,
        writer: Arc<Mutex<Connection>>,
        readers: Vec<Arc<Mutex<Connection>>>,
    ) -> Result<Self> {
        let (queue, requests) = mpsc::channel::<Box<dyn Job>>();
        let thread = std::thread::Builder::new()
            .name("store-writer".to_owned())
            .spawn(move || write_loop(&writer, &requests))
            .map_err(|e| Error::Backend(format!("cannot start the store writer thread: {e}")))?;
        Ok(Self {
            location,
            writer: Some(queue),
            thread: Some(thread),
            readers,
            next_reader: AtomicUsize::new(0),
        })
    }

    /// Runs `work` on the writer thread inside the next batch's transaction and returns its
    /// result once that transaction is committed.
    async fn write<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Pending {
            work: Some(work),
            outcome: None,
            reply,
        });
        self.writer
            .as_ref()
            .ok_or_else(|| Error::Backend("the store is closing".to_owned()))?
            .send(job)
            .map_err(|_| Error::Backend("the store writer thread has stopped".to_owned()))?;
        answer.await.map_err(|_| {
            Error::Backend("the store writer thread stopped before answering".to_owned())
        })?
    }

    /// Runs `work` on a read connection in the blocking pool.
    async fn read<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let index = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len().max(1);
        let conn = Arc::clone(
            self.readers
                .get(index)
                .ok_or_else(|| Error::Backend("the store has no read connection".to_owned()))?,
        );
        tokio::task::spawn_blocking(move || {
            let conn = conn
                .lock()
                .map_err(|_| Error::Backend("store read connection poisoned".to_owned()))?;
            work(&conn)
        })
        .await
        .map_err(|e| Error::Backend(format!("store read task failed: {e}")))?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the queue lets the thread finish what is queued and exit; joining waits
        // at most for that last batch, so a reopen of the same file sees everything.
        drop(self.writer.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                error!(path = %self.location, "store writer thread panicked");
            }
        }
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn put_node(&self, node: &Node) -> Result<()> {
        let node = node.clone();
        self.write(move |conn| put_node(conn, node)).await
    }

    async fn nodes(&self) -> Result<Vec<Node>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT json FROM nodes ORDER BY name")
                .context("list nodes")?;
            let rows = stmt
                .query_map([], |row| row.get::<_, String>(0))
                .context("list nodes")?;
            rows.map(|json| decode("node", &json.context("list nodes")?))
                .collect()
        })
        .await
    }

    async fn set_node_admin(&self, name: &str, admin: NodeAdmin) -> Result<Node> {
        let name = name.to_owned();
        self.write(move |conn| {
            let mut node: Node = match select_node(conn, &name)? {
                Some(json) => decode("node", &json)?,
                None => return Err(Error::NotFound(name)),
            };
            node.admin = admin;
            conn.prepare_cached("UPDATE nodes SET json = ?2 WHERE name = ?1")
                .and_then(|mut stmt| stmt.execute(params![name, encode(&node)?]))
                .context("update node")?;
            Ok(node)
        })
        .await
    }

    async fn create_instance(&self, inst: &Instance, events: &[Event]) -> Result<Instance> {
        let mut inst = inst.clone();
        let events = events.to_vec();
        self.write(move |conn| {
            inst.revision = 1;
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO instances (name, revision, json) VALUES (?1, 1, ?2) \
                     ON CONFLICT (name) DO NOTHING",
                )
                .and_then(|mut stmt| stmt.execute(params![inst.spec.name, encode(&inst)?]))
                .context("insert instance")?;
            if inserted == 0 {
                return Err(Error::AlreadyExists(inst.spec.name));
            }
            insert_events(conn, &events)?;
            Ok(inst)
        })
        .await
    }

    async fn update_instance(&self, inst: &Instance, events: &[Event]) -> Result<Instance> {
        let mut inst = inst.clone();
        let events = events.to_vec();
        self.write(move |conn| {
            check_revision(conn, &inst.spec.name, inst.revision)?;
            inst.revision = inst.revision.checked_add(1).ok_or_else(|| {
                Error::Backend(format!("revision of {} overflows", inst.spec.name))
            })?;
            conn.prepare_cached("UPDATE instances SET revision = ?2, json = ?3 WHERE name = ?1")
                .and_then(|mut stmt| {
                    stmt.execute(params![
                        inst.spec.name,
                        to_sql(inst.revision)?,
                        encode(&inst)?
                    ])
                })
                .context("update instance")?;
            insert_events(conn, &events)?;
            Ok(inst)
        })
        .await
    }

    async fn delete_instance(
        &self,
        name: &str,
        expected_revision: u64,
        events: &[Event],
    ) -> Result<()> {
        let name = name.to_owned();
        let events = events.to_vec();
        self.write(move |conn| {
            check_revision(conn, &name, expected_revision)?;
            conn.prepare_cached("DELETE FROM instances WHERE name = ?1")
                .and_then(|mut stmt| stmt.execute(params![name]))
                .context("delete instance")?;
            insert_events(conn, &events)?;
            Ok(())
        })
        .await
    }

    async fn instance(&self, name: &str) -> Result<Option<Instance>> {
        let name = name.to_owned();
        self.read(move |conn| {
            let row = conn
                .prepare_cached("SELECT revision, json FROM instances WHERE name = ?1")
                .and_then(|mut stmt| {
                    stmt.query_row(params![name], |row| {
                        Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                    })
                    .optional()
                })
                .context("read instance")?;
            row.map(|(revision, json)| decode_instance(revision, &json))
                .transpose()
        })
        .await
    }

    async fn instances(&self) -> Result<Vec<Instance>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT revision, json FROM instances ORDER BY name")
                .context("list instances")?;
            let rows = stmt
                .query_map([], |row| Ok((row.get(0)?, row.get::<_, String>(1)?)))
                .context("list instances")?;
            rows.map(|row| {
                let (revision, json) = row.context("list instances")?;
                decode_instance(revision, &json)
            })
            .collect()
        })
        .await
    }

    async fn append_events(&self, events: &[Event]) -> Result<Vec<Event>> {
        let events = events.to_vec();
        self.write(move |conn| insert_events(conn, &events)).await
    }

    async fn events(&self, instance: Option<&str>, since: u64, limit: usize) -> Result<Vec<Event>> {
        let instance = instance.map(str::to_owned);
        let since = clamp(since);
        let limit = clamp(limit);
        self.read(move |conn| match instance {
            Some(name) => select_events(
                conn,
                "SELECT id, json FROM events WHERE instance = ?3 AND id > ?1 \
                 ORDER BY id LIMIT ?2",
                params![since, limit, name],
            ),
            None => select_events(
                conn,
                "SELECT id, json FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
                params![since, limit],
            ),
        })
        .await
    }

    async fn prune_events(&self, before_ms: i64, limit: usize) -> Result<usize> {
        let limit = clamp(limit);
        self.write(move |conn| {
            // The oldest `limit` events; the prefix of them older than `before_ms` goes
            // (AUTOINCREMENT: the ids are not handed out again).
            let mut stmt = conn
                .prepare_cached("SELECT id, at_ms FROM events ORDER BY id LIMIT ?1")
                .context("prune events")?;
            let rows = stmt
                .query_map(params![limit], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
                })
                .context("prune events")?;
            let mut last = None;
            for row in rows {
                let (id, at_ms) = row.context("prune events")?;
                if at_ms >= before_ms {
                    break;
                }
                last = Some(id);
            }
            let Some(last) = last else {
                return Ok(0);
            };
            let n = conn
                .execute("DELETE FROM events WHERE id <= ?1", params![last])
                .context("prune events")?;
            Ok(n)
        })
        .await
    }

    async fn events_before(
        &self,
        instance: Option<&str>,
        before: u64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        let instance = instance.map(str::to_owned);
        let before = clamp(before);
        let limit = clamp(limit);
        let mut newest_first = self
            .read(move |conn| match instance {
                Some(name) => select_events(
                    conn,
                    "SELECT id, json FROM events WHERE instance = ?3 AND id < ?1 \
                     ORDER BY id DESC LIMIT ?2",
                    params![before, limit, name],
                ),
                None => select_events(
                    conn,
                    "SELECT id, json FROM events WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
                    params![before, limit],
                ),
            })
            .await?;
        newest_first.reverse();
        Ok(newest_first)
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<AuditEntry> {
        let mut entry = entry.clone();
        self.write(move |conn| {
            conn.prepare_cached("INSERT INTO audit (json) VALUES (?1)")
                .and_then(|mut stmt| stmt.execute(params![encode(&entry)?]))
                .context("insert audit entry")?;
            entry.id = from_sql(conn.last_insert_rowid())?;
            Ok(entry)
        })
        .await
    }

    async fn audit(&self, since: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        let since = clamp(since);
        let limit = clamp(limit);
        self.read(move |conn| {
            select_audit(
                conn,
                "SELECT id, json FROM audit WHERE id > ?1 ORDER BY id LIMIT ?2",
                params![since, limit],
            )
        })
        .await
    }

    async fn audit_before(&self, before: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        let before = clamp(before);
        let limit = clamp(limit);
        let mut newest_first = self
            .read(move |conn| {
                select_audit(
                    conn,
                    "SELECT id, json FROM audit WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
                    params![before, limit],
                )
            })
            .await?;
        newest_first.reverse();
        Ok(newest_first)
    }

    async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        let key = key.to_owned();
        self.read(move |conn| {
            conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")
                .and_then(|mut stmt| stmt.query_row(params![key], |row| row.get(0)).optional())
                .context("read meta")
        })
        .await
    }

    async fn put_meta(&self, key: &str, value: &str) -> Result<()> {
        let key = key.to_owned();
        let value = value.to_owned();
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .and_then(|mut stmt| stmt.execute(params![key, value]))
            .context("write meta")?;
            Ok(())
        })
        .await
    }

    async fn compact(&self) -> Result<()> {
        if self.location == ":memory:" {
            return Ok(()); // no file keeps anything
        }
        let path = self.location.clone();
        tokio::task::spawn_blocking(move || {
            let conn = Connection::open(&path).context(&format!("open {path}"))?;
            conn.busy_timeout(BUSY_TIMEOUT)
                .context("set busy_timeout")?;
            // VACUUM rewrites every page (old record versions in free pages are gone); the
            // truncating checkpoint empties the WAL, which still holds the pages it replaced.
            conn.execute_batch(
                "PRAGMA secure_delete = ON; VACUUM; PRAGMA wal_checkpoint(TRUNCATE);",
            )
            .context("vacuum")?;
            info!(path = %path, "store compacted");
            Ok(())
        })
        .await
        .map_err(|e| Error::Backend(format!("store compaction task failed: {e}")))?
    }

    async fn meta_with_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let prefix = prefix.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT key, value FROM meta WHERE substr(key, 1, ?2) = ?1 ORDER BY key",
                )
                .context("read meta")?;
            let rows = stmt
                .query_map(params![prefix, prefix.chars().count() as i64], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .context("read meta")?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .context("read meta")
        })
        .await
    }

    async fn delete_meta(&self, key: &str) -> Result<()> {
        let key = key.to_owned();
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM meta WHERE key = ?1")
                .and_then(|mut stmt| stmt.execute(params![key]))
                .context("delete meta")?;
            Ok(())
        })
        .await
    }
}

// ---- Writer thread -------------------------------------------------------------------------

/// One queued write request.
trait Job: Send {
    /// Runs the request inside the open transaction; `false` if it failed and its savepoint
    /// must be rolled back.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the transaction is committed (`Ok`) or abandoned (`Err`).
    fn finish(self: Box<Self>, batch: Result<(), &str>);
}

/// A request with the closure that does it and the channel its caller waits on.
struct Pending<T, F> {
    /// The work; taken when run.
    work: Option<F>,
    /// What the work returned, held until the commit.
    outcome: Option<Result<T>>,
    /// Where the caller waits.
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Job for Pending<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T> + Send + 'static,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let outcome = match self.work.take() {
            Some(work) => work(conn),
            None => Err(Error::Backend("store request ran twice".to_owned())),
        };
        let ok = outcome.is_ok();
        self.outcome = Some(outcome);
        ok
    }

    fn finish(self: Box<Self>, batch: Result<(), &str>) {
        let answer = match (batch, self.outcome) {
            (Ok(()), Some(outcome)) => outcome,
            (Ok(()), None) => Err(Error::Backend("store request did not run".to_owned())),
            (Err(e), _) => Err(Error::Backend(e.to_owned())),
        };
        // The caller may have stopped waiting; the outcome stands either way.
        let _ = self.reply.send(answer);
    }
}

/// Body of the writer thread: batches until every sender is gone.
fn write_loop(conn: &Mutex<Connection>, requests: &mpsc::Receiver<Box<dyn Job>>) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = requests.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let outcome = match conn.lock() {
            Ok(conn) => run_batch(&conn, &mut batch),
            Err(_) => Err("store write connection poisoned".to_owned()),
        };
        if let Err(e) = &outcome {
            error!(error = %e, requests = batch.len(), "store write failed, nothing committed");
        }
        let outcome = outcome.as_ref().map(|_| ()).map_err(String::as_str);
        for job in batch.drain(..) {
            job.finish(outcome);
        }
    }
    debug!("store writer stopped");
}

/// Runs the batch in one transaction and commits it; on `Err` nothing of it is stored.
fn run_batch(conn: &Connection, batch: &mut [Box<dyn Job>]) -> Result<(), String> {
    exec(conn, "BEGIN IMMEDIATE")?;
    let result = run_jobs(conn, batch);
    if result.is_err() && !conn.is_autocommit() {
        if let Err(e) = exec(conn, "ROLLBACK") {
            error!(error = %e, "store rollback failed");
        }
    }
    result
}

fn run_jobs(conn: &Connection, batch: &mut [Box<dyn Job>]) -> Result<(), String> {
    for job in batch.iter_mut() {
        exec(conn, "SAVEPOINT request")?;
        if job.run(conn) {
            exec(conn, "RELEASE request")?;
        } else {
            exec(conn, "ROLLBACK TO request")?;
            exec(conn, "RELEASE request")?;
        }
        // Some errors (disk full, I/O) make SQLite roll back the whole transaction
        // (https://www.sqlite.org/lang_transaction.html#response_to_errors_within_a_transaction).
        if conn.is_autocommit() {
            return Err("the transaction was rolled back by SQLite after an error".to_owned());
        }
    }
    exec(conn, "COMMIT")
}

fn exec(conn: &Connection, sql: &str) -> Result<(), String> {
    conn.prepare_cached(sql)
        .and_then(|mut stmt| stmt.execute([]))
        .map(drop)
        .map_err(|e| format!("{sql}: {e}"))
}

// ---- Statements run inside a write transaction ---------------------------------------------

fn put_node(conn: &Connection, mut node: Node) -> Result<()> {
    if let Some(json) = select_node(conn, &node.name)? {
        let old: Node = decode("node", &json)?;
        node.admin = old.admin;
        node.registered_at_ms = old.registered_at_ms;
    }
    conn.prepare_cached(
        "INSERT INTO nodes (name, json) VALUES (?1, ?2) \
         ON CONFLICT (name) DO UPDATE SET json = excluded.json",
    )
    .and_then(|mut stmt| stmt.execute(params![node.name, encode(&node)?]))
    .context("write node")?;
    Ok(())
}

fn select_node(conn: &Connection, name: &str) -> Result<Option<String>> {
    conn.prepare_cached("SELECT json FROM nodes WHERE name = ?1")
        .and_then(|mut stmt| stmt.query_row(params![name], |row| row.get(0)).optional())
        .context("read node")
}

/// `NotFound` unless the instance exists, `Conflict` unless it has revision `expected`.
fn check_revision(conn: &Connection, name: &str, expected: u64) -> Result<()> {
    let actual: Option<i64> = conn
        .prepare_cached("SELECT revision FROM instances WHERE name = ?1")
        .and_then(|mut stmt| stmt.query_row(params![name], |row| row.get(0)).optional())
        .context("read instance revision")?;
    let actual = from_sql(actual.ok_or_else(|| Error::NotFound(name.to_owned()))?)?;
    if actual != expected {
        return Err(Error::Conflict {
            name: name.to_owned(),
            expected,
            actual,
        });
    }
    Ok(())
}

fn select_audit(conn: &Connection, sql: &str, params: &[&dyn ToSql]) -> Result<Vec<AuditEntry>> {
    select_numbered(
        conn,
        sql,
        params,
        "audit entry",
        |e: &mut AuditEntry, id| {
            e.id = id;
        },
    )
}

fn select_events(conn: &Connection, sql: &str, params: &[&dyn ToSql]) -> Result<Vec<Event>> {
    select_numbered(conn, sql, params, "event", |e: &mut Event, id| e.id = id)
}

/// Rows of `(id, json)` of a numbered log, each decoded and given its id.
fn select_numbered<T: DeserializeOwned>(
    conn: &Connection,
    sql: &str,
    params: &[&dyn ToSql],
    what: &str,
    set_id: fn(&mut T, u64),
) -> Result<Vec<T>> {
    let doing = format!("list {what}");
    let mut stmt = conn.prepare_cached(sql).context(&doing)?;
    let rows = stmt
        .query_map(params, |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
        })
        .context(&doing)?;
    rows.map(|row| {
        let (id, json) = row.context(&doing)?;
        let mut item: T = decode(what, &json)?;
        set_id(&mut item, from_sql(id)?);
        Ok(item)
    })
    .collect()
}

fn insert_events(conn: &Connection, events: &[Event]) -> Result<Vec<Event>> {
    let mut stmt = conn
        .prepare_cached("INSERT INTO events (at_ms, instance, json) VALUES (?1, ?2, ?3)")
        .context("insert event")?;
    let mut stored = Vec::with_capacity(events.len());
    for event in events {
        let json = encode(event).context("encode event")?;
        stmt.execute(params![event.at_ms, event.instance, json])
            .context("insert event")?;
        let mut event = event.clone();
        event.id = from_sql(conn.last_insert_rowid())?;
        stored.push(event);
    }
    Ok(stored)
}

// ---- Setup and conversions ------------------------------------------------------------------

/// Creates the database file with mode 0600 (it holds credentials); SQLite gives its `-wal`
/// and `-shm` files the same mode.
fn create_private(path: &Path) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::Backend(format!("open {}: {e}", path.display())))?;
    let mode = file
        .metadata()
        .map_err(|e| Error::Backend(format!("stat {}: {e}", path.display())))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        match file.set_permissions(std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => warn!(path = %path.display(), mode = %format!("{mode:o}"),
                "store file was readable by others; set its mode to 0600"),
            Err(e) => warn!(path = %path.display(), mode = %format!("{mode:o}"), error = %e,
                "store file is readable by others and its mode cannot be changed"),
        }
    }
    Ok(())
}

/// Sets the pragmas of the write connection and creates the schema if missing.
fn configure_writer(conn: &Connection, file: bool) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)
        .context("set busy_timeout")?;
    if file {
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .context("set journal_mode")?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Backend(format!(
                "journal_mode is {mode}, WAL is required"
            )));
        }
    }
    // FULL: a commit is on disk before it is acknowledged, so `kill -9` or a power cut
    // loses nothing reported (https://www.sqlite.org/pragma.html#pragma_synchronous).
    conn.pragma_update(None, "synchronous", "FULL")
        .context("set synchronous")?;
    // Deleted and overwritten records are zeroed, so a secret sealed again or a deleted
    // instance leaves nothing behind in free pages (docs/secrets.md).
    conn.pragma_update(None, "secure_delete", true)
        .context("set secure_delete")?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .context("read user_version")?;
    if version > SCHEMA_VERSION {
        return Err(Error::Backend(format!(
            "schema version {version} is newer than this scheduler's ({SCHEMA_VERSION})"
        )));
    }
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
    ))
    .context("create schema")
}

fn encode<T: Serialize>(value: &T) -> rusqlite::Result<String> {
    serde_json::to_string(value).map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))
}

fn decode<T: DeserializeOwned>(what: &str, json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| Error::Backend(format!("corrupt {what} record: {e}")))
}

fn decode_instance(revision: i64, json: &str) -> Result<Instance> {
    let mut inst: Instance = decode("instance", json)?;
    inst.revision = from_sql(revision)?;
    Ok(inst)
}

fn to_sql(value: u64) -> rusqlite::Result<i64> {
    i64::try_from(value).map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))
}

fn from_sql(value: i64) -> Result<u64> {
    u64::try_from(value).map_err(|_| Error::Backend(format!("negative id or revision {value}")))
}

/// A bound that SQLite can take; larger values mean "no bound" anyway.
fn clamp<N: TryInto<i64>>(value: N) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

/// Turns a SQLite error into `Error::Backend`, naming what was being done.
trait Context<T> {
    fn context(self, what: &str) -> Result<T>;
}

impl<T> Context<T> for rusqlite::Result<T> {
    fn context(self, what: &str) -> Result<T> {
        self.map_err(|e| Error::Backend(format!("{what}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    //! The store contract ([`super::super::contract`]) on SQLite in memory and on files, and
    //! what only a file has: permissions, reopening, corruption.
    use super::super::contract::{self, audit_entry, event, instance, node};
    use super::*;
    use std::collections::HashMap;

    /// In memory: one store per space (a second view of a space is the same store: one
    /// process, one database).
    #[derive(Default)]
    struct InMemory(std::sync::Mutex<HashMap<String, Arc<dyn Store>>>);

    #[async_trait::async_trait]
    impl contract::Backend for InMemory {
        fn name(&self) -> &str {
            "sqlite in memory"
        }
        async fn open(&self, space: &str) -> anyhow::Result<Arc<dyn Store>> {
            let mut stores = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = stores.get(space) {
                return Ok(Arc::clone(s));
            }
            let s: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory()?);
            stores.insert(space.to_owned(), Arc::clone(&s));
            Ok(s)
        }
    }

    /// Files: one per space; a second view opens the same file again (two connections).
    struct Files(tempfile::TempDir);

    #[async_trait::async_trait]
    impl contract::Backend for Files {
        fn name(&self) -> &str {
            "sqlite files"
        }
        async fn open(&self, space: &str) -> anyhow::Result<Arc<dyn Store>> {
            let file = format!("{}.db", space.trim_end_matches('/'));
            Ok(Arc::new(SqliteStore::open(&self.0.path().join(file))?))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_store_contract_holds_in_memory() -> anyhow::Result<()> {
        contract::run(&InMemory::default()).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_store_contract_holds_on_files() -> anyhow::Result<()> {
        contract::run(&Files(tempfile::tempdir()?)).await
    }

    fn open_temp() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("mofang.db")).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn everything_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mofang.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            store.put_node(&node("n1")).await.unwrap();
            let inst = store
                .create_instance(&instance("db1"), &[event(Some("db1"), "instance_created")])
                .await
                .unwrap();
            store.update_instance(&inst, &[]).await.unwrap();
            store.append_audit(&audit_entry("POST")).await.unwrap();
            store.put_meta("k", "v").await.unwrap();
        }
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.nodes().await.unwrap(), [node("n1")]);
        assert_eq!(store.instance("db1").await.unwrap().unwrap().revision, 2);
        assert_eq!(store.events(None, 0, 10).await.unwrap().len(), 1);
        assert_eq!(store.audit(0, 10).await.unwrap().len(), 1);
        assert_eq!(store.get_meta("k").await.unwrap().as_deref(), Some("v"));
        // Ids continue where they stopped.
        let next = store.append_events(&[event(None, "x")]).await.unwrap();
        assert_eq!(next[0].id, 2);
    }

    #[tokio::test]
    async fn corrupt_record_is_a_backend_error() {
        let (dir, store) = open_temp();
        store.create_instance(&instance("db1"), &[]).await.unwrap();
        let conn = Connection::open(dir.path().join("mofang.db")).unwrap();
        conn.execute("UPDATE instances SET json = '{' WHERE name = 'db1'", [])
            .unwrap();
        let err = store.instance("db1").await.unwrap_err();
        assert!(matches!(err, Error::Backend(_)), "{err}");
        assert!(matches!(
            store.instances().await.unwrap_err(),
            Error::Backend(_)
        ));
    }
}

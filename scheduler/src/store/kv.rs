//! The [`Store`] logic the Consul and etcd backends share: the key layout, the id counters,
//! and a writer task that commits queued writes together in one check-and-set transaction.
//!
//! Key layout under the prefix `P` (default `mofang/`):
//!
//! | key | value |
//! |---|---|
//! | `P instances/<name>` | instance JSON, with its revision |
//! | `P nodes/<name>` | node JSON |
//! | `P meta/<key>` | the metadata string |
//! | `P events/<id / 1000>/<id>` | event JSON (ids zero-padded to 20 digits) |
//! | `P instance-events/<name>/<id>` | the same event, when it concerns an instance |
//! | `P audit/<id / 1000>/<id>` | audit entry JSON |
//! | `P counters/events`, `P counters/audit` | last id given, decimal |
//!
//! Every write is one backend transaction. An instance write carries a condition on the
//! backend's own version of the key (Consul's `ModifyIndex`, etcd's `mod_revision`): absent
//! for a create, the version read together with the expected revision for an update or
//! delete. Events are written in the same transaction, and the counter key moves from the
//! last id to the new one under the same kind of condition, so ids are dense, unique and
//! increasing even if two schedulers ever wrote at once.
//!
//! One writer task per store drains the queue of writes into one transaction (group commit,
//! as the SQLite store does). A request whose condition fails is answered (`AlreadyExists`,
//! `Conflict`, `NotFound`) or, for node upserts, retried; the rest of its batch is retried
//! with fresh reads.

use super::{Error, Result, Store};
use crate::model::{AuditEntry, Event, Instance, Node, NodeAdmin};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn, Instrument};

/// Ids per chunk of `events/` and `audit/`: a read of ids after `n` lists one chunk at a time.
const CHUNK: u64 = 1000;
/// Most rounds (read, plan, commit) for one batch before its requests are refused: only
/// another writer changing the same keys all the time makes a round fail without an answer.
const MAX_ROUNDS: u32 = 32;
/// Upper bound of the random pause before a retried round (doubles per round up to 64x):
/// two writers racing for the counter then stop colliding.
const RETRY_PAUSE: Duration = Duration::from_millis(2);

/// One entry read from the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Full key.
    pub key: String,
    /// Value.
    pub value: Vec<u8>,
    /// The backend's version of the key (Consul `ModifyIndex`, etcd `mod_revision`).
    pub version: u64,
}

/// The condition a conditional write puts on its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The key does not exist.
    Absent,
    /// The key exists at this version.
    Version(u64),
}

/// One write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Writes `value`, if `expect` (when set) holds.
    Put {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
        /// Condition.
        expect: Option<Expect>,
    },
    /// Deletes the key if it exists at `version`.
    Delete {
        /// Key.
        key: String,
        /// Version the key must have.
        version: u64,
    },
}

/// What a commit did.
#[derive(Debug)]
pub enum Commit {
    /// Every op was applied; the new version of each key written by a `Put`.
    Applied(HashMap<String, u64>),
    /// Nothing was applied: the conditions of these ops (indexes into the ops) did not hold.
    Rejected(Vec<usize>),
}

/// A transactional key/value backend: what Consul KV and etcd have in common.
#[async_trait::async_trait]
pub trait Kv: Send + Sync + 'static {
    /// Backend name for messages.
    fn name(&self) -> &'static str;
    /// Capacity of one transaction, in [`Kv::cost`] units.
    fn max_ops(&self) -> usize;
    /// Cost of one op.
    fn cost(&self, _op: &Op) -> usize {
        1
    }
    /// Most value bytes in one transaction.
    fn max_bytes(&self) -> usize;
    /// Reads keys (linearizable: sees every commit acknowledged before the call).
    async fn get(&self, keys: &[String]) -> Result<Vec<Option<Entry>>>;
    /// Entries whose key starts with `prefix` and is >= `from`, in key order, at most `limit`
    /// (linearizable).
    async fn scan(&self, prefix: &str, from: &str, limit: usize) -> Result<Vec<Entry>>;
    /// Entries whose key starts with `prefix` and is < `before`: the last `limit` of them in
    /// key order, returned in key order (linearizable).
    async fn scan_back(&self, prefix: &str, before: &str, limit: usize) -> Result<Vec<Entry>>;
    /// Applies all ops atomically, or none if a condition fails. An `Err` leaves it unknown
    /// whether they were applied.
    async fn commit(&self, ops: &[Op]) -> Result<Commit>;
}

/// Keys of the layout described in the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    prefix: String,
}

/// Which id sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sequence {
    Events = 0,
    Audit = 1,
}

impl Layout {
    pub(crate) fn new(prefix: &str) -> Self {
        Layout {
            prefix: prefix.to_owned(),
        }
    }

    fn instances(&self) -> String {
        format!("{}instances/", self.prefix)
    }
    fn instance(&self, name: &str) -> String {
        format!("{}instances/{}", self.prefix, escape(name))
    }
    fn nodes(&self) -> String {
        format!("{}nodes/", self.prefix)
    }
    fn node(&self, name: &str) -> String {
        format!("{}nodes/{}", self.prefix, escape(name))
    }
    fn meta(&self, key: &str) -> String {
        format!("{}meta/{}", self.prefix, escape(key))
    }
    fn counter(&self, seq: Sequence) -> String {
        match seq {
            Sequence::Events => format!("{}counters/events", self.prefix),
            Sequence::Audit => format!("{}counters/audit", self.prefix),
        }
    }
    /// The first id the event log still holds once its oldest events were pruned (absent:
    /// nothing pruned); the audit log is never pruned (decision 174).
    fn events_floor(&self) -> String {
        format!("{}counters/events-floor", self.prefix)
    }
    fn chunk(&self, seq: Sequence, chunk: u64) -> String {
        match seq {
            Sequence::Events => format!("{}events/{chunk:017}/", self.prefix),
            Sequence::Audit => format!("{}audit/{chunk:017}/", self.prefix),
        }
    }
    fn numbered(&self, seq: Sequence, id: u64) -> String {
        format!("{}{id:020}", self.chunk(seq, id / CHUNK))
    }
    fn instance_events(&self, name: &str) -> String {
        format!("{}instance-events/{}/", self.prefix, escape(name))
    }
    fn instance_event(&self, name: &str, id: u64) -> String {
        format!("{}{id:020}", self.instance_events(name))
    }
}

/// Makes a name one key segment: `%` and `/` are percent-encoded, so distinct names give
/// distinct keys and no name reaches outside its folder.
fn escape(name: &str) -> String {
    if !name.contains(['%', '/']) {
        return name.to_owned();
    }
    name.replace('%', "%25").replace('/', "%2F")
}

/// The inverse of [`escape`].
fn unescape(key: &str) -> String {
    if !key.contains('%') {
        return key.to_owned();
    }
    key.replace("%2F", "/").replace("%25", "%")
}

/// A [`Store`] on a transactional key/value backend (Consul KV, etcd).
pub struct KvStore<K: Kv> {
    kv: Arc<K>,
    layout: Layout,
    queue: mpsc::UnboundedSender<Request>,
}

impl<K: Kv> std::fmt::Debug for KvStore<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore")
            .field("backend", &self.kv.name())
            .field("prefix", &self.layout.prefix)
            .finish_non_exhaustive()
    }
}

impl<K: Kv> KvStore<K> {
    /// Starts the writer task (on the current Tokio runtime); it stops once the store is
    /// dropped and the queued writes are done.
    pub(crate) fn start(kv: K, prefix: &str) -> Self {
        let kv = Arc::new(kv);
        let layout = Layout::new(prefix);
        let (queue, requests) = mpsc::unbounded_channel();
        let writer = Writer {
            kv: Arc::clone(&kv),
            layout: layout.clone(),
            counters: [None, None],
        };
        let span = tracing::info_span!("store_writer", backend = kv.name());
        tokio::spawn(writer.run(requests).instrument(span));
        KvStore { kv, layout, queue }
    }

    async fn write(&self, write: Write) -> Result<Done> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request { write, reply })
            .map_err(|_| Error::Backend("the store writer has stopped".to_owned()))?;
        answer
            .await
            .map_err(|_| Error::Backend("the store writer stopped before answering".to_owned()))?
    }

    /// One key's entry, if it exists.
    async fn get_one(&self, key: &str) -> Result<Option<Entry>> {
        Ok(self.kv.get(&[key.to_owned()]).await?.pop().flatten())
    }

    /// The first id a sequence still holds (1 if nothing was pruned: the audit log never is)
    /// and its last id (0 if none yet). The two keys are read as two single reads at once:
    /// one read of both would cost Consul a second round trip whenever the floor is absent.
    async fn bounds(&self, seq: Sequence) -> Result<(u64, u64)> {
        let one = |key: String| async move {
            match self.get_one(&key).await? {
                Some(entry) => parse_counter(&entry).map(Some),
                None => Ok(None),
            }
        };
        let (floor, last) = match seq {
            Sequence::Audit => (None, one(self.layout.counter(seq)).await?),
            Sequence::Events => futures::try_join!(
                one(self.layout.events_floor()),
                one(self.layout.counter(seq))
            )?,
        };
        Ok((floor.unwrap_or(1).max(1), last.unwrap_or(0)))
    }

    /// Records of a numbered sequence with id > `since`, oldest first, at most `limit`.
    async fn numbered<T: DeserializeOwned>(
        &self,
        seq: Sequence,
        since: u64,
        limit: usize,
        what: &str,
    ) -> Result<Vec<T>> {
        let Some(first) = since.checked_add(1) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (floor, last) = self.bounds(seq).await?;
        let first = first.max(floor);
        let mut out = Vec::new();
        let mut chunk = first / CHUNK;
        while chunk <= last / CHUNK && out.len() < limit {
            let from = self.layout.numbered(seq, first.max(chunk * CHUNK));
            let entries = self
                .kv
                .scan(&self.layout.chunk(seq, chunk), &from, limit - out.len())
                .await?;
            for entry in entries {
                out.push(decode(what, &entry)?);
            }
            chunk += 1;
        }
        Ok(out)
    }

    /// Entries of a numbered log with id < `before`, the newest `limit`, oldest first: chunk
    /// by chunk backward from the one holding `before - 1` (or the last id).
    async fn numbered_before<T: DeserializeOwned>(
        &self,
        seq: Sequence,
        before: u64,
        limit: usize,
        what: &str,
    ) -> Result<Vec<T>> {
        if before <= 1 || limit == 0 {
            return Ok(Vec::new());
        }
        let (floor, last) = self.bounds(seq).await?;
        let top = (before - 1).min(last);
        if top == 0 || top < floor {
            return Ok(Vec::new());
        }
        // Every key of a chunk below `before`'s sorts below `before`'s own key.
        let bound = self.layout.numbered(seq, before.min(last + 1));
        let mut pages: Vec<Vec<Entry>> = Vec::new();
        let mut found = 0;
        let mut chunk = top / CHUNK;
        loop {
            let page = self
                .kv
                .scan_back(&self.layout.chunk(seq, chunk), &bound, limit - found)
                .await?;
            found += page.len();
            pages.push(page);
            if found >= limit || chunk == 0 || chunk <= floor / CHUNK {
                break;
            }
            chunk -= 1;
        }
        pages
            .iter()
            .rev()
            .flatten()
            .map(|entry| decode(what, entry))
            .collect()
    }
}

#[async_trait::async_trait]
impl<K: Kv> Store for KvStore<K> {
    async fn put_node(&self, node: &Node) -> Result<()> {
        self.write(Write::PutNode(node.clone())).await.map(drop)
    }

    async fn nodes(&self) -> Result<Vec<Node>> {
        let prefix = self.layout.nodes();
        let mut nodes = self
            .kv
            .scan(&prefix, &prefix, usize::MAX)
            .await?
            .iter()
            .map(|e| decode::<Node>("node", e))
            .collect::<Result<Vec<_>>>()?;
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(nodes)
    }

    async fn set_node_admin(&self, name: &str, admin: NodeAdmin) -> Result<Node> {
        match self
            .write(Write::SetNodeAdmin {
                name: name.to_owned(),
                admin,
            })
            .await?
        {
            Done::Node(node) => Ok(node),
            other => Err(unexpected(&other)),
        }
    }

    async fn create_instance(&self, inst: &Instance, events: &[Event]) -> Result<Instance> {
        let write = Write::Create {
            inst: inst.clone(),
            events: events.to_vec(),
        };
        match self.write(write).await? {
            Done::Instance(inst) => Ok(*inst),
            other => Err(unexpected(&other)),
        }
    }

    async fn update_instance(&self, inst: &Instance, events: &[Event]) -> Result<Instance> {
        let write = Write::Update {
            inst: inst.clone(),
            events: events.to_vec(),
        };
        match self.write(write).await? {
            Done::Instance(inst) => Ok(*inst),
            other => Err(unexpected(&other)),
        }
    }

    async fn delete_instance(
        &self,
        name: &str,
        expected_revision: u64,
        events: &[Event],
    ) -> Result<()> {
        let write = Write::Delete {
            name: name.to_owned(),
            expected: expected_revision,
            events: events.to_vec(),
        };
        self.write(write).await.map(drop)
    }

    async fn instance(&self, name: &str) -> Result<Option<Instance>> {
        let key = self.layout.instance(name);
        self.get_one(&key)
            .await?
            .map(|e| decode("instance", &e))
            .transpose()
    }

    async fn instances(&self) -> Result<Vec<Instance>> {
        let prefix = self.layout.instances();
        let mut all = self
            .kv
            .scan(&prefix, &prefix, usize::MAX)
            .await?
            .iter()
            .map(|e| decode::<Instance>("instance", e))
            .collect::<Result<Vec<_>>>()?;
        all.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        Ok(all)
    }

    async fn append_events(&self, events: &[Event]) -> Result<Vec<Event>> {
        match self.write(Write::Events(events.to_vec())).await? {
            Done::Events(events) => Ok(events),
            other => Err(unexpected(&other)),
        }
    }

    async fn events(&self, instance: Option<&str>, since: u64, limit: usize) -> Result<Vec<Event>> {
        let Some(name) = instance else {
            return self.numbered(Sequence::Events, since, limit, "event").await;
        };
        let Some(first) = since.checked_add(1) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.kv
            .scan(
                &self.layout.instance_events(name),
                &self.layout.instance_event(name, first),
                limit,
            )
            .await?
            .iter()
            .map(|e| decode("event", e))
            .collect()
    }

    async fn prune_events(&self, before_ms: i64, limit: usize) -> Result<usize> {
        // Not through the writer: events are never rewritten, so each delete is conditional
        // on the version just read, and the floor moves in the same transaction as the
        // events below it. Another scheduler pruning at the same time makes a transaction
        // fail whole; what it did stays done, the rest waits for the next pass.
        let (floor, last) = self.bounds(Sequence::Events).await?;
        let mut doomed: Vec<(Entry, Event)> = Vec::new();
        let mut chunk = floor / CHUNK;
        'scan: while chunk <= last / CHUNK && doomed.len() < limit {
            let from = self
                .layout
                .numbered(Sequence::Events, floor.max(chunk * CHUNK));
            let entries = self
                .kv
                .scan(
                    &self.layout.chunk(Sequence::Events, chunk),
                    &from,
                    limit - doomed.len(),
                )
                .await?;
            for entry in entries {
                let event: Event = decode("event", &entry)?;
                if event.at_ms >= before_ms {
                    break 'scan;
                }
                doomed.push((entry, event));
            }
            chunk += 1;
        }
        if doomed.is_empty() {
            return Ok(0);
        }
        let index_keys: Vec<String> = doomed
            .iter()
            .filter_map(|(_, e)| {
                e.instance
                    .as_deref()
                    .map(|name| self.layout.instance_event(name, e.id))
            })
            .collect();
        let versions: HashMap<String, u64> = self
            .kv
            .get(&index_keys)
            .await?
            .into_iter()
            .flatten()
            .map(|entry| (entry.key, entry.version))
            .collect();
        let floor_put = |next: u64| Op::Put {
            key: self.layout.events_floor(),
            value: next.to_string().into_bytes(),
            expect: None,
        };
        let room = self.kv.max_ops();
        let mut pruned = 0;
        let mut ops: Vec<Op> = Vec::new();
        let mut cost = self.kv.cost(&floor_put(0));
        let mut in_txn = 0;
        for (k, (entry, event)) in doomed.iter().enumerate() {
            let mut pair = vec![Op::Delete {
                key: entry.key.clone(),
                version: entry.version,
            }];
            if let Some(name) = event.instance.as_deref() {
                let key = self.layout.instance_event(name, event.id);
                if let Some(version) = versions.get(&key) {
                    pair.push(Op::Delete {
                        key,
                        version: *version,
                    });
                }
            }
            let pair_cost: usize = pair.iter().map(|op| self.kv.cost(op)).sum();
            if cost + pair_cost > room && !ops.is_empty() {
                ops.push(floor_put(doomed[k - 1].1.id + 1));
                match self.kv.commit(&ops).await? {
                    Commit::Applied(_) => pruned += in_txn,
                    Commit::Rejected(_) => return Ok(pruned),
                }
                ops.clear();
                cost = self.kv.cost(&floor_put(0));
                in_txn = 0;
            }
            cost += pair_cost;
            ops.extend(pair);
            in_txn += 1;
        }
        if let Some((_, newest)) = doomed.last() {
            ops.push(floor_put(newest.id + 1));
            if let Commit::Applied(_) = self.kv.commit(&ops).await? {
                pruned += in_txn;
            }
        }
        Ok(pruned)
    }

    async fn events_before(
        &self,
        instance: Option<&str>,
        before: u64,
        limit: usize,
    ) -> Result<Vec<Event>> {
        let Some(name) = instance else {
            return self
                .numbered_before(Sequence::Events, before, limit, "event")
                .await;
        };
        if before <= 1 || limit == 0 {
            return Ok(Vec::new());
        }
        self.kv
            .scan_back(
                &self.layout.instance_events(name),
                &self.layout.instance_event(name, before),
                limit,
            )
            .await?
            .iter()
            .map(|e| decode("event", e))
            .collect()
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<AuditEntry> {
        match self.write(Write::Audit(entry.clone())).await? {
            Done::Audit(entry) => Ok(entry),
            other => Err(unexpected(&other)),
        }
    }

    async fn audit(&self, since: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        self.numbered(Sequence::Audit, since, limit, "audit entry")
            .await
    }

    async fn audit_before(&self, before: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        self.numbered_before(Sequence::Audit, before, limit, "audit entry")
            .await
    }

    async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        let key = self.layout.meta(key);
        match self.get_one(&key).await? {
            Some(entry) => String::from_utf8(entry.value)
                .map(Some)
                .map_err(|_| Error::Backend(format!("corrupt meta record {key}: not UTF-8"))),
            None => Ok(None),
        }
    }

    async fn put_meta(&self, key: &str, value: &str) -> Result<()> {
        self.write(Write::Meta {
            key: key.to_owned(),
            value: value.to_owned(),
        })
        .await
        .map(drop)
    }

    async fn meta_with_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        // `escape` maps each character on its own, so escaped keys keep escaped prefixes.
        let scan = self.layout.meta(prefix);
        let whole = self.layout.meta("");
        let mut out = Vec::new();
        let mut from = scan.clone();
        loop {
            let page = self.kv.scan(&scan, &from, 1000).await?;
            let last = page.len() < 1000;
            for e in &page {
                let value = String::from_utf8(e.value.clone()).map_err(|_| {
                    Error::Backend(format!("corrupt meta record {}: not UTF-8", e.key))
                })?;
                let key = e.key.strip_prefix(&whole).unwrap_or(&e.key);
                out.push((unescape(key), value));
            }
            match page.last() {
                Some(e) if !last => from = format!("{}\0", e.key),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn delete_meta(&self, key: &str) -> Result<()> {
        // Not through the writer: a metadata key is written whole and without condition, so
        // a delete at the version just read is enough (a write in between wins, as it
        // would have a moment later).
        let key = self.layout.meta(key);
        let Some(entry) = self.get_one(&key).await? else {
            return Ok(());
        };
        self.kv
            .commit(&[Op::Delete {
                key,
                version: entry.version,
            }])
            .await
            .map(drop)
    }
}

// ---- Writer task ----------------------------------------------------------------------------

/// A write as asked by a caller.
#[derive(Debug)]
enum Write {
    PutNode(Node),
    SetNodeAdmin {
        name: String,
        admin: NodeAdmin,
    },
    Create {
        inst: Instance,
        events: Vec<Event>,
    },
    Update {
        inst: Instance,
        events: Vec<Event>,
    },
    Delete {
        name: String,
        expected: u64,
        events: Vec<Event>,
    },
    Events(Vec<Event>),
    Audit(AuditEntry),
    Meta {
        key: String,
        value: String,
    },
}

/// What a write returns to its caller.
#[derive(Debug)]
enum Done {
    Unit,
    Node(Node),
    Instance(Box<Instance>),
    Events(Vec<Event>),
    Audit(AuditEntry),
}

fn unexpected(done: &Done) -> Error {
    Error::Backend(format!("store writer answered with {done:?}"))
}

struct Request {
    write: Write,
    reply: oneshot::Sender<Result<Done>>,
}

impl Request {
    fn answer(self, result: Result<Done>) {
        // The caller may have stopped waiting; the outcome stands either way.
        let _ = self.reply.send(result);
    }
}

/// A request in a batch with what planning needs about it.
struct Slot {
    req: Request,
    /// The record key this request reads and writes, if any.
    key: Option<String>,
}

/// Last id of a sequence and the version of its counter key (`None`: no key yet).
#[derive(Debug, Clone, Copy)]
struct Counter {
    last: u64,
    version: Option<u64>,
}

struct Writer<K: Kv> {
    kv: Arc<K>,
    layout: Layout,
    /// Cached counters; `None` when unknown (first use, or after a failed commit).
    counters: [Option<Counter>; 2],
}

/// Who owns an op of a planned transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Slot(usize),
    Counter(Sequence),
}

/// What planning decided for one slot.
enum Plan {
    /// Answer without writing.
    Answer(Result<Done>),
    /// Write these ops, then answer with this.
    Write(Vec<Op>, Done),
}

impl<K: Kv> Writer<K> {
    async fn run(mut self, mut requests: mpsc::UnboundedReceiver<Request>) {
        let mut held: VecDeque<Request> = VecDeque::new();
        loop {
            let first = match held.pop_front() {
                Some(r) => r,
                None => match requests.recv().await {
                    Some(r) => r,
                    None => break,
                },
            };
            let batch = self.fill(first, &mut held, &mut requests);
            if !batch.is_empty() {
                self.process(batch).await;
            }
        }
        debug!("store writer stopped");
    }

    /// Forms a batch from `first`, the held requests, then the queue: within the backend's
    /// transaction limits, and at most one request per record key (a later request on the
    /// same key waits for the next batch, so requests on one key keep their order).
    fn fill(
        &self,
        first: Request,
        held: &mut VecDeque<Request>,
        requests: &mut mpsc::UnboundedReceiver<Request>,
    ) -> Vec<Slot> {
        // Two ops stay free for the counters.
        let max_ops = self.kv.max_ops().saturating_sub(2);
        let max_bytes = self.kv.max_bytes();
        let mut batch = Vec::new();
        let mut keys = HashSet::new();
        let mut ops = 0;
        let mut bytes = 0;
        let mut still_held = VecDeque::new();
        let mut next = Some(first);
        loop {
            let Some(req) = next.take() else { break };
            let (cost, size) = self.estimate(&req.write);
            if cost > max_ops || size > max_bytes {
                req.answer(Err(Error::Backend(format!(
                    "write too large for one {} transaction ({cost} operations, {size} bytes)",
                    self.kv.name()
                ))));
            } else if ops + cost > max_ops || bytes + size > max_bytes {
                still_held.push_back(req);
                break;
            } else {
                let key = self.record_key(&req.write);
                if key.as_ref().is_some_and(|k| keys.contains(k)) {
                    still_held.push_back(req);
                } else {
                    if let Some(k) = &key {
                        keys.insert(k.clone());
                    }
                    ops += cost;
                    bytes += size;
                    batch.push(Slot { req, key });
                }
            }
            next = held.pop_front().or_else(|| requests.try_recv().ok());
        }
        // Whatever was not looked at stays behind what was held back, in order.
        still_held.append(held);
        *held = still_held;
        batch
    }

    /// The key a write reads and conditionally writes (meta counts: one write per key).
    fn record_key(&self, write: &Write) -> Option<String> {
        match write {
            Write::PutNode(node) => Some(self.layout.node(&node.name)),
            Write::SetNodeAdmin { name, .. } => Some(self.layout.node(name)),
            Write::Create { inst, .. } | Write::Update { inst, .. } => {
                Some(self.layout.instance(&inst.spec.name))
            }
            Write::Delete { name, .. } => Some(self.layout.instance(name)),
            Write::Meta { key, .. } => Some(self.layout.meta(key)),
            Write::Events(_) | Write::Audit(_) => None,
        }
    }

    /// Ops and value bytes a write needs (an upper bound).
    fn estimate(&self, write: &Write) -> (usize, usize) {
        let for_events = |events: &[Event]| {
            events.iter().fold((0, 0), |(ops, bytes), e| {
                let copies = if e.instance.is_some() { 2 } else { 1 };
                (ops + copies, bytes + copies * (json_len(e) + 40))
            })
        };
        let delete_cost = self.kv.cost(&Op::Delete {
            key: String::new(),
            version: 0,
        });
        let (own_ops, own_bytes, (event_ops, event_bytes)) = match write {
            Write::PutNode(node) => (1, json_len(node) + 64, (0, 0)),
            // The stored node is not known yet: leave room for a large one.
            Write::SetNodeAdmin { .. } => (1, 64 * 1024, (0, 0)),
            Write::Create { inst, events } | Write::Update { inst, events } => {
                (1, json_len(inst) + 32, for_events(events))
            }
            Write::Delete { events, .. } => (delete_cost, 0, for_events(events)),
            Write::Events(events) => (0, 0, for_events(events)),
            Write::Audit(entry) => (1, json_len(entry) + 32, (0, 0)),
            Write::Meta { value, .. } => (1, value.len(), (0, 0)),
        };
        (own_ops + event_ops, own_bytes + event_bytes)
    }

    /// Runs a batch to the end: every request in it is answered.
    async fn process(&mut self, batch: Vec<Slot>) {
        let mut slots: Vec<Option<Slot>> = batch.into_iter().map(Some).collect();
        for round in 0..MAX_ROUNDS {
            if slots.iter().all(Option::is_none) {
                return;
            }
            if round > 0 {
                debug!(round, "store batch retried after a rejected condition");
                let max = RETRY_PAUSE * 2u32.pow(round.min(6));
                let pause = rand::random_range(Duration::ZERO..=max);
                tokio::time::sleep(pause).await;
            }
            if let Err(e) = self.round(&mut slots).await {
                // The outcome is unknown: the counters may have moved.
                self.counters = [None, None];
                warn!(error = %e, "store write failed");
                for slot in slots.iter_mut().filter_map(Option::take) {
                    slot.req.answer(Err(Error::Backend(e.to_string())));
                }
                return;
            }
        }
        for slot in slots.iter_mut().filter_map(Option::take) {
            slot.req.answer(Err(Error::Backend(format!(
                "gave up after {MAX_ROUNDS} attempts: another writer keeps changing the same keys"
            ))));
        }
    }

    /// One read-plan-commit round. Answers (and takes out of `slots`) every request it
    /// settles; leaves in `slots` those to try again. `Err` when the backend failed.
    async fn round(&mut self, slots: &mut [Option<Slot>]) -> Result<()> {
        // 1. Read the record keys and any unknown counter.
        let mut keys: Vec<String> = Vec::new();
        let mut uses = [false, false];
        for slot in slots.iter().flatten() {
            if let Some(key) = &slot.key {
                if !matches!(slot.req.write, Write::Create { .. } | Write::Meta { .. }) {
                    keys.push(key.clone());
                }
            }
            for seq in sequences(&slot.req.write) {
                uses[seq as usize] = true;
            }
        }
        let unknown: Vec<Sequence> = [Sequence::Events, Sequence::Audit]
            .into_iter()
            .filter(|s| uses[*s as usize] && self.counters[*s as usize].is_none())
            .collect();
        keys.extend(unknown.iter().map(|s| self.layout.counter(*s)));
        let read = self.kv.get(&keys).await?;
        let mut found: HashMap<String, Entry> = keys
            .into_iter()
            .zip(read)
            .filter_map(|(k, e)| e.map(|e| (k, e)))
            .collect();
        for seq in unknown {
            let counter = match found.remove(&self.layout.counter(seq)) {
                Some(entry) => Counter {
                    last: parse_counter(&entry)?,
                    version: Some(entry.version),
                },
                None => Counter {
                    last: 0,
                    version: None,
                },
            };
            self.counters[seq as usize] = Some(counter);
        }

        // 2. Plan.
        let mut next = [0u64; 2];
        for seq in [Sequence::Events, Sequence::Audit] {
            next[seq as usize] = self.counters[seq as usize].map_or(1, |c| c.last + 1);
        }
        let mut ops: Vec<Op> = Vec::new();
        let mut owners: Vec<Owner> = Vec::new();
        let mut answers: Vec<Option<Done>> = Vec::with_capacity(slots.len());
        for (i, cell) in slots.iter_mut().enumerate() {
            let Some(slot) = cell else {
                answers.push(None);
                continue;
            };
            let stored = slot.key.as_ref().and_then(|k| found.get(k));
            match self.plan(slot, stored, &mut next) {
                Plan::Answer(result) => {
                    if let Some(slot) = cell.take() {
                        slot.req.answer(result);
                    }
                    answers.push(None);
                }
                Plan::Write(mine, done) => {
                    owners.extend(std::iter::repeat_n(Owner::Slot(i), mine.len()));
                    ops.extend(mine);
                    answers.push(Some(done));
                }
            }
        }
        let mut moved = Vec::new();
        for seq in [Sequence::Events, Sequence::Audit] {
            let counter = self.counters[seq as usize];
            let last = next[seq as usize] - 1;
            if let Some(c) = counter.filter(|c| c.last != last) {
                ops.push(Op::Put {
                    key: self.layout.counter(seq),
                    value: last.to_string().into_bytes(),
                    expect: Some(c.version.map_or(Expect::Absent, Expect::Version)),
                });
                owners.push(Owner::Counter(seq));
                moved.push((seq, last));
            }
        }
        if ops.is_empty() {
            return Ok(());
        }

        // 3. Commit.
        match self.kv.commit(&ops).await? {
            Commit::Applied(versions) => {
                for (seq, last) in moved {
                    let key = self.layout.counter(seq);
                    self.counters[seq as usize] = versions.get(&key).map(|v| Counter {
                        last,
                        version: Some(*v),
                    });
                }
                for (cell, done) in slots.iter_mut().zip(answers) {
                    if let (Some(done), Some(slot)) = (done, cell.take()) {
                        slot.req.answer(Ok(done));
                    }
                }
            }
            Commit::Rejected(failed) => {
                if failed.is_empty() {
                    return Err(Error::Backend(format!(
                        "{} rejected a transaction without naming a failed condition",
                        self.kv.name()
                    )));
                }
                for index in failed {
                    match owners.get(index) {
                        Some(Owner::Counter(seq)) => self.counters[*seq as usize] = None,
                        Some(Owner::Slot(i)) => Self::rejected(slots, *i),
                        None => {
                            return Err(Error::Backend(format!(
                                "{} named a failed op {index} out of {}",
                                self.kv.name(),
                                ops.len()
                            )))
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A slot whose own condition failed: a create is answered now (the name is taken); the
    /// others stay for the next round, whose fresh read decides (`Conflict`, `NotFound`, or
    /// a retry of a node upsert).
    fn rejected(slots: &mut [Option<Slot>], i: usize) {
        let Some(cell) = slots.get_mut(i) else { return };
        let name = match cell {
            Some(Slot {
                req:
                    Request {
                        write: Write::Create { inst, .. },
                        ..
                    },
                ..
            }) => inst.spec.name.clone(),
            _ => return,
        };
        if let Some(slot) = cell.take() {
            slot.req.answer(Err(Error::AlreadyExists(name)));
        }
    }

    /// Decides what one request does given the stored record (if any).
    fn plan(&self, slot: &Slot, stored: Option<&Entry>, next: &mut [u64; 2]) -> Plan {
        match self.plan_inner(slot, stored, next) {
            Ok(plan) => plan,
            Err(e) => Plan::Answer(Err(e)),
        }
    }

    fn plan_inner(&self, slot: &Slot, stored: Option<&Entry>, next: &mut [u64; 2]) -> Result<Plan> {
        let key = slot.key.clone().unwrap_or_default();
        let plan = match &slot.req.write {
            Write::PutNode(node) => {
                let mut node = node.clone();
                let expect = match stored {
                    Some(entry) => {
                        let old: Node = decode("node", entry)?;
                        node.admin = old.admin;
                        node.registered_at_ms = old.registered_at_ms;
                        Expect::Version(entry.version)
                    }
                    None => Expect::Absent,
                };
                let value = encode(&node)?;
                Plan::Write(vec![put(key, value, Some(expect))], Done::Unit)
            }
            Write::SetNodeAdmin { name, admin } => {
                let Some(entry) = stored else {
                    return Ok(Plan::Answer(Err(Error::NotFound(name.clone()))));
                };
                let mut node: Node = decode("node", entry)?;
                node.admin = *admin;
                let value = encode(&node)?;
                let op = put(key, value, Some(Expect::Version(entry.version)));
                Plan::Write(vec![op], Done::Node(node))
            }
            Write::Create { inst, events } => {
                let mut inst = inst.clone();
                inst.revision = 1;
                let mut ops = vec![put(key, encode(&inst)?, Some(Expect::Absent))];
                self.event_ops(events, next, &mut ops)?;
                Plan::Write(ops, Done::Instance(Box::new(inst)))
            }
            Write::Update { inst, events } => {
                let Some(entry) = stored else {
                    return Ok(Plan::Answer(Err(Error::NotFound(inst.spec.name.clone()))));
                };
                let actual = decode::<Instance>("instance", entry)?.revision;
                if actual != inst.revision {
                    return Ok(Plan::Answer(Err(Error::Conflict {
                        name: inst.spec.name.clone(),
                        expected: inst.revision,
                        actual,
                    })));
                }
                let mut inst = inst.clone();
                inst.revision = inst.revision.checked_add(1).ok_or_else(|| {
                    Error::Backend(format!("revision of {} overflows", inst.spec.name))
                })?;
                let mut ops = vec![put(
                    key,
                    encode(&inst)?,
                    Some(Expect::Version(entry.version)),
                )];
                self.event_ops(events, next, &mut ops)?;
                Plan::Write(ops, Done::Instance(Box::new(inst)))
            }
            Write::Delete {
                name,
                expected,
                events,
            } => {
                let Some(entry) = stored else {
                    return Ok(Plan::Answer(Err(Error::NotFound(name.clone()))));
                };
                let actual = decode::<Instance>("instance", entry)?.revision;
                if actual != *expected {
                    return Ok(Plan::Answer(Err(Error::Conflict {
                        name: name.clone(),
                        expected: *expected,
                        actual,
                    })));
                }
                let mut ops = vec![Op::Delete {
                    key,
                    version: entry.version,
                }];
                self.event_ops(events, next, &mut ops)?;
                Plan::Write(ops, Done::Unit)
            }
            Write::Events(events) => {
                let mut ops = Vec::new();
                let stored = self.event_ops(events, next, &mut ops)?;
                Plan::Write(ops, Done::Events(stored))
            }
            Write::Audit(entry) => {
                let mut entry = entry.clone();
                entry.id = take_id(next, Sequence::Audit)?;
                let op = put(
                    self.layout.numbered(Sequence::Audit, entry.id),
                    encode(&entry)?,
                    None,
                );
                Plan::Write(vec![op], Done::Audit(entry))
            }
            Write::Meta { value, .. } => {
                Plan::Write(vec![put(key, value.clone().into_bytes(), None)], Done::Unit)
            }
        };
        Ok(plan)
    }

    /// Ops writing `events` with the next ids; returns the events as stored.
    fn event_ops(
        &self,
        events: &[Event],
        next: &mut [u64; 2],
        ops: &mut Vec<Op>,
    ) -> Result<Vec<Event>> {
        let mut stored = Vec::with_capacity(events.len());
        for event in events {
            let mut event = event.clone();
            event.id = take_id(next, Sequence::Events)?;
            let value = encode(&event)?;
            if let Some(name) = &event.instance {
                ops.push(put(
                    self.layout.instance_event(name, event.id),
                    value.clone(),
                    None,
                ));
            }
            ops.push(put(
                self.layout.numbered(Sequence::Events, event.id),
                value,
                None,
            ));
            stored.push(event);
        }
        Ok(stored)
    }
}

fn put(key: String, value: Vec<u8>, expect: Option<Expect>) -> Op {
    Op::Put { key, value, expect }
}

/// Sequences a write takes ids from.
fn sequences(write: &Write) -> Vec<Sequence> {
    match write {
        Write::Create { events, .. }
        | Write::Update { events, .. }
        | Write::Delete { events, .. }
        | Write::Events(events)
            if !events.is_empty() =>
        {
            vec![Sequence::Events]
        }
        Write::Audit(_) => vec![Sequence::Audit],
        _ => Vec::new(),
    }
}

fn take_id(next: &mut [u64; 2], seq: Sequence) -> Result<u64> {
    let id = next[seq as usize];
    next[seq as usize] = id
        .checked_add(1)
        .ok_or_else(|| Error::Backend("id sequence exhausted".to_owned()))?;
    Ok(id)
}

fn parse_counter(entry: &Entry) -> Result<u64> {
    std::str::from_utf8(&entry.value)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| Error::Backend(format!("corrupt counter {}", entry.key)))
}

fn json_len<T: Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).map_or(0, |v| v.len())
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Backend(format!("cannot encode a record: {e}")))
}

fn decode<T: DeserializeOwned>(what: &str, entry: &Entry) -> Result<T> {
    serde_json::from_slice(&entry.value)
        .map_err(|e| Error::Backend(format!("corrupt {what} record {}: {e}", entry.key)))
}

#[cfg(test)]
mod tests {
    //! The store contract ([`super::super::contract`]) on an in-memory backend, and the
    //! writer's logic on that backend misbehaving on request: another writer moving the
    //! counter between read and commit, and a commit applied whose answer is lost. The same
    //! contract runs on real Consul and etcd in `tests/tests/store_backends.rs`.
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// key -> (value, version), and the last version given.
    type Data = (BTreeMap<String, (Vec<u8>, u64)>, u64);

    #[derive(Default)]
    struct MemKv {
        data: Mutex<Data>,
        /// Before the next commit, bump this counter key as another writer would.
        interfere: Mutex<Option<String>>,
        /// Apply the next commit but answer with an error (a lost answer).
        lose_answer: AtomicBool,
        commits: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Kv for MemKv {
        fn name(&self) -> &'static str {
            "mem"
        }
        fn max_ops(&self) -> usize {
            16
        }
        fn max_bytes(&self) -> usize {
            1 << 20
        }
        async fn get(&self, keys: &[String]) -> Result<Vec<Option<Entry>>> {
            let data = self.data.lock().unwrap();
            Ok(keys
                .iter()
                .map(|k| {
                    data.0.get(k).map(|(v, ver)| Entry {
                        key: k.clone(),
                        value: v.clone(),
                        version: *ver,
                    })
                })
                .collect())
        }
        async fn scan(&self, prefix: &str, from: &str, limit: usize) -> Result<Vec<Entry>> {
            let data = self.data.lock().unwrap();
            Ok(data
                .0
                .range(from.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .take(limit)
                .map(|(k, (v, ver))| Entry {
                    key: k.clone(),
                    value: v.clone(),
                    version: *ver,
                })
                .collect())
        }
        async fn scan_back(&self, prefix: &str, before: &str, limit: usize) -> Result<Vec<Entry>> {
            if before <= prefix {
                return Ok(Vec::new());
            }
            let data = self.data.lock().unwrap();
            let mut out: Vec<Entry> = data
                .0
                .range(prefix.to_owned()..before.to_owned())
                .rev()
                // Keys past the prefix's own sort after all of its keys.
                .skip_while(|(k, _)| !k.starts_with(prefix))
                .take_while(|(k, _)| k.starts_with(prefix))
                .take(limit)
                .map(|(k, (v, ver))| Entry {
                    key: k.clone(),
                    value: v.clone(),
                    version: *ver,
                })
                .collect();
            out.reverse();
            Ok(out)
        }
        async fn commit(&self, ops: &[Op]) -> Result<Commit> {
            self.commits.fetch_add(1, Ordering::Relaxed);
            let mut data = self.data.lock().unwrap();
            if let Some(key) = self.interfere.lock().unwrap().take() {
                data.1 += 1;
                let version = data.1;
                let last: u64 = data
                    .0
                    .get(&key)
                    .and_then(|(v, _)| std::str::from_utf8(v).ok()?.parse().ok())
                    .unwrap_or(0);
                // The other writer's event itself is not needed: only the counter moves.
                data.0
                    .insert(key, ((last + 1).to_string().into_bytes(), version));
            }
            let failed: Vec<usize> = ops
                .iter()
                .enumerate()
                .filter(|(_, op)| {
                    let (key, expect) = match op {
                        Op::Put { key, expect, .. } => (key, *expect),
                        Op::Delete { key, version } => (key, Some(Expect::Version(*version))),
                    };
                    match (expect, data.0.get(key)) {
                        (None, _) | (Some(Expect::Absent), None) => false,
                        (Some(Expect::Version(v)), Some((_, cur))) => *cur != v,
                        _ => true,
                    }
                })
                .map(|(i, _)| i)
                .collect();
            if !failed.is_empty() {
                return Ok(Commit::Rejected(failed));
            }
            data.1 += 1;
            let version = data.1;
            let mut written = HashMap::new();
            for op in ops {
                match op {
                    Op::Put { key, value, .. } => {
                        data.0.insert(key.clone(), (value.clone(), version));
                        written.insert(key.clone(), version);
                    }
                    Op::Delete { key, .. } => {
                        data.0.remove(key);
                    }
                }
            }
            if self.lose_answer.swap(false, Ordering::Relaxed) {
                return Err(Error::Backend("connection reset".to_owned()));
            }
            Ok(Commit::Applied(written))
        }
    }

    /// One in-memory backend shared by stores: a second store on a prefix is a second
    /// scheduler (its own writer and counters) on the same keys.
    #[derive(Clone, Default)]
    struct SharedKv(Arc<MemKv>);

    #[async_trait::async_trait]
    impl Kv for SharedKv {
        fn name(&self) -> &'static str {
            "mem"
        }
        fn max_ops(&self) -> usize {
            self.0.max_ops()
        }
        fn max_bytes(&self) -> usize {
            self.0.max_bytes()
        }
        async fn get(&self, keys: &[String]) -> Result<Vec<Option<Entry>>> {
            self.0.get(keys).await
        }
        async fn scan(&self, prefix: &str, from: &str, limit: usize) -> Result<Vec<Entry>> {
            self.0.scan(prefix, from, limit).await
        }
        async fn scan_back(&self, prefix: &str, before: &str, limit: usize) -> Result<Vec<Entry>> {
            self.0.scan_back(prefix, before, limit).await
        }
        async fn commit(&self, ops: &[Op]) -> Result<Commit> {
            self.0.commit(ops).await
        }
    }

    #[async_trait::async_trait]
    impl super::super::contract::Backend for SharedKv {
        fn name(&self) -> &str {
            "kv in memory"
        }
        async fn open(&self, space: &str) -> anyhow::Result<Arc<dyn Store>> {
            Ok(Arc::new(KvStore::start(self.clone(), space)))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_store_contract_holds_on_the_kv_core() -> anyhow::Result<()> {
        super::super::contract::run(&SharedKv::default()).await
    }

    fn event(kind: &str) -> Event {
        Event {
            id: 0,
            at_ms: 1,
            instance: None,
            node: None,
            kind: kind.to_owned(),
            message: String::new(),
        }
    }

    #[tokio::test]
    async fn another_writer_moving_the_counter_costs_a_retry_not_an_id() {
        let kv = MemKv::default();
        let store = KvStore::start(kv, "t/");
        let first = store.append_events(&[event("a")]).await.unwrap();
        assert_eq!(first[0].id, 1);
        // Between this write's read of the (cached) counter and its commit, another writer
        // takes id 2.
        *store.kv.interfere.lock().unwrap() = Some("t/counters/events".to_owned());
        let second = store.append_events(&[event("b")]).await.unwrap();
        assert_eq!(second[0].id, 3);
        assert_eq!(store.bounds(Sequence::Events).await.unwrap().1, 3);
    }

    #[tokio::test]
    async fn a_lost_answer_is_an_error_and_ids_continue_after_it() {
        let kv = MemKv::default();
        let store = KvStore::start(kv, "t/");
        store.append_events(&[event("a")]).await.unwrap();
        store.kv.lose_answer.store(true, Ordering::Relaxed);
        // Applied, but the caller cannot know: it gets an error.
        let err = store.append_events(&[event("b")]).await.unwrap_err();
        assert!(matches!(err, Error::Backend(_)), "{err}");
        // The writer forgot its counter and reads it again: no id is given twice.
        let next = store.append_events(&[event("c")]).await.unwrap();
        assert_eq!(next[0].id, 3);
        let kinds: Vec<_> = store
            .events(None, 0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn a_write_larger_than_a_transaction_is_refused_whole() {
        let kv = MemKv::default();
        let store = KvStore::start(kv, "t/");
        let many: Vec<Event> = (0..20).map(|i| event(&format!("e{i}"))).collect();
        let err = store.append_events(&many).await.unwrap_err();
        assert!(err.to_string().contains("too large"), "{err}");
        assert!(store.events(None, 0, 100).await.unwrap().is_empty());
        assert_eq!(store.kv.commits.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn names_stay_one_key_segment() {
        assert_eq!(escape("db1"), "db1");
        assert_eq!(escape("a/b%c"), "a%2Fb%25c");
        let layout = Layout::new("m/");
        assert_eq!(
            layout.numbered(Sequence::Events, 1234),
            "m/events/00000000000000001/00000000000000001234"
        );
        assert_eq!(
            layout.instance_event("x", 7),
            "m/instance-events/x/00000000000000000007"
        );
    }
}

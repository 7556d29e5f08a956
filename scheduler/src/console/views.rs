//! What the console's pages show, built from the API's JSON views (the same answers the REST
//! API gives) by pure functions: summaries, the Problems list, topologies, filters, and where
//! an API error belongs on a form. No I/O and no clock inside: `now_ms` is passed in.

use crate::api::EngineParameter;
use crate::cluster::{BackupHealthView, InstanceView, MemberView};
use crate::model::{DiskInfo, Event};
use crate::ops::batch::BatchItem;
use serde::Deserialize;
use std::collections::BTreeMap;

/// A backup as `GET /v1/instances/{name}/backups` shows it.
/// Separate from `crate::backup::Backup`: the pages filter and print `state` as the JSON's word.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Backup {
    /// Id.
    pub id: String,
    /// The instance it is of.
    pub instance: String,
    /// Repository.
    pub repo: String,
    /// Member it was taken on.
    pub member: String,
    /// That member's node.
    pub node: String,
    /// `pending`, `running`, `succeeded`, `failed`.
    pub state: String,
    /// Why it failed.
    pub reason: String,
    /// Asked for, unix ms.
    pub requested_at_ms: i64,
    /// Ended, unix ms (0: not yet).
    pub ended_at_ms: i64,
    /// Source bytes.
    pub bytes: u64,
    /// Bytes stored.
    pub size: u64,
    /// A verification runs.
    pub verifying: bool,
    /// Last verification ended, unix ms (0: never).
    pub verified_at_ms: i64,
    /// Whether it passed.
    pub verify_ok: Option<bool>,
    /// What it found.
    pub verify_reason: String,
}

/// Seconds past a slot with no success after which a scheduled backup counts as overdue:
/// the `MofangBackupOverdue` alert's threshold (`packaging/monitoring/rules/mofang.rules.yml`).
pub const OVERDUE_AFTER_S: i64 = 3600;

/// Seconds of binlog archive lag from which an archive counts as lagging: the
/// `MofangPitrArchiveLagging` alert's threshold.
pub const ARCHIVE_LAG_AFTER_S: i64 = 300;

/// How an instance's backups stand, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Standing {
    /// Its newest finished backup failed.
    Failing,
    /// Scheduled, and over [`OVERDUE_AFTER_S`] past a slot without a success.
    Overdue,
    /// Its newest verification failed.
    VerifyFailed,
    /// Backed up, nothing wrong.
    Fine,
    /// No backup and no schedule.
    NoBackups,
}

impl Standing {
    /// The word shown (and the badge's class).
    pub fn label(self) -> &'static str {
        match self {
            Standing::Failing => "failing",
            Standing::Overdue => "overdue",
            Standing::VerifyFailed => "verify-failed",
            Standing::Fine => "fine",
            Standing::NoBackups => "none",
        }
    }

    /// Whether an operator should look (failing, overdue, verification failed).
    pub fn needs_attention(self) -> bool {
        self < Standing::Fine
    }
}

/// How an instance's backups stand, from its health: failing before overdue before a
/// failed verification (the alerts `MofangBackupFailed`, `MofangBackupOverdue`,
/// `MofangBackupVerificationFailed`).
pub fn standing(h: &BackupHealthView) -> Standing {
    if h.last_failed == Some(true) {
        Standing::Failing
    } else if h.overdue_s.is_some_and(|s| s > OVERDUE_AFTER_S) {
        Standing::Overdue
    } else if h.verify_failed == Some(true) {
        Standing::VerifyFailed
    } else if h.backups == 0 && h.schedule.is_none() {
        Standing::NoBackups
    } else {
        Standing::Fine
    }
}

/// Filters of the fleet backups page (`GET /ui/backups?instance=&status=&page=`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct BackupFilter {
    /// Part of the instance's name.
    pub instance: String,
    /// A backup state (`failed`, `running`, ...) or `verify-failed`.
    pub status: String,
}

/// The statuses the backups page filters by.
pub const BACKUP_STATUSES: &[&str] =
    &["failed", "verify-failed", "running", "pending", "succeeded"];

impl BackupFilter {
    /// Whether the filter keeps instance `name`.
    pub fn keeps_instance(&self, name: &str) -> bool {
        let q = self.instance.trim().to_lowercase();
        q.is_empty() || name.to_lowercase().contains(&q)
    }

    /// Whether the filter keeps backup `b`.
    pub fn keeps(&self, b: &Backup) -> bool {
        self.keeps_instance(&b.instance)
            && match self.status.as_str() {
                "" => true,
                "verify-failed" => b.verify_ok == Some(false),
                s => b.state == s,
            }
    }
}

/// The fleet backups page: instances needing attention (worst first, then by name), and
/// the backups the filter keeps: failed ones first, then failed verifications, then those
/// of failing and overdue instances, each newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetBackups {
    /// Instances by standing: how many of each.
    pub counts: Vec<(Standing, usize)>,
    /// The instances the filter keeps that need attention, worst first.
    pub attention: Vec<(Standing, BackupHealthView)>,
    /// The backups the filter keeps, in the page's order.
    pub backups: Vec<Backup>,
}

/// Builds the fleet backups page from the API's health and backup lists.
pub fn fleet_backups(
    health: &[BackupHealthView],
    all: &[Backup],
    f: &BackupFilter,
) -> FleetBackups {
    let of: BTreeMap<&str, Standing> = health
        .iter()
        .map(|h| (h.instance.as_str(), standing(h)))
        .collect();
    let mut counts: BTreeMap<Standing, usize> = BTreeMap::new();
    for s in of.values() {
        *counts.entry(*s).or_default() += 1;
    }
    let mut attention: Vec<(Standing, BackupHealthView)> = health
        .iter()
        .map(|h| (standing(h), h.clone()))
        .filter(|(s, h)| s.needs_attention() && f.keeps_instance(&h.instance))
        .collect();
    attention.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.instance.cmp(&b.1.instance)));
    let mut backups: Vec<Backup> = all.iter().filter(|b| f.keeps(b)).cloned().collect();
    // Deleted instances' backups have no standing: after every existing instance's.
    let rank = |b: &Backup| {
        let own = if b.state == "failed" {
            0
        } else if b.verify_ok == Some(false) {
            1
        } else {
            2
        };
        let inst = of
            .get(b.instance.as_str())
            .copied()
            .unwrap_or(Standing::NoBackups);
        (own, inst, std::cmp::Reverse(b.requested_at_ms))
    };
    backups.sort_by_key(|b| rank(b));
    FleetBackups {
        counts: counts.into_iter().collect(),
        attention,
        backups,
    }
}

/// The overview's backup and archive figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackupSummary {
    /// Instances whose newest backup failed.
    pub failing: Vec<String>,
    /// Instances overdue, with the seconds past their slot, most overdue first.
    pub overdue: Vec<(String, i64)>,
    /// Instances whose newest verification failed.
    pub verify_failed: Vec<String>,
    /// Instances with a binlog archive.
    pub archiving: usize,
    /// Archives lagging over [`ARCHIVE_LAG_AFTER_S`], with their lag, most first.
    pub lagging: Vec<(String, i64)>,
    /// The largest archive lag and its instance.
    pub worst_lag: Option<(String, i64)>,
}

/// The overview's backup figures from the backup health and the instances' archives.
pub fn backup_summary(health: &[BackupHealthView], instances: &[InstanceView]) -> BackupSummary {
    let mut s = BackupSummary::default();
    for h in health {
        if h.last_failed == Some(true) {
            s.failing.push(h.instance.clone());
        }
        if let Some(o) = h.overdue_s.filter(|o| *o > OVERDUE_AFTER_S) {
            s.overdue.push((h.instance.clone(), o));
        }
        if h.verify_failed == Some(true) {
            s.verify_failed.push(h.instance.clone());
        }
    }
    s.overdue
        .sort_by_key(|(n, o)| (std::cmp::Reverse(*o), n.clone()));
    for i in instances {
        if i.pitr_ready.is_some() {
            s.archiving += 1;
        }
        if let Some(l) = i.pitr_lag_s {
            if l > ARCHIVE_LAG_AFTER_S {
                s.lagging.push((i.name.clone(), l));
            }
            if s.worst_lag.as_ref().is_none_or(|(_, w)| l > *w) {
                s.worst_lag = Some((i.name.clone(), l));
            }
        }
    }
    s.lagging
        .sort_by_key(|(n, l)| (std::cmp::Reverse(*l), n.clone()));
    s
}

// ---- the PITR window on a time axis ---------------------------------------------------------

/// A full backup on the time axis.
#[derive(Debug, Clone, PartialEq)]
pub struct AxisMark {
    /// The backup.
    pub id: String,
    /// Its state.
    pub state: String,
    /// Where it sits, unix ms: its end once ended, else when it was asked for.
    pub at_ms: i64,
}

/// An instance's PITR window and full backups on one time axis.
#[derive(Debug, Clone, PartialEq)]
pub struct PitrAxis {
    /// The axis' left end, unix ms.
    pub start_ms: i64,
    /// Its right end, unix ms.
    pub end_ms: i64,
    /// The window, unix ms (whole seconds).
    pub window: Option<(i64, i64)>,
    /// The backups, oldest first.
    pub marks: Vec<AxisMark>,
    /// Now, unix ms.
    pub now_ms: i64,
}

impl PitrAxis {
    /// Where `ms` is along the axis, 0 ..= 1.
    pub fn x(&self, ms: i64) -> f64 {
        let span = (self.end_ms - self.start_ms).max(1) as f64;
        ((ms - self.start_ms) as f64 / span).clamp(0.0, 1.0)
    }

    /// A label of time `ms` on this axis, as precise as its span needs: `14:45:10` within
    /// an hour, `14:45` within a day, else `12-01 14:45` (UTC).
    pub fn label(&self, ms: i64) -> String {
        let t = utc(ms);
        let span = self.end_ms - self.start_ms;
        let part = if span <= 3_600_000 {
            t.get(11..19)
        } else if span <= 86_400_000 {
            t.get(11..16)
        } else {
            t.get(5..16)
        };
        part.unwrap_or("").to_owned()
    }

    /// `n` (at least 2) evenly spaced times from end to end, for the axis' labels.
    pub fn ticks(&self, n: usize) -> Vec<i64> {
        let n = n.max(2);
        (0..n)
            .map(|k| self.start_ms + (self.end_ms - self.start_ms) * k as i64 / (n - 1) as i64)
            .collect()
    }
}

/// The time axis of an instance's PITR window (`pitr_window`, RFC 3339, read with the API's
/// own parser) and its full backups, through now; `None` with neither.
pub fn pitr_axis(i: &InstanceView, backups: &[Backup], now_ms: i64) -> Option<PitrAxis> {
    let window = i.pitr_window.as_ref().and_then(|w| {
        let from = mofang_common::pitr::parse_utc(&w.from).ok()?;
        let to = mofang_common::pitr::parse_utc(&w.to).ok()?;
        Some((from * 1000, to * 1000))
    });
    let mut marks: Vec<AxisMark> = backups
        .iter()
        .map(|b| AxisMark {
            id: b.id.clone(),
            state: b.state.clone(),
            at_ms: if b.ended_at_ms > 0 {
                b.ended_at_ms
            } else {
                b.requested_at_ms
            },
        })
        .filter(|m| m.at_ms > 0)
        .collect();
    if window.is_none() && marks.is_empty() {
        return None;
    }
    marks.sort_by_key(|m| m.at_ms);
    let times = marks
        .iter()
        .map(|m| m.at_ms)
        .chain(window.into_iter().flat_map(|(a, b)| [a, b]))
        .chain([now_ms]);
    let (lo, hi) = times.fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
    // A margin of 3 % each side (at least a minute) keeps the ends' marks off the edge.
    let pad = ((hi - lo) * 3 / 100).max(60_000);
    Some(PitrAxis {
        start_ms: lo - pad,
        end_ms: hi + pad,
        window,
        marks,
        now_ms,
    })
}

/// An RFC 3339 UTC time (`2026-12-01T14:45:10Z`) as a `datetime-local` input's value
/// (`2026-12-01T14:45:10`); anything else as it is.
pub fn local_input_of(rfc3339: &str) -> String {
    match rfc3339.strip_suffix(['Z', 'z']) {
        Some(t) if t.len() == 19 && t.as_bytes()[10] == b'T' => t.to_owned(),
        _ => rfc3339.to_owned(),
    }
}

/// A `datetime-local` input's value, read as UTC, as the API's RFC 3339 time: seconds added
/// when the browser left them out (it does when they are 0), `Z` appended. Anything else
/// (a time with its zone, or not a time) is sent as typed, for the API to judge.
pub fn utc_of_local_input(v: &str) -> String {
    let b = v.as_bytes();
    let local = |n: usize| {
        b.len() == n
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && (n == 16 || b[16] == b':')
    };
    if local(16) {
        format!("{v}:00Z")
    } else if local(19) {
        format!("{v}Z")
    } else {
        v.to_owned()
    }
}

/// A node as `GET /v1/nodes` shows it.
/// Separate from `cluster::NodeView2`, which nests the record and types `admin` and `state` as
/// enums: the pages group, compare and print them as the JSON's words.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Node {
    /// Name.
    pub name: String,
    /// Address.
    pub address: String,
    /// Labels (`zone`, ...).
    pub labels: BTreeMap<String, String>,
    /// CPU cores offered.
    pub cpu: f64,
    /// Memory offered, bytes.
    pub memory_bytes: u64,
    /// Data disks.
    pub disks: Vec<DiskInfo>,
    /// Operator setting (`active`, `cordoned`, `draining`).
    pub admin: String,
    /// State (`ready`, `down`, `draining`, `cordoned`).
    pub state: String,
    /// Last heartbeat, unix ms.
    pub last_heartbeat_ms: i64,
    /// CPU reserved by members.
    pub reserved_cpu: f64,
    /// Memory reserved by members, MiB.
    pub reserved_memory_mib: u64,
    /// Disk reserved by members, MiB, per disk class.
    pub reserved_disk_mib: BTreeMap<String, u64>,
    /// Members placed here.
    pub members: u32,
    /// Agent version.
    pub agent_version: String,
    /// The host's CPU and memory use of the last ten minutes, oldest first.
    pub usage: Vec<crate::cluster::UsageSample>,
}

impl Node {
    /// Its `zone` label, or `-`.
    pub fn zone(&self) -> &str {
        self.labels.get("zone").map_or("-", String::as_str)
    }
}

/// The two lines of a node's usage graph as SVG `points` (CPU busy of its cores, memory
/// used of installed), in a `w` x `h` box whose right edge is `now_ms` and left edge
/// `window_ms` before; a sample's share 0..=1 goes from the bottom to the top.
pub fn usage_lines(
    samples: &[crate::cluster::UsageSample],
    now_ms: i64,
    window_ms: i64,
    w: f64,
    h: f64,
) -> (String, String) {
    let x = |at: i64| {
        let from_right = (now_ms - at).clamp(0, window_ms) as f64 / window_ms.max(1) as f64;
        w * (1.0 - from_right)
    };
    let y = |share: f64| h * (1.0 - share.clamp(0.0, 1.0));
    let line = |share: &dyn Fn(&crate::cluster::UsageSample) -> f64| {
        samples
            .iter()
            .filter(|s| now_ms - s.at_ms <= window_ms)
            .map(|s| format!("{:.1},{:.1}", x(s.at_ms), y(share(s))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let cpu = line(&|s| s.cpu_cores_busy / f64::from(s.cpu_cores.max(1)));
    let mem = line(&|s| s.memory_used_bytes as f64 / s.memory_total_bytes.max(1) as f64);
    (cpu, mem)
}

impl EngineParameter {
    /// What it accepts, for people: `10 ..= 10000 connections`, `noeviction | allkeys-lru`.
    pub fn allowed(&self) -> String {
        match (self.min, self.max) {
            (Some(lo), Some(hi)) => format!("{lo} ..= {hi} {}", self.unit).trim_end().to_owned(),
            _ => self.values.join(" | "),
        }
    }
}

/// A form as it was sent and the API's reasons by field (empty: a fresh form).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FormState {
    /// The values typed, by field name.
    pub values: BTreeMap<String, String>,
    /// The API's reason, by the field it is about.
    pub errors: BTreeMap<String, String>,
}

/// The reconfigure form's field a refusal is about: the API names the parameter
/// (`settings.max_connections: ...`, `params::check`), the field is `param.<name>`.
pub fn parameter_of_error(code: &str, message: &str) -> Option<String> {
    if code != "invalid" {
        return None;
    }
    let name = message.strip_prefix("settings.")?.split(':').next()?;
    (!name.is_empty() && !name.contains(' ')).then(|| format!("param.{name}"))
}

/// A step of an operation as the API shows it.
/// Separate from `ops::OpStep`, whose action is a tagged enum: the pages show its `action`
/// word and `member` whatever the action.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct OpStep {
    /// What it does (`restart`, `switchover`, `add_replica`, ...).
    pub action: String,
    /// The member it is about, if any.
    pub member: Option<String>,
    /// `running`, `done`, `failed`.
    pub state: String,
    /// Began, unix ms.
    pub started_ms: i64,
    /// Ended, unix ms (0 while running).
    pub ended_ms: i64,
    /// Why it failed, or what it waits for.
    pub reason: String,
}

/// A day-2 operation as `GET /v1/instances/{name}/operations` shows it.
/// Separate from `ops::Operation`: the pages print `type` and `state` as the JSON's words.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Operation {
    /// Id.
    pub id: String,
    /// The instance.
    pub instance: String,
    /// `restart`, `scale`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// `pending`, `running`, `succeeded`, `failed`, `cancelled`.
    pub state: String,
    /// Created, unix ms.
    pub created_ms: i64,
    /// Ended, unix ms (0 until then).
    pub ended_ms: i64,
    /// Why it failed or was cancelled.
    pub reason: String,
    /// Cancel asked.
    pub cancel_requested: bool,
    /// Who asked.
    pub requested_by: String,
    /// Steps so far.
    pub steps: Vec<OpStep>,
    /// Members done.
    pub done: Vec<String>,
    /// Members at the start.
    pub total: usize,
}

impl Operation {
    /// Still under way (pending or running): it may be cancelled.
    pub fn is_live(&self) -> bool {
        matches!(self.state.as_str(), "pending" | "running")
    }
}

/// A batch as `GET /v1/batches` shows it.
/// Separate from `ops::batch::Batch`: the pages print `type` and `state` as the JSON's words.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Batch {
    /// Id.
    pub id: String,
    /// The label selector that chose the instances.
    pub selector: String,
    /// `restart`, `stop`, `start`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `running`, `succeeded`, `failed`, `cancelled`.
    pub state: String,
    /// At most this many at once.
    pub max_parallel: usize,
    /// No new one after this many failed.
    pub max_failures: usize,
    /// Created, unix ms.
    pub created_ms: i64,
    /// Cancel asked.
    pub cancel_requested: bool,
    /// Who asked.
    pub requested_by: String,
    /// Its instances in the order they are taken.
    pub items: Vec<BatchItem>,
}

impl Batch {
    /// Still running: it may be cancelled.
    pub fn is_live(&self) -> bool {
        self.state == "running"
    }

    /// Items in `state`.
    pub fn count(&self, state: &str) -> usize {
        self.items.iter().filter(|i| i.state == state).count()
    }

    /// Items whose operation has ended (or that will never start).
    pub fn ended(&self) -> usize {
        self.items
            .iter()
            .filter(|i| !matches!(i.state.as_str(), "pending" | "running"))
            .count()
    }
}

/// The operations a batch may run (`POST /v1/batches`).
pub const BATCH_TYPES: [&str; 3] = ["restart", "stop", "start"];

/// The body of `POST /v1/batches` from the console's form, or the field that is not a whole
/// number and why (ranges are the API's to check).
pub fn batch_body(
    form: &BTreeMap<String, String>,
) -> Result<serde_json::Value, (&'static str, String)> {
    let get = |k: &str| form.get(k).map_or("", |v| v.trim());
    let mut body = serde_json::Map::new();
    body.insert("selector".into(), serde_json::json!(get("selector")));
    body.insert("type".into(), serde_json::json!(get("type")));
    for k in ["max_parallel", "max_failures"] {
        let v = get(k);
        if v.is_empty() {
            continue;
        }
        let n: u64 = v
            .parse()
            .map_err(|_| (k, format!("{k} must be a whole number, not {v:?}")))?;
        body.insert(k.into(), serde_json::json!(n));
    }
    Ok(serde_json::Value::Object(body))
}

/// The batch form's field a refusal of `POST /v1/batches` is about (the selector when the
/// message names no other).
pub fn batch_field_of_error(message: &str) -> &'static str {
    if message.contains("max_parallel") {
        "max_parallel"
    } else if message.contains("max_failures") {
        "max_failures"
    } else if message.contains("a batch runs") || message.contains("unknown variant") {
        "type"
    } else {
        "selector"
    }
}

/// Ids of the operations the events name (`operation_started`: "operation op-... (kind)
/// started by ..."), newest first, each once.
pub fn operation_ids(events: &[Event]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in events.iter().filter(|e| e.kind == "operation_started") {
        let id = e
            .message
            .strip_prefix("operation ")
            .and_then(|m| m.split_whitespace().next())
            .filter(|id| id.starts_with("op-"));
        if let Some(id) = id {
            if !out.iter().any(|o| o == id) {
                out.push(id.to_owned());
            }
        }
    }
    out
}

/// The JSON body `POST /v1/instances/{name}/operations` is sent for the operation forms:
/// the type, and each field given (numbers as numbers when they parse, else as typed, for
/// the API to refuse); the reconfigure form's `param.<name>` fields given as `settings`.
pub fn operation_body(form: &BTreeMap<String, String>) -> serde_json::Value {
    let get = |k: &str| form.get(k).map_or("", |v| v.trim());
    let mut body = serde_json::Map::new();
    body.insert("type".into(), serde_json::json!(get("type")));
    for k in ["replicas", "cpu", "memory", "disk"] {
        let v = get(k);
        if v.is_empty() {
            continue;
        }
        let n = if let Ok(n) = v.parse::<u64>() {
            serde_json::json!(n)
        } else if let Ok(f) = v.parse::<f64>() {
            serde_json::json!(f)
        } else {
            serde_json::json!(v)
        };
        body.insert(k.into(), n);
    }
    for k in ["version", "member"] {
        if !get(k).is_empty() {
            body.insert(k.into(), serde_json::json!(get(k)));
        }
    }
    // The reconfigure form: a field `param.<name>` per parameter of the catalogue, those
    // given sent.
    let settings: serde_json::Map<String, serde_json::Value> = form
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("param.")?, v.trim())))
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_owned(), serde_json::json!(v)))
        .collect();
    if !settings.is_empty() {
        body.insert("settings".into(), serde_json::Value::Object(settings));
    }
    serde_json::Value::Object(body)
}

// ---- from the API's own view structs ----------------------------------------------------------

// On the leader the console takes the API's views (`Cluster::instances`, `Cluster::nodes`:
// what `GET /v1/instances` and `GET /v1/nodes` serialize) without a JSON round trip: the
// instances as they are, the nodes converted keeping exactly the fields the JSON parse of
// [`Node`] keeps.

/// An enum's serialized (lower-case) name, as the JSON shows it.
fn serde_name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

impl From<&crate::cluster::NodeView2> for Node {
    fn from(n: &crate::cluster::NodeView2) -> Self {
        Node {
            name: n.node.name.clone(),
            address: n.node.address.clone(),
            labels: n.node.labels.clone(),
            cpu: n.node.cpu,
            memory_bytes: n.node.memory_bytes,
            disks: n.node.disks.clone(),
            admin: serde_name(&n.node.admin),
            state: serde_name(&n.state),
            last_heartbeat_ms: n.last_heartbeat_ms,
            reserved_cpu: n.reserved_cpu,
            reserved_memory_mib: n.reserved_memory_mib,
            reserved_disk_mib: n.reserved_disk_mib.clone(),
            members: n.members,
            agent_version: n.node.agent_version.clone(),
            usage: n.usage.clone(),
        }
    }
}

// ---- counts and the overview ----------------------------------------------------------------

/// How many of each key, sorted by key.
pub fn count_by<'a, T: 'a>(
    items: impl IntoIterator<Item = &'a T>,
    key: impl Fn(&T) -> String,
) -> Vec<(String, usize)> {
    let mut m: BTreeMap<String, usize> = BTreeMap::new();
    for i in items {
        *m.entry(key(i)).or_default() += 1;
    }
    m.into_iter().collect()
}

/// Reserved against capacity of one resource.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// Reserved (or used).
    pub used: f64,
    /// Capacity.
    pub capacity: f64,
}

impl Usage {
    /// Fraction used, 0 ..= 1 (0 with no capacity).
    pub fn fraction(&self) -> f64 {
        if self.capacity > 0.0 {
            (self.used / self.capacity).clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
}

/// CPU, memory and disk of a node or a zone: reserved (disk: used) against capacity.
#[derive(Debug, Clone, PartialEq)]
pub struct Fill {
    /// Node or zone name.
    pub name: String,
    /// CPU cores reserved / offered.
    pub cpu: Usage,
    /// Memory MiB reserved / offered.
    pub memory_mib: Usage,
    /// Disk MiB reserved by members / capacity.
    pub disk_reserved_mib: Usage,
    /// Disk MiB used / capacity (as the agent reports its filesystems).
    pub disk_mib: Usage,
    /// Members placed.
    pub members: u32,
}

const MIB: f64 = 1024.0 * 1024.0;

/// How full a node is.
pub fn node_fill(n: &Node) -> Fill {
    let cap: u64 = n.disks.iter().map(|d| d.capacity_bytes).sum();
    let free: u64 = n
        .disks
        .iter()
        .map(|d| d.free_bytes.min(d.capacity_bytes))
        .sum();
    Fill {
        name: n.name.clone(),
        cpu: Usage {
            used: n.reserved_cpu,
            capacity: n.cpu,
        },
        memory_mib: Usage {
            used: n.reserved_memory_mib as f64,
            capacity: n.memory_bytes as f64 / MIB,
        },
        disk_reserved_mib: Usage {
            used: n.reserved_disk_mib.values().sum::<u64>() as f64,
            capacity: cap as f64 / MIB,
        },
        disk_mib: Usage {
            used: cap.saturating_sub(free) as f64 / MIB,
            capacity: cap as f64 / MIB,
        },
        members: n.members,
    }
}

/// How full each zone is (its nodes summed), by zone name.
pub fn zone_fill(nodes: &[Node]) -> Vec<Fill> {
    let mut m: BTreeMap<String, Fill> = BTreeMap::new();
    for n in nodes {
        let f = node_fill(n);
        let z = m.entry(n.zone().to_owned()).or_insert_with(|| Fill {
            name: n.zone().to_owned(),
            cpu: Usage {
                used: 0.0,
                capacity: 0.0,
            },
            memory_mib: Usage {
                used: 0.0,
                capacity: 0.0,
            },
            disk_reserved_mib: Usage {
                used: 0.0,
                capacity: 0.0,
            },
            disk_mib: Usage {
                used: 0.0,
                capacity: 0.0,
            },
            members: 0,
        });
        for (a, b) in [
            (&mut z.cpu, f.cpu),
            (&mut z.memory_mib, f.memory_mib),
            (&mut z.disk_reserved_mib, f.disk_reserved_mib),
            (&mut z.disk_mib, f.disk_mib),
        ] {
            a.used += b.used;
            a.capacity += b.capacity;
        }
        z.members += f.members;
    }
    m.into_values().collect()
}

/// Event kinds the overview lists for the last 24 hours: failovers and what failed.
pub const NOTABLE: &[&str] = &[
    "failover_decided",
    "failover_completed",
    "failover_incomplete",
    "failover_blocked",
    "failover_mass_hold",
    "switchover_incomplete",
    "switchover_aborted",
    "operation_failed",
    "backup_failed",
    "backup_missed",
    "verify_failed",
    "pitr_gap",
    "node_down",
];

/// How far back the overview looks: 24 hours.
pub const RECENT_MS: i64 = 24 * 3600 * 1000;

/// The notable events of the last 24 hours before `now_ms`, newest first.
pub fn recent_notable(events: &[Event], now_ms: i64) -> Vec<Event> {
    let mut out: Vec<Event> = events
        .iter()
        .filter(|e| e.at_ms > now_ms - RECENT_MS && NOTABLE.contains(&e.kind.as_str()))
        .cloned()
        .collect();
    out.sort_by_key(|e| std::cmp::Reverse(e.id));
    out
}

// ---- problems -------------------------------------------------------------------------------

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Service at risk or down: act now.
    Critical,
    /// Redundancy reduced or a safeguard missing.
    Warning,
}

/// One entry of the Problems list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// How bad.
    pub severity: Severity,
    /// What it concerns (`instance shop`, `node n1`, `cluster`).
    pub subject: String,
    /// Console page of the subject.
    pub link: String,
    /// What is wrong.
    pub what: String,
}

/// Why a replica does not replicate, if it does not: unhealthy, not running, its server not
/// a replica, or its lag unknown.
pub fn broken_replication(m: &MemberView) -> Option<String> {
    if m.role != "replica" {
        return None;
    }
    let why = if m.state != "running" {
        format!("member {}", m.state)
    } else if !m.healthy {
        if m.reason.is_empty() {
            "unhealthy".to_owned()
        } else {
            m.reason.clone()
        }
    } else if !m.observed_role.is_empty() && m.observed_role != "replica" {
        format!("its server reports role {}", m.observed_role)
    } else if m.lag_seconds < 0 {
        "replication lag unknown".to_owned()
    } else {
        return None;
    };
    Some(why)
}

/// The Problems list: nodes down, the mass-failure hold, instances degraded or without a
/// healthy primary, members not replicating, PITR archives with a gap. Most severe first.
pub fn problems(instances: &[InstanceView], nodes: &[Node], mass_hold: bool) -> Vec<Problem> {
    let mut out = Vec::new();
    if mass_hold {
        out.push(Problem {
            severity: Severity::Critical,
            subject: "cluster".into(),
            link: "/ui/problems".into(),
            what: "automatic failover is held (mass-failure guard): `mofang failover resume` \
                   once the cause is fixed"
                .into(),
        });
    }
    for n in nodes {
        if n.state == "down" {
            out.push(Problem {
                severity: Severity::Critical,
                subject: format!("node {}", n.name),
                link: "/ui/nodes".into(),
                what: format!("down: no heartbeat ({} members placed there)", n.members),
            });
        }
    }
    for i in instances {
        let link = format!("/ui/instances/{}", i.name);
        let subject = format!("instance {}", i.name);
        let primary_ok = i
            .members
            .iter()
            .any(|m| m.role == "primary" && m.healthy && m.state == "running");
        if i.status == "degraded" || (i.status == "ready" && !primary_ok) {
            let what = if primary_ok {
                "degraded".to_owned()
            } else {
                "degraded: no healthy primary".to_owned()
            };
            out.push(Problem {
                severity: if primary_ok {
                    Severity::Warning
                } else {
                    Severity::Critical
                },
                subject: subject.clone(),
                link: link.clone(),
                what,
            });
        }
        if i.status != "creating" && i.status != "stopped" && i.status != "deleting" {
            for m in &i.members {
                if let Some(why) = broken_replication(m) {
                    out.push(Problem {
                        severity: Severity::Warning,
                        subject: subject.clone(),
                        link: link.clone(),
                        what: format!("replica {} on {} not replicating: {why}", m.id, m.node),
                    });
                }
            }
        }
        if i.pitr_ready == Some(false) {
            out.push(Problem {
                severity: Severity::Warning,
                subject: subject.clone(),
                link: link.clone(),
                what: format!(
                    "binlog archive has a gap: {}",
                    i.pitr_reason.as_deref().unwrap_or("no reason given")
                ),
            });
        }
    }
    out.sort_by_key(|p| p.severity);
    out
}

// ---- instances list -------------------------------------------------------------------------

/// Filters of the instances list
/// (`GET /ui/instances?q=&labels=&engine=&version=&status=`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct InstanceFilter {
    /// Text in the name or a label (`key=value` or part of either).
    pub q: String,
    /// A label selector as the API and batches take it (`k=v,k2=v2`, `k`, `k!=v`).
    pub labels: String,
    /// Engine, exact.
    pub engine: String,
    /// Version, exact.
    pub version: String,
    /// Status, exact.
    pub status: String,
}

impl InstanceFilter {
    /// Whether an instance passes every filter given (none when the selector is malformed).
    pub fn matches(&self, i: &InstanceView) -> bool {
        let q = self.q.trim().to_lowercase();
        let text = q.is_empty()
            || i.name.to_lowercase().contains(&q)
            || i.spec
                .labels
                .iter()
                .any(|(k, v)| format!("{k}={v}").to_lowercase().contains(&q));
        let labels =
            crate::cluster::matches_selector(&i.spec.labels, &self.labels).unwrap_or(false);
        text && labels
            && (self.engine.is_empty() || i.engine == self.engine)
            && (self.version.is_empty() || i.version == self.version)
            && (self.status.is_empty() || i.status == self.status)
    }

    /// Why the label selector is malformed (the API's words), if it is.
    pub fn selector_error(&self) -> Option<String> {
        crate::cluster::matches_selector(&BTreeMap::new(), &self.labels)
            .err()
            .map(|e| e.to_string())
    }
}

// ---- topology -------------------------------------------------------------------------------

/// One box of the topology diagram.
#[derive(Debug, Clone, PartialEq)]
pub struct TopologyNode {
    /// The member.
    pub member: MemberView,
    /// Zone of its node (`-` if unknown).
    pub zone: String,
    /// For a replica: why the arrow from the primary is broken.
    pub broken: Option<String>,
}

/// The topology of an instance: its primary (if one is known) and the replicas under it.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// The member whose desired role is primary.
    pub primary: Option<TopologyNode>,
    /// The others, in member id order.
    pub replicas: Vec<TopologyNode>,
}

/// The primary → replicas tree of an instance, zones from its nodes.
pub fn topology(i: &InstanceView, nodes: &[Node]) -> Topology {
    let zone_of = |node: &str| {
        nodes
            .iter()
            .find(|n| n.name == node)
            .map_or("-".to_owned(), |n| n.zone().to_owned())
    };
    let mut primary = None;
    let mut replicas = Vec::new();
    for m in &i.members {
        let t = TopologyNode {
            member: m.clone(),
            zone: zone_of(&m.node),
            broken: broken_replication(m),
        };
        if m.role == "primary" && primary.is_none() {
            primary = Some(t);
        } else {
            replicas.push(t);
        }
    }
    replicas.sort_by(|a, b| a.member.id.cmp(&b.member.id));
    Topology { primary, replicas }
}

// ---- forms ----------------------------------------------------------------------------------

/// Fields of the create form.
pub const CREATE_FIELDS: &[&str] = &[
    "name", "engine", "version", "replicas", "cpu", "memory", "disk", "labels",
];

/// Hidden fields of the create form when it restores a backup.
pub const RESTORE_FIELDS: &[&str] = &["restore_from", "backup", "time"];

/// The create form's field an API error is about (`None`: the form as a whole, e.g. no room
/// to place it). The API's message is shown as is; this only decides where.
pub fn field_of_error(code: &str, message: &str) -> Option<&'static str> {
    if code == "already_exists" {
        return Some("name");
    }
    let m = message.to_lowercase();
    // A restore to a time: the API's parse of it, or the time outside the window.
    if (code == "invalid" && m.starts_with("restore.time"))
        || (code == "restore_refused" && m.contains("point-in-time window"))
    {
        return Some("time");
    }
    if code != "invalid" {
        return None;
    }
    if m.starts_with("resources.cpu") {
        Some("cpu")
    } else if m.starts_with("resources.memory") {
        Some("memory")
    } else if m.starts_with("resources.disk") {
        Some("disk")
    } else if m.starts_with("replicas") {
        Some("replicas")
    } else if m.contains(" version ") || m.starts_with("version") {
        Some("version")
    } else if m.starts_with("instance") || m.starts_with("name") {
        Some("name")
    } else if m.contains("label") {
        Some("labels")
    } else if m.contains("unknown variant") && (m.contains("mariadb") || m.contains("redis")) {
        Some("engine")
    } else {
        None
    }
}

/// The JSON body `POST /v1/instances` is sent for the create form. Numbers that parse are
/// sent as numbers, anything else as the text typed, so the API's own validation answers.
/// Labels: `k=v` pairs separated by commas; an entry without `=` is sent as a key with an
/// empty value (the API says what is wrong with it).
pub fn create_body(form: &BTreeMap<String, String>) -> serde_json::Value {
    let get = |k: &str| form.get(k).map_or("", |v| v.trim());
    let num = |k: &str| -> serde_json::Value {
        let v = get(k);
        if let Ok(n) = v.parse::<u64>() {
            serde_json::json!(n)
        } else if let Ok(f) = v.parse::<f64>() {
            serde_json::json!(f)
        } else {
            serde_json::json!(v)
        }
    };
    let labels: serde_json::Map<String, serde_json::Value> = get("labels")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.trim().to_owned(), serde_json::json!(v.trim())),
            None => (kv.to_owned(), serde_json::json!("")),
        })
        .collect();
    let mut body = serde_json::json!({
        "name": get("name"),
        "engine": get("engine"),
        "version": get("version"),
        "replicas": num("replicas"),
        "resources": {"cpu": num("cpu"), "memory": num("memory"), "disk": num("disk")},
        "labels": labels,
    });
    // A restore: the form opened from a backup (or a point in the PITR window).
    if !get("restore_from").is_empty() {
        let mut r = serde_json::Map::new();
        r.insert(
            "from_instance".into(),
            serde_json::json!(get("restore_from")),
        );
        if !get("backup").is_empty() {
            r.insert("backup".into(), serde_json::json!(get("backup")));
        }
        if !get("time").is_empty() {
            r.insert(
                "time".into(),
                serde_json::json!(utc_of_local_input(get("time"))),
            );
        }
        body["restore"] = serde_json::Value::Object(r);
    }
    body
}

/// Page `page_no` (from 1; clamped to those there are) of `items`, `size` a page: the page
/// number, how many pages (at least 1), and the items on it.
pub fn page_of<T>(items: &[T], page_no: usize, size: usize) -> (usize, usize, &[T]) {
    let size = size.max(1);
    let pages = items.len().div_ceil(size).max(1);
    let page_no = page_no.clamp(1, pages);
    let from = (page_no - 1) * size;
    (page_no, pages, &items[from..(from + size).min(items.len())])
}

/// Filters of the events page (`GET /ui/events?instance=&kind=`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    /// The instance, exact.
    pub instance: String,
    /// Part of the kind.
    pub kind: String,
}

impl EventFilter {
    /// Whether the filter keeps `e`.
    pub fn keeps(&self, e: &Event) -> bool {
        (self.instance.is_empty() || e.instance.as_deref() == Some(self.instance.as_str()))
            && (self.kind.is_empty() || e.kind.contains(&self.kind))
    }
}

/// Where a page of a log (events, audit) starts: entries older than `before`, or newer than
/// `after`, or (neither) the newest. Ids, not offsets: a page stays the same page while new
/// entries arrive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Entries with a smaller id.
    pub before: Option<u64>,
    /// Entries with a larger id.
    pub after: Option<u64>,
}

impl Cursor {
    /// From the query's `before=` and `after=` (text, as typed: anything not a number is
    /// no cursor).
    pub fn parse(before: &str, after: &str) -> Cursor {
        Cursor {
            before: before.trim().parse().ok(),
            after: after.trim().parse().ok(),
        }
    }
}

/// One page of a log, newest first, and the cursors of its neighbours.
#[derive(Debug, Clone, PartialEq)]
pub struct LogPage<'a, T> {
    /// The entries on it, newest first.
    pub items: Vec<&'a T>,
    /// `after=` of the next newer page, if there are newer entries.
    pub newer: Option<u64>,
    /// `before=` of the next older page, if there are older entries.
    pub older: Option<u64>,
}

/// The page of `items` (newest first, ids decreasing) at `cursor`, `size` a page.
pub fn log_page<T>(
    items: &[T],
    id: impl Fn(&T) -> u64,
    cursor: Cursor,
    size: usize,
) -> LogPage<'_, T> {
    let size = size.max(1);
    let (start, end) = match (cursor.before, cursor.after) {
        (Some(b), _) => {
            let start = items.iter().position(|e| id(e) < b).unwrap_or(items.len());
            (start, (start + size).min(items.len()))
        }
        (None, Some(a)) => {
            // The `size` oldest entries newer than `a`, shown newest first.
            let end = items.iter().position(|e| id(e) <= a).unwrap_or(items.len());
            (end.saturating_sub(size), end)
        }
        (None, None) => (0, size.min(items.len())),
    };
    let page: Vec<&T> = items[start..end].iter().collect();
    LogPage {
        newer: (start > 0).then(|| page.first().map(|e| id(e))).flatten(),
        older: (end < items.len())
            .then(|| page.last().map(|e| id(e)))
            .flatten(),
        items: page,
    }
}

/// Where a page of a log comes from. The console keeps the log's tail (events of the last
/// 24 hours, the newest 10,000 audit entries); ids below `floor` (the oldest kept) are read
/// from the API when a page reaches them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSource {
    /// The tail the console keeps.
    Kept,
    /// The API, backward: entries with an id below this.
    Older(u64),
    /// The API, forward: entries with an id above `after` and below `floor`.
    Newer { after: u64, floor: u64 },
}

/// Where the page at `cursor` comes from, `floor` the oldest id kept (everything below it is
/// the API's only).
pub fn log_source(cursor: Cursor, floor: u64) -> LogSource {
    match (cursor.before, cursor.after) {
        (Some(b), _) if b <= floor => LogSource::Older(b),
        (None, Some(a)) if a.saturating_add(1) < floor => LogSource::Newer { after: a, floor },
        _ => LogSource::Kept,
    }
}

/// A page of the kept tail, its "Older" link continuing below the tail when the log goes
/// further back than what is kept (`floor` > 1).
pub fn past_the_tail<T>(mut page: LogPage<'_, T>, floor: u64) -> LogPage<'_, T> {
    if page.older.is_none() && floor > 1 {
        page.older = Some(floor);
    }
    page
}

/// A page read from the API past the kept tail, newest first: the entries and its links.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadPage<T> {
    /// Newest first.
    pub items: Vec<T>,
    /// `after=` of the newer page.
    pub newer: Option<u64>,
    /// `before=` of the older page.
    pub older: Option<u64>,
}

impl<T> ReadPage<T> {
    /// As a page the templates show.
    pub fn page(&self) -> LogPage<'_, T> {
        LogPage {
            items: self.items.iter().collect(),
            newer: self.newer,
            older: self.older,
        }
    }
}

// ---- formatting -----------------------------------------------------------------------------

/// A unix-ms time as `2026-12-02 07:30:39Z` (empty for 0).
pub fn utc(ms: i64) -> String {
    if ms <= 0 {
        return String::new();
    }
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// How long ago, roughly: `12 s ago`, `5 min ago`, `3 h ago`, `2 d ago` (`never` for 0).
pub fn ago(ms: i64, now_ms: i64) -> String {
    if ms <= 0 {
        return "never".into();
    }
    let s = (now_ms - ms).max(0) / 1000;
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// A lag for people: `0 s`, `12 s`, `unknown`.
pub fn lag(seconds: i64) -> String {
    if seconds < 0 {
        "unknown".into()
    } else {
        format!("{seconds} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::EngineView;

    fn member(id: &str, node: &str, role: &str) -> MemberView {
        MemberView {
            id: id.into(),
            node: node.into(),
            role: role.into(),
            state: "running".into(),
            address: format!("10.0.0.1:{}", id.len()),
            healthy: true,
            observed_role: role.into(),
            lag_seconds: 0,
            epoch: 2,
            ..MemberView::default()
        }
    }

    fn instance(name: &str, status: &str, members: Vec<MemberView>) -> InstanceView {
        let replicas = members.len().saturating_sub(1) as u32;
        InstanceView {
            name: name.into(),
            engine: "mariadb".into(),
            version: "10.11".into(),
            replicas,
            epoch: 2,
            status: status.into(),
            primary: String::new(),
            members,
            spec: crate::model::InstanceSpec {
                name: name.into(),
                engine: mofang_common::EngineKind::Mariadb,
                version: "10.11".into(),
                replicas,
                resources: crate::model::Resources {
                    cpu: 0.0,
                    memory: 0,
                    disk: 0,
                },
                disk_class: None,
                placement: None,
                labels: BTreeMap::new(),
                restore: None,
                tls: Default::default(),
                backup: None,
            },
            created_at_ms: 0,
            auto_failover: false,
            last_failover_ms: 0,
            restored_from: None,
            restore_progress: None,
            rotation: None,
            pitr_ready: None,
            pitr_reason: None,
            pitr_window: None,
            pitr_lag_s: None,
            parameters: BTreeMap::new(),
        }
    }

    fn node(name: &str, zone: &str, state: &str) -> Node {
        Node {
            name: name.into(),
            labels: [("zone".to_owned(), zone.to_owned())].into(),
            cpu: 2.0,
            memory_bytes: 2048 * 1024 * 1024,
            disks: vec![DiskInfo {
                path: "/d".into(),
                class: "ssd".into(),
                capacity_bytes: 4096 * 1024 * 1024,
                free_bytes: 1024 * 1024 * 1024,
            }],
            admin: "active".into(),
            state: state.into(),
            reserved_cpu: 0.5,
            reserved_memory_mib: 512,
            reserved_disk_mib: [("ssd".to_owned(), 1024)].into(),
            members: 1,
            ..Node::default()
        }
    }

    #[test]
    fn the_batch_form_sends_numbers_and_names_the_field_a_refusal_is_about() {
        let form = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let body = batch_body(&form(&[
            ("selector", " team=pay "),
            ("type", "restart"),
            ("max_parallel", "4"),
            ("max_failures", ""),
            ("csrf", "x"),
        ]))
        .expect("a body");
        assert_eq!(
            body,
            serde_json::json!({"selector": "team=pay", "type": "restart", "max_parallel": 4})
        );
        let (field, why) = batch_body(&form(&[("max_failures", "two")])).expect_err("refused");
        assert_eq!(field, "max_failures");
        assert!(why.contains("whole number"), "{why}");
        // The API's own messages (cluster::start_batch, serde on `type`).
        assert_eq!(
            batch_field_of_error("max_parallel must be 1 ..= 100"),
            "max_parallel"
        );
        assert_eq!(
            batch_field_of_error("max_failures must be at least 1"),
            "max_failures"
        );
        assert_eq!(
            batch_field_of_error("a batch runs restart, stop or start, not scale"),
            "type"
        );
        assert_eq!(
            batch_field_of_error("unknown variant `bogus`, expected one of `scale`, `resize`"),
            "type"
        );
        assert_eq!(
            batch_field_of_error("selector \"team=nobody\" matches no instance"),
            "selector"
        );
    }

    #[test]
    fn pages_past_the_kept_tail_come_from_the_api() {
        let c = |before: Option<u64>, after: Option<u64>| Cursor { before, after };
        // The tail holds ids 1000 and up.
        assert_eq!(log_source(c(None, None), 1000), LogSource::Kept);
        assert_eq!(log_source(c(Some(1500), None), 1000), LogSource::Kept);
        assert_eq!(
            log_source(c(Some(1000), None), 1000),
            LogSource::Older(1000)
        );
        assert_eq!(log_source(c(Some(12), None), 1000), LogSource::Older(12));
        assert_eq!(log_source(c(None, Some(999)), 1000), LogSource::Kept);
        assert_eq!(
            log_source(c(None, Some(500)), 1000),
            LogSource::Newer {
                after: 500,
                floor: 1000
            }
        );
        // Everything kept (the log starts at 1): nothing past the tail.
        assert_eq!(log_source(c(Some(1), None), 1), LogSource::Older(1));
        let items: Vec<u64> = (1000..1010).rev().collect();
        let last = log_page(&items, |e| *e, c(None, None), 100);
        assert_eq!(last.older, None);
        assert_eq!(past_the_tail(last.clone(), 1000).older, Some(1000));
        assert_eq!(
            past_the_tail(last, 1).older,
            None,
            "the log's first entry is kept"
        );
        let first = log_page(&items, |e| *e, c(None, None), 4);
        assert_eq!(
            past_the_tail(first, 1000).older,
            Some(1006),
            "a page inside the tail"
        );
    }

    #[test]
    fn the_usage_graph_runs_from_ten_minutes_ago_to_now_bottom_to_top() {
        let s = |at_ms: i64, busy: f64, used: u64| crate::cluster::UsageSample {
            at_ms,
            cpu_cores_busy: busy,
            cpu_cores: 2,
            memory_used_bytes: used,
            memory_total_bytes: 100,
        };
        let now = 1_000_000;
        let samples = [
            s(now - 700_000, 2.0, 100), // older than the window: not drawn
            s(now - 600_000, 0.0, 0),
            s(now - 300_000, 1.0, 50),
            s(now, 4.0, 100), // more than its cores (a sampling edge): at the top
        ];
        let (cpu, mem) = usage_lines(&samples, now, 600_000, 120.0, 30.0);
        assert_eq!(cpu, "0.0,30.0 60.0,15.0 120.0,0.0");
        assert_eq!(mem, "0.0,30.0 60.0,15.0 120.0,0.0");
        assert_eq!(
            usage_lines(&[], now, 600_000, 120.0, 30.0),
            (String::new(), String::new())
        );
    }

    #[test]
    fn a_batch_counts_what_has_ended() {
        let item = |state: &str| BatchItem {
            instance: state.to_owned(),
            state: state.to_owned(),
            ..BatchItem::default()
        };
        let b = Batch {
            state: "running".into(),
            items: vec![
                item("succeeded"),
                item("running"),
                item("pending"),
                item("failed"),
                item("not_started"),
            ],
            ..Batch::default()
        };
        assert!(b.is_live());
        assert_eq!(b.ended(), 3);
        assert_eq!(b.count("succeeded"), 1);
    }

    #[test]
    fn the_api_views_parse_into_the_console_views() {
        let v = serde_json::json!({"name": "shop", "engine": "mariadb", "version": "10.11",
            "replicas": 1, "epoch": 3, "status": "ready", "primary": "10.0.0.2:3306",
            "members": [{"id": "shop-0", "node": "n1", "role": "primary", "state": "running",
                "address": "a", "healthy": true, "observed_role": "primary", "lag_seconds": 0,
                "epoch": 3, "position": "x", "reason": "", "check_address": "", "cpu": 0.5,
                "memory_bytes": 1, "volume_bytes": 2, "version": "10.11"}],
            "spec": {"name": "shop", "engine": "mariadb", "version": "10.11", "replicas": 1,
                "resources": {"cpu": 0.5, "memory": 256, "disk": 512}, "labels": {"team": "pay"}},
            "created_at_ms": 1, "auto_failover": true, "last_failover_ms": 0, "rotation": null});
        let i: InstanceView = serde_json::from_value(v).expect("parses");
        assert_eq!(i.members[0].epoch, 3);
        assert_eq!(i.spec.resources.memory, 256);
        assert_eq!(i.spec.labels["team"], "pay");
    }

    #[test]
    fn a_healthy_cluster_has_no_problems() {
        let i = instance(
            "shop",
            "ready",
            vec![
                member("shop-0", "n1", "primary"),
                member("shop-1", "n2", "replica"),
            ],
        );
        assert!(problems(&[i], &[node("n1", "a", "ready")], false).is_empty());
    }

    #[test]
    fn problems_name_what_is_wrong_most_severe_first() {
        let mut broken = member("shop-1", "n2", "replica");
        broken.healthy = false;
        broken.reason = "Slave_IO_Running: No".into();
        let shop = instance(
            "shop",
            "degraded",
            vec![member("shop-0", "n1", "primary"), broken],
        );
        let mut dead = member("cart-0", "n2", "primary");
        dead.healthy = false;
        dead.state = "unknown".into();
        let cart = instance("cart", "degraded", vec![dead]);
        let mut gap = instance("logs", "ready", vec![member("logs-0", "n1", "primary")]);
        gap.pitr_ready = Some(false);
        gap.pitr_reason = Some("binlog 7 missing".into());
        let nodes = [node("n1", "a", "ready"), node("n2", "b", "down")];
        let p = problems(&[shop, cart, gap], &nodes, true);
        let whats: Vec<&str> = p.iter().map(|p| p.what.as_str()).collect();
        assert_eq!(p[0].severity, Severity::Critical);
        assert!(p
            .iter()
            .take_while(|p| p.severity == Severity::Critical)
            .any(|p| p.subject == "instance cart" && p.what.contains("no healthy primary")));
        assert!(whats.iter().any(|w| w.contains("mass-failure")));
        assert!(p
            .iter()
            .any(|p| p.subject == "node n2" && p.severity == Severity::Critical));
        assert!(whats
            .iter()
            .any(|w| w.contains("shop-1") && w.contains("Slave_IO_Running: No")));
        assert!(whats.iter().any(|w| w.contains("binlog 7 missing")));
        let sorted = p.windows(2).all(|w| w[0].severity <= w[1].severity);
        assert!(sorted, "{p:?}");
    }

    #[test]
    fn a_replica_is_broken_when_it_does_not_replicate() {
        let ok = member("a-1", "n", "replica");
        assert_eq!(broken_replication(&ok), None);
        assert_eq!(broken_replication(&member("a-0", "n", "primary")), None);
        let mut m = ok.clone();
        m.lag_seconds = -1;
        assert_eq!(
            broken_replication(&m).as_deref(),
            Some("replication lag unknown")
        );
        let mut m = ok.clone();
        m.observed_role = "primary".into();
        assert!(broken_replication(&m).is_some_and(|w| w.contains("role primary")));
        let mut m = ok.clone();
        m.state = "failed".into();
        assert_eq!(broken_replication(&m).as_deref(), Some("member failed"));
        let mut m = ok;
        m.healthy = false;
        assert_eq!(broken_replication(&m).as_deref(), Some("unhealthy"));
    }

    #[test]
    fn the_topology_puts_the_primary_on_top_and_marks_broken_arrows() {
        let mut r2 = member("shop-2", "n3", "replica");
        r2.healthy = false;
        r2.reason = "io thread stopped".into();
        let i = instance(
            "shop",
            "degraded",
            vec![
                r2,
                member("shop-1", "n2", "replica"),
                member("shop-0", "n1", "primary"),
            ],
        );
        let nodes = [node("n1", "a", "ready"), node("n2", "b", "ready")];
        let t = topology(&i, &nodes);
        let p = t.primary.expect("a primary");
        assert_eq!(p.member.id, "shop-0");
        assert_eq!(p.zone, "a");
        let ids: Vec<&str> = t.replicas.iter().map(|r| r.member.id.as_str()).collect();
        assert_eq!(ids, ["shop-1", "shop-2"]);
        assert_eq!(t.replicas[0].broken, None);
        assert_eq!(t.replicas[1].broken.as_deref(), Some("io thread stopped"));
        assert_eq!(t.replicas[1].zone, "-", "node unknown to the list");
    }

    #[test]
    fn fills_add_up_per_node_and_per_zone() {
        let nodes = [
            node("n1", "a", "ready"),
            node("n2", "a", "ready"),
            node("n3", "b", "ready"),
        ];
        let f = node_fill(&nodes[0]);
        assert_eq!(f.cpu.fraction(), 0.25);
        assert_eq!(f.memory_mib.fraction(), 0.25);
        assert_eq!(f.disk_mib.used, 3072.0);
        assert_eq!(f.disk_mib.fraction(), 0.75);
        assert_eq!(f.disk_reserved_mib.used, 1024.0);
        assert_eq!(f.disk_reserved_mib.fraction(), 0.25);
        let z = zone_fill(&nodes);
        assert_eq!(z.len(), 2);
        assert_eq!(z[0].name, "a");
        assert_eq!(z[0].cpu.capacity, 4.0);
        assert_eq!(z[0].members, 2);
        assert_eq!(z[0].disk_reserved_mib.used, 2048.0);
        assert_eq!(z[0].disk_reserved_mib.capacity, 8192.0);
        assert_eq!(
            Usage {
                used: 1.0,
                capacity: 0.0
            }
            .fraction(),
            0.0
        );
        assert_eq!(
            Usage {
                used: 3.0,
                capacity: 2.0
            }
            .fraction(),
            1.0
        );
    }

    #[test]
    fn counts_are_by_key() {
        let is = [
            instance("a", "ready", vec![]),
            instance("b", "ready", vec![]),
            instance("c", "degraded", vec![]),
        ];
        assert_eq!(
            count_by(&is, |i| i.status.clone()),
            vec![("degraded".to_owned(), 1), ("ready".to_owned(), 2)]
        );
    }

    #[test]
    fn recent_notable_events_are_the_last_day_newest_first() {
        let e = |id: u64, at_ms: i64, kind: &str| Event {
            id,
            at_ms,
            kind: kind.into(),
            instance: None,
            node: None,
            message: String::new(),
        };
        let now = 10 * RECENT_MS;
        let evs = [
            e(1, now - RECENT_MS - 1, "failover_completed"),
            e(2, now - 1000, "failover_completed"),
            e(3, now - 500, "placed"),
            e(4, now - 100, "operation_failed"),
        ];
        let ids: Vec<u64> = recent_notable(&evs, now).iter().map(|e| e.id).collect();
        assert_eq!(ids, [4, 2]);
    }

    #[test]
    fn the_filter_matches_name_labels_engine_version_status() {
        let mut i = instance("shop-db", "ready", vec![]);
        i.spec.labels.insert("team".into(), "pay".into());
        let f = |q: &str, engine: &str, version: &str, status: &str| InstanceFilter {
            q: q.into(),
            engine: engine.into(),
            version: version.into(),
            status: status.into(),
            ..InstanceFilter::default()
        };
        assert!(f("", "", "", "").matches(&i));
        assert!(f("SHOP", "", "", "").matches(&i));
        assert!(f("team=pay", "mariadb", "10.11", "ready").matches(&i));
        assert!(!f("team=ops", "", "", "").matches(&i));
        assert!(!f("", "redis", "", "").matches(&i));
        assert!(!f("", "", "11.8", "").matches(&i));
        assert!(!f("", "", "", "degraded").matches(&i));
        // The label selector, as batches resolve it: every term holds.
        let sel = |labels: &str| InstanceFilter {
            labels: labels.into(),
            ..InstanceFilter::default()
        };
        assert!(sel("team=pay").matches(&i));
        assert!(sel("team").matches(&i));
        assert!(sel("team=pay, env!=prod").matches(&i));
        assert!(!sel("team!=pay").matches(&i));
        assert!(!sel("team=pay,env").matches(&i));
        assert!(
            !sel("team=p").matches(&i),
            "a selector is exact, not a search"
        );
        assert_eq!(sel("team=pay").selector_error(), None);
        let bad = sel("team~pay");
        assert!(!bad.matches(&i));
        assert!(
            bad.selector_error().is_some_and(|e| e.contains("team~pay")),
            "{:?}",
            bad.selector_error()
        );
    }

    #[test]
    fn api_errors_land_next_to_their_field() {
        let cases = [
            (
                "invalid",
                "replicas 9 is absurd: at most 8",
                Some("replicas"),
            ),
            (
                "invalid",
                "resources.memory 32 MiB must be within 64 MiB .. 1 TiB",
                Some("memory"),
            ),
            (
                "invalid",
                "resources.cpu 0 must be within 0.1 .. 64",
                Some("cpu"),
            ),
            (
                "invalid",
                "resources.disk 1 MiB must be within 64 MiB .. 64 TiB",
                Some("disk"),
            ),
            (
                "invalid",
                "mariadb version 9.9 is not supported (supported: 10.11)",
                Some("version"),
            ),
            (
                "invalid",
                "instance name 'A_B' must be a DNS label",
                Some("name"),
            ),
            ("invalid", "label key 'x y' is not allowed", Some("labels")),
            (
                "already_exists",
                "instance shop already exists",
                Some("name"),
            ),
            ("unplaceable", "no node has room", None),
            ("invalid", "invalid type: string \"x\", expected u32", None),
        ];
        for (code, msg, field) in cases {
            assert_eq!(field_of_error(code, msg), field, "{msg}");
        }
    }

    #[test]
    fn the_create_form_becomes_the_api_body() {
        let form: BTreeMap<String, String> = [
            ("name", " shop "),
            ("engine", "mariadb"),
            ("version", "10.11"),
            ("replicas", "1"),
            ("cpu", "0.5"),
            ("memory", "256"),
            ("disk", "abc"),
            ("labels", "team=pay, env = prod ,bare"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let b = create_body(&form);
        assert_eq!(b["name"], "shop");
        assert_eq!(b["replicas"], 1);
        assert_eq!(b["resources"]["cpu"], 0.5);
        assert_eq!(b["resources"]["memory"], 256);
        assert_eq!(b["resources"]["disk"], "abc", "left for the API to refuse");
        assert_eq!(b["labels"]["team"], "pay");
        assert_eq!(b["labels"]["env"], "prod");
        assert_eq!(b["labels"]["bare"], "");
        assert!(b.get("restore").is_none());
        let mut form = form;
        form.insert("restore_from".into(), "shop".into());
        form.insert("backup".into(), "shop-123".into());
        form.insert("time".into(), String::new());
        let b = create_body(&form);
        assert_eq!(
            b["restore"],
            serde_json::json!({"from_instance": "shop", "backup": "shop-123"})
        );
    }

    #[test]
    fn operations_parse_and_their_ids_come_from_the_events() {
        let v = serde_json::json!({"id": "op-1-ab", "instance": "shop", "type": "restart",
            "state": "running", "created_ms": 5, "ended_ms": 0, "timeout_ms": 1000,
            "reason": "", "cancel_requested": false, "requested_by": "ops",
            "steps": [{"action": "restart", "member": "shop-1", "generation": 2,
                "state": "done", "started_ms": 6, "ended_ms": 7, "reason": ""}],
            "done": ["shop-1"], "total": 2});
        let op: Operation = serde_json::from_value(v).expect("parses");
        assert!(op.is_live());
        assert_eq!(op.kind, "restart");
        assert_eq!(op.steps[0].member.as_deref(), Some("shop-1"));
        let e = |id: u64, kind: &str, message: &str| Event {
            id,
            kind: kind.into(),
            message: message.into(),
            at_ms: 0,
            instance: None,
            node: None,
        };
        let evs = [
            e(
                3,
                "operation_started",
                "operation op-3-cc (scale) started by ops",
            ),
            e(
                2,
                "operation_step",
                "operation op-1-ab: step restart shop-1 done",
            ),
            e(
                1,
                "operation_started",
                "operation op-1-ab (restart) started by ops",
            ),
            e(0, "operation_started", "something else"),
        ];
        assert_eq!(operation_ids(&evs), ["op-3-cc", "op-1-ab"]);
    }

    #[test]
    fn the_operation_forms_become_the_api_body() {
        let form: BTreeMap<String, String> = [
            ("type", "scale"),
            ("replicas", "2"),
            ("cpu", ""),
            ("memory", "lots"),
            ("version", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let b = operation_body(&form);
        assert_eq!(b["type"], "scale");
        assert_eq!(b["replicas"], 2);
        assert!(b.get("cpu").is_none() && b.get("version").is_none());
        assert_eq!(b["memory"], "lots", "left for the API to refuse");
        assert!(b.get("settings").is_none());
        let form: BTreeMap<String, String> = [
            ("type", "reconfigure"),
            ("param.max_connections", " 300 "),
            ("param.wait_timeout", ""),
            ("param.innodb_log_buffer_size", "lots"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let b = operation_body(&form);
        assert_eq!(
            b["settings"],
            serde_json::json!({"max_connections": "300", "innodb_log_buffer_size": "lots"}),
            "those given, as typed, for the API to judge"
        );
    }

    #[test]
    fn the_catalogue_parses_and_refusals_name_their_parameter() {
        let v = serde_json::json!([{"engine": "redis", "versions": ["8.0"], "parameters": [
            {"name": "maxmemory-policy", "type": "enum", "values": ["noeviction", "allkeys-lru"],
             "unit": "", "dynamic": true, "description": "d"},
            {"name": "databases", "type": "integer", "min": 1, "max": 1024, "unit": "",
             "dynamic": false, "description": "d"},
            {"name": "timeout", "type": "integer", "min": 0, "max": 86400, "unit": "seconds",
             "dynamic": true, "description": "d"}]}]);
        let e: Vec<EngineView> = serde_json::from_value(v).expect("parses");
        let ps = &e[0].parameters;
        assert_eq!(ps[0].allowed(), "noeviction | allkeys-lru");
        assert_eq!(ps[1].allowed(), "1 ..= 1024");
        assert_eq!(ps[2].allowed(), "0 ..= 86400 seconds");
        assert!(!ps[1].dynamic);
        assert_eq!(
            parameter_of_error(
                "invalid",
                "settings.max_connections: \"5\" is not a whole number within 10 ..= 10000 (connections)"
            )
            .as_deref(),
            Some("param.max_connections")
        );
        assert_eq!(
            parameter_of_error("invalid", "a reconfigure needs `settings`"),
            None
        );
        assert_eq!(parameter_of_error("conflict", "settings.x: busy"), None);
    }

    fn health(name: &str) -> BackupHealthView {
        BackupHealthView {
            instance: name.into(),
            backups: 1,
            last_success_ms: Some(1_000),
            last_failed: Some(false),
            ..BackupHealthView::default()
        }
    }

    fn backup(id: &str, instance: &str, state: &str, requested_at_ms: i64) -> Backup {
        Backup {
            id: id.into(),
            instance: instance.into(),
            state: state.into(),
            requested_at_ms,
            ..Backup::default()
        }
    }

    #[test]
    fn backups_stand_failing_before_overdue_before_a_failed_verification() {
        let fine = health("a");
        assert_eq!(standing(&fine), Standing::Fine);
        let mut h = fine.clone();
        h.verify_failed = Some(true);
        assert_eq!(standing(&h), Standing::VerifyFailed);
        h.schedule = Some("0 0 3 * * *".into());
        h.overdue_s = Some(OVERDUE_AFTER_S);
        assert_eq!(
            standing(&h),
            Standing::VerifyFailed,
            "at the threshold: not yet"
        );
        h.overdue_s = Some(OVERDUE_AFTER_S + 1);
        assert_eq!(standing(&h), Standing::Overdue);
        h.last_failed = Some(true);
        assert_eq!(standing(&h), Standing::Failing);
        let none = BackupHealthView {
            instance: "b".into(),
            ..BackupHealthView::default()
        };
        assert_eq!(standing(&none), Standing::NoBackups);
        assert!(Standing::Overdue.needs_attention() && !Standing::Fine.needs_attention());
    }

    #[test]
    fn the_fleet_backups_page_puts_failing_and_overdue_first_and_filters() {
        let mut failing = health("pay");
        failing.last_failed = Some(true);
        let mut overdue = health("logs");
        overdue.schedule = Some("0 0 * * * *".into());
        overdue.overdue_s = Some(2 * OVERDUE_AFTER_S);
        let hs = [health("shop"), overdue, failing];
        let mut unverified = backup("shop-3", "shop", "succeeded", 3);
        unverified.verify_ok = Some(false);
        let all = [
            backup("shop-1", "shop", "succeeded", 1),
            backup("logs-2", "logs", "succeeded", 2),
            unverified,
            backup("pay-4", "pay", "failed", 4),
            backup("pay-5", "pay", "succeeded", 5),
            backup("gone-6", "gone", "succeeded", 6),
            backup("shop-7", "shop", "running", 7),
        ];
        let page = fleet_backups(&hs, &all, &BackupFilter::default());
        let att: Vec<(&str, Standing)> = page
            .attention
            .iter()
            .map(|(s, h)| (h.instance.as_str(), *s))
            .collect();
        assert_eq!(
            att,
            [("pay", Standing::Failing), ("logs", Standing::Overdue)]
        );
        assert_eq!(
            page.counts,
            [
                (Standing::Failing, 1),
                (Standing::Overdue, 1),
                (Standing::Fine, 1)
            ]
        );
        let ids: Vec<&str> = page.backups.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(
            ids,
            ["pay-4", "shop-3", "pay-5", "logs-2", "shop-7", "shop-1", "gone-6"],
            "failed, verification failed, failing and overdue instances', then the rest newest first"
        );
        let f = |instance: &str, status: &str| BackupFilter {
            instance: instance.into(),
            status: status.into(),
        };
        let page = fleet_backups(&hs, &all, &f("SHO", ""));
        assert!(page.attention.is_empty());
        assert!(page.backups.iter().all(|b| b.instance == "shop"));
        let page = fleet_backups(&hs, &all, &f("", "verify-failed"));
        let ids: Vec<&str> = page.backups.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ["shop-3"]);
        let page = fleet_backups(&hs, &all, &f("", "running"));
        assert_eq!(page.backups.len(), 1);
        assert_eq!(
            page.attention.len(),
            2,
            "the state filter keeps the attention list"
        );
    }

    #[test]
    fn the_overview_counts_failing_overdue_and_lagging_archives() {
        let mut failing = health("pay");
        failing.last_failed = Some(true);
        failing.verify_failed = Some(true);
        let mut overdue = health("logs");
        overdue.overdue_s = Some(OVERDUE_AFTER_S + 5);
        let mut late = health("cart");
        late.overdue_s = Some(OVERDUE_AFTER_S - 5);
        let mut a = instance("pay", "ready", vec![]);
        a.pitr_ready = Some(true);
        a.pitr_lag_s = Some(ARCHIVE_LAG_AFTER_S + 1);
        let mut b = instance("logs", "ready", vec![]);
        b.pitr_ready = Some(false);
        b.pitr_lag_s = Some(ARCHIVE_LAG_AFTER_S * 4);
        let mut c = instance("cart", "ready", vec![]);
        c.pitr_ready = Some(true);
        c.pitr_lag_s = Some(0);
        let s = backup_summary(
            &[failing, overdue, late],
            &[a, b, c, instance("redis", "ready", vec![])],
        );
        assert_eq!(s.failing, ["pay"]);
        assert_eq!(s.overdue, [("logs".to_owned(), OVERDUE_AFTER_S + 5)]);
        assert_eq!(s.verify_failed, ["pay"]);
        assert_eq!(s.archiving, 3);
        assert_eq!(
            s.lagging,
            [
                ("logs".to_owned(), ARCHIVE_LAG_AFTER_S * 4),
                ("pay".to_owned(), ARCHIVE_LAG_AFTER_S + 1)
            ]
        );
        assert_eq!(
            s.worst_lag,
            Some(("logs".to_owned(), ARCHIVE_LAG_AFTER_S * 4))
        );
        assert_eq!(backup_summary(&[], &[]), BackupSummary::default());
    }

    #[test]
    fn the_pitr_axis_spans_the_window_the_backups_and_now() {
        let mut i = instance("db", "ready", vec![]);
        assert_eq!(pitr_axis(&i, &[], 5_000_000), None, "nothing to draw");
        i.pitr_window = Some(crate::cluster::PitrWindow {
            from: "1970-01-01T01:00:00Z".into(),
            to: "1970-01-01T02:00:00Z".into(),
        });
        let mut done = backup("db-1", "db", "succeeded", 3_500_000);
        done.ended_at_ms = 3_600_000;
        let bs = [backup("db-2", "db", "running", 7_000_000), done];
        let a = pitr_axis(&i, &bs, 8_000_000).expect("an axis");
        assert_eq!(a.window, Some((3_600_000, 7_200_000)));
        let ids: Vec<(&str, i64)> = a.marks.iter().map(|m| (m.id.as_str(), m.at_ms)).collect();
        assert_eq!(
            ids,
            [("db-1", 3_600_000), ("db-2", 7_000_000)],
            "oldest first, an ended backup at its end"
        );
        // 3 % margins around 3_600_000 ..= 8_000_000 (now).
        assert_eq!((a.start_ms, a.end_ms), (3_468_000, 8_132_000));
        assert!(a.x(3_600_000) > 0.0 && a.x(8_000_000) < 1.0);
        assert!(a.x(3_600_000) < a.x(7_200_000));
        assert_eq!(a.x(0), 0.0, "clamped");
        let t = a.ticks(5);
        assert_eq!((t.len(), t[0], t[4]), (5, a.start_ms, a.end_ms));
        let hour = PitrAxis {
            end_ms: a.start_ms + 3_600_000,
            ..a.clone()
        };
        assert_eq!(hour.label(3_600_000), "01:00:00", "within an hour: seconds");
        let day = PitrAxis {
            end_ms: a.start_ms + 2 * 3_600_000,
            ..a.clone()
        };
        assert_eq!(day.label(3_600_000), "01:00");
        let week = PitrAxis {
            end_ms: a.start_ms + 7 * 86_400_000,
            ..a.clone()
        };
        assert_eq!(week.label(3_600_000), "01-01 01:00");
        // A window the API's parser refuses is not drawn; the backups still are.
        i.pitr_window = Some(crate::cluster::PitrWindow {
            from: "yesterday".into(),
            to: "today".into(),
        });
        let a = pitr_axis(&i, &bs, 8_000_000).expect("an axis");
        assert_eq!((a.window, a.marks.len()), (None, 2));
        // One point only: at least a minute each side.
        let a = pitr_axis(&instance("x", "ready", vec![]), &bs[..1], 7_000_000).expect("axis");
        assert_eq!((a.start_ms, a.end_ms), (6_940_000, 7_060_000));
    }

    #[test]
    fn a_picked_time_is_sent_as_the_apis_utc_time() {
        assert_eq!(
            local_input_of("2026-12-01T14:45:10Z"),
            "2026-12-01T14:45:10"
        );
        assert_eq!(local_input_of("soon"), "soon");
        assert_eq!(
            utc_of_local_input("2026-12-01T14:45:10"),
            "2026-12-01T14:45:10Z"
        );
        assert_eq!(
            utc_of_local_input("2026-12-01T14:45"),
            "2026-12-01T14:45:00Z",
            "browsers leave out :00"
        );
        for as_typed in [
            "2026-12-01T14:45:10+02:00",
            "2026-12-01T14:45:10Z",
            "noon",
            "",
        ] {
            assert_eq!(utc_of_local_input(as_typed), as_typed);
        }
        let form: BTreeMap<String, String> = [
            ("name", "back"),
            ("restore_from", "shop"),
            ("time", "2026-12-01T14:45"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(
            create_body(&form)["restore"],
            serde_json::json!({"from_instance": "shop", "time": "2026-12-01T14:45:00Z"})
        );
        assert_eq!(
            field_of_error("invalid", "restore.time: \"noon\" is not an RFC 3339 time"),
            Some("time")
        );
        assert_eq!(
            field_of_error(
                "restore_refused",
                "restore refused: time 2000-01-01T00:00:00Z is outside the point-in-time window of shop: none yet"
            ),
            Some("time")
        );
        assert_eq!(
            field_of_error("restore_refused", "restore refused: repository r is gone"),
            None
        );
    }

    #[test]
    fn pages_are_clamped_and_cut() {
        let items: Vec<u32> = (1..=250).collect();
        assert_eq!(page_of(&items, 1, 100).2.len(), 100);
        let (n, pages, last) = page_of(&items, 9, 100);
        assert_eq!((n, pages, last.first(), last.len()), (3, 3, Some(&201), 50));
        assert_eq!(page_of(&items, 0, 100).0, 1);
        let none: [u32; 0] = [];
        assert_eq!(page_of(&none, 4, 100), (1, 1, &none[..]));
    }

    #[test]
    fn log_pages_go_by_id_and_stay_put_while_entries_arrive() {
        let ids: Vec<u64> = (1..=250).rev().collect();
        let id = |e: &u64| *e;
        let at = |c: Cursor| {
            let p = log_page(&ids, id, c, 100);
            (
                p.items.first().copied().copied(),
                p.items.last().copied().copied(),
                p.items.len(),
                p.newer,
                p.older,
            )
        };
        let newest = Cursor::default();
        assert_eq!(at(newest), (Some(250), Some(151), 100, None, Some(151)));
        let older = Cursor::parse("151", "");
        assert_eq!(at(older), (Some(150), Some(51), 100, Some(150), Some(51)));
        assert_eq!(
            at(Cursor::parse("51", "")),
            (Some(50), Some(1), 50, Some(50), None)
        );
        assert_eq!(
            at(Cursor::parse("", "150")),
            (Some(250), Some(151), 100, None, Some(151)),
            "back from the second page"
        );
        assert_eq!(
            at(Cursor::parse("", "50")),
            (Some(150), Some(51), 100, Some(150), Some(51))
        );
        // New entries arrive: the second page is the same page.
        let more: Vec<u64> = (1..=260).rev().collect();
        let p = log_page(&more, id, older, 100);
        assert_eq!((p.items[0], p.items[99]), (&150, &51));
        assert_eq!(p.newer, Some(150));
        // A cursor past either end: an empty page leading back.
        let p = log_page(&ids, id, Cursor::parse("1", ""), 100);
        assert!(p.items.is_empty() && p.older.is_none());
        assert_eq!(
            Cursor::parse("x", " 7 "),
            Cursor {
                before: None,
                after: Some(7)
            }
        );
        let none: [u64; 0] = [];
        assert_eq!(log_page(&none, id, newest, 100).items.len(), 0);
    }

    #[test]
    fn times_and_lags_read_well() {
        assert_eq!(utc(0), "");
        assert_eq!(utc(1_000), "1970-01-01 00:00:01Z");
        assert_eq!(ago(0, 5), "never");
        assert_eq!(ago(1_000, 13_000), "12 s ago");
        assert_eq!(ago(1, 1 + 3 * 3600 * 1000), "3 h ago");
        assert_eq!(lag(-1), "unknown");
        assert_eq!(lag(4), "4 s");
    }
}

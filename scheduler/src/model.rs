//! The scheduler's durable records: nodes, instances with their members, events, audit
//! entries. These are what the store keeps and what the API shows.

use mofang_common::rotation::{Account, RotationStep};
use mofang_common::{EngineKind, Role};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What an operator set on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum NodeAdmin {
    /// Schedulable.
    #[default]
    Active,
    /// No new members; existing ones stay.
    Cordoned,
    /// No new members; existing ones are to be moved away.
    Draining,
}

/// The state a node is in, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Heartbeating and schedulable.
    Ready,
    /// No heartbeat for `node_ttl`.
    Down,
    /// Heartbeating, being drained.
    Draining,
    /// Heartbeating, cordoned.
    Cordoned,
}

/// A data disk of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DiskInfo {
    /// Path on the host.
    pub path: String,
    /// Class (`ssd`, `hdd`, ...).
    pub class: String,
    /// Capacity offered, bytes.
    pub capacity_bytes: u64,
    /// Free bytes on the filesystem (last report).
    pub free_bytes: u64,
}

/// A registered node (one agent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Node {
    /// Node name.
    pub name: String,
    /// Address clients use for host-network members.
    pub address: String,
    /// Labels (`zone`, `region`, ...).
    pub labels: BTreeMap<String, String>,
    /// CPU cores offered.
    pub cpu: f64,
    /// Memory offered, bytes.
    pub memory_bytes: u64,
    /// Data disks.
    pub disks: Vec<DiskInfo>,
    /// Operator setting.
    pub admin: NodeAdmin,
    /// Agent version.
    pub agent_version: String,
    /// First registration, ms.
    pub registered_at_ms: i64,
    /// The agent's HTTP server (`host:port`: metrics, role checks); empty if it has none.
    #[serde(default)]
    pub http_address: String,
}

/// Resources of one member.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU cores (0.1 .. 64).
    #[schema(minimum = 0.1, maximum = 64)]
    pub cpu: f64,
    /// Memory in MiB (64 .. 1 TiB).
    #[schema(minimum = 64, maximum = 1048576)]
    pub memory: u64,
    /// Disk in MiB (64 .. 64 TiB).
    #[schema(minimum = 64, maximum = 67108864)]
    pub disk: u64,
}

/// Scoring strategy of placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Prefer the least loaded nodes (default).
    #[default]
    Spread,
    /// Prefer the most loaded nodes that still fit.
    Binpack,
}

/// Placement constraints of an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct PlacementSpec {
    /// Only nodes whose `zone` label is one of these.
    #[serde(default)]
    pub zones: Option<Vec<String>>,
    /// Scoring strategy.
    #[serde(default)]
    pub spread: Option<Strategy>,
}

/// What a user asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    /// Instance name (DNS label, at most 40 characters).
    #[schema(pattern = r"^[a-z]([a-z0-9-]*[a-z0-9])?$", max_length = 40)]
    pub name: String,
    /// Engine: `mariadb` or `redis`.
    #[schema(schema_with = crate::api::schema::engine)]
    pub engine: EngineKind,
    /// Engine version: MariaDB `11.8`, `10.11`, `10.5`; Redis `8.0`, `7.0`, `6.0`
    /// (`GET /v1/engines`).
    #[schema(schema_with = crate::api::schema::version)]
    pub version: String,
    /// Number of replicas besides the primary (0 .. 8).
    #[schema(maximum = 8)]
    pub replicas: u32,
    /// Resources of each member.
    pub resources: Resources,
    /// Disk class; any when absent.
    #[serde(default)]
    #[schema(pattern = r"^[a-z]([a-z0-9-]*[a-z0-9])?$", max_length = 32)]
    pub disk_class: Option<String>,
    /// Placement constraints.
    #[serde(default)]
    pub placement: Option<PlacementSpec>,
    /// Labels (`{"team": "pay", "env": "prod"}`) for selecting instances (list, batches):
    /// at most 32; keys 1-63 characters of letters, digits, `.`, `_`, `-`, `/`; values at
    /// most 63 of letters, digits, `.`, `_`, `-`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Create it from a backup ([`RestoreRequest`]): its primary's data is the backup's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreRequest>,
    /// Database traffic TLS: `off` (default: plain text), `optional` (TLS offered beside
    /// plain text; MariaDB only) or `required` (plain text refused). With TLS each member
    /// serves a certificate of the cluster CA naming its address, and replication is
    /// encrypted and verified (docs/security.md).
    #[serde(default)]
    #[schema(schema_with = crate::api::schema::db_tls)]
    pub tls: mofang_common::DbTls,
    /// Scheduled backups, their retention and verification
    /// ([`crate::backup::schedule::BackupPolicy`]); none when absent. Changed later with
    /// `PATCH /v1/instances/{name}` (`"backup": null` removes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<crate::backup::schedule::BackupPolicy>,
}

/// `restore` of a create request: restore a backup of `from_instance` (which may have been
/// deleted) into the new instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// The instance the backup was taken of.
    pub from_instance: String,
    /// The backup's id; default: its latest succeeded backup (with `time`: the latest that
    /// ended at or before it).
    #[serde(default)]
    pub backup: Option<String>,
    /// Restore to this time (MariaDB; RFC 3339 in whole seconds, e.g.
    /// `2026-12-01T14:45:10Z`): the backup, then the archived binlogs replayed up to the first
    /// transaction begun at or after it. It must be within the source's `pitr_window`.
    #[serde(default)]
    pub time: Option<String>,
}

/// The backup an instance was created from, as checked at its creation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Restored {
    /// The backup's id.
    pub backup: String,
    /// Its repository.
    pub repo: String,
    /// The data object's path in the repository.
    pub object: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its sha256, hex.
    pub sha256: String,
    /// Its size once decompressed.
    pub raw_size: u64,
    /// Client-side encryption of the data object; absent: in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub encryption: Option<mofang_common::backup::ObjectEncryption>,
    /// Point-in-time restore: the time restored to (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Point-in-time restore: the archived binlog files replayed after the backup, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub binlogs: Vec<mofang_common::backup::RestoreBinlog>,
}

/// One member of an instance, as decided by the scheduler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MemberRecord {
    /// Member id: `<instance>-<ordinal>`.
    pub id: String,
    /// Node it is placed on.
    pub node: String,
    /// Desired role.
    #[schema(value_type = String, example = "primary")]
    pub role: Role,
    /// The disk class its volume is on, decided once at placement (the request's
    /// `disk_class`, or the node's class with the most free space): the scheduler books the
    /// reservation under it and the agent creates the volume on it. Empty in records written
    /// before it existed (read as the request's class, else the node's first disk's).
    #[serde(default)]
    pub disk_class: String,
}

/// Instance-wide credentials (generated at creation, shown only to admins).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Credentials {
    /// `mofang_admin` password.
    pub admin: String,
    /// `mofang_repl` password.
    pub repl: String,
    /// `mofang_monitor` password.
    pub monitor: String,
    /// `app` password.
    pub app: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

impl Credentials {
    /// The password of `account`.
    pub fn get(&self, account: Account) -> &str {
        match account {
            Account::Admin => &self.admin,
            Account::Repl => &self.repl,
            Account::Monitor => &self.monitor,
            Account::App => &self.app,
        }
    }

    /// The password of `account`, to change it.
    pub fn get_mut(&mut self, account: Account) -> &mut String {
        match account {
            Account::Admin => &mut self.admin,
            Account::Repl => &mut self.repl,
            Account::Monitor => &mut self.monitor,
            Account::App => &mut self.app,
        }
    }
}

/// A credential rotation under way (docs/security.md): its steps are ordered by
/// [`crate::rotation`] and carried out by every member's agent.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRotation {
    /// Its id: when it started, unix ms.
    pub id: u64,
    /// The account whose password changes.
    pub account: Account,
    /// The step every member is asked to carry out.
    pub step: RotationStep,
    /// The password that is not the instance's current one: the new one during `add`, the
    /// old one during `switch` and `drop`. Sealed at rest like the credentials.
    pub password: String,
    /// How long the old password stays accepted after the switch, ms.
    pub grace_ms: u64,
    /// When the `switch` step was written (unix ms; 0 before).
    pub switched_at_ms: i64,
}

impl std::fmt::Debug for CredentialRotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialRotation")
            .field("id", &self.id)
            .field("account", &self.account)
            .field("step", &self.step)
            .field("grace_ms", &self.grace_ms)
            .field("switched_at_ms", &self.switched_at_ms)
            .finish_non_exhaustive()
    }
}

/// A database instance: the spec plus every decision taken about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// The request.
    pub spec: InstanceSpec,
    /// Role-assignment generation; only grows.
    pub epoch: u64,
    /// Members with their nodes and roles.
    pub members: Vec<MemberRecord>,
    /// Credentials.
    pub credentials: Credentials,
    /// Creation time, ms.
    pub created_at_ms: i64,
    /// Store revision of this record (compare-and-set).
    pub revision: u64,
    /// Automatic failover for this instance (the global switch is in the config).
    #[serde(default = "yes")]
    pub auto_failover: bool,
    /// When the last failover or switchover of this instance was decided (unix ms; 0: never).
    #[serde(default)]
    pub last_failover_ms: i64,
    /// An operator acknowledged the last failover: the block period no longer applies.
    #[serde(default)]
    pub failover_acked: bool,
    /// Switchover step 1: the primary stops application writes (same epoch).
    #[serde(default)]
    pub fence_primary: bool,
    /// Switchover step 2: the new primary reaches this position before it opens for writes.
    #[serde(default)]
    pub promote_after: String,
    /// The primary a failover deposed while it may still acknowledge writes (frozen, hung,
    /// its node's lease not yet run out): the new primary does not open until it is known
    /// dead, fenced, demoted or leaseless, then this is cleared (decision 123).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deposed: Option<String>,
    /// A lost member being replaced: (lost member, its replacement). The lost member leaves
    /// once its replacement replicates.
    #[serde(default)]
    pub replacing: Option<(String, String)>,
    /// Restarts asked per member (rolling restart, issue 17): the agent restarts a member's
    /// container once whenever its number grows. Absent: 0.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub restart_generations: BTreeMap<String, u64>,
    /// Rebuilds asked per member (issue 17): the agent removes a replica's container and
    /// volume and seeds it again once whenever its number grows. Absent: 0.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rebuild_generations: BTreeMap<String, u64>,
    /// Stopped by an operator (issue 17): containers stopped, volumes and reservations kept,
    /// never failed over, no alert.
    #[serde(default)]
    pub stopped: bool,
    /// A replica being added by a `scale` (issue 17) and the healthy replica it copies its
    /// first snapshot from (MariaDB), instead of the primary. Cleared once it replicates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub seed_donors: BTreeMap<String, String>,
    /// A MariaDB replica being added by a `scale` and the backup of this instance its volume
    /// is filled from (a physical copy; decision 164), before it follows the primary from the
    /// backup's GTID position. Cleared once it replicates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub seed_backups: BTreeMap<String, Restored>,
    /// Engine parameters set by `reconfigure` (issue 17), checked against
    /// [`mofang_common::params`]; rendered into every member's config.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
    /// Grows with every change of `parameters`; members report the one they applied.
    #[serde(default)]
    pub parameters_generation: u64,
    /// The backup this instance was restored from (its primary's volume is filled from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<Box<Restored>>,
    /// A credential rotation under way (boxed: most records have none).
    #[serde(default)]
    pub rotation: Option<Box<CredentialRotation>>,
    /// The last backup slot of `spec.backup.schedule` the leader ran (unix ms), or the time
    /// the schedule was set: written (compare-and-set) before the backup starts, so a new
    /// leader never runs a slot twice.
    #[serde(default)]
    pub backup_slot_ms: i64,
    /// The same for `spec.backup.verify`.
    #[serde(default)]
    pub verify_slot_ms: i64,
}

fn yes() -> bool {
    true
}

impl Instance {
    /// A new instance at epoch 1, not yet stored (revision 0).
    pub fn new(spec: InstanceSpec, members: Vec<MemberRecord>, credentials: Credentials) -> Self {
        Instance {
            spec,
            epoch: 1,
            members,
            credentials,
            created_at_ms: now_ms(),
            revision: 0,
            auto_failover: true,
            last_failover_ms: 0,
            failover_acked: false,
            fence_primary: false,
            promote_after: String::new(),
            deposed: None,
            replacing: None,
            restart_generations: BTreeMap::new(),
            rebuild_generations: BTreeMap::new(),
            stopped: false,
            seed_donors: BTreeMap::new(),
            seed_backups: BTreeMap::new(),
            parameters: BTreeMap::new(),
            parameters_generation: 0,
            restored: None,
            rotation: None,
            backup_slot_ms: 0,
            verify_slot_ms: 0,
        }
    }

    /// The primary's record.
    pub fn primary(&self) -> Option<&MemberRecord> {
        self.members.iter().find(|m| m.role == Role::Primary)
    }
}

/// Something that happened, for `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Monotonic id (assigned by the store).
    pub id: u64,
    /// Time, ms.
    pub at_ms: i64,
    /// Instance concerned, if any.
    pub instance: Option<String>,
    /// Node concerned, if any.
    pub node: Option<String>,
    /// Kind: an [`EventKind`] name (`placed`, `failover_decided`, ...).
    pub kind: String,
    /// Human-readable detail.
    pub message: String,
}

/// What an event records. Stored and served as its snake_case name ([`EventKind::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// An instance was placed (members and nodes).
    Placed,
    /// An instance was created.
    InstanceCreated,
    /// An instance was deleted.
    InstanceDeleted,
    /// A node registered for the first time.
    NodeRegistered,
    /// A node registered again with changed facts.
    NodeUpdated,
    /// A node stopped heartbeating for `node_ttl`.
    NodeDown,
    /// An operator cordoned, drained or activated a node.
    NodeAdmin,
    /// A primary failed (or a lease wait started).
    FailoverDetected,
    /// The primary's node is lost but its replicas still see it.
    FailoverNotNeeded,
    /// A safety rail held an automatic failover back.
    FailoverBlocked,
    /// A `pre_failover` hook refused.
    FailoverAborted,
    /// A failover was refused (the refusal says why).
    FailoverNotDone,
    /// A new epoch and primary were written.
    FailoverDecided,
    /// The old primary of a failover can acknowledge no write any more: the new one opens.
    FailoverOldPrimaryGone,
    /// The new primary is healthy at the new epoch.
    FailoverCompleted,
    /// The new primary was not healthy within `completion_timeout_ms`.
    FailoverIncomplete,
    /// The mass-failure guard stopped automatic failover.
    FailoverMassHold,
    /// An operator resumed automatic failover.
    FailoverResumed,
    /// An operator acknowledged the last failover.
    FailoverAcknowledged,
    /// An instance's automatic failover was switched on or off.
    AutoFailover,
    /// A switchover fenced the primary.
    SwitchoverStarted,
    /// A switchover promotes its target at a new epoch.
    SwitchoverPromoting,
    /// A switchover completed.
    SwitchoverCompleted,
    /// The switchover target did not become a healthy primary in time.
    SwitchoverIncomplete,
    /// The primary was not fenced in time: nothing changed.
    SwitchoverAborted,
    /// A switchover cut short by a scheduler stop was undone.
    SwitchoverAbandoned,
    /// A replacement member was placed.
    MemberReplacing,
    /// The replacement replicates; the lost member left.
    MemberReplaced,
    /// A replacement could not be placed.
    ReplaceNotDone,
    /// A new data key seals secrets from now on (`mofang keyring rotate`).
    KeyringRotated,
    /// Data keys that seal nothing any more were removed from the keyring.
    KeyRetired,
    /// This scheduler leads but holds no CA key: it cannot sign member certificates.
    TlsSigningUnavailable,
    /// An agent got its certificate with a join token.
    NodeJoined,
    /// An operator revoked a node: its certificates are refused.
    NodeRevoked,
    /// An agent-service call was refused: no certificate, another node's, a revoked one,
    /// or a join token that is used, expired or for another node.
    AgentRefused,
    /// A day-2 operation was accepted and began.
    OperationStarted,
    /// A step of an operation began, ended or failed.
    OperationStep,
    /// An operation's every step is done.
    OperationSucceeded,
    /// An operation failed (a step failed, or it timed out).
    OperationFailed,
    /// An operation was cancelled at a safe point.
    OperationCancelled,
    /// An instance's labels changed.
    InstanceUpdated,
    /// A backup was asked for (the member chosen, the repository).
    BackupRequested,
    /// The member's agent started a backup.
    BackupStarted,
    /// A backup is stored with its manifest.
    BackupSucceeded,
    /// A backup failed (the reason).
    BackupFailed,
    /// A backup and its objects were deleted.
    BackupDeleted,
    /// A scheduled backup or verification did not run at its slot (slots passed while no
    /// scheduler led, or it could not start: one already running, no healthy member).
    BackupMissed,
    /// Retention deleted an expired backup with its objects, or archived binlogs no retained
    /// backup needs.
    BackupExpired,
    /// A backup's verification began (the node of its throwaway container).
    VerifyStarted,
    /// A backup's verification passed: it restored and its row counts (key count) match.
    VerifySucceeded,
    /// A backup's verification failed (the reason).
    VerifyFailed,
    /// The binlog archive of an instance has a gap after its latest full backup: it cannot
    /// be restored to a time past the gap until the next full backup (the reason).
    PitrGap,
    /// The binlog archive continues the latest full backup again (a backup after the gap).
    PitrReady,
    /// A credential rotation started: every member is to accept the new password too.
    CredentialsRotating,
    /// Every member accepts the new password: it is the instance's from now on.
    CredentialsSwitched,
    /// The old password is accepted no more: the rotation is over.
    CredentialsRotated,
}

impl EventKind {
    /// Every kind, for documentation and tests.
    pub const ALL: [EventKind; 56] = [
        EventKind::Placed,
        EventKind::InstanceCreated,
        EventKind::InstanceDeleted,
        EventKind::NodeRegistered,
        EventKind::NodeUpdated,
        EventKind::NodeDown,
        EventKind::NodeAdmin,
        EventKind::FailoverDetected,
        EventKind::FailoverNotNeeded,
        EventKind::FailoverBlocked,
        EventKind::FailoverAborted,
        EventKind::FailoverNotDone,
        EventKind::FailoverDecided,
        EventKind::FailoverOldPrimaryGone,
        EventKind::FailoverCompleted,
        EventKind::FailoverIncomplete,
        EventKind::FailoverMassHold,
        EventKind::FailoverResumed,
        EventKind::FailoverAcknowledged,
        EventKind::AutoFailover,
        EventKind::SwitchoverStarted,
        EventKind::SwitchoverPromoting,
        EventKind::SwitchoverCompleted,
        EventKind::SwitchoverIncomplete,
        EventKind::SwitchoverAborted,
        EventKind::SwitchoverAbandoned,
        EventKind::MemberReplacing,
        EventKind::MemberReplaced,
        EventKind::ReplaceNotDone,
        EventKind::KeyringRotated,
        EventKind::KeyRetired,
        EventKind::TlsSigningUnavailable,
        EventKind::NodeJoined,
        EventKind::NodeRevoked,
        EventKind::AgentRefused,
        EventKind::OperationStarted,
        EventKind::OperationStep,
        EventKind::OperationSucceeded,
        EventKind::OperationFailed,
        EventKind::OperationCancelled,
        EventKind::InstanceUpdated,
        EventKind::BackupRequested,
        EventKind::BackupStarted,
        EventKind::BackupSucceeded,
        EventKind::BackupFailed,
        EventKind::BackupDeleted,
        EventKind::BackupMissed,
        EventKind::BackupExpired,
        EventKind::VerifyStarted,
        EventKind::VerifySucceeded,
        EventKind::VerifyFailed,
        EventKind::PitrGap,
        EventKind::PitrReady,
        EventKind::CredentialsRotating,
        EventKind::CredentialsSwitched,
        EventKind::CredentialsRotated,
    ];

    /// The stored name, e.g. `failover_decided`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Placed => "placed",
            EventKind::InstanceCreated => "instance_created",
            EventKind::InstanceDeleted => "instance_deleted",
            EventKind::NodeRegistered => "node_registered",
            EventKind::NodeUpdated => "node_updated",
            EventKind::NodeDown => "node_down",
            EventKind::NodeAdmin => "node_admin",
            EventKind::FailoverDetected => "failover_detected",
            EventKind::FailoverNotNeeded => "failover_not_needed",
            EventKind::FailoverBlocked => "failover_blocked",
            EventKind::FailoverAborted => "failover_aborted",
            EventKind::FailoverNotDone => "failover_not_done",
            EventKind::FailoverDecided => "failover_decided",
            EventKind::FailoverOldPrimaryGone => "failover_old_primary_gone",
            EventKind::FailoverCompleted => "failover_completed",
            EventKind::FailoverIncomplete => "failover_incomplete",
            EventKind::FailoverMassHold => "failover_mass_hold",
            EventKind::FailoverResumed => "failover_resumed",
            EventKind::FailoverAcknowledged => "failover_acknowledged",
            EventKind::AutoFailover => "auto_failover",
            EventKind::SwitchoverStarted => "switchover_started",
            EventKind::SwitchoverPromoting => "switchover_promoting",
            EventKind::SwitchoverCompleted => "switchover_completed",
            EventKind::SwitchoverIncomplete => "switchover_incomplete",
            EventKind::SwitchoverAborted => "switchover_aborted",
            EventKind::SwitchoverAbandoned => "switchover_abandoned",
            EventKind::MemberReplacing => "member_replacing",
            EventKind::MemberReplaced => "member_replaced",
            EventKind::ReplaceNotDone => "replace_not_done",
            EventKind::KeyringRotated => "keyring_rotated",
            EventKind::KeyRetired => "key_retired",
            EventKind::TlsSigningUnavailable => "tls_signing_unavailable",
            EventKind::NodeJoined => "node_joined",
            EventKind::NodeRevoked => "node_revoked",
            EventKind::AgentRefused => "agent_refused",
            EventKind::OperationStarted => "operation_started",
            EventKind::OperationStep => "operation_step",
            EventKind::OperationSucceeded => "operation_succeeded",
            EventKind::OperationFailed => "operation_failed",
            EventKind::OperationCancelled => "operation_cancelled",
            EventKind::InstanceUpdated => "instance_updated",
            EventKind::BackupRequested => "backup_requested",
            EventKind::BackupStarted => "backup_started",
            EventKind::BackupSucceeded => "backup_succeeded",
            EventKind::BackupFailed => "backup_failed",
            EventKind::BackupDeleted => "backup_deleted",
            EventKind::BackupMissed => "backup_missed",
            EventKind::BackupExpired => "backup_expired",
            EventKind::VerifyStarted => "verify_started",
            EventKind::VerifySucceeded => "verify_succeeded",
            EventKind::VerifyFailed => "verify_failed",
            EventKind::PitrGap => "pitr_gap",
            EventKind::PitrReady => "pitr_ready",
            EventKind::CredentialsRotating => "credentials_rotating",
            EventKind::CredentialsSwitched => "credentials_switched",
            EventKind::CredentialsRotated => "credentials_rotated",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One mutating request, for `GET /v1/audit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Monotonic id (assigned by the store).
    pub id: u64,
    /// Time, ms.
    pub at_ms: i64,
    /// Token name.
    pub who: String,
    /// Source address.
    pub source: String,
    /// Method and path, e.g. `POST /v1/instances`.
    pub action: String,
    /// Target object.
    pub target: String,
    /// HTTP status of the answer.
    pub status: u16,
    /// Short result (`ok`, or the error code).
    pub result: String,
}

#[cfg(test)]
mod event_kind_tests {
    use super::EventKind;

    #[test]
    fn event_kind_names_are_distinct_snake_case() {
        let names: std::collections::BTreeSet<&str> =
            EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), EventKind::ALL.len());
        assert!(names
            .iter()
            .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
    }
}

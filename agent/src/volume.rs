//! Local volumes: a directory per member on a data disk, reserved durably so no disk is over-reserved.
//!
//! Each disk keeps its own ledger (`<disk>/.mofang-volumes.json`): the reservations live and die
//! with the disk that holds the data, and survive agent restarts. Paths and classes are not in
//! the ledger; they come from the config, so a disk mounted elsewhere keeps its volumes.
//!
//! Sizes are enforced with XFS project quotas where the filesystem allows it; everywhere else
//! [`VolumeManager::usage`] measures what a volume holds and reports over-use.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, PoisonError};
use tracing::{debug, error, info, warn};

const MIB: u64 = 1 << 20;
/// The reservation ledger, one per disk. Member names cannot start with a dot, so it never
/// collides with a volume directory.
const LEDGER: &str = ".mofang-volumes.json";
const LEDGER_TMP: &str = ".mofang-volumes.json.tmp";
const LEDGER_VERSION: u32 = 1;
/// Longest member name: a DNS label, which is also what the member id allows.
const MAX_MEMBER_LEN: usize = 63;

/// Errors of the volume manager.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The reservation does not fit in the unreserved capacity of the best disk for it.
    #[error(
        "disk {} ({class}): {} MiB asked, {} MiB of {} MiB already reserved",
        disk.display(), mib(*asked), mib(*reserved), mib(*capacity)
    )]
    OverReserved {
        /// The disk with the most unreserved space among those of the class.
        disk: PathBuf,
        /// Its class.
        class: String,
        /// Bytes asked for.
        asked: u64,
        /// Bytes already reserved on the disk (by other volumes).
        reserved: u64,
        /// Bytes the disk offers for reservations.
        capacity: u64,
    },
    /// No configured disk has the class asked for.
    #[error("no disk of class {class:?} on this node (classes here: {})", known.join(", "))]
    NoDiskOfClass {
        /// The class asked for.
        class: String,
        /// The classes this node has, sorted.
        known: Vec<String>,
    },
    /// The agent config declares no data disks, so no volume can be placed.
    #[error("no data disks configured")]
    NoDisks,
    /// The member name is not a safe directory name (only `[a-z0-9-]`, 1 to 63 characters).
    #[error(
        "member name {0:?} cannot name a volume (allowed: a-z, 0-9 and '-', 1 to 63 characters)"
    )]
    InvalidMember(String),
    /// The member has no volume on this node.
    #[error("member {0} has no volume")]
    UnknownVolume(String),
    /// Two configured disks are the same directory, or one lies inside the other.
    #[error("disks {} and {} overlap (same directory, or one inside the other)", a.display(), b.display())]
    OverlappingDisks {
        /// The first disk, as configured.
        a: PathBuf,
        /// The second disk, as configured.
        b: PathBuf,
    },
    /// The same member has reservations in the ledgers of two disks.
    #[error("member {member} has reservations on both {} and {}", a.display(), b.display())]
    DuplicateVolume {
        /// The member.
        member: String,
        /// One disk holding a reservation for it.
        a: PathBuf,
        /// The other disk.
        b: PathBuf,
    },
    /// A ledger file is not valid JSON for the ledger format.
    #[error("reservation ledger {} is unreadable", path.display())]
    LedgerParse {
        /// The ledger file.
        path: PathBuf,
        /// What the JSON parser said.
        #[source]
        source: serde_json::Error,
    },
    /// A ledger file parses but cannot be used (unknown version, unsafe member name).
    #[error("reservation ledger {}: {reason}", path.display())]
    LedgerInvalid {
        /// The ledger file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The size of a disk's filesystem could not be measured (and no `capacity_mib` was given).
    #[error("cannot measure the filesystem of {}: {reason}", path.display())]
    FsStat {
        /// The disk directory.
        path: PathBuf,
        /// Why `df` did not answer.
        reason: String,
    },
    /// Something other than a directory (a file, a symlink) sits where a volume directory belongs.
    #[error("volume path {} exists and is not a directory", path.display())]
    NotADirectory {
        /// The volume path.
        path: PathBuf,
    },
    /// A file operation failed.
    #[error("volume I/O on {}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Result of volume operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn mib(bytes: u64) -> u64 {
    bytes / MIB
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

fn default_class() -> String {
    "ssd".into()
}

/// A data disk from the agent config.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Directory on the data disk where member volumes are created.
    pub path: PathBuf,
    /// Disk class, e.g. "ssd" or "hdd". Default "ssd".
    #[serde(default = "default_class")]
    pub class: String,
    /// Capacity offered for reservations in MiB. Default: the filesystem's size.
    #[serde(default)]
    pub capacity_mib: Option<u64>,
}

/// A member's volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// The member it belongs to.
    pub member: String,
    /// The directory mounted into the container: `<disk>/<member>`.
    pub path: PathBuf,
    /// The disk directory it lives on.
    pub disk: PathBuf,
    /// The disk's class.
    pub class: String,
    /// Bytes reserved for it.
    pub size_bytes: u64,
    /// The size is enforced by an XFS project quota (otherwise only measured).
    pub quota_enforced: bool,
}

impl Volume {
    /// Whether the directory holds nothing yet (a fresh volume, or one a rebuild or a failed
    /// copy emptied); an unreadable one counts as holding data, which is never wiped.
    pub fn is_fresh(&self) -> bool {
        std::fs::read_dir(&self.path)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false)
    }
}

/// One disk as reported to the scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskReport {
    /// Disk directory.
    pub path: PathBuf,
    /// Class.
    pub class: String,
    /// Bytes offered for reservations.
    pub capacity_bytes: u64,
    /// Bytes available on the filesystem right now (0 if `df` did not answer).
    pub free_bytes: u64,
    /// Bytes reserved by volumes.
    pub reserved_bytes: u64,
}

/// Measured usage of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeUsage {
    /// Bytes allocated by the volume's files.
    pub used_bytes: u64,
    /// Bytes reserved for it.
    pub size_bytes: u64,
    /// Usage exceeds the reservation.
    pub over: bool,
}

/// The on-disk ledger of one disk.
#[derive(Debug, Serialize, Deserialize)]
struct Ledger {
    /// Format version; a newer agent's ledger is refused rather than misread.
    version: u32,
    /// Reservations by member.
    volumes: BTreeMap<String, Reservation>,
}

/// One member's reservation on a disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Reservation {
    size_bytes: u64,
    /// XFS project id whose hard limit enforces the size, if one was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quota_project: Option<u32>,
}

#[derive(Debug)]
struct Disk {
    cfg: DiskConfig,
    /// Bytes offered for reservations.
    capacity: u64,
    /// Mount point, when the disk is on XFS and project quotas may work.
    xfs_mount: Option<PathBuf>,
    /// A quota command failed on this disk: don't retry (and warn) on every reconcile.
    quota_failed: bool,
    volumes: BTreeMap<String, Reservation>,
}

impl Disk {
    fn reserved(&self) -> u64 {
        self.volumes
            .values()
            .fold(0u64, |sum, r| sum.saturating_add(r.size_bytes))
    }

    fn unreserved(&self) -> u64 {
        self.capacity.saturating_sub(self.reserved())
    }

    fn volume(&self, member: &str, r: &Reservation) -> Volume {
        Volume {
            member: member.to_owned(),
            path: self.cfg.path.join(member),
            disk: self.cfg.path.clone(),
            class: self.cfg.class.clone(),
            size_bytes: r.size_bytes,
            quota_enforced: r.quota_project.is_some(),
        }
    }

    fn over_reserved(&self, asked: u64, reserved: u64) -> Error {
        Error::OverReserved {
            disk: self.cfg.path.clone(),
            class: self.cfg.class.clone(),
            asked,
            reserved,
            capacity: self.capacity,
        }
    }

    /// Loads a disk whose directory exists.
    fn load(cfg: DiskConfig) -> Result<Self> {
        let capacity = match cfg.capacity_mib {
            Some(m) => m.saturating_mul(MIB),
            None => {
                fs_space(&cfg.path)
                    .map_err(|reason| Error::FsStat {
                        path: cfg.path.clone(),
                        reason,
                    })?
                    .0
            }
        };
        let xfs_mount = xfs_mount_of(&cfg.path);
        let volumes = read_ledger(&cfg.path.join(LEDGER))?;
        let reserved: u64 = volumes
            .values()
            .fold(0u64, |s, r| s.saturating_add(r.size_bytes));
        if reserved > capacity {
            // Capacity was lowered in the config below what is already promised. Existing volumes
            // stay (their data is there); new reservations on this disk are refused.
            warn!(disk = %cfg.path.display(), reserved_mib = mib(reserved), capacity_mib = mib(capacity),
                "disk is over-reserved after a config change; no new volumes will fit");
        }
        info!(disk = %cfg.path.display(), class = %cfg.class, capacity_mib = mib(capacity),
            reserved_mib = mib(reserved), volumes = volumes.len(), xfs = xfs_mount.is_some(), "data disk opened");
        Ok(Disk {
            cfg,
            capacity,
            xfs_mount,
            quota_failed: false,
            volumes,
        })
    }

    fn save(&self) -> Result<()> {
        let ledger = Ledger {
            version: LEDGER_VERSION,
            volumes: self.volumes.clone(),
        };
        let path = self.cfg.path.join(LEDGER);
        let data = serde_json::to_vec_pretty(&ledger).map_err(|source| Error::LedgerParse {
            path: path.clone(),
            source,
        })?;
        write_durably(&self.cfg.path, &path, &data)
    }

    /// Sets an XFS project quota on a member's directory; returns the project id on success.
    /// Every failure is a warning: the volume then works unenforced and `usage` reports over-use.
    fn try_quota(&mut self, member: &str, size: u64) -> Option<u32> {
        let mount = self.xfs_mount.clone()?;
        if self.quota_failed {
            return None;
        }
        let disk = self.cfg.path.display().to_string();
        let id = project_id(member);
        if self
            .volumes
            .iter()
            .any(|(m, r)| m != member && r.quota_project == Some(id))
        {
            // Two members in one project would share one limit; measuring is better than that.
            warn!(
                member,
                disk,
                project = id,
                "XFS project id already used by another volume; size not enforced"
            );
            return None;
        }
        let dir = self.cfg.path.join(member);
        // xfs_quota splits its -c command on whitespace itself; there is no quoting to rely on.
        let Some(dir) = dir.to_str().filter(|d| !d.contains(char::is_whitespace)) else {
            warn!(
                member,
                disk, "volume path has whitespace or is not UTF-8; XFS quota not set"
            );
            return None;
        };
        let done = xfs_quota(&mount, &format!("project -s -p {dir} {id}"))
            .and_then(|()| xfs_quota(&mount, &format!("limit -p bhard={size} {id}")));
        match done {
            Ok(()) => {
                info!(member, disk, project = id, size, "XFS project quota set");
                Some(id)
            }
            Err(reason) => {
                self.quota_failed = true;
                warn!(
                    member,
                    disk, reason, "XFS project quota could not be set; usage is measured instead"
                );
                None
            }
        }
    }
}

/// The volume manager: data disks, their reservations and the member directories on them.
///
/// All changes happen under one lock, so two concurrent `ensure` calls can never both take the
/// last free space on a disk. The lock is a std mutex and is never held across an `.await`.
#[derive(Debug)]
pub struct VolumeManager {
    disks: Mutex<Vec<Disk>>,
}

impl VolumeManager {
    /// Opens the manager: creates each disk's `path` if missing (mode 0755) and loads its
    /// reservation ledger from `<path>/.mofang-volumes.json`, so reservations survive restarts.
    ///
    /// Refuses overlapping disks (the same directory twice, or one inside another) and a member
    /// reserved on two disks: either would let a volume be counted twice or escape its disk.
    pub fn open(disks: Vec<DiskConfig>) -> Result<Self> {
        let mut out: Vec<Disk> = Vec::with_capacity(disks.len());
        let mut canon: Vec<PathBuf> = Vec::with_capacity(disks.len());
        for cfg in disks {
            create_disk_dir(&cfg.path)?;
            let real = std::fs::canonicalize(&cfg.path).map_err(io(&cfg.path))?;
            if let Some(i) = canon
                .iter()
                .position(|c| c.starts_with(&real) || real.starts_with(c))
            {
                return Err(Error::OverlappingDisks {
                    a: out[i].cfg.path.clone(),
                    b: cfg.path,
                });
            }
            let disk = Disk::load(cfg)?;
            for member in disk.volumes.keys() {
                if let Some(other) = out.iter().find(|d| d.volumes.contains_key(member)) {
                    return Err(Error::DuplicateVolume {
                        member: member.clone(),
                        a: other.cfg.path.clone(),
                        b: disk.cfg.path.clone(),
                    });
                }
            }
            canon.push(real);
            out.push(disk);
        }
        Ok(VolumeManager {
            disks: Mutex::new(out),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Disk>> {
        // Every change restores memory to match the ledger before returning an error, so the
        // state behind a poisoned lock is still consistent.
        self.disks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserves (or returns the existing) volume for `member`: picks the disk of `class` (any
    /// class if None) with the most unreserved space, records the reservation durably (temp file,
    /// fsync, rename, fsync of the directory) and only then creates `<disk>/<member>` owned by
    /// `uid:gid` with mode 0750. A crash in between leaves a reservation without a directory,
    /// which the next call completes; never a directory nobody accounted for.
    ///
    /// Idempotent. For a member that already has a volume, that volume is returned whatever
    /// `class` says (its data cannot move disks here). A larger `size_bytes` grows the
    /// reservation if it still fits, else [`Error::OverReserved`]; a smaller one keeps the
    /// reservation as it is, since the data already written may need the space.
    pub fn ensure(
        &self,
        member: &str,
        class: Option<&str>,
        size_bytes: u64,
        uid: u32,
        gid: u32,
    ) -> Result<Volume> {
        check_member(member)?;
        let mut disks = self.lock();
        if let Some(d) = disks.iter_mut().find(|d| d.volumes.contains_key(member)) {
            return ensure_existing(d, member, size_bytes, uid, gid);
        }
        let i = pick_disk(&disks, class, size_bytes)?;
        let d = &mut disks[i];
        d.volumes.insert(
            member.to_owned(),
            Reservation {
                size_bytes,
                quota_project: None,
            },
        );
        if let Err(e) = d.save() {
            d.volumes.remove(member);
            return Err(e);
        }
        info!(member, disk = %d.cfg.path.display(), class = %d.cfg.class, size_mib = mib(size_bytes), "volume reserved");
        create_volume_dir(&d.cfg.path.join(member), uid, gid)?;
        set_quota_if_possible(d, member, size_bytes)?;
        match d.volumes.get(member) {
            Some(r) => Ok(d.volume(member, r)),
            None => Err(Error::UnknownVolume(member.to_owned())),
        }
    }

    /// The volume of a member, if it has one.
    pub fn get(&self, member: &str) -> Option<Volume> {
        self.lock()
            .iter()
            .find_map(|d| d.volumes.get(member).map(|r| d.volume(member, r)))
    }

    /// Deletes a member's volume directory, then its reservation. Deleting a member without a
    /// volume is not an error.
    ///
    /// Contract: the CALLER guarantees that the member's container is gone (nothing writes to the
    /// directory any more) and that the member has left the desired state (nobody will want the
    /// data back). This method cannot check either and destroys the data.
    pub fn delete(&self, member: &str) -> Result<()> {
        check_member(member)?;
        let mut disks = self.lock();
        let Some(d) = disks.iter_mut().find(|d| d.volumes.contains_key(member)) else {
            return Ok(());
        };
        let path = d.cfg.path.join(member);
        // remove_dir_all does not follow symlinks, so nothing outside the volume is touched.
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        let Some(r) = d.volumes.remove(member) else {
            return Ok(());
        };
        if let Err(e) = d.save() {
            // The ledger still holds it; keep memory the same so a retry finishes the job.
            d.volumes.insert(member.to_owned(), r);
            return Err(e);
        }
        if let (Some(id), Some(mount)) = (r.quota_project, d.xfs_mount.as_deref()) {
            // Best effort: a stale limit on an unused project id costs nothing.
            if let Err(reason) = xfs_quota(mount, &format!("limit -p bhard=0 {id}")) {
                debug!(
                    member,
                    project = id,
                    reason,
                    "could not clear XFS project limit"
                );
            }
        }
        info!(member, disk = %d.cfg.path.display(), "volume deleted");
        Ok(())
    }

    /// All volumes (for adoption after restart and for deleting volumes of members no longer desired).
    pub fn list(&self) -> Vec<Volume> {
        self.lock()
            .iter()
            .flat_map(|d| d.volumes.iter().map(|(m, r)| d.volume(m, r)))
            .collect()
    }

    /// Per-disk report: path, class, capacity, free bytes (from the filesystem, now) and reserved bytes.
    pub fn disks(&self) -> Vec<DiskReport> {
        // Snapshot first: no filesystem call under the lock.
        let mut reports: Vec<DiskReport> = self
            .lock()
            .iter()
            .map(|d| DiskReport {
                path: d.cfg.path.clone(),
                class: d.cfg.class.clone(),
                capacity_bytes: d.capacity,
                free_bytes: 0,
                reserved_bytes: d.reserved(),
            })
            .collect();
        for r in &mut reports {
            match fs_space(&r.path) {
                Ok((_, free)) => r.free_bytes = free,
                // Heartbeats call this every second; a warning each time would drown the log.
                Err(reason) => {
                    debug!(disk = %r.path.display(), reason, "cannot measure free space")
                }
            }
        }
        reports
    }

    /// Measured usage of a member's volume: bytes allocated (`st_blocks * 512`) by everything
    /// under its directory, without following symlinks, counting hard-linked files once and
    /// staying on the volume's filesystem. Files that disappear during the walk (a database
    /// rotating its logs) are skipped. `over` says whether usage exceeds the reservation.
    pub fn usage(&self, member: &str) -> Result<VolumeUsage> {
        check_member(member)?;
        // The walk can take a while on a big volume; it runs without the lock.
        let v = self
            .get(member)
            .ok_or_else(|| Error::UnknownVolume(member.to_owned()))?;
        let used_bytes = allocated_bytes(&v.path)?;
        Ok(VolumeUsage {
            used_bytes,
            size_bytes: v.size_bytes,
            over: used_bytes > v.size_bytes,
        })
    }
}

/// Refuses names that could escape the disk directory or clash with the ledger: only
/// `[a-z0-9-]`, so no `/`, no `.`/`..` and no leading dot.
fn check_member(member: &str) -> Result<()> {
    let ok = !member.is_empty()
        && member.len() <= MAX_MEMBER_LEN
        && member
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidMember(member.to_owned()))
    }
}

/// Placement of a new volume, a pure function of the disks: among the disks of `class` (all
/// disks if None), the one with the most unreserved space, the first configured on ties.
/// When even that one is too small, its figures make the error.
fn pick_disk(disks: &[Disk], class: Option<&str>, size: u64) -> Result<usize> {
    if disks.is_empty() {
        return Err(Error::NoDisks);
    }
    let mut best: Option<usize> = None;
    for (i, d) in disks.iter().enumerate() {
        if class.is_some_and(|c| d.cfg.class != c) {
            continue;
        }
        if best.is_none_or(|b| d.unreserved() > disks[b].unreserved()) {
            best = Some(i);
        }
    }
    let Some(i) = best else {
        let mut known: Vec<String> = disks.iter().map(|d| d.cfg.class.clone()).collect();
        known.sort();
        known.dedup();
        return Err(Error::NoDiskOfClass {
            class: class.unwrap_or_default().to_owned(),
            known,
        });
    };
    let d = &disks[i];
    if size > d.unreserved() {
        return Err(d.over_reserved(size, d.reserved()));
    }
    Ok(i)
}

/// `ensure` for a member that already has a reservation on `d`.
fn ensure_existing(d: &mut Disk, member: &str, size: u64, uid: u32, gid: u32) -> Result<Volume> {
    let Some(old) = d.volumes.get(member).cloned() else {
        return Err(Error::UnknownVolume(member.to_owned()));
    };
    if size > old.size_bytes {
        let others = d.reserved().saturating_sub(old.size_bytes);
        if size > d.capacity.saturating_sub(others) {
            return Err(d.over_reserved(size, others));
        }
        d.volumes.insert(
            member.to_owned(),
            Reservation {
                size_bytes: size,
                ..old.clone()
            },
        );
        if let Err(e) = d.save() {
            d.volumes.insert(member.to_owned(), old);
            return Err(e);
        }
        info!(member, disk = %d.cfg.path.display(), from_mib = mib(old.size_bytes), to_mib = mib(size), "volume grown");
        if let (Some(id), Some(mount)) = (old.quota_project, d.xfs_mount.as_deref()) {
            if let Err(reason) = xfs_quota(mount, &format!("limit -p bhard={size} {id}")) {
                // The old, smaller limit still applies: the database will hit ENOSPC below its
                // reservation until an operator raises it.
                error!(
                    member,
                    project = id,
                    size,
                    reason,
                    "XFS quota not raised after growing the volume"
                );
            }
        }
    } else if size < old.size_bytes {
        debug!(
            member,
            asked = size,
            reserved = old.size_bytes,
            "volume not shrunk"
        );
    }
    // Completes a crash between recording the reservation and creating the directory, and
    // puts back owner and mode if something changed them.
    create_volume_dir(&d.cfg.path.join(member), uid, gid)?;
    if old.quota_project.is_none() {
        set_quota_if_possible(d, member, size.max(old.size_bytes))?;
    }
    match d.volumes.get(member) {
        Some(r) => Ok(d.volume(member, r)),
        None => Err(Error::UnknownVolume(member.to_owned())),
    }
}

/// Tries an XFS quota for a reserved volume and records it in the ledger when it took.
fn set_quota_if_possible(d: &mut Disk, member: &str, size: u64) -> Result<()> {
    let Some(id) = d.try_quota(member, size) else {
        return Ok(());
    };
    let Some(r) = d.volumes.get_mut(member) else {
        return Ok(());
    };
    r.quota_project = Some(id);
    if let Err(e) = d.save() {
        // The limit is set but not recorded; report the volume as unenforced, which is the
        // cautious reading (usage is still measured).
        if let Some(r) = d.volumes.get_mut(member) {
            r.quota_project = None;
        }
        return Err(e);
    }
    Ok(())
}

/// Creates a disk directory (mode 0755) if it is missing.
fn create_disk_dir(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::NotADirectory {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(path)
                .map_err(io(path))?;
            // The umask may have narrowed the mode; volumes must be reachable by their owners.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(io(path))
        }
        Err(e) => Err(io(path)(e)),
    }
}

/// Creates (or repairs) a volume directory: a real directory, owned by `uid:gid`, mode 0750.
fn create_volume_dir(path: &Path, uid: u32, gid: u32) -> Result<()> {
    match DirBuilder::new().mode(0o750).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(path)(e)),
    }
    // symlink_metadata: a symlink planted at the volume path must not redirect the chown, the
    // chmod or the container's mount to another directory.
    let meta = std::fs::symlink_metadata(path).map_err(io(path))?;
    if !meta.is_dir() {
        return Err(Error::NotADirectory {
            path: path.to_owned(),
        });
    }
    if meta.uid() != uid || meta.gid() != gid {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(io(path))?;
    }
    if meta.permissions().mode() & 0o7777 != 0o750 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o750)).map_err(io(path))?;
    }
    Ok(())
}

fn read_ledger(path: &Path) -> Result<BTreeMap<String, Reservation>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(io(path)(e)),
    };
    let ledger: Ledger = serde_json::from_slice(&bytes).map_err(|source| Error::LedgerParse {
        path: path.to_owned(),
        source,
    })?;
    if ledger.version != LEDGER_VERSION {
        return Err(Error::LedgerInvalid {
            path: path.to_owned(),
            reason: format!(
                "version {}, this agent reads version {LEDGER_VERSION}",
                ledger.version
            ),
        });
    }
    if let Some(bad) = ledger.volumes.keys().find(|m| check_member(m).is_err()) {
        return Err(Error::LedgerInvalid {
            path: path.to_owned(),
            reason: format!("unsafe member name {bad:?}"),
        });
    }
    Ok(ledger.volumes)
}

/// Replaces `path` with `data` so that after a crash it holds either the old or the new
/// content, and the new content once this returns: write a temp file, fsync it, rename it over
/// the ledger, fsync the directory (rename(2) is atomic but only durable once the directory is).
fn write_durably(dir: &Path, path: &Path, data: &[u8]) -> Result<()> {
    let tmp = dir.join(LEDGER_TMP);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(data).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io(path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Bytes allocated under `root` (see [`VolumeManager::usage`]).
fn allocated_bytes(root: &Path) -> Result<u64> {
    let top = std::fs::symlink_metadata(root).map_err(io(root))?;
    let dev = top.dev();
    let mut total = top.blocks().saturating_mul(512);
    let mut linked: HashSet<u64> = HashSet::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&dir)(e)),
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&dir)(e)),
            };
            let path = entry.path();
            // symlink_metadata: a symlink counts as itself, never as what it points to.
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&path)(e)),
            };
            if meta.dev() != dev {
                // Something mounted inside the volume is not the volume's usage.
                continue;
            }
            if !meta.is_dir() && meta.nlink() > 1 && !linked.insert(meta.ino()) {
                continue;
            }
            total = total.saturating_add(meta.blocks().saturating_mul(512));
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(total)
}

/// Runs a coreutils command on `path` in the C locale and returns its stdout.
fn run_on(program: &str, args: &[&str], path: &Path) -> Result<String, String> {
    let out = Command::new(program)
        .env("LC_ALL", "C")
        .args(args)
        .arg("--")
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Size and available bytes of the filesystem holding `path`, from statvfs(2) (the metrics'
/// reader, [`crate::metrics::procfs::fs_size_avail`]). Heartbeats ask every second: a system
/// call, not a `df` child process each time.
fn fs_space(path: &Path) -> Result<(u64, u64), String> {
    crate::metrics::procfs::fs_size_avail(path)
        .ok_or_else(|| format!("statvfs {} failed", path.display()))
}

/// The mount point of `path` if its filesystem is XFS (the only one whose project quotas we use).
fn xfs_mount_of(path: &Path) -> Option<PathBuf> {
    let fs = run_on("stat", &["-f", "-c", "%T"], path).ok()?;
    if fs.trim() != "xfs" {
        return None;
    }
    let out = run_on("df", &["--output=target"], path).ok()?;
    out.lines().nth(1).map(|l| PathBuf::from(l.trim_end()))
}

/// Runs one `xfs_quota` expert command against a mount point.
fn xfs_quota(mount: &Path, cmd: &str) -> Result<(), String> {
    let out = Command::new("xfs_quota")
        .env("LC_ALL", "C")
        .args(["-x", "-c", cmd])
        .arg(mount)
        .output()
        .map_err(|e| format!("cannot run xfs_quota: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // xfs_quota reports some failures (quotas not enabled on the mount, EPERM) on stderr while
    // still exiting 0, so any stderr output counts as failure.
    if !out.status.success() || !stderr.trim().is_empty() {
        return Err(format!(
            "xfs_quota -c {cmd:?} {}: {}",
            out.status,
            stderr.trim()
        ));
    }
    Ok(())
}

/// A stable XFS project id for a member, in 1..2^31: FNV-1a of the name, so the same member
/// gets the same id after a restart without storing anything else.
fn project_id(member: &str) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in member.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // 2^31 - 1 values, shifted past 0 (project 0 is "no project").
    u32::try_from(h % 0x7fff_ffff).map_or(1, |v| v + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn owner(dir: &Path) -> (u32, u32) {
        let m = std::fs::metadata(dir).unwrap();
        (m.uid(), m.gid())
    }

    fn disk(path: &Path, class: &str, mib: u64) -> DiskConfig {
        DiskConfig {
            path: path.to_owned(),
            class: class.into(),
            capacity_mib: Some(mib),
        }
    }

    #[test]
    fn reservation_is_persisted_and_reloaded() {
        let t = tempfile::tempdir().unwrap();
        let (u, g) = owner(t.path());
        let d = t.path().join("data").join("ssd0");
        let vm = VolumeManager::open(vec![disk(&d, "ssd", 1024)]).unwrap();
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o755
        );
        let v = vm.ensure("orders-0", Some("ssd"), 600 * MIB, u, g).unwrap();
        assert_eq!(v.path, d.join("orders-0"));
        assert_eq!(
            (v.disk.as_path(), v.class.as_str(), v.size_bytes),
            (d.as_path(), "ssd", 600 * MIB)
        );
        assert!(!v.quota_enforced, "tmp is not XFS");
        let meta = std::fs::symlink_metadata(&v.path).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o750);
        assert_eq!((meta.uid(), meta.gid()), (u, g));
        assert!(d.join(LEDGER).is_file());
        assert!(!d.join(LEDGER_TMP).exists(), "temp file renamed away");
        drop(vm);

        let vm = VolumeManager::open(vec![disk(&d, "ssd", 1024)]).unwrap();
        assert_eq!(vm.get("orders-0"), Some(v.clone()));
        assert_eq!(vm.list(), vec![v]);
        let r = &vm.disks()[0];
        assert_eq!(
            (r.capacity_bytes, r.reserved_bytes),
            (1024 * MIB, 600 * MIB)
        );
        assert!(r.free_bytes > 0, "df answered");
        let e = vm.ensure("orders-1", None, 500 * MIB, u, g).unwrap_err();
        assert!(
            matches!(e, Error::OverReserved { .. }),
            "reloaded reservation still counts: {e}"
        );
    }

    #[test]
    fn over_reservation_is_refused_with_figures() {
        let t = tempfile::tempdir().unwrap();
        let (u, g) = owner(t.path());
        let d = t.path().join("ssd0");
        let vm = VolumeManager::open(vec![disk(&d, "ssd", 4096)]).unwrap();
        vm.ensure("a-0", None, 3500 * MIB, u, g).unwrap();
        let e = vm.ensure("b-0", Some("ssd"), 1024 * MIB, u, g).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "disk {} (ssd): 1024 MiB asked, 3500 MiB of 4096 MiB already reserved",
                d.display()
            )
        );
        assert!(vm.get("b-0").is_none());
        assert!(!d.join("b-0").exists(), "no directory for a refused volume");
        // Exactly what is left still fits.
        vm.ensure("c-0", None, 596 * MIB, u, g).unwrap();
        assert!(matches!(
            vm.ensure("d-0", None, 1, u, g),
            Err(Error::OverReserved { .. })
        ));
    }

    #[test]
    fn ensure_is_idempotent_and_grows_only_within_capacity() {
        let t = tempfile::tempdir().unwrap();
        let (u, g) = owner(t.path());
        let d = t.path().join("ssd0");
        let vm = VolumeManager::open(vec![disk(&d, "ssd", 1000)]).unwrap();
        let v = vm.ensure("a-0", Some("ssd"), 100 * MIB, u, g).unwrap();
        std::fs::write(v.path.join("keep"), b"data").unwrap();
        assert_eq!(vm.ensure("a-0", Some("ssd"), 100 * MIB, u, g).unwrap(), v);
        assert_eq!(
            vm.ensure("a-0", Some("hdd"), 100 * MIB, u, g).unwrap(),
            v,
            "existing volume wins over class"
        );
        assert!(v.path.join("keep").exists(), "data untouched");
        vm.ensure("b-0", None, 500 * MIB, u, g).unwrap();

        assert_eq!(
            vm.ensure("a-0", None, 500 * MIB, u, g).unwrap().size_bytes,
            500 * MIB
        );
        let e = vm.ensure("a-0", None, 501 * MIB, u, g).unwrap_err();
        assert!(
            e.to_string().contains("501 MiB asked, 500 MiB of 1000 MiB"),
            "{e}"
        );
        assert_eq!(
            vm.get("a-0").unwrap().size_bytes,
            500 * MIB,
            "failed growth changed nothing"
        );
        assert_eq!(
            vm.ensure("a-0", None, 10 * MIB, u, g).unwrap().size_bytes,
            500 * MIB,
            "never shrunk"
        );

        // A directory removed behind our back (or never created before a crash) comes back.
        std::fs::remove_dir_all(&v.path).unwrap();
        vm.ensure("a-0", None, 500 * MIB, u, g).unwrap();
        assert!(v.path.is_dir());
        drop(vm);
        let vm = VolumeManager::open(vec![disk(&d, "ssd", 1000)]).unwrap();
        assert_eq!(
            vm.get("a-0").unwrap().size_bytes,
            500 * MIB,
            "growth was persisted"
        );
    }

    #[test]
    fn class_selection_and_missing_class() {
        let t = tempfile::tempdir().unwrap();
        let (u, g) = owner(t.path());
        let vm = VolumeManager::open(vec![
            disk(&t.path().join("s0"), "ssd", 100),
            disk(&t.path().join("s1"), "ssd", 300),
            disk(&t.path().join("h0"), "hdd", 1000),
        ])
        .unwrap();
        assert_eq!(
            vm.ensure("h-0", Some("hdd"), 10 * MIB, u, g).unwrap().disk,
            t.path().join("h0")
        );
        // Most unreserved space among the class: s1 (300) then, after 250 there, s0 (100 > 50).
        assert_eq!(
            vm.ensure("a-0", Some("ssd"), 250 * MIB, u, g).unwrap().disk,
            t.path().join("s1")
        );
        assert_eq!(
            vm.ensure("b-0", Some("ssd"), 10 * MIB, u, g).unwrap().disk,
            t.path().join("s0")
        );
        // No class: any disk, the emptiest is the hdd.
        assert_eq!(vm.ensure("c-0", None, 10 * MIB, u, g).unwrap().class, "hdd");
        // Too big for every ssd: the error names the best candidate, s0 with 90 MiB left.
        let e = vm.ensure("d-0", Some("ssd"), 200 * MIB, u, g).unwrap_err();
        match &e {
            Error::OverReserved {
                disk,
                class,
                asked,
                reserved,
                capacity,
            } => {
                assert_eq!((disk, class.as_str()), (&t.path().join("s0"), "ssd"));
                assert_eq!(
                    (*asked, *reserved, *capacity),
                    (200 * MIB, 10 * MIB, 100 * MIB)
                );
            }
            other => panic!("expected OverReserved, got {other}"),
        }
        match vm.ensure("e-0", Some("nvme"), MIB, u, g).unwrap_err() {
            Error::NoDiskOfClass { class, known } => {
                assert_eq!(class, "nvme");
                assert_eq!(known, vec!["hdd".to_owned(), "ssd".to_owned()]);
            }
            other => panic!("expected NoDiskOfClass, got {other}"),
        }
        let empty = VolumeManager::open(vec![]).unwrap();
        assert!(matches!(
            empty.ensure("a-0", None, MIB, u, g),
            Err(Error::NoDisks)
        ));
        assert!(empty.disks().is_empty());
    }

    #[test]
    fn delete_removes_directory_and_frees_capacity() {
        let t = tempfile::tempdir().unwrap();
        let (u, g) = owner(t.path());
        let d = t.path().join("ssd0");
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("precious"), b"x").unwrap();
        let vm = VolumeManager::open(vec![disk(&d, "ssd", 100)]).unwrap();
        let v = vm.ensure("a-0", None, 100 * MIB, u, g).unwrap();
        std::fs::create_dir(v.path.join("sub")).unwrap();
        std::fs::write(v.path.join("sub").join("f"), b"data").unwrap();
        std::os::unix::fs::symlink(&outside, v.path.join("link")).unwrap();
        assert!(vm.ensure("b-0", None, MIB, u, g).is_err(), "disk full");

        vm.delete("a-0").unwrap();
        assert!(!v.path.exists());
        assert!(
            outside.join("precious").exists(),
            "symlink target untouched"
        );
        assert!(vm.get("a-0").is_none());
        assert_eq!(vm.disks()[0].reserved_bytes, 0);
        vm.delete("a-0").unwrap();
        vm.delete("never-there").unwrap();
        vm.ensure("b-0", None, 100 * MIB, u, g).unwrap();
        drop(vm);
        let vm = VolumeManager::open(vec![disk(&d, "ssd", 100)]).unwrap();
        assert!(vm.get("a-0").is_none(), "deletion persisted");
        assert_eq!(vm.list().len(), 1);
    }

    #[test]
    fn unsafe_member_names_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let (u, g) = owner(t.path());
        let d = t.path().join("ssd0");
        let vm = VolumeManager::open(vec![disk(&d, "ssd", 100)]).unwrap();
        let long = "a".repeat(64);
        for bad in [
            "../x",
            "",
            "A",
            "a/b",
            ".",
            "..",
            ".mofang-volumes.json",
            "a b",
            "é",
            long.as_str(),
        ] {
            assert!(
                matches!(
                    vm.ensure(bad, None, MIB, u, g),
                    Err(Error::InvalidMember(_))
                ),
                "{bad:?}"
            );
            assert!(
                matches!(vm.delete(bad), Err(Error::InvalidMember(_))),
                "{bad:?}"
            );
            assert!(
                matches!(vm.usage(bad), Err(Error::InvalidMember(_))),
                "{bad:?}"
            );
        }
        assert!(!t.path().join("x").exists());
        assert!(vm.list().is_empty());
        vm.ensure(&"a".repeat(63), None, MIB, u, g).unwrap();
    }

    #[test]
    fn usage_measures_files_and_flags_over_use() {
        let t = tempfile::tempdir().unwrap();
        let (u, g) = owner(t.path());
        let vm = VolumeManager::open(vec![disk(&t.path().join("ssd0"), "ssd", 100)]).unwrap();
        let v = vm.ensure("a-0", None, 256 * 1024, u, g).unwrap();
        let empty = vm.usage("a-0").unwrap();
        assert_eq!(empty.size_bytes, 256 * 1024);
        assert!(!empty.over, "{empty:?}");

        std::fs::create_dir(v.path.join("sub")).unwrap();
        std::fs::write(v.path.join("sub").join("data"), vec![1u8; 512 * 1024]).unwrap();
        std::fs::hard_link(v.path.join("sub").join("data"), v.path.join("again")).unwrap();
        // A symlink to a big file elsewhere must count as the link, not the target.
        let big = t.path().join("big");
        std::fs::write(&big, vec![1u8; 4 << 20]).unwrap();
        std::os::unix::fs::symlink(&big, v.path.join("big-link")).unwrap();

        let usage = vm.usage("a-0").unwrap();
        assert!(usage.used_bytes >= 512 * 1024, "{usage:?}");
        assert!(
            usage.used_bytes < 1024 * 1024,
            "hard link counted once, symlink not followed: {usage:?}"
        );
        assert!(usage.over, "{usage:?}");
        assert!(matches!(vm.usage("b-0"), Err(Error::UnknownVolume(_))));
    }

    #[test]
    fn concurrent_reservations_never_over_reserve() {
        let t = tempfile::tempdir().unwrap();
        let (u, g) = owner(t.path());
        let vm =
            Arc::new(VolumeManager::open(vec![disk(&t.path().join("ssd0"), "ssd", 1024)]).unwrap());
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let vm = vm.clone();
                std::thread::spawn(move || {
                    vm.ensure(&format!("m-{i}"), None, 200 * MIB, u, g).is_ok()
                })
            })
            .collect();
        let won = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(won, 5);
        assert_eq!(vm.disks()[0].reserved_bytes, 1000 * MIB);
    }

    #[test]
    fn open_refuses_bad_ledgers_and_overlapping_disks() {
        let t = tempfile::tempdir().unwrap();
        let (u, g) = owner(t.path());
        let a = t.path().join("a");
        let b = t.path().join("b");
        let vm = VolumeManager::open(vec![disk(&a, "ssd", 100)]).unwrap();
        vm.ensure("m-0", None, MIB, u, g).unwrap();
        drop(vm);

        assert!(matches!(
            VolumeManager::open(vec![disk(&a, "ssd", 100), disk(&a.join("x"), "ssd", 100)]),
            Err(Error::OverlappingDisks { .. })
        ));
        assert!(matches!(
            VolumeManager::open(vec![
                disk(&a, "ssd", 100),
                disk(&t.path().join("b/../a"), "hdd", 100)
            ]),
            Err(Error::OverlappingDisks { .. })
        ));

        std::fs::create_dir_all(&b).unwrap();
        std::fs::copy(a.join(LEDGER), b.join(LEDGER)).unwrap();
        let e = VolumeManager::open(vec![disk(&a, "ssd", 100), disk(&b, "ssd", 100)]).unwrap_err();
        assert!(
            matches!(e, Error::DuplicateVolume { ref member, .. } if member == "m-0"),
            "{e}"
        );

        std::fs::write(b.join(LEDGER), b"{not json").unwrap();
        let e = VolumeManager::open(vec![disk(&b, "ssd", 100)]).unwrap_err();
        assert!(
            matches!(e, Error::LedgerParse { .. }) && e.to_string().contains(LEDGER),
            "{e}"
        );

        std::fs::write(
            b.join(LEDGER),
            br#"{"version":1,"volumes":{"../etc":{"size_bytes":1}}}"#,
        )
        .unwrap();
        assert!(matches!(
            VolumeManager::open(vec![disk(&b, "ssd", 100)]),
            Err(Error::LedgerInvalid { .. })
        ));
        std::fs::write(b.join(LEDGER), br#"{"version":2,"volumes":{}}"#).unwrap();
        assert!(matches!(
            VolumeManager::open(vec![disk(&b, "ssd", 100)]),
            Err(Error::LedgerInvalid { .. })
        ));
    }

    #[test]
    fn symlink_at_volume_path_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let (u, g) = owner(t.path());
        let d = t.path().join("ssd0");
        let elsewhere = t.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let vm = VolumeManager::open(vec![disk(&d, "ssd", 100)]).unwrap();
        std::os::unix::fs::symlink(&elsewhere, d.join("a-0")).unwrap();
        assert!(matches!(
            vm.ensure("a-0", None, MIB, u, g),
            Err(Error::NotADirectory { .. })
        ));
        assert_ne!(
            std::fs::metadata(&elsewhere).unwrap().permissions().mode() & 0o777,
            0o750
        );
    }

    /// statvfs gives what `df -B1` says: the same size, and free space within what other
    /// writers on this machine can change between the two reads.
    #[test]
    fn fs_space_matches_df() {
        let t = tempfile::tempdir().unwrap();
        let (size, avail) = fs_space(t.path()).unwrap();
        let out = run_on("df", &["-B1", "--output=size,avail"], t.path()).unwrap();
        let nums: Vec<u64> = out
            .lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .map(|w| w.parse().unwrap())
            .collect();
        assert_eq!(size, nums[0], "{out}");
        assert!(avail.abs_diff(nums[1]) < 256 << 20, "{avail} vs {out}");
        assert!(fs_space(&t.path().join("missing")).is_err());
    }

    #[test]
    fn capacity_defaults_to_filesystem_size() {
        let t = tempfile::tempdir().unwrap();
        let cfg = DiskConfig {
            path: t.path().join("d"),
            class: default_class(),
            capacity_mib: None,
        };
        let vm = VolumeManager::open(vec![cfg]).unwrap();
        let r = &vm.disks()[0];
        assert!(
            r.capacity_bytes >= r.free_bytes && r.capacity_bytes > 0,
            "{r:?}"
        );
    }

    #[test]
    fn disk_config_defaults_and_unknown_fields() {
        let c: DiskConfig = serde_json::from_str(r#"{"path":"/data/ssd0"}"#).unwrap();
        assert_eq!(
            c,
            DiskConfig {
                path: "/data/ssd0".into(),
                class: "ssd".into(),
                capacity_mib: None
            }
        );
        assert!(serde_json::from_str::<DiskConfig>(r#"{"path":"/d","size":1}"#).is_err());
    }

    #[test]
    fn project_ids_are_stable_and_in_range() {
        assert_eq!(project_id("orders-0"), project_id("orders-0"));
        assert_ne!(project_id("orders-0"), project_id("orders-1"));
        for m in [
            "a",
            "orders-0",
            "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
        ] {
            let id = project_id(m);
            assert!((1..(1u32 << 31)).contains(&id), "{m}: {id}");
        }
    }
}

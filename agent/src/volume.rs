//! Local volumes: one directory per member on a data disk declared in the agent config, with
//! a size reservation recorded durably on that disk. A disk is never over-reserved.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use tracing::warn;

const MIB: u64 = 1 << 20;
const LEDGER: &str = ".mofang-volumes.json";

/// Errors of the volume manager.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The reservation would exceed the disk's capacity.
    #[error("disk {} ({class}): {} MiB asked, {} MiB of {} MiB already reserved", disk.display(), asked / MIB, reserved / MIB, capacity / MIB)]
    OverReserved {
        /// The best candidate disk.
        disk: PathBuf,
        /// Its class.
        class: String,
        /// Bytes asked.
        asked: u64,
        /// Bytes already reserved.
        reserved: u64,
        /// Capacity in bytes.
        capacity: u64,
    },
    /// No disk of the class asked for exists on this node.
    #[error("no disk of class '{class}' on this node (classes: {})", known.join(", "))]
    NoDiskOfClass {
        /// Class asked for.
        class: String,
        /// Classes this node has.
        known: Vec<String>,
    },
    /// The member name is not a safe directory name.
    #[error("member name '{0}' is not a valid volume name")]
    InvalidMember(String),
    /// A file operation failed.
    #[error("volume I/O on {}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Result of volume operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_owned(), source }
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Volume {
    /// Member id.
    pub member: String,
    /// The directory mounted into the container.
    pub path: PathBuf,
    /// The disk it lives on.
    pub disk: PathBuf,
    /// The disk's class.
    pub class: String,
    /// Reserved bytes.
    pub size_bytes: u64,
    /// The size is enforced by an XFS project quota.
    pub quota_enforced: bool,
}

/// Per-disk report for heartbeats and placement.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskReport {
    /// Disk directory.
    pub path: PathBuf,
    /// Class.
    pub class: String,
    /// Capacity offered (bytes).
    pub capacity_bytes: u64,
    /// Free bytes on the filesystem.
    pub free_bytes: u64,
    /// Bytes reserved by volumes.
    pub reserved_bytes: u64,
}

/// Measured usage of a volume.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VolumeUsage {
    /// Bytes used (allocated blocks).
    pub used_bytes: u64,
    /// Bytes reserved.
    pub size_bytes: u64,
    /// Usage exceeds the reservation.
    pub over: bool,
}

#[derive(Debug)]
struct Disk {
    cfg: DiskConfig,
    capacity: u64,
    volumes: BTreeMap<String, Volume>,
}

impl Disk {
    fn reserved(&self) -> u64 {
        self.volumes.values().map(|v| v.size_bytes).sum()
    }

    fn save(&self) -> Result<()> {
        let p = self.cfg.path.join(LEDGER);
        let data = serde_json::to_vec_pretty(&self.volumes)
            .map_err(|e| Error::Io { path: p.clone(), source: std::io::Error::other(e) })?;
        crate::state::write_atomic(&p, &data, 0o600).map_err(|e| match e {
            crate::state::Error::Io { path, source } => Error::Io { path, source },
            other => Error::Io { path: p.clone(), source: std::io::Error::other(other.to_string()) },
        })
    }
}

/// Size and free bytes of the filesystem holding `path` (via `df`: no unsafe statvfs).
fn fs_size(path: &Path) -> Option<(u64, u64)> {
    let out = Command::new("df").args(["-B1", "--output=size,avail"]).arg(path).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut nums = text.lines().nth(1)?.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((nums.next()??, nums.next()??))
}

fn valid_member(m: &str) -> bool {
    !m.is_empty()
        && m.len() <= 63
        && m.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The volume manager: disks, reservations, member directories.
#[derive(Debug)]
pub struct VolumeManager {
    disks: Mutex<Vec<Disk>>,
}

impl VolumeManager {
    /// Opens the manager: creates disk directories if missing and loads each disk's ledger.
    pub fn open(disks: Vec<DiskConfig>) -> Result<Self> {
        let mut out = Vec::with_capacity(disks.len());
        for cfg in disks {
            std::fs::create_dir_all(&cfg.path).map_err(io(&cfg.path))?;
            let capacity = match cfg.capacity_mib {
                Some(m) => m * MIB,
                None => fs_size(&cfg.path).map(|(s, _)| s).unwrap_or(0),
            };
            let ledger = cfg.path.join(LEDGER);
            let volumes = match std::fs::read(&ledger) {
                Ok(b) => serde_json::from_slice(&b)
                    .map_err(|e| Error::Io { path: ledger.clone(), source: std::io::Error::other(e) })?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
                Err(e) => return Err(io(&ledger)(e)),
            };
            out.push(Disk { cfg, capacity, volumes });
        }
        Ok(VolumeManager { disks: Mutex::new(out) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Disk>> {
        self.disks.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reserves (or returns the existing) volume for `member` on a disk of `class` (any if
    /// None), the one with the most unreserved space. The reservation is on disk before the
    /// call returns.
    pub fn ensure(&self, member: &str, class: Option<&str>, size_bytes: u64, uid: u32, gid: u32) -> Result<Volume> {
        if !valid_member(member) {
            return Err(Error::InvalidMember(member.to_owned()));
        }
        let mut disks = self.lock();
        if let Some(d) = disks.iter_mut().find(|d| d.volumes.contains_key(member)) {
            let reserved_others = d.reserved() - d.volumes[member].size_bytes;
            let current = d.volumes[member].size_bytes;
            if size_bytes > current {
                if reserved_others + size_bytes > d.capacity {
                    return Err(Error::OverReserved {
                        disk: d.cfg.path.clone(),
                        class: d.cfg.class.clone(),
                        asked: size_bytes,
                        reserved: reserved_others,
                        capacity: d.capacity,
                    });
                }
                if let Some(v) = d.volumes.get_mut(member) {
                    v.size_bytes = size_bytes;
                }
                d.save()?;
            }
            let v = d.volumes[member].clone();
            ensure_dir(&v.path, uid, gid)?;
            return Ok(v);
        }
        let candidates: Vec<usize> =
            (0..disks.len()).filter(|&i| class.is_none_or(|c| disks[i].cfg.class == c)).collect();
        if candidates.is_empty() {
            let mut known: Vec<String> = disks.iter().map(|d| d.cfg.class.clone()).collect();
            known.dedup();
            return Err(Error::NoDiskOfClass { class: class.unwrap_or("").to_owned(), known });
        }
        let best = candidates
            .into_iter()
            .max_by_key(|&i| disks[i].capacity.saturating_sub(disks[i].reserved()))
            .unwrap_or(0);
        let d = &mut disks[best];
        let reserved = d.reserved();
        if reserved + size_bytes > d.capacity {
            return Err(Error::OverReserved {
                disk: d.cfg.path.clone(),
                class: d.cfg.class.clone(),
                asked: size_bytes,
                reserved,
                capacity: d.capacity,
            });
        }
        let path = d.cfg.path.join(member);
        let v = Volume {
            member: member.to_owned(),
            path: path.clone(),
            disk: d.cfg.path.clone(),
            class: d.cfg.class.clone(),
            size_bytes,
            quota_enforced: false,
        };
        // Record first: a crash after this leaves a reservation without a directory, which
        // the next ensure() completes; never a directory without a reservation.
        d.volumes.insert(member.to_owned(), v.clone());
        if let Err(e) = d.save() {
            d.volumes.remove(member);
            return Err(e);
        }
        ensure_dir(&path, uid, gid)?;
        let quota = try_xfs_quota(&path, member, size_bytes);
        if quota {
            if let Some(v) = d.volumes.get_mut(member) {
                v.quota_enforced = true;
            }
            d.save()?;
        }
        Ok(Volume { quota_enforced: quota, ..v })
    }

    /// The volume of a member, if it has one.
    pub fn get(&self, member: &str) -> Option<Volume> {
        self.lock().iter().find_map(|d| d.volumes.get(member).cloned())
    }

    /// Deletes a member's volume directory and its reservation. The caller guarantees that the
    /// member's container is gone and that the member has left the desired state.
    pub fn delete(&self, member: &str) -> Result<()> {
        if !valid_member(member) {
            return Err(Error::InvalidMember(member.to_owned()));
        }
        let mut disks = self.lock();
        for d in disks.iter_mut() {
            if let Some(v) = d.volumes.get(member).cloned() {
                match std::fs::remove_dir_all(&v.path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&v.path)(e)),
                    _ => {}
                }
                d.volumes.remove(member);
                d.save()?;
            }
        }
        Ok(())
    }

    /// All volumes.
    pub fn list(&self) -> Vec<Volume> {
        self.lock().iter().flat_map(|d| d.volumes.values().cloned()).collect()
    }

    /// Per-disk report.
    pub fn disks(&self) -> Vec<DiskReport> {
        self.lock()
            .iter()
            .map(|d| DiskReport {
                path: d.cfg.path.clone(),
                class: d.cfg.class.clone(),
                capacity_bytes: d.capacity,
                free_bytes: fs_size(&d.cfg.path).map(|(_, f)| f).unwrap_or(0),
                reserved_bytes: d.reserved(),
            })
            .collect()
    }

    /// Measured usage (allocated blocks) of a member's volume.
    pub fn usage(&self, member: &str) -> Result<VolumeUsage> {
        let v = self.get(member).ok_or_else(|| Error::InvalidMember(member.to_owned()))?;
        let used = du(&v.path);
        Ok(VolumeUsage { used_bytes: used, size_bytes: v.size_bytes, over: used > v.size_bytes })
    }
}

fn ensure_dir(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::fs::create_dir_all(path).map_err(io(path))?;
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if meta.uid() != uid || meta.gid() != gid {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io(path))?;
    }
    if meta.permissions().mode() & 0o777 != 0o750 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o750)).map_err(io(path))?;
    }
    Ok(())
}

/// Sums allocated bytes below `path` without following symlinks; files that vanish during
/// the walk (a database rotating logs) are skipped.
fn du(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_owned()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        total += meta.blocks() * 512;
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.filter_map(|e| e.ok().map(|e| e.path())));
            }
        }
    }
    total
}

/// Enforces the size with an XFS project quota where the filesystem supports it.
fn try_xfs_quota(path: &Path, member: &str, size: u64) -> bool {
    let fs = Command::new("stat").args(["-f", "-c", "%T"]).arg(path).output();
    let is_xfs = fs.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "xfs");
    if !is_xfs {
        return false;
    }
    let mount = Command::new("df")
        .args(["--output=target"])
        .arg(path)
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().nth(1).map(|s| s.trim().to_owned()));
    let Some(mount) = mount else { return false };
    let id = (crate::engine::server_id(member) % 0x7fff_fff0) + 1;
    let run = |cmd: String| {
        Command::new("xfs_quota").args(["-x", "-c", &cmd, &mount]).output().is_ok_and(|o| o.status.success())
    };
    let ok = run(format!("project -s -p {} {id}", path.display())) && run(format!("limit -p bhard={size} {id}"));
    if !ok {
        warn!(member, path = %path.display(), "XFS project quota could not be set; usage is measured instead");
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(dir: &Path) -> (u32, u32) {
        let m = std::fs::metadata(dir).unwrap();
        (m.uid(), m.gid())
    }

    fn disk(path: &Path, class: &str, mib: u64) -> DiskConfig {
        DiskConfig { path: path.to_owned(), class: class.into(), capacity_mib: Some(mib) }
    }

    #[test]
    fn reservations_persist_and_refuse_over_reservation() {
        let t = tempfile::tempdir().unwrap();
        let (u, g) = ids(t.path());
        let d = t.path().join("ssd0");
        let vm = VolumeManager::open(vec![disk(&d, "ssd", 1024)]).unwrap();
        let v = vm.ensure("a-0", Some("ssd"), 600 * MIB, u, g).unwrap();
        assert!(v.path.is_dir());
        assert_eq!(vm.ensure("a-0", Some("ssd"), 600 * MIB, u, g).unwrap(), v, "idempotent");
        let e = vm.ensure("b-0", None, 500 * MIB, u, g).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("500 MiB asked") && msg.contains("600 MiB of 1024 MiB"), "{msg}");
        assert!(msg.contains(&d.display().to_string()), "{msg}");
        drop(vm);
        let vm = VolumeManager::open(vec![disk(&d, "ssd", 1024)]).unwrap();
        assert_eq!(vm.get("a-0").unwrap().size_bytes, 600 * MIB, "reloaded from the ledger");
        assert_eq!(vm.disks()[0].reserved_bytes, 600 * MIB);
        vm.delete("a-0").unwrap();
        assert!(!v.path.exists());
        vm.ensure("b-0", None, 1000 * MIB, u, g).unwrap();
    }

    #[test]
    fn classes_and_names() {
        let t = tempfile::tempdir().unwrap();
        let (u, g) = ids(t.path());
        let vm = VolumeManager::open(vec![
            disk(&t.path().join("s"), "ssd", 100),
            disk(&t.path().join("h"), "hdd", 100),
        ])
        .unwrap();
        assert_eq!(vm.ensure("x-0", Some("hdd"), MIB, u, g).unwrap().class, "hdd");
        assert!(matches!(vm.ensure("y-0", Some("nvme"), MIB, u, g), Err(Error::NoDiskOfClass { .. })));
        for bad in ["../x", "", "A", "a/b"] {
            assert!(matches!(vm.ensure(bad, None, MIB, u, g), Err(Error::InvalidMember(_))), "{bad}");
        }
    }

    #[test]
    fn usage_flags_over_use() {
        let t = tempfile::tempdir().unwrap();
        let (u, g) = ids(t.path());
        let vm = VolumeManager::open(vec![disk(&t.path().join("s"), "ssd", 100)]).unwrap();
        let v = vm.ensure("z-0", None, 64 * 1024, u, g).unwrap();
        std::fs::write(v.path.join("data"), vec![1u8; 256 * 1024]).unwrap();
        let usage = vm.usage("z-0").unwrap();
        assert!(usage.used_bytes >= 256 * 1024, "{usage:?}");
        assert!(usage.over);
    }
}

//! Engine kinds, roles and resource requests: the words of the desired state.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A database engine Mofang can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// MariaDB (MySQL protocol).
    Mariadb,
    /// Redis.
    Redis,
}

impl EngineKind {
    /// The lower-case name used in labels, APIs and image names.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Mariadb => "mariadb",
            EngineKind::Redis => "redis",
        }
    }

    /// Parses `mariadb` / `redis` (`mysql` is accepted for MariaDB).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "mariadb" | "mysql" => Some(EngineKind::Mariadb),
            "redis" => Some(EngineKind::Redis),
            _ => None,
        }
    }

    /// The versions this build can run, newest first: each from the Debian suite that ships
    /// it (bullseye, bookworm, trixie; `packaging/images/build`).
    pub fn supported_versions(self) -> &'static [&'static str] {
        match self {
            EngineKind::Mariadb => &["11.8", "10.11", "10.5"],
            EngineKind::Redis => &["8.0", "7.0", "6.0"],
        }
    }

    /// The version an instance gets when none is asked, and the one `scripts/setup` builds
    /// the image of for the demo.
    pub fn default_version(self) -> &'static str {
        match self {
            EngineKind::Mariadb => "10.11",
            EngineKind::Redis => "7.0",
        }
    }

    /// Whether an instance on version `from` may be upgraded to `to`, and if not why: only
    /// up, one rung of the ladder at a time (every member, rolling, replicas first: a
    /// replica one version ahead of its primary is what both engines support during an
    /// upgrade; two rungs apart is not, and MariaDB's `mariadb-upgrade` is written for
    /// the next version).
    pub fn upgrade_check(self, from: &str, to: &str) -> Result<(), String> {
        let ladder = self.supported_versions();
        let rung = |v: &str| ladder.iter().position(|l| *l == v);
        let (Some(f), Some(t)) = (rung(from), rung(to)) else {
            return Err(format!(
                "version: {self} {to} is not supported (supported: {})",
                ladder.join(", ")
            ));
        };
        // Newest first: a newer version has the smaller index.
        match f.cmp(&t) {
            std::cmp::Ordering::Equal => Err(format!("version: the instance already runs {self} {to}")),
            std::cmp::Ordering::Less => Err(format!(
                "version: {self} {from} cannot be downgraded to {to} (its data files and system tables are already in {from}'s format)"
            )),
            std::cmp::Ordering::Greater if f - t > 1 => Err(format!(
                "version: {self} {from} to {to} skips {}: upgrade one version at a time ({from} -> {})",
                ladder[t + 1..f].join(", "),
                ladder[f - 1]
            )),
            std::cmp::Ordering::Greater => Ok(()),
        }
    }

    /// The locally built image for a version (see `packaging/images/`).
    pub fn image(self, version: &str) -> String {
        format!("mofang/{}:{}", self.as_str(), version)
    }

    /// The port the server listens on inside its container.
    pub fn port(self) -> u16 {
        match self {
            EngineKind::Mariadb => 3306,
            EngineKind::Redis => 6379,
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Database traffic TLS of an instance (issue 15 point 7; docs/security.md): `off` (plain
/// text only, the default), `optional` (TLS offered beside plain text; MariaDB only, since a
/// Redis port speaks one or the other) or `required` (plain text refused). With `optional` or
/// `required` every member has a server certificate of the cluster CA and replication runs
/// over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DbTls {
    /// Plain text only.
    #[default]
    Off,
    /// TLS offered, plain text accepted.
    Optional,
    /// TLS only.
    Required,
}

impl DbTls {
    /// `off`, `optional` or `required`.
    pub fn as_str(self) -> &'static str {
        match self {
            DbTls::Off => "off",
            DbTls::Optional => "optional",
            DbTls::Required => "required",
        }
    }

    /// From `off` / `optional` / `required`; the empty string (an assignment of an older
    /// scheduler) is `off`; None for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "off" => Some(DbTls::Off),
            "optional" => Some(DbTls::Optional),
            "required" => Some(DbTls::Required),
            _ => None,
        }
    }

    /// Members have certificates and replicate over TLS.
    pub fn is_on(self) -> bool {
        self != DbTls::Off
    }
}

impl fmt::Display for DbTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role of a member in its instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Accepts writes.
    #[default]
    Primary,
    /// Replicates from the primary, read-only.
    Replica,
}

impl Role {
    /// From `primary` / `replica`; None for anything else.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "primary" => Some(Role::Primary),
            "replica" => Some(Role::Replica),
            _ => None,
        }
    }

    /// `primary` / `replica`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role a member has as observed by its agent: `MemberStatus.role` in the heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObservedRole {
    /// Accepts writes (MariaDB read_only=OFF without replication; Redis role:master).
    Primary,
    /// Replicates from another member.
    Replica,
    /// Neither replicating nor writable: a not yet promoted primary.
    ReadOnly,
    /// Made read-only by its agent (lease lost or switchover): must not take writes.
    Fenced,
    /// Not observed: no container, or the server did not answer.
    Unknown,
}

impl ObservedRole {
    /// Every variant, for round-trip checks.
    pub const ALL: [ObservedRole; 5] = [
        ObservedRole::Primary,
        ObservedRole::Replica,
        ObservedRole::ReadOnly,
        ObservedRole::Fenced,
        ObservedRole::Unknown,
    ];

    /// From `primary` / `replica` / `read-only` / `fenced` / `unknown`; None for anything else.
    pub fn parse(s: &str) -> Option<ObservedRole> {
        match s {
            "primary" => Some(ObservedRole::Primary),
            "replica" => Some(ObservedRole::Replica),
            "read-only" => Some(ObservedRole::ReadOnly),
            "fenced" => Some(ObservedRole::Fenced),
            "unknown" => Some(ObservedRole::Unknown),
            _ => None,
        }
    }

    /// `primary` / `replica` / `read-only` / `fenced` / `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            ObservedRole::Primary => "primary",
            ObservedRole::Replica => "replica",
            ObservedRole::ReadOnly => "read-only",
            ObservedRole::Fenced => "fenced",
            ObservedRole::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ObservedRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Resources of one member: enforced as container limits and volume reservation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU cores (may be fractional).
    pub cpu: f64,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Data volume size in MiB.
    pub disk_mib: u64,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpu: 1.0,
            memory_mib: 512,
            disk_mib: 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrades_go_up_one_rung_at_a_time() {
        let m = EngineKind::Mariadb;
        assert_eq!(m.upgrade_check("10.5", "10.11"), Ok(()));
        assert_eq!(m.upgrade_check("10.11", "11.8"), Ok(()));
        let skip = m.upgrade_check("10.5", "11.8").unwrap_err();
        assert!(
            skip.contains("skips 10.11") && skip.contains("10.5 -> 10.11"),
            "{skip}"
        );
        let down = m.upgrade_check("11.8", "10.11").unwrap_err();
        assert!(down.contains("cannot be downgraded"), "{down}");
        assert!(m
            .upgrade_check("10.11", "10.11")
            .unwrap_err()
            .contains("already runs"));
        assert!(m
            .upgrade_check("10.11", "12.0")
            .unwrap_err()
            .contains("not supported"));
        let r = EngineKind::Redis;
        assert_eq!(r.upgrade_check("6.0", "7.0"), Ok(()));
        assert_eq!(r.upgrade_check("7.0", "8.0"), Ok(()));
        assert!(r.upgrade_check("6.0", "8.0").is_err());
        assert!(r.upgrade_check("8.0", "6.0").is_err());
        for e in [m, r] {
            assert!(e.supported_versions().contains(&e.default_version()));
        }
    }

    #[test]
    fn observed_role_round_trips_through_its_string() {
        for r in ObservedRole::ALL {
            assert_eq!(ObservedRole::parse(r.as_str()), Some(r));
            assert_eq!(r.to_string(), r.as_str());
        }
        assert_eq!(ObservedRole::parse("master"), None);
        assert_eq!(ObservedRole::parse("Primary"), None);
    }

    #[test]
    fn role_round_trips_through_its_string() {
        for r in [Role::Primary, Role::Replica] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("fenced"), None);
    }
}

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

    /// The versions this build can run, newest first.
    pub fn supported_versions(self) -> &'static [&'static str] {
        match self {
            EngineKind::Mariadb => &["10.11"],
            EngineKind::Redis => &["7.0"],
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

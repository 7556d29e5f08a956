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

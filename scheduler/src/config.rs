//! The scheduler's TOML config: listen addresses, state directory, timings, API tokens.
//! Unknown fields are refused; defaults are documented next to each field.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mofang_common::config::invalid;
pub use mofang_common::config::{Error, Result};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenRole {
    /// Read everything but credentials and audit.
    Viewer,
    /// Also create, delete, drain, cordon.
    Operator,
    /// Also credentials and the audit log.
    Admin,
}

/// An API token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Name recorded in the audit log.
    pub name: String,
    /// Role.
    pub role: TokenRole,
    /// The token's SHA-256 in hex (preferred: the config then holds no secret) ...
    #[serde(default)]
    pub sha256: Option<String>,
    /// ... or the token itself.
    #[serde(default)]
    pub secret: Option<String>,
}

/// The scheduler's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// REST API listen address. Default `0.0.0.0:8080`.
    #[serde(default = "default_rest")]
    pub rest_listen: SocketAddr,
    /// Agent gRPC listen address. Default `0.0.0.0:9090`.
    #[serde(default = "default_grpc")]
    pub grpc_listen: SocketAddr,
    /// State directory (SQLite store, generated token). Default `/var/lib/mofang/scheduler`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// A node without a heartbeat this long is `down`. Default 5000.
    #[serde(default = "default_node_ttl")]
    pub node_ttl_ms: u64,
    /// Heartbeat interval asked of agents. Default 1000.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval_ms: u64,
    /// API tokens. None: an admin token is generated on first start.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// JSON log lines. Default false.
    #[serde(default)]
    pub log_json: bool,
    /// Failover, switchover and self-healing knobs (docs/failover.md).
    #[serde(default)]
    pub failover: crate::failover::FailoverConfig,
}

fn default_rest() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
fn default_grpc() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9090))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/mofang/scheduler")
}
fn default_node_ttl() -> u64 {
    5000
}
fn default_heartbeat() -> u64 {
    1000
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            rest_listen: default_rest(),
            grpc_listen: default_grpc(),
            data_dir: default_data_dir(),
            node_ttl_ms: default_node_ttl(),
            heartbeat_interval_ms: default_heartbeat(),
            tokens: Vec::new(),
            log_json: false,
            failover: Default::default(),
        }
    }
}

impl SchedulerConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = mofang_common::config::read(path)?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let cfg: SchedulerConfig = mofang_common::config::parse_toml(text, path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        if self.node_ttl_ms < 500 {
            return Err(invalid("node_ttl_ms", "at least 500"));
        }
        if self.heartbeat_interval_ms == 0 || self.heartbeat_interval_ms >= self.node_ttl_ms {
            return Err(invalid(
                "heartbeat_interval_ms",
                "must be > 0 and below node_ttl_ms",
            ));
        }
        if let Err((field, why)) = self.failover.validate() {
            return Err(invalid(field, why));
        }
        for (i, t) in self.tokens.iter().enumerate() {
            if t.name.is_empty() {
                return Err(invalid(format!("tokens[{i}].name"), "must not be empty"));
            }
            match (&t.sha256, &t.secret) {
                (Some(h), None) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {}
                (Some(_), None) => {
                    return Err(invalid(
                        format!("tokens[{i}].sha256"),
                        "must be 64 hex digits",
                    ))
                }
                (None, Some(s)) if s.len() >= 16 => {}
                (None, Some(_)) => {
                    return Err(invalid(
                        format!("tokens[{i}].secret"),
                        "at least 16 characters",
                    ))
                }
                _ => {
                    return Err(invalid(
                        format!("tokens[{i}]"),
                        "exactly one of `sha256` or `secret` is needed",
                    ))
                }
            }
        }
        Ok(())
    }

    /// Node ttl.
    pub fn node_ttl(&self) -> Duration {
        Duration::from_millis(self.node_ttl_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let c = SchedulerConfig::parse("", Path::new("s.toml")).unwrap();
        assert_eq!(c.rest_listen.port(), 8080);
        let e = SchedulerConfig::parse("bogus = 1", Path::new("s.toml")).unwrap_err();
        assert!(e.to_string().contains("bogus"));
        let e = SchedulerConfig::parse(
            "[[tokens]]\nname = \"x\"\nrole = \"admin\"\n",
            Path::new("s"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("tokens[0]"));
        let e = SchedulerConfig::parse("node_ttl_ms = 1", Path::new("s")).unwrap_err();
        assert!(e.to_string().contains("node_ttl_ms"));
    }
}

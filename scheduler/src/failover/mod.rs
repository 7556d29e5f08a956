//! Failover, switchover and self-healing: the knobs, the operator hooks and the counters.
//! The decisions are pure functions in [`decide`]; [`crate::cluster::Cluster`] carries them
//! out (store first, then the agents).

pub mod decide;
pub mod hooks;
pub mod plan;
pub mod rails;

use serde::Deserialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use hooks::{Hook, HookEnv, Hooks};

/// `[failover]` in the scheduler config. Every default is the documented one
/// (docs/failover.md).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    /// Automatic failover for all instances. Default true.
    pub enabled: bool,
    /// Consecutive failed health checks (agent, every 250 ms) that make a primary dead.
    /// Default 3.
    pub failed_checks: u32,
    /// The longest agent lease in the cluster, ms: after losing a primary's node the
    /// scheduler waits this long since its last heartbeat (or the agent's own, if longer)
    /// before promoting. Default 10000.
    pub lease_ttl_ms: u64,
    /// Replicas lagging more than this are never promoted, ms (lag is measured in whole
    /// seconds). Default 30000.
    pub max_lag_on_failover_ms: u64,
    /// No second automatic failover of one instance within this long, unless an operator
    /// acknowledges the first, ms. Default 3600000 (one hour).
    pub failover_block_period_ms: u64,
    /// A replica whose node has been down this long is rebuilt elsewhere, ms. Default 60000.
    pub replace_after_ms: u64,
    /// If more than this share of all instances would fail over in one round, none does:
    /// the scheduler raises an event and waits for an operator. Default 0.5.
    pub mass_failover_share: f64,
    /// ... and at least this many instances. Default 3.
    pub mass_failover_min: usize,
    /// A promotion not confirmed healthy within this long counts as unsuccessful, ms.
    /// Default 60000.
    pub completion_timeout_ms: u64,
    /// Operator hooks.
    pub hooks: Hooks,
    /// Deprecated names, in seconds (every duration is `_ms` now): read, converted by
    /// [`FailoverConfig::validate`], and warned about.
    #[serde(rename = "max_lag_on_failover_s")]
    pub deprecated_max_lag_on_failover_s: Option<u64>,
    /// Deprecated: `failover_block_period_ms`.
    #[serde(rename = "failover_block_period_s")]
    pub deprecated_failover_block_period_s: Option<u64>,
    /// Deprecated: `replace_after_ms`.
    #[serde(rename = "replace_after_s")]
    pub deprecated_replace_after_s: Option<u64>,
    /// Deprecated: `completion_timeout_ms`.
    #[serde(rename = "completion_timeout_s")]
    pub deprecated_completion_timeout_s: Option<u64>,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            enabled: true,
            failed_checks: 3,
            lease_ttl_ms: 10_000,
            max_lag_on_failover_ms: 30_000,
            failover_block_period_ms: 3_600_000,
            replace_after_ms: 60_000,
            mass_failover_share: 0.5,
            mass_failover_min: 3,
            completion_timeout_ms: 60_000,
            hooks: Hooks::default(),
            deprecated_max_lag_on_failover_s: None,
            deprecated_failover_block_period_s: None,
            deprecated_replace_after_s: None,
            deprecated_completion_timeout_s: None,
        }
    }
}

impl FailoverConfig {
    /// Moves values given under a deprecated `_s` name to their `_ms` field; returns the
    /// deprecated names used (to warn about). A name given both ways is an error.
    pub fn take_deprecated(&mut self) -> Result<Vec<&'static str>, (String, String)> {
        let defaults = FailoverConfig::default();
        let mut used = Vec::new();
        let pairs: [(&'static str, &'static str, Option<u64>, &mut u64, u64); 4] = [
            (
                "max_lag_on_failover_s",
                "max_lag_on_failover_ms",
                self.deprecated_max_lag_on_failover_s.take(),
                &mut self.max_lag_on_failover_ms,
                defaults.max_lag_on_failover_ms,
            ),
            (
                "failover_block_period_s",
                "failover_block_period_ms",
                self.deprecated_failover_block_period_s.take(),
                &mut self.failover_block_period_ms,
                defaults.failover_block_period_ms,
            ),
            (
                "replace_after_s",
                "replace_after_ms",
                self.deprecated_replace_after_s.take(),
                &mut self.replace_after_ms,
                defaults.replace_after_ms,
            ),
            (
                "completion_timeout_s",
                "completion_timeout_ms",
                self.deprecated_completion_timeout_s.take(),
                &mut self.completion_timeout_ms,
                defaults.completion_timeout_ms,
            ),
        ];
        for (old, new, value, field, default) in pairs {
            let Some(v) = value else { continue };
            if *field != default {
                return Err((
                    format!("failover.{old}"),
                    format!("given with failover.{new}: keep only {new}"),
                ));
            }
            *field = v.saturating_mul(1000);
            used.push(old);
        }
        Ok(used)
    }

    /// Checks values serde cannot: returns the offending field and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |f: &str, why: &str| Err((format!("failover.{f}"), why.to_owned()));
        if self.failed_checks == 0 {
            return bad("failed_checks", "must be at least 1");
        }
        if self.lease_ttl_ms < 1000 {
            return bad("lease_ttl_ms", "must be at least 1000");
        }
        if !(self.mass_failover_share > 0.0 && self.mass_failover_share <= 1.0) {
            return bad("mass_failover_share", "must be within (0, 1]");
        }
        if self.completion_timeout_ms < 1000 {
            return bad("completion_timeout_ms", "must be at least 1000");
        }
        self.hooks.validate()
    }

    /// The decision rules.
    pub fn rules(&self) -> decide::Rules {
        decide::Rules {
            failed_checks: self.failed_checks,
            max_lag: i64::try_from(self.max_lag_on_failover_ms / 1000).unwrap_or(i64::MAX),
            replace_after: Duration::from_millis(self.replace_after_ms),
        }
    }
}

/// Failover counters for the scheduler's `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Failovers completed (new primary healthy).
    pub completed: AtomicU64,
    /// Failovers that did not complete, or were aborted by a hook.
    pub unsuccessful: AtomicU64,
    /// Automatic failovers held back (block period, switched off, mass failure).
    pub blocked: AtomicU64,
    /// Switchovers completed.
    pub switchovers: AtomicU64,
    /// Members replaced elsewhere.
    pub replaced: AtomicU64,
    /// Duration of the last completed failover, ms (decision to new primary healthy).
    pub last_duration_ms: AtomicU64,
}

impl Counters {
    /// Prometheus text exposition of the counters.
    pub fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "# HELP mofang_failovers_total Failovers by outcome.\n\
             # TYPE mofang_failovers_total counter\n\
             mofang_failovers_total{{result=\"completed\"}} {}\n\
             mofang_failovers_total{{result=\"unsuccessful\"}} {}\n\
             # HELP mofang_failovers_blocked_total Automatic failovers held back by a safety rail.\n\
             # TYPE mofang_failovers_blocked_total counter\n\
             mofang_failovers_blocked_total {}\n\
             # HELP mofang_switchovers_total Planned switchovers completed.\n\
             # TYPE mofang_switchovers_total counter\n\
             mofang_switchovers_total {}\n\
             # HELP mofang_members_replaced_total Members rebuilt on another node.\n\
             # TYPE mofang_members_replaced_total counter\n\
             mofang_members_replaced_total {}\n\
             # HELP mofang_failover_last_duration_seconds Decision to healthy new primary, last failover.\n\
             # TYPE mofang_failover_last_duration_seconds gauge\n\
             mofang_failover_last_duration_seconds {}\n",
            g(&self.completed),
            g(&self.unsuccessful),
            g(&self.blocked),
            g(&self.switchovers),
            g(&self.replaced),
            g(&self.last_duration_ms) as f64 / 1000.0,
        )
    }
}

//! The safety rails around a failover, as one pure function of what is known
//! ([`may_fail_over`]), and every reason a failover or switchover is refused as a typed
//! [`Refusal`] with its own API error code. No I/O, no clock: the caller passes `now_ms`.

use super::decide::NoPromotion;
use std::time::Duration;

/// Who asked for a failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The scheduler's own detection: every safety rail applies.
    Auto,
    /// An operator through the API: block period, switches and mass guard do not apply.
    Operator,
}

/// Why a failover or switchover is not carried out. Each variant is its own API error code
/// ([`Refusal::code`]), answered as 409 Conflict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Another failover, switchover or replacement of the instance is running.
    #[error("instance {instance}: another failover, switchover or replacement is running")]
    Busy {
        /// The instance.
        instance: String,
    },
    /// `[failover] enabled = false`.
    #[error("automatic failover is switched off in the config")]
    DisabledByConfig,
    /// The instance's automatic failover is switched off.
    #[error("automatic failover is switched off for this instance")]
    DisabledForInstance,
    /// A failover happened within `failover_block_period_ms` and nobody acknowledged it.
    #[error("last failover {since_s} s ago, within failover_block_period {block_s} s: acknowledge it (POST /v1/instances/{instance}/failover/ack) or fail over by hand")]
    BlockPeriod {
        /// The instance.
        instance: String,
        /// Seconds since the last failover.
        since_s: i64,
        /// The block period.
        block_s: i64,
    },
    /// The mass-failure guard holds every automatic failover.
    #[error("mass-failure hold: automatic failover stopped until an operator resumes it (POST /v1/failover/resume)")]
    MassHold,
    /// An operator asked to fail over a primary that is healthy (two writable primaries).
    #[error("primary {primary} is healthy: use switchover for a planned change")]
    PrimaryHealthy {
        /// The primary.
        primary: String,
    },
    /// The primary's node may still hold its lease: its agent has not fenced it yet.
    #[error("primary {primary}'s lease has not expired yet: retry in {retry_ms} ms")]
    LeaseNotExpired {
        /// The primary.
        primary: String,
        /// When a retry can succeed.
        retry_ms: u128,
    },
    /// A `pre_failover` hook refused.
    #[error("pre_failover hook aborted the failover: {message}")]
    HookAborted {
        /// What the hook said.
        message: String,
    },
    /// No replica can be promoted now.
    #[error(transparent)]
    NoPromotion(#[from] NoPromotion),
    /// The instance has no primary member.
    #[error("instance {instance} has no primary")]
    NoPrimary {
        /// The instance.
        instance: String,
    },
    /// A switchover needs a healthy primary to fence.
    #[error("primary {primary} is not healthy: a switchover needs it (use failover)")]
    PrimaryNotHealthy {
        /// The primary.
        primary: String,
    },
    /// A switchover target must be replicating.
    #[error("{member} is not replicating")]
    NotReplicating {
        /// The target.
        member: String,
    },
    /// The primary did not report itself fenced in time (the switchover was undone).
    #[error("{primary} was not fenced within {within_s} s")]
    NotFenced {
        /// The primary.
        primary: String,
        /// The limit.
        within_s: u64,
    },
    /// The new primary did not report healthy in time.
    #[error("{member} did not become a healthy primary within {within_s} s")]
    NotPromoted {
        /// The member.
        member: String,
        /// The limit.
        within_s: u64,
    },
}

impl Refusal {
    /// The API error code.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Busy { .. } => "operation_running",
            Refusal::DisabledByConfig => "failover_disabled",
            Refusal::DisabledForInstance => "failover_disabled_for_instance",
            Refusal::BlockPeriod { .. } => "failover_block_period",
            Refusal::MassHold => "failover_mass_hold",
            Refusal::PrimaryHealthy { .. } => "primary_healthy",
            Refusal::LeaseNotExpired { .. } => "lease_not_expired",
            Refusal::HookAborted { .. } => "hook_aborted",
            Refusal::NoPromotion(NoPromotion::NoCandidate(_)) => "no_candidate",
            Refusal::NoPromotion(NoPromotion::NotSettled { .. }) => "replicas_not_settled",
            Refusal::NoPromotion(NoPromotion::MostAdvancedUnfit { .. }) => {
                "most_advanced_replica_unfit"
            }
            Refusal::NoPrimary { .. } => "no_primary",
            Refusal::PrimaryNotHealthy { .. } => "primary_not_healthy",
            Refusal::NotReplicating { .. } => "not_replicating",
            Refusal::NotFenced { .. } => "not_fenced",
            Refusal::NotPromoted { .. } => "not_promoted",
        }
    }
}

/// What the rails look at for one instance.
#[derive(Debug, Clone, Default)]
pub struct RailFacts {
    /// The instance.
    pub instance: String,
    /// `[failover] enabled`.
    pub enabled: bool,
    /// The instance's automatic failover switch.
    pub auto_failover: bool,
    /// The mass-failure guard holds.
    pub mass_hold: bool,
    /// When the last failover was decided (unix ms, 0: never).
    pub last_failover_ms: i64,
    /// An operator acknowledged the last failover.
    pub failover_acked: bool,
    /// `failover_block_period_ms` in ms.
    pub block_period_ms: i64,
    /// The primary, when there is one.
    pub primary: Option<PrimaryFacts>,
}

/// What is known of the primary at the moment of the decision.
#[derive(Debug, Clone, Default)]
pub struct PrimaryFacts {
    /// Member id.
    pub id: String,
    /// Its node heartbeats.
    pub node_alive: bool,
    /// Its agent reports it healthy.
    pub healthy: bool,
    /// Time since its node's last heartbeat (None: never heard).
    pub silent_for: Option<Duration>,
    /// Its node's lease.
    pub lease_ttl: Duration,
    /// What [`super::decide::assess`] says is still to wait before a promotion is safe.
    pub wait: Duration,
}

/// May a failover of this instance go ahead now? `Auto` passes every rail; `Operator` only
/// those that keep two writable primaries apart (the operator takes the rest on).
pub fn may_fail_over(f: &RailFacts, trigger: Trigger, now_ms: i64) -> Result<(), Refusal> {
    match trigger {
        Trigger::Auto => {
            if !f.enabled {
                return Err(Refusal::DisabledByConfig);
            }
            if !f.auto_failover {
                return Err(Refusal::DisabledForInstance);
            }
            if f.mass_hold {
                return Err(Refusal::MassHold);
            }
            let since = now_ms - f.last_failover_ms;
            if f.last_failover_ms > 0 && since < f.block_period_ms && !f.failover_acked {
                return Err(Refusal::BlockPeriod {
                    instance: f.instance.clone(),
                    since_s: since / 1000,
                    block_s: f.block_period_ms / 1000,
                });
            }
            if let Some(p) = &f.primary {
                if !p.wait.is_zero() {
                    return Err(Refusal::LeaseNotExpired {
                        primary: p.id.clone(),
                        retry_ms: p.wait.as_millis(),
                    });
                }
            }
            Ok(())
        }
        Trigger::Operator => {
            let Some(p) = &f.primary else { return Ok(()) };
            if p.node_alive && p.healthy {
                return Err(Refusal::PrimaryHealthy {
                    primary: p.id.clone(),
                });
            }
            if !p.wait.is_zero() {
                return Err(Refusal::LeaseNotExpired {
                    primary: p.id.clone(),
                    retry_ms: p.wait.as_millis(),
                });
            }
            if !p.node_alive {
                if let Some(silent) = p.silent_for.filter(|s| *s < p.lease_ttl) {
                    return Err(Refusal::LeaseNotExpired {
                        primary: p.id.clone(),
                        retry_ms: (p.lease_ttl - silent).as_millis(),
                    });
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: i64 = 3_600_000;
    const NOW: i64 = 10 * HOUR_MS;

    fn facts() -> RailFacts {
        RailFacts {
            instance: "db".into(),
            enabled: true,
            auto_failover: true,
            mass_hold: false,
            last_failover_ms: 0,
            failover_acked: false,
            block_period_ms: HOUR_MS,
            primary: Some(PrimaryFacts {
                id: "db-0".into(),
                node_alive: true,
                healthy: false,
                silent_for: Some(Duration::from_millis(200)),
                lease_ttl: Duration::from_secs(10),
                wait: Duration::ZERO,
            }),
        }
    }

    fn code(r: Result<(), Refusal>) -> &'static str {
        r.err().map_or("ok", |e| e.code())
    }

    #[test]
    fn automatic_failover_passes_every_rail() {
        assert_eq!(code(may_fail_over(&facts(), Trigger::Auto, NOW)), "ok");
        let f = RailFacts {
            enabled: false,
            ..facts()
        };
        assert_eq!(
            code(may_fail_over(&f, Trigger::Auto, NOW)),
            "failover_disabled"
        );
        let f = RailFacts {
            auto_failover: false,
            ..facts()
        };
        assert_eq!(
            code(may_fail_over(&f, Trigger::Auto, NOW)),
            "failover_disabled_for_instance"
        );
        let f = RailFacts {
            mass_hold: true,
            ..facts()
        };
        assert_eq!(
            code(may_fail_over(&f, Trigger::Auto, NOW)),
            "failover_mass_hold"
        );
    }

    #[test]
    fn block_period_holds_until_acknowledged_or_over() {
        let mut f = facts();
        f.last_failover_ms = NOW - 120_000;
        let e = may_fail_over(&f, Trigger::Auto, NOW).unwrap_err();
        assert_eq!(e.code(), "failover_block_period");
        assert!(e.to_string().contains("120 s ago"), "{e}");
        f.failover_acked = true;
        assert!(may_fail_over(&f, Trigger::Auto, NOW).is_ok());
        f.failover_acked = false;
        f.last_failover_ms = NOW - HOUR_MS - 1;
        assert!(may_fail_over(&f, Trigger::Auto, NOW).is_ok());
        // An operator is never held by the block period, the switches or the mass guard.
        let f = RailFacts {
            enabled: false,
            auto_failover: false,
            mass_hold: true,
            last_failover_ms: NOW - 1000,
            ..facts()
        };
        assert!(may_fail_over(&f, Trigger::Operator, NOW).is_ok());
    }

    #[test]
    fn nobody_promotes_while_the_old_primary_may_still_write() {
        // Auto: the lease wait from `assess`.
        let mut f = facts();
        if let Some(p) = f.primary.as_mut() {
            p.wait = Duration::from_millis(1500);
        }
        assert_eq!(
            code(may_fail_over(&f, Trigger::Auto, NOW)),
            "lease_not_expired"
        );
        // Operator: a healthy primary is a switchover, a silent node may hold its lease.
        let mut f = facts();
        if let Some(p) = f.primary.as_mut() {
            p.healthy = true;
        }
        assert_eq!(
            code(may_fail_over(&f, Trigger::Operator, NOW)),
            "primary_healthy"
        );
        let mut f = facts();
        if let Some(p) = f.primary.as_mut() {
            p.node_alive = false;
            p.silent_for = Some(Duration::from_secs(4));
        }
        let e = may_fail_over(&f, Trigger::Operator, NOW).unwrap_err();
        assert_eq!(e.code(), "lease_not_expired");
        assert!(e.to_string().contains("6000 ms"), "{e}");
        if let Some(p) = f.primary.as_mut() {
            p.silent_for = Some(Duration::from_secs(11));
        }
        assert!(may_fail_over(&f, Trigger::Operator, NOW).is_ok());
    }

    #[test]
    fn every_refusal_has_its_own_code() {
        let all = [
            Refusal::Busy {
                instance: "x".into(),
            },
            Refusal::DisabledByConfig,
            Refusal::DisabledForInstance,
            Refusal::BlockPeriod {
                instance: "x".into(),
                since_s: 1,
                block_s: 2,
            },
            Refusal::MassHold,
            Refusal::PrimaryHealthy {
                primary: "x".into(),
            },
            Refusal::LeaseNotExpired {
                primary: "x".into(),
                retry_ms: 1,
            },
            Refusal::HookAborted {
                message: "x".into(),
            },
            Refusal::NoPromotion(NoPromotion::NoCandidate(vec![])),
            Refusal::NoPromotion(NoPromotion::NotSettled {
                replica: "x".into(),
                why: "x".into(),
            }),
            Refusal::NoPromotion(NoPromotion::MostAdvancedUnfit {
                replica: "x".into(),
                position: "x".into(),
                why: "x".into(),
            }),
            Refusal::NoPrimary {
                instance: "x".into(),
            },
            Refusal::PrimaryNotHealthy {
                primary: "x".into(),
            },
            Refusal::NotReplicating { member: "x".into() },
            Refusal::NotFenced {
                primary: "x".into(),
                within_s: 1,
            },
            Refusal::NotPromoted {
                member: "x".into(),
                within_s: 1,
            },
        ];
        let codes: std::collections::BTreeSet<_> = all.iter().map(Refusal::code).collect();
        assert_eq!(codes.len(), all.len());
    }
}

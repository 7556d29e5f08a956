//! `GET /v1/health`: whether the agent can do its job, and if not, why. Ready means the
//! scheduler has sent its desired state and acknowledges heartbeats within the lease, and
//! the container runtime answers. Members that are failed or unhealthy are reported beside,
//! not as unreadiness: the agent is what heals them.

use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// What the readiness is decided from, gathered by [`crate::metrics::Exporter::health`].
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Whether a desired state has come from the scheduler.
    pub desired: bool,
    /// Since the last acknowledged heartbeat; None before the first.
    pub ack_age: Option<Duration>,
    /// `lease_ttl_ms`.
    pub lease_ttl: Duration,
    /// The runtime's answer to a ping (`Err` with why not).
    pub runtime: Result<(), String>,
    /// Members by the state of their last reconcile.
    pub members: BTreeMap<&'static str, u64>,
}

/// The answer's body.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Health {
    /// Whether the agent can do its job.
    pub ready: bool,
    /// Why not, one line per cause; empty when ready.
    pub reasons: Vec<String>,
    /// Seconds since the last acknowledged heartbeat, if any.
    pub heartbeat_ack_age_s: Option<f64>,
    /// Members by state.
    pub members: BTreeMap<&'static str, u64>,
}

/// Readiness from its inputs (pure).
pub fn decide(i: &Inputs) -> Health {
    let mut reasons = Vec::new();
    if !i.desired {
        reasons.push("no desired state received from the scheduler yet".to_owned());
    }
    match i.ack_age {
        None => reasons.push("no heartbeat acknowledged by the scheduler yet".to_owned()),
        Some(age) if age >= i.lease_ttl => reasons.push(format!(
            "last heartbeat acknowledged {:.1} s ago, past the {:.1} s lease (lease_ttl_ms): \
             primaries on this node are fenced",
            age.as_secs_f64(),
            i.lease_ttl.as_secs_f64()
        )),
        Some(_) => {}
    }
    if let Err(e) = &i.runtime {
        reasons.push(format!("container runtime not answering: {e}"));
    }
    Health {
        ready: reasons.is_empty(),
        reasons,
        heartbeat_ack_age_s: i
            .ack_age
            .map(|a| (a.as_secs_f64() * 1000.0).round() / 1000.0),
        members: i.members.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready_inputs() -> Inputs {
        Inputs {
            desired: true,
            ack_age: Some(Duration::from_millis(800)),
            lease_ttl: Duration::from_secs(10),
            runtime: Ok(()),
            members: [("healthy", 3), ("failed", 1)].into(),
        }
    }

    #[test]
    fn ready_when_linked_and_the_runtime_answers_whatever_the_members() {
        let h = decide(&ready_inputs());
        assert!(h.ready, "{h:?}");
        assert!(h.reasons.is_empty());
        assert_eq!(
            h.members["failed"], 1,
            "a failed member is reported, not unready"
        );
        assert_eq!(h.heartbeat_ack_age_s, Some(0.8));
    }

    #[test]
    fn each_cause_of_unreadiness_is_named() {
        let mut i = ready_inputs();
        i.desired = false;
        i.ack_age = None;
        i.runtime = Err("connection refused at /run/docker.sock".into());
        let h = decide(&i);
        assert!(!h.ready);
        assert_eq!(h.reasons.len(), 3, "{h:?}");
        assert!(h.reasons[0].contains("desired state"));
        assert!(h.reasons[1].contains("no heartbeat acknowledged"));
        assert!(h.reasons[2].contains("/run/docker.sock"));

        let mut i = ready_inputs();
        i.ack_age = Some(Duration::from_secs(12));
        let h = decide(&i);
        assert!(!h.ready);
        assert!(
            h.reasons[0].contains("12.0 s ago") && h.reasons[0].contains("fenced"),
            "{h:?}"
        );
    }
}

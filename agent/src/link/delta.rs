//! Heartbeats that carry only what changed (decision 75).
//!
//! The scheduler keeps the last status of every member it was told of. An idle node's
//! statuses do not change between beats, so sending all of them every second makes the
//! scheduler decode and compare thousands of identical statuses per second for nothing. A
//! heartbeat carries a member's status only when something in it other than its check time
//! changed since the last heartbeat the scheduler acknowledged, names the members that went
//! away, and is complete (every member) when the scheduler cannot be assumed to hold the
//! rest: the first beat of a session, the beat after one that got no answer, one in every
//! [`FULL_EVERY`], and whenever the scheduler asks (`want_full`: a new leader).

use mofang_common::proto::{HeartbeatRequest, MemberStatus};
use std::collections::HashMap;

/// A complete heartbeat at least this often (beats), whatever else happens: a bound on how
/// long a status the scheduler somehow lost stays lost.
pub const FULL_EVERY: u32 = 10;

/// What the scheduler holds of this node's members, as far as this session knows.
#[derive(Debug, Default)]
pub struct Delta {
    /// The statuses of the last acknowledged heartbeat, as the scheduler holds them; None:
    /// unknown, the next heartbeat is complete.
    acked: Option<HashMap<String, MemberStatus>>,
    /// Beats since the last complete one.
    since_full: u32,
    /// The statuses the heartbeat in flight leaves the scheduler with, once acknowledged.
    pending: Option<HashMap<String, MemberStatus>>,
}

impl Delta {
    /// The heartbeat to send, made from the complete one the agent would send.
    pub fn next(&mut self, full: HeartbeatRequest) -> HeartbeatRequest {
        let now: HashMap<String, MemberStatus> = full
            .members
            .iter()
            .map(|m| (m.member.clone(), m.clone()))
            .collect();
        let out = match &self.acked {
            Some(acked) if self.since_full + 1 < FULL_EVERY => {
                self.since_full += 1;
                partial(acked, full)
            }
            _ => {
                self.since_full = 0;
                full
            }
        };
        self.pending = Some(now);
        out
    }

    /// The heartbeat in flight was answered; `want_full`: the scheduler asks for a complete one.
    pub fn answered(&mut self, want_full: bool) {
        self.acked = if want_full { None } else { self.pending.take() };
    }

    /// The heartbeat in flight got no answer: the scheduler may or may not have applied it
    /// (or may yet), so nothing is assumed and the next is complete.
    pub fn missed(&mut self) {
        self.acked = None;
        self.pending = None;
    }
}

/// `full` reduced to the members whose status differs from `acked`, and the members gone.
fn partial(acked: &HashMap<String, MemberStatus>, mut full: HeartbeatRequest) -> HeartbeatRequest {
    let gone: Vec<String> = {
        let mut g: Vec<String> = acked
            .keys()
            .filter(|id| !full.members.iter().any(|m| &m.member == *id))
            .cloned()
            .collect();
        g.sort();
        g
    };
    full.members.retain(|m| {
        acked
            .get(&m.member)
            .is_none_or(|a| !same_but_check_time(a, m))
    });
    full.partial = true;
    full.gone = gone;
    full
}

/// Two statuses of a member say the same, apart from when it was checked.
fn same_but_check_time(a: &MemberStatus, b: &MemberStatus) -> bool {
    let mut b = b.clone();
    b.checked_at_ms = a.checked_at_ms;
    *a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: &str, healthy: bool, checked: i64) -> MemberStatus {
        MemberStatus {
            member: id.into(),
            instance: "db".into(),
            healthy,
            checked_at_ms: checked,
            ..Default::default()
        }
    }

    fn beat(members: Vec<MemberStatus>) -> HeartbeatRequest {
        HeartbeatRequest {
            node: "n1".into(),
            members,
            ..Default::default()
        }
    }

    fn ids(hb: &HeartbeatRequest) -> Vec<&str> {
        hb.members.iter().map(|m| m.member.as_str()).collect()
    }

    #[test]
    fn the_first_beat_is_complete_and_an_idle_node_then_sends_no_status() {
        let mut d = Delta::default();
        let hb = d.next(beat(vec![status("a", true, 1), status("b", true, 1)]));
        assert!(!hb.partial);
        assert_eq!(ids(&hb), ["a", "b"]);
        d.answered(false);
        // Checked again, nothing else changed.
        let hb = d.next(beat(vec![status("a", true, 2), status("b", true, 2)]));
        assert!(hb.partial);
        assert!(hb.members.is_empty() && hb.gone.is_empty(), "{hb:?}");
    }

    #[test]
    fn a_changed_status_and_a_gone_member_are_sent() {
        let mut d = Delta::default();
        d.next(beat(vec![status("a", true, 1), status("b", true, 1)]));
        d.answered(false);
        let hb = d.next(beat(vec![status("a", false, 2), status("c", true, 2)]));
        assert!(hb.partial);
        assert_eq!(ids(&hb), ["a", "c"]);
        assert_eq!(hb.gone, ["b"]);
        d.answered(false);
        // Acknowledged: the next idle beat sends nothing again.
        let hb = d.next(beat(vec![status("a", false, 3), status("c", true, 3)]));
        assert!(hb.members.is_empty() && hb.gone.is_empty(), "{hb:?}");
    }

    #[test]
    fn an_unanswered_beat_makes_the_next_complete() {
        let mut d = Delta::default();
        d.next(beat(vec![status("a", true, 1)]));
        d.answered(false);
        // a changes, the beat carrying it is lost, a changes back: the scheduler may hold
        // either, so the next beat carries a whatever it is.
        d.next(beat(vec![status("a", false, 2)]));
        d.missed();
        let hb = d.next(beat(vec![status("a", true, 3)]));
        assert!(!hb.partial);
        assert_eq!(ids(&hb), ["a"]);
    }

    #[test]
    fn the_scheduler_asking_gets_a_complete_beat() {
        let mut d = Delta::default();
        d.next(beat(vec![status("a", true, 1)]));
        d.answered(false);
        d.next(beat(vec![status("a", true, 2)]));
        d.answered(true);
        let hb = d.next(beat(vec![status("a", true, 3)]));
        assert!(!hb.partial);
        assert_eq!(ids(&hb), ["a"]);
    }

    #[test]
    fn every_tenth_beat_is_complete() {
        let mut d = Delta::default();
        let mut complete = Vec::new();
        for i in 0..25 {
            let hb = d.next(beat(vec![status("a", true, i)]));
            if !hb.partial {
                complete.push(i);
            }
            d.answered(false);
        }
        assert_eq!(complete, [0, 10, 20]);
    }
}

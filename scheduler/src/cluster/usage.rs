//! What each node's host is using over the last minutes (issue 18's live resource graph per
//! node): one sample per heartbeat at most every [`EVERY_MS`], the last [`KEPT`] of them, in
//! the leader's memory only (a new leader starts an empty graph). Pure: the heartbeat
//! passes the time.

use mofang_common::proto::HostUsage;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// At most one sample per this many ms ...
pub const EVERY_MS: i64 = 10_000;
/// ... and this many kept: ten minutes.
pub const KEPT: usize = 60;

/// The host's use at one time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageSample {
    /// When the scheduler received it (unix ms).
    pub at_ms: i64,
    /// CPU busy since the agent's previous sample, in cores.
    pub cpu_cores_busy: f64,
    /// The host's logical CPUs.
    pub cpu_cores: u32,
    /// Memory in use (MemTotal less MemAvailable).
    pub memory_used_bytes: u64,
    /// Memory installed.
    pub memory_total_bytes: u64,
}

/// A node's recent samples, oldest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageHistory {
    samples: VecDeque<UsageSample>,
}

impl UsageHistory {
    /// Keeps `usage` as received at `at_ms` unless the last sample is under [`EVERY_MS`]
    /// old; the oldest goes past [`KEPT`]. A clock that went back starts again.
    pub fn record(&mut self, at_ms: i64, usage: &HostUsage) {
        if let Some(last) = self.samples.back() {
            if at_ms < last.at_ms {
                self.samples.clear();
            } else if at_ms - last.at_ms < EVERY_MS {
                return;
            }
        }
        self.samples.push_back(UsageSample {
            at_ms,
            cpu_cores_busy: usage.cpu_cores_busy.max(0.0),
            cpu_cores: usage.cpu_cores,
            memory_used_bytes: usage.memory_used_bytes,
            memory_total_bytes: usage.memory_total_bytes,
        });
        while self.samples.len() > KEPT {
            self.samples.pop_front();
        }
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<UsageSample> {
        self.samples.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(cpu: f64) -> HostUsage {
        HostUsage {
            cpu_cores_busy: cpu,
            cpu_cores: 2,
            memory_used_bytes: 1 << 30,
            memory_total_bytes: 4 << 30,
        }
    }

    #[test]
    fn one_sample_per_ten_seconds_ten_minutes_kept() {
        let mut h = UsageHistory::default();
        h.record(1_000, &usage(0.5));
        h.record(5_000, &usage(1.5)); // too soon: the heartbeat is faster than the graph
        assert_eq!(h.samples().len(), 1);
        assert_eq!(h.samples()[0].cpu_cores_busy, 0.5);
        h.record(11_000, &usage(1.0));
        assert_eq!(h.samples().len(), 2);
        for k in 2..100 {
            h.record(1_000 + k * EVERY_MS, &usage(-1.0));
        }
        let s = h.samples();
        assert_eq!(s.len(), KEPT);
        assert_eq!(s.last().map(|x| x.at_ms), Some(1_000 + 99 * EVERY_MS));
        assert_eq!(s[0].at_ms, 1_000 + 40 * EVERY_MS, "the oldest went");
        assert_eq!(
            s.last().map(|x| x.cpu_cores_busy),
            Some(0.0),
            "never negative"
        );
        // The clock went back: a fresh start, not a graph running backward.
        h.record(0, &usage(0.2));
        assert_eq!(h.samples().len(), 1);
    }
}

//! A duration histogram with fixed buckets, updated lock-free by the parts of the agent it
//! times (reconcile passes, collections) and read by a scrape.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Bucket upper bounds in seconds: from a probe on a kept session (sub-millisecond) to a
/// full pass that restarts a container (seconds).
pub const BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Counts per bucket (not cumulative; the last is `+Inf`), the sum and nothing else.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BOUNDS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BOUNDS.iter().position(|b| s <= *b).unwrap_or(BOUNDS.len());
        self.counts[i].fetch_add(1, Relaxed);
        let ns = d.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// The cumulative counts (one per bound, then `+Inf`) and the sum in seconds, for
    /// [`super::model::Families::add_histogram`].
    pub fn snapshot(&self) -> ([u64; BOUNDS.len() + 1], f64) {
        let mut out = [0; BOUNDS.len() + 1];
        let mut total = 0;
        for (o, c) in out.iter_mut().zip(&self.counts) {
            total += c.load(Relaxed);
            *o = total;
        }
        (out, self.sum_ns.load(Relaxed) as f64 / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::model::{encode, Families, Format};

    #[test]
    fn observations_land_in_cumulative_buckets_with_sum_and_count() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300)); // <= 0.0005
        h.observe(Duration::from_millis(1)); // == 0.001: its own bound counts it
        h.observe(Duration::from_millis(30)); // <= 0.05
        h.observe(Duration::from_secs(9)); // +Inf only
        let (cum, sum) = h.snapshot();
        assert_eq!(cum[0], 1);
        assert_eq!(cum[1], 2);
        assert_eq!(cum[5], 2, "0.025 holds nothing of 30 ms");
        assert_eq!(cum[6], 3);
        assert_eq!(cum[BOUNDS.len() - 1], 3, "5 s holds nothing of 9 s");
        assert_eq!(cum[BOUNDS.len()], 4);
        assert!((sum - 9.0313).abs() < 1e-9, "{sum}");

        let mut f = Families::default();
        f.add_histogram("t_seconds", "h", vec![], (&BOUNDS, &cum, sum));
        let t = encode(&f, Format::Text);
        assert!(t.contains("# TYPE t_seconds histogram\n"), "{t}");
        assert!(t.contains("t_seconds_bucket{le=\"0.001\"} 2\n"), "{t}");
        assert!(t.contains("t_seconds_bucket{le=\"1.0\"} 3\n"), "{t}");
        assert!(t.contains("t_seconds_bucket{le=\"+Inf\"} 4\n"), "{t}");
        assert!(t.contains("t_seconds_count 4\n"), "{t}");
        assert!(t.contains("t_seconds_sum 9.0313"), "{t}");
        let om = encode(&f, Format::OpenMetrics);
        assert!(om.contains("# TYPE t_seconds histogram\n"), "{om}");
    }
}

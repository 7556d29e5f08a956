//! How often the background collections run (decision 168): as often as the scraper scrapes,
//! each timed to end just before the next scrape is due, never more often than
//! `metrics_interval_ms`, and once a minute while nobody scrapes — cAdvisor's dynamic
//! housekeeping, keyed on the reader rather than on change. A scrape that ends an idle
//! spell is served what was last collected (with its age) and wakes every collection at
//! once, so the next scrape finds fresh values; no scrape ever waits on a collection.

use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The cadence while nobody scrapes, and the longest gap between scrapes that still sets one.
pub const IDLE: Duration = Duration::from_secs(60);
/// A collection aims to end this long before the scrape it is for, plus its source's
/// [`spread`].
const LEAD: Duration = Duration::from_secs(1);
/// The sources' collections are spread over this much before the lead, so that fifty of them
/// do not start at the same instant and queue on the host's cores.
const SPREAD_MS: u64 = 1000;

/// A source's place in the spread (stable per source name): `0 ..` [`SPREAD_MS`] ms.
pub fn spread(source: &str) -> Duration {
    // FNV-1a: stable across runs and builds, unlike the std hasher.
    let h = source.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    Duration::from_millis(h % SPREAD_MS)
}
/// The shortest wait between two collections of a source.
const FLOOR: Duration = Duration::from_millis(250);

/// What the cadence knows of the scrapes (pure state).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Scrapes {
    last: Option<Instant>,
    gap: Option<Duration>,
}

impl Scrapes {
    /// A scrape at `now`. True when it ends an idle spell (none for [`IDLE`], or the first).
    pub fn record(&mut self, now: Instant) -> bool {
        let idle = self.idle(now);
        if let Some(last) = self.last {
            let gap = now.saturating_duration_since(last);
            // Two scrapes at once (a second scraper, a retry) say nothing of the interval.
            if gap >= FLOOR {
                self.gap = Some(gap);
            }
        }
        self.last = Some(now);
        idle
    }

    fn idle(&self, now: Instant) -> bool {
        self.last
            .is_none_or(|last| now.saturating_duration_since(last) > IDLE)
    }

    /// How long a source whose collection ended at `now` after `took` waits for its next
    /// one; `base` is `metrics_interval_ms`, the shortest cadence. `took` counts the source's
    /// [`spread`] too: the collection aims to end that much earlier.
    pub fn next_wait(&self, base: Duration, now: Instant, took: Duration) -> Duration {
        let (Some(last), Some(gap)) = (self.last, self.gap) else {
            // Never scraped, or once: the configured cadence until the scraper's is known,
            // a minute while nobody has come.
            return if self.idle(now) { IDLE.max(base) } else { base };
        };
        if self.idle(now) || gap > IDLE {
            return IDLE.max(base);
        }
        if gap <= base {
            return base;
        }
        // The next scrape this collection can still end before: last + k·gap, k ≥ 1.
        let lead = took + LEAD;
        let mut next = last + gap;
        while next.checked_sub(lead).is_none_or(|due| due <= now) {
            next += gap;
        }
        let due = next.checked_sub(lead).unwrap_or(now);
        due.saturating_duration_since(now)
            .clamp(FLOOR, IDLE.max(base))
    }
}

/// The scrapes as the collections see them, shared by the exporter and its collectors.
#[derive(Debug, Default)]
pub struct Cadence {
    scrapes: Mutex<Scrapes>,
    /// Woken by a scrape that ends an idle spell: every collection runs now.
    wake: Notify,
}

impl Cadence {
    /// A scrape now: wakes the collections when it ends an idle spell.
    pub fn scraped(&self) -> bool {
        let idle = self
            .scrapes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(Instant::now());
        if idle {
            self.wake.notify_waiters();
        }
        idle
    }

    /// The wait after a collection of `source` that took `took` ([`Scrapes::next_wait`],
    /// the source's [`spread`] added).
    pub fn next_wait(&self, base: Duration, source: &str, took: Duration) -> Duration {
        self.scrapes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_wait(base, Instant::now(), took + spread(source))
    }

    /// Resolves when a scrape ends an idle spell.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(5);
    const TOOK: Duration = Duration::from_millis(200);

    fn s(n: f64) -> Duration {
        Duration::from_secs_f64(n)
    }

    /// Equal to a microsecond (the figures are decimal seconds).
    fn close(a: Instant, b: Instant) {
        let d = a.max(b).duration_since(a.min(b));
        assert!(d < Duration::from_micros(1), "{a:?} vs {b:?}");
    }

    #[test]
    fn the_sources_spread_over_a_second_each_in_a_stable_place() {
        let places: std::collections::BTreeSet<Duration> =
            (0..50).map(|i| spread(&format!("member-{i}"))).collect();
        assert!(places.iter().all(|p| *p < Duration::from_millis(SPREAD_MS)));
        assert!(
            places.len() > 40,
            "fifty sources in {} places",
            places.len()
        );
        assert_eq!(spread("member-7"), spread("member-7"));
    }

    #[tokio::test]
    async fn a_scrape_after_an_idle_spell_wakes_the_waiting_collections_and_the_next_does_not() {
        let c = std::sync::Arc::new(Cadence::default());
        let waiting = {
            let c = c.clone();
            tokio::spawn(async move { c.woken().await })
        };
        tokio::task::yield_now().await;
        assert!(c.scraped(), "the first scrape ends the idle spell");
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting collection was woken")
            .expect("task");
        let again = {
            let c = c.clone();
            tokio::spawn(async move { c.woken().await })
        };
        tokio::task::yield_now().await;
        assert!(!c.scraped(), "a scrape right after is no idle spell");
        assert!(tokio::time::timeout(Duration::from_millis(200), again)
            .await
            .is_err());
    }

    #[test]
    fn nobody_scraping_means_once_a_minute_and_the_first_scrape_wakes_everything() {
        let t0 = Instant::now();
        let mut sc = Scrapes::default();
        assert_eq!(sc.next_wait(BASE, t0, TOOK), IDLE);
        // A base above a minute is kept.
        assert_eq!(sc.next_wait(s(120.0), t0, TOOK), s(120.0));
        assert!(sc.record(t0), "the first scrape ends the idle spell");
        // One scrape: the interval is not known yet, the configured cadence runs.
        assert_eq!(sc.next_wait(BASE, t0 + s(1.0), TOOK), BASE);
        assert!(!sc.record(t0 + s(15.0)));
        // The scraper went away: once a minute again after a minute of silence.
        assert_eq!(sc.next_wait(BASE, t0 + s(76.0), TOOK), IDLE);
        assert!(
            sc.record(t0 + s(200.0)),
            "a scrape after the spell wakes them"
        );
    }

    #[test]
    fn a_regular_scraper_sets_the_cadence_and_each_collection_ends_before_its_scrape() {
        let t0 = Instant::now();
        let mut sc = Scrapes::default();
        sc.record(t0);
        sc.record(t0 + s(15.0));
        // A collection that ended at t0 + 16 (after the scrape at 15) waits for the scrape at
        // 30, to end a second before it: it starts at 30 - 1 - 0.2.
        let wait = sc.next_wait(BASE, t0 + s(16.0), TOOK);
        close(t0 + s(16.0) + wait, t0 + s(28.8));
        // That collection ends at 28.8 + 0.2 = 29.0, before the scrape at 30 it was for:
        // the next one is for 45, never a second one for 30.
        let wait = sc.next_wait(BASE, t0 + s(29.0), TOOK);
        close(t0 + s(29.0) + wait, t0 + s(43.8));
        // A slow source starts earlier.
        let wait = sc.next_wait(BASE, t0 + s(16.0), s(3.0));
        close(t0 + s(16.0) + wait, t0 + s(26.0));
    }

    #[test]
    fn scrapes_more_often_than_the_base_keep_the_base_and_bursts_do_not_set_a_gap() {
        let t0 = Instant::now();
        let mut sc = Scrapes::default();
        sc.record(t0);
        sc.record(t0 + s(1.0));
        assert_eq!(sc.next_wait(BASE, t0 + s(1.5), TOOK), BASE);
        // Two scrapers at once: the gap stays the 15 s one.
        let mut sc = Scrapes::default();
        sc.record(t0);
        sc.record(t0 + s(15.0));
        sc.record(t0 + s(15.1));
        let wait = sc.next_wait(BASE, t0 + s(16.0), TOOK);
        close(t0 + s(16.0) + wait, t0 + s(28.9));
        // Scrapes further apart than a minute set no cadence.
        let mut sc = Scrapes::default();
        sc.record(t0);
        sc.record(t0 + s(59.0));
        assert!(sc.next_wait(BASE, t0 + s(60.0), TOOK) <= IDLE);
    }
}

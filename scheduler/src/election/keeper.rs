//! The claim keeper: one loop, for every backend, that renews a leader's claim (a Consul
//! session, an etcd lease) and decides on this process's own monotonic clock when the claim
//! can no longer be trusted; and the holder that turns a kept claim into a [`Leadership`].
//!
//! The rule (Chubby's "local lease", <https://research.google/pubs/pub27897/>, section 2.8):
//! a backend frees a claim no earlier than `safe` after it saw the last renewal, and it saw
//! that renewal no earlier than when we *sent* it. So the claim is ours until `safe` after the
//! *start* of the last renewal that was confirmed, on our own clock, whatever the backend's
//! clock says; we step down a margin before that ([`Timings`]). An answer that arrives after
//! that point changes nothing: by then we have stepped down.
//!
//! The decisions are pure functions of instants ([`Claim`]); the loop ([`Keeper`]) only
//! sleeps, calls the backend's [`Renew`] and applies them. Backends keep only what is theirs:
//! acquire, watch and release.

use super::{Leadership, Result};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

/// Timings derived from a claim's lifetime: how often to renew, and after how long without a
/// confirmed renewal to step down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timings {
    /// Interval between renewals.
    pub renew_every: Duration,
    /// Step down when no renewal that started within this is confirmed.
    pub step_down_after: Duration,
}

impl Timings {
    /// For a claim that nobody else can take until `safe` after our last confirmed renewal
    /// started: step down a margin (a fifth, at least 200 ms) before, renew four times in
    /// that window (and at least three times per `ttl`).
    pub(crate) fn new(safe: Duration, ttl: Duration) -> Self {
        let margin = (safe / 5).max(Duration::from_millis(200));
        let step_down_after = safe.saturating_sub(margin).max(Duration::from_millis(100));
        let renew_every = (step_down_after / 4)
            .min(ttl / 3)
            .max(Duration::from_millis(50));
        Timings {
            renew_every,
            step_down_after,
        }
    }
}

/// What one renewal attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Renewal {
    /// The backend extended the claim.
    Renewed,
    /// The backend says the claim is gone (session invalidated, lease expired or revoked).
    Gone,
    /// No answer, or an error: nothing is known.
    Failed(String),
}

/// The backend's renew call: the only thing the keeper asks of a backend.
#[async_trait::async_trait]
pub(crate) trait Renew: Send + 'static {
    /// Asks the backend once to extend the claim. The keeper drops the call when `budget`
    /// runs out (the claim can no longer be trusted by then); an implementation must not let
    /// a later call take the answer meant for a dropped one.
    async fn renew(&mut self, budget: Duration) -> Renewal;
}

/// Why a kept claim was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lost {
    /// The backend said the claim is gone.
    Gone,
    /// No renewal started within `step_down_after` was confirmed in time.
    Expired {
        /// Time since the start of the last confirmed renewal.
        unconfirmed_for: Duration,
    },
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::Gone => f.write_str("the backend says the claim is gone"),
            Lost::Expired { unconfirmed_for } => write!(
                f,
                "no renewal confirmed for {unconfirmed_for:?}: the claim could be taken by now"
            ),
        }
    }
}

/// What the keeper does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// Renew now, giving up after `budget`.
    Renew {
        /// Time left before the claim can no longer be trusted.
        budget: Duration,
    },
    /// Nothing to do before this instant.
    WaitUntil(Instant),
    /// Stop acting as the holder of the claim.
    StepDown(Lost),
}

/// A claim as this process sees it: when it was last known valid. Pure: every instant is
/// passed in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claim {
    /// Start of the last confirmed renewal (or of the call that created or used the claim).
    confirmed: Instant,
    timings: Timings,
}

impl Claim {
    /// A claim known valid at `confirmed` (e.g. the start of the call that created it).
    pub(crate) fn new(confirmed: Instant, timings: Timings) -> Self {
        Claim { confirmed, timings }
    }

    /// The instant from which the claim can no longer be trusted.
    pub(crate) fn deadline(&self) -> Instant {
        self.confirmed + self.timings.step_down_after
    }

    /// Another call that started at `at` proved the claim valid (e.g. an acquire with it).
    pub(crate) fn confirm(&mut self, at: Instant) {
        self.confirmed = self.confirmed.max(at);
    }

    /// What to do at `now` when the next renewal is due at `renew_due`.
    pub(crate) fn next(&self, now: Instant, renew_due: Instant) -> Next {
        let deadline = self.deadline();
        if now >= deadline {
            return Next::StepDown(Lost::Expired {
                unconfirmed_for: now.saturating_duration_since(self.confirmed),
            });
        }
        if now >= renew_due {
            return Next::Renew {
                budget: deadline - now,
            };
        }
        Next::WaitUntil(renew_due.min(deadline))
    }

    /// Applies the outcome of a renewal that started at `started` and whose answer came at
    /// `now`; `Some` when the claim is lost.
    pub(crate) fn settle(
        &mut self,
        started: Instant,
        now: Instant,
        outcome: &Renewal,
    ) -> Option<Lost> {
        if *outcome == Renewal::Gone {
            return Some(Lost::Gone);
        }
        // Too late: the claim may already be someone else's, and we have stopped trusting it
        // at the deadline. A late confirmation must not bring it back.
        if now >= self.deadline() {
            return Some(Lost::Expired {
                unconfirmed_for: now.saturating_duration_since(self.confirmed),
            });
        }
        if *outcome == Renewal::Renewed {
            self.confirm(started);
        }
        None
    }
}

/// A claim kept alive by a background task. Cheap to clone; every clone is the same claim.
#[derive(Debug, Clone)]
pub(crate) struct Keeper {
    claim: Arc<Mutex<Claim>>,
    /// Cancelled once, when the claim is lost.
    lost: CancellationToken,
    /// Why it was lost; set once, before `lost` is cancelled.
    reason: Arc<OnceLock<Lost>>,
    /// Cancelled to stop renewing (the claim is given up or released).
    stop: CancellationToken,
}

impl Keeper {
    /// Keeps a claim known valid at `since` by calling `renewer`, in a task in `span`.
    pub(crate) fn start<R: Renew>(
        renewer: R,
        since: Instant,
        timings: Timings,
        span: tracing::Span,
    ) -> Self {
        let keeper = Keeper {
            claim: Arc::new(Mutex::new(Claim::new(since, timings))),
            lost: CancellationToken::new(),
            reason: Arc::new(OnceLock::new()),
            stop: CancellationToken::new(),
        };
        let k = keeper.clone();
        tokio::spawn(async move { k.run(renewer).await }.instrument(span));
        keeper
    }

    /// Another call that started at `at` proved the claim valid.
    pub(crate) fn confirm(&self, at: Instant) {
        self.claim
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .confirm(at);
    }

    /// Cancelled when the claim is lost (never when it is merely stopped).
    pub(crate) fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// Why the claim was lost, once it is.
    pub(crate) fn reason(&self) -> Option<&Lost> {
        self.reason.get()
    }

    /// Stops renewing.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    fn claim(&self) -> Claim {
        *self.claim.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the loss once and cancels `lost`.
    fn step_down(&self, why: Lost) -> Lost {
        warn!(reason = %why, "claim lost: it can no longer be trusted");
        let why = self.reason.get_or_init(|| why).clone();
        self.lost.cancel();
        why
    }

    /// The loop: renews every `renew_every` until stopped (`None`) or the claim is lost
    /// (`Some`, after `lost` was cancelled).
    async fn run<R: Renew>(&self, mut renewer: R) -> Option<Lost> {
        let every = self.claim().timings.renew_every;
        let mut renew_due = Instant::now() + every;
        loop {
            let now = Instant::now();
            match self.claim().next(now, renew_due) {
                Next::StepDown(why) => return Some(self.step_down(why)),
                Next::WaitUntil(at) => {
                    tokio::select! {
                        _ = self.stop.cancelled() => return None,
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                Next::Renew { budget } => {
                    let started = now;
                    let outcome = tokio::select! {
                        _ = self.stop.cancelled() => return None,
                        r = tokio::time::timeout(budget, renewer.renew(budget)) => r
                            .unwrap_or_else(|_| Renewal::Failed(format!("no answer within {budget:?}"))),
                    };
                    if let Renewal::Failed(e) = &outcome {
                        debug!(error = %e, "renewal failed");
                    }
                    let ended = Instant::now();
                    let settled = self
                        .claim
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .settle(started, ended, &outcome);
                    if let Some(why) = settled {
                        return Some(self.step_down(why));
                    }
                    renew_due = ended + every;
                }
            }
        }
    }
}

/// What a backend does with a claim it holds as leader: watch it, and give it back.
#[async_trait::async_trait]
pub(crate) trait Hold: Send + Sync + 'static {
    /// Returns when the backend shows the claim gone or taken by another, saying how.
    async fn watch(&self) -> String;
    /// Gives the claim back so another contender can lead at once (resignation).
    async fn release(&self) -> Result<()>;
    /// Drops a claim this process no longer trusts, best effort: it must not keep the
    /// leadership locked.
    async fn abandon(&self);
}

/// The leadership of `term`, kept by `keeper` and held through `held` until it is lost or
/// given up; the task runs in `span`.
pub(crate) fn lead<H: Hold>(term: u64, keeper: Keeper, held: H, span: tracing::Span) -> Leadership {
    let lost = CancellationToken::new();
    let resign = CancellationToken::new();
    let task = {
        let (lost, resign) = (lost.clone(), resign.clone());
        tokio::spawn(async move { hold(keeper, held, lost, resign).await }.instrument(span))
    };
    Leadership::new(term, lost, resign, task)
}

/// Holds the claim until it is lost or given up. Cancels `lost` first in every case.
async fn hold<H: Hold>(
    keeper: Keeper,
    held: H,
    lost: CancellationToken,
    resign: CancellationToken,
) -> Result<()> {
    let reason = tokio::select! {
        _ = resign.cancelled() => None,
        _ = keeper.lost().cancelled() => Some(
            keeper.reason().map_or_else(|| "the claim is lost".to_owned(), Lost::to_string),
        ),
        r = held.watch() => Some(r),
    };
    lost.cancel();
    keeper.stop();
    match reason {
        None => {
            info!("resigning the leadership");
            held.release().await
        }
        Some(reason) => {
            warn!(reason = %reason, "lost the leadership; stopped acting as leader");
            held.abandon().await;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const MS: Duration = Duration::from_millis(1);

    /// safe 5 s: step down after 4 s, renew every 1 s.
    fn timings() -> Timings {
        Timings::new(Duration::from_secs(5), Duration::from_secs(10))
    }

    #[test]
    fn timings_step_down_before_anyone_else_can_lead() {
        let t = timings();
        assert_eq!(t.step_down_after, Duration::from_secs(4));
        assert_eq!(t.renew_every, Duration::from_secs(1));
        let t = Timings::new(Duration::from_secs(2), Duration::from_secs(2));
        assert_eq!(t.step_down_after, Duration::from_millis(1600));
        assert_eq!(t.renew_every, Duration::from_millis(400));
        let t = Timings::new(Duration::from_millis(500), Duration::from_secs(10));
        assert_eq!(t.step_down_after, Duration::from_millis(300));
    }

    // ---- The decisions, on instants given by the test ----------------------------------

    #[test]
    fn renews_when_due_and_waits_otherwise() {
        let t0 = Instant::now();
        let c = Claim::new(t0, timings());
        assert_eq!(c.next(t0, t0 + 1000 * MS), Next::WaitUntil(t0 + 1000 * MS));
        assert_eq!(
            c.next(t0 + 1000 * MS, t0 + 1000 * MS),
            Next::Renew { budget: 3000 * MS }
        );
        // A renewal due after the deadline: wake at the deadline.
        assert_eq!(c.next(t0, t0 + 9000 * MS), Next::WaitUntil(t0 + 4000 * MS));
    }

    #[test]
    fn a_confirmed_renewal_counts_from_its_start_not_its_answer() {
        let t0 = Instant::now();
        let mut c = Claim::new(t0, timings());
        // Slow: started at 1 s, answered at 3.5 s.
        let lost = c.settle(t0 + 1000 * MS, t0 + 3500 * MS, &Renewal::Renewed);
        assert_eq!(lost, None);
        assert_eq!(c.deadline(), t0 + 5000 * MS, "4 s after the start (1 s)");
        // An older confirmation never moves the deadline back.
        c.confirm(t0 + 500 * MS);
        assert_eq!(c.deadline(), t0 + 5000 * MS);
    }

    #[test]
    fn a_failed_renewal_keeps_the_old_deadline() {
        let t0 = Instant::now();
        let mut c = Claim::new(t0, timings());
        let failed = Renewal::Failed("connection refused".into());
        assert_eq!(c.settle(t0 + 1000 * MS, t0 + 1001 * MS, &failed), None);
        assert_eq!(c.deadline(), t0 + 4000 * MS);
        assert_eq!(
            c.next(t0 + 4000 * MS, t0 + 2001 * MS),
            Next::StepDown(Lost::Expired {
                unconfirmed_for: 4000 * MS
            })
        );
    }

    #[test]
    fn an_answer_after_the_deadline_does_not_bring_the_claim_back() {
        let t0 = Instant::now();
        let mut c = Claim::new(t0, timings());
        // Started in time, answered after the deadline: the claim was not trusted meanwhile.
        let lost = c.settle(t0 + 3000 * MS, t0 + 4000 * MS, &Renewal::Renewed);
        assert_eq!(
            lost,
            Some(Lost::Expired {
                unconfirmed_for: 4000 * MS
            })
        );
        assert_eq!(c.deadline(), t0 + 4000 * MS);
    }

    #[test]
    fn gone_is_lost_at_once() {
        let t0 = Instant::now();
        let mut c = Claim::new(t0, timings());
        assert_eq!(c.settle(t0, t0 + MS, &Renewal::Gone), Some(Lost::Gone));
    }

    // ---- The loop, on Tokio's paused clock with a scripted backend ----------------------

    /// A backend whose answers are scripted: each renewal takes the given time, then
    /// answers; after the script, `then` forever. Counts calls.
    struct Scripted {
        script: VecDeque<(Duration, Renewal)>,
        then: Option<(Duration, Renewal)>,
        calls: Arc<AtomicUsize>,
    }

    impl Scripted {
        fn new(
            script: impl IntoIterator<Item = (Duration, Renewal)>,
            then: Option<(Duration, Renewal)>,
        ) -> (Self, Arc<AtomicUsize>) {
            let calls = Arc::new(AtomicUsize::new(0));
            let s = Scripted {
                script: script.into_iter().collect(),
                then,
                calls: calls.clone(),
            };
            (s, calls)
        }
    }

    #[async_trait::async_trait]
    impl Renew for Scripted {
        async fn renew(&mut self, _budget: Duration) -> Renewal {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let next = self.script.pop_front().or_else(|| self.then.clone());
            match next {
                Some((took, answer)) => {
                    tokio::time::sleep(took).await;
                    answer
                }
                // Never answers.
                None => std::future::pending().await,
            }
        }
    }

    fn ok() -> (Duration, Renewal) {
        (10 * MS, Renewal::Renewed)
    }

    fn keeper() -> Keeper {
        Keeper {
            claim: Arc::new(Mutex::new(Claim::new(Instant::now(), timings()))),
            lost: CancellationToken::new(),
            reason: Arc::new(OnceLock::new()),
            stop: CancellationToken::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn renewing_in_time_keeps_the_claim_until_stopped() {
        let (renewer, calls) = Scripted::new([], Some(ok()));
        let k = keeper();
        let run = tokio::spawn({
            let k = k.clone();
            async move { k.run(renewer).await }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!k.lost().is_cancelled());
        // One renewal per second (plus its 10 ms).
        let n = calls.load(Ordering::SeqCst);
        assert!((58..=60).contains(&n), "{n} renewals in 60 s");
        k.stop();
        assert_eq!(run.await.expect("keeper task"), None);
        assert!(!k.lost().is_cancelled(), "stopping is not losing");
    }

    #[tokio::test(start_paused = true)]
    async fn slow_renewals_that_answer_before_the_deadline_keep_the_claim() {
        // Each answer takes 1.4 s, longer than the renewal interval (1 s): confirmed from its
        // start, each moves the deadline before the previous one passes.
        let (renewer, calls) = Scripted::new([], Some((1400 * MS, Renewal::Renewed)));
        let k = keeper();
        let run = tokio::spawn({
            let k = k.clone();
            async move { k.run(renewer).await }
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!k.lost().is_cancelled());
        assert!(calls.load(Ordering::SeqCst) >= 12);
        k.stop();
        assert_eq!(run.await.expect("keeper task"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn failing_renewals_step_down_at_the_deadline_on_our_clock() {
        let t0 = Instant::now();
        // Two good renewals (at 1 s and 2 s), then errors.
        let (renewer, calls) = Scripted::new(
            [ok(), ok()],
            Some((5 * MS, Renewal::Failed("connection refused".into()))),
        );
        let k = keeper();
        let lost = k.run(renewer).await;
        // Last confirmed renewal started at 2.01 s (1 s after the first one's answer).
        let confirmed = t0 + 2010 * MS;
        assert_eq!(Instant::now(), confirmed + Duration::from_secs(4));
        assert_eq!(
            lost,
            Some(Lost::Expired {
                unconfirmed_for: Duration::from_secs(4)
            })
        );
        assert!(k.lost().is_cancelled());
        assert!(calls.load(Ordering::SeqCst) >= 4, "kept trying meanwhile");
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_hanging_past_the_deadline_is_cut_off_at_the_deadline() {
        let t0 = Instant::now();
        // The second renewal (at 2.01 s) is answered "renewed" only after 10 s.
        let (renewer, _) = Scripted::new([ok(), (Duration::from_secs(10), Renewal::Renewed)], None);
        let k = keeper();
        let lost = k.run(renewer).await;
        // Deadline: 4 s after the first renewal's start (1 s), not later.
        assert_eq!(Instant::now(), t0 + 5000 * MS);
        assert!(matches!(lost, Some(Lost::Expired { .. })), "{lost:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn gone_steps_down_at_once_and_exactly_once() {
        let t0 = Instant::now();
        let (renewer, calls) = Scripted::new([ok(), (5 * MS, Renewal::Gone)], Some(ok()));
        let k = keeper();
        let run = tokio::spawn({
            let k = k.clone();
            async move { k.run(renewer).await }
        });
        k.lost().cancelled().await;
        assert_eq!(
            Instant::now(),
            t0 + 2015 * MS,
            "at the answer, not at the deadline"
        );
        assert_eq!(run.await.expect("keeper task"), Some(Lost::Gone));
        assert_eq!(k.reason(), Some(&Lost::Gone));
        // The loop has ended: no renewal after the loss, however long we wait.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // A second step-down (e.g. a racing path) keeps the first reason.
        let again = k.step_down(Lost::Expired {
            unconfirmed_for: MS,
        });
        assert_eq!(again, Lost::Gone);
    }

    #[tokio::test(start_paused = true)]
    async fn a_confirmation_from_elsewhere_extends_the_claim() {
        let t0 = Instant::now();
        let (renewer, _) = Scripted::new([], Some((5 * MS, Renewal::Failed("down".into()))));
        let k = keeper();
        // An acquire that started at 3 s proved the claim valid then.
        let confirm = {
            let k = k.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                k.confirm(Instant::now());
            }
        };
        let (lost, ()) = tokio::join!(k.run(renewer), confirm);
        assert_eq!(Instant::now(), t0 + Duration::from_secs(7));
        assert!(matches!(lost, Some(Lost::Expired { .. })));
    }

    /// A backend's watch and release, recorded.
    #[derive(Clone, Default)]
    struct Recorded {
        taken: CancellationToken,
        released: Arc<AtomicUsize>,
        abandoned: Arc<AtomicUsize>,
    }

    #[async_trait::async_trait]
    impl Hold for Recorded {
        async fn watch(&self) -> String {
            self.taken.cancelled().await;
            "taken".to_owned()
        }
        async fn release(&self) -> Result<()> {
            self.released.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        async fn abandon(&self) {
            self.abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_leadership_ends_when_its_claim_is_lost_and_abandons_it() {
        let (renewer, _) = Scripted::new([], Some((5 * MS, Renewal::Gone)));
        let k = Keeper::start(renewer, Instant::now(), timings(), tracing::Span::none());
        let held = Recorded::default();
        let l = lead(7, k.clone(), held.clone(), tracing::Span::none());
        l.lost().cancelled().await;
        assert!(!l.is_held());
        assert!(l.resign().await.is_ok());
        assert_eq!(held.abandoned.load(Ordering::SeqCst), 1);
        assert_eq!(held.released.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_leadership_ends_when_the_backend_shows_the_claim_taken() {
        let (renewer, _) = Scripted::new([], Some(ok()));
        let k = Keeper::start(renewer, Instant::now(), timings(), tracing::Span::none());
        let held = Recorded::default();
        let l = lead(7, k.clone(), held.clone(), tracing::Span::none());
        held.taken.cancel();
        l.lost().cancelled().await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(k.stop.is_cancelled(), "renewals stop with the leadership");
        assert_eq!(held.abandoned.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn resigning_releases_the_claim_once() {
        let (renewer, _) = Scripted::new([], Some(ok()));
        let k = Keeper::start(renewer, Instant::now(), timings(), tracing::Span::none());
        let held = Recorded::default();
        let l = lead(7, k.clone(), held.clone(), tracing::Span::none());
        let lost = l.lost();
        assert!(l.resign().await.is_ok());
        assert!(lost.is_cancelled());
        assert!(!k.lost().is_cancelled());
        assert_eq!(held.released.load(Ordering::SeqCst), 1);
        assert_eq!(held.abandoned.load(Ordering::SeqCst), 0);
    }
}

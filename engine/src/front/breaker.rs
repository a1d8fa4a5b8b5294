//! A circuit breaker in front of the stock front: after `threshold`
//! consecutive failures the purchase path answers 503 at once for a
//! cooldown, then lets a call through again; one success closes it.
//!
//! The cooldown starts short (a sixteenth of the longest) and doubles with
//! every failed probe up to the longest: a Redis that restarts in 30 ms
//! serves purchases again after tens of milliseconds, not a whole cooldown
//! later, while a Redis that stays down is asked at most once per longest
//! cooldown. Lock-free: two atomics, read on every purchase.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

pub struct Breaker {
    threshold: u32,
    longest_ms: u64,
    failures: AtomicU32,
    /// Openings since the last success: the next cooldown's doublings.
    openings: AtomicU32,
    open_until_ms: AtomicU64,
}

/// The first cooldown is the longest divided by 2^FIRST_SHIFT.
const FIRST_SHIFT: u32 = 4;

impl Breaker {
    /// Opens after `threshold` consecutive failures, for at most `longest`.
    pub fn new(threshold: u32, longest: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            longest_ms: longest.as_millis() as u64,
            failures: AtomicU32::new(0),
            openings: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
        }
    }

    /// True when calls may go to the store at `now_ms`.
    pub fn allows(&self, now_ms: u64) -> bool {
        now_ms >= self.open_until_ms.load(Ordering::Relaxed)
    }

    pub fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            self.openings.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure; opens the breaker once the threshold is reached,
    /// and again, for twice as long, when a probe fails. Failures of calls
    /// that were in flight when it opened neither extend nor escalate it:
    /// a burst of concurrent calls failing together is one failure of the
    /// store, not many.
    pub fn record_failure(&self, now_ms: u64) {
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if failures < self.threshold || !self.allows(now_ms) {
            return;
        }
        let doublings = self
            .openings
            .fetch_add(1, Ordering::Relaxed)
            .min(FIRST_SHIFT);
        let cooldown = (self.longest_ms >> (FIRST_SHIFT - doublings)).max(1);
        self.open_until_ms
            .store(now_ms.saturating_add(cooldown), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_closes_on_success() {
        let b = Breaker::new(3, Duration::from_millis(1600));
        for _ in 0..2 {
            b.record_failure(0);
        }
        assert!(b.allows(0));
        b.record_failure(0);
        assert!(!b.allows(99), "open for a sixteenth of the longest");
        assert!(b.allows(100));
        b.record_failure(100);
        assert!(!b.allows(299), "a failed probe opens it for twice as long");
        b.record_failure(250);
        assert!(
            b.allows(300),
            "a call in flight failing late changes nothing"
        );
        for t in [300, 700, 1500, 3100] {
            b.record_failure(t);
        }
        assert!(!b.allows(3100 + 1599), "never longer than the longest");
        assert!(b.allows(3100 + 1600));
        b.record_success();
        b.record_failure(5000);
        assert!(b.allows(5000), "one success resets the count");
    }
}

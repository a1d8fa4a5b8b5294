//! A circuit breaker in front of the stock front: after `threshold`
//! consecutive failures the purchase path answers 503 at once for
//! `cooldown`, then lets calls through again; one success closes it.
//! Lock-free: two atomics, read on every purchase.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

pub struct Breaker {
    threshold: u32,
    cooldown_ms: u64,
    failures: AtomicU32,
    open_until_ms: AtomicU64,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cooldown_ms: cooldown.as_millis() as u64,
            failures: AtomicU32::new(0),
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
        }
    }

    /// Counts a failure; opens the breaker once the threshold is reached
    /// (and again after every failed probe while it stays reached).
    pub fn record_failure(&self, now_ms: u64) {
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if failures >= self.threshold {
            self.open_until_ms
                .store(now_ms.saturating_add(self.cooldown_ms), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_closes_on_success() {
        let b = Breaker::new(3, Duration::from_millis(1000));
        for _ in 0..2 {
            b.record_failure(0);
        }
        assert!(b.allows(0));
        b.record_failure(0);
        assert!(!b.allows(500));
        assert!(b.allows(1000));
        b.record_failure(1000);
        assert!(!b.allows(1500), "a failed probe opens it again");
        b.record_success();
        b.record_failure(3000);
        assert!(b.allows(3000), "one success resets the count");
    }
}

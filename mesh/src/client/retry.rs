//! When `MeshClient::call` sends an idempotent call again: which failures
//! are worth another attempt, how long to wait first, and the budget that
//! caps retries as a share of first attempts, so a struggling service gets
//! a little more traffic, never a multiple of it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::breaker::BreakerOpen;

/// True when another attempt of an idempotent call may succeed: the
/// endpoint was unavailable, the attempt ran out of time, the connection
/// failed, or every breaker was open.
pub(crate) fn retryable(status: &tonic::Status) -> bool {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => true,
        _ => transport_failure(status),
    }
}

/// True when `status` stands for a failure below gRPC (a connection error
/// or reset) rather than an answer of the service.
pub(crate) fn transport_failure(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<tonic::transport::Error>() || err.is::<BreakerOpen>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// The wait before retry number `retry` (0 for the first): `base` doubled
/// per earlier retry, drawn at random between half of it and all of it so
/// clients that failed together do not retry together.
pub(crate) fn backoff(base: Duration, retry: u32) -> Duration {
    let full = base.saturating_mul(1u32 << retry.min(16));
    let half = full / 2;
    let spread = (full - half).as_micros() as u64;
    if spread == 0 {
        return full;
    }
    half + Duration::from_micros(super::random_below(spread + 1))
}

/// Width of the window first attempts are counted over, in one-second slots.
const WINDOW_SECONDS: usize = 10;

/// Caps retries at `percent`% of the first attempts of the last 10 seconds,
/// plus `min_per_second` retries in every second (tower's `TpsBudget` has
/// the same shape; this one counts in whole calls, with no float).
pub(crate) struct RetryBudget {
    percent: u64,
    min_per_second: u32,
    epoch: Instant,
    slots: Mutex<[Slot; WINDOW_SECONDS]>,
}

#[derive(Clone, Copy, Default)]
struct Slot {
    /// The second (since `epoch`) this slot counts; older counts are stale.
    second: u64,
    first_attempts: u64,
    /// Retries paid for by first attempts.
    earned_retries: u64,
    /// Retries paid for by the per-second allowance.
    free_retries: u32,
}

impl RetryBudget {
    pub(crate) fn new(percent: u32, min_per_second: u32) -> Self {
        RetryBudget {
            percent: u64::from(percent),
            min_per_second,
            epoch: Instant::now(),
            slots: Mutex::new([Slot::default(); WINDOW_SECONDS]),
        }
    }

    /// Counts a first attempt.
    pub(crate) fn deposit(&self, now: Instant) {
        self.with_slots(now, |slots, at| slots[at].first_attempts += 1);
    }

    /// Takes one retry from the budget; false when it is spent.
    pub(crate) fn withdraw(&self, now: Instant) -> bool {
        self.with_slots(now, |slots, at| {
            if slots[at].free_retries < self.min_per_second {
                slots[at].free_retries += 1;
                return true;
            }
            let (firsts, earned) = slots.iter().fold((0, 0), |(f, e), s| {
                (f + s.first_attempts, e + s.earned_retries)
            });
            if (earned + 1) * 100 <= firsts * self.percent {
                slots[at].earned_retries += 1;
                true
            } else {
                false
            }
        })
    }

    /// Runs `f` on the window with the slot of `now`, after clearing slots
    /// that fell out of the window.
    fn with_slots<R>(&self, now: Instant, f: impl FnOnce(&mut [Slot], usize) -> R) -> R {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        // The lock guards a few counters and is never held across an await;
        // a poisoned lock still holds valid counts.
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for slot in slots.iter_mut() {
            if second.saturating_sub(slot.second) >= WINDOW_SECONDS as u64 {
                *slot = Slot::default();
            }
        }
        let at = (second % WINDOW_SECONDS as u64) as usize;
        if slots[at].second != second {
            slots[at] = Slot {
                second,
                ..Slot::default()
            };
        }
        f(&mut slots[..], at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(budget: &RetryBudget, now: Instant) -> u32 {
        let mut n = 0;
        while budget.withdraw(now) {
            n += 1;
            assert!(n < 100_000, "the budget never ran out");
        }
        n
    }

    #[test]
    fn retries_are_a_share_of_first_attempts_plus_a_small_allowance() {
        let budget = RetryBudget::new(20, 10);
        let t0 = budget.epoch;
        for _ in 0..100 {
            budget.deposit(t0);
        }
        assert_eq!(drain(&budget, t0), 10 + 20);
        // The next second brings a fresh allowance but no more earned retries.
        assert_eq!(drain(&budget, t0 + Duration::from_millis(1500)), 10);
        // More first attempts earn more retries.
        for _ in 0..100 {
            budget.deposit(t0 + Duration::from_secs(2));
        }
        assert_eq!(drain(&budget, t0 + Duration::from_secs(2)), 10 + 20);
        // Once the first attempts leave the window, only the allowance is left.
        assert_eq!(drain(&budget, t0 + Duration::from_secs(13)), 10);
        for _ in 0..10 {
            budget.deposit(t0 + Duration::from_secs(14));
        }
        assert_eq!(drain(&budget, t0 + Duration::from_secs(14)), 10 + 2);
    }

    #[test]
    fn a_zero_percent_budget_allows_the_allowance_only() {
        let budget = RetryBudget::new(0, 3);
        let t0 = budget.epoch;
        for _ in 0..1000 {
            budget.deposit(t0);
        }
        assert_eq!(drain(&budget, t0), 3);
    }

    #[test]
    fn backoff_doubles_with_jitter_within_bounds() {
        let base = Duration::from_millis(20);
        for retry in 0..4 {
            let full = base * (1 << retry);
            for _ in 0..50 {
                let b = backoff(base, retry);
                assert!(b >= full / 2 && b <= full, "retry {retry}: {b:?}");
            }
        }
        assert_eq!(backoff(Duration::ZERO, 3), Duration::ZERO);
        assert!(backoff(Duration::from_secs(60), 40) > Duration::ZERO);
    }
}

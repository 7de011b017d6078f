//! Retry timing: [`Backoff`], the bounded exponential delays between attempts of a request
//! whose failure is retriable (see `ClientError::is_retriable` and docs/grpc-api.md, "Talking
//! to a cluster").

use std::time::Duration;

/// First delay between attempts.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(25);
/// Largest delay between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_millis(400);
/// How long a client keeps retrying one request by default.
pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(15);

/// Delays that double from `initial` up to `max`, then stay there. Infinite: the caller
/// bounds the total time (the retry budget), not the count, because what matters to a caller
/// is how long a leader election may stall it.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Delays from `initial` doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            next: initial.min(max),
            max,
        }
    }
}

impl Default for Backoff {
    /// 25 ms, 50 ms, 100 ms, ... up to 400 ms (a failover takes a few seconds: retrying
    /// often keeps the client close behind it).
    fn default() -> Self {
        Self::new(INITIAL_BACKOFF, MAX_BACKOFF)
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        Some(d)
    }
}

/// `d` scaled by a factor in [0.5, 1]: clients that failed together (a leader died under
/// all of them) should not all come back in the same millisecond.
pub(crate) fn jitter(d: Duration) -> Duration {
    let f = 0.5 + rand::random::<f64>() / 2.0;
    d.mul_f64(f)
}

/// The delay before the next attempt, or None when it would end past the budget.
pub(crate) fn next_delay(
    backoff: &mut Backoff,
    elapsed: Duration,
    budget: Duration,
    immediate: bool,
) -> Option<Duration> {
    let d = if immediate {
        Duration::ZERO
    } else {
        jitter(backoff.next().unwrap_or(MAX_BACKOFF))
    };
    (elapsed + d < budget).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps() {
        let ms: Vec<u128> = Backoff::default().take(9).map(|d| d.as_millis()).collect();
        assert_eq!(ms, [25, 50, 100, 200, 400, 400, 400, 400, 400]);
    }

    #[test]
    fn initial_above_max_is_capped() {
        let mut b = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(b.next(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn default_budget_allows_a_slow_election() {
        // With full delays, 15 s buys 20 attempts: enough to ride out several seconds
        // without a leader.
        let mut spent = Duration::ZERO;
        let mut attempts = 1;
        for d in Backoff::default() {
            if spent + d >= DEFAULT_RETRY_BUDGET {
                break;
            }
            spent += d;
            attempts += 1;
        }
        assert!(attempts >= 15, "{attempts}");
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            let d = jitter(Duration::from_millis(100));
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(100));
        }
    }

    #[test]
    fn next_delay_respects_the_budget() {
        let mut b = Backoff::default();
        let budget = Duration::from_secs(1);
        assert!(next_delay(&mut b, Duration::ZERO, budget, false).is_some());
        assert_eq!(
            next_delay(&mut b, Duration::from_millis(10), budget, true),
            Some(Duration::ZERO)
        );
        assert_eq!(next_delay(&mut b, budget, budget, true), None);
        assert_eq!(
            next_delay(&mut b, Duration::ZERO, Duration::ZERO, false),
            None
        );
    }
}

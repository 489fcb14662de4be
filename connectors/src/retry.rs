//! The one retry policy: exponential backoff with jitter, capped, that
//! waits at least as long as a receiver's `Retry-After` asks.
//!
//! Every loop that tries again uses it: the action pipeline around each
//! connector, the Kubernetes connector on a conflict, and the daemon's
//! Kafka producers (audit records, dead letters).
//!
//! ```
//! use std::time::Duration;
//! use canaryd_connectors::retry::RetryPolicy;
//!
//! let policy = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(10));
//! let mut backoff = policy.backoff();
//! let first = backoff.next_delay(None); // 50 to 100 ms
//! assert!(first <= Duration::from_millis(100));
//! let told = backoff.next_delay(Some(Duration::from_secs(7))); // the receiver asked for 7 s
//! assert!(told >= Duration::from_secs(7));
//! ```

use std::time::{Duration, SystemTime};

/// How long to wait between attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first delay; it doubles after each attempt.
    pub initial: Duration,
    /// The longest delay backoff alone reaches (a `Retry-After` may ask
    /// for longer).
    pub max: Duration,
}

impl RetryPolicy {
    /// A policy starting at `initial` and doubling up to `max`; both at
    /// least 1 ms.
    pub fn new(initial: Duration, max: Duration) -> RetryPolicy {
        let floor = Duration::from_millis(1);
        let initial = initial.max(floor);
        RetryPolicy {
            initial,
            max: max.max(initial),
        }
    }

    /// A fresh sequence of delays, for one thing being tried.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            policy: *self,
            next: self.initial,
        }
    }
}

/// The delays of one thing being tried again and again.
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    next: Duration,
}

impl Backoff {
    /// How long to wait before the next attempt: the current delay scaled
    /// by a random factor in [0.5, 1], so that a fleet of retries does not
    /// arrive together, but never less than `retry_after`, the wait the
    /// other side asked for. The delay then doubles, up to the policy's
    /// maximum.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let jittered = self.next.mul_f64(0.5 + rand::random::<f64>() / 2.0);
        self.next = (self.next * 2).min(self.policy.max);
        jittered.max(retry_after.unwrap_or_default())
    }
}

/// A `Retry-After` header's value as a wait: a number of seconds, or an
/// HTTP date (RFC 9110) counted from `now`; a date in the past is no wait.
/// `None` when the value is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests panic on purpose

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delays_double_with_jitter_up_to_the_cap() {
        let policy = RetryPolicy::new(ms(100), ms(1_000));
        for _ in 0..200 {
            let mut b = policy.backoff();
            let mut ceiling = ms(100);
            for _ in 0..8 {
                let d = b.next_delay(None);
                assert!(
                    d >= ceiling / 2 && d <= ceiling,
                    "{d:?} outside {ceiling:?}/2.."
                );
                ceiling = (ceiling * 2).min(ms(1_000));
            }
        }
    }

    #[test]
    fn jitter_spreads_the_delays() {
        let policy = RetryPolicy::new(ms(1_000), ms(1_000));
        let delays: std::collections::BTreeSet<Duration> =
            (0..50).map(|_| policy.backoff().next_delay(None)).collect();
        assert!(delays.len() > 10, "{delays:?}");
    }

    #[test]
    fn retry_after_is_a_lower_bound_and_does_not_reset_the_backoff() {
        let policy = RetryPolicy::new(ms(100), ms(10_000));
        let mut b = policy.backoff();
        assert!(b.next_delay(Some(Duration::from_secs(7))) >= Duration::from_secs(7));
        // The backoff went on doubling underneath: 200 ms now, jittered.
        let d = b.next_delay(Some(ms(1)));
        assert!(d >= ms(100) && d <= ms(200), "{d:?}");
    }

    #[test]
    fn degenerate_policies_are_made_usable() {
        let policy = RetryPolicy::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(policy.initial, ms(1));
        assert_eq!(policy.max, ms(1));
        assert!(policy.backoff().next_delay(None) <= ms(1));
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2026 07:28:00 GMT").unwrap();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2026 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2026 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}

//! When a failed attempt is tried again, and when it is given up.

use std::time::{Duration, SystemTime};

use rand::Rng;

use crate::model::record::{Decision, Outcome};
use crate::store::Claimed;

/// When to try a failed call again: exponential backoff with full jitter, capped.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    /// Attempts in all, the first included; then the event fails. A guard against an event
    /// that keeps killing its process (every restart counts one); transient failures are
    /// bounded by `max_age`, so a GoHighLevel outage of hours only delays work.
    pub max_attempts: u32,
    /// An event still failing this long after it arrived fails (GoHighLevel's own retries of
    /// a webhook stop after about 70 minutes; a day is generous).
    pub max_age: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
            // About a day of retries at the 5-minute cap.
            max_attempts: 600,
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`; `Retry-After` wins when GoHighLevel sent one.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(d) = retry_after {
            return d.min(self.cap);
        }
        let exp = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)));
        let ceiling = exp.min(self.cap);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }

    /// When a group of a contact's events that failed is tried again: one time for all of
    /// them, from the most-tried one. (Each event drawing its own jittered time held the
    /// contact back until the latest of them, since a contact waits while any of its newer
    /// events does.)
    pub fn group_retry_at(&self, group: &[Claimed], retry_after: Option<Duration>) -> SystemTime {
        let attempt = group.iter().map(|c| c.attempt).max().unwrap_or(1);
        SystemTime::now() + self.delay(attempt, retry_after)
    }

    /// Sets a failed attempt's decision to `retry`, or to `failed` when the event is too old
    /// or has been tried too often.
    pub fn retry_or_give_up(&self, claimed: &Claimed, reason: String, d: &mut Decision) {
        let age = claimed.received_at.elapsed().unwrap_or_default();
        let (outcome, error) = if age > self.max_age {
            let age = humantime::format_duration(Duration::from_secs(age.as_secs()));
            let why = format!("gave up after {age} (the retry age limit): {reason}");
            (Outcome::Failed, why)
        } else if claimed.attempt >= self.max_attempts {
            let why = format!("gave up after {} attempts: {reason}", claimed.attempt);
            (Outcome::Failed, why)
        } else {
            (Outcome::Retry, reason)
        };
        d.outcome = outcome;
        d.error = Some(error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_is_capped_and_honours_retry_after() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            max_attempts: 5,
            max_age: Duration::from_secs(60),
        };
        for attempt in 1..10 {
            let d = p.delay(attempt, None);
            let ceiling =
                Duration::from_millis(100 * 2u64.pow(attempt - 1)).min(Duration::from_secs(1));
            assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
        }
        assert_eq!(
            p.delay(3, Some(Duration::from_millis(250))),
            Duration::from_millis(250)
        );
        assert_eq!(
            p.delay(3, Some(Duration::from_secs(60))),
            Duration::from_secs(1)
        );
    }
}

//! GoHighLevel's rate limits, per location: a budget in front of every call, and what the
//! answers' `X-RateLimit-*` headers and 429s say.
//!
//! The budget is a GCRA limiter (`governor`) per location. GoHighLevel counts requests in a
//! window (100 per 10 s); a GCRA with burst `b` and one request per `t` allows `b + W/t` in
//! any window `W`, so the quota is shaped to `b = n/10` and `t = W/(n - b - 1)`: at most
//! `n - 1` in any window (one spare for network jitter), about 90 % of the limit sustained.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::ids::LocationId;

/// `N/duration`, e.g. `100/10s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Duration,
}

impl FromStr for RateLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<RateLimit, String> {
        let bad = || format!("`{s}` is not a rate such as 100/10s");
        let (n, per) = s.trim().split_once('/').ok_or_else(bad)?;
        let requests: u32 = n.trim().parse().map_err(|_| bad())?;
        let per = humantime::parse_duration(per.trim()).map_err(|_| bad())?;
        if requests < 2 || per.is_zero() {
            return Err(format!("`{s}`: at least 2 requests over a non-zero time"));
        }
        Ok(RateLimit { requests, per })
    }
}

/// Shapes `n` requests per `window` into a GCRA quota that never exceeds `n - 1` per window.
fn quota(n: u32, window: Duration) -> Quota {
    let burst = (n / 10).max(1);
    let steady = n.saturating_sub(burst + 1).max(1);
    let period = (window / steady).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

/// What a response said about the location's budget.
#[derive(Clone, Copy, Debug, Default)]
pub struct Observed {
    pub too_many: bool,
    pub retry_after: Option<Duration>,
    pub remaining: Option<u64>,
    pub interval: Option<Duration>,
    pub daily_remaining: Option<u64>,
}

#[derive(Debug)]
pub struct Limits {
    window: RateLimit,
    burst: DefaultKeyedRateLimiter<LocationId>,
    daily: DefaultKeyedRateLimiter<LocationId>,
    /// Locations GoHighLevel told to wait (429, or no requests remaining), until when.
    blocked: Mutex<HashMap<LocationId, Instant>>,
    clock: DefaultClock,
}

impl Limits {
    pub fn new(window: RateLimit, per_day: u32) -> Limits {
        Limits {
            window,
            burst: RateLimiter::keyed(quota(window.requests, window.per)),
            daily: RateLimiter::keyed(quota(per_day.max(2), Duration::from_secs(86_400))),
            blocked: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one request from the location's budget, or says how long to wait for one.
    pub fn acquire(&self, location: &LocationId) -> Result<(), Duration> {
        let now = Instant::now();
        if let Ok(mut blocked) = self.blocked.lock() {
            match blocked.get(location) {
                Some(until) if *until > now => return Err(*until - now),
                Some(_) => {
                    blocked.remove(location);
                }
                None => {}
            }
        }
        self.burst
            .check_key(location)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))?;
        self.daily
            .check_key(location)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Slows the location down when GoHighLevel says its budget is spent.
    pub fn observe(&self, location: &LocationId, seen: &Observed) {
        let wait = if seen.too_many {
            Some(
                seen.retry_after
                    .or(seen.interval)
                    .unwrap_or(self.window.per),
            )
        } else if seen.remaining == Some(0) {
            Some(seen.interval.unwrap_or(self.window.per))
        } else if seen.daily_remaining == Some(0) {
            Some(Duration::from_secs(3600))
        } else {
            None
        };
        if let (Some(wait), Ok(mut blocked)) = (wait, self.blocked.lock()) {
            let until = Instant::now() + wait;
            let slot = blocked.entry(location.clone()).or_insert(until);
            *slot = (*slot).max(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(
            "100/10s".parse(),
            Ok(RateLimit {
                requests: 100,
                per: Duration::from_secs(10)
            })
        );
        assert!("100".parse::<RateLimit>().is_err());
        assert!("x/10s".parse::<RateLimit>().is_err());
        assert!("1/1s".parse::<RateLimit>().is_err());
    }

    #[test]
    fn a_burst_never_exceeds_the_window_and_locations_are_independent() {
        let limits = Limits::new(
            "100/10s".parse().unwrap_or(RateLimit {
                requests: 100,
                per: Duration::from_secs(10),
            }),
            200_000,
        );
        let a = LocationId::new("A");
        let granted = (0..200).filter(|_| limits.acquire(&a).is_ok()).count();
        assert!((10..=100).contains(&granted), "{granted}");
        let wait = limits.acquire(&a).err().unwrap_or_default();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        assert!(
            limits.acquire(&LocationId::new("B")).is_ok(),
            "B has its own budget"
        );
    }

    #[test]
    fn a_429_blocks_the_location_for_retry_after() {
        let limits = Limits::new(
            RateLimit {
                requests: 100,
                per: Duration::from_secs(10),
            },
            200_000,
        );
        let a = LocationId::new("A");
        limits.observe(
            &a,
            &Observed {
                too_many: true,
                retry_after: Some(Duration::from_secs(5)),
                ..Observed::default()
            },
        );
        let wait = limits.acquire(&a).err().unwrap_or_default();
        assert!(wait > Duration::from_secs(4), "{wait:?}");
        limits.observe(
            &LocationId::new("B"),
            &Observed {
                remaining: Some(3),
                ..Observed::default()
            },
        );
        assert!(limits.acquire(&LocationId::new("B")).is_ok());
    }
}

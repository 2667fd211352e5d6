//! GoHighLevel's rate limits, per location: a [`Budget`] in front of every call, and what the
//! answers' `X-RateLimit-*` headers and 429s say ([`Observed`]).
//!
//! One instance keeps its budget in memory ([`LocalBudget`]); replicas on one PostgreSQL
//! database share one there (`store::pg_budget`), behind the same trait. Both are a GCRA per
//! location (here from `governor`). GoHighLevel counts requests in a
//! window (100 per 10 s); a GCRA with burst `b` and one request per `t` allows `b + W/t` in
//! any window `W`, so the quota is shaped to `b = n/20` and `t = W/(n - b - 1)`: at most
//! `n - 1` in any window (one spare for network jitter), about 94 % of the limit sustained
//! (measured with `autofollow-bench limit`, see BENCHMARKS.md).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::model::ids::LocationId;

/// The requests a location may still make. Every call takes one first.
#[async_trait]
pub trait Budget: Send + Sync + std::fmt::Debug {
    /// Takes one request from the location's budget, or says how long to wait for one.
    async fn acquire(&self, location: &LocationId) -> Result<(), Duration>;

    /// Holds the location back for `wait` (GoHighLevel said its budget is spent).
    async fn hold(&self, location: &LocationId, wait: Duration);

    /// The window of the limit, for a wait GoHighLevel did not state.
    fn window(&self) -> Duration;

    /// Requests per second the budget allows a location, sustained (for estimates).
    fn per_second(&self) -> f64;

    /// Slows the location down when GoHighLevel says its budget is spent.
    async fn observe(&self, location: &LocationId, seen: &Observed) {
        if let Some(wait) = seen.wait(self.window()) {
            self.hold(location, wait).await;
        }
    }
}

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

impl RateLimit {
    /// The sustained rate [`shape`] allows, in requests per second.
    pub fn per_second(&self) -> f64 {
        let (_, period) = shape(self.requests, self.per);
        1.0 / period.as_secs_f64().max(1e-9)
    }
}

/// Shapes `n` requests per `window` into a GCRA burst and emission period that never exceed
/// `n - 1` per window: at most `n - 1` in any window (one spare for network jitter), about
/// 94 % of the limit sustained.
pub fn shape(n: u32, window: Duration) -> (u32, Duration) {
    let burst = (n / 20).max(1);
    let steady = n.saturating_sub(burst + 1).max(1);
    (burst, (window / steady).max(Duration::from_nanos(1)))
}

fn quota(n: u32, window: Duration) -> Quota {
    let (burst, period) = shape(n, window);
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

impl Observed {
    /// How long the location must wait, when the answer says its budget is spent: a 429's
    /// `Retry-After` (else the interval, else the window), no requests remaining in the window
    /// (the interval, else the window), or none left today (an hour).
    pub fn wait(&self, window: Duration) -> Option<Duration> {
        if self.too_many {
            Some(self.retry_after.or(self.interval).unwrap_or(window))
        } else if self.remaining == Some(0) {
            Some(self.interval.unwrap_or(window))
        } else if self.daily_remaining == Some(0) {
            Some(Duration::from_secs(3600))
        } else {
            None
        }
    }
}

/// The budget of one instance, in memory.
#[derive(Debug)]
pub struct LocalBudget {
    window: RateLimit,
    burst: DefaultKeyedRateLimiter<LocationId>,
    daily: DefaultKeyedRateLimiter<LocationId>,
    /// Locations GoHighLevel told to wait (429, or no requests remaining), until when.
    blocked: Mutex<HashMap<LocationId, Instant>>,
    clock: DefaultClock,
}

impl LocalBudget {
    pub fn new(window: RateLimit, per_day: u32) -> LocalBudget {
        LocalBudget {
            window,
            burst: RateLimiter::keyed(quota(window.requests, window.per)),
            daily: RateLimiter::keyed(quota(per_day.max(2), Duration::from_secs(86_400))),
            blocked: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
        }
    }
}

#[async_trait]
impl Budget for LocalBudget {
    async fn acquire(&self, location: &LocationId) -> Result<(), Duration> {
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

    async fn hold(&self, location: &LocationId, wait: Duration) {
        if let Ok(mut blocked) = self.blocked.lock() {
            let until = Instant::now() + wait;
            let slot = blocked.entry(location.clone()).or_insert(until);
            *slot = (*slot).max(until);
        }
    }

    fn window(&self) -> Duration {
        self.window.per
    }

    fn per_second(&self) -> f64 {
        self.window.per_second()
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

    #[tokio::test]
    async fn a_burst_never_exceeds_the_window_and_locations_are_independent() {
        let limits = LocalBudget::new(
            "100/10s".parse().unwrap_or(RateLimit {
                requests: 100,
                per: Duration::from_secs(10),
            }),
            200_000,
        );
        let a = LocationId::parse("A").unwrap();
        let mut granted = 0;
        for _ in 0..200 {
            granted += usize::from(limits.acquire(&a).await.is_ok());
        }
        assert!((5..=100).contains(&granted), "{granted}");
        let wait = limits.acquire(&a).await.err().unwrap_or_default();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        assert!(
            limits
                .acquire(&LocationId::parse("B").unwrap())
                .await
                .is_ok(),
            "B has its own budget"
        );
    }

    #[tokio::test]
    async fn a_429_blocks_the_location_for_retry_after() {
        let limits = LocalBudget::new(
            RateLimit {
                requests: 100,
                per: Duration::from_secs(10),
            },
            200_000,
        );
        let a = LocationId::parse("A").unwrap();
        limits
            .observe(
                &a,
                &Observed {
                    too_many: true,
                    retry_after: Some(Duration::from_secs(5)),
                    ..Observed::default()
                },
            )
            .await;
        let wait = limits.acquire(&a).await.err().unwrap_or_default();
        assert!(wait > Duration::from_secs(4), "{wait:?}");
        limits
            .observe(
                &LocationId::parse("B").unwrap(),
                &Observed {
                    remaining: Some(3),
                    ..Observed::default()
                },
            )
            .await;
        assert!(
            limits
                .acquire(&LocationId::parse("B").unwrap())
                .await
                .is_ok()
        );
    }
}

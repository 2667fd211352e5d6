//! GoHighLevel's rate limits, per location: a budget in front of every call, and what the
//! answers' `X-RateLimit-*` headers and 429s say.
//!
//! The budget is a GCRA limiter (`governor`) per location. GoHighLevel counts requests in a
//! window (100 per 10 s); a GCRA with burst `b` and one request per `t` allows `b + W/t` in
//! any window `W`, so the quota is shaped to `b = n/20` and `t = W/(n - b - 1)`: at most
//! `n - 1` in any window (one spare for network jitter), about 94 % of the limit sustained
//! (measured with `autofollow-bench limit`, see BENCHMARKS.md).

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

/// Shapes `n` requests per `window` into a GCRA burst and emission period that never exceed
/// `n - 1` per window.
fn shape(n: u32, window: Duration) -> (u32, Duration) {
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

#[derive(Debug)]
pub struct Limits {
    window: RateLimit,
    burst: DefaultKeyedRateLimiter<LocationId>,
    daily: DefaultKeyedRateLimiter<LocationId>,
    /// Locations GoHighLevel told to wait (429, or no requests remaining), until when.
    blocked: Mutex<HashMap<LocationId, Instant>>,
    clock: DefaultClock,
    /// Several replicas on one PostgreSQL database share the budget there instead.
    shared: Option<sqlx::PgPool>,
    per_day: u32,
}

impl Limits {
    pub fn new(window: RateLimit, per_day: u32) -> Limits {
        Limits {
            window,
            burst: RateLimiter::keyed(quota(window.requests, window.per)),
            daily: RateLimiter::keyed(quota(per_day.max(2), Duration::from_secs(86_400))),
            blocked: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
            shared: None,
            per_day: per_day.max(2),
        }
    }

    /// The same budget, kept in PostgreSQL (tables `rate_budget`, `rate_blocks`) and shared
    /// by every replica on the database: the limit holds for their sum.
    pub fn shared(window: RateLimit, per_day: u32, pool: sqlx::PgPool) -> Limits {
        Limits {
            shared: Some(pool),
            ..Limits::new(window, per_day)
        }
    }

    /// Takes one request from the location's budget, or says how long to wait for one.
    pub async fn acquire(&self, location: &LocationId) -> Result<(), Duration> {
        match &self.shared {
            Some(pool) => match self.acquire_shared(pool, location).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take from the shared rate-limit budget; waiting");
                    Err(Duration::from_secs(1))
                }
            },
            None => self.acquire_local(location),
        }
    }

    /// A GCRA per location and quota in one transaction on the database's clock: the window
    /// and the daily quota are both taken, or neither.
    async fn acquire_shared(
        &self,
        pool: &sqlx::PgPool,
        location: &LocationId,
    ) -> Result<Result<(), Duration>, sqlx::Error> {
        let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 4);
        let mut tx = pool.begin().await?;
        let now: i64 =
            sqlx::query_scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint")
                .fetch_one(&mut *tx)
                .await?;
        let blocked: Option<i64> =
            sqlx::query_scalar("SELECT until_us FROM rate_blocks WHERE location_id = $1")
                .bind(location.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(until) = blocked.filter(|u| *u > now) {
            tx.rollback().await?;
            return Ok(Err(Duration::from_micros(
                u64::try_from(until - now).unwrap_or(0),
            )));
        }
        let quotas = [
            ("window", shape(self.window.requests, self.window.per)),
            ("day", shape(self.per_day, Duration::from_secs(86_400))),
        ];
        for (name, (burst, period)) in quotas {
            let (t, tolerance) = (micros(period), micros(period) * i64::from(burst - 1));
            let taken: Option<i64> = sqlx::query_scalar(
                "INSERT INTO rate_budget (location_id, quota, tat) VALUES ($1, $2, $3 + $4)
                 ON CONFLICT (location_id, quota) DO UPDATE
                     SET tat = GREATEST(rate_budget.tat, $3) + $4
                     WHERE GREATEST(rate_budget.tat, $3) - $3 <= $5
                 RETURNING tat",
            )
            .bind(location.as_str())
            .bind(name)
            .bind(now)
            .bind(t)
            .bind(tolerance)
            .fetch_optional(&mut *tx)
            .await?;
            if taken.is_none() {
                let tat: i64 = sqlx::query_scalar(
                    "SELECT tat FROM rate_budget WHERE location_id = $1 AND quota = $2",
                )
                .bind(location.as_str())
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
                tx.rollback().await?;
                let wait = tat.max(now) - now - tolerance;
                return Ok(Err(Duration::from_micros(
                    u64::try_from(wait).unwrap_or(0).max(1),
                )));
            }
        }
        tx.commit().await?;
        Ok(Ok(()))
    }

    fn acquire_local(&self, location: &LocationId) -> Result<(), Duration> {
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
    pub async fn observe(&self, location: &LocationId, seen: &Observed) {
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
        if let (Some(wait), Some(pool)) = (wait, &self.shared) {
            let blocked = sqlx::query(
                "INSERT INTO rate_blocks (location_id, until_us)
                 VALUES ($1, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint + $2)
                 ON CONFLICT (location_id) DO UPDATE SET until_us = GREATEST(rate_blocks.until_us, excluded.until_us)",
            )
            .bind(location.as_str())
            .bind(i64::try_from(wait.as_micros()).unwrap_or(i64::MAX / 4))
            .execute(pool)
            .await;
            if let Err(e) = blocked {
                tracing::warn!(error = %e, "cannot record the location's rate-limit block in the database");
            }
            return;
        }
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

    #[tokio::test]
    async fn a_burst_never_exceeds_the_window_and_locations_are_independent() {
        let limits = Limits::new(
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
        let limits = Limits::new(
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

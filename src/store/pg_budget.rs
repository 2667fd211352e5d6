//! The request budget shared by every replica on one PostgreSQL database (tables
//! `rate_budget`, `rate_blocks`): the limit holds for their sum, whatever their number. The
//! same GCRA as [`LocalBudget`](crate::ghl::budget::LocalBudget), on the database's clock, so
//! the replicas' clocks do not matter.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;

use crate::ghl::budget::{Budget, RateLimit, shape};
use crate::model::ids::LocationId;

#[derive(Debug)]
pub struct PgBudget {
    pool: PgPool,
    window: RateLimit,
    per_day: u32,
}

impl PgBudget {
    pub fn new(pool: PgPool, window: RateLimit, per_day: u32) -> PgBudget {
        PgBudget {
            pool,
            window,
            per_day: per_day.max(2),
        }
    }

    /// The window and the daily quota are both taken in one transaction, or neither.
    ///
    /// The transaction's commit does not wait for the WAL to reach the disk
    /// (`synchronous_commit` off for it alone): a request taken is a few bytes of state whose
    /// loss in a crash of PostgreSQL lets at most the requests of the last moments be taken
    /// again, while waiting for the disk made every call wait for an fsync of its own
    /// (measured with `autofollow-bench e2e --postgres`, BENCHMARKS.md).
    async fn take(&self, location: &LocationId) -> Result<Result<(), Duration>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let (_, now): (String, i64) = sqlx::query_as(
            "SELECT set_config('synchronous_commit', 'off', true),
                    (extract(epoch FROM clock_timestamp()) * 1000000)::bigint",
        )
        .fetch_one(&mut *tx)
        .await?;
        let blocked: Option<i64> =
            sqlx::query_scalar("SELECT until_us FROM rate_blocks WHERE location_id = $1")
                .bind(location.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(until) = blocked.filter(|u| *u > now) {
            tx.rollback().await?;
            return Ok(Err(micros_to_duration(until - now)));
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
                return Ok(Err(micros_to_duration(wait).max(Duration::from_micros(1))));
            }
        }
        tx.commit().await?;
        Ok(Ok(()))
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 4)
}

fn micros_to_duration(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

#[async_trait]
impl Budget for PgBudget {
    async fn acquire(&self, location: &LocationId) -> Result<(), Duration> {
        match self.take(location).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take from the shared rate-limit budget; waiting");
                Err(Duration::from_secs(1))
            }
        }
    }

    async fn hold(&self, location: &LocationId, wait: Duration) {
        let blocked = sqlx::query(
            "INSERT INTO rate_blocks (location_id, until_us)
             VALUES ($1, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint + $2)
             ON CONFLICT (location_id) DO UPDATE SET until_us = GREATEST(rate_blocks.until_us, excluded.until_us)",
        )
        .bind(location.as_str())
        .bind(micros(wait))
        .execute(&self.pool)
        .await;
        if let Err(e) = blocked {
            tracing::warn!(error = %e, "cannot record the location's rate-limit block in the database");
        }
    }

    fn window(&self) -> Duration {
        self.window.per
    }

    fn per_second(&self) -> f64 {
        self.window.per_second()
    }
}

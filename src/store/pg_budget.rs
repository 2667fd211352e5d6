//! The request budget shared by every replica on one PostgreSQL database (tables
//! `rate_budget`, `rate_blocks`): the limit holds for their sum, whatever their number. The
//! same GCRA as [`LocalBudget`](crate::ghl::budget::LocalBudget), on the database's clock, so
//! the replicas' clocks do not matter.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use crate::ghl::budget::{Budget, RateLimit, shape};
use crate::model::ids::LocationId;

/// Requests answered by one transaction at most.
const MAX_BATCH: usize = 1024;
/// The quotas' names in `rate_budget`, in the order [`Gcra`]s are kept.
const QUOTAS: [&str; 2] = ["day", "window"];

#[derive(Debug)]
pub struct PgBudget {
    pool: PgPool,
    window: RateLimit,
    takes: mpsc::Sender<Take>,
}

struct Take {
    location: LocationId,
    answer: oneshot::Sender<Result<(), Duration>>,
}

impl PgBudget {
    /// Starts the task that takes requests on the current Tokio runtime.
    pub fn new(pool: PgPool, window: RateLimit, per_day: u32) -> PgBudget {
        let quotas = [
            Gcra::new(shape(per_day.max(2), Duration::from_secs(86_400))),
            Gcra::new(shape(window.requests, window.per)),
        ];
        let (takes, queue) = mpsc::channel(MAX_BATCH);
        tokio::spawn(run(pool.clone(), quotas, queue));
        PgBudget {
            pool,
            window,
            takes,
        }
    }
}

/// One quota: a request per `t` µs, `tolerance` µs ahead of it allowed (the burst).
#[derive(Clone, Copy, Debug)]
struct Gcra {
    t: i64,
    tolerance: i64,
}

impl Gcra {
    fn new((burst, period): (u32, Duration)) -> Gcra {
        let t = micros(period);
        Gcra {
            t,
            tolerance: t.saturating_mul(i64::from(burst.max(1) - 1)),
        }
    }
}

/// What one location gets of what it asked: requests granted, the quotas' new theoretical
/// arrival times, and the wait for the next request when not all were granted.
#[derive(Debug, PartialEq, Eq)]
struct Grant {
    granted: u32,
    tats: [i64; 2],
    wait: Duration,
}

/// Grants as many of `wanted` requests at `now` as both quotas allow, exactly as that many
/// single takes one after the other would (tested).
fn admit(wanted: u32, now: i64, tats: [i64; 2], quotas: &[Gcra; 2]) -> Grant {
    let base = tats.map(|tat| tat.max(now));
    let mut granted = wanted;
    for (q, b) in quotas.iter().zip(base) {
        let ahead = q.tolerance - (b - now);
        let fits = if ahead < 0 { 0 } else { ahead / q.t + 1 };
        granted = granted.min(u32::try_from(fits).unwrap_or(u32::MAX));
    }
    let n = i64::from(granted);
    let next = |i: usize| base[i] + n * quotas[i].t - quotas[i].tolerance - now;
    let wait = next(0).max(next(1)).max(1);
    Grant {
        granted,
        tats: [0, 1].map(|i| {
            if n == 0 {
                tats[i]
            } else {
                base[i] + n * quotas[i].t
            }
        }),
        wait: micros_to_duration(wait),
    }
}

async fn run(pool: PgPool, quotas: [Gcra; 2], mut queue: mpsc::Receiver<Take>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let takes = std::mem::take(&mut batch);
        let mut wanted: BTreeMap<&str, u32> = BTreeMap::new();
        for take in &takes {
            *wanted.entry(take.location.as_str()).or_default() += 1;
        }
        let mut grants = match grant(&pool, &quotas, &wanted).await {
            Ok(grants) => grants,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take from the shared rate-limit budget; waiting");
                HashMap::new()
            }
        };
        // In arrival order: the first requests of a location are the ones granted.
        for take in takes {
            let answer = match grants.get_mut(take.location.as_str()) {
                Some(g) if g.granted > 0 => {
                    g.granted -= 1;
                    Ok(())
                }
                Some(g) => Err(g.wait),
                None => Err(Duration::from_secs(1)),
            };
            let _ = take.answer.send(answer);
        }
    }
}

/// One transaction for every location asked for, however many requests: each location's
/// quotas are locked (in location order, so replicas cannot deadlock), as many requests as
/// both allow are granted, and a location held back by GoHighLevel gets nothing.
///
/// The commit does not wait for the WAL to reach the disk (`synchronous_commit` off for
/// this transaction alone): a request taken is a few bytes of state whose loss in a crash
/// of PostgreSQL lets at most the requests of the last moments be taken again, while
/// waiting for the disk made every call wait for an fsync (BENCHMARKS.md).
async fn grant(
    pool: &PgPool,
    quotas: &[Gcra; 2],
    wanted: &BTreeMap<&str, u32>,
) -> Result<HashMap<String, Grant>, sqlx::Error> {
    let locations: Vec<&str> = wanted.keys().copied().collect();
    let mut tx = pool.begin().await?;
    let mut state = read(&mut tx, &locations).await?;
    if state.tats.len() < locations.len() {
        sqlx::query(
            "INSERT INTO rate_budget (location_id, quota, tat)
             SELECT l, q, 0 FROM unnest($1::text[]) AS l, unnest($2::text[]) AS q
             ON CONFLICT (location_id, quota) DO NOTHING",
        )
        .bind(&locations)
        .bind(&QUOTAS[..])
        .execute(&mut *tx)
        .await?;
        state = read(&mut tx, &locations).await?;
    }
    let mut grants = HashMap::new();
    for (&location, &n) in wanted {
        let tats = state.tats.get(location).copied().unwrap_or([0, 0]);
        let grant = match state.blocked.get(location).filter(|u| **u > state.now) {
            Some(until) => Grant {
                granted: 0,
                tats,
                wait: micros_to_duration(until - state.now),
            },
            None => admit(n, state.now, tats, quotas),
        };
        grants.insert(location.to_owned(), grant);
    }
    write(&mut tx, &grants).await?;
    tx.commit().await?;
    Ok(grants)
}

/// The locked quotas of the locations and their blocks, on the database's clock (µs).
struct Quotas {
    now: i64,
    tats: HashMap<String, [i64; 2]>,
    blocked: HashMap<String, i64>,
}

async fn read(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    locations: &[&str],
) -> Result<Quotas, sqlx::Error> {
    let rows: Vec<(i64, String, String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, b.location_id, b.quota,
                b.tat, (SELECT until_us FROM rate_blocks r WHERE r.location_id = b.location_id)
         FROM rate_budget b, (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed
         WHERE b.location_id = ANY($1)
         ORDER BY b.location_id, b.quota
         FOR UPDATE OF b",
    )
    .bind(locations)
    .fetch_all(&mut **tx)
    .await?;
    let mut quotas = Quotas {
        now: rows.iter().map(|r| r.0).max().unwrap_or(0),
        tats: HashMap::new(),
        blocked: HashMap::new(),
    };
    let mut halves: HashMap<String, (Option<i64>, Option<i64>)> = HashMap::new();
    for (_, location, quota, tat, until) in rows {
        let half = halves.entry(location.clone()).or_default();
        match quota.as_str() {
            "day" => half.0 = Some(tat),
            _ => half.1 = Some(tat),
        }
        if let Some(until) = until {
            quotas.blocked.insert(location, until);
        }
    }
    for (location, half) in halves {
        if let (Some(day), Some(window)) = half {
            quotas.tats.insert(location, [day, window]);
        }
    }
    Ok(quotas)
}

/// Stores the quotas of the locations granted something.
async fn write(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    grants: &HashMap<String, Grant>,
) -> Result<(), sqlx::Error> {
    let (mut locations, mut quotas, mut tats) = (vec![], vec![], vec![]);
    for (location, g) in grants.iter().filter(|(_, g)| g.granted > 0) {
        for (quota, tat) in QUOTAS.iter().zip(g.tats) {
            locations.push(location.as_str());
            quotas.push(*quota);
            tats.push(tat);
        }
    }
    if locations.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE rate_budget b SET tat = t.tat
         FROM unnest($1::text[], $2::text[], $3::bigint[]) AS t(location_id, quota, tat)
         WHERE b.location_id = t.location_id AND b.quota = t.quota",
    )
    .bind(locations)
    .bind(quotas)
    .bind(tats)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 4)
}

fn micros_to_duration(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

#[async_trait]
impl Budget for PgBudget {
    /// Waits for the task's answer: requests asked for together (by every call waiting on
    /// this replica) are taken in one transaction.
    async fn acquire(&self, location: &LocationId) -> Result<(), Duration> {
        let (answer, answered) = oneshot::channel();
        let take = Take {
            location: location.clone(),
            answer,
        };
        if self.takes.send(take).await.is_err() {
            return Err(Duration::from_secs(1));
        }
        answered.await.unwrap_or(Err(Duration::from_secs(1)))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Taking `n` at once grants what `n` single takes would, leaves the same state, and
    /// says when the first one refused would be granted.
    #[test]
    fn taking_many_at_once_is_taking_them_one_by_one() {
        let quotas = [
            Gcra::new(shape(50, Duration::from_secs(86_400))),
            Gcra::new(shape(100, Duration::from_secs(10))),
        ];
        for (start, wanted) in [([0, 0], 9), ([0, 0], 3), ([0, 40_000_000], 2), ([0, 0], 60)] {
            let now = 10_000_000;
            let together = admit(wanted, now, start, &quotas);
            let (mut tats, mut granted, mut refused) = (start, 0, None);
            for _ in 0..wanted {
                let one = admit(1, now, tats, &quotas);
                granted += one.granted;
                tats = one.tats;
                if one.granted == 0 && refused.is_none() {
                    refused = Some(one.wait);
                }
            }
            assert_eq!((together.granted, together.tats), (granted, tats));
            if let Some(wait) = refused {
                assert_eq!(together.wait, wait, "{start:?} {wanted}");
            }
            // The first refused request is granted once its wait has passed.
            let later = now + micros(together.wait);
            assert_eq!(admit(1, later, together.tats, &quotas).granted, 1);
        }
    }
}

//! The PostgreSQL store, for several replicas on one database. The same contract as the
//! SQLite store; claims use `FOR UPDATE SKIP LOCKED`, so replicas never take the same event,
//! and only a contact's oldest unfinished event can be claimed, so no two replicas work on one
//! contact at once. A replica that dies leaves leases that expire; another replica then
//! resumes its events.

mod backfills;
mod finish;
mod history;
mod installations;
mod pools;
mod queue;
mod state;

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};

use super::*;

#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    /// Webhooks are stored in batches (group commit).
    intake: super::pg_intake::Intake,
    /// So are finished groups.
    finisher: finish::Finisher,
    away: AwayCache,
}

impl PgStore {
    /// Connects and migrates. `max_connections` bounds this process's share of the server.
    pub async fn open(url: &str) -> Result<PgStore, StoreError> {
        let pool = connect(url, 8).await?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        // Intake has connections of its own: a busy worker never keeps a webhook's commit
        // waiting for one (measured: a faster worker halved intake on the shared pool).
        let intake = super::pg_intake::Intake::start(connect(url, 2).await?);
        let finisher = finish::Finisher::start(pool.clone());
        Ok(PgStore {
            pool,
            intake,
            finisher,
            away: AwayCache::default(),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// A pool on `url` (a `postgres://` URL; `?options=-c search_path=…` selects a schema).
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    let options = PgConnectOptions::from_str(url)?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await?)
}

const CLAIMED_COLUMNS: &str = "events.id, events.kind, events.location_id, events.contact_id, events.body, events.attempts, events.received_at";

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// One transaction of four statements however many contacts: the heads, all their later
    /// events, and what is known of each contact (two reads).
    async fn claim_groups(
        &self,
        owner: &str,
        limit: u32,
        batch: u32,
        lease: Duration,
        settle_max: Option<Duration>,
    ) -> Result<Vec<ClaimedGroup>, StoreError> {
        let mut tx = self.pool.begin().await?;
        queue::fixed_plans(&mut tx).await?;
        let heads = queue::claim_heads(&mut tx, owner, limit, lease, settle_max).await?;
        if heads.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let rest = batch.saturating_sub(1);
        let later = queue::claim_rests(&mut tx, owner, &heads, rest, lease).await?;
        let keys: Vec<(String, String)> = heads
            .iter()
            .map(|h| (h.location_id.clone(), h.contact_id.clone()))
            .collect();
        let mut known = state::snapshots(&mut tx, &keys).await?;
        tx.commit().await?;
        let mut by_contact: HashMap<(String, String), Vec<Claimed>> = HashMap::new();
        for event in later {
            let key = (event.location_id.clone(), event.contact_id.clone());
            by_contact.entry(key).or_default().push(event);
        }
        let groups = heads.into_iter().zip(&keys).map(|(head, key)| {
            let later = by_contact.remove(key).unwrap_or_default();
            ClaimedGroup::new(head, later, known.remove(key).unwrap_or_default())
        });
        Ok(groups.collect())
    }
}

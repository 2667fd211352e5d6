//! The backfills of the PostgreSQL store.

use super::*;

fn now_ms() -> i64 {
    millis(SystemTime::now())
}

#[async_trait]
impl Backfills for PgStore {
    async fn start_backfill(
        &self,
        location: &LocationId,
        since: Option<i64>,
        dry_run: bool,
    ) -> Result<Backfill, StoreError> {
        let mut tx = self.pool.begin().await?;
        // One start at a time per location, across replicas.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('backfill:' || $1))")
            .bind(location.as_str())
            .execute(&mut *tx)
            .await?;
        let running: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM backfills WHERE state = 'running' AND location_id = $1",
        )
        .bind(location.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let id = match running {
            Some(id) => id,
            None => {
                sqlx::query_scalar(
                    "INSERT INTO backfills (location_id, since, dry_run, phase, state, started_at, updated_at)
                     VALUES ($1, $2, $3, 'contacts', 'running', $4, $4) RETURNING id",
                )
                .bind(location.as_str())
                .bind(since)
                .bind(dry_run)
                .bind(now_ms())
                .fetch_one(&mut *tx)
                .await?
            }
        };
        tx.commit().await?;
        self.backfill(id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("a backfill just written is gone".into()))
    }

    async fn backfill(&self, id: i64) -> Result<Option<Backfill>, StoreError> {
        let sql = format!("SELECT {BACKFILL_COLUMNS} FROM backfills WHERE id = $1");
        let row: Option<BackfillRow> = sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(BackfillRow::into_backfill).transpose()
    }

    async fn backfills(&self, limit: u32) -> Result<Vec<Backfill>, StoreError> {
        let sql = format!("SELECT {BACKFILL_COLUMNS} FROM backfills ORDER BY id DESC LIMIT $1");
        let rows: Vec<BackfillRow> = sqlx::query_as(&sql)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(BackfillRow::into_backfill).collect()
    }

    async fn claim_backfill(
        &self,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<Backfill>, StoreError> {
        let now = now_ms();
        let id: Option<i64> = sqlx::query_scalar(
            "UPDATE backfills SET lease_owner = $1, lease_expires_at = $2
             WHERE id = (SELECT id FROM backfills WHERE state = 'running'
                           AND (lease_expires_at IS NULL OR lease_expires_at < $3)
                         ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING id",
        )
        .bind(owner)
        .bind(lease_until(now, lease))
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        match id {
            Some(id) => self.backfill(id).await,
            None => Ok(None),
        }
    }

    async fn advance_backfill(
        &self,
        id: i64,
        owner: &str,
        lease: Duration,
        step: &BackfillStep,
        tasks: Vec<NewEvent>,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE backfills SET phase = $3, cursor = $4, total = COALESCE($5, total),
                 seen = seen + $6, changed = changed + $7, queued = queued + $8,
                 report = COALESCE($9, report), updated_at = $10, lease_expires_at = $11,
                 state = CASE WHEN $12 THEN 'done' ELSE state END,
                 finished_at = CASE WHEN $12 THEN $10 ELSE NULL END
             WHERE id = $1 AND lease_owner = $2 AND state = 'running' AND lease_expires_at >= $10",
        )
        .bind(id)
        .bind(owner)
        .bind(&step.phase)
        .bind(&step.cursor)
        .bind(step.total)
        .bind(step.seen)
        .bind(step.changed)
        .bind(i64::try_from(tasks.len()).unwrap_or(i64::MAX))
        .bind(&step.report)
        .bind(now)
        .bind(lease_until(now, lease))
        .bind(step.done)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Ok(false);
        }
        for e in &tasks {
            sqlx::query(
                "INSERT INTO events (kind, event_type, location_id, contact_id, opportunity_id, webhook_id, body, received_at, available_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, GREATEST($8, $9))",
            )
            .bind(e.kind.as_str())
            .bind(&e.event_type)
            .bind(e.location_id.as_str())
            .bind(e.contact_id.as_str())
            .bind(e.opportunity_id.as_ref().map(|o| o.as_str()))
            .bind(&e.webhook_id)
            .bind(&e.body)
            .bind(now)
            .bind(millis(e.available_at))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn fail_backfill(&self, id: i64, owner: &str, error: &str) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE backfills SET state = 'failed', error = $3, updated_at = $4, finished_at = $4,
                 lease_owner = NULL, lease_expires_at = NULL
             WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
        )
        .bind(id)
        .bind(owner)
        .bind(error)
        .bind(now_ms())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(updated > 0)
    }
}

//! The backfills of the SQLite store.

use super::*;

#[async_trait]
impl Backfills for SqliteStore {
    async fn start_backfill(
        &self,
        location: &LocationId,
        since: Option<i64>,
        dry_run: bool,
    ) -> Result<Backfill, StoreError> {
        let location = location.as_str().to_owned();
        let id = self
            .writer
            .write(move |conn| {
                let running: Option<i64> = conn
                    .prepare_cached(
                        "SELECT id FROM backfills WHERE state = 'running' AND location_id = ?1",
                    )?
                    .query_row([&location], |r| r.get(0))
                    .optional()?;
                if let Some(id) = running {
                    return Ok(id);
                }
                let now = now_ms();
                let id = conn
                    .prepare_cached(
                        "INSERT INTO backfills (location_id, since, dry_run, phase, state, started_at, updated_at)
                         VALUES (?1, ?2, ?3, 'contacts', 'running', ?4, ?4) RETURNING id",
                    )?
                    .query_row(rusqlite::params![location, since, dry_run, now], |r| r.get(0))?;
                Ok(id)
            })
            .await?;
        self.backfill(id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("a backfill just written is gone".into()))
    }

    async fn backfill(&self, id: i64) -> Result<Option<Backfill>, StoreError> {
        let sql = format!("SELECT {BACKFILL_COLUMNS} FROM backfills WHERE id = ?");
        let row: Option<BackfillRow> = sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(BackfillRow::into_backfill).transpose()
    }

    async fn backfills(&self, limit: u32) -> Result<Vec<Backfill>, StoreError> {
        let sql = format!("SELECT {BACKFILL_COLUMNS} FROM backfills ORDER BY id DESC LIMIT ?");
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
        let owner = owner.to_owned();
        let id: Option<i64> = self
            .writer
            .write(move |conn| {
                let now = now_ms();
                let id = conn
                    .prepare_cached(
                        "UPDATE backfills SET lease_owner = ?1, lease_expires_at = ?2
                         WHERE id = (SELECT id FROM backfills WHERE state = 'running'
                                       AND (lease_expires_at IS NULL OR lease_expires_at < ?3)
                                     ORDER BY id LIMIT 1)
                         RETURNING id",
                    )?
                    .query_row(
                        rusqlite::params![owner, lease_until(now, lease), now],
                        |r| r.get(0),
                    )
                    .optional()?;
                Ok(id)
            })
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
        let (owner, step) = (owner.to_owned(), step.clone());
        self.writer
            .write(move |conn| {
                let now = now_ms();
                let queued = i64::try_from(tasks.len()).unwrap_or(i64::MAX);
                let updated = conn
                    .prepare_cached(
                        "UPDATE backfills SET phase = ?3, cursor = ?4, total = COALESCE(?5, total),
                             seen = seen + ?6, changed = changed + ?7, queued = queued + ?8,
                             report = COALESCE(?9, report), updated_at = ?10,
                             lease_expires_at = ?11,
                             state = CASE WHEN ?12 THEN 'done' ELSE state END,
                             finished_at = CASE WHEN ?12 THEN ?10 ELSE NULL END
                         WHERE id = ?1 AND lease_owner = ?2 AND state = 'running'
                           AND lease_expires_at >= ?10",
                    )?
                    .execute(rusqlite::params![
                        id,
                        owner,
                        step.phase,
                        step.cursor,
                        step.total,
                        step.seen,
                        step.changed,
                        queued,
                        step.report,
                        now,
                        lease_until(now, lease),
                        step.done,
                    ])?;
                if updated == 0 {
                    return Ok(false);
                }
                for task in &tasks {
                    super::super::sqlite_writer::insert_one(conn, task, Duration::ZERO)?;
                }
                Ok(true)
            })
            .await
    }

    async fn fail_backfill(&self, id: i64, owner: &str, error: &str) -> Result<bool, StoreError> {
        let (owner, error) = (owner.to_owned(), error.to_owned());
        self.writer
            .write(move |conn| {
                let now = now_ms();
                let updated = conn
                    .prepare_cached(
                        "UPDATE backfills SET state = 'failed', error = ?3, updated_at = ?4,
                             finished_at = ?4, lease_owner = NULL, lease_expires_at = NULL
                         WHERE id = ?1 AND lease_owner = ?2 AND state = 'running'",
                    )?
                    .execute(rusqlite::params![id, owner, error, now])?;
                Ok(updated > 0)
            })
            .await
    }
}

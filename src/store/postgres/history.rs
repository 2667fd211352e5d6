//! The history of the PostgreSQL store.

use super::*;

#[async_trait]
impl History for PgStore {
    async fn event(&self, id: i64) -> Result<Option<EventRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, event_type, location_id, contact_id, status, attempts, last_error FROM events WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(record).transpose()
    }

    async fn decisions(&self, event_id: i64) -> Result<Vec<Decision>, StoreError> {
        let rows = sqlx::query(
            "SELECT attempt, matched, plan, calls, outcome, error, dry_run, batch, rules_version FROM decisions WHERE event_id = $1 ORDER BY id",
        )
        .bind(event_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decision).collect()
    }

    async fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventSummary>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, event_type, location_id, contact_id, status, attempts, last_error, received_at FROM events
             WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR contact_id = $2)
               AND ($3::bigint IS NULL OR received_at >= $3)
               AND ($5::text IS NULL OR location_id = $5) AND ($6::text IS NULL OR event_type = $6)
             ORDER BY id DESC LIMIT $4",
        )
        .bind(filter.status.map(EventStatus::as_str))
        .bind(filter.contact.as_ref().map(|c| c.as_str()))
        .bind(filter.since.map(millis))
        .bind(i64::from(if filter.limit == 0 { u32::MAX } else { filter.limit }))
        .bind(filter.location.as_ref().map(LocationId::as_str))
        .bind(filter.event_type.as_deref())
        .fetch_all(&self.pool)
        .await?;
        // The latest decision of each listed event, in one query.
        let ids: Vec<i64> = rows.iter().map(|r| r.get("id")).collect();
        let latest = sqlx::query(
            "SELECT DISTINCT ON (event_id) event_id, attempt, matched, plan, calls, outcome, error, dry_run, batch, rules_version
             FROM decisions WHERE event_id = ANY($1) ORDER BY event_id, id DESC",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        summaries(&rows, &latest)
    }

    async fn received_since(
        &self,
        since: i64,
        location: Option<&LocationId>,
        limit: u32,
    ) -> Result<Vec<(i64, BodyKind, String)>, StoreError> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT id, kind, body FROM events
             WHERE received_at >= $1 AND kind <> 'task' AND ($2 IS NULL OR location_id = $2)
             ORDER BY id LIMIT $3",
        )
        .bind(since)
        .bind(location.map(LocationId::as_str))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, kind, body)| (id, BodyKind::parse(&kind), body))
            .collect())
    }

    async fn event_body(&self, id: i64) -> Result<Option<StoredBody>, StoreError> {
        let row: Option<(String, String, i64)> =
            sqlx::query_as("SELECT kind, body, received_at FROM events WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(kind, body, received_at)| StoredBody {
            kind: BodyKind::parse(&kind),
            body,
            received_at,
        }))
    }

    async fn activity(&self, since: i64, bucket: i64) -> Result<Vec<Activity>, StoreError> {
        let received: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT received_at / $2 * $2, count(*), count(*) FILTER (WHERE status = 'failed')
             FROM events WHERE received_at >= $1 AND kind <> 'task' GROUP BY 1",
        )
        .bind(since)
        .bind(bucket.max(1))
        .fetch_all(&self.pool)
        .await?;
        let calls: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT created_at / $2 * $2, sum(jsonb_array_length(calls::jsonb))::bigint FROM decisions
             WHERE created_at >= $1 GROUP BY 1",
        )
        .bind(since)
        .bind(bucket.max(1))
        .fetch_all(&self.pool)
        .await?;
        Ok(crate::store::activity(received, calls))
    }

    async fn history(
        &self,
        contact: &ContactId,
    ) -> Result<Vec<(EventSummary, Vec<Decision>)>, StoreError> {
        let filter = EventFilter {
            contact: Some(contact.clone()),
            ..EventFilter::default()
        };
        let mut events = self.list_events(&filter).await?;
        events.reverse();
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            let decisions = self.decisions(e.event.id).await?;
            out.push((e, decisions));
        }
        Ok(out)
    }

    async fn erase_contact(&self, contact: &ContactId) -> Result<Erased, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut run = async |sql: &str| -> Result<u64, StoreError> {
            Ok(sqlx::query(sql)
                .bind(contact.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected())
        };
        let decisions = run(
            "DELETE FROM decisions WHERE event_id IN (SELECT id FROM events WHERE contact_id = $1)",
        )
        .await?;
        let mut states = run(
            "DELETE FROM opportunity_state WHERE (location_id, opportunity_id) IN
                 (SELECT location_id, opportunity_id FROM events
                  WHERE contact_id = $1 AND opportunity_id IS NOT NULL)",
        )
        .await?;
        states += run(
            "DELETE FROM assignees WHERE (kind = 'contact' AND record_id = $1)
                 OR (kind = 'opportunity' AND (location_id, record_id) IN
                     (SELECT location_id, opportunity_id FROM events
                      WHERE contact_id = $1 AND opportunity_id IS NOT NULL))",
        )
        .await?;
        let events = run("DELETE FROM events WHERE contact_id = $1").await?;
        states += run("DELETE FROM contact_state WHERE contact_id = $1").await?;
        states += run("DELETE FROM known_followers WHERE contact_id = $1").await?;
        states += run("DELETE FROM owned_followers WHERE contact_id = $1").await?;
        states += run("DELETE FROM pool_picks WHERE contact_id = $1").await?;
        tx.commit().await?;
        Ok(Erased {
            events,
            decisions,
            states,
        })
    }

    async fn prune(&self, before: SystemTime, dedup_window: Duration) -> Result<u64, StoreError> {
        let cutoff = millis(before);
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM decisions WHERE event_id IN
                 (SELECT id FROM events WHERE status IN ('done', 'failed', 'skipped') AND finished_at < $1)",
        )
        .bind(cutoff)
        .execute(&mut *tx)
        .await?;
        let events = sqlx::query(
            "DELETE FROM events WHERE status IN ('done', 'failed', 'skipped') AND finished_at < $1",
        )
        .bind(cutoff)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let seen_cutoff = millis(SystemTime::now())
            - i64::try_from(dedup_window.as_millis()).unwrap_or(i64::MAX / 2);
        sqlx::query("DELETE FROM webhook_ids WHERE received_at < $1")
            .bind(seen_cutoff)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM location_holds WHERE held_until < $1")
            .bind(millis(SystemTime::now()))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(events)
    }
}

//! The history of the SQLite store.

use super::*;

#[async_trait]
impl History for SqliteStore {
    async fn event(&self, id: i64) -> Result<Option<EventRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, event_type, location_id, contact_id, status, attempts, last_error FROM events WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(record).transpose()
    }

    async fn decisions(&self, event_id: i64) -> Result<Vec<Decision>, StoreError> {
        let rows = sqlx::query(
            "SELECT attempt, matched, plan, calls, outcome, error, dry_run, batch, rules_version FROM decisions WHERE event_id = ? ORDER BY id",
        )
        .bind(event_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decision).collect()
    }

    async fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventSummary>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, event_type, location_id, contact_id, status, attempts, last_error, received_at FROM events
             WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR contact_id = ?2) AND (?3 IS NULL OR received_at >= ?3)
               AND (?5 IS NULL OR location_id = ?5) AND (?6 IS NULL OR event_type = ?6)
             ORDER BY id DESC LIMIT ?4",
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
            "SELECT d.event_id, d.attempt, d.matched, d.plan, d.calls, d.outcome, d.error, d.dry_run, d.batch, d.rules_version
             FROM decisions d JOIN json_each(?1) listed ON d.event_id = listed.value
             WHERE d.id = (SELECT max(id) FROM decisions WHERE event_id = d.event_id)",
        )
        .bind(serde_json::to_string(&ids).map_err(|e| StoreError::Corrupt(e.to_string()))?)
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
             WHERE received_at >= ?1 AND kind <> 'task' AND (?2 IS NULL OR location_id = ?2)
             ORDER BY id LIMIT ?3",
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
            sqlx::query_as("SELECT kind, body, received_at FROM events WHERE id = ?1")
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
            "SELECT received_at / ?2 * ?2, count(*), sum(status = 'failed') FROM events
             WHERE received_at >= ?1 AND kind <> 'task' GROUP BY 1",
        )
        .bind(since)
        .bind(bucket.max(1))
        .fetch_all(&self.pool)
        .await?;
        let calls: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT created_at / ?2 * ?2, sum(json_array_length(calls)) FROM decisions
             WHERE created_at >= ?1 GROUP BY 1",
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
        let contact = contact.as_str().to_owned();
        self.writer
            .write(move |conn| {
                let decisions = conn.execute(
                    "DELETE FROM decisions WHERE event_id IN (SELECT id FROM events WHERE contact_id = ?1)",
                    [&contact],
                )?;
                let mut states = conn.execute(
                    "DELETE FROM opportunity_state WHERE (location_id, opportunity_id) IN
                         (SELECT location_id, opportunity_id FROM events
                          WHERE contact_id = ?1 AND opportunity_id IS NOT NULL)",
                    [&contact],
                )?;
                states += conn.execute(
                    "DELETE FROM assignees WHERE (kind = 'contact' AND record_id = ?1)
                         OR (kind = 'opportunity' AND (location_id, record_id) IN
                             (SELECT location_id, opportunity_id FROM events
                              WHERE contact_id = ?1 AND opportunity_id IS NOT NULL))",
                    [&contact],
                )?;
                let events = conn.execute("DELETE FROM events WHERE contact_id = ?1", [&contact])?;
                states += conn.execute("DELETE FROM contact_state WHERE contact_id = ?1", [&contact])?;
                states +=
                    conn.execute("DELETE FROM known_followers WHERE contact_id = ?1", [&contact])?;
                states +=
                    conn.execute("DELETE FROM owned_followers WHERE contact_id = ?1", [&contact])?;
                states += conn.execute("DELETE FROM pool_picks WHERE contact_id = ?1", [&contact])?;
                Ok(Erased {
                    events: events as u64,
                    decisions: decisions as u64,
                    states: states as u64,
                })
            })
            .await
    }

    async fn prune(&self, before: SystemTime, dedup_window: Duration) -> Result<u64, StoreError> {
        let cutoff = millis(before);
        self.writer
            .write(move |conn| {
                conn.execute(
                    "DELETE FROM decisions WHERE event_id IN
                         (SELECT id FROM events WHERE status IN ('done', 'failed', 'skipped') AND finished_at < ?1)",
                    [cutoff],
                )?;
                let events = conn.execute(
                    "DELETE FROM events WHERE status IN ('done', 'failed', 'skipped') AND finished_at < ?1",
                    [cutoff],
                )?;
                let seen_cutoff =
                    now_ms() - i64::try_from(dedup_window.as_millis()).unwrap_or(i64::MAX / 2);
                conn.execute(
                    "DELETE FROM webhook_ids WHERE received_at < ?1",
                    [seen_cutoff],
                )?;
                conn.execute(
                    "DELETE FROM location_holds WHERE held_until < ?1",
                    [now_ms()],
                )?;
                Ok(events as u64)
            })
            .await
    }
}

//! The queue of the SQLite store.

use super::*;

#[async_trait]
impl Queue for SqliteStore {
    async fn insert_event(
        &self,
        event: NewEvent,
        dedup_window: Duration,
    ) -> Result<Inserted, StoreError> {
        self.writer.insert(event, dedup_window).await
    }

    async fn location_queue(&self, location: &LocationId) -> Result<(u64, u64), StoreError> {
        let (due, tasks): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT SUM(CASE WHEN kind <> 'task' AND available_at <= ?2 THEN 1 ELSE 0 END),
                    SUM(CASE WHEN kind = 'task' THEN 1 ELSE 0 END)
             FROM events WHERE status = 'pending' AND location_id = ?1",
        )
        .bind(location.as_str())
        .bind(millis(SystemTime::now()))
        .fetch_one(&self.pool)
        .await?;
        let count = |n: Option<i64>| u64::try_from(n.unwrap_or(0)).unwrap_or(0);
        Ok((count(due), count(tasks)))
    }

    async fn claim_within(
        &self,
        owner: &str,
        limit: u32,
        lease: Duration,
        settle_max: Option<Duration>,
    ) -> Result<Vec<Claimed>, StoreError> {
        let owner = owner.to_owned();
        self.writer
            .write(move |conn| claim_heads(conn, &owner, limit, lease, settle_max))
            .await
    }

    async fn claim_rest(
        &self,
        owner: &str,
        first: &Claimed,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let (owner, first) = (owner.to_owned(), first.clone());
        self.writer
            .write(move |conn| claim_after(conn, &owner, &first, limit, lease))
            .await
    }

    async fn finish_all(
        &self,
        events: &[(&Claimed, &Decision, &NewState)],
    ) -> Result<bool, StoreError> {
        let finishes = events
            .iter()
            .map(|(event, decision, state)| Finish::new(event, decision, state))
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.writer
            .write(move |conn| {
                let now = now_ms();
                // All or nothing: every lease is checked before anything is written (nobody
                // else writes while the writer's transaction runs).
                for f in &finishes {
                    let held = conn
                        .prepare_cached(
                            "SELECT 1 FROM events WHERE id = ?1 AND lease_owner = ?2 AND status = 'pending'",
                        )?
                        .exists((f.id, &f.owner))?;
                    if !held {
                        return Ok(false);
                    }
                }
                for f in &finishes {
                    conn.prepare_cached(
                        "UPDATE events SET status = ?1, lease_owner = NULL, lease_expires_at = NULL, last_error = ?2, finished_at = ?3
                         WHERE id = ?4",
                    )?
                    .execute((f.decision.status(), &f.decision.error, now, f.id))?;
                    insert_decision(conn, &f.decision, f.id, now)?;
                    if let Some((location, contact, tags)) = &f.tags {
                        conn.prepare_cached(
                            "INSERT INTO contact_state (location_id, contact_id, tags, updated_at) VALUES (?1, ?2, ?3, ?4)
                             ON CONFLICT (location_id, contact_id) DO UPDATE SET tags = excluded.tags, updated_at = excluded.updated_at",
                        )?
                        .execute((location, contact, tags, now))?;
                    }
                    if let Some((location, opportunity, stage)) = &f.stage {
                        conn.prepare_cached(
                            "INSERT INTO opportunity_state (location_id, opportunity_id, stage, updated_at) VALUES (?1, ?2, ?3, ?4)
                             ON CONFLICT (location_id, opportunity_id) DO UPDATE SET stage = excluded.stage, updated_at = excluded.updated_at",
                        )?
                        .execute((location, opportunity, stage, now))?;
                    }
                    if let Some((location, (kind, record, user))) = &f.assignee {
                        conn.prepare_cached(
                            "INSERT INTO assignees (location_id, kind, record_id, user_id, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
                             ON CONFLICT (location_id, kind, record_id) DO UPDATE SET user_id = excluded.user_id, updated_at = excluded.updated_at",
                        )?
                        .execute((location, kind, record, user, now))?;
                    }
                    if let Some(ledger) = &f.ledger {
                        write_ledger(conn, ledger, f.id, now)?;
                    }
                    if let Some((location, contact, followers)) = &f.followers {
                        conn.prepare_cached(
                            "INSERT INTO known_followers (location_id, contact_id, followers, seen_at) VALUES (?1, ?2, ?3, ?4)
                             ON CONFLICT (location_id, contact_id) DO UPDATE SET followers = excluded.followers, seen_at = excluded.seen_at",
                        )?
                        .execute((location, contact, followers, now))?;
                    }
                }
                Ok(true)
            })
            .await
    }

    async fn retry_at(
        &self,
        event: &Claimed,
        at: SystemTime,
        decision: &Decision,
    ) -> Result<bool, StoreError> {
        let (id, owner, at, decision) = (
            event.id,
            event.lease_owner.clone(),
            millis(at),
            DecisionRow::new(decision)?,
        );
        self.writer
            .write(move |conn| release(conn, id, &owner, Some(at), &decision))
            .await
    }

    async fn defer(&self, event: &Claimed, at: SystemTime) -> Result<bool, StoreError> {
        let (id, owner, location, at) = (
            event.id,
            event.lease_owner.clone(),
            event.location_id.as_str().to_owned(),
            millis(at),
        );
        self.writer
            .write(move |conn| {
                let now = now_ms();
                // The deferred event keeps its `available_at`, and so its place at the head of
                // the queue (it was claimed for being due first).
                let updated = conn
                    .prepare_cached(
                        "UPDATE events SET lease_owner = NULL, lease_expires_at = NULL, attempts = MAX(attempts - 1, 0)
                         WHERE id = ?1 AND lease_owner = ?2 AND status = 'pending'",
                    )?
                    .execute((id, &owner))?;
                if updated == 0 {
                    return Ok(false);
                }
                let held: Option<i64> = conn
                    .prepare_cached("SELECT held_until FROM location_holds WHERE location_id = ?1")?
                    .query_row([&location], |r| r.get(0))
                    .optional()?;
                conn.prepare_cached(
                    "INSERT INTO location_holds (location_id, held_until) VALUES (?1, ?2)
                     ON CONFLICT (location_id) DO UPDATE SET held_until = MAX(held_until, excluded.held_until)",
                )?
                .execute((&location, at))?;
                if super::moves_the_queue(held, now, at) {
                    conn.prepare_cached(
                        "UPDATE events SET available_at = ?1
                         WHERE status = 'pending' AND location_id = ?2 AND available_at <= ?3
                           AND (lease_expires_at IS NULL OR lease_expires_at < ?3) AND id <> ?4",
                    )?
                    .execute((at, &location, now, id))?;
                }
                Ok(true)
            })
            .await
    }

    async fn extend(&self, owner: &str, ids: &[i64], lease: Duration) -> Result<u64, StoreError> {
        let ids = to_json(&ids)?;
        let owner = owner.to_owned();
        self.writer
            .write(move |conn| {
                let updated = conn
                    .prepare_cached(
                        "UPDATE events SET lease_expires_at = ?1
                         WHERE id IN (SELECT value FROM json_each(?3)) AND lease_owner = ?2
                           -- `+`: look the ids up, do not walk every pending event.
                           AND +status = 'pending'",
                    )?
                    .execute((lease_until(now_ms(), lease), &owner, &ids))?;
                Ok(updated as u64)
            })
            .await
    }

    async fn release(&self, owner: &str) -> Result<u64, StoreError> {
        let owner = owner.to_owned();
        self.writer
            .write(move |conn| {
                let updated = conn
                    .prepare_cached("UPDATE events SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = ?1")?
                    .execute([&owner])?;
                conn.prepare_cached("UPDATE backfills SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = ?1")?
                    .execute([&owner])?;
                Ok(updated as u64)
            })
            .await
    }

    async fn release_all(&self) -> Result<u64, StoreError> {
        self.writer
            .write(|conn| {
                let updated = conn.execute(
                    "UPDATE events SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner IS NOT NULL",
                    (),
                )?;
                // A backfill a crashed run was walking: this run takes it on.
                conn.execute(
                    "UPDATE backfills SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner IS NOT NULL",
                    (),
                )?;
                // A refresh a crashed run left half done: whoever asks next refreshes.
                conn.execute(
                    "UPDATE installations SET refresh_owner = NULL, refresh_until = NULL WHERE refresh_owner IS NOT NULL",
                    (),
                )?;
                Ok(updated as u64)
            })
            .await
    }

    async fn replay(&self, ids: &[i64]) -> Result<u64, StoreError> {
        let ids = ids.to_vec();
        self.writer
            .write(move |conn| {
                let now = now_ms();
                let mut queued = 0;
                for id in ids {
                    queued += conn
                        .prepare_cached(
                            "UPDATE events SET status = 'pending', available_at = ?1, attempts = 0, finished_at = NULL,
                                    lease_owner = NULL, lease_expires_at = NULL
                             WHERE id = ?2 AND (lease_expires_at IS NULL OR lease_expires_at < ?1)",
                        )?
                        .execute((now, id))? as u64;
                    conn.prepare_cached(
                        "DELETE FROM token_failures WHERE location_id = (SELECT location_id FROM events WHERE id = ?1)",
                    )?
                    .execute([id])?;
                }
                Ok(queued)
            })
            .await
    }

    async fn park(&self, event: &Claimed, decision: &Decision) -> Result<bool, StoreError> {
        let (id, owner, decision) = (
            event.id,
            event.lease_owner.clone(),
            DecisionRow::new(decision)?,
        );
        self.writer
            .write(move |conn| release(conn, id, &owner, None, &decision))
            .await
    }

    async fn parked_locations(&self) -> Result<Vec<LocationId>, StoreError> {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT location_id FROM events WHERE status = 'parked'")
                .fetch_all(&self.pool)
                .await?;
        Ok(stored_ids(rows.into_iter().map(|l| (l, ())))
            .into_iter()
            .map(|(l, ())| l)
            .collect())
    }

    async fn resume_location(&self, location: &LocationId) -> Result<u64, StoreError> {
        let location = location.as_str().to_owned();
        self.writer
            .write(move |conn| {
                let resumed = conn
                    .prepare_cached(
                        "UPDATE events SET status = 'pending', available_at = ?1 WHERE status = 'parked' AND location_id = ?2",
                    )?
                    .execute((now_ms(), &location))?;
                conn.prepare_cached("DELETE FROM token_failures WHERE location_id = ?1")?
                    .execute([&location])?;
                Ok(resumed as u64)
            })
            .await
    }

    async fn queue_stats(&self) -> Result<QueueStats, StoreError> {
        let row = sqlx::query(
            "SELECT
                (SELECT COUNT(*) FROM events WHERE status IN ('pending', 'parked')) AS pending,
                (SELECT MIN(received_at) FROM events WHERE status IN ('pending', 'parked')) AS oldest,
                (SELECT COUNT(*) FROM events WHERE status = 'failed') AS failed",
        )
        .fetch_one(&self.pool)
        .await?;
        let count = |name: &str| u64::try_from(row.get::<i64, _>(name)).unwrap_or(0);
        Ok(QueueStats {
            pending: count("pending"),
            oldest_pending: row.get::<Option<i64>, _>("oldest").map(from_millis),
            failed: count("failed"),
        })
    }
}

/// Leases up to `limit` heads of contacts' queues that are due (see [`Queue::claim_within`]).
pub(super) fn claim_heads(
    conn: &Connection,
    owner: &str,
    limit: u32,
    lease: Duration,
    settle_max: Option<Duration>,
) -> Result<Vec<Claimed>, StoreError> {
    let now = now_ms();
    let mut stmt = conn.prepare_cached(
        "UPDATE events SET lease_owner = ?1, lease_expires_at = ?2, attempts = attempts + 1
         WHERE id IN (
             SELECT e.id FROM events e
             WHERE e.status = 'pending' AND e.available_at <= ?3
               AND (e.lease_expires_at IS NULL OR e.lease_expires_at < ?3)
               -- Its location's budget is not spent.
               AND NOT EXISTS (
                   SELECT 1 FROM location_holds h
                   WHERE h.location_id = e.location_id AND h.held_until > ?3)
               -- Its contact has no earlier unfinished event.
               AND NOT EXISTS (
                   SELECT 1 FROM events p
                   WHERE p.status IN ('pending', 'parked') AND p.location_id = e.location_id
                     AND p.contact_id = e.contact_id AND p.id < e.id)
               -- Settle: the contact waits while any of its newer webhooks does,
               -- unless it has waited the longest a contact may (?5).
               AND (e.received_at <= ?5 OR NOT EXISTS (
                   SELECT 1 FROM events n
                   WHERE n.status = 'pending' AND n.location_id = e.location_id
                     AND n.contact_id = e.contact_id AND n.id > e.id
                     -- `+`: probe the contact's index, not every settling event.
                     AND +n.available_at > ?3))
             ORDER BY e.available_at, e.id
             LIMIT ?4)
         RETURNING id, kind, location_id, contact_id, body, attempts, received_at",
    )?;
    let params = (
        owner,
        lease_until(now, lease),
        now,
        i64::from(limit),
        settled_by(now, settle_max),
    );
    claimed_rows(&mut stmt, params, owner)
}

/// Whether the contact has any unfinished event after `first`: one probe of its index, where
/// [`claim_after`]'s update costs far more (measured: an eighth of the writer's time when
/// most contacts have a single event).
pub(super) fn has_later(conn: &Connection, first: &Claimed) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM events
             WHERE status = 'pending' AND location_id = ?1 AND contact_id = ?2 AND id > ?3",
        )?
        .exists((&first.location_id, &first.contact_id, first.id))?)
}

/// Leases the contact's later due events after `first` (see [`Queue::claim_rest`]).
pub(super) fn claim_after(
    conn: &Connection,
    owner: &str,
    first: &Claimed,
    limit: u32,
    lease: Duration,
) -> Result<Vec<Claimed>, StoreError> {
    let now = now_ms();
    let mut stmt = conn.prepare_cached(
        "UPDATE events SET lease_owner = ?5, lease_expires_at = ?6, attempts = attempts + 1
         WHERE id IN (
             SELECT id FROM events
             WHERE status = 'pending' AND location_id = ?1 AND contact_id = ?2 AND id > ?3
               AND available_at <= ?4 AND (lease_expires_at IS NULL OR lease_expires_at < ?4)
               -- Never jump over one of the contact's events that cannot be taken now.
               AND id < COALESCE((
                   SELECT MIN(id) FROM events
                   WHERE status = 'pending' AND location_id = ?1 AND contact_id = ?2 AND id > ?3
                     AND (available_at > ?4 OR lease_expires_at >= ?4)), 9223372036854775807)
             ORDER BY id
             LIMIT ?7)
         RETURNING id, kind, location_id, contact_id, body, attempts, received_at",
    )?;
    let params = (
        &first.location_id,
        &first.contact_id,
        first.id,
        now,
        owner,
        lease_until(now, lease),
        i64::from(limit),
    );
    claimed_rows(&mut stmt, params, owner)
}

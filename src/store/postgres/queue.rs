//! The queue of the PostgreSQL store.

use super::*;

#[async_trait]
impl Queue for PgStore {
    async fn insert_event(
        &self,
        e: NewEvent,
        dedup_window: Duration,
    ) -> Result<Inserted, StoreError> {
        self.intake.insert(e, dedup_window).await
    }

    async fn location_queue(&self, location: &LocationId) -> Result<(u64, u64), StoreError> {
        let (due, tasks): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT SUM(CASE WHEN kind <> 'task' AND available_at <= $2 THEN 1 ELSE 0 END),
                    SUM(CASE WHEN kind = 'task' THEN 1 ELSE 0 END)
             FROM events WHERE status = 'pending' AND location_id = $1",
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
        let mut tx = self.pool.begin().await?;
        fixed_plans(&mut tx).await?;
        let claimed = claim_heads(&mut tx, owner, limit, lease, settle_max).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    async fn claim_rest(
        &self,
        owner: &str,
        first: &Claimed,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let now = millis(SystemTime::now());
        let rows = sqlx::query(&format!(
            "WITH picked AS (
                 SELECT id FROM events
                 WHERE status = 'pending' AND location_id = $1 AND contact_id = $2 AND id > $3
                   AND available_at <= $4 AND (lease_expires_at IS NULL OR lease_expires_at < $4)
                   AND id < COALESCE((
                       SELECT MIN(id) FROM events
                       WHERE status = 'pending' AND location_id = $1 AND contact_id = $2 AND id > $3
                         AND (available_at > $4 OR lease_expires_at >= $4)), 9223372036854775807)
                 ORDER BY id
                 LIMIT $7
                 FOR UPDATE)
             UPDATE events SET lease_owner = $5, lease_expires_at = $6, attempts = attempts + 1
             FROM picked WHERE events.id = picked.id
             RETURNING {CLAIMED_COLUMNS}"
        ))
        .bind(first.location_id.as_str())
        .bind(first.contact_id.as_str())
        .bind(first.id)
        .bind(now)
        .bind(owner)
        .bind(lease_until(now, lease))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        claimed_in_order(&rows, owner)
    }

    async fn finish_all(
        &self,
        events: &[(&Claimed, &Decision, &NewState)],
    ) -> Result<bool, StoreError> {
        let group = finish::Finished::new(events)?;
        self.finisher.finish(group).await
    }

    async fn retry_at(
        &self,
        event: &Claimed,
        at: SystemTime,
        decision: &Decision,
    ) -> Result<bool, StoreError> {
        let now = millis(SystemTime::now());
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE events SET lease_owner = NULL, lease_expires_at = NULL, available_at = $1, last_error = $2
             WHERE id = $3 AND lease_owner = $4 AND status = 'pending'",
        )
        .bind(millis(at))
        .bind(&decision.error)
        .bind(event.id)
        .bind(&event.lease_owner)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        let row = finish::DecisionRow::new(event.id, decision)?;
        finish::insert_decisions(&mut tx, &[&row], now).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn defer(&self, event: &Claimed, at: SystemTime) -> Result<bool, StoreError> {
        let (now, at) = (millis(SystemTime::now()), millis(at));
        let mut tx = self.pool.begin().await?;
        // The deferred event keeps its `available_at`, and so its place at the head of the
        // queue (it was claimed for being due first).
        let r = sqlx::query(
            "UPDATE events SET lease_owner = NULL, lease_expires_at = NULL, attempts = GREATEST(attempts - 1, 0)
             WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
        )
        .bind(event.id)
        .bind(&event.lease_owner)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        // The hold before this one, as this statement's snapshot saw it. (Two replicas
        // deferring one location at the same moment may both see no hold and both move the
        // queue: harmless, and the move skips rows another transaction holds.)
        let held: Option<i64> = sqlx::query_scalar(
            "INSERT INTO location_holds (location_id, held_until) VALUES ($1, $2)
             ON CONFLICT (location_id) DO UPDATE
             SET held_until = GREATEST(location_holds.held_until, excluded.held_until)
             RETURNING (SELECT held_until FROM location_holds WHERE location_id = $1)",
        )
        .bind(event.location_id.as_str())
        .bind(at)
        .fetch_one(&mut *tx)
        .await?;
        if super::moves_the_queue(held, now, at) {
            // Rows another transaction holds (a claim) are skipped, not waited for.
            sqlx::query(
                "UPDATE events SET available_at = $1
                 WHERE id IN (
                     SELECT id FROM events
                     WHERE status = 'pending' AND location_id = $2 AND available_at <= $3
                       AND (lease_expires_at IS NULL OR lease_expires_at < $3) AND id <> $4
                     FOR UPDATE SKIP LOCKED)",
            )
            .bind(at)
            .bind(event.location_id.as_str())
            .bind(now)
            .bind(event.id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn extend(&self, owner: &str, ids: &[i64], lease: Duration) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "UPDATE events SET lease_expires_at = $1
             WHERE lease_owner = $2 AND status = 'pending' AND id = ANY($3)",
        )
        .bind(lease_until(millis(SystemTime::now()), lease))
        .bind(owner)
        .bind(ids)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    async fn release(&self, owner: &str) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "UPDATE events SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = $1",
        )
        .bind(owner)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "UPDATE backfills SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = $1",
        )
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Other replicas may hold live leases: none is released; a dead replica's leases expire.
    async fn release_all(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn replay(&self, ids: &[i64]) -> Result<u64, StoreError> {
        let now = millis(SystemTime::now());
        let mut tx = self.pool.begin().await?;
        let queued = sqlx::query(
            "UPDATE events SET status = 'pending', available_at = $1, attempts = 0, finished_at = NULL,
                    lease_owner = NULL, lease_expires_at = NULL
             WHERE id = ANY($2) AND (lease_expires_at IS NULL OR lease_expires_at < $1)",
        )
        .bind(now)
        .bind(ids)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "DELETE FROM token_failures WHERE location_id IN (SELECT location_id FROM events WHERE id = ANY($1))",
        )
        .bind(ids)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(queued)
    }

    async fn park(&self, event: &Claimed, decision: &Decision) -> Result<bool, StoreError> {
        let now = millis(SystemTime::now());
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE events SET status = 'parked', lease_owner = NULL, lease_expires_at = NULL, last_error = $1
             WHERE id = $2 AND lease_owner = $3 AND status = 'pending'",
        )
        .bind(&decision.error)
        .bind(event.id)
        .bind(&event.lease_owner)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        let row = finish::DecisionRow::new(event.id, decision)?;
        finish::insert_decisions(&mut tx, &[&row], now).await?;
        tx.commit().await?;
        Ok(true)
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
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "UPDATE events SET status = 'pending', available_at = $1 WHERE status = 'parked' AND location_id = $2",
        )
        .bind(millis(SystemTime::now()))
        .bind(location.as_str())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM token_failures WHERE location_id = $1")
            .bind(location.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected())
    }

    async fn queue_stats(&self) -> Result<QueueStats, StoreError> {
        let (pending, oldest, failed): (i64, Option<i64>, i64) = sqlx::query_as(
            "SELECT
                (SELECT COUNT(*) FROM events WHERE status IN ('pending', 'parked')),
                (SELECT MIN(received_at) FROM events WHERE status IN ('pending', 'parked')),
                (SELECT COUNT(*) FROM events WHERE status = 'failed')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(QueueStats {
            pending: u64::try_from(pending).unwrap_or(0),
            oldest_pending: oldest.map(from_millis),
            failed: u64::try_from(failed).unwrap_or(0),
        })
    }
}

/// Turns off, for the rest of the transaction, the plans that would read every due event
/// before a claim's LIMIT (see [`claim_heads`]).
pub(super) async fn fixed_plans(tx: &mut sqlx::PgConnection) -> Result<(), StoreError> {
    sqlx::query(
        "SELECT set_config('enable_bitmapscan', 'off', true), set_config('enable_sort', 'off', true),
                set_config('enable_seqscan', 'off', true)",
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Leases up to `limit` heads of contacts' queues that are due (see [`Queue::claim_within`]),
/// inside a transaction with [`fixed_plans`].
pub(super) async fn claim_heads(
    conn: &mut sqlx::PgConnection,
    owner: &str,
    limit: u32,
    lease: Duration,
    settle_max: Option<Duration>,
) -> Result<Vec<Claimed>, StoreError> {
    let now = millis(SystemTime::now());
    // Only a contact's oldest unfinished event qualifies, and it is locked while taken:
    // a replica running the same query skips it and cannot take the contact's next one.
    //
    // The plan must not depend on table statistics: a replica prepares this statement
    // when the table may still be empty, and PostgreSQL keeps a generic plan made then.
    // Written as `NOT EXISTS`, both checks became anti-joins that such a plan ran as
    // nested loops over every pending event (160 ms per claim with 5,000 waiting, found
    // by autofollow-bench with auto_explain). Inside CASE they stay per-row subplans, each
    // one probe of `events_by_contact` (`+ 0` keeps the settle check off `events_ready`,
    // whose range would cover every settling event), and the walk over `events_ready`
    // stops at the LIMIT.
    //
    // Nor may it depend on how fresh the statistics are: in a queue table they describe
    // another moment (taken when few events were pending, they made the walk a bitmap
    // scan of every pending event, each checked, then sorted: 227 ms per claim with
    // 49,000 waiting, found with `EXPLAIN ANALYZE` during an `e2e` run). The claim's
    // transaction turns off the plans that read every due event before the LIMIT, so the
    // walk in `events_ready` order is the plan whatever the statistics say.
    let rows = sqlx::query(&format!(
        "WITH picked AS (
             SELECT e.id FROM events e
             WHERE e.status = 'pending' AND e.available_at <= $3
               AND (e.lease_expires_at IS NULL OR e.lease_expires_at < $3)
               AND CASE
                   -- Its location's budget is spent.
                   WHEN EXISTS (
                       SELECT 1 FROM location_holds h
                       WHERE h.location_id = e.location_id AND h.held_until > $3) THEN false
                   -- Its contact has an earlier unfinished event.
                   WHEN EXISTS (
                       SELECT 1 FROM events p
                       WHERE p.status IN ('pending', 'parked') AND p.location_id = e.location_id
                         AND p.contact_id = e.contact_id AND p.id < e.id) THEN false
                   -- Settle: the contact waits while any of its newer webhooks does,
                   -- unless it has waited the longest a contact may ($5).
                   WHEN e.received_at > $5 AND EXISTS (
                       SELECT 1 FROM events n
                       WHERE n.status = 'pending' AND n.location_id = e.location_id
                         AND n.contact_id = e.contact_id AND n.id > e.id
                         AND n.available_at + 0 > $3) THEN false
                   ELSE true
               END
             ORDER BY e.available_at, e.id
             LIMIT $4
             FOR UPDATE SKIP LOCKED)
         UPDATE events SET lease_owner = $1, lease_expires_at = $2, attempts = attempts + 1
         FROM picked WHERE events.id = picked.id
         RETURNING {CLAIMED_COLUMNS}"
    ))
    .bind(owner)
    .bind(lease_until(now, lease))
    .bind(now)
    .bind(i64::from(limit))
    .bind(settled_by(now, settle_max))
    .fetch_all(&mut *conn)
    .await?;
    claimed_in_order(&rows, owner)
}

/// Leases each head's later due events (see [`Queue::claim_rest`]), for all heads in one
/// statement; at most `limit` per head.
pub(super) async fn claim_rests(
    conn: &mut sqlx::PgConnection,
    owner: &str,
    heads: &[Claimed],
    limit: u32,
    lease: Duration,
) -> Result<Vec<Claimed>, StoreError> {
    let now = millis(SystemTime::now());
    let ids: Vec<i64> = heads.iter().map(|h| h.id).collect();
    let locations: Vec<&str> = heads.iter().map(|h| h.location_id.as_str()).collect();
    let contacts: Vec<&str> = heads.iter().map(|h| h.contact_id.as_str()).collect();
    let rows = sqlx::query(&format!(
        "WITH picked AS (
             SELECT r.id FROM unnest($1::bigint[], $2::text[], $3::text[]) AS h(id, l, c)
             CROSS JOIN LATERAL (
                 SELECT e.id FROM events e
                 WHERE e.status = 'pending' AND e.location_id = h.l AND e.contact_id = h.c
                   AND e.id > h.id AND e.available_at <= $4
                   AND (e.lease_expires_at IS NULL OR e.lease_expires_at < $4)
                   AND e.id < COALESCE((
                       SELECT MIN(x.id) FROM events x
                       WHERE x.status = 'pending' AND x.location_id = h.l AND x.contact_id = h.c
                         AND x.id > h.id AND (x.available_at > $4 OR x.lease_expires_at >= $4)),
                       9223372036854775807)
                 ORDER BY e.id
                 LIMIT $7
                 FOR UPDATE) r)
         UPDATE events SET lease_owner = $5, lease_expires_at = $6, attempts = attempts + 1
         FROM picked WHERE events.id = picked.id
         RETURNING {CLAIMED_COLUMNS}"
    ))
    .bind(&ids)
    .bind(&locations)
    .bind(&contacts)
    .bind(now)
    .bind(owner)
    .bind(lease_until(now, lease))
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    claimed_in_order(&rows, owner)
}

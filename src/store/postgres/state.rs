//! The contact state of the PostgreSQL store.

use std::collections::HashMap;

use super::*;

#[async_trait]
impl ContactState for PgStore {
    async fn previous_state(
        &self,
        location: &LocationId,
        contact: &ContactId,
        opportunity: Option<&OpportunityId>,
    ) -> Result<PreviousState, StoreError> {
        let tags: Option<String> = sqlx::query_scalar(
            "SELECT tags FROM contact_state WHERE location_id = $1 AND contact_id = $2",
        )
        .bind(location.as_str())
        .bind(contact.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let tags = tags
            .map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()?;
        let stage = match opportunity {
            Some(o) => sqlx::query_scalar(
                "SELECT stage FROM opportunity_state WHERE location_id = $1 AND opportunity_id = $2",
            )
            .bind(location.as_str())
            .bind(o.as_str())
            .fetch_optional(&self.pool)
            .await?,
            None => None,
        };
        let (kind, record) = match opportunity {
            Some(o) => ("opportunity", o.as_str()),
            None => ("contact", contact.as_str()),
        };
        let assigned: Option<Option<String>> = sqlx::query_scalar(
            "SELECT user_id FROM assignees WHERE location_id = $1 AND kind = $2 AND record_id = $3",
        )
        .bind(location.as_str())
        .bind(kind)
        .bind(record)
        .fetch_optional(&self.pool)
        .await?;
        Ok(PreviousState {
            tags,
            stage,
            assigned: assigned.map(|u| u.and_then(|u| UserId::parse(&u).ok())),
        })
    }

    async fn known_followers(
        &self,
        location: &LocationId,
        contact: &ContactId,
        since: SystemTime,
    ) -> Result<Option<Vec<crate::model::ids::UserId>>, StoreError> {
        let text: Option<String> = sqlx::query_scalar(
            "SELECT followers FROM known_followers WHERE location_id = $1 AND contact_id = $2 AND seen_at >= $3",
        )
        .bind(location.as_str())
        .bind(contact.as_str())
        .bind(millis(since))
        .fetch_optional(&self.pool)
        .await?;
        text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    async fn set_known_followers(
        &self,
        location: &LocationId,
        contact: &ContactId,
        followers: &[crate::model::ids::UserId],
        holder: Option<(&str, i64)>,
    ) -> Result<bool, StoreError> {
        let written = sqlx::query(
            "INSERT INTO known_followers (location_id, contact_id, followers, seen_at)
             SELECT $1, $2, $3, $4
             WHERE $5::text IS NULL
                OR EXISTS (SELECT 1 FROM events WHERE id = $6 AND lease_owner = $5 AND lease_expires_at > $4)
             ON CONFLICT (location_id, contact_id) DO UPDATE SET followers = excluded.followers, seen_at = excluded.seen_at",
        )
        .bind(location.as_str())
        .bind(contact.as_str())
        .bind(to_json(&followers)?)
        .bind(millis(SystemTime::now()))
        .bind(holder.map(|h| h.0))
        .bind(holder.map(|h| h.1))
        .execute(&self.pool)
        .await?;
        Ok(written.rows_affected() > 0)
    }

    async fn forget(
        &self,
        location: &LocationId,
        contact: &ContactId,
        opportunity: Option<&OpportunityId>,
    ) -> Result<(), StoreError> {
        if let Some(o) = opportunity {
            sqlx::query(
                "DELETE FROM opportunity_state WHERE location_id = $1 AND opportunity_id = $2",
            )
            .bind(location.as_str())
            .bind(o.as_str())
            .execute(&self.pool)
            .await?;
            sqlx::query(
                "DELETE FROM assignees WHERE location_id = $1 AND kind = 'opportunity' AND record_id = $2",
            )
            .bind(location.as_str())
            .bind(o.as_str())
            .execute(&self.pool)
            .await?;
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM opportunity_state WHERE location_id = $1 AND opportunity_id IN
                 (SELECT opportunity_id FROM events WHERE location_id = $1
                  AND contact_id = $2 AND opportunity_id IS NOT NULL)",
        )
        .bind(location.as_str())
        .bind(contact.as_str())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM assignees WHERE location_id = $1 AND (
                 (kind = 'contact' AND record_id = $2)
                 OR (kind = 'opportunity' AND record_id IN
                     (SELECT opportunity_id FROM events WHERE location_id = $1
                      AND contact_id = $2 AND opportunity_id IS NOT NULL)))",
        )
        .bind(location.as_str())
        .bind(contact.as_str())
        .execute(&mut *tx)
        .await?;
        for table in ["contact_state", "known_followers", "owned_followers"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE location_id = $1 AND contact_id = $2"
            ))
            .bind(location.as_str())
            .bind(contact.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn owned(
        &self,
        location: &LocationId,
        contact: &ContactId,
        removed: bool,
    ) -> Result<Vec<Owned>, StoreError> {
        let sql = format!(
            "SELECT {OWNED_COLUMNS} FROM owned_followers
             WHERE location_id = $1 AND contact_id = $2 AND ($3 OR removed_at IS NULL)
             ORDER BY added_at, user_id, rule"
        );
        let rows = sqlx::query_as::<_, OwnedRow>(&sql)
            .bind(location.as_str())
            .bind(contact.as_str())
            .bind(removed)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(OwnedRow::into_owned).collect()
    }

    async fn latest_events(
        &self,
        location: &LocationId,
        contact: &ContactId,
        before: i64,
        limit: u32,
    ) -> Result<Vec<(BodyKind, String)>, StoreError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT kind, body FROM events
             WHERE status IN ('pending', 'done', 'failed', 'skipped', 'parked')
               AND location_id = $1 AND contact_id = $2 AND id < $3 AND kind <> 'task'
             ORDER BY id DESC LIMIT $4",
        )
        .bind(location.as_str())
        .bind(contact.as_str())
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(kind, body)| (BodyKind::parse(&kind), body))
            .collect())
    }

    async fn known_contacts(
        &self,
        location: Option<&LocationId>,
    ) -> Result<Vec<(LocationId, ContactId)>, StoreError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT location_id, contact_id FROM events
             WHERE kind <> 'task' AND ($1 IS NULL OR location_id = $1)
             UNION
             SELECT location_id, contact_id FROM owned_followers
             WHERE $1 IS NULL OR location_id = $1
             ORDER BY 1, 2",
        )
        .bind(location.map(LocationId::as_str))
        .fetch_all(&self.pool)
        .await?;
        contact_pairs(rows)
    }

    async fn ledger_contacts(
        &self,
        location: Option<&LocationId>,
        scope: &UndoScope,
    ) -> Result<Vec<(LocationId, ContactId)>, StoreError> {
        let (rule, event, since) = scope_binds(scope);
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT location_id, contact_id FROM owned_followers
             WHERE ($1 IS NULL OR location_id = $1)
               AND ($2 IS NULL OR (rule = $2 AND removed_at IS NULL))
               AND ($3 IS NULL OR event_id = $3 OR removed_event_id = $3)
               AND ($4 IS NULL OR added_at >= $4 OR removed_at >= $4)
             ORDER BY 1, 2",
        )
        .bind(location.map(LocationId::as_str))
        .bind(rule)
        .bind(event)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        contact_pairs(rows)
    }

    async fn stale_contacts(
        &self,
        since: i64,
        limit: u32,
    ) -> Result<Vec<(LocationId, ContactId)>, StoreError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT o.location_id, o.contact_id FROM owned_followers o
             WHERE o.removed_at IS NULL AND NOT EXISTS (
                 SELECT 1 FROM events e
                 WHERE e.status IN ('pending', 'done', 'failed', 'skipped', 'parked')
                   AND e.location_id = o.location_id AND e.contact_id = o.contact_id
                   AND e.kind = 'task' AND e.event_type = 'Reconcile'
                   AND (e.received_at >= $1 OR e.status = 'pending'))
             ORDER BY 1, 2 LIMIT $2",
        )
        .bind(since)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        contact_pairs(rows)
    }

    async fn mark_token_failing(
        &self,
        location: &LocationId,
        fingerprint: &str,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO token_failures (location_id, fingerprint, error, since) VALUES ($1, $2, $3, $4)
             ON CONFLICT (location_id) DO UPDATE SET fingerprint = excluded.fingerprint, error = excluded.error",
        )
        .bind(location.as_str())
        .bind(fingerprint)
        .bind(error)
        .bind(millis(SystemTime::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn contact_snapshot(
        &self,
        location: &LocationId,
        contact: &ContactId,
    ) -> Result<ContactSnapshot, StoreError> {
        let key = (location.as_str().to_owned(), contact.as_str().to_owned());
        let mut conn = self.pool.acquire().await?;
        let mut read = snapshots(&mut conn, std::slice::from_ref(&key)).await?;
        Ok(read.remove(&key).unwrap_or_default())
    }

    async fn token_failing(&self, location: &LocationId) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT fingerprint FROM token_failures WHERE location_id = $1")
                .bind(location.as_str())
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn token_failures(&self) -> Result<Vec<(LocationId, String)>, StoreError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT location_id, fingerprint FROM token_failures")
                .fetch_all(&self.pool)
                .await?;
        Ok(stored_ids(rows))
    }
}

/// What the worker reads of each (location, contact) before deciding (see
/// [`ContactState::contact_snapshot`]): two statements however many contacts.
pub(super) async fn snapshots(
    conn: &mut sqlx::PgConnection,
    keys: &[(String, String)],
) -> Result<HashMap<(String, String), ContactSnapshot>, StoreError> {
    let (locations, contacts): (Vec<&str>, Vec<&str>) =
        keys.iter().map(|(l, c)| (l.as_str(), c.as_str())).unzip();
    // An assignee row with no user reads as '' (unassigned), no row as NULL (unknown).
    let rows: Vec<SnapshotRow> = sqlx::query_as(
        "SELECT h.l, h.c,
                (SELECT tags FROM contact_state WHERE location_id = h.l AND contact_id = h.c),
                (SELECT COALESCE(user_id, '') FROM assignees
                 WHERE location_id = h.l AND kind = 'contact' AND record_id = h.c),
                k.followers, k.seen_at,
                (SELECT fingerprint FROM token_failures WHERE location_id = h.l)
         FROM unnest($1::text[], $2::text[]) AS h(l, c)
         LEFT JOIN known_followers k ON k.location_id = h.l AND k.contact_id = h.c",
    )
    .bind(&locations)
    .bind(&contacts)
    .fetch_all(&mut *conn)
    .await?;
    let corrupt = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
    let mut read = HashMap::with_capacity(rows.len());
    for (l, c, tags, assigned, followers, seen_at, token_refused) in rows {
        let tags = tags.map(|t| serde_json::from_str(&t)).transpose();
        let followers = followers.map(|t| serde_json::from_str(&t)).transpose();
        let snapshot = ContactSnapshot {
            previous: PreviousState {
                tags: tags.map_err(corrupt)?,
                stage: None,
                assigned: assigned.map(|u| UserId::parse(&u).ok()),
            },
            owned: Vec::new(),
            followers: followers.map_err(corrupt)?.zip(seen_at),
            token_refused,
        };
        read.insert((l, c), snapshot);
    }
    let owned = sqlx::query(&format!(
        "SELECT h.l, h.c, {OWNED_COLUMNS} FROM unnest($1::text[], $2::text[]) AS h(l, c)
         JOIN owned_followers o ON o.location_id = h.l AND o.contact_id = h.c
         WHERE o.removed_at IS NULL"
    ))
    .bind(&locations)
    .bind(&contacts)
    .fetch_all(&mut *conn)
    .await?;
    for row in owned {
        let key: (String, String) = (row.try_get("l")?, row.try_get("c")?);
        let owned = OwnedRow::from_row(&row)?.into_owned()?;
        read.entry(key).or_default().owned.push(owned);
    }
    // Ordered here, not in SQL: a claim's transaction turns sorting off (`fixed_plans`).
    for snapshot in read.values_mut() {
        let order = |o: &Owned| (o.added_at, o.user.as_str().to_owned(), o.rule.clone());
        snapshot.owned.sort_by_key(order);
    }
    Ok(read)
}

/// (location, contact, tags, assignee, followers, seen at, refused token).
type SnapshotRow = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
);

//! The contact state of the SQLite store.

use super::*;

#[async_trait]
impl ContactState for SqliteStore {
    async fn previous_state(
        &self,
        location: &LocationId,
        contact: &ContactId,
        opportunity: Option<&OpportunityId>,
    ) -> Result<PreviousState, StoreError> {
        let tags: Option<String> = sqlx::query_scalar(
            "SELECT tags FROM contact_state WHERE location_id = ? AND contact_id = ?",
        )
        .bind(location.as_str())
        .bind(contact.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let tags = match tags {
            Some(t) => {
                Some(serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(e.to_string()))?)
            }
            None => None,
        };
        let stage = match opportunity {
            Some(o) => sqlx::query_scalar(
                "SELECT stage FROM opportunity_state WHERE location_id = ? AND opportunity_id = ?",
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
            "SELECT user_id FROM assignees WHERE location_id = ? AND kind = ? AND record_id = ?",
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
            "SELECT followers FROM known_followers WHERE location_id = ? AND contact_id = ? AND seen_at >= ?",
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
        let (location, contact, followers) = (
            location.as_str().to_owned(),
            contact.as_str().to_owned(),
            to_json(&followers)?,
        );
        let holder = holder.map(|(owner, id)| (owner.to_owned(), id));
        self.writer
            .write(move |conn| {
                let written = conn
                    .prepare_cached(
                        "INSERT INTO known_followers (location_id, contact_id, followers, seen_at)
                         SELECT ?1, ?2, ?3, ?4
                         WHERE ?5 IS NULL
                            OR EXISTS (SELECT 1 FROM events WHERE id = ?6 AND lease_owner = ?5 AND lease_expires_at > ?4)
                         ON CONFLICT (location_id, contact_id) DO UPDATE SET followers = excluded.followers, seen_at = excluded.seen_at",
                    )?
                    .execute((
                        &location,
                        &contact,
                        &followers,
                        now_ms(),
                        holder.as_ref().map(|h| &h.0),
                        holder.as_ref().map(|h| h.1),
                    ))?;
                Ok(written > 0)
            })
            .await
    }

    async fn forget(
        &self,
        location: &LocationId,
        contact: &ContactId,
        opportunity: Option<&OpportunityId>,
    ) -> Result<(), StoreError> {
        let (location, contact) = (location.as_str().to_owned(), contact.as_str().to_owned());
        let opportunity = opportunity.map(|o| o.as_str().to_owned());
        self.writer
            .write(move |conn| {
                if let Some(o) = &opportunity {
                    conn.execute(
                        "DELETE FROM opportunity_state WHERE location_id = ?1 AND opportunity_id = ?2",
                        (&location, o),
                    )?;
                    conn.execute(
                        "DELETE FROM assignees WHERE location_id = ?1 AND kind = 'opportunity' AND record_id = ?2",
                        (&location, o),
                    )?;
                    return Ok(());
                }
                conn.execute(
                    "DELETE FROM opportunity_state WHERE location_id = ?1 AND opportunity_id IN
                         (SELECT opportunity_id FROM events WHERE location_id = ?1
                          AND contact_id = ?2 AND opportunity_id IS NOT NULL)",
                    (&location, &contact),
                )?;
                conn.execute(
                    "DELETE FROM assignees WHERE location_id = ?1 AND kind = 'opportunity' AND record_id IN
                         (SELECT opportunity_id FROM events WHERE location_id = ?1
                          AND contact_id = ?2 AND opportunity_id IS NOT NULL)",
                    (&location, &contact),
                )?;
                conn.execute(
                    "DELETE FROM assignees WHERE location_id = ?1 AND kind = 'contact' AND record_id = ?2",
                    (&location, &contact),
                )?;
                for table in ["contact_state", "known_followers", "owned_followers"] {
                    conn.execute(
                        &format!("DELETE FROM {table} WHERE location_id = ?1 AND contact_id = ?2"),
                        (&location, &contact),
                    )?;
                }
                Ok(())
            })
            .await
    }

    async fn owned(
        &self,
        location: &LocationId,
        contact: &ContactId,
        removed: bool,
    ) -> Result<Vec<Owned>, StoreError> {
        let sql = format!(
            "SELECT {OWNED_COLUMNS} FROM owned_followers
             WHERE location_id = ? AND contact_id = ? AND (? OR removed_at IS NULL)
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
               AND location_id = ?1 AND contact_id = ?2 AND id < ?3 AND kind <> 'task'
             ORDER BY id DESC LIMIT ?4",
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
             WHERE kind <> 'task' AND (?1 IS NULL OR location_id = ?1)
             UNION
             SELECT location_id, contact_id FROM owned_followers
             WHERE ?1 IS NULL OR location_id = ?1
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
             WHERE (?1 IS NULL OR location_id = ?1)
               AND (?2 IS NULL OR (rule = ?2 AND removed_at IS NULL))
               AND (?3 IS NULL OR event_id = ?3 OR removed_event_id = ?3)
               AND (?4 IS NULL OR added_at >= ?4 OR removed_at >= ?4)
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
                   AND (e.received_at >= ?1 OR e.status = 'pending'))
             ORDER BY 1, 2 LIMIT ?2",
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
        let (location, fingerprint, error) = (
            location.as_str().to_owned(),
            fingerprint.to_owned(),
            error.to_owned(),
        );
        self.writer
            .write(move |conn| {
                conn.prepare_cached(
                    "INSERT INTO token_failures (location_id, fingerprint, error, since) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (location_id) DO UPDATE SET fingerprint = excluded.fingerprint, error = excluded.error",
                )?
                .execute((&location, &fingerprint, &error, now_ms()))?;
                Ok(())
            })
            .await
    }

    async fn token_failing(&self, location: &LocationId) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT fingerprint FROM token_failures WHERE location_id = ?")
                .bind(location.as_str())
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn contact_snapshot(
        &self,
        location: &LocationId,
        contact: &ContactId,
    ) -> Result<ContactSnapshot, StoreError> {
        let (location, contact) = (location.as_str().to_owned(), contact.as_str().to_owned());
        self.writer
            .write(move |conn| snapshot(conn, &location, &contact))
            .await
    }

    async fn token_failures(&self) -> Result<Vec<(LocationId, String)>, StoreError> {
        let rows = sqlx::query("SELECT location_id, fingerprint FROM token_failures")
            .fetch_all(&self.pool)
            .await?;
        Ok(stored_ids(
            rows.iter()
                .map(|r| (r.get("location_id"), r.get("fingerprint"))),
        ))
    }
}

/// What the worker reads of a contact before deciding (see [`ContactState::contact_snapshot`]),
/// on the writer's connection: inside the claim's transaction, with no hop to another thread.
pub(super) fn snapshot(
    conn: &Connection,
    location: &str,
    contact: &str,
) -> Result<ContactSnapshot, StoreError> {
    let corrupt = |e: serde_json::Error| StoreError::Corrupt(e.to_string());
    let tags: Option<String> = conn
        .prepare_cached(
            "SELECT tags FROM contact_state WHERE location_id = ?1 AND contact_id = ?2",
        )?
        .query_row((location, contact), |r| r.get(0))
        .optional()?;
    let assigned: Option<Option<String>> = conn
        .prepare_cached(
            "SELECT user_id FROM assignees WHERE location_id = ?1 AND kind = 'contact' AND record_id = ?2",
        )?
        .query_row((location, contact), |r| r.get(0))
        .optional()?;
    let followers: Option<(String, i64)> = conn
        .prepare_cached(
            "SELECT followers, seen_at FROM known_followers WHERE location_id = ?1 AND contact_id = ?2",
        )?
        .query_row((location, contact), |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let token_refused: Option<String> = conn
        .prepare_cached("SELECT fingerprint FROM token_failures WHERE location_id = ?1")?
        .query_row([location], |r| r.get(0))
        .optional()?;
    Ok(ContactSnapshot {
        previous: PreviousState {
            tags: tags
                .map(|t| serde_json::from_str(&t))
                .transpose()
                .map_err(corrupt)?,
            stage: None,
            assigned: assigned.map(|u| u.and_then(|u| UserId::parse(&u).ok())),
        },
        owned: owned_rows(conn, location, contact)?,
        followers: match followers {
            Some((list, seen)) => Some((serde_json::from_str(&list).map_err(corrupt)?, seen)),
            None => None,
        },
        token_refused,
    })
}

/// The ledger's rows autofollow keeps for the contact, on the writer's connection.
fn owned_rows(conn: &Connection, location: &str, contact: &str) -> Result<Vec<Owned>, StoreError> {
    let sql = format!(
        "SELECT {OWNED_COLUMNS} FROM owned_followers
         WHERE location_id = ?1 AND contact_id = ?2 AND removed_at IS NULL
         ORDER BY added_at, user_id, rule"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map((location, contact), |r| {
        Ok(OwnedRow {
            user_id: r.get(0)?,
            rule: r.get(1)?,
            follow: r.get(2)?,
            subject: r.get(3)?,
            rules_version: r.get(4)?,
            event_id: r.get(5)?,
            added_at: r.get(6)?,
            removed_at: r.get(7)?,
            removed_event_id: r.get(8)?,
            removed_by: r.get(9)?,
        })
    })?;
    rows.map(|r| r?.into_owned()).collect()
}

//! The embedded SQLite store (WAL mode): the default, for a single instance.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, SqlitePool};

use super::*;

/// `available_at` of a parked event: later than any real time (year ~2255 in milliseconds,
/// safely inside `SystemTime`).
const PARKED: i64 = 9_000_000_000_000;

/// Webhooks stored in one transaction at most: one commit (one fsync) acknowledges them all.
const INTAKE_BATCH: usize = 256;

#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// To the intake writer, which commits concurrent webhooks together (group commit).
    intake: tokio::sync::mpsc::Sender<Intake>,
}

/// A webhook waiting for the intake writer, and where its answer goes.
#[derive(Debug)]
struct Intake {
    event: NewEvent,
    dedup_window: Duration,
    reply: tokio::sync::oneshot::Sender<Result<Inserted, StoreError>>,
}

/// Stores the webhooks that arrive while the previous commit runs, all in one transaction,
/// and answers each once it is committed. When a batch fails, each of its webhooks is tried
/// alone, so each gets its own answer.
async fn intake_writer(pool: SqlitePool, mut queue: tokio::sync::mpsc::Receiver<Intake>) {
    let mut batch = Vec::with_capacity(INTAKE_BATCH);
    while queue.recv_many(&mut batch, INTAKE_BATCH).await > 0 {
        let events: Vec<(&NewEvent, Duration)> =
            batch.iter().map(|i| (&i.event, i.dedup_window)).collect();
        match insert_batch(&pool, &events).await {
            Ok(results) => {
                for (item, result) in batch.drain(..).zip(results) {
                    let _ = item.reply.send(Ok(result));
                }
            }
            // The store itself is failing (locked past the busy timeout, I/O): the batch and
            // every webhook that queued while it waited get the error now (429, and
            // GoHighLevel delivers again). Retrying them one by one, or batch after batch,
            // would make the last wait one busy timeout per webhook or batch.
            Err(e) if !row_specific(&e) => {
                let message = e.to_string();
                while let Ok(item) = queue.try_recv() {
                    batch.push(item);
                }
                for item in batch.drain(..) {
                    let _ = item
                        .reply
                        .send(Err(StoreError::Unavailable(message.clone())));
                }
            }
            Err(e) if batch.len() == 1 => {
                if let Some(item) = batch.pop() {
                    let _ = item.reply.send(Err(e));
                }
            }
            // One webhook's row broke the batch: store the others one by one.
            Err(_) => {
                for item in batch.drain(..) {
                    let result = insert_batch(&pool, &[(&item.event, item.dedup_window)])
                        .await
                        .map(|r| r[0]);
                    let _ = item.reply.send(result);
                }
            }
        }
    }
}

/// Whether the error is about one row (a constraint), not about the store.
fn row_specific(e: &StoreError) -> bool {
    use sqlx::error::ErrorKind;
    match e {
        StoreError::Database(sqlx::Error::Database(db)) => matches!(
            db.kind(),
            ErrorKind::UniqueViolation
                | ErrorKind::ForeignKeyViolation
                | ErrorKind::NotNullViolation
                | ErrorKind::CheckViolation
        ),
        StoreError::Corrupt(_) => true,
        _ => false,
    }
}

/// Inserts the events in one transaction, in order; what each became.
async fn insert_batch(
    pool: &SqlitePool,
    events: &[(&NewEvent, Duration)],
) -> Result<Vec<Inserted>, StoreError> {
    let now = millis(SystemTime::now());
    let mut tx = pool.begin().await?;
    let mut results = Vec::with_capacity(events.len());
    // Webhooks are deduplicated over one window per statement; every caller uses the same.
    for run in events.chunk_by(|a, b| a.1 == b.1) {
        results.extend(insert_together(&mut tx, run, now).await?);
    }
    tx.commit().await?;
    Ok(results)
}

/// Stores the events in three statements for the whole batch (each statement is a round trip
/// to SQLite's thread, which is what intake spends its time on): claim their webhook ids,
/// insert the new events, point the webhook ids at them.
async fn insert_together(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    events: &[(&NewEvent, Duration)],
    now: i64,
) -> Result<Vec<Inserted>, StoreError> {
    use std::collections::HashSet;
    let window = events.first().map_or(Duration::ZERO, |e| e.1);
    let cutoff = now - i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    // 1. Claim the webhook ids (a write first: the transaction holds the write lock from its
    // start). A webhook id twice in the batch: the later ones are duplicates.
    let mut seen = HashSet::new();
    let mut fresh: Vec<bool> = events
        .iter()
        .map(|(e, _)| {
            e.webhook_id
                .as_ref()
                .is_none_or(|w| seen.insert(w.as_str()))
        })
        .collect();
    let ids: Vec<&str> = events
        .iter()
        .zip(&fresh)
        .filter_map(|((e, _), f)| e.webhook_id.as_deref().filter(|_| *f))
        .collect();
    if !ids.is_empty() {
        let mut q =
            QueryBuilder::new("INSERT INTO webhook_ids (webhook_id, event_id, received_at) ");
        q.push_values(&ids, |mut b, id| {
            b.push_bind(*id).push_bind(0i64).push_bind(now);
        });
        q.push(
            " ON CONFLICT (webhook_id) DO UPDATE SET event_id = 0, received_at = excluded.received_at
              WHERE webhook_ids.received_at < ",
        )
        .push_bind(cutoff)
        .push(" RETURNING webhook_id");
        let claimed: HashSet<String> = q
            .build_query_scalar::<String>()
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .collect();
        for ((e, _), f) in events.iter().zip(fresh.iter_mut()) {
            if let Some(w) = &e.webhook_id {
                *f = *f && claimed.contains(w);
            }
        }
    }
    let new: Vec<&NewEvent> = events
        .iter()
        .zip(&fresh)
        .filter_map(|((e, _), f)| f.then_some(*e))
        .collect();
    if new.is_empty() {
        return Ok(vec![Inserted::Duplicate; events.len()]);
    }
    // 2. The events; ids are given in VALUES order.
    let mut q = QueryBuilder::new(
        "INSERT INTO events (kind, event_type, location_id, contact_id, opportunity_id, webhook_id, body, received_at, available_at) ",
    );
    q.push_values(&new, |mut b, e| {
        b.push_bind(e.kind.as_str())
            .push_bind(&e.event_type)
            .push_bind(e.location_id.as_str())
            .push_bind(e.contact_id.as_str())
            .push_bind(e.opportunity_id.as_ref().map(|o| o.as_str()))
            .push_bind(&e.webhook_id)
            .push_bind(&e.body)
            .push_bind(now)
            .push_bind(millis(e.available_at).max(now));
    });
    q.push(" RETURNING id");
    let mut new_ids: Vec<i64> = q.build_query_scalar().fetch_all(&mut **tx).await?;
    new_ids.sort_unstable();
    // 3. The webhook ids point at their events.
    let linked: Vec<(&str, i64)> = new
        .iter()
        .zip(&new_ids)
        .filter_map(|(e, id)| Some((e.webhook_id.as_deref()?, *id)))
        .collect();
    if !linked.is_empty() {
        let mut q = QueryBuilder::new("UPDATE webhook_ids SET event_id = v.column2 FROM (");
        q.push_values(&linked, |mut b, (w, id)| {
            b.push_bind(*w).push_bind(*id);
        });
        q.push(") AS v WHERE webhook_ids.webhook_id = v.column1");
        q.build().execute(&mut **tx).await?;
    }
    let mut ids = new_ids.into_iter();
    Ok(fresh
        .iter()
        .map(|f| match f {
            true => Inserted::Accepted(ids.next().unwrap_or(0)),
            false => Inserted::Duplicate,
        })
        .collect())
}

impl SqliteStore {
    /// Opens (creating the file and its directory if missing) and migrates the database.
    pub async fn open(url: &str) -> Result<SqliteStore, StoreError> {
        SqliteStore::connect(url, true).await
    }

    /// Opens an existing database (operator commands must not create an empty one).
    pub async fn open_existing(url: &str) -> Result<SqliteStore, StoreError> {
        SqliteStore::connect(url, false).await
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn connect(url: &str, create: bool) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit survives power loss, which an acknowledgement promises.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        if !create && !options.get_filename().exists() {
            return Err(StoreError::Corrupt(format!(
                "no database at {} (is AUTOFOLLOW_DATABASE_URL the service's?)",
                options.get_filename().display()
            )));
        }
        if let Some(dir) = std::path::Path::new(options.get_filename()).parent() {
            if create && !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Corrupt(format!(
                        "cannot create the database directory {}: {e}",
                        dir.display()
                    ))
                })?;
            }
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        // Intake has a connection of its own: webhooks never queue behind the worker for a
        // connection (when the database is locked, the worker's connections sit in the busy
        // handler too, and a shared pool added their wait to every webhook's).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        let (intake, queue) = tokio::sync::mpsc::channel(INTAKE_BATCH * 4);
        tokio::spawn(intake_writer(writer, queue));
        Ok(SqliteStore { pool, intake })
    }
}

async fn insert_decision(
    tx: &mut sqlx::SqliteConnection,
    event_id: i64,
    d: &Decision,
    now: i64,
) -> Result<(), StoreError> {
    let (matched, plan, calls) = (to_json(&d.matched)?, to_json(&d.plan)?, to_json(&d.calls)?);
    sqlx::query(
        "INSERT INTO decisions (event_id, attempt, matched, plan, calls, outcome, error, dry_run, batch, rules_version, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(event_id)
    .bind(i64::from(d.attempt))
    .bind(matched)
    .bind(plan)
    .bind(calls)
    .bind(&d.outcome)
    .bind(&d.error)
    .bind(d.dry_run)
    .bind(to_json(&d.batch)?)
    .bind(&d.rules_version)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_event(
        &self,
        event: NewEvent,
        dedup_window: Duration,
    ) -> Result<Inserted, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let gone = || StoreError::Corrupt("the intake writer stopped".into());
        self.intake
            .send(Intake {
                event,
                dedup_window,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    async fn claim(
        &self,
        owner: &str,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let now = millis(SystemTime::now());
        let expires = lease_until(now, lease);
        let rows = sqlx::query(
            "UPDATE events SET lease_owner = ?1, lease_expires_at = ?2, attempts = attempts + 1
             WHERE id IN (
                 SELECT e.id FROM events e
                 WHERE e.status = 'pending' AND e.available_at <= ?3
                   AND (e.lease_expires_at IS NULL OR e.lease_expires_at < ?3)
                   AND NOT EXISTS (
                       SELECT 1 FROM events p
                       WHERE p.status = 'pending' AND p.location_id = e.location_id
                         AND p.contact_id = e.contact_id AND p.id < e.id)
                   -- Settle: the contact waits while any of its newer webhooks does.
                   AND NOT EXISTS (
                       SELECT 1 FROM events n
                       WHERE n.status = 'pending' AND n.location_id = e.location_id
                         AND n.contact_id = e.contact_id AND n.id > e.id
                         AND n.available_at > ?3 AND n.available_at < ?5)
                 ORDER BY e.available_at, e.id
                 LIMIT ?4)
             RETURNING id, kind, location_id, contact_id, body, attempts, received_at",
        )
        .bind(owner)
        .bind(expires)
        .bind(now)
        .bind(i64::from(limit))
        .bind(PARKED)
        .fetch_all(&self.pool)
        .await?;
        claimed_in_order(&rows, owner)
    }

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
        Ok(PreviousState { tags, stage })
    }

    async fn claim_rest(
        &self,
        owner: &str,
        first: &Claimed,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let now = millis(SystemTime::now());
        let expires = lease_until(now, lease);
        let rows = sqlx::query(
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
        )
        .bind(first.location_id.as_str())
        .bind(first.contact_id.as_str())
        .bind(first.id)
        .bind(now)
        .bind(owner)
        .bind(expires)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        claimed_in_order(&rows, owner)
    }

    async fn finish_all(
        &self,
        events: &[(&Claimed, EventStatus, &Decision, &NewState)],
    ) -> Result<bool, StoreError> {
        let now = millis(SystemTime::now());
        let mut tx = self.pool.begin().await?;
        for (event, status, decision, state) in events {
            let updated = sqlx::query(
                "UPDATE events SET status = ?, lease_owner = NULL, lease_expires_at = NULL, last_error = ?, finished_at = ?
                 WHERE id = ? AND lease_owner = ? AND status = 'pending'",
            )
            .bind(status.as_str())
            .bind(&decision.error)
            .bind(now)
            .bind(event.id)
            .bind(&event.lease_owner)
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            insert_decision(&mut tx, event.id, decision, now).await?;
            if let (Some(location), Some(contact), Some(tags)) =
                (&state.location_id, &state.contact_id, &state.tags)
            {
                let tags = to_json(tags)?;
                sqlx::query(
                    "INSERT INTO contact_state (location_id, contact_id, tags, updated_at) VALUES (?, ?, ?, ?)
                     ON CONFLICT (location_id, contact_id) DO UPDATE SET tags = excluded.tags, updated_at = excluded.updated_at",
                )
                .bind(location.as_str())
                .bind(contact.as_str())
                .bind(tags)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            if let (Some(location), Some((opportunity, stage))) = (&state.location_id, &state.stage)
            {
                sqlx::query(
                    "INSERT INTO opportunity_state (location_id, opportunity_id, stage, updated_at) VALUES (?, ?, ?, ?)
                     ON CONFLICT (location_id, opportunity_id) DO UPDATE SET stage = excluded.stage, updated_at = excluded.updated_at",
                )
                .bind(location.as_str())
                .bind(opportunity.as_str())
                .bind(stage)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(true)
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
            "UPDATE events SET lease_owner = NULL, lease_expires_at = NULL, available_at = ?, last_error = ?
             WHERE id = ? AND lease_owner = ? AND status = 'pending'",
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
        insert_decision(&mut tx, event.id, decision, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn defer(&self, event: &Claimed, at: SystemTime) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE events SET lease_owner = NULL, lease_expires_at = NULL, available_at = ?, attempts = MAX(attempts - 1, 0)
             WHERE id = ? AND lease_owner = ? AND status = 'pending'",
        )
        .bind(millis(at))
        .bind(event.id)
        .bind(&event.lease_owner)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn defer_location(
        &self,
        location: &LocationId,
        at: SystemTime,
    ) -> Result<u64, StoreError> {
        let now = millis(SystemTime::now());
        let r = sqlx::query(
            "UPDATE events SET available_at = ?
             WHERE status = 'pending' AND location_id = ? AND available_at <= ?
               AND (lease_expires_at IS NULL OR lease_expires_at < ?)",
        )
        .bind(millis(at))
        .bind(location.as_str())
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    async fn known_followers(
        &self,
        location: &LocationId,
        contact: &ContactId,
        since: SystemTime,
    ) -> Result<Option<Vec<crate::ids::UserId>>, StoreError> {
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
        followers: &[crate::ids::UserId],
        holder: Option<(&str, i64)>,
    ) -> Result<bool, StoreError> {
        let written = sqlx::query(
            "INSERT INTO known_followers (location_id, contact_id, followers, seen_at)
             SELECT ?1, ?2, ?3, ?4
             WHERE ?5 IS NULL
                OR EXISTS (SELECT 1 FROM events WHERE id = ?6 AND lease_owner = ?5 AND lease_expires_at > ?4)
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

    async fn extend(&self, owner: &str, ids: &[i64], lease: Duration) -> Result<u64, StoreError> {
        let ids = serde_json::to_string(ids).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let r = sqlx::query(
            "UPDATE events SET lease_expires_at = ?
             WHERE lease_owner = ? AND status = 'pending' AND id IN (SELECT value FROM json_each(?))",
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
            "UPDATE events SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = ?",
        )
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    async fn release_all(&self) -> Result<u64, StoreError> {
        let r = sqlx::query("UPDATE events SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner IS NOT NULL")
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

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
             ORDER BY id DESC LIMIT ?4",
        )
        .bind(filter.status.map(EventStatus::as_str))
        .bind(filter.contact.as_ref().map(|c| c.as_str()))
        .bind(filter.since.map(millis))
        .bind(i64::from(if filter.limit == 0 { u32::MAX } else { filter.limit }))
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let event = record(&r)?;
            let last_decision = self.decisions(event.id).await?.pop();
            out.push(EventSummary {
                event,
                received_at: r.get("received_at"),
                last_decision,
            });
        }
        Ok(out)
    }

    async fn replay(&self, ids: &[i64]) -> Result<u64, StoreError> {
        let now = millis(SystemTime::now());
        let mut tx = self.pool.begin().await?;
        let mut queued = 0;
        for id in ids {
            let r = sqlx::query(
                "UPDATE events SET status = 'pending', available_at = ?, attempts = 0, finished_at = NULL,
                        lease_owner = NULL, lease_expires_at = NULL
                 WHERE id = ? AND (lease_expires_at IS NULL OR lease_expires_at < ?)",
            )
            .bind(now)
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            queued += r.rows_affected();
            sqlx::query("DELETE FROM token_failures WHERE location_id = (SELECT location_id FROM events WHERE id = ?)")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(queued)
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

    async fn mark_token_failing(
        &self,
        location: &LocationId,
        fingerprint: &str,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO token_failures (location_id, fingerprint, error, since) VALUES (?, ?, ?, ?)
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

    async fn token_failing(&self, location: &LocationId) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT fingerprint FROM token_failures WHERE location_id = ?")
                .bind(location.as_str())
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn token_failures(&self) -> Result<Vec<(LocationId, String)>, StoreError> {
        let rows = sqlx::query("SELECT location_id, fingerprint FROM token_failures")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    LocationId::new(r.get::<String, _>("location_id")),
                    r.get("fingerprint"),
                )
            })
            .collect())
    }

    async fn park(&self, event: &Claimed, decision: &Decision) -> Result<bool, StoreError> {
        self.retry_at(event, from_millis(PARKED), decision).await
    }

    async fn parked_locations(&self) -> Result<Vec<LocationId>, StoreError> {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT location_id FROM events WHERE status = 'pending' AND available_at >= ?")
                .bind(PARKED)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(LocationId::new).collect())
    }

    async fn resume_location(&self, location: &LocationId) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query("UPDATE events SET available_at = ? WHERE status = 'pending' AND available_at >= ? AND location_id = ?")
            .bind(millis(SystemTime::now()))
            .bind(PARKED)
            .bind(location.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM token_failures WHERE location_id = ?")
            .bind(location.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected())
    }

    async fn prune(&self, before: SystemTime, dedup_window: Duration) -> Result<u64, StoreError> {
        let cutoff = millis(before);
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM decisions WHERE event_id IN
                 (SELECT id FROM events WHERE status != 'pending' AND finished_at < ?)",
        )
        .bind(cutoff)
        .execute(&mut *tx)
        .await?;
        let events =
            sqlx::query("DELETE FROM events WHERE status != 'pending' AND finished_at < ?")
                .bind(cutoff)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        let seen_cutoff = millis(SystemTime::now())
            - i64::try_from(dedup_window.as_millis()).unwrap_or(i64::MAX / 2);
        sqlx::query("DELETE FROM webhook_ids WHERE received_at < ?")
            .bind(seen_cutoff)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(events)
    }

    async fn queue_stats(&self) -> Result<QueueStats, StoreError> {
        let row = sqlx::query(
            "SELECT
                (SELECT COUNT(*) FROM events WHERE status = 'pending') AS pending,
                (SELECT MIN(received_at) FROM events WHERE status = 'pending') AS oldest,
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

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

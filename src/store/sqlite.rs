//! The embedded SQLite store (WAL mode): the default, for a single instance.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::sqlite_writer::{BUSY_TIMEOUT, Writer};
use super::*;

/// Creates the database's directory (mode 0700) and file (0600) when missing, and narrows an
/// existing file, its WAL and its shared-memory file to 0600: they hold webhook bodies, which
/// are personal data. SQLite gives the WAL and shared-memory files the database file's mode.
/// An existing directory is left as it is (it may be shared, such as `/tmp`).
fn private_files(path: &std::path::Path) -> Result<(), StoreError> {
    let failed = |what: &str, e: std::io::Error| {
        StoreError::Corrupt(format!("cannot {what} {}: {e}", path.display()))
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(dir)
            .map_err(|e| failed("create the directory of", e))?;
    }
    let mut open = std::fs::OpenOptions::new();
    open.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    open.open(path).map_err(|e| failed("create", e))?;
    #[cfg(unix)]
    for suffix in ["", "-wal", "-shm"] {
        use std::os::unix::fs::PermissionsExt;
        let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::metadata(&file) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| failed("narrow the permissions of", e))?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// Reads (WAL: they never wait for the writer).
    pool: SqlitePool,
    /// Every write of the process goes through this one connection's thread, which commits
    /// the writes that queue while it works together (group commit).
    writer: Writer,
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
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        if !create && !options.get_filename().exists() {
            return Err(StoreError::Corrupt(format!(
                "no database at {} (is AUTOFOLLOW_DATABASE_URL the service's?)",
                options.get_filename().display()
            )));
        }
        if create {
            private_files(options.get_filename())?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        let writer = Writer::start(options.get_filename()).await?;
        Ok(SqliteStore { pool, writer })
    }
}

/// The claimed rows a `… RETURNING id, kind, location_id, contact_id, body, attempts,
/// received_at` statement returns, oldest first.
fn claimed_rows(
    stmt: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
    owner: &str,
) -> Result<Vec<Claimed>, StoreError> {
    let mut claimed = stmt
        .query_map(params, |r| {
            Ok(Claimed {
                id: r.get(0)?,
                kind: BodyKind::parse(&r.get::<_, String>(1)?),
                location_id: r.get(2)?,
                contact_id: r.get(3)?,
                body: r.get(4)?,
                attempt: u32::try_from(r.get::<_, i64>(5)?).unwrap_or(u32::MAX),
                received_at: from_millis(r.get(6)?),
                lease_owner: owner.to_owned(),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    claimed.sort_by_key(|c| c.id);
    Ok(claimed)
}

/// Records a decision (made into a row before it goes to the writer).
fn insert_decision(
    conn: &Connection,
    d: &DecisionRow,
    event_id: i64,
    now: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
            "INSERT INTO decisions (event_id, attempt, matched, plan, calls, outcome, error, dry_run, batch, rules_version, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?
        .execute(rusqlite::params![
            event_id,
            d.attempt,
            d.matched,
            d.plan,
            d.calls,
            d.outcome,
            d.error,
            d.dry_run,
            d.batch,
            d.rules_version,
            now,
        ])?;
    Ok(())
}

/// What finishing one event writes (owned: it goes to the writer thread).
struct Finish {
    id: i64,
    owner: String,
    decision: DecisionRow,
    tags: Option<(String, String, String)>,
    stage: Option<(String, String, String)>,
}

fn now_ms() -> i64 {
    millis(SystemTime::now())
}

/// Releases a claimed event with the status of its decision's outcome (pending to retry at
/// `at`, or parked), recording the decision; false when the lease was lost.
fn release(
    conn: &Connection,
    id: i64,
    owner: &str,
    at: Option<i64>,
    decision: &DecisionRow,
) -> Result<bool, StoreError> {
    let updated = conn
        .prepare_cached(
            "UPDATE events SET status = ?5, lease_owner = NULL, lease_expires_at = NULL,
                    available_at = COALESCE(?1, available_at), last_error = ?2
             WHERE id = ?3 AND lease_owner = ?4 AND status = 'pending'",
        )?
        .execute((at, &decision.error, id, owner, decision.status()))?;
    if updated == 0 {
        return Ok(false);
    }
    insert_decision(conn, decision, id, now_ms())?;
    Ok(true)
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_event(
        &self,
        event: NewEvent,
        dedup_window: Duration,
    ) -> Result<Inserted, StoreError> {
        self.writer.insert(event, dedup_window).await
    }

    async fn claim(
        &self,
        owner: &str,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let owner = owner.to_owned();
        self.writer
            .write(move |conn| {
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
                           -- Settle: the contact waits while any of its newer webhooks does.
                           AND NOT EXISTS (
                               SELECT 1 FROM events n
                               WHERE n.status = 'pending' AND n.location_id = e.location_id
                                 AND n.contact_id = e.contact_id AND n.id > e.id
                                 -- `+`: probe the contact's index, not every settling event.
                                 AND +n.available_at > ?3)
                         ORDER BY e.available_at, e.id
                         LIMIT ?4)
                     RETURNING id, kind, location_id, contact_id, body, attempts, received_at",
                )?;
                claimed_rows(
                    &mut stmt,
                    (&owner, lease_until(now, lease), now, i64::from(limit)),
                    &owner,
                )
            })
            .await
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
        let owner = owner.to_owned();
        let (location, contact, first) = (
            first.location_id.as_str().to_owned(),
            first.contact_id.as_str().to_owned(),
            first.id,
        );
        self.writer
            .write(move |conn| {
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
                claimed_rows(
                    &mut stmt,
                    (
                        &location,
                        &contact,
                        first,
                        now,
                        &owner,
                        lease_until(now, lease),
                        i64::from(limit),
                    ),
                    &owner,
                )
            })
            .await
    }

    async fn finish_all(
        &self,
        events: &[(&Claimed, &Decision, &NewState)],
    ) -> Result<bool, StoreError> {
        let finishes = events
            .iter()
            .map(|(event, decision, state)| {
                let location = state.location_id.as_ref().map(|l| l.as_str().to_owned());
                Ok(Finish {
                    id: event.id,
                    owner: event.lease_owner.clone(),
                    decision: DecisionRow::new(decision)?,
                    tags: match (&location, &state.contact_id, &state.tags) {
                        (Some(l), Some(c), Some(tags)) => {
                            Some((l.clone(), c.as_str().to_owned(), to_json(tags)?))
                        }
                        _ => None,
                    },
                    stage: match (&location, &state.stage) {
                        (Some(l), Some((o, stage))) => {
                            Some((l.clone(), o.as_str().to_owned(), stage.clone()))
                        }
                        _ => None,
                    },
                })
            })
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
                Ok(updated as u64)
            })
            .await
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
                let events = conn.execute("DELETE FROM events WHERE contact_id = ?1", [&contact])?;
                states += conn.execute("DELETE FROM contact_state WHERE contact_id = ?1", [&contact])?;
                states +=
                    conn.execute("DELETE FROM known_followers WHERE contact_id = ?1", [&contact])?;
                Ok(Erased {
                    events: events as u64,
                    decisions: decisions as u64,
                    states: states as u64,
                })
            })
            .await
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

    async fn token_failures(&self) -> Result<Vec<(LocationId, String)>, StoreError> {
        let rows = sqlx::query("SELECT location_id, fingerprint FROM token_failures")
            .fetch_all(&self.pool)
            .await?;
        Ok(stored_ids(
            rows.iter()
                .map(|r| (r.get("location_id"), r.get("fingerprint"))),
        ))
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

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

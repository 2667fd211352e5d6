//! The embedded SQLite store (WAL mode): the default, for a single instance.

mod backfills;
mod history;
mod installations;
mod pools;
mod queue;
mod state;

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
    away: AwayCache,
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
            .foreign_keys(true)
            .page_size(1024);
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
        Ok(SqliteStore {
            pool,
            writer,
            away: AwayCache::default(),
        })
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
    /// (location, row).
    assignee: Option<(String, AssigneeRow)>,
    /// (location, contact, changes).
    ledger: Option<(String, String, Vec<LedgerRow>)>,
    /// (location, contact, the follower list as JSON).
    followers: Option<(String, String, String)>,
}

impl Finish {
    /// What finishing `event` writes, ready for the writer thread.
    fn new(event: &Claimed, decision: &Decision, state: &NewState) -> Result<Finish, StoreError> {
        let location = state.location_id.as_ref().map(|l| l.as_str().to_owned());
        let contact = state.contact_id.as_ref().map(|c| c.as_str().to_owned());
        let tags = match (&location, &contact, &state.tags) {
            (Some(l), Some(c), Some(tags)) => Some((l.clone(), c.clone(), to_json(tags)?)),
            _ => None,
        };
        let stage = match (&location, &state.stage) {
            (Some(l), Some((o, stage))) => Some((l.clone(), o.as_str().to_owned(), stage.clone())),
            _ => None,
        };
        let followers = match (&location, &contact, &state.followers) {
            (Some(l), Some(c), Some(list)) => Some((l.clone(), c.clone(), to_json(list)?)),
            _ => None,
        };
        let ledger = match (&location, &contact, state.ledger.is_empty()) {
            (Some(l), Some(c), false) => {
                let rows = state.ledger.iter().map(LedgerChange::row).collect();
                Some((l.clone(), c.clone(), rows))
            }
            _ => None,
        };
        Ok(Finish {
            id: event.id,
            owner: event.lease_owner.clone(),
            decision: DecisionRow::new(decision)?,
            tags,
            stage,
            assignee: location.zip(state.assignee_row()),
            ledger,
            followers,
        })
    }
}

/// Writes an event's ledger changes (inside the finishing transaction).
fn write_ledger(
    conn: &Connection,
    (location, contact, rows): &(String, String, Vec<LedgerRow>),
    event: i64,
    now: i64,
) -> Result<(), StoreError> {
    for r in rows {
        if r.added {
            conn.prepare_cached(
                "INSERT INTO owned_followers (location_id, contact_id, user_id, rule, follow, subject, rules_version, event_id, added_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (location_id, contact_id, user_id, rule) DO UPDATE SET
                     follow = excluded.follow, subject = excluded.subject, rules_version = excluded.rules_version,
                     event_id = CASE WHEN owned_followers.removed_at IS NULL THEN owned_followers.event_id ELSE excluded.event_id END,
                     added_at = CASE WHEN owned_followers.removed_at IS NULL THEN owned_followers.added_at ELSE excluded.added_at END,
                     removed_at = NULL, removed_event_id = NULL, removed_by = NULL",
            )?
            .execute(rusqlite::params![
                location, contact, r.user, r.rule, r.follow, r.subject, r.rules_version, event, now
            ])?;
        } else {
            conn.prepare_cached(
                "UPDATE owned_followers SET removed_at = ?6, removed_event_id = ?5, removed_by = ?7
                 WHERE location_id = ?1 AND contact_id = ?2 AND user_id = ?3
                   AND (?4 IS NULL OR rule = ?4) AND removed_at IS NULL",
            )?
            .execute(rusqlite::params![
                location,
                contact,
                r.user,
                r.rule,
                event,
                now,
                r.removed_by
            ])?;
        }
    }
    Ok(())
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
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// One job of the writer: the heads, each contact's later events and its snapshot, in
    /// the transaction that leases them.
    async fn claim_groups(
        &self,
        owner: &str,
        limit: u32,
        batch: u32,
        lease: Duration,
        settle_max: Option<Duration>,
    ) -> Result<Vec<ClaimedGroup>, StoreError> {
        let owner = owner.to_owned();
        self.writer
            .write(move |conn| {
                let heads = queue::claim_heads(conn, &owner, limit, lease, settle_max)?;
                let mut groups = Vec::with_capacity(heads.len());
                for head in heads {
                    let rest = batch.saturating_sub(1);
                    let later = match queue::has_later(conn, &head)? {
                        true => queue::claim_after(conn, &owner, &head, rest, lease)?,
                        false => Vec::new(),
                    };
                    let contact = state::snapshot(conn, &head.location_id, &head.contact_id)?;
                    groups.push(ClaimedGroup::new(head, later, contact));
                }
                Ok(groups)
            })
            .await
    }
}

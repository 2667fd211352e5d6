//! `autofollow migrate`: copy a SQLite store into an empty PostgreSQL database, to move from
//! one instance to several replicas without losing queued work or state.
//!
//! Everything is copied: events (pending ones stay pending, in order, with their ids, attempts
//! and retry times), the `webhookId`s seen (so GoHighLevel's re-deliveries stay duplicates),
//! contact and opportunity state (so `tag_added`, `stage_entered` … keep working), known
//! followers, refused tokens, rate-limit holds and the decision history. The SQLite file is read in one
//! snapshot; the PostgreSQL side is written in one transaction, with its tables locked, and
//! committed only after the row counts are checked, so a failed migration leaves the database
//! as it was.

use sqlx::postgres::Postgres;
use sqlx::sqlite::{Sqlite, SqliteRow};
use sqlx::{QueryBuilder, Row, Transaction};

use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use super::{StoreError, is_postgres, millis};

/// Rows per `INSERT`: well inside PostgreSQL's 65,535 parameters, and a bounded amount of
/// event bodies in memory at once.
const BATCH: i64 = 250;

#[derive(Clone, Copy)]
enum Ty {
    Text,
    Int,
    /// An SQLite integer stored as a PostgreSQL boolean.
    Bool,
}

struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Ty)],
    /// Has an identity column `id` whose values are kept.
    identity: bool,
}

/// In the order they are copied (decisions refer to events). Leases are not copied: the
/// SQLite service is stopped, so every pending event is free to claim.
const TABLES: &[Table] = &[
    Table {
        name: "events",
        columns: &[
            ("id", Ty::Int),
            ("kind", Ty::Text),
            ("event_type", Ty::Text),
            ("location_id", Ty::Text),
            ("contact_id", Ty::Text),
            ("opportunity_id", Ty::Text),
            ("webhook_id", Ty::Text),
            ("body", Ty::Text),
            ("received_at", Ty::Int),
            ("status", Ty::Text),
            ("attempts", Ty::Int),
            ("available_at", Ty::Int),
            ("last_error", Ty::Text),
            ("finished_at", Ty::Int),
        ],
        identity: true,
    },
    Table {
        name: "decisions",
        columns: &[
            ("id", Ty::Int),
            ("event_id", Ty::Int),
            ("attempt", Ty::Int),
            ("matched", Ty::Text),
            ("plan", Ty::Text),
            ("calls", Ty::Text),
            ("outcome", Ty::Text),
            ("error", Ty::Text),
            ("dry_run", Ty::Bool),
            ("batch", Ty::Text),
            ("rules_version", Ty::Text),
            ("created_at", Ty::Int),
        ],
        identity: true,
    },
    Table {
        name: "webhook_ids",
        columns: &[
            ("webhook_id", Ty::Text),
            ("event_id", Ty::Int),
            ("received_at", Ty::Int),
        ],
        identity: false,
    },
    Table {
        name: "contact_state",
        columns: &[
            ("location_id", Ty::Text),
            ("contact_id", Ty::Text),
            ("tags", Ty::Text),
            ("updated_at", Ty::Int),
        ],
        identity: false,
    },
    Table {
        name: "opportunity_state",
        columns: &[
            ("location_id", Ty::Text),
            ("opportunity_id", Ty::Text),
            ("stage", Ty::Text),
            ("updated_at", Ty::Int),
        ],
        identity: false,
    },
    Table {
        name: "assignees",
        columns: &[
            ("location_id", Ty::Text),
            ("kind", Ty::Text),
            ("record_id", Ty::Text),
            ("user_id", Ty::Text),
            ("updated_at", Ty::Int),
        ],
        identity: false,
    },
    Table {
        name: "owned_followers",
        columns: &[
            ("location_id", Ty::Text),
            ("contact_id", Ty::Text),
            ("user_id", Ty::Text),
            ("rule", Ty::Text),
            ("follow", Ty::Text),
            ("subject", Ty::Text),
            ("rules_version", Ty::Text),
            ("event_id", Ty::Int),
            ("added_at", Ty::Int),
            ("removed_at", Ty::Int),
            ("removed_event_id", Ty::Int),
            ("removed_by", Ty::Text),
        ],
        identity: false,
    },
    Table {
        name: "pool_turns",
        columns: &[
            ("location_id", Ty::Text),
            ("pool", Ty::Text),
            ("user_id", Ty::Text),
            ("current", Ty::Int),
            ("handed", Ty::Int),
        ],
        identity: false,
    },
    Table {
        name: "pool_picks",
        columns: &[
            ("location_id", Ty::Text),
            ("pool", Ty::Text),
            ("contact_id", Ty::Text),
            ("user_id", Ty::Text),
            ("picked_at", Ty::Int),
        ],
        identity: false,
    },
    Table {
        name: "away",
        columns: &[
            ("user_id", Ty::Text),
            ("starts_on", Ty::Text),
            ("ends_on", Ty::Text),
            ("set_at", Ty::Int),
        ],
        identity: false,
    },
    Table {
        name: "backfills",
        columns: &[
            ("id", Ty::Int),
            ("location_id", Ty::Text),
            ("since", Ty::Int),
            ("dry_run", Ty::Bool),
            ("phase", Ty::Text),
            ("cursor", Ty::Text),
            ("state", Ty::Text),
            ("total", Ty::Int),
            ("seen", Ty::Int),
            ("changed", Ty::Int),
            ("queued", Ty::Int),
            ("report", Ty::Text),
            ("error", Ty::Text),
            ("started_at", Ty::Int),
            ("updated_at", Ty::Int),
            ("finished_at", Ty::Int),
        ],
        identity: true,
    },
    Table {
        name: "known_followers",
        columns: &[
            ("location_id", Ty::Text),
            ("contact_id", Ty::Text),
            ("followers", Ty::Text),
            ("seen_at", Ty::Int),
        ],
        identity: false,
    },
    Table {
        name: "token_failures",
        columns: &[
            ("location_id", Ty::Text),
            ("fingerprint", Ty::Text),
            ("error", Ty::Text),
            ("since", Ty::Int),
        ],
        identity: false,
    },
    // Sealed tokens are copied as they are: the PostgreSQL replicas need the same
    // AUTOFOLLOW_ENCRYPTION_KEY. A refresh lease is not copied.
    Table {
        name: "installations",
        columns: &[
            ("id", Ty::Text),
            ("kind", Ty::Text),
            ("company_id", Ty::Text),
            ("access_token", Ty::Text),
            ("refresh_token", Ty::Text),
            ("scopes", Ty::Text),
            ("issued_at", Ty::Int),
            ("expires_at", Ty::Int),
            ("state", Ty::Text),
            ("problem", Ty::Text),
            ("version", Ty::Int),
            ("updated_at", Ty::Int),
        ],
        identity: false,
    },
    Table {
        name: "location_holds",
        columns: &[("location_id", Ty::Text), ("held_until", Ty::Int)],
        identity: false,
    },
];

enum Value {
    Text(Option<String>),
    Int(Option<i64>),
    Bool(Option<bool>),
}

/// What a migration copied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Rows per table, in copy order.
    pub tables: Vec<(&'static str, u64)>,
    /// Events still to be processed (now in PostgreSQL's queue).
    pub pending: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{0}")]
    Usage(String),
    /// The source is in use: copying now could miss what it does next.
    #[error(
        "{0} events in the SQLite store are leased by a running service: stop it and, if it was killed, wait until its leases expire (AUTOFOLLOW_LEASE, 60s by default), then migrate again"
    )]
    SourceInUse(u64),
    #[error(
        "the PostgreSQL database already holds data ({0}); migrate copies into an empty database only, so nothing was changed"
    )]
    TargetNotEmpty(String),
    #[error("copied {table}: {read} rows read but {written} in PostgreSQL; nothing was changed")]
    Mismatch {
        table: &'static str,
        read: u64,
        written: u64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for MigrateError {
    fn from(e: sqlx::Error) -> Self {
        MigrateError::Store(StoreError::Database(e))
    }
}

/// Copies the SQLite store at `from` (`sqlite://PATH`, which must exist) into the PostgreSQL
/// database at `to` (`postgres://…`, created schema or empty), migrating both to the current
/// schema first.
pub async fn sqlite_to_postgres(from: &str, to: &str) -> Result<Report, MigrateError> {
    if !from.starts_with("sqlite:") {
        return Err(MigrateError::Usage(
            "--from must be the SQLite store, sqlite://PATH".into(),
        ));
    }
    if !is_postgres(to) {
        return Err(MigrateError::Usage(
            "--to must be a PostgreSQL database, postgres://…".into(),
        ));
    }
    let source = SqliteStore::open_existing(from).await?;

    // One read transaction: a consistent snapshot of the whole file.
    let mut src = source.pool().begin().await?;
    let leased: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM events WHERE status = 'pending' AND lease_expires_at > ?",
    )
    .bind(millis(std::time::SystemTime::now()))
    .fetch_one(&mut *src)
    .await?;
    if leased > 0 {
        return Err(MigrateError::SourceInUse(leased.unsigned_abs()));
    }

    let target = PgStore::open(to).await?;
    let mut dst = target.pool().begin().await?;
    lock_empty_target(&mut dst).await?;

    let mut report = Report::default();
    for table in TABLES {
        let read = copy(table, &mut src, &mut dst).await?;
        let written: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}", table.name))
            .fetch_one(&mut *dst)
            .await?;
        if written.unsigned_abs() != read {
            return Err(MigrateError::Mismatch {
                table: table.name,
                read,
                written: written.unsigned_abs(),
            });
        }
        if table.identity {
            // New rows continue after the copied ids.
            sqlx::query(&format!(
                "SELECT setval(pg_get_serial_sequence('{0}', 'id'), \
                 COALESCE((SELECT MAX(id) FROM {0}), 0) + 1, false)",
                table.name
            ))
            .execute(&mut *dst)
            .await?;
        }
        report.tables.push((table.name, read));
    }
    let pending: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE status IN ('pending', 'parked')")
            .fetch_one(&mut *dst)
            .await?;
    report.pending = pending.unsigned_abs();
    dst.commit().await?;
    src.rollback().await?;
    Ok(report)
}

/// Locks every table of the target (replicas already started on the database wait until the
/// copy is committed), and refuses a target that holds any row.
async fn lock_empty_target(
    dst: &mut sqlx::Transaction<'_, sqlx::Postgres>,
) -> Result<(), MigrateError> {
    let names: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
    sqlx::query(&format!(
        "LOCK TABLE {} IN EXCLUSIVE MODE",
        names.join(", ")
    ))
    .execute(&mut **dst)
    .await?;
    let mut held = Vec::new();
    for table in TABLES {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}", table.name))
            .fetch_one(&mut **dst)
            .await?;
        if n > 0 {
            held.push(format!("{n} rows in {}", table.name));
        }
    }
    if !held.is_empty() {
        return Err(MigrateError::TargetNotEmpty(held.join(", ")));
    }
    Ok(())
}

/// Copies one table in batches keyed on SQLite's rowid; returns the rows read.
async fn copy(
    table: &Table,
    src: &mut Transaction<'_, Sqlite>,
    dst: &mut Transaction<'_, Postgres>,
) -> Result<u64, MigrateError> {
    let columns: Vec<&str> = table.columns.iter().map(|(c, _)| *c).collect();
    let select = format!(
        "SELECT rowid AS copy_rowid, {} FROM {} WHERE rowid > ? ORDER BY rowid LIMIT ?",
        columns.join(", "),
        table.name
    );
    let mut after = i64::MIN;
    let mut read = 0u64;
    loop {
        let rows: Vec<SqliteRow> = sqlx::query(&select)
            .bind(after)
            .bind(BATCH)
            .fetch_all(&mut **src)
            .await?;
        let Some(last) = rows.last() else {
            return Ok(read);
        };
        after = last.try_get("copy_rowid")?;
        let mut values = Vec::with_capacity(rows.len());
        for row in &rows {
            values.push(decode(table, row)?);
        }
        read += values.len() as u64;
        let mut insert: QueryBuilder<Postgres> = QueryBuilder::new(format!(
            "INSERT INTO {} ({}) {}",
            table.name,
            columns.join(", "),
            if table.identity {
                "OVERRIDING SYSTEM VALUE "
            } else {
                ""
            }
        ));
        insert.push_values(values, |mut b, row| {
            for value in row {
                match value {
                    Value::Text(v) => b.push_bind(v),
                    Value::Int(v) => b.push_bind(v),
                    Value::Bool(v) => b.push_bind(v),
                };
            }
        });
        insert.build().execute(&mut **dst).await?;
    }
}

fn decode(table: &Table, row: &SqliteRow) -> Result<Vec<Value>, sqlx::Error> {
    table
        .columns
        .iter()
        .map(|(column, ty)| {
            Ok(match ty {
                Ty::Text => Value::Text(row.try_get(*column)?),
                Ty::Int => Value::Int(row.try_get(*column)?),
                Ty::Bool => Value::Bool(row.try_get::<Option<i64>, _>(*column)?.map(|v| v != 0)),
            })
        })
        .collect()
}

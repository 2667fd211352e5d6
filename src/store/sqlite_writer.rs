//! The one SQLite connection that writes, on a thread of its own.
//!
//! SQLite has a single write lock per database. When several connections write, a writer
//! that finds the lock taken sleeps in SQLite's busy handler (in growing steps), and every
//! commit is a sync of its own. Instead, every write of the process (webhooks being stored,
//! the worker's claims, results and lease renewals, operator commands) is a job in one
//! queue, and this thread runs the jobs that queued while the previous commit ran **in one
//! transaction**: one lock acquisition and one commit (one fsync) for all of them, nobody
//! sleeping on the lock. Each job answers only after the commit, so an answer still means
//! committed. Jobs run in the order they came, except that when webhooks and other jobs
//! queued together, the webhooks are committed first in a transaction of their own: an
//! acknowledgement never waits for the worker's larger writes.
//!
//! Each job runs inside a savepoint: a job that fails on its own rows (a constraint, data it
//! cannot read) is rolled back alone and gets its error; the others commit. When the store
//! itself fails (locked by another process past the busy timeout, I/O, disk full), the
//! transaction is rolled back and every job of the batch, and every job queued behind it,
//! gets the error at once: webhooks are answered 429 right away instead of one busy timeout
//! each, and GoHighLevel delivers them again.
//!
//! The thread uses SQLite's own synchronous API (rusqlite on the same `libsqlite3-sys` as
//! sqlx): statements run in the thread that owns the connection, with no hop to another
//! thread per statement. Reads stay on sqlx's pool; in WAL mode they never wait for the
//! writer.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use super::{Inserted, NewEvent, StoreError, millis};

/// Jobs run in one transaction at most.
const BATCH: usize = 256;

/// How long a write waits for the lock another process holds before it fails.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How a job's step inside the shared transaction ended.
enum Step {
    Done,
    /// The job failed on its own rows or data: its savepoint rolls back, the others commit.
    Failed,
    /// The store failed: the whole transaction rolls back.
    StoreFailed(String),
}

/// A job of the writer thread: a step run in the shared transaction, and an answer sent
/// once the transaction's outcome is known.
trait Job: Send {
    /// Storing a webhook: committed ahead of other jobs.
    fn urgent(&self) -> bool;
    fn run(&mut self, conn: &Connection) -> Step;
    /// `Ok`: the transaction committed (the job's own result is sent); `Err`: it did not
    /// (the job may not have run at all).
    fn answer(self: Box<Self>, committed: Result<(), StoreError>);
}

/// A closure and where its result goes.
struct Write<T, F> {
    urgent: bool,
    f: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for Write<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn urgent(&self) -> bool {
        self.urgent
    }

    fn run(&mut self, conn: &Connection) -> Step {
        let Some(f) = self.f.take() else {
            return Step::Failed;
        };
        let result = f(conn);
        let step = match &result {
            Ok(_) => Step::Done,
            Err(e) if store_failed(e) => Step::StoreFailed(e.to_string()),
            Err(_) => Step::Failed,
        };
        self.result = Some(result);
        step
    }

    fn answer(self: Box<Self>, committed: Result<(), StoreError>) {
        let Write { result, reply, .. } = *self;
        let result = committed.and_then(|()| {
            result.unwrap_or_else(|| Err(StoreError::Unavailable("the write did not run".into())))
        });
        let _ = reply.send(result);
    }
}

/// The handle to the writer thread; cloning it shares the thread.
#[derive(Clone)]
pub(crate) struct Writer {
    jobs: mpsc::Sender<Box<dyn Job>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the SQLite writer stopped".into())
}

impl Writer {
    /// Opens the writing connection to the (already migrated) database at `path` and starts
    /// its thread. The thread ends when the last handle is dropped.
    pub(crate) async fn start(path: &Path) -> Result<Writer, StoreError> {
        let (jobs, queue) = mpsc::channel(BATCH * 4);
        let (opened, open_result) = oneshot::channel();
        let path = path.to_owned();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || match open(&path) {
                Ok(conn) => {
                    let _ = opened.send(Ok(()));
                    run(conn, queue);
                }
                Err(e) => {
                    let _ = opened.send(Err(e));
                }
            })
            .map_err(|e| StoreError::Corrupt(format!("cannot start the SQLite writer: {e}")))?;
        open_result.await.map_err(|_| stopped())??;
        Ok(Writer { jobs })
    }

    /// Stores a webhook unless its `webhookId` was seen within `dedup_window`; answers once
    /// it is committed.
    pub(crate) async fn insert(
        &self,
        event: NewEvent,
        dedup_window: Duration,
    ) -> Result<Inserted, StoreError> {
        self.submit(true, move |conn| insert_one(conn, &event, dedup_window))
            .await
    }

    /// Runs `f` in the writer's transaction and returns what it returned once the
    /// transaction committed. An error from `f` rolls back what `f` did and nothing else,
    /// unless it is a failure of the store (see [`store_failed`]).
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(false, f).await
    }

    async fn submit<T, F>(&self, urgent: bool, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Write {
            urgent,
            f: Some(f),
            result: None,
            reply,
        };
        self.jobs.send(Box::new(job)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // FULL: a commit survives power loss, which an acknowledgement promises. Checkpoints
    // every 10,000 pages (about 40 MB of WAL) instead of SQLite's 1,000: index pages that
    // webhooks change again and again are copied into the database once per checkpoint, not
    // once per 1,000 pages (measured: about 5 % more webhooks per second, BENCHMARKS.md).
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;
         PRAGMA wal_autocheckpoint = 10000;",
    )?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Whether the error is the store's (everything in the transaction fails) rather than one
/// job's rows or data.
pub(crate) fn store_failed(e: &StoreError) -> bool {
    match e {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
            f.code != rusqlite::ErrorCode::ConstraintViolation
        }
        StoreError::Database(_) | StoreError::Unavailable(_) => true,
        StoreError::Sqlite(_) | StoreError::Migrate(_) | StoreError::Corrupt(_) => false,
    }
}

/// The thread: takes the jobs that queued while the previous transaction ran, runs them in
/// one transaction, answers them.
fn run(conn: Connection, mut queue: mpsc::Receiver<Box<dyn Job>>) {
    let mut jobs = Vec::with_capacity(BATCH);
    while let Some(job) = queue.blocking_recv() {
        jobs.push(job);
        while jobs.len() < BATCH {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // Webhooks first, in a transaction of their own when other jobs queued too: an
        // acknowledgement does not wait for the worker's larger writes (one more commit).
        let (webhooks, others): (Vec<_>, Vec<_>) = jobs.drain(..).partition(|j| j.urgent());
        let mut batches = [webhooks, others].into_iter().filter(|b| !b.is_empty());
        while let Some(mut batch) = batches.next() {
            if let Err(message) = run_together(&conn, &mut batch) {
                // The store failed: this batch and everything queued behind it fail now.
                // Webhooks are answered 429 at once (GoHighLevel delivers again); waiting one
                // busy timeout per batch would make the last of them wait many. (What
                // queued is taken before anyone is answered: a job sent after seeing the
                // failure goes to the next transaction.)
                batch.extend(batches.flatten());
                while let Ok(job) = queue.try_recv() {
                    batch.push(job);
                }
                for job in batch {
                    job.answer(Err(StoreError::Unavailable(message.clone())));
                }
                break;
            }
            for job in batch {
                job.answer(Ok(()));
            }
        }
    }
}

/// Runs the jobs in one transaction, each in a savepoint of its own. Returns the store's
/// failure, after rolling everything back.
fn run_together(conn: &Connection, jobs: &mut [Box<dyn Job>]) -> Result<(), String> {
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| StoreError::from(e).to_string())?;
    let mut all = || -> Result<(), String> {
        // Prepared once: these run twice per job.
        let sql = |s: &str| {
            conn.prepare_cached(s)
                .and_then(|mut stmt| stmt.execute([]))
                .map_err(|e| StoreError::from(e).to_string())
        };
        for job in jobs.iter_mut() {
            sql("SAVEPOINT job")?;
            // A job that panics fails its batch, not the writer (which every write needs).
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run(conn)))
                .unwrap_or_else(|_| Step::StoreFailed("a write panicked".into()));
            match step {
                Step::Done => {
                    sql("RELEASE job")?;
                }
                Step::Failed => {
                    sql("ROLLBACK TO job")?;
                    sql("RELEASE job")?;
                }
                Step::StoreFailed(message) => return Err(message),
            }
        }
        sql("COMMIT").map(|_| ())
    };
    all().inspect_err(|_| {
        // Fails only when SQLite already rolled the transaction back.
        let _ = conn.execute_batch("ROLLBACK");
    })
}

/// Stores one webhook: inserts the event, then records its webhook id; when that id was seen
/// within the window (or earlier in the same batch), the event is deleted again: a duplicate.
/// (Two statements for the usual webhook, three for the rare duplicate.)
pub(crate) fn insert_one(
    conn: &Connection,
    e: &NewEvent,
    window: Duration,
) -> Result<Inserted, StoreError> {
    let now = millis(SystemTime::now());
    let id: i64 = conn
        .prepare_cached(
            "INSERT INTO events (kind, event_type, location_id, contact_id, opportunity_id, webhook_id, body, received_at, available_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) RETURNING id",
        )?
        .query_row(
            (
                e.kind.as_str(),
                &e.event_type,
                e.location_id.as_str(),
                e.contact_id.as_str(),
                e.opportunity_id.as_ref().map(|o| o.as_str()),
                &e.webhook_id,
                &e.body,
                now,
                millis(e.available_at).max(now),
            ),
            |r| r.get(0),
        )?;
    let Some(webhook_id) = &e.webhook_id else {
        return Ok(Inserted::Accepted(id));
    };
    let cutoff = now - i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    let fresh = conn
        .prepare_cached(
            "INSERT INTO webhook_ids (webhook_id, event_id, received_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (webhook_id) DO UPDATE SET event_id = excluded.event_id, received_at = excluded.received_at
             WHERE webhook_ids.received_at < ?4
             RETURNING 1",
        )?
        .query_row((webhook_id, id, now, cutoff), |r| r.get::<_, i64>(0))
        .optional()?
        .is_some();
    if fresh {
        return Ok(Inserted::Accepted(id));
    }
    conn.prepare_cached("DELETE FROM events WHERE id = ?1")?
        .execute([id])?;
    Ok(Inserted::Duplicate)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    async fn writer() -> (Writer, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t (x INTEGER UNIQUE)")
            .unwrap();
        (Writer::start(&path).await.unwrap(), dir)
    }

    fn insert(x: i64) -> impl FnOnce(&Connection) -> Result<usize, StoreError> + Send {
        move |conn| Ok(conn.execute("INSERT INTO t (x) VALUES (?1)", [x])?)
    }

    async fn values(w: &Writer) -> Vec<i64> {
        w.write(|conn| {
            let mut stmt = conn.prepare("SELECT x FROM t ORDER BY x")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<i64>, _>>()?)
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_job_failing_on_its_own_rows_is_undone_alone() {
        let (w, _dir) = writer().await;
        // Sent together, so they share transactions; the second breaks a constraint after
        // writing a row of its own.
        let (a, b, c) = tokio::join!(
            w.write(insert(1)),
            w.write(|conn| {
                conn.execute("INSERT INTO t (x) VALUES (2)", [])?;
                Ok(conn.execute("INSERT INTO t (x) VALUES (1)", [])?)
            }),
            w.write(insert(3)),
        );
        assert_eq!(a.unwrap(), 1);
        assert!(matches!(b, Err(StoreError::Sqlite(_))), "{b:?}");
        assert_eq!(c.unwrap(), 1);
        assert_eq!(
            values(&w).await,
            vec![1, 3],
            "the failed job's own row is gone"
        );
    }

    #[tokio::test]
    async fn webhooks_are_committed_ahead_of_other_jobs_queued_with_them() {
        let (w, _dir) = writer().await;
        // A job that says when the writer runs it, then writes `x` once the test lets it go.
        let gated = |x: i64| {
            let (go, gate) = std::sync::mpsc::channel::<()>();
            let (started, running) = std::sync::mpsc::channel::<()>();
            let job = move |conn: &Connection| {
                let _ = started.send(());
                let _ = gate.recv();
                insert(x)(conn)
            };
            (go, running, job)
        };
        let queued = |w: &Writer| w.jobs.max_capacity() - w.jobs.capacity();
        async fn until(condition: impl Fn() -> bool) {
            while !condition() {
                tokio::task::yield_now().await;
            }
        }
        // The first job holds the writer while another job and a webhook queue behind it.
        // (Waiting for the queue to be empty instead was true before the first job was even
        // sent, and the writer could then take it with the others: the test spun forever.)
        let (release_first, first_running, first_job) = gated(1);
        let first = tokio::spawn({
            let w = w.clone();
            async move { w.write(first_job).await }
        });
        until(|| first_running.try_recv().is_ok()).await;
        let (release_other, _, other_job) = gated(2);
        let other = tokio::spawn({
            let w = w.clone();
            async move { w.write(other_job).await }
        });
        let webhook = tokio::spawn({
            let w = w.clone();
            async move { w.submit(true, insert(3)).await }
        });
        until(|| queued(&w) == 2).await;
        release_first.send(()).unwrap();
        // The other job cannot finish until released: the webhook is answered before it.
        let answered = tokio::time::timeout(Duration::from_secs(30), webhook).await;
        assert_eq!(
            answered
                .expect("the webhook waited for the other job")
                .unwrap()
                .unwrap(),
            1
        );
        release_other.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 1);
        assert_eq!(other.await.unwrap().unwrap(), 1);
        assert_eq!(values(&w).await, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn a_job_that_panics_fails_and_the_writer_goes_on() {
        let (w, _dir) = writer().await;
        let panicked = w
            .write(|_conn| -> Result<(), StoreError> { panic!("on purpose") })
            .await;
        assert!(
            matches!(panicked, Err(StoreError::Unavailable(_))),
            "{panicked:?}"
        );
        assert_eq!(w.write(insert(7)).await.unwrap(), 1);
        assert_eq!(values(&w).await, vec![7]);
    }

    #[tokio::test]
    async fn a_store_failure_fails_the_batch_and_everything_queued_at_once() {
        let (w, dir) = writer().await;
        // Another connection holds the write lock: the writer waits one busy timeout, then
        // every job (the waiting one and those queued behind it) fails together.
        let holder = Connection::open(dir.path().join("w.db")).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        let started = std::time::Instant::now();
        let mut jobs = tokio::task::JoinSet::new();
        for i in 0..20 {
            let w = w.clone();
            jobs.spawn(async move { w.write(insert(i)).await });
        }
        let results = jobs.join_all().await;
        let took = started.elapsed();
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Err(StoreError::Unavailable(_))))
        );
        assert!(took < BUSY_TIMEOUT * 2, "took {took:?}");
        holder.execute_batch("ROLLBACK").unwrap();
        assert_eq!(
            w.write(insert(1)).await.unwrap(),
            1,
            "writes again once free"
        );
    }
}

//! Group commit for webhooks on PostgreSQL: the webhooks that arrive while a batch commits
//! are stored together, in one statement and one commit, and each is answered once that
//! commit returns (so an acknowledgement still means committed).
//!
//! One insert per webhook in a transaction of its own spent a connection of the pool and a
//! WAL flush on each: intake stopped at about 3,300 webhooks/s, every connection waiting on a
//! commit. A batch costs one round trip and one flush whatever its size.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use super::{Inserted, NewEvent, StoreError, millis};

/// Webhooks stored by one statement at most.
const MAX_BATCH: usize = 512;

struct Job {
    event: NewEvent,
    window: Duration,
    answer: oneshot::Sender<Result<Inserted, StoreError>>,
}

/// The sending side; the batching task ends when every clone is dropped.
#[derive(Clone, Debug)]
pub(crate) struct Intake {
    jobs: mpsc::Sender<Job>,
}

impl Intake {
    /// Starts the batching task on the current Tokio runtime.
    pub(crate) fn start(pool: PgPool) -> Intake {
        let (jobs, queue) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(run(pool, queue));
        Intake { jobs }
    }

    pub(crate) async fn insert(
        &self,
        event: NewEvent,
        window: Duration,
    ) -> Result<Inserted, StoreError> {
        let (answer, answered) = oneshot::channel();
        let stopped = || StoreError::Unavailable("the PostgreSQL intake stopped".into());
        self.jobs
            .send(Job {
                event,
                window,
                answer,
            })
            .await
            .map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

async fn run(pool: PgPool, mut queue: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        store(&pool, std::mem::take(&mut batch)).await;
    }
}

/// Stores a batch and answers each of its webhooks: its id, a duplicate, or (when the
/// statement fails) the error, which changes nothing for any of them.
async fn store(pool: &PgPool, jobs: Vec<Job>) {
    let now = millis(SystemTime::now());
    // A `webhookId` twice in one batch: the later ones are duplicates of the first (one
    // statement cannot upsert a row twice).
    let mut first = HashSet::new();
    let mut rows = Vec::with_capacity(jobs.len());
    let mut answers: Vec<Option<Result<Inserted, StoreError>>> = Vec::with_capacity(jobs.len());
    for (i, job) in jobs.iter().enumerate() {
        match &job.event.webhook_id {
            Some(w) if !first.insert(w.as_str()) => answers.push(Some(Ok(Inserted::Duplicate))),
            _ => {
                answers.push(None);
                rows.push(i);
            }
        }
    }
    // Each statement takes one deduplication window (the service has one: the batch is
    // one statement).
    let mut windows: Vec<Duration> = rows.iter().map(|&i| jobs[i].window).collect();
    windows.sort();
    windows.dedup();
    for window in windows {
        let part: Vec<usize> = rows
            .iter()
            .copied()
            .filter(|&i| jobs[i].window == window)
            .collect();
        let cutoff = now - i64::try_from(window.as_millis()).unwrap_or(i64::MAX / 2);
        match insert_rows(pool, &jobs, &part, now, cutoff).await {
            Ok(ids) => {
                for (&i, id) in part.iter().zip(ids) {
                    answers[i] = Some(Ok(id.map_or(Inserted::Duplicate, Inserted::Accepted)));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for &i in &part {
                    answers[i] = Some(Err(StoreError::Unavailable(message.clone())));
                }
            }
        }
    }
    for (job, answer) in jobs.into_iter().zip(answers) {
        let answer = answer.unwrap_or_else(|| Err(StoreError::Unavailable("not stored".into())));
        // The caller may have gone (its connection closed); the webhook is stored anyway.
        let _ = job.answer.send(answer);
    }
}

/// One statement for the rows (indices into `jobs`, in arrival order, which their ids
/// follow): each event's id is drawn first, its `webhookId` recorded with it unless seen
/// since `cutoff`, and the event stored only then. Returns, per row in order, the new id or
/// `None` for a duplicate. A concurrent insert of the same id (another replica) waits for
/// this one to commit, then sees the conflict; ids are locked in their sort order, so two
/// replicas storing overlapping batches cannot deadlock.
async fn insert_rows(
    pool: &PgPool,
    jobs: &[Job],
    rows: &[usize],
    now: i64,
    cutoff: i64,
) -> Result<Vec<Option<i64>>, sqlx::Error> {
    // Borrowed: the bodies are not copied to be bound.
    let column = |f: fn(&NewEvent) -> Option<&str>| -> Vec<Option<&str>> {
        rows.iter().map(|&i| f(&jobs[i].event)).collect()
    };
    let available: Vec<i64> = rows
        .iter()
        .map(|&i| millis(jobs[i].event.available_at).max(now))
        .collect();
    let found: Vec<(i64, Option<i64>)> = sqlx::query_as(
        "WITH input AS (
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::text[], $8::bigint[])
                 WITH ORDINALITY
                 AS t(kind, event_type, location_id, contact_id, opportunity_id, webhook_id,
                      body, available_at, ord)),
         new AS (
             SELECT ordered.*, nextval(pg_get_serial_sequence('events', 'id')) AS id
             FROM (SELECT * FROM input ORDER BY ord) ordered),
         seen AS (
             INSERT INTO webhook_ids (webhook_id, event_id, received_at)
             SELECT webhook_id, id, $9 FROM new WHERE webhook_id IS NOT NULL
             ORDER BY webhook_id
             ON CONFLICT (webhook_id) DO UPDATE
             SET event_id = excluded.event_id, received_at = excluded.received_at
             WHERE webhook_ids.received_at < $10
             RETURNING event_id),
         stored AS (
             INSERT INTO events (id, kind, event_type, location_id, contact_id, opportunity_id,
                                 webhook_id, body, received_at, available_at)
             OVERRIDING SYSTEM VALUE
             SELECT id, kind, event_type, location_id, contact_id, opportunity_id, webhook_id,
                    body, $9, available_at
             FROM new WHERE webhook_id IS NULL OR id IN (SELECT event_id FROM seen)
             ORDER BY id
             RETURNING id)
         SELECT new.ord, stored.id FROM new LEFT JOIN stored ON stored.id = new.id
         ORDER BY new.ord",
    )
    .bind(column(|e| Some(e.kind.as_str())))
    .bind(column(|e| Some(&e.event_type)))
    .bind(column(|e| Some(e.location_id.as_str())))
    .bind(column(|e| Some(e.contact_id.as_str())))
    .bind(column(|e| e.opportunity_id.as_ref().map(|o| o.as_str())))
    .bind(column(|e| e.webhook_id.as_deref()))
    .bind(column(|e| Some(&e.body)))
    .bind(available)
    .bind(now)
    .bind(cutoff)
    .fetch_all(pool)
    .await?;
    if found.len() != rows.len() {
        return Err(sqlx::Error::Protocol(format!(
            "stored {} of {} webhooks",
            found.len(),
            rows.len()
        )));
    }
    Ok(found.into_iter().map(|(_, id)| id).collect())
}

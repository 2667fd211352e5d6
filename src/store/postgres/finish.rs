//! Group commit for finished work on PostgreSQL: the groups that finish while a batch
//! commits are recorded together, in one transaction of one statement per table (over
//! arrays), and each group is answered once that transaction commits (so a finish answered
//! `true` is still committed, and a group is still recorded whole or not at all).
//!
//! A transaction per group cost 5 to 7 statements and a commit each: PostgreSQL's CPU, not
//! the disk, then bounded processing (`autofollow-bench e2e --postgres`, BENCHMARKS.md).

use std::collections::{HashMap, HashSet};

use tokio::sync::{mpsc, oneshot};

use super::*;

/// Groups recorded by one transaction at most.
const MAX_BATCH: usize = 256;

/// A decision as its row is bound (JSON columns serialized by the caller's task).
pub(super) struct DecisionRow {
    event_id: i64,
    attempt: i64,
    matched: String,
    plan: String,
    calls: String,
    outcome: &'static str,
    error: Option<String>,
    dry_run: bool,
    batch: String,
    rules_version: String,
}

impl DecisionRow {
    pub(super) fn new(event_id: i64, d: &Decision) -> Result<DecisionRow, StoreError> {
        Ok(DecisionRow {
            event_id,
            attempt: i64::from(d.attempt),
            matched: to_json(&d.matched)?,
            plan: to_json(&d.plan)?,
            calls: to_json(&d.calls)?,
            outcome: d.outcome.as_str(),
            error: d.error.clone(),
            dry_run: d.dry_run,
            batch: to_json(&d.batch)?,
            rules_version: d.rules_version.clone(),
        })
    }
}

/// An event's end: (id, lease owner, status, error).
type EventEnd = (i64, String, &'static str, Option<String>);
/// (location, contact or opportunity id, value): a row of a table keyed by the two ids.
type Keyed = (String, String, String);
/// (location, kind, record id, user id).
type Assignee = (String, &'static str, String, Option<String>);
/// (location, contact, event id, the change).
type Ledger = (String, String, i64, LedgerRow);

/// One group's finish as its rows are bound: what each table receives, in event order.
#[derive(Default)]
pub(super) struct Finished {
    events: Vec<EventEnd>,
    decisions: Vec<DecisionRow>,
    tags: Vec<Keyed>,
    stages: Vec<Keyed>,
    assignees: Vec<Assignee>,
    ledger: Vec<Ledger>,
    followers: Vec<Keyed>,
}

impl Finished {
    pub(super) fn new(events: &[(&Claimed, &Decision, &NewState)]) -> Result<Finished, StoreError> {
        let mut f = Finished::default();
        for (event, decision, state) in events {
            let (status, error) = (decision.outcome.status().as_str(), decision.error.clone());
            f.events
                .push((event.id, event.lease_owner.clone(), status, error));
            f.decisions.push(DecisionRow::new(event.id, decision)?);
            f.add_state(event.id, state)?;
        }
        Ok(f)
    }

    fn add_state(&mut self, event_id: i64, state: &NewState) -> Result<(), StoreError> {
        let Some(location) = state.location_id.as_ref().map(|l| l.as_str().to_owned()) else {
            return Ok(());
        };
        if let Some((opportunity, stage)) = &state.stage {
            let row = (
                location.clone(),
                opportunity.as_str().to_owned(),
                stage.clone(),
            );
            self.stages.push(row);
        }
        if let Some((kind, record, user)) = state.assignee_row() {
            self.assignees.push((location.clone(), kind, record, user));
        }
        let Some(contact) = state.contact_id.as_ref().map(|c| c.as_str().to_owned()) else {
            return Ok(());
        };
        if let Some(tags) = &state.tags {
            self.tags
                .push((location.clone(), contact.clone(), to_json(tags)?));
        }
        for change in &state.ledger {
            let row = (location.clone(), contact.clone(), event_id, change.row());
            self.ledger.push(row);
        }
        if let Some(followers) = &state.followers {
            self.followers
                .push((location, contact, to_json(followers)?));
        }
        Ok(())
    }
}

struct Job {
    group: Finished,
    answer: oneshot::Sender<Result<bool, StoreError>>,
}

/// The sending side; the batching task ends when every clone is dropped.
#[derive(Clone, Debug)]
pub(super) struct Finisher {
    jobs: mpsc::Sender<Job>,
}

impl Finisher {
    /// Starts the batching task on the current Tokio runtime.
    pub(super) fn start(pool: PgPool) -> Finisher {
        let (jobs, queue) = mpsc::channel(MAX_BATCH);
        tokio::spawn(run(pool, queue));
        Finisher { jobs }
    }

    /// Records the group: `false` when its events were no longer all leased to it (nothing
    /// recorded).
    pub(super) async fn finish(&self, group: Finished) -> Result<bool, StoreError> {
        let (answer, answered) = oneshot::channel();
        let stopped = || StoreError::Unavailable("the PostgreSQL finisher stopped".into());
        let job = Job { group, answer };
        self.jobs.send(job).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

async fn run(pool: PgPool, mut queue: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        answer(&pool, std::mem::take(&mut batch)).await;
    }
}

/// Commits a batch and answers each group. When the batch's transaction fails, each group
/// is tried alone, so one group's rows cannot fail the others'.
async fn answer(pool: &PgPool, jobs: Vec<Job>) {
    let groups: Vec<&Finished> = jobs.iter().map(|j| &j.group).collect();
    let results: Vec<Result<bool, StoreError>> = match commit(pool, &groups).await {
        Ok(held) => held.into_iter().map(Ok).collect(),
        Err(_) if groups.len() > 1 => {
            let mut alone = Vec::with_capacity(groups.len());
            for group in &groups {
                alone.push(commit(pool, &[group]).await.map(|held| held[0]));
            }
            alone
        }
        Err(e) => vec![Err(e)],
    };
    for (job, result) in jobs.into_iter().zip(results) {
        // The caller may have gone (shutdown); what committed stays committed.
        let _ = job.answer.send(result);
    }
}

/// Records the groups in one transaction; returns, per group, whether it held its leases.
/// A group that no longer holds every one of its events records nothing: the transaction
/// is rolled back and made again without it (rare: its lease expired and was taken).
async fn commit(pool: &PgPool, groups: &[&Finished]) -> Result<Vec<bool>, StoreError> {
    let now = millis(SystemTime::now());
    let mut held = vec![true; groups.len()];
    loop {
        let kept: Vec<&Finished> = groups
            .iter()
            .zip(&held)
            .filter_map(|(g, h)| h.then_some(*g))
            .collect();
        if kept.is_empty() {
            return Ok(held);
        }
        let mut tx = pool.begin().await?;
        queue::fixed_plans(&mut tx).await?;
        let ended = end_events(&mut tx, &kept, now).await?;
        let mut lost = false;
        for (group, h) in groups.iter().zip(held.iter_mut()) {
            if *h && !group.events.iter().all(|e| ended.contains(&e.0)) {
                (*h, lost) = (false, true);
            }
        }
        if lost {
            tx.rollback().await?;
            continue;
        }
        write_rows(&mut tx, &kept, now).await?;
        tx.commit().await?;
        return Ok(held);
    }
}

/// Ends the groups' events that are still leased to them; returns the ids it ended.
///
/// The plan is fixed ([`queue::fixed_plans`]) and looks events up by id alone: an event
/// holds a lease only while it is pending (every change of status clears it), and a
/// condition on `status` let stale statistics pick a scan of every pending event, tens of
/// thousands during a drain (`EXPLAIN ANALYZE`: 8 ms for 64 events).
async fn end_events(
    tx: &mut Transaction<'_, Postgres>,
    groups: &[&Finished],
    now: i64,
) -> Result<HashSet<i64>, StoreError> {
    let events = groups.iter().flat_map(|g| &g.events);
    let (mut ids, mut owners, mut statuses, mut errors) = (vec![], vec![], vec![], vec![]);
    for (id, owner, status, error) in events {
        ids.push(*id);
        owners.push(owner.as_str());
        statuses.push(*status);
        errors.push(error.as_deref());
    }
    let ended: Vec<i64> = sqlx::query_scalar(
        "UPDATE events e SET status = t.status, lease_owner = NULL, lease_expires_at = NULL,
                             last_error = t.error, finished_at = $5
         FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[]) AS t(id, owner, status, error)
         WHERE e.id = ANY($1) AND e.id = t.id AND e.lease_owner = t.owner
         RETURNING e.id",
    )
    .bind(ids)
    .bind(owners)
    .bind(statuses)
    .bind(errors)
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    Ok(ended.into_iter().collect())
}

/// Everything but the events' own rows: decisions, then what the events leave of their
/// contacts (the last value of each key wins, as when the groups committed one by one).
async fn write_rows(
    tx: &mut Transaction<'_, Postgres>,
    groups: &[&Finished],
    now: i64,
) -> Result<(), StoreError> {
    let all = |f: fn(&Finished) -> &[Keyed]| {
        last_by_key(groups.iter().flat_map(|g| f(g)), |r| (&r.0, &r.1))
    };
    let decisions: Vec<&DecisionRow> = groups.iter().flat_map(|g| &g.decisions).collect();
    insert_decisions(tx, &decisions, now).await?;
    upsert_keyed(tx, TAGS, &all(|g| &g.tags), now).await?;
    upsert_keyed(tx, STAGES, &all(|g| &g.stages), now).await?;
    upsert_assignees(tx, groups, now).await?;
    let ledger: Vec<&Ledger> = groups.iter().flat_map(|g| &g.ledger).collect();
    write_ledger(tx, &ledger, now).await?;
    upsert_keyed(tx, FOLLOWERS, &all(|g| &g.followers), now).await?;
    Ok(())
}

/// The rows in order, each key's last only (one statement cannot upsert a row twice).
fn last_by_key<'a, T, K: std::hash::Hash + Eq>(
    rows: impl Iterator<Item = &'a T>,
    key: impl Fn(&'a T) -> K,
) -> Vec<&'a T> {
    let mut at: HashMap<K, usize> = HashMap::new();
    let mut kept: Vec<&T> = Vec::new();
    for row in rows {
        match at.get(&key(row)) {
            Some(&i) => kept[i] = row,
            None => {
                at.insert(key(row), kept.len());
                kept.push(row);
            }
        }
    }
    kept
}

/// Inserts decisions, in order (their ids follow it).
pub(super) async fn insert_decisions(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[&DecisionRow],
    now: i64,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let text = |f: fn(&DecisionRow) -> &str| -> Vec<&str> { rows.iter().map(|r| f(r)).collect() };
    sqlx::query(
        "INSERT INTO decisions (event_id, attempt, matched, plan, calls, outcome, error, dry_run,
                                batch, rules_version, created_at)
         SELECT event_id, attempt, matched, plan, calls, outcome, error, dry_run, batch,
                rules_version, $11
         FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::bool[], $9::text[], $10::text[]) WITH ORDINALITY
              AS t(event_id, attempt, matched, plan, calls, outcome, error, dry_run, batch,
                   rules_version, ord)
         ORDER BY ord",
    )
    .bind(rows.iter().map(|r| r.event_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.attempt).collect::<Vec<_>>())
    .bind(text(|r| &r.matched))
    .bind(text(|r| &r.plan))
    .bind(text(|r| &r.calls))
    .bind(text(|r| r.outcome))
    .bind(rows.iter().map(|r| r.error.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.dry_run).collect::<Vec<_>>())
    .bind(text(|r| &r.batch))
    .bind(text(|r| &r.rules_version))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// An upsert of a table keyed by (location, id) with one value column; `$4` is the time.
const TAGS: &str = "INSERT INTO contact_state (location_id, contact_id, tags, updated_at)
     SELECT k, i, v, $4 FROM unnest($1::text[], $2::text[], $3::text[]) AS t(k, i, v)
     ON CONFLICT (location_id, contact_id)
     DO UPDATE SET tags = excluded.tags, updated_at = excluded.updated_at";
const STAGES: &str =
    "INSERT INTO opportunity_state (location_id, opportunity_id, stage, updated_at)
     SELECT k, i, v, $4 FROM unnest($1::text[], $2::text[], $3::text[]) AS t(k, i, v)
     ON CONFLICT (location_id, opportunity_id)
     DO UPDATE SET stage = excluded.stage, updated_at = excluded.updated_at";
const FOLLOWERS: &str = "INSERT INTO known_followers (location_id, contact_id, followers, seen_at)
     SELECT k, i, v, $4 FROM unnest($1::text[], $2::text[], $3::text[]) AS t(k, i, v)
     ON CONFLICT (location_id, contact_id)
     DO UPDATE SET followers = excluded.followers, seen_at = excluded.seen_at";

async fn upsert_keyed(
    tx: &mut Transaction<'_, Postgres>,
    statement: &'static str,
    rows: &[&Keyed],
    now: i64,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&Keyed) -> &str| -> Vec<&str> { rows.iter().map(|r| f(r)).collect() };
    sqlx::query(statement)
        .bind(column(|r| &r.0))
        .bind(column(|r| &r.1))
        .bind(column(|r| &r.2))
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn upsert_assignees(
    tx: &mut Transaction<'_, Postgres>,
    groups: &[&Finished],
    now: i64,
) -> Result<(), StoreError> {
    let rows = last_by_key(groups.iter().flat_map(|g| &g.assignees), |r: &Assignee| {
        (r.0.as_str(), r.1, r.2.as_str())
    });
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO assignees (location_id, kind, record_id, user_id, updated_at)
         SELECT l, k, r, u, $5 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS t(l, k, r, u)
         ON CONFLICT (location_id, kind, record_id)
         DO UPDATE SET user_id = excluded.user_id, updated_at = excluded.updated_at",
    )
    .bind(rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.2.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.3.as_deref()).collect::<Vec<_>>())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes ledger changes: every addition in one statement and every end in another when no
/// two changes touch one user of one contact (the usual case: a group's plan has one action
/// per user); otherwise one change at a time, in order, since each may undo the one before.
async fn write_ledger(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[&Ledger],
    now: i64,
) -> Result<(), StoreError> {
    let mut users = HashSet::new();
    let apart = rows
        .iter()
        .all(|(l, c, _, r)| users.insert((l.as_str(), c.as_str(), r.user.as_str())));
    if apart {
        let (added, ended): (Vec<&Ledger>, Vec<&Ledger>) = rows.iter().partition(|r| r.3.added);
        add_owned(tx, &added, now).await?;
        return end_owned(tx, &ended, now).await;
    }
    for row in rows {
        match row.3.added {
            true => add_owned(tx, &[row], now).await?,
            false => end_owned(tx, &[row], now).await?,
        }
    }
    Ok(())
}

async fn add_owned(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[&Ledger],
    now: i64,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let text = |f: fn(&Ledger) -> &str| -> Vec<&str> { rows.iter().map(|r| f(r)).collect() };
    sqlx::query(
        "INSERT INTO owned_followers (location_id, contact_id, user_id, rule, follow, subject,
                                      rules_version, event_id, added_at)
         SELECT l, c, u, r, f, s, v, e, $9
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::bigint[]) AS t(l, c, u, r, f, s, v, e)
         ON CONFLICT (location_id, contact_id, user_id, rule) DO UPDATE SET
             follow = excluded.follow, subject = excluded.subject, rules_version = excluded.rules_version,
             event_id = CASE WHEN owned_followers.removed_at IS NULL THEN owned_followers.event_id ELSE excluded.event_id END,
             added_at = CASE WHEN owned_followers.removed_at IS NULL THEN owned_followers.added_at ELSE excluded.added_at END,
             removed_at = NULL, removed_event_id = NULL, removed_by = NULL",
    )
    .bind(text(|r| &r.0))
    .bind(text(|r| &r.1))
    .bind(text(|r| &r.3.user))
    .bind(text(|r| r.3.rule.as_deref().unwrap_or_default()))
    .bind(text(|r| r.3.follow))
    .bind(rows.iter().map(|r| r.3.subject.as_deref()).collect::<Vec<_>>())
    .bind(text(|r| &r.3.rules_version))
    .bind(rows.iter().map(|r| r.2).collect::<Vec<_>>())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Ends ledger rows: the user's row of the change's rule, or of every rule when it names none.
async fn end_owned(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[&Ledger],
    now: i64,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let text = |f: fn(&Ledger) -> &str| -> Vec<&str> { rows.iter().map(|r| f(r)).collect() };
    sqlx::query(
        "UPDATE owned_followers o SET removed_at = $7, removed_event_id = t.e, removed_by = t.b
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[])
              AS t(l, c, u, r, e, b)
         WHERE o.location_id = t.l AND o.contact_id = t.c AND o.user_id = t.u
           AND (t.r IS NULL OR o.rule = t.r) AND o.removed_at IS NULL",
    )
    .bind(text(|r| &r.0))
    .bind(text(|r| &r.1))
    .bind(text(|r| &r.3.user))
    .bind(rows.iter().map(|r| r.3.rule.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.2).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.3.removed_by).collect::<Vec<_>>())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

//! Backfill: a walk through a location's contacts, then its opportunities, with GoHighLevel's
//! search APIs, page by page. Each record is previewed as a `Backfill` task (the rules
//! evaluated on it as it stands, against the ownership ledger); a record that changes gets
//! its task queued in its contact's queue, where the worker carries it out like any other.
//!
//! - **Live first**: a page is read only while none of the location's webhooks is due and
//!   fewer than [`AHEAD`] of its tasks wait, so a webhook arriving meanwhile waits behind at
//!   most that many; the pages and the tasks' calls take the location's rate budget like
//!   any call.
//! - **Resumable**: a page's tasks are queued in the transaction that moves the cursor, so a
//!   walk cut short (a crash, a SIGKILL) goes on from where it stopped, queueing nothing twice.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use super::Worker;
use super::maintain::{Change, Report};
use crate::access::NoToken;
use crate::ghl::CallError;
use crate::ghl::search::{PAGE, Page};
use crate::model::event::BodyKind;
use crate::model::ids::{ContactId, LocationId};
use crate::model::task::{Task, TaskBody};
use crate::rules::deal::Dealer;
use crate::store::{Backfill, BackfillStep, NewEvent, StoreError};

/// The most of a backfill's tasks waiting in its location's queue before it reads on.
const AHEAD: u64 = 20;

/// How long the walk waits before looking again (for a backfill to take, for room).
const IDLE: Duration = Duration::from_millis(200);

/// What became of a page read.
enum Read {
    Page(Page),
    /// Try again after this long (the budget, a transient failure, no token yet).
    Wait(Duration),
    /// The backfill cannot go on.
    Fail(String),
}

/// A backfill's progress as operators see it.
#[derive(Clone, Debug, Serialize)]
pub struct Progress {
    #[serde(flatten)]
    pub backfill: Backfill,
    /// Seconds until done at the location's rate budget, while running and the total is known.
    pub eta_seconds: Option<u64>,
}

impl Worker {
    /// Takes on running backfills, one at a time, until `shutdown`.
    pub async fn run_backfills(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            let lease = self.options.lease;
            let job = match self.store.claim_backfill(&self.owner, lease).await {
                Ok(job) => job,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look for backfills; trying again");
                    None
                }
            };
            let walk = async {
                match job {
                    Some(job) => self.walk(job).await,
                    None => tokio::time::sleep(IDLE * 5).await,
                }
            };
            tokio::select! {
                () = walk => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// Walks `job` page by page until it is done, fails, or another worker has it.
    async fn walk(&self, mut job: Backfill) {
        tracing::info!(backfill = job.id, location = %job.location, phase = %job.phase, seen = job.seen, "backfill: walking");
        // A preview's pool turns, from where the store's stand at the first (nothing counted).
        let turns = tokio::sync::Mutex::default();
        loop {
            let (page, step) = match self.next_page(&job).await {
                Ok(Some(read)) => read,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(backfill = job.id, error = %e, "backfill: store error; trying again");
                    tokio::time::sleep(IDLE * 5).await;
                    continue;
                }
            };
            let (step, tasks) = match self.previewed(&job, page, step, &turns).await {
                Ok(made) => made,
                Err(e) => {
                    tracing::warn!(backfill = job.id, error = %e, "backfill: store error; trying again");
                    continue;
                }
            };
            let lease = self.options.lease;
            let queued = i64::try_from(tasks.len()).unwrap_or(0);
            match self
                .store
                .advance_backfill(job.id, &self.owner, lease, &step, tasks)
                .await
            {
                Ok(true) => {}
                Ok(false) => return, // another worker has it, or it ended
                Err(e) => {
                    tracing::warn!(backfill = job.id, error = %e, "backfill: cannot record a page; reading it again");
                    continue;
                }
            }
            self.wake.notify_one();
            job = advanced(job, &step, queued);
            if step.done {
                tracing::info!(backfill = job.id, location = %job.location, seen = job.seen, changed = job.changed, queued = job.queued, "backfill: done");
                return;
            }
        }
    }

    /// Waits for room, then reads the next page: the page and its step (cursor and counts,
    /// not yet the changes); `None` when the backfill ended (failed, or lost).
    async fn next_page(&self, job: &Backfill) -> Result<Option<(Page, BackfillStep)>, StoreError> {
        let mut beat = tokio::time::Instant::now();
        loop {
            let (due, waiting) = self.store.location_queue(&job.location).await?;
            let read = match due > 0 || waiting >= AHEAD {
                true => Read::Wait(IDLE),
                false => self.read(job).await,
            };
            match read {
                Read::Page(page) => {
                    let step = step(job, &page);
                    return Ok(Some((page, step)));
                }
                Read::Wait(wait) if beat.elapsed() < self.options.lease / 3 => {
                    tokio::time::sleep(wait).await;
                }
                Read::Wait(wait) => {
                    // Still ours? The heartbeat extends the lease.
                    beat = tokio::time::Instant::now();
                    let still = BackfillStep {
                        phase: job.phase.clone(),
                        cursor: job.cursor.clone(),
                        ..BackfillStep::default()
                    };
                    let lease = self.options.lease;
                    if !self
                        .store
                        .advance_backfill(job.id, &self.owner, lease, &still, Vec::new())
                        .await?
                    {
                        return Ok(None);
                    }
                    tokio::time::sleep(wait).await;
                }
                Read::Fail(reason) => {
                    tracing::error!(backfill = job.id, location = %job.location, reason, "backfill failed");
                    self.store
                        .fail_backfill(job.id, &self.owner, &reason)
                        .await?;
                    return Ok(None);
                }
            }
        }
    }

    /// Reads the page at the backfill's cursor.
    async fn read(&self, job: &Backfill) -> Read {
        let token = match self.access.token(&job.location).await {
            Ok(token) => token,
            Err(NoToken::Unavailable(_)) => return Read::Wait(Duration::from_secs(5)),
            Err(NoToken::Missing) => {
                return Read::Fail(format!(
                    "no GoHighLevel token for location {}",
                    job.location
                ));
            }
            Err(NoToken::Uninstalled) => {
                return Read::Fail("the app was uninstalled from the location".into());
            }
            Err(NoToken::Reauthorize { reason, .. }) => return Read::Fail(reason),
        };
        let cursor = job.cursor.as_deref();
        let read = match job.phase.as_str() {
            "contacts" => {
                self.ghl
                    .search_contacts(&token.secret, &job.location, job.since, cursor)
                    .await
            }
            _ => {
                self.ghl
                    .search_opportunities(&token.secret, &job.location, cursor)
                    .await
            }
        };
        match read {
            Ok(page) => Read::Page(page),
            Err(CallError::Deferred { wait }) => Read::Wait(wait),
            Err(CallError::Retryable { retry_after, .. }) => {
                Read::Wait(retry_after.unwrap_or(Duration::from_secs(2)))
            }
            Err(CallError::Permanent { reason, .. }) => Read::Fail(reason),
        }
    }

    /// Previews each record of `page`: the step with its changes counted, and the tasks to
    /// queue (none in a dry run).
    async fn previewed(
        &self,
        job: &Backfill,
        page: Page,
        mut step: BackfillStep,
        turns: &tokio::sync::Mutex<Dealer>,
    ) -> Result<(BackfillStep, Vec<NewEvent>), StoreError> {
        let mut report: Report = job
            .report
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok())
            .unwrap_or_default();
        let mut tasks = Vec::new();
        for record in page.records {
            let Some(task) = task(&job.location, &job.phase, record, job.since) else {
                continue;
            };
            match self.preview(&task, turns).await? {
                Ok(plan) if plan.is_empty() => {}
                Ok(plan) => {
                    let (location, contact) = (task.location_id.clone(), task.contact_id.clone());
                    report.count(Change::new(location, contact, &plan));
                    report.changes.clear();
                    step.changed += 1;
                    if !job.dry_run {
                        tasks.push(task.queued());
                    }
                }
                Err(why) => report
                    .problems
                    .push(format!("contact {}: {why}", task.contact_id)),
            }
        }
        report.problems.truncate(100);
        "backfill".clone_into(&mut report.job);
        report.rules_version = self.rules.current().version().to_owned();
        report.dry_run = job.dry_run;
        report.contacts = usize::try_from(job.seen + step.seen).unwrap_or(0);
        report.queued += tasks.len();
        step.report = serde_json::to_string(&report).ok();
        Ok((step, tasks))
    }

    /// A backfill with its estimate.
    pub fn progress(&self, backfill: Backfill) -> Progress {
        let eta_seconds = eta(&backfill, self.ghl.per_second());
        Progress {
            backfill,
            eta_seconds,
        }
    }
}

/// The step a page makes: the cursor moves on (to the next phase after the last page of
/// contacts; done after the last page of opportunities), the records are counted.
fn step(job: &Backfill, page: &Page) -> BackfillStep {
    let first = job.cursor.is_none();
    let total = match (first, page.total, job.phase.as_str()) {
        (true, Some(n), "contacts") => Some(n),
        (true, Some(n), _) => Some(job.total.unwrap_or(job.seen) + n),
        _ => None,
    };
    let (phase, cursor, done) = match (&page.next, job.phase.as_str()) {
        (Some(next), phase) => (phase.to_owned(), Some(next.clone()), false),
        (None, "contacts") => ("opportunities".to_owned(), None, false),
        (None, phase) => (phase.to_owned(), None, true),
    };
    BackfillStep {
        phase,
        cursor,
        total,
        seen: i64::try_from(page.records.len()).unwrap_or(0),
        done,
        ..BackfillStep::default()
    }
}

/// The backfill as the step left it.
fn advanced(mut job: Backfill, step: &BackfillStep, queued: i64) -> Backfill {
    job.phase.clone_from(&step.phase);
    job.cursor.clone_from(&step.cursor);
    job.total = step.total.or(job.total);
    job.seen += step.seen;
    job.changed += step.changed;
    job.queued += queued;
    if step.report.is_some() {
        job.report.clone_from(&step.report);
    }
    if step.done {
        "done".clone_into(&mut job.state);
    }
    job
}

/// The `Backfill` task of a record of the phase, shaped as the app webhook that describes
/// it (`ContactUpdate`, `OpportunityUpdate`); `None` for a record without the ids it needs,
/// or an opportunity created before `since`.
fn task(
    location: &LocationId,
    phase: &str,
    mut record: Value,
    since: Option<i64>,
) -> Option<TaskBody> {
    let (event_type, contact) = match phase {
        "contacts" => ("ContactUpdate", record.get("id")?.as_str()?.to_owned()),
        _ => {
            let created = record.get("createdAt").and_then(Value::as_str);
            let created = created.and_then(|c| humantime::parse_rfc3339_weak(c).ok());
            if let (Some(since), Some(created)) = (since, created) {
                if crate::store::millis(created) < since {
                    return None;
                }
            }
            (
                "OpportunityUpdate",
                record.get("contactId")?.as_str()?.to_owned(),
            )
        }
    };
    let contact = ContactId::parse(&contact).ok()?;
    let body = record.as_object_mut()?;
    body.insert("type".into(), event_type.into());
    body.insert("locationId".into(), location.as_str().into());
    Some(TaskBody {
        task: Task::Backfill { record },
        location_id: location.clone(),
        contact_id: contact,
    })
}

impl TaskBody {
    /// The task as a queue entry, due now.
    pub(super) fn queued(&self) -> NewEvent {
        NewEvent {
            kind: BodyKind::Task,
            event_type: self.event_type().to_owned(),
            location_id: self.location_id.clone(),
            contact_id: self.contact_id.clone(),
            opportunity_id: None,
            webhook_id: None,
            body: self.to_json(),
            available_at: std::time::SystemTime::now(),
        }
    }
}

/// Seconds until a running backfill is done at `per_second` requests a second: a request
/// per page left, and for the records left as many calls as its records so far needed.
fn eta(b: &Backfill, per_second: f64) -> Option<u64> {
    let total = b.total.filter(|_| b.state == "running")?;
    let left = (total - b.seen).max(0) as f64;
    let calls_per_record = match b.seen {
        0 => 1.0,
        seen => (b.queued as f64 * 1.5) / seen as f64,
    };
    let requests = left / PAGE as f64 + left * calls_per_record;
    Some((requests / per_second.max(0.01)).ceil() as u64)
}

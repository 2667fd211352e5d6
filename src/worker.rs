//! The worker: claims stored events (oldest first per contact), evaluates the rules against
//! the contact's previous state, records the decision and calls GoHighLevel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rand::Rng;
use secrecy::SecretString;
use tokio::sync::{Mutex, Notify, Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::Tokens;
use crate::event::{self, AssignedUser, Event, Parsed};
use crate::ghl::{CallError, CallRecord, GhlClient};
use crate::ids::{LocationId, UserId};
use crate::pipelines::Pipelines;
use crate::rules::{Plan, PlanEntry, Resolver, RuleSet};
use crate::store::{BodyKind, Claimed, Decision, EventStatus, NewState, Store, StoreError};

/// When to try a failed call again: exponential backoff with full jitter, capped.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    /// Attempts in all, the first included; then the event fails.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
            max_attempts: 12,
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`; `Retry-After` wins when GoHighLevel sent one.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(d) = retry_after {
            return d.min(self.cap);
        }
        let exp = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)));
        let ceiling = exp.min(self.cap);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }
}

/// Tuning of the worker loop.
#[derive(Clone, Copy, Debug)]
pub struct WorkerOptions {
    /// Events processed at once (different contacts).
    pub concurrency: u32,
    pub lease: Duration,
    /// How often to look for due retries when nothing wakes the worker.
    pub poll: Duration,
    pub retry: RetryPolicy,
    pub dry_run: bool,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            concurrency: 8,
            lease: Duration::from_secs(120),
            poll: Duration::from_millis(500),
            retry: RetryPolicy::default(),
            dry_run: false,
        }
    }
}

/// Pipeline names and user ids fetched from GoHighLevel, per location.
#[derive(Debug, Default)]
struct Lookups {
    pipelines: Mutex<HashMap<LocationId, (Arc<Pipelines>, Instant)>>,
    companies: Mutex<HashMap<LocationId, String>>,
    /// (location, lowercased email) → the user id found (or not) and when it was looked up.
    users: Mutex<HashMap<EmailKey, (Option<UserId>, Instant)>>,
}

/// A location and a lowercased email.
type EmailKey = (LocationId, String);

/// Refetch pipelines for an unknown id, or look a missing email up again, at most this often.
const LOOKUP_REFRESH: Duration = Duration::from_secs(60);

/// What the lookups know for one event: a [`Resolver`] over a snapshot.
struct Resolved {
    pipelines: Option<Arc<Pipelines>>,
    user: Option<(String, UserId)>,
}

impl Resolver for Resolved {
    fn pipeline_name(&self, l: &LocationId, id: &str) -> Option<&str> {
        self.pipelines.as_ref()?.pipeline_name(l, id)
    }
    fn stage_name(&self, l: &LocationId, id: &str) -> Option<&str> {
        self.pipelines.as_ref()?.stage_name(l, id)
    }
    fn user_id_by_email(&self, _: &LocationId, email: &str) -> Option<UserId> {
        let (known, id) = self.user.as_ref()?;
        known.eq_ignore_ascii_case(email).then(|| id.clone())
    }
}

#[derive(Debug)]
pub struct Worker {
    store: Arc<dyn Store>,
    rules: Arc<RuleSet>,
    ghl: GhlClient,
    tokens: Tokens,
    options: WorkerOptions,
    owner: String,
    wake: Arc<Notify>,
    lookups: Lookups,
    /// Locations with parked events; a successful call for one of them resumes the rest.
    parked: Mutex<std::collections::HashSet<LocationId>>,
}

/// How processing one event ended.
enum Outcome {
    Finished(EventStatus, Decision, NewState),
    Retry(SystemTime, Decision),
    /// The location's token was refused: wait for a new token or a replay.
    Park(Decision),
}

impl Worker {
    pub fn new(
        store: Arc<dyn Store>,
        rules: Arc<RuleSet>,
        ghl: GhlClient,
        tokens: Tokens,
        options: WorkerOptions,
        wake: Arc<Notify>,
    ) -> Worker {
        let owner = format!("{}-{}", std::process::id(), rand::rng().random::<u32>());
        Worker {
            store,
            rules,
            ghl,
            tokens,
            options,
            owner,
            wake,
            lookups: Lookups::default(),
            parked: Mutex::default(),
        }
    }

    /// Runs until `shutdown` turns true, then finishes the events in hand and releases leases.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if let Err(e) = self.resume_changed_tokens().await {
            tracing::warn!(error = %e, "cannot check parked locations; they resume on replay");
        }
        // Claim whenever a slot is free, so one slow call never holds up other contacts.
        let slots = Arc::new(Semaphore::new(self.options.concurrency.max(1) as usize));
        let mut tasks = JoinSet::new();
        loop {
            if *shutdown.borrow() {
                break;
            }
            while tasks.try_join_next().is_some() {}
            let free = u32::try_from(slots.available_permits()).unwrap_or(u32::MAX);
            let claimed = if free == 0 {
                Vec::new()
            } else {
                match self
                    .store
                    .claim(&self.owner, free, self.options.lease)
                    .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot claim events; retrying");
                        Vec::new()
                    }
                }
            };
            if claimed.is_empty() {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(self.options.poll) => {}
                    _ = shutdown.changed() => {}
                    // A finished event frees a slot and may unblock its contact's next event.
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                }
                continue;
            }
            for event in claimed {
                let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                    break;
                };
                let worker = Arc::clone(&self);
                tasks.spawn(async move {
                    worker.process(event).await;
                    drop(permit);
                });
            }
        }
        while tasks.join_next().await.is_some() {}
        if let Err(e) = self.store.release(&self.owner).await {
            tracing::warn!(error = %e, "cannot release leases at shutdown; they expire on their own");
        }
    }

    /// Resumes the parked events of every location whose token changed since it was refused.
    async fn resume_changed_tokens(&self) -> Result<(), StoreError> {
        for (location, refused) in self.store.token_failures().await? {
            let current = self.tokens.for_location(&location).map(fingerprint);
            if current.as_deref() != Some(refused.as_str()) {
                let resumed = self.store.resume_location(&location).await?;
                tracing::info!(%location, resumed, "the location's token changed; its parked events resume");
            }
        }
        self.parked
            .lock()
            .await
            .extend(self.store.parked_locations().await?);
        Ok(())
    }

    /// Processes one claimed event to its end or to its next retry.
    pub async fn process(&self, claimed: Claimed) {
        let id = claimed.id;
        let outcome = self.decide_and_call(&claimed).await;
        let stored = match outcome {
            Ok(Outcome::Finished(status, decision, state)) => {
                tracing::info!(
                    event_id = id,
                    status = status.as_str(),
                    matched = ?decision.matched,
                    plan = %decision.plan.summary(),
                    error = decision.error.as_deref().unwrap_or(""),
                    dry_run = decision.dry_run,
                    "event processed"
                );
                self.store.finish(&claimed, status, &decision, &state).await
            }
            Ok(Outcome::Retry(at, decision)) => {
                let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
                tracing::warn!(
                    event_id = id,
                    attempt = claimed.attempt,
                    error = decision.error.as_deref().unwrap_or(""),
                    retry_in_ms = wait.as_millis() as u64,
                    "event will be retried"
                );
                self.store.retry_at(&claimed, at, &decision).await
            }
            Ok(Outcome::Park(decision)) => {
                tracing::warn!(
                    event_id = id,
                    error = decision.error.as_deref().unwrap_or(""),
                    "event parked until the location's token works (new token, or `autofollow replay`)"
                );
                self.store.park(&claimed, &decision).await
            }
            Err(e) => {
                // The store failed mid-way: leave the lease to expire; nothing is lost.
                tracing::error!(event_id = id, error = %e, "store error while processing; the event will be retried");
                return;
            }
        };
        match stored {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                event_id = id,
                "lease lost before the result was stored; another attempt will redo it"
            ),
            Err(e) => {
                tracing::error!(event_id = id, error = %e, "cannot store the result; the event will be retried")
            }
        }
    }

    async fn decide_and_call(&self, claimed: &Claimed) -> Result<Outcome, StoreError> {
        let parsed = match claimed.kind {
            BodyKind::App => event::parse_app(claimed.body.as_bytes()),
            BodyKind::Workflow => {
                event::parse_workflow(claimed.body.as_bytes()).map(|e| Parsed::Event(Box::new(e)))
            }
        };
        let event = match parsed {
            Ok(Parsed::Event(e)) => e,
            Ok(Parsed::Unsupported { event_type, .. }) => {
                return Ok(self.failed(
                    claimed,
                    format!("stored event type {event_type} is not supported"),
                ));
            }
            Err(e) => return Ok(self.failed(claimed, format!("stored body no longer parses: {e}"))),
        };
        let token = self.tokens.for_location(&event.location_id);
        if let (false, Some(token)) = (self.options.dry_run, token) {
            match self.store.token_failing(&event.location_id).await? {
                Some(refused) if refused == fingerprint(token) => {
                    let mut d = Decision::empty(claimed.attempt, false);
                    d.outcome = "waiting".into();
                    d.error = Some(format!(
                        "GoHighLevel refused the token of location {}; waiting for a new token or a replay",
                        event.location_id
                    ));
                    self.parked.lock().await.insert(event.location_id.clone());
                    return Ok(Outcome::Park(d));
                }
                // The token changed since it was refused: try again.
                Some(_) => {
                    self.store.resume_location(&event.location_id).await?;
                }
                None => {}
            }
        }
        let previous = self
            .store
            .previous_state(
                &event.location_id,
                &event.contact_id,
                event.opportunity_id.as_ref(),
            )
            .await?;
        let resolver = match self.resolve(&event, previous.stage.as_deref(), token).await {
            Ok(r) => r,
            Err(e) => {
                return Ok(self.retry_or_fail(
                    claimed,
                    e.to_string(),
                    None,
                    Decision::empty(claimed.attempt, self.options.dry_run),
                ));
            }
        };
        let decision = self.rules.evaluate(&event, &previous, &resolver);
        let state = NewState {
            location_id: Some(event.location_id.clone()),
            contact_id: Some(event.contact_id.clone()),
            tags: event.tags.clone(),
            stage: event
                .opportunity_id
                .clone()
                .zip(event.stage_id.clone().or_else(|| event.stage_name.clone())),
        };
        let mut record = Decision {
            attempt: claimed.attempt,
            matched: decision.matched,
            plan: decision.plan,
            calls: Vec::new(),
            outcome: "done".into(),
            error: None,
            dry_run: self.options.dry_run,
        };
        if record.plan.is_empty() {
            return Ok(Outcome::Finished(EventStatus::Done, record, state));
        }
        let batches = batches(&record.plan);
        if self.options.dry_run {
            for (add, users) in batches {
                record
                    .calls
                    .push(call_record(add, &event, users, None, "dry-run"));
            }
            return Ok(Outcome::Finished(EventStatus::Done, record, state));
        }
        let Some(token) = token else {
            let reason = format!(
                "no GoHighLevel token for location {} (set GHL_TOKEN or add the location to GHL_LOCATION_TOKENS_FILE)",
                event.location_id
            );
            record.outcome = "failed".into();
            record.error = Some(reason);
            return Ok(Outcome::Finished(EventStatus::Failed, record, state));
        };
        for (add, users) in batches {
            match self
                .ghl
                .followers(token, add, &event.contact_id, &users)
                .await
            {
                Ok(()) => record.calls.push(call_record(
                    add,
                    &event,
                    users,
                    Some(if add { 201 } else { 200 }),
                    "ok",
                )),
                Err(CallError::Retryable {
                    reason,
                    retry_after,
                }) => {
                    record
                        .calls
                        .push(call_record(add, &event, users, None, &reason));
                    return Ok(self
                        .retry_or_fail(claimed, reason, retry_after, record)
                        .with_state(state));
                }
                Err(CallError::Permanent { status, reason }) => {
                    record
                        .calls
                        .push(call_record(add, &event, users, status, &reason));
                    if matches!(status, Some(401 | 403)) {
                        self.store
                            .mark_token_failing(&event.location_id, &fingerprint(token), &reason)
                            .await?;
                        self.parked.lock().await.insert(event.location_id.clone());
                        record.outcome = "waiting".into();
                        record.error = Some(format!(
                            "{reason}; the location's events wait for a new token or a replay"
                        ));
                        return Ok(Outcome::Park(record));
                    }
                    // 404: the contact was deleted; nothing is left to do, and nothing failed.
                    let end = if status == Some(404) {
                        EventStatus::Skipped
                    } else {
                        EventStatus::Failed
                    };
                    record.outcome = end.as_str().into();
                    record.error = Some(reason);
                    return Ok(Outcome::Finished(end, record, state));
                }
            }
        }
        // The token works: events parked while it did not can go.
        let was_parked = self.parked.lock().await.remove(&event.location_id);
        if was_parked {
            let resumed = self.store.resume_location(&event.location_id).await?;
            tracing::info!(location = %event.location_id, resumed, "the location's token works again; its parked events resume");
        }
        Ok(Outcome::Finished(EventStatus::Done, record, state))
    }

    fn failed(&self, claimed: &Claimed, reason: String) -> Outcome {
        let mut d = Decision::empty(claimed.attempt, self.options.dry_run);
        d.outcome = "failed".into();
        d.error = Some(reason);
        Outcome::Finished(EventStatus::Failed, d, NewState::default())
    }

    fn retry_or_fail(
        &self,
        claimed: &Claimed,
        reason: String,
        retry_after: Option<Duration>,
        mut d: Decision,
    ) -> Outcome {
        if claimed.attempt >= self.options.retry.max_attempts {
            d.outcome = "failed".into();
            d.error = Some(format!(
                "gave up after {} attempts: {reason}",
                claimed.attempt
            ));
            return Outcome::Finished(EventStatus::Failed, d, NewState::default());
        }
        d.outcome = "retry".into();
        d.error = Some(reason);
        let at = SystemTime::now() + self.options.retry.delay(claimed.attempt, retry_after);
        Outcome::Retry(at, d)
    }

    /// Fetches what the rules may need and the event does not carry: pipeline and stage names
    /// (when an id is not cached yet), and the id of a workflow event's assignee.
    async fn resolve(
        &self,
        event: &Event,
        previous_stage: Option<&str>,
        token: Option<&SecretString>,
    ) -> Result<Resolved, CallError> {
        let mut resolved = Resolved {
            pipelines: None,
            user: None,
        };
        let Some(token) = token else {
            return Ok(resolved);
        };
        let location = &event.location_id;
        let ids: Vec<&str> = [
            event.pipeline_id.as_deref(),
            event.stage_id.as_deref(),
            previous_stage,
        ]
        .into_iter()
        .flatten()
        .collect();
        if !ids.is_empty() && event.stage_name.is_none() {
            let mut cache = self.lookups.pipelines.lock().await;
            let known = cache.get(location).cloned();
            let stale = match &known {
                None => true,
                Some((p, fetched)) => {
                    let unknown = [event.pipeline_id.as_deref()]
                        .into_iter()
                        .flatten()
                        .any(|id| p.pipeline_name(location, id).is_none())
                        || [event.stage_id.as_deref()]
                            .into_iter()
                            .flatten()
                            .any(|id| p.stage_name(location, id).is_none());
                    unknown && fetched.elapsed() > LOOKUP_REFRESH
                }
            };
            if stale {
                match self.ghl.pipelines(token, location).await {
                    Ok(p) => {
                        let p = Arc::new(p);
                        cache.insert(location.clone(), (Arc::clone(&p), Instant::now()));
                        resolved.pipelines = Some(p);
                    }
                    Err(e @ CallError::Retryable { .. }) => return Err(e),
                    Err(CallError::Permanent { reason, .. }) => {
                        tracing::warn!(location = %location, error = %reason, "cannot read pipelines; rules naming pipelines or stages will not match");
                        resolved.pipelines = known.map(|(p, _)| p);
                    }
                }
            } else {
                resolved.pipelines = known.map(|(p, _)| p);
            }
        }
        if let Some(AssignedUser::Email(email)) = &event.assigned_user {
            let key = (location.clone(), email.trim().to_lowercase());
            let cached = self.lookups.users.lock().await.get(&key).cloned();
            let id = match cached {
                Some((id, at)) if id.is_some() || at.elapsed() < LOOKUP_REFRESH => id,
                _ => {
                    let company = self.company(token, location).await?;
                    let id = match company {
                        Some(c) => match self.ghl.user_by_email(token, &c, location, email).await {
                            Ok(id) => id,
                            Err(e @ CallError::Retryable { .. }) => return Err(e),
                            Err(CallError::Permanent { reason, .. }) => {
                                tracing::warn!(location = %location, error = %reason, "cannot search users; assigned_user stays unresolved");
                                None
                            }
                        },
                        None => None,
                    };
                    self.lookups
                        .users
                        .lock()
                        .await
                        .insert(key, (id.clone(), Instant::now()));
                    id
                }
            };
            resolved.user = id.map(|id| (email.clone(), id));
        }
        Ok(resolved)
    }

    async fn company(
        &self,
        token: &SecretString,
        location: &LocationId,
    ) -> Result<Option<String>, CallError> {
        if let Some(c) = self.lookups.companies.lock().await.get(location) {
            return Ok(Some(c.clone()));
        }
        match self.ghl.company_id(token, location).await {
            Ok(c) => {
                self.lookups
                    .companies
                    .lock()
                    .await
                    .insert(location.clone(), c.clone());
                Ok(Some(c))
            }
            Err(e @ CallError::Retryable { .. }) => Err(e),
            Err(CallError::Permanent { reason, .. }) => {
                tracing::warn!(location = %location, error = %reason, "cannot read the location's company; assigned_user stays unresolved");
                Ok(None)
            }
        }
    }
}

impl Outcome {
    /// A retry that gave up becomes a failure that still records the event's state.
    fn with_state(self, state: NewState) -> Outcome {
        match self {
            Outcome::Finished(status, d, _) => Outcome::Finished(status, d, state),
            retry => retry,
        }
    }
}

impl Decision {
    fn empty(attempt: u32, dry_run: bool) -> Decision {
        Decision {
            attempt,
            matched: Vec::new(),
            plan: Plan::default(),
            calls: Vec::new(),
            outcome: String::new(),
            error: None,
            dry_run,
        }
    }
}

/// Identifies a token in the store without storing it: a SHA-256 prefix.
fn fingerprint(token: &SecretString) -> String {
    use secrecy::ExposeSecret;
    use sha2::Digest;
    let digest = sha2::Sha256::digest(token.expose_secret().as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// At most one add call and one remove call, adds first.
fn batches(plan: &Plan) -> Vec<(bool, Vec<UserId>)> {
    let ids = |entries: &[PlanEntry]| entries.iter().map(|e| e.user.clone()).collect::<Vec<_>>();
    [(true, ids(&plan.add)), (false, ids(&plan.remove))]
        .into_iter()
        .filter(|(_, users)| !users.is_empty())
        .collect()
}

fn call_record(
    add: bool,
    event: &Event,
    users: Vec<UserId>,
    status: Option<u16>,
    outcome: &str,
) -> CallRecord {
    CallRecord {
        method: if add { "POST" } else { "DELETE" }.to_owned(),
        path: format!("/contacts/{}/followers", event.contact_id),
        users,
        status,
        outcome: outcome.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_is_capped_and_honours_retry_after() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            max_attempts: 5,
        };
        for attempt in 1..10 {
            let d = p.delay(attempt, None);
            let ceiling =
                Duration::from_millis(100 * 2u64.pow(attempt - 1)).min(Duration::from_secs(1));
            assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
        }
        assert_eq!(
            p.delay(3, Some(Duration::from_millis(250))),
            Duration::from_millis(250)
        );
        assert_eq!(
            p.delay(3, Some(Duration::from_secs(60))),
            Duration::from_secs(1)
        );
    }
}

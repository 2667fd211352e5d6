//! The worker: claims stored events (oldest first per contact), evaluates the rules against
//! the contact's previous state, records the decision and calls GoHighLevel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rand::Rng;
use secrecy::SecretString;
use tokio::sync::{Mutex, Notify, Semaphore, watch};
use tokio::task::JoinSet;

use crate::ghl::Tokens;
use crate::ghl::pipelines::Pipelines;
use crate::ghl::{CallError, GhlClient};
use crate::metrics::Metrics;
use crate::model::event::{self, AssignedUser, Event, Parsed};
use crate::model::ids::{LocationId, UserId};
use crate::model::plan::{Plan, PlanEntry, PreviousState};
use crate::model::record::{CallRecord, Decision, EventStatus};
use crate::rules::{LiveRules, Resolver};
use crate::store::{Claimed, NewState, Store, StoreError};

/// When to try a failed call again: exponential backoff with full jitter, capped.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    /// Attempts in all, the first included; then the event fails. A guard against an event
    /// that keeps killing its process (every restart counts one); transient failures are
    /// bounded by `max_age`, so a GoHighLevel outage of hours only delays work.
    pub max_attempts: u32,
    /// An event still failing this long after it arrived fails (GoHighLevel's own retries of
    /// a webhook stop after about 70 minutes; a day is generous).
    pub max_age: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
            // About a day of retries at the 5-minute cap.
            max_attempts: 600,
            max_age: Duration::from_secs(24 * 3600),
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
    /// How long the follower list a call returned is trusted to skip needless calls.
    pub followers_fresh: Duration,
    /// How long a contact's work waits after its latest webhook, so a burst is decided
    /// together (intake stores each event due this much later).
    pub settle_delay: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            concurrency: 8,
            lease: Duration::from_secs(120),
            poll: Duration::from_millis(500),
            retry: RetryPolicy::default(),
            dry_run: false,
            followers_fresh: Duration::from_secs(60),
            settle_delay: Duration::from_secs(1),
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
    rules: Arc<LiveRules>,
    ghl: GhlClient,
    tokens: Tokens,
    options: WorkerOptions,
    owner: String,
    wake: Arc<Notify>,
    lookups: Lookups,
    /// Locations with parked events; a successful call for one of them resumes the rest.
    parked: Mutex<std::collections::HashSet<LocationId>>,
    /// Events a task of this worker is processing. Leases carry the worker's name, so a claim
    /// can hand this worker back an event whose lease lapsed while one of its own tasks still
    /// works on it (stalled): it is not processed twice.
    in_hand: Arc<std::sync::Mutex<std::collections::HashSet<i64>>>,
    metrics: Arc<Metrics>,
}

/// Events taken into a worker's hand; let go when dropped.
struct InHand {
    set: Arc<std::sync::Mutex<std::collections::HashSet<i64>>>,
    ids: Vec<i64>,
}

impl InHand {
    /// Takes the ids not in hand yet; returns which were taken.
    fn take(&mut self, ids: &[i64]) -> Vec<i64> {
        let mut set = self
            .set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let taken: Vec<i64> = ids.iter().copied().filter(|id| set.insert(*id)).collect();
        self.ids.extend(&taken);
        taken
    }
}

impl Drop for InHand {
    fn drop(&mut self) {
        let mut set = self
            .set
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for id in &self.ids {
            set.remove(id);
        }
    }
}

/// The most events of one contact decided together.
const MAX_BATCH: u32 = 100;

/// How the calls for a group's combined plan ended.
enum End {
    Done,
    /// The location's rate-limit budget is spent: wait, without counting an attempt.
    Defer(Duration),
    Finished(EventStatus, String),
    Retry(String, Option<Duration>),
    Park(String),
    /// This worker no longer holds the group (it stalled past its lease and another took the
    /// contact over): it stops without making or recording anything more.
    Lost,
}

fn log(claimed: &Claimed, outcome: &Outcome) {
    let id = claimed.id;
    match outcome {
        Outcome::Finished(status, d, _) => tracing::info!(
            event_id = id,
            status = status.as_str(),
            matched = ?d.matched,
            plan = %d.plan.summary(),
            batch = ?d.batch,
            calls = %calls_summary(&d.calls),
            error = d.error.as_deref().unwrap_or(""),
            dry_run = d.dry_run,
            "event processed"
        ),
        Outcome::Retry(at, d) => {
            let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
            tracing::warn!(
                event_id = id,
                attempt = claimed.attempt,
                error = d.error.as_deref().unwrap_or(""),
                retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                "event will be retried"
            );
        }
        Outcome::Defer(at) => tracing::debug!(
            event_id = id,
            wait_ms = u64::try_from(
                at.duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .as_millis()
            )
            .unwrap_or(u64::MAX),
            "waiting for the location's rate limit"
        ),
        Outcome::Park(d) => tracing::warn!(
            event_id = id,
            error = d.error.as_deref().unwrap_or(""),
            "event parked until the location's token works (new token, or `autofollow replay`)"
        ),
        Outcome::Lost => tracing::warn!(
            event_id = id,
            "lease lapsed before the calls; another worker has the contact now"
        ),
    }
}

/// `POST 201 ok; DELETE - GoHighLevel did not answer in time`: each call and how it ended.
fn calls_summary(calls: &[CallRecord]) -> String {
    calls
        .iter()
        .map(|c| {
            let status = c.status.map_or_else(|| "-".to_owned(), |s| s.to_string());
            format!("{} {status} {}", c.method, c.outcome)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// How processing one event ended.
enum Outcome {
    Finished(EventStatus, Decision, NewState),
    /// Back to the store until then, as if never tried (rate limit).
    Defer(SystemTime),
    Retry(SystemTime, Decision),
    /// The location's token was refused: wait for a new token or a replay.
    Park(Decision),
    /// The lease lapsed before the calls were made: the group is another worker's now.
    Lost,
}

impl Worker {
    pub fn new(
        store: Arc<dyn Store>,
        rules: Arc<LiveRules>,
        ghl: GhlClient,
        tokens: Tokens,
        options: WorkerOptions,
        wake: Arc<Notify>,
        metrics: Arc<Metrics>,
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
            in_hand: Arc::default(),
            metrics,
        }
    }

    /// The name this worker's leases carry.
    pub fn owner(&self) -> &str {
        &self.owner
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

    /// Processes a claimed event, together with the contact's later events that are due
    /// (their plans combine into at most one add and one remove call), to the end or to the
    /// next retry.
    pub async fn process(&self, first: Claimed) {
        let mut hand = InHand {
            set: Arc::clone(&self.in_hand),
            ids: Vec::new(),
        };
        if hand.take(&[first.id]).is_empty() {
            return; // a task of this worker has it already
        }
        let mut group = vec![first];
        match self
            .store
            .claim_rest(&self.owner, &group[0], MAX_BATCH, self.options.lease)
            .await
        {
            Ok(rest) => {
                // Only the consecutive run not held by another of this worker's tasks.
                for event in rest {
                    if hand.take(&[event.id]).is_empty() {
                        break;
                    }
                    group.push(event);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the contact's later events; they follow on their own")
            }
        }
        let Some(decided) = self.holding_leases(&group, self.decide_group(&group)).await else {
            return;
        };
        let outcomes = match decided {
            Ok(o) => o,
            Err(e) => {
                // The store failed mid-way: leave the leases to expire; nothing is lost.
                tracing::error!(event_id = group[0].id, error = %e, "store error while processing; the events will be retried");
                return;
            }
        };
        for (claimed, outcome) in group.iter().zip(&outcomes) {
            log(claimed, outcome);
        }
        // The location's budget is spent (storing the deferral below holds back the
        // location's work at once).
        if let Some(Outcome::Defer(at)) = outcomes.iter().find(|o| matches!(o, Outcome::Defer(_))) {
            // Look again the moment the budget has room, not at the next poll: a location
            // with a backlog then uses its whole budget.
            let wake = Arc::clone(&self.wake);
            let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                wake.notify_one();
            });
        }
        let stored = if outcomes.iter().all(|o| matches!(o, Outcome::Finished(..))) {
            let items: Vec<_> = group
                .iter()
                .zip(&outcomes)
                .filter_map(|(c, o)| match o {
                    Outcome::Finished(status, d, state) => Some((c, *status, d, state)),
                    _ => None,
                })
                .collect();
            self.store.finish_all(&items).await
        } else {
            let mut all = Ok(true);
            for (claimed, outcome) in group.iter().zip(&outcomes) {
                let r = match outcome {
                    Outcome::Finished(status, d, state) => {
                        self.store.finish(claimed, *status, d, state).await
                    }
                    Outcome::Retry(at, d) => self.store.retry_at(claimed, *at, d).await,
                    Outcome::Park(d) => self.store.park(claimed, d).await,
                    Outcome::Defer(at) => self.store.defer(claimed, *at).await,
                    Outcome::Lost => Ok(false),
                };
                if !matches!(r, Ok(true)) {
                    all = r;
                }
            }
            all
        };
        match stored {
            Ok(true) => self.count(&outcomes),
            Ok(false) => tracing::warn!(
                event_id = group[0].id,
                "lease lost before the result was stored; another attempt will redo it"
            ),
            Err(e) => {
                tracing::error!(event_id = group[0].id, error = %e, "cannot store the result; the events will be retried")
            }
        }
    }

    /// Runs `work` on the claimed `group`, extending its leases every third of the lease, so
    /// slow GoHighLevel calls never outlive them. When another worker has taken the events
    /// after all (this one stalled past its lease), the work stops: None.
    async fn holding_leases<T>(
        &self,
        group: &[Claimed],
        work: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        let ids: Vec<i64> = group.iter().map(|c| c.id).collect();
        let every = (self.options.lease / 3).max(Duration::from_millis(100));
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return Some(out),
                _ = renew.tick() => {
                    match self.store.extend(&self.owner, &ids, self.options.lease).await {
                        Ok(held) if held == ids.len() as u64 => {}
                        Ok(_) => {
                            tracing::warn!(event_id = ids[0], "lease taken over by another worker; this one stops and leaves the events to it");
                            return None;
                        }
                        Err(e) => tracing::warn!(event_id = ids[0], error = %e, "cannot extend the lease; trying again"),
                    }
                }
            }
        }
    }

    /// Counts stored outcomes into the metrics.
    fn count(&self, outcomes: &[Outcome]) {
        for outcome in outcomes {
            match outcome {
                Outcome::Finished(status, d, _) => {
                    self.metrics
                        .events_finished
                        .with_label_values(&[status.as_str()])
                        .inc();
                    if *status == EventStatus::Failed {
                        self.metrics.dead_letters.inc();
                    }
                    for rule in &d.matched {
                        self.metrics
                            .rule_matches
                            .with_label_values(&[rule.as_str()])
                            .inc();
                    }
                }
                Outcome::Retry(..) => self.metrics.retries.inc(),
                Outcome::Park(_) => self.metrics.parked.inc(),
                Outcome::Defer(_) | Outcome::Lost => {}
            }
        }
    }

    /// Decides every event of the group in order, each on the state the previous one left,
    /// then makes the calls for the combined plan. One outcome per event, in order.
    async fn decide_group(&self, group: &[Claimed]) -> Result<Vec<Outcome>, StoreError> {
        let mut outcomes: Vec<Option<Outcome>> = group.iter().map(|_| None).collect();
        let mut events: Vec<(usize, Box<Event>)> = Vec::new();
        for (i, claimed) in group.iter().enumerate() {
            match event::parse(claimed.kind, claimed.body.as_bytes()) {
                Ok(Parsed::Event(e)) => events.push((i, e)),
                Ok(Parsed::Unsupported { event_type, .. }) => {
                    outcomes[i] = Some(self.failed(
                        claimed,
                        format!("stored event type {event_type} is not supported"),
                    ));
                }
                Err(e) => {
                    outcomes[i] =
                        Some(self.failed(claimed, format!("stored body no longer parses: {e}")))
                }
            }
        }
        let Some((_, first)) = events.first() else {
            return Ok(outcomes.into_iter().flatten().collect());
        };
        let location = first.location_id.clone();
        let contact = first.contact_id.clone();
        let token = self.tokens.for_location(&location);
        if let (false, Some(token)) = (self.options.dry_run, token) {
            match self.store.token_failing(&location).await? {
                Some(refused) if refused == fingerprint(token) => {
                    self.parked.lock().await.insert(location.clone());
                    for (i, _) in &events {
                        let mut d = Decision::empty(group[*i].attempt, false);
                        d.outcome = "waiting".into();
                        d.error = Some(format!(
                            "GoHighLevel refused the token of location {location}; waiting for a new token or a replay"
                        ));
                        outcomes[*i] = Some(Outcome::Park(d));
                    }
                    return Ok(outcomes.into_iter().flatten().collect());
                }
                // The token changed since it was refused: try again.
                Some(_) => {
                    self.store.resume_location(&location).await?;
                }
                None => {}
            }
        }
        // The whole group is decided by the rule set in force when it started.
        let rules = self.rules.current();
        // Decide each event on the state the one before it left.
        let mut tags = self
            .store
            .previous_state(&location, &contact, None)
            .await?
            .tags;
        let mut stages: HashMap<crate::model::ids::OpportunityId, Option<String>> = HashMap::new();
        let mut records: Vec<(usize, Decision, NewState)> = Vec::new();
        let mut net = Plan::default();
        for (i, event) in &events {
            let stage = match &event.opportunity_id {
                Some(o) => {
                    if !stages.contains_key(o) {
                        let stored = self
                            .store
                            .previous_state(&location, &contact, Some(o))
                            .await?
                            .stage;
                        stages.insert(o.clone(), stored);
                    }
                    stages.get(o).cloned().flatten()
                }
                None => None,
            };
            let previous = PreviousState {
                tags: tags.clone(),
                stage,
            };
            let resolver = match self.resolve(event, previous.stage.as_deref(), token).await {
                Ok(r) => r,
                Err(e) => {
                    let at = self.group_retry_at(group, None);
                    for (j, _) in &events {
                        let d = Decision::empty(group[*j].attempt, self.options.dry_run);
                        outcomes[*j] = Some(match &e {
                            CallError::Deferred { wait } => {
                                Outcome::Defer(SystemTime::now() + *wait)
                            }
                            _ => self.retry_or_fail(&group[*j], e.to_string(), at, d),
                        });
                    }
                    return Ok(outcomes.into_iter().flatten().collect());
                }
            };
            let decision = rules.evaluate(event, &previous, &resolver);
            net.merge(&decision.plan);
            let stage_key = event.stage_id.clone().or_else(|| event.stage_name.clone());
            if let (Some(o), Some(s)) = (&event.opportunity_id, &stage_key) {
                stages.insert(o.clone(), Some(s.clone()));
            }
            if event.tags.is_some() {
                tags.clone_from(&event.tags);
            }
            let state = NewState {
                location_id: Some(location.clone()),
                contact_id: Some(contact.clone()),
                tags: event.tags.clone(),
                stage: event.opportunity_id.clone().zip(stage_key),
            };
            let record = Decision {
                attempt: group[*i].attempt,
                matched: decision.matched,
                plan: decision.plan,
                calls: Vec::new(),
                outcome: "done".into(),
                error: None,
                dry_run: self.options.dry_run,
                rules_version: rules.version().to_owned(),
                batch: if events.len() > 1 {
                    events.iter().map(|(j, _)| group[*j].id).collect()
                } else {
                    Vec::new()
                },
            };
            records.push((*i, record, state));
        }
        // An event tried before may have had its calls made by a process that died (or lost
        // its lease) before it could record their answers: the follower list on record may
        // be stale, so it is not trusted for this group.
        let first_try = group.iter().all(|c| c.attempt <= 1);
        let (calls, end) = self
            .call(&location, &contact, &net, token, first_try, group[0].id)
            .await?;
        let retry_at = match &end {
            End::Retry(_, retry_after) => self.group_retry_at(group, *retry_after),
            _ => SystemTime::now(),
        };
        for (i, mut record, state) in records {
            record.calls.clone_from(&calls);
            let claimed = &group[i];
            outcomes[i] = Some(match &end {
                End::Done => Outcome::Finished(EventStatus::Done, record, state),
                End::Finished(status, reason) => {
                    record.outcome = status.as_str().into();
                    record.error = Some(reason.clone());
                    Outcome::Finished(*status, record, state)
                }
                End::Retry(reason, _) => self
                    .retry_or_fail(claimed, reason.clone(), retry_at, record)
                    .with_state(state),
                End::Park(reason) => {
                    record.outcome = "waiting".into();
                    record.error = Some(reason.clone());
                    Outcome::Park(record)
                }
                End::Defer(wait) => Outcome::Defer(SystemTime::now() + *wait),
                End::Lost => Outcome::Lost,
            });
        }
        Ok(outcomes.into_iter().flatten().collect())
    }

    /// Makes at most one add and one remove call for the combined plan.
    async fn call(
        &self,
        location: &LocationId,
        contact: &crate::model::ids::ContactId,
        net: &Plan,
        token: Option<&SecretString>,
        trust_known: bool,
        head: i64,
    ) -> Result<(Vec<CallRecord>, End), StoreError> {
        let mut calls = Vec::new();
        if net.is_empty() {
            return Ok((calls, End::Done));
        }
        let batches = batches(net);
        if self.options.dry_run {
            for (add, users) in batches {
                calls.push(call_record(add, contact, users, None, "dry-run"));
            }
            return Ok((calls, End::Done));
        }
        let Some(token) = token else {
            let reason = format!(
                "no GoHighLevel token for location {location} (set GHL_TOKEN or add the location to GHL_LOCATION_TOKENS_FILE)"
            );
            return Ok((calls, End::Finished(EventStatus::Failed, reason)));
        };
        // While the follower list GoHighLevel last returned is fresh, skip users who already
        // follow (adds) or already do not (removes). People change followers by hand, so only
        // for a short while.
        let mut batches = batches;
        if trust_known && !self.options.followers_fresh.is_zero() {
            let since = SystemTime::now() - self.options.followers_fresh;
            if let Some(known) = self.store.known_followers(location, contact, since).await? {
                for (add, users) in &mut batches {
                    users.retain(|u| known.contains(u) != *add);
                }
                batches.retain(|(_, users)| !users.is_empty());
            }
        }
        for (add, users) in batches {
            // Still this worker's group? Renewing the lease right before the call is also the
            // check: a worker that stalled past its lease (another took the contact over)
            // must not make a call that could land after the new holder's.
            if self
                .store
                .extend(&self.owner, &[head], self.options.lease)
                .await?
                == 0
            {
                return Ok((calls, End::Lost));
            }
            match self
                .ghl
                .followers(token, location, add, contact, &users)
                .await
            {
                Ok(list) => {
                    // Recorded only while this worker still holds the group (see
                    // Store::set_known_followers).
                    if let Some(list) = list {
                        self.store
                            .set_known_followers(
                                location,
                                contact,
                                &list,
                                Some((&self.owner, head)),
                            )
                            .await?;
                    }
                    calls.push(call_record(
                        add,
                        contact,
                        users,
                        Some(if add { 201 } else { 200 }),
                        "ok",
                    ));
                }
                Err(CallError::Retryable {
                    reason,
                    retry_after,
                }) => {
                    calls.push(call_record(add, contact, users, None, &reason));
                    return Ok((calls, End::Retry(reason, retry_after)));
                }
                Err(CallError::Deferred { wait }) => return Ok((calls, End::Defer(wait))),
                Err(CallError::Permanent { status, reason }) => {
                    calls.push(call_record(add, contact, users, status, &reason));
                    if matches!(status, Some(401 | 403)) {
                        self.store
                            .mark_token_failing(location, &fingerprint(token), &reason)
                            .await?;
                        self.parked.lock().await.insert(location.clone());
                        let reason = format!(
                            "{reason}; the location's events wait for a new token or a replay"
                        );
                        return Ok((calls, End::Park(reason)));
                    }
                    // 404: the contact was deleted; nothing is left to do, and nothing failed.
                    let end = if status == Some(404) {
                        EventStatus::Skipped
                    } else {
                        EventStatus::Failed
                    };
                    return Ok((calls, End::Finished(end, reason)));
                }
            }
        }
        // The token works: events parked while it did not can go.
        if self.parked.lock().await.remove(location) {
            let resumed = self.store.resume_location(location).await?;
            tracing::info!(%location, resumed, "the location's token works again; its parked events resume");
        }
        Ok((calls, End::Done))
    }

    fn failed(&self, claimed: &Claimed, reason: String) -> Outcome {
        let mut d = Decision::empty(claimed.attempt, self.options.dry_run);
        d.outcome = "failed".into();
        d.error = Some(reason);
        Outcome::Finished(EventStatus::Failed, d, NewState::default())
    }

    /// When a group that failed is tried again: one time for all of its events, from the
    /// most-tried one. (Each event drawing its own jittered time held the contact back until
    /// the latest of them, since a contact waits while any of its newer events does.)
    fn group_retry_at(&self, group: &[Claimed], retry_after: Option<Duration>) -> SystemTime {
        let attempt = group.iter().map(|c| c.attempt).max().unwrap_or(1);
        SystemTime::now() + self.options.retry.delay(attempt, retry_after)
    }

    fn retry_or_fail(
        &self,
        claimed: &Claimed,
        reason: String,
        at: SystemTime,
        mut d: Decision,
    ) -> Outcome {
        let age = claimed.received_at.elapsed().unwrap_or_default();
        if age > self.options.retry.max_age {
            d.outcome = "failed".into();
            d.error = Some(format!(
                "gave up after {} (the retry age limit): {reason}",
                humantime::format_duration(Duration::from_secs(age.as_secs()))
            ));
            return Outcome::Finished(EventStatus::Failed, d, NewState::default());
        }
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
                    Err(e @ (CallError::Retryable { .. } | CallError::Deferred { .. })) => {
                        return Err(e);
                    }
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
                            Err(e @ (CallError::Retryable { .. } | CallError::Deferred { .. })) => {
                                return Err(e);
                            }
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
            Err(e @ (CallError::Retryable { .. } | CallError::Deferred { .. })) => Err(e),
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
            batch: Vec::new(),
            rules_version: String::new(),
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
    contact: &crate::model::ids::ContactId,
    users: Vec<UserId>,
    status: Option<u16>,
    outcome: &str,
) -> CallRecord {
    CallRecord {
        method: if add { "POST" } else { "DELETE" }.to_owned(),
        path: crate::ghl::followers_path(contact),
        users,
        status,
        outcome: outcome.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_in_hand_is_not_taken_twice_until_let_go() {
        let set = Arc::default();
        let mut first = InHand {
            set: Arc::clone(&set),
            ids: Vec::new(),
        };
        assert_eq!(first.take(&[1, 2]), vec![1, 2]);
        let mut second = InHand {
            set: Arc::clone(&set),
            ids: Vec::new(),
        };
        assert_eq!(second.take(&[2, 3]), vec![3], "2 is in the first hand");
        drop(first);
        assert_eq!(
            second.take(&[1, 2]),
            vec![1, 2],
            "let go with the first hand"
        );
        drop(second);
        assert!(
            set.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_empty()
        );
    }

    #[test]
    fn retry_delay_grows_is_capped_and_honours_retry_after() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            max_attempts: 5,
            max_age: Duration::from_secs(60),
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

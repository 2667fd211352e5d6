//! The worker: claims stored events (oldest first per contact) and takes each group of a
//! contact's due events through four phases, each in its own module:
//!
//! 1. [`load`]: the claimed event and the contact's later due events, bodies parsed again;
//! 2. [`decide`]: each event, in order, by the rules, on the state the one before it left
//!    (with names from [`lookups`]); their plans combined;
//! 3. [`call`]: at most one add and one remove call to GoHighLevel for the combined plan;
//! 4. [`record`]: each event's decision and state stored, logged and counted.
//!
//! How a group ended is one [`Ending`]; each event's decision carries its
//! [`Outcome`](crate::model::record::Outcome), which sets its status. [`retry`] says when a
//! failed attempt is tried again.

mod backfill;
mod call;
mod decide;
pub mod directory;
mod load;
mod lookups;
mod maintain;
pub mod online;
mod ownership;
mod reconcile;
mod record;
mod retry;
pub mod simulate;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{Mutex, Notify, Semaphore, watch};
use tokio::task::JoinSet;

pub use backfill::Progress;
pub use maintain::{Change, Entry, Job, OnReload, Report, Tally};
pub use ownership::decide_alone;
pub use retry::RetryPolicy;

use crate::access::{Access, NoToken, Token};
use crate::ghl::GhlClient;
use crate::metrics::Metrics;
use crate::model::event::EventType;
use crate::model::ids::{LocationId, UserId};
use crate::model::record::{CallRecord, Decision, Outcome};
use crate::rules::LiveRules;
use crate::rules::deal::Dealer;
use crate::store::{Claimed, ClaimedGroup, ContactSnapshot, NewState, Store, StoreError};
use decide::Turns;
use load::{Held, Step};
use lookups::Lookups;
use record::Result1;

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
    /// The longest a contact's event is held back by its newer webhooks.
    pub settle_max: Duration,
    /// Drift repair: how often each ledger contact's followers are read again (`None`: off).
    pub reconcile_every: Option<Duration>,
    /// The time zone whose days pools' away dates are.
    pub time_zone: Option<chrono_tz::Tz>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            concurrency: 64,
            lease: Duration::from_secs(120),
            poll: Duration::from_millis(500),
            retry: RetryPolicy::default(),
            dry_run: false,
            followers_fresh: Duration::from_secs(60),
            settle_delay: Duration::from_secs(1),
            settle_max: Duration::from_secs(30),
            reconcile_every: None,
            time_zone: None,
        }
    }
}

/// The most events of one contact decided together.
const MAX_BATCH: u32 = 100;

/// Who the group's add calls added, for the ownership ledger: on a first attempt,
/// GoHighLevel's `followersAdded` (else everyone sent); on a retry, everyone sent, since an
/// earlier attempt of autofollow's may have added them already (its answer lost to a timeout
/// or a crash), and then GoHighLevel reports them as following before.
fn added_by(calls: &[CallRecord], first_try: bool) -> HashSet<UserId> {
    let adds = calls
        .iter()
        .filter(|c| c.method == "POST" && c.outcome == "ok");
    adds.flat_map(|c| {
        let reported = c.changed.as_ref().filter(|_| first_try);
        reported.unwrap_or(&c.users).iter().cloned()
    })
    .collect()
}

/// How the work on a group ended, before each event's decision records it.
#[derive(Clone, Debug)]
pub(crate) enum Ending {
    /// An attempt was made and ended with `outcome` (`error` says why when it is not done).
    Attempt {
        outcome: Outcome,
        error: Option<String>,
        /// When GoHighLevel said when to try again.
        retry_after: Option<Duration>,
    },
    /// Nothing was tried: the location's rate-limit budget is spent for this long. Not an
    /// attempt: nothing is recorded.
    Deferred(Duration),
    /// This worker no longer holds the group (it stalled past its lease and another took the
    /// contact over): it stops without making or recording anything more.
    Lost,
}

impl Ending {
    fn done() -> Ending {
        Ending::Attempt {
            outcome: Outcome::Done,
            error: None,
            retry_after: None,
        }
    }

    fn attempt(outcome: Outcome, error: String) -> Ending {
        Ending::Attempt {
            outcome,
            error: Some(error),
            retry_after: None,
        }
    }

    fn retry(error: String, retry_after: Option<Duration>) -> Ending {
        Ending::Attempt {
            outcome: Outcome::Retry,
            error: Some(error),
            retry_after,
        }
    }
}

#[derive(Debug)]
pub struct Worker {
    store: Arc<dyn Store>,
    rules: Arc<LiveRules>,
    ghl: GhlClient,
    access: Access,
    options: WorkerOptions,
    owner: String,
    wake: Arc<Notify>,
    lookups: Lookups,
    /// Locations with parked events; a successful call for one of them resumes the rest.
    parked: Mutex<HashSet<LocationId>>,
    /// Events a task of this worker is processing (see [`load::InHand`]).
    in_hand: Arc<load::Hands>,
    metrics: Arc<Metrics>,
    /// The last reapply worked out here (a reload's preview, or an operator's), without its
    /// list of changes.
    last_reapply: std::sync::Mutex<Option<Report>>,
    /// A dry run's pool turns: it deals as it would, counting nothing in the store.
    dry_turns: Mutex<Dealer>,
}

impl Worker {
    pub fn new(
        store: Arc<dyn Store>,
        rules: Arc<LiveRules>,
        ghl: GhlClient,
        access: Access,
        options: WorkerOptions,
        wake: Arc<Notify>,
        metrics: Arc<Metrics>,
    ) -> Worker {
        let owner = format!("{}-{}", std::process::id(), rand::rng().random::<u32>());
        let lookups = Lookups::new(Arc::clone(access.scopes()));
        Worker {
            store,
            rules,
            ghl,
            access,
            options,
            owner,
            wake,
            lookups,
            parked: Mutex::default(),
            in_hand: Arc::default(),
            metrics,
            last_reapply: std::sync::Mutex::default(),
            dry_turns: Mutex::default(),
        }
    }

    /// The name this worker's leases carry.
    /// Requests per second the rate budget allows each location.
    pub fn rate_per_second(&self) -> f64 {
        self.ghl.per_second()
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Runs until `shutdown` turns true, then finishes the events in hand and releases leases.
    /// Free slots are claimed for together once a quarter of them are free (or none is busy),
    /// so one claim serves many groups, and one slow call never holds up other contacts.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if let Err(e) = self.resume_changed_tokens().await {
            tracing::warn!(error = %e, "cannot check parked locations; they resume on replay");
        }
        let concurrency = self.options.concurrency.max(1);
        let slots = Arc::new(Semaphore::new(concurrency as usize));
        let mut tasks = JoinSet::new();
        while !*shutdown.borrow() {
            while tasks.try_join_next().is_some() {}
            let free = u32::try_from(slots.available_permits()).unwrap_or(u32::MAX);
            let worth = free > 0 && (tasks.is_empty() || free >= concurrency.div_ceil(4));
            let asked = Instant::now();
            let claimed = match worth {
                false => Vec::new(),
                true => self.claim(free).await,
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
                    worker.process(event, asked).await;
                    drop(permit);
                });
            }
        }
        while tasks.join_next().await.is_some() {}
        if let Err(e) = self.store.release(&self.owner).await {
            tracing::warn!(error = %e, "cannot release leases at shutdown; they expire on their own");
        }
    }

    /// Processes every event that is due now, one group at a time, and returns how many groups
    /// it processed: what `run` does, without waiting, for tests and tools that drain the
    /// queue. Events due later (settling, retried, deferred) are left.
    pub async fn run_once(&self) -> usize {
        let mut groups = 0;
        loop {
            let asked = Instant::now();
            let claimed = self.claim(self.options.concurrency.max(1)).await;
            if claimed.is_empty() {
                return groups;
            }
            for group in claimed {
                self.process(group, asked).await;
                groups += 1;
            }
        }
    }

    /// Up to `limit` contacts' due work, each with what is known of the contact.
    async fn claim(&self, limit: u32) -> Vec<ClaimedGroup> {
        let settle_max = Some(self.options.settle_max);
        let (owner, lease) = (&self.owner, self.options.lease);
        match self
            .store
            .claim_groups(owner, limit, MAX_BATCH, lease, settle_max)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim events; retrying");
                Vec::new()
            }
        }
    }

    /// Resumes the parked events of every location whose token changed since it was refused.
    async fn resume_changed_tokens(&self) -> Result<(), StoreError> {
        for (location, refused) in self.store.token_failures().await? {
            let current = self.access.current(&location).await;
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

    /// Takes a claimed group (asked for at `asked`) through the phases: load, decide and call
    /// (under leases kept alive), record.
    async fn process(&self, claimed: ClaimedGroup, asked: Instant) {
        let Some(loaded) = self.load(claimed, asked).await else {
            return; // a task of this worker has it already
        };
        let group = &loaded.claimed;
        let work = self.work(group, &loaded.contact, &loaded.held);
        let worked = self.holding_leases(group, &loaded.held, work).await;
        let (results, ending) = match worked {
            None => return,
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                // The store failed mid-way: leave the leases to expire; nothing is lost.
                tracing::error!(event_id = group[0].id, error = %e, "store error while processing; the events will be retried");
                return;
            }
        };
        let retry_after = match &ending {
            Ending::Attempt { retry_after, .. } => *retry_after,
            _ => None,
        };
        let retry_at = self.options.retry.group_retry_at(group, retry_after);
        for (claimed, result) in group.iter().zip(&results) {
            record::log(claimed, result, &ending, retry_at);
        }
        if let Ending::Deferred(wait) = ending {
            self.wake_after(wait);
        }
        self.record(group, &results, &ending, retry_at).await;
    }

    /// Decides and calls for the group: one result per event, in order, and how it ended.
    async fn work(
        &self,
        group: &[Claimed],
        contact: &ContactSnapshot,
        held: &Held,
    ) -> Result<(Vec<Result1>, Ending), StoreError> {
        let rules = self.rules.current();
        let mut bodies = load::parse(group);
        let mut results: Vec<Result1> = group.iter().map(|_| None).collect();
        for (i, reason) in bodies.unreadable.drain(..) {
            let mut d = Decision::empty(group[i].attempt, Outcome::Failed, self.options.dry_run);
            d.error = Some(reason);
            results[i] = Some((d, NewState::default()));
        }
        for (i, reason) in maintain::stale(&mut bodies, rules.version()) {
            let mut d = Decision::empty(group[i].attempt, Outcome::Skipped, self.options.dry_run);
            d.error = Some(reason);
            results[i] = Some((d, NewState::default()));
        }
        let Some(location) = bodies.steps.first().map(|(_, s)| s.location().clone()) else {
            return Ok((results, Ending::done()));
        };
        let access = match self.deleted(&bodies.steps).await? {
            Some(ending) => Err(ending),
            None => self.token(&location).await?,
        };
        let (token, decided) = match access {
            Ok(token) => {
                let turns = match self.options.dry_run {
                    true => Turns::Preview(&self.dry_turns),
                    false => Turns::Store,
                };
                let at = (&*rules, token.as_ref());
                let decided = (self.decide(group, &bodies.steps, at, contact, turns)).await?;
                (token, decided)
            }
            Err(ending) => (None, Err(ending)),
        };
        let (records, ending) = match decided {
            Err(ending) => {
                let empty = |i: usize| {
                    Decision::empty(group[i].attempt, Outcome::Done, self.options.dry_run)
                };
                let records = bodies
                    .steps
                    .iter()
                    .map(|(i, _)| (*i, empty(*i), NewState::default()));
                (records.collect(), ending)
            }
            Ok(decided) => {
                self.calls_made(group, decided, token.as_ref(), held)
                    .await?
            }
        };
        for (i, decision, state) in records {
            results[i] = self.settle(&group[i], decision, state, &ending);
        }
        Ok((results, ending))
    }

    /// Makes the calls of a decided group: each event's decision and state (owning what the
    /// calls added), and how the calls ended.
    async fn calls_made(
        &self,
        group: &[Claimed],
        decided: decide::Decided,
        token: Option<&Token>,
        held: &Held,
    ) -> Result<(Vec<(usize, Decision, NewState)>, Ending), StoreError> {
        // An event tried before may have had its calls made by a process that died (or lost
        // its lease) before it could record their answers: the follower list on record may
        // be stale, so it is not trusted for this group.
        let first_try = group.iter().all(|c| c.attempt <= 1);
        let called = self
            .call(&decided, token, first_try, (group[0].id, held))
            .await?;
        let added = added_by(&called.calls, first_try);
        let dry_run = self.options.dry_run;
        let ownership = &decided.ownership;
        let (location, contact) = (&decided.location, &decided.contact);
        let mut records: Vec<_> = decided
            .records
            .into_iter()
            .map(|(i, mut d, mut s)| {
                d.calls.clone_from(&called.calls);
                // A dry run changes nothing, so it owns nothing.
                match dry_run {
                    true => s.ledger.clear(),
                    false => ownership.keep_added(&mut s.ledger, &added),
                }
                (i, d, s)
            })
            .collect();
        // The follower list the calls left: remembered with the group's result when it ends
        // the events, else now (under the lease).
        let ends = matches!(&called.ending,
            Ending::Attempt { outcome, .. } if outcome.status().is_final());
        match (called.followers, records.last_mut()) {
            (Some(list), Some(last)) if ends => last.2.followers = Some(list),
            (Some(list), _) => {
                self.remember((location, contact), &list, group[0].id)
                    .await?
            }
            (None, _) => {}
        }
        Ok((records, called.ending))
    }

    /// An event's result, its decision given the group's ending (a retry may be given up).
    fn settle(
        &self,
        claimed: &Claimed,
        mut d: Decision,
        state: NewState,
        ending: &Ending,
    ) -> Result1 {
        let Ending::Attempt { outcome, error, .. } = ending else {
            return None;
        };
        d.outcome = *outcome;
        d.error.clone_from(error);
        match outcome {
            Outcome::Retry => {
                let reason = error.clone().unwrap_or_default();
                self.options.retry.retry_or_give_up(claimed, reason, &mut d);
                // A given-up event still leaves its state; a retried one leaves nothing yet.
                Some((d, state))
            }
            // A parked event leaves nothing yet; a finished one its state.
            Outcome::Parked => Some((d, NewState::default())),
            _ => Some((d, state)),
        }
    }

    /// Looks again the moment the location's budget has room, not at the next poll: a
    /// location with a backlog then uses its whole budget.
    fn wake_after(&self, wait: Duration) {
        let wake = Arc::clone(&self.wake);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            wake.notify_one();
        });
    }

    /// A group with a `ContactDelete` ends skipped: GoHighLevel is never called for a deleted
    /// contact, and what was remembered of it is forgotten (its history stays).
    async fn deleted(&self, steps: &[(usize, Step)]) -> Result<Option<Ending>, StoreError> {
        let Some(e) = steps
            .iter()
            .filter_map(|(_, s)| s.event())
            .find(|e| e.event_type == EventType::ContactDelete)
        else {
            return Ok(None);
        };
        self.store
            .forget(&e.location_id, &e.contact_id, None)
            .await?;
        let reason = "the contact was deleted in GoHighLevel; nothing is called".to_owned();
        Ok(Some(Ending::attempt(Outcome::Skipped, reason)))
    }

    /// The location's token (`None` in a dry run, which decides and records without one), or
    /// how the group ends without deciding: skipped when the app was uninstalled from the
    /// location, parked while the app must be installed
    /// again, a retry while no token can be had now.
    async fn token(
        &self,
        location: &LocationId,
    ) -> Result<Result<Option<Token>, Ending>, StoreError> {
        if self.options.dry_run {
            return Ok(Ok(None));
        }
        match self.access.token(location).await {
            Ok(token) => Ok(Ok(Some(token))),
            // Decided, and failed if a call is needed: replayable once a token is added.
            Err(NoToken::Missing) => Ok(Ok(None)),
            Err(NoToken::Uninstalled) => Ok(Err(Ending::attempt(
                Outcome::Skipped,
                "the app was uninstalled from the location; nothing is called".to_owned(),
            ))),
            Err(NoToken::Unavailable(reason)) => Ok(Err(Ending::retry(reason, None))),
            Err(NoToken::Reauthorize {
                fingerprint,
                reason,
            }) => {
                self.store
                    .mark_token_failing(location, &fingerprint, &reason)
                    .await?;
                self.parked.lock().await.insert(location.clone());
                let reason =
                    format!("{reason}; the location's events wait for a new install or a replay");
                Ok(Err(Ending::attempt(Outcome::Parked, reason)))
            }
        }
    }

    /// Runs `work` on the claimed `group`, extending its leases every third of the lease, so
    /// slow GoHighLevel calls never outlive them. When another worker has taken the events
    /// after all (this one stalled past its lease), the work stops: None.
    async fn holding_leases<T>(
        &self,
        group: &[Claimed],
        held: &Held,
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
                    let asked = Instant::now();
                    match self.store.extend(&self.owner, &ids, self.options.lease).await {
                        Ok(n) if n == ids.len() as u64 => held.renewed(asked),
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
}

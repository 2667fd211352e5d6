//! Durable storage: accepted events, the processing queue with leases, per-contact and
//! per-opportunity state, and a decision record per processing attempt.
//!
//! [`Store`] is the contract every backend keeps; [`sqlite::SqliteStore`] is the embedded
//! default. An event is committed before the webhook is acknowledged; a worker *claims* an
//! event with a lease, and only the lease holder may finish it or schedule a retry. Events of
//! one contact are claimed one at a time, oldest first.

pub mod migrate;
pub mod pg_budget;
mod pg_intake;
pub mod postgres;
pub mod sqlite;
mod sqlite_writer;
pub mod wrap;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::Serialize;
use sqlx::FromRow;

use crate::model::event::BodyKind;
use crate::model::ids::{ContactId, LocationId, OpportunityId, UserId};
use crate::model::plan::Follow;
use crate::model::plan::PreviousState;
use crate::model::record::{Decision, EventStatus, Outcome};
use crate::model::task::UndoScope;
pub use crate::rules::deal::{PoolMember, PoolState, smooth_pick};

/// A webhook to store, already authenticated and parsed.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub kind: BodyKind,
    pub event_type: String,
    pub location_id: LocationId,
    pub contact_id: ContactId,
    pub opportunity_id: Option<OpportunityId>,
    pub webhook_id: Option<String>,
    pub body: String,
    /// Not to be processed before this (now plus the settle delay). The contact's earlier
    /// waiting events are held back until then too.
    pub available_at: SystemTime,
}

/// What storing a webhook did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    Accepted(i64),
    /// Its `webhookId` was seen within the deduplication window.
    Duplicate,
}

/// A claimed event: the worker holds its lease until it finishes or reschedules it.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub id: i64,
    /// The location and contact as stored, to find the contact's other events: the worker
    /// acts on the ids of the body it parses again (checked there), never on these, so a row
    /// stored before ids were checked fails its event instead of stopping the queue.
    pub location_id: String,
    pub contact_id: String,
    pub kind: BodyKind,
    pub body: String,
    /// 1 on the first attempt.
    pub attempt: u32,
    pub received_at: SystemTime,
    pub lease_owner: String,
}

/// The stored state of an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventRecord {
    pub id: i64,
    pub event_type: String,
    pub location_id: String,
    pub contact_id: String,
    pub status: EventStatus,
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// Which events to list or replay; every field narrows the selection.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub status: Option<EventStatus>,
    pub contact: Option<ContactId>,
    pub location: Option<LocationId>,
    /// GoHighLevel's event type name (`ContactCreate`, `Workflow`, …).
    pub event_type: Option<String>,
    /// Received at or after this time.
    pub since: Option<SystemTime>,
    pub limit: u32,
}

impl EventFilter {
    /// `2h`, `30m`, `7d`… ago, as a point in time for [`EventFilter::since`].
    pub fn since_ago(ago: &str) -> Result<SystemTime, String> {
        let d = humantime::parse_duration(ago.trim())
            .map_err(|e| format!("`{ago}` is not a duration such as 2h or 7d: {e}"))?;
        SystemTime::now()
            .checked_sub(d)
            .ok_or_else(|| format!("`{ago}` reaches before 1970"))
    }
}

/// An event with its latest decision, for operators.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventSummary {
    #[serde(flatten)]
    pub event: EventRecord,
    /// Unix milliseconds.
    pub received_at: i64,
    pub last_decision: Option<Decision>,
}

/// An event's body, as [`History::event_body`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBody {
    pub kind: BodyKind,
    pub body: String,
    /// Unix ms.
    pub received_at: i64,
}

/// One bucket of [`History::activity`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Activity {
    /// Unix ms of the bucket's start.
    pub start: i64,
    pub received: u64,
    /// Of those received, how many failed (dead letters).
    pub failed: u64,
    /// GoHighLevel calls recorded by decisions made in the bucket.
    pub calls: u64,
}

/// Adds `calls` (bucket start, calls) to `received` (bucket start, received, failed).
pub(crate) fn activity(received: Vec<(i64, i64, i64)>, calls: Vec<(i64, i64)>) -> Vec<Activity> {
    let mut out: std::collections::BTreeMap<i64, Activity> = std::collections::BTreeMap::new();
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    for (start, received, failed) in received {
        let a = out.entry(start).or_insert(Activity {
            start,
            ..Activity::default()
        });
        (a.received, a.failed) = (count(received), count(failed));
    }
    for (start, calls) in calls {
        out.entry(start)
            .or_insert(Activity {
                start,
                ..Activity::default()
            })
            .calls = count(calls);
    }
    out.into_values().collect()
}

/// What [`Store::erase_contact`] deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Erased {
    pub events: u64,
    pub decisions: u64,
    /// Rows of contact, opportunity and follower state.
    pub states: u64,
}

/// The queue at a glance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Events not finished yet (waiting, retrying or parked).
    pub pending: u64,
    /// When the oldest of them was received.
    pub oldest_pending: Option<SystemTime>,
    /// Failed events still stored.
    pub failed: u64,
}

/// The state an event leaves behind for its contact and opportunity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewState {
    pub location_id: Option<LocationId>,
    pub contact_id: Option<ContactId>,
    /// Set when the event carried the contact's tags.
    pub tags: Option<Vec<String>>,
    /// Set when the event carried the opportunity's stage (id, or name for workflow bodies).
    pub stage: Option<(OpportunityId, String)>,
    /// Set when the event said who the record is assigned to: the opportunity's assignee
    /// (with its id) or the contact's; `None` inside: unassigned.
    pub assigned: Option<(Option<OpportunityId>, Option<UserId>)>,
    /// Changes to the ownership ledger the event's decision made.
    pub ledger: Vec<LedgerChange>,
    /// The contact's follower list as the group's calls left it (set on the group's last
    /// event): remembered with the result, under the same lease check.
    pub followers: Option<Vec<UserId>>,
}

/// What is known of a contact when its work is claimed, read in the claim (under the lease,
/// so no other worker changes it while this one holds the contact's events).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContactSnapshot {
    /// The contact's tags and assignee as its earlier events left them (`stage` is per
    /// opportunity, read when an event names one).
    pub previous: PreviousState,
    /// The ownership ledger's rows autofollow keeps.
    pub owned: Vec<Owned>,
    /// The follower list GoHighLevel last returned, and when (unix ms).
    pub followers: Option<(Vec<UserId>, i64)>,
    /// The fingerprint of the location's token GoHighLevel refused, while it is marked
    /// failing.
    pub token_refused: Option<String>,
}

/// A contact's due events claimed together (oldest first), with what is known of it.
#[derive(Clone, Debug)]
pub struct ClaimedGroup {
    pub events: Vec<Claimed>,
    pub contact: ContactSnapshot,
}

impl ClaimedGroup {
    /// A contact's group: its head, then its later events (oldest first).
    pub fn new(head: Claimed, later: Vec<Claimed>, contact: ContactSnapshot) -> ClaimedGroup {
        let mut events = Vec::with_capacity(later.len() + 1);
        events.push(head);
        events.extend(later);
        ClaimedGroup { events, contact }
    }
}

/// A change to the ownership ledger (which followers autofollow added to a contact).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerChange {
    /// `rule` added `user` (or keeps it: autofollow already owned it).
    Added {
        user: UserId,
        rule: String,
        follow: Follow,
        /// For a while-matching rule, the opportunity whose events re-check it (`None`: the
        /// contact's events).
        subject: Option<OpportunityId>,
        rules_version: String,
    },
    /// `rule` no longer keeps `user`; `None`: nothing does (autofollow removed the user).
    Ended { user: UserId, rule: Option<String> },
    /// Drift repair found `user` removed in GoHighLevel: every row of theirs ends, marked as
    /// removed by hand (reapply and drift repair do not add them back).
    RemovedByHand { user: UserId },
}

/// A row of the ownership ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Owned {
    pub user: UserId,
    pub rule: String,
    pub follow: Follow,
    pub subject: Option<OpportunityId>,
    pub rules_version: String,
    /// The event whose decision added it.
    pub event_id: i64,
    /// Unix milliseconds.
    pub added_at: i64,
    /// Unix milliseconds; `None` while autofollow keeps the user following for this rule.
    pub removed_at: Option<i64>,
    /// The event (or task) whose decision ended the row.
    pub removed_event_id: Option<i64>,
    /// Who ended it: `autofollow`, or `hand` (found removed in GoHighLevel by drift repair).
    pub removed_by: Option<String>,
}

impl LedgerChange {
    /// The change as the store writes it: (kind, user, rule, follow, subject, version).
    pub fn row(&self) -> LedgerRow {
        match self {
            LedgerChange::Added {
                user,
                rule,
                follow,
                subject,
                rules_version,
            } => LedgerRow {
                added: true,
                user: user.as_str().to_owned(),
                rule: Some(rule.clone()),
                follow: follow.as_str(),
                subject: subject.as_ref().map(|o| o.as_str().to_owned()),
                rules_version: rules_version.clone(),
                removed_by: None,
            },
            LedgerChange::Ended { user, rule } => LedgerRow {
                added: false,
                user: user.as_str().to_owned(),
                rule: rule.clone(),
                follow: "",
                subject: None,
                rules_version: String::new(),
                removed_by: Some("autofollow"),
            },
            LedgerChange::RemovedByHand { user } => LedgerRow {
                added: false,
                user: user.as_str().to_owned(),
                rule: None,
                follow: "",
                subject: None,
                rules_version: String::new(),
                removed_by: Some("hand"),
            },
        }
    }
}

/// A [`LedgerChange`] in the store's terms.
#[derive(Clone, Debug)]
pub struct LedgerRow {
    pub added: bool,
    pub user: String,
    /// `None` (an end): every rule of the user.
    pub rule: Option<String>,
    pub follow: &'static str,
    pub subject: Option<String>,
    pub rules_version: String,
    /// For an end: `autofollow`, or `hand` (drift repair found the follower removed).
    pub removed_by: Option<&'static str>,
}

/// An `assignees` row: kind (`contact` or `opportunity`), record id, user id (`None`:
/// unassigned).
pub type AssigneeRow = (&'static str, String, Option<String>);

impl NewState {
    /// The `assignees` row it writes.
    pub fn assignee_row(&self) -> Option<AssigneeRow> {
        let (opportunity, user) = self.assigned.as_ref()?;
        let user = user.as_ref().map(|u| u.as_str().to_owned());
        match opportunity {
            Some(o) => Some(("opportunity", o.as_str().to_owned(), user)),
            None => Some((
                "contact",
                self.contact_id.as_ref()?.as_str().to_owned(),
                user,
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// From the SQLite writer's connection.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Unreadable stored data, or a store that cannot be opened as asked.
    #[error("{0}")]
    Corrupt(String),
    /// The store failed an operation shared with others (the message is the first error's).
    #[error("{0}")]
    Unavailable(String),
}

/// Whether a deferral until `at` (milliseconds) also moves the location's due events to `at`,
/// given the hold already in force (`held`, if any) at `now`. The hold alone keeps them from
/// being claimed, but the claim's walk in `available_at` order still passes over them; a hold
/// that starts or grows by more than [`MOVE_AFTER_MS`] moves them out of the walk once, so a
/// long backlog costs one rewrite per hold, not one per deferred event (a 429 reaches every
/// event in flight for the location) and not one walk per claim.
pub(crate) fn moves_the_queue(held: Option<i64>, now: i64, at: i64) -> bool {
    let from = held.map_or(now, |h| h.max(now));
    at - from > MOVE_AFTER_MS
}

/// See [`moves_the_queue`]: short waits for the next token of a budget only hold.
pub(crate) const MOVE_AFTER_MS: i64 = 500;

/// The processing queue: webhooks stored, claimed under a lease, and ended (finished,
/// retried, parked, deferred), one contact's events in order.
#[async_trait]
pub trait Queue: Send + Sync + std::fmt::Debug {
    /// Commits a webhook to the queue, unless its `webhookId` was seen within `dedup_window`.
    async fn insert_event(
        &self,
        event: NewEvent,
        dedup_window: Duration,
    ) -> Result<Inserted, StoreError>;

    /// A location's pending work: (webhooks due now, tasks waiting), for a backfill to let
    /// live work go first.
    async fn location_queue(&self, location: &LocationId) -> Result<(u64, u64), StoreError>;

    /// Leases up to `limit` events that are due: for each contact only its oldest unfinished
    /// event, only when no other lease on it is live, and only when none of its newer events
    /// is still waiting out its settle delay (a burst about one contact is decided together).
    async fn claim(
        &self,
        owner: &str,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        self.claim_within(owner, limit, lease, None).await
    }

    /// [`Queue::claim`], where an event received `settle_max` ago or longer is not held back
    /// by its contact's newer webhooks any more: a contact that keeps receiving webhooks is
    /// still decided at least that often.
    async fn claim_within(
        &self,
        owner: &str,
        limit: u32,
        lease: Duration,
        settle_max: Option<Duration>,
    ) -> Result<Vec<Claimed>, StoreError>;

    /// Leases the contact's later unfinished events that are due, after `first` (which the
    /// caller holds), oldest first: processed together, their plans combine.
    async fn claim_rest(
        &self,
        owner: &str,
        first: &Claimed,
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<Claimed>, StoreError>;

    /// Ends a claimed event with its decision, whose outcome (done, failed or skipped) is its
    /// final status, and the state it leaves. Returns false (and changes nothing) when the
    /// lease was lost.
    async fn finish(
        &self,
        event: &Claimed,
        decision: &Decision,
        state: &NewState,
    ) -> Result<bool, StoreError> {
        self.finish_all(&[(event, decision, state)]).await
    }

    /// Ends several claimed events in one transaction, in order (the last one's state is the
    /// state that stays). All or nothing: false when any lease was lost.
    async fn finish_all(
        &self,
        events: &[(&Claimed, &Decision, &NewState)],
    ) -> Result<bool, StoreError>;

    /// Releases a claimed event to be tried again at `at`, recording the attempt.
    async fn retry_at(
        &self,
        event: &Claimed,
        at: SystemTime,
        decision: &Decision,
    ) -> Result<bool, StoreError>;

    /// Releases a claimed event without counting the attempt or recording a decision (it
    /// waited for a rate limit, nothing was tried), and holds its location back until `at`:
    /// no event of the location is claimed before then, and each keeps its place in the
    /// queue. A hold only lengthens; it is one row however many events wait, so a location
    /// with a long backlog costs no more to hold than one with a single event.
    async fn defer(&self, event: &Claimed, at: SystemTime) -> Result<bool, StoreError>;

    /// Extends `owner`'s leases on these events to `lease` from now, while it still works on
    /// them. Returns how many it still held: fewer than `ids` means another worker has the rest.
    async fn extend(&self, owner: &str, ids: &[i64], lease: Duration) -> Result<u64, StoreError>;

    /// Releases every lease `owner` holds (shutdown).
    async fn release(&self, owner: &str) -> Result<u64, StoreError>;

    /// Releases every lease (events', and installations' refresh leases): on start-up of a
    /// single-instance store, no other process can hold one, so a crashed process's events
    /// resume at once instead of after lease expiry. Returns how many events it released.
    async fn release_all(&self) -> Result<u64, StoreError>;

    /// Puts finished (or waiting) events back in the queue, due now, with a fresh attempt
    /// count, and clears the token-failure mark of their locations so they are tried.
    /// Events under a live lease are left alone. Returns how many were queued.
    async fn replay(&self, ids: &[i64]) -> Result<u64, StoreError>;

    /// Parks a claimed event until its location's token works again.
    async fn park(&self, event: &Claimed, decision: &Decision) -> Result<bool, StoreError>;

    /// Locations that have parked events.
    async fn parked_locations(&self) -> Result<Vec<LocationId>, StoreError>;

    /// Clears the location's failure mark and makes its parked events due now.
    async fn resume_location(&self, location: &LocationId) -> Result<u64, StoreError>;

    /// Events not finished yet.
    async fn pending(&self) -> Result<u64, StoreError> {
        Ok(self.queue_stats().await?.pending)
    }

    /// How much work waits, and how old the oldest is (for metrics).
    async fn queue_stats(&self) -> Result<QueueStats, StoreError>;
}

/// What operators read and erase: events with their decision records.
#[async_trait]
pub trait History: Send + Sync + std::fmt::Debug {
    async fn event(&self, id: i64) -> Result<Option<EventRecord>, StoreError>;

    async fn decisions(&self, event_id: i64) -> Result<Vec<Decision>, StoreError>;

    /// Events matching the filter, newest first, with their latest decision.
    async fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventSummary>, StoreError>;

    /// The bodies of the webhooks received since `since` (unix ms), in one location or all,
    /// oldest first, at most `limit` (tasks left out): the history `simulate` replays.
    async fn received_since(
        &self,
        since: i64,
        location: Option<&LocationId>,
        limit: u32,
    ) -> Result<Vec<(i64, BodyKind, String)>, StoreError>;

    /// An event's body as received, which parser reads it, and when it came.
    async fn event_body(&self, id: i64) -> Result<Option<StoredBody>, StoreError>;

    /// Webhooks received, failed and GoHighLevel calls made since `since` (unix ms), in
    /// buckets of `bucket` ms (by the time received, and of the decision), oldest first;
    /// buckets with nothing are left out.
    async fn activity(&self, since: i64, bucket: i64) -> Result<Vec<Activity>, StoreError>;

    /// Every event of a contact, oldest first, with every decision.
    async fn history(
        &self,
        contact: &ContactId,
    ) -> Result<Vec<(EventSummary, Vec<Decision>)>, StoreError>;

    /// Erases what is stored about a contact (a data subject's request): every event of it
    /// (whatever its status: waiting work is dropped too), their decisions, the contact's
    /// tags, its opportunities' stages and its known followers. Delivery ids stay until they
    /// age out (they hold no personal data and keep re-deliveries from being stored again).
    async fn erase_contact(&self, contact: &ContactId) -> Result<Erased, StoreError>;

    /// Deletes finished events (and their decisions) that finished before `before`, and
    /// `webhookId`s older than the deduplication needs. State rows are kept. Returns the number
    /// of events deleted.
    async fn prune(&self, before: SystemTime, dedup_window: Duration) -> Result<u64, StoreError>;
}

/// What is remembered between events: a contact's tags and its opportunities' stages, the
/// follower list GoHighLevel last returned, and the locations whose token was refused.
#[async_trait]
pub trait ContactState: Send + Sync + std::fmt::Debug {
    /// What earlier events said about this contact and opportunity.
    async fn previous_state(
        &self,
        location: &LocationId,
        contact: &ContactId,
        opportunity: Option<&OpportunityId>,
    ) -> Result<PreviousState, StoreError>;

    /// The contact's follower list as GoHighLevel last returned it, if seen after `since`.
    async fn known_followers(
        &self,
        location: &LocationId,
        contact: &ContactId,
        since: SystemTime,
    ) -> Result<Option<Vec<crate::model::ids::UserId>>, StoreError>;

    /// Remembers the follower list a followers call returned. With `holder`, `(owner, event
    /// id)`, only while that lease is live: a worker whose lease lapsed (another one took the
    /// contact over and may have recorded a newer list) must not overwrite it. Returns whether
    /// it was written.
    async fn set_known_followers(
        &self,
        location: &LocationId,
        contact: &ContactId,
        followers: &[crate::model::ids::UserId],
        holder: Option<(&str, i64)>,
    ) -> Result<bool, StoreError>;

    /// Forgets what is remembered of a record deleted in GoHighLevel: with `opportunity`,
    /// that opportunity's stage; without, the contact's tags, its known followers and the
    /// stages of its opportunities (those its stored events name). History stays.
    async fn forget(
        &self,
        location: &LocationId,
        contact: &ContactId,
        opportunity: Option<&OpportunityId>,
    ) -> Result<(), StoreError>;

    /// The ownership ledger of a contact: the rows autofollow keeps (`removed` false), or every
    /// row including ended ones.
    async fn owned(
        &self,
        location: &LocationId,
        contact: &ContactId,
        removed: bool,
    ) -> Result<Vec<Owned>, StoreError>;

    /// The bodies of the contact's latest events stored before event `before` (newest first,
    /// at most `limit`; tasks left out): the latest state `reapply` evaluates again.
    async fn latest_events(
        &self,
        location: &LocationId,
        contact: &ContactId,
        before: i64,
        limit: u32,
    ) -> Result<Vec<(BodyKind, String)>, StoreError>;

    /// Every contact autofollow knows, in one location or all: those its events name and
    /// those its ownership ledger has, in (location, contact) order.
    async fn known_contacts(
        &self,
        location: Option<&LocationId>,
    ) -> Result<Vec<(LocationId, ContactId)>, StoreError>;

    /// The contacts whose ownership ledger has rows in `scope` (added or ended by the rule,
    /// the event, or since the moment), in one location or all.
    async fn ledger_contacts(
        &self,
        location: Option<&LocationId>,
        scope: &UndoScope,
    ) -> Result<Vec<(LocationId, ContactId)>, StoreError>;

    /// Up to `limit` contacts autofollow keeps followers on whose followers drift repair has
    /// not read since `since` (unix ms) and has no read waiting for, in (location, contact)
    /// order.
    async fn stale_contacts(
        &self,
        since: i64,
        limit: u32,
    ) -> Result<Vec<(LocationId, ContactId)>, StoreError>;

    /// Records that GoHighLevel refused this location's token (identified by `fingerprint`).
    async fn mark_token_failing(
        &self,
        location: &LocationId,
        fingerprint: &str,
        error: &str,
    ) -> Result<(), StoreError>;

    /// The fingerprint of the refused token, when the location's token is marked failing.
    async fn token_failing(&self, location: &LocationId) -> Result<Option<String>, StoreError>;

    /// What the worker reads of a contact before deciding its events, in one read.
    async fn contact_snapshot(
        &self,
        location: &LocationId,
        contact: &ContactId,
    ) -> Result<ContactSnapshot, StoreError>;

    /// Every location marked failing, with the refused token's fingerprint.
    async fn token_failures(&self) -> Result<Vec<(LocationId, String)>, StoreError>;
}

/// Whether an installation is a location's or a company's (agency's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InstallKind {
    Location,
    Company,
}

/// Where an installation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InstallState {
    /// Its tokens are used.
    Active,
    /// GoHighLevel refused its refresh token: its location's work is parked until the app is
    /// installed again.
    Reauthorize,
    /// The app was uninstalled: tokens deleted, its events are not processed.
    Uninstalled,
}

impl InstallKind {
    pub fn as_str(self) -> &'static str {
        match self {
            InstallKind::Location => "location",
            InstallKind::Company => "company",
        }
    }
}

impl InstallState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstallState::Active => "active",
            InstallState::Reauthorize => "reauthorize",
            InstallState::Uninstalled => "uninstalled",
        }
    }
}

impl std::str::FromStr for InstallKind {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s {
            "location" => Ok(InstallKind::Location),
            "company" => Ok(InstallKind::Company),
            _ => Err(StoreError::Corrupt(format!("installation kind {s:?}"))),
        }
    }
}

impl std::str::FromStr for InstallState {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s {
            "active" => Ok(InstallState::Active),
            "reauthorize" => Ok(InstallState::Reauthorize),
            "uninstalled" => Ok(InstallState::Uninstalled),
            _ => Err(StoreError::Corrupt(format!("installation state {s:?}"))),
        }
    }
}

/// Tokens to write for an installation; the token strings are sealed (`seal::Sealer`) by the
/// caller: the store never sees a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallTokens {
    pub id: String,
    pub kind: InstallKind,
    pub company_id: Option<String>,
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
    pub scopes: String,
    pub issued_at: Option<SystemTime>,
    pub expires_at: Option<SystemTime>,
}

/// A stored installation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installation {
    pub tokens: InstallTokens,
    pub state: InstallState,
    pub problem: Option<String>,
    /// Grows with every change of its tokens or state.
    pub version: i64,
    /// Who holds the refresh lease, while it is live.
    pub refreshing: Option<String>,
    pub updated_at: SystemTime,
}

/// GoHighLevel Marketplace app installations and their (sealed) OAuth tokens.
#[async_trait]
pub trait Installations: Send + Sync + std::fmt::Debug {
    /// Writes an installation's tokens: it becomes active, its version grows, the refresh
    /// lease is let go. With `holder`, only while that owner holds the refresh lease (a
    /// refresher whose lease lapsed must not overwrite a newer pair); returns whether written.
    async fn save_installation(
        &self,
        tokens: &InstallTokens,
        holder: Option<&str>,
    ) -> Result<bool, StoreError>;

    async fn installation(&self, id: &str) -> Result<Option<Installation>, StoreError>;

    /// Every installation, by id.
    async fn installations(&self) -> Result<Vec<Installation>, StoreError>;

    /// Takes the refresh lease of installation `id` for `owner`, if it is still at `version`
    /// and nobody else holds a live lease. Single-flight across tasks and replicas: a
    /// refresh token works once.
    async fn begin_refresh(
        &self,
        id: &str,
        owner: &str,
        version: i64,
        lease: Duration,
    ) -> Result<bool, StoreError>;

    /// Lets go of the refresh lease without changing the tokens (the refresh failed and may
    /// be tried again).
    async fn end_refresh(&self, id: &str, owner: &str) -> Result<(), StoreError>;

    /// Sets the installation's state (and why); `Uninstalled` also deletes its tokens. Its
    /// version grows. Returns whether it exists.
    async fn set_install_state(
        &self,
        id: &str,
        state: InstallState,
        problem: Option<&str>,
    ) -> Result<bool, StoreError>;
}

/// The whole contract a backend keeps. Split by concern so a feature touches one part; the
/// service holds an `Arc<dyn Store>`.
/// A backfill: a walk through one location's contacts and opportunities, queueing what the
/// rules want for each (see `worker::backfill`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Backfill {
    pub id: i64,
    pub location: LocationId,
    /// Unix ms: only records added since.
    pub since: Option<i64>,
    pub dry_run: bool,
    /// `contacts`, then `opportunities`.
    pub phase: String,
    /// Where the walk stands in its phase (the search's cursor, JSON); `None` at the start.
    pub cursor: Option<String>,
    /// `running`, `done` or `failed`.
    pub state: String,
    /// Records GoHighLevel reported (contacts and opportunities), as far as known.
    pub total: Option<i64>,
    pub seen: i64,
    /// Records whose followers change (would change, in a dry run).
    pub changed: i64,
    /// Tasks queued.
    pub queued: i64,
    /// Per rule and user, how many records gain or lose them (JSON).
    pub report: Option<String>,
    pub error: Option<String>,
    /// Unix ms.
    pub started_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

/// One page of a backfill, written together with the page's tasks.
#[derive(Clone, Debug, Default)]
pub struct BackfillStep {
    pub phase: String,
    pub cursor: Option<String>,
    pub total: Option<i64>,
    /// Added to the counts.
    pub seen: i64,
    pub changed: i64,
    /// Replaces the report.
    pub report: Option<String>,
    /// The walk is over: the backfill is done.
    pub done: bool,
}

/// Backfills and their progress.
#[async_trait]
pub trait Backfills: Send + Sync + std::fmt::Debug {
    /// Starts a backfill of `location`, or returns the one running for it.
    async fn start_backfill(
        &self,
        location: &LocationId,
        since: Option<i64>,
        dry_run: bool,
    ) -> Result<Backfill, StoreError>;

    async fn backfill(&self, id: i64) -> Result<Option<Backfill>, StoreError>;

    /// The latest backfills, newest first.
    async fn backfills(&self, limit: u32) -> Result<Vec<Backfill>, StoreError>;

    /// Leases a running backfill no live lease holds, oldest first.
    async fn claim_backfill(
        &self,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<Backfill>, StoreError>;

    /// Records a page (and queues its tasks) in one transaction, while `owner` holds the
    /// backfill, extending its lease; false when it does not hold it any more.
    async fn advance_backfill(
        &self,
        id: i64,
        owner: &str,
        lease: Duration,
        step: &BackfillStep,
        tasks: Vec<NewEvent>,
    ) -> Result<bool, StoreError>;

    /// Ends a backfill that cannot go on (`failed`, with why).
    async fn fail_backfill(&self, id: i64, owner: &str, error: &str) -> Result<bool, StoreError>;
}

/// A `backfills` row as both backends read it.
#[derive(FromRow)]
pub(crate) struct BackfillRow {
    id: i64,
    location_id: String,
    since: Option<i64>,
    dry_run: bool,
    phase: String,
    cursor: Option<String>,
    state: String,
    total: Option<i64>,
    seen: i64,
    changed: i64,
    queued: i64,
    report: Option<String>,
    error: Option<String>,
    started_at: i64,
    updated_at: i64,
    finished_at: Option<i64>,
}

/// The columns of [`BackfillRow`], for `SELECT`.
pub(crate) const BACKFILL_COLUMNS: &str = "id, location_id, since, dry_run, phase, cursor, state, total, seen, changed, queued, report, error, started_at, updated_at, finished_at";

impl BackfillRow {
    pub(crate) fn into_backfill(self) -> Result<Backfill, StoreError> {
        let location = LocationId::parse(&self.location_id)
            .map_err(|_| StoreError::Corrupt("backfills: location_id".into()))?;
        Ok(Backfill {
            id: self.id,
            location,
            since: self.since,
            dry_run: self.dry_run,
            phase: self.phase,
            cursor: self.cursor,
            state: self.state,
            total: self.total,
            seen: self.seen,
            changed: self.changed,
            queued: self.queued,
            report: self.report,
            error: self.error,
            started_at: self.started_at,
            updated_at: self.updated_at,
            finished_at: self.finished_at,
        })
    }
}

/// The turns a pool has handed one member in one location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolTurns {
    pub location: LocationId,
    pub pool: String,
    pub user: UserId,
    pub handed: u64,
}

/// A period a user is away, inclusive, set without editing rule files (`autofollow away`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwayPeriod {
    pub user: UserId,
    pub from: chrono::NaiveDate,
    pub to: chrono::NaiveDate,
}

impl AwayPeriod {
    /// A period from dates as typed (`YYYY-MM-DD`, inclusive), or why not.
    pub fn parse(user: UserId, from: &str, to: &str) -> Result<AwayPeriod, String> {
        let date = |flag: &str, text: &str| {
            chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
                .map_err(|_| format!("{flag}: {text:?} is not a date (YYYY-MM-DD)"))
        };
        let (from, to) = (date("from", from)?, date("to", to)?);
        if to < from {
            return Err(format!("to {to} is before from {from}"));
        }
        Ok(AwayPeriod { user, from, to })
    }
}

/// Pools' turns, kept so the sequence survives restarts and is shared by replicas, and the
/// away periods set at run time.
#[async_trait]
pub trait Pools: Send + Sync + std::fmt::Debug {
    /// The member of `pool` dealt to `contact` in `location`: the one it was dealt before
    /// while that one is among `members` (those away already left out), else the pool's
    /// next turn by [`smooth_pick`] over the weights kept here, counted and remembered for
    /// the contact; `None` when `members` is empty. Atomic: concurrent callers (replicas)
    /// never get the same turn.
    async fn take_turn(
        &self,
        (location, contact): (&LocationId, &ContactId),
        pool: &str,
        members: &[PoolMember],
    ) -> Result<Option<UserId>, StoreError>;

    /// Where the pool's sequence stands in the location and what the contact was dealt,
    /// changing nothing: a preview's [`crate::rules::deal::Dealer`] goes on from it.
    async fn pool_state(
        &self,
        at: (&LocationId, &ContactId),
        pool: &str,
    ) -> Result<PoolState, StoreError>;

    /// The turns handed out, per location, pool and member.
    async fn pool_turns(&self) -> Result<Vec<PoolTurns>, StoreError>;

    /// Records an away period (the same one twice is kept once).
    async fn set_away(&self, period: &AwayPeriod) -> Result<(), StoreError>;

    /// Every away period recorded, by user and start.
    async fn away_periods(&self) -> Result<Vec<AwayPeriod>, StoreError>;

    /// Forgets a user's away periods; how many there were.
    async fn clear_away(&self, user: &UserId) -> Result<u64, StoreError>;
}

/// The turns handed out, as both backends read them (see [`pool_turns`]).
pub(crate) const SELECT_POOL_TURNS: &str =
    "SELECT location_id, pool, user_id, handed FROM pool_turns ORDER BY location_id, pool, user_id";
/// The away periods, as both backends read them (see [`away_periods`]).
pub(crate) const SELECT_AWAY: &str =
    "SELECT user_id, starts_on, ends_on FROM away ORDER BY user_id, starts_on, ends_on";

/// `pool_turns` rows (location, pool, user, handed) as both backends read them.
pub(crate) fn pool_turns(
    rows: Vec<(String, String, String, i64)>,
) -> Result<Vec<PoolTurns>, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("pool_turns: {what}"));
    rows.into_iter()
        .map(|(location, pool, user, handed)| {
            Ok(PoolTurns {
                location: LocationId::parse(&location).map_err(|_| corrupt("location_id"))?,
                pool,
                user: UserId::parse(&user).map_err(|_| corrupt("user_id"))?,
                handed: u64::try_from(handed).unwrap_or(0),
            })
        })
        .collect()
}

/// How long the away periods read are used before they are read again: each pool pick needs
/// them, and they change rarely. A period set through the same store is seen at once; one
/// set by another process (the CLI, another replica) within this.
pub const AWAY_FRESH: Duration = Duration::from_secs(10);

/// The away periods as last read, for [`AWAY_FRESH`]. Setting or clearing one through the
/// store drops them (a read that began before the change is not kept).
/// Clones of a store share it.
#[derive(Clone, Debug, Default)]
pub(crate) struct AwayCache(std::sync::Arc<std::sync::Mutex<AwayKept>>);

/// The generation (one more at each change) and the periods read, when.
type AwayKept = (u64, Option<(std::time::Instant, Vec<AwayPeriod>)>);

impl AwayCache {
    /// The periods kept while fresh, else `read` and kept (unless a change came meanwhile).
    pub(crate) async fn through<F>(&self, read: F) -> Result<Vec<AwayPeriod>, StoreError>
    where
        F: std::future::Future<Output = Result<Vec<AwayPeriod>, StoreError>>,
    {
        let generation = match self.get() {
            Ok(periods) => return Ok(periods),
            Err(generation) => generation,
        };
        let periods = read.await?;
        self.keep(generation, &periods);
        Ok(periods)
    }

    /// The periods while fresh; else the generation to [`AwayCache::keep`] a read under.
    fn get(&self) -> Result<Vec<AwayPeriod>, u64> {
        let held = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &held.1 {
            Some((at, periods)) if at.elapsed() < AWAY_FRESH => Ok(periods.clone()),
            _ => Err(held.0),
        }
    }

    /// Keeps `periods`, read at `generation`, unless a change came since.
    fn keep(&self, generation: u64, periods: &[AwayPeriod]) {
        let mut held = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if held.0 == generation {
            held.1 = Some((std::time::Instant::now(), periods.to_vec()));
        }
    }

    /// Drops what is kept: a period was set or cleared.
    pub(crate) fn forget(&self) {
        let mut held = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *held = (held.0 + 1, None);
    }
}

/// A pool's state as both backends read it: the contact's pick and the `pool_turns` rows
/// (user, current).
pub(crate) fn pool_state(
    pick: Option<String>,
    rows: Vec<(String, i64)>,
) -> Result<PoolState, StoreError> {
    let user = |u: &str| UserId::parse(u).map_err(|_| StoreError::Corrupt("pool: user_id".into()));
    Ok(PoolState {
        pick: pick.as_deref().map(user).transpose()?,
        current: (rows.into_iter())
            .map(|(u, current)| Ok((user(&u)?, current)))
            .collect::<Result<_, StoreError>>()?,
    })
}

/// `away` rows (user, from, to) as both backends read them.
pub(crate) fn away_periods(
    rows: Vec<(String, String, String)>,
) -> Result<Vec<AwayPeriod>, StoreError> {
    rows.into_iter()
        .map(|(user, from, to)| {
            Ok(AwayPeriod {
                user: UserId::parse(&user)
                    .map_err(|_| StoreError::Corrupt("away: user_id".into()))?,
                from: stored_date(&from)?,
                to: stored_date(&to)?,
            })
        })
        .collect()
}

/// Parses a stored date (`YYYY-MM-DD`).
pub(crate) fn stored_date(text: &str) -> Result<chrono::NaiveDate, StoreError> {
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| StoreError::Corrupt(format!("away: date {text:?}")))
}

#[async_trait]
pub trait Store:
    Queue + History + ContactState + Installations + Backfills + Pools + 'static
{
    /// Whether the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// The worker's claim: up to `limit` contacts' work, each its oldest due event (as
    /// [`Queue::claim_within`] picks them) with its later due events (as
    /// [`Queue::claim_rest`], at most `batch` in all) and what is known of the contact
    /// ([`ContactState::contact_snapshot`]). A backend does it in as few round trips as it
    /// can; this is the plain sequence.
    async fn claim_groups(
        &self,
        owner: &str,
        limit: u32,
        batch: u32,
        lease: Duration,
        settle_max: Option<Duration>,
    ) -> Result<Vec<ClaimedGroup>, StoreError> {
        let heads = self.claim_within(owner, limit, lease, settle_max).await?;
        let mut groups = Vec::with_capacity(heads.len());
        for head in heads {
            let rest = self
                .claim_rest(owner, &head, batch.saturating_sub(1), lease)
                .await?;
            let contact = match (
                LocationId::parse(&head.location_id),
                ContactId::parse(&head.contact_id),
            ) {
                (Ok(l), Ok(c)) => self.contact_snapshot(&l, &c).await?,
                // A row stored before ids were checked: its events fail on their own.
                _ => ContactSnapshot::default(),
            };
            groups.push(ClaimedGroup::new(head, rest, contact));
        }
        Ok(groups)
    }
}

/// Whether `url` selects the PostgreSQL backend.
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Opens (creating and migrating) the store `url` selects: `sqlite://PATH` or `postgres://…`.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    Ok(if is_postgres(url) {
        std::sync::Arc::new(postgres::PgStore::open(url).await?)
    } else {
        std::sync::Arc::new(sqlite::SqliteStore::open(url).await?)
    })
}

/// Opens an existing store for operator commands (a SQLite file is not created).
pub async fn open_existing(url: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    Ok(if is_postgres(url) {
        std::sync::Arc::new(postgres::PgStore::open(url).await?)
    } else {
        std::sync::Arc::new(sqlite::SqliteStore::open_existing(url).await?)
    })
}

/// Events received at or before this (Unix ms) are no longer held back by their contact's
/// newer webhooks (`settle_max` before `now`); without a maximum, none is.
pub(crate) fn settled_by(now: i64, settle_max: Option<Duration>) -> i64 {
    settle_max.map_or(i64::MIN, |max| {
        now.saturating_sub(i64::try_from(max.as_millis()).unwrap_or(i64::MAX))
    })
}

/// When a lease taken at `now` (unix ms) expires.
pub(crate) fn lease_until(now: i64, lease: Duration) -> i64 {
    now + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2)
}

/// The ids of `rows` that have an id's shape. Ids are checked before they are stored, but rows
/// from before that check may hold others: such a location never reaches GoHighLevel (its
/// events fail when their bodies are parsed again), so it is left out rather than failing
/// every caller.
pub(crate) fn stored_ids<T, R>(rows: impl IntoIterator<Item = (String, R)>) -> Vec<(T, R)>
where
    T: std::str::FromStr<Err = crate::model::ids::InvalidId>,
{
    rows.into_iter()
        .filter_map(|(id, rest)| Some((id.parse().ok()?, rest)))
        .collect()
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The columns of a claimed event, as both backends return them.
#[derive(sqlx::FromRow)]
pub(crate) struct ClaimedRow {
    id: i64,
    kind: String,
    location_id: String,
    contact_id: String,
    body: String,
    attempts: i64,
    received_at: i64,
}

/// Claimed rows (from `RETURNING`, in no particular order), oldest first.
pub(crate) fn claimed_in_order<R>(rows: &[R], owner: &str) -> Result<Vec<Claimed>, StoreError>
where
    R: sqlx::Row,
    for<'r> ClaimedRow: sqlx::FromRow<'r, R>,
{
    let mut claimed = rows
        .iter()
        .map(|r| {
            let c = ClaimedRow::from_row(r)?;
            Ok(Claimed {
                id: c.id,
                kind: BodyKind::parse(&c.kind),
                location_id: c.location_id,
                contact_id: c.contact_id,
                body: c.body,
                attempt: u32::try_from(c.attempts).unwrap_or(u32::MAX),
                received_at: from_millis(c.received_at),
                lease_owner: owner.to_owned(),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    claimed.sort_by_key(|c| c.id);
    Ok(claimed)
}

/// The columns of an event record.
#[derive(sqlx::FromRow)]
pub(crate) struct RecordRow {
    id: i64,
    event_type: String,
    location_id: String,
    contact_id: String,
    status: String,
    attempts: i64,
    last_error: Option<String>,
}

pub(crate) fn record<R>(r: &R) -> Result<EventRecord, StoreError>
where
    R: sqlx::Row,
    for<'r> RecordRow: sqlx::FromRow<'r, R>,
{
    let r = RecordRow::from_row(r)?;
    Ok(EventRecord {
        id: r.id,
        event_type: r.event_type,
        location_id: r.location_id,
        contact_id: r.contact_id,
        status: EventStatus::parse(&r.status),
        attempts: u32::try_from(r.attempts).unwrap_or(u32::MAX),
        last_error: r.last_error,
    })
}

/// The columns of a decision (its lists are JSON text).
#[derive(sqlx::FromRow)]
pub(crate) struct DecisionRow {
    pub(crate) attempt: i64,
    pub(crate) matched: String,
    pub(crate) plan: String,
    pub(crate) calls: String,
    pub(crate) outcome: String,
    pub(crate) error: Option<String>,
    pub(crate) dry_run: bool,
    pub(crate) batch: String,
    pub(crate) rules_version: String,
}

impl DecisionRow {
    /// The status the decision's outcome leaves its event in.
    pub(crate) fn status(&self) -> &'static str {
        Outcome::parse(&self.outcome).map_or("pending", |o| o.status().as_str())
    }

    /// The decision as it is stored.
    pub(crate) fn new(d: &Decision) -> Result<DecisionRow, StoreError> {
        Ok(DecisionRow {
            attempt: i64::from(d.attempt),
            matched: to_json(&d.matched)?,
            plan: to_json(&d.plan)?,
            calls: to_json(&d.calls)?,
            outcome: d.outcome.as_str().to_owned(),
            error: d.error.clone(),
            dry_run: d.dry_run,
            batch: to_json(&d.batch)?,
            rules_version: d.rules_version.clone(),
        })
    }
}

/// Listed events (`rows`, with `received_at`) with their latest decisions (`latest`, one row
/// per event that has any, with `event_id`).
pub(crate) fn summaries<R>(rows: &[R], latest: &[R]) -> Result<Vec<EventSummary>, StoreError>
where
    R: sqlx::Row,
    for<'r> RecordRow: sqlx::FromRow<'r, R>,
    for<'r> DecisionRow: sqlx::FromRow<'r, R>,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'q> i64: sqlx::Decode<'q, R::Database> + sqlx::Type<R::Database>,
{
    let mut last: std::collections::HashMap<i64, Decision> = latest
        .iter()
        .map(|r| Ok((r.try_get::<i64, _>("event_id")?, decision(r)?)))
        .collect::<Result<_, StoreError>>()?;
    rows.iter()
        .map(|r| {
            let event = record(r)?;
            Ok(EventSummary {
                last_decision: last.remove(&event.id),
                received_at: r.try_get("received_at")?,
                event,
            })
        })
        .collect()
}

pub(crate) fn decision<R>(r: &R) -> Result<Decision, StoreError>
where
    R: sqlx::Row,
    for<'r> DecisionRow: sqlx::FromRow<'r, R>,
{
    let r = DecisionRow::from_row(r)?;
    Ok(Decision {
        attempt: u32::try_from(r.attempt).unwrap_or(u32::MAX),
        matched: from_json(&r.matched)?,
        plan: from_json(&r.plan)?,
        calls: from_json(&r.calls)?,
        // Every outcome ever stored reads back; an unknown one as failed.
        outcome: Outcome::parse(&r.outcome).unwrap_or(Outcome::Failed),
        error: r.error,
        dry_run: r.dry_run,
        batch: from_json(&r.batch)?,
        rules_version: r.rules_version,
    })
}

pub(crate) fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(crate) fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// An `owned_followers` row as both backends read it.
#[derive(FromRow)]
pub(crate) struct OwnedRow {
    user_id: String,
    rule: String,
    follow: String,
    subject: Option<String>,
    rules_version: String,
    event_id: i64,
    added_at: i64,
    removed_at: Option<i64>,
    removed_event_id: Option<i64>,
    removed_by: Option<String>,
}

/// The columns of [`OwnedRow`], for `SELECT`.
pub(crate) const OWNED_COLUMNS: &str = "user_id, rule, follow, subject, rules_version, event_id, added_at, removed_at, removed_event_id, removed_by";

impl OwnedRow {
    pub(crate) fn into_owned(self) -> Result<Owned, StoreError> {
        let user = UserId::parse(&self.user_id)
            .map_err(|_| StoreError::Corrupt("owned_followers: user_id".into()))?;
        Ok(Owned {
            user,
            rule: self.rule,
            follow: Follow::parse(&self.follow),
            subject: self.subject.and_then(|o| OpportunityId::parse(&o).ok()),
            rules_version: self.rules_version,
            event_id: self.event_id,
            added_at: self.added_at,
            removed_at: self.removed_at,
            removed_event_id: self.removed_event_id,
            removed_by: self.removed_by,
        })
    }
}

/// An [`UndoScope`] as the ledger query binds it: (rule, event id, since in unix ms).
pub(crate) fn scope_binds(scope: &UndoScope) -> (Option<&str>, Option<i64>, Option<i64>) {
    match scope {
        UndoScope::Rule(rule) => (Some(rule.as_str()), None, None),
        UndoScope::Event(id) => (None, Some(*id), None),
        UndoScope::Since(ms) => (None, None, Some(*ms)),
    }
}

/// (location, contact) rows read back as ids.
pub(crate) fn contact_pairs(
    rows: Vec<(String, String)>,
) -> Result<Vec<(LocationId, ContactId)>, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("stored {what} id"));
    rows.into_iter()
        .map(|(l, c)| {
            let location = LocationId::parse(&l).map_err(|_| corrupt("location"))?;
            let contact = ContactId::parse(&c).map_err(|_| corrupt("contact"))?;
            Ok((location, contact))
        })
        .collect()
}

/// An `installations` row as both backends read it.
#[derive(FromRow)]
pub(crate) struct InstallationRow {
    id: String,
    kind: String,
    company_id: Option<String>,
    access_token: Option<String>,
    refresh_token: Option<String>,
    scopes: String,
    issued_at: Option<i64>,
    expires_at: Option<i64>,
    state: String,
    problem: Option<String>,
    version: i64,
    refresh_owner: Option<String>,
    refresh_until: Option<i64>,
    updated_at: i64,
}

/// The columns of [`InstallationRow`], for `SELECT`.
pub(crate) const INSTALLATION_COLUMNS: &str = "id, kind, company_id, access_token, refresh_token, scopes, issued_at, expires_at, state, problem, version, refresh_owner, refresh_until, updated_at";

impl InstallationRow {
    pub(crate) fn into_installation(self, now: i64) -> Result<Installation, StoreError> {
        Ok(Installation {
            tokens: InstallTokens {
                id: self.id,
                kind: self.kind.parse()?,
                company_id: self.company_id,
                access_token: self.access_token,
                refresh_token: self.refresh_token,
                scopes: self.scopes,
                issued_at: self.issued_at.map(from_millis),
                expires_at: self.expires_at.map(from_millis),
            },
            state: self.state.parse()?,
            problem: self.problem,
            version: self.version,
            refreshing: self
                .refresh_owner
                .filter(|_| self.refresh_until.is_some_and(|u| u > now)),
            updated_at: from_millis(self.updated_at),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_hold_that_starts_or_grows_by_more_than_half_a_second_moves_the_queue() {
        let now = 1_000_000;
        // No hold, or one that has ended: a wait for the next token only holds.
        assert!(!moves_the_queue(None, now, now + 100));
        assert!(!moves_the_queue(
            Some(now - 5_000),
            now,
            now + MOVE_AFTER_MS
        ));
        // A 429's `Retry-After: 1`, or a spent daily quota, moves the queue once ...
        assert!(moves_the_queue(None, now, now + 1_000));
        assert!(moves_the_queue(Some(now - 5_000), now, now + 3_600_000));
        // ... and not again for every other event in flight that meets the same hold.
        assert!(!moves_the_queue(Some(now + 1_000), now + 3, now + 1_002));
        assert!(!moves_the_queue(Some(now + 1_000), now, now + 200));
        // A hold that grows a lot moves what arrived since.
        assert!(moves_the_queue(Some(now + 1_000), now, now + 60_000));
    }
}

#[cfg(test)]
mod away_cache {
    use super::*;

    fn period(day: u32) -> AwayPeriod {
        let date = chrono::NaiveDate::from_ymd_opt(2026, 12, day).unwrap();
        AwayPeriod {
            user: UserId::parse("aaaaaaaaaaaaaaaaaaaa").unwrap(),
            from: date,
            to: date,
        }
    }

    /// A read kept is used; a change drops it, and a read that began before the change is
    /// not kept (it may miss the change).
    #[test]
    fn a_change_drops_what_is_kept_and_refuses_a_read_from_before_it() {
        let cache = AwayCache::default();
        let generation = cache.get().unwrap_err();
        cache.keep(generation, &[period(1)]);
        assert_eq!(cache.get(), Ok(vec![period(1)]));
        let before = cache.get().map_or_else(|g| g, |_| generation);
        cache.forget();
        assert!(cache.get().is_err());
        cache.keep(before, &[period(1)]);
        assert!(
            cache.get().is_err(),
            "a read from before the change is not kept"
        );
        let after = cache.get().unwrap_err();
        cache.keep(after, &[period(2)]);
        assert_eq!(cache.get(), Ok(vec![period(2)]));
    }
}

//! A [`Store`] around another, with a [`Hook`] called before and after every operation:
//! the service times each operation into its metrics this way, whatever the backend, and
//! tests inject faults.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;

use super::{
    Activity, AwayPeriod, Backfill, BackfillStep, Backfills, Claimed, ClaimedGroup,
    ContactSnapshot, ContactState, Erased, EventFilter, EventRecord, EventSummary, History,
    Inserted, InstallState, InstallTokens, Installation, Installations, NewEvent, NewState, Owned,
    PoolMember, PoolState, PoolTurns, Pools, Queue, QueueStats, Store, StoreError, StoredBody,
};
use crate::model::event::BodyKind;
use crate::model::ids::{ContactId, LocationId, OpportunityId, UserId};
use crate::model::plan::PreviousState;
use crate::model::record::Decision;
use crate::model::task::UndoScope;

/// Called around every operation of a [`Wrapped`] store.
pub trait Hook: Send + Sync + std::fmt::Debug + 'static {
    /// Before the operation (named as the [`Store`] method); an error fails it without
    /// reaching the inner store.
    fn before(&self, _operation: &'static str) -> Result<(), StoreError> {
        Ok(())
    }

    /// After the operation, with how long it took.
    fn after(&self, _operation: &'static str, _took: Duration) {}
}

/// Store operation latency into `autofollow_store_operation_duration_seconds`.
impl Hook for Arc<crate::metrics::Metrics> {
    fn after(&self, operation: &'static str, took: Duration) {
        self.store_op(operation, took);
    }
}

#[derive(Debug)]
pub struct Wrapped<H> {
    inner: Arc<dyn Store>,
    hook: H,
}

impl<H: Hook> Wrapped<H> {
    pub fn new(inner: Arc<dyn Store>, hook: H) -> Wrapped<H> {
        Wrapped { inner, hook }
    }
}

/// Implements a store trait for [`Wrapped`]: each listed method calls the hook around the
/// inner store's method.
/// An operation's name for the hook (the `operation` label of the store metrics): the method's,
/// or the one given after `as`.
macro_rules! operation {
    ($name:ident) => {
        stringify!($name)
    };
    ($name:ident $label:literal) => {
        $label
    };
}

macro_rules! wrapped {
    ($trait:ident { $( fn $name:ident(&self $(, $arg:ident : $ty:ty)*) -> $ret:ty $(as $label:literal)?; )* }) => {
        #[async_trait]
        impl<H: Hook> $trait for Wrapped<H> {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    let operation = operation!($name $($label)?);
                    self.hook.before(operation)?;
                    let start = Instant::now();
                    let out = self.inner.$name($($arg),*).await;
                    self.hook.after(operation, start.elapsed());
                    out
                }
            )*
        }
    };
}

wrapped!(Queue {
    fn location_queue(&self, location: &LocationId) -> Result<(u64, u64), StoreError>;
    fn insert_event(&self, event: NewEvent, dedup_window: Duration) -> Result<Inserted, StoreError>;
    fn claim_within(&self, owner: &str, limit: u32, lease: Duration, settle_max: Option<Duration>) -> Result<Vec<Claimed>, StoreError> as "claim";
    fn claim_rest(&self, owner: &str, first: &Claimed, limit: u32, lease: Duration) -> Result<Vec<Claimed>, StoreError>;
    fn finish(&self, event: &Claimed, decision: &Decision, state: &NewState) -> Result<bool, StoreError>;
    fn finish_all(&self, events: &[(&Claimed, &Decision, &NewState)]) -> Result<bool, StoreError>;
    fn retry_at(&self, event: &Claimed, at: SystemTime, decision: &Decision) -> Result<bool, StoreError>;
    fn defer(&self, event: &Claimed, at: SystemTime) -> Result<bool, StoreError>;
    fn extend(&self, owner: &str, ids: &[i64], lease: Duration) -> Result<u64, StoreError>;
    fn release(&self, owner: &str) -> Result<u64, StoreError>;
    fn release_all(&self) -> Result<u64, StoreError>;
    fn replay(&self, ids: &[i64]) -> Result<u64, StoreError>;
    fn park(&self, event: &Claimed, decision: &Decision) -> Result<bool, StoreError>;
    fn parked_locations(&self) -> Result<Vec<LocationId>, StoreError>;
    fn resume_location(&self, location: &LocationId) -> Result<u64, StoreError>;
    fn pending(&self) -> Result<u64, StoreError>;
    fn queue_stats(&self) -> Result<QueueStats, StoreError>;
});

wrapped!(History {
    fn received_since(&self, since: i64, location: Option<&LocationId>, limit: u32) -> Result<Vec<(i64, BodyKind, String)>, StoreError>;
    fn event(&self, id: i64) -> Result<Option<EventRecord>, StoreError>;
    fn decisions(&self, event_id: i64) -> Result<Vec<Decision>, StoreError>;
    fn event_body(&self, id: i64) -> Result<Option<StoredBody>, StoreError>;
    fn activity(&self, since: i64, bucket: i64) -> Result<Vec<Activity>, StoreError>;
    fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventSummary>, StoreError>;
    fn history(&self, contact: &ContactId) -> Result<Vec<(EventSummary, Vec<Decision>)>, StoreError>;
    fn erase_contact(&self, contact: &ContactId) -> Result<Erased, StoreError>;
    fn prune(&self, before: SystemTime, dedup_window: Duration) -> Result<u64, StoreError>;
});

wrapped!(ContactState {
    fn previous_state(&self, location: &LocationId, contact: &ContactId, opportunity: Option<&OpportunityId>) -> Result<PreviousState, StoreError>;
    fn known_followers(&self, location: &LocationId, contact: &ContactId, since: SystemTime) -> Result<Option<Vec<UserId>>, StoreError>;
    fn set_known_followers(&self, location: &LocationId, contact: &ContactId, followers: &[UserId], holder: Option<(&str, i64)>) -> Result<bool, StoreError>;
    fn forget(&self, location: &LocationId, contact: &ContactId, opportunity: Option<&OpportunityId>) -> Result<(), StoreError>;
    fn owned(&self, location: &LocationId, contact: &ContactId, removed: bool) -> Result<Vec<Owned>, StoreError>;
    fn latest_events(&self, location: &LocationId, contact: &ContactId, before: i64, limit: u32) -> Result<Vec<(BodyKind, String)>, StoreError>;
    fn stale_contacts(&self, since: i64, limit: u32) -> Result<Vec<(LocationId, ContactId)>, StoreError>;
    fn known_contacts(&self, location: Option<&LocationId>) -> Result<Vec<(LocationId, ContactId)>, StoreError>;
    fn ledger_contacts(&self, location: Option<&LocationId>, scope: &UndoScope) -> Result<Vec<(LocationId, ContactId)>, StoreError>;
    fn mark_token_failing(&self, location: &LocationId, fingerprint: &str, error: &str) -> Result<(), StoreError>;
    fn token_failing(&self, location: &LocationId) -> Result<Option<String>, StoreError>;
    fn token_failures(&self) -> Result<Vec<(LocationId, String)>, StoreError>;
    fn contact_snapshot(&self, location: &LocationId, contact: &ContactId) -> Result<ContactSnapshot, StoreError>;
});

wrapped!(Installations {
    fn save_installation(&self, tokens: &InstallTokens, holder: Option<&str>) -> Result<bool, StoreError>;
    fn installation(&self, id: &str) -> Result<Option<Installation>, StoreError>;
    fn installations(&self) -> Result<Vec<Installation>, StoreError>;
    fn begin_refresh(&self, id: &str, owner: &str, version: i64, lease: Duration) -> Result<bool, StoreError>;
    fn end_refresh(&self, id: &str, owner: &str) -> Result<(), StoreError>;
    fn set_install_state(&self, id: &str, state: InstallState, problem: Option<&str>) -> Result<bool, StoreError>;
});

wrapped!(Backfills {
    fn start_backfill(&self, location: &LocationId, since: Option<i64>, dry_run: bool) -> Result<Backfill, StoreError>;
    fn backfill(&self, id: i64) -> Result<Option<Backfill>, StoreError>;
    fn backfills(&self, limit: u32) -> Result<Vec<Backfill>, StoreError>;
    fn claim_backfill(&self, owner: &str, lease: Duration) -> Result<Option<Backfill>, StoreError>;
    fn advance_backfill(&self, id: i64, owner: &str, lease: Duration, step: &BackfillStep, tasks: Vec<NewEvent>) -> Result<bool, StoreError>;
    fn fail_backfill(&self, id: i64, owner: &str, error: &str) -> Result<bool, StoreError>;
});

wrapped!(Pools {
    fn take_turn(&self, at: (&LocationId, &ContactId), pool: &str, members: &[PoolMember]) -> Result<Option<UserId>, StoreError>;
    fn pool_state(&self, at: (&LocationId, &ContactId), pool: &str) -> Result<PoolState, StoreError>;
    fn pool_turns(&self) -> Result<Vec<PoolTurns>, StoreError>;
    fn set_away(&self, period: &AwayPeriod) -> Result<(), StoreError>;
    fn away_periods(&self) -> Result<Vec<AwayPeriod>, StoreError>;
    fn clear_away(&self, user: &UserId) -> Result<u64, StoreError>;
});

wrapped!(Store {
    fn ping(&self) -> Result<(), StoreError>;
    fn claim_groups(&self, owner: &str, limit: u32, batch: u32, lease: Duration, settle_max: Option<Duration>) -> Result<Vec<ClaimedGroup>, StoreError> as "claim";
});

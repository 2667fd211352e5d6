//! Drift repair (`AUTOFOLLOW_RECONCILE_EVERY`): people change followers by hand, so the
//! followers of each contact autofollow added someone to are read again from GoHighLevel
//! now and then, and brought to what the rules and the ledger want. The rounds queue a
//! `Reconcile` task per contact; the task is decided in the contact's queue like any other.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::decide::{Decided, Made, Step1};
use super::{Ending, Worker};
use crate::model::ids::LocationId;
use crate::model::task::{Task, TaskBody};
use crate::store::StoreError;

impl Worker {
    /// Drift repair, when `AUTOFOLLOW_RECONCILE_EVERY` is set: every tenth of the period (at
    /// least every 100 ms, at most every minute), queues a `Reconcile` task for up to 100
    /// contacts not read for a period, skipping locations with webhooks due (live first).
    pub async fn run_reconcile(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let Some(every) = self.options.reconcile_every else {
            return;
        };
        let tick = (every / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
        loop {
            tokio::select! {
                () = tokio::time::sleep(tick) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            if let Err(e) = self.reconcile_round(every).await {
                tracing::warn!(error = %e, "drift repair: cannot queue reads; trying again");
            }
        }
    }

    async fn reconcile_round(&self, every: Duration) -> Result<(), StoreError> {
        let since = crate::store::millis(SystemTime::now())
            - i64::try_from(every.as_millis()).unwrap_or(i64::MAX / 2);
        let mut busy: Vec<LocationId> = Vec::new();
        for (location, contact) in self.store.stale_contacts(since, 100).await? {
            if busy.contains(&location) {
                continue;
            }
            if self.store.location_queue(&location).await?.0 > 0 {
                busy.push(location);
                continue;
            }
            let task = TaskBody {
                task: Task::Reconcile,
                location_id: location,
                contact_id: contact,
            };
            self.queue(&task).await?;
        }
        Ok(())
    }

    /// Drift repair: the followers GoHighLevel lists now confirm the ledger (a follower
    /// autofollow added that is gone was removed by hand: its rows end, and it is not added
    /// back), then reapply against them. Nothing without a token (a dry run) or a list.
    pub(super) async fn reconciled(
        &self,
        decided: &mut Decided,
        id: i64,
        at: &Step1<'_>,
    ) -> Result<Result<Option<Made>, Ending>, StoreError> {
        let Some(token) = at.token else {
            return Ok(Ok(None));
        };
        let (location, contact) = (&decided.location, &decided.contact);
        let read = self
            .ghl
            .contact_followers(&token.secret, location, contact)
            .await;
        let following = match read {
            Ok(Some(following)) => following,
            Ok(None) => return Ok(Ok(None)),
            Err(e) => return Ok(Err(Ending::from_lookup(e))),
        };
        // The list on record says so too, so a later add is not skipped as needless (only
        // under this task's lease: a preview records nothing).
        let holder = Some((self.owner.as_str(), id));
        let (location, contact) = (&decided.location, &decided.contact);
        self.store
            .set_known_followers(location, contact, &following, holder)
            .await?;
        decided.known = Some(following.clone());
        let removed = decided.ownership.confirm(&following);
        let made = self.reapplied(decided, id, at, Some(&following)).await?;
        Ok(made.map(|made| {
            made.map(|(plan, mut ledger, matched, state)| {
                ledger.splice(0..0, removed);
                (plan, ledger, matched, state)
            })
        }))
    }
}

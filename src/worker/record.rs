//! Phase 4, record: each event's decision (whose outcome says what happens to the event) and
//! the state it leaves are stored; then logged and counted.

use std::time::SystemTime;

use super::{Ending, Worker};
use crate::model::record::{CallRecord, Decision, Outcome};
use crate::store::{Claimed, NewState};

/// One event's result: its decision and the state it leaves, or `None` when nothing was
/// tried for it (the group was deferred, or the lease lost).
pub(super) type Result1 = Option<(Decision, NewState)>;

impl Worker {
    /// Stores the group's results: all in one transaction when every event finished, else one
    /// by one (finished, retried at `retry_at`, parked, deferred by `ending`, or left alone).
    pub(super) async fn record(
        &self,
        group: &[Claimed],
        results: &[Result1],
        ending: &Ending,
        retry_at: SystemTime,
    ) {
        let finished = |r: &Result1| {
            r.as_ref()
                .is_some_and(|(d, _)| d.outcome.status().is_final())
        };
        let stored = if results.iter().all(finished) {
            let items: Vec<_> = group
                .iter()
                .zip(results)
                .filter_map(|(c, r)| r.as_ref().map(|(d, s)| (c, d, s)))
                .collect();
            self.store.finish_all(&items).await
        } else {
            let mut all = Ok(true);
            for (claimed, result) in group.iter().zip(results) {
                let r = self.store_one(claimed, result, ending, retry_at).await;
                if !matches!(r, Ok(true)) {
                    all = r;
                }
            }
            all
        };
        match stored {
            Ok(true) => self.count(results),
            Ok(false) => tracing::warn!(
                event_id = group[0].id,
                "lease lost before the result was stored; another attempt will redo it"
            ),
            Err(e) => {
                tracing::error!(event_id = group[0].id, error = %e, "cannot store the result; the events will be retried")
            }
        }
    }

    async fn store_one(
        &self,
        claimed: &Claimed,
        result: &Result1,
        ending: &Ending,
        retry_at: SystemTime,
    ) -> Result<bool, crate::store::StoreError> {
        match (result, ending) {
            (Some((d, state)), _) => match d.outcome {
                Outcome::Retry => self.store.retry_at(claimed, retry_at, d).await,
                Outcome::Parked => self.store.park(claimed, d).await,
                _ => self.store.finish(claimed, d, state).await,
            },
            (None, Ending::Deferred(wait)) => {
                self.store.defer(claimed, SystemTime::now() + *wait).await
            }
            (None, _) => Ok(false),
        }
    }

    /// Counts stored results into the metrics.
    fn count(&self, results: &[Result1]) {
        let metrics = &self.metrics;
        for (d, _) in results.iter().flatten() {
            match d.outcome {
                Outcome::Retry => metrics.retries.inc(),
                Outcome::Parked => metrics.parked.inc(),
                outcome => {
                    let status = outcome.status();
                    metrics
                        .events_finished
                        .with_label_values(&[status.as_str()])
                        .inc();
                    if outcome == Outcome::Failed {
                        metrics.dead_letters.inc();
                    }
                    for rule in &d.matched {
                        metrics
                            .rule_matches
                            .with_label_values(&[rule.as_str()])
                            .inc();
                    }
                }
            }
        }
    }
}

/// One line per event: how it ended.
pub(super) fn log(claimed: &Claimed, result: &Result1, ending: &Ending, retry_at: SystemTime) {
    let id = claimed.id;
    let Some((d, _)) = result else {
        return match ending {
            Ending::Deferred(wait) => tracing::debug!(
                event_id = id,
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                "waiting for the location's rate limit"
            ),
            _ => tracing::warn!(
                event_id = id,
                "lease lapsed before the calls; another worker has the contact now"
            ),
        };
    };
    let error = d.error.as_deref().unwrap_or("");
    match d.outcome {
        Outcome::Retry => {
            let wait = retry_at
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tracing::warn!(
                event_id = id,
                attempt = claimed.attempt,
                error,
                retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                "event will be retried"
            );
        }
        Outcome::Parked => tracing::warn!(
            event_id = id,
            error,
            "event parked until the location's token works (new token, or `autofollow replay`)"
        ),
        outcome => tracing::info!(
            event_id = id,
            status = outcome.status().as_str(),
            matched = ?d.matched,
            plan = %d.plan.summary(),
            batch = ?d.batch,
            calls = %calls_summary(&d.calls),
            error,
            dry_run = d.dry_run,
            "event processed"
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

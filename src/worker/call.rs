//! Phase 3, call: at most one `POST` (adds) and one `DELETE` (removes) of the contact's
//! followers for the group's combined plan, each made only while this worker still holds the
//! group, and skipped while GoHighLevel's last follower list shows it would change nothing.

use std::time::Instant;

use super::decide::Decided;
use super::load::Held;
use super::{Ending, Worker};
use crate::access::Token;
use crate::ghl::CallError;
use crate::model::ids::{ContactId, LocationId, UserId};
use crate::model::plan::{Plan, PlanEntry};
use crate::model::record::{CallRecord, Outcome};
use crate::rules::MAX_FOLLOWERS;
use crate::store::StoreError;

/// The longest wait for the budget a group whose first call was made waits in place for its
/// second.
const WAIT_IN_PLACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The calls made (for the decision records), how they ended, and the follower list they
/// left (as GoHighLevel answered, else the list on record with their changes made to it).
pub(super) struct Called {
    pub calls: Vec<CallRecord>,
    pub ending: Ending,
    pub followers: Option<Vec<UserId>>,
}

/// The calls of a group so far, and the follower list as they left it.
struct Made {
    calls: Vec<CallRecord>,
    known: Option<Vec<UserId>>,
    changed: bool,
}

impl Made {
    /// A call went through: the follower list as the answer gave it, else the list on record
    /// with the call's change made to it (so it never says a removed user follows, which
    /// would skip a later add, or an added one does not).
    fn left(&mut self, add: bool, users: &[UserId], listed: Option<&[UserId]>) {
        let list = match (listed, self.known.take()) {
            (Some(list), _) => list.to_vec(),
            (None, None) => return,
            (None, Some(mut list)) => {
                list.retain(|u| !users.contains(u));
                if add {
                    list.extend(users.iter().cloned());
                }
                list
            }
        };
        self.known = Some(list);
        self.changed = true;
    }

    fn end(self, ending: Ending) -> Called {
        Called {
            calls: self.calls,
            ending,
            followers: self.known.filter(|_| self.changed),
        }
    }
}

impl Worker {
    /// Makes the group's calls. `trust_known`: the follower list on record may be used to
    /// skip calls (not when an earlier attempt may have made calls it could not record).
    /// `(head, held)`: the group's first event and when its leases were last known held; a
    /// lease not surely held is renewed before a call.
    pub(super) async fn call(
        &self,
        decided: &Decided,
        token: Option<&Token>,
        trust_known: bool,
        (head, held): (i64, &Held),
    ) -> Result<Called, StoreError> {
        let location = &decided.location;
        let mut made = Made {
            calls: Vec::new(),
            known: decided.known.clone(),
            changed: false,
        };
        let mut batches = batches(&decided.net);
        if batches.is_empty() {
            return Ok(made.end(Ending::done()));
        }
        if self.options.dry_run {
            let left_out = within_limit(&mut batches, None);
            for (add, users) in batches {
                let contact = &decided.contact;
                made.calls
                    .push(call_record(add, contact, users, None, "dry-run"));
            }
            let ending = left_out.map_or_else(Ending::done, |n| Ending::attempt(Outcome::Done, n));
            return Ok(made.end(ending));
        }
        let Some(token) = token else {
            let reason = format!(
                "no GoHighLevel token for location {location} (install the app into it, set GHL_TOKEN and GHL_LOCATION_ID, or add it to GHL_LOCATION_TOKENS_FILE)"
            );
            return Ok(made.end(Ending::attempt(Outcome::Failed, reason)));
        };
        let known = made.known.clone().filter(|_| trust_known);
        if let Some(known) = &known {
            skip_known(known, &mut batches);
        }
        let left_out = within_limit(&mut batches, known.as_deref());
        if let Some(note) = &left_out {
            tracing::warn!(%location, contact = %decided.contact, "{note}");
        }
        for (add, users) in batches {
            let call = self.call_batch(decided, token, add, users, (head, held), &mut made);
            if let Some(ending) = call.await? {
                return Ok(made.end(ending));
            }
        }
        // The token works: events parked while it did not can go.
        if self.parked.lock().await.remove(location) {
            let resumed = self.store.resume_location(location).await?;
            tracing::info!(%location, resumed, "the location's token works again; its parked events resume");
        }
        let ending = left_out.map_or_else(Ending::done, |n| Ending::attempt(Outcome::Done, n));
        Ok(made.end(ending))
    }

    /// Remembers the follower list the group's calls left, now, while this worker still
    /// holds the group (see `Store::set_known_followers`); a group that ends its events
    /// remembers it with their results instead.
    pub(super) async fn remember(
        &self,
        (location, contact): (&LocationId, &ContactId),
        list: &[UserId],
        head: i64,
    ) -> Result<(), StoreError> {
        let holder = Some((self.owner.as_str(), head));
        self.store
            .set_known_followers(location, contact, list, holder)
            .await?;
        Ok(())
    }

    /// One batch's call, made while this worker still holds the group; the ending when it
    /// ends the group's calls.
    async fn call_batch(
        &self,
        decided: &Decided,
        token: &Token,
        add: bool,
        users: Vec<UserId>,
        (head, held): (i64, &Held),
        made: &mut Made,
    ) -> Result<Option<Ending>, StoreError> {
        let mut waits = 0;
        loop {
            // Still this worker's group? A worker that stalled past its lease (another took
            // the contact over) must not make a call that could land after the new holder's:
            // unless the lease is surely held, renewing it right before the call is the check.
            let lease = self.options.lease;
            if !held.surely(lease) {
                let asked = Instant::now();
                if self.store.extend(&self.owner, &[head], lease).await? == 0 {
                    return Ok(Some(Ending::Lost));
                }
                held.renewed(asked);
            }
            let users = users.clone();
            match self.call_one(decided, token, add, users, made).await? {
                None => return Ok(None),
                // The group's first call went through and the budget's next request is near:
                // wait for it here. Ending the group would make its first call again on the
                // next try, take that request, and leave the second call waiting again, for
                // ever under a busy budget.
                Some(Ending::Deferred(wait))
                    if !made.calls.is_empty() && wait <= WAIT_IN_PLACE && waits < 10 =>
                {
                    waits += 1;
                    tokio::time::sleep(wait).await;
                }
                Some(ending) => return Ok(Some(ending)),
            }
        }
    }

    /// One followers call, recorded in `calls`; the ending when it ends the group's calls.
    async fn call_one(
        &self,
        decided: &Decided,
        token: &Token,
        add: bool,
        users: Vec<UserId>,
        made: &mut Made,
    ) -> Result<Option<Ending>, StoreError> {
        let calls = &mut made.calls;
        let (location, contact) = (&decided.location, &decided.contact);
        let mut used = token.clone();
        let mut answer = self
            .ghl
            .followers(&used.secret, location, add, contact, &users)
            .await;
        // Refused: once more with a newer token, if there is one (an installation's is
        // refreshed once).
        let refused = matches!(
            &answer,
            Err(CallError::Permanent {
                status: Some(401),
                ..
            })
        );
        let newer = match refused {
            true => self.access.refused(location, token).await,
            false => None,
        };
        if let Some(newer) = newer {
            answer = self
                .ghl
                .followers(&newer.secret, location, add, contact, &users)
                .await;
            used = newer;
        }
        let (status, reason) = match answer {
            Ok(answer) => {
                made.left(add, &users, answer.followers.as_deref());
                let mut record = call_record(add, contact, users, Some(answer.status), "ok");
                record.changed = answer.changed;
                made.calls.push(record);
                return Ok(None);
            }
            Err(CallError::Deferred { wait }) => return Ok(Some(Ending::Deferred(wait))),
            Err(CallError::Retryable {
                status,
                reason,
                retry_after,
            }) => {
                calls.push(call_record(add, contact, users, status, &reason));
                return Ok(Some(Ending::retry(reason, retry_after)));
            }
            Err(CallError::Permanent { status, reason }) => (status, reason),
        };
        calls.push(call_record(add, contact, users, status, &reason));
        let ending = match status {
            Some(401 | 403) => {
                self.store
                    .mark_token_failing(location, &used.fingerprint, &reason)
                    .await?;
                self.parked.lock().await.insert(location.clone());
                let reason =
                    format!("{reason}; the location's events wait for a new token or a replay");
                Ending::attempt(Outcome::Parked, reason)
            }
            // 404: the contact was deleted; nothing is left to do, and nothing failed.
            Some(404) => Ending::attempt(Outcome::Skipped, reason),
            _ => Ending::attempt(Outcome::Failed, reason),
        };
        Ok(Some(ending))
    }
}

/// Leaves out users who already follow (adds) or already do not (removes), by `known`.
fn skip_known(known: &[UserId], batches: &mut Vec<(bool, Vec<UserId>)>) {
    for (add, users) in batches.iter_mut() {
        users.retain(|u| known.contains(u) != *add);
    }
    batches.retain(|(_, users)| !users.is_empty());
}

/// GoHighLevel allows at most [`MAX_FOLLOWERS`] followers per contact: adds beyond that
/// (counting the followers known to stay, when the list is fresh) are left out rather than
/// sent to be refused. What was left out, and why, for the decision record.
fn within_limit(
    batches: &mut Vec<(bool, Vec<UserId>)>,
    known: Option<&[UserId]>,
) -> Option<String> {
    let removed: Vec<&UserId> = batches.iter().filter(|b| !b.0).flat_map(|b| &b.1).collect();
    let staying = known.map_or(0, |k| k.iter().filter(|u| !removed.contains(u)).count());
    let room = MAX_FOLLOWERS.saturating_sub(staying);
    let adds = &mut batches.iter_mut().find(|b| b.0)?.1;
    if adds.len() <= room {
        return None;
    }
    let left: Vec<String> = adds
        .split_off(room)
        .iter()
        .map(ToString::to_string)
        .collect();
    batches.retain(|(_, users)| !users.is_empty());
    Some(format!(
        "not added: {} (GoHighLevel allows at most {MAX_FOLLOWERS} followers per contact; {staying} already follow)",
        left.join(", ")
    ))
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
    contact: &ContactId,
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
        changed: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(prefix: &str, n: usize) -> Vec<UserId> {
        (0..n)
            .filter_map(|i| UserId::parse(&format!("{prefix}{i}")).ok())
            .collect()
    }

    #[test]
    fn adds_fit_the_room_the_followers_staying_leave() {
        let known = users("k", 8);
        // Two of the known stay removed: room for 4 of 5 adds.
        let mut batches = vec![(true, users("a", 5)), (false, known[..2].to_vec())];
        let note = within_limit(&mut batches, Some(&known));
        assert_eq!(batches[0].1, users("a", 4));
        assert!(note.is_some_and(|n| n.starts_with("not added: a4 ") && n.contains("6 already")));
        // Without a known list, only the plan itself counts; nothing to trim here.
        let mut batches = vec![(true, users("a", 10))];
        assert_eq!(within_limit(&mut batches, None), None);
        // No room at all: the add call goes.
        let mut batches = vec![(true, users("a", 1))];
        assert!(within_limit(&mut batches, Some(&users("k", 10))).is_some());
        assert!(batches.is_empty());
    }
}

//! Phase 2, decide: each event of the group, in order, on the state the one before it left,
//! by the rule set in force when the group started; their plans combined into one.

use std::collections::HashMap;

use super::ownership::Ownership;
use super::{Ending, Worker};
use crate::access::Token;
use crate::ghl::CallError;
use crate::model::event::{Event, EventType};
use crate::model::ids::{ContactId, LocationId, OpportunityId, UserId};
use crate::model::plan::{Plan, PreviousState};
use crate::model::record::{Decision, Outcome};
use crate::rules::Resolver;
use crate::store::{Claimed, NewState, StoreError};

/// What the rules decided for a group.
pub(super) struct Decided {
    pub location: LocationId,
    pub contact: ContactId,
    /// Per event (by index in the group): its decision record and the state it leaves.
    pub records: Vec<(usize, Decision, NewState)>,
    /// The plans combined: a later decision about a user wins. The calls carry it.
    pub net: Plan,
    /// The contact's ownership ledger, as the events left it.
    pub ownership: Ownership,
}

/// The state the events leave, as the group is decided in order.
struct Previous {
    tags: Option<Vec<String>>,
    /// The contact's assignee, as known.
    assigned: Option<Option<UserId>>,
    /// Per opportunity: its stage and assignee, as known.
    opportunities: HashMap<OpportunityId, (Option<String>, Option<Option<UserId>>)>,
}

impl Worker {
    /// Decides the group's `events` (index in `group`, event), or says why it cannot now: the
    /// location's token was refused (parked), or a lookup failed (retry, or wait for the
    /// budget).
    pub(super) async fn decide(
        &self,
        group: &[Claimed],
        events: &[(usize, Box<Event>)],
        token: Option<&Token>,
    ) -> Result<Result<Decided, Ending>, StoreError> {
        let Some((_, first)) = events.first() else {
            return Ok(Err(Ending::done()));
        };
        let (location, contact) = (first.location_id.clone(), first.contact_id.clone());
        if let Some(ending) = self.refused(&location, token).await? {
            return Ok(Err(ending));
        }
        let rules = self.rules.current();
        let stored = self.store.previous_state(&location, &contact, None).await?;
        let mut previous = Previous {
            tags: stored.tags,
            assigned: stored.assigned,
            opportunities: HashMap::new(),
        };
        let owned = self.store.owned(&location, &contact, false).await?;
        let mut decided = Decided {
            location,
            contact,
            records: Vec::with_capacity(events.len()),
            net: Plan::default(),
            ownership: Ownership::new(owned),
        };
        let batch: Vec<i64> = match events.len() {
            1 => Vec::new(),
            _ => events.iter().map(|(j, _)| group[*j].id).collect(),
        };
        for (i, event) in events {
            if event.event_type == EventType::OpportunityDelete {
                self.opportunity_deleted(&decided, event, &mut previous)
                    .await?;
                let decision = Decision {
                    batch: batch.clone(),
                    rules_version: rules.version().to_owned(),
                    ..Decision::empty(group[*i].attempt, Outcome::Done, self.options.dry_run)
                };
                decided.records.push((*i, decision, NewState::default()));
                continue;
            }
            let before = self.before(&decided, event, &mut previous).await?;
            let resolver = match self
                .lookups
                .resolve(
                    &self.ghl,
                    event,
                    before.stage.as_deref(),
                    token.map(|t| &t.secret),
                )
                .await
            {
                Ok(r) => r,
                Err(e) => return Ok(Err(Ending::from_lookup(e))),
            };
            let evaluation = rules.evaluate(event, &before, &resolver);
            let (plan, ledger) = decided.ownership.decide(&rules, event, &evaluation);
            decided.net.merge(&plan);
            let decision = Decision {
                matched: evaluation.matched,
                plan,
                batch: batch.clone(),
                rules_version: rules.version().to_owned(),
                ..Decision::empty(group[*i].attempt, Outcome::Done, self.options.dry_run)
            };
            let location = &event.location_id;
            let assigned = event.assignment(|email| resolver.user_id_by_email(location, email));
            let mut state = leave(&decided, event, assigned, &mut previous);
            state.ledger = ledger;
            decided.records.push((*i, decision, state));
        }
        Ok(Ok(decided))
    }

    /// Parked when GoHighLevel refused the location's token and it is still the same token;
    /// a changed token is tried again.
    async fn refused(
        &self,
        location: &LocationId,
        token: Option<&Token>,
    ) -> Result<Option<Ending>, StoreError> {
        let (false, Some(token)) = (self.options.dry_run, token) else {
            return Ok(None);
        };
        match self.store.token_failing(location).await? {
            Some(refused) if refused == token.fingerprint => {
                self.parked.lock().await.insert(location.clone());
                Ok(Some(Ending::attempt(
                    Outcome::Parked,
                    format!(
                        "GoHighLevel refused the token of location {location}; waiting for a new token or a replay"
                    ),
                )))
            }
            Some(_) => {
                self.store.resume_location(location).await?;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// An `OpportunityDelete`: the rules do not see it and nothing is called for it; the
    /// opportunity's stage is forgotten.
    async fn opportunity_deleted(
        &self,
        decided: &Decided,
        event: &Event,
        previous: &mut Previous,
    ) -> Result<(), StoreError> {
        if let Some(o) = &event.opportunity_id {
            let (location, contact) = (&decided.location, &decided.contact);
            self.store.forget(location, contact, Some(o)).await?;
            previous.opportunities.insert(o.clone(), (None, None));
        }
        Ok(())
    }

    /// What the event's record was before it (the contact's tags; the opportunity's stage;
    /// the assignee of the opportunity, or of the contact): as an earlier event of the group
    /// left it, else as stored.
    async fn before(
        &self,
        decided: &Decided,
        event: &Event,
        previous: &mut Previous,
    ) -> Result<PreviousState, StoreError> {
        let Some(o) = &event.opportunity_id else {
            return Ok(PreviousState {
                tags: previous.tags.clone(),
                stage: None,
                assigned: previous.assigned.clone(),
            });
        };
        if !previous.opportunities.contains_key(o) {
            let stored = self
                .store
                .previous_state(&decided.location, &decided.contact, Some(o))
                .await?;
            previous
                .opportunities
                .insert(o.clone(), (stored.stage, stored.assigned));
        }
        let (stage, assigned) = previous.opportunities.get(o).cloned().unwrap_or_default();
        Ok(PreviousState {
            tags: previous.tags.clone(),
            stage,
            assigned,
        })
    }
}

/// The state `event` leaves (for the next event of the group, and to store); `assigned`: who
/// it says its record is assigned to.
fn leave(
    decided: &Decided,
    event: &Event,
    assigned: Option<Option<UserId>>,
    previous: &mut Previous,
) -> NewState {
    let stage = event.stage_id.clone().or_else(|| event.stage_name.clone());
    if let Some(o) = &event.opportunity_id {
        let known = previous.opportunities.entry(o.clone()).or_default();
        if stage.is_some() {
            known.0.clone_from(&stage);
        }
        if assigned.is_some() {
            known.1.clone_from(&assigned);
        }
    } else if assigned.is_some() {
        previous.assigned.clone_from(&assigned);
    }
    if event.tags.is_some() {
        previous.tags.clone_from(&event.tags);
    }
    NewState {
        location_id: Some(decided.location.clone()),
        contact_id: Some(decided.contact.clone()),
        tags: event.tags.clone(),
        stage: event.opportunity_id.clone().zip(stage),
        assigned: assigned.map(|user| (event.opportunity_id.clone(), user)),
        ledger: Vec::new(),
    }
}

impl Ending {
    /// A lookup that failed: retried, or deferred while the budget is spent.
    fn from_lookup(e: CallError) -> Ending {
        match e {
            CallError::Deferred { wait } => Ending::Deferred(wait),
            // A lookup's retry waits the backoff, whatever it was told.
            CallError::Retryable { reason, .. } | CallError::Permanent { reason, .. } => {
                Ending::retry(reason, None)
            }
        }
    }
}

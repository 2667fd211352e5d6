//! Phase 2, decide: each event of the group, in order, on the state the one before it left,
//! by the rule set in force when the group started; their plans combined into one.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use chrono::NaiveDate;

use super::load::Step;
use super::ownership::Ownership;
use super::{Ending, Worker};
use crate::access::Token;
use crate::ghl::CallError;
use crate::model::event::{Event, EventType};
use crate::model::ids::{ContactId, LocationId, OpportunityId, UserId};
use crate::model::plan::{Plan, PreviousState};
use crate::model::record::{Decision, Outcome};
use crate::rules::Pool;
use crate::rules::deal::{Away, Dealer, Dealing, day_matters, nobody_note};
use crate::rules::{Evaluation, Resolver, RuleSet};
use crate::store::{Claimed, ContactSnapshot, NewState, StoreError, millis};

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
    /// The follower list GoHighLevel last returned, while it is fresh.
    pub known: Option<Vec<UserId>>,
}

/// What a task decides for its contact (`reapply`, `undo`, a backfilled record, drift
/// repair): the plan, the ledger changes, the rules matched, and the state it leaves.
pub(super) type Made = (Plan, Vec<crate::store::LedgerChange>, Vec<String>, NewState);

/// Where pools' turns are taken.
#[derive(Clone, Copy)]
pub(super) enum Turns<'a> {
    /// The store's sequence, counted and shared by replicas: the worker's decisions.
    Store,
    /// A sequence in memory that goes on from the store's and counts nothing there: previews
    /// (a reapply's, a backfill's) and dry runs.
    Preview(&'a tokio::sync::Mutex<Dealer>),
}

/// What deciding one step of the group works with.
pub(super) struct Step1<'a> {
    pub rules: &'a RuleSet,
    pub token: Option<&'a Token>,
    pub turns: Turns<'a>,
    pub previous: &'a mut Previous,
    /// The step's decision before anything is decided (attempt, batch, rule-set version).
    pub empty: Decision,
}

/// The state the events leave, as the group is decided in order.
pub(super) struct Previous {
    pub tags: Option<Vec<String>>,
    /// The contact's assignee, as known.
    pub assigned: Option<Option<UserId>>,
    /// Per opportunity: its stage and assignee, as known.
    pub opportunities: HashMap<OpportunityId, (Option<String>, Option<Option<UserId>>)>,
}

impl Worker {
    /// Decides the group's `steps` (index in `group`, step), or says why it cannot now: the
    /// location's token was refused (parked), or a lookup failed (retry, or wait for the
    /// budget). Pools deal by `turns`.
    pub(super) async fn decide(
        &self,
        group: &[Claimed],
        steps: &[(usize, Step)],
        (rules, token): (&RuleSet, Option<&Token>),
        snapshot: &ContactSnapshot,
        turns: Turns<'_>,
    ) -> Result<Result<Decided, Ending>, StoreError> {
        let Some((_, first)) = steps.first() else {
            return Ok(Err(Ending::done()));
        };
        let location = first.location().clone();
        let contact = match first {
            Step::Event(e) => e.contact_id.clone(),
            Step::Task(t) => t.contact_id.clone(),
        };
        let snapshot = self
            .snapshot(&group[0], &location, &contact, snapshot)
            .await?;
        let snapshot = snapshot.as_ref();
        if let Some(ending) = self.refused(&location, token, snapshot).await? {
            return Ok(Err(ending));
        }
        let mut previous = Previous {
            tags: snapshot.previous.tags.clone(),
            assigned: snapshot.previous.assigned.clone(),
            opportunities: HashMap::new(),
        };
        let mut decided = Decided {
            location,
            contact,
            records: Vec::with_capacity(steps.len()),
            net: Plan::default(),
            ownership: Ownership::new(snapshot.owned.clone()),
            known: self.fresh(snapshot),
        };
        let batch: Vec<i64> = match steps.len() {
            1 => Vec::new(),
            _ => steps.iter().map(|(j, _)| group[*j].id).collect(),
        };
        for (i, step) in steps {
            let empty = Decision {
                batch: batch.clone(),
                rules_version: rules.version().to_owned(),
                ..Decision::empty(group[*i].attempt, Outcome::Done, self.options.dry_run)
            };
            let made = match step {
                Step::Event(event) => {
                    let at = Step1 {
                        rules,
                        token,
                        turns,
                        previous: &mut previous,
                        empty,
                    };
                    self.decide_event(&mut decided, event, at).await?
                }
                Step::Task(task) => {
                    let at = Step1 {
                        rules,
                        token,
                        turns,
                        previous: &mut previous,
                        empty,
                    };
                    self.decide_task(&mut decided, &task.task, group[*i].id, at)
                        .await?
                }
            };
            match made {
                Ok(record) => decided.records.push((*i, record.0, record.1)),
                Err(ending) => return Ok(Err(ending)),
            }
        }
        Ok(Ok(decided))
    }

    /// What is known of the contact: as the claim read it by the ids stored with its events,
    /// or read again by the body's ids, which are the ones acted on (they match, unless a row
    /// predates checked ids).
    async fn snapshot<'a>(
        &self,
        head: &Claimed,
        location: &LocationId,
        contact: &ContactId,
        claimed: &'a ContactSnapshot,
    ) -> Result<Cow<'a, ContactSnapshot>, StoreError> {
        if head.location_id == location.as_str() && head.contact_id == contact.as_str() {
            return Ok(Cow::Borrowed(claimed));
        }
        let read = self.store.contact_snapshot(location, contact).await?;
        Ok(Cow::Owned(read))
    }

    /// One event's decision and the state it leaves (an `OpportunityDelete` is not decided:
    /// the opportunity's stage is forgotten).
    async fn decide_event(
        &self,
        decided: &mut Decided,
        event: &Event,
        at: Step1<'_>,
    ) -> Result<Result<(Decision, NewState), Ending>, StoreError> {
        if event.event_type == EventType::OpportunityDelete {
            self.opportunity_deleted(decided, event, at.previous)
                .await?;
            return Ok(Ok((at.empty, NewState::default())));
        }
        let before = self.before(decided, event, at.previous).await?;
        let secret = at.token.map(|t| &t.secret);
        let stage = before.stage.as_deref();
        let needs = (stage, &at.rules.target_emails(event)[..]);
        let resolver = match self.lookups.resolve(&self.ghl, event, needs, secret).await {
            Ok(r) => r,
            Err(e) => return Ok(Err(Ending::from_lookup(e))),
        };
        let mut evaluation = at.rules.evaluate(event, &before, &resolver);
        let at_contact = (&event.location_id, &event.contact_id);
        let how = (at.token, at.turns);
        let unpicked = match self
            .deal(&mut evaluation, at_contact, &decided.ownership, how)
            .await?
        {
            Ok(unpicked) => unpicked,
            Err(ending) => return Ok(Err(ending)),
        };
        let (plan, ledger) = decided.ownership.decide(at.rules, event, &evaluation);
        decided.net.merge(&plan);
        let decision = Decision {
            matched: evaluation.matched,
            plan,
            error: unpicked.or(at.empty.error.clone()),
            ..at.empty
        };
        let location = &event.location_id;
        let assigned = event.assignment(|email| resolver.user_id_by_email(location, email));
        let mut state = leave(decided, event, assigned, at.previous);
        state.ledger = ledger;
        Ok(Ok((decision, state)))
    }

    /// Gives each pool a matched rule adds one member: the one autofollow already keeps
    /// following the contact for that rule (sticky), else the pool's next turn by `turns`
    /// among the members not away today (the file's periods and those set at run time),
    /// else the pool's fallback. Returns a note for the decision when a pool had nobody, or
    /// why it cannot deal now (the location's time zone could not be read yet).
    pub(super) async fn deal(
        &self,
        evaluation: &mut Evaluation,
        at: (&LocationId, &ContactId),
        ownership: &Ownership,
        (token, turns): (Option<&Token>, Turns<'_>),
    ) -> Result<Result<Option<String>, Ending>, StoreError> {
        ownership.keep_picks(evaluation);
        if evaluation.picks.is_empty() {
            return Ok(Ok(None));
        }
        let away = self.away().await?;
        let today = match self.today(&evaluation.picks, at.0, token, &away).await {
            Ok(today) => today,
            Err(e) => return Ok(Err(Ending::from_lookup(e))),
        };
        let mut nobody = Vec::new();
        for hand in evaluation.hands(today, &away) {
            let pool = hand.pool.name.as_str();
            let turn = match turns {
                Turns::Store => self.store.take_turn(at, pool, &hand.here).await?,
                Turns::Preview(dealer) => {
                    let state = self.store.pool_state(at, pool).await?;
                    let mut dealer = dealer.lock().await;
                    dealer.seed(at, pool, state);
                    dealer.take(at, pool, &hand.here)
                }
            };
            nobody.extend(evaluation.give(hand, turn).err());
        }
        Ok(Ok(nobody_note(&nobody)))
    }

    /// Today, where pools' away dates are days: of AUTOFOLLOW_TIME_ZONE, else of the
    /// location's time zone (read from GoHighLevel only when it can change who is away
    /// today: [`day_matters`]), else of UTC.
    async fn today(
        &self,
        picks: &[(String, Arc<Pool>)],
        location: &LocationId,
        token: Option<&Token>,
        away: &[Away],
    ) -> Result<NaiveDate, CallError> {
        let utc = today_in(None);
        let zone = match self.options.time_zone {
            Some(zone) => Some(zone),
            None if !day_matters(picks, away, utc) => None,
            None => {
                let secret = token.map(|t| &t.secret);
                (self.lookups.time_zone(&self.ghl, location, secret)).await?
            }
        };
        Ok(today_in(zone))
    }

    /// The away periods set at run time (the store keeps them read for a few seconds).
    async fn away(&self) -> Result<Vec<Away>, StoreError> {
        let periods = self.store.away_periods().await?;
        Ok(periods
            .into_iter()
            .map(|p| (p.user, p.from, p.to))
            .collect())
    }

    /// How an explanation of `event` deals pools as this service would now: every pool's
    /// sequence where the store's stands in the event's location (and the contact's earlier
    /// picks), today's date (in the location's time zone as last read, when none is
    /// configured) and the away periods set at run time. Nothing is counted.
    pub async fn dealing(&self, event: &Event) -> Result<Dealing, StoreError> {
        let mut dealer = Dealer::default();
        let at = (&event.location_id, &event.contact_id);
        for pool in self.rules.current().pools().keys() {
            dealer.seed(at, pool, self.store.pool_state(at, pool).await?);
        }
        let zone = match self.options.time_zone {
            Some(zone) => Some(zone),
            None => self.lookups.known_time_zone(&event.location_id).await,
        };
        Ok(Dealing {
            dealer,
            today: today_in(zone),
            away: self.away().await?,
        })
    }

    /// Parked when GoHighLevel refused the location's token and it is still the same token;
    /// a changed token is tried again.
    async fn refused(
        &self,
        location: &LocationId,
        token: Option<&Token>,
        snapshot: &ContactSnapshot,
    ) -> Result<Option<Ending>, StoreError> {
        let (false, Some(token)) = (self.options.dry_run, token) else {
            return Ok(None);
        };
        match &snapshot.token_refused {
            Some(refused) if *refused == token.fingerprint => {
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

    /// The follower list on record, while it is fresh (people change followers by hand, so
    /// it is trusted only for a short while).
    fn fresh(&self, snapshot: &ContactSnapshot) -> Option<Vec<UserId>> {
        let fresh = self.options.followers_fresh;
        let (list, seen) = snapshot.followers.as_ref()?;
        let since = millis(SystemTime::now().checked_sub(fresh)?);
        (!fresh.is_zero() && *seen >= since).then(|| list.clone())
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
    pub(super) async fn before(
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
pub(super) fn leave(
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
        followers: None,
    }
}

impl Ending {
    /// A lookup that failed: retried, or deferred while the budget is spent.
    pub(super) fn from_lookup(e: CallError) -> Ending {
        match e {
            CallError::Deferred { wait } => Ending::Deferred(wait),
            // A lookup's retry waits the backoff, whatever it was told.
            CallError::Retryable { reason, .. } | CallError::Permanent { reason, .. } => {
                Ending::retry(reason, None)
            }
        }
    }
}

/// Today's date in `zone` (UTC when `None`).
fn today_in(zone: Option<chrono_tz::Tz>) -> NaiveDate {
    let now = chrono::DateTime::<chrono::Utc>::from(SystemTime::now());
    zone.map_or(now.date_naive(), |z| now.with_timezone(&z).date_naive())
}

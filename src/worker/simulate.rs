//! Simulation on real history: the stored webhooks of a period replayed in order through the
//! rules in force and a candidate set, each event from the state the ones before it left
//! (the contact's tags, stages and owners, and each set's own ledger), with the difference in
//! follower changes counted per rule and user. Nothing is stored and nothing is called. Each
//! set deals its pools from a sequence of its own, starting fresh (a contact keeps the member
//! it was dealt), on today's date for away periods.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use super::maintain::Tally;
use super::ownership::decide_alone;
use crate::model::event::{self, Event, Parsed};
use crate::model::ids::{ContactId, LocationId, OpportunityId, UserId};
use crate::model::plan::{Plan, PreviousState};
use crate::rules::deal::Dealer;
use crate::rules::{Resolver, RuleOutcome, RuleSet};
use crate::store::{Store, StoreError};

/// The most webhooks one simulation replays.
pub const MAX_EVENTS: u32 = 100_000;

/// The most contacts shown with their explanations.
const SAMPLES: usize = 10;

/// What a candidate rule set would have changed over a period of real webhooks.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Simulation {
    pub current_version: String,
    pub candidate_version: String,
    /// Webhooks replayed, and the contacts they are about.
    pub events: usize,
    pub contacts: usize,
    /// Contacts whose follower changes differ.
    pub changed: usize,
    /// Per rule and user: how many contacts gain or lose them under the candidate.
    pub summary: Vec<Tally>,
    /// A few of those contacts, with the first event that differs and why.
    pub samples: Vec<Sample>,
}

/// One contact whose changes differ, at the first event where they do.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub location: LocationId,
    pub contact: ContactId,
    pub event_id: i64,
    pub event_type: String,
    pub current: String,
    pub candidate: String,
    /// The candidate's verdict on each rule that matched under either set.
    pub explanation: Vec<String>,
}

/// A contact's state as the replay goes.
#[derive(Default)]
struct Replayed {
    tags: Option<Vec<String>>,
    assigned: Option<Option<UserId>>,
    opportunities: HashMap<OpportunityId, (Option<String>, Option<Option<UserId>>)>,
    /// Each set's ledger: (user, rule) pairs it keeps.
    owned: [Vec<(UserId, String)>; 2],
}

/// Replays the webhooks received since `since` (unix ms) through both sets.
pub async fn simulate(
    store: &dyn Store,
    current: &RuleSet,
    candidate: &RuleSet,
    since: i64,
    location: Option<&LocationId>,
    resolver: &(dyn Resolver + Sync),
) -> Result<Simulation, StoreError> {
    let bodies = store.received_since(since, location, MAX_EVENTS).await?;
    let mut contacts: HashMap<(LocationId, ContactId), Replayed> = HashMap::new();
    let mut differ: BTreeSet<(LocationId, ContactId)> = BTreeSet::new();
    let mut tallies: BTreeSet<(String, UserId, bool, LocationId, ContactId)> = BTreeSet::new();
    let mut sim = Simulation {
        current_version: current.version().to_owned(),
        candidate_version: candidate.version().to_owned(),
        ..Simulation::default()
    };
    // Each set deals its pools from a fresh sequence, with today's away periods.
    let mut dealers = [Dealer::default(), Dealer::default()];
    let today = chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now()).date_naive();
    for (id, kind, body) in bodies {
        let Ok(Parsed::Event(event)) = event::parse(kind, body.as_bytes()) else {
            continue;
        };
        sim.events += 1;
        let key = (event.location_id.clone(), event.contact_id.clone());
        let state = contacts.entry(key.clone()).or_default();
        let previous = state.previous(&event);
        let plans: Vec<_> = [current, candidate]
            .iter()
            .zip(&state.owned)
            .zip(&mut dealers)
            .map(|((set, owned), dealer)| {
                let seen = (&*event, &previous);
                let dealing = (dealer, today);
                let (evaluation, plan) = decide_alone(set, seen, owned, resolver, dealing);
                (evaluation.matched, evaluation.adds, plan)
            })
            .collect();
        for (i, (_, adds, plan)) in plans.iter().enumerate() {
            state.keep(i, adds, plan);
        }
        state.leave(&event);
        let diff = difference(&plans[0].2, &plans[1].2);
        if diff.is_empty() {
            continue;
        }
        for (rule, user, gain) in diff {
            tallies.insert((rule, user, gain, key.0.clone(), key.1.clone()));
        }
        if differ.insert(key) && sim.samples.len() < SAMPLES {
            let matched: Vec<&String> = plans[0].0.iter().chain(&plans[1].0).collect();
            sim.samples.push(sample(
                candidate,
                &event,
                id,
                &previous,
                resolver,
                [&plans[0].2, &plans[1].2],
                &matched,
            ));
        }
    }
    sim.contacts = contacts.len();
    sim.changed = differ.len();
    sim.summary = summary(tallies);
    Ok(sim)
}

/// How the candidate's plan differs from the current one's: (rule, user, gain?) each.
fn difference(current: &Plan, candidate: &Plan) -> Vec<(String, UserId, bool)> {
    let has =
        |list: &[crate::model::plan::PlanEntry], u: &UserId| list.iter().any(|e| &e.user == u);
    let mut out = Vec::new();
    for e in &candidate.add {
        if !has(&current.add, &e.user) {
            out.push((e.rule.clone(), e.user.clone(), true));
        }
    }
    for e in &current.add {
        if !has(&candidate.add, &e.user) {
            out.push((e.rule.clone(), e.user.clone(), false));
        }
    }
    for e in &candidate.remove {
        if !has(&current.remove, &e.user) {
            out.push((e.rule.clone(), e.user.clone(), false));
        }
    }
    for e in &current.remove {
        if !has(&candidate.remove, &e.user) {
            out.push((e.rule.clone(), e.user.clone(), true));
        }
    }
    out
}

/// Contacts per (rule, user), gained and lost.
fn summary(tallies: BTreeSet<(String, UserId, bool, LocationId, ContactId)>) -> Vec<Tally> {
    let mut out: BTreeMap<(String, UserId), Tally> = BTreeMap::new();
    for (rule, user, gain, ..) in tallies {
        let t = out.entry((rule.clone(), user.clone())).or_insert(Tally {
            rule,
            user,
            gain: 0,
            lose: 0,
        });
        match gain {
            true => t.gain += 1,
            false => t.lose += 1,
        }
    }
    out.into_values().collect()
}

fn sample(
    candidate: &RuleSet,
    event: &Event,
    id: i64,
    previous: &PreviousState,
    resolver: &dyn Resolver,
    plans: [&Plan; 2],
    matched: &[&String],
) -> Sample {
    let explanation = candidate.explain(event, previous, resolver);
    let lines = explanation
        .rules
        .iter()
        .filter(|t| matched.contains(&&t.rule));
    let lines = lines.map(|t| {
        let verdict = if t.outcome == RuleOutcome::Matched {
            "matched"
        } else {
            "not matched"
        };
        let why: Vec<String> = t
            .checks
            .iter()
            .map(|c| format!("{}: {}", c.condition, c.detail))
            .collect();
        format!("{} ({}): {verdict}; {}", t.rule, t.origin, why.join("; "))
    });
    Sample {
        location: event.location_id.clone(),
        contact: event.contact_id.clone(),
        event_id: id,
        event_type: event.event_type.to_string(),
        current: plans[0].summary(),
        candidate: plans[1].summary(),
        explanation: lines.collect(),
    }
}

impl Replayed {
    /// The state before `event`: the contact's tags, and the owner and stage of its record.
    fn previous(&self, event: &Event) -> PreviousState {
        let (stage, assigned) = match &event.opportunity_id {
            Some(o) => self.opportunities.get(o).cloned().unwrap_or_default(),
            None => (None, self.assigned.clone()),
        };
        PreviousState {
            tags: self.tags.clone(),
            stage,
            assigned,
        }
    }

    /// Set `i`'s ledger after its plan: the users it removed go, those it added come.
    fn keep(&mut self, i: usize, adds: &[(String, UserId)], plan: &Plan) {
        let owned = &mut self.owned[i];
        owned.retain(|(u, _)| !plan.remove.iter().any(|e| &e.user == u));
        for (rule, user) in adds {
            let added = plan.add.iter().any(|e| &e.user == user);
            if added && !owned.iter().any(|(u, r)| u == user && r == rule) {
                owned.push((user.clone(), rule.clone()));
            }
        }
    }

    /// The state `event` leaves.
    fn leave(&mut self, event: &Event) {
        if event.tags.is_some() {
            self.tags.clone_from(&event.tags);
        }
        let assigned = event.assignment(|_| None);
        let stage = event.stage_id.clone().or_else(|| event.stage_name.clone());
        match &event.opportunity_id {
            Some(o) => {
                let known = self.opportunities.entry(o.clone()).or_default();
                if stage.is_some() {
                    known.0 = stage;
                }
                if assigned.is_some() {
                    known.1 = assigned;
                }
            }
            None if assigned.is_some() => self.assigned = assigned,
            None => {}
        }
    }
}

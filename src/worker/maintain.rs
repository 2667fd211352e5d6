//! Tasks on the followers autofollow manages (`reapply`, `undo`): what one does to a contact
//! (decided in the contact's queue, on the state its earlier events left, by the same code a
//! preview runs), and the operator's request over many contacts: preview them all, and
//! queue a task for each contact that changes.

use std::collections::{BTreeMap, HashSet};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::Ending;
use super::Worker;
use super::decide::{Decided, Made, Step1, Turns};
use super::load::{Bodies, Step};
use super::ownership::Verdicts;
use crate::model::event::{self, BodyKind, Event, EventType, Parsed, Subject};
use crate::model::ids::{ContactId, LocationId, OpportunityId, UserId};
use crate::model::plan::Plan;
use crate::model::record::Decision;
use crate::model::task::{Task, TaskBody, UndoScope};
use crate::rules::Evaluation;
use crate::rules::deal::Dealer;
use crate::store::{Claimed, NewState, StoreError};

/// How many of a contact's latest events `reapply` reads to find each record's latest state.
const LATEST: u32 = 50;

/// What a reload that changes the rules does to the contacts already decided
/// (`AUTOFOLLOW_REAPPLY_ON_RELOAD`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnReload {
    Off,
    /// Work out what `reapply` would change; log it and show it in `/readyz`.
    #[default]
    Preview,
    /// Queue those changes.
    Apply,
}

impl OnReload {
    pub fn parse(text: &str) -> Result<OnReload, String> {
        match text.trim() {
            "off" => Ok(OnReload::Off),
            "preview" => Ok(OnReload::Preview),
            "apply" => Ok(OnReload::Apply),
            other => Err(format!("`{other}` is not off, preview or apply")),
        }
    }
}

/// What an operator asks for: over every known contact (of a location, or all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Job {
    /// The difference between what the rules want now and what the ledger holds.
    Reapply { location: Option<LocationId> },
    /// The inverse of what autofollow did in `scope`.
    Undo {
        scope: UndoScope,
        location: Option<LocationId>,
    },
}

impl Job {
    fn task(&self, rules_version: &str) -> Task {
        match self {
            Job::Reapply { .. } => Task::Reapply {
                rules_version: rules_version.to_owned(),
            },
            Job::Undo { scope, .. } => Task::Undo {
                scope: scope.clone(),
            },
        }
    }
}

/// What a job does (a dry run: would do), over its contacts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// `reapply`, or `undo rule vip` (event 42, since …).
    pub job: String,
    pub rules_version: String,
    pub dry_run: bool,
    /// Contacts looked at.
    pub contacts: usize,
    /// Contacts whose followers change.
    pub changed: usize,
    /// Tasks queued (none in a dry run).
    pub queued: usize,
    /// Per rule and user: how many contacts gain or lose them.
    pub summary: Vec<Tally>,
    /// Every change, per contact.
    pub changes: Vec<Change>,
    /// Contacts that could not be worked out now (a lookup failed), with why.
    pub problems: Vec<String>,
}

/// How many contacts gain or lose a user because of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub rule: String,
    pub user: UserId,
    pub gain: usize,
    pub lose: usize,
}

/// The change to one contact's followers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub location: LocationId,
    pub contact: ContactId,
    pub add: Vec<Entry>,
    pub remove: Vec<Entry>,
}

/// A user added or removed, with the rule it is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub user: UserId,
    pub rule: String,
}

impl Change {
    /// The change a plan makes to a contact.
    pub fn new(location: LocationId, contact: ContactId, plan: &Plan) -> Change {
        let entries = |list: &[crate::model::plan::PlanEntry]| {
            list.iter()
                .map(|e| Entry {
                    user: e.user.clone(),
                    rule: e.rule.clone(),
                })
                .collect()
        };
        Change {
            location,
            contact,
            add: entries(&plan.add),
            remove: entries(&plan.remove),
        }
    }
}

impl Report {
    pub(super) fn count(&mut self, change: Change) {
        let mut tallies: BTreeMap<(String, UserId), Tally> = std::mem::take(&mut self.summary)
            .into_iter()
            .map(|t| ((t.rule.clone(), t.user.clone()), t))
            .collect();
        for (entries, gain) in [(&change.add, true), (&change.remove, false)] {
            for e in entries {
                let tally = tallies
                    .entry((e.rule.clone(), e.user.clone()))
                    .or_insert_with(|| Tally {
                        rule: e.rule.clone(),
                        user: e.user.clone(),
                        gain: 0,
                        lose: 0,
                    });
                match gain {
                    true => tally.gain += 1,
                    false => tally.lose += 1,
                }
            }
        }
        self.summary = tallies.into_values().collect();
        self.changed += 1;
        self.changes.push(change);
    }

    /// The summary as lines: a heading, then `  rule R: user U +gain -lose` per tally.
    pub fn lines(&self) -> Vec<String> {
        let verb = if self.dry_run {
            "would change"
        } else {
            "change"
        };
        let mut lines = vec![format!(
            "{} (rules version {}): {} contacts checked, {} {verb}{}",
            self.job,
            short(&self.rules_version),
            self.contacts,
            self.changed,
            match self.dry_run {
                true => String::new(),
                false => format!(", {} tasks queued", self.queued),
            }
        )];
        for t in &self.summary {
            lines.push(format!(
                "  rule {}: {} +{} -{}",
                t.rule, t.user, t.gain, t.lose
            ));
        }
        lines.extend(
            self.problems
                .iter()
                .map(|p| format!("  not worked out: {p}")),
        );
        lines
    }
}

fn short(version: &str) -> &str {
    version.get(..12).unwrap_or(version)
}

/// Takes the reapply tasks planned for another rule-set version out of `bodies`: they end
/// skipped, with why (their preview no longer says what they would do).
pub(super) fn stale(bodies: &mut Bodies, version: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    bodies.steps.retain(|(i, step)| match step {
        Step::Task(TaskBody {
            task: Task::Reapply { rules_version },
            ..
        }) if rules_version != version => {
            out.push((*i, format!(
                "planned for rules version {}, but the service runs {}: run `autofollow reapply` again",
                short(rules_version),
                short(version)
            )));
            false
        }
        _ => true,
    });
    out
}

impl Worker {
    /// One task's decision: its plan and the ledger changes it makes.
    pub(super) async fn decide_task(
        &self,
        decided: &mut Decided,
        task: &Task,
        id: i64,
        mut at: Step1<'_>,
    ) -> Result<Result<(Decision, NewState), Ending>, StoreError> {
        let (location, contact) = (&decided.location, &decided.contact);
        let all = self.store.owned(location, contact, true).await?;
        decided.ownership.decline(&all);
        let made = match task {
            Task::Reapply { .. } => self.reapplied(decided, id, &at, None).await?,
            Task::Reconcile => self.reconciled(decided, id, &at).await?,
            Task::Undo { scope } => {
                let (plan, ledger) = decided.ownership.undo(scope, &all);
                Ok(Some((plan, ledger, Vec::new(), NewState::default())))
            }
            Task::Backfill { record } => self.backfilled(decided, record, &mut at).await?,
        };
        let (plan, ledger, matched, state) = match made {
            Ok(Some((plan, ledger, matched, state))) => (plan, ledger, matched, state),
            Ok(None) => (Plan::default(), Vec::new(), Vec::new(), NewState::default()),
            Err(ending) => return Ok(Err(ending)),
        };
        let state = NewState {
            location_id: Some(decided.location.clone()),
            contact_id: Some(decided.contact.clone()),
            ..state
        };
        decided.net.merge(&plan);
        let state = NewState { ledger, ..state };
        let decision = Decision {
            matched,
            plan,
            ..at.empty
        };
        Ok(Ok((decision, state)))
    }

    /// Reapply: each record's latest stored state evaluated again, against the ledger; with
    /// `following` (drift repair), only adding users GoHighLevel does not list and removing
    /// users it does.
    pub(super) async fn reapplied(
        &self,
        decided: &mut Decided,
        id: i64,
        at: &Step1<'_>,
        following: Option<&[UserId]>,
    ) -> Result<Result<Option<Made>, Ending>, StoreError> {
        let verdicts = match self.verdicts(decided, id, at).await? {
            Ok(v) => v,
            Err(ending) => return Ok(Err(ending)),
        };
        let (mut plan, ledger) = decided.ownership.reapply(at.rules, &verdicts);
        if let Some(following) = following {
            plan.add.retain(|e| !following.contains(&e.user));
            plan.remove.retain(|e| following.contains(&e.user));
        }
        let mut matched: Vec<String> = Vec::new();
        for (_, _, e) in &verdicts.evaluated {
            for m in &e.matched {
                if !matched.contains(m) {
                    matched.push(m.clone());
                }
            }
        }
        Ok(Ok(Some((plan, ledger, matched, NewState::default()))))
    }

    /// A backfilled record, evaluated as it stands: the plan (without adding anyone the record
    /// lists as following already: they are not autofollow's), the ledger changes, the rules
    /// matched and the state the record leaves; `None` when it is not a record the rules read.
    async fn backfilled(
        &self,
        decided: &mut Decided,
        record: &serde_json::Value,
        at: &mut Step1<'_>,
    ) -> Result<Result<Option<Made>, Ending>, StoreError> {
        let Some(mut event) = latest(BodyKind::App, &record.to_string()) else {
            return Ok(Ok(None));
        };
        let evaluation = match self.as_it_stands(decided, &mut event, true, at).await? {
            Ok(e) => e,
            Err(ending) => return Ok(Err(ending)),
        };
        let subject = match event.event_type.subject() {
            Subject::Contact => None,
            _ => event.opportunity_id.clone(),
        };
        let matched = evaluation.matched.clone();
        let verdicts = Verdicts {
            evaluated: vec![(subject, event.event_type, evaluation)],
            gone: Vec::new(),
        };
        let (mut plan, ledger) = decided.ownership.reapply(at.rules, &verdicts);
        let following = record
            .get("followers")
            .and_then(serde_json::Value::as_array);
        let following = |u: &UserId| following.is_some_and(|f| f.iter().any(|v| v == u.as_str()));
        plan.add.retain(|e| !following(&e.user));
        let assigned = event.assignment(|_| None);
        let state = super::decide::leave(decided, &event, assigned, at.previous);
        Ok(Ok(Some((plan, ledger, matched, state))))
    }

    /// Each record's latest stored event before event `before`, evaluated as it stands (no
    /// change since: the tags, stage and owner it left), for `reapply`.
    async fn verdicts(
        &self,
        decided: &Decided,
        before: i64,
        at: &Step1<'_>,
    ) -> Result<Result<Verdicts, Ending>, StoreError> {
        let (location, contact) = (&decided.location, &decided.contact);
        let bodies = self
            .store
            .latest_events(location, contact, before, LATEST)
            .await?;
        let mut seen: HashSet<Option<OpportunityId>> = HashSet::new();
        let mut verdicts = Verdicts::default();
        for (kind, body) in bodies {
            let Some(mut event) = latest(kind, &body) else {
                continue;
            };
            if event.event_type == EventType::ContactDelete {
                break; // the contact is gone: nothing holds for it
            }
            let subject = match event.event_type.subject() {
                Subject::Contact => None,
                _ => event.opportunity_id.clone(),
            };
            if !seen.insert(subject.clone()) {
                continue;
            }
            if event.event_type == EventType::OpportunityDelete {
                verdicts.gone.extend(subject);
                continue;
            }
            let evaluation = match self.as_it_stands(decided, &mut event, false, at).await? {
                Ok(e) => e,
                Err(ending) => return Ok(Err(ending)),
            };
            verdicts
                .evaluated
                .push((subject, event.event_type, evaluation));
        }
        Ok(Ok(verdicts))
    }

    /// The rules' evaluation of `event` as it stands, nothing changed since (no moment
    /// condition holds): the contact's tags as known (`fresh`: the event's own, when it carries
    /// them, as a record just read from GoHighLevel does; else the ones on record), its own
    /// stage, its record's owner. A pool it adds from deals the contact a member as an event
    /// would ([`Worker::deal`]): kept, else a turn by `at.turns`.
    pub(super) async fn as_it_stands(
        &self,
        decided: &Decided,
        event: &mut Event,
        fresh: bool,
        at: &Step1<'_>,
    ) -> Result<Result<Evaluation, Ending>, StoreError> {
        let mut known = super::decide::Previous {
            tags: at.previous.tags.clone(),
            assigned: at.previous.assigned.clone(),
            opportunities: at.previous.opportunities.clone(),
        };
        let mut steady = self.before(decided, event, &mut known).await?;
        if steady.tags.is_some() && !(fresh && event.tags.is_some()) {
            event.tags.clone_from(&steady.tags);
        }
        steady.tags.clone_from(&event.tags);
        steady.stage = event.stage_id.clone().or_else(|| event.stage_name.clone());
        if let (true, Some(owner)) = (fresh, event.assignment(|_| None)) {
            steady.assigned = Some(owner);
        }
        let secret = at.token.map(|t| &t.secret);
        let stage = steady.stage.as_deref();
        let needs = (stage, &at.rules.target_emails(event)[..]);
        let resolver = match self.lookups.resolve(&self.ghl, event, needs, secret).await {
            Ok(r) => r,
            Err(e) => return Ok(Err(Ending::from_lookup(e))),
        };
        let mut evaluation = at.rules.evaluate(event, &steady, &resolver);
        let contact = (&decided.location, &decided.contact);
        let how = (at.token, at.turns);
        match self
            .deal(&mut evaluation, contact, &decided.ownership, how)
            .await?
        {
            Ok(_) => Ok(Ok(evaluation)),
            Err(ending) => Ok(Err(ending)),
        }
    }
}

/// A stored body as `reapply` reads it: an event about the contact or an opportunity
/// (appointments, tasks, notes and messages say nothing of either); `None` otherwise.
fn latest(kind: BodyKind, body: &str) -> Option<Box<Event>> {
    match event::parse(kind, body.as_bytes()) {
        Ok(Parsed::Event(e)) => match e.event_type.subject() {
            Subject::Contact | Subject::Opportunity | Subject::Workflow => Some(e),
            Subject::Appointment | Subject::Activity => None,
        },
        _ => None,
    }
}

impl Worker {
    /// Runs `job` over its contacts: previews each (what its task would do now), and unless
    /// `dry_run`, queues a task for each contact that changes. The service's worker carries
    /// the tasks out in each contact's order, working each change out again as it runs.
    pub async fn maintain(&self, job: &Job, dry_run: bool) -> Result<Report, StoreError> {
        let rules = self.rules.current();
        let contacts = match job {
            Job::Reapply { location } => self.store.known_contacts(location.as_ref()).await?,
            Job::Undo { scope, location } => {
                self.store.ledger_contacts(location.as_ref(), scope).await?
            }
        };
        let mut report = Report {
            job: match job {
                Job::Reapply { .. } => "reapply".to_owned(),
                Job::Undo { scope, .. } => format!("undo {}", scope.describe()),
            },
            rules_version: rules.version().to_owned(),
            dry_run,
            contacts: contacts.len(),
            ..Report::default()
        };
        let turns = tokio::sync::Mutex::default();
        for (location, contact) in contacts {
            let task = TaskBody {
                task: job.task(rules.version()),
                location_id: location.clone(),
                contact_id: contact.clone(),
            };
            match self.preview(&task, &turns).await? {
                Ok(plan) if plan.is_empty() => {}
                Ok(plan) => {
                    report.count(Change::new(location, contact, &plan));
                    if !dry_run {
                        self.queue(&task).await?;
                        report.queued += 1;
                    }
                }
                Err(why) => report.problems.push(format!("contact {contact}: {why}")),
            }
        }
        if matches!(job, Job::Reapply { .. }) {
            let kept = Report {
                changes: Vec::new(),
                ..report.clone()
            };
            *self
                .last_reapply
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(kept);
        }
        Ok(report)
    }

    /// The store this worker works on.
    pub fn store(&self) -> &dyn crate::store::Store {
        self.store.as_ref()
    }

    /// The last reapply worked out by this worker (its summary; no list of changes).
    pub fn last_reapply(&self) -> Option<Report> {
        self.last_reapply
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// What `task` would do now: the plan its decision would make (or why it cannot be
    /// worked out now). Pools deal from `turns`, which counts nothing in the store.
    pub async fn preview(
        &self,
        task: &TaskBody,
        turns: &tokio::sync::Mutex<Dealer>,
    ) -> Result<Result<Plan, String>, StoreError> {
        let token = self.access.token(&task.location_id).await.ok();
        let claimed = Claimed {
            id: i64::MAX,
            location_id: task.location_id.as_str().to_owned(),
            contact_id: task.contact_id.as_str().to_owned(),
            kind: BodyKind::Task,
            body: task.to_json(),
            attempt: 1,
            received_at: SystemTime::now(),
            lease_owner: self.owner.clone(),
        };
        let rules = self.rules.current();
        let steps = [(0, Step::Task(task.clone()))];
        let contact = self
            .store
            .contact_snapshot(&task.location_id, &task.contact_id)
            .await?;
        let group = [claimed];
        let turns = Turns::Preview(turns);
        let decided = self.decide(&group, &steps, (&rules, token.as_ref()), &contact, turns);
        match decided.await? {
            Ok(decided) => Ok(Ok(decided.net)),
            Err(Ending::Attempt { error, .. }) => Ok(Err(error.unwrap_or_default())),
            Err(Ending::Deferred(wait)) => Ok(Err(format!(
                "the location's rate budget is spent for {}",
                humantime::format_duration(wait)
            ))),
            Err(Ending::Lost) => Ok(Err("lost".to_owned())),
        }
    }

    /// Queues `task` in its contact's queue, due now.
    pub(super) async fn queue(&self, task: &TaskBody) -> Result<(), StoreError> {
        self.store
            .insert_event(task.queued(), std::time::Duration::ZERO)
            .await?;
        self.wake.notify_one();
        Ok(())
    }
}

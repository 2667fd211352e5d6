//! The ownership ledger in the decide phase: which followers autofollow itself added, and
//! for which rules. It decides three things the rules alone cannot:
//!
//! - A removal that does not name the user itself (`assigned_user`, `previous_assigned_user`,
//!   a while-matching rule that stopped holding) applies only to a follower autofollow added.
//!   Followers people added by hand are left alone.
//! - A `follow: while_matching` rule keeps the users it added while it holds. It is checked
//!   again on later events of what made it hold (the opportunity, or the contact); when it no
//!   longer holds (or no longer adds the user: an owner change), its row ends, and a user no
//!   row keeps any more is removed, unless this event's rules add them.
//! - Which rows to record. An add is recorded only for a user autofollow owned already or
//!   that its call actually added ([`Ownership::keep_added`], after the calls).
//!
//! A rule whose verdict is not known for the event keeps its rows: one that is gone or
//! disabled (a rule change is `reapply`'s to act on), one whose `events` leave this event out,
//! one after a `stop`.

use std::collections::HashSet;

use chrono::NaiveDate;

use crate::model::event::{Event, EventType, Subject};
use crate::model::ids::{OpportunityId, UserId};
use crate::model::plan::{Follow, Plan, PlanEntry};
use crate::model::task::UndoScope;
use crate::rules::deal::Dealer;
use crate::rules::{Evaluation, Rule, RuleSet, UserRef};
use crate::store::{LedgerChange, Owned};

/// One live ledger row.
#[derive(Clone, Debug)]
struct Row {
    user: UserId,
    rule: String,
    follow: Follow,
    subject: Option<OpportunityId>,
}

/// The contact's ledger as the group's events are decided in order.
#[derive(Debug, Default)]
pub(super) struct Ownership {
    rows: Vec<Row>,
    /// Users autofollow owned when the group started.
    at_start: HashSet<UserId>,
    /// Users drift repair found removed by hand (and nothing owns since): a task
    /// (`reapply`, a backfill, drift repair) does not add them back; a new event may.
    hand_removed: HashSet<UserId>,
}

impl Ownership {
    /// The user autofollow keeps following the contact for `rule` among those `member`
    /// accepts (a pool's pick, kept: re-evaluations never deal again).
    fn kept(&self, rule: &str, member: impl Fn(&UserId) -> bool) -> Option<UserId> {
        let row = self.rows.iter().find(|r| r.rule == rule && member(&r.user));
        row.map(|r| r.user.clone())
    }

    /// Gives each pool pick of `evaluation` the member autofollow already keeps following
    /// the contact for the rule (sticky): re-evaluations never deal again, and a kept member
    /// never looks dropped. The picks left need a turn.
    pub(super) fn keep_picks(&self, evaluation: &mut Evaluation) {
        for (rule, pool) in std::mem::take(&mut evaluation.picks) {
            match self.kept(&rule, |u| pool.has(u)) {
                Some(user) => {
                    let label = format!("{user} (pool {}: kept)", pool.name);
                    evaluation.pick(&rule, user, label);
                }
                None => evaluation.picks.push((rule, pool)),
            }
        }
    }

    pub(super) fn new(owned: Vec<Owned>) -> Ownership {
        let at_start = owned.iter().map(|o| o.user.clone()).collect();
        let rows = owned
            .into_iter()
            .map(|o| Row {
                user: o.user,
                rule: o.rule,
                follow: o.follow,
                subject: o.subject,
            })
            .collect();
        Ownership {
            rows,
            at_start,
            hand_removed: HashSet::new(),
        }
    }

    /// Takes note of the users `all` (every row, ended ones included) shows removed by hand
    /// and not owned since.
    pub(super) fn decline(&mut self, all: &[Owned]) {
        for o in all {
            if o.removed_by.as_deref() == Some("hand") && !self.owns(&o.user) {
                self.hand_removed.insert(o.user.clone());
            }
        }
    }

    /// Drift repair: the users autofollow owns that GoHighLevel no longer lists as
    /// `following` were removed by hand; their rows end, marked so.
    pub(super) fn confirm(&mut self, following: &[UserId]) -> Vec<LedgerChange> {
        let mut gone: Vec<UserId> = Vec::new();
        for r in &self.rows {
            if !following.contains(&r.user) && !gone.contains(&r.user) {
                gone.push(r.user.clone());
            }
        }
        self.rows.retain(|r| !gone.contains(&r.user));
        self.hand_removed.extend(gone.iter().cloned());
        gone.into_iter()
            .map(|user| LedgerChange::RemovedByHand { user })
            .collect()
    }

    fn owns(&self, user: &UserId) -> bool {
        self.rows.iter().any(|r| &r.user == user)
    }

    /// The plan to carry out for one event and the ledger changes it makes.
    pub(super) fn decide(
        &mut self,
        rules: &RuleSet,
        event: &Event,
        evaluation: &Evaluation,
    ) -> (Plan, Vec<LedgerChange>) {
        let subject = subject(event);
        let ended = self.ended(rules, event, subject.as_ref(), evaluation);
        let mut plan = evaluation.plan.clone();
        let owned_before: HashSet<UserId> = self.rows.iter().map(|r| r.user.clone()).collect();
        self.rows.retain(|r| {
            !ended
                .iter()
                .any(|(u, rule)| &r.user == u && &r.rule == rule)
        });
        for (user, rule) in &ended {
            let kept = self.owns(user) || plan.add.iter().any(|e| &e.user == user);
            if !kept && !plan.remove.iter().any(|e| &e.user == user) {
                plan.remove.push(PlanEntry {
                    user: user.clone(),
                    label: format!("{user} (rule {rule} no longer holds)"),
                    rule: rule.clone(),
                    only_if_added: true,
                });
            }
        }
        plan.remove
            .retain(|e| !e.only_if_added || owned_before.contains(&e.user));
        let mut changes = Vec::new();
        for (user, rule) in ended {
            changes.push(LedgerChange::Ended {
                user,
                rule: Some(rule),
            });
        }
        self.record(rules, evaluation, &plan, subject.flatten(), &mut changes);
        (plan, changes)
    }

    /// The live while-matching rows this event shows no longer hold: (user, rule).
    fn ended(
        &self,
        rules: &RuleSet,
        event: &Event,
        subject: Option<&Option<OpportunityId>>,
        evaluation: &Evaluation,
    ) -> Vec<(UserId, String)> {
        let Some(subject) = subject else {
            return Vec::new();
        };
        let rechecked = self
            .rows
            .iter()
            .filter(|r| r.follow == Follow::WhileMatching && &r.subject == subject);
        rechecked
            .filter(|r| {
                verdict_known(rules, &r.rule, event.event_type, evaluation)
                    && !evaluation.adds(&r.rule, &r.user)
            })
            .map(|r| (r.user.clone(), r.rule.clone()))
            .collect()
    }

    /// Records the plan in the rows: who the rules add (and why), who is removed.
    fn record(
        &mut self,
        rules: &RuleSet,
        evaluation: &Evaluation,
        plan: &Plan,
        subject: Option<OpportunityId>,
        changes: &mut Vec<LedgerChange>,
    ) {
        for entry in &plan.add {
            let by = evaluation.adds.iter().filter(|(_, u)| u == &entry.user);
            for (rule, user) in by {
                let follow = rules.rule(rule).map_or(Follow::OnMatch, |(_, r)| r.follow);
                let subject = (follow == Follow::WhileMatching)
                    .then(|| subject.clone())
                    .flatten();
                let row = Row {
                    user: user.clone(),
                    rule: rule.clone(),
                    follow,
                    subject,
                };
                changes.extend(self.start(row, rules.version()));
            }
        }
        for entry in &plan.remove {
            self.rows.retain(|r| r.user != entry.user);
            changes.push(LedgerChange::Ended {
                user: entry.user.clone(),
                rule: None,
            });
        }
    }

    /// Starts (or changes) a row: the ledger change, `None` when it is recorded as it is.
    fn start(&mut self, row: Row, version: &str) -> Option<LedgerChange> {
        let same = |r: &Row| r.user == row.user && r.rule == row.rule;
        if self
            .rows
            .iter()
            .any(|r| same(r) && r.follow == row.follow && r.subject == row.subject)
        {
            return None;
        }
        self.rows.retain(|r| !same(r));
        let change = LedgerChange::Added {
            user: row.user.clone(),
            rule: row.rule.clone(),
            follow: row.follow,
            subject: row.subject.clone(),
            rules_version: version.to_owned(),
        };
        self.rows.push(row);
        Some(change)
    }

    /// After the calls: an add is recorded only for a user autofollow owned when the group
    /// started or that its call added (`added`), never for a follower someone added by hand.
    pub(super) fn keep_added(&self, changes: &mut Vec<LedgerChange>, added: &HashSet<UserId>) {
        changes.retain(|c| match c {
            LedgerChange::Added { user, .. } => {
                self.at_start.contains(user) || added.contains(user)
            }
            LedgerChange::Ended { .. } | LedgerChange::RemovedByHand { .. } => true,
        });
    }
}

/// What the rules and the ledger decide for one event on its own, without a store or calls
/// (`autofollow test`, `simulate`): the evaluation and the plan. `owned`: (user, rule) pairs
/// autofollow keeps following the contact (the record the event is about, for
/// while-matching rules). Pools deal from `dealing`'s sequence, on its day (a member kept
/// by `owned` stays).
pub fn decide_alone(
    rules: &RuleSet,
    (event, previous): (&Event, &crate::model::plan::PreviousState),
    owned: &[(UserId, String)],
    resolver: &dyn crate::rules::Resolver,
    (dealer, today): (&mut Dealer, NaiveDate),
) -> (Evaluation, Plan) {
    let subject = subject(event).flatten();
    let rows = owned.iter().map(|(user, rule)| {
        let follow = rules.rule(rule).map_or(Follow::OnMatch, |(_, r)| r.follow);
        Owned {
            user: user.clone(),
            rule: rule.clone(),
            follow,
            subject: (follow == Follow::WhileMatching)
                .then(|| subject.clone())
                .flatten(),
            rules_version: rules.version().to_owned(),
            event_id: 0,
            added_at: 0,
            removed_at: None,
            removed_event_id: None,
            removed_by: None,
        }
    });
    let mut evaluation = rules.evaluate(event, previous, resolver);
    let mut ownership = Ownership::new(rows.collect());
    ownership.keep_picks(&mut evaluation);
    let at = (&event.location_id, &event.contact_id);
    dealer.deal(&mut evaluation, at, today, &[]);
    let (plan, _) = ownership.decide(rules, event, &evaluation);
    (evaluation, plan)
}

/// What an event re-checks while-matching rules of: `Some(Some(opportunity))`, `Some(None)`
/// (the contact), or `None` (appointments, tasks, notes, messages say nothing of either).
fn subject(event: &Event) -> Option<Option<OpportunityId>> {
    match event.event_type.subject() {
        Subject::Opportunity => Some(event.opportunity_id.clone()),
        Subject::Contact => Some(None),
        Subject::Workflow => Some(event.opportunity_id.clone()),
        Subject::Appointment | Subject::Activity => None,
    }
}

/// What re-evaluating a contact's latest state found, per record (`None`: the contact; an
/// opportunity): the verdicts `reapply` acts on.
#[derive(Debug, Default)]
pub(super) struct Verdicts {
    /// Each record's latest event type and the rules' evaluation of it as it stands.
    pub evaluated: Vec<(Option<OpportunityId>, EventType, Evaluation)>,
    /// Opportunities whose latest event deleted them.
    pub gone: Vec<OpportunityId>,
}

impl Verdicts {
    /// Whether `rule` adds `user` for the record `subject` (`None`: any record): `None`
    /// when not known (the record was not evaluated, or the rule's verdict is not known for
    /// its latest event).
    fn holds(
        &self,
        rules: &RuleSet,
        rule: &str,
        user: &UserId,
        subject: Option<&Option<OpportunityId>>,
    ) -> Option<bool> {
        if let Some(Some(o)) = subject {
            if self.gone.contains(o) {
                return Some(false);
            }
        }
        let known = self
            .evaluated
            .iter()
            .filter(|(s, ..)| subject.is_none_or(|want| s == want))
            .filter(|(_, t, e)| verdict_known(rules, rule, *t, e));
        let mut any_known = false;
        for (_, _, evaluation) in known {
            if evaluation.adds(rule, user) {
                return Some(true);
            }
            any_known = true;
        }
        any_known.then_some(false)
    }
}

/// Whether a rule's verdict is known for an event of type `t`: it exists, is enabled, its
/// `events` include `t`, and no earlier rule's `stop` ended the evaluation before it.
fn verdict_known(rules: &RuleSet, rule: &str, t: EventType, evaluation: &Evaluation) -> bool {
    match rules.rule(rule) {
        Some((at, r)) => {
            let filtered = r.events.as_ref().is_some_and(|e| !e.contains(&t));
            let stopped = evaluation.stopped_at.is_some_and(|s| at > s);
            r.enabled && !filtered && !stopped
        }
        None => false,
    }
}

/// The users a rule names itself in `add` (aliases and ids); whether it also adds a
/// user decided by the event (`assigned_user`, `previous_assigned_user`).
fn named_adds(rule: &Rule) -> (Vec<(UserId, String)>, bool) {
    let mut named = Vec::new();
    let mut dynamic = false;
    for target in &rule.add {
        match target {
            UserRef::Alias { id, .. } | UserRef::Id(id) => {
                named.push((id.clone(), target.to_string()))
            }
            _ => dynamic = true,
        }
    }
    (named, dynamic)
}

/// A ledger row a task starts: (user, rule, how the rule named the user, follow, subject).
type Start = (UserId, String, String, Follow, Option<OpportunityId>);

impl Ownership {
    /// `reapply`: the rows the rules no longer keep end (a rule gone or disabled, an
    /// on-match rule that no longer names the user, a while-matching rule whose record's
    /// latest state no longer makes it hold); the (rule, user) pairs the rules want now and
    /// the ledger lacks start (what the latest states match, and an on-match rule's named
    /// users where it added someone: the replacement of a person). Rows whose verdict is not
    /// known are kept.
    pub(super) fn reapply(
        &mut self,
        rules: &RuleSet,
        verdicts: &Verdicts,
    ) -> (Plan, Vec<LedgerChange>) {
        let mut ends = Vec::new();
        let mut starts: Vec<Start> = Vec::new();
        for row in &self.rows {
            let Some((_, rule)) = rules.rule(&row.rule).filter(|(_, r)| r.enabled) else {
                ends.push((row.user.clone(), row.rule.clone(), "is gone".to_owned()));
                continue;
            };
            let (named, dynamic) = named_adds(rule);
            let keeps = match rule.follow {
                Follow::OnMatch => Some(dynamic || named.iter().any(|(u, _)| u == &row.user)),
                Follow::WhileMatching => {
                    let on = (row.follow == Follow::WhileMatching).then_some(&row.subject);
                    verdicts.holds(rules, &row.rule, &row.user, on)
                }
            };
            if keeps == Some(false) {
                ends.push((
                    row.user.clone(),
                    row.rule.clone(),
                    "no longer keeps them".to_owned(),
                ));
            }
            // The on-match rule added someone here: the users it names now follow (whom it
            // named before and names no longer end above: a person replaced).
            if rule.follow == Follow::OnMatch {
                let replaced = named
                    .into_iter()
                    .map(|(u, label)| (u, row.rule.clone(), label, Follow::OnMatch, None));
                starts.extend(replaced);
            }
        }
        for (subject, _, evaluation) in &verdicts.evaluated {
            for (rule, user) in &evaluation.adds {
                let follow = rules.rule(rule).map_or(Follow::OnMatch, |(_, r)| r.follow);
                let on = (follow == Follow::WhileMatching)
                    .then(|| subject.clone())
                    .flatten();
                let label = evaluation
                    .plan
                    .add
                    .iter()
                    .find(|e| &e.user == user)
                    .map_or_else(|| user.to_string(), |e| e.label.clone());
                starts.push((user.clone(), rule.clone(), label, follow, on));
            }
        }
        self.apply(ends, starts, rules.version())
    }

    /// `undo`: the live rows `scope` added end (their users removed unless another row keeps
    /// them); the rows it ended start again (their users added back) unless the user is
    /// owned still. `all`: every row of the contact, ended ones included.
    pub(super) fn undo(&mut self, scope: &UndoScope, all: &[Owned]) -> (Plan, Vec<LedgerChange>) {
        let added_in = |o: &Owned| match scope {
            UndoScope::Rule(rule) => &o.rule == rule,
            UndoScope::Event(id) => o.event_id == *id,
            UndoScope::Since(at) => o.added_at >= *at,
        };
        let ended_in = |o: &Owned| match scope {
            UndoScope::Rule(_) => false,
            UndoScope::Event(id) => o.removed_event_id == Some(*id),
            UndoScope::Since(at) => o.removed_at.is_some_and(|r| r >= *at) && o.added_at < *at,
        };
        let why = format!("undo of {}", scope.describe());
        let ends = all.iter().filter(|o| o.removed_at.is_none() && added_in(o));
        let ends: Vec<_> = ends
            .map(|o| (o.user.clone(), o.rule.clone(), why.clone()))
            .collect();
        let live: HashSet<&UserId> = all
            .iter()
            .filter(|o| o.removed_at.is_none())
            .map(|o| &o.user)
            .collect();
        let restores = all
            .iter()
            .filter(|o| ended_in(o) && !live.contains(&o.user));
        let starts = restores.map(|o| {
            (
                o.user.clone(),
                o.rule.clone(),
                format!("{} ({why})", o.user),
                o.follow,
                o.subject.clone(),
            )
        });
        let mut rules_version = String::new();
        if let Some(o) = all.iter().find(|o| ended_in(o)) {
            rules_version.clone_from(&o.rules_version);
        }
        self.apply(ends, starts.collect(), &rules_version)
    }

    /// Ends rows and starts others: the plan (a user no row keeps any more is removed, a
    /// user no row kept before is added) and the ledger changes.
    fn apply(
        &mut self,
        ends: Vec<(UserId, String, String)>,
        starts: Vec<Start>,
        version: &str,
    ) -> (Plan, Vec<LedgerChange>) {
        let mut plan = Plan::default();
        let mut changes = Vec::new();
        let owned_before: HashSet<UserId> = self.rows.iter().map(|r| r.user.clone()).collect();
        for (user, rule, why) in ends {
            self.rows.retain(|r| !(r.user == user && r.rule == rule));
            changes.push(LedgerChange::Ended {
                user: user.clone(),
                rule: Some(rule.clone()),
            });
            if !plan.remove.iter().any(|e| e.user == user) {
                let label = format!("{user} (rule {rule} {why})");
                plan.remove.push(PlanEntry {
                    user,
                    label,
                    rule,
                    only_if_added: true,
                });
            }
        }
        for (user, rule, label, follow, subject) in starts {
            if self.hand_removed.contains(&user) {
                continue;
            }
            let row = Row {
                user: user.clone(),
                rule: rule.clone(),
                follow,
                subject,
            };
            let Some(change) = self.start(row, version) else {
                continue;
            };
            changes.push(change);
            if !owned_before.contains(&user) && !plan.add.iter().any(|e| e.user == user) {
                plan.add.push(PlanEntry {
                    user,
                    label,
                    rule,
                    only_if_added: false,
                });
            }
        }
        plan.remove.retain(|e| !self.owns(&e.user));
        for e in &plan.remove {
            changes.push(LedgerChange::Ended {
                user: e.user.clone(),
                rule: None,
            });
        }
        (plan, changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "9hTnVvSr1Q2ZyE5kHfXm";
    const B: &str = "4kLmPq7Rt2WvXy9ZaBcD";

    fn rules(yaml: &str) -> RuleSet {
        let text = format!("users:\n  alice: {A}\n  bob: {B}\nrules:\n{yaml}");
        RuleSet::from_sources(&[("rules.yaml", text)]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn user(id: &str) -> UserId {
        UserId::parse(id).unwrap_or_else(|e| panic!("{e}"))
    }

    fn row(id: &str, rule: &str, follow: Follow, at: i64, removed: Option<i64>) -> Owned {
        Owned {
            user: user(id),
            rule: rule.to_owned(),
            follow,
            subject: None,
            rules_version: "v1".to_owned(),
            event_id: at,
            added_at: at,
            removed_at: removed,
            removed_event_id: removed,
            removed_by: removed.map(|_| "autofollow".to_owned()),
        }
    }

    fn users(entries: &[PlanEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.user.as_str()).collect()
    }

    /// The contact's record evaluated: `rule` adds `who` (or nothing holds).
    fn verdict(adds: &[(&str, &str)]) -> Verdicts {
        let evaluation = Evaluation {
            adds: adds
                .iter()
                .map(|(r, u)| ((*r).to_owned(), user(u)))
                .collect(),
            ..Evaluation::default()
        };
        Verdicts {
            evaluated: vec![(None, EventType::ContactTagUpdate, evaluation)],
            gone: Vec::new(),
        }
    }

    #[test]
    fn reapply_replaces_a_person_ends_gone_rules_and_keeps_what_it_cannot_judge() {
        let set = rules(
            "  - name: leads\n    add: [bob]\n  - name: vip\n    when: {has_tag: vip}\n    add: [alice]\n    follow: while_matching\n    events: [ContactUpdate]\n",
        );
        let owned = vec![
            row(A, "leads", Follow::OnMatch, 1, None),
            row(B, "gone-rule", Follow::OnMatch, 1, None),
            row(A, "vip", Follow::WhileMatching, 1, None),
        ];
        let mut ownership = Ownership::new(owned);
        // The latest event is a ContactTagUpdate: vip's `events` leave it out, so its verdict
        // is not known and its row stays; leads now names bob instead of alice.
        let (plan, changes) = ownership.reapply(&set, &verdict(&[]));
        assert_eq!(
            users(&plan.add),
            Vec::<&str>::new(),
            "bob is owned already (gone-rule)"
        );
        assert_eq!(
            users(&plan.remove),
            Vec::<&str>::new(),
            "alice is kept by vip"
        );
        let ended: Vec<_> = changes
            .iter()
            .filter_map(|c| match c {
                LedgerChange::Ended { user, rule } => Some((user.as_str(), rule.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            ended,
            [
                (A, Some("leads".to_owned())),
                (B, Some("gone-rule".to_owned()))
            ]
        );
        assert!(changes.iter().any(|c| matches!(c, LedgerChange::Added { user, rule, .. } if user.as_str() == B && rule == "leads")));
    }

    #[test]
    fn undo_since_removes_what_was_added_after_and_restores_what_was_removed_after() {
        let all = vec![
            row(A, "r", Follow::OnMatch, 100, None), // added after: removed
            row(B, "r", Follow::OnMatch, 10, Some(200)), // added before, removed after: back
        ];
        let mut ownership = Ownership::new(vec![all[0].clone()]);
        let (plan, _) = ownership.undo(&UndoScope::Since(50), &all);
        assert_eq!((users(&plan.add), users(&plan.remove)), (vec![B], vec![A]));
        let both = vec![row(A, "r", Follow::OnMatch, 100, Some(150))];
        let (plan, _) = Ownership::new(Vec::new()).undo(&UndoScope::Since(50), &both);
        assert!(plan.is_empty(), "added and removed after: nothing to undo");
    }

    #[test]
    fn a_follower_removed_by_hand_is_not_added_back_by_a_task() {
        let set = rules(
            "  - name: vip\n    when: {has_tag: vip}\n    add: [alice]\n    follow: while_matching\n",
        );
        let mut ownership = Ownership::new(vec![row(A, "vip", Follow::WhileMatching, 1, None)]);
        let removed = ownership.confirm(&[user(B)]);
        assert_eq!(removed, [LedgerChange::RemovedByHand { user: user(A) }]);
        let (plan, changes) = ownership.reapply(&set, &verdict(&[("vip", A)]));
        assert!(
            plan.is_empty() && changes.is_empty(),
            "{plan:?} {changes:?}"
        );
        let mut later = Ownership::new(Vec::new());
        let mut ended = row(A, "vip", Follow::WhileMatching, 1, Some(2));
        ended.removed_by = Some("hand".to_owned());
        later.decline(&[ended]);
        let (plan, _) = later.reapply(&set, &verdict(&[("vip", A)]));
        assert!(plan.is_empty(), "remembered from the store");
    }
}

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

use crate::model::event::{Event, Subject};
use crate::model::ids::{OpportunityId, UserId};
use crate::model::plan::{Follow, Plan, PlanEntry};
use crate::rules::{Evaluation, RuleSet};
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
}

impl Ownership {
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
        Ownership { rows, at_start }
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
        let known = |rule: &str| match rules.rule(rule) {
            Some((at, r)) => {
                let filtered = r
                    .events
                    .as_ref()
                    .is_some_and(|e| !e.contains(&event.event_type));
                let stopped = evaluation.stopped_at.is_some_and(|s| at > s);
                r.enabled && !filtered && !stopped
            }
            None => false,
        };
        rechecked
            .filter(|r| known(&r.rule) && !evaluation.adds(&r.rule, &r.user))
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
                let same = |r: &Row| &r.user == user && &r.rule == rule;
                if self
                    .rows
                    .iter()
                    .any(|r| same(r) && r.follow == follow && r.subject == subject)
                {
                    continue; // already recorded as it is
                }
                self.rows.retain(|r| !same(r));
                self.rows.push(Row {
                    user: user.clone(),
                    rule: rule.clone(),
                    follow,
                    subject: subject.clone(),
                });
                changes.push(LedgerChange::Added {
                    user: user.clone(),
                    rule: rule.clone(),
                    follow,
                    subject,
                    rules_version: rules.version().to_owned(),
                });
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

    /// After the calls: an add is recorded only for a user autofollow owned when the group
    /// started or that its call added (`added`), never for a follower someone added by hand.
    pub(super) fn keep_added(&self, changes: &mut Vec<LedgerChange>, added: &HashSet<UserId>) {
        changes.retain(|c| match c {
            LedgerChange::Added { user, .. } => {
                self.at_start.contains(user) || added.contains(user)
            }
            LedgerChange::Ended { .. } => true,
        });
    }
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

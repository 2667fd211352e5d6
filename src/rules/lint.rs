//! Rules that load but are wrong: warnings `check` prints (errors with `--strict`). A rule
//! whose `events` leave out every event carrying what a condition reads can never match; a
//! tag transition cannot hold on events that carry no tags; an unconditional `stop` hides the
//! rules after it; more users than GoHighLevel's follower limit can be added to one contact.

use std::collections::BTreeSet;

use super::load::{Diagnostic, MAX_FOLLOWERS, Severity};
use super::model::{Condition, Rule, UserRef};
use crate::model::event::{EventType, Subject};

/// The warnings for a loaded, valid rule set.
pub(crate) fn lint(rules: &[Rule]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for rule in rules.iter().filter(|r| r.enabled) {
        never_matching(rule, &mut out);
    }
    unreachable_after_stop(rules, &mut out);
    too_many_followers(rules, &mut out);
    out
}

fn warn(rule: &Rule, message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Warning,
        file: rule.origin.file.clone(),
        line: Some(rule.origin.line),
        column: Some(rule.origin.column),
        message,
    }
}

/// The keys of the conditions that must all hold (not those inside `any`, one alternative
/// of several, or `not`, which holds when its condition cannot).
fn keys(conditions: &[Condition], out: &mut Vec<&'static str>) {
    for c in conditions {
        if !matches!(c, Condition::Any(_) | Condition::Not(_)) {
            out.push(c.key());
        }
    }
}

/// What a condition needs the event to be about, by subject: (needs, described).
fn needs(key: &str) -> Option<(&'static [Subject], &'static str)> {
    const RECORD: &[Subject] = &[Subject::Opportunity, Subject::Workflow];
    const TAGS: &[Subject] = &[Subject::Contact, Subject::Workflow];
    match key {
        "pipeline" | "stage" | "stage_entered" | "stage_left" | "status" => {
            Some((RECORD, "an opportunity or workflow event"))
        }
        "workflow" => Some((&[Subject::Workflow], "a workflow event")),
        "tag_added" | "tag_removed" => Some((TAGS, "an event that carries the contact's tags")),
        _ => None,
    }
}

/// A condition reading what none of the rule's `events` carries.
fn never_matching(rule: &Rule, out: &mut Vec<Diagnostic>) {
    let Some(events) = &rule.events else {
        return;
    };
    let mut found = Vec::new();
    keys(&rule.when.0, &mut found);
    found.sort_unstable();
    found.dedup();
    for key in found {
        let Some((subjects, what)) = needs(key) else {
            continue;
        };
        if !events.iter().any(|e| subjects.contains(&e.subject())) {
            let names: Vec<&str> = events.iter().map(|e: &EventType| e.name()).collect();
            let message = format!(
                "rule `{}` can never match: `{key}` needs {what}, but its `events` ({}) include none",
                rule.name,
                names.join(", ")
            );
            out.push(warn(rule, message));
        }
    }
}

/// An enabled rule that stops every event (no condition, no filter) hides all after it.
fn unreachable_after_stop(rules: &[Rule], out: &mut Vec<Diagnostic>) {
    let stops = |r: &Rule| {
        r.enabled && r.stop && r.when.0.is_empty() && r.events.is_none() && r.locations.is_none()
    };
    if let Some(at) = rules.iter().position(stops) {
        for later in &rules[at + 1..] {
            let message = format!(
                "rule `{}` is never evaluated: rule `{}` ({}) stops every event before it",
                later.name, rules[at].name, rules[at].origin
            );
            out.push(warn(later, message));
        }
    }
}

/// More users than GoHighLevel's follower limit reachable for one contact, over all rules.
fn too_many_followers(rules: &[Rule], out: &mut Vec<Diagnostic>) {
    let mut named = BTreeSet::new();
    let mut owner = false;
    for r in rules.iter().filter(|r| r.enabled) {
        for target in &r.add {
            match target {
                UserRef::Alias { id, .. } | UserRef::Id(id) => {
                    named.insert(id.clone());
                }
                UserRef::AssignedUser | UserRef::PreviousAssignedUser => owner = true,
            }
        }
    }
    let reachable = named.len() + usize::from(owner);
    if let (true, Some(first)) = (reachable > MAX_FOLLOWERS, rules.first()) {
        let message = format!(
            "the rules can add {reachable} different users to one contact; GoHighLevel allows at most {MAX_FOLLOWERS} followers per contact, and autofollow leaves out adds beyond that"
        );
        out.push(warn(first, message));
    }
}

//! Rules that load but are wrong: warnings `check` prints (errors with `--strict`). A rule
//! whose `events` leave out every event carrying what a condition reads can never match; a
//! tag transition cannot hold on events that carry no tags; an unconditional `stop` hides the
//! rules after it; more users than GoHighLevel's follower limit can be added to one contact;
//! a user one rule adds and a later one removes when one event can match both
//! ([`super::overlap`]), so the order decides.

use std::collections::BTreeSet;

use super::load::{Diagnostic, MAX_FOLLOWERS, Severity};
use super::model::{Condition, Rule, UserRef};
use super::overlap::exclusive;
use crate::model::event::{EventType, Subject};
use crate::model::ids::UserId;

/// The warnings for a loaded, valid rule set.
pub(crate) fn lint(rules: &[Rule]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for rule in rules.iter().filter(|r| r.enabled) {
        never_matching(rule, &mut out);
    }
    unreachable_after_stop(rules, &mut out);
    too_many_followers(rules, &mut out);
    add_remove_conflicts(rules, &mut out);
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

/// The subjects a condition needs the event to be about, if it needs one.
fn subjects(key: &str) -> Option<&'static [Subject]> {
    needs(key).map(|(subjects, _)| subjects)
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
    let mut fields = BTreeSet::new();
    for r in rules.iter().filter(|r| r.enabled) {
        for target in &r.add {
            match target {
                UserRef::Alias { id, .. } | UserRef::Id(id) => {
                    named.insert(id.clone());
                }
                UserRef::AssignedUser | UserRef::PreviousAssignedUser => owner = true,
                UserRef::Field(path) => {
                    fields.insert(path.text.clone());
                }
                UserRef::Pool(pool) => {
                    fields.insert(format!("pool {}", pool.name));
                }
                UserRef::Table { table, .. } => {
                    let entries = table.entries.iter().map(|e| &e.users);
                    let users = entries.chain(&table.default).flatten();
                    named.extend(users.filter_map(|u| match u {
                        UserRef::Alias { id, .. } | UserRef::Id(id) => Some(id.clone()),
                        _ => None,
                    }));
                }
            }
        }
    }
    let reachable = named.len() + usize::from(owner) + fields.len();
    if let (true, Some(first)) = (reachable > MAX_FOLLOWERS, rules.first()) {
        let message = format!(
            "the rules can add {reachable} different users to one contact; GoHighLevel allows at most {MAX_FOLLOWERS} followers per contact, and autofollow leaves out adds beyond that"
        );
        out.push(warn(first, message));
    }
}

/// The users a rule names in `add` (or `remove`), by id: (as written, id).
fn named(targets: &[UserRef]) -> Vec<(String, &UserId)> {
    let mut out = Vec::new();
    for u in targets {
        if let UserRef::Alias { id, .. } | UserRef::Id(id) = u {
            out.push((u.to_string(), id));
        }
    }
    out
}

/// Users one rule adds and the other removes: (user, what the earlier does).
fn opposed(earlier: &Rule, later: &Rule) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    for (a, b, verb) in [
        (&earlier.add, &later.remove, "adds"),
        (&earlier.remove, &later.add, "removes"),
    ] {
        let theirs = named(b);
        for (user, id) in named(a) {
            if theirs.iter().any(|(_, other)| *other == id) {
                out.push((user, verb));
            }
        }
    }
    out
}

/// An enabled rule adding a user and a later one removing them (or the reverse), that one
/// event can match: for that event the later rule wins, so the order decides. Not when the
/// earlier rule stops evaluation (the later one is then not evaluated), nor when the two
/// cannot hold together.
fn add_remove_conflicts(rules: &[Rule], out: &mut Vec<Diagnostic>) {
    let enabled: Vec<&Rule> = rules.iter().filter(|r| r.enabled).collect();
    for (i, earlier) in enabled.iter().enumerate() {
        for later in enabled.iter().skip(i + 1).filter(|_| !earlier.stop) {
            let users = opposed(earlier, later);
            if users.is_empty() || exclusive(earlier, later, subjects) {
                continue;
            }
            let (verb, opposite) = match users[0].1 {
                "adds" => ("removes", "adds"),
                _ => ("adds", "removes"),
            };
            let names: Vec<String> = users.iter().map(|(u, _)| format!("`{u}`")).collect();
            let (e, l) = (&earlier.name, &later.name);
            let message = format!(
                "rule `{l}` {verb} {}, whom the earlier rule `{e}` ({}) {opposite}, and one event can match both: then `{l}` wins, as the later rule. If that is meant, exclude its case from `{e}` with `not`; if not, exclude it from `{l}`",
                names.join(", "),
                earlier.origin,
            );
            out.push(warn(later, message));
        }
    }
}

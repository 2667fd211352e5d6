//! What a decision is made of: the contact's previous state that transitions compare with,
//! and the plan of followers to add and remove.

use serde::{Deserialize, Serialize};

use super::ids::UserId;

/// What the caller remembers of the contact (tags) and opportunity (stage) from their
/// previous event; transitions compare against it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PreviousState {
    /// Tags at the contact's previous event; `None` when no earlier event carried tags.
    pub tags: Option<Vec<String>>,
    /// Stage (id or name) at the opportunity's previous event; `None` when unknown.
    pub stage: Option<String>,
    /// Who the record was assigned to as its earlier events said (the opportunity for an
    /// opportunity event, else the contact): `None` when no event said; `Some(None)`:
    /// unassigned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assigned: Option<Option<UserId>>,
}

/// A previous assignee as an operator writes it (`explain --previous-assigned`, the admin
/// explain's `previous_assigned`): a user id, or `none` for unassigned.
pub fn parse_assigned(text: &str) -> Result<Option<UserId>, String> {
    match text.trim() {
        "none" => Ok(None),
        id => UserId::parse(id)
            .map(Some)
            .map_err(|e| format!("previous assignee: {e}; a user id, or `none`")),
    }
}

/// How long the users a rule adds follow the contact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Follow {
    /// Added when the rule matches, and kept (today's behaviour).
    #[default]
    OnMatch,
    /// Kept while the rule holds for the contact (or the opportunity that made it hold);
    /// removed by autofollow when a later event shows it no longer does, unless another rule
    /// keeps the user.
    WhileMatching,
}

impl Follow {
    pub fn as_str(self) -> &'static str {
        match self {
            Follow::OnMatch => "on_match",
            Follow::WhileMatching => "while_matching",
        }
    }

    pub fn parse(s: &str) -> Follow {
        match s {
            "while_matching" => Follow::WhileMatching,
            _ => Follow::OnMatch,
        }
    }
}

/// The followers one event should add and remove.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub add: Vec<PlanEntry>,
    pub remove: Vec<PlanEntry>,
}

/// One user in a plan, with the rule that decided it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanEntry {
    pub user: UserId,
    /// How the rules named the user: an alias, `assigned_user`, or the id itself.
    pub label: String,
    pub rule: String,
    /// A removal that applies only to a follower autofollow added (the rule did not name the
    /// user itself, or it is a while-matching rule that stopped holding).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub only_if_added: bool,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies a later plan on top of this one: for a user both mention, the later decision
    /// wins. This is how the plans of several events of one contact combine into one.
    pub fn merge(&mut self, later: &Plan) {
        let mut builder = PlanBuilder::default();
        let earlier = std::mem::take(self);
        for (add, entries) in [(true, earlier.add), (false, earlier.remove)] {
            for e in entries {
                builder.decide(add, e);
            }
        }
        for (add, entries) in [(true, &later.add), (false, &later.remove)] {
            for e in entries {
                builder.decide(add, e.clone());
            }
        }
        *self = builder.finish();
    }

    /// One line: `add: alice, bob; remove: carol`, or `no change`.
    pub fn summary(&self) -> String {
        let list = |entries: &[PlanEntry]| {
            entries
                .iter()
                .map(|e| e.label.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut parts = Vec::new();
        if !self.add.is_empty() {
            parts.push(format!("add: {}", list(&self.add)));
        }
        if !self.remove.is_empty() {
            parts.push(format!("remove: {}", list(&self.remove)));
        }
        if parts.is_empty() {
            "no change".to_owned()
        } else {
            parts.join("; ")
        }
    }
}

/// Builds a plan rule by rule; a later decision about a user replaces an earlier one.
#[derive(Default)]
pub(crate) struct PlanBuilder {
    /// (user, add?, entry) in first-decision order.
    decisions: Vec<(bool, PlanEntry)>,
}

impl PlanBuilder {
    pub(crate) fn decide(&mut self, add: bool, entry: PlanEntry) {
        match self
            .decisions
            .iter_mut()
            .find(|(_, e)| e.user == entry.user)
        {
            Some(slot) => *slot = (add, entry),
            None => self.decisions.push((add, entry)),
        }
    }

    pub(crate) fn finish(self) -> Plan {
        let (add, remove): (Vec<_>, Vec<_>) = self.decisions.into_iter().partition(|(a, _)| *a);
        Plan {
            add: add.into_iter().map(|(_, e)| e).collect(),
            remove: remove.into_iter().map(|(_, e)| e).collect(),
        }
    }
}

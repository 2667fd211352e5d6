//! The compiled form of a rule set: what [`super::load`] builds from YAML and
//! [`super::eval`] runs. Nothing here is parsed again at evaluation time.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use super::pattern::{Pattern, PatternSet};
use crate::model::event::EventType;
use crate::model::ids::UserId;
pub use crate::model::plan::Follow;

/// Where something was written: file, 1-based line and column.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub file: Arc<str>,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// One rule, ready to evaluate.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub description: Option<String>,
    pub enabled: bool,
    /// `None`: every event type.
    pub events: Option<Vec<EventType>>,
    /// `None`: every location.
    pub locations: Option<PatternSet>,
    pub when: Block,
    pub add: Vec<UserRef>,
    pub remove: Vec<UserRef>,
    /// How long the users it adds follow.
    pub follow: Follow,
    pub stop: bool,
    pub origin: Origin,
}

/// A user named in `add` or `remove`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserRef {
    /// A name from a `users` section, resolved at load time.
    Alias { name: String, id: UserId },
    /// A literal GoHighLevel user id.
    Id(UserId),
    /// The user the event is assigned to, if any.
    AssignedUser,
    /// Who the record was assigned to before this event, as autofollow last saw, if known.
    PreviousAssignedUser,
    /// The user a value of the event names (`{ field: path }`): a user id, or an email
    /// looked up among the location's users.
    Field(FieldPath),
    /// The users a lookup table gives for a value of the event (`{ table: name, key: path }`).
    Table { table: Arc<Table>, key: FieldPath },
    /// One member of a pool, picked by the service (`{ pool: name }`, in `add` only).
    Pool(Arc<Pool>),
}

impl UserRef {
    /// Whether the rule names the user only through the event (a remove of such a user
    /// removes only a follower autofollow added).
    pub fn is_dynamic(&self) -> bool {
        !matches!(self, UserRef::Alias { .. } | UserRef::Id(_))
    }
}

/// A pool of a rule file's `pools:` section: members with weights, each contact given one
/// (smooth weighted round robin, counted in the store), skipping members who are away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    /// (member as written, user id, weight), in file order.
    pub members: Vec<(String, UserId, u32)>,
    /// Periods members are away, inclusive dates (days of the configured time zone): (user
    /// id, from, to).
    pub away: Vec<(UserId, chrono::NaiveDate, chrono::NaiveDate)>,
    /// The user when every member is away.
    pub fallback: Option<(String, UserId)>,
    pub origin: Origin,
}

impl Pool {
    /// Whether `user` is away on `day` by the file's periods or `more` (set at run time).
    pub fn away_on(
        &self,
        user: &UserId,
        day: chrono::NaiveDate,
        more: &[(UserId, chrono::NaiveDate, chrono::NaiveDate)],
    ) -> bool {
        let periods = self.away.iter().chain(more);
        periods
            .filter(|(u, ..)| u == user)
            .any(|(_, from, to)| *from <= day && day <= *to)
    }

    /// The members and weights, and who is away when, for explanations.
    pub fn describe(&self) -> String {
        let members: Vec<String> = self
            .members
            .iter()
            .map(|(name, _, weight)| format!("{name} {weight}"))
            .collect();
        let mut text = format!("members {}", members.join(", "));
        for (user, from, to) in &self.away {
            let name = self.members.iter().find(|(_, id, _)| id == user);
            let name = name.map_or(user.as_str(), |(n, ..)| n.as_str());
            text.push_str(&format!("; {name} away {from} to {to}"));
        }
        text
    }

    pub fn has(&self, user: &UserId) -> bool {
        self.members.iter().any(|(_, id, _)| id == user)
    }
}

/// A lookup table of a rule file's `tables:` section: values to users, the first entry in
/// file order whose pattern matches winning, `default` when none does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    pub entries: Vec<TableEntry>,
    /// The users when no entry matches (or the event has no value).
    pub default: Option<Vec<UserRef>>,
    pub origin: Origin,
}

/// One entry of a [`Table`]: a value (case-insensitive, `*` wildcards) and its users (aliases
/// or ids).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableEntry {
    pub pattern: Pattern,
    pub users: Vec<UserRef>,
    pub origin: Origin,
}

impl Table {
    /// The entry for a normalized value, or the default: (what matched, its users).
    pub fn find(&self, value: Option<&str>) -> Option<(&str, &[UserRef])> {
        let entry = value.and_then(|v| self.entries.iter().find(|e| e.pattern.matches(v)));
        match (entry, &self.default) {
            (Some(e), _) => Some((e.pattern.as_str(), &e.users)),
            (None, Some(users)) => Some(("default", users)),
            (None, None) => None,
        }
    }

    /// The most users one value can give.
    pub fn widest(&self) -> usize {
        let entries = self.entries.iter().map(|e| e.users.len());
        entries
            .chain(self.default.iter().map(Vec::len))
            .max()
            .unwrap_or(0)
    }
}

impl fmt::Display for UserRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserRef::Alias { name, .. } => f.write_str(name),
            UserRef::Id(id) => f.write_str(id.as_str()),
            UserRef::AssignedUser => f.write_str("assigned_user"),
            UserRef::PreviousAssignedUser => f.write_str("previous_assigned_user"),
            UserRef::Field(path) => write!(f, "field {}", path.text),
            UserRef::Table { table, key } => write!(f, "table {}, key {}", table.name, key.text),
            UserRef::Pool(pool) => write!(f, "pool {}", pool.name),
        }
    }
}

/// Conditions that must all hold (a `when` mapping, or one entry of `any`).
#[derive(Clone, Debug, Default)]
pub struct Block(pub Vec<Condition>);

impl Block {
    /// The keys of its conditions (at any depth) that hold only at the moment of a change.
    pub fn moments(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        for c in &self.0 {
            match c {
                Condition::TagAdded(_)
                | Condition::TagRemoved(_)
                | Condition::StageEntered(_)
                | Condition::StageLeft(_)
                | Condition::AssignedChanged(_)
                | Condition::Workflow(_) => out.push(c.key()),
                Condition::Any(blocks) => blocks.iter().for_each(|b| out.extend(b.moments())),
                Condition::Not(block) => out.extend(block.moments()),
                _ => {}
            }
        }
        out
    }
}

/// Opportunity status, as GoHighLevel names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpportunityStatus {
    Open,
    Won,
    Lost,
    Abandoned,
}

impl OpportunityStatus {
    pub const ALL: [OpportunityStatus; 4] = [
        OpportunityStatus::Open,
        OpportunityStatus::Won,
        OpportunityStatus::Lost,
        OpportunityStatus::Abandoned,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpportunityStatus::Open => "open",
            OpportunityStatus::Won => "won",
            OpportunityStatus::Lost => "lost",
            OpportunityStatus::Abandoned => "abandoned",
        }
    }
}

/// One condition of a `when` block.
#[derive(Clone, Debug)]
pub enum Condition {
    Source(PatternSet),
    HasTag(PatternSet),
    LacksTag(PatternSet),
    TagAdded(PatternSet),
    TagRemoved(PatternSet),
    Pipeline(PatternSet),
    Stage(PatternSet),
    StageEntered(PatternSet),
    StageLeft(PatternSet),
    Status(Vec<OpportunityStatus>),
    Workflow(PatternSet),
    /// Whether the event names an assignee other than the one autofollow last saw.
    AssignedChanged(bool),
    Field(FieldPath, PatternSet),
    Any(Vec<Block>),
    Not(Box<Block>),
}

impl Condition {
    /// The rule-file key this condition was written as.
    pub fn key(&self) -> &'static str {
        match self {
            Condition::Source(_) => "source",
            Condition::HasTag(_) => "has_tag",
            Condition::LacksTag(_) => "lacks_tag",
            Condition::TagAdded(_) => "tag_added",
            Condition::TagRemoved(_) => "tag_removed",
            Condition::Pipeline(_) => "pipeline",
            Condition::Stage(_) => "stage",
            Condition::StageEntered(_) => "stage_entered",
            Condition::StageLeft(_) => "stage_left",
            Condition::Status(_) => "status",
            Condition::Workflow(_) => "workflow",
            Condition::AssignedChanged(_) => "assigned_changed",
            Condition::Field(..) => "fields",
            Condition::Any(_) => "any",
            Condition::Not(_) => "not",
        }
    }
}

/// A dot path into the raw webhook body, e.g. `customData.team`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldPath {
    pub text: String,
    pub segments: Vec<String>,
}

impl FieldPath {
    pub fn parse(text: &str) -> Option<FieldPath> {
        let segments: Vec<String> = text.split('.').map(|s| s.trim().to_owned()).collect();
        if segments.iter().any(String::is_empty) {
            return None;
        }
        Some(FieldPath {
            text: text.trim().to_owned(),
            segments,
        })
    }
}

/// A name in a rule file that only GoHighLevel can confirm, and where it is written: what
/// `autofollow check --online` resolves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub named: Named,
    pub origin: Origin,
    /// The rule it is part of; `None` for an alias of a `users` section.
    pub rule: Option<String>,
}

/// What a [`Reference`] names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Named {
    /// A user id in `add`/`remove`, or the id an alias of `users` stands for.
    User { id: UserId, alias: Option<String> },
    /// A `pipeline` value: a name or id, maybe with `*`.
    Pipeline(String),
    /// A `stage`, `stage_entered` or `stage_left` value.
    Stage(String),
    /// A `fields` path.
    Field(FieldPath),
}

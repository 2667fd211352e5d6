//! Evaluation: an event (plus the contact's previous state) against a rule set gives a
//! [`Plan`] of followers to add and remove, and on request an [`Explanation`] of every check.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::model::{Block, Condition, FieldPath, Follow, OpportunityStatus, Pool, Rule, UserRef};
use super::pattern::{PatternSet, normalize};
use crate::model::event::{AssignedUser, Event};
use crate::model::ids::{LocationId, UserId};
use crate::model::plan::{Plan, PlanBuilder, PlanEntry, PreviousState};

/// Names and ids the event does not carry, looked up by the caller.
///
/// The engine is synchronous and does no I/O: the service fills a cache from GoHighLevel's
/// pipelines and users endpoints and answers from it. Every method may answer `None`; ids in
/// rules always work without a resolver.
pub trait Resolver {
    /// Name of a pipeline, by id.
    fn pipeline_name(&self, _location: &LocationId, _pipeline_id: &str) -> Option<&str> {
        None
    }
    /// Name of a pipeline stage, by id.
    fn stage_name(&self, _location: &LocationId, _stage_id: &str) -> Option<&str> {
        None
    }
    /// Id of the user with this email (workflow webhooks name the assigned user by email).
    fn user_id_by_email(&self, _location: &LocationId, _email: &str) -> Option<UserId> {
        None
    }
}

/// A resolver that knows nothing: names resolve only when the event carries them.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoResolver;

impl Resolver for NoResolver {}

/// The event's facets, normalized once per evaluation so each rule only compares strings.
pub(crate) struct View<'a> {
    pub event: &'a Event,
    pub event_type: String,
    pub location: String,
    pub source: Option<String>,
    pub tags: Option<Vec<String>>,
    /// The same tags as sent, for messages.
    pub tags_as_sent: Option<&'a [String]>,
    pub previous_tags: Option<HashSet<String>>,
    /// Normalized stage id and stage name, whichever are known.
    pub stage: Vec<String>,
    pub stage_label: Option<String>,
    pub previous_stage: Option<Vec<String>>,
    pub previous_stage_label: Option<String>,
    pub pipeline: Vec<String>,
    pub pipeline_label: Option<String>,
    pub workflow: Vec<String>,
    pub status: Option<String>,
    pub assigned_user: Option<UserId>,
    /// Who the event says its record is assigned to (see [`Event::assignment`]).
    pub assignment: Option<Option<UserId>>,
    /// Who it was assigned to before, as autofollow last saw.
    pub previous_assigned: Option<Option<UserId>>,
    /// For the users field targets name by email.
    pub resolver: &'a dyn Resolver,
}

impl<'a> View<'a> {
    pub fn new(
        event: &'a Event,
        previous: &'a PreviousState,
        resolver: &'a dyn Resolver,
    ) -> View<'a> {
        let loc = &event.location_id;
        let stage_name = event.stage_name.as_deref().or_else(|| {
            let id = event.stage_id.as_deref()?;
            resolver.stage_name(loc, id)
        });
        let pipeline_name = event.pipeline_name.as_deref().or_else(|| {
            let id = event.pipeline_id.as_deref()?;
            resolver.pipeline_name(loc, id)
        });
        let previous_stage = previous.stage.as_deref().map(|s| {
            let mut keys = vec![normalize(s)];
            keys.extend(resolver.stage_name(loc, s).map(normalize));
            keys
        });
        let previous_stage_label = previous
            .stage
            .as_deref()
            .map(|s| label(resolver.stage_name(loc, s), Some(s)));
        // Events that do not carry tags (opportunity events) see the contact's tags as of
        // its last event that did: unchanged since, as far as anyone knows.
        let tags_as_sent = event.tags.as_deref().or(previous.tags.as_deref());
        let mut tags: Option<Vec<String>> =
            tags_as_sent.map(|t| t.iter().map(|s| normalize(s)).collect());
        if let Some(t) = tags.as_mut() {
            let mut seen = HashSet::new();
            t.retain(|s| seen.insert(s.clone()));
        }
        let assignment = event.assignment(|email| resolver.user_id_by_email(loc, email));
        // An event that does not say (a contact or opportunity event without `assignedTo`)
        // is about the record assigned as last seen.
        let unsaid = event.assigned_user.is_none() && assignment.is_none();
        let assigned_user = match &event.assigned_user {
            Some(AssignedUser::Id(id)) => Some(id.clone()),
            Some(AssignedUser::Email(email)) => resolver.user_id_by_email(loc, email),
            None if unsaid && event.event_type.subject().has_owner() => {
                previous.assigned.clone().flatten()
            }
            None => None,
        };
        View {
            event,
            event_type: normalize(event.event_type.name()),
            location: normalize(loc.as_str()),
            source: event.source.as_deref().map(normalize),
            tags,
            tags_as_sent,
            previous_tags: previous
                .tags
                .as_ref()
                .map(|t| t.iter().map(|s| normalize(s)).collect()),
            stage: keys([event.stage_id.as_deref(), stage_name]),
            stage_label: (stage_name.is_some() || event.stage_id.is_some())
                .then(|| label(stage_name, event.stage_id.as_deref())),
            previous_stage,
            previous_stage_label,
            pipeline: keys([event.pipeline_id.as_deref(), pipeline_name]),
            pipeline_label: (pipeline_name.is_some() || event.pipeline_id.is_some())
                .then(|| label(pipeline_name, event.pipeline_id.as_deref())),
            workflow: keys([event.workflow_id.as_deref(), event.workflow_name.as_deref()]),
            status: event.status.as_deref().map(normalize),
            assigned_user,
            assignment,
            previous_assigned: previous.assigned.clone(),
            resolver,
        }
    }

    fn stage_changed(&self) -> bool {
        match &self.previous_stage {
            None => true,
            Some(prev) => !prev.iter().any(|p| self.stage.contains(p)),
        }
    }
}

fn keys<const N: usize>(values: [Option<&str>; N]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(N);
    for v in values.into_iter().flatten().map(normalize) {
        if !v.is_empty() && !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// `Name (id)`, or whichever of the two is known.
fn label(name: Option<&str>, id: Option<&str>) -> String {
    match (name, id) {
        (Some(n), Some(i)) if n != i => format!("{n:?} ({i})"),
        (Some(n), _) => format!("{n:?}"),
        (None, Some(i)) => format!("{i} (name unknown)"),
        (None, None) => "unknown".to_owned(),
    }
}

/// One condition's verdict and the reason for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub condition: String,
    pub holds: bool,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
}

/// Evaluates conditions, recording checks only when asked to (explain mode).
pub(crate) struct Evaluator<'v, 'e> {
    pub view: &'v View<'e>,
    pub explain: bool,
}

impl Evaluator<'_, '_> {
    /// Whether every condition holds; the checks, when explaining, come back in `out`.
    /// Without explaining it stops at the first failing condition.
    pub fn block(&self, block: &Block, out: &mut Vec<Check>) -> bool {
        let mut all = true;
        for condition in &block.0 {
            let holds = self.condition(condition, out);
            all &= holds;
            if !all && !self.explain {
                return false;
            }
        }
        all
    }

    fn record(
        &self,
        out: &mut Vec<Check>,
        name: &str,
        holds: bool,
        detail: impl FnOnce() -> String,
    ) -> bool {
        if self.explain {
            out.push(Check {
                condition: name.to_owned(),
                holds,
                detail: detail(),
                checks: Vec::new(),
            });
        }
        holds
    }

    /// Whether one condition holds, recording why in `out` (when explaining). One arm per
    /// kind of condition; the longer checks have a method each.
    fn condition(&self, condition: &Condition, out: &mut Vec<Check>) -> bool {
        let v = self.view;
        let key = condition.key();
        match condition {
            Condition::Source(set) => self.one_value(
                out,
                key,
                "lead source",
                v.source.as_deref(),
                v.event.source.as_deref(),
                set,
            ),
            Condition::HasTag(set) => self.has_tag(out, key, set, true),
            Condition::LacksTag(set) => self.has_tag(out, key, set, false),
            Condition::TagAdded(set) => self.tag_added(out, key, set),
            Condition::TagRemoved(set) => self.tag_removed(out, key, set),
            Condition::Pipeline(set) => self.keyed(
                out,
                key,
                "pipeline",
                &v.pipeline,
                v.pipeline_label.as_deref(),
                set,
            ),
            Condition::Stage(set) => {
                self.keyed(out, key, "stage", &v.stage, v.stage_label.as_deref(), set)
            }
            Condition::StageEntered(set) => self.stage_entered(out, key, set),
            Condition::StageLeft(set) => self.stage_left(out, key, set),
            Condition::Status(wanted) => self.status(out, key, wanted),
            Condition::Workflow(set) => {
                let label = match (&v.event.workflow_name, &v.event.workflow_id) {
                    (None, None) => None,
                    (n, i) => Some(label(n.as_deref(), i.as_deref())),
                };
                self.keyed(out, key, "workflow", &v.workflow, label.as_deref(), set)
            }
            Condition::AssignedChanged(wanted) => self.assigned_changed(out, key, *wanted),
            Condition::Field(path, set) => self.field(out, path, set),
            Condition::Any(blocks) => self.any(out, key, blocks),
            Condition::Not(block) => {
                let mut inner = Vec::new();
                let holds = !self.block(block, &mut inner);
                let detail = if holds {
                    "the block does not hold"
                } else {
                    "the block holds"
                };
                self.nested(out, key, holds, detail.to_owned(), inner)
            }
        }
    }

    /// `has_tag` (`wanted`) and `lacks_tag` (not `wanted`).
    fn has_tag(&self, out: &mut Vec<Check>, key: &str, set: &PatternSet, wanted: bool) -> bool {
        let v = self.view;
        match &v.tags {
            None => self.record(out, key, false, || no_tags(v)),
            Some(tags) => {
                let hit = tags.iter().find_map(|t| set.find(t).map(|p| (t, p)));
                self.record(out, key, hit.is_some() == wanted, || match hit {
                    Some((t, p)) => format!("tag {t:?} matches {:?}", p.as_str()),
                    None => format!("none of the tags {} is in {set}", shown(v)),
                })
            }
        }
    }

    fn tag_added(&self, out: &mut Vec<Check>, key: &str, set: &PatternSet) -> bool {
        let v = self.view;
        let Some(tags) = &v.tags else {
            return self.record(out, key, false, || no_tags(v));
        };
        let prev = v.previous_tags.as_ref();
        let added = |t: &String| prev.is_none_or(|p| !p.contains(t));
        let hit = tags
            .iter()
            .filter(|t| added(t))
            .find_map(|t| set.find(t).map(|p| (t, p)));
        self.record(out, key, hit.is_some(), || {
            let basis = match prev {
                None => "no previous tags known, so every current tag counts as added".to_owned(),
                Some(p) => format!("previous tags {}", sorted(p)),
            };
            match hit {
                Some((t, p)) => format!("tag {t:?} (matches {:?}) was added; {basis}", p.as_str()),
                None => format!(
                    "no tag in {set} was added; current tags {}, {basis}",
                    shown(v)
                ),
            }
        })
    }

    fn tag_removed(&self, out: &mut Vec<Check>, key: &str, set: &PatternSet) -> bool {
        let v = self.view;
        let (tags, prev) = match (&v.tags, &v.previous_tags) {
            (None, _) => return self.record(out, key, false, || no_tags(v)),
            (Some(_), None) => {
                return self.record(out, key, false, || {
                    "no previous tags known, so no tag counts as removed".to_owned()
                });
            }
            (Some(tags), Some(prev)) => (tags, prev),
        };
        let mut removed: Vec<&String> = prev.iter().filter(|t| !tags.contains(t)).collect();
        removed.sort();
        let hit = removed.iter().find_map(|t| set.find(t).map(|p| (*t, p)));
        self.record(out, key, hit.is_some(), || match hit {
            Some((t, p)) => format!("tag {t:?} (matches {:?}) was removed", p.as_str()),
            None => format!(
                "no tag in {set} was removed; previous tags {}, current tags {}",
                sorted(prev),
                shown(v)
            ),
        })
    }

    fn stage_entered(&self, out: &mut Vec<Check>, key: &str, set: &PatternSet) -> bool {
        let v = self.view;
        let hit = v.stage.iter().find_map(|s| set.find(s));
        let holds = hit.is_some() && v.stage_changed();
        self.record(out, key, holds, || {
            let Some(current) = &v.stage_label else {
                return "the event has no pipeline stage".to_owned();
            };
            match (hit, &v.previous_stage_label) {
                (None, _) => format!("stage {current} is not in {set}"),
                (Some(_), None) => format!("stage {current} entered (no previous stage known)"),
                (Some(_), Some(prev)) if holds => format!("stage {current} entered from {prev}"),
                (Some(_), Some(_)) => {
                    format!("stage {current} is unchanged since the previous event")
                }
            }
        })
    }

    fn stage_left(&self, out: &mut Vec<Check>, key: &str, set: &PatternSet) -> bool {
        let v = self.view;
        let prev_hit = v
            .previous_stage
            .as_ref()
            .and_then(|p| p.iter().find_map(|s| set.find(s)));
        let holds = !v.stage.is_empty() && prev_hit.is_some() && v.stage_changed();
        self.record(out, key, holds, || {
            let Some(current) = &v.stage_label else {
                return "the event has no pipeline stage".to_owned();
            };
            match (&v.previous_stage_label, prev_hit) {
                (None, _) => "no previous stage known, so no stage counts as left".to_owned(),
                (Some(prev), None) => format!("previous stage {prev} is not in {set}"),
                (Some(prev), Some(_)) if holds => format!("stage {prev} left for {current}"),
                (Some(prev), Some(_)) => format!("stage {prev} is unchanged"),
            }
        })
    }

    fn status(&self, out: &mut Vec<Check>, key: &str, wanted: &[OpportunityStatus]) -> bool {
        let v = self.view;
        let holds = v
            .status
            .as_deref()
            .is_some_and(|s| wanted.iter().any(|w| w.name() == s));
        self.record(out, key, holds, || {
            let names: Vec<&str> = wanted.iter().map(|s| s.name()).collect();
            match &v.event.status {
                None => "the event has no opportunity status".to_owned(),
                Some(s) if holds => format!("status {s:?} is in {names:?}"),
                Some(s) => format!("status {s:?} is not in {names:?}"),
            }
        })
    }

    /// Whether the event names an assignee (or nobody) other than the one last seen; with no
    /// earlier assignee known, naming one counts as a change.
    fn assigned_changed(&self, out: &mut Vec<Check>, key: &str, wanted: bool) -> bool {
        let v = self.view;
        let changed = v
            .assignment
            .as_ref()
            .is_some_and(|now| v.previous_assigned.as_ref() != Some(now));
        self.record(out, key, changed == wanted, || {
            let name =
                |u: &Option<UserId>| u.as_ref().map_or("nobody".to_owned(), UserId::to_string);
            match (&v.assignment, &v.previous_assigned, &v.event.assigned_user) {
                (None, _, Some(AssignedUser::Email(e))) => {
                    format!("no user id is known for the assignee {e:?}: no change known")
                }
                (None, ..) => "the event does not say who it is assigned to".to_owned(),
                (Some(now), None, _) => {
                    format!("assigned to {} (no earlier assignee known)", name(now))
                }
                (Some(now), Some(before), _) if now != before => {
                    format!("assigned from {} to {}", name(before), name(now))
                }
                (Some(now), ..) => format!("still assigned to {}", name(now)),
            }
        })
    }

    fn field(&self, out: &mut Vec<Check>, path: &FieldPath, set: &PatternSet) -> bool {
        let values = field_values(&self.view.event.raw, path);
        let hit = values.iter().find(|s| set.matches(&normalize(s)));
        let name = format!("fields.{}", path.text);
        self.record(out, &name, hit.is_some(), || {
            match (hit, values.as_slice()) {
                (_, []) => format!("{} is missing", path.text),
                (Some(h), _) => format!("{} = {h:?} matches {set}", path.text),
                (None, [one]) => format!("{} = {one:?} is not in {set}", path.text),
                (None, many) => format!("{} = {many:?}: none is in {set}", path.text),
            }
        })
    }

    fn any(&self, out: &mut Vec<Check>, key: &str, blocks: &[Block]) -> bool {
        let mut children = Vec::new();
        let mut count = 0;
        for (i, block) in blocks.iter().enumerate() {
            let mut inner = Vec::new();
            let holds = self.block(block, &mut inner);
            count += usize::from(holds);
            if self.explain {
                children.push(Check {
                    condition: format!("any[{i}]"),
                    holds,
                    detail: if holds { "holds" } else { "does not hold" }.to_owned(),
                    checks: inner,
                });
            } else if holds {
                return true;
            }
        }
        let detail = format!("{count} of {} blocks hold", blocks.len());
        self.nested(out, key, count > 0, detail, children)
    }

    fn nested(
        &self,
        out: &mut Vec<Check>,
        name: &str,
        holds: bool,
        detail: String,
        checks: Vec<Check>,
    ) -> bool {
        if self.explain {
            out.push(Check {
                condition: name.to_owned(),
                holds,
                detail,
                checks,
            });
        }
        holds
    }

    /// A condition on one optional value (the lead source).
    fn one_value(
        &self,
        out: &mut Vec<Check>,
        key: &str,
        what: &str,
        value: Option<&str>,
        original: Option<&str>,
        set: &PatternSet,
    ) -> bool {
        let hit = value.and_then(|s| set.find(s));
        self.record(out, key, hit.is_some(), || match (original, hit) {
            (None, _) => format!("the event has no {what}"),
            (Some(o), Some(p)) => format!("{what} {o:?} matches {:?}", p.as_str()),
            (Some(o), None) => format!("{what} {o:?} is not in {set}"),
        })
    }

    /// A condition on a thing known by id and/or name (pipeline, stage, workflow).
    fn keyed(
        &self,
        out: &mut Vec<Check>,
        key: &str,
        what: &str,
        keys: &[String],
        label: Option<&str>,
        set: &PatternSet,
    ) -> bool {
        let hit = keys.iter().find_map(|k| set.find(k));
        self.record(out, key, hit.is_some(), || match (label, hit) {
            (None, _) => format!("the event has no {what}"),
            (Some(l), Some(p)) => format!("{what} {l} matches {:?}", p.as_str()),
            (Some(l), None) => format!("{what} {l} is not in {set}"),
        })
    }
}

fn no_tags(v: &View) -> String {
    format!(
        "{} events do not carry the contact's tags",
        v.event.event_type
    )
}

fn shown(v: &View) -> String {
    format!("{:?}", v.tags_as_sent.unwrap_or_default())
}

fn sorted(items: &HashSet<String>) -> String {
    let mut v: Vec<&String> = items.iter().collect();
    v.sort();
    format!("{v:?}")
}

/// The scalar values at `path` in the body, as strings.
///
/// A segment selects an object key; on an array it selects by index when numeric, else the
/// element whose `id` equals it (GoHighLevel's `customFields: [{id, value}]`), taking its
/// `value`. Arrays at the end give all their scalar elements.
pub(crate) fn field_values(raw: &Value, path: &FieldPath) -> Vec<String> {
    let mut node = raw;
    for segment in &path.segments {
        let next = match node {
            Value::Object(map) => map.get(segment),
            Value::Array(items) => match segment.parse::<usize>() {
                Ok(i) => items.get(i),
                Err(_) => items
                    .iter()
                    .find(|item| item.get("id").and_then(Value::as_str) == Some(segment.as_str()))
                    .map(|item| item.get("value").unwrap_or(item)),
            },
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => return Vec::new(),
        }
    }
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match node {
        Value::Array(items) => items.iter().filter_map(scalar).collect(),
        other => scalar(other).into_iter().collect(),
    }
}

/// How a rule fared for one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleOutcome {
    Matched,
    NotMatched,
    Disabled,
    /// An earlier matching rule had `stop: true`.
    NotEvaluated,
}

/// One rule's part in an [`Explanation`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleTrace {
    pub rule: String,
    pub origin: String,
    pub outcome: RuleOutcome,
    pub checks: Vec<Check>,
    /// What the rule contributed, when it matched (`add alice`, `remove bob`, notes).
    pub actions: Vec<String>,
}

/// Every rule's verdict and the reasons, plus the final plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub rules: Vec<RuleTrace>,
    pub plan: Plan,
}

/// Checks a rule's filters and conditions. The filter checks come first so an explanation
/// reads in the order the rule is written.
pub(crate) fn rule_matches(rule: &Rule, eval: &Evaluator, out: &mut Vec<Check>) -> bool {
    let v = eval.view;
    let mut holds = true;
    if let Some(events) = &rule.events {
        let ok = events.contains(&v.event.event_type);
        holds &= ok;
        if eval.explain {
            let names: Vec<&str> = events.iter().map(|e| e.name()).collect();
            out.push(Check {
                condition: "events".to_owned(),
                holds: ok,
                detail: format!(
                    "{} is {}in {names:?}",
                    v.event.event_type,
                    if ok { "" } else { "not " }
                ),
                checks: Vec::new(),
            });
        } else if !ok {
            return false;
        }
    }
    if let Some(locations) = &rule.locations {
        let ok = locations.matches(&v.location);
        holds &= ok;
        if eval.explain {
            out.push(Check {
                condition: "locations".to_owned(),
                holds: ok,
                detail: format!(
                    "location {} is {}in {locations}",
                    v.event.location_id,
                    if ok { "" } else { "not " }
                ),
                checks: Vec::new(),
            });
        } else if !ok {
            return false;
        }
    }
    eval.block(&rule.when, out) && holds
}

/// The users `user` stands for in this event, each with its label, or why nobody (for the
/// explanation).
fn resolve_user(user: &UserRef, view: &View) -> Result<Vec<(UserId, String)>, String> {
    let label = |id: UserId| {
        let text = format!("{id} ({user})");
        vec![(id, text)]
    };
    match user {
        UserRef::Alias { id, .. } | UserRef::Id(id) => Ok(vec![(id.clone(), user.to_string())]),
        UserRef::AssignedUser => match (&view.assigned_user, &view.event.assigned_user) {
            (Some(id), _) => Ok(label(id.clone())),
            (None, Some(AssignedUser::Email(email))) => Err(format!(
                "assigned_user skipped: no user id known for {email:?}"
            )),
            (None, _) => Err("assigned_user skipped: the event has no assigned user".to_owned()),
        },
        UserRef::PreviousAssignedUser => match view.previous_assigned.clone().flatten() {
            Some(id) => Ok(label(id)),
            None => Err("previous_assigned_user skipped: no earlier assignee known".to_owned()),
        },
        UserRef::Field(path) => field_user(path, view).map(label),
        UserRef::Pool(pool) => Err(format!("pool {} skipped: a pool only adds", pool.name)),
        UserRef::Table { table, key } => {
            let value = field_values(&view.event.raw, key).into_iter().next();
            let found = table.find(value.as_deref().map(normalize).as_deref());
            let Some((entry, users)) = found else {
                let value = value.map_or("no value".to_owned(), |v| format!("{v:?}"));
                return Err(format!(
                    "table {} skipped: {} is {value}, which no entry matches, and the table has no default",
                    table.name, key.text
                ));
            };
            let why = format!("table {}: {entry}", table.name);
            Ok(users
                .iter()
                .filter_map(|u| match u {
                    UserRef::Alias { id, .. } | UserRef::Id(id) => {
                        Some((id.clone(), format!("{u} ({why})")))
                    }
                    _ => None,
                })
                .collect())
        }
    }
}

/// The user a field names: its value as a user id, or an email the resolver knows.
fn field_user(path: &FieldPath, view: &View) -> Result<UserId, String> {
    let skipped = |why: String| format!("field {} skipped: {why}", path.text);
    let Some(value) = field_values(&view.event.raw, path).into_iter().next() else {
        return Err(skipped("the event has no value there".to_owned()));
    };
    let value = value.trim();
    if value.contains('@') {
        let location = &view.event.location_id;
        return view
            .resolver
            .user_id_by_email(location, value)
            .ok_or_else(|| skipped(format!("no user id known for {value:?}")));
    }
    UserId::parse(value)
        .map_err(|_| skipped(format!("{value:?} is neither a user id nor an email")))
}

/// Applies a matched rule to the plan. `add` entries go first, so a user both added (say, as
/// `assigned_user`) and removed by the same rule stays added. A remove that does not name
/// the user itself (`assigned_user`, `previous_assigned_user`) removes only a follower
/// autofollow added.
fn apply(rule: &Rule, view: &View, out: &mut Run, actions: Option<&mut Vec<String>>) {
    let explain = actions.is_some();
    let mut log = Vec::new();
    let mut adds: Vec<(UserId, String)> = Vec::new();
    let mut removes: Vec<(UserId, String, bool)> = Vec::new();
    let entries = rule.add.iter().map(|u| (true, u));
    for (add, user) in entries.chain(rule.remove.iter().map(|u| (false, u))) {
        if let (true, UserRef::Pool(pool)) = (add, user) {
            out.picks.push((rule.name.clone(), Arc::clone(pool)));
            if explain {
                log.push(format!("add one member of {user} ({})", pool.describe()));
            }
            continue;
        }
        let ids = match resolve_user(user, view) {
            Ok(ids) => ids,
            Err(why) => {
                if explain {
                    log.push(why);
                }
                continue;
            }
        };
        for (id, label) in ids {
            if add {
                adds.push((id, label));
            } else if !adds.iter().any(|(a, _)| *a == id) {
                removes.push((id, label, user.is_dynamic()));
            }
        }
    }
    let decisions = adds.into_iter().map(|(u, l)| (true, u, l, false));
    let removals = removes.into_iter().map(|(u, l, d)| (false, u, l, d));
    for (add, user, label, only_if_added) in decisions.chain(removals) {
        if explain {
            let verb = if add { "add" } else { "remove" };
            let note = match (add, only_if_added, rule.follow) {
                (false, true, _) => " (if autofollow added it)",
                (true, _, Follow::WhileMatching) => " (follows while the rule holds)",
                _ => "",
            };
            log.push(format!("{verb} {label}{note}"));
        }
        if add {
            out.adds.push((rule.name.clone(), user.clone()));
        }
        let rule_name = rule.name.clone();
        out.plan.decide(
            add,
            PlanEntry {
                user,
                label,
                rule: rule_name,
                only_if_added,
            },
        );
    }
    if let Some(actions) = actions {
        actions.append(&mut log);
    }
}

/// What a run of the rules gives.
#[derive(Default)]
pub(crate) struct Run {
    pub plan: PlanBuilder,
    pub matched: Vec<String>,
    pub traces: Vec<RuleTrace>,
    /// (rule, user) for every user a matched rule adds, before the plans combine.
    pub adds: Vec<(String, UserId)>,
    /// The position of the rule whose `stop` ended the run: later rules were not evaluated.
    pub stopped_at: Option<usize>,
    /// (rule, pool) for every pool a matched rule adds one member of.
    pub picks: Vec<(String, Arc<Pool>)>,
}

/// Evaluates `rules` (indices into `all`, ascending): the plan, the matched rules, who each
/// adds and, when explaining, a trace of every rule in `all`.
pub(crate) fn run(all: &[Rule], candidates: Option<&[u32]>, view: &View, explain: bool) -> Run {
    let eval = Evaluator { view, explain };
    let mut out = Run::default();
    let indices: Box<dyn Iterator<Item = usize>> = match candidates {
        Some(c) => Box::new(c.iter().map(|&i| i as usize)),
        None => Box::new(0..all.len()),
    };
    for i in indices {
        let Some(rule) = all.get(i) else { continue };
        let mut trace = explain.then(|| RuleTrace {
            rule: rule.name.clone(),
            origin: rule.origin.to_string(),
            outcome: RuleOutcome::NotMatched,
            checks: Vec::new(),
            actions: Vec::new(),
        });
        let outcome = if let Some(by) = out.stopped_at.and_then(|s| all.get(s)) {
            if let Some(t) = trace.as_mut() {
                let by = &by.name;
                t.actions.push(format!(
                    "not evaluated: rule {by:?} matched with stop: true"
                ));
            }
            RuleOutcome::NotEvaluated
        } else if !rule.enabled {
            RuleOutcome::Disabled
        } else {
            let mut checks = Vec::new();
            let ok = rule_matches(rule, &eval, &mut checks);
            if let Some(t) = trace.as_mut() {
                t.checks = checks;
            }
            if ok {
                apply(rule, view, &mut out, trace.as_mut().map(|t| &mut t.actions));
                out.matched.push(rule.name.clone());
                if rule.stop {
                    out.stopped_at = Some(i);
                }
                RuleOutcome::Matched
            } else {
                RuleOutcome::NotMatched
            }
        };
        if let Some(mut t) = trace {
            t.outcome = outcome;
            out.traces.push(t);
        } else if out.stopped_at.is_some() && !explain {
            break;
        }
    }
    out
}

pub(crate) fn status_from_name(name: &str) -> Option<OpportunityStatus> {
    let n = normalize(name);
    OpportunityStatus::ALL.into_iter().find(|s| s.name() == n)
}

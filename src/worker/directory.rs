//! What a location's directory in GoHighLevel (its users, its company's, its pipelines and
//! custom fields) says of the names in the rule files: the pure half of `check --online`,
//! with [`super::online`] reading the directory.

use std::collections::BTreeSet;

use crate::ghl::fields::CustomField;
use crate::ghl::pipelines::Pipelines;
use crate::ghl::users::User;
use crate::model::event::{EventType, STANDARD_KEYS};
use crate::model::ids::{LocationId, looks_like_ghl_id};
use crate::rules::{
    FieldPath, Named, Origin, Pattern, Reference, Rule, RuleSet, Severity, UserRef, closest,
    normalize,
};

/// What reading one part of a directory gave.
#[derive(Clone, Debug, Default)]
pub enum Lookup<T> {
    /// No rule for the location names anything it holds: not read.
    #[default]
    NotNeeded,
    Read(T),
    /// GoHighLevel refused it or did not answer (why is kept with the check's failures).
    Failed,
}

impl<T> Lookup<T> {
    pub fn as_read(&self) -> Option<&T> {
        match self {
            Lookup::Read(v) => Some(v),
            _ => None,
        }
    }

    pub fn into_read(self) -> Option<T> {
        match self {
            Lookup::Read(v) => Some(v),
            _ => None,
        }
    }
}

/// One location's directory, as far as the rules needed it.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    /// The location's users (`GET /users/search` with its company and location).
    pub users: Lookup<Vec<User>>,
    /// Of the user ids the rules name that are not the location's, those of its company.
    pub company: Lookup<Vec<User>>,
    pub pipelines: Lookup<Pipelines>,
    pub fields: Lookup<Vec<CustomField>>,
    /// The scopes the location's installation was granted; `None` for a PIT (not listed).
    pub granted: Option<BTreeSet<String>>,
}

/// A problem found online: where it is written (`None`: the location's token), what it is,
/// and the locations it holds for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub origin: Option<Origin>,
    pub message: String,
    pub locations: Vec<LocationId>,
}

/// The scopes a lookup needs: what the check reads, and what the rules need it for.
#[derive(Debug)]
pub struct Need {
    pub scope: &'static str,
    pub reads: &'static str,
}

pub const LOCATIONS: Need = Need {
    scope: "locations.readonly",
    reads: "GET /locations/{id} (the company, for the users search; the time zone, for pools)",
};
pub const USERS: Need = Need {
    scope: "users.readonly",
    reads: "GET /users/search",
};
pub const PIPELINES: Need = Need {
    scope: "opportunities.readonly",
    reads: "GET /opportunities/pipelines",
};
pub const FIELDS: Need = Need {
    scope: "locations/customFields.readonly",
    reads: "GET /locations/{id}/customFields",
};
/// Every followers call needs it.
pub const FOLLOWERS: &str = "contacts.write";

/// Whether `rule` can decide for `location`.
fn applies(rule: &Rule, location: &LocationId) -> bool {
    let location = normalize(location.as_str());
    rule.locations.as_ref().is_none_or(|l| l.matches(&location))
}

/// The references that matter for `location`: those of rules that can decide for it, and
/// the aliases such rules use (an alias no such rule uses is not checked).
pub fn relevant<'s>(set: &'s RuleSet, location: &LocationId) -> Vec<&'s Reference> {
    let uses_alias = |rule: &Rule, name: &str| {
        let named = |u: &UserRef| matches!(u, UserRef::Alias { name: n, .. } if n == name);
        rule.add.iter().chain(&rule.remove).any(named)
    };
    let refs = set.references().iter();
    refs.filter(|r| match (&r.rule, &r.named) {
        (Some(rule), _) => set
            .rule(rule)
            .is_some_and(|(_, rule)| applies(rule, location)),
        (None, Named::User { alias: Some(a), .. }) => set
            .rules()
            .iter()
            .any(|rule| applies(rule, location) && uses_alias(rule, a)),
        (None, _) => false,
    })
    .collect()
}

/// What the references of one location say against its directory.
pub fn confirm(references: &[&Reference], dir: &Directory) -> Vec<(Severity, Origin, String)> {
    let mut out = Vec::new();
    for r in references {
        let problem = match &r.named {
            Named::User { id, alias } => dir.users.as_read().and_then(|users| {
                let company = dir.company.as_read().map_or(&[][..], Vec::as_slice);
                user(id.as_str(), alias.as_deref(), users, company)
            }),
            Named::Pipeline(text) => dir.pipelines.as_read().and_then(|p| pipeline(text, p)),
            Named::Stage(text) => dir.pipelines.as_read().and_then(|p| stage(text, p)),
            Named::Field(path) => dir.fields.as_read().and_then(|f| field(path, f)),
        };
        if let Some((severity, message)) = problem {
            out.push((severity, r.origin.clone(), message));
        }
    }
    out
}

/// How a user is described in a message: their id, alias and name.
fn who(id: &str, alias: Option<&str>, known: Option<&User>) -> String {
    let mut text = format!("user `{id}`");
    let name = known.map(|u| u.name.as_str()).filter(|n| !n.is_empty());
    match (alias, name) {
        (Some(a), Some(n)) => text.push_str(&format!(" (alias `{a}`, {n})")),
        (Some(a), None) => text.push_str(&format!(" (alias `{a}`)")),
        (None, Some(n)) => text.push_str(&format!(" ({n})")),
        (None, None) => {}
    }
    text
}

/// A user the location has: by alias, the one whose name or email is closest to it; by
/// id, the one whose id is.
fn closest_user<'u>(id: &str, alias: Option<&str>, users: &'u [User]) -> Option<&'u User> {
    let active = || users.iter().filter(|u| !u.deleted);
    let found = match alias {
        Some(alias) => {
            let names = active().flat_map(|u| {
                let first = u.name.split_whitespace().next().unwrap_or_default();
                let mailbox = u.email.split('@').next().unwrap_or_default();
                [u.name.as_str(), first, mailbox]
            });
            let best = closest(alias, names.filter(|n| !n.is_empty()))?;
            let is = |u: &&User| u.name == best || u.email.split('@').next() == Some(best);
            active().find(|u| is(u) || u.name.split_whitespace().next() == Some(best))
        }
        None => {
            let best = closest(id, active().map(|u| u.id.as_str()))?;
            active().find(|u| u.id == best)
        }
    };
    found.filter(|u| u.id != id)
}

/// A user id: one of the location's users, not deleted.
fn user(
    id: &str,
    alias: Option<&str>,
    users: &[User],
    company: &[User],
) -> Option<(Severity, String)> {
    let known = users.iter().chain(company).find(|u| u.id == id);
    let problem = match known {
        Some(u) if !u.deleted && users.iter().any(|l| l.id == id) => return None,
        Some(u) if u.deleted => "is deleted in GoHighLevel".to_owned(),
        Some(_) => "has no access to this sub-account: GoHighLevel accepts them as a follower, but they are never notified".to_owned(),
        None => "is not a user of this location's company (no such user, or another company's): GoHighLevel accepts the id as a follower, but nobody is notified".to_owned(),
    };
    let hint = closest_user(id, alias, users)
        .map(|u| format!("; did you mean {}?", who(&u.id, None, Some(u))))
        .unwrap_or_default();
    let message = format!("{} {problem}{hint}", who(id, alias, known));
    Some((Severity::Error, message))
}

/// Whether a pattern matches one of `(id, name)`.
fn matches_any<'a>(pattern: &Pattern, mut items: impl Iterator<Item = (&'a str, &'a str)>) -> bool {
    items.any(|(id, name)| pattern.matches(&normalize(id)) || pattern.matches(&normalize(name)))
}

/// What to say when nothing is named `text`: the closest name, or the names there are.
fn suggestion<'a>(text: &str, names: impl Iterator<Item = &'a str>) -> String {
    let mut names: Vec<&str> = names.collect();
    names.sort_unstable();
    names.dedup();
    if let Some(best) = closest(text, names.iter().copied()) {
        return format!("; did you mean `{best}`?");
    }
    match names.len() {
        0 => " (it has none)".to_owned(),
        n if n <= 12 => format!(" (it has: {})", names.join(", ")),
        n => format!(" (it has {n}, among them: {})", names[..12].join(", ")),
    }
}

fn pipeline(text: &str, pipelines: &Pipelines) -> Option<(Severity, String)> {
    let pattern = Pattern::new(text);
    if matches_any(&pattern, pipelines.pipelines()) {
        return None;
    }
    let hint = suggestion(text, pipelines.pipelines().map(|(_, n)| n));
    let message = format!("no pipeline of this location is named `{text}` or has that id{hint}");
    Some((Severity::Error, message))
}

fn stage(text: &str, pipelines: &Pipelines) -> Option<(Severity, String)> {
    let pattern = Pattern::new(text);
    if matches_any(&pattern, pipelines.stages()) {
        return None;
    }
    let hint = suggestion(text, pipelines.stages().map(|(_, n)| n));
    let message =
        format!("no stage of this location's pipelines is named `{text}` or has that id{hint}");
    Some((Severity::Error, message))
}

/// A `fields` path against the custom fields: `customFields.ID` must name one by id (how
/// app webhooks carry them); a path starting with a key no webhook carries must be a custom
/// field's exact name (how workflow webhooks carry them).
fn field(path: &FieldPath, fields: &[CustomField]) -> Option<(Severity, String)> {
    let first = path.segments[0].as_str();
    if first == "customFields" {
        let id = path.segments.get(1)?;
        return custom_field_by_id(id, fields);
    }
    if STANDARD_KEYS.contains(&first) || fields.iter().any(|f| f.name == first) {
        return None;
    }
    let names = fields.iter().map(|f| f.name.as_str());
    if let Some(best) = closest(first, names) {
        let message = format!(
            "no custom field is named `{first}` (workflow webhooks carry custom fields by their exact name); did you mean `{best}`?"
        );
        return Some((Severity::Error, message));
    }
    let message = format!(
        "`{first}` is neither a key GoHighLevel's webhooks carry nor the name of one of this location's custom fields: the condition holds only for bodies that have it"
    );
    Some((Severity::Warning, message))
}

fn custom_field_by_id(id: &str, fields: &[CustomField]) -> Option<(Severity, String)> {
    if fields.iter().any(|f| f.id == id) {
        return None;
    }
    let bare = |k: &str| k.split_once('.').map_or(k, |(_, rest)| rest).to_owned();
    let same = |f: &&CustomField| {
        f.name.eq_ignore_ascii_case(id)
            || f.field_key.eq_ignore_ascii_case(id)
            || bare(&f.field_key).eq_ignore_ascii_case(id)
    };
    let message = match fields.iter().find(same) {
        Some(f) => format!(
            "`customFields.{id}` names custom field `{}` by name; app webhooks carry custom fields by id: write `customFields.{}`",
            f.name, f.id
        ),
        None => {
            let by_id = closest(id, fields.iter().map(|f| f.id.as_str()));
            let hint = match by_id.and_then(|b| fields.iter().find(|f| f.id == b)) {
                Some(f) => format!("; did you mean `{}` ({})?", f.id, f.name),
                None => suggestion(id, fields.iter().map(|f| f.name.as_str())),
            };
            format!("no custom field of this location has the id `{id}`{hint}")
        }
    };
    Some((Severity::Error, message))
}

/// The scopes the rules that decide for `location` need at run time, with why: every
/// followers call needs [`FOLLOWERS`]; pipeline and stage names (not ids) need pipelines
/// read; a workflow event's assignee is found by email through the users search; pools
/// read the location's time zone.
pub fn scopes_needed(set: &RuleSet, location: &LocationId) -> Vec<(&'static str, String)> {
    let rules: Vec<&Rule> = set
        .rules()
        .iter()
        .filter(|r| applies(r, location))
        .collect();
    let mut out = Vec::new();
    let names = |list: &[&Rule]| {
        let names: Vec<String> = list.iter().map(|r| format!("`{}`", r.name)).collect();
        names.join(", ")
    };
    if !rules.is_empty() {
        out.push((FOLLOWERS, "to add and remove followers".to_owned()));
    }
    let by_name: Vec<&Rule> = relevant(set, location)
        .iter()
        .filter(|r| match &r.named {
            Named::Pipeline(t) | Named::Stage(t) => !looks_like_ghl_id(t),
            _ => false,
        })
        .filter_map(|r| set.rule(r.rule.as_deref()?).map(|(_, rule)| rule))
        .collect::<Vec<_>>();
    let mut by_name = by_name;
    by_name.dedup_by(|a, b| a.name == b.name);
    if !by_name.is_empty() {
        let why = format!(
            "for the pipeline and stage names of rules {}",
            names(&by_name)
        );
        out.push((PIPELINES.scope, why));
    }
    let owner = |u: &UserRef| matches!(u, UserRef::AssignedUser | UserRef::PreviousAssignedUser);
    let field = |u: &UserRef| matches!(u, UserRef::Field(_));
    let workflow = |r: &Rule| {
        r.events
            .as_ref()
            .is_none_or(|e| e.contains(&EventType::Workflow))
    };
    let targets = |r: &Rule, f: &dyn Fn(&UserRef) -> bool| r.add.iter().chain(&r.remove).any(f);
    let assignee = |r: &Rule| workflow(r) && targets(r, &owner);
    let by_email = |r: &&Rule| assignee(r) || targets(r, &field);
    let assignees: Vec<&Rule> = rules.iter().copied().filter(by_email).collect();
    if !assignees.is_empty() {
        let whose = match (
            assignees.iter().any(|r| assignee(r)),
            assignees.iter().any(|r| targets(r, &field)),
        ) {
            (true, true) => "a workflow event's assignee or a field's user",
            (true, false) => "a workflow event's assignee",
            _ => "a field's user",
        };
        let why = format!("to find {whose} by email, for rules {}", names(&assignees));
        out.push((USERS.scope, why.clone()));
        out.push((LOCATIONS.scope, why));
    }
    let pool = |u: &UserRef| matches!(u, UserRef::Pool(_));
    let pooled: Vec<&Rule> = rules
        .iter()
        .copied()
        .filter(|r| targets(r, &pool))
        .collect();
    if !pooled.is_empty() {
        let why = format!(
            "to read the location's time zone, whose days pools' away dates are (unless AUTOFOLLOW_TIME_ZONE names one), for rules {}",
            names(&pooled)
        );
        out.push((LOCATIONS.scope, why));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Vec<User> {
        let user = |id: &str, name: &str, deleted| User {
            id: id.into(),
            name: name.into(),
            email: format!("{}@example.com", name.to_lowercase().replace(' ', ".")),
            deleted,
        };
        vec![
            user("AliceUser00000000001", "Alice Smith", false),
            user("OldUser0000000000002", "Old Timer", true),
        ]
    }

    #[test]
    fn an_alias_pointing_nowhere_is_matched_to_the_user_its_name_suggests() {
        let found = user("Gone0000000000000003", Some("alice"), &users(), &[]);
        let (_, message) = found.expect("a problem");
        assert!(
            message.ends_with("did you mean user `AliceUser00000000001` (Alice Smith)?"),
            "{message}"
        );
        assert_eq!(user("AliceUser00000000001", None, &users(), &[]), None);
        let deleted = user("OldUser0000000000002", None, &users(), &[]);
        assert!(deleted.is_some_and(|(_, m)| m.contains("(Old Timer) is deleted")));
    }

    #[test]
    fn a_company_user_without_access_to_the_location_is_reported_as_such() {
        let elsewhere = vec![User {
            id: "Other000000000000004".into(),
            name: "Otto".into(),
            email: String::new(),
            deleted: false,
        }];
        let found = user("Other000000000000004", None, &users(), &elsewhere);
        assert!(found.is_some_and(|(_, m)| m.contains("(Otto) has no access to this sub-account")));
    }

    #[test]
    fn rules_adding_from_a_pool_need_the_location_read_for_its_time_zone() {
        let yaml = "pools:\n  sales:\n    members: [9hTnVvSr1Q2ZyE5kHfXm]\nrules:\n  - name: deal\n    add: [{pool: sales}]\n";
        let set = RuleSet::from_sources(&[("r.yaml", yaml)]).expect("rules");
        let location = LocationId::parse("ve9EPM428h8vShlRW1KT").unwrap();
        let needed = scopes_needed(&set, &location);
        let zone = needed
            .iter()
            .find(|(scope, _)| *scope == "locations.readonly");
        let why = zone.map(|(_, why)| why.as_str()).unwrap_or_default();
        assert!(
            why.contains("time zone") && why.contains("`deal`"),
            "{needed:?}"
        );
    }

    #[test]
    fn wildcards_and_ids_match_pipelines_and_stages() {
        let body = br#"{"pipelines":[{"id":"P1","name":"Sales","stages":[{"id":"S1","name":"Closed Won"}]}]}"#;
        let pipelines = Pipelines::from_response(body).expect("pipelines");
        assert_eq!(stage("closed *", &pipelines), None);
        assert_eq!(stage("S1", &pipelines), None);
        assert_eq!(pipeline("P1", &pipelines), None);
        let (_, message) = stage("Open *", &pipelines).expect("no stage matches");
        assert!(message.ends_with("(it has: Closed Won)"), "{message}");
    }
}

//! `autofollow check --online`: the users, pipelines, stages and custom fields the rule files
//! name, confirmed against GoHighLevel for every location autofollow has a credential for
//! (or one). For each location only what its rules name is read, once per run: its users
//! (and, for ids it lacks, its company's), its pipelines, its custom fields. Every call takes
//! the location's rate budget; a call the budget defers waits its turn, a retryable failure
//! is tried again a few times. [`super::directory`] says what the answers mean.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::time::Duration;

use secrecy::SecretString;

use super::directory::{self, Directory, Finding, Lookup, Need};
use crate::access::{Access, NoToken};
use crate::ghl::users::User;
use crate::ghl::{CallError, GhlClient};
use crate::model::event::STANDARD_KEYS;
use crate::model::ids::{LocationId, UserId};
use crate::rules::{Named, Reference, RuleSet, Severity};

/// The longest a call waits for the location's budget before the check gives up on it.
const LONGEST_WAIT: Duration = Duration::from_secs(60);
/// Tries of a call that fails in a way worth trying again.
const TRIES: u32 = 3;

/// What the online check found.
#[derive(Debug, Default)]
pub struct Online {
    /// Problems, the same problem in several locations once.
    pub findings: Vec<Finding>,
    /// Per location checked: what was read (`12 users, 2 pipelines`).
    pub read: Vec<(LocationId, String)>,
}

/// Checks `set` for every location with a credential, or only `only`.
pub async fn check(
    ghl: &GhlClient,
    access: &Access,
    set: &RuleSet,
    only: Option<&LocationId>,
) -> Result<Online, String> {
    let mut locations = access.locations().await?;
    if let Some(only) = only {
        let granted = locations.remove(only).flatten();
        locations = [(only.clone(), granted)].into();
    }
    let mut online = Online::default();
    let mut found = Vec::new();
    let mut companies = Companies::default();
    for (location, granted) in locations {
        let mut reader = Reader {
            ghl,
            location: &location,
            failed: Vec::new(),
        };
        let (dir, read) = match access.token(&location).await {
            Ok(token) => {
                let dir = reader.directory(&token.secret, set, granted, &mut companies);
                let dir = dir.await;
                let read = summary(&dir);
                (Some(dir), read)
            }
            Err(e) => {
                found.push(no_token(&location, &e));
                (None, "nothing (no usable token)".to_owned())
            }
        };
        if let Some(dir) = dir {
            found.extend(findings(set, &location, &dir, &reader.failed));
        }
        online.read.push((location, read));
    }
    online.findings = merged(found);
    Ok(online)
}

fn no_token(location: &LocationId, e: &NoToken) -> Finding {
    let why = match e {
        NoToken::Missing => "no token".to_owned(),
        NoToken::Uninstalled => "the app was uninstalled".to_owned(),
        NoToken::Reauthorize { reason, .. } => {
            format!("the app must be installed again ({reason})")
        }
        NoToken::Unavailable(reason) => reason.clone(),
    };
    Finding {
        severity: Severity::Error,
        origin: None,
        message: format!("cannot check: {why}"),
        locations: vec![location.clone()],
    }
}

/// What was read, in a few words.
fn summary(dir: &Directory) -> String {
    let mut parts = Vec::new();
    let mut count = |n: Option<usize>, one: &str, more: &str| {
        parts.extend(n.map(|n| format!("{n} {}", if n == 1 { one } else { more })));
    };
    count(dir.users.as_read().map(Vec::len), "user", "users");
    let pipelines = dir.pipelines.as_read().map(|p| p.pipelines().count());
    count(pipelines, "pipeline", "pipelines");
    count(
        dir.fields.as_read().map(Vec::len),
        "custom field",
        "custom fields",
    );
    if parts.is_empty() {
        "nothing needed".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The company users already looked up, by company and id (`None`: not the company's).
#[derive(Default)]
struct Companies(HashMap<String, HashMap<String, Option<User>>>);

/// Reads one location's directory.
struct Reader<'a> {
    ghl: &'a GhlClient,
    location: &'a LocationId,
    /// The lookups GoHighLevel refused or did not answer: what, its status, why.
    failed: Vec<(&'static Need, Option<u16>, String)>,
}

impl Reader<'_> {
    /// The parts of the directory the location's references need.
    async fn directory(
        &mut self,
        token: &SecretString,
        set: &RuleSet,
        granted: Option<BTreeSet<String>>,
        companies: &mut Companies,
    ) -> Directory {
        let refs = directory::relevant(set, self.location);
        let wants = |f: fn(&Named) -> bool| refs.iter().any(|r| f(&r.named));
        let mut dir = Directory {
            granted,
            ..Directory::default()
        };
        if wants(|n| matches!(n, Named::User { .. })) {
            self.users(token, &refs, &mut dir, companies).await;
        }
        if wants(|n| matches!(n, Named::Pipeline(_) | Named::Stage(_))) {
            let answer = patiently(|| self.ghl.pipelines(token, self.location)).await;
            dir.pipelines = self.lookup(answer, &directory::PIPELINES);
        }
        if wants(
            |n| matches!(n, Named::Field(p) if p.segments[0] == "customFields" || !STANDARD_KEYS.contains(&p.segments[0].as_str())),
        ) {
            let answer = patiently(|| self.ghl.custom_fields(token, self.location)).await;
            dir.fields = self.lookup(answer, &directory::FIELDS);
        }
        dir
    }

    /// The location's users, and for the ids named that are not among them, the company's.
    async fn users(
        &mut self,
        token: &SecretString,
        refs: &[&Reference],
        dir: &mut Directory,
        companies: &mut Companies,
    ) {
        let location = patiently(|| self.ghl.location(token, self.location)).await;
        let Some(company) =
            (self.lookup(location, &directory::LOCATIONS).into_read()).map(|l| l.company_id)
        else {
            return;
        };
        let users = patiently(|| self.ghl.location_users(token, &company, self.location)).await;
        dir.users = self.lookup(users, &directory::USERS);
        let Some(users) = dir.users.as_read() else {
            return;
        };
        let known = companies.0.entry(company.clone()).or_default();
        let mut missing: Vec<UserId> = refs
            .iter()
            .filter_map(|r| match &r.named {
                Named::User { id, .. } => Some(id.clone()),
                _ => None,
            })
            .filter(|id| !users.iter().any(|u| u.id == id.as_str()))
            .filter(|id| !known.contains_key(id.as_str()))
            .collect();
        missing.sort();
        missing.dedup();
        if !missing.is_empty() {
            let answer = patiently(|| {
                self.ghl
                    .company_users(token, &company, self.location, &missing)
            });
            let Some(found) = self.lookup(answer.await, &directory::USERS).into_read() else {
                return;
            };
            for id in &missing {
                let user = found.iter().find(|u| u.id == id.as_str()).cloned();
                known.insert(id.as_str().to_owned(), user);
            }
        }
        dir.company = Lookup::Read(known.values().flatten().cloned().collect());
    }

    /// An answer as a lookup; a failure remembered for the report.
    fn lookup<T>(&mut self, answer: Result<T, CallError>, need: &'static Need) -> Lookup<T> {
        match answer {
            Ok(value) => Lookup::Read(value),
            Err(e) => {
                let status = match &e {
                    CallError::Permanent { status, .. } | CallError::Retryable { status, .. } => {
                        *status
                    }
                    CallError::Deferred { .. } => None,
                };
                self.failed.push((need, status, e.to_string()));
                Lookup::Failed
            }
        }
    }
}

/// Runs `call` until it is answered: waiting while the location's budget defers it (up to
/// [`LONGEST_WAIT`] at a time), and trying a retryable failure up to [`TRIES`] times.
async fn patiently<T, F, Fut>(mut call: F) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CallError>>,
{
    let mut tries = 1;
    loop {
        let wait = match call().await {
            Err(CallError::Deferred { wait }) if wait <= LONGEST_WAIT => wait,
            Err(CallError::Retryable { retry_after, .. }) if tries < TRIES => {
                tries += 1;
                let backoff = Duration::from_millis(500 << tries);
                retry_after.unwrap_or(backoff).min(LONGEST_WAIT)
            }
            other => return other,
        };
        tokio::time::sleep(wait.max(Duration::from_millis(5))).await;
    }
}

/// The problems of one location: what the references say against the directory, the scopes
/// the rules need that the token lacks, and what could not be checked.
fn findings(
    set: &RuleSet,
    location: &LocationId,
    dir: &Directory,
    failed: &[(&'static Need, Option<u16>, String)],
) -> Vec<Finding> {
    let refs = directory::relevant(set, location);
    let at = |severity, origin, message| Finding {
        severity,
        origin,
        message,
        locations: vec![location.clone()],
    };
    let mut out: Vec<Finding> = directory::confirm(&refs, dir)
        .into_iter()
        .map(|(severity, origin, message)| at(severity, Some(origin), message))
        .collect();
    let needed = directory::scopes_needed(set, location);
    for (scope, why) in &needed {
        let refused = failed
            .iter()
            .find(|(need, status, _)| need.scope == *scope && matches!(status, Some(401 | 403)));
        let not_granted = dir.granted.as_ref().is_some_and(|g| !g.contains(*scope));
        let message = match (refused, not_granted) {
            (Some((need, _, reason)), _) => format!(
                "the token lacks `{scope}`, needed {why} ({} was refused: {reason})",
                need.reads
            ),
            (None, true) => format!("the installation was not granted `{scope}`, needed {why}"),
            (None, false) => continue,
        };
        out.push(at(Severity::Error, None, message));
    }
    for (need, status, reason) in failed {
        if needed.iter().any(|(s, _)| *s == need.scope) && matches!(status, Some(401 | 403)) {
            continue;
        }
        let grant = match status {
            Some(401 | 403) => format!("; grant `{}` to check them", need.scope),
            _ => String::new(),
        };
        let message = format!("not checked: {} failed: {reason}{grant}", need.reads);
        out.push(at(Severity::Warning, None, message));
    }
    out
}

/// Findings that differ only in their location, once, with every location.
fn merged(found: Vec<Finding>) -> Vec<Finding> {
    let mut out: Vec<Finding> = Vec::new();
    for f in found {
        let same = |o: &&mut Finding| {
            o.severity == f.severity && o.origin == f.origin && o.message == f.message
        };
        match out.iter_mut().find(same) {
            Some(existing) => existing.locations.extend(f.locations),
            None => out.push(f),
        }
    }
    let position = |f: &Finding| {
        f.origin
            .as_ref()
            .map(|o| (o.file.clone(), o.line, o.column))
    };
    out.sort_by_key(|f| (f.origin.is_some(), position(f)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(yaml: &str) -> RuleSet {
        RuleSet::from_sources(&[("r.yaml", yaml)]).expect("rules load")
    }

    #[test]
    fn scopes_an_installation_was_not_granted_are_reported_with_the_rules_needing_them() {
        let rules =
            set("rules:\n  - name: owner\n    events: [Workflow]\n    add: [assigned_user]\n");
        let location = LocationId::parse("L0").unwrap();
        let granted = ["contacts.write", "users.readonly"]
            .map(str::to_owned)
            .into();
        let dir = Directory {
            granted: Some(granted),
            ..Directory::default()
        };
        let found = findings(&rules, &location, &dir, &[]);
        let messages: Vec<&str> = found.iter().map(|f| f.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "the installation was not granted `locations.readonly`, needed to find a workflow event's assignee by email, for rules `owner`"
            ]
        );
    }

    #[test]
    fn a_lookup_the_rules_do_not_need_at_run_time_leaves_a_warning_that_it_was_not_checked() {
        let rules =
            set("users: { alice: AliceUser00000000001 }\nrules:\n  - name: a\n    add: [alice]\n");
        let location = LocationId::parse("L0").unwrap();
        let dir = Directory::default();
        let failed = [(
            &directory::USERS,
            Some(401),
            "GoHighLevel answered 401".to_owned(),
        )];
        let found = findings(&rules, &location, &dir, &failed);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].severity, Severity::Warning);
        assert!(
            found[0]
                .message
                .ends_with("grant `users.readonly` to check them"),
            "{found:?}"
        );
    }

    #[test]
    fn the_same_problem_in_several_locations_is_one_finding() {
        let finding = |l: &str| Finding {
            severity: Severity::Error,
            origin: None,
            message: "m".into(),
            locations: vec![LocationId::parse(l).unwrap()],
        };
        let merged = merged(vec![finding("L0"), finding("L1")]);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].locations.len(), 2);
    }
}

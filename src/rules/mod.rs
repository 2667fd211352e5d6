//! Rules: which users should follow a contact, decided from YAML rule files.
//!
//! [`RuleSet::load`] reads and validates the files ([`load`]), compiles them ([`model`]) and
//! indexes them ([`index`]); [`RuleSet::evaluate`] and [`RuleSet::explain`] run them
//! ([`eval`]) against one [`Event`].

pub mod deal;
mod eval;
mod index;
mod lint;
mod live;
mod load;
mod model;
mod overlap;
mod pattern;
mod report;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub use eval::{Check, Explanation, NoResolver, Resolver, RuleOutcome, RuleTrace};
pub use live::{LiveRules, ReloadStatus};
pub use load::{
    CONDITION_KEYS, Diagnostic, LoadError, MAX_FOLLOWERS, POOL_KEYS, RULE_KEYS, Severity,
    TARGET_KEYS, TOP_KEYS, closest,
};
pub use model::{
    FieldPath, Follow, Named, OpportunityStatus, Origin, Pool, Reference, Rule, UserRef,
};
pub use pattern::{Pattern, PatternSet, normalize};
pub use report::explain_report;

use crate::model::event::Event;
use crate::model::ids::UserId;
use crate::model::plan::{Plan, PreviousState};
use eval::View;
use index::RuleIndex;

/// A validated, compiled and indexed set of rules. Immutable: reloading builds a new one.
#[derive(Debug)]
pub struct RuleSet {
    rules: Vec<Rule>,
    index: RuleIndex,
    files: Vec<Arc<str>>,
    aliases: BTreeMap<String, UserId>,
    pools: BTreeMap<String, Arc<Pool>>,
    /// The paths of the enabled rules' field targets, each once: read for every event
    /// ([`RuleSet::target_emails`]), so gathered once here.
    field_targets: Vec<FieldPath>,
    warnings: Vec<Diagnostic>,
    references: Vec<Reference>,
    version: String,
}

/// What the rules decided for one event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evaluation {
    pub plan: Plan,
    /// Names of the rules that matched, in evaluation order.
    pub matched: Vec<String>,
    /// (rule, user) for every user a matched rule adds, before the plans combine: which
    /// rules keep a user following.
    pub adds: Vec<(String, UserId)>,
    /// The position of the rule whose `stop` ended evaluation: later rules were not
    /// evaluated, so whether they hold is not known.
    pub stopped_at: Option<usize>,
    /// (rule, pool) for every pool a matched rule adds one member of: the service picks
    /// the member ([`Evaluation::pick`]), since the pick needs the store.
    pub picks: Vec<(String, Arc<Pool>)>,
}

impl Evaluation {
    /// Adds the member picked for `rule` to the plan as the rule's own add (unless the
    /// plan already adds it; not when another rule removes it).
    pub fn pick(&mut self, rule: &str, user: UserId, label: String) {
        if self.plan.remove.iter().any(|e| e.user == user) {
            return;
        }
        if !self.plan.add.iter().any(|e| e.user == user) {
            let rule_name = rule.to_owned();
            let entry = crate::model::plan::PlanEntry {
                user: user.clone(),
                label,
                rule: rule_name,
                only_if_added: false,
            };
            self.plan.add.push(entry);
        }
        self.adds.push((rule.to_owned(), user));
    }

    /// Whether `rule` adds `user` in this evaluation.
    pub fn adds(&self, rule: &str, user: &UserId) -> bool {
        self.adds.iter().any(|(r, u)| r == rule && u == user)
    }
}

/// The JSON Schema of the rule file format, for editors (`autofollow schema`).
pub const SCHEMA: &str = include_str!("schema.json");

impl RuleSet {
    /// Loads one rule file, or every `*.yaml` / `*.yml` file of a directory in file-name order.
    pub fn load(path: &Path) -> Result<RuleSet, LoadError> {
        let sources = load::read_path(path)?;
        RuleSet::from_sources(&sources)
    }

    /// A candidate: the rule files at `path` with the one named `name` (its file name)
    /// replaced by `text`, or `text` added as `name` when there is none.
    pub fn load_replacing(path: &Path, name: &str, text: &str) -> Result<RuleSet, LoadError> {
        let mut sources = load::read_path(path)?;
        let same = |n: &str| Path::new(n).file_name().and_then(|f| f.to_str()) == Some(name);
        match sources.iter_mut().find(|(n, _)| same(n)) {
            Some(slot) => text.clone_into(&mut slot.1),
            None => sources.push((Arc::from(name), text.to_owned())),
        }
        RuleSet::from_sources(&sources)
    }

    /// Builds a rule set from `(file name, YAML text)` pairs, evaluated in the order given.
    pub fn from_sources<N: AsRef<str>, T: AsRef<str>>(
        sources: &[(N, T)],
    ) -> Result<RuleSet, LoadError> {
        let sources: Vec<(Arc<str>, String)> = sources
            .iter()
            .map(|(n, t)| (Arc::from(n.as_ref()), t.as_ref().to_owned()))
            .collect();
        let mut loaded = load::load_sources(&sources)?;
        loaded.warnings.extend(lint::lint(&loaded.rules));
        let file_order = |d: &Diagnostic| sources.iter().position(|(n, _)| *n == d.file);
        loaded
            .warnings
            .sort_by_key(|d| (file_order(d), d.line, d.column));
        let version = {
            use sha2::Digest;
            let mut hash = sha2::Sha256::new();
            for (name, text) in &sources {
                hash.update(name.as_bytes());
                hash.update([0]);
                hash.update(text.as_bytes());
                hash.update([0]);
            }
            hash.finalize()
                .iter()
                .take(6)
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        Ok(RuleSet {
            version,
            field_targets: field_targets(&loaded.rules),
            index: RuleIndex::build(&loaded.rules),
            rules: loaded.rules,
            files: loaded.files,
            aliases: loaded.aliases,
            pools: loaded.pools,
            warnings: loaded.warnings,
            references: loaded.references,
        })
    }

    /// The user a name stands for: an alias of the rules, or a user id.
    pub fn user_named(&self, name: &str) -> Result<UserId, String> {
        if let Some(id) = self.aliases.get(name) {
            return Ok(id.clone());
        }
        UserId::parse(name)
            .map_err(|e| format!("{name}: neither an alias of the rules nor a user id ({e})"))
    }

    /// The pools of every file, by name.
    pub fn pools(&self) -> &BTreeMap<String, Arc<Pool>> {
        &self.pools
    }

    /// A content hash of the files (names and text): which rule set decided something.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The rules in evaluation order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The files the rules came from, in load order.
    pub fn files(&self) -> &[Arc<str>] {
        &self.files
    }

    /// The rule named `name`, with its position in evaluation order.
    pub fn rule(&self, name: &str) -> Option<(usize, &Rule)> {
        self.rules.iter().enumerate().find(|(_, r)| r.name == name)
    }

    /// User aliases from every file's `users` section.
    pub fn aliases(&self) -> &BTreeMap<String, UserId> {
        &self.aliases
    }

    /// The users, pipelines, stages and custom fields the files name, with where: what only
    /// GoHighLevel can confirm (`autofollow check --online`).
    pub fn references(&self) -> &[Reference] {
        &self.references
    }

    /// Problems that do not stop loading (see `autofollow check`).
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// Decides the followers to add and remove for `event`, looking only at the rules the
    /// index says could match.
    pub fn evaluate(
        &self,
        event: &Event,
        previous: &PreviousState,
        resolver: &dyn Resolver,
    ) -> Evaluation {
        let view = View::new(event, previous, resolver);
        let candidates = self.index.candidates(&view);
        let run = eval::run(&self.rules, Some(&candidates), &view, false);
        Evaluation {
            plan: run.plan.finish(),
            matched: run.matched,
            adds: run.adds,
            stopped_at: run.stopped_at,
            picks: run.picks,
        }
    }

    /// The emails the rules' field targets read from `event` (the first value at each path,
    /// where it holds an `@`): the service looks them up among the location's users before
    /// evaluating, as it does a workflow event's assignee.
    pub fn target_emails(&self, event: &Event) -> Vec<String> {
        let mut emails = Vec::new();
        for path in &self.field_targets {
            let value = eval::field_values(&event.raw, path).into_iter().next();
            let value = value.map(|v| v.trim().to_owned());
            emails.extend(value.filter(|v| v.contains('@')));
        }
        emails.sort();
        emails.dedup();
        emails
    }

    /// Evaluates every rule and records why each matched or not. Same plan as
    /// [`RuleSet::evaluate`], at the cost of checking every rule. Pools deal their member
    /// from a fresh sequence, today in UTC ([`deal::Dealing::fresh`]).
    pub fn explain(
        &self,
        event: &Event,
        previous: &PreviousState,
        resolver: &dyn Resolver,
    ) -> Explanation {
        self.explain_dealt(event, previous, resolver, &mut deal::Dealing::fresh())
    }

    /// [`RuleSet::explain`], pools dealing by `dealing` (the service's sequence needs its
    /// store).
    pub fn explain_dealt(
        &self,
        event: &Event,
        previous: &PreviousState,
        resolver: &dyn Resolver,
        dealing: &mut deal::Dealing,
    ) -> Explanation {
        let view = View::new(event, previous, resolver);
        let mut run = eval::run(&self.rules, None, &view, true);
        let plan = dealing.explained(&mut run, (&event.location_id, &event.contact_id));
        Explanation {
            rules: run.traces,
            plan,
        }
    }
}

/// The paths of the enabled rules' field targets, each once.
fn field_targets(rules: &[Rule]) -> Vec<FieldPath> {
    let mut paths: Vec<FieldPath> = Vec::new();
    for rule in rules.iter().filter(|r| r.enabled) {
        for target in rule.add.iter().chain(&rule.remove) {
            match target {
                UserRef::Field(path) if !paths.contains(path) => paths.push(path.clone()),
                _ => {}
            }
        }
    }
    paths
}

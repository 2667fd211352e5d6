//! Loading rule files: YAML with positions → validated, compiled [`Rule`]s.
//!
//! Every problem of every file is collected before giving up, each with file, line and column.
//! The YAML is read into a tree that keeps positions (`marked-yaml`) and walked by hand:
//! serde's derive stops at the first error and loses positions for the semantic checks
//! (duplicate names, unknown aliases) that need them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{LoadError as YamlError, LoaderOptions, Node, Span};
use serde::Serialize;

use super::eval::status_from_name;
use super::model::{
    Block, Condition, FieldPath, Follow, Named, Origin, Pool, Reference, Rule, Table, UserRef,
};
use super::pattern::PatternSet;
use crate::model::event::EventType;
use crate::model::ids::{UserId, looks_like_ghl_id};

mod targets;

pub use targets::{POOL_KEYS, TARGET_KEYS};
use targets::{RawPool, RawTable, RawTarget};

/// GoHighLevel's cap on followers per contact, so no rule can sensibly add more.
pub const MAX_FOLLOWERS: usize = 10;

/// Keys of a rule file's top level.
pub const TOP_KEYS: &[&str] = &["version", "users", "tables", "pools", "rules"];
/// Keys of a rule.
pub const RULE_KEYS: &[&str] = &[
    "name",
    "description",
    "enabled",
    "events",
    "locations",
    "when",
    "add",
    "remove",
    "follow",
    "stop",
];
/// Keys of a condition block (`when`, entries of `any`, `not`).
pub const CONDITION_KEYS: &[&str] = &[
    "source",
    "has_tag",
    "lacks_tag",
    "tag_added",
    "tag_removed",
    "pipeline",
    "stage",
    "stage_entered",
    "stage_left",
    "status",
    "workflow",
    "assigned_changed",
    "fields",
    "any",
    "not",
];
const ASSIGNED_USER: &str = "assigned_user";
const PREVIOUS_ASSIGNED_USER: &str = "previous_assigned_user";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found while loading, with where it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: Arc<str>,
    /// 1-based; `None` for problems with the file as a whole (unreadable, empty directory).
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {severity}: {}", self.file, self.message),
            _ => write!(f, "{}: {severity}: {}", self.file, self.message),
        }
    }
}

/// Loading failed: every error (and warning) found, in file order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    pub diagnostics: Vec<Diagnostic>,
}

impl LoadError {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors().count();
        write!(
            f,
            "{n} error{} in rule files",
            if n == 1 { "" } else { "s" }
        )?;
        for d in &self.diagnostics {
            write!(f, "\n{d}")?;
        }
        Ok(())
    }
}

/// What loading produced: the rules in order, the aliases, and any warnings.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub rules: Vec<Rule>,
    pub files: Vec<Arc<str>>,
    pub aliases: BTreeMap<String, UserId>,
    pub pools: BTreeMap<String, Arc<Pool>>,
    pub warnings: Vec<Diagnostic>,
    /// The users, pipelines, stages and fields named, in file order.
    pub references: Vec<Reference>,
}

/// Reads one rule file, or every `*.yaml` / `*.yml` file of a directory in file-name order
/// (hidden files skipped: Kubernetes ConfigMap mounts keep their bookkeeping there).
pub(crate) fn read_path(path: &Path) -> Result<Vec<(Arc<str>, String)>, LoadError> {
    let display: Arc<str> = path.display().to_string().into();
    let whole = |message: String| LoadError {
        diagnostics: vec![Diagnostic {
            severity: Severity::Error,
            file: display.clone(),
            line: None,
            column: None,
            message,
        }],
    };
    let meta = std::fs::metadata(path).map_err(|e| whole(format!("cannot read: {e}")))?;
    let paths = if meta.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|e| whole(format!("cannot list: {e}")))?;
        let mut files: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or(".");
                let ext = p.extension().and_then(|e| e.to_str());
                !name.starts_with('.') && matches!(ext, Some("yaml" | "yml")) && p.is_file()
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(whole(
                "no rule files (*.yaml, *.yml) in this directory".into(),
            ));
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = Vec::new();
    let mut diagnostics = Vec::new();
    for p in paths {
        let name: Arc<str> = p.display().to_string().into();
        match std::fs::read_to_string(&p) {
            Ok(text) => out.push((name, text)),
            Err(e) => diagnostics.push(Diagnostic {
                severity: Severity::Error,
                file: name,
                line: None,
                column: None,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    if diagnostics.is_empty() {
        Ok(out)
    } else {
        Err(LoadError { diagnostics })
    }
}

/// Parses and validates rule files given as (name, text), in the order given.
pub(crate) fn load_sources(sources: &[(Arc<str>, String)]) -> Result<Loaded, LoadError> {
    let mut diags = Vec::new();
    let mut files = Vec::new();
    let mut references = Vec::new();
    for (name, text) in sources {
        let mut cx = Cx::new(name.clone(), &mut diags);
        if let Some(spec) = parse_file(&mut cx, text) {
            files.push((name.clone(), spec));
        }
        references.append(&mut cx.found);
    }
    let (rules, aliases, pools) = link(&mut diags, files, &mut references);
    // Report in reading order: file by file, top to bottom.
    let file_order = |d: &Diagnostic| sources.iter().position(|(n, _)| *n == d.file);
    diags.sort_by_key(|d| (file_order(d), d.line, d.column));
    if diags.iter().any(|d| d.severity == Severity::Error) {
        return Err(LoadError { diagnostics: diags });
    }
    Ok(Loaded {
        rules,
        files: sources.iter().map(|(n, _)| n.clone()).collect(),
        aliases,
        pools,
        warnings: diags,
        references,
    })
}

/// Diagnostics sink for one file.
struct Cx<'a> {
    file: Arc<str>,
    diags: &'a mut Vec<Diagnostic>,
    /// The references found so far.
    found: Vec<Reference>,
}

impl<'a> Cx<'a> {
    fn new(file: Arc<str>, diags: &'a mut Vec<Diagnostic>) -> Cx<'a> {
        Cx {
            file,
            diags,
            found: Vec::new(),
        }
    }

    /// `named` is written at `span` (in the rule being read, which names it later).
    fn refer(&mut self, named: Named, span: &Span) {
        let origin = self.origin(span);
        self.found.push(Reference {
            named,
            origin,
            rule: None,
        });
    }

    fn push(&mut self, severity: Severity, span: &Span, message: String) {
        let start = span.start();
        self.diags.push(Diagnostic {
            severity,
            file: self.file.clone(),
            line: start.map(|m| m.line()),
            column: start.map(|m| m.column()),
            message,
        });
    }

    fn error(&mut self, span: &Span, message: impl Into<String>) {
        self.push(Severity::Error, span, message.into());
    }

    fn warn(&mut self, span: &Span, message: impl Into<String>) {
        self.push(Severity::Warning, span, message.into());
    }

    fn origin(&self, span: &Span) -> Origin {
        Origin {
            file: self.file.clone(),
            line: span.start().map_or(0, |m| m.line()),
            column: span.start().map_or(0, |m| m.column()),
        }
    }

    /// Reports keys of `map` not in `allowed`, suggesting the closest allowed key.
    fn unknown_keys(&mut self, map: &MarkedMappingNode, allowed: &[&str], what: &str) {
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                let hint = closest(key.as_str(), allowed.iter().copied())
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_else(|| format!("; expected one of: {}", allowed.join(", ")));
                self.error(
                    key.span(),
                    format!("unknown key `{}` in {what}{hint}", key.as_str()),
                );
            }
        }
    }
}

/// The closest candidate to `word`, if it is close enough to be a likely typo.
pub fn closest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let lower = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::osa_distance(&lower, &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= (c.len().max(lower.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn kind(node: &Node) -> &'static str {
    match node {
        Node::Scalar(s) if is_null(s) => "nothing",
        Node::Scalar(_) => "a string",
        Node::Mapping(_) => "a mapping",
        Node::Sequence(_) => "a list",
    }
}

fn is_null(s: &MarkedScalarNode) -> bool {
    s.may_coerce() && matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL")
}

/// A file before aliases and rule names are checked across files.
struct FileSpec {
    users: Vec<(String, UserId, Span)>,
    tables: Vec<RawTable>,
    pools: Vec<RawPool>,
    rules: Vec<RawRule>,
}

struct RawRule {
    name: Option<String>,
    span: Span,
    description: Option<String>,
    enabled: bool,
    events: Option<Vec<EventType>>,
    locations: Option<PatternSet>,
    when: Block,
    add: Vec<RawTarget>,
    remove: Vec<RawTarget>,
    follow: Follow,
    stop: bool,
    origin: Origin,
}

fn parse_file(cx: &mut Cx, text: &str) -> Option<FileSpec> {
    if let Some(line) = second_document(text) {
        cx.diags.push(Diagnostic {
            severity: Severity::Error,
            file: cx.file.clone(),
            line: Some(line),
            column: Some(1),
            message: "a rule file holds one YAML document; split this one into two files".into(),
        });
        return None;
    }
    let options = LoaderOptions::default()
        .error_on_duplicate_keys(true)
        .prevent_coercion(true);
    let root = match marked_yaml::parse_yaml_with_options(0, text, options) {
        Ok(node) => node,
        Err(e) => {
            let (span, message) = yaml_error(e);
            cx.error(&span, message);
            return None;
        }
    };
    let Node::Mapping(top) = &root else {
        cx.error(
            root.span(),
            format!("expected a mapping with `rules:`, found {}", kind(&root)),
        );
        return None;
    };
    cx.unknown_keys(top, TOP_KEYS, "the rule file");
    check_version(cx, top);
    let users = parse_users(cx, top);
    let tables = targets::parse_all::<RawTable>(cx, top);
    let pools = targets::parse_all::<RawPool>(cx, top);
    let rules = parse_rules(cx, top);
    Some(FileSpec {
        users,
        tables,
        pools,
        rules,
    })
}

/// `version`, when given, must be 1.
fn check_version(cx: &mut Cx, top: &MarkedMappingNode) {
    if let Some(v) = top.get_node("version") {
        match v {
            Node::Scalar(s) if s.as_str().trim() == "1" => {}
            other => cx.error(
                other.span(),
                format!(
                    "`version` must be 1, the only version; found {}",
                    describe(other)
                ),
            ),
        }
    }
}

/// The `users` section: alias name, user id and where the name stands.
fn parse_users(cx: &mut Cx, top: &MarkedMappingNode) -> Vec<(String, UserId, Span)> {
    let mut users = Vec::new();
    match top.get_node("users") {
        None => {}
        Some(Node::Mapping(map)) => {
            for (name, value) in map.iter() {
                if [ASSIGNED_USER, PREVIOUS_ASSIGNED_USER].contains(&name.as_str()) {
                    let message = format!(
                        "`{}` is reserved for an assignee and cannot be an alias",
                        name.as_str()
                    );
                    cx.error(name.span(), message);
                    continue;
                }
                match value {
                    Node::Scalar(id) if !is_null(id) && !id.as_str().trim().is_empty() => {
                        let id_text = id.as_str().trim();
                        let Ok(user) = UserId::parse(id_text) else {
                            cx.error(id.span(), format!("user id of alias `{}` is not a GoHighLevel id (letters, digits, `_` or `-`, at most 64)", name.as_str()));
                            continue;
                        };
                        if !looks_like_ghl_id(id_text) {
                            cx.warn(id.span(), format!("user id `{id_text}` of alias `{}` does not look like a GoHighLevel id (20 letters and digits)", name.as_str()));
                        }
                        users.push((name.as_str().to_owned(), user, *name.span()));
                    }
                    other => cx.error(
                        other.span(),
                        format!(
                            "alias `{}` must map to a user id (a string), found {}",
                            name.as_str(),
                            kind(other)
                        ),
                    ),
                }
            }
        }
        Some(other) => cx.error(
            other.span(),
            format!(
                "`users` must map alias names to user ids, found {}",
                kind(other)
            ),
        ),
    }
    users
}

/// The `rules` list, each rule checked on its own.
fn parse_rules(cx: &mut Cx, top: &MarkedMappingNode) -> Vec<RawRule> {
    let mut rules = Vec::new();
    match top.get_node("rules") {
        None => {}
        Some(Node::Sequence(items)) => {
            for item in items.iter() {
                match item {
                    Node::Mapping(map) => rules.push(parse_rule(cx, map)),
                    other => cx.error(
                        other.span(),
                        format!("each rule must be a mapping, found {}", kind(other)),
                    ),
                }
            }
        }
        Some(other) => cx.error(
            other.span(),
            format!("`rules` must be a list of rules, found {}", kind(other)),
        ),
    }
    rules
}

/// Line of a `---` that starts a second document, if any. A `---` at column 0 after content
/// can only be a document marker (block scalars are indented).
fn second_document(text: &str) -> Option<usize> {
    let mut seen_content = false;
    for (i, line) in text.lines().enumerate() {
        let is_marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if is_marker && seen_content {
            return Some(i + 1);
        }
        let t = line.trim();
        if !t.is_empty() && !t.starts_with('#') && !is_marker {
            seen_content = true;
        }
    }
    None
}

fn yaml_error(e: YamlError) -> (Span, String) {
    let at = |m: marked_yaml::Marker| Span::new_start(m);
    match e {
        YamlError::ScanError(m, scan) => (at(m), format!("invalid YAML: {}", scan.info())),
        YamlError::TopLevelMustBeMapping(m) => (
            at(m),
            "expected a mapping with `rules:` at the top of the file".into(),
        ),
        YamlError::TopLevelMustBeSequence(m) => (at(m), "expected a sequence".into()),
        YamlError::UnexpectedAnchor(m) => (
            at(m),
            "YAML anchors and aliases (&, *) are not supported in rule files".into(),
        ),
        YamlError::MappingKeyMustBeScalar(m) => {
            (at(m), "mapping keys must be plain strings".into())
        }
        YamlError::UnexpectedTag(m) => (
            at(m),
            "YAML tags (!, !!) are not supported in rule files".into(),
        ),
        YamlError::DuplicateKey(inner) => {
            let first = inner
                .prev_key
                .span()
                .start()
                .map(|m| format!(" (first at line {}, column {})", m.line(), m.column()))
                .unwrap_or_default();
            (
                *inner.key.span(),
                format!("duplicate key `{}`{first}", inner.key.as_str()),
            )
        }
    }
}

/// A short rendering of a node for messages.
fn describe(node: &Node) -> String {
    match node {
        Node::Scalar(s) if !is_null(s) => format!("`{}`", s.as_str()),
        other => kind(other).to_owned(),
    }
}

/// A string or a list of strings, non-empty; each with its span.
fn strings(cx: &mut Cx, node: &Node, key: &str) -> Option<Vec<(String, Span)>> {
    let scalar = |cx: &mut Cx, n: &Node| -> Option<(String, Span)> {
        match n {
            Node::Scalar(s) if !is_null(s) && !s.as_str().trim().is_empty() => {
                Some((s.as_str().trim().to_owned(), *s.span()))
            }
            other => {
                cx.error(
                    other.span(),
                    format!(
                        "`{key}` values must be non-empty strings, found {}",
                        kind(other)
                    ),
                );
                None
            }
        }
    };
    match node {
        Node::Sequence(items) if items.is_empty() => {
            cx.error(node.span(), format!("`{key}` must list at least one value"));
            None
        }
        Node::Sequence(items) => {
            let values: Vec<_> = items.iter().map(|n| scalar(cx, n)).collect();
            values.into_iter().collect()
        }
        Node::Mapping(_) => {
            cx.error(
                node.span(),
                format!("`{key}` must be a string or a list of strings, found a mapping"),
            );
            None
        }
        Node::Scalar(_) => scalar(cx, node).map(|v| vec![v]),
    }
}

fn patterns(cx: &mut Cx, node: &Node, key: &str) -> Option<PatternSet> {
    strings(cx, node, key).map(|v| PatternSet::new(v.iter().map(|(s, _)| s)))
}

/// Values naming something in GoHighLevel (pipelines, stages): patterns, each a reference.
fn named(cx: &mut Cx, node: &Node, key: &str, what: fn(String) -> Named) -> Option<PatternSet> {
    let values = strings(cx, node, key)?;
    for (value, span) in &values {
        cx.refer(what(value.clone()), span);
    }
    Some(PatternSet::new(values.iter().map(|(s, _)| s)))
}

fn boolean(cx: &mut Cx, node: &Node, key: &str) -> Option<bool> {
    match node {
        Node::Scalar(s) if s.as_bool().is_some() => s.as_bool(),
        other => {
            cx.error(
                other.span(),
                format!("`{key}` must be true or false, found {}", describe(other)),
            );
            None
        }
    }
}

/// `follow: on_match | while_matching`. A while-matching rule must hold for a while: its
/// conditions describe the contact's state, not a change (`tag_added`, `stage_entered`, …,
/// `workflow`), which holds only at the moment it happens.
fn rule_follow(cx: &mut Cx, map: &MarkedMappingNode, when: &Block) -> Follow {
    let Some(node) = map.get_node("follow") else {
        return Follow::OnMatch;
    };
    let follow = match node {
        Node::Scalar(s) if s.as_str() == "on_match" => Follow::OnMatch,
        Node::Scalar(s) if s.as_str() == "while_matching" => Follow::WhileMatching,
        other => {
            let found = match other {
                Node::Scalar(s) => format!("`{}`", s.as_str()),
                other => kind(other).to_owned(),
            };
            let message = format!("`follow` must be `on_match` or `while_matching`, found {found}");
            cx.error(other.span(), message);
            return Follow::OnMatch;
        }
    };
    if follow == Follow::WhileMatching {
        if let Some(key) = when.moments().first() {
            let message = format!(
                "`follow: while_matching` needs conditions that hold for a while; `{key}` holds only when the change happens"
            );
            cx.error(node.span(), message);
        }
    }
    follow
}

fn parse_rule(cx: &mut Cx, map: &MarkedMappingNode) -> RawRule {
    cx.unknown_keys(map, RULE_KEYS, "a rule");
    // A block mapping's own mark lies after its first key; the first key is where the rule
    // visibly starts.
    let span = map.keys().next().map_or(*map.span(), |k| *k.span());
    let first_reference = cx.found.len();
    let name = rule_name(cx, map, &span);
    let description = map.get_node("description").and_then(|n| match n {
        Node::Scalar(s) => Some(s.as_str().to_owned()),
        other => {
            cx.error(
                other.span(),
                format!("`description` must be a string, found {}", kind(other)),
            );
            None
        }
    });
    let enabled = map
        .get_node("enabled")
        .and_then(|n| boolean(cx, n, "enabled"))
        .unwrap_or(true);
    let stop = map
        .get_node("stop")
        .and_then(|n| boolean(cx, n, "stop"))
        .unwrap_or(false);
    let events = map
        .get_node("events")
        .and_then(|n| strings(cx, n, "events"))
        .map(|names| event_types(cx, names));
    let locations = map
        .get_node("locations")
        .and_then(|n| patterns(cx, n, "locations"));
    let when = rule_when(cx, map);
    let add = map
        .get_node("add")
        .and_then(|n| targets::targets(cx, n, "add"));
    let remove = map
        .get_node("remove")
        .and_then(|n| targets::targets(cx, n, "remove"));
    check_effect(cx, map, name.as_deref(), stop, &span);
    let follow = rule_follow(cx, map, &when);
    for r in &mut cx.found[first_reference..] {
        r.rule.clone_from(&name);
    }
    RawRule {
        name,
        span,
        description,
        enabled,
        events,
        locations,
        when,
        add: add.unwrap_or_default(),
        remove: remove.unwrap_or_default(),
        follow,
        stop,
        origin: cx.origin(&span),
    }
}

/// `name`: required, a non-empty string.
fn rule_name(cx: &mut Cx, map: &MarkedMappingNode, span: &Span) -> Option<String> {
    match map.get_node("name") {
        None => {
            cx.error(span, "rule has no `name`; every rule needs a unique name");
            None
        }
        Some(Node::Scalar(s)) if !is_null(s) && !s.as_str().trim().is_empty() => {
            Some(s.as_str().trim().to_owned())
        }
        Some(other) => {
            cx.error(
                other.span(),
                format!("`name` must be a non-empty string, found {}", kind(other)),
            );
            None
        }
    }
}

/// Event type names, each known (a close match is suggested), without repeats.
fn event_types(cx: &mut Cx, names: Vec<(String, Span)>) -> Vec<EventType> {
    let mut events = Vec::new();
    for (name, span) in names {
        match event_type(&name) {
            Some(t) => {
                if matches!(t, EventType::ContactDelete | EventType::OpportunityDelete) {
                    cx.warn(&span, format!("`{name}` is never decided on: GoHighLevel is not called for a deleted record (its queued work ends, its state is forgotten)"));
                }
                if !events.contains(&t) {
                    events.push(t);
                }
            }
            None => {
                let hint = closest(&name, EventType::ALL.iter().map(|t| t.name()))
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_else(|| "; see the README for the supported event types".to_owned());
                cx.error(&span, format!("unknown event type `{name}`{hint}"));
            }
        }
    }
    events
}

/// `when`: a mapping of conditions, or none.
fn rule_when(cx: &mut Cx, map: &MarkedMappingNode) -> Block {
    match map.get_node("when") {
        None => Block::default(),
        Some(Node::Mapping(m)) => block(cx, m),
        Some(other) => {
            cx.error(
                other.span(),
                format!(
                    "`when` must be a mapping of conditions, found {}",
                    kind(other)
                ),
            );
            Block::default()
        }
    }
}

/// A rule that only stops evaluation has an effect (it shields the contact from later rules);
/// any other rule without `add` or `remove` does nothing and is a mistake.
fn check_effect(cx: &mut Cx, map: &MarkedMappingNode, name: Option<&str>, stop: bool, span: &Span) {
    if map.get_node("add").is_none() && map.get_node("remove").is_none() && !stop {
        let label = name
            .map(|n| format!("rule `{n}`"))
            .unwrap_or_else(|| "rule".into());
        cx.error(
            span,
            format!("{label} has neither `add` nor `remove`, so it would do nothing"),
        );
    }
}

/// An event type by name, ignoring case.
fn event_type(name: &str) -> Option<EventType> {
    EventType::ALL
        .into_iter()
        .find(|t| t.name().eq_ignore_ascii_case(name))
}

fn block(cx: &mut Cx, map: &MarkedMappingNode) -> Block {
    cx.unknown_keys(map, CONDITION_KEYS, "`when` (conditions)");
    let mut conditions = Vec::new();
    for (key, value) in map.iter() {
        let k = key.as_str();
        let set = |cx: &mut Cx| patterns(cx, value, k);
        let condition = match k {
            "source" => set(cx).map(Condition::Source),
            "has_tag" => set(cx).map(Condition::HasTag),
            "lacks_tag" => set(cx).map(Condition::LacksTag),
            "tag_added" => set(cx).map(Condition::TagAdded),
            "tag_removed" => set(cx).map(Condition::TagRemoved),
            "pipeline" => named(cx, value, k, Named::Pipeline).map(Condition::Pipeline),
            "stage" => named(cx, value, k, Named::Stage).map(Condition::Stage),
            "stage_entered" => named(cx, value, k, Named::Stage).map(Condition::StageEntered),
            "stage_left" => named(cx, value, k, Named::Stage).map(Condition::StageLeft),
            "workflow" => set(cx).map(Condition::Workflow),
            "assigned_changed" => boolean(cx, value, k).map(Condition::AssignedChanged),
            "status" => strings(cx, value, k).and_then(|values| {
                let mut out = Vec::new();
                let mut ok = true;
                for (v, span) in values {
                    match status_from_name(&v) {
                        Some(s) => out.push(s),
                        None => {
                            ok = false;
                            cx.error(&span, format!("invalid status `{v}`; expected one of: open, won, lost, abandoned"));
                        }
                    }
                }
                ok.then_some(Condition::Status(out))
            }),
            "fields" => {
                fields(cx, value, &mut conditions);
                None
            }
            "any" => match value {
                Node::Sequence(items) if !items.is_empty() => {
                    let mut blocks = Vec::new();
                    for item in items.iter() {
                        match item {
                            Node::Mapping(m) => blocks.push(block(cx, m)),
                            other => cx.error(other.span(), format!("each entry of `any` must be a mapping of conditions, found {}", kind(other))),
                        }
                    }
                    Some(Condition::Any(blocks))
                }
                other => {
                    cx.error(other.span(), format!("`any` must be a non-empty list of condition mappings, found {}", kind(other)));
                    None
                }
            },
            "not" => match value {
                Node::Mapping(m) => Some(Condition::Not(Box::new(block(cx, m)))),
                other => {
                    cx.error(other.span(), format!("`not` must be a mapping of conditions, found {}", kind(other)));
                    None
                }
            },
            _ => None, // reported by unknown_keys
        };
        conditions.extend(condition);
    }
    Block(conditions)
}

/// `fields`: dot paths to values, each a condition (and a reference).
fn fields(cx: &mut Cx, value: &Node, conditions: &mut Vec<Condition>) {
    match value {
        Node::Mapping(fields) if !fields.is_empty() => {
            for (path, expected) in fields.iter() {
                match FieldPath::parse(path.as_str()) {
                    Some(p) => {
                        cx.refer(Named::Field(p.clone()), path.span());
                        let label = format!("fields.{}", path.as_str());
                        if let Some(set) = patterns(cx, expected, &label) {
                            conditions.push(Condition::Field(p, set));
                        }
                    }
                    None => cx.error(path.span(), format!("invalid field path `{}`: use dot-separated keys such as `customData.team`", path.as_str())),
                }
            }
        }
        other => cx.error(
            other.span(),
            format!(
                "`fields` must map dot paths to values, found {}",
                if matches!(other, Node::Mapping(_)) {
                    "an empty mapping"
                } else {
                    kind(other)
                }
            ),
        ),
    }
}

/// Checks names and aliases across all files and resolves `add`/`remove` entries.
/// The user ids found (in `add`/`remove`, and the aliases') are added to `references`.
fn link(
    diags: &mut Vec<Diagnostic>,
    mut files: Vec<(Arc<str>, FileSpec)>,
    references: &mut Vec<Reference>,
) -> Linked {
    let aliases = collect_aliases(diags, &files);
    let tables = targets::link_all::<RawTable>(diags, &mut files, &aliases, references);
    let pools = targets::link_all::<RawPool>(diags, &mut files, &aliases, references);
    let known = Known {
        aliases: &aliases,
        tables: &tables,
        pools: &pools,
    };
    let mut names: HashMap<String, Origin> = HashMap::new();
    let mut rules = Vec::new();
    for (file, spec) in files {
        let mut cx = Cx::new(file, diags);
        for raw in spec.rules {
            let linked = link_rule(&mut cx, raw, &known, &mut names);
            rules.extend(linked);
        }
        references.append(&mut cx.found);
    }
    for (name, (id, origin)) in &aliases {
        references.push(Reference {
            named: Named::User {
                id: id.clone(),
                alias: Some(name.clone()),
            },
            origin: origin.clone(),
            rule: None,
        });
    }
    let aliases = aliases.into_iter().map(|(k, (id, _))| (k, id)).collect();
    (rules, aliases, pools)
}

/// Every file's aliases; one name defined with two ids is an error.
fn collect_aliases(diags: &mut Vec<Diagnostic>, files: &[(Arc<str>, FileSpec)]) -> Aliases {
    let mut aliases: Aliases = BTreeMap::new();
    for (file, spec) in files {
        let mut cx = Cx::new(file.clone(), diags);
        for (name, id, span) in &spec.users {
            match aliases.get(name) {
                Some((existing, at)) if existing != id => cx.error(
                    span,
                    format!("alias `{name}` is already defined as `{existing}` at {at}"),
                ),
                Some(_) => {}
                None => {
                    let origin = cx.origin(span);
                    aliases.insert(name.clone(), (id.clone(), origin));
                }
            }
        }
    }
    aliases
}

/// One rule with its users resolved, checked (at most [`MAX_FOLLOWERS`] added, none both
/// added and removed, a unique name); `None` when it has no usable name.
fn link_rule(
    cx: &mut Cx,
    raw: RawRule,
    known: &Known,
    names: &mut HashMap<String, Origin>,
) -> Option<Rule> {
    let first_reference = cx.found.len();
    let add = resolve(cx, &raw.add, known);
    let remove = resolve(cx, &raw.remove, known);
    for r in &mut cx.found[first_reference..] {
        r.rule.clone_from(&raw.name);
    }
    let mut added_ids: Vec<UserId> = add.iter().filter_map(id_of).collect();
    added_ids.sort();
    added_ids.dedup();
    let dynamic = add.iter().map(|u| match u {
        UserRef::Table { table, .. } => table.widest(),
        u => usize::from(u.is_dynamic()),
    });
    let added = added_ids.len() + dynamic.sum::<usize>();
    if added > MAX_FOLLOWERS {
        let at = raw.add.first().map_or(raw.span, RawTarget::span);
        cx.error(&at, format!("rule adds {added} users; GoHighLevel allows at most {MAX_FOLLOWERS} followers per contact"));
    }
    for entry in raw
        .remove
        .iter()
        .filter(|e| matches!(e, RawTarget::Pool(..)))
    {
        let message = format!(
            "`{}` can only be added: a rule stops following a pool's pick with `follow: while_matching`",
            entry.text()
        );
        cx.error(&entry.span(), message);
    }
    for (entry, user) in raw.remove.iter().zip(&remove) {
        if id_of(user).is_some_and(|id| added_ids.contains(&id)) {
            let message = format!("`{}` is both added and removed by this rule", entry.text());
            cx.error(&entry.span(), message);
        }
    }
    let name = raw.name?;
    if let Some(first) = names.get(&name) {
        cx.error(
            &raw.span,
            format!("duplicate rule name `{name}` (first defined at {first})"),
        );
        return None;
    }
    names.insert(name.clone(), raw.origin.clone());
    Some(Rule {
        name,
        description: raw.description,
        enabled: raw.enabled,
        events: raw.events,
        locations: raw.locations,
        when: raw.when,
        add: dedup(add),
        remove: dedup(remove),
        follow: raw.follow,
        stop: raw.stop,
        origin: raw.origin,
    })
}

/// The rules, and the aliases and pools of every file.
type Linked = (
    Vec<Rule>,
    BTreeMap<String, UserId>,
    BTreeMap<String, Arc<Pool>>,
);

/// Aliases of every file: name → (user id, where it is defined).
type Aliases = BTreeMap<String, (UserId, Origin)>;

/// What rules can name beyond user ids, from every file.
struct Known<'a> {
    aliases: &'a Aliases,
    tables: &'a BTreeMap<String, Arc<Table>>,
    pools: &'a BTreeMap<String, Arc<Pool>>,
}

/// `add`/`remove` entries as users: `assigned_user`, `previous_assigned_user`, an alias, a
/// user id, a field or a table.
fn resolve(cx: &mut Cx, entries: &[RawTarget], known: &Known) -> Vec<UserRef> {
    let mut out = Vec::new();
    for entry in entries {
        let user = match entry {
            RawTarget::User(name, span) => user(cx, name, span, known.aliases),
            RawTarget::Field(path, _) => Some(UserRef::Field(path.clone())),
            RawTarget::Pool(name, span) => {
                targets::find::<RawPool>(cx, name, span, known.pools).map(UserRef::Pool)
            }
            RawTarget::Table { name, span, key } => {
                targets::find::<RawTable>(cx, name, span, known.tables).map(|table| {
                    UserRef::Table {
                        table,
                        key: key.clone(),
                    }
                })
            }
        };
        out.extend(user);
    }
    out
}

/// A user named by a string: `assigned_user`, `previous_assigned_user`, an alias or an id.
fn user(cx: &mut Cx, entry: &str, span: &Span, aliases: &Aliases) -> Option<UserRef> {
    if entry == ASSIGNED_USER {
        return Some(UserRef::AssignedUser);
    } else if entry == PREVIOUS_ASSIGNED_USER {
        return Some(UserRef::PreviousAssignedUser);
    } else if let Some((id, _)) = aliases.get(entry) {
        let name = entry.to_owned();
        return Some(UserRef::Alias {
            name,
            id: id.clone(),
        });
    }
    let hint = closest(entry, aliases.keys().map(String::as_str))
        .map(|a| format!("; did you mean alias `{a}`?"))
        .unwrap_or_default();
    let Ok(user) = UserId::parse(entry) else {
        cx.error(span, format!("`{entry}` is neither an alias nor a GoHighLevel user id (letters, digits, `_` or `-`, at most 64){hint}"));
        return None;
    };
    if !looks_like_ghl_id(entry) {
        cx.warn(span, format!("`{entry}` is not an alias and does not look like a GoHighLevel user id (20 letters and digits){hint}"));
    }
    let id = user.clone();
    cx.refer(Named::User { id, alias: None }, span);
    Some(UserRef::Id(user))
}

fn id_of(u: &UserRef) -> Option<UserId> {
    match u {
        UserRef::Alias { id, .. } | UserRef::Id(id) => Some(id.clone()),
        _ => None,
    }
}

/// The users without repeats (by reference, or by the id they stand for).
fn dedup(refs: Vec<UserRef>) -> Vec<UserRef> {
    let mut out: Vec<UserRef> = Vec::new();
    for r in refs {
        if !out
            .iter()
            .any(|o| o == &r || (id_of(o).is_some() && id_of(o) == id_of(&r)))
        {
            out.push(r);
        }
    }
    out
}

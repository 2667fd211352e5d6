//! Targets beyond named users: `{ field: path }`, `{ table: name, key: path }`, and the
//! `tables:` section they refer to. Tables are shared by every file, like aliases.

use super::*;
use crate::rules::model::{Table, TableEntry};
use crate::rules::pattern::Pattern;

/// Keys of a target written as a mapping.
pub const TARGET_KEYS: &[&str] = &["field", "table", "key"];

/// An `add`/`remove` entry as written.
pub(super) enum RawTarget {
    /// An alias, a user id, `assigned_user` or `previous_assigned_user`.
    User(String, Span),
    Field(FieldPath, Span),
    Table {
        name: String,
        span: Span,
        key: FieldPath,
    },
}

impl RawTarget {
    pub(super) fn span(&self) -> Span {
        match self {
            RawTarget::User(_, span) | RawTarget::Field(_, span) => *span,
            RawTarget::Table { span, .. } => *span,
        }
    }

    /// The entry as the author wrote it, for messages.
    pub(super) fn text(&self) -> String {
        match self {
            RawTarget::User(name, _) => name.clone(),
            RawTarget::Field(path, _) => format!("field {}", path.text),
            RawTarget::Table { name, .. } => format!("table {name}"),
        }
    }
}

/// `add`/`remove`: one entry or a list, each a user (a string) or a target mapping.
pub(super) fn targets(cx: &mut Cx, node: &Node, key: &str) -> Option<Vec<RawTarget>> {
    match node {
        Node::Sequence(items) if items.is_empty() => {
            cx.error(node.span(), format!("`{key}` must list at least one user"));
            None
        }
        Node::Sequence(items) => {
            // The entries that are well formed go on to be linked (an unknown table among
            // them is reported too); the others are reported here.
            Some(items.iter().filter_map(|n| target(cx, n, key)).collect())
        }
        other => target(cx, other, key).map(|t| vec![t]),
    }
}

fn target(cx: &mut Cx, node: &Node, key: &str) -> Option<RawTarget> {
    match node {
        Node::Scalar(s) if !is_null(s) && !s.as_str().trim().is_empty() => {
            Some(RawTarget::User(s.as_str().trim().to_owned(), *s.span()))
        }
        Node::Mapping(map) => mapped(cx, map, key),
        Node::Scalar(s) => {
            let message = format!(
                "`{key}` values must be non-empty strings, found {}",
                kind(node)
            );
            cx.error(s.span(), message);
            None
        }
        other => {
            let message = format!(
                "`{key}` entries must be users or `{{ field: … }}` / `{{ table: …, key: … }}`, found {}",
                kind(other)
            );
            cx.error(other.span(), message);
            None
        }
    }
}

/// `{ field: path }` or `{ table: name, key: path }`.
fn mapped(cx: &mut Cx, map: &MarkedMappingNode, key: &str) -> Option<RawTarget> {
    cx.unknown_keys(map, TARGET_KEYS, &format!("an entry of `{key}`"));
    let span = map.keys().next().map_or(*map.span(), |k| *k.span());
    let path = |cx: &mut Cx, what: &str| -> Option<FieldPath> {
        let Some(Node::Scalar(s)) = map.get_node(what) else {
            let message = format!("`{what}` must be a dot path such as `contact.postalCode`");
            cx.error(map.get_node(what).map_or(&span, |n| n.span()), message);
            return None;
        };
        let parsed = FieldPath::parse(s.as_str());
        match &parsed {
            Some(p) => cx.refer(Named::Field(p.clone()), s.span()),
            None => cx.error(
                s.span(),
                format!(
                    "invalid field path `{}`: use dot-separated keys such as `customData.csm`",
                    s.as_str()
                ),
            ),
        }
        parsed
    };
    match (map.get_node("field"), map.get_node("table")) {
        (Some(_), None) if map.get_node("key").is_some() => {
            cx.error(
                &span,
                "`key` belongs to a `table` target; a `field` target is the field alone",
            );
            None
        }
        (Some(_), None) => path(cx, "field").map(|p| RawTarget::Field(p, span)),
        (None, Some(Node::Scalar(name))) => {
            if map.get_node("key").is_none() {
                let message = format!(
                    "table target `{}` needs `key`, the dot path of the value to look up",
                    name.as_str()
                );
                cx.error(name.span(), message);
                return None;
            }
            let key = path(cx, "key")?;
            let name_text = name.as_str().trim().to_owned();
            Some(RawTarget::Table {
                name: name_text,
                span: *name.span(),
                key,
            })
        }
        _ => {
            cx.error(&span, format!("an entry of `{key}` written as a mapping is `{{ field: path }}` or `{{ table: name, key: path }}`"));
            None
        }
    }
}

/// Users as written, each with where.
type Written = Vec<(String, Span)>;

/// A table as written: its name, and each entry's value and users (`default` apart).
pub(super) struct RawTable {
    name: String,
    span: Span,
    entries: Vec<(String, Span, Written)>,
    default: Option<(Span, Written)>,
}

/// The `tables` section: name → value → user or list of users.
pub(super) fn parse_tables(cx: &mut Cx, top: &MarkedMappingNode) -> Vec<RawTable> {
    let map = match top.get_node("tables") {
        None => return Vec::new(),
        Some(Node::Mapping(map)) => map,
        Some(other) => {
            let message = format!(
                "`tables` must map table names to tables, found {}",
                kind(other)
            );
            cx.error(other.span(), message);
            return Vec::new();
        }
    };
    let mut tables = Vec::new();
    for (name, body) in map.iter() {
        let Node::Mapping(entries) = body else {
            let message = format!(
                "table `{}` must map values to users, found {}",
                name.as_str(),
                kind(body)
            );
            cx.error(body.span(), message);
            continue;
        };
        let mut table = RawTable {
            name: name.as_str().trim().to_owned(),
            span: *name.span(),
            entries: Vec::new(),
            default: None,
        };
        for (value, users) in entries.iter() {
            let Some(users) = strings(
                cx,
                users,
                &format!("tables.{}.{}", table.name, value.as_str()),
            ) else {
                continue;
            };
            match value.as_str() {
                "default" => table.default = Some((*value.span(), users)),
                v => table.entries.push((v.to_owned(), *value.span(), users)),
            }
        }
        if table.entries.is_empty() && table.default.is_none() {
            cx.error(
                name.span(),
                format!("table `{}` has no entries", table.name),
            );
        }
        tables.push(table);
    }
    tables
}

/// Every file's tables with their users resolved: a name defined twice, a user that is not
/// an alias or an id, and an entry an earlier one always wins over are reported.
pub(super) fn link_tables(
    diags: &mut Vec<Diagnostic>,
    files: &mut [(Arc<str>, FileSpec)],
    aliases: &Aliases,
    references: &mut Vec<Reference>,
) -> BTreeMap<String, Arc<Table>> {
    let mut tables: BTreeMap<String, Arc<Table>> = BTreeMap::new();
    for (file, spec) in files.iter_mut() {
        let mut cx = Cx::new(file.clone(), diags);
        for raw in std::mem::take(&mut spec.tables) {
            if let Some(first) = tables.get(&raw.name) {
                let message = format!(
                    "table `{}` is already defined at {}",
                    raw.name, first.origin
                );
                cx.error(&raw.span, message);
                continue;
            }
            let table = link_table(&mut cx, raw, aliases);
            tables.insert(table.name.clone(), Arc::new(table));
        }
        references.append(&mut cx.found);
    }
    tables
}

fn link_table(cx: &mut Cx, raw: RawTable, aliases: &Aliases) -> Table {
    let users = |cx: &mut Cx, named: &[(String, Span)]| -> Vec<UserRef> {
        let entries: Vec<RawTarget> = named
            .iter()
            .map(|(n, s)| RawTarget::User(n.clone(), *s))
            .collect();
        let resolved = resolve(cx, &entries, aliases, &BTreeMap::new());
        for (user, (name, span)) in resolved.iter().zip(named) {
            if user.is_dynamic() {
                cx.error(
                    span,
                    format!("`{name}` cannot be a table's user: name an alias or a user id"),
                );
            }
        }
        resolved
    };
    let mut entries: Vec<TableEntry> = Vec::new();
    for (value, span, named) in &raw.entries {
        let pattern = Pattern::new(value);
        if let Some(earlier) = entries.iter().find(|e| e.pattern.covers(&pattern)) {
            let message = format!(
                "table `{}`: entry `{value}` is never used: `{}` (at {}) comes first and matches every value it does",
                raw.name,
                earlier.pattern.as_str(),
                earlier.origin
            );
            cx.warn(span, message);
        }
        let users = users(cx, named);
        entries.push(TableEntry {
            pattern,
            users,
            origin: cx.origin(span),
        });
    }
    let default = raw.default.map(|(span, named)| {
        if let Some(all) = entries
            .iter()
            .find(|e| e.pattern.covers(&Pattern::new("*")))
        {
            let message = format!(
                "table `{}`: `default` is never used: `{}` (at {}) matches every value",
                raw.name,
                all.pattern.as_str(),
                all.origin
            );
            cx.warn(&span, message);
        }
        users(cx, &named)
    });
    Table {
        name: raw.name,
        entries,
        default,
        origin: cx.origin(&raw.span),
    }
}

/// The table a target names, or an error at the name (with the closest table's name).
pub(super) fn table(
    cx: &mut Cx,
    name: &str,
    span: &Span,
    tables: &BTreeMap<String, Arc<Table>>,
) -> Option<Arc<Table>> {
    if let Some(t) = tables.get(name) {
        return Some(Arc::clone(t));
    }
    let hint = closest(name, tables.keys().map(String::as_str))
        .map(|t| format!("; did you mean `{t}`?"))
        .unwrap_or_else(|| "; tables are defined under `tables:`".to_owned());
    cx.error(span, format!("unknown table `{name}`{hint}"));
    None
}

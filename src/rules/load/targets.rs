//! Targets beyond named users: `{ field: path }`, `{ table: name, key: path }`,
//! `{ pool: name }`, and the `tables:` and `pools:` sections they refer to, which every file
//! shares, like aliases ([`Defined`]).

use super::*;
use crate::rules::model::{Pool, Table, TableEntry};
use crate::rules::pattern::Pattern;

/// Keys of a target written as a mapping.
pub const TARGET_KEYS: &[&str] = &["field", "table", "key", "pool"];
/// Keys of a pool.
pub const POOL_KEYS: &[&str] = &["members", "away", "fallback"];

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
    Pool(String, Span),
}

impl RawTarget {
    pub(super) fn span(&self) -> Span {
        match self {
            RawTarget::User(_, span) | RawTarget::Field(_, span) => *span,
            RawTarget::Table { span, .. } | RawTarget::Pool(_, span) => *span,
        }
    }

    /// The entry as the author wrote it, for messages.
    pub(super) fn text(&self) -> String {
        match self {
            RawTarget::User(name, _) => name.clone(),
            RawTarget::Field(path, _) => format!("field {}", path.text),
            RawTarget::Table { name, .. } => format!("table {name}"),
            RawTarget::Pool(name, _) => format!("pool {name}"),
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
    if let Some(node) = map.get_node("pool") {
        return match node {
            Node::Scalar(name) if map.len() == 1 => Some(RawTarget::Pool(
                name.as_str().trim().to_owned(),
                *name.span(),
            )),
            Node::Scalar(_) => {
                cx.error(&span, "a `pool` target is the pool alone: `{ pool: name }`");
                None
            }
            other => {
                cx.error(
                    other.span(),
                    format!("`pool` must name a pool, found {}", kind(other)),
                );
                None
            }
        };
    }
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
            cx.error(&span, format!("an entry of `{key}` written as a mapping is `{{ field: path }}`, `{{ table: name, key: path }}` or `{{ pool: name }}`"));
            None
        }
    }
}

/// A definition of a top-level section that every file shares, like aliases (a table, a
/// pool): how it is read, linked and looked up, so both sections work the same way.
pub(super) trait Defined: Sized {
    type Linked;
    /// The section's key (`tables`), one definition (`table`), and what a body must be.
    const SECTION: &'static str;
    const ONE: &'static str;
    const BODY: &'static str;
    fn parse(cx: &mut Cx, name: &MarkedScalarNode, body: &MarkedMappingNode) -> Self;
    fn head(&self) -> (&str, &Span);
    /// This kind's definitions of a file, taken out of it.
    fn take(spec: &mut FileSpec) -> Vec<Self>;
    fn link(self, cx: &mut Cx, aliases: &Aliases) -> Self::Linked;
    fn origin(linked: &Self::Linked) -> &Origin;
}

/// A file's definitions of one section (name → mapping); a section or a body that is not a
/// mapping is reported.
pub(super) fn parse_all<D: Defined>(cx: &mut Cx, top: &MarkedMappingNode) -> Vec<D> {
    let Some(section) = top.get_node(D::SECTION) else {
        return Vec::new();
    };
    let Node::Mapping(map) = section else {
        let what = format!("`{}` must map {} names to {}s", D::SECTION, D::ONE, D::ONE);
        cx.error(section.span(), format!("{what}, found {}", kind(section)));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, body) in map.iter() {
        match body {
            Node::Mapping(body) => out.push(D::parse(cx, name, body)),
            other => {
                let (one, what) = (D::ONE, D::BODY);
                let message = format!(
                    "{one} `{}` must {what}, found {}",
                    name.as_str(),
                    kind(other)
                );
                cx.error(other.span(), message);
            }
        }
    }
    out
}

/// Every file's definitions of one section, linked (their users resolved); a name defined
/// twice is reported at the second.
pub(super) fn link_all<D: Defined>(
    diags: &mut Vec<Diagnostic>,
    files: &mut [(Arc<str>, FileSpec)],
    aliases: &Aliases,
    references: &mut Vec<Reference>,
) -> BTreeMap<String, Arc<D::Linked>> {
    let mut linked: BTreeMap<String, Arc<D::Linked>> = BTreeMap::new();
    for (file, spec) in files.iter_mut() {
        let mut cx = Cx::new(file.clone(), diags);
        for raw in D::take(spec) {
            let (name, span) = raw.head();
            if let Some(first) = linked.get(name) {
                let first = D::origin(first);
                let message = format!("{} `{name}` is already defined at {first}", D::ONE);
                cx.error(span, message);
                continue;
            }
            let name = name.to_owned();
            linked.insert(name, Arc::new(raw.link(&mut cx, aliases)));
        }
        references.append(&mut cx.found);
    }
    linked
}

/// The definition a target names, or an error at the name (with the closest name).
pub(super) fn find<D: Defined>(
    cx: &mut Cx,
    name: &str,
    span: &Span,
    all: &BTreeMap<String, Arc<D::Linked>>,
) -> Option<Arc<D::Linked>> {
    if let Some(found) = all.get(name) {
        return Some(Arc::clone(found));
    }
    let hint = closest(name, all.keys().map(String::as_str))
        .map(|n| format!("; did you mean `{n}`?"))
        .unwrap_or_else(|| format!("; {} are defined under `{}:`", D::SECTION, D::SECTION));
    cx.error(span, format!("unknown {} `{name}`{hint}", D::ONE));
    None
}

impl Defined for RawTable {
    type Linked = Table;
    const SECTION: &'static str = "tables";
    const ONE: &'static str = "table";
    const BODY: &'static str = "map values to users";
    fn parse(cx: &mut Cx, name: &MarkedScalarNode, body: &MarkedMappingNode) -> RawTable {
        parse_table(cx, name, body)
    }
    fn head(&self) -> (&str, &Span) {
        (&self.name, &self.span)
    }
    fn take(spec: &mut FileSpec) -> Vec<RawTable> {
        std::mem::take(&mut spec.tables)
    }
    fn link(self, cx: &mut Cx, aliases: &Aliases) -> Table {
        link_table(cx, self, aliases)
    }
    fn origin(linked: &Table) -> &Origin {
        &linked.origin
    }
}

impl Defined for RawPool {
    type Linked = Pool;
    const SECTION: &'static str = "pools";
    const ONE: &'static str = "pool";
    const BODY: &'static str = "be a mapping with `members`";
    fn parse(cx: &mut Cx, name: &MarkedScalarNode, body: &MarkedMappingNode) -> RawPool {
        parse_pool(cx, name, body)
    }
    fn head(&self) -> (&str, &Span) {
        (&self.name, &self.span)
    }
    fn take(spec: &mut FileSpec) -> Vec<RawPool> {
        std::mem::take(&mut spec.pools)
    }
    fn link(self, cx: &mut Cx, aliases: &Aliases) -> Pool {
        link_pool(cx, self, aliases)
    }
    fn origin(linked: &Pool) -> &Origin {
        &linked.origin
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

/// A table as written: name → value → user or list of users.
fn parse_table(cx: &mut Cx, name: &MarkedScalarNode, entries: &MarkedMappingNode) -> RawTable {
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
    table
}

fn link_table(cx: &mut Cx, raw: RawTable, aliases: &Aliases) -> Table {
    let users = |cx: &mut Cx, named: &[(String, Span)]| -> Vec<UserRef> {
        let one = |(name, span): &(String, Span)| {
            let found = user(cx, name, span, aliases)?;
            if found.is_dynamic() {
                cx.error(
                    span,
                    format!("`{name}` cannot be a table's user: name an alias or a user id"),
                );
                return None;
            }
            Some(found)
        };
        named.iter().filter_map(one).collect()
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

/// A pool as written.
pub(super) struct RawPool {
    name: String,
    span: Span,
    /// (member, where, weight).
    members: Vec<(String, Span, u32)>,
    /// (member, where, from, to).
    away: Vec<(String, Span, chrono::NaiveDate, chrono::NaiveDate)>,
    fallback: Option<(String, Span)>,
}

/// A pool as written: `members` (a list, or member → weight), `away` (member → `[from, to]`,
/// inclusive dates), `fallback` (a user).
fn parse_pool(cx: &mut Cx, name: &MarkedScalarNode, body: &MarkedMappingNode) -> RawPool {
    cx.unknown_keys(body, POOL_KEYS, &format!("pool `{}`", name.as_str()));
    let mut pool = RawPool {
        name: name.as_str().trim().to_owned(),
        span: *name.span(),
        members: Vec::new(),
        away: Vec::new(),
        fallback: None,
    };
    pool.members = pool_members(cx, body, &pool.name, name.span());
    pool.away = pool_away(cx, body);
    pool.fallback = match body.get_node("fallback") {
        Some(Node::Scalar(s)) if !is_null(s) => Some((s.as_str().trim().to_owned(), *s.span())),
        Some(other) => {
            cx.error(
                other.span(),
                format!("`fallback` must be one user, found {}", kind(other)),
            );
            None
        }
        None => None,
    };
    pool
}

/// `members`: a list (weights 1) or member → weight (a whole number from 1).
fn pool_members(
    cx: &mut Cx,
    body: &MarkedMappingNode,
    pool: &str,
    at: &Span,
) -> Vec<(String, Span, u32)> {
    match body.get_node("members") {
        None => {
            cx.error(at, format!("pool `{pool}` has no `members`"));
            Vec::new()
        }
        Some(Node::Mapping(weights)) => weights
            .iter()
            .filter_map(|(member, weight)| {
                let parsed = match weight {
                    Node::Scalar(w) => w.as_str().trim().parse::<u32>().ok().filter(|w| *w >= 1),
                    _ => None,
                };
                if parsed.is_none() {
                    cx.error(
                        weight.span(),
                        format!(
                            "the weight of `{}` must be a whole number from 1, found {}",
                            member.as_str(),
                            describe(weight)
                        ),
                    );
                }
                Some((member.as_str().trim().to_owned(), *member.span(), parsed?))
            })
            .collect(),
        Some(other) => strings(cx, other, "members")
            .unwrap_or_default()
            .into_iter()
            .map(|(member, span)| (member, span, 1))
            .collect(),
    }
}

/// `away`: member → `[from, to]`, inclusive dates (`YYYY-MM-DD`), from no later than to.
fn pool_away(
    cx: &mut Cx,
    body: &MarkedMappingNode,
) -> Vec<(String, Span, chrono::NaiveDate, chrono::NaiveDate)> {
    let Some(node) = body.get_node("away") else {
        return Vec::new();
    };
    let Node::Mapping(map) = node else {
        cx.error(
            node.span(),
            format!(
                "`away` must map members to `[from, to]` dates, found {}",
                kind(node)
            ),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (member, period) in map.iter() {
        let dates: Option<Vec<chrono::NaiveDate>> = match period {
            Node::Sequence(items) if items.len() == 2 => items
                .iter()
                .map(|d| match d {
                    Node::Scalar(s) => {
                        chrono::NaiveDate::parse_from_str(s.as_str().trim(), "%Y-%m-%d").ok()
                    }
                    _ => None,
                })
                .collect(),
            _ => None,
        };
        match dates.as_deref() {
            Some([from, to]) if from <= to => out.push((
                member.as_str().trim().to_owned(),
                *member.span(),
                *from,
                *to,
            )),
            Some(_) => cx.error(
                period.span(),
                format!(
                    "the away period of `{}` ends before it starts",
                    member.as_str()
                ),
            ),
            None => cx.error(
                period.span(),
                format!(
                    "the away period of `{}` must be `[from, to]`, dates as YYYY-MM-DD, found {}",
                    member.as_str(),
                    describe(period)
                ),
            ),
        }
    }
    out
}

fn link_pool(cx: &mut Cx, raw: RawPool, aliases: &Aliases) -> Pool {
    let one = |cx: &mut Cx, name: &str, span: &Span| -> Option<UserId> {
        match user(cx, name, span, aliases) {
            Some(UserRef::Alias { id, .. } | UserRef::Id(id)) => Some(id),
            Some(_) => {
                cx.error(
                    span,
                    format!("`{name}` cannot be a pool's user: name an alias or a user id"),
                );
                None
            }
            None => None,
        }
    };
    let mut members: Vec<(String, UserId, u32)> = Vec::new();
    for (name, span, weight) in &raw.members {
        let Some(id) = one(cx, name, span) else {
            continue;
        };
        if members.iter().any(|(_, m, _)| *m == id) {
            cx.error(span, format!("pool `{}` lists `{name}` twice", raw.name));
            continue;
        }
        members.push((name.clone(), id, *weight));
    }
    let mut away = Vec::new();
    for (name, span, from, to) in &raw.away {
        match members.iter().find(|(m, ..)| m == name) {
            Some((_, id, _)) => away.push((id.clone(), *from, *to)),
            None => cx.error(
                span,
                format!("`{name}` is away but not a member of pool `{}`", raw.name),
            ),
        }
    }
    let fallback = raw
        .fallback
        .and_then(|(name, span)| Some((name.clone(), one(cx, &name, &span)?)));
    Pool {
        name: raw.name,
        members,
        away,
        fallback,
        origin: cx.origin(&raw.span),
    }
}

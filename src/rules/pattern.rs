//! Condition values: case-insensitive strings with `*` wildcards.
//!
//! Hand-written rather than taken from a glob crate because rule values are free text
//! (lead sources, tag names) where only `*` may be special: `?`, `[` and `\` must stay literal.

use std::fmt;

/// How every compared string is prepared: trimmed and lowercased.
pub fn normalize(s: &str) -> String {
    s.trim().to_lowercase()
}

/// One value of a condition, as written by the rule author.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    original: String,
    kind: Kind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Exact(String),
    /// The normalized text between the `*`s; at least two parts.
    Wildcard(Vec<String>),
}

impl Pattern {
    pub fn new(original: &str) -> Pattern {
        let normalized = normalize(original);
        let kind = if normalized.contains('*') {
            Kind::Wildcard(normalized.split('*').map(str::to_owned).collect())
        } else {
            Kind::Exact(normalized)
        };
        Pattern {
            original: original.trim().to_owned(),
            kind,
        }
    }

    /// The value as the rule author wrote it (trimmed).
    pub fn as_str(&self) -> &str {
        &self.original
    }

    /// The normalized value when the pattern has no wildcard: then it matches only that string.
    pub fn exact(&self) -> Option<&str> {
        match &self.kind {
            Kind::Exact(s) => Some(s),
            Kind::Wildcard(_) => None,
        }
    }

    /// Whether every value `other` matches, this one matches too (so `other`, written after
    /// it, can never be reached). Conservative: `false` when it cannot tell.
    pub fn covers(&self, other: &Pattern) -> bool {
        match (&self.kind, &other.kind) {
            (_, Kind::Exact(value)) => self.matches(value),
            (Kind::Exact(_), Kind::Wildcard(_)) => false,
            (Kind::Wildcard(mine), Kind::Wildcard(theirs)) => {
                mine == theirs
                    || match (mine.as_slice(), theirs.first(), theirs.last()) {
                        // One `*`: every value of `other` starts with its first part and
                        // ends with its last, which hold this one's, apart.
                        ([first, last], Some(f), Some(l)) => {
                            f.starts_with(first.as_str()) && l.ends_with(last.as_str())
                        }
                        _ => false,
                    }
            }
        }
    }

    /// Whether `value`, already [`normalize`]d, matches.
    pub fn matches(&self, value: &str) -> bool {
        match &self.kind {
            Kind::Exact(s) => s == value,
            Kind::Wildcard(parts) => wildcard_match(parts, value),
        }
    }
}

fn wildcard_match(parts: &[String], value: &str) -> bool {
    let (Some((first, rest)), Some(last)) = (parts.split_first(), parts.last()) else {
        return false;
    };
    let Some(mut remaining) = value.strip_prefix(first.as_str()) else {
        return false;
    };
    let middle = &rest[..rest.len().saturating_sub(1)];
    for part in middle {
        match remaining.find(part.as_str()) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    remaining.ends_with(last.as_str())
}

/// A condition's values: it holds when any of them matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternSet(Vec<Pattern>);

impl PatternSet {
    pub fn new<S: AsRef<str>>(values: impl IntoIterator<Item = S>) -> PatternSet {
        PatternSet(
            values
                .into_iter()
                .map(|v| Pattern::new(v.as_ref()))
                .collect(),
        )
    }

    /// The first pattern that matches the normalized `value`.
    pub fn find(&self, value: &str) -> Option<&Pattern> {
        self.0.iter().find(|p| p.matches(value))
    }

    pub fn matches(&self, value: &str) -> bool {
        self.find(value).is_some()
    }

    /// Every normalized value, when none has a wildcard: the set then matches exactly these.
    pub fn exact_values(&self) -> Option<Vec<&str>> {
        self.0.iter().map(Pattern::exact).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Pattern> {
        self.0.iter()
    }
}

impl fmt::Display for PatternSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{:?}", p.as_str())?;
        }
        f.write_str("]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_earlier_pattern_covers_the_later_ones_it_always_matches() {
        let covers = |a: &str, b: &str| Pattern::new(a).covers(&Pattern::new(b));
        for (a, b) in [
            ("9*", "94*"),
            ("*", "94*"),
            ("94*", "94107"),
            ("*", "x"),
            ("a*z", "ab*yz"),
        ] {
            assert!(covers(a, b), "{a} covers {b}");
        }
        for (a, b) in [
            ("94*", "9*"),
            ("94107", "94*"),
            ("a*a", "a*"),
            ("a*b*c", "a*c"),
            ("x", "y"),
        ] {
            assert!(!covers(a, b), "{a} does not cover {b}");
        }
        assert!(covers("94*", "94*") && covers("Bob", "bob"));
    }

    fn m(pattern: &str, value: &str) -> bool {
        Pattern::new(pattern).matches(&normalize(value))
    }

    #[test]
    fn matching_ignores_case_and_surrounding_space() {
        assert!(m("Facebook Ads", "  facebook ads "));
        assert!(m(" VIP ", "vip"));
        assert!(!m("vip", "vip2"));
        assert!(!m("Facebook Ads", "Facebook  Ads"));
    }

    #[test]
    fn star_matches_any_run_of_characters() {
        assert!(m("fb-*", "FB-summer"));
        assert!(m("fb-*", "fb-"));
        assert!(!m("fb-*", "xfb-summer"));
        assert!(m("*ads", "Google Ads"));
        assert!(m("*", ""));
        assert!(m("a*b*c", "a--b--c"));
        assert!(m("a*b*c", "abc"));
        assert!(!m("a*b*c", "acb"));
        assert!(!m("ab*ba", "aba"), "prefix and suffix must not overlap");
        assert!(m("*é*", "CAFÉ"));
    }

    #[test]
    fn other_glob_characters_are_literal() {
        assert!(m("who?", "WHO?"));
        assert!(!m("who?", "whom"));
        assert!(m("[x]", "[X]"));
    }

    #[test]
    fn exact_values_only_without_wildcards() {
        assert_eq!(
            PatternSet::new(["A", "b"]).exact_values(),
            Some(vec!["a", "b"])
        );
        assert_eq!(PatternSet::new(["A", "b*"]).exact_values(), None);
    }
}

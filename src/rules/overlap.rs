//! Whether two rules can match one event: what [`super::lint`] needs to tell an order that
//! decides (one rule adds a user, a later one removes them, both can hold) from rules that
//! exclude each other. Conservative: "cannot both hold" only when it follows from the events
//! each can match, their locations, or two conditions that contradict each other (`has_tag: x`
//! and `lacks_tag: x`, `tag_added: x` and `tag_removed: x`, different statuses, …), including
//! a condition one rule needs and the other rules out with `not`.

use super::model::{Block, Condition, Rule};
use super::pattern::PatternSet;
use crate::model::event::{EventType, Subject};

/// Whether no event can match both rules.
pub(crate) fn exclusive(a: &Rule, b: &Rule, needs: fn(&str) -> Option<&'static [Subject]>) -> bool {
    let events = |r: &Rule| -> Vec<EventType> {
        let listed = r.events.clone().unwrap_or_else(|| EventType::ALL.to_vec());
        let allowed = |e: &EventType| allows(&r.when, e.subject(), needs);
        listed.into_iter().filter(allowed).collect()
    };
    let (ea, eb) = (events(a), events(b));
    if !ea.iter().any(|e| eb.contains(e)) {
        return true;
    }
    let (la, lb) = (a.locations.as_ref(), b.locations.as_ref());
    if let (Some(la), Some(lb)) = (
        la.and_then(PatternSet::exact_values),
        lb.and_then(PatternSet::exact_values),
    ) {
        if !la.iter().any(|l| lb.contains(l)) {
            return true;
        }
    }
    contradict(&a.when.0, &b.when.0) || contradict(&b.when.0, &a.when.0)
}

/// Whether a block's conditions can all hold for an event about `subject`: each condition
/// that reads what only some subjects carry (`needs`), and one alternative of each `any`.
fn allows(block: &Block, subject: Subject, needs: fn(&str) -> Option<&'static [Subject]>) -> bool {
    block.0.iter().all(|c| match c {
        Condition::Any(blocks) => blocks.iter().any(|b| allows(b, subject, needs)),
        Condition::Not(_) => true,
        c => needs(c.key()).is_none_or(|subjects| subjects.contains(&subject)),
    })
}

/// Whether a condition of `xs` and one of `ys` (both must hold) cannot hold together.
fn contradict(xs: &[Condition], ys: &[Condition]) -> bool {
    xs.iter().any(|x| {
        ys.iter().any(|y| match y {
            Condition::Not(block) => excluded(x, block),
            y => opposite(x, y) || opposite(y, x),
        })
    })
}

/// Whether `not: block` cannot hold when `x` does: the block is one condition `x` implies,
/// or an `any` with such an alternative.
fn excluded(x: &Condition, block: &Block) -> bool {
    let [only] = block.0.as_slice() else {
        return false;
    };
    match only {
        Condition::Any(alternatives) => alternatives
            .iter()
            .any(|b| matches!(b.0.as_slice(), [c] if implies(x, c))),
        c => implies(x, c),
    }
}

/// The values of a condition given as patterns.
fn values(c: &Condition) -> Option<&PatternSet> {
    match c {
        Condition::Source(s)
        | Condition::HasTag(s)
        | Condition::LacksTag(s)
        | Condition::TagAdded(s)
        | Condition::TagRemoved(s)
        | Condition::Pipeline(s)
        | Condition::Stage(s)
        | Condition::StageEntered(s)
        | Condition::StageLeft(s)
        | Condition::Workflow(s) => Some(s),
        _ => None,
    }
}

/// Every value of `s` is exact and matched by `t`.
fn within(s: &PatternSet, t: &PatternSet) -> bool {
    s.exact_values()
        .is_some_and(|v| v.iter().all(|value| t.matches(value)))
}

/// Both are the same single exact value.
fn same_one(s: &PatternSet, t: &PatternSet) -> bool {
    matches!((s.exact_values().as_deref(), t.exact_values().as_deref()), (Some([a]), Some([b])) if a == b)
}

/// Both exact, with no value in common.
fn disjoint(s: &PatternSet, t: &PatternSet) -> bool {
    match (s.exact_values(), t.exact_values()) {
        (Some(a), Some(b)) => !a.iter().any(|v| b.contains(v)),
        _ => false,
    }
}

/// Whether `x` holding makes `c` hold.
fn implies(x: &Condition, c: &Condition) -> bool {
    match (x, c) {
        (Condition::Status(a), Condition::Status(b)) => a.iter().all(|s| b.contains(s)),
        (Condition::AssignedChanged(a), Condition::AssignedChanged(b)) => a == b,
        (Condition::TagAdded(s), Condition::HasTag(t)) => within(s, t),
        (Condition::StageEntered(s), Condition::Stage(t)) => within(s, t),
        _ if x.key() == c.key() => match (values(x), values(c)) {
            (Some(s), Some(t)) => within(s, t),
            _ => false,
        },
        _ => false,
    }
}

/// Whether `x` and `y` cannot both hold for one event (one direction; see [`contradict`]).
fn opposite(x: &Condition, y: &Condition) -> bool {
    use Condition as C;
    match (x, y) {
        (C::HasTag(s) | C::TagAdded(s), C::LacksTag(l)) => within(s, l),
        (C::HasTag(s) | C::TagAdded(s), C::TagRemoved(r)) => same_one(s, r),
        (C::Stage(s) | C::StageEntered(s), C::StageLeft(l)) => same_one(s, l),
        (C::Stage(s) | C::StageEntered(s), C::Stage(t) | C::StageEntered(t))
        | (C::Source(s), C::Source(t))
        | (C::Pipeline(s), C::Pipeline(t))
        | (C::Workflow(s), C::Workflow(t)) => disjoint(s, t),
        (C::Status(a), C::Status(b)) => !a.iter().any(|s| b.contains(s)),
        (C::AssignedChanged(a), C::AssignedChanged(b)) => a != b,
        _ => false,
    }
}

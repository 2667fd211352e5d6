//! An index from event facets to the rules that could match them, so evaluation cost does not
//! grow with rules keyed on other sources, tags, stages or event types.
//!
//! Each enabled rule is filed under one *dimension* whose values it requires exactly (no
//! wildcard): for example `has_tag: [vip, hot]` files it under the tags `vip` and `hot`. An
//! event then only looks at the rules filed under its own tags, source, stage and so on, plus
//! the rules that could not be filed. A rule filed under a dimension cannot match an event
//! whose values in that dimension are all different, so the index never hides a match.

use std::collections::HashMap;

use super::eval::View;
use super::model::{Condition, Rule};
use crate::model::event::EventType;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dim {
    Tag,
    Source,
    Stage,
    Workflow,
    Pipeline,
    Status,
    Location,
    EventType,
}

/// In order of preference: the first dimension a rule can be filed under is used, the most
/// selective kinds first.
const DIMS: [Dim; 8] = [
    Dim::Tag,
    Dim::Source,
    Dim::Stage,
    Dim::Workflow,
    Dim::Pipeline,
    Dim::Status,
    Dim::Location,
    Dim::EventType,
];

#[derive(Clone, Debug, Default)]
pub(crate) struct RuleIndex {
    /// Enabled rules that no dimension could file.
    unfiled: Vec<u32>,
    by_dim: [HashMap<Box<str>, Vec<u32>>; DIMS.len()],
}

impl RuleIndex {
    pub fn build(rules: &[Rule]) -> RuleIndex {
        let mut index = RuleIndex::default();
        for (i, rule) in rules.iter().enumerate() {
            let Ok(i) = u32::try_from(i) else { break };
            if !rule.enabled {
                continue;
            }
            match filing(rule) {
                Some((dim, values)) => {
                    let map = &mut index.by_dim[dim as usize];
                    for v in values {
                        let slot = map.entry(v.into()).or_default();
                        if slot.last() != Some(&i) {
                            slot.push(i);
                        }
                    }
                }
                None => index.unfiled.push(i),
            }
        }
        index
    }

    /// Indices of the rules that could match, ascending (rule order).
    pub fn candidates(&self, view: &View) -> Vec<u32> {
        let mut out = self.unfiled.clone();
        for dim in DIMS {
            let map = &self.by_dim[dim as usize];
            if map.is_empty() {
                continue;
            }
            let mut look = |key: &str| {
                if let Some(rules) = map.get(key) {
                    out.extend_from_slice(rules);
                }
            };
            match dim {
                Dim::Tag => view.tags.iter().flatten().for_each(|t| look(t)),
                Dim::Source => view.source.iter().for_each(|s| look(s)),
                Dim::Stage => view.stage.iter().for_each(|s| look(s)),
                Dim::Workflow => view.workflow.iter().for_each(|s| look(s)),
                Dim::Pipeline => view.pipeline.iter().for_each(|s| look(s)),
                Dim::Status => view.status.iter().for_each(|s| look(s)),
                Dim::Location => look(&view.location),
                Dim::EventType => look(&view.event_type),
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// The dimension and exact values a rule requires, if it requires any.
fn filing(rule: &Rule) -> Option<(Dim, Vec<String>)> {
    let exact = |set: &super::pattern::PatternSet| {
        set.exact_values()
            .map(|v| v.into_iter().map(str::to_owned).collect::<Vec<_>>())
    };
    DIMS.into_iter().find_map(|dim| {
        let values = match dim {
            Dim::Location => rule.locations.as_ref().and_then(exact),
            Dim::EventType => rule.events.as_ref().map(|events| {
                events
                    .iter()
                    .map(|e: &EventType| e.name().to_lowercase())
                    .collect()
            }),
            _ => rule.when.0.iter().find_map(|c| match (dim, c) {
                (Dim::Tag, Condition::HasTag(s) | Condition::TagAdded(s)) => exact(s),
                (Dim::Source, Condition::Source(s)) => exact(s),
                (Dim::Stage, Condition::Stage(s) | Condition::StageEntered(s)) => exact(s),
                (Dim::Workflow, Condition::Workflow(s)) => exact(s),
                (Dim::Pipeline, Condition::Pipeline(s)) => exact(s),
                (Dim::Status, Condition::Status(s)) => {
                    Some(s.iter().map(|s| s.name().to_owned()).collect())
                }
                _ => None,
            }),
        };
        values.map(|v| (dim, v))
    })
}

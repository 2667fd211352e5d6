//! The explanation of one webhook body as JSON, shared by `autofollow explain --json` and
//! `POST /admin/explain`.

use serde::Serialize;

use super::deal::Dealing;
use super::{Resolver, RuleSet};
use crate::model::event::{self, Event, Parsed};
use crate::model::plan::PreviousState;

#[derive(Serialize)]
struct JsonExplanation<'a> {
    rules_version: &'a str,
    event: Option<&'a Event>,
    unsupported: Option<&'a str>,
    previous: &'a PreviousState,
    rules: &'a [super::RuleTrace],
    plan: &'a crate::model::plan::Plan,
    summary: String,
}

/// The explanation of one webhook body (either kind) as JSON: `event` (or `unsupported`),
/// `previous`, `rules`, `plan` and `summary`. Shared by `explain --json` and `POST /admin/explain`;
/// pools deal their member by `dealing`.
pub fn explain_report(
    set: &RuleSet,
    body: &[u8],
    previous: &PreviousState,
    resolver: &dyn Resolver,
    dealing: &mut Dealing,
) -> Result<serde_json::Value, event::ParseError> {
    let plan = crate::model::plan::Plan::default();
    let report = match event::parse_any(body)? {
        other @ (Parsed::Unsupported { .. } | Parsed::App(_)) => {
            serde_json::to_value(JsonExplanation {
                rules_version: set.version(),
                event: None,
                unsupported: other.other_type(),
                previous,
                rules: &[],
                plan: &plan,
                summary: plan.summary(),
            })
        }
        Parsed::Event(event) => {
            let explanation = set.explain_dealt(&event, previous, resolver, dealing);
            serde_json::to_value(JsonExplanation {
                rules_version: set.version(),
                event: Some(&event),
                unsupported: None,
                previous,
                rules: &explanation.rules,
                plan: &explanation.plan,
                summary: explanation.plan.summary(),
            })
        }
    };
    Ok(report.unwrap_or_default())
}

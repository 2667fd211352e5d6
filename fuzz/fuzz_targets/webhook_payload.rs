//! Any request body: the parsers answer with an event or an error, never a panic, and an
//! event they accept evaluates against the example rules without one either.
#![no_main]

use std::sync::OnceLock;

use autofollow::model::event::{self, Parsed};
use autofollow::model::plan::PreviousState;
use autofollow::rules::{NoResolver, RuleSet};
use libfuzzer_sys::fuzz_target;

fn rules() -> &'static RuleSet {
    static RULES: OnceLock<RuleSet> = OnceLock::new();
    RULES.get_or_init(|| {
        let files = [
            ("00-users.yaml", include_str!("../../rules/00-users.yaml")),
            ("10-leads.yaml", include_str!("../../rules/10-leads.yaml")),
            (
                "20-pipeline.yaml",
                include_str!("../../rules/20-pipeline.yaml"),
            ),
            (
                "30-workflows.yaml",
                include_str!("../../rules/30-workflows.yaml"),
            ),
        ];
        RuleSet::from_sources(&files).expect("the example rules load")
    })
}

fuzz_target!(|body: &[u8]| {
    let _ = event::parse_app(body);
    let _ = event::parse_workflow(body);
    if let Ok(Parsed::Event(e)) = event::parse_any(body) {
        let previous = PreviousState {
            tags: Some(vec!["vip".into()]),
            stage: Some("Proposal".into()),
            assigned: Some(None),
        };
        let _ = rules().evaluate(&e, &previous, &NoResolver);
        let _ = rules().evaluate(&e, &PreviousState::default(), &NoResolver);
    }
});

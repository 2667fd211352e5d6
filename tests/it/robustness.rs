//! Property tests: the loader and the parser never panic on any input, and the indexed
//! evaluation always agrees with checking every rule.

use crate::common;
use autofollow::model::event::{self, Parsed};
use autofollow::model::plan::PreviousState;
use autofollow::rules::RuleSet;
use proptest::prelude::*;
use serde_json::{Value, json};

fn load(text: &str) {
    // Only the absence of a panic matters here; errors are expected.
    let _ = RuleSet::from_sources(&[("fuzz.yaml", text)]);
}

/// YAML-shaped text built from the rule file's own vocabulary, so the walker's branches get
/// exercised, not only the YAML scanner.
fn arb_yamlish() -> impl Strategy<Value = String> {
    let token = prop::sample::select(vec![
        "version",
        "users",
        "rules",
        "name",
        "add",
        "remove",
        "when",
        "any",
        "not",
        "fields",
        "has_tag",
        "source",
        "status",
        "events",
        "stop",
        "enabled",
        "- ",
        ": ",
        "[",
        "]",
        "{",
        "}",
        ", ",
        "\n",
        "\n  ",
        "\n    ",
        "\n      ",
        "'",
        "\"",
        "#",
        "&a",
        "*a",
        "!!str",
        "---",
        "~",
        "true",
        "won",
        "vip",
        "alice",
        "assigned_user",
        "9hTnVvSr1Q2ZyE5kHfXm",
        "é",
        "\t",
    ]);
    prop::collection::vec(token, 0..60).prop_map(|t| t.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_loader_never_panics_on_arbitrary_text(text in "\\PC*") {
        load(&text);
    }

    #[test]
    fn the_loader_never_panics_on_yaml_shaped_text(text in arb_yamlish()) {
        load(&text);
    }

    #[test]
    fn the_parsers_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = event::parse_app(&bytes);
        let _ = event::parse_workflow(&bytes);
        let _ = event::parse_any(&bytes);
    }

    #[test]
    fn the_parsers_never_panic_on_arbitrary_json(value in common::arb_json()) {
        let body = value.to_string();
        let _ = event::parse_app(body.as_bytes());
        let _ = event::parse_workflow(body.as_bytes());
        if let Ok(Parsed::Event(e)) = event::parse_any(body.as_bytes()) {
            // Whatever parsed must evaluate without panicking too.
            let set = RuleSet::from_sources(&[("r.yaml", EVERY_CONDITION)]).expect("loads");
            let _ = set.explain(&e, &PreviousState::default(), &autofollow::rules::NoResolver);
        }
    }
}

const EVERY_CONDITION: &str = "rules:
  - name: all
    when:
      source: '*'
      has_tag: [a, 'b*']
      lacks_tag: c
      tag_added: a
      tag_removed: b
      pipeline: p
      stage: s
      stage_entered: s
      stage_left: t
      status: [open, won]
      workflow: w
      fields: {customData.x: '*', tags.0: a, customFields.x: y}
      any: [{has_tag: a}, {not: {source: z}}]
      not: {has_tag: d}
    add: [assigned_user, 9hTnVvSr1Q2ZyE5kHfXm]
";

// ---- index correctness: indexed evaluation == evaluating every rule ----

const VOCAB: &[&str] = &[
    "vip", "hot", "fb-ads", "web", "Proposal", "Won", "P1", "S1", "S2", "flow",
];

fn arb_values() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        4 => prop::sample::select(VOCAB.to_vec()).prop_map(str::to_owned),
        1 => prop::sample::select(vec!["*", "fb-*", "*o*", "V*"]).prop_map(str::to_owned),
    ];
    prop::collection::vec(value, 1..3).prop_map(|v| {
        format!(
            "[{}]",
            v.iter()
                .map(|s| format!("'{s}'"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

fn arb_condition() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "source",
        "has_tag",
        "lacks_tag",
        "tag_added",
        "tag_removed",
        "pipeline",
        "stage",
        "stage_entered",
        "stage_left",
        "workflow",
    ]);
    prop_oneof![
        6 => (key, arb_values()).prop_map(|(k, v)| format!("{k}: {v}")),
        1 => prop::sample::select(vec!["status: [won]", "status: [open, lost]"]).prop_map(str::to_owned),
        1 => arb_values().prop_map(|v| format!("any: [{{has_tag: {v}}}, {{source: {v}}}]")),
        1 => arb_values().prop_map(|v| format!("not: {{has_tag: {v}}}")),
    ]
}

fn arb_rule(i: usize) -> impl Strategy<Value = String> {
    (
        prop::collection::vec(arb_condition(), 0..3),
        prop::option::of(prop::sample::subsequence(
            vec![
                "ContactCreate",
                "ContactTagUpdate",
                "OpportunityStageUpdate",
                "Workflow",
            ],
            1..3,
        )),
        prop::sample::select(vec![
            "add: [alice]",
            "add: [bob]",
            "remove: [alice]",
            "remove: [bob]",
            "add: [alice, assigned_user]",
            "add: [carol]\n    remove: [bob]",
        ]),
        any::<bool>(),
        prop::bool::weighted(0.9),
    )
        .prop_map(move |(conditions, events, action, stop, enabled)| {
            let mut keys: Vec<String> = Vec::new();
            let conditions: Vec<String> = conditions
                .into_iter()
                .filter(|c| {
                    let k = c.split(':').next().unwrap_or("").to_owned();
                    let fresh = !keys.contains(&k);
                    keys.push(k);
                    fresh
                })
                .collect();
            let mut r = format!(
                "  - name: r{i}\n    when: {{{}}}\n    {action}\n",
                conditions.join(", ")
            );
            if let Some(ev) = events {
                r.push_str(&format!("    events: [{}]\n", ev.join(", ")));
            }
            if stop {
                r.push_str("    stop: true\n");
            }
            if !enabled {
                r.push_str("    enabled: false\n");
            }
            r
        })
}

fn arb_ruleset() -> impl Strategy<Value = String> {
    (1usize..12).prop_flat_map(|n| {
        (0..n).map(arb_rule).collect::<Vec<_>>().prop_map(|rules| {
            format!(
                "users:\n  alice: 9hTnVvSr1Q2ZyE5kHfXm\n  bob: 4kLmPq7Rt2WvXy9ZaBcD\n  carol: Zx8Yw7Vu6Ts5Rq4Po3Nm\nrules:\n{}",
                rules.concat()
            )
        })
    })
}

fn arb_event() -> impl Strategy<Value = Value> {
    let word = || prop::sample::select(VOCAB.to_vec());
    (
        prop::sample::select(vec!["ContactCreate", "ContactTagUpdate", "OpportunityStageUpdate", "Workflow"]),
        prop::collection::vec(word(), 0..3),
        prop::option::of(word()),
        word(),
        prop::sample::select(vec!["open", "won", "lost"]),
        prop::option::of(prop::sample::select(vec!["9hTnVvSr1Q2ZyE5kHfXm", "4kLmPq7Rt2WvXy9ZaBcD"])),
    )
        .prop_map(|(kind, tags, source, stage, status, assignee)| match kind {
            "Workflow" => json!({
                "contact_id": "C", "location": {"id": "L"}, "tags": tags.join(","),
                "contact_source": source, "pipeline_id": "P1", "pipeline_name": "Sales",
                "pipleline_stage": stage, "id": "O", "status": status,
                "workflow": {"id": "flow", "name": "Hot"},
            }),
            "OpportunityStageUpdate" => json!({
                "type": kind, "locationId": "L", "id": "O", "contactId": "C", "source": source,
                "pipelineId": "P1", "pipelineStageId": stage, "status": status, "assignedTo": assignee,
            }),
            _ => json!({
                "type": kind, "locationId": "L", "id": "C", "tags": tags, "source": source, "assignedTo": assignee,
            }),
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn indexed_evaluation_agrees_with_checking_every_rule(
        yaml in arb_ruleset(),
        body in arb_event(),
        prev_tags in prop::option::of(prop::collection::vec(prop::sample::select(VOCAB.to_vec()), 0..3)),
        prev_stage in prop::option::of(prop::sample::select(VOCAB.to_vec())),
    ) {
        let set = match RuleSet::from_sources(&[("r.yaml", yaml.as_str())]) {
            Ok(set) => set,
            Err(e) => return Err(TestCaseError::fail(format!("generated rules must load: {e}\n{yaml}"))),
        };
        let Ok(Parsed::Event(e)) = event::parse_any(body.to_string().as_bytes()) else {
            return Err(TestCaseError::fail("generated event must parse"));
        };
        let previous = PreviousState {
            tags: prev_tags.map(|t| t.into_iter().map(str::to_owned).collect()),
            stage: prev_stage.map(str::to_owned),
            assigned: None,
        };
        let fast = set.evaluate(&e, &previous, &autofollow::rules::NoResolver);
        let slow = set.explain(&e, &previous, &autofollow::rules::NoResolver);
        prop_assert_eq!(&fast.plan, &slow.plan, "rules:\n{}\nevent: {}", yaml, body);
        let matched: Vec<&str> = slow
            .rules
            .iter()
            .filter(|r| r.outcome == autofollow::rules::RuleOutcome::Matched)
            .map(|r| r.rule.as_str())
            .collect();
        prop_assert_eq!(fast.matched, matched);
    }
}

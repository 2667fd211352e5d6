//! Targets taken from the event: `{ field: path }` and `{ table: name, key: path }` with the
//! top-level `tables:` section (issue 21). Each check also proves the indexed evaluation and
//! the full explain agree (see `common::plan_with`).

use crate::common;
use autofollow::model::ids::{LocationId, UserId};
use autofollow::model::plan::PreviousState;
use autofollow::rules::{NoResolver, Resolver, RuleSet};
use common::*;
use serde_json::json;

const TERRITORY: &str = "tables:
  territory:
    \"94*\": alice
    \"10*\": [bob, carol]
    SF: carol
    default: alice
";

fn territory(rule_tail: &str) -> RuleSet {
    rules(&format!(
        "{TERRITORY}rules:\n  - name: by-territory\n{rule_tail}"
    ))
}

fn with_postal_code(code: serde_json::Value) -> autofollow::model::event::Event {
    contact("ContactCreate", &[], json!({ "postalCode": code }))
}

/// The actions `explain` records for the first rule.
fn actions(set: &RuleSet, e: &autofollow::model::event::Event, r: &dyn Resolver) -> Vec<String> {
    let explained = set.explain(e, &PreviousState::default(), r);
    explained.rules[0].actions.clone()
}

#[test]
fn a_table_gives_the_first_entry_that_matches_ignoring_case_or_its_default() {
    let set = territory("    add: [{ table: territory, key: postalCode }]\n");
    let add = |code: serde_json::Value| plan(&set, &with_postal_code(code));
    assert_eq!(add(json!("94107")), "add: alice (table territory: 94*)");
    assert_eq!(
        add(json!("10001")),
        "add: bob (table territory: 10*), carol (table territory: 10*)"
    );
    assert_eq!(add(json!(" sf ")), "add: carol (table territory: SF)");
    assert_eq!(
        add(json!(10025)),
        "add: bob (table territory: 10*), carol (table territory: 10*)",
        "numbers compare as text"
    );
    assert_eq!(add(json!("60601")), "add: alice (table territory: default)");
    let none = contact("ContactCreate", &[], json!({}));
    assert_eq!(plan(&set, &none), "add: alice (table territory: default)");
}

#[test]
fn a_table_without_a_match_or_a_default_adds_nobody_and_says_why() {
    let set = rules(
        "tables:\n  t:\n    \"94*\": alice\nrules:\n  - name: r\n    add: [{ table: t, key: postalCode }]\n",
    );
    let e = with_postal_code(json!("10001"));
    assert_eq!(plan(&set, &e), "no change");
    assert_eq!(
        actions(&set, &e, &NoResolver),
        [
            "table t skipped: postalCode is \"10001\", which no entry matches, and the table has no default"
        ]
    );
}

/// Knows one user by email, as the service's users lookup would.
struct Directory;

impl Resolver for Directory {
    fn user_id_by_email(&self, _: &LocationId, email: &str) -> Option<UserId> {
        (email == "rita@example.com").then(|| UserId::parse("RitaRepUserId0000001").unwrap())
    }
}

#[test]
fn a_field_names_a_user_by_id_or_by_email() {
    let set = rules("rules:\n  - name: csm\n    add:\n      - field: customData.csm\n");
    let with = |csm: &str| {
        contact(
            "ContactCreate",
            &[],
            json!({ "customData": { "csm": csm } }),
        )
    };
    let by_id = with("CsmUserId00000000001");
    assert_eq!(
        plan(&set, &by_id),
        "add: CsmUserId00000000001 (field customData.csm)"
    );
    let by_email = with("rita@example.com");
    let found = plan_with(&set, &by_email, &PreviousState::default(), &Directory);
    assert_eq!(found, "add: RitaRepUserId0000001 (field customData.csm)");
    let skipped = [
        (
            with("nobody@example.com"),
            "no user id known for \"nobody@example.com\"",
        ),
        (
            with("not an id!"),
            "\"not an id!\" is neither a user id nor an email",
        ),
        (
            contact("ContactCreate", &[], json!({})),
            "the event has no value there",
        ),
    ];
    for (e, why) in skipped {
        let none = plan_with(&set, &e, &PreviousState::default(), &Directory);
        assert_eq!(none, "no change");
        let expected = format!("field customData.csm skipped: {why}");
        assert_eq!(actions(&set, &e, &Directory), [expected]);
    }
}

#[test]
fn a_field_reads_an_app_webhooks_custom_field_by_its_id() {
    let set =
        rules("rules:\n  - name: csm\n    add: [{ field: customFields.CsmFieldId0000000001 }]\n");
    let e = contact(
        "ContactCreate",
        &[],
        json!({ "customFields": [
            { "id": "OtherField0000000001", "value": "x" },
            { "id": "CsmFieldId0000000001", "value": "rita@example.com" }
        ]}),
    );
    assert_eq!(set.target_emails(&e), ["rita@example.com"]);
    let found = plan_with(&set, &e, &PreviousState::default(), &Directory);
    assert_eq!(
        found,
        "add: RitaRepUserId0000001 (field customFields.CsmFieldId0000000001)"
    );
}

#[test]
fn a_remove_through_a_table_or_a_field_removes_only_what_autofollow_added() {
    let set = territory(
        "    remove:\n      - { table: territory, key: postalCode }\n      - field: customData.csm\n",
    );
    let e = contact(
        "ContactCreate",
        &[],
        json!({ "postalCode": "94107", "customData": { "csm": "CsmUserId00000000001" } }),
    );
    let plan = set
        .evaluate(&e, &PreviousState::default(), &NoResolver)
        .plan;
    let removes: Vec<(String, bool)> = plan
        .remove
        .iter()
        .map(|r| (r.label.clone(), r.only_if_added))
        .collect();
    assert_eq!(
        removes,
        [
            ("alice (table territory: 94*)".to_owned(), true),
            (
                "CsmUserId00000000001 (field customData.csm)".to_owned(),
                true
            )
        ]
    );
}

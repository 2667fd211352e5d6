//! The example rule set in `rules/` loads cleanly and does what its comments say.

use crate::common;
use autofollow::ghl::pipelines::Pipelines;
use autofollow::model::plan::PreviousState;
use autofollow::rules::{NoResolver, RuleSet};
use common::*;
use serde_json::json;

fn example() -> RuleSet {
    RuleSet::load(&repo().join("rules")).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_example_rules_load_without_warnings() {
    let set = example();
    assert_eq!(set.rules().len(), 9);
    assert_eq!(set.files().len(), 4);
    assert!(set.warnings().is_empty(), "{:?}", set.warnings());
    assert_eq!(set.aliases().len(), 3);
}

#[test]
fn facebook_leads_go_to_alice() {
    let set = example();
    for source in ["Facebook Ads", "fb-spring", "Instagram Story"] {
        assert_eq!(
            plan(
                &set,
                &contact("ContactCreate", &[], json!({"source": source}))
            ),
            "add: alice",
            "{source}"
        );
    }
    assert_eq!(
        plan(
            &set,
            &contact("ContactCreate", &[], json!({"source": "Website"}))
        ),
        "no change"
    );
    assert_eq!(
        plan(
            &set,
            &contact("ContactUpdate", &[], json!({"source": "Facebook Ads"}))
        ),
        "no change"
    );
}

#[test]
fn test_contacts_are_left_alone() {
    let set = example();
    let e = contact(
        "ContactCreate",
        &["Test", "vip"],
        json!({"source": "Facebook Ads"}),
    );
    assert_eq!(plan(&set, &e), "no change");
}

#[test]
fn vip_tag_brings_carol_and_the_owner_and_its_removal_takes_carol_away() {
    let set = example();
    let owner = json!({"assignedTo": "OwnerUserId000000001"});
    let tagged = contact("ContactTagUpdate", &["vip"], owner.clone());
    assert_eq!(
        plan_with(&set, &tagged, &previous_tags(&[]), &NoResolver),
        "add: carol, OwnerUserId000000001 (assigned_user)"
    );
    assert_eq!(
        plan_with(&set, &tagged, &previous_tags(&["vip"]), &NoResolver),
        "no change"
    );
    let untagged = contact("ContactTagUpdate", &[], owner);
    assert_eq!(
        plan_with(&set, &untagged, &previous_tags(&["vip"]), &NoResolver),
        "remove: carol"
    );
}

#[test]
fn deals_move_through_the_pipeline() {
    let set = example();
    let pipelines = Pipelines::from_response(&fixture("pipelines.json")).expect("fixture");
    let proposal = opportunity(
        "OpportunityStageUpdate",
        "e93ba61a-53b3-45e7-985a-c7732dbcdb69",
        json!({"assignedTo": "RepUserId00000000001"}),
    );
    assert_eq!(
        plan_with(
            &set,
            &proposal,
            &previous_stage("a1f3c9e2-0000-4000-8000-000000000001"),
            &pipelines
        ),
        "add: RepUserId00000000001 (assigned_user)"
    );
    assert_eq!(
        plan_with(&set, &proposal, &PreviousState::default(), &NoResolver),
        "no change",
        "names need the pipelines"
    );
    let won = opportunity(
        "OpportunityStatusUpdate",
        "c0ffee00-0000-4000-8000-000000000003",
        json!({"status": "won"}),
    );
    assert_eq!(
        plan_with(&set, &won, &PreviousState::default(), &pipelines),
        "add: bob; remove: alice"
    );
    let shielded = PreviousState {
        tags: Some(vec!["do-not-follow".into()]),
        ..PreviousState::default()
    };
    assert_eq!(
        plan_with(&set, &won, &shielded, &pipelines),
        "no change",
        "tags known from the contact's last event"
    );
    let lost = opportunity(
        "OpportunityStatusUpdate",
        "c0ffee00-0000-4000-8000-000000000003",
        json!({"status": "lost"}),
    );
    assert_eq!(plan(&set, &lost), "remove: alice, bob");
}

#[test]
fn the_enterprise_workflow_adds_bob_and_carol() {
    let set = example();
    let e = event(
        serde_json::from_slice(&fixture("workflow-webhooks/opportunity-stage.json")).expect("json"),
    );
    assert_eq!(plan(&set, &e), "add: bob, carol");
    let other =
        event(serde_json::from_slice(&fixture("workflow-webhooks/tag-added.json")).expect("json"));
    assert_eq!(
        plan(&set, &other),
        "no change",
        "the paused rule is disabled"
    );
}

#[test]
fn the_rule_set_version_is_a_content_hash() {
    let a = example();
    assert_eq!(a.version(), example().version(), "same files, same version");
    let text = "rules:\n  - name: r\n    add: [9hTnVvSr1Q2ZyE5kHfXm]\n";
    let one = RuleSet::from_sources(&[("r.yaml", text)]).unwrap();
    let edited =
        RuleSet::from_sources(&[("r.yaml", text.replace("r\n", "r2\n").as_str())]).unwrap();
    assert_ne!(
        one.version(),
        edited.version(),
        "an edit changes the version"
    );
    assert_ne!(one.version(), a.version());
}

//! Rule semantics: every condition, list / wildcard / case handling, transitions, ordering,
//! `stop`, conflicts and `assigned_user`. Each check also proves the indexed evaluation and
//! the full explain agree (see `common::plan_with`).

use crate::common;
use autofollow::ghl::pipelines::Pipelines;
use autofollow::model::ids::{LocationId, UserId};
use autofollow::model::plan::PreviousState;
use autofollow::rules::{NoResolver, Resolver, RuleOutcome};
use common::*;
use serde_json::json;

const PROPOSAL: &str = "e93ba61a-53b3-45e7-985a-c7732dbcdb69";
const NEW_LEAD: &str = "a1f3c9e2-0000-4000-8000-000000000001";
const CLOSED_WON: &str = "c0ffee00-0000-4000-8000-000000000003";

/// Pipelines from the fixture, plus one known user email.
struct TestResolver(Pipelines);

impl Resolver for TestResolver {
    fn pipeline_name(&self, l: &LocationId, id: &str) -> Option<&str> {
        self.0.pipeline_name(l, id)
    }
    fn stage_name(&self, l: &LocationId, id: &str) -> Option<&str> {
        self.0.stage_name(l, id)
    }
    fn user_id_by_email(&self, _: &LocationId, email: &str) -> Option<UserId> {
        (email == "rita@example.com").then(|| UserId::parse("RitaRepUserId0000001").unwrap())
    }
}

fn resolver() -> TestResolver {
    TestResolver(Pipelines::from_response(&fixture("pipelines.json")).expect("pipelines fixture"))
}

fn one_rule(when: &str) -> autofollow::rules::RuleSet {
    rules(&format!(
        "rules:\n  - name: r\n    when: {when}\n    add: [alice]\n"
    ))
}

fn holds(when: &str, e: &autofollow::model::event::Event) -> bool {
    plan(&one_rule(when), e) == "add: alice"
}

#[test]
fn source_matches_any_listed_value_ignoring_case_and_space() {
    let e = contact("ContactCreate", &[], json!({"source": "  facebook ADS "}));
    assert!(holds("{source: Facebook Ads}", &e));
    assert!(holds("{source: [Google, facebook ads]}", &e));
    assert!(!holds("{source: Google}", &e));
    assert!(
        !holds("{source: facebook}", &e),
        "no substring matching without *"
    );
}

#[test]
fn source_wildcards() {
    let e = contact("ContactCreate", &[], json!({"source": "fb-summer-2026"}));
    assert!(holds("{source: fb-*}", &e));
    assert!(holds("{source: '*summer*'}", &e));
    assert!(holds("{source: '*2026'}", &e));
    assert!(!holds("{source: 'ig-*'}", &e));
}

#[test]
fn source_missing_does_not_match_even_a_bare_star() {
    let e = contact("ContactCreate", &[], json!({}));
    assert!(!holds("{source: '*'}", &e));
}

#[test]
fn has_tag_needs_one_of_the_tags() {
    let e = contact("ContactTagUpdate", &["Webinar", "VIP"], json!({}));
    assert!(holds("{has_tag: vip}", &e));
    assert!(holds("{has_tag: [hot, webinar]}", &e));
    assert!(holds("{has_tag: 'web*'}", &e));
    assert!(!holds("{has_tag: hot}", &e));
}

#[test]
fn tag_conditions_never_hold_on_events_that_do_not_carry_tags() {
    let e = opportunity("OpportunityStageUpdate", PROPOSAL, json!({}));
    assert!(!holds("{has_tag: '*'}", &e));
    assert!(
        !holds("{lacks_tag: spam}", &e),
        "unknown tags are not proof of absence"
    );
    assert!(!holds("{tag_added: '*'}", &e));
}

#[test]
fn events_without_tags_use_the_tags_known_from_the_contacts_previous_event() {
    let e = opportunity("OpportunityStageUpdate", PROPOSAL, json!({}));
    let known = previous_tags(&["vip"]);
    let r = NoResolver;
    assert_eq!(
        plan_with(&one_rule("{has_tag: vip}"), &e, &known, &r),
        "add: alice"
    );
    assert_eq!(
        plan_with(&one_rule("{lacks_tag: vip}"), &e, &known, &r),
        "no change"
    );
    assert_eq!(
        plan_with(&one_rule("{tag_added: vip}"), &e, &known, &r),
        "no change",
        "nothing changed"
    );
    assert_eq!(
        plan_with(&one_rule("{tag_removed: vip}"), &e, &known, &r),
        "no change"
    );
}

#[test]
fn lacks_tag_needs_none_of_the_tags() {
    let e = contact("ContactUpdate", &["customer"], json!({}));
    assert!(holds("{lacks_tag: [spam, test]}", &e));
    assert!(!holds("{lacks_tag: [spam, Customer]}", &e));
    assert!(!holds("{lacks_tag: 'cust*'}", &e));
    let untagged = contact("ContactUpdate", &[], json!({}));
    assert!(holds("{lacks_tag: spam}", &untagged));
}

#[test]
fn tag_added_compares_with_the_previous_tags() {
    let set = one_rule("{tag_added: vip}");
    let e = contact("ContactTagUpdate", &["vip", "webinar"], json!({}));
    let r = NoResolver;
    assert_eq!(
        plan_with(&set, &e, &previous_tags(&["webinar"]), &r),
        "add: alice"
    );
    assert_eq!(
        plan_with(&set, &e, &previous_tags(&["VIP ", "webinar"]), &r),
        "no change"
    );
    assert_eq!(plan_with(&set, &e, &previous_tags(&[]), &r), "add: alice");
}

#[test]
fn without_previous_state_every_current_tag_counts_as_added() {
    let set = one_rule("{tag_added: 'v*'}");
    let e = contact("ContactCreate", &["vip"], json!({}));
    assert_eq!(
        plan_with(&set, &e, &PreviousState::default(), &NoResolver),
        "add: alice"
    );
}

#[test]
fn tag_removed_needs_previous_state() {
    let set = one_rule("{tag_removed: [vip, hot]}");
    let e = contact("ContactTagUpdate", &["webinar"], json!({}));
    let r = NoResolver;
    assert_eq!(
        plan_with(&set, &e, &previous_tags(&["VIP", "webinar"]), &r),
        "add: alice"
    );
    assert_eq!(
        plan_with(&set, &e, &previous_tags(&["webinar"]), &r),
        "no change"
    );
    assert_eq!(
        plan_with(&set, &e, &PreviousState::default(), &r),
        "no change"
    );
}

#[test]
fn pipeline_and_stage_match_by_id_always_and_by_name_through_the_resolver() {
    let e = opportunity("OpportunityStageUpdate", PROPOSAL, json!({}));
    let r = resolver();
    let check = |when: &str, resolver: &dyn Resolver| {
        plan_with(&one_rule(when), &e, &PreviousState::default(), resolver) == "add: alice"
    };
    assert!(check("{pipeline: VDm7RPYC2GLUvdpKmBfC}", &NoResolver));
    assert!(check(&format!("{{stage: {PROPOSAL}}}"), &NoResolver));
    assert!(
        !check("{pipeline: Sales}", &NoResolver),
        "names need a resolver"
    );
    assert!(check("{pipeline: sales}", &r));
    assert!(check("{stage: [Closed Won, proposal]}", &r));
    assert!(!check("{stage: Closed Won}", &r));
    assert!(check("{pipeline: Sales, stage: 'Prop*'}", &r));
}

#[test]
fn a_workflow_events_stage_name_matches_directly() {
    let e = event(
        serde_json::from_slice(&fixture("workflow-webhooks/opportunity-stage.json")).expect("json"),
    );
    assert!(holds("{pipeline: Sales, stage: proposal}", &e));
    assert!(holds("{stage_entered: Proposal}", &e));
    assert!(
        !holds(&format!("{{stage: {PROPOSAL}}}"), &e),
        "workflow bodies carry no stage id"
    );
}

#[test]
fn stage_entered_compares_with_the_previous_stage() {
    let set = one_rule("{stage_entered: Proposal}");
    let e = opportunity("OpportunityStageUpdate", PROPOSAL, json!({}));
    let r = resolver();
    assert_eq!(
        plan_with(&set, &e, &PreviousState::default(), &r),
        "add: alice",
        "unknown previous counts as entered"
    );
    assert_eq!(
        plan_with(&set, &e, &previous_stage(NEW_LEAD), &r),
        "add: alice"
    );
    assert_eq!(
        plan_with(&set, &e, &previous_stage(PROPOSAL), &r),
        "no change"
    );
    assert_eq!(
        plan_with(&set, &e, &previous_stage("proposal"), &r),
        "no change",
        "previous given by name"
    );
}

#[test]
fn stage_left_needs_the_previous_stage_to_match_and_differ() {
    let set = one_rule("{stage_left: Proposal}");
    let r = resolver();
    let won = opportunity("OpportunityStageUpdate", CLOSED_WON, json!({}));
    assert_eq!(
        plan_with(&set, &won, &previous_stage(PROPOSAL), &r),
        "add: alice"
    );
    assert_eq!(
        plan_with(&set, &won, &PreviousState::default(), &r),
        "no change"
    );
    assert_eq!(
        plan_with(&set, &won, &previous_stage(NEW_LEAD), &r),
        "no change"
    );
    let still = opportunity("OpportunityUpdate", PROPOSAL, json!({}));
    assert_eq!(
        plan_with(&set, &still, &previous_stage(PROPOSAL), &r),
        "no change"
    );
}

#[test]
fn status_matches_any_listed_status() {
    let e = opportunity(
        "OpportunityStatusUpdate",
        CLOSED_WON,
        json!({"status": "won"}),
    );
    assert!(holds("{status: won}", &e));
    assert!(holds("{status: [lost, WON]}", &e));
    assert!(!holds("{status: open}", &e));
    assert!(!holds(
        "{status: won}",
        &contact("ContactCreate", &[], json!({}))
    ));
}

#[test]
fn workflow_matches_by_name_or_id() {
    let e =
        event(serde_json::from_slice(&fixture("workflow-webhooks/tag-added.json")).expect("json"));
    assert!(holds("{workflow: 'New Workflow*'}", &e));
    assert!(holds(
        "{workflow: d325be72-ae1d-490a-b6e7-62b404ecd35b}",
        &e
    ));
    assert!(!holds("{workflow: Hot leads}", &e));
    assert!(!holds(
        "{workflow: '*'}",
        &contact("ContactCreate", &[], json!({}))
    ));
}

#[test]
fn fields_reach_any_value_by_dot_path() {
    let e = event(
        serde_json::from_slice(&fixture("workflow-webhooks/opportunity-stage.json")).expect("json"),
    );
    assert!(holds("{fields: {customData.team: Enterprise}}", &e));
    assert!(holds(
        "{fields: {contact.attributionSource.utmSource: [facebook, instagram]}}",
        &e
    ));
    assert!(
        holds("{fields: {Lead Score: '8*'}}", &e),
        "custom fields by label, spaces included"
    );
    assert!(!holds("{fields: {customData.team: smb}}", &e));
    assert!(!holds("{fields: {customData.missing: '*'}}", &e));
    assert!(
        !holds(
            "{fields: {customData.team: enterprise, customData.secret_hint: x}}",
            &e
        ),
        "every listed field must match"
    );
}

#[test]
fn fields_select_app_custom_fields_by_id_and_array_elements_by_index() {
    let e = contact(
        "ContactCreate",
        &[],
        json!({"customFields": [{"id": "BcdmQEsNgz6AVpgLVUJ0", "value": "XYZ Corp"}, {"id": "n", "value": 42}]}),
    );
    assert!(holds(
        "{fields: {customFields.BcdmQEsNgz6AVpgLVUJ0: xyz corp}}",
        &e
    ));
    assert!(
        holds("{fields: {customFields.n: 42}}", &e),
        "numbers compare as text"
    );
    assert!(holds("{fields: {customFields.0.value: XYZ*}}", &e));
    assert!(holds(
        "{fields: {tags: '*'}}",
        &contact("ContactCreate", &["a", "b"], json!({}))
    ));
}

#[test]
fn any_needs_one_block_and_not_negates_a_block() {
    let e = contact("ContactCreate", &["hot"], json!({"source": "Website"}));
    assert!(holds("{any: [{has_tag: vip}, {source: website}]}", &e));
    assert!(!holds("{any: [{has_tag: vip}, {source: referral}]}", &e));
    assert!(holds("{not: {has_tag: do-not-follow}}", &e));
    assert!(!holds("{not: {has_tag: hot, source: website}}", &e));
    assert!(
        holds("{not: {has_tag: hot, source: referral}}", &e),
        "not of a block that fails"
    );
    assert!(
        holds(
            "{any: [{not: {has_tag: hot}}, {any: [{source: web*}]}]}",
            &e
        ),
        "nesting"
    );
}

#[test]
fn every_condition_of_a_block_must_hold() {
    let e = contact("ContactCreate", &["vip"], json!({"source": "Website"}));
    assert!(holds("{has_tag: vip, source: website}", &e));
    assert!(!holds("{has_tag: vip, source: referral}", &e));
    assert!(holds("{}", &e), "an empty block holds");
}

#[test]
fn events_and_locations_filter_before_conditions() {
    let set = rules(
        "rules:\n  - name: r\n    events: [ContactCreate, contacttagupdate]\n    locations: [ve9EPM428h8vShlRW1KT]\n    add: [alice]\n",
    );
    assert_eq!(
        plan(&set, &contact("ContactCreate", &[], json!({}))),
        "add: alice"
    );
    assert_eq!(
        plan(&set, &contact("ContactTagUpdate", &[], json!({}))),
        "add: alice"
    );
    assert_eq!(
        plan(&set, &contact("ContactUpdate", &[], json!({}))),
        "no change"
    );
    let elsewhere = contact(
        "ContactCreate",
        &[],
        json!({"locationId": "OtherLocation0000000"}),
    );
    assert_eq!(plan(&set, &elsewhere), "no change");
}

#[test]
fn a_later_rule_overrides_an_earlier_one_for_the_same_user() {
    let set = rules(
        "rules:
  - name: everyone
    add: [alice, bob]
  - name: not-bob-for-spam
    when: {has_tag: spam}
    remove: [bob]
  - name: bob-again-for-vip
    when: {has_tag: vip}
    add: [bob]
",
    );
    assert_eq!(
        plan(&set, &contact("ContactCreate", &[], json!({}))),
        "add: alice, bob"
    );
    assert_eq!(
        plan(&set, &contact("ContactCreate", &["spam"], json!({}))),
        "add: alice; remove: bob"
    );
    assert_eq!(
        plan(&set, &contact("ContactCreate", &["spam", "vip"], json!({}))),
        "add: alice, bob"
    );
    let d = set.evaluate(
        &contact("ContactCreate", &["spam"], json!({})),
        &PreviousState::default(),
        &NoResolver,
    );
    assert_eq!(d.matched, vec!["everyone", "not-bob-for-spam"]);
    assert_eq!(
        d.plan.remove[0].rule, "not-bob-for-spam",
        "the plan says which rule decided"
    );
}

#[test]
fn stop_ends_evaluation_and_disabled_rules_are_skipped() {
    let set = rules(
        "rules:
  - name: off
    enabled: false
    add: [carol]
  - name: first
    when: {has_tag: vip}
    add: [alice]
    stop: true
  - name: second
    add: [bob]
",
    );
    let vip = contact("ContactCreate", &["vip"], json!({}));
    assert_eq!(plan(&set, &vip), "add: alice");
    assert_eq!(
        plan(&set, &contact("ContactCreate", &[], json!({}))),
        "add: bob"
    );
    let x = set.explain(&vip, &PreviousState::default(), &NoResolver);
    let outcomes: Vec<_> = x.rules.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [
            RuleOutcome::Disabled,
            RuleOutcome::Matched,
            RuleOutcome::NotEvaluated
        ]
    );
}

#[test]
fn stop_without_a_match_does_not_stop() {
    let set = rules(
        "rules:\n  - name: guard\n    when: {has_tag: test}\n    stop: true\n  - name: all\n    add: [alice]\n",
    );
    assert_eq!(
        plan(&set, &contact("ContactCreate", &["vip"], json!({}))),
        "add: alice"
    );
    assert_eq!(
        plan(&set, &contact("ContactCreate", &["Test"], json!({}))),
        "no change"
    );
}

#[test]
fn assigned_user_is_the_events_assignee() {
    let set = rules("rules:\n  - name: owner\n    add: [assigned_user]\n");
    let e = contact(
        "ContactCreate",
        &[],
        json!({"assignedTo": "OwnerUserId000000001"}),
    );
    assert_eq!(plan(&set, &e), "add: OwnerUserId000000001 (assigned_user)");
    assert_eq!(
        plan(&set, &contact("ContactCreate", &[], json!({}))),
        "no change"
    );
}

#[test]
fn a_workflow_assignee_email_resolves_through_the_resolver() {
    let set = rules("rules:\n  - name: owner\n    add: [assigned_user]\n");
    let e = event(
        serde_json::from_slice(&fixture("workflow-webhooks/opportunity-stage.json")).expect("json"),
    );
    assert_eq!(
        plan_with(&set, &e, &PreviousState::default(), &resolver()),
        "add: RitaRepUserId0000001 (assigned_user)"
    );
    assert_eq!(plan(&set, &e), "no change", "unresolved email adds nobody");
    let x = set.explain(&e, &PreviousState::default(), &NoResolver);
    assert!(
        x.rules[0]
            .actions
            .iter()
            .any(|a| a.contains("rita@example.com")),
        "{:?}",
        x.rules[0].actions
    );
}

#[test]
fn within_one_rule_add_wins_over_remove_for_the_same_user() {
    let set = rules("rules:\n  - name: handover\n    add: [assigned_user]\n    remove: [alice]\n");
    let e = contact("ContactCreate", &[], json!({"assignedTo": ALICE}));
    assert_eq!(plan(&set, &e), format!("add: {ALICE} (assigned_user)"));
}

#[test]
fn aliases_and_literal_ids_name_the_same_users() {
    let set = rules(&format!(
        "rules:\n  - name: r\n    add: [alice, {BOB}]\n    remove: [{CAROL}]\n"
    ));
    let d = set.evaluate(
        &contact("ContactCreate", &[], json!({})),
        &PreviousState::default(),
        &NoResolver,
    );
    let added: Vec<&str> = d.plan.add.iter().map(|e| e.user.as_str()).collect();
    assert_eq!(added, [ALICE, BOB]);
    assert_eq!(d.plan.remove[0].user.as_str(), CAROL);
}

#[test]
fn aliases_from_one_file_are_usable_in_another() {
    let set = autofollow::rules::RuleSet::from_sources(&[
        ("00-users.yaml", USERS),
        ("10-rules.yaml", "rules:\n  - name: r\n    add: [bob]\n"),
    ])
    .expect("loads");
    assert_eq!(set.files().len(), 2);
    assert_eq!(
        plan(&set, &contact("ContactCreate", &[], json!({}))),
        "add: bob"
    );
}

#[test]
fn explain_gives_a_reason_for_every_condition() {
    let set = one_rule("{source: Facebook Ads, has_tag: vip}");
    let e = contact(
        "ContactCreate",
        &["webinar"],
        json!({"source": "facebook ads"}),
    );
    let x = set.explain(&e, &PreviousState::default(), &NoResolver);
    let checks = &x.rules[0].checks;
    assert_eq!(checks.len(), 2, "explain keeps checking after a failure");
    assert!(
        checks[0].holds && checks[0].detail.contains("matches \"Facebook Ads\""),
        "{:?}",
        checks[0]
    );
    assert!(
        !checks[1].holds && checks[1].detail.contains("webinar"),
        "{:?}",
        checks[1]
    );
}

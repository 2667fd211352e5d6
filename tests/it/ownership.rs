//! Followers as desired state: the ownership ledger, `follow: while_matching`, and the rule
//! that autofollow never removes a follower it did not add unless a rule names the user.

use autofollow::model::ids::{ContactId, LocationId};
use autofollow::model::plan::Follow;
use serde_json::{Value, json};
use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

use crate::common::service::{LOCATION, TestApp, accepted, spawn_app};
use crate::common::{ALICE, BOB};

/// The followers calls GoHighLevel received, in order: (method, users).
async fn calls(app: &TestApp) -> Vec<(String, Value)> {
    let calls = app.followers_calls().await.into_iter();
    calls.map(|(method, _, users)| (method, users)).collect()
}

fn call(method: &str, users: &[&str]) -> (String, Value) {
    (method.to_owned(), json!(users))
}

async fn tags(app: &TestApp, contact: &str, tags: &[&str]) {
    app.contact("ContactTagUpdate", contact, json!({ "tags": tags }))
        .await;
    app.drain().await;
}

/// The users autofollow keeps following `contact`, with their rules.
async fn owned(app: &TestApp, contact: &str) -> Vec<(String, String, Follow)> {
    let (l, c) = (
        LocationId::parse(LOCATION).unwrap(),
        ContactId::parse(contact).unwrap(),
    );
    let rows = app.store().owned(&l, &c, false).await.unwrap();
    rows.into_iter()
        .map(|o| (o.user.to_string(), o.rule, o.follow))
        .collect()
}

#[tokio::test]
async fn a_while_matching_rule_removes_its_users_when_it_stops_holding() {
    let rules = "rules:\n  - name: vip\n    when: {has_tag: vip}\n    add: [alice]\n    follow: while_matching\n";
    let app = spawn_app(rules).await;
    app.ghl_accepts_the_rest().await;
    tags(&app, "c1", &["vip"]).await;
    let keeps = vec![(ALICE.to_owned(), "vip".to_owned(), Follow::WhileMatching)];
    assert_eq!(owned(&app, "c1").await, keeps);
    let why = std::process::Command::new(env!("CARGO_BIN_EXE_autofollow"))
        .args(["why", "c1", "--database-url", &app.database_url])
        .output()
        .unwrap();
    let why = String::from_utf8_lossy(&why.stdout);
    let kept = format!("{ALICE}: rule vip (while_matching, since event 1)");
    assert!(why.contains(&kept), "{why}");
    tags(&app, "c1", &["vip", "webinar"]).await;
    tags(&app, "c1", &["webinar"]).await;
    assert_eq!(
        calls(&app).await,
        vec![
            call("POST", &[ALICE]),
            call("POST", &[ALICE]),
            call("DELETE", &[ALICE])
        ],
        "while it holds the add is repeated (idempotent); then the follow ends"
    );
    assert!(owned(&app, "c1").await.is_empty());
    app.shutdown().await;
}

/// A follower someone added by hand (GoHighLevel's answer shows it was already following) is
/// not autofollow's: no automatic removal takes it away.
#[tokio::test]
async fn a_follower_added_by_hand_is_never_removed_automatically() {
    let rules = "rules:\n  - name: vip\n    when: {has_tag: vip}\n    add: [bob]\n    follow: while_matching\n";
    let app = spawn_app(rules).await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!({"followers": [BOB], "followersAdded": []})),
        )
        .mount(&app.ghl)
        .await;
    app.ghl_accepts_the_rest().await;
    tags(&app, "c1", &["vip"]).await;
    assert!(
        owned(&app, "c1").await.is_empty(),
        "bob was already following"
    );
    tags(&app, "c1", &[]).await;
    assert_eq!(calls(&app).await, vec![call("POST", &[BOB])], "no DELETE");
    app.shutdown().await;
}

/// The owner follows while they own the opportunity: an owner change moves the follow, an
/// event that does not name the owner changes nothing.
#[tokio::test]
async fn the_owner_follows_while_owning_and_an_owner_change_moves_the_follow() {
    let rules = "rules:\n  - name: owner\n    events: [OpportunityCreate, OpportunityUpdate, OpportunityStageUpdate, OpportunityAssignedToUpdate]\n    add: [assigned_user]\n    follow: while_matching\n";
    let app = spawn_app(rules).await;
    app.ghl_accepts_the_rest().await;
    let event = |event_type: &str, assignee: Option<&str>| {
        let mut body = json!({"type": event_type, "locationId": LOCATION, "id": "o1",
            "contactId": "c1", "pipelineStageId": "s1", "status": "open"});
        if let Some(a) = assignee {
            body["assignedTo"] = json!(a);
        }
        body
    };
    for (t, a) in [
        ("OpportunityCreate", Some(ALICE)),
        ("OpportunityStageUpdate", None),
        ("OpportunityAssignedToUpdate", Some(BOB)),
    ] {
        accepted(app.post_app(&event(t, a)).await).await;
        app.drain().await;
    }
    assert_eq!(
        calls(&app).await,
        vec![
            call("POST", &[ALICE]),
            call("POST", &[ALICE]),
            call("POST", &[BOB]),
            call("DELETE", &[ALICE]),
        ]
    );
    let keeps = vec![(BOB.to_owned(), "owner".to_owned(), Follow::WhileMatching)];
    assert_eq!(owned(&app, "c1").await, keeps);
    app.shutdown().await;
}

/// A user another rule still keeps stays when a while-matching rule stops holding; a
/// `remove: [assigned_user]` removes only a follower autofollow added.
#[tokio::test]
async fn another_rule_keeps_the_user_and_dynamic_removes_need_ownership() {
    let rules = "rules:\n  - name: vip\n    when: {has_tag: vip}\n    add: [alice]\n    follow: while_matching\n  - name: facebook\n    when: {source: fb}\n    add: [alice]\n  - name: lost\n    events: [ContactUpdate]\n    when: {has_tag: lost}\n    remove: [assigned_user]\n";
    let app = spawn_app(rules).await;
    app.ghl_accepts_the_rest().await;
    app.contact(
        "ContactCreate",
        "c1",
        json!({"tags": ["vip"], "source": "fb"}),
    )
    .await;
    app.drain().await;
    tags(&app, "c1", &[]).await;
    let keeps = vec![(ALICE.to_owned(), "facebook".to_owned(), Follow::OnMatch)];
    assert_eq!(
        owned(&app, "c1").await,
        keeps,
        "the on_match rule keeps alice"
    );
    // Bob owns c2 but autofollow never added him: the removal leaves him.
    app.contact(
        "ContactUpdate",
        "c2",
        json!({"tags": ["lost"], "assignedTo": BOB}),
    )
    .await;
    app.drain().await;
    assert_eq!(calls(&app).await, vec![call("POST", &[ALICE])]);
    app.shutdown().await;
}

/// `explain` says which users follow only while their rule holds, and which removals apply
/// only to followers autofollow added.
#[test]
fn explain_names_the_follow_mode_and_owned_only_removals() {
    use autofollow::model::event::{Parsed, parse_any};
    use autofollow::model::plan::PreviousState;
    use autofollow::rules::{NoResolver, RuleSet};
    let rules = "users:\n  alice: 9hTnVvSr1Q2ZyE5kHfXm\nrules:\n  - name: vip\n    when: {has_tag: vip}\n    add: [alice]\n    follow: while_matching\n  - name: lost\n    when: {has_tag: lost}\n    remove: [assigned_user]\n";
    let set = RuleSet::from_sources(&[("r.yaml", rules)]).unwrap();
    let body = json!({"type": "ContactUpdate", "locationId": "L1", "id": "c1",
        "tags": ["vip", "lost"], "assignedTo": BOB});
    let Ok(Parsed::Event(event)) = parse_any(body.to_string().as_bytes()) else {
        panic!("parses")
    };
    let explained = set.explain(&event, &PreviousState::default(), &NoResolver);
    let actions: Vec<&str> = explained
        .rules
        .iter()
        .flat_map(|r| r.actions.iter().map(String::as_str))
        .collect();
    assert_eq!(
        actions,
        [
            "add alice (follows while the rule holds)",
            &format!("remove {BOB} (assigned_user) (if autofollow added it)"),
        ]
    );
}

/// The admin API lists the contact's ledger, ended rows included.
#[tokio::test]
async fn the_admin_api_lists_the_ledger_of_a_contact() {
    use crate::common::service::{Options, spawn_with};
    let rules = "rules:\n  - name: vip\n    when: {has_tag: vip}\n    add: [alice]\n    follow: while_matching\n";
    let app = spawn_with(Options {
        rules: rules.into(),
        admin_token: Some("admin-token-0123456789".into()),
        ..Options::default()
    })
    .await;
    app.ghl_accepts_the_rest().await;
    tags(&app, "c1", &["vip"]).await;
    tags(&app, "c1", &[]).await;
    let get = |query: &str| {
        app.http
            .get(format!("{}/admin/contacts/c1/followers{query}", app.admin))
            .bearer_auth("admin-token-0123456789")
            .send()
    };
    let listed: Value = get(&format!("?location={LOCATION}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let row = &listed["owned"][0];
    assert_eq!(
        (&row["user"], &row["rule"], &row["follow"], &row["event_id"]),
        (
            &json!(ALICE),
            &json!("vip"),
            &json!("while_matching"),
            &json!(1)
        ),
        "{listed}"
    );
    assert!(row["removed_at"].is_i64(), "ended when vip went: {listed}");
    assert_eq!(get("?location=..").await.unwrap().status(), 400);
    app.shutdown().await;
}

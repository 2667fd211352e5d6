//! Private Integration Tokens: a PIT serves its own location only, the token file is read
//! again when it changes (a rotated token resumes the location's parked work), and a token
//! lacking a scope is named.

use std::time::Duration;

use autofollow::model::record::EventStatus;
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::common::service::{LOCATION, Options, TestApp, accepted, spawn_app, spawn_with};

const RULE: &str = "rules:\n  - name: all\n    add: [alice]\n";

async fn answer(app: &TestApp, body: &Value) -> Value {
    let r = app.post_app(body).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn ghl_token_serves_only_the_location_it_belongs_to() {
    let app = spawn_app(RULE).await;
    let elsewhere =
        json!({"type": "ContactCreate", "locationId": "Elsewhere00000000001", "id": "c1"});
    let got = answer(&app, &elsewhere).await;
    assert_eq!(got["status"], "ignored", "{got}");
    assert!(
        app.store().event(1).await.unwrap().is_none(),
        "nothing stored"
    );
    let own = json!({"type": "ContactCreate", "locationId": LOCATION, "id": "c1"});
    assert_eq!(answer(&app, &own).await["status"], "accepted");
    app.shutdown().await;
}

/// A PIT rotated in the token file is used without a restart: the location's events parked
/// on the refused token resume, and a location added to the file is served.
#[tokio::test]
async fn a_token_file_edit_takes_effect_without_a_restart() {
    let app = spawn_with(Options {
        rules: RULE.into(),
        token: false,
        location_tokens: vec![("L1".into(), "pit-old".into())],
        ..Options::default()
    })
    .await;
    Mock::given(method("POST"))
        .and(header("authorization", "Bearer pit-old"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"message": "Invalid JWT"})))
        .mount(&app.ghl)
        .await;
    Mock::given(method("POST"))
        .and(header("authorization", "Bearer pit-new"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"followers": []})))
        .mount(&app.ghl)
        .await;
    let parked = accepted(
        app.post_app(&json!({"type": "ContactCreate", "locationId": "L1", "id": "c1"}))
            .await,
    )
    .await;
    app.wait_for(parked, EventStatus::Parked).await;
    let l9 = json!({"type": "ContactCreate", "locationId": "L9", "id": "c9"});
    assert_eq!(answer(&app, &l9).await["status"], "ignored");

    let file = app.rules_file.with_file_name("tokens.yaml");
    std::fs::write(&file, "L1: pit-new\nL9: pit-new\n").unwrap();
    app.wait_for(parked, EventStatus::Done).await;
    let id = accepted(app.post_app(&l9).await).await;
    app.wait_for(id, EventStatus::Done).await;

    // A file that no longer reads keeps the tokens in use.
    std::fs::write(&file, "- not a mapping\n").unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let id = accepted(
        app.post_app(&json!({"type": "ContactCreate", "locationId": "L1", "id": "c2"}))
            .await,
    )
    .await;
    app.wait_for(id, EventStatus::Done).await;
    app.shutdown().await;
}

/// A lookup refused with 403 names the scope the token lacks in the admin `/readyz`, and the
/// rules go on without its answer.
#[tokio::test]
async fn a_token_lacking_a_scope_is_named_in_readyz() {
    let rules = "rules:\n  - name: won\n    when: {stage: Won}\n    add: [alice]\n";
    let app = spawn_app(rules).await;
    Mock::given(method("GET"))
        .and(path("/opportunities/pipelines"))
        .respond_with(
            ResponseTemplate::new(403)
                .set_body_json(json!({"message": "The token is not authorized for this scope."})),
        )
        .mount(&app.ghl)
        .await;
    let body = json!({"type": "OpportunityStageUpdate", "locationId": LOCATION, "id": "o1",
        "contactId": "c1", "pipelineId": "p1", "pipelineStageId": "s1", "status": "open"});
    let id = accepted(app.post_app(&body).await).await;
    app.drain().await;
    assert_eq!(app.event(id).await.status, EventStatus::Done);
    let ready = app.ready().await;
    let missing = &ready["access"]["missing_scopes"][0];
    assert_eq!(missing["location"], LOCATION, "{ready}");
    assert_eq!(missing["scope"], "opportunities.readonly", "{ready}");
    assert!(
        missing["refused"].as_str().unwrap().contains("403"),
        "{ready}"
    );
    app.shutdown().await;
}

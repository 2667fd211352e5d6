//! End to end: the real server, a temporary SQLite database and a wiremock GoHighLevel.

use crate::common;
use std::time::Duration;

use autofollow::model::record::EventStatus;
use common::service::*;
use common::{ALICE, BOB, CAROL, fixture};
use serde_json::{Value, json};
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, ResponseTemplate};

const LOC: &str = "ve9EPM428h8vShlRW1KT";

fn contact_event(kind: &str, contact: &str, extra: Value) -> Value {
    let mut body = json!({"type": kind, "locationId": LOC, "id": contact});
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
    body
}

/// A followers call answered with `status`, expected exactly `times` times.
async fn followers(
    app: &TestApp,
    verb: &str,
    contact: &str,
    users: &[&str],
    status: u16,
    times: u64,
) {
    Mock::given(method(verb))
        .and(path(format!("/contacts/{contact}/followers")))
        .and(header("Authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("Version", "2021-07-28"))
        .and(header("Content-Type", "application/json"))
        .and(body_json(json!({ "followers": users })))
        .respond_with(ResponseTemplate::new(status).set_body_json(json!({"followers": users})))
        .expect(times)
        .mount(&app.ghl)
        .await;
}

async fn calls(app: &TestApp) -> Vec<(String, String, Value)> {
    app.ghl
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.url.path().ends_with("/followers"))
        .map(|r| {
            let body = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            (r.method.to_string(), r.url.path().to_owned(), body)
        })
        .collect()
}

/// A Facebook lead for contact c1, which SOURCE_RULE gives to Alice; its event id.
async fn fb_lead(app: &TestApp) -> i64 {
    let body = contact_event("ContactCreate", "c1", json!({"source": "fb-x"}));
    accepted(app.post_app(&body).await).await
}

const SOURCE_RULE: &str = "rules:\n  - name: fb\n    when: {source: 'fb-*'}\n    add: [alice]\n";

#[tokio::test]
async fn a_source_rule_adds_a_follower_with_the_exact_request_shape() {
    let app = spawn_app(SOURCE_RULE).await;
    followers(&app, "POST", "c1", &[ALICE], 201, 1).await;
    let id = app
        .contact("ContactCreate", "c1", json!({"source": "FB-spring"}))
        .await;
    app.drain().await;
    assert_eq!(app.event(id).await.status, EventStatus::Done);
    let d = app.decisions(id).await;
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].matched, ["fb"]);
    let ready: Value = app.ready().await;
    let version = ready["rules"]["version"].as_str().unwrap_or_default();
    assert_eq!(version.len(), 12, "{ready}");
    assert_eq!(
        d[0].rules_version, version,
        "the decision names the rule set that made it"
    );
    assert_eq!(d[0].calls[0].status, Some(201));
    app.ghl.verify().await;
    app.shutdown().await;
}

#[tokio::test]
async fn an_event_no_rule_matches_is_stored_and_makes_no_call() {
    let app = spawn_app(SOURCE_RULE).await;
    let id = app
        .contact("ContactCreate", "c1", json!({"source": "web"}))
        .await;
    app.drain().await;
    assert_eq!(app.event(id).await.status, EventStatus::Done);
    assert!(calls(&app).await.is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn tag_added_and_tag_removed_compare_with_the_stored_state() {
    let rules = "rules:\n  - name: on\n    when: {tag_added: vip}\n    add: [carol]\n  - name: off\n    when: {tag_removed: vip}\n    remove: [carol]\n";
    let app = spawn_app(rules).await;
    followers(&app, "POST", "c1", &[CAROL], 201, 1).await;
    followers(&app, "DELETE", "c1", &[CAROL], 200, 1).await;
    app.contact("ContactCreate", "c1", json!({"tags": ["webinar"]}))
        .await;
    app.drain().await;
    assert!(calls(&app).await.is_empty(), "webinar is not vip");
    app.contact(
        "ContactTagUpdate",
        "c1",
        json!({"tags": ["webinar", "vip"]}),
    )
    .await;
    app.drain().await;
    // The same tags again: nothing was added, so no call.
    app.contact("ContactUpdate", "c1", json!({"tags": ["webinar", "vip"]}))
        .await;
    app.drain().await;
    app.contact("ContactTagUpdate", "c1", json!({"tags": ["webinar"]}))
        .await;
    app.drain().await;
    let seen: Vec<String> = calls(&app).await.into_iter().map(|(m, _, _)| m).collect();
    assert_eq!(seen, ["POST", "DELETE"]);
    app.ghl.verify().await;
    app.shutdown().await;
}

#[tokio::test]
async fn events_of_one_contact_are_processed_in_arrival_order() {
    let rules = "rules:\n  - name: on\n    when: {has_tag: vip}\n    add: [carol]\n  - name: off\n    when: {lacks_tag: vip}\n    remove: [carol]\n";
    let app = spawn_app(rules).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_delay(Duration::from_millis(50)))
        .mount(&app.ghl)
        .await;
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&app.ghl)
        .await;
    for i in 0..6 {
        let tags = if i % 2 == 0 {
            json!(["vip"])
        } else {
            json!([])
        };
        app.contact("ContactTagUpdate", "c1", json!({"tags": tags}))
            .await;
    }
    app.drain().await;
    // Events that arrive while an earlier one is in flight are decided together, in order;
    // whatever the grouping, the last call reflects the last event (no vip: carol removed).
    let seen: Vec<String> = calls(&app).await.into_iter().map(|(m, _, _)| m).collect();
    assert!(!seen.is_empty() && seen.len() <= 6, "{seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("DELETE"), "{seen:?}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_burst_for_one_contact_settles_into_at_most_one_post_and_one_delete() {
    let rules = "rules:\n  - name: on\n    when: {tag_added: vip}\n    add: [carol]\n  - name: off\n    when: {tag_removed: vip}\n    remove: [carol, bob]\n";
    let app = spawn_with(Options {
        rules: rules.into(),
        settle_delay: "400ms".into(),
        ..Options::default()
    })
    .await;
    app.ghl_accepts_the_rest().await;
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&app.ghl)
        .await;
    let mut ids = Vec::new();
    for i in 0..20 {
        // vip on and off; the last event has it on.
        let tags = if i % 2 == 1 {
            json!(["vip"])
        } else {
            json!(["webinar"])
        };
        ids.push(
            app.contact("ContactTagUpdate", "c1", json!({"tags": tags}))
                .await,
        );
    }
    app.drain().await;
    let made = calls(&app).await;
    let posts: Vec<&Value> = made
        .iter()
        .filter(|(m, _, _)| m == "POST")
        .map(|(_, _, b)| b)
        .collect();
    let deletes: Vec<&Value> = made
        .iter()
        .filter(|(m, _, _)| m == "DELETE")
        .map(|(_, _, b)| b)
        .collect();
    assert_eq!(
        posts,
        [&json!({"followers": [CAROL]})],
        "carol ends up following"
    );
    assert_eq!(
        deletes,
        [&json!({"followers": [BOB]})],
        "bob, only ever removed, is removed"
    );
    for id in &ids {
        let d = app.decisions(*id).await;
        assert_eq!(d.len(), 1, "one decision per event");
        assert_eq!(
            d[0].batch, ids,
            "each decision names the events its calls carried"
        );
        assert_eq!(d[0].calls.len(), 2);
    }
    assert_eq!(app.decisions(ids[1]).await[0].plan.summary(), "add: carol");
    assert_eq!(
        app.decisions(ids[2]).await[0].plan.summary(),
        "remove: carol, bob"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_stage_rule_by_name_resolves_stage_ids_through_the_pipelines_api() {
    let rules = "rules:\n  - name: proposal\n    when: {pipeline: Sales, stage_entered: Proposal}\n    add: [assigned_user]\n";
    let app = spawn_app(rules).await;
    Mock::given(method("GET"))
        .and(path("/opportunities/pipelines"))
        .and(query_param("locationId", LOC))
        .and(header("Authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw(fixture("pipelines.json"), "application/json"),
        )
        .expect(1)
        .mount(&app.ghl)
        .await;
    followers(
        &app,
        "POST",
        "cJAWDskpkJHbRbhAT7bs",
        &["bNl8QNGXhIQJLv8eeASQ"],
        201,
        1,
    )
    .await;
    let body: Value =
        serde_json::from_slice(&fixture("app-webhooks/OpportunityStageUpdate.json")).unwrap();
    let id = accepted(app.post_app(&body).await).await;
    app.drain().await;
    assert_eq!(app.event(id).await.status, EventStatus::Done);
    // The same stage again: not entered, no call; the pipelines stay cached.
    accepted(app.post_app(&body).await).await;
    app.drain().await;
    app.ghl.verify().await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_workflow_webhook_resolves_the_assignee_email_through_the_users_api() {
    let rules = "rules:\n  - name: enterprise\n    events: [Workflow]\n    when: {workflow: Hot leads, fields: {customData.team: enterprise}}\n    add: [bob, assigned_user]\n";
    let location = "t9Ww7bY1xJJ6ThFHZVPC";
    let app = spawn_with(Options {
        rules: rules.into(),
        location_tokens: vec![(location.into(), TOKEN.into())],
        ..Options::default()
    })
    .await;
    Mock::given(method("GET"))
        .and(path(format!("/locations/{location}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"location": {"id": location, "companyId": "Comp0000000000000001"}}),
        ))
        .expect(1)
        .mount(&app.ghl)
        .await;
    Mock::given(method("GET"))
        .and(path("/users/search"))
        .and(query_param("companyId", "Comp0000000000000001"))
        .and(query_param("locationId", location))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"users": [
            {"id": "OtherUser00000000001", "email": "other@example.com"},
            {"id": "RitaRepUserId0000001", "email": "Rita@Example.com"}], "count": 2})))
        .expect(1)
        .mount(&app.ghl)
        .await;
    followers(
        &app,
        "POST",
        "gxGfB9wxEy3anxbHB4nT",
        &[BOB, "RitaRepUserId0000001"],
        201,
        1,
    )
    .await;
    let body: Value =
        serde_json::from_slice(&fixture("workflow-webhooks/opportunity-stage.json")).unwrap();
    let id = accepted(app.post_workflow(&body).await).await;
    app.drain().await;
    assert_eq!(app.event(id).await.status, EventStatus::Done);
    app.ghl.verify().await;
    app.shutdown().await;
}

/// A field target holding an email: the user is looked up as a workflow assignee is, then
/// follows; one lookup serves the next webhook naming the same email.
#[tokio::test]
async fn a_field_target_with_an_email_is_looked_up_through_the_users_api() {
    let rules = "rules:\n  - name: csm\n    add: [{ field: customFields.CsmFieldId0000000001 }]\n";
    let app = spawn_with(Options {
        rules: rules.into(),
        location_tokens: vec![(LOC.into(), TOKEN.into())],
        ..Options::default()
    })
    .await;
    Mock::given(method("GET"))
        .and(path(format!("/locations/{LOC}")))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(
                json!({"location": {"id": LOC, "companyId": "Comp0000000000000001"}}),
            ),
        )
        .expect(1)
        .mount(&app.ghl)
        .await;
    Mock::given(method("GET"))
        .and(path("/users/search"))
        .and(query_param("locationId", LOC))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"users": [
            {"id": "RitaRepUserId0000001", "email": "Rita@Example.com"}], "count": 1})))
        .expect(1)
        .mount(&app.ghl)
        .await;
    for contact in ["c1", "c2"] {
        followers(&app, "POST", contact, &["RitaRepUserId0000001"], 201, 1).await;
        let field = json!([{"id": "CsmFieldId0000000001", "value": "rita@example.com"}]);
        let body = contact_event("ContactCreate", contact, json!({ "customFields": field }));
        let id = accepted(app.post_app(&body).await).await;
        app.drain().await;
        assert_eq!(app.event(id).await.status, EventStatus::Done);
    }
    app.ghl.verify().await;
    app.shutdown().await;
}

#[tokio::test]
async fn bad_or_missing_authentication_is_401_and_stores_nothing() {
    let app = spawn_app(SOURCE_RULE).await;
    let body = contact_event("ContactCreate", "c1", json!({"source": "fb-x"})).to_string();
    let post = |url: &str| {
        app.http
            .post(format!("{}{url}", app.base))
            .body(body.clone())
    };
    let cases = [
        (
            "bad signature",
            post("/webhooks/ghl").header("X-GHL-Signature", sign(b"another body")),
        ),
        (
            "garbage signature",
            post("/webhooks/ghl").header("X-GHL-Signature", "not base64!"),
        ),
        ("no signature", post("/webhooks/ghl")),
        (
            "wrong secret header",
            post("/webhooks/ghl").header("X-Webhook-Secret", "nope"),
        ),
        ("workflow without secret", post("/webhooks/workflow")),
        (
            "workflow wrong secret",
            post("/webhooks/workflow?secret=nope"),
        ),
        (
            "ed25519 is not accepted for workflows",
            post("/webhooks/workflow").header("X-GHL-Signature", sign(body.as_bytes())),
        ),
    ];
    for (name, request) in cases {
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 401, "{name}");
        let answer: Value = r.json().await.unwrap();
        assert!(
            answer["error"]
                .as_str()
                .is_some_and(|e| !e.contains(SECRET)),
            "{name}: {answer}"
        );
    }
    let mut stale = post("/webhooks/ghl");
    for (k, v) in standard_webhooks(body.as_bytes(), now_secs() - 600) {
        stale = stale.header(k, v);
    }
    assert_eq!(
        stale.send().await.unwrap().status(),
        401,
        "stale Standard Webhooks timestamp"
    );
    assert_eq!(app.store().pending().await.unwrap(), 0);
    assert!(
        app.store().event(1).await.unwrap().is_none(),
        "nothing stored"
    );
    assert!(calls(&app).await.is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn shared_secret_header_and_standard_webhooks_signatures_are_accepted() {
    let app = spawn_app(SOURCE_RULE).await;
    let body = contact_event("ContactCreate", "c1", json!({})).to_string();
    let r = app
        .http
        .post(format!("{}/webhooks/ghl", app.base))
        .header("X-Webhook-Secret", SECRET)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let request_id = r
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert!(
        request_id.is_some_and(|id| id.starts_with("af-")),
        "every answer carries X-Request-Id"
    );
    accepted(r).await;
    let mut signed = app
        .http
        .post(format!("{}/webhooks/ghl", app.base))
        .body(body.clone());
    for (k, v) in standard_webhooks(body.as_bytes(), now_secs()) {
        signed = signed.header(k, v);
    }
    accepted(signed.send().await.unwrap()).await;
    app.shutdown().await;
}

#[tokio::test]
async fn malformed_bodies_are_400_and_oversized_ones_413() {
    let app = spawn_app(SOURCE_RULE).await;
    let send = |body: Vec<u8>| {
        let sig = sign(&body);
        app.http
            .post(format!("{}/webhooks/ghl", app.base))
            .header("X-GHL-Signature", sig)
            .body(body)
            .send()
    };
    let r = send(b"{not json".to_vec()).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = send(br#"{"type":"ContactCreate","locationId":"L"}"#.to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "missing field `id`"
    );
    let big =
        json!({"type": "ContactCreate", "locationId": "L", "id": "c", "x": "a".repeat(300 * 1024)});
    let r = send(big.to_string().into_bytes()).await.unwrap();
    assert_eq!(r.status(), 413);
    let r = app.post_workflow(&json!({"contact_id": "c"})).await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "missing field `location.id`"
    );
    assert_eq!(app.store().pending().await.unwrap(), 0);
    assert!(
        app.store().event(1).await.unwrap().is_none(),
        "nothing stored"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn unsupported_event_types_are_ignored_and_not_stored() {
    let app = spawn_app(SOURCE_RULE).await;
    // An install outside app mode is ignored too.
    for name in ["UserCreate-1", "AppInstall-1"] {
        let body = fixture(&format!("app-webhooks/{name}.json"));
        let r = app.post_app(&serde_json::from_slice(&body).unwrap()).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap()["status"], "ignored");
    }
    assert!(app.store().event(1).await.unwrap().is_none());
    app.shutdown().await;
}

#[tokio::test]
async fn a_repeated_webhook_id_is_a_duplicate_and_makes_one_call() {
    let app = spawn_app(SOURCE_RULE).await;
    followers(&app, "POST", "c1", &[ALICE], 201, 1).await;
    let body = contact_event(
        "ContactCreate",
        "c1",
        json!({"source": "fb-x", "webhookId": "wh-1"}),
    );
    accepted(app.post_app(&body).await).await;
    let r = app.post_app(&body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"status": "duplicate"})
    );
    app.drain().await;
    app.ghl.verify().await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_429_is_retried_and_then_done() {
    let app = spawn_app(SOURCE_RULE).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "0"))
        .up_to_n_times(1)
        .expect(1)
        .mount(&app.ghl)
        .await;
    followers(&app, "POST", "c1", &[ALICE], 201, 1).await;
    let id = fb_lead(&app).await;
    app.drain().await;
    let e = app.event(id).await;
    assert_eq!((e.status, e.attempts), (EventStatus::Done, 2));
    let outcomes: Vec<String> = app
        .decisions(id)
        .await
        .into_iter()
        .map(|d| d.outcome.to_string())
        .collect();
    assert_eq!(outcomes, ["retry", "done"]);
    app.ghl.verify().await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_422_fails_with_the_reason_and_is_not_retried() {
    let app = spawn_app(SOURCE_RULE).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(422).set_body_json(json!({"statusCode": 422, "message": ["followers must be valid user ids"], "error": "Unprocessable Entity"})))
        .expect(1)
        .mount(&app.ghl)
        .await;
    let id = fb_lead(&app).await;
    app.drain().await;
    let e = app.event(id).await;
    assert_eq!(e.status, EventStatus::Failed);
    assert_eq!(
        e.last_error.as_deref(),
        Some("GoHighLevel answered 422: followers must be valid user ids")
    );
    app.ghl.verify().await;
    app.shutdown().await;
}

#[tokio::test]
async fn persistent_5xx_gives_up_after_the_last_attempt() {
    let app = spawn_app(SOURCE_RULE).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .expect(4)
        .mount(&app.ghl)
        .await;
    let id = fb_lead(&app).await;
    app.drain().await;
    let e = app.event(id).await;
    assert_eq!(e.status, EventStatus::Failed);
    assert!(
        e.last_error
            .as_deref()
            .is_some_and(|m| m.starts_with("gave up after 4 attempts: GoHighLevel answered 503")),
        "{e:?}"
    );
    app.ghl.verify().await;
    app.shutdown().await;
}

#[tokio::test]
async fn without_a_token_the_service_runs_dry_and_records_the_calls_it_would_make() {
    let app = spawn_with(Options {
        rules: SOURCE_RULE.into(),
        token: false,
        dry_run: None,
        ..Options::default()
    })
    .await;
    let id = fb_lead(&app).await;
    app.drain().await;
    let d = app.decisions(id).await;
    assert!(d[0].dry_run);
    assert_eq!(d[0].calls[0].method, "POST");
    assert_eq!(d[0].calls[0].outcome, "dry-run");
    assert!(
        app.ghl
            .received_requests()
            .await
            .unwrap_or_default()
            .is_empty()
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_location_without_a_token_fails_with_the_reason() {
    let app = spawn_with(Options {
        rules: SOURCE_RULE.into(),
        token: false,
        dry_run: Some(false),
        ..Options::default()
    })
    .await;
    let id = fb_lead(&app).await;
    app.drain().await;
    let e = app.event(id).await;
    assert_eq!(e.status, EventStatus::Failed);
    assert!(
        e.last_error
            .unwrap_or_default()
            .starts_with("no GoHighLevel token for location ve9EPM428h8vShlRW1KT")
    );
    app.shutdown().await;
}

#[tokio::test]
async fn once_shutdown_begins_intake_answers_429_with_retry_after_and_stores_nothing() {
    let app = spawn_app(SOURCE_RULE).await;
    assert_eq!(
        app.http
            .get(format!("{}/readyz", app.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.running.as_ref().unwrap().stop_intake();
    let r = app
        .post_app(&contact_event(
            "ContactCreate",
            "c1",
            json!({"source": "fb-x"}),
        ))
        .await;
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("30")
    );
    assert!(app.store().event(1).await.unwrap().is_none());
    let base = app.base.clone();
    let http = app.http.clone();
    app.shutdown().await;
    assert!(
        http.get(format!("{base}/healthz")).send().await.is_err(),
        "the listener is closed after shutdown"
    );
}

#[tokio::test]
async fn the_healthcheck_command_passes_against_a_running_service() {
    let app = spawn_app(SOURCE_RULE).await;
    let url = format!("{}/healthz", app.base);
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_autofollow"))
        .args(["healthcheck", "--url", &url])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    app.shutdown().await;
}

#[tokio::test]
async fn when_the_store_cannot_commit_the_answer_is_429_never_5xx_and_later_200() {
    let faults = Faults::new(Fault::Inserts);
    let app = spawn_with(Options {
        rules: SOURCE_RULE.into(),
        faults: Some(faults.clone()),
        ..Options::default()
    })
    .await;
    followers(&app, "POST", "c1", &[ALICE], 201, 1).await;
    let body = contact_event(
        "ContactCreate",
        "c1",
        json!({"source": "fb-x", "webhookId": "wh-9"}),
    );
    let r = app.post_app(&body).await;
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("30")
    );
    faults.set(Fault::None);
    // GoHighLevel's retry of the same delivery is then accepted, not taken for a duplicate.
    accepted(app.post_app(&body).await).await;
    app.drain().await;
    app.ghl.verify().await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_slow_call_for_one_contact_does_not_hold_up_other_contacts() {
    let rules = "rules:\n  - name: all\n    add: [alice]\n";
    let app = spawn_app(rules).await;
    Mock::given(method("POST"))
        .and(path("/contacts/slow/followers"))
        .respond_with(ResponseTemplate::new(201).set_delay(Duration::from_secs(6)))
        .mount(&app.ghl)
        .await;
    app.ghl_accepts_the_rest().await;
    let slow = app.contact("ContactCreate", "slow", json!({})).await;
    // Let the worker pick up the slow event alone first.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while calls(&app).await.is_empty() {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut fast = Vec::new();
    for c in ["f1", "f2", "f3"] {
        fast.push(
            accepted(
                app.post_app(&contact_event("ContactCreate", c, json!({})))
                    .await,
            )
            .await,
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_millis(4000);
    loop {
        let mut done = 0;
        for id in &fast {
            done += usize::from(app.event(*id).await.status == EventStatus::Done);
        }
        if done == fast.len() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "other contacts waited for the slow call"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        app.event(slow).await.status,
        EventStatus::Pending,
        "the slow call is still in flight"
    );
    app.drain().await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_refused_token_parks_its_locations_events_without_burning_retries_until_a_replay() {
    let app = spawn_with(Options {
        rules: SOURCE_RULE.into(),
        location_tokens: vec![("OtherLocation0000001".into(), "pit-other".into())],
        ..Options::default()
    })
    .await;
    Mock::given(method("POST"))
        .and(path("/contacts/c1/followers"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(json!({"statusCode": 401, "message": "Invalid JWT"})),
        )
        .up_to_n_times(1)
        .mount(&app.ghl)
        .await;
    app.ghl_accepts_the_rest().await;
    let first = fb_lead(&app).await;
    // Wait until the 401 parked the location, then send more of its events and another's.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while app.decisions(first).await.is_empty() {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = app
        .contact("ContactCreate", "c2", json!({"source": "fb-y"}))
        .await;
    let other = accepted(
        app.post_app(&json!({"type": "ContactCreate", "locationId": "OtherLocation0000001", "id": "c3", "source": "fb-z"}))
            .await,
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while app.decisions(second).await.is_empty()
        || app.event(other).await.status != EventStatus::Done
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the other location must go on"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for id in [first, second] {
        let e = app.event(id).await;
        assert_eq!(
            e.status,
            EventStatus::Parked,
            "parked, not failed: {:?}",
            app.decisions(id).await
        );
        let d = app.decisions(id).await;
        assert_eq!(d.len(), 1, "parked once, not retried");
        assert_eq!(d[0].outcome.to_string(), "parked");
    }
    let to_c2 = |c: &str| format!("/contacts/{c}/followers");
    let made: Vec<String> = calls(&app).await.into_iter().map(|(_, p, _)| p).collect();
    assert!(
        !made.contains(&to_c2("c2")),
        "no call for a location whose token is refused: {made:?}"
    );

    let ready: Value = app.ready().await;
    assert_eq!(ready["tokens_refused"], json!([LOC]), "{ready}");

    // The operator fixes the token in GoHighLevel and replays the first event: the location resumes.
    assert_eq!(app.store().replay(&[first]).await.unwrap(), 1);
    app.drain().await;
    assert_eq!(app.event(first).await.status, EventStatus::Done);
    assert_eq!(
        app.event(second).await.status,
        EventStatus::Done,
        "parked events resume with it"
    );
    let ready: Value = app.ready().await;
    assert_eq!(ready["tokens_refused"], json!([]), "{ready}");
    app.shutdown().await;
}

#[tokio::test]
async fn pruning_deletes_finished_events_and_keeps_pending_ones_and_contact_state() {
    let rules = "rules:\n  - name: on\n    when: {tag_added: vip}\n    add: [carol]\n";
    let app = spawn_app(rules).await;
    Mock::given(method("POST"))
        .and(path("/contacts/c1/followers"))
        .respond_with(ResponseTemplate::new(201))
        .mount(&app.ghl)
        .await;
    // c2's location token is refused: its event stays pending (parked).
    Mock::given(method("POST"))
        .and(path("/contacts/c2/followers"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&app.ghl)
        .await;
    let done = app
        .contact(
            "ContactTagUpdate",
            "c1",
            json!({"tags": ["vip"], "webhookId": "w1"}),
        )
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while app.event(done).await.status != EventStatus::Done {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let other_location =
        json!({"type": "ContactTagUpdate", "locationId": "L2", "id": "c2", "tags": ["vip"]});
    let pending = accepted(app.post_app(&other_location).await).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while app.decisions(pending).await.is_empty() {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let future = std::time::SystemTime::now() + Duration::from_secs(1);
    assert_eq!(app.store().prune(future, Duration::ZERO).await.unwrap(), 1);
    assert!(app.store().event(done).await.unwrap().is_none());
    assert!(app.decisions(done).await.is_empty());
    assert!(
        app.store().event(pending).await.unwrap().is_some(),
        "unfinished work is never pruned"
    );
    // The contact's state survives: the same tags again add nobody.
    app.contact(
        "ContactTagUpdate",
        "c1",
        json!({"tags": ["vip"], "webhookId": "w1"}),
    )
    .await;
    let posts = |calls: Vec<(String, String, Value)>| {
        calls
            .iter()
            .filter(|(_, p, _)| p == "/contacts/c1/followers")
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while app
        .store()
        .list_events(&Default::default())
        .await
        .unwrap()
        .iter()
        .any(|e| e.event.contact_id == "c1" && e.event.status == EventStatus::Pending)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            app.store().list_events(&Default::default()).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        posts(calls(&app).await),
        1,
        "state kept: vip was not added again"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_fresh_follower_list_spares_calls_that_would_change_nothing() {
    let rules = "rules:\n  - name: vip\n    when: {has_tag: vip}\n    add: [carol]\n  - name: not-bob\n    remove: [bob]\n";
    let app = spawn_app(rules).await;
    // GoHighLevel answers with the contact's full list: carol follows, bob does not.
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!({"followers": [CAROL], "followersAdded": [CAROL]})),
        )
        .expect(1)
        .mount(&app.ghl)
        .await;
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"followers": [CAROL]})))
        .expect(1)
        .mount(&app.ghl)
        .await;
    app.contact("ContactTagUpdate", "c1", json!({"tags": ["vip"]}))
        .await;
    app.drain().await;
    // The same again within the freshness window: carol already follows, bob already does not.
    let id = app
        .contact("ContactUpdate", "c1", json!({"tags": ["vip"]}))
        .await;
    app.drain().await;
    let d = app.decisions(id).await;
    assert_eq!(
        d[0].plan.summary(),
        "add: carol; remove: bob",
        "the plan is unchanged"
    );
    assert!(
        d[0].calls.is_empty(),
        "but no call was needed: {:?}",
        d[0].calls
    );
    app.ghl.verify().await;
    app.shutdown().await;
}

/// The follower list a call's answer gives is remembered even when the group does not end
/// (here its second call fails and is retried): written at once under the lease, not left
/// for a finish that does not come.
#[tokio::test]
async fn the_list_a_call_returned_is_remembered_when_the_group_is_retried() {
    let rules = "rules:\n  - name: vip\n    add: [carol]\n  - name: not-bob\n    remove: [bob]\n";
    let app = spawn_app(rules).await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!({"followers": [CAROL, BOB], "followersAdded": [CAROL]})),
        )
        .mount(&app.ghl)
        .await;
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&app.ghl)
        .await;
    let id = app.contact("ContactCreate", "c1", json!({})).await;
    app.drain().await;
    let d = app.decisions(id).await;
    assert_eq!(d[0].outcome.to_string(), "retry", "{d:?}");
    let known = app
        .store()
        .known_followers(
            &autofollow::model::ids::LocationId::parse(LOCATION).unwrap(),
            &autofollow::model::ids::ContactId::parse("c1").unwrap(),
            std::time::SystemTime::now() - Duration::from_secs(60),
        )
        .await
        .unwrap();
    let ids = |v: &[&str]| {
        v.iter()
            .map(|u| autofollow::model::ids::UserId::parse(u).unwrap())
            .collect()
    };
    assert_eq!(known, Some(ids(&[CAROL, BOB])));
    app.shutdown().await;
}

/// A retried event does not trust the follower list on record: an attempt that made calls
/// may have ended (the process died, the lease was lost) before their answers were recorded.
#[tokio::test]
async fn a_retried_event_does_not_trust_the_follower_list_on_record() {
    let app = spawn_app("rules:\n  - name: both\n    add: [alice, carol]\n").await;
    // On record, fresh: carol already follows.
    app.store()
        .set_known_followers(
            &autofollow::model::ids::LocationId::parse("ve9EPM428h8vShlRW1KT").unwrap(),
            &autofollow::model::ids::ContactId::parse("c1").unwrap(),
            &[autofollow::model::ids::UserId::parse(CAROL).unwrap()],
            None,
        )
        .await
        .unwrap();
    app.ghl_fails_the_first_post().await;
    app.ghl_accepts_the_rest().await;
    let id = app.contact("ContactCreate", "c1", json!({})).await;
    app.drain().await;
    let bodies: Vec<Value> = app
        .ghl
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert_eq!(
        bodies[0]["followers"],
        json!([ALICE]),
        "first try: the list on record spares carol"
    );
    assert_eq!(
        bodies[1]["followers"],
        json!([ALICE, CAROL]),
        "the retry asks for both"
    );
    assert_eq!(app.decisions(id).await.len(), 2);
    app.shutdown().await;
}

/// A contact's events that failed together are retried together, at one time: each drawing
/// its own jittered time held the contact back until the latest of them (it waits while any
/// of its newer events does).
#[tokio::test]
async fn a_group_that_failed_is_retried_at_one_time() {
    let app = spawn_with(Options {
        rules: "rules:\n  - name: all\n    add: [alice]\n".into(),
        settle_delay: "300ms".into(),
        ..Options::default()
    })
    .await;
    app.ghl_fails_the_first_post().await;
    app.ghl_accepts_the_rest().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            app.contact("ContactTagUpdate", "c1", json!({"tags": [format!("t{i}")]}))
                .await,
        );
    }
    app.drain().await;
    for id in &ids {
        let outcomes: Vec<String> = app
            .decisions(*id)
            .await
            .into_iter()
            .map(|d| d.outcome.to_string())
            .collect();
        assert_eq!(outcomes, ["retry", "done"], "event {id}");
    }
    let pool = sqlx::SqlitePool::connect(&app.database_url).await.unwrap();
    let times: Vec<i64> =
        sqlx::query_scalar("SELECT DISTINCT available_at FROM events WHERE contact_id = 'c1'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(times.len(), 1, "one retry time for the group: {times:?}");
    app.shutdown().await;
}

//! The admin API: off without `AUTOFOLLOW_ADMIN_TOKEN`, 401 without the bearer token, and
//! the same list / replay / history / explain as the command line.

use crate::common;
use autofollow::model::record::EventStatus;
use common::service::*;
use serde_json::{Value, json};

const ADMIN: &str = "admin-test-token";
const RULES: &str = "rules:\n  - name: fb\n    when: {source: 'fb-*'}\n    add: [alice]\n";

async fn admin_app() -> TestApp {
    spawn_with(Options {
        rules: RULES.into(),
        admin_token: Some(ADMIN.into()),
        ..Options::default()
    })
    .await
}

async fn call(
    app: &TestApp,
    verb: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = app
        .http
        .request(verb, format!("{}{path}", app.admin))
        .bearer_auth(ADMIN);
    if let Some(b) = body {
        r = r.body(b.to_string());
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn without_the_variable_the_admin_api_is_off() {
    let app = spawn_app(RULES).await;
    let r = app
        .http
        .get(format!("{}/admin/events", app.admin))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    app.shutdown().await;
}

#[tokio::test]
async fn every_admin_route_needs_the_bearer_token_and_only_the_admin_listener_serves_it() {
    let app = admin_app().await;
    for (verb, path) in [
        (reqwest::Method::GET, "/admin/events"),
        (reqwest::Method::POST, "/admin/events/1/replay"),
        (reqwest::Method::POST, "/admin/replay?status=failed"),
        (reqwest::Method::GET, "/admin/contacts/c1/history"),
        (reqwest::Method::DELETE, "/admin/contacts/c1"),
        (reqwest::Method::POST, "/admin/explain"),
        (reqwest::Method::POST, "/admin/reload"),
        (reqwest::Method::GET, "/admin/installations"),
        (reqwest::Method::POST, "/admin/reapply?dry_run=true"),
        (reqwest::Method::POST, "/admin/undo?rule=fb"),
        (reqwest::Method::GET, "/admin/backfills"),
        (reqwest::Method::POST, "/admin/simulate"),
        (reqwest::Method::POST, "/admin/backfills?location=L1"),
        (reqwest::Method::GET, "/admin/pools"),
        (reqwest::Method::POST, "/admin/away"),
        (reqwest::Method::DELETE, "/admin/away/alice"),
        (
            reqwest::Method::GET,
            "/admin/contacts/c1/followers?location=L1",
        ),
    ] {
        let none = app
            .http
            .request(verb.clone(), format!("{}{path}", app.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(none.status(), 401, "{path} without a token");
        let wrong = app
            .http
            .request(verb.clone(), format!("{}{path}", app.admin))
            .bearer_auth("nope")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path} with a wrong token");
        let public = app
            .http
            .request(verb, format!("{}{path}", app.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(public.status(), 404, "{path} on the public listener");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn operators_list_replay_and_explain_over_http() {
    let app = admin_app().await;
    app.ghl_refuses_the_first_post().await;
    app.ghl_accepts_the_rest().await;
    let body = json!({"type": "ContactCreate", "locationId": "L1", "id": "c1", "source": "fb-x"});
    let id = accepted(app.post_app(&body).await).await;
    app.drain().await;
    assert_eq!(app.event(id).await.status, EventStatus::Failed);

    let (status, failed) = call(
        &app,
        reqwest::Method::GET,
        "/admin/events?status=failed&since=1h",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(failed.as_array().map(Vec::len), Some(1));
    assert_eq!(
        failed[0]["last_error"],
        "GoHighLevel answered 422: bad follower"
    );
    let (status, _) = call(
        &app,
        reqwest::Method::GET,
        "/admin/events?status=lost",
        None,
    )
    .await;
    assert_eq!(status, 400);

    let (status, queued) = call(
        &app,
        reqwest::Method::POST,
        "/admin/replay?status=failed&since=24h",
        None,
    )
    .await;
    assert_eq!((status, queued), (200, json!({"queued": 1})));
    app.drain().await;
    assert_eq!(app.event(id).await.status, EventStatus::Done);
    let (status, _) = call(&app, reqwest::Method::POST, "/admin/replay", None).await;
    assert_eq!(status, 400, "replaying everything needs an explicit status");

    let (status, queued) = call(
        &app,
        reqwest::Method::POST,
        &format!("/admin/events/{id}/replay"),
        None,
    )
    .await;
    assert_eq!((status, queued), (200, json!({"queued": 1})));
    app.drain().await;
    let (status, _) = call(
        &app,
        reqwest::Method::POST,
        "/admin/events/999/replay",
        None,
    )
    .await;
    assert_eq!(status, 404);

    let (status, history) = call(
        &app,
        reqwest::Method::GET,
        "/admin/contacts/c1/history",
        None,
    )
    .await;
    assert_eq!(status, 200);
    let outcomes: Vec<&str> = history[0]["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, ["failed", "done", "done"]);

    let (status, explained) = call(&app, reqwest::Method::POST, "/admin/explain", Some(body)).await;
    assert_eq!(status, 200);
    assert_eq!(explained["summary"], "add: alice");
    assert_eq!(explained["rules"][0]["outcome"], "matched");
    let (status, error) = call(
        &app,
        reqwest::Method::POST,
        "/admin/explain",
        Some(json!({"type": "ContactCreate"})),
    )
    .await;
    assert_eq!(
        (status, error["error"].as_str()),
        (400, Some("missing field `locationId`"))
    );
    assert_eq!(
        app.store().pending().await.unwrap(),
        0,
        "explain stores nothing"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_reload_applies_a_valid_edit_and_rejects_an_invalid_one_keeping_the_old_rules() {
    let app = admin_app().await;
    app.ghl_accepts_the_rest().await;
    let users = "users:\n  alice: 9hTnVvSr1Q2ZyE5kHfXm\n  bob: 4kLmPq7Rt2WvXy9ZaBcD\n";
    let before: Value = app.ready().await;

    // A valid edit: facebook leads now go to bob.
    std::fs::write(
        &app.rules_file,
        format!("{users}rules:\n  - name: fb\n    when: {{source: 'fb-*'}}\n    add: [bob]\n"),
    )
    .unwrap();
    let (status, answer) = call(&app, reqwest::Method::POST, "/admin/reload", None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "reloaded");
    assert_ne!(answer["version"], before["rules"]["version"]);
    let lead = json!({"type": "ContactCreate", "locationId": "L1", "id": "c1", "source": "fb-x"});
    let id = accepted(app.post_app(&lead).await).await;
    app.drain().await;
    let d = app.decisions(id).await;
    assert_eq!(d[0].plan.summary(), "add: bob");
    assert_eq!(d[0].rules_version, answer["version"].as_str().unwrap());

    // An invalid edit: rejected with positions, the previous rules still decide.
    std::fs::write(
        &app.rules_file,
        format!("{users}rules:\n  - name: fb\n    when: {{status: closed}}\n    add: [bob]\n"),
    )
    .unwrap();
    let (status, rejected) = call(&app, reqwest::Method::POST, "/admin/reload", None).await;
    assert_eq!(status, 422, "{rejected}");
    assert!(
        rejected["errors"][0]
            .as_str()
            .unwrap()
            .contains("rules.yaml:6:20: error: invalid status `closed`"),
        "{rejected}"
    );
    let ready: Value = app.ready().await;
    assert_eq!(
        ready["rules"]["version"], answer["version"],
        "the valid set stays in force"
    );
    assert!(
        ready["rules"]["last_error"]
            .as_str()
            .unwrap()
            .contains("invalid status"),
        "{ready}"
    );
    let id = accepted(
        app.post_app(
            &json!({"type": "ContactCreate", "locationId": "L1", "id": "c2", "source": "fb-y"}),
        )
        .await,
    )
    .await;
    app.drain().await;
    assert_eq!(app.decisions(id).await[0].plan.summary(), "add: bob");
    app.shutdown().await;
}

/// Away periods over HTTP: set for an alias, refused with a bad date, shown under the pool
/// in `GET /admin/pools` with the file's, and cleared.
#[tokio::test]
async fn away_periods_are_set_shown_with_the_pools_and_cleared_over_http() {
    let rules = "pools:\n  sales:\n    members: [alice, bob]\n    away: { alice: [\"2026-12-24\", \"2027-01-02\"] }\nrules:\n  - name: deal\n    add: [{ pool: sales }]\n";
    let app = spawn_with(Options {
        rules: rules.into(),
        admin_token: Some(ADMIN.into()),
        ..Options::default()
    })
    .await;
    let away = |body: Value| {
        let request = app.http.post(format!("{}/admin/away", app.admin));
        request.bearer_auth(ADMIN).json(&body).send()
    };
    let set = away(json!({"user": "bob", "from": "2026-12-01", "to": "2026-12-03"}))
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    let bob = common::BOB;
    assert_eq!(
        set.json::<Value>().await.unwrap(),
        json!({"away": {"user": bob, "from": "2026-12-01", "to": "2026-12-03"}})
    );
    let bad = away(json!({"user": "bob", "from": "2026-12-41", "to": "2026-12-03"}))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let nobody = away(json!({"user": "no body", "from": "2026-12-01", "to": "2026-12-03"}))
        .await
        .unwrap();
    assert_eq!(nobody.status(), 400);
    let (status, pools) = call(&app, reqwest::Method::GET, "/admin/pools", None).await;
    assert_eq!(status, 200);
    let sales = &pools["pools"][0];
    assert_eq!(sales["name"], "sales");
    assert_eq!(
        sales["members"][1],
        json!({"name": "bob", "user": bob, "weight": 1})
    );
    assert_eq!(
        sales["away"],
        json!([
            {"user": common::ALICE, "from": "2026-12-24", "to": "2027-01-02", "source": "rules"},
            {"user": bob, "from": "2026-12-01", "to": "2026-12-03", "source": "set"}
        ])
    );
    let (status, cleared) = call(&app, reqwest::Method::DELETE, "/admin/away/bob", None).await;
    assert_eq!((status, cleared), (200, json!({"cleared": 1})));
    app.shutdown().await;
}

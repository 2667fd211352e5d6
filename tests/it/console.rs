//! The web console over HTTP: the login and its session cookie, the bearer token, CSRF on
//! every form that changes something, a hostile webhook body shown as text, dead letters
//! replayed after a confirmation (GoHighLevel then called), and the explain playground.

use crate::common;
use autofollow::model::record::EventStatus;
use common::service::*;
use serde_json::json;

const ADMIN: &str = "admin-test-token";
const RULES: &str = "rules:\n  - name: fb\n    when: {source: 'fb-*'}\n    add: [alice]\n";

async fn console_app() -> TestApp {
    spawn_with(Options {
        rules: RULES.into(),
        admin_token: Some(ADMIN.into()),
        ..Options::default()
    })
    .await
}

/// A client that keeps no cookies and follows no redirect: each request says what it sends.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Logs in; the session cookie (`af_console=…`).
async fn login(app: &TestApp) -> String {
    let r = client()
        .post(format!("{}/login", app.admin))
        .form(&[("token", ADMIN), ("next", "/events")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/events");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attribute in [
        "HttpOnly",
        "SameSite=Strict",
        "Secure",
        "Path=/",
        "Max-Age=28800",
    ] {
        assert!(set.contains(attribute), "{attribute} in {set}");
    }
    set.split(';').next().unwrap().to_owned()
}

async fn get(app: &TestApp, cookie: &str, path: &str) -> (u16, String) {
    let r = client()
        .get(format!("{}{path}", app.admin))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn post(app: &TestApp, cookie: &str, path: &str, form: &[(&str, &str)]) -> (u16, String) {
    let r = client()
        .post(format!("{}{path}", app.admin))
        .header("cookie", cookie)
        .form(form)
        .send()
        .await
        .unwrap();
    let location = r
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_owned());
    let status = r.status().as_u16();
    (status, location.unwrap_or(r.text().await.unwrap()))
}

/// The CSRF token a page's forms carry.
fn csrf(page: &str) -> String {
    let at = page
        .find(r#"name="csrf" value=""#)
        .expect("a form with a CSRF token");
    let rest = &page[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

#[tokio::test]
async fn pages_need_a_login_or_the_bearer_token_and_the_session_cookie_is_locked_down() {
    let app = console_app().await;
    let r = client()
        .get(format!("{}/events?status=failed", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(
        r.headers()["location"],
        "/login?next=/events%3Fstatus%3Dfailed"
    );
    let wrong = client()
        .post(format!("{}/login", app.admin))
        .form(&[("token", "not-the-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let offsite = client()
        .post(format!("{}/login", app.admin))
        .form(&[("token", ADMIN), ("next", "//evil.example/")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        offsite.headers()["location"],
        "/",
        "never sent to another site"
    );
    let cookie = login(&app).await;
    let (status, page) = get(&app, &cookie, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<h1>Overview</h1>"), "{page}");
    assert!(!page.contains(ADMIN), "the token is never rendered");
    let forged = cookie.replacen(|c: char| c.is_ascii_digit(), "9", 1);
    let (status, _) = get(&app, &forged, "/").await;
    assert_eq!(status, 303, "a changed cookie is no session");
    let bearer = client()
        .get(format!("{}/rules", app.admin))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    let headers = bearer.headers();
    assert_eq!(headers["x-frame-options"], "DENY");
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    // Not on the public listener.
    let public = client()
        .get(format!("{}/events", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404);
    app.shutdown().await;
}

#[tokio::test]
async fn a_hostile_body_is_shown_as_text_and_explained() {
    let app = console_app().await;
    app.ghl_accepts_the_rest().await;
    let hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>";
    let body = json!({"type": "ContactCreate", "locationId": "L1", "id": "c1", "source": "fb-ads", "firstName": hostile});
    let id = accepted(app.post_app(&body).await).await;
    app.drain().await;
    let cookie = login(&app).await;
    for path in [
        format!("/events/{id}"),
        "/events".to_owned(),
        "/contacts/c1".to_owned(),
    ] {
        let (status, page) = get(&app, &cookie, &path).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            !page.contains("<script>alert") && !page.contains("<img src=x"),
            "{path}: {page}"
        );
    }
    let (_, page) = get(&app, &cookie, &format!("/events/{id}")).await;
    assert!(
        page.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
        "{page}"
    );
    assert!(
        page.contains("rule <strong>fb</strong>"),
        "the explanation: {page}"
    );
    assert!(
        page.contains("POST /contacts/c1/followers"),
        "the call: {page}"
    );
    let (_, page) = get(&app, &cookie, "/contacts/c1").await;
    assert!(page.contains("rule fb (event"), "the ledger: {page}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_dead_letter_is_replayed_after_a_confirmation_and_only_with_the_csrf_token() {
    let app = console_app().await;
    app.ghl_refuses_the_first_post().await;
    app.ghl_accepts_the_rest().await;
    let body = json!({"type": "ContactCreate", "locationId": "L1", "id": "c9", "source": "fb-x"});
    let id = accepted(app.post_app(&body).await).await;
    app.drain().await;
    assert_eq!(app.event(id).await.status, EventStatus::Failed);
    let cookie = login(&app).await;
    let (_, page) = get(&app, &cookie, "/dead").await;
    assert!(
        page.contains("GoHighLevel answered 422: bad follower"),
        "{page}"
    );
    let token = csrf(&page);
    let id_text = id.to_string();
    let ids = ("ids", id_text.as_str());
    for bad in [vec![ids], vec![ids, ("csrf", "0000")]] {
        let (status, _) = post(&app, &cookie, "/dead/replay", &bad).await;
        assert_eq!(status, 403, "{bad:?}");
    }
    let (status, confirm) = post(&app, &cookie, "/dead/replay", &[ids, ("csrf", &token)]).await;
    assert_eq!(status, 200);
    assert!(confirm.contains("Replay 1 event?"), "{confirm}");
    assert_eq!(
        app.event(id).await.status,
        EventStatus::Failed,
        "not before the confirmation"
    );
    let form = [ids, ("csrf", &token), ("confirm", "yes")];
    let (status, location) = post(&app, &cookie, "/dead/replay", &form).await;
    assert_eq!((status, location.as_str()), (303, "/dead?replayed=1"));
    app.wait_for(id, EventStatus::Done).await;
    let calls = app.followers_calls().await;
    assert_eq!(
        calls.len(),
        2,
        "the refused call, then the replayed one: {calls:?}"
    );
    assert_eq!(calls[1].1, "/contacts/c9/followers");
    app.shutdown().await;
}

#[tokio::test]
async fn the_explain_playground_explains_a_pasted_body_or_a_stored_event() {
    let app = console_app().await;
    let cookie = login(&app).await;
    let (_, page) = get(&app, &cookie, "/rules").await;
    assert!(
        page.contains("<strong>fb</strong>") && page.contains("add alice"),
        "{page}"
    );
    let token = csrf(&page);
    let pasted =
        r#"{"type": "ContactCreate", "locationId": "L1", "id": "c2", "source": "fb-lead"}"#;
    let form = [("csrf", token.as_str()), ("body", pasted)];
    let (status, page) = post(&app, &cookie, "/rules/explain", &form).await;
    assert_eq!(status, 200);
    assert!(page.contains("<strong>Plan:</strong> add: alice"), "{page}");
    assert!(
        page.contains("matched</span> rule <strong>fb</strong>"),
        "{page}"
    );
    let form = [("csrf", token.as_str()), ("event", "999")];
    let (_, page) = post(&app, &cookie, "/rules/explain", &form).await;
    assert!(page.contains("There is no event 999."), "{page}");
    let (status, _) = post(&app, &cookie, "/rules/explain", &[("body", pasted)]).await;
    assert_eq!(
        status, 403,
        "the playground's form needs its CSRF token too"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn without_an_admin_token_the_console_says_how_to_turn_it_on() {
    let app = spawn_app(RULES).await;
    let r = client()
        .get(format!("{}/", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("AUTOFOLLOW_ADMIN_TOKEN"));
    app.shutdown().await;
}

#[tokio::test]
async fn a_candidate_is_simulated_on_the_stored_history_from_the_rules_page() {
    let app = console_app().await;
    app.ghl_accepts_the_rest().await;
    let body = json!({"type": "ContactCreate", "locationId": "L1", "id": "c5", "source": "fb-ads"});
    accepted(app.post_app(&body).await).await;
    app.drain().await;
    let cookie = login(&app).await;
    let (_, page) = get(&app, &cookie, "/rules").await;
    let token = csrf(&page);
    let candidate = "users: {bob: 4kLmPq7Rt2WvXy9ZaBcD}\nrules:\n  - name: fb\n    when: {source: 'fb-*'}\n    add: [bob]\n";
    let form = [
        ("csrf", token.as_str()),
        ("candidate", candidate),
        ("since", "1h"),
    ];
    let (status, page) = post(&app, &cookie, "/rules/simulate", &form).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("<strong>1</strong> contacts would change"),
        "{page}"
    );
    assert!(
        page.contains("<td>fb</td><td><code>4kLmPq7Rt2WvXy9ZaBcD</code></td><td>1</td><td>0</td>"),
        "{page}"
    );
    let broken = [
        ("csrf", token.as_str()),
        ("candidate", "rules: [{name: x}]"),
    ];
    let (_, page) = post(&app, &cookie, "/rules/simulate", &broken).await;
    assert!(
        page.contains("The candidate was not simulated")
            && page.contains("neither `add` nor `remove`"),
        "{page}"
    );
    assert_eq!(
        app.followers_calls().await.len(),
        1,
        "a simulation calls nothing"
    );
    app.shutdown().await;
}

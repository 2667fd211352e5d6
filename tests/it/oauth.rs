//! App mode against the OAuth stand-in (`common::ghl_oauth`): install through the real
//! endpoints, tokens sealed at rest, refresh before expiry, one refresh for many callers and
//! for two replicas, a refused refresh parks the location until the app is installed again.

use std::sync::Arc;
use std::time::Duration;

use autofollow::access::OAuth;
use autofollow::ghl::oauth::{AppCredentials, OAuthClient};
use autofollow::model::record::EventStatus;
use autofollow::seal::Sealer;
use autofollow::store::{InstallState, Store};
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::common::ghl_oauth::{APP_ID, CLIENT_ID, CLIENT_SECRET, Grant, StandIn};
use crate::common::service::{AppMode, Options, TestApp, spawn_with};

use crate::common::service::LOCATION;

fn key() -> String {
    base64::engine::general_purpose::STANDARD.encode([42u8; 32])
}

fn app_mode(base: &str) -> AppMode {
    AppMode {
        ghl_base: base.to_owned(),
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        encryption_key: key(),
        app_id: Some(APP_ID.into()),
    }
}

/// The service in app mode against `ghl`, with one rule adding alice to every contact.
async fn app_with(ghl: &StandIn) -> TestApp {
    spawn_with(Options {
        rules: "rules:\n  - name: all\n    add: [alice]\n".into(),
        token: false,
        app: Some(app_mode(&ghl.serve().await)),
        ..Options::default()
    })
    .await
}

/// A callback as GoHighLevel's redirect after an install from the Marketplace (no `state`).
async fn callback(app: &TestApp, code: &str) -> u16 {
    let r = no_redirects()
        .get(format!("{}/oauth/callback", app.base))
        .query(&[("code", code)])
        .send()
        .await
        .unwrap();
    r.status().as_u16()
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_location_installs_through_the_callback_and_its_sealed_token_is_used() {
    let ghl = StandIn::new(Duration::from_secs(3600));
    let app = app_with(&ghl).await;
    let http = no_redirects();
    // /oauth/install: to the authorization page, with a state bound to a cookie.
    let r = http
        .get(format!("{}/oauth/install", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let to = reqwest::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(to.host_str(), Some("marketplace.gohighlevel.com"));
    let q: std::collections::HashMap<_, _> = to.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["redirect_uri"], "https://autofollow.test/oauth/callback");
    assert!(q["scope"].contains("contacts.write"));
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    let white = http
        .get(format!("{}/oauth/install?whitelabel=true", app.base))
        .send()
        .await
        .unwrap();
    let white = reqwest::Url::parse(white.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(white.host_str(), Some("marketplace.leadconnectorhq.com"));
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && cookie.contains("Secure")
    );
    let cookie = cookie.split(';').next().unwrap().to_owned();
    // A state that is not this service's, or from another browser, is refused.
    let code = ghl.code(Grant::Location(LOCATION.into()));
    for (state, cookie) in [("forged.state", cookie.as_str()), (q["state"].as_str(), "")] {
        let r = http
            .get(format!("{}/oauth/callback", app.base))
            .query(&[("code", code.as_str()), ("state", state)])
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
    }
    assert_eq!(app.store().installations().await.unwrap(), vec![]);
    // The right one installs.
    let r = http
        .get(format!("{}/oauth/callback", app.base))
        .query(&[("code", code.as_str()), ("state", q["state"].as_str())])
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let installed = app.store().installation(LOCATION).await.unwrap().unwrap();
    assert_eq!(installed.state, InstallState::Active);
    // Sealed at rest: no token the stand-in issued is in the database files.
    let issued: Vec<String> =
        ghl.with(|s| s.access.keys().chain(s.refresh.keys()).cloned().collect());
    let db = app.database_url.trim_start_matches("sqlite://").to_owned();
    let mut bytes = std::fs::read(&db).unwrap();
    bytes.extend(std::fs::read(format!("{db}-wal")).unwrap_or_default());
    let text = String::from_utf8_lossy(&bytes);
    for token in &issued {
        assert!(
            !text.contains(token.as_str()),
            "a token is stored in plaintext"
        );
    }
    // A webhook for the location is processed with the installation's token.
    app.contact("ContactCreate", "c1", json!({})).await;
    app.drain().await;
    let calls = ghl.with(|s| s.calls.clone());
    assert_eq!(
        calls,
        vec![(LOCATION.to_owned(), "c1".to_owned(), "POST".to_owned(), 201)]
    );
    app.shutdown().await;
}

/// Two "replicas" (two `OAuth` with their own names) on one store, each with many callers,
/// all asking for an expired token at once: one refresh, one new token for all.
async fn many_callers_and_two_replicas_make_one_refresh(store: Arc<dyn Store>) {
    let ghl = StandIn::new(Duration::from_secs(2));
    let base = ghl.serve().await;
    let sealer = Sealer::parse(&SecretString::from(key())).unwrap();
    let replica = |name: &str| {
        let app = AppCredentials {
            client_id: CLIENT_ID.into(),
            client_secret: SecretString::from(CLIENT_SECRET.to_owned()),
        };
        let client = OAuthClient::new(&base, Duration::from_secs(5), app).unwrap();
        Arc::new(OAuth::new(
            client,
            Arc::clone(&store),
            sealer.clone(),
            name,
            APP_ID.to_owned(),
            Duration::from_secs(5),
        ))
    };
    let (a, b) = (replica("a"), replica("b"));
    let code = ghl.code(Grant::Location(LOCATION.into()));
    let answer = a
        .client()
        .exchange(&code, "https://x/oauth/callback")
        .await
        .unwrap();
    assert_eq!(a.install(&answer).await.unwrap(), LOCATION);
    let first = a.token(LOCATION).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let mut callers = Vec::new();
    for i in 0..16 {
        let oauth = Arc::clone(if i % 2 == 0 { &a } else { &b });
        callers.push(tokio::spawn(async move { oauth.token(LOCATION).await }));
    }
    let mut tokens = std::collections::HashSet::new();
    for c in callers {
        let token = c.await.unwrap().unwrap();
        tokens.insert(token.secret.expose_secret().to_owned());
    }
    assert_eq!(ghl.with(|s| s.refreshes), 1, "one refresh");
    assert_eq!(tokens.len(), 1, "everyone got the new token");
    assert!(!tokens.contains(first.secret.expose_secret()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_callers_and_two_replicas_make_one_refresh_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    many_callers_and_two_replicas_make_one_refresh(autofollow::store::open(&url).await.unwrap())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_callers_and_two_replicas_make_one_refresh_postgres() {
    let Some(url) = crate::common::postgres_schema().await else {
        eprintln!("AUTOFOLLOW_TEST_DATABASE_URL is not set: skipped");
        return;
    };
    many_callers_and_two_replicas_make_one_refresh(autofollow::store::open(&url).await.unwrap())
        .await;
}

#[tokio::test]
async fn a_refused_refresh_parks_the_location_and_a_new_install_resumes_it() {
    let ghl = StandIn::new(Duration::from_secs(1));
    let app = app_with(&ghl).await;
    assert_eq!(
        callback(&app, &ghl.code(Grant::Location(LOCATION.into()))).await,
        200
    );
    // The refresh token is revoked (used elsewhere); the access token expires.
    ghl.with(|s| s.refresh.clear());
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let id = app.contact("ContactCreate", "c1", json!({})).await;
    // (Parked events count as waiting: the queue is not drained here.)
    app.wait_for(id, EventStatus::Parked).await;
    let found = app.store().installation(LOCATION).await.unwrap().unwrap();
    assert_eq!(found.state, InstallState::Reauthorize);
    assert!(found.problem.unwrap().contains("install the app again"));
    assert!(
        ghl.with(|s| s.calls.is_empty()),
        "nothing called without a token"
    );
    // Installing again resumes the parked work.
    assert_eq!(
        callback(&app, &ghl.code(Grant::Location(LOCATION.into()))).await,
        200
    );
    app.wait_for(id, EventStatus::Done).await;
    assert_eq!(ghl.with(|s| s.calls.len()), 1);
    app.shutdown().await;
}

/// An agency installs the app into two of its locations at once: each location's token is
/// got from the company token when its first webhook needs one, then kept.
#[tokio::test]
async fn a_company_install_gets_each_location_its_token_from_the_company_token() {
    let ghl = StandIn::new(Duration::from_secs(3600));
    let app = app_with(&ghl).await;
    let other = "otg8dTQqGLh3Q6iQI55w";
    let grant = Grant::Company("Co9".into(), vec![LOCATION.into(), other.into()]);
    assert_eq!(callback(&app, &ghl.code(grant)).await, 200);
    let ids: Vec<String> = app
        .store()
        .installations()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.tokens.id)
        .collect();
    assert_eq!(ids, ["Co9", other, LOCATION]);
    app.contact("ContactCreate", "c1", json!({})).await;
    app.contact("ContactCreate", "c2", json!({"locationId": other}))
        .await;
    app.drain().await;
    let mut calls = ghl.with(|s| s.calls.clone());
    calls.sort();
    let call = |l: &str, c: &str| (l.to_owned(), c.to_owned(), "POST".to_owned(), 201);
    assert_eq!(calls, vec![call(other, "c2"), call(LOCATION, "c1")]);
    assert_eq!(
        ghl.with(|s| s.location_tokens),
        2,
        "one location token each"
    );
    app.contact("ContactUpdate", "c3", json!({})).await;
    app.drain().await;
    assert_eq!(ghl.with(|s| s.location_tokens), 2, "kept while it is valid");
    app.shutdown().await;
}

/// The callback is open to anyone and each call costs a call to GoHighLevel: while a few
/// exchanges are in progress, further callbacks are answered 429 without one.
#[tokio::test]
async fn callbacks_beyond_a_few_at_once_are_answered_429_without_calling_gohighlevel() {
    let ghl = StandIn::new(Duration::from_secs(3600));
    ghl.with(|s| s.token_delay = Duration::from_millis(1_500));
    let app = Arc::new(app_with(&ghl).await);
    let mut calls = Vec::new();
    for i in 0..12 {
        let app = Arc::clone(&app);
        calls.push(tokio::spawn(async move {
            callback(&app, &format!("forged-{i}")).await
        }));
    }
    let mut statuses = Vec::new();
    for c in calls {
        statuses.push(c.await.unwrap());
    }
    let busy = statuses.iter().filter(|s| **s == 429).count();
    let refused = statuses.iter().filter(|s| **s == 400).count();
    let asked = ghl.with(|s| s.token_requests);
    let most = autofollow::web::state::EXCHANGES;
    assert_eq!(busy + refused, 12, "{statuses:?}");
    assert_eq!(
        asked, refused,
        "only the callbacks let through reached GoHighLevel"
    );
    assert!(asked <= most && busy >= 12 - most, "{statuses:?}");
    assert_eq!(app.store().installations().await.unwrap(), vec![]);
}

/// An `INSTALL` or `UNINSTALL` webhook of this app (signed as GoHighLevel signs).
fn app_change(kind: &str, company: Option<&str>, location: Option<&str>) -> serde_json::Value {
    let mut body = json!({"type": kind, "appId": APP_ID});
    if let Some(c) = company {
        body["companyId"] = json!(c);
    }
    if let Some(l) = location {
        body["locationId"] = json!(l);
    }
    body
}

async fn post_status(app: &TestApp, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let r = app.post_app(body).await;
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Only installed locations are served: an event for another location is answered `ignored`
/// and not stored, even signed, until the app is installed there.
#[tokio::test]
async fn events_of_locations_the_app_is_not_installed_in_are_ignored_and_not_stored() {
    let ghl = StandIn::new(Duration::from_secs(3600));
    let app = app_with(&ghl).await;
    let body = json!({"type": "ContactCreate", "locationId": LOCATION, "id": "c1"});
    let (status, answer) = post_status(&app, &body).await;
    assert_eq!(
        (status, &answer["status"]),
        (200, &json!("ignored")),
        "{answer}"
    );
    assert!(
        app.store().event(1).await.unwrap().is_none(),
        "nothing stored"
    );
    let code = ghl.code(Grant::Location(LOCATION.into()));
    assert_eq!(callback(&app, &code).await, 200);
    let (status, answer) = post_status(&app, &body).await;
    assert_eq!(
        (status, &answer["status"]),
        (200, &json!("accepted")),
        "{answer}"
    );
    app.shutdown().await;
}

/// An UNINSTALL deletes the location's tokens, ends its queued events without calling (they
/// stay in the history), and later events are ignored. Another app's webhook changes nothing.
#[tokio::test]
async fn an_uninstall_stops_the_locations_work_and_keeps_its_history() {
    let ghl = StandIn::new(Duration::from_secs(3600));
    // Events wait 2 s after arriving: the second one is still queued at the uninstall.
    let app = spawn_with(Options {
        rules: "rules:\n  - name: all\n    add: [alice]\n".into(),
        token: false,
        app: Some(app_mode(&ghl.serve().await)),
        settle_delay: "2s".into(),
        ..Options::default()
    })
    .await;
    assert_eq!(
        callback(&app, &ghl.code(Grant::Location(LOCATION.into()))).await,
        200
    );
    let done = app.contact("ContactCreate", "c1", json!({})).await;
    app.wait_for(done, EventStatus::Done).await;
    let queued = app.contact("ContactUpdate", "c2", json!({})).await;
    let mut other_app = app_change("UNINSTALL", None, Some(LOCATION));
    other_app["appId"] = json!("SomeOtherApp");
    let (status, answer) = post_status(&app, &other_app).await;
    assert_eq!(
        (status, &answer["status"]),
        (200, &json!("ignored")),
        "{answer}"
    );
    let installed = app.store().installation(LOCATION).await.unwrap().unwrap();
    assert_eq!(installed.state, InstallState::Active);

    let (status, answer) = post_status(&app, &app_change("UNINSTALL", None, Some(LOCATION))).await;
    assert_eq!(
        (status, &answer["status"]),
        (200, &json!("accepted")),
        "{answer}"
    );
    let gone = app.store().installation(LOCATION).await.unwrap().unwrap();
    assert_eq!(gone.state, InstallState::Uninstalled);
    assert!(gone.tokens.access_token.is_none() && gone.tokens.refresh_token.is_none());
    let ended = app.wait_for(queued, EventStatus::Skipped).await;
    assert!(ended.last_error.unwrap_or_default().contains("uninstalled"));
    assert_eq!(
        ghl.with(|s| s.calls.len()),
        1,
        "only the first event was called"
    );
    assert_eq!(
        app.event(done).await.status,
        EventStatus::Done,
        "history kept"
    );
    let (_, answer) = post_status(
        &app,
        &json!({"type": "ContactCreate", "locationId": LOCATION, "id": "c3"}),
    )
    .await;
    assert_eq!(answer["status"], "ignored");
    app.shutdown().await;
}

/// An agency installed the app: an INSTALL webhook for a further location of that company
/// records it (its token comes from the company's), and an agency UNINSTALL ends the company
/// and every location that used its token.
#[tokio::test]
async fn install_webhooks_add_a_companys_locations_and_an_agency_uninstall_ends_them() {
    let ghl = StandIn::new(Duration::from_secs(3600));
    let app = app_with(&ghl).await;
    let later = "otg8dTQqGLh3Q6iQI55w";
    let grant = Grant::Company("Co9".into(), vec![LOCATION.into()]);
    assert_eq!(callback(&app, &ghl.code(grant)).await, 200);
    let body = json!({"type": "ContactCreate", "locationId": later, "id": "c1"});
    assert_eq!(post_status(&app, &body).await.1["status"], "ignored");
    // Of a company not installed here: nothing is recorded.
    let stranger = app_change("INSTALL", Some("CoX"), Some("LocX"));
    assert_eq!(post_status(&app, &stranger).await.0, 200);
    assert!(app.store().installation("LocX").await.unwrap().is_none());

    let install = app_change("INSTALL", Some("Co9"), Some(later));
    let (status, answer) = post_status(&app, &install).await;
    assert_eq!(
        (status, &answer["status"]),
        (200, &json!("accepted")),
        "{answer}"
    );
    let id = accepted_id(&app, &body).await;
    app.drain().await;
    assert_eq!(app.event(id).await.status, EventStatus::Done);
    let call = (later.to_owned(), "c1".to_owned(), "POST".to_owned(), 201);
    assert_eq!(ghl.with(|s| s.calls.clone()), vec![call]);

    let (status, _) = post_status(&app, &app_change("UNINSTALL", Some("Co9"), None)).await;
    assert_eq!(status, 200);
    for id in ["Co9", LOCATION, later] {
        let found = app.store().installation(id).await.unwrap().unwrap();
        assert_eq!(found.state, InstallState::Uninstalled, "{id}");
    }
    app.shutdown().await;
}

async fn accepted_id(app: &TestApp, body: &serde_json::Value) -> i64 {
    crate::common::service::accepted(app.post_app(body).await).await
}

/// A refused refresh shows in the admin `/readyz`, the admin API and the metrics, naming the
/// installation and why, and never a token.
#[tokio::test]
async fn an_installation_needing_reauthorization_is_visible_to_operators() {
    let ghl = StandIn::new(Duration::from_secs(1));
    let mut options = Options {
        rules: "rules:\n  - name: all\n    add: [alice]\n".into(),
        token: false,
        app: Some(app_mode(&ghl.serve().await)),
        admin_token: Some("admin-token-0123456789".into()),
        ..Options::default()
    };
    options.settle_delay = "0".into();
    let app = spawn_with(options).await;
    assert_eq!(
        callback(&app, &ghl.code(Grant::Location(LOCATION.into()))).await,
        200
    );
    ghl.with(|s| s.refresh.clear());
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let id = app.contact("ContactCreate", "c1", json!({})).await;
    app.wait_for(id, EventStatus::Parked).await;
    let ready = app.ready().await;
    let access = &ready["access"];
    assert_eq!(access["installations"]["active"], 0, "{ready}");
    let reauthorize = &access["installations"]["reauthorize"][0];
    assert_eq!(reauthorize["id"], LOCATION, "{ready}");
    assert!(
        reauthorize["problem"]
            .as_str()
            .unwrap()
            .contains("install the app again")
    );
    let listed: serde_json::Value = app
        .http
        .get(format!("{}/admin/installations", app.admin))
        .bearer_auth("admin-token-0123456789")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["installations"][0]["state"], "reauthorize",
        "{listed}"
    );
    let metrics = app
        .http
        .get(format!("{}/metrics", app.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("autofollow_installations{state=\"reauthorize\"} 1"),
        "{metrics}"
    );
    let issued: Vec<String> =
        ghl.with(|s| s.access.keys().chain(s.refresh.keys()).cloned().collect());
    for text in [ready.to_string(), listed.to_string(), metrics] {
        assert!(
            !issued.iter().any(|t| text.contains(t.as_str())),
            "a token is shown"
        );
    }
    app.shutdown().await;
}

/// A bulk install into a company's locations may name none of them: the locations come from
/// `GET /oauth/installedLocations`, and each is served.
#[tokio::test]
async fn a_bulk_company_install_records_every_installed_location() {
    let ghl = StandIn::new(Duration::from_secs(3600));
    let other = "otg8dTQqGLh3Q6iQI55w";
    ghl.with(|s| {
        s.installed
            .insert("Co9".into(), vec![LOCATION.into(), other.into()])
    });
    let app = app_with(&ghl).await;
    let grant = Grant::Company("Co9".into(), vec![]);
    assert_eq!(callback(&app, &ghl.code(grant)).await, 200);
    let mut ids: Vec<String> = app
        .store()
        .installations()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.tokens.id)
        .collect();
    ids.sort();
    assert_eq!(ids, ["Co9", other, LOCATION]);
    let body = json!({"type": "ContactCreate", "locationId": other, "id": "c1"});
    let id = accepted_id(&app, &body).await;
    app.drain().await;
    assert_eq!(app.event(id).await.status, EventStatus::Done);
    app.shutdown().await;
}

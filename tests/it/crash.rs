//! The real binary, killed with SIGKILL after it acknowledged webhooks whose GoHighLevel calls
//! had not completed, loses nothing: restarted on the same database it makes every call.

use crate::common;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{Service, spawn};
use common::service::{SECRET, TOKEN, followed_contacts, sign};
use serde_json::{Value, json};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Starts `autofollow serve` and waits for the address it logs.
fn start(dir: &Path, ghl: &str) -> Service {
    start_with_token(dir, ghl, TOKEN)
}

fn start_with_token(dir: &Path, ghl: &str, token: &str) -> Service {
    let mut env = base_env(dir, ghl);
    env.push(("GHL_TOKEN", token.to_owned()));
    env.push(("GHL_LOCATION_ID", "L1".to_owned()));
    spawn(&env)
}

/// The rules and the SQLite store in `dir`, GoHighLevel at `ghl`.
fn base_env(dir: &Path, ghl: &str) -> Vec<(&'static str, String)> {
    let db = format!("sqlite://{}", dir.join("db/autofollow.db").display());
    vec![
        (
            "AUTOFOLLOW_RULES",
            dir.join("rules.yaml").display().to_string(),
        ),
        ("AUTOFOLLOW_DATABASE_URL", db),
        ("GHL_API_BASE_URL", ghl.to_owned()),
    ]
}

/// A temporary directory holding `rules.yaml`: one rule adding `user` to every contact.
fn rules_dir(user: &str) -> tempfile::TempDir {
    common::process::rules_dir(&format!("  - name: all\n    add: [{user}]\n"))
}

#[tokio::test]
async fn acknowledged_events_survive_sigkill_and_are_processed_after_restart() {
    let dir = rules_dir("alice");

    // First run: GoHighLevel hangs, so calls are in flight when the process dies.
    let slow = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_delay(Duration::from_secs(60)))
        .mount(&slow)
        .await;
    let mut first = start(dir.path(), &slow.uri());
    let http = reqwest::Client::new();
    let contacts: BTreeSet<String> = (0..5).map(|i| format!("contact{i}")).collect();
    for c in &contacts {
        let body = json!({"type": "ContactCreate", "locationId": "L1", "id": c}).to_string();
        let r = http
            .post(format!("{}/webhooks/ghl", first.base))
            .header("X-GHL-Signature", sign(body.as_bytes()))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "acknowledged");
    }
    let workflow = json!({"contact_id": "contact0", "location": {"id": "L1"}, "tags": "a"});
    let r = http
        .post(format!("{}/webhooks/workflow?secret={SECRET}", first.base))
        .json(&workflow)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(15);
    while slow
        .received_requests()
        .await
        .unwrap_or_default()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "no call started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();

    // Second run on the same database, GoHighLevel healthy: every acknowledged event resumes.
    let healthy = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201))
        .mount(&healthy)
        .await;
    let mut second = start(dir.path(), &healthy.uri());
    let deadline = Instant::now() + Duration::from_secs(20);
    while followed_contacts(&healthy).await != contacts {
        assert!(
            Instant::now() < deadline,
            "calls made after restart: {:?}",
            followed_contacts(&healthy).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // SIGTERM: a clean exit.
    let status = Command::new("kill")
        .args(["-TERM", &second.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = second.child.wait().unwrap();
    assert_eq!(exit.code(), Some(0), "graceful shutdown exits 0");

    // A workflow webhook carries the secret in its URL; neither it nor the token is logged.
    let logs = format!("{}{}", first.logs(), second.logs());
    assert!(logs.contains("webhook"), "the runs logged their webhooks");
    assert!(logs.contains("/webhooks/workflow"), "{logs}");
    assert!(!logs.contains(SECRET), "the webhook secret was logged");
    assert!(!logs.contains(TOKEN), "the GoHighLevel token was logged");

    // JSON lines: one per webhook and one per decision, with the fields operators filter on.
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let webhook = lines
        .iter()
        .find(|l| l["message"] == "webhook" && l["answer"] == "accepted")
        .expect("a webhook line");
    for field in ["event_type", "location", "contact"] {
        assert!(webhook[field].is_string(), "{field} in {webhook}");
    }
    assert!(
        webhook["span"]["request_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("af-")),
        "{webhook}"
    );
    let decision = lines
        .iter()
        .find(|l| l["message"] == "event processed" && l["status"] == "done")
        .expect("a decision line");
    assert!(
        decision["matched"]
            .as_str()
            .is_some_and(|m| m.contains("all")),
        "{decision}"
    );
    assert!(
        decision["plan"]
            .as_str()
            .is_some_and(|p| p.starts_with("add: ")),
        "{decision}"
    );
    assert_eq!(decision["calls"], "POST 201 ok", "{decision}");
}

async fn sigterm(service: Service) -> String {
    let status = Command::new("kill")
        .args(["-TERM", &service.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut service = service;
    assert_eq!(service.child.wait().unwrap().code(), Some(0));
    service.logs()
}

#[tokio::test]
async fn events_parked_on_a_refused_token_resume_when_the_service_restarts_with_a_new_token() {
    let dir = rules_dir("alice");
    let refusing = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&refusing)
        .await;
    let first = start_with_token(dir.path(), &refusing.uri(), "pit-old-token");
    for c in ["a", "b", "c"] {
        let body = json!({"type": "ContactCreate", "locationId": "L1", "id": c});
        assert_eq!(first.post_app(&body).await.status(), 200);
    }
    // Wait until every event met the refused token: one parked by the 401, the rest parked
    // without a call.
    let url = format!("sqlite://{}", dir.path().join("db/autofollow.db").display());
    let store = autofollow::store::sqlite::SqliteStore::open_existing(&url)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    for id in 1..=3 {
        while autofollow::store::History::decisions(&store, id)
            .await
            .unwrap()
            .is_empty()
        {
            assert!(Instant::now() < deadline, "event {id} was not handled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let record = autofollow::store::History::event(&store, id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            record.status,
            autofollow::model::record::EventStatus::Parked,
            "parked, not failed"
        );
    }
    let logs = sigterm(first).await;
    assert!(logs.contains("parked"), "{logs}");
    assert!(!logs.contains("pit-old-token"));
    // Events already in flight when the first 401 came may each have met it once; none is
    // retried.
    let refused_calls = refusing.received_requests().await.unwrap_or_default().len();
    assert!(
        (1..=3).contains(&refused_calls),
        "no retries burned: {refused_calls} calls"
    );

    let accepting = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201))
        .mount(&accepting)
        .await;
    let second = start_with_token(dir.path(), &accepting.uri(), "pit-new-token");
    let all: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    while followed_contacts(&accepting).await != all {
        assert!(
            Instant::now() < deadline,
            "resumed: {:?}",
            followed_contacts(&accepting).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sigterm(second).await;
}

#[tokio::test]
async fn sighup_reloads_the_rules_without_a_restart() {
    let dir = rules_dir("alice");
    let rules = dir.path().join("rules.yaml");
    let ghl = MockServer::start().await;
    let service = start(dir.path(), &ghl.uri());
    let http = reqwest::Client::new();
    let version = |v: &Value| {
        v["rules"]["version"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let ready: Value = http
        .get(format!("{}/readyz", service.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let before = version(&ready);
    std::fs::write(
        &rules,
        format!("{}rules:\n  - name: all\n    add: [bob]\n", common::USERS),
    )
    .unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &service.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready: Value = http
            .get(format!("{}/readyz", service.admin))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if version(&ready) != before {
            assert_eq!(ready["rules"]["last_error"], Value::Null);
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload: {ready}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sigterm(service).await;
}

/// App mode, the real binary on SQLite, against the OAuth stand-in (tokens live 2 s).
fn start_app(dir: &Path, ghl: &str) -> Service {
    use base64::Engine as _;
    use common::ghl_oauth::{CLIENT_ID, CLIENT_SECRET};
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let mut env = base_env(dir, ghl);
    env.extend([
        ("GHL_CLIENT_ID", CLIENT_ID.to_owned()),
        ("GHL_CLIENT_SECRET", CLIENT_SECRET.to_owned()),
        (
            "AUTOFOLLOW_PUBLIC_URL",
            "https://autofollow.test".to_owned(),
        ),
        ("AUTOFOLLOW_ENCRYPTION_KEY", key),
        ("AUTOFOLLOW_SETTLE_DELAY", "0".to_owned()),
        ("GHL_TIMEOUT", "10s".to_owned()),
    ]);
    spawn(&env)
}

/// Installs `LOCATION` through the callback, lets its token expire, and sends a webhook
/// whose processing starts a refresh; returns once GoHighLevel received that refresh.
async fn install_and_start_a_refresh(service: &Service, ghl: &common::ghl_oauth::StandIn) {
    use common::ghl_oauth::Grant;
    let code = ghl.code(Grant::Location(common::service::LOCATION.into()));
    let r = reqwest::Client::new()
        .get(format!("{}/oauth/callback", service.base))
        .query(&[("code", code)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let asked = ghl.with(|s| s.token_requests);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let body =
        json!({"type": "ContactCreate", "locationId": common::service::LOCATION, "id": "c1"});
    assert_eq!(service.post_app(&body).await.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(15);
    while ghl.with(|s| s.token_requests) == asked {
        assert!(Instant::now() < deadline, "no refresh started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// Waits until the stand-in recorded `n` followers calls.
async fn followers_calls(
    ghl: &common::ghl_oauth::StandIn,
    n: usize,
) -> Vec<(String, String, String, u16)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let calls = ghl.with(|s| s.calls.clone());
        if calls.len() >= n {
            return calls;
        }
        assert!(
            Instant::now() < deadline,
            "{} followers calls, not {n}",
            calls.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGKILL while a refresh is on its way: before GoHighLevel answered (its refresh token
/// still works), the next run refreshes and the work is done; after GoHighLevel used the
/// refresh token but before the new pair was stored (the one window the protocol cannot
/// close), the installation needs authorizing again and the work waits, parked, until it is:
/// nothing is lost either way.
#[tokio::test]
async fn sigkill_during_a_refresh_loses_no_work() {
    use common::ghl_oauth::{Grant, StandIn};
    let dir = rules_dir("alice");
    let ghl = StandIn::new(Duration::from_secs(2));
    let base = ghl.serve().await;

    // Killed before GoHighLevel used the refresh token.
    ghl.with(|s| s.token_delay = Duration::from_secs(3));
    let mut first = start_app(dir.path(), &base);
    install_and_start_a_refresh(&first, &ghl).await;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    ghl.with(|s| s.token_delay = Duration::ZERO);
    assert_eq!(
        ghl.with(|s| s.refreshes),
        0,
        "the refresh token was not used"
    );
    let second = start_app(dir.path(), &base);
    followers_calls(&ghl, 1).await;
    assert_eq!(ghl.with(|s| s.refreshes), 1);
    drop(second);

    // Killed after GoHighLevel used it, before the answer arrived.
    ghl.with(|s| s.refresh_answer_delay = Duration::from_secs(3));
    let mut third = start_app(dir.path(), &base);
    install_and_start_a_refresh(&third, &ghl).await;
    third.child.kill().unwrap();
    third.child.wait().unwrap();
    ghl.with(|s| s.refresh_answer_delay = Duration::ZERO);
    let fourth = start_app(dir.path(), &base);
    let admin = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready: Value = admin
            .get(format!("{}/readyz", fourth.admin))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let waiting = &ready["access"]["installations"]["reauthorize"];
        if waiting.as_array().is_some_and(|w| !w.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not marked for re-authorization: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ghl.with(|s| s.calls.len()), 1, "no call without a token");
    // Installing again resumes the parked work.
    let code = ghl.code(Grant::Location(common::service::LOCATION.into()));
    let r = reqwest::Client::new()
        .get(format!("{}/oauth/callback", fourth.base))
        .query(&[("code", code)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    followers_calls(&ghl, 2).await;
}

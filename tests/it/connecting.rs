//! The README's three ways of connecting GoHighLevel, each run as written: the real binary
//! with exactly the variables of the path's block (their values as the README shows them;
//! only a file path is put in place), against a GoHighLevel stand-in.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::ghl_oauth::{Grant, StandIn};
use crate::common::process::{Service, rules_dir, spawn};
use crate::common::repo;

/// The README section of path `n` ("### {n}. …"), up to the next heading.
fn section(n: u32) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find(&format!("\n### {n}. "))
        .unwrap_or_else(|| panic!("README has no path {n}"));
    let rest = &readme[start + 1..];
    let next = |marker: &str| rest[4..].find(marker).map(|e| e + 4);
    let end = [next("\n## "), next("\n### ")].into_iter().flatten().min();
    let end = end.unwrap_or(rest.len());
    rest[..end].to_owned()
}

/// The fenced blocks of `lang` in `text`, with their indentation removed.
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        match &mut current {
            None if trimmed == format!("```{lang}") => current = Some(String::new()),
            Some(block) if trimmed == "```" => {
                out.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(trimmed);
                block.push('\n');
            }
            None => {}
        }
    }
    out
}

/// The `VAR=value` lines of the path's `sh` block; every variable is one `serve` reads.
fn variables(n: u32) -> Vec<(String, String)> {
    let help = Command::new(env!("CARGO_BIN_EXE_autofollow"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let block = blocks(&section(n), "sh").pop().expect("an sh block");
    let vars: Vec<(String, String)> = block
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    for (key, _) in &vars {
        assert!(
            help.contains(&format!("[env: {key}")),
            "path {n}: {key} is not read by serve"
        );
    }
    vars
}

/// The service as path `n` configures it, against GoHighLevel at `ghl`, one rule adding
/// alice; `replace` puts values in place of the README's (a file path).
fn start(n: u32, ghl: &str, replace: &[(&str, String)]) -> (Service, tempfile::TempDir) {
    let dir = rules_dir("  - name: all\n    add: [alice]\n");
    let mut env: Vec<(String, String)> = variables(n);
    for (key, value) in replace {
        let slot = env.iter_mut().find(|(k, _)| k == key);
        slot.unwrap_or_else(|| panic!("path {n} sets no {key}")).1 = value.clone();
    }
    env.push(("GHL_API_BASE_URL".into(), ghl.to_owned()));
    let rules = dir.path().join("rules.yaml").display().to_string();
    env.push(("AUTOFOLLOW_RULES".into(), rules));
    let db = format!("sqlite://{}", dir.path().join("db/a.db").display());
    env.push(("AUTOFOLLOW_DATABASE_URL".into(), db));
    env.push(("AUTOFOLLOW_SETTLE_DELAY".into(), "0".into()));
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    (spawn(&env), dir)
}

/// A workflow Webhook action's body for `location`, sent as path 1 says.
async fn workflow(service: &Service, secret: &str, location: &str, contact: &str) -> Value {
    let body = json!({"contact_id": contact, "location": {"id": location}, "tags": "vip"});
    let r = reqwest::Client::new()
        .post(format!("{}/webhooks/workflow", service.base))
        .query(&[("secret", secret)])
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Waits until the stand-in got `n` requests.
async fn calls(ghl: &MockServer, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while ghl.received_requests().await.unwrap_or_default().len() < n {
        assert!(
            Instant::now() < deadline,
            "GoHighLevel was not called {n} times"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A followers call made with `token` for `contact`, expected once.
async fn expect_call(ghl: &MockServer, token: &str, contact: &str) {
    Mock::given(method("POST"))
        .and(path(format!("/contacts/{contact}/followers")))
        .and(header("authorization", format!("Bearer {token}")))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"followers": []})))
        .expect(1)
        .mount(ghl)
        .await;
}

#[tokio::test]
async fn path_1_one_sub_account_with_a_pit_and_a_workflow_action() {
    let vars: HashMap<String, String> = variables(1).into_iter().collect();
    let ghl = MockServer::start().await;
    expect_call(&ghl, &vars["GHL_TOKEN"], "c1").await;
    let (service, _dir) = start(1, &ghl.uri(), &[]);
    let secret = &vars["AUTOFOLLOW_WEBHOOK_SECRET"];
    let answer = workflow(&service, secret, &vars["GHL_LOCATION_ID"], "c1").await;
    assert_eq!(answer["status"], "accepted", "{answer}");
    let other = workflow(&service, secret, "OtherSubAccount00001", "c2").await;
    assert_eq!(other["status"], "ignored", "{other}");
    calls(&ghl, 1).await;
    ghl.verify().await;
}

#[tokio::test]
async fn path_3_several_sub_accounts_with_a_token_file() {
    let section = section(3);
    let file = blocks(&section, "yaml").pop().expect("the token file");
    let tokens: HashMap<String, String> = serde_yaml::from_str(&file).unwrap();
    assert_eq!(tokens.len(), 2);
    let ghl = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ghl-tokens.yaml");
    std::fs::write(&path, &file).unwrap();
    let mut contacts = Vec::new();
    for (i, token) in tokens.values().enumerate() {
        contacts.push(format!("c{i}"));
        expect_call(&ghl, token, &contacts[i]).await;
    }
    let replace = [("GHL_LOCATION_TOKENS_FILE", path.display().to_string())];
    let (service, _rules) = start(3, &ghl.uri(), &replace);
    let vars: HashMap<String, String> = variables(3).into_iter().collect();
    for (i, location) in tokens.keys().enumerate() {
        let secret = &vars["AUTOFOLLOW_WEBHOOK_SECRET"];
        let answer = workflow(&service, secret, location, &contacts[i]).await;
        assert_eq!(answer["status"], "accepted", "{answer}");
    }
    calls(&ghl, 2).await;
    ghl.verify().await;
}

#[tokio::test]
async fn path_2_an_agency_installs_the_marketplace_app() {
    let vars: HashMap<String, String> = variables(2).into_iter().collect();
    let ghl = StandIn::new(Duration::from_secs(3600));
    ghl.with(|s| {
        s.client_id.clone_from(&vars["GHL_CLIENT_ID"]);
        s.client_secret.clone_from(&vars["GHL_CLIENT_SECRET"]);
        s.app_id.clone_from(&vars["GHL_APP_ID"]);
    });
    let (service, _dir) = start(2, &ghl.serve().await, &[]);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let install = http
        .get(format!("{}/oauth/install", service.base))
        .send()
        .await
        .unwrap();
    let to = install.headers()["location"].to_str().unwrap().to_owned();
    let public = &vars["AUTOFOLLOW_PUBLIC_URL"];
    assert!(
        to.contains(&format!("client_id={}", vars["GHL_CLIENT_ID"])),
        "{to}"
    );
    let redirect = format!("{public}/oauth/callback");
    let query: HashMap<String, String> = reqwest::Url::parse(&to)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    assert_eq!(query["redirect_uri"], redirect);
    let location = "ve9EPM428h8vShlRW1KT";
    let code = ghl.code(Grant::Location(location.into()));
    let callback = http
        .get(format!("{}/oauth/callback", service.base))
        .query(&[("code", code)])
        .send()
        .await
        .unwrap();
    assert_eq!(callback.status(), 200);
    let event = json!({"type": "ContactCreate", "locationId": location, "id": "c1"});
    let answer: Value = service.post_app(&event).await.json().await.unwrap();
    assert_eq!(answer["status"], "accepted", "{answer}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while ghl.with(|s| s.calls.is_empty()) {
        assert!(Instant::now() < deadline, "no followers call");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let call = (location.to_owned(), "c1".to_owned(), "POST".to_owned(), 201);
    assert_eq!(ghl.with(|s| s.calls.clone()), vec![call]);
}

//! `reapply` and `undo`: the difference between what the rules want now and the ownership
//! ledger, and the inverse of what autofollow did, previewed (dry runs print exactly the
//! changes the real runs then make) and carried out by the service in each contact's queue.

use std::collections::BTreeMap;

use autofollow::model::ids::{ContactId, LocationId};
use autofollow::model::record::EventStatus;
use serde_json::{Value, json};
use wiremock::matchers::method;
use wiremock::{Mock, Request, ResponseTemplate};

use crate::common::service::{LOCATION, Options, TOKEN, TestApp, spawn_app, spawn_with};
use crate::common::{ALICE, BOB, CAROL};

/// Runs `autofollow ARGS` with the service's environment; (exit code, stdout, stderr).
fn cli(app: &TestApp, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_autofollow"))
        .args(args)
        .env("AUTOFOLLOW_DATABASE_URL", &app.database_url)
        .env("AUTOFOLLOW_RULES", &app.rules_file)
        .env("GHL_API_BASE_URL", app.ghl.uri())
        .env("GHL_TOKEN", TOKEN)
        .env("GHL_LOCATION_ID", LOCATION)
        .output()
        .expect("autofollow runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// The report of `autofollow ARGS --json`.
fn report(app: &TestApp, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let (code, out, err) = cli(app, &args);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// A report's changes as the calls they make: contact → (users added, users removed).
fn changes(report: &Value) -> BTreeMap<String, (Vec<String>, Vec<String>)> {
    let users = |list: &Value| -> Vec<String> {
        let mut users: Vec<String> = list
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["user"].as_str().unwrap_or_default().to_owned())
            .collect();
        users.sort();
        users
    };
    let changes = report["changes"].as_array().cloned().unwrap_or_default();
    changes
        .iter()
        .map(|c| {
            let contact = c["contact"].as_str().unwrap_or_default().to_owned();
            (contact, (users(&c["add"]), users(&c["remove"])))
        })
        .collect()
}

/// The followers calls made after the first `skip`, as the same map.
async fn made(app: &TestApp, skip: usize) -> BTreeMap<String, (Vec<String>, Vec<String>)> {
    let mut out: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for (verb, path, users) in app.followers_calls().await.into_iter().skip(skip) {
        let contact = path.split('/').nth(2).unwrap_or_default().to_owned();
        let entry = out.entry(contact).or_default();
        let list = if verb == "POST" {
            &mut entry.0
        } else {
            &mut entry.1
        };
        list.extend(
            users
                .as_array()
                .into_iter()
                .flatten()
                .map(|u| u.as_str().unwrap_or_default().to_owned()),
        );
        list.sort();
    }
    out
}

fn users(list: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

async fn tags(app: &TestApp, contact: &str, tags: &[&str]) -> i64 {
    let id = app
        .contact("ContactTagUpdate", contact, json!({ "tags": tags }))
        .await;
    app.drain().await;
    id
}

/// Replaces the service's rules (the test aliases kept) and reloads them.
fn change_rules(app: &TestApp, rules: &str) {
    std::fs::write(&app.rules_file, format!("{}{rules}", crate::common::USERS)).unwrap();
    app.reload();
}

/// The rules before a change (also what `simulate.rs` replays through).
pub(crate) const BEFORE: &str = "rules:
  - name: vip
    when: {has_tag: vip}
    add: [alice]
    follow: while_matching
  - name: facebook
    when: {source: fb}
    add: [bob]
";

/// The vip rule now needs the webinar tag, a new rule adds carol to webinar contacts, and the
/// facebook rule adds carol instead of bob.
pub(crate) const AFTER: &str = "rules:
  - name: vip
    when: {has_tag: webinar}
    add: [alice]
    follow: while_matching
  - name: webinar-team
    when: {has_tag: webinar}
    add: [carol]
    follow: while_matching
  - name: facebook
    when: {source: fb}
    add: [carol]
";

async fn decided_before(app: &TestApp) {
    app.ghl_accepts_the_rest().await;
    tags(app, "c1", &["vip"]).await;
    app.contact("ContactCreate", "c2", json!({"source": "fb", "tags": []}))
        .await;
    app.drain().await;
    tags(app, "c3", &["vip", "webinar"]).await;
}

#[tokio::test]
async fn reapply_brings_decided_contacts_to_the_changed_rules_as_its_dry_run_said() {
    let app = spawn_app(BEFORE).await;
    decided_before(&app).await;
    change_rules(&app, AFTER);
    let preview = report(&app, &["reapply", "--dry-run"]);
    let expected = BTreeMap::from([
        ("c1".to_owned(), (users(&[]), users(&[ALICE]))),
        ("c2".to_owned(), (users(&[CAROL]), users(&[BOB]))),
        ("c3".to_owned(), (users(&[CAROL]), users(&[]))),
    ]);
    assert_eq!(changes(&preview), expected, "{preview:#}");
    assert_eq!(preview["contacts"], 3);
    assert_eq!(preview["queued"], 0, "a dry run queues nothing");
    let (_, summary, _) = cli(&app, &["reapply", "--dry-run"]);
    for line in [
        "3 contacts checked, 3 would change",
        &format!("rule facebook: {BOB} +0 -1"),
        &format!("rule facebook: {CAROL} +1 -0"),
        &format!("rule vip: {ALICE} +0 -1"),
        &format!("rule webinar-team: {CAROL} +1 -0"),
    ] {
        assert!(summary.contains(line), "{line} in:\n{summary}");
    }
    let before = app.followers_calls().await.len();
    assert_eq!(app.store().pending().await.unwrap(), 0);
    let real = report(&app, &["reapply"]);
    assert_eq!(real["queued"], 3);
    app.drain().await;
    assert_eq!(
        made(&app, before).await,
        changes(&preview),
        "the real run made what the dry run printed"
    );
    let again = report(&app, &["reapply", "--dry-run"]);
    assert_eq!(again["changed"], 0, "nothing left to change: {again:#}");
    app.shutdown().await;
}

/// A person leaves: their alias gets the new person's id, and reapply moves every contact an
/// on-match rule gave the old person to the new one (the README's recipe).
#[tokio::test]
async fn replacing_a_person_is_an_alias_change_a_preview_and_a_reapply() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    let readme = std::fs::read_to_string(crate::common::repo().join("README.md")).unwrap();
    let recipe = &readme[readme.find("### Recipe: replacing a person").unwrap()..];
    let yaml = recipe
        .split("```yaml\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    assert!(yaml.contains(ALICE), "{yaml}");
    let rules = |id: &str| yaml.replace(ALICE, id);
    std::fs::write(&file, rules(ALICE)).unwrap();
    let app = spawn_with(Options {
        rules_path: Some(file.clone()),
        ..Options::default()
    })
    .await;
    app.ghl_accepts_the_rest().await;
    for c in ["c1", "c2"] {
        app.contact("ContactCreate", c, json!({})).await;
    }
    // c2's latest event is not one the rule reads: the ledger alone says it gave c2 someone.
    app.contact("ContactUpdate", "c2", json!({"tags": ["renewal"]}))
        .await;
    app.drain().await;
    std::fs::write(&file, rules(BOB)).unwrap();
    app.reload();
    let mut app = app;
    app.rules_file = file;
    let (code, preview, _) = cli(&app, &["reapply", "--dry-run"]);
    assert_eq!(code, 0);
    assert!(
        preview.contains(&format!("rule new-leads: {ALICE} +0 -2")),
        "{preview}"
    );
    assert!(
        preview.contains(&format!("rule new-leads: {BOB} +2 -0")),
        "{preview}"
    );
    let before = app.followers_calls().await.len();
    let (code, _, err) = cli(&app, &["reapply"]);
    assert_eq!(code, 0, "{err}");
    app.drain().await;
    let moved = (users(&[BOB]), users(&[ALICE]));
    let expected = BTreeMap::from([("c1".to_owned(), moved.clone()), ("c2".to_owned(), moved)]);
    assert_eq!(made(&app, before).await, expected);
    app.shutdown().await;
}

/// Tasks queued for other rules than the service runs are skipped, saying why.
#[tokio::test]
async fn a_reapply_planned_for_other_rules_is_skipped_with_the_reason() {
    let app = spawn_app(BEFORE).await;
    decided_before(&app).await;
    let other = tempfile::tempdir().unwrap();
    let file = other.path().join("rules.yaml");
    std::fs::write(&file, format!("{}{AFTER}", crate::common::USERS)).unwrap();
    let real = report(&app, &["reapply", "--rules", file.to_str().unwrap()]);
    assert_eq!(real["queued"], 3);
    let before = app.followers_calls().await.len();
    app.drain().await;
    assert_eq!(app.followers_calls().await.len(), before, "nothing called");
    let skipped = app
        .store()
        .list_events(&autofollow::store::EventFilter {
            status: Some(EventStatus::Skipped),
            contact: None,
            since: None,
            limit: 0,
            location: None,
            event_type: None,
        })
        .await
        .unwrap();
    assert_eq!(skipped.len(), 3);
    let why = skipped[0].event.last_error.clone().unwrap_or_default();
    assert!(why.contains("run `autofollow reapply` again"), "{why}");
    app.shutdown().await;
}

/// GoHighLevel answers that carol was following already (someone added her by hand), and
/// everyone else is added.
async fn carol_was_added_by_hand(app: &TestApp) {
    let answer = |request: &Request| {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let sent = body["followers"].as_array().cloned().unwrap_or_default();
        let added: Vec<Value> = sent.iter().filter(|u| *u != CAROL).cloned().collect();
        ResponseTemplate::new(201)
            .set_body_json(json!({"followers": sent, "followersAdded": added}))
    };
    Mock::given(method("POST"))
        .respond_with(answer)
        .mount(&app.ghl)
        .await;
    app.ghl_accepts_the_rest().await;
}

const UNDONE: &str = "rules:
  - name: vip
    when: {has_tag: vip}
    add: [alice]
    follow: while_matching
  - name: team
    when: {source: fb}
    add: [carol, bob]
";

#[tokio::test]
async fn undo_removes_what_a_rule_added_and_adds_back_what_an_event_removed_never_a_hand_added_follower()
 {
    let app = spawn_app(UNDONE).await;
    carol_was_added_by_hand(&app).await;
    tags(&app, "c1", &["vip"]).await;
    tags(&app, "c3", &["vip"]).await;
    let removed = tags(&app, "c3", &[]).await;
    app.contact("ContactCreate", "c2", json!({"source": "fb"}))
        .await;
    app.drain().await;
    let by_rule = report(&app, &["undo", "--rule", "team", "--dry-run"]);
    let expected = BTreeMap::from([("c2".to_owned(), (users(&[]), users(&[BOB])))]);
    assert_eq!(
        changes(&by_rule),
        expected,
        "carol was there by hand: {by_rule:#}"
    );
    let by_event = report(
        &app,
        &["undo", "--event", &removed.to_string(), "--dry-run"],
    );
    let expected = BTreeMap::from([("c3".to_owned(), (users(&[ALICE]), users(&[])))]);
    assert_eq!(changes(&by_event), expected, "{by_event:#}");
    let by_vip = report(&app, &["undo", "--rule", "vip", "--dry-run"]);
    let expected = BTreeMap::from([("c1".to_owned(), (users(&[]), users(&[ALICE])))]);
    assert_eq!(changes(&by_vip), expected, "{by_vip:#}");
    let before = app.followers_calls().await.len();
    for args in [
        ["undo", "--rule", "team"],
        ["undo", "--event", &removed.to_string()],
    ] {
        let (code, _, err) = cli(&app, &args);
        assert_eq!(code, 0, "{err}");
    }
    app.drain().await;
    let mut both = changes(&by_rule);
    both.extend(changes(&by_event));
    assert_eq!(
        made(&app, before).await,
        both,
        "the real runs made what the dry runs printed"
    );
    let owned = app
        .store()
        .owned(
            &LocationId::parse(LOCATION).unwrap(),
            &ContactId::parse("c3").unwrap(),
            false,
        )
        .await
        .unwrap();
    assert_eq!(owned.len(), 1, "alice's row for vip is back");
    let again = report(
        &app,
        &["undo", "--event", &removed.to_string(), "--dry-run"],
    );
    assert_eq!(again["changed"], 0, "{again:#}");
    app.shutdown().await;
}

#[tokio::test]
async fn undo_since_reverses_what_happened_after_the_moment() {
    let app = spawn_app(UNDONE).await;
    app.ghl_accepts_the_rest().await;
    tags(&app, "c1", &["vip"]).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let since = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    tags(&app, "c1", &[]).await;
    tags(&app, "c4", &["vip"]).await;
    let preview = report(&app, &["undo", "--since", &since, "--dry-run"]);
    let expected = BTreeMap::from([
        ("c1".to_owned(), (users(&[ALICE]), users(&[]))),
        ("c4".to_owned(), (users(&[]), users(&[ALICE]))),
    ]);
    assert_eq!(changes(&preview), expected, "{preview:#}");
    let (code, _, err) = cli(&app, &["undo", "--since", "yesterday"]);
    assert_eq!(code, 1);
    assert!(err.contains("2026-12-01"), "{err}");
    app.shutdown().await;
}

const ADMIN: &str = "admin-test-token";

#[tokio::test]
async fn the_admin_api_previews_and_queues_reapply_and_undo() {
    let app = spawn_with(Options {
        rules: BEFORE.into(),
        admin_token: Some(ADMIN.into()),
        reapply_on_reload: "off".into(),
        ..Options::default()
    })
    .await;
    decided_before(&app).await;
    change_rules(&app, AFTER);
    let post = |path: &str| {
        app.http
            .post(format!("{}{path}", app.admin))
            .bearer_auth(ADMIN)
            .send()
    };
    let r = post("/admin/reapply?dry_run=true").await.unwrap();
    assert_eq!(r.status(), 200);
    let preview: Value = r.json().await.unwrap();
    assert_eq!(preview["changed"], 3, "{preview:#}");
    let r = post("/admin/reapply?location=ve9EPM428h8vShlRW1KT")
        .await
        .unwrap();
    let real: Value = r.json().await.unwrap();
    assert_eq!(changes(&real), changes(&preview));
    assert_eq!(real["queued"], 3);
    for bad in [
        "/admin/undo",
        "/admin/undo?rule=vip&event=3",
        "/admin/undo?since=soon",
        "/admin/reapply?location=..",
    ] {
        assert_eq!(post(bad).await.unwrap().status(), 400, "{bad}");
    }
    let r = post("/admin/undo?rule=vip&dry_run=true").await.unwrap();
    let undo: Value = r.json().await.unwrap();
    assert_eq!(undo["job"], "undo rule vip");
    app.shutdown().await;
}

/// With the default `preview`, a reload that changes the rules works out what reapply would
/// change, logs it and shows it in the admin `/readyz`; nothing is queued.
#[tokio::test]
async fn a_reload_previews_what_reapply_would_change() {
    let app = spawn_with(Options {
        rules: BEFORE.into(),
        admin_token: Some(ADMIN.into()),
        reapply_on_reload: "preview".into(),
        ..Options::default()
    })
    .await;
    decided_before(&app).await;
    change_rules(&app, AFTER);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let ready = app.ready().await;
        let reapply = &ready["rules"]["reapply"];
        if reapply["changed"] == 3 {
            assert_eq!(reapply["dry_run"], true);
            assert_eq!(reapply["rules_version"], ready["rules"]["version"]);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{ready:#}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.store().pending().await.unwrap(),
        0,
        "a preview queues nothing"
    );
    app.shutdown().await;
}

/// With `apply`, the reload queues the changes and the service makes them.
#[tokio::test]
async fn a_reload_with_apply_makes_the_changes() {
    let app = spawn_with(Options {
        rules: BEFORE.into(),
        reapply_on_reload: "apply".into(),
        ..Options::default()
    })
    .await;
    decided_before(&app).await;
    let before = app.followers_calls().await.len();
    change_rules(&app, AFTER);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while made(&app, before).await.len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            made(&app, before).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    app.shutdown().await;
}

//! `autofollow simulate`: the stored webhooks replayed through the current and a candidate
//! rule set, from the state each left; the difference per rule and user, with samples.

use serde_json::{Value, json};

use crate::common::service::{Options, TestApp, spawn_app, spawn_with};
use crate::common::{ALICE, BOB, CAROL, USERS};

use crate::reapply::{AFTER as CANDIDATE, BEFORE as CURRENT};

fn simulate(app: &TestApp, candidate: &std::path::Path, extra: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_autofollow"))
        .args(["simulate", "--rules"])
        .arg(candidate)
        .args(["--since", "1h", "--database-url", &app.database_url])
        .args(extra)
        .env("AUTOFOLLOW_RULES", &app.rules_file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text + &String::from_utf8_lossy(&out.stderr),
    )
}

fn tally(report: &Value, rule: &str, user: &str) -> (u64, u64) {
    let list = report["summary"].as_array().cloned().unwrap_or_default();
    let t = list.iter().find(|t| t["rule"] == rule && t["user"] == user);
    t.map_or((0, 0), |t| {
        (
            t["gain"].as_u64().unwrap_or(0),
            t["lose"].as_u64().unwrap_or(0),
        )
    })
}

/// The history the tests replay: three contacts, four webhooks.
async fn history(app: &TestApp) {
    app.ghl_accepts_the_rest().await;
    for (t, c, extra) in [
        ("ContactTagUpdate", "c1", json!({"tags": ["vip"]})),
        ("ContactCreate", "c2", json!({"source": "fb", "tags": []})),
        (
            "ContactTagUpdate",
            "c3",
            json!({"tags": ["vip", "webinar"]}),
        ),
        ("ContactTagUpdate", "c3", json!({"tags": ["webinar"]})),
    ] {
        app.contact(t, c, extra).await;
        app.drain().await;
    }
}

#[tokio::test]
async fn simulate_replays_the_stored_history_through_a_candidate_and_reports_the_difference() {
    let app = spawn_app(CURRENT).await;
    history(&app).await;
    let calls = app.followers_calls().await.len();
    let dir = tempfile::tempdir().unwrap();
    let candidate = dir.path().join("candidate.yaml");
    std::fs::write(&candidate, format!("{USERS}{CANDIDATE}")).unwrap();
    let (code, out) = simulate(&app, &candidate, &["--json"]);
    assert_eq!(code, 0, "{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            report["events"].as_u64(),
            report["contacts"].as_u64(),
            report["changed"].as_u64()
        ),
        (Some(4), Some(3), Some(3)),
        "{report:#}"
    );
    assert_eq!(tally(&report, "facebook", BOB), (0, 1));
    assert_eq!(tally(&report, "facebook", CAROL), (1, 0));
    assert_eq!(
        tally(&report, "vip", ALICE),
        (1, 1),
        "c1 loses alice; c3 keeps her"
    );
    assert_eq!(tally(&report, "webinar-team", CAROL), (1, 0));
    let (_, text) = simulate(&app, &candidate, &[]);
    assert!(
        text.contains("4 webhooks about 3 contacts; 3 would change"),
        "{text}"
    );
    assert!(
        text.contains("contact c1 (location ve9EPM428h8vShlRW1KT), event 1 ContactTagUpdate:"),
        "{text}"
    );
    assert!(text.contains("  current:   add: alice"), "{text}");
    assert!(text.contains("  candidate: no change"), "{text}");
    let why =
        "candidate.yaml:6:5): not matched; has_tag: none of the tags [\"vip\"] is in [\"webinar\"]";
    assert!(text.contains(why), "{text}");
    assert_eq!(
        app.followers_calls().await.len(),
        calls,
        "nothing is called"
    );
    let same = simulate(&app, &app.rules_file, &["--json"]);
    let same: Value = serde_json::from_str(&same.1).unwrap();
    assert_eq!(
        same["changed"], 0,
        "the rules in force change nothing: {same:#}"
    );
    app.shutdown().await;
}

/// A candidate that adds a pool deals its members as the service would, 2:1 from a fresh
/// sequence, each contact keeping its member across its events.
#[tokio::test]
async fn simulate_deals_a_candidates_pool() {
    let app =
        spawn_app("rules:\n  - name: none\n    when: { has_tag: never }\n    add: [carol]\n").await;
    history(&app).await;
    let dir = tempfile::tempdir().unwrap();
    let candidate = dir.path().join("candidate.yaml");
    let pool = "pools:\n  sales:\n    members: { alice: 2, bob: 1 }\nrules:\n  - name: deal\n    add: [{ pool: sales }]\n";
    std::fs::write(&candidate, format!("{USERS}{pool}")).unwrap();
    let (code, out) = simulate(&app, &candidate, &["--json"]);
    assert_eq!(code, 0, "{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["changed"], 3, "{report:#}");
    assert_eq!(
        tally(&report, "deal", ALICE),
        (2, 0),
        "c1 and c3: {report:#}"
    );
    assert_eq!(tally(&report, "deal", BOB), (1, 0), "c2: {report:#}");
    app.shutdown().await;
}

const ADMIN: &str = "admin-token-for-simulate";

#[tokio::test]
async fn the_admin_api_simulates_a_candidate_file_against_the_rules_in_force() {
    let app = spawn_with(Options {
        rules: CURRENT.into(),
        admin_token: Some(ADMIN.into()),
        ..Options::default()
    })
    .await;
    history(&app).await;
    let post = |query: &str, body: String| {
        app.http
            .post(format!("{}/admin/simulate?{query}", app.admin))
            .bearer_auth(ADMIN)
            .body(body)
            .send()
    };
    let r = post("since=1h&file=rules.yaml", format!("{USERS}{CANDIDATE}"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    assert_eq!(report["changed"], 3, "{report:#}");
    assert_eq!(tally(&report, "facebook", CAROL), (1, 0));
    let r = post("since=1h", "rules:\n  - name: x\n    whenn: {}\n".into())
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let rejected: Value = r.json().await.unwrap();
    assert!(
        rejected["errors"].to_string().contains("whenn"),
        "{rejected:#}"
    );
    assert_eq!(
        post("since=soon", String::new()).await.unwrap().status(),
        400
    );
    app.shutdown().await;
}

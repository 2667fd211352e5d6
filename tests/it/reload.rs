//! Live reload by watching the rule files: edits apply without a restart, invalid edits are
//! rejected with the old rules still deciding, and rename-style replacement is seen.

use crate::common;
use std::time::{Duration, Instant};

use common::service::*;
use serde_json::{Value, json};

const USERS: &str = "users:\n  alice: 9hTnVvSr1Q2ZyE5kHfXm\n  bob: 4kLmPq7Rt2WvXy9ZaBcD\n";

/// Waits until `/readyz` satisfies `done`.
async fn until(app: &TestApp, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = app.ready().await;
        if done(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "{what}: {r}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn plan_for_a_lead(app: &TestApp, contact: &str) -> String {
    let id = app
        .contact("ContactCreate", contact, json!({"source": "fb-x"}))
        .await;
    app.drain().await;
    app.decisions(id).await[0].plan.summary()
}

#[tokio::test]
async fn edits_to_the_rule_files_apply_without_a_restart() {
    let app =
        spawn_app("rules:\n  - name: fb\n    when: {source: 'fb-*'}\n    add: [alice]\n").await;
    app.ghl_accepts_the_rest().await;
    assert_eq!(plan_for_a_lead(&app, "c1").await, "add: alice");
    let first = app.ready().await["rules"]["version"].clone();

    // A valid edit, written in place.
    std::fs::write(
        &app.rules_file,
        format!("{USERS}rules:\n  - name: fb\n    when: {{source: 'fb-*'}}\n    add: [bob]\n"),
    )
    .unwrap();
    let second = until(&app, "the edit was not loaded", |r| {
        r["rules"]["version"] != first
    })
    .await["rules"]["version"]
        .clone();
    assert_eq!(plan_for_a_lead(&app, "c2").await, "add: bob");

    // An invalid edit: rejected, reported with its position, the old rules keep deciding.
    std::fs::write(
        &app.rules_file,
        format!("{USERS}rules:\n  - name: fb\n    add: [bob]\n    stop: maybe\n"),
    )
    .unwrap();
    let r = until(&app, "the invalid edit was not reported", |r| {
        r["rules"]["last_error"].is_string()
    })
    .await;
    assert!(
        r["rules"]["last_error"]
            .as_str()
            .unwrap()
            .contains("rules.yaml:7:11: error: `stop` must be true or false"),
        "{r}"
    );
    assert_eq!(r["rules"]["version"], second);
    assert_eq!(plan_for_a_lead(&app, "c3").await, "add: bob");

    // Replaced by a rename, as editors and Kubernetes ConfigMaps do.
    let staged = app.rules_file.with_extension("yaml.tmp");
    std::fs::write(
        &staged,
        format!(
            "{USERS}rules:\n  - name: fb\n    when: {{source: 'fb-*'}}\n    add: [alice, bob]\n"
        ),
    )
    .unwrap();
    std::fs::rename(&staged, &app.rules_file).unwrap();
    let r = until(&app, "the renamed file was not loaded", |r| {
        r["rules"]["version"] != second
    })
    .await;
    assert_eq!(
        r["rules"]["last_error"],
        Value::Null,
        "a valid set clears the error"
    );
    assert_eq!(plan_for_a_lead(&app, "c4").await, "add: alice, bob");
    app.shutdown().await;
}

//! `autofollow events`, `replay` and `why` on the database of a running service.

use crate::common;
use std::process::Output;

use autofollow::model::record::EventStatus;
use common::service::*;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

async fn autofollow(app: &TestApp, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_autofollow"))
        .args(args)
        .env("AUTOFOLLOW_DATABASE_URL", &app.database_url)
        .output()
        .await
        .unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

async fn lead(app: &TestApp, contact: &str) -> i64 {
    let body = json!({"type": "ContactCreate", "locationId": "L1", "id": contact});
    accepted(app.post_app(&body).await).await
}

#[tokio::test]
async fn operators_list_replay_and_explain_events_from_the_command_line() {
    let app = spawn_app("rules:\n  - name: all\n    add: [alice]\n").await;
    let reply = |status: u16| {
        ResponseTemplate::new(status)
            .set_body_json(json!({"statusCode": status, "message": "nope"}))
    };
    Mock::given(method("POST"))
        .and(path("/contacts/gone/followers"))
        .respond_with(reply(404))
        .mount(&app.ghl)
        .await;
    Mock::given(method("POST"))
        .and(path("/contacts/bad/followers"))
        .respond_with(reply(422))
        .up_to_n_times(1)
        .mount(&app.ghl)
        .await;
    app.ghl_accepts_the_rest().await;
    let ok = lead(&app, "ok").await;
    let gone = lead(&app, "gone").await;
    let bad = lead(&app, "bad").await;
    app.drain().await;
    assert_eq!(app.event(ok).await.status, EventStatus::Done);
    assert_eq!(
        app.event(gone).await.status,
        EventStatus::Skipped,
        "a deleted contact is skipped, not failed"
    );
    assert_eq!(app.event(bad).await.status, EventStatus::Failed);

    let all = text(&autofollow(&app, &["events"]).await);
    assert_eq!(
        all.lines().filter(|l| l.starts_with('#')).count(),
        3,
        "{all}"
    );
    assert!(
        all.contains(&format!("#{gone} ")) && all.contains("contact gone: skipped after 1 attempt"),
        "{all}"
    );
    assert!(
        all.contains(
            "attempt 1: skipped; rules all; add: alice; error: GoHighLevel answered 404: nope"
        ),
        "{all}"
    );

    let failed = text(&autofollow(&app, &["events", "--status", "failed", "--since", "1h"]).await);
    assert_eq!(
        failed.lines().filter(|l| l.starts_with('#')).count(),
        1,
        "{failed}"
    );
    assert!(failed.contains("contact bad: failed"), "{failed}");
    let json: Value = serde_json::from_slice(
        &autofollow(&app, &["events", "--contact", "ok", "--json"])
            .await
            .stdout,
    )
    .unwrap();
    assert_eq!(json[0]["status"], "done");
    assert_eq!(json[0]["last_decision"]["plan"]["add"][0]["label"], "alice");

    let replayed = autofollow(&app, &["replay", "--status", "failed", "--since", "24h"]).await;
    assert_eq!(text(&replayed), "queued 1 event for processing\n");
    app.drain().await;
    assert_eq!(
        app.event(bad).await.status,
        EventStatus::Done,
        "the replay succeeded"
    );

    let why = text(&autofollow(&app, &["why", "bad"]).await);
    let lines: Vec<&str> = why.lines().collect();
    assert!(
        lines[0].starts_with(&format!("#{bad} "))
            && lines[0].ends_with("contact bad: done after 1 attempt"),
        "{why}"
    );
    assert!(
        lines[1].starts_with(
            "    attempt 1: failed; rules all; add: alice; error: GoHighLevel answered 422"
        ),
        "{why}"
    );
    assert!(
        lines[2].contains("POST /contacts/bad/followers [\"9hTnVvSr1Q2ZyE5kHfXm\"] -> 422"),
        "{why}"
    );
    assert!(
        lines[3].starts_with("    attempt 1: done; rules all; add: alice"),
        "{why}"
    );
    assert!(lines[4].contains("-> 201 ok"), "{why}");

    let by_id = autofollow(&app, &["replay", &ok.to_string()]).await;
    assert_eq!(text(&by_id), "queued 1 event for processing\n");
    app.drain().await;
    app.shutdown().await;
}

#[tokio::test]
async fn operator_commands_explain_their_mistakes() {
    let app = spawn_app("rules:\n  - name: all\n    add: [alice]\n").await;
    let o = autofollow(&app, &["replay"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("name event ids, or select events with --status"));
    let o = autofollow(&app, &["events", "--status", "lost"]).await;
    assert!(text(&o).contains("`lost` is not a status"), "{}", text(&o));
    let o = autofollow(&app, &["events", "--since", "soon"]).await;
    assert!(
        text(&o).contains("`soon` is not a duration"),
        "{}",
        text(&o)
    );
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_autofollow"))
        .args([
            "why",
            "c1",
            "--database-url",
            "sqlite:///nonexistent/dir/x.db",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("no database at /nonexistent/dir/x.db"),
        "{}",
        text(&o)
    );
    assert_eq!(
        text(&autofollow(&app, &["why", "nobody"]).await),
        "no events for contact nobody\n"
    );
    app.shutdown().await;
}

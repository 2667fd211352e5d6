//! Drift repair (`AUTOFOLLOW_RECONCILE_EVERY`): each contact autofollow keeps followers on is
//! read again from GoHighLevel; a follower it added that a person removed is not added back
//! (the person's removal is newer), until a new event decides again.

use autofollow::model::ids::{ContactId, LocationId};
use autofollow::model::record::EventStatus;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::common::service::{LOCATION, Options, TestApp, spawn_with};
use crate::common::{ALICE, CAROL};

const ADMIN: &str = "admin-token-for-reconcile";
const RULES: &str = "rules:\n  - name: vip\n    when: {has_tag: vip}\n    add: [alice]\n    follow: while_matching\n";

async fn followers_in_ghl(app: &TestApp, contact: &str, followers: &[&str]) {
    Mock::given(method("GET"))
        .and(path(format!("/contacts/{contact}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"contact": {"id": contact, "locationId": LOCATION, "followers": followers}}),
        ))
        .mount(&app.ghl)
        .await;
}

async fn rows(app: &TestApp, contact: &str) -> Vec<autofollow::store::Owned> {
    let (l, c) = (
        LocationId::parse(LOCATION).unwrap(),
        ContactId::parse(contact).unwrap(),
    );
    app.store().owned(&l, &c, true).await.unwrap()
}

/// Waits (at most 20 s) until a `Reconcile` task of `contact` is done.
async fn reconciled(app: &TestApp, contact: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let filter = autofollow::store::EventFilter {
            status: Some(EventStatus::Done),
            contact: Some(ContactId::parse(contact).unwrap()),
            since: None,
            limit: 0,
            location: None,
            event_type: None,
        };
        let events = app.store().list_events(&filter).await.unwrap();
        if events.iter().any(|e| e.event.event_type == "Reconcile") {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{events:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn drift_repair_takes_note_of_followers_removed_by_hand_and_does_not_add_them_back() {
    let app = spawn_with(Options {
        rules: RULES.into(),
        admin_token: Some(ADMIN.into()),
        reconcile_every: "30s".into(),
        ..Options::default()
    })
    .await;
    followers_in_ghl(&app, "c1", &[]).await;
    followers_in_ghl(&app, "c2", &[ALICE, CAROL]).await;
    // The add's answer lists alice: the list on record says she follows.
    let added = json!({"followers": [ALICE], "followersAdded": [ALICE]});
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_body_json(added))
        .mount(&app.ghl)
        .await;
    app.ghl_accepts_the_rest().await;
    for c in ["c1", "c2"] {
        app.contact("ContactTagUpdate", c, json!({"tags": ["vip"]}))
            .await;
    }
    app.drain().await;
    let calls = app.followers_calls().await.len();
    reconciled(&app, "c1").await;
    reconciled(&app, "c2").await;
    assert_eq!(
        app.followers_calls().await.len(),
        calls,
        "reading changes nothing in GoHighLevel"
    );
    let c1 = rows(&app, "c1").await;
    assert_eq!(c1.len(), 1);
    assert_eq!(c1[0].removed_by.as_deref(), Some("hand"), "{c1:?}");
    let c2 = rows(&app, "c2").await;
    assert!(
        c2[0].removed_at.is_none(),
        "still following: still autofollow's"
    );
    let preview: Value = app
        .http
        .post(format!("{}/admin/reapply?dry_run=true", app.admin))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(preview["changed"], 0, "not added back: {preview:#}");
    app.contact(
        "ContactTagUpdate",
        "c1",
        json!({"tags": ["vip", "renewal"]}),
    )
    .await;
    app.drain().await;
    let after = app.followers_calls().await;
    let last = after.last().unwrap();
    assert_eq!(
        (last.0.as_str(), &last.2),
        ("POST", &json!([ALICE])),
        "a new event decides again"
    );
    assert!(rows(&app, "c1").await[0].removed_at.is_none());
    app.shutdown().await;
}

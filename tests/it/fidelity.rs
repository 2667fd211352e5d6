//! Event fidelity: what each event type says about the contact, and what it leaves unsaid.

use autofollow::model::ids::{ContactId, LocationId, OpportunityId};
use autofollow::model::record::EventStatus;
use serde_json::json;

use crate::common::service::{LOCATION, accepted, spawn_app};

/// A contact event without `tags` says nothing about the tags: a rule on a removed tag does
/// not fire, and the tags known before still count.
#[tokio::test]
async fn a_contact_body_without_tags_leaves_the_known_tags_as_they_were() {
    let rules = "rules:\n  - name: lost-vip\n    when: {tag_removed: vip}\n    remove: [alice]\n  - name: vip-owner\n    events: [ContactUpdate]\n    when: {has_tag: vip}\n    add: [bob]\n";
    let app = spawn_app(rules).await;
    app.ghl_accepts_the_rest().await;
    let first = app
        .contact("ContactTagUpdate", "c1", json!({"tags": ["vip"]}))
        .await;
    app.drain().await;
    assert_eq!(app.event(first).await.status, EventStatus::Done);
    let update = app
        .contact("ContactUpdate", "c1", json!({"firstName": "Ann"}))
        .await;
    app.drain().await;
    let decision = app.decisions(update).await.pop().unwrap();
    assert_eq!(
        decision.matched,
        vec!["vip-owner".to_owned()],
        "{decision:?}"
    );
    // A tag update without `tags` does say the last tag went.
    let emptied = app.contact("ContactTagUpdate", "c1", json!({})).await;
    app.drain().await;
    let decision = app.decisions(emptied).await.pop().unwrap();
    assert_eq!(
        decision.matched,
        vec!["lost-vip".to_owned()],
        "{decision:?}"
    );
    app.shutdown().await;
}

/// GoHighLevel is never called for a deleted contact: its queued events end skipped, and
/// what was remembered of it is forgotten (its history stays). A deleted opportunity is not
/// decided on, and its stage is forgotten.
#[tokio::test]
async fn deleted_records_are_never_called_and_are_forgotten() {
    let app = spawn_app("rules:\n  - name: all\n    add: [alice]\n").await;
    let (location, contact) = (
        LocationId::parse(LOCATION).unwrap(),
        ContactId::parse("c1").unwrap(),
    );
    let created = app
        .contact("ContactCreate", "c1", json!({"tags": ["vip"]}))
        .await;
    let deleted = app.contact("ContactDelete", "c1", json!({})).await;
    app.drain().await;
    for id in [created, deleted] {
        let e = app.event(id).await;
        assert_eq!(e.status, EventStatus::Skipped, "{id}");
        assert!(e.last_error.unwrap_or_default().contains("deleted"));
    }
    assert!(
        app.ghl.received_requests().await.unwrap().is_empty(),
        "nothing called"
    );
    let state = app
        .store()
        .previous_state(&location, &contact, None)
        .await
        .unwrap();
    assert_eq!(state.tags, None);

    app.ghl_accepts_the_rest().await;
    let o = OpportunityId::parse("o1").unwrap();
    let stage = json!({"type": "OpportunityStageUpdate", "locationId": LOCATION, "id": "o1",
        "contactId": "c2", "pipelineStageId": "s1", "status": "open"});
    accepted(app.post_app(&stage).await).await;
    app.drain().await;
    let calls = app.ghl.received_requests().await.unwrap().len();
    let c2 = ContactId::parse("c2").unwrap();
    let before = app
        .store()
        .previous_state(&location, &c2, Some(&o))
        .await
        .unwrap();
    assert_eq!(before.stage.as_deref(), Some("s1"));
    let gone =
        json!({"type": "OpportunityDelete", "locationId": LOCATION, "id": "o1", "contactId": "c2"});
    let id = accepted(app.post_app(&gone).await).await;
    app.drain().await;
    assert_eq!(app.event(id).await.status, EventStatus::Done);
    assert!(
        app.decisions(id).await[0].matched.is_empty(),
        "not decided on"
    );
    assert_eq!(
        app.ghl.received_requests().await.unwrap().len(),
        calls,
        "nothing called"
    );
    let after = app
        .store()
        .previous_state(&location, &c2, Some(&o))
        .await
        .unwrap();
    assert_eq!(after.stage, None);
    let history = app.store().history(&contact).await.unwrap();
    assert_eq!(history.len(), 2, "history stays");
    app.shutdown().await;
}

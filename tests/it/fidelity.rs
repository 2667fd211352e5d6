//! Event fidelity: what each event type says about the contact, and what it leaves unsaid.

use autofollow::model::ids::{ContactId, LocationId, OpportunityId};
use autofollow::model::record::EventStatus;
use serde_json::json;

use crate::common::service::{LOCATION, Options, accepted, spawn_app, spawn_with};
use crate::common::{ALICE, BOB, CAROL, fixture};

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
    // A settle delay: the create and the delete are decided together.
    let app = spawn_with(Options {
        rules: "rules:\n  - name: all\n    add: [alice]\n".into(),
        settle_delay: "1s".into(),
        ..Options::default()
    })
    .await;
    let (location, contact) = (
        LocationId::parse(LOCATION).unwrap(),
        ContactId::parse("c1").unwrap(),
    );
    let created = app
        .contact("ContactCreate", "c1", json!({"tags": ["vip"]}))
        .await;
    let deleted = app.contact("ContactDelete", "c1", json!({})).await;
    app.wait_for(deleted, EventStatus::Skipped).await;
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
    let staged = accepted(app.post_app(&stage).await).await;
    app.wait_for(staged, EventStatus::Done).await;
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
    app.wait_for(id, EventStatus::Done).await;
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

/// "The new owner follows, the old owner stops" is one rule: autofollow remembers each
/// opportunity's (and contact's) assignee, so `assigned_changed` sees an owner change and
/// `previous_assigned_user` names the owner before it.
#[tokio::test]
async fn an_owner_change_moves_the_follow_from_the_old_owner_to_the_new() {
    let rules = "rules:\n  - name: owner-follows\n    when: {assigned_changed: true}\n    add: [assigned_user]\n    remove: [previous_assigned_user]\n";
    let app = spawn_app(rules).await;
    app.ghl_accepts_the_rest().await;
    let opportunity = |event_type: &str, assignee: Option<&str>| {
        let mut body = json!({"type": event_type, "locationId": LOCATION, "id": "o1",
            "contactId": "c1", "status": "open"});
        if let Some(a) = assignee {
            body["assignedTo"] = json!(a);
        }
        body
    };
    for (event_type, assignee) in [
        ("OpportunityCreate", Some(ALICE)),
        ("OpportunityUpdate", Some(ALICE)),
        ("OpportunityAssignedToUpdate", Some(BOB)),
        ("OpportunityAssignedToUpdate", None),
    ] {
        accepted(app.post_app(&opportunity(event_type, assignee)).await).await;
        app.drain().await;
    }
    let calls: Vec<(String, serde_json::Value)> = app
        .followers_calls()
        .await
        .into_iter()
        .map(|(method, _, users)| (method, users))
        .collect();
    let call = |m: &str, u: &str| (m.to_owned(), json!([u]));
    assert_eq!(
        calls,
        vec![
            call("POST", ALICE),
            call("POST", BOB),
            call("DELETE", ALICE),
            call("DELETE", BOB),
        ],
        "unchanged owner: no call; unassigned: the last owner stops"
    );
    app.shutdown().await;
}

/// Tasks and appointments: their assignee follows the contact, and their own fields are
/// conditions (the official examples, as GoHighLevel sends them).
#[tokio::test]
async fn a_tasks_assignee_and_an_appointments_calendar_user_follow_the_contact() {
    let rules = "rules:\n  - name: task-owner\n    events: [TaskCreate]\n    add: [assigned_user]\n  - name: demo-calendar\n    events: [AppointmentCreate]\n    when: {fields: {appointment.calendarId: BqTwX8QFwXzpegMve9EQ}}\n    add: [assigned_user, carol]\n";
    let app = spawn_with(Options {
        rules: rules.into(),
        location_tokens: vec![("0007BWpSzSwfiuSl0tR2".into(), "pit-appointments".into())],
        ..Options::default()
    })
    .await;
    app.ghl_accepts_the_rest().await;
    for name in ["TaskCreate", "AppointmentCreate", "NoteCreate"] {
        let body: serde_json::Value =
            serde_json::from_slice(&fixture(&format!("app-webhooks/{name}.json"))).unwrap();
        let id = accepted(app.post_app(&body).await).await;
        app.drain().await;
        assert_eq!(app.event(id).await.status, EventStatus::Done, "{name}");
    }
    let mut calls: Vec<(String, serde_json::Value)> = app
        .followers_calls()
        .await
        .into_iter()
        .map(|(_, path, users)| (path, users))
        .collect();
    calls.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        calls,
        vec![
            (
                "/contacts/9NkT25Vor1v4aQatFsv2/followers".to_owned(),
                json!(["YlWd2wuCAZQzh2cH1fVZ", CAROL])
            ),
            (
                "/contacts/CWBf1PR9LvvBkcYqiXlc/followers".to_owned(),
                json!(["63e4qiWDsFJjOYAC8phG"])
            ),
        ]
    );
    app.shutdown().await;
}

/// The users search is read page by page until the email is found.
#[tokio::test]
async fn a_users_search_reads_every_page_until_it_finds_the_email() {
    use wiremock::matchers::{method, path, query_param};
    use wiremock::{Mock, ResponseTemplate};
    let rules = "rules:\n  - name: owner\n    events: [Workflow]\n    add: [assigned_user]\n";
    let location = "t9Ww7bY1xJJ6ThFHZVPC";
    let app = spawn_with(Options {
        rules: rules.into(),
        location_tokens: vec![(location.into(), "pit-wf".into())],
        ..Options::default()
    })
    .await;
    Mock::given(method("GET"))
        .and(path(format!("/locations/{location}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"location": {"id": location, "companyId": "Comp0000000000000001"}}),
        ))
        .mount(&app.ghl)
        .await;
    let others: Vec<serde_json::Value> = (0..100)
        .map(|i| json!({"id": format!("Other{i:015}"), "email": format!("other{i}@example.com")}))
        .collect();
    Mock::given(method("GET"))
        .and(path("/users/search"))
        .and(query_param("skip", "0"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"users": others, "count": 101})),
        )
        .expect(1)
        .mount(&app.ghl)
        .await;
    Mock::given(method("GET"))
        .and(path("/users/search"))
        .and(query_param("skip", "100"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"users": [
            {"id": "RitaRepUserId0000001", "email": "rita@example.com"}], "count": 101})))
        .expect(1)
        .mount(&app.ghl)
        .await;
    app.ghl_accepts_the_rest().await;
    let body: serde_json::Value =
        serde_json::from_slice(&fixture("workflow-webhooks/opportunity-stage.json")).unwrap();
    let id = accepted(app.post_workflow(&body).await).await;
    app.drain().await;
    let decision = app.decisions(id).await.pop().unwrap();
    assert_eq!(decision.plan.add[0].user.as_str(), "RitaRepUserId0000001");
    app.ghl.verify().await;
    app.shutdown().await;
}

/// More than 10 followers are never asked for: the adds beyond GoHighLevel's limit are left
/// out and the decision says which; the record keeps GoHighLevel's status and its
/// `followersAdded`.
#[tokio::test]
async fn adds_beyond_ten_followers_are_left_out_and_said_so() {
    use wiremock::matchers::method;
    use wiremock::{Mock, ResponseTemplate};
    let ids: Vec<String> = (0..11).map(|i| format!("FollowerUser{i:08}")).collect();
    let rules = format!(
        "rules:\n  - name: first\n    add: [{}]\n  - name: second\n    add: [{}]\n",
        ids[..6].join(", "),
        ids[6..].join(", ")
    );
    let app = spawn_app(&rules).await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"followers": ids[..10], "followersAdded": ids[..10]})),
        )
        .mount(&app.ghl)
        .await;
    let id = app.contact("ContactCreate", "c1", json!({})).await;
    app.drain().await;
    let event = app.event(id).await;
    assert_eq!(event.status, EventStatus::Done);
    let note = event.last_error.unwrap_or_default();
    assert!(note.contains("not added: FollowerUser00000010"), "{note}");
    let decision = app.decisions(id).await.pop().unwrap();
    let call = &decision.calls[0];
    assert_eq!((call.users.len(), call.status), (10, Some(200)));
    let added: Vec<&str> = call.changed.iter().flatten().map(|u| u.as_str()).collect();
    assert_eq!(
        added,
        ids[..10].iter().map(String::as_str).collect::<Vec<_>>()
    );
    app.shutdown().await;
}

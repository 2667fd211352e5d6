//! The store contract, run against every backend: SQLite always; PostgreSQL when
//! `AUTOFOLLOW_TEST_DATABASE_URL` is set (`.ci/run` sets it), each test in a fresh schema.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use autofollow::model::event::BodyKind;
use autofollow::model::ids::{ContactId, LocationId, OpportunityId, UserId};
use autofollow::model::plan::{Follow, Plan, PreviousState};
use autofollow::model::record::{Decision, EventStatus, Outcome};
use autofollow::model::task::UndoScope;
use autofollow::store::{
    AwayPeriod, BackfillStep, Claimed, EventFilter, Inserted, InstallKind, InstallState,
    InstallTokens, LedgerChange, NewEvent, NewState, PoolMember, Store,
};

const LEASE: Duration = Duration::from_secs(60);
const WINDOW: Duration = Duration::from_secs(3600);

fn new_event(location: &str, contact: &str, webhook: Option<&str>) -> NewEvent {
    NewEvent {
        kind: BodyKind::App,
        event_type: "ContactCreate".into(),
        location_id: LocationId::parse(location).unwrap(),
        contact_id: ContactId::parse(contact).unwrap(),
        opportunity_id: None,
        webhook_id: webhook.map(str::to_owned),
        body: format!(r#"{{"type":"ContactCreate","locationId":"{location}","id":"{contact}"}}"#),
        available_at: SystemTime::now(),
    }
}

async fn insert(store: &dyn Store, contact: &str) -> i64 {
    insert_into(store, "L1", contact).await
}

async fn insert_into(store: &dyn Store, location: &str, contact: &str) -> i64 {
    match store
        .insert_event(new_event(location, contact, None), WINDOW)
        .await
        .unwrap()
    {
        Inserted::Accepted(id) => id,
        Inserted::Duplicate => panic!("not a duplicate"),
    }
}

fn decision(outcome: &str, error: Option<&str>) -> Decision {
    Decision {
        attempt: 1,
        matched: vec!["rule".into()],
        plan: Plan::default(),
        calls: Vec::new(),
        outcome: Outcome::parse(outcome).expect("an outcome"),
        error: error.map(str::to_owned),
        dry_run: false,
        batch: Vec::new(),
        rules_version: "v1".into(),
    }
}

async fn finish(store: &dyn Store, c: &Claimed, status: EventStatus) -> bool {
    store
        .finish(c, &decision(status.as_str(), None), &NewState::default())
        .await
        .unwrap()
}

fn ids(claimed: &[Claimed]) -> Vec<i64> {
    claimed.iter().map(|c| c.id).collect()
}

async fn enqueue_and_dedup(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let first = s
        .insert_event(new_event("L1", "c1", Some("wh-1")), WINDOW)
        .await
        .unwrap();
    assert!(matches!(first, Inserted::Accepted(_)));
    let again = s
        .insert_event(new_event("L1", "c1", Some("wh-1")), WINDOW)
        .await
        .unwrap();
    assert_eq!(again, Inserted::Duplicate);
    let other = s
        .insert_event(new_event("L1", "c1", Some("wh-2")), WINDOW)
        .await
        .unwrap();
    assert!(matches!(other, Inserted::Accepted(_)));
    // Past the window, the same id is a new delivery.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let later = s
        .insert_event(
            new_event("L1", "c1", Some("wh-1")),
            Duration::from_millis(1),
        )
        .await
        .unwrap();
    assert!(matches!(later, Inserted::Accepted(_)));
    assert_eq!(s.pending().await.unwrap(), 3);
    let Inserted::Accepted(id) = first else {
        unreachable!()
    };
    let record = s.event(id).await.unwrap().unwrap();
    assert_eq!(record.status, EventStatus::Pending);
    assert_eq!(record.contact_id, "c1");
}

async fn concurrent_inserts_of_one_webhook_store_it_once(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .insert_event(new_event("L1", "c1", Some("wh-same")), WINDOW)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), Inserted::Accepted(_)) {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 1);
    assert_eq!(store.pending().await.unwrap(), 1);
}

/// Webhooks stored together (polled in one go, so a batching store takes them in one batch)
/// number in the order they arrived: a contact's events are processed in id order.
async fn inserts_stored_together_number_in_arrival_order(store: Arc<dyn Store>) {
    let mut pending: Vec<_> = (0..64)
        .map(|i| {
            let e = new_event("L1", "c1", Some(&format!("wh-order-{}", 64 - i)));
            Some(Box::pin(store.insert_event(e, WINDOW)))
        })
        .collect();
    let mut answers = vec![None; pending.len()];
    // Polls every insert in index order (each sends its webhook on its first poll), until all
    // are answered.
    std::future::poll_fn(|cx| {
        for (slot, answer) in pending.iter_mut().zip(answers.iter_mut()) {
            if let Some(f) = slot {
                if let std::task::Poll::Ready(r) = f.as_mut().poll(cx) {
                    *answer = Some(r.unwrap());
                    *slot = None;
                }
            }
        }
        if pending.iter().all(Option::is_none) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    let ids: Vec<i64> = answers
        .into_iter()
        .map(|a| match a {
            Some(Inserted::Accepted(id)) => id,
            other => panic!("not accepted: {other:?}"),
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
}

/// Many webhooks at once (committed together by a store that batches): each gets its own
/// answer, and what was acknowledged is stored as sent.
async fn concurrent_inserts_each_get_their_own_answer(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..120)
        .map(|i| {
            let store = Arc::clone(&store);
            // 0..60: their own webhook ids; 60..100: 20 ids sent twice; 100..120: no id.
            let webhook = match i {
                0..60 => Some(format!("wh-{i}")),
                60..100 => Some(format!("wh-twice-{}", i % 20)),
                _ => None,
            };
            let contact = format!("c{}", i % 7);
            tokio::spawn(async move {
                let mut e = new_event("L1", &contact, webhook.as_deref());
                e.body = format!("body-{i}");
                (i, contact, store.insert_event(e, WINDOW).await.unwrap())
            })
        })
        .collect();
    let mut ids = HashSet::new();
    let mut duplicates = 0;
    for t in tasks {
        let (i, contact, answer) = t.await.unwrap();
        match answer {
            Inserted::Accepted(id) => {
                assert!(ids.insert(id), "id {id} given twice");
                let stored = store.event(id).await.unwrap().unwrap();
                assert_eq!(stored.contact_id, contact);
                let history = store
                    .history(&ContactId::parse(&contact).unwrap())
                    .await
                    .unwrap();
                assert!(
                    history.iter().any(|(e, _)| e.event.id == id),
                    "event {i} under its contact"
                );
            }
            Inserted::Duplicate => duplicates += 1,
        }
    }
    assert_eq!(ids.len(), 60 + 20 + 20);
    assert_eq!(duplicates, 20);
    assert_eq!(store.pending().await.unwrap(), 100);
}

async fn claims_are_exclusive(store: Arc<dyn Store>) {
    for contact in 0..30 {
        for _ in 0..3 {
            insert(store.as_ref(), &format!("c{contact}")).await;
        }
    }
    // Four workers claim at once, again and again, finishing what they took.
    let tasks: Vec<_> = (0..4)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let owner = format!("worker-{w}");
                let mut seen = Vec::new();
                for _ in 0..60 {
                    let claimed = store.claim(&owner, 5, LEASE).await.unwrap();
                    for c in &claimed {
                        seen.push((c.id, c.contact_id.to_string()));
                    }
                    for c in &claimed {
                        assert!(finish(store.as_ref(), c, EventStatus::Done).await);
                    }
                    if claimed.is_empty() && store.pending().await.unwrap() == 0 {
                        break;
                    }
                }
                seen
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<i64> = all.iter().map(|(id, _)| *id).collect();
    assert_eq!(unique.len(), all.len(), "an event was claimed twice");
    assert_eq!(all.len(), 90, "every event was claimed once");
    assert_eq!(store.pending().await.unwrap(), 0);
}

async fn one_contact_is_claimed_in_order_one_lease_at_a_time(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let e1 = insert(s, "c1").await;
    let e2 = insert(s, "c1").await;
    let e3 = insert(s, "c1").await;
    let other = insert(s, "c2").await;
    let first = s.claim("a", 10, LEASE).await.unwrap();
    assert_eq!(
        ids(&first),
        vec![e1, other],
        "only the contact's oldest event"
    );
    assert!(
        s.claim("b", 10, LEASE).await.unwrap().is_empty(),
        "nothing of c1 while its oldest event is leased"
    );
    let rest = s.claim_rest("a", &first[0], 10, LEASE).await.unwrap();
    assert_eq!(ids(&rest), vec![e2, e3]);
    assert!(finish(s, &first[0], EventStatus::Done).await);
    assert!(finish(s, &rest[0], EventStatus::Done).await);
    // e3 is still leased by a: nobody else takes it.
    assert!(s.claim("b", 10, LEASE).await.unwrap().is_empty());
    assert_eq!(s.release("a").await.unwrap(), 2, "e3 and c2's event");
    let next = s.claim("b", 10, LEASE).await.unwrap();
    assert_eq!(ids(&next), vec![e3, other]);
    assert_eq!(
        next[0].attempt, 2,
        "a released claim still counted its attempt"
    );
}

async fn expired_leases_are_reclaimed_and_the_old_holder_cannot_finish(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let id = insert(s, "c1").await;
    let taken = s.claim("a", 1, Duration::from_millis(100)).await.unwrap();
    assert_eq!(ids(&taken), vec![id]);
    assert!(s.claim("b", 1, LEASE).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(150)).await;
    let retaken = s.claim("b", 1, LEASE).await.unwrap();
    assert_eq!(ids(&retaken), vec![id]);
    assert_eq!(retaken[0].attempt, 2);
    // The follower list: b, the holder now, records it; a, whose lease lapsed, cannot
    // overwrite it (a late answer of a's would otherwise be trusted by the next event).
    let (l, c) = (
        LocationId::parse("L1").unwrap(),
        ContactId::parse("c1").unwrap(),
    );
    let since = SystemTime::now() - Duration::from_secs(5);
    let newer = [UserId::parse("u-newer").unwrap()];
    assert!(
        s.set_known_followers(&l, &c, &newer, Some(("b", id)))
            .await
            .unwrap()
    );
    assert!(
        !s.set_known_followers(
            &l,
            &c,
            &[UserId::parse("u-stale").unwrap()],
            Some(("a", id))
        )
        .await
        .unwrap(),
        "a lost its lease"
    );
    assert_eq!(
        s.known_followers(&l, &c, since).await.unwrap(),
        Some(newer.to_vec())
    );
    assert!(
        !finish(s, &taken[0], EventStatus::Done).await,
        "a lost its lease"
    );
    assert!(finish(s, &retaken[0], EventStatus::Done).await);
    assert_eq!(
        s.event(id).await.unwrap().unwrap().status,
        EventStatus::Done
    );
    assert_eq!(s.decisions(id).await.unwrap().len(), 1);
}

async fn a_holder_extends_its_leases_and_only_its_own(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let first = insert(s, "c1").await;
    let second = insert(s, "c2").await;
    let short = Duration::from_millis(300);
    let taken = s.claim("a", 2, short).await.unwrap();
    assert_eq!(ids(&taken), vec![first, second]);
    assert_eq!(s.extend("b", &[first, second], LEASE).await.unwrap(), 0);
    assert_eq!(s.extend("a", &[first], LEASE).await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The extended lease holds; the other one expired and moves on.
    let retaken = s.claim("b", 2, LEASE).await.unwrap();
    assert_eq!(ids(&retaken), vec![second]);
    assert_eq!(s.extend("a", &[first, second], LEASE).await.unwrap(), 1);
    assert!(finish(s, &taken[0], EventStatus::Done).await);
    assert_eq!(
        s.extend("a", &[first], LEASE).await.unwrap(),
        0,
        "a finished event holds no lease"
    );
}

/// A contact's due event waits while a newer webhook about it is settling; then both are
/// taken together. Other contacts are not held back.
async fn a_settling_webhook_holds_back_its_contacts_earlier_events(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let first = insert(s, "c1").await;
    let mut later = new_event("L1", "c1", None);
    later.available_at = SystemTime::now() + Duration::from_millis(300);
    let Inserted::Accepted(second) = s.insert_event(later, WINDOW).await.unwrap() else {
        panic!("accepted")
    };
    let other = insert(s, "c2").await;
    assert_eq!(ids(&s.claim("a", 10, LEASE).await.unwrap()), vec![other]);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let taken = s.claim("a", 10, LEASE).await.unwrap();
    assert_eq!(ids(&taken), vec![first]);
    let rest = s.claim_rest("a", &taken[0], 10, LEASE).await.unwrap();
    assert_eq!(ids(&rest), vec![second]);
}

async fn retries_wait_until_their_time(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let id = insert(s, "c1").await;
    let c = s.claim("a", 1, LEASE).await.unwrap().remove(0);
    let at = SystemTime::now() + Duration::from_millis(300);
    assert!(
        s.retry_at(&c, at, &decision("retry", Some("GoHighLevel answered 503")))
            .await
            .unwrap()
    );
    assert!(s.claim("a", 1, LEASE).await.unwrap().is_empty());
    let record = s.event(id).await.unwrap().unwrap();
    assert_eq!(
        record.last_error.as_deref(),
        Some("GoHighLevel answered 503")
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    let again = s.claim("a", 1, LEASE).await.unwrap();
    assert_eq!((again[0].id, again[0].attempt), (id, 2));
    // Deferring (rate limit) does not count an attempt.
    assert!(
        s.defer(&again[0], SystemTime::now() + Duration::from_millis(50))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    let third = s.claim("a", 1, LEASE).await.unwrap();
    assert_eq!(third[0].attempt, 2);
}

/// Sleeps until just after `t` (a hold's end: the stores compare whole milliseconds).
async fn past(t: SystemTime) {
    let left = t.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(5)).await;
}

/// A deferral holds the whole location back, with one row whatever its backlog; its events
/// keep their order, and other locations go on.
async fn a_deferral_holds_the_location(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let first = insert(s, "c1").await;
    let second = insert(s, "c2").await;
    let third = insert(s, "c3").await;
    let taken = s.claim("a", 2, LEASE).await.unwrap();
    assert_eq!(ids(&taken), vec![first, second]);
    let elsewhere = insert_into(s, "L2", "c9").await;
    // Long enough to move the location's waiting events (the third) out of the claim's way.
    let until = SystemTime::now() + Duration::from_millis(800);
    assert!(s.defer(&taken[0], until).await.unwrap());
    // A deferral by a worker that lost the lease changes nothing.
    assert!(!s.defer(&taken[0], until).await.unwrap());
    // A shorter deferral does not shorten the hold.
    let short = SystemTime::now() + Duration::from_millis(20);
    assert!(s.defer(&taken[1], short).await.unwrap());
    past(short).await;
    // Only the other location's event is claimed while the hold lasts.
    assert_eq!(
        ids(&s.claim("a", 10, LEASE).await.unwrap()),
        vec![elsewhere]
    );
    assert!(s.claim("b", 10, LEASE).await.unwrap().is_empty());
    past(until).await;
    // Then the location's events come back in their order, the deferred ones first.
    let after = s.claim("a", 10, LEASE).await.unwrap();
    assert_eq!(ids(&after), vec![first, second, third]);
    assert_eq!(after[0].attempt, 1, "a deferral is not an attempt");
    // A short hold (the next token of a budget) holds as well.
    let short = SystemTime::now() + Duration::from_millis(150);
    assert!(s.defer(&after[0], short).await.unwrap());
    s.release("a").await.unwrap();
    assert_eq!(
        ids(&s.claim("a", 10, LEASE).await.unwrap()),
        vec![elsewhere]
    );
    past(short).await;
    assert_eq!(
        ids(&s.claim("a", 10, LEASE).await.unwrap()),
        vec![first, second, third]
    );
}

async fn dead_letters_are_listed_and_replayed(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let id = insert(s, "c1").await;
    let c = s.claim("a", 1, LEASE).await.unwrap().remove(0);
    // An earlier attempt's decision, then the last: listings show the last one.
    let earlier = decision("retry", Some("GoHighLevel answered 503"));
    assert!(s.retry_at(&c, SystemTime::now(), &earlier).await.unwrap());
    let c = s.claim("a", 1, LEASE).await.unwrap().remove(0);
    let d = decision("failed", Some("gave up after 12 attempts"));
    assert!(s.finish(&c, &d, &NewState::default()).await.unwrap());
    let stats = s.queue_stats().await.unwrap();
    assert_eq!((stats.pending, stats.failed), (0, 1));
    let failed = s
        .list_events(&EventFilter {
            status: Some(EventStatus::Failed),
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].last_decision.as_ref(), Some(&d));
    // An event with no decision yet lists none.
    let undecided = insert(s, "c2").await;
    let all = s.list_events(&EventFilter::default()).await.unwrap();
    let listed: Vec<_> = all
        .iter()
        .map(|e| {
            (
                e.event.id,
                e.last_decision.as_ref().map(|d| d.outcome.as_str()),
            )
        })
        .collect();
    assert_eq!(listed, vec![(undecided, None), (id, Some("failed"))]);
    assert_eq!(s.replay(&[id, 9999]).await.unwrap(), 1);
    let again = s.claim("a", 10, LEASE).await.unwrap();
    let attempts: Vec<_> = again.iter().map(|c| (c.id, c.attempt)).collect();
    assert_eq!(attempts, vec![(id, 1), (undecided, 1)]);
    let history = s.history(&ContactId::parse("c1").unwrap()).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].1.len(), 2);
}

async fn finishing_leaves_the_contact_state(store: Arc<dyn Store>) {
    let s = store.as_ref();
    insert(s, "c1").await;
    insert(s, "c1").await;
    let first = s.claim("a", 1, LEASE).await.unwrap();
    let rest = s.claim_rest("a", &first[0], 10, LEASE).await.unwrap();
    let state = |tags: &[&str], stage: &str| NewState {
        location_id: Some(LocationId::parse("L1").unwrap()),
        contact_id: Some(ContactId::parse("c1").unwrap()),
        tags: Some(tags.iter().map(|t| (*t).to_owned()).collect()),
        stage: Some((OpportunityId::parse("o1").unwrap(), stage.to_owned())),
        assigned: None,
        ledger: Vec::new(),
        followers: None,
    };
    let (d, s1, s2) = (
        decision("done", None),
        state(&["a"], "new"),
        state(&["a", "vip"], "won"),
    );
    assert!(
        s.finish_all(&[(&first[0], &d, &s1), (&rest[0], &d, &s2),])
            .await
            .unwrap()
    );
    let previous = s
        .previous_state(
            &LocationId::parse("L1").unwrap(),
            &ContactId::parse("c1").unwrap(),
            Some(&OpportunityId::parse("o1").unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(previous.tags, Some(vec!["a".to_owned(), "vip".to_owned()]));
    assert_eq!(previous.stage.as_deref(), Some("won"));
    let (l, c) = (
        LocationId::parse("L1").unwrap(),
        ContactId::parse("c1").unwrap(),
    );
    let users = [UserId::parse("u1").unwrap()];
    s.set_known_followers(&l, &c, &users, None).await.unwrap();
    let since = SystemTime::now() - Duration::from_secs(5);
    assert_eq!(
        s.known_followers(&l, &c, since).await.unwrap(),
        Some(users.to_vec())
    );
    let future = SystemTime::now() + Duration::from_secs(5);
    assert_eq!(s.known_followers(&l, &c, future).await.unwrap(), None);
}

/// The worker's claim: each contact's due events together, oldest first (at most `batch`),
/// with what is known of the contact; the follower list a finish leaves is part of it.
async fn a_claimed_group_brings_its_events_and_what_is_known_of_the_contact(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let (l, c1) = (
        LocationId::parse("L1").unwrap(),
        ContactId::parse("c1").unwrap(),
    );
    let user = |u: &str| UserId::parse(u).unwrap();
    insert(s, "c1").await;
    let first = s.claim("w", 1, LEASE).await.unwrap().remove(0);
    let state = NewState {
        location_id: Some(l.clone()),
        contact_id: Some(c1.clone()),
        tags: Some(vec!["a".into(), "vip".into()]),
        assigned: Some((None, Some(user("bob")))),
        ledger: vec![added("u1", "r1")],
        followers: Some(vec![user("u1"), user("u2")]),
        ..NewState::default()
    };
    assert!(
        s.finish(&first, &decision("done", None), &state)
            .await
            .unwrap()
    );
    let (a, b) = (insert(s, "c1").await, insert(s, "c1").await);
    let c = insert(s, "c2").await;
    s.mark_token_failing(&l, "fp1", "401").await.unwrap();
    let before = SystemTime::now() - Duration::from_secs(5);
    let groups = s.claim_groups("w", 10, 100, LEASE, None).await.unwrap();
    let events: Vec<Vec<i64>> = groups.iter().map(|g| ids(&g.events)).collect();
    assert_eq!(events, vec![vec![a, b], vec![c]]);
    let known = &groups[0].contact;
    assert_eq!(known.previous.tags, Some(vec!["a".into(), "vip".into()]));
    assert_eq!(known.previous.assigned, Some(Some(user("bob"))));
    let owned: Vec<_> = known
        .owned
        .iter()
        .map(|o| (o.user.as_str(), o.rule.as_str()))
        .collect();
    assert_eq!(owned, vec![("u1", "r1")]);
    let (list, seen) = known.followers.clone().unwrap();
    assert_eq!(list, vec![user("u1"), user("u2")]);
    let before = before
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    assert!(i128::from(seen) >= before as i128);
    assert_eq!(known.token_refused.as_deref(), Some("fp1"));
    let other = &groups[1].contact;
    assert_eq!(
        (other.previous.tags.clone(), other.followers.clone()),
        (None, None)
    );
    assert!(other.owned.is_empty() && other.previous.assigned.is_none());
    assert_eq!(s.contact_snapshot(&l, &c1).await.unwrap(), *known);
    // Leased: nobody else gets them; a smaller batch takes the oldest first.
    assert!(
        s.claim_groups("x", 10, 100, LEASE, None)
            .await
            .unwrap()
            .is_empty()
    );
    let (d, e) = (insert(s, "c3").await, insert(s, "c3").await);
    insert(s, "c3").await;
    let groups = s.claim_groups("x", 10, 2, LEASE, None).await.unwrap();
    assert_eq!(ids(&groups[0].events), vec![d, e]);
}

async fn a_refused_token_parks_the_location_until_resumed(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let id = insert(s, "c1").await;
    let c = s.claim("a", 1, LEASE).await.unwrap().remove(0);
    let l = LocationId::parse("L1").unwrap();
    s.mark_token_failing(&l, "fp1", "401").await.unwrap();
    assert!(s.park(&c, &decision("waiting", Some("401"))).await.unwrap());
    assert_eq!(s.token_failing(&l).await.unwrap().as_deref(), Some("fp1"));
    assert_eq!(
        s.token_failures().await.unwrap(),
        vec![(l.clone(), "fp1".to_owned())]
    );
    assert_eq!(s.parked_locations().await.unwrap(), vec![l.clone()]);
    assert!(s.claim("a", 1, LEASE).await.unwrap().is_empty());
    assert_eq!(s.resume_location(&l).await.unwrap(), 1);
    assert_eq!(s.token_failing(&l).await.unwrap(), None);
    assert_eq!(ids(&s.claim("a", 1, LEASE).await.unwrap()), vec![id]);
}

async fn pruning_deletes_old_finished_events_only(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let done = insert(s, "c1").await;
    let waiting = insert(s, "c2").await;
    let c = s.claim("a", 10, LEASE).await.unwrap();
    let finished = c.iter().find(|c| c.id == done).unwrap();
    assert!(finish(s, finished, EventStatus::Done).await);
    s.release("a").await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(s.prune(SystemTime::now(), WINDOW).await.unwrap(), 1);
    assert!(s.event(done).await.unwrap().is_none());
    assert!(s.decisions(done).await.unwrap().is_empty());
    assert!(s.event(waiting).await.unwrap().is_some());
    assert_eq!(s.pending().await.unwrap(), 1);
    s.ping().await.unwrap();
}

async fn erasing_a_contact_deletes_its_events_decisions_and_state(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let (l, c) = (
        LocationId::parse("L1").unwrap(),
        ContactId::parse("c1").unwrap(),
    );
    let o = OpportunityId::parse("o1").unwrap();
    // The member the contact was dealt is forgotten too: dealt again, it takes a new turn.
    let even = members(&[("alice", 1), ("bob", 1)]);
    let dealt = s.take_turn((&l, &c), "sales", &even).await.unwrap();
    assert_eq!(dealt.as_ref().map(UserId::as_str), Some("alice"));
    let with_opportunity = NewEvent {
        opportunity_id: Some(o.clone()),
        ..new_event("L1", "c1", Some("wh-1"))
    };
    s.insert_event(with_opportunity, WINDOW).await.unwrap();
    let waiting = insert(s, "c1").await;
    let other = insert(s, "c2").await;
    let first = s.claim("a", 1, LEASE).await.unwrap().remove(0);
    let state = NewState {
        location_id: Some(l.clone()),
        contact_id: Some(c.clone()),
        tags: Some(vec!["vip".into()]),
        stage: Some((o.clone(), "won".into())),
        assigned: Some((Some(o.clone()), Some(UserId::parse("u1").unwrap()))),
        ledger: vec![added("u1", "r1")],
        followers: None,
    };
    assert!(
        s.finish(&first, &decision("done", None), &state)
            .await
            .unwrap()
    );
    let users = [UserId::parse("u1").unwrap()];
    s.set_known_followers(&l, &c, &users, None).await.unwrap();
    let erased = s.erase_contact(&c).await.unwrap();
    assert_eq!((erased.events, erased.decisions, erased.states), (2, 1, 6));
    let again = s.take_turn((&l, &c), "sales", &even).await.unwrap();
    assert_eq!(
        again.as_ref().map(UserId::as_str),
        Some("bob"),
        "the pick was erased"
    );
    assert!(s.history(&c).await.unwrap().is_empty());
    assert!(
        s.event(waiting).await.unwrap().is_none(),
        "waiting work too"
    );
    let previous = s.previous_state(&l, &c, Some(&o)).await.unwrap();
    assert_eq!(previous, PreviousState::default());
    let long_ago = SystemTime::now() - Duration::from_secs(3600);
    assert_eq!(s.known_followers(&l, &c, long_ago).await.unwrap(), None);
    // Other contacts are untouched; a re-delivery of an erased webhook is still a duplicate.
    assert!(s.event(other).await.unwrap().is_some());
    let again = s
        .insert_event(new_event("L1", "c1", Some("wh-1")), WINDOW)
        .await
        .unwrap();
    assert_eq!(again, Inserted::Duplicate);
    assert_eq!(s.erase_contact(&c).await.unwrap().events, 0);
}

fn tokens(id: &str, access: &str, refresh: Option<&str>) -> InstallTokens {
    InstallTokens {
        id: id.into(),
        kind: InstallKind::Location,
        company_id: Some("Co1".into()),
        access_token: Some(access.into()),
        refresh_token: refresh.map(str::to_owned),
        scopes: "contacts.write".into(),
        issued_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000)),
        expires_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(87_400)),
    }
}

async fn installations_are_saved_read_and_replaced(s: Arc<dyn Store>) {
    assert_eq!(s.installation("L1").await.unwrap(), None);
    assert!(
        s.save_installation(&tokens("L1", "a1", Some("r1")), None)
            .await
            .unwrap()
    );
    let first = s.installation("L1").await.unwrap().unwrap();
    assert_eq!(first.tokens, tokens("L1", "a1", Some("r1")));
    assert_eq!(
        (first.state, first.version, first.refreshing),
        (InstallState::Active, 1, None)
    );
    // A re-install replaces the tokens and reactivates.
    assert!(
        s.set_install_state("L1", InstallState::Reauthorize, Some("refused"))
            .await
            .unwrap()
    );
    let parked = s.installation("L1").await.unwrap().unwrap();
    assert_eq!(
        (parked.state, parked.problem.as_deref(), parked.version),
        (InstallState::Reauthorize, Some("refused"), 2)
    );
    assert!(
        s.save_installation(&tokens("L1", "a2", Some("r2")), None)
            .await
            .unwrap()
    );
    let again = s.installation("L1").await.unwrap().unwrap();
    assert_eq!(
        (again.state, again.problem, again.version),
        (InstallState::Active, None, 3)
    );
    assert_eq!(again.tokens.access_token.as_deref(), Some("a2"));
    // Uninstalling deletes the tokens and keeps the row.
    assert!(
        s.save_installation(&tokens("L2", "b1", None), None)
            .await
            .unwrap()
    );
    assert!(
        s.set_install_state("L1", InstallState::Uninstalled, None)
            .await
            .unwrap()
    );
    let gone = s.installation("L1").await.unwrap().unwrap();
    assert_eq!(
        (
            gone.state,
            gone.tokens.access_token,
            gone.tokens.refresh_token
        ),
        (InstallState::Uninstalled, None, None)
    );
    let all: Vec<String> = s
        .installations()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.tokens.id)
        .collect();
    assert_eq!(all, ["L1", "L2"]);
    assert!(
        !s.set_install_state("nope", InstallState::Active, None)
            .await
            .unwrap()
    );
}

async fn one_refresher_at_a_time_and_only_its_own_answer_is_saved(s: Arc<dyn Store>) {
    s.save_installation(&tokens("L1", "a1", Some("r1")), None)
        .await
        .unwrap();
    // Many try at once: exactly one takes the lease.
    let mut tries = Vec::new();
    for i in 0..8 {
        let s = Arc::clone(&s);
        tries.push(tokio::spawn(async move {
            s.begin_refresh("L1", &format!("w{i}"), 1, LEASE)
                .await
                .unwrap()
        }));
    }
    let mut taken = 0;
    for t in tries {
        taken += usize::from(t.await.unwrap());
    }
    assert_eq!(taken, 1);
    let holder = s
        .installation("L1")
        .await
        .unwrap()
        .unwrap()
        .refreshing
        .unwrap();
    // Someone else's answer is not saved; the holder's is, and lets the lease go.
    let other = if holder == "w0" { "w1" } else { "w0" };
    assert!(
        !s.save_installation(&tokens("L1", "x", Some("x")), Some(other))
            .await
            .unwrap()
    );
    assert!(
        s.save_installation(&tokens("L1", "a2", Some("r2")), Some(&holder))
            .await
            .unwrap()
    );
    let saved = s.installation("L1").await.unwrap().unwrap();
    assert_eq!(
        (
            saved.version,
            saved.refreshing,
            saved.tokens.refresh_token.as_deref()
        ),
        (2, None, Some("r2"))
    );
    // A refresher that read an older version cannot take the lease.
    assert!(!s.begin_refresh("L1", "w9", 1, LEASE).await.unwrap());
    // A lease let go, or lapsed, can be taken again.
    assert!(s.begin_refresh("L1", "w9", 2, LEASE).await.unwrap());
    s.end_refresh("L1", "w9").await.unwrap();
    assert!(
        s.begin_refresh("L1", "w8", 2, Duration::from_millis(50))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(
        !s.save_installation(&tokens("L1", "late", None), Some("w8"))
            .await
            .unwrap(),
        "its lease lapsed"
    );
    assert!(s.begin_refresh("L1", "w7", 2, LEASE).await.unwrap());
    // No refresh of an installation that is not active.
    s.set_install_state("L1", InstallState::Reauthorize, None)
        .await
        .unwrap();
    assert!(!s.begin_refresh("L1", "w6", 4, LEASE).await.unwrap());
}

/// A deleted opportunity's stage is forgotten; a deleted contact's tags, known followers and
/// its opportunities' stages too, and nothing of another contact.
async fn forgetting_a_deleted_record_clears_its_state_only(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let (l, o1, o2) = (
        LocationId::parse("L1").unwrap(),
        OpportunityId::parse("o1").unwrap(),
        OpportunityId::parse("o2").unwrap(),
    );
    for (contact, o) in [("c1", &o1), ("c1", &o2), ("c2", &o1)] {
        let mut e = new_event("L1", contact, None);
        e.opportunity_id = (contact == "c1").then(|| o.clone());
        s.insert_event(e, WINDOW).await.unwrap();
        let claimed = s.claim("a", 1, LEASE).await.unwrap();
        let state = NewState {
            location_id: Some(l.clone()),
            contact_id: Some(ContactId::parse(contact).unwrap()),
            tags: Some(vec!["vip".to_owned()]),
            stage: (contact == "c1").then(|| (o.clone(), "won".to_owned())),
            assigned: Some((Some(o.clone()), Some(UserId::parse("u1").unwrap()))),
            ledger: vec![added("u1", "r1")],
            followers: None,
        };
        let d = decision("done", None);
        assert!(s.finish_all(&[(&claimed[0], &d, &state)]).await.unwrap());
    }
    let (c1, c2) = (
        ContactId::parse("c1").unwrap(),
        ContactId::parse("c2").unwrap(),
    );
    let users = [UserId::parse("u1").unwrap()];
    s.set_known_followers(&l, &c1, &users, None).await.unwrap();
    s.forget(&l, &c1, Some(&o2)).await.unwrap();
    let stage1 = s.previous_state(&l, &c1, Some(&o1)).await.unwrap().stage;
    let stage2 = s.previous_state(&l, &c1, Some(&o2)).await.unwrap().stage;
    assert_eq!((stage1.as_deref(), stage2), (Some("won"), None));
    s.forget(&l, &c1, None).await.unwrap();
    let gone = s.previous_state(&l, &c1, Some(&o1)).await.unwrap();
    assert_eq!((gone.tags, gone.stage), (None, None));
    let epoch = SystemTime::UNIX_EPOCH;
    assert_eq!(s.known_followers(&l, &c1, epoch).await.unwrap(), None);
    let kept = s.previous_state(&l, &c2, None).await.unwrap();
    assert_eq!(kept.tags, Some(vec!["vip".to_owned()]));
    assert!(
        s.owned(&l, &c1, true).await.unwrap().is_empty(),
        "the ledger too"
    );
    assert_eq!(s.owned(&l, &c2, false).await.unwrap().len(), 1);
}

fn added(user: &str, rule: &str) -> LedgerChange {
    LedgerChange::Added {
        user: UserId::parse(user).unwrap(),
        rule: rule.to_owned(),
        follow: Follow::WhileMatching,
        subject: None,
        rules_version: "v1".to_owned(),
    }
}

/// Finishes one new event of contact c1 with these ledger changes; its id.
async fn finish_with_ledger(s: &dyn Store, ledger: Vec<LedgerChange>) -> i64 {
    insert(s, "c1").await;
    let claimed = s.claim("a", 1, LEASE).await.unwrap().remove(0);
    let state = NewState {
        location_id: Some(LocationId::parse("L1").unwrap()),
        contact_id: Some(ContactId::parse("c1").unwrap()),
        ledger,
        ..NewState::default()
    };
    assert!(
        s.finish(&claimed, &decision("done", None), &state)
            .await
            .unwrap()
    );
    claimed.id
}

/// The ledger: a row per user and rule, kept with its first event while live; a rule's row
/// or all of a user's rows end; an ended row stays listed, and a new add starts it again.
async fn the_ownership_ledger_records_adds_and_ends(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let (l, c) = (
        LocationId::parse("L1").unwrap(),
        ContactId::parse("c1").unwrap(),
    );
    let first = finish_with_ledger(
        s,
        vec![added("u1", "a"), added("u1", "b"), added("u2", "a")],
    )
    .await;
    finish_with_ledger(s, vec![added("u1", "a")]).await;
    let live = s.owned(&l, &c, false).await.unwrap();
    assert_eq!(live.len(), 3);
    assert!(
        live.iter().all(|o| o.event_id == first),
        "kept with its first event"
    );
    let u1 = UserId::parse("u1").unwrap();
    let end = |user: &str, rule: Option<&str>| LedgerChange::Ended {
        user: UserId::parse(user).unwrap(),
        rule: rule.map(str::to_owned),
    };
    finish_with_ledger(s, vec![end("u1", Some("a"))]).await;
    let live = s.owned(&l, &c, false).await.unwrap();
    let rules: Vec<(&str, &str)> = live
        .iter()
        .map(|o| (o.user.as_str(), o.rule.as_str()))
        .collect();
    assert_eq!(rules, [("u1", "b"), ("u2", "a")]);
    let third = finish_with_ledger(s, vec![end("u1", None)]).await;
    let live = s.owned(&l, &c, false).await.unwrap();
    assert!(live.iter().all(|o| o.user != u1));
    let all = s.owned(&l, &c, true).await.unwrap();
    assert_eq!(all.len(), 3, "ended rows stay listed");
    assert!(
        all.iter()
            .filter(|o| o.user == u1)
            .all(|o| o.removed_at.is_some())
    );
    let again = finish_with_ledger(s, vec![added("u1", "b")]).await;
    let live = s.owned(&l, &c, false).await.unwrap();
    let b = live.iter().find(|o| o.user == u1).unwrap();
    assert_eq!(
        (b.rule.as_str(), b.event_id, b.follow),
        ("b", again, Follow::WhileMatching)
    );
    assert!(again > third);
}

/// Many groups finished at once (PostgreSQL records them in one transaction): each is
/// recorded whole, one whose lease was taken records nothing and does not stop the others,
/// and a group's ledger that ends then adds one user keeps it, as when applied in order.
async fn groups_finished_at_once_are_each_recorded_whole(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let (l, lost) = (LocationId::parse("L1").unwrap(), insert(s, "lost").await);
    let stale = s.claim("a", 1, Duration::from_millis(100)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(ids(&s.claim("b", 1, LEASE).await.unwrap()), vec![lost]);
    for i in 0..40 {
        insert(s, &format!("c{i}")).await;
    }
    let mut claimed = s.claim("a", 50, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 40);
    claimed.extend(stale);
    let mut finishing = tokio::task::JoinSet::new();
    for event in claimed {
        let store = Arc::clone(&store);
        finishing.spawn(async move {
            let contact = ContactId::parse(&event.contact_id).unwrap();
            let mut ledger = vec![added("u1", "r")];
            if contact.as_str() == "c0" {
                let end = LedgerChange::Ended {
                    user: UserId::parse("u1").unwrap(),
                    rule: None,
                };
                ledger.insert(0, end);
            }
            let state = NewState {
                location_id: Some(LocationId::parse("L1").unwrap()),
                contact_id: Some(contact.clone()),
                tags: Some(vec![format!("tag-{contact}")]),
                ledger,
                followers: Some(vec![UserId::parse("u1").unwrap()]),
                ..NewState::default()
            };
            let d = decision("done", None);
            let held = store.finish(&event, &d, &state).await.unwrap();
            (contact, event.id, held)
        });
    }
    let since = SystemTime::now() - Duration::from_secs(60);
    while let Some(done) = finishing.join_next().await {
        let (contact, id, held) = done.unwrap();
        let decisions = s.decisions(id).await.unwrap().len();
        let status = s.event(id).await.unwrap().unwrap().status;
        let known = s.known_followers(&l, &contact, since).await.unwrap();
        let tags = s.previous_state(&l, &contact, None).await.unwrap().tags;
        let live = s.owned(&l, &contact, false).await.unwrap().len();
        if id == lost {
            assert!(!held, "its lease was taken");
            assert_eq!(
                (decisions, status, known, tags, live),
                (0, EventStatus::Pending, None, None, 0)
            );
            continue;
        }
        assert!(held, "{contact}");
        let (tag, users) = (format!("tag-{contact}"), vec![UserId::parse("u1").unwrap()]);
        assert_eq!((decisions, status), (1, EventStatus::Done), "{contact}");
        assert_eq!((known, tags), (Some(users), Some(vec![tag])), "{contact}");
        assert_eq!(live, 1, "{contact}");
    }
}

fn members(weights: &[(&str, u32)]) -> Vec<PoolMember> {
    weights
        .iter()
        .map(|(u, w)| (UserId::parse(u).unwrap(), *w))
        .collect()
}

/// Takes `n` turns; the users in order.
async fn turns(
    s: &dyn Store,
    location: &str,
    pool: &str,
    of: &[PoolMember],
    n: usize,
) -> Vec<String> {
    static CONTACTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let location = LocationId::parse(location).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let next = CONTACTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let contact = ContactId::parse(&format!("dealt{next}")).unwrap();
        let user = s.take_turn((&location, &contact), pool, of).await.unwrap();
        out.push(user.expect("a member").as_str().to_owned());
    }
    out
}

/// A preview's dealer seeded from `pool_state` deals exactly what the store then deals, and
/// reading the state changes nothing; a dealt contact's state names its member.
async fn a_dealer_seeded_from_the_store_deals_what_the_store_would(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let sales = members(&[("alice", 2), ("bob", 1)]);
    turns(s, "L1", "sales", &sales, 4).await;
    let location = LocationId::parse("L1").unwrap();
    let contacts: Vec<ContactId> = (0..9)
        .map(|i| ContactId::parse(&format!("seeded{i}")).unwrap())
        .collect();
    let mut dealer = autofollow::rules::deal::Dealer::default();
    let mut previewed = Vec::new();
    for c in &contacts {
        let state = s.pool_state((&location, c), "sales").await.unwrap();
        assert_eq!(state.pick, None);
        dealer.seed((&location, c), "sales", state);
        previewed.push(dealer.take((&location, c), "sales", &sales));
    }
    let handed =
        |turns: Vec<autofollow::store::PoolTurns>| -> u64 { turns.iter().map(|t| t.handed).sum() };
    assert_eq!(
        handed(s.pool_turns().await.unwrap()),
        4,
        "previews count nothing"
    );
    let mut dealt = Vec::new();
    for c in &contacts {
        dealt.push(s.take_turn((&location, c), "sales", &sales).await.unwrap());
    }
    assert_eq!(previewed, dealt);
    let state = s
        .pool_state((&location, &contacts[1]), "sales")
        .await
        .unwrap();
    assert_eq!(state.pick, dealt[1]);
    let current: i64 = state.current.iter().map(|(_, c)| c).sum();
    assert_eq!((state.current.len(), current), (2, 0), "{state:?}");
}

/// A pool's turns go by smooth weighted round robin, counted per location and pool; a
/// member left out (away) gets none and the others share its turns; every turn is counted.
async fn a_pool_hands_out_turns_by_weight_per_location(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let sales = members(&[("alice", 2), ("bob", 1)]);
    let first = turns(s, "L1", "sales", &sales, 6).await;
    assert_eq!(first, ["alice", "bob", "alice", "alice", "bob", "alice"]);
    let rest = turns(s, "L1", "sales", &sales, 24).await;
    let alice = first.iter().chain(&rest).filter(|u| *u == "alice").count();
    assert_eq!(alice, 20, "2:1 over 30 turns");
    // Another location and another pool keep counts of their own.
    assert_eq!(turns(s, "L2", "sales", &sales, 1).await, ["alice"]);
    let other = members(&[("bob", 1), ("carol", 1)]);
    assert_eq!(turns(s, "L1", "support", &other, 2).await, ["bob", "carol"]);
    // Alice away: bob gets every turn; nobody there: no turn.
    let without = members(&[("bob", 1)]);
    assert_eq!(turns(s, "L1", "sales", &without, 3).await, ["bob"; 3]);
    let (l1, c) = (
        LocationId::parse("L1").unwrap(),
        ContactId::parse("c1").unwrap(),
    );
    assert_eq!(s.take_turn((&l1, &c), "sales", &[]).await.unwrap(), None);
    // A contact dealt before keeps its member (no new turn) while it is in the pool.
    let first = s.take_turn((&l1, &c), "sales", &sales).await.unwrap();
    let again = s.take_turn((&l1, &c), "sales", &sales).await.unwrap();
    assert_eq!(
        (first.as_ref().map(UserId::as_str), &again),
        (Some("alice"), &first)
    );
    let moved = s.take_turn((&l1, &c), "sales", &without).await.unwrap();
    assert_eq!(
        moved.as_ref().map(UserId::as_str),
        Some("bob"),
        "alice away: dealt again"
    );
    let counted: Vec<(String, String, String, u64)> = s
        .pool_turns()
        .await
        .unwrap()
        .into_iter()
        .map(|t| {
            (
                t.location.as_str().to_owned(),
                t.pool,
                t.user.as_str().to_owned(),
                t.handed,
            )
        })
        .collect();
    let row = |l: &str, p: &str, u: &str, n: u64| (l.to_owned(), p.to_owned(), u.to_owned(), n);
    assert_eq!(
        counted,
        [
            row("L1", "sales", "alice", 21),
            row("L1", "sales", "bob", 14),
            row("L1", "support", "bob", 1),
            row("L1", "support", "carol", 1),
            row("L2", "sales", "alice", 1),
            row("L2", "sales", "bob", 0),
        ]
    );
}

/// Away periods set at run time: kept once each, listed by user, cleared per user.
async fn away_periods_are_kept_listed_and_cleared(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let date = |d: &str| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap();
    let period = |u: &str, from: &str, to: &str| AwayPeriod {
        user: UserId::parse(u).unwrap(),
        from: date(from),
        to: date(to),
    };
    let holiday = period("alice", "2026-12-24", "2027-01-02");
    s.set_away(&holiday).await.unwrap();
    s.set_away(&holiday).await.unwrap();
    s.set_away(&period("bob", "2026-12-01", "2026-12-01"))
        .await
        .unwrap();
    let listed = s.away_periods().await.unwrap();
    assert_eq!(listed, [holiday, period("bob", "2026-12-01", "2026-12-01")]);
    assert_eq!(
        s.clear_away(&UserId::parse("alice").unwrap())
            .await
            .unwrap(),
        1
    );
    assert_eq!(s.away_periods().await.unwrap().len(), 1);
}

async fn in_scope(
    s: &dyn Store,
    scope: UndoScope,
    location: Option<&LocationId>,
) -> Vec<(LocationId, ContactId)> {
    s.ledger_contacts(location, &scope).await.unwrap()
}

/// What `reapply` and `undo` read: the contacts known (from events, tasks left out, and the
/// ledger), a contact's latest bodies before an event (newest first, no tasks), and the
/// contacts whose ledger has rows in a scope.
async fn reapply_and_undo_find_their_contacts(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let pair = |l: &str, c: &str| (LocationId::parse(l).unwrap(), ContactId::parse(c).unwrap());
    let (l1, c1) = pair("L1", "c1");
    let l2 = LocationId::parse("L2").unwrap();
    let event = finish_with_ledger(s, vec![added("u1", "a")]).await;
    let rule = |name: &str| UndoScope::Rule(name.to_owned());
    assert_eq!(in_scope(s, rule("a"), None).await, [pair("L1", "c1")]);
    assert!(in_scope(s, rule("b"), None).await.is_empty());
    assert_eq!(
        in_scope(s, UndoScope::Event(event), None).await,
        [pair("L1", "c1")]
    );
    assert!(
        in_scope(s, UndoScope::Event(event + 1), None)
            .await
            .is_empty()
    );
    assert_eq!(
        in_scope(s, UndoScope::Since(0), None).await,
        [pair("L1", "c1")]
    );
    assert!(
        in_scope(s, UndoScope::Since(i64::MAX), None)
            .await
            .is_empty()
    );
    assert!(in_scope(s, UndoScope::Since(0), Some(&l2)).await.is_empty());
    let end = LedgerChange::Ended {
        user: UserId::parse("u1").unwrap(),
        rule: None,
    };
    let ended = finish_with_ledger(s, vec![end]).await;
    let rows = s.owned(&l1, &c1, true).await.unwrap();
    assert_eq!(rows[0].removed_event_id, Some(ended));
    assert!(
        in_scope(s, rule("a"), None).await.is_empty(),
        "an ended row is not the rule's"
    );
    assert_eq!(
        in_scope(s, UndoScope::Event(ended), None).await,
        [pair("L1", "c1")]
    );
    insert_into(s, "L2", "c2").await;
    let mut task = new_event("L3", "c9", None);
    task.kind = BodyKind::Task;
    task.event_type = "Reapply".into();
    s.insert_event(task, WINDOW).await.unwrap();
    let mut update = new_event("L1", "c1", None);
    update.body = "newest".into();
    s.insert_event(update, WINDOW).await.unwrap();
    let known = s.known_contacts(None).await.unwrap();
    assert_eq!(
        known,
        [pair("L1", "c1"), pair("L2", "c2")],
        "no task's contact"
    );
    assert_eq!(
        s.known_contacts(Some(&l2)).await.unwrap(),
        [pair("L2", "c2")]
    );
    let latest = s.latest_events(&l1, &c1, i64::MAX, 10).await.unwrap();
    assert_eq!(latest.len(), 3);
    assert_eq!(
        latest[0],
        (BodyKind::App, "newest".to_owned()),
        "newest first"
    );
    let before = s.latest_events(&l1, &c1, ended, 10).await.unwrap();
    assert_eq!(before.len(), 1, "only events before the one named");
    assert_eq!(
        s.latest_events(&l1, &c1, i64::MAX, 1).await.unwrap().len(),
        1
    );
}

/// A backfill: one running per location, leased to one walker at a time; a page's tasks are
/// queued with its cursor, only by the lease's holder; an ended backfill is not taken again.
async fn backfills_walk_under_a_lease_and_queue_with_their_cursor(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let l1 = LocationId::parse("L1").unwrap();
    let started = s.start_backfill(&l1, Some(5), false).await.unwrap();
    assert_eq!(
        (started.phase.as_str(), started.state.as_str()),
        ("contacts", "running")
    );
    let again = s.start_backfill(&l1, None, true).await.unwrap();
    assert_eq!(again.id, started.id, "the running one is answered");
    let other = s
        .start_backfill(&LocationId::parse("L2").unwrap(), None, true)
        .await
        .unwrap();
    assert_ne!(other.id, started.id);
    let taken = s.claim_backfill("a", LEASE).await.unwrap().unwrap();
    assert_eq!(taken.id, started.id, "oldest first");
    let second = s.claim_backfill("b", LEASE).await.unwrap().unwrap();
    assert_eq!(second.id, other.id, "one walker each");
    assert!(s.claim_backfill("c", LEASE).await.unwrap().is_none());
    let mut task = new_event("L1", "c7", None);
    task.kind = BodyKind::Task;
    task.event_type = "Backfill".into();
    let step = BackfillStep {
        phase: "contacts".into(),
        cursor: Some("[1,\"c7\"]".into()),
        total: Some(250),
        seen: 100,
        changed: 1,
        report: Some("{}".into()),
        done: false,
    };
    let tasks = vec![task.clone()];
    assert!(
        !s.advance_backfill(started.id, "b", LEASE, &step, tasks.clone())
            .await
            .unwrap(),
        "not b's"
    );
    assert_eq!(
        s.pending().await.unwrap(),
        0,
        "nothing queued by a non-holder"
    );
    assert!(
        s.advance_backfill(started.id, "a", LEASE, &step, tasks)
            .await
            .unwrap()
    );
    assert_eq!(s.pending().await.unwrap(), 1, "the page's task is queued");
    let now = s.backfill(started.id).await.unwrap().unwrap();
    assert_eq!(
        (now.seen, now.changed, now.queued, now.total),
        (100, 1, 1, Some(250))
    );
    assert_eq!(now.cursor.as_deref(), Some("[1,\"c7\"]"));
    let last = BackfillStep {
        phase: "opportunities".into(),
        seen: 3,
        done: true,
        ..BackfillStep::default()
    };
    assert!(
        s.advance_backfill(started.id, "a", LEASE, &last, Vec::new())
            .await
            .unwrap()
    );
    let done = s.backfill(started.id).await.unwrap().unwrap();
    assert_eq!(
        (done.state.as_str(), done.seen, done.total),
        ("done", 103, Some(250))
    );
    assert!(done.finished_at.is_some());
    assert!(
        s.fail_backfill(other.id, "b", "GoHighLevel said 403")
            .await
            .unwrap()
    );
    let failed = s.backfill(other.id).await.unwrap().unwrap();
    assert_eq!(
        (failed.state.as_str(), failed.error.as_deref()),
        ("failed", Some("GoHighLevel said 403"))
    );
    let list = s.backfills(10).await.unwrap();
    assert_eq!(
        list.iter().map(|b| b.id).collect::<Vec<_>>(),
        [other.id, started.id]
    );
    assert!(
        s.claim_backfill("c", LEASE).await.unwrap().is_none(),
        "ended ones are not taken"
    );
    let next = s.start_backfill(&l1, None, false).await.unwrap();
    assert_ne!(next.id, started.id, "a new one once the last ended");
}

/// A contact that keeps receiving webhooks is held back by its newest one only up to the
/// settle maximum: an older event received that long ago is claimed anyway.
async fn the_settle_maximum_bounds_how_long_a_busy_contact_waits(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let mut old = new_event("L1", "busy", None);
    old.available_at = SystemTime::now() - Duration::from_secs(60);
    s.insert_event(old, WINDOW).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let mut settling = new_event("L1", "busy", None);
    settling.available_at = SystemTime::now() + Duration::from_secs(60);
    s.insert_event(settling, WINDOW).await.unwrap();
    assert!(
        s.claim("a", 10, LEASE).await.unwrap().is_empty(),
        "held back"
    );
    let max = Some(Duration::from_secs(3600));
    let claimed = s.claim_within("a", 10, LEASE, max).await.unwrap();
    assert!(claimed.is_empty(), "received less than the maximum ago");
    let max = Some(Duration::from_secs(1));
    let claimed = s.claim_within("a", 10, LEASE, max).await.unwrap();
    assert_eq!(claimed.len(), 1, "received longer ago than the maximum");
}

/// One `#[tokio::test]` per contract check and backend.
/// What the console reads: an event's body, events by location and type, and the activity
/// per bucket (webhooks received and failed, calls their decisions made).
async fn the_console_reads_bodies_activity_and_filtered_events(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let first = insert_into(s, "L1", "c1").await;
    insert_into(s, "L2", "c2").await;
    let stored = s.event_body(first).await.unwrap().expect("stored");
    assert_eq!(stored.kind, BodyKind::App);
    assert!(stored.body.contains(r#""id":"c1""#), "{stored:?}");
    assert!(stored.received_at > 0, "{stored:?}");
    assert_eq!(s.event_body(9999).await.unwrap(), None);
    let in_l2 = EventFilter {
        location: Some(LocationId::parse("L2").unwrap()),
        ..EventFilter::default()
    };
    let listed = s.list_events(&in_l2).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].event.contact_id, "c2");
    let other_type = EventFilter {
        event_type: Some("ContactUpdate".into()),
        ..EventFilter::default()
    };
    assert!(s.list_events(&other_type).await.unwrap().is_empty());
    let c = s.claim("a", 1, LEASE).await.unwrap().remove(0);
    let call = autofollow::model::record::CallRecord {
        method: "POST".into(),
        path: "/contacts/c1/followers".into(),
        users: Vec::new(),
        status: Some(200),
        outcome: "ok".into(),
        changed: None,
    };
    let d = Decision {
        calls: vec![call.clone(), call],
        ..decision("failed", Some("no"))
    };
    assert!(s.finish(&c, &d, &NewState::default()).await.unwrap());
    let hour = 3_600_000;
    let since = i64::try_from(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
        - hour;
    let buckets = s.activity(since, hour).await.unwrap();
    let total = |f: fn(&autofollow::store::Activity) -> u64| buckets.iter().map(f).sum::<u64>();
    assert_eq!(total(|a| a.received), 2, "{buckets:?}");
    assert_eq!(total(|a| a.failed), 1, "{buckets:?}");
    assert_eq!(total(|a| a.calls), 2, "{buckets:?}");
    assert!(buckets.iter().all(|a| a.start % hour == 0), "{buckets:?}");
}

macro_rules! contract {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $check() {
                    let dir = tempfile::tempdir().unwrap();
                    let url = format!("sqlite://{}", dir.path().join("db/test.db").display());
                    let store = autofollow::store::open(&url).await.unwrap();
                    super::$check(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    let Some(url) = crate::common::postgres_schema().await else {
                        eprintln!("AUTOFOLLOW_TEST_DATABASE_URL is not set: skipped");
                        return;
                    };
                    let store = autofollow::store::open(&url).await.unwrap();
                    super::$check(store).await;
                }
            )*
        }
    };
}

contract!(
    enqueue_and_dedup,
    concurrent_inserts_of_one_webhook_store_it_once,
    concurrent_inserts_each_get_their_own_answer,
    inserts_stored_together_number_in_arrival_order,
    claims_are_exclusive,
    one_contact_is_claimed_in_order_one_lease_at_a_time,
    expired_leases_are_reclaimed_and_the_old_holder_cannot_finish,
    a_holder_extends_its_leases_and_only_its_own,
    a_settling_webhook_holds_back_its_contacts_earlier_events,
    retries_wait_until_their_time,
    a_deferral_holds_the_location,
    dead_letters_are_listed_and_replayed,
    finishing_leaves_the_contact_state,
    a_refused_token_parks_the_location_until_resumed,
    pruning_deletes_old_finished_events_only,
    erasing_a_contact_deletes_its_events_decisions_and_state,
    installations_are_saved_read_and_replaced,
    one_refresher_at_a_time_and_only_its_own_answer_is_saved,
    forgetting_a_deleted_record_clears_its_state_only,
    the_ownership_ledger_records_adds_and_ends,
    the_settle_maximum_bounds_how_long_a_busy_contact_waits,
    reapply_and_undo_find_their_contacts,
    backfills_walk_under_a_lease_and_queue_with_their_cursor,
    the_console_reads_bodies_activity_and_filtered_events,
    a_claimed_group_brings_its_events_and_what_is_known_of_the_contact,
    groups_finished_at_once_are_each_recorded_whole,
    a_pool_hands_out_turns_by_weight_per_location,
    a_dealer_seeded_from_the_store_deals_what_the_store_would,
    away_periods_are_kept_listed_and_cleared,
);

/// A pool's sequence goes on where it stopped when the service starts again.
#[tokio::test]
async fn a_pools_sequence_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("db/test.db").display());
    let sales = members(&[("alice", 2), ("bob", 1)]);
    let store = autofollow::store::open(&url).await.unwrap();
    let before = turns(store.as_ref(), "L1", "sales", &sales, 2).await;
    drop(store);
    let store = autofollow::store::open(&url).await.unwrap();
    let after = turns(store.as_ref(), "L1", "sales", &sales, 4).await;
    assert_eq!(
        [before, after].concat(),
        ["alice", "bob", "alice", "alice", "bob", "alice"]
    );
}

/// Two replicas on one PostgreSQL database taking 30 turns at once: no turn is handed out
/// twice, so 2:1 weights still give exactly 20 and 10.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_a_pools_turns_without_giving_one_twice() {
    let Some(url) = crate::common::postgres_schema().await else {
        eprintln!("AUTOFOLLOW_TEST_DATABASE_URL is not set: skipped");
        return;
    };
    let replicas = [
        autofollow::store::open(&url).await.unwrap(),
        autofollow::store::open(&url).await.unwrap(),
    ];
    let sales = members(&[("alice", 2), ("bob", 1)]);
    let mut taking = tokio::task::JoinSet::new();
    for i in 0..30 {
        let (store, sales) = (Arc::clone(&replicas[i % 2]), sales.clone());
        taking.spawn(async move { turns(store.as_ref(), "L1", "sales", &sales, 1).await });
    }
    let mut alice = 0;
    while let Some(turn) = taking.join_next().await {
        alice += usize::from(turn.unwrap() == ["alice"]);
    }
    assert_eq!(alice, 20);
    let handed: Vec<u64> = replicas[0]
        .pool_turns()
        .await
        .unwrap()
        .iter()
        .map(|t| t.handed)
        .collect();
    assert_eq!(handed, [20, 10]);
}

/// A new SQLite database uses 1 KiB pages (BENCHMARKS.md: each finished event dirties a few
/// scattered index pages, each written whole to the WAL).
#[tokio::test]
async fn a_new_sqlite_database_uses_small_pages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db/test.db");
    let store =
        autofollow::store::sqlite::SqliteStore::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
    let size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(size, 1024);
}

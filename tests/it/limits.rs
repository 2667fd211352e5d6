//! Rate limits end to end: a GoHighLevel stand-in that counts each location's requests in a
//! sliding window and answers 429 past its limit.

use crate::common;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use autofollow::ghl::budget::Budget;
use autofollow::model::record::EventStatus;
use common::service::*;
use serde_json::json;
use wiremock::{Mock, Request, Respond, ResponseTemplate};

/// Answers like GoHighLevel under its rate limit: per token (one per location), at most
/// `limit` requests in any `window`, with the `X-RateLimit-*` headers.
struct Enforcer {
    limit: usize,
    window: Duration,
    seen: Mutex<HashMap<String, VecDeque<Instant>>>,
    rejected: AtomicUsize,
    busiest_window: AtomicUsize,
}

#[derive(Clone)]
struct Shared(Arc<Enforcer>);

impl Respond for Shared {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let e = &self.0;
        let token = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let now = Instant::now();
        let mut seen = e.seen.lock().unwrap();
        let log = seen.entry(token).or_default();
        while log
            .front()
            .is_some_and(|t| now.duration_since(*t) >= e.window)
        {
            log.pop_front();
        }
        let interval = e.window.as_millis().to_string();
        if log.len() >= e.limit {
            e.rejected.fetch_add(1, Ordering::SeqCst);
            return ResponseTemplate::new(429)
                .insert_header("X-RateLimit-Remaining", "0")
                .insert_header("X-RateLimit-Interval-Milliseconds", interval.as_str());
        }
        log.push_back(now);
        e.busiest_window.fetch_max(log.len(), Ordering::SeqCst);
        ResponseTemplate::new(201)
            .insert_header("X-RateLimit-Max", e.limit.to_string().as_str())
            .insert_header(
                "X-RateLimit-Remaining",
                (e.limit - log.len()).to_string().as_str(),
            )
            .insert_header("X-RateLimit-Interval-Milliseconds", interval.as_str())
            .set_body_json(json!({"followers": []}))
    }
}

#[tokio::test]
async fn a_burst_across_locations_completes_without_a_single_429_or_window_overrun() {
    const LOCATIONS: usize = 5;
    const PER_LOCATION: usize = 200;
    let locations: Vec<(String, String)> = (0..LOCATIONS)
        .map(|i| (format!("Loc{i}"), format!("tok-{i}")))
        .collect();
    let app = spawn_with(Options {
        rules: "rules:\n  - name: all\n    add: [alice]\n".into(),
        rate_limit: "10/1s".into(),
        location_tokens: locations.clone(),
        ..Options::default()
    })
    .await;
    let enforcer = Arc::new(Enforcer {
        limit: 10,
        window: Duration::from_secs(1),
        seen: Mutex::default(),
        rejected: AtomicUsize::new(0),
        busiest_window: AtomicUsize::new(0),
    });
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(Shared(Arc::clone(&enforcer)))
        .mount(&app.ghl)
        .await;
    let mut ids = Vec::new();
    for n in 0..PER_LOCATION {
        for (location, _) in &locations {
            let body =
                json!({"type": "ContactCreate", "locationId": location, "id": format!("c{n}")});
            ids.push(accepted(app.post_app(&body).await).await);
        }
    }
    app.drain().await;
    for id in &ids {
        let e = app.event(*id).await;
        assert_eq!(e.status, EventStatus::Done);
        assert_eq!(e.attempts, 1, "waiting for the budget is not an attempt");
    }
    assert_eq!(
        enforcer.rejected.load(Ordering::SeqCst),
        0,
        "no 429 was needed"
    );
    assert!(enforcer.busiest_window.load(Ordering::SeqCst) <= 10);
    let made = app.ghl.received_requests().await.unwrap_or_default().len();
    assert_eq!(made, LOCATIONS * PER_LOCATION, "one call per event");
    app.shutdown().await;
}

#[tokio::test]
async fn a_429_from_gohighlevel_holds_the_location_back_without_failing_events() {
    let app = spawn_with(Options {
        rules: "rules:\n  - name: all\n    add: [alice]\n".into(),
        ..Options::default()
    })
    .await;
    // GoHighLevel's own count says the budget is gone (another app, another replica).
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "1")
                .insert_header("X-RateLimit-Remaining", "0"),
        )
        .up_to_n_times(1)
        .mount(&app.ghl)
        .await;
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(ResponseTemplate::new(201))
        .mount(&app.ghl)
        .await;
    let started = Instant::now();
    let first = app.contact("ContactCreate", "c1", json!({})).await;
    let second = app.contact("ContactCreate", "c2", json!({})).await;
    app.drain().await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the location waited for Retry-After"
    );
    assert_eq!(app.event(first).await.status, EventStatus::Done);
    assert_eq!(app.event(second).await.status, EventStatus::Done);
    assert_eq!(
        app.ghl.received_requests().await.unwrap_or_default().len(),
        3,
        "one 429, then one call each"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_location_held_back_by_gohighlevel_does_not_delay_another() {
    let app = spawn_with(Options {
        rules: "rules:\n  - name: all\n    add: [alice]\n".into(),
        location_tokens: vec![
            ("Busy".into(), "tok-busy".into()),
            ("Calm".into(), "tok-calm".into()),
        ],
        ..Options::default()
    })
    .await;
    Mock::given(wiremock::matchers::header(
        "authorization",
        "Bearer tok-busy",
    ))
    .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "30"))
    .mount(&app.ghl)
    .await;
    Mock::given(wiremock::matchers::header(
        "authorization",
        "Bearer tok-calm",
    ))
    .respond_with(ResponseTemplate::new(201))
    .mount(&app.ghl)
    .await;
    let mut busy = Vec::new();
    for n in 0..10 {
        let body = json!({"type": "ContactCreate", "locationId": "Busy", "id": format!("b{n}")});
        busy.push(accepted(app.post_app(&body).await).await);
    }
    let started = Instant::now();
    let mut calm = Vec::new();
    for n in 0..10 {
        let body = json!({"type": "ContactCreate", "locationId": "Calm", "id": format!("c{n}")});
        calm.push(accepted(app.post_app(&body).await).await);
    }
    loop {
        let mut done = 0;
        for id in &calm {
            done += usize::from(app.event(*id).await.status == EventStatus::Done);
        }
        if done == calm.len() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the calm location waited for the busy one"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for id in &busy {
        let e = app.event(*id).await;
        assert_eq!(e.status, EventStatus::Pending, "the busy location waits");
        assert!(e.attempts <= 1, "waiting is not retrying: {e:?}");
    }
    let busy_calls = app
        .ghl
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| {
            r.headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer tok-busy")
        })
        .count();
    assert!(
        busy_calls <= 8,
        "after the 429 the busy location is held back: {busy_calls} calls"
    );
    app.shutdown().await;
}

/// Three replicas' budgets on one PostgreSQL database, taken from at once as fast as they
/// allow: in every window the sum stays within the limit, and most of the limit is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_sharing_postgresql_keep_the_limit_for_their_sum() {
    let Some(url) = common::postgres_schema().await else {
        eprintln!("AUTOFOLLOW_TEST_DATABASE_URL is not set: skipped");
        return;
    };
    autofollow::store::open(&url).await.unwrap(); // migrations
    let rate = autofollow::ghl::budget::RateLimit {
        requests: 20,
        per: Duration::from_secs(1),
    };
    let location = autofollow::model::ids::LocationId::parse("L1").unwrap();
    let grants = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let run = Duration::from_millis(3500);
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let pool = autofollow::store::postgres::connect(&url, 2).await.unwrap();
        let limits = Arc::new(autofollow::store::pg_budget::PgBudget::new(
            pool, rate, 200_000,
        ));
        for _ in 0..2 {
            let (limits, grants, location) =
                (Arc::clone(&limits), Arc::clone(&grants), location.clone());
            tasks.push(tokio::spawn(async move {
                while started.elapsed() < run {
                    match limits.acquire(&location).await {
                        Ok(()) => grants.lock().unwrap().push(Instant::now()),
                        Err(wait) => tokio::time::sleep(wait.min(Duration::from_millis(50))).await,
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut grants = grants.lock().unwrap().clone();
    grants.sort();
    let busiest = grants
        .iter()
        .enumerate()
        .map(|(i, t)| {
            grants[i..]
                .iter()
                .take_while(|u| u.duration_since(*t) < rate.per)
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(busiest <= 19, "{busiest} calls in one window (limit 20)");
    // Shaped for about 94 % of the limit: 1 at once, then one per 1/18 s.
    let expected = 1.0 + 18.0 * run.as_secs_f64();
    assert!(
        grants.len() as f64 >= 0.85 * expected,
        "{} grants in {run:?}, expected about {expected}",
        grants.len()
    );
}

/// A hold one replica records (GoHighLevel answered 429) stops the other replicas' calls to
/// that location until it ends, and no other location's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_on_postgresql_holds_every_replica() {
    let Some(url) = common::postgres_schema().await else {
        eprintln!("AUTOFOLLOW_TEST_DATABASE_URL is not set: skipped");
        return;
    };
    autofollow::store::open(&url).await.unwrap(); // migrations
    let rate = autofollow::ghl::budget::RateLimit {
        requests: 100,
        per: Duration::from_secs(10),
    };
    let budget = |pool| autofollow::store::pg_budget::PgBudget::new(pool, rate, 200_000);
    let connect = || autofollow::store::postgres::connect(&url, 2);
    let (one, other) = (
        budget(connect().await.unwrap()),
        budget(connect().await.unwrap()),
    );
    let held = autofollow::model::ids::LocationId::parse("L1").unwrap();
    let free = autofollow::model::ids::LocationId::parse("L2").unwrap();
    assert_eq!(other.acquire(&held).await, Ok(()));
    one.hold(&held, Duration::from_secs(30)).await;
    let wait = other.acquire(&held).await.expect_err("held");
    assert!(
        wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
        "{wait:?}"
    );
    assert_eq!(other.acquire(&free).await, Ok(()));
}

/// A lookup GoHighLevel refuses is not asked again on every retry: with a budget of one call
/// a second, asking for the pipelines each time would spend the budget the followers call
/// waits for, for ever (it did, before the refusal was remembered).
#[tokio::test]
async fn a_refused_lookup_does_not_starve_the_followers_call_of_its_budget() {
    use wiremock::matchers::method;
    use wiremock::{Mock, ResponseTemplate};
    let app = spawn_with(Options {
        rules: "rules:\n  - name: all\n    add: [alice]\n".into(),
        rate_limit: "2/2s".into(),
        ..Options::default()
    })
    .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(403).set_body_json(json!({"message": "scope"})))
        .mount(&app.ghl)
        .await;
    app.ghl_accepts_the_rest().await;
    let stage = |o: &str| {
        json!({"type": "OpportunityStageUpdate", "locationId": common::service::LOCATION,
        "id": o, "contactId": format!("c-{o}"), "pipelineStageId": "s1"})
    };
    let first = accepted(app.post_app(&stage("o1")).await).await;
    let second = accepted(app.post_app(&stage("o2")).await).await;
    app.drain().await;
    for id in [first, second] {
        assert_eq!(app.event(id).await.status, EventStatus::Done);
    }
    let gets = app.ghl.received_requests().await.unwrap();
    let gets = gets.iter().filter(|r| r.method.as_str() == "GET").count();
    assert_eq!(gets, 1, "the refused lookup is remembered");
    app.shutdown().await;
}

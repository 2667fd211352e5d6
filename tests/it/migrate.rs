//! `autofollow migrate`: a SQLite store copied into PostgreSQL keeps its queue, state and
//! history, and a service on PostgreSQL carries on where the SQLite one stopped. Runs when
//! `AUTOFOLLOW_TEST_DATABASE_URL` is set (`.ci/test` sets it); usage errors always.

use crate::common;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use autofollow::model::event::BodyKind;
use autofollow::model::ids::{ContactId, LocationId, OpportunityId, UserId};
use autofollow::model::plan::{Follow, Plan};
use autofollow::model::record::{Decision, EventStatus, Outcome};
use autofollow::store::{Claimed, EventFilter, Inserted, LedgerChange, NewEvent, NewState, Store};
use common::process::spawn;
use common::service::TOKEN;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const LEASE: Duration = Duration::from_secs(60);
const WINDOW: Duration = Duration::from_secs(3600);

fn migrate(from: &str, to: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_autofollow"))
        .args(["migrate", "--from", from, "--to", to])
        .output()
        .expect("runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn event(location: &str, contact: &str, webhook: &str, at: SystemTime) -> NewEvent {
    NewEvent {
        kind: BodyKind::App,
        event_type: "ContactTagUpdate".into(),
        location_id: LocationId::parse(location).unwrap(),
        contact_id: ContactId::parse(contact).unwrap(),
        opportunity_id: Some(OpportunityId::parse(&format!("o-{contact}")).unwrap()),
        webhook_id: Some(webhook.to_owned()),
        body: json!({"type": "ContactTagUpdate", "locationId": location, "id": contact, "tags": ["vip"]})
            .to_string(),
        available_at: at,
    }
}

async fn insert(store: &dyn Store, e: NewEvent) -> i64 {
    match store.insert_event(e, WINDOW).await.unwrap() {
        Inserted::Accepted(id) => id,
        Inserted::Duplicate => panic!("not a duplicate"),
    }
}

fn decision(outcome: &str, error: Option<&str>, dry_run: bool) -> Decision {
    Decision {
        attempt: 1,
        matched: vec!["vip".into()],
        plan: Plan::default(),
        calls: Vec::new(),
        outcome: Outcome::parse(outcome).expect("an outcome"),
        error: error.map(str::to_owned),
        dry_run,
        batch: Vec::new(),
        rules_version: "v1".into(),
    }
}

async fn claim_one(store: &dyn Store) -> Claimed {
    let mut claimed = store.claim("sqlite-service", 1, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);
    claimed.remove(0)
}

/// A SQLite store with every kind of row: done, failed, waiting for a retry, parked behind a
/// refused token, held by a spent rate limit, due now; contact and opportunity state, known followers, decisions.
async fn populated_sqlite(url: &str) -> Vec<i64> {
    let store = autofollow::store::open(url).await.unwrap();
    let s = store.as_ref();
    let now = SystemTime::now();
    let mut ids = Vec::new();

    ids.push(insert(s, event("L1", "done", "wh-done", now)).await);
    let c = claim_one(s).await;
    let state = NewState {
        location_id: Some(LocationId::parse("L1").unwrap()),
        contact_id: Some(ContactId::parse("done").unwrap()),
        tags: Some(vec!["vip".into(), "lead".into()]),
        stage: Some((OpportunityId::parse("o-done").unwrap(), "stage-won".into())),
        assigned: Some((
            Some(OpportunityId::parse("o-done").unwrap()),
            Some(UserId::parse(common::BOB).unwrap()),
        )),
        ledger: vec![LedgerChange::Added {
            user: UserId::parse(common::ALICE).unwrap(),
            rule: "vip".into(),
            follow: Follow::WhileMatching,
            subject: Some(OpportunityId::parse("o-done").unwrap()),
            rules_version: "v1".into(),
        }],
        followers: None,
    };
    assert!(
        s.finish(&c, &decision("done", None, true), &state)
            .await
            .unwrap()
    );
    s.set_known_followers(
        &LocationId::parse("L1").unwrap(),
        &ContactId::parse("done").unwrap(),
        &[UserId::parse(common::ALICE).unwrap()],
        None,
    )
    .await
    .unwrap();

    let installed = autofollow::store::InstallTokens {
        id: "L1".into(),
        kind: autofollow::store::InstallKind::Location,
        company_id: Some("Co1".into()),
        access_token: Some("v1.k.sealed-access".into()),
        refresh_token: Some("v1.k.sealed-refresh".into()),
        scopes: "contacts.write".into(),
        issued_at: Some(now),
        expires_at: Some(now + Duration::from_secs(86_400)),
    };
    assert!(s.save_installation(&installed, None).await.unwrap());

    ids.push(insert(s, event("L1", "failed", "wh-failed", now)).await);
    let c = claim_one(s).await;
    let failed = decision("failed", Some("GoHighLevel answered 400"), false);
    assert!(s.finish(&c, &failed, &NewState::default()).await.unwrap());

    ids.push(insert(s, event("L1", "retrying", "wh-retrying", now)).await);
    let c = claim_one(s).await;
    let later = now + Duration::from_secs(3600);
    let retry = decision("retry", Some("GoHighLevel answered 503"), false);
    assert!(s.retry_at(&c, later, &retry).await.unwrap());

    ids.push(insert(s, event("L2", "parked", "wh-parked", now)).await);
    let c = claim_one(s).await;
    s.mark_token_failing(
        &LocationId::parse("L2").unwrap(),
        "fp-1234",
        "401 Unauthorized",
    )
    .await
    .unwrap();
    assert!(
        s.park(&c, &decision("parked", Some("token refused"), false))
            .await
            .unwrap()
    );

    // A location whose rate-limit budget is spent, held for an hour.
    ids.push(insert(s, event("L3", "held", "wh-held", now)).await);
    let c = claim_one(s).await;
    assert!(s.defer(&c, now + Duration::from_secs(3600)).await.unwrap());

    // Due now, and a second event of the same contact behind it.
    ids.push(insert(s, event("L1", "due", "wh-due-1", now)).await);
    ids.push(insert(s, event("L1", "due", "wh-due-2", now)).await);
    ids
}

async fn everything(store: &dyn Store) -> Value {
    let all = EventFilter {
        limit: 1000,
        ..EventFilter::default()
    };
    let mut histories = Vec::new();
    for contact in ["done", "failed", "retrying", "parked", "due"] {
        histories.push(
            serde_json::to_value(
                store
                    .history(&ContactId::parse(contact).unwrap())
                    .await
                    .unwrap(),
            )
            .unwrap(),
        );
    }
    let done = store
        .previous_state(
            &LocationId::parse("L1").unwrap(),
            &ContactId::parse("done").unwrap(),
            Some(&OpportunityId::parse("o-done").unwrap()),
        )
        .await
        .unwrap();
    json!({
        "events": store.list_events(&all).await.unwrap(),
        "histories": histories,
        "previous": format!("{done:?}"),
        "owned": store
            .owned(&LocationId::parse("L1").unwrap(), &ContactId::parse("done").unwrap(), true)
            .await
            .unwrap(),
        "known": store
            .known_followers(&LocationId::parse("L1").unwrap(), &ContactId::parse("done").unwrap(), SystemTime::UNIX_EPOCH)
            .await
            .unwrap(),
        "token_failures": format!("{:?}", store.token_failures().await.unwrap()),
        "installations": format!("{:?}", store.installations().await.unwrap()),
        "parked": format!("{:?}", store.parked_locations().await.unwrap()),
        "queue": format!("{:?}", store.queue_stats().await.unwrap()),
    })
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("autofollow.db").display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_in_the_sqlite_store_arrives_in_postgresql_unchanged() {
    let Some(pg) = common::postgres_schema().await else {
        eprintln!("AUTOFOLLOW_TEST_DATABASE_URL is not set: skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let from = sqlite_url(&dir);
    let ids = populated_sqlite(&from).await;

    let o = migrate(&from, &pg);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.starts_with(&format!("copied {from} into PostgreSQL:\n")),
        "{out}"
    );
    for line in [
        "  events                     7",
        "  decisions                  4",
        "  webhook_ids                7",
        "  contact_state              1",
        "  opportunity_state          1",
        "  known_followers            1",
        "  token_failures             1",
        "  installations              1",
        "  location_holds             1",
        "5 events waiting;",
    ] {
        assert!(out.contains(line), "{line:?} missing:\n{out}");
    }
    assert!(!out.contains(&pg), "the PostgreSQL URL is not printed");

    let source = autofollow::store::open_existing(&from).await.unwrap();
    let target = autofollow::store::open(&pg).await.unwrap();
    assert_eq!(
        everything(source.as_ref()).await,
        everything(target.as_ref()).await
    );

    // The queue carries on: the due contact's first event, nothing parked, held or not yet
    // due; re-deliveries stay duplicates; new events number after the copied ones.
    let claimed = target.claim("pg-replica", 10, LEASE).await.unwrap();
    assert_eq!(
        claimed.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![ids[5]]
    );
    assert_eq!(claimed[0].attempt, 1);
    let again = event("L1", "done", "wh-done", SystemTime::now());
    assert_eq!(
        target.insert_event(again, WINDOW).await.unwrap(),
        Inserted::Duplicate
    );
    let next = insert(
        target.as_ref(),
        event("L1", "new", "wh-new", SystemTime::now()),
    )
    .await;
    assert!(next > *ids.iter().max().unwrap(), "{next} after {ids:?}");
    assert!(
        target
            .finish(
                &claimed[0],
                &decision("done", None, false),
                &NewState::default()
            )
            .await
            .unwrap()
    );
    let decisions = target.decisions(claimed[0].id).await.unwrap();
    assert_eq!(decisions.len(), 1, "a new decision gets a fresh id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_holds_data_is_refused_and_left_unchanged() {
    let Some(pg) = common::postgres_schema().await else {
        eprintln!("AUTOFOLLOW_TEST_DATABASE_URL is not set: skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let from = sqlite_url(&dir);
    populated_sqlite(&from).await;
    assert!(migrate(&from, &pg).status.success());
    let target = autofollow::store::open(&pg).await.unwrap();
    let before = everything(target.as_ref()).await;

    let o = migrate(&from, &pg);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.starts_with("autofollow migrate: the PostgreSQL database already holds data (7 rows in events, 4 rows in decisions"),
        "{err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(everything(target.as_ref()).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_in_use_is_refused() {
    let Some(pg) = common::postgres_schema().await else {
        eprintln!("AUTOFOLLOW_TEST_DATABASE_URL is not set: skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let from = sqlite_url(&dir);
    let store = autofollow::store::open(&from).await.unwrap();
    insert(
        store.as_ref(),
        event("L1", "busy", "wh-busy", SystemTime::now()),
    )
    .await;
    claim_one(store.as_ref()).await; // a running service holds it

    let o = migrate(&from, &pg);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.starts_with(
            "autofollow migrate: 1 events in the SQLite store are leased by a running service"
        ),
        "{err}"
    );
    // Nothing reached PostgreSQL: not even the schema.
    let pool = sqlx::PgPool::connect(&pg).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema()",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 0);
}

#[test]
fn usage_errors_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let missing = sqlite_url(&dir);
    for (from, to, message) in [
        (
            "postgres://a@b/c",
            "postgres://a@b/c",
            "autofollow migrate: --from must be the SQLite store, sqlite://PATH\n",
        ),
        (
            missing.as_str(),
            "sqlite://other.db",
            "autofollow migrate: --to must be a PostgreSQL database, postgres://…\n",
        ),
    ] {
        let o = migrate(from, to);
        assert_eq!(o.status.code(), Some(1));
        assert_eq!(text(&o.stderr), message);
    }
    let o = migrate(&missing, "postgres://a@127.0.0.1:1/c");
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(err.contains("no database at"), "{err}");
    assert!(!dir.path().join("autofollow.db").exists(), "not created");
}

/// Webhooks through a real service on SQLite, GoHighLevel down for one contact; the service
/// stopped, the store migrated, a service on PostgreSQL started: it makes the waiting call,
/// knows the re-delivery, and decides `tag_removed` from the state SQLite had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_on_postgresql_carries_on_after_the_migration() {
    let Some(pg) = common::postgres_schema().await else {
        eprintln!("AUTOFOLLOW_TEST_DATABASE_URL is not set: skipped");
        return;
    };
    let dir = common::process::rules_dir(
        "  - name: vip
    when: {tag_added: vip}
    add: [alice]
  - name: no-longer-vip
    when: {tag_removed: vip}
    remove: [alice]
",
    );
    let rules = dir.path().join("rules.yaml");
    let ghl = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/contacts/c1/followers"))
        .respond_with(ResponseTemplate::new(201))
        .mount(&ghl)
        .await;
    Mock::given(method("POST"))
        .and(path("/contacts/c2/followers"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&ghl)
        .await;
    let from = sqlite_url(&dir);
    let env = |db: &str| {
        vec![
            ("AUTOFOLLOW_RULES", rules.display().to_string()),
            ("AUTOFOLLOW_DATABASE_URL", db.to_owned()),
            ("GHL_API_BASE_URL", ghl.uri()),
            ("GHL_TOKEN", TOKEN.to_owned()),
            ("GHL_LOCATION_ID", "L1".to_owned()),
            ("AUTOFOLLOW_SETTLE_DELAY", "0s".to_owned()),
        ]
    };
    async fn send(service: &common::process::Service, body: Value) -> Value {
        let r = service.post_app(&body).await;
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()["status"].clone()
    }
    let tagged = |contact: &str, tags: &[&str], webhook: &str| {
        json!({"type": "ContactTagUpdate", "locationId": "L1", "id": contact,
               "tags": tags, "webhookId": webhook})
    };
    let calls = |method: &'static str, contact: &'static str| {
        let ghl = &ghl;
        async move {
            ghl.received_requests()
                .await
                .unwrap_or_default()
                .iter()
                .filter(|r| {
                    r.method.as_str() == method
                        && r.url.path() == format!("/contacts/{contact}/followers")
                })
                .count()
        }
    };
    async fn wait_until<F: std::future::Future<Output = bool>>(
        what: &str,
        mut check: impl FnMut() -> F,
    ) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !check().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    let mut sqlite = spawn(&env(&from));
    assert_eq!(
        send(&sqlite, tagged("c1", &["vip"], "wh-1")).await,
        "accepted"
    );
    assert_eq!(
        send(&sqlite, tagged("c2", &["vip"], "wh-2")).await,
        "accepted"
    );
    let store = autofollow::store::open_existing(&from).await.unwrap();
    let c1_done = || {
        let store = Arc::clone(&store);
        async move {
            let filter = EventFilter {
                contact: Some(ContactId::parse("c1").unwrap()),
                limit: 10,
                ..EventFilter::default()
            };
            let events = store.list_events(&filter).await.unwrap();
            events.len() == 1 && events[0].event.status == EventStatus::Done
        }
    };
    wait_until("c1 done on SQLite", c1_done).await;
    wait_until("an attempt for c2", || async {
        calls("POST", "c2").await > 0
    })
    .await;
    Command::new("kill")
        .args(["-TERM", &sqlite.child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(sqlite.child.wait().unwrap().code(), Some(0));

    let o = migrate(&from, &pg);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("1 events waiting;"),
        "{}",
        text(&o.stdout)
    );

    ghl.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201))
        .mount(&ghl)
        .await;
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&ghl)
        .await;
    let postgres = spawn(&env(&pg));
    wait_until("c2's call from PostgreSQL", || async {
        calls("POST", "c2").await == 1
    })
    .await;
    assert_eq!(
        send(&postgres, tagged("c1", &["vip"], "wh-1")).await,
        "duplicate"
    );
    assert_eq!(send(&postgres, tagged("c1", &[], "wh-3")).await, "accepted");
    wait_until("c1's removal", || async {
        calls("DELETE", "c1").await == 1
    })
    .await;
    assert_eq!(calls("POST", "c1").await, 0, "c1 was not added again");
    let target = autofollow::store::open(&pg).await.unwrap();
    wait_until("an empty queue", || {
        let target = Arc::clone(&target);
        async move { target.pending().await.unwrap() == 0 }
    })
    .await;
    let history = target
        .history(&ContactId::parse("c1").unwrap())
        .await
        .unwrap();
    assert_eq!(history.len(), 2, "the SQLite event and the new one");
    assert_eq!(history[1].1[0].matched, vec!["no-longer-vip".to_owned()]);
}

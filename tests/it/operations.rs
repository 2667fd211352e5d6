//! Operations: `/metrics` read by a Prometheus text parser after a run that exercises every
//! series; readiness while the store is gone and after it returns; no lease left after
//! shutdown, whether in-flight calls finish in the grace period or not.

use crate::common;
use std::collections::HashMap;
use std::time::Duration;

use common::service::*;
use prometheus_parse::{Scrape, Value as Prom};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

const LOCATION: &str = "ve9EPM428h8vShlRW1KT";
const RULES: &str = "rules:
  - name: facebook-leads
    when: {source: 'fb-*'}
    add: [alice]
  - name: from-workflows
    events: [Workflow]
    add: [bob]
";

async fn scrape(app: &TestApp) -> (String, Scrape) {
    let r = app
        .http
        .get(format!("{}/metrics", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = r.text().await.unwrap();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    (text, scrape)
}

/// The samples of `metric` whose labels include `labels`.
fn samples<'a>(
    scrape: &'a Scrape,
    metric: &'a str,
    labels: &'a [(&str, &str)],
) -> impl Iterator<Item = &'a prometheus_parse::Value> {
    scrape
        .samples
        .iter()
        .filter(move |s| s.metric == metric)
        .filter(move |s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| &s.value)
}

/// The value of the one counter or gauge sample of `metric` whose labels include `labels`.
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<f64> = samples(scrape, metric, labels)
        .filter_map(|v| match v {
            Prom::Counter(v) | Prom::Gauge(v) | Prom::Untyped(v) => Some(*v),
            _ => None,
        })
        .collect();
    assert!(
        found.len() <= 1,
        "{metric} {labels:?} is ambiguous: {found:?}"
    );
    found.first().copied()
}

/// How many observations the histogram `metric` with `labels` holds.
fn histogram_count(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    samples(scrape, metric, labels)
        .find_map(|v| match v {
            Prom::Histogram(buckets) => buckets.last().map(|b| b.count),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no histogram {metric} {labels:?}"))
}

#[tokio::test]
async fn metrics_are_valid_prometheus_text_and_hold_every_series_after_a_run() {
    let app = spawn_with(Options {
        rules: RULES.into(),
        // One call per 500 ms: the events below arrive together, so some wait for the budget.
        rate_limit: "4/1s".into(),
        ..Options::default()
    })
    .await;
    Mock::given(method("POST"))
        .and(path("/contacts/c-refused/followers"))
        .respond_with(ResponseTemplate::new(422).set_body_json(json!({"message": ["bad"]})))
        .mount(&app.ghl)
        .await;
    Mock::given(method("POST"))
        .and(path("/contacts/c-busy/followers"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "0"))
        .up_to_n_times(1)
        .mount(&app.ghl)
        .await;
    app.ghl_accepts_the_rest().await;

    let lead = |contact: &str, webhook: &str| {
        json!({"type": "ContactCreate", "locationId": LOCATION, "id": contact,
               "source": "fb-ads", "webhookId": webhook})
    };
    accepted(app.post_app(&lead("c1", "w1")).await).await;
    // A backfill started (the stand-in has no search: it fails), for its series.
    let location = autofollow::model::ids::LocationId::parse(LOCATION).unwrap();
    app.store()
        .start_backfill(&location, None, true)
        .await
        .unwrap();
    let dup = app.post_app(&lead("c1", "w1")).await;
    assert_eq!(
        dup.json::<serde_json::Value>().await.unwrap()["status"],
        "duplicate"
    );
    accepted(app.post_app(&lead("c-busy", "w2")).await).await;
    accepted(app.post_app(&lead("c-refused", "w3")).await).await;
    accepted(
        app.post_workflow(&json!({"location": {"id": LOCATION}, "contact_id": "c2"}))
            .await,
    )
    .await;
    let ignored = app
        .post_app(&json!({"type": "UserCreate", "id": "U1", "locationId": LOCATION}))
        .await;
    assert_eq!(ignored.status(), 200);
    let unsigned = app
        .http
        .post(format!("{}/webhooks/ghl", app.base))
        .body(lead("c3", "w4").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    let broken = app.post_app(&json!({"type": "ContactCreate"})).await;
    assert_eq!(broken.status(), 400);
    let huge = "x".repeat(300 * 1024);
    let too_large = app
        .http
        .post(format!("{}/webhooks/ghl", app.base))
        .header("X-GHL-Signature", sign(huge.as_bytes()))
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(too_large.status(), 413);
    app.drain().await;

    // A rejected reload, then an applied one.
    let rules = &app.running.as_ref().unwrap().rules;
    std::fs::write(
        &app.rules_file,
        format!(
            "{}rules:\n  - name: broken\n    when: {{status: closed}}\n    add: [bob]\n",
            common::USERS
        ),
    )
    .unwrap();
    assert!(rules.reload().is_err());
    let (_, during) = scrape(&app).await;
    assert_eq!(
        value(&during, "autofollow_rules_last_reload_ok", &[]),
        Some(0.0)
    );
    std::fs::write(
        &app.rules_file,
        format!(
            "{}{RULES}  - name: extra\n    when: {{tag_added: vip}}\n    add: [carol]\n",
            common::USERS
        ),
    )
    .unwrap();
    let version = rules.reload().unwrap().version().to_owned();

    let (text, m) = scrape(&app).await;
    // Every family is documented and typed.
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .collect();
    let names: Vec<&str> = families
        .iter()
        .map(|f| f.split(' ').next().unwrap())
        .collect();
    for name in &names {
        assert!(m.docs.contains_key(*name), "{name} has no HELP");
    }
    // The README's metrics list is exactly what is exported.
    let readme = std::fs::read_to_string(common::repo().join("README.md")).unwrap();
    let section = readme
        .split("### Metrics")
        .nth(1)
        .and_then(|s| s.split("\n### ").next())
        .expect("README has a Metrics section");
    let mut documented: Vec<&str> = section
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("autofollow_"))
        .map(|w| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| w.strip_suffix(suffix).filter(|b| b.ends_with("_seconds")))
                .unwrap_or(w)
        })
        .collect();
    documented.sort_unstable();
    documented.dedup();
    let mut exported = names.clone();
    exported.sort_unstable();
    let alerts_only: Vec<&str> = documented
        .iter()
        .filter(|d| !exported.contains(d))
        .copied()
        .collect();
    assert!(
        alerts_only.is_empty(),
        "README names unknown series: {alerts_only:?}"
    );
    let undocumented: Vec<&str> = exported
        .iter()
        .filter(|e| !documented.contains(e))
        .copied()
        .collect();
    assert!(undocumented.is_empty(), "README misses: {undocumented:?}");
    let webhooks = |endpoint, event_type, answer| {
        value(
            &m,
            "autofollow_webhooks_total",
            &[
                ("endpoint", endpoint),
                ("event_type", event_type),
                ("answer", answer),
            ],
        )
    };
    assert_eq!(webhooks("app", "ContactCreate", "accepted"), Some(3.0));
    assert_eq!(webhooks("app", "ContactCreate", "duplicate"), Some(1.0));
    assert_eq!(webhooks("workflow", "Workflow", "accepted"), Some(1.0));
    assert_eq!(webhooks("app", "other", "ignored"), Some(1.0));
    assert_eq!(webhooks("app", "unknown", "unauthorized"), Some(1.0));
    assert_eq!(webhooks("app", "unknown", "bad_request"), Some(1.0));
    assert_eq!(webhooks("app", "unknown", "too_large"), Some(1.0));

    let finished = |status| {
        value(
            &m,
            "autofollow_events_finished_total",
            &[("status", status)],
        )
    };
    assert_eq!(finished("done"), Some(3.0));
    assert_eq!(finished("failed"), Some(1.0));
    assert_eq!(value(&m, "autofollow_dead_letters_total", &[]), Some(1.0));
    assert_eq!(value(&m, "autofollow_retries_total", &[]), Some(1.0));
    assert_eq!(value(&m, "autofollow_events_parked_total", &[]), Some(0.0));

    let calls = |status| {
        value(
            &m,
            "autofollow_ghl_requests_total",
            &[
                ("method", "POST"),
                ("endpoint", "followers"),
                ("status", status),
            ],
        )
    };
    assert_eq!(calls("201"), Some(3.0));
    assert_eq!(calls("429"), Some(1.0));
    assert_eq!(calls("422"), Some(1.0));
    assert_eq!(
        histogram_count(
            &m,
            "autofollow_ghl_request_duration_seconds",
            &[("method", "POST"), ("endpoint", "followers")]
        ),
        5.0
    );
    let waits = value(
        &m,
        "autofollow_rate_limit_waits_total",
        &[("location", LOCATION)],
    );
    assert!(waits.is_some_and(|w| w >= 1.0), "{waits:?}");

    let matches = |rule| value(&m, "autofollow_rule_matches_total", &[("rule", rule)]);
    assert_eq!(matches("facebook-leads"), Some(3.0));
    assert_eq!(matches("from-workflows"), Some(1.0));

    let reloads = |outcome| value(&m, "autofollow_rule_reloads_total", &[("outcome", outcome)]);
    assert_eq!(reloads("rejected"), Some(1.0));
    assert_eq!(reloads("applied"), Some(1.0));
    assert_eq!(
        value(&m, "autofollow_rules_info", &[("version", &version)]),
        Some(1.0)
    );
    assert_eq!(
        m.samples
            .iter()
            .filter(|s| s.metric == "autofollow_rules_info")
            .count(),
        1,
        "only the version in force is shown"
    );
    assert_eq!(value(&m, "autofollow_rules", &[]), Some(3.0));
    assert_eq!(value(&m, "autofollow_rules_last_reload_ok", &[]), Some(1.0));

    assert_eq!(value(&m, "autofollow_queue_depth", &[]), Some(0.0));
    assert_eq!(
        value(&m, "autofollow_queue_oldest_pending_age_seconds", &[]),
        Some(0.0)
    );
    assert_eq!(value(&m, "autofollow_events_failed", &[]), Some(1.0));
    assert_eq!(value(&m, "autofollow_tokens_refused", &[]), Some(0.0));
    assert_eq!(value(&m, "autofollow_store_up", &[]), Some(1.0));
    for operation in ["insert_event", "claim", "finish_all", "queue_stats"] {
        assert!(
            histogram_count(
                &m,
                "autofollow_store_operation_duration_seconds",
                &[("operation", operation)]
            ) >= 1.0,
            "{operation}"
        );
    }
    app.shutdown().await;
}

#[tokio::test]
async fn the_queue_gauges_show_waiting_work_and_its_age() {
    let app = spawn_with(Options {
        rules: RULES.into(),
        // Nothing is processed during the test.
        settle_delay: "1h".into(),
        ..Options::default()
    })
    .await;
    app.contact("ContactCreate", "c1", json!({"source": "fb-x"}))
        .await;
    app.contact("ContactCreate", "c2", json!({"source": "fb-x"}))
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, m) = scrape(&app).await;
    assert_eq!(value(&m, "autofollow_queue_depth", &[]), Some(2.0));
    let age = value(&m, "autofollow_queue_oldest_pending_age_seconds", &[]).unwrap();
    assert!((1.0..60.0).contains(&age), "{age}");
    app.shutdown().await;
}

#[tokio::test]
async fn readiness_is_503_while_the_store_is_gone_and_200_when_it_returns() {
    let faults = Faults::default();
    let app = spawn_with(Options {
        rules: RULES.into(),
        faults: Some(faults.clone()),
        ..Options::default()
    })
    .await;
    app.ghl_accepts_the_rest().await;
    let ready = || async {
        let r = app
            .http
            .get(format!("{}/readyz", app.admin))
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.unwrap(),
        )
    };
    let (status, body) = ready().await;
    assert_eq!((status, &body["store"]), (200, &json!("ok")), "{body}");

    faults.set(Fault::All);
    let (status, body) = ready().await;
    assert_eq!(
        (status, &body["store"]),
        (503, &json!("unreachable")),
        "{body}"
    );
    // The public listener says only that: not ready.
    let public = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 503);
    assert_eq!(
        public.json::<serde_json::Value>().await.unwrap(),
        json!({"status": "not ready"})
    );
    // Liveness is not readiness: the process is fine, and restarting it would not help.
    let live = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let lead =
        json!({"type": "ContactCreate", "locationId": LOCATION, "id": "c1", "source": "fb-x"});
    assert_eq!(app.post_app(&lead).await.status(), 429);
    let (_, m) = scrape(&app).await;
    assert_eq!(value(&m, "autofollow_store_up", &[]), Some(0.0));
    assert_eq!(
        value(
            &m,
            "autofollow_webhooks_total",
            &[
                ("answer", "store_unavailable"),
                ("event_type", "ContactCreate")
            ]
        ),
        Some(1.0)
    );

    faults.set(Fault::None);
    let (status, body) = ready().await;
    assert_eq!((status, &body["store"]), (200, &json!("ok")), "{body}");
    let id = accepted(app.post_app(&lead).await).await;
    app.drain().await;
    assert_eq!(
        app.event(id).await.status,
        autofollow::model::record::EventStatus::Done
    );
    app.shutdown().await;
}

/// Events by status in the database; `leased` counts only those under a lease.
async fn by_status(database_url: &str, leased: bool) -> HashMap<String, i64> {
    let pool = sqlx::SqlitePool::connect(database_url).await.unwrap();
    let filter = if leased {
        "WHERE lease_owner IS NOT NULL"
    } else {
        ""
    };
    let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT status, COUNT(*) FROM events {filter} GROUP BY status"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.into_iter().collect()
}

/// Sends leads for `n` contacts to a GoHighLevel that answers after `delay`, and shuts down
/// once the first call is in flight.
async fn shut_down_with_calls_in_flight(grace: &str, delay: Duration, n: usize) -> TestApp {
    let mut app = spawn_with(Options {
        rules: RULES.into(),
        shutdown_grace: grace.into(),
        ..Options::default()
    })
    .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_delay(delay))
        .mount(&app.ghl)
        .await;
    for i in 0..n {
        app.contact("ContactCreate", &format!("c{i}"), json!({"source": "fb-x"}))
            .await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while app
        .ghl
        .received_requests()
        .await
        .unwrap_or_default()
        .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "no call started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.running.take().unwrap().shutdown().await;
    app
}

#[tokio::test]
async fn shutdown_lets_in_flight_calls_finish_and_leaves_no_lease() {
    let app = shut_down_with_calls_in_flight("10s", Duration::from_millis(700), 3).await;
    assert_eq!(by_status(&app.database_url, true).await, HashMap::new());
    // The calls in flight finished and were recorded; nothing was lost.
    let statuses = by_status(&app.database_url, false).await;
    assert_eq!(statuses.values().sum::<i64>(), 3, "{statuses:?}");
    assert!(
        statuses.get("done").copied().unwrap_or(0) >= 1,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn shutdown_past_the_grace_period_releases_the_unfinished_events() {
    let app = shut_down_with_calls_in_flight("200ms", Duration::from_secs(30), 3).await;
    assert_eq!(by_status(&app.database_url, true).await, HashMap::new());
    // The calls never answered: the events wait, unleased, for the next run.
    assert_eq!(
        by_status(&app.database_url, false).await,
        HashMap::from([("pending".to_owned(), 3)])
    );
}

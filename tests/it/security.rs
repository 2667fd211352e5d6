//! The security checks SECURITY.md lists, each against the running service: what an
//! unauthenticated request may cost, replays, ids that could leave a URL path, weak secrets,
//! the admin listener, what is logged, and what is stored and erased. Loopback only, bounded
//! in count and time; costs are compared with a measurement of the same run, never with a
//! fixed time.

use crate::common;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::service::{
    Options, SECRET, TestApp, accepted, now_secs, post_signed, spawn_with, standard_webhooks,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

const ALICE_ONLY: &str = "rules:\n  - name: all\n    add: [alice]\n";

async fn app() -> TestApp {
    spawn_with(Options {
        rules: ALICE_ONLY.into(),
        ..Options::default()
    })
    .await
}

fn lead(contact: &str) -> Value {
    json!({"type": "ContactCreate", "locationId": "ve9EPM428h8vShlRW1KT", "id": contact})
}

async fn stored(app: &TestApp) -> usize {
    let filter = autofollow::store::EventFilter {
        limit: 0,
        ..Default::default()
    };
    app.store().list_events(&filter).await.unwrap().len()
}

/// The time `n` requests built by `request` take, one after another; each must be a 401.
async fn time_401s(n: usize, request: impl Fn() -> reqwest::RequestBuilder) -> Duration {
    let started = Instant::now();
    for _ in 0..n {
        let r = request().send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
    started.elapsed()
}

// ---- 1. CPU before authentication -----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maximal_hostile_signature_header_costs_no_more_than_a_normal_401() {
    let app = app().await;
    let body = vec![b'x'; 256 * 1024 - 1];
    let post = || {
        app.http
            .post(format!("{}/webhooks/ghl", app.base))
            .body(body.clone())
    };
    let ts = now_secs().to_string();
    let one_wrong = format!("v1,{}", BASE64.encode([7u8; 32]));
    // About 90,000 empty entries: what fits within hyper's header limit (the review's
    // request had 100,000, and took 15 s of CPU to answer).
    let hostile = "v1, ".repeat(90_000);
    let normal = || {
        post()
            .header("webhook-id", "msg_1")
            .header("webhook-timestamp", &ts)
            .header("webhook-signature", &one_wrong)
    };
    let standard = || {
        post()
            .header("webhook-id", "msg_1")
            .header("webhook-timestamp", &ts)
            .header("webhook-signature", &hostile)
    };
    let ed25519 = || post().header("X-GHL-Signature", "A".repeat(300_000));
    let secret = || post().header("X-Webhook-Secret", "s".repeat(300_000));
    // Interleaved, so a slower moment of the machine weighs on both.
    let (mut normal_took, mut hostile_took) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..3 {
        normal_took += time_401s(3, normal).await;
        hostile_took += time_401s(1, standard).await;
        hostile_took += time_401s(1, ed25519).await;
        hostile_took += time_401s(1, secret).await;
    }
    eprintln!("9 normal 401s: {normal_took:?}; 9 hostile ones: {hostile_took:?}");
    assert!(
        hostile_took < normal_took * 4,
        "hostile headers took {hostile_took:?} against {normal_took:?} for normal 401s"
    );
    // Meanwhile the service answers others.
    let r = app.http.get(format!("{}/healthz", app.base)).send().await;
    assert_eq!(r.unwrap().status(), 200);
    assert_eq!(stored(&app).await, 0);
    app.shutdown().await;
}

// ---- 2. Replays ---------------------------------------------------------------------------

#[tokio::test]
async fn an_app_body_outside_the_max_age_is_refused_and_one_without_a_timestamp_is_accepted() {
    let app = spawn_with(Options {
        rules: ALICE_ONLY.into(),
        webhook_max_age: "10m".into(),
        ..Options::default()
    })
    .await;
    app.ghl_accepts_the_rest().await;
    let at = |ago: Duration| {
        humantime::format_rfc3339_millis(std::time::SystemTime::now() - ago).to_string()
    };
    let with = |contact: &str, timestamp: Option<String>| {
        let mut body = lead(contact);
        body["webhookId"] = json!(format!("wh-{contact}"));
        if let Some(t) = timestamp {
            body["timestamp"] = json!(t);
        }
        body
    };
    accepted(app.post_app(&with("fresh", Some(at(Duration::ZERO)))).await).await;
    accepted(
        app.post_app(&with("retried", Some(at(Duration::from_secs(540)))))
            .await,
    )
    .await;
    accepted(app.post_app(&with("untimed", None)).await).await;
    let old = app
        .post_app(&with("replayed", Some(at(Duration::from_secs(3600)))))
        .await;
    assert_eq!(old.status(), 401);
    let answer: Value = old.json().await.unwrap();
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("AUTOFOLLOW_WEBHOOK_MAX_AGE")),
        "{answer}"
    );
    assert_eq!(stored(&app).await, 3);
    app.shutdown().await;
}

#[tokio::test]
async fn a_standard_webhooks_request_sent_twice_is_stored_once() {
    let app = app().await;
    let body = json!({"contact_id": "c1", "location": {"id": "L1"}}).to_string();
    let send = |headers: [(String, String); 3]| {
        let mut r = app
            .http
            .post(format!("{}/webhooks/workflow", app.base))
            .body(body.clone());
        for (k, v) in headers {
            r = r.header(k, v);
        }
        r.send()
    };
    let now = now_secs();
    accepted(send(standard_webhooks(body.as_bytes(), now)).await.unwrap()).await;
    let again = send(standard_webhooks(body.as_bytes(), now)).await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(
        again.json::<Value>().await.unwrap(),
        json!({"status": "duplicate"})
    );
    // Another delivery (another webhook-id) of the same body is another event.
    accepted(
        send(standard_webhooks(body.as_bytes(), now + 1))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(stored(&app).await, 2);
    app.shutdown().await;
}

// ---- 3. Ids --------------------------------------------------------------------------------

#[tokio::test]
async fn ids_that_could_leave_the_url_path_are_400_naming_the_field_and_nothing_is_stored() {
    let app = app().await;
    app.ghl_accepts_the_rest().await;
    let cases = [
        (lead(".."), "id"),
        (lead("."), "id"),
        (lead("a/b"), "id"),
        (lead("c1?x=1"), "id"),
        (
            json!({"type": "ContactCreate", "locationId": "../L", "id": "c1"}),
            "locationId",
        ),
        (
            json!({"type": "OpportunityCreate", "locationId": "L", "id": "o1", "contactId": "%2e%2e"}),
            "contactId",
        ),
        (
            json!({"type": "ContactCreate", "locationId": "L", "id": "c1", "assignedTo": "u 1"}),
            "assignedTo",
        ),
    ];
    for (body, field) in cases {
        let r = app.post_app(&body).await;
        assert_eq!(r.status(), 400, "{body}");
        let answer: Value = r.json().await.unwrap();
        let error = answer["error"].as_str().unwrap_or_default().to_owned();
        assert!(error.contains(&format!("`{field}`")), "{body}: {error}");
    }
    let r = app
        .post_workflow(&json!({"contact_id": "..", "location": {"id": "L1"}}))
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(stored(&app).await, 0);
    app.drain().await;
    assert!(app.ghl.received_requests().await.unwrap().is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn an_event_stored_before_ids_were_checked_fails_and_the_queue_goes_on() {
    let app = app().await;
    app.ghl_accepts_the_rest().await;
    // A row as an earlier version could have stored it.
    let pool = sqlx::SqlitePool::connect(&app.database_url).await.unwrap();
    let now = i64::try_from(now_secs() * 1000).unwrap();
    let old: i64 = sqlx::query_scalar(
        "INSERT INTO events (kind, event_type, location_id, contact_id, body, received_at, available_at)
         VALUES ('app', 'ContactCreate', 'L1', '..', ?1, ?2, ?2) RETURNING id",
    )
    .bind(r#"{"type":"ContactCreate","locationId":"L1","id":".."}"#)
    .bind(now)
    .fetch_one(&pool)
    .await
    .unwrap();
    let new = app.contact("ContactCreate", "c1", json!({})).await;
    app.drain().await;
    assert_eq!(
        app.event(old).await.status,
        autofollow::model::record::EventStatus::Failed
    );
    let error = app.event(old).await.last_error.unwrap_or_default();
    assert!(
        error.contains("no longer parses") && error.contains("`id`"),
        "{error}"
    );
    assert_eq!(
        app.event(new).await.status,
        autofollow::model::record::EventStatus::Done
    );
    let paths: Vec<String> = app
        .ghl
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.url.path().to_owned())
        .collect();
    assert_eq!(paths, ["/contacts/c1/followers"]);
    app.shutdown().await;
}

// ---- 4. Weak secrets -------------------------------------------------------------------------

fn serve_with_env(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_autofollow"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "off"])
        .current_dir(common::repo());
    for (k, v) in env {
        command.env(k, v);
    }
    let o = command.output().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn weak_secrets_and_admin_tokens_stop_start_up_with_a_clear_message() {
    for (variable, value, says) in [
        ("AUTOFOLLOW_WEBHOOK_SECRET", "whsec_", "at least 24 bytes"),
        (
            "AUTOFOLLOW_WEBHOOK_SECRET",
            "whsec_c2VjcmV0",
            "at least 24 bytes",
        ),
        (
            "AUTOFOLLOW_WEBHOOK_SECRET",
            "tiny-WEAK",
            "at least 16 characters",
        ),
        (
            "AUTOFOLLOW_WEBHOOK_SECRET",
            "a-long-enough-secret-1,tiny-WEAK",
            "secret 2",
        ),
        (
            "AUTOFOLLOW_ADMIN_TOKEN",
            "admin-WEAK",
            "at least 16 characters",
        ),
    ] {
        let (code, err) = serve_with_env(&[(variable, value)]);
        assert_eq!(code, Some(1), "{variable}={value} started: {err}");
        assert!(
            err.contains(variable) && err.contains(says),
            "{variable}={value}: {err}"
        );
        assert!(!err.contains("WEAK"), "the value was shown: {err}");
    }
}

#[tokio::test]
async fn during_a_rotation_the_old_and_the_new_secret_are_both_accepted() {
    let (old, new) = ("old-secret-0123456789", "new-secret-0123456789");
    let app = spawn_with(Options {
        rules: ALICE_ONLY.into(),
        secret: format!("{old},{new}"),
        ..Options::default()
    })
    .await;
    for (n, secret) in [old, new].into_iter().enumerate() {
        let r = app
            .http
            .post(format!("{}/webhooks/ghl", app.base))
            .header("X-Webhook-Secret", secret)
            .json(&lead(&format!("c{n}")))
            .send()
            .await
            .unwrap();
        accepted(r).await;
    }
    let r = app
        .http
        .post(format!("{}/webhooks/ghl", app.base))
        .header("X-Webhook-Secret", SECRET)
        .json(&lead("c3"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    app.shutdown().await;
}

// ---- 5. Memory held by unauthenticated bodies ------------------------------------------------

/// Opens a connection and sends a request head declaring `length` body bytes, and no body.
async fn head_only(addr: &str, path: &str, headers: &str, length: usize) -> tokio::net::TcpStream {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: autofollow\r\nContent-Type: application/json\r\n{headers}Content-Length: {length}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn
}

/// The status line's code, read within `limit`; `None` when nothing came.
async fn status_within(conn: &mut tokio::net::TcpStream, limit: Duration) -> Option<u16> {
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(limit, conn.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn a_wrong_workflow_secret_is_refused_before_the_body_is_read() {
    let app = app().await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    // The body is declared and never sent: only an answer that did not wait for it comes.
    let mut wrong = head_only(
        &addr,
        "/webhooks/workflow?secret=not-the-secret",
        "",
        200_000,
    )
    .await;
    assert_eq!(
        status_within(&mut wrong, Duration::from_secs(10)).await,
        Some(401)
    );
    let mut missing = head_only(&addr, "/webhooks/workflow", "", 200_000).await;
    assert_eq!(
        status_within(&mut missing, Duration::from_secs(10)).await,
        Some(401)
    );
    // The right secret waits for the body, as it must.
    let mut right = head_only(
        &addr,
        &format!("/webhooks/workflow?secret={SECRET}"),
        "",
        10,
    )
    .await;
    assert_eq!(
        status_within(&mut right, Duration::from_millis(500)).await,
        None
    );
    app.shutdown().await;
}

/// A request refused before its body is read still gets its answer: the body is read and
/// thrown away beside it, so the connection is not reset under a sender still writing (a
/// GoHighLevel webhook refused with 429 must see the 429, or it is lost).
#[tokio::test]
async fn a_request_refused_before_its_body_is_read_still_gets_its_answer() {
    let app = app().await;
    // The sender writes its body only after the answer could have been sent (the race the
    // HTTP property test once lost with a 174-byte body).
    let addr = app.base.trim_start_matches("http://").to_owned();
    for path in [
        "/webhooks/ghl",
        "/webhooks/workflow?secret=wrong-secret-0123456789",
    ] {
        let mut conn = head_only(&addr, path, "X-GHL-Signature: !!\r\n", 174).await;
        // The answer is sent before the body arrives; the body still goes through whole,
        for part in [100, 74] {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let written = conn.write_all(&vec![b'x'; part]).await;
            assert!(written.is_ok(), "{path}: {written:?}");
        }
        // and the answer is there to read.
        let status = status_within(&mut conn, Duration::from_secs(10)).await;
        assert_eq!(status, Some(401), "{path}");
    }
    let body = vec![b'x'; 200 * 1024];
    for i in 0..20 {
        let (path, header) = match i % 2 {
            0 => ("/webhooks/ghl", ("X-GHL-Signature", "!!not base64!!")),
            _ => (
                "/webhooks/workflow?secret=wrong-secret-0123456789",
                ("X-Other", "1"),
            ),
        };
        let r = app
            .http
            .post(format!("{}{path}", app.base))
            .header(header.0, header.1)
            .body(body.clone())
            .send()
            .await;
        let status = r.map(|r| r.status().as_u16());
        assert_eq!(status.map_err(|e| e.to_string()), Ok(401), "request {i}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn bodies_beyond_the_budget_get_429_before_they_are_read() {
    let app = app().await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let signature = format!("X-GHL-Signature: {}\r\n", BASE64.encode([1u8; 64]));
    let size = 256 * 1024;
    // Large bodies may hold half the budget: that many hold it (their bodies never come) ...
    let fit = autofollow::web::guard::BODY_BUDGET / 2 / size;
    let mut holding = Vec::new();
    for _ in 0..fit {
        holding.push(head_only(&addr, "/webhooks/ghl", &signature, size).await);
    }
    // ... so the next large ones are answered at once, without a byte of their bodies read,
    for _ in 0..3 {
        let mut extra = head_only(&addr, "/webhooks/ghl", &signature, size).await;
        let status = status_within(&mut extra, Duration::from_secs(10)).await;
        assert_eq!(status, Some(429));
    }
    // while GoHighLevel's usual small webhooks still get in.
    accepted(app.post_app(&lead("small")).await).await;
    drop(holding);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut big = lead("big");
        big["padding"] = json!("x".repeat(200 * 1024));
        let r = app.post_app(&big).await;
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 429);
        assert!(Instant::now() < deadline, "the budget never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.shutdown().await;
}

/// The `autofollow serve` binary with one rule, its own SQLite file, and `env`; the
/// directory holding both.
fn serve(env: &[(&str, String)]) -> (common::process::Service, tempfile::TempDir) {
    let dir = common::process::rules_dir("  - name: all\n    add: [alice]\n");
    let mut all = vec![
        (
            "AUTOFOLLOW_RULES",
            dir.path().join("rules.yaml").display().to_string(),
        ),
        (
            "AUTOFOLLOW_DATABASE_URL",
            format!("sqlite://{}", dir.path().join("db.sqlite").display()),
        ),
    ];
    all.extend(env.iter().cloned());
    (common::process::spawn(&all), dir)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_unauthenticated_bodies_hold_a_bounded_amount_of_memory() {
    const CONNECTIONS: usize = 300;
    const BODY: usize = 255 * 1024;
    let (service, _dir) = serve(&[]);
    let pid = service.child.id();
    let addr = service.base.trim_start_matches("http://").to_owned();
    let before = rss_kib(pid);
    // Each connection sends a well-formed signature (it must read the body to check it) and
    // its body slowly, in 16 KiB pieces, all but the last byte; then waits.
    let signature = format!("X-GHL-Signature: {}\r\n", BASE64.encode([1u8; 64]));
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let (addr, signature) = (addr.clone(), signature.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = head_only(&addr, "/webhooks/ghl", &signature, BODY).await;
            let piece = vec![b' '; 16 * 1024];
            let mut sent = 0;
            while sent + piece.len() < BODY {
                if conn.write_all(&piece).await.is_err() {
                    return (conn, true);
                }
                sent += piece.len();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = conn.write_all(&piece[..BODY - sent - 1]).await;
            (conn, false)
        }));
    }
    let mut peak = before;
    let mut conns = Vec::new();
    for t in tasks {
        conns.push(t.await.unwrap());
        peak = peak.max(rss_kib(pid));
    }
    for _ in 0..10 {
        peak = peak.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut refused = 0;
    for (conn, _) in &mut conns {
        if status_within(conn, Duration::from_millis(20)).await == Some(429) {
            refused += 1;
        }
    }
    drop(conns);
    let grew_mib = (peak.saturating_sub(before)) as f64 / 1024.0;
    let unbounded_mib = (CONNECTIONS * BODY) as f64 / 1024.0 / 1024.0;
    eprintln!(
        "RSS {:.1} MiB before, {:.1} MiB at the peak ({grew_mib:.1} MiB more) with {CONNECTIONS} slow bodies ({unbounded_mib:.0} MiB in all); {refused} answered 429",
        before as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    assert!(refused > 0, "no body was refused");
    let budget_mib = (autofollow::web::guard::BODY_BUDGET / 1024 / 1024) as f64;
    assert!(
        grew_mib < budget_mib * 2.0 && grew_mib < unbounded_mib / 2.0,
        "RSS grew by {grew_mib:.1} MiB (budget {budget_mib} MiB)"
    );
    // And the service is well.
    let r = service.post_app(&lead("after")).await;
    assert_eq!(r.status(), 200);
}

// ---- 6. Admin listener ---------------------------------------------------------------------

#[tokio::test]
async fn the_public_listener_serves_webhooks_and_health_only() {
    let app = spawn_with(Options {
        rules: ALICE_ONLY.into(),
        admin_token: Some("admin-test-token-0001".into()),
        ..Options::default()
    })
    .await;
    for path in ["/metrics", "/admin/events", "/admin/reload"] {
        let r = app
            .http
            .get(format!("{}{path}", app.base))
            .bearer_auth("admin-test-token-0001")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path} on the public listener");
    }
    let ready: Value = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready, json!({"status": "ready"}), "no details in public");
    let metrics = app.http.get(format!("{}/metrics", app.admin)).send().await;
    assert_eq!(metrics.unwrap().status(), 200);
    assert_eq!(app.ready().await["store"], "ok");
    app.shutdown().await;
}

#[test]
fn the_admin_listener_defaults_to_loopback() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_autofollow"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let flag = help
        .split("\n      --")
        .find(|chunk| chunk.starts_with("admin-listen"))
        .unwrap_or_default();
    assert!(flag.contains("AUTOFOLLOW_ADMIN_LISTEN"), "{help}");
    assert!(flag.contains("[default: 127.0.0.1:9090]"), "{help}");
}

// ---- 7. Logs -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_are_summed_up_and_request_strings_cannot_forge_log_lines() {
    let (service, _dir) = serve(&[("AUTOFOLLOW_LOG_FORMAT", "pretty".into())]);
    let http = reqwest::Client::new();
    let started = Instant::now();
    for i in 0..1000 {
        let r = http
            .post(format!("{}/webhooks/ghl", service.base))
            .header("X-GHL-Signature", "AAAA")
            .json(&lead(&format!("intruder{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    eprintln!("1,000 unauthenticated requests in {:?}", started.elapsed());
    // Authenticated strings with line breaks, an escape sequence and a forged line.
    let evil = json!({"type": "Evil\nType\r\n2026-01-01T00:00:00Z  WARN forged: admin logged in\u{1b}[2J",
                      "locationId": "L1"});
    let r = service.post_app(&evil).await;
    assert_eq!(r.status(), 200);
    let pid = service.child.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let mut service = service;
    let _ = service.child.wait();
    let logs = service.logs();
    let lines: Vec<&str> = logs.lines().collect();
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("intruder") || l.contains("rejected") && !l.contains("1000")),
        "a line per rejection:\n{logs}"
    );
    let summary: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("webhooks rejected"))
        .collect();
    assert_eq!(summary.len(), 1, "{logs}");
    assert!(
        summary[0].contains("rejected=1000") && summary[0].contains("unauthorized"),
        "{}",
        summary[0]
    );
    assert!(
        lines.len() < 30,
        "{} lines for 1,000 rejections:\n{logs}",
        lines.len()
    );
    for line in &lines {
        assert!(
            line.contains(" INFO ") || line.contains(" WARN ") || line.contains(" DEBUG "),
            "a line split or forged: {line:?}\n{logs}"
        );
        assert!(
            !line.contains('\u{1b}'),
            "an escape sequence reached the log"
        );
    }
    assert!(
        logs.contains(r#"event_type="Evil\nType\r\n"#),
        "the type is logged escaped:\n{logs}"
    );
}

// ---- 8. Data at rest -----------------------------------------------------------------------

#[cfg(unix)]
#[tokio::test]
async fn the_sqlite_files_are_private_to_the_service() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let path = data.join("autofollow.db");
    let url = format!("sqlite://{}", path.display());
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let store = autofollow::store::sqlite::SqliteStore::open(&url)
        .await
        .unwrap();
    use autofollow::store::Queue;
    store
        .insert_event(
            autofollow::store::NewEvent {
                kind: autofollow::model::event::BodyKind::App,
                event_type: "ContactCreate".into(),
                location_id: "L1".parse().unwrap(),
                contact_id: "c1".parse().unwrap(),
                opportunity_id: None,
                webhook_id: None,
                body: "{}".into(),
                available_at: std::time::SystemTime::now(),
            },
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(mode(&data), 0o700, "the directory");
    for suffix in ["", "-wal", "-shm"] {
        let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    drop(store);
    // A file made readable by others (an older version, a copy) is narrowed at start.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _again = autofollow::store::sqlite::SqliteStore::open(&url)
        .await
        .unwrap();
    assert_eq!(mode(&path), 0o600);
}

#[tokio::test]
async fn an_operator_erases_a_contact_over_http_and_from_the_command_line() {
    let app = spawn_with(Options {
        rules: ALICE_ONLY.into(),
        admin_token: Some("admin-test-token-0001".into()),
        ..Options::default()
    })
    .await;
    app.ghl_accepts_the_rest().await;
    for contact in ["forget-me", "forget-me", "keep-me", "cli-erased"] {
        app.contact("ContactCreate", contact, json!({"tags": ["vip"]}))
            .await;
    }
    app.drain().await;
    let r = app
        .http
        .delete(format!("{}/admin/contacts/forget-me", app.admin))
        .bearer_auth("admin-test-token-0001")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let erased: Value = r.json().await.unwrap();
    assert_eq!(erased["erased"]["events"], 2, "{erased}");
    assert_eq!(erased["erased"]["decisions"], 2, "{erased}");
    let bad = app
        .http
        .delete(format!("{}/admin/contacts/..", app.admin))
        .bearer_auth("admin-test-token-0001")
        .send()
        .await
        .unwrap();
    assert!(
        bad.status() == 400 || bad.status() == 404,
        "{}",
        bad.status()
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_autofollow"))
        .args(["erase", "cli-erased", "--database-url", &app.database_url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "erased contact cli-erased: 1 event, 1 decision, 2 state rows",
        "its tags, and alice in the ownership ledger"
    );
    let shared = &app;
    let history = |c: &str| {
        let c = autofollow::model::ids::ContactId::parse(c).unwrap();
        async move { shared.store().history(&c).await.unwrap().len() }
    };
    assert_eq!(history("forget-me").await, 0);
    assert_eq!(history("cli-erased").await, 0);
    assert_eq!(history("keep-me").await, 1);
    app.shutdown().await;
}

// ---- 9. Smaller ones -----------------------------------------------------------------------

#[tokio::test]
async fn event_listings_are_capped() {
    let app = spawn_with(Options {
        rules: ALICE_ONLY.into(),
        admin_token: Some("admin-test-token-0001".into()),
        dry_run: Some(true),
        ..Options::default()
    })
    .await;
    let mut posts = tokio::task::JoinSet::new();
    for i in 0..autofollow::web::admin::MAX_LIST + 5 {
        let (http, base) = (app.http.clone(), app.base.clone());
        posts.spawn(async move { post_signed(&http, &base, &lead(&format!("c{i}"))).await });
        while posts.len() >= 32 {
            assert_eq!(posts.join_next().await.unwrap().unwrap().status(), 200);
        }
    }
    while let Some(r) = posts.join_next().await {
        assert_eq!(r.unwrap().status(), 200);
    }
    let shared = &app;
    let list = |query: &'static str| async move {
        let r = shared
            .http
            .get(format!("{}/admin/events{query}", shared.admin))
            .bearer_auth("admin-test-token-0001")
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let (status, body) = list("?limit=0").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = list("?limit=100000").await;
    assert_eq!(status, 200);
    assert_eq!(body.as_array().map(Vec::len), Some(1000));
    let (_, body) = list("").await;
    assert_eq!(body.as_array().map(Vec::len), Some(100));
    app.shutdown().await;
}

#[tokio::test]
async fn a_redirect_from_gohighlevel_is_an_error_and_is_not_followed() {
    let app = app().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(307).insert_header("Location", "http://127.0.0.1:9/stolen"),
        )
        .mount(&app.ghl)
        .await;
    let id = app.contact("ContactCreate", "c1", json!({})).await;
    app.drain().await;
    assert_eq!(
        app.event(id).await.status,
        autofollow::model::record::EventStatus::Failed
    );
    let decision = &app.decisions(id).await[0];
    assert!(
        decision
            .error
            .as_deref()
            .is_some_and(|e| e.contains("redirect")),
        "{decision:?}"
    );
    assert_eq!(decision.calls[0].path, "/contacts/c1/followers");
    assert_eq!(app.ghl.received_requests().await.unwrap().len(), 1);
    app.shutdown().await;
}

#[test]
fn the_serve_arguments_never_show_a_secret() {
    use clap::Parser;
    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        serve: autofollow::config::ServeArgs,
    }
    let cli = Cli::parse_from([
        "autofollow",
        "--ghl-token",
        "pit-VISIBLE-1",
        "--webhook-secret",
        "secret-VISIBLE-0123456789",
        "--admin-token",
        "admin-VISIBLE-0123456789",
    ]);
    let shown = format!("{cli:?}");
    assert!(!shown.contains("VISIBLE"), "{shown}");
}

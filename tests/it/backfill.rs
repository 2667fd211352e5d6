//! Backfill: the running service walks a location's contacts through GoHighLevel's search
//! API and queues what the rules want for each, within the rate limit, live webhooks first,
//! resumable after a SIGKILL; `autofollow backfill` starts it and follows it.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::ghl_crm::{Crm, Shared, router};
use crate::common::process::{Service, location_tokens, rules_dir, serve_stand_in, spawn};
use crate::common::{ALICE, BOB, CAROL};

/// Contacts per location.
const N: usize = 5000;

const ADMIN: &str = "admin-token-for-backfills";

/// vip contacts get alice; hot contacts (the live webhooks') get bob.
const RULES: &str = "  - name: vip
    when: {has_tag: vip}
    add: [alice]
    follow: while_matching
  - name: hot
    when: {has_tag: hot}
    add: [bob]
";

/// Every 10th contact is vip; every 30th was given carol by hand (and every 50th alice).
fn contact(i: usize) -> (Vec<&'static str>, Vec<&'static str>) {
    let tags = if i % 10 == 0 {
        vec!["vip"]
    } else {
        vec!["lead"]
    };
    let mut hand = Vec::new();
    if i % 30 == 0 {
        hand.push(CAROL);
    }
    if i % 50 == 0 {
        hand.push(ALICE);
    }
    (tags, hand)
}

fn expected(i: usize) -> BTreeSet<String> {
    let (tags, hand) = contact(i);
    let mut want: BTreeSet<String> = hand.iter().map(|u| (*u).to_owned()).collect();
    if tags.contains(&"vip") {
        want.insert(ALICE.to_owned());
    }
    want
}

fn env(dir: &Path, ghl: &str, rate: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "AUTOFOLLOW_RULES",
            dir.join("rules.yaml").display().to_string(),
        ),
        (
            "AUTOFOLLOW_DATABASE_URL",
            format!("sqlite://{}", dir.join("data/af.db").display()),
        ),
        ("GHL_API_BASE_URL", ghl.to_owned()),
        (
            "GHL_LOCATION_TOKENS_FILE",
            location_tokens(dir, 2).display().to_string(),
        ),
        ("AUTOFOLLOW_RATE_LIMIT", rate.to_owned()),
        ("AUTOFOLLOW_SETTLE_DELAY", "0".to_owned()),
        ("AUTOFOLLOW_LEASE", "3s".to_owned()),
        ("AUTOFOLLOW_ADMIN_TOKEN", ADMIN.to_owned()),
    ]
}

/// A command running in the background, killed if the test ends first.
struct Running(Option<std::process::Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `autofollow backfill ARGS` with the service's environment, in the background.
fn backfill(env: &[(&'static str, String)], args: &[&str]) -> Running {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_autofollow"));
    command
        .arg("backfill")
        .args(args)
        .stdout(std::process::Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    Running(Some(command.spawn().expect("autofollow backfill runs")))
}

/// Its exit code and output, once it ends (waited for off the runtime, which serves the
/// stand-in).
async fn output(mut running: Running) -> (i32, String) {
    let child = running.0.take().expect("running");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().expect("backfill ends"));
    let out = out.await.expect("waited");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), text)
}

async fn backfills(service: &Service) -> Vec<Value> {
    let r = reqwest::Client::new()
        .get(format!("{}/admin/backfills", service.admin))
        .bearer_auth(ADMIN)
        .send()
        .await;
    let body: Value = match r {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => Value::Null,
    };
    body["backfills"].as_array().cloned().unwrap_or_default()
}

/// Waits until `done(backfills)` (at most `limit`).
async fn until(service: &Service, limit: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let list = backfills(service).await;
        if done(&list) {
            return list;
        }
        assert!(Instant::now() < deadline, "{list:#?}");
        if std::env::var("BF_DEBUG").is_ok() {
            let _ = std::fs::write("/tmp/bf-progress.json", format!("{list:#?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (at most a minute) until no event or task waits in the service's queue.
async fn drained(service: &Service) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = reqwest::Client::new()
            .get(format!(
                "{}/admin/events?status=pending&limit=1",
                service.admin
            ))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("the admin API answers");
        let pending: Value = r.json().await.unwrap_or_default();
        if pending.as_array().is_some_and(Vec::is_empty) {
            return;
        }
        assert!(Instant::now() < deadline, "{pending:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn seen(list: &[Value], location: &str) -> i64 {
    let b = list.iter().find(|b| b["location"] == location);
    b.and_then(|b| b["seen"].as_i64()).unwrap_or(0)
}

fn all_done(list: &[Value]) -> bool {
    list.len() == 2 && list.iter().all(|b| b["state"] == "done")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_of_10000_contacts_keeps_the_limit_lets_live_webhooks_first_and_survives_a_sigkill()
 {
    let crm = Crm::new(50, Duration::from_secs(1));
    crm.lock().unwrap().add_contacts("L0", N, contact);
    crm.lock().unwrap().add_contacts("L1", N, contact);
    let ghl = serve_stand_in(router(Shared::clone(&crm))).await;
    let dir = rules_dir(RULES);
    let env = env(dir.path(), &ghl, "50/1s");
    let service = spawn(&env);
    let started = Instant::now();
    let follower = backfill(&env, &["--location", "L0"]);
    let second = backfill(&env, &["--location", "L1"]);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let live_service = spawn_live(&service, stopped);
    until(&service, Duration::from_secs(120), |l| {
        seen(l, "L0") >= (N * 2 / 5) as i64
    })
    .await;
    let _ = stop.send(true);
    let sent = live_service.await.unwrap();
    let mut service = service;
    service.child.kill().unwrap();
    let _ = service.child.wait();
    let calls_before: usize = crm.lock().unwrap().calls.values().map(Vec::len).sum();
    let service = spawn(&env);
    let list = until(&service, Duration::from_secs(240), all_done).await;
    drained(&service).await;
    let took = started.elapsed();
    let (code, out) = output(follower).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("of location L0: done; {N} records seen")),
        "{out}"
    );
    let _ = output(second).await;
    let crm = crm.lock().unwrap();
    assert_eq!(crm.too_many, 0, "the rate limit was never exceeded");
    for location in ["L0", "L1"] {
        for i in 0..N {
            let id = format!("{location}-c{i:05}");
            assert_eq!(
                crm.followers[&id],
                expected(i),
                "{id}: {:?}",
                crm.calls.get(&id)
            );
        }
    }
    let twice = crm.calls.values().filter(|c| c.len() > 1).count();
    assert!(
        twice <= 8,
        "{twice} contacts called twice: at most the calls in flight at the kill"
    );
    assert!(
        crm.searches as usize <= 2 * (N / 100 + 2) + 1,
        "{} searches: each page read once (but the one in flight at the kill)",
        crm.searches
    );
    for (contact, at) in &sent {
        let followers = &crm.followers[contact];
        assert!(followers.contains(BOB), "{contact}");
        let latency = crm.first_post[contact].duration_since(*at);
        assert!(
            latency < took / 4,
            "{contact} waited {latency:?} of {took:?}"
        );
    }
    assert!(calls_before > 0, "{list:#?}");
}

/// Posts a live webhook for contact `live-N` tagged hot every 50 ms until `stop`; when each
/// was accepted.
fn spawn_live(
    service: &Service,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<(String, Instant)>> {
    let base = service.base.clone();
    tokio::spawn(async move {
        let mut sent = Vec::new();
        while !*stop.borrow() {
            let contact = format!("live-{}", sent.len());
            let body = json!({"type": "ContactTagUpdate", "locationId": "L0", "id": contact, "tags": ["hot"]});
            let r =
                crate::common::service::post_signed(&reqwest::Client::new(), &base, &body).await;
            if r.status() == 200 {
                sent.push((contact, Instant::now()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sent
    })
}

#[tokio::test]
async fn a_dry_run_backfill_counts_what_would_change_and_calls_nothing() {
    let crm = Crm::new(1000, Duration::from_secs(1));
    crm.lock().unwrap().add_contacts("L1", 250, contact);
    let ghl = serve_stand_in(router(Shared::clone(&crm))).await;
    let dir = rules_dir(RULES);
    let env = env(dir.path(), &ghl, "1000/1s");
    let _service = spawn(&env);
    let (code, out) = output(backfill(&env, &["--location", "L1", "--dry-run"])).await;
    assert_eq!(code, 0, "{out}");
    let vip = (0..250).filter(|i| i % 10 == 0 && i % 50 != 0).count();
    let line = format!(
        "backfill 1 of location L1: done; 250 records seen, {vip} would change, 0 tasks queued"
    );
    assert!(out.contains(&line), "{out}");
    assert!(
        out.contains(&format!("rule vip: {ALICE} +{vip} -0")),
        "{out}"
    );
    assert!(crm.lock().unwrap().calls.is_empty());
    let (_, again) = output(backfill(&env, &["--location", "L1", "--json"])).await;
    let report: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(report["queued"], vip, "{again}");
}

//! The real `autofollow serve` while its store fails, then returns: webhooks get 429 (never a
//! 5xx, never a 200 for something not committed), and once the store is back everything
//! acknowledged, before and after, is processed.
//!
//! - SQLite: another connection holds the database's write lock (as a backup, a migration or a
//!   stuck tool would), so the service cannot commit. (Tests run as root in CI, which file
//!   permissions do not stop; a held lock is the failure SQLite gives either way: no commit.)
//! - PostgreSQL (when `AUTOFOLLOW_TEST_DATABASE_URL` is set): the service reaches the server
//!   through a TCP proxy in the test, which is "stopped" (open connections cut, new ones
//!   refused) and started again.

use crate::common;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::{Service, spawn};
use serde_json::{Value, json};
use sqlx::Connection;
use tokio::task::JoinSet;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

fn lead(contact: &str) -> Value {
    json!({"type": "ContactCreate", "locationId": "L1", "id": contact, "source": "fb-ads",
           "webhookId": format!("wh-{contact}")})
}

const RULES: &str = "  - name: leads\n    when: {source: fb-ads}\n    add: [alice]\n";

async fn ghl() -> MockServer {
    let ghl = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"followers": []})))
        .mount(&ghl)
        .await;
    ghl
}

async fn start(
    ghl: &MockServer,
    database_url: &str,
    extra: &[(&str, String)],
) -> (Service, tempfile::TempDir) {
    let dir = common::process::rules_dir(RULES);
    let mut env = vec![
        (
            "AUTOFOLLOW_RULES",
            dir.path().join("rules.yaml").display().to_string(),
        ),
        ("AUTOFOLLOW_DATABASE_URL", database_url.to_owned()),
        ("GHL_API_BASE_URL", ghl.uri()),
        ("GHL_TOKEN", common::service::TOKEN.to_owned()),
        ("GHL_LOCATION_ID", "L1".to_owned()),
        ("AUTOFOLLOW_SETTLE_DELAY", "0".into()),
    ];
    env.extend(extra.iter().cloned());
    (spawn(&env), dir)
}

/// Posts the leads of `contacts` at once; their answers' statuses, in order.
async fn post_all(service: &Service, contacts: &[String]) -> Vec<u16> {
    let mut posts = JoinSet::new();
    for (i, c) in contacts.iter().enumerate() {
        let (base, body) = (service.base.clone(), lead(c));
        posts.spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            let r = common::service::post_signed(&http, &base, &body).await;
            (i, r.status().as_u16())
        });
    }
    let mut statuses = vec![0; contacts.len()];
    while let Some(r) = posts.join_next().await {
        let (i, status) = r.unwrap();
        statuses[i] = status;
    }
    statuses
}

async fn wait_followed(ghl: &MockServer, contacts: &BTreeSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while &common::service::followed_contacts(ghl).await != contacts {
        assert!(
            Instant::now() < deadline,
            "followed {:?}, expected {contacts:?}",
            common::service::followed_contacts(ghl).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ready(service: &Service) -> u16 {
    reqwest::get(format!("{}/readyz", service.base))
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_by_another_writer_gets_429_then_everything_is_processed() {
    let ghl = ghl().await;
    let data = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", data.path().join("autofollow.db").display());
    let (service, _rules) = start(&ghl, &url, &[]).await;

    let before = names("before", 5);
    assert_eq!(post_all(&service, &before).await, vec![200; 5]);
    // Processed before the lock is taken: a result the worker cannot store waits for its
    // lease to expire (a minute), which is not what this test is about.
    wait_followed(&ghl, &before.iter().cloned().collect()).await;

    // Another writer takes the lock and keeps it.
    let mut holder = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let during = names("during", 8);
    let started = Instant::now();
    let statuses = post_all(&service, &during).await;
    assert_eq!(statuses, vec![429; 8], "while the store cannot commit");
    // Refused together after one busy timeout (5 s), not one per webhook or per batch.
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "answered after {:?}",
        started.elapsed()
    );
    // Reads go on in WAL mode: the service stays ready, and healthy.
    assert_eq!(ready(&service).await, 200);

    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    holder.close().await.unwrap();
    // The refused deliveries come again (GoHighLevel retries a 429) and are taken now.
    assert_eq!(post_all(&service, &during).await, vec![200; 8]);
    let all: BTreeSet<String> = before.into_iter().chain(during).collect();
    wait_followed(&ghl, &all).await;
    drop(service);
}

/// A TCP proxy to PostgreSQL that can be stopped (every connection cut, new ones closed at
/// once) and started again.
struct Proxy {
    addr: std::net::SocketAddr,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<JoinSet<()>>>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<JoinSet<()>>> = Arc::default();
        let (up2, connections2) = (Arc::clone(&up), Arc::clone(&connections));
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let target = target.clone();
                connections2.lock().unwrap().spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Proxy {
            addr,
            up,
            connections,
        }
    }

    fn stop(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.connections.lock().unwrap().abort_all();
    }

    fn resume(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_gets_429_then_everything_is_processed() {
    let Some(direct) = common::postgres_schema().await else {
        eprintln!("AUTOFOLLOW_TEST_DATABASE_URL is not set: skipped");
        return;
    };
    let mut url = reqwest::Url::parse(&direct).unwrap();
    let target = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let proxy = Proxy::start(target).await;
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(proxy.addr.port())).unwrap();
    let ghl = ghl().await;
    let (service, _rules) = start(&ghl, url.as_str(), &[]).await;

    let before = names("before", 5);
    assert_eq!(post_all(&service, &before).await, vec![200; 5]);
    wait_followed(&ghl, &before.iter().cloned().collect()).await;

    proxy.stop();
    let during = names("during", 8);
    let statuses = post_all(&service, &during).await;
    assert_eq!(statuses, vec![429; 8], "while PostgreSQL is down");
    assert_eq!(ready(&service).await, 503, "not ready without its store");

    proxy.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready(&service).await != 200 {
        assert!(Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(post_all(&service, &during).await, vec![200; 8]);
    let all: BTreeSet<String> = before.into_iter().chain(during).collect();
    wait_followed(&ghl, &all).await;
    drop(service);
}

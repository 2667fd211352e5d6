//! Slow clients and floods: connections that send their headers a byte at a time
//! (slowloris) and a flood of unauthenticated requests do not stop authenticated webhooks
//! from being accepted, and the flood gets 401s, never a 5xx. Loopback only, bounded in count
//! and time.

use crate::common;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncWriteExt;

const SLOW_CONNECTIONS: usize = 300;
const FLOODERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_and_an_unauthenticated_flood_do_not_stop_authenticated_webhooks() {
    let app = common::service::spawn_app(
        "rules:\n  - name: all\n    events: [ContactCreate]\n    add: [alice]\n",
    )
    .await;
    app.ghl_accepts_the_rest().await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let stop = Arc::new(AtomicBool::new(false));

    // Slowloris: a request line, then one header line every 500 ms, never finished.
    let mut slow = Vec::new();
    for _ in 0..SLOW_CONNECTIONS {
        let (addr, stop) = (addr.clone(), Arc::clone(&stop));
        slow.push(tokio::spawn(async move {
            let Ok(mut conn) = tokio::net::TcpStream::connect(&addr).await else {
                return;
            };
            let _ = conn
                .write_all(b"POST /webhooks/ghl HTTP/1.1\r\nHost: autofollow\r\n")
                .await;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if conn.write_all(b"X-Slow: 1\r\n").await.is_err() {
                    return; // the server closed it: fine
                }
            }
        }));
    }

    // A flood of unauthenticated webhooks.
    let (unauthorized, server_errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut flood = Vec::new();
    for _ in 0..FLOODERS {
        let (base, stop, unauthorized, server_errors) = (
            app.base.clone(),
            Arc::clone(&stop),
            Arc::clone(&unauthorized),
            Arc::clone(&server_errors),
        );
        flood.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let body = json!({"type": "ContactCreate", "locationId": "L1", "id": "intruder"});
            while !stop.load(Ordering::Relaxed) {
                let Ok(r) = http
                    .post(format!("{base}/webhooks/ghl"))
                    .header("X-GHL-Signature", "AAAA")
                    .json(&body)
                    .send()
                    .await
                else {
                    continue;
                };
                match r.status().as_u16() {
                    401 => unauthorized.fetch_add(1, Ordering::Relaxed),
                    s if s >= 500 => server_errors.fetch_add(1, Ordering::Relaxed),
                    _ => 0,
                };
            }
        }));
    }
    // The flood is under way before the real webhooks go.
    let deadline = Instant::now() + Duration::from_secs(10);
    while unauthorized.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the flood never got an answer");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Meanwhile, GoHighLevel's own webhooks are accepted.
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..50 {
        let body = json!({"type": "ContactCreate", "locationId": "ve9EPM428h8vShlRW1KT",
                          "id": format!("real{i}"), "webhookId": format!("real-{i}")});
        let r = tokio::time::timeout(Duration::from_secs(10), app.post_app(&body))
            .await
            .expect("an authenticated webhook was answered within 10 s");
        ids.push(common::service::accepted(r).await);
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in flood.into_iter().chain(slow) {
        let _ = t.await;
    }
    app.drain().await;
    for id in ids {
        assert_eq!(
            app.event(id).await.status,
            autofollow::model::record::EventStatus::Done
        );
    }
    assert!(unauthorized.load(Ordering::Relaxed) > 0, "the flood ran");
    assert_eq!(server_errors.load(Ordering::Relaxed), 0, "no 5xx");
    // Nothing from the flood was stored.
    let intruder = app
        .store()
        .history(&autofollow::model::ids::ContactId::parse("intruder").unwrap())
        .await
        .unwrap();
    assert!(intruder.is_empty());
    eprintln!(
        "50 authenticated webhooks in {took:?} beside {SLOW_CONNECTIONS} slow connections and {} rejected flood requests",
        unauthorized.load(Ordering::Relaxed)
    );
}

/// Reads until the server closes the connection; how long that took, or `None` when it was
/// still open at `limit`. Writes `dribble` every 500 ms meanwhile (nothing when empty).
async fn closed_within(
    mut conn: tokio::net::TcpStream,
    dribble: &'static [u8],
    limit: Duration,
) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    while started.elapsed() < limit {
        match tokio::time::timeout(Duration::from_millis(500), conn.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {} // an answer (408 or the like) before the close
            Err(_) => {
                if !dribble.is_empty() && conn.write_all(dribble).await.is_err() {
                    return Some(started.elapsed());
                }
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_their_request_head_are_closed() {
    let app = common::service::spawn_app("rules:\n  - name: all\n    add: [alice]\n").await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let limit = autofollow::web::server::HEADER_READ_TIMEOUT + Duration::from_secs(5);
    // Silent: connects and sends nothing.
    let silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // Dribbling: a request line, then a header line every 500 ms, never the blank line.
    let mut dribbling = tokio::net::TcpStream::connect(&addr).await.unwrap();
    dribbling
        .write_all(b"POST /webhooks/ghl HTTP/1.1\r\nHost: autofollow\r\n")
        .await
        .unwrap();
    let (silent, dribbling) = tokio::join!(
        closed_within(silent, b"", limit),
        closed_within(dribbling, b"X-Slow: 1\r\n", limit),
    );
    assert!(silent.is_some(), "a silent connection stayed open");
    assert!(dribbling.is_some(), "a dribbling connection stayed open");
    eprintln!("closed after {silent:?} (silent) and {dribbling:?} (dribbling)");
    // The service still answers.
    let r = reqwest::get(format!("{}/healthz", app.base)).await.unwrap();
    assert_eq!(r.status(), 200);
    app.shutdown().await;
}

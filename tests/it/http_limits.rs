//! The HTTP server's limits (`src/http.rs`) do what the README says: a request not answered
//! within the request timeout gets `408`, a keep-alive connection idle past the idle timeout
//! is closed, and no more than the connection cap are served at once (the next waits until
//! one closes). Each runs with short limits, on loopback, in a few seconds; the last test
//! checks that the service's limits are the README's numbers.

use std::time::{Duration, Instant};

use autofollow::web::server::{self as http, Limits};
use axum::Router;
use axum::routing;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Serves `/fast` (answers at once) and `/slow` (answers after a minute) with `limits`; the
/// server stops when the returned sender is dropped.
async fn serve(limits: Limits) -> (std::net::SocketAddr, oneshot::Sender<()>) {
    let app = Router::new()
        .route("/fast", routing::get(|| async { "ok" }))
        .route(
            "/slow",
            routing::get(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "late"
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(http::serve_with(listener, app, limits, async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

fn limits() -> Limits {
    Limits {
        header_read: Duration::from_secs(10),
        request: Duration::from_secs(10),
        idle: Duration::from_secs(10),
        max_connections: 64,
    }
}

/// Sends a keep-alive `GET path` and reads the answer's status code (and its body, so the
/// connection can carry the next request).
async fn get(stream: &mut TcpStream, path: &str) -> u16 {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before an answer: {seen:?}");
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen).into_owned();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let length: usize = text[..end]
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        if seen.len() >= end + 4 + length {
            return text[9..12].parse().unwrap();
        }
    }
}

/// Whether the server closes the connection within `within` (a read returns end of file).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn a_request_not_answered_within_the_request_timeout_gets_408() {
    let (addr, _stop) = serve(Limits {
        request: Duration::from_millis(300),
        ..limits()
    })
    .await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(5), get(&mut c, "/slow"))
        .await
        .expect("answered");
    assert_eq!(status, 408);
    assert!(started.elapsed() >= Duration::from_millis(300));
    // A quick request on another connection is not affected.
    let mut other = TcpStream::connect(addr).await.unwrap();
    assert_eq!(get(&mut other, "/fast").await, 200);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_and_a_busy_one_is_not() {
    let idle = Duration::from_millis(400);
    let (addr, _stop) = serve(Limits { idle, ..limits() }).await;
    // Busy: a request every 150 ms over three times the idle timeout, on one connection.
    let mut busy = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    while started.elapsed() < idle * 3 {
        assert_eq!(get(&mut busy, "/fast").await, 200);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Idle: answered, then closed once nothing comes for the idle timeout.
    let mut quiet = TcpStream::connect(addr).await.unwrap();
    assert_eq!(get(&mut quiet, "/fast").await, 200);
    let since = Instant::now();
    assert!(closed_within(&mut quiet, Duration::from_secs(5)).await);
    assert!(since.elapsed() >= idle - Duration::from_millis(50));
}

#[tokio::test]
async fn beyond_the_connection_cap_a_connection_waits_until_one_closes() {
    let (addr, _stop) = serve(Limits {
        max_connections: 2,
        ..limits()
    })
    .await;
    let mut first = TcpStream::connect(addr).await.unwrap();
    let mut second = TcpStream::connect(addr).await.unwrap();
    assert_eq!(get(&mut first, "/fast").await, 200);
    assert_eq!(get(&mut second, "/fast").await, 200);
    // The third connects (the kernel's queue takes it) but is not served ...
    let mut third = TcpStream::connect(addr).await.unwrap();
    let waiting = tokio::time::timeout(Duration::from_millis(500), get(&mut third, "/fast")).await;
    assert!(waiting.is_err(), "served beyond the cap");
    // ... until one of the two closes; then it is, request and all.
    drop(first);
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[test]
fn the_service_runs_with_the_limits_the_readme_states() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let l = Limits::default();
    for stated in [
        format!(
            "send its request head within {} s of connecting",
            l.header_read.as_secs()
        ),
        format!(
            "a request is answered within {} s (`408` after that)",
            l.request.as_secs()
        ),
        format!("a connection idle for {} s is closed", l.idle.as_secs()),
        format!(
            "at most {},{:03} connections are open at once",
            l.max_connections / 1000,
            l.max_connections % 1000
        ),
    ] {
        assert!(readme.contains(&stated), "README does not say {stated:?}");
    }
}

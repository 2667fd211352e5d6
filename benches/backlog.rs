//! Memory with a large backlog: `cargo bench --bench backlog` (BACKLOG=100000, SECONDS=30).
//!
//! Fills a fresh database with BACKLOG pending events across 5 locations, starts the real
//! `autofollow serve` on it against a GoHighLevel stand-in that answers 429 to everything, and
//! samples the process's resident memory (VmRSS, and the peak VmHWM) for SECONDS. Loopback
//! only; the run stops by itself.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark stops at the first failure

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use autofollow::store::sqlite::SqliteStore;
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let backlog = env_or("BACKLOG", 100_000);
    let seconds = env_or("SECONDS", 30);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("rules.yaml"),
        "rules:\n  - name: all\n    add: [9hTnVvSr1Q2ZyE5kHfXm]\n",
    )
    .expect("rules");
    let url = format!("sqlite://{}", dir.path().join("autofollow.db").display());
    drop(SqliteStore::open(&url).await.expect("migrate"));

    let started = Instant::now();
    let pool = sqlx::SqlitePool::connect(&url).await.expect("db");
    let now = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(0);
    let mut tx = pool.begin().await.expect("tx");
    for i in 0..backlog {
        let body = format!(
            r#"{{"type":"ContactCreate","locationId":"Loc{}","id":"contact{i}","source":"bench","tags":["a","b"]}}"#,
            i % 5
        );
        sqlx::query(
            "INSERT INTO events (kind, event_type, location_id, contact_id, body, received_at, available_at)
             VALUES ('app', 'ContactCreate', ?, ?, ?, ?, ?)",
        )
        .bind(format!("Loc{}", i % 5))
        .bind(format!("contact{i}"))
        .bind(body)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await
        .expect("insert");
    }
    tx.commit().await.expect("commit");
    pool.close().await;
    println!(
        "backlog: {backlog} pending events written in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let ghl = MockServer::start().await;
    Mock::given(any())
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "1")
                .insert_header("X-RateLimit-Remaining", "0"),
        )
        .mount(&ghl)
        .await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_autofollow"))
        .arg("serve")
        .env("AUTOFOLLOW_LISTEN", "127.0.0.1:0")
        .env("AUTOFOLLOW_RULES", dir.path().join("rules.yaml"))
        .env("AUTOFOLLOW_DATABASE_URL", &url)
        .env("GHL_API_BASE_URL", ghl.uri())
        .env("GHL_TOKEN", "bench-token")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn autofollow");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut max_rss = 0;
    let mut samples = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        max_rss = max_rss.max(status_kib(pid, "VmRSS:"));
        samples += 1;
    }
    let peak = status_kib(pid, "VmHWM:");
    let calls = ghl.received_requests().await.unwrap_or_default().len();
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "ran {seconds} s with GoHighLevel answering 429 to everything: {calls} calls attempted"
    );
    println!(
        "resident memory: max sampled VmRSS {:.1} MiB over {samples} samples, peak VmHWM {:.1} MiB",
        max_rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
}

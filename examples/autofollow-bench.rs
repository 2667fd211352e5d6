//! `autofollow-bench`: reproducible speed and efficiency figures for BENCHMARKS.md.
//!
//! An example of the crate, not one of its binaries: `cargo build --release --bin autofollow
//! --example autofollow-bench && target/release/examples/autofollow-bench intake` starts, in
//! one run, the real `autofollow serve` (the release binary of the same build), an in-process GoHighLevel
//! stand-in, and a **baseline**: a bare axum server (`autofollow-bench baseline`, its own
//! process) that checks the same Ed25519 signature, parses the same JSON and stores nothing.
//! Both are driven with the same signed ContactCreate / ContactTagUpdate /
//! OpportunityStageUpdate mix over keep-alive HTTP/1.1 connections, one after the other, for a
//! bounded time, on loopback only.
//!
//! `… -- limit` measures how much of GoHighLevel's rate limit a large backlog achieves, and
//! whether any 429 comes back.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark stops at the first failure

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use clap::{Parser, Subcommand};
use ed25519_dalek::pkcs8::EncodePublicKey;
use ed25519_dalek::{Signer, SigningKey};
use rand::Rng;
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "autofollow-bench",
    about = "Speed and efficiency figures for BENCHMARKS.md"
)]
struct Cli {
    #[command(subcommand)]
    command: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Durable intake against the baseline; latency; time to process; RSS; CPU.
    Intake(IntakeArgs),
    /// A large backlog against GoHighLevel's rate limit: achieved call rate, 429s.
    Limit(LimitArgs),
    /// Resident memory with a large backlog that cannot drain (GoHighLevel answers 429).
    Backlog(BacklogArgs),
    /// End to end: every webhook a call; accepted/s, processed/s, CPU per event, RSS, and the
    /// same calls made by a bare client (the call path's limit on this machine).
    E2e(E2eArgs),
    /// The bare client (started by `e2e`): followers calls to a URL, as fast as it can.
    Calls {
        #[arg(long)]
        url: String,
        #[arg(long)]
        seconds: f64,
        #[arg(long)]
        concurrency: usize,
    },
    /// The baseline server (started by `intake`): signature check and JSON parse only.
    Baseline {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        public_key: String,
    },
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Concurrent connections of the load generator.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Locations the events spread over.
    #[arg(long, default_value_t = 5)]
    locations: usize,
    /// Contacts the events spread over.
    #[arg(long, default_value_t = 2000)]
    contacts: usize,
    /// Run autofollow on this PostgreSQL database (a fresh schema is made in it) instead of
    /// SQLite.
    #[arg(long)]
    postgres: Option<String>,
    /// The `autofollow` binary (default: next to this one).
    #[arg(long)]
    serve: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
struct IntakeArgs {
    #[command(flatten)]
    common: Common,
    /// Seconds of load on each server.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Added latency of every GoHighLevel answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    ghl_latency_ms: u64,
    /// Share of GoHighLevel calls answered 429.
    #[arg(long, default_value_t = 0.0)]
    ghl_429_rate: f64,
    /// Share of GoHighLevel calls answered 500.
    #[arg(long, default_value_t = 0.0)]
    ghl_5xx_rate: f64,
    /// autofollow's AUTOFOLLOW_SETTLE_DELAY.
    #[arg(long, default_value = "1s")]
    settle_delay: String,
    /// Measure intake alone: events wait an hour (settle delay) and the run does not wait for
    /// them to be processed.
    #[arg(long)]
    intake_only: bool,
    /// Runs, each the baseline then autofollow (a fresh process and database); the report is
    /// the run with the median throughput ratio, and every run's ratio (the two servers share
    /// the machine with the load generator, so single runs vary).
    #[arg(long, default_value_t = 1)]
    runs: usize,
}

#[derive(clap::Args)]
struct E2eArgs {
    #[command(flatten)]
    common: Common,
    /// Seconds of load.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// autofollow's AUTOFOLLOW_SETTLE_DELAY.
    #[arg(long, default_value = "0s")]
    settle_delay: String,
    /// Webhooks per contact, sent as a burst (`1`: every webhook another contact, each one
    /// call). Above 1 the burst adds a tag and then a second one that removes a follower
    /// again, so coalescing is seen: at most one POST and one DELETE per contact.
    #[arg(long, default_value_t = 1)]
    burst: usize,
    /// Added latency of every GoHighLevel answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    ghl_latency_ms: u64,
    /// Runs, each the bare client then autofollow; the report is the median run by processed/s.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Skip the bare client.
    #[arg(long)]
    no_baseline: bool,
}

#[derive(clap::Args)]
struct BacklogArgs {
    #[command(flatten)]
    common: Common,
    /// Events queued (through intake, each another contact) before measuring.
    #[arg(long, default_value_t = 100_000)]
    backlog: usize,
    /// Seconds of sampling resident memory while the worker meets 429s.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
}

#[derive(clap::Args)]
struct LimitArgs {
    #[command(flatten)]
    common: Common,
    /// Events queued before measuring (one call each: every event is another contact).
    #[arg(long, default_value_t = 3000)]
    backlog: usize,
    /// GoHighLevel's limit per location: N requests per window.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    #[arg(long, default_value_t = 10)]
    window_seconds: u64,
    /// Seconds of calls measured.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match cli.command {
        Scenario::Baseline { listen, public_key } => runtime.block_on(baseline(listen, public_key)),
        Scenario::Intake(args) => runtime.block_on(intake(args)),
        Scenario::Limit(args) => runtime.block_on(limit(args)),
        Scenario::Backlog(args) => runtime.block_on(backlog(args)),
        Scenario::E2e(args) => runtime.block_on(e2e(args)),
        Scenario::Calls {
            url,
            seconds,
            concurrency,
        } => runtime.block_on(bare_calls(url, seconds, concurrency)),
    }
}

// ---- the baseline -------------------------------------------------------------------------

async fn baseline(listen: SocketAddr, public_key: String) {
    let keys = autofollow::web::auth::parse_public_keys(&public_key).expect("key");
    let verifier =
        Arc::new(autofollow::web::auth::Verifier::new(keys, Vec::new()).expect("verifier"));
    let app = axum::Router::new()
        .route(
            "/webhooks/ghl",
            post(
                |State(v): State<Arc<autofollow::web::auth::Verifier>>,
                 headers: HeaderMap,
                 body: Bytes| async move {
                    if v.app(&headers, &body).is_err() {
                        return (StatusCode::UNAUTHORIZED, "{}").into_response();
                    }
                    match autofollow::model::event::parse_app(&body) {
                        Ok(_) => axum::Json(json!({"status": "accepted"})).into_response(),
                        Err(_) => (StatusCode::BAD_REQUEST, "{}").into_response(),
                    }
                },
            ),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .with_state(verifier);
    let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
    axum::serve(listener, app).await.expect("serve");
}

// ---- the GoHighLevel stand-in -------------------------------------------------------------

struct Ghl {
    latency: Duration,
    rate_429: f64,
    rate_5xx: f64,
    /// Per location token: the limit and window enforced, like GoHighLevel.
    limit: Option<(usize, Duration)>,
    calls: AtomicU64,
    answered_429: AtomicU64,
    /// When the stand-in started, and the last answered call's time since then (ns).
    started: Instant,
    last_call_ns: AtomicU64,
    state: Mutex<GhlState>,
}

impl Ghl {
    fn new(
        latency: Duration,
        rate_429: f64,
        rate_5xx: f64,
        limit: Option<(usize, Duration)>,
    ) -> Arc<Ghl> {
        Arc::new(Ghl {
            latency,
            rate_429,
            rate_5xx,
            limit,
            calls: AtomicU64::new(0),
            answered_429: AtomicU64::new(0),
            started: Instant::now(),
            last_call_ns: AtomicU64::new(0),
            state: Mutex::default(),
        })
    }
}

#[derive(Default)]
struct GhlState {
    recent: HashMap<String, VecDeque<Instant>>,
    busiest: usize,
    /// Calls per location, with their times.
    times: HashMap<String, Vec<Instant>>,
    /// Calls per contact: (POSTs, DELETEs).
    per_contact: HashMap<String, (u32, u32)>,
}

impl Ghl {
    /// When the last call was answered.
    fn last_call(&self) -> Instant {
        self.started + Duration::from_nanos(self.last_call_ns.load(Ordering::Relaxed))
    }
}

async fn followers(
    State(ghl): State<Arc<Ghl>>,
    method: Method,
    Path(contact): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !ghl.latency.is_zero() {
        tokio::time::sleep(ghl.latency).await;
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    ghl.calls.fetch_add(1, Ordering::Relaxed);
    let roll: f64 = rand::rng().random();
    if roll < ghl.rate_429 {
        ghl.answered_429.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "{}").into_response();
    }
    if roll < ghl.rate_429 + ghl.rate_5xx {
        return (StatusCode::INTERNAL_SERVER_ERROR, "{}").into_response();
    }
    {
        let mut s = ghl.state.lock().unwrap();
        let now = Instant::now();
        if let Some((limit, window)) = ghl.limit {
            let recent = s.recent.entry(token.clone()).or_default();
            while recent
                .front()
                .is_some_and(|t| now.duration_since(*t) >= window)
            {
                recent.pop_front();
            }
            if recent.len() >= limit {
                ghl.answered_429.fetch_add(1, Ordering::Relaxed);
                return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "{}")
                    .into_response();
            }
            recent.push_back(now);
            let n = recent.len();
            s.busiest = s.busiest.max(n);
        }
        s.times.entry(token).or_default().push(now);
        let counts = s.per_contact.entry(contact).or_default();
        match method == Method::POST {
            true => counts.0 += 1,
            false => counts.1 += 1,
        }
    }
    let nanos = u64::try_from(ghl.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    ghl.last_call_ns.fetch_max(nanos, Ordering::Relaxed);
    // As GoHighLevel answers: the list after the change, and who changed.
    let users = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("followers").cloned())
        .unwrap_or_else(|| json!([]));
    let (list, changed) = match method == Method::POST {
        true => (users.clone(), "followersAdded"),
        false => (json!([]), "followersRemoved"),
    };
    let answer = json!({"followers": list, changed: users});
    (StatusCode::CREATED, axum::Json(answer)).into_response()
}

async fn start_ghl(ghl: Arc<Ghl>) -> String {
    let app = axum::Router::new()
        .route(
            "/contacts/{id}/followers",
            post(followers).delete(followers),
        )
        .with_state(ghl);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A name no other run uses: this process and the time.
fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}_{nanos}", std::process::id())
}

/// A directory for the run's rules, tokens and database, removed at the end.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("autofollow-bench-{}", unique()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- processes ----------------------------------------------------------------------------

struct Process {
    child: Child,
    base: String,
    /// The admin listener (metrics); the baseline has none, and names its own address.
    admin: String,
    /// Its files, removed after the process is stopped.
    _scratch: Option<Scratch>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port()
}

async fn wait_healthy(base: &str) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "{base} did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    let ticks = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    fields.iter().sum::<u64>() as f64 / ticks
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

const USERS: &str = "users:\n  alice: 9hTnVvSr1Q2ZyE5kHfXm\n  bob: 4kLmPq7Rt2WvXy9ZaBcD\n";
const RULES: &str = "rules:
  - name: vip
    when: {has_tag: vip}
    add: [alice]
  - name: facebook
    when: {source: \"fb-*\"}
    add: [bob]
  - name: won
    events: [OpportunityStageUpdate]
    when: {status: won}
    remove: [bob]
";

/// The `autofollow` binary of the same build: this example runs from `target/<profile>/examples/`,
/// the service's binary is `target/<profile>/autofollow`.
fn serve_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("exe");
    let dir = exe.parent().expect("the example's directory");
    let beside = dir.join("autofollow");
    match (beside.exists(), dir.parent()) {
        (false, Some(profile)) => profile.join("autofollow"),
        _ => beside,
    }
}

/// A running `autofollow serve` on a fresh database in a scratch directory, with tokens for
/// `locations`, against the stand-in `ghl` (started here).
async fn start_autofollow(
    common: &Common,
    public_key: &str,
    ghl: &Arc<Ghl>,
    rate_limit: &str,
    settle_delay: &str,
    rules: &str,
) -> Process {
    let ghl = start_ghl(Arc::clone(ghl)).await;
    let scratch = Scratch::new();
    let dir = scratch.0.as_path();
    std::fs::write(dir.join("rules.yaml"), format!("{USERS}{rules}")).expect("rules");
    let tokens: String = (0..common.locations)
        .map(|l| format!("Loc{l}: tok-{l}\n"))
        .collect();
    std::fs::write(dir.join("tokens.yaml"), tokens).expect("tokens");
    let database = match &common.postgres {
        Some(url) => {
            let schema = format!("bench_{}", unique());
            let pool = sqlx::PgPool::connect(url).await.expect("postgres");
            sqlx::query(&format!("CREATE SCHEMA {schema}"))
                .execute(&pool)
                .await
                .expect("schema");
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}options=-c%20search_path%3D{schema}")
        }
        None => format!("sqlite://{}", dir.join("autofollow.db").display()),
    };
    let binary = common.serve.clone().unwrap_or_else(serve_binary);
    let (port, admin_port) = (free_port(), free_port());
    let child = Command::new(&binary)
        .arg("serve")
        .env("AUTOFOLLOW_LISTEN", format!("127.0.0.1:{port}"))
        .env("AUTOFOLLOW_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}"))
        .env("AUTOFOLLOW_RULES", dir.join("rules.yaml"))
        .env("AUTOFOLLOW_DATABASE_URL", database)
        .env("GHL_API_BASE_URL", ghl)
        .env("GHL_LOCATION_TOKENS_FILE", dir.join("tokens.yaml"))
        .env("GHL_WEBHOOK_PUBLIC_KEYS", public_key)
        .env("AUTOFOLLOW_RATE_LIMIT", rate_limit)
        .env("AUTOFOLLOW_DAILY_LIMIT", "100000000")
        .env("AUTOFOLLOW_SETTLE_DELAY", settle_delay)
        .env("AUTOFOLLOW_WATCH_RULES", "false")
        .env("AUTOFOLLOW_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base).await;
    Process {
        child,
        base,
        admin: format!("http://127.0.0.1:{admin_port}"),
        _scratch: Some(scratch),
    }
}

// ---- load -----------------------------------------------------------------------------------

/// Signed webhook bodies: the mix, each with its own `webhookId`.
struct Bodies {
    items: Vec<(String, String)>,
}

fn bodies(key: &SigningKey, n: usize, common: &Common, run: &str) -> Bodies {
    let mut rng = rand::rng();
    let items = (0..n)
        .map(|i| {
            let contact = rng.random_range(0..common.contacts);
            let location = format!("Loc{}", contact % common.locations);
            let c = format!("c{contact}");
            let w = format!("{run}-{i}");
            let body = match i % 3 {
                0 => json!({"type": "ContactCreate", "locationId": location, "id": c,
                            "source": if contact % 2 == 0 { "fb-ads" } else { "website" },
                            "tags": ["lead"], "webhookId": w}),
                1 => json!({"type": "ContactTagUpdate", "locationId": location, "id": c,
                            "tags": if rng.random_bool(0.5) { json!(["vip", "lead"]) } else { json!(["lead"]) },
                            "webhookId": w}),
                _ => json!({"type": "OpportunityStageUpdate", "locationId": location,
                            "id": format!("o{contact}"), "contactId": c,
                            "pipelineId": "p1", "pipelineStageId": "s1",
                            "status": if rng.random_bool(0.3) { "won" } else { "open" },
                            "webhookId": w}),
            }
            .to_string();
            signed(key, body)
        })
        .collect();
    Bodies { items }
}

/// A body and its `X-GHL-Signature`.
fn signed(key: &SigningKey, body: String) -> (String, String) {
    let signature =
        base64::engine::general_purpose::STANDARD.encode(key.sign(body.as_bytes()).to_bytes());
    (body, signature)
}

struct Load {
    accepted: u64,
    other: u64,
    seconds: f64,
    /// Acknowledgement latencies in microseconds, sorted.
    latencies: Vec<u64>,
}

impl Load {
    fn rate(&self) -> f64 {
        self.accepted as f64 / self.seconds
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i] as f64 / 1000.0
    }
}

/// Posts the bodies to `base` from `concurrency` keep-alive connections until `seconds` pass
/// or the bodies run out.
async fn drive(base: &str, bodies: Arc<Bodies>, concurrency: usize, seconds: f64) -> Load {
    let http = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("client");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, bodies, next, url) = (
            http.clone(),
            Arc::clone(&bodies),
            Arc::clone(&next),
            format!("{base}/webhooks/ghl"),
        );
        tasks.push(tokio::spawn(async move {
            let (mut accepted, mut other, mut latencies) = (0u64, 0u64, Vec::new());
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((body, signature)) = bodies.items.get(i) else {
                    break;
                };
                let sent = Instant::now();
                let r = http
                    .post(&url)
                    .header("X-GHL-Signature", signature)
                    .header("Content-Type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                let ok = match r {
                    Ok(r) => {
                        let ok = r.status() == 200;
                        let _ = r.bytes().await;
                        ok
                    }
                    Err(_) => false,
                };
                if ok {
                    accepted += 1;
                    latencies.push(u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX));
                } else {
                    other += 1;
                }
            }
            (accepted, other, latencies)
        }));
    }
    let mut load = Load {
        accepted: 0,
        other: 0,
        seconds: 0.0,
        latencies: Vec::new(),
    };
    for t in tasks {
        let (a, o, l) = t.await.expect("task");
        load.accepted += a;
        load.other += o;
        load.latencies.extend(l);
    }
    load.seconds = started.elapsed().as_secs_f64();
    load.latencies.sort_unstable();
    load
}

/// The value of an unlabelled series in a /metrics answer.
async fn gauge(base: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

fn signing_key() -> (SigningKey, String) {
    let key = SigningKey::from_bytes(&[42u8; 32]);
    let pem = key
        .verifying_key()
        .to_public_key_pem(Default::default())
        .expect("pem");
    (key, pem)
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    format!("{cores} cores, {:.0} GiB", mem_kib as f64 / 1024.0 / 1024.0)
}

// ---- scenarios ------------------------------------------------------------------------------

/// One baseline run and one autofollow run.
struct IntakeRun {
    baseline: Load,
    baseline_cpu: f64,
    load: Load,
    drained: f64,
    idle_rss: u64,
    load_rss: u64,
    peak_rss: u64,
    cpu: f64,
    calls: u64,
    answered_429: u64,
}

impl IntakeRun {
    fn ratio(&self) -> f64 {
        self.load.rate() / self.baseline.rate()
    }
}

async fn intake(args: IntakeArgs) {
    let common = &args.common;
    // Enough bodies for a fast server; generated before any clock starts.
    let per_run = 40_000 * usize::try_from(args.seconds).unwrap_or(10);
    println!(
        "machine: {}; {} run(s), each preparing {per_run} signed bodies per server",
        machine(),
        args.runs.max(1)
    );
    let mut runs = Vec::new();
    for run in 0..args.runs.max(1) {
        let r = intake_once(&args, per_run, run).await;
        println!(
            "run {}: baseline {:.0}/s, autofollow {:.0}/s, ratio {:.2}",
            run + 1,
            r.baseline.rate(),
            r.load.rate(),
            r.ratio()
        );
        runs.push(r);
    }
    runs.sort_by(|a, b| a.ratio().total_cmp(&b.ratio()));
    let ratios: Vec<String> = runs.iter().map(|r| format!("{:.2}", r.ratio())).collect();
    let IntakeRun {
        baseline,
        baseline_cpu,
        load,
        drained,
        idle_rss,
        load_rss,
        peak_rss,
        cpu,
        calls,
        answered_429,
    } = runs.swap_remove(runs.len() / 2);

    let store = if common.postgres.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    println!();
    println!(
        "intake: {} s at concurrency {}, {} locations, {} contacts, store {store}{}",
        args.seconds,
        common.concurrency,
        common.locations,
        common.contacts,
        if ratios.len() > 1 {
            "; the median run of the ratios"
        } else {
            ""
        }
    );
    println!("| what | baseline | autofollow |");
    println!("|---|---|---|");
    println!(
        "| accepted webhooks / s | {:.0} | {:.0} |",
        baseline.rate(),
        load.rate()
    );
    println!(
        "| other answers / errors | {} | {} |",
        baseline.other, load.other
    );
    for (name, p) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)] {
        println!(
            "| ack latency {name} (ms) | {:.2} | {:.2} |",
            baseline.percentile(p),
            load.percentile(p)
        );
    }
    println!(
        "| CPU seconds per 1,000 webhooks (intake) | {:.3} | |",
        baseline_cpu * 1000.0 / baseline.accepted.max(1) as f64
    );
    println!();
    println!(
        "autofollow / baseline throughput: {:.2} (runs, sorted: {})",
        load.rate() / baseline.rate(),
        ratios.join(", ")
    );
    println!(
        "time from the end of the load until every accepted event was processed: {drained:.1} s"
    );
    println!(
        "GoHighLevel calls: {calls} for {} events ({:.2} per event; {answered_429} answered 429)",
        load.accepted,
        calls as f64 / load.accepted.max(1) as f64,
    );
    println!(
        "autofollow CPU seconds per 1,000 events (intake and processing): {:.3}",
        cpu * 1000.0 / load.accepted.max(1) as f64
    );
    println!(
        "autofollow resident memory: idle {:.1} MiB, under load max {:.1} MiB, peak (VmHWM) {:.1} MiB",
        mib(idle_rss),
        mib(load_rss),
        mib(peak_rss)
    );
}

async fn intake_once(args: &IntakeArgs, per_run: usize, run: usize) -> IntakeRun {
    let common = &args.common;
    let (key, pem) = signing_key();
    let base_bodies = Arc::new(bodies(&key, per_run, common, &format!("base{run}")));
    let af_bodies = Arc::new(bodies(&key, per_run, common, &format!("af{run}")));

    // Baseline first.
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = Command::new(std::env::current_exe().expect("exe"))
        .args([
            "baseline",
            "--listen",
            &format!("127.0.0.1:{port}"),
            &format!("--public-key={pem}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("baseline");
    let baseline_process = Process {
        child,
        admin: base.clone(),
        base,
        _scratch: None,
    };
    wait_healthy(&baseline_process.base).await;
    let baseline_pid = baseline_process.child.id();
    let cpu_before = cpu_seconds(baseline_pid);
    let baseline = drive(
        &baseline_process.base,
        base_bodies,
        common.concurrency,
        args.seconds as f64,
    )
    .await;
    let baseline_cpu = cpu_seconds(baseline_pid) - cpu_before;
    drop(baseline_process);

    // autofollow.
    let ghl = Ghl::new(
        Duration::from_millis(args.ghl_latency_ms),
        args.ghl_429_rate,
        args.ghl_5xx_rate,
        None,
    );
    let af = start_autofollow(
        common,
        &pem,
        &ghl,
        "1000000/10s",
        if args.intake_only {
            "1h"
        } else {
            &args.settle_delay
        },
        RULES,
    )
    .await;
    let pid = af.child.id();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = status_kib(pid, "VmRSS:");
    let cpu_before = cpu_seconds(pid);
    let sampler = rss_sampler(pid);
    let load = drive(&af.base, af_bodies, common.concurrency, args.seconds as f64).await;
    let load_ended = Instant::now();
    let deadline = load_ended + Duration::from_secs(600);
    while !args.intake_only && gauge(&af.admin, "autofollow_queue_depth").await != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "the queue did not drain in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained = load_ended.elapsed().as_secs_f64();
    sampler.0.store(true, Ordering::Relaxed);
    let _ = sampler.2.await;
    let run = IntakeRun {
        baseline,
        baseline_cpu,
        load,
        drained,
        idle_rss,
        load_rss: sampler.1.load(Ordering::Relaxed),
        peak_rss: status_kib(pid, "VmHWM:"),
        cpu: cpu_seconds(pid) - cpu_before,
        calls: ghl.calls.load(Ordering::Relaxed),
        answered_429: ghl.answered_429.load(Ordering::Relaxed),
    };
    drop(af);
    run
}

/// Queues `n` webhooks through intake: every one another contact, each asking for one add.
async fn queue_backlog(base: &str, key: &SigningKey, n: usize, common: &Common) -> Load {
    let items = (0..n)
        .map(|i| {
            let body = json!({"type": "ContactTagUpdate", "locationId": format!("Loc{}", i % common.locations),
                              "id": format!("backlog{i}"), "tags": ["vip"], "webhookId": format!("b{i}")})
            .to_string();
            signed(key, body)
        })
        .collect();
    drive(base, Arc::new(Bodies { items }), common.concurrency, 600.0).await
}

async fn backlog(args: BacklogArgs) {
    let common = &args.common;
    let (key, pem) = signing_key();
    // GoHighLevel refuses everything: the backlog stays, and the worker keeps meeting it.
    let ghl = Ghl::new(Duration::ZERO, 1.0, 0.0, None);
    let af = start_autofollow(common, &pem, &ghl, "1000000/10s", "0s", RULES).await;
    let pid = af.child.id();
    let idle_rss = status_kib(pid, "VmRSS:");
    let queued = queue_backlog(&af.base, &key, args.backlog, common).await;
    let pending = gauge(&af.admin, "autofollow_queue_depth")
        .await
        .unwrap_or(0.0);
    let mut max_rss = 0;
    let mut samples = 0;
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        max_rss = max_rss.max(status_kib(pid, "VmRSS:"));
        samples += 1;
    }
    let peak = status_kib(pid, "VmHWM:");
    drop(af);
    println!(
        "machine: {}; backlog: {} webhooks accepted in {:.1} s, {pending:.0} pending",
        machine(),
        queued.accepted,
        queued.seconds
    );
    println!(
        "then {} s with GoHighLevel answering 429 to everything: {} calls attempted",
        args.seconds,
        ghl.calls.load(Ordering::Relaxed)
    );
    println!(
        "autofollow resident memory: idle {:.1} MiB; with the backlog, max sampled {:.1} MiB over {samples} samples, peak (VmHWM, intake included) {:.1} MiB",
        mib(idle_rss),
        mib(max_rss),
        mib(peak)
    );
}

async fn limit(args: LimitArgs) {
    let common = &args.common;
    let (key, pem) = signing_key();
    let window = Duration::from_secs(args.window_seconds);
    let ghl = Ghl::new(Duration::ZERO, 0.0, 0.0, Some((args.limit, window)));
    let af = start_autofollow(
        common,
        &pem,
        &ghl,
        &format!("{}/{}s", args.limit, args.window_seconds),
        "0s",
        RULES,
    )
    .await;
    let queued = queue_backlog(&af.base, &key, args.backlog, common).await;
    let started = Instant::now();
    println!(
        "machine: {}; backlog of {} events queued in {:.1} s",
        machine(),
        queued.accepted,
        queued.seconds
    );
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let measured = started.elapsed();
    drop(af);
    let s = ghl.state.lock().unwrap();
    let allowed = args.limit as f64 * measured.as_secs_f64() / window.as_secs_f64();
    println!(
        "limit: {} requests / {} s per location, {} locations, measured {:.0} s",
        args.limit,
        args.window_seconds,
        common.locations,
        measured.as_secs_f64()
    );
    println!("| location | calls | share of the limit |");
    println!("|---|---|---|");
    let mut shares = Vec::new();
    for l in 0..common.locations {
        let token = format!("Bearer tok-{l}");
        let n = s
            .times
            .get(&token)
            .map_or(0, |t| t.iter().filter(|t| **t >= started).count());
        let share = n as f64 / allowed;
        shares.push(share);
        println!("| Loc{l} | {n} | {:.1} % |", share * 100.0);
    }
    let mean = shares.iter().sum::<f64>() / shares.len().max(1) as f64;
    println!();
    println!(
        "achieved: {:.1} % of the limit on average; 429 answers: {}; busiest window: {} of {}",
        mean * 100.0,
        ghl.answered_429.load(Ordering::Relaxed),
        s.busiest,
        args.limit
    );
}

// ---- end to end -----------------------------------------------------------------------------

/// `e2e`: one rule matches every webhook; with bursts, a second adds and a third removes.
const E2E_RULES: &str = "rules:
  - name: everyone
    add: [alice]
  - name: vip
    when: {has_tag: vip}
    add: [bob]
  - name: lost
    when: {has_tag: lost}
    remove: [bob]
";

/// Contacts whose bursts are interleaved (each contact's webhooks are this many apart).
const BURST_BLOCK: usize = 1000;

/// Signed bodies for `e2e`: every contact new to this run; a contact's burst (`burst`
/// webhooks: created, tagged `vip`, …, then tagged `lost`) spread over a block of contacts.
fn e2e_bodies(key: &SigningKey, n: usize, args: &E2eArgs, run: &str) -> Bodies {
    let burst = args.burst.max(1);
    let locations = args.common.locations;
    let block = if burst == 1 { 1 } else { BURST_BLOCK };
    let items = (0..n)
        .map(|i| {
            let (b, rest) = (i / (block * burst), i % (block * burst));
            let (step, j) = (rest / block, rest % block);
            let contact = b * block + j;
            let location = format!("Loc{}", contact % locations);
            let (id, w) = (format!("{run}c{contact}"), format!("{run}-{i}"));
            let tags = match step {
                0 => json!(["lead"]),
                s if s + 1 == burst => json!(["lead", "vip", "lost"]),
                _ => json!(["lead", "vip"]),
            };
            let kind = if step == 0 {
                "ContactCreate"
            } else {
                "ContactTagUpdate"
            };
            let body = json!({"type": kind, "locationId": location, "id": id, "tags": tags,
                              "webhookId": w})
            .to_string();
            signed(key, body)
        })
        .collect();
    Bodies { items }
}

/// The bare client's figures.
struct BareCalls {
    calls: u64,
    seconds: f64,
    cpu: f64,
}

/// A bare client (its own process) making followers calls to a fresh stand-in.
async fn bare_client(concurrency: usize, seconds: f64) -> BareCalls {
    let ghl = Ghl::new(Duration::ZERO, 0.0, 0.0, None);
    let url = start_ghl(Arc::clone(&ghl)).await;
    let out = tokio::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["calls", "--url", &url, "--seconds", &seconds.to_string()])
        .args(["--concurrency", &concurrency.to_string()])
        .output()
        .await
        .expect("bare client");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> f64 {
        text.split_whitespace()
            .skip_while(|w| *w != name)
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    BareCalls {
        calls: ghl.calls.load(Ordering::Relaxed),
        seconds: field("seconds"),
        cpu: field("cpu"),
    }
}

/// The bare client's process: `concurrency` tasks on one keep-alive client, each making the
/// followers call autofollow makes (another contact each time) until `seconds` pass.
async fn bare_calls(url: String, seconds: f64, concurrency: usize) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("client");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let cpu_before = cpu_seconds(std::process::id());
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, next, url) = (http.clone(), Arc::clone(&next), url.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let r = http
                    .post(format!("{url}/contacts/bare{i}/followers"))
                    .bearer_auth("tok-0")
                    .header("Version", "2021-07-28")
                    .json(&json!({"followers": ["9hTnVvSr1Q2ZyE5kHfXm"]}))
                    .send()
                    .await;
                if let Ok(r) = r {
                    let _ = r.json::<serde_json::Value>().await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let cpu = cpu_seconds(std::process::id()) - cpu_before;
    println!("seconds {} cpu {cpu}", started.elapsed().as_secs_f64());
}

/// One autofollow run of `e2e`.
struct E2eRun {
    bare: Option<BareCalls>,
    load: Load,
    /// From the first webhook sent to the last call answered.
    span: f64,
    /// From the end of the load to the last call.
    after_load: f64,
    cpu: f64,
    /// The harness's own CPU over the same time (load generator and stand-in).
    harness_cpu: f64,
    rss: u64,
    posts: u64,
    deletes: u64,
    /// The most POSTs and DELETEs one contact received.
    most: (u32, u32),
    contacts: usize,
}

impl E2eRun {
    fn processed_rate(&self) -> f64 {
        self.load.accepted as f64 / self.span
    }
}

async fn e2e(args: E2eArgs) {
    let per_run = 30_000 * usize::try_from(args.seconds).unwrap_or(20);
    println!(
        "machine: {}; {} run(s), {per_run} signed bodies prepared per run",
        machine(),
        args.runs.max(1)
    );
    let mut runs = Vec::new();
    for run in 0..args.runs.max(1) {
        let r = e2e_once(&args, per_run, run).await;
        let bare = r.bare.as_ref().map_or(0.0, |b| b.calls as f64 / b.seconds);
        println!(
            "run {}: accepted {:.0}/s, processed {:.0}/s, bare client {bare:.0} calls/s, CPU {:.3} s per 1,000 events",
            run + 1,
            r.load.rate(),
            r.processed_rate(),
            r.cpu * 1000.0 / r.load.accepted.max(1) as f64
        );
        runs.push(r);
    }
    runs.sort_by(|a, b| a.processed_rate().total_cmp(&b.processed_rate()));
    let rates: Vec<String> = runs
        .iter()
        .map(|r| format!("{:.0}", r.processed_rate()))
        .collect();
    let r = runs.swap_remove(runs.len() / 2);
    e2e_report(&args, &r, &rates);
}

fn e2e_report(args: &E2eArgs, r: &E2eRun, rates: &[String]) {
    let store = match args.common.postgres {
        Some(_) => "PostgreSQL",
        None => "SQLite",
    };
    println!();
    println!(
        "e2e: {} s of load at concurrency {}, {} locations, bursts of {}, settle delay {}, store {store}",
        args.seconds,
        args.common.concurrency,
        args.common.locations,
        args.burst.max(1),
        args.settle_delay
    );
    println!("| what | figure |");
    println!("|---|---|");
    println!("| accepted webhooks / s | {:.0} |", r.load.rate());
    println!(
        "| ack latency p50 / p99 (ms) | {:.2} / {:.2} |",
        r.load.percentile(0.5),
        r.load.percentile(0.99)
    );
    println!(
        "| processed events / s (accepted ÷ first webhook to last call) | {:.0} |",
        r.processed_rate()
    );
    println!(
        "| last call after the end of the load (s) | {:.1} |",
        r.after_load
    );
    println!(
        "| CPU s per 1,000 events (intake, decision, call, records) | {:.3} |",
        r.cpu * 1000.0 / r.load.accepted.max(1) as f64
    );
    println!(
        "| the harness's CPU s per 1,000 events (load generator, stand-in) | {:.3} |",
        r.harness_cpu * 1000.0 / r.load.accepted.max(1) as f64
    );
    println!("| resident memory, max sampled (MiB) | {:.1} |", mib(r.rss));
    println!(
        "| calls: POST / DELETE for {} contacts; most to one contact | {} / {}; {} / {} |",
        r.contacts, r.posts, r.deletes, r.most.0, r.most.1
    );
    if let Some(b) = &r.bare {
        let rate = b.calls as f64 / b.seconds;
        println!(
            "| bare client calls / s (CPU s per 1,000 calls) | {rate:.0} ({:.3}) |",
            b.cpu * 1000.0 / b.calls.max(1) as f64
        );
        println!(
            "| processed / bare client | {:.2} |",
            r.processed_rate() / rate
        );
    }
    println!();
    println!("processed/s of the runs, sorted: {}", rates.join(", "));
}

async fn e2e_once(args: &E2eArgs, per_run: usize, run: usize) -> E2eRun {
    let common = &args.common;
    let (key, pem) = signing_key();
    let bodies = Arc::new(e2e_bodies(&key, per_run, args, &format!("r{run}")));
    let bare = match args.no_baseline {
        true => None,
        false => Some(bare_client(common.concurrency, 10.0).await),
    };
    let ghl = Ghl::new(Duration::from_millis(args.ghl_latency_ms), 0.0, 0.0, None);
    let settle = &args.settle_delay;
    let af = start_autofollow(common, &pem, &ghl, "1000000/1s", settle, E2E_RULES).await;
    let pid = af.child.id();
    let cpu_before = cpu_seconds(pid);
    let harness_before = cpu_seconds(std::process::id());
    let (stop, max_rss, sampler) = rss_sampler(pid);
    let started = Instant::now();
    let load = drive(&af.base, bodies, common.concurrency, args.seconds as f64).await;
    let load_ended = Instant::now();
    wait_processed(&af, &ghl, &load, args.burst.max(1)).await;
    let cpu = cpu_seconds(pid) - cpu_before;
    let harness_cpu = cpu_seconds(std::process::id()) - harness_before;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let last = ghl.last_call();
    let s = ghl.state.lock().unwrap();
    let count = |f: fn(&(u32, u32)) -> u32| s.per_contact.values().map(|c| u64::from(f(c))).sum();
    let most = s
        .per_contact
        .values()
        .fold((0, 0), |m, c| (m.0.max(c.0), m.1.max(c.1)));
    E2eRun {
        bare,
        span: last.duration_since(started).as_secs_f64(),
        after_load: last.saturating_duration_since(load_ended).as_secs_f64(),
        cpu,
        harness_cpu,
        rss: max_rss.load(Ordering::Relaxed),
        posts: count(|c| c.0),
        deletes: count(|c| c.1),
        most,
        contacts: s.per_contact.len(),
        load,
    }
}

/// Samples the process's resident memory every 100 ms until told to stop: (stop, max, task).
fn rss_sampler(
    pid: u32,
) -> (
    Arc<std::sync::atomic::AtomicBool>,
    Arc<AtomicU64>,
    tokio::task::JoinHandle<()>,
) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let max = Arc::new(AtomicU64::new(0));
    let (s, m) = (Arc::clone(&stop), Arc::clone(&max));
    let handle = tokio::spawn(async move {
        while !s.load(Ordering::Relaxed) {
            m.fetch_max(status_kib(pid, "VmRSS:"), Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (stop, max, handle)
}

/// Waits until every accepted event is processed: with one webhook per contact, until the
/// stand-in has had one call per event; with bursts, until the queue is empty.
async fn wait_processed(af: &Process, ghl: &Ghl, load: &Load, burst: usize) {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        assert!(Instant::now() < deadline, "not processed in 15 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
        if burst == 1 && ghl.calls.load(Ordering::Relaxed) < load.accepted {
            continue;
        }
        if gauge(&af.admin, "autofollow_queue_depth").await == Some(0.0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

//! HTTP intake: authenticate, parse, store, answer. Nothing is stored for any answer but 200,
//! and 200 means the event is committed. When it cannot be stored now, the answer is 429 with
//! `Retry-After`, the only status GoHighLevel retries on.
//!
//! An unauthenticated request costs little: its headers are checked before any body byte is
//! read (a shared secret is settled there), the bodies being read at once hold at most
//! [`BODY_BUDGET`] bytes between them (a request that would pass it is answered 429 before
//! its body is read), and each rejection is logged at debug level only and summed up in one
//! warning per [`REJECTION_SUMMARY_EVERY`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Notify, Semaphore, watch};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::auth::{AuthError, Verified, Verifier};
use crate::config::Config;
use crate::ghl::GhlClient;
use crate::metrics::Metrics;
use crate::model::event::{self, BodyKind, Event, ParseError, Parsed};
use crate::rules::LiveRules;
use crate::store::wrap::Wrapped;
use crate::store::{Inserted, NewEvent, Store, StoreError};
use crate::telemetry::untrusted;
use crate::worker::{Worker, WorkerOptions};

/// Largest webhook body accepted.
pub const MAX_BODY: usize = 256 * 1024;
/// The most body bytes being received at once, over every webhook request: thousands of
/// GoHighLevel's usual few-kilobyte bodies. A request whose declared length (or, without one,
/// [`MAX_BODY`]) does not fit is answered 429 before its body is read. Bodies over
/// [`LARGE_BODY`] may hold only half of it, so slow large bodies cannot crowd out the usual
/// small webhooks.
pub const BODY_BUDGET: usize = 16 * 1024 * 1024;
/// Bodies declaring more than this (or no length) count as large for [`BODY_BUDGET`].
pub const LARGE_BODY: usize = 64 * 1024;
/// How often rejected webhooks are summed up in one warning.
pub const REJECTION_SUMMARY_EVERY: Duration = Duration::from_secs(60);
/// What a 429 asks GoHighLevel (or any sender) to wait.
const RETRY_AFTER_SECS: u64 = 30;

/// Shared by every request; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub verifier: Arc<Verifier>,
    pub rules: Arc<LiveRules>,
    /// False once shutdown began: intake answers 429.
    pub accepting: Arc<AtomicBool>,
    /// Wakes the worker now (work due now: replays).
    pub wake: Arc<Notify>,
    /// Told when an event is stored: wakes the worker once it can be due (see
    /// [`wake_when_due`]).
    pub arrived: Arc<Notify>,
    /// How long a contact's work waits after its latest webhook.
    pub settle_delay: Duration,
    /// Bearer token of the admin API; `None` turns the API off.
    pub admin_token: Option<Arc<SecretString>>,
    pub metrics: Arc<Metrics>,
    /// Body bytes that may be being received at once.
    pub body_budget: Arc<BodyBudget>,
    /// Rejected webhooks since the last summary.
    pub rejections: Arc<Rejections>,
}

/// The one error type of the webhook edge. Its messages are fixed texts or name a field:
/// nothing a request sent is echoed, logged or counted by its content.
#[derive(Debug)]
enum ApiError {
    BadRequest(ParseError),
    Unauthorized(AuthError),
    TooLarge,
    /// More body bytes are being received than [`BODY_BUDGET`] allows.
    Busy,
    ShuttingDown,
    StoreUnavailable,
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Busy | ApiError::ShuttingDown | ApiError::StoreUnavailable => {
                StatusCode::TOO_MANY_REQUESTS
            }
        }
    }

    /// The `answer` label of `autofollow_webhooks_total`.
    fn answer(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::TooLarge => "too_large",
            ApiError::Busy => "busy",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::StoreUnavailable => "store_unavailable",
        }
    }

    /// A fixed reason, for the rejection summary.
    fn reason(&self) -> &'static str {
        match self {
            ApiError::BadRequest(e) => e.kind(),
            ApiError::Unauthorized(e) => e.reason(),
            ApiError::TooLarge => "body over 256 KiB",
            ApiError::Busy => "too many bodies being received at once",
            ApiError::ShuttingDown => "shutting down",
            ApiError::StoreUnavailable => "store unavailable",
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::BadRequest(e) => e.to_string(),
            ApiError::Unauthorized(e) => e.to_string(),
            ApiError::TooLarge => format!("the body is over {} KiB", MAX_BODY / 1024),
            ApiError::Busy => {
                "too many webhook bodies are being received; try again shortly".into()
            }
            ApiError::ShuttingDown => "shutting down; try again shortly".into(),
            ApiError::StoreUnavailable => {
                "cannot store the event right now; try again later".into()
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // Inside the request span, which names the path and request id.
        tracing::debug!(
            answer = status.as_u16(),
            reason = self.reason(),
            "webhook rejected"
        );
        let mut response = (status, Json(json!({ "error": self.message() }))).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response.extensions_mut().insert(WebhookLabel {
            event_type: "unknown",
            answer: self.answer(),
            rejected: Some(self.reason()),
        });
        response
    }
}

impl From<ParseError> for ApiError {
    fn from(e: ParseError) -> Self {
        ApiError::BadRequest(e)
    }
}

/// The public listener: webhooks, `/healthz`, and a `/readyz` that says ready or not.
pub fn router(state: AppState) -> Router {
    let webhooks = Router::new()
        .route("/webhooks/ghl", post(app_webhook))
        .route("/webhooks/workflow", post(workflow_webhook))
        .route_layer(middleware::from_fn_with_state(state.clone(), count_webhook));
    let routes = Router::new()
        .merge(webhooks)
        .route("/healthz", get(healthz))
        .route("/readyz", get(ready));
    layered(routes, state)
}

/// The admin listener: the admin API (when a token is set), `/metrics`, `/readyz` with its
/// details, `/healthz`.
pub fn admin_router(state: AppState) -> Router {
    let admin = match state.admin_token {
        Some(_) => crate::admin::router(state.clone()),
        None => Router::new(),
    };
    let routes = Router::new()
        .merge(admin)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    layered(routes, state)
}

/// What both listeners share: the body limit of extracted bodies, a span per request and
/// request ids.
fn layered(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(traced())
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(Counter::default()))
        .with_state(state)
}

/// The trace layer of both listeners.
type Traced = TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    fn(&Request<Body>) -> tracing::Span,
>;

/// A span per request naming the method, the path (escaped and cut: a request sent it) and
/// the request id; never the query string, which may hold the webhook secret.
fn traced() -> Traced {
    TraceLayer::new_for_http().make_span_with(request_span as fn(&Request<Body>) -> tracing::Span)
}

fn request_span(request: &Request<Body>) -> tracing::Span {
    let id = request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or("-");
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = ?untrusted(request.uri().path()),
        request_id = %id
    )
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Request ids: process start time plus a counter, unique enough to follow one request.
#[derive(Clone, Default)]
struct Counter(Arc<AtomicU64>);

impl MakeRequestId for Counter {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("af-{}-{n}", std::process::id()))
            .ok()
            .map(RequestId::new)
    }
}

/// A webhook request that passed authentication: only [`authenticate`] makes one, as it
/// needs the proof, and only one is stored.
struct Authenticated {
    _proof: Verified,
    body: Bytes,
    /// The Standard Webhooks `webhook-id`, when that is how it was signed.
    delivery_id: Option<String>,
}

#[derive(Deserialize)]
struct WorkflowQuery {
    secret: Option<String>,
}

/// Checks the headers (and, on `/webhooks/workflow`, the `secret` query parameter), then
/// reads the body within the body budget, then checks a signature over it.
async fn authenticate(
    state: &AppState,
    request: Request<Body>,
    kind: BodyKind,
) -> Result<Authenticated, ApiError> {
    if !state.accepting.load(Ordering::SeqCst) {
        return Err(ApiError::ShuttingDown);
    }
    let (parts, body) = request.into_parts();
    let checked = match kind {
        BodyKind::App => state.verifier.app_headers(&parts.headers),
        BodyKind::Workflow => {
            let query = Query::<WorkflowQuery>::try_from_uri(&parts.uri).ok();
            let secret = query.as_ref().and_then(|q| q.secret.as_deref());
            state.verifier.shared_headers(&parts.headers, secret)
        }
    }
    .map_err(ApiError::Unauthorized)?;
    let delivery_id = checked.delivery_id().map(str::to_owned);
    let body = read_body(&state.body_budget, &parts.headers, body).await?;
    let proof = checked.body(&body).map_err(ApiError::Unauthorized)?;
    Ok(Authenticated {
        _proof: proof,
        body,
        delivery_id,
    })
}

/// The bytes of [`BODY_BUDGET`]: all of it, and the half large bodies may use.
#[derive(Debug)]
pub struct BodyBudget {
    all: Semaphore,
    large: Semaphore,
}

impl Default for BodyBudget {
    fn default() -> BodyBudget {
        BodyBudget {
            all: Semaphore::new(BODY_BUDGET),
            large: Semaphore::new(BODY_BUDGET / 2),
        }
    }
}

impl BodyBudget {
    /// A share of `bytes` now, or `None` when it is not free.
    fn reserve(&self, bytes: usize) -> Option<Vec<tokio::sync::SemaphorePermit<'_>>> {
        let n = u32::try_from(bytes).ok()?;
        let mut held = Vec::with_capacity(2);
        if bytes > LARGE_BODY {
            held.push(self.large.try_acquire_many(n).ok()?);
        }
        held.push(self.all.try_acquire_many(n).ok()?);
        Some(held)
    }
}

/// The body, read while holding its share of the budget: its declared length, or the
/// largest body when it declares none. Refused (429) without reading when the share is not
/// free now, and (413) when it declares or turns out to be over [`MAX_BODY`].
async fn read_body(
    budget: &BodyBudget,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(ApiError::TooLarge);
    }
    let _held = budget
        .reserve(declared.unwrap_or(MAX_BODY))
        .ok_or(ApiError::Busy)?;
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    match http_body_util::BodyExt::collect(limited).await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::TooLarge),
        // The client went away or sent a broken body; it will not read the answer.
        Err(_) => Err(ApiError::BadRequest(ParseError::Incomplete)),
    }
}

async fn app_webhook(
    State(state): State<AppState>,
    request: Request<Body>,
) -> Result<Response, ApiError> {
    let webhook = authenticate(&state, request, BodyKind::App).await?;
    match event::parse_app(&webhook.body)? {
        Parsed::Unsupported { event_type, .. } => {
            tracing::info!(event_type = ?untrusted(&event_type), answer = "ignored", "webhook");
            let ignored = Json(json!({ "status": "ignored" }));
            Ok(labelled(ignored, "other", "ignored"))
        }
        Parsed::Event(e) => {
            state
                .verifier
                .fresh(e.timestamp.as_deref())
                .map_err(ApiError::Unauthorized)?;
            store(&state, webhook, BodyKind::App, &e).await
        }
    }
}

async fn workflow_webhook(
    State(state): State<AppState>,
    request: Request<Body>,
) -> Result<Response, ApiError> {
    let webhook = authenticate(&state, request, BodyKind::Workflow).await?;
    let e = event::parse_workflow(&webhook.body)?;
    store(&state, webhook, BodyKind::Workflow, &e).await
}

/// Commits the event. Deduplicated on the body's `webhookId` (GoHighLevel's re-deliveries),
/// else on the Standard Webhooks `webhook-id` (a sender's retries, or a replay).
async fn store(
    state: &AppState,
    webhook: Authenticated,
    kind: BodyKind,
    e: &Event,
) -> Result<Response, ApiError> {
    let Authenticated {
        body, delivery_id, ..
    } = webhook;
    let webhook_id = e
        .webhook_id
        .clone()
        .or_else(|| delivery_id.map(|id| format!("webhook-id:{id}")));
    let new = NewEvent {
        kind,
        event_type: e.event_type.name().to_owned(),
        location_id: e.location_id.clone(),
        contact_id: e.contact_id.clone(),
        opportunity_id: e.opportunity_id.clone(),
        webhook_id,
        body: String::from_utf8_lossy(&body).into_owned(),
        available_at: SystemTime::now() + state.settle_delay,
    };
    let inserted = state
        .store
        .insert_event(new, state.verifier.dedup_window())
        .await;
    let (event_type, location, contact) = (
        e.event_type.name(),
        e.location_id.as_str(),
        e.contact_id.as_str(),
    );
    let (answer, body) = match inserted {
        Ok(Inserted::Accepted(id)) => {
            state.arrived.notify_one();
            tracing::info!(
                event_type,
                location,
                contact,
                event_id = id,
                answer = "accepted",
                "webhook"
            );
            ("accepted", json!({ "status": "accepted", "event_id": id }))
        }
        Ok(Inserted::Duplicate) => {
            tracing::info!(
                event_type,
                location,
                contact,
                answer = "duplicate",
                "webhook"
            );
            ("duplicate", json!({ "status": "duplicate" }))
        }
        Err(err) => {
            tracing::error!(error = %err, event_type, location, contact, answer = "429", "cannot store webhook");
            let mut response = ApiError::StoreUnavailable.into_response();
            response.extensions_mut().insert(WebhookLabel {
                event_type,
                answer: "store_unavailable",
                rejected: None,
            });
            return Ok(response);
        }
    };
    Ok(labelled(Json(body), event_type, answer))
}

/// What a webhook answer was about, for `autofollow_webhooks_total` and the rejection
/// summary.
#[derive(Clone, Copy, Debug)]
struct WebhookLabel {
    event_type: &'static str,
    answer: &'static str,
    /// Why it was rejected, for a rejection counted in the summary.
    rejected: Option<&'static str>,
}

fn labelled(body: impl IntoResponse, event_type: &'static str, answer: &'static str) -> Response {
    let mut response = body.into_response();
    response.extensions_mut().insert(WebhookLabel {
        event_type,
        answer,
        rejected: None,
    });
    response
}

/// Counts every webhook answer, including those no handler produced, and every rejection.
async fn count_webhook(
    State(state): State<AppState>,
    request: Request<Body>,
    next: Next,
) -> Response {
    let endpoint = if request.uri().path().ends_with("/workflow") {
        "workflow"
    } else {
        "app"
    };
    let response = next.run(request).await;
    let label = response.extensions().get::<WebhookLabel>().copied();
    let (event_type, answer, rejected) = match label {
        Some(l) => (l.event_type, l.answer, l.rejected),
        None => ("unknown", "other", Some("other")),
    };
    state.metrics.webhook(endpoint, event_type, answer);
    if let Some(reason) = rejected {
        state.rejections.add(answer, reason);
    }
    response
}

/// Rejected webhooks by answer and reason, summed up in one warning per interval instead of
/// a line each (a flood of bad requests must not flood the log).
#[derive(Debug, Default)]
pub struct Rejections(std::sync::Mutex<BTreeMap<(&'static str, &'static str), u64>>);

impl Rejections {
    pub fn add(&self, answer: &'static str, reason: &'static str) {
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *counts.entry((answer, reason)).or_default() += 1;
    }

    /// The counts since the last call, and zero from now on.
    pub fn take(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Writes the summary warning, when anything was rejected since the last one.
    pub fn log_summary(&self, over: Duration) {
        let counts = self.take();
        let total: u64 = counts.values().sum();
        if total == 0 {
            return;
        }
        let by_reason: Vec<String> = counts
            .iter()
            .map(|((answer, reason), n)| format!("{n} {answer}: {reason}"))
            .collect();
        tracing::warn!(
            rejected = total,
            over = %humantime::format_duration(over),
            by_reason = %by_reason.join("; "),
            "webhooks rejected"
        );
    }
}

/// One rejection summary per interval while the service runs, and a last one at shutdown.
async fn summarize_rejections(
    rejections: Arc<Rejections>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut since = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|s| *s) => {
                rejections.log_summary(since.elapsed());
                return;
            }
        }
        rejections.log_summary(since.elapsed());
        since = tokio::time::Instant::now();
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.metrics.render(&gauges(&state).await);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

/// The gauges of a scrape, from the store and the rules.
async fn gauges(state: &AppState) -> crate::metrics::Gauges {
    let queue = match state.store.queue_stats().await {
        Ok(stats) => Some(crate::metrics::QueueGauges {
            pending: stats.pending,
            failed: stats.failed,
            oldest_pending_age: stats
                .oldest_pending
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .unwrap_or_default(),
        }),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot read the queue from the store");
            None
        }
    };
    let rules = state.rules.status();
    crate::metrics::Gauges {
        queue,
        tokens_refused: state.store.token_failures().await.ok().map(|f| f.len()),
        rules_version: rules.version,
        rules: rules.rules,
        rules_valid: rules.last_error.is_none(),
    }
}

/// The public `/readyz`: 200 `{"status":"ready"}` while the store answers, else 503
/// `{"status":"not ready"}`; the details are on the admin listener.
async fn ready(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(json!({ "status": "ready" })).into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready" })),
        )
            .into_response(),
    }
}

/// The admin `/readyz`: the same status code, with the store, rules, intake and refused
/// tokens.
async fn readyz(State(state): State<AppState>) -> Response {
    let store = state.store.ping().await;
    let rules = state.rules.status();
    // Locations whose token GoHighLevel refused: their events wait (see README, Operations).
    let refused: Vec<String> = match state.store.token_failures().await {
        Ok(f) => f.into_iter().map(|(l, _)| l.to_string()).collect(),
        Err(_) => Vec::new(),
    };
    let body = json!({
        "store": if store.is_ok() { "ok" } else { "unreachable" },
        "rules": {
            "version": rules.version,
            "count": rules.rules,
            "files": rules.files,
            "loaded_at": humantime::format_rfc3339_seconds(rules.loaded_at).to_string(),
            "last_error": rules.last_error,
        },
        "accepting": state.accepting.load(Ordering::SeqCst),
        "tokens_refused": refused,
    });
    let status = if store.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Deletes finished events older than `retention`, and delivery ids older than
/// `dedup_window`, at start and then hourly.
async fn prune(
    store: Arc<dyn Store>,
    retention: Duration,
    dedup_window: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if let Some(before) = SystemTime::now().checked_sub(retention) {
            match store.prune(before, dedup_window).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    deleted = n,
                    "pruned finished events past the retention period"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot prune old events; trying again later"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// A running service: its address and the means to stop it.
#[derive(Debug)]
pub struct Running {
    /// The public listener: webhooks and health.
    pub addr: SocketAddr,
    /// The admin listener (admin API, metrics, detailed readiness), unless turned off.
    pub admin_addr: Option<SocketAddr>,
    /// The rules in force; `reload()` replaces them (SIGHUP, `POST /admin/reload`).
    pub rules: Arc<LiveRules>,
    pub store: Arc<dyn Store>,
    /// Keeps the rule-file watcher alive.
    _watcher: Option<notify::RecommendedWatcher>,
    shutdown: watch::Sender<bool>,
    accepting: Arc<AtomicBool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    admin_server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    worker: tokio::task::JoinHandle<()>,
    /// Writes the last rejection summary at shutdown.
    summarizer: tokio::task::JoinHandle<()>,
    /// The worker's lease owner name.
    owner: String,
    /// How long shutdown waits for in-flight work before releasing it.
    grace: Duration,
}

impl Running {
    /// Makes intake answer 429 with `Retry-After` from now on (the first step of shutdown).
    pub fn stop_intake(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    /// Stops intake (429), lets in-flight work finish (up to the grace period), then releases
    /// every lease this service holds: its unfinished events are free for the next run (or
    /// another replica) at once, and are redone there.
    pub async fn shutdown(self) {
        self.accepting.store(false, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
        let mut worker = self.worker;
        if tokio::time::timeout(self.grace, &mut worker).await.is_err() {
            tracing::warn!(
                grace = %humantime::format_duration(self.grace),
                "in-flight work did not finish in the grace period; it is stopped and its events are released"
            );
            worker.abort();
            let _ = worker.await;
        }
        match self.store.release(&self.owner).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(released = n, "released the leases of unfinished events"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot release leases at shutdown; they expire on their own")
            }
        }
        let _ = tokio::time::timeout(self.grace, self.server).await;
        if let Some(admin) = self.admin_server {
            let _ = tokio::time::timeout(self.grace, admin).await;
        }
        let _ = self.summarizer.await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Opens the store, starts the worker and the HTTP server.
pub async fn start(config: &Config, options: WorkerOptions) -> Result<Running, StartError> {
    let store = crate::store::open(&config.database_url).await?;
    start_with_store(config, options, store).await
}

/// [`start`] on a store the caller opened (tests wrap one to inject faults).
pub async fn start_with_store(
    config: &Config,
    options: WorkerOptions,
    store: Arc<dyn Store>,
) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::new());
    let store: Arc<dyn Store> = Arc::new(Wrapped::new(store, Arc::clone(&metrics)));
    let released = store.release_all().await?;
    if released > 0 {
        tracing::info!(released, "resuming events a previous run left unfinished");
    }
    let pending = store.pending().await?;
    let (listener, addr) = bind(config.listen).await?;
    let admin_listener = match config.admin_listen {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let wake = Arc::new(Notify::new());
    let accepting = Arc::new(AtomicBool::new(true));
    let (shutdown, shutdown_rx) = watch::channel(false);
    // Replicas on one PostgreSQL database share the budget there: the limit holds for their sum.
    let limits: Arc<dyn crate::ghl::budget::Budget> =
        if crate::store::is_postgres(&config.database_url) {
            let pool = crate::store::postgres::connect(&config.database_url, 2).await?;
            Arc::new(crate::store::pg_budget::PgBudget::new(
                pool,
                config.rate_limit,
                config.daily_limit,
            ))
        } else {
            Arc::new(crate::ghl::budget::LocalBudget::new(
                config.rate_limit,
                config.daily_limit,
            ))
        };
    let ghl = GhlClient::new(
        &config.ghl_api_base_url,
        config.ghl_timeout,
        limits,
        Arc::clone(&metrics),
    )?;
    let rules = Arc::new(LiveRules::new(
        config.rules_path.clone(),
        Arc::clone(&config.rules),
        Arc::clone(&metrics),
    ));
    let watcher = match rules.watch() {
        _ if !config.watch_rules => None,
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the rule files; reload with SIGHUP or POST /admin/reload");
            None
        }
    };
    let worker = Arc::new(Worker::new(
        Arc::clone(&store),
        Arc::clone(&rules),
        ghl,
        config.tokens.clone(),
        WorkerOptions {
            dry_run: config.dry_run,
            lease: config.lease,
            ..options
        },
        Arc::clone(&wake),
        Arc::clone(&metrics),
    ));
    let owner = worker.owner().to_owned();
    let worker = tokio::spawn(worker.run(shutdown_rx.clone()));
    let arrived = Arc::new(Notify::new());
    tokio::spawn(wake_when_due(
        Arc::clone(&arrived),
        Arc::clone(&wake),
        config.settle_delay,
        shutdown_rx.clone(),
    ));
    tokio::spawn(prune(
        Arc::clone(&store),
        config.retention,
        config.verifier.dedup_window(),
        shutdown_rx.clone(),
    ));
    let rejections = Arc::new(Rejections::default());
    let summarizer = tokio::spawn(summarize_rejections(
        Arc::clone(&rejections),
        REJECTION_SUMMARY_EVERY,
        shutdown_rx.clone(),
    ));
    let state = AppState {
        store: Arc::clone(&store),
        verifier: Arc::clone(&config.verifier),
        rules: Arc::clone(&rules),
        accepting: Arc::clone(&accepting),
        wake,
        arrived,
        admin_token: config.admin_token.clone().map(Arc::new),
        settle_delay: config.settle_delay,
        metrics,
        body_budget: Arc::default(),
        rejections,
    };
    let admin_addr = admin_listener.as_ref().map(|(_, a)| *a);
    let admin_server = admin_listener.map(|(listener, _)| {
        serve_until(listener, admin_router(state.clone()), shutdown_rx.clone())
    });
    let server = serve_until(listener, router(state), shutdown_rx);
    tracing::info!(
        %addr,
        admin_addr = %admin_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        rules = config.rules.rules().len(),
        dry_run = config.dry_run,
        pending,
        "autofollow is listening"
    );
    Ok(Running {
        addr,
        admin_addr,
        rules,
        _watcher: watcher,
        store,
        shutdown,
        accepting,
        server,
        admin_server,
        worker,
        summarizer,
        owner,
        grace: config.shutdown_grace,
    })
}

async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Listen(addr, e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| StartError::Listen(addr, e))?;
    Ok((listener, bound))
}

/// Serves `app` on `listener` until `shutdown` turns true.
fn serve_until(
    listener: tokio::net::TcpListener,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::spawn(async move {
        crate::http::serve(listener, app, async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
    })
}

/// Wakes the worker for stored webhooks once they can be due: right away without a settle
/// delay, else one settle delay after an arrival, at most once per settle delay however many
/// arrive. (Every wake costs a claim; under a flood, waking per webhook made the worker
/// claim per webhook for events that could not be due yet.) An event stored during the wait
/// is picked up by the next wake, at most one settle delay (or one poll) after it is due.
async fn wake_when_due(
    arrived: Arc<Notify>,
    wake: Arc<Notify>,
    settle_delay: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = arrived.notified() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if !settle_delay.is_zero() {
            tokio::time::sleep(settle_delay).await;
        }
        wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the worker's wakes while `arrivals` webhooks arrive over `over`.
    async fn wakes(settle_delay: Duration, arrivals: u32, over: Duration) -> u32 {
        let (arrived, wake) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let (_stop, stop_rx) = watch::channel(false);
        tokio::spawn(wake_when_due(
            Arc::clone(&arrived),
            Arc::clone(&wake),
            settle_delay,
            stop_rx,
        ));
        let counted = tokio::spawn(async move {
            let mut wakes = 0;
            let end = tokio::time::Instant::now() + over + settle_delay * 2;
            while tokio::time::timeout_at(end, wake.notified()).await.is_ok() {
                wakes += 1;
            }
            wakes
        });
        for _ in 0..arrivals {
            arrived.notify_one();
            tokio::time::sleep(over / arrivals).await;
        }
        counted.await.unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_wakes_the_worker_once_per_settle_delay() {
        // 1,000 webhooks over 10 s with a 1 s settle delay: one wake per second, each one
        // settle delay after an arrival, not 1,000.
        let n = wakes(Duration::from_secs(1), 1000, Duration::from_secs(10)).await;
        assert!((9..=11).contains(&n), "{n} wakes");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_settle_delay_every_arrival_wakes_the_worker() {
        let n = wakes(Duration::ZERO, 10, Duration::from_secs(10)).await;
        assert_eq!(n, 10);
    }
}

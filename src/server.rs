//! HTTP intake: authenticate, parse, store, answer. Nothing is stored for any answer but 200,
//! and 200 means the event is committed. When it cannot be stored now, the answer is 429 with
//! `Retry-After`, the only status GoHighLevel retries on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Notify, watch};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::auth::{AuthError, Verified, Verifier};
use crate::config::Config;
use crate::event::{self, Event, ParseError, Parsed};
use crate::ghl::GhlClient;
use crate::metrics::Metrics;
use crate::rules::LiveRules;
use crate::store::wrap::Wrapped;
use crate::store::{BodyKind, Inserted, NewEvent, Store, StoreError};
use crate::worker::{Worker, WorkerOptions};

/// Largest webhook body accepted.
pub const MAX_BODY: usize = 256 * 1024;
/// GoHighLevel re-sends a webhook for up to ~70 minutes; remember ids well past that.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(24 * 3600);
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
}

/// The one error type of the HTTP edge; internals are logged, never sent.
#[derive(Debug)]
enum ApiError {
    BadRequest(String),
    Unauthorized(AuthError),
    Unavailable(&'static str),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Unauthorized(e) => (StatusCode::UNAUTHORIZED, e.to_string()),
            ApiError::Unavailable(m) => (StatusCode::TOO_MANY_REQUESTS, m.to_owned()),
        };
        // Inside the request span, which names the path and request id.
        tracing::info!(answer = status.as_u16(), reason = %message, "webhook rejected");
        let mut response = (status, Json(json!({ "error": message }))).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

impl From<ParseError> for ApiError {
    fn from(e: ParseError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

pub fn router(state: AppState) -> Router {
    let admin = match state.admin_token {
        Some(_) => crate::admin::router(state.clone()),
        None => Router::new(),
    };
    let webhooks = Router::new()
        .route("/webhooks/ghl", post(app_webhook))
        .route("/webhooks/workflow", post(workflow_webhook))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state.metrics),
            count_webhook,
        ));
    Router::new()
        .merge(admin)
        .merge(webhooks)
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(
            // The span names the path only: the query string may hold the webhook secret.
            TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
                let id = request
                    .extensions()
                    .get::<RequestId>()
                    .and_then(|id| id.header_value().to_str().ok())
                    .unwrap_or("-")
                    .to_owned();
                tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id)
            }),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(Counter::default()))
        .with_state(state)
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

async fn app_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    accepting(&state)?;
    let proof = state
        .verifier
        .app(&headers, &body)
        .map_err(ApiError::Unauthorized)?;
    match event::parse_app(&body)? {
        Parsed::Unsupported { event_type, .. } => {
            tracing::info!(event_type = %event_type, answer = "ignored", "webhook");
            Ok(labelled(
                Json(json!({ "status": "ignored" })),
                "other",
                "ignored",
            ))
        }
        Parsed::Event(e) => store(&state, proof, BodyKind::App, &e, &body).await,
    }
}

fn accepting(state: &AppState) -> Result<(), ApiError> {
    if state.accepting.load(Ordering::SeqCst) {
        Ok(())
    } else {
        Err(ApiError::Unavailable("shutting down; try again shortly"))
    }
}

#[derive(Deserialize)]
struct WorkflowQuery {
    secret: Option<String>,
}

async fn workflow_webhook(
    State(state): State<AppState>,
    Query(query): Query<WorkflowQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    accepting(&state)?;
    let proof = state
        .verifier
        .shared(&headers, query.secret.as_deref(), &body)
        .map_err(ApiError::Unauthorized)?;
    let e = event::parse_workflow(&body)?;
    store(&state, proof, BodyKind::Workflow, &e, &body).await
}

async fn store(
    state: &AppState,
    _proof: Verified,
    kind: BodyKind,
    e: &Event,
    body: &[u8],
) -> Result<Response, ApiError> {
    let new = NewEvent {
        kind,
        event_type: e.event_type.name().to_owned(),
        location_id: e.location_id.clone(),
        contact_id: e.contact_id.clone(),
        opportunity_id: e.opportunity_id.clone(),
        webhook_id: e.webhook_id.clone(),
        body: String::from_utf8_lossy(body).into_owned(),
        available_at: SystemTime::now() + state.settle_delay,
    };
    let inserted = state.store.insert_event(new, DEDUP_WINDOW).await;
    let fields = (
        e.event_type.name(),
        e.location_id.as_str(),
        e.contact_id.as_str(),
    );
    match inserted {
        Ok(Inserted::Accepted(id)) => {
            state.arrived.notify_one();
            tracing::info!(
                event_type = fields.0,
                location = fields.1,
                contact = fields.2,
                event_id = id,
                answer = "accepted",
                "webhook"
            );
            Ok(labelled(
                Json(json!({ "status": "accepted", "event_id": id })),
                fields.0,
                "accepted",
            ))
        }
        Ok(Inserted::Duplicate) => {
            tracing::info!(
                event_type = fields.0,
                location = fields.1,
                contact = fields.2,
                answer = "duplicate",
                "webhook"
            );
            Ok(labelled(
                Json(json!({ "status": "duplicate" })),
                fields.0,
                "duplicate",
            ))
        }
        Err(err) => {
            tracing::error!(error = %err, event_type = fields.0, location = fields.1, contact = fields.2, answer = "429", "cannot store webhook");
            let mut response =
                ApiError::Unavailable("cannot store the event right now; try again later")
                    .into_response();
            response.extensions_mut().insert(WebhookLabel {
                event_type: fields.0,
                answer: "store_unavailable",
            });
            Ok(response)
        }
    }
}

/// What a webhook answer was about, for `autofollow_webhooks_total`.
#[derive(Clone, Copy, Debug)]
struct WebhookLabel {
    event_type: &'static str,
    answer: &'static str,
}

fn labelled(body: impl IntoResponse, event_type: &'static str, answer: &'static str) -> Response {
    let mut response = body.into_response();
    response
        .extensions_mut()
        .insert(WebhookLabel { event_type, answer });
    response
}

/// Counts every webhook answer, including those no handler produced (413 from the body limit).
async fn count_webhook(
    State(metrics): State<Arc<Metrics>>,
    request: Request<axum::body::Body>,
    next: Next,
) -> Response {
    let endpoint = if request.uri().path().ends_with("/workflow") {
        "workflow"
    } else {
        "app"
    };
    let response = next.run(request).await;
    let label = response.extensions().get::<WebhookLabel>().copied();
    let answer = match (label, response.status()) {
        (Some(l), _) => l.answer,
        (None, StatusCode::BAD_REQUEST) => "bad_request",
        (None, StatusCode::UNAUTHORIZED) => "unauthorized",
        (None, StatusCode::PAYLOAD_TOO_LARGE) => "too_large",
        (None, StatusCode::TOO_MANY_REQUESTS) => "shutting_down",
        (None, _) => "other",
    };
    let event_type = label.map_or("unknown", |l| l.event_type);
    metrics.webhook(endpoint, event_type, answer);
    response
}

async fn metrics(State(state): State<AppState>) -> Response {
    let text = state
        .metrics
        .render(state.store.as_ref(), &state.rules)
        .await;
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

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

/// Deletes finished events older than `retention`, at start and then hourly.
async fn prune(store: Arc<dyn Store>, retention: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        if let Some(before) = SystemTime::now().checked_sub(retention) {
            match store.prune(before, DEDUP_WINDOW).await {
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
    pub addr: SocketAddr,
    /// The rules in force; `reload()` replaces them (SIGHUP, `POST /admin/reload`).
    pub rules: Arc<LiveRules>,
    pub store: Arc<dyn Store>,
    /// Keeps the rule-file watcher alive.
    _watcher: Option<notify::RecommendedWatcher>,
    shutdown: watch::Sender<bool>,
    accepting: Arc<AtomicBool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    worker: tokio::task::JoinHandle<()>,
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
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartError::Listen(config.listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Listen(config.listen, e))?;
    let wake = Arc::new(Notify::new());
    let accepting = Arc::new(AtomicBool::new(true));
    let (shutdown, shutdown_rx) = watch::channel(false);
    // Replicas on one PostgreSQL database share the budget there: the limit holds for their sum.
    let limits = Arc::new(if crate::store::is_postgres(&config.database_url) {
        let pool = crate::store::postgres::connect(&config.database_url, 2).await?;
        crate::limits::Limits::shared(config.rate_limit, config.daily_limit, pool)
    } else {
        crate::limits::Limits::new(config.rate_limit, config.daily_limit)
    });
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
    };
    let app = router(state);
    let mut stop = shutdown_rx;
    let server = tokio::spawn(async move {
        crate::http::serve(listener, app, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
    });
    tracing::info!(
        %addr,
        rules = config.rules.rules().len(),
        dry_run = config.dry_run,
        pending,
        "autofollow is listening"
    );
    Ok(Running {
        addr,
        rules,
        _watcher: watcher,
        store,
        shutdown,
        accepting,
        server,
        worker,
        owner,
        grace: config.shutdown_grace,
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

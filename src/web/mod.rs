//! The web layer: two listeners over the HTTP server of [`server`]. The public one takes
//! webhooks ([`intake`]) and answers health checks; the admin one serves the operators' API
//! ([`admin`]), metrics and detailed readiness. [`auth`] checks webhooks; [`state`] is what
//! every handler shares.

pub mod admin;
pub mod auth;
pub mod console;
pub mod guard;
pub mod intake;
pub mod oauth;
pub mod server;
pub mod session;
pub mod state;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::store::InstallState;
use crate::telemetry::untrusted;
use intake::MAX_BODY;
use state::AppState;

/// The public listener: webhooks, `/healthz`, and a `/readyz` that says ready or not.
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .merge(intake::routes(state.clone()))
        .route("/oauth/install", get(oauth::install))
        .route("/oauth/callback", get(oauth::callback))
        .route("/healthz", get(healthz))
        .route("/readyz", get(ready));
    layered(routes, state)
}

/// The admin listener: the admin API (when a token is set), `/metrics`, `/readyz` with its
/// details, `/healthz`.
pub fn admin_router(state: AppState) -> Router {
    let admin = match state.admin_token {
        Some(_) => admin::router(state.clone()).merge(console::router(state.clone())),
        None => Router::new().route("/", get(no_console)),
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

/// `/` of the admin listener without an admin token: how to turn the console on.
async fn no_console() -> Response {
    let text = "autofollow: the web console and the admin API are off; set AUTOFOLLOW_ADMIN_TOKEN (16 characters or more) to turn them on.";
    (StatusCode::NOT_FOUND, text).into_response()
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
    // Outside app mode every state counts 0 (the series exist for dashboards either way).
    let all = match state.access.oauth() {
        Some(_) => state.store.installations().await.ok(),
        None => Some(Vec::new()),
    };
    let installations = all.map(|all| {
        let states = [
            InstallState::Active,
            InstallState::Reauthorize,
            InstallState::Uninstalled,
        ];
        let count = |s: InstallState| all.iter().filter(|i| i.state == s).count();
        states.map(|s| (s.as_str(), count(s))).to_vec()
    });
    let scopes_missing = state.access.scopes().missing();
    crate::metrics::Gauges {
        queue,
        backfills: latest_backfills(state).await,
        tokens_refused: state.store.token_failures().await.ok().map(|f| f.len()),
        installations,
        scopes_missing: scopes_missing.iter().map(|(_, s)| s.len()).sum(),
        rules_version: rules.version,
        rules: rules.rules,
        rules_valid: rules.last_error.is_none(),
    }
}

/// Each location's latest backfill (of the last 100): (location, seen, total, queued).
async fn latest_backfills(state: &AppState) -> Option<Vec<crate::metrics::BackfillGauge>> {
    let all = state.store.backfills(100).await.ok()?;
    let mut latest: Vec<crate::metrics::BackfillGauge> = Vec::new();
    for b in all {
        if !latest.iter().any(|(l, ..)| l == b.location.as_str()) {
            latest.push((b.location.to_string(), b.seen, b.total, b.queued));
        }
    }
    Some(latest)
}

/// How locations are reached, for the admin `/readyz`: PITs, installations by state (those
/// needing re-authorization by name, with why) and scopes found missing. The full list is
/// `GET /admin/installations`.
async fn access_details(state: &AppState) -> serde_json::Value {
    let installations = match state.access.oauth() {
        None => serde_json::Value::Null,
        Some(_) => match state.store.installations().await {
            Err(_) => json!("unreadable"),
            Ok(all) => {
                let count = |s: InstallState| all.iter().filter(|i| i.state == s).count();
                let asked = admin::asked_scopes(state);
                let reauthorize: Vec<_> = all
                    .iter()
                    .filter(|i| i.state == InstallState::Reauthorize)
                    .map(|i| admin::installation_view(i, &asked))
                    .collect();
                json!({
                    "active": count(InstallState::Active),
                    "uninstalled": count(InstallState::Uninstalled),
                    "reauthorize": reauthorize,
                })
            }
        },
    };
    json!({
        "pit_locations": state.access.pit_locations(),
        "installations": installations,
        "missing_scopes": admin::missing_scopes(state),
    })
}

/// The running backfills and the latest ended ones (five in all at least), for the admin
/// `/readyz`.
async fn backfill_details(state: &AppState) -> Vec<crate::worker::Progress> {
    let latest = state.store.backfills(20).await.unwrap_or_default();
    let shown = latest
        .into_iter()
        .enumerate()
        .filter(|(i, b)| *i < 5 || b.state == "running")
        .map(|(_, b)| state.worker.progress(b));
    shown.collect()
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
            "reapply": state.worker.last_reapply(),
        },
        "accepting": state.accepting.load(Ordering::SeqCst),
        "tokens_refused": refused,
        "access": access_details(&state).await,
        "backfills": backfill_details(&state).await,
    });
    let status = if store.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

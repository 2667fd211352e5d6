//! Webhook intake: authenticate, parse, store, answer. Nothing is stored for any answer but
//! 200, and 200 means the event is committed. When it cannot be stored now, the answer is 429
//! with `Retry-After`, the only status GoHighLevel retries on.
//!
//! An unauthenticated request costs little: its headers are checked before any body byte is
//! read (a shared secret is settled there), the bodies being read at once hold at most
//! [`BODY_BUDGET`](super::guard::BODY_BUDGET) bytes between them (a request that would pass it is answered 429 before
//! its body is read), and each rejection is logged at debug level only and summed up in one
//! warning per [`REJECTION_SUMMARY_EVERY`]. The [`AppWebhook`] and [`WorkflowWebhook`]
//! extractors do all of that, so a handler receives a verified, parsed webhook.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Query, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use super::auth::{AuthError, Verified};
use super::guard::{BodyBudget, Rejections};
use super::state::AppState;
use crate::model::event::{self, AppChange, BodyKind, Event, ParseError, Parsed};
use crate::model::ids::LocationId;
use crate::store::{Inserted, NewEvent};
use crate::telemetry::untrusted;

/// Largest webhook body accepted.
pub const MAX_BODY: usize = 256 * 1024;
/// How often rejected webhooks are summed up in one warning.
pub const REJECTION_SUMMARY_EVERY: Duration = Duration::from_secs(60);
/// What a 429 asks GoHighLevel (or any sender) to wait.
const RETRY_AFTER_SECS: u64 = 30;

/// The one error type of the webhook edge. Its messages are fixed texts or name a field:
/// nothing a request sent is echoed, logged or counted by its content.
#[derive(Debug)]
pub enum ApiError {
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

/// `POST /webhooks/ghl` and `POST /webhooks/workflow`, every answer counted.
pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/webhooks/ghl", post(app_webhook))
        .route("/webhooks/workflow", post(workflow_webhook))
        .route_layer(middleware::from_fn_with_state(state, count_webhook))
}

/// A webhook that passed authentication and parsed: only the extractors make one, as it
/// needs the proof of authentication, and only one is stored.
#[derive(Debug)]
pub struct Webhook {
    _proof: Verified,
    pub kind: BodyKind,
    pub parsed: Parsed,
    body: Bytes,
    /// The Standard Webhooks `webhook-id`, when that is how it was signed.
    delivery_id: Option<String>,
}

/// `POST /webhooks/ghl`: accepting, authenticated (Ed25519 or a shared secret), parsed, and
/// (an event) within the age window.
#[derive(Debug)]
pub struct AppWebhook(pub Webhook);

/// `POST /webhooks/workflow`: accepting, authenticated (a shared secret), parsed.
#[derive(Debug)]
pub struct WorkflowWebhook(pub Webhook);

impl FromRequest<AppState> for AppWebhook {
    type Rejection = ApiError;

    async fn from_request(request: Request<Body>, state: &AppState) -> Result<Self, ApiError> {
        let webhook = Webhook::receive(state, request, BodyKind::App).await?;
        if let Parsed::Event(e) = &webhook.parsed {
            state
                .verifier
                .fresh(e.timestamp.as_deref())
                .map_err(ApiError::Unauthorized)?;
        }
        Ok(AppWebhook(webhook))
    }
}

impl FromRequest<AppState> for WorkflowWebhook {
    type Rejection = ApiError;

    async fn from_request(request: Request<Body>, state: &AppState) -> Result<Self, ApiError> {
        Webhook::receive(state, request, BodyKind::Workflow)
            .await
            .map(WorkflowWebhook)
    }
}

#[derive(Deserialize)]
struct WorkflowQuery {
    secret: Option<String>,
}

impl Webhook {
    /// Checks that intake is open, the headers (and, on `/webhooks/workflow`, the `secret`
    /// query parameter), then reads the body within the body budget, checks a signature over
    /// it, and parses it with the parser of its kind.
    async fn receive(
        state: &AppState,
        request: Request<Body>,
        kind: BodyKind,
    ) -> Result<Webhook, ApiError> {
        let (parts, body) = request.into_parts();
        if !state.accepting.load(Ordering::SeqCst) {
            discard(body);
            return Err(ApiError::ShuttingDown);
        }
        let checked = match kind {
            // A task is never received over HTTP: it is held to the app webhooks' check.
            BodyKind::App | BodyKind::Task => state.verifier.app_headers(&parts.headers),
            BodyKind::Workflow => {
                let query = Query::<WorkflowQuery>::try_from_uri(&parts.uri).ok();
                let secret = query.as_ref().and_then(|q| q.secret.as_deref());
                state.verifier.shared_headers(&parts.headers, secret)
            }
        };
        let checked = match checked {
            Ok(c) => c,
            Err(e) => {
                discard(body);
                return Err(ApiError::Unauthorized(e));
            }
        };
        let delivery_id = checked.delivery_id().map(str::to_owned);
        let body = read_body(&state.body_budget, &parts.headers, body).await?;
        let proof = checked.body(&body).map_err(ApiError::Unauthorized)?;
        let parsed = event::parse(kind, &body)?;
        Ok(Webhook {
            _proof: proof,
            kind,
            parsed,
            body,
            delivery_id,
        })
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
        discard(body);
        return Err(ApiError::TooLarge);
    }
    let Some(_held) = budget.reserve(declared.unwrap_or(MAX_BODY)) else {
        discard(body);
        return Err(ApiError::Busy);
    };
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    match http_body_util::BodyExt::collect(limited).await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::TooLarge),
        // The client went away or sent a broken body; it will not read the answer.
        Err(_) => Err(ApiError::BadRequest(ParseError::Incomplete)),
    }
}

/// How much of a refused request's body is read and thrown away, and for how long at most.
const DISCARD_BYTES: usize = MAX_BODY;
const DISCARD_FOR: Duration = Duration::from_secs(5);

/// Reads a refused request's body and throws it away, beside the answer, which is sent at
/// once. Closing a connection with its request half read makes the kernel reset it, and the
/// sender may then lose the answer (a 429 GoHighLevel would have retried, seen instead as a
/// broken connection). Nothing is kept: no memory is held for the body, and at most
/// [`DISCARD_BYTES`] are read within [`DISCARD_FOR`]; then the connection is let go.
fn discard(body: Body) {
    tokio::spawn(async move {
        let mut body = body;
        let mut read = 0;
        let drained = async {
            while let Some(Ok(frame)) = http_body_util::BodyExt::frame(&mut body).await {
                read += frame.data_ref().map_or(0, Bytes::len);
                if read > DISCARD_BYTES {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DISCARD_FOR, drained).await;
    });
}

async fn app_webhook(
    State(state): State<AppState>,
    AppWebhook(webhook): AppWebhook,
) -> Result<Response, ApiError> {
    store_or_ignore(&state, webhook).await
}

async fn workflow_webhook(
    State(state): State<AppState>,
    WorkflowWebhook(webhook): WorkflowWebhook,
) -> Result<Response, ApiError> {
    store_or_ignore(&state, webhook).await
}

/// Stores an event of a location autofollow serves; acts on an app's install or uninstall;
/// answers `ignored` for the rest.
async fn store_or_ignore(state: &AppState, webhook: Webhook) -> Result<Response, ApiError> {
    match &webhook.parsed {
        Parsed::Unsupported { event_type, .. } => {
            tracing::info!(event_type = ?untrusted(event_type), answer = "ignored", "webhook");
            Ok(ignored(
                "other",
                "autofollow does not act on this event type",
            ))
        }
        Parsed::App(change) => app_change(state, change).await,
        Parsed::Event(e) => match state.access.serves(&e.location_id).await {
            Ok(true) => store(state, &webhook, e).await,
            Ok(false) => {
                let location = e.location_id.as_str();
                tracing::info!(
                    event_type = e.event_type.name(),
                    location,
                    answer = "ignored",
                    "webhook for a location without a token or installation"
                );
                Ok(ignored(
                    e.event_type.name(),
                    "no token or installation for this location",
                ))
            }
            Err(error) => {
                tracing::error!(%error, answer = "429", "cannot tell whether the location is installed");
                Err(ApiError::StoreUnavailable)
            }
        },
    }
}

/// `200 {"status": "ignored", "reason": …}`: nothing stored, nothing done.
fn ignored(event_type: &'static str, reason: &'static str) -> Response {
    let body = Json(json!({ "status": "ignored", "reason": reason }));
    labelled(body, event_type, "ignored")
}

/// An `INSTALL` or `UNINSTALL` webhook, in app mode, of this app (when `GHL_APP_ID` is set):
/// acted on and committed before the answer (429 when it cannot be, so GoHighLevel retries).
async fn app_change(state: &AppState, change: &AppChange) -> Result<Response, ApiError> {
    let type_name = if change.installed {
        "INSTALL"
    } else {
        "UNINSTALL"
    };
    let Some(install) = &state.install else {
        return Ok(ignored(type_name, "not in app mode"));
    };
    if install
        .app_id
        .as_ref()
        .is_some_and(|id| change.app_id.as_ref() != Some(id))
    {
        tracing::info!(type_name, app_id = ?change.app_id.as_deref().map(untrusted), answer = "ignored", "another app's install webhook");
        return Ok(ignored(type_name, "another app"));
    }
    let (company, location) = (
        change.company_id.as_deref(),
        change.location_id.as_ref().map(LocationId::as_str),
    );
    let done = match change.installed {
        true => install.oauth.app_installed(company, location).await,
        false => install
            .oauth
            .app_uninstalled(company, location)
            .await
            .map(|n| {
                if n > 0 {
                    "uninstalled"
                } else {
                    "nothing was installed"
                }
            }),
    };
    match done {
        Ok(done) => {
            tracing::info!(
                type_name,
                company,
                location,
                done,
                answer = "accepted",
                "app webhook"
            );
            let body = Json(json!({ "status": "accepted", "done": done }));
            Ok(labelled(body, type_name, "accepted"))
        }
        Err(error) => {
            tracing::error!(type_name, company, location, %error, answer = "429", "cannot record the app webhook");
            Err(ApiError::StoreUnavailable)
        }
    }
}

/// Commits the event. Deduplicated on the body's `webhookId` (GoHighLevel's re-deliveries),
/// else on the Standard Webhooks `webhook-id` (a sender's retries, or a replay).
async fn store(state: &AppState, webhook: &Webhook, e: &Event) -> Result<Response, ApiError> {
    let webhook_id = e.webhook_id.clone().or_else(|| {
        webhook
            .delivery_id
            .as_ref()
            .map(|id| format!("webhook-id:{id}"))
    });
    let new = NewEvent {
        kind: webhook.kind,
        event_type: e.event_type.name().to_owned(),
        location_id: e.location_id.clone(),
        contact_id: e.contact_id.clone(),
        opportunity_id: e.opportunity_id.clone(),
        webhook_id,
        body: String::from_utf8_lossy(&webhook.body).into_owned(),
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

/// One rejection summary per interval while the service runs, and a last one at shutdown.
pub async fn summarize_rejections(
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

//! The operators' HTTP API, on the admin listener only when `AUTOFOLLOW_ADMIN_TOKEN` is set:
//! list, replay and explain events, a contact's history and its erasure, installations. Every
//! request needs
//! `Authorization: Bearer <token>`.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;

use super::auth::same_secret;
use super::state::AppState;
use crate::model::event::{self, Parsed};
use crate::model::ids::{ContactId, LocationId};
use crate::model::plan::{PreviousState, parse_assigned};
use crate::model::record::EventStatus;
use crate::model::task::{UndoScope, since_ms};
use crate::rules::NoResolver;
use crate::rules::RuleSet;
use crate::rules::deal::Dealing;
use crate::rules::explain_report;
use crate::store::{EventFilter, Installation};
use crate::worker::{Job, simulate};

mod pools;

/// The admin routes, behind the bearer-token check.
pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/admin/events", get(list))
        .route("/admin/events/{id}/replay", post(replay_one))
        .route("/admin/replay", post(replay_many))
        .route("/admin/contacts/{id}/history", get(history))
        .route("/admin/contacts/{id}/followers", get(owned))
        .route("/admin/contacts/{id}", delete(erase))
        .route("/admin/explain", post(explain))
        .route("/admin/reload", post(reload))
        .route("/admin/installations", get(installations))
        .route("/admin/reapply", post(reapply))
        .route("/admin/undo", post(undo))
        .route("/admin/backfills", get(backfills).post(start_backfill))
        .route("/admin/simulate", post(simulate))
        .route("/admin/pools", get(pools::pools))
        .route("/admin/away", post(pools::set_away))
        .route("/admin/away/{user}", delete(pools::clear_away))
        .route_layer(middleware::from_fn_with_state(state, require_token))
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = match (&state.admin_token, given) {
        (Some(token), Some(given)) => same_secret(given.trim(), token.expose_secret()),
        _ => false,
    };
    if ok {
        next.run(request).await
    } else {
        error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token (Authorization: Bearer …)",
        )
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "admin request failed");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the store cannot answer right now",
    )
}

/// The most events one listing returns (`limit` above it is capped).
pub const MAX_LIST: u32 = 1000;

#[derive(Deserialize, Default)]
struct Selection {
    status: Option<String>,
    contact: Option<String>,
    since: Option<String>,
    limit: Option<u32>,
}

impl Selection {
    /// The filter, or the message of a 400.
    fn filter(self) -> Result<EventFilter, String> {
        Ok(EventFilter {
            status: self
                .status
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(str::parse::<EventStatus>)
                .transpose()?,
            contact: self
                .contact
                .filter(|c| !c.is_empty())
                .map(|c| ContactId::parse(&c).map_err(|e| e.to_string()))
                .transpose()?,
            since: self
                .since
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(EventFilter::since_ago)
                .transpose()?,
            limit: self.limit.unwrap_or(100),
            location: None,
            event_type: None,
        })
    }

    /// The filter of a listing: at least 1 and at most [`MAX_LIST`] events (the store reads
    /// a limit of 0 as "all", which a listing must never ask for).
    fn listing(self) -> Result<EventFilter, String> {
        let filter = self.filter()?;
        if filter.limit == 0 {
            return Err(format!("limit must be 1 to {MAX_LIST}"));
        }
        Ok(EventFilter {
            limit: filter.limit.min(MAX_LIST),
            ..filter
        })
    }
}

/// A contact id from the path, or the message of a 400.
fn contact_id(text: &str) -> Result<ContactId, String> {
    ContactId::parse(text).map_err(|e| e.to_string())
}

async fn list(State(state): State<AppState>, Query(selection): Query<Selection>) -> Response {
    let filter = match selection.listing() {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match state.store.list_events(&filter).await {
        Ok(events) => Json(events).into_response(),
        Err(e) => internal(e),
    }
}

async fn replay_one(State(state): State<AppState>, Path(id): Path<i64>) -> Response {
    match state.store.event(id).await {
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no event {id}")),
        Err(e) => return internal(e),
        Ok(Some(_)) => {}
    }
    match state.store.replay(&[id]).await {
        Ok(queued) => {
            state.wake.notify_one();
            Json(json!({ "queued": queued })).into_response()
        }
        Err(e) => internal(e),
    }
}

async fn replay_many(
    State(state): State<AppState>,
    Query(selection): Query<Selection>,
) -> Response {
    if selection.status.as_deref().is_none_or(str::is_empty) {
        return error(
            StatusCode::BAD_REQUEST,
            "select events with status= (and since=)",
        );
    }
    let filter = match (Selection {
        limit: Some(0),
        ..selection
    })
    .filter()
    {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let ids = match state.store.list_events(&filter).await {
        Ok(events) => events.iter().map(|e| e.event.id).collect::<Vec<_>>(),
        Err(e) => return internal(e),
    };
    match state.store.replay(&ids).await {
        Ok(queued) => {
            state.wake.notify_one();
            Json(json!({ "queued": queued })).into_response()
        }
        Err(e) => internal(e),
    }
}

async fn history(State(state): State<AppState>, Path(contact): Path<String>) -> Response {
    let contact = match contact_id(&contact) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match state.store.history(&contact).await {
        Ok(h) => {
            let items: Vec<_> = h
                .iter()
                .map(|(e, d)| json!({ "event": e, "decisions": d }))
                .collect();
            Json(items).into_response()
        }
        Err(e) => internal(e),
    }
}

/// `GET /admin/contacts/{id}/followers?location=…`: the contact's ownership ledger in that
/// location (every row, ended ones with `removed_at`): who follows because of autofollow,
/// and which rules keep each.
async fn owned(
    State(state): State<AppState>,
    Path(contact): Path<String>,
    Query(q): Query<OwnedQuery>,
) -> Response {
    let (contact, location) = match (contact_id(&contact), LocationId::parse(&q.location)) {
        (Ok(c), Ok(l)) => (c, l),
        (Err(e), _) => return error(StatusCode::BAD_REQUEST, e),
        (_, Err(e)) => return error(StatusCode::BAD_REQUEST, format!("location: {e}")),
    };
    match state.store.owned(&location, &contact, true).await {
        Ok(rows) => Json(
            json!({ "location": location.as_str(), "contact": contact.as_str(), "owned": rows }),
        )
        .into_response(),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct OwnedQuery {
    location: String,
}

/// Erases what is stored about the contact: `{"erased": {"events": N, "decisions": N,
/// "states": N}}`.
async fn erase(State(state): State<AppState>, Path(contact): Path<String>) -> Response {
    let contact = match contact_id(&contact) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match state.store.erase_contact(&contact).await {
        Ok(erased) => {
            tracing::info!(contact = %contact, events = erased.events, "erased a contact's data");
            Json(json!({ "erased": erased })).into_response()
        }
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct ExplainQuery {
    /// Comma-separated tags of the contact's previous event.
    previous_tags: Option<String>,
    previous_stage: Option<String>,
    /// A user id, or `none`.
    previous_assigned: Option<String>,
}

async fn explain(
    State(state): State<AppState>,
    Query(q): Query<ExplainQuery>,
    body: Bytes,
) -> Response {
    let previous = PreviousState {
        tags: q.previous_tags.map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        }),
        stage: q.previous_stage.filter(|s| !s.is_empty()),
        assigned: match q.previous_assigned.as_deref().map(parse_assigned) {
            None => None,
            Some(Ok(assigned)) => Some(assigned),
            Some(Err(e)) => return error(StatusCode::BAD_REQUEST, e),
        },
    };
    let mut dealing = match event::parse_any(&body) {
        Ok(Parsed::Event(e)) => match state.worker.dealing(&e).await {
            Ok(dealing) => dealing,
            Err(e) => return internal(e),
        },
        _ => Dealing::fresh(),
    };
    match explain_report(
        &state.rules.current(),
        &body,
        &previous,
        &NoResolver,
        &mut dealing,
    ) {
        Ok(report) => Json(report).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// Loads the rule files again: 200 with the new version, or 422 with every error while the
/// previous rules stay in force.
async fn reload(State(state): State<AppState>) -> Response {
    let rules = std::sync::Arc::clone(&state.rules);
    match tokio::task::spawn_blocking(move || rules.reload()).await {
        Ok(Ok(set)) => Json(
            json!({ "status": "reloaded", "version": set.version(), "rules": set.rules().len() }),
        )
        .into_response(),
        Ok(Err(e)) => {
            let errors: Vec<String> = e.errors().map(ToString::to_string).collect();
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "status": "rejected", "errors": errors })),
            )
                .into_response()
        }
        Err(e) => internal(e),
    }
}

/// `GET /admin/installations`: how each location is reached. App installations (never a
/// token: kind, company, state and why, scopes granted and those asked for but not granted,
/// expiry), the number of locations with a PIT, and the scopes calls found missing.
async fn installations(State(state): State<AppState>) -> Response {
    let all = match state.access.oauth() {
        None => Vec::new(),
        Some(_) => match state.store.installations().await {
            Ok(all) => all,
            Err(e) => return internal(e),
        },
    };
    let asked = asked_scopes(&state);
    let views: Vec<_> = all.iter().map(|i| installation_view(i, &asked)).collect();
    Json(json!({
        "app_mode": state.install.is_some(),
        "pit_locations": state.access.pit_locations(),
        "installations": views,
        "missing_scopes": missing_scopes(&state),
    }))
    .into_response()
}

/// The scopes the app asks for at install.
pub(super) fn asked_scopes(state: &AppState) -> Vec<String> {
    let scopes = state.install.as_ref().map_or("", |i| i.scopes.as_str());
    scopes.split_whitespace().map(str::to_owned).collect()
}

/// One installation as operators see it: no token, sealed or not.
pub(super) fn installation_view(i: &Installation, asked: &[String]) -> serde_json::Value {
    let t = &i.tokens;
    let granted: Vec<&str> = t.scopes.split_whitespace().collect();
    // A company's locations get their scopes from the company's token.
    let not_granted: Vec<&String> = match t.access_token.is_some() && !granted.is_empty() {
        true => asked
            .iter()
            .filter(|s| !granted.contains(&s.as_str()))
            .collect(),
        false => Vec::new(),
    };
    let time = |t: Option<std::time::SystemTime>| {
        t.map(|t| humantime::format_rfc3339_seconds(t).to_string())
    };
    json!({
        "id": t.id,
        "kind": t.kind.as_str(),
        "company_id": t.company_id,
        "state": i.state.as_str(),
        "problem": i.problem,
        "scopes": t.scopes,
        "scopes_not_granted": not_granted,
        "token_expires_at": time(t.expires_at),
        "updated_at": time(Some(i.updated_at)),
    })
}

/// Scopes calls found missing, by location.
pub(super) fn missing_scopes(state: &AppState) -> Vec<serde_json::Value> {
    let missing = state.access.scopes().missing();
    let views = missing.into_iter().flat_map(|(location, scopes)| {
        scopes.into_iter().map(move |(scope, refused)| {
            json!({ "location": location.as_str(), "scope": scope, "refused": refused })
        })
    });
    views.collect()
}

/// What `POST /admin/reapply` and `POST /admin/undo` take, as the CLI's flags.
#[derive(Deserialize, Default)]
struct JobQuery {
    location: Option<String>,
    #[serde(default)]
    dry_run: bool,
    rule: Option<String>,
    event: Option<i64>,
    since: Option<String>,
    /// `simulate`: the rule file the body replaces (by file name); without it the body is
    /// the whole candidate.
    file: Option<String>,
}

impl JobQuery {
    fn location(&self) -> Result<Option<LocationId>, String> {
        let given = self.location.as_deref().filter(|l| !l.is_empty());
        given
            .map(|l| LocationId::parse(l).map_err(|e| format!("location: {e}")))
            .transpose()
    }

    /// The undo's scope: exactly one of `rule`, `event`, `since`.
    fn scope(&self) -> Result<UndoScope, String> {
        let rule = self.rule.as_deref().filter(|r| !r.is_empty());
        let since = self.since.as_deref().filter(|s| !s.is_empty());
        match (rule, self.event, since) {
            (Some(rule), None, None) => Ok(UndoScope::Rule(rule.to_owned())),
            (None, Some(id), None) => Ok(UndoScope::Event(id)),
            (None, None, Some(since)) => UndoScope::since(since),
            _ => Err("name exactly one of rule=, event= or since=".to_owned()),
        }
    }
}

/// `POST /admin/reapply[?location=ID][&dry_run=true]`: what the rules in force want now
/// against the ledger, for every known contact; queued unless a dry run. The report.
async fn reapply(State(state): State<AppState>, Query(q): Query<JobQuery>) -> Response {
    let job = match q.location() {
        Ok(location) => Job::Reapply { location },
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    run_job(&state, &job, q.dry_run).await
}

/// `POST /admin/undo?rule=NAME|event=ID|since=TIME[&location=ID][&dry_run=true]`: the
/// inverse of what autofollow did there, from the ledger; queued unless a dry run.
async fn undo(State(state): State<AppState>, Query(q): Query<JobQuery>) -> Response {
    let job = match (q.scope(), q.location()) {
        (Ok(scope), Ok(location)) => Job::Undo { scope, location },
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e),
    };
    run_job(&state, &job, q.dry_run).await
}

async fn run_job(state: &AppState, job: &Job, dry_run: bool) -> Response {
    match state.worker.maintain(job, dry_run).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => internal(e),
    }
}

/// `GET /admin/backfills`: the latest 50 backfills, newest first, with their estimates.
async fn backfills(State(state): State<AppState>) -> Response {
    match state.store.backfills(50).await {
        Ok(list) => {
            let list: Vec<_> = list.into_iter().map(|b| state.worker.progress(b)).collect();
            Json(json!({ "backfills": list })).into_response()
        }
        Err(e) => internal(e),
    }
}

/// `POST /admin/backfills?location=ID[&since=DATE][&dry_run=true]`: starts a backfill of the
/// location (or answers the one running for it): 202 with its progress.
async fn start_backfill(State(state): State<AppState>, Query(q): Query<JobQuery>) -> Response {
    let location = match q.location() {
        Ok(Some(location)) => location,
        Ok(None) => return error(StatusCode::BAD_REQUEST, "location= is required"),
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let since = q.since.as_deref().filter(|s| !s.is_empty()).map(since_ms);
    let since = match since.transpose() {
        Ok(since) => since,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match state
        .store
        .start_backfill(&location, since, q.dry_run)
        .await
    {
        Ok(b) => (StatusCode::ACCEPTED, Json(state.worker.progress(b))).into_response(),
        Err(e) => internal(e),
    }
}

/// `POST /admin/simulate?since=7d&location=&file=NAME` with a candidate rule file as the
/// body: `autofollow simulate`'s report against the rules in force; 422 with every error
/// when the candidate does not load.
async fn simulate(
    State(state): State<AppState>,
    Query(q): Query<JobQuery>,
    body: Bytes,
) -> Response {
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "the candidate is not UTF-8 text");
    };
    let since = since_ms(q.since.as_deref().filter(|s| !s.is_empty()).unwrap_or("7d"));
    let (since, location) = match (since, q.location()) {
        (Ok(since), Ok(location)) => (since, location),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e),
    };
    let loaded = match q.file.as_deref().filter(|f| !f.is_empty()) {
        Some(name) => RuleSet::load_replacing(state.rules.path(), name, text),
        None => RuleSet::from_sources(&[("candidate.yaml", text)]),
    };
    let candidate = match loaded {
        Ok(set) => set,
        Err(e) => {
            let errors: Vec<String> = e.errors().map(ToString::to_string).collect();
            let body = json!({ "status": "rejected", "errors": errors });
            return (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response();
        }
    };
    let current = state.rules.current();
    let store = state.store.as_ref();
    let sim = simulate::simulate(
        store,
        &current,
        &candidate,
        since,
        location.as_ref(),
        &NoResolver,
    );
    match sim.await {
        Ok(sim) => Json(sim).into_response(),
        Err(e) => internal(e),
    }
}

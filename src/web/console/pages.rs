//! The console's pages that only read: the overview, events with filters, one event (its
//! body, decisions, calls and the rules' explanation), and one contact (its history and the
//! followers autofollow manages for it).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use askama::Template;
use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::view::{
    Chart, Chrome, DecisionView, EventRow, ExplainView, ago, chart, listed, page, plural,
    status_class, when_ms,
};
use crate::model::event::{self, EventType, Parsed};
use crate::model::ids::{ContactId, LocationId};
use crate::model::plan::PreviousState;
use crate::model::record::EventStatus;
use crate::rules::NoResolver;
use crate::store::{EventFilter, InstallKind, InstallState, StoreError};
use crate::web::session::Visitor;
use crate::web::state::AppState;

/// The most events a listing shows.
const LISTED: u32 = 200;
const HOUR_MS: i64 = 3_600_000;

/// The frame of a page for `visitor`.
pub fn chrome(state: &AppState, visitor: &Visitor, title: &str, active: &'static str) -> Chrome {
    Chrome {
        title: title.to_owned(),
        active,
        signed_in: true,
        csrf: super::csrf(state, visitor),
        flash: None,
    }
}

/// The page a store failure leaves.
pub fn unavailable(e: &StoreError) -> Response {
    tracing::error!(error = %e, "a console page cannot read the store");
    let text = "The store cannot answer right now; try again in a moment.";
    (StatusCode::SERVICE_UNAVAILABLE, text).into_response()
}

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview {
    chrome: Chrome,
    pending: u64,
    oldest: String,
    failed_total: u64,
    failed_day: u64,
    received_day: u64,
    calls_day: u64,
    chart: Chart,
    locations: Vec<LocationRow>,
    /// Requests per second each location's budget allows.
    budget: String,
    rules_version: String,
    rule_count: String,
    file_count: String,
    files: Vec<String>,
    loaded_at: String,
    last_error: Option<String>,
}

/// How one location is reached, and how it stands.
struct LocationRow {
    id: String,
    reached_by: &'static str,
    state: String,
    state_class: &'static str,
    waiting: u64,
    /// Calls this replica held back for the location's budget since it started.
    held_back: u64,
    missing: String,
}

fn now_ms() -> i64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub async fn overview(State(state): State<AppState>, Extension(v): Extension<Visitor>) -> Response {
    let stats = match state.store.queue_stats().await {
        Ok(stats) => stats,
        Err(e) => return unavailable(&e),
    };
    let first_hour = (now_ms() / HOUR_MS - 23) * HOUR_MS;
    let activity = match state.store.activity(first_hour, HOUR_MS).await {
        Ok(a) => a,
        Err(e) => return unavailable(&e),
    };
    let total = |f: fn(&crate::store::Activity) -> u64| activity.iter().map(f).sum();
    let rules = state.rules.status();
    let current = state.rules.current();
    let template = Overview {
        chrome: chrome(&state, &v, "Overview", "overview"),
        pending: stats.pending,
        oldest: stats
            .oldest_pending
            .map_or_else(|| "none waiting".to_owned(), ago),
        failed_total: stats.failed,
        failed_day: total(|a| a.failed),
        received_day: total(|a| a.received),
        calls_day: total(|a| a.calls),
        chart: chart(&activity, first_hour, 24),
        locations: locations(&state).await,
        budget: format!("{:.1}", state.worker.rate_per_second()),
        rules_version: rules.version,
        rule_count: plural(rules.rules, "rule", "rules"),
        file_count: plural(current.files().len(), "file", "files"),
        files: current.files().iter().map(ToString::to_string).collect(),
        loaded_at: humantime::format_rfc3339_seconds(rules.loaded_at).to_string(),
        last_error: rules.last_error,
    };
    page(StatusCode::OK, &template)
}

/// Every location autofollow can reach or could: its PIT, its installation and its state,
/// the work waiting for it and the scopes calls found missing.
async fn locations(state: &AppState) -> Vec<LocationRow> {
    let refused: BTreeSet<String> = state
        .store
        .token_failures()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(l, _)| l.to_string())
        .collect();
    let missing: BTreeMap<String, String> = state
        .access
        .scopes()
        .missing()
        .into_iter()
        .map(|(l, s)| {
            (
                l.to_string(),
                listed(&s.iter().map(|(k, _)| *k).collect::<Vec<_>>()),
            )
        })
        .collect();
    let mut rows: BTreeMap<String, (&'static str, String, &'static str)> = BTreeMap::new();
    let credentials = state.access.locations().await.unwrap_or_default();
    for location in credentials.keys() {
        rows.insert(
            location.to_string(),
            ("Private Integration Token", "active".into(), "good"),
        );
    }
    let installed = match state.access.oauth() {
        Some(_) => state.store.installations().await.unwrap_or_default(),
        None => Vec::new(),
    };
    for i in installed
        .iter()
        .filter(|i| i.tokens.kind == InstallKind::Location)
    {
        let (text, class) = install_state(i);
        rows.insert(i.tokens.id.clone(), ("Marketplace app", text, class));
    }
    let mut out = Vec::new();
    for (id, (reached_by, mut text, mut class)) in rows {
        if refused.contains(&id) {
            (text, class) = (
                "token refused by GoHighLevel: its work waits".to_owned(),
                "bad",
            );
        }
        let waiting = match LocationId::parse(&id) {
            Ok(l) => state
                .store
                .location_queue(&l)
                .await
                .map_or(0, |(due, tasks)| due + tasks),
            Err(_) => 0,
        };
        let missing = missing.get(&id).cloned().unwrap_or_default();
        let waits = state
            .metrics
            .rate_limit_waits
            .get_metric_with_label_values(&[&id]);
        let held_back = waits.map_or(0, |c| c.get());
        out.push(LocationRow {
            id,
            reached_by,
            state: text,
            state_class: class,
            waiting,
            held_back,
            missing,
        });
    }
    out
}

/// An installation's state in words, and its CSS class.
fn install_state(i: &crate::store::Installation) -> (String, &'static str) {
    match i.state {
        InstallState::Active => ("installed".to_owned(), "good"),
        InstallState::Reauthorize => {
            let why = i.problem.clone().unwrap_or_default();
            (format!("must be installed again: {why}"), "bad")
        }
        InstallState::Uninstalled => ("uninstalled".to_owned(), "muted"),
    }
}

/// The events listing's filters, as given (empty: any).
#[derive(Deserialize, Default, Debug)]
pub struct Filters {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub contact: String,
    #[serde(default, rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub since: String,
}

impl Filters {
    /// The store's filter, or what is wrong with one of them.
    fn filter(&self) -> Result<EventFilter, String> {
        let given = |s: &str| Some(s.trim()).filter(|s| !s.is_empty()).map(str::to_owned);
        let status = given(&self.status)
            .map(|s| s.parse::<EventStatus>())
            .transpose()?;
        let contact = given(&self.contact)
            .map(|c| ContactId::parse(&c))
            .transpose();
        let location = given(&self.location)
            .map(|l| LocationId::parse(&l))
            .transpose();
        let since = given(&self.since)
            .map(|s| EventFilter::since_ago(&s))
            .transpose()?;
        Ok(EventFilter {
            status,
            contact: contact.map_err(|e| format!("contact: {e}"))?,
            location: location.map_err(|e| format!("location: {e}"))?,
            event_type: given(&self.event_type),
            since,
            limit: LISTED,
        })
    }
}

#[derive(Template)]
#[template(path = "events.html")]
struct Events {
    chrome: Chrome,
    filter: Filters,
    statuses: Vec<&'static str>,
    types: Vec<&'static str>,
    rows: Vec<EventRow>,
    error: Option<String>,
}

pub async fn events(
    State(state): State<AppState>,
    Extension(v): Extension<Visitor>,
    Query(filter): Query<Filters>,
) -> Response {
    let (rows, error, status) = match filter.filter() {
        Err(e) => (Vec::new(), Some(e), StatusCode::BAD_REQUEST),
        Ok(f) => match state.store.list_events(&f).await {
            Ok(found) => (
                found.iter().map(EventRow::from).collect(),
                None,
                StatusCode::OK,
            ),
            Err(e) => return unavailable(&e),
        },
    };
    let template = Events {
        chrome: chrome(&state, &v, "Events", "events"),
        filter,
        statuses: EventStatus::ALL.iter().map(|s| s.as_str()).collect(),
        types: EventType::ALL.iter().map(|t| t.name()).collect(),
        rows,
        error,
    };
    page(status, &template)
}

#[derive(Template)]
#[template(path = "event.html")]
struct EventPage {
    chrome: Chrome,
    id: i64,
    event_type: String,
    location: String,
    contact: String,
    received: String,
    status: &'static str,
    status_class: &'static str,
    attempts: String,
    last_error: Option<String>,
    can_replay: bool,
    csrf: String,
    decisions: Vec<DecisionView>,
    explanation: Option<ExplainView>,
    explain_error: Option<String>,
    body: String,
}

/// The body as stored, indented when it is JSON.
fn pretty(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| body.to_owned())
}

/// Why the rules in force decide `body` as they do (no lookups); pools deal as the service
/// would now, counting nothing.
pub async fn explain_body(
    state: &AppState,
    body: &[u8],
    previous: &PreviousState,
) -> Result<ExplainView, String> {
    match event::parse_any(body).map_err(|e| e.to_string())? {
        Parsed::Event(e) => {
            let mut dealing = state.worker.dealing(&e).await.map_err(|e| e.to_string())?;
            let x = (state.rules.current()).explain_dealt(&e, previous, &NoResolver, &mut dealing);
            Ok(ExplainView::from(&x))
        }
        other => {
            let kind = other.other_type().unwrap_or("this body");
            Err(format!("{kind} is not decided on by rules"))
        }
    }
}

pub async fn event(
    State(state): State<AppState>,
    Extension(v): Extension<Visitor>,
    Path(id): Path<i64>,
) -> Response {
    let record = match state.store.event(id).await {
        Ok(Some(r)) => r,
        Ok(None) => return super::not_found(&state, &v, &format!("There is no event {id}.")),
        Err(e) => return unavailable(&e),
    };
    let stored = state.store.event_body(id).await;
    let (decisions, stored) = match (state.store.decisions(id).await, stored) {
        (Ok(d), Ok(Some(b))) => (d, b),
        (Ok(_), Ok(None)) => {
            return super::not_found(&state, &v, &format!("There is no event {id}."));
        }
        (Err(e), _) | (_, Err(e)) => return unavailable(&e),
    };
    let (body, received) = (stored.body, when_ms(stored.received_at));
    let explained = explain_body(&state, body.as_bytes(), &PreviousState::default()).await;
    let (explanation, explain_error) = match explained {
        Ok(x) => (Some(x), None),
        Err(e) => (None, Some(e)),
    };
    let template = EventPage {
        chrome: chrome(&state, &v, &format!("Event {id}"), "events"),
        id,
        event_type: record.event_type,
        location: record.location_id,
        contact: record.contact_id,
        received,
        status: record.status.as_str(),
        status_class: status_class(record.status),
        attempts: plural(record.attempts as usize, "attempt", "attempts"),
        last_error: record.last_error,
        can_replay: record.status == EventStatus::Failed,
        csrf: super::csrf(&state, &v).unwrap_or_default(),
        decisions: decisions.iter().map(DecisionView::from).collect(),
        explanation,
        explain_error,
        body: pretty(&body),
    };
    page(StatusCode::OK, &template)
}

#[derive(Template)]
#[template(path = "contact.html")]
struct ContactPage {
    chrome: Chrome,
    contact: String,
    ledger: Vec<LedgerRow>,
    rows: Vec<EventRow>,
}

struct LedgerRow {
    location: String,
    user: String,
    rules: String,
    since: String,
    ended: String,
}

pub async fn contact(
    State(state): State<AppState>,
    Extension(v): Extension<Visitor>,
    Path(id): Path<String>,
) -> Response {
    let Ok(contact) = ContactId::parse(&id) else {
        return super::not_found(&state, &v, "That is not a contact id.");
    };
    let history = match state.store.history(&contact).await {
        Ok(h) => h,
        Err(e) => return unavailable(&e),
    };
    let mut rows: Vec<EventRow> = history.iter().map(|(e, _)| EventRow::from(e)).collect();
    rows.reverse();
    let locations: BTreeSet<String> = rows.iter().map(|r| r.location.clone()).collect();
    let mut ledger = Vec::new();
    for location in locations.iter().filter_map(|l| LocationId::parse(l).ok()) {
        let owned = match state.store.owned(&location, &contact, true).await {
            Ok(o) => o,
            Err(e) => return unavailable(&e),
        };
        ledger.extend(owned.into_iter().map(|o| LedgerRow {
            location: location.to_string(),
            user: o.user.to_string(),
            rules: format!("rule {} (event {})", o.rule, o.event_id),
            since: when_ms(o.added_at),
            ended: match (o.removed_at, o.removed_by) {
                (Some(at), by) => format!(
                    "{} by {}",
                    when_ms(at),
                    by.unwrap_or_else(|| "autofollow".into())
                ),
                (None, _) => "following".to_owned(),
            },
        }));
    }
    let template = ContactPage {
        chrome: chrome(&state, &v, &format!("Contact {contact}"), "events"),
        contact: contact.to_string(),
        ledger,
        rows,
    };
    page(StatusCode::OK, &template)
}

//! The console's forms: logging in and out, dead letters and their replay (after a
//! confirmation), and the rules page with its explain playground. Every form that posts
//! carries the session's CSRF token, checked before anything is done.

use std::time::SystemTime;

use askama::Template;
use axum::Extension;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::Form;
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use serde::Deserialize;

use super::pages::{chrome, explain_body, unavailable};
use super::view::{Chrome, EventRow, ExplainView, page, plural};
use crate::model::plan::{PreviousState, parse_assigned};
use crate::model::record::EventStatus;
use crate::model::task::since_ms;
use crate::rules::{NoResolver, RuleSet};
use crate::store::EventFilter;
use crate::web::session::{COOKIE, SESSION_FOR, Visitor};
use crate::web::state::AppState;
use crate::worker::simulate::{self, Simulation};

/// The most events one replay takes, and a dead-letter listing shows.
const MOST: u32 = 500;

#[derive(Template)]
#[template(path = "login.html")]
struct Login {
    chrome: Chrome,
    next: String,
    error: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct Next {
    #[serde(default)]
    next: String,
}

/// Where to go after logging in: a path of the console, never another site.
fn local(next: &str) -> String {
    let ok = next.starts_with('/') && !next.starts_with("//") && !next.contains('\\');
    if ok { next.to_owned() } else { "/".to_owned() }
}

fn login_page(status: StatusCode, next: &str, error: Option<String>) -> Response {
    let chrome = Chrome {
        title: "Log in".into(),
        ..Chrome::default()
    };
    page(
        status,
        &Login {
            chrome,
            next: local(next),
            error,
        },
    )
}

pub async fn login_form(Query(q): Query<Next>) -> Response {
    login_page(StatusCode::OK, &q.next, None)
}

#[derive(Deserialize)]
pub struct Credentials {
    token: String,
    #[serde(default)]
    next: String,
}

/// Checks the admin token; on success sets the session cookie and goes on to `next`.
pub async fn login(
    State(state): State<AppState>,
    jar: CookieJar,
    Form(given): Form<Credentials>,
) -> Response {
    let Some(keys) = state.console.as_ref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !keys.is_token(&given.token) {
        tracing::info!("console login refused: wrong admin token");
        let error = Some("That is not the admin token.".to_owned());
        return login_page(StatusCode::UNAUTHORIZED, &given.next, error);
    }
    let max_age = cookie::time::Duration::try_from(SESSION_FOR).unwrap_or_default();
    let session = Cookie::build((COOKIE, keys.issue(SystemTime::now())))
        .path("/")
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Strict)
        .max_age(max_age)
        .build();
    (jar.add(session), Redirect::to(&local(&given.next))).into_response()
}

#[derive(Deserialize)]
pub struct Csrf {
    #[serde(default)]
    csrf: Option<String>,
}

pub async fn logout(
    State(state): State<AppState>,
    Extension(v): Extension<Visitor>,
    jar: CookieJar,
    Form(form): Form<Csrf>,
) -> Response {
    if !super::may_change(&state, &v, form.csrf.as_deref()) {
        return super::forbidden();
    }
    let gone = Cookie::build((COOKIE, "")).path("/").build();
    (jar.remove(gone), Redirect::to("/login")).into_response()
}

#[derive(Template)]
#[template(path = "dead.html")]
struct Dead {
    chrome: Chrome,
    csrf: String,
    rows: Vec<EventRow>,
}

#[derive(Deserialize, Default)]
pub struct Done {
    #[serde(default)]
    replayed: Option<u64>,
}

pub async fn dead(
    State(state): State<AppState>,
    Extension(v): Extension<Visitor>,
    Query(done): Query<Done>,
) -> Response {
    let filter = EventFilter {
        status: Some(EventStatus::Failed),
        limit: MOST,
        ..EventFilter::default()
    };
    let rows = match state.store.list_events(&filter).await {
        Ok(found) => found.iter().map(EventRow::from).collect(),
        Err(e) => return unavailable(&e),
    };
    let mut chrome = chrome(&state, &v, "Dead letters", "dead");
    chrome.flash = done.replayed.map(|n| {
        format!(
            "{} queued again; the worker picks them up now.",
            plural(usize::try_from(n).unwrap_or(usize::MAX), "event", "events")
        )
    });
    let csrf = chrome.csrf.clone().unwrap_or_default();
    page(StatusCode::OK, &Dead { chrome, csrf, rows })
}

#[derive(Template)]
#[template(path = "confirm.html")]
struct Confirm {
    chrome: Chrome,
    csrf: String,
    count: String,
    ids: Vec<i64>,
}

#[derive(Deserialize)]
pub struct Replay {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    ids: Vec<i64>,
    #[serde(default)]
    confirm: Option<String>,
}

/// Replays the selected events once confirmed; first shows what would be replayed.
pub async fn replay(
    State(state): State<AppState>,
    Extension(v): Extension<Visitor>,
    Form(form): Form<Replay>,
) -> Response {
    if !super::may_change(&state, &v, form.csrf.as_deref()) {
        return super::forbidden();
    }
    let mut ids = form.ids;
    ids.sort_unstable();
    ids.dedup();
    ids.truncate(MOST as usize);
    if ids.is_empty() {
        return Redirect::to("/dead").into_response();
    }
    if form.confirm.as_deref() != Some("yes") {
        let chrome = chrome(&state, &v, "Replay?", "dead");
        let csrf = chrome.csrf.clone().unwrap_or_default();
        let count = plural(ids.len(), "event", "events");
        return page(
            StatusCode::OK,
            &Confirm {
                chrome,
                csrf,
                count,
                ids,
            },
        );
    }
    match state.store.replay(&ids).await {
        Ok(queued) => {
            state.wake.notify_one();
            tracing::info!(queued, "console: events replayed");
            Redirect::to(&format!("/dead?replayed={queued}")).into_response()
        }
        Err(e) => unavailable(&e),
    }
}

#[derive(Template)]
#[template(path = "rules.html")]
struct Rules {
    chrome: Chrome,
    csrf: String,
    version: String,
    loaded_at: String,
    last_error: Option<String>,
    sample: usize,
    rules: Vec<RuleRow>,
    files: Vec<FileView>,
    reapply: Option<String>,
    body: String,
    event: String,
    previous_tags: String,
    previous_stage: String,
    previous_assigned: String,
    explanation: Option<ExplainView>,
    explain_error: Option<String>,
    candidate: Candidate,
    simulation: Option<Simulation>,
    sim_errors: Vec<String>,
}

struct RuleRow {
    name: String,
    description: Option<String>,
    enabled: bool,
    origin: String,
    matched: usize,
    does: String,
}

struct FileView {
    name: String,
    text: String,
}

/// The playground's inputs.
#[derive(Deserialize, Default)]
pub struct Playground {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    body: String,
    #[serde(default)]
    event: String,
    #[serde(default)]
    previous_tags: String,
    #[serde(default)]
    previous_stage: String,
    #[serde(default)]
    previous_assigned: String,
}

/// The simulation form's inputs: a candidate rule file, the file of the service's it
/// replaces (empty: it is the whole candidate), and how far back to replay.
#[derive(Deserialize, Default)]
pub struct Candidate {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    candidate: String,
    #[serde(default)]
    file: String,
    #[serde(default)]
    since: String,
}

/// What the rules page shows beside the rules: the playground's and the simulation's
/// inputs, and their results when asked for.
#[derive(Default)]
struct Extras {
    playground: Playground,
    explained: Option<Result<ExplainView, String>>,
    candidate: Candidate,
    simulated: Option<Result<Simulation, Vec<String>>>,
}

pub async fn rules(State(state): State<AppState>, Extension(v): Extension<Visitor>) -> Response {
    rules_page(&state, &v, Extras::default()).await
}

/// Replays the stored webhooks of the period through the rules in force and the candidate:
/// the same report as `autofollow simulate`. Nothing is stored or called.
pub async fn simulate(
    State(state): State<AppState>,
    Extension(v): Extension<Visitor>,
    Form(form): Form<Candidate>,
) -> Response {
    if !super::may_change(&state, &v, form.csrf.as_deref()) {
        return super::forbidden();
    }
    let simulated = simulation(&state, &form).await;
    let extras = Extras {
        candidate: form,
        simulated: Some(simulated),
        ..Extras::default()
    };
    rules_page(&state, &v, extras).await
}

async fn simulation(state: &AppState, form: &Candidate) -> Result<Simulation, Vec<String>> {
    let since = Some(form.since.trim())
        .filter(|s| !s.is_empty())
        .unwrap_or("7d");
    let since = since_ms(since).map_err(|e| vec![e])?;
    let loaded = match form.file.trim() {
        "" => RuleSet::from_sources(&[("candidate.yaml", form.candidate.as_str())]),
        name => RuleSet::load_replacing(state.rules.path(), name, &form.candidate),
    };
    let candidate = loaded.map_err(|e| e.errors().map(ToString::to_string).collect::<Vec<_>>())?;
    let current = state.rules.current();
    let store = state.store.as_ref();
    let run = simulate::simulate(store, &current, &candidate, since, None, &NoResolver);
    run.await
        .map_err(|e| vec![format!("the store cannot answer right now: {e}")])
}

/// The playground: a body pasted or a stored event's, explained by the rules in force.
pub async fn explain(
    State(state): State<AppState>,
    Extension(v): Extension<Visitor>,
    Form(form): Form<Playground>,
) -> Response {
    if !super::may_change(&state, &v, form.csrf.as_deref()) {
        return super::forbidden();
    }
    let explained = playground(&state, &form).await;
    let extras = Extras {
        playground: form,
        explained: Some(explained),
        ..Extras::default()
    };
    rules_page(&state, &v, extras).await
}

/// The explanation of the playground's body (or stored event) from the state given.
async fn playground(state: &AppState, form: &Playground) -> Result<ExplainView, String> {
    let tags: Vec<String> = form
        .previous_tags
        .split(',')
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    let assigned = Some(form.previous_assigned.trim()).filter(|a| !a.is_empty());
    let previous = PreviousState {
        tags: (!tags.is_empty()).then_some(tags),
        stage: Some(form.previous_stage.trim().to_owned()).filter(|s| !s.is_empty()),
        assigned: assigned.map(parse_assigned).transpose()?,
    };
    let body = match form.event.trim() {
        "" if form.body.trim().is_empty() => {
            return Err("Paste a body or name a stored event.".into());
        }
        "" => form.body.clone(),
        id => {
            let id: i64 = id
                .parse()
                .map_err(|_| format!("`{id}` is not an event number"))?;
            let stored = state
                .store
                .event_body(id)
                .await
                .map_err(|e| e.to_string())?;
            stored
                .ok_or_else(|| format!("There is no event {id}."))?
                .body
        }
    };
    explain_body(state, body.as_bytes(), &previous).await
}

async fn rules_page(state: &AppState, v: &Visitor, extras: Extras) -> Response {
    let recent = EventFilter {
        limit: MOST,
        ..EventFilter::default()
    };
    let recent = match state.store.list_events(&recent).await {
        Ok(r) => r,
        Err(e) => return unavailable(&e),
    };
    let set = state.rules.current();
    let status = state.rules.status();
    let matched = |name: &str| {
        let decided = recent.iter().filter_map(|e| e.last_decision.as_ref());
        decided
            .filter(|d| d.matched.iter().any(|m| m == name))
            .count()
    };
    let rules = set.rules().iter().map(|r| RuleRow {
        name: r.name.clone(),
        description: r.description.clone(),
        enabled: r.enabled,
        origin: r.origin.to_string(),
        matched: matched(&r.name),
        does: effect(r),
    });
    let files = set.files().iter().map(|f| FileView {
        name: f.to_string(),
        text: std::fs::read_to_string(&**f).unwrap_or_else(|e| format!("(cannot read: {e})")),
    });
    let reapply = state.worker.last_reapply().map(|r| r.lines().join("\n"));
    let chrome = chrome(state, v, "Rules", "rules");
    let (explanation, explain_error) = match extras.explained {
        Some(Ok(x)) => (Some(x), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    let (simulation, sim_errors) = match extras.simulated {
        Some(Ok(sim)) => (Some(sim), Vec::new()),
        Some(Err(errors)) => (None, errors),
        None => (None, Vec::new()),
    };
    let template = Rules {
        csrf: chrome.csrf.clone().unwrap_or_default(),
        chrome,
        version: status.version,
        loaded_at: humantime::format_rfc3339_seconds(status.loaded_at).to_string(),
        last_error: status.last_error,
        sample: recent.len(),
        rules: rules.collect(),
        files: files.collect(),
        reapply,
        body: extras.playground.body,
        event: extras.playground.event,
        previous_tags: extras.playground.previous_tags,
        previous_stage: extras.playground.previous_stage,
        previous_assigned: extras.playground.previous_assigned,
        explanation,
        explain_error,
        candidate: extras.candidate,
        simulation,
        sim_errors,
    };
    page(StatusCode::OK, &template)
}

/// What a rule does, in a few words.
fn effect(rule: &crate::rules::Rule) -> String {
    let names = |refs: &[crate::rules::UserRef]| {
        refs.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = Vec::new();
    if !rule.add.is_empty() {
        parts.push(format!("add {}", names(&rule.add)));
    }
    if !rule.remove.is_empty() {
        parts.push(format!("remove {}", names(&rule.remove)));
    }
    if rule.stop {
        parts.push("stop".to_owned());
    }
    parts.join("; ")
}

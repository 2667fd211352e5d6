//! The operators' web console, at `/` of the admin listener when `AUTOFOLLOW_ADMIN_TOKEN` is
//! set: an overview, events with filters and explanations, contacts with the followers
//! autofollow manages, dead letters to replay, and the rules with an explain playground.
//!
//! Pages are rendered on the server ([`view`], askama templates in `templates/`, escaped by
//! default); nothing is loaded from elsewhere, and the few lines of script (`/console.js`,
//! select-all for dead letters) only enhance pages that work without them. Who may see them: [`super::session`]
//! (a login form setting a signed session cookie, or the bearer token); every form that
//! posts carries the session's CSRF token.

mod actions;
mod pages;
mod view;

use std::time::SystemTime;

use askama::Template;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum_extra::extract::cookie::CookieJar;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::session::{COOKIE, Visitor};
use super::state::AppState;
use view::{Chrome, page};

/// The console's routes: the login form for anyone, the rest behind [`require_login`].
pub fn router(state: AppState) -> Router<AppState> {
    let pages = Router::new()
        .route("/", get(pages::overview))
        .route("/events", get(pages::events))
        .route("/events/{id}", get(pages::event))
        .route("/contacts/{id}", get(pages::contact))
        .route("/dead", get(actions::dead))
        .route("/dead/replay", post(actions::replay))
        .route("/rules", get(actions::rules))
        .route("/rules/explain", post(actions::explain))
        .route("/rules/simulate", post(actions::simulate))
        .route("/logout", post(actions::logout))
        .route_layer(middleware::from_fn_with_state(state, require_login));
    Router::new()
        .route("/login", get(actions::login_form).post(actions::login))
        .route("/console.js", get(script))
        .merge(pages)
        .layer(middleware::from_fn(headers))
}

/// Every console answer: not cached, not framed, no script but its own, no referrer.
async fn headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    let set = [
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ];
    for (name, value) in set {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The console's few lines of script (vendored in the binary; nothing secret).
async fn script() -> Response {
    let js = include_str!("assets/console.js");
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        js,
    )
        .into_response()
}

/// Lets a request through with its [`Visitor`] (a valid session cookie, or the bearer
/// token); else a page asks to log in (303 to the login form) or, for a post, 401.
async fn require_login(
    State(state): State<AppState>,
    jar: CookieJar,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(keys) = state.console.as_ref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let session = jar.get(COOKIE).map(|c| c.value().to_owned());
    let visitor = match (bearer, session) {
        (Some(token), _) if keys.is_token(token) => Some(Visitor::Bearer),
        (_, Some(s)) if keys.valid(&s, SystemTime::now()) => Some(Visitor::Session(s)),
        _ => None,
    };
    match visitor {
        Some(v) => {
            request.extensions_mut().insert(v);
            next.run(request).await
        }
        None if request.method() == Method::GET => {
            let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
            let next = utf8_percent_encode(path, QUERY_VALUE);
            Redirect::to(&format!("/login?next={next}")).into_response()
        }
        None => (StatusCode::UNAUTHORIZED, "log in first").into_response(),
    }
}

/// What a path keeps as it is in a query value: letters, digits and `/-_.~`.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The CSRF token of a session visitor's forms.
fn csrf(state: &AppState, visitor: &Visitor) -> Option<String> {
    match (visitor, state.console.as_ref()) {
        (Visitor::Session(s), Some(keys)) => Some(keys.csrf(s)),
        _ => None,
    }
}

/// Whether a form post may change something (see [`crate::web::session::Keys::may_change`]).
fn may_change(state: &AppState, visitor: &Visitor, csrf: Option<&str>) -> bool {
    state
        .console
        .as_ref()
        .is_some_and(|keys| keys.may_change(visitor, csrf))
}

fn forbidden() -> Response {
    let text = "this form is stale or did not come from the console: reload the page and try again";
    (StatusCode::FORBIDDEN, text).into_response()
}

#[derive(Template)]
#[template(
    source = "{% extends \"base.html\" %}{% block content %}<h1>Not found</h1><p>{{ message }}</p>{% endblock %}",
    ext = "html"
)]
struct NotFound {
    chrome: Chrome,
    message: String,
}

fn not_found(state: &AppState, visitor: &Visitor, message: &str) -> Response {
    let chrome = pages::chrome(state, visitor, "Not found", "");
    let message = message.to_owned();
    page(StatusCode::NOT_FOUND, &NotFound { chrome, message })
}

//! A GoHighLevel stand-in for app mode, behaving as `apps/oauth.json` and the OAuth docs say:
//! authorization codes work once; access tokens expire (after `lifetime`); a refresh token
//! works exactly once and the answer carries the next; a company token gets location tokens
//! (`POST /oauth/locationToken`); the followers endpoints accept only a live access token of
//! the contact's location, else 401.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Query;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

pub const CLIENT_ID: &str = "app-client-id";
pub const CLIENT_SECRET: &str = "app-client-secret-0123456789";
/// The app's id (as the official INSTALL examples carry it): the installed-locations list
/// answers for it only.
pub const APP_ID: &str = "ve9EPM428h8vShlRW1KT";

/// A code the stand-in will exchange: for a location, or for a company with its locations.
#[derive(Clone, Debug)]
pub enum Grant {
    Location(String),
    Company(String, Vec<String>),
}

#[derive(Default)]
pub struct Inner {
    pub codes: HashMap<String, Grant>,
    /// Live refresh tokens, and what they renew.
    pub refresh: HashMap<String, Grant>,
    /// Access tokens: who they are for (a location, or `company:ID`) and until when.
    pub access: HashMap<String, (String, Instant)>,
    pub used_refresh: HashSet<String>,
    pub refreshes: usize,
    pub location_tokens: usize,
    /// (location, contact, method, status) of each followers call.
    pub calls: Vec<(String, String, String, u16)>,
    pub lifetime: Duration,
    pub next: u64,
    /// Requests to `/oauth/token`, and how long each is answered after.
    pub token_requests: usize,
    pub token_delay: Duration,
    /// How long a refresh is answered after the refresh token was used (and replaced).
    pub refresh_answer_delay: Duration,
    /// Locations `GET /oauth/installedLocations` lists per company (the app id it expects is
    /// [`APP_ID`]).
    pub installed: HashMap<String, Vec<String>>,
    /// The app's credentials and id the stand-in accepts ([`CLIENT_ID`], [`CLIENT_SECRET`],
    /// [`APP_ID`] unless changed).
    pub client_id: String,
    pub client_secret: String,
    pub app_id: String,
}

#[derive(Clone)]
pub struct StandIn(pub Arc<Mutex<Inner>>);

impl StandIn {
    pub fn new(lifetime: Duration) -> StandIn {
        StandIn(Arc::new(Mutex::new(Inner {
            lifetime,
            client_id: CLIENT_ID.to_owned(),
            client_secret: CLIENT_SECRET.to_owned(),
            app_id: APP_ID.to_owned(),
            ..Inner::default()
        })))
    }

    /// Serves it; the base URL.
    pub async fn serve(&self) -> String {
        let app = Router::new()
            .route("/oauth/token", post(token))
            .route("/oauth/locationToken", post(location_token))
            .route("/oauth/installedLocations", get(installed_locations))
            .route(
                "/contacts/{contact}/followers",
                post(followers).delete(followers),
            )
            .with_state(self.clone());
        super::process::serve_stand_in(app).await
    }

    /// A code GoHighLevel would send to the callback after the admin chose `grant`.
    pub fn code(&self, grant: Grant) -> String {
        let mut s = self.0.lock().unwrap();
        s.next += 1;
        let code = format!("code-{}", s.next);
        s.codes.insert(code.clone(), grant);
        code
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }
}

fn issue(s: &mut Inner, grant: &Grant, with_refresh: bool) -> Value {
    s.next += 1;
    let n = s.next;
    let (who, user_type, location, company, approved) = match grant {
        Grant::Location(l) => (
            l.clone(),
            "Location",
            Some(l.clone()),
            "Co1".to_owned(),
            vec![],
        ),
        Grant::Company(c, ls) => (
            format!("company:{c}"),
            "Company",
            None,
            c.clone(),
            ls.clone(),
        ),
    };
    let access = format!("at-{n}-{}", rand::random::<u32>());
    s.access
        .insert(access.clone(), (who, Instant::now() + s.lifetime));
    let mut answer = json!({
        "access_token": access, "token_type": "Bearer", "expires_in": s.lifetime.as_secs(),
        "scope": "contacts.write", "userType": user_type, "companyId": company,
        "locationId": location, "approvedLocations": approved, "userId": "u1",
    });
    if with_refresh {
        let refresh = format!("rt-{n}-{}", rand::random::<u32>());
        s.refresh.insert(refresh.clone(), grant.clone());
        answer["refresh_token"] = json!(refresh);
    }
    answer
}

fn refused(message: &str) -> Response {
    let body = json!({"error": "invalid_grant", "error_description": message, "message": message});
    (StatusCode::UNAUTHORIZED, Json(body)).into_response()
}

async fn token(State(st): State<StandIn>, Form(form): Form<HashMap<String, String>>) -> Response {
    let delay = st.with(|s| {
        s.token_requests += 1;
        s.token_delay
    });
    tokio::time::sleep(delay).await;
    // (The lock is not held across the wait below.)
    let (response, after) = answer_token(&mut st.0.lock().unwrap(), &form);
    tokio::time::sleep(after).await;
    response
}

/// The token endpoint's answer, and how long to wait before sending it.
fn answer_token(s: &mut Inner, form: &HashMap<String, String>) -> (Response, Duration) {
    if form.get("client_id") != Some(&s.client_id)
        || form.get("client_secret") != Some(&s.client_secret)
    {
        return (refused("bad client credentials"), Duration::ZERO);
    }
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let Some(grant) = form.get("code").and_then(|c| s.codes.remove(c)) else {
                return (refused("invalid code"), Duration::ZERO);
            };
            (Json(issue(s, &grant, true)).into_response(), Duration::ZERO)
        }
        Some("refresh_token") => {
            let rt = form.get("refresh_token").cloned().unwrap_or_default();
            let Some(grant) = s.refresh.remove(&rt) else {
                return (refused("Invalid refresh token"), Duration::ZERO);
            };
            s.used_refresh.insert(rt);
            s.refreshes += 1;
            let answer = issue(s, &grant, true);
            (Json(answer).into_response(), s.refresh_answer_delay)
        }
        _ => (
            (StatusCode::UNPROCESSABLE_ENTITY, "grant_type").into_response(),
            Duration::ZERO,
        ),
    }
}

fn bearer(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned()
}

fn live(s: &Inner, token: &str) -> Option<String> {
    s.access
        .get(token)
        .filter(|(_, until)| *until > Instant::now())
        .map(|(who, _)| who.clone())
}

async fn location_token(
    State(st): State<StandIn>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut s = st.0.lock().unwrap();
    let company = form.get("companyId").cloned().unwrap_or_default();
    let location = form.get("locationId").cloned().unwrap_or_default();
    if live(&s, &bearer(&headers)) != Some(format!("company:{company}")) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "Invalid JWT"})),
        )
            .into_response();
    }
    s.location_tokens += 1;
    Json(issue(&mut s, &Grant::Location(location), false)).into_response()
}

async fn installed_locations(
    State(st): State<StandIn>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let s = st.0.lock().unwrap();
    let company = query.get("companyId").cloned().unwrap_or_default();
    if live(&s, &bearer(&headers)) != Some(format!("company:{company}")) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "Invalid JWT"})),
        )
            .into_response();
    }
    if query.get("appId") != Some(&s.app_id) {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"message": "appId"})),
        )
            .into_response();
    }
    let listed = s.installed.get(&company).cloned().unwrap_or_default();
    let locations: Vec<Value> = listed
        .iter()
        .map(|l| json!({"_id": l, "name": l, "isInstalled": true}))
        .collect();
    Json(json!({"locations": locations, "count": locations.len()})).into_response()
}

async fn followers(
    State(st): State<StandIn>,
    method: axum::http::Method,
    Path(contact): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut s = st.0.lock().unwrap();
    let who = live(&s, &bearer(&headers));
    let status = match &who {
        Some(w) if !w.starts_with("company:") => {
            if method == axum::http::Method::POST {
                201
            } else {
                200
            }
        }
        _ => 401,
    };
    let location = who.unwrap_or_default();
    s.calls
        .push((location, contact, method.to_string(), status));
    let code = StatusCode::from_u16(status).unwrap();
    if status == 401 {
        return (
            code,
            Json(json!({"statusCode": 401, "message": "Invalid JWT"})),
        )
            .into_response();
    }
    (
        code,
        Json(json!({"followers": body["followers"], "followersAdded": body["followers"]})),
    )
        .into_response()
}

//! A GoHighLevel stand-in for a location's directory, as `users.json`, `locations.json` and
//! `opportunities.json` specify it: `GET /locations/{id}` (its `companyId`),
//! `GET /users/search` (`companyId` required and the token's company's only; `locationId`,
//! `ids`, `skip`, `limit`; deleted users listed with `deleted: true`),
//! `GET /opportunities/pipelines` and `GET /locations/{id}/customFields`. A token names its
//! location (`tok-L0` is `L0`'s) and carries scopes; a call without its scope, or for another
//! location, gets 401 as GoHighLevel answers it. Every call is counted by path.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

/// A user: id, name, email, company, the locations they can use, deleted or not.
#[derive(Clone)]
pub struct User {
    pub id: &'static str,
    pub name: &'static str,
    pub company: &'static str,
    pub locations: &'static [&'static str],
    pub deleted: bool,
}

#[derive(Default)]
pub struct Directory {
    /// Location → its company.
    pub companies: HashMap<String, String>,
    pub users: Vec<User>,
    /// Location → `{"pipelines": […]}`.
    pub pipelines: HashMap<String, Value>,
    /// Location → its custom fields.
    pub fields: HashMap<String, Vec<Value>>,
    /// Token → the scopes it was granted.
    pub scopes: HashMap<String, BTreeSet<String>>,
    /// Calls by path.
    pub calls: HashMap<String, u32>,
}

pub type Shared = Arc<Mutex<Directory>>;

pub fn router(directory: Shared) -> axum::Router {
    axum::Router::new()
        .route("/locations/{id}", get(location))
        .route("/locations/{id}/customFields", get(custom_fields))
        .route("/users/search", get(users))
        .route("/opportunities/pipelines", get(pipelines))
        .with_state(directory)
}

fn refused(message: &str) -> Response {
    let body = json!({"statusCode": 401, "message": message});
    (StatusCode::UNAUTHORIZED, Json(body)).into_response()
}

/// The location the call's token is for, if it has `scope`; counts the call.
fn admit(
    dir: &Shared,
    headers: &HeaderMap,
    uri: &Uri,
    scope: &str,
) -> Result<String, Box<Response>> {
    let mut dir = dir.lock().unwrap();
    *dir.calls.entry(uri.path().to_owned()).or_default() += 1;
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    let token = auth.and_then(|a| a.strip_prefix("Bearer ")).unwrap_or("");
    let Some(scopes) = dir.scopes.get(token) else {
        return Err(Box::new(refused("Invalid JWT")));
    };
    if !scopes.contains(scope) {
        return Err(Box::new(refused(
            "The token is not authorized for this scope.",
        )));
    }
    Ok(token.trim_start_matches("tok-").to_owned())
}

async fn location(
    State(dir): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let own = match admit(&dir, &headers, &uri, "locations.readonly") {
        Ok(own) => own,
        Err(refusal) => return *refusal,
    };
    if own != id {
        return refused("The token does not have access to this location");
    }
    let company = dir.lock().unwrap().companies.get(&id).cloned();
    Json(json!({"location": {"id": id, "companyId": company}})).into_response()
}

async fn custom_fields(
    State(dir): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let own = match admit(&dir, &headers, &uri, "locations/customFields.readonly") {
        Ok(own) => own,
        Err(refusal) => return *refusal,
    };
    if own != id {
        return refused("The token does not have access to this location");
    }
    let fields = dir.lock().unwrap().fields.get(&id).cloned();
    Json(json!({"customFields": fields.unwrap_or_default()})).into_response()
}

async fn pipelines(
    State(dir): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let own = match admit(&dir, &headers, &uri, "opportunities.readonly") {
        Ok(own) => own,
        Err(refusal) => return *refusal,
    };
    if query.get("locationId") != Some(&own) {
        return refused("The token does not have access to this location");
    }
    let found = dir.lock().unwrap().pipelines.get(&own).cloned();
    Json(found.unwrap_or_else(|| json!({"pipelines": []}))).into_response()
}

async fn users(
    State(dir): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let own = match admit(&dir, &headers, &uri, "users.readonly") {
        Ok(own) => own,
        Err(refusal) => return *refusal,
    };
    let dir = dir.lock().unwrap();
    let company = dir.companies.get(&own).cloned().unwrap_or_default();
    if query.get("companyId") != Some(&company) {
        let body =
            json!({"statusCode": 400, "message": "companyId is required and must be the token's"});
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    let ids: Option<Vec<&str>> = query.get("ids").map(|i| i.split(',').collect());
    let location = query.get("locationId");
    let matching: Vec<Value> = dir
        .users
        .iter()
        .filter(|u| u.company == company)
        .filter(|u| location.is_none_or(|l| u.locations.contains(&l.as_str())))
        .filter(|u| ids.as_ref().is_none_or(|ids| ids.contains(&u.id)))
        .map(|u| {
            let email = format!("{}@example.com", u.name.to_lowercase().replace(' ', "."));
            json!({"id": u.id, "name": u.name, "email": email, "deleted": u.deleted,
                   "roles": {"type": "account", "locationIds": u.locations}})
        })
        .collect();
    let number = |key: &str, default: usize| {
        let value = query.get(key).and_then(|v| v.parse().ok());
        value.unwrap_or(default)
    };
    let (skip, limit) = (number("skip", 0), number("limit", 25));
    let page: Vec<Value> = matching.iter().skip(skip).take(limit).cloned().collect();
    Json(json!({"users": page, "count": matching.len()})).into_response()
}

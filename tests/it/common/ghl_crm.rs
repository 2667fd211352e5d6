//! A GoHighLevel stand-in with contacts: `POST /contacts/search` (`searchAfter` pages of 100,
//! oldest first, as `contacts.json` specifies), `GET /opportunities/search` (none), and the
//! followers endpoints keeping each contact's followers. It enforces a rate limit per
//! location (the token names the location: `tok-L0` is `L0`'s) over a sliding window, and
//! answers 429 beyond it, counting them.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

#[derive(Default)]
pub struct Crm {
    /// Per location, its contacts in search order.
    pub contacts: HashMap<String, Vec<Value>>,
    pub followers: HashMap<String, BTreeSet<String>>,
    /// Per contact, the followers calls it received: (method, users).
    pub calls: HashMap<String, Vec<(String, Vec<String>)>>,
    /// When each contact's first `POST` arrived.
    pub first_post: HashMap<String, Instant>,
    pub searches: u32,
    pub too_many: u32,
    /// The rate limit: at most `limit` requests per location in any `per`.
    pub limit: usize,
    pub per: Duration,
    window: HashMap<String, VecDeque<Instant>>,
}

pub type Shared = Arc<Mutex<Crm>>;

impl Crm {
    pub fn new(limit: usize, per: Duration) -> Shared {
        Arc::new(Mutex::new(Crm {
            limit,
            per,
            ..Crm::default()
        }))
    }

    /// Adds `n` contacts to `location` (ids `{location}-c{i}`), each with the tags and
    /// followers (added by hand) `make(i)` gives.
    pub fn add_contacts(
        &mut self,
        location: &str,
        n: usize,
        make: impl Fn(usize) -> (Vec<&'static str>, Vec<&'static str>),
    ) {
        let list = self.contacts.entry(location.to_owned()).or_default();
        for i in 0..n {
            let (tags, hand) = make(i);
            let id = format!("{location}-c{i:05}");
            let added = 1_700_000_000_000_i64 + i as i64 * 1000;
            let at = std::time::UNIX_EPOCH + Duration::from_millis(added as u64);
            list.push(
                json!({"id": id, "locationId": location, "tags": tags, "source": "import",
                "dateAdded": humantime::format_rfc3339_millis(at).to_string(),
                "followers": hand, "searchAfter": [added, id]}),
            );
            let followers = hand.iter().map(|u| (*u).to_owned()).collect();
            self.followers.insert(id, followers);
        }
    }

    /// Takes a request from the location's window; false when the limit is reached.
    fn admit(&mut self, location: &str) -> bool {
        let (limit, per) = (self.limit, self.per);
        let window = self.window.entry(location.to_owned()).or_default();
        let now = Instant::now();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= per)
        {
            window.pop_front();
        }
        if window.len() >= limit {
            self.too_many += 1;
            return false;
        }
        window.push_back(now);
        true
    }
}

pub fn router(crm: Shared) -> axum::Router {
    axum::Router::new()
        .route("/contacts/search", post(search))
        .route("/opportunities/search", get(opportunities))
        .route("/contacts/{id}/followers", post(add).delete(remove))
        .with_state(crm)
}

fn location(headers: &HeaderMap) -> String {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    let token = auth.and_then(|a| a.strip_prefix("Bearer tok-"));
    token.unwrap_or("unknown").to_owned()
}

fn too_many() -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        Json(json!({"message": "Too many requests"})),
    )
        .into_response()
}

async fn search(
    State(crm): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut crm = crm.lock().unwrap();
    if !crm.admit(&location(&headers)) {
        return too_many();
    }
    crm.searches += 1;
    let location = body["locationId"].as_str().unwrap_or_default();
    let limit = body["pageLimit"].as_u64().unwrap_or(20) as usize;
    let all = crm.contacts.get(location).cloned().unwrap_or_default();
    let start = match body.get("searchAfter") {
        Some(after) => all
            .iter()
            .position(|c| &c["searchAfter"] == after)
            .map_or(all.len(), |i| i + 1),
        None => 0,
    };
    let page: Vec<Value> = all.iter().skip(start).take(limit).cloned().collect();
    Json(json!({"contacts": page, "total": all.len()})).into_response()
}

async fn opportunities(State(crm): State<Shared>, headers: HeaderMap) -> Response {
    let mut crm = crm.lock().unwrap();
    if !crm.admit(&location(&headers)) {
        return too_many();
    }
    crm.searches += 1;
    Json(json!({"opportunities": [], "meta": {"total": 0, "startAfter": null, "startAfterId": null}})).into_response()
}

async fn add(
    state: State<Shared>,
    headers: HeaderMap,
    id: Path<String>,
    body: Json<Value>,
) -> Response {
    change(state, headers, id, body, true)
}

async fn remove(
    state: State<Shared>,
    headers: HeaderMap,
    id: Path<String>,
    body: Json<Value>,
) -> Response {
    change(state, headers, id, body, false)
}

fn change(
    State(crm): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<Value>,
    add: bool,
) -> Response {
    let mut crm = crm.lock().unwrap();
    if !crm.admit(&location(&headers)) {
        return too_many();
    }
    let users: Vec<String> = body["followers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u.as_str().map(str::to_owned))
        .collect();
    let method = if add { "POST" } else { "DELETE" };
    crm.calls
        .entry(id.clone())
        .or_default()
        .push((method.to_owned(), users.clone()));
    if add {
        crm.first_post
            .entry(id.clone())
            .or_insert_with(Instant::now);
    }
    let set = crm.followers.entry(id).or_default();
    let changed: Vec<&String> = users
        .iter()
        .filter(|u| {
            if add {
                set.insert((*u).clone())
            } else {
                set.remove(*u)
            }
        })
        .collect();
    let key = if add {
        "followersAdded"
    } else {
        "followersRemoved"
    };
    let answer = json!({"followers": set.iter().collect::<Vec<_>>(), key: changed});
    (
        if add {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(answer),
    )
        .into_response()
}

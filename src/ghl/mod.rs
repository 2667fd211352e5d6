//! The GoHighLevel API client: followers, pipelines and users, with every failure classified
//! as retryable or permanent in one place. Request paths are built only from checked id types
//! ([`crate::ids`]), so nothing a webhook sent can change which endpoint is called; redirects
//! are not followed (the API never redirects, so one is an error).

pub mod budget;
pub mod fields;
pub mod oauth;
pub mod pipelines;
pub mod search;
pub mod users;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::model::ids::{ContactId, LocationId, UserId};
use budget::{Budget, Observed};
use pipelines::Pipelines;

/// The API version header GoHighLevel requires on every call.
pub const API_VERSION: &str = "2021-07-28";

/// What GoHighLevel answered a followers call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Followers {
    pub status: u16,
    /// The contact's whole follower list, when sent.
    pub followers: Option<Vec<UserId>>,
    /// `followersAdded` or `followersRemoved`: who the call changed, when sent.
    pub changed: Option<Vec<UserId>>,
}

/// A list of user ids under `key`, when the body has one.
fn user_list(body: &Value, key: &str) -> Option<Vec<UserId>> {
    let list = body.get(key)?.as_array()?;
    let ids = list.iter().filter_map(Value::as_str);
    Some(ids.filter_map(|u| UserId::parse(u).ok()).collect())
}

/// Why a call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Worth trying again later: 429, 408, 5xx, timeouts, connection errors.
    #[error("{reason}")]
    Retryable {
        /// GoHighLevel's status, when it answered (429, 408, 5xx).
        status: Option<u16>,
        reason: String,
        /// `Retry-After` when GoHighLevel sent one.
        retry_after: Option<Duration>,
    },
    /// Trying again gives the same answer: other 4xx, unreadable success bodies.
    #[error("{reason}")]
    Permanent { status: Option<u16>, reason: String },
    /// Not sent: the location's rate-limit budget is spent for this long.
    #[error("waiting {wait:?} for the location's rate limit")]
    Deferred { wait: Duration },
}

/// What autofollow reads of a location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocationInfo {
    pub company_id: String,
    /// Its time zone, when it names one this build knows (an IANA name).
    pub time_zone: Option<chrono_tz::Tz>,
}

#[derive(Debug, Clone)]
pub struct GhlClient {
    http: reqwest::Client,
    base: String,
    budget: Arc<dyn Budget>,
    metrics: Arc<Metrics>,
}

impl GhlClient {
    /// Every call goes through `budget`, the per-location budget, and is counted in `metrics`.
    pub fn new(
        base: &str,
        timeout: Duration,
        budget: Arc<dyn Budget>,
        metrics: Arc<Metrics>,
    ) -> Result<GhlClient, reqwest::Error> {
        let http = http_client(timeout)?;
        Ok(GhlClient {
            http,
            base: base.trim_end_matches('/').to_owned(),
            budget,
            metrics,
        })
    }

    /// Requests per second the budget allows a location, sustained.
    pub fn per_second(&self) -> f64 {
        self.budget.per_second()
    }

    /// `POST /contacts/{id}/followers` (add) or `DELETE` (remove): GoHighLevel's answer.
    pub async fn followers(
        &self,
        token: &SecretString,
        location: &LocationId,
        add: bool,
        contact: &ContactId,
        users: &[UserId],
    ) -> Result<Followers, CallError> {
        let method = if add { Method::POST } else { Method::DELETE };
        let path = followers_path(contact);
        let (status, body) = self
            .send(
                token,
                location,
                method,
                ("followers", &path),
                &[],
                Some(json!({ "followers": users })),
            )
            .await?;
        let changed = if add {
            "followersAdded"
        } else {
            "followersRemoved"
        };
        Ok(Followers {
            status,
            followers: user_list(&body, "followers"),
            changed: user_list(&body, changed),
        })
    }

    /// The contact's followers as GoHighLevel has them now (`GET /contacts/{id}`, its
    /// `contact.followers`); `None` when the answer does not list them.
    pub async fn contact_followers(
        &self,
        token: &SecretString,
        location: &LocationId,
        contact: &ContactId,
    ) -> Result<Option<Vec<UserId>>, CallError> {
        let path = format!("/contacts/{contact}");
        let (_, body) = self
            .send(token, location, Method::GET, ("contacts", &path), &[], None)
            .await?;
        Ok(body.get("contact").and_then(|c| user_list(c, "followers")))
    }

    /// `GET /opportunities/pipelines?locationId=…`.
    pub async fn pipelines(
        &self,
        token: &SecretString,
        location: &LocationId,
    ) -> Result<Pipelines, CallError> {
        let (_, body) = self
            .send(
                token,
                location,
                Method::GET,
                ("pipelines", "/opportunities/pipelines"),
                &[("locationId", location.as_str())],
                None,
            )
            .await?;
        Pipelines::from_response(body.to_string().as_bytes()).map_err(|e| CallError::Permanent {
            status: None,
            reason: format!("unreadable pipelines response: {e}"),
        })
    }

    /// The location (`GET /locations/{id}`): its company, which the users search needs, and
    /// its time zone, whose days pools' away dates are.
    pub async fn location(
        &self,
        token: &SecretString,
        location: &LocationId,
    ) -> Result<LocationInfo, CallError> {
        let path = format!("/locations/{location}");
        let (_, body) = self
            .send(
                token,
                location,
                Method::GET,
                ("locations", &path),
                &[],
                None,
            )
            .await?;
        let text = |pointer: &str| body.pointer(pointer).and_then(Value::as_str);
        let company_id = text("/location/companyId").map(str::to_owned);
        let company_id = company_id.ok_or_else(|| CallError::Permanent {
            status: None,
            reason: "GET /locations/{id} answered without location.companyId".into(),
        })?;
        let time_zone = text("/location/timezone").and_then(|z| z.trim().parse().ok());
        Ok(LocationInfo {
            company_id,
            time_zone,
        })
    }

    /// One call: a request from the location's budget, the answer's rate-limit headers
    /// observed, the answer classified.
    async fn send(
        &self,
        token: &SecretString,
        location: &LocationId,
        method: Method,
        (endpoint, path): (&str, &str),
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<(u16, Value), CallError> {
        if let Err(wait) = self.budget.acquire(location).await {
            self.metrics
                .rate_limit_waits
                .with_label_values(&[location.as_str()])
                .inc();
            return Err(CallError::Deferred { wait });
        }
        let started = std::time::Instant::now();
        let method_name = method.as_str().to_owned();
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token.expose_secret())
            .header("Version", API_VERSION)
            .header("Accept", "application/json");
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await;
        let status = answer.as_ref().ok().map(|r| r.status().as_u16());
        self.metrics
            .ghl_call(&method_name, endpoint, status, started.elapsed());
        let response = answer.map_err(|e| CallError::Retryable {
            status: None,
            reason: if e.is_timeout() {
                "GoHighLevel did not answer in time".to_owned()
            } else {
                format!("cannot reach GoHighLevel: {}", without_url(&e))
            },
            retry_after: None,
        })?;
        self.budget.observe(location, &observed(&response)).await;
        classify(response).await
    }
}

/// The HTTP client every call to GoHighLevel goes through: `timeout` per call, no redirect
/// followed (the API never sends one).
fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("autofollow/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// What an answer's status and `X-RateLimit-*` / `Retry-After` headers say of the budget.
fn observed(response: &reqwest::Response) -> Observed {
    let number = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Observed {
        too_many: response.status() == StatusCode::TOO_MANY_REQUESTS,
        retry_after: number("retry-after").map(Duration::from_secs),
        remaining: number("x-ratelimit-remaining"),
        interval: number("x-ratelimit-interval-milliseconds").map(Duration::from_millis),
        daily_remaining: number("x-ratelimit-daily-remaining"),
    }
}

/// The answer's body, or the failure it says: retryable (429, 408, 5xx, with `Retry-After`)
/// or permanent (other 4xx, and a redirect, which the API never sends).
async fn classify(response: reqwest::Response) -> Result<(u16, Value), CallError> {
    let status = response.status();
    let retry_after = observed(&response).retry_after;
    let text = response.text().await.unwrap_or_default();
    if status.is_redirection() {
        return Err(CallError::Permanent {
            status: Some(status.as_u16()),
            reason: format!(
                "GoHighLevel answered {} (a redirect, which its API never sends; not followed)",
                status.as_u16()
            ),
        });
    }
    if status.is_success() {
        return Ok((
            status.as_u16(),
            serde_json::from_str(&text).unwrap_or(Value::Null),
        ));
    }
    let reason = format!(
        "GoHighLevel answered {}: {}",
        status.as_u16(),
        error_message(&text)
    );
    if status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
    {
        Err(CallError::Retryable {
            status: Some(status.as_u16()),
            reason,
            retry_after,
        })
    } else {
        Err(CallError::Permanent {
            status: Some(status.as_u16()),
            reason,
        })
    }
}

/// The `message` of a GoHighLevel error body (a string, or a list of strings for 422).
fn error_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let message = parsed.as_ref().and_then(|v| v.get("message"));
    let text = match message {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join("; "),
        _ => body.chars().take(200).collect(),
    };
    if text.is_empty() {
        "(no message)".to_owned()
    } else {
        text
    }
}

/// A reqwest error's text without its URL (which may carry query parameters).
fn without_url(e: &reqwest::Error) -> String {
    let mut e = e.to_string();
    if let Some(i) = e.find(" for url (") {
        e.truncate(i);
    }
    e
}

/// The path of a contact's followers, as requested and as recorded in decisions. A
/// [`ContactId`] is letters, digits, `_` and `-` only: it needs no encoding and cannot leave
/// its path segment.
pub fn followers_path(contact: &ContactId) -> String {
    format!("/contacts/{contact}/followers")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_come_from_the_body() {
        assert_eq!(
            error_message(r#"{"statusCode":400,"message":"Bad"}"#),
            "Bad"
        );
        assert_eq!(
            error_message(r#"{"statusCode":422,"message":["a","b"],"error":"x"}"#),
            "a; b"
        );
        assert_eq!(error_message("oops"), "oops");
        assert_eq!(error_message(""), "(no message)");
    }

    #[test]
    fn followers_paths_are_built_from_checked_ids() {
        let contact = ContactId::parse("nmFmQEsNgz6AVpgLVUJ0").ok();
        assert_eq!(
            contact.as_ref().map(followers_path).as_deref(),
            Some("/contacts/nmFmQEsNgz6AVpgLVUJ0/followers")
        );
    }
}

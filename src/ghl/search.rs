//! Walking a location's records page by page: contacts through `POST /contacts/search`
//! (`searchAfter` pagination, oldest first), opportunities through
//! `GET /opportunities/search` (`startAfter` / `startAfterId`). Each record comes back as
//! GoHighLevel sent it; the cursor says where the next page starts.

use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Value, json};

use super::{CallError, GhlClient};
use crate::model::ids::LocationId;

/// Records per page (the most both searches allow).
pub const PAGE: usize = 100;

/// One page of a search.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub records: Vec<Value>,
    /// Where the next page starts (JSON, kept in the store); `None` after the last page.
    pub next: Option<String>,
    /// How many records the search has in all, when GoHighLevel said.
    pub total: Option<i64>,
}

impl GhlClient {
    /// A page of the location's contacts, oldest first, from `cursor` (`None`: the first);
    /// with `since` (unix ms), only those added since.
    pub async fn search_contacts(
        &self,
        token: &SecretString,
        location: &LocationId,
        since: Option<i64>,
        cursor: Option<&str>,
    ) -> Result<Page, CallError> {
        let mut body = json!({
            "locationId": location,
            "pageLimit": PAGE,
            "sort": [{"field": "dateAdded", "direction": "asc"}],
        });
        if let Some(since) = since {
            let from = iso(since);
            body["filters"] =
                json!([{"field": "dateAdded", "operator": "range", "value": {"gte": from}}]);
        }
        if let Some(after) = cursor.and_then(|c| serde_json::from_str::<Value>(c).ok()) {
            body["searchAfter"] = after;
        }
        let endpoint = ("contacts_search", "/contacts/search");
        let (_, answer) = self
            .send(token, location, Method::POST, endpoint, &[], Some(body))
            .await?;
        let records = list(&answer, "contacts")?;
        let next = match records.len() {
            PAGE => match records.last().and_then(|r| r.get("searchAfter")) {
                Some(after) => Some(after.to_string()),
                None => return Err(unreadable("a full page of contacts without searchAfter")),
            },
            _ => None,
        };
        let total = answer.get("total").and_then(Value::as_i64);
        Ok(Page {
            records,
            next,
            total,
        })
    }

    /// A page of the location's opportunities from `cursor` (`None`: the first).
    pub async fn search_opportunities(
        &self,
        token: &SecretString,
        location: &LocationId,
        cursor: Option<&str>,
    ) -> Result<Page, CallError> {
        let limit = PAGE.to_string();
        let after: Option<(String, String)> = cursor.and_then(|c| serde_json::from_str(c).ok());
        let mut query = vec![
            ("location_id", location.as_str()),
            ("limit", limit.as_str()),
        ];
        if let Some((at, id)) = &after {
            query.extend([("startAfter", at.as_str()), ("startAfterId", id.as_str())]);
        }
        let endpoint = ("opportunities_search", "/opportunities/search");
        let (_, answer) = self
            .send(token, location, Method::GET, endpoint, &query, None)
            .await?;
        let records = list(&answer, "opportunities")?;
        let meta = answer.get("meta");
        let field = |key: &str| meta.and_then(|m| m.get(key)).filter(|v| !v.is_null());
        let start_after =
            field("startAfter").map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned));
        let start_after_id = field("startAfterId").and_then(Value::as_str);
        let next = match (records.len(), start_after, start_after_id) {
            (PAGE, Some(at), Some(id)) => Some(json!([at, id]).to_string()),
            (PAGE, ..) => {
                return Err(unreadable(
                    "a full page of opportunities without meta.startAfterId",
                ));
            }
            _ => None,
        };
        let total = field("total").and_then(Value::as_i64);
        Ok(Page {
            records,
            next,
            total,
        })
    }
}

fn list(answer: &Value, key: &str) -> Result<Vec<Value>, CallError> {
    match answer.get(key) {
        Some(Value::Array(records)) => Ok(records.clone()),
        _ => Err(unreadable(&format!("a search answer without `{key}`"))),
    }
}

fn unreadable(what: &str) -> CallError {
    CallError::Permanent {
        status: None,
        reason: format!("GoHighLevel sent {what}"),
    }
}

/// Unix ms as an RFC 3339 time.
fn iso(ms: i64) -> String {
    let at =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

//! GoHighLevel's users, through `GET /users/search`: the id of a user by email (workflow
//! webhooks name the assignee by email), every user of a location, and which of some ids
//! are users of a company (what `check --online` confirms). Paged: 100 a page, at most 20.

use reqwest::Method;
use secrecy::SecretString;
use serde_json::Value;

use super::{CallError, GhlClient};
use crate::model::ids::{LocationId, UserId};

/// Users asked for per page of a users search, and the most pages read for one search.
const USER_PAGE: u64 = 100;
const USER_PAGES: u64 = 20;

/// A user as the users search describes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub name: String,
    pub email: String,
    pub deleted: bool,
}

impl User {
    fn from_value(user: &Value) -> Option<User> {
        let text = |key: &str| user.get(key).and_then(Value::as_str).unwrap_or_default();
        let name = match text("name") {
            "" => format!("{} {}", text("firstName"), text("lastName"))
                .trim()
                .to_owned(),
            name => name.to_owned(),
        };
        Some(User {
            id: user.get("id").and_then(Value::as_str)?.to_owned(),
            name,
            email: text("email").to_owned(),
            deleted: user.get("deleted").and_then(Value::as_bool) == Some(true),
        })
    }
}

/// The id of a users-search result, when it is a user (not deleted) with this email.
fn user_with_email(user: &Value, email: &str) -> Option<UserId> {
    let user = User::from_value(user)?;
    let same = user.email.trim().eq_ignore_ascii_case(email.trim());
    (same && !user.deleted).then(|| UserId::parse(&user.id).ok())?
}

impl GhlClient {
    /// The id of the location's user with this email, if any.
    pub async fn user_by_email(
        &self,
        token: &SecretString,
        company_id: &str,
        location: &LocationId,
        email: &str,
    ) -> Result<Option<UserId>, CallError> {
        let query = [
            ("companyId", company_id),
            ("locationId", location.as_str()),
            ("query", email),
        ];
        let found = |u: &Value| user_with_email(u, email).is_some();
        let users = self.search_users(token, location, &query, found).await?;
        Ok(users.iter().find_map(|u| user_with_email(u, email)))
    }

    /// Every user of the location (as many as [`USER_PAGES`] pages hold).
    pub async fn location_users(
        &self,
        token: &SecretString,
        company_id: &str,
        location: &LocationId,
    ) -> Result<Vec<User>, CallError> {
        let query = [("companyId", company_id), ("locationId", location.as_str())];
        let users = self
            .search_users(token, location, &query, |_| false)
            .await?;
        Ok(users.iter().filter_map(User::from_value).collect())
    }

    /// Which of `ids` are users of the company (deleted ones as the search reports them);
    /// the call is made with the location's token and budget.
    pub async fn company_users(
        &self,
        token: &SecretString,
        company_id: &str,
        location: &LocationId,
        ids: &[UserId],
    ) -> Result<Vec<User>, CallError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(USER_PAGE as usize) {
            let ids: Vec<&str> = chunk.iter().map(UserId::as_str).collect();
            let ids = ids.join(",");
            let query = [("companyId", company_id), ("ids", ids.as_str())];
            let users = self
                .search_users(token, location, &query, |_| false)
                .await?;
            out.extend(users.iter().filter_map(User::from_value));
        }
        Ok(out)
    }

    /// `GET /users/search` with `query`, page by page, until a page holds a user `enough`
    /// accepts or the results end (at most [`USER_PAGES`] pages): the users read.
    async fn search_users(
        &self,
        token: &SecretString,
        location: &LocationId,
        query: &[(&str, &str)],
        enough: impl Fn(&Value) -> bool,
    ) -> Result<Vec<Value>, CallError> {
        let limit = USER_PAGE.to_string();
        let mut read = Vec::new();
        for page in 0..USER_PAGES {
            let skip = (page * USER_PAGE).to_string();
            let mut query = query.to_vec();
            query.extend([("skip", skip.as_str()), ("limit", limit.as_str())]);
            let endpoint = ("users_search", "/users/search");
            let (_, body) = self
                .send(token, location, Method::GET, endpoint, &query, None)
                .await?;
            let users = body.get("users").and_then(Value::as_array);
            let users = users.cloned().unwrap_or_default();
            let (found, short) = (users.iter().any(&enough), users.len() < USER_PAGE as usize);
            read.extend(users);
            let count = body.get("count").and_then(Value::as_u64);
            if found || short || count.is_some_and(|c| c <= (page + 1) * USER_PAGE) {
                break;
            }
        }
        Ok(read)
    }
}

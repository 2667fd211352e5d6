//! GoHighLevel's OAuth 2.0 endpoints (`apps/oauth.json`): the code exchange, the refresh
//! (a refresh token works once: the answer carries the next one), a location's token from a
//! company token, and the locations a company installed the app into.

use std::time::Duration;

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{API_VERSION, CallError, classify, without_url};

/// The app's credentials, from the Marketplace app page.
#[derive(Clone)]
pub struct AppCredentials {
    pub client_id: String,
    pub client_secret: SecretString,
}

impl std::fmt::Debug for AppCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppCredentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .finish()
    }
}

/// What `POST /oauth/token` and `POST /oauth/locationToken` answer (the fields autofollow
/// uses). A location token got from a company token has no refresh token.
#[derive(Deserialize)]
pub struct TokenAnswer {
    pub access_token: SecretString,
    #[serde(default)]
    pub refresh_token: Option<SecretString>,
    #[serde(default)]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub scope: Option<String>,
    /// `Location` or `Company`.
    #[serde(default, rename = "userType")]
    pub user_type: Option<String>,
    #[serde(default, rename = "locationId")]
    pub location_id: Option<String>,
    #[serde(default, rename = "companyId")]
    pub company_id: Option<String>,
    /// For a company (bulk) install: the locations it may get tokens for.
    #[serde(default, rename = "approvedLocations")]
    pub approved_locations: Vec<String>,
}

impl std::fmt::Debug for TokenAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAnswer")
            .field("user_type", &self.user_type)
            .field("location_id", &self.location_id)
            .field("company_id", &self.company_id)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// Why an OAuth call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    /// GoHighLevel said no (400, 401, 403, 422): a used or revoked refresh token, a bad
    /// code. Asking again gives the same answer; a person must install the app again.
    #[error("{0}")]
    Refused(String),
    /// Worth trying again: 429, 5xx, timeouts, connection errors.
    #[error("{0}")]
    Unavailable(String),
}

/// The OAuth endpoints, on the API base URL.
#[derive(Debug, Clone)]
pub struct OAuthClient {
    http: reqwest::Client,
    base: String,
    app: AppCredentials,
}

impl OAuthClient {
    pub fn new(
        base: &str,
        timeout: Duration,
        app: AppCredentials,
    ) -> Result<OAuthClient, reqwest::Error> {
        Ok(OAuthClient {
            http: super::http_client(timeout)?,
            base: base.trim_end_matches('/').to_owned(),
            app,
        })
    }

    pub fn client_id(&self) -> &str {
        &self.app.client_id
    }

    /// Exchanges an authorization code (`grant_type=authorization_code`).
    pub async fn exchange(
        &self,
        code: &str,
        redirect_uri: &str,
    ) -> Result<TokenAnswer, OAuthError> {
        self.token(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
        ])
        .await
    }

    /// Uses a refresh token (once: the answer carries the next one).
    pub async fn refresh(&self, refresh_token: &SecretString) -> Result<TokenAnswer, OAuthError> {
        self.token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
        ])
        .await
    }

    /// `POST /oauth/locationToken`: a location's token from its company's.
    pub async fn location_token(
        &self,
        company_token: &SecretString,
        company_id: &str,
        location_id: &str,
    ) -> Result<TokenAnswer, OAuthError> {
        let request = self
            .http
            .post(format!("{}/oauth/locationToken", self.base))
            .bearer_auth(company_token.expose_secret())
            .header("Version", API_VERSION)
            .header("Accept", "application/json")
            .form(&[("companyId", company_id), ("locationId", location_id)]);
        answer(request.send().await).await
    }

    /// `GET /oauth/installedLocations`: the locations of `company_id` the app `app_id` is
    /// installed in, every page (100 a page, at most [`INSTALLED_PAGES`]).
    pub async fn installed_locations(
        &self,
        company_token: &SecretString,
        company_id: &str,
        app_id: &str,
    ) -> Result<Vec<String>, OAuthError> {
        let mut found = Vec::new();
        for page in 0..INSTALLED_PAGES {
            let skip = (page * 100).to_string();
            let query = [
                ("companyId", company_id),
                ("appId", app_id),
                ("isInstalled", "true"),
                ("skip", skip.as_str()),
                ("limit", "100"),
            ];
            let request = self
                .http
                .get(format!("{}/oauth/installedLocations", self.base))
                .bearer_auth(company_token.expose_secret())
                .header("Version", API_VERSION)
                .header("Accept", "application/json")
                .query(&query);
            let body = match classify(sent(request.send().await)?).await {
                Ok((_, body)) => body,
                Err(e) => return Err(OAuthError::Unavailable(e.to_string())),
            };
            let locations = body.get("locations").and_then(serde_json::Value::as_array);
            let locations = locations.map(Vec::as_slice).unwrap_or_default();
            let ids = locations.iter().filter_map(|l| l.get("_id")?.as_str());
            found.extend(ids.map(str::to_owned));
            if locations.len() < 100 {
                break;
            }
        }
        Ok(found)
    }

    async fn token(&self, grant: &[(&str, &str)]) -> Result<TokenAnswer, OAuthError> {
        let mut form = vec![
            ("client_id", self.app.client_id.as_str()),
            ("client_secret", self.app.client_secret.expose_secret()),
        ];
        form.extend_from_slice(grant);
        let request = self
            .http
            .post(format!("{}/oauth/token", self.base))
            .header("Accept", "application/json")
            .form(&form);
        answer(request.send().await).await
    }
}

/// Pages of installed locations read at most (10,000 locations).
const INSTALLED_PAGES: usize = 100;

/// The response, or GoHighLevel could not be reached.
fn sent(
    response: Result<reqwest::Response, reqwest::Error>,
) -> Result<reqwest::Response, OAuthError> {
    response.map_err(|e| {
        OAuthError::Unavailable(format!("cannot reach GoHighLevel: {}", without_url(&e)))
    })
}

/// A token answer, or why not. The body of an error never carries a token.
async fn answer(
    response: Result<reqwest::Response, reqwest::Error>,
) -> Result<TokenAnswer, OAuthError> {
    let response = sent(response)?;
    let status = response.status();
    match classify(response).await {
        Ok((_, body)) => serde_json::from_value(body).map_err(|e| {
            OAuthError::Unavailable(format!("GoHighLevel's token answer is unreadable: {e}"))
        }),
        Err(CallError::Permanent { reason, .. }) if status != StatusCode::NOT_FOUND => {
            Err(OAuthError::Refused(reason))
        }
        Err(e) => Err(OAuthError::Unavailable(e.to_string())),
    }
}

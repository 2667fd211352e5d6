//! App mode's install flow, on the public listener: `GET /oauth/install` sends the agency or
//! location admin to GoHighLevel's authorization page with a `state` that only this service
//! can make (an HMAC under the client secret, valid 10 minutes) and that is bound to the
//! browser (a cookie carries its nonce); `GET /oauth/callback` checks it, exchanges the code
//! and stores the tokens, sealed.
//!
//! A callback without `state` is an install started from the Marketplace (GoHighLevel's own
//! install button sends none): it is accepted, as the code can only be exchanged with the
//! client secret. A `state` that is present must be valid and match the cookie.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::Sha256;

use super::state::AppState;
use crate::ghl::oauth::OAuthError;

const COOKIE: &str = "autofollow_oauth_state";
const STATE_FOR: Duration = Duration::from_secs(600);

#[derive(Deserialize)]
pub(super) struct InstallQuery {
    /// `true`: the white-label authorization host (`marketplace.leadconnectorhq.com`).
    #[serde(default)]
    whitelabel: bool,
}

#[derive(Deserialize)]
pub(super) struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

fn not_app_mode() -> Response {
    let text = "autofollow is not running as a GoHighLevel app (set GHL_CLIENT_ID, GHL_CLIENT_SECRET, AUTOFOLLOW_PUBLIC_URL and AUTOFOLLOW_ENCRYPTION_KEY)";
    (StatusCode::NOT_FOUND, text).into_response()
}

/// `GET /oauth/install`: to GoHighLevel's authorization page.
pub(super) async fn install(
    State(state): State<AppState>,
    Query(q): Query<InstallQuery>,
) -> Response {
    let Some(install) = state.install.as_deref() else {
        return not_app_mode();
    };
    let nonce: [u8; 16] = rand::random();
    let value = sign_state(&install.state_key, &nonce, SystemTime::now() + STATE_FOR);
    let base = match q.whitelabel {
        true => install.authorize_url.replace(
            "marketplace.gohighlevel.com",
            "marketplace.leadconnectorhq.com",
        ),
        false => install.authorize_url.clone(),
    };
    let mut url = match reqwest::Url::parse(&base) {
        Ok(u) => u,
        Err(_) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "GHL_AUTHORIZE_URL is not a URL",
            )
                .into_response();
        }
    };
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", &install.redirect_uri)
        .append_pair("client_id", install.oauth.client().client_id())
        .append_pair("scope", &install.scopes)
        .append_pair("state", &value)
        .append_pair("loginWindowOpenMode", "self");
    let secure = if install.secure_cookie {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={}; Path=/oauth; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
        B64.encode(nonce),
        STATE_FOR.as_secs()
    );
    let mut response = Redirect::to(url.as_str()).into_response();
    if let Ok(v) = cookie.parse() {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// `GET /oauth/callback`: checks `state`, exchanges the code, stores the installation.
pub(super) async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let Some(install) = state.install.as_deref() else {
        return not_app_mode();
    };
    if let Some(error) = q.error {
        return page(
            StatusCode::BAD_REQUEST,
            &format!(
                "GoHighLevel did not authorize the app: {}",
                error.chars().take(100).collect::<String>()
            ),
        );
    }
    if let Some(value) = &q.state
        && let Err(why) = check_state(&install.state_key, value, &headers)
    {
        tracing::warn!(why, "OAuth callback refused: bad state");
        return page(
            StatusCode::BAD_REQUEST,
            &format!("This install link is not valid ({why}). Start again from /oauth/install."),
        );
    }
    let Some(code) = q.code.filter(|c| !c.is_empty() && c.len() <= 512) else {
        return page(
            StatusCode::BAD_REQUEST,
            "The callback carries no authorization code.",
        );
    };
    let answer = match install
        .oauth
        .client()
        .exchange(&code, &install.redirect_uri)
        .await
    {
        Ok(a) => a,
        Err(OAuthError::Refused(reason)) => {
            return page(
                StatusCode::BAD_REQUEST,
                &format!("GoHighLevel refused the code: {reason}"),
            );
        }
        Err(OAuthError::Unavailable(reason)) => {
            return page(
                StatusCode::BAD_GATEWAY,
                &format!("GoHighLevel did not answer: {reason}. Try again."),
            );
        }
    };
    match install.oauth.install(&answer).await {
        Ok(id) => {
            let locations = answer.approved_locations.len();
            tracing::info!(installation = %id, user_type = ?answer.user_type, locations, "installed");
            state.wake.notify_one();
            page(StatusCode::OK, &format!("autofollow is connected to {id}."))
        }
        Err(e) => page(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("The installation could not be stored: {e}"),
        ),
    }
}

/// A small page for the person in the browser; `text` is escaped.
fn page(status: StatusCode, text: &str) -> Response {
    let escaped = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    let html = format!(
        "<!doctype html><html lang=en><meta charset=utf-8><title>autofollow</title><body><h1>autofollow</h1><p>{escaped}</p></body></html>"
    );
    (status, Html(html)).into_response()
}

fn mac(key: &SecretString) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    Hmac::<Sha256>::new_from_slice(key.expose_secret().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

/// `BASE64(nonce ‖ expiry) . BASE64(HMAC)`.
fn sign_state(key: &SecretString, nonce: &[u8; 16], until: SystemTime) -> String {
    let secs = until
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut data = nonce.to_vec();
    data.extend(secs.to_be_bytes());
    let mut m = mac(key);
    m.update(&data);
    format!(
        "{}.{}",
        B64.encode(&data),
        B64.encode(m.finalize().into_bytes())
    )
}

/// Valid when made by this service, not expired, and bound to this browser's cookie.
fn check_state(key: &SecretString, value: &str, headers: &HeaderMap) -> Result<(), &'static str> {
    let (data, tag) = value.split_once('.').ok_or("malformed")?;
    let data = B64.decode(data).map_err(|_| "malformed")?;
    let tag = B64.decode(tag).map_err(|_| "malformed")?;
    if data.len() != 24 {
        return Err("malformed");
    }
    let mut m = mac(key);
    m.update(&data);
    m.verify_slice(&tag)
        .map_err(|_| "not made by this service")?;
    let secs = u64::from_be_bytes(data[16..].try_into().map_err(|_| "malformed")?);
    if UNIX_EPOCH + Duration::from_secs(secs) < SystemTime::now() {
        return Err("expired");
    }
    let nonce = B64.encode(&data[..16]);
    let cookie_matches = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .any(|(name, v)| name == COOKIE && v == nonce);
    if cookie_matches {
        Ok(())
    } else {
        Err("started in another browser")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretString {
        SecretString::from("client-secret-0123456789".to_owned())
    }

    fn cookie(nonce: &[u8; 16]) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = format!("other=1; {COOKIE}={}", B64.encode(nonce));
        h.insert(header::COOKIE, v.parse().unwrap());
        h
    }

    #[test]
    fn a_state_is_valid_only_signed_unexpired_and_with_its_cookie() {
        let nonce = [7u8; 16];
        let later = SystemTime::now() + STATE_FOR;
        let value = sign_state(&key(), &nonce, later);
        assert_eq!(check_state(&key(), &value, &cookie(&nonce)), Ok(()));
        assert_eq!(
            check_state(&key(), &value, &HeaderMap::new()),
            Err("started in another browser")
        );
        assert_eq!(
            check_state(&key(), &value, &cookie(&[8u8; 16])),
            Err("started in another browser")
        );
        let other = SecretString::from("another-secret-0123456789".to_owned());
        assert_eq!(
            check_state(&other, &value, &cookie(&nonce)),
            Err("not made by this service")
        );
        let old = sign_state(&key(), &nonce, SystemTime::now() - Duration::from_secs(1));
        assert_eq!(check_state(&key(), &old, &cookie(&nonce)), Err("expired"));
        assert_eq!(
            check_state(&key(), "nonsense", &cookie(&nonce)),
            Err("malformed")
        );
    }
}

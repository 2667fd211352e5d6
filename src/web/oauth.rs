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
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::Sha256;

use super::state::{AppState, Install};
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

/// `GET /oauth/install`: to GoHighLevel's authorization page, with a fresh `state` and its
/// nonce in a cookie.
pub(super) async fn install(
    State(state): State<AppState>,
    Query(q): Query<InstallQuery>,
    jar: CookieJar,
) -> Response {
    let Some(install) = state.install.as_deref() else {
        return not_app_mode();
    };
    let nonce: [u8; 16] = rand::random();
    let value = sign_state(&install.state_key, &nonce, SystemTime::now() + STATE_FOR);
    let mut url = match q.whitelabel {
        true => install.whitelabel_authorize_url.clone(),
        false => install.authorize_url.clone(),
    };
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", &install.redirect_uri)
        .append_pair("client_id", install.oauth.client().client_id())
        .append_pair("scope", &install.scopes)
        .append_pair("state", &value)
        .append_pair("loginWindowOpenMode", "self");
    let cookie = Cookie::build((COOKIE, B64.encode(nonce)))
        .path("/oauth")
        .max_age(cookie::time::Duration::try_from(STATE_FOR).unwrap_or_default())
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(install.secure_cookie);
    (jar.add(cookie), Redirect::to(url.as_str())).into_response()
}

/// `GET /oauth/callback`: checks `state`, exchanges the code, stores the installation.
pub(super) async fn callback(
    State(state): State<AppState>,
    jar: CookieJar,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let Some(install) = state.install.as_deref() else {
        return not_app_mode();
    };
    if let Some(error) = q.error {
        let error: String = error.chars().take(100).collect();
        let text = format!("GoHighLevel did not authorize the app: {error}");
        return page(StatusCode::BAD_REQUEST, &text);
    }
    if let Some(value) = &q.state {
        let nonce = jar.get(COOKIE).map(Cookie::value);
        if let Err(why) = check_state(&install.state_key, value, nonce) {
            tracing::warn!(why, "OAuth callback refused: bad state");
            let text =
                format!("This install link is not valid ({why}). Start again from /oauth/install.");
            return page(StatusCode::BAD_REQUEST, &text);
        }
    }
    let Some(code) = q.code.filter(|c| !c.is_empty() && c.len() <= 512) else {
        let text = "The callback carries no authorization code.";
        return page(StatusCode::BAD_REQUEST, text);
    };
    // Anyone can call this; each call costs a call to GoHighLevel: a few at a time.
    let Ok(_turn) = install.exchanges.try_acquire() else {
        return page(
            StatusCode::TOO_MANY_REQUESTS,
            "Busy; try again in a moment.",
        );
    };
    match exchange(install, &code).await {
        Ok(id) => {
            state.wake.notify_one();
            page(StatusCode::OK, &format!("autofollow is connected to {id}."))
        }
        Err((status, text)) => page(status, &text),
    }
}

/// Exchanges the code and stores the installation; its id, or what to tell the person.
async fn exchange(install: &Install, code: &str) -> Result<String, (StatusCode, String)> {
    let answer = match install
        .oauth
        .client()
        .exchange(code, &install.redirect_uri)
        .await
    {
        Ok(a) => a,
        Err(OAuthError::Refused(reason)) => {
            let text = format!("GoHighLevel refused the code: {reason}");
            return Err((StatusCode::BAD_REQUEST, text));
        }
        Err(OAuthError::Unavailable(reason)) => {
            let text = format!("GoHighLevel did not answer: {reason}. Try again.");
            return Err((StatusCode::BAD_GATEWAY, text));
        }
    };
    let id = install.oauth.install(&answer).await.map_err(|e| {
        let text = format!("The installation could not be stored: {e}");
        (StatusCode::INTERNAL_SERVER_ERROR, text)
    })?;
    let locations = answer.approved_locations.len();
    tracing::info!(installation = %id, user_type = ?answer.user_type, locations, "installed");
    Ok(id)
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

/// Valid when made by this service, not expired, and bound to this browser's cookie (its
/// nonce, `cookie`).
fn check_state(key: &SecretString, value: &str, cookie: Option<&str>) -> Result<(), &'static str> {
    let (data, tag) = value.split_once('.').ok_or("malformed")?;
    let data = B64.decode(data).map_err(|_| "malformed")?;
    let tag = B64.decode(tag).map_err(|_| "malformed")?;
    let (nonce, until) = data.split_at_checked(16).ok_or("malformed")?;
    let until: [u8; 8] = until.try_into().map_err(|_| "malformed")?;
    let mut m = mac(key);
    m.update(&data);
    m.verify_slice(&tag)
        .map_err(|_| "not made by this service")?;
    if UNIX_EPOCH + Duration::from_secs(u64::from_be_bytes(until)) < SystemTime::now() {
        return Err("expired");
    }
    match cookie == Some(B64.encode(nonce).as_str()) {
        true => Ok(()),
        false => Err("started in another browser"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretString {
        SecretString::from("client-secret-0123456789".to_owned())
    }

    fn cookie(nonce: &[u8; 16]) -> Option<String> {
        Some(B64.encode(nonce))
    }

    #[test]
    fn a_state_is_valid_only_signed_unexpired_and_with_its_cookie() {
        let nonce = [7u8; 16];
        let later = SystemTime::now() + STATE_FOR;
        let value = sign_state(&key(), &nonce, later);
        assert_eq!(
            check_state(&key(), &value, cookie(&nonce).as_deref()),
            Ok(())
        );
        assert_eq!(
            check_state(&key(), &value, None),
            Err("started in another browser")
        );
        assert_eq!(
            check_state(&key(), &value, cookie(&[8u8; 16]).as_deref()),
            Err("started in another browser")
        );
        let other = SecretString::from("another-secret-0123456789".to_owned());
        assert_eq!(
            check_state(&other, &value, cookie(&nonce).as_deref()),
            Err("not made by this service")
        );
        let old = sign_state(&key(), &nonce, SystemTime::now() - Duration::from_secs(1));
        assert_eq!(
            check_state(&key(), &old, cookie(&nonce).as_deref()),
            Err("expired")
        );
        assert_eq!(
            check_state(&key(), "nonsense", cookie(&nonce).as_deref()),
            Err("malformed")
        );
    }
}

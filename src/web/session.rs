//! Who may use the web console ([`super::console`]): whoever holds the admin token, given once in the login form (then
//! a session cookie) or with every request as `Authorization: Bearer`.
//!
//! The cookie holds no state on the server: an expiry and a random nonce, signed (HMAC-SHA256)
//! with a key derived from the admin token. Every replica accepts it, it ends at its expiry,
//! and a new admin token ends every session. It is `Secure`, `HttpOnly` and
//! `SameSite=Strict`. Each session has a CSRF token (a MAC of its cookie) that every form
//! changing something carries and every such request must present.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use super::auth::same_secret;

/// The session cookie's name.
pub const COOKIE: &str = "af_console";
/// How long a login lasts.
pub const SESSION_FOR: Duration = Duration::from_secs(8 * 3600);

/// Signs and checks sessions and their CSRF tokens.
#[derive(Clone)]
pub struct Keys {
    key: [u8; 32],
    token: std::sync::Arc<SecretString>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}

/// Who is asking: a browser with a session (its cookie value), or a client with the bearer
/// token (which a browser never sends by itself, so it needs no CSRF token).
#[derive(Clone, Debug)]
pub enum Visitor {
    Session(String),
    Bearer,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn hmac(key: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Keys {
    /// Keys derived from the admin token.
    pub fn new(token: std::sync::Arc<SecretString>) -> Keys {
        let mut mac = hmac(token.expose_secret().as_bytes());
        mac.update(b"autofollow console session v1");
        Keys {
            key: mac.finalize().into_bytes().into(),
            token,
        }
    }

    fn mac(&self, what: &str) -> String {
        let mut mac = hmac(&self.key);
        mac.update(what.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// Whether `given` is the admin token.
    pub fn is_token(&self, given: &str) -> bool {
        same_secret(given.trim(), self.token.expose_secret())
    }

    /// A new session's cookie value, valid for [`SESSION_FOR`] from `now`.
    pub fn issue(&self, now: SystemTime) -> String {
        let expires = unix(now + SESSION_FOR);
        let nonce: [u8; 16] = rand::random();
        let body = format!("{expires}.{}", hex(&nonce));
        let mac = self.mac(&body);
        format!("{body}.{mac}")
    }

    /// Whether a cookie value is a session of ours that has not expired at `now`.
    pub fn valid(&self, value: &str, now: SystemTime) -> bool {
        let Some((body, mac)) = value.rsplit_once('.') else {
            return false;
        };
        let expires = body.split('.').next().and_then(|e| e.parse::<u64>().ok());
        let fresh = expires.is_some_and(|e| e > unix(now));
        fresh && same_secret(mac, &self.mac(body))
    }

    /// The CSRF token of a session.
    pub fn csrf(&self, session: &str) -> String {
        self.mac(&format!("csrf:{session}"))
    }

    /// Whether a request that changes something may: a bearer client, or a session whose
    /// CSRF token came with the request.
    pub fn may_change(&self, visitor: &Visitor, csrf: Option<&str>) -> bool {
        match visitor {
            Visitor::Bearer => true,
            Visitor::Session(session) => {
                csrf.is_some_and(|given| same_secret(given, &self.csrf(session)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn keys(token: &str) -> Keys {
        Keys::new(Arc::new(SecretString::from(token)))
    }

    #[test]
    fn a_session_is_valid_until_it_expires_and_only_under_the_same_token() {
        let now = SystemTime::now();
        let k = keys("admin-token-of-16-chars");
        let session = k.issue(now);
        assert!(k.valid(&session, now));
        assert!(!k.valid(&session, now + SESSION_FOR + Duration::from_secs(1)));
        assert!(!keys("another-admin-token-x").valid(&session, now));
        let forged = session.replacen(|c: char| c.is_ascii_digit(), "9", 1);
        assert!(!k.valid(&forged, now), "a changed expiry breaks the MAC");
        assert!(!k.valid("", now) && !k.valid("1.2", now));
    }

    #[test]
    fn a_change_needs_the_sessions_csrf_token_or_the_bearer_token() {
        let k = keys("admin-token-of-16-chars");
        let session = k.issue(SystemTime::now());
        let visitor = Visitor::Session(session.clone());
        assert!(k.may_change(&visitor, Some(&k.csrf(&session))));
        assert!(!k.may_change(&visitor, None));
        assert!(!k.may_change(&visitor, Some("0000")));
        let other = k.issue(SystemTime::now());
        assert!(!k.may_change(&visitor, Some(&k.csrf(&other))));
        assert!(k.may_change(&Visitor::Bearer, None));
    }
}

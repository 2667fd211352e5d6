//! Webhook authentication. A request body is only stored once one of these checks passed;
//! [`Verified`] is the proof the intake code must hold to store it.
//!
//! - App webhooks: `X-GHL-Signature`, a base64 Ed25519 signature of the raw body, under one of
//!   the configured public keys (GoHighLevel's published key by default).
//! - Shared secret (`AUTOFOLLOW_WEBHOOK_SECRET`, one or several comma-separated so a secret
//!   can be rotated without a gap): the header `X-Webhook-Secret`, the query parameter
//!   `secret` (workflow webhooks only, whose standard action cannot set headers), or a
//!   Standard Webhooks signature (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
//!
//! Checking is in two steps so that an unauthenticated request costs little:
//! [`Verifier::app_headers`] / [`Verifier::shared_headers`] look at the headers only (a
//! secret is settled there, before any body byte is read; an oversized or malformed signature
//! header is refused there, without hashing), and [`HeadersChecked::body`] checks a signature
//! over the body in one pass. The work for any request is bounded by a small constant (the
//! caps below, and the number of configured keys and secrets) plus one pass over the body.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::pkcs8::DecodePublicKey;
use ed25519_dalek::{Signature, VerifyingKey};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// GoHighLevel's published Ed25519 webhook key (shared/GHL-FACTS.md).
pub const GHL_PUBLIC_KEY_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAi2HR1srL4o18O8BRa7gVJY7G7bupbN3H9AwJrHCDiOg=\n-----END PUBLIC KEY-----\n";

/// How far a Standard Webhooks timestamp may be from now.
pub const TIMESTAMP_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// The most `v1,…` entries a `webhook-signature` header may carry (a handful covers every key
/// rotation); more is refused without hashing.
pub const MAX_SIGNATURES: usize = 8;
/// The longest `webhook-signature` header accepted (8 entries of 48 characters fit well).
pub const MAX_SIGNATURE_HEADER: usize = 1024;
/// The longest `webhook-id`, `X-GHL-Signature` or presented secret accepted.
pub const MAX_CREDENTIAL: usize = 256;
/// The fewest characters a plain webhook secret (or the admin token) may have.
pub const MIN_SECRET_CHARS: usize = 16;
/// The fewest key bytes a `whsec_` secret may decode to.
pub const MIN_WHSEC_BYTES: usize = 24;
/// Default of `AUTOFOLLOW_WEBHOOK_MAX_AGE`: GoHighLevel re-sends a webhook for about 70
/// minutes after the first try; three hours leave room for a late first delivery and clock
/// error (a replay inside the window is a duplicate anyway: see [`dedup_window`]).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3 * 3600);
/// `webhookId`s are remembered at least this long.
pub const MIN_DEDUP_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// How long delivery ids must be remembered so that no body within its age window can be
/// accepted twice: a body dated up to `max_age` ahead of or behind the clock is accepted, so
/// an id must outlive twice that, with an hour to spare, and never less than a day.
pub fn dedup_window(max_age: Duration) -> Duration {
    (max_age * 2 + Duration::from_secs(3600)).max(MIN_DEDUP_WINDOW)
}

/// Proof that a request passed authentication.
#[derive(Debug, Clone, Copy)]
pub struct Verified(());

/// Why a request is not authenticated. The messages are fixed texts: they never echo what
/// the request sent, so they are safe to log and to count by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing authentication: {0}")]
    Missing(&'static str),
    #[error("authentication failed: {0}")]
    Invalid(&'static str),
}

impl AuthError {
    /// The fixed reason, for counting rejections.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing(r) | AuthError::Invalid(r) => r,
        }
    }
}

/// A configuration problem with keys or secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

/// One configured shared secret: the digest a presented secret is compared with, and the
/// Standard Webhooks HMAC key.
struct SharedSecret {
    digest: [u8; 32],
    hmac_key: SecretBox<Vec<u8>>,
}

/// Checks webhook authentication; built once from configuration.
pub struct Verifier {
    keys: Vec<VerifyingKey>,
    secrets: Vec<SharedSecret>,
    max_age: Duration,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .field("secrets", &self.secrets.len())
            .field("max_age", &self.max_age)
            .finish()
    }
}

/// Every PEM public key in `text` (one or more `BEGIN PUBLIC KEY` blocks).
pub fn parse_public_keys(text: &str) -> Result<Vec<VerifyingKey>, KeyError> {
    const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
    const END: &str = "-----END PUBLIC KEY-----";
    let mut keys = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            return Err(KeyError("a PEM block has no END PUBLIC KEY line".into()));
        };
        let block = &rest[start..start + len + END.len()];
        let key = VerifyingKey::from_public_key_pem(block)
            .map_err(|e| KeyError(format!("not an Ed25519 public key: {e}")))?;
        keys.push(key);
        rest = &rest[start + len + END.len()..];
    }
    if keys.is_empty() {
        return Err(KeyError(
            "no PEM public key (-----BEGIN PUBLIC KEY-----) found".into(),
        ));
    }
    Ok(keys)
}

/// The secrets of a comma-separated list (empty entries skipped), each long enough: a
/// `whsec_<base64>` secret's key is the decoded bytes (the Standard Webhooks convention), any
/// other secret's key is its bytes. Errors name the entry by position, never its text.
pub fn parse_secrets(list: &str) -> Result<Vec<SecretString>, KeyError> {
    let mut secrets = Vec::new();
    for (n, entry) in list.split(',').map(str::trim).enumerate() {
        if entry.is_empty() {
            continue;
        }
        hmac_key(entry).map_err(|e| KeyError(format!("secret {}: {}", n + 1, e.0)))?;
        secrets.push(SecretString::from(entry.to_owned()));
    }
    if secrets.is_empty() {
        return Err(KeyError("no secret given".into()));
    }
    Ok(secrets)
}

/// The HMAC key of one secret, refused when too short to resist guessing.
fn hmac_key(secret: &str) -> Result<Vec<u8>, KeyError> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => {
            let bytes = BASE64
                .decode(b64)
                .map_err(|_| KeyError("a whsec_ secret must be base64 after the prefix".into()))?;
            if bytes.len() < MIN_WHSEC_BYTES {
                return Err(KeyError(format!(
                    "a whsec_ secret must hold at least {MIN_WHSEC_BYTES} bytes of key ({} given); generate one with `openssl rand -base64 32`",
                    bytes.len()
                )));
            }
            Ok(bytes)
        }
        None => {
            check_token_length(secret)?;
            Ok(secret.as_bytes().to_vec())
        }
    }
}

/// A plain secret or token must have at least [`MIN_SECRET_CHARS`] characters.
pub fn check_token_length(token: &str) -> Result<(), KeyError> {
    let chars = token.chars().count();
    if chars < MIN_SECRET_CHARS {
        return Err(KeyError(format!(
            "must be at least {MIN_SECRET_CHARS} characters ({chars} given); generate one with `openssl rand -hex 32`"
        )));
    }
    Ok(())
}

/// What the headers left to check against the body.
#[derive(Debug)]
enum Pending {
    /// A shared secret matched: nothing.
    Nothing,
    Ed25519(Signature),
    /// Standard Webhooks: the signed prefix `{id}.{timestamp}.` and the decoded signatures.
    Standard {
        prefix: String,
        signatures: Vec<[u8; 32]>,
    },
}

/// Headers that passed their checks; [`HeadersChecked::body`] finishes authentication.
#[derive(Debug)]
pub struct HeadersChecked<'v> {
    verifier: &'v Verifier,
    pending: Pending,
    /// The Standard Webhooks `webhook-id`, a delivery id to deduplicate on.
    delivery_id: Option<String>,
}

impl HeadersChecked<'_> {
    /// Whether authentication is settled without the body (a shared secret matched): the
    /// body may then be read as an authenticated one.
    pub fn needs_body(&self) -> bool {
        !matches!(self.pending, Pending::Nothing)
    }

    /// The `webhook-id` of a Standard Webhooks signature, when that is how it was signed.
    pub fn delivery_id(&self) -> Option<&str> {
        self.delivery_id.as_deref()
    }

    /// Checks the pending signature over `body`, in one pass over it per configured key.
    pub fn body(self, body: &[u8]) -> Result<Verified, AuthError> {
        match self.pending {
            Pending::Nothing => Ok(Verified(())),
            Pending::Ed25519(signature) => self.verifier.ed25519(&signature, body),
            Pending::Standard { prefix, signatures } => {
                self.verifier.standard(&prefix, &signatures, body)
            }
        }
    }
}

impl Verifier {
    /// A verifier for these public keys and shared secrets (see [`parse_secrets`]), with
    /// [`DEFAULT_MAX_AGE`] for app bodies.
    pub fn new(keys: Vec<VerifyingKey>, secrets: Vec<SecretString>) -> Result<Verifier, KeyError> {
        let secrets = secrets
            .iter()
            .map(|s| {
                let s = s.expose_secret();
                Ok(SharedSecret {
                    digest: Sha256::digest(s.as_bytes()).into(),
                    hmac_key: SecretBox::new(Box::new(hmac_key(s)?)),
                })
            })
            .collect::<Result<Vec<_>, KeyError>>()?;
        Ok(Verifier {
            keys,
            secrets,
            max_age: DEFAULT_MAX_AGE,
        })
    }

    /// How old (or how far ahead of the clock) an app body's `timestamp` may be.
    pub fn with_max_age(mut self, max_age: Duration) -> Verifier {
        self.max_age = max_age;
        self
    }

    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// How long delivery ids are remembered: [`dedup_window`] of the max age.
    pub fn dedup_window(&self) -> Duration {
        dedup_window(self.max_age)
    }

    /// App webhooks: a valid `X-GHL-Signature`, or shared-secret authentication.
    pub fn app(&self, headers: &HeaderMap, body: &[u8]) -> Result<Verified, AuthError> {
        self.app_headers(headers)?.body(body)
    }

    /// Shared-secret authentication: header, `secret` query parameter (when the endpoint
    /// allows it) or a Standard Webhooks signature.
    pub fn shared(
        &self,
        headers: &HeaderMap,
        query_secret: Option<&str>,
        body: &[u8],
    ) -> Result<Verified, AuthError> {
        self.shared_headers(headers, query_secret)?.body(body)
    }

    /// The header half of [`Verifier::app`].
    pub fn app_headers(&self, headers: &HeaderMap) -> Result<HeadersChecked<'_>, AuthError> {
        if let Some(signature) = header(headers, "x-ghl-signature") {
            let signature = decode_ed25519(signature)?;
            return Ok(self.checked(Pending::Ed25519(signature), None));
        }
        if !self.secrets.is_empty() {
            return self.shared_headers(headers, None);
        }
        Err(AuthError::Missing("X-GHL-Signature header"))
    }

    /// The header half of [`Verifier::shared`]: a presented secret is settled here.
    pub fn shared_headers(
        &self,
        headers: &HeaderMap,
        query_secret: Option<&str>,
    ) -> Result<HeadersChecked<'_>, AuthError> {
        if self.secrets.is_empty() {
            return Err(AuthError::Invalid(
                "shared-secret authentication is not configured (AUTOFOLLOW_WEBHOOK_SECRET)",
            ));
        }
        let presented =
            header(headers, "x-webhook-secret").or(query_secret.filter(|s| !s.trim().is_empty()));
        if let Some(given) = presented {
            return if self.is_secret(given) {
                Ok(self.checked(Pending::Nothing, None))
            } else {
                Err(AuthError::Invalid("wrong webhook secret"))
            };
        }
        if let Some(signatures) = header(headers, "webhook-signature") {
            return self.standard_headers(headers, signatures);
        }
        Err(AuthError::Missing(
            "X-Webhook-Secret header, secret query parameter or Standard Webhooks signature",
        ))
    }

    fn checked(&self, pending: Pending, delivery_id: Option<String>) -> HeadersChecked<'_> {
        HeadersChecked {
            verifier: self,
            pending,
            delivery_id,
        }
    }

    /// Whether `given` is one of the secrets: one digest of it, compared with every secret's
    /// in constant time (neither which secret nor any length is revealed).
    fn is_secret(&self, given: &str) -> bool {
        if given.len() > MAX_CREDENTIAL {
            return false;
        }
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        self.secrets
            .iter()
            .fold(subtle::Choice::from(0), |found, s| {
                found | s.digest.ct_eq(&digest)
            })
            .into()
    }

    /// Standard Webhooks headers: present, short, a fresh timestamp, a bounded list of
    /// well-formed signatures. Nothing is hashed here.
    fn standard_headers(
        &self,
        headers: &HeaderMap,
        signatures: &str,
    ) -> Result<HeadersChecked<'_>, AuthError> {
        let id = header(headers, "webhook-id").ok_or(AuthError::Missing("webhook-id header"))?;
        if id.len() > MAX_CREDENTIAL {
            return Err(AuthError::Invalid("webhook-id is too long"));
        }
        let timestamp = header(headers, "webhook-timestamp")
            .ok_or(AuthError::Missing("webhook-timestamp header"))?;
        let ts: u64 = timestamp
            .trim()
            .parse()
            .map_err(|_| AuthError::Invalid("webhook-timestamp is not a number"))?;
        if unix_now().abs_diff(ts) > TIMESTAMP_TOLERANCE.as_secs() {
            return Err(AuthError::Invalid(
                "webhook-timestamp is more than 5 minutes from now",
            ));
        }
        if signatures.len() > MAX_SIGNATURE_HEADER {
            return Err(AuthError::Invalid("webhook-signature is too long"));
        }
        let entries: Vec<&str> = signatures.split_whitespace().collect();
        if entries.len() > MAX_SIGNATURES {
            return Err(AuthError::Invalid("webhook-signature has too many entries"));
        }
        let decoded: Vec<[u8; 32]> = entries
            .iter()
            .filter_map(|e| e.strip_prefix("v1,"))
            .filter_map(|b64| BASE64.decode(b64).ok())
            .filter_map(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .collect();
        if decoded.is_empty() {
            return Err(AuthError::Invalid("no webhook-signature matches"));
        }
        let pending = Pending::Standard {
            prefix: format!("{id}.{timestamp}."),
            signatures: decoded,
        };
        Ok(self.checked(pending, Some(id.to_owned())))
    }

    /// One HMAC per configured secret over `{prefix}{body}`, each compared with every
    /// presented signature in constant time.
    fn standard(
        &self,
        prefix: &str,
        signatures: &[[u8; 32]],
        body: &[u8],
    ) -> Result<Verified, AuthError> {
        let mut found = subtle::Choice::from(0);
        for secret in &self.secrets {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.hmac_key.expose_secret())
            else {
                continue;
            };
            mac.update(prefix.as_bytes());
            mac.update(body);
            let expected: [u8; 32] = mac.finalize().into_bytes().into();
            for given in signatures {
                found |= expected.ct_eq(given);
            }
        }
        if bool::from(found) {
            Ok(Verified(()))
        } else {
            Err(AuthError::Invalid("no webhook-signature matches"))
        }
    }

    fn ed25519(&self, signature: &Signature, body: &[u8]) -> Result<Verified, AuthError> {
        if self
            .keys
            .iter()
            .any(|k| k.verify_strict(body, signature).is_ok())
        {
            Ok(Verified(()))
        } else {
            Err(AuthError::Invalid(
                "X-GHL-Signature does not match the body",
            ))
        }
    }

    /// Whether an app body's `timestamp` is within the max age of now (either way). A body
    /// without one is accepted (GoHighLevel's documented examples have none; the signature
    /// covers what is there); so is one whose format is not understood, which is logged.
    pub fn fresh(&self, timestamp: Option<&str>) -> Result<(), AuthError> {
        self.fresh_at(timestamp, SystemTime::now())
    }

    /// [`Verifier::fresh`] at `now`.
    pub fn fresh_at(&self, timestamp: Option<&str>, now: SystemTime) -> Result<(), AuthError> {
        let Some(text) = timestamp else {
            return Ok(());
        };
        let Some(sent) = parse_timestamp(text) else {
            tracing::warn!(
                timestamp = ?crate::telemetry::untrusted(text),
                "an authenticated body's timestamp is not a date; accepted without an age check"
            );
            return Ok(());
        };
        let age = now.duration_since(sent).unwrap_or_else(|e| e.duration());
        if age > self.max_age {
            return Err(AuthError::Invalid(
                "the body's timestamp is outside AUTOFOLLOW_WEBHOOK_MAX_AGE",
            ));
        }
        Ok(())
    }
}

/// A base64 Ed25519 signature of the right length, refused before decoding when too long.
fn decode_ed25519(text: &str) -> Result<Signature, AuthError> {
    if text.len() > MAX_CREDENTIAL {
        return Err(AuthError::Invalid("X-GHL-Signature is too long"));
    }
    let bytes = BASE64
        .decode(text.trim())
        .map_err(|_| AuthError::Invalid("X-GHL-Signature is not base64"))?;
    Signature::from_slice(&bytes)
        .map_err(|_| AuthError::Invalid("X-GHL-Signature has the wrong length"))
}

/// An RFC 3339 date (`2025-01-28T14:35:00Z`, with or without fractions, any offset) or a
/// number of Unix seconds or milliseconds.
fn parse_timestamp(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    if let Ok(n) = text.parse::<u64>() {
        // Milliseconds from 1973 on; seconds before 5138.
        let ms = if n >= 100_000_000_000 { n } else { n * 1000 };
        return UNIX_EPOCH.checked_add(Duration::from_millis(ms));
    }
    let date = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    let ms = u64::try_from(date.timestamp_millis()).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
}

/// Constant-time comparison that does not reveal the secret's length either.
pub(crate) fn same_secret(given: &str, secret: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(secret.as_bytes());
    a.ct_eq(&b).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const SECRET: &str = "a-secret-of-sixteen-or-more";

    fn verifier(secrets: &[&str]) -> Verifier {
        let secrets = secrets.iter().map(|s| SecretString::from(*s)).collect();
        Verifier::new(Vec::new(), secrets).unwrap_or_else(|e| panic!("{e}"))
    }

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            if let Ok(v) = HeaderValue::from_str(v) {
                map.append(*k, v);
            }
        }
        map
    }

    fn hmac(key: &[u8], message: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|e| panic!("{e}"));
        mac.update(message);
        BASE64.encode(mac.finalize().into_bytes())
    }

    #[test]
    fn ghl_published_key_parses() {
        assert_eq!(
            parse_public_keys(GHL_PUBLIC_KEY_PEM).map(|k| k.len()),
            Ok(1)
        );
    }

    #[test]
    fn several_keys_parse_and_garbage_does_not() {
        let two = format!("{GHL_PUBLIC_KEY_PEM}\n{GHL_PUBLIC_KEY_PEM}");
        assert_eq!(parse_public_keys(&two).map(|k| k.len()), Ok(2));
        assert!(parse_public_keys("hello").is_err());
        assert!(
            parse_public_keys("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----")
                .is_err()
        );
    }

    #[test]
    fn short_and_malformed_secrets_are_refused_without_showing_them() {
        for bad in [
            "whsec_",
            "whsec_!!!",
            "whsec_c2VjcmV0",
            "short-secret",
            "ok-long-enough-secret,tiny",
        ] {
            let err = parse_secrets(bad).err().map(|e| e.0).unwrap_or_default();
            assert!(!err.is_empty(), "{bad} was accepted");
            assert!(!err.contains("tiny") && !err.contains("c2Vj"), "{err}");
        }
        // 24 bytes of key, and two plain secrets for a rotation.
        assert!(parse_secrets("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        assert_eq!(
            parse_secrets("old-secret-0123456789, new-secret-0123456789,")
                .map(|s| s.len())
                .ok(),
            Some(2)
        );
    }

    #[test]
    fn any_configured_secret_is_accepted_during_a_rotation() {
        let v = verifier(&["old-secret-0123456789", "new-secret-0123456789"]);
        for given in ["old-secret-0123456789", "new-secret-0123456789"] {
            let h = headers(&[("x-webhook-secret", given.to_owned())]);
            assert!(v.shared(&h, None, b"{}").is_ok(), "{given}");
        }
        let h = headers(&[("x-webhook-secret", "new-secret-012345678".to_owned())]);
        assert!(v.shared(&h, None, b"{}").is_err());
        assert!(
            v.shared(&HeaderMap::new(), Some("old-secret-0123456789"), b"")
                .is_ok()
        );
    }

    #[test]
    fn a_presented_secret_is_settled_before_the_body() {
        let v = verifier(&[SECRET]);
        let h = headers(&[("x-webhook-secret", SECRET.to_owned())]);
        let checked = v.shared_headers(&h, None).map(|c| c.needs_body());
        assert_eq!(checked.ok(), Some(false));
        let wrong = headers(&[("x-webhook-secret", "x".repeat(10_000))]);
        assert_eq!(
            v.shared_headers(&wrong, None).err(),
            Some(AuthError::Invalid("wrong webhook secret"))
        );
    }

    #[test]
    fn standard_webhooks_signatures_verify_under_any_secret_and_are_bounded() {
        let v = verifier(&["old-secret-0123456789", "new-secret-0123456789"]);
        let ts = unix_now().to_string();
        let body = br#"{"a":1}"#;
        let message = [format!("msg_1.{ts}.").as_bytes(), body].concat();
        let good = hmac(b"new-secret-0123456789", &message);
        let send = |signature: String| {
            let h = headers(&[
                ("webhook-id", "msg_1".to_owned()),
                ("webhook-timestamp", ts.clone()),
                ("webhook-signature", signature),
            ]);
            v.shared(&h, None, body)
        };
        assert!(send(format!("v1,bm90IGl0 v1,{good}")).is_ok());
        assert!(send(format!("v2,{good}")).is_err());
        // One entry too many, or too long a header: refused, valid entry or not.
        let many = format!("{}v1,{good}", "v1,AAAA ".repeat(MAX_SIGNATURES));
        assert_eq!(
            send(many).err(),
            Some(AuthError::Invalid("webhook-signature has too many entries"))
        );
        let long = format!("v1,{good} v1,{}", "A".repeat(MAX_SIGNATURE_HEADER));
        assert_eq!(
            send(long).err(),
            Some(AuthError::Invalid("webhook-signature is too long"))
        );
        let h = headers(&[
            ("webhook-id", "m".repeat(MAX_CREDENTIAL + 1)),
            ("webhook-timestamp", ts.clone()),
            ("webhook-signature", format!("v1,{good}")),
        ]);
        assert!(v.shared_headers(&h, None).is_err());
    }

    #[test]
    fn the_delivery_id_is_the_standard_webhooks_id() {
        let v = verifier(&[SECRET]);
        let h = headers(&[
            ("webhook-id", "msg_42".to_owned()),
            ("webhook-timestamp", unix_now().to_string()),
            (
                "webhook-signature",
                format!("v1,{}", BASE64.encode([0u8; 32])),
            ),
        ]);
        let checked = v.shared_headers(&h, None);
        assert_eq!(
            checked.as_ref().ok().and_then(|c| c.delivery_id()),
            Some("msg_42")
        );
    }

    #[test]
    fn app_body_timestamps_older_or_newer_than_the_max_age_are_refused() {
        let v = verifier(&[SECRET]).with_max_age(Duration::from_secs(3600));
        let now = UNIX_EPOCH + Duration::from_secs(1_738_075_000); // 2025-01-28T14:36:40Z
        assert!(v.fresh_at(None, now).is_ok());
        assert!(v.fresh_at(Some("2025-01-28T14:35:00Z"), now).is_ok());
        assert!(
            v.fresh_at(Some("2025-01-28T14:35:00.123+00:00"), now)
                .is_ok()
        );
        assert!(v.fresh_at(Some("1738074900000"), now).is_ok());
        assert!(v.fresh_at(Some("2025-01-28T12:35:00Z"), now).is_err());
        assert!(v.fresh_at(Some("2025-01-28T16:40:00Z"), now).is_err());
        assert!(v.fresh_at(Some("1738000000"), now).is_err());
        assert!(v.fresh_at(Some("yesterday"), now).is_ok(), "not a date");
    }

    #[test]
    fn the_dedup_window_always_outlasts_the_age_window() {
        assert_eq!(dedup_window(DEFAULT_MAX_AGE), MIN_DEDUP_WINDOW);
        let long = Duration::from_secs(20 * 3600);
        assert!(dedup_window(long) > long * 2);
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("ab", "abc"));
    }
}

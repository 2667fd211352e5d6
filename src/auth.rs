//! Webhook authentication. A request body is only stored once one of these checks passed;
//! [`Verified`] is the proof the intake code must hold to store it.
//!
//! - App webhooks: `X-GHL-Signature`, a base64 Ed25519 signature of the raw body, under one of
//!   the configured public keys (GoHighLevel's published key by default).
//! - Shared secret (`AUTOFOLLOW_WEBHOOK_SECRET`): the header `X-Webhook-Secret`, the query
//!   parameter `secret` (workflow webhooks only, whose standard action cannot set headers), or
//!   a Standard Webhooks signature (`webhook-id`, `webhook-timestamp`, `webhook-signature`).

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

/// Proof that a request passed authentication.
#[derive(Debug, Clone, Copy)]
pub struct Verified(());

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing authentication: {0}")]
    Missing(&'static str),
    #[error("authentication failed: {0}")]
    Invalid(&'static str),
}

/// A configuration problem with keys or the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

/// Checks webhook authentication; built once from configuration.
pub struct Verifier {
    keys: Vec<VerifyingKey>,
    secret: Option<SecretString>,
    hmac_key: Option<SecretBox<Vec<u8>>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .field("secret", &self.secret.as_ref().map(|_| "[redacted]"))
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

impl Verifier {
    /// `secret` of the form `whsec_<base64>` gives a base64-decoded HMAC key (the Standard
    /// Webhooks convention); any other secret is used as its bytes.
    pub fn new(
        keys: Vec<VerifyingKey>,
        secret: Option<SecretString>,
    ) -> Result<Verifier, KeyError> {
        let hmac_key = match &secret {
            None => None,
            Some(s) => {
                let s = s.expose_secret();
                if s.is_empty() {
                    return Err(KeyError("the webhook secret is empty".into()));
                }
                let bytes = match s.strip_prefix("whsec_") {
                    Some(b64) => BASE64.decode(b64).map_err(|_| {
                        KeyError("a whsec_ secret must be base64 after the prefix".into())
                    })?,
                    None => s.as_bytes().to_vec(),
                };
                Some(SecretBox::new(Box::new(bytes)))
            }
        };
        Ok(Verifier {
            keys,
            secret,
            hmac_key,
        })
    }

    /// App webhooks: a valid `X-GHL-Signature`, or shared-secret authentication.
    pub fn app(&self, headers: &HeaderMap, body: &[u8]) -> Result<Verified, AuthError> {
        let signature = header(headers, "x-ghl-signature");
        if let Some(sig) = signature {
            return self.ed25519(sig, body);
        }
        if self.secret.is_some() {
            return self.shared(headers, None, body);
        }
        Err(AuthError::Missing("X-GHL-Signature header"))
    }

    /// Shared-secret authentication: header, `secret` query parameter (when the endpoint
    /// allows it) or a Standard Webhooks signature.
    pub fn shared(
        &self,
        headers: &HeaderMap,
        query_secret: Option<&str>,
        body: &[u8],
    ) -> Result<Verified, AuthError> {
        let (Some(secret), Some(hmac_key)) = (&self.secret, &self.hmac_key) else {
            return Err(AuthError::Invalid(
                "shared-secret authentication is not configured (AUTOFOLLOW_WEBHOOK_SECRET)",
            ));
        };
        if let Some(given) = header(headers, "x-webhook-secret").or(query_secret) {
            return if same_secret(given, secret.expose_secret()) {
                Ok(Verified(()))
            } else {
                Err(AuthError::Invalid("wrong webhook secret"))
            };
        }
        if let Some(signatures) = header(headers, "webhook-signature") {
            let id =
                header(headers, "webhook-id").ok_or(AuthError::Missing("webhook-id header"))?;
            let timestamp = header(headers, "webhook-timestamp")
                .ok_or(AuthError::Missing("webhook-timestamp header"))?;
            let ts: u64 = timestamp
                .trim()
                .parse()
                .map_err(|_| AuthError::Invalid("webhook-timestamp is not a number"))?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            if now.abs_diff(ts) > TIMESTAMP_TOLERANCE.as_secs() {
                return Err(AuthError::Invalid(
                    "webhook-timestamp is more than 5 minutes from now",
                ));
            }
            for candidate in signatures.split_whitespace() {
                let Some(b64) = candidate.strip_prefix("v1,") else {
                    continue;
                };
                let Ok(expected) = BASE64.decode(b64) else {
                    continue;
                };
                let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(hmac_key.expose_secret()) else {
                    continue;
                };
                mac.update(id.as_bytes());
                mac.update(b".");
                mac.update(timestamp.as_bytes());
                mac.update(b".");
                mac.update(body);
                if mac.verify_slice(&expected).is_ok() {
                    return Ok(Verified(()));
                }
            }
            return Err(AuthError::Invalid("no webhook-signature matches"));
        }
        Err(AuthError::Missing(
            "X-Webhook-Secret header, secret query parameter or Standard Webhooks signature",
        ))
    }

    fn ed25519(&self, signature: &str, body: &[u8]) -> Result<Verified, AuthError> {
        let bytes = BASE64
            .decode(signature.trim())
            .map_err(|_| AuthError::Invalid("X-GHL-Signature is not base64"))?;
        let signature = Signature::from_slice(&bytes)
            .map_err(|_| AuthError::Invalid("X-GHL-Signature has the wrong length"))?;
        if self
            .keys
            .iter()
            .any(|k| k.verify_strict(body, &signature).is_ok())
        {
            Ok(Verified(()))
        } else {
            Err(AuthError::Invalid(
                "X-GHL-Signature does not match the body",
            ))
        }
    }
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
    fn whsec_secrets_must_be_base64() {
        let bad = Verifier::new(vec![], Some(SecretString::from("whsec_!!!")));
        assert!(bad.is_err());
        let good = Verifier::new(vec![], Some(SecretString::from("whsec_c2VjcmV0")));
        assert!(good.is_ok());
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("ab", "abc"));
    }
}

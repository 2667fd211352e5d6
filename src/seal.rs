//! Secrets at rest: OAuth tokens are sealed (XChaCha20-Poly1305, a random 24-byte nonce per
//! value) before they reach the store, and opened only where a call needs them.
//!
//! A sealed value is `v1.KEYID.BASE64(nonce ‖ ciphertext)`. `KEYID` names the key (the first
//! 4 bytes of its SHA-256, in hex), so several keys can be configured during a rotation: the
//! first seals, every one opens. Each value is bound to what it is (for example
//! `installation:LOCATION:access`) as associated data, so a sealed value copied into another
//! row or field does not open.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use secrecy::{ExposeSecret, SecretString};
use sha2::Digest;

const VERSION: &str = "v1";
const NONCE: usize = 24;

/// The configured keys: the first seals, all open.
#[derive(Clone)]
pub struct Sealer {
    keys: Vec<(String, XChaCha20Poly1305)>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Sealer").field("key_ids", &ids).finish()
    }
}

/// Why a sealed value did not open. Never carries the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("not a sealed value")]
    Malformed,
    #[error("sealed with key {0}, which is not configured (AUTOFOLLOW_ENCRYPTION_KEY)")]
    UnknownKey(String),
    #[error("does not open with key {0}: altered, or sealed for another field")]
    Altered(String),
}

impl Sealer {
    /// From `AUTOFOLLOW_ENCRYPTION_KEY`: one or more comma-separated keys, each 32 bytes in
    /// base64. Errors never quote a key.
    pub fn parse(text: &SecretString) -> Result<Sealer, String> {
        let mut keys = Vec::new();
        for (i, part) in text.expose_secret().split(',').enumerate() {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let bytes = BASE64
                .decode(part)
                .map_err(|_| format!("key {} is not base64", i + 1))?;
            if bytes.len() != 32 {
                return Err(format!(
                    "key {} has {} bytes; it must be 32 random bytes in base64 (openssl rand -base64 32)",
                    i + 1,
                    bytes.len()
                ));
            }
            let id = key_id(&bytes);
            let cipher = XChaCha20Poly1305::new_from_slice(&bytes).map_err(|e| e.to_string())?;
            keys.push((id, cipher));
        }
        if keys.is_empty() {
            return Err("no key given".to_owned());
        }
        Ok(Sealer { keys })
    }

    /// The id of the key that seals.
    pub fn current_key(&self) -> &str {
        &self.keys[0].0
    }

    /// Seals `plain`, bound to `label`.
    pub fn seal(&self, label: &str, plain: &SecretString) -> String {
        let (id, cipher) = &self.keys[0];
        let nonce: [u8; NONCE] = rand::random();
        let payload = Payload {
            msg: plain.expose_secret().as_bytes(),
            aad: label.as_bytes(),
        };
        // Encryption with a valid key and nonce cannot fail for inputs this small.
        let sealed = cipher
            .encrypt(XNonce::from_slice(&nonce), payload)
            .unwrap_or_default();
        let mut bytes = nonce.to_vec();
        bytes.extend(sealed);
        format!("{VERSION}.{id}.{}", BASE64.encode(bytes))
    }

    /// Opens a value sealed for `label` with any configured key.
    pub fn open(&self, label: &str, sealed: &str) -> Result<SecretString, SealError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some(VERSION), Some(id), Some(data)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SealError::Malformed);
        };
        let (_, cipher) = self
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .ok_or_else(|| SealError::UnknownKey(id.to_owned()))?;
        let bytes = BASE64.decode(data).map_err(|_| SealError::Malformed)?;
        if bytes.len() < NONCE {
            return Err(SealError::Malformed);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE);
        let payload = Payload {
            msg: ciphertext,
            aad: label.as_bytes(),
        };
        let plain = cipher
            .decrypt(XNonce::from_slice(nonce), payload)
            .map_err(|_| SealError::Altered(id.to_owned()))?;
        let text = String::from_utf8(plain).map_err(|_| SealError::Malformed)?;
        Ok(SecretString::from(text))
    }

    /// Whether `sealed` was sealed with another key than the current one (to be sealed
    /// again after a rotation).
    pub fn is_stale(&self, sealed: &str) -> bool {
        sealed.split('.').nth(1) != Some(self.current_key())
    }
}

fn key_id(key: &[u8]) -> String {
    let digest = sha2::Sha256::digest(key);
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> String {
        BASE64.encode([byte; 32])
    }

    fn sealer(keys: &str) -> Sealer {
        Sealer::parse(&SecretString::from(keys.to_owned())).unwrap()
    }

    #[test]
    fn a_sealed_value_opens_only_for_its_label_and_never_shows_the_plaintext() {
        let s = sealer(&key(1));
        let token = SecretString::from("ya29.secret-access-token".to_owned());
        let sealed = s.seal("installation:loc1:access", &token);
        assert!(!sealed.contains("secret-access-token"));
        assert_ne!(
            sealed,
            s.seal("installation:loc1:access", &token),
            "fresh nonce"
        );
        let opened = s.open("installation:loc1:access", &sealed).unwrap();
        assert_eq!(opened.expose_secret(), token.expose_secret());
        assert!(matches!(
            s.open("installation:loc2:access", &sealed),
            Err(SealError::Altered(_))
        ));
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(s.open("installation:loc1:access", &tampered).is_err());
    }

    #[test]
    fn during_a_rotation_old_values_open_and_new_ones_use_the_first_key() {
        let old = sealer(&key(1));
        let sealed_old = old.seal("l", &SecretString::from("t".to_owned()));
        let both = sealer(&format!("{},{}", key(2), key(1)));
        assert_eq!(both.open("l", &sealed_old).unwrap().expose_secret(), "t");
        assert!(both.is_stale(&sealed_old));
        let sealed_new = both.seal("l", &SecretString::from("t".to_owned()));
        assert!(!both.is_stale(&sealed_new));
        assert!(matches!(
            old.open("l", &sealed_new),
            Err(SealError::UnknownKey(_))
        ));
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64_and_errors_do_not_quote_them() {
        for bad in ["", "not base64!", &BASE64.encode([7u8; 16])] {
            let e = Sealer::parse(&SecretString::from(bad.to_owned())).unwrap_err();
            assert!(bad.is_empty() || !e.contains(bad), "{e}");
        }
        assert!(format!("{:?}", sealer(&key(3))).contains("key_ids"));
    }
}

//! How autofollow reaches a location: with a Private Integration Token (`GHL_TOKEN`,
//! `GHL_LOCATION_TOKENS_FILE`), or through an OAuth installation of the Marketplace app
//! (tokens sealed in the store, refreshed before they expire, single-flight; see
//! [`oauth`]). The worker asks for a location's token here and nowhere else.

pub mod oauth;

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use sha2::Digest;

use crate::ghl::Tokens;
use crate::model::ids::LocationId;

pub use oauth::OAuth;

/// A token for one location, and what identifies it without showing it.
#[derive(Clone)]
pub struct Token {
    pub secret: SecretString,
    /// A PIT's SHA-256 prefix, or an installation's version: stored when GoHighLevel refuses
    /// the token, so the location's parked work resumes when it changes.
    pub fingerprint: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// A Private Integration Token.
    pub fn pit(secret: &SecretString) -> Token {
        Token {
            secret: secret.clone(),
            fingerprint: fingerprint(secret),
        }
    }
}

/// Why there is no token for a location now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoToken {
    /// Neither a PIT nor an installation covers the location.
    Missing,
    /// GoHighLevel refused the installation's refresh: the app must be installed again.
    /// Carries the installation's fingerprint, to park the location's work on.
    Reauthorize { fingerprint: String, reason: String },
    /// Not now (GoHighLevel or the store did not answer): try again later.
    Unavailable(String),
}

/// Every way to a location's token.
#[derive(Debug, Clone)]
pub struct Access {
    pits: Tokens,
    oauth: Option<Arc<OAuth>>,
}

impl Access {
    pub fn new(pits: Tokens, oauth: Option<Arc<OAuth>>) -> Access {
        Access { pits, oauth }
    }

    /// No token and no app configured: nothing can be called (a dry run).
    pub fn is_empty(&self) -> bool {
        self.pits.is_empty() && self.oauth.is_none()
    }

    pub fn oauth(&self) -> Option<&Arc<OAuth>> {
        self.oauth.as_ref()
    }

    /// The location's token: its installation's (refreshed when it is about to expire), else
    /// its PIT.
    pub async fn token(&self, location: &LocationId) -> Result<Token, NoToken> {
        let installed = match &self.oauth {
            Some(oauth) => oauth.token(location.as_str()).await?,
            None => None,
        };
        installed
            .or_else(|| self.pits.for_location(location).map(Token::pit))
            .ok_or(NoToken::Missing)
    }

    /// GoHighLevel refused `token` (401): a newer token to try once, if there is one (an
    /// installation is refreshed, single-flight, unless someone already did). `None`: the
    /// token stays refused.
    pub async fn refused(&self, location: &LocationId, token: &Token) -> Option<Token> {
        let oauth = self.oauth.as_ref()?;
        oauth.refused(location.as_str(), token).await
    }

    /// The fingerprint of the location's credential now, to tell whether a refused one was
    /// replaced.
    pub async fn current(&self, location: &LocationId) -> Option<String> {
        let installed = match &self.oauth {
            Some(oauth) => oauth.fingerprint(location.as_str()).await,
            None => None,
        };
        installed.or_else(|| self.pits.for_location(location).map(fingerprint))
    }
}

/// Identifies a token without storing it: a SHA-256 prefix.
pub fn fingerprint(token: &SecretString) -> String {
    let digest = sha2::Sha256::digest(token.expose_secret().as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

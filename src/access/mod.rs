//! How autofollow reaches a location: with a Private Integration Token (`GHL_TOKEN` for
//! `GHL_LOCATION_ID`, `GHL_LOCATION_TOKENS_FILE`; see [`pits`]), or through an OAuth
//! installation of the Marketplace app (tokens sealed in the store, refreshed before they
//! expire, single-flight; see [`oauth`]). The worker asks for a location's token here and
//! nowhere else, and intake asks here whether a location is served at all.

pub mod oauth;
pub mod pits;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use secrecy::{ExposeSecret, SecretString};
use sha2::Digest;

use crate::model::ids::LocationId;

pub use oauth::OAuth;
pub use pits::Pits;

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
    /// The app was uninstalled from the location (or its company).
    Uninstalled,
    /// GoHighLevel refused the installation's refresh: the app must be installed again.
    /// Carries the installation's fingerprint, to park the location's work on.
    Reauthorize { fingerprint: String, reason: String },
    /// Not now (GoHighLevel or the store did not answer): try again later.
    Unavailable(String),
}

/// Every way to a location's token; cheap to clone (the clones share the PITs, so a token
/// file read again reaches every holder).
#[derive(Debug, Clone)]
pub struct Access {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pits: RwLock<Pits>,
    file: Option<PathBuf>,
    oauth: Option<Arc<OAuth>>,
    /// No credential of any kind configured: a dry run that serves every location.
    open: bool,
    scopes: Arc<Scopes>,
}

impl Access {
    /// `file` is where the PITs' file is read again from ([`Access::reload_pits`]).
    pub fn new(pits: Pits, file: Option<PathBuf>, oauth: Option<Arc<OAuth>>) -> Access {
        let open = pits.is_empty() && file.is_none() && oauth.is_none();
        Access {
            inner: Arc::new(Inner {
                pits: RwLock::new(pits),
                file,
                oauth,
                open,
                scopes: Arc::default(),
            }),
        }
    }

    pub fn oauth(&self) -> Option<&Arc<OAuth>> {
        self.inner.oauth.as_ref()
    }

    /// Missing scopes found by calls, by location.
    pub fn scopes(&self) -> &Arc<Scopes> {
        &self.inner.scopes
    }

    fn pits(&self) -> std::sync::RwLockReadGuard<'_, Pits> {
        self.inner
            .pits
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// How many locations have a PIT now.
    pub fn pit_locations(&self) -> usize {
        self.pits().len()
    }

    /// Every location with a credential: its PIT, or its installation with the scopes it
    /// was granted (`None`: not known, as for a PIT). `Err`: the store could not say.
    pub async fn locations(
        &self,
    ) -> Result<BTreeMap<LocationId, Option<BTreeSet<String>>>, String> {
        let mut out: BTreeMap<LocationId, Option<BTreeSet<String>>> =
            self.pits().locations().map(|l| (l.clone(), None)).collect();
        if let Some(oauth) = &self.inner.oauth {
            for (id, scopes) in oauth.locations().await? {
                let Ok(location) = LocationId::parse(&id) else {
                    continue;
                };
                let granted: BTreeSet<String> =
                    scopes.split_whitespace().map(str::to_owned).collect();
                out.insert(location, (!granted.is_empty()).then_some(granted));
            }
        }
        Ok(out)
    }

    /// Whether autofollow acts for `location`: it has a PIT or an installation that was not
    /// uninstalled (one that needs re-authorization still counts: its work waits), or no
    /// credential is configured at all (a dry run records every location). `Err`: the store
    /// could not say.
    pub async fn serves(&self, location: &LocationId) -> Result<bool, String> {
        if self.inner.open || self.pits().get(location).is_some() {
            return Ok(true);
        }
        match &self.inner.oauth {
            Some(oauth) => oauth.serves(location.as_str()).await,
            None => Ok(false),
        }
    }

    /// The location's token: its installation's (refreshed when it is about to expire), else
    /// its PIT.
    pub async fn token(&self, location: &LocationId) -> Result<Token, NoToken> {
        let installed = match &self.inner.oauth {
            Some(oauth) => oauth.token(location.as_str()).await,
            None => Err(NoToken::Missing),
        };
        match installed {
            Err(NoToken::Missing | NoToken::Uninstalled) => {
                let pit = self.pits().get(location).map(Token::pit);
                pit.ok_or(installed.err().unwrap_or(NoToken::Missing))
            }
            other => other,
        }
    }

    /// GoHighLevel refused `token` (401): a newer token to try once, if there is one (an
    /// installation is refreshed, single-flight, unless someone already did; a PIT may have
    /// been rotated in the token file). `None`: the token stays refused.
    pub async fn refused(&self, location: &LocationId, token: &Token) -> Option<Token> {
        if let Some(oauth) = &self.inner.oauth {
            if let Some(newer) = oauth.refused(location.as_str(), token).await {
                return Some(newer);
            }
        }
        let pit = self.pits().get(location).map(Token::pit)?;
        (pit.fingerprint != token.fingerprint).then_some(pit)
    }

    /// The fingerprint of the location's credential now, to tell whether a refused one was
    /// replaced.
    pub async fn current(&self, location: &LocationId) -> Option<String> {
        let installed = match &self.inner.oauth {
            Some(oauth) => oauth.fingerprint(location.as_str()).await,
            None => None,
        };
        installed.or_else(|| self.pits().get(location).map(fingerprint))
    }

    /// Reads the token file again; the locations whose token changed (to resume their parked
    /// work). A file that does not read keeps the tokens in use (`Err` says why).
    pub fn reload_pits(&self) -> Result<Vec<LocationId>, String> {
        let Some(path) = &self.inner.file else {
            return Ok(Vec::new());
        };
        let file = pits::read_file(path)?;
        let mut current = self
            .inner
            .pits
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let next = current.with_file(file);
        let changed: Vec<LocationId> = next
            .locations()
            .filter(|l| current.get(l).map(fingerprint) != next.get(l).map(fingerprint))
            .cloned()
            .collect();
        *current = next;
        Ok(changed)
    }
}

/// Identifies a token without storing it: a SHA-256 prefix.
pub fn fingerprint(token: &SecretString) -> String {
    let digest = sha2::Sha256::digest(token.expose_secret().as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Scopes a location's token turned out to lack: GoHighLevel answered 401 or 403 to a
/// lookup that needs them. Shown in `/readyz` and the admin API; cleared when such a call
/// succeeds again.
#[derive(Debug, Default)]
pub struct Scopes {
    missing: Mutex<BTreeMap<LocationId, BTreeMap<&'static str, String>>>,
}

impl Scopes {
    /// `location`'s token lacks `scope`: `what` was refused.
    pub fn lacks(&self, location: &LocationId, scope: &'static str, what: String) {
        let mut missing = self.missing.lock().unwrap_or_else(PoisonError::into_inner);
        let first = missing
            .entry(location.clone())
            .or_default()
            .insert(scope, what.clone())
            .is_none();
        if first {
            tracing::warn!(%location, scope, refused = %what, "the location's token lacks a scope; rules that need it will not match until it is granted");
        }
    }

    /// A call needing `scope` succeeded for `location`.
    pub fn has(&self, location: &LocationId, scope: &'static str) {
        let mut missing = self.missing.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(scopes) = missing.get_mut(location) {
            scopes.remove(scope);
            if scopes.is_empty() {
                missing.remove(location);
            }
        }
    }

    /// Every location with a missing scope: (location, [(scope, what was refused)]).
    pub fn missing(&self) -> Vec<(LocationId, Vec<(&'static str, String)>)> {
        let missing = self.missing.lock().unwrap_or_else(PoisonError::into_inner);
        missing
            .iter()
            .map(|(l, s)| (l.clone(), s.iter().map(|(k, v)| (*k, v.clone())).collect()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> LocationId {
        LocationId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The token file read again: a changed or new token is reported (its parked work
    /// resumes); a file that does not read keeps the tokens in use.
    #[test]
    fn the_token_file_is_read_again_and_a_bad_one_keeps_the_tokens() {
        let dir = std::env::temp_dir().join(format!("af-pits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let file = dir.join("tokens.yaml");
        let write = |text: &str| std::fs::write(&file, text).unwrap_or_else(|e| panic!("{e}"));
        write("L1: old\n");
        let first = pits::read_file(&file).unwrap_or_else(|e| panic!("{e}"));
        let access = Access::new(Pits::new(None, first), Some(file.clone()), None);
        write("L1: new\nL2: two\n");
        let mut changed = access.reload_pits().unwrap_or_else(|e| panic!("{e}"));
        changed.sort();
        assert_eq!(changed, [id("L1"), id("L2")]);
        write("- not a mapping\n");
        assert!(access.reload_pits().is_err());
        let kept = access
            .pits()
            .get(&id("L1"))
            .map(|t| t.expose_secret().to_owned());
        assert_eq!(kept.as_deref(), Some("new"));
        std::fs::remove_dir_all(&dir).ok();
    }
}

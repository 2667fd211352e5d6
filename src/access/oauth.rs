//! The Marketplace app's installations: tokens sealed in the store, refreshed before they
//! expire and once when GoHighLevel refuses one, **single-flight** across tasks (a lock per
//! installation) and across replicas (the store's refresh lease), because a refresh token
//! works once: the new pair is committed before anyone uses it.
//!
//! What a crash can lose: GoHighLevel has rotated the refresh token once it answers a
//! refresh; if the process dies between that answer and the commit (one statement, right
//! after the answer), the new pair is lost and the old refresh token no longer works. The
//! next refresh is refused and the installation is marked for re-authorization (its work is
//! parked, not lost, and resumes when the app is installed again). The protocol allows no
//! smaller window; a refresh is made only when the access token is about to expire (or
//! refused), so this window opens about once a day per installation. A crash before
//! GoHighLevel answered loses nothing: the refresh token still works, and the next run (at
//! once on SQLite, which clears a dead run's leases at start; on PostgreSQL once the dead
//! replica's refresh lease of 2 × `GHL_TIMEOUT` + 5 s lapses) refreshes. Both are tested by
//! `crash.rs` `sigkill_during_a_refresh_loses_no_work`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use secrecy::SecretString;

use super::{NoToken, Token};
use crate::ghl::oauth::{OAuthClient, OAuthError, TokenAnswer};
use crate::model::ids::LocationId;
use crate::seal::Sealer;
use crate::store::{InstallKind, InstallState, InstallTokens, Installation, Store};

/// A refresh is attempted this long before the access token expires (at most a quarter of
/// the token's life).
const REFRESH_AHEAD: Duration = Duration::from_secs(300);

/// An installed location is known to intake for this long before the store is asked again
/// (an uninstall on another replica reaches this one within it; its events are then ended
/// by the worker, never called).
const KNOWN_FOR: Duration = Duration::from_secs(30);

/// The OAuth side of [`super::Access`].
#[derive(Debug)]
pub struct OAuth {
    client: OAuthClient,
    store: Arc<dyn Store>,
    sealer: Sealer,
    /// This process's name on refresh leases.
    owner: String,
    /// The app's id, to list a company's installed locations.
    app_id: String,
    /// How long a refresh lease lasts: longer than a refresh call may take.
    lease: Duration,
    /// One refresh at a time per installation within this process.
    local: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Locations found installed, and when: intake's answer without a store read.
    known: Mutex<HashMap<String, Instant>>,
}

impl OAuth {
    pub fn new(
        client: OAuthClient,
        store: Arc<dyn Store>,
        sealer: Sealer,
        owner: &str,
        app_id: String,
        call_timeout: Duration,
    ) -> OAuth {
        OAuth {
            client,
            store,
            sealer,
            owner: owner.to_owned(),
            app_id,
            lease: call_timeout * 2 + Duration::from_secs(5),
            local: Mutex::default(),
            known: Mutex::default(),
        }
    }

    pub fn client(&self) -> &OAuthClient {
        &self.client
    }

    /// Stores what a code exchange (an install) answered: a location's tokens, or a
    /// company's and a row for each location it approved. Returns the installation's id.
    pub async fn install(&self, answer: &TokenAnswer) -> Result<String, String> {
        let company = answer.user_type.as_deref() == Some("Company");
        let id = match company {
            true => answer.company_id.clone(),
            false => answer.location_id.clone(),
        }
        .filter(|id| crate::model::ids::is_valid_id(id))
        .ok_or("GoHighLevel's token answer names no valid location or company id")?;
        let kind = if company {
            InstallKind::Company
        } else {
            InstallKind::Location
        };
        let tokens = self.sealed(&id, kind, answer.company_id.clone(), answer);
        self.store
            .save_installation(&tokens, None)
            .await
            .map_err(|e| e.to_string())?;
        let mut locations = vec![id.clone()];
        if company {
            locations = self.company_locations(&id, answer).await;
            for location in &locations {
                self.add_company_location(&id, location).await?;
            }
        }
        for location in &locations {
            self.resume(location, "installed again").await?;
        }
        Ok(id)
    }

    /// The locations a company install covers: those it approved, and those
    /// `GET /oauth/installedLocations` lists (a bulk install into every location may approve
    /// none by name). When the list cannot be read, the approved ones (INSTALL webhooks add
    /// the others as they arrive).
    async fn company_locations(&self, company: &str, answer: &TokenAnswer) -> Vec<String> {
        let mut locations = answer.approved_locations.clone();
        let listed = self
            .client
            .installed_locations(&answer.access_token, company, &self.app_id)
            .await;
        match listed {
            Ok(listed) => locations.extend(listed),
            Err(e) => {
                tracing::warn!(company, error = %e, "cannot list the company's installed locations; its INSTALL webhooks add them")
            }
        }
        locations.sort();
        locations.dedup();
        locations
    }

    /// Parked work of the location goes on (installed again: it is called; uninstalled: the
    /// worker ends it).
    async fn resume(&self, location: &str, why: &str) -> Result<(), String> {
        let Ok(location) = LocationId::parse(location) else {
            return Ok(());
        };
        let resumed = self
            .store
            .resume_location(&location)
            .await
            .map_err(|e| e.to_string())?;
        if resumed > 0 {
            tracing::info!(%location, resumed, "{why}; the location's parked events resume");
        }
        Ok(())
    }

    /// Whether the location has an installation that was not uninstalled.
    pub async fn serves(&self, location: &str) -> Result<bool, String> {
        {
            let known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
            if known
                .get(location)
                .is_some_and(|at| at.elapsed() < KNOWN_FOR)
            {
                return Ok(true);
            }
        }
        let found = self.store.installation(location).await;
        let found = found.map_err(|e| format!("cannot read the installation: {e}"))?;
        let serves = found.is_some_and(|f| f.state != InstallState::Uninstalled);
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        match serves {
            true => known.insert(location.to_owned(), Instant::now()),
            false => known.remove(location),
        };
        Ok(serves)
    }

    /// An `INSTALL` webhook. A location of an installed company is recorded, and its token
    /// got from the company's now (in the background); a location installed on its own, or a
    /// company, is stored by the callback. Returns what was done.
    pub async fn app_installed(
        self: &Arc<Self>,
        company: Option<&str>,
        location: Option<&str>,
    ) -> Result<&'static str, String> {
        let Some(location) = location else {
            return Ok("company install (its tokens come through the callback)");
        };
        let own = self.store.installation(location).await;
        let own = own.map_err(|e| e.to_string())?;
        let has_own = own.as_ref().is_some_and(|o| {
            o.state != InstallState::Uninstalled && o.tokens.refresh_token.is_some()
        });
        if has_own {
            return Ok("location already installed");
        }
        let Some(company) = company else {
            return Ok("location install (its tokens come through the callback)");
        };
        let installed_company = self.store.installation(company).await;
        let active = installed_company
            .map_err(|e| e.to_string())?
            .is_some_and(|c| {
                c.tokens.kind == InstallKind::Company && c.state == InstallState::Active
            });
        if !active {
            return Ok("location of a company that is not installed here");
        }
        self.add_company_location(company, location).await?;
        self.resume(location, "installed again").await?;
        let (this, location) = (Arc::clone(self), location.to_owned());
        tokio::spawn(async move {
            if let Err(e) = this.token(&location).await {
                tracing::warn!(%location, error = ?e, "cannot get the new location's token yet; it is asked for again when needed");
            }
        });
        Ok("location of an installed company recorded")
    }

    /// An `UNINSTALL` webhook: the location's (or the company's and its locations') tokens are
    /// deleted; queued work of those locations is ended by the worker, nothing is called.
    pub async fn app_uninstalled(
        &self,
        company: Option<&str>,
        location: Option<&str>,
    ) -> Result<usize, String> {
        let mut ended: Vec<String> = location.map(str::to_owned).into_iter().collect();
        if let (None, Some(company)) = (location, company) {
            ended.push(company.to_owned());
            let all = self
                .store
                .installations()
                .await
                .map_err(|e| e.to_string())?;
            let its_own = |i: &Installation| i.tokens.refresh_token.is_some();
            ended.extend(
                all.iter()
                    .filter(|i| i.tokens.company_id.as_deref() == Some(company) && !its_own(i))
                    .filter(|i| i.tokens.kind == InstallKind::Location)
                    .map(|i| i.tokens.id.clone()),
            );
        }
        let problem = Some("the app was uninstalled");
        let mut count = 0;
        for id in &ended {
            let state = InstallState::Uninstalled;
            let existed = self.store.set_install_state(id, state, problem).await;
            count += usize::from(existed.map_err(|e| e.to_string())?);
            self.known
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(id);
            self.resume(id, "uninstalled").await?;
        }
        Ok(count)
    }

    /// Records a location of a company install; its token is got from the company's when
    /// first needed.
    pub async fn add_company_location(&self, company: &str, location: &str) -> Result<(), String> {
        if !crate::model::ids::is_valid_id(location) {
            return Err(format!("{location:?} is not a location id"));
        }
        // A location installed on its own keeps its own tokens.
        let own = self.store.installation(location).await;
        let own = own.map_err(|e| e.to_string())?;
        if own.is_some_and(|o| {
            o.state != InstallState::Uninstalled && o.tokens.refresh_token.is_some()
        }) {
            return Ok(());
        }
        let row = InstallTokens {
            id: location.to_owned(),
            kind: InstallKind::Location,
            company_id: Some(company.to_owned()),
            access_token: None,
            refresh_token: None,
            scopes: String::new(),
            issued_at: None,
            expires_at: None,
        };
        self.store
            .save_installation(&row, None)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// The installation's access token for `id`, renewed first when it is about to expire.
    pub async fn token(&self, id: &str) -> Result<Token, NoToken> {
        let found = self.read(id).await?.ok_or(NoToken::Missing)?;
        match found.state {
            InstallState::Uninstalled => Err(NoToken::Uninstalled),
            InstallState::Reauthorize => Err(reauthorize(&found)),
            InstallState::Active => match self.usable(&found) {
                Some(token) => Ok(token),
                None => self.renew(id, found.version).await,
            },
        }
    }

    /// GoHighLevel refused `token`: renewed once, unless it was renewed already.
    pub async fn refused(&self, id: &str, token: &Token) -> Option<Token> {
        let found = self.read(id).await.ok()??;
        if fingerprint(&found) != token.fingerprint {
            return self.usable(&found);
        }
        self.renew(id, found.version).await.ok()
    }

    /// Every location installation not uninstalled, with the scopes it was granted (empty
    /// when the answer did not list them).
    pub async fn locations(&self) -> Result<Vec<(String, String)>, String> {
        let all = self.store.installations().await;
        let all = all.map_err(|e| format!("cannot read the installations: {e}"))?;
        let live = all.into_iter().filter(|i| {
            i.tokens.kind == InstallKind::Location && i.state != InstallState::Uninstalled
        });
        Ok(live.map(|i| (i.tokens.id, i.tokens.scopes)).collect())
    }

    /// The installation's fingerprint, when there is one.
    pub async fn fingerprint(&self, id: &str) -> Option<String> {
        let found = self.read(id).await.ok()??;
        (found.state != InstallState::Uninstalled).then(|| fingerprint(&found))
    }

    async fn read(&self, id: &str) -> Result<Option<Installation>, NoToken> {
        self.store
            .installation(id)
            .await
            .map_err(|e| NoToken::Unavailable(format!("cannot read the installation: {e}")))
    }

    /// The stored access token, when it is there and not about to expire.
    fn usable(&self, found: &Installation) -> Option<Token> {
        let t = &found.tokens;
        let (Some(sealed), Some(expires)) = (&t.access_token, t.expires_at) else {
            return None;
        };
        let life = expires
            .duration_since(t.issued_at.unwrap_or(expires))
            .unwrap_or_default();
        let ahead = REFRESH_AHEAD.min(life / 4);
        if SystemTime::now() + ahead >= expires {
            return None;
        }
        let secret = self.sealer.open(&label(&t.id, "access"), sealed).ok()?;
        Some(Token {
            secret,
            fingerprint: fingerprint(found),
        })
    }

    /// Renews the installation's access token, or waits for whoever renews it (in this
    /// process or another) and uses theirs.
    async fn renew(&self, id: &str, seen: i64) -> Result<Token, NoToken> {
        let local = self.local_lock(id);
        let _one = local.lock().await;
        let deadline = tokio::time::Instant::now() + self.lease + Duration::from_secs(5);
        loop {
            let found = self.read(id).await?.ok_or(NoToken::Missing)?;
            if found.state != InstallState::Active {
                return Err(reauthorize(&found));
            }
            // Renewed by someone else meanwhile.
            let renewed = (found.version != seen).then(|| self.usable(&found));
            if let Some(token) = renewed.flatten() {
                return Ok(token);
            }
            let taken = self
                .store
                .begin_refresh(id, &self.owner, found.version, self.lease)
                .await
                .map_err(|e| NoToken::Unavailable(e.to_string()))?;
            if taken {
                return self.refresh(found).await;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(NoToken::Unavailable(format!(
                    "installation {id}: another refresh did not finish in time"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn local_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(locks.entry(id.to_owned()).or_default())
    }

    /// Holding the refresh lease: asks GoHighLevel, commits the answer, then returns it.
    async fn refresh(&self, found: Installation) -> Result<Token, NoToken> {
        let t = &found.tokens;
        let asked = match (&t.refresh_token, &t.company_id, t.kind) {
            (Some(sealed), _, _) => match self.sealer.open(&label(&t.id, "refresh"), sealed) {
                Ok(refresh) => self.client.refresh(&refresh).await,
                Err(e) => Err(OAuthError::Refused(format!(
                    "the refresh token does not open: {e}"
                ))),
            },
            (None, Some(company), InstallKind::Location) => {
                self.location_token(company, &t.id).await
            }
            _ => Err(OAuthError::Refused("no refresh token is stored".to_owned())),
        };
        match asked {
            Ok(answer) => {
                let mut next = self.sealed(&t.id, t.kind, t.company_id.clone(), &answer);
                if next.refresh_token.is_none() {
                    next.refresh_token.clone_from(&t.refresh_token);
                }
                self.commit(&found, &next).await
            }
            Err(OAuthError::Unavailable(reason)) => {
                let _ = self.store.end_refresh(&t.id, &self.owner).await;
                Err(NoToken::Unavailable(reason))
            }
            Err(OAuthError::Refused(reason)) => self.refused_refresh(&found, &reason).await,
        }
    }

    /// A location's token from its company's (which is renewed first when needed).
    async fn location_token(
        &self,
        company: &str,
        location: &str,
    ) -> Result<TokenAnswer, OAuthError> {
        let company_token = match Box::pin(self.token(company)).await {
            Ok(token) => token,
            Err(NoToken::Unavailable(reason)) => return Err(OAuthError::Unavailable(reason)),
            Err(NoToken::Missing | NoToken::Uninstalled) => {
                return Err(OAuthError::Refused(format!(
                    "company {company} is not installed"
                )));
            }
            Err(NoToken::Reauthorize { reason, .. }) => {
                return Err(OAuthError::Refused(format!("company {company}: {reason}")));
            }
        };
        self.client
            .location_token(&company_token.secret, company, location)
            .await
    }

    /// Commits the new pair under the lease; the token returned is the one committed.
    async fn commit(&self, found: &Installation, next: &InstallTokens) -> Result<Token, NoToken> {
        let saved = self
            .store
            .save_installation(next, Some(&self.owner))
            .await
            .map_err(|e| NoToken::Unavailable(format!("cannot store the refreshed tokens: {e}")))?;
        if !saved {
            tracing::warn!(installation = %found.tokens.id, "refresh lease lapsed before the new tokens were stored; using whatever is stored now");
        }
        let now = self.read(&found.tokens.id).await?.ok_or(NoToken::Missing)?;
        self.usable(&now)
            .ok_or_else(|| NoToken::Unavailable("the stored token is not usable".to_owned()))
    }

    /// GoHighLevel refused the refresh: unless someone stored a newer pair meanwhile (then
    /// that one is used), the installation needs re-authorization.
    async fn refused_refresh(&self, found: &Installation, reason: &str) -> Result<Token, NoToken> {
        let id = &found.tokens.id;
        let newer = self
            .read(id)
            .await?
            .filter(|now| now.version != found.version);
        if let Some(token) = newer.and_then(|now| self.usable(&now)) {
            return Ok(token);
        }
        let problem = format!("GoHighLevel refused the refresh: {reason}; install the app again");
        tracing::error!(installation = %id, reason, "GoHighLevel refused the refresh; the installation needs re-authorization");
        self.store
            .set_install_state(id, InstallState::Reauthorize, Some(&problem))
            .await
            .map_err(|e| NoToken::Unavailable(e.to_string()))?;
        let now = self.read(id).await?.ok_or(NoToken::Missing)?;
        Err(reauthorize(&now))
    }

    /// The answer's tokens, sealed for installation `id`.
    fn sealed(
        &self,
        id: &str,
        kind: InstallKind,
        company_id: Option<String>,
        answer: &TokenAnswer,
    ) -> InstallTokens {
        let now = SystemTime::now();
        let seal = |what: &str, secret: &SecretString| self.sealer.seal(&label(id, what), secret);
        InstallTokens {
            id: id.to_owned(),
            kind,
            company_id,
            access_token: Some(seal("access", &answer.access_token)),
            refresh_token: answer.refresh_token.as_ref().map(|r| seal("refresh", r)),
            scopes: answer.scope.clone().unwrap_or_default(),
            issued_at: Some(now),
            expires_at: Some(now + Duration::from_secs(answer.expires_in.unwrap_or(86_399))),
        }
    }
}

/// What a sealed value of installation `id` is bound to.
fn label(id: &str, what: &str) -> String {
    format!("installation:{id}:{what}")
}

fn fingerprint(found: &Installation) -> String {
    format!("oauth-{}-v{}", found.tokens.id, found.version)
}

fn reauthorize(found: &Installation) -> NoToken {
    NoToken::Reauthorize {
        fingerprint: fingerprint(found),
        reason: found
            .problem
            .clone()
            .unwrap_or_else(|| "the app must be installed again".to_owned()),
    }
}

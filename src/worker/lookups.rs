//! What the rules may need and an event does not carry, fetched from GoHighLevel and cached
//! per location: pipeline and stage names, a location's company and time zone, users by
//! email.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use tokio::sync::Mutex;

use crate::access::Scopes;
use crate::ghl::pipelines::Pipelines;
use crate::ghl::{CallError, GhlClient, LocationInfo};
use crate::model::event::{AssignedUser, Event};
use crate::model::ids::{LocationId, UserId};
use crate::rules::Resolver;

/// Refetch pipelines for an unknown id, or look a missing email up again, at most this often.
const LOOKUP_REFRESH: Duration = Duration::from_secs(60);
/// Read a location again (its time zone may change) at most this often.
const LOCATION_REFRESH: Duration = Duration::from_secs(3600);

/// A location and a lowercased email.
type EmailKey = (LocationId, String);

/// The caches, shared by every task of a worker.
#[derive(Debug, Default)]
pub struct Lookups {
    /// Where a scope a lookup needs is found missing.
    scopes: Arc<Scopes>,
    pipelines: Mutex<HashMap<LocationId, (Arc<Pipelines>, Instant)>>,
    /// A location as read (`None`: the lookup was refused) and when.
    locations: Mutex<HashMap<LocationId, (Option<LocationInfo>, Instant)>>,
    /// (location, lowercased email) → the user id found (or not) and when it was looked up.
    users: Mutex<HashMap<EmailKey, (Option<UserId>, Instant)>>,
}

/// What the lookups know for one event: a [`Resolver`] over a snapshot.
pub struct Resolved {
    pipelines: Option<Arc<Pipelines>>,
    /// (email, the user id found) for the emails the event needs.
    users: Vec<(String, UserId)>,
}

impl Resolver for Resolved {
    fn pipeline_name(&self, l: &LocationId, id: &str) -> Option<&str> {
        self.pipelines.as_ref()?.pipeline_name(l, id)
    }
    fn stage_name(&self, l: &LocationId, id: &str) -> Option<&str> {
        self.pipelines.as_ref()?.stage_name(l, id)
    }
    fn user_id_by_email(&self, _: &LocationId, email: &str) -> Option<UserId> {
        let email = email.trim();
        let mut known = self.users.iter();
        known
            .find(|(known, _)| known.eq_ignore_ascii_case(email))
            .map(|(_, id)| id.clone())
    }
}

/// A lookup: what it reads, and the scope it needs.
struct Lookup {
    what: &'static str,
    scope: &'static str,
}

const PIPELINES: Lookup = Lookup {
    what: "read pipelines; rules naming pipelines or stages will not match",
    scope: "opportunities.readonly",
};
const USERS: Lookup = Lookup {
    what: "search users; assigned_user stays unresolved",
    scope: "users.readonly",
};
const LOCATION: Lookup = Lookup {
    what: "read the location; users by email stay unresolved, pools' away dates are days of UTC",
    scope: "locations.readonly",
};

impl Lookups {
    pub fn new(scopes: Arc<Scopes>) -> Lookups {
        Lookups {
            scopes,
            ..Lookups::default()
        }
    }

    /// A permanent failure of a lookup: logged (a 401 or 403 recorded as the scope the token
    /// lacks), and the rules go on without the answer. Retryable failures and waits for the
    /// budget are passed on, to retry or defer the event.
    fn tolerated<T>(
        &self,
        answer: Result<T, CallError>,
        location: &LocationId,
        lookup: &Lookup,
    ) -> Result<Option<T>, CallError> {
        match answer {
            Ok(v) => {
                self.scopes.has(location, lookup.scope);
                Ok(Some(v))
            }
            Err(e @ (CallError::Retryable { .. } | CallError::Deferred { .. })) => Err(e),
            Err(CallError::Permanent {
                status: Some(status @ (401 | 403)),
                ..
            }) => {
                let refused = format!("cannot {}: GoHighLevel answered {status}", lookup.what);
                self.scopes.lacks(location, lookup.scope, refused);
                Ok(None)
            }
            Err(CallError::Permanent { reason, .. }) => {
                tracing::warn!(location = %location, error = %reason, "cannot {}", lookup.what);
                Ok(None)
            }
        }
    }

    /// Fetches what the rules may need for `event`: pipeline and stage names (when an id is
    /// not cached yet), and the ids of a workflow event's assignee and of the users `emails`
    /// (read by field targets). Nothing without a token.
    pub async fn resolve(
        &self,
        ghl: &GhlClient,
        event: &Event,
        (previous_stage, emails): (Option<&str>, &[String]),
        token: Option<&SecretString>,
    ) -> Result<Resolved, CallError> {
        let mut resolved = Resolved {
            pipelines: None,
            users: Vec::new(),
        };
        let Some(token) = token else {
            return Ok(resolved);
        };
        let names_needed = event.stage_name.is_none()
            && [
                event.pipeline_id.as_deref(),
                event.stage_id.as_deref(),
                previous_stage,
            ]
            .iter()
            .any(Option::is_some);
        if names_needed {
            resolved.pipelines = self.pipelines(ghl, event, token).await?;
        }
        let assignee = match &event.assigned_user {
            Some(AssignedUser::Email(email)) => Some(email),
            _ => None,
        };
        for email in assignee.into_iter().chain(emails) {
            let id = self.user(ghl, &event.location_id, email, token).await?;
            resolved.users.extend(id.map(|id| (email.clone(), id)));
        }
        Ok(resolved)
    }

    /// The location's pipelines: cached, fetched again (at most once a minute) when the event
    /// names an id the cache does not know.
    async fn pipelines(
        &self,
        ghl: &GhlClient,
        event: &Event,
        token: &SecretString,
    ) -> Result<Option<Arc<Pipelines>>, CallError> {
        let location = &event.location_id;
        let mut cache = self.pipelines.lock().await;
        let known = cache.get(location).cloned();
        let stale = match &known {
            None => true,
            Some((p, fetched)) => {
                let unknown_pipeline = event
                    .pipeline_id
                    .as_deref()
                    .is_some_and(|id| p.pipeline_name(location, id).is_none());
                let unknown_stage = event
                    .stage_id
                    .as_deref()
                    .is_some_and(|id| p.stage_name(location, id).is_none());
                (unknown_pipeline || unknown_stage) && fetched.elapsed() > LOOKUP_REFRESH
            }
        };
        let known = known.map(|(p, _)| p);
        if !stale {
            return Ok(known);
        }
        match self.tolerated(ghl.pipelines(token, location).await, location, &PIPELINES)? {
            Some(p) => {
                let p = Arc::new(p);
                cache.insert(location.clone(), (Arc::clone(&p), Instant::now()));
                Ok(Some(p))
            }
            None => {
                // Refused: not asked again for a minute (each retry asking again would spend
                // the location's budget before the followers call it waits for).
                let kept = known.unwrap_or_default();
                cache.insert(location.clone(), (Arc::clone(&kept), Instant::now()));
                Ok(Some(kept))
            }
        }
    }

    /// The id of the location's user with this email: cached; a missing one is looked up
    /// again at most once a minute.
    async fn user(
        &self,
        ghl: &GhlClient,
        location: &LocationId,
        email: &str,
        token: &SecretString,
    ) -> Result<Option<UserId>, CallError> {
        let key = (location.clone(), email.trim().to_lowercase());
        let cached = self.users.lock().await.get(&key).cloned();
        if let Some((id, at)) = cached {
            if id.is_some() || at.elapsed() < LOOKUP_REFRESH {
                return Ok(id);
            }
        }
        let id = match self.company(ghl, location, token).await? {
            Some(company) => {
                let found = ghl.user_by_email(token, &company, location, email).await;
                self.tolerated(found, location, &USERS)?.flatten()
            }
            None => None,
        };
        let mut users = self.users.lock().await;
        users.insert(key, (id.clone(), Instant::now()));
        Ok(id)
    }

    /// The location's company id, which the users search needs.
    async fn company(
        &self,
        ghl: &GhlClient,
        location: &LocationId,
        token: &SecretString,
    ) -> Result<Option<String>, CallError> {
        let info = self.location(ghl, location, token).await?;
        Ok(info.map(|i| i.company_id))
    }

    /// The location's time zone, whose days pools' away dates are: `None` when it cannot be
    /// read or names no zone known here.
    pub async fn time_zone(
        &self,
        ghl: &GhlClient,
        location: &LocationId,
        token: Option<&SecretString>,
    ) -> Result<Option<chrono_tz::Tz>, CallError> {
        let Some(token) = token else {
            return Ok(self.known_time_zone(location).await);
        };
        let info = self.location(ghl, location, token).await?;
        Ok(info.and_then(|i| i.time_zone))
    }

    /// The location's time zone as last read, without asking.
    pub async fn known_time_zone(&self, location: &LocationId) -> Option<chrono_tz::Tz> {
        let cached = self.locations.lock().await.get(location).cloned();
        cached.and_then(|(info, _)| info?.time_zone)
    }

    /// The location as read (`None`: the lookup was refused): cached for an hour (a refusal
    /// for a minute).
    async fn location(
        &self,
        ghl: &GhlClient,
        location: &LocationId,
        token: &SecretString,
    ) -> Result<Option<LocationInfo>, CallError> {
        let cached = self.locations.lock().await.get(location).cloned();
        if let Some((info, at)) = cached {
            let fresh = if info.is_some() {
                LOCATION_REFRESH
            } else {
                LOOKUP_REFRESH
            };
            if at.elapsed() < fresh {
                return Ok(info);
            }
        }
        let info = ghl.location(token, location).await;
        let info = self.tolerated(info, location, &LOCATION)?;
        let mut locations = self.locations.lock().await;
        locations.insert(location.clone(), (info.clone(), Instant::now()));
        Ok(info)
    }
}

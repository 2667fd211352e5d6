//! What every request handler shares: the service's parts, cheap to clone.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::Notify;

use super::auth::Verifier;
use super::guard::{BodyBudget, Rejections};
use crate::access::{Access, OAuth};
use crate::metrics::Metrics;
use crate::rules::LiveRules;
use crate::store::Store;
use crate::worker::Worker;

/// Shared by every request; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub verifier: Arc<Verifier>,
    pub rules: Arc<LiveRules>,
    /// False once shutdown began: intake answers 429.
    pub accepting: Arc<AtomicBool>,
    /// Wakes the worker now (work due now: replays).
    pub wake: Arc<Notify>,
    /// Told when an event is stored: wakes the worker once it can be due (see
    /// [`wake_when_due`]).
    pub arrived: Arc<Notify>,
    /// How long a contact's work waits after its latest webhook.
    pub settle_delay: Duration,
    /// Bearer token of the admin API; `None` turns the API off.
    pub admin_token: Option<Arc<SecretString>>,
    /// The console's session keys (derived from the admin token); `None`: no console.
    pub console: Option<Arc<super::session::Keys>>,
    pub metrics: Arc<Metrics>,
    /// Body bytes that may be being received at once.
    pub body_budget: Arc<BodyBudget>,
    /// Rejected webhooks since the last summary.
    pub rejections: Arc<Rejections>,
    /// Which locations are served, and their credentials' state.
    pub access: Access,
    /// App mode's install flow; `None` without app mode.
    pub install: Option<Arc<Install>>,
    /// The worker, for the admin API's reapply and undo.
    pub worker: Arc<Worker>,
}

/// What the install flow needs (app mode only).
#[derive(Debug)]
pub struct Install {
    pub oauth: Arc<OAuth>,
    /// GoHighLevel's authorization page, and its white-label host's.
    pub authorize_url: reqwest::Url,
    pub whitelabel_authorize_url: reqwest::Url,
    pub redirect_uri: String,
    pub scopes: String,
    /// `GHL_APP_ID`: install webhooks of other apps are ignored.
    pub app_id: Option<String>,
    /// Signs `state` (the client secret).
    pub state_key: SecretString,
    /// The public URL is HTTPS: the state cookie is `Secure`.
    pub secure_cookie: bool,
    /// Code exchanges in progress (each a call to GoHighLevel, for anyone who calls the
    /// callback): a few at a time, the rest answered 429.
    pub exchanges: tokio::sync::Semaphore,
}

/// Code exchanges at once.
pub const EXCHANGES: usize = 4;

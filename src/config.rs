//! `autofollow serve` configuration: environment variables (each also a flag), validated at
//! start-up with every problem reported at once, into one settings value per component
//! ([`WebSettings`], [`StoreSettings`], [`GhlSettings`], the worker's [`WorkerOptions`],
//! [`RulesSettings`]). Each setting takes one path: from its variable, through here, to the
//! component that uses it. Secrets are wrapped so they never print.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use secrecy::{ExposeSecret, SecretString};

use crate::access::{Pits, pits};
use crate::ghl::budget::RateLimit;
use crate::ghl::oauth::AppCredentials;
use crate::model::ids::LocationId;
use crate::rules::RuleSet;
use crate::seal::Sealer;
pub use crate::telemetry::LogFormat;
use crate::web::auth::{self, Verifier};
use crate::worker::{OnReload, RetryPolicy, WorkerOptions};

pub const DEFAULT_GHL_API: &str = "https://services.leadconnectorhq.com";
/// What autofollow calls: followers (contacts.write), pipeline names, users by email and the
/// location's company (lookups), and for company installs, location tokens.
pub const DEFAULT_SCOPES: &str = "contacts.readonly contacts.write opportunities.readonly users.readonly locations.readonly oauth.readonly oauth.write";
/// GoHighLevel's authorization page.
pub const DEFAULT_AUTHORIZE_URL: &str =
    "https://marketplace.gohighlevel.com/v2/oauth/chooselocation";
/// The same page on the white-label host (`/oauth/install?whitelabel=true`).
pub const WHITELABEL_AUTHORIZE_URL: &str =
    "https://marketplace.leadconnectorhq.com/v2/oauth/chooselocation";

/// Reads a secret flag or variable straight into a [`SecretString`], so that no plain copy
/// of it is kept (and `Debug` of the arguments shows `[REDACTED]`).
fn secret_arg(text: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(text.to_owned()))
}

/// The flags of `autofollow serve`; each reads its environment variable when not given.
#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// Address to listen on: webhooks, /healthz and /readyz (ready or not).
    #[arg(long, env = "AUTOFOLLOW_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: String,
    /// Address of the admin listener: /admin/…, /metrics and /readyz with details; `off`
    /// turns it off. Keep it unreachable from the internet.
    #[arg(
        long,
        env = "AUTOFOLLOW_ADMIN_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    pub admin_listen: String,
    /// Rule file or directory.
    #[arg(long, env = "AUTOFOLLOW_RULES", default_value = "rules")]
    pub rules: PathBuf,
    /// Store: sqlite://PATH (created if missing) or postgres://USER@HOST/DB (several replicas).
    #[arg(
        long,
        env = "AUTOFOLLOW_DATABASE_URL",
        default_value = "sqlite://data/autofollow.db"
    )]
    pub database_url: String,
    /// GoHighLevel API base URL.
    #[arg(long, env = "GHL_API_BASE_URL", default_value = DEFAULT_GHL_API)]
    pub ghl_api_base_url: String,
    /// Private Integration Token of the sub-account GHL_LOCATION_ID (used for that location
    /// only).
    #[arg(long, env = "GHL_TOKEN", hide_env_values = true, value_parser = secret_arg)]
    pub ghl_token: Option<SecretString>,
    /// The location (sub-account) GHL_TOKEN belongs to.
    #[arg(long, env = "GHL_LOCATION_ID")]
    pub ghl_location_id: Option<String>,
    /// YAML file mapping location id to token; read again when it changes.
    #[arg(long, env = "GHL_LOCATION_TOKENS_FILE")]
    pub ghl_location_tokens_file: Option<PathBuf>,
    /// App mode: the Marketplace app's client id (with GHL_CLIENT_SECRET, AUTOFOLLOW_PUBLIC_URL
    /// and AUTOFOLLOW_ENCRYPTION_KEY).
    #[arg(long, env = "GHL_CLIENT_ID")]
    pub ghl_client_id: Option<String>,
    #[arg(long, env = "GHL_CLIENT_SECRET", hide_env_values = true, value_parser = secret_arg)]
    pub ghl_client_secret: Option<SecretString>,
    /// The URL GoHighLevel and browsers reach this service at (the redirect URI is
    /// `{AUTOFOLLOW_PUBLIC_URL}/oauth/callback`).
    #[arg(long, env = "AUTOFOLLOW_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// The scopes asked for at install, space-separated.
    #[arg(long, env = "GHL_SCOPES", default_value = DEFAULT_SCOPES)]
    pub ghl_scopes: String,
    /// The app's id: INSTALL/UNINSTALL events of other apps are ignored.
    #[arg(long, env = "GHL_APP_ID")]
    pub ghl_app_id: Option<String>,
    /// 32 random bytes in base64 (`openssl rand -base64 32`) sealing OAuth tokens at rest;
    /// several, comma-separated, during a rotation (the first seals).
    #[arg(long, env = "AUTOFOLLOW_ENCRYPTION_KEY", hide_env_values = true, value_parser = secret_arg)]
    pub encryption_key: Option<SecretString>,
    /// The authorization page (chooselocation) installs are sent to.
    #[arg(long, env = "GHL_AUTHORIZE_URL", default_value = DEFAULT_AUTHORIZE_URL)]
    pub ghl_authorize_url: String,
    /// Shared secret for webhook authentication; several, comma-separated, during a rotation.
    #[arg(long, env = "AUTOFOLLOW_WEBHOOK_SECRET", hide_env_values = true, value_parser = secret_arg)]
    pub webhook_secret: Option<SecretString>,
    /// An app webhook body whose `timestamp` is further than this from now is refused (401).
    #[arg(long, env = "AUTOFOLLOW_WEBHOOK_MAX_AGE", default_value = "3h")]
    pub webhook_max_age: String,
    /// PEM public keys for X-GHL-Signature, inline or as comma-separated file paths.
    #[arg(long, env = "GHL_WEBHOOK_PUBLIC_KEYS")]
    pub ghl_webhook_public_keys: Option<String>,
    /// Evaluate and record, never call GoHighLevel (default: true when no token is set).
    #[arg(long, env = "AUTOFOLLOW_DRY_RUN", action = clap::ArgAction::Set)]
    pub dry_run: Option<bool>,
    /// GoHighLevel's request budget per location and window.
    #[arg(long, env = "AUTOFOLLOW_RATE_LIMIT", default_value = "100/10s")]
    pub rate_limit: String,
    /// GoHighLevel's request budget per location and day.
    #[arg(long, env = "AUTOFOLLOW_DAILY_LIMIT", default_value_t = 200_000)]
    pub daily_limit: u32,
    /// How long a contact's work waits after its latest webhook, so bursts combine (0 = off).
    #[arg(long, env = "AUTOFOLLOW_SETTLE_DELAY", default_value = "1s")]
    pub settle_delay: String,
    /// The longest a contact that keeps receiving webhooks waits: its work is decided at
    /// least this often (at least AUTOFOLLOW_SETTLE_DELAY).
    #[arg(long, env = "AUTOFOLLOW_SETTLE_MAX", default_value = "30s")]
    pub settle_max: String,
    /// The time zone whose days pools' away dates are: `location` (each location's own, read
    /// from GoHighLevel; UTC when it cannot be read), or an IANA name (Europe/Paris, UTC).
    #[arg(long, env = "AUTOFOLLOW_TIME_ZONE", default_value = "location")]
    pub time_zone: String,
    /// Drift repair: re-read from GoHighLevel, this often, the followers of each contact
    /// autofollow added someone to, and bring them to what the rules and the ledger want
    /// (7d, 24h; `off`: never).
    #[arg(long, env = "AUTOFOLLOW_RECONCILE_EVERY", default_value = "off")]
    pub reconcile_every: String,
    /// How long the follower list GoHighLevel returned is trusted to skip needless calls (0 = off).
    #[arg(long, env = "AUTOFOLLOW_FOLLOWERS_FRESHNESS", default_value = "60s")]
    pub followers_freshness: String,
    /// On SIGTERM, how long in-flight calls may finish before their events are released.
    /// Keep it below the orchestrator's kill timeout (docker stop: 10s unless
    /// stop_grace_period says otherwise).
    #[arg(long, env = "AUTOFOLLOW_SHUTDOWN_GRACE", default_value = "8s")]
    pub shutdown_grace: String,
    /// How long a worker holds an event it took; when its process dies, another replica (or
    /// the next run, with PostgreSQL) resumes the event after this.
    #[arg(long, env = "AUTOFOLLOW_LEASE", default_value = "60s")]
    pub lease: String,
    /// How long one GoHighLevel call may take before it counts as failed and is retried.
    #[arg(long, env = "GHL_TIMEOUT", default_value = "15s")]
    pub ghl_timeout: String,
    /// The wait before the first retry of a failed call; each further retry may wait up to
    /// twice as long (random within that ceiling), up to AUTOFOLLOW_RETRY_CAP. Retry-After wins.
    #[arg(long, env = "AUTOFOLLOW_RETRY_BASE", default_value = "1s")]
    pub retry_base: String,
    /// The longest wait between two attempts of a failed call.
    #[arg(long, env = "AUTOFOLLOW_RETRY_CAP", default_value = "5m")]
    pub retry_cap: String,
    /// Finished events and their decisions older than this are deleted (30d, 12h, …).
    #[arg(long, env = "AUTOFOLLOW_RETENTION", default_value = "30d")]
    pub retention: String,
    /// Watch the rule files and reload on change (turn off where file events do not arrive,
    /// e.g. some network filesystems; SIGHUP and POST /admin/reload still work).
    #[arg(long, env = "AUTOFOLLOW_WATCH_RULES", default_value_t = true, action = clap::ArgAction::Set)]
    pub watch_rules: bool,
    /// After a reload that changes the rules: `preview` logs (and shows in /readyz) what
    /// `autofollow reapply` would change, `apply` queues those changes, `off` does neither.
    #[arg(long, env = "AUTOFOLLOW_REAPPLY_ON_RELOAD", default_value = "preview")]
    pub reapply_on_reload: String,
    /// Bearer token of the admin API (/admin/…); without it the admin API is off.
    #[arg(long, env = "AUTOFOLLOW_ADMIN_TOKEN", hide_env_values = true, value_parser = secret_arg)]
    pub admin_token: Option<SecretString>,
    /// Log format: pretty or json. RUST_LOG filters.
    #[arg(long, env = "AUTOFOLLOW_LOG_FORMAT", default_value = "pretty")]
    pub log_format: String,
}

/// Validated configuration, one part per component.
#[derive(Debug, Clone)]
pub struct Config {
    pub web: WebSettings,
    pub store: StoreSettings,
    pub ghl: GhlSettings,
    pub worker: WorkerOptions,
    pub rules: RulesSettings,
    pub log_format: LogFormat,
    /// On SIGTERM, how long in-flight work may finish before its events are released.
    pub shutdown_grace: Duration,
}

/// The listeners and what intake and the admin API check.
#[derive(Debug, Clone)]
pub struct WebSettings {
    pub listen: SocketAddr,
    /// `None`: no admin listener.
    pub admin_listen: Option<SocketAddr>,
    pub verifier: Arc<Verifier>,
    /// `None`: the admin API is off.
    pub admin_token: Option<SecretString>,
}

#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub database_url: String,
    /// Finished events older than this are deleted.
    pub retention: Duration,
}

#[derive(Debug, Clone)]
pub struct GhlSettings {
    pub base_url: String,
    /// Private Integration Tokens by location.
    pub pits: Pits,
    /// The PITs' file, read again when it changes.
    pub tokens_file: Option<PathBuf>,
    /// `None`: no app mode (PITs only).
    pub oauth: Option<OAuthSettings>,
    pub timeout: Duration,
    pub rate_limit: RateLimit,
    pub daily_limit: u32,
}

/// App mode: a GoHighLevel Marketplace app with OAuth.
#[derive(Debug, Clone)]
pub struct OAuthSettings {
    pub app: AppCredentials,
    /// Where this service is reached from outside, without a trailing `/`.
    pub public_url: String,
    pub scopes: String,
    /// `GHL_APP_ID`: install webhooks naming another app are ignored.
    pub app_id: Option<String>,
    pub sealer: Sealer,
    pub authorize_url: reqwest::Url,
}

impl OAuthSettings {
    /// `{AUTOFOLLOW_PUBLIC_URL}/oauth/callback`, the redirect URI to enter on the app page.
    pub fn redirect_uri(&self) -> String {
        format!("{}/oauth/callback", self.public_url)
    }

    /// The app's id for `GET /oauth/installedLocations`: `GHL_APP_ID`, else the part of the
    /// client id before its first `-` (GoHighLevel's client ids are `{appId}-{suffix}`).
    pub fn installed_app_id(&self) -> String {
        self.app_id.clone().unwrap_or_else(|| {
            let id = &self.app.client_id;
            id.split_once('-')
                .map_or(id.as_str(), |(app, _)| app)
                .to_owned()
        })
    }
}

#[derive(Debug, Clone)]
pub struct RulesSettings {
    pub path: PathBuf,
    /// The set loaded at start-up.
    pub set: Arc<RuleSet>,
    /// Reload when the files change.
    pub watch: bool,
    /// What a reload that changes the rules does to the contacts already decided.
    pub on_reload: OnReload,
}

/// Every configuration problem found.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration:")?;
        for problem in &self.0 {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

/// The problems found so far; each check records its own and yields `None` on failure, so
/// every setting is checked before start-up is refused.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    /// The value, or `None` with `{variable}: {error}` recorded.
    fn check<T, E: fmt::Display>(&mut self, variable: &str, result: Result<T, E>) -> Option<T> {
        result
            .map_err(|e| self.0.push(format!("{variable}: {e}")))
            .ok()
    }

    /// A duration (`1s`, `500ms`, `0`) at least `min`.
    fn duration(&mut self, variable: &str, text: &str, min: Duration) -> Option<Duration> {
        let parsed = match text.trim() {
            "0" => Ok(Duration::ZERO),
            t => humantime::parse_duration(t)
                .map_err(|e| format!("`{t}` is not a duration such as 1s or 500ms: {e}")),
        };
        let checked = parsed.and_then(|d| match d >= min {
            true => Ok(d),
            false if min == Duration::from_nanos(1) => Err("more than 0".to_owned()),
            false => Err(format!("at least {}", humantime::format_duration(min))),
        });
        self.check(variable, checked)
    }
}

impl Config {
    pub fn from_args(args: ServeArgs) -> Result<Config, ConfigError> {
        let mut p = Problems::default();
        let web = web(&args, &mut p);
        let store = store(&args, &mut p);
        let ghl = ghl(&args, &mut p);
        let dry_run = ghl.as_ref().map(|g| {
            args.dry_run
                .unwrap_or(g.pits.is_empty() && g.oauth.is_none())
        });
        let worker = worker(&args, &mut p);
        let rules = p.check("AUTOFOLLOW_RULES", RuleSet::load(&args.rules));
        let on_reload = p.check(
            "AUTOFOLLOW_REAPPLY_ON_RELOAD",
            OnReload::parse(&args.reapply_on_reload),
        );
        let log_format = p.check(
            "AUTOFOLLOW_LOG_FORMAT",
            match args.log_format.trim() {
                "pretty" => Ok(LogFormat::Pretty),
                "json" => Ok(LogFormat::Json),
                other => Err(format!("`{other}` is neither pretty nor json")),
            },
        );
        let shutdown_grace = p.duration(
            "AUTOFOLLOW_SHUTDOWN_GRACE",
            &args.shutdown_grace,
            Duration::ZERO,
        );
        let config = (|| {
            Some(Config {
                web: web?,
                store: store?,
                ghl: ghl?,
                worker: WorkerOptions {
                    dry_run: dry_run?,
                    ..worker?
                },
                rules: RulesSettings {
                    path: args.rules.clone(),
                    set: Arc::new(rules?),
                    watch: args.watch_rules,
                    on_reload: on_reload?,
                },
                log_format: log_format?,
                shutdown_grace: shutdown_grace?,
            })
        })();
        match config {
            Some(config) if p.0.is_empty() => Ok(config),
            _ => Err(ConfigError(p.0)),
        }
    }
}

fn web(args: &ServeArgs, p: &mut Problems) -> Option<WebSettings> {
    let listen = p.check(
        "AUTOFOLLOW_LISTEN",
        args.listen
            .trim()
            .parse::<SocketAddr>()
            .map_err(|_| format!("`{}` is not an address such as 0.0.0.0:8080", args.listen)),
    );
    let admin_listen = p.check(
        "AUTOFOLLOW_ADMIN_LISTEN",
        match args.admin_listen.trim() {
            "off" => Ok(None),
            text => text.parse::<SocketAddr>().map(Some).map_err(|_| {
                format!("`{text}` is neither an address such as 127.0.0.1:9090 nor `off`")
            }),
        },
    );
    let admin_token = args
        .admin_token
        .as_ref()
        .map(|t| t.expose_secret().trim())
        .filter(|t| !t.is_empty())
        .map(|t| auth::check_token_length(t).map(|()| SecretString::from(t)))
        .transpose();
    let admin_token = p.check("AUTOFOLLOW_ADMIN_TOKEN", admin_token);
    let verifier = verifier(args, p);
    Some(WebSettings {
        listen: listen?,
        admin_listen: admin_listen?,
        verifier: Arc::new(verifier?),
        admin_token: admin_token?,
    })
}

/// Public keys, shared secrets and the max age of app bodies.
fn verifier(args: &ServeArgs, p: &mut Problems) -> Option<Verifier> {
    let keys = match args
        .ghl_webhook_public_keys
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => auth::parse_public_keys(auth::GHL_PUBLIC_KEY_PEM).map_err(|e| e.0),
        Some(inline) if inline.contains("-----BEGIN") => {
            auth::parse_public_keys(inline).map_err(|e| e.0)
        }
        Some(paths) => public_key_files(paths),
    };
    let keys = p.check("GHL_WEBHOOK_PUBLIC_KEYS", keys);
    let secrets = match args
        .webhook_secret
        .as_ref()
        .map(|s| s.expose_secret().trim())
        .filter(|s| !s.is_empty())
    {
        None => Ok(Vec::new()),
        Some(list) => auth::parse_secrets(list),
    };
    let secrets = p.check("AUTOFOLLOW_WEBHOOK_SECRET", secrets);
    let max_age = p.duration(
        "AUTOFOLLOW_WEBHOOK_MAX_AGE",
        &args.webhook_max_age,
        Duration::from_secs(60),
    );
    let verifier = Verifier::new(keys?, secrets?);
    p.check("AUTOFOLLOW_WEBHOOK_SECRET", verifier)
        .map(|v| v.with_max_age(max_age.unwrap_or_default()))
        .filter(|_| max_age.is_some())
}

/// Every key of comma-separated PEM files.
fn public_key_files(paths: &str) -> Result<Vec<ed25519_dalek::VerifyingKey>, String> {
    let mut keys = Vec::new();
    for path in paths.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        keys.extend(auth::parse_public_keys(&text).map_err(|e| format!("{path}: {e}"))?);
    }
    Ok(keys)
}

fn store(args: &ServeArgs, p: &mut Problems) -> Option<StoreSettings> {
    let database_url = args.database_url.trim().to_owned();
    let url = if crate::store::is_postgres(&database_url) || database_url.starts_with("sqlite:") {
        Ok(database_url)
    } else {
        // Only the scheme: the URL may hold a password.
        let scheme = database_url.split(':').next().unwrap_or_default();
        Err(format!(
            "`{scheme}:` is neither sqlite://PATH nor postgres://…"
        ))
    };
    let database_url = p.check("AUTOFOLLOW_DATABASE_URL", url);
    let retention = p.check(
        "AUTOFOLLOW_RETENTION",
        humantime::parse_duration(args.retention.trim())
            .map_err(|e| format!("`{}` is not a duration such as 30d: {e}", args.retention)),
    );
    Some(StoreSettings {
        database_url: database_url?,
        retention: retention?,
    })
}

fn ghl(args: &ServeArgs, p: &mut Problems) -> Option<GhlSettings> {
    let base = args
        .ghl_api_base_url
        .trim()
        .trim_end_matches('/')
        .to_owned();
    let base_url = p.check(
        "GHL_API_BASE_URL",
        match base.starts_with("https://") || base.starts_with("http://") {
            true => Ok(base.clone()),
            false => Err(format!("`{base}` is not an http(s) URL")),
        },
    );
    let one = p.check("GHL_TOKEN", ghl_token(args));
    let by_location = match &args.ghl_location_tokens_file {
        None => Some(HashMap::new()),
        Some(path) => p.check("GHL_LOCATION_TOKENS_FILE", pits::read_file(path)),
    };
    let timeout = p.duration("GHL_TIMEOUT", &args.ghl_timeout, Duration::from_nanos(1));
    let rate_limit = p.check(
        "AUTOFOLLOW_RATE_LIMIT",
        args.rate_limit.parse::<RateLimit>(),
    );
    let daily_limit = p.check(
        "AUTOFOLLOW_DAILY_LIMIT",
        match args.daily_limit >= 2 {
            true => Ok(args.daily_limit),
            false => Err("at least 2"),
        },
    );
    let oauth = oauth(args, p);
    Some(GhlSettings {
        base_url: base_url?,
        pits: Pits::new(one?, by_location?),
        tokens_file: args.ghl_location_tokens_file.clone(),
        oauth: oauth?,
        timeout: timeout?,
        rate_limit: rate_limit?,
        daily_limit: daily_limit?,
    })
}

/// App mode's settings: none of them set is no app mode; `GHL_CLIENT_ID` set needs the rest.
fn oauth(args: &ServeArgs, p: &mut Problems) -> Option<Option<OAuthSettings>> {
    let Some(client_id) = args
        .ghl_client_id
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty())
    else {
        for (set, name) in [
            (args.ghl_client_secret.is_some(), "GHL_CLIENT_SECRET"),
            (args.encryption_key.is_some(), "AUTOFOLLOW_ENCRYPTION_KEY"),
        ] {
            if set {
                p.0.push(format!(
                    "{name}: set without GHL_CLIENT_ID (app mode needs both)"
                ));
            }
        }
        return Some(None);
    };
    let secret = p.check(
        "GHL_CLIENT_SECRET",
        args.ghl_client_secret
            .clone()
            .ok_or("required in app mode (GHL_CLIENT_ID is set)"),
    );
    let public_url = p.check(
        "AUTOFOLLOW_PUBLIC_URL",
        match args
            .public_url
            .as_deref()
            .map(|u| u.trim().trim_end_matches('/'))
        {
            Some(u) if u.starts_with("https://") || u.starts_with("http://") => Ok(u.to_owned()),
            Some(_) => Err("must be an http(s) URL, such as https://autofollow.example.com"),
            None => Err("required in app mode: the URL GoHighLevel redirects installs to"),
        },
    );
    let sealer = p.check(
        "AUTOFOLLOW_ENCRYPTION_KEY",
        match &args.encryption_key {
            Some(key) => Sealer::parse(key),
            None => Err(
                "required in app mode: 32 random bytes in base64 (openssl rand -base64 32)"
                    .to_owned(),
            ),
        },
    );
    let authorize_url = p.check(
        "GHL_AUTHORIZE_URL",
        reqwest::Url::parse(args.ghl_authorize_url.trim())
            .map_err(|e| e.to_string())
            .and_then(|u| match u.scheme() {
                "https" | "http" => Ok(u),
                _ => Err("must be an http(s) URL".to_owned()),
            }),
    );
    Some(Some(OAuthSettings {
        app: AppCredentials {
            client_id: client_id.to_owned(),
            client_secret: secret?,
        },
        public_url: public_url?,
        scopes: args
            .ghl_scopes
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
        app_id: args.ghl_app_id.clone().filter(|a| !a.trim().is_empty()),
        sealer: sealer?,
        authorize_url: authorize_url?,
    }))
}

/// `GHL_LOCATION_TOKENS_FILE`: a YAML mapping of location id to token. Errors never quote a
/// token.
/// `GHL_TOKEN` and the location it belongs to: a PIT is one sub-account's.
fn ghl_token(args: &ServeArgs) -> Result<Option<(LocationId, SecretString)>, String> {
    let token = args
        .ghl_token
        .as_ref()
        .map(|t| t.expose_secret().trim())
        .filter(|t| !t.is_empty());
    let location = args
        .ghl_location_id
        .as_deref()
        .map(str::trim)
        .filter(|l| !l.is_empty());
    match (token, location) {
        (None, _) => Ok(None),
        (Some(_), None) => Err(
            "needs GHL_LOCATION_ID, the id of the sub-account (location) \
             the token belongs to; a Private Integration Token works for that location only \
             (several locations: GHL_LOCATION_TOKENS_FILE)"
                .to_owned(),
        ),
        (Some(token), Some(location)) => {
            let location =
                LocationId::parse(location).map_err(|e| format!("GHL_LOCATION_ID: {e}"))?;
            Ok(Some((location, SecretString::from(token.to_owned()))))
        }
    }
}

/// The worker's options (all but `dry_run`, which depends on the tokens).
fn worker(args: &ServeArgs, p: &mut Problems) -> Option<WorkerOptions> {
    let zero = Duration::ZERO;
    let settle_delay = p.duration("AUTOFOLLOW_SETTLE_DELAY", &args.settle_delay, zero);
    let settle_max = p.duration("AUTOFOLLOW_SETTLE_MAX", &args.settle_max, zero);
    let lease = p.duration("AUTOFOLLOW_LEASE", &args.lease, Duration::from_secs(1));
    let followers_fresh = p.duration(
        "AUTOFOLLOW_FOLLOWERS_FRESHNESS",
        &args.followers_freshness,
        zero,
    );
    let retry_base = p.duration("AUTOFOLLOW_RETRY_BASE", &args.retry_base, zero);
    let retry_cap = p.duration("AUTOFOLLOW_RETRY_CAP", &args.retry_cap, zero);
    let reconcile_every = match args.reconcile_every.trim() {
        "off" => Some(None),
        every => p
            .duration("AUTOFOLLOW_RECONCILE_EVERY", every, Duration::from_secs(1))
            .map(Some),
    };
    let zone = args.time_zone.trim();
    let time_zone = p.check(
        "AUTOFOLLOW_TIME_ZONE",
        match zone.eq_ignore_ascii_case("location") {
            true => Ok(None),
            false => zone.parse::<chrono_tz::Tz>().map(Some).map_err(|_| {
                format!("`{zone}` is not a time zone name (such as Europe/Paris) nor `location`")
            }),
        },
    );
    let defaults = WorkerOptions::default();
    Some(WorkerOptions {
        time_zone: time_zone?,
        reconcile_every: reconcile_every?,
        settle_delay: settle_delay?,
        settle_max: settle_max?.max(settle_delay?),
        lease: lease?,
        followers_fresh: followers_fresh?,
        retry: RetryPolicy {
            base: retry_base?,
            cap: retry_cap?.max(retry_base?),
            ..defaults.retry
        },
        ..defaults
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_listed_and_no_secret_is() {
        let dir = std::env::temp_dir().join("autofollow-config-test-tokens.yaml");
        std::fs::write(&dir, "- not a map\n").ok();
        let args = ServeArgs {
            listen: "nowhere".into(),
            rules: "does/not/exist".into(),
            database_url: "mysql://x".into(),
            ghl_api_base_url: "ftp://x".into(),
            admin_listen: "everywhere".into(),
            ghl_token: Some("tok-HIDDEN-1".into()),
            ghl_location_id: None,
            ghl_location_tokens_file: Some(dir),
            ghl_client_id: Some("app-client".into()),
            ghl_client_secret: None,
            public_url: Some("ftp://nowhere".into()),
            ghl_scopes: DEFAULT_SCOPES.into(),
            ghl_app_id: None,
            encryption_key: Some("HIDDEN-KEY-not-base64".into()),
            ghl_authorize_url: "ftp://nowhere".into(),
            webhook_secret: Some("whsec_!!HIDDEN!!".into()),
            webhook_max_age: "ages".into(),
            ghl_webhook_public_keys: Some(
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----".into(),
            ),
            dry_run: None,
            log_format: "xml".into(),
            admin_token: Some("admin-HIDDEN".into()),
            retention: "forever".into(),
            settle_delay: "soon".into(),
            settle_max: "30s".into(),
            time_zone: "Mars/Olympus".into(),
            reconcile_every: "sometimes".into(),
            shutdown_grace: "patiently".into(),
            lease: "0s".into(),
            rate_limit: "lots".into(),
            followers_freshness: "a while".into(),
            ghl_timeout: "0s".into(),
            retry_base: "quickly".into(),
            retry_cap: "never".into(),
            watch_rules: true,
            reapply_on_reload: "sometimes".into(),
            daily_limit: 200_000,
        };
        let err = Config::from_args(args).map_or_else(|e| e.to_string(), |_| String::new());
        for needle in [
            "AUTOFOLLOW_LISTEN",
            "AUTOFOLLOW_ADMIN_LISTEN",
            "AUTOFOLLOW_ADMIN_TOKEN",
            "AUTOFOLLOW_WEBHOOK_SECRET",
            "AUTOFOLLOW_WEBHOOK_MAX_AGE",
            "AUTOFOLLOW_DATABASE_URL",
            "GHL_API_BASE_URL",
            "GHL_LOCATION_TOKENS_FILE",
            "GHL_WEBHOOK_PUBLIC_KEYS",
            "AUTOFOLLOW_LOG_FORMAT",
            "AUTOFOLLOW_RULES",
            "AUTOFOLLOW_REAPPLY_ON_RELOAD",
            "AUTOFOLLOW_RECONCILE_EVERY",
            "AUTOFOLLOW_RETENTION",
            "AUTOFOLLOW_TIME_ZONE: `Mars/Olympus` is not a time zone name",
            "AUTOFOLLOW_SETTLE_DELAY",
            "AUTOFOLLOW_SHUTDOWN_GRACE",
            "AUTOFOLLOW_LEASE",
            "AUTOFOLLOW_RATE_LIMIT",
            "AUTOFOLLOW_FOLLOWERS_FRESHNESS",
            "GHL_TIMEOUT",
            "AUTOFOLLOW_RETRY_BASE",
            "AUTOFOLLOW_RETRY_CAP",
            "GHL_CLIENT_SECRET",
            "AUTOFOLLOW_PUBLIC_URL",
            "AUTOFOLLOW_ENCRYPTION_KEY",
            "GHL_AUTHORIZE_URL",
            "GHL_TOKEN: needs GHL_LOCATION_ID",
        ] {
            assert!(err.contains(needle), "{needle} missing from:\n{err}");
        }
        assert!(!err.contains("HIDDEN"), "{err}");
    }

    #[test]
    fn the_app_id_is_ghl_app_id_else_the_client_ids_prefix() {
        let settings = |app_id: Option<&str>| OAuthSettings {
            app: AppCredentials {
                client_id: "66a0419a0dffa47fb5f8b22f-lzx5tcac".into(),
                client_secret: "s".into(),
            },
            public_url: "https://x".into(),
            scopes: String::new(),
            app_id: app_id.map(str::to_owned),
            sealer: Sealer::parse(&SecretString::from(
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            ))
            .unwrap_or_else(|e| panic!("{e}")),
            authorize_url: DEFAULT_AUTHORIZE_URL
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
        };
        assert_eq!(
            settings(None).installed_app_id(),
            "66a0419a0dffa47fb5f8b22f"
        );
        assert_eq!(settings(Some("explicit")).installed_app_id(), "explicit");
    }

    #[test]
    fn dry_run_defaults_to_true_without_tokens() {
        let rules = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules");
        let args = ServeArgs {
            listen: "127.0.0.1:0".into(),
            admin_listen: "off".into(),
            webhook_max_age: "3h".into(),
            rules,
            database_url: "sqlite://x.db".into(),
            ghl_api_base_url: DEFAULT_GHL_API.into(),
            log_format: "json".into(),
            retention: "30d".into(),
            settle_delay: "1s".into(),
            settle_max: "30s".into(),
            time_zone: "UTC".into(),
            shutdown_grace: "8s".into(),
            lease: "60s".into(),
            rate_limit: "100/10s".into(),
            daily_limit: 200_000,
            followers_freshness: "60s".into(),
            ghl_timeout: "15s".into(),
            retry_base: "1s".into(),
            retry_cap: "5m".into(),
            reapply_on_reload: "preview".into(),
            reconcile_every: "off".into(),
            ..ServeArgs::default()
        };
        let config = Config::from_args(args.clone()).ok();
        assert_eq!(config.map(|c| c.worker.dry_run), Some(true));
        let with_token = ServeArgs {
            ghl_token: Some("t".into()),
            ghl_location_id: Some("L1".into()),
            ..args.clone()
        };
        assert_eq!(
            Config::from_args(with_token).ok().map(|c| c.worker.dry_run),
            Some(false)
        );

        // What the worker takes from the configuration reaches it (freshness was once
        // parsed and then ignored).
        let tuned = ServeArgs {
            followers_freshness: "0".into(),
            retry_base: "250ms".into(),
            retry_cap: "2s".into(),
            settle_delay: "250ms".into(),
            ..args
        };
        let config = Config::from_args(tuned).unwrap_or_else(|e| panic!("{e}"));
        let options = config.worker;
        assert_eq!(options.followers_fresh, std::time::Duration::ZERO);
        assert_eq!(options.retry.base, std::time::Duration::from_millis(250));
        assert_eq!(options.retry.cap, std::time::Duration::from_secs(2));
        assert_eq!(
            options.retry.max_attempts,
            crate::worker::RetryPolicy::default().max_attempts
        );
        assert_eq!(options.settle_delay, std::time::Duration::from_millis(250));
    }
}

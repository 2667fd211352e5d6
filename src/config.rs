//! `autofollow serve` configuration: environment variables (each also a flag), validated at
//! start-up with every problem reported at once. Secrets are wrapped so they never print.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use secrecy::{ExposeSecret, SecretString};

use crate::auth::{self, Verifier};
use crate::model::ids::LocationId;
use crate::rules::RuleSet;
pub use crate::telemetry::LogFormat;

/// Reads a secret flag or variable straight into a [`SecretString`], so that no plain copy
/// of it is kept (and `Debug` of the arguments shows `[REDACTED]`).
fn secret_arg(text: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(text.to_owned()))
}

pub const DEFAULT_GHL_API: &str = "https://services.leadconnectorhq.com";

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
    /// Private Integration Token for every location without a token of its own.
    #[arg(long, env = "GHL_TOKEN", hide_env_values = true, value_parser = secret_arg)]
    pub ghl_token: Option<SecretString>,
    /// YAML file mapping location id to token.
    #[arg(long, env = "GHL_LOCATION_TOKENS_FILE")]
    pub ghl_location_tokens_file: Option<PathBuf>,
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
    /// Bearer token of the admin API (/admin/…); without it the admin API is off.
    #[arg(long, env = "AUTOFOLLOW_ADMIN_TOKEN", hide_env_values = true, value_parser = secret_arg)]
    pub admin_token: Option<SecretString>,
    /// Log format: pretty or json. RUST_LOG filters.
    #[arg(long, env = "AUTOFOLLOW_LOG_FORMAT", default_value = "pretty")]
    pub log_format: String,
}

/// GoHighLevel tokens by location.
#[derive(Clone, Default)]
pub struct Tokens {
    default: Option<SecretString>,
    by_location: HashMap<LocationId, SecretString>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("default", &self.default.as_ref().map(|_| "[redacted]"))
            .field("locations", &self.by_location.len())
            .finish()
    }
}

impl Tokens {
    pub fn new(
        default: Option<SecretString>,
        by_location: HashMap<LocationId, SecretString>,
    ) -> Tokens {
        Tokens {
            default,
            by_location,
        }
    }

    /// The location's own token, else the default one.
    pub fn for_location(&self, location: &LocationId) -> Option<&SecretString> {
        self.by_location.get(location).or(self.default.as_ref())
    }

    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.by_location.is_empty()
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `None`: no admin listener.
    pub admin_listen: Option<SocketAddr>,
    pub rules_path: PathBuf,
    pub rules: Arc<RuleSet>,
    pub database_url: String,
    pub ghl_api_base_url: String,
    pub tokens: Tokens,
    pub verifier: Arc<Verifier>,
    pub dry_run: bool,
    pub log_format: LogFormat,
    pub admin_token: Option<SecretString>,
    pub retention: std::time::Duration,
    pub settle_delay: std::time::Duration,
    pub shutdown_grace: std::time::Duration,
    pub lease: std::time::Duration,
    pub rate_limit: crate::ghl::budget::RateLimit,
    pub daily_limit: u32,
    pub followers_freshness: std::time::Duration,
    pub ghl_timeout: std::time::Duration,
    pub retry_base: std::time::Duration,
    pub retry_cap: std::time::Duration,
    pub watch_rules: bool,
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

impl Config {
    pub fn from_args(args: ServeArgs) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let listen = args
            .listen
            .parse::<SocketAddr>()
            .map_err(|_| {
                problems.push(format!(
                    "AUTOFOLLOW_LISTEN: `{}` is not an address such as 0.0.0.0:8080",
                    args.listen
                ))
            })
            .ok();
        let admin_listen = match args.admin_listen.trim() {
            "off" => Some(None),
            text => text
                .parse::<SocketAddr>()
                .map(Some)
                .map_err(|_| {
                    problems.push(format!(
                        "AUTOFOLLOW_ADMIN_LISTEN: `{text}` is neither an address such as 127.0.0.1:9090 nor `off`"
                    ))
                })
                .ok(),
        };
        let database_url = args.database_url.trim().to_owned();
        if !crate::store::is_postgres(&database_url) && !database_url.starts_with("sqlite:") {
            // Only the scheme: the URL may hold a password.
            let scheme = database_url.split(':').next().unwrap_or_default();
            problems.push(format!(
                "AUTOFOLLOW_DATABASE_URL: `{scheme}:` is neither sqlite://PATH nor postgres://…"
            ));
        }
        let base = args
            .ghl_api_base_url
            .trim()
            .trim_end_matches('/')
            .to_owned();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            problems.push(format!("GHL_API_BASE_URL: `{base}` is not an http(s) URL"));
        }
        let default_token = args
            .ghl_token
            .filter(|t| !t.expose_secret().trim().is_empty())
            .map(|t| SecretString::from(t.expose_secret().trim().to_owned()));
        let mut by_location = HashMap::new();
        if let Some(path) = &args.ghl_location_tokens_file {
            match std::fs::read_to_string(path) {
                Err(e) => problems.push(format!(
                    "GHL_LOCATION_TOKENS_FILE: cannot read {}: {e}",
                    path.display()
                )),
                Ok(text) => {
                    match serde_yaml::from_str::<HashMap<String, String>>(&text) {
                        Err(e) => problems.push(format!(
                            "GHL_LOCATION_TOKENS_FILE: {} must map location ids to tokens: {}",
                            path.display(),
                            // serde_yaml errors quote the offending value; keep only where it is.
                            e.location().map_or(
                                "not a mapping of strings".to_owned(),
                                |l| format!("problem at line {}, column {}", l.line(), l.column())
                            )
                        )),
                        Ok(map) => {
                            for (location, token) in map {
                                match LocationId::parse(location.trim()) {
                                    _ if token.trim().is_empty() => problems.push(format!("GHL_LOCATION_TOKENS_FILE: the token of location {location} is empty")),
                                    Err(e) => problems.push(format!("GHL_LOCATION_TOKENS_FILE: {e}")),
                                    Ok(id) => {
                                        by_location.insert(id, SecretString::from(token.trim().to_owned()));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        let tokens = Tokens::new(default_token, by_location);
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
            Some(paths) => {
                let mut keys = Vec::new();
                let mut error = None;
                for path in paths.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    match std::fs::read_to_string(path) {
                        Ok(text) => match auth::parse_public_keys(&text) {
                            Ok(k) => keys.extend(k),
                            Err(e) => error = Some(format!("{path}: {e}")),
                        },
                        Err(e) => error = Some(format!("cannot read {path}: {e}")),
                    }
                }
                error.map_or(Ok(keys), Err)
            }
        }
        .map_err(|e| problems.push(format!("GHL_WEBHOOK_PUBLIC_KEYS: {e}")))
        .ok();
        let secrets = match args
            .webhook_secret
            .as_ref()
            .map(|s| s.expose_secret().trim())
            .filter(|s| !s.is_empty())
        {
            None => Some(Vec::new()),
            Some(list) => auth::parse_secrets(list)
                .map_err(|e| problems.push(format!("AUTOFOLLOW_WEBHOOK_SECRET: {e}")))
                .ok(),
        };
        let admin_token = args
            .admin_token
            .as_ref()
            .map(|t| t.expose_secret().trim())
            .filter(|t| !t.is_empty())
            .map(SecretString::from);
        if let Some(Err(e)) = admin_token
            .as_ref()
            .map(|t| auth::check_token_length(t.expose_secret()))
        {
            problems.push(format!("AUTOFOLLOW_ADMIN_TOKEN: {e}"));
        }
        let log_format = match args.log_format.trim() {
            "pretty" => Some(LogFormat::Pretty),
            "json" => Some(LogFormat::Json),
            other => {
                problems.push(format!(
                    "AUTOFOLLOW_LOG_FORMAT: `{other}` is neither pretty nor json"
                ));
                None
            }
        };
        let rules = RuleSet::load(&args.rules)
            .map_err(|e| problems.push(format!("AUTOFOLLOW_RULES: {e}")))
            .ok();
        let dry_run = args.dry_run.unwrap_or(tokens.is_empty());
        let mut duration = |name: &str, text: &str| match text.trim() {
            "0" => Some(std::time::Duration::ZERO),
            text => humantime::parse_duration(text)
                .map_err(|e| {
                    problems.push(format!(
                        "{name}: `{text}` is not a duration such as 1s or 500ms: {e}"
                    ))
                })
                .ok(),
        };
        let settle_delay = duration("AUTOFOLLOW_SETTLE_DELAY", &args.settle_delay);
        let max_age = duration("AUTOFOLLOW_WEBHOOK_MAX_AGE", &args.webhook_max_age);
        let shutdown_grace = duration("AUTOFOLLOW_SHUTDOWN_GRACE", &args.shutdown_grace);
        let lease = duration("AUTOFOLLOW_LEASE", &args.lease);
        let followers_freshness =
            duration("AUTOFOLLOW_FOLLOWERS_FRESHNESS", &args.followers_freshness);
        let ghl_timeout = duration("GHL_TIMEOUT", &args.ghl_timeout);
        let retry_base = duration("AUTOFOLLOW_RETRY_BASE", &args.retry_base);
        let retry_cap = duration("AUTOFOLLOW_RETRY_CAP", &args.retry_cap);
        let max_age = max_age.filter(|d| *d >= std::time::Duration::from_secs(60));
        if max_age.is_none()
            && !problems
                .iter()
                .any(|p| p.starts_with("AUTOFOLLOW_WEBHOOK_MAX_AGE"))
        {
            problems.push("AUTOFOLLOW_WEBHOOK_MAX_AGE: at least 1m (GoHighLevel re-sends a webhook for about 70 minutes; the default 3h covers that)".to_owned());
        }
        let verifier = match (keys, secrets, max_age) {
            (Some(keys), Some(secrets), Some(max_age)) => Verifier::new(keys, secrets)
                .map(|v| v.with_max_age(max_age))
                .map_err(|e| problems.push(format!("AUTOFOLLOW_WEBHOOK_SECRET: {e}")))
                .ok(),
            _ => None,
        };
        let ghl_timeout = ghl_timeout.filter(|t| !t.is_zero());
        if ghl_timeout.is_none() && !problems.iter().any(|p| p.starts_with("GHL_TIMEOUT")) {
            problems.push("GHL_TIMEOUT: more than 0".to_owned());
        }
        let lease = lease.filter(|l| *l >= std::time::Duration::from_secs(1));
        if lease.is_none() && !problems.iter().any(|p| p.starts_with("AUTOFOLLOW_LEASE")) {
            problems.push("AUTOFOLLOW_LEASE: at least 1s".to_owned());
        }
        let rate_limit = args
            .rate_limit
            .parse::<crate::ghl::budget::RateLimit>()
            .map_err(|e| problems.push(format!("AUTOFOLLOW_RATE_LIMIT: {e}")))
            .ok();
        if args.daily_limit < 2 {
            problems.push("AUTOFOLLOW_DAILY_LIMIT: at least 2".to_owned());
        }
        let retention = humantime::parse_duration(args.retention.trim())
            .map_err(|e| {
                problems.push(format!(
                    "AUTOFOLLOW_RETENTION: `{}` is not a duration such as 30d: {e}",
                    args.retention
                ))
            })
            .ok();
        match (
            (listen, admin_listen),
            verifier,
            log_format,
            rules,
            retention,
            settle_delay,
            rate_limit,
            followers_freshness,
            shutdown_grace,
            lease,
            ghl_timeout,
            retry_base,
            retry_cap,
        ) {
            (
                (Some(listen), Some(admin_listen)),
                Some(verifier),
                Some(log_format),
                Some(rules),
                Some(retention),
                Some(settle_delay),
                Some(rate_limit),
                Some(followers_freshness),
                Some(shutdown_grace),
                Some(lease),
                Some(ghl_timeout),
                Some(retry_base),
                Some(retry_cap),
            ) if problems.is_empty() => Ok(Config {
                listen,
                admin_listen,
                rules_path: args.rules,
                rules: Arc::new(rules),
                database_url,
                ghl_api_base_url: base,
                tokens,
                verifier: Arc::new(verifier),
                dry_run,
                log_format,
                admin_token,
                retention,
                settle_delay,
                shutdown_grace,
                lease,
                rate_limit,
                daily_limit: args.daily_limit,
                followers_freshness,
                ghl_timeout,
                retry_base,
                retry_cap: retry_cap.max(retry_base),
                watch_rules: args.watch_rules,
            }),
            _ => Err(ConfigError(problems)),
        }
    }
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
            ghl_location_tokens_file: Some(dir),
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
            shutdown_grace: "patiently".into(),
            lease: "0s".into(),
            rate_limit: "lots".into(),
            followers_freshness: "a while".into(),
            ghl_timeout: "0s".into(),
            retry_base: "quickly".into(),
            retry_cap: "never".into(),
            watch_rules: true,
            daily_limit: 200_000,
        };
        let err = Config::from_args(args)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
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
            "AUTOFOLLOW_RETENTION",
            "AUTOFOLLOW_SETTLE_DELAY",
            "AUTOFOLLOW_SHUTDOWN_GRACE",
            "AUTOFOLLOW_LEASE",
            "AUTOFOLLOW_RATE_LIMIT",
            "AUTOFOLLOW_FOLLOWERS_FRESHNESS",
            "GHL_TIMEOUT",
            "AUTOFOLLOW_RETRY_BASE",
            "AUTOFOLLOW_RETRY_CAP",
        ] {
            assert!(err.contains(needle), "{needle} missing from:\n{err}");
        }
        assert!(!err.contains("HIDDEN"), "{err}");
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
            shutdown_grace: "8s".into(),
            lease: "60s".into(),
            rate_limit: "100/10s".into(),
            daily_limit: 200_000,
            followers_freshness: "60s".into(),
            ghl_timeout: "15s".into(),
            retry_base: "1s".into(),
            retry_cap: "5m".into(),
            ..ServeArgs::default()
        };
        let config = Config::from_args(args.clone()).ok();
        assert_eq!(config.map(|c| c.dry_run), Some(true));
        let with_token = ServeArgs {
            ghl_token: Some("t".into()),
            ..args.clone()
        };
        assert_eq!(
            Config::from_args(with_token).ok().map(|c| c.dry_run),
            Some(false)
        );

        // What the worker takes from the configuration reaches it (freshness was once
        // parsed and then ignored).
        let tuned = ServeArgs {
            followers_freshness: "0".into(),
            retry_base: "250ms".into(),
            retry_cap: "2s".into(),
            ..args
        };
        let config = Config::from_args(tuned).unwrap_or_else(|e| panic!("{e}"));
        let options = crate::worker::WorkerOptions::from_config(&config);
        assert_eq!(options.followers_fresh, std::time::Duration::ZERO);
        assert_eq!(options.retry.base, std::time::Duration::from_millis(250));
        assert_eq!(options.retry.cap, std::time::Duration::from_secs(2));
        assert_eq!(
            options.retry.max_attempts,
            crate::worker::RetryPolicy::default().max_attempts
        );
    }
}

//! `spawn_app`: the real service on a random port, a fresh SQLite database and a wiremock
//! GoHighLevel; helpers to sign webhooks and to wait until the queue is drained.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use autofollow::app::{self, Running};
use autofollow::config::{Config, ServeArgs};
use std::sync::Arc;

use autofollow::model::record::{Decision, EventStatus};
use autofollow::store::sqlite::SqliteStore;
use autofollow::store::{EventRecord, Store};
use autofollow::worker::RetryPolicy;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::pkcs8::EncodePublicKey;
use ed25519_dalek::{Signer, SigningKey};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use wiremock::MockServer;

pub const TOKEN: &str = "pit-test-token-0001";
/// The location GHL_TOKEN belongs to (the official examples' location).
pub const LOCATION: &str = "ve9EPM428h8vShlRW1KT";
/// Locations tests post to that also have the test PIT when `Options::token` is set.
pub const OTHER_LOCATIONS: [&str; 3] = ["L", "L1", "L2"];
pub const SECRET: &str = "test-webhook-secret";

/// The key tests sign app webhooks with; its public half is configured as
/// `GHL_WEBHOOK_PUBLIC_KEYS`.
pub fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

pub fn public_key_pem() -> String {
    signing_key()
        .verifying_key()
        .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .expect("pem")
}

pub fn sign(body: &[u8]) -> String {
    BASE64.encode(signing_key().sign(body).to_bytes())
}

/// A Standard Webhooks signature header set for `body` at `timestamp` (unix seconds), with a
/// `webhook-id` of its own (from the body and the time, as a sender's retry would keep it).
pub fn standard_webhooks(body: &[u8], timestamp: u64) -> [(String, String); 3] {
    use sha2::Digest;
    let digest = Sha256::digest([body, &timestamp.to_be_bytes()].concat());
    let id = format!(
        "msg_{}",
        digest[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let id = id.as_str();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let sig = BASE64.encode(mac.finalize().into_bytes());
    [
        ("webhook-id".into(), id.into()),
        ("webhook-timestamp".into(), timestamp.to_string()),
        ("webhook-signature".into(), format!("v1,bm90IGl0 v1,{sig}")),
    ]
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub struct TestApp {
    /// The public listener: webhooks and health.
    pub base: String,
    /// The admin listener: admin API, metrics, detailed readiness.
    pub admin: String,
    /// The rule file the service reads (tests edit it to try reloads).
    pub rules_file: std::path::PathBuf,
    pub database_url: String,
    pub ghl: MockServer,
    pub running: Option<Running>,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// A switch that makes the test app's store fail, like a full disk or a database gone away.
#[derive(Clone, Debug, Default)]
pub struct Faults(Arc<std::sync::atomic::AtomicU8>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The store works.
    None = 0,
    /// Storing a webhook fails; everything else works.
    Inserts = 1,
    /// Every operation fails.
    All = 2,
}

impl Faults {
    pub fn new(fault: Fault) -> Faults {
        let faults = Faults::default();
        faults.set(fault);
        faults
    }

    pub fn set(&self, fault: Fault) {
        self.0
            .store(fault as u8, std::sync::atomic::Ordering::SeqCst);
    }
}

impl autofollow::store::wrap::Hook for Faults {
    fn before(&self, operation: &'static str) -> Result<(), autofollow::store::StoreError> {
        let fault = self.0.load(std::sync::atomic::Ordering::SeqCst);
        if fault == Fault::All as u8
            || (fault == Fault::Inserts as u8 && operation == "insert_event")
        {
            Err(autofollow::store::StoreError::Corrupt(format!(
                "injected fault: {operation}: disk I/O error"
            )))
        } else {
            Ok(())
        }
    }
}

pub struct Options {
    pub rules: String,
    pub token: bool,
    pub dry_run: Option<bool>,
    pub secret: String,
    /// Use this rule file or directory instead of `rules` (with the test aliases).
    pub rules_path: Option<std::path::PathBuf>,
    /// Fault injection into the store the service runs on.
    pub faults: Option<Faults>,
    pub admin_token: Option<String>,
    pub settle_delay: String,
    pub rate_limit: String,
    /// (location id, token) pairs written to GHL_LOCATION_TOKENS_FILE.
    pub location_tokens: Vec<(String, String)>,
    pub shutdown_grace: String,
    pub webhook_max_age: String,
    /// App mode, against the stand-in at the GoHighLevel address.
    pub app: Option<AppMode>,
    /// AUTOFOLLOW_REAPPLY_ON_RELOAD.
    pub reapply_on_reload: String,
    /// AUTOFOLLOW_RECONCILE_EVERY.
    pub reconcile_every: String,
    /// AUTOFOLLOW_TIME_ZONE.
    pub time_zone: String,
}

/// The app's credentials in app-mode tests.
#[derive(Clone)]
pub struct AppMode {
    /// The OAuth stand-in's address, used as GHL_API_BASE_URL.
    pub ghl_base: String,
    pub client_id: String,
    pub client_secret: String,
    pub encryption_key: String,
    /// GHL_APP_ID.
    pub app_id: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rules: String::new(),
            token: true,
            dry_run: None,
            secret: SECRET.to_owned(),
            rules_path: None,
            faults: None,
            admin_token: None,
            settle_delay: "0".into(),
            rate_limit: "100/10s".into(),
            location_tokens: Vec::new(),
            shutdown_grace: "8s".into(),
            webhook_max_age: "3h".into(),
            app: None,
            reapply_on_reload: "preview".into(),
            reconcile_every: "off".into(),
            time_zone: "UTC".into(),
        }
    }
}

/// An app webhook signed with the test key, to the service at `base`.
pub async fn post_signed(http: &reqwest::Client, base: &str, body: &Value) -> reqwest::Response {
    let body = body.to_string();
    http.post(format!("{base}/webhooks/ghl"))
        .header("X-GHL-Signature", sign(body.as_bytes()))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request")
}

pub async fn spawn_app(rules: &str) -> TestApp {
    spawn_with(Options {
        rules: rules.to_owned(),
        ..Options::default()
    })
    .await
}

pub async fn spawn_with(options: Options) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules_path = dir.path().join("rules.yaml");
    std::fs::write(&rules_path, format!("{}{}", super::USERS, options.rules)).expect("rules");
    let ghl = MockServer::start().await;
    let args = ServeArgs {
        listen: "127.0.0.1:0".into(),
        admin_listen: "127.0.0.1:0".into(),
        webhook_max_age: options.webhook_max_age,
        rules: options.rules_path.unwrap_or_else(|| rules_path.clone()),
        database_url: format!(
            "sqlite://{}",
            dir.path().join("data/autofollow.db").display()
        ),
        ghl_api_base_url: options
            .app
            .as_ref()
            .map_or_else(|| ghl.uri(), |a| a.ghl_base.clone()),
        ghl_token: options.token.then(|| TOKEN.into()),
        ghl_location_id: options.token.then(|| LOCATION.into()),
        ghl_client_id: options.app.as_ref().map(|a| a.client_id.clone()),
        ghl_client_secret: options.app.as_ref().map(|a| a.client_secret.clone().into()),
        public_url: options
            .app
            .as_ref()
            .map(|_| "https://autofollow.test".to_owned()),
        ghl_scopes: autofollow::config::DEFAULT_SCOPES.into(),
        ghl_app_id: options.app.as_ref().and_then(|a| a.app_id.clone()),
        encryption_key: options
            .app
            .as_ref()
            .map(|a| a.encryption_key.clone().into()),
        ghl_authorize_url: autofollow::config::DEFAULT_AUTHORIZE_URL.into(),
        ghl_location_tokens_file: {
            // With `token`, the short location ids many tests use have the test PIT too (a
            // PIT serves only its own location).
            let mut tokens = options.location_tokens.clone();
            if options.token {
                for l in OTHER_LOCATIONS {
                    if !tokens.iter().any(|(id, _)| id == l) {
                        tokens.push((l.to_owned(), TOKEN.to_owned()));
                    }
                }
            }
            (!tokens.is_empty()).then(|| {
                let path = dir.path().join("tokens.yaml");
                let yaml: String = tokens.iter().map(|(l, t)| format!("{l}: {t}\n")).collect();
                std::fs::write(&path, yaml).expect("tokens file");
                path
            })
        },
        webhook_secret: Some(options.secret.into()),
        ghl_webhook_public_keys: Some(public_key_pem()),
        dry_run: options.dry_run,
        log_format: "pretty".into(),
        admin_token: options.admin_token.map(Into::into),
        retention: "30d".into(),
        settle_delay: options.settle_delay,
        settle_max: "30s".into(),
        time_zone: options.time_zone,
        reconcile_every: options.reconcile_every,
        rate_limit: options.rate_limit,
        daily_limit: 200_000,
        followers_freshness: "60s".into(),
        ghl_timeout: "15s".into(),
        retry_base: "1s".into(),
        retry_cap: "5m".into(),
        watch_rules: true,
        reapply_on_reload: options.reapply_on_reload,
        shutdown_grace: options.shutdown_grace,
        lease: "60s".into(),
    };
    let mut config = Config::from_args(args).unwrap_or_else(|e| panic!("{e}"));
    // Quick polls and retries, so tests do not wait on the production pace.
    config.worker.poll = Duration::from_millis(20);
    config.worker.retry = RetryPolicy {
        base: Duration::from_millis(20),
        cap: Duration::from_millis(200),
        max_attempts: 4,
        max_age: Duration::from_secs(3600),
    };
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&config.store.database_url)
            .await
            .expect("store"),
    );
    let store: Arc<dyn Store> = match options.faults.clone() {
        Some(faults) => Arc::new(autofollow::store::wrap::Wrapped::new(store, faults)),
        None => store,
    };
    let running = app::start_with_store(&config, store)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    TestApp {
        rules_file: rules_path,
        base: format!("http://{}", running.addr),
        admin: format!(
            "http://{}",
            running.admin_addr.expect("the admin listener is on")
        ),
        database_url: config.store.database_url.clone(),
        ghl,
        running: Some(running),
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

impl TestApp {
    /// An app webhook signed with the test key.
    pub async fn post_app(&self, body: &Value) -> reqwest::Response {
        post_signed(&self.http, &self.base, body).await
    }

    /// A signed app webhook about `contact` in location `ve9EPM428h8vShlRW1KT`, with `extra`
    /// keys; the id of the accepted event.
    pub async fn contact(&self, event_type: &str, contact: &str, extra: Value) -> i64 {
        let mut body = serde_json::json!({"type": event_type, "locationId": "ve9EPM428h8vShlRW1KT", "id": contact});
        if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
            b.extend(e);
        }
        accepted(self.post_app(&body).await).await
    }

    /// A workflow webhook with the secret in the query string, as GoHighLevel's action sends it.
    pub async fn post_workflow(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}/webhooks/workflow?secret={SECRET}", self.base))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// Makes the GoHighLevel stand-in accept every other POST (201) and DELETE (200); mount
    /// more specific mocks first.
    /// GoHighLevel answers the first `POST` with a 500 (mount before `ghl_accepts_the_rest`).
    pub async fn ghl_fails_the_first_post(&self) {
        use wiremock::matchers::method;
        use wiremock::{Mock, ResponseTemplate};
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(500))
            .up_to_n_times(1)
            .mount(&self.ghl)
            .await;
    }

    /// GoHighLevel refuses the first `POST` for good (422 `bad follower`): its event becomes a
    /// dead letter (mount before `ghl_accepts_the_rest`).
    pub async fn ghl_refuses_the_first_post(&self) {
        use wiremock::matchers::method;
        use wiremock::{Mock, ResponseTemplate};
        let refusal = serde_json::json!({"statusCode": 422, "message": ["bad follower"]});
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(422).set_body_json(refusal))
            .up_to_n_times(1)
            .mount(&self.ghl)
            .await;
    }

    pub async fn ghl_accepts_the_rest(&self) {
        use wiremock::matchers::method;
        use wiremock::{Mock, ResponseTemplate};
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(201))
            .mount(&self.ghl)
            .await;
        Mock::given(method("DELETE"))
            .respond_with(ResponseTemplate::new(200))
            .mount(&self.ghl)
            .await;
    }

    /// The admin listener's `/readyz` answer (with details).
    pub async fn ready(&self) -> Value {
        let r = self
            .http
            .get(format!("{}/readyz", self.admin))
            .send()
            .await
            .expect("readyz");
        r.json().await.expect("readyz JSON")
    }

    /// Loads the rule files again now (as SIGHUP does); panics when they do not load.
    pub fn reload(&self) {
        let running = self.running.as_ref().expect("running");
        running.rules.reload().unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn store(&self) -> &dyn autofollow::store::Store {
        self.running.as_ref().expect("running").store.as_ref()
    }

    /// Processes the queue until every stored event is finished (done, failed or skipped):
    /// what is due is processed here at once; only events due later (retries) are waited for.
    pub async fn drain(&self) {
        let running = self.running.as_ref().expect("running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let processed = running.run_once().await;
            if self.store().pending().await.expect("store") == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "events still pending after 60 s");
            if processed == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// Waits (at most 20 s) until event `id` has `status`, for events the service's own
    /// worker processes (settling, retried, resumed); the event then.
    pub async fn wait_for(&self, id: i64, status: EventStatus) -> EventRecord {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let event = self.event(id).await;
            if event.status == status {
                return event;
            }
            assert!(
                Instant::now() < deadline,
                "event {id} is {:?}, not {status:?}",
                event.status
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The followers calls the GoHighLevel stand-in received, in order: (method, path, the
    /// `followers` sent).
    pub async fn followers_calls(&self) -> Vec<(String, String, Value)> {
        let requests = self.ghl.received_requests().await.unwrap_or_default();
        let calls = requests
            .iter()
            .filter(|r| r.url.path().ends_with("/followers"));
        calls
            .map(|r| {
                let body: Value = serde_json::from_slice(&r.body).unwrap_or_default();
                (
                    r.method.to_string(),
                    r.url.path().to_owned(),
                    body["followers"].clone(),
                )
            })
            .collect()
    }

    pub async fn event(&self, id: i64) -> EventRecord {
        self.store()
            .event(id)
            .await
            .expect("store")
            .expect("event exists")
    }

    pub async fn decisions(&self, id: i64) -> Vec<Decision> {
        self.store().decisions(id).await.expect("store")
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// The event id of a 200 `accepted` answer.
pub async fn accepted(response: reqwest::Response) -> i64 {
    let status = response.status();
    let body: Value = response.json().await.expect("json answer");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "accepted", "{body}");
    body["event_id"].as_i64().expect("event_id")
}

/// The contacts GoHighLevel (a wiremock stand-in) was asked to add followers to.
pub async fn followed_contacts(ghl: &MockServer) -> std::collections::BTreeSet<String> {
    ghl.received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.method.as_str() == "POST")
        .map(|r| {
            r.url
                .path()
                .trim_start_matches("/contacts/")
                .trim_end_matches("/followers")
                .to_owned()
        })
        .collect()
}

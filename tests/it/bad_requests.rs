//! Property tests over HTTP against the running service: arbitrary bytes, arbitrary JSON,
//! deep nesting, huge strings, wrong types, invalid UTF-8 and duplicate keys, each sent with a
//! random combination of the three authentication schemes' headers (Ed25519
//! `X-GHL-Signature`; the shared secret as `X-Webhook-Secret` or `?secret=`; Standard
//! Webhooks `webhook-id`/`webhook-timestamp`/`webhook-signature`), each present or not, valid
//! or not, or beyond the header limits (a valid signature among too many entries, credentials
//! far too long: refused). Whatever arrives: an answer (no panic), never a 5xx, and an event
//! is stored only when one of the credentials sent was valid for exactly those bytes.

use crate::common;
use std::sync::OnceLock;

use base64::Engine;
use common::service::{Options, SECRET, TestApp, now_secs, sign, spawn_with, standard_webhooks};
use proptest::prelude::*;
use serde_json::{Value, json};

/// One service for every case (starting one per case would be the whole cost).
struct Shared {
    /// Held by each case: stored events are counted around one request at a time.
    one_at_a_time: std::sync::Mutex<()>,
    runtime: tokio::runtime::Runtime,
    app: TestApp,
    pool: sqlx::SqlitePool,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (app, pool) = runtime.block_on(async {
            let app = spawn_with(Options {
                rules: "rules:\n  - name: all\n    add: [alice]\n".into(),
                dry_run: Some(true),
                ..Options::default()
            })
            .await;
            let pool = sqlx::SqlitePool::connect(&app.database_url).await.unwrap();
            (app, pool)
        });
        Shared {
            one_at_a_time: std::sync::Mutex::default(),
            runtime,
            app,
            pool,
        }
    })
}

/// Bodies: what GoHighLevel sends and every kind of thing it does not.
fn arb_body() -> impl Strategy<Value = Vec<u8>> {
    let event = (
        prop::sample::select(vec![
            "ContactCreate",
            "ContactTagUpdate",
            "OpportunityStageUpdate",
            "ContactDelete",
            "INSTALL",
        ]),
        "[a-zA-Z0-9]{1,20}",
        prop::collection::vec("\\PC{0,10}", 0..4),
    )
        .prop_map(|(t, id, tags)| {
            json!({"type": t, "locationId": "L1", "id": id, "contactId": id, "tags": tags,
                   "pipelineId": "p", "pipelineStageId": "s", "status": "open"})
            .to_string()
            .into_bytes()
        });
    prop_oneof![
        3 => event,
        2 => prop::collection::vec(any::<u8>(), 0..512),
        2 => common::arb_json().prop_map(|v| v.to_string().into_bytes()),
        // Deep nesting, in arrays and objects.
        1 => (1usize..20_000, any::<bool>()).prop_map(|(depth, array)| {
            let (open, close) = if array { ("[", "]") } else { ("{\"a\":", "}") };
            format!("{}1{}", open.repeat(depth), close.repeat(depth)).into_bytes()
        }),
        // Huge strings, up to past the body limit.
        1 => (1usize..400_000, any::<bool>()).prop_map(|(len, in_tags)| {
            let big = "x".repeat(len);
            let body = if in_tags {
                json!({"type": "ContactTagUpdate", "locationId": "L1", "id": "c1", "tags": [big]})
            } else {
                json!({"type": "ContactCreate", "locationId": big, "id": "c1"})
            };
            body.to_string().into_bytes()
        }),
        // Wrong types where the parser expects strings and lists.
        1 => (common::arb_json(), prop::sample::select(vec!["type", "locationId", "id", "tags", "contactId"]))
            .prop_map(|(v, key)| {
                let mut body = json!({"type": "ContactCreate", "locationId": "L1", "id": "c1"});
                body[key] = v;
                body.to_string().into_bytes()
            }),
        // Invalid UTF-8 inside a string.
        1 => prop::collection::vec(128u8..=255, 1..8).prop_map(|bad| {
            let mut body = br#"{"type":"ContactCreate","locationId":"L1","id":""#.to_vec();
            body.extend(bad);
            body.extend(br#""}"#);
            body
        }),
        // Duplicate keys.
        1 => prop::sample::select(vec!["type", "locationId", "id"]).prop_map(|key| {
            format!(r#"{{"type":"ContactCreate","locationId":"L1","id":"c1","{key}":"other"}}"#)
                .into_bytes()
        }),
    ]
}

/// How one credential is sent.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Cred {
    Absent,
    Valid,
    /// Well-formed but wrong (another body's signature, another secret).
    Wrong,
    /// Malformed (not base64, empty, not a number, …).
    Garbage,
    /// Beyond the header limits (a valid Standard Webhooks signature among too many entries,
    /// a signature or secret far too long): refused without hashing.
    Oversized,
}

fn arb_cred() -> impl Strategy<Value = Cred> {
    prop_oneof![
        3 => Just(Cred::Absent),
        2 => Just(Cred::Valid),
        2 => Just(Cred::Wrong),
        1 => Just(Cred::Garbage),
        1 => Just(Cred::Oversized),
    ]
}

#[derive(Clone, Debug)]
struct Request {
    workflow: bool,
    body: Vec<u8>,
    ghl_signature: Cred,
    secret_header: Cred,
    secret_query: Cred,
    standard: Cred,
    /// Standard Webhooks: timestamp too old (outside the tolerance).
    stale: bool,
    content_type: Option<&'static str>,
}

fn arb_request() -> impl Strategy<Value = Request> {
    (
        any::<bool>(),
        arb_body(),
        (arb_cred(), arb_cred(), arb_cred(), arb_cred()),
        prop::bool::weighted(0.2),
        prop::option::of(prop::sample::select(vec![
            "application/json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "",
        ])),
    )
        .prop_map(
            |(
                workflow,
                body,
                (ghl_signature, secret_header, secret_query, standard),
                stale,
                content_type,
            )| {
                Request {
                    workflow,
                    body,
                    ghl_signature,
                    secret_header,
                    secret_query,
                    standard,
                    stale,
                    content_type,
                }
            },
        )
}

impl Request {
    /// Whether any credential sent is valid for exactly this body on this endpoint.
    fn authentic(&self) -> bool {
        let ghl = !self.workflow && self.ghl_signature == Cred::Valid;
        let header = self.secret_header == Cred::Valid;
        let query = self.workflow && self.secret_query == Cred::Valid;
        let standard = self.standard == Cred::Valid && !self.stale;
        ghl || header || query || standard
    }

    fn send(&self, http: &reqwest::Client, base: &str) -> reqwest::RequestBuilder {
        let path = if self.workflow {
            "/webhooks/workflow"
        } else {
            "/webhooks/ghl"
        };
        let mut url = format!("{base}{path}");
        match self.secret_query {
            Cred::Absent => {}
            Cred::Valid => url.push_str(&format!("?secret={SECRET}")),
            Cred::Wrong => url.push_str("?secret=not-the-secret"),
            Cred::Garbage => url.push_str("?secret=%ZZ%00&secret="),
            Cred::Oversized => url.push_str(&format!("?secret={SECRET}{}", "x".repeat(4000))),
        }
        let mut request = http.post(url).body(self.body.clone());
        if let Some(ct) = self.content_type {
            request = request.header("Content-Type", ct);
        }
        match self.ghl_signature {
            Cred::Absent => {}
            Cred::Valid => request = request.header("X-GHL-Signature", sign(&self.body)),
            Cred::Wrong => request = request.header("X-GHL-Signature", sign(b"another body")),
            Cred::Garbage => request = request.header("X-GHL-Signature", "!!not base64!!"),
            Cred::Oversized => request = request.header("X-GHL-Signature", "A".repeat(20_000)),
        }
        match self.secret_header {
            Cred::Absent => {}
            Cred::Valid => request = request.header("X-Webhook-Secret", SECRET),
            Cred::Wrong => request = request.header("X-Webhook-Secret", "guess"),
            Cred::Garbage => request = request.header("X-Webhook-Secret", ""),
            Cred::Oversized => {
                request =
                    request.header("X-Webhook-Secret", format!("{SECRET}{}", " x".repeat(5000)));
            }
        }
        let timestamp = if self.stale {
            now_secs() - 3600
        } else {
            now_secs()
        };
        match self.standard {
            Cred::Absent => {}
            Cred::Valid => {
                for (k, v) in standard_webhooks(&self.body, timestamp) {
                    request = request.header(k, v);
                }
            }
            Cred::Wrong => {
                for (k, v) in standard_webhooks(b"another body", timestamp) {
                    request = request.header(k, v);
                }
            }
            Cred::Oversized => {
                // The valid signature, after more entries than any key rotation needs.
                for (k, v) in standard_webhooks(&self.body, timestamp) {
                    let v = if k == "webhook-signature" {
                        format!("{}{v}", "v1,AAAA ".repeat(8))
                    } else {
                        v
                    };
                    request = request.header(k, v);
                }
            }
            Cred::Garbage => {
                let garbage = base64::engine::general_purpose::STANDARD.encode([0u8; 7]);
                request = request
                    .header("webhook-id", "")
                    .header("webhook-timestamp", "soon")
                    .header("webhook-signature", format!("v1,{garbage} v9"));
            }
        }
        request
    }
}

async fn stored(pool: &sqlx::SqlitePool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(pool)
        .await
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn no_request_gets_a_5xx_and_only_authentic_ones_are_stored(request in arb_request()) {
        let s = shared();
        let _turn = s.one_at_a_time.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (status, body, before, after) = s.runtime.block_on(async {
            let before = stored(&s.pool).await;
            let response = request
                .send(&s.app.http, &s.app.base)
                .send()
                .await
                .expect("an answer (a panic would drop the connection)");
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            (status, body, before, stored(&s.pool).await)
        });
        prop_assert!(status < 500, "{status} {body}");
        if !request.authentic() {
            prop_assert_eq!(after, before, "stored without valid authentication: {}", body);
            prop_assert!((400..500).contains(&status), "{} {}", status, body);
        }
        if after > before {
            let answer: Value = serde_json::from_str(&body).unwrap();
            prop_assert_eq!(&answer["status"], "accepted");
            prop_assert_eq!(after, before + 1);
        }
    }
}

/// The property holds for the combinations it names: these are reached.
#[test]
fn the_generator_reaches_stored_and_refused_requests() {
    let s = shared();
    let _turn = s
        .one_at_a_time
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let body = json!({"type": "ContactCreate", "locationId": "L1", "id": "reach"}).to_string();
    let valid = Request {
        workflow: false,
        body: body.into_bytes(),
        ghl_signature: Cred::Valid,
        secret_header: Cred::Absent,
        secret_query: Cred::Absent,
        standard: Cred::Absent,
        stale: false,
        content_type: Some("application/json"),
    };
    let wrong = Request {
        ghl_signature: Cred::Wrong,
        secret_header: Cred::Garbage,
        standard: Cred::Valid,
        stale: true,
        ..valid.clone()
    };
    let statuses = s.runtime.block_on(async {
        let mut out = Vec::new();
        for r in [&wrong, &valid] {
            out.push(
                r.send(&s.app.http, &s.app.base)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16(),
            );
        }
        out
    });
    assert_eq!(statuses, vec![401, 200]);
}

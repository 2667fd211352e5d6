//! Helpers shared by the integration tests.

use std::path::PathBuf;
use std::time::SystemTime;

use autofollow::model::event::{self, Event, Parsed};
use autofollow::model::plan::PreviousState;
use autofollow::rules::{NoResolver, Resolver, RuleSet};
use proptest::prelude::*;
use serde_json::{Value, json};

pub const ALICE: &str = "9hTnVvSr1Q2ZyE5kHfXm";
pub const BOB: &str = "4kLmPq7Rt2WvXy9ZaBcD";
pub const CAROL: &str = "Zx8Yw7Vu6Ts5Rq4Po3Nm";

/// The aliases every test rule file can use.
pub const USERS: &str = "users:\n  alice: 9hTnVvSr1Q2ZyE5kHfXm\n  bob: 4kLmPq7Rt2WvXy9ZaBcD\n  carol: Zx8Yw7Vu6Ts5Rq4Po3Nm\n";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(repo().join("tests/fixtures").join(path)).expect("fixture")
}

/// A rule set from YAML `rules:` text, with the standard aliases; panics with every
/// diagnostic when it does not load.
pub fn rules(yaml: &str) -> RuleSet {
    let text = format!("{USERS}{yaml}");
    match RuleSet::from_sources(&[("test.yaml", text.as_str())]) {
        Ok(set) => set,
        Err(e) => panic!("rules did not load:\n{e}\n---\n{text}"),
    }
}

/// An event from a JSON value (either kind of webhook).
pub fn event(json: Value) -> Event {
    match event::parse_any(json.to_string().as_bytes()) {
        Ok(Parsed::Event(e)) => *e,
        other => panic!("not an event: {other:?}"),
    }
}

/// A contact event with these tags (and optional extra keys).
pub fn contact(event_type: &str, tags: &[&str], extra: Value) -> Event {
    let mut body = serde_json::json!({
        "type": event_type, "locationId": "ve9EPM428h8vShlRW1KT", "id": "nmFmQEsNgz6AVpgLVUJ0",
        "tags": tags,
    });
    merge(&mut body, extra);
    event(body)
}

/// An opportunity event in this stage (and optional extra keys).
pub fn opportunity(event_type: &str, stage_id: &str, extra: Value) -> Event {
    let mut body = serde_json::json!({
        "type": event_type, "locationId": "ve9EPM428h8vShlRW1KT", "id": "wWhVuzqpRuOA1ZVWi4FC",
        "contactId": "cJAWDskpkJHbRbhAT7bs", "pipelineId": "VDm7RPYC2GLUvdpKmBfC",
        "pipelineStageId": stage_id, "status": "open",
    });
    merge(&mut body, extra);
    event(body)
}

fn merge(body: &mut Value, extra: Value) {
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
}

/// The plan summary (`add: …; remove: …` or `no change`), checked against `explain`.
pub fn plan_with(
    set: &RuleSet,
    e: &Event,
    previous: &PreviousState,
    resolver: &dyn Resolver,
) -> String {
    let fast = set.evaluate(e, previous, resolver);
    let slow = set.explain(e, previous, resolver);
    assert_eq!(
        fast.plan, slow.plan,
        "indexed evaluation and explain disagree"
    );
    fast.plan.summary()
}

pub fn plan(set: &RuleSet, e: &Event) -> String {
    plan_with(set, e, &PreviousState::default(), &NoResolver)
}

pub fn previous_tags(tags: &[&str]) -> PreviousState {
    PreviousState {
        tags: Some(tags.iter().map(|t| t.to_string()).collect()),
        ..PreviousState::default()
    }
}

pub fn previous_stage(stage: &str) -> PreviousState {
    PreviousState {
        stage: Some(stage.to_owned()),
        ..PreviousState::default()
    }
}

pub mod ghl_crm;
pub mod ghl_directory;
pub mod ghl_oauth;
pub mod process;
pub mod service;

/// A fresh schema in the test database, and a URL that uses it.
pub async fn postgres_schema() -> Option<String> {
    let base = std::env::var("AUTOFOLLOW_TEST_DATABASE_URL").ok()?;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    // Unique across processes and runs; short enough for PostgreSQL's 63-byte names.
    let schema = format!(
        "t_{}_{n}_{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_micros()
    );
    let pool = sqlx::PgPool::connect(&base).await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options=-c%20search_path%3D{schema}"))
}

/// Arbitrary JSON built from webhook vocabulary (keys and values GoHighLevel sends), so
/// the parser's branches are reached, not only its first type check.
pub fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|n| json!(n)),
        "\\PC{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "ContactCreate",
            "OpportunityStageUpdate",
            "Workflow",
            "INSTALL",
            "vip, hot",
            "L",
            "C"
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "type",
                    "locationId",
                    "id",
                    "contactId",
                    "tags",
                    "source",
                    "assignedTo",
                    "pipelineId",
                    "pipelineStageId",
                    "status",
                    "contact_id",
                    "location",
                    "user",
                    "email",
                    "workflow",
                    "name",
                    "pipleline_stage",
                    "customData",
                    "x",
                ])
                .prop_map(str::to_owned),
                inner,
                0..8,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

//! The `autofollow` binary: `check`, `explain` and the `serve` placeholder.

use crate::common;
use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::repo;

fn autofollow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_autofollow"))
        .args(args)
        .current_dir(repo())
        .env_remove("AUTOFOLLOW_RULES")
        .output()
        .expect("runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write_temp(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

#[test]
fn check_accepts_the_example_rules_by_default() {
    let o = autofollow(&["check"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "ok: 9 rules in 4 files\n");
    assert_eq!(stderr(&o), "", "the example rules have no warnings");
}

#[test]
fn check_reads_the_path_from_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_temp(
        &dir,
        "one.yaml",
        "rules:\n  - name: a\n    add: [9hTnVvSr1Q2ZyE5kHfXm]\n",
    );
    let o = Command::new(env!("CARGO_BIN_EXE_autofollow"))
        .arg("check")
        .env("AUTOFOLLOW_RULES", &file)
        .output()
        .expect("runs");
    assert_eq!(stdout(&o), "ok: 1 rule in 1 file\n");
}

#[test]
fn check_lists_every_error_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_temp(
        &dir,
        "a.yaml",
        "rules:\n  - name: a\n    events: [ContactCreated]\n    add: [9hTnVvSr1Q2ZyE5kHfXm]\n",
    );
    write_temp(
        &dir,
        "b.yaml",
        "rules:\n  - name: b\n    when: {status: closed}\n",
    );
    let o = autofollow(&["check", &dir.path().display().to_string()]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    let err = stderr(&o);
    assert!(err.starts_with("3 errors in rule files\n"), "{err}");
    assert!(
        err.contains(
            "a.yaml:3:14: error: unknown event type `ContactCreated`; did you mean `ContactCreate`?"
        ),
        "{err}"
    );
    assert!(
        err.contains("b.yaml:3:20: error: invalid status `closed`"),
        "{err}"
    );
    assert!(
        err.contains("b.yaml:2:5: error: rule `b` has neither `add` nor `remove`"),
        "{err}"
    );
}

#[test]
fn check_prints_warnings_but_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_temp(
        &dir,
        "w.yaml",
        "users:\n  alice: 9hTnVvSr1Q2ZyE5kHfXm\nrules:\n  - name: a\n    add: [alicee]\n",
    );
    let o = autofollow(&["check", &file]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), "ok: 1 rule in 1 file\n");
    assert!(
        stderr(&o).contains("w.yaml:5:11: warning: `alicee` is not an alias"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn explain_shows_every_rule_with_reasons_and_the_plan() {
    let dir = tempfile::tempdir().expect("tempdir");
    let event = write_temp(
        &dir,
        "e.json",
        r#"{"type":"ContactCreate","locationId":"ve9EPM428h8vShlRW1KT","id":"nmFmQEsNgz6AVpgLVUJ0","source":"Facebook Ads","tags":["webinar"]}"#,
    );
    let o = autofollow(&["explain", &event]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with(
            "event: ContactCreate, location ve9EPM428h8vShlRW1KT, contact nmFmQEsNgz6AVpgLVUJ0\n"
        ),
        "{out}"
    );
    assert!(
        out.contains("\nfacebook-leads (rules/10-leads.yaml:14:5): matched\n"),
        "{out}"
    );
    assert!(
        out.contains("  [yes] source: lead source \"Facebook Ads\" matches \"Facebook Ads\"\n"),
        "{out}"
    );
    assert!(out.contains("  => add alice\n"), "{out}");
    assert!(out.contains("\nlost-deals (rules/20-pipeline.yaml:29:5): not matched\n  [no]  status: the event has no opportunity status\n"), "{out}");
    assert!(
        out.contains("\npaused-rule (rules/30-workflows.yaml:15:5): disabled\n"),
        "{out}"
    );
    assert!(out.ends_with("\nplan: add: alice\n"), "{out}");
}

#[test]
fn explain_uses_previous_state_and_a_pipelines_file() {
    let o = autofollow(&[
        "explain",
        "--pipelines",
        "tests/fixtures/pipelines.json",
        "--previous-stage",
        "a1f3c9e2-0000-4000-8000-000000000001",
        "tests/fixtures/app-webhooks/OpportunityStageUpdate.json",
    ]);
    let out = stdout(&o);
    assert!(
        out.contains("previous stage: a1f3c9e2-0000-4000-8000-000000000001\n"),
        "{out}"
    );
    assert!(out.contains("[yes] stage_entered: stage \"Proposal\" (e93ba61a-53b3-45e7-985a-c7732dbcdb69) entered from \"New Lead\" (a1f3c9e2-0000-4000-8000-000000000001)"), "{out}");
    assert!(
        out.ends_with("\nplan: add: bNl8QNGXhIQJLv8eeASQ (assigned_user)\n"),
        "{out}"
    );

    let same = autofollow(&[
        "explain",
        "--pipelines",
        "tests/fixtures/pipelines.json",
        "--previous-stage",
        "Proposal",
        "tests/fixtures/app-webhooks/OpportunityStageUpdate.json",
    ]);
    assert!(
        stdout(&same).ends_with("\nplan: no change\n"),
        "{}",
        stdout(&same)
    );
}

#[test]
fn explain_previous_tags_drive_tag_transitions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let event = write_temp(
        &dir,
        "e.json",
        r#"{"type":"ContactTagUpdate","locationId":"L","id":"C","tags":["webinar"]}"#,
    );
    let o = autofollow(&["explain", "--previous-tags", "vip, webinar", &event]);
    let out = stdout(&o);
    assert!(
        out.contains("previous tags: [\"vip\", \"webinar\"]\n"),
        "{out}"
    );
    assert!(out.ends_with("\nplan: remove: carol\n"), "{out}");
}

#[test]
fn explain_json_has_the_same_content() {
    let o = autofollow(&[
        "explain",
        "--json",
        "tests/fixtures/workflow-webhooks/opportunity-stage.json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON output");
    assert_eq!(v["event"]["event_type"], "Workflow");
    assert_eq!(v["event"]["stage_name"], "Proposal");
    let rules = v["rules"].as_array().expect("rules");
    assert_eq!(rules.len(), 9);
    let enterprise = rules
        .iter()
        .find(|r| r["rule"] == "enterprise-team")
        .expect("rule");
    assert_eq!(enterprise["outcome"], "matched");
    assert_eq!(enterprise["checks"][1]["condition"], "workflow");
    assert_eq!(
        enterprise["checks"][2]["condition"],
        "fields.customData.team"
    );
    assert_eq!(enterprise["checks"][2]["holds"], true);
    assert_eq!(v["plan"]["add"][0]["label"], "bob");
    assert_eq!(v["plan"]["add"][0]["user"], common::BOB);
    assert_eq!(v["summary"], "add: bob, carol");
    assert_eq!(v["rules_version"].as_str().map(str::len), Some(12));
}

#[test]
fn explain_reads_standard_input() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_autofollow"))
        .args(["explain", "-"])
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(br#"{"type":"ContactCreate","locationId":"L","id":"C","tags":["test"],"source":"fb-x"}"#)
        .expect("write");
    let o = child.wait_with_output().expect("wait");
    let out = stdout(&o);
    assert!(
        out.contains("ignore-test-contacts (rules/10-leads.yaml:8:5): matched"),
        "{out}"
    );
    assert!(
        out.contains("facebook-leads (rules/10-leads.yaml:14:5): not evaluated"),
        "{out}"
    );
    assert!(out.ends_with("plan: no change\n"), "{out}");
}

#[test]
fn explain_says_when_an_event_type_is_not_supported() {
    let o = autofollow(&["explain", "tests/fixtures/app-webhooks/AppInstall-1.json"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        stdout(&o),
        "event type \"INSTALL\" is not one autofollow acts on: no rule applies\n\nplan: no change\n"
    );
}

#[test]
fn explain_rejects_a_body_without_a_contact_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let event = write_temp(
        &dir,
        "e.json",
        r#"{"type":"ContactCreate","locationId":"L"}"#,
    );
    let o = autofollow(&["explain", &event]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), format!("{event}: missing field `id`\n"));
}

#[test]
fn explain_refuses_invalid_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = write_temp(&dir, "r.yaml", "rules: {}\n");
    let o = autofollow(&[
        "explain",
        "--rules",
        &rules,
        "tests/fixtures/app-webhooks/ContactCreate.json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("r.yaml:1:8: error: `rules` must be a list of rules, found a mapping"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn serve_refuses_invalid_configuration_listing_every_problem_without_secrets() {
    let o = Command::new(env!("CARGO_BIN_EXE_autofollow"))
        .args(["serve", "--listen", "nowhere", "--rules", "no/such/dir"])
        .env("AUTOFOLLOW_DATABASE_URL", "mysql://app:TOPSECRET@db/x")
        .env("AUTOFOLLOW_WEBHOOK_SECRET", "whsec_not*base64-TOPSECRET")
        .env("GHL_TOKEN", "pit-TOPSECRET")
        .current_dir(repo())
        .output()
        .expect("runs");
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.starts_with("autofollow serve: invalid configuration:"),
        "{err}"
    );
    for needle in [
        "AUTOFOLLOW_LISTEN",
        "AUTOFOLLOW_RULES",
        "AUTOFOLLOW_DATABASE_URL",
        "AUTOFOLLOW_WEBHOOK_SECRET",
    ] {
        assert!(err.contains(needle), "{needle} missing:\n{err}");
    }
    assert!(!err.contains("TOPSECRET"), "{err}");
}

/// `away` stores a period for an alias (or an id), refuses bad dates, and `pools` shows each
/// pool's members, weights, who is away (file and `away`), the fallback and the turns.
#[tokio::test]
async fn away_and_pools_work_on_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write_temp(
        &dir,
        "rules.yaml",
        &format!(
            "{}pools:\n  sales:\n    members: {{ alice: 2, bob: 1 }}\n    away:\n      alice: [\"2026-12-24\", \"2027-01-02\"]\n    fallback: carol\nrules:\n  - name: deal\n    add: [{{ pool: sales }}]\n",
            common::USERS
        ),
    );
    let url = format!("sqlite://{}", dir.path().join("db/af.db").display());
    let store = autofollow::store::open(&url).await.unwrap();
    let (l1, c1) = (
        autofollow::model::ids::LocationId::parse("L1").unwrap(),
        autofollow::model::ids::ContactId::parse("c1").unwrap(),
    );
    let bob = autofollow::model::ids::UserId::parse(common::BOB).unwrap();
    store
        .take_turn((&l1, &c1), "sales", &[(bob, 1)])
        .await
        .unwrap();
    let with = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--database-url", &url, "--rules", &rules]);
        autofollow(&all)
    };
    let set = with(&["away", "bob", "--from", "2026-12-01", "--to", "2026-12-03"]);
    assert!(set.status.success(), "{}", stderr(&set));
    assert_eq!(
        stdout(&set),
        "bob: away from 2026-12-01 to 2026-12-03 (inclusive); pools skip them on those days\n"
    );
    let bad = with(&["away", "bob", "--from", "2026-12-41", "--to", "2026-12-03"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("--from: \"2026-12-41\" is not a date"),
        "{}",
        stderr(&bad)
    );
    let shown = with(&["pools"]);
    assert!(shown.status.success(), "{}", stderr(&shown));
    let text = stdout(&shown);
    for line in [
        "pool sales (",
        &format!(
            "  members: alice ({}) weight 2, bob ({}) weight 1",
            common::ALICE,
            common::BOB
        ),
        "  away: alice 2026-12-24 to 2027-01-02 (rule file)",
        "  away: bob 2026-12-01 to 2026-12-03 (autofollow away)",
        "  fallback: carol",
        "  turns in L1: bob 1",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    let cleared = with(&["away", "bob", "--clear"]);
    assert_eq!(stdout(&cleared), "bob: 1 away period(s) cleared\n");
}

//! `autofollow check --online` against a directory stand-in: two locations of one company
//! (the second's token lacks `opportunities.readonly`) and a user of another company. Every
//! wrong name is reported at its file:line:column with the closest existing one; the same
//! problem in both locations once; each location's directory read once however many rules
//! name it.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::common::ghl_directory::{Directory, Shared, User, router};
use crate::common::process::serve_stand_in;

const ALICE: &str = "AliceUser00000000001";
const BOB: &str = "BobUser0000000000002";
const DAVE: &str = "DaveUser000000000003";
const ERIN: &str = "ErinUser000000000004";
const CAROL: &str = "CarolUser00000000005";
const LEAD_SCORE: &str = "LeadScoreField000001";

const EVERY_SCOPE: &[&str] = &[
    "contacts.write",
    "locations.readonly",
    "users.readonly",
    "opportunities.readonly",
    "locations/customFields.readonly",
];

fn user(id: &'static str, name: &'static str, locations: &'static [&'static str]) -> User {
    User {
        id,
        name,
        company: "Company1",
        locations,
        deleted: false,
    }
}

/// L0 and L1 of `Company1`, with Alice and Bob in both, Carol in L1 only, Dave deleted, and
/// Erin of another company; the same pipelines and custom fields in both.
fn directory() -> Shared {
    let mut d = Directory::default();
    for l in ["L0", "L1"] {
        d.companies.insert(l.into(), "Company1".into());
        let stages = json!([{"id": "StageNew000000000001", "name": "New Lead"},
            {"id": "StageQual00000000002", "name": "Qualified"},
            {"id": "StageWon000000000003", "name": "Closed Won"}]);
        let pipeline =
            json!({"id": "PipeSales00000000001", "name": "Sales Pipeline", "stages": stages});
        d.pipelines
            .insert(l.into(), json!({"pipelines": [pipeline]}));
        let fields = vec![
            json!({"id": LEAD_SCORE, "name": "Lead Score", "fieldKey": "contact.lead_score"}),
            json!({"id": "CsmField000000000002", "name": "CSM", "fieldKey": "contact.csm"}),
        ];
        d.fields.insert(l.into(), fields);
    }
    d.companies.insert("X9".into(), "Company2".into());
    d.users = vec![
        user(ALICE, "Alice Smith", &["L0", "L1"]),
        user(BOB, "Bob Jones", &["L0", "L1"]),
        user(CAROL, "Carol Tan", &["L1"]),
        User {
            deleted: true,
            ..user(DAVE, "Dave Old", &["L0", "L1"])
        },
        User {
            company: "Company2",
            ..user(ERIN, "Erin Other", &["X9"])
        },
    ];
    let scopes = |s: &[&str]| s.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
    d.scopes.insert("tok-L0".into(), scopes(EVERY_SCOPE));
    let without_pipelines: Vec<&str> = EVERY_SCOPE
        .iter()
        .copied()
        .filter(|s| *s != "opportunities.readonly")
        .collect();
    d.scopes.insert("tok-L1".into(), scopes(&without_pipelines));
    Arc::new(Mutex::new(d))
}

const RULES: &str = "\
users:
  alice: AliceUser00000000001
  dave: DaveUser000000000003
  erin: ErinUser000000000004
  carol: CarolUser00000000005
rules:
  - name: good
    when:
      pipeline: Sales Pipeline
      stage: [qualified, \"Closed *\", StageNew000000000001]
      fields:
        customFields.LeadScoreField000001: \"9*\"
        customData.team: sales
        Lead Score: \"9*\"
    add: [alice, BobUser0000000000002]
  - name: l1-only
    locations: [L1]
    add: [carol]
  - name: bad-users
    add: [dave, erin, AliceUser0000000000X]
  - name: bad-names
    when:
      pipeline: Sales Pipline
      stage_entered: Qualifed
      fields:
        customFields.Lead Score: \"1\"
        customFields.NoSuchField000000009: \"1\"
        Lead Scor: \"1\"
        utmCampaignX: \"1\"
    add: [alice]
";

/// `autofollow check --online ARGS` on `rules` with tokens for L0 and L1: exit code,
/// standard output and error.
async fn check(dir: &Path, ghl: &str, rules: &str, args: &[&str]) -> (i32, String, String) {
    std::fs::write(dir.join("rules.yaml"), rules).expect("rules.yaml");
    std::fs::write(dir.join("tokens.yaml"), "L0: tok-L0\nL1: tok-L1\n").expect("tokens");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_autofollow"));
    command
        .args(["check", "--online"])
        .args(args)
        .arg(dir.join("rules.yaml"))
        .env("GHL_API_BASE_URL", ghl)
        .env("GHL_LOCATION_TOKENS_FILE", dir.join("tokens.yaml"))
        .env(
            "AUTOFOLLOW_DATABASE_URL",
            format!("sqlite://{}", dir.join("af.db").display()),
        )
        .env_remove("GHL_TOKEN")
        .env_remove("GHL_LOCATION_ID")
        .env_remove("AUTOFOLLOW_RULES");
    let out = command.output().await.expect("autofollow check runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// The example output of the README's "Online check".
fn readme_example() -> Vec<String> {
    let readme = std::fs::read_to_string(crate::common::repo().join("README.md")).expect("README");
    let section = readme
        .split("### Online check")
        .nth(1)
        .expect("the section");
    let block = section.split("```text\n").nth(1).expect("its example");
    let block = block.split("```").next().unwrap_or_default();
    let lines: Vec<String> = block.lines().map(str::to_owned).collect();
    assert!(lines.len() >= 5, "{lines:?}");
    lines
}

/// The line of `err` about `what`, which must exist.
fn line<'e>(err: &'e str, what: &str) -> &'e str {
    let found = err.lines().find(|l| l.contains(what));
    found.unwrap_or_else(|| panic!("no line about {what:?} in:\n{err}"))
}

#[tokio::test]
async fn every_wrong_name_is_reported_at_its_position_with_the_closest_existing_one() {
    let stand_in = directory();
    let ghl = serve_stand_in(router(Arc::clone(&stand_in))).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let (code, out, err) = check(dir.path(), &ghl, RULES, &[]).await;
    assert_eq!(code, 1, "errors fail the check:\n{out}\n{err}");
    let file = dir.path().join("rules.yaml").display().to_string();
    let at = |l: usize, c: usize| format!("{file}:{l}:{c}: error: ");
    let dave = line(&err, DAVE);
    assert!(
        dave.starts_with(&at(3, 3))
            && dave
                .contains("(alias `dave`, Dave Old) is deleted in GoHighLevel (locations L0, L1)"),
        "{dave}"
    );
    let erin = line(&err, ERIN);
    assert!(
        erin.starts_with(&at(4, 3)) && erin.contains("is not a user of this location's company"),
        "{erin}"
    );
    let typo = line(&err, "AliceUser0000000000X");
    assert!(
        typo.starts_with(&at(20, 23))
            && typo.contains(&format!("did you mean user `{ALICE}` (Alice Smith)?")),
        "{typo}"
    );
    let pipeline = line(&err, "Sales Pipline");
    assert!(
        pipeline.starts_with(&at(23, 17))
            && pipeline.contains("did you mean `Sales Pipeline`?")
            && pipeline.ends_with("(location L0)"),
        "{pipeline}"
    );
    let stage = line(&err, "Qualifed");
    assert!(
        stage.starts_with(&at(24, 22)) && stage.contains("did you mean `Qualified`?"),
        "{stage}"
    );
    let by_name = line(&err, "customFields.Lead Score");
    assert!(
        by_name.starts_with(&at(26, 9))
            && by_name.contains(&format!("write `customFields.{LEAD_SCORE}`")),
        "{by_name}"
    );
    let no_id = line(&err, "NoSuchField000000009");
    assert!(
        no_id.starts_with(&at(27, 9)) && no_id.contains("(it has: CSM, Lead Score)"),
        "{no_id}"
    );
    let label = line(&err, "`Lead Scor`");
    assert!(
        label.starts_with(&at(28, 9)) && label.contains("did you mean `Lead Score`?"),
        "{label}"
    );
    let unknown = line(&err, "utmCampaignX");
    assert!(
        unknown.contains(": warning: ") && unknown.contains("neither a key"),
        "{unknown}"
    );
    // Carol follows only in L1, where she has access; `good` names everything rightly.
    assert!(!err.contains(CAROL), "{err}");
    for l in 9..=18 {
        assert!(!err.contains(&format!("{file}:{l}:")), "line {l}:\n{err}");
    }
    let scope = line(&err, "opportunities.readonly");
    assert!(scope.starts_with("location L1: error: the token lacks `opportunities.readonly`, needed for the pipeline and stage names of rules `good`, `bad-names`"), "{scope}");
    assert!(
        out.contains("online: location L0: read 3 users, 1 pipeline, 2 custom fields"),
        "{out}"
    );
    for documented in readme_example() {
        let printed = documented.replace("rules.yaml:", &format!("{file}:"));
        assert!(
            err.lines().any(|l| l == printed),
            "README's {printed:?} is not printed:\n{err}"
        );
    }
    assert!(
        !format!("{out}{err}").contains("tok-L"),
        "a token was printed"
    );
    let calls = stand_in.lock().unwrap().calls.clone();
    let once = |path: &str| calls.get(path).copied();
    assert_eq!(once("/opportunities/pipelines"), Some(2), "{calls:?}");
    assert_eq!(once("/locations/L0/customFields"), Some(1), "{calls:?}");
    assert_eq!(once("/locations/L0"), Some(1), "{calls:?}");
    // Per location its users, and for L0 the ids it lacks, one page each; the ids L1 lacks
    // were looked up already for L0 (the same company).
    assert_eq!(once("/users/search"), Some(3), "{calls:?}");
}

#[tokio::test]
async fn rules_naming_what_exists_pass_and_one_location_can_be_checked() {
    let stand_in = directory();
    let ghl = serve_stand_in(router(Arc::clone(&stand_in))).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let good: String = RULES
        .split("  - name: bad-users")
        .next()
        .unwrap_or_default()
        .to_owned();
    let (code, out, err) = check(dir.path(), &ghl, &good, &["--location", "L0"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("online: location L0: read") && !out.contains("location L1"),
        "{out}"
    );
    assert!(out.contains("online: ok (0 warnings)"), "{out}");
    let calls: HashMap<String, u32> = stand_in.lock().unwrap().calls.clone();
    assert!(!calls.contains_key("/locations/L1"), "{calls:?}");
}

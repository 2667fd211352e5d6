//! `autofollow check` warns about rules that load but cannot work as written, and
//! `--strict` makes the warnings errors.

use crate::common::{USERS, repo};

fn check(yaml: &str, strict: bool) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    std::fs::write(&file, format!("{USERS}{yaml}")).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_autofollow"));
    command.arg("check").arg(&file);
    if strict {
        command.arg("--strict");
    }
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn rules_that_cannot_work_as_written_are_warned_about_at_their_position() {
    let rules = "rules:
  - name: stage-on-contacts
    events: [ContactCreate]
    when: {stage: Proposal}
    add: [alice]
  - name: one-way-of-two
    events: [ContactCreate]
    when: {any: [{stage: Proposal}, {has_tag: x}], not: {status: won}}
    add: [alice]
  - name: tags-on-deals
    events: [OpportunityStageUpdate, AppointmentCreate]
    when: {tag_removed: vip}
    add: [alice]
  - name: workflow-on-contacts
    events: [ContactUpdate]
    when: {workflow: Hot leads}
    add: [bob]
  - name: stop-all
    stop: true
  - name: after
    add: [carol]
";
    let (code, err) = check(rules, false);
    assert_eq!(code, 0, "warnings only: {err}");
    for line in [
        "rules.yaml:6:5: warning: rule `stage-on-contacts` can never match: `stage` needs an opportunity or workflow event, but its `events` (ContactCreate) include none",
        "rules.yaml:14:5: warning: rule `tags-on-deals` can never match: `tag_removed` needs an event that carries the contact's tags",
        "rules.yaml:18:5: warning: rule `workflow-on-contacts` can never match: `workflow` needs a workflow event",
        "rules.yaml:24:5: warning: rule `after` is never evaluated: rule `stop-all`",
    ] {
        assert!(err.contains(line), "{line} in:\n{err}");
    }
    assert!(
        !err.contains("one-way-of-two"),
        "an alternative may hold: {err}"
    );
    let (code, err) = check(rules, true);
    assert_eq!(code, 1);
    assert!(
        err.contains("4 warnings, and --strict makes warnings errors"),
        "{err}"
    );
}

#[test]
fn more_users_than_the_follower_limit_over_all_rules_is_warned_about() {
    let ids: Vec<String> = (0..10)
        .map(|i| format!("User{i:02}aaaaaaaaaaaaaaa"))
        .collect();
    let rules = format!(
        "rules:\n  - name: many\n    add: [{}]\n  - name: owner\n    events: [OpportunityCreate]\n    add: [assigned_user]\n",
        ids.join(", ")
    );
    let (code, err) = check(&rules, false);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "the rules can add 11 different users to one contact; GoHighLevel allows at most 10"
        ),
        "{err}"
    );
    let fewer = rules.replace(&format!(", {}", ids[9]), "");
    let (_, err) = check(&fewer, false);
    assert!(!err.contains("different users"), "{err}");
}

#[test]
fn the_example_rules_pass_the_strict_check() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_autofollow"))
        .args(["check", "--strict"])
        .arg(repo().join("rules"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.is_empty(), "{err}");
}

#[test]
fn a_user_one_rule_adds_and_a_later_one_removes_under_conditions_that_can_both_hold_is_warned_about()
 {
    // USERS takes lines 1-4; the rules' lines are counted from 5.
    let rules = "rules:
  - name: vip
    when: {has_tag: vip}
    add: [alice, bob]
  - name: lost
    when: {status: lost}
    remove: [alice]
  - name: vip-gone
    when: {tag_removed: vip}
    remove: [bob]
  - name: no-vip
    when: {lacks_tag: [vip, gold]}
    remove: [alice]
  - name: contacts-only
    events: [ContactCreate]
    add: [carol]
  - name: deals-only
    when: {stage: Won}
    remove: [carol]
  - name: not-lost
    when: {has_tag: gold, not: {any: [{has_tag: x}, {status: [lost, won]}]}}
    add: [alice]
  - name: lost-again
    when: {status: lost}
    remove: [alice]
";
    let (code, err) = check(rules, false);
    assert_eq!(code, 0, "warnings only: {err}");
    let warned: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("one event can match both"))
        .collect();
    assert!(
        warned.iter().any(|l| l.contains("rules.yaml:9:5: warning: rule `lost` removes `alice`, whom the earlier rule `vip` (")
            && l.ends_with(":6:5) adds, and one event can match both: then `lost` wins, as the later rule. If that is meant, exclude its case from `vip` with `not`; if not, exclude it from `lost`")),
        "{err}"
    );
    // A tag present and gone at once, a tag and its absence, an event type no opportunity
    // condition can hold for, and a case ruled out with `not` cannot hold together.
    for pair in [
        "`vip-gone` removes `bob`",
        "`no-vip` removes",
        "`deals-only`",
        "whom the earlier rule `not-lost`",
    ] {
        assert!(!err.contains(pair), "{pair} was warned about:\n{err}");
    }
    // `lost-again` against `vip` holds (a vip's lost deal) and is reported; against
    // `not-lost` it is not.
    assert_eq!(warned.len(), 2, "{err}");
    assert!(
        warned
            .iter()
            .any(|l| l.contains("rule `lost-again` removes `alice`, whom the earlier rule `vip`")),
        "{err}"
    );
}

#[test]
fn an_earlier_rule_that_stops_evaluation_decides_alone() {
    let rules = "rules:
  - name: vip
    when: {has_tag: vip}
    add: [alice]
    stop: true
  - name: lost
    when: {status: lost}
    remove: [alice]
";
    let (_, err) = check(rules, false);
    assert!(!err.contains("one event can match both"), "{err}");
}

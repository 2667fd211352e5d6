//! `autofollow test`: rule tests in YAML: the example rules' own pass; a failing case prints
//! the difference and the rules involved and exits 1; JUnit and coverage reports.

use crate::common::repo;

/// Runs `autofollow test ARGS`; (exit code, stdout, stderr).
fn test(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_autofollow"))
        .arg("test")
        .args(args)
        .current_dir(repo())
        .env_remove("AUTOFOLLOW_RULES")
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

fn case_file(dir: &tempfile::TempDir, yaml: &str) -> String {
    let path = dir.path().join("cases.yaml");
    std::fs::write(&path, yaml).unwrap();
    path.display().to_string()
}

#[test]
fn the_example_rules_ship_with_passing_tests() {
    let (code, out, err) = test(&["rules"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("8 cases, 0 failed"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
}

#[test]
fn a_failing_case_shows_the_difference_and_the_rules_involved_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = case_file(
        &dir,
        "tests:\n  - name: wrong on purpose\n    event: {type: ContactCreate, locationId: loc1, id: c1, source: Facebook Ads}\n    expect:\n      add: [bob]\n      not_matched: [facebook-leads]\n  - name: right\n    event: {type: ContactCreate, locationId: loc1, id: c1, source: Facebook Ads}\n    expect: {add: [alice]}\n",
    );
    let junit = dir.path().join("report.xml");
    let junit_arg = junit.display().to_string();
    let (code, out, _) = test(&[&file, "--rules", "rules", "--junit", &junit_arg]);
    assert_eq!(code, 1, "{out}");
    let at = format!("FAIL  {file}:2: wrong on purpose");
    assert!(out.contains(&at), "{at} in:\n{out}");
    for line in [
        "add: expected [bob], got [alice]",
        "expected rule facebook-leads not to match; it did",
        "rule facebook-leads (rules/10-leads.yaml:",
        "[yes] source: lead source \"Facebook Ads\" matches",
        "ok    ",
        "2 cases, 1 failed",
    ] {
        assert!(out.contains(line), "{line} in:\n{out}");
    }
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains(r#"tests="2""#) && xml.contains(r#"failures="1""#),
        "{xml}"
    );
    assert!(
        xml.contains("<failure message=\"add: expected [bob], got [alice]"),
        "{xml}"
    );
}

/// With the followers given, the ledger's rules apply: a removal that does not name the user
/// touches only a follower autofollow added, and the change is against that list.
#[test]
fn previous_followers_and_who_added_them_decide_removals() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        "users: {alice: 9hTnVvSr1Q2ZyE5kHfXm, bob: 4kLmPq7Rt2WvXy9ZaBcD}\nrules:\n  - name: vip\n    when: {has_tag: vip}\n    add: [alice]\n    follow: while_matching\n  - name: owner-leaves\n    when: {assigned_changed: true}\n    remove: [previous_assigned_user]\n",
    )
    .unwrap();
    let file = case_file(
        &dir,
        "tests:\n  - name: vip ends; alice was autofollow's\n    event: {type: ContactTagUpdate, locationId: l1, id: c1, tags: []}\n    previous: {tags: [vip], followers: {alice: vip}}\n    expect: {remove: [alice], add: []}\n  - name: the old owner was added by hand, so stays\n    event: {type: ContactUpdate, locationId: l1, id: c1, assignedTo: 9hTnVvSr1Q2ZyE5kHfXm}\n    previous: {assigned: bob, followers: {bob: hand}}\n    expect: {remove: [], matched: [owner-leaves]}\n  - name: the old owner was autofollow's, so goes\n    event: {type: ContactUpdate, locationId: l1, id: c1, assignedTo: 9hTnVvSr1Q2ZyE5kHfXm}\n    previous: {assigned: bob, followers: {bob: owner-leaves}}\n    expect: {remove: [bob]}\n",
    );
    let rules_arg = rules.display().to_string();
    let (code, out, err) = test(&[&file, "--rules", &rules_arg]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("3 cases, 0 failed"), "{out}");
}

#[test]
fn coverage_lists_the_untested_rules_and_conditions() {
    let dir = tempfile::tempdir().unwrap();
    let file = case_file(
        &dir,
        "tests:\n  - name: one lead\n    event: {type: ContactCreate, locationId: loc1, id: c1, source: Facebook Ads}\n    expect: {add: [alice]}\n",
    );
    let (code, out, _) = test(&[&file, "--rules", "rules", "--coverage"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("coverage: 1 of 9 rules matched by a case"),
        "{out}"
    );
    assert!(
        out.contains("never matched: lost-deals (rules/20-pipeline.yaml:"),
        "{out}"
    );
    assert!(
        out.contains("never false: rule facebook-leads, source"),
        "{out}"
    );
    assert!(!out.contains("never matched: facebook-leads"), "{out}");
}

#[test]
fn a_bad_test_file_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let file = case_file(
        &dir,
        "tests:\n  - name: typo\n    event: {type: ContactCreate, locationId: l, id: c}\n    expectt: {add: []}\n",
    );
    let (code, _, err) = test(&[&file, "--rules", "rules"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown field `expectt`"), "{err}");
    let unknown = case_file(
        &dir,
        "tests:\n  - name: who\n    event: {type: ContactCreate, locationId: l, id: c}\n    expect: {add: [zoe]}\n",
    );
    let (code, out, _) = test(&[&unknown, "--rules", "rules"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("`zoe` is neither a user alias nor a user id"),
        "{out}"
    );
}

/// Pools deal in rule tests from a fresh sequence (the heaviest member first) on the case's
/// `today`, skipping who is away that day; a member already following for the rule is kept.
#[test]
fn cases_see_the_member_a_pool_deals_on_their_day() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        "users: {alice: 9hTnVvSr1Q2ZyE5kHfXm, bob: 4kLmPq7Rt2WvXy9ZaBcD}\npools:\n  sales:\n    members: {alice: 2, bob: 1}\n    away: {alice: [\"2026-12-24\", \"2027-01-02\"]}\nrules:\n  - name: deal\n    add: [{pool: sales}]\n",
    )
    .unwrap();
    let event = "event: {type: ContactCreate, locationId: loc1, id: c1}";
    let file = case_file(
        &dir,
        &format!(
            "tests:\n  - name: first turn\n    {event}\n    today: 2026-12-01\n    expect: {{add: [alice]}}\n  - name: alice away\n    {event}\n    today: 2026-12-25\n    expect: {{add: [bob]}}\n  - name: kept\n    {event}\n    today: 2026-12-01\n    previous: {{followers: {{bob: deal}}}}\n    expect: {{add: []}}\n  - name: wrong day\n    {event}\n    today: 2026-12-25\n    expect: {{add: [alice]}}\n  - name: no day\n    {event}\n    today: someday\n    expect: {{add: [alice]}}\n"
        ),
    );
    let rules_arg = rules.display().to_string();
    let (code, out, _) = test(&[&file, "--rules", &rules_arg]);
    assert_eq!(code, 1, "{out}");
    for line in [
        "5 cases, 2 failed",
        "wrong day",
        "add: expected [alice], got [bob]",
        "add 4kLmPq7Rt2WvXy9ZaBcD (pool sales: turn; alice away)",
        "today: \"someday\" is not a date (YYYY-MM-DD)",
    ] {
        assert!(out.contains(line), "{line} in:\n{out}");
    }
    for passed in ["ok    ", "first turn", "alice away", "kept"] {
        assert!(out.contains(passed), "{passed} in:\n{out}");
    }
}

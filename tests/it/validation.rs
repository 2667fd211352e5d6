//! Loading reports every problem of every file, each at its file:line:column.

use autofollow::rules::{RuleSet, Severity};

/// Every diagnostic's text for these files, or an empty list when they load (warnings then).
fn diagnostics(files: &[(&str, &str)]) -> Vec<String> {
    match RuleSet::from_sources(files) {
        Ok(set) => set.warnings().iter().map(ToString::to_string).collect(),
        Err(e) => e.diagnostics.iter().map(ToString::to_string).collect(),
    }
}

fn one(text: &str) -> Vec<String> {
    diagnostics(&[("r.yaml", text)])
}

const ALIASES: &str = "users:\n  alice: 9hTnVvSr1Q2ZyE5kHfXm\n";

#[test]
fn yaml_syntax_errors_have_a_position() {
    let d = one("rules:\n  - name: x\n    add: [alice\n");
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(
        d[0].starts_with("r.yaml:4:1: error: invalid YAML:"),
        "{d:?}"
    );
}

#[test]
fn unknown_keys_are_reported_with_the_closest_valid_key() {
    let d = one(&format!(
        "{ALIASES}rule:\n  - x\nrules:\n  - name: a\n    ad: [alice]\n    when:\n      has_tags: vip\n      colour: red\n"
    ));
    assert_eq!(
        d,
        [
            "r.yaml:3:1: error: unknown key `rule` in the rule file; did you mean `rules`?",
            "r.yaml:6:5: error: rule `a` has neither `add` nor `remove`, so it would do nothing",
            "r.yaml:7:5: error: unknown key `ad` in a rule; did you mean `add`?",
            "r.yaml:9:7: error: unknown key `has_tags` in `when` (conditions); did you mean `has_tag`?",
            "r.yaml:10:7: error: unknown key `colour` in `when` (conditions); expected one of: source, has_tag, lacks_tag, tag_added, tag_removed, pipeline, stage, stage_entered, stage_left, status, workflow, assigned_changed, fields, any, not",
        ]
    );
}

#[test]
fn wrong_value_types_are_reported() {
    let d = one(
        "users: [alice]\nrules:\n  - name: a\n    enabled: maybe\n    stop: \"true\"\n    when:\n      has_tag: {a: b}\n      source: [ok, [nested]]\n      any: {has_tag: x}\n      not: [x]\n      fields: {customData.x: {y: 1}}\n    add: alice\n  - just a string\n  - name: b\n    when: [x]\n    add: [9hTnVvSr1Q2ZyE5kHfXm]\n",
    );
    assert_eq!(
        d,
        [
            "r.yaml:1:8: error: `users` must map alias names to user ids, found a list",
            "r.yaml:4:14: error: `enabled` must be true or false, found `maybe`",
            "r.yaml:5:11: error: `stop` must be true or false, found `true`",
            "r.yaml:7:16: error: `has_tag` must be a string or a list of strings, found a mapping",
            "r.yaml:8:20: error: `source` values must be non-empty strings, found a list",
            "r.yaml:9:12: error: `any` must be a non-empty list of condition mappings, found a mapping",
            "r.yaml:10:12: error: `not` must be a mapping of conditions, found a list",
            "r.yaml:11:30: error: `fields.customData.x` must be a string or a list of strings, found a mapping",
            "r.yaml:12:10: warning: `alice` is not an alias and does not look like a GoHighLevel user id (20 letters and digits)",
            "r.yaml:13:5: error: each rule must be a mapping, found a string",
            "r.yaml:15:11: error: `when` must be a mapping of conditions, found a list",
        ]
    );
}

#[test]
fn empty_and_missing_values_are_reported() {
    let d = one(
        "rules:\n  - name: a\n    when:\n      has_tag: []\n      source:\n      fields: {}\n    add: [\"\"]\n",
    );
    assert_eq!(
        d,
        [
            "r.yaml:4:16: error: `has_tag` must list at least one value",
            "r.yaml:6:7: error: `source` values must be non-empty strings, found nothing",
            "r.yaml:6:15: error: `fields` must map dot paths to values, found an empty mapping",
            "r.yaml:7:11: error: `add` values must be non-empty strings, found a string",
        ]
    );
}

#[test]
fn missing_and_duplicate_rule_names_are_reported_across_files() {
    let d = diagnostics(&[
        (
            "a.yaml",
            "users:\n  alice: 9hTnVvSr1Q2ZyE5kHfXm\nrules:\n  - name: vip\n    add: [alice]\n  - add: [alice]\n",
        ),
        (
            "b.yaml",
            "rules:\n  - description: x\n    name: vip\n    add: [alice]\n",
        ),
    ]);
    assert_eq!(
        d,
        [
            "a.yaml:6:5: error: rule has no `name`; every rule needs a unique name",
            "b.yaml:2:5: error: duplicate rule name `vip` (first defined at a.yaml:4:5)",
        ]
    );
}

#[test]
fn a_rule_must_add_or_remove_or_stop() {
    assert_eq!(
        one("rules:\n  - name: idle\n    when: {has_tag: x}\n"),
        ["r.yaml:2:5: error: rule `idle` has neither `add` nor `remove`, so it would do nothing"]
    );
    assert_eq!(
        one("rules:\n  - name: guard\n    when: {has_tag: x}\n    stop: true\n"),
        Vec::<String>::new()
    );
}

#[test]
fn a_rule_may_not_add_more_than_ten_users() {
    let ids: Vec<String> = (0..11).map(|i| format!("User{i:016}")).collect();
    let d = one(&format!(
        "rules:\n  - name: crowd\n    add: [{}]\n",
        ids.join(", ")
    ));
    assert_eq!(
        d,
        [
            "r.yaml:3:11: error: rule adds 11 users; GoHighLevel allows at most 10 followers per contact"
        ]
    );
    let ten = &ids[..10];
    assert!(
        one(&format!(
            "rules:\n  - name: ok\n    add: [{}]\n",
            ten.join(", ")
        ))
        .is_empty()
    );
}

#[test]
fn unknown_event_types_and_statuses_are_reported() {
    let d = one(
        "rules:\n  - name: a\n    events: [ContactCreated, Workflow, Foo]\n    when:\n      status: [won, closed]\n    add: [9hTnVvSr1Q2ZyE5kHfXm]\n",
    );
    assert_eq!(
        d,
        [
            "r.yaml:3:14: error: unknown event type `ContactCreated`; did you mean `ContactCreate`?",
            "r.yaml:3:40: error: unknown event type `Foo`; see the README for the supported event types",
            "r.yaml:5:21: error: invalid status `closed`; expected one of: open, won, lost, abandoned",
        ]
    );
}

#[test]
fn a_literal_that_is_not_an_id_is_a_warning_with_the_closest_alias() {
    let set = RuleSet::from_sources(&[(
        "r.yaml",
        "users:\n  alice: 9hTnVvSr1Q2ZyE5kHfXm\nrules:\n  - name: a\n    add: [alcie]\n",
    )])
    .expect("warnings do not fail loading");
    let w: Vec<String> = set.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(
        w,
        [
            "r.yaml:5:11: warning: `alcie` is not an alias and does not look like a GoHighLevel user id (20 letters and digits); did you mean alias `alice`?"
        ]
    );
    assert_eq!(set.warnings()[0].severity, Severity::Warning);
}

#[test]
fn version_must_be_one() {
    assert_eq!(
        one("version: 2\nrules: []\n"),
        ["r.yaml:1:10: error: `version` must be 1, the only version; found `2`"]
    );
    assert!(one("version: 1\nrules: []\n").is_empty());
}

#[test]
fn duplicate_keys_two_documents_anchors_and_tags_are_rejected() {
    assert_eq!(
        one("rules:\n  - name: a\n    add: [9hTnVvSr1Q2ZyE5kHfXm]\n    name: b\n"),
        ["r.yaml:4:5: error: duplicate key `name` (first at line 2, column 5)"]
    );
    assert_eq!(
        one("rules: []\n---\nrules: []\n"),
        ["r.yaml:2:1: error: a rule file holds one YAML document; split this one into two files"]
    );
    assert_eq!(
        one("users: &u\n  a: 9hTnVvSr1Q2ZyE5kHfXm\n"),
        ["r.yaml:2:4: error: YAML anchors and aliases (&, *) are not supported in rule files"]
    );
    assert_eq!(
        one("rules: !!seq []\n"),
        ["r.yaml:1:14: error: YAML tags (!, !!) are not supported in rule files"]
    );
    assert_eq!(
        one("- name: a\n"),
        ["r.yaml:1:1: error: expected a mapping with `rules:` at the top of the file"]
    );
}

#[test]
fn aliases_are_checked_across_files() {
    let d = diagnostics(&[
        (
            "a.yaml",
            "users:\n  alice: 9hTnVvSr1Q2ZyE5kHfXm\n  assigned_user: 4kLmPq7Rt2WvXy9ZaBcD\n",
        ),
        (
            "b.yaml",
            "users:\n  alice: 4kLmPq7Rt2WvXy9ZaBcD\n  bob: bob\n  carol: [x]\n",
        ),
    ]);
    assert_eq!(
        d,
        [
            "a.yaml:3:3: error: `assigned_user` is reserved for an assignee and cannot be an alias",
            "b.yaml:2:3: error: alias `alice` is already defined as `9hTnVvSr1Q2ZyE5kHfXm` at a.yaml:2:3",
            "b.yaml:3:8: warning: user id `bob` of alias `bob` does not look like a GoHighLevel id (20 letters and digits)",
            "b.yaml:4:10: error: alias `carol` must map to a user id (a string), found a list",
        ]
    );
}

#[test]
fn a_user_both_added_and_removed_by_one_rule_is_an_error() {
    assert_eq!(
        one(&format!(
            "{ALIASES}rules:\n  - name: a\n    add: [alice]\n    remove: [9hTnVvSr1Q2ZyE5kHfXm]\n"
        )),
        ["r.yaml:6:14: error: `9hTnVvSr1Q2ZyE5kHfXm` is both added and removed by this rule"]
    );
}

#[test]
fn every_error_of_every_file_is_collected() {
    let d = diagnostics(&[
        (
            "a.yaml",
            "rules:\n  - name: a\n    add: [x]\n    when: {status: nope}\n  - name: b\n",
        ),
        ("b.yaml", "rules: [\n"),
        (
            "c.yaml",
            "rules:\n  - name: c\n    events: [Nope]\n    add: [9hTnVvSr1Q2ZyE5kHfXm]\n",
        ),
    ]);
    let errors: Vec<&String> = d.iter().filter(|l| l.contains(": error: ")).collect();
    assert_eq!(errors.len(), 4, "{d:#?}");
    assert!(
        errors[0].starts_with("a.yaml:4:20: error: invalid status `nope`"),
        "{errors:#?}"
    );
    assert!(errors[1].starts_with("a.yaml:5:5: error: rule `b` has neither"));
    assert!(errors[2].starts_with("b.yaml:2:1: error: invalid YAML"));
    assert!(errors[3].starts_with("c.yaml:3:14: error: unknown event type `Nope`"));
}

#[test]
fn files_that_cannot_be_read_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = RuleSet::load(&dir.path().join("missing.yaml")).expect_err("missing file");
    assert!(
        err.to_string()
            .contains("missing.yaml: error: cannot read:"),
        "{err}"
    );
    let err = RuleSet::load(dir.path()).expect_err("empty dir");
    assert!(
        err.to_string()
            .contains("no rule files (*.yaml, *.yml) in this directory"),
        "{err}"
    );
}

#[test]
fn a_directory_loads_yaml_and_yml_files_in_name_order_skipping_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write =
        |name: &str, text: &str| std::fs::write(dir.path().join(name), text).expect("write");
    write(
        "20-b.yml",
        "rules:\n  - name: second\n    add: [9hTnVvSr1Q2ZyE5kHfXm]\n",
    );
    write(
        "10-a.yaml",
        "rules:\n  - name: first\n    add: [9hTnVvSr1Q2ZyE5kHfXm]\n",
    );
    write("notes.txt", "not yaml: [");
    write(".hidden.yaml", "not yaml: [");
    std::fs::create_dir(dir.path().join("sub.yaml")).expect("mkdir");
    let set = RuleSet::load(dir.path()).expect("loads");
    let names: Vec<&str> = set.rules().iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["first", "second"]);
    assert_eq!(set.files().len(), 2);
}

#[test]
fn follow_is_on_match_or_while_matching_on_conditions_that_hold_for_a_while() {
    let d = one(&format!(
        "{ALIASES}rules:\n  - name: a\n    add: [alice]\n    follow: sometimes\n  - name: b\n    when: {{tag_added: vip}}\n    add: [alice]\n    follow: while_matching\n  - name: c\n    when: {{any: [{{has_tag: x}}, {{not: {{stage_entered: Won}}}}]}}\n    add: [alice]\n    follow: while_matching\n  - name: d\n    when: {{has_tag: vip, stage: Won}}\n    add: [alice]\n    follow: while_matching\n"
    ));
    assert_eq!(
        d,
        [
            "r.yaml:6:13: error: `follow` must be `on_match` or `while_matching`, found `sometimes`",
            "r.yaml:10:13: error: `follow: while_matching` needs conditions that hold for a while; `tag_added` holds only when the change happens",
            "r.yaml:14:13: error: `follow: while_matching` needs conditions that hold for a while; `stage_entered` holds only when the change happens",
        ]
    );
}

#[test]
fn a_rule_on_delete_events_is_a_warning() {
    let d = one(&format!(
        "{ALIASES}rules:\n  - name: gone\n    events: [ContactDelete]\n    remove: [alice]\n"
    ));
    assert_eq!(
        d,
        [
            "r.yaml:5:14: warning: `ContactDelete` is never decided on: GoHighLevel is not called for a deleted record (its queued work ends, its state is forgotten)"
        ]
    );
}

/// Targets from fields and tables: an unknown table (with the closest name), a table user
/// that is no alias or id, a table target without `key`, a table entry or default an
/// earlier entry always wins over, and a table defined twice, each at its position.
#[test]
fn tables_and_table_targets_are_checked_at_their_positions() {
    let tables = "tables:\n  territory:\n    \"9*\": alice\n    \"94*\": alice\n    \"*\": [alice, dave!]\n    default: alice\n";
    let rules = "rules:\n  - name: a\n    add:\n      - { table: teritory, key: postalCode }\n      - { table: territory }\n      - { field: customData.csm, key: x }\n";
    let d = diagnostics(&[("r.yaml", &format!("{ALIASES}{tables}{rules}"))]);
    assert_eq!(
        d,
        [
            "r.yaml:6:5: warning: table `territory`: entry `94*` is never used: `9*` (at r.yaml:5:5) comes first and matches every value it does",
            "r.yaml:7:18: error: `dave!` is neither an alias nor a GoHighLevel user id (letters, digits, `_` or `-`, at most 64)",
            "r.yaml:8:5: warning: table `territory`: `default` is never used: `*` (at r.yaml:7:5) matches every value",
            "r.yaml:12:18: error: unknown table `teritory`; did you mean `territory`?",
            "r.yaml:13:18: error: table target `territory` needs `key`, the dot path of the value to look up",
            "r.yaml:14:11: error: `key` belongs to a `table` target; a `field` target is the field alone",
        ],
    );
    let twice = diagnostics(&[
        ("a.yaml", "tables:\n  t: { x: 9hTnVvSr1Q2ZyE5kHfXm }\n"),
        ("b.yaml", "tables:\n  t: { y: 9hTnVvSr1Q2ZyE5kHfXm }\n"),
    ]);
    assert_eq!(
        twice,
        ["b.yaml:2:3: error: table `t` is already defined at a.yaml:2:3"]
    );
}

/// Pools: an unknown pool (with the closest name), a pool removed, a bad weight, a member
/// listed twice, a bad or reversed away period, someone away who is not a member, each at
/// its position.
#[test]
fn pools_and_pool_targets_are_checked_at_their_positions() {
    let pools = "pools:\n  sales:\n    members: { alice: 2, bob: x }\n    away:\n      alice: [\"2026-12-24\", \"2026-12-01\"]\n      carol: [\"2026-12-24\", \"2026-12-25\"]\n  twice:\n    members: [alice, alice]\n    away: { alice: [\"someday\", \"2026-12-25\"] }\n";
    let rules = "rules:\n  - name: a\n    add: [{ pool: sale }]\n    remove: [{ pool: sales }]\n";
    let d = one(&format!("{ALIASES}{pools}{rules}"));
    assert_eq!(
        d,
        [
            "r.yaml:5:31: error: the weight of `bob` must be a whole number from 1, found `x`",
            "r.yaml:7:14: error: the away period of `alice` ends before it starts",
            "r.yaml:8:7: error: `carol` is away but not a member of pool `sales`",
            "r.yaml:10:22: error: pool `twice` lists `alice` twice",
            "r.yaml:11:20: error: the away period of `alice` must be `[from, to]`, dates as YYYY-MM-DD, found a list",
            "r.yaml:14:19: error: unknown pool `sale`; did you mean `sales`?",
            "r.yaml:15:22: error: `pool sales` can only be added: a rule stops following a pool's pick with `follow: while_matching`",
        ],
    );
}

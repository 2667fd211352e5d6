//! Every example in the README runs: each YAML block loads (with the aliases of
//! `rules/00-users.yaml`), each rule example with a webhook body gives the plan the README
//! states, each `console` block prints what the README shows, and every rule key has a section.

use crate::common;
use std::process::Command;

use autofollow::model::event::{self, Parsed};
use autofollow::model::plan::PreviousState;
use autofollow::rules::{NoResolver, RuleSet};
use common::repo;

struct Block {
    lang: String,
    text: String,
    /// 1-based line of the opening fence.
    line: usize,
    /// Index in `lines` of the line after the closing fence.
    after: usize,
}

fn readme() -> (Vec<String>, Vec<Block>) {
    let text = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        // A fence may be indented (inside a list item): its body is, by as much.
        let indent = lines[i].len() - lines[i].trim_start().len();
        if let Some(lang) = lines[i].trim_start().strip_prefix("```") {
            let start = i;
            let mut body = Vec::new();
            i += 1;
            while i < lines.len() && lines[i].trim() != "```" {
                let line = &lines[i];
                body.push(line.get(indent..).unwrap_or(line.trim_start()));
                i += 1;
            }
            blocks.push(Block {
                lang: lang.trim().to_owned(),
                text: body.join("\n") + "\n",
                line: start + 1,
                after: i + 1,
            });
        }
        i += 1;
    }
    (lines, blocks)
}

fn load_with_aliases(block: &Block) -> RuleSet {
    let users = std::fs::read_to_string(repo().join("rules/00-users.yaml")).expect("users file");
    let name = format!("README.md@{}", block.line);
    match RuleSet::from_sources(&[
        ("rules/00-users.yaml", users.as_str()),
        (name.as_str(), block.text.as_str()),
    ]) {
        Ok(set) => {
            assert!(
                set.warnings().is_empty(),
                "README example at line {} has warnings: {:?}",
                block.line,
                set.warnings()
            );
            set
        }
        Err(e) => panic!("README example at line {} does not load:\n{e}", block.line),
    }
}

/// The text between the first pair of backticks of the first non-empty line from `from`,
/// if that line starts with `→`.
fn expected_plan(lines: &[String], from: usize) -> Option<String> {
    let line = lines[from..].iter().find(|l| !l.trim().is_empty())?;
    let rest = line.trim_start().strip_prefix("→ `")?;
    Some(rest.split('`').next()?.to_owned())
}

/// A Prometheus rule file example: well-formed, every alert with an expression, a severity and
/// a summary. (The series its expressions name are checked against `/metrics` in
/// tests/operations.rs.)
fn prometheus_rules(block: &Block) {
    let doc: serde_json::Value = serde_yaml::from_str(&block.text)
        .unwrap_or_else(|e| panic!("README line {}: {e}", block.line));
    let rules = doc["groups"][0]["rules"]
        .as_array()
        .unwrap_or_else(|| panic!("README line {}: no groups[0].rules", block.line));
    assert!(rules.len() >= 3);
    for rule in rules {
        for key in ["alert", "expr"] {
            assert!(rule[key].is_string(), "README line {}: {rule}", block.line);
        }
        assert!(rule["labels"]["severity"].is_string(), "{rule}");
        assert!(rule["annotations"]["summary"].is_string(), "{rule}");
    }
}

/// `autofollow test` runs a README test file against `rules/` and every case passes.
fn rule_tests_pass(block: &Block) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cases.yaml");
    std::fs::write(&file, &block.text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_autofollow"))
        .arg("test")
        .arg(&file)
        .arg("--rules")
        .arg(repo().join("rules"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "README line {}: {text}", block.line);
    assert!(text.contains(", 0 failed"), "{text}");
}

#[test]
fn every_yaml_example_loads_and_gives_the_plan_the_readme_states() {
    let (lines, blocks) = readme();
    let mut loaded = 0;
    let mut checked = 0;
    for (i, block) in blocks.iter().enumerate() {
        if block.lang != "yaml" {
            continue;
        }
        if block.text.starts_with("groups:") {
            prometheus_rules(block);
            continue;
        }
        // A token file (checked by connecting.rs).
        if block.text.starts_with("# GHL_LOCATION_TOKENS_FILE") {
            continue;
        }
        // A rule test file: it runs, and passes, against the example rules.
        if block.text.contains("\ntests:\n") || block.text.starts_with("tests:") {
            rule_tests_pass(block);
            continue;
        }
        let set = load_with_aliases(block);
        loaded += 1;
        let Some(body) = blocks.get(i + 1).filter(|b| b.lang == "json") else {
            continue;
        };
        let expected = expected_plan(&lines, body.after).unwrap_or_else(|| {
            panic!(
                "README line {}: a JSON example must be followed by `→ `plan``",
                body.line
            )
        });
        let event = match event::parse_any(body.text.as_bytes()) {
            Ok(Parsed::Event(e)) => e,
            other => panic!(
                "README line {}: the body is not an event: {other:?}",
                body.line
            ),
        };
        let decision = set.evaluate(&event, &PreviousState::default(), &NoResolver);
        let explained = set.explain(&event, &PreviousState::default(), &NoResolver);
        assert_eq!(decision.plan, explained.plan);
        assert_eq!(
            decision.plan.summary(),
            expected,
            "README example at line {}",
            block.line
        );
        checked += 1;
    }
    assert!(loaded >= 15, "only {loaded} YAML examples found");
    assert!(checked >= 14, "only {checked} examples with a plan found");
}

#[test]
fn every_console_example_prints_what_the_readme_shows() {
    let (_, blocks) = readme();
    let mut ran = 0;
    for block in blocks.iter().filter(|b| b.lang == "console") {
        let mut lines = block.text.lines().peekable();
        while let Some(line) = lines.next() {
            let command = line
                .strip_prefix("$ ")
                .unwrap_or_else(|| panic!("README line {}: expected `$ command`", block.line));
            let mut expected = String::new();
            while let Some(next) = lines.peek().filter(|l| !l.starts_with("$ ")) {
                expected.push_str(next);
                expected.push('\n');
                lines.next();
            }
            let mut words = command.split_whitespace();
            assert_eq!(
                words.next(),
                Some("autofollow"),
                "README line {}",
                block.line
            );
            let out = Command::new(env!("CARGO_BIN_EXE_autofollow"))
                .args(words)
                .current_dir(repo())
                .env_remove("AUTOFOLLOW_RULES")
                .output()
                .expect("runs");
            let printed = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                printed, expected,
                "README console example at line {}: `{command}`",
                block.line
            );
            ran += 1;
        }
    }
    assert!(ran >= 3, "only {ran} console examples found");
}

#[test]
fn every_rule_key_has_a_reference_section() {
    let text = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let headings: Vec<&str> = text.lines().filter(|l| l.starts_with("### ")).collect();
    let keys = autofollow::rules::RULE_KEYS
        .iter()
        .chain(autofollow::rules::CONDITION_KEYS)
        .chain(&["assigned_user", "previous_assigned_user"]);
    for key in keys {
        let quoted = format!("`{key}`");
        assert!(
            headings.iter().any(|h| h.contains(&quoted)),
            "no README section for `{key}`"
        );
    }
    for key in autofollow::rules::TOP_KEYS {
        assert!(
            text.contains(&format!("| `{key}` |")),
            "top-level key `{key}` missing from the table"
        );
    }
}

/// The quick start's `curl` command, sent to a service started as the quick start says
/// (example rules, the secret `change-me`, no token: dry run), gives the answer it states.
#[tokio::test]
async fn the_quick_start_curl_example_is_accepted_and_decided_as_described() {
    use common::service::{Options, spawn_with};
    let (lines, _) = readme();
    let curl = lines
        .iter()
        .find(|l| l.starts_with("curl "))
        .expect("a curl example");
    let words: Vec<String> = shell_words(curl);
    let mut headers = Vec::new();
    let mut data = None;
    let mut url = None;
    let mut i = 1;
    while i < words.len() {
        match words[i].as_str() {
            "-H" => {
                headers.push(words[i + 1].clone());
                i += 1;
            }
            "-d" => {
                data = Some(words[i + 1].clone());
                i += 1;
            }
            "-X" => i += 1,
            w if !w.starts_with('-') => url = Some(w.to_owned()),
            _ => {}
        }
        i += 1;
    }
    let secret = headers
        .iter()
        .find_map(|h| h.strip_prefix("X-Webhook-Secret: "))
        .expect("secret header")
        .to_owned();
    let app = spawn_with(Options {
        token: false,
        secret,
        rules_path: Some(repo().join("rules")),
        ..Options::default()
    })
    .await;
    let url = url.expect("url");
    let path = &url[url.find('/').expect("path")..];
    let body =
        std::fs::read(repo().join(data.expect("-d").trim_start_matches('@'))).expect("body file");
    let mut request = app.http.post(format!("{}{path}", app.base)).body(body);
    for h in &headers {
        let (k, v) = h.split_once(": ").expect("header");
        request = request.header(k, v);
    }
    let answer = request
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("text");
    let stated = lines
        .iter()
        .find_map(|l| {
            l.strip_prefix("It answers `")
                .and_then(|r| r.split('`').next())
        })
        .expect("the README states the answer");
    assert_eq!(answer, stated);
    app.drain().await;
    let decisions = app.decisions(1).await;
    assert_eq!(decisions[0].matched, ["facebook-leads"]);
    assert_eq!(decisions[0].plan.summary(), "add: alice");
    assert!(decisions[0].dry_run);
    app.shutdown().await;
}

/// Splits a shell line on spaces, honouring single quotes.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '\'' => quoted = !quoted,
            ' ' if !quoted => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// The Configuration section lists exactly the settings `autofollow serve` reads: one table row
/// per environment variable, with the default `serve --help` shows, and every flag.
#[test]
fn the_configuration_table_matches_serve_help() {
    let help = Command::new(env!("CARGO_BIN_EXE_autofollow"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = &readme[readme.find("## Configuration").unwrap()..];
    let section = &section[..section.find("\n## ").unwrap()];
    let rows: Vec<Vec<&str>> = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| l.split(" | ").collect())
        .collect();
    let documented: Vec<&str> = rows
        .iter()
        .map(|r| r[0].trim_start_matches("| ").trim_matches('`'))
        .collect();
    let mut read = Vec::new();
    for chunk in help.split("\n      --").skip(1) {
        let flag = chunk.split_whitespace().next().unwrap();
        if flag == "help" {
            continue;
        }
        assert!(
            section.contains(&format!("`--{flag}`")),
            "--{flag} is not in the flag list"
        );
        let text = chunk.split_whitespace().collect::<Vec<_>>().join(" ");
        let env = text
            .split("[env: ")
            .nth(1)
            .and_then(|t| t.split(['=', ']']).next())
            .unwrap_or_else(|| panic!("--{flag} has no environment variable"));
        read.push(env.to_owned());
        let row = rows
            .iter()
            .find(|r| r[0].contains(&format!("`{env}`")))
            .unwrap_or_else(|| panic!("{env} has no row"));
        if let Some(default) = text.split("[default: ").nth(1) {
            let default = default.split(']').next().unwrap();
            assert!(
                row[1].contains(&format!("`{default}`")),
                "{env}: the README's default {} is not {default}",
                row[1]
            );
        }
    }
    let mut documented: Vec<String> = documented.iter().map(|s| (*s).to_owned()).collect();
    documented.sort();
    read.sort();
    assert_eq!(documented, read);
}

/// The editor schema (`autofollow schema`) knows exactly the keys the loader accepts, every
/// rule file the README and `rules/` show validates against it, and it refuses what the
/// loader refuses by key or value.
#[test]
fn the_schema_matches_the_loader_and_every_example_validates() {
    use autofollow::rules::{CONDITION_KEYS, RULE_KEYS, SCHEMA, TOP_KEYS};
    let schema: serde_json::Value = serde_json::from_str(SCHEMA).unwrap();
    let keys = |pointer: &str| -> std::collections::BTreeSet<String> {
        let map = schema
            .pointer(pointer)
            .and_then(serde_json::Value::as_object)
            .unwrap();
        map.keys().cloned().collect()
    };
    let set = |keys: &[&str]| keys.iter().map(|k| (*k).to_owned()).collect();
    assert_eq!(keys("/properties"), set(TOP_KEYS));
    assert_eq!(keys("/$defs/rule/properties"), set(RULE_KEYS));
    assert_eq!(keys("/$defs/conditions/properties"), set(CONDITION_KEYS));
    let validator = jsonschema::validator_for(&schema).unwrap();
    let valid = |yaml: &str, at: &str| {
        let doc: serde_json::Value =
            serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{at}: {e}"));
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{at}: {errors:?}");
    };
    let (_, blocks) = readme();
    let mut checked = 0;
    for block in blocks.iter().filter(|b| b.lang == "yaml") {
        let skip = ["groups:", "# GHL_LOCATION_TOKENS_FILE"];
        if skip.iter().any(|s| block.text.starts_with(s)) || block.text.contains("\ntests:\n") {
            continue;
        }
        valid(&block.text, &format!("README line {}", block.line));
        checked += 1;
    }
    assert!(checked > 15, "{checked} README examples");
    for entry in std::fs::read_dir(repo().join("rules")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            valid(
                &std::fs::read_to_string(&path).unwrap(),
                &path.display().to_string(),
            );
        }
    }
    for bad in [
        "rules: [{name: a, whenn: {}}]",
        "rules: [{name: a, when: {status: maybe}}]",
        "version: 2",
    ] {
        let doc: serde_json::Value = serde_yaml::from_str(bad).unwrap();
        assert!(!validator.is_valid(&doc), "{bad} is refused");
    }
    let printed = std::process::Command::new(env!("CARGO_BIN_EXE_autofollow"))
        .arg("schema")
        .output()
        .unwrap();
    let printed: serde_json::Value = serde_json::from_slice(&printed.stdout).unwrap();
    assert_eq!(printed, schema);
}

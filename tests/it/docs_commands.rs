//! The commands BENCHMARKS.md, RELIABILITY.md and the README's development section give name
//! things that exist: test files, benchmarks, fuzz targets and their seed directories,
//! `autofollow-bench` subcommands and flags, the environment variables the tests read, and
//! the source files they point to.

use crate::common;
use std::process::Command;

const DOCS: [&str; 5] = [
    "BENCHMARKS.md",
    "RELIABILITY.md",
    "README.md",
    "SECURITY.md",
    "ARCHITECTURE.md",
];

fn doc(name: &str) -> String {
    std::fs::read_to_string(common::repo().join(name)).unwrap()
}

/// Every command-like span: the text of each backtick span, and each line of each fenced
/// block.
fn commands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            out.push(line.split(" # ").next().unwrap_or_default().to_owned());
        } else {
            out.extend(line.split('`').skip(1).step_by(2).map(str::to_owned));
        }
    }
    out
}

/// The word after `word` in `command`, each time it appears.
fn after<'a>(command: &'a str, word: &str) -> Vec<&'a str> {
    let words: Vec<&str> = command.split_whitespace().collect();
    words
        .windows(2)
        .filter(|w| w[0] == word)
        .map(|w| w[1])
        .collect()
}

#[test]
fn named_tests_benchmarks_and_fuzz_targets_exist() {
    let fuzz_manifest = std::fs::read_to_string(common::repo().join("fuzz/Cargo.toml")).unwrap();
    let mut checked = 0;
    for name in DOCS {
        for command in commands(&doc(name)) {
            // `--test it AREA`: the one test binary, and a module of it.
            for test in after(&command, "--test") {
                assert_eq!(test, "it", "{name}: `{command}`: the test binary is `it`");
                let words: Vec<&str> = command.split_whitespace().collect();
                let at = words.iter().position(|w| *w == "--test").unwrap_or(0);
                let area = words.get(at + 2).and_then(|a| a.split("::").next());
                if let Some(area) = area.filter(|a| !a.starts_with('-')) {
                    let path = common::repo().join(format!("tests/it/{area}.rs"));
                    assert!(path.exists(), "{name}: `{command}`: no {}", path.display());
                }
                checked += 1;
            }
            for bench in after(&command, "--bench") {
                let path = common::repo().join(format!("benches/{bench}.rs"));
                assert!(path.exists(), "{name}: `{command}`: no {}", path.display());
                checked += 1;
            }
            if command.contains("fuzz run") {
                let words: Vec<&str> = command.split_whitespace().collect();
                let at = words.iter().position(|w| *w == "run").unwrap();
                let target = words[at + 1];
                assert!(
                    fuzz_manifest.contains(&format!("name = \"{target}\"")),
                    "{name}: `{command}`: no fuzz target {target}"
                );
                // Seed directories after the corpus (the first, made by cargo fuzz) exist.
                for dir in words[at + 2..].iter().take_while(|w| **w != "--").skip(1) {
                    assert!(
                        common::repo().join(dir).is_dir(),
                        "{name}: `{command}`: no directory {dir}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 8, "only {checked} commands found");
}

/// Every source or test file the documents name in a code span (`src/web/intake.rs`,
/// `tests/it/chaos.rs`) exists: a restructuring that moves a file also moves its mentions.
#[test]
fn source_files_the_documents_name_exist() {
    let mut checked = 0;
    for name in DOCS {
        for span in commands(&doc(name)) {
            for word in span.split_whitespace() {
                let word = word.trim_matches(|c: char| !c.is_alphanumeric() && c != '_');
                let source = ["src/", "tests/", "examples/", "benches/"];
                if source.iter().any(|s| word.starts_with(s)) && word.ends_with(".rs") {
                    let path = common::repo().join(word);
                    assert!(path.exists(), "{name}: `{span}`: no {word}");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 10, "only {checked} paths found");
}

/// The benchmark harness, an example of the crate: `cargo test` builds it beside the
/// binaries (`target/<profile>/examples/`); a run of only some tests may not have, so it is
/// built here then.
fn bench_harness() -> std::path::PathBuf {
    let service = std::path::PathBuf::from(env!("CARGO_BIN_EXE_autofollow"));
    let harness = service.with_file_name("examples").join("autofollow-bench");
    if !harness.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(cargo)
            .args(["build", "--example", "autofollow-bench"])
            .current_dir(common::repo())
            .status()
            .unwrap();
        assert!(built.success(), "cannot build the benchmark harness");
    }
    harness
}

#[test]
fn autofollow_bench_commands_use_its_subcommands_and_flags() {
    let mut checked = 0;
    for name in DOCS {
        for command in commands(&doc(name)) {
            let Some((_, rest)) = command.rsplit_once("autofollow-bench ") else {
                continue;
            };
            let mut words = rest.split_whitespace().filter(|w| *w != "--");
            let Some(sub) = words.next() else { continue };
            let help = Command::new(bench_harness())
                .args([sub, "--help"])
                .output()
                .unwrap();
            assert!(
                help.status.success(),
                "{name}: `{command}`: `autofollow-bench {sub}` is not a subcommand"
            );
            let help = String::from_utf8_lossy(&help.stdout);
            for flag in words.filter(|w| w.starts_with("--")) {
                assert!(
                    help.contains(flag),
                    "{name}: `{command}`: {flag} is not a flag of {sub}:\n{help}"
                );
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 4,
        "only {checked} autofollow-bench commands found"
    );
}

#[test]
fn environment_variables_the_reliability_notes_name_are_read_by_the_tests() {
    let chaos = std::fs::read_to_string(common::repo().join("tests/it/chaos.rs")).unwrap();
    let text = doc("RELIABILITY.md");
    for var in ["AUTOFOLLOW_LONG_TESTS", "AUTOFOLLOW_CHAOS_SEED"] {
        assert!(text.contains(var), "RELIABILITY.md does not mention {var}");
        assert!(
            chaos.contains(&format!("\"{var}\"")),
            "tests/it/chaos.rs does not read {var}"
        );
    }
}

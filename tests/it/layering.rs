//! The structure ARCHITECTURE.md describes, held by reading `src/`: modules import only
//! modules below them (the data path runs down the layers), no two files of a module import
//! each other in a circle, and no function is longer than a screen without saying why.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::common::repo;

/// The top-level modules, lowest first; a module may import only those before it. The same
/// list as ARCHITECTURE.md's.
const LAYERS: &[&[&str]] = &[
    &["model", "telemetry", "metrics", "seal"],
    &["rules"],
    &["ghl"],
    &["store"],
    &["access"],
    &["worker"],
    &["web"],
    &["config"],
    &["app"],
    &["cli"],
];

/// The longest function without a reason stated above it.
const MAX_FN_LINES: usize = 80;
/// What the comment above a longer function says.
const REASON: &str = "Longer than a screen because";

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/`'s files (not `main.rs` and `lib.rs`, above everything), each with its text.
fn sources() -> Vec<(String, String)> {
    let src = repo().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .filter(|(rel, _)| rel != "main.rs" && rel != "lib.rs")
        .collect()
}

/// The top-level module a file belongs to: `store/sqlite/queue.rs` → `store`.
fn top(file: &str) -> &str {
    file.split('/').next().unwrap().trim_end_matches(".rs")
}

/// Every `crate::name` the text names, in code (comments and doc comments left out).
fn crate_modules(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let name: String = rest[at + 7..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
            rest = &rest[at + 7..];
        }
    }
    out
}

#[test]
fn architecture_md_lists_the_layers_in_this_order() {
    let text = std::fs::read_to_string(repo().join("ARCHITECTURE.md")).unwrap();
    let mut listed = Vec::new();
    for row in text
        .lines()
        .filter(|l| l.starts_with("| ") && l.contains("| `"))
    {
        for module in row
            .split('|')
            .nth(2)
            .unwrap_or_default()
            .split('`')
            .skip(1)
            .step_by(2)
        {
            listed.push(
                module
                    .trim_end_matches('/')
                    .trim_end_matches(".rs")
                    .to_owned(),
            );
        }
    }
    // Listed from the top down: each module's layer is at most the one before it.
    let layers: Vec<usize> = listed
        .iter()
        .map(|m| layer(m).unwrap_or(usize::MAX))
        .collect();
    assert!(!listed.is_empty());
    assert!(
        layers.windows(2).all(|w| w[0] >= w[1]) && !layers.contains(&usize::MAX),
        "ARCHITECTURE.md's layers {listed:?} are not this test's {LAYERS:?}"
    );
    let all: Vec<&str> = LAYERS.iter().flat_map(|l| l.iter().copied()).collect();
    for module in all {
        assert!(
            listed.iter().any(|m| m == module),
            "ARCHITECTURE.md leaves out {module}"
        );
    }
}

#[test]
fn every_module_imports_only_the_layers_below_it() {
    let mut wrong = Vec::new();
    for (file, text) in sources() {
        let own = top(&file);
        let Some(own_layer) = layer(own) else {
            wrong.push(format!("{file}: module `{own}` is in no layer"));
            continue;
        };
        for used in crate_modules(&text) {
            if used == own {
                continue;
            }
            match layer(&used) {
                Some(l) if l < own_layer => {}
                Some(_) => wrong.push(format!(
                    "{file} imports `{used}`, which is not below `{own}`"
                )),
                None => wrong.push(format!("{file} imports `{used}`, which is in no layer")),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Within one top-level module: which of its files import which (by `super::x`, or
/// `crate::top::x`), for the circle check.
fn sibling_edges(files: &[(String, String)]) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, text) in files {
        let parts: Vec<&str> = file.trim_end_matches(".rs").split('/').collect();
        let dir = parts[..parts.len() - 1].join("/");
        let own = if parts.last() == Some(&"mod") {
            dir.clone()
        } else {
            file.trim_end_matches(".rs").to_owned()
        };
        let parent = if parts.last() == Some(&"mod") {
            dir.rsplit_once('/')
                .map(|(d, _)| d.to_owned())
                .unwrap_or_default()
        } else {
            dir.clone()
        };
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (prefix, base) in [
                ("super::", parent.clone()),
                (&*format!("crate::{}::", top(file)), top(file).to_owned()),
            ] {
                let mut rest = line;
                while let Some(at) = rest.find(prefix) {
                    let name: String = rest[at + prefix.len()..]
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    let target = if base.is_empty() {
                        name.clone()
                    } else {
                        format!("{base}/{name}")
                    };
                    let exists = files.iter().any(|(f, _)| {
                        f == &format!("{target}.rs") || f == &format!("{target}/mod.rs")
                    });
                    if exists && target != own {
                        edges.entry(own.clone()).or_default().insert(target);
                    }
                    rest = &rest[at + prefix.len()..];
                }
            }
        }
    }
    edges
}

#[test]
fn no_files_import_each_other_in_a_circle() {
    let files = sources();
    let edges = sibling_edges(&files);
    // Depth-first search for a path back to the start.
    fn reaches(
        edges: &BTreeMap<String, BTreeSet<String>>,
        from: &str,
        to: &str,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in edges.get(from).into_iter().flatten() {
            if next == to || (seen.insert(next.clone()) && reaches(edges, next, to, seen)) {
                return true;
            }
        }
        false
    }
    let circles: Vec<&String> = edges
        .keys()
        .filter(|start| reaches(&edges, start, start, &mut BTreeSet::new()))
        .collect();
    assert!(
        circles.is_empty(),
        "files in an import circle: {circles:?}\n{edges:#?}"
    );
}

#[test]
fn no_function_is_longer_than_a_screen_without_a_reason() {
    let mut long = Vec::new();
    let mut functions = 0;
    for (file, text) in sources() {
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            let is_fn = [
                "fn ",
                "pub fn ",
                "async fn ",
                "pub async fn ",
                "pub(crate) fn ",
                "pub(super) fn ",
                "pub(crate) async fn ",
                "pub(super) async fn ",
            ]
            .iter()
            .any(|p| trimmed.starts_with(p));
            if !is_fn {
                continue;
            }
            let indent = &line[..line.len() - trimmed.len()];
            let signature_end = lines[i..]
                .iter()
                .find(|l| l.trim_end().ends_with('{') || l.trim_end().ends_with(';'));
            if signature_end.is_none_or(|l| l.trim_end().ends_with(';')) {
                continue; // a declaration without a body
            }
            functions += 1;
            // rustfmt closes a function's body on a line of its own, at its indentation.
            let Some(end) = lines[i + 1..]
                .iter()
                .take_while(|l| !l.starts_with(&format!("{indent}fn ")))
                .position(|l| *l == format!("{indent}}}"))
            else {
                continue; // a declaration without a body
            };
            let length = end + 2;
            let comment: String = lines[..i]
                .iter()
                .rev()
                .take_while(|l| {
                    l.trim_start().starts_with("//") || l.trim_start().starts_with("#[")
                })
                .copied()
                .collect();
            if length > MAX_FN_LINES && !comment.contains(REASON) {
                long.push(format!("{file}:{}: {} lines", i + 1, length));
            }
        }
    }
    assert!(
        functions > 300,
        "only {functions} functions found: the reading is broken"
    );
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines without a reason:\n{}",
        long.join("\n")
    );
}

//! `autofollow test`: rule tests written in YAML beside the rules (`tests/*.yaml` under the
//! rules directory, or a file given). Each case names an event, optionally the state before
//! it, and what the rules must decide; a failing case prints the difference and the
//! explanation of the rules involved. `--junit FILE` writes a JUnit report, `--coverage`
//! lists the rules and conditions no case exercises.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use serde::Deserialize;

use super::rules::{Exit, write_checks};
use crate::model::event::{self, Event, Parsed};
use crate::model::ids::{UserId, looks_like_ghl_id};
use crate::model::plan::{PreviousState, parse_assigned};
use crate::rules::deal::{Dealer, Dealing};
use crate::rules::{Resolver, RuleOutcome, RuleSet, RuleTrace};

#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// The rules directory (its tests are in `tests/`), or one test file.
    #[arg(value_name = "PATH")]
    path: Option<PathBuf>,
    /// The rules a test file is run against (with a directory PATH, PATH itself).
    #[arg(long, env = "AUTOFOLLOW_RULES", default_value = "rules")]
    rules: PathBuf,
    /// Also write the results as a JUnit XML report.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// List the rules no case matches and the conditions no case finds true, or none false.
    #[arg(long)]
    coverage: bool,
}

/// A test file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    /// A saved `GET /opportunities/pipelines` response (relative to the test file), so
    /// pipeline and stage names resolve in app webhooks.
    #[serde(default)]
    pipelines: Option<PathBuf>,
    tests: Vec<Case>,
}

/// One case: an event, the state before it, what the rules must decide.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    /// The webhook body (app or workflow), inline.
    #[serde(default)]
    event: Option<serde_json::Value>,
    /// Or a file holding it, relative to the test file.
    #[serde(default)]
    event_file: Option<PathBuf>,
    #[serde(default)]
    previous: Before,
    /// The day pools deal on, for their away periods (`YYYY-MM-DD`; today in UTC if left
    /// out). Each case deals from a fresh sequence: the first turn goes to the heaviest
    /// member here.
    #[serde(default)]
    today: Option<String>,
    expect: Expect,
    /// Where its `name` is written (found in the text: YAML parsing keeps no positions).
    #[serde(skip)]
    line: Option<usize>,
}

/// The state before the event.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Before {
    tags: Option<Vec<String>>,
    stage: Option<String>,
    /// A user id or alias, or `none`.
    assigned: Option<String>,
    /// Who follows the contact now, and who added them: a rule's name (autofollow added
    /// them for it), or `hand`.
    followers: Option<BTreeMap<String, String>>,
}

/// What the rules must decide; what is left out is not checked.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// Exactly these users are added (aliases or ids).
    add: Option<Vec<String>>,
    /// Exactly these users are removed.
    remove: Option<Vec<String>>,
    /// These rules match.
    #[serde(default)]
    matched: Vec<String>,
    /// These rules do not match.
    #[serde(default)]
    not_matched: Vec<String>,
}

/// A case's result: its problems (none: it passed), the rules it involved (those that
/// matched, those it names), and every rule's trace (for coverage).
struct Outcome {
    problems: Vec<String>,
    involved: Vec<String>,
    traces: Vec<RuleTrace>,
}

/// The files of test cases for `args`, and the rules they run against.
fn inputs(args: &TestArgs) -> Result<(PathBuf, Vec<PathBuf>), String> {
    let path = args.path.clone().unwrap_or_else(|| args.rules.clone());
    if !path.is_dir() {
        return Ok((args.rules.clone(), vec![path]));
    }
    let dir = path.join("tests");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.filter_map(Result::ok).map(|e| e.path()).collect(),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    files.retain(|f| f.extension().is_some_and(|x| x == "yaml" || x == "yml"));
    files.sort();
    Ok((path, files))
}

/// `autofollow test`: 0 when every case passes, 1 when one fails or cannot run.
pub fn test(args: &TestArgs, out: &mut dyn Write, err: &mut dyn Write) -> io::Result<Exit> {
    let (rules, files) = match inputs(args) {
        Ok(found) => found,
        Err(e) => {
            writeln!(err, "{e}")?;
            return Ok(1);
        }
    };
    let set = match RuleSet::load(&rules) {
        Ok(set) => set,
        Err(e) => {
            writeln!(err, "{e}")?;
            return Ok(1);
        }
    };
    let mut results: Vec<(String, String, Outcome)> = Vec::new();
    for file in &files {
        let (cases, resolver) = match read_cases(file) {
            Ok(read) => read,
            Err(e) => {
                writeln!(err, "{}: {e}", file.display())?;
                return Ok(1);
            }
        };
        for case in cases {
            let outcome = run(&set, file, &case, resolver.as_ref());
            report(out, file, &case, &outcome)?;
            results.push((file.display().to_string(), case.name, outcome));
        }
    }
    let failed = results
        .iter()
        .filter(|(.., o)| !o.problems.is_empty())
        .count();
    let cases = results.len();
    let noun = if cases == 1 { "case" } else { "cases" };
    writeln!(out, "\n{cases} {noun}, {failed} failed")?;
    if args.coverage {
        coverage(out, &set, &results)?;
    }
    if let Some(path) = &args.junit {
        junit(path, &results)?;
    }
    Ok(u8::from(failed > 0 || results.is_empty()))
}

/// A test file's cases, and what resolves pipeline and stage names for them.
fn read_cases(file: &Path) -> Result<(Vec<Case>, Box<dyn Resolver>), String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let mut parsed: TestFile = serde_yaml::from_str(&text).map_err(|e| e.to_string())?;
    locate(&text, &mut parsed.tests);
    let path = parsed
        .pipelines
        .as_ref()
        .map(|p| file.parent().unwrap_or(Path::new(".")).join(p));
    let resolver = super::rules::resolver(path.as_deref())?;
    Ok((parsed.tests, resolver))
}

/// The line of each case's `name:` (block style, in order); a case written otherwise has none.
fn locate(text: &str, cases: &mut [Case]) {
    let mut pending = cases.iter_mut().peekable();
    for (i, line) in text.lines().enumerate() {
        let Some(case) = pending.peek_mut() else {
            return;
        };
        let key = line.trim_start().trim_start_matches("- ").trim_start();
        let Some(value) = key.strip_prefix("name:") else {
            continue;
        };
        let value = value.split(" #").next().unwrap_or_default().trim();
        let unquoted = value.trim_matches(|c| c == '"' || c == '\'');
        if unquoted == case.name {
            case.line = Some(i + 1);
            pending.next();
        }
    }
}

fn report(out: &mut dyn Write, file: &Path, case: &Case, outcome: &Outcome) -> io::Result<()> {
    let name = &case.name;
    if outcome.problems.is_empty() {
        return writeln!(out, "ok    {}: {name}", file.display());
    }
    let at = case.line.map(|l| format!(":{l}")).unwrap_or_default();
    writeln!(out, "FAIL  {}{at}: {name}", file.display())?;
    for p in &outcome.problems {
        writeln!(out, "      {p}")?;
    }
    let shown = outcome
        .traces
        .iter()
        .filter(|t| outcome.involved.contains(&t.rule));
    for trace in shown {
        writeln!(
            out,
            "      rule {} ({}): {}",
            trace.rule,
            trace.origin,
            outcome_name(trace.outcome)
        )?;
        write_checks(out, &trace.checks, 4)?;
        for action in &trace.actions {
            writeln!(out, "        => {action}")?;
        }
    }
    Ok(())
}

fn outcome_name(o: RuleOutcome) -> &'static str {
    match o {
        RuleOutcome::Matched => "matched",
        RuleOutcome::NotMatched => "not matched",
        RuleOutcome::Disabled => "disabled",
        RuleOutcome::NotEvaluated => "not evaluated",
    }
}

/// Runs one case.
fn run(set: &RuleSet, file: &Path, case: &Case, resolver: &dyn Resolver) -> Outcome {
    let failed = |problem: String| Outcome {
        problems: vec![problem],
        involved: Vec::new(),
        traces: Vec::new(),
    };
    let event = match case_event(file, case) {
        Ok(event) => event,
        Err(e) => return failed(e),
    };
    let (previous, owned, following) = match before(set, &case.previous) {
        Ok(before) => before,
        Err(e) => return failed(e),
    };
    let today = match day(case) {
        Ok(day) => day,
        Err(e) => return failed(e),
    };
    let dealing = (&mut Dealer::default(), today);
    let seen = (&*event, &previous);
    let (evaluation, plan) = crate::worker::decide_alone(set, seen, &owned, resolver, dealing);
    let mut added: BTreeSet<UserId> = plan.add.iter().map(|e| e.user.clone()).collect();
    let mut removed: BTreeSet<UserId> = plan.remove.iter().map(|e| e.user.clone()).collect();
    if let Some(following) = &following {
        added.retain(|u| !following.contains(u));
        removed.retain(|u| following.contains(u));
    }
    let mut problems = Vec::new();
    for (what, want, got) in [
        ("add", &case.expect.add, &added),
        ("remove", &case.expect.remove, &removed),
    ] {
        let Some(want) = want else { continue };
        match users(set, want) {
            Ok(want) if &want != got => problems.push(format!(
                "{what}: expected {}, got {}",
                list(set, &want),
                list(set, got)
            )),
            Ok(_) => {}
            Err(e) => problems.push(e),
        }
    }
    let mut named: Vec<&str> = Vec::new();
    for (rule, must) in case
        .expect
        .matched
        .iter()
        .map(|r| (r, true))
        .chain(case.expect.not_matched.iter().map(|r| (r, false)))
    {
        named.push(rule);
        if set.rule(rule).is_none() {
            problems.push(format!("no rule is named {rule}"));
        } else if evaluation.matched.contains(rule) != must {
            let verb = if must {
                "to match; it did not"
            } else {
                "not to match; it did"
            };
            problems.push(format!("expected rule {rule} {verb}"));
        }
    }
    let mut involved = evaluation.matched.clone();
    involved.extend(named.iter().map(|r| (*r).to_owned()));
    let mut dealing = Dealing {
        today,
        ..Dealing::fresh()
    };
    let traces = set
        .explain_dealt(&event, &previous, resolver, &mut dealing)
        .rules;
    Outcome {
        problems,
        involved,
        traces,
    }
}

/// The day the case's pools deal on: its `today`, else today in UTC.
fn day(case: &Case) -> Result<NaiveDate, String> {
    match case.today.as_deref() {
        None => {
            Ok(chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now()).date_naive())
        }
        Some(text) => (text.trim().parse::<NaiveDate>())
            .map_err(|_| format!("today: {text:?} is not a date (YYYY-MM-DD)")),
    }
}

fn case_event(file: &Path, case: &Case) -> Result<Box<Event>, String> {
    let body = match (&case.event, &case.event_file) {
        (Some(inline), None) => inline.to_string().into_bytes(),
        (None, Some(path)) => {
            let path = file.parent().unwrap_or(Path::new(".")).join(path);
            std::fs::read(&path).map_err(|e| format!("event_file {}: {e}", path.display()))?
        }
        _ => return Err("give either event or event_file".into()),
    };
    match event::parse_any(&body) {
        Ok(Parsed::Event(e)) => Ok(e),
        Ok(other) => Err(format!(
            "event type {} is not one autofollow acts on",
            other.other_type().unwrap_or_default()
        )),
        Err(e) => Err(format!("event: {e}")),
    }
}

/// The previous state, the (user, rule) pairs autofollow keeps, and who follows (when said).
type Prior = (
    PreviousState,
    Vec<(UserId, String)>,
    Option<BTreeSet<UserId>>,
);

fn before(set: &RuleSet, b: &Before) -> Result<Prior, String> {
    let assigned = match b.assigned.as_deref() {
        None => None,
        Some(text) => Some(match set.aliases().get(text) {
            Some(id) => Some(id.clone()),
            None => parse_assigned(text)?,
        }),
    };
    let previous = PreviousState {
        tags: b.tags.clone(),
        stage: b.stage.clone(),
        assigned,
    };
    let mut owned = Vec::new();
    let mut following = BTreeSet::new();
    for (who, by) in b.followers.iter().flatten() {
        let id = user(set, who)?;
        if by != "hand" {
            owned.push((id.clone(), by.clone()));
        }
        following.insert(id);
    }
    Ok((previous, owned, b.followers.as_ref().map(|_| following)))
}

/// A user by alias, or by id (20 letters and digits: a misspelled alias is not taken for one).
fn user(set: &RuleSet, name: &str) -> Result<UserId, String> {
    let unknown = || format!("`{name}` is neither a user alias nor a user id");
    match set.aliases().get(name) {
        Some(id) => Ok(id.clone()),
        None if looks_like_ghl_id(name) => UserId::parse(name).map_err(|_| unknown()),
        None => Err(unknown()),
    }
}

fn users(set: &RuleSet, names: &[String]) -> Result<BTreeSet<UserId>, String> {
    names.iter().map(|n| user(set, n)).collect()
}

/// Users by alias where they have one: `[alice, 9hTn…]`.
fn list(set: &RuleSet, users: &BTreeSet<UserId>) -> String {
    let name = |u: &UserId| {
        let alias = set.aliases().iter().find(|(_, id)| *id == u);
        alias.map_or_else(|| u.to_string(), |(a, _)| a.clone())
    };
    let mut names: Vec<String> = users.iter().map(name).collect();
    names.sort();
    format!("[{}]", names.join(", "))
}

/// The rules no case matched, and the conditions (of the rules cases evaluated) no case
/// found true, or none found false.
fn coverage(
    out: &mut dyn Write,
    set: &RuleSet,
    results: &[(String, String, Outcome)],
) -> io::Result<()> {
    // Per rule: matched by a case; per (rule, condition): seen true, seen false.
    let mut matched: BTreeSet<&str> = BTreeSet::new();
    let mut seen: BTreeMap<(&str, usize), (&str, bool, bool)> = BTreeMap::new();
    for trace in results.iter().flat_map(|(.., o)| &o.traces) {
        if trace.outcome == RuleOutcome::Matched {
            matched.insert(&trace.rule);
        }
        for (i, check) in trace.checks.iter().enumerate() {
            let slot = seen
                .entry((&trace.rule, i))
                .or_insert((&check.condition, false, false));
            slot.1 |= check.holds;
            slot.2 |= !check.holds;
        }
    }
    let rules = set.rules();
    writeln!(
        out,
        "coverage: {} of {} rules matched by a case",
        matched.len(),
        rules.len()
    )?;
    for rule in rules.iter().filter(|r| !matched.contains(r.name.as_str())) {
        writeln!(out, "  never matched: {} ({})", rule.name, rule.origin)?;
    }
    for ((rule, _), (condition, yes, no)) in &seen {
        match (yes, no) {
            (false, _) => writeln!(out, "  never true: rule {rule}, {condition}")?,
            (true, false) => writeln!(out, "  never false: rule {rule}, {condition}")?,
            (true, true) => {}
        }
    }
    Ok(())
}

fn junit(path: &Path, results: &[(String, String, Outcome)]) -> io::Result<()> {
    let mut report = quick_junit::Report::new("autofollow rule tests");
    let mut suites: BTreeMap<&str, quick_junit::TestSuite> = BTreeMap::new();
    for (file, name, outcome) in results {
        let suite = suites
            .entry(file.as_str())
            .or_insert_with(|| quick_junit::TestSuite::new(file.as_str()));
        let status = match outcome.problems.is_empty() {
            true => quick_junit::TestCaseStatus::success(),
            false => {
                let mut status =
                    quick_junit::TestCaseStatus::non_success(quick_junit::NonSuccessKind::Failure);
                status.set_message(outcome.problems.join("; "));
                status
            }
        };
        suite.add_test_case(quick_junit::TestCase::new(name.as_str(), status));
    }
    report.add_test_suites(suites.into_values());
    let xml = report.to_string().map_err(io::Error::other)?;
    std::fs::write(path, xml)
}

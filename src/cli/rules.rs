//! The `check` and `explain` commands. `main.rs` parses arguments; these functions do the
//! work and write to the given outputs so tests can read them.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::access::Access;
use crate::ghl::GhlClient;
use crate::ghl::pipelines::Pipelines;
use crate::model::event::{self, Event, Parsed};
use crate::model::ids::LocationId;
use crate::model::plan::{PreviousState, parse_assigned};
use crate::rules::deal::Dealing;
use crate::rules::{Check, NoResolver, Resolver, RuleOutcome, RuleSet, Severity, explain_report};
use crate::worker::online::{self, Online};

/// Exit status of a command: 0 when it did its job, 1 when the input was invalid.
pub type Exit = u8;

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

/// `autofollow check PATH`: validates the rules; prints `ok: …` and warnings, or every error.
/// With `strict`, a warning fails the check.
pub fn check(
    path: &Path,
    strict: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> io::Result<Exit> {
    match RuleSet::load(path) {
        Ok(set) => {
            for w in set.warnings() {
                writeln!(err, "{w}")?;
            }
            if strict && !set.warnings().is_empty() {
                let n = plural(set.warnings().len(), "warning");
                writeln!(err, "{n}, and --strict makes warnings errors")?;
                return Ok(1);
            }
            writeln!(
                out,
                "ok: {} in {}",
                plural(set.rules().len(), "rule"),
                plural(set.files().len(), "file")
            )?;
            Ok(0)
        }
        Err(e) => {
            writeln!(err, "{e}")?;
            Ok(1)
        }
    }
}

/// `autofollow check --online`: [`check`], then what the rules name confirmed against
/// GoHighLevel with the service's credentials (its environment), for every location with a
/// token or only `location`. Each problem at its file:line:column (or the location's), the
/// same problem in several locations once.
pub async fn check_online(
    path: &Path,
    strict: bool,
    location: Option<&str>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> io::Result<Exit> {
    let code = check(path, strict, out, err)?;
    if code != 0 {
        return Ok(code);
    }
    let only = match location.map(LocationId::parse).transpose() {
        Ok(only) => only,
        Err(e) => {
            writeln!(err, "--location: {e}")?;
            return Ok(2);
        }
    };
    let checked = match online_inputs(path).await {
        Ok((set, ghl, access)) => online::check(&ghl, &access, &set, only.as_ref()).await,
        Err(e) => Err(e),
    };
    let checked = match checked {
        Ok(checked) => checked,
        Err(e) => {
            writeln!(err, "cannot check online: {e}")?;
            return Ok(1);
        }
    };
    print_online(&checked, strict, out, err)
}

/// The rules at `path`, and the service's GoHighLevel client and credentials.
async fn online_inputs(path: &Path) -> Result<(Arc<RuleSet>, GhlClient, Access), String> {
    let config = super::maintain::environment(Some(path.to_path_buf()));
    let config = config.map_err(|e| e.to_string())?;
    let found = crate::app::directory_access(&config).await;
    let (ghl, access) = found.map_err(|e| e.to_string())?;
    Ok((Arc::clone(&config.rules.set), ghl, access))
}

fn print_online(
    checked: &Online,
    strict: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> io::Result<Exit> {
    for f in &checked.findings {
        let severity = match f.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let locations: Vec<&str> = f.locations.iter().map(LocationId::as_str).collect();
        let word = if locations.len() == 1 {
            "location"
        } else {
            "locations"
        };
        let list = locations.join(", ");
        match &f.origin {
            Some(at) => writeln!(err, "{at}: {severity}: {} ({word} {list})", f.message)?,
            None => writeln!(err, "{word} {list}: {severity}: {}", f.message)?,
        }
    }
    if checked.read.is_empty() {
        writeln!(
            err,
            "error: no location to check: autofollow has no token (GHL_TOKEN with GHL_LOCATION_ID, GHL_LOCATION_TOKENS_FILE, or an installed app)"
        )?;
        return Ok(1);
    }
    for (location, read) in &checked.read {
        writeln!(out, "online: location {location}: read {read}")?;
    }
    let count = |s: Severity| checked.findings.iter().filter(|f| f.severity == s).count();
    let (errors, warnings) = (count(Severity::Error), count(Severity::Warning));
    if errors > 0 || (strict && warnings > 0) {
        let n = plural(errors, "error");
        let w = plural(warnings, "warning");
        writeln!(err, "online check failed: {n}, {w}")?;
        return Ok(1);
    }
    writeln!(out, "online: ok ({})", plural(warnings, "warning"))?;
    Ok(0)
}

/// Arguments of `autofollow explain`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ExplainArgs {
    /// A rule file or a directory of *.yaml / *.yml files.
    #[arg(long, env = "AUTOFOLLOW_RULES", default_value = "rules")]
    pub rules: PathBuf,
    /// The contact's tags at its previous event, comma-separated (for tag_added / tag_removed).
    #[arg(long, value_name = "TAGS", value_delimiter = ',')]
    pub previous_tags: Option<Vec<String>>,
    /// The opportunity's stage (id or name) at its previous event (for stage_entered / stage_left).
    #[arg(long, value_name = "STAGE")]
    pub previous_stage: Option<String>,
    /// Who the record was assigned to at its previous event: a user id, or `none` (for
    /// assigned_changed / previous_assigned_user).
    #[arg(long, value_name = "USER")]
    pub previous_assigned: Option<String>,
    /// A saved `GET /opportunities/pipelines` response, to resolve pipeline and stage names.
    #[arg(long, value_name = "FILE")]
    pub pipelines: Option<PathBuf>,
    /// Print the explanation as JSON.
    #[arg(long)]
    pub json: bool,
    /// A webhook body (app or workflow webhook) in a JSON file; `-` reads standard input.
    pub event: PathBuf,
}

/// `autofollow explain`: every rule's verdict for one event, with reasons, and the plan.
pub fn explain(args: &ExplainArgs, out: &mut dyn Write, err: &mut dyn Write) -> io::Result<Exit> {
    let (set, body, resolver) = match inputs(args) {
        Ok(inputs) => inputs,
        Err(message) => {
            writeln!(err, "{message}")?;
            return Ok(1);
        }
    };
    let assigned = match args.previous_assigned.as_deref().map(parse_assigned) {
        None => None,
        Some(Ok(assigned)) => Some(assigned),
        Some(Err(e)) => {
            writeln!(err, "--previous-assigned: {e}")?;
            return Ok(2);
        }
    };
    let previous = PreviousState {
        tags: args.previous_tags.as_ref().map(|tags| {
            tags.iter()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect()
        }),
        stage: args.previous_stage.clone(),
        assigned,
    };
    if args.json {
        return match explain_report(
            &set,
            &body,
            &previous,
            resolver.as_ref(),
            &mut Dealing::fresh(),
        ) {
            Ok(report) => {
                let text = serde_json::to_string_pretty(&report).map_err(io::Error::other)?;
                writeln!(out, "{text}")?;
                Ok(0)
            }
            Err(e) => {
                writeln!(err, "{}: {e}", args.event.display())?;
                Ok(1)
            }
        };
    }
    let event = match event::parse_any(&body) {
        Ok(Parsed::Event(e)) => e,
        Ok(other) => {
            let event_type = other.other_type().unwrap_or_default();
            let plan = crate::model::plan::Plan::default().summary();
            writeln!(
                out,
                "event type {event_type:?} is not one autofollow acts on: no rule applies"
            )?;
            writeln!(out, "\nplan: {plan}")?;
            return Ok(0);
        }
        Err(e) => {
            writeln!(err, "{}: {e}", args.event.display())?;
            return Ok(1);
        }
    };
    write_explanation(out, &set, &event, &previous, resolver.as_ref())?;
    Ok(0)
}

/// What `explain` reads: the rules, the webhook body, and what resolves names.
type Inputs = (RuleSet, Vec<u8>, Box<dyn Resolver>);

/// The inputs `explain` needs, or what is wrong with them.
fn inputs(args: &ExplainArgs) -> Result<Inputs, String> {
    let set = RuleSet::load(&args.rules).map_err(|e| e.to_string())?;
    let body = read_input(&args.event)
        .map_err(|e| format!("{}: cannot read: {e}", args.event.display()))?;
    let resolver = resolver(args.pipelines.as_deref())?;
    Ok((set, body, resolver))
}

/// What resolves pipeline and stage names: a saved pipelines response, or nothing.
pub(super) fn resolver(pipelines: Option<&Path>) -> Result<Box<dyn Resolver + Sync>, String> {
    let Some(path) = pipelines else {
        return Ok(Box::new(NoResolver));
    };
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let pipelines = Pipelines::from_response(&text)
        .map_err(|e| format!("{}: not a pipelines response: {e}", path.display()))?;
    Ok(Box::new(pipelines))
}

/// The text explanation: the event, the previous state, every rule with its checks, the plan.
fn write_explanation(
    out: &mut dyn Write,
    set: &RuleSet,
    event: &Event,
    previous: &PreviousState,
    resolver: &dyn Resolver,
) -> io::Result<()> {
    let explanation = set.explain(event, previous, resolver);
    writeln!(
        out,
        "event: {}, location {}, contact {}",
        event.event_type, event.location_id, event.contact_id
    )?;
    if let Some(tags) = &previous.tags {
        writeln!(out, "previous tags: {tags:?}")?;
    }
    if let Some(stage) = &previous.stage {
        writeln!(out, "previous stage: {stage}")?;
    }
    for trace in &explanation.rules {
        let outcome = match trace.outcome {
            RuleOutcome::Matched => "matched",
            RuleOutcome::NotMatched => "not matched",
            RuleOutcome::Disabled => "disabled",
            RuleOutcome::NotEvaluated => "not evaluated",
        };
        writeln!(out, "\n{} ({}): {outcome}", trace.rule, trace.origin)?;
        write_checks(out, &trace.checks, 1)?;
        for action in &trace.actions {
            writeln!(out, "  => {action}")?;
        }
    }
    writeln!(out, "\nplan: {}", explanation.plan.summary())
}

pub(super) fn write_checks(out: &mut dyn Write, checks: &[Check], depth: usize) -> io::Result<()> {
    for c in checks {
        let mark = if c.holds { "[yes]" } else { "[no] " };
        writeln!(
            out,
            "{:indent$}{mark} {}: {}",
            "",
            c.condition,
            c.detail,
            indent = depth * 2
        )?;
        write_checks(out, &c.checks, depth + 2)?;
    }
    Ok(())
}

fn read_input(path: &Path) -> io::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        io::stdin().read_to_end(&mut buf)?;
        Ok(buf)
    } else {
        std::fs::read(path)
    }
}

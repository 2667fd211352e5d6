//! `autofollow reapply` and `autofollow undo`: over the contacts autofollow knows, preview
//! the change to their followers, and unless `--dry-run`, queue it for the running service.
//! They read the service's environment (its store, tokens and rules), so a preview looks up
//! what the service would.

use std::io::Write;
use std::path::PathBuf;

use clap::Parser;

use super::queue::OpsError;
use crate::config::{Config, ServeArgs};
use crate::model::ids::LocationId;
use crate::model::task::UndoScope;
use crate::worker::Job;

#[derive(clap::Args, Debug)]
pub struct ReapplyArgs {
    /// The rules to apply (default: AUTOFOLLOW_RULES, the service's). The service carries
    /// the changes out only with the same rules in force.
    #[arg(long, value_name = "PATH")]
    rules: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("scope").required(true).args(["rule", "event", "since"]))]
pub struct UndoArgs {
    /// Remove the followers this rule added (that autofollow still keeps for it).
    #[arg(long, value_name = "NAME")]
    rule: Option<String>,
    /// Undo what this event's decision did: remove whom it added, add back whom it removed.
    #[arg(long, value_name = "ID")]
    event: Option<i64>,
    /// Undo what autofollow did since then: 2h, 7d, 2026-12-01 or 2026-12-01T09:00:00Z.
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args, Debug)]
struct Common {
    /// Only this location's contacts.
    #[arg(long, value_name = "ID")]
    location: Option<String>,
    /// Print what would change; queue nothing.
    #[arg(long)]
    dry_run: bool,
    /// The report as JSON, with every contact's change.
    #[arg(long)]
    json: bool,
}

/// The service's settings, from its environment only (`serve`'s variables).
#[derive(Parser, Debug)]
struct Environment {
    #[command(flatten)]
    serve: ServeArgs,
}

pub async fn reapply(args: ReapplyArgs, out: &mut dyn Write) -> Result<(), OpsError> {
    let location = location(&args.common)?;
    run(Job::Reapply { location }, args.rules, &args.common, out).await
}

pub async fn undo(args: UndoArgs, out: &mut dyn Write) -> Result<(), OpsError> {
    let scope = match (args.rule, args.event, args.since) {
        (Some(rule), ..) => UndoScope::Rule(rule),
        (_, Some(id), _) => UndoScope::Event(id),
        (.., Some(since)) => UndoScope::since(&since).map_err(OpsError::Invalid)?,
        _ => return Err(OpsError::Invalid("name --rule, --event or --since".into())),
    };
    let location = location(&args.common)?;
    run(Job::Undo { scope, location }, None, &args.common, out).await
}

fn location(common: &Common) -> Result<Option<LocationId>, OpsError> {
    let given = common.location.as_deref();
    given
        .map(|l| LocationId::parse(l).map_err(|e| OpsError::Invalid(format!("--location: {e}"))))
        .transpose()
}

async fn run(
    job: Job,
    rules: Option<PathBuf>,
    common: &Common,
    out: &mut dyn Write,
) -> Result<(), OpsError> {
    let mut serve = Environment::try_parse_from(["autofollow"])
        .map_err(|e| OpsError::Invalid(e.to_string()))?
        .serve;
    if let Some(rules) = rules {
        serve.rules = rules;
    }
    let config = Config::from_args(serve).map_err(|e| OpsError::Invalid(e.to_string()))?;
    let worker = crate::app::tool(&config)
        .await
        .map_err(|e| OpsError::Invalid(e.to_string()))?;
    let report = worker.maintain(&job, common.dry_run).await?;
    if common.json {
        serde_json::to_writer_pretty(&mut *out, &report).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        for line in report.lines() {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

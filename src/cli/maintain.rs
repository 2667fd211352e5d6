//! `autofollow reapply` and `autofollow undo`: over the contacts autofollow knows, preview
//! the change to their followers, and unless `--dry-run`, queue it for the running service;
//! `autofollow backfill`: start a backfill the running service walks, and follow it.
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

/// The service's configuration, from its environment (with other rules, if given).
pub(super) fn environment(rules: Option<PathBuf>) -> Result<Config, OpsError> {
    let mut serve = Environment::try_parse_from(["autofollow"])
        .map_err(|e| OpsError::Invalid(e.to_string()))?
        .serve;
    if let Some(rules) = rules {
        serve.rules = rules;
    }
    Config::from_args(serve).map_err(|e| OpsError::Invalid(e.to_string()))
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
    let config = environment(rules)?;
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

#[derive(clap::Args, Debug)]
pub struct BackfillArgs {
    /// The location (sub-account) whose contacts and opportunities to walk.
    #[arg(long, value_name = "ID")]
    location: String,
    /// Only records added since then: 30d, 2026-12-01 or 2026-12-01T09:00:00Z.
    #[arg(long, value_name = "DATE")]
    since: Option<String>,
    /// Work out what would change; queue nothing.
    #[arg(long)]
    dry_run: bool,
    /// The final state as JSON.
    #[arg(long)]
    json: bool,
}

/// How often the progress is read again.
const FOLLOW: std::time::Duration = std::time::Duration::from_millis(250);

/// `autofollow backfill`: starts a backfill of the location (or follows the one running for
/// it; the running service walks it), and shows its progress until it ends.
pub async fn backfill(args: BackfillArgs, out: &mut dyn Write) -> Result<(), OpsError> {
    let location = LocationId::parse(&args.location)
        .map_err(|e| OpsError::Invalid(format!("--location: {e}")))?;
    let since = args
        .since
        .as_deref()
        .map(crate::model::task::since_ms)
        .transpose()
        .map_err(OpsError::Invalid)?;
    let config = environment(None)?;
    let worker = crate::app::tool(&config)
        .await
        .map_err(|e| OpsError::Invalid(e.to_string()))?;
    let store = worker.store();
    let started = store.start_backfill(&location, since, args.dry_run).await?;
    if started.dry_run != args.dry_run || started.since != since {
        eprintln!(
            "autofollow: backfill {} of this location is running already (dry run: {}); following it",
            started.id, started.dry_run
        );
    }
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} backfill {prefix}: [{bar:30}] {pos}/{len} records, {msg}",
        )
        .map_err(|e| OpsError::Invalid(e.to_string()))?
        .progress_chars("=> "),
    );
    bar.set_prefix(started.location.to_string());
    let done = loop {
        let Some(now) = store.backfill(started.id).await? else {
            return Err(OpsError::Invalid(format!(
                "backfill {} is gone",
                started.id
            )));
        };
        let progress = worker.progress(now);
        show(&bar, &progress);
        if progress.backfill.state != "running" {
            break progress;
        }
        tokio::time::sleep(FOLLOW).await;
    };
    bar.finish_and_clear();
    report(&done, args.json, out)
}

fn show(bar: &indicatif::ProgressBar, p: &crate::worker::Progress) {
    let b = &p.backfill;
    bar.set_length(u64::try_from(b.total.unwrap_or(b.seen)).unwrap_or(0));
    bar.set_position(u64::try_from(b.seen).unwrap_or(0));
    let eta = p
        .eta_seconds
        .map(|s| humantime::format_duration(std::time::Duration::from_secs(s)).to_string());
    bar.set_message(format!(
        "{} {}, {} changing, {} queued, ETA {}",
        b.phase,
        if b.cursor.is_some() { "…" } else { "" },
        b.changed,
        b.queued,
        eta.unwrap_or_else(|| "unknown".into())
    ));
}

/// The ended backfill: a summary (with the report's tallies), or its JSON.
fn report(p: &crate::worker::Progress, json: bool, out: &mut dyn Write) -> Result<(), OpsError> {
    let b = &p.backfill;
    if json {
        serde_json::to_writer_pretty(&mut *out, p).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        let verb = if b.dry_run { "would change" } else { "change" };
        writeln!(
            out,
            "backfill {} of location {}: {}; {} records seen, {} {verb}, {} tasks queued",
            b.id, b.location, b.state, b.seen, b.changed, b.queued
        )?;
        let report: Option<crate::worker::Report> = b
            .report
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok());
        for t in report.iter().flat_map(|r| &r.summary) {
            writeln!(out, "  rule {}: {} +{} -{}", t.rule, t.user, t.gain, t.lose)?;
        }
    }
    match &b.error {
        Some(error) => Err(OpsError::Invalid(format!("backfill failed: {error}"))),
        None => Ok(()),
    }
}

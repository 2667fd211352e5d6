//! The command line: every `autofollow` command, its arguments, and what it runs. `main.rs`
//! parses the arguments and runs [`run`] on one runtime. The commands' work is in [`rules`]
//! (rule files) and [`queue`] (the stored queue and history); `serve` starts [`crate::app`].

pub mod maintain;
pub mod pools;
pub mod queue;
pub mod rules;
pub mod ruletest;

use std::future::Future;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::{Config, ServeArgs};
use crate::model::ids::ContactId;
use crate::model::record::EventStatus;
use crate::store::{EventFilter, Store};

#[derive(Parser, Debug)]
#[command(
    name = "autofollow",
    version,
    about = "GoHighLevel contact followers, decided by YAML rules"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate rule files: prints `ok: N rules in M files`, or every error with file:line:column.
    Check {
        /// A rule file or a directory of *.yaml / *.yml files.
        #[arg(env = "AUTOFOLLOW_RULES", default_value = "rules")]
        path: PathBuf,
        /// Treat warnings (rules that load but cannot work as written) as errors.
        #[arg(long)]
        strict: bool,
        /// Also confirm, with the service's tokens, that every user, pipeline, stage and
        /// custom field the rules name exists in GoHighLevel, and that the tokens have the
        /// scopes the rules need.
        #[arg(long)]
        online: bool,
        /// With --online: only this location (default: every location with a token).
        #[arg(long, value_name = "ID", requires = "online")]
        location: Option<String>,
    },
    /// Show, for one webhook body, why each rule matches or not, and the resulting plan.
    Explain(rules::ExplainArgs),
    /// Print the JSON Schema of the rule file format (for editors: completion and validation).
    Schema,
    /// Run the rule tests (`tests/*.yaml` under the rules directory, or one test file): each
    /// case's event against the rules, what they must decide; exit 1 when one fails.
    Test(ruletest::TestArgs),
    /// Run the webhook service: receive GoHighLevel webhooks, store them, apply the rules.
    Serve(Box<ServeArgs>),
    #[command(flatten)]
    Store(StoreCommand),
    /// Copy a SQLite store (queued events, state, history) into an empty PostgreSQL database,
    /// to move to several replicas. Stop the service first.
    Migrate {
        /// The SQLite store: sqlite://PATH.
        #[arg(long, value_name = "URL")]
        from: String,
        /// The PostgreSQL database: postgres://USER@HOST:PORT/DB.
        #[arg(long, value_name = "URL")]
        to: String,
    },
    /// Bring the followers of every known contact to what the rules want now, against what
    /// autofollow added (its ownership ledger): prints per rule and user how many contacts
    /// gain or lose them, and queues the changes for the running service.
    Reapply(maintain::ReapplyArgs),
    /// Queue the inverse of what autofollow did (by rule, event or time), from its ownership
    /// ledger: removes the followers it added, adds back those it removed; never touches
    /// followers added by hand.
    Undo(maintain::UndoArgs),
    /// Walk a location's contacts and opportunities in GoHighLevel (the running service does,
    /// within the rate budget, live webhooks first) and queue what the rules want for each;
    /// shows the progress until it ends. Resumable: run it again to follow a running one.
    Backfill(maintain::BackfillArgs),
    /// Exit 0 when the service at URL answers /healthz (for container health checks).
    Healthcheck {
        /// Default: http://127.0.0.1:PORT/readyz (store reachable, rules loaded), PORT from AUTOFOLLOW_LISTEN (else 8080).
        #[arg(long)]
        url: Option<String>,
    },
}

/// The commands that work on the store, beside a running service. Their arguments are checked
/// here, not by the parser, so a mistake exits with status 1 and says what is wrong.
#[derive(Subcommand, Debug)]
enum StoreCommand {
    /// List stored events with their latest decision and error, newest first.
    Events {
        #[command(flatten)]
        db: Database,
        #[command(flatten)]
        select: Selection,
        /// At most this many events.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Put events back in the queue: by id, or all with --status (and --since).
    Replay {
        #[command(flatten)]
        db: Database,
        /// Event ids.
        ids: Vec<i64>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
    },
    /// The history of decisions for a contact: events, matched rules, plans, calls.
    Why {
        #[command(flatten)]
        db: Database,
        contact: String,
        #[arg(long)]
        json: bool,
    },
    /// Replay the webhooks stored since then through the current rules and a candidate set,
    /// each from the state the events before it left; print how the follower changes differ
    /// (per rule and user, and a few contacts with why). Nothing is stored or called.
    Simulate(Box<SimulateArgs>),
    /// Erase everything stored about a contact (a data subject's request): its events,
    /// waiting ones included, their decisions, and its tag, stage and follower state.
    Erase {
        #[command(flatten)]
        db: Database,
        contact: String,
    },
    /// The rules' pools: members and weights, who is away, the fallback, and the turns each
    /// location has handed out.
    Pools {
        #[command(flatten)]
        db: Database,
        #[command(flatten)]
        rules: RulesPath,
    },
    /// Mark a user away from --from to --to (inclusive dates, YYYY-MM-DD, days of
    /// AUTOFOLLOW_TIME_ZONE): pools skip
    /// them on those days. --clear forgets the user's periods set this way.
    Away {
        #[command(flatten)]
        db: Database,
        /// An alias of the rules, or a user id.
        user: String,
        #[arg(long, value_name = "DATE")]
        from: Option<String>,
        #[arg(long, value_name = "DATE")]
        to: Option<String>,
        #[arg(long)]
        clear: bool,
        /// The rule files, for aliases.
        #[command(flatten)]
        rules: RulesPath,
    },
}

/// The rule files a store command reads (pools, aliases).
#[derive(clap::Args, Debug)]
struct RulesPath {
    /// The rule files.
    #[arg(
        long,
        env = "AUTOFOLLOW_RULES",
        default_value = "rules",
        value_name = "PATH"
    )]
    rules: PathBuf,
}

#[derive(clap::Args, Debug)]
struct Database {
    /// The service's store.
    #[arg(
        long,
        env = "AUTOFOLLOW_DATABASE_URL",
        default_value = "sqlite://data/autofollow.db"
    )]
    database_url: String,
}

#[derive(clap::Args, Debug)]
struct SimulateArgs {
    /// The service's store.
    #[arg(
        long,
        env = "AUTOFOLLOW_DATABASE_URL",
        default_value = "sqlite://data/autofollow.db"
    )]
    database_url: String,
    /// The candidate rules: a file or a directory.
    #[arg(long, value_name = "PATH")]
    rules: PathBuf,
    /// The rules in force.
    #[arg(
        long,
        env = "AUTOFOLLOW_RULES",
        default_value = "rules",
        value_name = "PATH"
    )]
    current: PathBuf,
    /// How far back (2h, 7d, 2026-12-01).
    #[arg(long, default_value = "7d", value_name = "TIME")]
    since: String,
    /// Only this location's webhooks.
    #[arg(long, value_name = "ID")]
    location: Option<String>,
    /// A saved `GET /opportunities/pipelines` response, to resolve pipeline and stage names.
    #[arg(long, value_name = "FILE")]
    pipelines: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

/// `autofollow simulate`: its arguments checked, the report printed.
async fn simulate(store: Arc<dyn Store>, args: Box<SimulateArgs>) -> Result<(), queue::OpsError> {
    let invalid = queue::OpsError::Invalid;
    let load = |path: &PathBuf| {
        crate::rules::RuleSet::load(path).map_err(|e| invalid(format!("{}: {e}", path.display())))
    };
    let (current, candidate) = (load(&args.current)?, load(&args.rules)?);
    let from = crate::model::task::since_ms(&args.since).map_err(invalid)?;
    let location = args
        .location
        .as_deref()
        .map(crate::model::ids::LocationId::parse);
    let location = location
        .transpose()
        .map_err(|e| invalid(format!("--location: {e}")))?;
    let resolver = rules::resolver(args.pipelines.as_deref()).map_err(invalid)?;
    let out = &mut io::stdout().lock();
    let sets = [&current, &candidate];
    let since = (args.since.as_str(), from);
    queue::simulate(
        store.as_ref(),
        sets,
        since,
        location.as_ref(),
        resolver.as_ref(),
        args.json,
        out,
    )
    .await
}

/// Which events `events` lists.
#[derive(clap::Args, Debug)]
struct Selection {
    /// Only events with this status: pending, parked, done, failed or skipped.
    #[arg(long)]
    status: Option<String>,
    /// Only events of this contact.
    #[arg(long)]
    contact: Option<String>,
    /// Only events received within this long (2h, 30m, 7d).
    #[arg(long, value_name = "DURATION")]
    since: Option<String>,
}

/// Runs one command to its end; the process's exit status.
pub async fn run(cli: Cli) -> ExitCode {
    let status = match cli.command {
        Command::Check {
            path,
            strict,
            online: false,
            ..
        } => {
            let (mut out, mut err) = (io::stdout().lock(), io::stderr().lock());
            rules::check(&path, strict, &mut out, &mut err)
        }
        Command::Check {
            path,
            strict,
            location,
            ..
        } => {
            let (mut out, mut err) = (io::stdout(), io::stderr());
            let only = location.as_deref();
            rules::check_online(&path, strict, only, &mut out, &mut err).await
        }
        Command::Explain(args) => {
            let (mut out, mut err) = (io::stdout().lock(), io::stderr().lock());
            rules::explain(&args, &mut out, &mut err)
        }
        Command::Schema => {
            let mut out = io::stdout().lock();
            writeln!(out, "{}", crate::rules::SCHEMA.trim_end()).map(|()| 0)
        }
        Command::Test(args) => {
            let (mut out, mut err) = (io::stdout().lock(), io::stderr().lock());
            ruletest::test(&args, &mut out, &mut err)
        }
        Command::Serve(args) => return serve(*args).await,
        Command::Healthcheck { url } => return healthcheck(url).await,
        Command::Migrate { from, to } => return migrate(&from, &to).await,
        Command::Store(command) => return on_store(command).await,
        Command::Reapply(args) => {
            return finish(maintain::reapply(args, &mut io::stdout().lock()).await);
        }
        Command::Undo(args) => return finish(maintain::undo(args, &mut io::stdout().lock()).await),
        Command::Backfill(args) => {
            return finish(maintain::backfill(args, &mut io::stdout().lock()).await);
        }
    };
    match status {
        Ok(code) => ExitCode::from(code),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("autofollow: {e}");
            ExitCode::from(1)
        }
    }
}

/// The commands that work on the store beside a running service.
async fn on_store(command: StoreCommand) -> ExitCode {
    match command {
        StoreCommand::Events {
            db,
            select,
            limit,
            json,
        } => {
            operate(&db, |store| async move {
                let filter = filter(select, limit)?;
                queue::events(store.as_ref(), &filter, json, &mut io::stdout().lock()).await
            })
            .await
        }
        StoreCommand::Replay {
            db,
            ids,
            status,
            since,
        } => {
            operate(&db, |store| async move {
                let selection = match status {
                    None if ids.is_empty() => {
                        return Err(queue::OpsError::Invalid(
                            "name event ids, or select events with --status (and --since)".into(),
                        ));
                    }
                    None => None,
                    Some(status) => Some(filter(
                        Selection {
                            status: Some(status),
                            contact: None,
                            since,
                        },
                        0,
                    )?),
                };
                let out = &mut io::stdout().lock();
                queue::replay(store.as_ref(), &ids, selection.as_ref(), out)
                    .await
                    .map(|_| ())
            })
            .await
        }
        StoreCommand::Why { db, contact, json } => {
            operate(&db, |store| async move {
                let contact = contact_id(&contact)?;
                queue::why(store.as_ref(), &contact, json, &mut io::stdout().lock()).await
            })
            .await
        }
        StoreCommand::Simulate(args) => {
            let db = Database {
                database_url: args.database_url.clone(),
            };
            operate(&db, |store| async move { simulate(store, args).await }).await
        }
        StoreCommand::Erase { db, contact } => {
            operate(&db, |store| async move {
                let contact = contact_id(&contact)?;
                queue::erase(store.as_ref(), &contact, &mut io::stdout().lock()).await
            })
            .await
        }
        command @ (StoreCommand::Pools { .. } | StoreCommand::Away { .. }) => {
            on_pools(command).await
        }
    }
}

/// `pools` and `away`.
async fn on_pools(command: StoreCommand) -> ExitCode {
    match command {
        StoreCommand::Pools { db, rules } => {
            operate(&db, |store| async move {
                pools::pools(store.as_ref(), &rules.rules, &mut io::stdout().lock()).await
            })
            .await
        }
        StoreCommand::Away {
            db,
            user,
            from,
            to,
            clear,
            rules,
        } => {
            operate(&db, |store| async move {
                let period = (user.as_str(), from.as_deref(), to.as_deref(), clear);
                let out = &mut io::stdout().lock();
                pools::away(store.as_ref(), &rules.rules, period, out).await
            })
            .await
        }
        _ => ExitCode::FAILURE,
    }
}

fn contact_id(text: &str) -> Result<ContactId, queue::OpsError> {
    ContactId::parse(text).map_err(|e| queue::OpsError::Invalid(e.to_string()))
}

fn filter(select: Selection, limit: u32) -> Result<EventFilter, queue::OpsError> {
    let invalid = queue::OpsError::Invalid;
    Ok(EventFilter {
        status: select
            .status
            .as_deref()
            .map(str::parse::<EventStatus>)
            .transpose()
            .map_err(invalid)?,
        contact: select.contact.as_deref().map(contact_id).transpose()?,
        since: select
            .since
            .as_deref()
            .map(EventFilter::since_ago)
            .transpose()
            .map_err(invalid)?,
        limit,
        location: None,
        event_type: None,
    })
}

/// Opens an existing store and runs one operator command on it.
async fn operate<F, Fut>(db: &Database, command: F) -> ExitCode
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = Result<(), queue::OpsError>>,
{
    let result = match crate::store::open_existing(&db.database_url).await {
        Ok(store) => command(store).await,
        Err(e) => Err(e.into()),
    };
    finish(result)
}

/// The exit status of an operator command (its error printed).
fn finish(result: Result<(), queue::OpsError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(queue::OpsError::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("autofollow: {e}");
            ExitCode::from(1)
        }
    }
}

/// `autofollow serve`: runs until SIGTERM or SIGINT, then shuts down cleanly.
async fn serve(args: ServeArgs) -> ExitCode {
    let config = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("autofollow serve: {e}");
            return ExitCode::from(1);
        }
    };
    crate::telemetry::init(config.log_format);
    let running = match crate::app::start(&config).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::from(1);
        }
    };
    #[cfg(unix)]
    reload_on_sighup(Arc::clone(&running.rules));
    shutdown_signal().await;
    tracing::info!("shutting down: intake answers 429, in-flight work finishes");
    running.shutdown().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = interrupt.await;
            return;
        };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// SIGHUP reloads the rules (a valid set replaces the old one; an invalid one is logged).
#[cfg(unix)]
fn reload_on_sighup(rules: Arc<crate::rules::LiveRules>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload with POST /admin/reload");
        return;
    };
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            let rules = Arc::clone(&rules);
            let _ = tokio::task::spawn_blocking(move || rules.reload()).await;
        }
    });
}

/// `autofollow healthcheck`: the container's health check.
async fn healthcheck(url: Option<String>) -> ExitCode {
    let url = url.unwrap_or_else(|| {
        let port = std::env::var("AUTOFOLLOW_LISTEN")
            .ok()
            .and_then(|l| l.parse::<std::net::SocketAddr>().ok())
            .map_or(8080, |a| a.port());
        format!("http://127.0.0.1:{port}/readyz")
    });
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .build();
    let healthy = match client {
        Ok(c) => c
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success()),
        Err(_) => false,
    };
    if healthy {
        ExitCode::SUCCESS
    } else {
        eprintln!("autofollow healthcheck: {url} is not healthy");
        ExitCode::from(1)
    }
}

/// `autofollow migrate`: copies a SQLite store into an empty PostgreSQL database.
async fn migrate(from: &str, to: &str) -> ExitCode {
    match crate::store::migrate::sqlite_to_postgres(from, to).await {
        Ok(report) => {
            println!("copied {from} into PostgreSQL:");
            for (table, rows) in &report.tables {
                println!("  {table:<18} {rows:>9}");
            }
            println!(
                "{} events waiting; start the replicas with AUTOFOLLOW_DATABASE_URL set to the PostgreSQL URL",
                report.pending
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("autofollow migrate: {e}");
            ExitCode::from(1)
        }
    }
}

//! The `autofollow` command line.

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use autofollow::cli::{self, ExplainArgs};
use autofollow::config::{Config, ServeArgs};
use autofollow::model::ids::ContactId;
use autofollow::store::{EventFilter, Store};
use autofollow::{ops, server, telemetry, worker};

#[derive(Parser)]
#[command(
    name = "autofollow",
    version,
    about = "GoHighLevel contact followers, decided by YAML rules"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate rule files: prints `ok: N rules in M files`, or every error with file:line:column.
    Check {
        /// A rule file or a directory of *.yaml / *.yml files.
        #[arg(env = "AUTOFOLLOW_RULES", default_value = "rules")]
        path: PathBuf,
    },
    /// Show, for one webhook body, why each rule matches or not, and the resulting plan.
    Explain {
        /// A rule file or a directory of *.yaml / *.yml files.
        #[arg(long, env = "AUTOFOLLOW_RULES", default_value = "rules")]
        rules: PathBuf,
        /// The contact's tags at its previous event, comma-separated (for tag_added / tag_removed).
        #[arg(long, value_name = "TAGS", value_delimiter = ',')]
        previous_tags: Option<Vec<String>>,
        /// The opportunity's stage (id or name) at its previous event (for stage_entered / stage_left).
        #[arg(long, value_name = "STAGE")]
        previous_stage: Option<String>,
        /// A saved `GET /opportunities/pipelines` response, to resolve pipeline and stage names.
        #[arg(long, value_name = "FILE")]
        pipelines: Option<PathBuf>,
        /// Print the explanation as JSON.
        #[arg(long)]
        json: bool,
        /// A webhook body (app or workflow webhook) in a JSON file; `-` reads standard input.
        event: PathBuf,
    },
    /// Run the webhook service: receive GoHighLevel webhooks, store them, apply the rules.
    Serve(Box<ServeArgs>),
    /// List stored events with their latest decision and error, newest first.
    Events {
        #[command(flatten)]
        db: Database,
        /// Only events with this status: pending, done, failed or skipped.
        #[arg(long)]
        status: Option<String>,
        /// Only events of this contact.
        #[arg(long)]
        contact: Option<ContactId>,
        /// Only events received within this long (2h, 30m, 7d).
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
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
        contact: ContactId,
        #[arg(long)]
        json: bool,
    },
    /// Erase everything stored about a contact (a data subject's request): its events,
    /// waiting ones included, their decisions, and its tag, stage and follower state.
    Erase {
        #[command(flatten)]
        db: Database,
        contact: ContactId,
    },
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
    /// Exit 0 when the service at URL answers /healthz (for container health checks).
    Healthcheck {
        /// Default: http://127.0.0.1:PORT/readyz (store reachable, rules loaded), PORT from AUTOFOLLOW_LISTEN (else 8080).
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(clap::Args)]
struct Database {
    /// The service's store.
    #[arg(
        long,
        env = "AUTOFOLLOW_DATABASE_URL",
        default_value = "sqlite://data/autofollow.db"
    )]
    database_url: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (mut out, mut err) = (io::stdout().lock(), io::stderr().lock());
    let status = match cli.command {
        Command::Check { path } => cli::check(&path, &mut out, &mut err),
        Command::Explain {
            rules,
            previous_tags,
            previous_stage,
            pipelines,
            json,
            event,
        } => {
            let previous_tags = previous_tags.map(|tags| {
                tags.into_iter()
                    .map(|t| t.trim().to_owned())
                    .filter(|t| !t.is_empty())
                    .collect()
            });
            let args = ExplainArgs {
                rules,
                event,
                previous_tags,
                previous_stage,
                pipelines,
                json,
            };
            cli::explain(&args, &mut out, &mut err)
        }
        Command::Healthcheck { url } => return healthcheck(url),
        Command::Events {
            db,
            status,
            contact,
            since,
            limit,
            json,
        } => {
            return operate(&db, |store| async move {
                let filter = filter(status.as_deref(), contact, since.as_deref(), limit)?;
                let mut out = io::stdout().lock();
                ops::events(store.as_ref(), &filter, json, &mut out)
                    .await
                    .map_err(|e| e.to_string())
            });
        }
        Command::Replay {
            db,
            ids,
            status,
            since,
        } => {
            return operate(&db, |store| async move {
                if ids.is_empty() && status.is_none() {
                    return Err(
                        "name event ids, or select events with --status (and --since)".to_owned(),
                    );
                }
                let selection = match status {
                    Some(_) => Some(filter(status.as_deref(), None, since.as_deref(), 0)?),
                    None => None,
                };
                let mut out = io::stdout().lock();
                ops::replay(store.as_ref(), &ids, selection.as_ref(), &mut out)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
        }
        Command::Why { db, contact, json } => {
            return operate(&db, |store| async move {
                let mut out = io::stdout().lock();
                ops::why(store.as_ref(), &contact, json, &mut out)
                    .await
                    .map_err(|e| e.to_string())
            });
        }
        Command::Erase { db, contact } => {
            return operate(&db, |store| async move {
                let mut out = io::stdout().lock();
                ops::erase(store.as_ref(), &contact, &mut out)
                    .await
                    .map_err(|e| e.to_string())
            });
        }
        Command::Migrate { from, to } => return migrate(&from, &to),
        Command::Serve(args) => {
            drop((out, err));
            return serve(*args);
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

fn serve(args: ServeArgs) -> ExitCode {
    let config = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("autofollow serve: {e}");
            return ExitCode::from(1);
        }
    };
    telemetry::init(config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("autofollow serve: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        let running =
            match server::start(&config, worker::WorkerOptions::from_config(&config)).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start");
                    return ExitCode::from(1);
                }
            };
        #[cfg(unix)]
        reload_on_sighup(std::sync::Arc::clone(&running.rules));
        shutdown_signal().await;
        tracing::info!("shutting down: intake answers 429, in-flight work finishes");
        running.shutdown().await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

fn healthcheck(url: Option<String>) -> ExitCode {
    let url = url.unwrap_or_else(|| {
        let port = std::env::var("AUTOFOLLOW_LISTEN")
            .ok()
            .and_then(|l| l.parse::<std::net::SocketAddr>().ok())
            .map_or(8080, |a| a.port());
        format!("http://127.0.0.1:{port}/readyz")
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let ok = runtime.is_ok_and(|rt| {
        rt.block_on(async {
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(3))
                .build();
            match client {
                Ok(c) => c
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success()),
                Err(_) => false,
            }
        })
    });
    if ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("autofollow healthcheck: {url} is not healthy");
        ExitCode::from(1)
    }
}

fn filter(
    status: Option<&str>,
    contact: Option<ContactId>,
    since: Option<&str>,
    limit: u32,
) -> Result<EventFilter, String> {
    Ok(EventFilter {
        status: status.map(ops::status).transpose()?,
        contact,
        since: since.map(ops::since).transpose()?,
        limit,
    })
}

fn migrate(from: &str, to: &str) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
        .and_then(|rt| {
            rt.block_on(autofollow::store::migrate::sqlite_to_postgres(from, to))
                .map_err(|e| e.to_string())
        });
    match result {
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

/// Opens the store and runs one operator command on it.
fn operate<F, Fut>(db: &Database, command: F) -> ExitCode
where
    F: FnOnce(std::sync::Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("autofollow: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let store = autofollow::store::open_existing(&db.database_url)
            .await
            .map_err(|e| e.to_string())?;
        command(store).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("autofollow: {e}");
            ExitCode::from(1)
        }
    }
}

/// SIGHUP reloads the rules (a valid set replaces the old one; an invalid one is logged).
#[cfg(unix)]
fn reload_on_sighup(rules: std::sync::Arc<autofollow::rules::LiveRules>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload with POST /admin/reload");
        return;
    };
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            let rules = std::sync::Arc::clone(&rules);
            let _ = tokio::task::spawn_blocking(move || rules.reload()).await;
        }
    });
}

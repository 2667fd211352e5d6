//! Composition: the one place the service is assembled from its parts (store, rate budget,
//! GoHighLevel client, rules, worker, web listeners) and taken apart again on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use tokio::sync::{Notify, watch};

use crate::access::{Access, OAuth};
use crate::config::{Config, DEFAULT_AUTHORIZE_URL, WHITELABEL_AUTHORIZE_URL};
use crate::ghl::GhlClient;
use crate::ghl::budget::{Budget, LocalBudget};
use crate::ghl::oauth::OAuthClient;
use crate::metrics::Metrics;
use crate::rules::LiveRules;
use crate::store::pg_budget::PgBudget;
use crate::store::wrap::Wrapped;
use crate::store::{Store, StoreError};
use crate::web::guard::Rejections;
use crate::web::intake::{REJECTION_SUMMARY_EVERY, summarize_rejections};
use crate::web::state::{AppState, EXCHANGES, Install};
use crate::worker::{Job, OnReload, Worker};

/// Deletes finished events older than `retention`, and delivery ids older than
/// `dedup_window`, at start and then hourly.
async fn prune(
    store: Arc<dyn Store>,
    retention: Duration,
    dedup_window: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if let Some(before) = SystemTime::now().checked_sub(retention) {
            match store.prune(before, dedup_window).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    deleted = n,
                    "pruned finished events past the retention period"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot prune old events; trying again later"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// A running service: its address and the means to stop it.
#[derive(Debug)]
pub struct Running {
    /// The public listener: webhooks and health.
    pub addr: SocketAddr,
    /// The admin listener (admin API, metrics, detailed readiness), unless turned off.
    pub admin_addr: Option<SocketAddr>,
    /// The rules in force; `reload()` replaces them (SIGHUP, `POST /admin/reload`).
    pub rules: Arc<LiveRules>,
    pub store: Arc<dyn Store>,
    /// Keeps the rule-file watcher alive.
    _watcher: Option<notify::RecommendedWatcher>,
    shutdown: watch::Sender<bool>,
    accepting: Arc<AtomicBool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    admin_server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The worker, also for [`Running::run_once`].
    worker: Arc<Worker>,
    worker_task: tokio::task::JoinHandle<()>,
    /// Writes the last rejection summary at shutdown.
    summarizer: tokio::task::JoinHandle<()>,
    /// The worker's lease owner name.
    owner: String,
    /// How long shutdown waits for in-flight work before releasing it.
    grace: Duration,
}

impl Running {
    /// Makes intake answer 429 with `Retry-After` from now on (the first step of shutdown).
    pub fn stop_intake(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    /// Processes every event that is due now, beside the running worker (claims are
    /// exclusive, so no event is processed twice); how many groups it processed. Tests drain
    /// the queue with it instead of waiting for the worker's next poll.
    pub async fn run_once(&self) -> usize {
        self.worker.run_once().await
    }

    /// Stops intake (429), lets in-flight work finish (up to the grace period), then releases
    /// every lease this service holds: its unfinished events are free for the next run (or
    /// another replica) at once, and are redone there.
    pub async fn shutdown(self) {
        self.accepting.store(false, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
        let mut worker = self.worker_task;
        if tokio::time::timeout(self.grace, &mut worker).await.is_err() {
            tracing::warn!(
                grace = %humantime::format_duration(self.grace),
                "in-flight work did not finish in the grace period; it is stopped and its events are released"
            );
            worker.abort();
            let _ = worker.await;
        }
        match self.store.release(&self.owner).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(released = n, "released the leases of unfinished events"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot release leases at shutdown; they expire on their own")
            }
        }
        let _ = tokio::time::timeout(self.grace, self.server).await;
        if let Some(admin) = self.admin_server {
            let _ = tokio::time::timeout(self.grace, admin).await;
        }
        let _ = self.summarizer.await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Opens the store, starts the worker and the HTTP server.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let store = crate::store::open(&config.store.database_url).await?;
    start_with_store(config, store).await
}

/// [`start`] on a store the caller opened (tests wrap one to inject faults).
pub async fn start_with_store(
    config: &Config,
    store: Arc<dyn Store>,
) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::new());
    let store: Arc<dyn Store> = Arc::new(Wrapped::new(store, Arc::clone(&metrics)));
    let released = store.release_all().await?;
    if released > 0 {
        tracing::info!(released, "resuming events a previous run left unfinished");
    }
    let pending = store.pending().await?;
    let (listener, addr) = bind(config.web.listen).await?;
    let admin_listener = match config.web.admin_listen {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let (shutdown, shutdown_rx) = watch::channel(false);
    let rules = Arc::new(LiveRules::new(
        config.rules.path.clone(),
        Arc::clone(&config.rules.set),
        Arc::clone(&metrics),
    ));
    let watcher = watch_rules(config, &rules);
    let wake = Arc::new(Notify::new());
    let access = access(config, &store)?;
    let worker = Arc::new(Worker::new(
        Arc::clone(&store),
        Arc::clone(&rules),
        ghl_client(config, &metrics).await?,
        access.clone(),
        config.worker,
        Arc::clone(&wake),
        Arc::clone(&metrics),
    ));
    let owner = worker.owner().to_owned();
    let worker_task = tokio::spawn(Arc::clone(&worker).run(shutdown_rx.clone()));
    let mut state = app_state(config, &store, &rules, wake, metrics, &access, &worker);
    state.install = install(config, &access);
    let summarizer = spawn_housekeeping(config, &state, &shutdown_rx);
    let admin_addr = admin_listener.as_ref().map(|(_, a)| *a);
    let admin_server = admin_listener.map(|(listener, _)| {
        serve_until(
            listener,
            crate::web::admin_router(state.clone()),
            shutdown_rx.clone(),
        )
    });
    let accepting = Arc::clone(&state.accepting);
    let server = serve_until(listener, crate::web::router(state), shutdown_rx);
    tracing::info!(
        %addr,
        admin_addr = %admin_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        rules = config.rules.set.rules().len(),
        dry_run = config.worker.dry_run,
        pending,
        "autofollow is listening"
    );
    Ok(Running {
        addr,
        admin_addr,
        rules,
        _watcher: watcher,
        store,
        shutdown,
        accepting,
        server,
        admin_server,
        worker,
        worker_task,
        summarizer,
        owner,
        grace: config.shutdown_grace,
    })
}

/// The worker an operator's command (`reapply`, `undo`) previews and queues with: the
/// service's store, access, GoHighLevel client (for lookups) and rules, without listeners
/// or a loop. The tasks it queues are carried out by the running service.
pub async fn tool(config: &Config) -> Result<Arc<Worker>, StartError> {
    let metrics = Arc::new(Metrics::new());
    let store = crate::store::open_existing(&config.store.database_url).await?;
    let rules = Arc::new(LiveRules::new(
        config.rules.path.clone(),
        Arc::clone(&config.rules.set),
        Arc::clone(&metrics),
    ));
    let access = access(config, &store)?;
    Ok(Arc::new(Worker::new(
        Arc::clone(&store),
        rules,
        ghl_client(config, &metrics).await?,
        access,
        config.worker,
        Arc::new(Notify::new()),
        metrics,
    )))
}

/// What `check --online` needs of the service's environment: the GoHighLevel client (its
/// rate budget) and the credentials. The store is opened only for OAuth installations.
pub async fn directory_access(config: &Config) -> Result<(GhlClient, Access), StartError> {
    let metrics = Arc::new(Metrics::new());
    let client = ghl_client(config, &metrics).await?;
    let access = match config.ghl.oauth {
        Some(_) => {
            let store = crate::store::open_existing(&config.store.database_url).await?;
            access(config, &store)?
        }
        None => Access::new(
            config.ghl.pits.clone(),
            config.ghl.tokens_file.clone(),
            None,
        ),
    };
    Ok((client, access))
}

/// What the web handlers share.
fn app_state(
    config: &Config,
    store: &Arc<dyn Store>,
    rules: &Arc<LiveRules>,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    access: &Access,
    worker: &Arc<Worker>,
) -> AppState {
    AppState {
        store: Arc::clone(store),
        verifier: Arc::clone(&config.web.verifier),
        rules: Arc::clone(rules),
        accepting: Arc::new(AtomicBool::new(true)),
        wake,
        arrived: Arc::new(Notify::new()),
        admin_token: config.web.admin_token.clone().map(Arc::new),
        console: config
            .web
            .admin_token
            .clone()
            .map(|t| Arc::new(crate::web::session::Keys::new(Arc::new(t)))),
        settle_delay: config.worker.settle_delay,
        metrics,
        body_budget: Arc::default(),
        rejections: Arc::new(Rejections::default()),
        access: access.clone(),
        install: None,
        worker: Arc::clone(worker),
    }
}

/// The ways to a location's token: PITs, and in app mode the installations.
fn access(config: &Config, store: &Arc<dyn Store>) -> Result<Access, StartError> {
    let ghl = &config.ghl;
    let oauth = match &ghl.oauth {
        None => None,
        Some(o) => {
            let client = OAuthClient::new(&ghl.base_url, ghl.timeout, o.app.clone())?;
            let owner = format!("{}-{}", std::process::id(), rand::random::<u32>());
            let oauth = OAuth::new(
                client,
                Arc::clone(store),
                o.sealer.clone(),
                &owner,
                o.installed_app_id(),
                ghl.timeout,
            );
            Some(Arc::new(oauth))
        }
    };
    Ok(Access::new(
        ghl.pits.clone(),
        ghl.tokens_file.clone(),
        oauth,
    ))
}

/// What `/oauth/install` and `/oauth/callback` need, in app mode.
fn install(config: &Config, access: &Access) -> Option<Arc<Install>> {
    let (settings, oauth) = (config.ghl.oauth.as_ref()?, access.oauth()?);
    let whitelabel = match settings.authorize_url.as_str() == DEFAULT_AUTHORIZE_URL {
        true => WHITELABEL_AUTHORIZE_URL.parse().ok()?,
        false => settings.authorize_url.clone(),
    };
    Some(Arc::new(Install {
        oauth: Arc::clone(oauth),
        authorize_url: settings.authorize_url.clone(),
        whitelabel_authorize_url: whitelabel,
        redirect_uri: settings.redirect_uri(),
        scopes: settings.scopes.clone(),
        app_id: settings.app_id.clone(),
        state_key: settings.app.client_secret.clone(),
        secure_cookie: settings.public_url.starts_with("https://"),
        exchanges: tokio::sync::Semaphore::new(EXCHANGES),
    }))
}

/// The GoHighLevel client, with the location budget: in PostgreSQL when replicas share the
/// database (the limit holds for their sum), else in memory.
async fn ghl_client(config: &Config, metrics: &Arc<Metrics>) -> Result<GhlClient, StartError> {
    let ghl = &config.ghl;
    let budget: Arc<dyn Budget> = if crate::store::is_postgres(&config.store.database_url) {
        let pool = crate::store::postgres::connect(&config.store.database_url, 2).await?;
        Arc::new(PgBudget::new(pool, ghl.rate_limit, ghl.daily_limit))
    } else {
        Arc::new(LocalBudget::new(ghl.rate_limit, ghl.daily_limit))
    };
    Ok(GhlClient::new(
        &ghl.base_url,
        ghl.timeout,
        budget,
        Arc::clone(metrics),
    )?)
}

/// Watches the rule files when configured to; `None` when off or not possible.
fn watch_rules(config: &Config, rules: &Arc<LiveRules>) -> Option<notify::RecommendedWatcher> {
    if !config.rules.watch {
        return None;
    }
    rules
        .watch()
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot watch the rule files; reload with SIGHUP or POST /admin/reload");
        })
        .ok()
}

/// The background tasks beside the worker: waking it for settled events, pruning, backfills,
/// the reapply after a reload, and the rejection summary (whose handle shutdown awaits for its
/// last line).
fn spawn_housekeeping(
    config: &Config,
    state: &AppState,
    shutdown: &watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(wake_when_due(
        Arc::clone(&state.arrived),
        Arc::clone(&state.wake),
        config.worker.settle_delay,
        shutdown.clone(),
    ));
    tokio::spawn(Arc::clone(&state.worker).run_backfills(shutdown.clone()));
    tokio::spawn(Arc::clone(&state.worker).run_reconcile(shutdown.clone()));
    tokio::spawn(reapply_on_reload(
        Arc::clone(&state.worker),
        state.rules.subscribe(),
        config.rules.on_reload,
        shutdown.clone(),
    ));
    tokio::spawn(prune(
        Arc::clone(&state.store),
        config.store.retention,
        config.web.verifier.dedup_window(),
        shutdown.clone(),
    ));
    if config.ghl.tokens_file.is_some() {
        tokio::spawn(reload_pits(
            state.access.clone(),
            Arc::clone(&state.store),
            Arc::clone(&state.wake),
            shutdown.clone(),
        ));
    }
    tokio::spawn(summarize_rejections(
        Arc::clone(&state.rejections),
        REJECTION_SUMMARY_EVERY,
        shutdown.clone(),
    ))
}

/// After each reload that replaces the rules, works out what `reapply` would change
/// (`preview`: logged, and shown in the admin `/readyz`) or queues it (`apply`).
async fn reapply_on_reload(
    worker: Arc<Worker>,
    mut replaced: watch::Receiver<String>,
    on_reload: OnReload,
    mut shutdown: watch::Receiver<bool>,
) {
    if on_reload == OnReload::Off {
        return;
    }
    loop {
        tokio::select! {
            changed = replaced.changed() => if changed.is_err() { return },
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let dry_run = on_reload == OnReload::Preview;
        match worker
            .maintain(&Job::Reapply { location: None }, dry_run)
            .await
        {
            Ok(report) => {
                let summary = report.lines().join("\n");
                tracing::info!(
                    contacts = report.contacts,
                    changed = report.changed,
                    queued = report.queued,
                    "the new rules against the contacts already decided:\n{summary}"
                );
            }
            Err(e) => tracing::warn!(error = %e, "cannot work out what the new rules change"),
        }
    }
}

/// How often the token file is read again.
const PITS_EVERY: Duration = Duration::from_secs(2);

/// Reads the token file again every [`PITS_EVERY`]: a rotated or added token is used at once,
/// and its location's parked work resumes. A file that does not read is reported once and
/// the tokens in use are kept.
async fn reload_pits(
    access: Access,
    store: Arc<dyn Store>,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut reported: Option<String> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(PITS_EVERY) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let changed = match access.reload_pits() {
            Ok(changed) => changed,
            Err(e) => {
                if reported.as_ref() != Some(&e) {
                    tracing::error!(error = %e, "cannot read the token file again; the tokens in use are kept");
                    reported = Some(e);
                }
                continue;
            }
        };
        reported = None;
        for location in &changed {
            let resumed = store.resume_location(location).await.unwrap_or(0);
            tracing::info!(%location, resumed, "the location's token changed in the token file");
        }
        if !changed.is_empty() {
            wake.notify_one();
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Listen(addr, e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| StartError::Listen(addr, e))?;
    Ok((listener, bound))
}

/// Serves `app` on `listener` until `shutdown` turns true.
fn serve_until(
    listener: tokio::net::TcpListener,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::spawn(async move {
        crate::web::server::serve(listener, app, async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
    })
}

/// Wakes the worker for stored webhooks once they can be due: right away without a settle
/// delay, else one settle delay after an arrival, at most once per settle delay however many
/// arrive. (Every wake costs a claim; under a flood, waking per webhook made the worker
/// claim per webhook for events that could not be due yet.) An event stored during the wait
/// is picked up by the next wake, at most one settle delay (or one poll) after it is due.
async fn wake_when_due(
    arrived: Arc<Notify>,
    wake: Arc<Notify>,
    settle_delay: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = arrived.notified() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if !settle_delay.is_zero() {
            tokio::time::sleep(settle_delay).await;
        }
        wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the worker's wakes while `arrivals` webhooks arrive over `over`.
    async fn wakes(settle_delay: Duration, arrivals: u32, over: Duration) -> u32 {
        let (arrived, wake) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let (_stop, stop_rx) = watch::channel(false);
        tokio::spawn(wake_when_due(
            Arc::clone(&arrived),
            Arc::clone(&wake),
            settle_delay,
            stop_rx,
        ));
        let counted = tokio::spawn(async move {
            let mut wakes = 0;
            let end = tokio::time::Instant::now() + over + settle_delay * 2;
            while tokio::time::timeout_at(end, wake.notified()).await.is_ok() {
                wakes += 1;
            }
            wakes
        });
        for _ in 0..arrivals {
            arrived.notify_one();
            tokio::time::sleep(over / arrivals).await;
        }
        counted.await.unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_wakes_the_worker_once_per_settle_delay() {
        // 1,000 webhooks over 10 s with a 1 s settle delay: one wake per second, each one
        // settle delay after an arrival, not 1,000.
        let n = wakes(Duration::from_secs(1), 1000, Duration::from_secs(10)).await;
        assert!((9..=11).contains(&n), "{n} wakes");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_settle_delay_every_arrival_wakes_the_worker() {
        let n = wakes(Duration::ZERO, 10, Duration::from_secs(10)).await;
        assert_eq!(n, 10);
    }
}

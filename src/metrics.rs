//! Prometheus metrics, served at `GET /metrics` in the text exposition format.
//!
//! Each running service has its own [`Registry`] (no process-global state), so several
//! services in one process (tests) count apart. Counters and histograms are updated where
//! things happen; the queue, token and rule gauges are read by the caller when scraped and
//! passed in as [`Gauges`]. A leaf: it imports nothing of the crate, so any layer reports
//! into it. The README's Operations section lists every series.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every series autofollow exports.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// `endpoint` (app, workflow), `event_type`, `answer`.
    pub webhooks: IntCounterVec,
    /// Events that reached a final status: `status` (done, failed, skipped).
    pub events_finished: IntCounterVec,
    /// Events that ended failed: they need an operator (`autofollow replay`).
    pub dead_letters: IntCounter,
    /// Attempts that failed and were scheduled again.
    pub retries: IntCounter,
    /// Events parked because GoHighLevel refused the location's token.
    pub parked: IntCounter,
    /// GoHighLevel calls: `method`, `endpoint`, `status` (HTTP status, or `error` when no
    /// answer came).
    pub ghl_requests: IntCounterVec,
    pub ghl_duration: HistogramVec,
    /// Calls held back because the location's budget was spent: `location`.
    pub rate_limit_waits: IntCounterVec,
    /// Events each rule matched (counted when the event's result is stored): `rule`.
    pub rule_matches: IntCounterVec,
    /// Rule reloads: `outcome` (applied, unchanged, rejected).
    pub rule_reloads: IntCounterVec,
    /// Store operation latency: `operation`.
    pub store_duration: HistogramVec,
    queue_depth: IntGauge,
    oldest_pending: prometheus::Gauge,
    failed_events: IntGauge,
    tokens_refused: IntGauge,
    installations: IntGaugeVec,
    /// `location`, `count` (seen, total, queued): each location's latest backfill.
    backfill_records: IntGaugeVec,
    scopes_missing: IntGauge,
    rules_info: IntGaugeVec,
    rules_count: IntGauge,
    rules_valid: IntGauge,
    store_up: IntGauge,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    register(registry, metric)
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    register(registry, metric)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    register(registry, metric)
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let metric = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    register(registry, metric)
}

/// Registers a metric built from constant, valid options; names are unique by construction.
fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    if let Err(e) = registry.register(Box::new(metric.clone())) {
        unreachable!("duplicate metric: {e}");
    }
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every series, registered. Longer than a screen because it is the list of series (name,
    /// help text, labels) that the README's table documents; split, the list would scatter.
    pub fn new() -> Metrics {
        let r = Registry::new();
        let oldest_pending = prometheus::Gauge::new(
            "autofollow_queue_oldest_pending_age_seconds",
            "Age of the oldest event not processed yet (0 when none waits).",
        )
        .unwrap_or_else(|e| unreachable!("metric: {e}"));
        let oldest_pending = register(&r, oldest_pending);
        Metrics {
            webhooks: counter_vec(
                &r,
                "autofollow_webhooks_total",
                "Webhooks received, by endpoint, event type and answer.",
                &["endpoint", "event_type", "answer"],
            ),
            events_finished: counter_vec(
                &r,
                "autofollow_events_finished_total",
                "Events that reached a final status, by status.",
                &["status"],
            ),
            dead_letters: counter(
                &r,
                "autofollow_dead_letters_total",
                "Events that ended failed and wait for an operator (autofollow replay).",
            ),
            retries: counter(
                &r,
                "autofollow_retries_total",
                "Processing attempts that failed and were scheduled again.",
            ),
            parked: counter(
                &r,
                "autofollow_events_parked_total",
                "Events parked because GoHighLevel refused the location's token.",
            ),
            ghl_requests: counter_vec(
                &r,
                "autofollow_ghl_requests_total",
                "GoHighLevel API calls, by method, endpoint and HTTP status (error: no answer).",
                &["method", "endpoint", "status"],
            ),
            ghl_duration: histogram_vec(
                &r,
                "autofollow_ghl_request_duration_seconds",
                "GoHighLevel API call latency, by method and endpoint.",
                &["method", "endpoint"],
                vec![0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0],
            ),
            rate_limit_waits: counter_vec(
                &r,
                "autofollow_rate_limit_waits_total",
                "Calls held back because the location's rate-limit budget was spent.",
                &["location"],
            ),
            rule_matches: counter_vec(
                &r,
                "autofollow_rule_matches_total",
                "Processed events each rule matched.",
                &["rule"],
            ),
            rule_reloads: counter_vec(
                &r,
                "autofollow_rule_reloads_total",
                "Rule reloads, by outcome (applied, unchanged, rejected).",
                &["outcome"],
            ),
            store_duration: histogram_vec(
                &r,
                "autofollow_store_operation_duration_seconds",
                "Store operation latency, by operation.",
                &["operation"],
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ],
            ),
            queue_depth: gauge(
                &r,
                "autofollow_queue_depth",
                "Events not processed yet (waiting, retrying or parked).",
            ),
            oldest_pending,
            failed_events: gauge(
                &r,
                "autofollow_events_failed",
                "Failed events kept in the store (dead letters not replayed or pruned yet).",
            ),
            tokens_refused: gauge(
                &r,
                "autofollow_tokens_refused",
                "Locations whose token GoHighLevel refused; their events are parked.",
            ),
            installations: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "autofollow_installations",
                        "App installations (locations and companies) by state: active, reauthorize, uninstalled.",
                    ),
                    &["state"],
                )
                .unwrap_or_else(|e| unreachable!("metric: {e}")),
            ),
            backfill_records: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "autofollow_backfill_records",
                        "Each location's latest backfill: records seen, records in all (as GoHighLevel reported), tasks queued.",
                    ),
                    &["location", "count"],
                )
                .unwrap_or_else(|e| unreachable!("metric: {e}")),
            ),
            scopes_missing: gauge(
                &r,
                "autofollow_scopes_missing",
                "Scopes found missing from locations' tokens (GoHighLevel answered 401 or 403 to a lookup), summed over locations.",
            ),
            rules_info: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "autofollow_rules_info",
                        "The rule set in force: 1 for its version.",
                    ),
                    &["version"],
                )
                .unwrap_or_else(|e| unreachable!("metric: {e}")),
            ),
            rules_count: gauge(&r, "autofollow_rules", "Rules in force."),
            rules_valid: gauge(
                &r,
                "autofollow_rules_last_reload_ok",
                "1 when the last reload loaded a valid set, 0 while the files on disk are invalid.",
            ),
            store_up: gauge(
                &r,
                "autofollow_store_up",
                "1 when the store answered this scrape.",
            ),
            registry: r,
        }
    }

    pub fn webhook(&self, endpoint: &str, event_type: &str, answer: &str) {
        self.webhooks
            .with_label_values(&[endpoint, event_type, answer])
            .inc();
    }

    pub fn ghl_call(&self, method: &str, endpoint: &str, status: Option<u16>, took: Duration) {
        let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
        self.ghl_requests
            .with_label_values(&[method, endpoint, status.as_str()])
            .inc();
        self.ghl_duration
            .with_label_values(&[method, endpoint])
            .observe(took.as_secs_f64());
    }

    pub fn store_op(&self, operation: &str, took: Duration) {
        self.store_duration
            .with_label_values(&[operation])
            .observe(took.as_secs_f64());
    }

    /// Sets the gauges read at scrape time, then renders every series.
    pub fn render(&self, gauges: &Gauges) -> String {
        match &gauges.queue {
            Some(queue) => {
                self.store_up.set(1);
                self.queue_depth.set(count(queue.pending));
                self.failed_events.set(count(queue.failed));
                self.oldest_pending
                    .set(queue.oldest_pending_age.as_secs_f64());
            }
            None => self.store_up.set(0),
        }
        if let Some(backfills) = &gauges.backfills {
            self.backfill_records.reset();
            for (location, seen, total, queued) in backfills {
                let set = |count: &str, n: i64| {
                    self.backfill_records
                        .with_label_values(&[location.as_str(), count])
                        .set(n);
                };
                set("seen", *seen);
                set("total", total.unwrap_or(*seen));
                set("queued", *queued);
            }
        }
        if let Some(refused) = gauges.tokens_refused {
            self.tokens_refused.set(count(refused as u64));
        }
        if let Some(installations) = &gauges.installations {
            self.installations.reset();
            for (state, n) in installations {
                let n = count(*n as u64);
                self.installations.with_label_values(&[state]).set(n);
            }
        }
        self.scopes_missing.set(count(gauges.scopes_missing as u64));
        self.rules_info.reset();
        self.rules_info
            .with_label_values(&[gauges.rules_version.as_str()])
            .set(1);
        self.rules_count.set(count(gauges.rules as u64));
        self.rules_valid.set(i64::from(gauges.rules_valid));
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "metrics: cannot encode");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A location's latest backfill: (location, records seen, records in all, tasks queued).
pub type BackfillGauge = (String, i64, Option<i64>, i64);

/// What the gauges show, read by the caller from the store and the rules at each scrape.
#[derive(Clone, Debug, Default)]
pub struct Gauges {
    /// `None` when the store did not answer.
    pub queue: Option<QueueGauges>,
    /// Each location's latest backfill; `None` when the store did not answer.
    pub backfills: Option<Vec<BackfillGauge>>,
    /// `None` when the store did not answer (the gauge keeps its value).
    pub tokens_refused: Option<usize>,
    /// Installations by state; `None` when the store did not answer.
    pub installations: Option<Vec<(&'static str, usize)>>,
    /// Missing scopes, summed over locations.
    pub scopes_missing: usize,
    pub rules_version: String,
    pub rules: usize,
    /// False while the rule files on disk are invalid.
    pub rules_valid: bool,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct QueueGauges {
    pub pending: u64,
    pub failed: u64,
    pub oldest_pending_age: Duration,
}

/// Shared handle.
pub type SharedMetrics = Arc<Metrics>;

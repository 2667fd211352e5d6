//! What the console's templates show, built from the store's and the rules' types: every
//! value the templates print is text they escape (askama escapes HTML by default), so a
//! webhook body, which anyone who can reach intake shapes, is shown as text.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use crate::model::record::{CallRecord, Decision, EventStatus};
use crate::rules::{Check, Explanation, RuleOutcome};
use crate::store::{Activity, EventSummary};

/// What every page's frame shows.
#[derive(Debug, Default)]
pub struct Chrome {
    pub title: String,
    /// The navigation entry of the page.
    pub active: &'static str,
    pub signed_in: bool,
    /// The session's CSRF token, for the logout form (none for a bearer client).
    pub csrf: Option<String>,
    /// A message about what was just done.
    pub flash: Option<String>,
}

/// A rendered template, or a plain 500 when it cannot render.
pub fn page(status: StatusCode, template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a console page did not render");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page did not render").into_response()
        }
    }
}

/// Unix milliseconds as a UTC time to the second.
pub fn when_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// How long ago, in a few words.
pub fn ago(t: SystemTime) -> String {
    let d = SystemTime::now().duration_since(t).unwrap_or_default();
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string() + " ago"
}

/// `1 event`, `2 events`.
pub fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A list as text: `a, b`, or `none`.
pub fn listed<T: ToString>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".to_owned();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The CSS class of a status.
pub fn status_class(status: EventStatus) -> &'static str {
    match status {
        EventStatus::Done => "good",
        EventStatus::Failed => "bad",
        EventStatus::Parked => "warn",
        EventStatus::Pending | EventStatus::Skipped => "muted",
    }
}

/// One event in a listing.
#[derive(Debug)]
pub struct EventRow {
    pub id: i64,
    pub received: String,
    pub event_type: String,
    pub location: String,
    pub contact: String,
    pub status: &'static str,
    pub status_class: &'static str,
    pub attempts: u32,
    pub matched: String,
    pub plan: String,
    pub error: Option<String>,
}

impl From<&EventSummary> for EventRow {
    fn from(s: &EventSummary) -> EventRow {
        let d = s.last_decision.as_ref();
        EventRow {
            id: s.event.id,
            received: when_ms(s.received_at),
            event_type: s.event.event_type.clone(),
            location: s.event.location_id.clone(),
            contact: s.event.contact_id.clone(),
            status: s.event.status.as_str(),
            status_class: status_class(s.event.status),
            attempts: s.event.attempts,
            matched: d.map_or_else(|| "—".to_owned(), |d| listed(&d.matched)),
            plan: d.map_or_else(|| "—".to_owned(), |d| d.plan.summary()),
            error: s.event.last_error.clone().or_else(|| d?.error.clone()),
        }
    }
}

/// One call a decision recorded.
#[derive(Debug)]
pub struct CallView {
    pub method: String,
    pub path: String,
    pub users: String,
    pub status: String,
    pub outcome: String,
    pub changed: String,
}

impl From<&CallRecord> for CallView {
    fn from(c: &CallRecord) -> CallView {
        CallView {
            method: c.method.clone(),
            path: c.path.clone(),
            users: listed(&c.users),
            status: c
                .status
                .map_or_else(|| "no answer".to_owned(), |s| s.to_string()),
            outcome: c.outcome.clone(),
            changed: c
                .changed
                .as_deref()
                .map_or_else(|| "not said".to_owned(), listed),
        }
    }
}

/// One attempt's decision.
#[derive(Debug)]
pub struct DecisionView {
    pub attempt: u32,
    pub outcome: String,
    pub matched: String,
    pub plan: String,
    pub error: Option<String>,
    pub dry_run: bool,
    pub rules_version: String,
    pub batch: String,
    pub calls: Vec<CallView>,
}

impl From<&Decision> for DecisionView {
    fn from(d: &Decision) -> DecisionView {
        DecisionView {
            attempt: d.attempt,
            outcome: d.outcome.as_str().to_owned(),
            matched: listed(&d.matched),
            plan: d.plan.summary(),
            error: d.error.clone(),
            dry_run: d.dry_run,
            rules_version: d.rules_version.clone(),
            batch: if d.batch.is_empty() {
                String::new()
            } else {
                listed(&d.batch)
            },
            calls: d.calls.iter().map(CallView::from).collect(),
        }
    }
}

/// One condition's check, flattened with its depth.
#[derive(Debug)]
pub struct CheckRow {
    pub depth: usize,
    pub holds: bool,
    pub condition: String,
    pub detail: String,
}

/// One rule's verdict.
#[derive(Debug)]
pub struct TraceView {
    pub rule: String,
    pub origin: String,
    pub outcome: &'static str,
    pub matched: bool,
    pub actions: String,
    pub checks: Vec<CheckRow>,
}

/// An explanation, as the templates show it.
#[derive(Debug)]
pub struct ExplainView {
    pub summary: String,
    pub note: Option<String>,
    pub rules: Vec<TraceView>,
}

fn flatten(checks: &[Check], depth: usize, out: &mut Vec<CheckRow>) {
    for c in checks {
        out.push(CheckRow {
            depth,
            holds: c.holds,
            condition: c.condition.clone(),
            detail: c.detail.clone(),
        });
        flatten(&c.checks, depth + 1, out);
    }
}

impl From<&Explanation> for ExplainView {
    fn from(x: &Explanation) -> ExplainView {
        let rules = x.rules.iter().map(|t| {
            let mut checks = Vec::new();
            flatten(&t.checks, 0, &mut checks);
            let outcome = match t.outcome {
                RuleOutcome::Matched => "matched",
                RuleOutcome::NotMatched => "not matched",
                RuleOutcome::Disabled => "disabled",
                RuleOutcome::NotEvaluated => "not evaluated",
            };
            TraceView {
                rule: t.rule.clone(),
                origin: t.origin.clone(),
                outcome,
                matched: t.outcome == RuleOutcome::Matched,
                actions: t.actions.join("; "),
                checks,
            }
        });
        ExplainView {
            summary: x.plan.summary(),
            note: None,
            rules: rules.collect(),
        }
    }
}

/// One bar of the activity chart.
#[derive(Debug)]
pub struct Bar {
    pub class: &'static str,
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
    pub title: String,
}

/// The activity chart: per hour, three bars (received, calls, failed) scaled to the tallest.
#[derive(Debug)]
pub struct Chart {
    pub width: u32,
    pub height: u32,
    pub max: u64,
    pub bars: Vec<Bar>,
}

/// The chart of `hours` buckets of an hour ending with the current one.
pub fn chart(activity: &[Activity], first_hour_ms: i64, hours: u32) -> Chart {
    const SLOT: u32 = 24;
    const HEIGHT: u32 = 120;
    let max = activity
        .iter()
        .map(|a| a.received.max(a.calls))
        .max()
        .unwrap_or(0)
        .max(1);
    let scale = |n: u64| u32::try_from(n * u64::from(HEIGHT) / max).unwrap_or(HEIGHT);
    let mut bars = Vec::new();
    for a in activity {
        let slot = u32::try_from((a.start - first_hour_ms) / 3_600_000).unwrap_or(u32::MAX);
        if slot >= hours {
            continue;
        }
        let hour = when_ms(a.start);
        let series = [
            ("received", a.received, "webhooks"),
            ("calls", a.calls, "calls"),
            ("failed", a.failed, "dead letters"),
        ];
        for (i, (class, n, what)) in series.into_iter().enumerate() {
            let height = scale(n).max(u32::from(n > 0));
            bars.push(Bar {
                class,
                x: slot * SLOT + 2 + 7 * u32::try_from(i).unwrap_or(0),
                y: HEIGHT - height,
                width: 6,
                height,
                title: format!("{hour}: {n} {what}"),
            });
        }
    }
    Chart {
        width: hours * SLOT,
        height: HEIGHT,
        max,
        bars,
    }
}

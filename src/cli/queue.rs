//! Operator commands on the store: `events`, `replay`, `why` and `erase`. They work on the same
//! database as a running service, which picks replayed events up within its poll interval.

use std::io::{self, Write};
use std::time::{Duration, UNIX_EPOCH};

use crate::model::ids::{ContactId, LocationId, UserId};
use crate::model::record::Decision;
use crate::store::{EventFilter, EventSummary, Owned, Store, StoreError};

fn time(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn decision_line(d: &Decision) -> String {
    let mut parts = vec![format!("attempt {}: {}", d.attempt, d.outcome)];
    if !d.matched.is_empty() {
        parts.push(format!("rules {}", d.matched.join(", ")));
    }
    parts.push(d.plan.summary());
    if let Some(e) = &d.error {
        parts.push(format!("error: {e}"));
    }
    parts.join("; ")
}

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// An argument that does not select anything (the message says why).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// `autofollow events`: one line per event, newest first.
pub async fn events(
    store: &dyn Store,
    filter: &EventFilter,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), OpsError> {
    let events = store.list_events(filter).await?;
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&events).map_err(io::Error::other)?
        )?;
        return Ok(());
    }
    if events.is_empty() {
        writeln!(out, "no events")?;
    }
    for e in &events {
        writeln!(out, "{}", summary_line(e))?;
        if let Some(d) = &e.last_decision {
            writeln!(out, "    {}", decision_line(d))?;
        }
    }
    Ok(())
}

fn summary_line(e: &EventSummary) -> String {
    let r = &e.event;
    format!(
        "#{} {} {} location {} contact {}: {} after {} attempt{}",
        r.id,
        time(e.received_at),
        r.event_type,
        r.location_id,
        r.contact_id,
        r.status.as_str(),
        r.attempts,
        if r.attempts == 1 { "" } else { "s" }
    )
}

/// `autofollow replay`: puts the given events (or those the filter selects) back in the queue.
pub async fn replay(
    store: &dyn Store,
    ids: &[i64],
    filter: Option<&EventFilter>,
    out: &mut dyn Write,
) -> Result<u64, OpsError> {
    let mut ids = ids.to_vec();
    if let Some(filter) = filter {
        ids.extend(store.list_events(filter).await?.iter().map(|e| e.event.id));
    }
    let queued = store.replay(&ids).await?;
    writeln!(
        out,
        "queued {queued} event{} for processing",
        if queued == 1 { "" } else { "s" }
    )?;
    Ok(queued)
}

/// `autofollow erase CONTACT_ID`: deletes what is stored about the contact.
pub async fn erase(
    store: &dyn Store,
    contact: &ContactId,
    out: &mut dyn Write,
) -> Result<(), OpsError> {
    let erased = store.erase_contact(contact).await?;
    writeln!(
        out,
        "erased contact {contact}: {}, {}, {}",
        counted(erased.events, "event"),
        counted(erased.decisions, "decision"),
        counted(erased.states, "state row"),
    )?;
    Ok(())
}

/// `1 event`, `2 events`.
fn counted(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// `autofollow why CONTACT_ID`: every event of the contact and every decision, oldest first.
pub async fn why(
    store: &dyn Store,
    contact: &ContactId,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), OpsError> {
    let history = store.history(contact).await?;
    if json {
        let v: Vec<_> = history
            .iter()
            .map(|(e, d)| serde_json::json!({"event": e, "decisions": d}))
            .collect();
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&v).map_err(io::Error::other)?
        )?;
        return Ok(());
    }
    if history.is_empty() {
        writeln!(out, "no events for contact {contact}")?;
    }
    for (e, decisions) in &history {
        writeln!(out, "{}", summary_line(e))?;
        for d in decisions {
            writeln!(out, "    {}", decision_line(d))?;
            for c in &d.calls {
                let users: Vec<&str> = c.users.iter().map(|u| u.as_str()).collect();
                let status = c.status.map_or_else(|| "-".to_owned(), |s| s.to_string());
                writeln!(
                    out,
                    "      {} {} {:?} -> {status} {}",
                    c.method, c.path, users, c.outcome
                )?;
            }
        }
    }
    let mut locations: Vec<&str> = history
        .iter()
        .map(|(e, _)| e.event.location_id.as_str())
        .collect();
    locations.sort_unstable();
    locations.dedup();
    for location in locations
        .into_iter()
        .filter_map(|l| LocationId::parse(l).ok())
    {
        let owned = store.owned(&location, contact, false).await?;
        write_owned(out, &location, &owned)?;
    }
    Ok(())
}

/// Who follows the contact because of autofollow, and which rules keep each of them.
fn write_owned(out: &mut dyn Write, location: &LocationId, owned: &[Owned]) -> io::Result<()> {
    if owned.is_empty() {
        return Ok(());
    }
    writeln!(out, "followers autofollow keeps in location {location}:")?;
    let mut users: Vec<&UserId> = owned.iter().map(|o| &o.user).collect();
    users.dedup();
    for user in users {
        let why: Vec<String> = owned
            .iter()
            .filter(|o| &o.user == user)
            .map(|o| {
                format!(
                    "rule {} ({}, since event {})",
                    o.rule,
                    o.follow.as_str(),
                    o.event_id
                )
            })
            .collect();
        writeln!(out, "    {user}: {}", why.join("; "))?;
    }
    Ok(())
}

/// `autofollow simulate`: the stored webhooks since `since` replayed through the current and
/// the candidate rules; the difference, as text or JSON.
pub async fn simulate(
    store: &dyn Store,
    sets: [&crate::rules::RuleSet; 2],
    since: (&str, i64),
    location: Option<&crate::model::ids::LocationId>,
    resolver: &(dyn crate::rules::Resolver + Sync),
    json: bool,
    out: &mut dyn Write,
) -> Result<(), OpsError> {
    let sim =
        crate::worker::simulate::simulate(store, sets[0], sets[1], since.1, location, resolver)
            .await?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &sim).map_err(io::Error::from)?;
        writeln!(out)?;
        return Ok(());
    }
    let short = |v: &str| v.get(..12).unwrap_or(v).to_owned();
    writeln!(
        out,
        "simulate since {}: {} webhooks about {} contacts; {} would change (current {}, candidate {})",
        since.0,
        sim.events,
        sim.contacts,
        sim.changed,
        short(&sim.current_version),
        short(&sim.candidate_version)
    )?;
    for t in &sim.summary {
        writeln!(out, "  rule {}: {} +{} -{}", t.rule, t.user, t.gain, t.lose)?;
    }
    for s in &sim.samples {
        writeln!(
            out,
            "\ncontact {} (location {}), event {} {}:",
            s.contact, s.location, s.event_id, s.event_type
        )?;
        writeln!(out, "  current:   {}", s.current)?;
        writeln!(out, "  candidate: {}", s.candidate)?;
        for line in &s.explanation {
            writeln!(out, "  {line}")?;
        }
    }
    Ok(())
}

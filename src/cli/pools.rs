//! `autofollow pools` and `autofollow away`: what the rules' pools are and have handed out,
//! and away periods set without editing rule files.

use std::io::Write;
use std::path::Path;

use super::queue::OpsError;
use crate::model::ids::UserId;
use crate::rules::RuleSet;
use crate::store::{AwayPeriod, Store};

fn rules(path: &Path) -> Result<RuleSet, OpsError> {
    RuleSet::load(path).map_err(|e| OpsError::Invalid(format!("{}: {e}", path.display())))
}

/// `autofollow away USER --from DATE --to DATE` (inclusive), or `--clear`.
pub async fn away(
    store: &dyn Store,
    rules_path: &Path,
    (name, from, to, clear): (&str, Option<&str>, Option<&str>, bool),
    out: &mut dyn Write,
) -> Result<(), OpsError> {
    let user = rules(rules_path)?
        .user_named(name)
        .map_err(OpsError::Invalid)?;
    if clear {
        let gone = store.clear_away(&user).await?;
        writeln!(out, "{name}: {gone} away period(s) cleared")?;
        return Ok(());
    }
    let (Some(from), Some(to)) = (from, to) else {
        return Err(OpsError::Invalid(
            "name the period with --from DATE --to DATE (or --clear)".into(),
        ));
    };
    let invalid = |e: String| OpsError::Invalid(format!("--{e}"));
    let period = AwayPeriod::parse(user, from, to).map_err(invalid)?;
    store.set_away(&period).await?;
    let (from, to) = (period.from, period.to);
    writeln!(
        out,
        "{name}: away from {from} to {to} (inclusive); pools skip them on those days"
    )?;
    Ok(())
}

/// `autofollow pools`: each pool's members and weights, who is away (in the rule files and
/// set with `autofollow away`), the fallback, and the turns each location handed out.
pub async fn pools(
    store: &dyn Store,
    rules_path: &Path,
    out: &mut dyn Write,
) -> Result<(), OpsError> {
    let rules = rules(rules_path)?;
    let (set, turns) = (store.away_periods().await?, store.pool_turns().await?);
    if rules.pools().is_empty() {
        writeln!(out, "no pools in {}", rules_path.display())?;
    }
    for (name, pool) in rules.pools() {
        writeln!(out, "pool {name} ({})", pool.origin)?;
        let named = |id: &UserId| {
            let member = pool.members.iter().find(|(_, m, _)| m == id);
            member.map_or(id.to_string(), |(n, ..)| n.clone())
        };
        let members: Vec<String> = pool
            .members
            .iter()
            .map(|(n, id, w)| format!("{n} ({id}) weight {w}"))
            .collect();
        writeln!(out, "  members: {}", members.join(", "))?;
        for (id, from, to) in &pool.away {
            writeln!(out, "  away: {} {from} to {to} (rule file)", named(id))?;
        }
        for p in set.iter().filter(|p| pool.has(&p.user)) {
            writeln!(
                out,
                "  away: {} {} to {} (autofollow away)",
                named(&p.user),
                p.from,
                p.to
            )?;
        }
        if let Some((fallback, _)) = &pool.fallback {
            writeln!(out, "  fallback: {fallback}")?;
        }
        let mut handed = turns.iter().filter(|t| t.pool == *name).peekable();
        if handed.peek().is_none() {
            writeln!(out, "  turns: none yet")?;
        }
        for t in handed {
            writeln!(
                out,
                "  turns in {}: {} {}",
                t.location,
                named(&t.user),
                t.handed
            )?;
        }
    }
    Ok(())
}

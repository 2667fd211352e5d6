//! Maintenance work on one contact's followers that autofollow queues itself (`reapply`,
//! `undo`), beside the webhooks in the contact's queue: it runs in the contact's order, under
//! the same leases, budget, retries and records as a webhook, and its change is worked out
//! when it runs, on the state the contact's earlier events left.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::ids::{ContactId, LocationId};

/// What a queued task does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum Task {
    /// Bring the contact's followers to what the rules of `rules_version` want now, against
    /// the ownership ledger. Skipped when the service runs another rule-set version.
    Reapply {
        #[serde(rename = "rulesVersion")]
        rules_version: String,
    },
    /// The inverse of what autofollow did within `scope`, from the ownership ledger.
    Undo { scope: UndoScope },
    /// Bring the followers to what the rules want for `record`, a contact or an
    /// opportunity as GoHighLevel's search just returned it, shaped as an app webhook body
    /// (`ContactUpdate`, `OpportunityUpdate`) and evaluated as it stands.
    Backfill { record: serde_json::Value },
    /// Drift repair: read the contact's followers from GoHighLevel, take note of the ones
    /// autofollow added that people removed, and bring the rest to what the rules want.
    Reconcile,
}

/// Which of autofollow's changes an undo reverses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UndoScope {
    /// Every follower the rule added that it still keeps.
    Rule(String),
    /// What the event's decision did: the followers it added, those it removed.
    Event(i64),
    /// What autofollow did since this moment (unix milliseconds).
    Since(i64),
}

impl UndoScope {
    /// `--since`: see [`since_ms`].
    pub fn since(text: &str) -> Result<UndoScope, String> {
        since_ms(text).map(UndoScope::Since)
    }

    /// `rule vip`, `event 42`, `since 2026-12-01T00:00:00Z`.
    pub fn describe(&self) -> String {
        match self {
            UndoScope::Rule(rule) => format!("rule {rule}"),
            UndoScope::Event(id) => format!("event {id}"),
            UndoScope::Since(ms) => {
                let at = SystemTime::UNIX_EPOCH
                    + std::time::Duration::from_millis(u64::try_from(*ms).unwrap_or(0));
                format!("since {}", humantime::format_rfc3339_seconds(at))
            }
        }
    }
}

/// A moment an operator names (`--since`): a duration back from now (`2h`, `7d`), an RFC
/// 3339 time (`2026-12-01T09:00:00Z`), or a date (`2026-12-01`, from midnight UTC); unix ms.
pub fn since_ms(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let at = match humantime::parse_duration(text) {
        Ok(ago) => SystemTime::now().checked_sub(ago),
        Err(_) => {
            let full = match text.len() {
                10 => format!("{text}T00:00:00Z"),
                _ => text.to_owned(),
            };
            humantime::parse_rfc3339_weak(&full).ok()
        }
    };
    let at = at.ok_or_else(|| {
        format!("`{text}` is not a duration (2h, 7d), a time (2026-12-01T09:00:00Z) or a date (2026-12-01)")
    })?;
    let ms = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| format!("`{text}` is before 1970"))?
        .as_millis();
    Ok(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// A task as it is stored in the contact's queue (the `body` of an event of kind `task`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskBody {
    #[serde(flatten)]
    pub task: Task,
    #[serde(rename = "locationId")]
    pub location_id: LocationId,
    #[serde(rename = "contactId")]
    pub contact_id: ContactId,
}

impl TaskBody {
    /// The event type it is listed under: `Reapply`, `Undo`, `Backfill` or `Reconcile`.
    pub fn event_type(&self) -> &'static str {
        match self.task {
            Task::Reapply { .. } => "Reapply",
            Task::Undo { .. } => "Undo",
            Task::Backfill { .. } => "Backfill",
            Task::Reconcile => "Reconcile",
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn parse(body: &str) -> Result<TaskBody, String> {
        serde_json::from_str(body).map_err(|e| format!("not a task: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_reads_back_as_written() {
        for task in [
            Task::Reapply {
                rules_version: "abc".into(),
            },
            Task::Undo {
                scope: UndoScope::Rule("vip".into()),
            },
            Task::Undo {
                scope: UndoScope::Event(7),
            },
            Task::Undo {
                scope: UndoScope::Since(1_700_000_000_000),
            },
            Task::Backfill {
                record: serde_json::json!({"type": "ContactUpdate", "id": "c1", "tags": ["vip"]}),
            },
            Task::Reconcile,
        ] {
            let body = TaskBody {
                task,
                location_id: LocationId::parse("loc1").unwrap(),
                contact_id: ContactId::parse("c1").unwrap(),
            };
            assert_eq!(TaskBody::parse(&body.to_json()), Ok(body));
        }
        assert!(TaskBody::parse(r#"{"task":"other"}"#).is_err());
    }

    #[test]
    fn since_takes_a_duration_a_time_or_a_date() {
        let day = UndoScope::since("2026-12-01");
        assert_eq!(day, Ok(UndoScope::Since(1_796_083_200_000)));
        assert_eq!(UndoScope::since("2026-12-01T00:00:00Z"), day);
        let Ok(UndoScope::Since(ago)) = UndoScope::since("2h") else {
            panic!("a duration");
        };
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        assert!((now - ago - 7_200_000).abs() < 60_000);
        let bad = UndoScope::since("yesterday").unwrap_err();
        assert!(bad.contains("2026-12-01"), "{bad}");
    }
}

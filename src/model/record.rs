//! The record of processing: an event's status, and what each attempt decided and did.

use serde::{Deserialize, Serialize};

use super::ids::UserId;
use super::plan::Plan;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    Pending,
    Done,
    Failed,
    /// Nothing to do after all: the contact no longer exists in GoHighLevel.
    Skipped,
}

impl EventStatus {
    pub const ALL: [EventStatus; 4] = [
        EventStatus::Pending,
        EventStatus::Done,
        EventStatus::Failed,
        EventStatus::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Pending => "pending",
            EventStatus::Done => "done",
            EventStatus::Failed => "failed",
            EventStatus::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> EventStatus {
        match s {
            "done" => EventStatus::Done,
            "failed" => EventStatus::Failed,
            "skipped" => EventStatus::Skipped,
            _ => EventStatus::Pending,
        }
    }
}

impl std::str::FromStr for EventStatus {
    type Err = String;

    fn from_str(name: &str) -> Result<EventStatus, String> {
        EventStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == name.trim())
            .ok_or_else(|| format!("`{name}` is not a status: pending, done, failed or skipped"))
    }
}

/// What one processing attempt decided and did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub attempt: u32,
    pub matched: Vec<String>,
    pub plan: Plan,
    pub calls: Vec<CallRecord>,
    /// `done`, `failed`, `skipped` or `retry`.
    pub outcome: String,
    pub error: Option<String>,
    pub dry_run: bool,
    /// When several events of the contact were processed together: all their ids. The calls
    /// recorded carried their combined plan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batch: Vec<i64>,
    /// [`crate::rules::RuleSet::version`] of the rules that decided.
    #[serde(default)]
    pub rules_version: String,
}

/// What one followers call did, for the decision record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    pub method: String,
    pub path: String,
    pub users: Vec<UserId>,
    /// HTTP status, or `None` when no answer came (or in dry-run).
    pub status: Option<u16>,
    /// `ok`, `dry-run`, or the error.
    pub outcome: String,
}

//! The record of processing: an event's status, and what each attempt decided and did.

use serde::{Deserialize, Serialize};

use super::ids::UserId;
use super::plan::Plan;

/// Where an event stands in the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    /// Waiting to be processed (new, settling, or to be retried).
    Pending,
    /// Waiting for its location's token to work again (a new token, or a replay).
    Parked,
    Done,
    Failed,
    /// Nothing to do after all: the contact no longer exists in GoHighLevel (or was deleted),
    /// or the app was uninstalled from its location.
    Skipped,
}

impl EventStatus {
    pub const ALL: [EventStatus; 5] = [
        EventStatus::Pending,
        EventStatus::Parked,
        EventStatus::Done,
        EventStatus::Failed,
        EventStatus::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Pending => "pending",
            EventStatus::Parked => "parked",
            EventStatus::Done => "done",
            EventStatus::Failed => "failed",
            EventStatus::Skipped => "skipped",
        }
    }

    /// A stored status (an unknown one reads as pending, which the worker then decides).
    pub fn parse(s: &str) -> EventStatus {
        s.parse().unwrap_or(EventStatus::Pending)
    }

    /// Whether the event is finished (nothing more will be done unless it is replayed).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            EventStatus::Done | EventStatus::Failed | EventStatus::Skipped
        )
    }
}

impl std::str::FromStr for EventStatus {
    type Err = String;

    fn from_str(name: &str) -> Result<EventStatus, String> {
        EventStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == name.trim())
            .ok_or_else(|| {
                format!("`{name}` is not a status: pending, parked, done, failed or skipped")
            })
    }
}

/// How one processing attempt ended: the decision record's `outcome`. It sets the event's
/// [`EventStatus`] ([`Outcome::status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Done,
    Failed,
    /// Nothing is called: the contact no longer exists in GoHighLevel (or was deleted), or
    /// the app was uninstalled from its location.
    Skipped,
    /// Failed for now; tried again later.
    Retry,
    /// GoHighLevel refused the location's token; waits for a new one (recorded as `waiting`
    /// before the status existed).
    #[serde(alias = "waiting")]
    Parked,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
            Outcome::Retry => "retry",
            Outcome::Parked => "parked",
        }
    }

    /// A stored outcome; `waiting` is the name parked had before.
    pub fn parse(s: &str) -> Option<Outcome> {
        match s {
            "done" => Some(Outcome::Done),
            "failed" => Some(Outcome::Failed),
            "skipped" => Some(Outcome::Skipped),
            "retry" => Some(Outcome::Retry),
            "parked" | "waiting" => Some(Outcome::Parked),
            _ => None,
        }
    }

    /// The status the attempt leaves the event in.
    pub fn status(self) -> EventStatus {
        match self {
            Outcome::Done => EventStatus::Done,
            Outcome::Failed => EventStatus::Failed,
            Outcome::Skipped => EventStatus::Skipped,
            Outcome::Retry => EventStatus::Pending,
            Outcome::Parked => EventStatus::Parked,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one processing attempt decided and did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub attempt: u32,
    pub matched: Vec<String>,
    pub plan: Plan,
    pub calls: Vec<CallRecord>,
    pub outcome: Outcome,
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

impl Decision {
    /// A decision of attempt `attempt` that decided nothing (yet).
    pub fn empty(attempt: u32, outcome: Outcome, dry_run: bool) -> Decision {
        Decision {
            attempt,
            matched: Vec::new(),
            plan: Plan::default(),
            calls: Vec::new(),
            outcome,
            error: None,
            dry_run,
            batch: Vec::new(),
            rules_version: String::new(),
        }
    }
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
    /// Who GoHighLevel says the call added (`followersAdded`) or removed
    /// (`followersRemoved`), when it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<Vec<UserId>>,
}

//! What keeps unauthenticated requests cheap, shared by the intake handlers: the budget of
//! body bytes being received at once, and the count of rejections summed up in the log.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::Semaphore;

/// The most body bytes being received at once, over every webhook request: thousands of
/// GoHighLevel's usual few-kilobyte bodies. A request whose declared length (or, without one,
/// [`MAX_BODY`](super::intake::MAX_BODY)) does not fit is answered 429 before its body is read. Bodies over
/// [`LARGE_BODY`] may hold only half of it, so slow large bodies cannot crowd out the usual
/// small webhooks.
pub const BODY_BUDGET: usize = 16 * 1024 * 1024;
/// Bodies declaring more than this (or no length) count as large for [`BODY_BUDGET`].
pub const LARGE_BODY: usize = 64 * 1024;
/// The bytes of [`BODY_BUDGET`]: all of it, and the half large bodies may use.
#[derive(Debug)]
pub struct BodyBudget {
    all: Semaphore,
    large: Semaphore,
}

impl Default for BodyBudget {
    fn default() -> BodyBudget {
        BodyBudget {
            all: Semaphore::new(BODY_BUDGET),
            large: Semaphore::new(BODY_BUDGET / 2),
        }
    }
}

impl BodyBudget {
    /// A share of `bytes` now, or `None` when it is not free.
    pub fn reserve(&self, bytes: usize) -> Option<Vec<tokio::sync::SemaphorePermit<'_>>> {
        let n = u32::try_from(bytes).ok()?;
        let mut held = Vec::with_capacity(2);
        if bytes > LARGE_BODY {
            held.push(self.large.try_acquire_many(n).ok()?);
        }
        held.push(self.all.try_acquire_many(n).ok()?);
        Some(held)
    }
}

/// Rejected webhooks by answer and reason, summed up in one warning per interval instead of
/// a line each (a flood of bad requests must not flood the log).
#[derive(Debug, Default)]
pub struct Rejections(std::sync::Mutex<BTreeMap<(&'static str, &'static str), u64>>);

impl Rejections {
    pub fn add(&self, answer: &'static str, reason: &'static str) {
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *counts.entry((answer, reason)).or_default() += 1;
    }

    /// The counts since the last call, and zero from now on.
    pub fn take(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Writes the summary warning, when anything was rejected since the last one.
    pub fn log_summary(&self, over: Duration) {
        let counts = self.take();
        let total: u64 = counts.values().sum();
        if total == 0 {
            return;
        }
        let by_reason: Vec<String> = counts
            .iter()
            .map(|((answer, reason), n)| format!("{n} {answer}: {reason}"))
            .collect();
        tracing::warn!(
            rejected = total,
            over = %humantime::format_duration(over),
            by_reason = %by_reason.join("; "),
            "webhooks rejected"
        );
    }
}

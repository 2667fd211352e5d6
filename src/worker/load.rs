//! Phase 1, load: a claimed group (the contact's due events and what is known of it) taken
//! into this worker's hand, their bodies parsed.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::Worker;
use crate::model::event::{self, BodyKind, Event, Parsed};
use crate::model::ids::LocationId;
use crate::model::task::TaskBody;
use crate::store::{Claimed, ClaimedGroup, ContactSnapshot};

/// The events of one contact processed together, oldest first, and what was known of the
/// contact when they were claimed; they leave this worker's hand when it is dropped.
pub(super) struct Group {
    pub claimed: Vec<Claimed>,
    pub contact: ContactSnapshot,
    pub held: Held,
    _hand: InHand,
}

/// When this worker last knew it held a group's leases: asked for them (a claim) or renewed
/// them. Until half a lease has passed since then, no other worker can have taken them, so
/// a call needs no round trip to the store to check first.
#[derive(Debug)]
pub(super) struct Held(Mutex<Instant>);

impl Held {
    /// Leases asked for (or renewed) at `at`.
    pub(super) fn since(at: Instant) -> Held {
        Held(Mutex::new(at))
    }

    pub(super) fn renewed(&self, at: Instant) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = at;
    }

    /// Whether the leases, of length `lease`, are surely still this worker's.
    pub(super) fn surely(&self, lease: Duration) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
            < lease / 2
    }
}

/// The events a worker's tasks hold, and a signal each time some are let go.
#[derive(Debug, Default)]
pub(super) struct Hands {
    held: Mutex<HashSet<i64>>,
    let_go: tokio::sync::Notify,
}

/// Events taken into a worker's hand; let go when dropped. Leases carry the worker's name,
/// so a claim can hand a worker back an event whose lease lapsed while one of its own tasks
/// still works on it (stalled): it is not processed twice.
pub(super) struct InHand {
    hands: Arc<Hands>,
    ids: Vec<i64>,
}

/// How long a claim waits for one of this worker's own tasks to let an event go.
const LET_GO_WAIT: Duration = Duration::from_secs(1);

impl InHand {
    pub(super) fn new(hands: &Arc<Hands>) -> InHand {
        InHand {
            hands: Arc::clone(hands),
            ids: Vec::new(),
        }
    }

    /// Takes the ids not in hand yet; returns which were taken.
    pub(super) fn take(&mut self, ids: &[i64]) -> Vec<i64> {
        let mut held = self
            .hands
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let taken: Vec<i64> = ids.iter().copied().filter(|id| held.insert(*id)).collect();
        self.ids.extend(&taken);
        taken
    }

    /// Takes `id`, waiting a moment while another task of this worker still holds it. The
    /// claim found the event free, so that task has recorded its outcome (a retry) and is about
    /// to let go; giving up at once would leave the new lease to run out before anyone works
    /// on the event (found as a 60 s stall in tests). A task that stalled holds on: then the
    /// event is left to it (its lease carries the same name).
    pub(super) async fn take_soon(&mut self, id: i64) -> bool {
        let deadline = tokio::time::Instant::now() + LET_GO_WAIT;
        let hands = Arc::clone(&self.hands);
        loop {
            // Listening before looking: a let-go in between is not missed.
            let let_go = hands.let_go.notified();
            tokio::pin!(let_go);
            let_go.as_mut().enable();
            if !self.take(&[id]).is_empty() {
                return true;
            }
            if tokio::time::timeout_at(deadline, let_go).await.is_err() {
                return false;
            }
        }
    }
}

impl Drop for InHand {
    fn drop(&mut self) {
        let mut held = self
            .hands
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for id in &self.ids {
            held.remove(id);
        }
        drop(held);
        self.hands.let_go.notify_waiters();
    }
}

/// One step of a group, read back from its stored body: a webhook's event, or a task
/// autofollow queued.
pub(super) enum Step {
    Event(Box<Event>),
    Task(TaskBody),
}

impl Step {
    pub(super) fn location(&self) -> &LocationId {
        match self {
            Step::Event(e) => &e.location_id,
            Step::Task(t) => &t.location_id,
        }
    }

    pub(super) fn event(&self) -> Option<&Event> {
        match self {
            Step::Event(e) => Some(e),
            Step::Task(_) => None,
        }
    }
}

/// The group's steps that parsed, by their index in the group, and those that no longer do,
/// with why.
pub(super) struct Bodies {
    pub steps: Vec<(usize, Step)>,
    pub unreadable: Vec<(usize, String)>,
}

impl Worker {
    /// The claimed group, in this worker's hand: its first event and the consecutive run of
    /// later ones not held by another of this worker's tasks; `None` when a task of this
    /// worker has the first. `asked`: when the claim was asked for.
    pub(super) async fn load(&self, group: ClaimedGroup, asked: Instant) -> Option<Group> {
        let mut hand = InHand::new(&self.in_hand);
        let mut claimed = Vec::with_capacity(group.events.len());
        for event in group.events {
            if !hand.take_soon(event.id).await {
                break;
            }
            claimed.push(event);
        }
        if claimed.is_empty() {
            return None;
        }
        Some(Group {
            claimed,
            contact: group.contact,
            held: Held::since(asked),
            _hand: hand,
        })
    }
}

/// Parses each stored body again, with the parser of its kind.
pub(super) fn parse(group: &[Claimed]) -> Bodies {
    let mut parsed = Bodies {
        steps: Vec::new(),
        unreadable: Vec::new(),
    };
    for (i, claimed) in group.iter().enumerate() {
        if claimed.kind == BodyKind::Task {
            match TaskBody::parse(&claimed.body) {
                Ok(task) => parsed.steps.push((i, Step::Task(task))),
                Err(e) => parsed
                    .unreadable
                    .push((i, format!("stored task no longer parses: {e}"))),
            }
            continue;
        }
        match event::parse(claimed.kind, claimed.body.as_bytes()) {
            Ok(Parsed::Event(e)) => parsed.steps.push((i, Step::Event(e))),
            Ok(other) => parsed.unreadable.push((
                i,
                format!(
                    "stored event type {} is not supported",
                    other.other_type().unwrap_or_default()
                ),
            )),
            Err(e) => parsed
                .unreadable
                .push((i, format!("stored body no longer parses: {e}"))),
        }
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_in_hand_is_not_taken_twice_until_let_go() {
        let set: Arc<Hands> = Arc::default();
        let mut first = InHand::new(&set);
        assert_eq!(first.take(&[1, 2]), vec![1, 2]);
        let mut second = InHand::new(&set);
        assert_eq!(second.take(&[2, 3]), vec![3], "2 is in the first hand");
        drop(first);
        assert_eq!(
            second.take(&[1, 2]),
            vec![1, 2],
            "let go with the first hand"
        );
        drop(second);
        assert!(
            set.held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
        );
    }

    /// A call checks the lease with the store only once half of it has passed since it was
    /// last known held (asked for or renewed).
    #[test]
    fn a_lease_is_surely_held_for_half_its_length() {
        let lease = Duration::from_secs(60);
        let held = Held::since(Instant::now() - Duration::from_secs(29));
        assert!(held.surely(lease));
        let held = Held::since(Instant::now() - Duration::from_secs(31));
        assert!(!held.surely(lease));
        held.renewed(Instant::now());
        assert!(held.surely(lease));
    }

    /// A claim can find an event free while the task that just recorded its retry still has
    /// it in hand: the claim waits for that task to let go instead of giving up (and leaving
    /// its fresh lease to run out first); a task that keeps it keeps it.
    #[tokio::test(start_paused = true)]
    async fn a_claim_waits_a_moment_for_its_own_task_to_let_go() {
        let set: Arc<Hands> = Arc::default();
        let mut recording = InHand::new(&set);
        recording.take(&[7]);
        let letting_go = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            drop(recording);
        });
        let mut claim = InHand::new(&set);
        assert!(claim.take_soon(7).await, "taken once let go");
        letting_go.await.ok();
        let mut stalled = InHand::new(&set);
        stalled.take(&[8]);
        let mut other = InHand::new(&set);
        assert!(!other.take_soon(8).await, "a task that holds on keeps it");
    }
}

//! Dealing pools: which member a matched pool rule adds for a contact.
//!
//! The sequence is smooth weighted round robin ([`smooth_pick`]). The service keeps it in the
//! store, shared by replicas (`Pools::take_turn`); a [`Dealer`] keeps one in memory for what
//! must count nothing: previews, dry runs, simulation, rule tests and explanations. Both deal
//! the same way: a contact keeps the member it was dealt while that member is here, and the
//! members away on the day are left out before the turn.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::NaiveDate;

use super::{Evaluation, Pool};
use crate::model::ids::{ContactId, LocationId, UserId};
use crate::model::plan::Plan;

/// A member of a pool as a turn is dealt: its user and weight.
pub type PoolMember = (UserId, u32);

/// A period a user is away, inclusive: (user, from, to).
pub type Away = (UserId, NaiveDate, NaiveDate);

/// Smooth weighted round robin (as nginx balances upstreams): every member's current
/// weight grows by its weight, the largest (the first of equals, in `members` order) is
/// picked and loses the sum of the weights. Over any `sum` turns in a row each member gets
/// exactly its weight's share, spread out (2:1 gives a, b, a, a, b, a, …). `current` holds
/// each member's current weight (0 for a new one), updated; returns the pick's index.
pub fn smooth_pick(members: &[PoolMember], current: &mut [i64]) -> Option<usize> {
    let total: i64 = members.iter().map(|(_, w)| i64::from(*w)).sum();
    let mut best: Option<usize> = None;
    for (i, (_, weight)) in members.iter().enumerate() {
        current[i] += i64::from(*weight);
        if best.is_none_or(|b| current[i] > current[b]) {
            best = Some(i);
        }
    }
    let pick = best?;
    current[pick] -= total;
    Some(pick)
}

/// Where a pool's sequence stands in a location, as the store keeps it: the member a contact
/// was dealt, and each member's current weight (a [`Dealer`] starts from it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolState {
    pub pick: Option<UserId>,
    pub current: Vec<(UserId, i64)>,
}

/// A pool a matched rule deals one member of, with the members here to be dealt.
#[derive(Clone, Debug)]
pub struct Hand {
    pub rule: String,
    pub pool: Arc<Pool>,
    /// The members not away on the day, with their weights, in file order.
    pub here: Vec<PoolMember>,
    /// The members away on the day, as written.
    away: Vec<String>,
}

impl Evaluation {
    /// The pools this evaluation's matched rules deal from (its picks, taken), each with the
    /// members away on `today` left out: by the file's periods and `more` (set at run time).
    pub fn hands(&mut self, today: NaiveDate, more: &[Away]) -> Vec<Hand> {
        let picks = std::mem::take(&mut self.picks);
        picks
            .into_iter()
            .map(|(rule, pool)| {
                let (away, here): (Vec<_>, Vec<_>) =
                    (pool.members.iter()).partition(|(_, id, _)| pool.away_on(id, today, more));
                Hand {
                    rule,
                    here: here.iter().map(|(_, id, w)| (id.clone(), *w)).collect(),
                    away: away.iter().map(|(name, ..)| name.clone()).collect(),
                    pool,
                }
            })
            .collect()
    }

    /// Adds the member `hand` was dealt (`turn`), else the pool's fallback: its label, which
    /// says how (`alice (pool sales: turn; bob away)`); the pool's name when it had nobody.
    pub fn give(&mut self, hand: Hand, turn: Option<UserId>) -> Result<String, String> {
        let fallback = hand.pool.fallback.as_ref().map(|(_, id)| id.clone());
        let (user, how) = match (turn, fallback) {
            (Some(user), _) => (user, "turn"),
            (None, Some(user)) => (user, "everyone away, fallback"),
            (None, None) => return Err(hand.pool.name.clone()),
        };
        let away: String = hand.away.iter().map(|n| format!("; {n} away")).collect();
        let label = format!("{user} (pool {}: {how}{away})", hand.pool.name);
        self.pick(&hand.rule, user, label.clone());
        Ok(label)
    }
}

/// Whether who is away among the members of these pools (`picks`) differs between `day`
/// and the days either side: every place's today is one of them, so only then does the time
/// zone matter.
pub fn day_matters(picks: &[(String, Arc<Pool>)], more: &[Away], day: NaiveDate) -> bool {
    let days: Vec<NaiveDate> = [day.pred_opt(), Some(day), day.succ_opt()]
        .into_iter()
        .flatten()
        .collect();
    picks.iter().any(|(_, pool)| {
        pool.members.iter().any(|(_, id, _)| {
            let away: Vec<bool> = days.iter().map(|d| pool.away_on(id, *d, more)).collect();
            away.windows(2).any(|w| w[0] != w[1])
        })
    })
}

/// The decision's note for the pools that had nobody to give, if any.
pub fn nobody_note(pools: &[String]) -> Option<String> {
    (!pools.is_empty()).then(|| {
        let pools = pools.join(", ");
        format!("nobody added from pool {pools}: every member is away and there is no fallback")
    })
}

/// The most contacts' members a [`Dealer`] remembers: a dry-run service's dealer lives as long
/// as the service, so its memory is bounded. Past it, the dealer forgets them all and goes on
/// (a contact dealt before may be dealt anew; only dry runs live that long).
pub const MAX_PICKS: usize = 100_000;

/// A pool sequence kept in memory: deals as the store does, counting nowhere else. Starts
/// empty (a fresh sequence) or where the store's stands ([`Dealer::seed`]).
#[derive(Debug, Default)]
pub struct Dealer {
    /// Per location and pool: each member's current weight.
    current: HashMap<(LocationId, String), HashMap<UserId, i64>>,
    /// Per location, pool and contact: the member dealt.
    picks: HashMap<(LocationId, String, ContactId), UserId>,
}

impl Dealer {
    /// Starts the pool's sequence in the location, and the contact's pick, where the store's
    /// stand, unless this dealer has its own already.
    pub fn seed(
        &mut self,
        (location, contact): (&LocationId, &ContactId),
        pool: &str,
        state: PoolState,
    ) {
        let key = (location.clone(), pool.to_owned());
        self.current
            .entry(key)
            .or_insert_with(|| state.current.into_iter().collect());
        let key = (location.clone(), pool.to_owned(), contact.clone());
        if let (Some(user), false) = (state.pick, self.picks.contains_key(&key)) {
            self.remember(key, user);
        }
    }

    /// Remembers a contact's member, within [`MAX_PICKS`].
    fn remember(&mut self, key: (LocationId, String, ContactId), user: UserId) {
        if self.picks.len() >= MAX_PICKS {
            self.picks.clear();
        }
        self.picks.insert(key, user);
    }

    /// What `Pools::take_turn` does, in memory: the contact's earlier pick while it is among
    /// `members`, else the pool's next turn, remembered for the contact.
    pub fn take(
        &mut self,
        (location, contact): (&LocationId, &ContactId),
        pool: &str,
        members: &[PoolMember],
    ) -> Option<UserId> {
        let key = (location.clone(), pool.to_owned(), contact.clone());
        if let Some(kept) = self
            .picks
            .get(&key)
            .filter(|u| members.iter().any(|(m, _)| m == *u))
        {
            return Some(kept.clone());
        }
        let weights = self
            .current
            .entry((key.0.clone(), key.1.clone()))
            .or_default();
        let mut current: Vec<i64> = members
            .iter()
            .map(|(u, _)| weights.get(u).copied().unwrap_or(0))
            .collect();
        let pick = smooth_pick(members, &mut current)?;
        for ((user, _), now) in members.iter().zip(current) {
            weights.insert(user.clone(), now);
        }
        let user = members[pick].0.clone();
        self.remember(key, user.clone());
        Some(user)
    }

    /// Deals every pool `evaluation` adds from, on `today` (with `more` away periods);
    /// the decision's note when a pool had nobody to give.
    pub fn deal(
        &mut self,
        evaluation: &mut Evaluation,
        at: (&LocationId, &ContactId),
        today: NaiveDate,
        more: &[Away],
    ) -> Option<String> {
        let mut nobody = Vec::new();
        for hand in evaluation.hands(today, more) {
            let turn = self.take(at, &hand.pool.name, &hand.here);
            nobody.extend(evaluation.give(hand, turn).err());
        }
        nobody_note(&nobody)
    }
}

/// What an explanation deals pools with: a sequence, the day, and the away periods set at
/// run time (the files' are the pools' own).
#[derive(Debug)]
pub struct Dealing {
    pub dealer: Dealer,
    pub today: NaiveDate,
    pub away: Vec<Away>,
}

impl Dealing {
    /// A fresh sequence on today's date in UTC, with the files' away periods only: where no
    /// store is at hand (`autofollow explain`, rule tests).
    pub fn fresh() -> Dealing {
        let now = chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now());
        Dealing {
            dealer: Dealer::default(),
            today: now.date_naive(),
            away: Vec::new(),
        }
    }

    /// Deals the pools of an explained run: each pick is added to `plan`, and the rule's
    /// trace says whom and how, or that nobody was left.
    pub(super) fn explained(
        &mut self,
        run: &mut super::eval::Run,
        at: (&LocationId, &ContactId),
    ) -> Plan {
        let mut evaluation = Evaluation {
            plan: std::mem::take(&mut run.plan).finish(),
            picks: std::mem::take(&mut run.picks),
            ..Evaluation::default()
        };
        for hand in evaluation.hands(self.today, &self.away) {
            let rule = hand.rule.clone();
            let turn = self.dealer.take(at, &hand.pool.name, &hand.here);
            let said = match evaluation.give(hand, turn) {
                Ok(label) => format!("add {label}"),
                Err(pool) => format!(
                    "nobody added from pool {pool}: every member is away and there is no fallback"
                ),
            };
            let trace = run.traces.iter_mut().find(|t| t.rule == rule);
            trace.into_iter().for_each(|t| t.actions.push(said.clone()));
        }
        evaluation.plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    #[test]
    fn a_dealer_deals_two_to_one_and_keeps_each_contacts_member() {
        let (a, b) = (user("aaaaaaaaaaaaaaaaaaaa"), user("bbbbbbbbbbbbbbbbbbbb"));
        let members = [(a.clone(), 2), (b.clone(), 1)];
        let location = LocationId::parse("loc00000000000000001").unwrap();
        let mut dealer = Dealer::default();
        let mut dealt = Vec::new();
        for i in 0..30 {
            let contact = ContactId::parse(&format!("contact{i:013}")).unwrap();
            let first = dealer.take((&location, &contact), "sales", &members);
            let again = dealer.take((&location, &contact), "sales", &members);
            assert_eq!(first, again, "a contact keeps its member");
            dealt.extend(first);
        }
        assert_eq!(dealt[..3], [a.clone(), b.clone(), a.clone()]);
        assert_eq!(dealt.iter().filter(|u| **u == a).count(), 20);
        let contact = ContactId::parse("contact0000000000000").unwrap();
        assert_eq!(
            dealer.take((&location, &contact), "sales", &members[1..]),
            Some(b)
        );
    }

    #[test]
    fn a_dealer_remembers_a_bounded_number_of_contacts() {
        let members = [(user("aaaaaaaaaaaaaaaaaaaa"), 1)];
        let location = LocationId::parse("loc00000000000000001").unwrap();
        let mut dealer = Dealer::default();
        for i in 0..=MAX_PICKS {
            let contact = ContactId::parse(&format!("c{i}")).unwrap();
            dealer.take((&location, &contact), "sales", &members);
            assert!(dealer.picks.len() <= MAX_PICKS);
        }
        assert_eq!(
            dealer.picks.len(),
            1,
            "forgotten at the bound, then going on"
        );
    }

    #[test]
    fn a_seeded_dealer_goes_on_where_the_store_stands() {
        let (a, b) = (user("aaaaaaaaaaaaaaaaaaaa"), user("bbbbbbbbbbbbbbbbbbbb"));
        let members = [(a.clone(), 2), (b.clone(), 1)];
        let location = LocationId::parse("loc00000000000000001").unwrap();
        let contact = ContactId::parse("contact0000000000001").unwrap();
        let mut dealer = Dealer::default();
        // After a, the store holds a at -1 and b at 1: b is next.
        let state = PoolState {
            pick: None,
            current: vec![(a.clone(), -1), (b.clone(), 1)],
        };
        dealer.seed((&location, &contact), "sales", state);
        assert_eq!(
            dealer.take((&location, &contact), "sales", &members),
            Some(b)
        );
        let other = ContactId::parse("contact0000000000002").unwrap();
        let state = PoolState {
            pick: Some(a.clone()),
            current: Vec::new(),
        };
        dealer.seed((&location, &other), "sales", state);
        assert_eq!(dealer.take((&location, &other), "sales", &members), Some(a));
    }
}

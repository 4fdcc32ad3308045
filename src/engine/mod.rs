//! The working state held in memory: every leaderboard of the partitions this instance
//! stores (the three all-time boards and, for each kept day, week and month, three period
//! boards), rebuilt from the stored users when the store opens or a partition is restored,
//! and changed in place by each commit. Nothing here is written key by key to the store:
//! the users are the durable truth, the boards a view of them (ARCHITECTURE.md, "The
//! boards in memory").
//!
//! Pure: no fjall, no Kafka. The store holds one [`Boards`] behind a lock, applies each
//! batch's [`BoardChange`]s to it in the same critical section as the batch's writes, so
//! that a reader never sees a board ahead of or behind the users it ranks.

mod ranked;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::domain::{Period, PeriodScore, UserState};
use ranked::{Ids, Ranked};

/// What a leaderboard ranks by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Board {
    /// Experience points.
    Xp,
    /// Coins held.
    Coins,
    /// Total spent (purchases less refunds).
    Spent,
}

impl Board {
    /// Every board.
    pub const ALL: [Board; 3] = [Board::Xp, Board::Coins, Board::Spent];

    fn index(self) -> usize {
        match self {
            Board::Xp => 0,
            Board::Coins => 1,
            Board::Spent => 2,
        }
    }

    /// A user's all-time score on this board.
    pub fn score(self, u: &UserState) -> i64 {
        match self {
            Board::Xp => u.xp,
            // Coins earned: redemptions never lower a score.
            Board::Coins => u.coins.saturating_add(u.coins_redeemed),
            Board::Spent => u.total_spent,
        }
    }

    /// A period score on this board.
    pub fn period_score(self, p: &PeriodScore) -> i64 {
        match self {
            Board::Xp => p.xp,
            Board::Coins => p.coins,
            Board::Spent => p.spent,
        }
    }
}

/// A user's scores on every board, in [`Board::ALL`] order.
pub type Scores = [i64; 3];

/// A user's all-time scores.
pub fn scores(u: &UserState) -> Scores {
    Board::ALL.map(|b| b.score(u))
}

fn period_scores(p: &PeriodScore) -> Scores {
    Board::ALL.map(|b| b.period_score(p))
}

fn kind_index(kind: Period) -> usize {
    match kind {
        Period::Day => 0,
        Period::Week => 1,
        Period::Month => 2,
    }
}

/// What the boards hold for a stored user: its all-time scores, its period scores and
/// its part of the coin liability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed {
    /// All-time scores, in [`Board::ALL`] order.
    pub scores: Scores,
    /// Period scores.
    pub periods: Vec<PeriodScore>,
    /// Its coins, as the liability counts them.
    pub coins: CoinParts,
}

/// What the boards hold for `u`.
pub fn indexed(u: &UserState) -> Indexed {
    Indexed {
        scores: scores(u),
        periods: u.periods.clone(),
        coins: CoinParts::of(u),
    }
}

/// One user's coins as the liability counts them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoinParts {
    /// Coins held (a positive balance; 0 in debt).
    held: i64,
    /// Coins held by the month they were earned in (`[expiry]`).
    lots: Vec<(i32, i64)>,
    /// What the user owes (a negative balance, negated).
    debt: i64,
    /// Coins expired, ever.
    expired: i64,
    /// Coins redeemed, net of reversals.
    redeemed: i64,
}

impl CoinParts {
    /// `u`'s parts.
    pub fn of(u: &UserState) -> Self {
        CoinParts {
            held: u.coins.max(0),
            lots: u.lots.clone(),
            debt: u.coins.saturating_neg().max(0),
            expired: u.coins_expired,
            redeemed: u.coins_redeemed,
        }
    }
}

/// The coin liability of some users: sums of their [`CoinParts`], in i128 so that no sum
/// of i64 balances can overflow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoinTotals {
    /// Coins held.
    pub held: i128,
    /// Coins held in lots, by the month they were earned in (no zero entries).
    pub lots: BTreeMap<i32, i128>,
    /// What users owe.
    pub debt: i128,
    /// Coins expired.
    pub expired: i128,
    /// Coins redeemed, net of reversals.
    pub redeemed: i128,
}

impl CoinTotals {
    /// Adds (`sign` 1) or takes away (`sign` -1) one user's parts.
    fn count(&mut self, parts: &CoinParts, sign: i128) {
        self.held += sign * i128::from(parts.held);
        self.debt += sign * i128::from(parts.debt);
        self.expired += sign * i128::from(parts.expired);
        self.redeemed += sign * i128::from(parts.redeemed);
        for &(month, coins) in &parts.lots {
            let at = self.lots.entry(month).or_default();
            *at += sign * i128::from(coins);
            if *at == 0 {
                self.lots.remove(&month);
            }
        }
    }

    /// Adds another set of totals.
    pub fn merge(&mut self, other: &CoinTotals) {
        self.held += other.held;
        self.debt += other.debt;
        self.expired += other.expired;
        self.redeemed += other.redeemed;
        for (&month, &coins) in &other.lots {
            let at = self.lots.entry(month).or_default();
            *at += coins;
            if *at == 0 {
                self.lots.remove(&month);
            }
        }
    }
}

/// One user's move on one scope's boards (`period: None`, the all-time boards), from
/// `old` to `new` scores (`None`: not on them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardChange {
    partition: i32,
    period: Option<(Period, String)>,
    user_id: String,
    old: Option<Scores>,
    new: Option<Scores>,
}

/// The changes of one batch, gathered before it is written.
#[derive(Debug, Default)]
pub struct BoardChanges {
    changes: Vec<BoardChange>,
    /// Users whose coins moved: (partition, parts before, parts after).
    coins: Vec<(i32, Option<CoinParts>, CoinParts)>,
}

impl BoardChanges {
    /// Adds the difference between a user's state before (`None`: new) and after the
    /// batch. A board whose score did not change is not touched.
    pub fn add(&mut self, partition: i32, before: Option<&Indexed>, user: &UserState) {
        let parts = CoinParts::of(user);
        if before.map(|b| &b.coins) != Some(&parts) {
            self.coins
                .push((partition, before.map(|b| b.coins.clone()), parts));
        }
        let now = scores(user);
        if before.map(|b| b.scores) != Some(now) {
            self.changes.push(BoardChange {
                partition,
                period: None,
                user_id: user.user_id.clone(),
                old: before.map(|b| b.scores),
                new: Some(now),
            });
        }
        let was: &[PeriodScore] = before.map_or(&[], |b| &b.periods);
        let same = |a: &PeriodScore, b: &PeriodScore| a.kind == b.kind && a.key == b.key;
        for p in &user.periods {
            let old = was.iter().find(|w| same(w, p)).map(period_scores);
            let new = Some(period_scores(p));
            if old != new {
                self.changes.push(BoardChange {
                    partition,
                    period: Some((p.kind, p.key.clone())),
                    user_id: user.user_id.clone(),
                    old,
                    new,
                });
            }
        }
        for w in was {
            if !user.periods.iter().any(|p| same(p, w)) {
                self.changes.push(BoardChange {
                    partition,
                    period: Some((w.kind, w.key.clone())),
                    user_id: user.user_id.clone(),
                    old: Some(period_scores(w)),
                    new: None,
                });
            }
        }
    }

    /// Whether there is nothing to change.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.coins.is_empty()
    }
}

/// Three boards of one scope, in [`Board::ALL`] order.
type Three = [Ranked; 3];

/// The boards of one partition.
#[derive(Default)]
struct PartitionBoards {
    ids: Ids,
    all_time: Three,
    /// By period kind (day, week, month): the kept keys, each with its boards.
    periods: [BTreeMap<String, Three>; 3],
    /// The partition's coin liability.
    coins: CoinTotals,
}

impl PartitionBoards {
    fn scope(&self, period: Option<(Period, &str)>) -> Option<&Three> {
        match period {
            None => Some(&self.all_time),
            Some((kind, key)) => self.periods[kind_index(kind)].get(key),
        }
    }

    fn settle(&mut self) {
        for r in self.all_time.iter_mut() {
            r.settle();
        }
        for kind in self.periods.iter_mut() {
            for three in kind.values_mut() {
                for r in three.iter_mut() {
                    r.settle();
                }
            }
        }
    }

    fn bytes(&self) -> BoardBytes {
        let three = |t: &Three| t.iter().map(Ranked::bytes).sum::<u64>();
        BoardBytes {
            ids: self.ids.bytes(),
            all_time: three(&self.all_time),
            periods: self
                .periods
                .iter()
                .flat_map(|k| k.values())
                .map(three)
                .sum(),
        }
    }
}

/// Bytes the boards hold, by structure.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BoardBytes {
    /// The interned user ids and their map.
    pub ids: u64,
    /// The all-time boards' entries.
    pub all_time: u64,
    /// The period boards' entries.
    pub periods: u64,
}

/// Three boards' entries (score, user index), not sorted yet.
type Unsorted = [Vec<(i64, u32)>; 3];

/// One partition's boards being built from its users, one at a time: one sort per board
/// at the end. The partition keeps the latest `kept` keys of each kind among its users'
/// periods, as the commits that wrote them would have.
pub struct Builder {
    kept: usize,
    coins: CoinTotals,
    ids: Ids,
    all: Unsorted,
    /// By period kind: each key's entries.
    periods: [BTreeMap<String, Unsorted>; 3],
}

impl Builder {
    /// An empty partition keeping `kept` periods of each kind.
    pub fn new(kept: usize) -> Self {
        Self {
            kept,
            coins: CoinTotals::default(),
            ids: Ids::default(),
            all: Default::default(),
            periods: Default::default(),
        }
    }

    /// Adds one user (each user once).
    pub fn add(&mut self, u: &UserState) {
        self.coins.count(&CoinParts::of(u), 1);
        let at = self.ids.intern(&u.user_id);
        for (i, s) in scores(u).into_iter().enumerate() {
            self.all[i].push((s, at));
        }
        if self.kept == 0 {
            return;
        }
        for p in &u.periods {
            let three = match self.periods[kind_index(p.kind)].get_mut(&p.key) {
                Some(t) => t,
                None => self.periods[kind_index(p.kind)]
                    .entry(p.key.clone())
                    .or_default(),
            };
            for (i, s) in period_scores(p).into_iter().enumerate() {
                three[i].push((s, at));
            }
        }
    }

    fn finish(self) -> PartitionBoards {
        let Builder {
            kept,
            coins,
            ids,
            all,
            periods,
        } = self;
        let mut built = PartitionBoards {
            all_time: all.map(|e| Ranked::build(&ids, e)),
            coins,
            ..PartitionBoards::default()
        };
        for (kind, keys) in periods.into_iter().enumerate() {
            let excess = keys.len().saturating_sub(kept);
            built.periods[kind] = keys
                .into_iter()
                .skip(excess)
                .map(|(k, three)| (k, three.map(|e| Ranked::build(&ids, e))))
                .collect();
        }
        built.ids = ids;
        built
    }
}

/// Every board of every partition held.
pub struct Boards {
    partitions: HashMap<i32, PartitionBoards>,
    /// How many of the latest periods of each kind a partition keeps (0: no period boards).
    kept: usize,
}

impl Boards {
    /// No boards; `kept` periods of each kind once users come.
    pub fn new(kept: usize) -> Self {
        Self {
            partitions: HashMap::new(),
            kept,
        }
    }

    /// Periods of each kind kept.
    pub fn kept(&self) -> usize {
        self.kept
    }

    /// Puts a partition's built boards in place of what it held.
    pub fn install(&mut self, partition: i32, built: Builder) {
        self.partitions.insert(partition, built.finish());
    }

    /// Forgets `partition`'s boards.
    pub fn remove(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Applies one batch's changes. A partition's kept periods of a kind are its latest
    /// `kept` keys among those it held and those the batch brings: a newer key drops the
    /// oldest board, and a change to a period older than every kept one is not indexed.
    pub fn apply(&mut self, changes: BoardChanges) {
        let kept = self.kept;
        let mut touched: BTreeSet<i32> = BTreeSet::new();
        // The kept set of each (partition, kind) the batch touches, before any entry moves.
        if kept > 0 {
            let mut new_keys: BTreeMap<(i32, usize), BTreeSet<&str>> = BTreeMap::new();
            for c in &changes.changes {
                if let Some((kind, key)) = &c.period {
                    new_keys
                        .entry((c.partition, kind_index(*kind)))
                        .or_default()
                        .insert(key);
                }
            }
            for ((p, kind), keys) in new_keys {
                let boards = self.partitions.entry(p).or_default();
                let map = &mut boards.periods[kind];
                for k in keys {
                    if !map.contains_key(k) {
                        // Kept only if among the latest `kept` keys once it is in.
                        let newer = map
                            .range::<str, _>((
                                std::ops::Bound::Included(k),
                                std::ops::Bound::Unbounded,
                            ))
                            .count();
                        if newer < kept {
                            map.insert(k.to_owned(), Three::default());
                        }
                    }
                }
                while map.len() > kept {
                    map.pop_first();
                }
            }
        }
        for (p, old, new) in &changes.coins {
            let coins = &mut self.partitions.entry(*p).or_default().coins;
            if let Some(old) = old {
                coins.count(old, -1);
            }
            coins.count(new, 1);
        }
        for c in changes.changes {
            let boards = self.partitions.entry(c.partition).or_default();
            touched.insert(c.partition);
            let user = boards.ids.intern(&c.user_id);
            let PartitionBoards {
                ids,
                all_time,
                periods,
                ..
            } = boards;
            let three = match &c.period {
                None => all_time,
                Some((kind, key)) => match periods[kind_index(*kind)].get_mut(key) {
                    Some(three) => three,
                    None => continue,
                },
            };
            for (i, r) in three.iter_mut().enumerate() {
                if let (Some(old), Some(new)) = (c.old, c.new) {
                    if old[i] == new[i] {
                        // This board's score did not move (a redemption moves coins
                        // alone): its entry stays where it is.
                        continue;
                    }
                }
                if let Some(old) = c.old {
                    let found = r.remove(ids, old[i], user);
                    // An old score the boards do not hold means they and the store
                    // disagree: a bug, never input.
                    debug_assert!(found, "board entry of {} missing", c.user_id);
                }
                if let Some(new) = c.new {
                    r.insert(ids, new[i], user);
                }
            }
        }
        for p in touched {
            if let Some(b) = self.partitions.get_mut(&p) {
                b.settle();
            }
        }
    }

    /// Users on `partition`'s all-time boards.
    pub fn users(&self, partition: i32) -> u64 {
        self.partitions
            .get(&partition)
            .map_or(0, |b| b.all_time[0].len())
    }

    /// The coin liability of the partitions `keep` accepts.
    pub fn coins(&self, keep: impl Fn(i32) -> bool) -> CoinTotals {
        let mut out = CoinTotals::default();
        for (p, b) in &self.partitions {
            if keep(*p) {
                out.merge(&b.coins);
            }
        }
        out
    }

    /// Partitions with boards.
    pub fn partitions(&self) -> impl Iterator<Item = i32> + '_ {
        self.partitions.keys().copied()
    }

    /// The first `limit` entries of one board of `partition`: (score, user_id).
    pub fn top(
        &self,
        partition: i32,
        period: Option<(Period, &str)>,
        board: Board,
        limit: usize,
    ) -> Vec<(i64, String)> {
        let Some(b) = self.partitions.get(&partition) else {
            return Vec::new();
        };
        let Some(three) = b.scope(period) else {
            return Vec::new();
        };
        three[board.index()]
            .top(limit)
            .map(|(s, u)| (s, b.ids.id(u).to_owned()))
            .collect()
    }

    /// Entries of `partition`'s board that rank above (`score`, `user_id`).
    pub fn above(
        &self,
        partition: i32,
        period: Option<(Period, &str)>,
        board: Board,
        score: i64,
        user_id: &str,
    ) -> u64 {
        let Some(b) = self.partitions.get(&partition) else {
            return 0;
        };
        b.scope(period).map_or(0, |three| {
            three[board.index()].above(&b.ids, score, user_id)
        })
    }

    /// The kept keys of `kind` in `partition`, ascending.
    pub fn period_keys(&self, partition: i32, kind: Period) -> Vec<String> {
        self.partitions.get(&partition).map_or_else(Vec::new, |b| {
            b.periods[kind_index(kind)].keys().cloned().collect()
        })
    }

    /// Users on the boards of one period of `partition`.
    pub fn period_users(&self, partition: i32, kind: Period, key: &str) -> u64 {
        self.partitions
            .get(&partition)
            .and_then(|b| b.periods[kind_index(kind)].get(key))
            .map_or(0, |three| three[0].len())
    }

    /// Bytes held, by structure, over every partition.
    pub fn bytes(&self) -> BoardBytes {
        let mut out = BoardBytes::default();
        for b in self.partitions.values() {
            let x = b.bytes();
            out.ids += x.ids;
            out.all_time += x.all_time;
            out.periods += x.periods;
        }
        out
    }
}

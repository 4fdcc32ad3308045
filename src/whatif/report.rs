//! The comparison of two folds of one range: what `whatif` prints, writes as JSON
//! (`schemas/whatif.schema.json`) and draws as HTML. Every figure is an integer: coins
//! and XP as counts, money in minor units.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::Serialize;

use super::{Folded, Options, Outcome, WhatifError};
use crate::domain::UserState;
use crate::pipeline::{BatchStats, StoreTally};

/// Users listed as the top gainers and the top losers.
pub const TOP: usize = 20;
/// Bars of the coin-delta histogram (at most).
const BINS: i64 = 20;

/// The what-if report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was folded.
    pub range: Range,
    /// Totals under each rule set.
    pub totals: Sides<Totals>,
    /// Users by level at the end, under each rule set.
    pub levels: Sides<BTreeMap<u32, u64>>,
    /// Coins by store, largest change first.
    pub stores: Vec<Line>,
    /// Coins by store category (stores without one under `""`), largest change first.
    pub categories: Vec<Line>,
    /// Coins each campaign holds with the users at the end (its cost), in config order
    /// of the live rules, then the proposed rules' new ones.
    pub campaigns: Vec<Line>,
    /// How users' outcomes changed.
    pub users: Users,
}

/// What was folded.
#[derive(Debug, Clone, Serialize)]
pub struct Range {
    /// The proposed rules applied from this Kafka timestamp (RFC 3339), or from the first
    /// record.
    pub from: Option<String>,
    /// The range ended before this Kafka timestamp, or at the topic's end.
    pub to: Option<String>,
    /// Records before `from`, folded under the live rules on both sides.
    pub history_records: u64,
    /// Records compared.
    pub records: u64,
    /// Records folded per second (both sides at once; history included).
    pub records_per_s: u64,
}

/// One figure under both rule sets.
#[derive(Debug, Clone, Serialize)]
pub struct Sides<T> {
    /// Under the live rules.
    pub live: T,
    /// Under the proposed rules.
    pub proposed: T,
}

/// Totals of one fold. Counts of the compared range, except `coins_outstanding`, `xp`
/// and `users`, which are the state at its end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Receipts applied.
    pub receipts_applied: u64,
    /// Records rejected.
    pub rejected: u64,
    /// Coins granted: purchases, level-up bonuses, campaigns and missions.
    pub coins_issued: u64,
    /// Coins taken back by refunds.
    pub coins_reversed: u64,
    /// Coins spent by redemptions.
    pub coins_redeemed: u64,
    /// Coins the users hold at the end: the mall's liability.
    pub coins_outstanding: i64,
    /// XP the users hold at the end.
    pub xp: i64,
    /// Users stored at the end.
    pub users: u64,
    /// Missions completed.
    pub missions_completed: u64,
    /// Badges earned.
    pub badges_earned: u64,
}

/// One row of a by-store, by-category or by-campaign table.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    /// The store, category or campaign.
    pub id: String,
    /// Its category (stores only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Coins under the live rules.
    pub live: i64,
    /// Coins under the proposed rules.
    pub proposed: i64,
    /// `proposed - live`.
    pub change: i64,
}

/// How users' outcomes changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Users {
    /// Users stored under either rule set.
    pub count: u64,
    /// Users whose level is higher under the proposed rules.
    pub level_up: u64,
    /// Users whose level is lower.
    pub level_down: u64,
    /// Users whose coins differ.
    pub coins_changed: u64,
    /// Percentiles of the change of coins per user (nearest rank).
    pub coin_delta: Percentiles,
    /// The change of coins per user, in bars of equal width.
    pub histogram: Vec<Bar>,
    /// The users who gain most, most first (only those who gain).
    pub top_gainers: Vec<UserChange>,
    /// The users who lose most, most first (only those who lose).
    pub top_losers: Vec<UserChange>,
}

/// Percentiles of a distribution of integers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    pub min: i64,
    pub p1: i64,
    pub p5: i64,
    pub p25: i64,
    pub p50: i64,
    pub p75: i64,
    pub p95: i64,
    pub p99: i64,
    pub max: i64,
}

/// One bar of a histogram: the users whose value is in `[from, to]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bar {
    pub from: i64,
    pub to: i64,
    pub users: u64,
}

/// One user's outcome under both rule sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserChange {
    pub user_id: String,
    pub live_coins: i64,
    pub proposed_coins: i64,
    pub change: i64,
    pub live_level: u32,
    pub proposed_level: u32,
}

/// Compares the outcomes of the two folds.
pub(super) fn compare(
    opts: &Options,
    folded: &Folded,
    live: &Outcome,
    proposed: &Outcome,
) -> Result<Report, WhatifError> {
    let mut totals = Sides {
        live: totals_of(&live.stats),
        proposed: totals_of(&proposed.stats),
    };
    let mut levels = Sides {
        live: BTreeMap::new(),
        proposed: BTreeMap::new(),
    };
    let mut campaigns: Sides<BTreeMap<String, i64>> = Sides {
        live: BTreeMap::new(),
        proposed: BTreeMap::new(),
    };
    let mut users = UserWalk::default();
    let mut a = live.store.users_by_partition().peekable();
    let mut b = proposed.store.users_by_partition().peekable();
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(Err(_)), _) | (_, Some(Err(_))) => Ordering::Equal,
            (Some(Ok((pa, ua))), Some(Ok((pb, ub)))) => {
                (pa, ua.user_id.as_bytes()).cmp(&(pb, ub.user_id.as_bytes()))
            }
        };
        let left = match order {
            Ordering::Greater => None,
            _ => a.next().transpose()?.map(|(_, u)| u),
        };
        let right = match order {
            Ordering::Less => None,
            _ => b.next().transpose()?.map(|(_, u)| u),
        };
        for (u, t, l, c) in [
            (
                &left,
                &mut totals.live,
                &mut levels.live,
                &mut campaigns.live,
            ),
            (
                &right,
                &mut totals.proposed,
                &mut levels.proposed,
                &mut campaigns.proposed,
            ),
        ] {
            if let Some(u) = u {
                add_user(u, t, l, c);
            }
        }
        users.add(left.as_ref(), right.as_ref());
    }
    let secs = folded.seconds.max(1e-9);
    Ok(Report {
        range: Range {
            from: opts.from.map(|t| t.to_rfc3339()),
            to: opts.to.map(|t| t.to_rfc3339()),
            history_records: folded.history_records,
            records: folded.records,
            records_per_s: ((folded.history_records + folded.records) as f64 / secs) as u64,
        },
        totals,
        levels,
        stores: store_lines(opts, &live.stats, &proposed.stats),
        categories: category_lines(opts, &live.stats, &proposed.stats),
        campaigns: campaign_lines(opts, &campaigns),
        users: users.finish(),
    })
}

fn totals_of(s: &BatchStats) -> Totals {
    Totals {
        receipts_applied: s.applied,
        rejected: s.rejected.values().sum(),
        coins_issued: s.coins_awarded,
        coins_reversed: s.coins_reversed,
        coins_redeemed: s.coins_redeemed,
        missions_completed: s.missions_completed,
        badges_earned: s.badges_earned,
        ..Totals::default()
    }
}

fn add_user(
    u: &UserState,
    t: &mut Totals,
    levels: &mut BTreeMap<u32, u64>,
    campaigns: &mut BTreeMap<String, i64>,
) {
    t.users += 1;
    t.coins_outstanding = t.coins_outstanding.saturating_add(u.coins);
    t.xp = t.xp.saturating_add(u.xp);
    *levels.entry(u.level).or_default() += 1;
    for (id, c) in &u.coins_by_campaign {
        let held = campaigns.entry(id.clone()).or_default();
        *held = held.saturating_add(*c);
    }
}

/// Lines sorted by the size of their change, largest first, then by id.
fn by_change(mut lines: Vec<Line>) -> Vec<Line> {
    lines.sort_by(|x, y| {
        y.change
            .unsigned_abs()
            .cmp(&x.change.unsigned_abs())
            .then_with(|| x.id.cmp(&y.id))
    });
    lines
}

fn line(id: String, category: Option<String>, live: i64, proposed: i64) -> Line {
    Line {
        id,
        category,
        live,
        proposed,
        change: proposed.saturating_sub(live),
    }
}

fn store_lines(opts: &Options, live: &BatchStats, proposed: &BatchStats) -> Vec<Line> {
    let ids: std::collections::BTreeSet<&String> = live
        .by_store
        .keys()
        .chain(proposed.by_store.keys())
        .collect();
    let coins = |s: &BatchStats, id: &str| s.by_store.get(id).map_or(0, |t: &StoreTally| t.coins);
    by_change(
        ids.into_iter()
            .map(|id| {
                let category = opts.live.rules.game.category(id).map(str::to_owned);
                line(id.clone(), category, coins(live, id), coins(proposed, id))
            })
            .collect(),
    )
}

fn category_lines(opts: &Options, live: &BatchStats, proposed: &BatchStats) -> Vec<Line> {
    let mut sums: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let game = &opts.live.rules.game;
    for (side, stats) in [(0, live), (1, proposed)] {
        for (store, t) in &stats.by_store {
            let cat = game.category(store).unwrap_or("").to_owned();
            let e = sums.entry(cat).or_default();
            if side == 0 {
                e.0 = e.0.saturating_add(t.coins);
            } else {
                e.1 = e.1.saturating_add(t.coins);
            }
        }
    }
    by_change(
        sums.into_iter()
            .map(|(cat, (l, p))| line(cat, None, l, p))
            .collect(),
    )
}

fn campaign_lines(opts: &Options, held: &Sides<BTreeMap<String, i64>>) -> Vec<Line> {
    let mut ids: Vec<String> = Vec::new();
    let configured = opts
        .live
        .rules
        .game
        .campaigns
        .iter()
        .chain(&opts.proposed.rules.game.campaigns)
        .map(|c| &c.id)
        .chain(held.live.keys())
        .chain(held.proposed.keys());
    for id in configured {
        if !ids.contains(id) {
            ids.push(id.clone());
        }
    }
    let get = |m: &BTreeMap<String, i64>, id: &str| m.get(id).copied().unwrap_or(0);
    ids.into_iter()
        .map(|id| {
            let (l, p) = (get(&held.live, &id), get(&held.proposed, &id));
            line(id, None, l, p)
        })
        .collect()
}

/// The users walked in key order, both sides at once.
#[derive(Default)]
struct UserWalk {
    count: u64,
    level_up: u64,
    level_down: u64,
    deltas: Vec<i64>,
    gainers: Vec<UserChange>,
    losers: Vec<UserChange>,
}

impl UserWalk {
    fn add(&mut self, live: Option<&UserState>, proposed: Option<&UserState>) {
        let Some(id) = live.or(proposed).map(|u| u.user_id.clone()) else {
            return;
        };
        let (lc, ll) = live.map_or((0, 0), |u| (u.coins, u.level));
        let (pc, pl) = proposed.map_or((0, 0), |u| (u.coins, u.level));
        self.count += 1;
        match pl.cmp(&ll) {
            Ordering::Greater => self.level_up += 1,
            Ordering::Less => self.level_down += 1,
            Ordering::Equal => {}
        }
        let change = pc.saturating_sub(lc);
        self.deltas.push(change);
        let c = UserChange {
            user_id: id,
            live_coins: lc,
            proposed_coins: pc,
            change,
            live_level: ll,
            proposed_level: pl,
        };
        match change.cmp(&0) {
            Ordering::Greater => keep_top(&mut self.gainers, c, |x, y| {
                y.change
                    .cmp(&x.change)
                    .then_with(|| x.user_id.cmp(&y.user_id))
            }),
            Ordering::Less => keep_top(&mut self.losers, c, |x, y| {
                x.change
                    .cmp(&y.change)
                    .then_with(|| x.user_id.cmp(&y.user_id))
            }),
            Ordering::Equal => {}
        }
    }

    fn finish(mut self) -> Users {
        self.deltas.sort_unstable();
        Users {
            count: self.count,
            level_up: self.level_up,
            level_down: self.level_down,
            coins_changed: self.deltas.iter().filter(|d| **d != 0).count() as u64,
            coin_delta: percentiles(&self.deltas),
            histogram: histogram(&self.deltas),
            top_gainers: self.gainers,
            top_losers: self.losers,
        }
    }
}

/// Keeps the [`TOP`] first of `v` in `order`, `c` added.
fn keep_top(
    v: &mut Vec<UserChange>,
    c: UserChange,
    order: impl Fn(&UserChange, &UserChange) -> Ordering,
) {
    if v.len() == TOP
        && v.last()
            .is_some_and(|last| order(&c, last) != Ordering::Less)
    {
        return;
    }
    let at = v.partition_point(|x| order(x, &c) == Ordering::Less);
    v.insert(at, c);
    v.truncate(TOP);
}

/// Nearest-rank percentiles of `sorted` (all zero when empty).
fn percentiles(sorted: &[i64]) -> Percentiles {
    let at = |pct: usize| -> i64 {
        if sorted.is_empty() {
            return 0;
        }
        // The smallest value with at least pct% of the values at or below it.
        let rank = (pct * sorted.len()).div_ceil(100).max(1);
        sorted[rank - 1]
    };
    Percentiles {
        min: sorted.first().copied().unwrap_or(0),
        p1: at(1),
        p5: at(5),
        p25: at(25),
        p50: at(50),
        p75: at(75),
        p95: at(95),
        p99: at(99),
        max: sorted.last().copied().unwrap_or(0),
    }
}

/// At most [`BINS`] bars of equal integer width covering `sorted`, empty ones included.
fn histogram(sorted: &[i64]) -> Vec<Bar> {
    let (Some(&lo), Some(&hi)) = (sorted.first(), sorted.last()) else {
        return Vec::new();
    };
    let span = i128::from(hi) - i128::from(lo) + 1;
    let width = i64::try_from((span + i128::from(BINS) - 1) / i128::from(BINS))
        .unwrap_or(i64::MAX)
        .max(1);
    let mut bars: Vec<Bar> = Vec::new();
    let mut from = lo;
    let mut i = 0;
    loop {
        let to = from.saturating_add(width - 1).min(hi);
        let start = i;
        while i < sorted.len() && sorted[i] <= to {
            i += 1;
        }
        bars.push(Bar {
            from,
            to,
            users: (i - start) as u64,
        });
        if to >= hi {
            return bars;
        }
        from = to + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        let p = percentiles(&v);
        assert_eq!((p.min, p.p1, p.p50, p.p99, p.max), (1, 1, 50, 99, 100));
        let p = percentiles(&[7]);
        assert_eq!((p.min, p.p25, p.p99, p.max), (7, 7, 7, 7));
        assert_eq!(percentiles(&[]), Percentiles::default());
    }

    #[test]
    fn a_histogram_covers_every_value_once_in_at_most_its_bars() {
        let v: Vec<i64> = vec![-50, -3, 0, 0, 0, 1, 2, 999];
        let h = histogram(&v);
        assert!(h.len() <= BINS as usize);
        assert_eq!(h.first().map(|b| b.from), Some(-50));
        assert_eq!(h.last().map(|b| b.to), Some(999));
        assert_eq!(h.iter().map(|b| b.users).sum::<u64>(), v.len() as u64);
        for w in h.windows(2) {
            assert_eq!(w[0].to + 1, w[1].from);
        }
        assert_eq!(
            histogram(&[0, 0]),
            vec![Bar {
                from: 0,
                to: 0,
                users: 2
            }]
        );
        assert!(histogram(&[]).is_empty());
        let extreme = histogram(&[i64::MIN, i64::MAX]);
        assert_eq!(extreme.iter().map(|b| b.users).sum::<u64>(), 2);
    }

    #[test]
    fn the_top_keeps_the_largest_changes_ties_by_user_id() {
        let mut v = Vec::new();
        let order = |x: &UserChange, y: &UserChange| {
            y.change
                .cmp(&x.change)
                .then_with(|| x.user_id.cmp(&y.user_id))
        };
        for i in 0..100i64 {
            let c = UserChange {
                user_id: format!("u{:03}", 99 - i),
                live_coins: 0,
                proposed_coins: i % 30,
                change: i % 30,
                live_level: 1,
                proposed_level: 1,
            };
            keep_top(&mut v, c, order);
        }
        assert_eq!(v.len(), TOP);
        assert_eq!(v[0].change, 29);
        assert!(v.windows(2).all(|w| order(&w[0], &w[1]) == Ordering::Less));
        // 29 appears for i = 29, 59, 89: users u070, u040, u010.
        assert_eq!(v[0].user_id, "u010");
    }
}

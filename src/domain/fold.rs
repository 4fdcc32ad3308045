//! The fold: one receipt applied to one user's state.
//!
//! One receipt's effects come in a fixed order: base coins and XP (or a refund's
//! reversal), campaign coins, mission completions or revocations (config order), one
//! level-up check over all the XP the receipt added, then badges (config order). Its
//! events are emitted in that order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::game::{streak_unit, Goal, Mission, MissionPeriod, OnRefund, Period};
use super::timers::{self, CoinsExpired, Figure, TierChanged, TierHeld};
use super::{Minor, Reject, Rules, Timestamp};

/// A decoded, validated receipt event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Unique per user; the key of the ledger.
    pub receipt_id: String,
    /// The shopper; equals the Kafka key.
    pub user_id: String,
    /// Where the sale happened; picks the coin multiplier.
    pub store_id: String,
    /// The amount in minor units: in `1..=MAX_AMOUNT` for purchases and refunds; for
    /// redemptions and their reversals, as given (0 when absent).
    pub amount: Minor,
    /// When the POS issued it.
    pub issued_at: Timestamp,
    /// Purchase, refund, redemption or redemption reversal.
    pub kind: ReceiptKind,
}

/// What a receipt does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReceiptKind {
    /// A sale: earns coins and XP.
    Purchase,
    /// Money back for (part of) an earlier purchase of the same user.
    Refund {
        /// The purchase's receipt_id.
        refund_of: String,
    },
    /// Coins spent.
    Redemption {
        /// How many, at least 1.
        coins: i64,
    },
    /// An earlier redemption of the same user given back, whole.
    RedemptionReversal {
        /// The redemption's receipt_id.
        refund_of: String,
    },
}

impl ReceiptKind {
    /// The receipt id this one reverses, for refunds and redemption reversals.
    pub fn refund_of(&self) -> Option<&str> {
        match self {
            ReceiptKind::Refund { refund_of } | ReceiptKind::RedemptionReversal { refund_of } => {
                Some(refund_of)
            }
            ReceiptKind::Purchase | ReceiptKind::Redemption { .. } => None,
        }
    }
}

/// Where the last applied event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// Kafka partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
}

/// One user's projection, as stored. The published JSON is derived from it by the codec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserState {
    /// The shopper.
    pub user_id: String,
    /// Coins held: purchases, campaigns, missions, level-up bonuses, less refunds and
    /// redemptions. May be negative (a refund after a redemption).
    pub coins: i64,
    /// Experience points.
    pub xp: i64,
    /// Current level; never goes down.
    pub level: u32,
    /// Purchases less refunds, in minor units.
    pub total_spent: Minor,
    /// Purchases applied.
    pub receipt_count: u64,
    /// Refunds applied.
    pub refund_count: u64,
    /// Distinct store_ids of purchases, sorted; its length is `stores_visited`.
    pub stores: Vec<String>,
    /// Earliest purchase issued_at.
    pub first_receipt_at: Option<Timestamp>,
    /// Latest purchase issued_at.
    pub last_receipt_at: Option<Timestamp>,
    /// Applied receipts of every kind.
    pub version: u64,
    /// The last applied event.
    pub source: Option<Source>,
    /// Campaign coins held, net of refunds, per campaign (no zero entries).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub coins_by_campaign: BTreeMap<String, i64>,
    /// Mission instances still kept (those a receipt inside the dedup window can change).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missions: Vec<MissionInstance>,
    /// Missions completed, ever (revocations do not take completions back).
    #[serde(default)]
    pub missions_completed: u64,
    /// Runs of consecutive streak units with a purchase, `(first, last)`, sorted, apart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streak_runs: Vec<(i64, i64)>,
    /// Badges earned, in earning order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub badges: Vec<String>,
    /// Redemptions applied (reversals do not take them back).
    #[serde(default)]
    pub redemptions: u64,
    /// Coins redeemed, net of reversals.
    #[serde(default)]
    pub coins_redeemed: i64,
    /// Scores attributed to the user's latest days, weeks and months (at most
    /// `periods_kept` of each kind, by key): what the period boards index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub periods: Vec<PeriodScore>,
    /// Coins held by the mall-local month they were earned in (`[expiry]`): `(month
    /// number, coins > 0)`, oldest first. Empty when the user is in debt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lots: Vec<(i32, i64)>,
    /// Coins expired, ever.
    #[serde(default)]
    pub coins_expired: i64,
    /// The status tier held (`[tiers]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<TierHeld>,
    /// The next monthly review of the tier held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_review: Option<Timestamp>,
    /// The tier figure's monthly scores (spend or XP, by `[tiers] basis`): `(month
    /// number, score)`, the months a window can still read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tier_months: Vec<(i32, i64)>,
    /// The qualifying figure at the partition's mark after the record that last changed
    /// the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier_figure: Option<Figure>,
    /// The soonest non-empty lot's expiry and coins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_expiry: Option<(Timestamp, i64)>,
}

/// What the fold attributed to one user in one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodScore {
    /// Day, week or month.
    pub kind: Period,
    /// `2026-11-30`, `2026-W49` or `2026-12`.
    pub key: String,
    /// XP attributed.
    pub xp: i64,
    /// Coins earned (redemptions never count).
    pub coins: i64,
    /// Money spent, net of refunds, in minor units.
    pub spent: Minor,
}

/// One user's progress on one mission in one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissionInstance {
    /// The mission.
    pub mission_id: String,
    /// The period's key: `2026-11-30`, `2026-W49`, `2026-12` or `once`.
    pub period: String,
    /// Money spent in the period (in the mission's category, for `category_spend`), net
    /// of refunds.
    pub spend: Minor,
    /// Purchases not fully refunded.
    pub receipts: u64,
    /// Purchases not fully refunded, per store.
    pub stores: BTreeMap<String, u64>,
    /// Whether its reward is held now.
    pub completed: bool,
    /// issued_at of the receipt that completed it: where its reward is attributed.
    pub completed_at: Option<Timestamp>,
}

impl MissionInstance {
    /// Progress towards the mission's target, in the target's unit.
    pub fn progress(&self, goal: Goal) -> i64 {
        match goal {
            Goal::Spend | Goal::CategorySpend => self.spend,
            Goal::Receipts => i64::try_from(self.receipts).unwrap_or(i64::MAX),
            Goal::Stores => self.stores.len() as i64,
        }
    }
}

impl UserState {
    /// A user before any receipt.
    pub fn new(user_id: &str) -> Self {
        Self {
            user_id: user_id.to_owned(),
            coins: 0,
            xp: 0,
            level: 1,
            total_spent: 0,
            receipt_count: 0,
            refund_count: 0,
            stores: Vec::new(),
            first_receipt_at: None,
            last_receipt_at: None,
            version: 0,
            source: None,
            coins_by_campaign: BTreeMap::new(),
            missions: Vec::new(),
            missions_completed: 0,
            streak_runs: Vec::new(),
            badges: Vec::new(),
            redemptions: 0,
            coins_redeemed: 0,
            periods: Vec::new(),
            lots: Vec::new(),
            coins_expired: 0,
            tier: None,
            next_review: None,
            tier_months: Vec::new(),
            tier_figure: None,
            next_expiry: None,
        }
    }

    /// Adds what a receipt attributed to the periods holding `a.at`. A period older than
    /// the user's `kept` latest of its kind is not recorded (no board keeps it: the
    /// partition has at least as many newer ones), and older ones are dropped.
    fn attribute(&mut self, a: &Attribution, rules: &Rules) -> Result<(), Reject> {
        let cal = rules.calendar();
        let kept = rules.game.periods_kept();
        for kind in Period::ALL {
            let key = cal.key(kind, a.at);
            let at = match self
                .periods
                .iter()
                .position(|p| p.kind == kind && p.key == key)
            {
                Some(at) => at,
                None => {
                    let newer = self
                        .periods
                        .iter()
                        .filter(|p| p.kind == kind && p.key > key)
                        .count();
                    if newer >= kept {
                        continue;
                    }
                    self.periods.push(PeriodScore {
                        kind,
                        key,
                        xp: 0,
                        coins: 0,
                        spent: 0,
                    });
                    self.periods.len() - 1
                }
            };
            let p = &mut self.periods[at];
            p.xp = add(p.xp, a.xp)?;
            p.coins = add(p.coins, a.coins)?;
            p.spent = add(p.spent, a.spent)?;
        }
        // Keep the latest `kept` of each kind, in (kind, key) order.
        self.periods
            .sort_by(|x, y| x.kind.cmp(&y.kind).then_with(|| y.key.cmp(&x.key)));
        let mut seen = (None, 0usize);
        self.periods.retain(|p| {
            if seen.0 != Some(p.kind) {
                seen = (Some(p.kind), 0);
            }
            seen.1 += 1;
            seen.1 <= kept
        });
        Ok(())
    }

    /// The run of streak units ending at the latest unit with a purchase.
    pub fn streak_current(&self) -> i64 {
        self.streak_runs.last().map_or(0, |(a, b)| b - a + 1)
    }

    /// The longest run ever (units are never removed, so the longest run now).
    pub fn streak_best(&self) -> i64 {
        self.streak_runs
            .iter()
            .map(|(a, b)| b - a + 1)
            .max()
            .unwrap_or(0)
    }

    /// Adds a unit with a purchase, joining the runs it touches.
    fn add_streak_unit(&mut self, unit: i64) {
        let runs = &mut self.streak_runs;
        let at = runs.partition_point(|(_, last)| *last < unit - 1);
        match runs.get(at).copied() {
            Some((first, last)) if first <= unit + 1 => {
                let merged = (first.min(unit), last.max(unit));
                runs[at] = merged;
                if let Some(&(next_first, next_last)) = runs.get(at + 1) {
                    if next_first == merged.1 + 1 {
                        runs[at] = (merged.0, next_last);
                        runs.remove(at + 1);
                    }
                }
            }
            _ => runs.insert(at, (unit, unit)),
        }
    }
}

/// What the ledger remembers of one receipt: enough to recognise a duplicate
/// and to reverse a purchase's earnings proportionally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Purchase, refund (with its original), redemption or reversal.
    pub kind: ReceiptKind,
    /// The receipt's store.
    pub store_id: String,
    /// The receipt's amount.
    pub amount: Minor,
    /// The receipt's instant.
    pub issued_at: Timestamp,
    /// Coins the purchase earned by the base rules, level bonus excluded (0 otherwise).
    pub earned_coins: i64,
    /// XP the purchase earned (0 otherwise).
    pub earned_xp: i64,
    /// Amount refunded so far (purchases); coins given back (redemptions).
    pub refunded: Minor,
    /// Coins the purchase got from each campaign, in config order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub campaign_coins: Vec<(String, i64)>,
    /// Coins the purchase got from the tier held (`[tiers]`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tier_bonus: i64,
    /// Coins a redemption took from each lot, oldest first (`[expiry]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taken: Vec<(i32, i64)>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl LedgerEntry {
    fn same_receipt(&self, r: &Receipt) -> bool {
        self.kind == r.kind
            && self.store_id == r.store_id
            && self.amount == r.amount
            && self.issued_at == r.issued_at
    }
}

/// A level-up, published to the events topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelUp {
    /// The shopper.
    pub user_id: String,
    /// Level before the receipt.
    pub from_level: u32,
    /// Level after the receipt.
    pub to_level: u32,
    /// Coins granted: levels gained times the bonus.
    pub bonus_coins: i64,
    /// The receipt that raised the level.
    pub receipt_id: String,
    /// The receipt's issued_at.
    pub at: Timestamp,
}

/// A mission completed or revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissionEvent {
    /// The shopper.
    pub user_id: String,
    /// The mission.
    pub mission_id: String,
    /// The period instance's key.
    pub period: String,
    /// Coins of the reward (added, or taken back).
    pub reward_coins: i64,
    /// XP of the reward (added, or taken back).
    pub reward_xp: i64,
    /// The receipt that completed (or revoked) it.
    pub receipt_id: String,
    /// That receipt's issued_at.
    pub at: Timestamp,
}

/// A badge earned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadgeEarned {
    /// The shopper.
    pub user_id: String,
    /// The badge.
    pub badge_id: String,
    /// The receipt that earned it.
    pub receipt_id: String,
    /// That receipt's issued_at.
    pub at: Timestamp,
}

/// An event of the events topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `level_up`.
    LevelUp(LevelUp),
    /// `mission_completed`.
    MissionCompleted(MissionEvent),
    /// `mission_revoked`.
    MissionRevoked(MissionEvent),
    /// `badge_earned`.
    BadgeEarned(BadgeEarned),
    /// `coins_expired`.
    CoinsExpired(CoinsExpired),
    /// `tier_changed`.
    TierChanged(TierChanged),
}

impl Event {
    /// The user it is about (the events topic's key).
    pub fn user_id(&self) -> &str {
        match self {
            Event::LevelUp(e) => &e.user_id,
            Event::MissionCompleted(e) | Event::MissionRevoked(e) => &e.user_id,
            Event::BadgeEarned(e) => &e.user_id,
            Event::CoinsExpired(e) => &e.user_id,
            Event::TierChanged(e) => &e.user_id,
        }
    }
}

/// What a receipt added to (or took from) the scores of the periods holding `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribution {
    /// The instant whose day, week and month get it.
    pub at: Timestamp,
    /// XP.
    pub xp: i64,
    /// Coins earned (redemptions never count).
    pub coins: i64,
    /// Money spent, in minor units.
    pub spent: Minor,
}

/// What applying a receipt did.
#[allow(clippy::large_enum_variant)] // built once per receipt and consumed at once
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The same receipt was applied before: nothing changed.
    Duplicate,
    /// The state changed; these ledger writes go with it.
    Applied {
        /// The receipt's own ledger entry.
        entry: LedgerEntry,
        /// For a refund or reversal: the original with its refunded total raised.
        original: Option<LedgerEntry>,
        /// Events, in emission order.
        events: Vec<Event>,
        /// Coins added or, negative, taken back (redemptions excluded).
        coins_delta: i64,
        /// Period scores changed, by the instant they are attributed to.
        attributed: Vec<Attribution>,
    },
}

/// Folds one receipt into `state`.
///
/// `existing` is the ledger entry under the receipt's own id, `original` the one under
/// its `refund_of` (both looked up by the caller for this user). On `Err`, `state` is
/// unchanged: the receipt is folded into a copy, with checked arithmetic, which replaces
/// `state` only when every step succeeded.
pub fn apply(
    state: &mut UserState,
    existing: Option<&LedgerEntry>,
    original: Option<&LedgerEntry>,
    receipt: &Receipt,
    source: Source,
    rules: &Rules,
) -> Result<Effect, Reject> {
    if existing.is_none() {
        // Changed on a copy, so that a rejected receipt leaves `state` as it was.
        let mut next = state.clone();
        let effect = apply_discarding(&mut next, existing, original, receipt, source, rules)?;
        *state = next;
        return Ok(effect);
    }
    apply_discarding(state, existing, original, receipt, source, rules)
}

/// [`apply`] for a caller that drops `state` when the receipt is rejected (a state loaded
/// for this receipt): no copy is made first, so a rejected receipt may leave `state` half
/// changed.
pub fn apply_discarding(
    state: &mut UserState,
    existing: Option<&LedgerEntry>,
    original: Option<&LedgerEntry>,
    receipt: &Receipt,
    source: Source,
    rules: &Rules,
) -> Result<Effect, Reject> {
    if let Some(seen) = existing {
        return if seen.same_receipt(receipt) {
            Ok(Effect::Duplicate)
        } else {
            Err(Reject::ConflictingDuplicate)
        };
    }
    let effect = match &receipt.kind {
        ReceiptKind::Purchase => purchase(state, receipt, rules)?,
        ReceiptKind::Refund { .. } => refund(state, original, receipt, rules)?,
        ReceiptKind::Redemption { coins } => redemption(state, receipt, *coins, rules)?,
        ReceiptKind::RedemptionReversal { .. } => reversal(state, original, receipt, rules)?,
    };
    if let Effect::Applied { attributed, .. } = &effect {
        for a in attributed {
            state.attribute(a, rules)?;
            timers::count_month(state, rules, a.at, a.spent, a.xp)?;
        }
    }
    state.version = state.version.checked_add(1).ok_or(Reject::Overflow)?;
    state.source = Some(source);
    Ok(effect)
}

fn add(a: i64, b: i64) -> Result<i64, Reject> {
    a.checked_add(b).ok_or(Reject::Overflow)
}

fn sub(a: i64, b: i64) -> Result<i64, Reject> {
    a.checked_sub(b).ok_or(Reject::Overflow)
}

/// floor(v * num / den), in i128; `None` when the result leaves i64.
fn scale(v: i64, num: i64, den: i64) -> Result<i64, Reject> {
    let r = i128::from(v) * i128::from(num) / i128::from(den);
    i64::try_from(r).map_err(|_| Reject::Overflow)
}

/// The key of the instance of `m` a receipt issued at `t` counts in, if any.
fn instance_key(m: &Mission, rules: &Rules, t: Timestamp) -> Option<String> {
    let period = match m.period {
        MissionPeriod::Day => Period::Day,
        MissionPeriod::Week => Period::Week,
        MissionPeriod::Month => Period::Month,
        MissionPeriod::Once => {
            let inside = m.start.is_some_and(|s| s <= t) && m.end.is_some_and(|e| t < e);
            return inside.then(|| "once".to_owned());
        }
    };
    Some(rules.calendar().key(period, t))
}

/// Whether a purchase in `store_id` counts for `m` at all.
fn counts_for(m: &Mission, rules: &Rules, store_id: &str) -> bool {
    m.goal != Goal::CategorySpend || rules.game.category(store_id) == m.category.as_deref()
}

fn purchase(s: &mut UserState, r: &Receipt, rules: &Rules) -> Result<Effect, Reject> {
    let game = &rules.game;
    let rates = rules.rates_at(r.issued_at);
    // i128 for the product: amount (<= 1e8) x rate x percent cannot overflow it.
    let earned_coins = i128::from(r.amount)
        * i128::from(rates.coins_per_unit)
        * i128::from(rates.multiplier_pct(&r.store_id))
        / 10_000;
    let earned_coins = i64::try_from(earned_coins).map_err(|_| Reject::Overflow)?;
    let earned_xp = (r.amount / 100)
        .checked_mul(rates.xp_per_unit)
        .and_then(|v| v.checked_add(rates.xp_per_receipt))
        .ok_or(Reject::Overflow)?;
    let mut events = Vec::new();
    let mut coins_delta = earned_coins;
    let mut xp_delta = earned_xp;

    // Campaigns, in config order, each limited by what is left of its cap.
    let mut campaign_coins = Vec::new();
    let category = game.category(&r.store_id);
    for c in &game.campaigns {
        let in_time = c.start <= r.issued_at && r.issued_at < c.end;
        let big_enough = c.min_amount.is_none_or(|m| r.amount >= m);
        let in_store = match (&c.stores, &c.categories) {
            (None, None) => true,
            (stores, categories) => {
                stores.as_ref().is_some_and(|l| l.contains(&r.store_id))
                    || categories
                        .as_ref()
                        .is_some_and(|l| category.is_some_and(|cat| l.iter().any(|x| x == cat)))
            }
        };
        if !(in_time && big_enough && in_store) {
            continue;
        }
        let held = s.coins_by_campaign.get(&c.id).copied().unwrap_or(0);
        let mut bonus = add(scale(earned_coins, c.bonus_percent, 100)?, c.bonus_coins)?;
        if let Some(cap) = c.max_coins_per_user {
            bonus = bonus.min(sub(cap, held)?.max(0));
        }
        if bonus > 0 {
            s.coins_by_campaign.insert(c.id.clone(), add(held, bonus)?);
            campaign_coins.push((c.id.clone(), bonus));
            coins_delta = add(coins_delta, bonus)?;
        }
    }

    // Missions, in config order.
    prune_missions(s, rules, r.issued_at);
    for m in &game.missions {
        let Some(key) = instance_key(m, rules, r.issued_at) else {
            continue;
        };
        if !counts_for(m, rules, &r.store_id) {
            continue;
        }
        let at = match s
            .missions
            .iter()
            .position(|i| i.mission_id == m.id && i.period == key)
        {
            Some(at) => at,
            None => {
                s.missions.push(MissionInstance {
                    mission_id: m.id.clone(),
                    period: key,
                    spend: 0,
                    receipts: 0,
                    stores: BTreeMap::new(),
                    completed: false,
                    completed_at: None,
                });
                s.missions.len() - 1
            }
        };
        let inst = &mut s.missions[at];
        inst.spend = add(inst.spend, r.amount)?;
        inst.receipts += 1;
        *inst.stores.entry(r.store_id.clone()).or_default() += 1;
        if !inst.completed && inst.progress(m.goal) >= m.target.value() {
            inst.completed = true;
            inst.completed_at = Some(r.issued_at);
            coins_delta = add(coins_delta, m.reward_coins)?;
            xp_delta = add(xp_delta, m.reward_xp)?;
            s.missions_completed += 1;
            events.push(Event::MissionCompleted(MissionEvent {
                user_id: s.user_id.clone(),
                mission_id: m.id.clone(),
                period: inst.period.clone(),
                reward_coins: m.reward_coins,
                reward_xp: m.reward_xp,
                receipt_id: r.receipt_id.clone(),
                at: r.issued_at,
            }));
        }
    }

    // One level-up check over all the XP the receipt added.
    let xp = add(s.xp, xp_delta)?;
    let level = rules.level_for(xp).max(s.level);
    let gained = level - s.level;
    if gained > 0 {
        let bonus = i64::from(gained)
            .checked_mul(rules.level_up_bonus_coins)
            .ok_or(Reject::Overflow)?;
        coins_delta = add(coins_delta, bonus)?;
        events.push(Event::LevelUp(LevelUp {
            user_id: s.user_id.clone(),
            from_level: s.level,
            to_level: level,
            bonus_coins: bonus,
            receipt_id: r.receipt_id.clone(),
            at: r.issued_at,
        }));
    }
    // The tier held when the purchase is applied (its own upgrade comes after).
    let tier_bonus = timers::tier_bonus(s, rules, earned_coins)?;
    coins_delta = add(coins_delta, tier_bonus)?;
    timers::credit(s, rules, rules.calendar().month(r.issued_at), coins_delta)?;
    s.xp = xp;
    s.level = level;
    s.total_spent = add(s.total_spent, r.amount)?;
    s.receipt_count += 1;
    if let Err(at) = s.stores.binary_search(&r.store_id) {
        s.stores.insert(at, r.store_id.clone());
    }
    s.first_receipt_at = Some(
        s.first_receipt_at
            .map_or(r.issued_at, |t| t.min(r.issued_at)),
    );
    s.last_receipt_at = Some(
        s.last_receipt_at
            .map_or(r.issued_at, |t| t.max(r.issued_at)),
    );
    let date = rules.calendar().date(r.issued_at);
    s.add_streak_unit(streak_unit(game.streaks.unit, date));
    award_badges(s, rules, r, &mut events);

    Ok(Effect::Applied {
        entry: LedgerEntry {
            kind: ReceiptKind::Purchase,
            store_id: r.store_id.clone(),
            amount: r.amount,
            issued_at: r.issued_at,
            earned_coins,
            earned_xp,
            refunded: 0,
            campaign_coins,
            tier_bonus,
            taken: Vec::new(),
        },
        original: None,
        events,
        coins_delta,
        attributed: vec![Attribution {
            at: r.issued_at,
            xp: xp_delta,
            coins: coins_delta,
            spent: r.amount,
        }],
    })
}

/// Drops the mission instances no receipt can change any more: those of periods that
/// ended before the dedup window reaching back from `t` (their purchases have left the
/// ledger, so no refund can find them, and a receipt that old is `too_old`).
fn prune_missions(s: &mut UserState, rules: &Rules, t: Timestamp) {
    let Some(window) = rules.game.window_secs else {
        return;
    };
    let oldest = Timestamp {
        secs: t.secs.saturating_sub(window),
        nanos: 0,
    };
    let cal = rules.calendar();
    let game = &rules.game;
    s.missions.retain(|i| {
        let Some(m) = game.missions.iter().find(|m| m.id == i.mission_id) else {
            return false; // a mission no longer configured
        };
        match m.period {
            MissionPeriod::Once => m.end.is_none_or(|e| e > oldest),
            MissionPeriod::Day => i.period >= cal.key(Period::Day, oldest),
            MissionPeriod::Week => i.period >= cal.key(Period::Week, oldest),
            MissionPeriod::Month => i.period >= cal.key(Period::Month, oldest),
        }
    });
}

fn award_badges(s: &mut UserState, rules: &Rules, r: &Receipt, events: &mut Vec<Event>) {
    use super::game::BadgeKind;
    for b in &rules.game.badges {
        if s.badges.contains(&b.id) {
            continue;
        }
        let figure = match b.kind {
            BadgeKind::Streak => s.streak_best(),
            BadgeKind::Stores => s.stores.len() as i64,
            BadgeKind::Receipts => i64::try_from(s.receipt_count).unwrap_or(i64::MAX),
            BadgeKind::Spend => s.total_spent,
            BadgeKind::Level => i64::from(s.level),
            BadgeKind::Missions => i64::try_from(s.missions_completed).unwrap_or(i64::MAX),
        };
        if figure >= b.threshold.value() {
            s.badges.push(b.id.clone());
            events.push(Event::BadgeEarned(BadgeEarned {
                user_id: s.user_id.clone(),
                badge_id: b.id.clone(),
                receipt_id: r.receipt_id.clone(),
                at: r.issued_at,
            }));
        }
    }
}

fn refund(
    s: &mut UserState,
    original: Option<&LedgerEntry>,
    r: &Receipt,
    rules: &Rules,
) -> Result<Effect, Reject> {
    let orig = match original {
        Some(e) if e.kind == ReceiptKind::Purchase => e,
        _ => return Err(Reject::UnknownOriginal),
    };
    let r0 = orig.refunded;
    let r1 = add(r0, r.amount)?;
    if r1 > orig.amount {
        return Err(Reject::RefundExceedsOriginal);
    }
    // floor(earned * R1 / amount) - floor(earned * R0 / amount): partial refunds add up
    // to exactly what the purchase earned, whatever their order and rounding.
    let back = |earned: i64| -> Result<i64, Reject> {
        sub(
            scale(earned, r1, orig.amount)?,
            scale(earned, r0, orig.amount)?,
        )
    };
    let mut coins_back = add(back(orig.earned_coins)?, back(orig.tier_bonus)?)?;
    let xp_back = back(orig.earned_xp)?;
    for (id, got) in &orig.campaign_coins {
        let c = back(*got)?;
        if c != 0 {
            let held = sub(s.coins_by_campaign.get(id).copied().unwrap_or(0), c)?;
            if held == 0 {
                s.coins_by_campaign.remove(id);
            } else {
                s.coins_by_campaign.insert(id.clone(), held);
            }
            coins_back = add(coins_back, c)?;
        }
    }
    let mut events = Vec::new();
    let mut attributed = vec![Attribution {
        at: orig.issued_at,
        xp: -xp_back,
        coins: -coins_back,
        spent: -r.amount,
    }];
    let mut revoked_coins = 0;
    let mut revoked_xp = 0;
    // The purchase's mission instances lose what it counted for.
    let fully = r1 == orig.amount;
    for m in &rules.game.missions {
        let Some(key) = instance_key(m, rules, orig.issued_at) else {
            continue;
        };
        if !counts_for(m, rules, &orig.store_id) {
            continue;
        }
        let Some(inst) = s
            .missions
            .iter_mut()
            .find(|i| i.mission_id == m.id && i.period == key)
        else {
            continue; // pruned: its purchases have left the ledger
        };
        inst.spend = sub(inst.spend, r.amount)?;
        if fully {
            inst.receipts = inst.receipts.saturating_sub(1);
            if let Some(n) = inst.stores.get_mut(&orig.store_id) {
                *n -= 1;
                if *n == 0 {
                    inst.stores.remove(&orig.store_id);
                }
            }
        }
        if m.on_refund == OnRefund::Revoke
            && inst.completed
            && inst.progress(m.goal) < m.target.value()
        {
            inst.completed = false;
            let completed_at = inst.completed_at.take().unwrap_or(orig.issued_at);
            revoked_coins = add(revoked_coins, m.reward_coins)?;
            revoked_xp = add(revoked_xp, m.reward_xp)?;
            attributed.push(Attribution {
                at: completed_at,
                xp: -m.reward_xp,
                coins: -m.reward_coins,
                spent: 0,
            });
            events.push(Event::MissionRevoked(MissionEvent {
                user_id: s.user_id.clone(),
                mission_id: m.id.clone(),
                period: key,
                reward_coins: m.reward_coins,
                reward_xp: m.reward_xp,
                receipt_id: r.receipt_id.clone(),
                at: r.issued_at,
            }));
        }
    }
    let taken_back = add(coins_back, revoked_coins)?;
    let coins_delta = -taken_back;
    // From the refunded purchase's lot first, then the oldest.
    let lot = rules.calendar().month(orig.issued_at);
    timers::debit(s, rules, Some(lot), taken_back)?;
    s.xp = sub(sub(s.xp, xp_back)?, revoked_xp)?;
    s.total_spent = sub(s.total_spent, r.amount)?;
    s.refund_count += 1;
    award_badges(s, rules, r, &mut events);
    let mut updated = orig.clone();
    updated.refunded = r1;
    Ok(Effect::Applied {
        entry: entry_of(r),
        original: Some(updated),
        events,
        coins_delta,
        attributed,
    })
}

/// The ledger entry of a receipt that earns nothing itself.
fn entry_of(r: &Receipt) -> LedgerEntry {
    LedgerEntry {
        kind: r.kind.clone(),
        store_id: r.store_id.clone(),
        amount: r.amount,
        issued_at: r.issued_at,
        earned_coins: 0,
        earned_xp: 0,
        refunded: 0,
        campaign_coins: Vec::new(),
        tier_bonus: 0,
        taken: Vec::new(),
    }
}

fn redemption(s: &mut UserState, r: &Receipt, coins: i64, rules: &Rules) -> Result<Effect, Reject> {
    if s.coins < coins {
        return Err(Reject::InsufficientCoins);
    }
    // The oldest lots first.
    let taken = timers::debit(s, rules, None, coins)?;
    s.coins_redeemed = add(s.coins_redeemed, coins)?;
    s.redemptions += 1;
    Ok(Effect::Applied {
        entry: LedgerEntry {
            taken,
            ..entry_of(r)
        },
        original: None,
        events: Vec::new(),
        coins_delta: 0,
        attributed: Vec::new(),
    })
}

fn reversal(
    s: &mut UserState,
    original: Option<&LedgerEntry>,
    r: &Receipt,
    rules: &Rules,
) -> Result<Effect, Reject> {
    let (orig, coins) = match original {
        Some(e) => match e.kind {
            ReceiptKind::Redemption { coins } => (e, coins),
            _ => return Err(Reject::UnknownOriginal),
        },
        None => return Err(Reject::UnknownOriginal),
    };
    if orig.refunded != 0 {
        return Err(Reject::RefundExceedsOriginal);
    }
    // Debt first, then back to the lots they were taken from, oldest first.
    let month = rules.calendar().month(r.issued_at);
    timers::give_back(s, rules, &orig.taken, month, coins)?;
    s.coins_redeemed = sub(s.coins_redeemed, coins)?;
    let mut updated = orig.clone();
    updated.refunded = coins;
    Ok(Effect::Applied {
        entry: entry_of(r),
        original: Some(updated),
        events: Vec::new(),
        coins_delta: 0,
        attributed: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    fn purchase_of(id: &str, store: &str, amount: Minor) -> Receipt {
        Receipt {
            receipt_id: id.into(),
            user_id: "u-1".into(),
            store_id: store.into(),
            amount,
            issued_at: ts("2026-11-18T10:00:00Z"),
            kind: ReceiptKind::Purchase,
        }
    }

    fn refund_of(id: &str, of: &str, amount: Minor) -> Receipt {
        Receipt {
            kind: ReceiptKind::Refund {
                refund_of: of.into(),
            },
            ..purchase_of(id, "s-1", amount)
        }
    }

    const SRC: Source = Source {
        partition: 0,
        offset: 7,
    };

    fn applied(e: Effect) -> (LedgerEntry, Option<LedgerEntry>, Option<LevelUp>) {
        match e {
            Effect::Applied {
                entry,
                original,
                events,
                ..
            } => {
                let level_up = events.into_iter().find_map(|e| match e {
                    Event::LevelUp(l) => Some(l),
                    _ => None,
                });
                (entry, original, level_up)
            }
            Effect::Duplicate => panic!("expected an applied effect"),
        }
    }

    #[test]
    fn purchase_earns_coins_xp_and_counts() {
        let rules = Rules::default();
        let mut s = UserState::new("u-1");
        let (entry, _, up) = applied(
            apply(
                &mut s,
                None,
                None,
                &purchase_of("r-1", "s-1", 1234),
                SRC,
                &rules,
            )
            .unwrap(),
        );
        assert_eq!(entry.earned_coins, 12);
        assert_eq!(entry.earned_xp, 10 + 12);
        assert_eq!((s.coins, s.xp, s.level), (12, 22, 1));
        assert_eq!((s.total_spent, s.receipt_count, s.version), (1234, 1, 1));
        assert_eq!(s.stores, vec!["s-1".to_string()]);
        assert_eq!(s.source, Some(SRC));
        assert!(up.is_none());
    }

    #[test]
    fn store_multiplier_scales_coins_and_floors() {
        let mut rules = Rules::default();
        rules.store_multipliers.insert("s-07".into(), 200);
        rules.store_multipliers.insert("s-13".into(), 150);
        let mut s = UserState::new("u-1");
        apply(
            &mut s,
            None,
            None,
            &purchase_of("r-1", "s-07", 85),
            SRC,
            &rules,
        )
        .unwrap();
        assert_eq!(s.coins, 1, "floor(85 * 200 / 10000) = 1");
        apply(
            &mut s,
            None,
            None,
            &purchase_of("r-2", "s-13", 199),
            SRC,
            &rules,
        )
        .unwrap();
        assert_eq!(s.coins, 1 + 2, "floor(199 * 150 / 10000) = 2");
    }

    #[test]
    fn level_up_grants_bonus_per_level_and_reports_it() {
        let rules = Rules::default();
        let mut s = UserState::new("u-1");
        // 480.61 -> xp 10 + 480 = 490 -> isqrt(4) = 2 -> level 3: two levels gained.
        let (_, _, up) = applied(
            apply(
                &mut s,
                None,
                None,
                &purchase_of("r-1", "s-1", 48061),
                SRC,
                &rules,
            )
            .unwrap(),
        );
        let up = up.unwrap();
        assert_eq!((up.from_level, up.to_level, up.bonus_coins), (1, 3, 100));
        assert_eq!(s.coins, 480 + 100);
        assert_eq!(s.level, 3);
    }

    #[test]
    fn refunds_reverse_earnings_proportionally_and_keep_level() {
        let rules = Rules::default();
        let mut s = UserState::new("u-1");
        let (orig, _, _) = applied(
            apply(
                &mut s,
                None,
                None,
                &purchase_of("r-1", "s-1", 48061),
                SRC,
                &rules,
            )
            .unwrap(),
        );
        let (_, updated, _) = applied(
            apply(
                &mut s,
                None,
                Some(&orig),
                &refund_of("f-1", "r-1", 24000),
                SRC,
                &rules,
            )
            .unwrap(),
        );
        let updated = updated.unwrap();
        assert_eq!(updated.refunded, 24000);
        assert_eq!(s.coins, 580 - 480 * 24000 / 48061);
        assert_eq!(s.level, 3, "levels never go down");
        let (_, _, _) = applied(
            apply(
                &mut s,
                None,
                Some(&updated),
                &refund_of("f-2", "r-1", 24061),
                SRC,
                &rules,
            )
            .unwrap(),
        );
        assert_eq!(s.coins, 100, "a full refund leaves only the level bonus");
        assert_eq!(s.xp, 0);
        assert_eq!((s.total_spent, s.refund_count, s.version), (0, 2, 3));
    }

    #[test]
    fn refund_beyond_original_is_rejected_and_changes_nothing() {
        let rules = Rules::default();
        let mut s = UserState::new("u-1");
        let (orig, _, _) = applied(
            apply(
                &mut s,
                None,
                None,
                &purchase_of("r-1", "s-1", 1000),
                SRC,
                &rules,
            )
            .unwrap(),
        );
        let before = s.clone();
        let err = apply(
            &mut s,
            None,
            Some(&orig),
            &refund_of("f-1", "r-1", 1001),
            SRC,
            &rules,
        );
        assert_eq!(err, Err(Reject::RefundExceedsOriginal));
        assert_eq!(s, before);
    }

    #[test]
    fn refund_of_unknown_or_refund_receipt_is_unknown_original() {
        let rules = Rules::default();
        let mut s = UserState::new("u-1");
        let r = refund_of("f-1", "r-x", 100);
        assert_eq!(
            apply(&mut s, None, None, &r, SRC, &rules),
            Err(Reject::UnknownOriginal)
        );
        let refund_entry = LedgerEntry {
            kind: ReceiptKind::Refund {
                refund_of: "r-0".into(),
            },
            store_id: "s-1".into(),
            amount: 500,
            issued_at: ts("2026-11-18T10:00:00Z"),
            earned_coins: 0,
            earned_xp: 0,
            refunded: 0,
            campaign_coins: Vec::new(),
            tier_bonus: 0,
            taken: Vec::new(),
        };
        assert_eq!(
            apply(&mut s, None, Some(&refund_entry), &r, SRC, &rules),
            Err(Reject::UnknownOriginal)
        );
    }

    #[test]
    fn exact_duplicate_changes_nothing_and_a_different_one_conflicts() {
        let rules = Rules::default();
        let mut s = UserState::new("u-1");
        let p = purchase_of("r-1", "s-1", 1000);
        let (entry, _, _) = applied(apply(&mut s, None, None, &p, SRC, &rules).unwrap());
        let before = s.clone();
        assert_eq!(
            apply(&mut s, Some(&entry), None, &p, SRC, &rules),
            Ok(Effect::Duplicate)
        );
        let changed = purchase_of("r-1", "s-1", 1001);
        assert_eq!(
            apply(&mut s, Some(&entry), None, &changed, SRC, &rules),
            Err(Reject::ConflictingDuplicate)
        );
        assert_eq!(s, before);
    }

    #[test]
    fn first_and_last_receipt_at_are_min_and_max() {
        let rules = Rules::default();
        let mut s = UserState::new("u-1");
        let mut late = purchase_of("r-1", "s-1", 100);
        late.issued_at = ts("2026-11-18T12:00:00Z");
        let mut early = purchase_of("r-2", "s-2", 100);
        early.issued_at = ts("2026-11-18T09:00:00Z");
        apply(&mut s, None, None, &late, SRC, &rules).unwrap();
        apply(&mut s, None, None, &early, SRC, &rules).unwrap();
        assert_eq!(s.first_receipt_at, Some(early.issued_at));
        assert_eq!(s.last_receipt_at, Some(late.issued_at));
        assert_eq!(s.stores.len(), 2);
    }

    #[test]
    fn overflowing_totals_are_rejected_not_wrapped() {
        let rules = Rules::default();
        let mut s = UserState::new("u-1");
        s.total_spent = i64::MAX - 10;
        let before = s.clone();
        assert_eq!(
            apply(
                &mut s,
                None,
                None,
                &purchase_of("r-1", "s-1", 1000),
                SRC,
                &rules
            ),
            Err(Reject::Overflow)
        );
        assert_eq!(s, before);
    }

    // ---- The game's rules, one at a time (README, "The game"). ----

    use std::collections::HashMap;

    /// One user folded receipt by receipt, with its ledger, as the pipeline does.
    struct Player {
        s: UserState,
        ledger: HashMap<String, LedgerEntry>,
        rules: Rules,
        events: Vec<Event>,
        offset: i64,
    }

    impl Player {
        fn new(game: &str) -> Self {
            let mut rules = Rules {
                timezone: crate::domain::Calendar::new("UTC").unwrap(),
                ..Rules::default()
            };
            rules.game = toml::from_str(game).unwrap();
            rules.game.validate().unwrap();
            rules.game.window_secs = Some(90 * 86_400);
            Self {
                s: UserState::new("u-1"),
                ledger: HashMap::new(),
                rules,
                events: Vec::new(),
                offset: 0,
            }
        }

        fn feed(&mut self, r: Receipt) -> Result<(), Reject> {
            self.offset += 1;
            let existing = self.ledger.get(&r.receipt_id).cloned();
            let original = r.kind.refund_of().and_then(|o| self.ledger.get(o)).cloned();
            let src = Source {
                partition: 0,
                offset: self.offset,
            };
            match apply(
                &mut self.s,
                existing.as_ref(),
                original.as_ref(),
                &r,
                src,
                &self.rules,
            )? {
                Effect::Duplicate => {}
                Effect::Applied {
                    entry,
                    original: updated,
                    events,
                    ..
                } => {
                    if let (Some(u), Some(of)) = (updated, r.kind.refund_of()) {
                        self.ledger.insert(of.to_owned(), u);
                    }
                    self.ledger.insert(r.receipt_id.clone(), entry);
                    self.events.extend(events);
                }
            }
            Ok(())
        }

        fn buy(&mut self, id: &str, store: &str, amount: Minor, at: &str) -> Result<(), Reject> {
            self.feed(Receipt {
                issued_at: ts(at),
                ..purchase_of(id, store, amount)
            })
        }

        fn refund(&mut self, id: &str, of: &str, amount: Minor, at: &str) -> Result<(), Reject> {
            self.feed(Receipt {
                issued_at: ts(at),
                ..refund_of(id, of, amount)
            })
        }

        fn redeem(&mut self, id: &str, coins: i64) -> Result<(), Reject> {
            self.feed(Receipt {
                kind: ReceiptKind::Redemption { coins },
                amount: 0,
                ..purchase_of(id, "desk", 0)
            })
        }

        fn reverse(&mut self, id: &str, of: &str) -> Result<(), Reject> {
            self.feed(Receipt {
                kind: ReceiptKind::RedemptionReversal {
                    refund_of: of.into(),
                },
                amount: 0,
                ..purchase_of(id, "desk", 0)
            })
        }

        fn kinds(&self) -> Vec<&'static str> {
            self.events
                .iter()
                .map(|e| match e {
                    Event::LevelUp(_) => "level_up",
                    Event::MissionCompleted(_) => "mission_completed",
                    Event::MissionRevoked(_) => "mission_revoked",
                    Event::BadgeEarned(_) => "badge_earned",
                    Event::CoinsExpired(_) => "coins_expired",
                    Event::TierChanged(_) => "tier_changed",
                })
                .collect()
        }
    }

    const DAY1: &str = "2026-11-18T10:00:00Z";
    const DAY2: &str = "2026-11-19T10:00:00Z";
    const DAY3: &str = "2026-11-20T10:00:00Z";

    #[test]
    fn a_campaign_applies_in_its_window_store_and_minimum_up_to_its_cap_and_refunds_give_back() {
        let mut p = Player::new(
            r#"
            [[campaigns]]
            id = "c"
            start = "2026-11-18T00:00:00Z"
            end = "2026-11-20T00:00:00Z"
            stores = ["s-1"]
            min_amount = "10.00"
            bonus_percent = 100
            bonus_coins = 2
            max_coins_per_user = 30
            "#,
        );
        p.buy("r-1", "s-1", 2000, DAY1).unwrap(); // 20 base + 20 + 2
        assert_eq!(p.s.coins_by_campaign["c"], 22);
        p.buy("r-2", "s-2", 2000, DAY1).unwrap(); // another store
        p.buy("r-3", "s-1", 500, DAY1).unwrap(); // under min_amount
        p.buy("r-4", "s-1", 2000, DAY3).unwrap(); // after the end (exclusive)
        assert_eq!(p.s.coins_by_campaign["c"], 22);
        p.buy("r-5", "s-1", 2000, "2026-11-19T23:59:59Z").unwrap(); // 22, capped at 8
        assert_eq!(p.s.coins_by_campaign["c"], 30);
        assert_eq!(p.ledger["r-5"].campaign_coins, vec![("c".to_owned(), 8)]);
        let before = p.s.coins;
        p.refund("f-1", "r-1", 1000, DAY2).unwrap(); // half: 10 base and 11 campaign back
        assert_eq!(p.s.coins, before - 10 - 11);
        assert_eq!(p.s.coins_by_campaign["c"], 19);
        p.buy("r-6", "s-1", 2000, DAY2).unwrap(); // the cap has 11 left again
        assert_eq!(p.s.coins_by_campaign["c"], 30);
        assert_eq!(
            p.s.xp,
            5 * (10 + 20) + (10 + 5) - 15,
            "campaign coins give no XP"
        );
    }

    #[test]
    fn redemptions_spend_at_most_the_balance_and_reverse_once() {
        let mut p = Player::new("");
        p.buy("r-1", "s-1", 5000, DAY1).unwrap(); // 50 coins
        assert_eq!(p.redeem("x-1", 51), Err(Reject::InsufficientCoins));
        p.redeem("x-2", 50).unwrap(); // exactly the balance
        assert_eq!((p.s.coins, p.s.redemptions, p.s.coins_redeemed), (0, 1, 50));
        assert_eq!(
            (p.s.version, p.s.receipt_count),
            (2, 1),
            "counts in version only"
        );
        assert_eq!(p.reverse("v-1", "r-1"), Err(Reject::UnknownOriginal));
        assert_eq!(
            p.reverse("v-2", "x-1"),
            Err(Reject::UnknownOriginal),
            "rejected ones are unknown"
        );
        assert_eq!(
            p.refund("f-0", "x-2", 100, DAY1),
            Err(Reject::UnknownOriginal)
        );
        p.reverse("v-3", "x-2").unwrap();
        assert_eq!((p.s.coins, p.s.redemptions, p.s.coins_redeemed), (50, 1, 0));
        assert_eq!(p.reverse("v-4", "x-2"), Err(Reject::RefundExceedsOriginal));
        // A refund after a redemption may take the balance below zero.
        p.redeem("x-3", 50).unwrap();
        p.refund("f-1", "r-1", 5000, DAY2).unwrap();
        assert_eq!(p.s.coins, -50);
        assert_eq!(p.redeem("x-4", 1), Err(Reject::InsufficientCoins));
    }

    const REVOKING_DAY: &str = r#"
        [[missions]]
        id = "big-day"
        period = "day"
        goal = "spend"
        target = "50.00"
        reward_coins = 40
        reward_xp = 1000
        on_refund = "revoke"
        "#;

    #[test]
    fn a_revoking_mission_completes_is_revoked_below_target_and_completes_again() {
        let mut p = Player::new(REVOKING_DAY);
        p.buy("r-1", "s-1", 6000, DAY1).unwrap();
        assert_eq!(
            p.kinds(),
            ["mission_completed", "level_up"],
            "mission before level-up"
        );
        let level = p.s.level;
        assert!(level > 1);
        let (coins, xp) = (p.s.coins, p.s.xp);
        p.refund("f-1", "r-1", 1000, DAY2).unwrap(); // 50.00 left: still at the target
        assert_eq!(p.kinds().len(), 2);
        p.refund("f-2", "r-1", 1, DAY2).unwrap(); // 49.99: below
        let Some(Event::MissionRevoked(m)) = p.events.last() else {
            panic!("{:?}", p.events)
        };
        assert_eq!(
            (m.period.as_str(), m.receipt_id.as_str()),
            ("2026-11-18", "f-2")
        );
        assert_eq!(m.at, ts(DAY2), "the refund's own time");
        assert_eq!(p.s.coins, coins - 10 - 40, "10 base back, the reward back");
        assert_eq!(p.s.xp, xp - 11 - 1000);
        assert_eq!(p.s.level, level, "levels never go down");
        // A later purchase the same day completes it again; one on another day does not.
        p.buy("r-2", "s-1", 100, DAY3).unwrap();
        assert!(!p
            .s
            .missions
            .iter()
            .any(|m| m.period == "2026-11-18" && m.completed));
        p.buy("r-3", "s-2", 100, "2026-11-18T23:00:00Z").unwrap();
        assert!(matches!(p.events.last(), Some(Event::MissionCompleted(_))));
        assert_eq!(p.s.missions_completed, 2, "completions ever");
    }

    #[test]
    fn a_keeping_mission_stays_completed_and_never_pays_twice() {
        let mut p = Player::new(&REVOKING_DAY.replace("\"revoke\"", "\"keep\""));
        p.buy("r-1", "s-1", 6000, DAY1).unwrap();
        p.refund("f-1", "r-1", 6000, DAY1).unwrap();
        p.buy("r-2", "s-1", 6000, DAY1).unwrap();
        let completions = p
            .kinds()
            .iter()
            .filter(|k| **k == "mission_completed")
            .count();
        assert_eq!(completions, 1);
        assert!(!p.kinds().contains(&"mission_revoked"));
    }

    #[test]
    fn store_and_receipt_goals_count_purchases_not_fully_refunded() {
        let mut p = Player::new(
            r#"
            [[missions]]
            id = "stores"
            period = "week"
            goal = "stores"
            target = 3
            reward_coins = 1
            [[missions]]
            id = "receipts"
            period = "month"
            goal = "receipts"
            target = 9
            "#,
        );
        p.buy("r-1", "s-1", 1000, DAY1).unwrap();
        p.buy("r-2", "s-2", 1000, DAY1).unwrap();
        p.buy("r-3", "s-2", 1000, DAY2).unwrap();
        p.refund("f-1", "r-2", 1000, DAY2).unwrap(); // s-2 still has r-3
        p.refund("f-2", "r-1", 500, DAY2).unwrap(); // partly: s-1 still counts
        let week =
            p.s.missions
                .iter()
                .find(|m| m.mission_id == "stores")
                .unwrap();
        assert_eq!(week.stores.len(), 2);
        assert_eq!(week.period, "2026-W47");
        let month =
            p.s.missions
                .iter()
                .find(|m| m.mission_id == "receipts")
                .unwrap();
        assert_eq!((month.receipts, month.period.as_str()), (2, "2026-11"));
        p.buy("r-4", "s-3", 1000, DAY3).unwrap();
        assert_eq!(p.kinds(), ["mission_completed"]);
    }

    #[test]
    fn a_once_mission_counts_from_its_start_inclusive_to_its_end_exclusive() {
        let mut p = Player::new(
            r#"
            [[missions]]
            id = "once"
            period = "once"
            start = "2026-11-18T10:00:00Z"
            end = "2026-11-19T10:00:00Z"
            goal = "receipts"
            target = 2
            reward_coins = 5
            "#,
        );
        p.buy("r-0", "s-1", 100, "2026-11-18T09:59:59Z").unwrap();
        p.buy("r-1", "s-1", 100, DAY1).unwrap();
        p.buy("r-2", "s-1", 100, DAY2).unwrap();
        assert!(p.events.is_empty(), "only r-1 is inside");
        p.buy("r-3", "s-1", 100, "2026-11-19T09:59:59Z").unwrap();
        let Some(Event::MissionCompleted(m)) = p.events.last() else {
            panic!()
        };
        assert_eq!((m.period.as_str(), m.receipt_id.as_str()), ("once", "r-3"));
    }

    #[test]
    fn a_late_receipt_fills_its_gap_and_joins_two_streak_runs() {
        let mut p =
            Player::new("[[badges]]\nid = \"streak-3\"\nkind = \"streak\"\nthreshold = 3\n");
        p.buy("r-1", "s-1", 100, DAY1).unwrap();
        p.buy("r-2", "s-1", 100, DAY3).unwrap();
        assert_eq!((p.s.streak_current(), p.s.streak_best()), (1, 1));
        p.buy("r-3", "s-1", 100, DAY3).unwrap(); // same day: no change
        assert_eq!(p.s.streak_runs.len(), 2);
        p.buy("r-4", "s-1", 100, DAY2).unwrap(); // late
        assert_eq!((p.s.streak_current(), p.s.streak_best()), (3, 3));
        assert_eq!(p.kinds(), ["badge_earned"]);
        p.refund("f-1", "r-4", 100, DAY3).unwrap();
        assert_eq!(p.s.streak_best(), 3, "refunds do not break streaks");
        p.buy("r-5", "s-1", 100, "2026-11-25T10:00:00Z").unwrap();
        assert_eq!((p.s.streak_current(), p.s.streak_best()), (1, 3));
    }

    #[test]
    fn badges_are_earned_once_in_config_order_and_never_revoked() {
        let mut p = Player::new(
            r#"
            [[badges]]
            id = "spender"
            kind = "spend"
            threshold = "100.00"
            [[badges]]
            id = "two-stores"
            kind = "stores"
            threshold = 2
            "#,
        );
        p.buy("r-1", "s-1", 10_000, DAY1).unwrap();
        assert_eq!(p.s.badges, ["spender"]);
        p.refund("f-1", "r-1", 5_000, DAY1).unwrap();
        p.buy("r-2", "s-2", 5_000, DAY2).unwrap(); // spend back at 100.00: not again
        assert_eq!(p.s.badges, ["spender", "two-stores"]);
        assert_eq!(p.kinds(), ["level_up", "badge_earned", "badge_earned"]);
    }

    #[test]
    fn period_scores_go_to_the_purchase_s_periods_and_only_the_latest_are_kept() {
        let mut p = Player::new("");
        p.rules.game.periods_kept = Some(2);
        p.buy("r-1", "s-1", 1000, DAY1).unwrap();
        p.refund("f-1", "r-1", 400, DAY3).unwrap(); // back to day 1, not day 3
        let day = |p: &Player, key: &str| {
            p.s.periods
                .iter()
                .find(|s| s.kind == Period::Day && s.key == key)
                .map(|s| (s.xp, s.coins, s.spent))
        };
        assert_eq!(day(&p, "2026-11-18"), Some((20 - 8, 10 - 4, 600)));
        assert_eq!(
            day(&p, "2026-11-20"),
            None,
            "nothing attributed to the refund's day"
        );
        p.buy("r-2", "s-1", 1000, DAY2).unwrap();
        p.buy("r-3", "s-1", 1000, DAY3).unwrap();
        assert_eq!(day(&p, "2026-11-18"), None, "two newer days: dropped");
        let days = p.s.periods.iter().filter(|s| s.kind == Period::Day).count();
        assert_eq!(days, 2);
        // A late receipt for a day older than both kept ones is not recorded.
        p.buy("r-4", "s-1", 1000, "2026-11-17T10:00:00Z").unwrap();
        assert_eq!(day(&p, "2026-11-17"), None);
        assert_eq!(
            p.s.periods
                .iter()
                .filter(|s| s.kind == Period::Week)
                .count(),
            1
        );
    }
}

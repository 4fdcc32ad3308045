//! Time in the game: coins that expire in monthly lots (`[expiry]`), status tiers that go
//! up at once and down at monthly reviews (`[tiers]`), and the timers that do both.
//!
//! A timer is an instant at which something happens to one user: a lot's expiry (the
//! start of the mall-local month `months` after the month it was earned in) or a tier
//! review (every month start after the user got a tier). Timers never read the wall
//! clock: the pipeline fires them when a partition's event-time mark reaches them
//! ([`fire_until`]), so a replay or a rebuild fires the same timers in the same order.
//!
//! Every coin credited goes into the lot of its receipt's month after paying any debt
//! ([`credit`]); debits take from a given lot first, then the oldest ([`debit`]); so a
//! user with debt (negative coins) never holds a non-empty lot, and otherwise `coins` is
//! the sum of the lots. Without `[expiry]` no lot is kept and coins never expire.

use serde::{Deserialize, Serialize};

use super::fold::{Event, UserState};
use super::money::{format_minor, Minor};
use super::{Reject, Rules, Timestamp};

/// Default of `[expiry] months`.
pub const DEFAULT_EXPIRY_MONTHS: u32 = 12;
/// Default of `[tiers] window_months`.
pub const DEFAULT_WINDOW_MONTHS: u32 = 12;

/// `[expiry]`: coins expire in monthly lots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawExpiry")]
pub struct Expiry {
    /// Coins earned in month M expire at the start of month M + `months` (1 to 120).
    pub months: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpiry {
    #[serde(default = "default_expiry_months")]
    months: u32,
}

fn default_expiry_months() -> u32 {
    DEFAULT_EXPIRY_MONTHS
}

impl TryFrom<RawExpiry> for Expiry {
    type Error = String;

    fn try_from(raw: RawExpiry) -> Result<Self, String> {
        if !(1..=120).contains(&raw.months) {
            return Err(format!("expiry.months: {} must be 1 to 120", raw.months));
        }
        Ok(Expiry { months: raw.months })
    }
}

/// What a tier's qualifying figure counts: net spend or XP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// Net spend (the monthly `spent` board's score), in minor units.
    #[default]
    Spend,
    /// XP (the monthly `xp` board's score).
    Xp,
}

/// Where a review below a tier's minimum takes the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Downgrade {
    /// One level down (to no tier below the first).
    #[default]
    OneDown,
    /// To the highest level the figure reaches (possibly none).
    ToQualified,
}

/// `[tiers]`: status levels, ascending.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawTiers")]
pub struct Tiers {
    /// What the qualifying figure counts.
    pub basis: Basis,
    /// The figure sums this many mall-local months (1 to 120).
    pub window_months: u32,
    /// What a review below the tier's minimum does.
    pub downgrade: Downgrade,
    /// The levels, strictly ascending by `min`; at least one.
    pub levels: Vec<TierLevel>,
}

/// One `[[tiers.levels]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierLevel {
    /// Its name, in projections and events.
    pub id: String,
    /// The figure that reaches it: minor units (basis `spend`) or XP.
    pub min: i64,
    /// Extra coins on purchases while held: floor(base coins * percent / 100).
    pub bonus_percent: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTiers {
    #[serde(default)]
    basis: Basis,
    #[serde(default = "default_window_months")]
    window_months: u32,
    #[serde(default)]
    downgrade: Downgrade,
    #[serde(default)]
    levels: Vec<RawLevel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLevel {
    id: String,
    min: RawMin,
    #[serde(default)]
    bonus_percent: i64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawMin {
    Amount(String),
    Xp(i64),
}

fn default_window_months() -> u32 {
    DEFAULT_WINDOW_MONTHS
}

impl TryFrom<RawTiers> for Tiers {
    type Error = String;

    fn try_from(raw: RawTiers) -> Result<Self, String> {
        if !(1..=120).contains(&raw.window_months) {
            return Err(format!(
                "tiers.window_months: {} must be 1 to 120",
                raw.window_months
            ));
        }
        if raw.levels.is_empty() {
            return Err("tiers.levels: [tiers] needs at least one [[tiers.levels]]".to_owned());
        }
        let mut levels: Vec<TierLevel> = Vec::with_capacity(raw.levels.len());
        for l in raw.levels {
            let valid =
                !l.id.is_empty() && l.id.len() <= 128 && !l.id.chars().any(char::is_control);
            if !valid || levels.iter().any(|x| x.id == l.id) {
                return Err(format!(
                    "tiers.levels.id: {:?} must be 1 to 128 characters and unique",
                    l.id
                ));
            }
            let min = match (raw.basis, l.min) {
                (Basis::Spend, RawMin::Amount(text)) => parse_threshold(&text)
                    .ok_or_else(|| {
                        format!("tiers.levels.min: {:?} of {:?} is not an amount such as \"1000.00\"", text, l.id)
                    })?,
                (Basis::Spend, RawMin::Xp(n)) => {
                    return Err(format!(
                        "tiers.levels.min: {n} of {:?} must be an amount string such as \"1000.00\" with basis = \"spend\"",
                        l.id
                    ))
                }
                (Basis::Xp, RawMin::Xp(n)) if n >= 0 => n,
                (Basis::Xp, _) => {
                    return Err(format!(
                        "tiers.levels.min: {:?} must be a whole number of XP, 0 or more, with basis = \"xp\"",
                        l.id
                    ))
                }
            };
            if !(0..=1000).contains(&l.bonus_percent) {
                return Err(format!(
                    "tiers.levels.bonus_percent: {} of {:?} must be 0 to 1000",
                    l.bonus_percent, l.id
                ));
            }
            if levels.last().is_some_and(|prev| prev.min >= min) {
                return Err(format!(
                    "tiers.levels.min: {:?} must be above the level before it (levels ascend)",
                    l.id
                ));
            }
            levels.push(TierLevel {
                id: l.id,
                min,
                bonus_percent: l.bonus_percent,
            });
        }
        Ok(Tiers {
            basis: raw.basis,
            window_months: raw.window_months,
            downgrade: raw.downgrade,
            levels,
        })
    }
}

/// A spend threshold: a non-negative decimal with at most two decimals (`"1000"`,
/// `"2500000.50"`), in minor units; no cap but i64's (a figure sums many receipts).
fn parse_threshold(text: &str) -> Option<i64> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) || frac.len() > 2 {
        return None;
    }
    let cents = format!("{frac:0<2}").parse::<i64>().ok()?;
    whole
        .parse::<i64>()
        .ok()?
        .checked_mul(100)?
        .checked_add(cents)
}

impl Tiers {
    /// The index of the level named `id`.
    fn level_of(&self, id: &str) -> Option<usize> {
        self.levels.iter().position(|l| l.id == id)
    }

    /// The highest level `figure` reaches.
    fn reached(&self, figure: i64) -> Option<usize> {
        self.levels.iter().rposition(|l| figure >= l.min)
    }
}

/// The tier a user holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierHeld {
    /// The level's id.
    pub id: String,
    /// When the user got it (moved up to it, or down to it at a review).
    pub since: Timestamp,
}

/// A qualifying figure, as the projection shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Figure {
    /// Net spend, in minor units.
    Spend(Minor),
    /// XP.
    Xp(i64),
}

impl Figure {
    /// The JSON value: a money string for spend, a number for XP.
    pub fn to_json(self) -> serde_json::Value {
        match self {
            Figure::Spend(m) => serde_json::Value::String(format_minor(m)),
            Figure::Xp(x) => serde_json::Value::from(x),
        }
    }
}

/// `coins_expired`: what was left of a lot at its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoinsExpired {
    /// The shopper.
    pub user_id: String,
    /// Coins removed.
    pub coins: i64,
    /// The mall-local month the lot was earned in: `2026-03`.
    pub earned_in: String,
    /// The lot's expiry instant.
    pub at: Timestamp,
}

/// Why a tier changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierReason {
    /// A record took the figure to a higher level.
    Qualified,
    /// A monthly review found the figure below the tier's minimum.
    Review,
}

impl TierReason {
    /// The `reason` field.
    pub fn as_str(self) -> &'static str {
        match self {
            TierReason::Qualified => "qualified",
            TierReason::Review => "review",
        }
    }
}

/// `tier_changed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierChanged {
    /// The shopper.
    pub user_id: String,
    /// The tier before (`None`: no tier).
    pub from: Option<String>,
    /// The tier after (`None`: no tier).
    pub to: Option<String>,
    /// Qualified or review.
    pub reason: TierReason,
    /// When: the mark the record left (qualified) or the month start (review).
    pub at: Timestamp,
}

/// `2026-03`: the label of month number `month` ([`super::Calendar::month`]).
pub fn month_label(month: i32) -> String {
    let (year, m) = (month.div_euclid(12), month.rem_euclid(12) + 1);
    // As a month's period key prints it (chrono's `%Y`): four digits, and a sign before
    // a year before 1 (never from a receipt, whose year is checked).
    if year < 0 {
        format!("-{:04}-{m:02}", -i64::from(year))
    } else {
        format!("{year:04}-{m:02}")
    }
}

fn add(a: i64, b: i64) -> Result<i64, Reject> {
    a.checked_add(b).ok_or(Reject::Overflow)
}

fn sub(a: i64, b: i64) -> Result<i64, Reject> {
    a.checked_sub(b).ok_or(Reject::Overflow)
}

/// Adds `coins` to lot `month`, keeping the lots sorted and without empty ones.
fn fill(s: &mut UserState, month: i32, coins: i64) -> Result<(), Reject> {
    if coins <= 0 {
        return Ok(());
    }
    match s.lots.binary_search_by_key(&month, |l| l.0) {
        Ok(at) => s.lots[at].1 = add(s.lots[at].1, coins)?,
        Err(at) => s.lots.insert(at, (month, coins)),
    }
    Ok(())
}

/// Credits `coins` (0 or more) earned in `month`: they pay any debt first, and the rest
/// goes into the month's lot (with `[expiry]`).
pub(crate) fn credit(
    s: &mut UserState,
    rules: &Rules,
    month: i32,
    coins: i64,
) -> Result<(), Reject> {
    if coins < 0 {
        return debit(s, rules, Some(month), -coins).map(drop);
    }
    let debt = s.coins.saturating_neg().max(0);
    s.coins = add(s.coins, coins)?;
    if rules.game.expiry.is_none() {
        // Lots kept from a run with `[expiry]` no longer match the coins: they go, and
        // the coins are in no lot (as if earned before `[expiry]` was configured).
        s.lots.clear();
        return Ok(());
    }
    fill(s, month, coins - coins.min(debt))
}

/// Takes `coins` (0 or more): from lot `first` when given, then from the oldest lots
/// (with `[expiry]`); what the lots cannot cover becomes debt. Returns what it took from
/// each lot, oldest first.
pub(crate) fn debit(
    s: &mut UserState,
    rules: &Rules,
    first: Option<i32>,
    coins: i64,
) -> Result<Vec<(i32, i64)>, Reject> {
    s.coins = sub(s.coins, coins)?;
    let mut taken = Vec::new();
    if rules.game.expiry.is_none() {
        s.lots.clear();
        return Ok(taken);
    }
    let mut left = coins;
    let order = first
        .and_then(|m| s.lots.binary_search_by_key(&m, |l| l.0).ok())
        .into_iter()
        .chain(0..s.lots.len());
    for at in order {
        if left == 0 {
            break;
        }
        let lot = &mut s.lots[at];
        let take = lot.1.min(left);
        if take > 0 {
            lot.1 -= take;
            left -= take;
            taken.push((lot.0, take));
        }
    }
    s.lots.retain(|l| l.1 > 0);
    taken.sort_unstable();
    // One lot taken from twice (first, then again among the oldest) cannot happen: the
    // first pass empties it or covers everything. Merge anyway, so that the list is a map.
    taken.dedup_by(|b, a| {
        if a.0 == b.0 {
            a.1 += b.1;
            true
        } else {
            false
        }
    });
    Ok(taken)
}

/// Gives back `coins` a redemption took (`taken`: per lot, oldest first): they pay any
/// debt first, then go back to those lots, oldest first; any rest (a redemption taken
/// before `[expiry]` was configured) into lot `month`.
pub(crate) fn give_back(
    s: &mut UserState,
    rules: &Rules,
    taken: &[(i32, i64)],
    month: i32,
    coins: i64,
) -> Result<(), Reject> {
    let debt = s.coins.saturating_neg().max(0);
    s.coins = add(s.coins, coins)?;
    if rules.game.expiry.is_none() {
        s.lots.clear();
        return Ok(());
    }
    let mut rest = coins - coins.min(debt);
    for &(m, t) in taken {
        let back = rest.min(t);
        fill(s, m, back)?;
        rest -= back;
    }
    fill(s, month, rest)
}

/// The tier bonus of a purchase that earned `base` coins by the base rules, for the tier
/// the user holds now.
pub(crate) fn tier_bonus(s: &UserState, rules: &Rules, base: i64) -> Result<i64, Reject> {
    let (Some(tiers), Some(held)) = (&rules.game.tiers, &s.tier) else {
        return Ok(0);
    };
    let Some(level) = tiers.level_of(&held.id) else {
        return Ok(0);
    };
    let r = i128::from(base) * i128::from(tiers.levels[level].bonus_percent) / 100;
    i64::try_from(r).map_err(|_| Reject::Overflow)
}

/// Counts what a receipt attributed to the instant `at` (spend or XP, by the basis) in
/// the month of `at`, for the tier figure. Months no window can read any more are dropped
/// by [`refresh`], which knows the partition's mark.
pub(crate) fn count_month(
    s: &mut UserState,
    rules: &Rules,
    at: Timestamp,
    spent: Minor,
    xp: i64,
) -> Result<(), Reject> {
    let Some(tiers) = &rules.game.tiers else {
        return Ok(());
    };
    let v = match tiers.basis {
        Basis::Spend => spent,
        Basis::Xp => xp,
    };
    if v == 0 {
        return Ok(());
    }
    let month = rules.calendar().month(at);
    match s.tier_months.binary_search_by_key(&month, |m| m.0) {
        Ok(i) => s.tier_months[i].1 = add(s.tier_months[i].1, v)?,
        Err(i) => s.tier_months.insert(i, (month, v)),
    }
    Ok(())
}

/// The sum of the figures of months `first..=last`.
fn figure_over(s: &UserState, first: i32, last: i32) -> i64 {
    s.tier_months
        .iter()
        .filter(|m| (first..=last).contains(&m.0))
        .fold(0i64, |acc, m| acc.saturating_add(m.1))
}

/// The window's months ending with `month`: `month - window + 1 ..= month`.
fn window_ending(tiers: &Tiers, month: i32) -> (i32, i32) {
    let back = i32::try_from(tiers.window_months).unwrap_or(i32::MAX);
    (month.saturating_sub(back).saturating_add(1), month)
}

/// The qualifying figure at instant `at`: the months of the window ending with `at`'s.
pub fn figure_at(s: &UserState, rules: &Rules, at: Timestamp) -> Option<Figure> {
    let tiers = rules.game.tiers.as_ref()?;
    let (first, last) = window_ending(tiers, rules.calendar().month(at));
    let v = figure_over(s, first, last);
    Some(match tiers.basis {
        Basis::Spend => Figure::Spend(v),
        Basis::Xp => Figure::Xp(v),
    })
}

/// The month whose start a lot earned in `month` expires at: `month + months`; `None`
/// (never) past the year 9999, which no RFC 3339 instant can name.
pub fn expiry_month(x: Expiry, month: i32) -> Option<i32> {
    let at = month.checked_add(i32::try_from(x.months).ok()?)?;
    (at.div_euclid(12) <= 9999).then_some(at)
}

/// When a lot earned in `month` expires ([`expiry_month`]'s start).
fn lot_expiry(rules: &Rules, x: Expiry, month: i32) -> Option<Timestamp> {
    expiry_month(x, month).map(|at| rules.calendar().month_start(at))
}

/// The user's next timer: the soonest of its oldest lot's expiry (with `[expiry]`) and
/// its next review (with `[tiers]`).
pub fn next_timer(s: &UserState, rules: &Rules) -> Option<Timestamp> {
    let expiry = rules
        .game
        .expiry
        .and_then(|x| lot_expiry(rules, x, s.lots.first()?.0));
    let review = rules.game.tiers.as_ref().and(s.next_review);
    match (expiry, review) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The soonest non-empty lot's expiry and coins, as the projection shows them.
pub fn next_expiry(s: &UserState, rules: &Rules) -> Option<(Timestamp, i64)> {
    let x = rules.game.expiry?;
    let (month, coins) = s.lots.first()?;
    Some((lot_expiry(rules, x, *month)?, *coins))
}

/// What firing a user's timers did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fired {
    /// A timer fired: the state moved (at least its next review), and must be kept.
    pub any: bool,
    /// Coins expired or the tier changed: a new version of the user.
    pub changed: bool,
}

/// Fires the user's timers due at `t` or before, in time order (at one instant, an
/// expiry before a review).
pub fn fire_until(
    s: &mut UserState,
    rules: &Rules,
    t: Timestamp,
    events: &mut Vec<Event>,
) -> Fired {
    let mut fired = Fired::default();
    while let Some(at) = next_timer(s, rules).filter(|&at| at <= t) {
        fired.any = true;
        fired.changed |= fire_at(s, rules, at, events);
    }
    fired
}

/// Fires the user's timers due at `at` (its next timer): the lot expiring then, then the
/// review due then. Returns whether its coins or tier changed (a review that keeps the
/// tier only moves the next review).
pub fn fire_at(s: &mut UserState, rules: &Rules, at: Timestamp, events: &mut Vec<Event>) -> bool {
    let mut changed = false;
    if let Some(x) = rules.game.expiry {
        while let Some(&(month, coins)) = s.lots.first() {
            let Some(expires) = lot_expiry(rules, x, month).filter(|e| *e <= at) else {
                break;
            };
            s.lots.remove(0);
            // A lot never holds more than the coins held (credits and debits keep them
            // together); were it to, only the coins held expire.
            let coins = coins.min(s.coins.max(0));
            if coins == 0 {
                continue;
            }
            s.coins -= coins;
            s.coins_expired = s.coins_expired.saturating_add(coins);
            events.push(Event::CoinsExpired(CoinsExpired {
                user_id: s.user_id.clone(),
                coins,
                earned_in: month_label(month),
                at: expires,
            }));
            changed = true;
        }
    }
    if let (Some(tiers), Some(due)) = (&rules.game.tiers, s.next_review) {
        if due <= at {
            changed |= review(s, rules, tiers, due, events);
        }
    }
    changed
}

/// The review at month start `at`: the figure over the window's complete months before
/// it against the tier's minimum.
fn review(
    s: &mut UserState,
    rules: &Rules,
    tiers: &Tiers,
    at: Timestamp,
    events: &mut Vec<Event>,
) -> bool {
    let cal = rules.calendar();
    let month = cal.month(at);
    let (first, last) = window_ending(tiers, month.saturating_sub(1));
    let figure = figure_over(s, first, last);
    let held = s.tier.as_ref().and_then(|t| tiers.level_of(&t.id));
    let keeps = held.is_some_and(|l| figure >= tiers.levels[l].min);
    let mut changed = false;
    if !keeps {
        let to = match (tiers.downgrade, held) {
            (Downgrade::OneDown, Some(l)) => l.checked_sub(1),
            (Downgrade::ToQualified, _) | (Downgrade::OneDown, None) => tiers.reached(figure),
        };
        let from = s.tier.take().map(|t| t.id);
        let to_id = to.map(|l| tiers.levels[l].id.clone());
        if from != to_id {
            changed = true;
            events.push(Event::TierChanged(TierChanged {
                user_id: s.user_id.clone(),
                from,
                to: to_id.clone(),
                reason: TierReason::Review,
                at,
            }));
        }
        s.tier = to_id.map(|id| TierHeld { id, since: at });
    }
    s.next_review = s
        .tier
        .is_some()
        .then(|| cal.month_start(month.saturating_add(1)));
    changed
}

/// After a record of the user was applied, `at` being the later of the partition's mark
/// and the record's issued_at: the user moves up at once to the highest level the figure
/// at `at` reaches, if above the tier held. Returns whether it moved.
pub fn qualify(s: &mut UserState, rules: &Rules, at: Timestamp, events: &mut Vec<Event>) -> bool {
    let Some(tiers) = &rules.game.tiers else {
        return false;
    };
    let cal = rules.calendar();
    let month = cal.month(at);
    let (first, last) = window_ending(tiers, month);
    let figure = figure_over(s, first, last);
    let held = s.tier.as_ref().and_then(|t| tiers.level_of(&t.id));
    let reached = tiers.reached(figure);
    if reached <= held {
        return false;
    }
    let Some(to) = reached else {
        return false;
    };
    let id = tiers.levels[to].id.clone();
    let from = s.tier.take().map(|t| t.id);
    events.push(Event::TierChanged(TierChanged {
        user_id: s.user_id.clone(),
        from,
        to: Some(id.clone()),
        reason: TierReason::Qualified,
        at,
    }));
    s.tier = Some(TierHeld { id, since: at });
    // Reviewed at every month start after `at`: a record rejected past the mark may have
    // reviewed the tier before already, at a month start after `at`.
    let first = cal.month_start(month.saturating_add(1));
    s.next_review = Some(s.next_review.map_or(first, |r| r.min(first)));
    true
}

/// Brings the user's derived fields up to date after a record changed it: the figure at
/// the partition's `mark` and the soonest expiry; and drops the tier months no window can
/// read any more (every later window ends in the mark's month or after it).
pub fn refresh(s: &mut UserState, rules: &Rules, mark: Timestamp) {
    if let Some(tiers) = &rules.game.tiers {
        let (first, _) = window_ending(tiers, rules.calendar().month(mark).saturating_sub(1));
        s.tier_months.retain(|m| m.0 >= first);
    }
    s.tier_figure = figure_at(s, rules, mark);
    s.next_expiry = next_expiry(s, rules);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn rules(extra: &str) -> Rules {
        Config::parse(&format!("[rules]\ntimezone = \"Europe/Berlin\"\n{extra}"))
            .unwrap()
            .rules
    }

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    const EXPIRY: &str = "[expiry]\nmonths = 2\n";
    const TIERS: &str = "[tiers]\nwindow_months = 2\n[[tiers.levels]]\nid = \"silver\"\nmin = \"600.00\"\nbonus_percent = 10\n[[tiers.levels]]\nid = \"gold\"\nmin = \"2000.00\"\nbonus_percent = 25\n";

    #[test]
    fn a_month_starts_at_local_midnight_on_either_side_of_a_clock_change() {
        let cal = rules("").calendar();
        let jan = cal.month(ts("2027-01-15T12:00:00Z"));
        assert_eq!(month_label(jan), "2027-01");
        assert_eq!(cal.month_start(jan + 2), ts("2027-02-28T23:00:00Z"));
        assert_eq!(cal.month_start(jan + 3), ts("2027-03-31T22:00:00Z"));
        // 2027-01-31T23:30Z is already February in Berlin.
        assert_eq!(cal.month(ts("2027-01-31T23:30:00Z")), jan + 1);
        assert_eq!(month_label(-1), "-0001-12");
    }

    #[test]
    fn credits_pay_debt_first_and_fill_the_month_s_lot() {
        let r = rules(EXPIRY);
        let mut s = UserState::new("u");
        credit(&mut s, &r, 100, 50).unwrap();
        credit(&mut s, &r, 101, 30).unwrap();
        credit(&mut s, &r, 100, 5).unwrap();
        assert_eq!((s.coins, s.lots.clone()), (85, vec![(100, 55), (101, 30)]));
        // A refund of the month-101 purchase: its lot first, then the oldest; the rest is debt.
        let taken = debit(&mut s, &r, Some(101), 100).unwrap();
        assert_eq!(taken, vec![(100, 55), (101, 30)]);
        assert_eq!((s.coins, s.lots.clone()), (-15, vec![]));
        credit(&mut s, &r, 102, 10).unwrap();
        assert_eq!((s.coins, s.lots.clone()), (-5, vec![]));
        credit(&mut s, &r, 102, 12).unwrap();
        assert_eq!((s.coins, s.lots.clone()), (7, vec![(102, 7)]));
    }

    #[test]
    fn a_redemption_takes_the_oldest_lots_and_its_reversal_gives_them_back() {
        let r = rules(EXPIRY);
        let mut s = UserState::new("u");
        credit(&mut s, &r, 100, 50).unwrap();
        credit(&mut s, &r, 101, 80).unwrap();
        let taken = debit(&mut s, &r, None, 70).unwrap();
        assert_eq!(taken, vec![(100, 50), (101, 20)]);
        assert_eq!(s.lots, vec![(101, 60)]);
        // In debt meanwhile: the reversal pays it, then refills the oldest lots taken.
        debit(&mut s, &r, None, 90).unwrap();
        assert_eq!(s.coins, -30);
        give_back(&mut s, &r, &taken, 103, 70).unwrap();
        assert_eq!((s.coins, s.lots.clone()), (40, vec![(100, 40)]));
    }

    #[test]
    fn timers_fire_in_time_order_expiry_before_review_and_only_when_due() {
        let r = rules(&format!("{EXPIRY}{TIERS}"));
        let mut s = UserState::new("u");
        let jan = r.calendar().month(ts("2027-01-10T10:00:00Z"));
        credit(&mut s, &r, jan, 150).unwrap();
        count_month(&mut s, &r, ts("2027-01-10T10:00:00Z"), 210_000, 0).unwrap();
        let mut events = Vec::new();
        assert!(qualify(&mut s, &r, ts("2027-01-10T10:00:00Z"), &mut events));
        assert_eq!(s.tier.as_ref().map(|t| t.id.as_str()), Some("gold"));
        assert_eq!(s.next_review, Some(ts("2027-01-31T23:00:00Z")));
        // Reviews keep gold on Feb 1 and Mar 1 (January counts); the lot expires on Mar 1
        // first; Apr 1 reads Feb + Mar: nothing, one level down.
        let fired = fire_until(&mut s, &r, ts("2027-02-28T22:59:59Z"), &mut events);
        assert_eq!((fired.any, fired.changed), (true, false));
        assert_eq!(events.len(), 1);
        assert!(fire_until(&mut s, &r, ts("2027-04-15T00:00:00Z"), &mut events).changed);
        let kinds: Vec<String> = events
            .iter()
            .map(|e| match e {
                Event::TierChanged(t) => format!("{:?}>{:?}@{}", t.from, t.to, t.at.to_rfc3339()),
                Event::CoinsExpired(x) => format!("expired {}@{}", x.coins, x.at.to_rfc3339()),
                _ => "other".into(),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "None>Some(\"gold\")@2027-01-10T10:00:00Z",
                "expired 150@2027-02-28T23:00:00Z",
                "Some(\"gold\")>Some(\"silver\")@2027-03-31T22:00:00Z",
            ]
        );
        assert_eq!((s.coins, s.coins_expired), (0, 150));
        assert_eq!(
            s.tier.as_ref().map(|t| t.since),
            Some(ts("2027-03-31T22:00:00Z"))
        );
        assert_eq!(next_timer(&s, &r), Some(ts("2027-04-30T22:00:00Z")));
    }

    #[test]
    fn to_qualified_drops_to_what_the_figure_reaches() {
        let r = rules(&TIERS.replace(
            "window_months = 2",
            "window_months = 2\ndowngrade = \"to_qualified\"",
        ));
        let mut s = UserState::new("u");
        count_month(&mut s, &r, ts("2027-01-10T10:00:00Z"), 210_000, 0).unwrap();
        let mut events = Vec::new();
        qualify(&mut s, &r, ts("2027-01-10T10:00:00Z"), &mut events);
        fire_until(&mut s, &r, ts("2027-04-01T00:00:00Z"), &mut events);
        assert_eq!(s.tier, None);
        assert_eq!(s.next_review, None);
        assert_eq!(next_timer(&s, &r), None);
    }

    #[test]
    fn the_tier_bonus_is_the_held_tier_s_percent_of_base_coins_floored() {
        let r = rules(TIERS);
        let mut s = UserState::new("u");
        assert_eq!(tier_bonus(&s, &r, 199).unwrap(), 0);
        s.tier = Some(TierHeld {
            id: "silver".into(),
            since: ts("2027-01-10T10:00:00Z"),
        });
        assert_eq!(tier_bonus(&s, &r, 199).unwrap(), 19);
        assert_eq!(tier_bonus(&s, &rules(""), 199).unwrap(), 0);
    }

    #[test]
    fn without_the_sections_coins_only_move_and_nothing_is_timed() {
        let r = rules("");
        let mut s = UserState::new("u");
        credit(&mut s, &r, 100, 50).unwrap();
        assert!(debit(&mut s, &r, None, 20).unwrap().is_empty());
        assert_eq!((s.coins, s.lots.is_empty()), (30, true));
        assert_eq!(next_timer(&s, &r), None);
        assert_eq!(figure_at(&s, &r, ts("2027-01-10T10:00:00Z")), None);
    }
}

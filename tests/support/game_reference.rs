//! A naive reference model of the game rules of issue 14 (rule history, campaigns,
//! redemptions, missions, streaks, badges, per-period leaderboards) on top of the core
//! receipt rules, written from the contract and sharing no code with the `mallquest` crate:
//! its own decoding of the receipt JSON (`serde_json::Value`, checked field by field, plus a
//! small scanner of the top-level members for repeated fields and a number's literal text),
//! its own RFC 3339 parsing and formatting, its own reading of the TOML configuration, and
//! plain maps for users, the ledger, mission instances and period boards. Every figure is
//! computed in `i128`; a total that would leave `i64` is `overflow`.
//!
//! Sources, in the order they were read: the text of issue 14 ("Contract" and "Semantics"),
//! `shared/golden/game/README.md` and its `config.toml`, tests/support/reference.rs (the core
//! reference model: decoding and rejection rules, the proportional refund formula
//! `floor(earned*R1/amount) - floor(earned*R0/amount)`, `level = min(max_level, 1 +
//! isqrt(xp / level_xp_base))`, levels never go down, dedup by receipt id with the 90-day
//! event-time window measured back from the partition's newest applied receipt; its time
//! parsing and formatting are used as they are, its decoding is copied here with the serde
//! visitor replaced by a hand scanner), README.md (configuration reference, rejection reasons) and
//! tests/golden/README.md (what makes two receipts the same). The golden vectors of
//! `shared/golden/game/` pin it (see the tests that fold them).
//!
//! The model is deliberately simple: mission progress is recomputed from the user's list of
//! purchases each time it is needed, streaks from the set of units, boards are plain maps
//! sorted when asked for. Nothing is pruned (a board of a period older than the kept ones
//! simply stays; [`GameExpected::kept_periods`] says which ones the engine keeps).
//!
//! Timestamps keep their fraction (`at` is the receipt's issued_at, as the contract says);
//! the golden files write them truncated to the whole second, so a test comparing with
//! them compares instants to the second.
//!
//! Readings of the contract that the golden vectors do not pin: a redemption's `coins` is
//! a JSON integer literal (digits only, no fraction or exponent) in 1..=i64::MAX, else
//! `schema`; an `amount` on a redemption or reversal is optional, and when present a plain
//! decimal in 0.00..=1000000.00 (else `amount`, as for purchases); `coins` is ignored on
//! other types; two receipts with one id are the same when their decoded content (type,
//! store, amount or its absence, issued_at, refund_of of refunds/reversals, coins of
//! redemptions) is; a campaign's base coins are those of the rule set in force at the
//! purchase; mission progress counts the user's purchases even after the dedup window
//! forgot them (only their refunds need the ledger); besides coins, XP and spend,
//! `coins_redeemed`, every campaign net and every period score must fit `i64` (else
//! `overflow`); history entries accept only `until`, `coins_per_unit`, `xp_per_receipt`,
//! `xp_per_unit`, `store_multipliers`; missions default to `on_refund = "keep"` and 0
//! rewards, campaigns to 0 bonus and no cap.
//!
//! Time (issue 33: `[expiry]`, `[tiers]`, event-time timers), from the text and
//! `tests/golden/time/README.md` (whose "readings" it follows), still sharing no code with
//! mallquest (the calendar is chrono-tz's, as above). Each user keeps coin lots by the
//! mall-local month of the crediting receipt's `issued_at` and a debt; a record's coins
//! move all one way (a purchase only credits, a refund or redemption only debits, a
//! reversal only credits), so they are settled once per record: a credit pays the debt,
//! then fills its lot; a refund's take-backs (base, campaign, tier bonus, revoked missions'
//! rewards) come from the purchase's lot, then the oldest, the rest becoming debt; a
//! redemption takes the oldest lots first and its ledger entry remembers which; its
//! reversal pays the debt, then refills those lots oldest first (a lot already expired is
//! made again and expires at once, at its own past instant). The mark is the partition's
//! newest applied `issued_at` (full precision; the model has no Kafka timestamps). Timers
//! are not queued: a user's soonest one is derived from their oldest lot and their next
//! review, and step (3) scans the partition's users (naive, as everything here). Step (1)
//! runs for every record that decodes (key check included), before the dedup window's
//! `too_old` (whose timers, being older than the mark, have all fired: no difference).
//! The tier's review after an upgrade is the first month start after `since` even when
//! the user's own timers already ran past it (a rejected record's step (1) past the mark):
//! "reviewed at every month start after the instant they got it". Without the sections
//! nothing changes but the projection's new fields (`tier` null, `tier_figure` null,
//! `coins_expired` 0, `next_expiry` null).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{Datelike, NaiveDate};
use chrono_tz::Tz;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// Constants of the contract.

/// `[rules]` defaults.
pub const DEFAULT_CURRENCY: &str = "AED";
pub const DEFAULT_COINS_PER_UNIT: i64 = 1;
pub const DEFAULT_XP_PER_RECEIPT: i64 = 10;
pub const DEFAULT_XP_PER_UNIT: i64 = 1;
pub const DEFAULT_LEVEL_XP_BASE: i64 = 100;
pub const DEFAULT_MAX_LEVEL: u64 = 100;
pub const DEFAULT_LEVEL_UP_BONUS_COINS: i64 = 50;
pub const DEFAULT_TIMEZONE: &str = "Asia/Dubai";
/// Percent earned in a store not listed in `store_multipliers`.
pub const UNLISTED_STORE_PCT: i64 = 100;
/// `processing.dedup_window_days` default.
pub const DEFAULT_WINDOW_DAYS: i64 = 90;
/// `processing.periods_kept` default.
pub const DEFAULT_PERIODS_KEPT: usize = 3;
/// `[expiry] months` default.
pub const DEFAULT_EXPIRY_MONTHS: i64 = 12;
/// `[tiers] window_months` default.
pub const DEFAULT_TIER_WINDOW_MONTHS: i64 = 12;

const MAX_RECORD_BYTES: usize = 64 * 1024;
const MAX_ID_BYTES: usize = 128;
const MAX_AMOUNT_CENTS: i128 = 100_000_000;
const MAX_DEPTH: usize = 64;
const SECS_PER_DAY: i64 = 86_400;

// ---------------------------------------------------------------------------------------
// Event time: RFC 3339, parsed and formatted by hand: the core reference's, which shares
// no code with mallquest either.

pub use super::reference::{format_instant, parse_instant, Instant};

// ---------------------------------------------------------------------------------------
// Mall-local calendar (chrono-tz).

/// The mall-local date of an instant (a leap second counts as the second before it).
fn local_date(tz: Tz, t: Instant) -> NaiveDate {
    let utc = chrono::DateTime::from_timestamp(t.secs, 0).expect("instant within chrono's range");
    utc.with_timezone(&tz).date_naive()
}

fn day_key(d: NaiveDate) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day())
}

fn week_key(d: NaiveDate) -> String {
    let w = d.iso_week();
    format!("{:04}-W{:02}", w.year(), w.week())
}

fn month_key(d: NaiveDate) -> String {
    format!("{:04}-{:02}", d.year(), d.month())
}

/// A mall-local month as a number: `year * 12 + month - 1`.
type Month = i32;

/// The mall-local month of an instant.
fn month_of(tz: Tz, t: Instant) -> Month {
    let d = local_date(tz, t);
    d.year() * 12 + d.month0() as i32
}

/// `2027-03` of a month number.
fn month_label(m: Month) -> String {
    format!("{:04}-{:02}", m.div_euclid(12), m.rem_euclid(12) + 1)
}

/// The month's start: the first instant whose mall-local date is the month's 1st (local
/// midnight, or the end of a gap in the local clock that swallows it).
fn month_start(tz: Tz, m: Month) -> Instant {
    use chrono::TimeZone as _;
    let first = NaiveDate::from_ymd_opt(m.div_euclid(12), m.rem_euclid(12) as u32 + 1, 1)
        .expect("a month within chrono's range");
    let mut local = first.and_hms_opt(0, 0, 0).expect("midnight");
    loop {
        if let Some(t) = tz.from_local_datetime(&local).earliest() {
            return Instant {
                secs: t.timestamp(),
                nanos: 0,
            };
        }
        // A gap: the first local minute that exists.
        local += chrono::Duration::minutes(1);
    }
}

/// The four board periods of an instant: (kind, key).
fn periods_of(tz: Tz, t: Instant) -> [(&'static str, String); 4] {
    let d = local_date(tz, t);
    [
        ("day", day_key(d)),
        ("week", week_key(d)),
        ("month", month_key(d)),
        ("all", "all".to_owned()),
    ]
}

// ---------------------------------------------------------------------------------------
// Money.

/// A plain decimal with at most 2 decimals, in cents, within `[min, 1000000.00]`.
fn cents_in(text: &str, min: i128) -> Option<i64> {
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) if (1..=2).contains(&f.len()) => (i, f),
        Some(_) => return None,
        None => (text, ""),
    };
    if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let int = int.trim_start_matches('0');
    if int.len() > 7 {
        return None;
    }
    let units: i128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac: i128 = format!("{frac:0<2}").parse().ok()?;
    let c = units * 100 + frac;
    (min..=MAX_AMOUNT_CENTS).contains(&c).then_some(c as i64)
}

/// Cents as a money string (`-` for a negative figure).
pub fn money(c: i128) -> String {
    format!(
        "{}{}.{:02}",
        if c < 0 { "-" } else { "" },
        c.unsigned_abs() / 100,
        c.unsigned_abs() % 100
    )
}

// ---------------------------------------------------------------------------------------
// Configuration.

/// The valuation rules of one rule set (the versioned part of `[rules]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    pub coins_per_unit: i64,
    pub xp_per_receipt: i64,
    pub xp_per_unit: i64,
    pub store_multipliers: BTreeMap<String, i64>,
}

impl RuleSet {
    fn pct(&self, store: &str) -> i128 {
        i128::from(
            self.store_multipliers
                .get(store)
                .copied()
                .unwrap_or(UNLISTED_STORE_PCT),
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Campaign {
    pub id: String,
    pub start: Instant,
    pub end: Instant,
    pub stores: Option<BTreeSet<String>>,
    pub categories: Option<BTreeSet<String>>,
    /// Cents.
    pub min_amount: Option<i64>,
    pub bonus_percent: i64,
    pub bonus_coins: i64,
    pub max_coins_per_user: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeriodKind {
    Day,
    Week,
    Month,
    Once,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Goal {
    Spend,
    Receipts,
    Stores,
    CategorySpend(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mission {
    pub id: String,
    pub period: PeriodKind,
    /// For `once`: `start <= issued_at < end`.
    pub window: Option<(Instant, Instant)>,
    pub goal: Goal,
    /// A count, or cents for the spend goals.
    pub target: i64,
    pub reward_coins: i64,
    pub reward_xp: i64,
    pub revoke: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadgeKind {
    Streak,
    Stores,
    Receipts,
    Spend,
    Level,
    Missions,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Badge {
    pub id: String,
    pub kind: BadgeKind,
    /// A count, or cents for `spend`.
    pub threshold: i64,
}

/// `[expiry]`: coins expire at the start of the `months`-th mall-local month after the
/// month they were earned in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiryRule {
    pub months: i32,
}

/// `[tiers] basis`: which monthly board the qualifying figure reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// Net spend (cents): the monthly `spent` board.
    Spend,
    /// The monthly `xp` board.
    Xp,
}

/// `[tiers] downgrade`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downgrade {
    OneDown,
    ToQualified,
}

/// One `[[tiers.levels]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierLevel {
    pub id: String,
    /// Cents for `spend`, XP for `xp`.
    pub min: i64,
    pub bonus_percent: i64,
}

/// `[tiers]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierRules {
    pub basis: Basis,
    pub window_months: i32,
    pub downgrade: Downgrade,
    /// Strictly ascending by `min`.
    pub levels: Vec<TierLevel>,
}

impl TierRules {
    /// The highest level whose `min` the figure reaches.
    fn reached(&self, figure: i128) -> Option<usize> {
        self.levels
            .iter()
            .rposition(|l| figure >= i128::from(l.min))
    }
}

/// Everything the model reads from the configuration.
#[derive(Debug, Clone)]
pub struct GameConfig {
    pub currency: String,
    pub level_xp_base: i64,
    pub max_level: u64,
    pub level_up_bonus_coins: i64,
    pub timezone: Tz,
    /// `[rules]` as written.
    pub current: RuleSet,
    /// `(until, effective rule set)`, ascending by `until`, each already completed from
    /// the rule sets in force after it.
    pub history: Vec<(Instant, RuleSet)>,
    pub store_categories: BTreeMap<String, String>,
    pub campaigns: Vec<Campaign>,
    pub missions: Vec<Mission>,
    /// `true`: ISO weeks; `false`: days.
    pub streak_weeks: bool,
    pub badges: Vec<Badge>,
    pub window_days: i64,
    pub periods_kept: usize,
    /// `[expiry]`, when present.
    pub expiry: Option<ExpiryRule>,
    /// `[tiers]`, when present.
    pub tiers: Option<TierRules>,
}

impl GameConfig {
    /// The rule set in force at `t`.
    pub fn rules_at(&self, t: Instant) -> &RuleSet {
        self.history
            .iter()
            .find(|(until, _)| t < *until)
            .map_or(&self.current, |(_, r)| r)
    }

    fn level_for(&self, xp: i128) -> u64 {
        assert!(self.level_xp_base > 0, "level_xp_base must be positive");
        let steps = if xp <= 0 {
            0
        } else {
            xp / i128::from(self.level_xp_base)
        };
        let level = 1 + isqrt(steps.min(u64::MAX as i128) as u128);
        level.min(u128::from(self.max_level)) as u64
    }

    fn category(&self, store: &str) -> Option<&str> {
        self.store_categories.get(store).map(String::as_str)
    }

    /// Reads a configuration written to the contract. Unknown keys of the game sections
    /// are errors; `[kafka]`, `[store]` and `[http]` are accepted and not looked into.
    pub fn parse(text: &str) -> Result<Self, String> {
        let root: toml::Table = text.parse().map_err(|e| format!("toml: {e}"))?;
        check_keys(
            &root,
            "",
            &[
                "kafka",
                "store",
                "processing",
                "http",
                "rules",
                "store_categories",
                "campaigns",
                "missions",
                "streaks",
                "badges",
                "expiry",
                "tiers",
            ],
        )?;
        let empty = toml::Table::new();
        let rules = opt_table(&root, "rules")?.unwrap_or(&empty);
        check_keys(
            rules,
            "rules",
            &[
                "currency",
                "coins_per_unit",
                "xp_per_receipt",
                "xp_per_unit",
                "level_xp_base",
                "max_level",
                "level_up_bonus_coins",
                "store_multipliers",
                "timezone",
                "history",
            ],
        )?;
        let currency = opt_str(rules, "currency")?.unwrap_or_else(|| DEFAULT_CURRENCY.into());
        let level_xp_base = opt_int(rules, "level_xp_base")?.unwrap_or(DEFAULT_LEVEL_XP_BASE);
        if level_xp_base <= 0 {
            return Err("rules.level_xp_base must be positive".into());
        }
        let max_level = opt_int(rules, "max_level")?.map_or(DEFAULT_MAX_LEVEL, |v| v as u64);
        let level_up_bonus_coins =
            opt_int(rules, "level_up_bonus_coins")?.unwrap_or(DEFAULT_LEVEL_UP_BONUS_COINS);
        let tz_name = opt_str(rules, "timezone")?.unwrap_or_else(|| DEFAULT_TIMEZONE.into());
        let timezone: Tz = tz_name
            .parse()
            .map_err(|_| format!("rules.timezone: unknown time zone {tz_name:?}"))?;
        let current = RuleSet {
            coins_per_unit: opt_int(rules, "coins_per_unit")?.unwrap_or(DEFAULT_COINS_PER_UNIT),
            xp_per_receipt: opt_int(rules, "xp_per_receipt")?.unwrap_or(DEFAULT_XP_PER_RECEIPT),
            xp_per_unit: opt_int(rules, "xp_per_unit")?.unwrap_or(DEFAULT_XP_PER_UNIT),
            store_multipliers: multipliers(rules, "rules")?.unwrap_or_default(),
        };

        // History: sorted by `until`; each entry completed from the one after it.
        let mut raw_history: Vec<(Instant, &toml::Table)> = Vec::new();
        for (i, h) in opt_array(rules, "history")?
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            let where_ = format!("rules.history[{i}]");
            let h = h.as_table().ok_or(format!("{where_}: not a table"))?;
            check_keys(
                h,
                &where_,
                &[
                    "until",
                    "coins_per_unit",
                    "xp_per_receipt",
                    "xp_per_unit",
                    "store_multipliers",
                ],
            )?;
            let until = req_time(h, "until", &where_)?;
            raw_history.push((until, h));
        }
        raw_history.sort_by_key(|(until, _)| *until);
        let mut history: Vec<(Instant, RuleSet)> = Vec::new();
        let mut after = current.clone();
        for (until, h) in raw_history.iter().rev() {
            let set = RuleSet {
                coins_per_unit: opt_int(h, "coins_per_unit")?.unwrap_or(after.coins_per_unit),
                xp_per_receipt: opt_int(h, "xp_per_receipt")?.unwrap_or(after.xp_per_receipt),
                xp_per_unit: opt_int(h, "xp_per_unit")?.unwrap_or(after.xp_per_unit),
                store_multipliers: multipliers(h, "rules.history")?
                    .unwrap_or_else(|| after.store_multipliers.clone()),
            };
            history.push((*until, set.clone()));
            after = set;
        }
        history.reverse();

        let mut store_categories = BTreeMap::new();
        if let Some(t) = opt_table(&root, "store_categories")? {
            for (store, cat) in t {
                let cat = cat
                    .as_str()
                    .ok_or(format!("store_categories.{store}: not a string"))?;
                store_categories.insert(store.clone(), cat.to_owned());
            }
        }

        let mut campaigns = Vec::new();
        for (i, c) in opt_array(&root, "campaigns")?
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            let w = format!("campaigns[{i}]");
            let c = c.as_table().ok_or(format!("{w}: not a table"))?;
            check_keys(
                c,
                &w,
                &[
                    "id",
                    "start",
                    "end",
                    "stores",
                    "categories",
                    "min_amount",
                    "bonus_percent",
                    "bonus_coins",
                    "max_coins_per_user",
                ],
            )?;
            campaigns.push(Campaign {
                id: opt_str(c, "id")?.ok_or(format!("{w}.id is required"))?,
                start: req_time(c, "start", &w)?,
                end: req_time(c, "end", &w)?,
                stores: opt_str_set(c, "stores")?,
                categories: opt_str_set(c, "categories")?,
                min_amount: opt_money(c, "min_amount")?,
                bonus_percent: opt_int(c, "bonus_percent")?.unwrap_or(0),
                bonus_coins: opt_int(c, "bonus_coins")?.unwrap_or(0),
                max_coins_per_user: opt_int(c, "max_coins_per_user")?,
            });
        }

        let mut missions = Vec::new();
        for (i, m) in opt_array(&root, "missions")?
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            let w = format!("missions[{i}]");
            let m = m.as_table().ok_or(format!("{w}: not a table"))?;
            check_keys(
                m,
                &w,
                &[
                    "id",
                    "period",
                    "start",
                    "end",
                    "goal",
                    "category",
                    "target",
                    "reward_coins",
                    "reward_xp",
                    "on_refund",
                ],
            )?;
            let period = match opt_str(m, "period")?.as_deref() {
                Some("day") => PeriodKind::Day,
                Some("week") => PeriodKind::Week,
                Some("month") => PeriodKind::Month,
                Some("once") => PeriodKind::Once,
                other => return Err(format!("{w}.period: {other:?}")),
            };
            let window = if period == PeriodKind::Once {
                Some((req_time(m, "start", &w)?, req_time(m, "end", &w)?))
            } else {
                if m.contains_key("start") || m.contains_key("end") {
                    return Err(format!("{w}: start/end only with period = \"once\""));
                }
                None
            };
            let goal = match opt_str(m, "goal")?.as_deref() {
                Some("spend") => Goal::Spend,
                Some("receipts") => Goal::Receipts,
                Some("stores") => Goal::Stores,
                Some("category_spend") => Goal::CategorySpend(
                    opt_str(m, "category")?.ok_or(format!("{w}.category is required"))?,
                ),
                other => return Err(format!("{w}.goal: {other:?}")),
            };
            if !matches!(goal, Goal::CategorySpend(_)) && m.contains_key("category") {
                return Err(format!("{w}.category only with goal = \"category_spend\""));
            }
            let target = match goal {
                Goal::Spend | Goal::CategorySpend(_) => {
                    opt_money(m, "target")?.ok_or(format!("{w}.target is required"))?
                }
                _ => opt_int(m, "target")?.ok_or(format!("{w}.target is required"))?,
            };
            let revoke = match opt_str(m, "on_refund")?.as_deref() {
                None | Some("keep") => false,
                Some("revoke") => true,
                Some(other) => return Err(format!("{w}.on_refund: {other:?}")),
            };
            missions.push(Mission {
                id: opt_str(m, "id")?.ok_or(format!("{w}.id is required"))?,
                period,
                window,
                goal,
                target,
                reward_coins: opt_int(m, "reward_coins")?.unwrap_or(0),
                reward_xp: opt_int(m, "reward_xp")?.unwrap_or(0),
                revoke,
            });
        }

        let streak_weeks = match opt_table(&root, "streaks")? {
            None => false,
            Some(s) => {
                check_keys(s, "streaks", &["unit"])?;
                match opt_str(s, "unit")?.as_deref() {
                    None | Some("day") => false,
                    Some("week") => true,
                    Some(other) => return Err(format!("streaks.unit: {other:?}")),
                }
            }
        };

        let mut badges = Vec::new();
        for (i, b) in opt_array(&root, "badges")?
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            let w = format!("badges[{i}]");
            let b = b.as_table().ok_or(format!("{w}: not a table"))?;
            check_keys(b, &w, &["id", "kind", "threshold"])?;
            let kind = match opt_str(b, "kind")?.as_deref() {
                Some("streak") => BadgeKind::Streak,
                Some("stores") => BadgeKind::Stores,
                Some("receipts") => BadgeKind::Receipts,
                Some("spend") => BadgeKind::Spend,
                Some("level") => BadgeKind::Level,
                Some("missions") => BadgeKind::Missions,
                other => return Err(format!("{w}.kind: {other:?}")),
            };
            let threshold = if kind == BadgeKind::Spend {
                opt_money(b, "threshold")?
            } else {
                opt_int(b, "threshold")?
            }
            .ok_or(format!("{w}.threshold is required"))?;
            badges.push(Badge {
                id: opt_str(b, "id")?.ok_or(format!("{w}.id is required"))?,
                kind,
                threshold,
            });
        }

        let (window_days, periods_kept) = match opt_table(&root, "processing")? {
            None => (DEFAULT_WINDOW_DAYS, DEFAULT_PERIODS_KEPT),
            Some(p) => (
                opt_int(p, "dedup_window_days")?.unwrap_or(DEFAULT_WINDOW_DAYS),
                opt_int(p, "periods_kept")?.map_or(DEFAULT_PERIODS_KEPT, |v| v as usize),
            ),
        };

        let expiry = match opt_table(&root, "expiry")? {
            None => None,
            Some(e) => {
                check_keys(e, "expiry", &["months"])?;
                let months = opt_int(e, "months")?.unwrap_or(DEFAULT_EXPIRY_MONTHS);
                if !(1..=120).contains(&months) {
                    return Err(format!("expiry.months: {months} is not within 1..=120"));
                }
                Some(ExpiryRule {
                    months: months as i32,
                })
            }
        };

        let tiers = match opt_table(&root, "tiers")? {
            None => None,
            Some(t) => {
                check_keys(
                    t,
                    "tiers",
                    &["basis", "window_months", "downgrade", "levels"],
                )?;
                let basis = match opt_str(t, "basis")?.as_deref() {
                    None | Some("spend") => Basis::Spend,
                    Some("xp") => Basis::Xp,
                    Some(other) => return Err(format!("tiers.basis: {other:?}")),
                };
                let window_months =
                    opt_int(t, "window_months")?.unwrap_or(DEFAULT_TIER_WINDOW_MONTHS);
                if !(1..=1200).contains(&window_months) {
                    return Err(format!("tiers.window_months: {window_months}"));
                }
                let downgrade = match opt_str(t, "downgrade")?.as_deref() {
                    None | Some("one_down") => Downgrade::OneDown,
                    Some("to_qualified") => Downgrade::ToQualified,
                    Some(other) => return Err(format!("tiers.downgrade: {other:?}")),
                };
                let mut levels: Vec<TierLevel> = Vec::new();
                for (i, l) in opt_array(t, "levels")?.unwrap_or(&[]).iter().enumerate() {
                    let w = format!("tiers.levels[{i}]");
                    let l = l.as_table().ok_or(format!("{w}: not a table"))?;
                    check_keys(l, &w, &["id", "min", "bonus_percent"])?;
                    let id = opt_str(l, "id")?.ok_or(format!("{w}.id is required"))?;
                    let min = match basis {
                        Basis::Spend => opt_money(l, "min")?,
                        Basis::Xp => opt_int(l, "min")?,
                    }
                    .ok_or(format!("{w}.min is required"))?;
                    if levels.iter().any(|x| x.id == id) {
                        return Err(format!("{w}.id: {id:?} twice"));
                    }
                    if levels.last().is_some_and(|x| x.min >= min) {
                        return Err(format!("{w}.min: levels must ascend strictly"));
                    }
                    levels.push(TierLevel {
                        id,
                        min,
                        bonus_percent: opt_int(l, "bonus_percent")?.unwrap_or(0),
                    });
                }
                if levels.is_empty() {
                    return Err("[tiers] needs at least one [[tiers.levels]]".into());
                }
                Some(TierRules {
                    basis,
                    window_months: window_months as i32,
                    downgrade,
                    levels,
                })
            }
        };

        Ok(Self {
            currency,
            level_xp_base,
            max_level,
            level_up_bonus_coins,
            timezone,
            current,
            history,
            store_categories,
            campaigns,
            missions,
            streak_weeks,
            badges,
            window_days,
            periods_kept,
            expiry,
            tiers,
        })
    }
}

fn check_keys(t: &toml::Table, where_: &str, known: &[&str]) -> Result<(), String> {
    match t.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(format!("unknown key {k:?} in [{where_}]")),
        None => Ok(()),
    }
}

fn opt_table<'a>(t: &'a toml::Table, k: &str) -> Result<Option<&'a toml::Table>, String> {
    t.get(k)
        .map(|v| v.as_table().ok_or(format!("{k}: not a table")))
        .transpose()
}

fn opt_array<'a>(t: &'a toml::Table, k: &str) -> Result<Option<&'a [toml::Value]>, String> {
    t.get(k)
        .map(|v| {
            v.as_array()
                .map(Vec::as_slice)
                .ok_or(format!("{k}: not an array"))
        })
        .transpose()
}

fn opt_str(t: &toml::Table, k: &str) -> Result<Option<String>, String> {
    t.get(k)
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or(format!("{k}: not a string"))
        })
        .transpose()
}

fn opt_int(t: &toml::Table, k: &str) -> Result<Option<i64>, String> {
    t.get(k)
        .map(|v| v.as_integer().ok_or(format!("{k}: not an integer")))
        .transpose()
}

fn opt_money(t: &toml::Table, k: &str) -> Result<Option<i64>, String> {
    opt_str(t, k)?
        .map(|s| cents_in(&s, 0).ok_or(format!("{k}: not a money amount: {s:?}")))
        .transpose()
}

fn opt_str_set(t: &toml::Table, k: &str) -> Result<Option<BTreeSet<String>>, String> {
    opt_array(t, k)?
        .map(|a| {
            a.iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or(format!("{k}: not strings"))
                })
                .collect()
        })
        .transpose()
}

fn req_time(t: &toml::Table, k: &str, where_: &str) -> Result<Instant, String> {
    let text = match t.get(k) {
        Some(toml::Value::String(s)) => s.clone(),
        Some(toml::Value::Datetime(d)) => d.to_string(),
        _ => return Err(format!("{where_}.{k} is required (an RFC 3339 time)")),
    };
    parse_instant(&text).ok_or(format!("{where_}.{k}: not an RFC 3339 time: {text:?}"))
}

fn multipliers(t: &toml::Table, where_: &str) -> Result<Option<BTreeMap<String, i64>>, String> {
    let Some(m) = opt_table(t, "store_multipliers")? else {
        return Ok(None);
    };
    let mut out = BTreeMap::new();
    for (store, pct) in m {
        let pct = pct.as_integer().ok_or(format!(
            "{where_}.store_multipliers.{store}: not an integer"
        ))?;
        out.insert(store.clone(), pct);
    }
    Ok(Some(out))
}

/// The largest r with r * r <= n, for n < 2^64, by bisection.
fn isqrt(n: u128) -> u128 {
    assert!(n < 1 << 64);
    let (mut lo, mut hi) = (0u128, 1u128 << 32);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if mid * mid <= n {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

// ---------------------------------------------------------------------------------------
// Decoding.

/// What kind of receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Purchase,
    Refund,
    Redemption,
    RedemptionReversal,
}

/// A receipt as the contract defines it: the decoded content, which is also what two
/// receipts with one id are compared on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub receipt_id: String,
    pub user_id: String,
    pub store_id: String,
    pub kind: Kind,
    /// Cents: required (> 0) of purchases and refunds; optional (>= 0) of redemptions and
    /// their reversals.
    pub amount: Option<i64>,
    pub at: Instant,
    /// The original, for a refund or a redemption reversal (ignored elsewhere).
    pub refund_of: Option<String>,
    /// The coins a redemption spends.
    pub coins: Option<i64>,
}

/// The top-level members of a JSON object (already known to be valid JSON), in document
/// order: decoded name and raw value text.
fn members(text: &str) -> Vec<(String, String)> {
    let b = text.as_bytes();
    let mut i = 0;
    let ws = |i: &mut usize| {
        while *i < b.len() && matches!(b[*i], b' ' | b'\t' | b'\n' | b'\r') {
            *i += 1;
        }
    };
    // End (exclusive) of the string starting at `i` (a `"`).
    let string_end = |mut i: usize| {
        i += 1;
        while b[i] != b'"' {
            i += if b[i] == b'\\' { 2 } else { 1 };
        }
        i + 1
    };
    let mut out = Vec::new();
    ws(&mut i);
    assert_eq!(b[i], b'{');
    i += 1;
    loop {
        ws(&mut i);
        if b[i] == b'}' {
            break;
        }
        if b[i] == b',' {
            i += 1;
            ws(&mut i);
        }
        let kend = string_end(i);
        let name: String = serde_json::from_str(&text[i..kend]).expect("valid key");
        i = kend;
        ws(&mut i);
        assert_eq!(b[i], b':');
        i += 1;
        ws(&mut i);
        let start = i;
        let mut depth = 0usize;
        loop {
            match b[i] {
                b'"' => {
                    i = string_end(i);
                    if depth == 0 {
                        break;
                    }
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth > 0 => {
                    depth -= 1;
                    if depth == 0 {
                        i += 1;
                        break;
                    }
                }
                b',' | b'}' | b' ' | b'\t' | b'\n' | b'\r' if depth == 0 => break,
                _ => {}
            }
            i += 1;
        }
        out.push((name, text[start..i].to_owned()));
    }
    out
}

/// Deepest nesting of arrays and objects outside strings.
fn depth(bytes: &[u8]) -> usize {
    let (mut now, mut deepest) = (0usize, 0usize);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'[' | b'{' => {
                now += 1;
                deepest = deepest.max(now);
            }
            b']' | b'}' => now = now.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    deepest
}

fn id(v: Option<&Value>) -> Option<String> {
    let s = v?.as_str()?;
    let control = |c: char| matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}');
    (!s.is_empty() && s.len() <= MAX_ID_BYTES && !s.chars().any(control)).then(|| s.to_owned())
}

/// Decodes one record, checks in the documented order: size, UTF-8 / JSON / nesting,
/// schema (the redemption's `coins` included), amount, currency, key.
pub fn decode(key: Option<&[u8]>, value: &[u8], currency: &str) -> Result<Decoded, &'static str> {
    if value.len() > MAX_RECORD_BYTES {
        return Err("too_large");
    }
    let text = std::str::from_utf8(value).map_err(|_| "invalid_json")?;
    if depth(value) > MAX_DEPTH {
        return Err("invalid_json");
    }
    let doc: Value = serde_json::from_str(text).map_err(|_| "invalid_json")?;
    let Value::Object(obj) = doc else {
        return Err("schema");
    };
    let members = members(text);
    const KNOWN: [&str; 9] = [
        "receipt_id",
        "user_id",
        "store_id",
        "amount",
        "issued_at",
        "currency",
        "type",
        "refund_of",
        "coins",
    ];
    let mut seen = BTreeSet::new();
    for (name, _) in &members {
        if KNOWN.contains(&name.as_str()) && !seen.insert(name.as_str()) {
            return Err("schema");
        }
    }
    let raw = |name: &str| {
        members
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| r.clone())
    };
    let field = |name: &str| obj.get(name);
    let schema = |v: Option<String>| v.ok_or("schema");

    let receipt_id = schema(id(field("receipt_id")))?;
    let user_id = schema(id(field("user_id")))?;
    let store_id = schema(id(field("store_id")))?;
    let at = field("issued_at")
        .and_then(Value::as_str)
        .and_then(parse_instant)
        .ok_or("schema")?;
    let kind = match field("type") {
        None | Some(Value::Null) => Kind::Purchase,
        Some(Value::String(t)) => match t.as_str() {
            "purchase" => Kind::Purchase,
            "refund" => Kind::Refund,
            "redemption" => Kind::Redemption,
            "redemption_reversal" => Kind::RedemptionReversal,
            _ => return Err("schema"),
        },
        Some(_) => return Err("schema"),
    };
    let needs_original = matches!(kind, Kind::Refund | Kind::RedemptionReversal);
    let refund_of = match field("refund_of") {
        None if needs_original => return Err("schema"),
        None => None,
        Some(v) => Some(schema(id(Some(v)))?),
    };
    let currency_field = match field("currency") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) => Some(c.clone()),
        Some(_) => return Err("schema"),
    };
    // A redemption's coins: a positive JSON integer (literal digits, no fraction or
    // exponent), at most i64::MAX; anything else is `schema`. Ignored on other types.
    let coins = if kind == Kind::Redemption {
        let ok = match (field("coins"), raw("coins")) {
            (Some(Value::Number(_)), Some(lit)) if lit.bytes().all(|c| c.is_ascii_digit()) => {
                lit.parse::<i64>().ok().filter(|c| *c > 0)
            }
            _ => None,
        };
        Some(ok.ok_or("schema")?)
    } else {
        None
    };
    // Amount: the text of a string or a number's literal must be a plain decimal.
    let amount_required = matches!(kind, Kind::Purchase | Kind::Refund);
    let amount_text = match field("amount") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(_)) => Some(raw("amount").ok_or("schema")?),
        None if !amount_required => None,
        _ => return Err("schema"),
    };
    let amount = match amount_text {
        None => None,
        Some(t) => {
            let min = if amount_required { 1 } else { 0 };
            Some(cents_in(&t, min).ok_or("amount")?)
        }
    };
    if currency_field.is_some_and(|c| c != currency) {
        return Err("currency");
    }
    if key != Some(user_id.as_bytes()) {
        return Err("key_mismatch");
    }
    Ok(Decoded {
        receipt_id,
        user_id,
        store_id,
        kind,
        amount,
        at,
        refund_of: refund_of.filter(|_| needs_original),
        coins,
    })
}

// ---------------------------------------------------------------------------------------
// State.

/// An applied purchase, as the user's permanent history keeps it (mission progress is
/// computed from this list; it is never forgotten).
#[derive(Debug, Clone)]
struct Purchase {
    receipt_id: String,
    store: String,
    amount: i64,
    at: Instant,
    refunded: i128,
}

/// What the ledger remembers of an applied receipt (within the dedup window).
#[derive(Debug, Clone)]
struct Entry {
    content: Decoded,
    /// Base coins and XP earned (purchases).
    coins: i128,
    xp: i128,
    /// Campaign coins earned, config order (purchases).
    campaigns: Vec<(String, i128)>,
    /// Cents refunded so far (purchases).
    refunded: i128,
    /// Reversed already (redemptions).
    reversed: bool,
    /// Tier bonus coins earned (purchases).
    tier_bonus: i128,
    /// The lots a redemption took its coins from, oldest first: (month earned, coins).
    taken: Vec<(Month, i128)>,
}

/// A mission instance held as completed: the completing receipt's time (its periods get
/// the reward and, on revocation, lose it).
#[derive(Debug, Clone)]
struct Held {
    at: Instant,
}

/// One user's state.
#[derive(Debug, Clone)]
pub struct User {
    pub coins: i128,
    pub xp: i128,
    pub level: u64,
    pub spent: i128,
    pub receipts: u64,
    pub refunds: u64,
    pub stores: BTreeSet<String>,
    pub first: Option<Instant>,
    pub last: Option<Instant>,
    pub version: u64,
    pub source: Option<(i32, i64)>,
    /// Net coins per campaign id.
    pub campaign_net: BTreeMap<String, i128>,
    /// Units (day or week numbers) holding a purchase.
    pub units: BTreeSet<i64>,
    pub badges: Vec<String>,
    pub redemptions: u64,
    pub coins_redeemed: i128,
    pub completions: u64,
    purchases: Vec<Purchase>,
    /// (mission index, instance key) -> completed and held.
    held: BTreeMap<(usize, String), Held>,
    /// Coin lots: month earned -> coins left (non-empty lots only). `coins` is always
    /// their sum less `debt`, and a user with debt holds none.
    pub lots: BTreeMap<Month, i128>,
    /// Coins owed (a negative balance, as a positive number).
    pub debt: i128,
    /// Coins expired, ever.
    pub coins_expired: i128,
    /// The tier held: (level index, since).
    pub tier: Option<(usize, Instant)>,
    /// The next monthly review (only while a tier is held).
    pub next_review: Option<Instant>,
    /// The qualifying figure at the partition's mark after the record that last changed
    /// the user (`[tiers]` only).
    pub tier_figure: Option<i128>,
    /// The partition whose records carry the user (their timers are that partition's).
    pub partition: Option<i32>,
}

impl Default for User {
    fn default() -> Self {
        Self {
            coins: 0,
            xp: 0,
            level: 1,
            spent: 0,
            receipts: 0,
            refunds: 0,
            stores: BTreeSet::new(),
            first: None,
            last: None,
            version: 0,
            source: None,
            campaign_net: BTreeMap::new(),
            units: BTreeSet::new(),
            badges: Vec::new(),
            redemptions: 0,
            coins_redeemed: 0,
            completions: 0,
            purchases: Vec::new(),
            held: BTreeMap::new(),
            lots: BTreeMap::new(),
            debt: 0,
            coins_expired: 0,
            tier: None,
            next_review: None,
            tier_figure: None,
            partition: None,
        }
    }
}

impl User {
    /// A credit into the lot of `month`, after paying any debt.
    fn credit_lot(&mut self, month: Month, c: i128) {
        let pay = c.min(self.debt);
        self.debt -= pay;
        if c > pay {
            *self.lots.entry(month).or_insert(0) += c - pay;
        }
    }

    /// A debit from the lot of `first` (if any) first, then the oldest lots; what they
    /// cannot cover becomes debt. Returns the lots taken from, (month, coins), in the
    /// order taken.
    fn debit_lots(&mut self, first: Option<Month>, c: i128) -> Vec<(Month, i128)> {
        let order: Vec<Month> = first
            .into_iter()
            .chain(self.lots.keys().copied().filter(|m| Some(*m) != first))
            .collect();
        let mut rest = c;
        let mut taken = Vec::new();
        for m in order {
            let Some(lot) = self.lots.get_mut(&m) else {
                continue;
            };
            let t = (*lot).min(rest);
            *lot -= t;
            rest -= t;
            if *lot == 0 {
                self.lots.remove(&m);
            }
            if t > 0 {
                taken.push((m, t));
            }
        }
        self.debt += rest;
        taken
    }

    /// A redemption reversal's coins: any debt first, then back into the lots the
    /// redemption took them from, oldest first (a lot already expired is made again; its
    /// timer is then due at once).
    fn give_back(&mut self, c: i128, taken: &[(Month, i128)]) {
        let pay = c.min(self.debt);
        self.debt -= pay;
        let mut rest = c - pay;
        let mut taken = taken.to_vec();
        taken.sort();
        for (m, t) in taken {
            let put = t.min(rest);
            if put > 0 {
                *self.lots.entry(m).or_insert(0) += put;
            }
            rest -= put;
        }
        assert_eq!(rest, 0, "a redemption's lots add up to its coins");
    }

    /// (current, best) runs of consecutive units.
    pub fn streak(&self) -> (u64, u64) {
        let (mut best, mut run, mut prev) = (0u64, 0u64, None::<i64>);
        for &u in &self.units {
            run = if prev == Some(u - 1) { run + 1 } else { 1 };
            best = best.max(run);
            prev = Some(u);
        }
        (run, best)
    }
}

/// Scores of one user on one period: (xp, coins, spent cents).
pub type Scores = [i128; 3];

/// What a receipt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Seen before with the same content: nothing changed.
    Duplicate,
    /// Applied; the events it emitted, in order.
    Applied(Vec<Value>),
}

/// The reference model, one record at a time.
pub struct GameModel {
    pub cfg: GameConfig,
    newest: HashMap<i32, Instant>,
    pub users: BTreeMap<String, User>,
    ledger: HashMap<(String, String), Entry>,
    /// (period kind, period key) -> user -> scores.
    pub boards: BTreeMap<(String, String), BTreeMap<String, Scores>>,
    /// Every event, in emission order.
    pub events: Vec<Value>,
}

fn fit(v: i128) -> Result<i128, &'static str> {
    i64::try_from(v).map(|_| v).map_err(|_| "overflow")
}

impl GameModel {
    pub fn new(cfg: GameConfig) -> Self {
        Self {
            cfg,
            newest: HashMap::new(),
            users: BTreeMap::new(),
            ledger: HashMap::new(),
            boards: BTreeMap::new(),
            events: Vec::new(),
        }
    }

    /// The mission instance key of a purchase at `t`, if it counts for mission `m`.
    fn instance(&self, m: &Mission, t: Instant) -> Option<String> {
        let d = local_date(self.cfg.timezone, t);
        match m.period {
            PeriodKind::Day => Some(day_key(d)),
            PeriodKind::Week => Some(week_key(d)),
            PeriodKind::Month => Some(month_key(d)),
            PeriodKind::Once => {
                let (s, e) = m.window.expect("once has a window");
                (s <= t && t < e).then(|| "once".to_owned())
            }
        }
    }

    /// The streak unit number of a purchase at `t`.
    fn unit(&self, t: Instant) -> i64 {
        let d = local_date(self.cfg.timezone, t);
        let n = i64::from(d.num_days_from_ce());
        if self.cfg.streak_weeks {
            (n - i64::from(d.weekday().num_days_from_monday())).div_euclid(7)
        } else {
            n
        }
    }

    /// Progress of mission `mi`'s instance `key` from the user's purchases, net of refunds.
    fn progress(&self, u: &User, mi: usize, key: &str) -> i128 {
        let m = &self.cfg.missions[mi];
        let ps: Vec<&Purchase> = u
            .purchases
            .iter()
            .filter(|p| self.instance(m, p.at).as_deref() == Some(key))
            .collect();
        let net = |p: &&Purchase| i128::from(p.amount) - p.refunded;
        let alive = |p: &&&Purchase| p.refunded < i128::from(p.amount);
        match &m.goal {
            Goal::Spend => ps.iter().map(net).sum(),
            Goal::CategorySpend(c) => ps
                .iter()
                .filter(|p| self.cfg.category(&p.store) == Some(c.as_str()))
                .map(net)
                .sum(),
            Goal::Receipts => ps.iter().filter(alive).count() as i128,
            Goal::Stores => ps
                .iter()
                .filter(alive)
                .map(|p| p.store.as_str())
                .collect::<BTreeSet<_>>()
                .len() as i128,
        }
    }

    /// Folds one record; the error is the DLQ reason. Around the record (issue 33's
    /// order): (1) a record that decodes (applied, duplicate, or rejected by the dedup
    /// window, a ledger or a balance decision) first fires every timer of its user due at
    /// or before its `issued_at`; (2) the record is decided as the game decides it (its
    /// tier bonus with it), and when applied, the upgrade check runs at the mark as the
    /// record leaves it; (3) when applied, every timer of the partition due at or before
    /// the mark fires, by (instant, user_id), expiry before review. Every user the record's
    /// processing changed then gets one new version with the record as `source`, and (with
    /// `[tiers]`) the figure at the partition's mark as `tier_figure`. Records rejected in
    /// decoding change nothing.
    pub fn apply(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        value: &[u8],
    ) -> Result<Outcome, &'static str> {
        let r = decode(key, value, &self.cfg.currency)?;
        let mut changed: BTreeSet<String> = BTreeSet::new();
        // (1) The user's own timers, up to the record's issued_at, even past the mark.
        self.fire_user(&r.user_id, r.at, &mut changed);
        let outcome = self.decide(partition, r.clone());
        if let Ok(Outcome::Applied(_)) = &outcome {
            changed.insert(r.user_id.clone());
            // (2) The upgrade check, at max(mark, issued_at): the mark as the record leaves it.
            let m = self.newest[&partition];
            self.upgrade(&r.user_id, m);
            // (3) Every timer of the partition up to the mark.
            self.fire_partition(partition, m, &mut changed);
        }
        let mark = self.newest.get(&partition).copied();
        for id in changed {
            let figure = match (&self.cfg.tiers, mark) {
                (Some(t), Some(mark)) => {
                    Some(self.figure(&id, month_of(self.cfg.timezone, mark), t.window_months))
                }
                _ => None,
            };
            let u = self.users.get_mut(&id).expect("a changed user exists");
            u.version += 1;
            u.source = Some((partition, offset));
            u.tier_figure = figure;
        }
        outcome
    }

    /// The user's qualifying figure over the `n` months ending with `last`: the sum of
    /// their scores on those months' `spent` (or `xp`) boards.
    fn figure(&self, user_id: &str, last: Month, n: i32) -> i128 {
        let Some(t) = &self.cfg.tiers else { return 0 };
        let i = match t.basis {
            Basis::Spend => 2,
            Basis::Xp => 0,
        };
        (last - n + 1..=last)
            .filter_map(|m| {
                self.boards
                    .get(&("month".to_owned(), month_label(m)))?
                    .get(user_id)
                    .map(|s| s[i])
            })
            .sum()
    }

    /// The user's soonest timer: (instant, 0 for a lot's expiry or 1 for a review, the
    /// lot's month). A lot earned in M expires at the start of M + `months`, so the
    /// oldest lot expires first.
    fn next_timer(&self, u: &User) -> Option<(Instant, u8, Month)> {
        let expiry = self.cfg.expiry.and_then(|e| {
            let (&m, _) = u.lots.iter().next()?;
            Some((month_start(self.cfg.timezone, m + e.months), 0, m))
        });
        let review = u.next_review.map(|at| (at, 1, 0));
        match (expiry, review) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fires every timer of one user due at or before `upto`, in time order.
    fn fire_user(&mut self, user_id: &str, upto: Instant, changed: &mut BTreeSet<String>) {
        loop {
            let Some(u) = self.users.get(user_id) else {
                return;
            };
            match self.next_timer(u) {
                Some((at, kind, m)) if at <= upto => self.fire(user_id, at, kind, m, changed),
                _ => return,
            }
        }
    }

    /// Fires every timer of the partition's users due at or before `mark`, ordered by
    /// (instant, user_id), a user's expiry before their review at one instant.
    fn fire_partition(&mut self, partition: i32, mark: Instant, changed: &mut BTreeSet<String>) {
        loop {
            let next = self
                .users
                .iter()
                .filter(|(_, u)| u.partition == Some(partition))
                .filter_map(|(id, u)| {
                    let (at, kind, m) = self.next_timer(u)?;
                    (at <= mark).then(|| (at, id.clone(), kind, m))
                })
                .min();
            let Some((at, id, kind, m)) = next else {
                return;
            };
            self.fire(&id, at, kind, m, changed);
        }
    }

    /// Fires one timer: the expiry of the lot earned in `m` (kind 0), or a review (1).
    fn fire(
        &mut self,
        user_id: &str,
        at: Instant,
        kind: u8,
        m: Month,
        changed: &mut BTreeSet<String>,
    ) {
        let tz = self.cfg.timezone;
        if kind == 0 {
            let u = self.users.get_mut(user_id).expect("a user with timers");
            let coins = u.lots.remove(&m).unwrap_or(0);
            if coins == 0 {
                return;
            }
            u.coins -= coins;
            u.coins_expired += coins;
            changed.insert(user_id.to_owned());
            self.events.push(json!({
                "type": "coins_expired",
                "user_id": user_id,
                "coins": coins as i64,
                "earned_in": month_label(m),
                "at": format_instant(at),
            }));
            return;
        }
        let t = self.cfg.tiers.clone().expect("reviews only with [tiers]");
        let month = month_of(tz, at);
        // The complete months before the month start.
        let figure = self.figure(user_id, month - 1, t.window_months);
        let u = self.users.get_mut(user_id).expect("a user with timers");
        let (held, _) = u.tier.expect("reviews only while a tier is held");
        if figure < i128::from(t.levels[held].min) {
            let to = match t.downgrade {
                Downgrade::OneDown => held.checked_sub(1),
                Downgrade::ToQualified => t.reached(figure),
            };
            u.tier = to.map(|i| (i, at));
            changed.insert(user_id.to_owned());
            self.events.push(json!({
                "type": "tier_changed",
                "user_id": user_id,
                "from": t.levels[held].id,
                "to": to.map(|i| t.levels[i].id.clone()),
                "reason": "review",
                "at": format_instant(at),
            }));
        }
        u.next_review = u.tier.map(|_| month_start(tz, month + 1));
    }

    /// The upgrade check after an applied record, at `m` (the mark as the record leaves
    /// it): up at once to the highest level the figure at `m` reaches.
    fn upgrade(&mut self, user_id: &str, m: Instant) {
        let Some(t) = self.cfg.tiers.clone() else {
            return;
        };
        let tz = self.cfg.timezone;
        let month = month_of(tz, m);
        let Some(to) = t.reached(self.figure(user_id, month, t.window_months)) else {
            return;
        };
        let u = self.users.get_mut(user_id).expect("an applied user exists");
        let from = u.tier.map(|(i, _)| i);
        if from.is_some_and(|f| f >= to) {
            return;
        }
        u.tier = Some((to, m));
        u.next_review = Some(month_start(tz, month + 1));
        self.events.push(json!({
            "type": "tier_changed",
            "user_id": user_id,
            "from": from.map(|i| t.levels[i].id.clone()),
            "to": t.levels[to].id,
            "reason": "qualified",
            "at": format_instant(m),
        }));
    }

    /// Decides one decoded record as the game does (with its tier bonus and coin lots);
    /// on error nothing changes.
    fn decide(&mut self, partition: i32, r: Decoded) -> Result<Outcome, &'static str> {
        let window_secs = self.cfg.window_days * SECS_PER_DAY;
        let oldest = self.newest.get(&partition).map(|n| Instant {
            secs: n.secs - window_secs,
            nanos: n.nanos,
        });
        if oldest.is_some_and(|o| r.at < o) {
            return Err("too_old");
        }
        let remembered = |e: &&Entry| oldest.is_none_or(|o| e.content.at >= o);
        let lkey = (r.user_id.clone(), r.receipt_id.clone());
        if let Some(e) = self.ledger.get(&lkey).filter(remembered) {
            return if e.content == r {
                Ok(Outcome::Duplicate)
            } else {
                Err("conflicting_duplicate")
            };
        }

        let tz = self.cfg.timezone;
        let mut u = self.users.get(&r.user_id).cloned().unwrap_or_default();
        let coins_before = u.coins;
        let mut events: Vec<Value> = Vec::new();
        // Board deltas: (time whose periods get it, [xp, coins, spent]).
        let mut deltas: Vec<(Instant, Scores)> = Vec::new();
        let mut ledger_updates: Vec<((String, String), Entry)> = Vec::new();
        let at_text = format_instant(r.at);
        let mut xp_added = false;

        match r.kind {
            Kind::Purchase => {
                let amount = i128::from(r.amount.expect("purchase amount"));
                let rules = self.cfg.rules_at(r.at);
                let coins =
                    amount * i128::from(rules.coins_per_unit) * rules.pct(&r.store_id) / 10_000;
                let xp =
                    i128::from(rules.xp_per_receipt) + amount / 100 * i128::from(rules.xp_per_unit);
                u.coins += coins;
                u.xp += xp;
                u.spent += amount;
                u.receipts += 1;
                u.stores.insert(r.store_id.clone());
                u.first = Some(u.first.map_or(r.at, |t| t.min(r.at)));
                u.last = Some(u.last.map_or(r.at, |t| t.max(r.at)));
                deltas.push((r.at, [xp, coins, amount]));
                xp_added = true;
                // Campaigns, config order.
                let mut got = Vec::new();
                for c in &self.cfg.campaigns {
                    let in_time = c.start <= r.at && r.at < c.end;
                    let big_enough = c.min_amount.is_none_or(|m| amount >= i128::from(m));
                    let store_ok = match (&c.stores, &c.categories) {
                        (None, None) => true,
                        (s, k) => {
                            s.as_ref().is_some_and(|s| s.contains(&r.store_id))
                                || k.as_ref().is_some_and(|k| {
                                    self.cfg
                                        .category(&r.store_id)
                                        .is_some_and(|x| k.contains(x))
                                })
                        }
                    };
                    if !(in_time && big_enough && store_ok) {
                        continue;
                    }
                    let mut bonus =
                        coins * i128::from(c.bonus_percent) / 100 + i128::from(c.bonus_coins);
                    let net = u.campaign_net.get(&c.id).copied().unwrap_or(0);
                    if let Some(cap) = c.max_coins_per_user {
                        bonus = bonus.min(i128::from(cap) - net);
                    }
                    let bonus = bonus.max(0);
                    u.coins += bonus;
                    *u.campaign_net.entry(c.id.clone()).or_insert(0) += bonus;
                    deltas.push((r.at, [0, bonus, 0]));
                    got.push((c.id.clone(), bonus));
                }
                u.purchases.push(Purchase {
                    receipt_id: r.receipt_id.clone(),
                    store: r.store_id.clone(),
                    amount: r.amount.unwrap(),
                    at: r.at,
                    refunded: 0,
                });
                u.units.insert(self.unit(r.at));
                // Missions: the purchase's instances may complete.
                for (mi, m) in self.cfg.missions.iter().enumerate() {
                    let Some(inst) = self.instance(m, r.at) else {
                        continue;
                    };
                    let k = (mi, inst.clone());
                    if u.held.contains_key(&k) {
                        continue;
                    }
                    if self.progress(&u, mi, &inst) >= i128::from(m.target) {
                        u.coins += i128::from(m.reward_coins);
                        u.xp += i128::from(m.reward_xp);
                        u.completions += 1;
                        u.held.insert(k, Held { at: r.at });
                        deltas.push((
                            r.at,
                            [i128::from(m.reward_xp), i128::from(m.reward_coins), 0],
                        ));
                        events.push(json!({
                            "type": "mission_completed",
                            "user_id": r.user_id,
                            "mission_id": m.id,
                            "period": inst,
                            "reward_coins": m.reward_coins,
                            "reward_xp": m.reward_xp,
                            "receipt_id": r.receipt_id,
                            "at": at_text,
                        }));
                    }
                }
                // The tier bonus, at the tier held now (after step (1), before this
                // purchase's own upgrade check), on the coins boards of the purchase's
                // periods.
                let tier_bonus = match (&self.cfg.tiers, u.tier) {
                    (Some(t), Some((i, _))) => coins * i128::from(t.levels[i].bonus_percent) / 100,
                    _ => 0,
                };
                if tier_bonus != 0 {
                    u.coins += tier_bonus;
                    deltas.push((r.at, [0, tier_bonus, 0]));
                }
                ledger_updates.push((
                    lkey.clone(),
                    Entry {
                        content: r.clone(),
                        coins,
                        xp,
                        campaigns: got,
                        refunded: 0,
                        reversed: false,
                        tier_bonus,
                        taken: Vec::new(),
                    },
                ));
            }
            Kind::Refund => {
                let amount = i128::from(r.amount.expect("refund amount"));
                let of = r.refund_of.clone().expect("refund_of");
                let okey = (r.user_id.clone(), of.clone());
                let Some(orig) = self
                    .ledger
                    .get(&okey)
                    .filter(remembered)
                    .filter(|e| e.content.kind == Kind::Purchase)
                    .cloned()
                else {
                    return Err("unknown_original");
                };
                let oamount = i128::from(orig.content.amount.unwrap());
                let r0 = orig.refunded;
                let r1 = r0 + amount;
                if r1 > oamount {
                    return Err("refund_exceeds_original");
                }
                let share = |earned: i128, refunded: i128| earned * refunded / oamount;
                let back = |earned: i128| share(earned, r1) - share(earned, r0);
                let coins_back = back(orig.coins);
                let xp_back = back(orig.xp);
                u.coins -= coins_back;
                u.xp -= xp_back;
                u.spent -= amount;
                u.refunds += 1;
                let pat = orig.content.at;
                deltas.push((pat, [-xp_back, -coins_back, -amount]));
                for (cid, got) in &orig.campaigns {
                    let cb = back(*got);
                    u.coins -= cb;
                    *u.campaign_net.entry(cid.clone()).or_insert(0) -= cb;
                    deltas.push((pat, [0, -cb, 0]));
                }
                // The tier bonus, proportionally, as campaign coins.
                let tb = back(orig.tier_bonus);
                if tb != 0 {
                    u.coins -= tb;
                    deltas.push((pat, [0, -tb, 0]));
                }
                let p = u
                    .purchases
                    .iter_mut()
                    .rev()
                    .find(|p| p.receipt_id == of && p.at == pat)
                    .expect("the purchase is in the user's history");
                p.refunded = r1;
                // Missions: the purchase's instances may be revoked.
                for (mi, m) in self.cfg.missions.iter().enumerate() {
                    let Some(inst) = self.instance(m, pat) else {
                        continue;
                    };
                    let k = (mi, inst.clone());
                    if !m.revoke {
                        continue;
                    }
                    let Some(held) = u.held.get(&k).cloned() else {
                        continue;
                    };
                    if self.progress(&u, mi, &inst) < i128::from(m.target) {
                        u.coins -= i128::from(m.reward_coins);
                        u.xp -= i128::from(m.reward_xp);
                        u.held.remove(&k);
                        deltas.push((
                            held.at,
                            [-i128::from(m.reward_xp), -i128::from(m.reward_coins), 0],
                        ));
                        events.push(json!({
                            "type": "mission_revoked",
                            "user_id": r.user_id,
                            "mission_id": m.id,
                            "period": inst,
                            "reward_coins": m.reward_coins,
                            "reward_xp": m.reward_xp,
                            "receipt_id": r.receipt_id,
                            "at": at_text,
                        }));
                    }
                }
                let mut o = orig;
                o.refunded = r1;
                ledger_updates.push((okey, o));
                ledger_updates.push((
                    lkey.clone(),
                    Entry {
                        content: r.clone(),
                        coins: 0,
                        xp: 0,
                        campaigns: Vec::new(),
                        refunded: 0,
                        reversed: false,
                        tier_bonus: 0,
                        taken: Vec::new(),
                    },
                ));
            }
            Kind::Redemption => {
                let c = i128::from(r.coins.expect("redemption coins"));
                if u.coins < c {
                    return Err("insufficient_coins");
                }
                u.coins -= c;
                u.redemptions += 1;
                u.coins_redeemed += c;
                // Oldest lots first (no debt: the balance covers it); the lots taken are
                // remembered for a reversal.
                let taken = u.debit_lots(None, c);
                ledger_updates.push((
                    lkey.clone(),
                    Entry {
                        content: r.clone(),
                        coins: 0,
                        xp: 0,
                        campaigns: Vec::new(),
                        refunded: 0,
                        reversed: false,
                        tier_bonus: 0,
                        taken,
                    },
                ));
            }
            Kind::RedemptionReversal => {
                let of = r.refund_of.clone().expect("refund_of");
                let okey = (r.user_id.clone(), of);
                let Some(orig) = self
                    .ledger
                    .get(&okey)
                    .filter(remembered)
                    .filter(|e| e.content.kind == Kind::Redemption)
                    .cloned()
                else {
                    return Err("unknown_original");
                };
                if orig.reversed {
                    return Err("refund_exceeds_original");
                }
                let c = i128::from(orig.content.coins.unwrap());
                u.coins += c;
                u.coins_redeemed -= c;
                // Debt first, then back into the lots they were taken from, oldest first.
                u.give_back(c, &orig.taken);
                let mut o = orig;
                o.reversed = true;
                ledger_updates.push((okey, o));
                ledger_updates.push((
                    lkey.clone(),
                    Entry {
                        content: r.clone(),
                        coins: 0,
                        xp: 0,
                        campaigns: Vec::new(),
                        refunded: 0,
                        reversed: false,
                        tier_bonus: 0,
                        taken: Vec::new(),
                    },
                ));
            }
        }

        // One level-up check over all XP the receipt added.
        if xp_added {
            let level = self.cfg.level_for(u.xp).max(u.level);
            if level > u.level {
                let bonus = i128::from(level - u.level) * i128::from(self.cfg.level_up_bonus_coins);
                u.coins += bonus;
                deltas.push((r.at, [0, bonus, 0]));
                events.push(json!({
                    "type": "level_up",
                    "user_id": r.user_id,
                    "from_level": u.level,
                    "to_level": level,
                    "bonus_coins": bonus as i64,
                    "receipt_id": r.receipt_id,
                    "at": at_text,
                }));
                u.level = level;
            }
        }

        // Badges, config order.
        let (_, best) = u.streak();
        for b in &self.cfg.badges {
            if u.badges.contains(&b.id) {
                continue;
            }
            let figure: i128 = match b.kind {
                BadgeKind::Streak => i128::from(best),
                BadgeKind::Stores => u.stores.len() as i128,
                BadgeKind::Receipts => i128::from(u.receipts),
                BadgeKind::Spend => u.spent,
                BadgeKind::Level => i128::from(u.level),
                BadgeKind::Missions => i128::from(u.completions),
            };
            if figure >= i128::from(b.threshold) {
                u.badges.push(b.id.clone());
                events.push(json!({
                    "type": "badge_earned",
                    "user_id": r.user_id,
                    "badge_id": b.id,
                    "receipt_id": r.receipt_id,
                    "at": at_text,
                }));
            }
        }

        // Coin lots: a purchase's credits (all of them: base, campaign, tier bonus,
        // mission rewards, level-up bonus) pay the debt first, then go into the lot of
        // its month; a refund's take-backs come from the purchase's lot first, then the
        // oldest, the rest becoming debt. (Redemptions and reversals moved theirs above.)
        let delta = u.coins - coins_before;
        match r.kind {
            Kind::Purchase => {
                assert!(delta >= 0, "a purchase only credits");
                u.credit_lot(month_of(tz, r.at), delta);
            }
            Kind::Refund => {
                assert!(delta <= 0, "a refund only takes back");
                let of = r.refund_of.clone().expect("refund_of");
                let pat = self.ledger[&(r.user_id.clone(), of)].content.at;
                u.debit_lots(Some(month_of(tz, pat)), -delta);
            }
            Kind::Redemption | Kind::RedemptionReversal => {}
        }
        assert_eq!(
            u.coins,
            u.lots.values().sum::<i128>() - u.debt,
            "coins = lots - debt for {}",
            r.user_id
        );

        // Board deltas, then every total checked against i64 before anything is kept.
        let mut boards_after: Vec<((String, String), Scores)> = Vec::new();
        for (t, d) in &deltas {
            for (kind, key) in periods_of(tz, *t) {
                let bk = (kind.to_owned(), key);
                let cur = match boards_after.iter().position(|(k, _)| *k == bk) {
                    Some(i) => boards_after[i].1,
                    None => self
                        .boards
                        .get(&bk)
                        .and_then(|b| b.get(&r.user_id))
                        .copied()
                        .unwrap_or([0; 3]),
                };
                let new = [cur[0] + d[0], cur[1] + d[1], cur[2] + d[2]];
                match boards_after.iter().position(|(k, _)| *k == bk) {
                    Some(i) => boards_after[i].1 = new,
                    None => boards_after.push((bk, new)),
                }
            }
        }
        fit(u.coins)?;
        fit(u.xp)?;
        fit(u.spent)?;
        fit(u.coins_redeemed)?;
        for v in u.campaign_net.values() {
            fit(*v)?;
        }
        for (_, s) in &boards_after {
            for v in s {
                fit(*v)?;
            }
        }

        // Commit (the version is bumped by `apply`, once for every user changed).
        u.partition = Some(partition);
        self.users.insert(r.user_id.clone(), u);
        for (bk, s) in boards_after {
            self.boards
                .entry(bk)
                .or_default()
                .insert(r.user_id.clone(), s);
        }
        for (k, e) in ledger_updates {
            self.ledger.insert(k, e);
        }
        let n = self.newest.entry(partition).or_insert(r.at);
        *n = (*n).max(r.at);
        self.events.extend(events.iter().cloned());
        Ok(Outcome::Applied(events))
    }

    /// The state so far as a [`GameExpected`] (projections, events, boards; `dlq` empty:
    /// the caller has the rejections `apply` returned).
    pub fn expected(&self) -> GameExpected {
        GameExpected {
            projections: self
                .users
                .keys()
                .filter_map(|id| Some((id.clone(), self.projection(id)?)))
                .collect(),
            events: self.events.clone(),
            dlq: Vec::new(),
            scores: self.boards.clone(),
            periods_kept: self.cfg.periods_kept,
        }
    }

    /// A user's projection JSON: the core fields, then `coins_by_campaign` (non-zero nets),
    /// `streak`, `badges`, `redemptions`, `coins_redeemed`.
    pub fn projection(&self, user_id: &str) -> Option<Value> {
        let u = self.users.get(user_id)?;
        let ts = |t: Option<Instant>| t.map(format_instant);
        let (current, best) = u.streak();
        let by_campaign: serde_json::Map<String, Value> = u
            .campaign_net
            .iter()
            .filter(|(_, v)| **v != 0)
            .map(|(k, v)| (k.clone(), json!(*v as i64)))
            .collect();
        Some(json!({
            "user_id": user_id,
            "coins": u.coins as i64,
            "xp": u.xp as i64,
            "level": u.level,
            "total_spent": money(u.spent),
            "receipt_count": u.receipts,
            "refund_count": u.refunds,
            "stores_visited": u.stores.len(),
            "first_receipt_at": ts(u.first),
            "last_receipt_at": ts(u.last),
            "version": u.version,
            "source": u.source.map(|(p, o)| json!({"partition": p, "offset": o})),
            "coins_by_campaign": by_campaign,
            "streak": {"current": current, "best": best},
            "badges": u.badges,
            "redemptions": u.redemptions,
            "coins_redeemed": u.coins_redeemed as i64,
            "tier": u.tier.map(|(i, since)| json!({
                "id": self.cfg.tiers.as_ref().expect("a tier only with [tiers]").levels[i].id,
                "since": format_instant(since),
            })),
            "tier_figure": match (&self.cfg.tiers, u.tier_figure) {
                (Some(t), Some(f)) if t.basis == Basis::Spend => json!(money(f)),
                (Some(_), Some(f)) => json!(f as i64),
                _ => Value::Null,
            },
            "coins_expired": u.coins_expired as i64,
            "next_expiry": self.cfg.expiry.and_then(|e| {
                let (&m, &coins) = u.lots.iter().next()?;
                Some(json!({
                    "at": format_instant(month_start(self.cfg.timezone, m + e.months)),
                    "coins": coins as i64,
                }))
            }),
        }))
    }
}

// ---------------------------------------------------------------------------------------
// Whole streams.

/// One board entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardEntry {
    pub rank: u64,
    pub user_id: String,
    /// XP, coins, or cents for `spent`.
    pub score: i128,
}

/// A whole board: `of` users, every entry in rank order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Board {
    pub period: String,
    pub at: String,
    pub by: String,
    pub of: u64,
    pub entries: Vec<BoardEntry>,
}

impl Board {
    /// The board as the golden vectors write it, with the first `limit` entries
    /// (`spent` as a money string).
    pub fn to_json(&self, limit: usize) -> Value {
        let spent = self.by == "spent";
        let entries: Vec<Value> = self
            .entries
            .iter()
            .take(limit)
            .map(|e| {
                let score = if spent {
                    json!(money(e.score))
                } else {
                    json!(e.score as i64)
                };
                json!({"rank": e.rank, "user_id": e.user_id, "score": score})
            })
            .collect();
        json!({"period": self.period, "at": self.at, "by": self.by, "of": self.of, "entries": entries})
    }

    /// A user's `{rank, score}` on this board.
    pub fn rank_of(&self, user_id: &str) -> Option<&BoardEntry> {
        self.entries.iter().find(|e| e.user_id == user_id)
    }
}

/// What a stream must produce.
#[derive(Debug, Default)]
pub struct GameExpected {
    /// Final projection JSON per user.
    pub projections: BTreeMap<String, Value>,
    /// Every event in emission order.
    pub events: Vec<Value>,
    /// (offset, reason) of every rejected record, in input order.
    pub dlq: Vec<(i64, String)>,
    /// (period kind, period key) -> user -> (xp, coins, spent cents): every period, none
    /// pruned.
    pub scores: BTreeMap<(String, String), BTreeMap<String, Scores>>,
    pub periods_kept: usize,
}

impl GameExpected {
    /// The board of `period` ("day" | "week" | "month" | "all") `at` ("2026-12-05",
    /// "2026-W49", "2026-12", "all") `by` ("xp" | "coins" | "spent"): every user with
    /// anything attributed to the period (net zero included), score descending, ties by
    /// user_id ascending. `None` for an unknown period or `by`.
    pub fn board(&self, period: &str, at: &str, by: &str) -> Option<Board> {
        let i = match by {
            "xp" => 0,
            "coins" => 1,
            "spent" => 2,
            _ => return None,
        };
        let users = self.scores.get(&(period.to_owned(), at.to_owned()))?;
        let mut rows: Vec<(&String, i128)> = users.iter().map(|(u, s)| (u, s[i])).collect();
        rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        Some(Board {
            period: period.to_owned(),
            at: at.to_owned(),
            by: by.to_owned(),
            of: rows.len() as u64,
            entries: rows
                .into_iter()
                .enumerate()
                .map(|(n, (u, s))| BoardEntry {
                    rank: n as u64 + 1,
                    user_id: u.clone(),
                    score: s,
                })
                .collect(),
        })
    }

    /// `(rank, score, of)` of a user on a board, as `GET /v1/users/{id}/rank` answers it;
    /// `None` when the user is not on that board.
    pub fn rank(
        &self,
        period: &str,
        at: &str,
        by: &str,
        user_id: &str,
    ) -> Option<(u64, i128, u64)> {
        let b = self.board(period, at, by)?;
        let e = b.rank_of(user_id)?;
        Some((e.rank, e.score, b.of))
    }

    /// The periods of `kind` the engine keeps: the latest `periods_kept` keys (`["all"]`
    /// for "all"), ascending.
    pub fn kept_periods(&self, kind: &str) -> Vec<String> {
        let keys: Vec<String> = self
            .scores
            .keys()
            .filter(|(k, _)| k == kind)
            .map(|(_, key)| key.clone())
            .collect();
        let n = if kind == "all" { 1 } else { self.periods_kept };
        keys[keys.len().saturating_sub(n)..].to_vec()
    }
}

/// An input record: (partition, offset, key, value).
pub type InputRecord = (i32, i64, Option<Vec<u8>>, Vec<u8>);

/// Folds records in the order given under a configuration; panics on a bad configuration.
pub fn fold(config_toml: &str, records: &[InputRecord]) -> GameExpected {
    let cfg = GameConfig::parse(config_toml).unwrap_or_else(|e| panic!("bad config: {e}"));
    fold_config(cfg, records)
}

/// [`fold`] with a parsed configuration.
pub fn fold_config(cfg: GameConfig, records: &[InputRecord]) -> GameExpected {
    let mut model = GameModel::new(cfg);
    let mut dlq = Vec::new();
    for (p, o, key, value) in records {
        if let Err(reason) = model.apply(*p, *o, key.as_deref(), value) {
            dlq.push((*o, reason.to_owned()));
        }
    }
    let mut out = model.expected();
    out.dlq = dlq;
    out
}

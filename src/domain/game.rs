//! The game's configuration beyond `[rules]`: campaigns, missions, streaks, badges and
//! store categories, and the mall-local calendar every one of them is decided in.
//!
//! Everything here is decided by a receipt's `issued_at` read in the mall's time zone,
//! never by the wall clock, so that a replay or a rebuild decides the same.

use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDate, TimeZone};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer};

use super::money::{parse_amount, Minor};
use super::Timestamp;

/// The sections of the configuration that make up the game, besides `[rules]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Game {
    /// `[store_categories]`: store_id = category.
    #[serde(default)]
    pub store_categories: BTreeMap<String, String>,
    /// `[[campaigns]]`, applied in this order.
    #[serde(default)]
    pub campaigns: Vec<Campaign>,
    /// `[[missions]]`, decided in this order.
    #[serde(default)]
    pub missions: Vec<Mission>,
    /// `[streaks]`.
    #[serde(default)]
    pub streaks: Streaks,
    /// `[[badges]]`, awarded in this order.
    #[serde(default)]
    pub badges: Vec<Badge>,
    /// The dedup window in seconds, when known: mission instances of periods that ended
    /// before it are dropped from the state (nothing can change them any more).
    #[serde(skip)]
    pub window_secs: Option<i64>,
    /// `[processing] periods_kept`: how many of the latest days, weeks and months the
    /// period boards keep (default [`DEFAULT_PERIODS_KEPT`]).
    #[serde(skip)]
    pub periods_kept: Option<usize>,
    /// `[expiry]`: coins expire in monthly lots; `None`, they never expire.
    #[serde(skip)]
    pub expiry: Option<super::timers::Expiry>,
    /// `[tiers]`: status tiers; `None`, no tiers.
    #[serde(skip)]
    pub tiers: Option<super::timers::Tiers>,
}

/// Default of `[processing] periods_kept`.
pub const DEFAULT_PERIODS_KEPT: usize = 3;

/// A dated bonus on qualifying purchases.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Campaign {
    /// Its name, in `coins_by_campaign`.
    pub id: String,
    /// First instant it applies (inclusive).
    #[serde(deserialize_with = "instant")]
    pub start: Timestamp,
    /// First instant it no longer applies (exclusive).
    #[serde(deserialize_with = "instant")]
    pub end: Timestamp,
    /// Stores it applies in; with `categories`, either matching is enough.
    #[serde(default)]
    pub stores: Option<Vec<String>>,
    /// Store categories it applies in.
    #[serde(default)]
    pub categories: Option<Vec<String>>,
    /// Smallest qualifying receipt amount.
    #[serde(default, deserialize_with = "opt_amount")]
    pub min_amount: Option<Minor>,
    /// Extra coins, in percent of the purchase's base coins (floored).
    #[serde(default)]
    pub bonus_percent: i64,
    /// Extra coins per qualifying purchase.
    #[serde(default)]
    pub bonus_coins: i64,
    /// Most campaign coins one user holds from this campaign.
    #[serde(default)]
    pub max_coins_per_user: Option<i64>,
}

/// The calendar unit a mission counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissionPeriod {
    /// A mall-local day.
    Day,
    /// An ISO week, mall-local.
    Week,
    /// A mall-local month.
    Month,
    /// Once, between the mission's `start` and `end`.
    Once,
}

/// What a mission counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    /// Money spent, net of refunds.
    Spend,
    /// Purchases not fully refunded.
    Receipts,
    /// Distinct stores with a purchase not fully refunded.
    Stores,
    /// Money spent in stores of one category, net of refunds.
    CategorySpend,
}

/// What a refund that takes progress below the target does to a completed mission.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRefund {
    /// The reward stays.
    #[default]
    Keep,
    /// The reward is reversed (levels still never go down).
    Revoke,
}

/// A goal within a period, rewarded once per period instance.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mission {
    /// Its name, in events.
    pub id: String,
    /// The calendar unit it counts in.
    pub period: MissionPeriod,
    /// Start of a `once` mission (inclusive).
    #[serde(default, deserialize_with = "opt_instant")]
    pub start: Option<Timestamp>,
    /// End of a `once` mission (exclusive).
    #[serde(default, deserialize_with = "opt_instant")]
    pub end: Option<Timestamp>,
    /// What it counts.
    pub goal: Goal,
    /// The category of a `category_spend` goal.
    #[serde(default)]
    pub category: Option<String>,
    /// A count, or an amount string for spend goals (then in minor units).
    #[serde(deserialize_with = "target")]
    pub target: Target,
    /// Coins of the reward.
    #[serde(default)]
    pub reward_coins: i64,
    /// XP of the reward.
    #[serde(default)]
    pub reward_xp: i64,
    /// What a refund does once it is completed.
    #[serde(default)]
    pub on_refund: OnRefund,
}

/// A mission's or a badge's threshold as written: a count or an amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A whole number.
    Count(i64),
    /// An amount, in minor units.
    Amount(Minor),
}

impl Target {
    /// The threshold as a number in the unit of its figure (minor units for amounts).
    pub fn value(self) -> i64 {
        match self {
            Target::Count(n) | Target::Amount(n) => n,
        }
    }
}

/// `[streaks]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Streaks {
    /// What counts as one step of a streak.
    #[serde(default)]
    pub unit: StreakUnit,
}

/// The unit of a streak.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreakUnit {
    /// Consecutive mall-local days with a purchase.
    #[default]
    Day,
    /// Consecutive ISO weeks with a purchase.
    Week,
}

/// Which figure a badge watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadgeKind {
    /// The best streak.
    Streak,
    /// Distinct stores visited.
    Stores,
    /// Purchases applied.
    Receipts,
    /// Total spent (threshold an amount string).
    Spend,
    /// The level.
    Level,
    /// Missions completed, ever.
    Missions,
}

/// Earned once, the first time its figure reaches the threshold; never revoked.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Badge {
    /// Its name, in events and the projection.
    pub id: String,
    /// The figure it watches.
    pub kind: BadgeKind,
    /// The figure to reach: a count, or an amount string for `spend`.
    #[serde(deserialize_with = "target")]
    pub threshold: Target,
}

/// Deserializes an RFC 3339 instant with an offset.
pub(crate) fn instant_field<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
    instant(d)
}

fn instant<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
    let text = String::deserialize(d)?;
    Timestamp::parse_rfc3339(&text).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "{text:?} is not an RFC 3339 instant with an offset"
        ))
    })
}

fn opt_instant<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
    instant(d).map(Some)
}

fn opt_amount<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Minor>, D::Error> {
    let text = String::deserialize(d)?;
    parse_amount(&text).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!("{text:?} is not an amount such as \"50.00\""))
    })
}

fn target<'de, D: Deserializer<'de>>(d: D) -> Result<Target, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Count(i64),
        Amount(String),
    }
    match Raw::deserialize(d)? {
        Raw::Count(n) => Ok(Target::Count(n)),
        Raw::Amount(text) => parse_amount(&text).map(Target::Amount).ok_or_else(|| {
            serde::de::Error::custom(format!("{text:?} is not an amount such as \"200.00\""))
        }),
    }
}

/// Seconds in a day of event time.
pub const SECS_PER_DAY: i64 = 86_400;

/// Bound on rewards and bonuses, as on the rates of `[rules]`.
const MAX_REWARD: i64 = 1_000_000;

impl Game {
    /// How many of the latest periods of each kind the boards keep.
    pub fn periods_kept(&self) -> usize {
        self.periods_kept.unwrap_or(DEFAULT_PERIODS_KEPT)
    }

    /// Whether any rule fires timers (`[expiry]` or `[tiers]`).
    pub fn has_timers(&self) -> bool {
        self.expiry.is_some() || self.tiers.is_some()
    }

    /// The category of a store, if listed.
    pub fn category(&self, store_id: &str) -> Option<&str> {
        self.store_categories.get(store_id).map(String::as_str)
    }

    /// Checks the sections; returns the offending key and why.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        let mut ids = std::collections::BTreeSet::new();
        for c in &self.campaigns {
            if !valid_id(&c.id) || !ids.insert(c.id.as_str()) {
                return Err((
                    "campaigns.id",
                    format!("{:?} must be 1 to 128 characters and unique", c.id),
                ));
            }
            if c.start >= c.end {
                return Err((
                    "campaigns.end",
                    format!("{:?} must end after it starts", c.id),
                ));
            }
            for (key, v) in [
                ("campaigns.bonus_percent", c.bonus_percent),
                ("campaigns.bonus_coins", c.bonus_coins),
                (
                    "campaigns.max_coins_per_user",
                    c.max_coins_per_user.unwrap_or(0),
                ),
            ] {
                if !(0..=MAX_REWARD).contains(&v) {
                    return Err((
                        key,
                        format!("{:?}: must be between 0 and {MAX_REWARD}, got {v}", c.id),
                    ));
                }
            }
        }
        let mut ids = std::collections::BTreeSet::new();
        for m in &self.missions {
            if !valid_id(&m.id) || !ids.insert(m.id.as_str()) {
                return Err((
                    "missions.id",
                    format!("{:?} must be 1 to 128 characters and unique", m.id),
                ));
            }
            match (m.period, m.start, m.end) {
                (MissionPeriod::Once, Some(s), Some(e)) if s < e => {}
                (MissionPeriod::Once, _, _) => {
                    return Err((
                        "missions.start",
                        format!("{:?}: a \"once\" mission needs start < end", m.id),
                    ))
                }
                (_, None, None) => {}
                _ => {
                    return Err((
                        "missions.start",
                        format!("{:?}: start and end are only for period = \"once\"", m.id),
                    ))
                }
            }
            let spend = matches!(m.goal, Goal::Spend | Goal::CategorySpend);
            match (spend, m.target) {
                (true, Target::Amount(_)) => {}
                (false, Target::Count(n)) if n >= 1 => {}
                (true, _) => {
                    return Err((
                        "missions.target",
                        format!(
                            "{:?}: a spend goal's target is an amount string such as \"200.00\"",
                            m.id
                        ),
                    ))
                }
                (false, _) => {
                    return Err((
                        "missions.target",
                        format!("{:?}: must be a whole number of at least 1", m.id),
                    ))
                }
            }
            if (m.goal == Goal::CategorySpend) != m.category.is_some() {
                return Err((
                    "missions.category",
                    format!(
                        "{:?}: required by goal = \"category_spend\", and only by it",
                        m.id
                    ),
                ));
            }
            for (key, v) in [
                ("missions.reward_coins", m.reward_coins),
                ("missions.reward_xp", m.reward_xp),
            ] {
                if !(0..=MAX_REWARD).contains(&v) {
                    return Err((
                        key,
                        format!("{:?}: must be between 0 and {MAX_REWARD}, got {v}", m.id),
                    ));
                }
            }
        }
        let mut ids = std::collections::BTreeSet::new();
        for b in &self.badges {
            if !valid_id(&b.id) || !ids.insert(b.id.as_str()) {
                return Err((
                    "badges.id",
                    format!("{:?} must be 1 to 128 characters and unique", b.id),
                ));
            }
            match (b.kind, b.threshold) {
                (BadgeKind::Spend, Target::Amount(_)) => {}
                (BadgeKind::Spend, _) => {
                    return Err((
                        "badges.threshold",
                        format!(
                        "{:?}: a spend badge's threshold is an amount string such as \"2000.00\"",
                        b.id
                    ),
                    ))
                }
                (_, Target::Count(n)) if n >= 1 => {}
                _ => {
                    return Err((
                        "badges.threshold",
                        format!("{:?}: must be a whole number of at least 1", b.id),
                    ))
                }
            }
        }
        Ok(())
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && !id.chars().any(char::is_control)
}

/// The mall's calendar (`[rules] timezone`, an IANA zone name): an instant's local day,
/// ISO week and month. Parsed once, with the config: the fold only converts instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calendar {
    tz: Tz,
}

/// The default mall time zone (`[rules] timezone`).
pub const DEFAULT_TIMEZONE: &str = "Asia/Dubai";

impl Default for Calendar {
    fn default() -> Self {
        Calendar {
            tz: Tz::Asia__Dubai,
        }
    }
}

impl<'de> Deserialize<'de> for Calendar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Calendar::new(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "rules.timezone: {name:?} is not an IANA time zone name such as \"{DEFAULT_TIMEZONE}\""
            ))
        })
    }
}

impl Calendar {
    /// The calendar of an IANA zone name, if known.
    pub fn new(timezone: &str) -> Option<Calendar> {
        timezone.parse::<Tz>().ok().map(|tz| Calendar { tz })
    }

    /// The zone's IANA name.
    pub fn name(self) -> &'static str {
        self.tz.name()
    }

    /// The mall-local date of an instant.
    pub fn date(self, t: Timestamp) -> NaiveDate {
        match self.tz.timestamp_opt(t.secs, t.nanos) {
            chrono::LocalResult::Single(dt) => dt.date_naive(),
            // Instants always map to one local time; keep UTC as a faithful fallback.
            _ => chrono::DateTime::from_timestamp(t.secs, 0)
                .map(|d| d.date_naive())
                .unwrap_or_default(),
        }
    }

    /// The key of the instant's period: `2026-11-30`, `2026-W49` or `2026-12`.
    pub fn key(self, period: Period, t: Timestamp) -> String {
        period_key(period, self.date(t))
    }

    /// The number of the instant's mall-local month: `year * 12 + month - 1`, so that
    /// consecutive months differ by one.
    pub fn month(self, t: Timestamp) -> i32 {
        let d = self.date(t);
        d.year() * 12 + d.month0() as i32
    }

    /// The start of month number `month` ([`Self::month`]): the first instant whose
    /// mall-local date is its 1st (local midnight, or the first local time after a
    /// midnight that a clock change skips).
    pub fn month_start(self, month: i32) -> Timestamp {
        let (year, month0) = (month.div_euclid(12), month.rem_euclid(12));
        let Some(first) = NaiveDate::from_ymd_opt(year, month0 as u32 + 1, 1) else {
            return Timestamp {
                secs: if month < 0 {
                    i64::MIN / 2
                } else {
                    i64::MAX / 2
                },
                nanos: 0,
            };
        };
        let midnight = first.and_time(chrono::NaiveTime::MIN);
        // A clock change skips at most a few hours; step a minute at a time past a gap.
        for minute in 0..24 * 60 {
            let local = midnight + chrono::Duration::minutes(minute);
            if let Some(dt) = self.tz.from_local_datetime(&local).earliest() {
                return Timestamp {
                    secs: dt.timestamp(),
                    nanos: 0,
                };
            }
        }
        Timestamp {
            secs: midnight.and_utc().timestamp(),
            nanos: 0,
        }
    }
}

/// A calendar period kind of boards and missions.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// A mall-local day.
    Day,
    /// An ISO week.
    Week,
    /// A month.
    Month,
}

impl Period {
    /// Every kind, in a stable order.
    pub const ALL: [Period; 3] = [Period::Day, Period::Week, Period::Month];

    /// The kind named `day`, `week` or `month`.
    pub fn parse(s: &str) -> Option<Period> {
        Period::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The name in the API: `day`, `week`, `month`.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }
}

/// The key of `date`'s period; keys of one kind sort in time order.
pub fn period_key(period: Period, date: NaiveDate) -> String {
    match period {
        // What `%Y-%m-%d` prints, without parsing the format each time (a few percent of
        // the fold's CPU); chrono prints a year outside 0..=9999 with its sign.
        Period::Day if (0..=9999).contains(&date.year()) => {
            format!("{:04}-{:02}-{:02}", date.year(), date.month(), date.day())
        }
        Period::Day => date.format("%Y-%m-%d").to_string(),
        Period::Week => {
            let w = date.iso_week();
            format!("{:04}-W{:02}", w.year(), w.week())
        }
        Period::Month => format!("{:04}-{:02}", date.year(), date.month()),
    }
}

/// A streak unit's number: consecutive units differ by one.
pub fn streak_unit(unit: StreakUnit, date: NaiveDate) -> i64 {
    let days = i64::from(date.num_days_from_ce());
    match unit {
        StreakUnit::Day => days,
        // num_days_from_ce counts Monday 0001-01-01 as day 1: weeks start on Mondays.
        StreakUnit::Week => (days - 1).div_euclid(7),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn a_days_key_is_what_chrono_prints_for_every_year() {
        for (y, m, d) in [
            (0, 1, 1),
            (1, 2, 3),
            (999, 12, 31),
            (2026, 7, 9),
            (9999, 12, 31),
        ] {
            let date = NaiveDate::from_ymd_opt(y, m, d).unwrap();
            assert_eq!(
                period_key(Period::Day, date),
                date.format("%Y-%m-%d").to_string()
            );
        }
        let before = NaiveDate::from_ymd_opt(-1, 12, 31).unwrap();
        assert_eq!(period_key(Period::Day, before), "-0001-12-31");
    }

    #[test]
    fn keys_are_mall_local() {
        let berlin = Calendar::new("Europe/Berlin").unwrap();
        // 23:30 UTC on Sunday 29 November is Monday 30 November in Berlin: week 49.
        let t = ts("2026-11-29T23:30:00Z");
        assert_eq!(berlin.key(Period::Day, t), "2026-11-30");
        assert_eq!(berlin.key(Period::Week, t), "2026-W49");
        assert_eq!(berlin.key(Period::Month, t), "2026-11");
        let utc = Calendar::new("UTC").unwrap();
        assert_eq!(utc.key(Period::Week, t), "2026-W48");
        // ISO years: 1 January 2027 is a Friday of 2026-W53.
        assert_eq!(
            utc.key(Period::Week, ts("2027-01-01T12:00:00Z")),
            "2026-W53"
        );
    }

    #[test]
    fn the_night_the_clocks_go_back_is_one_local_day() {
        let berlin = Calendar::new("Europe/Berlin").unwrap();
        let before = ts("2026-10-25T00:30:00Z"); // 02:30 CEST
        let after = ts("2026-10-25T01:30:00Z"); // 02:30 CET
        assert_eq!(berlin.key(Period::Day, before), "2026-10-25");
        assert_eq!(berlin.key(Period::Day, after), "2026-10-25");
    }

    #[test]
    fn streak_units_are_consecutive() {
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let a = streak_unit(StreakUnit::Day, d("2026-02-28"));
        assert_eq!(streak_unit(StreakUnit::Day, d("2026-03-01")), a + 1);
        // Sunday and the next Monday are consecutive weeks; Monday to Sunday one week.
        let sun = streak_unit(StreakUnit::Week, d("2026-11-29"));
        assert_eq!(streak_unit(StreakUnit::Week, d("2026-11-23")), sun);
        assert_eq!(streak_unit(StreakUnit::Week, d("2026-11-30")), sun + 1);
    }

    #[test]
    fn bad_sections_name_their_key() {
        let g: Game = toml::from_str(
            "[[missions]]\nid = \"m\"\nperiod = \"once\"\ngoal = \"receipts\"\ntarget = 2\n",
        )
        .unwrap();
        assert_eq!(g.validate().unwrap_err().0, "missions.start");
        let g: Game = toml::from_str(
            "[[missions]]\nid = \"m\"\nperiod = \"day\"\ngoal = \"spend\"\ntarget = 2\n",
        )
        .unwrap();
        assert_eq!(g.validate().unwrap_err().0, "missions.target");
        let g: Game =
            toml::from_str("[[badges]]\nid = \"b\"\nkind = \"spend\"\nthreshold = 5\n").unwrap();
        assert_eq!(g.validate().unwrap_err().0, "badges.threshold");
        assert!(
            toml::from_str::<Game>("[[badges]]\nid = \"b\"\nkind = \"x\"\nthreshold = 5\n")
                .is_err()
        );
    }
}

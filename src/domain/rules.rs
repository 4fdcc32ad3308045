//! `[rules]`: how coins, XP and levels are earned.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::game::{Calendar, Game};
use super::Timestamp;

/// The game's rules. Defaults are those of the config reference.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// The only accepted currency (ISO 4217 code); receipts naming another are rejected.
    #[serde(default = "default_currency")]
    pub currency: String,
    /// Coins earned per 1.00 of currency spent (before the store multiplier).
    #[serde(default = "default_coins_per_unit")]
    pub coins_per_unit: i64,
    /// XP earned by every purchase, whatever its amount.
    #[serde(default = "default_xp_per_receipt")]
    pub xp_per_receipt: i64,
    /// XP earned per whole 1.00 spent.
    #[serde(default = "default_xp_per_unit")]
    pub xp_per_unit: i64,
    /// XP scale of levels: level = 1 + isqrt(xp / level_xp_base).
    #[serde(default = "default_level_xp_base")]
    pub level_xp_base: i64,
    /// The highest level.
    #[serde(default = "default_max_level")]
    pub max_level: u32,
    /// Coins granted for each level gained.
    #[serde(default = "default_level_up_bonus_coins")]
    pub level_up_bonus_coins: i64,
    /// Coin multiplier per store_id, in percent; stores not listed earn 100.
    #[serde(default)]
    pub store_multipliers: BTreeMap<String, i64>,
    /// The mall's IANA time zone: days, ISO weeks and months are mall-local.
    #[serde(default)]
    pub timezone: Calendar,
    /// `[[rules.history]]`: earlier rates, each for receipts issued before its `until`.
    #[serde(default)]
    pub history: Vec<Era>,
    /// Campaigns, missions, streaks, badges and store categories: the top-level sections
    /// of the configuration, set by [`crate::config`].
    #[serde(skip)]
    pub game: Game,
}

/// How levels follow XP: level `n` (up to `max_level`) is reached at `(n - 1)² × xp_base`
/// XP ([`Rules::level_for`]). A level is never lost, so after a refund the XP may lie below
/// the current level's threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelScale {
    /// `[rules] level_xp_base`.
    pub xp_base: i64,
    /// `[rules] max_level`.
    pub max_level: u32,
}

impl LevelScale {
    /// The XP at which `level` is reached (saturating), for `level` from 1 to `max_level`.
    pub fn floor_xp(&self, level: u32) -> i64 {
        let steps = i64::from(level.max(1) - 1);
        steps.saturating_mul(steps).saturating_mul(self.xp_base)
    }
}

/// One `[[rules.history]]` entry: rates in force before `until` (and at or after the
/// previous entry's `until`). What it omits comes from the rule set in force after it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Era {
    /// The first instant these rates no longer apply to.
    #[serde(deserialize_with = "super::game::instant_field")]
    pub until: Timestamp,
    /// As `[rules] coins_per_unit`.
    #[serde(default)]
    pub coins_per_unit: Option<i64>,
    /// As `[rules] xp_per_receipt`.
    #[serde(default)]
    pub xp_per_receipt: Option<i64>,
    /// As `[rules] xp_per_unit`.
    #[serde(default)]
    pub xp_per_unit: Option<i64>,
    /// Replaces the whole map when present.
    #[serde(default)]
    pub store_multipliers: Option<BTreeMap<String, i64>>,
}

/// The earning rates in force at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Rates<'a> {
    /// Coins per 1.00 spent.
    pub coins_per_unit: i64,
    /// XP per purchase.
    pub xp_per_receipt: i64,
    /// XP per whole 1.00.
    pub xp_per_unit: i64,
    multipliers: &'a BTreeMap<String, i64>,
}

impl Rates<'_> {
    /// The coin multiplier of a store, in percent.
    pub fn multiplier_pct(&self, store_id: &str) -> i64 {
        self.multipliers.get(store_id).copied().unwrap_or(100)
    }
}

fn default_currency() -> String {
    "AED".into()
}
const fn default_coins_per_unit() -> i64 {
    1
}
const fn default_xp_per_receipt() -> i64 {
    10
}
const fn default_xp_per_unit() -> i64 {
    1
}
const fn default_level_xp_base() -> i64 {
    100
}
const fn default_max_level() -> u32 {
    100
}
const fn default_level_up_bonus_coins() -> i64 {
    50
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            currency: default_currency(),
            coins_per_unit: default_coins_per_unit(),
            xp_per_receipt: default_xp_per_receipt(),
            xp_per_unit: default_xp_per_unit(),
            level_xp_base: default_level_xp_base(),
            max_level: default_max_level(),
            level_up_bonus_coins: default_level_up_bonus_coins(),
            store_multipliers: BTreeMap::new(),
            timezone: Calendar::default(),
            history: Vec::new(),
            game: Game::default(),
        }
    }
}

/// Bound on every per-unit rate: with amounts capped at 1,000,000.00 this keeps one
/// receipt's earnings far inside i64, so only lifetime totals need overflow checks.
const MAX_RATE: i64 = 1_000_000;

impl Rules {
    /// The coin multiplier of a store today (without history), in percent.
    pub fn multiplier_pct(&self, store_id: &str) -> i64 {
        self.store_multipliers.get(store_id).copied().unwrap_or(100)
    }

    /// The rates a purchase issued at `t` earns by: those of the first history entry whose
    /// `until` is after `t` (history is kept sorted by `until`), each omitted one taken
    /// from the entries after it, then from `[rules]`; `[rules]` itself past the last.
    pub fn rates_at(&self, t: Timestamp) -> Rates<'_> {
        let from = self.history.partition_point(|e| e.until <= t);
        let later = &self.history[from..];
        let pick = |f: fn(&Era) -> Option<i64>, base: i64| later.iter().find_map(f).unwrap_or(base);
        Rates {
            coins_per_unit: pick(|e| e.coins_per_unit, self.coins_per_unit),
            xp_per_receipt: pick(|e| e.xp_per_receipt, self.xp_per_receipt),
            xp_per_unit: pick(|e| e.xp_per_unit, self.xp_per_unit),
            multipliers: later
                .iter()
                .find_map(|e| e.store_multipliers.as_ref())
                .unwrap_or(&self.store_multipliers),
        }
    }

    /// The mall's calendar.
    pub fn calendar(&self) -> Calendar {
        self.timezone
    }

    /// The level scale, as the API tells clients (the shopper's page shows progress to the
    /// next level from it).
    pub fn level_scale(&self) -> LevelScale {
        LevelScale {
            xp_base: self.level_xp_base,
            max_level: self.max_level,
        }
    }

    /// The level for an XP total: `min(max_level, 1 + isqrt(xp / level_xp_base))`.
    pub fn level_for(&self, xp: i64) -> u32 {
        let steps = (xp.max(0) / self.level_xp_base) as u64;
        let level = 1u64.saturating_add(steps.isqrt());
        level.min(u64::from(self.max_level)) as u32
    }

    /// Checks ranges; returns the offending key and why.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        let c = &self.currency;
        if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err((
                "rules.currency",
                format!("must be a 3-letter ISO code, got {c:?}"),
            ));
        }
        for (key, v) in [
            ("rules.coins_per_unit", self.coins_per_unit),
            ("rules.xp_per_receipt", self.xp_per_receipt),
            ("rules.xp_per_unit", self.xp_per_unit),
            ("rules.level_up_bonus_coins", self.level_up_bonus_coins),
        ] {
            if !(0..=MAX_RATE).contains(&v) {
                return Err((key, format!("must be between 0 and {MAX_RATE}, got {v}")));
            }
        }
        if !(1..=i64::from(u32::MAX)).contains(&self.level_xp_base) {
            return Err((
                "rules.level_xp_base",
                format!("must be at least 1, got {}", self.level_xp_base),
            ));
        }
        if !(1..=100_000).contains(&self.max_level) {
            return Err((
                "rules.max_level",
                format!("must be between 1 and 100000, got {}", self.max_level),
            ));
        }
        check_multipliers("rules.store_multipliers", &self.store_multipliers)?;
        for (i, e) in self.history.iter().enumerate() {
            if i > 0 && self.history[i - 1].until >= e.until {
                return Err((
                    "rules.history",
                    "entries must be in increasing order of `until`, each `until` once".into(),
                ));
            }
            for (key, v) in [
                ("rules.history.coins_per_unit", e.coins_per_unit),
                ("rules.history.xp_per_receipt", e.xp_per_receipt),
                ("rules.history.xp_per_unit", e.xp_per_unit),
            ] {
                if let Some(v) = v.filter(|v| !(0..=MAX_RATE).contains(v)) {
                    return Err((key, format!("must be between 0 and {MAX_RATE}, got {v}")));
                }
            }
            if let Some(m) = &e.store_multipliers {
                check_multipliers("rules.history.store_multipliers", m)?;
            }
        }
        self.game.validate()
    }
}

fn check_multipliers(
    key: &'static str,
    map: &BTreeMap<String, i64>,
) -> Result<(), (&'static str, String)> {
    for (store, pct) in map {
        if !(0..=10_000).contains(pct) {
            return Err((
                key,
                format!("{store:?} must be a percentage between 0 and 10000, got {pct}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_follows_isqrt_of_xp_steps() {
        let r = Rules::default();
        assert_eq!(r.level_for(0), 1);
        assert_eq!(r.level_for(99), 1);
        assert_eq!(r.level_for(100), 2);
        assert_eq!(r.level_for(399), 2);
        assert_eq!(r.level_for(400), 3);
        assert_eq!(r.level_for(97_764), 32);
    }

    #[test]
    fn level_scale_floors_agree_with_level_for() {
        let r = Rules::default();
        let scale = r.level_scale();
        for level in 1..=r.max_level {
            let floor = scale.floor_xp(level);
            assert_eq!(r.level_for(floor), level);
            if level > 1 {
                assert_eq!(r.level_for(floor - 1), level - 1);
            }
        }
    }

    #[test]
    fn level_is_capped_at_max_level() {
        let r = Rules {
            max_level: 5,
            ..Rules::default()
        };
        assert_eq!(r.level_for(i64::MAX), 5);
    }

    #[test]
    fn history_rates_apply_before_their_until_and_inherit_what_they_omit() {
        let rules: Rules = toml::from_str(
            r#"
            coins_per_unit = 1
            [store_multipliers]
            "s-1" = 200
            [[history]]
            until = "2026-06-01T00:00:00+04:00"
            xp_per_unit = 2
            [[history]]
            until = "2026-07-01T00:00:00+04:00"
            coins_per_unit = 3
            [history.store_multipliers]
            "s-1" = 300
            "#,
        )
        .unwrap();
        let at = |s: &str| rules.rates_at(Timestamp::parse_rfc3339(s).unwrap());
        let may = at("2026-05-31T19:59:59Z");
        assert_eq!((may.coins_per_unit, may.xp_per_unit), (3, 2));
        assert_eq!(may.multiplier_pct("s-1"), 300);
        let june = at("2026-05-31T20:00:00Z");
        assert_eq!((june.coins_per_unit, june.xp_per_unit), (3, 1));
        let july = at("2026-06-30T20:00:00Z");
        assert_eq!((july.coins_per_unit, july.xp_per_unit), (1, 1));
        assert_eq!(july.multiplier_pct("s-1"), 200);
    }

    #[test]
    fn out_of_range_rates_are_rejected() {
        let r = Rules {
            level_xp_base: 0,
            ..Rules::default()
        };
        assert_eq!(r.validate().unwrap_err().0, "rules.level_xp_base");
        let r = Rules {
            currency: "aed".into(),
            ..Rules::default()
        };
        assert_eq!(r.validate().unwrap_err().0, "rules.currency");
    }
}

//! A naive reference fold, written from the contract and sharing no code with
//! `mallquest::codec` or `mallquest::domain`: its own decoding of the receipt JSON
//! (`serde_json::Value`, checked field by field), its own RFC 3339 parsing and formatting,
//! its own copy of the rules' defaults, and plain maps for users and the ledger. Every
//! figure is computed in `i128`; a total that would leave `i64` is `overflow`.
//!
//! Sources, in the order they were read: README.md (configuration reference: `[rules]`,
//! `processing.dedup_window_days`; the list of rejection reasons), schemas/receipt.schema.json
//! and schemas/projection.schema.json, schemas/dlq-headers.md (`too_old`, `overflow`),
//! ARCHITECTURE.md (the order of the decoding checks; refunds give back
//! `floor(earned*R1/amount) - floor(earned*R0/amount)`; levels never go down),
//! tests/golden/README.md (what makes two receipts the same: the decoded content, whatever
//! the key order, UTC offset or amount notation). The processor must agree with it on any
//! stream; `tests/golden.rs` pins it to the independently worked vectors.
//!
//! `mallquest::domain::Rules` is only read here (its public fields, as a test passes them),
//! never asked to compute anything.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use mallquest::domain::Rules;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// The contract's constants.

/// `[rules]` defaults of the README's configuration reference.
pub const DEFAULT_CURRENCY: &str = "AED";
/// Coins per 1.00 spent, before the store multiplier.
pub const DEFAULT_COINS_PER_UNIT: i64 = 1;
/// XP per purchase.
pub const DEFAULT_XP_PER_RECEIPT: i64 = 10;
/// XP per whole 1.00 spent.
pub const DEFAULT_XP_PER_UNIT: i64 = 1;
/// level = min(max_level, 1 + isqrt(xp / level_xp_base)).
pub const DEFAULT_LEVEL_XP_BASE: i64 = 100;
/// Highest level.
pub const DEFAULT_MAX_LEVEL: u64 = 100;
/// Coins per level gained.
pub const DEFAULT_LEVEL_UP_BONUS_COINS: i64 = 50;
/// Percent earned in a store not listed in `[rules.store_multipliers]`.
pub const UNLISTED_STORE_PCT: i64 = 100;
/// `processing.dedup_window_days` default.
pub const DEFAULT_WINDOW_DAYS: i64 = 90;

/// `too_large`: a record larger than 64 KiB.
const MAX_RECORD_BYTES: usize = 64 * 1024;
/// Ids are 1 to 128 bytes of UTF-8 (receipt schema, `$defs/id`).
const MAX_ID_BYTES: usize = 128;
/// An amount is > 0 and <= 1000000.00, here in cents.
const MAX_AMOUNT_CENTS: i128 = 100_000_000;
/// Nesting deeper than this (arrays and objects, the receipt itself included) is
/// `invalid_json`, even inside ignored fields. ARCHITECTURE.md names the check ("UTF-8/JSON
/// and nesting depth") but not the bound; 64 is the processor's, and the hostile corpus
/// only pins that 200 levels are refused.
const MAX_DEPTH: usize = 64;

const SECS_PER_DAY: i64 = 86_400;

/// The rules as the reference reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefRules {
    /// The only accepted currency.
    pub currency: String,
    /// Coins per 1.00 spent, before the store multiplier:
    /// coins = floor(cents * coins_per_unit * percent / 10000).
    pub coins_per_unit: i64,
    /// XP per purchase.
    pub xp_per_receipt: i64,
    /// XP per whole 1.00.
    pub xp_per_unit: i64,
    /// XP scale of levels.
    pub level_xp_base: i64,
    /// Highest level.
    pub max_level: u64,
    /// Coins per level gained.
    pub level_up_bonus_coins: i64,
    /// store_id -> percent.
    pub store_multipliers: BTreeMap<String, i64>,
    /// The mall's UTC offset in seconds: the reference knows the zones these tests use,
    /// which keep one offset all year (Asia/Dubai, the default, and UTC).
    pub utc_offset_secs: i64,
}

/// `rules.timezone` default (README): Asia/Dubai, UTC+04:00 all year.
pub const DEFAULT_UTC_OFFSET_SECS: i64 = 4 * 3600;

impl RefRules {
    /// The defaults written in the README's configuration reference.
    pub fn contract_defaults() -> Self {
        Self {
            currency: DEFAULT_CURRENCY.to_owned(),
            coins_per_unit: DEFAULT_COINS_PER_UNIT,
            xp_per_receipt: DEFAULT_XP_PER_RECEIPT,
            xp_per_unit: DEFAULT_XP_PER_UNIT,
            level_xp_base: DEFAULT_LEVEL_XP_BASE,
            max_level: DEFAULT_MAX_LEVEL,
            level_up_bonus_coins: DEFAULT_LEVEL_UP_BONUS_COINS,
            store_multipliers: BTreeMap::new(),
            utc_offset_secs: DEFAULT_UTC_OFFSET_SECS,
        }
    }

    /// The values a test configured, copied field by field.
    pub fn from_rules(r: &Rules) -> Self {
        Self {
            currency: r.currency.clone(),
            coins_per_unit: r.coins_per_unit,
            xp_per_receipt: r.xp_per_receipt,
            xp_per_unit: r.xp_per_unit,
            level_xp_base: r.level_xp_base,
            max_level: u64::from(r.max_level),
            level_up_bonus_coins: r.level_up_bonus_coins,
            store_multipliers: r.store_multipliers.clone(),
            utc_offset_secs: match r.timezone.name() {
                "Asia/Dubai" => DEFAULT_UTC_OFFSET_SECS,
                "UTC" | "Etc/UTC" => 0,
                other => panic!("the core reference knows no offset for {other:?}"),
            },
        }
    }

    /// The mall-local day number of an instant.
    fn local_day(&self, t: Instant) -> i64 {
        (t.secs + self.utc_offset_secs).div_euclid(SECS_PER_DAY)
    }

    fn pct(&self, store_id: &str) -> i128 {
        i128::from(
            self.store_multipliers
                .get(store_id)
                .copied()
                .unwrap_or(UNLISTED_STORE_PCT),
        )
    }

    /// `min(max_level, 1 + isqrt(xp / level_xp_base))`; no XP (or less) is level 1.
    fn level_for(&self, xp: i128) -> u64 {
        assert!(self.level_xp_base > 0, "level_xp_base must be positive");
        let steps = if xp <= 0 {
            0
        } else {
            xp / i128::from(self.level_xp_base)
        };
        let level = 1 + isqrt(steps as u128);
        level.min(u128::from(self.max_level)) as u64
    }
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
// Event time: RFC 3339, parsed and formatted by hand.

/// An instant: seconds since 1970-01-01T00:00:00Z and nanoseconds. A leap second
/// (`:60`) is the second after `:59` of its minute: `nanos` is then 1e9 or more, so it
/// sorts after `:59.999999999` and before the next minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant {
    /// Whole seconds since the epoch.
    pub secs: i64,
    /// Nanoseconds into that second (up to 1_999_999_999 in a leap second).
    pub nanos: u32,
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses `YYYY-MM-DD(T|t| )hh:mm:ss(.fraction)?(Z|z|+hh:mm|-hh:mm)`: the receipt schema's
/// pattern, with RFC 3339's ranges (month, day of that month, hour 00-23, minute 00-59,
/// second 00-60, offset hours 00-23). Digits of the fraction past the ninth are dropped.
pub fn parse_instant(text: &str) -> Option<Instant> {
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        part.iter().all(u8::is_ascii_digit).then(|| {
            part.iter()
                .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'))
        })
    };
    let at = |i: usize, allowed: &[u8]| b.get(i).is_some_and(|c| allowed.contains(c));
    let year = num(0, 4)?;
    let month = num(5, 2)?;
    let day = num(8, 2)?;
    let hour = num(11, 2)?;
    let minute = num(14, 2)?;
    let second = num(17, 2)?;
    if !(at(4, b"-") && at(7, b"-") && at(10, b"Tt ") && at(13, b":") && at(16, b":")) {
        return None;
    }
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut nanos: u32 = 0;
    if at(i, b".") {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 9 {
                nanos = nanos * 10 + u32::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return None;
        }
        for _ in digits..9 {
            nanos *= 10;
        }
    }
    let offset = match &b[i..] {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (oh, om) = (num(i + 1, 2)?, num(i + 4, 2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    let (second, leap) = if second == 60 { (59, 1) } else { (second, 0) };
    let secs =
        days_from_civil(year, month, day) * SECS_PER_DAY + hour * 3600 + minute * 60 + second
            - offset;
    Some(Instant {
        secs,
        nanos: nanos + leap * 1_000_000_000,
    })
}

/// RFC 3339 in UTC with `Z`; a fraction only when there is one, in 3, 6 or 9 digits (the
/// fewest that hold it). Years outside 0000-9999 (reachable only through an offset at the
/// ends of the range) get a sign, as they cannot be written in RFC 3339 at all.
pub fn format_instant(t: Instant) -> String {
    let (leap, nanos) = if t.nanos >= 1_000_000_000 {
        (true, t.nanos - 1_000_000_000)
    } else {
        (false, t.nanos)
    };
    let days = t.secs.div_euclid(SECS_PER_DAY);
    let in_day = t.secs.rem_euclid(SECS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let year = match y {
        0..=9999 => format!("{y:04}"),
        y if y < 0 => format!("-{:04}", -y),
        y => format!("+{y}"),
    };
    let sec = in_day % 60 + i64::from(leap);
    let frac = match nanos {
        0 => String::new(),
        n if n % 1_000_000 == 0 => format!(".{:03}", n / 1_000_000),
        n if n % 1_000 == 0 => format!(".{:06}", n / 1_000),
        n => format!(".{n:09}"),
    };
    format!(
        "{year}-{m:02}-{d:02}T{:02}:{:02}:{sec:02}{frac}Z",
        in_day / 3600,
        in_day / 60 % 60
    )
}

// ---------------------------------------------------------------------------------------
// Decoding.

/// A receipt as the contract defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Unique per user.
    pub receipt_id: String,
    /// The shopper (equals the Kafka key).
    pub user_id: String,
    /// Where it was bought.
    pub store_id: String,
    /// Cents, in 1..=100_000_000.
    pub amount: i64,
    /// `issued_at`.
    pub at: Instant,
    /// `Some(original)` for a refund.
    pub refund_of: Option<String>,
}

/// The top-level members of an object in document order, values unparsed: to see a
/// repeated field, and the literal text of a number (`12.30` and `1.23e1` are the same
/// `f64`, but only one is a plain decimal).
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    out.push(entry);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The deepest nesting of arrays and objects outside strings (a lone top-level scalar is 0).
fn depth(bytes: &[u8]) -> usize {
    let (mut now, mut deepest) = (0usize, 0usize);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Skip the string, escapes included.
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

/// `$defs/id`: a string of 1 to 128 bytes without control characters (U+0000-U+001F,
/// U+007F-U+009F).
fn id(v: Option<&Value>) -> Option<String> {
    let s = v?.as_str()?;
    let control = |c: char| matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}');
    (!s.is_empty() && s.len() <= MAX_ID_BYTES && !s.chars().any(control)).then(|| s.to_owned())
}

/// A plain decimal with at most 2 decimals, in cents, if within (0, 1000000.00].
fn cents(text: &str) -> Option<i64> {
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
        return None; // at least 10,000,000.00
    }
    let units: i128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac: i128 = format!("{frac:0<2}").parse().ok()?;
    let c = units * 100 + frac;
    (1..=MAX_AMOUNT_CENTS).contains(&c).then_some(c as i64)
}

/// Decodes one record, checks in the documented order: size, UTF-8 / JSON / nesting,
/// schema, amount, currency, key. The error is the DLQ reason.
pub fn decode(key: Option<&[u8]>, value: &[u8], rules: &RefRules) -> Result<Decoded, &'static str> {
    if value.len() > MAX_RECORD_BYTES {
        return Err("too_large");
    }
    let text = std::str::from_utf8(value).map_err(|_| "invalid_json")?;
    if depth(value) > MAX_DEPTH {
        return Err("invalid_json");
    }
    let doc: Value = serde_json::from_str(text).map_err(|_| "invalid_json")?;
    // Receipt schema: "type": "object".
    let Value::Object(obj) = doc else {
        return Err("schema");
    };
    let members: Members = serde_json::from_str(text).map_err(|_| "invalid_json")?;
    const KNOWN: [&str; 8] = [
        "receipt_id",
        "user_id",
        "store_id",
        "amount",
        "issued_at",
        "currency",
        "type",
        "refund_of",
    ];
    // A known field given twice has no single meaning; unknown fields are ignored.
    let mut seen = BTreeSet::new();
    for (name, _) in &members.0 {
        if KNOWN.contains(&name.as_str()) && !seen.insert(name.as_str()) {
            return Err("schema");
        }
    }
    let field = |name: &str| obj.get(name);
    let schema = |v: Option<String>| v.ok_or("schema");

    let receipt_id = schema(id(field("receipt_id")))?;
    let user_id = schema(id(field("user_id")))?;
    let store_id = schema(id(field("store_id")))?;
    let at = field("issued_at")
        .and_then(Value::as_str)
        .and_then(parse_instant)
        .ok_or("schema")?;
    let refund = match field("type") {
        None | Some(Value::Null) => false,
        Some(Value::String(t)) if t == "purchase" => false,
        Some(Value::String(t)) if t == "refund" => true,
        Some(_) => return Err("schema"),
    };
    // `refund_of` is an id wherever it appears, and required of a refund.
    let refund_of = match field("refund_of") {
        None if refund => return Err("schema"),
        None => None,
        Some(v) => Some(schema(id(Some(v)))?),
    };
    let currency = match field("currency") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) => Some(c.clone()),
        Some(_) => return Err("schema"),
    };
    // A string's content, or a number's literal text, must be a plain decimal.
    let amount_text = match field("amount") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(_)) => members
            .0
            .iter()
            .find(|(n, _)| n == "amount")
            .map(|(_, raw)| raw.get().to_owned())
            .ok_or("schema")?,
        _ => return Err("schema"),
    };
    let amount = cents(&amount_text).ok_or("amount")?;
    if currency.is_some_and(|c| c != rules.currency) {
        return Err("currency");
    }
    if key != Some(user_id.as_bytes()) {
        return Err("key_mismatch");
    }
    Ok(Decoded {
        receipt_id,
        user_id,
        store_id,
        amount,
        at,
        refund_of: refund_of.filter(|_| refund),
    })
}

// ---------------------------------------------------------------------------------------
// The fold.

/// One user's totals, as the model holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Totals {
    /// Coins held.
    pub coins: i64,
    /// Experience points.
    pub xp: i64,
    /// Current level (never goes down).
    pub level: u64,
    /// Purchases less refunds, cents.
    pub spent: i64,
    /// Purchases applied.
    pub receipts: u64,
    /// Refunds applied.
    pub refunds: u64,
    /// Distinct stores of purchases.
    pub stores: BTreeSet<String>,
    /// Earliest purchase.
    pub first: Option<Instant>,
    /// Latest purchase.
    pub last: Option<Instant>,
    /// Mall-local days with a purchase (for `streak`; refunds never remove one).
    pub days: BTreeSet<i64>,
    /// Applied purchases and refunds.
    pub version: u64,
    /// (partition, offset) of the last applied receipt.
    pub source: Option<(i32, i64)>,
}

impl Default for Totals {
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
            days: BTreeSet::new(),
            version: 0,
            source: None,
        }
    }
}

/// What the ledger remembers of an applied receipt.
#[derive(Clone)]
struct Seen {
    refund_of: Option<String>,
    store: String,
    amount: i64,
    at: Instant,
    coins: i128,
    xp: i128,
    refunded: i128,
}

/// What a receipt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Seen before with the same content: nothing changed.
    Duplicate,
    /// Changed the user; `levels` is (from, to) when the level rose, `bonus` its coins.
    Applied {
        /// Level before and after, when it rose.
        levels: Option<(u64, u64)>,
        /// Level-up bonus coins.
        bonus: i64,
    },
}

/// The reference fold, one record at a time.
pub struct Model {
    rules: RefRules,
    window_secs: i64,
    /// Per partition: the newest applied issued_at.
    newest: HashMap<i32, Instant>,
    users: HashMap<String, Totals>,
    ledger: HashMap<(String, String), Seen>,
    /// Per user: (total bonus coins, highest level reached by a level-up).
    level_ups: BTreeMap<String, (i64, u64)>,
}

/// `i128` back to `i64`, or `overflow`.
fn fit(v: i128) -> Result<i64, &'static str> {
    i64::try_from(v).map_err(|_| "overflow")
}

impl Model {
    /// An empty model with a dedup window of `window_days` days of event time.
    pub fn new(rules: RefRules, window_days: i64) -> Self {
        Self {
            rules,
            window_secs: window_days * SECS_PER_DAY,
            newest: HashMap::new(),
            users: HashMap::new(),
            ledger: HashMap::new(),
            level_ups: BTreeMap::new(),
        }
    }

    /// Starts `user_id` at the given totals instead of a new user's.
    pub fn seed(&mut self, user_id: &str, totals: Totals) {
        self.users.insert(user_id.to_owned(), totals);
    }

    /// A user's totals, if it has any.
    pub fn totals(&self, user_id: &str) -> Option<&Totals> {
        self.users.get(user_id)
    }

    /// Folds one record; the error is the DLQ reason. On error nothing changes.
    pub fn apply(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        value: &[u8],
    ) -> Result<Outcome, &'static str> {
        let r = decode(key, value, &self.rules)?;
        // More than the window before the partition's newest applied receipt: too_old,
        // and ledger entries that old are forgotten.
        let oldest = self.newest.get(&partition).map(|n| Instant {
            secs: n.secs - self.window_secs,
            nanos: n.nanos,
        });
        if oldest.is_some_and(|o| r.at < o) {
            return Err("too_old");
        }
        let remembered = |s: &&Seen| oldest.is_none_or(|o| s.at >= o);
        let lkey = (r.user_id.clone(), r.receipt_id.clone());
        if let Some(s) = self.ledger.get(&lkey).filter(remembered) {
            let same = s.refund_of == r.refund_of
                && s.store == r.store_id
                && s.amount == r.amount
                && s.at == r.at;
            return if same {
                Ok(Outcome::Duplicate)
            } else {
                Err("conflicting_duplicate")
            };
        }
        let mut u = self.users.get(&r.user_id).cloned().unwrap_or_default();
        let amount = i128::from(r.amount);
        let outcome = match &r.refund_of {
            None => {
                let rules = &self.rules;
                let coins =
                    amount * i128::from(rules.coins_per_unit) * rules.pct(&r.store_id) / 10_000;
                let xp =
                    i128::from(rules.xp_per_receipt) + amount / 100 * i128::from(rules.xp_per_unit);
                let new_xp = i128::from(u.xp) + xp;
                let level = rules.level_for(new_xp).max(u.level);
                let bonus = i128::from(level - u.level) * i128::from(rules.level_up_bonus_coins);
                let new_coins = i128::from(u.coins) + coins + bonus;
                let new_spent = i128::from(u.spent) + amount;
                let (new_xp, new_coins, new_spent) =
                    (fit(new_xp)?, fit(new_coins)?, fit(new_spent)?);
                let levels = (level > u.level).then_some((u.level, level));
                u.xp = new_xp;
                u.coins = new_coins;
                u.spent = new_spent;
                u.level = level;
                u.receipts += 1;
                u.stores.insert(r.store_id.clone());
                u.first = Some(u.first.map_or(r.at, |t| t.min(r.at)));
                u.last = Some(u.last.map_or(r.at, |t| t.max(r.at)));
                u.days.insert(rules.local_day(r.at));
                self.ledger.insert(
                    lkey,
                    Seen {
                        refund_of: None,
                        store: r.store_id.clone(),
                        amount: r.amount,
                        at: r.at,
                        coins,
                        xp,
                        refunded: 0,
                    },
                );
                Outcome::Applied {
                    levels,
                    bonus: bonus as i64,
                }
            }
            Some(of) => {
                let okey = (r.user_id.clone(), of.clone());
                let Some(orig) = self
                    .ledger
                    .get(&okey)
                    .filter(remembered)
                    .filter(|s| s.refund_of.is_none())
                    .cloned()
                else {
                    return Err("unknown_original");
                };
                let r0 = orig.refunded;
                let r1 = r0 + amount;
                if r1 > i128::from(orig.amount) {
                    return Err("refund_exceeds_original");
                }
                let share =
                    |earned: i128, refunded: i128| earned * refunded / i128::from(orig.amount);
                let coins_back = share(orig.coins, r1) - share(orig.coins, r0);
                let xp_back = share(orig.xp, r1) - share(orig.xp, r0);
                let new_coins = fit(i128::from(u.coins) - coins_back)?;
                let new_xp = fit(i128::from(u.xp) - xp_back)?;
                let new_spent = fit(i128::from(u.spent) - amount)?;
                u.coins = new_coins;
                u.xp = new_xp;
                u.spent = new_spent;
                u.refunds += 1;
                if let Some(o) = self.ledger.get_mut(&okey) {
                    o.refunded = r1;
                }
                self.ledger.insert(
                    lkey,
                    Seen {
                        refund_of: Some(of.clone()),
                        store: r.store_id.clone(),
                        amount: r.amount,
                        at: r.at,
                        coins: 0,
                        xp: 0,
                        refunded: 0,
                    },
                );
                Outcome::Applied {
                    levels: None,
                    bonus: 0,
                }
            }
        };
        if let Outcome::Applied {
            levels: Some((_, to)),
            bonus,
        } = outcome
        {
            let e = self.level_ups.entry(r.user_id.clone()).or_default();
            e.0 += bonus;
            e.1 = e.1.max(to);
        }
        u.version += 1;
        u.source = Some((partition, offset));
        self.users.insert(r.user_id.clone(), u);
        let n = self.newest.entry(partition).or_insert(r.at);
        *n = (*n).max(r.at);
        Ok(outcome)
    }

    /// A user's projection JSON (projection.schema.json).
    pub fn projection(&self, user_id: &str) -> Option<Value> {
        let u = self.users.get(user_id)?;
        let spent = format!(
            "{}{}.{:02}",
            if u.spent < 0 { "-" } else { "" },
            u.spent.unsigned_abs() / 100,
            u.spent.unsigned_abs() % 100
        );
        let ts = |t: Option<Instant>| t.map(format_instant);
        Some(json!({
            "user_id": user_id,
            "coins": u.coins,
            "xp": u.xp,
            "level": u.level,
            "total_spent": spent,
            "receipt_count": u.receipts,
            "refund_count": u.refunds,
            "stores_visited": u.stores.len(),
            "first_receipt_at": ts(u.first),
            "last_receipt_at": ts(u.last),
            "version": u.version,
            "source": u.source.map(|(p, o)| json!({"partition": p, "offset": o})),
            // The game's fields, for rules without a game: a streak of days, nothing else.
            "coins_by_campaign": {},
            "missions": [],
            "streak": streak(&u.days),
            "badges": [],
            "redemptions": 0,
            "coins_redeemed": 0,
            // The time rules' fields, for rules without [expiry] and [tiers].
            "tier": null,
            "tier_figure": null,
            "coins_expired": 0,
            "next_expiry": null,
        }))
    }
}

/// `{"current", "best"}` of a set of day numbers: the run of consecutive days ending at the
/// latest, and the longest run.
fn streak(days: &BTreeSet<i64>) -> Value {
    let (mut best, mut run, mut prev) = (0u64, 0u64, None::<i64>);
    for d in days {
        run = if prev == Some(d - 1) { run + 1 } else { 1 };
        best = best.max(run);
        prev = Some(*d);
    }
    json!({"current": run, "best": best})
}

// ---------------------------------------------------------------------------------------
// Whole streams.

/// What a stream must produce.
#[derive(Default)]
pub struct Expected {
    /// Final projection JSON per user.
    pub projections: BTreeMap<String, Value>,
    /// (partition, offset) -> reason of every rejected record.
    pub dlq: BTreeMap<(i32, i64), String>,
    /// Per user: (total bonus coins, highest level reached by a level-up).
    pub level_ups: BTreeMap<String, (i64, u64)>,
}

/// An input record: (partition, offset, key, value).
pub type InputRecord = (i32, i64, Option<Vec<u8>>, Vec<u8>);

/// Folds records in the order given, with the default 90-day dedup window.
#[allow(dead_code)] // not every test binary uses both forms
pub fn fold(rules: &Rules, records: &[InputRecord]) -> Expected {
    fold_windowed(rules, records, DEFAULT_WINDOW_DAYS)
}

/// Folds records in the order given. A receipt more than `window_days` before the newest
/// receipt applied in its partition is `too_old`; ledger entries that old are forgotten.
pub fn fold_windowed(rules: &Rules, records: &[InputRecord], window_days: i64) -> Expected {
    fold_with(RefRules::from_rules(rules), records, window_days)
}

/// [`fold_windowed`] with the reference's own rules.
pub fn fold_with(rules: RefRules, records: &[InputRecord], window_days: i64) -> Expected {
    let mut model = Model::new(rules, window_days);
    let mut out = Expected::default();
    for (p, o, key, value) in records {
        if let Err(reason) = model.apply(*p, *o, key.as_deref(), value) {
            out.dlq.insert((*p, *o), reason.to_owned());
        }
    }
    let users: Vec<String> = model.users.keys().cloned().collect();
    for id in users {
        if let Some(p) = model.projection(&id) {
            out.projections.insert(id, p);
        }
    }
    out.level_ups = std::mem::take(&mut model.level_ups);
    out
}

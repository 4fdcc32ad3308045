//! Hostile input, generated, against models that share no code with the processor:
//!
//! - any bytes, and receipt-shaped JSON with edge values in every field, decode to exactly
//!   what the contract says (`support::reference::decode`: the same reason, or the same
//!   fields), and to the same decision twice;
//! - purchases, then refunds of them (full, partial, over-refunds, duplicates, conflicting
//!   duplicates, refunds of unknown receipts and of refunds), folded by `domain::apply`
//!   from extreme starting totals under extreme rules, give after every receipt exactly
//!   the totals of the reference model, which computes in `i128`: where the model leaves
//!   `i64` the processor must reject the receipt as `overflow` (not wrap, which a release
//!   build would do silently), and a rejected receipt changes nothing.
//!
//! `DEFAULT_CASES` cases per property; `PROPTEST_CASES` may ask for more, never fewer
//! (scripts/soak.sh runs 1,000,000).

mod support;

use std::collections::HashMap;

use mallquest::codec::decode_receipt;
use mallquest::domain::{
    apply, Effect, LedgerEntry, Receipt, ReceiptKind, Reject, Rules, Source, UserState,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use support::reference::{self, Instant, Model, Outcome, RefRules, Totals};

/// Cases per property unless `PROPTEST_CASES` asks for more.
const DEFAULT_CASES: u32 = 2_000;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(DEFAULT_CASES, |n| n.max(DEFAULT_CASES))
}

/// The largest amount, in cents (1,000,000.00).
const MAX_CENTS: i64 = 100_000_000;

// ---------------------------------------------------------------------------------------
// Decoding against the contract.

/// The processor's decision on a record equals the reference decoder's, and is the same
/// twice.
fn decides_as_the_contract(
    key: Option<&[u8]>,
    bytes: &[u8],
    rules: &Rules,
) -> Result<(), TestCaseError> {
    let got = decode_receipt(key, Some(bytes), rules);
    prop_assert_eq!(
        &got,
        &decode_receipt(key, Some(bytes), rules),
        "decided differently twice"
    );
    let want = reference::decode(key, bytes, &RefRules::from_rules(rules));
    let shown = String::from_utf8_lossy(bytes);
    match (&got, &want) {
        (Err(g), Err(w)) => prop_assert_eq!(g.as_str(), *w, "reason for {}", shown),
        (Ok(g), Ok(w)) => {
            prop_assert_eq!(&g.receipt_id, &w.receipt_id, "{}", shown);
            prop_assert_eq!(&g.user_id, &w.user_id, "{}", shown);
            prop_assert_eq!(&g.store_id, &w.store_id, "{}", shown);
            prop_assert_eq!(g.amount, w.amount, "{}", shown);
            prop_assert_eq!(
                (g.issued_at.secs, g.issued_at.nanos),
                (w.at.secs, w.at.nanos),
                "issued_at of {}",
                shown
            );
            prop_assert_eq!(g.kind.refund_of(), w.refund_of.as_deref(), "{}", shown);
        }
        _ => prop_assert!(
            false,
            "the processor decided {:?}, the contract {:?}, for {:?} (key {:?})",
            got,
            want,
            shown,
            key.map(String::from_utf8_lossy)
        ),
    }
    Ok(())
}

/// JSON-ish fragments of any type, so that generated inputs get past the parser often.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"10.00\"".to_owned()),
        Just("1e3".to_owned()),
        Just("-0".to_owned()),
        Just("99999999999999999999999999".to_owned()),
        Just("\"1000000.00\"".to_owned()),
        Just("\"0.01\"".to_owned()),
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("\"2026-11-18T11:00:00+14:00\"".to_owned()),
        Just("\"9999-12-31T23:59:59Z\"".to_owned()),
        Just("\"0000-01-01T00:00:00Z\"".to_owned()),
        "\"[a-z0-9.:+-]{0,12}\"",
        "[0-9]{1,25}(\\.[0-9]{1,4})?",
    ]
}

fn lit(s: &str) -> String {
    s.to_owned()
}

/// Ids at and past their bounds: length in bytes (multi-byte characters), control
/// characters (C0, DEL, C1), characters that only look odd.
fn id_value(typical: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        6 => Just(format!("\"{typical}\"")),
        1 => Just(lit("\"\"")),
        1 => Just(format!("\"{}\"", "x".repeat(128))),
        1 => Just(format!("\"{}\"", "x".repeat(129))),
        1 => Just(format!("\"{}\"", "é".repeat(64))),
        1 => Just(format!("\"{}x\"", "é".repeat(64))),
        1 => Just(lit("\"s\\u0001\"")),
        1 => Just(lit("\"s\\u001f\"")),
        1 => Just(lit("\"s\\u007f\"")),
        1 => Just(lit("\"s\\u0085\"")),
        1 => Just(lit("\"s\\u00a0\"")),
        1 => Just(lit("\"\\ud83d\\ude00\"")),
        1 => Just(lit("\"s\\t\"")),
        1 => Just(lit("\"u\\u002d1\"")),
        1 => Just(lit("5")),
        2 => fragment(),
    ]
}

/// Amounts at and past every bound, as strings and as JSON numbers.
fn amount_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(lit("\"12.34\"")),
        Just(lit("12.34")),
        Just(lit("12")),
        Just(lit("\"12\"")),
        Just(lit("\"12.3\"")),
        Just(lit("0.5")),
        Just(lit("\"0.001\"")),
        Just(lit("0.001")),
        Just(lit("\"1.\"")),
        Just(lit("\".5\"")),
        Just(lit("\"1000000\"")),
        Just(lit("1000000")),
        Just(lit("1000000.00")),
        Just(lit("1000000.01")),
        Just(lit("\"1000000.01\"")),
        Just(lit("100000000")),
        Just(lit("12.345")),
        Just(lit("12.340")),
        Just(lit("1E2")),
        Just(lit("1e-2")),
        Just(lit("1.5e2")),
        Just(lit("-0.0")),
        Just(lit("-1.00")),
        Just(lit("0")),
        Just(lit("0.00")),
        Just(lit("\"0.00\"")),
        Just(lit("\"00000000000001.00\"")),
        Just(lit("\"0000000000000000000000000.01\"")),
        Just(lit("\"+1.00\"")),
        Just(lit("\"1,00\"")),
        Just(lit("\"1.2.3\"")),
        Just(lit("\"١٢\"")),
        Just(lit("\"\\u0031.00\"")),
        Just(lit("\" 1.00\"")),
        "\"[0-9]{1,9}(\\.[0-9]{0,3})?\"",
        "[1-9][0-9]{0,8}(\\.[0-9]{1,3})?",
        fragment(),
    ]
}

/// RFC 3339 instants at and past every bound: calendar (leap years, month lengths),
/// clock (24:00, leap seconds), separators and offsets, fractions of any length; and
/// composed ones from ranges that straddle every limit.
fn time_value() -> impl Strategy<Value = String> {
    let fixed = prop_oneof![
        Just("2026-11-18T11:00:00Z"),
        Just("2026-11-18t11:00:00z"),
        Just("2026-11-18 11:00:00Z"),
        Just("2026-11-18T11:00:60Z"),
        Just("2026-12-31T23:59:60Z"),
        Just("2026-11-18T11:00:60.5+04:00"),
        Just("2026-11-18T11:00:00+0400"),
        Just("2026-11-18T11:00:00+04"),
        Just("2026-11-18T11:00:00-00:00"),
        Just("2026-11-18T11:00:00+24:00"),
        Just("2026-11-18T11:00:00+23:59"),
        Just("2026-11-18T11:00:00+04:60"),
        Just("2026-11-18T11:00:00.1234567891234Z"),
        Just("2026-11-18T11:00:00.Z"),
        Just("2028-02-29T00:00:00Z"),
        Just("2026-02-29T00:00:00Z"),
        Just("1900-02-29T00:00:00Z"),
        Just("2000-02-29T00:00:00Z"),
        Just("0000-01-01T00:00:00+01:00"),
        Just("9999-12-31T23:59:59-23:59"),
        Just("2026-11-18T24:00:00Z"),
        Just("+2026-11-18T11:00:00Z"),
        Just("2026-1-18T11:00:00Z"),
        Just("2026-11-18T11:00:00Z "),
        Just("2026-11-18T11:00Z"),
        Just("2026-11-18T11:00:00,5Z"),
        Just("2026-11-18T11:00:00+04:00:00"),
        Just("2026-11-18T11:00:00UTC"),
        Just("2026-11-18T11:00:00.000000000Z"),
        Just("2026-11-18T11:00:00.999999999999Z"),
        Just("2026-11-18T11:00:00"),
    ]
    .prop_map(|t| format!("\"{t}\""));
    let composed = (
        prop_oneof![
            Just(0i64),
            Just(1900),
            Just(2000),
            Just(2024),
            Just(2026),
            Just(2100),
            Just(9999),
            0i64..10_000
        ],
        0i64..14,
        0i64..33,
        prop_oneof![Just("T"), Just("t"), Just(" "), Just("x")],
        0i64..26,
        0i64..61,
        0i64..62,
        prop_oneof![Just(String::new()), "\\.[0-9]{1,12}".prop_map(|s| s)],
        prop_oneof![
            Just(lit("Z")),
            Just(lit("z")),
            (prop_oneof![Just('+'), Just('-')], 0i64..26, 0i64..61)
                .prop_map(|(s, h, m)| format!("{s}{h:02}:{m:02}")),
        ],
    )
        .prop_map(|(y, mo, d, sep, h, mi, s, frac, off)| {
            format!("\"{y:04}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}:{s:02}{frac}{off}\"")
        });
    prop_oneof![2 => fixed, 3 => composed, 1 => fragment()]
}

fn currency_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(lit("\"AED\"")),
        Just(lit("\"aed\"")),
        Just(lit("\"USD\"")),
        Just(lit("\"\"")),
        Just(lit("null")),
        Just(lit("5")),
        Just(lit("[\"AED\"]")),
        fragment(),
    ]
}

fn kind_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(lit("\"purchase\"")),
        Just(lit("\"refund\"")),
        Just(lit("\"Purchase\"")),
        Just(lit("\"gift\"")),
        Just(lit("null")),
        Just(lit("1")),
    ]
}

/// Members the receipt does not need: nesting around the depth bound (the receipt
/// object is one level), brackets and escapes inside strings, repeated members.
fn extra_member() -> impl Strategy<Value = String> {
    let nested = |d: usize| format!("\"deep\":{}{}", "[".repeat(d), "]".repeat(d));
    prop_oneof![
        Just(lit("\"pos\":\"t9\"")),
        Just(nested(62)),
        Just(nested(63)),
        Just(nested(64)),
        Just(nested(200)),
        Just(format!("\"note\":\"{}\"", "[".repeat(100))),
        Just(format!(
            "\"note\":\"\\\\\",\"deep\":{}{}",
            "[".repeat(63),
            "]".repeat(63)
        )),
        Just(format!("\"note\":\"\\\"{}\"", "{".repeat(100))),
        Just(lit("\"pos\":1,\"pos\":2")),
        Just(lit("\"receipt_id\":\"r-2\"")),
        Just(lit("\"amount\":\"1.00\"")),
        Just(lit("\"x\":{\"amount\":1e3,\"type\":\"gift\"}")),
    ]
}

/// A receipt-shaped document: each member present or not, in a random order of two.
#[derive(Debug, Clone)]
struct Shape {
    members: Vec<(&'static str, Option<String>)>,
    extra: Option<String>,
    extra_first: bool,
    /// 0..=6 an object; 7 with trailing garbage; 8 with trailing whitespace; 9 the
    /// members' values as an array, in the schema's order; 10 a bare fragment with
    /// trailing garbage; 11 a byte-order mark first.
    doc: u8,
}

fn shape() -> impl Strategy<Value = Shape> {
    (
        (
            prop::option::weighted(0.95, id_value("r-1")),
            prop::option::weighted(0.95, id_value("u-1")),
            prop::option::weighted(0.95, id_value("s-1")),
            prop::option::weighted(0.95, amount_value()),
            prop::option::weighted(0.95, time_value()),
        ),
        (
            prop::option::of(currency_value()),
            prop::option::of(kind_value()),
            prop::option::of(id_value("r-0")),
        ),
        prop::option::weighted(0.3, extra_member()),
        any::<bool>(),
        0u8..12,
    )
        .prop_map(
            |((rid, uid, sid, amount, at), (cur, kind, of), extra, extra_first, doc)| Shape {
                members: vec![
                    ("receipt_id", rid),
                    ("user_id", uid),
                    ("store_id", sid),
                    ("amount", amount),
                    ("issued_at", at),
                    ("currency", cur),
                    ("type", kind),
                    ("refund_of", of),
                ],
                extra,
                extra_first,
                doc,
            },
        )
}

fn render(s: &Shape) -> String {
    let mut parts: Vec<String> = s
        .members
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("\"{k}\":{v}")))
        .collect();
    if let Some(e) = &s.extra {
        if s.extra_first {
            parts.insert(0, e.clone());
        } else {
            parts.push(e.clone());
        }
    }
    let object = format!("{{{}}}", parts.join(","));
    match s.doc {
        7 => format!("{object} x"),
        8 => format!("{object} \n\t"),
        9 => {
            let values: Vec<&str> = s
                .members
                .iter()
                .map(|(_, v)| v.as_deref().unwrap_or("null"))
                .collect();
            format!("[{}]", values.join(","))
        }
        10 => format!("{} x", s.members[3].1.as_deref().unwrap_or("\"receipt\"")),
        11 => format!("\u{feff}{object}"),
        _ => object,
    }
}

fn key_choice() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        8 => Just(Some(b"u-1".to_vec())),
        1 => Just(Some(b"u-2".to_vec())),
        1 => Just(None),
    ]
}

// ---------------------------------------------------------------------------------------
// Folding against the i128 model.

/// Rules at the edges of what the configuration accepts (rates 0..=1,000,000, percent
/// 0..=10,000, level_xp_base 1..=u32::MAX, max_level 1..=100,000).
#[derive(Debug, Clone)]
struct RulesSpec {
    coins_per_unit: i64,
    xp_per_receipt: i64,
    xp_per_unit: i64,
    level_xp_base: i64,
    max_level: u32,
    bonus: i64,
    pct: [i64; 2],
}

fn rate() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(1),
        Just(10),
        Just(50),
        Just(1_000_000),
        0i64..=1_000_000
    ]
}

fn rules_spec() -> impl Strategy<Value = RulesSpec> {
    prop_oneof![
        // Mostly the defaults, so that long sequences apply.
        2 => Just(RulesSpec {
            coins_per_unit: 1,
            xp_per_receipt: 10,
            xp_per_unit: 1,
            level_xp_base: 100,
            max_level: 100,
            bonus: 50,
            pct: [200, 150],
        }),
        3 => (
            rate(),
            rate(),
            rate(),
            prop_oneof![Just(1i64), Just(100), Just(i64::from(u32::MAX)), 1i64..=i64::from(u32::MAX)],
            prop_oneof![Just(1u32), Just(100), Just(100_000), 1u32..=100_000],
            rate(),
            [prop_oneof![Just(0i64), Just(100), Just(10_000), 0i64..=10_000], prop_oneof![Just(0i64), Just(150), Just(10_000), 0i64..=10_000]],
        )
            .prop_map(|(c, xr, xu, base, max, bonus, pct)| RulesSpec {
                coins_per_unit: c,
                xp_per_receipt: xr,
                xp_per_unit: xu,
                level_xp_base: base,
                max_level: max,
                bonus,
                pct,
            }),
    ]
}

impl RulesSpec {
    fn rules(&self) -> Rules {
        let mut r = Rules {
            coins_per_unit: self.coins_per_unit,
            xp_per_receipt: self.xp_per_receipt,
            xp_per_unit: self.xp_per_unit,
            level_xp_base: self.level_xp_base,
            max_level: self.max_level,
            level_up_bonus_coins: self.bonus,
            ..Rules::default()
        };
        r.store_multipliers.insert("s-1".into(), self.pct[0]);
        r.store_multipliers.insert("s-2".into(), self.pct[1]);
        r
    }
}

/// A total anywhere in i64, mostly near its ends.
fn extreme_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(i64::MAX),
        Just(i64::MIN),
        (0i64..1_000_000_000_000).prop_map(|d| i64::MAX - d),
        (0i64..1_000_000_000_000).prop_map(|d| i64::MIN + d),
        -1_000_000i64..1_000_000,
        any::<i64>(),
    ]
}

#[derive(Debug, Clone)]
struct Start {
    coins: i64,
    xp: i64,
    spent: i64,
    /// A fraction of max_level, in 0..=1000 per mille.
    level_pm: u32,
}

fn start() -> impl Strategy<Value = Start> {
    (
        extreme_i64(),
        extreme_i64(),
        extreme_i64(),
        prop_oneof![Just(0u32), Just(1000), 0u32..=1000],
    )
        .prop_map(|(coins, xp, spent, level_pm)| Start {
            coins,
            xp,
            spent,
            level_pm,
        })
}

fn amount_cents() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(1i64),
        Just(99),
        Just(100),
        Just(101),
        Just(MAX_CENTS - 1),
        Just(MAX_CENTS),
        1i64..=MAX_CENTS,
        1i64..=10_000,
    ]
}

/// One step after the first purchases: (what, pick, how, amount, notation).
type Op = (u8, usize, u8, i64, u8);

fn op() -> impl Strategy<Value = Op> {
    (0u8..10, any::<usize>(), 0u8..6, amount_cents(), 0u8..4)
}

/// A receipt written out: amount as a string or a number literal, the instant in UTC or
/// as the same instant at +04:00, currency sometimes given.
fn receipt_bytes(
    id: &str,
    store: &str,
    cents: i64,
    at: Instant,
    refund_of: Option<&str>,
    notation: u8,
) -> Vec<u8> {
    let amount = format!("{}.{:02}", cents / 100, cents % 100);
    let amount = match notation % 2 {
        0 => format!("\"{amount}\""),
        _ if cents % 100 == 0 => format!("{}", cents / 100),
        _ => amount,
    };
    let at = if notation >= 2 {
        let local = reference::format_instant(Instant {
            secs: at.secs + 4 * 3600,
            nanos: at.nanos,
        });
        format!("{}+04:00", local.trim_end_matches('Z'))
    } else {
        reference::format_instant(at)
    };
    let mut s = format!(
        r#"{{"receipt_id":"{id}","user_id":"u-1","store_id":"{store}","amount":{amount},"issued_at":"{at}""#
    );
    if let Some(of) = refund_of {
        s.push_str(&format!(r#","type":"refund","refund_of":"{of}""#));
    }
    if notation == 3 {
        s.push_str(r#","currency":"AED""#);
    }
    s.push('}');
    s.into_bytes()
}

/// A receipt the harness wrote, to replay it or write it again differently.
#[derive(Clone)]
struct Written {
    id: String,
    store: String,
    cents: i64,
    at: Instant,
    refund_of: Option<String>,
    bytes: Vec<u8>,
}

/// Both sides of the fold: production state and ledger, and the model.
struct Harness {
    rules: Rules,
    state: UserState,
    ledger: HashMap<String, LedgerEntry>,
    model: Model,
    offset: i64,
    /// Every receipt written so far.
    written: Vec<Written>,
    /// Applied purchases: (id, cents, refunded cents) by the model's account.
    purchases: Vec<(String, i64, i64)>,
    /// Applied refunds' ids.
    refunds: Vec<String>,
    /// Decisions, for the fixed examples: the reason, or "applied"/"duplicate".
    decisions: Vec<&'static str>,
}

impl Harness {
    fn new(spec: &RulesSpec, start: &Start) -> Self {
        let rules = spec.rules();
        let level = (u64::from(spec.max_level) * u64::from(start.level_pm) / 1000).max(1);
        let mut state = UserState::new("u-1");
        state.coins = start.coins;
        state.xp = start.xp;
        state.total_spent = start.spent;
        state.level = level as u32;
        let mut model = Model::new(RefRules::from_rules(&rules), reference::DEFAULT_WINDOW_DAYS);
        model.seed(
            "u-1",
            Totals {
                coins: start.coins,
                xp: start.xp,
                spent: start.spent,
                level,
                ..Totals::default()
            },
        );
        Self {
            rules,
            state,
            ledger: HashMap::new(),
            model,
            offset: 0,
            written: Vec::new(),
            purchases: Vec::new(),
            refunds: Vec::new(),
            decisions: Vec::new(),
        }
    }

    fn at(&self) -> Instant {
        // One receipt a minute from 2026-11-18T10:00:00Z, some with a fraction.
        Instant {
            secs: 1_794_996_000 + self.offset * 60,
            nanos: if self.offset % 3 == 0 { 0 } else { 250_000_000 },
        }
    }

    fn write(
        &mut self,
        id: String,
        store: &str,
        cents: i64,
        refund_of: Option<String>,
        notation: u8,
    ) -> Result<(), TestCaseError> {
        let at = self.at();
        let bytes = receipt_bytes(&id, store, cents, at, refund_of.as_deref(), notation);
        self.written.push(Written {
            id,
            store: store.to_owned(),
            cents,
            at,
            refund_of,
            bytes: bytes.clone(),
        });
        self.feed(&bytes)
    }

    /// Folds one record on both sides and compares everything.
    fn feed(&mut self, bytes: &[u8]) -> Result<(), TestCaseError> {
        let offset = self.offset;
        self.offset += 1;
        let shown = String::from_utf8_lossy(bytes).into_owned();
        let before = self.state.clone();
        let src = Source {
            partition: 0,
            offset,
        };
        let produced: Result<(Receipt, Effect), Reject> =
            decode_receipt(Some(b"u-1"), Some(bytes), &self.rules).and_then(|r| {
                let existing = self.ledger.get(&r.receipt_id);
                let original = r.kind.refund_of().and_then(|o| self.ledger.get(o));
                apply(&mut self.state, existing, original, &r, src, &self.rules).map(|e| (r, e))
            });
        let modelled = self.model.apply(0, offset, Some(b"u-1"), bytes);
        match (produced, modelled) {
            (Err(got), Err(want)) => {
                prop_assert_eq!(got.as_str(), want, "reason for {}", shown);
                prop_assert_eq!(&self.state, &before, "a rejected receipt changed the state");
                self.decisions.push(want);
            }
            (Ok((_, Effect::Duplicate)), Ok(Outcome::Duplicate)) => {
                prop_assert_eq!(&self.state, &before, "a duplicate changed the state");
                self.decisions.push("duplicate");
            }
            (
                Ok((
                    r,
                    Effect::Applied {
                        entry,
                        original,
                        events,
                        coins_delta,
                        ..
                    },
                )),
                Ok(Outcome::Applied { levels, bonus }),
            ) => {
                let t = self.model.totals("u-1").expect("the model holds u-1");
                let s = &self.state;
                prop_assert_eq!(
                    (s.coins, s.xp, u64::from(s.level), s.total_spent),
                    (t.coins, t.xp, t.level, t.spent),
                    "coins, xp, level, spent after {}",
                    shown
                );
                prop_assert_eq!(
                    (s.receipt_count, s.refund_count, s.version, s.stores.len()),
                    (t.receipts, t.refunds, t.version, t.stores.len()),
                    "counts after {}",
                    shown
                );
                let instant =
                    |x: Option<mallquest::domain::Timestamp>| x.map(|x| (x.secs, x.nanos));
                let model_instant = |x: Option<Instant>| x.map(|x| (x.secs, x.nanos));
                prop_assert_eq!(
                    (instant(s.first_receipt_at), instant(s.last_receipt_at)),
                    (model_instant(t.first), model_instant(t.last))
                );
                prop_assert_eq!(s.source, Some(src));
                prop_assert_eq!(
                    i128::from(coins_delta),
                    i128::from(s.coins) - i128::from(before.coins),
                    "coins_delta of {}",
                    shown
                );
                let level_up = events.into_iter().find_map(|e| match e {
                    mallquest::domain::Event::LevelUp(l) => Some(l),
                    _ => None,
                });
                prop_assert_eq!(
                    level_up.map(|l| (
                        u64::from(l.from_level),
                        u64::from(l.to_level),
                        l.bonus_coins
                    )),
                    levels.map(|(from, to)| (from, to, bonus)),
                    "level-up of {}",
                    shown
                );
                match &r.kind {
                    ReceiptKind::Purchase => {
                        self.purchases.push((r.receipt_id.clone(), r.amount, 0));
                    }
                    ReceiptKind::Refund { refund_of } => {
                        let updated = original.expect("a refund updates its original");
                        if let Some(p) = self.purchases.iter_mut().find(|p| &p.0 == refund_of) {
                            p.2 += r.amount;
                            prop_assert_eq!(updated.refunded, p.2);
                        }
                        self.ledger.insert(refund_of.clone(), updated);
                        self.refunds.push(r.receipt_id.clone());
                    }
                    ReceiptKind::Redemption { .. } | ReceiptKind::RedemptionReversal { .. } => {
                        prop_assert!(false, "the core model has no redemptions: {}", shown);
                    }
                }
                self.ledger.insert(r.receipt_id.clone(), entry);
                self.decisions.push("applied");
            }
            (got, want) => prop_assert!(
                false,
                "the processor gave {:?}, the model {:?}, for {}",
                got.map(|(_, e)| e),
                want,
                shown
            ),
        }
        Ok(())
    }

    /// One generated step after the first purchases.
    fn step(&mut self, (what, pick, how, cents, notation): Op) -> Result<(), TestCaseError> {
        let i = self.offset;
        let store = ["s-0", "s-1", "s-2"][pick % 3];
        match what {
            // A refund of an applied purchase: full, what is left, one cent over what is
            // left, part of what is left, one cent, anything.
            0..=4 if !self.purchases.is_empty() => {
                let (id, amount, refunded) = self.purchases[pick % self.purchases.len()].clone();
                let left = amount - refunded;
                let cents = match how {
                    0 => amount,
                    1 => left,
                    2 => left + 1,
                    3 => 1 + cents % left.max(1),
                    4 => 1,
                    _ => cents,
                };
                self.write(format!("f-{i}"), store, cents, Some(id), notation)
            }
            // An exact replay of an earlier record, or the same receipt written with
            // another notation (amount form, UTC offset).
            5 if !self.written.is_empty() => {
                let Written {
                    id,
                    store: st,
                    cents: c,
                    at,
                    refund_of: of,
                    bytes,
                } = self.written[pick % self.written.len()].clone();
                if how % 2 == 0 {
                    self.feed(&bytes)
                } else {
                    let again = receipt_bytes(&id, &st, c, at, of.as_deref(), notation);
                    self.feed(&again)
                }
            }
            // The same receipt_id with other content.
            6 if !self.written.is_empty() => {
                let Written {
                    id,
                    store: st,
                    cents: c,
                    at,
                    refund_of: of,
                    ..
                } = self.written[pick % self.written.len()].clone();
                let bytes = match how % 3 {
                    0 => receipt_bytes(
                        &id,
                        &st,
                        if c == MAX_CENTS { c - 1 } else { c + 1 },
                        at,
                        of.as_deref(),
                        notation,
                    ),
                    1 => receipt_bytes(
                        &id,
                        if st == "s-0" { "s-1" } else { "s-0" },
                        c,
                        at,
                        of.as_deref(),
                        notation,
                    ),
                    _ => receipt_bytes(
                        &id,
                        &st,
                        c,
                        Instant {
                            secs: at.secs + 1,
                            nanos: at.nanos,
                        },
                        of.as_deref(),
                        notation,
                    ),
                };
                self.feed(&bytes)
            }
            // A refund of something that is not an applied purchase: never seen, or a
            // refund.
            7 => {
                let of = match (how % 2, self.refunds.is_empty()) {
                    (0, false) => self.refunds[pick % self.refunds.len()].clone(),
                    _ => "r-never".to_owned(),
                };
                self.write(format!("f-{i}"), store, cents, Some(of), notation)
            }
            // Another purchase.
            _ => self.write(format!("r-{i}"), store, cents, None, notation),
        }
    }
}

fn fold_case(
    spec: &RulesSpec,
    start: &Start,
    purchases: &[(i64, u8, u8)],
    ops: &[Op],
) -> Result<Harness, TestCaseError> {
    let mut h = Harness::new(spec, start);
    for (n, (cents, store, notation)) in purchases.iter().enumerate() {
        let store = ["s-0", "s-1", "s-2"][usize::from(*store % 3)];
        h.write(format!("r-{n}"), store, *cents, None, *notation)?;
    }
    for op in ops {
        h.step(*op)?;
    }
    Ok(h)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn arbitrary_bytes_decide_as_the_contract_and_the_same_twice(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        key in key_choice(),
    ) {
        decides_as_the_contract(key.as_deref(), &bytes, &Rules::default())?;
    }

    #[test]
    fn receipt_shaped_input_decides_as_the_contract(shape in shape(), key in key_choice()) {
        let text = render(&shape);
        decides_as_the_contract(key.as_deref(), text.as_bytes(), &Rules::default())?;
    }

    #[test]
    fn instants_are_written_as_the_processor_writes_them(
        // From 0000-01-01 less a day to 9999-12-31 plus a day (offsets reach that far);
        // nanos past 1e9 are leap seconds.
        secs in -62_167_305_600i64..253_402_387_200,
        nanos in prop_oneof![Just(0u32), (0u32..1000).prop_map(|ms| ms * 1_000_000), 0u32..2_000_000_000],
    ) {
        // The e2e and crash tests compare projections byte for byte, timestamps included.
        // A parsed leap second is always second 59 of its minute plus 1e9 nanos.
        let secs = if nanos >= 1_000_000_000 { secs - secs.rem_euclid(60) + 59 } else { secs };
        let t = mallquest::domain::Timestamp { secs, nanos };
        let text = reference::format_instant(Instant { secs, nanos });
        prop_assert_eq!(&text, &t.to_rfc3339());
        if (0..=9999).contains(&text[..4].parse::<i64>().unwrap_or(-1)) && !text.starts_with('+') {
            prop_assert_eq!(reference::parse_instant(&text), Some(Instant { secs, nanos }));
        }
    }

    #[test]
    fn purchases_then_refunds_fold_as_the_i128_model_from_any_totals(
        spec in rules_spec(),
        start in start(),
        purchases in prop::collection::vec((amount_cents(), 0u8..3, 0u8..4), 1..8),
        ops in prop::collection::vec(op(), 0..32),
    ) {
        fold_case(&spec, &start, &purchases, &ops)?;
    }
}

// ---------------------------------------------------------------------------------------
// Fixed cases: the model's branches are reached, and the reference is the contract's.

fn defaults() -> RulesSpec {
    RulesSpec {
        coins_per_unit: 1,
        xp_per_receipt: 10,
        xp_per_unit: 1,
        level_xp_base: 100,
        max_level: 100,
        bonus: 50,
        pct: [200, 150],
    }
}

fn from(coins: i64, xp: i64, spent: i64) -> Start {
    Start {
        coins,
        xp,
        spent,
        level_pm: 0,
    }
}

fn decisions(
    spec: &RulesSpec,
    start: &Start,
    purchases: &[(i64, u8, u8)],
    ops: &[Op],
) -> Vec<&'static str> {
    match fold_case(spec, start, purchases, ops) {
        Ok(h) => h.decisions,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn totals_that_would_leave_i64_are_rejected_as_overflow() {
    let d = defaults();
    // coins: i64::MAX - 5 plus the 10 coins of 10.00.
    assert_eq!(
        decisions(&d, &from(i64::MAX - 5, 0, 0), &[(1000, 0, 0)], &[]),
        ["overflow"]
    );
    // xp: 10 + 10 more.
    assert_eq!(
        decisions(&d, &from(0, i64::MAX - 15, 0), &[(1000, 0, 0)], &[]),
        ["overflow"]
    );
    // spent: one cent over.
    assert_eq!(
        decisions(&d, &from(0, 0, i64::MAX), &[(1, 0, 0)], &[]),
        ["overflow"]
    );
    // Exactly at the edge is fine; the next receipt is not.
    assert_eq!(
        decisions(
            &d,
            &from(i64::MAX - 10, 0, 0),
            &[(1000, 0, 0), (100, 0, 0)],
            &[]
        ),
        ["applied", "overflow"]
    );
    // A level-up bonus that alone crosses the edge: 1e17 XP jumps to the top level,
    // 99 levels x 50 coins.
    assert_eq!(
        decisions(
            &d,
            &from(i64::MAX - 4_000, 100_000_000_000_000_000, 0),
            &[(100, 0, 0)],
            &[]
        ),
        ["overflow"]
    );
    // From the bottom of i64, purchases and their full refunds apply and return there.
    let h = fold_case(
        &d,
        &from(i64::MIN, i64::MIN, i64::MIN),
        &[(MAX_CENTS, 1, 0)],
        &[(0, 0, 0, 0, 0)],
    )
    .unwrap();
    assert_eq!(h.decisions, ["applied", "applied"]);
    assert_eq!(
        (h.state.coins, h.state.xp, h.state.total_spent),
        (i64::MIN, i64::MIN, i64::MIN)
    );
}

#[test]
fn refunds_of_real_originals_take_back_exactly_what_was_earned() {
    let d = defaults();
    // 480.61 at s-1 (200%): 961 coins, 490 xp, level 3 (+100 coins). Refund 240.00, then
    // what is left, then one cent more; a replay of the first refund; a refund of a refund.
    let ops = [
        (3, 0, 4, 0, 0),   // one cent of r-0
        (5, 1, 0, 0, 0),   // replay of that refund
        (0, 0, 1, 0, 1),   // what is left of r-0
        (0, 0, 2, 0, 2),   // one cent over what is left (nothing is): exceeds
        (7, 0, 0, 100, 0), // refund of a refund
        (7, 0, 1, 100, 0), // refund of a receipt never seen
        (6, 0, 0, 0, 0),   // r-0 again with another amount
    ];
    let h = fold_case(&d, &from(0, 0, 0), &[(48_061, 1, 0)], &ops).unwrap();
    assert_eq!(
        h.decisions,
        [
            "applied",
            "applied",
            "duplicate",
            "applied",
            "refund_exceeds_original",
            "unknown_original",
            "unknown_original",
            "conflicting_duplicate"
        ]
    );
    assert_eq!((h.state.coins, h.state.xp, h.state.level), (100, 0, 3));
    assert_eq!((h.state.total_spent, h.state.refund_count), (0, 2));
}

#[test]
fn the_references_defaults_are_the_production_defaults() {
    // The property and crash tests pass `Rules::default()` to both sides: pin it to the
    // README's configuration reference, which the reference copies.
    assert_eq!(
        RefRules::from_rules(&Rules::default()),
        RefRules::contract_defaults()
    );
}

// Points of the contract the processor's decoder missed when this test was written (each
// found by `receipt_shaped_input_decides_as_the_contract`); they fail until it is fixed.

fn production(value: &str) -> Result<Receipt, Reject> {
    decode_receipt(Some(b"u-1"), Some(value.as_bytes()), &Rules::default())
}

#[test]
fn contract_a_json_array_is_not_a_receipt() {
    // receipt.schema.json: "type": "object". Decoded positionally, this is a purchase.
    let v = r#"["r-1","u-1","s-1","1.00","2026-11-18T11:00:00Z",null,null,null]"#;
    assert_eq!(
        reference::decode(Some(b"u-1"), v.as_bytes(), &RefRules::contract_defaults()),
        Err("schema")
    );
    assert_eq!(production(v).map(|r| r.receipt_id), Err(Reject::Schema));
}

#[test]
fn contract_refund_of_is_an_id_wherever_it_appears() {
    // receipt.schema.json validates `refund_of` whenever it is present, not only on
    // refunds; tests/schemas.rs says the schema accepts exactly what the decoder accepts.
    for of in ["5", "null", "\"\"", "\"s\\u0001\""] {
        let v = format!(
            r#"{{"receipt_id":"r-1","user_id":"u-1","store_id":"s-1","amount":"1.00","issued_at":"2026-11-18T11:00:00Z","refund_of":{of}}}"#
        );
        assert_eq!(
            reference::decode(Some(b"u-1"), v.as_bytes(), &RefRules::contract_defaults()),
            Err("schema"),
            "{v}"
        );
        assert_eq!(
            production(&v).map(|r| r.receipt_id),
            Err(Reject::Schema),
            "{v}"
        );
    }
}

#[test]
fn contract_a_record_that_is_not_json_is_invalid_json() {
    // `invalid_json`: "Not UTF-8, or not JSON", checked before the schema. These are not
    // JSON, but the first error met is a schema one (a scalar where an object belongs, a
    // repeated field) before the syntax error.
    for v in [
        r#""receipt" x"#,
        "null x",
        "5 x",
        r#"{"receipt_id":"r-1","receipt_id":"r-1","user_id":"u-1" x"#,
    ] {
        assert_eq!(
            reference::decode(Some(b"u-1"), v.as_bytes(), &RefRules::contract_defaults()),
            Err("invalid_json"),
            "{v}"
        );
        assert_eq!(
            production(v).map(|r| r.receipt_id),
            Err(Reject::InvalidJson),
            "{v}"
        );
    }
}

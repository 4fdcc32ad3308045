//! Bytes <-> domain: receipt decoding (with its rejection reasons) and the JSON of
//! projections and level-up events. Agrees with `schemas/` (checked by tests/schemas.rs).

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::domain::money::{format_minor, parse_amount};
use crate::domain::{
    BadgeEarned, Event, LevelUp, MissionEvent, Receipt, ReceiptKind, Reject, Rules, Timestamp,
    UserState,
};

/// Records larger than this are rejected as `too_large` before any parsing.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// Bounds of every id string, in bytes.
const MAX_ID_BYTES: usize = 128;

/// A record's document, read in one pass that checks all of it is JSON (so that a syntax
/// error anywhere is `invalid_json`, whatever comes before it) and keeps only the
/// receipt's members. Nothing here is a schema error: that is decided afterwards.
#[allow(clippy::large_enum_variant)] // one per record, on the stack, consumed at once
enum Doc<'a> {
    /// A JSON object: the receipt's members as written.
    Object(Wire<'a>),
    /// Any other JSON value (array, string, number, ...): not a receipt.
    NotObject,
}

/// The receipt's members as written on the wire. Every member is optional here so that a
/// missing one is a `schema` rejection, not a JSON syntax error; unknown members are
/// checked to be JSON and dropped.
#[derive(Default)]
struct Wire<'a> {
    receipt_id: Option<Scalar<'a>>,
    user_id: Option<Scalar<'a>>,
    store_id: Option<Scalar<'a>>,
    /// Unparsed: a number's literal text must be a plain decimal.
    amount: Option<&'a RawValue>,
    issued_at: Option<Scalar<'a>>,
    currency: Option<Scalar<'a>>,
    kind: Option<Scalar<'a>>,
    refund_of: Option<Scalar<'a>>,
    /// Unparsed: a redemption's coins must be written as a positive integer.
    coins: Option<&'a RawValue>,
    /// A known member was given more than once: it has no single meaning (`schema`).
    repeated: bool,
}

/// A member's value, as far as the receipt schema looks at it.
enum Scalar<'a> {
    Null,
    Str(Cow<'a, str>),
    Number,
    /// A boolean, an array or an object.
    Other,
}

/// A top-level member name. Escapes are decoded (`"amo\u0075nt"` is `amount`).
enum Key {
    ReceiptId,
    UserId,
    StoreId,
    Amount,
    IssuedAt,
    Currency,
    Type,
    RefundOf,
    Coins,
    Unknown,
}

/// Any JSON value, checked and dropped. Unlike `serde::de::IgnoredAny` (which serde_json
/// only skips over), it is parsed as a `serde_json::Value` would be: strings are decoded
/// (a lone surrogate escape is an error) and numbers must fit an `f64`.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Checked;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Checked, A::Error> {
                skip_seq(seq).map(|()| Checked)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Checked, A::Error> {
                skip_map(map).map(|()| Checked)
            }
        }
        d.deserialize_any(V)
    }
}

fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<Checked>()?.is_some() {}
    Ok(())
}

fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<Checked, Checked>()?.is_some() {}
    Ok(())
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Null)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Number)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Number)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Number)
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Owned(s)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Scalar<'de>, A::Error> {
                skip_seq(seq).map(|()| Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Scalar<'de>, A::Error> {
                skip_map(map).map(|()| Scalar::Other)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E>(self, s: &str) -> Result<Key, E> {
                Ok(match s {
                    "receipt_id" => Key::ReceiptId,
                    "user_id" => Key::UserId,
                    "store_id" => Key::StoreId,
                    "amount" => Key::Amount,
                    "issued_at" => Key::IssuedAt,
                    "currency" => Key::Currency,
                    "type" => Key::Type,
                    "refund_of" => Key::RefundOf,
                    "coins" => Key::Coins,
                    _ => Key::Unknown,
                })
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Doc<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Doc<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Doc<'de>, E> {
                Ok(Doc::NotObject)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Doc<'de>, E> {
                Ok(Doc::NotObject)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Doc<'de>, E> {
                Ok(Doc::NotObject)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Doc<'de>, E> {
                Ok(Doc::NotObject)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Doc<'de>, E> {
                Ok(Doc::NotObject)
            }
            fn visit_str<E>(self, _: &str) -> Result<Doc<'de>, E> {
                Ok(Doc::NotObject)
            }
            // Never filled by position: an array is JSON, but not a receipt.
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Doc<'de>, A::Error> {
                skip_seq(seq).map(|()| Doc::NotObject)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Doc<'de>, A::Error> {
                let mut w = Wire::default();
                while let Some(key) = map.next_key::<Key>()? {
                    let repeated = &mut w.repeated;
                    match key {
                        Key::ReceiptId => member(&mut map, &mut w.receipt_id, repeated)?,
                        Key::UserId => member(&mut map, &mut w.user_id, repeated)?,
                        Key::StoreId => member(&mut map, &mut w.store_id, repeated)?,
                        Key::Amount => member(&mut map, &mut w.amount, repeated)?,
                        Key::IssuedAt => member(&mut map, &mut w.issued_at, repeated)?,
                        Key::Currency => member(&mut map, &mut w.currency, repeated)?,
                        Key::Type => member(&mut map, &mut w.kind, repeated)?,
                        Key::RefundOf => member(&mut map, &mut w.refund_of, repeated)?,
                        Key::Coins => member(&mut map, &mut w.coins, repeated)?,
                        Key::Unknown => {
                            map.next_value::<Checked>()?;
                        }
                    }
                }
                Ok(Doc::Object(w))
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads a known member's value into its slot; a repeat is noted and its value only
/// checked, so that the rest of the document is still read (a later syntax error wins).
fn member<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
    map: &mut A,
    slot: &mut Option<T>,
    repeated: &mut bool,
) -> Result<(), A::Error> {
    if slot.is_some() {
        *repeated = true;
        map.next_value::<Checked>()?;
    } else {
        *slot = Some(map.next_value()?);
    }
    Ok(())
}

/// Decodes and validates one record. Checks run in a fixed order (size, JSON, schema,
/// amount, currency, key) so that a replay always gives the same reason.
pub fn decode_receipt(
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    rules: &Rules,
) -> Result<Receipt, Reject> {
    let payload = payload.unwrap_or_default();
    if payload.len() > MAX_RECORD_BYTES {
        return Err(Reject::TooLarge);
    }
    let text = std::str::from_utf8(payload).map_err(|_| Reject::InvalidJson)?;
    if nesting_depth(payload) > MAX_DEPTH {
        return Err(Reject::InvalidJson);
    }
    // The visitors accept any JSON value, so every error here is one of JSON itself
    // (syntax, end of input, trailing characters, a lone surrogate, a number past f64).
    let doc: Doc<'_> = serde_json::from_str(text).map_err(|_| Reject::InvalidJson)?;
    let wire = match doc {
        Doc::Object(w) => w,
        // receipt.schema.json: "type": "object".
        Doc::NotObject => return Err(Reject::Schema),
    };
    // The amount was kept unparsed for its literal: check it is JSON before any schema
    // decision too.
    let amount = literal(wire.amount)?;
    let coins = literal(wire.coins)?;
    if wire.repeated {
        return Err(Reject::Schema);
    }

    let receipt_id = id_field(wire.receipt_id)?;
    let user_id = id_field(wire.user_id)?;
    let store_id = id_field(wire.store_id)?;
    let issued_at = match &wire.issued_at {
        Some(Scalar::Str(s)) => Timestamp::parse_rfc3339(s),
        _ => None,
    }
    .ok_or(Reject::Schema)?;
    // receipt.schema.json: `refund_of` is an id wherever it appears (a purchase's is
    // then ignored), and required of a refund.
    let refund_of = wire.refund_of.map(|v| id_field(Some(v))).transpose()?;
    let kind = match opt_string_field(wire.kind)?.as_deref() {
        None | Some("purchase") => ReceiptKind::Purchase,
        Some("refund") => ReceiptKind::Refund {
            refund_of: refund_of.ok_or(Reject::Schema)?,
        },
        // receipt.schema.json: a redemption's `coins` is a positive JSON integer.
        Some("redemption") => ReceiptKind::Redemption {
            coins: coins_field(coins)?,
        },
        Some("redemption_reversal") => ReceiptKind::RedemptionReversal {
            refund_of: refund_of.ok_or(Reject::Schema)?,
        },
        Some(_) => return Err(Reject::Schema),
    };
    let currency = opt_string_field(wire.currency)?;
    let amount = match kind {
        ReceiptKind::Purchase | ReceiptKind::Refund { .. } => amount_field(amount)?,
        // Optional, and may be 0, on redemptions and their reversals.
        ReceiptKind::Redemption { .. } | ReceiptKind::RedemptionReversal { .. } => match amount {
            None => 0,
            Some(v) => zero_or_amount_field(v)?,
        },
    };
    if currency.is_some_and(|c| c != rules.currency) {
        return Err(Reject::Currency);
    }
    if key != Some(user_id.as_bytes()) {
        return Err(Reject::KeyMismatch);
    }
    Ok(Receipt {
        receipt_id,
        user_id,
        store_id,
        amount,
        issued_at,
        kind,
    })
}

/// Deeper JSON than this is refused, even inside ignored fields: serde_json refuses
/// past 128 levels in known fields anyway, and no receipt needs more than 2.
/// A member kept unparsed, with its literal text: checked to be JSON.
fn literal(raw: Option<&RawValue>) -> Result<Option<(&str, Scalar<'_>)>, Reject> {
    raw.map(|raw| {
        serde_json::from_str::<Scalar<'_>>(raw.get())
            .map(|v| (raw.get(), v))
            .map_err(|_| Reject::InvalidJson)
    })
    .transpose()
}

const MAX_DEPTH: usize = 64;

/// The deepest nesting of arrays and objects, outside strings.
fn nesting_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn opt_string_field(v: Option<Scalar<'_>>) -> Result<Option<Cow<'_, str>>, Reject> {
    match v {
        None | Some(Scalar::Null) => Ok(None),
        Some(Scalar::Str(s)) => Ok(Some(s)),
        Some(_) => Err(Reject::Schema),
    }
}

fn id_field(v: Option<Scalar<'_>>) -> Result<String, Reject> {
    let Some(Scalar::Str(s)) = v else {
        return Err(Reject::Schema);
    };
    if s.is_empty() || s.len() > MAX_ID_BYTES || s.chars().any(char::is_control) {
        return Err(Reject::Schema);
    }
    Ok(s.into_owned())
}

/// The amount: its raw text and what JSON value it is.
/// A redemption's coins: a JSON integer literal (digits only) from 1 to 10^15.
fn coins_field(v: Option<(&str, Scalar<'_>)>) -> Result<i64, Reject> {
    match v {
        Some((raw, Scalar::Number))
            if raw.bytes().all(|b| b.is_ascii_digit()) && raw.len() <= 16 =>
        {
            raw.parse::<i64>()
                .ok()
                .filter(|c| (1..=MAX_COINS).contains(c))
                .ok_or(Reject::Schema)
        }
        _ => Err(Reject::Schema),
    }
}

/// Most coins one redemption may spend.
const MAX_COINS: i64 = 1_000_000_000_000_000;

/// An amount that may also be zero (`"0.00"`, `0`), as on redemptions.
fn zero_or_amount_field(v: (&str, Scalar<'_>)) -> Result<i64, Reject> {
    let text = match &v {
        (_, Scalar::Str(s)) => s.as_ref(),
        (raw, Scalar::Number) => raw,
        _ => return Err(Reject::Schema),
    };
    let zero = |t: &str| {
        let (int, frac) = t.split_once('.').unwrap_or((t, "0"));
        !int.is_empty()
            && (1..=2).contains(&frac.len())
            && int.bytes().chain(frac.bytes()).all(|b| b == b'0')
    };
    if zero(text) {
        return Ok(0);
    }
    amount_field(Some(v))
}

fn amount_field(v: Option<(&str, Scalar<'_>)>) -> Result<i64, Reject> {
    let text = match v.ok_or(Reject::Schema)? {
        // A JSON string: its content must be a plain decimal.
        (_, Scalar::Str(s)) => parse_amount(&s),
        // A JSON number: its literal text must be a plain decimal (no exponent, no sign).
        (raw, Scalar::Number) => parse_amount(raw),
        _ => return Err(Reject::Schema),
    };
    text.ok_or(Reject::Amount)
}

/// The projection as published on the projections topic and served by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectionJson {
    pub user_id: String,
    pub coins: i64,
    pub xp: i64,
    pub level: u32,
    pub total_spent: String,
    pub receipt_count: u64,
    pub refund_count: u64,
    pub stores_visited: u64,
    pub first_receipt_at: Option<String>,
    pub last_receipt_at: Option<String>,
    pub version: u64,
    pub source: Option<SourceJson>,
    /// Campaign coins held per campaign, net of refunds.
    pub coins_by_campaign: std::collections::BTreeMap<String, i64>,
    /// Mission instances still kept, with their progress.
    pub missions: Vec<MissionJson>,
    /// Runs of consecutive days (or weeks) with a purchase.
    pub streak: StreakJson,
    /// Badges earned, in earning order.
    pub badges: Vec<String>,
    /// Redemptions applied.
    pub redemptions: u64,
    /// Coins redeemed, net of reversals.
    pub coins_redeemed: i64,
    /// The status tier held (`[tiers]`), or null.
    #[serde(default)]
    pub tier: Option<TierJson>,
    /// The qualifying figure: spend as a money string, or XP; null without `[tiers]`.
    #[serde(default)]
    pub tier_figure: Option<serde_json::Value>,
    /// Coins expired, ever (0 without `[expiry]`).
    #[serde(default)]
    pub coins_expired: i64,
    /// The soonest non-empty lot's expiry, or null.
    #[serde(default)]
    pub next_expiry: Option<NextExpiryJson>,
}

/// `tier` of a projection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierJson {
    pub id: String,
    pub since: String,
}

/// `next_expiry` of a projection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NextExpiryJson {
    pub at: String,
    pub coins: i64,
}

/// One mission instance of a projection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MissionJson {
    pub mission_id: String,
    /// `2026-11-30`, `2026-W49`, `2026-12` or `once`.
    pub period: String,
    /// Spend counted (in the mission's category for `category_spend`), net of refunds.
    pub spend: String,
    /// Purchases not fully refunded.
    pub receipts: u64,
    /// Distinct stores with a purchase not fully refunded.
    pub stores: u64,
    /// Whether the reward is held.
    pub completed: bool,
}

/// `streak` of a projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreakJson {
    pub current: i64,
    pub best: i64,
}

/// `source` of a projection: the last applied event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceJson {
    pub partition: i32,
    pub offset: i64,
}

impl ProjectionJson {
    /// The published form of a stored state.
    pub fn from_state(s: &UserState) -> Self {
        Self {
            user_id: s.user_id.clone(),
            coins: s.coins,
            xp: s.xp,
            level: s.level,
            total_spent: format_minor(s.total_spent),
            receipt_count: s.receipt_count,
            refund_count: s.refund_count,
            stores_visited: s.stores.len() as u64,
            first_receipt_at: s.first_receipt_at.map(Timestamp::to_rfc3339),
            last_receipt_at: s.last_receipt_at.map(Timestamp::to_rfc3339),
            version: s.version,
            source: s.source.map(|s| SourceJson {
                partition: s.partition,
                offset: s.offset,
            }),
            coins_by_campaign: s.coins_by_campaign.clone(),
            missions: s
                .missions
                .iter()
                .map(|m| MissionJson {
                    mission_id: m.mission_id.clone(),
                    period: m.period.clone(),
                    spend: format_minor(m.spend),
                    receipts: m.receipts,
                    stores: m.stores.len() as u64,
                    completed: m.completed,
                })
                .collect(),
            streak: StreakJson {
                current: s.streak_current(),
                best: s.streak_best(),
            },
            badges: s.badges.clone(),
            redemptions: s.redemptions,
            coins_redeemed: s.coins_redeemed,
            tier: s.tier.as_ref().map(|t| TierJson {
                id: t.id.clone(),
                since: t.since.to_rfc3339(),
            }),
            tier_figure: s.tier_figure.map(crate::domain::Figure::to_json),
            coins_expired: s.coins_expired,
            next_expiry: s.next_expiry.map(|(at, coins)| NextExpiryJson {
                at: at.to_rfc3339(),
                coins,
            }),
        }
    }
}

/// Encodes a projection value for the projections topic.
pub fn encode_projection(s: &UserState) -> Vec<u8> {
    // Serialising plain structs of strings and integers cannot fail.
    serde_json::to_vec(&ProjectionJson::from_state(s)).unwrap_or_default()
}

/// The level-up event as published on the events topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelUpJson {
    #[serde(rename = "type")]
    pub kind: String,
    pub user_id: String,
    pub from_level: u32,
    pub to_level: u32,
    pub bonus_coins: i64,
    pub receipt_id: String,
    pub at: String,
}

/// A `mission_completed` or `mission_revoked` event as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MissionEventJson {
    #[serde(rename = "type")]
    pub kind: String,
    pub user_id: String,
    pub mission_id: String,
    pub period: String,
    pub reward_coins: i64,
    pub reward_xp: i64,
    pub receipt_id: String,
    pub at: String,
}

/// A `badge_earned` event as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BadgeEventJson {
    #[serde(rename = "type")]
    pub kind: String,
    pub user_id: String,
    pub badge_id: String,
    pub receipt_id: String,
    pub at: String,
}

/// A `coins_expired` event as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoinsExpiredJson {
    #[serde(rename = "type")]
    pub kind: String,
    pub user_id: String,
    pub coins: i64,
    pub earned_in: String,
    pub at: String,
}

/// A `tier_changed` event as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierChangedJson {
    #[serde(rename = "type")]
    pub kind: String,
    pub user_id: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub reason: String,
    pub at: String,
}

/// Encodes any event for the events topic.
pub fn encode_event(e: &Event) -> Vec<u8> {
    let mission = |kind: &str, m: &MissionEvent| MissionEventJson {
        kind: kind.into(),
        user_id: m.user_id.clone(),
        mission_id: m.mission_id.clone(),
        period: m.period.clone(),
        reward_coins: m.reward_coins,
        reward_xp: m.reward_xp,
        receipt_id: m.receipt_id.clone(),
        at: m.at.to_rfc3339(),
    };
    let badge = |b: &BadgeEarned| BadgeEventJson {
        kind: "badge_earned".into(),
        user_id: b.user_id.clone(),
        badge_id: b.badge_id.clone(),
        receipt_id: b.receipt_id.clone(),
        at: b.at.to_rfc3339(),
    };
    // Serialising plain structs of strings and integers cannot fail.
    match e {
        Event::LevelUp(l) => Ok(encode_level_up(l)),
        Event::MissionCompleted(m) => serde_json::to_vec(&mission("mission_completed", m)),
        Event::MissionRevoked(m) => serde_json::to_vec(&mission("mission_revoked", m)),
        Event::BadgeEarned(b) => serde_json::to_vec(&badge(b)),
        Event::CoinsExpired(x) => serde_json::to_vec(&CoinsExpiredJson {
            kind: "coins_expired".into(),
            user_id: x.user_id.clone(),
            coins: x.coins,
            earned_in: x.earned_in.clone(),
            at: x.at.to_rfc3339(),
        }),
        Event::TierChanged(t) => serde_json::to_vec(&TierChangedJson {
            kind: "tier_changed".into(),
            user_id: t.user_id.clone(),
            from: t.from.clone(),
            to: t.to.clone(),
            reason: t.reason.as_str().into(),
            at: t.at.to_rfc3339(),
        }),
    }
    .unwrap_or_default()
}

/// Encodes a level-up event.
pub fn encode_level_up(l: &LevelUp) -> Vec<u8> {
    serde_json::to_vec(&LevelUpJson {
        kind: "level_up".into(),
        user_id: l.user_id.clone(),
        from_level: l.from_level,
        to_level: l.to_level,
        bonus_coins: l.bonus_coins,
        receipt_id: l.receipt_id.clone(),
        at: l.at.to_rfc3339(),
    })
    .unwrap_or_default()
}

/// DLQ header: the rejection reason.
pub const HEADER_REASON: &str = "mallquest.reason";
/// DLQ header: the topic the record came from.
pub const HEADER_SOURCE_TOPIC: &str = "mallquest.source.topic";
/// DLQ header: the partition the record came from.
pub const HEADER_SOURCE_PARTITION: &str = "mallquest.source.partition";
/// DLQ header: the offset the record came from.
pub const HEADER_SOURCE_OFFSET: &str = "mallquest.source.offset";

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(key: &str, v: &str) -> Result<Receipt, Reject> {
        decode_receipt(Some(key.as_bytes()), Some(v.as_bytes()), &Rules::default())
    }

    const OK: &str = r#"{"receipt_id":"r-1","user_id":"u-1","store_id":"s-1","amount":"12.34","issued_at":"2026-11-18T11:06:49Z"}"#;

    #[test]
    fn valid_purchase_decodes() {
        let r = decode("u-1", OK).unwrap();
        assert_eq!(r.amount, 1234);
        assert_eq!(r.kind, ReceiptKind::Purchase);
    }

    #[test]
    fn amount_as_number_keeps_its_literal() {
        let v = OK.replace(r#""12.34""#, "12.34");
        assert_eq!(decode("u-1", &v).unwrap().amount, 1234);
        assert_eq!(
            decode("u-1", &OK.replace(r#""12.34""#, "1e3")),
            Err(Reject::Amount)
        );
        assert_eq!(
            decode("u-1", &OK.replace(r#""12.34""#, "-5")),
            Err(Reject::Amount)
        );
        assert_eq!(
            decode("u-1", &OK.replace(r#""12.34""#, "12.345")),
            Err(Reject::Amount)
        );
        assert_eq!(
            decode("u-1", &OK.replace(r#""12.34""#, "true")),
            Err(Reject::Schema)
        );
    }

    #[test]
    fn reasons_come_in_a_fixed_order() {
        let big = format!("{{\"x\":\"{}\"}}", "a".repeat(MAX_RECORD_BYTES));
        assert_eq!(decode("u-1", &big), Err(Reject::TooLarge));
        assert_eq!(decode("u-1", "{not json"), Err(Reject::InvalidJson));
        assert_eq!(
            decode_receipt(Some(b"u-1"), Some(&[0xff, b'{']), &Rules::default()),
            Err(Reject::InvalidJson)
        );
        assert_eq!(decode("u-1", "[1,2]"), Err(Reject::Schema));
        assert_eq!(
            decode("u-1", &OK.replace("\"user_id\":\"u-1\",", "")),
            Err(Reject::Schema)
        );
        let v = OK.replace("}", r#","type":"gift"}"#);
        assert_eq!(decode("u-1", &v), Err(Reject::Schema));
        let v = OK.replace("}", r#","type":"refund"}"#);
        assert_eq!(
            decode("u-1", &v),
            Err(Reject::Schema),
            "a refund needs refund_of"
        );
        let v = OK.replace("}", r#","currency":"USD"}"#);
        assert_eq!(decode("u-1", &v), Err(Reject::Currency));
        assert_eq!(decode("u-2", OK), Err(Reject::KeyMismatch));
        assert_eq!(
            decode_receipt(None, Some(OK.as_bytes()), &Rules::default()),
            Err(Reject::KeyMismatch)
        );
        assert_eq!(
            decode("u-1", &OK.replace("11:06:49Z", "11:06:49")),
            Err(Reject::Schema)
        );
    }

    #[test]
    fn ids_are_bounded_and_free_of_control_characters() {
        let long = "x".repeat(129);
        let v = OK.replace("\"r-1\"", &format!("\"{long}\""));
        assert_eq!(decode("u-1", &v), Err(Reject::Schema));
        let v = OK.replace("\"s-1\"", "\"s\\u0001\"");
        assert_eq!(decode("u-1", &v), Err(Reject::Schema));
        let v = OK.replace("\"s-1\"", "\"\"");
        assert_eq!(decode("u-1", &v), Err(Reject::Schema));
    }

    #[test]
    fn deep_nesting_is_rejected_without_a_stack_overflow() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let v = OK.replace("}", &format!(",\"deep\":{deep}}}"));
        assert_eq!(decode("u-1", &v), Err(Reject::InvalidJson));
        // Brackets inside strings are not nesting.
        let v = OK.replace("}", &format!(",\"note\":\"{}\"}}", "[".repeat(200)));
        assert!(decode("u-1", &v).is_ok());
    }

    #[test]
    fn refund_decodes_with_its_original() {
        let v = OK.replace("}", r#","type":"refund","refund_of":"r-0"}"#);
        let r = decode("u-1", &v).unwrap();
        assert_eq!(
            r.kind,
            ReceiptKind::Refund {
                refund_of: "r-0".into()
            }
        );
    }

    #[test]
    fn a_json_array_is_not_a_receipt() {
        // receipt.schema.json: "type": "object". Its members' values in the schema's
        // order must not be taken by position.
        let v = r#"["r-1","u-1","s-1","1.00","2026-11-18T11:00:00Z",null,null,null]"#;
        assert_eq!(decode("u-1", v), Err(Reject::Schema));
        for v in [
            "[]",
            r#""receipt""#,
            "null",
            "5",
            "true",
            " [1,{\"a\":[]}] ",
        ] {
            assert_eq!(decode("u-1", v), Err(Reject::Schema), "{v}");
        }
    }

    #[test]
    fn refund_of_is_an_id_wherever_it_appears() {
        for of in ["5", "null", "\"\"", "\"s\\u0001\"", "[\"r-0\"]"] {
            let purchase = OK.replace("}", &format!(r#","refund_of":{of}}}"#));
            assert_eq!(decode("u-1", &purchase), Err(Reject::Schema), "{purchase}");
            let typed = OK.replace("}", &format!(r#","type":"purchase","refund_of":{of}}}"#));
            assert_eq!(decode("u-1", &typed), Err(Reject::Schema), "{typed}");
            let refund = OK.replace("}", &format!(r#","type":"refund","refund_of":{of}}}"#));
            assert_eq!(decode("u-1", &refund), Err(Reject::Schema), "{refund}");
        }
        // A purchase's valid refund_of is ignored.
        let v = OK.replace("}", r#","refund_of":"r-0"}"#);
        assert_eq!(decode("u-1", &v).unwrap().kind, ReceiptKind::Purchase);
        // The id check comes before the amount's.
        let v = OK
            .replace("\"12.34\"", "\"0\"")
            .replace("}", r#","refund_of":""}"#);
        assert_eq!(decode("u-1", &v), Err(Reject::Schema));
    }

    #[test]
    fn the_whole_record_must_be_json_before_any_schema_check() {
        for v in [
            r#""receipt" x"#,
            "null x",
            "5 x",
            "[1,2] x",
            "[1,2",
            r#"{"receipt_id":"r-1","receipt_id":"r-1","user_id":"u-1" x"#,
            // A syntax error after a repeated member, in a value, in an ignored member.
            &OK.replace("}", r#","user_id":"u-1","x":[1,}"#),
            &OK.replace("}", r#","x":{"a":1,}}"#),
            &format!("{OK} x"),
            // Not JSON to serde_json::Value either: a lone surrogate, a number past f64,
            // in known and in ignored members.
            &OK.replace("}", r#","note":"\ud800"}"#),
            &OK.replace("}", r#","n":{"k":[1e400]}}"#),
            &OK.replace("}", r#","\udc00":1}"#),
            &OK.replace("\"12.34\"", "1e400"),
            &OK.replace("\"12.34\"", "\"\\ud800\""),
            &OK.replace("\"r-1\"", "\"\\ud800\""),
            &OK.replace("}", r#","currency":["\ud800"]}"#),
            &OK.replace("}", r#","receipt_id":"\ud800"}"#),
            "\u{feff}{}",
            "",
        ] {
            assert!(serde_json::from_str::<serde_json::Value>(v).is_err(), "{v}");
            assert_eq!(decode("u-1", v), Err(Reject::InvalidJson), "{v}");
        }
        // JSON, but a known member repeated (with the same value or not): schema.
        for v in [
            OK.replace("}", r#","receipt_id":"r-1"}"#),
            OK.replace("}", r#","amount":"1.00"}"#),
            OK.replace("}", r#","type":null,"type":null}"#),
            OK.replace("}", r#","amo\u0075nt":"12.34"}"#),
        ] {
            assert_eq!(decode("u-1", &v), Err(Reject::Schema), "{v}");
        }
        // Repeated unknown members, escapes in names and trailing whitespace are fine.
        let v = OK
            .replace("}", r#","pos":1,"pos":2}"#)
            .replace("\"store_id\"", "\"store\\u005fid\"");
        assert_eq!(
            decode("u-1", &format!(" {v} \n\t")).unwrap().store_id,
            "s-1"
        );
        let v = OK.replace("\"s-1\"", "\"\\ud83d\\ude00\"");
        assert_eq!(decode("u-1", &v).unwrap().store_id, "\u{1f600}");
    }
}

//! Bytes <-> domain: receipt decoding (with its rejection reasons) and the JSON of
//! projections and level-up events. Agrees with `schemas/` (checked by tests/schemas.rs).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::domain::money::{format_minor, parse_amount};
use crate::domain::{LevelUp, Receipt, ReceiptKind, Reject, Rules, Timestamp, UserState};

/// Records larger than this are rejected as `too_large` before any parsing.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// Bounds of every id string, in bytes.
const MAX_ID_BYTES: usize = 128;

/// The receipt as written on the wire. Every field is optional here so that a missing
/// field is a `schema` rejection, not a JSON syntax error; unknown fields are ignored.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    receipt_id: Option<&'a RawValue>,
    #[serde(borrow)]
    user_id: Option<&'a RawValue>,
    #[serde(borrow)]
    store_id: Option<&'a RawValue>,
    #[serde(borrow)]
    amount: Option<&'a RawValue>,
    #[serde(borrow)]
    issued_at: Option<&'a RawValue>,
    #[serde(borrow)]
    currency: Option<&'a RawValue>,
    #[serde(borrow, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    refund_of: Option<&'a RawValue>,
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
    let wire: Wire<'_> = serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            Reject::Schema
        } else {
            Reject::InvalidJson
        }
    })?;

    let receipt_id = id_field(wire.receipt_id)?;
    let user_id = id_field(wire.user_id)?;
    let store_id = id_field(wire.store_id)?;
    let issued_at = string_field(wire.issued_at)
        .and_then(|s| Timestamp::parse_rfc3339(&s))
        .ok_or(Reject::Schema)?;
    let kind = match opt_string_field(wire.kind)?.as_deref() {
        None | Some("purchase") => ReceiptKind::Purchase,
        Some("refund") => ReceiptKind::Refund {
            refund_of: id_field(wire.refund_of)?,
        },
        Some(_) => return Err(Reject::Schema),
    };
    let currency = opt_string_field(wire.currency)?;
    let amount = amount_field(wire.amount)?;
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

fn string_field(raw: Option<&RawValue>) -> Option<String> {
    serde_json::from_str::<String>(raw?.get()).ok()
}

fn opt_string_field(raw: Option<&RawValue>) -> Result<Option<String>, Reject> {
    match raw {
        None => Ok(None),
        Some(r) if r.get() == "null" => Ok(None),
        Some(r) => serde_json::from_str::<String>(r.get())
            .map(Some)
            .map_err(|_| Reject::Schema),
    }
}

fn id_field(raw: Option<&RawValue>) -> Result<String, Reject> {
    let s = string_field(raw).ok_or(Reject::Schema)?;
    if s.is_empty() || s.len() > MAX_ID_BYTES || s.chars().any(char::is_control) {
        return Err(Reject::Schema);
    }
    Ok(s)
}

fn amount_field(raw: Option<&RawValue>) -> Result<i64, Reject> {
    let raw = raw.ok_or(Reject::Schema)?.get();
    let text = match raw.as_bytes().first() {
        // A JSON string: its content must be a plain decimal.
        Some(b'"') => serde_json::from_str::<String>(raw).map_err(|_| Reject::Schema)?,
        // A JSON number: its literal text must be a plain decimal (no exponent, no sign).
        Some(b'-' | b'0'..=b'9') => raw.to_owned(),
        _ => return Err(Reject::Schema),
    };
    parse_amount(&text).ok_or(Reject::Amount)
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
}

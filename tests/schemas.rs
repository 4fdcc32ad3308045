//! The published JSON Schemas (schemas/) and the code agree: what the code emits
//! validates, and the receipt schema accepts and rejects what the decoder does.

mod support;

use mallquest::codec::{self, decode_receipt};
use mallquest::domain::Reject;
use mallquest::pipeline::MemorySink;
use serde_json::Value;
use support::golden;

fn schema(name: &str) -> jsonschema::Validator {
    let path = format!("{}/schemas/{name}", env!("CARGO_MANIFEST_DIR"));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    jsonschema::validator_for(&v).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn folded_golden() -> MemorySink {
    golden::fold_into_store(usize::MAX).0
}

#[test]
fn every_emitted_projection_and_level_up_matches_its_schema() {
    let sink = folded_golden();
    let projection = schema("projection.schema.json");
    let level_up = schema("level-up.schema.json");
    assert!(!sink.projections.is_empty() && !sink.level_ups.is_empty());
    for p in sink.projections.values() {
        let v: Value = serde_json::from_slice(&codec::encode_projection(p)).unwrap();
        assert!(projection.is_valid(&v), "{v}");
    }
    for l in &sink.level_ups {
        let v: Value = serde_json::from_slice(&codec::encode_level_up(l)).unwrap();
        assert!(level_up.is_valid(&v), "{v}");
    }
    // The projection schema is not vacuous.
    let mut bad: Value = serde_json::from_slice(&codec::encode_projection(
        sink.projections.values().next().unwrap(),
    ))
    .unwrap();
    bad["total_spent"] = Value::from(12.5);
    assert!(!projection.is_valid(&bad));
    bad.as_object_mut().unwrap().remove("total_spent");
    assert!(!projection.is_valid(&bad));
}

/// Whether the decoder's decision on this record is one the schema can express.
fn schema_expressible(reason: Option<Reject>, value: &Value) -> bool {
    match reason {
        // Size, the configured currency, the Kafka key and the ledger are outside a
        // document schema.
        Some(Reject::TooLarge | Reject::Currency | Reject::KeyMismatch) => false,
        // JSON Schema sees numbers by value: `1e3` is 1000 to it, while the decoder
        // rejects exponent notation (documented in the schema's description).
        Some(Reject::Amount) if value["amount"].is_number() => false,
        _ => true,
    }
}

#[test]
fn receipt_schema_accepts_exactly_what_the_decoder_accepts() {
    let receipt = schema("receipt.schema.json");
    let rules = golden::rules();
    let mut checked = 0;
    for r in golden::receipts() {
        let Ok(value) = serde_json::from_slice::<Value>(&r.value) else {
            // Not JSON at all: the decoder must say so too.
            let got = decode_receipt(r.key.as_deref(), Some(&r.value), &rules);
            assert!(
                matches!(got, Err(Reject::InvalidJson | Reject::TooLarge)),
                "offset {}",
                r.offset
            );
            continue;
        };
        // Decode with the record's own user_id as key, to leave the key out of it.
        let key = value["user_id"].as_str().map(|s| s.as_bytes().to_vec());
        let decided = decode_receipt(key.as_deref(), Some(&r.value), &rules).err();
        if !schema_expressible(decided, &value) {
            continue;
        }
        let decoder_ok = decided.is_none();
        assert_eq!(
            receipt.is_valid(&value),
            decoder_ok,
            "offset {}: decoder said {decided:?} for {value}",
            r.offset
        );
        checked += 1;
    }
    assert!(checked > 2500, "{checked}");
}

#[test]
fn the_game_vectors_outputs_and_receipts_match_their_schemas() {
    let config = golden::game::config();
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(mallquest::store::Store::open(dir.path()).unwrap());
    let mut processor = mallquest::pipeline::Processor::new(store, config.rules.clone());
    let mut sink = MemorySink::default();
    for r in golden::game::receipts() {
        golden::feed(&mut processor, &r);
    }
    processor.commit(&mut sink).unwrap();
    let projection = schema("projection.schema.json");
    for p in sink.projections.values() {
        let v: Value = serde_json::from_slice(&codec::encode_projection(p)).unwrap();
        assert!(projection.is_valid(&v), "{v}");
    }
    let events = [
        ("level_up", schema("level-up.schema.json")),
        ("mission_completed", schema("mission-completed.schema.json")),
        ("mission_revoked", schema("mission-revoked.schema.json")),
        ("badge_earned", schema("badge-earned.schema.json")),
    ];
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    for e in &sink.events {
        let v: Value = serde_json::from_slice(&codec::encode_event(e)).unwrap();
        let (kind, s) = events
            .iter()
            .find(|(k, _)| v["type"] == *k)
            .unwrap_or_else(|| panic!("unknown event {v}"));
        assert!(s.is_valid(&v), "{v}");
        // No event validates against another type's schema.
        assert_eq!(events.iter().filter(|(_, s)| s.is_valid(&v)).count(), 1);
        *seen.entry(kind).or_default() += 1;
    }
    assert_eq!(seen.len(), 4, "every event type was emitted: {seen:?}");
    // The receipt schema and the decoder agree on every game receipt.
    let receipt = schema("receipt.schema.json");
    for r in golden::game::receipts() {
        let value: Value = serde_json::from_slice(&r.value).unwrap();
        let key = value["user_id"].as_str().map(|s| s.as_bytes().to_vec());
        let decided = decode_receipt(key.as_deref(), Some(&r.value), &config.rules).err();
        if schema_expressible(decided, &value) {
            assert_eq!(
                receipt.is_valid(&value),
                decided.is_none(),
                "offset {}: decoder said {decided:?} for {value}",
                r.offset
            );
        }
    }
}

#[test]
fn receipt_schema_agrees_on_hand_written_edge_cases() {
    let receipt = schema("receipt.schema.json");
    let rules = mallquest::domain::Rules::default();
    let base = r#"{"receipt_id":"r-1","user_id":"u-1","store_id":"s-1","amount":"1.00","issued_at":"2026-11-18T11:06:49Z"}"#;
    let cases = [
        (r#""amount":"1.00""#, r#""amount":"0.00""#),
        (r#""amount":"1.00""#, r#""amount":"1000000.01""#),
        (r#""amount":"1.00""#, r#""amount":12.5"#),
        (r#""amount":"1.00""#, r#""amount":"-1""#),
        (r#""amount":"1.00""#, r#""amount":true"#),
        (
            r#""issued_at":"2026-11-18T11:06:49Z""#,
            r#""issued_at":"2026-11-18T11:06:49+04:00""#,
        ),
        (r#""receipt_id":"r-1""#, r#""receipt_id":"""#),
        (r#""store_id":"s-1""#, r#""store_id":"s\u0007""#),
        ("}", r#","type":"refund"}"#),
        ("}", r#","type":"refund","refund_of":"r-0"}"#),
        ("}", r#","type":"gift"}"#),
        ("}", r#","extra":{"anything":[1,2,3]}}"#),
        // Redemptions: coins a positive integer, amount optional and possibly zero.
        ("}", r#","type":"redemption","coins":20}"#),
        ("}", r#","type":"redemption","coins":0}"#),
        ("}", r#","type":"redemption","coins":1.5}"#),
        ("}", r#","type":"redemption","coins":"20"}"#),
        ("}", r#","type":"redemption"}"#),
        (
            r#""amount":"1.00""#,
            r#""amount":"0.00","type":"redemption","coins":5"#,
        ),
        (r#","amount":"1.00""#, r#","type":"redemption","coins":5"#),
        (
            r#","amount":"1.00""#,
            r#","type":"redemption_reversal","refund_of":"x-1""#,
        ),
        (r#","amount":"1.00""#, r#","type":"redemption_reversal""#),
        (r#","amount":"1.00""#, ""),
    ];
    for (from, to) in cases {
        let text = base.replace(from, to);
        let value: Value = serde_json::from_str(&text).unwrap();
        let decoder_ok = decode_receipt(Some(b"u-1"), Some(text.as_bytes()), &rules).is_ok();
        assert_eq!(receipt.is_valid(&value), decoder_ok, "{text}");
    }
}

#[test]
fn the_time_vectors_outputs_match_their_schemas() {
    let config = mallquest::config::Config::parse(&golden::time::config_text("")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(mallquest::store::Store::open(dir.path()).unwrap());
    let mut processor = mallquest::pipeline::Processor::new(store, config.rules.clone());
    let mut sink = MemorySink::default();
    for r in golden::time::receipts() {
        golden::feed(&mut processor, &r);
    }
    processor.commit(&mut sink).unwrap();
    drop(processor);
    let projection = schema("projection.schema.json");
    let mut tiered = 0;
    for p in sink.projections.values() {
        let v: Value = serde_json::from_slice(&codec::encode_projection(p)).unwrap();
        assert!(projection.is_valid(&v), "{v}");
        tiered += usize::from(!v["tier"].is_null());
    }
    assert!(tiered > 0);
    let events = [
        ("coins_expired", schema("coins-expired.schema.json")),
        ("tier_changed", schema("tier-changed.schema.json")),
    ];
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    for e in &sink.events {
        let v: Value = serde_json::from_slice(&codec::encode_event(e)).unwrap();
        if let Some((kind, s)) = events.iter().find(|(k, _)| v["type"] == *k) {
            assert!(s.is_valid(&v), "{v}");
            *seen.entry(kind).or_default() += 1;
        }
        // No event validates against another type's schema.
        assert!(events
            .iter()
            .all(|(k, s)| v["type"] == *k || !s.is_valid(&v)));
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // Not vacuous: a figure that is no amount, an expiry with no coins.
    let mut bad: Value = serde_json::from_slice(&codec::encode_projection(
        sink.projections
            .values()
            .find(|p| p.tier.is_some())
            .unwrap(),
    ))
    .unwrap();
    bad["tier_figure"] = Value::from("12.5");
    assert!(!projection.is_valid(&bad));
}

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
    ];
    for (from, to) in cases {
        let text = base.replace(from, to);
        let value: Value = serde_json::from_str(&text).unwrap();
        let decoder_ok = decode_receipt(Some(b"u-1"), Some(text.as_bytes()), &rules).is_ok();
        assert_eq!(receipt.is_valid(&value), decoder_ok, "{text}");
    }
}

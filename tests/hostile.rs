//! A corpus of hand-written bad events (tests/hostile/corpus.jsonl): each goes to the DLQ
//! with the expected reason and its original bytes, and the processor keeps going.

use std::sync::Arc;

use base64::Engine as _;
use mallquest::domain::Rules;
use mallquest::pipeline::{MemorySink, Processor, Record};
use mallquest::store::Store;
use serde_json::Value;

struct Case {
    name: String,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    reason: String,
}

fn corpus() -> Vec<Case> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/hostile/corpus.jsonl"
    ))
    .unwrap();
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let raw = v["value"].as_str().unwrap();
            Case {
                name: v["name"].as_str().unwrap().to_owned(),
                key: v["key"].as_str().map(|k| k.as_bytes().to_vec()),
                value: if v["base64"] == true {
                    base64::engine::general_purpose::STANDARD
                        .decode(raw)
                        .unwrap()
                } else {
                    raw.as_bytes().to_vec()
                },
                reason: v["reason"].as_str().unwrap().to_owned(),
            }
        })
        .collect()
}

fn good(id: &str, user: &str, extra: &str) -> (Option<Vec<u8>>, Vec<u8>) {
    let v = format!(
        r#"{{"receipt_id":"{id}","user_id":"{user}","store_id":"s-1","amount":"{}","issued_at":"2026-11-18T11:00:00Z"{extra}}}"#,
        if extra.is_empty() { "10.00" } else { "1.00" }
    );
    (Some(user.as_bytes().to_vec()), v.into_bytes())
}

#[test]
fn every_hostile_event_goes_to_the_dlq_with_its_reason_and_the_processor_keeps_going() {
    let cases = corpus();
    assert!(cases.len() >= 30, "the corpus has {} cases", cases.len());
    let mut records = vec![
        good("h-good", "u-h", ""),
        good("other-1", "u-other", ""),
        good(
            "h-refund-ok",
            "u-h",
            r#","type":"refund","refund_of":"h-good""#,
        ),
    ];
    let setup = records.len();
    records.extend(cases.iter().map(|c| (c.key.clone(), c.value.clone())));
    records.push(good("h-final", "u-h", ""));

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let mut p = Processor::new(Arc::clone(&store), Rules::default());
    let mut sink = MemorySink::default();
    for (o, (k, v)) in records.iter().enumerate() {
        p.process(Record {
            topic: "receipts",
            partition: 0,
            offset: o as i64,
            key: k.as_deref(),
            payload: Some(v),
            timestamp_ms: None,
        })
        .unwrap();
    }
    p.commit(&mut sink).unwrap();

    assert_eq!(
        sink.dead_letters.len(),
        cases.len(),
        "only the corpus is rejected"
    );
    for (i, c) in cases.iter().enumerate() {
        let d = &sink.dead_letters[i];
        assert_eq!(d.offset, (setup + i) as i64, "{}", c.name);
        assert_eq!(d.reason.as_str(), c.reason, "{}", c.name);
        assert_eq!(d.key, c.key, "{}: original key", c.name);
        assert_eq!(
            d.payload.as_deref(),
            Some(&c.value[..]),
            "{}: original bytes",
            c.name
        );
    }
    // The processor kept going: the last good receipt after the corpus was applied.
    let u = store.find_user("u-h").unwrap().unwrap();
    assert_eq!(u.receipt_count, 2);
    assert_eq!(u.refund_count, 1);
    assert_eq!(u.total_spent, 1000 - 100 + 1000);
    assert_eq!(
        store.offset("receipts", 0).unwrap(),
        Some(records.len() as i64)
    );
}

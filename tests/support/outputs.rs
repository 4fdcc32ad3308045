//! What the output topics say, for comparison with the reference fold.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::broker::Read;

/// Level-ups read from the events topic, each receipt's event counted once (outputs are
/// at least once): per user (total bonus coins, highest level reached).
pub fn level_ups(events: &[Read]) -> BTreeMap<String, (i64, u64)> {
    let mut seen = BTreeSet::new();
    let mut ups = BTreeMap::<String, (i64, u64)>::new();
    for e in events {
        let v: Value = serde_json::from_slice(e.value.as_deref().unwrap()).unwrap();
        assert_eq!(v["type"], "level_up", "{v}");
        let receipt = v["receipt_id"].as_str().unwrap().to_owned();
        let user = v["user_id"].as_str().unwrap().to_owned();
        let bonus = v["bonus_coins"].as_i64().unwrap();
        let to = v["to_level"].as_u64().unwrap();
        if seen.insert(receipt) {
            let u = ups.entry(user).or_default();
            u.0 += bonus;
            u.1 = u.1.max(to);
        }
    }
    ups
}

/// Every user's projection JSON in a store (the process using it must be stopped).
pub fn stored_projections(store: &std::path::Path) -> BTreeMap<String, Value> {
    let store = mallquest::store::Store::open(store).unwrap();
    store
        .users()
        .map(|u| {
            let u = u.unwrap();
            (
                u.user_id.clone(),
                serde_json::to_value(mallquest::codec::ProjectionJson::from_state(&u)).unwrap(),
            )
        })
        .collect()
}

/// (source partition, source offset) -> reason of every record on a DLQ topic.
pub fn dlq_reasons(dlq: &[Read]) -> BTreeMap<(i32, i64), String> {
    use mallquest::codec::{HEADER_REASON, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION};
    dlq.iter()
        .map(|d| {
            let h = &d.headers;
            (
                (
                    h[HEADER_SOURCE_PARTITION].parse().unwrap(),
                    h[HEADER_SOURCE_OFFSET].parse().unwrap(),
                ),
                h[HEADER_REASON].clone(),
            )
        })
        .collect()
}

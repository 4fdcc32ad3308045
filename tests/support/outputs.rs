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

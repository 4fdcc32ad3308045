//! Streams for broker tests: simulated receipts in, projections and the reference out.

use std::collections::BTreeMap;

use mallquest::sim::Simulator;
use serde_json::Value;

use super::broker::Read;
use super::reference;

/// Records to produce: (key, value).
pub type Records = Vec<(Option<Vec<u8>>, Vec<u8>)>;

/// The simulator's next `n` events as records.
pub fn take(sim: &mut Simulator, n: usize) -> Records {
    (0..n)
        .map(|_| {
            let e = sim.next_event();
            (Some(e.key.into_bytes()), e.payload)
        })
        .collect()
}

/// The last projection per key of a projections topic; each key must be its user_id.
pub fn last_per_key(reads: &[Read]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for r in reads {
        let key = String::from_utf8(r.key.clone().unwrap()).unwrap();
        let v: Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        assert_eq!(
            v["user_id"],
            key.as_str(),
            "projection key must be its user_id"
        );
        out.insert(key, v);
    }
    out
}

/// The reference fold (the contract's default rules, 90-day window) of records read back
/// from the receipts topic.
pub fn reference_of(receipts: &[Read]) -> reference::Expected {
    let records: Vec<_> = receipts
        .iter()
        .map(|r| {
            (
                r.partition,
                r.offset,
                r.key.clone(),
                r.value.clone().unwrap_or_default(),
            )
        })
        .collect();
    reference::fold_with(
        reference::RefRules::contract_defaults(),
        &records,
        reference::DEFAULT_WINDOW_DAYS,
    )
}

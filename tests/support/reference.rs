//! A naive reference fold, written separately from `mallquest::domain::fold`: plain maps,
//! recomputed from the rules' text. The processor must agree with it on any stream.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use mallquest::codec::decode_receipt;
use mallquest::domain::{ReceiptKind, Rules, Timestamp};
use serde_json::{json, Value};

#[derive(Default, Clone)]
struct User {
    coins: i64,
    xp: i64,
    level: u64,
    spent: i64,
    receipts: u64,
    refunds: u64,
    stores: BTreeSet<String>,
    first: Option<Timestamp>,
    last: Option<Timestamp>,
    version: u64,
    source: (i32, i64),
}

#[derive(Clone)]
struct Seen {
    kind: ReceiptKind,
    store: String,
    amount: i64,
    at: Timestamp,
    coins: i64,
    xp: i64,
    refunded: i64,
}

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
    fold_windowed(rules, records, 90)
}

/// Folds records in the order given. A receipt more than `window_days` before the newest
/// receipt applied in its partition is `too_old`; ledger entries that old are forgotten.
pub fn fold_windowed(rules: &Rules, records: &[InputRecord], window_days: i64) -> Expected {
    let mut newest: HashMap<i32, i64> = HashMap::new();
    let mut users: HashMap<String, User> = HashMap::new();
    let mut ledger: HashMap<(String, String), Seen> = HashMap::new();
    let mut out = Expected::default();
    for (p, o, key, value) in records {
        let r = match decode_receipt(key.as_deref(), Some(value), rules) {
            Ok(r) => r,
            Err(reason) => {
                out.dlq.insert((*p, *o), reason.as_str().to_owned());
                continue;
            }
        };
        let oldest = newest.get(p).map(|n| n - window_days * 86_400);
        if oldest.is_some_and(|oldest| r.issued_at.secs < oldest) {
            out.dlq.insert((*p, *o), "too_old".into());
            continue;
        }
        let remembered = |s: &&Seen| oldest.is_none_or(|oldest| s.at.secs >= oldest);
        let lkey = (r.user_id.clone(), r.receipt_id.clone());
        if let Some(s) = ledger.get(&lkey).filter(remembered) {
            let same = s.kind == r.kind
                && s.store == r.store_id
                && s.amount == r.amount
                && s.at == r.issued_at;
            if !same {
                out.dlq.insert((*p, *o), "conflicting_duplicate".into());
            }
            continue;
        }
        let mut u = users.get(&r.user_id).cloned().unwrap_or(User {
            level: 1,
            ..User::default()
        });
        match &r.kind {
            ReceiptKind::Purchase => {
                let pct = rules
                    .store_multipliers
                    .get(&r.store_id)
                    .copied()
                    .unwrap_or(100);
                let coins =
                    (r.amount as i128 * rules.coins_per_unit as i128 * pct as i128 / 10_000) as i64;
                let xp = rules.xp_per_receipt + (r.amount / 100) * rules.xp_per_unit;
                u.xp += xp;
                let mut level = 1 + ((u.xp / rules.level_xp_base) as f64).sqrt().floor() as u64;
                // Correct any float rounding of the square root.
                let steps = (u.xp / rules.level_xp_base) as u64;
                while (level - 1) * (level - 1) > steps {
                    level -= 1;
                }
                while level * level <= steps {
                    level += 1;
                }
                let level = level.min(rules.max_level as u64).max(u.level);
                let bonus = (level - u.level) as i64 * rules.level_up_bonus_coins;
                if level > u.level {
                    let e = out.level_ups.entry(r.user_id.clone()).or_default();
                    e.0 += bonus;
                    e.1 = e.1.max(level);
                }
                u.level = level;
                u.coins += coins + bonus;
                u.spent += r.amount;
                u.receipts += 1;
                u.stores.insert(r.store_id.clone());
                u.first = Some(u.first.map_or(r.issued_at, |t| t.min(r.issued_at)));
                u.last = Some(u.last.map_or(r.issued_at, |t| t.max(r.issued_at)));
                ledger.insert(
                    lkey,
                    Seen {
                        kind: r.kind.clone(),
                        store: r.store_id.clone(),
                        amount: r.amount,
                        at: r.issued_at,
                        coins,
                        xp,
                        refunded: 0,
                    },
                );
            }
            ReceiptKind::Refund { refund_of } => {
                let okey = (r.user_id.clone(), refund_of.clone());
                let Some(orig) = ledger
                    .get(&okey)
                    .filter(remembered)
                    .filter(|s| s.kind == ReceiptKind::Purchase)
                    .cloned()
                else {
                    out.dlq.insert((*p, *o), "unknown_original".into());
                    continue;
                };
                let r1 = orig.refunded + r.amount;
                if r1 > orig.amount {
                    out.dlq.insert((*p, *o), "refund_exceeds_original".into());
                    continue;
                }
                let part = |earned: i64, refunded: i64| {
                    (earned as i128 * refunded as i128 / orig.amount as i128) as i64
                };
                u.coins -= part(orig.coins, r1) - part(orig.coins, orig.refunded);
                u.xp -= part(orig.xp, r1) - part(orig.xp, orig.refunded);
                u.spent -= r.amount;
                u.refunds += 1;
                ledger.get_mut(&okey).unwrap().refunded = r1;
                ledger.insert(
                    lkey,
                    Seen {
                        kind: r.kind.clone(),
                        store: r.store_id.clone(),
                        amount: r.amount,
                        at: r.issued_at,
                        coins: 0,
                        xp: 0,
                        refunded: 0,
                    },
                );
            }
        }
        u.version += 1;
        u.source = (*p, *o);
        users.insert(r.user_id.clone(), u);
        let n = newest.entry(*p).or_insert(r.issued_at.secs);
        *n = (*n).max(r.issued_at.secs);
    }
    for (id, u) in users {
        let ts = |t: Option<Timestamp>| t.map(|t| t.to_rfc3339());
        out.projections.insert(
            id.clone(),
            json!({
                "user_id": id,
                "coins": u.coins,
                "xp": u.xp,
                "level": u.level,
                "total_spent": format!("{}.{:02}", u.spent / 100, u.spent % 100),
                "receipt_count": u.receipts,
                "refund_count": u.refunds,
                "stores_visited": u.stores.len(),
                "first_receipt_at": ts(u.first),
                "last_receipt_at": ts(u.last),
                "version": u.version,
                "source": {"partition": u.source.0, "offset": u.source.1},
            }),
        );
    }
    out
}

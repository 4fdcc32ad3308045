//! The fold: one receipt applied to one user's state.

use serde::{Deserialize, Serialize};

use super::{Minor, Reject, Rules, Timestamp};

/// A decoded, validated receipt event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Unique per user; the key of the ledger.
    pub receipt_id: String,
    /// The shopper; equals the Kafka key.
    pub user_id: String,
    /// Where the sale happened; picks the coin multiplier.
    pub store_id: String,
    /// The amount in minor units, in `1..=MAX_AMOUNT`.
    pub amount: Minor,
    /// When the POS issued it.
    pub issued_at: Timestamp,
    /// Purchase or refund.
    pub kind: ReceiptKind,
}

/// What a receipt does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReceiptKind {
    /// A sale: earns coins and XP.
    Purchase,
    /// Money back for (part of) an earlier purchase of the same user.
    Refund {
        /// The purchase's receipt_id.
        refund_of: String,
    },
}

/// Where the last applied event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// Kafka partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
}

/// One user's projection, as stored. The published JSON is derived from it by the codec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserState {
    /// The shopper.
    pub user_id: String,
    /// Coins held: purchases, level-up bonuses, less refunds.
    pub coins: i64,
    /// Experience points.
    pub xp: i64,
    /// Current level; never goes down.
    pub level: u32,
    /// Purchases less refunds, in minor units.
    pub total_spent: Minor,
    /// Purchases applied.
    pub receipt_count: u64,
    /// Refunds applied.
    pub refund_count: u64,
    /// Distinct store_ids of purchases, sorted; its length is `stores_visited`.
    pub stores: Vec<String>,
    /// Earliest purchase issued_at.
    pub first_receipt_at: Option<Timestamp>,
    /// Latest purchase issued_at.
    pub last_receipt_at: Option<Timestamp>,
    /// Applied purchases and refunds.
    pub version: u64,
    /// The last applied event.
    pub source: Option<Source>,
}

impl UserState {
    /// A user before any receipt.
    pub fn new(user_id: &str) -> Self {
        Self {
            user_id: user_id.to_owned(),
            coins: 0,
            xp: 0,
            level: 1,
            total_spent: 0,
            receipt_count: 0,
            refund_count: 0,
            stores: Vec::new(),
            first_receipt_at: None,
            last_receipt_at: None,
            version: 0,
            source: None,
        }
    }
}

/// What the ledger remembers of one receipt: enough to recognise a duplicate
/// and to reverse a purchase's earnings proportionally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Purchase or refund (with its original).
    pub kind: ReceiptKind,
    /// The receipt's store.
    pub store_id: String,
    /// The receipt's amount.
    pub amount: Minor,
    /// The receipt's instant.
    pub issued_at: Timestamp,
    /// Coins the purchase earned, level bonus excluded (0 for refunds).
    pub earned_coins: i64,
    /// XP the purchase earned (0 for refunds).
    pub earned_xp: i64,
    /// Amount refunded so far (purchases only).
    pub refunded: Minor,
}

impl LedgerEntry {
    fn same_receipt(&self, r: &Receipt) -> bool {
        self.kind == r.kind
            && self.store_id == r.store_id
            && self.amount == r.amount
            && self.issued_at == r.issued_at
    }
}

/// A level-up, published to the events topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelUp {
    /// The shopper.
    pub user_id: String,
    /// Level before the receipt.
    pub from_level: u32,
    /// Level after the receipt.
    pub to_level: u32,
    /// Coins granted: levels gained times the bonus.
    pub bonus_coins: i64,
    /// The receipt that raised the level.
    pub receipt_id: String,
    /// The receipt's issued_at.
    pub at: Timestamp,
}

/// What applying a receipt did.
#[allow(clippy::large_enum_variant)] // built once per receipt and consumed at once
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The same receipt was applied before: nothing changed.
    Duplicate,
    /// The state changed; these ledger writes go with it.
    Applied {
        /// The receipt's own ledger entry.
        entry: LedgerEntry,
        /// For a refund: the original purchase with its refunded total raised.
        original: Option<LedgerEntry>,
        /// Set when the level rose.
        level_up: Option<LevelUp>,
        /// Coins added (purchase and bonus) or, negative, taken back (refund).
        coins_delta: i64,
    },
}

/// Folds one receipt into `state`.
///
/// `existing` is the ledger entry under the receipt's own id, `original` the one under
/// its `refund_of` (both looked up by the caller for this user). On `Err`, `state` is
/// unchanged: every figure is computed first, with checked arithmetic, then assigned.
pub fn apply(
    state: &mut UserState,
    existing: Option<&LedgerEntry>,
    original: Option<&LedgerEntry>,
    receipt: &Receipt,
    source: Source,
    rules: &Rules,
) -> Result<Effect, Reject> {
    if let Some(seen) = existing {
        return if seen.same_receipt(receipt) {
            Ok(Effect::Duplicate)
        } else {
            Err(Reject::ConflictingDuplicate)
        };
    }
    match &receipt.kind {
        ReceiptKind::Purchase => purchase(state, receipt, source, rules),
        ReceiptKind::Refund { .. } => refund(state, original, receipt, source),
    }
}

fn purchase(
    state: &mut UserState,
    r: &Receipt,
    source: Source,
    rules: &Rules,
) -> Result<Effect, Reject> {
    let of = |v: Option<i128>| v.ok_or(Reject::Overflow);
    // i128 for the product: amount (<= 1e8) x rate x percent cannot overflow it.
    let earned_coins = of(i128::from(r.amount)
        .checked_mul(i128::from(rules.coins_per_unit))
        .and_then(|v| v.checked_mul(i128::from(rules.multiplier_pct(&r.store_id)))))?
        / 10_000;
    let earned_coins = i64::try_from(earned_coins).map_err(|_| Reject::Overflow)?;
    let earned_xp = (r.amount / 100)
        .checked_mul(rules.xp_per_unit)
        .and_then(|v| v.checked_add(rules.xp_per_receipt))
        .ok_or(Reject::Overflow)?;

    let xp = state.xp.checked_add(earned_xp).ok_or(Reject::Overflow)?;
    let level = rules.level_for(xp).max(state.level);
    let gained = level - state.level;
    let bonus = i64::from(gained)
        .checked_mul(rules.level_up_bonus_coins)
        .ok_or(Reject::Overflow)?;
    let coins_delta = earned_coins.checked_add(bonus).ok_or(Reject::Overflow)?;
    let coins = state
        .coins
        .checked_add(coins_delta)
        .ok_or(Reject::Overflow)?;
    let total_spent = state
        .total_spent
        .checked_add(r.amount)
        .ok_or(Reject::Overflow)?;

    let level_up = (gained > 0).then(|| LevelUp {
        user_id: state.user_id.clone(),
        from_level: state.level,
        to_level: level,
        bonus_coins: bonus,
        receipt_id: r.receipt_id.clone(),
        at: r.issued_at,
    });
    state.coins = coins;
    state.xp = xp;
    state.level = level;
    state.total_spent = total_spent;
    state.receipt_count += 1;
    if let Err(at) = state.stores.binary_search(&r.store_id) {
        state.stores.insert(at, r.store_id.clone());
    }
    state.first_receipt_at = Some(
        state
            .first_receipt_at
            .map_or(r.issued_at, |t| t.min(r.issued_at)),
    );
    state.last_receipt_at = Some(
        state
            .last_receipt_at
            .map_or(r.issued_at, |t| t.max(r.issued_at)),
    );
    state.version += 1;
    state.source = Some(source);
    Ok(Effect::Applied {
        entry: LedgerEntry {
            kind: ReceiptKind::Purchase,
            store_id: r.store_id.clone(),
            amount: r.amount,
            issued_at: r.issued_at,
            earned_coins,
            earned_xp,
            refunded: 0,
        },
        original: None,
        level_up,
        coins_delta,
    })
}

fn refund(
    state: &mut UserState,
    original: Option<&LedgerEntry>,
    r: &Receipt,
    source: Source,
) -> Result<Effect, Reject> {
    let orig = match original {
        Some(e) if e.kind == ReceiptKind::Purchase => e,
        _ => return Err(Reject::UnknownOriginal),
    };
    let r0 = orig.refunded;
    let r1 = r0.checked_add(r.amount).ok_or(Reject::Overflow)?;
    if r1 > orig.amount {
        return Err(Reject::RefundExceedsOriginal);
    }
    // floor(earned * R1 / amount) - floor(earned * R0 / amount): partial refunds add up
    // to exactly what the purchase earned, whatever their order and rounding.
    let share = |earned: i64, refunded: Minor| -> i64 {
        let v = i128::from(earned) * i128::from(refunded) / i128::from(orig.amount);
        v as i64 // <= earned, so it fits
    };
    let coins_back = share(orig.earned_coins, r1) - share(orig.earned_coins, r0);
    let xp_back = share(orig.earned_xp, r1) - share(orig.earned_xp, r0);
    let coins = state
        .coins
        .checked_sub(coins_back)
        .ok_or(Reject::Overflow)?;
    let xp = state.xp.checked_sub(xp_back).ok_or(Reject::Overflow)?;
    let total_spent = state
        .total_spent
        .checked_sub(r.amount)
        .ok_or(Reject::Overflow)?;

    state.coins = coins;
    state.xp = xp;
    state.total_spent = total_spent;
    state.refund_count += 1;
    state.version += 1;
    state.source = Some(source);
    let mut updated = orig.clone();
    updated.refunded = r1;
    Ok(Effect::Applied {
        entry: LedgerEntry {
            kind: r.kind.clone(),
            store_id: r.store_id.clone(),
            amount: r.amount,
            issued_at: r.issued_at,
            earned_coins: 0,
            earned_xp: 0,
            refunded: 0,
        },
        original: Some(updated),
        level_up: None,
        coins_delta: -coins_back,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    fn purchase_of(id: &str, store: &str, amount: Minor) -> Receipt {
        Receipt {
            receipt_id: id.into(),
            user_id: "u-1".into(),
            store_id: store.into(),
            amount,
            issued_at: ts("2026-11-18T10:00:00Z"),
            kind: ReceiptKind::Purchase,
        }
    }

    fn refund_of(id: &str, of: &str, amount: Minor) -> Receipt {
        Receipt {
            kind: ReceiptKind::Refund {
                refund_of: of.into(),
            },
            ..purchase_of(id, "s-1", amount)
        }
    }

    const SRC: Source = Source {
        partition: 0,
        offset: 7,
    };

    fn applied(e: Effect) -> (LedgerEntry, Option<LedgerEntry>, Option<LevelUp>) {
        match e {
            Effect::Applied {
                entry,
                original,
                level_up,
                ..
            } => (entry, original, level_up),
            Effect::Duplicate => panic!("expected an applied effect"),
        }
    }

    #[test]
    fn purchase_earns_coins_xp_and_counts() {
        let rules = Rules::default();
        let mut s = UserState::new("u-1");
        let (entry, _, up) = applied(
            apply(
                &mut s,
                None,
                None,
                &purchase_of("r-1", "s-1", 1234),
                SRC,
                &rules,
            )
            .unwrap(),
        );
        assert_eq!(entry.earned_coins, 12);
        assert_eq!(entry.earned_xp, 10 + 12);
        assert_eq!((s.coins, s.xp, s.level), (12, 22, 1));
        assert_eq!((s.total_spent, s.receipt_count, s.version), (1234, 1, 1));
        assert_eq!(s.stores, vec!["s-1".to_string()]);
        assert_eq!(s.source, Some(SRC));
        assert!(up.is_none());
    }

    #[test]
    fn store_multiplier_scales_coins_and_floors() {
        let mut rules = Rules::default();
        rules.store_multipliers.insert("s-07".into(), 200);
        rules.store_multipliers.insert("s-13".into(), 150);
        let mut s = UserState::new("u-1");
        apply(
            &mut s,
            None,
            None,
            &purchase_of("r-1", "s-07", 85),
            SRC,
            &rules,
        )
        .unwrap();
        assert_eq!(s.coins, 1, "floor(85 * 200 / 10000) = 1");
        apply(
            &mut s,
            None,
            None,
            &purchase_of("r-2", "s-13", 199),
            SRC,
            &rules,
        )
        .unwrap();
        assert_eq!(s.coins, 1 + 2, "floor(199 * 150 / 10000) = 2");
    }

    #[test]
    fn level_up_grants_bonus_per_level_and_reports_it() {
        let rules = Rules::default();
        let mut s = UserState::new("u-1");
        // 480.61 -> xp 10 + 480 = 490 -> isqrt(4) = 2 -> level 3: two levels gained.
        let (_, _, up) = applied(
            apply(
                &mut s,
                None,
                None,
                &purchase_of("r-1", "s-1", 48061),
                SRC,
                &rules,
            )
            .unwrap(),
        );
        let up = up.unwrap();
        assert_eq!((up.from_level, up.to_level, up.bonus_coins), (1, 3, 100));
        assert_eq!(s.coins, 480 + 100);
        assert_eq!(s.level, 3);
    }

    #[test]
    fn refunds_reverse_earnings_proportionally_and_keep_level() {
        let rules = Rules::default();
        let mut s = UserState::new("u-1");
        let (orig, _, _) = applied(
            apply(
                &mut s,
                None,
                None,
                &purchase_of("r-1", "s-1", 48061),
                SRC,
                &rules,
            )
            .unwrap(),
        );
        let (_, updated, _) = applied(
            apply(
                &mut s,
                None,
                Some(&orig),
                &refund_of("f-1", "r-1", 24000),
                SRC,
                &rules,
            )
            .unwrap(),
        );
        let updated = updated.unwrap();
        assert_eq!(updated.refunded, 24000);
        assert_eq!(s.coins, 580 - 480 * 24000 / 48061);
        assert_eq!(s.level, 3, "levels never go down");
        let (_, _, _) = applied(
            apply(
                &mut s,
                None,
                Some(&updated),
                &refund_of("f-2", "r-1", 24061),
                SRC,
                &rules,
            )
            .unwrap(),
        );
        assert_eq!(s.coins, 100, "a full refund leaves only the level bonus");
        assert_eq!(s.xp, 0);
        assert_eq!((s.total_spent, s.refund_count, s.version), (0, 2, 3));
    }

    #[test]
    fn refund_beyond_original_is_rejected_and_changes_nothing() {
        let rules = Rules::default();
        let mut s = UserState::new("u-1");
        let (orig, _, _) = applied(
            apply(
                &mut s,
                None,
                None,
                &purchase_of("r-1", "s-1", 1000),
                SRC,
                &rules,
            )
            .unwrap(),
        );
        let before = s.clone();
        let err = apply(
            &mut s,
            None,
            Some(&orig),
            &refund_of("f-1", "r-1", 1001),
            SRC,
            &rules,
        );
        assert_eq!(err, Err(Reject::RefundExceedsOriginal));
        assert_eq!(s, before);
    }

    #[test]
    fn refund_of_unknown_or_refund_receipt_is_unknown_original() {
        let rules = Rules::default();
        let mut s = UserState::new("u-1");
        let r = refund_of("f-1", "r-x", 100);
        assert_eq!(
            apply(&mut s, None, None, &r, SRC, &rules),
            Err(Reject::UnknownOriginal)
        );
        let refund_entry = LedgerEntry {
            kind: ReceiptKind::Refund {
                refund_of: "r-0".into(),
            },
            store_id: "s-1".into(),
            amount: 500,
            issued_at: ts("2026-11-18T10:00:00Z"),
            earned_coins: 0,
            earned_xp: 0,
            refunded: 0,
        };
        assert_eq!(
            apply(&mut s, None, Some(&refund_entry), &r, SRC, &rules),
            Err(Reject::UnknownOriginal)
        );
    }

    #[test]
    fn exact_duplicate_changes_nothing_and_a_different_one_conflicts() {
        let rules = Rules::default();
        let mut s = UserState::new("u-1");
        let p = purchase_of("r-1", "s-1", 1000);
        let (entry, _, _) = applied(apply(&mut s, None, None, &p, SRC, &rules).unwrap());
        let before = s.clone();
        assert_eq!(
            apply(&mut s, Some(&entry), None, &p, SRC, &rules),
            Ok(Effect::Duplicate)
        );
        let changed = purchase_of("r-1", "s-1", 1001);
        assert_eq!(
            apply(&mut s, Some(&entry), None, &changed, SRC, &rules),
            Err(Reject::ConflictingDuplicate)
        );
        assert_eq!(s, before);
    }

    #[test]
    fn first_and_last_receipt_at_are_min_and_max() {
        let rules = Rules::default();
        let mut s = UserState::new("u-1");
        let mut late = purchase_of("r-1", "s-1", 100);
        late.issued_at = ts("2026-11-18T12:00:00Z");
        let mut early = purchase_of("r-2", "s-2", 100);
        early.issued_at = ts("2026-11-18T09:00:00Z");
        apply(&mut s, None, None, &late, SRC, &rules).unwrap();
        apply(&mut s, None, None, &early, SRC, &rules).unwrap();
        assert_eq!(s.first_receipt_at, Some(early.issued_at));
        assert_eq!(s.last_receipt_at, Some(late.issued_at));
        assert_eq!(s.stores.len(), 2);
    }

    #[test]
    fn overflowing_totals_are_rejected_not_wrapped() {
        let rules = Rules::default();
        let mut s = UserState::new("u-1");
        s.total_spent = i64::MAX - 10;
        let before = s.clone();
        assert_eq!(
            apply(
                &mut s,
                None,
                None,
                &purchase_of("r-1", "s-1", 1000),
                SRC,
                &rules
            ),
            Err(Reject::Overflow)
        );
        assert_eq!(s, before);
    }
}

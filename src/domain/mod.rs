//! The game's rules, pure: no clock, no I/O, no async, no storage engine.
//!
//! A receipt is decoded elsewhere ([`crate::codec`]) into a [`Receipt`]; [`fold::apply`]
//! then folds it into one user's [`UserState`], given the ledger entries it needs.

pub mod fold;
pub mod game;
pub mod money;
pub mod rules;
pub mod time;
pub mod timers;

pub use fold::{
    apply, apply_discarding, Attribution, BadgeEarned, Effect, Event, LedgerEntry, LevelUp,
    MissionEvent, MissionInstance, PeriodScore, Receipt, ReceiptKind, Source, UserState,
};
pub use game::{Calendar, Game, Period};
pub use money::Minor;
pub use rules::Rules;
pub use time::Timestamp;
pub use timers::{CoinsExpired, Expiry, Figure, TierChanged, TierHeld, TierReason, Tiers};

/// Why a receipt was rejected; the string form is the DLQ `reason` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reject {
    /// The record is larger than 64 KiB.
    TooLarge,
    /// Not UTF-8, or not JSON.
    InvalidJson,
    /// JSON, but not a receipt: a field missing, of the wrong type or out of its bounds.
    Schema,
    /// The amount is not a plain decimal with at most 2 decimals in (0, 1000000.00].
    Amount,
    /// The currency is not the configured one.
    Currency,
    /// The Kafka key is not the receipt's user_id.
    KeyMismatch,
    /// A refund names a receipt that is not a purchase of this user in the ledger.
    UnknownOriginal,
    /// A refund would take the refunded total past the original amount.
    RefundExceedsOriginal,
    /// A receipt_id seen before for this user, with different content.
    ConflictingDuplicate,
    /// The user's totals would overflow a 64-bit integer.
    Overflow,
    /// A redemption asks for more coins than the user holds.
    InsufficientCoins,
    /// issued_at is older than the dedup window (measured back from the partition's
    /// highest applied issued_at): it can no longer be checked for duplicates.
    TooOld,
}

impl Reject {
    /// Every reason, in a stable order.
    pub const ALL: [Reject; 12] = [
        Reject::TooLarge,
        Reject::InvalidJson,
        Reject::Schema,
        Reject::Amount,
        Reject::Currency,
        Reject::KeyMismatch,
        Reject::UnknownOriginal,
        Reject::RefundExceedsOriginal,
        Reject::ConflictingDuplicate,
        Reject::Overflow,
        Reject::TooOld,
        Reject::InsufficientCoins,
    ];

    /// The reason as written in the DLQ header and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::TooLarge => "too_large",
            Reject::InvalidJson => "invalid_json",
            Reject::Schema => "schema",
            Reject::Amount => "amount",
            Reject::Currency => "currency",
            Reject::KeyMismatch => "key_mismatch",
            Reject::UnknownOriginal => "unknown_original",
            Reject::RefundExceedsOriginal => "refund_exceeds_original",
            Reject::ConflictingDuplicate => "conflicting_duplicate",
            Reject::Overflow => "overflow",
            Reject::TooOld => "too_old",
            Reject::InsufficientCoins => "insufficient_coins",
        }
    }

    /// Parses the string form.
    pub fn parse(s: &str) -> Option<Reject> {
        Reject::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

//! The stored value encoding of users and ledger entries (ARCHITECTURE.md, "Keys and
//! values").
//!
//! A value is a format byte, then its fields in a fixed order: integers as LEB128
//! varints (signed ones zigzagged, so small negatives stay short), strings and lists as
//! a varint length then their items, options and booleans as one byte. A user of the
//! plain game takes about a third of its JSON, and decoding it allocates only its
//! strings.
//!
//! Formats:
//! - JSON with no format byte (a value starting with `{`): what stores before this
//!   encoding wrote. Still read, so that such a store keeps working with no migration
//!   step; every value written again is written in the current format.
//! - 2: this layout without the time section.
//! - [`FORMAT`] (3): this layout: format 2's fields, then the time section (lots, tier
//!   and expiry figures of users; the tier bonus and lots taken of ledger entries).
//!
//! A later layout takes the next format byte and keeps the readers of the earlier ones,
//! so that stores, snapshots and changelogs survive schema changes. Any other first byte,
//! a truncated value or trailing bytes are [`StoreError::Corrupt`], never a panic.

use std::collections::BTreeMap;

use crate::domain::{
    Figure, LedgerEntry, MissionInstance, Period, PeriodScore, ReceiptKind, Source, TierHeld,
    Timestamp, UserState,
};

use super::StoreError;

/// The value format this build writes.
pub const FORMAT: u8 = 3;

/// The format before the time section, still read.
pub const FORMAT_2: u8 = 2;

/// The first byte of a value written as JSON, before the format byte existed.
const LEGACY_JSON: u8 = b'{';

/// A user's stored value.
pub fn encode_user(u: &UserState) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(96 + 16 * u.stores.len()));
    w.byte(FORMAT);
    w.str(&u.user_id);
    w.int(u.coins);
    w.int(u.xp);
    w.uint(u64::from(u.level));
    w.int(u.total_spent);
    w.uint(u.receipt_count);
    w.uint(u.refund_count);
    w.list(&u.stores, |w, s| w.str(s));
    w.opt_time(u.first_receipt_at.as_ref());
    w.opt_time(u.last_receipt_at.as_ref());
    w.uint(u.version);
    match &u.source {
        Some(s) => {
            w.byte(1);
            w.int(i64::from(s.partition));
            w.int(s.offset);
        }
        None => w.byte(0),
    }
    w.uint(u.coins_by_campaign.len() as u64);
    for (id, coins) in &u.coins_by_campaign {
        w.str(id);
        w.int(*coins);
    }
    w.list(&u.missions, |w, m| {
        w.str(&m.mission_id);
        w.str(&m.period);
        w.int(m.spend);
        w.uint(m.receipts);
        w.uint(m.stores.len() as u64);
        for (store, n) in &m.stores {
            w.str(store);
            w.uint(*n);
        }
        w.byte(u8::from(m.completed));
        w.opt_time(m.completed_at.as_ref());
    });
    w.uint(u.missions_completed);
    w.list(&u.streak_runs, |w, (a, b)| {
        w.int(*a);
        w.int(*b);
    });
    w.list(&u.badges, |w, b| w.str(b));
    w.uint(u.redemptions);
    w.int(u.coins_redeemed);
    w.list(&u.periods, |w, p| {
        w.byte(period_tag(p.kind));
        w.str(&p.key);
        w.int(p.xp);
        w.int(p.coins);
        w.int(p.spent);
    });
    w.int(u.coins_expired);
    w.list(&u.lots, |w, (m, c)| {
        w.int(i64::from(*m));
        w.int(*c);
    });
    match &u.tier {
        Some(t) => {
            w.byte(1);
            w.str(&t.id);
            w.time(&t.since);
        }
        None => w.byte(0),
    }
    w.opt_time(u.next_review.as_ref());
    w.list(&u.tier_months, |w, (m, v)| {
        w.int(i64::from(*m));
        w.int(*v);
    });
    match u.tier_figure {
        None => w.byte(0),
        Some(Figure::Spend(v)) => {
            w.byte(1);
            w.int(v);
        }
        Some(Figure::Xp(v)) => {
            w.byte(2);
            w.int(v);
        }
    }
    match &u.next_expiry {
        Some((at, coins)) => {
            w.byte(1);
            w.time(at);
            w.int(*coins);
        }
        None => w.byte(0),
    }
    w.0
}

/// Reads a user's stored value, in this format or the legacy JSON.
pub fn decode_user(bytes: &[u8]) -> Result<UserState, StoreError> {
    decode("user", bytes, |r| {
        Ok(UserState {
            user_id: r.string()?,
            coins: r.int()?,
            xp: r.int()?,
            level: r.u32()?,
            total_spent: r.int()?,
            receipt_count: r.uint()?,
            refund_count: r.uint()?,
            stores: r.list(Reader::string)?,
            first_receipt_at: r.opt_time()?,
            last_receipt_at: r.opt_time()?,
            version: r.uint()?,
            source: match r.flag()? {
                true => Some(Source {
                    partition: i32::try_from(r.int()?).map_err(|_| r.corrupt("partition"))?,
                    offset: r.int()?,
                }),
                false => None,
            },
            coins_by_campaign: r.map(|r| Ok((r.string()?, r.int()?)))?,
            missions: r.list(|r| {
                Ok(MissionInstance {
                    mission_id: r.string()?,
                    period: r.string()?,
                    spend: r.int()?,
                    receipts: r.uint()?,
                    stores: r.map(|r| Ok((r.string()?, r.uint()?)))?,
                    completed: r.flag()?,
                    completed_at: r.opt_time()?,
                })
            })?,
            missions_completed: r.uint()?,
            streak_runs: r.list(|r| Ok((r.int()?, r.int()?)))?,
            badges: r.list(Reader::string)?,
            redemptions: r.uint()?,
            coins_redeemed: r.int()?,
            periods: r.list(|r| {
                Ok(PeriodScore {
                    kind: r.period()?,
                    key: r.string()?,
                    xp: r.int()?,
                    coins: r.int()?,
                    spent: r.int()?,
                })
            })?,
            lots: Vec::new(),
            coins_expired: 0,
            tier: None,
            next_review: None,
            tier_months: Vec::new(),
            tier_figure: None,
            next_expiry: None,
        })
        .and_then(|mut u| {
            if r.format < FORMAT {
                return Ok(u);
            }
            u.coins_expired = r.int()?;
            u.lots = r.list(|r| Ok((r.i32()?, r.int()?)))?;
            u.tier = match r.flag()? {
                true => Some(TierHeld {
                    id: r.string()?,
                    since: r.time()?,
                }),
                false => None,
            };
            u.next_review = r.opt_time()?;
            u.tier_months = r.list(|r| Ok((r.i32()?, r.int()?)))?;
            u.tier_figure = match r.byte()? {
                0 => None,
                1 => Some(Figure::Spend(r.int()?)),
                2 => Some(Figure::Xp(r.int()?)),
                other => return Err(r.corrupt(&format!("figure kind {other}"))),
            };
            u.next_expiry = match r.flag()? {
                true => Some((r.time()?, r.int()?)),
                false => None,
            };
            Ok(u)
        })
    })
}

/// A ledger entry's stored value. `issued_at` comes first, so that the compaction filter
/// reads it without decoding the rest ([`ledger_issued_secs`]).
pub fn encode_ledger(e: &LedgerEntry) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(48));
    w.byte(FORMAT);
    w.time(&e.issued_at);
    match &e.kind {
        ReceiptKind::Purchase => w.byte(0),
        ReceiptKind::Refund { refund_of } => {
            w.byte(1);
            w.str(refund_of);
        }
        ReceiptKind::Redemption { coins } => {
            w.byte(2);
            w.int(*coins);
        }
        ReceiptKind::RedemptionReversal { refund_of } => {
            w.byte(3);
            w.str(refund_of);
        }
    }
    w.str(&e.store_id);
    w.int(e.amount);
    w.int(e.earned_coins);
    w.int(e.earned_xp);
    w.int(e.refunded);
    w.list(&e.campaign_coins, |w, (id, coins)| {
        w.str(id);
        w.int(*coins);
    });
    w.int(e.tier_bonus);
    w.list(&e.taken, |w, (m, c)| {
        w.int(i64::from(*m));
        w.int(*c);
    });
    w.0
}

/// Reads a ledger entry's stored value, in this format or the legacy JSON.
pub fn decode_ledger(bytes: &[u8]) -> Result<LedgerEntry, StoreError> {
    decode("ledger entry", bytes, |r| {
        let issued_at = r.time()?;
        let kind = match r.byte()? {
            0 => ReceiptKind::Purchase,
            1 => ReceiptKind::Refund {
                refund_of: r.string()?,
            },
            2 => ReceiptKind::Redemption { coins: r.int()? },
            3 => ReceiptKind::RedemptionReversal {
                refund_of: r.string()?,
            },
            other => return Err(r.corrupt(&format!("receipt kind {other}"))),
        };
        Ok(LedgerEntry {
            kind,
            store_id: r.string()?,
            amount: r.int()?,
            issued_at,
            earned_coins: r.int()?,
            earned_xp: r.int()?,
            refunded: r.int()?,
            campaign_coins: r.list(|r| Ok((r.string()?, r.int()?)))?,
            tier_bonus: 0,
            taken: Vec::new(),
        })
        .and_then(|mut e| {
            if r.format >= FORMAT {
                e.tier_bonus = r.int()?;
                e.taken = r.list(|r| Ok((r.i32()?, r.int()?)))?;
            }
            Ok(e)
        })
    })
}

/// The whole seconds of a ledger value's `issued_at`, decoding nothing else; `None` when
/// the value does not decode.
pub fn ledger_issued_secs(bytes: &[u8]) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct IssuedAt {
        issued_at: Timestamp,
    }
    match open("ledger entry", bytes).ok()? {
        Opened::Json(json) => serde_json::from_slice::<IssuedAt>(json)
            .ok()
            .map(|e| e.issued_at.secs),
        Opened::Binary(mut r) => r.int().ok(),
    }
}

enum Opened<'a> {
    Json(&'a [u8]),
    Binary(Reader<'a>),
}

fn open<'a>(what: &'static str, bytes: &'a [u8]) -> Result<Opened<'a>, StoreError> {
    match bytes.first() {
        Some(&(format @ FORMAT | format @ FORMAT_2)) => Ok(Opened::Binary(Reader {
            what,
            format,
            rest: &bytes[1..],
        })),
        Some(&LEGACY_JSON) => Ok(Opened::Json(bytes)),
        Some(other) => Err(StoreError::Corrupt {
            what,
            detail: format!(
                "value format {other}: this build reads formats {FORMAT_2} and {FORMAT} and the JSON of earlier builds; \
                 the store was written by a newer mallquest"
            ),
        }),
        None => Err(StoreError::Corrupt {
            what,
            detail: "empty value".into(),
        }),
    }
}

/// Reads a value in the legacy JSON, or in this format with `binary`, which must use up
/// every byte.
fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
    binary: impl FnOnce(&mut Reader<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    match open(what, bytes)? {
        Opened::Json(json) => serde_json::from_slice(json).map_err(|e| StoreError::Corrupt {
            what,
            detail: e.to_string(),
        }),
        Opened::Binary(mut r) => {
            let v = binary(&mut r)?;
            r.end()?;
            Ok(v)
        }
    }
}

fn period_tag(p: Period) -> u8 {
    match p {
        Period::Day => 0,
        Period::Week => 1,
        Period::Month => 2,
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn byte(&mut self, b: u8) {
        self.0.push(b);
    }

    fn uint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn int(&mut self, v: i64) {
        self.uint(((v << 1) ^ (v >> 63)) as u64);
    }

    fn str(&mut self, s: &str) {
        self.uint(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }

    fn time(&mut self, t: &Timestamp) {
        self.int(t.secs);
        self.uint(u64::from(t.nanos));
    }

    fn opt_time(&mut self, t: Option<&Timestamp>) {
        match t {
            Some(t) => {
                self.byte(1);
                self.time(t);
            }
            None => self.byte(0),
        }
    }

    fn list<T>(&mut self, items: &[T], mut each: impl FnMut(&mut Self, &T)) {
        self.uint(items.len() as u64);
        for item in items {
            each(self, item);
        }
    }
}

struct Reader<'a> {
    what: &'static str,
    /// The value's format byte.
    format: u8,
    rest: &'a [u8],
}

impl Reader<'_> {
    fn corrupt(&self, detail: &str) -> StoreError {
        StoreError::Corrupt {
            what: self.what,
            detail: format!("format {FORMAT}: {detail}"),
        }
    }

    fn byte(&mut self) -> Result<u8, StoreError> {
        let (&b, rest) = self
            .rest
            .split_first()
            .ok_or_else(|| self.corrupt("truncated"))?;
        self.rest = rest;
        Ok(b)
    }

    fn flag(&mut self) -> Result<bool, StoreError> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.corrupt(&format!("flag {other}"))),
        }
    }

    fn uint(&mut self) -> Result<u64, StoreError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(self.corrupt("varint overflows 64 bits"));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.corrupt("varint longer than 10 bytes"))
    }

    fn int(&mut self) -> Result<i64, StoreError> {
        let z = self.uint()?;
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    fn i32(&mut self) -> Result<i32, StoreError> {
        let v = self.int()?;
        i32::try_from(v).map_err(|_| self.corrupt("i32 out of range"))
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        let v = self.uint()?;
        u32::try_from(v).map_err(|_| self.corrupt("u32 out of range"))
    }

    fn len(&mut self) -> Result<usize, StoreError> {
        let n = self.uint()?;
        // Every item takes at least one byte: a longer count is corrupt, and checking it
        // here keeps a bad count from reserving memory.
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.rest.len())
            .ok_or_else(|| self.corrupt("length past the end"))
    }

    fn string(&mut self) -> Result<String, StoreError> {
        let n = self.len()?;
        let (s, rest) = self.rest.split_at(n);
        let s = std::str::from_utf8(s).map_err(|_| self.corrupt("string not UTF-8"))?;
        self.rest = rest;
        Ok(s.to_owned())
    }

    fn time(&mut self) -> Result<Timestamp, StoreError> {
        let secs = self.int()?;
        let nanos = self.u32()?;
        if nanos >= 1_000_000_000 {
            return Err(self.corrupt("nanoseconds out of range"));
        }
        Ok(Timestamp { secs, nanos })
    }

    fn opt_time(&mut self) -> Result<Option<Timestamp>, StoreError> {
        match self.flag()? {
            true => self.time().map(Some),
            false => Ok(None),
        }
    }

    fn period(&mut self) -> Result<Period, StoreError> {
        match self.byte()? {
            0 => Ok(Period::Day),
            1 => Ok(Period::Week),
            2 => Ok(Period::Month),
            other => Err(self.corrupt(&format!("period kind {other}"))),
        }
    }

    fn list<T>(
        &mut self,
        mut each: impl FnMut(&mut Self) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let n = self.len()?;
        (0..n).map(|_| each(self)).collect()
    }

    fn map<K: Ord, V>(
        &mut self,
        mut each: impl FnMut(&mut Self) -> Result<(K, V), StoreError>,
    ) -> Result<BTreeMap<K, V>, StoreError> {
        let n = self.len()?;
        (0..n).map(|_| each(self)).collect()
    }

    fn end(&self) -> Result<(), StoreError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.corrupt(&format!("{} bytes after the value", self.rest.len())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64, nanos: u32) -> Timestamp {
        Timestamp { secs, nanos }
    }

    /// A user with every field set, extremes included.
    fn full_user() -> UserState {
        let mut u = UserState::new("u-ü-1");
        u.coins = -17;
        u.xp = i64::MAX;
        u.level = u32::MAX;
        u.total_spent = i64::MIN;
        u.receipt_count = u64::MAX;
        u.refund_count = 3;
        u.stores = vec!["s-01".into(), "s-07".into()];
        u.first_receipt_at = Some(ts(-5, 0));
        u.last_receipt_at = Some(ts(1_764_000_000, 999_999_999));
        u.version = 12;
        u.source = Some(Source {
            partition: i32::MAX,
            offset: 1 << 40,
        });
        u.coins_by_campaign = BTreeMap::from([("c-1".into(), 5), ("c-2".into(), -1)]);
        u.missions = vec![MissionInstance {
            mission_id: "m-1".into(),
            period: "2026-W49".into(),
            spend: 1234,
            receipts: 2,
            stores: BTreeMap::from([("s-01".into(), 2)]),
            completed: true,
            completed_at: Some(ts(1_764_000_001, 5)),
        }];
        u.missions_completed = 4;
        u.streak_runs = vec![(20_000, 20_003), (20_010, 20_010)];
        u.badges = vec!["b-1".into()];
        u.redemptions = 1;
        u.coins_redeemed = 300;
        u.periods = vec![PeriodScore {
            kind: Period::Month,
            key: "2026-12".into(),
            xp: 10,
            coins: 20,
            spent: 30,
        }];
        u.lots = vec![(24_316, 40), (24_318, i64::MAX)];
        u.coins_expired = 9;
        u.tier = Some(TierHeld {
            id: "gold".into(),
            since: ts(1_764_000_002, 7),
        });
        u.next_review = Some(ts(1_764_500_000, 0));
        u.tier_months = vec![(24_316, -5), (24_317, 123_456)];
        u.tier_figure = Some(Figure::Spend(123_451));
        u.next_expiry = Some((ts(1_790_000_000, 0), 40));
        u
    }

    fn ledger_entries() -> Vec<LedgerEntry> {
        let base = LedgerEntry {
            kind: ReceiptKind::Purchase,
            store_id: "s-07".into(),
            amount: 12_345,
            issued_at: ts(1_764_000_000, 123),
            earned_coins: 24,
            earned_xp: 123,
            refunded: 0,
            campaign_coins: vec![("c-1".into(), 7)],
            tier_bonus: 3,
            taken: vec![(24_316, 5), (24_317, 2)],
        };
        vec![
            base.clone(),
            LedgerEntry {
                kind: ReceiptKind::Refund {
                    refund_of: "r-1".into(),
                },
                issued_at: ts(-1, 0),
                campaign_coins: vec![],
                ..base.clone()
            },
            LedgerEntry {
                kind: ReceiptKind::Redemption { coins: 500 },
                refunded: 500,
                ..base.clone()
            },
            LedgerEntry {
                kind: ReceiptKind::RedemptionReversal {
                    refund_of: "r-9".into(),
                },
                ..base
            },
        ]
    }

    #[test]
    fn values_round_trip() {
        for u in [full_user(), UserState::new("u-2")] {
            let bytes = encode_user(&u);
            assert_eq!(bytes[0], FORMAT);
            assert_eq!(decode_user(&bytes).unwrap(), u);
        }
        for e in ledger_entries() {
            let bytes = encode_ledger(&e);
            assert_eq!(decode_ledger(&bytes).unwrap(), e);
            assert_eq!(ledger_issued_secs(&bytes), Some(e.issued_at.secs));
        }
    }

    /// A value of format 2 (before the time section) reads with the time fields empty.
    #[test]
    fn format_2_values_are_still_read() {
        let u = UserState::new("u-3");
        let mut bytes = encode_user(&u);
        // The empty time section: coins expired, lots, tier, next review, tier months,
        // figure, next expiry; one byte each.
        bytes.truncate(bytes.len() - 7);
        bytes[0] = FORMAT_2;
        assert_eq!(decode_user(&bytes).unwrap(), u);
        for mut e in ledger_entries() {
            e.tier_bonus = 0;
            e.taken = Vec::new();
            let mut bytes = encode_ledger(&e);
            bytes.truncate(bytes.len() - 2);
            bytes[0] = FORMAT_2;
            assert_eq!(decode_ledger(&bytes).unwrap(), e);
        }
    }

    #[test]
    fn legacy_json_values_are_still_read() {
        let u = full_user();
        let json = serde_json::to_vec(&u).unwrap();
        assert_eq!(decode_user(&json).unwrap(), u);
        for e in ledger_entries() {
            let json = serde_json::to_vec(&e).unwrap();
            assert_eq!(decode_ledger(&json).unwrap(), e);
            assert_eq!(ledger_issued_secs(&json), Some(e.issued_at.secs));
        }
    }

    #[test]
    fn the_binary_user_is_smaller_than_its_json() {
        let mut u = UserState::new("u-00012345");
        u.coins = 1234;
        u.xp = 5678;
        u.level = 7;
        u.total_spent = 123_456;
        u.receipt_count = 10;
        u.stores = vec!["s-01".into(), "s-02".into(), "s-03".into()];
        u.first_receipt_at = Some(ts(1_764_000_000, 0));
        u.last_receipt_at = Some(ts(1_764_100_000, 0));
        u.version = 11;
        u.source = Some(Source {
            partition: 3,
            offset: 123_456,
        });
        let (bin, json) = (encode_user(&u).len(), serde_json::to_vec(&u).unwrap().len());
        assert!(bin * 3 < json, "{bin} bytes vs {json} of JSON");
    }

    #[test]
    fn truncated_extended_or_unknown_values_are_corrupt_not_panics() {
        let user = encode_user(&full_user());
        for n in 0..user.len() {
            assert!(
                matches!(decode_user(&user[..n]), Err(StoreError::Corrupt { .. })),
                "{n}"
            );
        }
        let mut longer = user.clone();
        longer.push(0);
        assert!(decode_user(&longer).is_err());
        let mut newer = user.clone();
        newer[0] = FORMAT + 1;
        let err = decode_user(&newer).unwrap_err().to_string();
        assert!(err.contains("newer mallquest"), "{err}");
        for e in ledger_entries() {
            let bytes = encode_ledger(&e);
            for n in 0..bytes.len() {
                assert!(decode_ledger(&bytes[..n]).is_err(), "{n}");
            }
        }
        // Every byte flipped: an error or another value, never a panic.
        for i in 0..user.len() {
            let mut b = user.clone();
            b[i] ^= 0xff;
            let _ = decode_user(&b);
        }
        // A count larger than what is left does not reserve memory.
        let mut huge = vec![FORMAT];
        Writer(Vec::new()).uint(0);
        let mut w = Writer(Vec::new());
        w.uint(u64::MAX);
        huge.extend(w.0);
        assert!(decode_user(&huge).is_err());
    }
}

//! The ledger of the dedup window, held in memory and made durable as segments.
//!
//! Every receipt adds a ledger entry, so a ledger stored key by key cost each receipt two
//! LSM inserts (the entry and its event-time index): most of a commit's writes. Here a
//! commit's new and updated entries of one partition are one segment, one value of the
//! `ledger_log` keyspace (`partition (i32 BE) | seq (u64 BE)`), written in the commit's
//! atomic batch with its offsets. The entries themselves live in memory, one hash table per
//! partition, each entry one allocation: `user_id 0x00 receipt_id` and the entry's stored
//! encoding ([`super::value::encode_ledger`]). Opening the store reads the segments in
//! order; a later version of a key replaces an earlier one.
//!
//! A segment is deleted once none of its entries is current (each was replaced by a later
//! segment or expired). Expiring an entry is not written: an expired entry that comes back
//! from a surviving segment at the next open is older than the partition's cutoff, so the
//! fold treats it as absent and the next expiry finds it again. [`Ledgers::compact`]
//! rewrites the current entries of mostly-dead segments into the newest of them, so that
//! the log on disk stays about the size of the window.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

use hashbrown::HashTable;

use super::{value, StoreError};
use crate::domain::LedgerEntry;

/// The first byte of a segment: its layout.
const SEGMENT_FORMAT: u8 = 1;

/// Heap bytes a table slot costs beside its entry's allocation (the slot and its control
/// byte, at the table's load).
const SLOT_BYTES: usize = std::mem::size_of::<Held>() * 8 / 7 + 1;

/// The key of a segment: partition, then sequence number (byte order is their order).
pub(super) fn segment_key(partition: i32, seq: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&partition.to_be_bytes());
    k[4..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Partition and sequence number of a segment key.
pub(super) fn parse_segment_key(k: &[u8]) -> Result<(i32, u64), StoreError> {
    let corrupt = || StoreError::Corrupt {
        what: "ledger segment key",
        detail: format!("{} bytes, expected 12", k.len()),
    };
    let p: [u8; 4] = k
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(corrupt)?;
    let s: [u8; 8] = k
        .get(4..)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(corrupt)?;
    Ok((i32::from_be_bytes(p), u64::from_be_bytes(s)))
}

/// One entry: `key length (u16 LE) | user_id 0x00 receipt_id | encoded entry`.
#[derive(Debug)]
struct Held {
    bytes: Box<[u8]>,
    /// The entry's issued_at, in seconds.
    secs: i64,
    /// The segment holding this version.
    seg: u64,
}

impl Held {
    fn key(&self) -> &[u8] {
        let n = usize::from(u16::from_le_bytes([self.bytes[0], self.bytes[1]]));
        &self.bytes[2..2 + n]
    }

    fn value(&self) -> &[u8] {
        let n = usize::from(u16::from_le_bytes([self.bytes[0], self.bytes[1]]));
        &self.bytes[2 + n..]
    }
}

/// An entry of a commit, encoded on the writer's thread ([`Change`]).
#[derive(Debug)]
pub(super) struct NewEntry {
    bytes: Box<[u8]>,
    secs: i64,
}

/// The `user_id 0x00 receipt_id` key of an entry.
pub(super) fn entry_key(user_id: &str, receipt_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(user_id.len() + 1 + receipt_id.len());
    k.extend_from_slice(user_id.as_bytes());
    k.push(0);
    k.extend_from_slice(receipt_id.as_bytes());
    k
}

impl NewEntry {
    /// Encodes one entry; `None` when its ids are too long to be a key (the codec bounds
    /// ids far below that).
    pub(super) fn new(user_id: &str, receipt_id: &str, e: &LedgerEntry) -> Option<Self> {
        let key = entry_key(user_id, receipt_id);
        let n = u16::try_from(key.len()).ok()?;
        let v = value::encode_ledger(e);
        let mut bytes = Vec::with_capacity(2 + key.len() + v.len());
        bytes.extend_from_slice(&n.to_le_bytes());
        bytes.extend_from_slice(&key);
        bytes.extend_from_slice(&v);
        Some(Self {
            bytes: bytes.into_boxed_slice(),
            secs: e.issued_at.secs,
        })
    }
}

/// One partition's changes of a commit: its segment's entries and the keys it expires.
#[derive(Debug, Default)]
pub(super) struct Change {
    pub(super) partition: i32,
    pub(super) seq: u64,
    pub(super) entries: Vec<NewEntry>,
    pub(super) expired: Vec<Vec<u8>>,
}

impl Change {
    /// The segment's stored bytes: the format, then each entry's length (u32 LE) and bytes.
    pub(super) fn segment(&self) -> Vec<u8> {
        let len = self
            .entries
            .iter()
            .map(|e| 4 + e.bytes.len())
            .sum::<usize>();
        let mut out = Vec::with_capacity(1 + len);
        out.push(SEGMENT_FORMAT);
        for e in &self.entries {
            out.extend_from_slice(&(e.bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(&e.bytes);
        }
        out
    }
}

/// Reads a stored segment's entries.
fn parse_segment(bytes: &[u8]) -> Result<Vec<NewEntry>, StoreError> {
    let corrupt = |detail: &str| StoreError::Corrupt {
        what: "ledger segment",
        detail: detail.to_owned(),
    };
    let Some((&SEGMENT_FORMAT, mut rest)) = bytes.split_first() else {
        return Err(corrupt("unknown format"));
    };
    let mut out = Vec::new();
    while !rest.is_empty() {
        let n: [u8; 4] = rest
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| corrupt("truncated length"))?;
        let n = u32::from_le_bytes(n) as usize;
        let body = rest
            .get(4..4 + n)
            .ok_or_else(|| corrupt("truncated entry"))?;
        let k = body
            .get(..2)
            .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
            .ok_or_else(|| corrupt("truncated key"))?;
        let value = body.get(2 + k..).ok_or_else(|| corrupt("truncated key"))?;
        let secs = value::ledger_issued_secs(value).ok_or_else(|| corrupt("bad entry"))?;
        out.push(NewEntry {
            bytes: body.into(),
            secs,
        });
        rest = &rest[4 + n..];
    }
    Ok(out)
}

/// A segment's counts.
#[derive(Debug, Clone, Copy, Default)]
struct Segment {
    /// Entries written in it.
    total: u64,
    /// Of those, the ones still current.
    live: u64,
}

/// One partition's ledger.
#[derive(Default)]
struct Part {
    table: HashTable<Held>,
    segments: BTreeMap<u64, Segment>,
    /// Heap bytes of the entries' allocations.
    bytes: usize,
    /// No entry is older than this (seconds): an expiry before it finds nothing.
    oldest: i64,
    /// Entries found due by the last scan and not handed out yet: (user_id, receipt_id,
    /// issued_at seconds), newest first.
    due: Vec<(String, String, i64)>,
    /// The cutoff of the last scan.
    scanned_at: Option<i64>,
}

/// Every partition's ledger (see the module doc).
pub(super) struct Ledgers {
    parts: HashMap<i32, Part>,
    hasher: foldhash::fast::FixedState,
}

impl Default for Ledgers {
    fn default() -> Self {
        Self {
            parts: HashMap::new(),
            hasher: foldhash::fast::FixedState::with_seed(0x6d61_6c6c),
        }
    }
}

/// What a commit's changes left to delete: segments none of whose entries is current.
pub(super) type DeadSegments = Vec<(i32, u64)>;

impl Ledgers {
    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The current entry under `user_id 0x00 receipt_id` in `partition`, decoded.
    pub(super) fn get(
        &self,
        partition: i32,
        user_id: &str,
        receipt_id: &str,
    ) -> Result<Option<LedgerEntry>, StoreError> {
        let Some(part) = self.parts.get(&partition) else {
            return Ok(None);
        };
        let key = entry_key(user_id, receipt_id);
        let h = self.hash(&key);
        part.table
            .find(h, |e| e.key() == key.as_slice())
            .map(|e| value::decode_ledger(e.value()))
            .transpose()
    }

    /// Applies a commit's (or a stored segment's) changes; returns the segments left with
    /// no current entry.
    pub(super) fn apply(&mut self, change: Change, dead: &mut DeadSegments) {
        let hasher = self.hasher;
        let hash = |k: &[u8]| hasher.hash_one(k);
        let p = change.partition;
        let part = self.parts.entry(p).or_insert_with(|| Part {
            oldest: i64::MAX,
            ..Part::default()
        });
        let mut touched: Vec<u64> = Vec::new();
        for key in &change.expired {
            if let Ok(e) = part
                .table
                .find_entry(hash(key), |e| e.key() == key.as_slice())
            {
                let (held, _) = e.remove();
                part.bytes -= held.bytes.len();
                if let Some(s) = part.segments.get_mut(&held.seg) {
                    s.live -= 1;
                    touched.push(held.seg);
                }
            }
        }
        let seq = change.seq;
        if !change.entries.is_empty() {
            let s = part.segments.entry(seq).or_default();
            s.total += change.entries.len() as u64;
            s.live += change.entries.len() as u64;
        }
        for NewEntry { bytes, secs } in change.entries {
            let held = Held {
                bytes,
                secs,
                seg: seq,
            };
            part.oldest = part.oldest.min(secs);
            part.bytes += held.bytes.len();
            let h = hash(held.key());
            match part
                .table
                .entry(h, |e| e.key() == held.key(), |e| hash(e.key()))
            {
                hashbrown::hash_table::Entry::Occupied(mut o) => {
                    let old = std::mem::replace(o.get_mut(), held);
                    part.bytes -= old.bytes.len();
                    if let Some(s) = part.segments.get_mut(&old.seg) {
                        s.live -= 1;
                        touched.push(old.seg);
                    }
                }
                hashbrown::hash_table::Entry::Vacant(v) => {
                    v.insert(held);
                }
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for seg in touched {
            if part.segments.get(&seg).is_some_and(|s| s.live == 0) {
                part.segments.remove(&seg);
                dead.push((p, seg));
            }
        }
    }

    /// Reads one stored segment into memory (the store's open).
    pub(super) fn load(
        &mut self,
        partition: i32,
        seq: u64,
        bytes: &[u8],
        dead: &mut DeadSegments,
    ) -> Result<(), StoreError> {
        let entries = parse_segment(bytes)?;
        if entries.is_empty() {
            dead.push((partition, seq));
            return Ok(());
        }
        self.apply(
            Change {
                partition,
                seq,
                entries,
                expired: Vec::new(),
            },
            dead,
        );
        Ok(())
    }

    /// Up to `limit` entries of `partition` issued before `cutoff` (seconds): (user_id,
    /// receipt_id, issued_at seconds), oldest first. The entries are found by a scan of
    /// the partition's table, run when the cutoff has moved on by `slack` since the last
    /// one (or nothing is left of it), so that a steady stream scans the table once per
    /// `slack` of event time, not once per batch; an entry may outlive its window by that
    /// much. An entry handed out may have been replaced since: the caller checks.
    pub(super) fn due(
        &mut self,
        partition: i32,
        cutoff: i64,
        slack: i64,
        limit: usize,
    ) -> Vec<(String, String, i64)> {
        let Some(part) = self.parts.get_mut(&partition) else {
            return Vec::new();
        };
        let rescan = part.due.is_empty()
            && part.oldest < cutoff
            && part
                .scanned_at
                .is_none_or(|at| cutoff >= at.saturating_add(slack));
        if rescan {
            let mut oldest = i64::MAX;
            for e in &part.table {
                if e.secs < cutoff {
                    let key = e.key();
                    let split = key.iter().position(|b| *b == 0).unwrap_or(key.len());
                    let user = String::from_utf8_lossy(&key[..split]).into_owned();
                    let receipt = String::from_utf8_lossy(key.get(split + 1..).unwrap_or_default())
                        .into_owned();
                    part.due.push((user, receipt, e.secs));
                } else {
                    oldest = oldest.min(e.secs);
                }
            }
            part.due.sort_unstable_by_key(|d| std::cmp::Reverse(d.2));
            // The entries handed out are expired by the caller's commit: the oldest left
            // is the oldest of the others (and of what commits add since).
            part.oldest = oldest;
            part.scanned_at = Some(cutoff);
        }
        let take = part.due.len().saturating_sub(limit);
        let mut out = part.due.split_off(take);
        out.reverse();
        out
    }

    /// Every current entry of every partition, in (partition, user_id, receipt_id) order.
    pub(super) fn entries(&self) -> Result<Vec<(i32, String, String, LedgerEntry)>, StoreError> {
        let mut out = Vec::new();
        for (p, part) in &self.parts {
            for e in &part.table {
                let key = std::str::from_utf8(e.key()).map_err(|_| StoreError::Corrupt {
                    what: "ledger key",
                    detail: "not UTF-8".into(),
                })?;
                let (user, receipt) = key.split_once('\0').ok_or_else(|| StoreError::Corrupt {
                    what: "ledger key",
                    detail: "no separator".into(),
                })?;
                out.push((
                    *p,
                    user.to_owned(),
                    receipt.to_owned(),
                    value::decode_ledger(e.value())?,
                ));
            }
        }
        out.sort_unstable_by(|a, b| (a.0, &a.1, &a.2).cmp(&(b.0, &b.1, &b.2)));
        Ok(out)
    }

    /// Entries held whose issued_at is at or after their partition's cutoff (`None`: no
    /// cutoff, every entry counts).
    pub(super) fn live(&self, cutoff: impl Fn(i32) -> Option<i64>) -> u64 {
        self.parts
            .iter()
            .map(|(p, part)| match cutoff(*p) {
                None => part.table.len() as u64,
                Some(c) => part.table.iter().filter(|e| e.secs >= c).count() as u64,
            })
            .sum()
    }

    /// Entries held, expired ones not dropped yet included.
    pub(super) fn len(&self) -> u64 {
        self.parts.values().map(|p| p.table.len() as u64).sum()
    }

    /// Heap bytes held: the entries' allocations and the tables' slots.
    pub(super) fn heap_bytes(&self) -> u64 {
        self.parts
            .values()
            .map(|p| p.bytes + p.table.capacity() * SLOT_BYTES)
            .sum::<usize>() as u64
    }

    /// Segments stored now.
    pub(super) fn segments(&self) -> u64 {
        self.parts.values().map(|p| p.segments.len() as u64).sum()
    }

    /// Gathers the current entries of `partition`'s segments that are at most half current
    /// into the newest of them (their other segments then hold nothing current): returns
    /// that segment's new bytes and the segments to delete, and moves the entries to it
    /// in memory. `None`: nothing worth rewriting.
    pub(super) fn compact(&mut self, partition: i32) -> Option<(u64, Vec<u8>, Vec<u64>)> {
        let part = self.parts.get_mut(&partition)?;
        let sparse: Vec<u64> = part
            .segments
            .iter()
            .filter(|(_, s)| s.live * 2 <= s.total)
            .map(|(seq, _)| *seq)
            .collect();
        if sparse.len() < 2 {
            return None;
        }
        let target = *sparse.last()?;
        let set: std::collections::HashSet<u64> = sparse.iter().copied().collect();
        let mut change = Change {
            partition,
            seq: target,
            ..Change::default()
        };
        let mut live = 0u64;
        for e in &mut part.table {
            if set.contains(&e.seg) {
                change.entries.push(NewEntry {
                    bytes: e.bytes.clone(),
                    secs: e.secs,
                });
                e.seg = target;
                live += 1;
            }
        }
        for seq in &sparse {
            part.segments.remove(seq);
        }
        part.segments.insert(target, Segment { total: live, live });
        let removed = sparse[..sparse.len() - 1].to_vec();
        Some((target, change.segment(), removed))
    }

    /// Partitions with a ledger.
    pub(super) fn partitions(&self) -> Vec<i32> {
        let mut ps: Vec<i32> = self.parts.keys().copied().collect();
        ps.sort_unstable();
        ps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ReceiptKind, Timestamp};

    fn entry(secs: i64, refunded: i64) -> LedgerEntry {
        LedgerEntry {
            kind: ReceiptKind::Purchase,
            store_id: "s-1".into(),
            amount: 1000,
            issued_at: Timestamp { secs, nanos: 0 },
            earned_coins: 10,
            earned_xp: 10,
            refunded,
            campaign_coins: Vec::new(),
        }
    }

    fn change(seq: u64, entries: &[(&str, &str, LedgerEntry)], expired: &[(&str, &str)]) -> Change {
        Change {
            partition: 0,
            seq,
            entries: entries
                .iter()
                .map(|(u, r, e)| NewEntry::new(u, r, e).unwrap())
                .collect(),
            expired: expired.iter().map(|(u, r)| entry_key(u, r)).collect(),
        }
    }

    #[test]
    fn segments_reloaded_in_order_give_the_entries_committed() {
        let mut l = Ledgers::default();
        let mut stored = Vec::new();
        let mut dead = Vec::new();
        let batches = [
            change(
                1,
                &[("u", "r1", entry(100, 0)), ("u", "r2", entry(101, 0))],
                &[],
            ),
            change(
                2,
                &[("u", "r1", entry(100, 500)), ("v", "r3", entry(102, 0))],
                &[],
            ),
            change(3, &[("w", "r4", entry(103, 0))], &[("u", "r2")]),
        ];
        for c in batches {
            stored.push((c.seq, c.segment()));
            l.apply(c, &mut dead);
        }
        // Segment 1 holds r1's first version (replaced) and r2 (expired): nothing current.
        assert_eq!(dead, vec![(0, 1)]);
        stored.retain(|(seq, _)| !dead.iter().any(|(_, d)| d == seq));
        let mut again = Ledgers::default();
        let mut dead_again = Vec::new();
        for (seq, bytes) in &stored {
            again.load(0, *seq, bytes, &mut dead_again).unwrap();
        }
        assert_eq!(again.entries().unwrap(), l.entries().unwrap());
        assert_eq!(again.get(0, "u", "r1").unwrap(), Some(entry(100, 500)));
        assert_eq!(again.get(0, "u", "r2").unwrap(), None);
        assert_eq!(again.len(), 3);
    }

    #[test]
    fn due_hands_out_every_entry_before_the_cutoff_oldest_first() {
        let mut l = Ledgers::default();
        let mut dead = Vec::new();
        let entries: Vec<(String, LedgerEntry)> = (0..10)
            .map(|i| (format!("r{i}"), entry(100 + (i * 7) % 10, 0)))
            .collect();
        let refs: Vec<(&str, &str, LedgerEntry)> = entries
            .iter()
            .map(|(r, e)| ("u", r.as_str(), e.clone()))
            .collect();
        l.apply(change(1, &refs, &[]), &mut dead);
        let first = l.due(0, 105, 0, 3);
        assert_eq!(
            first.iter().map(|d| d.2).collect::<Vec<_>>(),
            [100, 101, 102]
        );
        let rest = l.due(0, 105, 0, 100);
        assert_eq!(rest.iter().map(|d| d.2).collect::<Vec<_>>(), [103, 104]);
        let keys: Vec<(&str, &str)> = first
            .iter()
            .chain(&rest)
            .map(|(u, r, _)| (u.as_str(), r.as_str()))
            .collect();
        l.apply(change(2, &[], &keys), &mut dead);
        assert!(l.due(0, 105, 0, 100).is_empty());
        assert_eq!(l.len(), 5);
        // A slack of 10 s: the cutoff must move on that far before the next scan.
        assert!(l.due(0, 108, 10, 100).is_empty());
        assert_eq!(l.due(0, 115, 10, 100).len(), 5);
    }

    #[test]
    fn compaction_keeps_every_current_entry_through_a_reload() {
        let mut l = Ledgers::default();
        let mut dead = Vec::new();
        let mut stored: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        for seq in 1..=4u64 {
            let r = |i| format!("r{seq}-{i}");
            let (a, b) = (r(0), r(1));
            let c = change(
                seq,
                &[("u", &a, entry(100, 0)), ("u", &b, entry(100, 0))],
                &[],
            );
            stored.insert(seq, c.segment());
            l.apply(c, &mut dead);
            // The second entry of each segment is updated later: every segment half current.
            let c = change(seq + 10, &[("u", &b, entry(100, 1))], &[]);
            stored.insert(seq + 10, c.segment());
            l.apply(c, &mut dead);
        }
        let before = l.entries().unwrap();
        let (target, bytes, removed) = l.compact(0).unwrap();
        assert_eq!(target, 4);
        assert_eq!(removed, vec![1, 2, 3]);
        stored.insert(target, bytes);
        for r in removed {
            stored.remove(&r);
        }
        assert_eq!(l.entries().unwrap(), before);
        let mut again = Ledgers::default();
        for (seq, bytes) in &stored {
            again.load(0, *seq, bytes, &mut Vec::new()).unwrap();
        }
        assert_eq!(again.entries().unwrap(), before);
    }
}

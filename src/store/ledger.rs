//! The ledger of the dedup window: an index in memory, the entries on disk in segments.
//!
//! Every receipt adds a ledger entry, so a ledger stored key by key cost each receipt two
//! LSM inserts (the entry and its event-time index): most of a commit's writes. Here a
//! commit's new and updated entries of one partition are one segment, written in the
//! commit's atomic batch with its offsets: a few values of the `ledger_log` keyspace, the
//! segment's chunks (`partition (i32 BE) | seq (u64 BE) | chunk (u16 BE)`), each about
//! [`CHUNK_BYTES`] of entries. Opening the store reads the segments in order; a later
//! version of a key replaces an earlier one.
//!
//! In memory each partition keeps only an index: per entry a 16-byte slot (32 bits of a
//! hash of `user_id 0x00 receipt_id`, where the entry is, and the day it was issued), so that a
//! receipt id never seen (almost every receipt) is known absent from memory alone, and a
//! duplicate or a refund's purchase is one read of a chunk (the block cache holds the recent
//! ones), its key compared with the one asked for.
//!
//! A segment is deleted once none of its entries is current (each was replaced by a later
//! segment or expired). Expiring an entry is not written: an expired entry that comes back
//! from a surviving segment at the next open is older than the partition's cutoff, so the
//! fold treats it as absent and the next expiry finds it again. [`Ledgers::compact`]
//! rewrites the current entries of mostly-dead segments into the newest of them, so that
//! the log on disk stays about the size of the window.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

use fjall::Keyspace;
use hashbrown::HashTable;

use super::{io, value, StoreError};
use crate::domain::LedgerEntry;

/// The first byte of a chunk: its layout.
const CHUNK_FORMAT: u8 = 1;

/// A segment's chunks are cut at about this many bytes: a look-up reads one chunk.
pub(super) const CHUNK_BYTES: usize = 8 << 10;

/// Seconds in a day: an entry's slot keeps the day it was issued, for expiry.
const DAY: i64 = 86_400;

/// The key of a chunk: partition, sequence number, chunk (byte order is their order).
pub(super) fn chunk_key(partition: i32, seq: u64, chunk: u16) -> [u8; 14] {
    let mut k = [0u8; 14];
    k[..4].copy_from_slice(&partition.to_be_bytes());
    k[4..12].copy_from_slice(&seq.to_be_bytes());
    k[12..].copy_from_slice(&chunk.to_be_bytes());
    k
}

/// Partition, sequence number and chunk of a chunk key.
pub(super) fn parse_chunk_key(k: &[u8]) -> Result<(i32, u64, u16), StoreError> {
    let corrupt = || StoreError::Corrupt {
        what: "ledger chunk key",
        detail: format!("{} bytes, expected 14", k.len()),
    };
    let b: &[u8; 14] = k.try_into().map_err(|_| corrupt())?;
    let p = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let mut s = [0u8; 8];
    s.copy_from_slice(&b[4..12]);
    Ok((p, u64::from_be_bytes(s), u16::from_be_bytes([b[12], b[13]])))
}

/// The `user_id 0x00 receipt_id` key of an entry.
pub(super) fn entry_key(user_id: &str, receipt_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(user_id.len() + 1 + receipt_id.len());
    k.extend_from_slice(user_id.as_bytes());
    k.push(0);
    k.extend_from_slice(receipt_id.as_bytes());
    k
}

/// The day an instant falls in, as a slot keeps it (days since 1970, clamped to a u16).
fn day_of(secs: i64) -> u16 {
    u16::try_from(secs.div_euclid(DAY).max(0)).unwrap_or(u16::MAX)
}

/// Where an entry is: its segment, chunk and offset in the chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Loc {
    seq: u64,
    chunk: u16,
    at: u16,
}

/// One entry of the index (16 bytes).
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Half of the key's hash ([`tag_of`]).
    tag: u32,
    /// The segment's sequence number, its low 32 and high 16 bits (a store would take
    /// thousands of years of commits to reach 2^48).
    seq_lo: u32,
    seq_hi: u16,
    chunk: u16,
    at: u16,
    /// The day it was issued ([`day_of`]).
    day: u16,
}

impl Slot {
    fn new(tag: u32, loc: Loc, day: u16) -> Self {
        Self {
            tag,
            seq_lo: loc.seq as u32,
            seq_hi: (loc.seq >> 32) as u16,
            chunk: loc.chunk,
            at: loc.at,
            day,
        }
    }

    fn loc(&self) -> Loc {
        Loc {
            seq: u64::from(self.seq_hi) << 32 | u64::from(self.seq_lo),
            chunk: self.chunk,
            at: self.at,
        }
    }
}

/// One record of a chunk at `at`: (key, value). A record is `length (u16 LE) | key length
/// (u16 LE) | key | value`.
fn record(chunk: &[u8], at: u16) -> Option<(&[u8], &[u8])> {
    let at = usize::from(at);
    let n = usize::from(u16::from_le_bytes(chunk.get(at..at + 2)?.try_into().ok()?));
    let body = chunk.get(at + 2..at + 2 + n)?;
    let k = usize::from(u16::from_le_bytes(body.get(..2)?.try_into().ok()?));
    Some((body.get(2..2 + k)?, body.get(2 + k..)?))
}

/// A record of a chunk: its offset, key and value.
type Record<'a> = (u16, &'a [u8], &'a [u8]);

/// Every record of a chunk.
fn records(chunk: &[u8]) -> Result<Vec<Record<'_>>, StoreError> {
    let corrupt = |detail: &str| StoreError::Corrupt {
        what: "ledger chunk",
        detail: detail.to_owned(),
    };
    if chunk.first() != Some(&CHUNK_FORMAT) {
        return Err(corrupt("unknown format"));
    }
    let mut out = Vec::new();
    let mut at = 1usize;
    while at < chunk.len() {
        let off = u16::try_from(at).map_err(|_| corrupt("chunk too long"))?;
        let (k, v) = record(chunk, off).ok_or_else(|| corrupt("truncated record"))?;
        out.push((off, k, v));
        at += 4 + k.len() + v.len();
    }
    Ok(out)
}

/// An entry of a commit, encoded on the writer's thread.
#[derive(Debug)]
pub(super) struct NewEntry {
    key: Vec<u8>,
    value: Vec<u8>,
    tag: u32,
    secs: i64,
    /// Where the commit's segment puts it ([`Change::chunks`]).
    chunk: u16,
    at: u16,
}

/// One partition's changes of a commit: its segment's entries and the keys it expires.
#[derive(Debug, Default)]
pub(super) struct Change {
    pub(super) partition: i32,
    pub(super) seq: u64,
    entries: Vec<NewEntry>,
    expired: Vec<Vec<u8>>,
}

impl Change {
    /// An empty change of `partition`.
    pub(super) fn of(partition: i32) -> Self {
        Self {
            partition,
            ..Self::default()
        }
    }

    /// Adds an entry; fails when its ids are too long to be a key (the codec bounds ids far
    /// below that) or the entry too large for a chunk.
    pub(super) fn put(
        &mut self,
        user_id: &str,
        receipt_id: &str,
        e: &LedgerEntry,
    ) -> Result<(), StoreError> {
        let key = entry_key(user_id, receipt_id);
        let value = value::encode_ledger(e);
        if 4 + key.len() + value.len() > usize::from(u16::MAX) - 1 {
            return Err(StoreError::Corrupt {
                what: "ledger entry",
                detail: format!("{} bytes, too large for a chunk", key.len() + value.len()),
            });
        }
        self.entries.push(NewEntry {
            tag: tag_of(&key),
            key,
            value,
            secs: e.issued_at.secs,
            chunk: 0,
            at: 0,
        });
        Ok(())
    }

    /// Adds the expiry of an entry.
    pub(super) fn expire(&mut self, user_id: &str, receipt_id: &str) {
        self.expired.push(entry_key(user_id, receipt_id));
    }

    /// Whether the change writes a segment.
    pub(super) fn writes(&self) -> bool {
        !self.entries.is_empty()
    }

    /// The segment's chunks, each with its number, and every entry's place in them. A
    /// chunk is about [`CHUNK_BYTES`], larger in a segment that would otherwise need more
    /// chunks than a u16 numbers (a batch of millions of receipts), up to 60 KiB (an
    /// offset in a chunk is a u16): a segment of more than about 3.8 GiB is refused.
    pub(super) fn chunks(&mut self) -> Result<Vec<(u16, Vec<u8>)>, StoreError> {
        let total: usize = self
            .entries
            .iter()
            .map(|e| 4 + e.key.len() + e.value.len())
            .sum();
        let target = (total / 60_000 + 1).clamp(CHUNK_BYTES, 60 << 10);
        let mut out: Vec<(u16, Vec<u8>)> = Vec::new();
        for e in &mut self.entries {
            let n = 4 + e.key.len() + e.value.len();
            if out
                .last()
                .is_none_or(|(_, c)| c.len() + n > target.max(n + 1))
            {
                let number = u16::try_from(out.len()).map_err(|_| StoreError::Corrupt {
                    what: "ledger segment",
                    detail: format!("{total} bytes of entries in one commit of one partition"),
                })?;
                let mut c = Vec::with_capacity(target + 256);
                c.push(CHUNK_FORMAT);
                out.push((number, c));
            }
            if let Some((number, c)) = out.last_mut() {
                e.chunk = *number;
                e.at = u16::try_from(c.len()).unwrap_or(u16::MAX);
                c.extend_from_slice(&((n - 2) as u16).to_le_bytes());
                c.extend_from_slice(&(e.key.len() as u16).to_le_bytes());
                c.extend_from_slice(&e.key);
                c.extend_from_slice(&e.value);
            }
        }
        Ok(out)
    }
}

/// The tag an entry's key is indexed by: half of a 64-bit hash with a fixed seed (the same
/// in every process). Keys of one tag are told apart by a read.
fn tag_of(key: &[u8]) -> u32 {
    (foldhash::fast::FixedState::with_seed(0x6d61_6c6c).hash_one(key) >> 32) as u32
}

/// The table's hash of a tag: spread over 64 bits (hashbrown takes its control bits from
/// the top).
fn spread(tag: u32) -> u64 {
    u64::from(tag).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// A segment's counts.
#[derive(Debug, Clone, Copy, Default)]
struct Segment {
    /// Entries written in it.
    total: u64,
    /// Of those, the ones still current.
    live: u64,
    /// Its chunks.
    chunks: u16,
}

/// A partition's slots: one table, hashed by tag.
#[derive(Default)]
struct Slots {
    table: HashTable<Slot>,
}

impl Slots {
    /// The slots of `tag`.
    fn of(&self, tag: u32) -> impl Iterator<Item = &Slot> {
        self.table
            .iter_hash(spread(tag))
            .filter(move |s| s.tag == tag)
    }

    /// Removes the slot of `tag` at `loc`; whether it was there.
    fn remove(&mut self, tag: u32, loc: Loc) -> bool {
        match self
            .table
            .find_entry(spread(tag), |s| s.tag == tag && s.loc() == loc)
        {
            Ok(e) => {
                e.remove();
                true
            }
            Err(_) => false,
        }
    }

    /// Moves the slot of `tag` at `from` to `to`.
    fn relocate(&mut self, tag: u32, from: Loc, to: Loc) {
        if let Ok(mut e) = self
            .table
            .find_entry(spread(tag), |s| s.tag == tag && s.loc() == from)
        {
            let s = e.get_mut();
            *s = Slot::new(tag, to, s.day);
        }
    }

    fn insert(&mut self, slot: Slot) {
        self.table
            .insert_unique(spread(slot.tag), slot, |s| spread(s.tag));
    }

    fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.table.iter()
    }

    fn len(&self) -> usize {
        self.table.len()
    }

    fn capacity(&self) -> usize {
        self.table.capacity()
    }
}

/// One partition's index.
#[derive(Default)]
struct Part {
    table: Slots,
    segments: BTreeMap<u64, Segment>,
    /// No entry was issued on a day before this: an expiry before it finds nothing.
    oldest: u16,
    /// Entries found due by the last scan and not handed out yet: (user_id, receipt_id,
    /// issued_at seconds), newest first.
    due: Vec<(String, String, i64)>,
    /// Where the entries handed out as due are, by key: their expiry finds their slot
    /// without a read.
    handed: HashMap<Vec<u8>, Loc>,
    /// The cutoff of the last scan.
    scanned_at: Option<i64>,
}

/// Every partition's ledger (see the module doc): the index, and the keyspace of chunks.
pub(super) struct Ledgers {
    parts: HashMap<i32, Part>,
    log: Keyspace,
}

/// A compaction's writes: the segment rewritten, its new chunks (number, bytes), and the
/// chunks to delete first (segment, number).
pub(super) type Compaction = (u64, Vec<(u16, Vec<u8>)>, Vec<(u64, u16)>);

/// Segments none of whose entries is current, to delete: (partition, seq, chunks).
pub(super) type DeadSegments = Vec<(i32, u64, u16)>;

impl Ledgers {
    /// An empty index over the chunks of `log`.
    pub(super) fn new(log: Keyspace) -> Self {
        Self {
            parts: HashMap::new(),
            log,
        }
    }

    /// Reads a chunk.
    fn chunk(&self, p: i32, seq: u64, chunk: u16) -> Result<fjall::Slice, StoreError> {
        self.log
            .get(chunk_key(p, seq, chunk))
            .map_err(io("read ledger"))?
            .ok_or_else(|| StoreError::Corrupt {
                what: "ledger chunk",
                detail: format!("partition {p} segment {seq} chunk {chunk} is indexed but missing"),
            })
    }

    /// The key and value of the entry at `loc`.
    fn read(&self, p: i32, loc: Loc) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        let c = self.chunk(p, loc.seq, loc.chunk)?;
        let (k, v) = record(&c, loc.at).ok_or_else(|| StoreError::Corrupt {
            what: "ledger chunk",
            detail: format!("no record at {} of segment {}", loc.at, loc.seq),
        })?;
        Ok((k.to_vec(), v.to_vec()))
    }

    /// Calls `each` with the key and value of the entries at `locs` of partition `p`, in
    /// their order, reading each chunk once: `locs` sorted, a chunk's entries are together.
    fn visit(
        &self,
        p: i32,
        locs: &[Loc],
        mut each: impl FnMut(Loc, &[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut held: Option<((u64, u16), fjall::Slice)> = None;
        for &loc in locs {
            let c = match &held {
                Some((at, c)) if *at == (loc.seq, loc.chunk) => c,
                _ => {
                    let c = self.chunk(p, loc.seq, loc.chunk)?;
                    &held.insert(((loc.seq, loc.chunk), c)).1
                }
            };
            let (k, v) = record(c, loc.at).ok_or_else(|| StoreError::Corrupt {
                what: "ledger chunk",
                detail: format!("no record at {} of segment {}", loc.at, loc.seq),
            })?;
            each(loc, k, v)?;
        }
        Ok(())
    }

    /// The slot of `key` in partition `p`, if held: slots of the same hash are told
    /// apart by the key read from their chunk.
    fn find(&self, p: i32, key: &[u8], tag: u32) -> Result<Option<(Loc, Vec<u8>)>, StoreError> {
        let Some(part) = self.parts.get(&p) else {
            return Ok(None);
        };
        for s in part.table.of(tag) {
            let (k, v) = self.read(p, s.loc())?;
            if k == key {
                return Ok(Some((s.loc(), v)));
            }
        }
        Ok(None)
    }

    /// The current entry under `user_id 0x00 receipt_id` in `partition`, decoded.
    pub(super) fn get(
        &self,
        partition: i32,
        user_id: &str,
        receipt_id: &str,
    ) -> Result<Option<LedgerEntry>, StoreError> {
        let key = entry_key(user_id, receipt_id);
        self.find(partition, &key, tag_of(&key))?
            .map(|(_, v)| value::decode_ledger(&v))
            .transpose()
    }

    /// Removes the slot of `key`, at `loc` if that is known and still where it is (a
    /// compaction may have moved it since), else found by a read; returns its segment.
    fn remove(&mut self, p: i32, key: &[u8], loc: Option<Loc>) -> Result<Option<u64>, StoreError> {
        let tag = tag_of(key);
        let Some(part) = self.parts.get_mut(&p) else {
            return Ok(None);
        };
        if let Some(loc) = loc {
            if part.table.remove(tag, loc) {
                return Ok(Some(loc.seq));
            }
        }
        let Some((loc, _)) = self.find(p, key, tag)? else {
            return Ok(None);
        };
        let part = self.parts.get_mut(&p).ok_or(StoreError::Poisoned)?;
        Ok(part.table.remove(tag, loc).then_some(loc.seq))
    }

    /// Applies a commit's changes (its segment already written); collects the segments
    /// left with no current entry.
    pub(super) fn apply(
        &mut self,
        change: Change,
        dead: &mut DeadSegments,
    ) -> Result<(), StoreError> {
        let p = change.partition;
        let mut touched: Vec<u64> = Vec::new();
        for key in &change.expired {
            let loc = self
                .parts
                .get_mut(&p)
                .and_then(|part| part.handed.remove(key));
            touched.extend(self.remove(p, key, loc)?);
        }
        let seq = change.seq;
        let count = change.entries.len() as u64;
        let chunks = change.entries.last().map_or(0, |e| e.chunk + 1);
        for e in &change.entries {
            touched.extend(self.remove(p, &e.key, None)?);
            let part = self.parts.entry(p).or_insert_with(|| Part {
                oldest: u16::MAX,
                ..Part::default()
            });
            let loc = Loc {
                seq,
                chunk: e.chunk,
                at: e.at,
            };
            let slot = Slot::new(e.tag, loc, day_of(e.secs));
            part.oldest = part.oldest.min(slot.day);
            part.table.insert(slot);
        }
        let Some(part) = self.parts.get_mut(&p) else {
            return Ok(());
        };
        for seg in &touched {
            if let Some(s) = part.segments.get_mut(seg) {
                s.live = s.live.saturating_sub(1);
            }
        }
        if count > 0 {
            part.segments.insert(
                seq,
                Segment {
                    total: count,
                    live: count,
                    chunks,
                },
            );
        }
        touched.sort_unstable();
        touched.dedup();
        for seg in touched {
            if let Some(s) = part.segments.get(&seg).filter(|s| s.live == 0).copied() {
                part.segments.remove(&seg);
                dead.push((p, seg, s.chunks));
            }
        }
        Ok(())
    }

    /// Reads every stored chunk into the index, in order (the store's open). Returns the
    /// highest sequence number seen.
    pub(super) fn load(&mut self, dead: &mut DeadSegments) -> Result<u64, StoreError> {
        let mut last = 0;
        let mut current: Option<Change> = None;
        let log = self.log.clone();
        for kv in log.iter() {
            let (k, v) = kv.into_inner().map_err(io("scan ledger"))?;
            let (p, seq, chunk) = parse_chunk_key(&k)?;
            last = last.max(seq);
            if current
                .as_ref()
                .is_none_or(|c| (c.partition, c.seq) != (p, seq))
            {
                if let Some(c) = current.take() {
                    self.apply(c, dead)?;
                }
                current = Some(Change {
                    partition: p,
                    seq,
                    ..Change::default()
                });
            }
            let Some(c) = current.as_mut() else { continue };
            for (at, key, value) in records(&v)? {
                let secs = value::ledger_issued_secs(value).ok_or_else(|| StoreError::Corrupt {
                    what: "ledger entry",
                    detail: "no issued_at".into(),
                })?;
                c.entries.push(NewEntry {
                    tag: tag_of(key),
                    key: key.to_vec(),
                    value: Vec::new(),
                    secs,
                    chunk,
                    at,
                });
            }
        }
        if let Some(c) = current.take() {
            self.apply(c, dead)?;
        }
        Ok(last)
    }

    /// Up to `limit` entries of `partition` issued before `cutoff` (seconds): (user_id,
    /// receipt_id, issued_at seconds), oldest first. Found by a scan of the partition's
    /// index for entries issued on a day before the cutoff's, run when the cutoff has moved
    /// on by `slack` since the last one (or nothing is left of it), so that a steady stream
    /// scans once per `slack` of event time, not once per batch; an entry may outlive its
    /// window by that and a day. Their ids are read from their chunks. An entry handed out
    /// may have been replaced since: the caller checks.
    pub(super) fn due(
        &mut self,
        partition: i32,
        cutoff: i64,
        slack: i64,
        limit: usize,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        let Some(part) = self.parts.get(&partition) else {
            return Ok(Vec::new());
        };
        let before = day_of(cutoff);
        let rescan = part.due.is_empty()
            && part.oldest < before
            && part
                .scanned_at
                .is_none_or(|at| cutoff >= at.saturating_add(slack));
        if rescan {
            let mut locs: Vec<Loc> = Vec::new();
            let mut oldest = u16::MAX;
            for s in part.table.iter() {
                if s.day < before {
                    locs.push(s.loc());
                } else {
                    oldest = oldest.min(s.day);
                }
            }
            locs.sort_unstable();
            let mut found = Vec::with_capacity(locs.len());
            let mut handed = HashMap::with_capacity(locs.len());
            self.visit(partition, &locs, |loc, k, v| {
                let secs = value::ledger_issued_secs(v).unwrap_or(i64::MIN);
                let key = String::from_utf8_lossy(k);
                if let Some((user, receipt)) = key.split_once('\0') {
                    found.push((user.to_owned(), receipt.to_owned(), secs));
                    handed.insert(k.to_vec(), loc);
                }
                Ok(())
            })?;
            found.sort_unstable_by_key(|d| std::cmp::Reverse(d.2));
            let part = self.parts.get_mut(&partition).ok_or(StoreError::Poisoned)?;
            part.due = found;
            part.handed = handed;
            // The entries handed out are expired by the caller's commit: the oldest left
            // is the oldest of the others (and of what commits add since).
            part.oldest = oldest;
            part.scanned_at = Some(cutoff);
        }
        let part = self.parts.get_mut(&partition).ok_or(StoreError::Poisoned)?;
        let take = part.due.len().saturating_sub(limit);
        let mut out = part.due.split_off(take);
        out.reverse();
        Ok(out)
    }

    /// Every current entry of every partition, in (partition, user_id, receipt_id) order.
    pub(super) fn entries(&self) -> Result<Vec<(i32, String, String, LedgerEntry)>, StoreError> {
        let mut out = Vec::new();
        for (p, part) in &self.parts {
            let mut locs: Vec<Loc> = part.table.iter().map(Slot::loc).collect();
            locs.sort_unstable();
            self.visit(*p, &locs, |_, k, v| {
                let corrupt = |detail: &str| StoreError::Corrupt {
                    what: "ledger entry",
                    detail: detail.to_owned(),
                };
                let key = std::str::from_utf8(k).map_err(|_| corrupt("key not UTF-8"))?;
                let (user, receipt) = key
                    .split_once('\0')
                    .ok_or_else(|| corrupt("no separator"))?;
                out.push((
                    *p,
                    user.to_owned(),
                    receipt.to_owned(),
                    value::decode_ledger(v)?,
                ));
                Ok(())
            })?;
        }
        out.sort_unstable_by(|a, b| (a.0, &a.1, &a.2).cmp(&(b.0, &b.1, &b.2)));
        Ok(out)
    }

    /// Entries held.
    pub(super) fn len(&self) -> u64 {
        self.parts.values().map(|p| p.table.len() as u64).sum()
    }

    /// Heap bytes of the index: its slots and their control bytes.
    pub(super) fn heap_bytes(&self) -> u64 {
        self.parts
            .values()
            .map(|p| {
                p.table.capacity() * (std::mem::size_of::<Slot>() + 1)
                    + std::mem::size_of::<Slots>()
            })
            .sum::<usize>() as u64
    }

    /// Segments stored now.
    pub(super) fn segments(&self) -> u64 {
        self.parts.values().map(|p| p.segments.len() as u64).sum()
    }

    /// Gathers the current entries of `partition`'s segments that are at most half current
    /// into the newest of them: returns that segment's new chunks and the chunk keys to
    /// delete first (every chunk of those segments), and moves the entries to it in the
    /// index. `None`: nothing worth rewriting. Writing them under the newest one's number
    /// keeps the replay order right: an entry's older versions are always in earlier
    /// segments.
    pub(super) fn compact(&mut self, partition: i32) -> Result<Option<Compaction>, StoreError> {
        let Some(part) = self.parts.get(&partition) else {
            return Ok(None);
        };
        let sparse: BTreeMap<u64, Segment> = part
            .segments
            .iter()
            .filter(|(_, s)| s.live * 2 <= s.total)
            .map(|(seq, s)| (*seq, *s))
            .collect();
        let Some(target) = sparse.keys().next_back().copied() else {
            return Ok(None);
        };
        if sparse.len() < 2 {
            return Ok(None);
        }
        let mut locs: Vec<Loc> = part
            .table
            .iter()
            .map(Slot::loc)
            .filter(|l| sparse.contains_key(&l.seq))
            .collect();
        locs.sort_unstable();
        let mut change = Change {
            partition,
            seq: target,
            ..Change::default()
        };
        let mut moved = Vec::with_capacity(locs.len());
        self.visit(partition, &locs, |loc, key, value| {
            change.entries.push(NewEntry {
                tag: tag_of(key),
                key: key.to_vec(),
                value: value.to_vec(),
                secs: value::ledger_issued_secs(value).unwrap_or(i64::MIN),
                chunk: 0,
                at: 0,
            });
            moved.push(loc);
            Ok(())
        })?;
        let chunks = change.chunks()?;
        let removed: Vec<(u64, u16)> = sparse
            .iter()
            .flat_map(|(seq, s)| (0..s.chunks).map(move |c| (*seq, c)))
            .collect();
        let part = self.parts.get_mut(&partition).ok_or(StoreError::Poisoned)?;
        for (from, e) in moved.iter().zip(&change.entries) {
            let to = Loc {
                seq: target,
                chunk: e.chunk,
                at: e.at,
            };
            part.table.relocate(e.tag, *from, to);
        }
        for seq in sparse.keys() {
            part.segments.remove(seq);
        }
        let live = change.entries.len() as u64;
        part.segments.insert(
            target,
            Segment {
                total: live,
                live,
                chunks: u16::try_from(chunks.len()).unwrap_or(u16::MAX),
            },
        );
        Ok(Some((target, chunks, removed)))
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
            tier_bonus: 0,
            taken: Vec::new(),
        }
    }

    /// A keyspace of chunks, and what a commit does with it: writes the change's chunks,
    /// applies it, deletes the dead segments.
    struct Log {
        _dir: tempfile::TempDir,
        db: fjall::Database,
        ks: Keyspace,
        seq: u64,
    }

    impl Log {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let db = fjall::Database::builder(dir.path()).open().unwrap();
            let ks = db
                .keyspace("ledger_log", fjall::KeyspaceCreateOptions::default)
                .unwrap();
            Self {
                _dir: dir,
                db,
                ks,
                seq: 0,
            }
        }

        fn commit(
            &mut self,
            l: &mut Ledgers,
            entries: &[(&str, &str, LedgerEntry)],
            expired: &[(&str, &str)],
        ) -> DeadSegments {
            self.seq += 1;
            let mut c = Change::of(0);
            c.seq = self.seq;
            for (u, r, e) in entries {
                c.put(u, r, e).unwrap();
            }
            for (u, r) in expired {
                c.expire(u, r);
            }
            for (n, bytes) in c.chunks().unwrap() {
                self.ks.insert(chunk_key(0, c.seq, n), bytes).unwrap();
            }
            let mut dead = Vec::new();
            l.apply(c, &mut dead).unwrap();
            for (p, seq, chunks) in &dead {
                for n in 0..*chunks {
                    self.ks.remove(chunk_key(*p, *seq, n)).unwrap();
                }
            }
            dead
        }

        fn reload(&self) -> Ledgers {
            let mut l = Ledgers::new(self.ks.clone());
            l.load(&mut Vec::new()).unwrap();
            l
        }
    }

    #[test]
    fn segments_reloaded_in_order_give_the_entries_committed() {
        let mut log = Log::new();
        let mut l = Ledgers::new(log.ks.clone());
        let dead = log.commit(
            &mut l,
            &[("u", "r1", entry(100, 0)), ("u", "r2", entry(101, 0))],
            &[],
        );
        assert!(dead.is_empty());
        log.commit(
            &mut l,
            &[("u", "r1", entry(100, 500)), ("v", "r3", entry(102, 0))],
            &[],
        );
        let dead = log.commit(&mut l, &[("w", "r4", entry(103, 0))], &[("u", "r2")]);
        // Segment 1 holds r1's first version (replaced) and r2 (expired): nothing current.
        assert_eq!(dead, vec![(0, 1, 1)]);
        let again = log.reload();
        assert_eq!(again.entries().unwrap(), l.entries().unwrap());
        assert_eq!(again.get(0, "u", "r1").unwrap(), Some(entry(100, 500)));
        assert_eq!(again.get(0, "u", "r2").unwrap(), None);
        assert_eq!(again.get(0, "u", "never").unwrap(), None);
        assert_eq!(again.len(), 3);
        let _ = &log.db;
    }

    #[test]
    fn a_segment_larger_than_a_chunk_is_cut_into_chunks_each_entry_found() {
        let mut log = Log::new();
        let mut l = Ledgers::new(log.ks.clone());
        let ids: Vec<String> = (0..2_000).map(|i| format!("receipt-{i:06}")).collect();
        let entries: Vec<(&str, &str, LedgerEntry)> = ids
            .iter()
            .enumerate()
            .map(|(i, r)| ("user-1", r.as_str(), entry(1_000 + i as i64, 0)))
            .collect();
        log.commit(&mut l, &entries, &[]);
        assert!(l.parts[&0].segments[&1].chunks > 1);
        for l in [&l, &log.reload()] {
            for (i, r) in ids.iter().enumerate() {
                assert_eq!(
                    l.get(0, "user-1", r).unwrap(),
                    Some(entry(1_000 + i as i64, 0))
                );
            }
        }
    }

    // Two keys of one tag (found by trying ids: about 2^16 tries) are told apart by the
    // key read from the chunk: each is found, through a reload and the other's expiry.
    #[test]
    fn keys_of_one_tag_are_told_apart() {
        let mut seen: HashMap<u32, String> = HashMap::new();
        let (a, b) = (0u64..)
            .find_map(|i| {
                let r = format!("r-{i}");
                let tag = tag_of(&entry_key("u", &r));
                seen.insert(tag, r.clone()).map(|other| (other, r))
            })
            .unwrap();
        let mut log = Log::new();
        let mut l = Ledgers::new(log.ks.clone());
        log.commit(&mut l, &[("u", &a, entry(100, 0))], &[]);
        log.commit(&mut l, &[("u", &b, entry(200, 0))], &[]);
        for l in [&l, &log.reload()] {
            assert_eq!(l.get(0, "u", &a).unwrap(), Some(entry(100, 0)));
            assert_eq!(l.get(0, "u", &b).unwrap(), Some(entry(200, 0)));
            assert_eq!(l.len(), 2);
        }
        log.commit(&mut l, &[("u", &a, entry(100, 7))], &[("u", &b)]);
        // Both segments are left with nothing current, and deleted.
        for l in [&l, &log.reload()] {
            assert_eq!(l.get(0, "u", &a).unwrap(), Some(entry(100, 7)));
            assert_eq!(l.get(0, "u", &b).unwrap(), None);
            assert_eq!(l.len(), 1);
        }
    }

    #[test]
    fn due_hands_out_every_entry_of_the_days_before_the_cutoff_oldest_first() {
        let mut log = Log::new();
        let mut l = Ledgers::new(log.ks.clone());
        let entries: Vec<(String, LedgerEntry)> = (0..10)
            .map(|i| (format!("r{i}"), entry(DAY * (100 + (i * 7) % 10), 0)))
            .collect();
        let refs: Vec<(&str, &str, LedgerEntry)> = entries
            .iter()
            .map(|(r, e)| ("u", r.as_str(), e.clone()))
            .collect();
        log.commit(&mut l, &refs, &[]);
        let cutoff = DAY * 105;
        let first = l.due(0, cutoff, 0, 3).unwrap();
        let days = |d: &[(String, String, i64)]| d.iter().map(|d| d.2 / DAY).collect::<Vec<_>>();
        assert_eq!(days(&first), [100, 101, 102]);
        let rest = l.due(0, cutoff, 0, 100).unwrap();
        assert_eq!(days(&rest), [103, 104]);
        let keys: Vec<(&str, &str)> = first
            .iter()
            .chain(&rest)
            .map(|(u, r, _)| (u.as_str(), r.as_str()))
            .collect();
        log.commit(&mut l, &[], &keys);
        assert!(l.due(0, cutoff, 0, 100).unwrap().is_empty());
        assert_eq!(l.len(), 5);
        // A slack of 10 days: the cutoff must move on that far before the next scan.
        assert!(l.due(0, DAY * 108, DAY * 10, 100).unwrap().is_empty());
        assert_eq!(l.due(0, DAY * 115, DAY * 10, 100).unwrap().len(), 5);
    }

    #[test]
    fn compaction_keeps_every_current_entry_through_a_reload() {
        let mut log = Log::new();
        let mut l = Ledgers::new(log.ks.clone());
        for s in 1..=4u64 {
            let (a, b) = (format!("r{s}-0"), format!("r{s}-1"));
            log.commit(
                &mut l,
                &[("u", &a, entry(100, 0)), ("u", &b, entry(100, 0))],
                &[],
            );
            // The second entry of each segment is updated later: every such segment is
            // half current.
            log.commit(&mut l, &[("u", &b, entry(100, 1))], &[]);
        }
        let before = l.entries().unwrap();
        let (target, chunks, removed) = l.compact(0).unwrap().unwrap();
        // Segments 1, 3, 5 and 7 are half current; the rewrite goes to 7.
        assert_eq!(target, 7);
        assert_eq!(removed, vec![(1, 0), (3, 0), (5, 0), (7, 0)]);
        for (seq, c) in removed {
            log.ks.remove(chunk_key(0, seq, c)).unwrap();
        }
        for (n, bytes) in chunks {
            log.ks.insert(chunk_key(0, target, n), bytes).unwrap();
        }
        assert_eq!(l.entries().unwrap(), before);
        assert_eq!(log.reload().entries().unwrap(), before);
    }
}

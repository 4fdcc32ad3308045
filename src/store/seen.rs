//! Which keys of a keyspace the store may hold, in memory: so that a receipt id never seen
//! (almost every receipt) or a user never seen is known absent without a read, which for a
//! miss searches the keyspace's memtables and asks each table's filter (for the ledger, a
//! tenth of the fold's CPU).
//!
//! Per partition, a set of 32-bit hashes of the keys written since the set was built from
//! a scan of the partition's keys. A key is never taken out when its entry
//! is deleted (another key may share its hash): the set answers "maybe" for some keys the
//! store no longer holds, and a "maybe" is checked by a read, but never "no" for a key it
//! holds. Once the deletes since a partition's build outnumber half its hashes, the set is
//! dropped and built again from a scan at its next use, so that it stays the size of the
//! live ledger. A set is about 4 to 9 bytes a key (a table of `u32`).
//!
//! Order with the writes ([`super::Store::apply`]): a batch's hashes go in, its partition's
//! set built first if it was not, before the batch reaches the memtables; a set is dropped
//! only after its batch is there. So a scan either sees a batch or comes before its hashes
//! go in, and a key the store holds is always in its partition's set.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock};

use fjall::Keyspace;

use super::{io, StoreError};

/// The keys one keyspace (keyed partition first) may hold.
pub(super) struct Known {
    keyspace: Keyspace,
    /// What a failed scan says it was scanning.
    scan: &'static str,
    seen: RwLock<Seen>,
    /// Batches between [`Self::written`] and the end of their [`Writing`]: a set is
    /// dropped only by a batch alone in that span, so that no other batch's hashes, in the
    /// set but not yet in the memtables, are lost to a scan that comes before them.
    in_flight: AtomicUsize,
}

/// A batch between its hashes going in ([`Known::written`]) and its deletes counted
/// ([`Known::deleted`]), or its failure (dropped).
pub(super) struct Writing<'a>(&'a Known);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Known {
    /// Nothing known yet of `keyspace`: each partition's set is built at its first use.
    pub(super) fn new(keyspace: Keyspace, scan: &'static str) -> Self {
        Self {
            keyspace,
            scan,
            seen: RwLock::default(),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Whether the keyspace may hold `key`, of partition `p`: `false` means it does not.
    pub(super) fn may_hold(&self, p: i32, key: &[u8]) -> Result<bool, StoreError> {
        let hash = hash(key);
        let seen = self.seen.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(maybe) = seen.may_hold(p, hash) {
            return Ok(maybe);
        }
        drop(seen);
        let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
        self.build(&mut seen, p)?;
        Ok(seen.may_hold(p, hash) != Some(false))
    }

    /// A batch is about to write `written` (partition, hash): called before it reaches the
    /// memtables; the batch is in flight until the returned [`Writing`] ends.
    pub(super) fn written(&self, written: &[(i32, u32)]) -> Result<Writing<'_>, StoreError> {
        let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let writing = Writing(self);
        for &(p, hash) in written {
            self.build(&mut seen, p)?;
            seen.insert(p, hash);
        }
        Ok(writing)
    }

    /// The batch of `writing`, now in the memtables, deleted this many keys, by partition.
    pub(super) fn deleted(&self, writing: Writing<'_>, deleted: &BTreeMap<i32, u64>) {
        if deleted.is_empty() {
            return;
        }
        let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
        let alone = self.in_flight.load(Ordering::SeqCst) == 1;
        for (&p, &n) in deleted {
            seen.deleted(p, n, alone);
        }
        drop(writing);
    }

    /// Builds partition `p`'s set from a scan, unless built.
    fn build(&self, seen: &mut Seen, p: i32) -> Result<(), StoreError> {
        if seen.built(p) {
            return Ok(());
        }
        let mut hashes = Vec::new();
        for kv in self.keyspace.prefix(p.to_be_bytes()) {
            hashes.push(hash(&kv.key().map_err(io(self.scan))?));
        }
        seen.build(p, hashes);
        Ok(())
    }
}

/// The hash `key` is kept under: the low half of a 64-bit hash with a fixed seed (the
/// set's own table, seeded per process, hashes it again).
pub(super) fn hash(key: &[u8]) -> u32 {
    foldhash::fast::FixedState::default().hash_one(key) as u32
}

/// The keys of the partitions built so far, by partition.
#[derive(Default)]
struct Seen {
    partitions: HashMap<i32, Partition>,
}

#[derive(Default)]
struct Partition {
    hashes: hashbrown::HashSet<u32, foldhash::fast::RandomState>,
    /// Ledger keys deleted since the set was built.
    deleted: u64,
}

impl Seen {
    /// Whether partition `p`'s set is built.
    fn built(&self, p: i32) -> bool {
        self.partitions.contains_key(&p)
    }

    /// Whether partition `p` (built) may hold the key of `hash`: `None` when `p` is not
    /// built.
    fn may_hold(&self, p: i32, hash: u32) -> Option<bool> {
        self.partitions.get(&p).map(|s| s.hashes.contains(&hash))
    }

    /// Builds partition `p`'s set from `keys`, every ledger key the store holds for it.
    fn build(&mut self, p: i32, keys: impl IntoIterator<Item = u32>) {
        let mut part = Partition::default();
        part.hashes.extend(keys);
        self.partitions.insert(p, part);
    }

    /// A batch writes a key of `hash` to built partition `p`.
    fn insert(&mut self, p: i32, hash: u32) {
        if let Some(part) = self.partitions.get_mut(&p) {
            part.hashes.insert(hash);
        }
    }

    /// A stored batch deleted `n` keys of partition `p`: once the deletes outnumber half
    /// its hashes (and 1,024), the set goes, to be built again from a scan, if `may_drop`
    /// (no other batch is in flight).
    fn deleted(&mut self, p: i32, n: u64, may_drop: bool) {
        if let Some(part) = self.partitions.get_mut(&p) {
            part.deleted += n;
            if may_drop && part.deleted > (part.hashes.len() as u64 / 2).max(1_024) {
                self.partitions.remove(&p);
            }
        }
    }
}

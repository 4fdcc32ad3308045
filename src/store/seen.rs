//! Which ledger keys the store may hold, in memory: so that a receipt id never seen (almost
//! every receipt) is known absent without a read of the ledger keyspace, which for a miss
//! searches its memtables and asks each table's filter (a tenth of the fold's CPU).
//!
//! Per partition, a set of 32-bit hashes of the ledger keys written since the set was
//! built from a scan of the partition's ledger. A key is never taken out when its entry
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

use std::collections::HashMap;
use std::hash::BuildHasher;

/// The ledger keys of the partitions built so far, by partition.
#[derive(Default)]
pub(super) struct Seen {
    partitions: HashMap<i32, Partition>,
}

#[derive(Default)]
struct Partition {
    hashes: hashbrown::HashSet<u32, foldhash::fast::RandomState>,
    /// Ledger keys deleted since the set was built.
    deleted: u64,
}

impl Seen {
    /// The hash ledger key `key` is kept under: the low half of a 64-bit hash (the set's
    /// own table, seeded per process, hashes it again).
    pub(super) fn hash(key: &[u8]) -> u32 {
        foldhash::fast::FixedState::default().hash_one(key) as u32
    }

    /// Whether partition `p`'s set is built.
    pub(super) fn built(&self, p: i32) -> bool {
        self.partitions.contains_key(&p)
    }

    /// Whether partition `p` (built) may hold the key of `hash`: `None` when `p` is not
    /// built.
    pub(super) fn may_hold(&self, p: i32, hash: u32) -> Option<bool> {
        self.partitions.get(&p).map(|s| s.hashes.contains(&hash))
    }

    /// Builds partition `p`'s set from `keys`, every ledger key the store holds for it.
    pub(super) fn build(&mut self, p: i32, keys: impl IntoIterator<Item = u32>) {
        let mut part = Partition::default();
        part.hashes.extend(keys);
        self.partitions.insert(p, part);
    }

    /// A batch writes a key of `hash` to built partition `p`.
    pub(super) fn insert(&mut self, p: i32, hash: u32) {
        if let Some(part) = self.partitions.get_mut(&p) {
            part.hashes.insert(hash);
        }
    }

    /// A stored batch deleted `n` ledger keys of partition `p`: once they outnumber half
    /// its hashes, the set goes, to be built again from a scan.
    pub(super) fn deleted(&mut self, p: i32, n: u64) {
        if let Some(part) = self.partitions.get_mut(&p) {
            part.deleted += n;
            if part.deleted > (part.hashes.len() as u64 / 2).max(1_024) {
                self.partitions.remove(&p);
            }
        }
    }
}

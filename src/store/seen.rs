//! Which users the store may hold, in memory: so that a user never seen (every new
//! shopper) is known absent without a read, which for a miss searches the keyspace's
//! memtables and asks each table's filter.
//!
//! Per partition, a set of 32-bit hashes of the keys written since the set was built from
//! a scan of the partition's keys. Users are never deleted, so the set answers "maybe" only
//! for keys that share a hash with one held (checked by a read), and never "no" for a key
//! the store holds. A set is about 4 to 9 bytes a key (a table of `u32`).
//!
//! Order with the writes ([`super::Store::apply`]): a batch's hashes go in, its partition's
//! set built first if it was not, before the batch reaches the memtables. So a scan either
//! sees a batch or comes before its hashes go in, and a key the store holds is always in
//! its partition's set.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{PoisonError, RwLock};

use fjall::Keyspace;

use super::{io, StoreError};

/// The keys one keyspace (keyed partition first) may hold.
pub(super) struct Known {
    keyspace: Keyspace,
    /// What a failed scan says it was scanning.
    scan: &'static str,
    seen: RwLock<HashMap<i32, Hashes>>,
}

type Hashes = hashbrown::HashSet<u32, foldhash::fast::RandomState>;

impl Known {
    /// Nothing known yet of `keyspace`: each partition's set is built at its first use.
    pub(super) fn new(keyspace: Keyspace, scan: &'static str) -> Self {
        Self {
            keyspace,
            scan,
            seen: RwLock::default(),
        }
    }

    /// Whether the keyspace may hold `key`, of partition `p`: `false` means it does not.
    pub(super) fn may_hold(&self, p: i32, key: &[u8]) -> Result<bool, StoreError> {
        let hash = hash(key);
        let seen = self.seen.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(set) = seen.get(&p) {
            return Ok(set.contains(&hash));
        }
        drop(seen);
        let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
        Ok(self.build(&mut seen, p)?.contains(&hash))
    }

    /// A batch is about to write `written` (partition, hash): called before it reaches the
    /// memtables.
    pub(super) fn written(&self, written: &[(i32, u32)]) -> Result<(), StoreError> {
        let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
        for &(p, hash) in written {
            self.build(&mut seen, p)?.insert(hash);
        }
        Ok(())
    }

    /// Partition `p`'s set, built from a scan unless built.
    fn build<'a>(
        &self,
        seen: &'a mut HashMap<i32, Hashes>,
        p: i32,
    ) -> Result<&'a mut Hashes, StoreError> {
        match seen.entry(p) {
            std::collections::hash_map::Entry::Occupied(o) => Ok(o.into_mut()),
            std::collections::hash_map::Entry::Vacant(v) => {
                let mut hashes = Hashes::default();
                for kv in self.keyspace.prefix(p.to_be_bytes()) {
                    hashes.insert(hash(&kv.key().map_err(io(self.scan))?));
                }
                Ok(v.insert(hashes))
            }
        }
    }
}

/// The hash `key` is kept under: the low half of a 64-bit hash with a fixed seed (the
/// set's own table, seeded per process, hashes it again).
pub(super) fn hash(key: &[u8]) -> u32 {
    foldhash::fast::FixedState::default().hash_one(key) as u32
}

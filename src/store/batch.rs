//! A write batch applied to the memtables keyspace by keyspace, in key order.
//!
//! fjall applies a batch's writes to the memtables (skip lists) in the order they were
//! added. A commit adds them in hash-map order, so consecutive inserts land far apart in
//! skip lists of hundreds of thousands of keys, and most of their comparisons miss the CPU
//! cache. Applied in key order (by the keys' first 32 bytes), each insert walks nearly
//! the path of the one before. The sort is stable: two writes of one key keep their order,
//! so the batch means what it meant.

use fjall::{Database, Keyspace, UserKey, UserValue};

/// One write: a value, or a tombstone.
struct Write {
    /// The keyspace, as its index in [`Batch::keyspaces`]: a commit holds a million
    /// writes to a dozen keyspaces, and a handle per write cost a reference count each.
    keyspace: u8,
    key: UserKey,
    value: Option<UserValue>,
}

/// Writes collected for one atomic, ordered commit.
pub(crate) struct Batch {
    db: Database,
    /// The keyspaces written, in the order of their first write, each with its writes.
    keyspaces: Vec<(Keyspace, u64)>,
    writes: Vec<Write>,
    /// Whether `writes` are in key order, and stay so (nothing added since).
    sorted: bool,
}

impl Batch {
    /// An empty batch of `db`.
    pub(crate) fn new(db: &Database) -> Self {
        Self::with_capacity(db, 0)
    }

    /// An empty batch of `db` with room for `writes` writes: a commit's batch holds
    /// hundreds of thousands, and growing it by doubling copies them and touches fresh
    /// pages at every step.
    pub(crate) fn with_capacity(db: &Database, writes: usize) -> Self {
        Self {
            db: db.clone(),
            keyspaces: Vec::new(),
            writes: Vec::with_capacity(writes),
            sorted: false,
        }
    }

    /// The index of `keyspace` in [`Self::keyspaces`], added if new.
    fn keyspace(&mut self, keyspace: &Keyspace) -> u8 {
        let id = keyspace.id();
        let at = match self.keyspaces.iter().position(|(k, _)| k.id() == id) {
            Some(at) => at,
            None => {
                self.keyspaces.push((keyspace.clone(), 0));
                self.keyspaces.len() - 1
            }
        };
        self.keyspaces[at].1 += 1;
        // The store has a dozen keyspaces; a batch could never name 256.
        u8::try_from(at).expect("at most 256 keyspaces in one batch")
    }

    /// How many writes the batch holds.
    pub(crate) fn len(&self) -> usize {
        self.writes.len()
    }

    /// How many writes the batch holds for each keyspace it writes.
    pub(crate) fn per_keyspace(&self) -> &[(Keyspace, u64)] {
        &self.keyspaces
    }

    /// Sets `key` to `value` in `keyspace`.
    pub(crate) fn insert<K: Into<UserKey>, V: Into<UserValue>>(
        &mut self,
        keyspace: &Keyspace,
        key: K,
        value: V,
    ) {
        self.sorted = false;
        let keyspace = self.keyspace(keyspace);
        self.writes.push(Write {
            keyspace,
            key: key.into(),
            value: Some(value.into()),
        });
    }

    /// Removes `key` from `keyspace`.
    pub(crate) fn remove<K: Into<UserKey>>(&mut self, keyspace: &Keyspace, key: K) {
        self.sorted = false;
        let keyspace = self.keyspace(keyspace);
        self.writes.push(Write {
            keyspace,
            key: key.into(),
            value: None,
        });
    }

    /// Puts the writes in key order (by keyspace, then by the keys' first 31 bytes), for
    /// [`Self::commit`].
    pub(crate) fn sort(&mut self) {
        // By the keyspace's index and the keys' first 31 bytes, as two integers: no call
        // to memcmp per comparison (keys share long prefixes: partition, kind, period,
        // board). Keys alike in those bytes keep their batch order, which costs a little
        // locality and nothing else: the order of the writes only matters for writes of
        // one key, and the sort is stable.
        self.writes.sort_by_cached_key(|w| {
            let mut head = [0u8; 32];
            head[0] = w.keyspace;
            let n = w.key.len().min(31);
            head[1..=n].copy_from_slice(&w.key[..n]);
            let (a, b) = head.split_at(16);
            (
                u128::from_be_bytes(a.try_into().unwrap_or_default()),
                u128::from_be_bytes(b.try_into().unwrap_or_default()),
            )
        });
        self.sorted = true;
    }

    /// Commits every write atomically (not yet durably: see `Database::persist`), in key
    /// order ([`Self::sort`], unless done already).
    pub(crate) fn commit(mut self) -> fjall::Result<()> {
        if !self.sorted {
            self.sort();
        }
        let mut batch = fjall::OwnedWriteBatch::with_capacity(self.db.clone(), self.writes.len());
        for w in self.writes {
            let keyspace = &self.keyspaces[usize::from(w.keyspace)].0;
            match w.value {
                Some(v) => batch.insert(keyspace, w.key, v),
                None => batch.remove(keyspace, w.key),
            }
        }
        batch.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The sort must not reorder two writes of one key: a remove then an insert of the same
    // board entry (a score that went and came back within a batch) must leave the entry.
    #[test]
    fn writes_of_one_key_keep_their_order_and_every_key_lands() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::builder(dir.path()).open().unwrap();
        let a = db.keyspace("a", Default::default).unwrap();
        let b = db.keyspace("b", Default::default).unwrap();
        let mut batch = Batch::new(&db);
        batch.insert(&b, "z", "1");
        batch.insert(&a, "k", "old");
        batch.remove(&a, "k");
        batch.insert(&a, "k", "new");
        batch.insert(&a, "j", "x");
        batch.remove(&b, "y");
        batch.insert(&b, "y", "2");
        batch.insert(&a, "gone", "x");
        batch.remove(&a, "gone");
        batch.commit().unwrap();
        assert_eq!(&*a.get("k").unwrap().unwrap(), b"new");
        assert_eq!(&*a.get("j").unwrap().unwrap(), b"x");
        assert!(a.get("gone").unwrap().is_none());
        assert_eq!(&*b.get("y").unwrap().unwrap(), b"2");
        assert_eq!(&*b.get("z").unwrap().unwrap(), b"1");
    }
}

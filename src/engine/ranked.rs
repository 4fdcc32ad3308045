//! One leaderboard in memory: its entries in rank order (highest score first, ties by
//! user id ascending), held as a list of sorted blocks so that an update is two binary
//! searches and a move inside one block, and a rank or a top N is O(log n) without
//! walking the entries above.
//!
//! An entry is 32 bytes: the score, the first 16 bytes of the user id (so that ties are
//! decided without reaching the id, unless both ids are longer and share those bytes)
//! and the user's index in its partition's [`Ids`]. The ids themselves are kept once per partition, shared by its boards.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

/// Entries per block at most before it splits: small enough that an insert moves at most
/// 4 KiB, large enough that the block list stays short (about 10,000 blocks at a million
/// users, 14 steps of a binary search).
const BLOCK_MAX: usize = 128;

/// The user ids of one partition, each interned once to a dense `u32` index that the
/// partition's boards hold instead of the id.
#[derive(Default)]
pub(crate) struct Ids {
    by_id: HashMap<Arc<str>, u32, foldhash::fast::RandomState>,
    ids: Vec<Arc<str>>,
    /// Bytes of the ids' allocations (each with its two reference counts).
    id_bytes: usize,
}

impl Ids {
    /// The index of `id`, interned if new.
    pub(crate) fn intern(&mut self, id: &str) -> u32 {
        if let Some(&at) = self.by_id.get(id) {
            return at;
        }
        let at = u32::try_from(self.ids.len()).expect("fewer than 2^32 users in a partition");
        let id: Arc<str> = Arc::from(id);
        self.id_bytes += id.len() + 16;
        self.ids.push(Arc::clone(&id));
        self.by_id.insert(id, at);
        at
    }

    /// The index of `id`, if interned.
    #[cfg(test)]
    pub(crate) fn get(&self, id: &str) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    /// The id at `at`.
    pub(crate) fn id(&self, at: u32) -> &str {
        &self.ids[at as usize]
    }

    /// Bytes held: the ids, their index and the map (estimated from capacities).
    pub(crate) fn bytes(&self) -> u64 {
        let map = self.by_id.capacity() * (16 + 4 + 1);
        (self.id_bytes + map + self.ids.capacity() * 16) as u64
    }
}

/// The first 16 bytes of an id as two big-endian integers, zero-padded: their order is
/// the ids' order wherever the two differ within those bytes.
fn tie_of(id: &str) -> Tie {
    let mut b = [0u8; 16];
    let n = id.len().min(16);
    b[..n].copy_from_slice(&id.as_bytes()[..n]);
    let (hi, lo) = b.split_at(8);
    (
        u64::from_be_bytes(hi.try_into().unwrap_or_default()),
        u64::from_be_bytes(lo.try_into().unwrap_or_default()),
    )
}

/// An id's first 16 bytes ([`tie_of`]).
type Tie = (u64, u64);

/// One entry of a board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    score: i64,
    tie: Tie,
    user: u32,
}

/// Where a probe (`score`, `id`) sorts against an entry: `Less` when the entry ranks
/// above it.
fn entry_vs(ids: &Ids, e: &Entry, score: i64, tie: Tie, id: &str) -> Ordering {
    score.cmp(&e.score).then(e.tie.cmp(&tie)).then_with(|| {
        // Equal in their first 16 bytes. Ids hold no NUL (the codec rejects control
        // characters), so a probe shorter than 16 bytes is then that very id; only
        // ids of 16 bytes or more are compared whole.
        if id.len() < 16 {
            Ordering::Equal
        } else {
            ids.id(e.user).cmp(id)
        }
    })
}

/// One board's entries in rank order.
#[derive(Default)]
pub(crate) struct Ranked {
    blocks: Vec<Vec<Entry>>,
    /// Entries before each block: rebuilt by [`Self::settle`] after a batch of updates.
    before: Vec<u64>,
    len: u64,
}

impl Ranked {
    /// A board of `entries` (score, user index), built with one sort.
    pub(crate) fn build(ids: &Ids, mut entries: Vec<(i64, u32)>) -> Self {
        entries.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| ids.id(a.1).cmp(ids.id(b.1))));
        let len = entries.len() as u64;
        let blocks = entries
            .chunks(BLOCK_MAX / 2)
            .map(|c| {
                c.iter()
                    .map(|&(score, user)| Entry {
                        score,
                        tie: tie_of(ids.id(user)),
                        user,
                    })
                    .collect()
            })
            .collect();
        let mut r = Self {
            blocks,
            before: Vec::new(),
            len,
        };
        r.settle();
        r
    }

    /// Entries on the board.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The first block whose last entry does not rank above the probe.
    fn block_of(&self, ids: &Ids, score: i64, tie: Tie, id: &str) -> usize {
        self.blocks.partition_point(|b| {
            b.last()
                .is_some_and(|e| entry_vs(ids, e, score, tie, id) == Ordering::Less)
        })
    }

    /// Adds `user` (whose id is `ids.id(user)`) at `score`.
    pub(crate) fn insert(&mut self, ids: &Ids, score: i64, user: u32) {
        let id = ids.id(user);
        let tie = tie_of(id);
        let e = Entry { score, tie, user };
        self.len += 1;
        if self.blocks.is_empty() {
            self.blocks.push(vec![e]);
            return;
        }
        let b = self
            .block_of(ids, score, tie, id)
            .min(self.blocks.len() - 1);
        let block = &mut self.blocks[b];
        let at = block.partition_point(|x| entry_vs(ids, x, score, tie, id) == Ordering::Less);
        block.insert(at, e);
        if block.len() > BLOCK_MAX {
            let upper = block.split_off(BLOCK_MAX / 2);
            self.blocks.insert(b + 1, upper);
        }
    }

    /// Removes `user` at `score`; whether it was there.
    pub(crate) fn remove(&mut self, ids: &Ids, score: i64, user: u32) -> bool {
        let id = ids.id(user);
        let tie = tie_of(id);
        let b = self.block_of(ids, score, tie, id);
        let Some(block) = self.blocks.get_mut(b) else {
            return false;
        };
        let at = block.partition_point(|x| entry_vs(ids, x, score, tie, id) == Ordering::Less);
        if block
            .get(at)
            .is_none_or(|x| x.user != user || x.score != score)
        {
            return false;
        }
        block.remove(at);
        if block.is_empty() {
            self.blocks.remove(b);
        }
        self.len -= 1;
        true
    }

    /// Rebuilds the counts of entries before each block: after a batch of updates, before
    /// the board is read.
    pub(crate) fn settle(&mut self) {
        self.before.clear();
        let mut n = 0u64;
        for b in &self.blocks {
            self.before.push(n);
            n += b.len() as u64;
        }
        debug_assert_eq!(n, self.len);
    }

    /// How many entries rank above (`score`, `id`): higher scores, and equal scores with a
    /// smaller id. The board must be settled.
    pub(crate) fn above(&self, ids: &Ids, score: i64, id: &str) -> u64 {
        let tie = tie_of(id);
        let b = self.block_of(ids, score, tie, id);
        match self.blocks.get(b) {
            None => self.len,
            Some(block) => {
                self.before[b]
                    + block.partition_point(|x| entry_vs(ids, x, score, tie, id) == Ordering::Less)
                        as u64
            }
        }
    }

    /// The first `limit` entries, in rank order: (score, user index).
    pub(crate) fn top(&self, limit: usize) -> impl Iterator<Item = (i64, u32)> + '_ {
        self.blocks
            .iter()
            .flatten()
            .take(limit)
            .map(|e| (e.score, e.user))
    }

    /// Bytes held (estimated from capacities).
    pub(crate) fn bytes(&self) -> u64 {
        let entries: usize = self.blocks.iter().map(Vec::capacity).sum();
        (entries * std::mem::size_of::<Entry>()
            + self.blocks.capacity() * 24
            + self.before.capacity() * 8) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    // The board against a full sort: after random inserts and removes (many ties, ids
    // sharing their first 8 bytes), every rank and the top N agree.
    proptest! {
        #[test]
        fn ranks_and_tops_equal_a_full_sort(
            ops in proptest::collection::vec((0u8..3, 0usize..60, -3i64..4), 1..2_000),
        ) {
            let mut ids = Ids::default();
            let names: Vec<String> = (0..60)
                .map(|i| if i % 2 == 0 { format!("user-{i}") } else { format!("a-long-shared-prefix-{i}") })
                .collect();
            for n in &names {
                ids.intern(n);
            }
            let mut board = Ranked::default();
            let mut model: BTreeSet<(std::cmp::Reverse<i64>, String)> = BTreeSet::new();
            let mut score: HashMap<usize, i64> = HashMap::new();
            for (op, who, s) in ops {
                let user = ids.get(&names[who]).unwrap();
                if let Some(old) = score.remove(&who) {
                    prop_assert!(board.remove(&ids, old, user));
                    model.remove(&(std::cmp::Reverse(old), names[who].clone()));
                }
                if op != 0 {
                    board.insert(&ids, s, user);
                    model.insert((std::cmp::Reverse(s), names[who].clone()));
                    score.insert(who, s);
                }
            }
            board.settle();
            prop_assert_eq!(board.len(), model.len() as u64);
            let top: Vec<(i64, String)> =
                board.top(usize::MAX).map(|(s, u)| (s, ids.id(u).to_owned())).collect();
            let want: Vec<(i64, String)> = model.iter().map(|(s, id)| (s.0, id.clone())).collect();
            prop_assert_eq!(&top, &want);
            for (i, (s, id)) in want.iter().enumerate() {
                prop_assert_eq!(board.above(&ids, *s, id), i as u64);
            }
            prop_assert_eq!(board.above(&ids, i64::MIN, ""), board.len());
        }
    }

    #[test]
    fn a_large_board_splits_into_blocks_and_keeps_its_order() {
        let mut ids = Ids::default();
        let mut board = Ranked::default();
        for i in 0..5_000u32 {
            let u = ids.intern(&format!("u{i:05}"));
            board.insert(&ids, i64::from(i % 7), u);
        }
        board.settle();
        assert!(board.blocks.len() > 10);
        let all: Vec<(i64, u32)> = board.top(usize::MAX).collect();
        assert!(all
            .windows(2)
            .all(|w| w[0].0 > w[1].0 || (w[0].0 == w[1].0 && ids.id(w[0].1) < ids.id(w[1].1))));
        let rebuilt = Ranked::build(&ids, all.clone());
        assert_eq!(rebuilt.top(usize::MAX).collect::<Vec<_>>(), all);
    }
}

//! One leaderboard in memory: its entries in rank order (highest score first, ties by
//! user id ascending), held as a list of sorted blocks so that an update is two binary
//! searches and a move inside one block, and a rank or a top N is O(log n) without
//! walking the entries above.
//!
//! An entry is 8 bytes (12 in a block holding a score beyond an `i32`): the score and
//! the user's index in its partition's [`Ids`], kept in two arrays per block so that a
//! search reads scores alone until it meets equal ones; only then are ids compared. The ids themselves are kept once per partition, in
//! one byte arena shared by its boards.

use std::hash::BuildHasher;

/// Entries per block at most before it splits: small enough that an insert moves at most
/// 1.5 KiB, large enough that the block list stays short (about 10,000 blocks at a million
/// users, 14 steps of a binary search).
const BLOCK_MAX: usize = 128;

/// The user ids of one partition, each interned once to a dense `u32` index that the
/// partition's boards hold instead of the id: the bytes of every id in one arena, where
/// each ends, and a table of indexes hashed by id (about 20 bytes a user with ids of 10).
#[derive(Default)]
pub(crate) struct Ids {
    table: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::FixedState,
    arena: Vec<u8>,
    /// Where each id ends in `arena` (it starts where the one before ends).
    ends: Vec<u32>,
}

impl Ids {
    /// The index of `id`, interned if new.
    pub(crate) fn intern(&mut self, id: &str) -> u32 {
        // Ids are hashed as bytes, so that a rehash reads the arena without checking UTF-8.
        let hash = self.hasher.hash_one(id.as_bytes());
        let Ids {
            table,
            hasher,
            arena,
            ends,
        } = self;
        if let Some(&at) = table.find(hash, |&at| id_at(arena, ends, at) == id.as_bytes()) {
            return at;
        }
        let at = u32::try_from(ends.len()).expect("fewer than 2^32 users in a partition");
        table.insert_unique(hash, at, |&at| hasher.hash_one(id_at(arena, ends, at)));
        arena.extend_from_slice(id.as_bytes());
        // 4 GiB of ids in one partition (hundreds of millions of users) is past any
        // budget this process is given.
        ends.push(u32::try_from(arena.len()).expect("less than 4 GiB of user ids in a partition"));
        at
    }

    /// The index of `id`, if interned.
    #[cfg(test)]
    pub(crate) fn get(&self, id: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(id.as_bytes());
        self.table
            .find(hash, |&at| self.raw(at) == id.as_bytes())
            .copied()
    }

    /// The id at `at`.
    pub(crate) fn id(&self, at: u32) -> &str {
        // Only whole ids (from `&str`) are ever appended, so every slice is UTF-8.
        std::str::from_utf8(self.raw(at)).unwrap_or_default()
    }

    /// The id at `at`, as bytes: what comparisons read (byte order is the ids' order),
    /// without checking UTF-8 again each time.
    fn raw(&self, at: u32) -> &[u8] {
        id_at(&self.arena, &self.ends, at)
    }

    /// Bytes held: the arena, the ends and the table (from their capacities).
    pub(crate) fn bytes(&self) -> u64 {
        (self.arena.capacity() + self.ends.capacity() * 4 + self.table.capacity() * 5) as u64
    }
}

/// Entries a block grows by when full: blocks hold 64 to 128 entries, so growing in steps
/// keeps the room they hold unused under a fifth, where doubling left up to half.
const BLOCK_GROWTH: usize = 16;

/// A block's scores: 4 bytes each while every one fits an `i32` (most do: a day's, week's
/// or month's xp, coins and spend), 8 once one does not.
enum Scores {
    Narrow(Vec<i32>),
    Wide(Vec<i64>),
}

impl Default for Scores {
    fn default() -> Self {
        Scores::Narrow(Vec::new())
    }
}

impl Scores {
    /// `scores`, narrow if every one fits.
    fn of(scores: impl Iterator<Item = i64> + Clone) -> Self {
        match scores
            .clone()
            .map(i32::try_from)
            .collect::<Result<Vec<i32>, _>>()
        {
            Ok(mut narrow) => {
                // Collected through `Result`, the vector grew by doubling.
                narrow.shrink_to_fit();
                Scores::Narrow(narrow)
            }
            Err(_) => Scores::Wide(scores.collect()),
        }
    }

    fn get(&self, i: usize) -> i64 {
        match self {
            Scores::Narrow(v) => i64::from(v[i]),
            Scores::Wide(v) => v[i],
        }
    }

    /// The first index from `from` whose score is not above `score` (`equal: false`), or
    /// not equal to it (`equal: true`): scores are in descending order.
    fn point(&self, from: usize, score: i64, equal: bool) -> usize {
        let keep = |s: i64| if equal { s == score } else { s > score };
        from + match self {
            Scores::Narrow(v) => v[from..].partition_point(|&s| keep(i64::from(s))),
            Scores::Wide(v) => v[from..].partition_point(|&s| keep(s)),
        }
    }

    fn insert(&mut self, at: usize, score: i64) {
        if let Scores::Narrow(v) = self {
            match i32::try_from(score) {
                Ok(narrow) => {
                    grow(v);
                    v.insert(at, narrow);
                    return;
                }
                Err(_) => {
                    let mut wide: Vec<i64> = Vec::with_capacity(v.capacity());
                    wide.extend(v.iter().map(|&s| i64::from(s)));
                    *self = Scores::Wide(wide);
                }
            }
        }
        if let Scores::Wide(v) = self {
            grow(v);
            v.insert(at, score);
        }
    }

    fn remove(&mut self, at: usize) {
        match self {
            Scores::Narrow(v) => {
                v.remove(at);
            }
            Scores::Wide(v) => {
                v.remove(at);
            }
        }
    }

    fn split_off(&mut self, at: usize) -> Scores {
        match self {
            Scores::Narrow(v) => {
                let upper = Scores::Narrow(v.split_off(at));
                v.shrink_to(at + BLOCK_GROWTH);
                upper
            }
            Scores::Wide(v) => {
                let upper = Scores::Wide(v.split_off(at));
                v.shrink_to(at + BLOCK_GROWTH);
                upper
            }
        }
    }

    fn iter(&self) -> Box<dyn Iterator<Item = i64> + '_> {
        match self {
            Scores::Narrow(v) => Box::new(v.iter().map(|&s| i64::from(s))),
            Scores::Wide(v) => Box::new(v.iter().copied()),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Scores::Narrow(v) => v.capacity() * 4,
            Scores::Wide(v) => v.capacity() * 8,
        }
    }
}

/// Room for one more entry in a full block's array: [`BLOCK_GROWTH`] more, not double.
fn grow<T>(v: &mut Vec<T>) {
    if v.len() == v.capacity() {
        v.reserve_exact(BLOCK_GROWTH.min(BLOCK_MAX + 1 - v.len().min(BLOCK_MAX)));
    }
}

/// The bytes of id `at` in `arena`, where `ends` says each id ends.
fn id_at<'a>(arena: &'a [u8], ends: &[u32], at: u32) -> &'a [u8] {
    let end = ends[at as usize] as usize;
    let start = match at {
        0 => 0,
        _ => ends[at as usize - 1] as usize,
    };
    &arena[start..end]
}

/// One block of a board: scores and users, index by index.
#[derive(Default)]
struct Block {
    scores: Scores,
    users: Vec<u32>,
}

impl Block {
    fn len(&self) -> usize {
        self.users.len()
    }

    /// The entries whose score equals `score`: a range, found by scores alone.
    fn equal(&self, score: i64) -> std::ops::Range<usize> {
        let first = self.scores.point(0, score, false);
        first..self.scores.point(first, score, true)
    }

    /// How many entries rank above the probe.
    fn above(&self, ids: &Ids, score: i64, id: &str) -> usize {
        // The scores alone first: entries with a higher score are above, lower below;
        // ids are compared only among the equal scores.
        let run = self.equal(score);
        run.start + self.users[run].partition_point(|&u| ids.raw(u) < id.as_bytes())
    }

    /// Where `user` is at `score`, if in this block: found among the equal scores by its
    /// index alone, with no id read.
    fn find(&self, score: i64, user: u32) -> Option<usize> {
        let run = self.equal(score);
        let first = run.start;
        self.users[run]
            .iter()
            .position(|&u| u == user)
            .map(|at| first + at)
    }

    fn insert(&mut self, at: usize, score: i64, user: u32) {
        self.scores.insert(at, score);
        grow(&mut self.users);
        self.users.insert(at, user);
    }

    fn remove(&mut self, at: usize) {
        self.scores.remove(at);
        self.users.remove(at);
    }

    fn split_off(&mut self, at: usize) -> Block {
        let upper = Block {
            scores: self.scores.split_off(at),
            users: self.users.split_off(at),
        };
        self.users.shrink_to(at + BLOCK_GROWTH);
        upper
    }

    fn bytes(&self) -> usize {
        self.scores.bytes() + self.users.capacity() * 4
    }

    /// The last entry (score, user), if any.
    fn last(&self) -> Option<(i64, u32)> {
        let i = self.len().checked_sub(1)?;
        Some((self.scores.get(i), self.users[i]))
    }
}

/// One board's entries in rank order.
#[derive(Default)]
pub(crate) struct Ranked {
    blocks: Vec<Block>,
    /// Each block's last entry (score, user), kept beside the blocks so that finding a
    /// block reads one small array, not a block's heap arrays at each step of the search.
    lasts: Vec<(i64, u32)>,
    /// Entries before each block: rebuilt by [`Self::settle`] after a batch of updates.
    before: Vec<u64>,
    len: u64,
}

impl Ranked {
    /// A board of `entries` (score, user index), built with one sort.
    pub(crate) fn build(ids: &Ids, mut entries: Vec<(i64, u32)>) -> Self {
        entries.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| ids.raw(a.1).cmp(ids.raw(b.1))));
        let len = entries.len() as u64;
        // Blocks built three-quarters full: room for inserts before the first split.
        let blocks: Vec<Block> = entries
            .chunks(BLOCK_MAX * 3 / 4)
            .map(|c| Block {
                scores: Scores::of(c.iter().map(|e| e.0)),
                users: c.iter().map(|e| e.1).collect(),
            })
            .collect();
        let mut r = Self {
            lasts: blocks.iter().filter_map(Block::last).collect(),
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
    fn block_of(&self, ids: &Ids, score: i64, id: &str) -> usize {
        self.lasts
            .partition_point(|&(s, u)| s > score || (s == score && ids.raw(u) < id.as_bytes()))
    }

    /// Adds `user` (whose id is `ids.id(user)`) at `score`.
    pub(crate) fn insert(&mut self, ids: &Ids, score: i64, user: u32) {
        let id = ids.id(user);
        self.len += 1;
        if self.blocks.is_empty() {
            self.blocks.push(Block::default());
            self.lasts.push((score, user));
        }
        let b = self.block_of(ids, score, id).min(self.blocks.len() - 1);
        let block = &mut self.blocks[b];
        let at = block.above(ids, score, id);
        block.insert(at, score, user);
        if block.len() > BLOCK_MAX {
            let upper = block.split_off(BLOCK_MAX / 2);
            let upper_last = upper.last();
            self.blocks.insert(b + 1, upper);
            self.lasts.extend(upper_last);
            // `lasts` gained one entry at its end; moved into place, it is b + 1's.
            self.lasts[b + 1..].rotate_right(1);
        }
        if let Some(last) = self.blocks[b].last() {
            self.lasts[b] = last;
        }
    }

    /// Removes `user` at `score`; whether it was there.
    pub(crate) fn remove(&mut self, ids: &Ids, score: i64, user: u32) -> bool {
        let id = ids.id(user);
        let b = self.block_of(ids, score, id);
        let Some(block) = self.blocks.get_mut(b) else {
            return false;
        };
        let Some(at) = block.find(score, user) else {
            return false;
        };
        block.remove(at);
        match block.last() {
            Some(last) => self.lasts[b] = last,
            None => {
                self.blocks.remove(b);
                self.lasts.remove(b);
            }
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
        let b = self.block_of(ids, score, id);
        match self.blocks.get(b) {
            None => self.len,
            Some(block) => self.before[b] + block.above(ids, score, id) as u64,
        }
    }

    /// The first `limit` entries, in rank order: (score, user index).
    pub(crate) fn top(&self, limit: usize) -> impl Iterator<Item = (i64, u32)> + '_ {
        self.blocks
            .iter()
            .flat_map(|b| b.scores.iter().zip(b.users.iter().copied()))
            .take(limit)
    }

    /// Bytes held (from capacities).
    pub(crate) fn bytes(&self) -> u64 {
        let blocks: usize = self.blocks.iter().map(Block::bytes).sum();
        (blocks
            + self.blocks.capacity() * std::mem::size_of::<Block>()
            + self.lasts.capacity() * std::mem::size_of::<(i64, u32)>()
            + self.before.capacity() * 8) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashMap};

    // The board against a full sort: after random inserts and removes (many ties, ids
    // sharing their first 8 bytes, scores beyond an i32), every rank and the top N agree.
    proptest! {
        #[test]
        fn ranks_and_tops_equal_a_full_sort(
            ops in proptest::collection::vec(
                (0u8..3, 0usize..60, prop_oneof![
                    8 => -3i64..4,
                    1 => Just(i64::MAX),
                    1 => Just(i64::MIN + 1),
                    1 => Just(3_000_000_000i64),
                ]),
                1..2_000,
            ),
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

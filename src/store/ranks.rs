//! Rank counts: how many users of a board sit in each narrow score range, so that a rank is
//! the sum of the counts of the ranges above the user plus the few index entries above it
//! in its own range, whatever the rank.
//!
//! `rank_counts`: `scope | board (u8) | descending bucket (u32 BE)` -> users (u64 BE),
//! where the scope is `partition | 'A'` for the all-time boards and `partition | kind |
//! period key | 0x00` for a period's. Written in the commit batch of the scores they count,
//! from the batch's changes summed per bucket (one read and one write per bucket touched,
//! however many users moved through it).
//!
//! A bucket is exact below 64 and then 1/64 of a power of two wide (scores 1,024 to 1,039
//! share one): at most 7,488 buckets for any i64 score, so summing the counts above a user
//! reads a bounded number of keys, and the walk inside its own bucket reads only users
//! within 1.6% of its score.

use std::collections::HashMap;

/// The maps of counts by bucket key: keys made here from scores (not from input), hashed
/// with foldhash rather than SipHash, which showed at 3% of the engine's CPU.
type Counts = HashMap<Vec<u8>, i64, foldhash::fast::RandomState>;

use super::{io, Batch, Board, Store, StoreError};

/// Scores below this are their own bucket.
const EXACT: u64 = 64;
/// Mantissa bits kept above the leading one.
const BITS: u32 = 6;

/// The bucket of a non-negative magnitude: order-preserving.
fn magnitude_bucket(v: u64) -> i64 {
    if v < EXACT {
        return v as i64;
    }
    let e = 63 - v.leading_zeros(); // >= 6
    let m = (v >> (e - BITS)) & (EXACT - 1);
    EXACT as i64 + i64::from(e - BITS) * EXACT as i64 + m as i64
}

/// The smallest magnitude of a magnitude bucket.
fn magnitude_min(b: i64) -> u64 {
    if b < EXACT as i64 {
        return b as u64;
    }
    let e = (b - EXACT as i64) / EXACT as i64 + i64::from(BITS);
    let m = (b - EXACT as i64) % EXACT as i64;
    u128::from(EXACT + m as u64)
        .checked_shl((e as u32) - BITS)
        .and_then(|x| u64::try_from(x).ok())
        .unwrap_or(u64::MAX)
}

/// The largest magnitude of a magnitude bucket.
fn magnitude_max(b: i64) -> u64 {
    if b < EXACT as i64 {
        return b as u64;
    }
    magnitude_min(b + 1).saturating_sub(1).max(magnitude_min(b))
}

/// The bucket of a score: order-preserving (a higher score never has a lower bucket).
pub(super) fn bucket(score: i64) -> i64 {
    if score >= 0 {
        magnitude_bucket(score as u64)
    } else {
        -magnitude_bucket(score.unsigned_abs())
    }
}

/// The highest score of a bucket.
pub(super) fn bucket_max(b: i64) -> i64 {
    if b >= 0 {
        i64::try_from(magnitude_max(b)).unwrap_or(i64::MAX)
    } else {
        // Scores -max..=-min of the magnitude bucket -b: the highest is -min.
        let min = magnitude_min(-b);
        0i64.checked_sub_unsigned(min).unwrap_or(i64::MIN)
    }
}

/// The all-time boards' scope of a partition.
pub(super) fn all_time_scope(partition: i32) -> Vec<u8> {
    let mut k = partition.to_be_bytes().to_vec();
    k.push(b'A');
    k
}

fn count_key(scope: &[u8], board: Board, bucket: i64) -> Vec<u8> {
    count_key_tagged(scope, board.tag(), bucket)
}

fn count_key_tagged(scope: &[u8], board_tag: u8, bucket: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(scope.len() + 9);
    k.extend_from_slice(scope);
    k.push(board_tag);
    // Descending: the highest bucket first, as on the boards.
    k.extend_from_slice(&(!super::ordered(bucket)).to_be_bytes());
    k
}

/// One batch's changes to the rank counts, summed per bucket: by scope, then by (board,
/// bucket), so that a move looks its scope up by reference and allocates nothing (a
/// count key per move was most of this type's cost).
#[derive(Default)]
pub(super) struct RankDeltas {
    deltas: HashMap<Vec<u8>, ScopeDeltas, foldhash::fast::RandomState>,
    /// Scopes whose counts the batch drops (periods no longer kept).
    dropped: Vec<Vec<u8>>,
}

/// One scope's summed moves, by (board tag, bucket).
type ScopeDeltas = HashMap<(u8, i64), i64, foldhash::fast::RandomState>;

/// The rank counts a prepared batch writes, for [`RankCache::applied`] once it is stored.
#[derive(Default)]
pub(super) struct RankWrites {
    /// Scopes dropped, applied first (the batch removes their counts before it writes
    /// the new ones).
    dropped: Vec<Vec<u8>>,
    /// Each bucket's count after the batch (0: removed).
    counts: Vec<(Vec<u8>, i64)>,
}

/// The stored rank counts of the buckets commits have touched: a commit reads a bucket's
/// count here before the store, so that summing a batch's moves into the counts does not
/// cost a point read per bucket. Exact by construction: it changes only with the batches
/// it describes, once they are stored ([`Self::applied`]), and the one other writer of
/// rank counts, the index fill, empties it.
#[derive(Default)]
pub(super) struct RankCache {
    counts: std::sync::Mutex<Counts>,
}

impl RankCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A stored batch's rank counts are now the store's.
    pub(super) fn applied(&self, writes: RankWrites) {
        let mut counts = self.lock();
        for scope in &writes.dropped {
            counts.retain(|k, _| !k.starts_with(scope));
        }
        counts.extend(writes.counts);
    }

    /// Forgets every count (the store's were written by other means).
    pub(super) fn clear(&self) {
        self.lock().clear();
    }
}

impl RankDeltas {
    /// A user's score on `board` in `scope` moved from `old` to `new` (`None`: not on it).
    pub(super) fn moved(&mut self, scope: &[u8], board: Board, old: Option<i64>, new: Option<i64>) {
        let (old, new) = (old.map(bucket), new.map(bucket));
        if old == new {
            return;
        }
        let deltas = match self.deltas.get_mut(scope) {
            Some(d) => d,
            None => self.deltas.entry(scope.to_vec()).or_default(),
        };
        if let Some(b) = old {
            *deltas.entry((board.tag(), b)).or_default() -= 1;
        }
        if let Some(b) = new {
            *deltas.entry((board.tag(), b)).or_default() += 1;
        }
    }

    /// The batch drops `scope`'s counts ([`Store::drop_rank_counts`]).
    pub(super) fn dropped(&mut self, scope: &[u8]) {
        self.dropped.push(scope.to_vec());
    }

    /// Adds the summed changes to `batch`, reading each bucket's count once (from the
    /// cache of counts commits touched, else from the store). Returns the counts written,
    /// for the cache once the batch is stored.
    pub(super) fn write(self, store: &Store, batch: &mut Batch) -> Result<RankWrites, StoreError> {
        let mut written = Vec::with_capacity(self.deltas.values().map(HashMap::len).sum());
        let cache = store.rank_cache.lock();
        let moves = self.deltas.iter().flat_map(|(scope, deltas)| {
            deltas
                .iter()
                .map(move |(&(tag, b), &delta)| (count_key_tagged(scope, tag, b), delta))
        });
        for (key, delta) in moves {
            if delta == 0 {
                continue;
            }
            let now = match cache.get(&key) {
                Some(n) => *n,
                None => match store.rank_counts.get(&key).map_err(io("read rank count"))? {
                    Some(v) => super::decode_i64("rank count", &v)?,
                    None => 0,
                },
            };
            let next = now + delta;
            if next <= 0 {
                batch.remove(&store.rank_counts, key.clone());
            } else {
                batch.insert(&store.rank_counts, key.clone(), next.to_be_bytes());
            }
            written.push((key, next.max(0)));
        }
        Ok(RankWrites {
            dropped: self.dropped,
            counts: written,
        })
    }
}

/// Absolute counts, for a fill from a scan of the users.
#[derive(Default)]
pub(super) struct RankCounts {
    counts: Counts,
}

impl RankCounts {
    /// Counts a user's score on `board` in `scope`.
    pub(super) fn add(&mut self, scope: &[u8], board: Board, score: i64) {
        *self
            .counts
            .entry(count_key(scope, board, bucket(score)))
            .or_default() += 1;
    }

    /// Writes every count whose scope `keep` accepts into `batch`.
    pub(super) fn write(self, store: &Store, batch: &mut Batch, keep: impl Fn(&[u8]) -> bool) {
        for (key, n) in self.counts {
            if keep(&key) {
                batch.insert(&store.rank_counts, key, n.to_be_bytes());
            }
        }
    }
}

impl Store {
    /// Users of `scope`'s `board` in buckets above `score`'s.
    pub(super) fn counted_above(
        &self,
        scope: &[u8],
        board: Board,
        score: i64,
    ) -> Result<u64, StoreError> {
        let mut from = scope.to_vec();
        from.push(board.tag());
        let to = count_key(scope, board, bucket(score));
        let mut n = 0u64;
        for kv in self.rank_counts.range(from..to) {
            let (_, v) = kv.into_inner().map_err(io("scan rank counts"))?;
            n += super::decode_i64("rank count", &v)?.max(0) as u64;
        }
        Ok(n)
    }

    /// Drops the rank counts of a scope (a period no longer kept) into `batch`.
    pub(super) fn drop_rank_counts(
        &self,
        scope: &[u8],
        batch: &mut Batch,
    ) -> Result<(), StoreError> {
        for kv in self.rank_counts.prefix(scope) {
            let k = kv.key().map_err(io("scan rank counts"))?;
            batch.remove(&self.rank_counts, k.to_vec());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_preserve_order_and_bound_their_scores() {
        let mut samples: Vec<i64> = vec![
            i64::MIN,
            i64::MIN + 1,
            -1_000_000_007,
            -1025,
            -1024,
            -1023,
            -64,
            -63,
            -1,
            0,
            1,
            63,
            64,
            65,
            127,
            128,
            1023,
            1024,
            1039,
            1040,
            999_999_999,
            i64::MAX - 1,
            i64::MAX,
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            samples.push((x as i64) >> (x % 60));
        }
        samples.sort_unstable();
        for w in samples.windows(2) {
            assert!(bucket(w[0]) <= bucket(w[1]), "{} {}", w[0], w[1]);
        }
        for s in samples {
            let b = bucket(s);
            assert!(
                s <= bucket_max(b),
                "{s} above its bucket's max {}",
                bucket_max(b)
            );
            if bucket_max(b) < i64::MAX {
                assert!(
                    bucket(bucket_max(b)) == b && bucket(bucket_max(b) + 1) == b + 1,
                    "{s}"
                );
            }
        }
        assert_eq!(bucket(1024), bucket(1039));
        assert_ne!(bucket(1039), bucket(1040));
        let all: std::collections::BTreeSet<i64> = [i64::MIN, i64::MAX].map(bucket).into();
        assert!(all.last().unwrap() - all.first().unwrap() < 7_500);
    }
}

//! Period leaderboards: per partition, the latest `periods_kept` days, ISO weeks and
//! months, each ranked by xp, coins earned and money spent.
//!
//! - `periods`:      `partition | kind (u8) | period key | 0x00 | board (u8) | descending
//!   score (u64 BE) | user_id` -> empty: the ordered index, so a board's top N is one
//!   prefix read;
//! - `period_users`: `partition | kind | period key` -> users on that board (u64 BE), the
//!   `of` of a rank: every user with anything attributed to the period, net zero included.
//!
//! Both are written in the commit batch of the states they index, from the users'
//! [`PeriodScore`]s (a user keeps its own latest `periods_kept` of each kind). A
//! partition keeps its latest `periods_kept` keys of each kind: a commit that brings a
//! newer one drops the oldest (its count goes, and a `period-drop:` mark in `meta`; its
//! entries are deleted after the commit, in bounded batches, [`Store::drop_periods`]), and
//! index writes for a period older than every kept one are skipped.

use std::collections::{BTreeSet, HashMap};

use super::ranks::RankDeltas;
use super::{io, ordered, Batch, Board, Store, StoreError};
use crate::domain::{Calendar, Period, PeriodScore, Timestamp, UserState};

pub(super) fn kind_tag(kind: Period) -> u8 {
    match kind {
        Period::Day => b'd',
        Period::Week => b'w',
        Period::Month => b'm',
    }
}

/// `partition | kind | key`: the count key, and the prefix of the period's entries.
pub(super) fn period_prefix(partition: i32, kind: Period, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + key.len() + 11);
    push_period_prefix(&mut k, partition, kind, key);
    k
}

/// Appends a period's prefix: partition, period kind, period key.
fn push_period_prefix(k: &mut Vec<u8>, partition: i32, kind: Period, key: &str) {
    k.extend_from_slice(&partition.to_be_bytes());
    k.push(kind_tag(kind));
    k.extend_from_slice(key.as_bytes());
}

/// Appends where a period's board starts: the period's prefix, 0, the board's tag.
fn push_board_prefix(k: &mut Vec<u8>, partition: i32, kind: Period, key: &str, board: Board) {
    push_period_prefix(k, partition, kind, key);
    k.push(0);
    k.push(board.tag());
}

/// The rank counts' scope of one period ([`super::ranks`]).
pub(super) fn rank_scope(partition: i32, kind: Period, key: &str) -> Vec<u8> {
    let mut k = period_prefix(partition, kind, key);
    k.push(0);
    k
}

fn board_prefix(partition: i32, kind: Period, key: &str, board: Board) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + key.len() + 2);
    push_board_prefix(&mut k, partition, kind, key, board);
    k
}

pub(super) fn entry_key(
    partition: i32,
    kind: Period,
    key: &str,
    board: Board,
    score: i64,
    user_id: &str,
) -> fjall::UserKey {
    super::built(|k| {
        push_board_prefix(k, partition, kind, key, board);
        k.extend_from_slice(&(!ordered(score)).to_be_bytes());
        k.extend_from_slice(user_id.as_bytes());
    })
}

/// A period score on one board.
pub fn period_score(p: &PeriodScore, board: Board) -> i64 {
    match board {
        Board::Xp => p.xp,
        Board::Coins => p.coins,
        Board::Spent => p.spent,
    }
}

/// One user's scores on one period's boards, before and after a batch: (partition,
/// kind, period key, user_id, old, new).
type Change = (
    i32,
    Period,
    String,
    String,
    Option<[i64; 3]>,
    Option<[i64; 3]>,
);

/// The index changes of one commit, gathered before any is written: the kept periods of
/// each (partition, kind) are known only once the batch's new keys are.
#[derive(Default)]
pub(super) struct PeriodChanges {
    /// (partition, kind, key, user_id, old, new).
    changes: Vec<Change>,
}

impl PeriodChanges {
    /// Adds the difference between a user's period scores before and after the batch. A
    /// user holds a few periods (`periods_kept` of each kind at most), so the two lists
    /// are matched by scanning, without a map.
    pub(super) fn add(&mut self, p: i32, user: &UserState, before: &[PeriodScore]) {
        let scores = |s: &PeriodScore| Board::ALL.map(|b| period_score(s, b));
        let same = |a: &PeriodScore, b: &PeriodScore| a.kind == b.kind && a.key == b.key;
        for now in &user.periods {
            let old = before.iter().find(|b| same(b, now)).map(scores);
            let new = Some(scores(now));
            if old != new {
                self.changes
                    .push((p, now.kind, now.key.clone(), user.user_id.clone(), old, new));
            }
        }
        for was in before {
            if !user.periods.iter().any(|now| same(now, was)) {
                self.changes.push((
                    p,
                    was.kind,
                    was.key.clone(),
                    user.user_id.clone(),
                    Some(scores(was)),
                    None,
                ));
            }
        }
    }

    /// Writes the changes into `batch`: entries of kept periods only, users-per-period
    /// counts, their rank-count moves (into `ranks`), and the deletion of every period that
    /// fell out of its partition's kept set.
    pub(super) fn write(
        self,
        store: &Store,
        batch: &mut Batch,
        kept: usize,
        ranks: &mut RankDeltas,
    ) -> Result<(), StoreError> {
        if self.changes.is_empty() {
            return Ok(());
        }
        // The kept keys of every (partition, kind) touched: the stored ones and the new.
        let mut keys: HashMap<(i32, Period), BTreeSet<String>> = HashMap::new();
        for (p, kind, key, ..) in &self.changes {
            let set = match keys.entry((*p, *kind)) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(store.period_keys_of(*p, *kind)?.into_iter().collect())
                }
            };
            set.insert(key.clone());
        }
        // Periods that fall out of their partition's kept set with this batch.
        let mut dropped: BTreeSet<(i32, Period, String)> = BTreeSet::new();
        for ((p, kind), set) in &keys {
            let excess = set.len().saturating_sub(kept);
            dropped.extend(set.iter().take(excess).map(|k| (*p, *kind, k.clone())));
        }
        let mut counts: HashMap<(i32, Period, &str), i64> = HashMap::new();
        // Per period touched: its rank scope if it is kept (among the `kept` greatest
        // keys of its kind), else `None`; worked out once, not per change.
        let mut scopes: HashMap<(i32, Period, &str), Option<Vec<u8>>> = HashMap::new();
        for (p, kind, key, user_id, old, new) in &self.changes {
            let scope = scopes.entry((*p, *kind, key.as_str())).or_insert_with(|| {
                let set = keys.get(&(*p, *kind))?;
                let newer_or_same = set
                    .range::<str, _>((
                        std::ops::Bound::Included(key.as_str()),
                        std::ops::Bound::Unbounded,
                    ))
                    .count();
                (newer_or_same <= kept).then(|| rank_scope(*p, *kind, key))
            });
            let Some(scope) = scope else {
                continue;
            };
            for (i, b) in Board::ALL.into_iter().enumerate() {
                ranks.moved(scope, b, old.map(|o| o[i]), new.map(|n| n[i]));
            }
            if let Some(old) = old {
                for (b, score) in Board::ALL.into_iter().zip(old) {
                    batch.remove(
                        &store.periods,
                        entry_key(*p, *kind, key, b, *score, user_id),
                    );
                }
            }
            if let Some(new) = new {
                for (b, score) in Board::ALL.into_iter().zip(new) {
                    batch.insert(
                        &store.periods,
                        entry_key(*p, *kind, key, b, *score, user_id),
                        [],
                    );
                }
            }
            let delta = i64::from(new.is_some()) - i64::from(old.is_some());
            if delta != 0 {
                *counts.entry((*p, *kind, key.as_str())).or_default() += delta;
            }
        }
        for ((p, kind, key), delta) in counts {
            let prefix = period_prefix(p, kind, key);
            let now = store.period_users_at(&prefix)? as i64 + delta;
            batch.insert(
                &store.period_users,
                prefix,
                (now.max(0) as u64).to_be_bytes(),
            );
        }
        // Periods that fell out: the count and the rank counts go now, the entries after
        // the commit ([`Store::drop_periods`]).
        for (p, kind, key) in dropped {
            store.drop_period(&period_prefix(p, kind, &key), batch);
            let scope = rank_scope(p, kind, &key);
            store.drop_rank_counts(&scope, batch)?;
            ranks.dropped(&scope);
        }
        Ok(())
    }
}

/// `meta` key prefix of a period whose entries are still to be deleted.
const DROP_MARK: &[u8] = b"period-drop:";

/// Entries deleted per write batch when a period is dropped.
const DROP_CHUNK: usize = 20_000;

impl Store {
    /// Drops a period with `batch`: its count goes, and a mark that its entries are to be
    /// deleted. A period without a count is not kept, so its entries are never read and
    /// never written again (a write for a period older than every kept one is skipped).
    pub(super) fn drop_period(&self, prefix: &[u8], batch: &mut Batch) {
        batch.remove(&self.period_users, prefix.to_vec());
        let mut mark = DROP_MARK.to_vec();
        mark.extend_from_slice(prefix);
        batch.insert(&self.meta, mark, []);
    }

    /// Deletes the entries of every dropped period, in batches of [`DROP_CHUNK`], and then
    /// its mark. One batch holding every entry of a large period (all the users active on
    /// a day) filled a memtable far past its size before fjall could flush it: 460 MiB at
    /// 10,000,000 users. The mark is removed with the last batch, after its entries in the
    /// journal, so an interrupted drop is finished at the next open.
    pub(super) fn drop_periods(&self) -> Result<(), StoreError> {
        let marks: Vec<Vec<u8>> = self
            .meta
            .prefix(DROP_MARK)
            .map(|kv| {
                kv.key()
                    .map(|k| k.to_vec())
                    .map_err(io("scan period drops"))
            })
            .collect::<Result<_, _>>()?;
        for mark in marks {
            let prefix = &mark[DROP_MARK.len()..];
            loop {
                let mut batch = Batch::new(&self.db);
                let mut n = 0;
                for k in self.periods.prefix(prefix).take(DROP_CHUNK) {
                    let k = k.key().map_err(io("scan period board"))?;
                    batch.remove(&self.periods, k.to_vec());
                    n += 1;
                }
                if n < DROP_CHUNK {
                    batch.remove(&self.meta, mark.clone());
                    batch.commit().map_err(io("drop period"))?;
                    break;
                }
                batch.commit().map_err(io("drop period"))?;
            }
        }
        Ok(())
    }
}

impl Store {
    /// The period keys of `kind` partition `p` has boards for, ascending.
    pub(super) fn period_keys_of(&self, p: i32, kind: Period) -> Result<Vec<String>, StoreError> {
        let mut prefix = p.to_be_bytes().to_vec();
        prefix.push(kind_tag(kind));
        let mut out = Vec::new();
        for kv in self.period_users.prefix(&prefix) {
            let k = kv.key().map_err(io("scan period counts"))?;
            let key = std::str::from_utf8(&k[5..]).map_err(|_| StoreError::Corrupt {
                what: "period count key",
                detail: "not UTF-8".into(),
            })?;
            out.push(key.to_owned());
        }
        Ok(out)
    }

    fn period_users_at(&self, prefix: &[u8]) -> Result<u64, StoreError> {
        match self
            .period_users
            .get(prefix)
            .map_err(io("read period count"))?
        {
            Some(v) => Ok(super::decode_i64("period count", &v)? as u64),
            None => Ok(0),
        }
    }

    /// How many of the latest periods of each kind are kept (`[processing] periods_kept`;
    /// 0: no period boards).
    pub fn set_periods_kept(&self, kept: usize) {
        self.periods_kept
            .store(kept, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many of the latest periods of each kind are kept.
    pub fn periods_kept(&self) -> usize {
        self.periods_kept.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The key of the `kind` period holding the highest event-time mark of the partitions
    /// `keep` accepts (`None`: no mark yet): a board's default period.
    pub fn latest_period(
        &self,
        kind: Period,
        calendar: Calendar,
        keep: impl Fn(i32) -> bool,
    ) -> Option<String> {
        let secs = self
            .marks()
            .into_iter()
            .filter(|(p, _)| keep(*p))
            .map(|(_, m)| m)
            .max()?;
        Some(calendar.key(kind, Timestamp { secs, nanos: 0 }))
    }

    /// The kept keys of `kind` over the partitions `keep` accepts: the latest
    /// `periods_kept` of their union, ascending.
    pub fn period_keys(
        &self,
        kind: Period,
        keep: impl Fn(i32) -> bool,
    ) -> Result<Vec<String>, StoreError> {
        let mut all = BTreeSet::new();
        for p in self.partitions_with_users(&keep) {
            all.extend(self.period_keys_of(p, kind)?);
        }
        let excess = all.len().saturating_sub(self.periods_kept());
        Ok(all.into_iter().skip(excess).collect())
    }

    /// Users on the boards of one period, over the partitions `keep` accepts.
    pub fn period_users(
        &self,
        kind: Period,
        key: &str,
        keep: impl Fn(i32) -> bool,
    ) -> Result<u64, StoreError> {
        let mut n = 0;
        for p in self.partitions_with_users(&keep) {
            n += self.period_users_at(&period_prefix(p, kind, key))?;
        }
        Ok(n)
    }

    /// The top `limit` of one period board over the partitions `keep` accepts, highest
    /// first, ties by user_id ascending: each partition's top `limit` entries, merged,
    /// then their users. Returns (score, user).
    pub fn period_board(
        &self,
        kind: Period,
        key: &str,
        board: Board,
        limit: usize,
        keep: impl Fn(i32) -> bool,
    ) -> Result<Vec<(i64, UserState)>, StoreError> {
        let corrupt = || StoreError::Corrupt {
            what: "period board entry",
            detail: "malformed key".into(),
        };
        let mut top: Vec<(Vec<u8>, i32)> = Vec::new();
        for p in self.partitions_with_users(&keep) {
            let prefix = board_prefix(p, kind, key, board);
            for kv in self.periods.prefix(&prefix).take(limit) {
                let k = kv.key().map_err(io("scan period board"))?;
                top.push((k.get(prefix.len()..).ok_or_else(corrupt)?.to_vec(), p));
            }
        }
        top.sort_unstable();
        top.truncate(limit);
        let mut out = Vec::with_capacity(top.len());
        for (k, p) in top {
            let score = !u64::from_be_bytes(
                k.get(..8)
                    .ok_or_else(corrupt)?
                    .try_into()
                    .map_err(|_| corrupt())?,
            );
            let score = (score ^ (1 << 63)) as i64;
            let user_id = k
                .get(8..)
                .and_then(|b| std::str::from_utf8(b).ok())
                .ok_or_else(corrupt)?;
            out.push((score, self.user(p, user_id)?.ok_or_else(corrupt)?));
        }
        Ok(out)
    }

    /// How many users of the partitions `keep` accepts rank above (`score`, `user_id`) on
    /// one period board (`None`: the all-time board): higher scores, and equal scores with
    /// a smaller user_id. The rank counts of the score ranges above, then the index entries
    /// above it in its own range: a cost that does not grow with the rank.
    pub fn rank_above(
        &self,
        period: Option<(Period, &str)>,
        board: Board,
        score: i64,
        user_id: &str,
        keep: impl Fn(i32) -> bool,
    ) -> Result<u64, StoreError> {
        let top = super::ranks::bucket_max(super::ranks::bucket(score));
        let mut n = 0u64;
        for p in self.partitions_with_users(&keep) {
            let (ks, scope, from, mine) = match period {
                Some((kind, key)) => (
                    &self.periods,
                    rank_scope(p, kind, key),
                    entry_key(p, kind, key, board, top, ""),
                    entry_key(p, kind, key, board, score, user_id),
                ),
                None => (
                    &self.board,
                    super::ranks::all_time_scope(p),
                    super::board_key_for(p, board, top, ""),
                    super::board_key_for(p, board, score, user_id),
                ),
            };
            n += self.counted_above(&scope, board, score)?;
            for kv in ks.range(from..mine) {
                kv.key().map_err(io("scan board"))?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Partitions with users that `keep` accepts.
    fn partitions_with_users(&self, keep: &impl Fn(i32) -> bool) -> Vec<i32> {
        self.user_counts
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .copied()
            .filter(|p| keep(*p))
            .collect()
    }
}

//! Period leaderboards and ranks, read from the boards in memory ([`crate::engine`]): per
//! partition, the latest `periods_kept` days, ISO weeks and months, each ranked by xp,
//! coins earned and money spent, and the all-time boards.

use std::collections::BTreeSet;
use std::sync::PoisonError;

use super::{Board, Store, StoreError};
use crate::domain::{Calendar, Period, UserState};

impl Store {
    /// How many of the latest periods of each kind are kept (`[processing] periods_kept`;
    /// 0: no period boards). The boards are rebuilt from the users when it changes.
    pub fn set_periods_kept(&self, kept: usize) {
        if self.periods_kept() == kept {
            return;
        }
        *self.boards.write().unwrap_or_else(PoisonError::into_inner) =
            crate::engine::Boards::new(kept);
        if let Err(error) = self.build_boards(None) {
            // The boards stay empty; reads of users still work, and the next open
            // rebuilds them.
            tracing::error!(message = "Could not rebuild the boards.", %error);
        }
    }

    /// How many of the latest periods of each kind are kept.
    pub fn periods_kept(&self) -> usize {
        self.boards
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .kept()
    }

    /// The key of the `kind` period holding the highest event-time mark of the partitions
    /// `keep` accepts (`None`: no mark yet): a board's default period.
    pub fn latest_period(
        &self,
        kind: Period,
        calendar: Calendar,
        keep: impl Fn(i32) -> bool,
    ) -> Option<String> {
        let mark = self
            .marks()
            .into_iter()
            .filter(|(p, _)| keep(*p))
            .map(|(_, m)| m)
            .max()?;
        Some(calendar.key(kind, mark))
    }

    /// The kept keys of `kind` over the partitions `keep` accepts: the latest
    /// `periods_kept` of their union, ascending.
    pub fn period_keys(
        &self,
        kind: Period,
        keep: impl Fn(i32) -> bool,
    ) -> Result<Vec<String>, StoreError> {
        let boards = self.boards.read().unwrap_or_else(PoisonError::into_inner);
        let mut all = BTreeSet::new();
        for p in boards.partitions().filter(|p| keep(*p)) {
            all.extend(boards.period_keys(p, kind));
        }
        let excess = all.len().saturating_sub(boards.kept());
        Ok(all.into_iter().skip(excess).collect())
    }

    /// Users on the boards of one period, over the partitions `keep` accepts.
    pub fn period_users(
        &self,
        kind: Period,
        key: &str,
        keep: impl Fn(i32) -> bool,
    ) -> Result<u64, StoreError> {
        let boards = self.boards.read().unwrap_or_else(PoisonError::into_inner);
        Ok(boards
            .partitions()
            .filter(|p| keep(*p))
            .map(|p| boards.period_users(p, kind, key))
            .sum())
    }

    /// The top `limit` of one period board over the partitions `keep` accepts, highest
    /// first, ties by user_id ascending. Returns (score, user).
    pub fn period_board(
        &self,
        kind: Period,
        key: &str,
        board: Board,
        limit: usize,
        keep: impl Fn(i32) -> bool,
    ) -> Result<Vec<(i64, UserState)>, StoreError> {
        self.board_top(Some((kind, key)), board, limit, keep)
    }

    /// How many users of the partitions `keep` accepts rank above (`score`, `user_id`) on
    /// one period board (`None`: the all-time board): higher scores, and equal scores with
    /// a smaller user_id. O(log n) per partition, whatever the rank.
    pub fn rank_above(
        &self,
        period: Option<(Period, &str)>,
        board: Board,
        score: i64,
        user_id: &str,
        keep: impl Fn(i32) -> bool,
    ) -> Result<u64, StoreError> {
        let boards = self.boards.read().unwrap_or_else(PoisonError::into_inner);
        Ok(boards
            .partitions()
            .filter(|p| keep(*p))
            .map(|p| boards.above(p, period, board, score, user_id))
            .sum())
    }
}

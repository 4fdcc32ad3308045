//! Route handlers: parse, read the store, answer.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::cluster::{self, owners_missing, Held, NotFound, Replies};
use super::forward::{Answer, HEADER_FORWARDED, HEADER_PARTITIONS};
use super::{ApiError, AppState, HEADER_OFFSETS};
use crate::codec;
use crate::domain::money::format_minor;
use crate::domain::Period;
use crate::store::Board;
use crate::telemetry;

/// Longest accepted user id, in bytes (as for receipts).
const MAX_USER_ID: usize = 128;

fn with_freshness(state: &AppState, mut r: Response) -> Response {
    if let Ok(v) = HeaderValue::from_str(&state.status.offsets_header()) {
        r.headers_mut().insert(HEADER_OFFSETS, v);
    }
    if let Some(owned) = state.status.owned() {
        let list = owned
            .iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        if let Ok(v) = HeaderValue::from_str(&list) {
            r.headers_mut().insert(HEADER_PARTITIONS, v);
        }
    }
    r
}

/// The receipts topic's partition count, once the consumer has seen it: where the
/// producers put a user depends on it.
fn partition_count(state: &AppState) -> Option<i32> {
    state
        .status
        .partition_count()
        .and_then(|n| i32::try_from(n).ok())
}

/// A peer's answer passed on as is, with its freshness and partitions headers.
fn relay(a: Answer) -> Response {
    let mut r = (a.status, a.body).into_response();
    for name in [
        header::CONTENT_TYPE.as_str(),
        HEADER_OFFSETS,
        HEADER_PARTITIONS,
    ] {
        if let Some(v) = a.headers.get(name) {
            r.headers_mut().insert(name, v.clone());
        }
    }
    r
}

/// A user id as one path segment of a forwarded query: every byte but the unreserved
/// ones percent-encoded, so that an id with `/`, `?`, `#`, `%` or a space reaches the peer
/// as the same id.
pub fn path_segment(user_id: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(user_id, KEEP).to_string()
}

/// A path's user id, checked.
fn user_id_of(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(user_id) =
        path.map_err(|e| ApiError::bad_request("invalid_user_id", e.body_text()))?;
    if user_id.is_empty() || user_id.len() > MAX_USER_ID || user_id.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_user_id",
            format!("user_id must be 1 to {MAX_USER_ID} bytes without control characters"),
        ));
    }
    Ok(user_id)
}

/// `GET /v1/users/{user_id}`: the projection exactly as on the projections topic.
pub(super) async fn user(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let user_id = user_id_of(path)?;
    let held = Held::now(&state);
    let found = state
        .store
        .locate_user_among(&user_id, partition_count(&state))
        .map_err(|e| ApiError::internal(&e))?;
    if let Some((p, u)) = &found {
        if held.has(*p) {
            let body = codec::encode_projection(u);
            let r = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
            return Ok(with_freshness(&state, r));
        }
    }
    // Not held here: a forwarded query is answered from here only (one hop); otherwise
    // the owner is asked. What this store holds of a partition that moved away stopped
    // changing when it left, so it is never the answer.
    let forwarded = headers.contains_key(HEADER_FORWARDED);
    let mut answers = Vec::new();
    if !forwarded {
        answers = cluster::gather(&state, &format!("/v1/users/{}", path_segment(&user_id))).await;
    }
    if let Some(i) = answers
        .iter()
        .position(|a| a.as_ref().is_ok_and(|a| a.status == StatusCode::OK))
    {
        if let Ok(a) = answers.swap_remove(i) {
            return Ok(relay(a));
        }
    }
    let replies = Replies::<serde::de::IgnoredAny>::sort(answers, NotFound::Covers);
    let stored_in = found.map(|(p, _)| p);
    Err(user_elsewhere(
        &state, &held, &user_id, stored_in, forwarded, &replies,
    ))
}

/// The error of a user query no instance answered: the user's partition has no owner
/// that answered (503), some partition has none (503), or there is no such user (404).
fn user_elsewhere<T>(
    state: &AppState,
    held: &Held,
    user_id: &str,
    stored_in: Option<i32>,
    forwarded: bool,
    replies: &Replies<T>,
) -> ApiError {
    if let Some(p) = stored_in {
        return ApiError::unavailable(
            "not_owned",
            format!(
                "user {user_id:?} is in partition {p}, which this instance does not hold now, and its owner did not answer{}",
                replies.why()
            ),
        );
    }
    // Instances that did not answer matter only if their partitions have no other owner
    // that did (a killed instance's last announcement lingers until it is back).
    let missing = if forwarded {
        Vec::new()
    } else {
        held.uncovered(state, &replies.covered)
    };
    if missing.is_empty() {
        return ApiError::not_found(format!("no user {user_id:?}"));
    }
    ApiError::unavailable(
        "partition_moving",
        format!(
            "user {user_id:?} is not here, and partitions {missing:?} have no owner that answered (moving between instances?); try again{}",
            replies.why()
        ),
    )
}

#[derive(Serialize, Deserialize)]
struct Leaderboard {
    by: String,
    #[serde(default)]
    period: String,
    #[serde(default)]
    at: String,
    entries: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    rank: usize,
    user_id: String,
    /// The user's score on this board (`spent`: a money string).
    #[serde(default)]
    score: serde_json::Value,
    level: u32,
    xp: i64,
    coins: i64,
    total_spent: String,
}

/// Header: the periods of the asked kind an instance keeps (`2026-W48,2026-W49`), so
/// that the instance merging answers can say which exist.
const HEADER_PERIODS: &str = "x-mallquest-periods";

/// The board a query names: by what, over which period.
struct BoardQuery {
    by: Board,
    /// `None`: all time.
    period: Option<Period>,
    /// The period's key, as asked (`None`: the default).
    at: Option<String>,
    limit: usize,
    /// Internal, on forwarded rank queries: count the users above this score and user.
    score: Option<i64>,
}

fn board_name(by: Board) -> &'static str {
    match by {
        Board::Xp => "xp",
        Board::Coins => "coins",
        Board::Spent => "spent",
    }
}

/// A score as shown: an integer, or a money string on the `spent` board.
fn score_json(by: Board, score: i64) -> serde_json::Value {
    match by {
        Board::Spent => format_minor(score).into(),
        Board::Xp | Board::Coins => score.into(),
    }
}

fn score_of(by: Board, v: &serde_json::Value) -> Option<i64> {
    match by {
        Board::Spent => v.as_str().and_then(crate::domain::money::parse_formatted),
        Board::Xp | Board::Coins => v.as_i64(),
    }
}

/// Whether `at` is a well-formed key of `kind`: `2026-11-30`, `2026-W49`, `2026-12`.
fn valid_key(kind: Period, at: &str) -> bool {
    let b = at.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    match kind {
        Period::Day => {
            b.len() == 10
                && chrono::NaiveDate::parse_from_str(at, "%Y-%m-%d").is_ok()
                && digits(0..4)
        }
        Period::Week => {
            b.len() == 8 && digits(0..4) && &b[4..6] == b"-W" && digits(6..8) && {
                let w: u32 = at[6..].parse().unwrap_or(0);
                (1..=53).contains(&w)
            }
        }
        Period::Month => {
            b.len() == 7 && digits(0..4) && b[4] == b'-' && digits(5..7) && {
                let m: u32 = at[5..].parse().unwrap_or(0);
                (1..=12).contains(&m)
            }
        }
    }
}

fn parse_board_query(query: Option<&str>, allowed: &[&str]) -> Result<BoardQuery, ApiError> {
    let mut q = BoardQuery {
        by: Board::Xp,
        period: None,
        at: None,
        limit: 10,
        score: None,
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !allowed.contains(&k) {
            return Err(ApiError::bad_request(
                "unknown_parameter",
                format!("the only parameters are {}", allowed.join(", ")),
            ));
        }
        match k {
            "by" => {
                q.by = match v {
                    "xp" => Board::Xp,
                    "coins" => Board::Coins,
                    "spent" => Board::Spent,
                    _ => {
                        return Err(ApiError::bad_request(
                            "invalid_by",
                            "by must be one of xp, coins, spent",
                        ))
                    }
                }
            }
            "period" => {
                q.period = match v {
                    "all" => None,
                    other => Some(Period::parse(other).ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_period",
                            "period must be one of day, week, month, all",
                        )
                    })?),
                }
            }
            "at" => q.at = Some(v.to_owned()),
            "limit" => {
                q.limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_limit",
                            "limit must be an integer from 1 to 100",
                        )
                    })?;
            }
            "score" => {
                q.score = Some(v.parse().map_err(|_| {
                    ApiError::bad_request("invalid_score", "score must be an integer")
                })?)
            }
            _ => {}
        }
    }
    match (q.period, q.at.as_deref()) {
        (None, None | Some("all")) => {}
        (None, Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_at",
                "at is for period = day, week or month (or \"all\" with period = all)",
            ))
        }
        (Some(kind), Some(at)) if !valid_key(kind, at) => {
            return Err(ApiError::bad_request(
                "invalid_at",
                format!(
                    "at must be a {} key such as {}",
                    kind.as_str(),
                    match kind {
                        Period::Day => "2026-11-30",
                        Period::Week => "2026-W49",
                        Period::Month => "2026-12",
                    }
                ),
            ))
        }
        _ => {}
    }
    Ok(q)
}

/// The period a query is about (`None`: all time): the asked one, or the one holding the
/// highest event-time mark of the partitions this instance holds; a 404 when there is no
/// mark yet.
fn resolve_at(
    state: &AppState,
    held: &Held,
    q: &BoardQuery,
) -> Result<Option<(Period, String)>, ApiError> {
    let Some(kind) = q.period else {
        return Ok(None);
    };
    if state.store.periods_kept() == 0 {
        return Err(ApiError::not_found(format!(
            "{} boards are off on this instance ([processing] periods_kept = 0)",
            kind.as_str()
        )));
    }
    if let Some(at) = &q.at {
        return Ok(Some((kind, at.clone())));
    }
    let at = state
        .store
        .latest_period(kind, state.calendar, |p| held.has(p))
        .ok_or_else(|| {
            ApiError::not_found(
                "no period is kept yet: nothing was folded into the partitions held here",
            )
        })?;
    Ok(Some((kind, at)))
}

/// `GET /v1/leaderboard?by=xp|coins|spent&period=day|week|month|all&at=KEY&limit=N`.
pub(super) async fn leaderboard(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let q = parse_board_query(query.as_deref(), &["by", "period", "at", "limit"])?;
    let (by, limit) = (q.by, q.limit);
    let held = Held::now(&state);
    let period = resolve_at(&state, &held, &q)?;
    let (mut entries, mut kept) = local_board(&state, &held, by, limit, period.as_ref())?;
    let (period_name, at_name) = period_names(period.as_ref());
    let mut offsets = state.status.offsets_header();
    let forwarded = headers.contains_key(HEADER_FORWARDED);
    if !forwarded && state.status.in_group() {
        // Every owner's top `limit`, merged: the top `limit` of the union is in it.
        let path = format!(
            "/v1/leaderboard?by={}&period={period_name}&at={at_name}&limit={limit}",
            board_name(by)
        );
        let replies =
            Replies::<Leaderboard>::sort(cluster::gather(&state, &path).await, NotFound::Fails);
        let missing = held.uncovered(&state, &replies.covered);
        if !missing.is_empty() {
            return Err(owners_missing("the leaderboard", &missing, &replies.failed));
        }
        offsets = cluster::joined_header(offsets, &replies.ok, HEADER_OFFSETS);
        let theirs = cluster::joined_header(String::new(), &replies.ok, HEADER_PERIODS);
        kept.extend(
            theirs
                .split(',')
                .filter(|k| !k.is_empty())
                .map(String::from),
        );
        entries.extend(replies.ok.into_iter().flat_map(|r| r.value.entries));
        entries = cluster::merge_top(entries, limit, |e| score_of(by, &e.score), |e| &e.user_id);
    }
    if let (Some((kind, at)), false) = (&period, forwarded) {
        kept = cluster::kept_periods(kept, state.store.periods_kept());
        if !kept.contains(at) {
            return Err(not_kept(*kind, at, &kept));
        }
    }
    for (i, e) in entries.iter_mut().enumerate() {
        e.rank = i + 1;
    }
    let board = Leaderboard {
        by: board_name(by).to_owned(),
        period: period_name.to_owned(),
        at: at_name,
        entries,
    };
    let mut r = with_freshness(&state, Json(board).into_response());
    for (name, value) in [(HEADER_OFFSETS, offsets), (HEADER_PERIODS, kept.join(","))] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            r.headers_mut().insert(name, v);
        }
    }
    Ok(r)
}

/// The `period` and `at` a board answer names.
fn period_names(period: Option<&(Period, String)>) -> (&'static str, String) {
    match period {
        Some((kind, at)) => (kind.as_str(), at.clone()),
        None => ("all", "all".to_owned()),
    }
}

/// The top `limit` of the board from the partitions held here (only those: the others'
/// entries here stopped changing), and the periods of its kind kept here.
fn local_board(
    state: &AppState,
    held: &Held,
    by: Board,
    limit: usize,
    period: Option<&(Period, String)>,
) -> Result<(Vec<Entry>, Vec<String>), ApiError> {
    let keep = |p| held.has(p);
    let internal = |e: crate::store::StoreError| ApiError::internal(&e);
    let (rows, kept) = match period {
        Some((kind, at)) => (
            state
                .store
                .period_board(*kind, at, by, limit, keep)
                .map_err(internal)?,
            state.store.period_keys(*kind, keep).map_err(internal)?,
        ),
        None => (
            state
                .store
                .leaderboard_of(by, limit, keep)
                .map_err(internal)?
                .into_iter()
                .map(|u| (crate::store::scores(&u)[by as usize], u))
                .collect(),
            Vec::new(),
        ),
    };
    let entries = rows
        .into_iter()
        .map(|(score, u)| Entry {
            rank: 0,
            score: score_json(by, score),
            level: u.level,
            xp: u.xp,
            coins: u.coins,
            total_spent: format_minor(u.total_spent),
            user_id: u.user_id,
        })
        .collect();
    Ok((entries, kept))
}

/// The 404 of a period no instance keeps, naming the kept ones (oldest first).
fn not_kept(kind: Period, at: &str, kept: &[String]) -> ApiError {
    ApiError::not_found(format!(
        "{} {at} is not kept; the kept {} periods are: {}",
        kind.as_str(),
        kind.as_str(),
        if kept.is_empty() {
            "none yet".to_owned()
        } else {
            kept.join(", ")
        }
    ))
}

#[derive(Serialize, Deserialize)]
struct Rank {
    rank: u64,
    score: serde_json::Value,
    of: u64,
}

/// A forwarded rank query's partial answer: users above a score here, and on the board.
#[derive(Serialize, Deserialize)]
struct Above {
    above: u64,
    of: u64,
}

/// One board as the partitions held here see it, for a rank query about one user.
struct BoardHere<'a, K> {
    state: &'a AppState,
    by: Board,
    period: Option<&'a (Period, String)>,
    user_id: &'a str,
    keep: K,
}

impl<K: Fn(i32) -> bool> BoardHere<'_, K> {
    /// The users above `score` (ties: user ids before this user's) and on the board here.
    fn above(&self, score: i64) -> Result<Above, ApiError> {
        let store = &self.state.store;
        let at = self.period.map(|(k, at)| (*k, at.as_str()));
        let above = store
            .rank_above(at, self.by, score, self.user_id, &self.keep)
            .map_err(|e| ApiError::internal(&e))?;
        let of = match self.period {
            Some((kind, at)) => store
                .period_users(*kind, at, &self.keep)
                .map_err(|e| ApiError::internal(&e))?,
            None => store.users_in(&self.keep),
        };
        Ok(Above { above, of })
    }

    /// The user's score on the board if the user is held here; a 404 if held here but
    /// with nothing on the board.
    fn user_score(&self) -> Result<Option<i64>, ApiError> {
        let found = self
            .state
            .store
            .locate_user_among(self.user_id, partition_count(self.state))
            .map_err(|e| ApiError::internal(&e))?
            .filter(|(p, _)| (self.keep)(*p));
        let Some((_, u)) = found else {
            return Ok(None);
        };
        match self.period {
            Some((kind, at)) => u
                .periods
                .iter()
                .find(|s| s.kind == *kind && s.key == *at)
                .map(|s| Some(self.by.period_score(s)))
                .ok_or_else(|| self.not_on_board()),
            None => Ok(Some(crate::store::scores(&u)[self.by as usize])),
        }
    }

    fn not_on_board(&self) -> ApiError {
        let user_id = self.user_id;
        ApiError::not_found(match self.period {
            Some((kind, at)) => format!(
                "user {user_id:?} has nothing attributed to {} {at}",
                kind.as_str()
            ),
            None => format!("no user {user_id:?}"),
        })
    }
}

fn rank_answer(state: &AppState, by: Board, score: i64, counts: &Above) -> Response {
    let body = Rank {
        rank: counts.above + 1,
        score: score_json(by, score),
        of: counts.of,
    };
    with_freshness(state, Json(body).into_response())
}

/// `GET /v1/users/{user_id}/rank?by=&period=&at=`: the user's rank, score and the users on
/// the board, exactly, from the index entries above the user (never every user).
pub(super) async fn rank(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let user_id = user_id_of(path)?;
    let forwarded = headers.contains_key(HEADER_FORWARDED);
    let allowed: &[&str] = if forwarded {
        &["by", "period", "at", "score"]
    } else {
        &["by", "period", "at"]
    };
    let q = parse_board_query(query.as_deref(), allowed)?;
    let held = Held::now(&state);
    let period = resolve_at(&state, &held, &q)?;
    let here = BoardHere {
        state: &state,
        by: q.by,
        period: period.as_ref(),
        user_id: &user_id,
        keep: |p| held.has(p),
    };
    if let (true, Some(score)) = (forwarded, q.score) {
        return Ok(with_freshness(
            &state,
            Json(here.above(score)?).into_response(),
        ));
    }
    let local = here.user_score()?;
    if forwarded || !state.status.in_group() {
        // Answered from the partitions held here only.
        let score = local.ok_or_else(|| here.not_on_board())?;
        return Ok(rank_answer(&state, q.by, score, &here.above(score)?));
    }
    let (period_name, at_name) = period_names(period.as_ref());
    let base = format!(
        "/v1/users/{}/rank?by={}&period={period_name}&at={at_name}",
        path_segment(&user_id),
        board_name(q.by)
    );
    let score = match local {
        Some(s) => s,
        None => owner_score(&state, &base, q.by, &user_id)
            .await?
            .ok_or_else(|| here.not_on_board())?,
    };
    // Every owner counts the users above it in its partitions.
    let mut total = here.above(score)?;
    let path = format!("{base}&score={score}");
    let replies = Replies::<Above>::sort(cluster::gather(&state, &path).await, NotFound::Fails);
    let missing = held.uncovered(&state, &replies.covered);
    if !missing.is_empty() {
        return Err(owners_missing("a rank", &missing, &replies.failed));
    }
    for r in &replies.ok {
        total.above += r.value.above;
        total.of += r.value.of;
    }
    Ok(rank_answer(&state, q.by, score, &total))
}

/// The user's score as its owner answers it (`None`: no owner has the user on the board).
async fn owner_score(
    state: &AppState,
    path: &str,
    by: Board,
    user_id: &str,
) -> Result<Option<i64>, ApiError> {
    let replies = Replies::<Rank>::sort(cluster::gather(state, path).await, NotFound::Ignored);
    if let Some(score) = replies.ok.iter().find_map(|r| score_of(by, &r.value.score)) {
        return Ok(Some(score));
    }
    if replies.failed.is_empty() {
        return Ok(None);
    }
    Err(ApiError::unavailable(
        "partition_moving",
        format!(
            "the owner of user {user_id:?} did not answer{}; try again",
            replies.why()
        ),
    ))
}

pub(super) async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

/// `GET /v1/levels`: how levels follow XP (the same for every instance: it is the fold's
/// rule), so that a client can show progress to the next level without knowing the config.
pub(super) async fn levels(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    if query.is_some_and(|q| !q.is_empty()) {
        return ApiError::bad_request("unknown_parameter", "this route takes no parameters")
            .into_response();
    }
    Json(serde_json::json!({
        "level_xp_base": state.levels.xp_base,
        "max_level": state.levels.max_level,
    }))
    .into_response()
}

/// `GET /v1/stats/coins`'s answer: the coin liability of every user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CoinStats {
    /// Coins held.
    pub(super) outstanding: Outstanding,
    /// What users owe: the sum of negative balances, negated.
    pub(super) debt: i128,
    /// Coins expired so far.
    pub(super) expired: i128,
    /// Coins redeemed so far, net of reversals.
    pub(super) redeemed: i128,
}

/// `outstanding` of [`CoinStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Outstanding {
    /// Every coin held.
    pub(super) total: i128,
    /// Coins held in lots (`[expiry]`), by the mall-local month whose start is their
    /// expiry: `2027-03`.
    pub(super) by_expiry_month: std::collections::BTreeMap<String, i128>,
}

impl CoinStats {
    /// The answer for `totals`, lots labelled by the month they expire in.
    fn of(totals: &crate::engine::CoinTotals, expiry: Option<crate::domain::Expiry>) -> Self {
        let mut by_expiry_month = std::collections::BTreeMap::new();
        if let Some(x) = expiry {
            for (&earned, &coins) in &totals.lots {
                // A lot that never expires (past the year 9999) is in no month.
                if let Some(at) = crate::domain::timers::expiry_month(x, earned) {
                    let label = crate::domain::timers::month_label(at);
                    *by_expiry_month.entry(label).or_default() += coins;
                }
            }
        }
        CoinStats {
            outstanding: Outstanding {
                total: totals.held,
                by_expiry_month,
            },
            debt: totals.debt,
            expired: totals.expired,
            redeemed: totals.redeemed,
        }
    }

    /// Adds another instance's answer.
    fn merge(&mut self, o: CoinStats) {
        self.outstanding.total += o.outstanding.total;
        for (month, coins) in o.outstanding.by_expiry_month {
            *self.outstanding.by_expiry_month.entry(month).or_default() += coins;
        }
        self.outstanding.by_expiry_month.retain(|_, c| *c != 0);
        self.debt += o.debt;
        self.expired += o.expired;
        self.redeemed += o.redeemed;
    }
}

/// `GET /v1/stats/coins`: the coin liability (coins held, by expiry month; debt; expired
/// and redeemed so far) of every user, gathered from every instance like the boards.
pub(super) async fn coins(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    if query.is_some_and(|q| !q.is_empty()) {
        return Err(ApiError::bad_request(
            "unknown_parameter",
            "this route takes no parameters",
        ));
    }
    let held = Held::now(&state);
    let mut stats = CoinStats::of(&state.store.coin_totals(|p| held.has(p)), state.expiry);
    let mut offsets = state.status.offsets_header();
    if !headers.contains_key(HEADER_FORWARDED) && state.status.in_group() {
        let replies = Replies::<CoinStats>::sort(
            cluster::gather(&state, "/v1/stats/coins").await,
            NotFound::Fails,
        );
        let missing = held.uncovered(&state, &replies.covered);
        if !missing.is_empty() {
            return Err(owners_missing(
                "the coin liability",
                &missing,
                &replies.failed,
            ));
        }
        offsets = cluster::joined_header(offsets, &replies.ok, HEADER_OFFSETS);
        for r in replies.ok {
            stats.merge(r.value);
        }
    }
    let mut r = with_freshness(&state, Json(stats).into_response());
    if let Ok(v) = HeaderValue::from_str(&offsets) {
        r.headers_mut().insert(HEADER_OFFSETS, v);
    }
    Ok(r)
}

/// `GET /readyz`: partitions assigned and positioned, last commit good.
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    match state.status.ready() {
        Ok(()) => with_freshness(
            &state,
            Json(serde_json::json!({"status": "ready"})).into_response(),
        ),
        Err(why) => ApiError::unavailable("not_ready", why).into_response(),
    }
}

/// `GET /metrics`: Prometheus text exposition.
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(h) => {
            telemetry::allocator_sampled();
            telemetry::process_sampled();
            telemetry::store_sampled(&state.store);
            let held = Held::now(&state);
            let coins = CoinStats::of(&state.store.coin_totals(|p| held.has(p)), state.expiry);
            let in_lots: i128 = coins.outstanding.by_expiry_month.values().sum();
            telemetry::liability_sampled(
                &coins.outstanding.by_expiry_month,
                coins.outstanding.total - in_lots,
                coins.debt,
                coins.expired,
                coins.redeemed,
            );
            (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                h.render(),
            )
                .into_response()
        }
        None => ApiError::unavailable("no_metrics", "no metrics recorder in this process")
            .into_response(),
    }
}

/// Any other path.
pub(super) async fn not_found() -> Response {
    ApiError::not_found("no such route").into_response()
}

#[cfg(test)]
mod tests {
    use super::path_segment;

    #[test]
    fn a_forwarded_user_id_is_one_path_segment_that_decodes_to_itself() {
        for id in ["u-1", "a b/c?d#e&f%g", "ünï", "x.y~z_"] {
            let seg = path_segment(id);
            assert!(!seg.contains(['/', '?', '#', ' ', '&']), "{seg}");
            let back = percent_encoding::percent_decode_str(&seg)
                .decode_utf8()
                .unwrap();
            assert_eq!(back, id);
        }
        assert_eq!(path_segment("u-00000001"), "u-00000001");
    }
}

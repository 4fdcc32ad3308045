//! Route handlers: parse, read the store, answer.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::forward::{self, Answer, HEADER_FORWARDED, HEADER_PARTITIONS};
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

/// Which partitions are served from here: those held now; or, standalone (`serve`,
/// `demo`), every partition in the store. An instance of a group that was assigned nothing
/// yet holds nothing: what its store has may have moved on elsewhere while it was down.
/// Read once per request, then asked per partition.
fn holder(state: &AppState) -> impl Fn(i32) -> bool {
    let owned = state.status.owned();
    let standalone = !state.status.in_group();
    move |p| owned.as_ref().map_or(standalone, |o| o.contains(&p))
}

/// Asks every other instance that holds partitions, at once; their answers, or why not.
async fn ask_peers(state: &AppState, path: &str) -> Vec<Result<Answer, String>> {
    let peers = state.status.peers();
    let token = state.token.clone();
    let tasks: Vec<_> = peers
        .into_iter()
        .map(|m| {
            let (path, token, timeout) = (path.to_owned(), token.clone(), state.forward_timeout);
            tokio::spawn(async move {
                forward::get(&m.http, &path, token.as_deref(), timeout)
                    .await
                    .map_err(|e| format!("instance {}: {e}", m.member))
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
    }
    out
}

/// The partitions of the receipts topic not covered by `covered`. With no group at all
/// (`serve`, `demo`: nothing assigned and no other instance), none; with a group but the
/// topic's partitions not known yet, all of them are (`[-1]`).
fn uncovered(state: &AppState, covered: &[i32]) -> Vec<i32> {
    match state.status.partition_count() {
        Some(n) => (0..n as i32).filter(|p| !covered.contains(p)).collect(),
        None if !state.status.in_group() => Vec::new(),
        None => vec![-1],
    }
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

/// `GET /v1/users/{user_id}`: the projection exactly as on the projections topic.
pub(super) async fn user(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(user_id) =
        path.map_err(|e| ApiError::bad_request("invalid_user_id", e.body_text()))?;
    if user_id.is_empty() || user_id.len() > MAX_USER_ID || user_id.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_user_id",
            format!("user_id must be 1 to {MAX_USER_ID} bytes without control characters"),
        ));
    }
    let found = state
        .store
        .locate_user_among(&user_id, partition_count(&state))
        .map_err(|e| ApiError::internal(&e))?;
    if let Some((p, u)) = &found {
        if holder(&state)(*p) {
            let body = codec::encode_projection(u);
            let r = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
            return Ok(with_freshness(&state, r));
        }
    }
    // Not held here: a forwarded query is answered from here only (one hop); otherwise
    // the owner is asked. What this store holds of a partition that moved away stopped
    // changing when it left, so it is never the answer.
    let forwarded = headers.contains_key(HEADER_FORWARDED);
    let answers = if forwarded {
        Vec::new()
    } else {
        ask_peers(&state, &format!("/v1/users/{user_id}")).await
    };
    let mut covered = state.status.owned().unwrap_or_default();
    let mut unreachable = Vec::new();
    for a in answers {
        match a {
            Ok(a) if a.status == StatusCode::OK => return Ok(relay(a)),
            Ok(a) if a.status == StatusCode::NOT_FOUND => covered.extend(a.partitions()),
            Ok(a) => unreachable.push(format!("an instance answered {}", a.status)),
            Err(e) => unreachable.push(e),
        }
    }
    if let Some((p, _)) = found {
        return Err(ApiError::unavailable(
            "not_owned",
            format!(
                "user {user_id:?} is in partition {p}, which this instance does not hold now, and its owner did not answer{}",
                if unreachable.is_empty() { String::new() } else { format!(" ({})", unreachable.join("; ")) }
            ),
        ));
    }
    // Instances that did not answer matter only if their partitions have no other owner
    // that did (a killed instance's last announcement lingers until it is back).
    let missing = if forwarded {
        Vec::new()
    } else {
        uncovered(&state, &covered)
    };
    if missing.is_empty() {
        return Err(ApiError::not_found(format!("no user {user_id:?}")));
    }
    Err(ApiError::unavailable(
        "partition_moving",
        format!(
            "user {user_id:?} is not here, and partitions {missing:?} have no owner that answered (moving between instances?); try again{}",
            if unreachable.is_empty() { String::new() } else { format!(" ({})", unreachable.join("; ")) }
        ),
    ))
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
fn resolve_at(state: &AppState, q: &BoardQuery) -> Result<Option<(Period, String)>, ApiError> {
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
        .latest_period(kind, state.calendar, holder(state))
        .ok_or_else(|| {
            ApiError::not_found(
                "no period is kept yet: nothing was folded into the partitions held here",
            )
        })?;
    Ok(Some((kind, at)))
}

/// The 503 of an answer that needs every partition's owner (`what` needs them) when
/// `missing` partitions have none that answered; `failed` says why others did not.
fn owners_missing(what: &str, missing: &[i32], failed: &[String]) -> ApiError {
    ApiError::unavailable(
        "partition_moving",
        format!(
            "{what} needs every partition's owner: {missing:?} have none that answered (moving between instances?){}; try again",
            if failed.is_empty() { String::new() } else { format!(" ({})", failed.join("; ")) }
        ),
    )
}

/// `GET /v1/leaderboard?by=xp|coins|spent&period=day|week|month|all&at=KEY&limit=N`.
pub(super) async fn leaderboard(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let q = parse_board_query(query.as_deref(), &["by", "period", "at", "limit"])?;
    let (by, limit) = (q.by, q.limit);
    let forwarded = headers.contains_key(HEADER_FORWARDED);
    let period = resolve_at(&state, &q)?;
    // Only the partitions held now: the others' entries here stopped changing.
    let owned = state.status.owned();
    let keep = holder(&state);
    let mut kept = match &period {
        Some((kind, _)) => state
            .store
            .period_keys(*kind, &keep)
            .map_err(|e| ApiError::internal(&e))?,
        None => Vec::new(),
    };
    let rows: Vec<(i64, crate::domain::UserState)> = match &period {
        Some((kind, at)) => state
            .store
            .period_board(*kind, at, by, limit, &keep)
            .map_err(|e| ApiError::internal(&e))?,
        None => state
            .store
            .leaderboard_of(by, limit, &keep)
            .map_err(|e| ApiError::internal(&e))?
            .into_iter()
            .map(|u| (crate::store::scores(&u)[by as usize], u))
            .collect(),
    };
    let mut entries: Vec<Entry> = rows
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
    let (period_name, at_name) = match &period {
        Some((kind, at)) => (kind.as_str(), at.clone()),
        None => ("all", "all".to_owned()),
    };
    let mut offsets = vec![state.status.offsets_header()];
    if !forwarded && state.status.in_group() {
        // Every owner's top `limit`, merged: the top `limit` of the union is in it.
        let path = format!(
            "/v1/leaderboard?by={}&period={period_name}&at={at_name}&limit={limit}",
            board_name(by)
        );
        let mut covered = owned.clone().unwrap_or_default();
        let mut failed = Vec::new();
        for a in ask_peers(&state, &path).await {
            match a {
                Ok(a) if a.status == StatusCode::OK => {
                    match serde_json::from_slice::<Leaderboard>(&a.body) {
                        Ok(board) => {
                            covered.extend(a.partitions());
                            if let Some(o) =
                                a.headers.get(HEADER_OFFSETS).and_then(|v| v.to_str().ok())
                            {
                                offsets.push(o.to_owned());
                            }
                            if let Some(p) =
                                a.headers.get(HEADER_PERIODS).and_then(|v| v.to_str().ok())
                            {
                                kept.extend(
                                    p.split(',').filter(|k| !k.is_empty()).map(String::from),
                                );
                            }
                            entries.extend(board.entries);
                        }
                        Err(e) => failed.push(format!("a malformed leaderboard: {e}")),
                    }
                }
                Ok(a) => failed.push(format!("an instance answered {}", a.status)),
                Err(e) => failed.push(e),
            }
        }
        let missing = uncovered(&state, &covered);
        if !missing.is_empty() {
            return Err(owners_missing("the leaderboard", &missing, &failed));
        }
        entries.sort_by(|a, b| {
            score_of(by, &b.score)
                .cmp(&score_of(by, &a.score))
                .then_with(|| a.user_id.cmp(&b.user_id))
        });
        let mut seen = std::collections::HashSet::new();
        entries.retain(|e| seen.insert(e.user_id.clone()));
        entries.truncate(limit);
    }
    if let (Some((kind, at)), false) = (&period, forwarded) {
        // The union of every instance's kept periods, latest first in the message.
        kept.sort();
        kept.dedup();
        let excess = kept.len().saturating_sub(state.store.periods_kept());
        kept.drain(..excess);
        if !kept.contains(at) {
            return Err(ApiError::not_found(format!(
                "{} {at} is not kept; the kept {} periods are: {}",
                kind.as_str(),
                kind.as_str(),
                if kept.is_empty() {
                    "none yet".to_owned()
                } else {
                    kept.join(", ")
                }
            )));
        }
    }
    for (i, e) in entries.iter_mut().enumerate() {
        e.rank = i + 1;
    }
    let mut r = with_freshness(
        &state,
        Json(Leaderboard {
            by: board_name(by).to_owned(),
            period: period_name.to_owned(),
            at: at_name,
            entries,
        })
        .into_response(),
    );
    let merged = offsets
        .into_iter()
        .filter(|o| !o.is_empty())
        .collect::<Vec<_>>()
        .join(",");
    if let Ok(v) = HeaderValue::from_str(&merged) {
        r.headers_mut().insert(HEADER_OFFSETS, v);
    }
    if let Ok(v) = HeaderValue::from_str(&kept.join(",")) {
        r.headers_mut().insert(HEADER_PERIODS, v);
    }
    Ok(r)
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

/// `GET /v1/users/{user_id}/rank?by=&period=&at=`: the user's rank, score and the users on
/// the board, exactly, from the index entries above the user (never every user).
pub(super) async fn rank(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let Path(user_id) =
        path.map_err(|e| ApiError::bad_request("invalid_user_id", e.body_text()))?;
    if user_id.is_empty() || user_id.len() > MAX_USER_ID || user_id.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_user_id",
            format!("user_id must be 1 to {MAX_USER_ID} bytes without control characters"),
        ));
    }
    let forwarded = headers.contains_key(HEADER_FORWARDED);
    let allowed: &[&str] = if forwarded {
        &["by", "period", "at", "score"]
    } else {
        &["by", "period", "at"]
    };
    let q = parse_board_query(query.as_deref(), allowed)?;
    let by = q.by;
    let period = resolve_at(&state, &q)?;
    let keep = holder(&state);
    let board_users = |keep: &dyn Fn(i32) -> bool| -> Result<u64, ApiError> {
        match &period {
            Some((kind, at)) => state
                .store
                .period_users(*kind, at, keep)
                .map_err(|e| ApiError::internal(&e)),
            None => Ok(state.store.users_in(keep)),
        }
    };
    let above = |score: i64| -> Result<u64, ApiError> {
        state
            .store
            .rank_above(
                period.as_ref().map(|(k, at)| (*k, at.as_str())),
                by,
                score,
                &user_id,
                &keep,
            )
            .map_err(|e| ApiError::internal(&e))
    };
    if let (true, Some(score)) = (forwarded, q.score) {
        let body = Above {
            above: above(score)?,
            of: board_users(&keep)?,
        };
        return Ok(with_freshness(&state, Json(body).into_response()));
    }
    // The user's score on the board, where the user is held.
    let found = state
        .store
        .locate_user_among(&user_id, partition_count(&state))
        .map_err(|e| ApiError::internal(&e))?
        .filter(|(p, _)| keep(*p));
    let not_on_board = || {
        ApiError::not_found(match &period {
            Some((kind, at)) => format!(
                "user {user_id:?} has nothing attributed to {} {at}",
                kind.as_str()
            ),
            None => format!("no user {user_id:?}"),
        })
    };
    let local_score = match &found {
        Some((_, u)) => Some(match &period {
            Some((kind, at)) => u
                .periods
                .iter()
                .find(|s| s.kind == *kind && s.key == *at)
                .map(|s| by.period_score(s))
                .ok_or_else(not_on_board)?,
            None => crate::store::scores(u)[by as usize],
        }),
        None => None,
    };
    let (period_name, at_name) = match &period {
        Some((kind, at)) => (kind.as_str(), at.clone()),
        None => ("all", "all".to_owned()),
    };
    let base = format!(
        "/v1/users/{user_id}/rank?by={}&period={period_name}&at={at_name}",
        board_name(by)
    );
    if forwarded || !state.status.in_group() {
        // Answered from the partitions held here only.
        let score = local_score.ok_or_else(not_on_board)?;
        let body = Rank {
            rank: above(score)? + 1,
            score: score_json(by, score),
            of: board_users(&keep)?,
        };
        return Ok(with_freshness(&state, Json(body).into_response()));
    }
    let score = match local_score {
        Some(s) => s,
        None => {
            // The owner knows the score.
            let mut unreachable = Vec::new();
            let mut score = None;
            for a in ask_peers(&state, &base).await {
                match a {
                    Ok(a) if a.status == StatusCode::OK => {
                        if let Ok(r) = serde_json::from_slice::<Rank>(&a.body) {
                            score = score_of(by, &r.score);
                        }
                    }
                    Ok(a) if a.status == StatusCode::NOT_FOUND => {}
                    Ok(a) => unreachable.push(format!("an instance answered {}", a.status)),
                    Err(e) => unreachable.push(e),
                }
            }
            match score {
                Some(s) => s,
                None if unreachable.is_empty() => return Err(not_on_board()),
                None => {
                    return Err(ApiError::unavailable(
                        "partition_moving",
                        format!(
                            "the owner of user {user_id:?} did not answer ({}); try again",
                            unreachable.join("; ")
                        ),
                    ))
                }
            }
        }
    };
    // Every owner counts the users above it in its partitions.
    let mut total = Above {
        above: above(score)?,
        of: board_users(&keep)?,
    };
    let mut covered = state.status.owned().unwrap_or_default();
    let mut failed = Vec::new();
    for a in ask_peers(&state, &format!("{base}&score={score}")).await {
        match a {
            Ok(a) if a.status == StatusCode::OK => match serde_json::from_slice::<Above>(&a.body) {
                Ok(part) => {
                    covered.extend(a.partitions());
                    total.above += part.above;
                    total.of += part.of;
                }
                Err(e) => failed.push(format!("a malformed answer: {e}")),
            },
            Ok(a) => failed.push(format!("an instance answered {}", a.status)),
            Err(e) => failed.push(e),
        }
    }
    let missing = uncovered(&state, &covered);
    if !missing.is_empty() {
        return Err(owners_missing("a rank", &missing, &failed));
    }
    let body = Rank {
        rank: total.above + 1,
        score: score_json(by, score),
        of: total.of,
    };
    Ok(with_freshness(&state, Json(body).into_response()))
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

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
        .locate_user(&user_id)
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
    entries: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    rank: usize,
    user_id: String,
    level: u32,
    xp: i64,
    coins: i64,
    total_spent: String,
}

/// `GET /v1/leaderboard?by=xp|coins|spent&limit=N`.
pub(super) async fn leaderboard(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (mut by, mut limit) = (Board::Xp, 10usize);
    for pair in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "by" => {
                by = match v {
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
            "limit" => {
                limit = v
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
            _ => {
                return Err(ApiError::bad_request(
                    "unknown_parameter",
                    "the only parameters are by and limit",
                ))
            }
        }
    }
    // Only the partitions held now: the others' entries here stopped changing.
    let owned = state.status.owned();
    let users = state
        .store
        .leaderboard_of(by, limit, holder(&state))
        .map_err(|e| ApiError::internal(&e))?;
    let mut entries: Vec<Entry> = users
        .into_iter()
        .map(|u| Entry {
            rank: 0,
            level: u.level,
            xp: u.xp,
            coins: u.coins,
            total_spent: format_minor(u.total_spent),
            user_id: u.user_id,
        })
        .collect();
    let by_name = match by {
        Board::Xp => "xp",
        Board::Coins => "coins",
        Board::Spent => "spent",
    };
    let mut offsets = vec![state.status.offsets_header()];
    if !headers.contains_key(HEADER_FORWARDED) && state.status.in_group() {
        // Every owner's top `limit`, merged: the top `limit` of the union is in it.
        let path = format!("/v1/leaderboard?by={by_name}&limit={limit}");
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
            return Err(ApiError::unavailable(
                "partition_moving",
                format!(
                    "the leaderboard needs every partition's owner: {missing:?} have none that answered (moving between instances?){}; try again",
                    if failed.is_empty() { String::new() } else { format!(" ({})", failed.join("; ")) }
                ),
            ));
        }
        let key = |e: &Entry| -> i64 {
            match by {
                Board::Xp => e.xp,
                Board::Coins => e.coins,
                Board::Spent => {
                    crate::domain::money::parse_formatted(&e.total_spent).unwrap_or(i64::MIN)
                }
            }
        };
        entries.sort_by(|a, b| key(b).cmp(&key(a)).then_with(|| a.user_id.cmp(&b.user_id)));
        let mut seen = std::collections::HashSet::new();
        entries.retain(|e| seen.insert(e.user_id.clone()));
        entries.truncate(limit);
    }
    for (i, e) in entries.iter_mut().enumerate() {
        e.rank = i + 1;
    }
    let mut r = with_freshness(
        &state,
        Json(Leaderboard {
            by: by_name.to_owned(),
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
    Ok(r)
}

pub(super) async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
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

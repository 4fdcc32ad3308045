//! Route handlers: parse, read the store, answer.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

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
    r
}

/// `GET /v1/users/{user_id}`: the projection exactly as on the projections topic.
pub(super) async fn user(
    State(state): State<AppState>,
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
    let Some((p, u)) = found else {
        return Err(ApiError::not_found(format!("no user {user_id:?}")));
    };
    // A partition that moved to another instance is not answered from here: what this
    // store holds of it stopped changing when it left.
    if state
        .status
        .owned()
        .is_some_and(|owned| !owned.contains(&p))
    {
        return Err(ApiError::unavailable(
            "not_owned",
            format!("user {user_id:?} is in partition {p}, which this instance does not hold now; ask its owner"),
        ));
    }
    let body = codec::encode_projection(&u);
    let r = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    Ok(with_freshness(&state, r))
}

#[derive(Serialize)]
struct Leaderboard {
    by: &'static str,
    entries: Vec<Entry>,
}

#[derive(Serialize)]
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
        .leaderboard_of(by, limit, |p| owned.as_ref().is_none_or(|o| o.contains(&p)))
        .map_err(|e| ApiError::internal(&e))?;
    let entries = users
        .into_iter()
        .enumerate()
        .map(|(i, u)| Entry {
            rank: i + 1,
            level: u.level,
            xp: u.xp,
            coins: u.coins,
            total_spent: format_minor(u.total_spent),
            user_id: u.user_id,
        })
        .collect();
    let by = match by {
        Board::Xp => "xp",
        Board::Coins => "coins",
        Board::Spent => "spent",
    };
    Ok(with_freshness(
        &state,
        Json(Leaderboard { by, entries }).into_response(),
    ))
}

/// `GET /healthz`: the process is alive.
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

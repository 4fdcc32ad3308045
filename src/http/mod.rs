//! The query API: projections, leaderboards, health, metrics and the OpenAPI document;
//! and the pages (`/board`, `/me/{user_id}`), static files that read the same API.
//!
//! [`router`] builds the whole app in one place, so tests can drive it with `oneshot`
//! without binding a port. Every error is a JSON body with a 4xx/5xx status, never a panic.

mod cluster;
mod error;
mod forward;
mod handlers;
mod pages;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::timeout::TimeoutLayer;

pub use error::ApiError;
pub use forward::{HEADER_FORWARDED, HEADER_PARTITIONS};
pub use handlers::path_segment;

use crate::status::Status;
use crate::store::Store;
use crate::telemetry;

/// The OpenAPI document of these routes, kept in the repo and served as is.
pub const OPENAPI: &str = include_str!("../../schemas/openapi.json");

/// Every route, as its pattern (the OpenAPI test checks the document against it).
pub const ROUTES: [&str; 12] = [
    "/v1/users/{user_id}",
    "/v1/users/{user_id}/rank",
    "/v1/leaderboard",
    "/v1/levels",
    "/v1/stats/coins",
    "/board",
    "/me/{user_id}",
    "/pages/{file}",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
];

/// Header: the store's offsets the response reflects (`topic/partition=next_offset,...`).
pub const HEADER_OFFSETS: &str = "x-mallquest-offsets";

/// Everything the handlers need.
#[derive(Clone)]
pub struct AppState {
    /// The store the consumer writes.
    pub store: Arc<Store>,
    /// Assignment, readiness, freshness.
    pub status: Arc<Status>,
    /// The Prometheus exporter; `None` where no recorder is installed.
    pub metrics: Option<PrometheusHandle>,
    /// Bearer token required on `/v1/*`, if set (also sent on forwarded queries).
    pub token: Option<Arc<str>>,
    /// How long a query forwarded to another instance may take.
    pub forward_timeout: Duration,
    /// The mall's calendar: the default period of a period board.
    pub calendar: crate::domain::Calendar,
    /// How levels follow XP, for `/v1/levels` (the shopper's page shows progress from it).
    pub levels: crate::domain::rules::LevelScale,
    /// `[expiry]`, for `/v1/stats/coins` (lots by the month they expire in).
    pub expiry: Option<crate::domain::Expiry>,
}

/// The whole HTTP app.
pub fn router(state: AppState, request_timeout: Duration) -> Router {
    let v1 = Router::new()
        .route("/v1/users/{user_id}", get(handlers::user))
        .route("/v1/users/{user_id}/rank", get(handlers::rank))
        .route("/v1/leaderboard", get(handlers::leaderboard))
        .route("/v1/levels", get(handlers::levels))
        .route("/v1/stats/coins", get(handlers::coins))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(v1)
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .route("/openapi.json", get(openapi))
        // The pages' shells hold no data, so they are served without the token: a browser
        // cannot send one on navigation. Their scripts send it to /v1.
        .route("/board", get(pages::board))
        .route("/me/{user_id}", get(pages::me))
        .route("/pages/{file}", get(pages::asset))
        .fallback(handlers::not_found)
        .layer(middleware::from_fn(track))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .with_state(state)
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Counts and times every request by route (the matched pattern, never the raw path,
/// so no user id becomes a label).
async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| route_label(m.as_str()));
    let started = Instant::now();
    let response = next.run(req).await;
    telemetry::http_request(route, response.status().as_u16(), started.elapsed());
    response
}

/// Static labels for the known routes.
fn route_label(pattern: &str) -> &'static str {
    ROUTES
        .into_iter()
        .find(|r| *r == pattern)
        .unwrap_or("other")
}

async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = &state.token else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => next.run(req).await,
        _ => {
            let mut r = ApiError::unauthorized().into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            r
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Default of `[http] max_connections`: most connections served at once; more are closed
/// on accept. Each costs a task and a read buffer of at most [`MAX_REQUEST_HEAD`] bytes,
/// so this bounds the API's memory under a connection flood.
pub const MAX_CONNECTIONS: usize = 4_096;

/// What one client may hold of the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A connection must deliver each whole request head within this, or it is closed.
    pub head_timeout: Duration,
    /// Connections open at once; more are closed on accept.
    pub max_connections: usize,
}

/// Longest request line plus headers; a longer one gets `431` and the connection closes.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// Serves `app` over HTTP/1.1 until `stop` resolves, then lets requests in flight finish.
///
/// Not `axum::serve`: that sets no timer, so a client that sends its headers slowly (or
/// keeps an idle connection) holds a task forever. Here every connection must deliver a
/// whole request head within `limits.head_timeout` (idle keep-alive connections too),
/// heads are capped at [`MAX_REQUEST_HEAD`], and at most `limits.max_connections` are open.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    telemetry::http_connections_refused(0);
    let max = limits
        .max_connections
        .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    let (closing, closed) = tokio::sync::watch::channel(false);
    let mut stop = std::pin::pin!(stop);
    loop {
        let (io, _) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before accept: back
                    // off briefly rather than spin.
                    tracing::warn!(message = "Accept failed.", error = %e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            telemetry::http_connections_refused(1);
            drop(io);
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let mut closed = closed.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.head_timeout)
                .max_buf_size(MAX_REQUEST_HEAD);
            let mut conn = std::pin::pin!(builder.serve_connection(TokioIo::new(io), service));
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = closed.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    let _ = closing.send(true);
    // Every slot back: every connection has finished.
    let _ = slots.acquire_many(max as u32).await;
    Ok(())
}

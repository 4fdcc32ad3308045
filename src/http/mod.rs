//! The query API: projections, leaderboards, health, metrics and the OpenAPI document.
//!
//! [`router`] builds the whole app in one place, so tests can drive it with `oneshot`
//! without binding a port. Every error is a JSON body with a 4xx/5xx status, never a panic.

mod error;
mod handlers;

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

use crate::status::Status;
use crate::store::Store;
use crate::telemetry;

/// The OpenAPI document of these routes, kept in the repo and served as is.
pub const OPENAPI: &str = include_str!("../../schemas/openapi.json");

/// Every route, as its pattern (the OpenAPI test checks the document against it).
pub const ROUTES: [&str; 6] = [
    "/v1/users/{user_id}",
    "/v1/leaderboard",
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
    /// Bearer token required on `/v1/*`, if set.
    pub token: Option<Arc<str>>,
}

/// The whole HTTP app.
pub fn router(state: AppState, request_timeout: Duration) -> Router {
    let v1 = Router::new()
        .route("/v1/users/{user_id}", get(handlers::user))
        .route("/v1/leaderboard", get(handlers::leaderboard))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(v1)
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .route("/openapi.json", get(openapi))
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

/// Serves until `stop` resolves, then drains in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
}

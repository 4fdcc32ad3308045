//! The pages: `/board`, a kiosk leaderboard, and `/me/{user_id}`, a shopper's page.
//!
//! Static files compiled into the binary (`include_str!`), so there is no build step and
//! nothing to deploy beside it. They hold no data: their scripts read everything through
//! `/v1` (with the bearer token the page asks for when `/v1` answers 401), so a page shows
//! exactly what the API serves, gathered across instances like the API. The scripts build
//! the DOM with `textContent` only, and the pages are served with a Content-Security-Policy
//! that allows no inline script and nothing from another origin.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// One file served as is.
struct Asset {
    /// Its name under `/pages/` (the HTML shells are not served there).
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
    /// A hash of `body`, computed at compile time: the strong ETag, so that a browser
    /// revalidates (`no-cache`) with a cheap 304 and never runs a stale script after an
    /// upgrade.
    hash: u64,
}

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

macro_rules! asset {
    ($name:literal, $content_type:expr) => {
        Asset {
            name: $name,
            content_type: $content_type,
            body: include_str!(concat!("pages/", $name)),
            hash: fnv1a(include_str!(concat!("pages/", $name)).as_bytes()),
        }
    };
}

const BOARD: Asset = asset!("board.html", HTML);
const ME: Asset = asset!("me.html", HTML);
/// What the shells load from `/pages/{file}`.
const ASSETS: [Asset; 4] = [
    asset!("pages.css", CSS),
    asset!("common.js", JS),
    asset!("board.js", JS),
    asset!("me.js", JS),
];

/// Scripts and styles from this origin only (no inline script: data shown as markup could
/// not run), requests to this origin only, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self'; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

/// `GET /board`: the leaderboard shell.
pub(super) async fn board(headers: HeaderMap) -> Response {
    serve(&BOARD, &headers)
}

/// `GET /me/{user_id}`: the shopper's page shell, the same for every user (the script
/// reads the id from the address), so it is served without the token.
pub(super) async fn me(headers: HeaderMap) -> Response {
    serve(&ME, &headers)
}

/// `GET /pages/{file}`: a style sheet or script of the shells.
pub(super) async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(a) => serve(a, &headers),
        None => ApiError::not_found("no such page file").into_response(),
    }
}

fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", asset.hash);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut r = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    // Cached, but revalidated on every use: the files are tiny and a 304 is cheap.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // A token in the address's fragment is never sent, but the path names a user.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if asset.content_type == HTML {
        h.insert(
            HeaderName::from_static("content-security-policy"),
            HeaderValue::from_static(CSP),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_a_shell_loads_is_served() {
        for shell in [&BOARD, &ME] {
            for (i, _) in shell.body.match_indices("/pages/") {
                let rest = &shell.body[i + "/pages/".len()..];
                let name = &rest[..rest.find('"').unwrap()];
                assert!(
                    ASSETS.iter().any(|a| a.name == name),
                    "{} loads /pages/{name}, which is not served",
                    shell.name
                );
            }
        }
    }

    #[test]
    fn scripts_never_write_markup() {
        for a in ASSETS.iter().filter(|a| a.content_type == JS) {
            for banned in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
            ] {
                assert!(!a.body.contains(banned), "{} uses {banned}", a.name);
            }
        }
    }
}

//! The query API through the real router (`oneshot`, no port): answers, errors, auth,
//! readiness, and the OpenAPI document against the real routes.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use mallquest::codec;
use mallquest::http::{router, AppState, HEADER_OFFSETS, OPENAPI, ROUTES};
use mallquest::status::Status;
use serde_json::Value;
use support::golden;
use tower::ServiceExt as _;

struct Fixture {
    state: AppState,
    _dir: tempfile::TempDir,
}

fn fixture(token: Option<&str>) -> Fixture {
    let (_, store, dir) = golden::fold_into_store(usize::MAX);
    let status = Arc::new(Status::default());
    status.committed(&store.offsets().unwrap());
    Fixture {
        state: AppState {
            store,
            status,
            metrics: None,
            token: token.map(Arc::from),
            forward_timeout: std::time::Duration::from_secs(2),
            calendar: mallquest::domain::Rules::default().calendar(),
            levels: mallquest::domain::Rules::default().level_scale(),
            expiry: None,
        },
        _dir: dir,
    }
}

async fn get(
    f: &Fixture,
    uri: &str,
    auth: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut req = Request::get(uri);
    if let Some(t) = auth {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = router(f.state.clone(), Duration::from_secs(5))
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap()
        .to_vec();
    (status, headers, body)
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn user_is_served_exactly_as_published_with_freshness() {
    let f = fixture(None);
    let (status, headers, body) = get(&f, "/v1/users/u-00000", None).await;
    assert_eq!(status, StatusCode::OK);
    let stored = f.state.store.find_user("u-00000").unwrap().unwrap();
    assert_eq!(body, codec::encode_projection(&stored));
    golden::assert_projection_eq(&json(&body), &golden::projections()["u-00000"]);
    assert_eq!(headers[HEADER_OFFSETS], "receipts/0=2991");
}

#[tokio::test]
async fn unknown_user_is_a_json_404() {
    let f = fixture(None);
    let (status, _, body) = get(&f, "/v1/users/u-nobody", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json(&body)["error"], "not_found");
}

#[tokio::test]
async fn bad_user_ids_are_json_400s() {
    let f = fixture(None);
    let long = format!("/v1/users/{}", "x".repeat(129));
    for uri in [long.as_str(), "/v1/users/u%01x", "/v1/users/%FF%FE"] {
        let (status, _, body) = get(&f, uri, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(json(&body)["error"], "invalid_user_id", "{uri}");
    }
}

#[tokio::test]
async fn leaderboard_is_exact_over_all_users_with_ties_by_user_id() {
    let f = fixture(None);
    let mut all: Vec<Value> = golden::projections().into_values().collect();
    for (by, field) in [("xp", "xp"), ("coins", "coins"), ("spent", "total_spent")] {
        let score = |v: &Value| -> i64 {
            match v[field].as_i64() {
                Some(n) => n,
                None => {
                    mallquest::domain::money::parse_formatted(v[field].as_str().unwrap()).unwrap()
                }
            }
        };
        all.sort_by(|a, b| {
            score(b)
                .cmp(&score(a))
                .then(a["user_id"].as_str().cmp(&b["user_id"].as_str()))
        });
        let (status, headers, body) =
            get(&f, &format!("/v1/leaderboard?by={by}&limit=100"), None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers.contains_key(HEADER_OFFSETS));
        let v = json(&body);
        assert_eq!(v["by"], by);
        let entries = v["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 100);
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e["rank"], i + 1);
            assert_eq!(e["user_id"], all[i]["user_id"], "{by} rank {}", i + 1);
            for k in ["level", "xp", "coins", "total_spent"] {
                assert_eq!(e[k], all[i][k]);
            }
        }
    }
    let (_, _, body) = get(&f, "/v1/leaderboard", None).await;
    let v = json(&body);
    assert_eq!(v["by"], "xp");
    assert_eq!(v["entries"].as_array().unwrap().len(), 10);
}

#[tokio::test]
async fn bad_leaderboard_queries_are_json_400s() {
    let f = fixture(None);
    for (q, code) in [
        ("limit=0", "invalid_limit"),
        ("limit=101", "invalid_limit"),
        ("limit=abc", "invalid_limit"),
        ("limit=-1", "invalid_limit"),
        ("limit=99999999999999999999999", "invalid_limit"),
        ("by=level", "invalid_by"),
        ("by=", "invalid_by"),
        ("page=2", "unknown_parameter"),
    ] {
        let (status, _, body) = get(&f, &format!("/v1/leaderboard?{q}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}");
        assert_eq!(json(&body)["error"], code, "{q}");
    }
}

#[tokio::test]
async fn token_guards_v1_but_not_health() {
    let f = fixture(Some("s3cret"));
    let (status, headers, body) = get(&f, "/v1/users/u-00000", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert_eq!(json(&body)["error"], "unauthorized");
    assert_eq!(
        get(&f, "/v1/users/u-00000", Some("wrong")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&f, "/v1/users/u-00000", Some("s3cret")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get(&f, "/v1/leaderboard", Some("s3cret")).await.0,
        StatusCode::OK
    );
    assert_eq!(get(&f, "/healthz", None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn readyz_says_why_until_partitions_are_assigned() {
    let f = fixture(None);
    let (status, _, body) = get(&f, "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(json(&body)["message"]
        .as_str()
        .unwrap()
        .contains("assigned"));
    f.state.status.assigned(vec![0]);
    assert_eq!(get(&f, "/readyz", None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn unknown_routes_are_json_404s() {
    let f = fixture(None);
    let (status, _, body) = get(&f, "/v2/whatever", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json(&body)["error"], "not_found");
}

#[tokio::test]
async fn openapi_document_matches_the_real_routes() {
    let f = fixture(None);
    let (status, _, body) = get(&f, "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, OPENAPI.as_bytes());
    let doc = json(&body);
    let mut documented: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    documented.sort_unstable();
    let mut routed = ROUTES.to_vec();
    routed.sort_unstable();
    assert_eq!(documented, routed);
    // Every documented path answers (not the fallback 404) on the real router.
    for path in ROUTES {
        let uri = path.replace("{user_id}", "u-00000");
        let (status, _, body) = get(&f, &uri, None).await;
        let fallback = status == StatusCode::NOT_FOUND && json(&body)["message"] == "no such route";
        assert!(!fallback, "{path} is documented but not routed");
        let documented_statuses: Vec<String> = doc["paths"][path]["get"]["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert!(
            documented_statuses.contains(&status.as_u16().to_string()),
            "{path} answered {status}, not documented"
        );
    }
}

/// The level scale the shopper's page shows progress with: the configured rules', behind
/// the token like the rest of `/v1`.
#[tokio::test]
async fn levels_are_the_configured_scale_behind_the_token() {
    let f = fixture(Some("s3cret"));
    let (status, _, _) = get(&f, "/v1/levels", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, body) = get(&f, "/v1/levels", Some("s3cret")).await;
    assert_eq!(status, StatusCode::OK);
    let rules = mallquest::domain::Rules::default();
    assert_eq!(
        json(&body),
        serde_json::json!({"level_xp_base": rules.level_xp_base, "max_level": rules.max_level})
    );
    let (status, _, body) = get(&f, "/v1/levels?x=1", Some("s3cret")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json(&body)["error"], "unknown_parameter");
}

/// The pages' shells and files hold no data, so they are served without the token (a
/// browser cannot send one on navigation), with their types, a CSP that allows no inline
/// script, and revalidated caching (an ETag, `no-cache`, 304 when unchanged).
#[tokio::test]
async fn pages_are_served_without_the_token_typed_and_revalidated() {
    let f = fixture(Some("s3cret"));
    for (uri, content_type) in [
        ("/board", "text/html; charset=utf-8"),
        ("/me/%3Cb%3Ex%3C%2Fb%3E", "text/html; charset=utf-8"),
        ("/pages/pages.css", "text/css; charset=utf-8"),
        ("/pages/common.js", "text/javascript; charset=utf-8"),
        ("/pages/board.js", "text/javascript; charset=utf-8"),
        ("/pages/me.js", "text/javascript; charset=utf-8"),
    ] {
        let (status, headers, body) = get(&f, uri, None).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert_eq!(headers["content-type"], content_type, "{uri}");
        assert_eq!(headers["cache-control"], "no-cache", "{uri}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{uri}");
        assert!(!body.is_empty(), "{uri}");
        if content_type.starts_with("text/html") {
            let csp = headers["content-security-policy"].to_str().unwrap();
            assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
            // The same shell for every user: nothing of the address is in it.
            assert!(!String::from_utf8_lossy(&body).contains("<b>x"));
        }
        let etag = headers["etag"].clone();
        let resp = router(f.state.clone(), Duration::from_secs(5))
            .oneshot(
                Request::get(uri)
                    .header("if-none-match", etag)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED, "{uri}");
    }
    let (status, _, body) = get(&f, "/pages/secret.toml", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json(&body)["error"], "not_found");
}

/// `run`'s API serves before its consumer has joined the group: until partitions are
/// assigned it holds none, so it neither answers from its store nor says "no such user"
/// (a peer may hold the user): a 503 either way.
#[tokio::test]
async fn an_instance_that_has_not_joined_its_group_yet_answers_503_never_404() {
    let f = fixture(None);
    f.state.status.set_grouped();
    // In its store, but not held: not answered from there.
    let (status, _, body) = get(&f, "/v1/users/u-00000", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(&body)["error"], "not_owned");
    // Not in its store: no partition is covered yet, so not a 404.
    let (status, _, body) = get(&f, "/v1/users/u-nobody", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(&body)["error"], "partition_moving");
}

/// A standalone API over the game vectors' store.
fn game_fixture() -> Fixture {
    game_fixture_with(golden::game::config())
}

fn game_fixture_with(config: mallquest::config::Config) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(mallquest::store::Store::open(dir.path()).unwrap());
    let mut processor =
        mallquest::pipeline::Processor::new(Arc::clone(&store), config.rules.clone());
    let mut sink = mallquest::pipeline::MemorySink::default();
    for r in golden::game::receipts() {
        golden::feed(&mut processor, &r);
    }
    processor.commit(&mut sink).unwrap();
    let status = Arc::new(Status::default());
    status.committed(&store.offsets().unwrap());
    Fixture {
        state: AppState {
            store,
            status,
            metrics: None,
            token: None,
            forward_timeout: std::time::Duration::from_secs(2),
            calendar: config.rules.calendar(),
            levels: config.rules.level_scale(),
            expiry: config.rules.game.expiry,
        },
        _dir: dir,
    }
}

#[tokio::test]
async fn period_boards_and_ranks_are_the_game_vectors_over_http() {
    let f = game_fixture();
    let reference = golden::game::reference();
    for want in golden::game::boards() {
        let (period, at, by) = (
            want["period"].as_str().unwrap(),
            want["at"].as_str().unwrap(),
            want["by"].as_str().unwrap(),
        );
        let n = want["entries"].as_array().unwrap().len();
        let (status, _, body) = get(
            &f,
            &format!("/v1/leaderboard?by={by}&period={period}&at={at}&limit={n}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let v = json(&body);
        assert_eq!(
            (&v["by"], &v["period"], &v["at"]),
            (&want["by"], &want["period"], &want["at"])
        );
        let got: Vec<Value> = v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| serde_json::json!({"rank": e["rank"], "user_id": e["user_id"], "score": e["score"]}))
            .collect();
        assert_eq!(&Value::from(got), &want["entries"], "{period} {at} {by}");
        // Each entry also carries the user's current figures.
        for e in v["entries"].as_array().unwrap() {
            let p = &reference.projections[e["user_id"].as_str().unwrap()];
            for k in ["level", "xp", "coins", "total_spent"] {
                assert_eq!(e[k], p[k], "{k} of {}", e["user_id"]);
            }
        }
        // Ranks of every fifth user on the board, as the reference ranks them.
        let full = reference.board(period, at, by).unwrap();
        for e in full.entries.iter().step_by(5) {
            let (status, _, body) = get(
                &f,
                &format!(
                    "/v1/users/{}/rank?by={by}&period={period}&at={at}",
                    e.user_id
                ),
                None,
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
            let r = json(&body);
            assert_eq!(r["rank"], e.rank, "{period} {at} {by} {}", e.user_id);
            assert_eq!(r["of"], want["of"]);
            let score = if by == "spent" {
                Value::from(mallquest::domain::money::format_minor(e.score as i64))
            } else {
                Value::from(e.score as i64)
            };
            assert_eq!(r["score"], score);
        }
    }
    // The default period is the one holding the highest event-time mark (the hand-made
    // cases end on 2026-12-07, Berlin time), and period defaults to all.
    for (q, at) in [
        ("period=day", "2026-12-07"),
        ("period=week", "2026-W50"),
        ("period=month", "2026-12"),
        ("", "all"),
    ] {
        let (status, _, body) = get(&f, &format!("/v1/leaderboard?{q}"), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json(&body)["at"], at, "{q}");
    }
}

#[tokio::test]
async fn periods_not_kept_and_bad_board_queries_are_json_errors() {
    let f = game_fixture();
    let (status, _, body) = get(&f, "/v1/leaderboard?period=week&at=2026-W40", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let message = json(&body)["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("2026-W48, 2026-W49, 2026-W50"),
        "names the kept weeks: {message}"
    );
    let (status, _, _) = get(&f, "/v1/users/u-000/rank?period=day&at=2026-10-01", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = get(&f, "/v1/users/nobody/rank", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for (path, code) in [
        ("/v1/leaderboard?period=year", "invalid_period"),
        ("/v1/leaderboard?period=day&at=2026-13-01", "invalid_at"),
        ("/v1/leaderboard?period=week&at=2026-W54", "invalid_at"),
        ("/v1/leaderboard?period=month&at=2026-1", "invalid_at"),
        ("/v1/leaderboard?at=2026-12", "invalid_at"),
        ("/v1/users/u-000/rank?by=level", "invalid_by"),
        ("/v1/users/u-000/rank?limit=3", "unknown_parameter"),
        ("/v1/users/u-000/rank?score=5", "unknown_parameter"),
    ] {
        let (status, _, body) = get(&f, path, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(json(&body)["error"], code, "{path}");
    }
}

/// `[processing] periods_kept = 0` turns the period boards off: nothing is indexed for
/// them, period queries are 404s that say so, and the all-time boards are unchanged.
#[tokio::test]
async fn with_no_periods_kept_period_queries_say_the_boards_are_off() {
    let mut config = golden::game::config();
    config.processing.periods_kept = 0;
    config.rules.game.periods_kept = Some(0);
    let off = game_fixture_with(config);
    let on = game_fixture();
    for path in [
        "/v1/leaderboard?period=week",
        "/v1/leaderboard?period=day",
        "/v1/leaderboard?period=week&at=2026-W50",
        "/v1/users/u-000/rank?period=month",
    ] {
        let (status, _, body) = get(&off, path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        let message = json(&body)["message"].as_str().unwrap().to_owned();
        assert!(message.contains("periods_kept = 0"), "{path}: {message}");
        let (status, _, _) = get(&on, path, None).await;
        assert_eq!(status, StatusCode::OK, "{path} with the boards on");
    }
    for by in ["xp", "coins", "spent"] {
        let path = format!("/v1/leaderboard?by={by}&limit=100");
        let (s1, _, a) = get(&off, &path, None).await;
        let (s2, _, b) = get(&on, &path, None).await;
        assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
        assert_eq!(json(&a)["entries"], json(&b)["entries"], "{path}");
    }
    // Nothing attributed to periods, so nothing for their index.
    let periods = |f: &Fixture| -> usize {
        f.state
            .store
            .users()
            .map(|u| u.unwrap().periods.len())
            .sum()
    };
    assert_eq!(periods(&off), 0);
    assert!(periods(&on) > 0);
}

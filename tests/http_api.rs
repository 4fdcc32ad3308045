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

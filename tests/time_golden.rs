//! The team's time vectors (`tests/golden/time/`: coin expiry in monthly lots, status
//! tiers, event-time timers, worked out independently of mallquest) folded through the
//! real pipeline (in-process source, durable store): projections, events in order and
//! rejections must match exactly, whatever the batch size, under both downgrade rules.

mod support;

use std::sync::Arc;

use mallquest::codec::{self, ProjectionJson};
use mallquest::domain::timers::month_label;
use mallquest::domain::Timestamp;
use mallquest::pipeline::{MemorySink, Processor};
use mallquest::store::Store;
use serde_json::Value;
use support::golden::time::instants;
use support::golden::{self, time};

/// The two sets: `one_down` and `to_qualified`.
const SETS: [&str; 2] = ["", "to-qualified/"];

fn fold(dir: &str, commit_every: usize) -> (MemorySink, Arc<Store>, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(tmp.path()).unwrap());
    let config = mallquest::config::Config::parse(&time::config_text(dir)).unwrap();
    let mut processor = Processor::new(Arc::clone(&store), config.rules.clone())
        .with_dedup_window_days(config.processing.dedup_window_days);
    let mut sink = MemorySink::default();
    for (i, r) in time::receipts().iter().enumerate() {
        golden::feed(&mut processor, r);
        if (i + 1) % commit_every == 0 {
            processor.commit(&mut sink).unwrap();
        }
    }
    processor.commit(&mut sink).unwrap();
    drop(processor);
    (sink, store, tmp)
}

/// The projection as compared (`time::comparable`).
fn comparable(p: &ProjectionJson) -> Value {
    time::comparable(serde_json::to_value(p).unwrap())
}

#[test]
fn time_vectors_give_the_expected_projections_in_store_and_outputs() {
    for dir in SETS {
        for commit_every in [1, 97, 100_000] {
            let (sink, store, _tmp) = fold(dir, commit_every);
            let expected = time::projections(dir);
            let mut wrong = Vec::new();
            for (user, want) in &expected {
                let mut want = want.clone();
                instants(&mut want);
                for (place, state) in [
                    ("published", sink.projections.get(user).cloned()),
                    ("stored", store.find_user(user).unwrap()),
                ] {
                    let Some(state) = state else {
                        wrong.push(format!("{place} {user}: missing"));
                        continue;
                    };
                    let got = comparable(&ProjectionJson::from_state(&state));
                    if got != want {
                        wrong.push(format!("{place} {user}:\n  got  {got}\n  want {want}"));
                    }
                }
            }
            assert!(
                wrong.is_empty(),
                "{} projections differ ({dir:?}, commits of {commit_every}):\n{}",
                wrong.len(),
                wrong.join("\n")
            );
            assert_eq!(sink.projections.len(), expected.len(), "users ({dir:?})");
        }
    }
}

#[test]
fn time_vectors_give_the_expected_events_in_order() {
    for dir in SETS {
        for commit_every in [1, 50, 100_000] {
            let (sink, _store, _tmp) = fold(dir, commit_every);
            let got: Vec<Value> = sink
                .events
                .iter()
                .map(|e| {
                    let mut v = serde_json::from_slice(&codec::encode_event(e)).unwrap();
                    instants(&mut v);
                    v
                })
                .collect();
            let want: Vec<Value> = time::events(dir)
                .into_iter()
                .map(|mut v| {
                    instants(&mut v);
                    v
                })
                .collect();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g, w, "event {i} ({dir:?}, commits of {commit_every})");
            }
            assert_eq!(got.len(), want.len(), "number of events ({dir:?})");
        }
    }
}

#[test]
fn time_vectors_reject_exactly_the_expected_records() {
    for dir in SETS {
        let (sink, _store, _tmp) = fold(dir, 50);
        let got: Vec<(i64, String)> = sink
            .dead_letters
            .iter()
            .map(|d| (d.offset, d.reason.as_str().to_owned()))
            .collect();
        assert_eq!(got, time::dlq(dir), "{dir:?}");
    }
}

/// What `/v1/stats/coins` answers from a store holding `store`'s users.
async fn coin_stats(store: Arc<Store>, expiry: Option<mallquest::domain::Expiry>) -> Value {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt as _;
    let status = Arc::new(mallquest::status::Status::default());
    status.committed(&store.offsets().unwrap());
    let state = mallquest::http::AppState {
        store,
        status,
        metrics: None,
        token: None,
        forward_timeout: std::time::Duration::from_secs(2),
        calendar: mallquest::domain::Rules::default().calendar(),
        levels: mallquest::domain::Rules::default().level_scale(),
        expiry,
    };
    let app = mallquest::http::router(state, std::time::Duration::from_secs(5));
    let req = Request::get("/v1/stats/coins").body(Body::empty()).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let bad = Request::get("/v1/stats/coins?x=1")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        app.oneshot(bad).await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    serde_json::from_slice(&body).unwrap()
}

/// The coin liability the API serves (moved by each commit, rebuilt at open) is what the
/// expected projections add up to, and its lots by expiry month are the stored users'.
#[tokio::test]
async fn the_coin_liability_adds_up_the_users_and_survives_a_reopen() {
    let expected = time::projections("");
    let n = |v: &Value| v.as_i64().unwrap();
    let held: i64 = expected.values().map(|p| n(&p["coins"]).max(0)).sum();
    let debt: i64 = expected.values().map(|p| (-n(&p["coins"])).max(0)).sum();
    let expired: i64 = expected.values().map(|p| n(&p["coins_expired"])).sum();
    let redeemed: i64 = expected.values().map(|p| n(&p["coins_redeemed"])).sum();
    assert!(held > 0 && debt > 0 && expired > 0 && redeemed > 0);
    let config = mallquest::config::Config::parse(&time::config_text("")).unwrap();
    let expiry = config.rules.game.expiry;
    for commit_every in [1, 97, 100_000] {
        let (_sink, store, tmp) = fold("", commit_every);
        // The lots of the stored users, by the month they expire in.
        let mut by_month = std::collections::BTreeMap::<String, i64>::new();
        for u in store.users() {
            let u = u.unwrap();
            for (earned, coins) in &u.lots {
                // `[expiry] months = 2`: a lot earned in M expires at the start of M + 2.
                *by_month.entry(month_label(earned + 2)).or_default() += coins;
            }
        }
        assert_eq!(by_month.values().sum::<i64>(), held);
        let want = serde_json::json!({
            "outstanding": {"total": held, "by_expiry_month": by_month},
            "debt": debt,
            "expired": expired,
            "redeemed": redeemed,
        });
        assert_eq!(coin_stats(Arc::clone(&store), expiry).await, want);
        // Rebuilt from the users when the store opens again.
        drop(store);
        let reopened = Arc::new(Store::open(tmp.path()).unwrap());
        assert_eq!(coin_stats(reopened, expiry).await, want);
    }
}

/// A processor stopped after every commit and started again on the reopened store (its
/// timers read again from the stored users, its mark from the store, to the full
/// precision of `issued_at`) publishes exactly what one processor does.
#[test]
fn a_restart_after_every_commit_changes_nothing() {
    for dir in SETS {
        let config = mallquest::config::Config::parse(&time::config_text(dir)).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let mut sink = MemorySink::default();
        let receipts = time::receipts();
        for chunk in receipts.chunks(61) {
            let store = Arc::new(Store::open(tmp.path()).unwrap());
            let mut processor = Processor::new(Arc::clone(&store), config.rules.clone())
                .with_dedup_window_days(config.processing.dedup_window_days);
            for r in chunk {
                golden::feed(&mut processor, r);
            }
            processor.commit(&mut sink).unwrap();
        }
        let expected = time::projections(dir);
        for (user, want) in &expected {
            let mut want = want.clone();
            instants(&mut want);
            let got = comparable(&ProjectionJson::from_state(&sink.projections[user]));
            assert_eq!(got, want, "{user} ({dir:?})");
        }
        let want: Vec<Value> = time::events(dir)
            .into_iter()
            .map(|mut v| {
                instants(&mut v);
                v
            })
            .collect();
        let got: Vec<Value> = sink
            .events
            .iter()
            .map(|e| {
                let mut v = serde_json::from_slice(&codec::encode_event(e)).unwrap();
                instants(&mut v);
                v
            })
            .collect();
        assert_eq!(got, want, "{dir:?}");
    }
}

/// The mark keeps the fraction of a second of the `issued_at` that set it, in the store
/// too: a late record that qualifies a user after a restart gets the mark's exact instant
/// as its `tier_changed` `at` and its tier's `since`.
#[test]
fn the_mark_keeps_its_fraction_across_a_restart() {
    let config = mallquest::config::Config::parse(
        "[rules]\ntimezone = \"Europe/Berlin\"\n\n[tiers]\n[[tiers.levels]]\nid = \"silver\"\nmin = \"50.00\"\n",
    )
    .unwrap();
    let receipt = |id: &str, user: &str, amount: &str, at: &str| {
        let v = serde_json::json!({
            "receipt_id": id, "user_id": user, "store_id": "s-1", "amount": amount, "issued_at": at,
        });
        (user.to_owned(), serde_json::to_vec(&v).unwrap())
    };
    let records = [
        receipt("r-1", "u-a", "10.00", "2027-03-10T10:00:00.750+01:00"),
        // Late: issued before the mark, and enough for silver.
        receipt("r-2", "u-b", "60.00", "2027-03-09T10:00:00Z"),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let mut sink = MemorySink::default();
    for (offset, (user, value)) in records.iter().enumerate() {
        // A processor a record, each on the store the one before left.
        let store = Arc::new(Store::open(tmp.path()).unwrap());
        let mut processor = Processor::new(Arc::clone(&store), config.rules.clone());
        processor
            .process(mallquest::pipeline::Record {
                topic: "receipts",
                partition: 0,
                offset: offset as i64,
                key: Some(user.as_bytes()),
                payload: Some(value),
                timestamp_ms: None,
            })
            .unwrap();
        processor.commit(&mut sink).unwrap();
    }
    let mark = Timestamp::parse_rfc3339("2027-03-10T09:00:00.750Z").unwrap();
    let changed: Vec<Value> = sink
        .events
        .iter()
        .map(|e| serde_json::from_slice(&codec::encode_event(e)).unwrap())
        .filter(|v: &Value| v["type"] == "tier_changed")
        .collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(
        Timestamp::parse_rfc3339(changed[0]["at"].as_str().unwrap()),
        Some(mark)
    );
    let b = &sink.projections["u-b"];
    assert_eq!(b.tier.as_ref().map(|t| t.since), Some(mark));
}

//! Property: any event stream, folded by the processor with commits and crashes at
//! random points (a crash drops the batch in hand and reopens the store, like SIGKILL),
//! ends in exactly the state the naive reference fold computes.
//! Shaped after sled's tests: random operations against the real store and a model.
//! Receipts spread over a week against a 2-day dedup window, with forced ledger
//! compactions, so that `too_old` and forgotten ledger entries are exercised too.

mod support;

use std::sync::Arc;

use mallquest::codec::ProjectionJson;
use mallquest::domain::Rules;
use mallquest::pipeline::Processor;
use mallquest::store::Store;
use proptest::prelude::*;
use support::crash::{Action, Harness};

const PARTITIONS: usize = 2;
const WINDOW_DAYS: u32 = 2;

fn processor(store: &Arc<Store>, rules: &Rules) -> Processor {
    Processor::new(Arc::clone(store), rules.clone()).with_dedup_window_days(WINDOW_DAYS)
}

#[derive(Debug, Clone)]
struct Spec {
    user: u8,
    kind: u8,
    amount: i64,
    pick: usize,
    store: u8,
    as_number: bool,
    day: u8,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0u8..5,
        0u8..12,
        1i64..30_000,
        any::<usize>(),
        0u8..3,
        any::<bool>(),
        0u8..7,
    )
        .prop_map(|(user, kind, amount, pick, store, as_number, day)| Spec {
            user,
            kind,
            amount,
            pick,
            store,
            as_number,
            day,
        })
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        8 => (0..PARTITIONS).prop_map(Action::Next),
        1 => Just(Action::Commit),
        2 => Just(Action::CommitBehind),
        2 => Just(Action::SendChanges),
        1 => Just(Action::Crash),
        1 => Just(Action::Compact),
    ]
}

/// Builds per-partition logs of (key, value) from the specs.
fn build(specs: &[Spec]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut logs = vec![Vec::new(); PARTITIONS];
    let mut emitted: Vec<(usize, serde_json::Value)> = Vec::new();
    let mut purchases: Vec<(u8, String)> = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        let user = format!("u-{}", s.user);
        let amount = format!("{}.{:02}", s.amount / 100, s.amount % 100);
        let amount_json = if s.as_number {
            serde_json::Value::Number(
                serde_json::Number::from_f64(s.amount as f64 / 100.0).unwrap(),
            )
        } else {
            amount.clone().into()
        };
        let mut v = serde_json::json!({
            "receipt_id": format!("r-{i}"),
            "user_id": user,
            "store_id": format!("s-{}", s.store),
            "amount": amount_json,
            "issued_at": format!("2026-11-{:02}T{:02}:{:02}:00+0{}:00", 18 + s.day, 10 + s.amount % 10, s.amount % 60, s.store),
        });
        let p = s.user as usize % PARTITIONS;
        let value = match s.kind {
            0..=5 => {
                purchases.push((s.user, format!("r-{i}")));
                v
            }
            6 | 7 if !purchases.is_empty() => {
                let (owner, id) = &purchases[s.pick % purchases.len()];
                // Mostly this user's purchases; sometimes another user's (unknown_original).
                if s.kind == 7 || *owner == s.user {
                    v["type"] = "refund".into();
                    v["refund_of"] = id.clone().into();
                    v
                } else {
                    v["type"] = "refund".into();
                    v["refund_of"] = format!("r-{}", s.pick % (i + 1)).into();
                    v
                }
            }
            8 if !emitted.is_empty() => {
                let (p, v) = emitted[s.pick % emitted.len()].clone();
                let key = v["user_id"].as_str().unwrap().as_bytes().to_vec();
                logs[p].push((key, serde_json::to_vec(&v).unwrap()));
                continue;
            }
            9 if !emitted.is_empty() => {
                let (p, mut v) = emitted[s.pick % emitted.len()].clone();
                v["store_id"] = "s-other".into();
                let key = v["user_id"].as_str().unwrap().as_bytes().to_vec();
                logs[p].push((key, serde_json::to_vec(&v).unwrap()));
                continue;
            }
            10 => {
                logs[p].push((user.into_bytes(), b"{broken".to_vec()));
                continue;
            }
            11 => {
                v["currency"] = "USD".into();
                v
            }
            _ => v,
        };
        emitted.push((p, value.clone()));
        logs[p].push((user.into_bytes(), serde_json::to_vec(&value).unwrap()));
    }
    logs
}

fn run_case(specs: &[Spec], actions: &[Action]) {
    let rules = Rules::default();
    let logs = build(specs);
    let dir = tempfile::tempdir().unwrap();
    let mut h: Harness<'_> = Harness::new(&logs, dir.path(), |store| processor(store, &rules));
    let mut step = 0usize;
    // A crash rewinds to the last commit, so a schedule of crashes without commits
    // would never finish: a few crashes per case, and later ones act as commits.
    let mut crashes_left = 4;
    while !h.done() {
        let mut a = if actions.is_empty() {
            Action::Next(step % PARTITIONS)
        } else {
            actions[step % actions.len()]
        };
        step += 1;
        if matches!(a, Action::Crash) {
            if crashes_left == 0 {
                a = Action::Commit;
            } else {
                crashes_left -= 1;
            }
        }
        if !matches!(a, Action::Next(_)) && step % 3 == 0 {
            // Every schedule keeps delivering records between commits and crashes.
            a = Action::Next(step % PARTITIONS);
        }
        h.act(a);
    }
    h.finish();

    let records = h.records();
    let (store, sink) = (h.store(), &h.sink);
    let expected = support::reference::fold_windowed(&rules, &records, WINDOW_DAYS.into());
    let stored: Vec<_> = store.users().map(Result::unwrap).collect();
    assert_eq!(stored.len(), expected.projections.len());
    for u in &stored {
        let got = serde_json::to_value(ProjectionJson::from_state(u)).unwrap();
        support::golden::assert_projection_eq(&got, &expected.projections[&u.user_id]);
        // The last published projection of each user equals its stored state.
        assert_eq!(&sink.projections[&u.user_id], u);
    }
    // Every rejected record reached the DLQ (at least once, identical reason).
    let mut dlq = std::collections::BTreeMap::new();
    for d in &sink.dead_letters {
        let prev = dlq.insert((d.partition, d.offset), d.reason.as_str().to_owned());
        if let Some(prev) = prev {
            assert_eq!(prev, d.reason.as_str(), "a replay changed a decision");
        }
    }
    assert_eq!(dlq, expected.dlq);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
    ))]

    #[test]
    fn processor_with_crashes_equals_reference_fold(
        specs in prop::collection::vec(spec(), 1..120),
        actions in prop::collection::vec(action(), 0..40),
    ) {
        run_case(&specs, &actions);
    }
}

#[test]
fn crash_before_commit_replays_without_double_counting() {
    // Regression-style pin of the basic promise: fold, crash, fold again.
    let specs: Vec<Spec> = (0..50)
        .map(|i| Spec {
            user: (i % 3) as u8,
            kind: (i % 12) as u8,
            amount: 1000 + i as i64 * 37,
            pick: i * 7,
            store: (i % 3) as u8,
            as_number: i % 2 == 0,
            day: (i % 7) as u8,
        })
        .collect();
    let actions = [
        Action::Next(0),
        Action::Next(1),
        Action::Commit,
        Action::Next(0),
        Action::Next(1),
        Action::Crash,
        Action::Next(1),
    ];
    run_case(&specs, &actions);
}

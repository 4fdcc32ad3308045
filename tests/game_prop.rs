//! Property: any stream of purchases, refunds, redemptions and reversals (duplicates,
//! late receipts, bad redemptions, receipts either side of a rule-history boundary, a
//! campaign with a cap, missions of every period that keep or revoke, streaks, badges),
//! folded by the processor with commits and crashes at random points, ends in exactly the
//! projections, events and rejections of the separately written game reference
//! (`support::game_reference`, which shares no code with mallquest).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use mallquest::codec::{self, ProjectionJson};
use mallquest::pipeline::Processor;
use proptest::prelude::*;
use serde_json::{json, Value};
use support::crash::{Action, Harness};
use support::game_reference;

const PARTITIONS: usize = 2;

const CONFIG: &str = r#"
[rules]
timezone = "Europe/Berlin"
store_multipliers = { "s-0" = 150 }

[[rules.history]]
until = "2026-11-21T12:00:00+01:00"
coins_per_unit = 2
xp_per_unit = 3
store_multipliers = { "s-1" = 300 }

[store_categories]
"s-0" = "fashion"
"s-1" = "fashion"
"s-2" = "food"

[[campaigns]]
id = "weekend"
start = "2026-11-21T00:00:00+01:00"
end = "2026-11-23T00:00:00+01:00"
categories = ["fashion"]
bonus_percent = 100
max_coins_per_user = 150

[[campaigns]]
id = "food"
start = "2026-11-18T00:00:00+01:00"
end = "2026-11-30T00:00:00+01:00"
stores = ["s-2"]
min_amount = "20.00"
bonus_coins = 7

[[missions]]
id = "two-stores-a-day"
period = "day"
goal = "stores"
target = 2
reward_coins = 30
reward_xp = 15
on_refund = "revoke"

[[missions]]
id = "spend-a-week"
period = "week"
goal = "spend"
target = "300.00"
reward_coins = 50
reward_xp = 40
on_refund = "keep"

[[missions]]
id = "fashion-month"
period = "month"
goal = "category_spend"
category = "fashion"
target = "150.00"
reward_coins = 20
reward_xp = 120
on_refund = "revoke"

[[missions]]
id = "three-in-the-window"
period = "once"
start = "2026-11-20T00:00:00+01:00"
end = "2026-11-23T00:00:00+01:00"
goal = "receipts"
target = 3
reward_coins = 25
on_refund = "revoke"

[streaks]
unit = "day"

[[badges]]
id = "streak-3"
kind = "streak"
threshold = 3

[[badges]]
id = "five"
kind = "receipts"
threshold = 5

[[badges]]
id = "spender"
kind = "spend"
threshold = "400.00"

[[badges]]
id = "level-3"
kind = "level"
threshold = 3

[[badges]]
id = "missions-2"
kind = "missions"
threshold = 2
"#;

#[derive(Debug, Clone)]
struct Spec {
    user: u8,
    kind: u8,
    amount: i64,
    pick: usize,
    store: u8,
    day: u8,
    hour: u8,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0u8..4,
        0u8..16,
        1i64..25_000,
        any::<usize>(),
        0u8..4,
        0u8..8,
        0u8..24,
    )
        .prop_map(|(user, kind, amount, pick, store, day, hour)| Spec {
            user,
            kind,
            amount,
            pick,
            store,
            day,
            hour,
        })
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        10 => (0..PARTITIONS).prop_map(Action::Next),
        1 => Just(Action::Commit),
        2 => Just(Action::CommitBehind),
        2 => Just(Action::SendChanges),
        1 => Just(Action::Crash),
    ]
}

/// Per-partition logs of (key, value).
fn build(specs: &[Spec]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut logs = vec![Vec::new(); PARTITIONS];
    let mut ids: Vec<(u8, String, bool)> = Vec::new(); // (user, receipt_id, is_redemption)
    let mut emitted: Vec<(usize, Value)> = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        let user = format!("u-{}", s.user);
        let amount = format!("{}.{:02}", s.amount / 100, s.amount % 100);
        // Days 18 to 25 November; hours either side of the history boundary on the 21st.
        let at = format!("2026-11-{:02}T{:02}:00:00+01:00", 18 + s.day, s.hour);
        let mut v = json!({
            "receipt_id": format!("r-{i}"),
            "user_id": user,
            "store_id": format!("s-{}", s.store),
            "amount": amount,
            "issued_at": at,
        });
        let p = s.user as usize % PARTITIONS;
        let value = match s.kind {
            0..=6 => {
                ids.push((s.user, format!("r-{i}"), false));
                v
            }
            7 | 8 if !ids.is_empty() => {
                let (_, id, _) = &ids[s.pick % ids.len()];
                v["type"] = "refund".into();
                v["refund_of"] = id.clone().into();
                v
            }
            9 | 10 => {
                v["type"] = "redemption".into();
                v["coins"] = (s.amount % 120 + 1).into();
                if s.kind == 10 {
                    v.as_object_mut().unwrap().remove("amount");
                } else {
                    v["amount"] = "0.00".into();
                }
                ids.push((s.user, format!("r-{i}"), true));
                v
            }
            11 if !ids.is_empty() => {
                let (_, id, _) = &ids[s.pick % ids.len()];
                v["type"] = "redemption_reversal".into();
                v["refund_of"] = id.clone().into();
                v.as_object_mut().unwrap().remove("amount");
                v
            }
            12 => {
                // A bad redemption: no coins, zero, or a fraction.
                v["type"] = "redemption".into();
                match s.pick % 3 {
                    0 => {}
                    1 => v["coins"] = 0.into(),
                    _ => v["coins"] = json!(1.5),
                }
                v
            }
            13 | 14 if !emitted.is_empty() => {
                // A duplicate, exact or (for 14) with another amount.
                let (q, mut old) = emitted[s.pick % emitted.len()].clone();
                if s.kind == 14 && old.get("coins").is_none() {
                    old["amount"] = "1.23".into();
                }
                logs[q].push((
                    old["user_id"].as_str().unwrap().as_bytes().to_vec(),
                    serde_json::to_vec(&old).unwrap(),
                ));
                continue;
            }
            _ => v,
        };
        emitted.push((p, value.clone()));
        logs[p].push((user.into_bytes(), serde_json::to_vec(&value).unwrap()));
    }
    logs
}

fn run(specs: Vec<Spec>, actions: Vec<Action>) {
    let config = mallquest::config::Config::parse(CONFIG).unwrap();
    let rules = config.rules.clone();
    let logs = build(&specs);
    let dir = tempfile::tempdir().unwrap();
    let mut h: Harness<'_> = Harness::new(&logs, dir.path(), |store| {
        Processor::new(Arc::clone(store), rules.clone())
    });
    let mut step = 0;
    let mut actions = actions.into_iter();
    while !h.done() {
        step += 1;
        h.act(actions.next().unwrap_or(Action::Next(step % PARTITIONS)));
    }
    h.finish();

    let records = h.records();
    let (store, sink) = (h.store(), &h.sink);
    let expected = game_reference::fold(CONFIG, &records);

    // State: every stored user equals the reference's projection.
    let stored: Vec<_> = store.users().map(Result::unwrap).collect();
    assert_eq!(stored.len(), expected.projections.len());
    for u in &stored {
        let mut got = serde_json::to_value(ProjectionJson::from_state(u)).unwrap();
        got.as_object_mut().unwrap().remove("missions");
        support::golden::assert_projection_eq(&got, &expected.projections[&u.user_id]);
        assert_eq!(&sink.projections[&u.user_id], u, "published = stored");
    }
    // Events: at least once, identical content on replay, so the same set; and in the
    // reference's order for each user once replays are folded away.
    let got_events: Vec<Value> = sink
        .events
        .iter()
        .map(|e| serde_json::from_slice(&codec::encode_event(e)).unwrap())
        .collect();
    let canon = |v: &Value| {
        let mut v = v.clone();
        let at = game_reference::parse_instant(v["at"].as_str().unwrap()).unwrap();
        v["at"] = game_reference::format_instant(at).into();
        v.to_string()
    };
    let got_set: BTreeSet<String> = got_events.iter().map(canon).collect();
    let want_set: BTreeSet<String> = expected.events.iter().map(canon).collect();
    assert_eq!(got_set, want_set, "events");
    let mut per_user: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in &got_events {
        let list = per_user
            .entry(e["user_id"].as_str().unwrap().into())
            .or_default();
        let c = canon(e);
        if !list.contains(&c) {
            list.push(c);
        }
    }
    let mut want_per_user: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in &expected.events {
        want_per_user
            .entry(e["user_id"].as_str().unwrap().into())
            .or_default()
            .push(canon(e));
    }
    assert_eq!(per_user, want_per_user, "events per user, in order");
    // Rejections: every rejected record reached the DLQ with the reference's reason.
    let got_dlq: BTreeSet<(i32, i64, String)> = sink
        .dead_letters
        .iter()
        .map(|d| (d.partition, d.offset, d.reason.as_str().to_owned()))
        .collect();
    let want_dlq: BTreeSet<(i32, i64, String)> = expected
        .dlq
        .iter()
        .map(|(o, r)| {
            // The reference keys rejections by offset within their partition.
            (0, *o, r.clone())
        })
        .collect();
    if PARTITIONS == 1 {
        assert_eq!(got_dlq, want_dlq);
    }
    let reasons =
        |s: &BTreeSet<(i32, i64, String)>| s.iter().map(|x| x.2.clone()).collect::<Vec<_>>();
    let mut g = reasons(&got_dlq);
    let mut w: Vec<String> = expected.dlq.iter().map(|(_, r)| r.clone()).collect();
    g.sort();
    w.sort();
    assert_eq!(g, w, "rejection reasons");
    // Boards: every kept period's board in full, its `of` and every rank, from the store's
    // indexes and rank counts, equal the reference's (which prunes nothing).
    use mallquest::domain::Period;
    use mallquest::store::Board;
    let all = |_| true;
    for kind in Period::ALL {
        let kept = store.period_keys(kind, all).unwrap();
        assert_eq!(
            kept,
            expected.kept_periods(kind.as_str()),
            "kept {kind:?} periods"
        );
        for at in &kept {
            for (by, board) in [
                ("xp", Board::Xp),
                ("coins", Board::Coins),
                ("spent", Board::Spent),
            ] {
                let want = expected.board(kind.as_str(), at, by).unwrap();
                let got: Vec<(String, i128)> = store
                    .period_board(kind, at, board, 10_000, all)
                    .unwrap()
                    .into_iter()
                    .map(|(score, u)| (u.user_id, i128::from(score)))
                    .collect();
                let want_rows: Vec<(String, i128)> = want
                    .entries
                    .iter()
                    .map(|e| (e.user_id.clone(), e.score))
                    .collect();
                assert_eq!(got, want_rows, "{kind:?} {at} {by}");
                assert_eq!(store.period_users(kind, at, all).unwrap(), want.of);
                for e in &want.entries {
                    let above = store
                        .rank_above(Some((kind, at)), board, e.score as i64, &e.user_id, all)
                        .unwrap();
                    assert_eq!(above + 1, e.rank, "{kind:?} {at} {by} {}", e.user_id);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn processor_with_crashes_equals_the_game_reference(
        specs in proptest::collection::vec(spec(), 1..90),
        actions in proptest::collection::vec(action(), 0..200),
    ) {
        run(specs, actions);
    }
}

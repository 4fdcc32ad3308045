//! The team's game vectors (`tests/golden/game/`: rule history, campaigns, redemptions,
//! missions, streaks, badges, worked out independently of mallquest) folded through the
//! real pipeline (in-process source, durable store): projections, events in order and
//! rejections must match exactly, whatever the batch size.

mod support;

use std::sync::Arc;

use mallquest::codec::{self, ProjectionJson};
use mallquest::pipeline::{MemorySink, Processor};
use mallquest::store::Store;
use serde_json::Value;
use support::golden::{self, game};

fn fold(commit_every: usize) -> (MemorySink, Arc<Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let config = game::config();
    let mut processor = Processor::new(Arc::clone(&store), config.rules.clone())
        .with_dedup_window_days(config.processing.dedup_window_days);
    let mut sink = MemorySink::default();
    for (i, r) in game::receipts().iter().enumerate() {
        golden::feed(&mut processor, r);
        if (i + 1) % commit_every == 0 {
            processor.commit(&mut sink).unwrap();
        }
    }
    processor.commit(&mut sink).unwrap();
    (sink, store, dir)
}

/// The vectors write every instant in whole seconds, though receipts carry fractions
/// (`16:00:19.275840+04:00` is expected back as `12:00:19Z`); mallquest keeps the
/// fraction, as its projection schema says. Instants are compared to the second here, and
/// the disagreement is reported to the vectors' authors.
fn whole_seconds(v: &mut Value) {
    for (k, x) in v.as_object_mut().unwrap() {
        if k.ends_with("_at") || k == "at" {
            if let Some(t) = x
                .as_str()
                .and_then(mallquest::domain::Timestamp::parse_rfc3339)
            {
                *x = Value::String(mallquest::domain::Timestamp { nanos: 0, ..t }.to_rfc3339());
            }
        }
    }
}

/// The projection as compared: the expected file leaves mission progress out (its shape
/// is ours) and zero campaign entries out.
fn comparable(p: &ProjectionJson) -> Value {
    let mut v = serde_json::to_value(p).unwrap();
    whole_seconds(&mut v);
    let o = v.as_object_mut().unwrap();
    o.remove("missions");
    o["coins_by_campaign"]
        .as_object_mut()
        .unwrap()
        .retain(|_, n| n.as_i64() != Some(0));
    v
}

#[test]
fn game_vectors_give_the_expected_projections_in_store_and_outputs() {
    for commit_every in [1, 61, 100_000] {
        let (sink, store, _dir) = fold(commit_every);
        let expected = game::projections();
        assert_eq!(sink.projections.len(), expected.len());
        let mut wrong = Vec::new();
        for (user, want) in &expected {
            for (place, state) in [
                ("published", sink.projections[user].clone()),
                ("stored", store.find_user(user).unwrap().unwrap()),
            ] {
                let got = comparable(&ProjectionJson::from_state(&state));
                let same = std::panic::catch_unwind(|| golden::assert_projection_eq(&got, want));
                if same.is_err() {
                    wrong.push(format!("{place} {user}:\n  got  {got}\n  want {want}"));
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "{} projections differ (commits of {commit_every}):\n{}",
            wrong.len(),
            wrong.join("\n")
        );
    }
}

#[test]
fn game_vectors_give_the_expected_events_in_order() {
    let (sink, _store, _dir) = fold(50);
    let got: Vec<Value> = sink
        .events
        .iter()
        .map(|e| {
            let mut v = serde_json::from_slice(&codec::encode_event(e)).unwrap();
            whole_seconds(&mut v);
            v
        })
        .collect();
    let want = game::events();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let inst =
            |v: &Value| mallquest::domain::Timestamp::parse_rfc3339(v["at"].as_str().unwrap());
        let (mut g2, mut w2) = (g.clone(), w.clone());
        g2.as_object_mut().unwrap().remove("at");
        w2.as_object_mut().unwrap().remove("at");
        assert_eq!((&g2, inst(g)), (&w2, inst(w)), "event {i}");
    }
    assert_eq!(got.len(), want.len(), "number of events");
}

#[test]
fn game_vectors_reject_exactly_the_expected_records() {
    let (sink, _store, _dir) = fold(50);
    let got: Vec<(i64, String)> = sink
        .dead_letters
        .iter()
        .map(|d| (d.offset, d.reason.as_str().to_owned()))
        .collect();
    assert_eq!(got, game::dlq());
}

/// The property test (tests/game_prop.rs) trusts the game reference: pin it to the
/// independent vectors too, boards included.
#[test]
fn the_game_reference_agrees_with_the_vectors() {
    let exp = game::reference();
    for (user, want) in game::projections() {
        let mut got = exp.projections[&user].clone();
        whole_seconds(&mut got);
        golden::assert_projection_eq(&got, &want);
    }
    assert_eq!(exp.dlq, game::dlq());
    let events: Vec<Value> = exp
        .events
        .iter()
        .map(|e| {
            let mut e = e.clone();
            whole_seconds(&mut e);
            e
        })
        .collect();
    assert_eq!(events.len(), game::events().len());
    for (g, w) in events.iter().zip(game::events()) {
        let inst =
            |v: &Value| mallquest::domain::Timestamp::parse_rfc3339(v["at"].as_str().unwrap());
        assert_eq!(inst(g), inst(&w));
        let strip = |v: &Value| {
            let mut v = v.clone();
            v.as_object_mut().unwrap().remove("at");
            v
        };
        assert_eq!(strip(g), strip(&w));
    }
    for w in game::boards() {
        let (p, at, by) = (
            w["period"].as_str().unwrap(),
            w["at"].as_str().unwrap(),
            w["by"].as_str().unwrap(),
        );
        let n = w["entries"].as_array().unwrap().len();
        let got = exp.board(p, at, by).map(|b| b.to_json(n));
        assert_eq!(got.as_ref(), Some(&w), "board {p} {at} {by}");
    }
}

/// The period boards and the all-time boards, read from the store's ordered indexes,
/// are the vectors' (top 10 and `of`), for every batch size; the kept periods are exactly
/// the listed ones; and every user's rank on every kept board is the reference's.
#[test]
fn game_vectors_give_the_expected_boards_and_ranks() {
    use mallquest::domain::Period;
    use mallquest::store::Board;
    let reference = game::reference();
    for commit_every in [1, 61, 100_000] {
        let (_sink, store, _dir) = fold(commit_every);
        let board_of = |by: &str| match by {
            "xp" => Board::Xp,
            "coins" => Board::Coins,
            _ => Board::Spent,
        };
        let all = |_| true;
        for w in game::boards() {
            let (period, at, by) = (
                w["period"].as_str().unwrap(),
                w["at"].as_str().unwrap(),
                w["by"].as_str().unwrap(),
            );
            let n = w["entries"].as_array().unwrap().len();
            let board = board_of(by);
            let (of, top): (u64, Vec<(i64, String)>) = match Period::parse(period) {
                Some(kind) => (
                    store.period_users(kind, at, all).unwrap(),
                    store
                        .period_board(kind, at, board, n, all)
                        .unwrap()
                        .into_iter()
                        .map(|(s, u)| (s, u.user_id))
                        .collect(),
                ),
                None => (
                    store.users_in(all),
                    store
                        .leaderboard_of(board, n, all)
                        .unwrap()
                        .into_iter()
                        .map(|u| (mallquest::store::scores(&u)[board as usize], u.user_id))
                        .collect(),
                ),
            };
            let entries: Vec<Value> = top
                .iter()
                .enumerate()
                .map(|(i, (score, user))| {
                    let score = if by == "spent" {
                        Value::from(mallquest::domain::money::format_minor(*score))
                    } else {
                        Value::from(*score)
                    };
                    serde_json::json!({"rank": i + 1, "user_id": user, "score": score})
                })
                .collect();
            let got = serde_json::json!({"period": period, "at": at, "by": by, "of": of, "entries": entries});
            assert_eq!(got, w, "commits of {commit_every}");
            // Every user's rank, from the index entries above it.
            let full = reference.board(period, at, by).unwrap();
            for e in &full.entries {
                let score = i64::try_from(e.score).unwrap();
                let above = store
                    .rank_above(
                        Period::parse(period).map(|k| (k, at)),
                        board,
                        score,
                        &e.user_id,
                        all,
                    )
                    .unwrap();
                assert_eq!(
                    above + 1,
                    e.rank,
                    "{period} {at} {by} rank of {}",
                    e.user_id
                );
            }
        }
        for kind in Period::ALL {
            let listed: std::collections::BTreeSet<String> = game::boards()
                .iter()
                .filter(|w| w["period"] == kind.as_str())
                .map(|w| w["at"].as_str().unwrap().to_owned())
                .collect();
            let kept: std::collections::BTreeSet<String> =
                store.period_keys(kind, all).unwrap().into_iter().collect();
            assert_eq!(
                kept, listed,
                "kept {kind:?} periods, commits of {commit_every}"
            );
        }
    }
}

/// Refolding the log after a rule change (old rates moved to `[[rules.history]]`) gives
/// the live state byte for byte: users and ledger as stored, events and rejections.
#[test]
fn a_refold_after_moving_the_rules_into_history_equals_the_live_state_byte_for_byte() {
    let changed = mallquest::config::Config::parse(&game::changed_rules_config()).unwrap();
    assert_ne!(
        changed.rules.coins_per_unit,
        game::config().rules.coins_per_unit
    );
    let fold_with = |rules: mallquest::domain::Rules, every: usize| {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut processor = Processor::new(Arc::clone(&store), rules);
        let mut sink = MemorySink::default();
        for (i, r) in game::receipts().iter().enumerate() {
            golden::feed(&mut processor, r);
            if (i + 1) % every == 0 {
                processor.commit(&mut sink).unwrap();
            }
        }
        processor.commit(&mut sink).unwrap();
        let users: Vec<Vec<u8>> = store
            .users()
            .map(|u| serde_json::to_vec(&u.unwrap()).unwrap())
            .collect();
        let ledger: Vec<(String, String, Vec<u8>)> = store
            .ledger_entries()
            .map(|e| {
                let (_, u, r, e) = e.unwrap();
                (u, r, serde_json::to_vec(&e).unwrap())
            })
            .collect();
        let events: Vec<Vec<u8>> = sink.events.iter().map(codec::encode_event).collect();
        let dlq: Vec<(i64, &'static str)> = sink
            .dead_letters
            .iter()
            .map(|d| (d.offset, d.reason.as_str()))
            .collect();
        (users, ledger, events, dlq)
    };
    let live = fold_with(game::config().rules, 50);
    let refold = fold_with(changed.rules.clone(), 977);
    assert!(live.0 == refold.0, "stored users differ");
    assert!(live.1 == refold.1, "ledger entries differ");
    assert!(live.2 == refold.2, "events differ");
    assert_eq!(live.3, refold.3);
    // The new rates do apply after the change: a purchase on 2027-01-02 earns 5 a unit.
    let mut late = game::receipts();
    late.truncate(1);
    let v = String::from_utf8(late[0].value.clone())
        .unwrap()
        .replace("2026-10-12T08:16:55Z", "2027-01-02T08:16:55Z");
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let mut processor = Processor::new(Arc::clone(&store), changed.rules);
    golden::feed(
        &mut processor,
        &golden::GoldenRecord {
            offset: 0,
            key: late[0].key.clone(),
            value: v.into_bytes(),
        },
    );
    processor.commit(&mut MemorySink::default()).unwrap();
    let u = store.find_user("u-009").unwrap().unwrap();
    assert_eq!(u.xp, 10 + 32 * 7, "10 a receipt and 7 a whole unit");
    assert_eq!(
        u.coins,
        3226 * 5 / 100 + 50,
        "5 coins a unit, and a level's bonus"
    );
}

//! `mallquest demo` plays the built-in game: its summary shows campaign coins, coins
//! redeemed, missions, badges and the week's top 10 (equal to the store's period board),
//! fits one screen, and says how to look further; `--plain` folds without the game.

mod support;

use std::time::{Duration, Instant};

use mallquest::config::Config;
use mallquest::demo::{self, DemoOptions, DEMO_GAME};
use mallquest::domain::Period;
use mallquest::store::Board;

fn options(keep_store: bool, plain: bool) -> DemoOptions {
    DemoOptions {
        receipts: 30_000,
        users: 2_000,
        stores: 40,
        seed: 7,
        dir: None,
        partitions: 4,
        every_user: false,
        keep_store,
        plain,
        span_days: demo::GAME_SPAN_DAYS,
    }
}

#[test]
fn the_demo_plays_the_game_and_its_summary_fits_one_screen() {
    let config = Config::parse(DEMO_GAME).unwrap();
    let summary = demo::run(&config, &options(true, false), false).unwrap();
    let s = &summary.stats;
    assert!(s.campaign_coins > 0, "campaign coins");
    assert!(s.coins_redeemed > 0, "redemptions");
    assert!(s.missions_completed > 0, "missions");
    assert!(s.badges_earned > 0, "badges");
    assert!(s
        .rejected
        .contains_key(&mallquest::domain::Reject::InsufficientCoins));
    let (week, rows) = summary.week.clone().expect("a week's top 10");
    assert_eq!(rows.len(), 10);
    let store = summary.store.clone().unwrap();
    let board = store
        .period_board(Period::Week, &week, Board::Xp, 10, |_| true)
        .unwrap();
    let expected: Vec<(String, i64)> = board.into_iter().map(|(s, u)| (u.user_id, s)).collect();
    let shown: Vec<(String, i64)> = rows.iter().map(|r| (r.0.clone(), r.1)).collect();
    assert_eq!(shown, expected);
    // The receipts span six weeks: the shown week is the last one (2026-12-07 to 13).
    assert_eq!(week, "2026-W50");
    // November's coins expired on 1 December, and tiers changed.
    assert!(s.coins_expired > 0, "coins expired");
    assert!(s.tier_changes.values().sum::<u64>() > 0, "tier changes");
    let text = summary.to_string();
    let lines = text.lines().count();
    assert!(lines <= 45, "{lines} lines:\n{text}");
    assert!(text.contains("game         campaign coins"), "{text}");
    assert!(text.contains("time         coins expired"), "{text}");
    assert!(
        text.contains("look further") && text.contains("--serve"),
        "{text}"
    );
    assert!(text.contains("4-7"), "levels are bucketed: {text}");
}

#[test]
fn a_plain_demo_folds_without_the_game() {
    let summary = demo::run(&Config::default(), &options(false, true), false).unwrap();
    let s = &summary.stats;
    assert_eq!(
        (
            s.campaign_coins,
            s.coins_redeemed,
            s.missions_completed,
            s.badges_earned
        ),
        (0, 0, 0, 0)
    );
    assert!(summary.week.is_none() && summary.store.is_none());
    assert!(summary.to_string().contains("top 10 by XP"));
}

/// `demo --serve ADDR` keeps the API up on the demo store: a real HTTP client reads the
/// week's board and a rank from it, and Ctrl-C (SIGINT) ends it cleanly.
#[test]
fn demo_serve_keeps_the_api_up_for_curl() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Reaped(
        std::process::Command::new(env!("CARGO_BIN_EXE_mallquest"))
            .args([
                "demo",
                "--receipts",
                "8000",
                "--users",
                "500",
                "--serve",
                &addr,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let child = &mut child.0;
    let deadline = Instant::now() + Duration::from_secs(120);
    let board = loop {
        if let Ok(r) = support::http::get(&addr, "/v1/leaderboard?period=week") {
            break r;
        }
        assert!(child.try_wait().unwrap().is_none(), "demo exited");
        assert!(Instant::now() < deadline, "the demo never served");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(board.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&board.body).unwrap();
    assert_eq!(v["period"], "week");
    let first = v["entries"][0]["user_id"].as_str().unwrap().to_owned();
    let r = support::http::get(&addr, &format!("/v1/users/{first}/rank?period=week")).unwrap();
    assert_eq!(r.status, 200);
    let rank: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(rank["rank"], 1);
    assert_eq!(rank["score"], v["entries"][0]["score"]);
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// A child process killed when the test ends, even by a failed assertion.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `mallquest bench` folds the asked number of receipts through the durable store and
/// prints the engine's figures; `--json` as one object a script can read.
#[test]
fn bench_prints_the_engine_figures() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mallquest"))
        .args(["bench", "--receipts", "20000", "--users", "3000", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["receipts"], 20_000, "{v}");
    let applied = v["applied"].as_u64().unwrap();
    let duplicates = v["duplicates"].as_u64().unwrap();
    let rejected = v["rejected"].as_u64().unwrap();
    assert_eq!(applied + duplicates + rejected, 20_000, "{v}");
    assert!(
        rejected > 0 && duplicates > 0,
        "the plain mix has both: {v}"
    );
    let users = v["users"].as_u64().unwrap();
    assert!(users > 0 && users <= 3_000, "{v}");
    assert!(v["receipts_per_s"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["cpu_s_per_million"].as_f64().unwrap() > 0.0, "{v}");
    // The simulator runs on a thread of its own and is counted apart.
    assert!(v["simulator_cpu_s"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["peak_rss_mib"].as_u64().unwrap() > 0, "{v}");
    // Every user stored was written at least once (a user changed several times in a
    // batch is written once); the ledger takes a few chunks per partition and batch, not a
    // key per receipt.
    let writes = v["store_writes"].as_u64().unwrap();
    assert!(writes >= users, "{v}");
    let per = v["store_writes_per_receipt"].as_f64().unwrap();
    assert!((per - writes as f64 / 20_000.0).abs() <= 0.05, "{v}");
    // By keyspace: they add up to the total; the ledger's segments (a chunk of about 8 KiB
    // holds over a hundred entries) are far fewer than the receipts they hold; no key per
    // entry is left.
    let by = v["store_writes_by_keyspace"].as_object().unwrap();
    let sum: u64 = by.values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(sum, writes, "{v}");
    let chunks = by["ledger_log"].as_u64().unwrap();
    assert!(chunks >= 1 && chunks * 20 <= applied, "{v}");
    assert!(!by.contains_key("ledger") && !by.contains_key("due"), "{v}");
    assert!(by["users"].as_u64().unwrap() >= users, "{v}");

    let text = std::process::Command::new(env!("CARGO_BIN_EXE_mallquest"))
        .args(["bench", "--receipts", "2000", "--users", "100"])
        .output()
        .unwrap();
    assert!(text.status.success(), "{text:?}");
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("receipts/s"), "{text}");
    assert!(text.contains("CPU-s per million receipts"), "{text}");
    assert!(text.contains("peak RSS"), "{text}");
    assert!(text.contains("store keys written per receipt"), "{text}");
}

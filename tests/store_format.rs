//! Stored values changed from JSON to a versioned binary encoding (`store::value`). A
//! store written by a build before that change (`tests/fixtures/store-json-values.tgz`:
//! `mallquest demo --receipts 600 --users 40 --seed 7 --dir D` by f41868d, the demo
//! game) opens and reads exactly what the same stream folds to today, keeps folding, and
//! a snapshot of it imports into a store in the new encoding with the same contents.

use std::path::Path;
use std::process::Command;

use mallquest::config::Config;
use mallquest::demo::{self, DemoOptions, DEMO_GAME};
use mallquest::domain::{LedgerEntry, UserState};
use mallquest::store::Store;

type Ledger = Vec<(i32, String, String, LedgerEntry)>;

fn options(dir: &Path) -> DemoOptions {
    DemoOptions {
        receipts: 600,
        users: 40,
        stores: 40,
        seed: 7,
        dir: Some(dir.to_owned()),
        partitions: 4,
        every_user: false,
        keep_store: false,
        plain: false,
        // The fixture's store was folded from receipts spanning four weeks.
        span_days: 28,
    }
}

fn contents(store: &Store) -> (Vec<UserState>, Ledger) {
    let users = store.users().collect::<Result<Vec<_>, _>>().unwrap();
    let ledger = store
        .ledger_entries()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    (users, ledger)
}

fn unpack_fixture(into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-json-values.tgz");
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(into)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_store_of_json_values_reads_as_today_and_keeps_folding() {
    let tmp = tempfile::tempdir().unwrap();
    // The demo game as it was when the fixture was made: before coin expiry and tiers.
    let game = &DEMO_GAME[..DEMO_GAME.find("\n[expiry]").unwrap()];
    let config = Config::parse(game).unwrap();

    // Today's build folds the same stream into a fresh store (binary values).
    let fresh_dir = tmp.path().join("fresh");
    demo::run(&config, &options(&fresh_dir), false).unwrap();
    let fresh = contents(&Store::open(&fresh_dir).unwrap());
    assert_eq!(fresh.0.len(), 40);
    assert!(fresh
        .0
        .iter()
        .any(|u| !u.missions.is_empty() && !u.periods.is_empty()));
    assert!(fresh.1.len() > 500, "{}", fresh.1.len());

    let old_dir = tmp.path().join("old");
    unpack_fixture(&old_dir);
    {
        let old = Store::open(&old_dir).unwrap();
        assert_eq!(
            contents(&old),
            fresh,
            "the JSON store reads as today's fold"
        );
    }

    // Folding on: the demo resumes each partition at its stored offset, so the same
    // stream folded again into each store changes both alike (re-encoding every user
    // and ledger entry it touches in the new format).
    let more = DemoOptions {
        seed: 8,
        ..options(&old_dir)
    };
    demo::run(&config, &more, false).unwrap();
    demo::run(
        &config,
        &DemoOptions {
            dir: Some(fresh_dir.clone()),
            ..more
        },
        false,
    )
    .unwrap();
    let old = contents(&Store::open(&old_dir).unwrap());
    let fresh = contents(&Store::open(&fresh_dir).unwrap());
    assert_eq!(old, fresh);

    // A snapshot of the mixed store imports into a new one with the same contents.
    let file = tmp.path().join("snapshot.jsonl");
    mallquest::snapshot::export(&old_dir, &file, 90).unwrap();
    let imported = tmp.path().join("imported");
    mallquest::snapshot::import(&file, &imported).unwrap();
    assert_eq!(contents(&Store::open(&imported).unwrap()), old);
}

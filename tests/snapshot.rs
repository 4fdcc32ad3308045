//! `mallquest snapshot export|import`: a store written to a file and read back equals the
//! original, and a store seeded from it goes on folding exactly like the original.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use mallquest::domain::Rules;
use mallquest::pipeline::{MemorySink, Processor, Record};
use mallquest::sim::{Mix, SimEvent, Simulator};
use mallquest::snapshot;
use mallquest::store::{Board, Store};

const TOPIC: &str = "receipts";
const PARTITIONS: i32 = 3;

fn events(n: usize) -> Vec<SimEvent> {
    let mut sim = Simulator::new(7, 500, 20, Mix::default());
    (0..n).map(|_| sim.next_event()).collect()
}

/// Folds `events[from..]` into the store, committing every 97 records. The partition is
/// picked from the key, as a producer's partitioner would; offsets count per partition.
fn fold(store: &Arc<Store>, events: &[SimEvent], from: usize) -> MemorySink {
    let mut processor = Processor::new(Arc::clone(store), Rules::default());
    let mut sink = MemorySink::default();
    let mut offsets = [0i64; PARTITIONS as usize];
    for (i, e) in events.iter().enumerate() {
        let p = (e.key.bytes().map(u32::from).sum::<u32>() % PARTITIONS as u32) as usize;
        if i >= from {
            processor
                .process(Record {
                    topic: TOPIC,
                    partition: p as i32,
                    offset: offsets[p],
                    key: Some(e.key.as_bytes()),
                    payload: Some(&e.payload),
                    timestamp_ms: None,
                })
                .unwrap();
            if i % 97 == 0 {
                processor.commit(&mut sink).unwrap();
            }
        }
        offsets[p] += 1;
    }
    processor.commit(&mut sink).unwrap();
    sink
}

/// Everything a store holds, comparable.
fn contents(store: &Store) -> String {
    let users: Vec<_> = store.users_by_partition().map(Result::unwrap).collect();
    let ledger: Vec<_> = store.ledger_entries().map(Result::unwrap).collect();
    let mut marks: Vec<_> = store.marks().into_iter().collect();
    marks.sort();
    let boards: Vec<Vec<String>> = Board::ALL
        .iter()
        .map(|b| {
            store
                .leaderboard(*b, 50)
                .unwrap()
                .into_iter()
                .map(|u| u.user_id)
                .collect()
        })
        .collect();
    format!(
        "{users:?}\n{ledger:?}\n{:?}\n{marks:?}\n{boards:?}",
        store.offsets().unwrap()
    )
}

#[test]
fn export_then_import_restores_the_store_and_it_folds_on_identically() {
    let stream = events(6_000);
    let dir = tempfile::tempdir().unwrap();
    let original = Arc::new(Store::open(&dir.path().join("a")).unwrap());
    fold(&original, &stream[..4_000], 0);
    drop(original);

    let file = dir.path().join("snap.jsonl");
    let exported = snapshot::export(&dir.path().join("a"), &file, 90).unwrap();
    assert!(
        exported.users > 400 && exported.ledger > 3_000,
        "{exported:?}"
    );
    assert_eq!(exported.offsets, PARTITIONS as u64);
    let imported = snapshot::import(&file, &dir.path().join("b")).unwrap();
    assert_eq!(imported, exported);

    let a = Arc::new(Store::open(&dir.path().join("a")).unwrap());
    let b = Arc::new(Store::open(&dir.path().join("b")).unwrap());
    assert_eq!(contents(&a), contents(&b));

    // The rest of the stream, with its duplicates and refunds of earlier purchases, folds
    // to the same outputs and the same store on both.
    let out_a = fold(&a, &stream, 4_000);
    let out_b = fold(&b, &stream, 4_000);
    assert_eq!(out_a.projections, out_b.projections);
    assert_eq!(out_a.dead_letters, out_b.dead_letters);
    assert_eq!(out_a.level_ups, out_b.level_ups);
    assert!(!out_a.dead_letters.is_empty() && !out_a.projections.is_empty());
    assert_eq!(contents(&a), contents(&b));
}

#[test]
fn export_leaves_out_ledger_entries_older_than_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("a")).unwrap());
    let mut processor = Processor::new(Arc::clone(&store), Rules::default());
    let mut sink = MemorySink::default();
    // One purchase a day for 10 days, 2026-01-01 onwards.
    for day in 0..10i64 {
        let at = chrono::DateTime::from_timestamp(1_767_225_600 + day * 86_400, 0).unwrap();
        let v = format!(
            r#"{{"receipt_id":"r-{day}","user_id":"u-1","store_id":"s","amount":"5.00","issued_at":"{}"}}"#,
            at.to_rfc3339()
        );
        processor
            .process(Record {
                topic: TOPIC,
                partition: 0,
                offset: day,
                key: Some(b"u-1"),
                payload: Some(v.as_bytes()),
                timestamp_ms: None,
            })
            .unwrap();
    }
    processor.commit(&mut sink).unwrap();
    drop((processor, store));
    let file = dir.path().join("snap.jsonl");
    // A 3-day window keeps days 6..=9.
    let counts = snapshot::export(&dir.path().join("a"), &file, 3).unwrap();
    assert_eq!(counts.ledger, 4);
    assert_eq!(counts.users, 1);
}

fn write_config(dir: &Path, store: &Path) -> std::path::PathBuf {
    let config = dir.join(format!(
        "{}.toml",
        store.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(
        &config,
        format!("[store]\npath = {:?}\n", store.display().to_string()),
    )
    .unwrap();
    config
}

/// `mallquest snapshot VERB FILE --config CONFIG`.
fn snapshot_cli(verb: &str, file: &Path, config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mallquest"))
        .args(["snapshot", verb])
        .arg(file)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn the_cli_refuses_bad_files_and_existing_stores_and_leaves_nothing_half_done() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let store = Arc::new(Store::open(&a).unwrap());
    fold(&store, &events(500), 0);
    drop(store);
    let config_a = write_config(dir.path(), &a);
    let file = dir.path().join("snap.jsonl");

    let out = snapshot_cli("export", &file, &config_a);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("exported "));

    // Importing over an existing store is refused, and the store is left alone.
    let out = snapshot_cli("import", &file, &config_a);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));

    // A truncated file is refused and no store is created.
    let text = std::fs::read_to_string(&file).unwrap();
    let cut = dir.path().join("cut.jsonl");
    std::fs::write(&cut, &text[..text.len() / 2]).unwrap();
    let b = dir.path().join("b");
    let config_b = write_config(dir.path(), &b);
    let out = snapshot_cli("import", &cut, &config_b);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("truncated") || err.contains("not a snapshot line"),
        "{err}"
    );
    assert!(!b.exists() && !dir.path().join("b.importing").exists());

    // A count that disagrees with the end line is refused.
    let lines: Vec<&str> = text.lines().collect();
    let dropped: String = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != lines.len() / 2)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    std::fs::write(&cut, dropped).unwrap();
    let out = snapshot_cli("import", &cut, &config_b);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("end line counts"));
    assert!(!b.exists());

    // The whole file imports.
    let out = snapshot_cli("import", &file, &config_b);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = Store::open(&a).unwrap();
    let b = Store::open(&b).unwrap();
    assert_eq!(contents(&a), contents(&b));
}

//! `mallquest snapshot export|import`: the whole store as one compacted file, to back a
//! store up or to seed a new instance without replaying history.
//!
//! The file is JSON lines: a header, then offsets, marks, users and the ledger entries
//! still within the dedup window, then an end line with the counts. Import refuses a file
//! whose counts or order do not match, and builds the store beside its final path,
//! renaming it into place only when everything was written: an interrupted import leaves
//! no half-filled store behind.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::domain::{LedgerEntry, UserState};
use crate::store::{Store, StoreError, WriteSet};

/// Why an export or an import failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Nothing to export.
    #[error("no store at {}", .0.display())]
    NoStore(PathBuf),
    /// An import only creates a store.
    #[error("the store at {} already exists; import only creates a new store: move it aside first", .0.display())]
    StoreExists(PathBuf),
    /// A file could not be created, read, written or moved.
    #[error("failed to {op} {}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The store could not be opened, read or written.
    #[error("the store at {} failed", .path.display())]
    Store {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
    /// A line that is not a snapshot line.
    #[error("{} line {line}: not a snapshot line", .path.display())]
    Line {
        path: PathBuf,
        line: u64,
        #[source]
        source: serde_json::Error,
    },
    /// A snapshot of another format version.
    #[error("snapshot format {0} is not supported (this version reads {FORMAT_VERSION})")]
    Unsupported(u32),
    /// Not a snapshot at all.
    #[error("{} is not a mallquest snapshot (no header line)", .0.display())]
    NoHeader(PathBuf),
    /// A snapshot whose lines or counts do not add up: nothing of it is imported.
    #[error("{}: {problem}; nothing was imported", .path.display())]
    Malformed { path: PathBuf, problem: String },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_owned();
    move |source| SnapshotError::Io { op, path, source }
}

fn store_err(path: &Path) -> impl Fn(StoreError) -> SnapshotError {
    let path = path.to_owned();
    move |source| SnapshotError::Store {
        path: path.clone(),
        source,
    }
}

/// The format version written in the header.
pub const FORMAT_VERSION: u32 = 1;

/// Lines written per store batch on import.
const IMPORT_BATCH: usize = 20_000;

/// One line of a snapshot file.
fn is_zero(v: &u32) -> bool {
    *v == 0
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Header {
        mallquest_snapshot: u32,
        dedup_window_days: u32,
    },
    Offset {
        topic: String,
        partition: i32,
        next: i64,
    },
    Mark {
        partition: i32,
        secs: i64,
        /// The mark's nanoseconds (absent from files of builds before the time rules).
        #[serde(default, skip_serializing_if = "is_zero")]
        nanos: u32,
    },
    User {
        partition: i32,
        state: Box<UserState>,
    },
    Ledger {
        partition: i32,
        user_id: String,
        receipt_id: String,
        entry: LedgerEntry,
    },
    End(Counts),
}

/// What a snapshot holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Stored offsets (topic partitions).
    pub offsets: u64,
    /// Event-time marks (partitions).
    pub marks: u64,
    /// User projections.
    pub users: u64,
    /// Ledger entries within the window.
    pub ledger: u64,
}

fn bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{what} [{{bar:40}}] {{pos}}/{{len}} {{per_sec}} eta {{eta}}"
    )) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn write_line(out: &mut impl Write, line: &Line) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, line)?;
    out.write_all(b"\n")
}

/// Writes the store at `store_path` to `file`, leaving out ledger entries older than
/// `dedup_window_days` before their partition's mark. The store must not be in use.
pub fn export(
    store_path: &Path,
    file: &Path,
    dedup_window_days: u32,
) -> Result<Counts, SnapshotError> {
    if !store_path.exists() {
        return Err(SnapshotError::NoStore(store_path.to_owned()));
    }
    let store = Store::open(store_path).map_err(store_err(store_path))?;
    let tmp = with_suffix(file, ".partial");
    let mut out = BufWriter::new(File::create(&tmp).map_err(io("create", &tmp))?);
    let stored = store_err(store_path);
    let mut write = |line: &Line| write_line(&mut out, line).map_err(io("write", &tmp));
    let mut counts = Counts::default();
    write(&Line::Header {
        mallquest_snapshot: FORMAT_VERSION,
        dedup_window_days,
    })?;
    for ((topic, partition), next) in store.offsets().map_err(&stored)? {
        write(&Line::Offset {
            topic,
            partition,
            next,
        })?;
        counts.offsets += 1;
    }
    let marks = store.marks();
    let mut sorted: Vec<_> = marks.iter().collect();
    sorted.sort();
    for (partition, mark) in sorted {
        write(&Line::Mark {
            partition: *partition,
            secs: mark.secs,
            nanos: mark.nanos,
        })?;
        counts.marks += 1;
    }
    let progress = bar(
        store.approximate_users() + store.approximate_ledger_len(),
        "export",
    );
    for u in store.users_by_partition() {
        let (partition, state) = u.map_err(&stored)?;
        write(&Line::User {
            partition,
            state: Box::new(state),
        })?;
        counts.users += 1;
        progress.inc(1);
    }
    let window = i64::from(dedup_window_days) * 86_400;
    let cutoffs: HashMap<i32, i64> = marks
        .iter()
        .map(|(p, m)| (*p, m.secs.saturating_sub(window)))
        .collect();
    for e in store.ledger_entries() {
        let (partition, user_id, receipt_id, entry) = e.map_err(&stored)?;
        progress.inc(1);
        if cutoffs
            .get(&partition)
            .is_some_and(|c| entry.issued_at.secs < *c)
        {
            continue;
        }
        write(&Line::Ledger {
            partition,
            user_id,
            receipt_id,
            entry,
        })?;
        counts.ledger += 1;
    }
    write(&Line::End(counts))?;
    let file_handle = out
        .into_inner()
        .map_err(|e| io("write", &tmp)(e.into_error()))?;
    file_handle.sync_all().map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, file).map_err(io("move the snapshot to", file))?;
    progress.finish_and_clear();
    Ok(counts)
}

/// Builds a new store at `store_path` from `file`. Refuses an existing, non-empty store.
pub fn import(file: &Path, store_path: &Path) -> Result<Counts, SnapshotError> {
    if store_path.exists()
        && std::fs::read_dir(store_path)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(SnapshotError::StoreExists(store_path.to_owned()));
    }
    let staging = with_suffix(store_path, ".importing");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io("remove", &staging))?;
    }
    let result = fill(file, &staging);
    match result {
        Ok(counts) => {
            if store_path.exists() {
                std::fs::remove_dir(store_path).map_err(io("remove", store_path))?;
            }
            std::fs::rename(&staging, store_path)
                .map_err(io("move the new store to", store_path))?;
            Ok(counts)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

fn fill(file: &Path, staging: &Path) -> Result<Counts, SnapshotError> {
    let input = File::open(file).map_err(io("open", file))?;
    let progress = bar(input.metadata().map_err(io("read", file))?.len(), "import");
    let stored = store_err(staging);
    let store = Store::open(staging).map_err(&stored)?;
    let malformed = |problem: &str| SnapshotError::Malformed {
        path: file.to_owned(),
        problem: problem.to_owned(),
    };
    let mut lines = BufReader::new(input).lines();
    let mut n = 0u64;
    let mut next_line = |progress: &ProgressBar| -> Result<Option<Line>, SnapshotError> {
        let Some(text) = lines.next() else {
            return Ok(None);
        };
        let text = text.map_err(io("read", file))?;
        n += 1;
        progress.inc(text.len() as u64 + 1);
        serde_json::from_str(&text)
            .map_err(|source| SnapshotError::Line {
                path: file.to_owned(),
                line: n,
                source,
            })
            .map(Some)
    };
    match next_line(&progress)? {
        Some(Line::Header {
            mallquest_snapshot: FORMAT_VERSION,
            ..
        }) => {}
        Some(Line::Header {
            mallquest_snapshot, ..
        }) => return Err(SnapshotError::Unsupported(mallquest_snapshot)),
        _ => return Err(SnapshotError::NoHeader(file.to_owned())),
    }
    let mut counts = Counts::default();
    // Offsets and marks go in the last batch, with the last users and entries.
    let mut tail = WriteSet::default();
    let mut batch = WriteSet::default();
    let mut in_batch = 0;
    let end = loop {
        match next_line(&progress)? {
            None => return Err(malformed("truncated: it has no end line")),
            Some(Line::Header { .. }) => return Err(malformed("a second header line")),
            Some(Line::End(c)) => break c,
            Some(Line::Offset {
                topic,
                partition,
                next,
            }) => {
                tail.offsets.insert((topic, partition), next);
                counts.offsets += 1;
            }
            Some(Line::Mark {
                partition,
                secs,
                nanos,
            }) => {
                tail.marks
                    .insert(partition, crate::domain::Timestamp { secs, nanos });
                counts.marks += 1;
            }
            Some(Line::User { partition, state }) => {
                let key = (partition, state.user_id.clone());
                batch.previous_scores.insert(key.clone(), None);
                batch.users.insert(key, *state);
                counts.users += 1;
                in_batch += 1;
            }
            Some(Line::Ledger {
                partition,
                user_id,
                receipt_id,
                entry,
            }) => {
                batch.ledger.insert((partition, user_id, receipt_id), entry);
                counts.ledger += 1;
                in_batch += 1;
            }
        }
        if in_batch >= IMPORT_BATCH {
            store.commit(&std::mem::take(&mut batch)).map_err(&stored)?;
            in_batch = 0;
        }
    };
    if next_line(&progress)?.is_some() {
        return Err(malformed("lines after the end line"));
    }
    if end != counts {
        return Err(malformed(&format!(
            "the end line counts {end:?} but the file holds {counts:?}"
        )));
    }
    batch.offsets = tail.offsets;
    batch.marks = tail.marks;
    store.commit(&batch).map_err(&stored)?;
    progress.finish_and_clear();
    Ok(counts)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn import_text(text: &str) -> (Result<Counts, SnapshotError>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("snap.jsonl");
        std::fs::write(&file, text).unwrap();
        let result = import(&file, &dir.path().join("store"));
        (result, dir)
    }

    #[test]
    fn a_bad_snapshot_is_refused_with_its_reason_and_leaves_no_store() {
        let header = r#"{"header":{"mallquest_snapshot":1,"dedup_window_days":90}}"#;
        let end = r#"{"end":{"offsets":0,"marks":0,"users":0,"ledger":0}}"#;

        let (r, dir) = import_text("");
        assert!(matches!(r, Err(SnapshotError::NoHeader(_))), "{r:?}");
        assert!(!dir.path().join("store").exists());

        let (r, _) = import_text(r#"{"header":{"mallquest_snapshot":99,"dedup_window_days":9}}"#);
        assert!(matches!(r, Err(SnapshotError::Unsupported(99))), "{r:?}");

        let (r, _) = import_text(&format!("{header}\nnot json\n"));
        assert!(
            matches!(r, Err(SnapshotError::Line { line: 2, .. })),
            "{r:?}"
        );

        let (r, dir) = import_text(&format!("{header}\n"));
        let e = r.unwrap_err();
        assert!(matches!(e, SnapshotError::Malformed { .. }));
        assert!(e.to_string().contains("no end line"), "{e}");
        assert!(!dir.path().join("store").exists());

        let (r, _) = import_text(&format!("{header}\n{end}\n{end}\n"));
        assert!(matches!(r, Err(SnapshotError::Malformed { .. })), "{r:?}");

        let (r, _) = import_text(&format!("{header}\n{end}\n"));
        assert_eq!(r.unwrap(), Counts::default());
    }

    #[test]
    fn import_refuses_an_existing_store_and_export_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir(&store).unwrap();
        std::fs::write(store.join("x"), "").unwrap();
        let r = import(&dir.path().join("none"), &store);
        assert!(matches!(r, Err(SnapshotError::StoreExists(_))), "{r:?}");
        let r = export(&dir.path().join("nowhere"), &dir.path().join("f"), 90);
        assert!(matches!(r, Err(SnapshotError::NoStore(_))), "{r:?}");
    }
}

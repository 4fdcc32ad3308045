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

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::domain::{LedgerEntry, UserState};
use crate::store::{Store, WriteSet};

/// The format version written in the header.
pub const FORMAT_VERSION: u32 = 1;

/// Lines written per store batch on import.
const IMPORT_BATCH: usize = 20_000;

/// One line of a snapshot file.
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
    },
    User {
        partition: i32,
        state: UserState,
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

fn write_line(out: &mut impl Write, line: &Line) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, line)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Writes the store at `store_path` to `file`, leaving out ledger entries older than
/// `dedup_window_days` before their partition's mark. The store must not be in use.
pub fn export(store_path: &Path, file: &Path, dedup_window_days: u32) -> anyhow::Result<Counts> {
    if !store_path.exists() {
        bail!("no store at {}", store_path.display());
    }
    let store = Store::open(store_path)
        .with_context(|| format!("failed to open the store at {}", store_path.display()))?;
    let tmp = with_suffix(file, ".partial");
    let mut out = BufWriter::new(
        File::create(&tmp).with_context(|| format!("failed to create {}", tmp.display()))?,
    );
    let mut counts = Counts::default();
    write_line(
        &mut out,
        &Line::Header {
            mallquest_snapshot: FORMAT_VERSION,
            dedup_window_days,
        },
    )?;
    for ((topic, partition), next) in store.offsets()? {
        write_line(
            &mut out,
            &Line::Offset {
                topic,
                partition,
                next,
            },
        )?;
        counts.offsets += 1;
    }
    let marks = store.marks();
    let mut sorted: Vec<_> = marks.iter().collect();
    sorted.sort();
    for (partition, secs) in sorted {
        write_line(
            &mut out,
            &Line::Mark {
                partition: *partition,
                secs: *secs,
            },
        )?;
        counts.marks += 1;
    }
    let progress = bar(
        store.approximate_users() + store.approximate_ledger_len(),
        "export",
    );
    for u in store.users_by_partition() {
        let (partition, state) = u?;
        write_line(&mut out, &Line::User { partition, state })?;
        counts.users += 1;
        progress.inc(1);
    }
    let window = i64::from(dedup_window_days) * 86_400;
    let cutoffs: HashMap<i32, i64> = marks
        .iter()
        .map(|(p, m)| (*p, m.saturating_sub(window)))
        .collect();
    for e in store.ledger_entries() {
        let (partition, user_id, receipt_id, entry) = e?;
        progress.inc(1);
        if cutoffs
            .get(&partition)
            .is_some_and(|c| entry.issued_at.secs < *c)
        {
            continue;
        }
        write_line(
            &mut out,
            &Line::Ledger {
                partition,
                user_id,
                receipt_id,
                entry,
            },
        )?;
        counts.ledger += 1;
    }
    write_line(&mut out, &Line::End(counts))?;
    let file_handle = out.into_inner().context("failed to write the snapshot")?;
    file_handle.sync_all()?;
    std::fs::rename(&tmp, file)
        .with_context(|| format!("failed to move the snapshot to {}", file.display()))?;
    progress.finish_and_clear();
    Ok(counts)
}

/// Builds a new store at `store_path` from `file`. Refuses an existing, non-empty store.
pub fn import(file: &Path, store_path: &Path) -> anyhow::Result<Counts> {
    if store_path.exists()
        && std::fs::read_dir(store_path)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "the store at {} already exists; import only creates a new store: move it aside first",
            store_path.display()
        );
    }
    let staging = with_suffix(store_path, ".importing");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("failed to remove {}", staging.display()))?;
    }
    let result = fill(file, &staging);
    match result {
        Ok(counts) => {
            if store_path.exists() {
                std::fs::remove_dir(store_path)?;
            }
            std::fs::rename(&staging, store_path).with_context(|| {
                format!(
                    "failed to move {} to {}",
                    staging.display(),
                    store_path.display()
                )
            })?;
            Ok(counts)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

fn fill(file: &Path, staging: &Path) -> anyhow::Result<Counts> {
    let input = File::open(file).with_context(|| format!("failed to open {}", file.display()))?;
    let progress = bar(input.metadata()?.len(), "import");
    let store = Store::open(staging)?;
    let mut lines = BufReader::new(input).lines();
    let mut n = 0u64;
    let mut next_line = |progress: &ProgressBar| -> anyhow::Result<Option<Line>> {
        let Some(text) = lines.next() else {
            return Ok(None);
        };
        let text = text.with_context(|| format!("failed to read {}", file.display()))?;
        n += 1;
        progress.inc(text.len() as u64 + 1);
        serde_json::from_str(&text)
            .with_context(|| format!("{} line {n}: not a snapshot line", file.display()))
            .map(Some)
    };
    match next_line(&progress)? {
        Some(Line::Header {
            mallquest_snapshot: FORMAT_VERSION,
            ..
        }) => {}
        Some(Line::Header {
            mallquest_snapshot, ..
        }) => bail!("snapshot format {mallquest_snapshot} is not supported (this version reads {FORMAT_VERSION})"),
        _ => bail!("{} is not a mallquest snapshot (no header line)", file.display()),
    }
    let mut counts = Counts::default();
    // Offsets and marks go in the last batch, with the last users and entries.
    let mut tail = WriteSet::default();
    let mut batch = WriteSet::default();
    let mut in_batch = 0;
    let end = loop {
        match next_line(&progress)? {
            None => bail!(
                "{} is truncated: it has no end line; nothing was imported",
                file.display()
            ),
            Some(Line::Header { .. }) => bail!("{}: a second header line", file.display()),
            Some(Line::End(c)) => break c,
            Some(Line::Offset {
                topic,
                partition,
                next,
            }) => {
                tail.offsets.insert((topic, partition), next);
                counts.offsets += 1;
            }
            Some(Line::Mark { partition, secs }) => {
                tail.marks.insert(partition, secs);
                counts.marks += 1;
            }
            Some(Line::User { partition, state }) => {
                let key = (partition, state.user_id.clone());
                batch.previous_scores.insert(key.clone(), None);
                batch.users.insert(key, state);
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
            store.commit(&std::mem::take(&mut batch))?;
            in_batch = 0;
        }
    };
    if next_line(&progress)?.is_some() {
        bail!("{}: lines after the end line", file.display());
    }
    if end != counts {
        bail!(
            "{}: the end line counts {end:?} but the file holds {counts:?}; nothing was imported",
            file.display()
        );
    }
    batch.offsets = tail.offsets;
    batch.marks = tail.marks;
    store.commit(&batch)?;
    progress.finish_and_clear();
    Ok(counts)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

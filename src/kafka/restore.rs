//! Restoring partitions from the changelog: before an assigned partition is folded, the
//! store is brought up to that partition's changelog, so that a partition new to this
//! instance (or back after a while elsewhere, or after a crash between the transaction's
//! commit and the store's) resumes from the state and the receipt offset the changelog
//! records, never by refolding receipts from the beginning.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{info, warn};

use super::error::{Context as _, Error};
use crate::changelog::{Entry, Meta};
use crate::config::KafkaConfig;
use crate::status::Status;
use crate::store::{Store, WriteSet};
use crate::telemetry;

/// Changelog records written to the store per write while restoring.
const CHUNK: usize = 20_000;

/// How long a restore may go without reading anything before it gives up.
const PATIENCE: Duration = Duration::from_secs(60);

/// The changelog reader's client context. librdkafka's default logs every error event at
/// ERROR, and a restore reads each partition to its end on purpose: every end of partition
/// would read as a fault. The poll loop handles the end of a partition and reports any
/// other error itself (the same event is returned by the poll), so this only logs at DEBUG.
struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        telemetry::changelog_reader_event(&format_args!("{error}: {reason}"));
    }
}

impl ConsumerContext for ReaderContext {}

/// Why a catch-up runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// Partitions assigned to this instance: `/readyz` and the restore metrics show it.
    Restore,
    /// Partitions another instance holds, kept warm here (`[processing] standby_replicas`):
    /// counted apart, never shown as a restore.
    Standby,
}

/// What a catch-up did.
#[derive(Debug, Default)]
pub(super) struct CaughtUp {
    /// Changelog records read and written.
    pub records: u64,
    /// Partitions whose changelog had records past the store's.
    pub partitions: Vec<i32>,
}

/// Brings the store's state of `partitions` up to their changelog: reads each changelog
/// partition, with `read_committed`, from the store's changelog offset to its end, and
/// writes what it reads. A position record (`m`) is written with the users and ledger
/// entries before it, so the store's receipt offset never runs ahead of its state.
pub(super) fn catch_up(
    kafka: &KafkaConfig,
    store: &Store,
    partitions: &[i32],
    status: &Status,
    purpose: Purpose,
    interrupt: &dyn Fn() -> bool,
) -> Result<CaughtUp, Error> {
    let restore = purpose == Purpose::Restore;
    let topic = kafka.changelog_topic();
    let consumer: BaseConsumer<ReaderContext> = super::client_config(
        kafka,
        &[
            ("isolation.level", "read_committed"),
            ("enable.partition.eof", "true"),
            // A partition read to its end answers at once, not after the broker's wait
            // for more data (500 ms by default): a caught-up partition's last offset is a
            // transaction marker, so even a standby that is fully warm reads to an end.
            ("fetch.wait.max.ms", "10"),
            ("auto.offset.reset", "earliest"),
            ("enable.auto.commit", "false"),
            ("group.id", "mallquest-restore"),
        ],
    )
    .create_with_context(ReaderContext)
    .kafka(|| "failed to create the changelog reader".into())?;
    let mut tpl = TopicPartitionList::new();
    let mut left = BTreeSet::new();
    // Partitions this store never held: their users are written without reading any
    // previous state (and without their leaderboard entries).
    let mut fresh = BTreeSet::new();
    // Partitions restored for the first time (no changelog offset), fresh or not (an
    // earlier attempt may have written users unindexed and uncounted): indexed and counted
    // in one scan at their end, before their position.
    let mut first = BTreeSet::new();
    for &p in partitions {
        let stored = store.changelog_offset(p)?;
        if stored.is_none() {
            first.insert(p);
            if store.partition_is_empty(p)? {
                fresh.insert(p);
            }
        }
        let from = stored.unwrap_or(0);
        let high = end_of(&consumer, &topic, p, restore)?;
        if high <= from {
            if high < from {
                warn!(message = "The changelog partition ends before the store's changelog offset (was the topic recreated?); keeping the store's state.", topic = %topic, partition = p, end = high, stored = from);
            }
            continue;
        }
        tpl.add_partition_offset(&topic, p, Offset::Offset(from))
            .kafka(|| "failed to list changelog partitions".into())?;
        left.insert(p);
    }
    let mut done = CaughtUp {
        partitions: left.iter().copied().collect(),
        ..CaughtUp::default()
    };
    if left.is_empty() {
        return Ok(done);
    }
    consumer
        .assign(&tpl)
        .kafka(|| "failed to assign changelog partitions".into())?;
    if restore {
        status.restoring(done.partitions.clone());
        telemetry::restoring_partitions(left.len());
        info!(message = "Restoring partitions from the changelog.", topic = %topic, partitions = ?done.partitions);
    }
    let started = Instant::now();
    let mut set = WriteSet::default();
    let mut in_set = 0usize;
    let mut metas: BTreeMap<i32, Meta> = BTreeMap::new();
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut last_read = Instant::now();
    let mut last_log = Instant::now();
    // Records read but not yet counted in the metrics (counted in thousands: a metric
    // update per record costs more than its decoding).
    let mut uncounted = 0u64;
    // Time spent indexing first-restored partitions (their leaderboards and counts).
    let mut indexed = Duration::ZERO;
    // Writes what is in hand; the users of partitions still fresh go in unindexed.
    let flush = |set: &mut WriteSet, fresh: &BTreeSet<i32>| {
        let mut set = std::mem::take(set);
        set.unindexed = fresh.clone();
        store.commit(&set)
    };
    while !left.is_empty() {
        if interrupt() {
            // What is in hand is dropped; what was written has no position yet, so the
            // next catch-up of these partitions reads it again.
            return Ok(done);
        }
        if last_read.elapsed() >= PATIENCE {
            return Err(Error::Broker {
                what: format!(
                    "restoring {topic}: nothing read for {PATIENCE:?} (partitions {left:?} not at their end)"
                ),
                code: rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
            });
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(p))) => {
                last_read = Instant::now();
                if !left.remove(&p) {
                    continue;
                }
                if first.remove(&p) {
                    // Its users first, then its index and count, then its position: a
                    // crash in between leaves no position, and the next catch-up reads
                    // it again.
                    flush(&mut set, &fresh)?;
                    fresh.remove(&p);
                    let indexing = Instant::now();
                    store.index_partition(p)?;
                    indexed += indexing.elapsed();
                }
                position(&mut set, p, &mut metas, &mut next);
                flush(&mut set, &fresh)?;
                in_set = 0;
                if restore {
                    telemetry::restoring_partitions(left.len());
                }
            }
            Some(Err(e)) => {
                telemetry::kafka_error(&format_args!("changelog reader: {e}"));
            }
            Some(Ok(m)) => {
                last_read = Instant::now();
                let p = m.partition();
                let entry =
                    Entry::decode(m.key().unwrap_or_default(), m.payload()).map_err(|source| {
                        Error::Changelog {
                            what: format!(
                                "the changelog record at {topic}/{p} offset {} cannot be read; \
                             the partition cannot be restored: run `mallquest rebuild` if the \
                             receipts topic still holds every receipt",
                                m.offset()
                            ),
                            source,
                        }
                    })?;
                if let Some(meta) = apply(&mut set, p, entry) {
                    metas.insert(p, meta);
                }
                next.insert(p, m.offset() + 1);
                done.records += 1;
                in_set += 1;
                uncounted += 1;
                if uncounted >= 1_000 {
                    count(restore, std::mem::take(&mut uncounted));
                }
                if in_set >= CHUNK {
                    // Users and ledger entries only: the position waits for the end.
                    flush(&mut set, &fresh)?;
                    in_set = 0;
                }
                if restore && last_log.elapsed() >= Duration::from_secs(5) {
                    last_log = Instant::now();
                    info!(
                        message = "Restoring from the changelog.",
                        records = done.records,
                        partitions_left = left.len(),
                        elapsed_s = started.elapsed().as_secs()
                    );
                }
            }
        }
    }
    count(restore, uncounted);
    let secs = started.elapsed().as_secs_f64();
    if !restore {
        tracing::debug!(message = "Standby partitions caught up.", partitions = ?done.partitions, records = done.records);
        return Ok(done);
    }
    telemetry::restoring_partitions(0);
    status.restored();
    info!(
        message = "Restored partitions from the changelog.",
        partitions = ?done.partitions,
        records = done.records,
        seconds = format!("{secs:.2}"),
        indexing_seconds = format!("{:.2}", indexed.as_secs_f64()),
        records_per_s = (done.records as f64 / secs.max(1e-6)) as u64
    );
    Ok(done)
}

/// Counts `n` changelog records read, as a restore or as a standby's.
fn count(restore: bool, n: u64) {
    if restore {
        telemetry::restore_records(n);
    } else {
        telemetry::standby_records(n);
    }
}

/// Adds to `set` partition `p`'s position (receipt offset and mark) and changelog offset,
/// as read: written with everything before it.
fn position(
    set: &mut WriteSet,
    p: i32,
    metas: &mut BTreeMap<i32, Meta>,
    next: &mut BTreeMap<i32, i64>,
) {
    if let Some(m) = metas.remove(&p) {
        set.offsets.insert((m.topic.clone(), p), m.next_offset);
        if let Some(secs) = m.mark {
            let nanos = m.mark_nanos;
            set.marks
                .insert(p, crate::domain::Timestamp { secs, nanos });
        }
    }
    if let Some(n) = next.remove(&p) {
        set.changelog.insert(p, n);
    }
}

/// Adds one changelog record of partition `p` to `set`; a position is returned, for the
/// caller to write once everything before it is written.
fn apply(set: &mut WriteSet, p: i32, entry: Entry) -> Option<Meta> {
    match entry {
        Entry::User(u) => {
            set.users.insert((p, u.user_id.clone()), *u);
        }
        Entry::Ledger {
            user_id,
            receipt_id,
            entry,
        } => {
            let key = (p, user_id, receipt_id);
            // A tombstone of this chunk for the same key, then this newer entry: the entry
            // stays.
            set.ledger_expired.remove(&key);
            set.ledger.insert(key, entry);
        }
        Entry::LedgerExpired {
            user_id,
            receipt_id,
        } => {
            let key = (p, user_id, receipt_id);
            set.ledger.remove(&key);
            set.ledger_expired.insert(key);
        }
        Entry::Meta(meta) => return Some(meta),
    }
    None
}

/// The end (high watermark) of a changelog partition. A topic created moments ago has no
/// leader yet for a while: transient errors are retried for half a minute.
/// A standby (`patient` false) does not wait: it tries again at its next round.
fn end_of(
    consumer: &BaseConsumer<ReaderContext>,
    topic: &str,
    p: i32,
    patient: bool,
) -> Result<i64, Error> {
    let (wait, each) = if patient {
        (Duration::from_secs(30), Duration::from_secs(10))
    } else {
        (Duration::ZERO, Duration::from_secs(2))
    };
    let deadline = Instant::now() + wait;
    loop {
        match consumer.fetch_watermarks(topic, p, each) {
            Ok((_, high)) => return Ok(high),
            Err(e) if Instant::now() < deadline => {
                info!(message = "Waiting for the changelog partition's leader.", topic, partition = p, error = %e);
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e).kafka(|| format!("failed to read the end of {topic}/{p}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{MemorySink, Processor, Record};

    /// A fold's changelog, applied record by record in chunks to an empty store, gives
    /// the fold's own store: users, and a ledger that kept only the dedup window (the
    /// entries that left it were deleted by tombstones).
    #[test]
    fn a_changelog_with_expired_ledger_entries_restores_the_folds_store() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let folded = std::sync::Arc::new(Store::open(a.path()).unwrap());
        let mut processor = Processor::new(
            std::sync::Arc::clone(&folded),
            crate::domain::Rules::default(),
        )
        .with_dedup_window_days(10);
        let mut sink = MemorySink {
            keep_changelog: true,
            ..MemorySink::default()
        };
        let mut offset = 0;
        for day in 0..40i64 {
            for i in 0..5 {
                // 2026-01-01 plus `day` days; every fifth receipt refunds its user's
                // purchase of the day before.
                let refunds = i == 4 && day > 0;
                let user = format!("u-{}", if refunds { day - 1 } else { day + i } % 7);
                let at = chrono::DateTime::from_timestamp(1_767_225_600 + day * 86_400, 0)
                    .unwrap()
                    .to_rfc3339();
                let refund = if refunds {
                    format!(r#","type":"refund","refund_of":"r-{}-0""#, day - 1)
                } else {
                    String::new()
                };
                let value = format!(
                    r#"{{"receipt_id":"r-{day}-{i}","user_id":"{user}","store_id":"s-1","amount":"10.00","issued_at":"{at}"{refund}}}"#
                );
                processor
                    .process(Record {
                        topic: "receipts",
                        partition: 0,
                        offset,
                        key: Some(user.as_bytes()),
                        payload: Some(value.as_bytes()),
                        timestamp_ms: None,
                    })
                    .unwrap();
                offset += 1;
            }
            processor.commit(&mut sink).unwrap();
        }
        let expired = sink
            .changelog
            .iter()
            .filter(|(_, e)| matches!(e, Entry::LedgerExpired { .. }))
            .count();
        // 40 days, 10 kept (days 29..=39 are within 10 days of day 39): 29 days expired,
        // 5 entries each (refunds included).
        assert_eq!(expired, 29 * 5);
        assert_eq!(folded.ledger_len().unwrap(), 11 * 5);

        let restored = Store::open(b.path()).unwrap();
        let mut set = WriteSet::default();
        for (i, (p, e)) in sink.changelog.into_iter().enumerate() {
            if let Some(m) = apply(&mut set, p, e) {
                set.offsets.insert((m.topic, p), m.next_offset);
            }
            if i % 7 == 0 {
                restored.commit(&std::mem::take(&mut set)).unwrap();
            }
        }
        restored.commit(&set).unwrap();
        let users = |s: &Store| s.users().map(Result::unwrap).collect::<Vec<_>>();
        assert!(users(&folded).iter().any(|u| u.refund_count > 0));
        assert_eq!(users(&restored), users(&folded));
        assert_eq!(restored.ledger_len().unwrap(), folded.ledger_len().unwrap());
        // The expired entries are gone from memory, not only past the cutoff.
        let entries = |s: &Store| s.ledger_entries().map(Result::unwrap).collect::<Vec<_>>();
        assert_eq!(entries(&restored).len(), 11 * 5);
        assert_eq!(entries(&restored), entries(&folded));
        assert_eq!(restored.offsets().unwrap(), folded.offsets().unwrap());
    }
}

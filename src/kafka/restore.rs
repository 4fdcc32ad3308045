//! Restoring partitions from the changelog: before an assigned partition is folded, the
//! store is brought up to that partition's changelog, so that a partition new to this
//! instance (or back after a while elsewhere, or after a crash between the transaction's
//! commit and the store's) resumes from the state and the receipt offset the changelog
//! records, never by refolding receipts from the beginning.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::changelog::{Entry, Meta};
use crate::config::KafkaConfig;
use crate::status::Status;
use crate::store::{Store, WriteSet};
use crate::telemetry;

/// Changelog records written to the store per write while restoring.
const CHUNK: usize = 20_000;

/// How long a restore may go without reading anything before it gives up.
const PATIENCE: Duration = Duration::from_secs(60);

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
) -> anyhow::Result<CaughtUp> {
    let restore = purpose == Purpose::Restore;
    let topic = kafka.changelog_topic();
    let consumer: BaseConsumer = super::client_config(
        kafka,
        &[
            ("isolation.level", "read_committed"),
            ("enable.partition.eof", "true"),
            ("auto.offset.reset", "earliest"),
            ("enable.auto.commit", "false"),
            ("group.id", "mallquest-restore"),
        ],
    )
    .create()
    .context("failed to create the changelog reader")?;
    let mut tpl = TopicPartitionList::new();
    let mut left = BTreeSet::new();
    // Partitions this store never held: their users are written without reading any
    // previous state, and indexed for the leaderboards in one scan at their end.
    let mut fresh = BTreeSet::new();
    for &p in partitions {
        let stored = store.changelog_offset(p)?;
        if stored.is_none() && store.partition_is_empty(p)? {
            fresh.insert(p);
        }
        let from = stored.unwrap_or(0);
        let high = end_of(&consumer, &topic, p)?;
        if high <= from {
            if high < from {
                warn!(message = "The changelog partition ends before the store's changelog offset (was the topic recreated?); keeping the store's state.", topic = %topic, partition = p, end = high, stored = from);
            }
            continue;
        }
        tpl.add_partition_offset(&topic, p, Offset::Offset(from))
            .context("failed to list changelog partitions")?;
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
        .context("failed to assign changelog partitions")?;
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
    while !left.is_empty() {
        anyhow::ensure!(
            last_read.elapsed() < PATIENCE,
            "restoring {topic}: nothing read for {PATIENCE:?} (partitions {left:?} not at their end)"
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(p))) => {
                last_read = Instant::now();
                if !left.remove(&p) {
                    continue;
                }
                if fresh.remove(&p) {
                    // Its users first, then its index, then its position: a crash in
                    // between leaves no position, and the next catch-up reads it again.
                    set.unindexed = fresh.clone();
                    set.unindexed.insert(p);
                    store.commit(&std::mem::take(&mut set))?;
                    store.index_partition(p, CHUNK)?;
                }
                if let Some(m) = metas.remove(&p) {
                    set.offsets.insert((m.topic.clone(), p), m.next_offset);
                    if let Some(mark) = m.mark {
                        set.marks.insert(p, mark);
                    }
                }
                if let Some(n) = next.remove(&p) {
                    set.changelog.insert(p, n);
                }
                set.unindexed = fresh.clone();
                store.commit(&std::mem::take(&mut set))?;
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
                    Entry::decode(m.key().unwrap_or_default(), m.payload()).with_context(|| {
                        format!(
                            "the changelog record at {topic}/{p} offset {} cannot be read; \
                             the partition cannot be restored: run `mallquest rebuild` if the \
                             receipts topic still holds every receipt",
                            m.offset()
                        )
                    })?;
                match entry {
                    Entry::User(u) => {
                        set.users.insert((p, u.user_id.clone()), u);
                    }
                    Entry::Ledger {
                        user_id,
                        receipt_id,
                        entry,
                    } => {
                        set.ledger.insert((p, user_id, receipt_id), entry);
                    }
                    Entry::Meta(meta) => {
                        metas.insert(p, meta);
                    }
                }
                next.insert(p, m.offset() + 1);
                done.records += 1;
                in_set += 1;
                if restore {
                    telemetry::restore_records(1);
                } else {
                    telemetry::standby_records(1);
                }
                if in_set >= CHUNK {
                    // Users and ledger entries only: the position waits for the end.
                    set.unindexed = fresh.clone();
                    store.commit(&std::mem::take(&mut set))?;
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
        records_per_s = (done.records as f64 / secs.max(1e-6)) as u64
    );
    Ok(done)
}

/// The end (high watermark) of a changelog partition. A topic created moments ago has no
/// leader yet for a while: transient errors are retried for half a minute.
fn end_of(consumer: &BaseConsumer, topic: &str, p: i32) -> anyhow::Result<i64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match consumer.fetch_watermarks(topic, p, Duration::from_secs(10)) {
            Ok((_, high)) => return Ok(high),
            Err(e) if Instant::now() < deadline => {
                info!(message = "Waiting for the changelog partition's leader.", topic, partition = p, error = %e);
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("failed to read the end of {topic}/{p}"))
            }
        }
    }
}

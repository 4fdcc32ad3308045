//! `mallquest whatif`: what a rule change would have done. The retained receipts are
//! folded twice, under the live config's rules and under proposed ones, each into a
//! temporary store of its own (the live store is never opened), and the two outcomes are
//! compared ([`report`]), as JSON and as one self-contained HTML page ([`html`]).
//!
//! With `--from`, the records before it (by their Kafka timestamp, found with the
//! broker's offsets-for-times index) are folded under the live rules on both sides, so
//! the question is "what if the proposed rules had applied since then"; `--to` ends the
//! range. Both need the topic's whole history: the state at `--from` is the fold of every
//! receipt before it, so a topic whose retention has already deleted its first records is
//! refused before anything is folded.

pub mod html;
pub mod report;

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message as _, Offset, TopicPartitionList};

use crate::config::Config;
use crate::domain::Timestamp;
use crate::kafka;
use crate::pipeline::{BatchStats, CommitError, MemorySink, Processor, Record};
use crate::store::{Store, StoreError};

pub use report::Report;

/// Records folded between two commits of each side.
const BATCH: usize = 50_000;
/// How long one broker request may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// How long one poll waits for records.
const POLL: Duration = Duration::from_millis(500);

/// Why a what-if could not run. Everything but [`WhatifError::Store`] and
/// [`WhatifError::Commit`] is found before any folding starts.
#[derive(Debug, thiserror::Error)]
pub enum WhatifError {
    /// `--from` is not before `--to`.
    #[error("--from ({from}) must be before --to ({to})")]
    EmptyRange {
        /// `--from`.
        from: String,
        /// `--to`.
        to: String,
    },
    /// The receipts topic does not exist or has no partitions.
    #[error("the receipts topic {topic:?} does not exist on {brokers}")]
    NoTopic {
        /// The topic.
        topic: String,
        /// Where it was looked for.
        brokers: String,
    },
    /// Retention has deleted the first records of a partition: the state they built
    /// cannot be refolded.
    #[error(
        "the receipts topic {topic:?} no longer holds its first records (partition {partition} \
         starts at offset {first}): a what-if refolds every receipt from the first, so the \
         topic must keep them all (retention.ms = -1, or Kafka's tiered storage; README, \
         \"Keeping the history\")"
    )]
    HistoryGone {
        /// The topic.
        topic: String,
        /// The first partition found without its first records.
        partition: i32,
        /// Its first retained offset.
        first: i64,
    },
    /// No record of the topic falls in the range asked for.
    #[error("the receipts topic {topic:?} holds no record {what}")]
    NothingInRange {
        /// The topic.
        topic: String,
        /// The range, in words.
        what: String,
    },
    /// The broker's time index gave no offset for a partition.
    #[error("the broker's time index answered {answer} for partition {partition}")]
    TimeIndex {
        /// The partition.
        partition: i32,
        /// What it answered.
        answer: String,
    },
    /// A broker request failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A temporary store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A fold's commit failed.
    #[error("a fold's commit failed: {0}")]
    Commit(#[from] CommitError),
    /// A temporary directory could not be made.
    #[error("failed to create a temporary store directory: {0}")]
    TempDir(std::io::Error),
}

/// What to compare.
pub struct Options {
    /// The live config: the brokers, the topic, the store's memory and the live rules.
    pub live: Config,
    /// The proposed config: only its rules, game and processing sections are used.
    pub proposed: Config,
    /// Where the proposed rules start to apply (Kafka timestamp); `None`: the beginning.
    pub from: Option<Timestamp>,
    /// Where the range ends (Kafka timestamp, exclusive); `None`: the topic's end now.
    pub to: Option<Timestamp>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

/// One partition's share of the range: offsets `[0, split)` are history (live rules on
/// both sides), `[split, end)` are compared.
#[derive(Debug, Clone, Copy)]
struct Span {
    partition: i32,
    split: i64,
    end: i64,
}

/// Folds the range under both rule sets and compares them.
pub fn run(opts: &Options) -> Result<Report, WhatifError> {
    let topic = opts.live.kafka.receipts_topic.clone();
    if let (Some(from), Some(to)) = (opts.from, opts.to) {
        if from >= to {
            return Err(WhatifError::EmptyRange {
                from: from.to_rfc3339(),
                to: to.to_rfc3339(),
            });
        }
    }
    let consumer: BaseConsumer = kafka::client_config(
        &opts.live.kafka,
        &[
            ("group.id", "mallquest-whatif"),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("isolation.level", "read_committed"),
            // The end of a partition's log ends its span too (fold_spans).
            ("enable.partition.eof", "true"),
        ],
    )
    .create()?;
    let spans = plan(&consumer, &opts.live, opts.from, opts.to)?;
    let history: i64 = spans.iter().map(|s| s.split).sum();
    let compared: i64 = spans.iter().map(|s| s.end - s.split).sum();

    let bar = progress_bar(opts.progress, (history + compared).unsigned_abs());
    let started = Instant::now();
    let mut sides = [
        Side::open(&opts.live, &opts.live)?,
        Side::open(&opts.live, &opts.live)?,
    ];
    let mut history_records = 0;
    if history > 0 {
        let history_spans: Vec<Span> = spans
            .iter()
            .map(|s| Span {
                end: s.split,
                split: 0,
                ..*s
            })
            .collect();
        history_records = fold_spans(&consumer, &topic, &history_spans, &mut sides, &bar)?;
    }
    // From here on each side folds under its own rules, and only what it does counts.
    for side in &mut sides {
        side.outcome.stats = BatchStats::default();
    }
    sides[1].switch_rules(&opts.proposed);
    let records = fold_spans(&consumer, &topic, &spans, &mut sides, &bar)?;
    bar.finish_and_clear();
    let [live, proposed] = sides;
    let folded = Folded {
        history_records,
        records,
        seconds: started.elapsed().as_secs_f64(),
    };
    report::compare(opts, &folded, &live.finish()?, &proposed.finish()?)
}

/// The report's headline figures, for the terminal.
pub fn summary(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let (l, p) = (&r.totals.live, &r.totals.proposed);
    let _ = writeln!(
        s,
        "what-if: {} records compared ({} earlier folded under the live rules), {} records/s",
        r.range.records, r.range.history_records, r.range.records_per_s
    );
    let row = |s: &mut String, what: &str, l: i64, p: i64| {
        let _ = writeln!(
            s,
            "  {what:<28} {l:>14} {p:>14} {:>+14}",
            p.saturating_sub(l)
        );
    };
    let _ = writeln!(
        s,
        "  {:<28} {:>14} {:>14} {:>14}",
        "", "live", "proposed", "change"
    );
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    row(&mut s, "coins issued", n(l.coins_issued), n(p.coins_issued));
    row(
        &mut s,
        "coins outstanding",
        l.coins_outstanding,
        p.coins_outstanding,
    );
    row(&mut s, "xp", l.xp, p.xp);
    row(
        &mut s,
        "missions completed",
        n(l.missions_completed),
        n(p.missions_completed),
    );
    row(
        &mut s,
        "badges earned",
        n(l.badges_earned),
        n(p.badges_earned),
    );
    let u = &r.users;
    let _ = writeln!(
        s,
        "  users: {} ({} up a level, {} down, {} with other coins; median change {:+})",
        u.count, u.level_up, u.level_down, u.coins_changed, u.coin_delta.p50
    );
    s
}

/// How much was folded, and how fast.
#[derive(Debug, Clone, Copy)]
pub struct Folded {
    /// Records before `--from`, folded under the live rules on both sides.
    pub history_records: u64,
    /// Records in the compared range.
    pub records: u64,
    /// Wall time of both folds.
    pub seconds: f64,
}

/// Each partition's offsets for the range, after checking that the topic still holds
/// the whole history and something in the range.
fn plan(
    consumer: &BaseConsumer,
    live: &Config,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
) -> Result<Vec<Span>, WhatifError> {
    let topic = &live.kafka.receipts_topic;
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(WhatifError::NoTopic {
            topic: topic.clone(),
            brokers: live.kafka.brokers.clone(),
        });
    }
    let mut spans = Vec::with_capacity(partitions.len());
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, TIMEOUT)?;
        if low > 0 {
            return Err(WhatifError::HistoryGone {
                topic: topic.clone(),
                partition: p,
                first: low,
            });
        }
        spans.push(Span {
            partition: p,
            split: 0,
            end: high,
        });
    }
    if let Some(t) = to {
        let ends = offsets_at(consumer, topic, &spans, t)?;
        for (s, end) in spans.iter_mut().zip(ends) {
            s.end = end;
        }
    }
    if let Some(f) = from {
        let splits = offsets_at(consumer, topic, &spans, f)?;
        for (s, split) in spans.iter_mut().zip(splits) {
            s.split = split.min(s.end);
        }
    }
    if spans.iter().all(|s| s.split >= s.end) {
        let what = match (from, to) {
            (None, None) => "at all".to_owned(),
            (Some(f), None) => format!("at or after --from {}", f.to_rfc3339()),
            (None, Some(t)) => format!("before --to {}", t.to_rfc3339()),
            (Some(f), Some(t)) => format!("from {} to {}", f.to_rfc3339(), t.to_rfc3339()),
        };
        return Err(WhatifError::NothingInRange {
            topic: topic.clone(),
            what,
        });
    }
    Ok(spans)
}

/// Each span's first offset whose Kafka timestamp is at or after `t` (its end if none).
fn offsets_at(
    consumer: &BaseConsumer,
    topic: &str,
    spans: &[Span],
    t: Timestamp,
) -> Result<Vec<i64>, WhatifError> {
    let ms = t.secs.saturating_mul(1000) + i64::from(t.nanos / 1_000_000);
    let mut tpl = TopicPartitionList::new();
    for s in spans {
        tpl.add_partition_offset(topic, s.partition, Offset::Offset(ms))?;
    }
    let found = consumer.offsets_for_times(tpl, TIMEOUT)?;
    let mut out = Vec::with_capacity(spans.len());
    for s in spans {
        let answer = found.find_partition(topic, s.partition);
        out.push(match answer.as_ref().map(|e| (e.error(), e.offset())) {
            Some((Ok(()), Offset::Offset(o))) => o.min(s.end),
            // No record at or after the instant: the partition's end.
            Some((Ok(()), Offset::End)) => s.end,
            other => {
                return Err(WhatifError::TimeIndex {
                    partition: s.partition,
                    answer: format!("{other:?}"),
                })
            }
        });
    }
    Ok(out)
}

fn progress_bar(show: bool, len: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "folding twice {bar:40} {human_pos}/{human_len} records {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// One record read from the topic, owned (each batch is folded by both sides at once).
struct Owned {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    timestamp_ms: Option<i64>,
}

/// Reads each span's records and folds them into both sides, a batch at a time, the two
/// sides on two threads. A partition is done at its span's last offset, or at its end of
/// log: offsets are not contiguous (transaction markers and aborted records take offsets
/// a `read_committed` reader never sees), so records are never counted against offsets.
fn fold_spans(
    consumer: &BaseConsumer,
    topic: &str,
    spans: &[Span],
    sides: &mut [Side; 2],
    bar: &ProgressBar,
) -> Result<u64, WhatifError> {
    let mut tpl = TopicPartitionList::new();
    // Partitions still read, with the offset their span ends before.
    let mut open: std::collections::HashMap<i32, i64> = std::collections::HashMap::new();
    for s in spans.iter().filter(|s| s.split < s.end) {
        tpl.add_partition_offset(topic, s.partition, Offset::Offset(s.split))?;
        open.insert(s.partition, s.end);
    }
    if open.is_empty() {
        return Ok(0);
    }
    consumer.assign(&tpl)?;
    let mut batch: Vec<Owned> = Vec::with_capacity(BATCH);
    let mut folded = 0u64;
    while !open.is_empty() {
        let m = match consumer.poll(POLL) {
            None => {
                // Ends a partition whose last offsets are markers, also when
                // `[kafka.client]` turned the end-of-log events off.
                let at = consumer.position()?;
                open.retain(
                    |p, end| match at.find_partition(topic, *p).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => o < *end,
                        _ => true,
                    },
                );
                continue;
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
                continue;
            }
            Some(m) => m?,
        };
        let Some(&end) = open.get(&m.partition()) else {
            continue;
        };
        if m.offset() + 1 >= end {
            open.remove(&m.partition());
        }
        if m.offset() >= end {
            continue;
        }
        batch.push(Owned {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            timestamp_ms: m.timestamp().to_millis(),
        });
        if batch.len() >= BATCH || open.is_empty() {
            fold_batch(topic, &batch, sides)?;
            bar.inc(batch.len() as u64);
            folded += batch.len() as u64;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        fold_batch(topic, &batch, sides)?;
        bar.inc(batch.len() as u64);
        folded += batch.len() as u64;
    }
    consumer.unassign()?;
    Ok(folded)
}

/// Folds `batch` into both sides, each on a thread of its own, and commits each.
fn fold_batch(topic: &str, batch: &[Owned], sides: &mut [Side; 2]) -> Result<(), WhatifError> {
    let [a, b] = sides;
    std::thread::scope(|scope| {
        let other = scope.spawn(|| b.fold(topic, batch));
        let mine = a.fold(topic, batch);
        let other = other
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        mine.and(other)
    })
}

/// One rule set's fold: a temporary store and its processor.
struct Side {
    processor: Processor,
    /// The live config's hot set size, kept for a switch of rules.
    hot_users: usize,
    sink: MemorySink,
    /// Its store, and the counts of what it folded since they were last zeroed.
    outcome: Outcome,
}

/// What one side's fold left: its counts of the compared range and its store.
pub struct Outcome {
    /// The counts of the compared range.
    pub stats: BatchStats,
    /// The store, every batch committed.
    pub store: Arc<Store>,
    /// Removed when the outcome is dropped (after the store, declared before it).
    _dir: tempfile::TempDir,
}

impl Side {
    /// A side over a new temporary store, sized by `live`'s store section, folding
    /// under `rules`' rules.
    fn open(live: &Config, rules: &Config) -> Result<Self, WhatifError> {
        let dir = tempfile::Builder::new()
            .prefix("mallquest-whatif-")
            .tempdir()
            .map_err(WhatifError::TempDir)?;
        let store = Arc::new(Store::open_with_memory(
            dir.path(),
            live.store.cache_mb << 20,
            live.store.write_buffer_mb << 20,
        )?);
        Ok(Self {
            processor: processor(&store, live.store.hot_users, rules),
            hot_users: live.store.hot_users,
            sink: MemorySink {
                counts_only: true,
                ..MemorySink::default()
            },
            outcome: Outcome {
                stats: BatchStats::default(),
                store,
                _dir: dir,
            },
        })
    }

    /// From the next record on, folds under `rules`' rules. Every record folded so far
    /// is committed (after each batch): the new processor starts from the store.
    fn switch_rules(&mut self, rules: &Config) {
        self.processor = processor(&self.outcome.store, self.hot_users, rules);
    }

    fn fold(&mut self, topic: &str, batch: &[Owned]) -> Result<(), WhatifError> {
        for r in batch {
            self.processor.process(Record {
                topic,
                partition: r.partition,
                offset: r.offset,
                key: r.key.as_deref(),
                payload: r.payload.as_deref(),
                timestamp_ms: r.timestamp_ms,
            })?;
        }
        let stats = self.processor.commit(&mut self.sink)?;
        self.outcome.stats.add(&stats);
        Ok(())
    }

    /// The side's outcome, every batch committed.
    fn finish(mut self) -> Result<Outcome, WhatifError> {
        let stats = self.processor.commit(&mut self.sink)?;
        self.outcome.stats.add(&stats);
        drop(self.processor);
        Ok(self.outcome)
    }
}

/// A processor over `store` under `rules`' rules and processing section, tallying by
/// store.
fn processor(store: &Arc<Store>, hot_users: usize, rules: &Config) -> Processor {
    Processor::with_hot_users(Arc::clone(store), rules.rules.clone(), hot_users)
        .with_dedup_window_days(rules.processing.dedup_window_days)
        .tallying_stores()
}

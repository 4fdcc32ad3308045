//! The consumer loop of `mallquest run`.
//!
//! On every assignment each partition is first caught up from its changelog (restored,
//! for a partition new to this instance), then positioned at the store's offset. Each
//! batch is one Kafka transaction: its outputs, its changelog records and its receipt
//! offsets (sent to the group coordinator with the group's metadata, KIP-447) commit
//! together; the store is written after that commit. A revocation first commits the
//! batch in hand, while the partitions are still this member's, so that the next owner
//! resumes right after it; a lost assignment (the session expired, so another member may
//! hold the partitions already) or a commit that fails aborts the open transaction and
//! drops the batch instead, so a member that lost its partitions can never make its
//! outputs visible (ARCHITECTURE.md, "Ownership, restore and fencing").

use std::cell::{Cell, RefCell};
use std::ops::DerefMut;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::statistics::Statistics;
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{info, warn};

use super::error::{Context as _, Error};
use crate::config::{Assignment, Config};
use crate::pipeline::{
    self, BatchStats, CommitError, Finish, Gate, Message, Polled, Positions, Processor, Record,
    Source,
};
use crate::status::Status;
use crate::store::{Store, StoreError};
use crate::telemetry;

/// The fold and its outputs. The main loop folds and commits with it; the rebalance
/// callback commits the batch in hand with it before partitions are given back. Both run
/// on the thread that polls, so its lock is never contended; it is never held across a
/// poll (the callback runs inside one).
type Engine = pipeline::Engine<super::KafkaSink>;

/// Positions newly assigned partitions at the processor's own offsets.
struct StoreSeekingContext {
    /// The processor and its sink.
    engine: Mutex<Engine>,
    store: Arc<Store>,
    positions: Positions,
    /// A failure inside the rebalance callback, reported by the main loop.
    fatal: Mutex<Option<String>>,
    /// What the HTTP API reports.
    status: Arc<Status>,
    /// The receipts topic, the brokers (named in `/readyz` when none answers), and the
    /// settings of the changelog reader of a restore.
    kafka: crate::config::KafkaConfig,
    /// Whether the consumer reads only committed transactions (librdkafka's default): its
    /// lag is then measured to the last stable offset, else to the high watermark.
    read_committed: bool,
    /// Whether assigned partitions are caught up from the changelog (not for `rebuild`).
    restore: bool,
    /// Set by a revocation: the main loop aborts the open transaction and drops the
    /// batches in hand before it folds anything else.
    revoked: AtomicBool,
    /// Announces this instance's API address and partitions to the others.
    announcer: Arc<super::members::Announcer>,
    /// The partitions held, locked while restored state is written (shared with the
    /// standby thread, which never writes a held partition).
    held: Arc<super::standby::Held>,
}

impl ClientContext for StoreSeekingContext {
    fn error(&self, error: KafkaError, reason: &str) {
        telemetry::kafka_error(&format_args!("{error}: {reason}"));
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.status.broker_unreachable(format!(
                "cannot reach the Kafka brokers at {}: {reason}",
                self.kafka.brokers
            ));
        }
    }

    fn stats(&self, statistics: Statistics) {
        // The lag of every partition held, from the statistics' offsets: no extra broker
        // requests. librdkafka's own `consumer_lag` figures are measured from offsets this
        // consumer commits or stores, and it does neither (the offsets commit with each
        // transaction), so a caught-up partition would show no lag at all.
        if let Some(t) = statistics.topics.get(&self.kafka.receipts_topic) {
            let topic = &self.kafka.receipts_topic;
            for p in self.status.owned().unwrap_or_default() {
                let Some(s) = t.partitions.get(&p) else {
                    continue;
                };
                let end = if self.read_committed {
                    s.ls_offset
                } else {
                    s.hi_offset
                };
                let folded = Processor::resume_offset(&self.store, &self.positions, topic, p)
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                if let Some(lag) = lag(end, [folded, s.app_offset, s.lo_offset]) {
                    telemetry::consumer_lag(p, lag);
                }
            }
        }
        let up = statistics.brokers.values().any(|b| b.state == "UP");
        telemetry::broker_up(up);
        if up {
            self.status.broker_reachable();
        }
    }
}

impl ConsumerContext for StoreSeekingContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        // A store write running behind the loop finishes first: a restore on assignment
        // reads the store's offsets and writes the store, and a partition handed on must
        // be in the store as its transaction committed it.
        if let Err(e) = self.engine().processor.finish_write() {
            if let CommitError::Store(e) = &e {
                self.set_fatal(unwritable(&self.store, e));
            }
            self.status.commit_failed(e.to_string());
        }
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // Cooperative rebalancing names only the partitions added; eager (a
                // strategy set in [kafka.client]) names all, after revoking all.
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                // Held from here: a standby round in progress finishes first, and none
                // starts on these partitions again.
                let mut held = self.held.lock_first();
                held.extend(partitions.iter().copied());
                let assigned = match self.prepare_retrying(consumer, &partitions) {
                    Ok(a) => a,
                    Err(e) => {
                        for p in &partitions {
                            held.remove(p);
                        }
                        // None of them is assigned: leaving them so keeps the assignment
                        // as it was (an eager rebalance revoked everything before), and
                        // the loop stops on the fatal error and leaves the group.
                        self.set_fatal(format!("{e:#}"));
                        return;
                    }
                };
                for (p, o) in &assigned {
                    // Offset 0, not `Beginning`: no offset look-up round trip first; if the
                    // log no longer starts at 0, auto.offset.reset=earliest moves it there.
                    let offset = o.map_or(Offset::Offset(0), Offset::Offset);
                    if let Err(e) = tpl.set_partition_offset(&self.kafka.receipts_topic, *p, offset)
                    {
                        self.set_fatal(format!("setting the offset of partition {p}: {e}"));
                    }
                }
                telemetry::partitions_assigned(&assigned, &Vec::from_iter(held.iter().copied()));
                let done = if cooperative(consumer) {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = done {
                    self.set_fatal(format!("assigning partitions: {e}"));
                } else {
                    self.held_now(&held);
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let ps: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                // The batch in hand is finished while the partitions are still ours: its
                // transaction commits with their offsets, so the next owner's restore
                // resumes right after it instead of folding it again. A lost assignment
                // (the session expired: another member may hold them already) is never
                // committed; the group coordinator would refuse it anyway (KIP-447).
                let batch = if consumer.assignment_lost() {
                    None
                } else {
                    self.commit_in_hand(consumer)
                };
                let mut held = self.held.lock_first();
                for p in &ps {
                    held.remove(p);
                }
                telemetry::partitions_revoked(&ps, &Vec::from_iter(held.iter().copied()), batch);
                telemetry::consumer_lag_released(&ps);
                match batch {
                    // The partitions kept fold on from where they are.
                    Some(_) => self.engine().processor.forget(&ps),
                    // The partitions kept are sought back to the store by the main loop.
                    None => self.drop_batch_in_hand(),
                }
                self.held_now(&held);
                let _ = give_back(consumer, tpl);
            }
            other => {
                telemetry::kafka_error(&format_args!("rebalance error: {other:?}"));
                // Everything is dropped, as for a revocation of all.
                self.drop_batch_in_hand();
                let mut held = self.held.lock_first();
                telemetry::consumer_lag_released(&Vec::from_iter(held.iter().copied()));
                held.clear();
                self.held_now(&held);
                let _ = consumer.unassign();
            }
        }
    }
}

impl StoreSeekingContext {
    /// The processor and its sink, for the thread that polls.
    fn engine(&self) -> MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Commits the batch in hand (every partition's: one transaction holds them all).
    /// Returns the records it committed, or `None` if the commit failed: the batch was
    /// dropped then, and the failure reported (a store that cannot be written any more
    /// ends the loop).
    fn commit_in_hand(&self, consumer: &BaseConsumer<Self>) -> Option<u64> {
        let mut engine = self.engine();
        let Engine { processor, sink } = &mut *engine;
        let started = Instant::now();
        sink.set_group(consumer.group_metadata());
        match processor.commit(sink) {
            Ok(stats) => {
                report_commit(&self.store, &self.status, &stats, started.elapsed());
                Some(stats.records)
            }
            Err(CommitError::Store(e)) => {
                self.status.commit_failed(e.to_string());
                self.set_fatal(unwritable(&self.store, &e));
                None
            }
            Err(e) => {
                report_failure(&self.status, e, Duration::ZERO);
                None
            }
        }
    }

    /// The batch in hand is dropped, for every partition (its transaction aborted by the
    /// main loop before it folds anything else): positions fall back to the store.
    fn drop_batch_in_hand(&self) {
        self.positions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        self.revoked.store(true, Ordering::SeqCst);
    }

    /// The partitions held changed to `held`: the API, the other instances and the user
    /// count hear of it.
    fn held_now(&self, held: &std::collections::BTreeSet<i32>) {
        let all: Vec<i32> = held.iter().copied().collect();
        telemetry::users(self.store.users_in(|p| held.contains(&p)));
        self.announcer.announce(&all);
        self.status.assigned(all);
    }

    /// [`Self::prepare`], tried again after a transient failure (a metadata look-up or a
    /// changelog read timing out on a loaded or failing-over broker), [`PREPARE_TRIES`]
    /// times in all, so that such a moment does not end the process. A refusal or a store
    /// error is final at once.
    fn prepare_retrying(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &[i32],
    ) -> Result<Vec<(i32, Option<i64>)>, Error> {
        retrying(PREPARE_TRIES, PREPARE_PAUSE, PREPARE_BUDGET, || {
            self.prepare(consumer, partitions)
        })
    }

    /// Makes `partitions` ready to fold: caught up from their changelog, then each vouched
    /// for by the store or refused. Returns where to resume each (`None`: from the start).
    fn prepare(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &[i32],
    ) -> Result<Vec<(i32, Option<i64>)>, Error> {
        // Cooperative rebalancing calls the assign callback in every round, most often with
        // no partition added: nothing to prepare, and no metadata round trip whose failure
        // on a loaded broker would end the process for nothing.
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        // The partition count only feeds /v1/status: a failed look-up is not a reason to
        // refuse partitions.
        match super::partition_count(consumer, &self.kafka.receipts_topic) {
            Ok(Some(n)) => self.status.set_partition_count(n),
            Ok(None) => {}
            Err(e) => {
                warn!(message = "Could not read the receipts topic's partition count.", error = %e)
            }
        }
        let changelog = self.kafka.changelog_topic();
        let mut have = super::partition_count(consumer, &changelog)?.unwrap_or(0);
        if have == 0 && !partitions.is_empty() {
            // The receipts topic appeared after start-up (before it existed the changelog
            // could not be sized): create the changelog now, as a start would have.
            info!(message = "Creating the changelog topic, now that the receipts topic exists.", topic = %changelog);
            let kafka = &self.kafka;
            // On a thread of its own: this one may be inside the runtime, which cannot be
            // blocked on from within.
            std::thread::scope(|s| {
                s.spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| {
                            Error::Internal(format!("a runtime to create the changelog topic: {e}"))
                        })?
                        .block_on(super::ensure_output_topics(kafka))
                })
                .join()
                .map_err(|_| Error::Internal("creating the changelog topic panicked".into()))?
            })?;
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while have == 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
                // A topic just created has no leader for a moment: waited for, as one not
                // yet in the metadata is.
                have = super::partition_count(consumer, &changelog)
                    .ok()
                    .flatten()
                    .unwrap_or(0);
            }
        }
        if let Some(p) = partitions.iter().find(|p| **p as usize >= have) {
            return Err(Error::Refused(format!(
                "the changelog topic {changelog} has {have} partitions, but partition {p} of {} was \
                 assigned: the changelog needs as many partitions as the receipts topic (compacted). \
                 Create or grow it (kafka-topics.sh --alter --partitions), or restart mallquest, which \
                 creates it when it is missing.",
                self.kafka.receipts_topic
            )));
        }
        if self.restore {
            super::restore::catch_up(
                &self.kafka,
                &self.store,
                partitions,
                &self.status,
                super::restore::Purpose::Restore,
                &|| false,
            )?;
        }
        let mut out = Vec::with_capacity(partitions.len());
        let mut unvouched = Vec::new();
        // Where each partition resumes is what the store holds of it now (a restore's
        // included; nothing is in hand for a partition just assigned): the API serves that,
        // and its offsets header says so at once, not only after the next commit.
        let mut served = std::collections::BTreeMap::new();
        for &p in partitions {
            let at = Processor::resume_offset(
                &self.store,
                &self.positions,
                &self.kafka.receipts_topic,
                p,
            )?;
            match at {
                Some(at) => {
                    served.insert((self.kafka.receipts_topic.clone(), p), at);
                }
                None => unvouched.push(p),
            }
            out.push((p, at));
        }
        self.status.served(&served);
        if self.restore && !unvouched.is_empty() {
            refuse_unvouched(
                consumer,
                &self.store,
                &self.kafka.receipts_topic,
                &unvouched,
            )?;
        }
        Ok(out)
    }

    fn set_fatal(&self, msg: String) {
        if let Ok(mut f) = self.fatal.lock() {
            f.get_or_insert(msg);
        }
    }
}

/// A partition's lag: the records before `end` that are past the furthest of `next`, the
/// next offsets to fold as each source knows it (the fold's position, the consumer's, the
/// log's start); a negative offset (unknown) is ignored. `end` is the last stable offset
/// for a `read_committed` consumer, not the high watermark: a transaction's commit marker
/// counts in the high watermark but is never delivered, so a caught-up partition of a
/// transactional topic would show 1. The consumer's position moves past such markers, the
/// fold's does not. `None` while `end` is unknown (no fetch answered yet).
fn lag(end: i64, next: [i64; 3]) -> Option<i64> {
    if end < 0 {
        return None;
    }
    let at = next.into_iter().filter(|o| *o >= 0).max().unwrap_or(0);
    Some((end - at).max(0))
}

/// The longest backoff between retries of a failed commit.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How `run` treats a store with no state for the receipts topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Refuse to start on an empty store if the group has committed offsets: the store
    /// was lost or replaced, and folding from scratch would publish zeroed projections
    /// over good ones (unless the topic still holds every receipt: that is `Rebuild`).
    Normal,
    /// Refold the receipts topic from the beginning into an empty store.
    Rebuild,
}

/// Runs until `shutdown` is set, then commits the batch in hand and returns.
pub fn run(
    config: &Config,
    store: Arc<Store>,
    status: Arc<Status>,
    shutdown: &AtomicBool,
    start: Start,
) -> anyhow::Result<()> {
    let kafka = &config.kafka;
    let processor = Processor::with_hot_users(
        Arc::clone(&store),
        config.rules.clone(),
        config.store.hot_users,
    )
    .with_dedup_window_days(config.processing.dedup_window_days);
    let name = member_name(kafka, &store)?;
    status.set_name(name.clone());
    let announcer = Arc::new(super::members::Announcer::new(
        kafka,
        &name,
        &config.http.advertised(),
    )?);
    let held = Arc::new(super::standby::Held::default());
    let tail_stop = Arc::new(AtomicBool::new(false));
    let tail = {
        let (kafka, status, stop) = (kafka.clone(), Arc::clone(&status), Arc::clone(&tail_stop));
        std::thread::spawn(move || super::members::tail(&kafka, status, stop))
    };
    // Re-announces this instance every few seconds and keeps its standby partitions warm
    // (none while rebuilding: the store is being refolded).
    let standbys = match start {
        Start::Normal => config.processing.standby_replicas as usize,
        Start::Rebuild => 0,
    };
    let warm = super::standby::spawn(
        kafka.clone(),
        Arc::clone(&store),
        Arc::clone(&status),
        Arc::clone(&held),
        Arc::clone(&announcer),
        standbys,
        Arc::clone(&tail_stop),
    );
    let txn_id = format!("mallquest-{}-{name}", kafka.group_id);
    let sink = super::KafkaSink::new(kafka, Some(Arc::clone(&status)), &txn_id)?;
    let context = StoreSeekingContext {
        positions: processor.positions(),
        engine: Mutex::new(Engine { processor, sink }),
        store: Arc::clone(&store),
        fatal: Mutex::new(None),
        status: Arc::clone(&status),
        kafka: kafka.clone(),
        read_committed: kafka.client.get("isolation.level").map(String::as_str)
            != Some("read_uncommitted"),
        restore: start == Start::Normal,
        revoked: AtomicBool::new(false),
        announcer,
        held,
    };
    // Seeds the freshness header with what the store already holds.
    status.committed(&store.offsets()?);
    // A short session: a killed processor's partitions go back to the group within
    // seconds, not after the 45 s default. With static membership (`[kafka] instance_id`)
    // a restart within the session rejoins under the same member and gets its partitions
    // back without a rebalance; the broker rebalances only when the session expires.
    let mut defaults = vec![
        ("group.id", kafka.group_id.as_str()),
        ("session.timeout.ms", "6000"),
        // The loop polls at least every commit (publish waits at most ~35 s), so a
        // minute bounds how long a rebalance can wait for a member that is gone.
        ("max.poll.interval.ms", "60000"),
        ("heartbeat.interval.ms", "1000"),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", "earliest"),
        ("enable.partition.eof", "false"),
        // Only the partitions that move stop: the others keep folding through a
        // rebalance, and a planned stop hands over just the leaver's partitions.
        ("partition.assignment.strategy", "cooperative-sticky"),
        ("statistics.interval.ms", "5000"),
        // Reconnects back off from 100 ms to 10 s (librdkafka's defaults, named here).
        ("reconnect.backoff.ms", "100"),
        ("reconnect.backoff.max.ms", "10000"),
    ];
    if let Some(id) = &kafka.instance_id {
        defaults.push(("group.instance.id", id.as_str()));
    }
    let consumer: BaseConsumer<StoreSeekingContext> = super::client_config(kafka, &defaults)
        .create_with_context(context)
        .context("failed to create the Kafka consumer")?;
    check_start(&store, &kafka.receipts_topic, start)?;
    match kafka.assignment {
        Assignment::Group => consumer
            .subscribe(&[&kafka.receipts_topic])
            .with_context(|| format!("failed to subscribe to {}", kafka.receipts_topic))?,
        Assignment::Manual => {
            if !assign_all(&consumer, &kafka.receipts_topic, shutdown)? {
                return Ok(());
            }
        }
    }
    info!(message = "Consuming.", topic = %kafka.receipts_topic, group = %kafka.group_id);
    let result = consume(config, &consumer, &store, &status, shutdown);
    if result.is_err() {
        // Whatever is in hand stays uncommitted: leaving the group below revokes every
        // partition, and that revocation must not commit a batch the loop gave up on.
        let mut engine = consumer.context().engine();
        crate::pipeline::Sink::abort(&mut engine.sink);
        engine.processor.reset();
    }
    // The group is left first, so that the partitions' next owner starts as soon as it
    // can (a planned handoff); the standby thread is only told to stop meanwhile, and
    // its re-announcements end before the last announcement says this instance holds
    // nothing.
    tail_stop.store(true, Ordering::Relaxed);
    let announcer = Arc::clone(&consumer.context().announcer);
    close_within(consumer, CLOSE_TIMEOUT);
    let _ = warm.join();
    announcer.announce(&[]);
    let _ = tail.join();
    result
}

/// This instance's name in the group, stable across its restarts: `[kafka] instance_id`
/// when set, else an id kept in the store's directory. Its producer's transactional id is
/// made of it, so that a restart fences its previous run and aborts what it left open at
/// once; it is also the key of its announcements on the membership topic.
fn member_name(kafka: &crate::config::KafkaConfig, store: &Store) -> anyhow::Result<String> {
    let name = match &kafka.instance_id {
        Some(id) => id.clone(),
        None => {
            let file = store.path().join("mallquest-instance-id");
            match std::fs::read_to_string(&file) {
                Ok(id) if !id.trim().is_empty() => id.trim().to_owned(),
                _ => {
                    use rand::Rng as _;
                    let id = format!("{:016x}", rand::thread_rng().gen::<u64>());
                    std::fs::write(&file, &id)
                        .with_context(|| format!("failed to write {}", file.display()))?;
                    id
                }
            }
        }
    };
    Ok(name)
}

/// How long closing the consumer (leaving the group) may take before `run` returns anyway.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Closes the consumer, but gives up after `timeout`: with the broker gone, librdkafka's
/// close waits for the group coordinator forever, and a SIGTERM must still end the process.
/// The batch in hand is committed before this, so nothing is lost by giving up.
fn close_within(consumer: BaseConsumer<StoreSeekingContext>, timeout: Duration) {
    let (done, closed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(consumer);
        let _ = done.send(());
    });
    if closed.recv_timeout(timeout).is_err() {
        warn!(message = "The consumer did not close in time (broker unreachable?); exiting without leaving the group.", timeout_s = timeout.as_secs());
    }
}

/// The receipts topic as the pipeline's source: the consumer, with what a failed commit,
/// a revocation and a low disk need.
struct KafkaSource<'c> {
    consumer: &'c BaseConsumer<StoreSeekingContext>,
    store: &'c Arc<Store>,
    status: &'c Status,
    shutdown: &'c AtomicBool,
    topic: &'c str,
    /// Backoff before the next replay after a failed commit; doubled per failure, reset by
    /// a commit that wrote something.
    backoff: Cell<Duration>,
    disk: RefCell<DiskWatch>,
}

impl Message for BorrowedMessage<'_> {
    fn record(&self) -> Record<'_> {
        Record {
            topic: self.topic(),
            partition: self.partition(),
            offset: self.offset(),
            key: self.key(),
            payload: self.payload(),
            timestamp_ms: self.timestamp().to_millis().filter(|ms| *ms >= 0),
        }
    }
}

impl Source for KafkaSource<'_> {
    type Sink = super::KafkaSink;
    type Message<'a>
        = BorrowedMessage<'a>
    where
        Self: 'a;

    fn engine(&self) -> impl DerefMut<Target = Engine> + '_ {
        self.consumer.context().engine()
    }

    fn poll(&self, wait: Duration) -> anyhow::Result<Polled<BorrowedMessage<'_>>> {
        let next = self.consumer.poll(wait);
        // A rebalance runs inside the poll: what it could not do ends the loop, and a
        // batch it could not commit is dropped before anything else is folded.
        if let Some(msg) = self
            .consumer
            .context()
            .fatal
            .lock()
            .ok()
            .and_then(|mut f| f.take())
        {
            anyhow::bail!("rebalance failed: {msg}");
        }
        drop_if_revoked(self.consumer, self.topic)?;
        Ok(match next {
            Some(Ok(m)) => Polled::Message(m),
            Some(Err(e)) => {
                telemetry::kafka_error(&e);
                Polled::Idle
            }
            None => Polled::Idle,
        })
    }

    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    fn gate(&self) -> anyhow::Result<Gate> {
        let mut disk = self.disk.borrow_mut();
        match disk.check(self.consumer, self.store, self.status, self.topic)? {
            Disk::Fold => Ok(Gate::Open),
            Disk::Resumed => Ok(Gate::Reopened),
            Disk::Paused => {
                if !self.stopping() {
                    // Keeps the group session alive; records that arrive are dropped
                    // unfolded and read again after the rewind at resumption.
                    let _ = self.consumer.poll(Duration::from_secs(1));
                    drop_if_revoked(self.consumer, self.topic)?;
                }
                Ok(Gate::Closed)
            }
        }
    }

    fn batch_cap(&self) -> u64 {
        self.disk.borrow().batch_cap()
    }

    fn before_commit(&self, engine: &mut Engine) {
        engine.sink.set_group(self.consumer.group_metadata());
    }

    fn committed(&self, stats: &BatchStats, took: Duration) {
        report_commit(self.store, self.status, stats, took);
        // Only a commit that wrote something proves a fault is gone.
        self.backoff.set(Duration::from_millis(100));
    }

    fn failed(&self, error: CommitError) -> anyhow::Result<()> {
        match error {
            // A failed store write is final: fjall refuses every write after one, and what
            // it had applied in memory before failing is not known. The batch's transaction
            // is committed already, so the restart recovers the store from its journal and
            // catches up from the changelog; folding on here could publish (and keep in the
            // changelog) a state built on a batch the store may not have.
            CommitError::Store(e) => {
                self.status.commit_failed(e.to_string());
                anyhow::bail!(unwritable(self.store, &e));
            }
            e => {
                let mut backoff = self.backoff.get();
                recover(
                    self.consumer,
                    self.store,
                    self.status,
                    e,
                    &mut backoff,
                    self.shutdown,
                    self.topic,
                )?;
                self.backoff.set(backoff);
                Ok(())
            }
        }
    }
}

/// Folds and commits until `shutdown` is set (the batch in hand committed first) or
/// something fails for good. One transaction per batch (published, committed with its
/// offsets, then stored, the store write running behind while the next batch folds): a
/// transaction holds one batch, so that its changelog position stands for exactly what it
/// carries.
fn consume(
    config: &Config,
    consumer: &BaseConsumer<StoreSeekingContext>,
    store: &Arc<Store>,
    status: &Status,
    shutdown: &AtomicBool,
) -> anyhow::Result<()> {
    let source = KafkaSource {
        consumer,
        store,
        status,
        shutdown,
        topic: &config.kafka.receipts_topic,
        backoff: Cell::new(Duration::from_millis(100)),
        disk: RefCell::new(DiskWatch {
            min_free_mb: config.store.min_free_mb,
            low: false,
        }),
    };
    match pipeline::drive(&source, config.processing.cadence())? {
        Finish::StoppedPaused(_) => {
            info!(message = "Stopped while paused for disk space; nothing was in hand.");
        }
        Finish::Stopped(_) | Finish::Ended(_) => {
            info!(message = "Stopped after committing the batch in hand.");
        }
    }
    Ok(())
}

/// What the disk-space check says the loop is to do.
enum Disk {
    /// Enough space: fold on.
    Fold,
    /// Too little space: folding is paused, nothing is in hand.
    Paused,
    /// Space is back: the consumer was rewound to the stored offsets.
    Resumed,
}

/// Pauses folding while the store's file system has less than `[store] min_free_mb`
/// free, so that a full disk never fails a store write half way (0: never pauses).
struct DiskWatch {
    min_free_mb: u64,
    /// Set while folding is paused.
    low: bool,
}

impl DiskWatch {
    /// The most records a batch may grow to while its commit waits for the store write
    /// before it: what the guard's margin covers at [`DISK_BYTES_PER_RECORD`], so that a
    /// batch folded between two checks cannot fill the disk (no cap without the guard).
    fn batch_cap(&self) -> u64 {
        if self.min_free_mb == 0 {
            return u64::MAX;
        }
        (self.min_free_mb.saturating_mul(1 << 20) / DISK_BYTES_PER_RECORD).max(1)
    }

    fn check(
        &mut self,
        consumer: &BaseConsumer<StoreSeekingContext>,
        store: &Store,
        status: &Status,
        topic: &str,
    ) -> anyhow::Result<Disk> {
        if self.min_free_mb == 0 {
            return Ok(Disk::Fold);
        }
        let free = store.free_bytes();
        if free.is_some_and(|f| f < self.min_free_mb.saturating_mul(1 << 20)) {
            if !self.low {
                // Drop the batch in hand before it is published or written; it is folded
                // again from the stored offsets when there is space.
                let why = format!(
                    "disk low: {} MiB free at {}, [store] min_free_mb is {}; folding is paused until there is space",
                    free.unwrap_or(0) >> 20,
                    store.path().display(),
                    self.min_free_mb
                );
                consumer.context().engine().processor.reset();
                rewind_to_store(consumer, store, topic)?;
                status.commit_failed(why.clone());
                telemetry::commit_failed(&anyhow::anyhow!(why), "disk", Duration::from_secs(1));
                self.low = true;
            }
            set_paused(consumer, true);
            return Ok(Disk::Paused);
        }
        if !self.low {
            return Ok(Disk::Fold);
        }
        info!(
            message = "Disk space is back; resuming from the stored offsets.",
            free_mib = free.unwrap_or(0) >> 20
        );
        consumer.context().engine().processor.reset();
        rewind_to_store(consumer, store, topic)?;
        set_paused(consumer, false);
        self.low = false;
        Ok(Disk::Resumed)
    }
}

/// What one record can take on the store's disk before the next disk check, with room to
/// spare: its journal entry (about a kilobyte: 13.6 keys and their values), and the
/// tables its memtable entries are flushed into.
const DISK_BYTES_PER_RECORD: u64 = 4 << 10;

/// A batch was committed: the metrics and the API's freshness hear of it.
fn report_commit(store: &Store, status: &Status, stats: &BatchStats, took: Duration) {
    if stats.records == 0 {
        return;
    }
    let held = status.owned().unwrap_or_default();
    let users = store.users_in(|p| held.contains(&p));
    telemetry::batch_committed(stats, took, users);
    status.committed(&stats.offsets);
}

/// Why the loop ends after a failed store write.
fn unwritable(store: &Store, e: &StoreError) -> String {
    format!(
        "the store at {} cannot be written any more: {e}: {}",
        store.path().display(),
        StoreError::Poisoned
    )
}

/// A failed commit or send: the API's readiness, the metrics and the log hear of it.
fn report_failure(status: &Status, e: CommitError, backoff: Duration) {
    let stage = match e {
        CommitError::Publish(_) => "publish",
        CommitError::Store(_) => "store",
    };
    let e = anyhow::Error::new(e);
    status.commit_failed(format!("{stage}: {e:#}"));
    telemetry::commit_failed(&e, stage, backoff);
}

/// After a failed commit or send (the batches in hand were dropped): reports it, rewinds
/// to the stored offsets to replay them, and backs off.
fn recover(
    consumer: &BaseConsumer<StoreSeekingContext>,
    store: &Store,
    status: &Status,
    e: CommitError,
    backoff: &mut Duration,
    shutdown: &AtomicBool,
    topic: &str,
) -> anyhow::Result<()> {
    report_failure(status, e, *backoff);
    rewind_to_store(consumer, store, topic)?;
    sleep_unless(shutdown, *backoff);
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    Ok(())
}

/// `rebuild` only fills an empty store.
fn check_start(store: &Store, topic: &str, start: Start) -> anyhow::Result<()> {
    let has_state = store.offsets()?.keys().any(|(t, _)| t == topic);
    let path = store.path().display();
    match (start, has_state) {
        (Start::Normal, _) => Ok(()),
        (Start::Rebuild, true) => anyhow::bail!(
            "the store at {path} already holds state for {topic}; `rebuild` only fills an empty store: \
             move the directory aside (or delete it) and run `mallquest rebuild` again"
        ),
        (Start::Rebuild, false) => {
            info!(message = "Rebuilding the store from the beginning of the topic.", topic, path = %path);
            Ok(())
        }
    }
}

/// Refuses partitions that neither the store nor the changelog can vouch for, if the
/// group has folded them before: folding them from scratch would publish zeroed
/// projections over good ones (and the receipts topic may no longer hold every receipt).
fn refuse_unvouched(
    consumer: &BaseConsumer<StoreSeekingContext>,
    store: &Store,
    topic: &str,
    partitions: &[i32],
) -> Result<(), Error> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = committed_offsets(consumer, tpl)?;
    let progressed: Vec<String> = committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) if o > 0 => Some(format!("{}={o}", e.partition())),
            _ => None,
        })
        .collect();
    if progressed.is_empty() {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "neither the store at {} nor the changelog holds state for {topic} partitions {partitions:?}, \
         but the consumer group has committed offsets ({}): the state was lost (the changelog topic \
         deleted?). Restore the store from a backup, or run `mallquest rebuild --config ...` to refold \
         the topic from its beginning (only if the topic still holds every receipt). Refusing, so \
         that zeroed projections are never published over good ones.",
        store.path().display(),
        progressed.join(", ")
    )))
}

/// The group's committed offsets. A new cluster's group coordinator is not there at once
/// (the offsets topic is created on the first look-up, then loaded): retried for a minute.
fn committed_offsets(
    consumer: &BaseConsumer<StoreSeekingContext>,
    tpl: TopicPartitionList,
) -> Result<TopicPartitionList, Error> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
            Ok(c) => return Ok(c),
            Err(e)
                if Instant::now() < deadline
                    && matches!(
                        e.rdkafka_error_code(),
                        Some(
                            RDKafkaErrorCode::NotCoordinator
                                | RDKafkaErrorCode::CoordinatorNotAvailable
                                | RDKafkaErrorCode::CoordinatorLoadInProgress
                                | RDKafkaErrorCode::OperationTimedOut
                                | RDKafkaErrorCode::RequestTimedOut
                        )
                    ) =>
            {
                info!(message = "Waiting for the group coordinator.", error = %e);
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => {
                return Err(e).kafka(|| "failed to read the group's committed offsets".into())
            }
        }
    }
}

/// `[kafka] assignment = "manual"`: takes every partition of `topic`, each at the
/// processor's own position, with no group membership. Waits for the topic to exist;
/// returns `false` if asked to stop first.
fn assign_all(
    consumer: &BaseConsumer<StoreSeekingContext>,
    topic: &str,
    shutdown: &AtomicBool,
) -> anyhow::Result<bool> {
    let partitions = loop {
        let found: Vec<i32> = match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(md) => md
                .topics()
                .iter()
                .filter(|t| t.name() == topic)
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect(),
            Err(e) => {
                telemetry::kafka_error(&e);
                Vec::new()
            }
        };
        if !found.is_empty() {
            break found;
        }
        warn!(
            message = "Waiting for the receipts topic to have partitions.",
            topic
        );
        sleep_unless(shutdown, Duration::from_secs(1));
        if shutdown.load(Ordering::Relaxed) {
            return Ok(false);
        }
    };
    let ctx = consumer.context();
    let mut tpl = TopicPartitionList::new();
    let mut held = ctx.held.lock();
    held.extend(partitions.iter().copied());
    let assigned = ctx.prepare_retrying(consumer, &partitions)?;
    for (p, at) in &assigned {
        tpl.add_partition_offset(topic, *p, at.map_or(Offset::Offset(0), Offset::Offset))
            .context("failed to build the assignment")?;
    }
    consumer
        .assign(&tpl)
        .context("failed to assign partitions")?;
    telemetry::partitions_assigned(&assigned, &Vec::from_iter(held.iter().copied()));
    ctx.held_now(&held);
    Ok(true)
}

/// After a revocation whose batch could not be committed (seen by the rebalance callback
/// inside a poll): aborts the open transaction and drops the batches in hand, before
/// anything else is folded or sent.
fn drop_if_revoked(
    consumer: &BaseConsumer<StoreSeekingContext>,
    topic: &str,
) -> anyhow::Result<()> {
    let ctx = consumer.context();
    if ctx.revoked.swap(false, Ordering::SeqCst) {
        let mut engine = ctx.engine();
        crate::pipeline::Sink::abort(&mut engine.sink);
        engine.processor.revoke();
        // The partitions kept (cooperative rebalancing) were read past the store's
        // offsets for the batch just dropped.
        rewind_to_store(consumer, &ctx.store, topic)?;
    }
    Ok(())
}

/// Tries of [`StoreSeekingContext::prepare`] in all, [`PREPARE_PAUSE`] apart, doubling.
const PREPARE_TRIES: u32 = 3;
const PREPARE_PAUSE: Duration = Duration::from_secs(1);
/// No new try of [`StoreSeekingContext::prepare`] starts this long after the first: the
/// assign callback runs inside `poll`, and its look-ups wait long already (committed
/// offsets up to 60 s, a changelog read as long as it makes progress), so retries must not
/// keep it past `max.poll.interval.ms`.
const PREPARE_BUDGET: Duration = Duration::from_secs(15);

/// Runs `attempt` until it succeeds, fails for good (an error that is not
/// [`Error::retryable`]: a refusal, a store error or an unreadable changelog record), has
/// been tried `tries` times, or `budget` has passed since the first try; pauses `pause`,
/// doubling, between tries.
fn retrying<T>(
    tries: u32,
    pause: Duration,
    budget: Duration,
    mut attempt: impl FnMut() -> Result<T, Error>,
) -> Result<T, Error> {
    let started = Instant::now();
    let mut pause = pause;
    let mut tried = 1;
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(e) if tried < tries && started.elapsed() < budget && e.retryable() => {
                warn!(message = "Preparing partitions failed; trying again.", error = %format!("{e:#}"), attempt = tried);
                std::thread::sleep(pause);
                pause *= 2;
                tried += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Re-positions every assigned partition at the store's offset.
/// Times a refused seek is tried again, 200 ms apart ([`rewind_to_store`]).
const SEEK_TRIES: u32 = 10;

fn rewind_to_store(
    consumer: &BaseConsumer<StoreSeekingContext>,
    store: &Store,
    topic: &str,
) -> anyhow::Result<()> {
    let assignment = consumer
        .assignment()
        .context("failed to read the assignment")?;
    // Where the store says a partition resumes; asked again for each retry, since a
    // refused seek may report another offset.
    let at_store = |partition: i32| -> anyhow::Result<Offset> {
        let stored = store.offset(topic, partition)?;
        Ok(stored.map_or(Offset::Offset(0), Offset::Offset))
    };
    let mut tpl = TopicPartitionList::new();
    for e in assignment.elements() {
        tpl.add_partition_offset(topic, e.partition(), at_store(e.partition())?)
            .context("failed to build the assignment")?;
    }
    if tpl.count() == 0 {
        return Ok(());
    }
    if cooperative(consumer) {
        // The group's assignment is changed only incrementally, in a rebalance. A
        // partition just assigned may not be fetching yet, or one being stopped may still
        // be stopping: librdkafka refuses to seek those for a moment, so the refused are
        // tried again, for about two seconds, before the loop gives up.
        let mut tries = 0;
        loop {
            let sought = consumer
                .seek_partitions(tpl, Duration::from_secs(10))
                .context("failed to seek partitions back to the store's offsets")?;
            let mut again = TopicPartitionList::new();
            for e in sought.elements() {
                // A partition left where it was would skip what the dropped batch had read.
                if let Err(err) = e.error() {
                    if tries >= SEEK_TRIES {
                        return Err(err).with_context(|| {
                            format!(
                                "failed to seek partition {} back to the store's offset",
                                e.partition()
                            )
                        });
                    }
                    warn!(message = "Seeking a partition back was refused; trying again.", partition = e.partition(), error = %err);
                    again
                        .add_partition_offset(topic, e.partition(), at_store(e.partition())?)
                        .context("failed to build the assignment")?;
                }
            }
            if again.count() == 0 {
                break;
            }
            tries += 1;
            std::thread::sleep(Duration::from_millis(200));
            tpl = again;
        }
    } else {
        consumer
            .assign(&tpl)
            .context("failed to re-assign partitions")?;
    }
    Ok(())
}

/// Gives partitions back in a rebalance: only those (cooperative), or all (eager).
fn give_back(
    consumer: &BaseConsumer<StoreSeekingContext>,
    tpl: &TopicPartitionList,
) -> rdkafka::error::KafkaResult<()> {
    if cooperative(consumer) {
        consumer.incremental_unassign(tpl)
    } else {
        consumer.unassign()
    }
}

/// Whether the group rebalances cooperatively (only the partitions that move are revoked).
fn cooperative(consumer: &BaseConsumer<StoreSeekingContext>) -> bool {
    matches!(
        consumer.rebalance_protocol(),
        RebalanceProtocol::Cooperative
    )
}

/// Pauses (or resumes) fetching of every assigned partition.
fn set_paused(consumer: &BaseConsumer<StoreSeekingContext>, paused: bool) {
    let Ok(assignment) = consumer.assignment() else {
        return;
    };
    let result = if paused {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    if let Err(e) = result {
        telemetry::kafka_error(&e);
    }
}

fn sleep_unless(flag: &AtomicBool, total: Duration) {
    let until = Instant::now() + total;
    while !flag.load(Ordering::Relaxed) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transient_failure_of_preparing_is_tried_again_and_a_refusal_is_not() {
        // Runs `fail` under `retrying` (3 tries, a 60 s budget unless given), counting tries.
        fn tries(
            budget: Duration,
            fail: impl Fn(u32) -> Result<u32, Error>,
        ) -> (Result<u32, Error>, u32) {
            let calls = Cell::new(0);
            let out = retrying(3, Duration::from_millis(1), budget, || {
                calls.set(calls.get() + 1);
                fail(calls.get())
            });
            (out, calls.get())
        }
        let long = Duration::from_secs(60);
        let gone = || Error::Client {
            what: "failed to read the metadata of mallquest-changelog".into(),
            source: KafkaError::MetadataFetch(RDKafkaErrorCode::OperationTimedOut),
        };

        let (flaky, _) = tries(long, |n| if n < 3 { Err(gone()) } else { Ok(n) });
        assert_eq!(flaky.unwrap(), 3, "succeeds on the third try");

        let (never, calls) = tries(long, |_| Err(gone()));
        assert!(never.is_err());
        assert_eq!(calls, 3, "gives up after the tries it was given");

        let (refused, calls) = tries(long, |_| Err(Error::Refused("state lost".into())));
        assert!(refused.unwrap_err().to_string().contains("state lost"));
        assert_eq!(calls, 1, "a refusal is final");

        let (store, calls) = tries(long, |_| {
            Err(Error::Store(StoreError::Corrupt {
                what: "user",
                detail: "bad bytes".into(),
            }))
        });
        assert!(store.is_err());
        assert_eq!(calls, 1, "a store error is final");

        let (slow, calls) = tries(Duration::ZERO, |_| Err(gone()));
        assert!(slow.is_err());
        assert_eq!(calls, 1, "no new try once the budget has passed");
    }

    // Regression: a caught-up instance showed no `mallquest_consumer_lag` at all (issue 32):
    // the gauge was set only from librdkafka's figure, measured from offsets it never had.
    #[test]
    fn lag_is_measured_from_the_furthest_known_position_to_the_last_stable_offset() {
        const UNKNOWN: i64 = -1001;
        assert_eq!(lag(2991, [2991, UNKNOWN, 0]), Some(0), "caught up");
        assert_eq!(
            lag(2991, [2000, 2500, 0]),
            Some(491),
            "the consumer read ahead"
        );
        // The last record of a transactional topic is its commit marker: the fold's next
        // offset stops before it, the consumer's moves past it.
        assert_eq!(lag(11, [10, 11, 0]), Some(0), "a commit marker is no lag");
        assert_eq!(lag(50, [0, UNKNOWN, 40]), Some(10), "from the log's start");
        assert_eq!(lag(-1, [0, UNKNOWN, UNKNOWN]), None, "nothing fetched yet");
        assert_eq!(lag(5, [9, UNKNOWN, 0]), Some(0), "never negative");
    }

    #[test]
    fn a_batch_grows_only_as_far_as_the_disk_guards_margin_covers() {
        let cap = |min_free_mb| {
            DiskWatch {
                min_free_mb,
                low: false,
            }
            .batch_cap()
        };
        assert_eq!(cap(0), u64::MAX, "no guard, no cap");
        assert_eq!(cap(4), 1_024);
        assert_eq!(cap(256), 65_536);
        assert_eq!(cap(u64::MAX), u64::MAX / DISK_BYTES_PER_RECORD);
    }
}

//! The output sink: projections, level-up events, dead letters and changelog records,
//! published in one Kafka transaction per batch, committed with the batch's receipt
//! offsets (KIP-447) before the store commits the batch.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::warn;

use super::error::{Context as _, Error};
use crate::codec;
use crate::config::KafkaConfig;
use crate::pipeline::{Outputs, Sink};
use crate::status::Status;
use crate::telemetry;

/// Counts delivery failures of the batch in flight.
#[derive(Default)]
pub(crate) struct DeliveryTracker {
    /// Outputs enqueued whose delivery report has not been handled yet.
    outstanding: AtomicU64,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// What `/readyz` reports: the producer is the first to notice lost brokers while
    /// the consumer loop waits for a delivery.
    status: Option<Arc<Status>>,
    /// Set while no broker answers the producer; cleared by the next delivery.
    brokers_down: AtomicBool,
    brokers: String,
    changelog_topic: String,
    /// Next offset of each changelog partition written to since the last commit.
    changelog_next: Mutex<BTreeMap<i32, i64>>,
}

impl ClientContext for DeliveryTracker {
    fn error(&self, error: KafkaError, reason: &str) {
        telemetry::kafka_error(&format_args!("producer: {error}: {reason}"));
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.brokers_down.store(true, Ordering::Relaxed);
            if let Some(s) = &self.status {
                s.broker_unreachable(format!(
                    "cannot reach the Kafka brokers at {}: {reason}",
                    self.brokers
                ));
            }
        }
    }
}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_ok() && self.brokers_down.swap(false, Ordering::Relaxed) {
            telemetry::broker_up(true);
            if let Some(s) = &self.status {
                s.broker_reachable();
            }
        }
        if let Ok(m) = result {
            if m.topic() == self.changelog_topic {
                let mut next = self
                    .changelog_next
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let at = next.entry(m.partition()).or_insert(0);
                *at = (*at).max(m.offset() + 1);
            }
        }
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut last) = self.last_error.lock() {
                *last = Some(e.to_string());
            }
        }
        // Last, so that a waiter that sees zero outstanding also sees the failure.
        self.outstanding.fetch_sub(1, Ordering::Release);
    }
}

/// Publishes a batch's outputs in a transaction and commits it with the batch's offsets.
pub struct KafkaSink {
    /// Its own thread serves delivery reports as they arrive. Shared only with a thread
    /// that adds offsets to the transaction (see [`KafkaSink::send_offsets`]).
    producer: Arc<ThreadedProducer<DeliveryTracker>>,
    /// To make a new producer after a fatal error.
    kafka: KafkaConfig,
    status: Option<Arc<Status>>,
    projections_topic: String,
    events_topic: String,
    dlq_topic: String,
    changelog_topic: String,
    /// Whether a transaction is open (begun by the first send after a commit or abort).
    open: bool,
    /// The consumer group's metadata, sent with the offsets so that the group coordinator
    /// fences a member that lost its partitions (KIP-447).
    group: Option<ConsumerGroupMetadata>,
}

/// How long a batch may wait for delivery before it is given up and replayed; also the
/// transaction timeout: the broker aborts a transaction left open longer by a producer
/// that died and never came back under its transactional id (a restart aborts it at once),
/// so `read_committed` readers of its partitions wait at most this long. Longer than a
/// KRaft broker's session (9 s) plus a leader election, so that a killed partition leader
/// does not fail the transaction.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one transaction call (init, offsets, commit) may take.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long adding the offsets to a transaction may take before the producer is replaced
/// (see [`KafkaSink::send_offsets`]); it normally takes a round trip or two.
const OFFSETS_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an abort may take before the producer is replaced instead (a new producer's
/// `init_transactions` aborts the open transaction too, by bumping the epoch).
const ABORT_TIMEOUT: Duration = Duration::from_secs(10);

impl KafkaSink {
    /// A transactional producer with bounded queues, acks from all in-sync replicas and
    /// idempotence. `transactional_id` must be unique to this instance and stable across
    /// its restarts: a restart then fences and aborts what its previous run left open.
    pub fn new(
        kafka: &KafkaConfig,
        status: Option<Arc<Status>>,
        transactional_id: &str,
    ) -> Result<Self, Error> {
        let mut kafka = kafka.clone();
        kafka
            .client
            .entry("transactional.id".into())
            .or_insert_with(|| transactional_id.to_owned());
        Ok(Self {
            producer: Arc::new(Self::producer(&kafka, status.clone())?),
            status,
            projections_topic: kafka.projections_topic.clone(),
            events_topic: kafka.events_topic.clone(),
            dlq_topic: kafka.dlq_topic.clone(),
            changelog_topic: kafka.changelog_topic(),
            kafka,
            open: false,
            group: None,
        })
    }

    /// The consumer group's current metadata, sent with the next commit's offsets.
    pub fn set_group(&mut self, group: Option<ConsumerGroupMetadata>) {
        self.group = group;
    }

    fn producer(
        kafka: &KafkaConfig,
        status: Option<Arc<Status>>,
    ) -> Result<ThreadedProducer<DeliveryTracker>, Error> {
        let timeout_ms = DELIVERY_TIMEOUT.as_millis().to_string();
        let producer: ThreadedProducer<DeliveryTracker> = Self::config(kafka, &timeout_ms)
            .create_with_context(DeliveryTracker {
                status,
                brokers: kafka.brokers.clone(),
                changelog_topic: kafka.changelog_topic(),
                ..DeliveryTracker::default()
            })
            .kafka(|| "failed to create the Kafka producer".into())?;
        producer
            .init_transactions(TXN_TIMEOUT)
            .kafka(|| "failed to initialise the producer's transactions".into())?;
        Ok(producer)
    }

    fn config(kafka: &KafkaConfig, timeout_ms: &str) -> rdkafka::ClientConfig {
        super::client_config(
            kafka,
            &[
                ("acks", "all"),
                // No duplicates and no reordering on retries: a retried request cannot land
                // an older projection of a user after a newer one on the compacted topic.
                // librdkafka then keeps at most 5 requests in flight per partition and
                // retries within `message.timeout.ms`.
                ("enable.idempotence", "true"),
                ("linger.ms", "5"),
                ("queue.buffering.max.messages", "100000"),
                ("message.timeout.ms", timeout_ms),
                ("message.max.bytes", "2000000"),
                ("transaction.timeout.ms", timeout_ms),
            ],
        )
    }

    /// After a fatal error (the broker fenced this producer: its transaction timed out, or
    /// another producer took its transactional id; or its sequence state was lost), no
    /// send can succeed any more: a new producer takes over. The failed batch is replayed
    /// from the store, so nothing is lost or reordered.
    fn replace_if_fatal(&mut self) -> Result<(), Error> {
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            warn!(message = "The producer hit a fatal error; replacing it.", code = ?code, reason = %reason);
            self.renew()?;
        }
        Ok(())
    }

    fn renew(&mut self) -> Result<(), Error> {
        self.open = false;
        self.producer = Arc::new(Self::producer(&self.kafka, self.status.clone())?);
        Ok(())
    }

    fn begin(&mut self) -> Result<(), Error> {
        if self.open {
            return Ok(());
        }
        if let Err(e) = self.producer.begin_transaction() {
            warn!(message = "Could not begin a transaction; replacing the producer.", error = %e);
            self.renew()?;
            self.producer
                .begin_transaction()
                .kafka(|| "failed to begin a transaction".into())?;
        }
        self.open = true;
        Ok(())
    }

    /// Delivers what is in flight, then commits the transaction with `offsets`.
    fn commit(
        &mut self,
        offsets: &BTreeMap<(String, i32), i64>,
    ) -> Result<BTreeMap<i32, i64>, Error> {
        self.delivered()?;
        let mut tpl = TopicPartitionList::new();
        for ((topic, p), next) in offsets {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*next))
                .kafka(|| "failed to list the offsets".into())?;
        }
        self.send_offsets(tpl)?;
        self.producer
            .commit_transaction(TXN_TIMEOUT)
            .kafka(|| "failed to commit the transaction".into())?;
        self.open = false;
        Ok(std::mem::take(
            &mut *self
                .producer
                .context()
                .changelog_next
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        ))
    }

    /// Adds the batch's offsets to the transaction, with the group's metadata. librdkafka
    /// (2.x) can block in `send_offsets_to_transaction` past its timeout, for good, when the
    /// group coordinator's broker was removed from the cluster's metadata (librdkafka issues
    /// 5456 and 5511, open): so the call runs on a thread of its own, and if it has not
    /// returned in time the producer is given up to it and replaced. The new producer's
    /// `init_transactions` fences the old one and aborts its transaction; the batch is
    /// folded again.
    fn send_offsets(&mut self, tpl: TopicPartitionList) -> Result<(), Error> {
        let group = self.group.take().ok_or_else(|| {
            Error::Internal("no consumer group metadata to commit offsets with".into())
        })?;
        let producer = Arc::clone(&self.producer);
        let (done, result) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("mallquest-txn-offsets".into())
            .spawn(move || {
                let r = producer.send_offsets_to_transaction(&tpl, &group, TXN_TIMEOUT);
                let _ = done.send(r);
            })
            .map_err(|e| Error::Internal(format!("failed to start the offsets thread: {e}")))?;
        match result.recv_timeout(OFFSETS_TIMEOUT) {
            Ok(r) => r.kafka(|| "failed to add the offsets to the transaction".into()),
            Err(_) => {
                warn!(message = "Adding the offsets to the transaction did not return in time (librdkafka issue 5511: the group coordinator moved); replacing the producer.", timeout_s = OFFSETS_TIMEOUT.as_secs());
                self.renew()?;
                Err(Error::Delivery(format!(
                    "adding the offsets to the transaction did not return within {OFFSETS_TIMEOUT:?}"
                )))
            }
        }
    }

    /// Forgets the delivery state of an aborted transaction once its purged outputs are
    /// reported.
    /// Waits until every output sent so far has its delivery report, at most `within`;
    /// whether they all have. Not `flush`: rdkafka's `poll` and `flush` wait out their
    /// whole timeout (at least 100 ms per batch), and short polls spin. The producer's own
    /// thread serves the delivery reports; this only sleeps until none is outstanding.
    fn drained(&self, within: Duration) -> bool {
        let outstanding = &self.producer.context().outstanding;
        let deadline = Instant::now() + within;
        while outstanding.load(Ordering::Acquire) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    fn forget_deliveries(&self) {
        let tracker = self.producer.context();
        self.drained(DELIVERY_TIMEOUT);
        tracker.failed.store(0, Ordering::Relaxed);
        tracker
            .changelog_next
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn enqueue(&self, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<(), Error> {
        let outstanding = &self.producer.context().outstanding;
        loop {
            // Counted before the send: the report may arrive before `send` returns.
            outstanding.fetch_add(1, Ordering::Relaxed);
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                // The local queue is bounded: wait for deliveries to make room.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    outstanding.fetch_sub(1, Ordering::Relaxed);
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => {
                    outstanding.fetch_sub(1, Ordering::Relaxed);
                    return Err(e).kafka(|| "failed to enqueue an output".into());
                }
            }
        }
    }
}

impl Sink for KafkaSink {
    fn send(&mut self, out: &Outputs<'_>) -> anyhow::Result<()> {
        self.begin()?;
        if let Err(e) = self.enqueue_all(out) {
            self.abort();
            return Err(e.into());
        }
        Ok(())
    }

    fn wants_changelog(&self) -> bool {
        true
    }

    fn finish(
        &mut self,
        offsets: &BTreeMap<(String, i32), i64>,
    ) -> anyhow::Result<BTreeMap<i32, i64>> {
        if !self.open {
            self.wait()?;
            return Ok(BTreeMap::new());
        }
        match self.commit(offsets) {
            Ok(next) => Ok(next),
            Err(e) => {
                warn!(message = "The transaction failed; aborting it.", error = %format!("{e:#}"));
                self.abort();
                Err(e.into())
            }
        }
    }

    fn abort(&mut self) {
        if !self.open {
            return;
        }
        self.open = false;
        let aborted = self.producer.abort_transaction(ABORT_TIMEOUT);
        self.forget_deliveries();
        if let Err(e) = aborted {
            warn!(message = "Could not abort the transaction; replacing the producer.", error = %e);
            if let Err(e) = self.renew() {
                warn!(message = "Could not replace the producer; the next send tries again.", error = %e);
            }
        }
    }

    fn wait(&mut self) -> anyhow::Result<()> {
        Ok(self.delivered()?)
    }
}

impl KafkaSink {
    /// Waits until every output sent since the last wait is settled; an error if one was
    /// not delivered (the producer is replaced first if the failure was fatal).
    fn delivered(&mut self) -> Result<(), Error> {
        if !self.drained(DELIVERY_TIMEOUT + Duration::from_secs(5)) {
            return Err(Error::Delivery(
                "outputs were not all delivered in time".into(),
            ));
        }
        // Every send since the last wait is settled: failures count once.
        let tracker = self.producer.context();
        let failed = tracker.failed.swap(0, Ordering::Relaxed);
        if failed > 0 {
            let last = tracker
                .last_error
                .lock()
                .ok()
                .and_then(|l| l.clone())
                .unwrap_or_default();
            self.replace_if_fatal()?;
            return Err(Error::Delivery(format!(
                "{failed} outputs failed to deliver (last error: {last})"
            )));
        }
        Ok(())
    }
}

impl KafkaSink {
    fn enqueue_all(&self, out: &Outputs<'_>) -> Result<(), Error> {
        for (p, e) in &out.changelog {
            let (key, value) = (e.key(), e.value());
            let mut record = BaseRecord::to(&self.changelog_topic)
                .partition(*p)
                .key(&key[..]);
            if let Some(value) = &value {
                record = record.payload(&value[..]);
            }
            self.enqueue(record)?;
        }
        for p in &out.projections {
            let value = codec::encode_projection(p);
            self.enqueue(
                BaseRecord::to(&self.projections_topic)
                    .key(p.user_id.as_bytes())
                    .payload(&value[..]),
            )?;
        }
        for e in &out.events {
            let value = codec::encode_event(e);
            self.enqueue(
                BaseRecord::to(&self.events_topic)
                    .key(e.user_id().as_bytes())
                    .payload(&value[..]),
            )?;
        }
        for d in &out.dead_letters {
            let partition = d.partition.to_string();
            let offset = d.offset.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: codec::HEADER_REASON,
                    value: Some(d.reason.as_str()),
                })
                .insert(Header {
                    key: codec::HEADER_SOURCE_TOPIC,
                    value: Some(d.topic.as_str()),
                })
                .insert(Header {
                    key: codec::HEADER_SOURCE_PARTITION,
                    value: Some(partition.as_str()),
                })
                .insert(Header {
                    key: codec::HEADER_SOURCE_OFFSET,
                    value: Some(offset.as_str()),
                });
            let mut record = BaseRecord::<[u8], [u8]>::to(&self.dlq_topic).headers(headers);
            if let Some(k) = &d.key {
                record = record.key(&k[..]);
            }
            if let Some(v) = &d.payload {
                record = record.payload(&v[..]);
            }
            self.enqueue(record)?;
        }
        Ok(())
    }
}

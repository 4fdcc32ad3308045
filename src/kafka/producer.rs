//! The output sink: projections, level-up events and dead letters, delivered before
//! the store commits the batch that produced them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use tracing::warn;

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

/// Publishes a batch's outputs and waits until the broker acknowledged every one.
pub struct KafkaSink {
    /// Its own thread serves delivery reports as they arrive.
    producer: ThreadedProducer<DeliveryTracker>,
    /// To make a new producer after a fatal error.
    kafka: KafkaConfig,
    status: Option<Arc<Status>>,
    projections_topic: String,
    events_topic: String,
    dlq_topic: String,
}

/// How long a batch may wait for delivery before it is given up and replayed.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

impl KafkaSink {
    /// A producer with bounded queues, acks from all in-sync replicas and idempotence.
    pub fn new(kafka: &KafkaConfig, status: Option<Arc<Status>>) -> anyhow::Result<Self> {
        Ok(Self {
            producer: Self::producer(kafka, status.clone())?,
            status,
            kafka: kafka.clone(),
            projections_topic: kafka.projections_topic.clone(),
            events_topic: kafka.events_topic.clone(),
            dlq_topic: kafka.dlq_topic.clone(),
        })
    }

    fn producer(
        kafka: &KafkaConfig,
        status: Option<Arc<Status>>,
    ) -> anyhow::Result<ThreadedProducer<DeliveryTracker>> {
        let timeout_ms = DELIVERY_TIMEOUT.as_millis().to_string();
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
                ("message.timeout.ms", &timeout_ms),
                ("message.max.bytes", "2000000"),
            ],
        )
        .create_with_context(DeliveryTracker {
            status,
            brokers: kafka.brokers.clone(),
            ..DeliveryTracker::default()
        })
        .context("failed to create the Kafka producer")
    }

    /// After an idempotent producer's fatal error (its sequence state is lost, e.g. a
    /// broker forgot it), no send can succeed any more: a new producer takes over. The
    /// failed batch is replayed from the store, so nothing is lost or reordered.
    fn replace_if_fatal(&mut self) -> anyhow::Result<()> {
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            warn!(message = "The producer hit a fatal error; replacing it.", code = ?code, reason = %reason);
            self.producer = Self::producer(&self.kafka, self.status.clone())?;
        }
        Ok(())
    }

    fn enqueue(&self, mut record: BaseRecord<'_, [u8], [u8]>) -> anyhow::Result<()> {
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
                    return Err(e).context("failed to enqueue an output");
                }
            }
        }
    }
}

impl Sink for KafkaSink {
    fn send(&mut self, out: &Outputs) -> anyhow::Result<()> {
        for p in &out.projections {
            let value = codec::encode_projection(p);
            self.enqueue(
                BaseRecord::to(&self.projections_topic)
                    .key(p.user_id.as_bytes())
                    .payload(&value[..]),
            )?;
        }
        for l in &out.level_ups {
            let value = codec::encode_level_up(l);
            self.enqueue(
                BaseRecord::to(&self.events_topic)
                    .key(l.user_id.as_bytes())
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

    fn wait(&mut self) -> anyhow::Result<()> {
        let tracker = self.producer.context();
        // Not `flush`: rdkafka's `poll` and `flush` wait out their whole timeout (at least
        // 100 ms per batch), and short polls spin. The producer's own thread serves the
        // delivery reports; this only sleeps until none is outstanding.
        let deadline = Instant::now() + DELIVERY_TIMEOUT + Duration::from_secs(5);
        while tracker.outstanding.load(Ordering::Acquire) > 0 {
            anyhow::ensure!(
                Instant::now() < deadline,
                "outputs were not all delivered in time"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // Every send since the last wait is settled: failures count once.
        let failed = tracker.failed.swap(0, Ordering::Relaxed);
        if failed > 0 {
            let last = tracker
                .last_error
                .lock()
                .ok()
                .and_then(|l| l.clone())
                .unwrap_or_default();
            self.replace_if_fatal()?;
            anyhow::bail!("{failed} outputs failed to deliver (last error: {last})");
        }
        Ok(())
    }
}

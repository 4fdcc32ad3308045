//! Kafka adapters: the consumer loop of `mallquest run` (assignment seeks to the
//! offsets in the store), the producer sink for outputs and dead letters, and topic set-up.

mod consumer;
mod error;
mod members;
mod producer;
mod restore;
mod standby;

pub use consumer::{run, Start};
use error::Context as _;
pub use error::Error;
pub use producer::KafkaSink;

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use std::sync::atomic::{AtomicBool, Ordering};

use rdkafka::error::KafkaError;
use rdkafka::ClientContext;
use tracing::{info, warn};

use crate::config::KafkaConfig;
use crate::status::Status;
use crate::telemetry;

/// A client config with mallquest's defaults, then the operator's `[kafka.client]` settings.
pub fn client_config(kafka: &KafkaConfig, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers);
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in &kafka.client {
        c.set(k, v);
    }
    c
}

/// Remembers the client's last error reaching a broker.
#[derive(Default)]
struct ProbeContext {
    last_error: std::sync::Mutex<Option<String>>,
}

impl ClientContext for ProbeContext {
    fn error(&self, error: KafkaError, reason: &str) {
        telemetry::kafka_error(&format_args!("{error}: {reason}"));
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(reason.to_owned());
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ProbeContext {}

/// Waits until the brokers answer a metadata request, saying why not while they do not:
/// a log line naming the addresses and the client's error (within seconds, then at a
/// backing-off interval up to 30 s), `mallquest_broker_up 0`, and the cause on `/readyz`.
/// Returns `false` if asked to stop first.
pub fn wait_for_brokers(
    kafka: &KafkaConfig,
    status: &Status,
    shutdown: &AtomicBool,
) -> Result<bool, Error> {
    telemetry::broker_up(false);
    let probe: BaseConsumer<ProbeContext> = client_config(kafka, &[])
        .create_with_context(ProbeContext::default())
        .kafka(|| "failed to create the Kafka client".into())?;
    let mut backoff = Duration::from_secs(1);
    let mut attempts = 0u32;
    loop {
        match probe.fetch_metadata(Some(&kafka.receipts_topic), Duration::from_secs(2)) {
            Ok(_) => {
                telemetry::broker_up(true);
                status.broker_reachable();
                if attempts > 0 {
                    info!(message = "Reached the Kafka brokers.", brokers = %kafka.brokers, attempts);
                }
                return Ok(true);
            }
            Err(e) => {
                attempts += 1;
                // Serves the client's error callbacks, which carry the transport error
                // ("Connect to ipv4#127.0.0.1:9092 failed: Connection refused").
                let _ = probe.poll(Duration::from_millis(200));
                let detail = probe
                    .context()
                    .last_error
                    .lock()
                    .ok()
                    .and_then(|mut l| l.take())
                    .unwrap_or_else(|| e.to_string());
                let why = format!(
                    "cannot reach the Kafka brokers at {}: {detail}",
                    kafka.brokers
                );
                telemetry::broker_up(false);
                status.broker_unreachable(why);
                warn!(message = "Cannot reach the Kafka brokers; retrying.", brokers = %kafka.brokers, error = %detail, attempt = attempts, retry_in_s = backoff.as_secs());
                let until = std::time::Instant::now() + backoff;
                while std::time::Instant::now() < until {
                    if shutdown.load(Ordering::Relaxed) {
                        return Ok(false);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Creates the output topics if they are missing: the projections topic compacted,
/// with as many partitions as the receipts topic has (or 1 if it does not exist yet), and
/// the cluster's default replication factor (`default.replication.factor`; a factor of 1
/// on a cluster with `min.insync.replicas = 2` would refuse every `acks=all` write).
///
/// The changelog topic is compacted too, and must have as many partitions as the receipts
/// topic (its partition `p` holds the state of receipts partition `p`): it is created only
/// once the receipts topic exists, and an assignment refuses a partition it lacks.
pub async fn ensure_output_topics(kafka: &KafkaConfig) -> Result<(), Error> {
    let receipts = receipts_partitions(kafka);
    let partitions = receipts.unwrap_or(1).max(1);
    let changelog_topic = kafka.changelog_topic();
    let admin: AdminClient<DefaultClientContext> = client_config(kafka, &[])
        .create()
        .kafka(|| "failed to create the Kafka admin client".into())?;
    let members_topic = kafka.members_topic();
    let mut topics = vec![
        NewTopic::new(
            &kafka.projections_topic,
            partitions,
            TopicReplication::Fixed(-1),
        )
        .set("cleanup.policy", "compact"),
        NewTopic::new(&kafka.events_topic, partitions, TopicReplication::Fixed(-1)),
        NewTopic::new(&kafka.dlq_topic, partitions, TopicReplication::Fixed(-1)),
        NewTopic::new(&members_topic, 1, TopicReplication::Fixed(-1))
            .set("cleanup.policy", "compact"),
    ];
    if receipts.is_some() {
        topics.push(
            NewTopic::new(&changelog_topic, partitions, TopicReplication::Fixed(-1))
                .set("cleanup.policy", "compact"),
        );
    } else {
        warn!(message = "The receipts topic does not exist yet; the changelog topic will be created at the next start.", topic = %kafka.receipts_topic, changelog = %changelog_topic);
    }
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(topics.iter(), &opts)
        .await
        .kafka(|| "failed to create output topics".into())?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::Broker {
                    what: format!("failed to create topic {topic}"),
                    code,
                })
            }
        }
    }
    Ok(())
}

fn receipts_partitions(kafka: &KafkaConfig) -> Option<i32> {
    let consumer: BaseConsumer = client_config(kafka, &[]).create().ok()?;
    let n = partition_count(&consumer, &kafka.receipts_topic).ok()??;
    i32::try_from(n).ok()
}

/// Partitions of `topic`, from the cluster's metadata (`None`: it does not exist). A
/// topic the metadata names with another error (no leader yet, in a failover) is an
/// error, not a missing topic.
pub(crate) fn partition_count<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
) -> Result<Option<usize>, Error> {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .kafka(|| format!("failed to read the metadata of {topic}"))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    match t.error().map(RDKafkaErrorCode::from) {
        None => Ok(Some(t.partitions().len()).filter(|n| *n > 0)),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) => Ok(None),
        Some(code) => Err(Error::Broker {
            what: format!("the metadata of {topic}"),
            code,
        }),
    }
}

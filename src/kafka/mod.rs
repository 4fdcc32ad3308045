//! Kafka adapters: the consumer loop of `mallquest run` (assignment seeks to the
//! offsets in the store), the producer sink for outputs and dead letters, and topic set-up.

mod consumer;
mod producer;

pub use consumer::{run, Start};
pub use producer::KafkaSink;

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;

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

/// Creates the output topics if they are missing: the projections topic compacted,
/// with as many partitions as the receipts topic has (or 1 if it does not exist yet), and
/// the cluster's default replication factor (`default.replication.factor`; a factor of 1
/// on a cluster with `min.insync.replicas = 2` would refuse every `acks=all` write).
pub async fn ensure_output_topics(kafka: &KafkaConfig) -> anyhow::Result<()> {
    let partitions = receipts_partitions(kafka).unwrap_or(1).max(1);
    let admin: AdminClient<DefaultClientContext> = client_config(kafka, &[])
        .create()
        .context("failed to create the Kafka admin client")?;
    let topics = [
        NewTopic::new(
            &kafka.projections_topic,
            partitions,
            TopicReplication::Fixed(-1),
        )
        .set("cleanup.policy", "compact"),
        NewTopic::new(&kafka.events_topic, partitions, TopicReplication::Fixed(-1)),
        NewTopic::new(&kafka.dlq_topic, partitions, TopicReplication::Fixed(-1)),
    ];
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(topics.iter(), &opts)
        .await
        .context("failed to create output topics")?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("failed to create topic {topic}: {code}"),
        }
    }
    Ok(())
}

fn receipts_partitions(kafka: &KafkaConfig) -> Option<i32> {
    let consumer: BaseConsumer = client_config(kafka, &[]).create().ok()?;
    let md = consumer
        .fetch_metadata(Some(&kafka.receipts_topic), Duration::from_secs(5))
        .ok()?;
    let n = md.topics().first()?.partitions().len();
    (n > 0).then_some(n as i32)
}

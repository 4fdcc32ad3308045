//! The membership topic: each instance announces its query API's address and the
//! partitions it holds, on every assignment and revocation, to a compacted topic keyed by
//! instance; every instance tails it, so that any of them can forward a query to the
//! owner of a user's partition and gather leaderboards from all owners.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::warn;

use super::error::{Context as _, Error};
use crate::config::KafkaConfig;
use crate::status::{Member, Status};
use crate::telemetry;

/// Publishes this instance's announcements.
pub(super) struct Announcer {
    producer: BaseProducer,
    topic: String,
    me: Member,
}

impl Announcer {
    pub(super) fn new(kafka: &KafkaConfig, name: &str, http: &str) -> Result<Self, Error> {
        let producer = super::client_config(kafka, &[("linger.ms", "0"), ("acks", "all")])
            .create()
            .kafka(|| "failed to create the membership producer".into())?;
        Ok(Self {
            producer,
            topic: kafka.members_topic(),
            me: Member {
                member: name.to_owned(),
                http: http.to_owned(),
                partitions: Vec::new(),
            },
        })
    }

    /// Announces the partitions held now (waits at most 2 s: an announcement is advice
    /// for query routing, never needed for correctness).
    pub(super) fn announce(&self, partitions: &[i32]) {
        let mut me = self.me.clone();
        me.partitions = partitions.to_vec();
        me.partitions.sort_unstable();
        let value = serde_json::to_vec(&me).unwrap_or_default();
        let record = BaseRecord::to(&self.topic)
            .key(me.member.as_bytes())
            .payload(&value[..]);
        if let Err((e, _)) = self.producer.send(record) {
            warn!(message = "Could not announce this instance's partitions.", error = %e);
            return;
        }
        if let Err(e) = self.producer.flush(Duration::from_secs(2)) {
            telemetry::kafka_error(&format_args!("membership announcement: {e}"));
        }
    }
}

/// Tails the membership topic into `status` until `stop` is set.
pub(super) fn tail(kafka: &KafkaConfig, status: Arc<Status>, stop: Arc<AtomicBool>) {
    let topic = kafka.members_topic();
    let consumer: BaseConsumer = match super::client_config(
        kafka,
        &[
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "earliest"),
            ("group.id", "mallquest-members"),
        ],
    )
    .create()
    {
        Ok(c) => c,
        Err(e) => {
            warn!(message = "Cannot read the membership topic; queries are answered locally only.", error = %e);
            return;
        }
    };
    let mut tpl = TopicPartitionList::new();
    if let Err(e) = tpl
        .add_partition_offset(&topic, 0, Offset::Beginning)
        .and_then(|()| consumer.assign(&tpl))
    {
        warn!(message = "Cannot read the membership topic; queries are answered locally only.", error = %e);
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(250)) {
            Some(Ok(m)) => match m.payload().map(serde_json::from_slice::<Member>) {
                Some(Ok(member)) => status.member(member),
                Some(Err(e)) => {
                    warn!(message = "Ignoring a malformed membership record.", offset = m.offset(), error = %e)
                }
                None => {}
            },
            Some(Err(e)) => telemetry::kafka_error(&format_args!("membership reader: {e}")),
            None => {}
        }
    }
}

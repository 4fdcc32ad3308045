//! `mallquest simulate`: the POS simulator publishing to Kafka at a steady rate.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::sim::{Mix, Simulator};

/// What to publish.
#[derive(Debug, Clone)]
pub struct SimulateOptions {
    /// Bootstrap brokers.
    pub brokers: String,
    /// Target topic.
    pub topic: String,
    /// Receipts per second; 0 = as fast as the broker takes them.
    pub rate: u64,
    /// Receipts to publish.
    pub count: u64,
    /// Distinct shoppers.
    pub users: u64,
    /// Stores.
    pub stores: u32,
    /// Seed.
    pub seed: u64,
    /// Shares of refunds, duplicates and bad events.
    pub mix: Mix,
}

/// Publishes and returns (receipts sent, seconds taken).
pub fn run(opts: &SimulateOptions) -> anyhow::Result<(u64, f64)> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &opts.brokers)
        .set("linger.ms", "10")
        // Bounded: a flood of queued messages drives small brokers into timeouts.
        .set("queue.buffering.max.messages", "50000")
        .create()
        .context("failed to create the producer")?;
    let mut sim = Simulator::new(opts.seed, opts.users, opts.stores, opts.mix);
    let started = Instant::now();
    let mut last_report = Instant::now();
    for i in 0..opts.count {
        if opts.rate > 0 {
            let due = started + Duration::from_secs_f64(i as f64 / opts.rate as f64);
            let now = Instant::now();
            if due > now {
                producer.poll(due - now);
            }
        }
        let e = sim.next_event();
        let mut record = BaseRecord::to(&opts.topic).key(&e.key).payload(&e.payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(e).context("failed to enqueue a receipt"),
            }
        }
        producer.poll(Duration::ZERO);
        if last_report.elapsed() >= Duration::from_secs(5) {
            let secs = started.elapsed().as_secs_f64();
            eprintln!("{} receipts, {:.0}/s", i + 1, (i + 1) as f64 / secs);
            last_report = Instant::now();
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .context("not every receipt was delivered")?;
    Ok((opts.count, started.elapsed().as_secs_f64()))
}

//! The drain benchmark's ceiling: a plain rdkafka consumer that reads every record of a
//! topic from the beginning and does nothing else. Prints the wall time.
//!
//! Usage: cargo run --release --example plain_consume -- BROKERS TOPIC RECORDS

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, brokers, topic, records] = args.as_slice() else {
        anyhow::bail!("usage: plain_consume BROKERS TOPIC RECORDS");
    };
    let want: u64 = records.parse()?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "plain-consume-bench")
        .set("enable.auto.commit", "false")
        .create()?;
    let started = Instant::now();
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    let (mut n, mut bytes) = (0u64, 0u64);
    while n < want {
        if let Some(m) = consumer.poll(Duration::from_secs(1)) {
            let m = m?;
            bytes += rdkafka::Message::payload(&m).map_or(0, <[u8]>::len) as u64;
            n += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "plain: read {n} records ({bytes} payload bytes) in {secs:.2} s = {:.0} records/s",
        n as f64 / secs
    );
    Ok(())
}

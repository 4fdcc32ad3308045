//! Event-to-projection latency: publishes purchases stamped with the current time at a
//! fixed rate, each for a new shopper, while reading the projections topic; for every
//! projection, latency = time it was read - its `last_receipt_at` (the receipt's
//! `issued_at`). Prints p50/p90/p99/max. Run against a running `mallquest run`.
//! The same reader also reads the receipts back from their own topic: that is the
//! broker's floor (produce, append, fetch) without mallquest in between.
//!
//! Usage: cargo run --release --example latency -- BROKERS RATE SECONDS

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, brokers, rate, secs] = args.as_slice() else {
        anyhow::bail!("usage: latency BROKERS RATE SECONDS");
    };
    let (rate, secs): (u64, u64) = (rate.parse()?, secs.parse()?);
    let total = rate * secs;

    // Read projections from their current end, with short fetch waits.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "latency-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for topic in ["user-projections", "receipts"] {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        for t in md.topics() {
            for p in t.partitions() {
                let (_, high) =
                    consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
                tpl.add_partition_offset(topic, p.id(), Offset::Offset(high))?;
            }
        }
    }
    consumer.assign(&tpl)?;

    let reader = std::thread::spawn(move || -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
        let mut latencies = Vec::with_capacity(total as usize);
        let mut floor = Vec::with_capacity(total as usize);
        let deadline = Instant::now() + Duration::from_secs(secs + 60);
        while (latencies.len() as u64) < total && Instant::now() < deadline {
            let Some(m) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let m = m?;
            let read_at = chrono::Utc::now();
            let key = m.key().map(String::from_utf8_lossy).unwrap_or_default();
            if !key.starts_with("lat-") {
                continue;
            }
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
            let field = if m.topic() == "receipts" {
                "issued_at"
            } else {
                "last_receipt_at"
            };
            let issued =
                chrono::DateTime::parse_from_rfc3339(v[field].as_str().unwrap_or_default())?;
            let ms = (read_at - issued.with_timezone(&chrono::Utc))
                .num_microseconds()
                .unwrap_or(0) as f64
                / 1000.0;
            if m.topic() == "receipts" {
                floor.push(ms);
            } else {
                latencies.push(ms);
            }
        }
        Ok((latencies, floor))
    });

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "1")
        .create()?;
    let run = format!("{}", std::process::id());
    let started = Instant::now();
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            producer.poll(wait);
        }
        let user = format!("lat-{run}-{i}");
        let value = serde_json::json!({
            "receipt_id": format!("r-{i}"),
            "user_id": user,
            "store_id": "s-001",
            "amount": "12.34",
            "issued_at": now_rfc3339(),
        })
        .to_string();
        let mut record = Some(BaseRecord::to("receipts").key(&user).payload(&value));
        while let Some(r) = record.take() {
            if let Err((_, r)) = producer.send(r) {
                producer.poll(Duration::from_millis(1));
                record = Some(r);
            }
        }
    }
    producer.flush(Duration::from_secs(30))?;
    let (lat, floor) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    anyhow::ensure!(!lat.is_empty(), "no projection read");
    for (what, mut v) in [
        ("receipt -> projection", lat),
        ("broker floor (receipt -> receipt)", floor),
    ] {
        if v.is_empty() {
            continue;
        }
        v.sort_by(f64::total_cmp);
        let q = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
        println!(
            "{what}: {} of {total} at {rate}/s: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            v.len(),
            q(0.50),
            q(0.90),
            q(0.99),
            v[v.len() - 1]
        );
    }
    Ok(())
}

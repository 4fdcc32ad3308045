//! Faults on a real Apache Kafka broker: the broker goes away for 30 s mid-stream and comes
//! back on the same data; the group's offsets disagree with the store; SIGTERM as the
//! broker goes away. The processor waits without spinning, resumes, and loses nothing.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mallquest::sim::{Mix, Simulator};
use serde_json::Value;
use support::broker::Broker;
use support::outputs::{dlq_reasons, stored_projections};
use support::processor::{write_config, Run};
use support::reference;
use support::streams::{last_per_key, reference_of, take};

fn expected_for(broker: &Broker) -> reference::Expected {
    reference_of(&broker.read_all("receipts"))
}

fn wait_for(broker: &Broker, run: &mut Run, expected: &BTreeMap<String, Value>, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if &last_per_key(&broker.read_all("user-projections")) == expected {
            return;
        }
        assert!(run.is_running(), "mallquest exited\n{}", run.log());
        assert!(
            Instant::now() < deadline,
            "projections not complete after {within:?}\n{}",
            run.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A broker with `n` simulated receipts on a `partitions`-partition topic, folded by a
/// running processor until its projections equal the reference fold.
struct Folded {
    broker: Broker,
    sim: Simulator,
    run: Run,
    http: String,
    _dir: tempfile::TempDir,
}

fn folded(partitions: i32, seed: u64, users: u64, n: usize) -> Folded {
    let broker = Broker::start();
    broker.create_topic("receipts", partitions, false);
    let mut sim = Simulator::new(seed, users, 10, Mix::default());
    broker.produce("receipts", &take(&mut sim, n));
    let dir = tempfile::tempdir().unwrap();
    let (config, store, http) = write_config(dir.path(), &broker.bootstrap(), "");
    let mut run = Run::new(config, store);
    run.start();
    wait_for(
        &broker,
        &mut run,
        &expected_for(&broker).projections,
        Duration::from_secs(120),
    );
    Folded {
        broker,
        sim,
        run,
        http,
        _dir: dir,
    }
}

fn metric_value(http: &str, name: &str) -> Option<f64> {
    let text = String::from_utf8(support::http::get(http, "/metrics").ok()?.body).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn broker_outage_of_30_s_mid_stream_loses_nothing_and_does_not_spin() {
    let Folded {
        mut broker,
        mut sim,
        mut run,
        http,
        _dir,
    } = folded(2, 3, 300, 10_000);
    assert_eq!(metric_value(&http, "mallquest_broker_up"), Some(1.0));

    // Receipts keep arriving at 500/s (the POS buffers them while the broker is away)
    // and outputs are being published when the broker goes away.
    let records = take(&mut sim, 20_000);
    let producer = broker.client().produce_at_rate("receipts", records, 500);
    let deadline = Instant::now() + Duration::from_secs(30);
    let folded_before = receipts_counted(&http);
    while receipts_counted(&http) < folded_before + 1_000 {
        assert!(Instant::now() < deadline, "not folding\n{}", run.log());
        std::thread::sleep(Duration::from_millis(50));
    }

    // The broker goes away for 30 s.
    broker.stop();
    let cpu_before = run.cpu_seconds();
    let mut saw_down = false;
    let mut not_ready = None;
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(30) {
        if !saw_down && metric_value(&http, "mallquest_broker_up") == Some(0.0) {
            saw_down = true;
        }
        if not_ready.is_none() {
            let r = support::http::get(&http, "/readyz").unwrap();
            if r.status == 503 {
                not_ready = Some(String::from_utf8(r.body).unwrap());
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let cpu_during = run.cpu_seconds() - cpu_before;
    assert!(
        run.is_running(),
        "the processor must wait for the broker\n{}",
        run.log()
    );
    assert!(
        cpu_during < 3.0,
        "{cpu_during:.2} CPU-seconds in a 30 s outage: busy loop?"
    );
    // It says so in logs, metrics (the gauge changed from 1 to 0) and /readyz.
    assert!(run.log().contains("Kafka client error"), "{}", run.log());
    assert!(
        saw_down,
        "mallquest_broker_up never went to 0 in the outage"
    );
    let not_ready = not_ready.expect("/readyz stayed 200 through a 30 s outage");
    assert!(
        not_ready.contains("cannot reach the Kafka brokers") || not_ready.contains("failed"),
        "{not_ready}"
    );

    // It comes back on the same data; every receipt is folded once.
    broker.restart();
    producer.join().unwrap();
    let receipts = broker.read_all("receipts");
    assert_eq!(receipts.len(), 30_000);
    let expected = reference_of(&receipts);
    wait_for(
        &broker,
        &mut run,
        &expected.projections,
        Duration::from_secs(180),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while support::http::get(&http, "/readyz").map(|r| r.status).ok() != Some(200) {
        assert!(Instant::now() < deadline, "not ready again\n{}", run.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(metric_value(&http, "mallquest_broker_up"), Some(1.0));
    assert!(
        run.terminate(Duration::from_secs(30)).success(),
        "{}",
        run.log()
    );
    let stored = stored_projections(&run.store);
    assert_eq!(stored, expected.projections, "store vs the reference fold");
    let dlq = dlq_reasons(&broker.read_all("receipts-dlq"));
    assert_eq!(dlq, expected.dlq, "DLQ vs the reference fold");
    assert_eq!(
        support::outputs::level_ups(&broker.read_all("gamification-events")),
        expected.level_ups
    );
    eprintln!("outage: {cpu_during:.2} CPU-seconds in 30 s; /readyz said: {not_ready}");
}

/// Commits offsets for the test group from outside, as a confused operator or tool would.
fn force_group_offsets(broker: &Broker, offsets: &[(i32, i64)]) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "mq-test")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for (p, o) in offsets {
        tpl.add_partition_offset("receipts", *p, Offset::Offset(*o))
            .unwrap();
    }
    consumer.commit(&tpl, CommitMode::Sync).unwrap();
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    for e in got.elements() {
        assert_eq!(
            e.offset(),
            Offset::Offset(offsets.iter().find(|(p, _)| *p == e.partition()).unwrap().1)
        );
    }
}

/// The store's next offset per receipts partition (the process must be stopped).
fn store_offsets(store: &std::path::Path) -> Vec<(i32, Option<i64>)> {
    let store = mallquest::store::Store::open(store).unwrap();
    (0..2)
        .map(|p| (p, store.offset("receipts", p).unwrap()))
        .collect()
}

/// The positions the last start of `run` took, from its "Partitions assigned" line.
fn last_assignment(run: &Run) -> Vec<(i32, Option<i64>)> {
    let log = run.log();
    // Cooperative rebalancing may log later assignments that add nothing.
    let line = log
        .lines()
        .rfind(|l| l.contains("Partitions assigned.") && !l.contains("partitions=[]"))
        .expect("no assignment logged");
    let re = regex::Regex::new(r"\((\d+), (None|Some\((\d+)\))\)").unwrap();
    let mut got: Vec<(i32, Option<i64>)> = re
        .captures_iter(line)
        .map(|c| {
            (
                c[1].parse().unwrap(),
                c.get(3).map(|o| o.as_str().parse().unwrap()),
            )
        })
        .collect();
    got.sort();
    got
}

/// Receipts this process counted (`mallquest_receipts_total`, every outcome).
fn receipts_counted(http: &str) -> u64 {
    let text = String::from_utf8(support::http::get(http, "/metrics").unwrap().body).unwrap();
    text.lines()
        .filter(|l| l.starts_with("mallquest_receipts_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}

#[test]
fn group_offsets_ahead_of_or_behind_the_store_are_ignored() {
    let Folded {
        broker,
        mut sim,
        mut run,
        http,
        _dir,
    } = folded(2, 8, 200, 5_000);
    let mut batch = |n: usize| take(&mut sim, n);
    assert!(run.terminate(Duration::from_secs(30)).success());

    // Ahead: the group claims everything up to far past the end was read. Behind: the
    // group claims nothing was read; replaying from 0 would double count. Either way the
    // consumer must take the store's positions and count exactly the new receipts.
    for forced in [1_000_000, 0] {
        force_group_offsets(&broker, &[(0, forced), (1, forced)]);
        let stored = store_offsets(&run.store);
        assert!(stored.iter().all(|(_, o)| o.is_some_and(|o| o > 0)));
        broker.produce("receipts", &batch(5_000));
        let before = run.log().matches("Partitions assigned.").count();
        run.start();
        let expected = expected_for(&broker);
        wait_for(
            &broker,
            &mut run,
            &expected.projections,
            Duration::from_secs(120),
        );
        assert_eq!(
            run.log().matches("Partitions assigned.").count(),
            before + 1
        );
        assert_eq!(
            last_assignment(&run),
            stored,
            "the consumer did not resume at the store's offsets (group said {forced})"
        );
        // Every new receipt folded once; none of the old ones again.
        let deadline = Instant::now() + Duration::from_secs(30);
        while receipts_counted(&http) < 5_000 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(receipts_counted(&http), 5_000, "group said {forced}");
        assert!(run.terminate(Duration::from_secs(30)).success());
        let stored = stored_projections(&run.store);
        assert_eq!(stored, expected.projections);
    }
}

// SIGTERM as the broker goes away mid-stream: the process exits (the batch in hand cannot
// be published, so it is replayed) and a restart completes the stream exactly. Once, in
// scripts/bench-api.sh, such a process hung in BaseConsumer::drop (librdkafka's close
// waiting for the coordinator); that was not reproduced here, and close is now bounded.
#[test]
fn sigterm_as_the_broker_goes_away_mid_stream_still_exits_and_loses_nothing() {
    let mut broker = Broker::start();
    broker.create_topic("receipts", 3, false);
    let mut sim = Simulator::new(4, 500, 5, Mix::default());
    let records = take(&mut sim, 40_000);
    broker.produce("receipts", &records);
    let dir = tempfile::tempdir().unwrap();
    let (config, store, _) = write_config(dir.path(), &broker.bootstrap(), "");
    let mut run = Run::new(config, store);
    run.start();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run.log().contains("Partitions assigned") {
        assert!(Instant::now() < deadline, "{}", run.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    // Both at once, while it folds.
    broker.stop();
    let _ = run.terminate(Duration::from_secs(90));
    // Whatever the exit status, the restart completes the stream exactly.
    broker.restart();
    run.start();
    wait_for(
        &broker,
        &mut run,
        &expected_for(&broker).projections,
        Duration::from_secs(180),
    );
    assert!(
        run.terminate(Duration::from_secs(30)).success(),
        "{}",
        run.log()
    );
}

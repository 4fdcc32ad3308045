//! Replica faults on a three-node Apache Kafka cluster (replication factor 3,
//! `min.insync.replicas = 2`), while receipts arrive and outputs are published: the leader
//! of a receipts partition and the leader of a projections partition are killed (-9) and
//! brought back, then one broker is stopped for 30 s. Nothing is lost, nothing counted
//! twice, every output is complete, the last projection per user on the compacted topic
//! equals the store (the idempotent producer's retries cannot reorder them), and `/readyz`
//! and the metrics say what happened.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mallquest::sim::{Mix, Simulator};
use support::broker::Cluster;
use support::outputs::{dlq_reasons, stored_projections};
use support::processor::{write_config, Run};
use support::streams::{last_per_key, reference_of, take};

fn metric(http: &str, name: &str) -> f64 {
    let text = String::from_utf8(support::http::get(http, "/metrics").unwrap().body).unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

fn total(offsets: &BTreeMap<i32, i64>) -> i64 {
    offsets.values().sum()
}

/// Waits until the served offsets advance past `from` (commits go on), within `within`.
fn wait_for_progress(http: &str, run: &mut Run, from: i64, within: Duration, what: &str) {
    let started = Instant::now();
    let deadline = started + within;
    while total(&support::http::served_offsets(http)) <= from {
        assert!(run.is_running(), "mallquest exited ({what})\n{}", run.log());
        assert!(
            Instant::now() < deadline,
            "no commit within {within:?} {what}\n{}",
            run.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("commits went on {:?} {what}", started.elapsed());
}

/// The `__consumer_offsets` partition of a group, as Kafka picks it:
/// `abs(groupId.hashCode()) % partitions`, with Java's `String.hashCode`.
fn group_partition(group: &str, partitions: i32) -> i32 {
    let h = group
        .encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
    // Kafka's Utils.abs: `n & 0x7fffffff`.
    (h & 0x7fff_ffff) % partitions
}

#[test]
fn leader_kills_and_a_broker_down_for_30_s_lose_nothing_and_reorder_nothing() {
    const PARTITIONS: i32 = 3;
    const N: usize = 45_000;
    let mut cluster = Cluster::start();
    let client = cluster.client();
    client.create_topic("receipts", PARTITIONS, false);

    // Receipts at a steady 180/s for 250 s, through every fault below (about 190 s of them).
    let mut sim = Simulator::new(31, 400, 10, Mix::default());
    let records = take(&mut sim, N);
    let producer = client.produce_at_rate("receipts", records, 180);
    // Whether receipts were still arriving as each fault began.
    let mut mid_stream = Vec::new();

    let dir = tempfile::tempdir().unwrap();
    let (config, store, http) = write_config(dir.path(), &cluster.bootstrap(), "");
    let mut run = Run::new(config, store.clone());
    run.start();
    wait_for_progress(&http, &mut run, 0, Duration::from_secs(60), "at start");
    assert_eq!(
        client.min_isr_of("user-projections"),
        3,
        "mallquest's output topics take the cluster's replication factor"
    );

    // 0. The group coordinator's broker dies (-9) and comes back: the offsets each
    // transaction carries go to the group coordinator, and librdkafka can block for good
    // on one that left the cluster's metadata (librdkafka issue 5511); mallquest replaces
    // the producer and goes on.
    let victim = cluster.leader_of("__consumer_offsets", group_partition("mq-test", 4));
    let at = total(&support::http::served_offsets(&http));
    mid_stream.push(!producer.is_finished());
    cluster.kill(victim);
    eprintln!("killed node {} (the group coordinator)", victim + 1);
    wait_for_progress(
        &http,
        &mut run,
        at,
        Duration::from_secs(90),
        "after the group coordinator died",
    );
    cluster.restart(victim);
    cluster.wait_in_sync("receipts", Duration::from_secs(60));
    cluster.wait_all_in_sync(Duration::from_secs(90));

    // 1. The leader of receipts/0 dies (-9) and comes back.
    let errors_before = metric(&http, "mallquest_kafka_errors_total");
    let victim = cluster.leader_of("receipts", 0);
    let at = total(&support::http::served_offsets(&http));
    mid_stream.push(!producer.is_finished());
    cluster.kill(victim);
    eprintln!("killed node {} (leader of receipts/0)", victim + 1);
    wait_for_progress(
        &http,
        &mut run,
        at,
        Duration::from_secs(90),
        "after the receipts leader died",
    );
    std::thread::sleep(Duration::from_secs(3));
    cluster.restart(victim);
    cluster.wait_in_sync("receipts", Duration::from_secs(60));
    cluster.wait_all_in_sync(Duration::from_secs(90));
    assert!(
        metric(&http, "mallquest_kafka_errors_total") > errors_before,
        "the lost connection is not counted in mallquest_kafka_errors_total"
    );

    // 2. The leader of user-projections/0 dies (-9) while outputs are published: produce
    // requests in flight to it fail and are retried against the new leader.
    let victim = cluster.leader_of("user-projections", 0);
    let at = total(&support::http::served_offsets(&http));
    mid_stream.push(!producer.is_finished());
    cluster.kill(victim);
    eprintln!("killed node {} (leader of user-projections/0)", victim + 1);
    wait_for_progress(
        &http,
        &mut run,
        at,
        Duration::from_secs(60),
        "after the projections leader died",
    );
    cluster.restart(victim);
    cluster.wait_in_sync("user-projections", Duration::from_secs(60));
    // Every topic, before the next node goes: one still catching up on the node just
    // restarted would be left below min.insync.replicas and refuse the outputs.
    cluster.wait_all_in_sync(Duration::from_secs(90));

    // 3. One broker stopped for 30 s: two in-sync replicas remain, so commits go on all
    // along, and the processor stays ready. Not the group coordinator's: losing it stalls
    // the transactions' offset commits for 10 to 25 s (step 0 covers that).
    let coordinator = cluster.leader_of("__consumer_offsets", group_partition("mq-test", 4));
    let victim = [(victim + 1) % 3, (victim + 2) % 3]
        .into_iter()
        .find(|v| *v != coordinator)
        .unwrap();
    let at = total(&support::http::served_offsets(&http));
    mid_stream.push(!producer.is_finished());
    cluster.kill(victim);
    eprintln!("stopped node {} for 30 s", victim + 1);
    let down = Instant::now();
    wait_for_progress(
        &http,
        &mut run,
        at,
        Duration::from_secs(30),
        "with one broker down",
    );
    std::thread::sleep(Duration::from_secs(30).saturating_sub(down.elapsed()));
    let ready = support::http::get(&http, "/readyz").unwrap();
    assert_eq!(
        ready.status,
        200,
        "two of three brokers serve everything: {}",
        String::from_utf8_lossy(&ready.body)
    );
    assert_eq!(metric(&http, "mallquest_broker_up"), 1.0);
    cluster.restart(victim);

    let still_producing = !producer.is_finished();
    producer.join().unwrap();
    assert!(
        still_producing,
        "the receipts all arrived before the faults ended"
    );
    let receipts = client.read_all("receipts");
    assert_eq!(receipts.len(), N, "the cluster lost receipts");
    let expected = reference_of(&receipts);

    // The store catches up to the end of every partition.
    let ends: BTreeMap<i32, i64> = (0..PARTITIONS)
        .map(|p| {
            (
                p,
                receipts.iter().filter(|r| r.partition == p).count() as i64,
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while support::http::served_offsets(&http) != ends {
        assert!(run.is_running(), "exited\n{}", run.log());
        assert!(
            Instant::now() < deadline,
            "store offsets {:?}, want {ends:?}\n{}",
            support::http::served_offsets(&http),
            run.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(metric(&http, "mallquest_receipts_total") as usize, N);
    assert!(
        run.terminate(Duration::from_secs(30)).success(),
        "{}",
        run.log()
    );

    let stored = stored_projections(&store);
    assert_eq!(stored, expected.projections, "store vs the reference fold");
    // The last projection per user on the topic is the stored one: no retried produce
    // request landed an older projection after a newer one.
    assert_eq!(
        last_per_key(&client.read_all("user-projections")),
        stored,
        "topic vs store"
    );
    let dlq = dlq_reasons(&client.read_all("receipts-dlq"));
    assert_eq!(dlq, expected.dlq, "DLQ vs the reference fold");
    assert_eq!(
        support::outputs::level_ups(&client.read_all("gamification-events")),
        expected.level_ups,
        "level-ups vs the reference fold"
    );
}

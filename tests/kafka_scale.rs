//! Several `mallquest run` instances on one group against a real Apache Kafka broker:
//! partitions move between them (kill -9, a new instance, a restart without its disk, a
//! paused zombie, a planned stop) while receipts flow, and every partition's state moves
//! with it through the changelog. At the end the topic and every store's owned partitions
//! equal the reference fold, and a `read_committed` reader never sees a user's version
//! go down.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mallquest::codec::ProjectionJson;
use mallquest::sim::{Mix, Simulator};
use mallquest::store::Store;
use serde_json::Value;
use support::broker::{Broker, Read};
use support::outputs::{dlq_reasons, stored_projections};
use support::processor::{write_config_with, Run};
use support::streams::{last_per_key, reference_of, take};

const PARTITIONS: i32 = 6;

struct Instance {
    name: String,
    dir: tempfile::TempDir,
    run: Run,
    http: String,
}

impl Instance {
    /// An instance of the test group `mq-test`, with static membership under `name`.
    fn new(broker: &Broker, name: &str) -> Instance {
        Instance::start(broker, name, "mq-test", true, 50)
    }

    /// Like [`Instance::new`], keeping `standbys` warm copies of each partition
    /// (`[processing] standby_replicas`).
    fn with_standbys(broker: &Broker, name: &str, standbys: u32) -> Instance {
        Instance::start_with(broker, name, "mq-test", true, 50, standbys)
    }

    /// A sample of this instance's `/metrics` (0 when it does not answer).
    fn metric(&self, name: &str) -> f64 {
        support::http::get(&self.http, "/metrics")
            .ok()
            .and_then(|r| String::from_utf8(r.body).ok())
            .map_or(0.0, |m| support::prometheus::sample(&m, name))
    }

    /// `mallquest run` as `name` in consumer group `group` (static membership if
    /// `static_id`), committing every `commit_interval_ms`, on a store of its own.
    fn start(
        broker: &Broker,
        name: &str,
        group: &str,
        static_id: bool,
        commit_interval_ms: u64,
    ) -> Instance {
        Instance::start_with(broker, name, group, static_id, commit_interval_ms, 0)
    }

    /// Like [`Instance::start`], with `standbys` warm copies of each partition.
    fn start_with(
        broker: &Broker,
        name: &str,
        group: &str,
        static_id: bool,
        commit_interval_ms: u64,
        standbys: u32,
    ) -> Instance {
        let dir = tempfile::tempdir().unwrap();
        let mut kafka_extra = if static_id {
            format!("instance_id = \"{name}\"\n")
        } else {
            String::new()
        };
        // Measurements only: extra `[kafka]` lines, for example
        // `client = { "heartbeat.interval.ms" = "300" }`.
        kafka_extra.push_str(&std::env::var("MALLQUEST_BENCH_KAFKA").unwrap_or_default());
        let (config, store, http) =
            write_config_with(dir.path(), &broker.bootstrap(), &kafka_extra, "", "");
        let text =
            std::fs::read_to_string(&config)
                .unwrap()
                .replace("group_id = \"mq-test\"", &format!("group_id = \"{group}\""))
                .replace(
                    "commit_interval_ms = 50",
                    &format!(
                    "commit_interval_ms = {commit_interval_ms}\nstandby_replicas = {standbys}\n\
                     idle_commit_ms = {}",
                    // A minute's interval means "only a revocation or a stop commits".
                    if commit_interval_ms >= 60_000 { 0 } else { 25.min(commit_interval_ms) }
                ),
                );
        std::fs::write(&config, text).unwrap();
        let mut run = Run::new(config, store);
        run.start();
        Instance {
            name: name.to_owned(),
            dir,
            run,
            http,
        }
    }

    /// The partitions this instance holds, by its last "Partitions assigned." or
    /// "Partitions revoked." line (each names every partition held after it).
    fn owned(&self) -> BTreeSet<i32> {
        let log = self.run.log();
        let Some(last) = log
            .lines()
            .rfind(|l| l.contains("Partitions assigned.") || l.contains("Partitions revoked."))
        else {
            return BTreeSet::new();
        };
        let re = regex::Regex::new(r"held=\[([0-9, ]*)\]").unwrap();
        let held = re.captures(last).expect("a held= field")[1].to_owned();
        held.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| p.trim().parse().unwrap())
            .collect()
    }
}

/// Waits until the running instances hold every partition between them, each once.
fn wait_all_owned(instances: &mut [Instance], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let mut all = Vec::new();
        for i in instances.iter_mut() {
            if let Some(status) = i.run.exited() {
                panic!("{} exited by itself: {status}\n{}", i.name, i.run.log());
            }
            if i.run.is_running() {
                all.extend(i.owned());
            }
        }
        all.sort_unstable();
        if all == (0..PARTITIONS).collect::<Vec<_>>() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "partitions held {all:?} after {within:?}\n{}",
            logs(instances)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the two instances of `pair` hold every partition between them and each
/// holds some (not one holding all before the other joined).
fn wait_both_hold(pair: &mut [Instance], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        wait_all_owned(pair, within);
        if !pair[0].owned().is_empty() && !pair[1].owned().is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{}", logs(pair));
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn logs(instances: &[Instance]) -> String {
    instances
        .iter()
        .map(|i| format!("==== {} ====\n{}", i.name, i.run.log()))
        .collect()
}

/// Every (user, version) pair in the order a reader of each partition sees them, and
/// the first pair whose version is lower than the one before it.
fn first_version_decrease(reads: &[Read]) -> Option<(String, u64, u64)> {
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut ordered: Vec<&Read> = reads.iter().collect();
    ordered.sort_by_key(|r| (r.partition, r.offset));
    for r in ordered {
        let (Some(k), Some(v)) = (&r.key, &r.value) else {
            continue;
        };
        let user = String::from_utf8_lossy(k).into_owned();
        let version = serde_json::from_slice::<Value>(v).unwrap()["version"]
            .as_u64()
            .unwrap();
        if let Some(before) = last.insert(user.clone(), version) {
            if version < before {
                return Some((user, before, version));
            }
        }
    }
    None
}

#[test]
fn partitions_move_between_three_instances_and_every_state_moves_with_them_exactly() {
    let broker = Broker::start();
    broker.create_topic("receipts", PARTITIONS, false);
    let mix = Mix {
        refunds: 80,
        duplicates: 40,
        bad: 20,
        redemptions: 0,
    };
    // scripts/soak.sh repeats the moves (scripts/test.sh unsets this: one round).
    let rounds: usize = std::env::var("MALLQUEST_SCALE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let n = 12_000 * rounds;
    let records = take(&mut Simulator::new(21, 600, 20, mix), n);
    let users: Vec<String> = records
        .iter()
        .filter_map(|(k, _)| k.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // About a minute of receipts: they flow through every move below.
    let producer = broker.client().produce_at_rate("receipts", records, 200);

    let mut instances: Vec<Instance> = ["mq-a", "mq-b", "mq-c"]
        .iter()
        .map(|name| Instance::new(&broker, name))
        .collect();
    wait_all_owned(&mut instances, Duration::from_secs(90));
    let moves = Duration::from_secs(90);
    // Queries to every instance all through the moves.
    let addrs = Arc::new(Mutex::new(
        instances.iter().map(|i| i.http.clone()).collect::<Vec<_>>(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let queries = {
        let (addrs, stop, users) = (Arc::clone(&addrs), Arc::clone(&stop), users.clone());
        std::thread::spawn(move || query_during_moves(&addrs, &users, &stop))
    };

    // Every partition has folded state before the moves begin, so that the instance added
    // below is given state to restore whichever partitions it gets.
    let deadline = Instant::now() + moves;
    while committed(&broker, "mq-test", "receipts", PARTITIONS).contains(&0) {
        assert!(
            Instant::now() < deadline,
            "not folded\n{}",
            logs(&instances)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // kill -9 one, restarted at once with its store.
    instances[0].run.kill();
    std::thread::sleep(Duration::from_secs(2));
    instances[0].run.start();
    wait_all_owned(&mut instances, moves);

    // A new instance, with an empty store, joins: it restores what it is given.
    instances.push(Instance::new(&broker, "mq-d"));
    addrs.lock().unwrap().push(instances[3].http.clone());
    // Cooperative rebalancing moves partitions to it in a second round, after their
    // owners released them: every partition is held all along, so wait for its share.
    let deadline = Instant::now() + moves;
    while instances[3].owned().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the new instance got nothing\n{}",
            logs(&instances)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_all_owned(&mut instances, moves);
    // It resumed each partition it got from the changelog's offset, not from 0.
    let first = instances[3]
        .run
        .log()
        .lines()
        .find(|l| l.contains("Partitions assigned.") && l.contains("Some("))
        .map(str::to_owned);
    let first = first.unwrap_or_else(|| {
        panic!(
            "the new instance got no partition with receipts\n{}",
            logs(&instances)
        )
    });
    assert!(
        !first.contains("None"),
        "the new instance refolds a partition from 0: {first}"
    );

    for round in 0..rounds {
        if round > 0 {
            instances[0].run.kill();
            std::thread::sleep(Duration::from_secs(2));
            instances[0].run.start();
            wait_all_owned(&mut instances, moves);
        }
        // A zombie: paused past its session (6 s), its partitions move; then it wakes,
        // holding a batch and an open transaction.
        instances[1].run.signal("STOP");
        let paused_at = instances[1].run.log().len();
        std::thread::sleep(Duration::from_secs(14));
        instances[1].run.signal("CONT");
        wait_all_owned(&mut instances, moves);
        let woke = instances[1].run.log()[paused_at..].to_owned();
        assert!(
            woke.contains("Partitions revoked."),
            "the zombie did not learn it lost its partitions:\n{woke}"
        );

        // One loses its disk (a pod rescheduled without its volume) and comes back empty.
        instances[2].run.kill();
        std::fs::remove_dir_all(&instances[2].run.store).unwrap();
        instances[2].run.start();
        std::thread::sleep(Duration::from_secs(3));
        wait_all_owned(&mut instances, moves);
    }

    // A planned stop hands its partitions over.
    let status = instances[3].run.terminate(Duration::from_secs(30));
    assert!(status.success(), "{}", instances[3].run.log());
    let still_producing = !producer.is_finished();
    producer.hurry();
    producer.join().unwrap();
    assert!(
        still_producing,
        "the receipts all arrived before the last move"
    );
    wait_all_owned(&mut instances, moves);

    let receipts = broker.read_all("receipts");
    assert_eq!(receipts.len(), n);
    let expected = reference_of(&receipts);
    let deadline = Instant::now() + Duration::from_secs(120);
    let projections = loop {
        let reads = broker.read_all("user-projections");
        if last_per_key(&reads) == expected.projections {
            break reads;
        }
        assert!(
            Instant::now() < deadline,
            "the projections topic does not equal the reference fold\n{}",
            logs(&instances)
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    // librdkafka reads with isolation.level = read_committed by default.
    assert_eq!(
        first_version_decrease(&projections),
        None,
        "a read_committed reader saw a user's version go down"
    );
    assert_eq!(
        dlq_reasons(&broker.read_all("receipts-dlq")),
        expected.dlq,
        "every bad record in the DLQ once, with its reason"
    );

    stop.store(true, Ordering::Relaxed);
    let seen = queries
        .join()
        .unwrap_or_else(|_| panic!("a query was answered wrongly (above)\n{}", logs(&instances)));
    eprintln!("queries during the moves: {seen:?}");
    assert!(seen.get(&200).copied().unwrap_or(0) > 100, "{seen:?}");

    // Every running instance answers for every user and the whole leaderboard: its own
    // partitions from its store, the others' from their owners.
    let mut top: Vec<(&String, i64)> = expected
        .projections
        .iter()
        .map(|(u, v)| (u, v["xp"].as_i64().unwrap()))
        .collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let top: Vec<String> = top.iter().take(10).map(|(u, _)| (*u).clone()).collect();
    for i in &mut instances {
        if !i.run.is_running() {
            continue;
        }
        for user in users.iter().step_by(7) {
            let r = support::http::get(&i.http, &format!("/v1/users/{user}")).unwrap();
            assert_eq!(
                r.status,
                200,
                "{} for {user}: {}",
                i.name,
                String::from_utf8_lossy(&r.body)
            );
            let got: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(
                Some(&got),
                expected.projections.get(user),
                "{} for {user}",
                i.name
            );
        }
        let r = support::http::get(&i.http, "/v1/leaderboard?limit=10").unwrap();
        assert_eq!(
            r.status,
            200,
            "{}: {}",
            i.name,
            String::from_utf8_lossy(&r.body)
        );
        let board: Value = serde_json::from_slice(&r.body).unwrap();
        let ids: Vec<String> = board["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["user_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, top, "{}'s leaderboard", i.name);
        assert_eq!(board["entries"][0]["rank"], 1);
    }

    // Each running instance's store holds the reference state of the partitions it owns.
    let mut covered = BTreeSet::new();
    let mut owners = BTreeMap::new();
    for i in &mut instances {
        if i.run.is_running() {
            owners.insert(i.name.clone(), i.owned());
            let status = i.run.terminate(Duration::from_secs(30));
            assert!(status.success(), "{}", i.run.log());
        }
    }
    for i in &instances {
        let Some(owned) = owners.get(&i.name) else {
            continue;
        };
        let store = Store::open(&i.run.store).unwrap();
        for u in store.users_by_partition() {
            let (p, u) = u.unwrap();
            if owned.contains(&p) {
                let got = serde_json::to_value(ProjectionJson::from_state(&u)).unwrap();
                assert_eq!(
                    Some(&got),
                    expected.projections.get(&u.user_id),
                    "{} partition {p}",
                    i.name
                );
                covered.insert(u.user_id);
            }
        }
        let _ = &i.dir;
    }
    assert_eq!(
        covered.len(),
        expected.projections.len(),
        "the owners' stores hold every user"
    );
    let log = logs(&instances);
    for i in &instances {
        let l = i.run.log();
        eprintln!(
            "{}: {} assignments, {} restores, {} failed commits, {} aborted or fenced transactions",
            i.name,
            l.matches("Partitions assigned.").count(),
            l.matches("Restored partitions from the changelog.").count(),
            l.matches("Commit failed").count(),
            l.matches("TXNERR").count(),
        );
    }
    assert!(
        log.contains("Restored partitions from the changelog."),
        "no restore ran"
    );
}

/// The oldest receipts are gone from the topic (retention), and the store with them:
/// a new instance restores the partitions from the changelog and folds only what came
/// after, exactly.
#[test]
fn a_partition_restores_from_the_changelog_after_retention_removed_its_oldest_receipts() {
    const P: i32 = 2;
    let broker = Broker::start();
    broker.create_topic("receipts", P, false);
    let mix = Mix {
        refunds: 80,
        duplicates: 40,
        bad: 20,
        redemptions: 0,
    };
    let mut sim = Simulator::new(5, 300, 20, mix);
    let first = take(&mut sim, 3_000);
    let second = take(&mut sim, 2_000);
    broker.produce("receipts", &first);
    let before = broker.read_all("receipts");

    let mut old = Instance::new(&broker, "mq-old");
    let ends: BTreeMap<i32, i64> = (0..P)
        .map(|p| (p, before.iter().filter(|r| r.partition == p).count() as i64))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while support::http::served_offsets(&old.http) != ends {
        assert!(old.run.is_running(), "exited\n{}", old.run.log());
        assert!(Instant::now() < deadline, "not folded\n{}", old.run.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(old.run.terminate(Duration::from_secs(30)).success());

    // Retention removes every receipt folded so far; then more arrive.
    broker.client().delete_all_records("receipts", P);
    let starts = broker.client().log_starts("receipts", P);
    assert_eq!(starts, ends.values().copied().collect::<Vec<_>>());
    broker.produce("receipts", &second);

    let mut new = Instance::new(&broker, "mq-new");
    let all: Vec<Read> = before
        .into_iter()
        .chain(broker.read_all("receipts"))
        .collect();
    assert_eq!(all.len(), 5_000);
    let expected = reference_of(&all);
    let deadline = Instant::now() + Duration::from_secs(120);
    while last_per_key(&broker.read_all("user-projections")) != expected.projections {
        assert!(new.run.is_running(), "exited\n{}", new.run.log());
        assert!(Instant::now() < deadline, "not exact\n{}", new.run.log());
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = new.run.log();
    assert!(
        log.contains("Restored partitions from the changelog."),
        "{log}"
    );
    // It resumed at the changelog's offsets: the first receipt it could read, none before.
    let assigned = log
        .lines()
        .find(|l| l.contains("Partitions assigned."))
        .unwrap()
        .to_owned();
    for (p, o) in &ends {
        assert!(
            assigned.contains(&format!("({p}, Some({o}))")),
            "{assigned}"
        );
    }
    let http = new.http.clone();
    let metrics = String::from_utf8(support::http::get(&http, "/metrics").unwrap().body).unwrap();
    let folded: f64 = ["applied", "duplicate", "rejected"]
        .iter()
        .map(|o| {
            support::prometheus::sample(
                &metrics,
                &format!("mallquest_receipts_total{{outcome=\"{o}\"}}"),
            )
        })
        .sum();
    assert_eq!(folded, 2_000.0, "receipts folded by the new instance");
    assert!(new.run.terminate(Duration::from_secs(30)).success());
    assert_eq!(stored_projections(&new.run.store), expected.projections);
    assert_eq!(dlq_reasons(&broker.read_all("receipts-dlq")), expected.dlq);
}

// Regression (issue 12): a revocation aborted the open transaction and dropped the batch
// in hand of every partition, so the next owner folded the moved partitions' batch again
// and the instance refolded the rest.
#[test]
fn a_revocation_commits_the_batch_in_hand_so_the_next_owner_resumes_after_it() {
    let broker = Broker::start();
    broker.create_topic("receipts", PARTITIONS, false);
    // Only a revocation or a stop commits: the interval is far longer than the test.
    let mut pair = vec![Instance::start(&broker, "rv-a", "mq-test", false, 60_000)];
    wait_all_owned(&mut pair, Duration::from_secs(120));
    let mix = Mix {
        refunds: 80,
        duplicates: 40,
        bad: 20,
        redemptions: 0,
    };
    broker.produce(
        "receipts",
        &take(&mut Simulator::new(41, 300, 20, mix), 1_200),
    );
    let receipts = broker.read_all("receipts");
    let expected = reference_of(&receipts);
    let ends: BTreeMap<i32, usize> = (0..PARTITIONS)
        .map(|p| (p, receipts.iter().filter(|r| r.partition == p).count()))
        .collect();
    // Folded, in hand, not committed.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        committed_total(&broker, "mq-test", "receipts", PARTITIONS),
        0
    );

    pair.push(Instance::start(&broker, "rv-b", "mq-test", false, 60_000));
    wait_both_hold(&mut pair, Duration::from_secs(120));
    // The first instance committed everything in hand before it gave partitions up.
    assert_eq!(
        committed_total(&broker, "mq-test", "receipts", PARTITIONS),
        1_200,
        "{}",
        logs(&pair)
    );
    assert!(
        pair[0].metric("mallquest_revocations_total{batch=\"committed\"}") >= 1.0,
        "{}",
        pair[0].run.log()
    );
    assert_eq!(
        pair[0].metric("mallquest_revocations_total{batch=\"dropped\"}"),
        0.0
    );
    // The new owner restored that batch from the changelog and resumed after it: its
    // assignment starts every moved partition at the partition's end.
    let log = pair[1].run.log();
    assert!(restored_records(&log) > 0, "{log}");
    let assigned: String = log
        .lines()
        .filter(|l| l.contains("Partitions assigned."))
        .collect();
    for p in pair[1].owned() {
        assert!(
            assigned.contains(&format!("({p}, Some({}))", ends[&p])),
            "partition {p} of {ends:?}: {assigned}"
        );
    }
    for i in &mut pair {
        assert!(i.run.terminate(Duration::from_secs(30)).success());
    }
    assert_eq!(
        last_per_key(&broker.read_all("user-projections")),
        expected.projections
    );
    assert_eq!(dlq_reasons(&broker.read_all("receipts-dlq")), expected.dlq);
}

/// Records restored from the changelog, by the log lines of restores in `log`.
fn restored_records(log: &str) -> u64 {
    let re = regex::Regex::new(r"records=(\d+)").unwrap();
    log.lines()
        .filter(|l| l.contains("Restored partitions from the changelog."))
        .filter_map(|l| re.captures(l).map(|c| c[1].parse::<u64>().unwrap()))
        .sum()
}

#[test]
fn a_standby_keeps_partitions_warm_so_a_failover_catches_up_only_the_last_records() {
    let broker = Broker::start();
    broker.create_topic("receipts", PARTITIONS, false);
    let mix = Mix {
        refunds: 80,
        duplicates: 40,
        bad: 20,
        redemptions: 0,
    };
    let records = take(&mut Simulator::new(33, 2_000, 20, mix), 9_000);
    let producer = broker.client().produce_at_rate("receipts", records, 250);
    let mut pair = vec![
        Instance::with_standbys(&broker, "sb-a", 1),
        Instance::with_standbys(&broker, "sb-b", 1),
    ];
    wait_both_hold(&mut pair, Duration::from_secs(120));
    let moved = pair[0].owned();
    // The survivor keeps the other's partitions warm, and has copied records of them.
    let deadline = Instant::now() + Duration::from_secs(60);
    while pair[1].metric("mallquest_standby_partitions") != moved.len() as f64
        || pair[1].metric("mallquest_standby_records_total") < 1.0
    {
        assert!(Instant::now() < deadline, "no standby\n{}", logs(&pair));
        std::thread::sleep(Duration::from_millis(200));
    }
    // Receipts flow on for a while, so that the moved partitions' changelog grows well
    // past what the survivor held when it became their standby.
    std::thread::sleep(Duration::from_secs(12));
    let log_before = pair[1].run.log().len();
    pair[0].run.kill();
    let changelog = broker
        .read_all("mq-test-changelog")
        .iter()
        .filter(|r| moved.contains(&r.partition))
        .count() as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while pair[1].owned().len() != PARTITIONS as usize {
        assert!(Instant::now() < deadline, "no failover\n{}", logs(&pair));
        std::thread::sleep(Duration::from_millis(100));
    }
    let caught_up = restored_records(&pair[1].run.log()[log_before..]);
    assert!(
        pair[1].metric("mallquest_standby_records_total") * 2.0 > changelog as f64,
        "the standby copied less than half the moved partitions' {changelog} changelog records\n{}",
        pair[1].run.log()
    );
    assert!(
        caught_up * 10 < changelog,
        "the failover caught up {caught_up} of the moved partitions' {changelog} changelog \
         records: the standby was not warm\n{}",
        pair[1].run.log()
    );
    eprintln!("failover caught up {caught_up} of {changelog} changelog records of {moved:?}");

    producer.hurry();
    producer.join().unwrap();
    let expected = reference_of(&broker.read_all("receipts"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while last_per_key(&broker.read_all("user-projections")) != expected.projections {
        assert!(pair[1].run.is_running(), "exited\n{}", pair[1].run.log());
        assert!(Instant::now() < deadline, "not exact\n{}", logs(&pair));
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(dlq_reasons(&broker.read_all("receipts-dlq")), expected.dlq);
    // It holds every partition now: its user count is every user, exactly.
    assert_eq!(
        pair[1].metric("mallquest_users"),
        expected.projections.len() as f64
    );
    assert!(pair[1].run.terminate(Duration::from_secs(30)).success());
    assert_eq!(stored_projections(&pair[1].run.store), expected.projections);
}

/// Asks random instances for random users until `stop`: every answer is a projection, a
/// JSON 404 for a user never seen, or a JSON 503 (moving); a user's version never goes
/// down from one answer to the next, whoever answers (no stale state from an instance
/// whose partition moved away). Returns the count of answers by status.
fn query_during_moves(
    addrs: &Mutex<Vec<String>>,
    users: &[String],
    stop: &AtomicBool,
) -> BTreeMap<u16, u64> {
    let mut seen: BTreeMap<u16, u64> = BTreeMap::new();
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    let mut k = 0usize;
    while !stop.load(Ordering::Relaxed) {
        k += 1;
        let addr = {
            let a = addrs.lock().unwrap();
            a[k % a.len()].clone()
        };
        let user = &users[(k * 7919) % users.len()];
        let Ok(r) = support::http::get(&addr, &format!("/v1/users/{user}")) else {
            continue; // killed, or not listening yet
        };
        *seen.entry(r.status).or_default() += 1;
        let body: Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|_| panic!("{addr}: not JSON: {}", String::from_utf8_lossy(&r.body)));
        match r.status {
            200 => {
                let v = body["version"].as_u64().unwrap();
                let before = versions.insert(user.clone(), v).unwrap_or(0);
                assert!(
                    v >= before,
                    "{addr} answered {user} at version {v} after {before}"
                );
            }
            404 => assert!(
                !versions.contains_key(user),
                "{addr} answered 404 for {user}, seen before: {body} (headers {:?}, at {:?})",
                r.headers,
                std::time::SystemTime::now()
            ),
            503 => assert!(body["error"].is_string(), "{body}"),
            // A kill mid-request, or the query API before the consumer is up.
            other => panic!("{addr} answered {other}: {body}"),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    seen
}

/// The group's committed offsets for `topic`, summed (what the transactions committed).
fn committed_total(broker: &Broker, group: &str, topic: &str, partitions: i32) -> i64 {
    committed(broker, group, topic, partitions).iter().sum()
}

/// The group's committed offset of each partition of `topic` (0 where none).
fn committed(broker: &Broker, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .map(|c| {
            c.elements()
                .iter()
                .map(|e| e.offset().to_raw().filter(|o| *o >= 0).unwrap_or(0))
                .collect()
        })
        .unwrap_or_else(|_| vec![0; partitions as usize])
}

fn median_of(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// docs/benchmarks-history.md "Scale-out": restore rate, failover times and drain throughput
/// with 1, 2 and 3 instances. A measurement, run by hand in release mode:
/// `cargo test --release --test kafka_scale -- --ignored --nocapture scale_figures`.
#[test]
#[ignore = "a measurement; run by hand (BENCHMARKS.md)"]
fn scale_figures() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let users = env("MALLQUEST_BENCH_USERS", 200_000);
    let receipts = env("MALLQUEST_BENCH_RECEIPTS", 300_000);
    let broker = Broker::start();
    broker.create_topic("receipts", PARTITIONS, false);
    let mut sim = Simulator::new(3, users as u64, 40, Mix::default());
    broker.produce("receipts", &take(&mut sim, receipts));
    let n = receipts as i64;

    // Drain with 1, 2 and 3 instances (each its own group, so each drains it all).
    // MALLQUEST_BENCH_ONLY=failover skips the drains and the restore; =restore measures
    // the one-instance drain and the restore only.
    let only = std::env::var("MALLQUEST_BENCH_ONLY").unwrap_or_default();
    for k in 1..=3 {
        if only == "failover" || (only == "restore" && k > 1) {
            break;
        }
        let group = format!("drain-{k}");
        let mut runs: Vec<Instance> = (0..k)
            .map(|i| Instance::start(&broker, &format!("{group}-{i}"), &group, true, 250))
            .collect();
        let started = Instant::now();
        while committed_total(&broker, &group, "receipts", PARTITIONS) < n {
            assert!(
                started.elapsed() < Duration::from_secs(1200),
                "drain-{k} too slow"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        let secs = started.elapsed().as_secs_f64();
        let cpu: f64 = runs.iter().map(|i| i.run.cpu_seconds()).sum();
        eprintln!(
            "drain with {k} instance(s): {n} receipts in {secs:.1} s = {:.0}/s (start-up and group join included); {:.1} us CPU per receipt over all instances",
            n as f64 / secs,
            cpu * 1e6 / n as f64
        );
        for i in &mut runs {
            i.run.terminate(Duration::from_secs(30));
        }
        // The drain-1 instance's changelog is restored below.
        if k == 1 {
            let mut again = Instance::start(&broker, "restore-probe", "drain-1", true, 50);
            let started = Instant::now();
            let line = loop {
                if let Some(l) = again
                    .run
                    .log()
                    .lines()
                    .find(|l| l.contains("Restored partitions from the changelog."))
                {
                    break l.to_owned();
                }
                assert!(
                    started.elapsed() < Duration::from_secs(600),
                    "{}",
                    again.run.log()
                );
                std::thread::sleep(Duration::from_millis(100));
            };
            eprintln!("restore of {users} users' partitions into an empty store: {line}");
            again.run.terminate(Duration::from_secs(30));
        }
    }

    if only == "restore" {
        return;
    }
    // Failover: receipts flowing, two instances; kill -9 one, then SIGTERM one (a planned
    // handoff), each time until every partition is held again and a user of the moved
    // partitions is served by the survivor.
    for (label, static_ids, standbys) in [
        ("static membership", true, 0),
        ("dynamic membership", false, 0),
        ("static membership, 1 standby", true, 1),
        ("dynamic membership, 1 standby", false, 1),
    ] {
        // MALLQUEST_BENCH_FAILOVER=<part of a label> measures only the matching set-ups.
        if !label.contains(&std::env::var("MALLQUEST_BENCH_FAILOVER").unwrap_or_default()) {
            continue;
        }
        let mut kills = Vec::new();
        let mut handoffs = Vec::new();
        for round in 0..env("MALLQUEST_BENCH_ROUNDS", 3) {
            let group = format!("failover-{static_ids}-{standbys}-{round}");
            let make =
                |name: &str| Instance::start_with(&broker, name, &group, static_ids, 50, standbys);
            for (i, how) in ["kill", "term"].iter().enumerate() {
                let mut pair = vec![
                    make(&format!("{group}-{i}-a")),
                    make(&format!("{group}-{i}-b")),
                ];
                // Both members hold partitions (not one holding all before the other joined).
                wait_both_hold(&mut pair, Duration::from_secs(600));
                let moved = pair[0].owned();
                // The whole topic folded first: the moved partitions carry all their state.
                let deadline = Instant::now() + Duration::from_secs(1200);
                while committed_total(&broker, &group, "receipts", PARTITIONS) < n {
                    assert!(Instant::now() < deadline, "not drained\n{}", logs(&pair));
                    std::thread::sleep(Duration::from_millis(250));
                }
                if standbys > 0 {
                    // The survivor keeps the moved partitions warm before the fault.
                    let deadline = Instant::now() + Duration::from_secs(600);
                    while pair[1].metric("mallquest_standby_partitions") != moved.len() as f64 {
                        assert!(Instant::now() < deadline, "{}", logs(&pair));
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    std::thread::sleep(Duration::from_secs(3));
                }
                let log_before = pair[1].run.log().len();
                let started = Instant::now();
                if *how == "kill" {
                    pair[0].run.kill();
                } else {
                    pair[0].run.terminate(Duration::from_secs(30));
                }
                loop {
                    if pair[1].owned().len() == PARTITIONS as usize
                        && !pair[1]
                            .run
                            .log()
                            .ends_with("Restoring partitions from the changelog.\n")
                    {
                        // Served: the survivor's leaderboard covers every partition.
                        let r = support::http::get(&pair[1].http, "/v1/leaderboard?limit=1");
                        if r.is_ok_and(|r| r.status == 200) {
                            break;
                        }
                    }
                    assert!(started.elapsed() < Duration::from_secs(120));
                    std::thread::sleep(Duration::from_millis(20));
                }
                let secs = started.elapsed().as_secs_f64();
                let caught_up = restored_records(&pair[1].run.log()[log_before..]);
                eprintln!(
                    "{label}, {how}: partitions {moved:?} held and served again after {secs:.2} s \
                     ({caught_up} changelog records caught up)"
                );
                if *how == "kill" {
                    kills.push(secs)
                } else {
                    handoffs.push(secs)
                }
                pair[1].run.terminate(Duration::from_secs(30));
            }
        }
        eprintln!(
            "{label}: kill -9 to served again, median {:.2} s; SIGTERM handoff, median {:.2} s",
            median_of(&mut kills),
            median_of(&mut handoffs)
        );
    }
}

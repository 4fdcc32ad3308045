//! Injected Kafka faults, through librdkafka's mock cluster (`rdkafka::mocking`): request
//! errors on Produce, Fetch, OffsetCommit and JoinGroup, a broker down and up, a leader
//! move. The real consumer loop of `mallquest run` (`kafka::run`) folds a simulated stream
//! while they happen; afterwards the store equals the reference fold, every projection on
//! the topic equals the store, and every rejected record is in the DLQ.
//!
//! The mock cluster is for fault injection only, not a stand-in for the broker (the
//! Apache Kafka tests are that): every count read back from it is checked, so that a loss in the
//! mock cannot pass as a loss-free run.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mallquest::config::Config;
use mallquest::kafka::Start;
use mallquest::sim::Simulator;
use mallquest::status::Status;
use mallquest::store::Store;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use support::broker::{Client, Read};
use support::streams::{last_per_key, reference_of, take};

const PARTITIONS: i32 = 3;
const RECEIPTS: usize = 20_000;

struct Fixture {
    mock: MockCluster<'static, DefaultProducerContext>,
    client: Client,
    receipts: Vec<Read>,
    store: Arc<Store>,
    status: Arc<Status>,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// A 3-broker mock cluster holding a simulated stream, and `run` started on it.
    fn start(
        assignment: &str,
        before_start: impl FnOnce(&MockCluster<'static, DefaultProducerContext>),
    ) -> Fixture {
        let mock = MockCluster::new(3).unwrap();
        for (topic, partitions) in [
            ("receipts", PARTITIONS),
            ("user-projections", PARTITIONS),
            ("gamification-events", PARTITIONS),
            ("receipts-dlq", 1),
            // `run` needs its changelog; `main` creates it (ensure_output_topics).
            ("mallquest-changelog", PARTITIONS),
        ] {
            mock.create_topic(topic, partitions, 1).unwrap();
        }
        let client = Client {
            replication: 1,
            bootstrap: mock.bootstrap_servers(),
        };
        let mut sim = Simulator::new(23, 300, 20, mallquest::sim::Mix::default());
        client.produce("receipts", &take(&mut sim, RECEIPTS));
        let receipts = client.read_all("receipts");
        assert_eq!(receipts.len(), RECEIPTS, "the mock cluster lost input");

        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse(&format!(
            "[kafka]\nbrokers = \"{}\"\nassignment = \"{assignment}\"\n\
             [store]\npath = \"{}\"\n[processing]\ncommit_interval_ms = 50\n",
            mock.bootstrap_servers(),
            dir.path().join("store").display()
        ))
        .unwrap();
        assert_eq!(config.kafka.projections_topic, "user-projections");
        assert_eq!(config.kafka.events_topic, "gamification-events");
        assert_eq!(config.kafka.dlq_topic, "receipts-dlq");
        before_start(&mock);
        let store = Arc::new(Store::open(&config.store.path).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Status::default());
        let worker = {
            let (store, stop, status) =
                (Arc::clone(&store), Arc::clone(&stop), Arc::clone(&status));
            std::thread::spawn(move || {
                mallquest::kafka::run(&config, store, status, &stop, Start::Normal)
            })
        };
        Fixture {
            mock,
            client,
            receipts,
            store,
            status,
            stop,
            worker: Some(worker),
            _dir: dir,
        }
    }

    fn ends(&self) -> BTreeMap<(String, i32), i64> {
        (0..PARTITIONS)
            .map(|p| {
                let n = self.receipts.iter().filter(|r| r.partition == p).count() as i64;
                (("receipts".to_owned(), p), n)
            })
            .collect()
    }

    /// Folded records so far, by the store's offsets.
    fn stored(&self) -> i64 {
        self.store.offsets().unwrap().values().sum()
    }

    /// Waits until the store holds the whole stream, then stops `run` and checks it.
    fn finish_and_check(mut self) {
        let deadline = Instant::now() + Duration::from_secs(180);
        while self.store.offsets().unwrap() != self.ends() {
            assert!(
                !self.worker.as_ref().unwrap().is_finished(),
                "run stopped early: {:?}",
                self.worker.take().unwrap().join()
            );
            assert!(
                Instant::now() < deadline,
                "store offsets {:?}, want {:?}",
                self.store.offsets().unwrap(),
                self.ends()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.stop.store(true, Ordering::Relaxed);
        let result = self.worker.take().unwrap().join().unwrap();
        assert!(result.is_ok(), "run failed: {result:?}");

        let expected = reference_of(&self.receipts);
        let stored: BTreeMap<String, serde_json::Value> = self
            .store
            .users()
            .map(|u| {
                let u = u.unwrap();
                let v = serde_json::from_slice(&mallquest::codec::encode_projection(&u)).unwrap();
                (u.user_id, v)
            })
            .collect();
        assert_eq!(
            stored, expected.projections,
            "store differs from the reference"
        );
        // Outputs are complete: the topic's latest projection per user is the stored one.
        let published = last_per_key(&self.client.read_all("user-projections"));
        assert_eq!(published, expected.projections, "projections topic differs");
        let mut dlq = BTreeMap::new();
        for r in self.client.read_all("receipts-dlq") {
            let p: i32 = r.headers["mallquest.source.partition"].parse().unwrap();
            let o: i64 = r.headers["mallquest.source.offset"].parse().unwrap();
            dlq.insert((p, o), r.headers["mallquest.reason"].clone());
        }
        assert_eq!(dlq, expected.dlq, "DLQ differs");
        drop(self.mock);
    }
}

/// Waits until the store has folded at least `n` records (so a fault lands mid-stream).
fn wait_for(f: &Fixture, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while f.stored() < n {
        assert!(Instant::now() < deadline, "stuck at {}", f.stored());
        std::thread::sleep(Duration::from_millis(20));
    }
}

use RDKafkaRespErr::*;

#[test]
fn produce_errors_delay_commits_and_lose_nothing() {
    // Retriable errors (the idempotent producer retries them, in order) and then ones that
    // fail deliveries outright, so that whole batches are given up and replayed from the
    // store. Injected mid-stream, while outputs are in flight. The mock takes the errors
    // in the order given, one per produce request: the last one failing a delivery (a
    // failed commit) proves that every one before it was hit.
    let f = Fixture::start("manual", |_| {});
    wait_for(&f, 2_000);
    assert_eq!(f.status.commit_failures(), 0);
    f.mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE,
        ],
    );
    assert!(
        f.stored() < RECEIPTS as i64,
        "injected after the work was done"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while f.status.commit_failures() == 0 {
        assert!(
            Instant::now() < deadline,
            "the injected produce errors were never hit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let after_first = f.status.commit_failures();
    f.mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    while f.status.commit_failures() == after_first {
        assert!(
            Instant::now() < deadline,
            "the second injected produce error was never hit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        f.stored() < RECEIPTS as i64,
        "the faults landed after the work"
    );
    f.finish_and_check();
}

#[test]
fn fetch_and_offset_commit_errors_lose_nothing() {
    // Injected mid-stream. librdkafka retries these without telling the application, so
    // only the outcome is checked: every record folded once.
    let f = Fixture::start("manual", |_| {});
    wait_for(&f, 2_000);
    {
        let mock = &f.mock;
        mock.request_errors(
            RDKafkaApiKey::Fetch,
            &[
                RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
                RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                RD_KAFKA_RESP_ERR_OFFSET_NOT_AVAILABLE,
            ],
        );
        mock.request_errors(
            RDKafkaApiKey::OffsetCommit,
            &[
                RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
                RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
                RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID,
            ],
        );
    }
    assert!(
        f.stored() < RECEIPTS as i64,
        "injected after the work was done"
    );
    assert!(
        f.stored() < RECEIPTS as i64,
        "the faults landed after the work"
    );
    f.finish_and_check();
}

#[test]
fn join_group_errors_delay_the_assignment_and_lose_nothing() {
    let f = Fixture::start("group", |mock| {
        mock.request_errors(
            RDKafkaApiKey::JoinGroup,
            &[
                RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
                RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
                RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
            ],
        );
    });
    f.finish_and_check();
}

#[test]
fn a_broker_down_and_up_and_a_leader_move_lose_nothing() {
    let f = Fixture::start("manual", |_| {});
    wait_for(&f, 2_000);
    // Move the input's and the output's leaders while folding.
    for p in 0..PARTITIONS {
        f.mock
            .partition_leader("receipts", p, Some((p + 1) % 3 + 1))
            .unwrap();
        f.mock
            .partition_leader("user-projections", p, Some(p % 3 + 1))
            .unwrap();
    }
    let before = f.stored();
    // Then take a broker away for 3 s: the partitions it leads stall, nothing is lost.
    f.mock.broker_down(2).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    f.mock.broker_up(2).unwrap();
    wait_for(&f, (before + 1).min(RECEIPTS as i64));
    f.finish_and_check();
}

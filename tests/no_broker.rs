//! `mallquest run` with no broker listening, as an operator would first try it: it must
//! say so within seconds (log, `/readyz`, `mallquest_broker_up 0`), keep retrying, and
//! start consuming once a broker appears at the configured address.

mod support;

use std::time::{Duration, Instant};

use support::broker::{free_port, Broker};
use support::processor::{write_config, Run};

fn wait_until(what: &str, within: Duration, run: &mut Run, mut ok: impl FnMut(&Run) -> bool) {
    let deadline = Instant::now() + within;
    while !ok(run) {
        assert!(run.is_running(), "mallquest exited\n{}", run.log());
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}\n{}",
            run.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn no_broker_at_start_is_reported_within_seconds_and_retried_until_one_appears() {
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let (config, store, http) = write_config(dir.path(), &address, "");
    let mut run = Run::new(config, store);
    run.start();

    // Within a few seconds: the log names the address and the client's error.
    wait_until(
        "a log line about the brokers",
        Duration::from_secs(8),
        &mut run,
        |run| {
            let log = run.log();
            log.contains("Cannot reach the Kafka brokers") && log.contains(&address)
        },
    );
    let log = run.log();
    let line = log
        .lines()
        .find(|l| l.contains("Cannot reach the Kafka brokers"))
        .unwrap();
    assert!(
        line.contains("error=") && (line.contains("refused") || line.contains("transport")),
        "the client's error is not named: {line}"
    );
    // /readyz names the real cause; the gauge says the broker is down.
    let ready = support::http::get(&http, "/readyz").unwrap();
    assert_eq!(ready.status, 503);
    let body = String::from_utf8(ready.body).unwrap();
    assert!(
        body.contains(&format!("cannot reach the Kafka brokers at {address}")),
        "{body}"
    );
    let metrics = String::from_utf8(support::http::get(&http, "/metrics").unwrap().body).unwrap();
    assert!(
        metrics.lines().any(|l| l == "mallquest_broker_up 0"),
        "{metrics}"
    );
    // It keeps retrying, with backoff: not a busy loop.
    let cpu = run.cpu_seconds();
    std::thread::sleep(Duration::from_secs(4));
    assert!(run.cpu_seconds() - cpu < 1.0, "spinning while waiting");
    let retries = run.log().matches("Cannot reach the Kafka brokers").count();
    assert!(retries >= 2, "no retry\n{}", run.log());

    // A broker appears at the address: mallquest joins and becomes ready on its own.
    let broker = Broker::start_on(port);
    broker.create_topic("receipts", 1, false);
    wait_until(
        "ready after the broker appeared",
        Duration::from_secs(60),
        &mut run,
        |_| support::http::get(&http, "/readyz").is_ok_and(|r| r.status == 200),
    );
    let metrics = String::from_utf8(support::http::get(&http, "/metrics").unwrap().body).unwrap();
    assert!(
        metrics.lines().any(|l| l == "mallquest_broker_up 1"),
        "{metrics}"
    );
    assert!(
        run.log().contains("Reached the Kafka brokers."),
        "{}",
        run.log()
    );
    assert!(
        run.terminate(Duration::from_secs(30)).success(),
        "{}",
        run.log()
    );
}

/// Started before the receipts topic exists (its changelog cannot be sized yet), then the
/// topic is created: the first assignment creates the changelog and folds, rather than
/// refusing the partition.
#[test]
fn a_receipts_topic_created_after_start_gets_its_changelog_at_the_first_assignment() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let (config, store, http) = write_config(dir.path(), &broker.bootstrap(), "");
    let mut run = Run::new(config, store);
    run.start();
    wait_until("consuming", Duration::from_secs(60), &mut run, |run| {
        run.log().contains("Consuming.")
    });
    assert!(run.log().contains("The receipts topic does not exist yet"));
    broker.create_topic("receipts", 1, false);
    let receipt = br#"{"receipt_id":"r-1","user_id":"u-1","store_id":"s-1","amount":"12.00","issued_at":"2026-11-18T10:00:00Z"}"#;
    broker.produce("receipts", &[(Some(b"u-1".to_vec()), receipt.to_vec())]);
    wait_until(
        "the receipt folded",
        Duration::from_secs(90),
        &mut run,
        |_| support::http::get(&http, "/v1/users/u-1").is_ok_and(|r| r.status == 200),
    );
    assert!(
        run.log().contains("Creating the changelog topic"),
        "{}",
        run.log()
    );
    assert!(
        run.terminate(Duration::from_secs(30)).success(),
        "{}",
        run.log()
    );
}

//! The service started in-process, the way `mallquest run` starts it, against a real
//! Apache Kafka broker: it folds, serves the API, and on `Shutdown::stop` commits, stops
//! every task it started and returns; the API's port is closed and the store holds the
//! fold.

mod support;

use std::time::{Duration, Instant};

use mallquest::config::Config;
use mallquest::kafka::Start;
use mallquest::service::{self, Shutdown};
use mallquest::store::Store;
use support::broker::{free_port, Broker};

struct StopOnDrop(Shutdown);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

#[test]
fn a_service_started_in_process_folds_serves_and_stops_with_every_task_joined() {
    let broker = Broker::start();
    broker.create_topic("receipts", 2, false);
    let receipts: Vec<_> = (0..20)
        .map(|i| {
            let user = format!("u-{}", i % 4);
            let body = format!(
                r#"{{"receipt_id":"r-{i}","user_id":"{user}","store_id":"s-1","amount":"10.00","issued_at":"2026-11-18T11:00:{i:02}Z"}}"#
            );
            (Some(user.into_bytes()), body.into_bytes())
        })
        .collect();
    broker.produce("receipts", &receipts);
    let dir = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let config = Config::parse(&format!(
        "[kafka]\nbrokers = \"{}\"\nassignment = \"manual\"\n\
         [store]\npath = \"{}\"\n[http]\nlisten = \"{http}\"\n",
        broker.bootstrap(),
        dir.path().join("store").display()
    ))
    .unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let shutdown = Shutdown::new();
    // A failed assertion stops the service too, or dropping the runtime would wait for
    // the consumer thread forever.
    let _stop = StopOnDrop(shutdown.clone());
    let service = runtime.spawn(service::run(config, Start::Normal, shutdown.clone()));

    // u-0 bought 5 times: 5 x 10 coins, and 50 more for reaching level 2 at 100 XP.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let answer = support::http::get(&http, "/v1/users/u-0");
        if let Ok(r) = &answer {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            if r.status == 200 && v["receipt_count"] == 5 {
                assert_eq!(v["coins"], 100, "{v}");
                break;
            }
        }
        assert!(
            Instant::now() < deadline && !service.is_finished(),
            "u-0 never folded: {:?}",
            answer.map(|r| String::from_utf8_lossy(&r.body).into_owned())
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    shutdown.stop();
    let stopped = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(60), service).await })
        .expect("the service did not stop within 60 s")
        .expect("the service panicked")
        .expect("the service failed");
    let mut joined = stopped.joined.clone();
    joined.sort_unstable();
    assert_eq!(joined, ["api", "compaction", "consumer", "upkeep"]);
    assert_eq!(
        stopped.joined[0], "consumer",
        "the API outlives the consumer's last commit"
    );
    assert!(
        std::net::TcpStream::connect(&http).is_err(),
        "the API still listens after the service returned"
    );
    drop(runtime);

    let store = Store::open(&dir.path().join("store")).unwrap();
    let u = store.find_user("u-3").unwrap().expect("u-3 stored");
    assert_eq!((u.receipt_count, u.coins), (5, 100));
    let offsets: i64 = store.offsets().unwrap().values().sum();
    assert_eq!(offsets, 20, "every receipt's offset committed");
}

//! A lost or corrupted store never leads to a silent empty start that would publish
//! zeroed projections over good ones: a lost store is restored from the changelog without
//! re-reading a receipt; with the changelog lost too, `run` refuses with a clear error, and
//! `rebuild` refolds the topic into an equal store.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mallquest::codec::ProjectionJson;
use mallquest::store::{Store, WriteSet};
use serde_json::Value;
use support::broker::Broker;
use support::golden;
use support::processor::{write_config, Run};

const GOLDEN_RULES: &str = "[rules.store_multipliers]\n\"s-07\" = 200\n\"s-13\" = 150\n";

fn api_matches(http: &str, expected: &BTreeMap<String, Value>) -> bool {
    expected.iter().all(|(user, want)| {
        support::http::get(http, &format!("/v1/users/{user}"))
            .ok()
            .filter(|r| r.status == 200)
            .and_then(|r| serde_json::from_slice::<Value>(&r.body).ok())
            .is_some_and(|got| want.as_object().unwrap().iter().all(|(k, v)| &got[k] == v))
    })
}

#[test]
fn deleted_store_is_restored_from_the_changelog_and_without_it_refuses_until_rebuild() {
    let broker = Broker::start();
    broker.create_topic("receipts", 1, false);
    let records: Vec<_> = golden::receipts()
        .into_iter()
        .map(|r| (r.key, r.value))
        .collect();
    broker.produce("receipts", &records);
    let expected = golden::projections();

    let dir = tempfile::tempdir().unwrap();
    let (config, store, http) = write_config(dir.path(), &broker.bootstrap(), GOLDEN_RULES);
    let mut run = Run::new(config.clone(), store.clone());
    run.start();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !api_matches(&http, &expected) {
        assert!(Instant::now() < deadline, "not folded\n{}", run.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(run.terminate(Duration::from_secs(30)).success());
    let published = broker.read_all("user-projections").len();

    // The store is lost (a pod rescheduled without its volume): the changelog restores it,
    // and not one receipt is folded again.
    std::fs::remove_dir_all(&store).unwrap();
    let mut restored = Run::new(config.clone(), store.clone());
    restored.start();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !api_matches(&http, &expected) {
        assert!(
            Instant::now() < deadline,
            "not restored\n{}",
            restored.log()
        );
        assert!(restored.is_running(), "exited\n{}", restored.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    let metrics = String::from_utf8(support::http::get(&http, "/metrics").unwrap().body).unwrap();
    let sample = |name: &str| support::prometheus::sample(&metrics, name);
    assert!(sample("mallquest_restore_records_total") >= expected.len() as f64);
    // Counted exactly, though restored rather than folded.
    assert_eq!(sample("mallquest_users"), expected.len() as f64);
    for outcome in ["applied", "duplicate", "rejected"] {
        let n = sample(&format!(
            "mallquest_receipts_total{{outcome=\"{outcome}\"}}"
        ));
        assert_eq!(n, 0.0, "{outcome} receipts folded again after a restore");
    }
    assert!(restored.terminate(Duration::from_secs(30)).success());
    assert!(restored
        .log()
        .contains("Restored partitions from the changelog."));
    assert_eq!(
        broker.read_all("user-projections").len(),
        published,
        "a restore publishes nothing"
    );
    // The restored store's leaderboard index (built in one scan after a restore into an
    // empty store) holds every user once, in score order, ties by user_id.
    {
        let s = Store::open(&store).unwrap();
        let users: Vec<_> = s.users().map(Result::unwrap).collect();
        assert_eq!(users.len(), expected.len());
        for (i, board) in mallquest::store::Board::ALL.into_iter().enumerate() {
            let mut want: Vec<(i64, String)> = users
                .iter()
                .map(|u| (mallquest::store::scores(u)[i], u.user_id.clone()))
                .collect();
            want.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            let got: Vec<String> = s
                .leaderboard(board, users.len() + 10)
                .unwrap()
                .into_iter()
                .map(|u| u.user_id)
                .collect();
            let want: Vec<String> = want.into_iter().map(|(_, u)| u).collect();
            assert_eq!(got, want, "{board:?} board after the restore");
        }
    }

    // Store and changelog lost (another changelog topic, empty): `run` must refuse, naming
    // the path and the way out, and publish nothing.
    std::fs::remove_dir_all(&store).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(
        "[kafka]\n",
        "[kafka]\nchangelog_topic = \"lost-changelog\"\n",
    );
    std::fs::write(&config, text).unwrap();
    let mut again = Run::new(config.clone(), store.clone());
    again.start();
    let status = again.wait_exit(Duration::from_secs(60));
    assert!(!status.success());
    let log = again.log();
    assert!(log.contains(&store.display().to_string()), "{log}");
    assert!(log.contains("mallquest rebuild"), "{log}");
    assert_eq!(
        broker.read_all("user-projections").len(),
        published,
        "nothing may be published"
    );

    // `rebuild` refolds the topic; the rebuilt store equals the reference fold.
    let mut rebuild = Run::new(config, store.clone());
    rebuild.command = "rebuild";
    rebuild.start();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !api_matches(&http, &expected) {
        assert!(Instant::now() < deadline, "not rebuilt\n{}", rebuild.log());
        assert!(rebuild.is_running(), "rebuild exited\n{}", rebuild.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(rebuild.terminate(Duration::from_secs(30)).success());
    let store = Store::open(&store).unwrap();
    let rebuilt: Vec<_> = store.users().map(Result::unwrap).collect();
    assert_eq!(rebuilt.len(), expected.len());
    for u in rebuilt {
        let got = serde_json::to_value(ProjectionJson::from_state(&u)).unwrap();
        golden::assert_projection_eq(&got, &expected[&u.user_id]);
    }
}

#[test]
fn corrupted_store_refuses_to_start_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("store");
    {
        let store = Store::open(&store_path).unwrap();
        let mut set = WriteSet::default();
        set.users
            .insert((0, "u-1".into()), mallquest::domain::UserState::new("u-1"));
        set.offsets.insert(("receipts".into(), 0), 1);
        store.commit(&set).unwrap();
    }
    // Garbage over every file of the store.
    let mut stack = vec![store_path.clone()];
    let mut files = 0;
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let e = e.unwrap().path();
            if e.is_dir() {
                stack.push(e);
            } else {
                std::fs::write(&e, b"\xde\xad\xbe\xef not a store file").unwrap();
                files += 1;
            }
        }
    }
    assert!(files > 0);
    // No broker is needed: the store is opened first.
    let (config, store, _) = write_config(dir.path(), "127.0.0.1:1", "");
    assert_eq!(store, store_path);
    let mut run = Run::new(config, store);
    run.start();
    let status = run.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    let log = run.log();
    assert!(log.contains(&store_path.display().to_string()), "{log}");
    assert!(log.contains("rebuild"), "{log}");
}

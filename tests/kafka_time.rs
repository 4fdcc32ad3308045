//! The time feature (issue 33: coins expiring in monthly lots, status tiers, event-time
//! timers, the coin liability) end to end on a real Apache Kafka broker, through the real
//! `mallquest run` binary.
//!
//! The time vectors (`tests/golden/time/`) run into 2027, so their receipts topic is created
//! with `message.timestamp.after.max.ms` raised (Kafka 4 refuses timestamps over an hour
//! ahead by default) and every record is produced with its `issued_at` as its Kafka
//! timestamp (else the clock-skew cap would hold the event-time mark back).
//!
//! One broker for both scenarios (a JVM start is slow on a small machine):
//! 1. the vectors on one partition, folded by one instance: exactly the expected
//!    `coins_expired` and `tier_changed` events in order, the expected projections (with
//!    `tier`, `tier_figure`, `coins_expired`, `next_expiry`) on the projections topic and
//!    over HTTP, `/v1/stats/coins` adding up the expected users, and the new metrics;
//! 2. the same receipts keyed by user over four partitions, folded by two instances of one
//!    group: `/v1/stats/coins` gives the same answer from either, equal to what the last
//!    projection per user on the topic adds up to.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use mallquest::domain::timers::month_label;
use mallquest::domain::Timestamp;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::Value;
use support::broker::{Broker, Read, Timed};
use support::golden::time;
use support::golden::time::instants;
use support::processor::{write_config, write_config_with, Run};
use support::streams::last_per_key;

/// The event types of the time feature.
const TIME_EVENTS: [&str; 2] = ["coins_expired", "tier_changed"];

/// `[expiry] months` of the vectors' config: a lot earned in month M expires at the start
/// of M + 2.
const EXPIRY_MONTHS: i32 = 2;

/// Creates `name` with `partitions`, accepting record timestamps however far ahead (or
/// behind) the broker's clock, and waits until every partition has a leader.
fn create_topic_for_any_time(broker: &Broker, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .unwrap();
    let max = i64::MAX.to_string();
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1))
        .set("message.timestamp.after.max.ms", &max)
        .set("message.timestamp.before.max.ms", &max);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let res = rt
        .block_on(admin.create_topics([&topic], &AdminOptions::new()))
        .unwrap();
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(md) = consumer.fetch_metadata(Some(name), Duration::from_secs(10)) {
            let t = &md.topics()[0];
            if t.error().is_none()
                && t.partitions().len() == partitions as usize
                && t.partitions().iter().all(|p| p.leader() >= 0)
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{name} has no leaders after 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A receipt's `issued_at` in ms since the epoch (`None` when the value has none).
fn issued_ms(value: &[u8]) -> Option<i64> {
    let v: Value = serde_json::from_slice(value).ok()?;
    let t = Timestamp::parse_rfc3339(v.get("issued_at")?.as_str()?)?;
    Some(t.secs * 1000 + i64::from(t.nanos / 1_000_000))
}

/// The vectors' receipts as records keyed as given, each timestamped with its `issued_at`
/// (a record without one, rejected in decoding, with the one before it).
fn timed_receipts() -> Vec<Timed> {
    let mut last = None;
    time::receipts()
        .into_iter()
        .map(|r| {
            let ts = issued_ms(&r.value).or(last);
            last = ts;
            (r.key, r.value, ts)
        })
        .collect()
}

/// A projection as the vectors write it (`time::comparable`).
fn comparable(p: &Value) -> Value {
    time::comparable(p.clone())
}

/// The fields where two (comparable) projections differ, with both values.
fn field_diff(got: &Value, want: &Value) -> Vec<String> {
    let keys: BTreeSet<&String> = got
        .as_object()
        .unwrap()
        .keys()
        .chain(want.as_object().unwrap().keys())
        .collect();
    keys.into_iter()
        .filter(|k| got.get(k.as_str()) != want.get(k.as_str()))
        .map(|k| {
            format!(
                "{k}: got {} want {}",
                got.get(k.as_str()).unwrap_or(&Value::Null),
                want.get(k.as_str()).unwrap_or(&Value::Null)
            )
        })
        .collect()
}

/// The partition -> offset pairs of an `x-mallquest-offsets` header (`topic/p=o,...`).
/// A merged answer's header may name a partition more than once: an instance keeps
/// naming, at the offset it had reached, a partition that has moved away from it (its
/// store still holds it); the newest is the current owner's.
fn offsets_of(header: Option<&String>) -> BTreeMap<i32, i64> {
    let mut out = BTreeMap::<i32, i64>::new();
    for kv in header.map(String::as_str).unwrap_or("").split(',') {
        let Some((tp, o)) = kv.trim().split_once('=') else {
            continue;
        };
        let (Some(p), Ok(o)) = (
            tp.rsplit_once('/').and_then(|(_, p)| p.parse().ok()),
            o.parse::<i64>(),
        ) else {
            continue;
        };
        let e = out.entry(p).or_insert(o);
        *e = (*e).max(o);
    }
    out
}

/// An instance's own `/v1/stats/coins` (not gathered from the others, as a forwarded
/// request is answered): the answer, the offsets of the partitions it holds, those
/// partitions. `None` unless it answered 200.
fn local_stats(http: &str) -> Option<(Value, BTreeMap<i32, i64>, BTreeSet<i32>)> {
    let request = format!(
        "GET /v1/stats/coins HTTP/1.1\r\nHost: {http}\r\n{}: 1\r\nConnection: close\r\n\r\n",
        mallquest::http::HEADER_FORWARDED
    );
    let r = support::http::raw(http, request.as_bytes()).ok()?;
    if r.status != 200 {
        return None;
    }
    let held: BTreeSet<i32> = r
        .headers
        .get(mallquest::http::HEADER_PARTITIONS)?
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    let mut offsets = offsets_of(r.headers.get("x-mallquest-offsets"));
    offsets.retain(|p, _| held.contains(p));
    Some((serde_json::from_slice(&r.body).ok()?, offsets, held))
}

/// Two `/v1/stats/coins` answers of disjoint partitions added up, as a gathered answer
/// adds them.
fn add_stats(a: &Value, b: &Value) -> Value {
    let n = |v: &Value| v.as_i64().unwrap();
    let mut months = BTreeMap::<String, i64>::new();
    for s in [a, b] {
        for (m, c) in s["outstanding"]["by_expiry_month"].as_object().unwrap() {
            *months.entry(m.clone()).or_default() += n(c);
        }
    }
    months.retain(|_, c| *c != 0);
    serde_json::json!({
        "outstanding": {
            "total": n(&a["outstanding"]["total"]) + n(&b["outstanding"]["total"]),
            "by_expiry_month": months,
        },
        "debt": n(&a["debt"]) + n(&b["debt"]),
        "expired": n(&a["expired"]) + n(&b["expired"]),
        "redeemed": n(&a["redeemed"]) + n(&b["redeemed"]),
    })
}

/// The next offset of each partition of a topic read back whole.
fn ends(reads: &[Read]) -> BTreeMap<i32, i64> {
    let mut out = BTreeMap::new();
    for r in reads {
        let e = out.entry(r.partition).or_insert(0);
        *e = (*e).max(r.offset + 1);
    }
    out
}

/// The highest version of each user's projection on a projections topic.
fn newest_per_user(reads: &[Read]) -> BTreeMap<String, Value> {
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    for r in reads {
        let key = String::from_utf8(r.key.clone().unwrap()).unwrap();
        let v: Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        assert_eq!(
            v["user_id"],
            key.as_str(),
            "projection key must be its user_id"
        );
        let newer = out
            .get(&key)
            .is_none_or(|old| v["version"].as_u64() >= old["version"].as_u64());
        if newer {
            out.insert(key, v);
        }
    }
    out
}

/// What `/v1/stats/coins` must say of these projections, `by_expiry_month` aside:
/// (coins held, debt, expired, redeemed).
fn liability_of(projections: &BTreeMap<String, Value>) -> (i64, i64, i64, i64) {
    let n = |v: &Value| v.as_i64().unwrap();
    let held = projections.values().map(|p| n(&p["coins"]).max(0)).sum();
    let debt = projections.values().map(|p| (-n(&p["coins"])).max(0)).sum();
    let expired = projections.values().map(|p| n(&p["coins_expired"])).sum();
    let redeemed = projections.values().map(|p| n(&p["coins_redeemed"])).sum();
    (held, debt, expired, redeemed)
}

/// The expiry month label of a lot expiring at `at`, a Europe/Berlin month start
/// (23:00Z in winter, 22:00Z in summer): the UTC month two hours later.
fn expiry_label(at: &str) -> String {
    let t = Timestamp::parse_rfc3339(at).unwrap();
    let d = chrono::DateTime::from_timestamp(t.secs + 2 * 3600, 0).unwrap();
    d.format("%Y-%m").to_string()
}

/// Checks a `/v1/stats/coins` answer against the projections it must add up: the totals
/// exactly, its months summing to the coins held, and every user's soonest lot inside its
/// month.
fn check_liability(stats: &Value, projections: &BTreeMap<String, Value>, what: &str) {
    let (held, debt, expired, redeemed) = liability_of(projections);
    assert!(
        held > 0 && debt > 0 && expired > 0 && redeemed > 0,
        "{what}"
    );
    assert_eq!(
        (
            &stats["outstanding"]["total"],
            &stats["debt"],
            &stats["expired"],
            &stats["redeemed"]
        ),
        (
            &Value::from(held),
            &Value::from(debt),
            &Value::from(expired),
            &Value::from(redeemed)
        ),
        "{what}: /v1/stats/coins {stats} vs the projections' (held, debt, expired, redeemed)"
    );
    let keys: BTreeSet<&str> = stats
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["outstanding", "debt", "expired", "redeemed"]),
        "{what}: {stats}"
    );
    let months = stats["outstanding"]["by_expiry_month"].as_object().unwrap();
    assert_eq!(
        months.values().map(|c| c.as_i64().unwrap()).sum::<i64>(),
        held,
        "{what}: by_expiry_month does not add up to the total: {stats}"
    );
    // Every user's soonest non-empty lot is counted in its month.
    let mut soonest = BTreeMap::<String, i64>::new();
    for p in projections.values() {
        if let Some(x) = p["next_expiry"].as_object() {
            *soonest
                .entry(expiry_label(x["at"].as_str().unwrap()))
                .or_default() += x["coins"].as_i64().unwrap();
        }
    }
    assert!(!soonest.is_empty(), "{what}: no user holds a lot");
    for (month, coins) in &soonest {
        let listed = months.get(month).and_then(Value::as_i64).unwrap_or(0);
        assert!(
            listed >= *coins,
            "{what}: {month} lists {listed} coins, the users' soonest lots there hold {coins}: {stats}"
        );
    }
}

/// `GET path` as JSON, with its offsets header; `None` unless it answered 200.
fn get_json(http: &str, path: &str) -> Option<(Value, BTreeMap<i32, i64>)> {
    let r = support::http::get(http, path).ok()?;
    if r.status != 200 {
        return None;
    }
    let v = serde_json::from_slice(&r.body).ok()?;
    Some((v, offsets_of(r.headers.get("x-mallquest-offsets"))))
}

fn metrics(http: &str) -> String {
    let r = support::http::get(http, "/metrics").unwrap();
    assert_eq!(r.status, 200);
    String::from_utf8(r.body).unwrap()
}

/// A sample of the exposition, 0 when it has none.
fn sample_or_zero(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .filter(|rest| rest.starts_with(' '))
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

#[test]
fn time_vectors_and_coin_liability_through_a_real_broker() {
    let started = Instant::now();
    let broker = Broker::start();
    eprintln!("broker up after {:?}", started.elapsed());
    one_partition_one_instance(&broker);
    eprintln!("one partition checked after {:?}", started.elapsed());
    four_partitions_two_instances(&broker);
    eprintln!("two instances checked after {:?}", started.elapsed());
}

/// Scenario 1: the vectors exactly, on one partition.
fn one_partition_one_instance(broker: &Broker) {
    let records = timed_receipts();
    create_topic_for_any_time(broker, "receipts", 1);
    broker.client().produce_timed("receipts", &records);
    // Every record taken (none refused for its timestamp), at the vectors' offsets.
    let back = broker.read_all("receipts");
    let offsets: Vec<i64> = back.iter().map(|r| r.offset).collect();
    let want: Vec<i64> = time::receipts().iter().map(|r| r.offset).collect();
    assert_eq!(
        offsets, want,
        "the receipts topic holds the vectors' offsets"
    );
    let n = records.len() as i64;

    let dir = tempfile::tempdir().unwrap();
    let (config, store, http) =
        write_config(dir.path(), &broker.bootstrap(), &time::config_text(""));
    let mut run = Run::new(config, store.clone());
    run.start();

    // Everything committed: the instance serves offset n.
    let deadline = Instant::now() + Duration::from_secs(120);
    while support::http::served_offsets(&http).get(&0) != Some(&n) {
        assert!(run.is_running(), "mallquest exited early:\n{}", run.log());
        assert!(
            Instant::now() < deadline,
            "not caught up after 120 s (served {:?})\n{}",
            support::http::served_offsets(&http),
            run.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The projections topic: the last projection per user is the expected one (the new
    // fields named apart, for a clear failure).
    let expected: BTreeMap<String, Value> = time::projections("")
        .into_iter()
        .map(|(u, p)| (u, comparable(&p)))
        .collect();
    let topic = last_per_key(&broker.read_all("user-projections"));
    let mut wrong = Vec::new();
    for (user, want) in &expected {
        let Some(got) = topic.get(user) else {
            wrong.push(format!("{user}: missing from the topic"));
            continue;
        };
        let got = comparable(got);
        for field in ["tier", "tier_figure", "coins_expired", "next_expiry"] {
            assert!(got.get(field).is_some(), "{user} has no {field}: {got}");
        }
        let diff = field_diff(&got, want);
        if !diff.is_empty() {
            wrong.push(format!("{user}: {}", diff.join("; ")));
        }
    }
    let extra: Vec<&String> = topic
        .keys()
        .filter(|u| !expected.contains_key(*u))
        .collect();
    assert!(
        extra.is_empty(),
        "users on the topic not expected: {extra:?}"
    );
    assert!(
        wrong.is_empty(),
        "{} of {} projections on the topic differ:\n{}",
        wrong.len(),
        expected.len(),
        wrong.join("\n")
    );

    // The events topic: the time events exactly, in the vectors' order; and every event.
    let events: Vec<Value> = broker
        .read_all("gamification-events")
        .iter()
        .map(|r| {
            let mut v: Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            assert_eq!(r.key.as_deref(), v["user_id"].as_str().map(str::as_bytes));
            instants(&mut v);
            v
        })
        .collect();
    let want_events: Vec<Value> = time::events("")
        .into_iter()
        .map(|mut v| {
            instants(&mut v);
            v
        })
        .collect();
    let of_time = |all: &[Value]| -> Vec<Value> {
        all.iter()
            .filter(|e| TIME_EVENTS.iter().any(|t| e["type"] == *t))
            .cloned()
            .collect()
    };
    let (got_time, want_time) = (of_time(&events), of_time(&want_events));
    assert_eq!(want_time.len(), 247 + 62 + 28, "the vectors' time events");
    if let Some(i) =
        (0..got_time.len().max(want_time.len())).find(|i| got_time.get(*i) != want_time.get(*i))
    {
        panic!(
            "time event {i} of {} (got {}) differs:\n  got  {}\n  want {}",
            want_time.len(),
            got_time.len(),
            got_time.get(i).unwrap_or(&Value::Null),
            want_time.get(i).unwrap_or(&Value::Null)
        );
    }
    if let Some(i) =
        (0..events.len().max(want_events.len())).find(|i| events.get(*i) != want_events.get(*i))
    {
        panic!(
            "event {i} of {} (got {}) differs:\n  got  {}\n  want {}",
            want_events.len(),
            events.len(),
            events.get(i).unwrap_or(&Value::Null),
            want_events.get(i).unwrap_or(&Value::Null)
        );
    }
    // The dead-letter topic: exactly the expected rejections.
    let dlq: Vec<(i64, String)> = support::outputs::dlq_reasons(&broker.read_all("receipts-dlq"))
        .into_iter()
        .map(|((p, o), r)| {
            assert_eq!(p, 0);
            (o, r)
        })
        .collect();
    assert_eq!(dlq, time::dlq(""), "the dead letters");

    // The API serves the same projections, new fields included.
    for user in ["t-fifo", "t-tier", "t-debt"] {
        let r = support::http::get(&http, &format!("/v1/users/{user}")).unwrap();
        assert_eq!(r.status, 200, "{user}");
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(&body, &topic[user], "{user}: the API and the topic differ");
        let got = comparable(&body);
        for field in ["tier", "tier_figure", "coins_expired", "next_expiry"] {
            assert_eq!(got[field], expected[user][field], "{user}'s {field}");
        }
        assert!(field_diff(&got, &expected[user]).is_empty(), "{user}");
    }

    // The coin liability: what the expected users add up to.
    let (stats, offsets) = get_json(&http, "/v1/stats/coins").expect("/v1/stats/coins");
    assert_eq!(offsets, BTreeMap::from([(0, n)]), "{stats}");
    check_liability(&stats, &time::projections(""), "one instance");
    let bad = support::http::get(&http, "/v1/stats/coins?x=1").unwrap();
    assert_eq!(bad.status, 400);

    // The new metrics: the counters count this stream's events, the gauges the answer.
    let text = metrics(&http);
    let expired_coins: i64 = want_time
        .iter()
        .filter(|e| e["type"] == "coins_expired")
        .map(|e| e["coins"].as_i64().unwrap())
        .sum();
    assert_eq!(
        support::prometheus::sample(&text, "mallquest_coins_expired_total"),
        expired_coins as f64
    );
    let mut changes = BTreeMap::<String, u64>::new();
    for e in want_time.iter().filter(|e| e["type"] == "tier_changed") {
        *changes
            .entry(e["to"].as_str().unwrap_or("none").to_owned())
            .or_default() += 1;
    }
    assert_eq!(changes.len(), 3, "{changes:?}");
    for (to, count) in &changes {
        assert_eq!(
            support::prometheus::sample(
                &text,
                &format!("mallquest_tier_changes_total{{to=\"{to}\"}}")
            ),
            *count as f64,
            "tier changes to {to}"
        );
    }
    let months = stats["outstanding"]["by_expiry_month"].as_object().unwrap();
    for (month, coins) in months {
        assert_eq!(
            sample_or_zero(
                &text,
                &format!("mallquest_liability_outstanding_coins{{expiry_month=\"{month}\"}}")
            ),
            coins.as_f64().unwrap(),
            "outstanding coins expiring in {month}"
        );
    }
    for (gauge, field) in [
        ("mallquest_liability_debt_coins", "debt"),
        ("mallquest_liability_expired_coins", "expired"),
        ("mallquest_liability_redeemed_coins", "redeemed"),
    ] {
        assert_eq!(
            support::prometheus::sample(&text, gauge),
            stats[field].as_f64().unwrap(),
            "{gauge}"
        );
    }
    let status = run.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit {status:?}\n{}", run.log());

    // The months are exactly the stored users' lots, by the month they expire in.
    let stored = mallquest::store::Store::open(&store).unwrap();
    let mut by_month = BTreeMap::<String, i64>::new();
    for u in stored.users() {
        for (earned, coins) in &u.unwrap().lots {
            *by_month
                .entry(month_label(earned + EXPIRY_MONTHS))
                .or_default() += coins;
        }
    }
    by_month.retain(|_, c| *c != 0);
    let served: BTreeMap<String, i64> = months
        .iter()
        .map(|(m, c)| (m.clone(), c.as_i64().unwrap()))
        .filter(|(_, c)| *c != 0)
        .collect();
    assert_eq!(served, by_month, "by_expiry_month vs the stored lots");
    let live = stored_states(&stored);
    drop(stored);

    // Replay equality: `rebuild` into an empty store refolds the topic into exactly the
    // live store's users (lots, tiers, marks' effects and all) and ledger.
    let rebuilt_dir = tempfile::tempdir().unwrap();
    let (config, rebuilt, http) = write_config(
        rebuilt_dir.path(),
        &broker.bootstrap(),
        &time::config_text(""),
    );
    let mut rebuild = Run::new(config, rebuilt.clone());
    rebuild.command = "rebuild";
    rebuild.start();
    let deadline = Instant::now() + Duration::from_secs(120);
    while support::http::served_offsets(&http).get(&0) != Some(&n) {
        assert!(rebuild.is_running(), "rebuild exited\n{}", rebuild.log());
        assert!(Instant::now() < deadline, "not rebuilt\n{}", rebuild.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(rebuild.terminate(Duration::from_secs(30)).success());
    let rebuilt = stored_states(&mallquest::store::Store::open(&rebuilt).unwrap());
    let first = live.iter().zip(&rebuilt).find(|(a, b)| a != b);
    assert!(
        rebuilt.len() == live.len() && first.is_none(),
        "the rebuilt store differs from the live one ({} vs {} states); first:\n  live    {}\n  rebuilt {}",
        live.len(),
        rebuilt.len(),
        first.map_or(String::new(), |(a, _)| String::from_utf8_lossy(a).into_owned()),
        first.map_or(String::new(), |(_, b)| String::from_utf8_lossy(b).into_owned()),
    );
}

/// Every user and every ledger entry inside the dedup window (90 days back from its
/// partition's mark; entries past it are dropped lazily, at moments that depend on the
/// batches) of a store, as JSON, in key order.
fn stored_states(store: &mallquest::store::Store) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = store
        .users_by_partition()
        .map(|u| serde_json::to_vec(&u.unwrap()).unwrap())
        .collect();
    let cutoff = |p: i32| store.mark(p).map_or(i64::MIN, |m| m.secs - 90 * 86_400);
    out.extend(store.ledger_entries().filter_map(|e| {
        let (p, user, receipt, entry) = e.unwrap();
        (entry.issued_at.secs >= cutoff(p))
            .then(|| serde_json::to_vec(&(user, receipt, entry)).unwrap())
    }));
    assert!(out.len() > 500, "{} states", out.len());
    out
}

/// One `mallquest run` of the four-partition group (static membership as `name`).
struct Instance {
    name: &'static str,
    _dir: tempfile::TempDir,
    run: Run,
    http: String,
}

const GROUP: &str = "mq-time-4";

impl Instance {
    fn start(broker: &Broker, name: &'static str) -> Instance {
        let dir = tempfile::tempdir().unwrap();
        let kafka_extra = format!(
            "receipts_topic = \"receipts-4\"\nprojections_topic = \"projections-4\"\n\
             events_topic = \"events-4\"\ndlq_topic = \"dlq-4\"\ninstance_id = \"{name}\"\n"
        );
        let (config, store, http) = write_config_with(
            dir.path(),
            &broker.bootstrap(),
            &kafka_extra,
            "",
            &time::config_text(""),
        );
        let text = std::fs::read_to_string(&config)
            .unwrap()
            .replace("group_id = \"mq-test\"", &format!("group_id = \"{GROUP}\""));
        std::fs::write(&config, text).unwrap();
        let mut run = Run::new(config, store);
        run.start();
        Instance {
            name,
            _dir: dir,
            run,
            http,
        }
    }

    /// The partitions held, by the last "Partitions assigned." or "Partitions revoked."
    /// line of the log (each names every partition held after it).
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

fn logs(instances: &[Instance]) -> String {
    instances
        .iter()
        .map(|i| format!("==== {} ====\n{}", i.name, i.run.log()))
        .collect()
}

/// Scenario 2: four partitions, two instances in one group, the liability from either.
fn four_partitions_two_instances(broker: &Broker) {
    const PARTITIONS: i32 = 4;
    create_topic_for_any_time(broker, "receipts-4", PARTITIONS);
    // The first half before the instances start (whoever folds it, the other restores its
    // share from the changelog, timers included), the second half once both hold
    // partitions (each folds its own).
    let records = timed_receipts();
    let (first, second) = records.split_at(records.len() / 2);
    broker.client().produce_timed("receipts-4", first);

    let mut pair = [Instance::start(broker, "a"), Instance::start(broker, "b")];
    // Both hold partitions, all four between them, each once.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        for i in pair.iter_mut() {
            assert!(i.run.is_running(), "{} exited\n{}", i.name, i.run.log());
        }
        let (a, b) = (pair[0].owned(), pair[1].owned());
        let mut all: Vec<i32> = a.iter().chain(&b).copied().collect();
        all.sort_unstable();
        if !a.is_empty() && !b.is_empty() && all == (0..PARTITIONS).collect::<Vec<_>>() {
            eprintln!("a holds {a:?}, b holds {b:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "partitions held {a:?} and {b:?} after 90 s\n{}",
            logs(&pair)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    broker.client().produce_timed("receipts-4", second);
    let receipts = broker.read_all("receipts-4");
    assert_eq!(receipts.len(), records.len());
    let ends = ends(&receipts);
    assert_eq!(
        ends.len(),
        PARTITIONS as usize,
        "every partition has receipts"
    );
    // Everything committed: each instance's own answer is at the end of the partitions it
    // holds, and the two hold every partition once. Then the answer gathered by either
    // covers every partition at its end, and is the same from both, and is the two own
    // answers added up.
    let deadline = Instant::now() + Duration::from_secs(90);
    let stats = loop {
        let local: Vec<_> = pair.iter().map(|i| local_stats(&i.http)).collect();
        let answers: Vec<_> = pair
            .iter()
            .map(|i| get_json(&i.http, "/v1/stats/coins"))
            .collect();
        if let ([Some((la, oa, ha)), Some((lb, ob, hb))], [Some((a, ga)), Some((b, gb))]) =
            (&local[..], &answers[..])
        {
            let mut served = oa.clone();
            served.extend(ob);
            if served == ends && ha.is_disjoint(hb) && ga == &ends && gb == &ends {
                assert_eq!(a, b, "the two instances answer /v1/stats/coins differently");
                assert_eq!(
                    a,
                    &add_stats(la, lb),
                    "the gathered answer is not the instances' own answers added up"
                );
                break a.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "not all committed and answered after 90 s (ends {ends:?}): own answers \
             {local:?}, gathered answers {answers:?}\n{}",
            logs(&pair)
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    // The same answer once more from each, now that nothing moves.
    for i in &pair {
        let (again, offsets) = get_json(&i.http, "/v1/stats/coins").unwrap();
        assert_eq!((&again, &offsets), (&stats, &ends), "{}", i.name);
    }
    // What the newest projection per user on the topic adds up to.
    let projections = newest_per_user(&broker.read_all("projections-4"));
    let users: BTreeSet<String> = time::receipts()
        .into_iter()
        .filter_map(|r| r.key)
        .map(|k| String::from_utf8(k).unwrap())
        .collect();
    assert!(
        projections.keys().all(|u| users.contains(u)),
        "a projection of a user with no receipt"
    );
    eprintln!(
        "{} users on the four-partition projections topic ({} in the one-partition vectors)",
        projections.len(),
        time::projections("").len()
    );
    check_liability(&stats, &projections, "two instances");
    eprintln!("/v1/stats/coins from both instances: {stats}");

    // The metrics: the new series are there (a counter from the first committed batch that
    // moves it on; the liability gauges at every scrape), and each instance's liability
    // gauges (its partitions) add up to the answer.
    let texts: Vec<String> = pair.iter().map(|i| metrics(&i.http)).collect();
    for (i, t) in pair.iter().zip(&texts) {
        assert!(
            t.contains("mallquest_liability_outstanding_coins{"),
            "mallquest_liability_outstanding_coins missing from {}'s /metrics",
            i.name
        );
    }
    // Both committed batches in the second half, so both count expired coins; a tier
    // change (and with it its counter) is on at least one.
    for (i, t) in pair.iter().zip(&texts) {
        assert!(
            t.contains("mallquest_coins_expired_total "),
            "mallquest_coins_expired_total missing from {}'s /metrics",
            i.name
        );
    }
    assert!(
        texts
            .iter()
            .any(|t| t.contains("mallquest_tier_changes_total{to=")),
        "mallquest_tier_changes_total on neither instance's /metrics"
    );
    // Every batch is counted once, by the instance that committed it.
    let counted: f64 = texts
        .iter()
        .map(|t| support::prometheus::sample(t, "mallquest_coins_expired_total"))
        .sum();
    assert_eq!(
        counted,
        stats["expired"].as_f64().unwrap(),
        "mallquest_coins_expired_total summed over the instances"
    );
    for (gauge, field) in [
        ("mallquest_liability_debt_coins", "debt"),
        ("mallquest_liability_expired_coins", "expired"),
        ("mallquest_liability_redeemed_coins", "redeemed"),
    ] {
        let sum: f64 = texts
            .iter()
            .map(|t| support::prometheus::sample(t, gauge))
            .sum();
        assert_eq!(sum, stats[field].as_f64().unwrap(), "{gauge} summed");
    }
    for i in pair.iter_mut() {
        let status = i.run.terminate(Duration::from_secs(30));
        assert!(
            status.success(),
            "{} exit {status:?}\n{}",
            i.name,
            i.run.log()
        );
    }
}

//! Edge cases of the time rules through the real pipeline, each found by review: what a
//! replay, a config change or a record dated ahead of the mark must not change.

use mallquest::codec::ProjectionJson;
use mallquest::pipeline::{MemorySink, Processor, Record};
use mallquest::store::Store;
use std::sync::Arc;

const BASE: &str = "[rules]\ncurrency = \"AED\"\ncoins_per_unit = 1\nxp_per_receipt = 0\nxp_per_unit = 1\nlevel_up_bonus_coins = 0\ntimezone = \"UTC\"\n";

fn rec(user: &str, id: &str, at: &str, extra: &str) -> String {
    format!(
        r#"{{"receipt_id":"{id}","user_id":"{user}","store_id":"s-1","issued_at":"{at}"{extra}}}"#
    )
}
fn buy(user: &str, id: &str, at: &str, amount: &str) -> String {
    rec(user, id, at, &format!(r#","amount":"{amount}""#))
}

/// A processor on a fresh store, fed records of partition 0 one after the other.
struct Run {
    p: Processor,
    sink: MemorySink,
    off: i64,
    _d: tempfile::TempDir,
}

impl Run {
    fn new(cfg: &str) -> Run {
        let d = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(d.path()).unwrap());
        let config = mallquest::config::Config::parse(cfg).unwrap();
        let p = Processor::new(store, config.rules.clone());
        Run {
            p,
            sink: MemorySink::default(),
            off: 0,
            _d: d,
        }
    }
    fn feed(&mut self, user: &str, v: &str, ts_ms: Option<i64>) {
        self.p
            .process(Record {
                topic: "receipts",
                partition: 0,
                offset: self.off,
                key: Some(user.as_bytes()),
                payload: Some(v.as_bytes()),
                timestamp_ms: ts_ms,
            })
            .unwrap();
        self.off += 1;
    }
    fn commit(&mut self) {
        self.p.commit(&mut self.sink).unwrap();
    }
    fn proj(&self, u: &str) -> serde_json::Value {
        serde_json::to_value(ProjectionJson::from_state(&self.sink.projections[u])).unwrap()
    }
}

/// A redemption that finds its lot expired by its own step (1) is rejected, and the
/// projection the expiry publishes shows the lot gone.

#[test]
fn a_rejected_record_whose_timers_changed_its_user_publishes_it_refreshed() {
    let cfg = format!("{BASE}[expiry]\nmonths = 1\n");
    let mut r = Run::new(&cfg);
    r.feed(
        "u1",
        &buy("u1", "a", "2027-01-10T10:00:00Z", "100.00"),
        None,
    );
    r.feed("u2", &buy("u2", "b", "2027-01-20T10:00:00Z", "10.00"), None);
    r.feed(
        "u1",
        &rec(
            "u1",
            "c",
            "2027-02-01T00:00:30Z",
            r#","type":"redemption","coins":100"#,
        ),
        None,
    );
    r.commit();
    let p = r.proj("u1");
    let reasons: Vec<_> = r
        .sink
        .dead_letters
        .iter()
        .map(|d| d.reason.as_str())
        .collect();
    assert_eq!(reasons, ["insufficient_coins"]);
    assert_eq!(p["coins"], 0);
    assert_eq!(p["coins_expired"], 100);
    assert_eq!(
        p["next_expiry"],
        serde_json::Value::Null,
        "stale next_expiry"
    );
}

fn tier_script(commit_every_record: bool) -> serde_json::Value {
    let cfg = format!(
        "{BASE}[tiers]\nwindow_months = 1\n[[tiers.levels]]\nid = \"silver\"\nmin = \"100.00\"\n"
    );
    let mut r = Run::new(&cfg);
    let steps: Vec<(&str, String)> = vec![
        ("u1", buy("u1", "p1", "2027-01-10T10:00:00Z", "200.00")),
        ("u2", buy("u2", "x1", "2027-01-31T23:00:00Z", "1.00")),
        (
            "u1",
            rec(
                "u1",
                "red",
                "2027-02-01T00:00:30Z",
                r#","type":"redemption","coins":999999"#,
            ),
        ),
        (
            "u1",
            rec(
                "u1",
                "rf",
                "2027-01-31T23:30:00Z",
                r#","type":"refund","refund_of":"p1","amount":"150.00""#,
            ),
        ),
        ("u2", buy("u2", "x2", "2027-02-02T10:00:00Z", "1.00")),
        ("u2", buy("u2", "x3", "2027-03-15T10:00:00Z", "1.00")),
    ];
    for (u, v) in steps {
        r.feed(u, &v, None);
        if commit_every_record {
            r.commit();
        }
    }
    r.commit();
    let ev: Vec<String> = r
        .sink
        .events
        .iter()
        .map(|e| {
            serde_json::from_slice::<serde_json::Value>(&mallquest::codec::encode_event(e))
                .unwrap()
                .to_string()
        })
        .filter(|s| s.contains("tier"))
        .collect();
    serde_json::json!({"proj_tier": r.proj("u1")["tier"], "events": ev})
}

/// A review in a rejected record's step (1) that keeps the tier still moves the next
/// review: one batch and a commit after every record give the same downgrade.
#[test]
fn a_review_that_keeps_the_tier_counts_whatever_the_batches() {
    let a = tier_script(false);
    let b = tier_script(true);
    assert_eq!(a, b);
    assert!(
        a["events"].to_string().contains("2027-03-01T00:00:00Z"),
        "{a}"
    );
}

/// A store folded with `[tiers]`, then run with `[expiry]` alone: its users' pending
/// reviews are not timers any more (the fold used to spin on them).
#[test]
fn removing_tiers_leaves_no_review_timer() {
    let d = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(d.path()).unwrap());
    let c1 = mallquest::config::Config::parse(&format!(
        "{BASE}[expiry]\n[tiers]\n[[tiers.levels]]\nid = \"silver\"\nmin = \"100.00\"\n"
    ))
    .unwrap();
    let mut sink = MemorySink::default();
    {
        let mut p = Processor::new(Arc::clone(&store), c1.rules.clone());
        p.process(Record {
            topic: "receipts",
            partition: 0,
            offset: 0,
            key: Some(b"u1"),
            payload: Some(buy("u1", "a", "2027-01-10T10:00:00Z", "200.00").as_bytes()),
            timestamp_ms: None,
        })
        .unwrap();
        p.commit(&mut sink).unwrap();
    }
    let c2 = mallquest::config::Config::parse(&format!("{BASE}[expiry]\n")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let st = Arc::clone(&store);
    std::thread::spawn(move || {
        let mut p = Processor::new(st, c2.rules.clone());
        p.process(Record {
            topic: "receipts",
            partition: 0,
            offset: 1,
            key: Some(b"u2"),
            payload: Some(buy("u2", "b", "2027-03-10T10:00:00Z", "2.00").as_bytes()),
            timestamp_ms: None,
        })
        .unwrap();
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(std::time::Duration::from_secs(10)).is_ok(),
        "fold hung"
    );
}

/// A late record qualifies at the mark, to its fraction of a second.
#[test]
fn a_late_record_qualifies_at_the_mark_s_exact_instant() {
    let cfg = format!("{BASE}[tiers]\n[[tiers.levels]]\nid = \"silver\"\nmin = \"100.00\"\n");
    let mut r = Run::new(&cfg);
    r.feed(
        "u2",
        &buy("u2", "b", "2027-01-10T10:00:00.900Z", "1.00"),
        None,
    );
    r.feed(
        "u1",
        &buy("u1", "a", "2027-01-10T10:00:00.400Z", "200.00"),
        None,
    );
    r.commit();
    assert_eq!(r.proj("u1")["tier"]["since"], "2027-01-10T10:00:00.900Z");
}

/// A record dated ahead of its Kafka timestamp (the mark capped behind it) does not drop
/// months the window still reads.
#[test]
fn a_record_dated_ahead_of_the_mark_keeps_the_window() {
    let cfg = format!(
        "{BASE}[tiers]\nwindow_months = 2\n[[tiers.levels]]\nid = \"silver\"\nmin = \"600.00\"\n"
    );
    let mut r = Run::new(&cfg);
    let ms = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_millis()
    };
    r.feed(
        "u1",
        &buy("u1", "a", "2027-01-10T10:00:00Z", "500.00"),
        Some(ms("2027-01-10T10:00:00Z")),
    );
    r.feed(
        "u1",
        &buy("u1", "b", "2027-05-10T10:00:00Z", "1.00"),
        Some(ms("2027-01-11T10:00:00Z")),
    );
    r.feed(
        "u1",
        &buy("u1", "c", "2027-01-12T10:00:00Z", "200.00"),
        Some(ms("2027-01-12T10:00:00Z")),
    );
    r.commit();
    assert_eq!(r.proj("u1")["tier"]["id"], "silver");
}

/// A spend threshold above one receipt's maximum amount.
#[test]
fn a_tier_minimum_may_exceed_a_receipt_s_maximum() {
    let cfg = format!("{BASE}[tiers]\n[[tiers.levels]]\nid = \"silver\"\nmin = \"2000000.00\"\n");
    let c = mallquest::config::Config::parse(&cfg).unwrap();
    assert_eq!(c.rules.game.tiers.unwrap().levels[0].min, 200_000_000);
}

/// A lot whose expiry no RFC 3339 instant can name (past 9999) never expires.
#[test]
fn a_lot_expiring_past_the_year_9999_never_expires() {
    let cfg = format!("{BASE}[expiry]\nmonths = 120\n");
    let mut r = Run::new(&cfg);
    r.feed(
        "u1",
        &buy("u1", "a", "9999-12-31T10:00:00Z", "100.00"),
        None,
    );
    r.commit();
    assert_eq!(r.proj("u1")["next_expiry"], serde_json::Value::Null);
    assert_eq!(r.proj("u1")["coins"], 100);
}

/// `[expiry]` removed for a while, then configured again: what was redeemed meanwhile is
/// not in a lot any more, so nothing of it expires and no debt appears.
#[test]
fn expiry_removed_then_restored_never_expires_coins_already_spent() {
    let d = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(d.path()).unwrap());
    let with = format!("{BASE}[expiry]\nmonths = 1\n");
    let mut sink = MemorySink::default();
    let steps = [
        (
            with.as_str(),
            "u1",
            buy("u1", "a", "2027-01-10T10:00:00Z", "100.00"),
        ),
        (
            BASE,
            "u1",
            rec(
                "u1",
                "red",
                "2027-01-11T10:00:00Z",
                r#","type":"redemption","coins":100"#,
            ),
        ),
        (
            with.as_str(),
            "u2",
            buy("u2", "x", "2027-03-10T10:00:00Z", "1.00"),
        ),
    ];
    for (offset, (cfg, user, value)) in steps.iter().enumerate() {
        // A processor a record, each with its config, on the same store.
        let config = mallquest::config::Config::parse(cfg).unwrap();
        let mut p = Processor::new(Arc::clone(&store), config.rules.clone());
        p.process(Record {
            topic: "receipts",
            partition: 0,
            offset: offset as i64,
            key: Some(user.as_bytes()),
            payload: Some(value.as_bytes()),
            timestamp_ms: None,
        })
        .unwrap();
        p.commit(&mut sink).unwrap();
    }
    let u1 = &sink.projections["u1"];
    assert_eq!((u1.coins, u1.coins_expired), (0, 0));
    assert!(u1.lots.is_empty());
}

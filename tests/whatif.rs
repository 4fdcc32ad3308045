//! `mallquest whatif` against a real Apache Kafka broker: identical rules change nothing;
//! one store's doubled multiplier changes exactly that store's coins, by the amount worked
//! out by hand; `--from` leaves the receipts before it under the live rules; the live store
//! is byte-for-byte unchanged; the JSON matches its schema and the HTML shows its totals; a
//! topic that lost its first records, an empty range and invalid proposed rules are refused
//! before anything is folded. The report's HTML is opened in a real headless Chromium
//! (tests/browser/whatif_report.py; `MALLQUEST_BROWSER_PYTHON` and `MALLQUEST_AXE_JS` from
//! scripts/install-browser.sh, as scripts/test.sh exports them: without them this fails,
//! it is never skipped).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use support::broker::Broker;
use support::browser::{artifacts_dir, tool};

const BIN: &str = env!("CARGO_BIN_EXE_mallquest");
/// 2026-11-18T10:00:00Z and an hour later, in ms: the Kafka timestamps of the two halves.
const EARLY_MS: i64 = 1_794_996_000_000;
const LATE_MS: i64 = EARLY_MS + 3_600_000;
const BETWEEN: &str = "2026-11-18T10:30:00Z";

/// One receipt: (user, receipt id, store, amount, Kafka timestamp).
type Sale = (&'static str, &'static str, &'static str, &'static str, i64);

/// Three users in two stores. Store s-b's purchases earn 12, 7 and 100 coins at 100% and
/// 25, 15 and 200 at 200% (coins = floor(amount in cents x percent / 10,000)): 121 more.
/// The first s-b purchase is early, the other two late: from `BETWEEN` on, 8 + 100 = 108.
/// u-3's 100.00 purchase also takes it to level 2 (110 XP), whose 50 bonus coins count
/// for s-b under both rule sets.
const SALES: [Sale; 6] = [
    ("u-1", "r-1", "s-a", "20.00", EARLY_MS),
    ("u-1", "r-2", "s-b", "12.55", EARLY_MS),
    ("u-2", "r-3", "s-a", "5.00", EARLY_MS),
    ("u-2", "r-4", "s-b", "7.99", LATE_MS),
    ("u-3", "r-5", "s-b", "100.00", LATE_MS),
    ("u-3", "r-6", "s-a", "3.10", LATE_MS),
];

fn receipt((user, id, store, amount, ts): Sale) -> (Option<Vec<u8>>, Vec<u8>, Option<i64>) {
    let at = if ts == EARLY_MS {
        "2026-11-18T10:00:00Z"
    } else {
        "2026-11-18T11:00:00Z"
    };
    let body = format!(
        r#"{{"receipt_id":"{id}","user_id":"{user}","store_id":"{store}","amount":"{amount}","issued_at":"{at}"}}"#
    );
    (Some(user.as_bytes().to_vec()), body.into_bytes(), Some(ts))
}

fn config(dir: &Path, name: &str, brokers: &str, store: &Path, multiplier_b: u32) -> PathBuf {
    config_on("receipts", dir, name, brokers, store, multiplier_b)
}

fn config_on(
    topic: &str,
    dir: &Path,
    name: &str,
    brokers: &str,
    store: &Path,
    multiplier_b: u32,
) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[kafka]\nbrokers = \"{brokers}\"\nreceipts_topic = \"{topic}\"\n\
             [store]\npath = \"{}\"\n\
             [store_categories]\n\"s-a\" = \"food\"\n\"s-b\" = \"fashion\"\n\
             [rules.store_multipliers]\n\"s-b\" = {multiplier_b}\n",
            store.display()
        ),
    )
    .unwrap();
    path
}

fn whatif(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("whatif")
        .args(args)
        .env("TMPDIR", std::env::temp_dir())
        .output()
        .unwrap()
}

fn report(dir: &Path, live: &Path, proposed: &Path, extra: &[&str]) -> Value {
    let json = dir.join("report.json");
    let html = dir.join("report.html");
    let mut args = vec![
        "--config",
        live.to_str().unwrap(),
        "--rules",
        proposed.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "--out",
        html.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = whatif(&args);
    assert!(
        out.status.success(),
        "whatif failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/schemas/whatif.schema.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    assert!(
        validator.is_valid(&v),
        "report does not match its schema: {v}"
    );
    html_totals_agree(&std::fs::read_to_string(&html).unwrap(), &v);
    v
}

/// The HTML page's totals table says what the JSON says.
fn html_totals_agree(html: &str, v: &Value) {
    assert!(html.starts_with("<!doctype html>") && !html.contains("<script"));
    for (key, live) in v["totals"]["live"].as_object().unwrap() {
        let proposed = &v["totals"]["proposed"][key];
        let row = format!("<tr data-key=\"{key}\">");
        let at = html.find(&row).unwrap_or_else(|| panic!("no {key} row"));
        let rest = &html[at..];
        let rest = &rest[..rest.find("</tr>").unwrap()];
        assert!(
            rest.contains(&format!("data-live=\"{live}\"")),
            "{key}: {rest}"
        );
        assert!(
            rest.contains(&format!("data-proposed=\"{proposed}\"")),
            "{key}: {rest}"
        );
    }
}

fn stores(v: &Value) -> BTreeMap<String, (i64, i64, i64)> {
    v["stores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let n = |k: &str| l[k].as_i64().unwrap();
            (
                l["id"].as_str().unwrap().to_owned(),
                (n("live"), n("proposed"), n("change")),
            )
        })
        .collect()
}

fn transactions_are_read_committed(broker: &Broker, dir: &Path, store: &Path) {
    use rdkafka::producer::{BaseRecord, Producer};
    broker.create_topic("receipts-tx", 1, false);
    let producer: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("transactional.id", "whatif-test")
        .create()
        .unwrap();
    let t = Duration::from_secs(30);
    producer.init_transactions(t).unwrap();
    for (sales, commit) in [
        (
            &[
                ("u-9", "r-90", "s-b", "1000.00", EARLY_MS),
                ("u-9", "r-91", "s-b", "5.00", EARLY_MS),
            ][..],
            false,
        ),
        (&[("u-8", "r-80", "s-b", "10.00", EARLY_MS)][..], true),
    ] {
        producer.begin_transaction().unwrap();
        for sale in sales {
            let (key, value, ts) = receipt(*sale);
            let key = key.unwrap();
            let record = BaseRecord::to("receipts-tx")
                .key(&key)
                .payload(&value)
                .timestamp(ts.unwrap());
            producer.send(record).map_err(|(e, _)| e).unwrap();
        }
        producer.flush(t).unwrap();
        if commit {
            producer.commit_transaction(t).unwrap();
        } else {
            producer.abort_transaction(t).unwrap();
        }
    }
    let bootstrap = broker.bootstrap();
    let live = config_on("receipts-tx", dir, "tx-live.toml", &bootstrap, store, 100);
    let doubled = config_on(
        "receipts-tx",
        dir,
        "tx-doubled.toml",
        &bootstrap,
        store,
        200,
    );
    let r = report(dir, &live, &doubled, &[]);
    assert_eq!(r["range"]["records"], 1, "{}", r["range"]);
    assert_eq!(r["users"]["count"], 1);
    assert_eq!(stores(&r)["s-b"], (10, 20, 10));
}

/// Opens the last report written in `dir` in headless Chromium: it shows the JSON's
/// figures, asks for nothing over the network and passes axe-core; a screenshot goes to
/// the test artifacts.
fn in_browser(dir: &Path) {
    let python = tool("MALLQUEST_BROWSER_PYTHON");
    let artifacts = artifacts_dir("whatif");
    std::fs::create_dir_all(&artifacts).unwrap();
    let out = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/browser/whatif_report.py"
        ))
        .arg(dir.join("report.html"))
        .arg(dir.join("report.json"))
        .arg(artifacts.join("report.png"))
        .env("MALLQUEST_AXE_JS", tool("MALLQUEST_AXE_JS"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the report in Chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file under `dir`, with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn whatif_compares_exactly_and_never_touches_the_live_store() {
    let broker = Broker::start();
    broker.create_topic("receipts", 2, false);
    let timed: Vec<_> = SALES.iter().copied().map(receipt).collect();
    broker.client().produce_timed("receipts", &timed);
    let dir = tempfile::tempdir().unwrap();
    let live_store = dir.path().join("live-store");
    let demo = Command::new(BIN)
        .args(["demo", "--receipts", "2000", "--users", "50", "--dir"])
        .arg(&live_store)
        .output()
        .unwrap();
    assert!(
        demo.status.success(),
        "{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    let before = snapshot(&live_store);
    let bootstrap = broker.bootstrap();
    let live = config(dir.path(), "live.toml", &bootstrap, &live_store, 100);
    let doubled = config(dir.path(), "doubled.toml", &bootstrap, &live_store, 200);

    // Identical rules: nothing changes anywhere.
    let same = report(dir.path(), &live, &live, &[]);
    assert_eq!(same["totals"]["live"], same["totals"]["proposed"]);
    assert_eq!(same["levels"]["live"], same["levels"]["proposed"]);
    assert!(stores(&same).values().all(|(_, _, change)| *change == 0));
    let users = &same["users"];
    assert_eq!(users["count"], 3);
    for k in ["level_up", "level_down", "coins_changed"] {
        assert_eq!(users[k], 0, "{k}");
    }
    assert!(users["top_gainers"].as_array().unwrap().is_empty());
    assert_eq!(same["range"]["records"], 6);

    // s-b at 200%: exactly s-b's coins change, by the hand-worked 121.
    let r = report(dir.path(), &live, &doubled, &[]);
    let s = stores(&r);
    assert_eq!(s["s-b"], (119 + 50, 240 + 50, 121), "{s:?}");
    assert_eq!(s["s-a"], (28, 28, 0), "{s:?}");
    let issued = |side: &str| r["totals"][side]["coins_issued"].as_i64().unwrap();
    assert_eq!(issued("proposed") - issued("live"), 121);
    let cats: BTreeMap<_, _> = r["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["id"].as_str().unwrap().to_owned(),
                l["change"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        cats,
        BTreeMap::from([("fashion".into(), 121), ("food".into(), 0)])
    );
    let gainers: Vec<(String, i64)> = r["users"]["top_gainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["user_id"].as_str().unwrap().to_owned(),
                u["change"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        gainers,
        vec![("u-3".into(), 100), ("u-1".into(), 13), ("u-2".into(), 8)]
    );
    assert_eq!(r["users"]["coin_delta"]["max"], 100);
    assert_eq!(r["users"]["coin_delta"]["min"], 8);
    in_browser(dir.path());

    // From BETWEEN on: the early s-b purchase stays at 100% on both sides.
    let r = report(dir.path(), &live, &doubled, &["--from", BETWEEN]);
    assert_eq!(r["range"]["history_records"], 3);
    assert_eq!(r["range"]["records"], 3);
    assert_eq!(stores(&r)["s-b"].2, 108);
    assert_eq!(
        r["totals"]["proposed"]["coins_outstanding"]
            .as_i64()
            .unwrap()
            - r["totals"]["live"]["coins_outstanding"].as_i64().unwrap(),
        108
    );

    // --to before the late half: only the early s-b purchase is compared.
    let r = report(dir.path(), &live, &doubled, &["--to", BETWEEN]);
    assert_eq!(r["range"]["records"], 3);
    assert_eq!(stores(&r)["s-b"].2, 13);

    assert!(before == snapshot(&live_store), "the live store changed");

    // A topic written in transactions: markers and aborted records take offsets no
    // read_committed reader sees; the what-if ends anyway and folds the committed only.
    transactions_are_read_committed(&broker, dir.path(), &live_store);

    // A range holding nothing is refused before folding.
    let out = whatif(&[
        "--config",
        live.to_str().unwrap(),
        "--rules",
        doubled.to_str().unwrap(),
        "--from",
        "2030-01-01T00:00:00Z",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds no record at or after --from"), "{err}");

    // Once retention has deleted the first records, a what-if says so and folds nothing.
    broker.client().delete_all_records("receipts", 2);
    let out = whatif(&[
        "--config",
        live.to_str().unwrap(),
        "--rules",
        doubled.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no longer holds its first records"), "{err}");
    assert!(err.contains("retention.ms = -1"), "{err}");
}

#[test]
fn invalid_proposed_rules_and_times_are_refused_before_any_broker_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    // No broker listens here: every refusal below comes before one is asked.
    let live = config(
        dir.path(),
        "live.toml",
        "127.0.0.1:9",
        &dir.path().join("s"),
        100,
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[rules]\ncoins_per_unit = -5\n").unwrap();
    let out = whatif(&[
        "--config",
        live.to_str().unwrap(),
        "--rules",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the proposed rules (--rules) are not valid"),
        "{err}"
    );

    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "[rules]\ncoins_per_unti = 2\n").unwrap();
    let out = whatif(&[
        "--config",
        live.to_str().unwrap(),
        "--rules",
        unknown.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("coins_per_unti"));

    let live_s = live.to_str().unwrap();
    for (args, says) in [
        (vec!["--from", "yesterday"], "not an RFC 3339 instant"),
        (
            vec![
                "--from",
                "2026-11-02T00:00:00Z",
                "--to",
                "2026-11-01T00:00:00Z",
            ],
            "must be before --to",
        ),
    ] {
        let mut all = vec!["--config", live_s, "--rules", live_s];
        all.extend(args);
        let out = whatif(&all);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{err}");
    }
}

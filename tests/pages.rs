//! The pages (`/board`, `/me/{user_id}`) in a real headless Chromium, driven by Playwright
//! for Python (tests/browser/pages.py), against `mallquest run` on a real Apache Kafka
//! broker with `[http] token` set: the figures shown are the API's, ids holding HTML are
//! shown as text, axe-core finds no violation, the open board follows new receipts by its
//! own polling, and `/me` asks for the token on 401 and shows the data once it is given.
//!
//! Needs `MALLQUEST_BROWSER_PYTHON` (a Python with Playwright) and `MALLQUEST_AXE_JS`
//! (axe-core's axe.min.js), which scripts/install-browser.sh installs and scripts/test.sh
//! exports. Without them the test fails: it is never skipped.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mallquest::http::path_segment as encode;
use serde_json::Value;
use support::broker::Broker;
use support::browser::{artifacts_dir, tool};
use support::processor::{write_config, Run};
use support::streams::Records;

const TOKEN: &str = "pages-test-token";
/// A user id that is markup, closing tag and script included.
const HTML_USER: &str = "<b>x</b><script>window.__pwned=1</script>";
/// A store id that is markup (it counts in `stores_visited`, which the page shows).
const HTML_STORE: &str = "<img src=x onerror=\"window.__pwned=2\">";
/// The user whose receipts, produced while /board is open, make it the leader.
const LEADER: &str = "u-leader";

fn receipt(
    id: &str,
    user: &str,
    store: &str,
    at: &str,
    amount: &str,
) -> (Option<Vec<u8>>, Vec<u8>) {
    let v = serde_json::json!({
        "receipt_id": id, "user_id": user, "store_id": store, "issued_at": at,
        "currency": "AED", "amount": amount,
    });
    (Some(user.as_bytes().to_vec()), v.to_string().into_bytes())
}

/// Receipts over nine mall days (the demo game's calendar): thirty shoppers, and the
/// shopper with the HTML id buying most, in a dozen stores (one of them the HTML store) on
/// consecutive days, so that it leads the boards and holds badges and missions. Every user
/// buys on the last day, so the day's board is full. Returns the records and each user's
/// purchase count.
fn first_receipts() -> (Records, BTreeMap<String, i64>) {
    let mut records = Vec::new();
    let mut counts = BTreeMap::new();
    for u in 0..30 {
        let user = format!("u-{u:02}");
        let n = 4 + u % 5;
        for i in 0..n {
            let day = 28 - (n - 1 - i);
            let at = format!("2026-11-{day:02}T{:02}:{:02}:00+04:00", 10 + u % 8, u);
            let amount = format!("{}.{:02}", 20 + 7 * u + 3 * i, u);
            let store = format!("s-{:03}", (u + i) % 40);
            records.push(receipt(&format!("r-{u}-{i}"), &user, &store, &at, &amount));
        }
        counts.insert(user, n as i64);
    }
    for i in 0..12 {
        let at = format!("2026-11-{:02}T12:{:02}:00+04:00", 17 + i, i);
        let store = if i == 5 {
            HTML_STORE.to_owned()
        } else {
            format!("s-{:03}", i * 3)
        };
        records.push(receipt(
            &format!("r-html-{i}"),
            HTML_USER,
            &store,
            &at,
            "520.00",
        )); // 12 × 520: over the 5,000 big-spender badge
    }
    counts.insert(HTML_USER.to_owned(), 12);
    (records, counts)
}

/// A `/v1` GET with the token; the status and the JSON body (`Null` if none).
fn get(http: &str, path: &str) -> (u16, Value) {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {http}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    match support::http::raw(http, request.as_bytes()) {
        Ok(r) => (
            r.status,
            serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        ),
        Err(_) => (0, Value::Null),
    }
}

/// Waits until the API shows every user with its purchase count: all of it folded.
fn wait_folded(http: &str, run: &mut Run, counts: &BTreeMap<String, i64>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let behind = counts
            .iter()
            .filter(|(user, n)| {
                let (status, p) = get(http, &format!("/v1/users/{}", encode(user)));
                status != 200 || p["receipt_count"].as_i64() != Some(**n)
            })
            .count();
        if behind == 0 {
            return;
        }
        assert!(run.is_running(), "mallquest exited early\n{}", run.log());
        assert!(
            Instant::now() < deadline,
            "{behind} users not folded yet\n{}",
            run.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn pages_show_the_apis_figures_as_text_accessibly_and_follow_new_receipts() {
    let python = tool("MALLQUEST_BROWSER_PYTHON");
    let axe = tool("MALLQUEST_AXE_JS");
    let started = Instant::now();

    let broker = Broker::start();
    broker.create_topic("receipts", 2, false);
    let (records, mut counts) = first_receipts();
    broker.produce("receipts", &records);
    let game = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/demo-game.toml"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Right after `[http] listen`: the token, then the demo game's sections.
    let (config, store, http) = write_config(
        dir.path(),
        &broker.bootstrap(),
        &format!("token = \"{TOKEN}\"\n{game}"),
    );
    let mut run = Run::new(config, store);
    run.start();
    wait_folded(&http, &mut run, &counts);
    let folded = started.elapsed();

    // The page shells hold no data: served without the token; /v1 is not.
    let shell = support::http::get(&http, &format!("/me/{}", encode(HTML_USER))).unwrap();
    assert_eq!(shell.status, 200);
    assert!(!String::from_utf8_lossy(&shell.body).contains("<b>x"));
    assert_eq!(support::http::get(&http, "/v1/levels").unwrap().status, 401);

    let artifacts = artifacts_dir("pages");
    std::fs::create_dir_all(&artifacts).unwrap();
    let mut browser = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/browser/pages.py"
        ))
        .args([&format!("http://{http}"), TOKEN, HTML_USER])
        .arg(&artifacts)
        .env("MALLQUEST_AXE_JS", &axe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let mut to_browser = browser.stdin.take().unwrap();
    let mut result = None;
    for line in BufReader::new(browser.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line == "need-more" {
            // While /board is open: a shopper who outspends everyone, on the last day.
            let more: Vec<_> = (0..3)
                .map(|i| {
                    let at = format!("2026-11-28T20:0{i}:00+04:00");
                    receipt(&format!("r-leader-{i}"), LEADER, "s-010", &at, "40000.00")
                })
                .collect();
            broker.produce("receipts", &more);
            counts.insert(LEADER.to_owned(), 3);
            wait_folded(&http, &mut run, &counts);
            writeln!(to_browser, "more {LEADER}").unwrap();
            to_browser.flush().unwrap();
        } else if let Some(json) = line.strip_prefix("result ") {
            result = Some(json.to_owned());
        } else {
            eprintln!("pages.py (stdout): {line}");
        }
    }
    drop(to_browser);
    let status = browser.wait().unwrap();
    assert!(
        status.success(),
        "the browser checks failed ({status}); see pages.py's output above and the \
         screenshots in {}\n{}",
        artifacts.display(),
        run.log()
    );
    let result = result.expect("pages.py printed no result");
    std::fs::write(artifacts.join("load-times.json"), &result).unwrap();
    eprintln!(
        "pages: navigation-to-load and to first data (ms): {result}; folded after {folded:?}, \
         whole test {:?}; screenshots in {}",
        started.elapsed(),
        artifacts.display()
    );
}

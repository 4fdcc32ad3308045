//! Prometheus in tests: `promtool check metrics` on an exposition, and a real Prometheus
//! server scraping a target. scripts/test.sh installs Debian's `prometheus` package.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `promtool check metrics` must accept the exposition (lint warnings are printed).
pub fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: run scripts/test.sh, which installs it");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool rejected the exposition: {said}"
    );
}

/// The value of one sample line (`name{labels} value`).
/// Every query of the Grafana dashboard (config/grafana/dashboards/mallquest.json).
pub fn dashboard_queries() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/grafana/dashboards/mallquest.json"
    );
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["expr"].as_str().unwrap().to_owned())
        })
        .collect()
}

pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("{series} not in exposition"))
}

/// Starts Prometheus scraping `target` every second, waits until `query` has a value,
/// then evaluates each of `also_valid` and requires Prometheus to accept it.
pub fn scrape_and_query(target: &str, query: &str, also_valid: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: mallquest\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let mut child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus not found: run scripts/test.sh, which installs it");
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    loop {
        if let Ok(r) = super::http::get(&addr, &format!("/api/v1/query?query={query}")) {
            last = String::from_utf8_lossy(&r.body).into_owned();
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            if v["data"]["result"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
            {
                let up = super::http::get(&addr, "/api/v1/query?query=up").unwrap();
                let up: serde_json::Value = serde_json::from_slice(&up.body).unwrap();
                assert_eq!(
                    up["data"]["result"][0]["value"][1], "1",
                    "scrape target not up: {up}"
                );
                for expr in also_valid {
                    let q: String = expr
                        .bytes()
                        .map(|b| match b {
                            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                                (b as char).to_string()
                            }
                            _ => format!("%{b:02X}"),
                        })
                        .collect();
                    let r = super::http::get(&addr, &format!("/api/v1/query?query={q}")).unwrap();
                    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                    assert_eq!(v["status"], "success", "Prometheus rejected {expr}: {v}");
                }
                break;
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("Prometheus never had {query}: {last}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let _ = child.kill();
    let _ = child.wait();
}

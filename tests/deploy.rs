//! compose.yaml, the Prometheus config and the Grafana provisioning agree with each other
//! and with the code (no Docker engine runs here, so this is how they are checked).

use std::collections::BTreeSet;
use std::path::Path;

use mallquest::config::Config;
use mallquest::telemetry::ALL_METRICS;
use serde_yaml::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut v: Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    // `<<: *anchor` merge keys, as docker compose reads them.
    v.apply_merge().unwrap_or_else(|e| panic!("{path}: {e}"));
    v
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

/// (host source, container target) of a service's bind mounts.
fn binds(service: &Value) -> Vec<(String, String)> {
    service["volumes"]
        .as_sequence()
        .map(|v| {
            v.iter()
                .filter_map(|m| {
                    let mut parts = s(m).split(':');
                    let src = parts.next()?.to_owned();
                    let dst = parts.next()?.to_owned();
                    src.starts_with("./").then_some((src, dst))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn ports(service: &Value) -> Vec<(u16, u16)> {
    service["ports"]
        .as_sequence()
        .map(|v| {
            v.iter()
                .map(|p| {
                    let (h, c) = s(p).split_once(':').unwrap();
                    (h.parse().unwrap(), c.parse().unwrap())
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn compose_services_files_and_ports_agree() {
    let compose = yaml("compose.yaml");
    let services = compose["services"].as_mapping().unwrap();
    let names: BTreeSet<&str> = services.keys().map(s).collect();
    let want: BTreeSet<&str> = [
        "kafka",
        "topics",
        "mallquest-1",
        "mallquest-2",
        "mallquest-3",
        "loadgen",
        "prometheus",
        "grafana",
    ]
    .into();
    assert_eq!(names, want);

    // depends_on names real services.
    for (name, svc) in services {
        if let Some(deps) = svc["depends_on"].as_mapping() {
            for d in deps.keys() {
                assert!(
                    names.contains(s(d)),
                    "{} depends on unknown {}",
                    s(name),
                    s(d)
                );
            }
        } else if let Some(deps) = svc["depends_on"].as_sequence() {
            for d in deps {
                assert!(
                    names.contains(s(d)),
                    "{} depends on unknown {}",
                    s(name),
                    s(d)
                );
            }
        }
        // Every bind-mounted file or directory exists.
        for (src, _) in binds(svc) {
            assert!(
                root().join(&src).exists(),
                "{} mounts missing {src}",
                s(name)
            );
        }
    }
    assert_eq!(
        s(&compose["services"]["kafka"]["image"]).split(':').next(),
        Some("apache/kafka")
    );
    assert!(root().join("Dockerfile").exists());

    // Three instances of one group: each with its own config, store volume, host port,
    // instance_id and an advertised address the others reach it at (its service name).
    let kafka_env = &compose["services"]["kafka"]["environment"];
    let mut seen = BTreeSet::new();
    let mut config = None;
    for name in ["mallquest-1", "mallquest-2", "mallquest-3"] {
        let svc = &compose["services"][name];
        assert_eq!(s(&svc["build"]), ".", "{name}");
        let (_, cfg_path) = binds(svc)
            .into_iter()
            .find(|(_, dst)| dst.ends_with(".toml"))
            .map(|(src, dst)| (dst, src))
            .unwrap();
        let c = Config::load(&root().join(&cfg_path)).unwrap();
        assert!(s(&kafka_env["KAFKA_ADVERTISED_LISTENERS"]).contains(&c.kafka.brokers));
        let api_port: u16 = c.http.listen.rsplit(':').next().unwrap().parse().unwrap();
        assert!(
            ports(svc).iter().any(|(_, inside)| *inside == api_port),
            "{name}"
        );
        assert_eq!(c.http.advertised(), format!("{name}:{api_port}"), "{name}");
        let id = c
            .kafka
            .instance_id
            .clone()
            .expect("each instance has an instance_id");
        let host_port = ports(svc)[0].0;
        let volume = svc["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(s)
            .find(|v| v.ends_with(":/data"))
            .unwrap()
            .to_owned();
        assert!(
            seen.insert(("id", id))
                && seen.insert(("port", host_port.to_string()))
                && seen.insert(("volume", volume)),
            "{name} shares an instance_id, host port or store volume"
        );
        let command: Vec<&str> = svc["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(s)
            .collect();
        assert_eq!(command[..2], ["run", "--config"]);
        assert!(binds(svc).iter().any(|(_, d)| d == command[2]));
        if let Some(first) = &config {
            let first: &Config = first;
            assert_eq!(first.kafka.group_id, c.kafka.group_id, "one group");
            assert_eq!(first.kafka.receipts_topic, c.kafka.receipts_topic);
        }
        config = Some(c);
    }
    let config = config.unwrap();
    let api_port: u16 = config
        .http
        .listen
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();

    // The topics service creates every configured topic, the projections one compacted.
    let script = s(&compose["services"]["topics"]["command"][0]);
    for t in [
        &config.kafka.receipts_topic,
        &config.kafka.events_topic,
        &config.kafka.dlq_topic,
    ] {
        assert!(
            script.contains(&format!("--topic {t} ")),
            "topic {t} not created"
        );
    }
    let proj = script
        .lines()
        .find(|l| l.contains(&format!("--topic {} ", config.kafka.projections_topic)))
        .unwrap();
    assert!(proj.contains("cleanup.policy=compact"));
    // The changelog: compacted, as many partitions as the receipts topic; the membership
    // topic compacted.
    let partitions_of = |topic: &str| {
        let line = script
            .lines()
            .find(|l| l.contains(&format!("--topic {topic} ")))
            .unwrap_or_else(|| panic!("topic {topic} not created"));
        let n = line.split("--partitions ").nth(1).unwrap();
        (
            line.to_owned(),
            n.split_whitespace().next().unwrap().to_owned(),
        )
    };
    let (changelog, n) = partitions_of(&config.kafka.changelog_topic());
    assert!(changelog.contains("cleanup.policy=compact"));
    assert_eq!(n, partitions_of(&config.kafka.receipts_topic).1);
    assert!(partitions_of(&config.kafka.members_topic())
        .0
        .contains("cleanup.policy=compact"));

    // The load generator talks to the same broker.
    let loadgen = compose["services"]["loadgen"]["command"]
        .as_sequence()
        .unwrap();
    let i = loadgen.iter().position(|v| s(v) == "--brokers").unwrap();
    assert_eq!(s(&loadgen[i + 1]), config.kafka.brokers);

    // Prometheus scrapes every instance's API port by service name.
    let prom = yaml("config/prometheus.yml");
    let targets: Vec<&str> = prom["scrape_configs"][0]["static_configs"][0]["targets"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    assert_eq!(
        targets,
        (1..=3)
            .map(|i| format!("mallquest-{i}:{api_port}"))
            .collect::<Vec<_>>()
    );
    assert!(binds(&compose["services"]["prometheus"])
        .iter()
        .any(|(src, _)| src == "./config/prometheus.yml"));

    // Grafana's datasource points at the prometheus service; dashboards are mounted where
    // the provider looks.
    let ds = yaml("config/grafana/provisioning/datasources/prometheus.yml");
    let url = s(&ds["datasources"][0]["url"]);
    let prom_port = ports(&compose["services"]["prometheus"])[0].1;
    assert_eq!(url, format!("http://prometheus:{prom_port}"));
    let provider = yaml("config/grafana/provisioning/dashboards/mallquest.yml");
    let path = s(&provider["providers"][0]["options"]["path"]);
    assert!(binds(&compose["services"]["grafana"])
        .iter()
        .any(|(src, dst)| src == "./config/grafana/dashboards" && dst == path));
}

#[test]
fn every_dashboard_query_uses_only_exported_metrics() {
    let text =
        std::fs::read_to_string(root().join("config/grafana/dashboards/mallquest.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ds = yaml("config/grafana/provisioning/datasources/prometheus.yml");
    let uid = s(&ds["datasources"][0]["uid"]).to_owned();
    // mallquest's own metrics, and the standard process metrics it exports.
    let name = regex::Regex::new(r"\b(?:mallquest|process)_[a-z_]+").unwrap();
    let mut used = BTreeSet::new();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 9);
    for p in panels {
        assert_eq!(p["datasource"]["uid"], uid.as_str(), "panel {}", p["title"]);
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let found: Vec<&str> = name.find_iter(expr).map(|m| m.as_str()).collect();
            assert!(
                !found.is_empty(),
                "panel {} queries no metric of mallquest's",
                p["title"]
            );
            for m in found {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suf| m.strip_suffix(suf))
                    .unwrap_or(m);
                assert!(
                    ALL_METRICS.contains(&base),
                    "panel {} uses {m}, which the code does not export",
                    p["title"]
                );
                used.insert(base.to_owned());
            }
        }
    }
    // The panels the issue asks for are all there.
    for needed in [
        "mallquest_receipts_total",
        "mallquest_rejected_total",
        "mallquest_consumer_lag",
        "mallquest_batch_duration_seconds",
        "mallquest_event_age_seconds",
        "mallquest_coins_awarded_total",
        "mallquest_coins_reversed_total",
        "mallquest_level_ups_total",
        "mallquest_campaign_coins_total",
        "mallquest_coins_redeemed_total",
        "mallquest_missions_completed_total",
        "mallquest_badges_earned_total",
        "mallquest_http_request_duration_seconds",
        "mallquest_http_requests_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(used.contains(needed), "no panel shows {needed}");
    }
}

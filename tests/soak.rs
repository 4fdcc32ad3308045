//! The long run (scripts/soak.sh): receipts at a steady rate for twenty minutes while the
//! API is queried, with the processor's RSS, lag, CPU and memory gauges sampled every 30 s;
//! then the check that RSS levelled off, and the exactness check against the reference
//! fold. `MALLQUEST_SOAK_SECS`, `MALLQUEST_SOAK_RATE`, `MALLQUEST_SOAK_USERS`,
//! `MALLQUEST_SOAK_CACHE_MB` and `MALLQUEST_SOAK_WRITE_BUFFER_MB` change the duration, the
//! rate, the users, the block cache and the memtable budget.
//!
//! Levelling off: the process's memory is its bounded parts filling up (the block cache,
//! whose heap is about 1.3 times its `cache_mb` weight; the memtables; the hot set) plus a
//! steady remainder (docs/benchmarks-history.md 3, "Where the soak's memory goes"). The
//! first half is the warm-up; the peak RSS of the last quarter must be within 5% of the
//! third quarter's (peaks, because RSS saws up and down with every memtable flush). The
//! default 256 MiB cache takes far longer than twenty minutes to fill at this rate, so the
//! soak runs with `cache_mb = 32` unless `MALLQUEST_SOAK_CACHE_MB` says otherwise.
//!
//! On Apache Kafka, as in production: the projections topic is created compacted (by
//! mallquest itself), and the consumer fetches with librdkafka's defaults.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mallquest::sim::{Mix, Simulator};
use support::broker::Broker;
use support::processor::{write_config_with, Run};
use support::streams::{last_per_key, reference_of, take};

fn env(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// The sum of the samples of `metric` (every label set) in a `/metrics` exposition.
fn metric(exposition: &str, metric: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
#[ignore = "twenty minutes; run by scripts/soak.sh"]
fn steady_load_with_queries_levels_off_and_ends_exact() {
    let secs = env("MALLQUEST_SOAK_SECS", 1200);
    // 250/s, as every soak since 2026-11-26 ran (on Tansu, which could not serve 600,000
    // receipts back at 500/s), so that the figures stay comparable.
    let rate = env("MALLQUEST_SOAK_RATE", 250);
    let users = env("MALLQUEST_SOAK_USERS", 200_000);
    let broker = Broker::start();
    broker.create_topic("receipts", 3, false);
    let dir = tempfile::tempdir().unwrap();
    // `[store] cache_mb` (default 256): RSS grows until the block cache is full, which at
    // this rate takes far longer than the soak; 32 MiB is full within its first half.
    let mut store_lines = format!("cache_mb = {}\n", env("MALLQUEST_SOAK_CACHE_MB", 32));
    if let Ok(mb) = std::env::var("MALLQUEST_SOAK_WRITE_BUFFER_MB") {
        store_lines.push_str(&format!(
            "write_buffer_mb = {}\n",
            mb.parse::<u64>().unwrap()
        ));
    }
    let (config, _store, http) =
        write_config_with(dir.path(), &broker.bootstrap(), "", &store_lines, "");
    let mut run = Run::new(config, _store);
    run.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    while support::http::get(&http, "/healthz").map(|r| r.status).ok() != Some(200) {
        assert!(
            Instant::now() < deadline,
            "the API never came up\n{}",
            run.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The POS: `rate` receipts a second, in tenths of a second.
    let total = (secs * rate) as usize;
    let producer = {
        let client = broker.client();
        std::thread::spawn(move || {
            let mut sim = Simulator::new(99, users, 40, Mix::default());
            let chunk = (rate / 10).max(1) as usize;
            let started = Instant::now();
            let mut sent = 0usize;
            while sent < total {
                let n = chunk.min(total - sent);
                client.produce("receipts", &take(&mut sim, n));
                sent += n;
                // Keep to the schedule rather than to a sleep per chunk.
                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                std::thread::sleep(due.saturating_sub(started.elapsed()));
            }
        })
    };
    // Shoppers asking for their stats and the leaderboard, as fast as answers come.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let queries = {
        let (stop, ok, bad, http) = (
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&bad),
            http.clone(),
        );
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let path = if i % 5 == 0 {
                    "/v1/leaderboard?by=coins&limit=10".to_owned()
                } else {
                    format!("/v1/users/{}", Simulator::user_id(i * 7919 % users))
                };
                match support::http::get(&http, &path).map(|r| r.status) {
                    Ok(200 | 404) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => bad.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let started = Instant::now();
    let mut samples = Vec::new();
    while !producer.is_finished() {
        std::thread::sleep(Duration::from_secs(30));
        assert!(run.is_running(), "exited\n{}", run.log());
        // One scrape per sample; a failed one shows as -1 throughout.
        let exposition = support::http::get(&http, "/metrics")
            .ok()
            .map(|r| String::from_utf8_lossy(&r.body).into_owned());
        let value = |m| exposition.as_deref().map(|e| metric(e, m));
        let sample = (
            started.elapsed().as_secs(),
            run.rss_kib(),
            value("mallquest_consumer_lag").unwrap_or(-1.0),
            run.cpu_seconds(),
        );
        let mib = |m| value(m).map_or(-1.0, |b| b / f64::from(1 << 20));
        eprintln!(
            "t={:>4}s rss={:>7} KiB lag={:>6} cpu={:.1}s queries ok={} bad={} \
             block cache={:.0} MiB memtables={:.0} MiB store={:.0} MiB \
             allocated={:.0} MiB allocator resident={:.0} MiB file-backed={} KiB",
            sample.0,
            sample.1,
            sample.2,
            sample.3,
            ok.load(Ordering::Relaxed),
            bad.load(Ordering::Relaxed),
            mib("mallquest_store_cache_bytes"),
            mib("mallquest_store_write_buffer_bytes"),
            mib("mallquest_store_bytes"),
            mib("mallquest_allocator_allocated_bytes"),
            mib("mallquest_allocator_resident_bytes"),
            run.status_kib("RssFile:"),
        );
        samples.push(sample);
    }
    producer.join().unwrap();

    // Exactness: everything produced, folded once.
    let receipts = broker.read_all("receipts");
    assert_eq!(receipts.len(), total);
    let expected = reference_of(&receipts);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let projections = last_per_key(&broker.read_all("user-projections"));
        if projections == expected.projections {
            break;
        }
        assert!(Instant::now() < deadline, "projections never matched");
        std::thread::sleep(Duration::from_secs(5));
    }
    stop.store(true, Ordering::Relaxed);
    queries.join().unwrap();
    let final_rss = run.rss_kib();
    let status = run.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit {status:?}\n{}", run.log());

    let queries_ok = ok.load(Ordering::Relaxed);
    let queries_bad = bad.load(Ordering::Relaxed);
    let max = samples.iter().map(|s| s.1).max().unwrap_or(0);
    // Levelled off: after the warm-up (the first half), the peak of the last quarter is
    // within 5% of the peak of the third.
    let peak = |from: usize, to: usize| {
        samples[samples.len() * from / 4..samples.len() * to / 4]
            .iter()
            .map(|s| s.1)
            .max()
            .unwrap_or(0)
    };
    let (third, last) = (peak(2, 3), peak(3, 4));
    let growth = (last as f64 / third as f64 - 1.0) * 100.0;
    eprintln!(
        "soak: {total} receipts over {secs} s at {rate}/s, {} users; {queries_ok} queries \
         answered, {queries_bad} failed; peak RSS {third} KiB in the third quarter, {last} \
         KiB in the last ({growth:+.1}%), max {max} KiB, at the end {final_rss} KiB",
        expected.projections.len(),
    );
    assert_eq!(queries_bad, 0, "API queries failed during the soak");
    assert!(queries_ok > 0);
    assert!(
        samples.len() >= 8,
        "too short to tell: {} samples",
        samples.len()
    );
    assert!(
        growth < 5.0,
        "RSS did not level off: peak {third} KiB in the third quarter, {last} KiB in the last"
    );
    // Bounded: far under the 512 MiB target.
    assert!(max < 512 * 1024, "RSS reached {max} KiB");
}

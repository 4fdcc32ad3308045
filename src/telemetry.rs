//! Every observable event: its metric and its log line, as named functions.
//! Metric names live here and nowhere else.

use std::time::Duration;

use metrics::{counter, gauge, histogram};
use tracing::{debug, info, warn};

use crate::domain::Reject;
use crate::pipeline::BatchStats;

/// Receipts by outcome (`applied`, `duplicate`, `rejected`).
pub const RECEIPTS_TOTAL: &str = "mallquest_receipts_total";
/// Rejected receipts by reason.
pub const REJECTED_TOTAL: &str = "mallquest_rejected_total";
/// Coins granted (purchases and level bonuses).
pub const COINS_AWARDED_TOTAL: &str = "mallquest_coins_awarded_total";
/// Coins taken back by refunds.
pub const COINS_REVERSED_TOTAL: &str = "mallquest_coins_reversed_total";
/// Levels gained.
pub const LEVEL_UPS_TOTAL: &str = "mallquest_level_ups_total";
/// Coins granted by campaigns (refunds' reversals not subtracted).
pub const CAMPAIGN_COINS_TOTAL: &str = "mallquest_campaign_coins_total";
/// Coins spent by redemptions (reversals not subtracted).
pub const COINS_REDEEMED_TOTAL: &str = "mallquest_coins_redeemed_total";
/// Mission instances completed.
pub const MISSIONS_COMPLETED_TOTAL: &str = "mallquest_missions_completed_total";
/// Mission rewards revoked by refunds.
pub const MISSIONS_REVOKED_TOTAL: &str = "mallquest_missions_revoked_total";
/// Badges earned.
pub const BADGES_EARNED_TOTAL: &str = "mallquest_badges_earned_total";
/// Coins removed by expiry (`[expiry]`).
pub const COINS_EXPIRED_TOTAL: &str = "mallquest_coins_expired_total";
/// Tier changes (`[tiers]`), by the tier moved to (`to="none"`: no tier).
pub const TIER_CHANGES_TOTAL: &str = "mallquest_tier_changes_total";
/// Coins held by the users of the partitions this instance holds, by the mall-local
/// month whose start is their expiry (`expiry_month="never"`: coins in no lot).
pub const LIABILITY_OUTSTANDING_COINS: &str = "mallquest_liability_outstanding_coins";
/// What those users owe (negative balances, negated).
pub const LIABILITY_DEBT_COINS: &str = "mallquest_liability_debt_coins";
/// Coins those users have had expire, ever.
pub const LIABILITY_EXPIRED_COINS: &str = "mallquest_liability_expired_coins";
/// Coins those users have redeemed, net of reversals.
pub const LIABILITY_REDEEMED_COINS: &str = "mallquest_liability_redeemed_coins";
/// Time to publish and persist one batch.
pub const BATCH_DURATION_SECONDS: &str = "mallquest_batch_duration_seconds";
/// Failed commits (publish or store) and pauses for disk space (disk), by stage.
pub const COMMIT_FAILURES_TOTAL: &str = "mallquest_commit_failures_total";
/// Kafka client errors seen by the consumer.
pub const KAFKA_ERRORS_TOTAL: &str = "mallquest_kafka_errors_total";
/// Bytes of the store on disk.
pub const STORE_BYTES: &str = "mallquest_store_bytes";
/// Users of the partitions this instance holds (all, for a standalone store), exact.
pub const USERS: &str = "mallquest_users";
/// Bytes the boards in memory hold, by structure (`ids`, `all_time`, `periods`).
pub const BOARD_BYTES: &str = "mallquest_board_bytes";
/// Ledger entries indexed (the dedup window, expired ones not yet dropped included).
pub const LEDGER_ENTRIES: &str = "mallquest_ledger_entries";
/// Heap bytes of the ledger's index in memory.
pub const LEDGER_BYTES: &str = "mallquest_ledger_bytes";
/// Bytes held by the store's block cache (at most `[store] cache_mb`).
pub const STORE_CACHE_BYTES: &str = "mallquest_store_cache_bytes";
/// Bytes held by the store's memtables, active and sealed (those waiting for a flush).
pub const STORE_WRITE_BUFFER_BYTES: &str = "mallquest_store_write_buffer_bytes";
/// Histogram: a processor commit's wait for the store's flushes (only commits that waited).
pub const STORE_WRITE_STALL_SECONDS: &str = "mallquest_store_write_stall_seconds";
/// Bytes the process's allocator (jemalloc) has handed out and not had back.
pub const ALLOCATOR_ALLOCATED_BYTES: &str = "mallquest_allocator_allocated_bytes";
/// Bytes of resident memory the allocator holds (allocated plus its own free pages).
pub const ALLOCATOR_RESIDENT_BYTES: &str = "mallquest_allocator_resident_bytes";
/// Processing time minus a receipt's issued_at.
pub const EVENT_AGE_SECONDS: &str = "mallquest_event_age_seconds";
/// Records not yet folded, per partition held: from the next offset to fold to the
/// partition's last stable offset (its high watermark for a `read_uncommitted` consumer).
pub const CONSUMER_LAG: &str = "mallquest_consumer_lag";
/// HTTP requests by route pattern and status.
pub const HTTP_REQUESTS_TOTAL: &str = "mallquest_http_requests_total";
/// HTTP request latency by route pattern.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "mallquest_http_request_duration_seconds";
/// Connections closed on accept because `[http] max_connections` were open.
pub const HTTP_CONNECTIONS_REFUSED_TOTAL: &str = "mallquest_http_connections_refused_total";
/// Whether the broker is reachable (1) or not (0), as the consumer last saw it.
pub const BROKER_UP: &str = "mallquest_broker_up";

/// Changelog records read back into the store by restores.
pub const RESTORE_RECORDS_TOTAL: &str = "mallquest_restore_records_total";
/// Partitions being restored from the changelog now.
pub const RESTORING_PARTITIONS: &str = "mallquest_restoring_partitions";
/// Changelog records copied into the store for partitions kept warm as a standby.
pub const STANDBY_RECORDS_TOTAL: &str = "mallquest_standby_records_total";
/// Partitions this instance keeps warm as a standby now.
pub const STANDBY_PARTITIONS: &str = "mallquest_standby_partitions";
/// Revocations, by what became of the batch in hand (`batch="committed|dropped"`).
pub const REVOCATIONS_TOTAL: &str = "mallquest_revocations_total";

/// The standard process metrics, under the names every Prometheus client library exports
/// them by (so that the usual dashboards and alerts find them). They are written by the
/// `metrics-process` crate, which names them itself: these constants name them for the
/// tests and the dashboard.
///
/// CPU seconds (user and system) the process has used; a counter, so whole seconds.
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "process_cpu_seconds_total";
/// Resident memory (RSS).
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "process_resident_memory_bytes";
/// Virtual memory size.
pub const PROCESS_VIRTUAL_MEMORY_BYTES: &str = "process_virtual_memory_bytes";
/// The address-space limit (`RLIMIT_AS`).
pub const PROCESS_VIRTUAL_MEMORY_MAX_BYTES: &str = "process_virtual_memory_max_bytes";
/// Open file descriptors.
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
/// The open file descriptor limit (`RLIMIT_NOFILE`).
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
/// When the process started, in seconds since the Unix epoch.
pub const PROCESS_START_TIME_SECONDS: &str = "process_start_time_seconds";
/// OS threads of the process.
pub const PROCESS_THREADS: &str = "process_threads";

/// Every metric name this module exports (the dashboard test checks against it).
pub const ALL_METRICS: [&str; 48] = [
    RECEIPTS_TOTAL,
    REJECTED_TOTAL,
    COINS_AWARDED_TOTAL,
    COINS_REVERSED_TOTAL,
    LEVEL_UPS_TOTAL,
    CAMPAIGN_COINS_TOTAL,
    COINS_REDEEMED_TOTAL,
    MISSIONS_COMPLETED_TOTAL,
    MISSIONS_REVOKED_TOTAL,
    BADGES_EARNED_TOTAL,
    COINS_EXPIRED_TOTAL,
    TIER_CHANGES_TOTAL,
    LIABILITY_OUTSTANDING_COINS,
    LIABILITY_DEBT_COINS,
    LIABILITY_EXPIRED_COINS,
    LIABILITY_REDEEMED_COINS,
    BATCH_DURATION_SECONDS,
    COMMIT_FAILURES_TOTAL,
    KAFKA_ERRORS_TOTAL,
    STORE_BYTES,
    USERS,
    BOARD_BYTES,
    LEDGER_ENTRIES,
    LEDGER_BYTES,
    STORE_CACHE_BYTES,
    STORE_WRITE_BUFFER_BYTES,
    STORE_WRITE_STALL_SECONDS,
    ALLOCATOR_ALLOCATED_BYTES,
    ALLOCATOR_RESIDENT_BYTES,
    EVENT_AGE_SECONDS,
    CONSUMER_LAG,
    HTTP_REQUESTS_TOTAL,
    HTTP_REQUEST_DURATION_SECONDS,
    HTTP_CONNECTIONS_REFUSED_TOTAL,
    BROKER_UP,
    RESTORE_RECORDS_TOTAL,
    RESTORING_PARTITIONS,
    STANDBY_RECORDS_TOTAL,
    STANDBY_PARTITIONS,
    REVOCATIONS_TOTAL,
    PROCESS_CPU_SECONDS_TOTAL,
    PROCESS_RESIDENT_MEMORY_BYTES,
    PROCESS_VIRTUAL_MEMORY_BYTES,
    PROCESS_VIRTUAL_MEMORY_MAX_BYTES,
    PROCESS_OPEN_FDS,
    PROCESS_MAX_FDS,
    PROCESS_START_TIME_SECONDS,
    PROCESS_THREADS,
];

/// The collector of the process metrics (its names allocated once).
fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: std::sync::OnceLock<metrics_process::Collector> = std::sync::OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Installs the Prometheus recorder with histogram buckets for every histogram, once per
/// process: a later call (a service started again in-process, as tests do) gets the same
/// handle.
pub fn install_prometheus() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    static INSTALLED: std::sync::Mutex<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::Mutex::new(None);
    let mut installed = INSTALLED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(h) = installed.as_ref() {
        return Ok(h.clone());
    }
    let handle = install_recorder()?;
    *installed = Some(handle.clone());
    Ok(handle)
}

fn install_recorder() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let latency = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ];
    let age = [
        0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 86400.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(BATCH_DURATION_SECONDS.into()), &latency)?
        .set_buckets_for_metric(
            Matcher::Full(HTTP_REQUEST_DURATION_SECONDS.into()),
            &latency,
        )?
        .set_buckets_for_metric(Matcher::Full(EVENT_AGE_SECONDS.into()), &age)?
        .set_buckets_for_metric(
            Matcher::Full(STORE_WRITE_STALL_SECONDS.into()),
            &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
        )?
        .install_recorder()?;
    describe();
    process_collector().describe();
    process_sampled();
    // Zero the counters so that they show before the first increment.
    for r in Reject::ALL {
        counter!(REJECTED_TOTAL, "reason" => r.as_str()).increment(0);
    }
    for o in ["applied", "duplicate", "rejected"] {
        counter!(RECEIPTS_TOTAL, "outcome" => o).increment(0);
    }
    counter!(COINS_AWARDED_TOTAL).increment(0);
    counter!(COINS_REVERSED_TOTAL).increment(0);
    counter!(LEVEL_UPS_TOTAL).increment(0);
    counter!(RESTORE_RECORDS_TOTAL).increment(0);
    gauge!(RESTORING_PARTITIONS).set(0.0);
    counter!(STANDBY_RECORDS_TOTAL).increment(0);
    gauge!(STANDBY_PARTITIONS).set(0.0);
    for b in ["committed", "dropped"] {
        counter!(REVOCATIONS_TOTAL, "batch" => b).increment(0);
    }
    Ok(handle)
}

/// HELP text of every metric.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        CAMPAIGN_COINS_TOTAL,
        "Coins granted by campaigns (refunds' reversals not subtracted)."
    );
    describe_counter!(
        COINS_REDEEMED_TOTAL,
        "Coins spent by redemptions (reversals not subtracted)."
    );
    describe_counter!(MISSIONS_COMPLETED_TOTAL, "Mission instances completed.");
    describe_counter!(
        MISSIONS_REVOKED_TOTAL,
        "Mission rewards revoked by refunds."
    );
    describe_counter!(BADGES_EARNED_TOTAL, "Badges earned.");
    describe_counter!(
        COINS_EXPIRED_TOTAL,
        "Coins removed by expiry ([expiry]): what was left of each lot at its expiry."
    );
    describe_counter!(
        TIER_CHANGES_TOTAL,
        "Status tier changes ([tiers]), by the tier moved to (to=\"none\": no tier)."
    );
    describe_gauge!(
        LIABILITY_OUTSTANDING_COINS,
        "Coins held by the users of the partitions this instance holds, by the mall-local month whose start is their expiry (expiry_month=\"never\": coins in no lot). Summed over instances: GET /v1/stats/coins."
    );
    describe_gauge!(
        LIABILITY_DEBT_COINS,
        "What the users of the partitions this instance holds owe: negative balances, negated."
    );
    describe_gauge!(
        LIABILITY_EXPIRED_COINS,
        "Coins the users of the partitions this instance holds have had expire, ever."
    );
    describe_gauge!(
        LIABILITY_REDEEMED_COINS,
        "Coins the users of the partitions this instance holds have redeemed, net of reversals."
    );
    describe_counter!(
        RECEIPTS_TOTAL,
        "Receipts folded, by outcome (applied, duplicate, rejected)."
    );
    describe_counter!(
        REJECTED_TOTAL,
        "Receipts sent to the dead-letter topic, by reason."
    );
    describe_counter!(
        COINS_AWARDED_TOTAL,
        "Coins granted by purchases and level-up bonuses."
    );
    describe_counter!(COINS_REVERSED_TOTAL, "Coins taken back by refunds.");
    describe_counter!(LEVEL_UPS_TOTAL, "Levels gained by shoppers.");
    describe_histogram!(
        BATCH_DURATION_SECONDS,
        Unit::Seconds,
        "Time to publish and persist one batch."
    );
    describe_counter!(
        COMMIT_FAILURES_TOTAL,
        "Commits that failed and were replayed, by stage (publish, store; disk: paused for space)."
    );
    describe_counter!(KAFKA_ERRORS_TOTAL, "Errors reported by the Kafka client.");
    describe_gauge!(STORE_BYTES, Unit::Bytes, "Bytes of the store on disk.");
    describe_gauge!(
        STORE_CACHE_BYTES,
        Unit::Bytes,
        "Bytes held by the store's block cache (at most [store] cache_mb)."
    );
    describe_gauge!(
        STORE_WRITE_BUFFER_BYTES,
        Unit::Bytes,
        "Bytes held by the store's memtables, including sealed ones waiting for a flush."
    );
    describe_histogram!(
        STORE_WRITE_STALL_SECONDS,
        Unit::Seconds,
        "Time a commit waited for the store's memtables to be flushed under their bound (4 x [store] write_buffer_mb); only commits that waited."
    );
    describe_gauge!(
        ALLOCATOR_ALLOCATED_BYTES,
        Unit::Bytes,
        "Heap bytes in use, as jemalloc counts them."
    );
    describe_gauge!(
        ALLOCATOR_RESIDENT_BYTES,
        Unit::Bytes,
        "Resident bytes jemalloc holds: the heap in use plus its free pages not yet returned."
    );
    describe_gauge!(USERS, "Users of the partitions this instance holds, exact.");
    describe_gauge!(
        BOARD_BYTES,
        Unit::Bytes,
        "Bytes the leaderboards in memory hold, by structure: ids (interned user ids), all_time and periods (board entries)."
    );
    describe_gauge!(
        LEDGER_ENTRIES,
        "Ledger entries indexed: the dedup window (expired ones not yet dropped included)."
    );
    describe_gauge!(
        LEDGER_BYTES,
        Unit::Bytes,
        "Heap bytes of the ledger's index in memory (its entries are on disk)."
    );
    describe_histogram!(
        EVENT_AGE_SECONDS,
        Unit::Seconds,
        "Processing time minus the receipt's issued_at."
    );
    describe_gauge!(
        CONSUMER_LAG,
        "Records not yet folded, per partition held: up to the last stable offset (what a read_committed consumer can read); 0 for a partition given up."
    );
    describe_counter!(HTTP_REQUESTS_TOTAL, "HTTP requests by route and status.");
    describe_counter!(
        HTTP_CONNECTIONS_REFUSED_TOTAL,
        "HTTP connections closed on accept because the connection limit was reached."
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "HTTP request latency by route."
    );
    describe_gauge!(
        BROKER_UP,
        "1 when the consumer's broker connection is up, else 0."
    );
    describe_counter!(
        RESTORE_RECORDS_TOTAL,
        "Changelog records read back into the store by restores."
    );
    describe_gauge!(
        RESTORING_PARTITIONS,
        "Partitions being restored from the changelog now."
    );
    describe_counter!(
        STANDBY_RECORDS_TOTAL,
        "Changelog records copied into the store for partitions kept warm as a standby."
    );
    describe_gauge!(
        STANDBY_PARTITIONS,
        "Partitions this instance keeps warm as a standby now."
    );
    describe_counter!(
        REVOCATIONS_TOTAL,
        "Partition revocations, by whether the batch in hand was committed first or dropped."
    );
}

/// An HTTP request finished.
pub fn http_request(route: &'static str, status: u16, took: Duration) {
    counter!(HTTP_REQUESTS_TOTAL, "route" => route, "status" => status.to_string()).increment(1);
    histogram!(HTTP_REQUEST_DURATION_SECONDS, "route" => route).record(took.as_secs_f64());
}

/// `n` connections were closed on accept (0: make the series exist).
pub fn http_connections_refused(n: u64) {
    counter!(HTTP_CONNECTIONS_REFUSED_TOTAL).increment(n);
}

/// A receipt was folded `age` after it was issued.
pub fn event_age(age_seconds: f64) {
    histogram!(EVENT_AGE_SECONDS).record(age_seconds.max(0.0));
}

/// A held partition's lag, measured at the client's statistics interval.
pub fn consumer_lag(partition: i32, lag: i64) {
    gauge!(CONSUMER_LAG, "partition" => partition.to_string()).set(lag.max(0) as f64);
}

/// Partitions given up: their lag here is 0 from now on (the recorder cannot remove a
/// series), so that a sum over instances counts each partition's lag once, at its owner.
pub fn consumer_lag_released(partitions: &[i32]) {
    for p in partitions {
        gauge!(CONSUMER_LAG, "partition" => p.to_string()).set(0.0);
    }
}

/// Whether the broker answered lately.
pub fn broker_up(up: bool) {
    gauge!(BROKER_UP).set(if up { 1.0 } else { 0.0 });
}

/// A receipt went to the dead-letter topic.
pub fn receipt_rejected(reason: Reject, partition: i32, offset: i64) {
    debug!(
        message = "Receipt rejected.",
        reason = reason.as_str(),
        partition,
        offset
    );
}

/// The store's sizes (disk, block cache, memtables, the boards by structure), sampled when
/// `/metrics` is scraped rather than at every commit: the boards' size walks every block
/// of every board (about a million at 10,000,000 users).
pub fn store_sampled(store: &crate::store::Store) {
    gauge!(STORE_BYTES).set(store.disk_bytes() as f64);
    let memory = store.memory();
    gauge!(STORE_CACHE_BYTES).set(memory.cache_bytes as f64);
    gauge!(STORE_WRITE_BUFFER_BYTES).set(memory.write_buffer_bytes as f64);
    let boards = store.board_bytes();
    gauge!(BOARD_BYTES, "structure" => "ids").set(boards.ids as f64);
    gauge!(BOARD_BYTES, "structure" => "all_time").set(boards.all_time as f64);
    gauge!(BOARD_BYTES, "structure" => "periods").set(boards.periods as f64);
    let ledger = store.ledger_memory();
    gauge!(LEDGER_ENTRIES).set(ledger.entries as f64);
    gauge!(LEDGER_BYTES).set(ledger.bytes as f64);
}

/// The coin liability of the partitions held here, sampled when `/metrics` is scraped:
/// coins held by expiry month (`never`: in no lot), debt, expired and redeemed. A month
/// sampled before and gone now reads 0.
pub fn liability_sampled(
    by_expiry_month: &std::collections::BTreeMap<String, i128>,
    outside_lots: i128,
    debt: i128,
    expired: i128,
    redeemed: i128,
) {
    static MONTHS: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut months = MONTHS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for gone in months.iter().filter(|m| !by_expiry_month.contains_key(*m)) {
        gauge!(LIABILITY_OUTSTANDING_COINS, "expiry_month" => gone.clone()).set(0.0);
    }
    months.clone_from(&by_expiry_month.keys().cloned().collect());
    for (month, coins) in by_expiry_month {
        gauge!(LIABILITY_OUTSTANDING_COINS, "expiry_month" => month.clone()).set(*coins as f64);
    }
    gauge!(LIABILITY_OUTSTANDING_COINS, "expiry_month" => "never").set(outside_lots as f64);
    gauge!(LIABILITY_DEBT_COINS).set(debt as f64);
    gauge!(LIABILITY_EXPIRED_COINS).set(expired as f64);
    gauge!(LIABILITY_REDEEMED_COINS).set(redeemed as f64);
}

/// A batch was published and persisted.
///
/// The receipt counters count committed batches only: a batch folded again after a failed
/// commit (or dropped by a revocation) is counted once, when it is stored.
pub fn batch_committed(stats: &BatchStats, took: Duration, users: u64) {
    histogram!(BATCH_DURATION_SECONDS).record(took.as_secs_f64());
    counter!(RECEIPTS_TOTAL, "outcome" => "applied").increment(stats.applied);
    counter!(RECEIPTS_TOTAL, "outcome" => "duplicate").increment(stats.duplicates);
    for (reason, n) in &stats.rejected {
        counter!(RECEIPTS_TOTAL, "outcome" => "rejected").increment(*n);
        counter!(REJECTED_TOTAL, "reason" => reason.as_str()).increment(*n);
    }
    counter!(COINS_AWARDED_TOTAL).increment(stats.coins_awarded);
    counter!(COINS_REVERSED_TOTAL).increment(stats.coins_reversed);
    counter!(LEVEL_UPS_TOTAL).increment(stats.levels);
    counter!(CAMPAIGN_COINS_TOTAL).increment(stats.campaign_coins);
    counter!(COINS_REDEEMED_TOTAL).increment(stats.coins_redeemed);
    counter!(MISSIONS_COMPLETED_TOTAL).increment(stats.missions_completed);
    counter!(MISSIONS_REVOKED_TOTAL).increment(stats.missions_revoked);
    counter!(BADGES_EARNED_TOTAL).increment(stats.badges_earned);
    counter!(COINS_EXPIRED_TOTAL).increment(stats.coins_expired);
    for (to, n) in &stats.tier_changes {
        let to = to.clone().unwrap_or_else(|| "none".to_owned());
        counter!(TIER_CHANGES_TOTAL, "to" => to).increment(*n);
    }
    self::users(users);
    debug!(
        message = "Batch committed.",
        records = stats.records,
        applied = stats.applied,
        duplicates = stats.duplicates,
        users = stats.users_published,
        took_ms = took.as_millis() as u64
    );
}

/// Samples jemalloc's own counts (refreshed by advancing its statistics epoch), when
/// `/metrics` is scraped rather than on the fold's path. Where jemalloc is not the global
/// allocator (the library's tests) they stay near zero.
pub fn allocator_sampled() {
    use tikv_jemalloc_ctl::{epoch, stats};
    if epoch::advance().is_err() {
        return;
    }
    if let (Ok(allocated), Ok(resident)) = (stats::allocated::read(), stats::resident::read()) {
        gauge!(ALLOCATOR_ALLOCATED_BYTES).set(allocated as f64);
        gauge!(ALLOCATOR_RESIDENT_BYTES).set(resident as f64);
    }
}

/// Samples the process metrics from `/proc/self` when `/metrics` is scraped, so that
/// they are as fresh as the scrape and cost nothing between scrapes.
pub fn process_sampled() {
    process_collector().collect();
}

/// A commit failed; the batch will be folded again after `backoff`.
pub fn commit_failed(error: &anyhow::Error, stage: &'static str, backoff: Duration) {
    counter!(COMMIT_FAILURES_TOTAL, "stage" => stage).increment(1);
    warn!(
        message = "Commit failed; replaying the batch from the stored offsets.",
        stage,
        error = format!("{error:#}"),
        backoff_ms = backoff.as_millis() as u64
    );
}

/// The Kafka client reported an error (broker down, request failed).
pub fn kafka_error(error: &dyn std::fmt::Display) {
    counter!(KAFKA_ERRORS_TOTAL).increment(1);
    broker_up(false);
    warn!(message = "Kafka client error.", error = %error);
}

/// A changelog reader's client reported an error event: the end of a partition, which a
/// restore reads to on purpose, or an error its poll loop also receives and reports through
/// [`kafka_error`]. DEBUG only, so that a normal restore never logs an ERROR.
pub fn changelog_reader_event(event: &dyn std::fmt::Display) {
    debug!(message = "Changelog reader event.", %event);
}

/// Partitions were assigned, each resuming at the given offset (`None` = beginning).
pub fn partitions_assigned(assigned: &[(i32, Option<i64>)], held: &[i32]) {
    info!(message = "Partitions assigned.", partitions = ?assigned, ?held);
}

/// A commit waited `waited` for the store's flushes (nothing is recorded for no wait).
pub fn write_stalled(waited: Duration) {
    if !waited.is_zero() {
        histogram!(STORE_WRITE_STALL_SECONDS).record(waited.as_secs_f64());
    }
}

/// Changelog records restored.
pub fn restore_records(n: u64) {
    counter!(RESTORE_RECORDS_TOTAL).increment(n);
}

/// Partitions being restored now.
pub fn restoring_partitions(n: usize) {
    gauge!(RESTORING_PARTITIONS).set(n as f64);
}

/// Users of the partitions held now.
pub fn users(n: u64) {
    gauge!(USERS).set(n as f64);
}

/// Changelog records copied into the store for standby partitions.
pub fn standby_records(n: u64) {
    counter!(STANDBY_RECORDS_TOTAL).increment(n);
}

/// Partitions kept warm as a standby now.
pub fn standby_partitions(n: usize) {
    gauge!(STANDBY_PARTITIONS).set(n as f64);
}

/// Partitions were revoked, after their batch in hand was committed (`Some(records)`)
/// or dropped (`None`: the assignment was lost, or the commit failed; it is folded again).
pub fn partitions_revoked(partitions: &[i32], held: &[i32], committed: Option<u64>) {
    let batch = if committed.is_some() {
        "committed"
    } else {
        "dropped"
    };
    counter!(REVOCATIONS_TOTAL, "batch" => batch).increment(1);
    info!(
        message = "Partitions revoked.",
        ?partitions,
        ?held,
        batch_in_hand = batch,
        records = committed.unwrap_or(0)
    );
}

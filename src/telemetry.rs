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
/// Time to publish and persist one batch.
pub const BATCH_DURATION_SECONDS: &str = "mallquest_batch_duration_seconds";
/// Failed commits (publish or store), by stage.
pub const COMMIT_FAILURES_TOTAL: &str = "mallquest_commit_failures_total";
/// Kafka client errors seen by the consumer.
pub const KAFKA_ERRORS_TOTAL: &str = "mallquest_kafka_errors_total";
/// Bytes of the store on disk.
pub const STORE_BYTES: &str = "mallquest_store_bytes";

/// A receipt went to the dead-letter topic.
pub fn receipt_rejected(reason: Reject, partition: i32, offset: i64) {
    counter!(RECEIPTS_TOTAL, "outcome" => "rejected").increment(1);
    counter!(REJECTED_TOTAL, "reason" => reason.as_str()).increment(1);
    debug!(
        message = "Receipt rejected.",
        reason = reason.as_str(),
        partition,
        offset
    );
}

/// An exact duplicate was ignored.
pub fn receipt_duplicate() {
    counter!(RECEIPTS_TOTAL, "outcome" => "duplicate").increment(1);
}

/// A receipt changed a user's state.
pub fn receipt_applied(coins_delta: i64) {
    counter!(RECEIPTS_TOTAL, "outcome" => "applied").increment(1);
    if coins_delta >= 0 {
        counter!(COINS_AWARDED_TOTAL).increment(coins_delta.unsigned_abs());
    } else {
        counter!(COINS_REVERSED_TOTAL).increment(coins_delta.unsigned_abs());
    }
}

/// A user gained `levels` levels.
pub fn level_up(levels: u64) {
    counter!(LEVEL_UPS_TOTAL).increment(levels);
}

/// A batch was published and persisted.
pub fn batch_committed(stats: &BatchStats, took: Duration, store_bytes: u64) {
    histogram!(BATCH_DURATION_SECONDS).record(took.as_secs_f64());
    gauge!(STORE_BYTES).set(store_bytes as f64);
    debug!(
        message = "Batch committed.",
        records = stats.records,
        applied = stats.applied,
        duplicates = stats.duplicates,
        users = stats.users_published,
        took_ms = took.as_millis() as u64
    );
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
    warn!(message = "Kafka client error.", error = %error);
}

/// Partitions were assigned, each resuming at the given offset (`None` = beginning).
pub fn partitions_assigned(assigned: &[(i32, Option<i64>)]) {
    info!(message = "Partitions assigned.", partitions = ?assigned);
}

/// Partitions were revoked.
pub fn partitions_revoked(partitions: &[i32]) {
    info!(message = "Partitions revoked.", ?partitions);
}

#!/usr/bin/env bash
# Benchmark: event-to-projection latency through `mallquest run` on Apache Kafka (one KRaft
# node, see scripts/kafka-broker.sh): purchases stamped with the current time at RATE/s for
# SECONDS, each for a new shopper; latency = projection read from the topic - its
# issued_at. The same reader reads the receipts back from their own topic: the broker's floor.
# Usage: scripts/bench-latency.sh [RATES] [SECONDS] [PARTITIONS]
#   RATES: one rate or several, comma separated ("1000,5000,10000"): one broker for all,
#   and per rate a fresh receipts topic and a fresh `run` (its own group, output topics
#   and store), one rate after the other. RUNS=1 repeats the whole list; first a warm-up
#   of WARMUP_SECS=20 at the first rate, not reported.
#   COMMIT_INTERVAL_MS=100; EXTRA_TOML is appended to mallquest's config, e.g.
#   $'[kafka.client]\n"linger.ms" = "20"'; STORE_TOML goes into its [store] section.
set -euo pipefail
cd "$(dirname "$0")/.."
RATES="${1:-1000,5000,10000}"
SECS="${2:-60}"
PARTS="${3:-3}"
RUNS="${RUNS:-1}"
. scripts/kafka-broker.sh
cargo build --release --locked -q --bin mallquest --example latency
# MALLQUEST_BIN: another build of mallquest to measure (side by side with this one).
BIN="${MALLQUEST_BIN:-$PWD/target/release/mallquest}"
WORK="$(mktemp -d "${BENCH_DIR:-/tmp}/mq-latency.XXXXXX")"
kafka_broker_start "$WORK/kafka"
cleanup() {
  [ -n "${RUN_PID:-}" ] && { kill -TERM "$RUN_PID" 2>/dev/null; wait "$RUN_PID" 2>/dev/null || true; }
  kafka_broker_stop
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
# The broker's first-use work (the group-offsets topic, producer ids) is done now, not
# under the first rate: on 2026-12-01 the first run at 1,000/s, which paid for them on a
# loaded machine, had a broker floor of p50 1 s (2 ms in the next two).
kafka_coordinators_ready

# examples/latency reads the topics "receipts" and "user-projections": each rate gets a
# fresh pair under those names (deleted and created again) and a fresh store.
measure() { # RATE SECONDS
  local rate="$1" secs="$2" http t
  i=$((i + 1))
  for t in receipts user-projections; do
    kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BOOTSTRAP" \
      --delete --if-exists --topic "$t" >/dev/null
  done
  # Topic deletion is asynchronous: wait until both names are gone, then create.
  for _ in $(seq 60); do
    kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BOOTSTRAP" --list \
      | grep -qxE 'receipts|user-projections' || break
    sleep 0.5
  done
  kafka_topic_create receipts "$PARTS"
  http=$(_kafka_free_port)
  rm -rf "$WORK/store"
  cat >"$WORK/mq.toml" <<TOML
[kafka]
brokers = "$KAFKA_BOOTSTRAP"
group_id = "bench-latency-$i"
events_topic = "gamification-events-$i"
dlq_topic = "receipts-dlq-$i"
[store]
path = "$WORK/store"
${STORE_TOML:-}
[http]
listen = "127.0.0.1:$http"
[processing]
commit_interval_ms = ${COMMIT_INTERVAL_MS:-100}
${EXTRA_TOML:-}
TOML
  "$BIN" run --config "$WORK/mq.toml" 2>"$WORK/run-$i.log" &
  RUN_PID=$!
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$http/readyz" >/dev/null && break
    kill -0 "$RUN_PID" || { cat "$WORK/run-$i.log"; exit 1; }
    sleep 0.1
  done
  # The projections topic is mallquest's (created compacted at its start).
  for _ in $(seq 100); do
    kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BOOTSTRAP" \
      --describe --topic user-projections >/dev/null 2>&1 && break
    sleep 0.2
  done
  # Its wall time says whether the load kept its rate (about SECS, plus the last reads).
  /usr/bin/time -f "load generator and reader: wall %e s, CPU %U+%S s" \
    ./target/release/examples/latency "$KAFKA_BOOTSTRAP" "$rate" "$secs" || echo "latency run FAILED"
  # Where the time goes, as mallquest saw it: issued_at -> fold, and the commit itself.
  curl -sf "http://127.0.0.1:$http/metrics" | grep -E '^mallquest_(event_age_seconds|batch_duration_seconds)_(sum|count)' || true
  kill -TERM "$RUN_PID"; wait "$RUN_PID" || true; RUN_PID=
  grep -E ' (WARN|ERROR) ' "$WORK/run-$i.log" | cut -c1-240 | sort | uniq -c | sort -rn | head -5 || true
}

# A fresh JVM answers slowly at first: on 2026-12-01 the first measured run on a new
# broker (1,000/s, a loaded machine) had a broker floor of p50 1 s, 7 s in a later 5 s
# trial, and 2 ms in the runs after it. So a warm-up at the first rate, not reported.
i=0
echo "== warm-up (not a measurement): ${RATES%%,*} receipts/s for ${WARMUP_SECS:-20} s"
measure "${RATES%%,*}" "${WARMUP_SECS:-20}" >/dev/null 2>&1 || true
for run in $(seq "$RUNS"); do
  for rate in ${RATES//,/ }; do
    echo "== run $run, $rate receipts/s for $SECS s ($PARTS partitions)"
    measure "$rate" "$SECS"
  done
done
[ -n "${KEEP:-}" ] && echo "kept $WORK"
true

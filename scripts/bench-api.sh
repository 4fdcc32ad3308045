#!/usr/bin/env bash
# Benchmark: GET /v1/users/{id} over a store of ~1,000,000 users while `run` ingests from
# Apache Kafka (one KRaft node, scripts/kafka-broker.sh), with load generators that are not
# ours: wrk and oha closed-loop at CONNECTIONS (default 256), then oha open-loop at RATE
# requests/s offered over 1,000 connections (default 20,000; latency corrected for
# coordinated omission). Installs wrk (apt) and oha (cargo install, kept in ~/.cargo/bin)
# when missing.
# Usage: scripts/bench-api.sh [DEMO_RECEIPTS] [USERS] [CONNECTIONS] [SECONDS] [RATE]
set -euo pipefail
cd "$(dirname "$0")/.."
RECEIPTS="${1:-4000000}"
USERS="${2:-1300000}"
CONNS="${3:-256}"
SECS="${4:-30}"
RATE="${5:-20000}"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! command -v wrk >/dev/null; then
  echo "installing wrk (apt)..."
  $SUDO apt-get install -y -qq wrk >/dev/null 2>&1 || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq wrk >/dev/null; }
fi
OHA="$(command -v oha || echo "$HOME/.cargo/bin/oha")"
if [ ! -x "$OHA" ]; then
  echo "installing oha (cargo install oha --locked)..."
  cargo install oha --locked -q
fi
. scripts/kafka-broker.sh
cargo build --release --locked -q
BIN="$PWD/target/release/mallquest"
WORK="$(mktemp -d)"
HTTP=$(_kafka_free_port)
cleanup() {
  # The processor first, while the broker is still there to take its last commit.
  kill "${SIM_PID:-}" 2>/dev/null || true
  if [ -n "${RUN_PID:-}" ]; then kill -TERM "$RUN_PID" 2>/dev/null || true; wait "$RUN_PID" 2>/dev/null || true; fi
  kafka_broker_stop; rm -rf "$WORK"
}
ulimit -n 65536 2>/dev/null || true

# BENCH_STORE: a store directory to keep between runs (filled once, 4 minutes here).
# BENCH_CACHE_MB: the processor's `[store] cache_mb` (default: the config's default).
STORE="${BENCH_STORE:-$WORK/store}"
if [ ! -d "$STORE" ]; then
  echo "== filling the store: demo --receipts $RECEIPTS --users $USERS"
  RUST_LOG=warn "$BIN" demo --plain --receipts "$RECEIPTS" --users "$USERS" --dir "$STORE" | sed -n '1,5p'
fi

kafka_broker_start "$WORK/kafka"
trap cleanup EXIT
# The broker's first-use work (the group-offsets topic, producer ids) is done first.
kafka_coordinators_ready
# A topic name of its own: a kept store holds offsets of earlier runs' topics.
TOPIC="bench-$(date +%s)"
# As many partitions as the demo that filled the store spread its users over (4).
kafka_topic_create "$TOPIC" 4
cat >"$WORK/mq.toml" <<TOML
[kafka]
brokers = "$KAFKA_BOOTSTRAP"
receipts_topic = "$TOPIC"
[store]
path = "$STORE"
${BENCH_CACHE_MB:+cache_mb = $BENCH_CACHE_MB}
[http]
listen = "127.0.0.1:$HTTP"
TOML
RUST_LOG=warn "$BIN" run --config "$WORK/mq.toml" 2>"$WORK/run.log" &
RUN_PID=$!
"$BIN" simulate --brokers "$KAFKA_BOOTSTRAP" --topic "$TOPIC" --rate 2000 --count 10000000 --users "$USERS" --seed "$(date +%s)" >/dev/null 2>&1 &
SIM_PID=$!
for _ in $(seq 200); do curl -fs "http://127.0.0.1:$HTTP/readyz" >/dev/null 2>&1 && break; sleep 0.2; done

cat >"$WORK/users.lua" <<LUA
math.randomseed(42)
request = function()
  return wrk.format("GET", string.format("/v1/users/u-%08d", math.random(0, $USERS - 1)))
end
LUA
echo "== closed loop: wrk -t2 -c$CONNS -d${SECS}s while run ingests ~2,000 receipts/s"
wrk -t2 -c"$CONNS" -d"${SECS}s" --latency -s "$WORK/users.lua" "http://127.0.0.1:$HTTP"
# Ids uniform over u-00000000 to u-00999999, all in the simulated id space.
URL="http://127[.]0[.]0[.]1:$HTTP/v1/users/u-00[0-9]{6}"  # a regex: the dots in brackets
echo "== closed loop: oha -c $CONNS -z ${SECS}s"
"$OHA" --no-tui -c "$CONNS" -z "${SECS}s" --rand-regex-url "$URL"
echo "== open loop: oha -q $RATE -c 1000 -z ${SECS}s --latency-correction"
"$OHA" --no-tui -q "$RATE" -c 1000 -z "${SECS}s" --latency-correction --rand-regex-url "$URL"
echo "== ingest during the run (mallquest_receipts_total):"
curl -fs "http://127.0.0.1:$HTTP/metrics" | grep -E '^mallquest_receipts_total|^mallquest_users ' || true

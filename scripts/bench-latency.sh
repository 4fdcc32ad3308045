#!/usr/bin/env bash
# Benchmark: event-to-projection latency through `mallquest run` on a real broker (Tansu,
# sqlite engine): purchases stamped with the current time at RATE/s for SECONDS, each
# for a new shopper; latency = projection read from the topic - its issued_at.
# Usage: scripts/bench-latency.sh [RATE] [SECONDS] [PARTITIONS]   (COMMIT_INTERVAL_MS=100;
#   EXTRA_TOML is appended to mallquest's config, e.g. $'[kafka.client]\n"linger.ms" = "20"';
#   STORE_TOML goes into its [store] section, e.g. 'write_buffer_mb = 64')
set -euo pipefail
cd "$(dirname "$0")/.."
RATE="${1:-5000}"
SECS="${2:-60}"
PARTS="${3:-3}"
TANSU="$(scripts/install-tansu.sh)"
cargo build --release --locked -q --bin mallquest --example latency
BIN="$PWD/target/release/mallquest"
WORK="$(mktemp -d)"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
HTTP=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() { kill "${RUN_PID:-}" "${TANSU_PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
(cd "$WORK" && exec "$TANSU" broker --listener-url "tcp://127.0.0.1:$PORT" \
  --advertised-listener-url "tcp://127.0.0.1:$PORT" --storage-engine sqlite://tansu.db >tansu.log 2>&1) &
TANSU_PID=$!
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
"$TANSU" topic create --broker "tcp://127.0.0.1:$PORT" --partitions "$PARTS" receipts >/dev/null
cat >"$WORK/mq.toml" <<TOML
[kafka]
brokers = "127.0.0.1:$PORT"
[store]
path = "$WORK/store"
${STORE_TOML:-}
[http]
listen = "127.0.0.1:$HTTP"
[processing]
commit_interval_ms = ${COMMIT_INTERVAL_MS:-100}
${EXTRA_TOML:-}
TOML
"$BIN" run --config "$WORK/mq.toml" 2>"$WORK/run.log" &
RUN_PID=$!
for _ in $(seq 300); do
  curl -sf "http://127.0.0.1:$HTTP/readyz" >/dev/null && break
  kill -0 "$RUN_PID" || { cat "$WORK/run.log"; exit 1; }
  sleep 0.1
done
./target/release/examples/latency "127.0.0.1:$PORT" "$RATE" "$SECS"
# Where the time goes, as mallquest saw it: issued_at -> fold, and the commit itself.
curl -sf "http://127.0.0.1:$HTTP/metrics" | grep -E '^mallquest_(event_age_seconds|batch_duration_seconds)_(sum|count)' || true

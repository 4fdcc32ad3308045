#!/usr/bin/env bash
# Benchmark: drain one pre-filled receipts topic on a real broker (Tansu, sqlite engine)
# three ways, side by side:
#   plain  - a plain rdkafka consumer that only reads (the ceiling this broker allows);
#   mallquest run - the fold, with outputs published and the store written;
#   quix   - the same fold written with Quix Streams (Python, RocksDB state).
# Prints wall time, records/s and each process's own CPU time per record.
# Usage: scripts/bench-drain.sh [RECEIPTS] [PARTITIONS]   (QUIX=0 skips Quix Streams)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-1000000}"
PARTS="${2:-3}"
TANSU="$(scripts/install-tansu.sh)"
cargo build --release --locked -q --bin mallquest --example plain_consume
BIN="$PWD/target/release/mallquest"
PLAIN="$PWD/target/release/examples/plain_consume"
if [ "${QUIX:-1}" != 0 ]; then
  VENV="${XDG_CACHE_HOME:-$HOME/.cache}/mallquest/quix-venv"
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import quixstreams' 2>/dev/null || {
    python3 -m venv "$VENV" && "$VENV/bin/pip" install -q quixstreams
  }
fi
WORK="$(mktemp -d)"
cleanup() { kill "${RUN_PID:-}" "${TANSU_PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

# Each contender gets a fresh broker holding the same simulated stream: Tansu slows down
# as its sqlite file grows (a scan per request), so sharing one would favour whoever
# runs first.
fresh_broker() {
  [ -n "${TANSU_PID:-}" ] && { kill "$TANSU_PID"; wait "$TANSU_PID" 2>/dev/null || true; }
  rm -rf "$WORK/broker"; mkdir -p "$WORK/broker"
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  (cd "$WORK/broker" && exec "$TANSU" broker --listener-url "tcp://127.0.0.1:$PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$PORT" --storage-engine sqlite://tansu.db >tansu.log 2>&1) &
  TANSU_PID=$!
  for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
  # user-projections is created here, not compacted: every 10 minutes Tansu 0.6 compacts
  # compacted topics with one group-by over every record of its sqlite file, in a write
  # transaction that held produce requests for minutes (the 1,000,000 drain stalled on it).
  for t in receipts user-projections quix-projections quix-dlq; do
    # Quix Streams reads retention.ms back from the topic config; Tansu reports only what was set.
    "$TANSU" topic create --broker "tcp://127.0.0.1:$PORT" --partitions "$PARTS" --config retention.ms=-1 --config retention.bytes=-1 "$t" >/dev/null
  done
  "$BIN" simulate --brokers "127.0.0.1:$PORT" --rate 0 --count "$N" --users 100000 --seed 1 >/dev/null
}

report() { # NAME WALL CPU
  python3 -c "import sys; n=$N; name, wall, cpu = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]); print(f'{name:10} {n} records in {wall:7.2f} s = {n/wall:8.0f} records/s; own CPU {cpu:7.2f} s = {cpu/n*1e6:6.1f} us/record')" "$@"
}

# 1. The ceiling: read only.
fresh_broker
/usr/bin/time -f "%e %U %S" -o "$WORK/plain.time" "$PLAIN" "127.0.0.1:$PORT" receipts "$N" >/dev/null
read -r W U S <"$WORK/plain.time"; report plain "$W" "$(echo "$U + $S" | bc)"

# 2. mallquest run, until its store holds every record (debug logs count them).
fresh_broker
# Manual assignment, as the plain consumer: under this load Tansu 0.6's group coordinator
# answers heartbeats too late (sessions time out, then it hands out empty assignments).
cat >"$WORK/mq.toml" <<TOML
[kafka]
brokers = "127.0.0.1:$PORT"
assignment = "manual"
[store]
path = "$WORK/store"
TOML
START=$(date +%s.%N)
RUST_LOG=warn,mallquest::telemetry=debug "$BIN" run --config "$WORK/mq.toml" 2>"$WORK/run.log" &
RUN_PID=$!
while :; do
  DONE=$(grep -o 'records=[0-9]*' "$WORK/run.log" | cut -d= -f2 | paste -sd+ | bc 2>/dev/null || echo 0)
  [ "${DONE:-0}" -ge "$N" ] && break
  kill -0 "$RUN_PID" || { cat "$WORK/run.log"; exit 1; }
  sleep 0.2
done
END=$(date +%s.%N)
read -r UT ST < <(awk '{print $14, $15}' "/proc/$RUN_PID/stat")
TICKS=$(getconf CLK_TCK)
kill -TERM "$RUN_PID"; wait "$RUN_PID" || true; RUN_PID=
report mallquest "$(echo "$END - $START" | bc)" "$(echo "($UT + $ST) / $TICKS" | bc -l)"

# 3. Quix Streams.
if [ "${QUIX:-1}" != 0 ]; then
  fresh_broker
  /usr/bin/time -f "%e %U %S" -o "$WORK/quix.time" "$VENV/bin/python" bench/quix_fold.py \
    "127.0.0.1:$PORT" receipts "$N" "$WORK/quix-state" >"$WORK/quix.log" 2>&1 || { cat "$WORK/quix.log"; exit 1; }
  read -r W U S < <(tail -1 "$WORK/quix.time")
  report quix "$W" "$(echo "$U + $S" | bc)"
fi

#!/usr/bin/env bash
# Benchmark: drain a pre-filled receipts topic through `mallquest run` on a real broker
# (Tansu, sqlite engine). Prints receipts/s and the processor's CPU seconds.
# Usage: scripts/bench-drain.sh [RECEIPTS] [PARTITIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-200000}"
PARTS="${2:-3}"
TANSU="$(scripts/install-tansu.sh)"
cargo build --release --locked -q
BIN="$PWD/target/release/mallquest"
WORK="$(mktemp -d)"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() { kill "${RUN_PID:-}" "${TANSU_PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

(cd "$WORK" && exec "$TANSU" broker --listener-url "tcp://127.0.0.1:$PORT" \
  --advertised-listener-url "tcp://127.0.0.1:$PORT" --storage-engine sqlite://tansu.db >tansu.log 2>&1) &
TANSU_PID=$!
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
"$TANSU" topic create --broker "tcp://127.0.0.1:$PORT" --partitions "$PARTS" receipts >/dev/null
"$BIN" simulate --brokers "127.0.0.1:$PORT" --rate 0 --count "$N" --users 100000 --seed 1

cat >"$WORK/mq.toml" <<TOML
[kafka]
brokers = "127.0.0.1:$PORT"
[store]
path = "$WORK/store"
TOML
START=$(date +%s.%N)
RUST_LOG=warn,mallquest::telemetry=debug "$BIN" run --config "$WORK/mq.toml" 2>"$WORK/run.log" &
RUN_PID=$!
while :; do
  DONE=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/run.log" | grep -o 'records=[0-9]*' | cut -d= -f2 | paste -sd+ | bc 2>/dev/null || echo 0)
  [ "${DONE:-0}" -ge "$N" ] && break
  kill -0 "$RUN_PID" || { cat "$WORK/run.log"; exit 1; }
  sleep 0.2
done
END=$(date +%s.%N)
read -r UTIME STIME < <(awk '{print $14, $15}' "/proc/$RUN_PID/stat")
TICKS=$(getconf CLK_TCK)
kill -TERM "$RUN_PID"; wait "$RUN_PID"; RUN_PID=
python3 - "$N" "$START" "$END" "$UTIME" "$STIME" "$TICKS" <<'PY'
import sys
n, start, end, ut, st, hz = int(sys.argv[1]), *map(float, sys.argv[2:])
wall = end - start
cpu = (ut + st) / hz
print(f"drained {n} receipts in {wall:.2f} s (incl. group join) = {n/wall:.0f} receipts/s; "
      f"processor CPU {cpu:.2f} s = {cpu/n*1e6:.1f} us/receipt")
PY

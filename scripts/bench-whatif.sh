#!/usr/bin/env bash
# Benchmark: `mallquest whatif` on Apache Kafka (one KRaft node, scripts/kafka-broker.sh):
# RECEIPTS simulated receipts over USERS users published to a receipts topic of PARTITIONS
# partitions (retention.ms = -1), then RUNS what-ifs of the default config against the same
# config with one more store multiplier ("s-003" = 200), each folding the whole topic twice.
# Prints each run's wall time, records/s (records of the topic per second, both folds at
# once), CPU seconds and peak RSS, then the median.
# Usage: scripts/bench-whatif.sh [RECEIPTS] [USERS] [PARTITIONS]   (RUNS=3)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-1000000}"
USERS="${2:-100000}"
PARTS="${3:-4}"
RUNS="${RUNS:-3}"
cargo build --release --locked -q
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
. scripts/kafka-broker.sh
kafka_broker_start "$WORK/kafka" >/dev/null
kafka_topic_create receipts "$PARTS" retention.ms=-1 >/dev/null
M="$WORK/mallquest"
cp target/release/mallquest "$M"
echo "publishing $N receipts over $USERS users to $PARTS partitions..."
"$M" simulate --brokers "$KAFKA_BOOTSTRAP" --rate 0 --count "$N" --users "$USERS" >/dev/null 2>&1
sed "s/127.0.0.1:9092/$KAFKA_BOOTSTRAP/; s#data/mallquest#$WORK/live-store#" config/mallquest.toml >"$WORK/live.toml"
sed 's/^"s-electronics-01" = 200/"s-electronics-01" = 200\n"s-003" = 200/' "$WORK/live.toml" >"$WORK/proposed.toml"
rates=()
for i in $(seq "$RUNS"); do
  /usr/bin/time -f "%e %U %S %M" -o "$WORK/time" \
    "$M" whatif --config "$WORK/live.toml" --rules "$WORK/proposed.toml" \
    --json "$WORK/r.json" --out "$WORK/r.html" >/dev/null
  read -r wall user sys rss <"$WORK/time"
  rate=$(python3 -c "print(round($N / $wall))")
  rates+=("$rate")
  echo "run $i: wall $wall s, $rate records/s, CPU $(python3 -c "print(round($user + $sys, 1))") s, peak RSS $((rss / 1024)) MiB"
done
echo "median: $(printf '%s\n' "${rates[@]}" | sort -n | sed -n "$(( (RUNS + 1) / 2 ))p") records/s"

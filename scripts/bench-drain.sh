#!/usr/bin/env bash
# Benchmark: drain one pre-filled receipts topic on Apache Kafka (one KRaft node, see
# scripts/kafka-broker.sh) five ways, side by side, RUNS rounds:
#   plain     - a plain rdkafka consumer that only reads (examples/plain_consume: the ceiling);
#   kafka-perf - Kafka's own org.apache.kafka.tools.ConsumerPerformance (a JVM; reads only);
#   mallquest - `mallquest run`: the fold, with outputs published and the store written;
#   mallquest-lean - the same with `[processing] periods_kept = 0` (no period leaderboards);
#   mallquest-base - `mallquest run` with defaults from another build (BASE_BIN=path), to
#               compare two builds side by side (not in the default set);
#   quix      - the same fold written with Quix Streams (bench/quix_fold.py, RocksDB state).
#   kstreams  - the same fold written with Kafka Streams (bench/kstreams/: Java 17, RocksDB
#               state, exactly_once_v2; its jar is built once with Maven and reused).
# One broker and one topic for all: every contender reads the same records from the
# beginning in a consumer group of its own (mallquest, Quix and Kafka Streams with output
# topics and a state directory of their own). The order of the contenders rotates from
# round to round.
# Prints wall time (process start to the last record folded and stored, or read), records/s,
# each process's own CPU per record and the broker's CPU during it, then medians and ratios.
# Usage: scripts/bench-drain.sh [RECEIPTS] [PARTITIONS]
#   RUNS=3 rounds; QUIX=0 skips Quix Streams; KSTREAMS=0 skips Kafka Streams (its JVM's
#   options: KSTREAMS_JAVA_OPTS, default -Xmx1g; stream threads: KSTREAMS_THREADS, default 1);
#   ONLY="plain mallquest" runs only those; DRAIN_TIMEOUT=900 s per contender (mallquest,
#   kstreams); RESULTS=file keeps the per-run table (TSV).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-1000000}"
PARTS="${2:-3}"
RUNS="${RUNS:-3}"
TIMEOUT="${DRAIN_TIMEOUT:-900}"
CONTENDERS="${ONLY:-plain mallquest mallquest-lean kafka-perf quix kstreams}"
[ "${QUIX:-1}" = 0 ] && CONTENDERS="${CONTENDERS//quix/}"
[ "${KSTREAMS:-1}" = 0 ] && CONTENDERS="${CONTENDERS//kstreams/}"
. scripts/kafka-broker.sh
cargo build --release --locked -q --bin mallquest --example plain_consume
BIN="$PWD/target/release/mallquest"
PLAIN="$PWD/target/release/examples/plain_consume"
if [[ " $CONTENDERS " == *" quix "* ]]; then
  VENV="${XDG_CACHE_HOME:-$HOME/.cache}/mallquest/quix-venv"
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import quixstreams' 2>/dev/null || {
    python3 -m venv "$VENV" && "$VENV/bin/pip" install -q quixstreams
  }
fi
if [[ " $CONTENDERS " == *" kstreams "* ]]; then
  # One shaded jar, rebuilt only when the peer's sources or POM are newer than it.
  KSTREAMS_JAR="$PWD/bench/kstreams/target/kstreams-fold.jar"
  if [ ! -f "$KSTREAMS_JAR" ] || [ -n "$(find bench/kstreams/pom.xml bench/kstreams/src -newer "$KSTREAMS_JAR" -print -quit)" ]; then
    mvn -B -q -f bench/kstreams/pom.xml -DskipTests package
  fi
fi
WORK="$(mktemp -d "${BENCH_DIR:-/tmp}/mq-drain.XXXXXX")"
TICKS=$(getconf CLK_TCK)
RESULTS="${RESULTS:-$WORK/results.tsv}"

kafka_broker_start "$WORK/kafka"
cleanup() {
  [ -n "${RUN_PID:-}" ] && { kill -TERM "$RUN_PID" 2>/dev/null; wait "$RUN_PID" 2>/dev/null || true; }
  kafka_broker_stop
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

echo "== prefill: $N simulated receipts (100,000 users, refunds, duplicates, bad events) into receipts ($PARTS partitions)"
kafka_topic_create receipts "$PARTS" retention.ms=-1 retention.bytes=-1
# The broker's first-use work (the group-offsets topic, producer ids) is done now, not
# under whichever contender comes first (`run` built before db78fc9 even exited on the
# first group look-up's NotCoordinator).
kafka_coordinators_ready
T0=$(date +%s.%N)
"$BIN" simulate --brokers "$KAFKA_BOOTSTRAP" --rate 0 --count "$N" --users 100000 --seed 1 >/dev/null
echo "prefill took $(echo "$(date +%s.%N) - $T0" | bc | xargs printf %.1f) s"
printf 'round\tcontender\twall_s\tcpu_s\tbroker_cpu_s\tnote\n' >"$RESULTS"

report() { # ROUND NAME WALL CPU BROKER_CPU [NOTE]
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "${6:-}" >>"$RESULTS"
  python3 -c "
import sys; n=$N; r, name, wall, cpu, bcpu = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:6])
print(f'round {r} {name:10} {n} records in {wall:7.2f} s = {n/wall:8.0f} records/s; own CPU {cpu:7.2f} s = {cpu/n*1e6:6.1f} us/record; broker CPU {bcpu:6.2f} s {sys.argv[6] if len(sys.argv) > 6 else \"\"}')
" "$@"
}

secs() { printf %.2f "$(echo "$1 / $TICKS" | bc -l)"; }

run_plain() { # ROUND
  local b0; b0=$(kafka_cpu_ticks "$KAFKA_PID")
  /usr/bin/time -f "%e %U %S" -o "$WORK/plain.time" "$PLAIN" "$KAFKA_BOOTSTRAP" receipts "$N" >"$WORK/plain.out"
  local w u s; read -r w u s <"$WORK/plain.time"
  report "$1" plain "$w" "$(echo "$u + $s" | bc)" "$(secs "$(( $(kafka_cpu_ticks "$KAFKA_PID") - b0 ))")"
}

run_kafka_perf() { # ROUND
  local b0; b0=$(kafka_cpu_ticks "$KAFKA_PID")
  /usr/bin/time -f "%e %U %S" -o "$WORK/perf.time" java -Xmx512m -cp "$KAFKA_HOME/libs/*" \
    -Dlog4j2.configurationFile="${TMPDIR:-/tmp}/mallquest-kafka-tools-log4j2.properties" \
    org.apache.kafka.tools.ConsumerPerformance --bootstrap-server "$KAFKA_BOOTSTRAP" \
    --topic receipts --num-records "$N" --group "bench-perf-$1" --timeout 60000 \
    >"$WORK/perf.out" 2>"$WORK/perf.err" || { cat "$WORK/perf.err"; return 1; }
  local w u s; read -r w u s < <(tail -1 "$WORK/perf.time")
  # Its own line: start.time, end.time, MB, MB/s, records, records/s, rebalance ms, fetch ms, ...
  local own; own=$(tail -1 "$WORK/perf.out" | awk -F', ' '{printf "(its own count: %s records, %.0f records/s; %s ms joining, %s ms fetching)", $5, $6, $7, $8}')
  report "$1" kafka-perf "$w" "$(echo "$u + $s" | bc)" "$(secs "$(( $(kafka_cpu_ticks "$KAFKA_PID") - b0 ))")" "$own"
}

# mallquest-lean: `run` without the period leaderboards (`periods_kept = 0`), the fold the
# Kafka Streams and Quix peers do plus the all-time boards.
run_mallquest_lean() { # ROUND
  run_mallquest "$1" mallquest-lean $'[processing]\nperiods_kept = 0'
}

# mallquest-base: `run` with defaults, from the build BASE_BIN names.
run_mallquest_base() { # ROUND
  run_mallquest "$1" mallquest-base "" "${BASE_BIN:?BASE_BIN names the build to compare with}"
}

run_mallquest() { # ROUND [NAME EXTRA_TOML BINARY]
  local http; http=$(_kafka_free_port)
  local name="${2:-mallquest}" bin="${4:-$BIN}"
  rm -rf "$WORK/store"
  # Defaults, but a group, output topics (mallquest creates them: projections compacted)
  # and a store of this run's own.
  cat >"$WORK/mq.toml" <<TOML
[kafka]
brokers = "$KAFKA_BOOTSTRAP"
group_id = "bench-$name-$1"
projections_topic = "user-projections-$name-$1"
events_topic = "gamification-events-$name-$1"
dlq_topic = "receipts-dlq-$name-$1"
[store]
path = "$WORK/store"
[http]
listen = "127.0.0.1:$http"
${3:-}
TOML
  local b0 start end done=0 note=""
  b0=$(kafka_cpu_ticks "$KAFKA_PID")
  start=$(date +%s.%N)
  RUST_LOG=warn,mallquest::telemetry=debug "$bin" run --config "$WORK/mq.toml" 2>"$WORK/run-$name-$1.log" &
  RUN_PID=$!
  # Done when the committed batches (debug "Batch committed." lines) add up to N.
  while :; do
    done=$(grep -o 'records=[0-9]*' "$WORK/run-$name-$1.log" | cut -d= -f2 | paste -sd+ | bc 2>/dev/null || echo 0)
    [ "${done:-0}" -ge "$N" ] && break
    kill -0 "$RUN_PID" 2>/dev/null || { echo "mallquest run exited:"; tail -20 "$WORK/run-$name-$1.log"; RUN_PID=; return 1; }
    if [ "$(echo "$(date +%s.%N) - $start > $TIMEOUT" | bc)" = 1 ]; then
      note="DID NOT FINISH: ${done:-0} records stored after ${TIMEOUT} s"; break
    fi
    sleep 0.2
  done
  end=$(date +%s.%N)
  local ut st; read -r ut st < <(awk '{print $14, $15}' "/proc/$RUN_PID/stat")
  local bcpu; bcpu=$(secs "$(( $(kafka_cpu_ticks "$KAFKA_PID") - b0 ))")
  kill -TERM "$RUN_PID"; wait "$RUN_PID" || true; RUN_PID=
  local warns; warns=$(grep -cE '"level":"(WARN|ERROR)"| WARN | ERROR ' "$WORK/run-$name-$1.log" || true)
  [ "$warns" != 0 ] && note="$note ($warns warning/error lines in its log; first: $(grep -m1 -E '"level":"(WARN|ERROR)"| WARN | ERROR ' "$WORK/run-$name-$1.log" | cut -c1-200))"
  report "$1" "$name" "$(echo "$end - $start" | bc)" "$(echo "($ut + $st) / $TICKS" | bc -l)" "$bcpu" "$note"
}

run_quix() { # ROUND
  rm -rf "$WORK/quix-state"
  # Output topics like mallquest's (as many partitions as the input); Quix creates its
  # own changelog topics.
  kafka_topic_create "quix-projections-$1" "$PARTS" cleanup.policy=compact
  kafka_topic_create "quix-dlq-$1" "$PARTS"
  local b0; b0=$(kafka_cpu_ticks "$KAFKA_PID")
  /usr/bin/time -f "%e %U %S" -o "$WORK/quix.time" "$VENV/bin/python" bench/quix_fold.py \
    "$KAFKA_BOOTSTRAP" receipts "$N" "$WORK/quix-state" "bench-quix-$1" "-$1" >"$WORK/quix-$1.log" 2>&1 \
    || { tail -30 "$WORK/quix-$1.log"; return 1; }
  local w u s; read -r w u s < <(tail -1 "$WORK/quix.time")
  report "$1" quix "$w" "$(echo "$u + $s" | bc)" "$(secs "$(( $(kafka_cpu_ticks "$KAFKA_PID") - b0 ))")"
}

run_kstreams() { # ROUND
  rm -rf "$WORK/kstreams-state"
  # Output topics like mallquest's (as many partitions as the input); Kafka Streams creates
  # its own changelog topics (users, ledger, marks).
  kafka_topic_create "kstreams-projections-$1" "$PARTS" cleanup.policy=compact
  kafka_topic_create "kstreams-dlq-$1" "$PARTS"
  local b0 rc=0 note=""; b0=$(kafka_cpu_ticks "$KAFKA_PID")
  # It exits once RECEIPTS records are folded and its last transaction is committed.
  # shellcheck disable=SC2086
  /usr/bin/time -f "%e %U %S" -o "$WORK/kstreams.time" timeout "$TIMEOUT" java ${KSTREAMS_JAVA_OPTS:--Xmx1g} \
    -jar "$KSTREAMS_JAR" "$KAFKA_BOOTSTRAP" receipts "$N" "$WORK/kstreams-state" "bench-kstreams-$1" "-$1" \
    >"$WORK/kstreams-$1.log" 2>&1 || rc=$?
  if [ "$rc" = 124 ]; then
    note="DID NOT FINISH in ${TIMEOUT} s"
  elif [ "$rc" != 0 ]; then
    tail -30 "$WORK/kstreams-$1.log"; return 1
  fi
  local w u s; read -r w u s < <(tail -1 "$WORK/kstreams.time")
  local own; own=$(sed -n 's/^kstreams: folded .*(\(applied [0-9]*, duplicates [0-9]*, rejected [0-9]*\).*; \(first record [0-9.]* s after start\).*/\1; \2/p' \
    "$WORK/kstreams-$1.log" | head -1)
  report "$1" kstreams "$w" "$(echo "$u + $s" | bc)" "$(secs "$(( $(kafka_cpu_ticks "$KAFKA_PID") - b0 ))")" \
    "${note:-${own:+($own)}}"
}

read -r -a ORDER <<<"$CONTENDERS"
for round in $(seq "$RUNS"); do
  echo "== round $round of $RUNS"
  for i in "${!ORDER[@]}"; do
    c="${ORDER[$(( (i + round - 1) % ${#ORDER[@]} ))]}"
    "run_${c//-/_}" "$round" || echo "round $round $c FAILED"
  done
done

echo "== medians over $RUNS rounds ($N records, $PARTS partitions; per-run table: $RESULTS)"
python3 - "$RESULTS" "$N" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
n = int(sys.argv[2])
med = {}
for name in dict.fromkeys(r["contender"] for r in rows):
    rs = [r for r in rows if r["contender"] == name and "DID NOT FINISH" not in r["note"]]
    if not rs:
        print(f"{name:10} did not finish"); continue
    w = statistics.median(float(r["wall_s"]) for r in rs)
    c = statistics.median(float(r["cpu_s"]) for r in rs)
    b = statistics.median(float(r["broker_cpu_s"]) for r in rs)
    med[name] = (w, c)
    print(f"{name:10} ({len(rs)} runs) wall {w:7.2f} s = {n/w:8.0f} records/s; own CPU {c:7.2f} s = "
          f"{c/n*1e6:6.1f} us/record; broker CPU {b:6.2f} s")
if "mallquest" in med and "plain" in med:
    print(f"mallquest rate / plain rate: {med['plain'][0] / med['mallquest'][0]:.0%} (target >= 80%)")
if "mallquest" in med and "kafka-perf" in med:
    print(f"mallquest rate / kafka-perf rate: {med['kafka-perf'][0] / med['mallquest'][0]:.0%}")
if "mallquest" in med and "quix" in med:
    print(f"Quix CPU per record / mallquest's: {med['quix'][1] / med['mallquest'][1]:.1f}x (target >= 10x)")
for mq in ("mallquest", "mallquest-base", "mallquest-lean"):
    if mq in med and "kstreams" in med:
        print(f"Kafka Streams CPU per record / {mq}'s: {med['kstreams'][1] / med[mq][1]:.1f}x; "
              f"{mq} rate / Kafka Streams rate: {med['kstreams'][0] / med[mq][0]:.1f}x")
if "mallquest" in med and "mallquest-base" in med:
    print(f"mallquest rate / mallquest-base rate: {med['mallquest-base'][0] / med['mallquest'][0]:.2f}x; "
          f"CPU per record: {med['mallquest'][1] / med['mallquest-base'][1]:.2f}x")
if "mallquest-lean" in med and "quix" in med:
    print(f"Quix CPU per record / mallquest-lean's: {med['quix'][1] / med['mallquest-lean'][1]:.1f}x")
PY
[ -n "${KEEP:-}" ] && echo "kept $WORK"
true

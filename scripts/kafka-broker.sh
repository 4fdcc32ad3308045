# Sourceable helper for the benchmarks: a one-node Apache Kafka (KRaft, broker and
# controller in one JVM) in the background, on free ports, with a fresh data directory.
#
#   . scripts/kafka-broker.sh
#   kafka_broker_start "$WORK/kafka"       # sets KAFKA_HOME, KAFKA_BOOTSTRAP, KAFKA_PID
#   kafka_topic_create receipts 3 retention.ms=-1
#   ...
#   kafka_broker_stop                      # also run on the sourcing shell's exit
#
# The jars come from scripts/install-kafka.sh (Maven Central, cached). The JVM gets a
# fixed 1 GiB heap with G1 (KAFKA_HEAP_OPTS overrides it). The properties are the tests'
# (tests/support/broker.rs) minus their test-only knobs: replication factor 1 for the
# internal topics, no initial rebalance delay, and the broker's own defaults otherwise
# (threads, fetch and log settings untouched). The JVM is stopped when the sourcing shell
# exits (EXIT trap), and killed by a watcher if that shell dies without running its trap.

KAFKA_HOME="${KAFKA_HOME:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && ./install-kafka.sh)}"

_kafka_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# kafka_broker_start DIR: formats DIR (removed first) and starts the broker; returns once
# it logged "Kafka Server started" (at most 120 s).
kafka_broker_start() {
  local dir="$1" port cport id
  rm -rf "$dir"; mkdir -p "$dir"
  port="$(_kafka_free_port)"; cport="$(_kafka_free_port)"
  cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:${cport}
listeners=PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${cport}
advertised.listeners=PLAINTEXT://127.0.0.1:${port},CONTROLLER://127.0.0.1:${cport}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=${dir}/data
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
PROPS
  local log4j="-Dlog4j2.configurationFile=$KAFKA_HOME/log4j2.properties"
  id="$(java -cp "$KAFKA_HOME/libs/*" "$log4j" kafka.tools.StorageTool random-uuid 2>/dev/null)"
  java -Xmx256m -cp "$KAFKA_HOME/libs/*" "$log4j" kafka.tools.StorageTool format --standalone \
    -t "$id" -c "$dir/server.properties" >"$dir/format.log" 2>&1 \
    || { cat "$dir/format.log" >&2; echo "kafka-broker: format failed" >&2; return 1; }
  # The JVM runs under a watcher holding the read end of a FIFO whose write end only this
  # shell holds: when this shell goes away, however it goes, the watcher kills the JVM.
  mkfifo "$dir/lifeline"
  # shellcheck disable=SC2086
  # (A background job's stdin is /dev/null unless given: hence the explicit <&3.)
  bash -c 'exec 3<&0; "$@" </dev/null & jvm=$!; echo "$jvm" >"'"$dir"'/jvm.pid"; { cat <&3 >/dev/null; kill -9 "$jvm" 2>/dev/null; } & exec 3<&-; wait "$jvm"' \
    kafka-broker java ${KAFKA_HEAP_OPTS:--Xms1g -Xmx1g -XX:+UseG1GC} -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true "$log4j" -Dkafka.logs.dir="$dir" -cp "$KAFKA_HOME/libs/*" \
    kafka.Kafka "$dir/server.properties" <"$dir/lifeline" >"$dir/broker.log" 2>&1 &
  KAFKA_WATCHER_PID=$!
  exec {KAFKA_LIFELINE_FD}>"$dir/lifeline"
  KAFKA_DIR="$dir"
  KAFKA_BOOTSTRAP="127.0.0.1:$port"
  trap kafka_broker_stop EXIT
  trap 'exit 130' INT TERM
  local _
  for _ in $(seq 240); do
    grep -q "Kafka Server started" "$dir/broker.log" 2>/dev/null && break
    kill -0 "$KAFKA_WATCHER_PID" 2>/dev/null || break
    sleep 0.5
  done
  if ! grep -q "Kafka Server started" "$dir/broker.log" 2>/dev/null; then
    tail -40 "$dir/broker.log" >&2
    echo "kafka-broker: the broker did not start" >&2
    return 1
  fi
  KAFKA_PID="$(cat "$dir/jvm.pid")"
  echo "kafka-broker: Apache Kafka $(grep -m1 -o 'Kafka version: [^ ]*' "$dir/broker.log" | cut -d' ' -f3) at $KAFKA_BOOTSTRAP (pid $KAFKA_PID, data $dir/data)" >&2
}

# kafka_broker_stop: stops the broker (SIGTERM, SIGKILL after 20 s). Runs on exit; the
# sourcing script's own EXIT trap must call it if it replaces this one.
kafka_broker_stop() {
  [ -n "${KAFKA_WATCHER_PID:-}" ] || return 0
  if [ -n "${KAFKA_PID:-}" ] && kill -TERM "$KAFKA_PID" 2>/dev/null; then
    local _
    for _ in $(seq 40); do kill -0 "$KAFKA_PID" 2>/dev/null || break; sleep 0.5; done
  fi
  # Closing the lifeline makes the watcher kill whatever is left.
  [ -n "${KAFKA_LIFELINE_FD:-}" ] && exec {KAFKA_LIFELINE_FD}>&-
  wait "$KAFKA_WATCHER_PID" 2>/dev/null || true
  KAFKA_WATCHER_PID=""; KAFKA_PID=""; KAFKA_LIFELINE_FD=""
}

# kafka_tool CLASS ARGS...: one of Kafka's command-line tools (a JVM each, 512 MiB heap as
# Kafka's own kafka-run-class.sh gives them), logging warnings only, to stderr.
kafka_tool() {
  local cfg="${TMPDIR:-/tmp}/mallquest-kafka-tools-log4j2.properties"
  [ -f "$cfg" ] || printf '%s\n' 'status = warn' 'appender.err.type = Console' \
    'appender.err.name = STDERR' 'appender.err.target = SYSTEM_ERR' \
    'appender.err.layout.type = PatternLayout' 'appender.err.layout.pattern = [%d] %p %m (%c)%n' \
    'rootLogger.level = WARN' 'rootLogger.appenderRef.err.ref = STDERR' >"$cfg"
  java -Xmx512m -cp "$KAFKA_HOME/libs/*" -Dlog4j2.configurationFile="$cfg" "$@"
}

# kafka_topic_create NAME PARTITIONS [KEY=VALUE...]: a topic with those configs.
kafka_topic_create() {
  local name="$1" parts="$2" kv args=()
  shift 2
  for kv in "$@"; do args+=(--config "$kv"); done
  kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BOOTSTRAP" \
    --create --topic "$name" --partitions "$parts" --replication-factor 1 "${args[@]}" >/dev/null
}

# kafka_cpu_ticks PID: user + system CPU of a process so far, in clock ticks.
kafka_cpu_ticks() {
  awk '{print $14 + $15}' "/proc/$1/stat"
}

# kafka_coordinators_ready: makes the broker do its first-use work now, not under the first
# contender: create the group-offsets topic (on the first group look-up; then waits until
# the group coordinator answers) and get its first block of producer ids from the
# controller (on the first idempotent producer's InitProducerId, which librdkafka otherwise
# sees answered "Coordinator load in progress"). A JVM per step.
kafka_coordinators_ready() {
  local _ out ok=""
  for _ in $(seq 20); do
    out="$(kafka_tool org.apache.kafka.tools.consumer.group.ConsumerGroupCommand \
      --bootstrap-server "$KAFKA_BOOTSTRAP" --describe --group mallquest-bench-probe 2>&1 || true)"
    case "$out" in *GroupIdNotFound*|*"does not exist"*) ok=1; break ;; esac
    sleep 0.5
  done
  [ -n "$ok" ] || { echo "kafka-broker: the group coordinator did not become ready: $out" >&2; return 1; }
  kafka_topic_create mallquest-bench-probe 1
  kafka_tool org.apache.kafka.tools.ProducerPerformance --topic mallquest-bench-probe \
    --num-records 1 --record-size 10 --throughput -1 \
    --producer-props bootstrap.servers="$KAFKA_BOOTSTRAP" enable.idempotence=true acks=all >/dev/null \
    || { echo "kafka-broker: the idempotent probe producer failed" >&2; return 1; }
}

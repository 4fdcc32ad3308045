#!/usr/bin/env bash
# Installs Apache Kafka's broker and tools (jars from Maven Central, no tarball, no Docker)
# once into a cache and prints the cache's path; its libs/ holds the class path:
#   java -cp "$(scripts/install-kafka.sh)/libs/*" kafka.Kafka server.properties
# Reuses the cache when its self-check passed before. Installs Java 17 and Maven with apt
# when they are missing. The self-check formats and starts a one-node KRaft broker from
# the result and waits for its "Kafka Server started" line, so a missing jar (or a NOP
# logger, which would hide every broker error) fails here, loudly, not in a test.
set -euo pipefail
cd "$(dirname "$0")"

KAFKA_VERSION="4.3.1"
CACHE="${MALLQUEST_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mallquest}/kafka-${KAFKA_VERSION}"
say() { echo "install-kafka: $*" >&2; }

if [ -f "$CACHE/.verified" ] && [ -d "$CACHE/libs" ]; then
  echo "$CACHE"
  exit 0
fi

need_apt=()
command -v java >/dev/null && java -version 2>&1 | grep -Eq 'version "(1[7-9]|[2-9][0-9])' || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need_apt+=(maven)
if [ "${#need_apt[@]}" -gt 0 ]; then
  say "installing ${need_apt[*]} (apt)..."
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2
fi

say "resolving Apache Kafka ${KAFKA_VERSION} jars with Maven into $CACHE/libs ..."
rm -rf "$CACHE.tmp"
mkdir -p "$CACHE.tmp"
mvn -B -q -f kafka/pom.xml package \
  -Dkafka.version="$KAFKA_VERSION" -Dlibs.dir="$CACHE.tmp/libs" >&2
rm -rf kafka/target

for jar in "kafka_2.13-${KAFKA_VERSION}.jar" "kafka-tools-${KAFKA_VERSION}.jar" \
  "kafka-server-${KAFKA_VERSION}.jar" "kafka-clients-${KAFKA_VERSION}.jar" \
  log4j-slf4j-impl- log4j-core- slf4j-api-1.7 scala-library-2.13; do
  ls "$CACHE.tmp/libs" | grep -q "^${jar}" || { say "FAILED: no ${jar}* in libs/"; exit 1; }
done
if ls "$CACHE.tmp/libs" | grep -q '^slf4j-api-2'; then
  say "FAILED: slf4j 2 on the class path: the 1.x binding would be ignored (NOP logger)"; exit 1
fi

cp kafka/log4j2.properties "$CACHE.tmp/"

# Self-check: a one-node KRaft broker from these jars must start and say so.
say "self-check: starting a one-node KRaft broker..."
work="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
bport="$(free_port)"; cport="$(free_port)"
cat > "$work/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:${cport}
listeners=PLAINTEXT://127.0.0.1:${bport},CONTROLLER://127.0.0.1:${cport}
advertised.listeners=PLAINTEXT://127.0.0.1:${bport},CONTROLLER://127.0.0.1:${cport}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=${work}/data
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
PROPS
cp_="$CACHE.tmp/libs/*"
java -Xmx256m -cp "$cp_" -Dlog4j2.configurationFile="$CACHE.tmp/log4j2.properties" \
  kafka.tools.StorageTool format --standalone -t "$(java -cp "$cp_" kafka.tools.StorageTool random-uuid)" \
  -c "$work/server.properties" > "$work/format.log" 2>&1 || { cat "$work/format.log" >&2; say "FAILED: format"; exit 1; }
java -Xms256m -Xmx512m -XX:+UseSerialGC -Dlog4j2.configurationFile="$CACHE.tmp/log4j2.properties" \
  -Dkafka.logs.dir="$work" -cp "$cp_" kafka.Kafka "$work/server.properties" > "$work/broker.log" 2>&1 &
pid=$!
for _ in $(seq 1 120); do
  grep -q "Kafka Server started" "$work/broker.log" && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.5
done
if ! grep -q "Kafka Server started" "$work/broker.log"; then
  tail -50 "$work/broker.log" >&2
  say "FAILED: the broker did not log 'Kafka Server started' within 60 s"
  exit 1
fi
say "self-check passed: $(grep -m1 -o 'Kafka version: [^ ]*' "$work/broker.log" || echo "Kafka ${KAFKA_VERSION}")"
touch "$CACHE.tmp/.verified"
rm -rf "$CACHE"
mv "$CACHE.tmp" "$CACHE"
echo "$CACHE"

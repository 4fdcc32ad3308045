#!/usr/bin/env bash
# The whole test suite: unit, golden, property, schema and end-to-end tests against a
# real Kafka-protocol broker (Tansu), which this script installs if it is missing.
# Each broker test starts its own Tansu on a free port with a fresh data file.
set -euo pipefail
cd "$(dirname "$0")/.."

TANSU_BIN="$(scripts/install-tansu.sh)"
export TANSU_BIN
echo "test broker: $TANSU_BIN"

# One test at a time: broker tests time their kills, and the machine has 2 cores.
cargo test --locked --all-targets -- --test-threads=1

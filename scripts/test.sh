#!/usr/bin/env bash
# The whole test suite: unit, golden, property, schema and end-to-end tests against a
# real Kafka-protocol broker (Tansu) and a real Prometheus, which this script installs
# if they are missing.
# Each broker test starts its own Tansu on a free port with a fresh data file.
set -euo pipefail
cd "$(dirname "$0")/.."

TANSU_BIN="$(scripts/install-tansu.sh)"

# Prometheus and promtool (Debian's package): the metrics tests scrape /metrics for real.
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  echo "installing prometheus (apt)..."
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
export TANSU_BIN
echo "test broker: $TANSU_BIN"

# One test at a time: broker tests time their kills, and the machine has 2 cores.
cargo test --locked --all-targets -- --test-threads=1

# Disk full needs a small file system of its own: a tmpfs, which takes root to mount.
probe="$(mktemp -d)"
if mount -t tmpfs -o size=1m tmpfs "$probe" 2>/dev/null; then
  umount "$probe"; rmdir "$probe"
  cargo test --locked --test disk_full -- --ignored --test-threads=1
else
  rmdir "$probe"
  echo "NOT RUN: tests/disk_full.rs (cannot mount a tmpfs here; run as root to include it)" >&2
fi

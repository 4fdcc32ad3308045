#!/usr/bin/env bash
# Benchmark: the fold engine alone (`mallquest demo`: in-process simulated source, the real
# durable store) at a given number of users, then the store's size on disk and a snapshot
# export and import of it. Prints receipts/s, CPU per million receipts, peak RSS, disk,
# and the snapshot timings.
# Usage: scripts/bench-scale.sh [USERS] [RECEIPTS]   (SNAPSHOT=0 skips the snapshot part)
#   every user buys once first (`demo --plain --every-user`; `--plain`: no game, as in the rows before it), so the store holds all USERS.
set -euo pipefail
cd "$(dirname "$0")/.."
USERS="${1:-100000}"
RECEIPTS="${2:-1000000}"
cargo build --release --locked -q --bin mallquest
BIN="$PWD/target/release/mallquest"
WORK="$(mktemp -d "${BENCH_DIR:-/tmp}/mq-scale.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

/usr/bin/time -f "%e %U %S %M" -o "$WORK/demo.time" \
  "$BIN" demo --plain --users "$USERS" --receipts "$RECEIPTS" --every-user --dir "$WORK/store" >"$WORK/demo.out"
read -r WALL UT ST RSS <"$WORK/demo.time"
grep -E "receipts/s|users|applied" "$WORK/demo.out" || cat "$WORK/demo.out"
python3 - "$RECEIPTS" "$WALL" "$UT" "$ST" "$RSS" <<'PY'
import sys
n, wall, ut, st, rss = int(sys.argv[1]), *map(float, sys.argv[2:])
print(f"fold: {n} receipts in {wall:.1f} s = {n/wall:.0f} receipts/s (incl. generating them); "
      f"CPU {ut+st:.1f} s = {(ut+st)/n*1e6:.1f} CPU-s per million; peak RSS {rss/1024:.0f} MiB")
PY
echo "disk: $(du -sb "$WORK/store" | cut -f1 | numfmt --to=iec-i)B in the store"

[ "${SNAPSHOT:-1}" = 0 ] && exit 0
printf '[store]\npath = "%s"\n' "$WORK/store" >"$WORK/a.toml"
printf '[store]\npath = "%s"\n' "$WORK/imported" >"$WORK/b.toml"
/usr/bin/time -f "export wall %e s, peak RSS %M KiB" "$BIN" snapshot export "$WORK/snap.jsonl" --config "$WORK/a.toml"
echo "snapshot file: $(du -b "$WORK/snap.jsonl" | cut -f1 | numfmt --to=iec-i)B"
/usr/bin/time -f "import wall %e s, peak RSS %M KiB" "$BIN" snapshot import "$WORK/snap.jsonl" --config "$WORK/b.toml"

#!/usr/bin/env bash
# The long forms of the reliability tests (not run by scripts/test.sh):
#   1. the crash test in group mode with static membership, 50 SIGKILLs over 100,000 receipts
#      (refunds, duplicates, bad events), each restarted at once; then 10 with dynamic
#      membership and 20 with manual assignment;
#   2. 1,000,000 generated hostile inputs through the decoder and the fold;
#   3. 2,000 random streams with crashes against the reference fold;
#   4. twenty minutes of receipts at 250/s while the API is queried: RSS, lag, CPU and the
#      memory gauges every 30 s, then the checks that RSS levelled off (the last quarter's
#      peak within 5% of the third's) and that the outputs are exact (tests/soak.rs, which
#      explains the 32 MiB block cache it runs with; MALLQUEST_SOAK_SECS, _RATE, _USERS,
#      _CACHE_MB, _WRITE_BUFFER_MB);
#   5. scale-out: three instances of one group, five rounds of kill -9, a paused zombie and
#      a lost disk, with a new instance and a planned stop, 60,000 receipts
#      (tests/kafka_scale.rs, MALLQUEST_SCALE_ROUNDS).
# Everything runs on Apache Kafka (scripts/install-kafka.sh).
# Usage: scripts/soak.sh [KILLS] [RECEIPTS] [FUZZ_CASES]
set -euo pipefail
cd "$(dirname "$0")/.."
KILLS="${1:-50}"
RECEIPTS="${2:-100000}"
FUZZ="${3:-1000000}"
MALLQUEST_KAFKA_HOME="$(scripts/install-kafka.sh)"
export MALLQUEST_KAFKA_HOME

echo "== crash test, group mode, static membership: $KILLS SIGKILLs over $RECEIPTS receipts"
MALLQUEST_CRASH_KILLS="$KILLS" MALLQUEST_CRASH_RECEIPTS="$RECEIPTS" \
  cargo test --release --locked --test kafka_e2e sigkill_in_group_mode -- --nocapture --test-threads=1 2>&1 \
  | grep -E 'kills over|^test |test result'
echo "== crash test, dynamic membership (10 kills) and manual assignment (20 kills)"
MALLQUEST_GROUP_CRASH_KILLS=10 MALLQUEST_MANUAL_CRASH_KILLS=20 \
  cargo test --release --locked --test kafka_e2e sigkill_with -- --nocapture --test-threads=1 2>&1 \
  | grep -E 'kills over|^test |test result'

echo "== $FUZZ generated hostile inputs (decoder and fold)"
PROPTEST_CASES="$FUZZ" cargo test --release --locked --test decode_fuzz -- --test-threads=2 2>&1 | grep -E '^test |test result'

echo "== 2000 random streams with crashes vs the reference fold"
PROPTEST_CASES=2000 cargo test --release --locked --test fold_prop 2>&1 | grep -E '^test |test result'

echo "== twenty minutes of steady load with queries"
cargo test --release --locked --test soak -- --ignored --nocapture --test-threads=1 2>&1 \
  | grep -E '^t=|^soak:|^test |test result'

echo "== scale-out: 5 rounds of moves between instances"
MALLQUEST_SCALE_ROUNDS=5 cargo test --release --locked --test kafka_scale partitions_move -- --nocapture --test-threads=1 2>&1 \
  | grep -E 'assignments,|queries during|^test |test result'

"""The mallquest fold written with Quix Streams (RocksDB state), for the drain benchmark.

Same default rules as mallquest: coins = amount x multiplier (100%) per 1.00, XP = 10 per
receipt + 1 per whole 1.00, level = 1 + isqrt(xp / 100) capped at 100, 50 bonus coins per
level gained; duplicates by (user, receipt_id), refunds proportional to the original;
bad events go to the DLQ topic. Reads RECEIPTS records of the topic, then stops.

Usage: quix_fold.py BROKER TOPIC RECEIPTS STATE_DIR [GROUP] [SUFFIX]
  GROUP: the consumer group (default quix-bench); SUFFIX is appended to the output topics'
  names (quix-projections, quix-dlq), so that runs on one broker do not share them.
"""

import json
import math
import re
import sys
import time

from quixstreams import Application

BROKER, TOPIC, TOTAL, STATE_DIR = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
GROUP = sys.argv[5] if len(sys.argv) > 5 else "quix-bench"
SUFFIX = sys.argv[6] if len(sys.argv) > 6 else ""
AMOUNT = re.compile(r"^(0|[1-9][0-9]{0,6})(\.[0-9]{1,2})?$")

app = Application(
    broker_address=BROKER,
    consumer_group=GROUP,
    auto_offset_reset="earliest",
    state_dir=STATE_DIR,
    loglevel="WARNING",
    # Draining a backlog outruns the broker's acknowledgements: let the producer queue
    # grow rather than fail with "Queue full".
    producer_extra_config={
        "queue.buffering.max.messages": 10_000_000,
        "queue.buffering.max.kbytes": 2_097_151,
    },
)
receipts = app.topic(TOPIC, value_deserializer="bytes", key_deserializer="str")
projections = app.topic("quix-projections" + SUFFIX, value_serializer="json", key_serializer="str")
dlq = app.topic("quix-dlq" + SUFFIX, value_serializer="json", key_serializer="str")

seen = 0
started = time.monotonic()


def minor(text):
    if not isinstance(text, str) or not AMOUNT.match(text):
        return None
    whole, _, frac = text.partition(".")
    value = int(whole) * 100 + int((frac + "00")[:2])
    return value if 0 < value <= 100_000_000 else None


def level_for(xp):
    return min(1 + math.isqrt(max(xp, 0) // 100), 100)


def fold(value, state):
    """Returns ("projection", dict) or ("dlq", reason)."""
    try:
        r = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return ("dlq", "invalid_json")
    if not isinstance(r, dict) or not all(
        isinstance(r.get(k), str) for k in ("receipt_id", "user_id", "store_id", "issued_at")
    ):
        return ("dlq", "schema")
    amount = minor(r.get("amount"))
    if amount is None:
        return ("dlq", "amount")
    if r.get("currency") not in (None, "AED"):
        return ("dlq", "currency")
    user = state.get("user") or {
        "user_id": r["user_id"], "coins": 0, "xp": 0, "level": 1, "total_spent": 0,
        "receipt_count": 0, "refund_count": 0, "stores": [], "version": 0,
    }
    ledger_key = "r:" + r["receipt_id"]
    previous = state.get(ledger_key)
    kind = r.get("type") or "purchase"
    if previous is not None:
        if previous["amount"] == amount and previous["kind"] == kind:
            return None  # duplicate
        return ("dlq", "conflicting_duplicate")
    if kind == "purchase":
        coins = amount // 100
        xp = 10 + amount // 100
        user["xp"] += xp
        level = max(level_for(user["xp"]), user["level"])
        bonus = (level - user["level"]) * 50
        user["level"] = level
        user["coins"] += coins + bonus
        user["total_spent"] += amount
        user["receipt_count"] += 1
        if r["store_id"] not in user["stores"]:
            user["stores"].append(r["store_id"])
        state.set(ledger_key, {"kind": kind, "amount": amount, "coins": coins, "xp": xp, "refunded": 0})
    elif kind == "refund":
        original_key = "r:" + str(r.get("refund_of"))
        original = state.get(original_key)
        if original is None or original["kind"] != "purchase":
            return ("dlq", "unknown_original")
        refunded = original["refunded"] + amount
        if refunded > original["amount"]:
            return ("dlq", "refund_exceeds_original")
        part = lambda earned, done: earned * done // original["amount"]
        user["coins"] -= part(original["coins"], refunded) - part(original["coins"], original["refunded"])
        user["xp"] -= part(original["xp"], refunded) - part(original["xp"], original["refunded"])
        user["total_spent"] -= amount
        user["refund_count"] += 1
        original["refunded"] = refunded
        state.set(original_key, original)
        state.set(ledger_key, {"kind": kind, "amount": amount, "coins": 0, "xp": 0, "refunded": 0})
    else:
        return ("dlq", "schema")
    user["version"] += 1
    state.set("user", user)
    return ("projection", user)


def step(value, state):
    global seen
    seen += 1
    out = fold(value, state)
    if seen >= TOTAL:
        print(f"quix: folded {seen} records in {time.monotonic() - started:.2f} s", flush=True)
        app.stop()
    return out


sdf = app.dataframe(receipts)
sdf = sdf.apply(step, stateful=True)
sdf = sdf.filter(lambda out: out is not None)
sdf[sdf.apply(lambda out: out[0] == "projection")].apply(lambda out: out[1]).to_topic(projections)
sdf[sdf.apply(lambda out: out[0] == "dlq")].apply(lambda out: {"reason": out[1]}).to_topic(dlq)

app.run()

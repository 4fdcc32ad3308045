//! The golden vectors of `tests/golden/` (copied from the team's shared set).

use std::collections::BTreeMap;

use base64::Engine as _;
use std::sync::Arc;

use mallquest::domain::Rules;
use mallquest::pipeline::{MemorySink, Processor, Record};
use mallquest::store::Store;
use serde_json::Value;

/// One record of `receipts.jsonl`.
#[derive(Debug, Clone)]
pub struct GoldenRecord {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

fn lines(name: &str) -> Vec<Value> {
    let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    read_lines(&path)
}

fn read_lines(path: &str) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn receipts() -> Vec<GoldenRecord> {
    records(lines("receipts.jsonl"))
}

fn records(lines: Vec<Value>) -> Vec<GoldenRecord> {
    lines
        .into_iter()
        .map(|v| GoldenRecord {
            offset: v["offset"].as_i64().unwrap(),
            key: v["key"].as_str().map(|s| s.as_bytes().to_vec()),
            value: match v.get("value").and_then(Value::as_str) {
                Some(s) => s.as_bytes().to_vec(),
                None => base64::engine::general_purpose::STANDARD
                    .decode(v["value_base64"].as_str().unwrap())
                    .unwrap(),
            },
        })
        .collect()
}

/// Expected final projection per user, as JSON.
pub fn projections() -> BTreeMap<String, Value> {
    lines("expected-projections.jsonl")
        .into_iter()
        .map(|v| (v["user_id"].as_str().unwrap().to_owned(), v))
        .collect()
}

/// Expected (offset, reason) of every rejected record.
pub fn dlq() -> Vec<(i64, String)> {
    lines("expected-dlq.jsonl")
        .into_iter()
        .map(|v| {
            (
                v["offset"].as_i64().unwrap(),
                v["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Expected per user: (total bonus coins, highest to_level).
pub fn level_ups() -> BTreeMap<String, (i64, u64)> {
    let mut out: BTreeMap<String, (i64, u64)> = BTreeMap::new();
    for v in lines("expected-level-ups.jsonl") {
        let e = out
            .entry(v["user_id"].as_str().unwrap().to_owned())
            .or_default();
        e.0 += v["bonus_coins"].as_i64().unwrap();
        e.1 = e.1.max(v["to_level"].as_u64().unwrap());
    }
    out
}

/// The rules the golden vectors were worked out with.
pub fn rules() -> Rules {
    let mut r = Rules::default();
    r.store_multipliers.insert("s-07".into(), 200);
    r.store_multipliers.insert("s-13".into(), 150);
    r
}

/// Compares a projection JSON to the expected one: timestamps as instants, the rest exactly.
pub fn assert_projection_eq(actual: &Value, expected: &Value) {
    if let Some(diff) = projection_diff(actual, expected) {
        panic!("{diff}");
    }
}

/// Whether a projection JSON matches the expected one, as [`assert_projection_eq`] judges.
pub fn projection_matches(actual: &Value, expected: &Value) -> bool {
    projection_diff(actual, expected).is_none()
}

/// The first difference between a projection and the expected one: timestamps compared as
/// instants, the rest exactly; the game's fields are compared when the expectation has
/// them (tests/golden/game), as the core vectors predate them.
fn projection_diff(actual: &Value, expected: &Value) -> Option<String> {
    let (Some(actual_obj), Some(obj)) = (actual.as_object(), expected.as_object()) else {
        return Some(format!("not objects: {actual} vs {expected}"));
    };
    let extra = actual_obj
        .keys()
        .any(|k| !obj.contains_key(k) && !GAME_FIELDS.contains(&k.as_str()));
    let missing = obj.keys().any(|k| !actual_obj.contains_key(k));
    if extra || missing {
        return Some(format!("field sets differ: {actual} vs {expected}"));
    }
    obj.iter().find_map(|(k, want)| {
        let got = &actual[k];
        let same = if k.ends_with("_at") {
            let inst = |v: &Value| v.as_str().map(mallquest::domain::Timestamp::parse_rfc3339);
            inst(got) == inst(want)
        } else {
            got == want
        };
        (!same).then(|| format!("{k} of {}: {got} vs {want}", expected["user_id"]))
    })
}

/// Projection fields of the game, absent from the core golden vectors.
pub const GAME_FIELDS: [&str; 10] = [
    "coins_by_campaign",
    "missions",
    "streak",
    "badges",
    "redemptions",
    "coins_redeemed",
    "tier",
    "tier_figure",
    "coins_expired",
    "next_expiry",
];

/// The game's golden vectors (`tests/golden/game/`, copied from the shared set).
pub mod game {
    use super::*;

    fn lines(name: &str) -> Vec<Value> {
        read_lines(&format!(
            "{}/tests/golden/game/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
    }

    /// The configuration the vectors were worked out with, as written.
    pub fn config_text() -> String {
        let path = format!(
            "{}/tests/golden/game/config.toml",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
    }

    /// The configuration the vectors were worked out with.
    pub fn config() -> mallquest::config::Config {
        mallquest::config::Config::parse(&config_text()).unwrap()
    }

    /// What the game reference (`support::game_reference`) makes of the vectors'
    /// receipts, all on partition 0.
    pub fn reference() -> crate::support::game_reference::GameExpected {
        let records: Vec<_> = receipts()
            .into_iter()
            .map(|r| (0, r.offset, r.key, r.value))
            .collect();
        crate::support::game_reference::fold(&config_text(), &records)
    }

    /// The receipt stream.
    pub fn receipts() -> Vec<GoldenRecord> {
        records(lines("receipts.jsonl"))
    }

    /// Expected final projection per user (zero `coins_by_campaign` entries left out).
    pub fn projections() -> BTreeMap<String, Value> {
        lines("expected-projections.jsonl")
            .into_iter()
            .map(|v| (v["user_id"].as_str().unwrap().to_owned(), v))
            .collect()
    }

    /// Every event, in emission order.
    pub fn events() -> Vec<Value> {
        lines("expected-events.jsonl")
    }

    /// Expected (offset, reason) of every rejected record.
    pub fn dlq() -> Vec<(i64, String)> {
        lines("expected-dlq.jsonl")
            .into_iter()
            .map(|v| {
                (
                    v["offset"].as_i64().unwrap(),
                    v["reason"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// The vectors' config with today's `[rules]` rates moved into a last
    /// `[[rules.history]]` entry (until after every receipt) and new rates in `[rules]`: what
    /// an operator writes to change the rules from a date on.
    pub fn changed_rules_config() -> String {
        let text = config_text()
            .replacen("coins_per_unit = 1\n", "coins_per_unit = 5\n", 1)
            .replacen("xp_per_unit = 1\n", "xp_per_unit = 7\n", 1)
            .replacen(
                "\"s-el-01\" = 200\n\"s-fa-03\" = 150\n",
                "\"s-el-01\" = 100\n",
                1,
            );
        let moved =
            "\n[[rules.history]]\nuntil = \"2027-01-01T00:00:00+01:00\"\ncoins_per_unit = 1\n\
                     xp_per_receipt = 10\nxp_per_unit = 1\n[rules.history.store_multipliers]\n\
                     \"s-el-01\" = 200\n\"s-fa-03\" = 150\n";
        let at = text.find("[store_categories]").unwrap();
        format!("{}{moved}\n{}", &text[..at], &text[at..])
    }

    /// Expected boards: `period`, `at`, `by`, `of` and the top 10 `entries`.
    pub fn boards() -> Vec<Value> {
        lines("expected-boards.jsonl")
    }
}

/// The time vectors (`tests/golden/time/`: coin expiry, tiers and event-time timers,
/// copied from the shared set), with the `to-qualified/` variant's expectations.
pub mod time {
    use super::*;

    /// Every instant in `v` (nested ones too) as its canonical text, so that instants
    /// written with another offset or fraction compare equal.
    pub fn instants(v: &mut Value) {
        match v {
            Value::String(s) => {
                if let Some(t) = mallquest::domain::Timestamp::parse_rfc3339(s) {
                    *s = t.to_rfc3339();
                }
            }
            Value::Array(a) => a.iter_mut().for_each(instants),
            Value::Object(o) => o.values_mut().for_each(instants),
            _ => {}
        }
    }

    /// A projection as the vectors write it: mission progress left out (its shape is
    /// ours), zero campaign entries left out, instants canonical.
    pub fn comparable(mut v: Value) -> Value {
        let o = v.as_object_mut().unwrap();
        o.remove("missions");
        if let Some(c) = o
            .get_mut("coins_by_campaign")
            .and_then(Value::as_object_mut)
        {
            c.retain(|_, n| n.as_i64() != Some(0));
        }
        instants(&mut v);
        v
    }

    fn lines(dir: &str, name: &str) -> Vec<Value> {
        read_lines(&format!(
            "{}/tests/golden/time/{dir}{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
    }

    /// The configuration of the set in `dir` (`""` or `"to-qualified/"`), as written.
    pub fn config_text(dir: &str) -> String {
        let path = format!(
            "{}/tests/golden/time/{dir}config.toml",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
    }

    /// The receipt stream (one for both sets).
    pub fn receipts() -> Vec<GoldenRecord> {
        records(lines("", "receipts.jsonl"))
    }

    /// Expected final projection per user.
    pub fn projections(dir: &str) -> BTreeMap<String, Value> {
        lines(dir, "expected-projections.jsonl")
            .into_iter()
            .map(|v| (v["user_id"].as_str().unwrap().to_owned(), v))
            .collect()
    }

    /// Every event, in emission order.
    pub fn events(dir: &str) -> Vec<Value> {
        lines(dir, "expected-events.jsonl")
    }

    /// Expected (offset, reason) of every rejected record.
    pub fn dlq(dir: &str) -> Vec<(i64, String)> {
        lines(dir, "expected-dlq.jsonl")
            .into_iter()
            .map(|v| {
                (
                    v["offset"].as_i64().unwrap(),
                    v["reason"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }
}

/// Folds the golden stream through the real pipeline into a fresh store, committing every
/// `commit_every` records. Returns what was published, the store, and its directory.
pub fn fold_into_store(commit_every: usize) -> (MemorySink, Arc<Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let mut processor = Processor::new(Arc::clone(&store), rules());
    let mut sink = MemorySink::default();
    for (i, r) in receipts().iter().enumerate() {
        feed(&mut processor, r);
        if (i + 1) % commit_every == 0 {
            processor.commit(&mut sink).unwrap();
        }
    }
    processor.commit(&mut sink).unwrap();
    (sink, store, dir)
}

/// Folds one golden record (partition 0 of "receipts") into the batch in hand.
pub fn feed(processor: &mut Processor, r: &GoldenRecord) {
    processor
        .process(Record {
            topic: "receipts",
            partition: 0,
            offset: r.offset,
            key: r.key.as_deref(),
            payload: Some(&r.value),
            timestamp_ms: None,
        })
        .unwrap();
}

//! Hostile input, generated: the decoder and the fold never panic or overflow, and give
//! the same decision on replay. `PROPTEST_CASES` raises the count (scripts/soak.sh runs
//! 1,000,000).

use mallquest::codec::decode_receipt;
use mallquest::domain::{apply, Rules, Source, UserState};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

/// JSON-ish fragments, so that generated inputs get past the parser often.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"10.00\"".to_owned()),
        Just("1e3".to_owned()),
        Just("-0".to_owned()),
        Just("99999999999999999999999999".to_owned()),
        Just("\"1000000.00\"".to_owned()),
        Just("\"0.01\"".to_owned()),
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("\"2026-11-18T11:00:00+14:00\"".to_owned()),
        Just("\"9999-12-31T23:59:59Z\"".to_owned()),
        Just("\"0000-01-01T00:00:00Z\"".to_owned()),
        "\"[a-z0-9.:+-]{0,12}\"",
        "[0-9]{1,25}(\\.[0-9]{1,4})?",
    ]
}

fn receipt_json() -> impl Strategy<Value = String> {
    (
        fragment(),
        fragment(),
        fragment(),
        prop::option::of(prop_oneof![Just("purchase"), Just("refund"), Just("x")]),
        prop::option::of(fragment()),
    )
        .prop_map(|(amount, issued, store, kind, refund_of)| {
            let mut s = format!(
                r#"{{"receipt_id":"r-1","user_id":"u-1","store_id":{store},"amount":{amount},"issued_at":{issued}"#
            );
            if let Some(k) = kind {
                s.push_str(&format!(r#","type":"{k}""#));
            }
            if let Some(r) = refund_of {
                s.push_str(&format!(r#","refund_of":{r}"#));
            }
            s.push('}');
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn arbitrary_bytes_never_panic_and_decide_the_same_twice(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let rules = Rules::default();
        let a = decode_receipt(Some(b"u-1"), Some(&bytes), &rules);
        let b = decode_receipt(Some(b"u-1"), Some(&bytes), &rules);
        prop_assert_eq!(a, b);
    }

    #[test]
    fn receipt_shaped_input_folds_without_panic_or_overflow(json in receipt_json(), coins in any::<i64>(), xp in any::<i64>(), spent in any::<i64>()) {
        let rules = Rules::default();
        let decided = decode_receipt(Some(b"u-1"), Some(json.as_bytes()), &rules);
        prop_assert_eq!(&decided, &decode_receipt(Some(b"u-1"), Some(json.as_bytes()), &rules));
        if let Ok(r) = decided {
            // Any starting totals, even at the edges of i64: checked, never wrapped.
            let mut s = UserState::new("u-1");
            s.coins = coins;
            s.xp = xp;
            s.total_spent = spent;
            let before = s.clone();
            let src = Source { partition: 0, offset: 0 };
            let first = apply(&mut s, None, None, &r, src, &rules);
            let mut again = before.clone();
            prop_assert_eq!(&first, &apply(&mut again, None, None, &r, src, &rules));
            prop_assert_eq!(&s, &again);
            if first.is_err() {
                prop_assert_eq!(&s, &before);
            }
        }
    }
}

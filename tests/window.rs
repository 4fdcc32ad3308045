//! The dedup window: the ledger keeps only what the window needs. Entries older than the
//! window are deleted as the mark moves (from the store, and from the changelog by
//! tombstones), a receipt older than the window is `too_old`, and neither depends on when
//! compaction ran.

use std::sync::Arc;

use mallquest::domain::{Reject, Rules};
use mallquest::pipeline::{MemorySink, Processor, Record};
use mallquest::store::Store;

const TOPIC: &str = "receipts";
const DAYS: i64 = 200;
const PER_DAY: i64 = 50;
const WINDOW_DAYS: u32 = 90;

fn receipt(id: &str, user: &str, day: i64, extra: &str) -> Vec<u8> {
    // 2026-01-01T00:00:00Z plus `day` days.
    let secs = 1_767_225_600 + day * 86_400;
    let at = chrono::DateTime::from_timestamp(secs, 0)
        .unwrap()
        .to_rfc3339();
    format!(
        r#"{{"receipt_id":"{id}","user_id":"{user}","store_id":"s-1","amount":"10.00","issued_at":"{at}"{extra}}}"#
    )
    .into_bytes()
}

struct Fold {
    store: Arc<Store>,
    processor: Processor,
    sink: MemorySink,
    offset: i64,
}

impl Fold {
    fn new(dir: &std::path::Path) -> Self {
        let store = Arc::new(Store::open(dir).unwrap());
        let processor = Processor::new(Arc::clone(&store), Rules::default())
            .with_dedup_window_days(WINDOW_DAYS);
        Self {
            store,
            processor,
            sink: MemorySink::default(),
            offset: 0,
        }
    }

    fn feed(&mut self, user: &str, value: &[u8]) {
        self.feed_stamped(user, value, None);
    }

    /// Feeds a record carrying a Kafka timestamp of `day` (days after 2026-01-01).
    fn feed_on(&mut self, user: &str, value: &[u8], day: i64) {
        self.feed_stamped(user, value, Some((1_767_225_600 + day * 86_400) * 1000));
    }

    fn feed_stamped(&mut self, user: &str, value: &[u8], timestamp_ms: Option<i64>) {
        self.processor
            .process(Record {
                topic: TOPIC,
                partition: 0,
                offset: self.offset,
                key: Some(user.as_bytes()),
                payload: Some(value),
                timestamp_ms,
            })
            .unwrap();
        self.offset += 1;
        self.processor.commit(&mut self.sink).unwrap();
    }

    fn last_reason(&self) -> Option<Reject> {
        self.sink
            .dead_letters
            .last()
            .filter(|d| d.offset == self.offset - 1)
            .map(|d| d.reason)
    }
}

/// 200 days of purchases, 50 a day, one user per day.
fn history(fold: &mut Fold) {
    for day in 0..DAYS {
        for i in 0..PER_DAY {
            let user = format!("u-{day}");
            fold.feed(&user, &receipt(&format!("r-{day}-{i}"), &user, day, ""));
        }
    }
}

#[test]
fn ledger_entries_out_of_the_window_leave_the_store_and_the_changelog() {
    let dir = tempfile::tempdir().unwrap();
    let mut fold = Fold::new(dir.path());
    fold.sink.keep_changelog = true;
    history(&mut fold);
    // Newest day is 199; the window keeps days 109..=199 (issued_at >= mark - 90 days).
    // The entries that left it were deleted as the mark moved, compaction or not.
    let kept_days = i64::from(WINDOW_DAYS) + 1;
    assert_eq!(
        fold.store.ledger_len().unwrap(),
        (kept_days * PER_DAY) as u64,
        "the ledger must hold exactly the receipts within the window"
    );
    // Each of them was deleted from the changelog once, by a tombstone; none in the window.
    let mut tombstones: Vec<String> = fold
        .sink
        .changelog
        .iter()
        .filter_map(|(_, e)| match e {
            mallquest::changelog::Entry::LedgerExpired { receipt_id, .. } => {
                Some(receipt_id.clone())
            }
            _ => None,
        })
        .collect();
    tombstones.sort();
    let mut expected: Vec<String> = (0..DAYS - kept_days)
        .flat_map(|day| (0..PER_DAY).map(move |i| format!("r-{day}-{i}")))
        .collect();
    expected.sort();
    assert_eq!(tombstones, expected);

    // Compaction has nothing left to drop.
    fold.store.compact_ledger().unwrap();
    assert_eq!(
        fold.store.ledger_len().unwrap(),
        (kept_days * PER_DAY) as u64
    );
    // Users and their totals are untouched by compaction.
    assert_eq!(fold.store.users().count() as i64, DAYS);
    let u0 = fold.store.user(0, "u-0").unwrap().unwrap();
    assert_eq!(u0.receipt_count, PER_DAY as u64);

    // The committed mark survives a reopen, and so does the window's effect.
    drop(fold);
    let mut fold = Fold::new(dir.path());
    fold.offset = DAYS * PER_DAY;
    assert_eq!(
        fold.store.mark(0).map(|m| m.secs),
        Some(1_767_225_600 + (DAYS - 1) * 86_400)
    );
    assert_eq!(
        fold.store.ledger_len().unwrap(),
        (kept_days * PER_DAY) as u64
    );
}

#[test]
fn too_old_receipts_are_rejected_and_forgotten_entries_count_as_absent() {
    let dir = tempfile::tempdir().unwrap();
    let mut fold = Fold::new(dir.path());
    history(&mut fold);

    // Older than the window: too_old, whether new or an exact duplicate.
    fold.feed("u-5", &receipt("r-new-old", "u-5", 5, ""));
    assert_eq!(fold.last_reason(), Some(Reject::TooOld));
    fold.feed("u-5", &receipt("r-5-0", "u-5", 5, ""));
    assert_eq!(fold.last_reason(), Some(Reject::TooOld));
    // Exactly at the window's edge: still checked, so an exact duplicate is ignored.
    let edge = DAYS - 1 - i64::from(WINDOW_DAYS);
    let user = format!("u-{edge}");
    let before = fold.store.user(0, &user).unwrap().unwrap();
    fold.feed(&user, &receipt(&format!("r-{edge}-0"), &user, edge, ""));
    assert_eq!(fold.last_reason(), None);
    assert_eq!(fold.store.user(0, &user).unwrap().unwrap(), before);

    // A refund issued today of a purchase that fell out of the window: the ledger no
    // longer knows the purchase, before and after compaction alike.
    let today = DAYS - 1;
    let refund = |n: u32| {
        receipt(
            &format!("refund-{n}"),
            "u-3",
            today,
            r#","type":"refund","refund_of":"r-3-0""#,
        )
    };
    fold.feed("u-3", &refund(1));
    assert_eq!(fold.last_reason(), Some(Reject::UnknownOriginal));
    fold.store.compact_ledger().unwrap();
    fold.feed("u-3", &refund(2));
    assert_eq!(fold.last_reason(), Some(Reject::UnknownOriginal));

    // A refund of a purchase within the window still applies.
    let recent = format!("u-{today}");
    fold.feed(
        &recent,
        &receipt(
            "refund-3",
            &recent,
            today,
            &format!(r#","type":"refund","refund_of":"r-{today}-0""#),
        ),
    );
    assert_eq!(fold.last_reason(), None);
    assert_eq!(
        fold.store.user(0, &recent).unwrap().unwrap().refund_count,
        1
    );
}

#[test]
fn a_receipt_never_raises_the_window_past_itself() {
    // The first receipt of a partition sets the mark; a receipt far in the past of it
    // is too old, one within it is applied, and a later one moves the window forward.
    let dir = tempfile::tempdir().unwrap();
    let mut fold = Fold::new(dir.path());
    fold.feed("u-a", &receipt("r-1", "u-a", 100, ""));
    fold.feed("u-a", &receipt("r-2", "u-a", 9, ""));
    assert_eq!(fold.last_reason(), Some(Reject::TooOld));
    fold.feed("u-a", &receipt("r-3", "u-a", 10, ""));
    assert_eq!(fold.last_reason(), None);
    fold.feed("u-a", &receipt("r-4", "u-a", 150, ""));
    fold.feed("u-a", &receipt("r-5", "u-a", 59, ""));
    assert_eq!(fold.last_reason(), Some(Reject::TooOld));
    assert_eq!(fold.store.user(0, "u-a").unwrap().unwrap().receipt_count, 3);
}

#[test]
fn a_receipt_from_a_clock_years_ahead_cannot_make_the_rest_too_old() {
    // The record's Kafka timestamp bounds how far one receipt moves the mark (to one day
    // past it); without a timestamp the receipt's own issued_at is all there is.
    let far_future = 365 * 70;
    for stamped in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut fold = Fold::new(dir.path());
        let feed = |fold: &mut Fold, id: &str, day: i64| {
            let v = receipt(id, "u-a", day, "");
            if stamped {
                fold.feed_on("u-a", &v, 100);
            } else {
                fold.feed("u-a", &v);
            }
        };
        feed(&mut fold, "r-1", 100);
        feed(&mut fold, "r-future", far_future);
        assert_eq!(fold.last_reason(), None, "the receipt itself is applied");
        feed(&mut fold, "r-2", 50);
        if stamped {
            assert_eq!(
                fold.store.mark(0).map(|m| m.secs),
                Some(1_767_225_600 + 101 * 86_400)
            );
            assert_eq!(
                fold.last_reason(),
                None,
                "a normal receipt after it is applied"
            );
        } else {
            assert_eq!(fold.last_reason(), Some(Reject::TooOld));
        }
    }
}

/// A receipt id used again after its first entry left the window is a new receipt: the
/// expiry of the old entry (in the same batch or a later one) never deletes the new one,
/// which goes on catching duplicates until it leaves the window itself.
#[test]
fn a_receipt_id_reused_after_its_entry_expired_keeps_its_new_entry() {
    for same_batch in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut fold = Fold::new(dir.path());
        fold.sink.keep_changelog = true;
        fold.feed("u-a", &receipt("r-x", "u-a", 0, ""));
        let feed = |fold: &mut Fold, id: &str, day: i64, commit: bool| {
            fold.processor
                .process(Record {
                    topic: TOPIC,
                    partition: 0,
                    offset: fold.offset,
                    key: Some(b"u-a"),
                    payload: Some(&receipt(id, "u-a", day, "")),
                    timestamp_ms: None,
                })
                .unwrap();
            fold.offset += 1;
            if commit {
                fold.processor.commit(&mut fold.sink).unwrap();
            }
        };
        // Day 100 moves the mark: r-x of day 0 is out of the window; then r-x again.
        feed(&mut fold, "r-later", 100, !same_batch);
        feed(&mut fold, "r-x", 100, true);
        let entry = fold.store.ledger_entry(0, "u-a", "r-x").unwrap();
        assert_eq!(
            entry.map(|e| e.issued_at.secs),
            Some(1_767_225_600 + 100 * 86_400),
            "same batch: {same_batch}"
        );
        // Later batches expire nothing of it while it is in the window.
        feed(&mut fold, "r-next", 150, true);
        assert!(fold.store.ledger_entry(0, "u-a", "r-x").unwrap().is_some());
        // A duplicate of the new r-x is still caught.
        let before = fold.store.user(0, "u-a").unwrap().unwrap();
        feed(&mut fold, "r-x", 100, true);
        assert_eq!(fold.store.user(0, "u-a").unwrap().unwrap(), before);
        assert_eq!(before.receipt_count, 4);
        // The changelog's last word on r-x is the new entry, not a tombstone.
        let last = fold
            .sink
            .changelog
            .iter()
            .rev()
            .find(|(_, e)| e.key() == b"l\0u-a\0r-x")
            .map(|(_, e)| e.clone())
            .unwrap();
        assert!(
            matches!(last, mallquest::changelog::Entry::Ledger { .. }),
            "{last:?}"
        );
    }
}

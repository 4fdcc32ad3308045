//! The one loop that folds records from a [`Source`] and commits them through a [`Sink`]:
//! `run` drives it with the Kafka consumer, `demo` and `bench` with the simulator. It owns
//! the order of things between commits (fold while records come and no commit is due, or
//! while the store write before it still runs; send the batch's outputs early when nothing
//! is in hand; commit when the [`Cadence`] says so, or once the source stops); the source
//! owns what is particular to where records come from: how to wait for one, when to pause,
//! what to do after a failed commit.

use std::ops::DerefMut;
use std::time::{Duration, Instant};

use super::{BatchStats, Cadence, CommitError, Processor, Record, Sink};

/// Longest wait for one record: a stop is seen at least this often, whatever the commit
/// interval.
pub const MAX_POLL_WAIT: Duration = Duration::from_millis(100);

/// The fold and where its outputs go: what the loop folds and commits with.
pub struct Engine<K> {
    /// Folds records into the batch in hand and commits it.
    pub processor: Processor,
    /// Where the batch's outputs are published before it is stored.
    pub sink: K,
}

/// What one poll of a source gave.
pub enum Polled<M> {
    /// A record, lent by the source.
    Message(M),
    /// Nothing came within the wait.
    Idle,
    /// The source has nothing more, ever (a finite source: `demo`, `bench`).
    End,
}

/// A message a source lends: the record it holds.
pub trait Message {
    /// The record, borrowed from the message.
    fn record(&self) -> Record<'_>;
}

/// What a source's check before a commit says.
pub enum Gate {
    /// Commit and fold on.
    Open,
    /// Folding is paused (the source waited a while meanwhile); nothing is in hand.
    Closed,
    /// Folding resumes; the batch in hand was dropped and the source rewound to the store.
    Reopened,
}

/// How the loop ended.
#[derive(Debug)]
pub enum Finish {
    /// The source ended and everything folded is committed.
    Ended(BatchStats),
    /// The source asked to stop and the batch in hand is committed.
    Stopped(BatchStats),
    /// The source asked to stop while folding was paused: nothing was in hand.
    StoppedPaused(BatchStats),
}

impl Finish {
    /// The counts of everything committed.
    pub fn stats(&self) -> &BatchStats {
        match self {
            Self::Ended(s) | Self::Stopped(s) | Self::StoppedPaused(s) => s,
        }
    }
}

/// Where the loop's records come from, and who hears of its commits. Every method takes
/// `&self`: a message lent by [`Source::poll`] borrows the source while the loop folds it
/// with [`Source::engine`].
pub trait Source {
    /// Where outputs go.
    type Sink: Sink;
    /// A record lent by [`Source::poll`].
    type Message<'a>: Message
    where
        Self: 'a;

    /// The processor and its sink. `run`'s rebalance callback commits with them too, so
    /// they may be behind a lock; the loop never holds them across a poll (the callback
    /// runs inside one).
    fn engine(&self) -> impl DerefMut<Target = Engine<Self::Sink>> + '_;

    /// Waits at most `wait` for the next record. An error ends the loop, with the batch in
    /// hand uncommitted.
    fn poll(&self, wait: Duration) -> anyhow::Result<Polled<Self::Message<'_>>>;

    /// Whether to stop once the batch in hand is committed.
    fn stopping(&self) -> bool;

    /// Asked before each commit; `run` pauses while the disk is low.
    fn gate(&self) -> anyhow::Result<Gate> {
        Ok(Gate::Open)
    }

    /// The most records a batch may grow to while a due commit waits for the store write
    /// before it, besides the cadence's most records: `run` keeps it within what its disk
    /// guard's margin covers. None by default.
    fn batch_cap(&self) -> u64 {
        u64::MAX
    }

    /// Just before the commit, with the engine: `run` gives its transactional sink the
    /// group's metadata here.
    fn before_commit(&self, engine: &mut Engine<Self::Sink>) {
        let _ = engine;
    }

    /// A batch was committed (`took`: the commit's time).
    fn committed(&self, stats: &BatchStats, took: Duration);

    /// A commit or an early send failed, and the batches in hand were dropped. `Ok`: the
    /// source was rewound to the store's offsets, and folding goes on; an error ends the
    /// loop (a store that cannot be written, for example).
    fn failed(&self, error: CommitError) -> anyhow::Result<()>;
}

/// Folds records from `source` and commits them as `cadence` says (every interval, or every
/// so many records), until the source ends or asks to stop; the batch in hand is committed
/// before it returns. A commit due while the store write of the one before still runs
/// waits for it by folding on, while records come and the batch is under both the
/// cadence's most records and [`Source::batch_cap`]. Between commits, a batch's outputs
/// are sent as soon as the source has nothing more in hand, so that a projection waits for
/// the broker, not for the interval.
pub fn drive<S: Source>(source: &S, mut cadence: Cadence) -> anyhow::Result<Finish> {
    let mut total = BatchStats::default();
    let mut ended = false;
    loop {
        let asked = source.stopping();
        let stopping = ended || asked;
        let (pending, writing) = {
            let engine = source.engine();
            (
                engine.processor.pending_records(),
                engine.processor.writing(),
            )
        };
        cadence.holding(pending);
        let due = stopping || cadence.commit_due(pending);
        // A commit due while the store write before it still runs would wait for that
        // write: the loop folds on meanwhile, as long as records come and the batch is
        // not full, and commits once the write is done or nothing is in hand.
        let behind =
            due && !stopping && writing && pending < cadence.max_records().min(source.batch_cap());
        if !due || behind {
            let mut next = source.poll(Duration::ZERO)?;
            let idle = matches!(next, Polled::Idle) && !behind;
            // Nothing in hand, and the batch's first record has waited the idle commit's
            // time: it is committed now, so that at a low rate a projection waits for the
            // broker's commit, not for the interval. Under load the source is never idle
            // and batches keep their size.
            let early = idle && !writing && cadence.idle_commit_due();
            if idle && !early {
                let sent = {
                    let mut engine = source.engine();
                    let Engine { processor, sink } = &mut *engine;
                    if processor.has_unsent() && cadence.send_due() {
                        let sent = processor.send_changes(sink);
                        cadence.sent();
                        sent.map(|()| processor.has_unsent())
                    } else {
                        Ok(processor.has_unsent())
                    }
                };
                let unsent = match sent {
                    Ok(unsent) => unsent,
                    Err(e) => {
                        source.failed(e)?;
                        cadence.committed();
                        continue;
                    }
                };
                // Wakes for the next early send or commit if there is something in hand.
                next = source.poll(cadence.wait(unsent, MAX_POLL_WAIT))?;
            }
            if !early {
                match next {
                    Polled::Message(m) => {
                        source.engine().processor.process(m.record())?;
                        continue;
                    }
                    Polled::End => {
                        ended = true;
                        continue;
                    }
                    // Nothing in hand while the write runs: commit, which waits for it.
                    Polled::Idle if behind => {}
                    Polled::Idle => continue,
                }
            }
        }
        match source.gate()? {
            Gate::Open => {}
            Gate::Closed if stopping => return Ok(Finish::StoppedPaused(total)),
            Gate::Closed => continue,
            Gate::Reopened => {
                cadence.committed();
                continue;
            }
        }
        let started = Instant::now();
        let committed = {
            let mut engine = source.engine();
            source.before_commit(&mut engine);
            let Engine { processor, sink } = &mut *engine;
            if stopping {
                processor.commit(sink)
            } else {
                processor.commit_behind(sink)
            }
        };
        match committed {
            Ok(stats) => {
                if stats.records > 0 {
                    source.committed(&stats, started.elapsed());
                }
                total.add_batch(stats);
            }
            Err(e) => {
                source.failed(e)?;
                anyhow::ensure!(
                    !asked,
                    "stopping with a batch that could not be committed; it will be replayed on restart"
                );
                // The source was rewound: what it had handed out before it ended comes again.
                ended = false;
                cadence.committed();
                continue;
            }
        }
        if stopping {
            return Ok(if ended {
                Finish::Ended(total)
            } else {
                Finish::Stopped(total)
            });
        }
        cadence.committed();
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::sync::Arc;

    use super::*;
    use crate::domain::Rules;
    use crate::pipeline::tests::Counting;
    use crate::pipeline::DEFAULT_MAX_BATCH_RECORDS;
    use crate::store::Store;

    const TOPIC: &str = "receipts";

    /// Receipts of one user in partition 0; then the end, or (`wait_for_send`) idle polls
    /// until the sink sent something.
    struct Scripted {
        engine: RefCell<Engine<Counting>>,
        payloads: Vec<Vec<u8>>,
        next: Cell<usize>,
        stop_at: Option<usize>,
        /// Whether an early send was seen before any commit.
        early: Cell<bool>,
        failures: Cell<u32>,
        paused: bool,
        wait_for_send: bool,
        /// Told once the records run out.
        exhausted: Option<std::sync::mpsc::Sender<()>>,
        /// How long each record takes to come.
        delay: Duration,
    }

    struct Owned {
        payload: Vec<u8>,
        offset: i64,
    }

    impl Message for Owned {
        fn record(&self) -> Record<'_> {
            Record {
                topic: TOPIC,
                partition: 0,
                offset: self.offset,
                key: Some(b"u-1"),
                payload: Some(&self.payload),
                timestamp_ms: None,
            }
        }
    }

    impl Source for Scripted {
        type Sink = Counting;
        type Message<'a> = Owned;

        fn engine(&self) -> impl DerefMut<Target = Engine<Counting>> + '_ {
            self.engine.borrow_mut()
        }

        fn poll(&self, wait: Duration) -> anyhow::Result<Polled<Owned>> {
            let i = self.next.get();
            if let Some(payload) = self.payloads.get(i) {
                std::thread::sleep(self.delay);
                self.next.set(i + 1);
                return Ok(Polled::Message(Owned {
                    payload: payload.clone(),
                    offset: i as i64,
                }));
            }
            if let Some(exhausted) = &self.exhausted {
                let _ = exhausted.send(());
            }
            let engine = self.engine.borrow();
            if !self.wait_for_send || engine.sink.finishes > 0 {
                return Ok(Polled::End);
            }
            if engine.sink.sends > 0 {
                self.early.set(true);
                return Ok(Polled::End);
            }
            std::thread::sleep(wait);
            Ok(Polled::Idle)
        }

        fn stopping(&self) -> bool {
            self.stop_at.is_some_and(|n| self.next.get() >= n)
        }

        fn gate(&self) -> anyhow::Result<Gate> {
            Ok(if self.paused {
                Gate::Closed
            } else {
                Gate::Open
            })
        }

        fn committed(&self, _stats: &BatchStats, _took: Duration) {}

        fn failed(&self, error: CommitError) -> anyhow::Result<()> {
            assert!(matches!(error, CommitError::Publish(_)), "{error}");
            self.failures.set(self.failures.get() + 1);
            // Replays from the store's offset, as `run` seeks back to it.
            let store = Arc::clone(self.engine.borrow().processor.store());
            let from = store.offset(TOPIC, 0)?.unwrap_or(0);
            self.next.set(usize::try_from(from)?);
            Ok(())
        }
    }

    fn scripted(dir: &std::path::Path, receipts: usize) -> Scripted {
        let store = Arc::new(Store::open(dir).unwrap());
        let payloads = (0..receipts)
            .map(|i| {
                format!(
                    r#"{{"receipt_id":"r-{i}","user_id":"u-1","store_id":"s-1","amount":"10.00","issued_at":"2026-11-18T11:{:02}:00Z"}}"#,
                    i % 60
                )
                .into_bytes()
            })
            .collect();
        Scripted {
            engine: RefCell::new(Engine {
                processor: Processor::new(store, Rules::default()),
                sink: Counting::default(),
            }),
            payloads,
            next: Cell::new(0),
            stop_at: None,
            early: Cell::new(false),
            failures: Cell::new(0),
            paused: false,
            wait_for_send: false,
            exhausted: None,
            delay: Duration::ZERO,
        }
    }

    /// A cadence committing every `interval` or every default most records.
    fn every(interval: Duration) -> Cadence {
        Cadence::new(interval, DEFAULT_MAX_BATCH_RECORDS)
    }

    fn stored_receipts(source: &Scripted) -> Option<u64> {
        let engine = source.engine.borrow();
        let user = engine.processor.store().user(0, "u-1").unwrap();
        user.map(|u| u.receipt_count)
    }

    #[test]
    fn an_idle_sources_batch_is_committed_once_its_first_record_has_waited_the_idle_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut source = scripted(dir.path(), 3);
        source.wait_for_send = true;
        // The interval is 8 s: the idle source's batch is committed after a quarter (2 s).
        let started = std::time::Instant::now();
        let finish = drive(&source, every(Duration::from_secs(8))).unwrap();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(2),
            "committed before a quarter interval: {took:?}"
        );
        assert!(
            took < Duration::from_secs(6),
            "the batch waited for the interval: {took:?}"
        );
        assert!(matches!(finish, Finish::Ended(_)));
        assert_eq!(finish.stats().records, 3);
        assert_eq!(source.engine.borrow().sink.finishes, 1);
        assert_eq!(stored_receipts(&source), Some(3));
    }

    #[test]
    fn outputs_go_out_when_the_source_is_idle_before_the_commit_is_due() {
        let dir = tempfile::tempdir().unwrap();
        let mut source = scripted(dir.path(), 3);
        source.wait_for_send = true;
        // Early sends are due after a quarter interval (100 ms), the commit after 400 ms.
        let finish = drive(&source, every(Duration::from_millis(400))).unwrap();
        assert!(source.early.get(), "the projection waited for the commit");
        assert!(matches!(finish, Finish::Ended(_)));
        assert_eq!(finish.stats().records, 3);
        assert_eq!(stored_receipts(&source), Some(3));
    }

    // However fast records come and however long the interval, a batch holds at most the
    // cadence's most records, a commit waiting behind the store write before it included.
    #[test]
    fn a_batch_holds_at_most_the_cadences_most_records() {
        let dir = tempfile::tempdir().unwrap();
        let source = scripted(dir.path(), 25);
        let finish = drive(&source, Cadence::new(Duration::from_secs(3600), 10)).unwrap();
        assert_eq!(finish.stats().records, 25);
        assert_eq!(source.engine.borrow().sink.finishes, 3, "10, 10 and 5");
        assert_eq!(stored_receipts(&source), Some(25));
    }

    #[test]
    fn a_failed_commit_is_replayed_from_the_store_and_folds_each_receipt_once() {
        let dir = tempfile::tempdir().unwrap();
        let source = scripted(dir.path(), 50);
        source.engine.borrow_mut().sink.fail = 1;
        let finish = drive(&source, every(Duration::from_secs(3600))).unwrap();
        assert_eq!(source.failures.get(), 1);
        assert_eq!(finish.stats().records, 50, "only the replay's batch counts");
        assert_eq!(stored_receipts(&source), Some(50));
        let offset = source.engine.borrow().processor.store().offset(TOPIC, 0);
        assert_eq!(offset.unwrap(), Some(50));
    }

    #[test]
    fn a_stop_commits_the_batch_in_hand_and_a_paused_stop_commits_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut source = scripted(dir.path(), 50);
        source.stop_at = Some(20);
        let finish = drive(&source, every(Duration::from_secs(3600))).unwrap();
        assert!(matches!(finish, Finish::Stopped(_)), "{finish:?}");
        assert_eq!(stored_receipts(&source), Some(20));

        let dir = tempfile::tempdir().unwrap();
        let mut source = scripted(dir.path(), 50);
        source.stop_at = Some(20);
        source.paused = true;
        let finish = drive(&source, every(Duration::from_secs(3600))).unwrap();
        assert!(matches!(finish, Finish::StoppedPaused(_)), "{finish:?}");
        assert_eq!(stored_receipts(&source), None);
    }

    #[test]
    fn a_commit_due_while_the_store_write_runs_folds_on_until_the_write_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let mut source = scripted(dir.path(), 20);
        // The store writes wait until the records run out (at most 20 s, so that a loop
        // that waits for the write instead of folding on fails rather than hangs).
        let hold = Arc::clone(&source.engine.borrow().processor.hold_writes);
        let (exhausted, released) = std::sync::mpsc::channel();
        let (held_tx, held) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let guard = hold.lock().unwrap();
            held_tx.send(()).unwrap();
            let _ = released.recv_timeout(Duration::from_secs(20));
            drop(guard);
        });
        held.recv().unwrap();
        source.exhausted = Some(exhausted);
        // A commit is due after every record.
        source.delay = Duration::from_millis(40);
        let finish = drive(&source, every(Duration::from_millis(30))).unwrap();
        holder.join().unwrap();
        assert_eq!(finish.stats().records, 20);
        assert_eq!(stored_receipts(&source), Some(20));
        // The first record's batch, whose write was held, then the other 19 in one.
        assert_eq!(source.engine.borrow().sink.finishes, 2);
    }
}

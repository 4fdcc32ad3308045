//! The crash harness the property tests share: partitioned logs delivered to a real
//! `Processor` over a real store, one action at a time, where a crash drops the batch in
//! hand and every handle and reopens the store (as SIGKILL does), and delivery resumes
//! from the store's offsets.

use std::path::Path;
use std::sync::Arc;

use mallquest::pipeline::{MemorySink, Processor, Record, Sink};
use mallquest::store::Store;

/// The topic the logs are read from.
pub const TOPIC: &str = "receipts";

/// One step of a schedule.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// Deliver the next record of this partition (or of the next unfinished one).
    Next(usize),
    /// Commit: publish, then write the store, waiting for it.
    Commit,
    /// The loop's commit between batches: the store write runs behind, on a thread.
    CommitBehind,
    /// `run` with nothing more in hand: send the batch's changes early.
    SendChanges,
    /// Drop the batch in hand and every handle, reopen the store, resume from its offsets.
    Crash,
    /// Compact the ledger for real (forgotten entries are removed).
    Compact,
}

/// Makes a processor over a store.
type MakeProcessor<'a> = Box<dyn Fn(&Arc<Store>) -> Processor + 'a>;

/// One record for a reference fold: partition, offset, key, value.
pub type Logged = (i32, i64, Option<Vec<u8>>, Vec<u8>);

/// Partitioned logs of (key, value) records, delivered to a processor with crashes, its
/// outputs to a sink `S` (a crash aborts what it was sent since its last `finish`: a
/// memory sink keeps everything, replays included; a transactional one drops it).
pub struct Harness<'a, S: Sink + Default = MemorySink> {
    logs: &'a [Vec<(Vec<u8>, Vec<u8>)>],
    dir: &'a Path,
    make: MakeProcessor<'a>,
    /// The store as it is now (reopened by each crash); `None` only inside a crash.
    store: Option<Arc<Store>>,
    /// The processor as it is now (made again by each crash); `None` only inside a crash.
    processor: Option<Processor>,
    /// Everything published (for a memory sink, replays included).
    pub sink: S,
    cursor: Vec<usize>,
}

impl<'a, S: Sink + Default> Harness<'a, S> {
    /// A harness over a store in `dir`, whose processors `make` builds.
    pub fn new(
        logs: &'a [Vec<(Vec<u8>, Vec<u8>)>],
        dir: &'a Path,
        make: impl Fn(&Arc<Store>) -> Processor + 'a,
    ) -> Self {
        let store = Arc::new(Store::open(dir).unwrap());
        let processor = make(&store);
        Harness {
            logs,
            dir,
            make: Box::new(make),
            store: Some(store),
            processor: Some(processor),
            sink: S::default(),
            cursor: vec![0; logs.len()],
        }
    }

    /// The store as it is now.
    pub fn store(&self) -> &Arc<Store> {
        self.store.as_ref().expect("a store outside a crash")
    }

    /// Whether every record of every partition was delivered (since the last crash).
    pub fn done(&self) -> bool {
        self.cursor
            .iter()
            .zip(self.logs)
            .all(|(c, l)| *c >= l.len())
    }

    /// Carries out one action.
    pub fn act(&mut self, a: Action) {
        match a {
            Action::Next(p) => self.deliver(p),
            Action::Commit => {
                let Harness {
                    processor, sink, ..
                } = self;
                processor.as_mut().unwrap().commit(sink).unwrap();
            }
            Action::CommitBehind => {
                let Harness {
                    processor, sink, ..
                } = self;
                processor.as_mut().unwrap().commit_behind(sink).unwrap();
            }
            Action::SendChanges => {
                let Harness {
                    processor, sink, ..
                } = self;
                processor.as_mut().unwrap().send_changes(sink).unwrap();
            }
            Action::Compact => self.store().compact_ledger().unwrap(),
            Action::Crash => {
                // The batch in hand and every handle are lost, the open transaction is
                // aborted; the store is reopened.
                self.processor = None;
                self.sink.abort();
                self.store = None;
                let store = Arc::new(Store::open(self.dir).unwrap());
                self.processor = Some((self.make)(&store));
                for (p, c) in self.cursor.iter_mut().enumerate() {
                    *c = store.offset(TOPIC, p as i32).unwrap().unwrap_or(0) as usize;
                }
                self.store = Some(store);
            }
        }
    }

    /// Delivers the next record of partition `p`, or of the next unfinished one.
    fn deliver(&mut self, p: usize) {
        let n = self.logs.len();
        let Some(p) = (0..n)
            .map(|d| (p + d) % n)
            .find(|q| self.cursor[*q] < self.logs[*q].len())
        else {
            return;
        };
        let (k, v) = &self.logs[p][self.cursor[p]];
        let offset = self.cursor[p] as i64;
        self.processor
            .as_mut()
            .unwrap()
            .process(Record {
                topic: TOPIC,
                partition: p as i32,
                offset,
                key: Some(k),
                payload: Some(v),
                timestamp_ms: None,
            })
            .unwrap();
        self.cursor[p] += 1;
    }

    /// Commits what is in hand; the store then holds every record delivered.
    pub fn finish(&mut self) {
        let Harness {
            processor, sink, ..
        } = self;
        processor.as_mut().unwrap().commit(sink).unwrap();
    }

    /// Every record of the logs as (partition, offset, key, value), for a reference fold.
    pub fn records(&self) -> Vec<Logged> {
        let mut records = Vec::new();
        for (p, log) in self.logs.iter().enumerate() {
            for (o, (k, v)) in log.iter().enumerate() {
                records.push((p as i32, o as i64, Some(k.clone()), v.clone()));
            }
        }
        records
    }
}

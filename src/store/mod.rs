//! The embedded store (fjall). The only module that names the engine.
//!
//! Keyspaces, all keyed by Kafka partition first so that a partition's state is one
//! contiguous range that can later move between instances:
//! - `users`:   `partition (i32 BE) | user_id` -> [`UserState`]
//! - `ledger_log`: `partition | seq (u64 BE) | chunk (u16 BE)` -> a chunk of a segment:
//!   the new and updated ledger entries of one commit of the partition, indexed in memory
//!   ([`ledger`]); the index is read from the segments when the store opens.
//! - `offsets`: `topic | 0x00 | partition` -> next offset to read (i64 BE)
//! - `marks`:   `partition` -> highest applied issued_at, in seconds (i64 BE): the event
//!   time the dedup window is measured against.
//! - `changelog`: `partition` -> next offset to read of the partition's changelog (i64 BE):
//!   everything before it is in this store, so a catch-up reads on from there.
//!
//! The leaderboards are not stored: they are held in memory ([`crate::engine::Boards`]),
//! rebuilt from the users when the store opens or a partition is restored, and changed by
//! each commit in the same critical section as its writes. A store written by an earlier
//! layout (with the `leaders`, `periods`, `period_users`, `rank_counts` and `counts`
//! keyspaces) opens: those keyspaces are deleted at the first open, the users being
//! unchanged. A store whose ledger is the earlier key-per-entry `ledger` keyspace (with its
//! `due` index) has it moved into segments at the first open.
//!
//! Ledger entries older than the window (`mark - window`) are dead: the processor treats
//! them as absent, finds them ([`Store::ledger_due`]) and expires them by a commit.
//!
//! ids never contain control characters (the codec rejects them), so 0x00 separates.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use batch::Batch;

use crate::domain::Timestamp;
use crate::domain::{LedgerEntry, UserState};
use crate::engine::{BoardChanges, Boards, Builder};

mod batch;
mod ledger;
mod periods;
mod seen;
pub mod value;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be opened or created.
    #[error("failed to open store at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: fjall::Error,
    },
    /// A read or write failed (disk full, I/O error).
    #[error("store {op} failed")]
    Io {
        op: &'static str,
        #[source]
        source: fjall::Error,
    },
    /// A write failed earlier (disk full, I/O error) and fjall refuses all writes since:
    /// only a restart, which recovers from the journal, can write again.
    #[error("the store refuses writes after an earlier write failure (disk full?); restart mallquest once the cause is fixed: it recovers from its journal")]
    Poisoned,
    /// The thread writing a batch in the background ended without saying how the write
    /// went (it panicked): what reached the store is not known.
    #[error("the store write did not finish: the store writer thread panicked")]
    WriterPanicked,
    /// A stored value could not be decoded: the store is corrupt or from another version.
    #[error("corrupt {what} in store: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

/// Default memtable budget, all keyspaces together (`[store] write_buffer_mb`). Memtables
/// take about twice this in heap, and every flush frees it at once; at 64 MiB the
/// allocator's resident memory kept creeping after that churn, at 16 it levelled off. The
/// cost shows in bulk folds of millions of users: more CPU and a higher peak (many small
/// tables), where 64 does better (docs/benchmarks-history.md 3).
pub const DEFAULT_WRITE_BUFFER: u64 = 16 << 20;

/// A commit waits while the memtables hold more than this many times the write budget
/// (`[store] write_buffer_mb`), so that a fold faster than fjall's one background worker
/// flushes them does not grow them without bound.
const WRITE_STALL_FACTOR: u64 = 4;

/// A commit over the bound stops waiting once fjall's worker has had nothing to do for this
/// long: no flush queued, no memtable sealed, no compaction running. That happens when the
/// memtables are over the bound but each under its own size, which fjall fixes when a
/// keyspace is created (a store created with a larger `write_buffer_mb`), so none is asked
/// to flush: waiting would not bring them down.
const WRITE_STALL_IDLE: std::time::Duration = std::time::Duration::from_millis(100);

/// Past this, a commit stops waiting for flushes and writes anyway: a worker that never
/// catches up must not stop the processor (fjall halts writes itself when its queues are
/// full).
const WRITE_STALL_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// The size fjall's leveled compaction aims at for a table (see `open_with_memory`).
const TABLE_TARGET: u64 = 8 << 20;

pub use crate::engine::{indexed, scores, Board, Indexed, Scores};

/// The maps of a write set: keyed by ids from input, hashed with foldhash (seeded per
/// map) rather than SipHash, which showed at 3.5% of the fold thread's CPU.
pub type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Everything one commit writes, in one atomic batch.
#[derive(Debug, Default, Clone)]
pub struct WriteSet {
    /// Latest state of every user changed in the batch, by (partition, user_id).
    pub users: Map<(i32, String), UserState>,
    /// New or updated ledger entries, by (partition, user_id, receipt_id).
    pub ledger: Map<(i32, String, String), LedgerEntry>,
    /// Next offset to read, by (topic, partition).
    pub offsets: BTreeMap<(String, i32), i64>,
    /// New event-time marks (seconds), by partition.
    pub marks: BTreeMap<i32, Timestamp>,
    /// Next offset to read of each partition's changelog, once this batch is stored.
    pub changelog: BTreeMap<i32, i64>,
    /// For users in `users`: their scores as stored before this batch (`None`: new user),
    /// so that the commit can re-index them without reading them again. Users missing
    /// here are read from the store.
    pub previous_scores: Map<(i32, String), Option<Indexed>>,
    /// Ledger entries that left the dedup window, deleted by this batch: (partition,
    /// user_id, receipt_id).
    pub ledger_expired:
        std::collections::HashSet<(i32, String, String), foldhash::fast::RandomState>,
    /// Partitions whose users are written without touching the boards (a partition
    /// restored into a store that had none of it: no previous scores to read;
    /// [`Store::index_partition`] builds its boards once all its users are in).
    pub unindexed: BTreeSet<i32>,
}

impl WriteSet {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
            && self.ledger.is_empty()
            && self.offsets.is_empty()
            && self.marks.is_empty()
            && self.changelog.is_empty()
            && self.ledger_expired.is_empty()
    }
}

/// A commit's writes, gathered and in key order, not written yet ([`Store::prepare`]).
#[derive(Default)]
pub struct Prepared {
    /// `None`: nothing to write.
    batch: Option<Batch>,
    /// The batch's moves on the boards, applied with its writes.
    boards: BoardChanges,
    /// The batch's new event-time marks.
    marks: BTreeMap<i32, Timestamp>,
    /// Partitions the batch holds offsets of.
    partitions: Vec<i32>,
    /// Hashes of the user keys the batch writes, by partition ([`seen`]).
    users_written: Vec<(i32, u32)>,
    /// The batch's ledger changes, by partition (their segments are in `batch`).
    ledger: Vec<ledger::Change>,
}

/// What the store holds in memory now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreMemory {
    /// Bytes in the block cache.
    pub cache_bytes: u64,
    /// Bytes in memtables, active and sealed.
    pub write_buffer_bytes: u64,
    /// How long commits have waited, in all, for the memtables to be flushed down to
    /// their bound.
    pub write_stall: std::time::Duration,
}

/// What the ledger holds in memory ([`Store::ledger_memory`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerMemory {
    /// Entries held, expired ones not yet dropped included.
    pub entries: u64,
    /// Heap bytes of the entries and their tables.
    pub bytes: u64,
    /// Segments on disk.
    pub segments: u64,
}

/// The opened store.
pub struct Store {
    path: PathBuf,
    db: Database,
    users: Keyspace,
    /// The ledger's segments (see the module doc).
    ledger_log: Keyspace,
    /// The ledger's index: changed by each commit under the boards' lock.
    ledgers: RwLock<ledger::Ledgers>,
    /// The next segment's sequence number.
    next_segment: std::sync::atomic::AtomicU64,
    offsets: Keyspace,
    marks_ks: Keyspace,
    changelog: Keyspace,
    /// Committed marks and the window.
    expiry: Expiry,
    /// Partitions with state, cached: user look-ups by id try each, and must not scan
    /// the offsets keyspace on every request.
    partitions: std::sync::RwLock<Vec<i32>>,
    /// Which partitioner placed the users, learned by [`Store::locate_user`].
    placement: crate::partitioner::Learned,
    /// Every board of the partitions stored, in memory: changed by each commit under the
    /// write lock, together with its batch's insertion into the memtables.
    boards: RwLock<Boards>,
    /// Which users each partition may hold, so that a user never seen is known absent
    /// without a read ([`seen`]).
    known_users: seen::Known,
    /// Writes of the last commit's batch: the next one is sized by it.
    last_batch_writes: std::sync::atomic::AtomicUsize,
    /// Commits wait while the memtables hold more than this ([`WRITE_STALL_FACTOR`]).
    write_stall_bytes: u64,
    /// Microseconds commits have waited for flushes, in all.
    write_stall_micros: std::sync::atomic::AtomicU64,
    /// Keys the commits have written (inserts and removes), by keyspace: (name, writes),
    /// in the order first written.
    writes_by_keyspace: std::sync::Mutex<Vec<(String, u64)>>,
    /// The last wait ended with fjall's worker idle and the memtables still over the bound
    /// (each under its own size): the next commit then waits only while the worker is busy,
    /// not [`WRITE_STALL_IDLE`] more each time.
    write_stall_ended_idle: AtomicBool,
    /// Set once the process is asked to stop ([`Self::stop_stalls_on`]): commits then
    /// write without waiting for flushes, so that a stop ends within a supervisor's grace
    /// (the bound guards memory, not correctness).
    stall_stop: std::sync::OnceLock<Arc<AtomicBool>>,
}

fn user_key(partition: i32, user_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + user_id.len());
    push_user_key(&mut k, partition, user_id);
    k
}

/// Appends a user's key: partition, then user id.
fn push_user_key(k: &mut Vec<u8>, partition: i32, user_id: &str) {
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(user_id.as_bytes());
}

/// Items per batch of a one-off fill at open.
const MIGRATION_CHUNK: usize = 50_000;

/// Keyspaces of earlier layouts, deleted at the first open: the leaderboard indexes
/// (board-first, then partition-first), the period boards and their counts, the rank
/// counts and the user counts. The boards are now rebuilt from the users in memory.
const RETIRED_KEYSPACES: [&str; 6] = [
    "board",
    "leaders",
    "periods",
    "period_users",
    "rank_counts",
    "counts",
];

/// Keyspaces of the ledger's earlier layout: one key per entry, and its event-time index.
const OLD_LEDGER: &str = "ledger";
const OLD_DUE: &str = "due";
const OLD_META: &str = "meta";

fn offset_key(topic: &str, partition: i32) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 5);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// What decides that a ledger entry is dead: the committed mark of its partition and
/// the dedup window.
#[derive(Debug, Default)]
struct Expiry {
    /// The window in seconds; 0 until a processor sets it (then nothing expires).
    window_secs: AtomicI64,
    /// Committed marks by partition.
    marks: RwLock<HashMap<i32, Timestamp>>,
}

impl Expiry {
    fn cutoffs(&self) -> HashMap<i32, i64> {
        let window = self.window_secs.load(Ordering::Relaxed);
        if window <= 0 {
            return HashMap::new();
        }
        self.marks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(p, m)| (*p, m.secs.saturating_sub(window)))
            .collect()
    }
}

fn partition_of(key: &[u8], what: &'static str) -> Result<i32, StoreError> {
    key.get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(i32::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt {
            what,
            detail: "shorter than a partition".into(),
        })
}

/// An i64 stored big-endian (offsets).
fn decode_i64(what: &'static str, v: &[u8]) -> Result<i64, StoreError> {
    let bytes: [u8; 8] = v.try_into().map_err(|_| StoreError::Corrupt {
        what,
        detail: format!("{} bytes, expected 8", v.len()),
    })?;
    Ok(i64::from_be_bytes(bytes))
}

fn io(op: &'static str) -> impl FnOnce(fjall::Error) -> StoreError {
    move |source| match source {
        fjall::Error::Poisoned => StoreError::Poisoned,
        source => StoreError::Io { op, source },
    }
}

impl Store {
    /// Opens the store at `path`, creating it if absent.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_memory(path, 256 << 20, DEFAULT_WRITE_BUFFER)
    }

    /// Opens the store with a block cache of `cache_bytes` and memtables sized so that the
    /// active ones of the three busy keyspaces (users, ledger, board) stay within
    /// `write_buffer_bytes`: with both capped, the store's memory does not grow with the
    /// number of users. (fjall 3.1's database-wide write-buffer cap is not implemented
    /// yet, so the budget is enforced per keyspace.)
    pub fn open_with_memory(
        path: &Path,
        cache_bytes: u64,
        write_buffer_bytes: u64,
    ) -> Result<Self, StoreError> {
        let kept = crate::domain::game::DEFAULT_PERIODS_KEPT;
        Self::open_keeping(path, cache_bytes, write_buffer_bytes, kept)
    }

    /// [`Self::open_with_memory`], its boards built once keeping `periods_kept` of each
    /// kind of period (a later [`Self::set_periods_kept`] with another count builds them
    /// again: at 1,000,000 users a build is seconds).
    pub fn open_keeping(
        path: &Path,
        cache_bytes: u64,
        write_buffer_bytes: u64,
        periods_kept: usize,
    ) -> Result<Self, StoreError> {
        let write_buffer_bytes = write_buffer_bytes.max(4 << 20);
        // One keyspace's memtable is a quarter of the budget, so that a busy keyspace
        // flushes before it alone can fill it.
        let memtable = (write_buffer_bytes / 4).max(1 << 20);
        // Tables of 8 MiB, not fjall's 64: level 1 is then 32 MiB, not 256, so a
        // compaction from level 0 (whose random keys overlap all of level 1) rewrites at
        // most that much. fjall's one worker runs flushes and compactions in turn, and while
        // a long compaction runs no memtable is rotated or flushed, so the memtables grew far
        // past their budget in bulk folds: peak RSS at 2,000,000 new users 357 to 396 MiB
        // against 544 to 555, at the same rate (docs/benchmarks-history.md, "The fold
        // engine").
        let options = move || {
            KeyspaceCreateOptions::default()
                .max_memtable_size(memtable)
                .compaction_strategy(Arc::new(
                    fjall::compaction::Leveled::default().with_table_target_size(TABLE_TARGET),
                ))
        };
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let db = Database::builder(path)
            .cache_size(cache_bytes)
            // One background worker, not fjall's default of one per core (two here): with
            // two, fjall 3.1.13's worker 0 hands every compaction back to the queue and
            // polls again while worker 1 compacts, spinning a core. Measured on a 1,000,000
            // receipt drain (docs/benchmarks-history.md, "Again on a quiet machine"): 73 vs
            // 95 to 99 us of CPU per record, 16,200 vs 13,000 to 13,700 records/s.
            .worker_threads(1)
            .open()
            .map_err(open_err)?;
        let users = db.keyspace("users", options).map_err(open_err)?;
        let ledger_log = db.keyspace("ledger_log", options).map_err(open_err)?;
        let offsets = db.keyspace("offsets", options).map_err(open_err)?;
        for name in RETIRED_KEYSPACES {
            if db.keyspace_exists(name) {
                let old = db.keyspace(name, options).map_err(open_err)?;
                db.delete_keyspace(old).map_err(open_err)?;
            }
        }
        let marks_ks = db.keyspace("marks", options).map_err(open_err)?;
        let changelog = db.keyspace("changelog", options).map_err(open_err)?;
        let ledgers = RwLock::new(ledger::Ledgers::new(ledger_log.clone()));
        let store = Self {
            path: path.to_owned(),
            db,
            known_users: seen::Known::new(users.clone(), "scan users"),
            users,
            ledger_log,
            ledgers,
            next_segment: std::sync::atomic::AtomicU64::new(1),
            offsets,
            marks_ks,
            changelog,
            expiry: Expiry::default(),
            partitions: std::sync::RwLock::default(),
            placement: crate::partitioner::Learned::default(),
            boards: RwLock::new(Boards::new(periods_kept)),
            last_batch_writes: std::sync::atomic::AtomicUsize::new(0),
            write_stall_bytes: write_buffer_bytes * WRITE_STALL_FACTOR,
            write_stall_micros: std::sync::atomic::AtomicU64::new(0),
            writes_by_keyspace: std::sync::Mutex::default(),
            write_stall_ended_idle: AtomicBool::new(false),
            stall_stop: std::sync::OnceLock::new(),
        };
        store.build_boards(None)?;
        store.load_ledger()?;
        if store.db.keyspace_exists(OLD_LEDGER) {
            store.move_old_ledger()?;
        }
        let marks = store.scan_marks()?;
        *store
            .expiry
            .marks
            .write()
            .unwrap_or_else(PoisonError::into_inner) = marks;
        let known = store.scan_partitions()?;
        *store
            .partitions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = known;
        Ok(store)
    }

    /// Bytes in the block cache and the memtables now.
    pub fn memory(&self) -> StoreMemory {
        StoreMemory {
            cache_bytes: self.db.cache_size(),
            write_buffer_bytes: self.db.write_buffer_size(),
            write_stall: std::time::Duration::from_micros(
                self.write_stall_micros
                    .load(std::sync::atomic::Ordering::Relaxed),
            ),
        }
    }

    /// Keys the commits have written so far (inserts and removes), in all: the store's
    /// main cost, which `bench` shows per receipt. A dropped period's deletes, written
    /// after a commit in chunks of their own, are not counted.
    pub fn writes(&self) -> u64 {
        self.writes_by_keyspace().iter().map(|(_, n)| n).sum()
    }

    /// [`Self::writes`] by keyspace (`users`, `leaders`, `periods`, `ledger`, `due`, ...):
    /// (name, writes), in the order first written.
    pub fn writes_by_keyspace(&self) -> Vec<(String, u64)> {
        self.writes_by_keyspace
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One user's state in one partition.
    pub fn user(&self, partition: i32, user_id: &str) -> Result<Option<UserState>, StoreError> {
        let key = user_key(partition, user_id);
        if !self.known_users.may_hold(partition, &key)? {
            return Ok(None);
        }
        self.users
            .get(key)
            .map_err(io("read user"))?
            .map(|v| value::decode_user(&v))
            .transpose()
    }

    /// A user's state, in whichever partition holds it.
    pub fn find_user(&self, user_id: &str) -> Result<Option<UserState>, StoreError> {
        Ok(self.locate_user(user_id)?.map(|(_, u)| u))
    }

    /// A user's state with the partition that holds it. Users are keyed partition first,
    /// so the partitions the producers' partitioners would pick for the user id are read
    /// first (one read when the guess is right, as it is once the store has learned which
    /// partitioner placed its users), then the others.
    pub fn locate_user(&self, user_id: &str) -> Result<Option<(i32, UserState)>, StoreError> {
        self.locate_user_among(user_id, None)
    }

    /// [`Self::locate_user`], for a receipts topic of `partition_count` partitions if known
    /// (an instance that holds a few of them cannot tell the count from its store).
    pub fn locate_user_among(
        &self,
        user_id: &str,
        partition_count: Option<i32>,
    ) -> Result<Option<(i32, UserState)>, StoreError> {
        let held = self.partitions()?;
        let Some(&last) = held.last() else {
            return Ok(None);
        };
        // Otherwise the count as far as this store knows it: a wrong count only makes the
        // guesses miss.
        let count = partition_count.unwrap_or(last.saturating_add(1)).max(1);
        let key = user_id.as_bytes();
        let guesses = self.placement.guesses(key, count);
        let first = guesses.iter().filter(|p| held.binary_search(p).is_ok());
        let rest = held.iter().filter(|p| !guesses.contains(p));
        for &partition in first.chain(rest) {
            if let Some(u) = self.user(partition, user_id)? {
                self.placement.found(key, count, partition);
                return Ok(Some((partition, u)));
            }
        }
        Ok(None)
    }

    /// One ledger entry.
    pub fn ledger_entry(
        &self,
        partition: i32,
        user_id: &str,
        receipt_id: &str,
    ) -> Result<Option<LedgerEntry>, StoreError> {
        self.ledgers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(partition, user_id, receipt_id)
    }

    /// The next offset to read of one topic partition, if any was committed.
    pub fn offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, StoreError> {
        let v = self
            .offsets
            .get(offset_key(topic, partition))
            .map_err(io("read offset"))?;
        v.map(|v| decode_i64("offset", &v)).transpose()
    }

    /// The next offset to read of partition `p`'s changelog: everything before it is here.
    pub fn changelog_offset(&self, partition: i32) -> Result<Option<i64>, StoreError> {
        let v = self
            .changelog
            .get(partition.to_be_bytes())
            .map_err(io("read changelog offset"))?;
        v.map(|v| decode_i64("changelog offset", &v)).transpose()
    }

    /// Reads every ledger segment into memory, in order, and deletes those left with no
    /// current entry.
    fn load_ledger(&self) -> Result<(), StoreError> {
        let mut dead = Vec::new();
        let last = self
            .ledgers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .load(&mut dead)?;
        self.next_segment.store(last + 1, Ordering::SeqCst);
        self.delete_segments(&dead)
    }

    /// Deletes segments that hold no current entry. Not durable by itself: a segment
    /// deleted before a crash is found dead again at the next open.
    fn delete_segments(&self, dead: &[(i32, u64, u16)]) -> Result<(), StoreError> {
        if dead.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::new(&self.db);
        for (p, seq, chunks) in dead {
            for c in 0..*chunks {
                batch.remove(&self.ledger_log, ledger::chunk_key(*p, *seq, c).to_vec());
            }
        }
        batch.commit().map_err(io("delete ledger segments"))
    }

    /// Moves a ledger of the earlier layout (one key per entry, beside a `due` index) into
    /// segments, then deletes its keyspaces. Interrupted by a crash, it runs again at the
    /// next open: the segments it wrote are then replaced by newer ones of the same
    /// entries.
    fn move_old_ledger(&self) -> Result<(), StoreError> {
        let options = KeyspaceCreateOptions::default;
        let open = |name| {
            self.db
                .keyspace(name, options)
                .map_err(io("open old ledger"))
        };
        let old = open(OLD_LEDGER)?;
        let mut moved = 0u64;
        let mut chunk: BTreeMap<i32, WriteSet> = BTreeMap::new();
        let mut in_chunk = 0usize;
        let flush = |chunk: &mut BTreeMap<i32, WriteSet>| -> Result<(), StoreError> {
            for set in std::mem::take(chunk).into_values() {
                self.apply(self.prepare(&set)?)?;
            }
            Ok(())
        };
        for kv in old.iter() {
            let (k, v) = kv.into_inner().map_err(io("scan old ledger"))?;
            let p = partition_of(&k, "ledger key")?;
            let rest = std::str::from_utf8(&k[4..]).map_err(|_| StoreError::Corrupt {
                what: "ledger key",
                detail: "not UTF-8".into(),
            })?;
            let (user, receipt) = rest.split_once('\0').ok_or_else(|| StoreError::Corrupt {
                what: "ledger key",
                detail: "no separator".into(),
            })?;
            chunk.entry(p).or_default().ledger.insert(
                (p, user.to_owned(), receipt.to_owned()),
                value::decode_ledger(&v)?,
            );
            in_chunk += 1;
            moved += 1;
            if in_chunk >= MIGRATION_CHUNK {
                flush(&mut chunk)?;
                in_chunk = 0;
            }
        }
        flush(&mut chunk)?;
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(io("persist"))?;
        for name in [OLD_LEDGER, OLD_DUE, OLD_META] {
            if self.db.keyspace_exists(name) {
                let ks = open(name)?;
                self.db
                    .delete_keyspace(ks)
                    .map_err(io("delete old ledger"))?;
            }
        }
        tracing::info!(
            message = "Moved the ledger of an earlier layout into segments.",
            entries = moved,
        );
        Ok(())
    }

    /// Up to `limit` ledger entries of `partition` issued before `cutoff` (seconds),
    /// oldest first: (user_id, receipt_id, issued_at seconds). Found by a scan of the
    /// partition's ledger index once the cutoff has moved on by a 32nd of the window
    /// since the last (so an entry may outlive its window by that much); an entry listed
    /// may have been replaced since by a newer one under its key: the caller checks.
    pub fn ledger_due(
        &self,
        partition: i32,
        cutoff: i64,
        limit: usize,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        let slack = self.expiry.window_secs.load(Ordering::Relaxed) / 32;
        self.ledgers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .due(partition, cutoff, slack, limit)
    }

    /// Whether the store holds no user of `partition` (a partition new to this store).
    pub fn partition_is_empty(&self, partition: i32) -> Result<bool, StoreError> {
        match self.users.prefix(partition.to_be_bytes()).next() {
            None => Ok(true),
            Some(kv) => kv.key().map(|_| false).map_err(io("scan users")),
        }
    }

    /// Builds the boards of `partition` (`None`: every partition) from one scan of its
    /// users, replacing what the boards held of it. Returns the users per partition seen.
    fn build_boards(&self, partition: Option<i32>) -> Result<HashMap<i32, u64>, StoreError> {
        let prefix = partition.map(i32::to_be_bytes);
        let prefix: &[u8] = prefix.as_ref().map_or(&[], |p| &p[..]);
        // Users come partition by partition in key order: each partition's boards are
        // built from its users alone, then installed together once the scan is whole.
        let kept = self.periods_kept();
        let mut per: HashMap<i32, u64> = HashMap::new();
        let mut built: Vec<(i32, Builder)> = Vec::new();
        for item in self.users_under(prefix) {
            let (p, u) = item?;
            *per.entry(p).or_default() += 1;
            if built.last().is_none_or(|(at, _)| *at != p) {
                built.push((p, Builder::new(kept)));
            }
            if let Some((_, b)) = built.last_mut() {
                b.add(&u);
            }
        }
        let mut boards = self.boards.write().unwrap_or_else(PoisonError::into_inner);
        match partition {
            Some(p) => boards.remove(p),
            None => *boards = Boards::new(kept),
        }
        for (p, b) in built {
            boards.install(p, b);
        }
        Ok(per)
    }

    /// Builds the boards of `partition` from its stored users: after a restore that wrote
    /// them unindexed, or that may have been interrupted before. Returns its users.
    pub fn index_partition(&self, partition: i32) -> Result<u64, StoreError> {
        let per = self.build_boards(Some(partition))?;
        Ok(per.get(&partition).copied().unwrap_or(0))
    }

    /// Users of the partitions `keep` accepts, exactly (those on the boards).
    pub fn users_in(&self, keep: impl Fn(i32) -> bool) -> u64 {
        let boards = self.boards.read().unwrap_or_else(PoisonError::into_inner);
        boards
            .partitions()
            .filter(|p| keep(*p))
            .map(|p| boards.users(p))
            .sum()
    }

    /// The coin liability of the users of the partitions `keep` accepts (held with the
    /// boards, moved by each commit).
    pub fn coin_totals(&self, keep: impl Fn(i32) -> bool) -> crate::engine::CoinTotals {
        self.boards
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .coins(keep)
    }

    /// Bytes the boards hold in memory, by structure.
    pub fn board_bytes(&self) -> crate::engine::BoardBytes {
        self.boards
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .bytes()
    }

    /// Every stored offset: (topic, partition) -> next offset.
    pub fn offsets(&self) -> Result<BTreeMap<(String, i32), i64>, StoreError> {
        let mut out = BTreeMap::new();
        for kv in self.offsets.iter() {
            let (k, v) = kv.into_inner().map_err(io("scan offsets"))?;
            let corrupt = || StoreError::Corrupt {
                what: "offset",
                detail: "malformed key or value".into(),
            };
            let split = k.iter().position(|b| *b == 0).ok_or_else(corrupt)?;
            let topic = std::str::from_utf8(&k[..split]).map_err(|_| corrupt())?;
            let p: [u8; 4] = k[split + 1..].try_into().map_err(|_| corrupt())?;
            let o: [u8; 8] = v.as_ref().try_into().map_err(|_| corrupt())?;
            out.insert(
                (topic.to_owned(), i32::from_be_bytes(p)),
                i64::from_be_bytes(o),
            );
        }
        Ok(out)
    }

    /// The dedup window the compaction filter applies, in seconds (0: keep everything).
    pub fn set_dedup_window_secs(&self, secs: i64) {
        self.expiry.window_secs.store(secs, Ordering::Relaxed);
    }

    /// The committed event-time mark of a partition (the newest applied `issued_at`, to
    /// its full precision).
    pub fn mark(&self, partition: i32) -> Option<Timestamp> {
        self.expiry
            .marks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&partition)
            .copied()
    }

    /// Every committed mark, by partition.
    pub fn marks(&self) -> HashMap<i32, Timestamp> {
        self.expiry
            .marks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The stored marks: seconds (i64 BE), then nanoseconds (u32 BE); stores before the
    /// time rules wrote the seconds alone.
    fn scan_marks(&self) -> Result<HashMap<i32, Timestamp>, StoreError> {
        let mut out = HashMap::new();
        for kv in self.marks_ks.iter() {
            let (k, v) = kv.into_inner().map_err(io("scan marks"))?;
            let corrupt = || StoreError::Corrupt {
                what: "mark",
                detail: "malformed key or value".into(),
            };
            let p: [u8; 4] = k.as_ref().try_into().map_err(|_| corrupt())?;
            let secs: [u8; 8] = v
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(corrupt)?;
            let nanos = match v.get(8..) {
                Some([]) => 0,
                Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
                _ => return Err(corrupt()),
            };
            if nanos >= 1_000_000_000 {
                return Err(corrupt());
            }
            let secs = i64::from_be_bytes(secs);
            out.insert(i32::from_be_bytes(p), Timestamp { secs, nanos });
        }
        Ok(out)
    }

    /// Rewrites the ledger's segments that are at most half current, each partition's
    /// into the newest of them, so that the log on disk stays about the size of the
    /// window (a segment is deleted by a commit only once none of its entries is current).
    pub fn compact_ledger(&self) -> Result<(), StoreError> {
        let partitions = self
            .ledgers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .partitions();
        for p in partitions {
            // Under the lock: a commit's segment is newer than the one rewritten, and its
            // changes reach memory after this one's or before it, never between.
            let mut ledgers = self.ledgers.write().unwrap_or_else(PoisonError::into_inner);
            let Some((target, chunks, removed)) = ledgers.compact(p)? else {
                continue;
            };
            // Every chunk of the segments gathered goes, then the new chunks are written
            // (some under keys just removed: a batch keeps the order of one key's writes).
            let mut batch = Batch::new(&self.db);
            for (seq, c) in removed {
                batch.remove(&self.ledger_log, ledger::chunk_key(p, seq, c).to_vec());
            }
            for (c, bytes) in chunks {
                batch.insert(
                    &self.ledger_log,
                    ledger::chunk_key(p, target, c).to_vec(),
                    bytes,
                );
            }
            batch.commit().map_err(io("compact ledger"))?;
            self.db
                .persist(PersistMode::SyncAll)
                .map_err(io("persist"))?;
        }
        Ok(())
    }

    /// Ledger entries in the dedup window: those held whose issued_at is at or after
    /// their partition's cutoff.
    pub fn ledger_len(&self) -> Result<u64, StoreError> {
        let cutoffs = self.expiry.cutoffs();
        let mut n = 0;
        for e in self.ledger_entries() {
            let (p, _, _, e) = e?;
            if cutoffs.get(&p).is_none_or(|c| e.issued_at.secs >= *c) {
                n += 1;
            }
        }
        Ok(n)
    }

    /// The ledger's index: entries held (expired ones not yet dropped included), their
    /// heap bytes, and the segments on disk.
    pub fn ledger_memory(&self) -> LedgerMemory {
        let ledgers = self.ledgers.read().unwrap_or_else(PoisonError::into_inner);
        LedgerMemory {
            entries: ledgers.len(),
            bytes: ledgers.heap_bytes(),
            segments: ledgers.segments(),
        }
    }

    /// Partitions that hold state (those with a stored offset).
    pub fn partitions(&self) -> Result<Vec<i32>, StoreError> {
        Ok(self
            .partitions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone())
    }

    fn scan_partitions(&self) -> Result<Vec<i32>, StoreError> {
        let mut ps: Vec<i32> = self.offsets()?.keys().map(|(_, p)| *p).collect();
        ps.sort_unstable();
        ps.dedup();
        Ok(ps)
    }

    /// Every user state with its partition, in key order.
    pub fn users_by_partition(
        &self,
    ) -> impl Iterator<Item = Result<(i32, UserState), StoreError>> + '_ {
        self.users_under(&[])
    }

    /// Every user state of one partition, in user_id order.
    pub fn users_of(
        &self,
        partition: i32,
    ) -> impl Iterator<Item = Result<UserState, StoreError>> + '_ {
        let prefix = partition.to_be_bytes();
        self.users.prefix(prefix).map(|kv| {
            let v = kv.value().map_err(io("scan users"))?;
            value::decode_user(&v)
        })
    }

    /// The user states whose keys start with `prefix`, with their partition, in key order.
    fn users_under(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(i32, UserState), StoreError>> + '_ {
        self.users.prefix(prefix).map(|kv| {
            let (k, v) = kv.into_inner().map_err(io("scan users"))?;
            let p = partition_of(&k, "user key")?;
            Ok((p, value::decode_user(&v)?))
        })
    }

    /// Every ledger entry held: (partition, user_id, receipt_id, entry), in key order.
    pub fn ledger_entries(
        &self,
    ) -> impl Iterator<Item = Result<(i32, String, String, LedgerEntry), StoreError>> + '_ {
        let entries = self
            .ledgers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .entries();
        let (ok, err) = match entries {
            Ok(v) => (v, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        err.into_iter().map(Err).chain(ok.into_iter().map(Ok))
    }

    /// Ledger entries held (for progress bars).
    pub fn approximate_ledger_len(&self) -> u64 {
        self.ledgers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Every user state, in key order (partition, then user_id).
    pub fn users(&self) -> impl Iterator<Item = Result<UserState, StoreError>> + '_ {
        self.users.iter().map(|kv| {
            let v = kv.value().map_err(io("scan users"))?;
            value::decode_user(&v)
        })
    }

    /// Writes a whole batch atomically and persists it durably (fsync) before returning.
    pub fn commit(&self, set: &WriteSet) -> Result<(), StoreError> {
        self.apply(self.prepare(set)?)
    }

    /// The first half of [`Self::commit`]: every write of `set` gathered (the index
    /// changes read the store as it is now, so the batch before must be stored) and put in
    /// key order. Nothing is written until [`Self::apply`], which may run on another
    /// thread while the next batch folds.
    pub fn prepare(&self, set: &WriteSet) -> Result<Prepared, StoreError> {
        self.prepare_all([set])
    }

    /// [`Self::prepare`] of several sets of disjoint keys (a commit's partitions), into one
    /// atomic batch.
    pub fn prepare_all<'a>(
        &self,
        sets: impl IntoIterator<Item = &'a WriteSet> + Clone,
    ) -> Result<Prepared, StoreError> {
        if sets.clone().into_iter().all(WriteSet::is_empty) {
            return Ok(Prepared::default());
        }
        // Offsets are written in the same batch as the state they produced: that is
        // what makes a replay after a crash exact.
        let mut batch = Batch::with_capacity(
            &self.db,
            self.last_batch_writes
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        let mut boards = BoardChanges::default();
        let mut marks = BTreeMap::new();
        let mut partitions = Vec::new();
        let mut users_written = Vec::new();
        let mut ledger_changes: BTreeMap<i32, ledger::Change> = BTreeMap::new();
        for set in sets {
            for (key, state) in &set.users {
                let (p, user_id) = key;
                if !set.unindexed.contains(p) {
                    // The user's scores before the batch, to move its board entries; a
                    // board whose score did not change is not touched.
                    let previous = match set.previous_scores.get(key) {
                        Some(known) => known.clone(),
                        None => self.user(*p, user_id)?.as_ref().map(indexed),
                    };
                    boards.add(*p, previous.as_ref(), state);
                }
                let key = user_key(*p, user_id);
                users_written.push((*p, seen::hash(&key)));
                batch.insert(&self.users, key, value::encode_user(state));
            }
            fn change(changes: &mut BTreeMap<i32, ledger::Change>, p: i32) -> &mut ledger::Change {
                changes.entry(p).or_insert_with(|| ledger::Change::of(p))
            }
            for (p, user_id, receipt_id) in &set.ledger_expired {
                change(&mut ledger_changes, *p).expire(user_id, receipt_id);
            }
            for ((p, user_id, receipt_id), entry) in &set.ledger {
                change(&mut ledger_changes, *p).put(user_id, receipt_id, entry)?;
            }
            for ((topic, p), next) in &set.offsets {
                batch.insert(
                    &self.offsets,
                    offset_key(topic, *p),
                    next.to_be_bytes().to_vec(),
                );
            }
            for (p, mark) in &set.marks {
                let mut v = [0u8; 12];
                v[..8].copy_from_slice(&mark.secs.to_be_bytes());
                v[8..].copy_from_slice(&mark.nanos.to_be_bytes());
                batch.insert(&self.marks_ks, p.to_be_bytes(), v);
            }
            for (p, next) in &set.changelog {
                batch.insert(&self.changelog, p.to_be_bytes(), next.to_be_bytes());
            }
            marks.extend(&set.marks);
            partitions.extend(set.offsets.keys().map(|(_, p)| *p));
        }
        // One segment per partition whose ledger the batch changes, its sequence number
        // taken now: batches are prepared in the order they are applied.
        let mut ledger = Vec::with_capacity(ledger_changes.len());
        for (p, mut change) in ledger_changes {
            if change.writes() {
                change.seq = self.next_segment.fetch_add(1, Ordering::SeqCst);
                for (c, bytes) in change.chunks()? {
                    batch.insert(
                        &self.ledger_log,
                        ledger::chunk_key(p, change.seq, c).to_vec(),
                        bytes,
                    );
                }
            }
            ledger.push(change);
        }
        self.last_batch_writes
            .store(batch.len(), std::sync::atomic::Ordering::Relaxed);
        batch.sort();
        Ok(Prepared {
            batch: Some(batch),
            boards,
            marks,
            partitions,
            users_written,
            ledger,
        })
    }

    /// Every keyspace the store writes.
    fn keyspaces(&self) -> [&Keyspace; 5] {
        [
            &self.users,
            &self.ledger_log,
            &self.offsets,
            &self.marks_ks,
            &self.changelog,
        ]
    }

    /// Waits while the memtables hold more than their bound, for fjall's worker to flush
    /// them (as long as it has a flush or a compaction to do: [`WRITE_STALL_IDLE`]). A batch goes into the active memtables whole, and the worker rotates and
    /// flushes them only between compactions, so a fold of millions of new users outran it
    /// and the memtables grew to hundreds of MiB (docs/benchmarks-history.md, "A write
    /// stall"). Every wait is counted here, whichever commit waited: in
    /// [`StoreMemory::write_stall`] and in the stall histogram.
    fn wait_for_flushes(&self) {
        let stopping = || {
            self.stall_stop
                .get()
                .is_some_and(|flag| flag.load(Ordering::Relaxed))
        };
        if self.db.write_buffer_size() <= self.write_stall_bytes || stopping() {
            return;
        }
        let started = std::time::Instant::now();
        let grace = if self.write_stall_ended_idle.load(Ordering::Relaxed) {
            std::time::Duration::ZERO
        } else {
            WRITE_STALL_IDLE
        };
        let mut idle_since: Option<std::time::Instant> = None;
        let mut ended_idle = false;
        while self.db.write_buffer_size() > self.write_stall_bytes && !stopping() {
            let busy = self.db.outstanding_flushes() > 0
                || self.db.active_compactions() > 0
                || self
                    .keyspaces()
                    .iter()
                    .any(|k| k.sealed_memtable_count() > 0);
            if busy {
                idle_since = None;
            } else if idle_since
                .get_or_insert_with(std::time::Instant::now)
                .elapsed()
                >= grace
            {
                ended_idle = true;
                break;
            }
            if started.elapsed() > WRITE_STALL_MAX {
                tracing::warn!(
                    message = "The store's memtables stayed over their bound; writing anyway.",
                    bytes = self.db.write_buffer_size(),
                    bound = self.write_stall_bytes,
                );
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        self.write_stall_ended_idle
            .store(ended_idle, Ordering::Relaxed);
        let waited = started.elapsed();
        self.write_stall_micros.fetch_add(
            u64::try_from(waited.as_micros()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        crate::telemetry::write_stalled(waited);
    }

    /// Commits stop waiting for flushes once `flag` is set (a shutdown asked): a stopping
    /// processor's last commits write at once, over the memtables' bound if need be.
    pub fn stop_stalls_on(&self, flag: Arc<AtomicBool>) {
        let _ = self.stall_stop.set(flag);
    }

    /// The second half of [`Self::commit`]: writes a prepared batch atomically and
    /// persists it durably (fsync) before returning, after waiting, if need be, for the
    /// memtables to be flushed under their bound.
    pub fn apply(&self, prepared: Prepared) -> Result<(), StoreError> {
        let Prepared {
            batch,
            boards: changes,
            marks: new_marks,
            partitions,
            users_written,
            ledger,
        } = prepared;
        let Some(batch) = batch else {
            return Ok(());
        };
        self.wait_for_flushes();
        let by_keyspace = batch.per_keyspace().to_vec();
        // The batch's keys are known before a read can find them (see `seen`).
        self.known_users.written(&users_written)?;
        let mut dead = Vec::new();
        {
            // The batch reaches the memtables (where reads see it) and its moves reach
            // the boards under one lock: a board read never ranks users it cannot read
            // yet, nor reads users it has not ranked yet. Its ledger reaches memory in
            // the same section.
            let mut boards = self.boards.write().unwrap_or_else(PoisonError::into_inner);
            batch.commit().map_err(io("commit batch"))?;
            boards.apply(changes);
            // The fold reads the ledger through the batch being written first, so its
            // lock is held only while the batch's entries go in.
            let mut ledgers = self.ledgers.write().unwrap_or_else(PoisonError::into_inner);
            for change in ledger {
                ledgers.apply(change, &mut dead)?;
            }
        }
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(io("persist"))?;
        self.delete_segments(&dead)?;
        {
            let mut totals = self
                .writes_by_keyspace
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for (keyspace, n) in by_keyspace {
                let name: &str = keyspace.name().as_ref();
                match totals.iter_mut().find(|(known, _)| known == name) {
                    Some((_, total)) => *total += n,
                    None => totals.push((name.to_owned(), n)),
                }
            }
        }
        if !new_marks.is_empty() {
            let mut marks = self
                .expiry
                .marks
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            marks.extend(new_marks);
        }
        let mut known = self
            .partitions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for p in partitions {
            if let Err(at) = known.binary_search(&p) {
                known.insert(at, p);
            }
        }
        Ok(())
    }

    /// The top `limit` users by `board`, highest first, ties by user_id ascending.
    /// Reads `limit` index entries and their users: never scans every user.
    pub fn leaderboard(&self, board: Board, limit: usize) -> Result<Vec<UserState>, StoreError> {
        self.leaderboard_of(board, limit, |_| true)
    }

    /// The top `limit` users by `board` among the partitions `keep` accepts: each
    /// partition's top `limit` entries, merged (ties by user_id), then their users.
    pub fn leaderboard_of(
        &self,
        board: Board,
        limit: usize,
        keep: impl Fn(i32) -> bool,
    ) -> Result<Vec<UserState>, StoreError> {
        Ok(self
            .board_top(None, board, limit, keep)?
            .into_iter()
            .map(|(_, u)| u)
            .collect())
    }

    /// The top `limit` of one board (`period: None`, the all-time one) over the
    /// partitions `keep` accepts, highest first, ties by user_id ascending: each
    /// partition's top `limit` entries, merged, then their users, read under the boards'
    /// lock so that they are the states ranked. Returns (score, user).
    pub(crate) fn board_top(
        &self,
        period: Option<(crate::domain::Period, &str)>,
        board: Board,
        limit: usize,
        keep: impl Fn(i32) -> bool,
    ) -> Result<Vec<(i64, UserState)>, StoreError> {
        let boards = self.boards.read().unwrap_or_else(PoisonError::into_inner);
        let mut top: Vec<(i64, String, i32)> = Vec::new();
        for p in boards.partitions().filter(|p| keep(*p)) {
            top.extend(
                boards
                    .top(p, period, board, limit)
                    .into_iter()
                    .map(|(s, id)| (s, id, p)),
            );
        }
        top.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        top.truncate(limit);
        let mut out = Vec::with_capacity(top.len());
        for (score, user_id, p) in top {
            let user = self.user(p, &user_id)?.ok_or_else(|| StoreError::Corrupt {
                what: "leaderboard entry",
                detail: format!("user {user_id} of partition {p} is on a board but not stored"),
            })?;
            out.push((score, user));
        }
        Ok(out)
    }

    /// Approximate number of users (for the `mallquest_users` gauge).
    pub fn approximate_users(&self) -> u64 {
        self.users.approximate_len() as u64
    }

    /// Bytes free for unprivileged writers on the store's file system (`None`: unknown).
    pub fn free_bytes(&self) -> Option<u64> {
        let st = rustix::fs::statvfs(&self.path).ok()?;
        Some(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// Bytes on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::UserState;

    #[test]
    fn committed_batch_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut set = WriteSet::default();
            let mut u = UserState::new("u-1");
            u.coins = 42;
            set.users.insert((3, "u-1".into()), u);
            set.offsets.insert(("receipts".into(), 3), 17);
            store.commit(&set).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.user(3, "u-1").unwrap().unwrap().coins, 42);
        assert_eq!(store.find_user("u-1").unwrap().unwrap().coins, 42);
        assert_eq!(store.offset("receipts", 3).unwrap(), Some(17));
        assert_eq!(store.offset("receipts", 4).unwrap(), None);
        assert_eq!(store.partitions().unwrap(), vec![3]);
        assert_eq!(store.users().count(), 1);
    }

    #[test]
    fn users_are_looked_for_first_where_the_producers_partitioner_put_them() {
        use crate::partitioner::Partitioner;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let n = 6;
        let mut set = WriteSet::default();
        let placed = |id: &str| Partitioner::Murmur2.partition(id.as_bytes(), n);
        for i in 0..100 {
            let id = format!("u-{i}");
            set.users.insert((placed(&id), id.clone()), user(&id, i, 0));
        }
        for p in 0..n {
            set.offsets.insert(("t".into(), p), 1);
        }
        // One user in a partition none of the partitioners picks.
        let odd = (0..)
            .map(|i| format!("odd-{i}"))
            .find(|id| {
                Partitioner::ALL
                    .iter()
                    .all(|k| k.partition(id.as_bytes(), n) != 5)
            })
            .unwrap();
        set.users.insert((5, odd.clone()), user(&odd, 7, 0));
        // And one user in two partitions: an older copy where murmur2 would not put it.
        let twice = (100..)
            .map(|i| format!("u-{i}"))
            .find(|id| placed(id) != 0)
            .unwrap();
        set.users.insert((0, twice.clone()), user(&twice, 1, 0));
        set.users
            .insert((placed(&twice), twice.clone()), user(&twice, 2, 0));
        store.commit(&set).unwrap();

        for i in 0..100 {
            let id = format!("u-{i}");
            let (p, u) = store.locate_user(&id).unwrap().unwrap();
            assert_eq!((p, u.xp), (placed(&id), i), "{id}");
        }
        assert_eq!(store.locate_user(&odd).unwrap().unwrap().0, 5);
        assert!(store.locate_user("nobody").unwrap().is_none());
        // Learned murmur2 from the hundred above, so its partition is read first.
        let (p, u) = store.locate_user(&twice).unwrap().unwrap();
        assert_eq!((p, u.xp), (placed(&twice), 2));
    }

    #[test]
    fn the_topics_partition_count_makes_the_guess_right_where_the_store_holds_a_few() {
        use crate::partitioner::Partitioner;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // A user murmur2 puts in partition 4 of 6, that no partitioner puts in 4 of 5 (the
        // count the store alone would assume from holding partitions 3 and 4).
        let id = (0..)
            .map(|i| format!("u-{i}"))
            .find(|id| {
                let k = id.as_bytes();
                Partitioner::Murmur2.partition(k, 6) == 4
                    && Partitioner::ALL.iter().all(|p| p.partition(k, 5) != 4)
            })
            .unwrap();
        let mut set = WriteSet::default();
        // Its state in partition 4, and an older copy in 3 (read first without the count).
        set.users.insert((3, id.clone()), user(&id, 1, 0));
        set.users.insert((4, id.clone()), user(&id, 2, 0));
        set.offsets.insert(("t".into(), 3), 1);
        set.offsets.insert(("t".into(), 4), 1);
        store.commit(&set).unwrap();
        assert_eq!(store.locate_user(&id).unwrap().unwrap().0, 3);
        let (p, u) = store.locate_user_among(&id, Some(6)).unwrap().unwrap();
        assert_eq!((p, u.xp), (4, 2));
    }

    /// The top 10 of a board, by id.
    fn board_ids(store: &Store, b: Board) -> Vec<String> {
        store
            .leaderboard(b, 10)
            .unwrap()
            .into_iter()
            .map(|u| u.user_id)
            .collect()
    }

    fn user(id: &str, xp: i64, coins: i64) -> UserState {
        let mut u = UserState::new(id);
        u.xp = xp;
        u.coins = coins;
        u.total_spent = xp * 10;
        u
    }

    /// `n` users in partition 0 with long ids (about 2.4 KB of memtable each, all
    /// keyspaces together), and offset `n` of topic "t".
    fn padded_users(n: i64) -> WriteSet {
        let mut set = WriteSet::default();
        let pad = "x".repeat(400);
        for i in 0..n {
            let id = format!("u-{i:06}-{pad}");
            set.users.insert((0, id.clone()), user(&id, i, i));
        }
        set.offsets.insert(("t".into(), 0), n);
        set
    }

    /// One user `id` in partition 0, and offset `offset` of topic "t".
    fn one_user(id: &str, offset: i64) -> WriteSet {
        let mut set = WriteSet::default();
        set.users.insert((0, id.into()), user(id, 1, 1));
        set.offsets.insert(("t".into(), 0), offset);
        set
    }

    // A batch goes into the memtables whole, and fjall's one worker flushes them only when
    // it gets to them: the next commit waits until they are back under their bound.
    #[test]
    fn a_commit_waits_while_the_memtables_are_over_their_bound() {
        let dir = tempfile::tempdir().unwrap();
        let budget = 4 << 20;
        let bound = budget * WRITE_STALL_FACTOR;
        let store = Store::open_with_memory(dir.path(), 8 << 20, budget).unwrap();
        let big = padded_users(40_000);
        store.commit(&big).unwrap();
        let after_big = store.memory();
        assert!(
            after_big.write_buffer_bytes > bound,
            "the batch should overfill the memtables: {after_big:?}"
        );
        assert_eq!(after_big.write_stall, std::time::Duration::ZERO);
        store.commit(&one_user("u-late", 40_001)).unwrap();
        let after_small = store.memory();
        assert!(
            after_small.write_stall > std::time::Duration::ZERO,
            "{after_small:?}"
        );
        assert!(
            after_small.write_buffer_bytes <= bound + (1 << 20),
            "{after_small:?}"
        );
        assert_eq!(store.user(0, "u-late").unwrap().unwrap().coins, 1);
        assert_eq!(store.offset("t", 0).unwrap(), Some(40_001));
    }

    // A stop must end within the supervisor's grace: once shutdown is asked, a commit
    // writes at once, though the memtables are over their bound (the test above waits).
    #[test]
    fn a_commit_does_not_wait_for_flushes_once_shutdown_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        let budget = 4 << 20;
        let store = Store::open_with_memory(dir.path(), 8 << 20, budget).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        store.stop_stalls_on(Arc::clone(&stop));
        store.commit(&padded_users(40_000)).unwrap();
        assert!(store.memory().write_buffer_bytes > budget * WRITE_STALL_FACTOR);
        stop.store(true, Ordering::Relaxed);
        store.commit(&one_user("u-late", 40_001)).unwrap();
        assert_eq!(store.memory().write_stall, std::time::Duration::ZERO);
        assert_eq!(store.offset("t", 0).unwrap(), Some(40_001));
    }

    // fjall keeps a keyspace's memtable size from when the keyspace was created: a store
    // made with a larger budget has memtables each under their own size while together
    // over the bound, and no flush is coming. A commit must not wait for one.
    #[test]
    fn a_store_made_with_a_larger_budget_does_not_wait_for_flushes_that_never_come() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open_with_memory(dir.path(), 8 << 20, 128 << 20).unwrap());
        let budget = 4 << 20;
        let store = Store::open_with_memory(dir.path(), 8 << 20, budget).unwrap();
        let big = padded_users(20_000);
        store.commit(&big).unwrap();
        for n in 1..=2 {
            store
                .commit(&one_user(&format!("u-late-{n}"), 20_000 + n))
                .unwrap();
        }
        let m = store.memory();
        assert!(
            m.write_buffer_bytes > budget * WRITE_STALL_FACTOR,
            "nothing was flushed: {m:?}"
        );
        // Far under the 60 s a wait for a flush would last.
        assert!(m.write_stall < std::time::Duration::from_secs(10), "{m:?}");
        assert_eq!(store.offset("t", 0).unwrap(), Some(20_002));
    }

    /// A ledger entry issued at `secs`.
    fn entry(secs: i64) -> LedgerEntry {
        LedgerEntry {
            kind: crate::domain::ReceiptKind::Purchase,
            store_id: "s-1".into(),
            amount: 100,
            issued_at: crate::domain::Timestamp { secs, nanos: 0 },
            earned_coins: 1,
            earned_xp: 1,
            refunded: 0,
            campaign_coins: vec![],
            tier_bonus: 0,
            taken: vec![],
        }
    }

    // The ledger's index holds what its segments say: through writes, a wave of expiries,
    // writes after that, and a reopen (which reads the segments that survived).
    #[test]
    fn every_ledger_key_stored_is_found_through_expiries_and_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let found = |store: &Store, p: i32, r: &str| store.ledger_entry(p, "u", r).unwrap();
        let mut live: BTreeSet<(i32, String)> = BTreeSet::new();
        {
            let store = Store::open(dir.path()).unwrap();
            store.set_dedup_window_secs(3_000);
            assert_eq!(found(&store, 1, "r-0"), None);
            let mut set = WriteSet::default();
            for p in [1, 2] {
                for i in 0..3_000 {
                    set.ledger
                        .insert((p, "u".into(), format!("r-{i}")), entry(i64::from(i)));
                    live.insert((p, format!("r-{i}")));
                }
            }
            store.commit(&set).unwrap();
            for (p, r) in &live {
                assert_eq!(found(&store, *p, r), Some(entry(r[2..].parse().unwrap())));
            }
            assert_eq!(found(&store, 1, "never"), None);
            // Partition 1's mark at 5,000: its entries issued before 2,000 leave the window.
            let mut set = WriteSet::default();
            set.marks.insert(
                1,
                Timestamp {
                    secs: 5_000,
                    nanos: 0,
                },
            );
            for i in 0..2_000 {
                set.ledger_expired.insert((1, "u".into(), format!("r-{i}")));
                live.remove(&(1, format!("r-{i}")));
            }
            set.ledger
                .insert((1, "u".into(), "r-new".into()), entry(5_009));
            live.insert((1, "r-new".into()));
            store.commit(&set).unwrap();
            let mut set = WriteSet::default();
            set.ledger
                .insert((1, "u".into(), "r-after".into()), entry(5_010));
            live.insert((1, "r-after".into()));
            store.commit(&set).unwrap();
            for i in 0..3_000 {
                let r = format!("r-{i}");
                let want = live.contains(&(1, r.clone())).then(|| entry(i64::from(i)));
                assert_eq!(found(&store, 1, &r), want, "{r}");
            }
            assert_eq!(found(&store, 1, "r-new"), Some(entry(5_009)));
            assert_eq!(found(&store, 1, "r-after"), Some(entry(5_010)));
        }
        let store = Store::open(dir.path()).unwrap();
        store.set_dedup_window_secs(3_000);
        for (p, r) in &live {
            assert!(found(&store, *p, r).is_some(), "{p} {r} after a reopen");
        }
        // An expiry is not written: an expired entry may come back from a segment that
        // holds current entries too, but only past its partition's cutoff, where the fold
        // counts it absent (and the next expiry finds it again).
        assert_eq!(store.ledger_len().unwrap(), live.len() as u64);
        let back = store.ledger_due(1, 2_000, 10_000).unwrap();
        assert!(back.iter().all(|(_, _, secs)| *secs < 2_000));
    }

    // The same for users: a user the store holds is always found, one never written never.
    #[test]
    fn every_user_stored_is_found_before_and_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = (0..2_000).map(|i| format!("u-{i}")).collect();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.user(0, "u-0").unwrap(), None);
            for chunk in ids.chunks(700) {
                let mut set = WriteSet::default();
                for id in chunk {
                    set.users.insert((0, id.clone()), user(id, 1, 1));
                }
                store.commit(&set).unwrap();
                for id in chunk {
                    assert_eq!(store.user(0, id).unwrap(), Some(user(id, 1, 1)));
                }
            }
            assert_eq!(store.user(0, "never").unwrap(), None);
        }
        let store = Store::open(dir.path()).unwrap();
        for id in &ids {
            assert_eq!(store.user(0, id).unwrap(), Some(user(id, 1, 1)));
            assert_eq!(store.user(1, id).unwrap(), None);
        }
    }

    #[test]
    fn leaderboard_index_follows_updates_with_ties_by_user_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut set = WriteSet::default();
        for (i, (id, xp)) in [("u-b", 50), ("u-a", 50), ("u-c", 10), ("u-d", -5)]
            .iter()
            .enumerate()
        {
            set.users
                .insert((i as i32 % 2, id.to_string()), user(id, *xp, 100 - *xp));
        }
        set.offsets.insert(("t".into(), 0), 1);
        store.commit(&set).unwrap();
        // Found by id at once, without a reopen (the partition list is cached).
        assert_eq!(store.find_user("u-c").unwrap().unwrap().xp, 10);
        let ids = |b| board_ids(&store, b);
        assert_eq!(ids(Board::Xp), ["u-a", "u-b", "u-c", "u-d"]);
        assert_eq!(ids(Board::Coins), ["u-d", "u-c", "u-a", "u-b"]);
        // An update moves the user and leaves no stale entry behind.
        let mut set = WriteSet::default();
        set.users.insert((0, "u-c".into()), user("u-c", 999, 0));
        store.commit(&set).unwrap();
        assert_eq!(ids(Board::Xp), ["u-c", "u-a", "u-b", "u-d"]);
        assert_eq!(store.leaderboard(Board::Xp, 2).unwrap().len(), 2);
    }

    #[test]
    fn a_store_of_an_earlier_layout_opens_with_its_index_keyspaces_dropped_and_boards_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut set = WriteSet::default();
            for (p, id, xp) in [(0, "u-a", 5), (1, "u-b", 9), (2, "u-c", 7)] {
                set.users.insert((p, id.to_string()), user(id, xp, 1));
            }
            store.commit(&set).unwrap();
        }
        {
            // As earlier layouts left it: index keyspaces beside the users, holding
            // entries the boards must not show.
            let db = Database::builder(dir.path()).open().unwrap();
            let options = KeyspaceCreateOptions::default;
            for name in RETIRED_KEYSPACES {
                let ks = db.keyspace(name, options).unwrap();
                ks.insert([0u8, 0, 0, 0, b'x', 0, 1, 2, 3], 0i32.to_be_bytes())
                    .unwrap();
            }
            db.persist(PersistMode::SyncAll).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let ids: Vec<String> = store
            .leaderboard(Board::Xp, 10)
            .unwrap()
            .into_iter()
            .map(|u| u.user_id)
            .collect();
        assert_eq!(ids, ["u-b", "u-c", "u-a"]);
        let ids: Vec<String> = store
            .leaderboard_of(Board::Xp, 10, |p| p != 1)
            .unwrap()
            .into_iter()
            .map(|u| u.user_id)
            .collect();
        assert_eq!(ids, ["u-c", "u-a"]);
        drop(store);
        let db = Database::builder(dir.path()).open().unwrap();
        for name in RETIRED_KEYSPACES {
            assert!(!db.keyspace_exists(name), "{name} is dropped");
        }
    }

    // A ledger of the earlier layout (one key per entry, an event-time index, a marker of
    // its fill) is moved into segments at the first open and its keyspaces deleted; every
    // entry is found then, and after a second open, which finds nothing more to move.
    #[test]
    fn a_ledger_of_the_earlier_layout_is_moved_into_segments_at_the_first_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut want = BTreeMap::new();
        {
            let db = Database::builder(dir.path()).open().unwrap();
            let options = KeyspaceCreateOptions::default;
            let ledger = db.keyspace(OLD_LEDGER, options).unwrap();
            let due = db.keyspace(OLD_DUE, options).unwrap();
            let meta = db.keyspace(OLD_META, options).unwrap();
            for (p, n) in [(0i32, MIGRATION_CHUNK as i64 + 7), (3, 10)] {
                for i in 0..n {
                    let (user, receipt) = (format!("u-{}", i % 13), format!("r-{i}"));
                    let mut k = p.to_be_bytes().to_vec();
                    k.extend_from_slice(user.as_bytes());
                    k.push(0);
                    k.extend_from_slice(receipt.as_bytes());
                    ledger
                        .insert(k.clone(), value::encode_ledger(&entry(i)))
                        .unwrap();
                    due.insert(k, []).unwrap();
                    want.insert((p, user, receipt), entry(i));
                }
            }
            meta.insert("due-indexed", []).unwrap();
            db.persist(PersistMode::SyncAll).unwrap();
        }
        for _ in 0..2 {
            let store = Store::open(dir.path()).unwrap();
            let got: BTreeMap<_, _> = store
                .ledger_entries()
                .map(|e| e.map(|(p, u, r, e)| ((p, u, r), e)))
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(got.len(), want.len());
            assert!(got == want);
            assert_eq!(store.ledger_entry(3, "u-5", "r-5").unwrap(), Some(entry(5)));
            drop(store);
            let db = Database::builder(dir.path()).open().unwrap();
            for name in [OLD_LEDGER, OLD_DUE, OLD_META] {
                assert!(!db.keyspace_exists(name), "{name} is dropped");
            }
        }
    }

    #[test]
    fn user_counts_are_exact_across_updates_restores_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut set = WriteSet::default();
        for id in ["u-a", "u-b"] {
            set.users.insert((0, id.into()), user(id, 1, 1));
        }
        set.users.insert((1, "u-c".into()), user("u-c", 1, 1));
        store.commit(&set).unwrap();
        // Updates add nobody; a new user in the same batch does.
        let mut set = WriteSet::default();
        set.users.insert((0, "u-a".into()), user("u-a", 2, 2));
        set.users.insert((0, "u-d".into()), user("u-d", 2, 2));
        store.commit(&set).unwrap();
        assert_eq!(store.users_in(|p| p == 0), 3);
        assert_eq!(store.users_in(|_| true), 4);
        // A partition written unindexed is counted by its indexing scan.
        let mut set = WriteSet::default();
        set.unindexed.insert(2);
        for id in ["u-e", "u-f"] {
            set.users.insert((2, id.into()), user(id, 1, 1));
        }
        store.commit(&set).unwrap();
        assert_eq!(store.users_in(|p| p == 2), 0);
        store.index_partition(2).unwrap();
        assert_eq!(store.users_in(|p| p == 2), 2);
        assert_eq!(store.index_partition(0).unwrap(), 3);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.users_in(|_| true), 6);
        assert_eq!(store.users_in(|p| p != 1), 5);
    }

    #[test]
    fn a_partition_written_unindexed_is_indexed_in_one_scan_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.partition_is_empty(3).unwrap());
        // Partition 1 indexed as usual; partition 3 written in two unindexed chunks, a
        // user twice (the second state wins).
        let mut set = WriteSet::default();
        set.users.insert((1, "u-x".into()), user("u-x", 30, 5));
        store.commit(&set).unwrap();
        for chunk in [[("u-a", 10), ("u-b", 70)], [("u-a", 90), ("u-c", 20)]] {
            let mut set = WriteSet::default();
            set.unindexed.insert(3);
            for (id, xp) in chunk {
                set.users
                    .insert((3, id.to_string()), user(id, xp, 100 - xp));
            }
            store.commit(&set).unwrap();
        }
        assert!(!store.partition_is_empty(3).unwrap());
        assert!(store.partition_is_empty(2).unwrap());
        let ids = |b| board_ids(&store, b);
        // Not indexed yet: only partition 1 shows.
        assert_eq!(ids(Board::Xp), ["u-x"]);
        assert_eq!(store.index_partition(3).unwrap(), 3);
        assert_eq!(ids(Board::Xp), ["u-a", "u-b", "u-x", "u-c"]);
        assert_eq!(ids(Board::Coins), ["u-c", "u-b", "u-a", "u-x"]);
        // Later updates re-index from the indexed scores, leaving nothing stale.
        let mut set = WriteSet::default();
        set.users.insert((3, "u-a".into()), user("u-a", 0, 0));
        store.commit(&set).unwrap();
        assert_eq!(ids(Board::Xp), ["u-b", "u-x", "u-c", "u-a"]);
    }

    #[test]
    fn ranks_equal_a_full_sort_through_updates_and_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut latest: HashMap<(i32, String), UserState> = HashMap::new();
        {
            let store = Store::open(dir.path()).unwrap();
            for _ in 0..12 {
                let mut set = WriteSet::default();
                for _ in 0..60 {
                    let n = next() % 150;
                    let (id, p) = (format!("u-{n:03}"), (n % 2) as i32);
                    // Scores from exact buckets to wide ones, ties, and negative coins.
                    let xp = match next() % 4 {
                        0 => (next() % 70) as i64,
                        1 => 1000,
                        _ => (next() % 5_000_000) as i64,
                    };
                    let coins = (next() % 4000) as i64 - 1000;
                    set.users.insert((p, id.clone()), user(&id, xp, coins));
                }
                store.commit(&set).unwrap();
                latest.extend(set.users);
            }
            check_ranks(&store, &latest);
        }
        // Reopened: the boards are rebuilt from the users alone.
        let store = Store::open(dir.path()).unwrap();
        check_ranks(&store, &latest);
    }

    fn check_ranks(store: &Store, users: &HashMap<(i32, String), UserState>) {
        for b in Board::ALL {
            let mut all: Vec<&UserState> = users.values().collect();
            all.sort_by(|x, y| b.score(y).cmp(&b.score(x)).then(x.user_id.cmp(&y.user_id)));
            for (i, u) in all.iter().enumerate() {
                let above = store
                    .rank_above(None, b, b.score(u), &u.user_id, |_| true)
                    .unwrap();
                assert_eq!(above as usize, i, "{b:?} rank of {}", u.user_id);
            }
        }
    }
}

//! source -> decode -> fold -> publish -> store: the only place that knows the order.
//!
//! A [`Processor`] folds records into a pending [`WriteSet`] (state, ledger and offsets
//! of the batch in hand). Its outputs may be sent early, as soon as the source has
//! nothing more in hand ([`Processor::send_changes`]), so that a projection does not wait
//! out the commit interval. [`Processor::commit`] sends what is left, waits until every
//! output is delivered, then writes the batch to the store in one atomic, fsync'd write. So the stored offsets never run ahead of delivered outputs: a crash
//! anywhere replays the batch from the stored offsets, which folds to the same state and
//! republishes identical outputs (at-least-once outputs, exactly-once state).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::changelog;
use crate::codec;
use crate::domain::{self, timers, Effect, Event, LevelUp, Reject, Rules, UserState};
use crate::store::{Store, StoreError, WriteSet};
use crate::telemetry;

mod drive;
pub use drive::{drive, Engine, Finish, Gate, Message, Polled, Source, MAX_POLL_WAIT};

/// One input record, borrowed from its source.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Topic it was read from.
    pub topic: &'a str,
    /// Partition it was read from.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// The Kafka key (must be the user_id).
    pub key: Option<&'a [u8]>,
    /// The value bytes.
    pub payload: Option<&'a [u8]>,
    /// The record's Kafka timestamp (ms since the epoch), if it has one. Stored in the log
    /// with the record, so a replay sees the same: it bounds how far one receipt can move
    /// its partition's event-time mark.
    pub timestamp_ms: Option<i64>,
}

/// Most records folded into one batch, whatever the commit interval, unless
/// `[processing] max_batch_records` says otherwise.
pub const DEFAULT_MAX_BATCH_RECORDS: u64 = 50_000;

/// When the batch in hand is committed and when its outputs are sent early: the one policy
/// that `run` and `demo` share. A batch is committed once the commit interval is over or it
/// holds its most records ([`DEFAULT_MAX_BATCH_RECORDS`] unless configured), or, when the
/// source has nothing more in hand, once its first record has waited `[processing]
/// idle_commit_ms` (so that at a low rate a projection does not wait for the interval);
/// otherwise, between commits, outputs are sent when the source has nothing more in hand,
/// at most every quarter interval (each send is a produce request).
#[derive(Debug, Clone)]
pub struct Cadence {
    interval: Duration,
    /// Most records in one batch: with a few in flight at once, they bound the memory a
    /// fold of new users takes (docs/benchmarks-history.md, "Smaller batches").
    max_records: u64,
    send_every: Duration,
    deadline: Instant,
    last_send: Instant,
    /// How long a batch's first record may wait for a commit while the source is idle
    /// (`None`: until the interval is over).
    idle_commit: Option<Duration>,
    /// When the batch in hand got its first record.
    first_pending: Option<Instant>,
}

impl Cadence {
    /// A cadence committing every `interval` or every `max_records` records (at least 1),
    /// starting now.
    pub fn new(interval: Duration, max_records: u64) -> Self {
        let now = Instant::now();
        Self {
            interval,
            max_records: max_records.max(1),
            send_every: interval / 4,
            deadline: now + interval,
            last_send: now,
            idle_commit: None,
            first_pending: None,
        }
    }

    /// Also commits, while the source is idle, a batch whose first record has waited
    /// `after` (`None`: never before the interval).
    pub fn committing_when_idle(mut self, after: Option<Duration>) -> Self {
        self.idle_commit = after;
        self
    }

    /// The batch in hand holds `pending` records now.
    pub fn holding(&mut self, pending: u64) {
        if pending == 0 {
            self.first_pending = None;
        } else if self.first_pending.is_none() {
            self.first_pending = Some(Instant::now());
        }
    }

    /// Whether the batch in hand may be committed now, before its interval is over, the
    /// source having nothing more: its first record has waited the idle commit's time.
    pub fn idle_commit_due(&self) -> bool {
        match (self.idle_commit, self.first_pending) {
            (Some(after), Some(first)) => first.elapsed() >= after,
            _ => false,
        }
    }

    /// Whether the batch in hand, of `pending` records, is to be committed now.
    pub fn commit_due(&self, pending: u64) -> bool {
        pending >= self.max_records || Instant::now() >= self.deadline
    }

    /// Most records in one batch.
    pub fn max_records(&self) -> u64 {
        self.max_records
    }

    /// Whether outputs in hand may be sent early now.
    pub fn send_due(&self) -> bool {
        Instant::now() >= self.last_send + self.send_every
    }

    /// How long the source may wait for its next record: until the commit is due, the
    /// idle commit of a batch in hand, or the next early send if outputs are `unsent`; at
    /// most `bound`.
    pub fn wait(&self, unsent: bool, bound: Duration) -> Duration {
        let mut until = self.deadline;
        if unsent {
            until = until.min(self.last_send + self.send_every);
        }
        if let (Some(after), Some(first)) = (self.idle_commit, self.first_pending) {
            until = until.min(first + after);
        }
        until.saturating_duration_since(Instant::now()).min(bound)
    }

    /// Outputs were sent early.
    pub fn sent(&mut self) {
        self.last_send = Instant::now();
    }

    /// A batch was committed (or given up): the next interval starts now.
    pub fn committed(&mut self) {
        let now = Instant::now();
        self.first_pending = None;
        self.deadline = now + self.interval;
        self.last_send = now;
    }
}

/// A rejected record, kept whole for the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The original key.
    pub key: Option<Vec<u8>>,
    /// The original bytes.
    pub payload: Option<Vec<u8>>,
    /// Why it was rejected.
    pub reason: Reject,
    /// Where it came from.
    pub topic: String,
    /// Where it came from.
    pub partition: i32,
    /// Where it came from.
    pub offset: i64,
}

/// What one commit publishes, borrowed from the batch where it can be (`'a`): a commit
/// publishes every user it changed, and copying each first was measurable.
#[derive(Debug, Default)]
pub struct Outputs<'a> {
    /// Latest state of every user changed in the batch.
    pub projections: Vec<Cow<'a, UserState>>,
    /// Events (level-ups, missions, badges) in fold order.
    pub events: Vec<Event>,
    /// Rejected records in fold order.
    pub dead_letters: Vec<DeadLetter>,
    /// Changelog records by partition: the batch's users, ledger entries and, last, the
    /// partition's position. Only for sinks that keep a changelog ([`Sink::wants_changelog`]).
    pub changelog: Vec<(i32, changelog::EntryRef<'a>)>,
}

/// Where outputs go.
pub trait Sink {
    /// Starts publishing: enqueues every output, without waiting for delivery. It may be
    /// called several times before a [`Sink::wait`].
    fn send(&mut self, outputs: &Outputs<'_>) -> anyhow::Result<()>;

    /// Waits until everything sent so far is delivered; an error means some output sent
    /// since the last `wait` may be missing.
    fn wait(&mut self) -> anyhow::Result<()>;

    /// Publishes and waits for delivery.
    fn publish(&mut self, outputs: &Outputs<'_>) -> anyhow::Result<()> {
        self.send(outputs)?;
        self.wait()
    }

    /// Whether the sink keeps a changelog: then each batch's last send carries its
    /// changelog records ([`Outputs::changelog`]).
    fn wants_changelog(&self) -> bool {
        false
    }

    /// Makes everything sent since the last `finish` final, together with the receipt
    /// offsets it reflects (a transactional sink commits its transaction here). Returns
    /// the next changelog offset of each partition written to. An error means none of it
    /// counts: the batch is folded again.
    fn finish(
        &mut self,
        offsets: &BTreeMap<(String, i32), i64>,
    ) -> anyhow::Result<BTreeMap<i32, i64>> {
        let _ = offsets;
        self.wait()?;
        Ok(BTreeMap::new())
    }

    /// Drops everything sent since the last `finish` (a transactional sink aborts).
    fn abort(&mut self) {}
}

/// What one partition's fold owns between commits, as a Kafka Streams task owns its
/// partition: the batch in hand and the batch in flight (state, ledger, offset and
/// event-time mark, all keyed by this partition), the outputs not sent yet, and how far
/// its ledger expiry has got. Created by the partition's first record; dropped whole when
/// the partition is revoked ([`Processor::forget`]), so nothing of it outlives the
/// partition's ownership. Its hot users sit in the processor's one bounded hot set, keyed
/// by partition, and go with it.
#[derive(Default)]
struct Task {
    /// The batch in hand.
    pending: WriteSet,
    /// The batch between its last send and its settling, within one commit: its outputs
    /// are sent but maybe not yet delivered. Nothing folds meanwhile.
    inflight: Option<WriteSet>,
    /// Users of `pending` changed since its outputs were last sent.
    unsent: HashSet<String>,
    /// Events of `pending` not sent yet, in fold order.
    events: Vec<Event>,
    /// Dead letters of `pending` not sent yet, in fold order.
    dead_letters: Vec<DeadLetter>,
}

impl Task {
    fn has_unsent(&self) -> bool {
        !(self.unsent.is_empty() && self.events.is_empty() && self.dead_letters.is_empty())
    }
}

/// A commit's batch: each partition's set, written together in one atomic batch but
/// never merged into one (moving every entry into one map cost more than the write).
type Flights = BTreeMap<i32, WriteSet>;

/// A batch whose outputs are final, being written to the store by a thread of its own.
struct Landing {
    /// What is being written, by partition; the next batch reads through it until it is
    /// stored.
    sets: Arc<Flights>,
    /// Its counts.
    stats: BatchStats,
    /// The writing thread.
    writer: std::thread::JoinHandle<Result<(), StoreError>>,
}

/// Counts of one batch, for logs and the demo summary.
#[derive(Debug, Default, Clone)]
pub struct BatchStats {
    /// Records folded.
    pub records: u64,
    /// Receipts that changed state.
    pub applied: u64,
    /// Exact duplicates, ignored.
    pub duplicates: u64,
    /// Rejected records by reason.
    pub rejected: BTreeMap<Reject, u64>,
    /// Level-up events.
    pub level_ups: u64,
    /// Levels gained.
    pub levels: u64,
    /// Missions completed.
    pub missions_completed: u64,
    /// Missions revoked.
    pub missions_revoked: u64,
    /// Badges earned.
    pub badges_earned: u64,
    /// Coins expired (`[expiry]`).
    pub coins_expired: u64,
    /// Tier changes, by the tier moved to (`None`: no tier).
    pub tier_changes: BTreeMap<Option<String>, u64>,
    /// Campaign coins granted.
    pub campaign_coins: u64,
    /// Coins spent by redemptions (reversals not subtracted).
    pub coins_redeemed: u64,
    /// Coins granted (purchases and level bonuses).
    pub coins_awarded: u64,
    /// Coins taken back by refunds.
    pub coins_reversed: u64,
    /// Users published.
    pub users_published: u64,
    /// Next offsets the batch committed, by (topic, partition).
    pub offsets: BTreeMap<(String, i32), i64>,
    /// Purchases and refunds by store, when the processor keeps them
    /// ([`Processor::tallying_stores`]; `whatif` does).
    pub by_store: HashMap<String, StoreTally>,
}

/// What the applied purchases and refunds of one store came to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StoreTally {
    /// Purchases and refunds applied.
    pub receipts: u64,
    /// Coins they changed, net: all that purchases earned (base, level-up bonus,
    /// campaigns, missions) less what refunds took back.
    pub coins: i64,
    /// Money spent, net of refunds, in minor units.
    pub spent: i64,
}

impl BatchStats {
    /// Counts one event.
    fn count(&mut self, event: &Event) {
        match event {
            Event::LevelUp(up) => {
                self.levels += u64::from(up.to_level - up.from_level);
                self.level_ups += 1;
            }
            Event::MissionCompleted(_) => self.missions_completed += 1,
            Event::MissionRevoked(_) => self.missions_revoked += 1,
            Event::BadgeEarned(_) => self.badges_earned += 1,
            Event::CoinsExpired(x) => {
                self.coins_expired += u64::try_from(x.coins).unwrap_or(0);
            }
            Event::TierChanged(t) => *self.tier_changes.entry(t.to.clone()).or_default() += 1,
        }
    }

    /// One receipt applied, with its entry and its change of coins.
    fn applied_one(&mut self, entry: &domain::LedgerEntry, coins_delta: i64) {
        self.applied += 1;
        match &entry.kind {
            domain::ReceiptKind::Purchase => {
                let granted: i64 = entry.campaign_coins.iter().map(|(_, c)| c).sum();
                self.campaign_coins += granted.unsigned_abs();
            }
            domain::ReceiptKind::Redemption { coins } => {
                self.coins_redeemed += coins.unsigned_abs();
            }
            _ => {}
        }
        if coins_delta >= 0 {
            self.coins_awarded += coins_delta.unsigned_abs();
        } else {
            self.coins_reversed += coins_delta.unsigned_abs();
        }
    }

    /// Adds a later batch: its counts, and its offsets over this one's.
    pub fn add_batch(&mut self, o: BatchStats) {
        self.add(&o);
        self.offsets.extend(o.offsets);
    }

    /// Adds another batch's counts.
    pub fn add(&mut self, o: &BatchStats) {
        self.records += o.records;
        self.applied += o.applied;
        self.duplicates += o.duplicates;
        for (r, n) in &o.rejected {
            *self.rejected.entry(*r).or_default() += n;
        }
        self.level_ups += o.level_ups;
        self.levels += o.levels;
        self.missions_completed += o.missions_completed;
        self.missions_revoked += o.missions_revoked;
        self.badges_earned += o.badges_earned;
        self.coins_expired += o.coins_expired;
        for (to, n) in &o.tier_changes {
            *self.tier_changes.entry(to.clone()).or_default() += n;
        }
        self.campaign_coins += o.campaign_coins;
        self.coins_redeemed += o.coins_redeemed;
        self.coins_awarded += o.coins_awarded;
        self.coins_reversed += o.coins_reversed;
        self.users_published += o.users_published;
        for (store, t) in &o.by_store {
            let mine = self.by_store.entry(store.clone()).or_default();
            mine.receipts += t.receipts;
            mine.coins = mine.coins.saturating_add(t.coins);
            mine.spent = mine.spent.saturating_add(t.spent);
        }
    }

    /// Counts an applied purchase or refund of `entry.store_id` into [`Self::by_store`].
    fn tally_store(&mut self, entry: &domain::LedgerEntry, coins_delta: i64) {
        let spent = match entry.kind {
            domain::ReceiptKind::Purchase => entry.amount,
            domain::ReceiptKind::Refund { .. } => -entry.amount,
            _ => return,
        };
        let t = match self.by_store.get_mut(&entry.store_id) {
            Some(t) => t,
            None => self.by_store.entry(entry.store_id.clone()).or_default(),
        };
        t.receipts += 1;
        t.coins = t.coins.saturating_add(coins_delta);
        t.spent = t.spent.saturating_add(spent);
    }
}

/// Why a commit failed. The batch in hand was dropped; resume from [`Processor::resume_offset`].
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Outputs could not all be delivered; the store was not written.
    #[error("failed to publish outputs")]
    Publish(#[source] anyhow::Error),
    /// The store write failed after outputs were delivered; they will be published again.
    #[error("failed to write the store")]
    Store(#[from] StoreError),
}

/// The processor's read position per (topic, partition): the next offset to fold.
/// Shared with the Kafka rebalance callback, which seeks newly assigned partitions to it.
pub type Positions = Arc<Mutex<HashMap<(String, i32), i64>>>;

type HotSet = quick_cache::unsync::Cache<(i32, String), UserState>;

/// Default size of the hot set, in users (`[store] hot_users`).
pub const DEFAULT_HOT_USERS: usize = 50_000;

/// Default dedup window, in days of event time (`[processing] dedup_window_days`).
pub const DEFAULT_DEDUP_WINDOW_DAYS: u32 = 90;

const SECS_PER_DAY: i64 = 86_400;

/// How far a receipt's `issued_at` may run ahead of its record's Kafka timestamp and
/// still move the partition's mark that far: a POS clock set years ahead must not make
/// every later receipt `too_old`.
pub const MAX_CLOCK_SKEW_SECS: i64 = SECS_PER_DAY;

/// Most ledger entries one batch deletes per partition when they leave the dedup window.
pub const EXPIRE_PER_BATCH: usize = 5_000;

/// Folds records into a pending batch and commits it.
pub struct Processor {
    store: Arc<Store>,
    /// Committed states of recently changed users: a bounded hot set in front of the store
    /// (never the batch in hand, so dropping a batch never leaves it stale).
    hot: Option<HotSet>,
    rules: Rules,
    /// One task per partition folded since the last reset, by partition.
    tasks: BTreeMap<i32, Task>,
    /// Counts of the batch in hand (all partitions: one commit holds them all).
    stats: BatchStats,
    /// Counts of the batch in flight, when there is one.
    inflight_stats: Option<BatchStats>,
    /// The last batch, final on the sink and being written to the store on a thread of
    /// its own while the next batch folds ([`Self::commit_behind`]).
    landing: Option<Landing>,
    /// Counts of batches in the store that no commit has returned yet: one stored by a
    /// commit whose later step failed, or landed by a reset.
    unreported: BatchStats,
    /// Tests hold this lock to keep a batch's store write from starting.
    #[cfg(test)]
    hold_writes: Arc<Mutex<()>>,
    positions: Positions,
    /// The dedup window in seconds of event time.
    window_secs: i64,
    /// Whether batches count purchases and refunds by store ([`BatchStats::by_store`]).
    tally_stores: bool,
    /// Each partition's timers (`[expiry]`, `[tiers]`): (instant, user_id), read from its
    /// users the first time a record of it needs them; an entry may be stale (the user's
    /// timer moved since), which is found out when it comes up.
    timers: HashMap<i32, BTreeSet<(domain::Timestamp, String)>>,
}

impl Processor {
    /// A processor over `store` with `rules`.
    pub fn new(store: Arc<Store>, rules: Rules) -> Self {
        Self::with_hot_users(store, rules, DEFAULT_HOT_USERS)
    }

    /// A processor whose hot set holds at most `hot_users` users (0: none).
    pub fn with_hot_users(store: Arc<Store>, mut rules: Rules, hot_users: usize) -> Self {
        let window_secs = i64::from(DEFAULT_DEDUP_WINDOW_DAYS) * SECS_PER_DAY;
        rules.game.window_secs = Some(window_secs);
        store.set_periods_kept(rules.game.periods_kept());
        store.set_dedup_window_secs(window_secs);
        Self {
            hot: (hot_users > 0).then(|| HotSet::new(hot_users)),
            store,
            rules,
            tasks: BTreeMap::new(),
            stats: BatchStats::default(),
            inflight_stats: None,
            landing: None,
            unreported: BatchStats::default(),
            #[cfg(test)]
            hold_writes: Arc::default(),
            positions: Positions::default(),
            window_secs,
            tally_stores: false,
            timers: HashMap::new(),
        }
    }

    /// Checks duplicates and refunds `days` back in event time (default 90); older
    /// receipts are rejected as `too_old`, older ledger entries are dead.
    pub fn with_dedup_window_days(mut self, days: u32) -> Self {
        self.window_secs = i64::from(days.max(1)) * SECS_PER_DAY;
        self.rules.game.window_secs = Some(self.window_secs);
        self.store.set_dedup_window_secs(self.window_secs);
        self
    }

    /// Counts each batch's purchases and refunds by store ([`BatchStats::by_store`]).
    pub fn tallying_stores(mut self) -> Self {
        self.tally_stores = true;
        self
    }

    /// The oldest issued_at (seconds) partition `p` still checks: its mark (pending or
    /// committed) less the window. `None` before any receipt was applied.
    fn cutoff(&self, p: i32) -> Option<i64> {
        self.mark(p)
            .map(|m| m.secs.saturating_sub(self.window_secs))
    }

    /// Partition `p`'s mark: the batch in hand's, else the batch being written's, else the
    /// store's.
    fn mark(&self, p: i32) -> Option<domain::Timestamp> {
        self.tasks
            .get(&p)
            .and_then(|t| t.pending.marks.get(&p))
            .or_else(|| self.landing.as_ref()?.sets.get(&p)?.marks.get(&p))
            .copied()
            .or_else(|| self.store.mark(p))
    }

    /// Partition `p`'s task, created by its first record.
    fn task(&mut self, p: i32) -> &mut Task {
        self.tasks.entry(p).or_default()
    }

    /// The shared read positions (for the rebalance callback).
    pub fn positions(&self) -> Positions {
        Arc::clone(&self.positions)
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Where to resume a partition: the in-memory position (store plus batch in hand),
    /// else the store's offset, else `None` (from the beginning).
    pub fn resume_offset(
        store: &Store,
        positions: &Positions,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, StoreError> {
        let known = positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(topic.to_owned(), partition))
            .copied();
        match known {
            Some(o) => Ok(Some(o)),
            None => store.offset(topic, partition),
        }
    }

    /// Users in the hot set now.
    pub fn hot_users(&self) -> usize {
        self.hot.as_ref().map_or(0, HotSet::len)
    }

    /// Records folded since the last commit.
    pub fn pending_records(&self) -> u64 {
        self.stats.records
    }

    /// Folds one record into the batch in hand.
    ///
    /// Returns `false` (and does nothing) for a record below the partition's position:
    /// it was folded before, and folding it again would count it twice.
    pub fn process(&mut self, rec: Record<'_>) -> Result<bool, StoreError> {
        // One key per record, used for the look-up and both inserts below.
        let pos_key = (rec.topic.to_owned(), rec.partition);
        let known = self
            .positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&pos_key)
            .copied();
        let position = match known {
            Some(o) => Some(o),
            None => self.store.offset(rec.topic, rec.partition)?,
        };
        if position.is_some_and(|p| rec.offset < p) {
            return Ok(false);
        }
        match self.fold(rec) {
            Ok(()) => {}
            Err(Folded::Rejected(reason)) => {
                telemetry::receipt_rejected(reason, rec.partition, rec.offset);
                *self.stats.rejected.entry(reason).or_default() += 1;
                self.task(rec.partition).dead_letters.push(DeadLetter {
                    key: rec.key.map(<[u8]>::to_vec),
                    payload: rec.payload.map(<[u8]>::to_vec),
                    reason,
                    topic: rec.topic.to_owned(),
                    partition: rec.partition,
                    offset: rec.offset,
                });
            }
            Err(Folded::Store(e)) => return Err(e),
        }
        self.stats.records += 1;
        let next = rec.offset + 1;
        self.positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pos_key.clone(), next);
        self.task(rec.partition)
            .pending
            .offsets
            .insert(pos_key, next);
        Ok(true)
    }

    /// A user's newest state outside the batch in hand: the batch being written's (not in
    /// the store yet, so the newest), the hot set's, or the store's.
    ///
    /// A hot user is moved out of the hot set, not copied: the batch in hand now holds its
    /// newest state, and the commit that stores it puts it back. A batch dropped, or a
    /// receipt that leaves the user unchanged, only costs a store read the next time (the
    /// hot set holds committed states, so a user missing from it is read from the store).
    fn load(&mut self, key: &(i32, String)) -> Result<Option<UserState>, StoreError> {
        if let Some(u) = self
            .landing
            .as_ref()
            .and_then(|l| l.sets.get(&key.0)?.users.get(key))
        {
            return Ok(Some(u.clone()));
        }
        if let Some((_, u)) = self.hot.as_mut().and_then(|h| h.remove(key)) {
            return Ok(Some(u));
        }
        self.store.user(key.0, &key.1)
    }

    /// A receipt issued at `issued_at` was applied in partition `p`: the partition's
    /// event-time mark moves up to it (to its full precision), but never more than the
    /// clock skew allowed past the record's Kafka timestamp (a POS clock set far ahead
    /// cannot make every later receipt `too_old`).
    fn advance_mark(&mut self, p: i32, issued_at: domain::Timestamp, timestamp_ms: Option<i64>) {
        let at = match timestamp_ms {
            Some(ms) => issued_at.min(domain::Timestamp {
                secs: ms.div_euclid(1000).saturating_add(MAX_CLOCK_SKEW_SECS),
                nanos: ms.rem_euclid(1000) as u32 * 1_000_000,
            }),
            None => issued_at,
        };
        if self.mark(p).is_none_or(|m| at > m) {
            self.task(p).pending.marks.insert(p, at);
        }
    }

    fn fold(&mut self, rec: Record<'_>) -> Result<(), Folded> {
        let receipt = codec::decode_receipt(rec.key, rec.payload, &self.rules)?;
        telemetry::event_age(age_seconds(receipt.issued_at));
        let p = rec.partition;
        // Event time decides, never the wall clock, so that a replay decides the same;
        // and entries past the cutoff count as absent whether or not compaction has
        // removed them yet.
        let cutoff = self.cutoff(p);
        if cutoff.is_some_and(|c| receipt.issued_at.secs < c) {
            return Err(Reject::TooOld.into());
        }
        let live = |e: Option<domain::LedgerEntry>| {
            e.filter(|e| cutoff.is_none_or(|c| e.issued_at.secs >= c))
        };
        let user_key = (p, receipt.user_id.clone());
        let existing = live(self.ledger(p, &receipt.user_id, &receipt.receipt_id)?);
        let original = match receipt.kind.refund_of() {
            Some(refund_of) => live(self.ledger(p, &receipt.user_id, refund_of)?),
            None => None,
        };
        let source = domain::Source {
            partition: p,
            offset: rec.offset,
        };
        if self.rules.game.has_timers() {
            self.ensure_timers(p)?;
        }
        // Apply in place when the user is already in the batch; otherwise load it and
        // keep it only if the receipt changed it, so that rejects publish nothing.
        let mut loaded = None;
        let mut previous = None;
        if !self
            .tasks
            .get(&p)
            .is_some_and(|t| t.pending.users.contains_key(&user_key))
        {
            let stored = self.load(&user_key)?;
            previous = Some(stored.as_ref().map(crate::store::indexed));
            loaded = Some(stored.unwrap_or_else(|| UserState::new(&receipt.user_id)));
        }
        let fresh = loaded.is_some();
        let timed = self.timers.contains_key(&p);
        let mark_before = self.mark(p);
        let task = self.tasks.entry(p).or_default();
        let state = match &mut loaded {
            Some(s) => s,
            None => task
                .pending
                .users
                .get_mut(&user_key)
                .ok_or(StoreError::Poisoned)?,
        };
        // Step (1) of the time rules: the user's own timers due at or before its record
        // fire first, whatever is then decided about the record.
        let mut early = Vec::new();
        let fired = if timed {
            timers::fire_until(state, &self.rules, receipt.issued_at, &mut early)
        } else {
            timers::Fired::default()
        };
        // A state loaded for this receipt is dropped if it is rejected (and no timer
        // moved it): no copy to roll back to is needed.
        let apply = if fresh && !fired.any {
            domain::apply_discarding
        } else {
            domain::apply
        };
        let result = apply(
            state,
            existing.as_ref(),
            original.as_ref(),
            &receipt,
            source,
            &self.rules,
        );
        let applied = matches!(result, Ok(Effect::Applied { .. }));
        let mut late = Vec::new();
        if fired.changed && !applied {
            // The record changed nothing itself, but its user's timers did: that is a new
            // version, from this record.
            state.version = state.version.saturating_add(1);
            state.source = Some(source);
        }
        if applied && timed {
            let at = mark_before.map_or(receipt.issued_at, |m| m.max(receipt.issued_at));
            timers::qualify(state, &self.rules, at, &mut late);
        }
        let next = timed
            .then(|| timers::next_timer(state, &self.rules))
            .flatten();
        // A state a timer moved is kept even when the record is rejected: a review that
        // kept the tier moved its next review, and a replay must find it moved.
        if applied || fired.any {
            let task = self.task(p);
            if let (Some(state), Some(previous)) = (loaded, previous) {
                task.pending
                    .previous_scores
                    .insert(user_key.clone(), previous);
                task.pending.users.insert(user_key, state);
            }
            for event in &early {
                self.stats.count(event);
            }
            let task = self.task(p);
            task.events.append(&mut early);
            if let (Some(next), Some(q)) = (next, self.timers.get_mut(&p)) {
                q.insert((next, receipt.user_id.clone()));
            }
        }
        let outcome = match result {
            Ok(Effect::Duplicate) => {
                self.stats.duplicates += 1;
                Ok(())
            }
            Ok(Effect::Applied {
                entry,
                original: updated,
                mut events,
                coins_delta,
                attributed: _,
            }) => {
                events.append(&mut late);
                self.stats.applied_one(&entry, coins_delta);
                if self.tally_stores {
                    self.stats.tally_store(&entry, coins_delta);
                }
                for event in &events {
                    self.stats.count(event);
                }
                self.advance_mark(p, receipt.issued_at, rec.timestamp_ms);
                let task = self.task(p);
                if let (Some(updated), Some(refund_of)) = (updated, receipt.kind.refund_of()) {
                    task.pending
                        .ledger
                        .insert((p, receipt.user_id.clone(), refund_of.to_owned()), updated);
                }
                task.pending.ledger.insert(
                    (p, receipt.user_id.clone(), receipt.receipt_id.clone()),
                    entry,
                );
                task.events.extend(events);
                Ok(())
            }
            Err(reject) => Err(Folded::Rejected(reject)),
        };
        if applied || fired.changed {
            if timed {
                self.after_record(p, source, &receipt.user_id, applied)?;
            } else {
                self.task(p).unsent.insert(receipt.user_id.clone());
            }
        }
        outcome
    }

    /// Partition `p`'s timers, read from its users (stored, being written and in hand)
    /// the first time a record of it needs them.
    fn ensure_timers(&mut self, p: i32) -> Result<(), StoreError> {
        if self.timers.contains_key(&p) {
            return Ok(());
        }
        let mut queue = BTreeSet::new();
        for user in self.store.users_of(p) {
            let user = user?;
            if let Some(t) = timers::next_timer(&user, &self.rules) {
                queue.insert((t, user.user_id));
            }
        }
        // Later states than the store's: their timers are the ones that count. The
        // store's may stay queued too; a stale entry is found out when it comes up.
        let landing = self.landing.as_ref().and_then(|l| l.sets.get(&p));
        let pending = self.tasks.get(&p).map(|t| &t.pending);
        for set in landing.into_iter().chain(pending) {
            for ((_, id), user) in &set.users {
                if let Some(t) = timers::next_timer(user, &self.rules) {
                    queue.insert((t, id.clone()));
                }
            }
        }
        self.timers.insert(p, queue);
        Ok(())
    }

    /// A user's next timer, read where its newest state is (the batch in hand, the batch
    /// being written, the hot set, the store) without moving it.
    fn next_timer_of(&self, key: &(i32, String)) -> Result<Option<domain::Timestamp>, StoreError> {
        let next = |u: &UserState| timers::next_timer(u, &self.rules);
        if let Some(u) = self
            .tasks
            .get(&key.0)
            .and_then(|t| t.pending.users.get(key))
        {
            return Ok(next(u));
        }
        if let Some(u) = self
            .landing
            .as_ref()
            .and_then(|l| l.sets.get(&key.0)?.users.get(key))
        {
            return Ok(next(u));
        }
        if let Some(u) = self.hot.as_ref().and_then(|h| h.peek(key)) {
            return Ok(next(u));
        }
        Ok(self.store.user(key.0, &key.1)?.as_ref().and_then(next))
    }

    /// Loads a user into the batch in hand of its partition, if it is not there.
    fn hold(&mut self, key: &(i32, String)) -> Result<(), StoreError> {
        let held = self
            .tasks
            .get(&key.0)
            .is_some_and(|t| t.pending.users.contains_key(key));
        if !held {
            let stored = self.load(key)?;
            let previous = stored.as_ref().map(crate::store::indexed);
            let state = stored.unwrap_or_else(|| UserState::new(&key.1));
            let task = self.task(key.0);
            task.pending.previous_scores.insert(key.clone(), previous);
            task.pending.users.insert(key.clone(), state);
        }
        Ok(())
    }

    /// The end of a record of `own` that changed it (`applied`, or only by its timers):
    /// when it was applied, step (3) of the time rules ([`Self::fire_due`]); then every
    /// user the record changed gets its figure at the partition's mark and its next
    /// expiry, and is published.
    fn after_record(
        &mut self,
        p: i32,
        source: domain::Source,
        own: &str,
        applied: bool,
    ) -> Result<(), StoreError> {
        let mark = self.mark(p).unwrap_or(domain::Timestamp {
            secs: i64::MIN,
            nanos: 0,
        });
        let mut changed = if applied {
            self.fire_due(p, mark, source, own)?
        } else {
            BTreeSet::new()
        };
        changed.insert(own.to_owned());
        let rules = &self.rules;
        let task = self.tasks.entry(p).or_default();
        for user in changed {
            let key = (p, user);
            if let Some(state) = task.pending.users.get_mut(&key) {
                timers::refresh(state, rules, mark);
            }
            task.unsent.insert(key.1);
        }
        Ok(())
    }

    /// Step (3) of the time rules: every timer of partition `p` due at or before `mark`
    /// fires, in (instant, user_id) order; each user a timer changed, other than `own`
    /// (whose record gave it its new version), gets one new version from this record
    /// (`source`). Returns the users changed.
    fn fire_due(
        &mut self,
        p: i32,
        mark: domain::Timestamp,
        source: domain::Source,
        own: &str,
    ) -> Result<BTreeSet<String>, StoreError> {
        let mut changed = BTreeSet::new();
        while let Some((at, user)) = self.timers.get_mut(&p).and_then(|q| {
            let due = q.first().is_some_and(|(t, _)| *t <= mark);
            due.then(|| q.pop_first()).flatten()
        }) {
            let key = (p, user);
            // Read first, held only if a timer is due: a stale entry (the user's timer
            // moved since) costs no write.
            match self.next_timer_of(&key)? {
                Some(due) if due == at => {}
                Some(due) => {
                    if let Some(q) = self.timers.get_mut(&p) {
                        q.insert((due, key.1));
                    }
                    continue;
                }
                None => continue,
            }
            self.hold(&key)?;
            let state = self
                .tasks
                .get_mut(&p)
                .and_then(|t| t.pending.users.get_mut(&key))
                .ok_or(StoreError::Poisoned)?;
            let mut events = Vec::new();
            if timers::fire_at(state, &self.rules, at, &mut events)
                && key.1 != own
                && changed.insert(key.1.clone())
            {
                state.version = state.version.saturating_add(1);
                state.source = Some(source);
            }
            let next = timers::next_timer(state, &self.rules);
            for event in &events {
                self.stats.count(event);
            }
            self.task(p).events.append(&mut events);
            if let (Some(next), Some(q)) = (next, self.timers.get_mut(&p)) {
                q.insert((next, key.1));
            }
        }
        Ok(changed)
    }

    fn ledger(
        &self,
        p: i32,
        user_id: &str,
        receipt_id: &str,
    ) -> Result<Option<domain::LedgerEntry>, StoreError> {
        let key = (p, user_id.to_owned(), receipt_id.to_owned());
        let task = self.tasks.get(&p);
        let in_hand = task.and_then(|t| t.pending.ledger.get(&key));
        let landing = || self.landing.as_ref()?.sets.get(&p)?.ledger.get(&key);
        match in_hand.or_else(landing) {
            Some(e) => Ok(Some(e.clone())),
            None => self.store.ledger_entry(p, user_id, receipt_id),
        }
    }

    /// Publishes every batch in hand, waits for delivery, then writes them to the store
    /// atomically and durably, one batch per write. On error every batch in hand is
    /// dropped (see [`Self::reset`]). Returns the counts of what was written.
    /// A batch still being written by [`Self::commit_behind`] is waited for first: when
    /// this returns, the store holds everything committed.
    pub fn commit(&mut self, sink: &mut dyn Sink) -> Result<BatchStats, CommitError> {
        self.commit_with(sink, false)
    }

    /// The commit between batches of a running loop: waits for the last batch's store
    /// write, then publishes the batch in hand, waits for delivery and makes its outputs
    /// final as [`Self::commit`] does, and hands its store write to a thread of its own,
    /// so that the next batch folds on one core while this one is written on the other.
    /// The store still never runs ahead of final outputs, and the next batch reads this
    /// one's users, ledger entries and marks from it until it is stored. Returns the counts
    /// of the batches stored since the last commit that returned (the one before this, and
    /// any stored by a commit that failed later on), so that what is reported committed is
    /// in the store.
    pub fn commit_behind(&mut self, sink: &mut dyn Sink) -> Result<BatchStats, CommitError> {
        self.commit_with(sink, true)
    }

    /// [`Self::commit`], or (`behind`) [`Self::commit_behind`].
    fn commit_with(
        &mut self,
        sink: &mut dyn Sink,
        behind: bool,
    ) -> Result<BatchStats, CommitError> {
        self.finish_write()?;
        self.send(sink)?;
        self.settle(sink, behind)?;
        Ok(std::mem::take(&mut self.unreported))
    }

    /// Waits for a store write running behind, if any: before anything else writes the
    /// store or reads its offsets (a rebalance's restore, a partition handed on). Once the
    /// batch is in the store, its counts join the unreported ones, for the next commit to
    /// return. A failed write is handled as in [`Self::settle`].
    pub fn finish_write(&mut self) -> Result<(), CommitError> {
        let Some(Landing {
            sets,
            stats,
            writer,
        }) = self.landing.take()
        else {
            return Ok(());
        };
        let written = writer.join().unwrap_or(Err(StoreError::WriterPanicked));
        // The writer has ended, so its handle on the sets is gone.
        let sets = Arc::try_unwrap(sets).unwrap_or_else(|shared| (*shared).clone());
        self.stored(sets, stats, written)
    }

    /// Whether a store write running behind the fold is still running.
    pub fn writing(&self) -> bool {
        self.landing
            .as_ref()
            .is_some_and(|l| !l.writer.is_finished())
    }

    /// Whether the batch in hand has outputs that were not sent yet.
    pub fn has_unsent(&self) -> bool {
        self.tasks.values().any(Task::has_unsent)
    }

    /// Sends the outputs of the batch in hand that were not sent yet, without waiting for
    /// their delivery: the current state of every user changed since the last send, and
    /// the new level-ups and dead letters. The batch stays in hand; the next commit waits
    /// for these deliveries before it stores anything, so sending early never lets the
    /// store run ahead of its outputs. A user changed again later is sent again, and the
    /// last projection of a key is always its newest state. On error the batches in hand
    /// are dropped, as for a failed commit.
    pub fn send_changes(&mut self, sink: &mut dyn Sink) -> Result<(), CommitError> {
        if !self.has_unsent() {
            return Ok(());
        }
        let mut outputs = Outputs::default();
        // Partition by partition, each in a stable order, so that replays of the same
        // batch publish identically.
        for (&p, task) in &mut self.tasks {
            let Task {
                pending,
                unsent,
                events,
                dead_letters,
                ..
            } = task;
            let users = &pending.users;
            let first = outputs.projections.len();
            outputs.projections.extend(
                unsent
                    .drain()
                    .filter_map(|id| users.get(&(p, id)).map(Cow::Borrowed)),
            );
            outputs.projections[first..].sort_by(|a, b| a.user_id.cmp(&b.user_id));
            outputs.events.append(events);
            outputs.dead_letters.append(dead_letters);
        }
        let sent = sink.send(&outputs);
        let published = outputs.projections.len() as u64;
        drop(outputs);
        if let Err(e) = sent {
            self.reset();
            return Err(CommitError::Publish(e));
        }
        self.stats.users_published += published;
        Ok(())
    }

    /// Adds to the batch in hand the deletion of the ledger entries of its partitions
    /// that left the dedup window (at most [`EXPIRE_PER_BATCH`] per partition; the rest
    /// go with the next batches): from the store, and by tombstones from the changelog.
    fn expire_ledger(&mut self) -> Result<(), StoreError> {
        let partitions: Vec<i32> = self
            .tasks
            .iter()
            .filter(|(_, t)| !t.pending.offsets.is_empty())
            .map(|(p, _)| *p)
            .collect();
        for p in partitions {
            if let Some(cutoff) = self.cutoff(p) {
                self.expire_partition(p, cutoff)?;
            }
        }
        Ok(())
    }

    /// [`Self::expire_ledger`] of partition `p`, whose cutoff is `cutoff`.
    fn expire_partition(&mut self, p: i32, cutoff: i64) -> Result<(), StoreError> {
        let due = self.store.ledger_due(p, cutoff, EXPIRE_PER_BATCH)?;
        for (user_id, receipt_id, _) in due {
            let key = (p, user_id, receipt_id);
            // A receipt id used again after its first entry left the window holds a newer
            // entry, in this batch or the one being written: it stays.
            let newer = |e: &domain::LedgerEntry| e.issued_at.secs >= cutoff;
            let landing = self
                .landing
                .as_ref()
                .and_then(|l| l.sets.get(&p)?.ledger.get(&key));
            let task = self.tasks.entry(p).or_default();
            if task.pending.ledger.get(&key).is_some_and(newer) || landing.is_some_and(newer) {
                continue;
            }
            task.pending.ledger.remove(&key);
            task.pending.ledger_expired.insert(key);
        }
        let task = self.task(p);
        // Entries of this very batch that a later receipt of it moved out of the window:
        // never stored, so the index cannot list them.
        let late: Vec<_> = task
            .pending
            .ledger
            .iter()
            .filter(|(_, e)| e.issued_at.secs < cutoff)
            .map(|(k, _)| k.clone())
            .collect();
        for key in late {
            task.pending.ledger.remove(&key);
            task.pending.ledger_expired.insert(key);
        }
        Ok(())
    }

    /// Sends the batch in hand's unsent outputs and makes it the batch in flight.
    fn send(&mut self, sink: &mut dyn Sink) -> Result<(), CommitError> {
        debug_assert!(self.inflight_stats.is_none());
        self.send_changes(sink)?;
        if self.tasks.values().all(|t| t.pending.is_empty()) {
            return Ok(());
        }
        if let Err(e) = self.expire_ledger() {
            self.reset();
            return Err(CommitError::Store(e));
        }
        if sink.wants_changelog() {
            let outputs = Outputs {
                changelog: self.changelog_of_pending(),
                ..Outputs::default()
            };
            let sent = sink.send(&outputs);
            drop(outputs);
            if let Err(e) = sent {
                self.reset();
                return Err(CommitError::Publish(e));
            }
        }
        crash_point(CrashPoint::Sent);
        self.inflight_stats = Some(std::mem::take(&mut self.stats));
        for task in self.tasks.values_mut() {
            task.inflight = Some(std::mem::take(&mut task.pending));
        }
        Ok(())
    }

    /// The batch in hand as changelog records: users, ledger entries and tombstones of
    /// expired ledger entries in key order, then each partition's position, last, so that a restore that reads a position has
    /// read everything it stands for.
    fn changelog_of_pending(&self) -> Vec<(i32, changelog::EntryRef<'_>)> {
        let mut out = Vec::new();
        for (&p, task) in &self.tasks {
            let pending = &task.pending;
            let mut users: Vec<_> = pending.users.iter().collect();
            users.sort_by(|a, b| a.0.cmp(b.0));
            let mut ledger: Vec<_> = pending.ledger.iter().collect();
            ledger.sort_by(|a, b| a.0.cmp(b.0));
            let mut expired: Vec<_> = pending.ledger_expired.iter().collect();
            expired.sort();
            out.reserve(users.len() + ledger.len() + expired.len() + pending.offsets.len());
            out.extend(
                users
                    .into_iter()
                    .map(|(_, u)| (p, changelog::EntryRef::User(u))),
            );
            out.extend(ledger.into_iter().map(|((_, user_id, receipt_id), e)| {
                (
                    p,
                    changelog::EntryRef::Ledger {
                        user_id,
                        receipt_id,
                        entry: e,
                    },
                )
            }));
            out.extend(expired.into_iter().map(|(_, user_id, receipt_id)| {
                (
                    p,
                    changelog::EntryRef::LedgerExpired {
                        user_id,
                        receipt_id,
                    },
                )
            }));
            let mark = self.mark(p);
            for ((topic, _), next) in &pending.offsets {
                out.push((
                    p,
                    changelog::EntryRef::Meta(changelog::Meta {
                        topic: topic.clone(),
                        next_offset: *next,
                        mark: mark.map(|m| m.secs),
                        mark_nanos: mark.map_or(0, |m| m.nanos),
                    }),
                ));
            }
        }
        out
    }

    /// Waits for the batch in flight's outputs, makes them final ([`Sink::finish`]), then
    /// writes the batch to the store, or (`behind`) hands the write to a thread of its own
    /// ([`Self::finish_write`] waits for it).
    fn settle(&mut self, sink: &mut dyn Sink, behind: bool) -> Result<(), CommitError> {
        let Some(stats) = self.inflight_stats.take() else {
            return Ok(());
        };
        // One atomic write for every partition's batch: one transaction holds them all.
        let mut flights: Flights = self
            .tasks
            .iter_mut()
            .filter_map(|(&p, task)| Some((p, task.inflight.take()?)))
            .collect();
        let offsets: BTreeMap<(String, i32), i64> = flights
            .values()
            .flat_map(|f| f.offsets.iter().map(|(k, &next)| (k.clone(), next)))
            .collect();
        match sink.finish(&offsets) {
            Ok(changelog) => {
                crash_point(CrashPoint::Committed);
                for (p, next) in changelog {
                    flights.entry(p).or_default().changelog.insert(p, next);
                }
            }
            Err(e) => {
                self.reset();
                return Err(CommitError::Publish(e));
            }
        }
        debug_assert!(self.landing.is_none());
        let write = |store: &Store, sets: &Flights| {
            store
                .prepare_all(sets.values())
                .and_then(|prepared| store.apply(prepared))
        };
        if !behind {
            let written = write(&self.store, &flights);
            return self.stored(flights, stats, written);
        }
        // The writes are gathered (they read the store, which holds the batch before:
        // every commit waits for the write before it) and applied on a thread of their
        // own, while the next batch folds and reads through the sets.
        let sets = Arc::new(flights);
        let shared = Arc::clone(&sets);
        let store = Arc::clone(&self.store);
        #[cfg(test)]
        let hold = Arc::clone(&self.hold_writes);
        let spawned = std::thread::Builder::new()
            .name("store-writer".to_owned())
            .spawn(move || {
                #[cfg(test)]
                drop(hold.lock());
                write(&store, &shared)
            });
        match spawned {
            Ok(writer) => {
                self.landing = Some(Landing {
                    sets,
                    stats,
                    writer,
                });
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "no thread for the store write; writing in line");
                // The closure that held the other handle was dropped with the error.
                let flights = Arc::try_unwrap(sets).unwrap_or_else(|shared| (*shared).clone());
                let written = write(&self.store, &flights);
                self.stored(flights, stats, written)
            }
        }
    }

    /// After the store write of `sets` (`written`): their users join the hot set, and
    /// their counts (with the offsets the store now holds) join the unreported ones.
    fn stored(
        &mut self,
        sets: Flights,
        mut stats: BatchStats,
        written: Result<(), StoreError>,
    ) -> Result<(), CommitError> {
        if let Err(e) = written {
            // A failed write may still have reached the store's memory (fjall applies a
            // batch, then fails to persist it): the hot set may be older than the store
            // now, and folding on from it would publish (and, with the changelog, keep) a
            // state that misses this batch. It is dropped; the store is read again.
            self.revoke();
            return Err(CommitError::Store(e));
        }
        crash_point(CrashPoint::Stored);
        for set in sets.into_values() {
            if let Some(hot) = &mut self.hot {
                for (k, u) in set.users {
                    hot.insert(k, u);
                }
            }
            stats.offsets.extend(set.offsets);
        }
        self.unreported.add_batch(stats);
        Ok(())
    }

    /// After `partitions` were revoked with nothing in hand (the batch was committed
    /// first): forgets their positions, expiry marks and hot users (another instance may
    /// change those users now). The partitions kept fold on from where they are.
    pub fn forget(&mut self, partitions: &[i32]) {
        debug_assert!(self.inflight_stats.is_none());
        debug_assert!(self.landing.is_none());
        self.tasks.retain(|p, _| !partitions.contains(p));
        self.timers.retain(|p, _| !partitions.contains(p));
        self.positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(_, p), _| !partitions.contains(p));
        if let Some(hot) = &mut self.hot {
            hot.retain(|(p, _), _| !partitions.contains(p));
        }
    }

    /// After a revocation: drops the batches in hand and the hot set (another instance may
    /// change those users now); positions fall back to the store's offsets.
    pub fn revoke(&mut self) {
        self.reset();
        if let Some(hot) = &mut self.hot {
            hot.clear();
        }
    }

    /// Drops the batch in hand; positions fall back to the store's offsets (a batch being
    /// written is waited for first, so that they are its offsets).
    pub fn reset(&mut self) {
        if let Err(e) = self.finish_write() {
            // The store refuses every write after a failed one: the next commit says so.
            tracing::error!(error = %e, "the store write of the last batch failed");
        }
        // A dropped batch's expiries did not happen, and a restore may bring entries
        // back: every task goes, expiry marks with it.
        self.tasks.clear();
        // Timers are read again from the store: the dropped batch's moves did not happen.
        self.timers.clear();
        self.stats = BatchStats::default();
        self.inflight_stats = None;
        self.positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// A point of a commit where a test may kill the process (`MALLQUEST_CRASH_AT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CrashPoint {
    /// Every output of the batch sent (its transaction open).
    Sent,
    /// Its transaction committed (outputs and offsets final), the store not written yet.
    Committed,
    /// The store written.
    Stored,
}

impl CrashPoint {
    fn name(self) -> &'static str {
        match self {
            CrashPoint::Sent => "sent",
            CrashPoint::Committed => "committed",
            CrashPoint::Stored => "stored",
        }
    }
}

/// The test hook of the crash tests (tests/kafka_e2e.rs): with `MALLQUEST_CRASH_AT=
/// <point>:<n>` in the environment the process aborts, as a SIGKILL would end it (no
/// drop, no flush, no leaving the group), the `n`-th time a commit reaches `point`
/// (`sent`, `committed` or `stored`). Unset, it costs one relaxed load per commit.
fn crash_point(point: CrashPoint) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static AT: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let at = AT.get_or_init(|| {
        let v = std::env::var("MALLQUEST_CRASH_AT").ok()?;
        let (name, n) = v.split_once(':')?;
        Some((name.to_owned(), n.parse().ok()?))
    });
    if let Some((name, n)) = at {
        if name == point.name() && SEEN.fetch_add(1, Ordering::Relaxed) + 1 == *n {
            eprintln!("MALLQUEST_CRASH_AT={name}:{n}: aborting");
            std::process::abort();
        }
    }
}

impl Drop for Processor {
    /// A batch being written is final on the sink: it is written before the processor
    /// goes.
    fn drop(&mut self) {
        if let Err(e) = self.finish_write() {
            tracing::error!(error = %e, "the store write of the last batch failed");
        }
    }
}

/// Seconds from `issued_at` to now (negative for clocks ahead of ours).
fn age_seconds(issued_at: domain::Timestamp) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now.as_secs() as i64 - issued_at.secs) as f64
        + (f64::from(now.subsec_nanos()) - f64::from(issued_at.nanos)) / 1e9
}

enum Folded {
    Rejected(Reject),
    Store(StoreError),
}

impl From<Reject> for Folded {
    fn from(r: Reject) -> Self {
        Folded::Rejected(r)
    }
}

impl From<StoreError> for Folded {
    fn from(e: StoreError) -> Self {
        Folded::Store(e)
    }
}

/// A sink that keeps what it is given: the demo's output, and the tests'.
#[derive(Debug, Default)]
pub struct MemorySink {
    /// Last published projection per user.
    pub projections: BTreeMap<String, UserState>,
    /// Every level-up published.
    pub level_ups: Vec<LevelUp>,
    /// Every event published (level-ups included), in order.
    pub events: Vec<Event>,
    /// Every dead letter published.
    pub dead_letters: Vec<DeadLetter>,
    /// Keep only counts, not the dead letters and level-ups themselves (bounded memory).
    pub counts_only: bool,
    /// Projections published, counted.
    pub projections_published: u64,
    /// Keep the changelog records too (in [`Self::changelog`]).
    pub keep_changelog: bool,
    /// Every changelog record sent, when `keep_changelog` is set.
    pub changelog: Vec<(i32, changelog::Entry)>,
}

impl Sink for MemorySink {
    fn wait(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    fn wants_changelog(&self) -> bool {
        self.keep_changelog
    }

    fn send(&mut self, outputs: &Outputs<'_>) -> anyhow::Result<()> {
        self.projections_published += outputs.projections.len() as u64;
        self.changelog
            .extend(outputs.changelog.iter().map(|(p, e)| (*p, e.to_entry())));
        if self.counts_only {
            return Ok(());
        }
        for p in &outputs.projections {
            self.projections
                .insert(p.user_id.clone(), p.as_ref().clone());
        }
        self.events.extend(outputs.events.iter().cloned());
        self.level_ups
            .extend(outputs.events.iter().filter_map(|e| match e {
                Event::LevelUp(l) => Some(l.clone()),
                _ => None,
            }));
        self.dead_letters
            .extend(outputs.dead_letters.iter().cloned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that counts sends and finishes, and fails the first `fail` finishes.
    #[derive(Default)]
    pub(super) struct Counting {
        pub(super) inner: MemorySink,
        pub(super) sends: u32,
        pub(super) finishes: u32,
        pub(super) fail: u32,
    }

    impl Sink for Counting {
        fn send(&mut self, outputs: &Outputs<'_>) -> anyhow::Result<()> {
            self.sends += 1;
            self.inner.send(outputs)
        }

        fn wait(&mut self) -> anyhow::Result<()> {
            Ok(())
        }

        fn finish(
            &mut self,
            _offsets: &BTreeMap<(String, i32), i64>,
        ) -> anyhow::Result<BTreeMap<i32, i64>> {
            self.finishes += 1;
            if self.fail > 0 {
                self.fail -= 1;
                anyhow::bail!("broker gone");
            }
            Ok(BTreeMap::new())
        }
    }

    fn receipt(n: u32, user: &str) -> Vec<u8> {
        format!(
            r#"{{"receipt_id":"r-{n}","user_id":"{user}","store_id":"s-1","amount":"10.00","issued_at":"2026-11-18T11:00:{:02}Z"}}"#,
            n % 60
        )
        .into_bytes()
    }

    fn fold(processor: &mut Processor, partition: i32, offset: i64, n: u32, user: &str) {
        let payload = receipt(n, user);
        let folded = processor.process(Record {
            topic: "receipts",
            partition,
            offset,
            key: Some(user.as_bytes()),
            payload: Some(&payload),
            timestamp_ms: None,
        });
        assert!(folded.unwrap());
    }

    /// The store keys written so far, by keyspace.
    fn writes(store: &Store) -> BTreeMap<String, u64> {
        store.writes_by_keyspace().into_iter().collect()
    }

    /// `after` less `before`, keyspace by keyspace (those not written left out).
    fn written_since(
        before: &BTreeMap<String, u64>,
        after: &BTreeMap<String, u64>,
    ) -> BTreeMap<String, u64> {
        after
            .iter()
            .map(|(k, n)| (k.clone(), n - before.get(k).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    // What a purchase costs the store, key by key: the engine's cost is about 1.5 us of CPU
    // per key written (docs/benchmarks-history.md, "What the store alone can do"), so a layout
    // change that writes more keys has to show here. A batch writes each changed user's value,
    // one ledger segment per partition (however many receipts it holds), and its mark and
    // offset; the boards are in memory.
    #[test]
    fn a_purchase_writes_the_keys_its_layout_says_and_no_more() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut sink = MemorySink::default();
        let mut p = Processor::new(Arc::clone(&store), Rules::default());
        fold(&mut p, 0, 0, 1, "u-a");
        p.commit(&mut sink).unwrap();
        let first = writes(&store);
        fold(&mut p, 0, 1, 2, "u-a");
        p.commit(&mut sink).unwrap();
        let second = written_since(&first, &writes(&store));
        let expect = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
            pairs.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
        };
        assert_eq!(
            first,
            expect(&[
                ("users", 1),
                ("ledger_log", 1),
                ("marks", 1),
                ("offsets", 1),
            ])
        );
        assert_eq!(
            second,
            expect(&[
                ("users", 1),
                ("ledger_log", 1),
                ("marks", 1),
                ("offsets", 1),
            ])
        );
        assert_eq!(store.writes(), 4 + 4);
    }

    // A revoked partition's task goes whole: a user it had in the hot set is read from the
    // store again (where the partition's next owner, or a restore, may have put a newer
    // state), while the partitions kept fold on from their own tasks.
    #[test]
    fn a_revoked_partitions_task_is_dropped_and_the_kept_ones_fold_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut sink = MemorySink::default();
        let mut mine = Processor::new(Arc::clone(&store), Rules::default());
        fold(&mut mine, 0, 0, 1, "u-a");
        fold(&mut mine, 1, 0, 2, "u-b");
        mine.commit(&mut sink).unwrap();

        // Partition 1 moves away; its new owner folds two more receipts of u-b, and the
        // state comes back to this store (as a restore from the changelog brings it).
        let mut other = Processor::new(Arc::clone(&store), Rules::default());
        fold(&mut other, 1, 1, 3, "u-b");
        fold(&mut other, 1, 2, 4, "u-b");
        other.commit(&mut sink).unwrap();
        mine.forget(&[1]);

        fold(&mut mine, 1, 3, 5, "u-b");
        fold(&mut mine, 0, 1, 6, "u-a");
        mine.commit(&mut sink).unwrap();
        let b = store.user(1, "u-b").unwrap().unwrap();
        assert_eq!(
            b.receipt_count, 4,
            "folded on a stale hot entry of a revoked partition"
        );
        let a = store.user(0, "u-a").unwrap().unwrap();
        assert_eq!(a.receipt_count, 2);
        assert_eq!(store.offset("receipts", 0).unwrap(), Some(2));
        assert_eq!(store.offset("receipts", 1).unwrap(), Some(4));
    }

    // While a batch's store write runs behind, the next batch folds on it: its users,
    // ledger entries and positions are read from the batch being written, not from the
    // store, which does not hold it yet.
    #[test]
    fn the_next_batch_folds_on_a_batch_whose_store_write_is_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut sink = MemorySink::default();
        let mut processor = Processor::new(Arc::clone(&store), Rules::default());
        fold(&mut processor, 0, 0, 1, "u-a");
        fold(&mut processor, 0, 1, 2, "u-a");
        let hold = Arc::clone(&processor.hold_writes);
        let held = hold.lock().unwrap();
        let stored = processor.commit_behind(&mut sink).unwrap();
        assert_eq!(stored.records, 0, "nothing was stored before this batch");
        assert!(
            store.user(0, "u-a").unwrap().is_none(),
            "the write was held"
        );
        assert_eq!(sink.projections.len(), 1, "outputs go before the store");

        fold(&mut processor, 0, 2, 3, "u-a");
        fold(&mut processor, 0, 3, 1, "u-a"); // r-1 again: a duplicate
        drop(held);
        let stored = processor.commit_behind(&mut sink).unwrap();
        assert_eq!(stored.records, 2, "the counts of the batch stored");
        assert_eq!(stored.offsets.get(&("receipts".to_owned(), 0)), Some(&2));
        let last = processor.commit(&mut sink).unwrap();
        assert_eq!(last.records, 2);
        assert_eq!(
            last.duplicates, 1,
            "r-1 was seen in the batch being written"
        );
        let a = store.user(0, "u-a").unwrap().unwrap();
        assert_eq!(a.receipt_count, 3, "folded on the batch being written");
        assert_eq!(store.offset("receipts", 0).unwrap(), Some(4));
    }

    // A commit that lands the batch before it and then fails still leaves that batch's
    // counts to be reported: the loop's metrics and the offsets the API says it reflects
    // count every stored record once.
    #[test]
    fn a_batch_stored_by_a_commit_that_then_failed_is_reported_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut sink = Counting::default();
        let mut processor = Processor::new(Arc::clone(&store), Rules::default());
        fold(&mut processor, 0, 0, 1, "u-a");
        assert_eq!(processor.commit_behind(&mut sink).unwrap().records, 0);
        fold(&mut processor, 0, 1, 2, "u-a");
        sink.fail = 1;
        assert!(processor.commit_behind(&mut sink).is_err());
        assert_eq!(store.offset("receipts", 0).unwrap(), Some(1));

        fold(&mut processor, 0, 1, 2, "u-a"); // replayed from the store's offset
        let stats = processor.commit(&mut sink).unwrap();
        assert_eq!(stats.records, 2, "the first batch's record is reported too");
        assert_eq!(stats.offsets.get(&("receipts".to_owned(), 0)), Some(&2));
        assert_eq!(store.user(0, "u-a").unwrap().unwrap().receipt_count, 2);
    }

    #[test]
    fn a_batch_is_committed_when_full_or_when_its_interval_is_over() {
        let hour = Cadence::new(Duration::from_secs(3600), DEFAULT_MAX_BATCH_RECORDS);
        assert!(!hour.commit_due(0));
        assert!(!hour.commit_due(DEFAULT_MAX_BATCH_RECORDS - 1));
        assert!(hour.commit_due(DEFAULT_MAX_BATCH_RECORDS));
        let small = Cadence::new(Duration::from_secs(3600), 20_000);
        assert!(!small.commit_due(19_999));
        assert!(small.commit_due(20_000));
        assert!(!hour.send_due(), "early sends wait a quarter interval");
        let bound = Duration::from_millis(100);
        assert_eq!(hour.wait(false, bound), bound);
        assert_eq!(hour.wait(true, bound), bound);

        let mut now = Cadence::new(Duration::ZERO, DEFAULT_MAX_BATCH_RECORDS);
        assert!(now.commit_due(0));
        assert!(now.send_due());
        assert_eq!(now.wait(true, bound), Duration::ZERO);
        now.committed();
        assert!(now.commit_due(0), "a zero interval is always over");
    }
}

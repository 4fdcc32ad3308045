//! What a fold engine with its state in memory could do on this machine: the bound a
//! redesign of issue 13 would work towards, measured with the real fold, not estimated.
//!
//! The same simulated stream as `mallquest bench` (same seed, users, stores and mix, the
//! default config's rules, the same partitioner, generated on a thread of its own),
//! decoded and folded with the real rules (`domain::apply`, in place), but:
//! - users in a hash map per partition, never read from a store;
//! - the ledger (the duplicate check and refund look-ups) in a hash map, all of it kept
//!   (no dedup window, so its memory is more than an engine with the window would hold);
//! - every board (3 all-time, and 3 per kept day, week and month) an ordered set per
//!   partition, moved on every applied receipt whose score changed; periods beyond the
//!   latest `DEFAULT_PERIODS_KEPT` of a kind dropped whole;
//! - every `BATCH` receipts, the changed users and the new ledger entries, in the store's
//!   binary encoding, and the partitions' offsets appended to one log file and fsynced.
//!
//! It does not checkpoint the log, publish outputs, compute ranks or restore, and it
//! moves a user's board entries per receipt where the store moves them once per batch.
//! Board entries are (score, the user's number in its partition) by default: ties then
//! come in arrival order, and a page or a rank would have to sort a tie by id when read.
//! `--ids` keeps the store's order, (score, user id). `--no-boards` leaves the boards out:
//! the decode, the fold, the maps and the log.
//!
//! Prints receipts/s, CPU-seconds per million receipts (the generator's thread excluded),
//! peak RSS, and the heap per stored user at the end, ledger and boards included
//! (docs/benchmarks-history.md, "An engine with its state in memory").
//!
//! Usage: cargo run --release --example memory_ceiling -- RECEIPTS USERS [BATCH] [--ids | --no-boards]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::time::{Duration, Instant};

use mallquest::codec;
use mallquest::domain::{self, Effect, LedgerEntry, Period, PeriodScore, UserState};
use mallquest::partitioner::Partitioner;
use mallquest::sim::{Mix, SimEvent, Simulator};
use mallquest::store::{scores, value, Board, Scores};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const PARTITIONS: i32 = 4;

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// What orders users of one score on a board.
trait Tie: Ord + Clone {
    /// The tie key of `user`, numbering it in `numbers` if need be.
    fn of(numbers: &mut Map<String, u32>, user: &str) -> Self;
}

/// The user's number in its partition (in order of first appearance): comparisons of
/// two integers. A first run with ids cost 1.36 times the CPU (tied scores are common,
/// so the sets compared ids with `memcmp`).
impl Tie for u32 {
    fn of(numbers: &mut Map<String, u32>, user: &str) -> Self {
        if let Some(n) = numbers.get(user) {
            return *n;
        }
        let next = u32::try_from(numbers.len()).unwrap_or(u32::MAX);
        *numbers.entry(user.to_owned()).or_insert(next)
    }
}

/// The user id: the store's order.
impl Tie for String {
    fn of(_: &mut Map<String, u32>, user: &str) -> Self {
        user.to_owned()
    }
}

/// One board's order: highest score first, then the tie key.
type Order<T> = BTreeSet<(Reverse<i64>, T)>;

struct Partition<T> {
    users: Map<String, UserState>,
    ledger: Map<(String, String), LedgerEntry>,
    boards: Boards<T>,
    next_offset: i64,
    /// Changed since the last batch.
    dirty_users: Vec<String>,
    dirty_ledger: Vec<(String, String)>,
}

/// A partition's boards.
struct Boards<T> {
    numbers: Map<String, u32>,
    all_time: [Order<T>; 3],
    /// Kept periods of each kind, oldest first, each with its 3 boards.
    periods: [BTreeMap<String, [Order<T>; 3]>; 3],
}

impl<T> Default for Partition<T> {
    fn default() -> Self {
        Self {
            users: Map::default(),
            ledger: Map::default(),
            boards: Boards {
                numbers: Map::default(),
                all_time: Default::default(),
                periods: Default::default(),
            },
            next_offset: 0,
            dirty_users: Vec::new(),
            dirty_ledger: Vec::new(),
        }
    }
}

fn kind_index(kind: Period) -> usize {
    match kind {
        Period::Day => 0,
        Period::Week => 1,
        Period::Month => 2,
    }
}

impl<T: Tie> Boards<T> {
    /// Moves `user` on every board whose score changed from `before` (its all-time
    /// scores and period scores before the receipt) to `after`.
    fn reindex(&mut self, before: Option<(Scores, Vec<PeriodScore>)>, after: &UserState) {
        let user = T::of(&mut self.numbers, &after.user_id);
        let now = scores(after);
        for (b, score) in now.iter().enumerate() {
            let old = before.as_ref().map(|(w, _)| w[b]);
            if old != Some(*score) {
                if let Some(old) = old {
                    self.all_time[b].remove(&(Reverse(old), user.clone()));
                }
                self.all_time[b].insert((Reverse(*score), user.clone()));
            }
        }
        let kept = domain::game::DEFAULT_PERIODS_KEPT;
        for ps in &after.periods {
            let k = kind_index(ps.kind);
            let old = before
                .as_ref()
                .and_then(|(_, ps0)| ps0.iter().find(|o| o.kind == ps.kind && o.key == ps.key));
            let periods = &mut self.periods[k];
            if !periods.contains_key(&ps.key) {
                if periods.len() >= kept
                    && periods
                        .keys()
                        .next()
                        .is_some_and(|oldest| ps.key.as_str() < oldest.as_str())
                {
                    continue; // older than every kept period
                }
                periods.insert(ps.key.clone(), Default::default());
                while periods.len() > kept {
                    periods.pop_first();
                }
            }
            let Some(boards) = periods.get_mut(&ps.key) else {
                continue;
            };
            for (i, b) in Board::ALL.into_iter().enumerate() {
                let score = b.period_score(ps);
                let was = old.map(|o| b.period_score(o));
                if was != Some(score) {
                    if let Some(was) = was {
                        boards[i].remove(&(Reverse(was), user.clone()));
                    }
                    boards[i].insert((Reverse(score), user.clone()));
                }
            }
        }
    }
}

impl<T> Partition<T> {
    /// Appends the batch's changes to `log`: users and ledger entries in the store's
    /// binary encoding, each behind its key and a length.
    fn drain_into(&mut self, log: &mut Vec<u8>) {
        for user in self.dirty_users.drain(..) {
            if let Some(u) = self.users.get(&user) {
                let v = value::encode_user(u);
                log.extend_from_slice(&(user.len() as u32).to_le_bytes());
                log.extend_from_slice(user.as_bytes());
                log.extend_from_slice(&(v.len() as u32).to_le_bytes());
                log.extend_from_slice(&v);
            }
        }
        for key in self.dirty_ledger.drain(..) {
            if let Some(e) = self.ledger.get(&key) {
                let v = value::encode_ledger(e);
                log.extend_from_slice(&(key.1.len() as u32).to_le_bytes());
                log.extend_from_slice(key.1.as_bytes());
                log.extend_from_slice(&(v.len() as u32).to_le_bytes());
                log.extend_from_slice(&v);
            }
        }
        log.extend_from_slice(&self.next_offset.to_le_bytes());
    }
}

/// Which boards a run keeps.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Numbered,
    Ids,
    None,
}

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut mode = Mode::Numbered;
    args.retain(|a| match a.as_str() {
        "--ids" => {
            mode = Mode::Ids;
            false
        }
        "--no-boards" => {
            mode = Mode::None;
            false
        }
        _ => true,
    });
    let (receipts, users, batch) = match args.as_slice() {
        [r, u] => (r.parse::<u64>()?, u.parse::<u64>()?, 50_000),
        [r, u, b] => (r.parse::<u64>()?, u.parse::<u64>()?, b.parse::<u64>()?),
        _ => anyhow::bail!("usage: memory_ceiling RECEIPTS USERS [BATCH] [--ids | --no-boards]"),
    };
    anyhow::ensure!(batch >= 1, "BATCH must be at least 1");
    match mode {
        Mode::Ids => run::<String>(receipts, users, batch, mode),
        Mode::Numbered | Mode::None => run::<u32>(receipts, users, batch, mode),
    }
}

fn run<T: Tie>(receipts: u64, users: u64, batch: u64, mode: Mode) -> anyhow::Result<()> {
    // As `bench`: the default config's rules, 40 stores, seed 42, the plain stream.
    let rules = mallquest::config::Config::default().rules;
    let sim = Simulator::new(
        42,
        users,
        40,
        Mix {
            redemptions: 0,
            ..Mix::default()
        },
    );
    let (chunks, generator) = generate(sim, receipts);

    let dir = tempfile::tempdir()?;
    let mut file = std::fs::File::create(dir.path().join("log"))?;
    let mut parts: Vec<Partition<T>> = (0..PARTITIONS).map(|_| Partition::default()).collect();
    let (mut applied, mut duplicates, mut rejected, mut since_batch) = (0u64, 0u64, 0u64, 0u64);
    let mut log = Vec::new();
    let mut logged = 0u64;
    let started = Instant::now();
    let cpu_before = process_cpu();
    for chunk in chunks {
        for ev in chunk {
            since_batch += 1;
            if since_batch > batch {
                logged += commit(&mut parts, &mut log, &mut file)?;
                since_batch = 1;
            }
            let p = Partitioner::Fnv64.partition(ev.key.as_bytes(), PARTITIONS);
            let part = &mut parts[p as usize];
            let offset = part.next_offset;
            part.next_offset += 1;
            let receipt =
                match codec::decode_receipt(Some(ev.key.as_bytes()), Some(&ev.payload), &rules) {
                    Ok(r) => r,
                    Err(_) => {
                        rejected += 1;
                        continue;
                    }
                };
            let own = (receipt.user_id.clone(), receipt.receipt_id.clone());
            let existing = part.ledger.get(&own);
            let original = receipt
                .kind
                .refund_of()
                .and_then(|r| part.ledger.get(&(receipt.user_id.clone(), r.to_owned())));
            let state = match part.users.get_mut(&receipt.user_id) {
                Some(s) => s,
                None => part
                    .users
                    .entry(receipt.user_id.clone())
                    .or_insert_with(|| UserState::new(&receipt.user_id)),
            };
            let new = state.version == 0;
            let before =
                (mode != Mode::None && !new).then(|| (scores(state), state.periods.clone()));
            let source = domain::Source {
                partition: p,
                offset,
            };
            // In place: on a rejection `apply` leaves the state as it was.
            match domain::apply(state, existing, original, &receipt, source, &rules) {
                Ok(Effect::Duplicate) => duplicates += 1,
                Ok(Effect::Applied {
                    entry,
                    original: updated,
                    ..
                }) => {
                    applied += 1;
                    if mode != Mode::None {
                        part.boards.reindex(before, state);
                    }
                    if let (Some(updated), Some(refund_of)) = (updated, receipt.kind.refund_of()) {
                        let key = (receipt.user_id.clone(), refund_of.to_owned());
                        part.ledger.insert(key.clone(), updated);
                        part.dirty_ledger.push(key);
                    }
                    part.ledger.insert(own.clone(), entry);
                    part.dirty_ledger.push(own);
                    part.dirty_users.push(receipt.user_id);
                }
                Err(_) => {
                    rejected += 1;
                    if new {
                        // Nothing applied: a user that was not there stays absent.
                        part.users.remove(&receipt.user_id);
                    }
                }
            }
        }
    }
    logged += commit(&mut parts, &mut log, &mut file)?;
    let wall = started.elapsed();
    let cpu = process_cpu().saturating_sub(cpu_before);
    let generator_cpu = generator.join().unwrap_or_default();
    let engine_cpu = cpu.saturating_sub(generator_cpu);
    let stored: usize = parts.iter().map(|p| p.users.len()).sum();
    let ledger: usize = parts.iter().map(|p| p.ledger.len()).sum();
    let heap = heap_allocated();
    println!(
        "{receipts} receipts over {users} users, batches of {batch}, {}: applied {applied}, duplicates {duplicates}, rejected {rejected}; {stored} users, {ledger} ledger entries held",
        match mode {
            Mode::Numbered => "boards by user number",
            Mode::Ids => "boards by user id",
            Mode::None => "no boards",
        }
    );
    println!(
        "  {:.0} receipts/s, {:.1} CPU-s per million receipts (the generator's {:.1} s excluded), peak RSS {} MiB, heap at the end {} MiB ({:.0} bytes per user, ledger and boards included), log {} MiB",
        receipts as f64 / wall.as_secs_f64(),
        engine_cpu.as_secs_f64() * 1e6 / receipts as f64,
        generator_cpu.as_secs_f64(),
        peak_rss_mib(),
        heap >> 20,
        heap as f64 / stored.max(1) as f64,
        logged >> 20
    );
    drop(parts);
    Ok(())
}

/// Appends every partition's changes to the log and makes them durable; the bytes written.
fn commit<T: Tie>(
    parts: &mut [Partition<T>],
    log: &mut Vec<u8>,
    file: &mut std::fs::File,
) -> std::io::Result<u64> {
    log.clear();
    for part in parts.iter_mut() {
        part.drain_into(log);
    }
    file.write_all(log)?;
    file.sync_data()?;
    Ok(log.len() as u64)
}

/// The simulated stream, generated on a thread of its own in chunks; the thread returns
/// its CPU time.
fn generate(
    mut sim: Simulator,
    receipts: u64,
) -> (
    std::sync::mpsc::Receiver<Vec<SimEvent>>,
    std::thread::JoinHandle<Duration>,
) {
    let (tx, rx) = std::sync::mpsc::sync_channel(4);
    let handle = std::thread::spawn(move || {
        let mut left = receipts;
        while left > 0 {
            let n = left.min(10_000);
            let chunk: Vec<SimEvent> = (0..n).map(|_| sim.next_event()).collect();
            left -= n;
            if tx.send(chunk).is_err() {
                break;
            }
        }
        cpu(rustix::time::ClockId::ThreadCPUTime)
    });
    (rx, handle)
}

fn cpu(clock: rustix::time::ClockId) -> Duration {
    let t = rustix::time::clock_gettime(clock);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

fn process_cpu() -> Duration {
    cpu(rustix::time::ClockId::ProcessCPUTime)
}

/// Heap in use now, as jemalloc counts it.
fn heap_allocated() -> u64 {
    let _ = tikv_jemalloc_ctl::epoch::advance();
    tikv_jemalloc_ctl::stats::allocated::read().map_or(0, |b| b as u64)
}

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb >> 10)
}

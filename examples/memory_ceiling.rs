//! What a fold engine with its state in memory could do on this machine: the bound a
//! redesign of issue 13 would work towards, measured with the real fold, not estimated.
//!
//! The same simulated stream as `mallquest bench` (same seed, users, stores and mix, the
//! default config's rules, generated on a thread of its own), decoded and folded with the real rules (`domain::apply`), but:
//! - users in a hash map per partition, never read from a store;
//! - the ledger (the duplicate check and refund look-ups) in a hash map, all of it kept
//!   (no dedup window: an upper bound on its memory);
//! - every board (3 all-time, and 3 per kept day, week and month) an ordered set per
//!   partition, moved on every applied receipt whose score changed; periods beyond the
//!   latest `DEFAULT_PERIODS_KEPT` of a kind dropped whole;
//! - every `BATCH` receipts, the changed users and the new ledger entries, in the store's
//!   binary encoding, and the partitions' offsets appended to one log file and fsynced.
//!
//! It does not checkpoint the log, publish outputs, compute ranks or restore, so it is an
//! upper bound on the rate and a lower bound on the memory of such an engine. Prints
//! receipts/s, CPU-seconds per million receipts (the generator's thread excluded), peak
//! RSS, and the heap per stored user at the end (BENCHMARKS.md, "An engine with its state
//! in memory").
//!
//! `--no-boards` leaves the boards out: what the decode, the fold and the log cost alone.
//!
//! Usage: cargo run --release --example memory_ceiling -- RECEIPTS USERS [BATCH] [--no-boards]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::time::{Duration, Instant};

use mallquest::codec;
use mallquest::domain::{self, Effect, LedgerEntry, Period, UserState};
use mallquest::sim::{Mix, SimEvent, Simulator};
use mallquest::store::{period_score, scores, value, Board};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const PARTITIONS: i32 = 4;

/// One board's order: highest score first, then the user's number in its partition.
/// (Numbers, not ids: an id in every entry made the sets' comparisons memcmp calls, tied
/// scores being common, and cost 2.3 times the CPU. Users of one score then come in the
/// order they first appeared, not by id; a page of a board would sort its ties by id.)
type Order = BTreeSet<(Reverse<i64>, u32)>;

#[derive(Default)]
struct Partition {
    users: HashMap<String, UserState, foldhash::fast::RandomState>,
    /// Each user's number in the partition, for the boards.
    numbers: HashMap<String, u32, foldhash::fast::RandomState>,
    ledger: HashMap<(String, String), LedgerEntry, foldhash::fast::RandomState>,
    all_time: [Order; 3],
    /// Kept periods of each kind, oldest first, each with its 3 boards.
    periods: [BTreeMap<String, [Order; 3]>; 3],
    next_offset: i64,
    /// Changed since the last batch.
    dirty_users: Vec<String>,
    dirty_ledger: Vec<(String, String)>,
}

fn kind_index(kind: Period) -> usize {
    match kind {
        Period::Day => 0,
        Period::Week => 1,
        Period::Month => 2,
    }
}

impl Partition {
    /// Moves `user` on every board whose score changed from `before` to `after`.
    fn reindex(&mut self, user: &str, before: Option<&UserState>, after: &UserState) {
        let next = u32::try_from(self.numbers.len()).unwrap_or(u32::MAX);
        let user = match self.numbers.get(user) {
            Some(n) => *n,
            None => *self.numbers.entry(user.to_owned()).or_insert(next),
        };
        let now = scores(after);
        let was = before.map(scores);
        for (b, score) in now.iter().enumerate() {
            let old = was.map(|w| w[b]);
            if old != Some(*score) {
                if let Some(old) = old {
                    self.all_time[b].remove(&(Reverse(old), user));
                }
                self.all_time[b].insert((Reverse(*score), user));
            }
        }
        let kept = domain::game::DEFAULT_PERIODS_KEPT;
        for ps in &after.periods {
            let k = kind_index(ps.kind);
            let old = before.and_then(|u| {
                u.periods
                    .iter()
                    .find(|o| o.kind == ps.kind && o.key == ps.key)
            });
            if old.is_none()
                && self.periods[k].len() >= kept
                && self.periods[k]
                    .keys()
                    .next()
                    .is_some_and(|oldest| ps.key.as_str() < oldest.as_str())
            {
                continue; // older than every kept period
            }
            let boards = self.periods[k].entry(ps.key.clone()).or_default();
            for (i, b) in Board::ALL.into_iter().enumerate() {
                let score = period_score(ps, b);
                let was = old.map(|o| period_score(o, b));
                if was != Some(score) {
                    if let Some(was) = was {
                        boards[i].remove(&(Reverse(was), user));
                    }
                    boards[i].insert((Reverse(score), user));
                }
            }
            while self.periods[k].len() > kept {
                self.periods[k].pop_first();
            }
        }
    }

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

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let boards = match args.iter().position(|a| a == "--no-boards") {
        Some(at) => {
            args.remove(at);
            false
        }
        None => true,
    };
    let (receipts, users, batch) = match args.as_slice() {
        [r, u] => (r.parse::<u64>()?, u.parse::<u64>()?, 50_000),
        [r, u, b] => (r.parse::<u64>()?, u.parse::<u64>()?, b.parse::<u64>()?),
        _ => anyhow::bail!("usage: memory_ceiling RECEIPTS USERS [BATCH] [--no-boards]"),
    };
    anyhow::ensure!(batch >= 1, "BATCH must be at least 1");
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
    let mut parts: Vec<Partition> = (0..PARTITIONS).map(|_| Partition::default()).collect();
    let (mut applied, mut duplicates, mut rejected, mut since_batch) = (0u64, 0u64, 0u64, 0u64);
    let mut log = Vec::new();
    let mut logged = 0u64;
    let started = Instant::now();
    let cpu_before = process_cpu();
    for chunk in chunks {
        for ev in chunk {
            let p = mallquest::partitioner::murmur2(ev.key.as_bytes()).rem_euclid(PARTITIONS);
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
            let before = part.users.get(&receipt.user_id);
            let mut state = before
                .cloned()
                .unwrap_or_else(|| UserState::new(&receipt.user_id));
            let source = domain::Source {
                partition: p,
                offset,
            };
            match domain::apply(&mut state, existing, original, &receipt, source, &rules) {
                Ok(Effect::Duplicate) => duplicates += 1,
                Ok(Effect::Applied {
                    entry,
                    original: updated,
                    ..
                }) => {
                    applied += 1;
                    let before = part.users.remove(&receipt.user_id);
                    if boards {
                        part.reindex(&receipt.user_id, before.as_ref(), &state);
                    }
                    if let (Some(updated), Some(refund_of)) = (updated, receipt.kind.refund_of()) {
                        let key = (receipt.user_id.clone(), refund_of.to_owned());
                        part.ledger.insert(key.clone(), updated);
                        part.dirty_ledger.push(key);
                    }
                    part.ledger.insert(own.clone(), entry);
                    part.dirty_ledger.push(own);
                    part.dirty_users.push(receipt.user_id.clone());
                    part.users.insert(receipt.user_id, state);
                }
                Err(_) => rejected += 1,
            }
            since_batch += 1;
            if since_batch >= batch {
                logged += commit(&mut parts, &mut log, &mut file)?;
                since_batch = 0;
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
        "{receipts} receipts over {users} users, batches of {batch}{}: applied {applied}, duplicates {duplicates}, rejected {rejected}; {stored} users, {ledger} ledger entries held",
        if boards { "" } else { ", no boards" }
    );
    println!(
        "  {:.0} receipts/s, {:.1} CPU-s per million receipts (the generator's {:.1} s excluded), peak RSS {} MiB, heap at the end {} MiB ({:.0} bytes per user, ledger included), log {} MiB",
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
fn commit(
    parts: &mut [Partition],
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

//! The fold engine's ceiling on this machine: fjall alone, doing only the writes a fold of
//! `RECEIPTS` receipts asks of it when each writes `KEYS` store keys, with none of the
//! fold, the simulator or the index bookkeeping. Each receipt writes one 120-byte value (its
//! user) and `KEYS - 1` empty index entries, under random 36-byte keys; every `BATCH`
//! receipts the writes go in as one atomic batch in key order, persisted with fsync, as
//! `Store::apply` does, into a keyspace configured as the store's are (a quarter of the
//! default 16 MiB write budget per memtable, 8 MiB tables, one background worker, no bloom
//! filter). Prints receipts/s, keys/s, CPU-seconds per million receipts and peak RSS
//! (docs/benchmarks-history.md, "What the store alone can do").
//!
//! Usage: cargo run --release --example store_ceiling -- RECEIPTS KEYS [BATCH]

use std::sync::Arc;
use std::time::{Duration, Instant};

use fjall::config::FilterPolicy;
use fjall::{Database, KeyspaceCreateOptions, PersistMode};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (receipts, keys, batch) = match args.as_slice() {
        [_, r, k] => (r.parse::<u64>()?, k.parse::<u64>()?, 20_000),
        [_, r, k, b] => (r.parse::<u64>()?, k.parse::<u64>()?, b.parse::<u64>()?),
        _ => anyhow::bail!("usage: store_ceiling RECEIPTS KEYS [BATCH]"),
    };
    anyhow::ensure!(keys >= 1 && batch >= 1, "KEYS and BATCH must be at least 1");
    let dir = tempfile::tempdir()?;
    let db = Database::builder(dir.path())
        .cache_size(256 << 20)
        .worker_threads(1)
        .open()?;
    let ks = db.keyspace("ceiling", || {
        KeyspaceCreateOptions::default()
            .max_memtable_size(4 << 20)
            .compaction_strategy(Arc::new(
                fjall::compaction::Leveled::default().with_table_target_size(8 << 20),
            ))
            .filter_policy(FilterPolicy::disabled())
    })?;
    let user = [7u8; 120];
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let started = Instant::now();
    let cpu_before = process_cpu();
    let mut done = 0;
    while done < receipts {
        let n = batch.min(receipts - done);
        let mut writes: Vec<(Vec<u8>, bool)> = Vec::with_capacity((n * keys) as usize);
        for _ in 0..n {
            for k in 0..keys {
                let mut key = Vec::with_capacity(36);
                key.extend_from_slice(&((done % 4) as u32).to_be_bytes());
                key.extend_from_slice(&splitmix(&mut state).to_be_bytes());
                key.extend_from_slice(b"u-000000-filler-of-a-user-id");
                writes.push((key, k == 0));
            }
        }
        writes.sort_unstable();
        let mut b = db.batch();
        for (key, is_user) in writes {
            if is_user {
                b.insert(&ks, key, user);
            } else {
                b.insert(&ks, key, []);
            }
        }
        b.commit()?;
        db.persist(PersistMode::SyncAll)?;
        done += n;
    }
    let wall = started.elapsed();
    let cpu = process_cpu().saturating_sub(cpu_before);
    println!(
        "{receipts} receipts x {keys} keys, batches of {batch}: {:.0} receipts/s, {:.0} keys/s, {:.1} CPU-s per million receipts, {:.2} us of CPU per key, peak RSS {} MiB",
        receipts as f64 / wall.as_secs_f64(),
        (receipts * keys) as f64 / wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / receipts as f64,
        cpu.as_secs_f64() * 1e6 / (receipts * keys) as f64,
        peak_rss_mib()
    );
    Ok(())
}

/// A random 64-bit number (splitmix64): the keys land all over the key space, as the
/// store's user ids and index entries do.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
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

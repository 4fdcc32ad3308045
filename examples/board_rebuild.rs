//! How long the boards take to rebuild from a stored users' scan: opens the store at the
//! given directory (as `run` does at start, and a restore does per partition) and prints
//! the time (the ledger's index read from its segments included), the users, the boards'
//! bytes by structure and the ledger index's; then how long the first reads of every
//! partition take, which build its set of known users (ARCHITECTURE.md, "Users known
//! absent without a read").
//!
//! `cargo run --release --example board_rebuild -- DIR [PERIODS_KEPT]`, on a store left
//! by `mallquest bench --dir DIR ...` (docs/benchmarks-history.md, "The boards in memory").

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: board_rebuild DIR [PERIODS_KEPT]")?;
    let kept: Option<usize> = args.next().map(|k| k.parse()).transpose()?;
    let started = Instant::now();
    let store = mallquest::store::Store::open(std::path::Path::new(&dir))?;
    let opened = started.elapsed();
    if let Some(kept) = kept {
        let started = Instant::now();
        store.set_periods_kept(kept);
        println!(
            "rebuilt for periods_kept = {kept} in {:?}",
            started.elapsed()
        );
    }
    let users = store.users_in(|_| true);
    let bytes = store.board_bytes();
    println!(
        "opened with boards rebuilt in {opened:?}: {users} users; board bytes: ids {} ({:.0} per user), all-time {} ({:.0}), periods {} ({:.0})",
        bytes.ids,
        bytes.ids as f64 / users.max(1) as f64,
        bytes.all_time,
        bytes.all_time as f64 / users.max(1) as f64,
        bytes.periods,
        bytes.periods as f64 / users.max(1) as f64,
    );
    let ledger = store.ledger_memory();
    println!(
        "ledger index (read from its segments by the open): {} entries, {} bytes ({} per entry), {} segments",
        ledger.entries,
        ledger.bytes,
        ledger.bytes / ledger.entries.max(1),
        ledger.segments
    );
    let started = Instant::now();
    let partitions = store.partitions()?;
    for &p in &partitions {
        store.user(p, "never-seen")?;
    }
    println!(
        "known-user sets of {} partitions built by their first reads in {:?}",
        partitions.len(),
        started.elapsed()
    );
    Ok(())
}

//! `mallquest demo`: the simulator feeds the same fold, store and commit code as `run`,
//! through an in-process source, with no external service.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Config;
use crate::domain::{Period, Reject};
use crate::pipeline::{BatchStats, MemorySink, Processor, Record};
use crate::sim::{Mix, Simulator};
use crate::store::{Board, Store};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Receipts to generate.
    pub receipts: u64,
    /// Distinct shoppers.
    pub users: u64,
    /// Stores in the mall.
    pub stores: u32,
    /// Seed of the simulator.
    pub seed: u64,
    /// Store directory; a fresh temporary one when absent.
    pub dir: Option<PathBuf>,
    /// Partitions the stream is spread over, as Kafka would.
    pub partitions: i32,
    /// Every user buys once, in order, before the usual skewed picks.
    pub every_user: bool,
    /// Keep the store (and its temporary directory) in the summary, for `--serve`.
    pub keep_store: bool,
    /// The stream of earlier versions: 50 ms apart, no redemptions (the fold benchmarks'
    /// stream). Otherwise receipts span four weeks and 3% are redemptions.
    pub plain: bool,
}

/// The game `demo` plays when given no config (README, "The game").
pub const DEMO_GAME: &str = include_str!("../config/demo-game.toml");

/// Days of event time the simulated receipts span (but with `plain`): enough for streaks,
/// weekly missions and period boards to mean something.
const GAME_SPAN_DAYS: u64 = 28;

/// A row of a top 10: (user_id, xp, level, coins).
pub type TopRow = (String, i64, u32, i64);

/// The demo's result.
pub struct DemoSummary {
    /// Counts over the whole run.
    pub stats: BatchStats,
    /// Wall time.
    pub elapsed: Duration,
    /// Users in the store.
    pub users: u64,
    /// Top 10 by XP.
    pub top: Vec<TopRow>,
    /// With a game: the week holding the last receipt, and its top 10 by XP (user_id,
    /// the week's xp, level, coins).
    pub week: Option<(String, Vec<TopRow>)>,
    /// Users per level.
    pub levels: BTreeMap<u32, u64>,
    /// Where the store is.
    pub store_path: PathBuf,
    /// The store, when asked to keep it ([`DemoOptions::keep_store`]).
    pub store: Option<Arc<Store>>,
    /// A temporary store's directory, removed when the summary is dropped.
    pub temp: Option<tempfile::TempDir>,
}

/// A min-heap entry for the top 10: (xp, user_id reversed so ties keep the smaller id, level, coins).
type TopEntry = Reverse<(i64, Reverse<String>, u32, i64)>;

const TOPIC: &str = "demo-receipts";

/// Runs the demo and returns its summary.
pub fn run(config: &Config, opts: &DemoOptions, progress: bool) -> anyhow::Result<DemoSummary> {
    let (dir, _temp) = match &opts.dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("mallquest-demo-")
                .tempdir()
                .context("failed to create a temporary directory")?;
            (t.path().to_owned(), Some(t))
        }
    };
    let store = Arc::new(Store::open_with_memory(
        &dir,
        config.store.cache_mb << 20,
        config.store.write_buffer_mb << 20,
    )?);
    let mut processor = Processor::with_hot_users(
        Arc::clone(&store),
        config.rules.clone(),
        config.store.hot_users,
    )
    .with_dedup_window_days(config.processing.dedup_window_days);
    let mut sink = MemorySink {
        counts_only: true,
        ..MemorySink::default()
    };
    let game = &config.rules.game;
    let plays = !(game.campaigns.is_empty() && game.missions.is_empty() && game.badges.is_empty());
    let mix = Mix {
        redemptions: if opts.plain { 0 } else { 30 },
        ..Mix::default()
    };
    let mut sim = Simulator::new(opts.seed, opts.users, opts.stores, mix);
    if !opts.plain {
        sim = sim.spread_over(GAME_SPAN_DAYS, opts.receipts);
    }
    if opts.every_user {
        sim = sim.every_user_first();
    }
    let partitions = opts.partitions.max(1);
    let mut next_offset = vec![0i64; partitions as usize];
    for (p, o) in next_offset.iter_mut().enumerate() {
        *o = store.offset(TOPIC, p as i32)?.unwrap_or(0);
    }

    let bar = if progress {
        ProgressBar::new(opts.receipts)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} receipts {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let interval = Duration::from_millis(config.processing.commit_interval_ms);
    let started = Instant::now();
    let mut last_commit = Instant::now();
    let mut total = BatchStats::default();
    for i in 0..opts.receipts {
        let e = sim.next_event();
        let p = partition_of(&e.key, partitions);
        let offset = next_offset[p as usize];
        next_offset[p as usize] += 1;
        processor.process(Record {
            topic: TOPIC,
            partition: p,
            offset,
            key: Some(e.key.as_bytes()),
            payload: Some(&e.payload),
            timestamp_ms: None,
        })?;
        if processor.pending_records() >= 50_000 || last_commit.elapsed() >= interval {
            total.add(&processor.commit(&mut sink)?);
            last_commit = Instant::now();
            bar.set_position(i + 1);
        }
    }
    total.add(&processor.commit(&mut sink)?);
    bar.finish_and_clear();
    let elapsed = started.elapsed();

    let mut users = 0u64;
    let mut levels = BTreeMap::new();
    let mut top: BinaryHeap<TopEntry> = BinaryHeap::new();
    for u in store.users() {
        let u = u?;
        users += 1;
        *levels.entry(u.level).or_default() += 1;
        top.push(Reverse((u.xp, Reverse(u.user_id), u.level, u.coins)));
        if top.len() > 10 {
            top.pop();
        }
    }
    let mut top: Vec<_> = top
        .into_iter()
        .map(|Reverse((xp, Reverse(id), level, coins))| (id, xp, level, coins))
        .collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let week = if plays {
        store
            .latest_period(Period::Week, config.rules.calendar(), |_| true)
            .map(|key| {
                let rows = store
                    .period_board(Period::Week, &key, Board::Xp, 10, |_| true)?
                    .into_iter()
                    .map(|(score, u)| (u.user_id, score, u.level, u.coins))
                    .collect();
                Ok::<_, crate::store::StoreError>((key, rows))
            })
            .transpose()?
    } else {
        None
    };
    let store_path = dir.clone();
    drop(processor);
    let (store, temp) = if opts.keep_store {
        (Some(store), _temp)
    } else {
        // Keep nothing behind for a temporary store.
        drop(store);
        drop(_temp);
        (None, None)
    };
    Ok(DemoSummary {
        stats: total,
        elapsed,
        users,
        top,
        week,
        levels,
        store_path,
        store,
        temp,
    })
}

/// The partition a key goes to: stable across runs.
fn partition_of(key: &str, partitions: i32) -> i32 {
    // FNV-1a: deterministic, unlike the std hasher's random seed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % partitions as u64) as i32
}

impl std::fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.stats;
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        writeln!(f, "mallquest demo")?;
        writeln!(
            f,
            "  receipts     {} in {:.2} s = {:.0} events/s",
            s.records,
            secs,
            s.records as f64 / secs
        )?;
        writeln!(
            f,
            "  applied      {}  duplicates {}  rejected {}  level-ups {}",
            s.applied,
            s.duplicates,
            s.rejected.values().sum::<u64>(),
            s.level_ups
        )?;
        writeln!(f, "  users        {}", self.users)?;
        writeln!(f, "  store        {}", self.store_path.display())?;
        let rejected: Vec<String> = Reject::ALL
            .iter()
            .filter_map(|r| s.rejected.get(r).map(|n| format!("{} {n}", r.as_str())))
            .collect();
        if !rejected.is_empty() {
            writeln!(f, "  rejects      {}", rejected.join(", "))?;
        }
        let (title, rows) = match &self.week {
            Some((key, rows)) => {
                writeln!(
                    f,
                    "  game         campaign coins {}  coins redeemed {}  missions completed {} (revoked {})  badges earned {}",
                    s.campaign_coins, s.coins_redeemed, s.missions_completed, s.missions_revoked, s.badges_earned
                )?;
                (format!("top 10 of week {key} by XP earned that week"), rows)
            }
            None => ("top 10 by XP".to_owned(), &self.top),
        };
        writeln!(f, "\n  {title}")?;
        writeln!(
            f,
            "  {:>4}  {:<12} {:>10} {:>6} {:>10}",
            "rank", "user", "xp", "level", "coins"
        )?;
        for (i, (id, xp, level, coins)) in rows.iter().enumerate() {
            writeln!(
                f,
                "  {:>4}  {:<12} {:>10} {:>6} {:>10}",
                i + 1,
                id,
                xp,
                level,
                coins
            )?;
        }
        writeln!(f, "\n  users per level")?;
        for (range, n) in level_buckets(&self.levels) {
            let max = self.users.max(1);
            let bar = "#".repeat(((n * 40).div_ceil(max)) as usize);
            writeln!(f, "  {range:>7} {n:>8} {bar}")?;
        }
        writeln!(
            f,
            "\n  look further: add --serve 127.0.0.1:8080 to keep the API up on this store, then\n\
             \x20 curl 'http://127.0.0.1:8080/v1/leaderboard?period=week' or\n\
             \x20 curl 'http://127.0.0.1:8080/v1/users/{}/rank?period=week' (README, Query API)",
            rows.first().map_or("u-00000000", |r| r.0.as_str())
        )?;
        Ok(())
    }
}

/// Users per level in powers of two (1, 2-3, 4-7, ...): a few lines whatever the levels.
fn level_buckets(levels: &BTreeMap<u32, u64>) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    let mut low = 1u32;
    while levels.keys().any(|l| *l >= low) {
        let high = low.saturating_mul(2) - 1;
        let n = levels.range(low..=high).map(|(_, n)| n).sum();
        let range = if low == high {
            low.to_string()
        } else {
            format!("{low}-{high}")
        };
        out.push((range, n));
        low = low.saturating_mul(2);
    }
    out
}

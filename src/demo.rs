//! `mallquest demo`: the simulator feeds the same fold, store and commit code as `run`,
//! through an in-process source, with no external service.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::ops::DerefMut;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Config;
use crate::domain::{Period, Reject};
use crate::partitioner::Partitioner;
use crate::pipeline::{
    self, BatchStats, CommitError, MemorySink, Message, Polled, Processor, Record, Source,
};
use crate::sim::{Mix, SimEvent, Simulator};
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
    /// stream). Otherwise receipts span `span_days` and 3% are redemptions.
    pub plain: bool,
    /// Days of event time the receipts span from 2026-11-01 (not with `plain`):
    /// [`GAME_SPAN_DAYS`] for `demo`.
    pub span_days: u64,
}

/// The game `demo` plays when given no config (README, "The game").
pub const DEMO_GAME: &str = include_str!("../config/demo-game.toml");

/// Days of event time the simulated receipts span (but with `plain`): enough for streaks,
/// weekly missions and period boards to mean something, and past a month start, so that
/// the demo game's November coins expire and its tiers are reviewed.
pub const GAME_SPAN_DAYS: u64 = 42;

/// A row of a top 10: (user_id, xp, level, coins).
pub type TopRow = (String, i64, u32, i64);

/// The demo's result.
pub struct DemoSummary {
    /// Counts over the whole run.
    pub stats: BatchStats,
    /// Wall time.
    pub elapsed: Duration,
    /// What the fold engine cost.
    pub engine: Engine,
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

/// What folding the stream cost, the simulator's own thread excluded.
#[derive(Debug, Clone)]
pub struct Engine {
    /// CPU time of the process while folding (the fold, the store and its background
    /// workers), less the simulator thread's.
    pub cpu: Duration,
    /// CPU time of the simulator thread, which generates the receipts' JSON on the other
    /// core.
    pub simulator_cpu: Duration,
    /// Peak resident set size of the process (`VmHWM`), when the platform says it.
    pub peak_rss: Option<u64>,
    /// How long commits waited for the store to flush its memtables.
    pub write_stall: Duration,
    /// Keys the store's commits wrote (inserts and removes).
    pub store_writes: u64,
    /// The same by keyspace: (name, writes).
    pub store_writes_by_keyspace: Vec<(String, u64)>,
}

impl Engine {
    /// CPU-seconds per million receipts.
    pub fn cpu_per_million(&self, receipts: u64) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / receipts.max(1) as f64
    }

    /// Store keys written per receipt.
    pub fn writes_per_receipt(&self, receipts: u64) -> f64 {
        self.store_writes as f64 / receipts.max(1) as f64
    }
}

/// Receipts the simulator thread hands over at a time.
const CHUNK: usize = 4_096;

/// Generates the stream on a thread of its own, in chunks, a few chunks ahead of the
/// fold, so that generating JSON does not count as folding it. The thread returns its
/// own CPU time.
fn spawn_simulator(
    mut sim: Simulator,
    receipts: u64,
) -> anyhow::Result<(
    std::sync::mpsc::Receiver<Vec<SimEvent>>,
    std::thread::JoinHandle<Duration>,
)> {
    let (tx, rx) = std::sync::mpsc::sync_channel(4);
    let handle = std::thread::Builder::new()
        .name("simulator".into())
        .spawn(move || {
            let mut left = receipts;
            while left > 0 {
                let n = left.min(CHUNK as u64);
                let chunk: Vec<SimEvent> = (0..n).map(|_| sim.next_event()).collect();
                left -= n;
                if tx.send(chunk).is_err() {
                    break;
                }
            }
            thread_cpu()
        })
        .context("failed to start the simulator thread")?;
    Ok((rx, handle))
}

fn to_duration(t: rustix::time::Timespec) -> Duration {
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// CPU time of the whole process so far.
fn process_cpu() -> Duration {
    to_duration(rustix::time::clock_gettime(
        rustix::time::ClockId::ProcessCPUTime,
    ))
}

/// CPU time of the calling thread so far.
fn thread_cpu() -> Duration {
    to_duration(rustix::time::clock_gettime(
        rustix::time::ClockId::ThreadCPUTime,
    ))
}

/// Peak resident set size in bytes, from `/proc/self/status`.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A min-heap entry for the top 10: (xp, user_id reversed so ties keep the smaller id, level, coins).
type TopEntry = Reverse<(i64, Reverse<String>, u32, i64)>;

const TOPIC: &str = "demo-receipts";

/// The simulator as the pipeline's source: its chunks, each receipt put in the partition
/// `demo`'s partitioner picks for its key, at that partition's next offset.
struct SimSource {
    engine: RefCell<pipeline::Engine<MemorySink>>,
    chunks: Receiver<Vec<SimEvent>>,
    /// What is left of the chunk being folded.
    chunk: RefCell<std::vec::IntoIter<SimEvent>>,
    next_offset: RefCell<Vec<i64>>,
    partitions: i32,
    /// Receipts handed out, for the progress bar.
    folded: Cell<u64>,
    bar: ProgressBar,
}

/// A simulated receipt where `demo` put it.
struct SimMessage {
    event: SimEvent,
    partition: i32,
    offset: i64,
}

impl Message for SimMessage {
    fn record(&self) -> Record<'_> {
        Record {
            topic: TOPIC,
            partition: self.partition,
            offset: self.offset,
            key: Some(self.event.key.as_bytes()),
            payload: Some(&self.event.payload),
            timestamp_ms: None,
        }
    }
}

impl Source for SimSource {
    type Sink = MemorySink;
    type Message<'a> = SimMessage;

    fn engine(&self) -> impl DerefMut<Target = pipeline::Engine<MemorySink>> + '_ {
        self.engine.borrow_mut()
    }

    fn poll(&self, wait: Duration) -> anyhow::Result<Polled<SimMessage>> {
        let mut chunk = self.chunk.borrow_mut();
        let event = match chunk.next() {
            Some(e) => e,
            None => {
                let next = if wait.is_zero() {
                    self.chunks
                        .try_recv()
                        .map_err(|e| e == TryRecvError::Disconnected)
                } else {
                    self.chunks
                        .recv_timeout(wait)
                        .map_err(|e| e == RecvTimeoutError::Disconnected)
                };
                match next {
                    Ok(c) => {
                        *chunk = c.into_iter();
                        match chunk.next() {
                            Some(e) => e,
                            None => return Ok(Polled::Idle),
                        }
                    }
                    Err(true) => return Ok(Polled::End),
                    Err(false) => return Ok(Polled::Idle),
                }
            }
        };
        let partition = Partitioner::Fnv64.partition(event.key.as_bytes(), self.partitions);
        let mut next_offset = self.next_offset.borrow_mut();
        let slot = &mut next_offset[partition as usize];
        let offset = *slot;
        *slot += 1;
        self.folded.set(self.folded.get() + 1);
        Ok(Polled::Message(SimMessage {
            event,
            partition,
            offset,
        }))
    }

    fn stopping(&self) -> bool {
        false
    }

    fn committed(&self, _stats: &BatchStats, _took: Duration) {
        self.bar.set_position(self.folded.get());
    }

    /// Nothing to replay from: the demo stops.
    fn failed(&self, error: CommitError) -> anyhow::Result<()> {
        Err(error.into())
    }
}

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
    let processor = Processor::with_hot_users(
        Arc::clone(&store),
        config.rules.clone(),
        config.store.hot_users,
    )
    .with_dedup_window_days(config.processing.dedup_window_days);
    let sink = MemorySink {
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
        sim = sim.spread_over(opts.span_days, opts.receipts);
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
    let cpu_before = process_cpu();
    let started = Instant::now();
    let (chunks, simulator) = spawn_simulator(sim, opts.receipts)?;
    let source = SimSource {
        engine: RefCell::new(pipeline::Engine { processor, sink }),
        chunks,
        chunk: RefCell::new(Vec::new().into_iter()),
        next_offset: RefCell::new(next_offset),
        partitions,
        folded: Cell::new(0),
        bar,
    };
    let total = pipeline::drive(&source, config.processing.cadence())?
        .stats()
        .clone();
    source.bar.finish_and_clear();
    let processor = source.engine.into_inner().processor;
    let elapsed = started.elapsed();
    let simulator_cpu = simulator
        .join()
        .map_err(|_| anyhow::anyhow!("the simulator thread panicked"))?;
    let engine = Engine {
        cpu: process_cpu()
            .saturating_sub(cpu_before)
            .saturating_sub(simulator_cpu),
        simulator_cpu,
        peak_rss: peak_rss(),
        write_stall: store.memory().write_stall,
        store_writes: store.writes(),
        store_writes_by_keyspace: store.writes_by_keyspace(),
    };

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
        engine,
        users,
        top,
        week,
        levels,
        store_path,
        store,
        temp,
    })
}

impl DemoSummary {
    /// The fold engine's figures on one line: CPU per million receipts, peak RSS and the
    /// time commits waited for the store's flushes.
    pub fn engine_line(&self) -> String {
        let e = &self.engine;
        let rss = e
            .peak_rss
            .map_or_else(|| "unknown".to_owned(), |b| format!("{} MiB", b >> 20));
        format!(
            "{:.1} CPU-s per million receipts (the simulator's thread excluded: {:.1} s), {:.1} store keys written per receipt, peak RSS {rss}, commits waited {:.1} s for the store's flushes",
            e.cpu_per_million(self.stats.records),
            e.simulator_cpu.as_secs_f64(),
            e.writes_per_receipt(self.stats.records),
            e.write_stall.as_secs_f64()
        )
    }
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
        writeln!(f, "  engine       {}", self.engine_line())?;
        writeln!(f, "  store        {}", self.store_path.display())?;
        let rejected: Vec<String> = Reject::ALL
            .iter()
            .filter_map(|r| s.rejected.get(r).map(|n| format!("{} {n}", r.as_str())))
            .collect();
        if !rejected.is_empty() {
            writeln!(f, "  rejects      {}", rejected.join(", "))?;
        }
        if s.coins_expired > 0 || !s.tier_changes.is_empty() {
            let tiers: Vec<String> = s
                .tier_changes
                .iter()
                .map(|(to, n)| format!("{} {n}", to.as_deref().unwrap_or("none")))
                .collect();
            writeln!(
                f,
                "  time         coins expired {}  tier changes to: {}",
                s.coins_expired,
                if tiers.is_empty() {
                    "-".to_owned()
                } else {
                    tiers.join(", ")
                }
            )?;
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

/// What `mallquest bench` prints: the engine's figures, as text or as one JSON object.
pub struct BenchReport<'a>(pub &'a DemoSummary, pub bool);

impl std::fmt::Display for BenchReport<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let BenchReport(d, json) = self;
        let s = &d.stats;
        let secs = d.elapsed.as_secs_f64().max(1e-9);
        let rate = s.records as f64 / secs;
        let cpu = d.engine.cpu_per_million(s.records);
        let rss_mib = d.engine.peak_rss.map(|b| b >> 20);
        if *json {
            let v = serde_json::json!({
                "receipts": s.records,
                "users": d.users,
                "applied": s.applied,
                "duplicates": s.duplicates,
                "rejected": s.rejected.values().sum::<u64>(),
                "wall_s": secs,
                "receipts_per_s": rate.round(),
                "cpu_s_per_million": (cpu * 10.0).round() / 10.0,
                "simulator_cpu_s": d.engine.simulator_cpu.as_secs_f64(),
                "peak_rss_mib": rss_mib,
                "write_stall_s": d.engine.write_stall.as_secs_f64(),
                "store_writes": d.engine.store_writes,
                "store_writes_per_receipt": (d.engine.writes_per_receipt(s.records) * 10.0).round() / 10.0,
                "store_writes_by_keyspace": d.engine.store_writes_by_keyspace.iter().map(|(k, n)| (k.clone(), serde_json::Value::from(*n))).collect::<serde_json::Map<_, _>>(),
            });
            return writeln!(f, "{v}");
        }
        writeln!(
            f,
            "mallquest bench: the fold engine, an in-process source, the durable store"
        )?;
        writeln!(
            f,
            "  receipts     {} (applied {}, duplicates {}, rejected {}), {} users stored",
            s.records,
            s.applied,
            s.duplicates,
            s.rejected.values().sum::<u64>(),
            d.users
        )?;
        writeln!(f, "  wall         {secs:.2} s = {rate:.0} receipts/s")?;
        writeln!(f, "  engine       {}", d.engine_line())?;
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

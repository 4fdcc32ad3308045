//! Command-line arguments (clap derive). Validation beyond parsing lives in `config`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Folds point-of-sale receipts from Kafka into loyalty projections, exactly once.
#[derive(Debug, Parser)]
#[command(name = "mallquest", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume the receipts topic, fold, store and publish until SIGINT/SIGTERM.
    Run {
        /// Config file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Refold the receipts topic from its beginning into an empty store, then keep running
    /// like `run` (for a lost or corrupted store; the topic must still hold every receipt).
    Rebuild {
        /// Config file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Fold a simulated stream with no external service and print a summary.
    Demo {
        /// Receipts to simulate.
        #[arg(long, default_value_t = 200_000)]
        receipts: u64,
        /// Distinct shoppers.
        #[arg(long, default_value_t = 10_000)]
        users: u64,
        /// Stores in the mall.
        #[arg(long, default_value_t = 40)]
        stores: u32,
        /// Simulator seed (same seed, same stream).
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Store directory (default: a fresh temporary directory, removed afterwards).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Config file for the rules and the game (default: the built-in demo game,
        /// config/demo-game.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Every user buys once, in order, first: `--receipts` >= `--users` then stores
        /// every user (for scale benchmarks).
        #[arg(long)]
        every_user: bool,
        /// The fold-engine benchmarks' run: the default rules, no game (campaigns,
        /// missions, badges), and the stream of earlier versions (receipts 50 ms apart, no
        /// redemptions).
        #[arg(long, conflicts_with = "config")]
        plain: bool,
        /// After the summary, keep the query API up on the demo store at ADDR
        /// (`127.0.0.1:8080`) until Ctrl-C, for curl.
        #[arg(long, value_name = "ADDR")]
        serve: Option<String>,
    },
    /// Measure the fold engine alone: simulated receipts (generated on a thread of their
    /// own) through the fold and the durable store, no Kafka; prints receipts/s,
    /// CPU-seconds per million receipts and peak RSS (BENCHMARKS.md).
    Bench {
        /// Receipts to fold.
        #[arg(long, default_value_t = 1_000_000)]
        receipts: u64,
        /// Distinct shoppers.
        #[arg(long, default_value_t = 100_000)]
        users: u64,
        /// Partitions the stream is spread over, as Kafka would.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// Simulator seed (same seed, same stream).
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Store directory (default: a fresh temporary directory, removed afterwards).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Config file for the rules, the game and the store's memory (default: the
        /// defaults, no game).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Every user buys once, in order, first (so that `--users` users are stored).
        #[arg(long)]
        every_user: bool,
        /// Print the figures as one JSON object instead.
        #[arg(long)]
        json: bool,
    },
    /// Publish simulated POS receipts to Kafka at a steady rate.
    Simulate {
        /// Bootstrap brokers.
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        /// Topic to publish to.
        #[arg(long, default_value = "receipts")]
        topic: String,
        /// Receipts per second (0 = as fast as possible).
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Receipts to publish.
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        /// Distinct shoppers.
        #[arg(long, default_value_t = 10_000)]
        users: u64,
        /// Stores in the mall.
        #[arg(long, default_value_t = 40)]
        stores: u32,
        /// Seed (same seed, same stream).
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Refunds, per mille of events.
        #[arg(long, default_value_t = 50)]
        refunds_permille: u32,
        /// Exact duplicates, per mille.
        #[arg(long, default_value_t = 20)]
        duplicates_permille: u32,
        /// Bad events, per mille.
        #[arg(long, default_value_t = 10)]
        bad_permille: u32,
    },
    /// Fold the retained receipts twice, under the live rules and under proposed ones,
    /// each into a temporary store (the live store is never opened), and report what
    /// would have changed: totals, coins by store, category and campaign, users' levels
    /// and coins. The topic must still hold its first records (README, "What if").
    Whatif {
        /// The live config (brokers, topic, store memory, the rules now).
        #[arg(long)]
        config: PathBuf,
        /// The proposed config: its rules, game (`[[campaigns]]`, `[[missions]]`, ...)
        /// and `[processing]` sections are used.
        #[arg(long)]
        rules: PathBuf,
        /// Apply the proposed rules from this instant (RFC 3339, by the records' Kafka
        /// timestamps); the records before it are folded under the live rules on both
        /// sides. Default: from the first record.
        #[arg(long, value_name = "TIME")]
        from: Option<String>,
        /// End the range before this instant (RFC 3339). Default: the topic's end now.
        #[arg(long, value_name = "TIME")]
        to: Option<String>,
        /// Write the report as one self-contained HTML page to FILE.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Write the report as JSON (schemas/whatif.schema.json) to FILE.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Write the store to a compacted snapshot file, or create a store from one.
    Snapshot {
        /// Export or import.
        #[command(subcommand)]
        action: SnapshotAction,
    },
    /// Print every projection in the store as JSON lines (the store must not be in use).
    Dump {
        /// Config file naming the store.
        #[arg(long)]
        config: PathBuf,
    },
}

/// `mallquest snapshot ...`.
#[derive(Debug, Subcommand)]
pub enum SnapshotAction {
    /// Write projections, offsets, marks and the ledger within the dedup window to FILE
    /// (the store must not be in use: stop `run` first).
    Export {
        /// Snapshot file to write (replaced only once complete).
        file: PathBuf,
        /// Config file naming the store and the dedup window.
        #[arg(long, default_value = "config/mallquest.toml")]
        config: PathBuf,
    },
    /// Create the configured store from FILE (refuses an existing store).
    Import {
        /// Snapshot file to read.
        file: PathBuf,
        /// Config file naming the store.
        #[arg(long, default_value = "config/mallquest.toml")]
        config: PathBuf,
    },
}

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
        /// Config file for the rules (default: built-in defaults).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print every projection in the store as JSON lines (the store must not be in use).
    Dump {
        /// Config file naming the store.
        #[arg(long)]
        config: PathBuf,
    },
}

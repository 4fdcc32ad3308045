//! The `mallquest` binary: parse the arguments, dispatch to a subcommand
//! ([`commands`]), print an error with its causes.

mod commands;

use std::io::IsTerminal as _;

use clap::Parser as _;
use mallquest::cli::{Cli, Command};
use mallquest::config::Config;
use mallquest::{demo, kafka, simulate};
use tracing_subscriber::EnvFilter;

/// jemalloc instead of glibc's malloc: the fold allocates small, short-lived keys and
/// values per receipt, and glibc's allocator took about 18% of the fold thread's time.
/// Side by side (docs/benchmarks-history.md 1) the fold ran 1.34x faster with jemalloc,
/// for 11% more peak RSS; mimalloc ran 1.4x faster for 32% more.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,fjall=warn,lsm_tree=warn")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: log files and collectors get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match dispatch(Cli::parse().command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { config } => {
            commands::run_service(Config::load(&config)?, kafka::Start::Normal)
        }
        Command::Rebuild { config } => {
            commands::run_service(Config::load(&config)?, kafka::Start::Rebuild)
        }
        Command::Demo {
            receipts,
            users,
            stores,
            seed,
            dir,
            config,
            every_user,
            plain,
            serve,
        } => {
            let opts = demo::DemoOptions {
                receipts,
                users,
                stores,
                seed,
                dir,
                partitions: 4,
                every_user,
                keep_store: serve.is_some(),
                plain,
                span_days: demo::GAME_SPAN_DAYS,
            };
            commands::demo(opts, config, serve)
        }
        Command::Bench {
            receipts,
            users,
            partitions,
            seed,
            dir,
            config,
            every_user,
            json,
        } => {
            let opts = demo::DemoOptions {
                receipts,
                users,
                stores: 40,
                seed,
                dir,
                partitions,
                every_user,
                keep_store: false,
                plain: true,
                span_days: demo::GAME_SPAN_DAYS,
            };
            commands::bench(&opts, config, json)
        }
        Command::Simulate {
            brokers,
            topic,
            rate,
            count,
            users,
            stores,
            seed,
            refunds_permille,
            duplicates_permille,
            bad_permille,
        } => commands::simulate(&simulate::SimulateOptions {
            brokers,
            topic,
            rate,
            count,
            users,
            stores,
            seed,
            mix: mallquest::sim::Mix {
                refunds: refunds_permille,
                duplicates: duplicates_permille,
                bad: bad_permille,
                redemptions: 0,
            },
        }),
        Command::Snapshot { action } => commands::snapshot(action),
        Command::Whatif {
            config,
            rules,
            from,
            to,
            out,
            json,
        } => commands::whatif(&config, &rules, from.as_deref(), to.as_deref(), out, json),
        Command::Dump { config } => commands::dump(&config),
    }
}

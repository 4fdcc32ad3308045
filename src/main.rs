//! The `mallquest` binary: parse, load, run; errors printed with their causes.

use std::io::Write as _;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use mallquest::cli::{Cli, Command};
use mallquest::config::Config;
use mallquest::store::Store;
use mallquest::{codec, demo, kafka, shutdown, simulate};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match real_main(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config } => {
            let config = Config::load(&config)?;
            let runtime = tokio::runtime::Runtime::new().context("failed to start the runtime")?;
            runtime.block_on(run(config))
        }
        Command::Demo {
            receipts,
            users,
            stores,
            seed,
            dir,
            config,
        } => {
            let config = match config {
                Some(p) => Config::load(&p)?,
                None => Config::default(),
            };
            let opts = demo::DemoOptions {
                receipts,
                users,
                stores,
                seed,
                dir,
                partitions: 4,
            };
            let summary = demo::run(&config, &opts, true)?;
            print!("{summary}");
            Ok(())
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
        } => {
            let opts = simulate::SimulateOptions {
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
                },
            };
            let (n, secs) = simulate::run(&opts)?;
            println!(
                "published {n} receipts in {secs:.2} s = {:.0} receipts/s",
                n as f64 / secs.max(1e-9)
            );
            Ok(())
        }
        Command::Dump { config } => {
            let config = Config::load(&config)?;
            let store = Store::open(&config.store.path)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for u in store.users() {
                out.write_all(&codec::encode_projection(&u?))?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
            Ok(())
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let store = Arc::new(Store::open(&config.store.path)?);
    kafka::ensure_output_topics(&config.kafka).await?;
    let flag = Arc::new(AtomicBool::new(false));
    tokio::spawn(shutdown::on_signal(Arc::clone(&flag)));
    let worker = tokio::task::spawn_blocking(move || kafka::run(&config, store, &flag));
    worker.await.context("the consumer thread panicked")?
}

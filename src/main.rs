//! The `mallquest` binary: parse, load, run; errors printed with their causes.

use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use mallquest::cli::{Cli, Command, SnapshotAction};
use mallquest::config::Config;

/// Serves the query API on a demo's store until Ctrl-C (standalone: every partition).
fn serve_demo(config: &Config, store: Arc<Store>, listen: &str) -> anyhow::Result<()> {
    let mut config = config.clone();
    config.http.listen = listen.to_owned();
    let runtime = tokio::runtime::Runtime::new().context("failed to start the runtime")?;
    runtime.block_on(async {
        let shutdown = Shutdown::new();
        let signals = tokio::spawn(shutdown.clone().on_signal());
        let listening = |addr: &str| {
            println!("\nServing the demo store on http://{addr} until Ctrl-C.");
        };
        let served = service::serve_store(&config, store, listening, shutdown).await;
        signals.abort();
        served?;
        Ok(())
    })
}

/// `mallquest run` and `rebuild`: the service until SIGINT or SIGTERM.
fn run_service(config: Config, start: kafka::Start) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("failed to start the runtime")?;
    runtime.block_on(async {
        let shutdown = Shutdown::new();
        let signals = tokio::spawn(shutdown.clone().on_signal());
        let result = service::run(config, start, shutdown).await;
        signals.abort();
        result?;
        Ok(())
    })
}

/// `mallquest whatif`: checks every input before folding, then writes the report where
/// asked and prints its headline figures.
fn whatif(
    config: &std::path::Path,
    rules: &std::path::Path,
    from: Option<&str>,
    to: Option<&str>,
    out: Option<std::path::PathBuf>,
    json: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let live = Config::load(config)?;
    let proposed = Config::load(rules).context("the proposed rules (--rules) are not valid")?;
    let instant = |flag: &str, t: Option<&str>| -> anyhow::Result<_> {
        t.map(|t| {
            mallquest::domain::Timestamp::parse_rfc3339(t)
                .ok_or_else(|| anyhow::anyhow!("{flag} {t:?} is not an RFC 3339 instant with an offset (2026-11-01T00:00:00+04:00)"))
        })
        .transpose()
    };
    let opts = whatif::Options {
        live,
        proposed,
        from: instant("--from", from)?,
        to: instant("--to", to)?,
        progress: std::io::stderr().is_terminal(),
    };
    let report = whatif::run(&opts)?;
    if let Some(path) = &json {
        let body = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, body)
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    if let Some(path) = &out {
        std::fs::write(path, whatif::html::render(&report))
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    print!("{}", whatif::summary(&report));
    Ok(())
}

/// jemalloc instead of glibc's malloc: the fold allocates small, short-lived keys and
/// values per receipt, and glibc's allocator took about 18% of the fold thread's time.
/// Side by side (docs/benchmarks-history.md 1) the fold ran 1.34x faster with jemalloc,
/// for 11% more peak RSS; mimalloc ran 1.4x faster for 32% more.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use mallquest::service::{self, Shutdown};
use mallquest::store::Store;
use mallquest::{codec, demo, kafka, simulate, snapshot, whatif};
use tracing_subscriber::EnvFilter;

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
        Command::Run { config } => run_service(Config::load(&config)?, kafka::Start::Normal),
        Command::Rebuild { config } => run_service(Config::load(&config)?, kafka::Start::Rebuild),
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
            let config = match (config, plain) {
                (Some(p), _) => Config::load(&p)?,
                (None, true) => Config::default(),
                (None, false) => Config::parse(demo::DEMO_GAME)?,
            };
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
            };
            let summary = demo::run(&config, &opts, true)?;
            print!("{summary}");
            match (serve, &summary.store) {
                (Some(listen), Some(store)) => serve_demo(&config, Arc::clone(store), &listen),
                _ => Ok(()),
            }
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
            let config = match config {
                Some(p) => Config::load(&p)?,
                None => Config::default(),
            };
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
            };
            let summary = demo::run(&config, &opts, !json && std::io::stderr().is_terminal())?;
            print!("{}", demo::BenchReport(&summary, json));
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
                    redemptions: 0,
                },
            };
            let (n, secs) = simulate::run(&opts)?;
            println!(
                "published {n} receipts in {secs:.2} s = {:.0} receipts/s",
                n as f64 / secs.max(1e-9)
            );
            Ok(())
        }
        Command::Snapshot { action } => {
            let started = std::time::Instant::now();
            let (verb, counts) = match action {
                SnapshotAction::Export { file, config } => {
                    let config = Config::load(&config)?;
                    let counts = snapshot::export(
                        &config.store.path,
                        &file,
                        config.processing.dedup_window_days,
                    )?;
                    ("exported", counts)
                }
                SnapshotAction::Import { file, config } => {
                    let config = Config::load(&config)?;
                    ("imported", snapshot::import(&file, &config.store.path)?)
                }
            };
            println!(
                "{verb} {} users, {} ledger entries, {} offsets, {} marks in {:.2} s",
                counts.users,
                counts.ledger,
                counts.offsets,
                counts.marks,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Whatif {
            config,
            rules,
            from,
            to,
            out,
            json,
        } => whatif(&config, &rules, from.as_deref(), to.as_deref(), out, json),
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

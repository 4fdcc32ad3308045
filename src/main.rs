//! The `mallquest` binary: parse, load, run; errors printed with their causes.

use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use mallquest::cli::{Cli, Command, SnapshotAction};
use mallquest::config::Config;
use mallquest::status::Status;

/// Serves the query API on a demo's store until Ctrl-C (standalone: every partition).
fn serve_demo(config: &Config, store: Arc<Store>, listen: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("failed to start the runtime")?;
    runtime.block_on(async {
        let status = Arc::new(Status::default());
        status.committed(&store.offsets()?);
        let app = http::router(
            http::AppState {
                store,
                status,
                metrics: None,
                token: config.http.token.as_deref().map(Arc::from),
                forward_timeout: Duration::from_millis(config.http.forward_timeout_ms),
                calendar: config.rules.calendar(),
                levels: config.rules.level_scale(),
            },
            Duration::from_millis(config.http.request_timeout_ms),
        );
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("failed to listen on {listen}"))?;
        println!("\nServing the demo store on http://{listen} until Ctrl-C.");
        http::serve(
            listener,
            app,
            http::Limits {
                head_timeout: Duration::from_millis(config.http.request_timeout_ms),
                max_connections: config.http.max_connections,
            },
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
        )
        .await?;
        Ok(())
    })
}

/// jemalloc instead of glibc's malloc: the fold allocates small, short-lived keys and
/// values per receipt, and glibc's allocator took about 18% of the fold thread's time.
/// Side by side (docs/benchmarks-history.md 1) the fold ran 1.34x faster with jemalloc,
/// for 11% more peak RSS; mimalloc ran 1.4x faster for 32% more.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use mallquest::store::Store;
use mallquest::{codec, demo, http, kafka, shutdown, simulate, snapshot, telemetry};
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
        Command::Run { config } => {
            let config = Config::load(&config)?;
            let runtime = tokio::runtime::Runtime::new().context("failed to start the runtime")?;
            runtime.block_on(run(config, kafka::Start::Normal))
        }
        Command::Rebuild { config } => {
            let config = Config::load(&config)?;
            let runtime = tokio::runtime::Runtime::new().context("failed to start the runtime")?;
            runtime.block_on(run(config, kafka::Start::Rebuild))
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

/// Drops ledger entries older than the dedup window every `every`, off the fold's thread.
async fn compact_ledger(store: Arc<Store>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await; // the first tick is immediate: skip it
    loop {
        tick.tick().await;
        let store = Arc::clone(&store);
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || store.compact_ledger()).await {
            Ok(Ok(())) => tracing::info!(
                message = "Compacted the ledger.",
                took_ms = started.elapsed().as_millis() as u64
            ),
            Ok(Err(e)) => tracing::warn!(message = "Ledger compaction failed.", error = %e),
            Err(e) => tracing::warn!(message = "Ledger compaction panicked.", error = %e),
        }
    }
}

async fn run(config: Config, start: kafka::Start) -> anyhow::Result<()> {
    let metrics =
        telemetry::install_prometheus().context("failed to install the metrics recorder")?;
    let upkeep = metrics.clone();
    // Upkeep drains histogram buckets so that they cannot grow without bound.
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let store = Arc::new(
        Store::open_with_memory(
            &config.store.path,
            config.store.cache_mb << 20,
            config.store.write_buffer_mb << 20,
        )
        .with_context(|| {
            format!(
            "the store at {} cannot be used: restore it from a backup, or move it aside and run \
             `mallquest rebuild` to refold the receipts topic",
            config.store.path.display()
        )
        })?,
    );
    store.set_periods_kept(config.processing.periods_kept);
    let status = Arc::new(Status::default());
    // Before the API serves anything: until the group assigns partitions, this instance
    // holds none, whatever its store has (it is not a standalone `serve`).
    status.set_grouped();
    let listener = tokio::net::TcpListener::bind(&config.http.listen)
        .await
        .with_context(|| format!("failed to listen on {}", config.http.listen))?;
    let app = http::router(
        http::AppState {
            store: Arc::clone(&store),
            status: Arc::clone(&status),
            metrics: Some(metrics),
            token: config.http.token.as_deref().map(Arc::from),
            forward_timeout: Duration::from_millis(config.http.forward_timeout_ms),
            calendar: config.rules.calendar(),
            levels: config.rules.level_scale(),
        },
        Duration::from_millis(config.http.request_timeout_ms),
    );
    tracing::info!(message = "Serving the query API.", listen = %config.http.listen);
    let (stop_http, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(
        listener,
        app,
        http::Limits {
            head_timeout: Duration::from_millis(config.http.request_timeout_ms),
            max_connections: config.http.max_connections,
        },
        async move {
            let _ = stopped.await;
        },
    ));

    if config.store.compact_every_minutes > 0 {
        tokio::spawn(compact_ledger(
            Arc::clone(&store),
            Duration::from_secs(config.store.compact_every_minutes * 60),
        ));
    }
    let flag = Arc::new(AtomicBool::new(false));
    tokio::spawn(shutdown::on_signal(Arc::clone(&flag)));
    store.stop_stalls_on(Arc::clone(&flag));
    let reached = {
        let (kafka, status, flag) = (config.kafka.clone(), Arc::clone(&status), Arc::clone(&flag));
        tokio::task::spawn_blocking(move || kafka::wait_for_brokers(&kafka, &status, &flag))
            .await
            .context("the broker probe panicked")??
    };
    if !reached {
        let _ = stop_http.send(());
        return Ok(());
    }
    kafka::ensure_output_topics(&config.kafka).await?;
    let worker =
        tokio::task::spawn_blocking(move || kafka::run(&config, store, status, &flag, start));
    let result = worker.await.context("the consumer thread panicked")?;
    let _ = stop_http.send(());
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => tracing::warn!(message = "HTTP server error.", error = %e),
        Ok(_) => {}
        Err(_) => tracing::warn!(message = "HTTP requests still running at exit."),
    }
    result
}

//! The subcommands of the binary, one function each: what `main.rs` dispatches to. Each
//! loads what it needs, calls the library and prints; errors are `anyhow`, with context,
//! here in the binary only.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use mallquest::cli::SnapshotAction;
use mallquest::config::Config;
use mallquest::service::{self, Shutdown};
use mallquest::store::Store;
use mallquest::{codec, demo, kafka, simulate, snapshot, whatif};

/// `mallquest run` and `rebuild`: the service until SIGINT or SIGTERM.
pub(crate) fn run_service(config: Config, start: kafka::Start) -> anyhow::Result<()> {
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

/// `mallquest demo`: the simulated game folded in-process, its summary printed, then the
/// API on its store with `--serve`.
pub(crate) fn demo(
    opts: demo::DemoOptions,
    config: Option<PathBuf>,
    serve: Option<String>,
) -> anyhow::Result<()> {
    let config = match (config, opts.plain) {
        (Some(p), _) => Config::load(&p)?,
        (None, true) => Config::default(),
        (None, false) => Config::parse(demo::DEMO_GAME)?,
    };
    let summary = demo::run(&config, &opts, true)?;
    print!("{summary}");
    match (serve, &summary.store) {
        (Some(listen), Some(store)) => serve_demo(&config, Arc::clone(store), &listen),
        _ => Ok(()),
    }
}

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

/// `mallquest bench`: the fold engine alone, its figures printed.
pub(crate) fn bench(
    opts: &demo::DemoOptions,
    config: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    let config = match config {
        Some(p) => Config::load(&p)?,
        None => Config::default(),
    };
    let summary = demo::run(&config, opts, !json && std::io::stderr().is_terminal())?;
    print!("{}", demo::BenchReport(&summary, json));
    Ok(())
}

/// `mallquest simulate`: simulated receipts published, the rate printed.
pub(crate) fn simulate(opts: &simulate::SimulateOptions) -> anyhow::Result<()> {
    let (n, secs) = simulate::run(opts)?;
    println!(
        "published {n} receipts in {secs:.2} s = {:.0} receipts/s",
        n as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// `mallquest snapshot export|import`.
pub(crate) fn snapshot(action: SnapshotAction) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let (verb, counts) = match action {
        SnapshotAction::Export { file, config } => {
            let config = Config::load(&config)?;
            let window = config.processing.dedup_window_days;
            (
                "exported",
                snapshot::export(&config.store.path, &file, window)?,
            )
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

/// `mallquest whatif`: checks every input before folding, then writes the report where
/// asked and prints its headline figures.
pub(crate) fn whatif(
    config: &Path,
    rules: &Path,
    from: Option<&str>,
    to: Option<&str>,
    out: Option<PathBuf>,
    json: Option<PathBuf>,
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

/// `mallquest dump`: every stored projection as JSON lines.
pub(crate) fn dump(config: &Path) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let store = Store::open(&config.store.path)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for u in store.users() {
        out.write_all(&codec::encode_projection(&u?))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

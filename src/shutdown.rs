//! Signal handling: SIGINT or SIGTERM sets a flag; the consumer loop finishes the batch
//! in hand, commits it and returns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tracing::info;

/// Waits for SIGINT or SIGTERM, then sets `flag`.
pub async fn on_signal(flag: Arc<AtomicBool>) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        () = term => {},
    }
    info!(message = "Shutdown requested; finishing the batch in hand.");
    flag.store(true, Ordering::Relaxed);
}

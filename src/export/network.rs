//! Network changes, as a signal to retry now: a laptop that joins a Wi-Fi network or brings up
//! its VPN gets a new local address, and data waiting out a backoff should go at once rather than
//! minutes later.
//!
//! One watcher per process (the network is the machine's, not a destination's), on its own
//! thread with a single-threaded runtime, so it outlives any one agent or test runtime. It is
//! event-driven (`if-watch`: rtnetlink on Linux, SCDynamicStore on macOS): an idle agent is not
//! woken by it. If the watcher cannot start, retries simply wait out their backoff (logged once).
//!
//! Owns no data and knows nothing of destinations: it only bumps a counter that waiting
//! workers watch ([`changes`]).

use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::watch;
use tokio_stream::StreamExt;

/// A receiver that sees a change each time a new local address appears after it subscribed.
pub fn changes() -> watch::Receiver<u64> {
    static CHANGES: OnceLock<watch::Sender<u64>> = OnceLock::new();
    CHANGES
        .get_or_init(|| {
            let (tx, _) = watch::channel(0);
            let sender = tx.clone();
            let started = std::thread::Builder::new()
                .name("otlp-spool-network".into())
                .spawn(move || {
                    if let Err(e) = watch_addresses(&sender) {
                        tracing::warn!(error = %e, "cannot watch for network changes; retries wait out their backoff");
                    }
                });
            if let Err(e) = started {
                tracing::warn!(error = %e, "cannot watch for network changes; retries wait out their backoff");
            }
            tx
        })
        .subscribe()
}

/// How long the start-up report of existing addresses may pause before it counts as finished.
const INITIAL_DUMP_QUIET: Duration = Duration::from_millis(200);

/// Bumps `changes` for each new address, for as long as the watcher works.
fn watch_addresses(changes: &watch::Sender<u64>) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    runtime.block_on(async {
        let mut watcher = if_watch::tokio::IfWatcher::new()?;
        // The watcher first reports every address the machine has; those are not changes.
        // They arrive at once (a local dump), so what comes before a short quiet spell is them.
        while let Ok(Some(_)) = tokio::time::timeout(INITIAL_DUMP_QUIET, watcher.next()).await {}
        while let Some(event) = watcher.next().await {
            match event? {
                if_watch::IfEvent::Up(net) => {
                    tracing::debug!(%net, "a new local address: waiting retries go now");
                    changes.send_modify(|n| *n += 1);
                }
                // Losing an address is no reason to retry.
                if_watch::IfEvent::Down(_) => {}
            }
        }
        Ok(())
    })
}

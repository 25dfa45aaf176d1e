//! otlp-spool: a store-and-forward OpenTelemetry agent.
//!
//! ```text
//! client ─HTTP/gRPC─▶ receiver ─append+fsync─▶ spool (segments + sled index) ◀─read/ack─ export worker ─▶ upstream
//! ```
//!
//! [`Agent::start`] wires the three stages from a [`config::Config`]: it opens the spool, binds
//! the listeners, and starts one export worker per destination and signal. `main.rs` and the
//! end-to-end tests both start the agent through it. Data flows one way; each stage is a module
//! with a narrow API ([`receiver`], [`spool`], [`export`]), and [`observe`] only counts.

pub mod aws;
pub mod config;
pub mod dead_letters;
pub mod error;
pub mod export;
pub mod observe;
pub mod otlp;
pub mod receiver;
pub mod redact;
pub mod spool;
pub mod tables;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use config::{Config, Destination, DestinationName};
use export::worker::Worker;
use export::Upstream;
use observe::{DestinationStats, Stats};
use receiver::grpc::GrpcReceiver;
use receiver::http::HttpReceiver;
use receiver::Ingest;
use redact::Redactor;
use spool::{Limits, Spool};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Spool(#[from] spool::OpenError),
    #[error("cannot listen on {addr}: {source}{hint}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("{0}")]
    Destination(String),
}

/// A running agent. Dropping it without [`Agent::shutdown`] stops it abruptly (as a crash would:
/// nothing acknowledged is lost).
pub struct Agent {
    http_addrs: Vec<SocketAddr>,
    grpc_addrs: Vec<SocketAddr>,
    spool: Spool,
    stats: Arc<Stats>,
    /// The config the agent started with, updated by [`Agent::reload`] (destinations only).
    config: Config,
    destinations: Vec<RunningDestination>,
    stop: CancellationToken,
    servers: JoinSet<()>,
    background: JoinSet<()>,
}

/// The export workers of one destination, stoppable on their own when a reload removes or
/// changes it.
struct RunningDestination {
    name: DestinationName,
    stop: CancellationToken,
    workers: JoinSet<()>,
}

/// What a reload does to the running destinations, decided before anything is done. A
/// destination is known by its name; one whose settings changed is stopped and started again.
struct ReloadPlan<'a> {
    /// In the new config with the same settings: their workers go on.
    keep: Vec<&'a Destination>,
    /// In the new config, new or changed: built, then started.
    start: Vec<&'a Destination>,
    /// Running, and removed or changed: stopped before the new routes apply.
    stop: Vec<&'a DestinationName>,
}

impl<'a> ReloadPlan<'a> {
    fn new(running: &'a [Destination], new: &'a [Destination]) -> ReloadPlan<'a> {
        let (keep, start): (Vec<_>, Vec<_>) = new.iter().partition(|d| running.contains(d));
        let stop = running
            .iter()
            .filter(|d| !keep.contains(d))
            .map(|d| &d.name)
            .collect();
        ReloadPlan { keep, start, stop }
    }

    /// The names added, changed and removed, for the log.
    fn changes(&self, running: &[Destination]) -> (Vec<&'a str>, Vec<&'a str>, Vec<&'a str>) {
        let was_running = |name: &DestinationName| running.iter().any(|d| d.name == *name);
        let (changed, added): (Vec<_>, Vec<_>) = self
            .start
            .iter()
            .map(|d| &d.name)
            .partition(|name| was_running(name));
        let removed = self
            .stop
            .iter()
            .filter(|name| !self.start.iter().any(|d| d.name == ***name))
            .map(|name| name.as_str())
            .collect();
        let names = |v: Vec<&'a DestinationName>| v.into_iter().map(|n| n.as_str()).collect();
        (names(added), names(changed), removed)
    }
}

impl Agent {
    /// Opens the spool, binds every listen address, and starts the receivers and workers.
    pub async fn start(config: Config) -> Result<Agent, StartError> {
        let limits = Limits::from(&config.spool);
        let spool = Spool::open(&config.spool.dir, limits, routes(&config))?;
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
        let mut destinations = Vec::new();
        let mut destination_stats = Vec::new();
        for d in &config.destinations {
            let built = Built::new(d, &spool).map_err(StartError::Destination)?;
            let (running, d_stats) = start_destination(d, built, &spool, &stats, &stop);
            destinations.push(running);
            destination_stats.push(d_stats);
        }
        stats.set_destinations(destination_stats);
        let mut background = JoinSet::new();
        {
            let spool = spool.clone();
            let stop = stop.clone();
            background.spawn(async move {
                tokio::select! {
                    _ = spool.expire_forever() => {}
                    _ = stop.cancelled() => {}
                }
            });
        }

        let http_listeners = bind_all(&config.server.listen.0).await?;
        let grpc_listeners = bind_all(&config.server.grpc_listen.0).await?;
        let local = |ls: &[TcpListener]| {
            ls.iter()
                .filter_map(|l| l.local_addr().ok())
                .collect::<Vec<_>>()
        };
        let (http_addrs, grpc_addrs) = (local(&http_listeners), local(&grpc_listeners));
        let ingest = Ingest {
            spool: spool.clone(),
            stats: Arc::clone(&stats),
        };
        let auth_token = config
            .server
            .auth_token
            .as_ref()
            .map(|t| t.expose().to_string());
        let http = Arc::new(HttpReceiver {
            ingest: ingest.clone(),
            max_body: config.server.max_body.0,
            max_decompressed: config.server.max_decompressed.0,
            auth_token: auth_token.clone(),
        });
        let grpc = Arc::new(GrpcReceiver {
            ingest,
            max_body: config.server.max_body.0,
            max_decompressed: config.server.max_decompressed.0,
            auth_token,
        });
        let mut servers = JoinSet::new();
        for listener in http_listeners {
            servers.spawn(Arc::clone(&http).serve(listener, stop.clone()));
        }
        for listener in grpc_listeners {
            servers.spawn(Arc::clone(&grpc).serve(listener, stop.clone()));
        }
        warn_if_holding(&config);
        tracing::info!(listen = ?http_addrs, grpc_listen = ?grpc_addrs, spool = %spool.dir().display(), destinations = config.destinations.len(), "otlp-spool is running");
        Ok(Agent {
            http_addrs,
            grpc_addrs,
            spool,
            stats,
            config,
            destinations,
            stop,
            servers,
            background,
        })
    }

    /// Applies a new config's destinations without a restart (SIGHUP). A destination is known
    /// by its name, which keys its cursors in the spool:
    /// - an added name starts from the oldest record the spool holds;
    /// - a removed name's workers stop and its cursors are forgotten (records only it still
    ///   needed are deleted); if it comes back later it starts from the oldest held record;
    /// - a changed destination (any key but its name) restarts its workers, which continue from
    ///   its cursors: a batch in flight at that moment may be sent twice, never lost;
    /// - a signal dropped from a destination's `signals` forgets that signal's cursor.
    ///
    /// `server` and `spool` keys take effect at the next restart. If a new destination cannot
    /// be built, nothing changes and the error is returned.
    pub async fn reload(&mut self, config: Config) -> Result<(), StartError> {
        let needs_restart: Vec<&str> = [
            ("server", self.config.server != config.server),
            ("spool", self.config.spool != config.spool),
        ]
        .into_iter()
        .filter_map(|(section, differs)| differs.then_some(section))
        .collect();
        let plan = ReloadPlan::new(&self.config.destinations, &config.destinations);
        // Build every new upstream and redactor before stopping anything: a bad one leaves all
        // as it was.
        // Building reads nothing the old workers may still change (see `prw::cumulative`).
        let built = plan
            .start
            .iter()
            .map(|d| Built::new(d, &self.spool))
            .collect::<Result<Vec<_>, _>>()
            .map_err(StartError::Destination)?;
        // Stopped workers are awaited before the cursors change, so none acks afterwards.
        let (mut kept, stopped): (Vec<_>, Vec<_>) = std::mem::take(&mut self.destinations)
            .into_iter()
            .partition(|r| !plan.stop.contains(&&r.name));
        for mut r in stopped {
            r.stop.cancel();
            while r.workers.join_next().await.is_some() {}
        }
        if let Err(e) = self.spool.reroute(routes(&config)) {
            // The new routes hold in memory; the cursors are forgotten at the next restart.
            tracing::error!(error = %e, "saving the new destinations' cursors failed");
        }
        let mut destination_stats: Vec<DestinationStats> = plan
            .keep
            .iter()
            .map(|d| destination_stats_of(d, &self.stats))
            .collect();
        for (d, built) in plan.start.iter().zip(built) {
            let (running, d_stats) =
                start_destination(d, built, &self.spool, &self.stats, &self.stop);
            kept.push(running);
            destination_stats.push(d_stats);
        }
        self.destinations = kept;
        // `status` lists destinations in the config's order.
        destination_stats.sort_by_key(|s| {
            config
                .destinations
                .iter()
                .position(|d| d.name.as_str() == s.name)
        });
        self.stats.set_destinations(destination_stats);
        let (added, changed, removed) = plan.changes(&self.config.destinations);
        tracing::info!(
            ?added,
            ?removed,
            ?changed,
            unchanged = plan.keep.len(),
            "config reloaded"
        );
        if !needs_restart.is_empty() {
            tracing::warn!(sections = ?needs_restart, "these config sections changed and take effect only at the next restart");
        }
        self.config.destinations = config.destinations;
        warn_if_holding(&self.config);
        Ok(())
    }

    /// The bound OTLP/HTTP addresses (with real ports when the config said port 0).
    pub fn http_addrs(&self) -> &[SocketAddr] {
        &self.http_addrs
    }

    /// The bound OTLP/gRPC addresses (empty when gRPC is disabled).
    pub fn grpc_addrs(&self) -> &[SocketAddr] {
        &self.grpc_addrs
    }

    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// The `/status` document, for in-process callers (tests).
    pub fn status(&self) -> serde_json::Value {
        self.stats.status(&self.spool)
    }

    /// Stops accepting, lets in-flight requests finish (they are acknowledged only once
    /// durable), stops the workers, and flushes the spool.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        while self.servers.join_next().await.is_some() {}
        for mut d in self.destinations.drain(..) {
            while d.workers.join_next().await.is_some() {}
        }
        while self.background.join_next().await.is_some() {}
    }
}

/// Which destinations read each signal.
pub fn routes(config: &Config) -> spool::Routes {
    let mut routes: spool::Routes = Default::default();
    for d in &config.destinations {
        for s in &d.signals {
            routes[*s].push(d.name.to_string());
        }
    }
    routes
}

fn warn_if_holding(config: &Config) {
    if config.destinations.is_empty() {
        tracing::warn!("{}", observe::HOLDING);
    }
}

/// What a destination's workers share: its client and its redaction rules.
struct Built {
    upstream: Upstream,
    redactor: Option<Arc<Redactor>>,
}

impl Built {
    fn new(d: &Destination, spool: &Spool) -> Result<Built, String> {
        let redactor = match &d.redact {
            Some(r) => {
                Some(Arc::new(Redactor::new(r).map_err(|e| {
                    format!("destination {:?}: {e}", d.name.as_str())
                })?))
            }
            None => None,
        };
        Ok(Built {
            upstream: Upstream::new(d, spool)?,
            redactor,
        })
    }
}

/// Starts one worker per signal of `d`, sending through its client and redaction rules, each
/// stopping with the agent or on its own.
fn start_destination(
    d: &Destination,
    Built { upstream, redactor }: Built,
    spool: &Spool,
    stats: &Stats,
    agent_stop: &CancellationToken,
) -> (RunningDestination, DestinationStats) {
    let upstream = Arc::new(upstream);
    let stop = agent_stop.child_token();
    let mut workers = JoinSet::new();
    let mut d_stats = destination_stats_of(d, stats);
    if let Upstream::PrometheusRemoteWrite(prw) = upstream.as_ref() {
        d_stats.remote_write = Some(prw.stats());
    }
    for (signal, worker_stats) in &d_stats.workers {
        let worker = Worker {
            destination: d.name.to_string(),
            signal: *signal,
            spool: spool.clone(),
            upstream: Arc::clone(&upstream),
            redactor: redactor.clone(),
            batch: d.batch_for(*signal),
            retry: (&d.retry).into(),
            stats: Arc::clone(worker_stats),
        };
        workers.spawn(worker.run(stop.clone()));
    }
    let running = RunningDestination {
        name: d.name.clone(),
        stop,
        workers,
    };
    (running, d_stats)
}

/// The counters of `d`'s workers: the running ones' (across a reload), or new ones.
fn destination_stats_of(d: &Destination, stats: &Stats) -> DestinationStats {
    DestinationStats {
        name: d.name.to_string(),
        kind: d.type_name(),
        endpoint: d.endpoint_display(),
        workers: d
            .signals
            .iter()
            .map(|&s| (s, stats.worker(d.name.as_str(), s).unwrap_or_default()))
            .collect(),
        remote_write: stats.remote_write(d.name.as_str()),
    }
}

/// Binds every address. An address the machine does not have (IPv6 loopback disabled) is skipped
/// with a warning as long as another one bound; anything else is an error.
async fn bind_all(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, StartError> {
    let mut listeners = Vec::new();
    let mut unavailable = Vec::new();
    for &addr in addrs {
        match TcpListener::bind(addr).await {
            Ok(l) => listeners.push(l),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrNotAvailable
                    || e.raw_os_error() == Some(97) =>
            {
                unavailable.push((addr, e))
            }
            Err(e) => {
                let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                    "; another program (an otlp-spool or an OpenTelemetry Collector?) is listening there: stop it, or change server.listen / server.grpc_listen"
                } else {
                    ""
                };
                return Err(StartError::Listen {
                    addr,
                    source: e,
                    hint,
                });
            }
        }
    }
    for (addr, e) in unavailable {
        if listeners.is_empty() {
            return Err(StartError::Listen {
                addr,
                source: e,
                hint: "; this machine has no such address",
            });
        }
        tracing::warn!(%addr, error = %e, "skipping a listen address this machine does not have");
    }
    Ok(listeners)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn destinations(blocks: &[(&str, &str)]) -> Vec<Destination> {
        let text: String = blocks
            .iter()
            .map(|(name, timeout)| {
                format!(
                    "[[destination]]\nname = \"{name}\"\ntype = \"otlp_http\"\n\
                     endpoint = \"http://127.0.0.1:9\"\ntimeout = \"{timeout}\"\n"
                )
            })
            .collect();
        Config::parse(&text).unwrap().destinations
    }

    #[test]
    fn a_reload_plan_keeps_the_unchanged_and_restarts_the_changed() {
        let running = destinations(&[("a", "1s"), ("b", "1s"), ("c", "1s")]);
        let new = destinations(&[("d", "1s"), ("b", "2s"), ("a", "1s")]);
        let plan = ReloadPlan::new(&running, &new);
        fn names<'a>(v: &[&'a Destination]) -> Vec<&'a str> {
            v.iter().map(|d| d.name.as_str()).collect()
        }
        assert_eq!(names(&plan.keep), ["a"]);
        assert_eq!(names(&plan.start), ["d", "b"]);
        let stop: Vec<&str> = plan.stop.iter().map(|n| n.as_str()).collect();
        assert_eq!(stop, ["b", "c"]);
        let (added, changed, removed) = plan.changes(&running);
        assert_eq!((added, changed, removed), (vec!["d"], vec!["b"], vec!["c"]));
    }
}

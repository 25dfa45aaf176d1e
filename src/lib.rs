//! otlp-spool: a store-and-forward OpenTelemetry agent.
//!
//! ```text
//! client ─HTTP/gRPC─▶ receiver ─append+fsync─▶ spool (sled) ◀─read/ack─ export worker ─▶ upstream
//! ```
//!
//! [`Agent::start`] wires the three stages from a [`config::Config`]: it opens the spool, binds
//! the listeners, and starts one export worker per destination and signal. `main.rs` and the
//! end-to-end tests both start the agent through it. Data flows one way; each stage is a module
//! with a narrow API ([`receiver`], [`spool`], [`export`]), and [`observe`] only counts.

pub mod aws;
pub mod config;
pub mod export;
pub mod observe;
pub mod otlp;
pub mod receiver;
pub mod spool;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use config::Config;
use export::worker::Worker;
use export::Upstream;
use observe::{DestinationStats, Stats, WorkerStats};
use receiver::grpc::GrpcReceiver;
use receiver::http::HttpReceiver;
use receiver::Ingest;
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
    stop: CancellationToken,
    servers: JoinSet<()>,
    background: JoinSet<()>,
}

impl Agent {
    /// Opens the spool, binds every listen address, and starts the receivers and workers.
    pub async fn start(config: Config) -> Result<Agent, StartError> {
        let mut routes: spool::Routes = Default::default();
        for d in &config.destinations {
            for s in &d.signals {
                routes[s.index()].push(d.name.to_string());
            }
        }
        let limits = Limits::from(&config.spool);
        let spool = Spool::open(&config.spool.dir, limits, routes)?;

        let stop = CancellationToken::new();
        let mut background = JoinSet::new();
        let mut destination_stats = Vec::new();
        for d in &config.destinations {
            let upstream = Arc::new(Upstream::new(d, &spool).map_err(StartError::Destination)?);
            let mut workers = Vec::new();
            for &signal in &d.signals {
                let stats = Arc::new(WorkerStats::default());
                workers.push((signal, Arc::clone(&stats)));
                let worker = Worker {
                    destination: d.name.to_string(),
                    signal,
                    spool: spool.clone(),
                    upstream: Arc::clone(&upstream),
                    batch: d.batch_for(signal),
                    retry: (&d.retry).into(),
                    stats,
                };
                background.spawn(worker.run(stop.clone()));
            }
            destination_stats.push(DestinationStats {
                name: d.name.to_string(),
                kind: d.kind.name(),
                endpoint: d.endpoint_display(),
                workers,
            });
        }
        let stats = Arc::new(Stats::new(destination_stats));
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
        if config.destinations.is_empty() {
            tracing::warn!(
                "no destination is configured: holding received data in the spool (bounded by spool.max_bytes and spool.max_age) until one is added"
            );
        }
        tracing::info!(listen = ?http_addrs, grpc_listen = ?grpc_addrs, spool = %spool.dir().display(), destinations = config.destinations.len(), "otlp-spool is running");
        Ok(Agent {
            http_addrs,
            grpc_addrs,
            spool,
            stats,
            stop,
            servers,
            background,
        })
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
        while self.background.join_next().await.is_some() {}
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

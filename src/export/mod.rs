//! The exporting side: one [`worker`] per destination and signal reads the spool from its
//! cursor, batches stored records, sends them through the destination's client
//! ([`otlp_http`], which [`cloudwatch`] configures with AWS routes and signing; [`prw`] for
//! Prometheus remote write), and acknowledges what the upstream accepted. Every client talks
//! HTTP through [`http`] (one client builder, no redirects, a capped response body).
//!
//! Invariant: a cursor moves past a record only once the upstream accepted it, or refused it as
//! malformed (then it is dead-lettered first). This module never writes records and never
//! touches the receiver; the only spool state it writes besides cursors and dead letters is
//! [`prw`]'s delta totals, in that destination's own state tree.

pub mod cloudwatch;
pub mod http;
mod network;
pub mod otlp_http;
pub mod prw;
pub mod retry;
pub mod worker;

use std::time::Duration;

use crate::config::{Destination, Kind};
use crate::otlp::Signal;
use crate::spool::Spool;
use otlp_http::OtlpHttp;
use prw::PrometheusRemoteWrite;

/// A destination's client, one variant per destination type: it makes one attempt at sending
/// one batch (canonical OTLP protobuf) and classifies the answer. Retrying, splitting and
/// acknowledging are the worker's, the same for every type.
// One per destination, built once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Upstream {
    OtlpHttp(OtlpHttp),
    PrometheusRemoteWrite(PrometheusRemoteWrite),
}

impl Upstream {
    /// `spool` is for destinations that keep state there (`prometheus_remote_write`'s delta
    /// totals); the others do not touch it.
    pub fn new(destination: &Destination, spool: &Spool) -> Result<Upstream, String> {
        match &destination.kind {
            Kind::OtlpHttp(otlp) => OtlpHttp::new(destination, otlp).map(Upstream::OtlpHttp),
            // CloudWatch is OTLP/HTTP with per-signal AWS routes: the same client and variant.
            Kind::Cloudwatch(cloudwatch) => {
                cloudwatch::new(destination, cloudwatch).map(Upstream::OtlpHttp)
            }
            Kind::PrometheusRemoteWrite(remote_write) => {
                PrometheusRemoteWrite::new(destination, remote_write, spool)
                    .map(Upstream::PrometheusRemoteWrite)
            }
        }
    }

    /// One attempt at sending `payload`, which came from `source` (only a destination that
    /// keeps state per spool position reads it: `prometheus_remote_write`).
    pub async fn send(&self, signal: Signal, payload: &[u8], source: Source<'_>) -> Outcome {
        match self {
            Upstream::OtlpHttp(u) => u.send(signal, payload).await,
            Upstream::PrometheusRemoteWrite(u) => u.send(signal, payload, source).await,
        }
    }
}

/// Where the bytes given to [`Upstream::send`] came from in the spool.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// Records of the signal's stream, concatenated into a batch: each record's sequence
    /// number and the index in the batch of its first resource (in order; a record with no
    /// resource has the index its successor's first resource would have); `first_resource` is
    /// the index in the batch of the payload's first resource (a piece of a batch split on
    /// 413). Counted in resources, not bytes, so redaction (which keeps every resource in its
    /// order) changes nothing here.
    Stream {
        records: &'a [(u64, usize)],
        first_resource: usize,
    },
    /// A dead letter replayed: data whose positions were settled when it was refused.
    Replay,
}

/// What one upstream attempt came to.
#[derive(Debug)]
pub enum Outcome {
    /// Accepted; `rejected_items` > 0 is an OTLP partial success.
    Delivered {
        rejected_items: u64,
        message: String,
    },
    /// Worth retrying: connection failure, timeout, 408, 429, 5xx.
    Retry {
        retry_after: Option<Duration>,
        error: String,
    },
    /// 401/403: the credentials are refused. Keep the data, retry slowly.
    AuthFailed(String),
    /// A failure only a change of setting (or of network) fixes: a redirect, an untrusted
    /// certificate, an upstream [`otlp_http::Advice`] says to hold for (a missing log group).
    /// Keep the data, retry slowly.
    Held(String),
    /// 413: the request was too large for the upstream; split it.
    TooLarge(String),
    /// Any other 4xx: the upstream refuses this data; retrying would never succeed.
    Refused(Refusal),
}

/// Why a batch was refused for good: what its dead letter records.
#[derive(Debug)]
pub struct Refusal {
    /// The upstream's HTTP status; `None` when the agent could not send the batch at all.
    pub status: Option<u16>,
    /// The upstream's own message (or, with no status, what the agent found wrong).
    pub message: String,
    /// The whole error as `status` shows it: status, endpoint, message, advice.
    pub error: String,
}

impl Refusal {
    /// A batch the agent refuses to send itself (it cannot be encoded for this upstream).
    pub fn local(error: String) -> Refusal {
        Refusal {
            status: None,
            message: error.clone(),
            error,
        }
    }
}

impl Outcome {
    /// What a non-2xx HTTP status means, the same for OTLP/HTTP and remote write. `message` is
    /// the upstream's own text, `error` the whole error.
    pub fn from_failure_status(
        code: u16,
        retry_after: Option<Duration>,
        message: String,
        error: String,
    ) -> Outcome {
        match code {
            // Not followed (see `http`): the endpoint is wrong, not the data.
            300..=399 => Outcome::Held(error),
            401 | 403 => Outcome::AuthFailed(error),
            413 => Outcome::TooLarge(error),
            408 | 429 | 500..=599 => Outcome::Retry { retry_after, error },
            _ => Outcome::Refused(Refusal {
                status: Some(code),
                message,
                error,
            }),
        }
    }
}

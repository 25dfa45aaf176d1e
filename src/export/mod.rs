//! The exporting side: one [`worker`] per destination and signal reads the spool from its
//! cursor, batches stored records, sends them through the destination's client
//! ([`otlp_http`]), and acknowledges what the upstream accepted.
//!
//! Invariant: a cursor moves past a record only once the upstream accepted it, or refused it as
//! malformed (then it is dead-lettered first). This module never writes records and never
//! touches the receiver.

pub mod otlp_http;
pub mod retry;
pub mod worker;

use std::time::Duration;

use crate::config::{DestinationConfig, DestinationKind};
use crate::otlp::Signal;
use otlp_http::OtlpHttp;

/// A destination's client, one variant per destination type: it makes one attempt at sending
/// one batch (canonical OTLP protobuf) and classifies the answer. Retrying, splitting and
/// acknowledging are the worker's, the same for every type.
pub enum Upstream {
    OtlpHttp(OtlpHttp),
}

impl Upstream {
    pub fn new(config: &DestinationConfig) -> Result<Upstream, String> {
        match config.kind {
            DestinationKind::OtlpHttp => OtlpHttp::new(config).map(Upstream::OtlpHttp),
        }
    }

    pub async fn send(&self, signal: Signal, payload: &[u8]) -> Outcome {
        match self {
            Upstream::OtlpHttp(u) => u.send(signal, payload).await,
        }
    }
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
    /// 413: the request was too large for the upstream; split it.
    TooLarge(String),
    /// Any other 4xx: the upstream refuses this data; retrying would never succeed.
    Refused(String),
}

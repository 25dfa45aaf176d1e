//! The receiving side: transports (OTLP/HTTP in [`http`]) that turn requests into canonical
//! protobuf ([`decode`]) and hand them to [`Ingest::accept`], the one path into the spool.
//!
//! Invariant: a client hears success only after `Ingest::accept` returned, which is after the
//! spool's fsync. Nothing is stored from a request that fails to decode. This module knows
//! nothing of destinations.

pub mod decode;
pub mod grpc;
pub mod http;

use std::sync::Arc;

use crate::observe::{Refusal, Stats, Transport};
use crate::otlp::Signal;
use crate::spool::{AppendError, Spool};

/// How long a client is asked to wait when the spool cannot take its data now.
pub const RETRY_AFTER_SECS: u64 = 5;

/// Limits on a request's head, on both transports. OTel SDKs send about ten short headers; the
/// limits only stop a client from making the agent buffer or parse without end.
pub const MAX_HEADERS: usize = 100;
pub const MAX_HEADER_BYTES: usize = 64 << 10;
/// How long a client may take to send its request headers, and then its body (slow-loris
/// guards; a 16 MiB body on loopback takes milliseconds).
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A refusal as every transport must express it: the HTTP status is the reference; gRPC maps it.
#[derive(Debug)]
pub struct Rejection {
    pub status: u16,
    pub reason: Refusal,
    pub message: String,
}

impl Rejection {
    pub fn new(status: u16, reason: Refusal, message: impl Into<String>) -> Rejection {
        Rejection {
            status,
            reason,
            message: message.into(),
        }
    }
}

/// What a client without the right token is told.
pub const TOKEN_HINT: &str = "missing or wrong token: send \"Authorization: Bearer <server.auth_token>\" or \"x-api-key: <server.auth_token>\"";

/// Whether a request's `x-api-key` or `Authorization: Bearer` header (OTLP/HTTP headers or gRPC
/// metadata) holds the configured token (always, when none is configured). Compared in constant
/// time.
pub fn token_matches(token: Option<&str>, headers: &hyper::HeaderMap) -> bool {
    let Some(token) = token else { return true };
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let (x_api_key, authorization) = (header("x-api-key"), header("authorization"));
    let bearer = authorization.and_then(|v| {
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
    });
    x_api_key.or(bearer).is_some_and(|offered| {
        subtle::ConstantTimeEq::ct_eq(offered.as_bytes(), token.as_bytes()).into()
    })
}

/// The transport-independent tail of every request: count it and store it durably.
#[derive(Clone)]
pub struct Ingest {
    pub spool: Spool,
    pub stats: Arc<Stats>,
}

impl Ingest {
    /// Stores one decoded request and returns once it is durable.
    pub async fn accept(
        &self,
        signal: Signal,
        transport: Transport,
        payload: &[u8],
        items: u64,
    ) -> Result<(), Rejection> {
        if items > 0 {
            // A request carries at most max_decompressed bytes, so its items fit in a u32.
            let items32 = u32::try_from(items).unwrap_or(u32::MAX);
            self.spool
                .append(signal, items32, payload)
                .await
                .map_err(|e| match e {
                    AppendError::Full { .. } => Rejection::new(503, Refusal::Full, e.to_string()),
                    AppendError::TooLarge { .. } => {
                        Rejection::new(413, Refusal::TooLarge, e.to_string())
                    }
                    AppendError::NoSpace { .. } | AppendError::Storage(_) => {
                        Rejection::new(503, Refusal::Storage, e.to_string())
                    }
                })?;
        }
        self.stats
            .received(signal, transport, items, payload.len() as u64);
        Ok(())
    }

    /// Counts a refusal and passes it on.
    pub fn refuse(&self, rejection: Rejection) -> Rejection {
        self.stats.refused(rejection.reason);
        rejection
    }
}

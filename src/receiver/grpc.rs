//! OTLP/gRPC on `server.grpc_listen`: the `Export` calls of `TraceService`, `MetricsService` and
//! `LogsService`, gzip accepted, on tonic's HTTP/2 server.
//!
//! Same path as HTTP below the transport: the token check (gRPC metadata `authorization: Bearer …`
//! or `x-api-key`, checked before the message is read, so an unauthorized peer cannot make the
//! agent inflate one), validation and item counting ([`decode::validate`]), and
//! [`Ingest::accept`]; OK only after the spool's fsync. The request message reaches this file as
//! raw bytes (a pass-through codec, not the generated servers' prost codec), so it is validated
//! here and stored as received, exactly as over HTTP.
//!
//! Refusals use the OTLP/gRPC codes and are all counted: `INVALID_ARGUMENT` for bad data
//! (including bad gzip), `UNAUTHENTICATED`, `RESOURCE_EXHAUSTED` without `RetryInfo` (so clients
//! do not retry) for a message over `max_decompressed` or the wire limit, or larger than the whole
//! spool, and `UNAVAILABLE` with a `google.rpc.RetryInfo` detail when the spool cannot take the
//! data now. tonic refuses an oversized message itself, before any of this runs, with the
//! *retryable* `OUT_OF_RANGE`; that answer is rewritten here.
//!
//! Limits: tonic's decoding limit bounds a message after gunzip, and its compressed frame, at
//! `max_decompressed` (no gzip bombs: tonic inflates into a bounded buffer); the request body on
//! the wire is also cut at `max_body`, as on HTTP. Accept errors (EMFILE) back off instead of spinning; accepted sockets get
//! `TCP_NODELAY`. At shutdown, calls in flight get [`DRAIN_TIMEOUT`], then are answered
//! `UNAVAILABLE` so the server stops and releases the spool. Knows nothing of destinations.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use prost::Message;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, BoxFuture, StdError};
use tonic::{Code, Request, Response, Status};

use super::decode;
use super::{
    token_matches, Ingest, Rejection, BODY_READ_TIMEOUT, HEADER_READ_TIMEOUT, MAX_HEADER_BYTES,
    RETRY_AFTER_SECS, TOKEN_HINT,
};
use crate::observe::{Refusal, Transport};
use crate::otlp::{RpcStatus, Signal};

/// How long calls in flight get to finish at shutdown before they are answered `UNAVAILABLE`.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long accepting pauses after an accept error (out of file descriptors, say).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The gRPC length-prefixed message header: a compressed flag and a 4-byte length.
const FRAME_HEADER: usize = 5;

/// The `Export` method of each signal's service, by HTTP/2 path.
const METHODS: [(&str, Signal); 3] = [
    (
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        Signal::Traces,
    ),
    (
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        Signal::Metrics,
    ),
    (
        "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        Signal::Logs,
    ),
];

pub struct GrpcReceiver {
    pub ingest: Ingest,
    /// `server.max_body`: the request body on the wire.
    pub max_body: u64,
    pub max_decompressed: u64,
    pub auth_token: Option<String>,
}

impl GrpcReceiver {
    /// Serves `listener` until `stop` is cancelled, then lets calls in flight finish (for at most
    /// [`DRAIN_TIMEOUT`]).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        let usize_of = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let force = CancellationToken::new();
        let service = ExportService {
            max_decompressed: usize_of(self.max_decompressed),
            wire_limit: usize_of(self.max_body),
            receiver: self,
            force: force.clone(),
        };
        let incoming = Incoming {
            listener,
            backoff: None,
        };
        let served = tonic::transport::Server::builder()
            .http2_max_header_list_size(MAX_HEADER_BYTES as u32)
            .timeout(HEADER_READ_TIMEOUT + BODY_READ_TIMEOUT)
            // Reaps connections whose peer went away without closing (a laptop lid shut).
            .http2_keepalive_interval(Some(Duration::from_secs(60)))
            .serve_with_incoming_shutdown(service, incoming, stop.clone().cancelled_owned());
        tokio::pin!(served);
        let drained = tokio::select! {
            result = &mut served => Some(result),
            _ = async { stop.cancelled().await; tokio::time::sleep(DRAIN_TIMEOUT).await } => None,
        };
        let result = match drained {
            Some(result) => result,
            None => {
                tracing::warn!(
                    "some gRPC calls were still in flight {DRAIN_TIMEOUT:?} after shutdown began; answering them UNAVAILABLE (their clients will retry)"
                );
                force.cancel();
                match tokio::time::timeout(Duration::from_secs(1), served).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!("gRPC connections did not close at shutdown; leaving them");
                        return;
                    }
                }
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "the OTLP/gRPC server stopped");
        }
    }

    /// The token check of one call, on its headers (gRPC metadata), before its message is read.
    fn authorized(&self, headers: &http::HeaderMap) -> Result<(), Status> {
        if token_matches(self.auth_token.as_deref(), headers) {
            return Ok(());
        }
        let rejection = Rejection::new(401, Refusal::Unauthorized, TOKEN_HINT);
        Err(to_status(self.ingest.refuse(rejection)))
    }

    /// The validation and durable append of one authorized, decoded call.
    async fn accept(&self, signal: Signal, request: Request<Bytes>) -> Result<(), Status> {
        let payload = request.into_inner();
        let items = decode::validate(signal, &payload)
            .map_err(|rejection| to_status(self.ingest.refuse(rejection)))?;
        self.ingest
            .accept(signal, Transport::Grpc, &payload, items)
            .await
            .map_err(|r| to_status(self.ingest.refuse(r)))
    }

    /// Counts a refusal made before [`GrpcReceiver::accept`] ran (by tonic, or by the wire
    /// limit when `over_wire`), and words it as ours.
    fn refused_early(&self, status: Status, over_wire: bool, max_decompressed: usize) -> Status {
        let (reason, status) = match status.code() {
            // The wire-limit refusal (from the body wrapper) says which limit already.
            Code::ResourceExhausted if over_wire => (Refusal::TooLarge, status),
            // The decoding limit, as tonic reports it: OUT_OF_RANGE before reading a message
            // (which OTLP clients retry), RESOURCE_EXHAUSTED while inflating one.
            Code::OutOfRange | Code::ResourceExhausted => (
                Refusal::TooLarge,
                Status::resource_exhausted(format!(
                    "request message is larger than {max_decompressed} bytes{} (server.max_decompressed); send smaller batches",
                    if status.code() == Code::ResourceExhausted { " once decompressed" } else { "" },
                )),
            ),
            Code::Internal if status.message().starts_with("Error decompressing") => (
                Refusal::Invalid,
                Status::invalid_argument(format!("invalid gzip message: {}", status.message())),
            ),
            _ => (Refusal::Invalid, status),
        };
        self.ingest.stats.refused(reason);
        tracing::debug!(code = ?status.code(), message = status.message(), "refused a gRPC call");
        status
    }
}

/// The one tower service behind the listener: routes the three `Export` paths, answers
/// `UNIMPLEMENTED` to anything else.
#[derive(Clone)]
struct ExportService {
    receiver: Arc<GrpcReceiver>,
    max_decompressed: usize,
    wire_limit: usize,
    /// Cancelled when shutdown has waited long enough for calls in flight.
    force: CancellationToken,
}

type HttpRequest = http::Request<tonic::body::Body>;
type HttpResponse = http::Response<tonic::body::Body>;

impl tonic::codegen::Service<HttpRequest> for ExportService {
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture<HttpResponse, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: HttpRequest) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let path = req.uri().path();
            let Some(&(_, signal)) = METHODS.iter().find(|(p, _)| *p == path) else {
                this.receiver.ingest.stats.refused(Refusal::Invalid);
                let message = format!(
                    "no such method {path:?}: OTLP/gRPC serves {}",
                    METHODS.map(|(p, _)| p).join(", ")
                );
                return Ok(Status::unimplemented(message).into_http());
            };
            let response = tokio::select! {
                response = this.export(signal, req) => response,
                _ = this.force.cancelled() => {
                    Status::unavailable("the agent is shutting down; retry").into_http()
                }
            };
            Ok(response)
        })
    }
}

impl ExportService {
    async fn export(&self, signal: Signal, req: HttpRequest) -> HttpResponse {
        if let Err(status) = self.receiver.authorized(req.headers()) {
            return status.into_http();
        }
        let wire_limit = self.wire_limit;
        let over_wire = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&over_wire);
        let req = req.map(|body| {
            let limited = Limited::new(body, wire_limit.saturating_add(FRAME_HEADER));
            tonic::body::Body::new(limited.map_err(move |e: StdError| -> StdError {
                if e.is::<LengthLimitError>() {
                    flag.store(true, Relaxed);
                    Box::new(Status::resource_exhausted(format!(
                        "request is larger than {wire_limit} bytes on the wire (server.max_body); send smaller batches"
                    )))
                } else {
                    e
                }
            }))
        });
        let reached = Arc::new(AtomicBool::new(false));
        let method = Export {
            receiver: Arc::clone(&self.receiver),
            signal,
            reached: Arc::clone(&reached),
        };
        let mut grpc = tonic::server::Grpc::new(RawCodec)
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(self.max_decompressed);
        let response = grpc.unary(method, req).await;
        if reached.load(Relaxed) {
            return response;
        }
        match Status::from_header_map(response.headers()) {
            Some(status) if status.code() != Code::Ok => self
                .receiver
                .refused_early(status, over_wire.load(Relaxed), self.max_decompressed)
                .into_http(),
            _ => response,
        }
    }
}

/// One `Export` call once tonic has read (and inflated) its message.
struct Export {
    receiver: Arc<GrpcReceiver>,
    signal: Signal,
    /// Set when the call gets this far: refusals before it are tonic's.
    reached: Arc<AtomicBool>,
}

impl tonic::server::UnaryService<Bytes> for Export {
    type Response = Bytes;
    type Future = BoxFuture<Response<Bytes>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        self.reached.store(true, Relaxed);
        let receiver = Arc::clone(&self.receiver);
        let signal = self.signal;
        Box::pin(async move {
            receiver.accept(signal, request).await?;
            // An empty Export*ServiceResponse is zero bytes.
            Ok(Response::new(Bytes::new()))
        })
    }
}

/// Messages as bytes both ways: requests are validated by [`decode::validate`], responses are
/// already encoded.
#[derive(Clone, Copy)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Accepted connections, with `TCP_NODELAY` set; an accept error pauses accepting briefly
/// instead of being retried at once (tonic would spin on EMFILE).
struct Incoming {
    listener: TcpListener,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl tokio_stream::Stream for Incoming {
    type Item = std::io::Result<TcpStream>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(sleep) = self.backoff.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                self.backoff = None;
            }
            match ready!(self.listener.poll_accept(cx)) {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    return Poll::Ready(Some(Ok(stream)));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a gRPC connection failed");
                    self.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                }
            }
        }
    }
}

/// `google.rpc.RetryInfo`: how long a client should wait, carried in the status details.
#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<prost_types::Duration>,
}

fn to_status(rejection: Rejection) -> Status {
    let message = rejection.message;
    match rejection.status {
        401 => Status::unauthenticated(message),
        413 => Status::resource_exhausted(message),
        503 => {
            let retry = RetryInfo {
                retry_delay: Some(prost_types::Duration {
                    seconds: RETRY_AFTER_SECS as i64,
                    nanos: 0,
                }),
            };
            let status = RpcStatus {
                code: Code::Unavailable as i32,
                message: message.clone(),
                details: vec![prost_types::Any {
                    type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                    value: retry.encode_to_vec(),
                }],
            };
            Status::with_details(Code::Unavailable, message, status.encode_to_vec().into())
        }
        _ => Status::invalid_argument(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::Stats;
    use crate::otlp;
    use crate::spool::{Limits, Spool};

    /// Calls `TraceService/Export` with raw bytes, gzip-compressed or not.
    async fn call(addr: std::net::SocketAddr, body: Vec<u8>, gzip: bool) -> Result<(), Status> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        if gzip {
            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
        }
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::from_static(METHODS[0].0);
        grpc.unary(Request::new(Bytes::from(body)), path, RawCodec)
            .await
            .map(|_| ())
    }

    fn spans(n: usize) -> Vec<u8> {
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
        let span = Span {
            name: "a span with a name long enough to matter".into(),
            ..Default::default()
        };
        otlp::ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span; n],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    /// The wire limit (server.max_body) is separate from the decoding limit: a message over it
    /// uncompressed is RESOURCE_EXHAUSTED naming server.max_body; the same message gzipped,
    /// small on the wire, is accepted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wire_limit_applies_before_decompression() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::SpoolConfig {
            dir: dir.path().join("spool"),
            ..Default::default()
        };
        let spool = Spool::open(&config.dir, Limits::from(&config), Default::default()).unwrap();
        let stats = Arc::new(Stats::default());
        let receiver = Arc::new(GrpcReceiver {
            ingest: Ingest {
                spool: spool.clone(),
                stats: Arc::clone(&stats),
            },
            max_body: 16 * 1024,
            max_decompressed: 64 * 1024,
            auth_token: None,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(Arc::clone(&receiver).serve(listener, stop.clone()));

        let body = spans(600);
        assert!(
            body.len() > 16 * 1024 && body.len() < 64 * 1024,
            "{}",
            body.len()
        );
        let status = call(addr, body.clone(), false).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::ResourceExhausted,
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("server.max_body"),
            "{}",
            status.message()
        );
        assert_eq!(spool.usage().records, 0);
        call(addr, body, true)
            .await
            .expect("small on the wire once gzipped");
        assert_eq!(spool.usage().records, 1);
        let refused = &stats.status(&spool)["refused_requests"];
        assert_eq!(refused["too_large"], 1, "{refused}");

        // What tonic says before our code runs, reworded (a bad gzip frame cannot be sent with
        // tonic's client, so the mapping is checked directly).
        let bad_gzip =
            Status::internal("Error decompressing: invalid gzip header, while sending request");
        let status = receiver.refused_early(bad_gzip, false, 1);
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(
            status.message().contains("invalid gzip"),
            "{}",
            status.message()
        );
        let limit = Status::out_of_range("Error, decoded message length too large");
        let status = receiver.refused_early(limit, false, 65536);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status.message().contains("server.max_decompressed"),
            "{}",
            status.message()
        );
        let refused = &stats.status(&spool)["refused_requests"];
        assert_eq!(
            (refused["invalid"].as_u64(), refused["too_large"].as_u64()),
            (Some(1), Some(2))
        );
        stop.cancel();
        server.await.unwrap();
    }
}

//! OTLP/HTTP on `server.listen`: `POST /v1/{traces,metrics,logs}`, and `GET /healthz`,
//! `/status`, `/metrics`; and `/dead-letters…` ([`crate::dead_letters`]), which answers
//! loopback peers only (a spool's payloads and their removal are for this machine's user, even
//! with `server.allow_remote`), behind `auth_token` like everything but `/healthz`.
//!
//! Responses follow the OTLP/HTTP spec: 200 with an empty `Export*ServiceResponse` in the
//! request's format, errors with a `google.rpc.Status` body in that format, 503 with
//! `Retry-After` when the spool cannot take the data. The body is read under `max_body` before
//! anything is decoded. This file owns the HTTP framing only; decoding is [`super::decode`],
//! storing is [`super::Ingest`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ALLOW, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prost::Message;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::decode::{self, Format};
use super::{
    token_matches, Ingest, Rejection, BODY_READ_TIMEOUT, HEADER_READ_TIMEOUT, MAX_HEADERS,
    MAX_HEADER_BYTES, RETRY_AFTER_SECS, TOKEN_HINT,
};
use crate::dead_letters;
use crate::observe::{Refusal, Transport};
use crate::otlp::{RpcStatus, Signal};

/// How long in-flight requests get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub struct HttpReceiver {
    pub ingest: Ingest,
    pub max_body: u64,
    pub max_decompressed: u64,
    pub auth_token: Option<String>,
}

type Reply = Response<Full<Bytes>>;

impl HttpReceiver {
    /// Serves `listener` until `stop` is cancelled, then lets in-flight requests finish.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut builder = hyper::server::conn::http1::Builder::new();
        // Over MAX_HEADERS or MAX_HEADER_BYTES, hyper answers 431 and closes the connection.
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_headers(MAX_HEADERS)
            .max_buf_size(MAX_HEADER_BYTES);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accepting an HTTP connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => break,
            };
            let _ = stream.set_nodelay(true);
            let receiver = Arc::clone(&self);
            let service = hyper::service::service_fn(move |req| {
                let receiver = Arc::clone(&receiver);
                async move { Ok::<_, Infallible>(receiver.handle(req, peer).await) }
            });
            let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                }
            });
        }
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                "some HTTP requests were still in flight at shutdown; their clients will retry"
            );
        }
    }

    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Reply {
        // hyper's read buffer bounds the head only roughly (it may hold a few reads more).
        let header_bytes: usize = req
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        if header_bytes > MAX_HEADER_BYTES {
            let mut reply = text(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "text/plain",
                format!("request headers are larger than {MAX_HEADER_BYTES} bytes\n"),
            );
            reply
                .headers_mut()
                .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            return reply;
        }
        let path = req.uri().path();
        // Refusals made before the body is looked at (404, 405, 401) still answer in the
        // request's format when it names one; JSON otherwise.
        let reply_format = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Format::from_content_type(v).ok())
            .unwrap_or(Format::Json);
        if path == "/dead-letters" || path.starts_with("/dead-letters/") {
            return self.dead_letters(req, peer).await;
        }
        let signal = Signal::ALL
            .into_iter()
            .find(|s| path.strip_prefix("/v1/") == Some(s.name()));
        let allowed = match (signal, path) {
            (Some(_), _) => "POST",
            (None, "/healthz" | "/status" | "/metrics") => "GET, HEAD",
            _ => {
                let msg = format!(
                    "no such path {path:?}: OTLP/HTTP paths are /v1/traces, /v1/metrics, /v1/logs"
                );
                return self.refuse(reply_format, Rejection::new(404, Refusal::Invalid, msg));
            }
        };
        let method_ok = match signal {
            Some(_) => req.method() == Method::POST,
            None => req.method() == Method::GET || req.method() == Method::HEAD,
        };
        if !method_ok {
            let msg = format!(
                "method {} is not allowed on {path}; use {allowed}",
                req.method()
            );
            let mut reply = self.refuse(reply_format, Rejection::new(405, Refusal::Invalid, msg));
            reply
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allowed));
            return reply;
        }
        if path == "/healthz" {
            return if self.ingest.spool.healthy() {
                text(StatusCode::OK, "text/plain", "ok\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "the spool cannot take data now (storage failing, or its disk nearly full): \
                     see /status\n"
                        .into(),
                )
            };
        }
        if !token_matches(self.auth_token.as_deref(), req.headers()) {
            tracing::debug!(%peer, path, "refused a request without a valid token");
            return self.refuse(
                reply_format,
                Rejection::new(401, Refusal::Unauthorized, TOKEN_HINT),
            );
        }
        match signal {
            Some(signal) => match self.export(signal, req).await {
                Ok(format) => {
                    // An empty Export*ServiceResponse: zero bytes in protobuf, `{}` in JSON.
                    let body = if format == Format::Json { "{}" } else { "" };
                    text(StatusCode::OK, format.content_type(), body.into())
                }
                Err((format, rejection)) => self.refuse(format, rejection),
            },
            None if path == "/status" => {
                let body =
                    serde_json::to_string_pretty(&self.ingest.stats.status(&self.ingest.spool))
                        .expect("json");
                text(StatusCode::OK, "application/json", body)
            }
            None => text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.ingest.stats.prometheus(&self.ingest.spool),
            ),
        }
    }

    async fn export(
        &self,
        signal: Signal,
        req: Request<Incoming>,
    ) -> Result<Format, (Format, Rejection)> {
        let headers = req.headers();
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let format = Format::from_content_type(content_type).map_err(|r| (Format::Json, r))?;
        let fail = |r| (format, r);
        let too_large = || {
            fail(Rejection::new(
                413,
                Refusal::TooLarge,
                format!(
                    "request body is larger than {} bytes (server.max_body)",
                    self.max_body
                ),
            ))
        };
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_body) {
            return Err(too_large());
        }
        let encoding = headers
            .get(CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("(not ASCII)").to_string());
        let body = Limited::new(req.into_body(), self.max_body as usize).collect();
        let body = tokio::time::timeout(BODY_READ_TIMEOUT, body)
            .await
            .map_err(|_| {
                fail(Rejection::new(
                    408,
                    Refusal::Invalid,
                    format!(
                        "the request body did not arrive within {}s of its headers",
                        BODY_READ_TIMEOUT.as_secs()
                    ),
                ))
            })?
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    too_large()
                } else {
                    fail(Rejection::new(
                        400,
                        Refusal::Invalid,
                        format!("reading the request body failed: {e}"),
                    ))
                }
            })?
            .to_bytes();
        let decoded = decode::decode(
            signal,
            format,
            encoding.as_deref(),
            body,
            self.max_decompressed,
        )
        .map_err(fail)?;
        self.ingest
            .accept(signal, Transport::Http, &decoded.payload, decoded.items)
            .await
            .map_err(fail)?;
        Ok(format)
    }

    /// `/dead-letters…`: loopback peers with the token only; the body (of a replay or purge)
    /// read under [`dead_letters::MAX_REQUEST_BODY`].
    async fn dead_letters(&self, req: Request<Incoming>, peer: SocketAddr) -> Reply {
        if !peer.ip().to_canonical().is_loopback() {
            let error = "dead letters are served to this machine only: run `otlp-spool \
                         dead-letters` on the agent's machine";
            return json_reply(StatusCode::FORBIDDEN, serde_json::json!({ "error": error }));
        }
        if !token_matches(self.auth_token.as_deref(), req.headers()) {
            tracing::debug!(%peer, "refused a dead-letter request without a valid token");
            return self.refuse(
                Format::Json,
                Rejection::new(401, Refusal::Unauthorized, TOKEN_HINT),
            );
        }
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let body = Limited::new(req.into_body(), dead_letters::MAX_REQUEST_BODY).collect();
        let body = match tokio::time::timeout(BODY_READ_TIMEOUT, body).await {
            Ok(Ok(body)) => body.to_bytes(),
            _ => {
                let error = format!(
                    "the request body did not arrive whole within {}s, or is larger than {} bytes",
                    BODY_READ_TIMEOUT.as_secs(),
                    dead_letters::MAX_REQUEST_BODY
                );
                return json_reply(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({ "error": error }),
                );
            }
        };
        let (status, doc) = dead_letters::serve(&self.ingest.spool, &method, &path, &body).await;
        json_reply(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            doc,
        )
    }

    /// Counts a refusal and renders it as an OTLP error response.
    fn refuse(&self, format: Format, rejection: Rejection) -> Reply {
        let rejection = self.ingest.refuse(rejection);
        let status = StatusCode::from_u16(rejection.status).unwrap_or(StatusCode::BAD_REQUEST);
        if status.is_server_error() {
            tracing::warn!(status = rejection.status, message = %rejection.message, "refused a request");
        } else {
            tracing::debug!(status = rejection.status, message = %rejection.message, "refused a request");
        }
        let rpc = RpcStatus {
            code: grpc_code(rejection.status),
            message: rejection.message,
            details: Vec::new(),
        };
        let mut reply = match format {
            Format::Protobuf => Response::new(Full::new(Bytes::from(rpc.encode_to_vec()))),
            Format::Json => Response::new(Full::new(Bytes::from(
                serde_json::json!({ "code": rpc.code, "message": rpc.message }).to_string(),
            ))),
        };
        *reply.status_mut() = status;
        reply.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            reply
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        reply
    }
}

/// The gRPC status code an HTTP status stands for in `google.rpc.Status`.
fn grpc_code(http_status: u16) -> i32 {
    match http_status {
        400 | 415 => 3, // INVALID_ARGUMENT
        401 => 16,      // UNAUTHENTICATED
        404 => 5,       // NOT_FOUND
        405 => 12,      // UNIMPLEMENTED
        408 => 4,       // DEADLINE_EXCEEDED
        413 => 8,       // RESOURCE_EXHAUSTED
        503 => 14,      // UNAVAILABLE
        _ => 2,         // UNKNOWN
    }
}

fn json_reply(status: StatusCode, doc: serde_json::Value) -> Reply {
    let body = serde_json::to_string_pretty(&doc).expect("json");
    text(status, "application/json", body)
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = status;
    reply
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    reply
}

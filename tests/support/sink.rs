//! The upstream sink: decodes what it receives *independently* of the agent (prost types for
//! protobuf, plain serde_json walking for OTLP/JSON) and misbehaves on request.
//!
//! The sink is hyper on loopback, plain or TLS. Each request is read whole, recorded, and answered
//! by the next scripted [`Reply`] (then the fallback, then 200). Replies hyper cannot write — a
//! hang, a TCP reset, a trickled status line, an endless body — are played on the raw socket:
//! hyper shares it ([`SharedStream`]) and is dropped mid-request. A deaf sink
//! ([`Sink::set_deaf`]) accepts connections and never reads them. The sink counts connections
//! and raw bytes written, so tests can bound how often an agent tried and how much it could
//! have buffered.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::{logs, metrics, trace};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use prost::Message;
use serde_json::Value;

use super::eventually;

/// How the sink answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Ok,
    /// Any status, optionally with `Retry-After: <secs>`.
    Status(u16, Option<u64>),
    /// 200 with an OTLP partial success rejecting this many items.
    Partial(i64, &'static str),
    /// Wait this long, then answer 200 (for timeouts).
    Stall(Duration),
    /// Read the request, then never answer: the connection stays open until the client leaves.
    Hang,
    /// `code` (a 3xx) with `Location: <location>` and no body.
    Redirect(u16, String),
    /// Read the request, then reset the connection (TCP RST): at once with `None`; with
    /// `Some(code)`, after that status, headers announcing a 1 MiB body, and 100 bytes of it.
    Reset(Option<u16>),
    /// Read the request, then send a 503 response one byte per second from the first byte of its
    /// status line on, never finishing.
    Trickle,
    /// Read the request, send `code` and its headers at once, then a body one byte per second,
    /// forever.
    TrickleBody(u16),
    /// Read the request, send `code` and its headers, then an endless body as fast as the client
    /// reads it (the bytes written are counted: [`Sink::raw_bytes_sent`]).
    EndlessBody(u16),
}

impl Reply {
    /// The status the client gets to see, if any (a hang, a reset before the answer, and a
    /// trickled status line show none).
    fn status(&self) -> Option<u16> {
        match self {
            Reply::Ok | Reply::Partial(..) | Reply::Stall(_) => Some(200),
            Reply::Status(code, _) | Reply::Redirect(code, _) => Some(*code),
            Reply::Reset(code) => *code,
            Reply::TrickleBody(code) | Reply::EndlessBody(code) => Some(*code),
            Reply::Hang | Reply::Trickle => None,
        }
    }
}

/// A reply written on the raw socket, past what hyper can do: hyper answers the request's
/// HTTP, then hands its connection over (see [`serve`]).
#[derive(Debug)]
enum Raw {
    Hang,
    Reset(Option<u16>),
    Trickle,
    TrickleBody(u16),
    EndlessBody(u16),
}

/// One request the sink received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: hyper::HeaderMap,
    pub items: u64,
    pub names: Vec<String>,
    /// Whether the sink answered 2xx (the agent may consider it delivered).
    pub accepted: bool,
    pub at: Instant,
    pub body_len: usize,
    /// The body as received (still compressed), for tests that decode it themselves
    /// (Prometheus remote write).
    pub body: Bytes,
}

#[derive(Default)]
struct SinkState {
    received: Vec<Received>,
    script: VecDeque<Reply>,
    /// Answer every request, after the script, with this (default: `Reply::Ok`).
    fallback: Option<Reply>,
    /// When each connection was accepted.
    connections: Vec<Instant>,
    /// Accept connections but never read from them (see [`Sink::set_deaf`]).
    deaf: bool,
    /// Connections accepted while deaf, kept open (unread) for as long as the sink lives.
    unread: Vec<tokio::net::TcpStream>,
    /// Bytes written by raw replies ([`Reply::Reset`], [`Reply::Trickle`], …).
    raw_bytes_sent: u64,
}

pub struct Sink {
    pub addr: SocketAddr,
    /// Whether the sink speaks HTTPS ([`Sink::start_tls`]).
    tls: bool,
    state: Arc<Mutex<SinkState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sink {
    pub async fn start() -> Sink {
        Sink::start_on("127.0.0.1:0".parse().unwrap(), []).await
    }

    /// Starts on a given address (to come back on a port that was refusing connections), with
    /// its first replies scripted before it accepts anything (no race with a retrying agent).
    pub async fn start_on(addr: SocketAddr, script: impl IntoIterator<Item = Reply>) -> Sink {
        Sink::start_with(addr, script, None).await
    }

    /// An HTTPS sink on a free loopback port, presenting `acceptor`'s certificate. Raw replies
    /// ([`Reply::Hang`], [`Reply::Reset`], the trickles, [`Reply::EndlessBody`]) need a plain
    /// sink: a TLS sink panics on them.
    pub async fn start_tls(acceptor: tokio_rustls::TlsAcceptor) -> Sink {
        Sink::start_with("127.0.0.1:0".parse().unwrap(), [], Some(acceptor)).await
    }

    async fn start_with(
        addr: SocketAddr,
        script: impl IntoIterator<Item = Reply>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Sink {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("binding the sink");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(SinkState {
            script: script.into_iter().collect(),
            ..SinkState::default()
        }));
        let shared = Arc::clone(&state);
        let is_tls = tls.is_some();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                {
                    let mut s = shared.lock().unwrap();
                    s.connections.push(Instant::now());
                    if s.deaf {
                        s.unread.push(stream);
                        continue;
                    }
                }
                let state = Arc::clone(&shared);
                match &tls {
                    None => {
                        tokio::spawn(serve(stream, state));
                    }
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            // A client that refuses the certificate ends the handshake here.
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve_http(stream, state, None).await;
                            }
                        });
                    }
                }
            }
        });
        Sink {
            addr,
            tls: is_tls,
            state,
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Replies for the next requests, in order; afterwards the fallback (200 by default).
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    pub fn set_fallback(&self, reply: Option<Reply>) {
        self.state.lock().unwrap().fallback = reply;
    }

    /// While deaf, the sink accepts connections (counted in [`Sink::connections`]) and never
    /// reads or answers them: an upstream stalled right after accepting. Connections accepted
    /// meanwhile stay unread; later ones are served again.
    pub fn set_deaf(&self, deaf: bool) {
        self.state.lock().unwrap().deaf = deaf;
    }

    /// When each connection was accepted.
    pub fn connections(&self) -> Vec<Instant> {
        self.state.lock().unwrap().connections.clone()
    }

    /// Bytes written by raw replies so far (an upper bound on what a client could buffer of
    /// them).
    pub fn raw_bytes_sent(&self) -> u64 {
        self.state.lock().unwrap().raw_bytes_sent
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Items accepted (2xx) on `path`, e.g. "/v1/traces".
    pub fn items(&self, path: &str) -> u64 {
        self.received()
            .iter()
            .filter(|r| r.accepted && r.path == path)
            .map(|r| r.items)
            .sum()
    }

    /// Names of accepted items on `path`, sorted.
    pub fn names(&self, path: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .received()
            .into_iter()
            .filter(|r| r.accepted && r.path == path)
            .flat_map(|r| r.names)
            .collect();
        names.sort();
        names
    }

    /// Waits for the first request, answered or not; panics after `timeout`.
    pub async fn wait_first_attempt(&self, timeout: Duration) {
        self.wait_attempts(1, timeout).await;
    }

    /// Waits until the sink has received at least `n` requests in all, answered or not; panics
    /// after `timeout`.
    pub async fn wait_attempts(&self, n: usize, timeout: Duration) {
        let arrived = eventually(timeout, || self.received().len() >= n).await;
        let got = self.received().len();
        assert!(
            arrived,
            "{got} upstream attempt(s) within {timeout:?}, expected {n}"
        );
    }

    /// Waits until at least `n` items were accepted on `path`, or `timeout` passes; the count
    /// then.
    pub async fn wait_items(&self, path: &str, n: u64, timeout: Duration) -> u64 {
        eventually(timeout, || self.items(path) >= n).await;
        self.items(path)
    }

    /// Waits until every name in `want` was accepted on `path` at least once, or `timeout`
    /// passes; the names still missing then (none: all arrived). Polls every 100 ms: each look
    /// copies every name received so far.
    pub async fn wait_names(&self, path: &str, want: &[String], timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let got: std::collections::HashSet<String> = self.names(path).into_iter().collect();
            let missing: Vec<String> = want.iter().filter(|n| !got.contains(*n)).cloned().collect();
            if missing.is_empty() || Instant::now() > deadline {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Serves one plain connection with hyper until a request's reply is [`Raw`]: then hyper is
/// dropped mid-request and the reply is written on the socket itself, which hyper shared.
async fn serve(stream: tokio::net::TcpStream, state: Arc<Mutex<SinkState>>) {
    let stream = Arc::new(stream);
    let (raw_tx, mut raw_rx) = tokio::sync::mpsc::unbounded_channel();
    let connection = serve_http(
        SharedStream(Arc::clone(&stream)),
        Arc::clone(&state),
        Some(raw_tx),
    );
    let raw = tokio::select! {
        _ = connection => None,
        raw = raw_rx.recv() => raw,
    };
    if let Some(raw) = raw {
        play(raw, &RawSocket { stream, state }).await;
    }
}

/// Serves HTTP/1 on `io` until the client leaves; raw replies go to `raw`.
async fn serve_http<I>(
    io: I,
    state: Arc<Mutex<SinkState>>,
    raw: Option<tokio::sync::mpsc::UnboundedSender<Raw>>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let (state, raw) = (Arc::clone(&state), raw.clone());
        async move { Ok::<_, Infallible>(handle(state, req, raw).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// Writes a raw reply. Ends when the client goes away (or at once, for a reset).
async fn play(raw: Raw, socket: &RawSocket) {
    let head = |code: u16, length: &str| {
        format!("HTTP/1.1 {code} Sink\r\ncontent-type: text/plain\r\n{length}\r\n").into_bytes()
    };
    let announced = "content-length: 1048576\r\n";
    match raw {
        Raw::Hang => {
            // Read (and drop) until the client closes, so the task ends with the connection.
            while socket.read_some().await {}
        }
        Raw::Reset(code) => {
            if let Some(code) = code {
                let mut bytes = head(code, announced);
                bytes.extend_from_slice(&[b'x'; 100]);
                let _ = socket.write(&bytes).await;
                // Let the client read the head before the reset discards what it has not read.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // SO_LINGER 0: closing sends an RST, not a FIN.
            socket.stream.set_zero_linger().expect("setting SO_LINGER");
        }
        Raw::Trickle => {
            let mut bytes = head(503, announced);
            bytes.extend(std::iter::repeat_n(b'x', 1 << 20));
            for byte in bytes {
                if socket.write(&[byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Raw::TrickleBody(code) => {
            let mut next = socket.write(&head(code, announced)).await;
            while next.is_ok() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                next = socket.write(b"x").await;
            }
        }
        Raw::EndlessBody(code) => {
            let chunk = [
                format!("{:x}\r\n", 64 << 10).into_bytes(),
                vec![b'x'; 64 << 10],
                b"\r\n".to_vec(),
            ]
            .concat();
            let mut next = socket
                .write(&head(code, "transfer-encoding: chunked\r\n"))
                .await;
            while next.is_ok() {
                next = socket.write(&chunk).await;
            }
        }
    }
}

/// The socket of a connection hyper let go, with the sink's byte count of raw replies.
struct RawSocket {
    stream: Arc<tokio::net::TcpStream>,
    state: Arc<Mutex<SinkState>>,
}

impl RawSocket {
    /// Reads and drops what the client sends; false once it has closed (or failed).
    async fn read_some(&self) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            if self.stream.readable().await.is_err() {
                return false;
            }
            match self.stream.try_read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Ok(0) | Err(_) => return false,
                Ok(_) => return true,
            }
        }
    }

    /// Writes all of `bytes`, counting them in [`Sink::raw_bytes_sent`] as they go.
    async fn write(&self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            self.stream.writable().await?;
            match self.stream.try_write(bytes) {
                Ok(n) => {
                    self.state.lock().unwrap().raw_bytes_sent += n as u64;
                    bytes = &bytes[n..];
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A TCP stream hyper can serve while [`serve`] keeps a handle to it for a raw reply.
struct SharedStream(Arc<tokio::net::TcpStream>);

impl tokio::io::AsyncRead for SharedStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        loop {
            std::task::ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return std::task::Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return std::task::Poll::Ready(Err(e)),
            }
        }
    }
}

impl tokio::io::AsyncWrite for SharedStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                other => return std::task::Poll::Ready(other),
            }
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    // The socket closes when [`serve`] drops its last handle, right after hyper is done.
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

async fn handle(
    state: Arc<Mutex<SinkState>>,
    req: Request<hyper::body::Incoming>,
    raw: Option<tokio::sync::mpsc::UnboundedSender<Raw>>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let reply = {
        let mut s = state.lock().unwrap();
        s.script
            .pop_front()
            .or_else(|| s.fallback.clone())
            .unwrap_or(Reply::Ok)
    };
    if let Reply::Stall(d) = reply {
        tokio::time::sleep(d).await;
    }
    let (items, names) = decode(&path, &headers, &body);
    state.lock().unwrap().received.push(Received {
        path: path.clone(),
        headers: headers.clone(),
        items,
        names,
        accepted: reply.status().is_some_and(|s| (200..300).contains(&s)),
        at: Instant::now(),
        body_len: body.len(),
        body: body.clone(),
    });
    let raw_reply = match reply {
        Reply::Hang => Some(Raw::Hang),
        Reply::Reset(code) => Some(Raw::Reset(code)),
        Reply::Trickle => Some(Raw::Trickle),
        Reply::TrickleBody(code) => Some(Raw::TrickleBody(code)),
        Reply::EndlessBody(code) => Some(Raw::EndlessBody(code)),
        _ => None,
    };
    if let Some(raw_reply) = raw_reply {
        // `serve` drops this handler (and hyper) and writes the reply itself.
        if let Some(raw) = raw {
            let _ = raw.send(raw_reply);
            std::future::pending::<()>().await;
        }
        panic!("sink: raw replies need a plain-TCP sink (Sink::start, not start_tls)");
    }
    let (status, retry_after, rejected, location) = match reply {
        Reply::Status(code, after) => (code, after, None, None),
        Reply::Partial(n, msg) => (200, None, Some((n, msg)), None),
        Reply::Redirect(code, location) => (code, None, None, Some(location)),
        _ => (200, None, None, None),
    };
    let is_json = headers
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("application/json"));
    let body = match rejected {
        Some((n, msg)) if is_json => {
            let field = match path.as_str() {
                "/v1/traces" => "rejectedSpans",
                "/v1/metrics" => "rejectedDataPoints",
                _ => "rejectedLogRecords",
            };
            serde_json::json!({"partialSuccess": {field: n.to_string(), "errorMessage": msg}})
                .to_string()
                .into_bytes()
        }
        Some((n, msg)) => match path.as_str() {
            "/v1/traces" => trace::v1::ExportTraceServiceResponse {
                partial_success: Some(trace::v1::ExportTracePartialSuccess {
                    rejected_spans: n,
                    error_message: msg.into(),
                }),
            }
            .encode_to_vec(),
            "/v1/metrics" => metrics::v1::ExportMetricsServiceResponse {
                partial_success: Some(metrics::v1::ExportMetricsPartialSuccess {
                    rejected_data_points: n,
                    error_message: msg.into(),
                }),
            }
            .encode_to_vec(),
            _ => logs::v1::ExportLogsServiceResponse {
                partial_success: Some(logs::v1::ExportLogsPartialSuccess {
                    rejected_log_records: n,
                    error_message: msg.into(),
                }),
            }
            .encode_to_vec(),
        },
        None if status >= 400 => {
            format!("{{\"code\":3,\"message\":\"sink says {status}\"}}").into_bytes()
        }
        None if is_json => b"{}".to_vec(),
        None => Vec::new(),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    let ct = if is_json || status >= 400 {
        "application/json"
    } else {
        "application/x-protobuf"
    };
    response
        .headers_mut()
        .insert("content-type", ct.parse().unwrap());
    if let Some(secs) = retry_after {
        response.headers_mut().insert("retry-after", secs.into());
    }
    if let Some(location) = location {
        response.headers_mut().insert(
            "location",
            location.parse().expect("sink: a valid Location"),
        );
    }
    response
}

/// Counts items and collects names: span names, metric names (one per data point), log event
/// names or string bodies. Decoded without the agent's code.
pub fn decode(path: &str, headers: &hyper::HeaderMap, body: &[u8]) -> (u64, Vec<String>) {
    if headers
        .get("content-encoding")
        .is_some_and(|v| v == "snappy")
    {
        // Prometheus remote write, not OTLP: tests/prometheus.rs decodes `Received::body`.
        return (0, Vec::new());
    }
    let mut raw = body.to_vec();
    if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
        raw.clear();
        flate2::read::MultiGzDecoder::new(body)
            .read_to_end(&mut raw)
            .expect("sink: bad gzip");
    }
    let json = headers
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("application/json"));
    let names = if json {
        json_names(path, &raw)
    } else {
        protobuf_names(path, &raw)
    };
    (names.len() as u64, names)
}

fn protobuf_names(path: &str, raw: &[u8]) -> Vec<String> {
    match path {
        "/v1/traces" => trace::v1::ExportTraceServiceRequest::decode(raw)
            .expect("sink: bad trace protobuf")
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .map(|s| s.name)
            .collect(),
        "/v1/metrics" => metrics::v1::ExportMetricsServiceRequest::decode(raw)
            .expect("sink: bad metrics protobuf")
            .resource_metrics
            .into_iter()
            .flat_map(|r| r.scope_metrics)
            .flat_map(|s| s.metrics)
            .flat_map(|m| {
                let n = match &m.data {
                    Some(Data::Gauge(g)) => g.data_points.len(),
                    Some(Data::Sum(s)) => s.data_points.len(),
                    Some(Data::Histogram(h)) => h.data_points.len(),
                    Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
                    Some(Data::Summary(s)) => s.data_points.len(),
                    None => 0,
                };
                vec![m.name; n]
            })
            .collect(),
        _ => logs::v1::ExportLogsServiceRequest::decode(raw)
            .expect("sink: bad logs protobuf")
            .resource_logs
            .into_iter()
            .flat_map(|r| r.scope_logs)
            .flat_map(|s| s.log_records)
            .map(|l| {
                if !l.event_name.is_empty() {
                    return l.event_name;
                }
                match l.body.and_then(|b| b.value) {
                    Some(AnyValue::StringValue(s)) => s,
                    _ => String::new(),
                }
            })
            .collect(),
    }
}

fn list<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key).and_then(Value::as_array).into_iter().flatten()
}

fn json_names(path: &str, raw: &[u8]) -> Vec<String> {
    let doc: Value = serde_json::from_slice(raw).expect("sink: bad JSON");
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    match path {
        "/v1/traces" => list(&doc, "resourceSpans")
            .flat_map(|r| list(r, "scopeSpans"))
            .flat_map(|sc| list(sc, "spans"))
            .map(|sp| s(&sp["name"]))
            .collect(),
        "/v1/metrics" => list(&doc, "resourceMetrics")
            .flat_map(|r| list(r, "scopeMetrics"))
            .flat_map(|sc| list(sc, "metrics"))
            .flat_map(|m| {
                let n: usize = [
                    "gauge",
                    "sum",
                    "histogram",
                    "exponentialHistogram",
                    "summary",
                ]
                .iter()
                .map(|k| list(&m[*k], "dataPoints").count())
                .sum();
                vec![s(&m["name"]); n]
            })
            .collect(),
        _ => list(&doc, "resourceLogs")
            .flat_map(|r| list(r, "scopeLogs"))
            .flat_map(|sc| list(sc, "logRecords"))
            .map(|l| {
                let event = s(&l["eventName"]);
                if event.is_empty() {
                    s(&l["body"]["stringValue"])
                } else {
                    event
                }
            })
            .collect(),
    }
}

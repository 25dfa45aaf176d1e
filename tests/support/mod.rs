//! Shared test parts: an upstream sink that decodes what it receives *independently* of the
//! agent (prost types for protobuf, plain serde_json walking for OTLP/JSON) and misbehaves on
//! request, and helpers to start an agent in-process on loopback ports.
#![allow(dead_code)] // each test binary uses its own subset

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
}

pub struct Sink {
    pub addr: SocketAddr,
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
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("binding the sink");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(SinkState {
            script: script.into_iter().collect(),
            ..SinkState::default()
        }));
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(handle(state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Sink { addr, state, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replies for the next requests, in order; afterwards the fallback (200 by default).
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    pub fn set_fallback(&self, reply: Option<Reply>) {
        self.state.lock().unwrap().fallback = reply;
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

    /// Waits until at least `n` items were accepted on `path`.
    pub async fn wait_items(&self, path: &str, n: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.items(path);
            if got >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn handle(
    state: Arc<Mutex<SinkState>>,
    req: Request<hyper::body::Incoming>,
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
    let (status, retry_after, rejected) = match reply {
        Reply::Ok | Reply::Stall(_) => (200, None, None),
        Reply::Status(code, after) => (code, after, None),
        Reply::Partial(n, msg) => (200, None, Some((n, msg))),
    };
    let (items, names) = decode(&path, &headers, &body);
    state.lock().unwrap().received.push(Received {
        path: path.clone(),
        headers: headers.clone(),
        items,
        names,
        accepted: (200..300).contains(&status),
        at: Instant::now(),
        body_len: body.len(),
        body: body.clone(),
    });
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

/// A TOML config for an in-process agent on a free loopback port, spooling in `dir`.
pub fn config_toml(dir: &std::path::Path, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ngrpc_listen = \"\"\n[spool]\ndir = \"{}\"\n{extra}",
        dir.display()
    )
}

/// A destination block pointing at `sink`, batching with a short linger so tests are quick.
pub fn destination(name: &str, sink: &Sink, extra: &str) -> String {
    format!(
        "[[destination]]\nname = \"{name}\"\ntype = \"otlp_http\"\nendpoint = \"{}\"\nbatch = {{ linger = \"20ms\" }}\nretry = {{ initial = \"50ms\", max = \"500ms\" }}\ntimeout = \"2s\"\n{extra}\n",
        sink.endpoint()
    )
}

pub async fn start_agent(toml: &str) -> otlp_spool::Agent {
    let config = otlp_spool::config::Config::parse(toml).expect("test config parses");
    otlp_spool::Agent::start(config)
        .await
        .expect("agent starts")
}

/// POSTs `body` to the agent; returns the status and body text.
pub async fn post(
    agent_addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, String) {
    let client = reqwest::Client::new();
    let mut req = client.post(format!("http://{agent_addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.body(body).send().await.expect("agent reachable");
    let status = resp.status().as_u16();
    (
        status,
        String::from_utf8_lossy(&resp.bytes().await.unwrap()).into_owned(),
    )
}

/// A trace request with `n` spans named `<prefix>-<i>`, as canonical protobuf.
pub fn spans(prefix: &str, n: usize) -> Vec<u8> {
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    trace::v1::ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: (0..n)
                    .map(|i| Span {
                        name: format!("{prefix}-{i}"),
                        trace_id: vec![1; 16],
                        span_id: vec![2; 8],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

pub const PROTOBUF: (&str, &str) = ("content-type", "application/x-protobuf");
pub const JSON: (&str, &str) = ("content-type", "application/json");

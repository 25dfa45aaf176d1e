//! Load generator for the benchmark harness (`bench/run.sh`): sends realistic OTLP to an agent
//! over HTTP (protobuf, optionally gzip) or gRPC, and reports what was acknowledged and how long
//! acknowledgements took. Every 200 / gRPC OK it counts was fsynced by otlp-spool first.
//!
//! The payloads look like an AI coding CLI's telemetry (Claude Code's metric and event names,
//! `gen_ai.*` span attributes): per-session ids, models, token counts, costs, tool names. A pool
//! of distinct requests is built before the clock starts, so the run itself spends no CPU on
//! encoding (HTTP); gRPC re-encodes each message, as a real client does.
//!
//! Two modes:
//! - `--rate N` (items per second): open loop. Request `i` is due at `start + i × batch / N`; its
//!   time to ack is measured from when it was *due*, so a slow agent shows up as latency rather
//!   than as fewer requests (no coordinated omission). At most `--concurrency` requests are in
//!   flight; a request that waits for a slot waits on the clock.
//! - `--rate 0` (default): closed loop, `--concurrency` senders as fast as acks allow.
//!
//! `--churn` opens a new connection for every request and closes it after the answer (HTTP: no
//! idle pool; gRPC: a new channel per call), as short-lived CLI processes do; a descriptor or
//! memory leak per connection in the agent shows up under it (`bench/soak.sh`).
//!
//! A run stops after `--seconds`, or once `--max-bytes` of request payload (uncompressed OTLP
//! protobuf) has been acknowledged, whichever is first. It prints one human line on stderr and,
//! with `--json`, one JSON object on stdout for scripts.
//!
//! ```sh
//! cargo run --release --example loadgen -- --addr 127.0.0.1:4318 --concurrency 16 --seconds 10 --spans 10
//! cargo run --release --example loadgen -- --signal metrics --rate 5000 --batch 100 --seconds 60 --json
//! cargo run --release --example loadgen -- --protocol grpc --addr 127.0.0.1:4317 --signal logs --rate 2000
//! ```

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Metric, NumberDataPoint, ResourceMetrics,
    ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Channel, Endpoint};

const USAGE: &str = "\
loadgen [--addr HOST:PORT] [--protocol http|grpc] [--signal traces|metrics|logs]
        [--rate ITEMS_PER_S (0 = as fast as acks allow)] [--batch ITEMS_PER_REQUEST | --spans N]
        [--seconds S] [--concurrency C] [--max-bytes BYTES] [--gzip] [--churn] [--threads T] [--json]";

fn args() -> Vec<String> {
    std::env::args().collect()
}

fn arg(name: &str, default: &str) -> String {
    let args = args();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn flag(name: &str) -> bool {
    args().iter().any(|a| a == name)
}

fn parse<T: std::str::FromStr>(name: &str, default: &str) -> T {
    arg(name, default).parse().unwrap_or_else(|_| {
        eprintln!("loadgen: {name} wants a number\n{USAGE}");
        std::process::exit(2)
    })
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Signal {
    Traces,
    Metrics,
    Logs,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }
}

/// A small, fast, deterministic generator (xorshift64*): realistic variety, reproducible runs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn uuid(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            (b >> 48) & 0x3fff | 0x8000,
            b & 0xffff_ffff_ffff
        )
    }
}

fn s(k: &str, v: impl Into<String>) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn i(k: &str, v: i64) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(v)),
        }),
        ..Default::default()
    }
}

fn d(k: &str, v: f64) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::DoubleValue(v)),
        }),
        ..Default::default()
    }
}

fn b(k: &str, v: bool) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::BoolValue(v)),
        }),
        ..Default::default()
    }
}

const MODELS: &[&str] = &[
    "claude-sonnet-4-5-20250929",
    "claude-haiku-4-5-20251001",
    "claude-opus-4-1-20250805",
];
const TOOLS: &[&str] = &[
    "Read",
    "Edit",
    "Bash",
    "Grep",
    "Glob",
    "Write",
    "WebFetch",
    "TodoWrite",
];

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The resource of one CLI session, as Claude Code / Copilot CLI / Gemini CLI send it.
fn resource(rng: &mut Rng, session: &str) -> Resource {
    Resource {
        attributes: vec![
            s("service.name", "claude-code"),
            s("service.version", "2.0.14"),
            s("os.type", "linux"),
            s("os.version", "6.8.0-1021-aws"),
            s("host.arch", "amd64"),
            s("host.name", format!("dev-laptop-{}", rng.below(500))),
            s("telemetry.sdk.language", "nodejs"),
            s("telemetry.sdk.name", "opentelemetry"),
            s("telemetry.sdk.version", "2.0.1"),
            s("session.id", session),
            s("user.account_uuid", rng.uuid()),
            s("organization.id", rng.uuid()),
            s("terminal.type", "vscode"),
        ],
        ..Default::default()
    }
}

fn scope() -> Option<InstrumentationScope> {
    Some(InstrumentationScope {
        name: "com.anthropic.claude_code".into(),
        version: "2.0.14".into(),
        ..Default::default()
    })
}

/// `n` spans of one session: an interaction, LLM requests and tool calls under it.
fn traces(rng: &mut Rng, n: usize) -> ExportTraceServiceRequest {
    let session = rng.uuid();
    let t0 = now_ns();
    let mut trace_id = rng.bytes(16);
    let mut root = rng.bytes(8);
    let spans = (0..n)
        .map(|k| {
            if k % 10 == 0 {
                trace_id = rng.bytes(16);
                root = rng.bytes(8);
            }
            let start = t0 + k as u64 * 1_000_000;
            let dur = 1_000_000 + rng.below(4_000_000_000);
            let model = rng.pick(MODELS);
            let (name, kind, parent, attributes) = match k % 10 {
                0 => (
                    "claude_code.interaction".to_string(),
                    span::SpanKind::Internal,
                    Vec::new(),
                    vec![
                        s("session.id", session.clone()),
                        s("prompt.id", rng.uuid()),
                        i("user_prompt_length", rng.below(4000) as i64),
                        s("interaction.sequence", (rng.below(40)).to_string()),
                    ],
                ),
                1 | 4 | 7 => (
                    format!("chat {model}"),
                    span::SpanKind::Client,
                    root.clone(),
                    vec![
                        s("gen_ai.system", "anthropic"),
                        s("gen_ai.operation.name", "chat"),
                        s("gen_ai.request.model", model),
                        s("gen_ai.response.model", model),
                        s("gen_ai.response.id", format!("msg_{:016x}", rng.next())),
                        i("gen_ai.usage.input_tokens", rng.below(20_000) as i64),
                        i("gen_ai.usage.output_tokens", rng.below(4_000) as i64),
                        i(
                            "gen_ai.usage.cache_read_input_tokens",
                            rng.below(200_000) as i64,
                        ),
                        d("cost_usd", rng.below(100_000) as f64 / 1e6),
                        s("session.id", session.clone()),
                    ],
                ),
                _ => {
                    let tool = rng.pick(TOOLS);
                    (
                        format!("execute_tool {tool}"),
                        span::SpanKind::Internal,
                        root.clone(),
                        vec![
                            s("gen_ai.operation.name", "execute_tool"),
                            s("gen_ai.tool.name", tool),
                            s("gen_ai.tool.call.id", format!("toolu_{:016x}", rng.next())),
                            b("success", rng.below(20) != 0),
                            i("duration_ms", (dur / 1_000_000) as i64),
                            s("session.id", session.clone()),
                        ],
                    )
                }
            };
            Span {
                trace_id: trace_id.clone(),
                span_id: rng.bytes(8),
                parent_span_id: parent,
                name,
                kind: kind as i32,
                start_time_unix_nano: start,
                end_time_unix_nano: start + dur,
                attributes,
                status: Some(Status {
                    code: status::StatusCode::Ok as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource(rng, &session)),
            scope_spans: vec![ScopeSpans {
                scope: scope(),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// `n` data points of Claude Code's metrics (delta sums), over a handful of metrics.
fn metrics(rng: &mut Rng, n: usize) -> ExportMetricsServiceRequest {
    let session = rng.uuid();
    let t = now_ns();
    let kinds: &[(&str, &str, &[&str])] = &[
        (
            "claude_code.token.usage",
            "tokens",
            &["input", "output", "cacheRead", "cacheCreation"],
        ),
        ("claude_code.cost.usage", "USD", &["-"]),
        (
            "claude_code.lines_of_code.count",
            "count",
            &["added", "removed"],
        ),
        ("claude_code.active_time.total", "s", &["-"]),
        (
            "claude_code.code_edit_tool.decision",
            "count",
            &["accept", "reject"],
        ),
    ];
    let mut metrics: Vec<Metric> = Vec::new();
    for k in 0..n {
        let (name, unit, types) = kinds[k % kinds.len()];
        let mut attributes = vec![
            s("session.id", session.clone()),
            s("model", rng.pick(MODELS)),
            s("user.account_uuid", format!("{:016x}", rng.next())),
        ];
        if types[0] != "-" {
            attributes.push(s("type", rng.pick(types)));
        }
        let value = if unit == "USD" || unit == "s" {
            number_data_point::Value::AsDouble(rng.below(1_000_000) as f64 / 1e4)
        } else {
            number_data_point::Value::AsInt(rng.below(50_000) as i64)
        };
        let point = NumberDataPoint {
            attributes,
            start_time_unix_nano: t - 60_000_000_000,
            time_unix_nano: t + k as u64,
            value: Some(value),
            ..Default::default()
        };
        match metrics.iter_mut().find(|m| m.name == name) {
            Some(Metric {
                data: Some(metric::Data::Sum(sum)),
                ..
            }) => sum.data_points.push(point),
            _ => metrics.push(Metric {
                name: name.into(),
                unit: unit.into(),
                description: format!("{name} of the session"),
                data: Some(metric::Data::Sum(Sum {
                    data_points: vec![point],
                    aggregation_temporality: AggregationTemporality::Delta as i32,
                    is_monotonic: true,
                })),
                ..Default::default()
            }),
        }
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource(rng, &session)),
            scope_metrics: vec![ScopeMetrics {
                scope: scope(),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// `n` log records: Claude Code's events (api_request, tool_result, user_prompt).
fn logs(rng: &mut Rng, n: usize) -> ExportLogsServiceRequest {
    let session = rng.uuid();
    let t = now_ns();
    let log_records = (0..n)
        .map(|k| {
            let ts = t + k as u64 * 1_000;
            let mut attributes = vec![
                s("session.id", session.clone()),
                s("event.timestamp", "2026-11-22T05:06:52.123Z"),
                s("user.account_uuid", format!("{:016x}", rng.next())),
            ];
            let event = match k % 3 {
                0 => {
                    attributes.extend([
                        s("model", rng.pick(MODELS)),
                        d("cost_usd", rng.below(100_000) as f64 / 1e6),
                        i("duration_ms", rng.below(30_000) as i64),
                        i("input_tokens", rng.below(20_000) as i64),
                        i("output_tokens", rng.below(4_000) as i64),
                        i("cache_read_tokens", rng.below(200_000) as i64),
                        i("cache_creation_tokens", rng.below(10_000) as i64),
                    ]);
                    "claude_code.api_request"
                }
                1 => {
                    attributes.extend([
                        s("tool_name", rng.pick(TOOLS)),
                        s("success", if rng.below(20) == 0 { "false" } else { "true" }),
                        i("duration_ms", rng.below(5_000) as i64),
                        s("decision", "accept"),
                        s("source", "config"),
                    ]);
                    "claude_code.tool_result"
                }
                _ => {
                    attributes.extend([
                        i("prompt_length", rng.below(4_000) as i64),
                        s("prompt", "<REDACTED>"),
                    ]);
                    "claude_code.user_prompt"
                }
            };
            attributes.push(s("event.name", &event["claude_code.".len()..]));
            LogRecord {
                time_unix_nano: ts,
                observed_time_unix_nano: ts,
                severity_number: 9,
                severity_text: "INFO".into(),
                body: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(event.into())),
                }),
                attributes,
                ..Default::default()
            }
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource(rng, &session)),
            scope_logs: vec![ScopeLogs {
                scope: scope(),
                log_records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[derive(Clone)]
enum Req {
    Traces(ExportTraceServiceRequest),
    Metrics(ExportMetricsServiceRequest),
    Logs(ExportLogsServiceRequest),
}

impl Req {
    fn build(signal: Signal, rng: &mut Rng, n: usize) -> Req {
        match signal {
            Signal::Traces => Req::Traces(traces(rng, n)),
            Signal::Metrics => Req::Metrics(metrics(rng, n)),
            Signal::Logs => Req::Logs(logs(rng, n)),
        }
    }
    fn encode(&self) -> Vec<u8> {
        match self {
            Req::Traces(r) => r.encode_to_vec(),
            Req::Metrics(r) => r.encode_to_vec(),
            Req::Logs(r) => r.encode_to_vec(),
        }
    }
}

/// One request of the pool: the message (for gRPC) and its HTTP body (protobuf, maybe gzipped).
struct Prepared {
    req: Req,
    body: bytes::Bytes,
    /// Uncompressed protobuf size: what the agent stores.
    otlp_len: u64,
}

enum Sender {
    Http {
        client: reqwest::Client,
        url: String,
        gzip: bool,
    },
    Grpc {
        clients: Box<GrpcClients>,
        /// Set with `--churn`: every call gets a new channel (a new connection) from here.
        churn: Option<Box<Endpoint>>,
        gzip: bool,
    },
}

struct GrpcClients {
    traces: TraceServiceClient<Channel>,
    metrics: MetricsServiceClient<Channel>,
    logs: LogsServiceClient<Channel>,
}

impl GrpcClients {
    fn new(channel: Channel, gzip: bool) -> Box<GrpcClients> {
        let (mut traces, mut metrics, mut logs) = (
            TraceServiceClient::new(channel.clone()),
            MetricsServiceClient::new(channel.clone()),
            LogsServiceClient::new(channel),
        );
        if gzip {
            traces = traces.send_compressed(CompressionEncoding::Gzip);
            metrics = metrics.send_compressed(CompressionEncoding::Gzip);
            logs = logs.send_compressed(CompressionEncoding::Gzip);
        }
        Box::new(GrpcClients {
            traces,
            metrics,
            logs,
        })
    }
}

impl Sender {
    async fn new(protocol: &str, addr: &str, signal: Signal, gzip: bool, churn: bool) -> Sender {
        match protocol {
            "http" => Sender::Http {
                client: reqwest::Client::builder()
                    // No idle pool under --churn: each request opens and closes a connection.
                    .pool_max_idle_per_host(if churn { 0 } else { 1024 })
                    .build()
                    .expect("http client"),
                url: format!("http://{addr}/v1/{}", signal.name()),
                gzip,
            },
            "grpc" => {
                let endpoint =
                    Channel::from_shared(format!("http://{addr}")).expect("grpc address");
                let channel = endpoint.connect().await.unwrap_or_else(|e| {
                    eprintln!("loadgen: cannot connect gRPC to {addr}: {e}");
                    std::process::exit(1)
                });
                Sender::Grpc {
                    clients: GrpcClients::new(channel, gzip),
                    churn: churn.then(|| Box::new(endpoint)),
                    gzip,
                }
            }
            other => {
                eprintln!("loadgen: --protocol {other}: want http or grpc\n{USAGE}");
                std::process::exit(2)
            }
        }
    }

    /// Sends one request; `Ok` only on an acknowledgement (HTTP 2xx, gRPC OK).
    async fn send(&mut self, p: &Prepared) -> Result<(), String> {
        if let Sender::Grpc {
            clients,
            churn: Some(endpoint),
            gzip,
        } = self
        {
            // Replacing the clients drops the last handle on the previous channel, which closes
            // its connection; the new channel connects on this call.
            *clients = GrpcClients::new(endpoint.connect_lazy(), *gzip);
        }
        match self {
            Sender::Http { client, url, gzip } => {
                let mut r = client
                    .post(url.as_str())
                    .header("content-type", "application/x-protobuf");
                if *gzip {
                    r = r.header("content-encoding", "gzip");
                }
                let resp = r
                    .body(p.body.clone())
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if resp.status().is_success() {
                    let _ = resp.bytes().await;
                    Ok(())
                } else {
                    Err(format!("HTTP {}", resp.status().as_u16()))
                }
            }
            Sender::Grpc { clients, .. } => {
                let result = match &p.req {
                    Req::Traces(r) => clients.traces.export(r.clone()).await.map(|_| ()),
                    Req::Metrics(r) => clients.metrics.export(r.clone()).await.map(|_| ()),
                    Req::Logs(r) => clients.logs.export(r.clone()).await.map(|_| ()),
                };
                result.map_err(|s| format!("gRPC {:?}", s.code()))
            }
        }
    }
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

fn main() {
    if flag("--help") || flag("-h") {
        println!("{USAGE}");
        return;
    }
    let threads: usize = parse("--threads", "2");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run());
}

async fn run() {
    let protocol = arg("--protocol", "http");
    let default_addr = if protocol == "grpc" {
        "127.0.0.1:4317"
    } else {
        "127.0.0.1:4318"
    };
    let addr = arg("--addr", default_addr);
    let signal = match arg("--signal", "traces").as_str() {
        "traces" => Signal::Traces,
        "metrics" => Signal::Metrics,
        "logs" => Signal::Logs,
        other => {
            eprintln!("loadgen: --signal {other}: want traces, metrics or logs\n{USAGE}");
            std::process::exit(2)
        }
    };
    let batch: usize = parse("--batch", &arg("--spans", "10"));
    let rate: f64 = parse("--rate", "0");
    let seconds: f64 = parse("--seconds", "10");
    let concurrency: usize = parse("--concurrency", if rate > 0.0 { "64" } else { "16" });
    let max_bytes: u64 = parse("--max-bytes", &u64::MAX.to_string());
    let pool_size: usize = parse("--pool", "256");
    let gzip = flag("--gzip");
    let churn = flag("--churn");
    let json_out = flag("--json");

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    let pool: Arc<Vec<Prepared>> = Arc::new(
        (0..pool_size.max(1))
            .map(|_| {
                let req = Req::build(signal, &mut rng, batch.max(1));
                let raw = req.encode();
                let otlp_len = raw.len() as u64;
                let body = if gzip {
                    let mut e =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    e.write_all(&raw).expect("gzip");
                    e.finish().expect("gzip")
                } else {
                    raw
                };
                Prepared {
                    req,
                    body: body.into(),
                    otlp_len,
                }
            })
            .collect(),
    );
    let mean_otlp = pool.iter().map(|p| p.otlp_len).sum::<u64>() / pool.len() as u64;
    let mean_wire = pool.iter().map(|p| p.body.len() as u64).sum::<u64>() / pool.len() as u64;

    let acked_bytes = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    // Rate mode: request k is due at start + k × period.
    let period = (rate > 0.0).then(|| Duration::from_secs_f64(batch as f64 / rate));

    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let mut sender = Sender::new(&protocol, &addr, signal, gzip, churn).await;
        let (pool, acked_bytes, stop, next) = (
            pool.clone(),
            acked_bytes.clone(),
            stop.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                if stop.load(Relaxed) {
                    break;
                }
                let k = next.fetch_add(1, Relaxed);
                let due = match period {
                    Some(p) => {
                        let due = start + p.mul_f64(k as f64);
                        if due >= deadline {
                            break;
                        }
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        now
                    }
                };
                let p = &pool[k as usize % pool.len()];
                match sender.send(p).await {
                    Ok(()) => {
                        tally.latencies.push(due.elapsed());
                        if acked_bytes.fetch_add(p.otlp_len, Relaxed) + p.otlp_len >= max_bytes {
                            stop.store(true, Relaxed);
                        }
                    }
                    Err(e) => {
                        tally.errors += 1;
                        tally.first_error.get_or_insert(e);
                    }
                }
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for t in tasks {
        let t = t.await.expect("sender task");
        all.latencies.extend(t.latencies);
        all.errors += t.errors;
        if all.first_error.is_none() {
            all.first_error = t.first_error;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut lat = all.latencies;
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1e3
    };
    let requests = lat.len() as u64;
    let items = requests * batch as u64;
    let summary = serde_json::json!({
        "protocol": protocol,
        "signal": signal.name(),
        "gzip": gzip,
        "mode": if rate > 0.0 { "rate" } else { "max" },
        "target_items_per_s": rate,
        "batch": batch,
        "concurrency": concurrency,
        "churn": churn,
        "seconds": elapsed,
        "requests_ok": requests,
        "items_ok": items,
        "items_sent": (requests + all.errors) * batch as u64,
        "errors": all.errors,
        "first_error": all.first_error,
        "items_per_s": items as f64 / elapsed,
        "requests_per_s": requests as f64 / elapsed,
        "acked_otlp_bytes": acked_bytes.load(Relaxed),
        "request_otlp_bytes_mean": mean_otlp,
        "request_wire_bytes_mean": mean_wire,
        "ack_ms": { "p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "max": pct(1.0) },
    });
    eprintln!(
        "{protocol} {} batch={batch} concurrency={concurrency} request={mean_otlp}B (wire {mean_wire}B) seconds={elapsed:.1}: {:.0} requests/s, {:.0} {}/s acknowledged ({items} items); time to ack p50={:.2}ms p99={:.2}ms max={:.2}ms; errors={}{}",
        signal.name(),
        requests as f64 / elapsed,
        items as f64 / elapsed,
        if signal == Signal::Metrics { "data points" } else if signal == Signal::Traces { "spans" } else { "log records" },
        pct(0.50),
        pct(0.99),
        pct(1.0),
        all.errors,
        all.first_error.map(|e| format!(" (first: {e})")).unwrap_or_default(),
    );
    if json_out {
        println!("{summary}");
    }
}

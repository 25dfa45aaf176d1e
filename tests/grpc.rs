//! The OTLP/gRPC receiver end to end, with tonic clients (the generated `*ServiceClient`s, and
//! a raw-bytes codec where a well-behaved client would not send what we want to send): the three
//! signals into the spool and upstream with exact counts, gzip, size limits (wire and
//! decompressed), the token in gRPC metadata, a full spool under `reject` (`UNAVAILABLE` with a
//! `google.rpc.RetryInfo` detail), invalid protobuf (`INVALID_ARGUMENT`), and a shutdown that
//! does not wait forever for a stalled client.
//!
//! Every refusal is checked for its code, a useful message, nothing stored, and the refusal
//! counted in `/status`.

mod support;

use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use otlp_spool::otlp::{RpcStatus, Signal};
use prost::Message;
use support::*;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

const TRACE_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A config with gRPC on a free loopback port (and HTTP too, for `/status`).
fn grpc_config(dir: &std::path::Path, extra: &str) -> String {
    config_toml(dir, extra).replace("grpc_listen = \"\"", "grpc_listen = \"127.0.0.1:0\"")
}

/// A gauge with `gauge_points` points and a sum with `sum_points`, named `<prefix>-gauge` and
/// `<prefix>-sum`.
fn metrics_request(
    prefix: &str,
    gauge_points: usize,
    sum_points: usize,
) -> ExportMetricsServiceRequest {
    let points = |n: usize| -> Vec<NumberDataPoint> {
        (0..n)
            .map(|i| NumberDataPoint {
                time_unix_nano: 1_700_000_000_000_000_000 + i as u64,
                value: Some(number_data_point::Value::AsDouble(i as f64)),
                ..Default::default()
            })
            .collect()
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![
                    Metric {
                        name: format!("{prefix}-gauge"),
                        data: Some(metric::Data::Gauge(Gauge {
                            data_points: points(gauge_points),
                        })),
                        ..Default::default()
                    },
                    Metric {
                        name: format!("{prefix}-sum"),
                        data: Some(metric::Data::Sum(Sum {
                            data_points: points(sum_points),
                            aggregation_temporality: 2,
                            is_monotonic: true,
                        })),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The refusal counters of `/status`, as (invalid, too_large, unauthorized, full, storage).
fn refusal_counts(agent: &otlp_spool::Agent) -> [u64; 5] {
    ["invalid", "too_large", "unauthorized", "full", "storage"].map(|k| refused(agent, k))
}

/// Sends bytes as they are: a codec whose request and response messages are raw protobuf.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// One unary call with a raw body to `path`.
async fn raw_call(channel: Channel, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("channel ready");
    grpc.unary(
        tonic::Request::new(body),
        PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_three_signals_are_spooled_and_forwarded_with_exact_counts() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start().await;
    // The upstream refuses at first, so what was acknowledged is seen held in the spool.
    sink.set_fallback(Some(Reply::Status(503, None)));
    let agent = start_agent(&grpc_config(dir.path(), &destination("up", &sink, ""))).await;
    let ch = grpc_channel(agent.grpc_addrs()[0]).await;
    let mut traces = TraceServiceClient::new(ch.clone());
    let mut metrics = MetricsServiceClient::new(ch.clone());
    let mut logs = LogsServiceClient::new(ch);

    let r = traces
        .export(trace_request("ta", 3))
        .await
        .expect("traces OK");
    assert_eq!(r.into_inner().partial_success, None);
    traces
        .export(trace_request("tb", 4))
        .await
        .expect("traces OK");
    let r = metrics
        .export(metrics_request("m", 5, 2))
        .await
        .expect("metrics OK");
    assert_eq!(r.into_inner().partial_success, None);
    let r = logs.export(logs_request("l", 3)).await.expect("logs OK");
    assert_eq!(r.into_inner().partial_success, None);
    // An empty request is valid OTLP: OK, counted, nothing stored.
    logs.export(ExportLogsServiceRequest::default())
        .await
        .expect("empty logs request OK");

    // Acknowledged means held: four records, whatever the upstream does.
    let usage = agent.spool().usage();
    assert_eq!(usage.records, 4, "{usage:?}");
    let held = agent
        .spool()
        .read(Signal::Traces, 0, u64::MAX, u64::MAX)
        .unwrap();
    assert_eq!(held.len(), 2);
    assert_eq!(
        held.iter().map(|r| u64::from(r.header.items)).sum::<u64>(),
        7,
        "items recorded in the record headers"
    );
    // Stored as received: the canonical protobuf of the first request, byte for byte.
    assert_eq!(held[0].payload(), &spans("ta", 3)[..]);

    sink.set_fallback(None);
    for (path, want) in [("/v1/traces", 7), ("/v1/metrics", 7), ("/v1/logs", 3)] {
        let got = sink.wait_items(path, want, Duration::from_secs(10)).await;
        assert_eq!(got, want, "items on {path}");
    }
    let mut want_spans = [names("ta", 3), names("tb", 4)].concat();
    want_spans.sort();
    assert_eq!(sink.names("/v1/traces"), want_spans);
    let mut want_metrics = [vec!["m-gauge".to_string(); 5], vec!["m-sum".to_string(); 2]].concat();
    want_metrics.sort();
    assert_eq!(sink.names("/v1/metrics"), want_metrics);
    assert_eq!(sink.names("/v1/logs"), names("l", 3));
    wait_until(
        || agent.spool().usage().records == 0,
        Duration::from_secs(5),
        "spool drains",
    )
    .await;
    // Nothing more arrives (no duplicates without a crash).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sink.items("/v1/traces"), 7);
    assert_eq!(sink.items("/v1/metrics"), 7);
    assert_eq!(sink.items("/v1/logs"), 3);

    let status = agent.status();
    for (signal, requests, items) in [("traces", 2, 7), ("metrics", 1, 7), ("logs", 2, 3)] {
        let r = &status["received"][signal];
        assert_eq!(r["grpc_requests"], requests, "{signal}: {r}");
        assert_eq!(r["http_requests"], 0, "{signal}: {r}");
        assert_eq!(r["items"], items, "{signal}: {r}");
    }
    assert_eq!(refusal_counts(&agent), [0; 5]);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_requests_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start().await;
    let agent = start_agent(&grpc_config(dir.path(), &destination("up", &sink, ""))).await;
    let ch = grpc_channel(agent.grpc_addrs()[0]).await;
    let mut traces = TraceServiceClient::new(ch.clone()).send_compressed(CompressionEncoding::Gzip);
    let mut metrics =
        MetricsServiceClient::new(ch.clone()).send_compressed(CompressionEncoding::Gzip);
    let mut logs = LogsServiceClient::new(ch.clone()).send_compressed(CompressionEncoding::Gzip);
    traces
        .export(trace_request("gz", 500))
        .await
        .expect("gzip traces OK");
    metrics
        .export(metrics_request("gzm", 3, 1))
        .await
        .expect("gzip metrics OK");
    logs.export(logs_request("gzl", 6))
        .await
        .expect("gzip logs OK");
    // Also asking for a gzip response does not get in the way.
    let mut both = TraceServiceClient::new(ch)
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);
    both.export(trace_request("gz2", 2))
        .await
        .expect("gzip both ways OK");

    for (path, want) in [("/v1/traces", 502), ("/v1/metrics", 4), ("/v1/logs", 6)] {
        assert_eq!(
            sink.wait_items(path, want, Duration::from_secs(10)).await,
            want,
            "items on {path}"
        );
    }
    let mut want = [names("gz", 500), names("gz2", 2)].concat();
    want.sort();
    assert_eq!(sink.names("/v1/traces"), want);
    assert_eq!(sink.names("/v1/logs"), names("gzl", 6));
    // The decompressed size is what is counted (and stored).
    let bytes = status_u64(&agent, "/received/traces/bytes");
    let plain = (spans("gz", 500).len() + spans("gz2", 2).len()) as u64;
    assert_eq!(bytes, plain);
    assert_eq!(status_u64(&agent, "/received/traces/grpc_requests"), 2);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_resource_exhausted_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let limits = "max_body = \"16KiB\"\nmax_decompressed = \"64KiB\"\n";
    let toml = grpc_config(dir.path(), "").replace(
        "grpc_listen = \"127.0.0.1:0\"\n",
        &format!("grpc_listen = \"127.0.0.1:0\"\n{limits}"),
    );
    let agent = start_agent(&toml).await;
    let ch = grpc_channel(agent.grpc_addrs()[0]).await;
    let plain = TraceServiceClient::new(ch.clone());
    let gzip = TraceServiceClient::new(ch.clone()).send_compressed(CompressionEncoding::Gzip);
    let size = |r: &ExportTraceServiceRequest| r.encoded_len();

    // Under both limits: fine.
    let small = trace_request("small", 100);
    assert!(size(&small) < 16 * 1024);
    plain
        .clone()
        .export(small)
        .await
        .expect("a small request is OK");

    // Each oversize refusal: (what, code, message, whether it carries a RetryInfo).
    let mut refusals: Vec<(&str, Code, String, bool)> = Vec::new();
    let mut refusal = |what, result: Result<tonic::Response<_>, Status>| {
        let status = match result {
            Ok(_) => Status::ok("accepted"),
            Err(status) => status,
        };
        let retry_info = RpcStatus::decode(status.details()).is_ok_and(|s| {
            s.details
                .iter()
                .any(|a| a.type_url.ends_with("google.rpc.RetryInfo"))
        });
        refusals.push((
            what,
            status.code(),
            status.message().to_string(),
            retry_info,
        ));
    };
    // Over max_body uncompressed, but small on the wire once gzipped and under max_decompressed.
    let wire = trace_request("wire", 450);
    assert!(
        size(&wire) > 16 * 1024 && size(&wire) < 64 * 1024,
        "{}",
        size(&wire)
    );
    gzip.clone()
        .export(wire)
        .await
        .expect("gzip under max_body on the wire and under max_decompressed is OK");
    // Over max_decompressed uncompressed (so over max_body too).
    let huge = trace_request("huge", 2000);
    assert!(size(&huge) > 64 * 1024);
    refusal(
        "uncompressed over both",
        plain.clone().export(huge.clone()).await,
    );
    // A small gzip message that inflates beyond max_decompressed (a gzip bomb in miniature).
    refusal(
        "gzip over max_decompressed",
        gzip.clone().export(huge).await,
    );
    eprintln!("oversize refusals: {refusals:#?}");
    for (what, code, message, retry_info) in &refusals {
        // RESOURCE_EXHAUSTED without RetryInfo: per the OTLP spec a client must not retry it
        // (OUT_OF_RANGE, tonic's own code for its decode limit, is retryable).
        assert_eq!(*code, Code::ResourceExhausted, "{what}: {message}");
        assert!(!retry_info, "{what}: no RetryInfo on an oversize refusal");
        assert!(
            message.contains("server.max_body") || message.contains("server.max_decompressed"),
            "{what}: the message names the limit: {message}"
        );
    }

    let usage = agent.spool().usage();
    assert_eq!(usage.records, 2, "only the two good requests are held");
    assert_eq!(status_u64(&agent, "/received/traces/grpc_requests"), 2);
    assert_eq!(refusal_counts(&agent), [0, 2, 0, 0, 0]);

    // A request larger than the whole spool (not the server limits) is also RESOURCE_EXHAUSTED.
    agent.shutdown().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&grpc_config(dir.path(), "max_bytes = \"4KiB\"\n")).await;
    let mut client = TraceServiceClient::new(grpc_channel(agent.grpc_addrs()[0]).await);
    let status = client
        .export(trace_request("big", 200))
        .await
        .expect_err("larger than the spool");
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("spool.max_bytes"),
        "{}",
        status.message()
    );
    assert_eq!(agent.spool().usage().records, 0);
    assert_eq!(refusal_counts(&agent), [0, 1, 0, 0, 0]);
    agent.shutdown().await;
}

/// As over HTTP, `server.max_body` bounds the request on the wire (here: uncompressed, so over
/// it while under `max_decompressed`). The receiver enforces a wire limit (unit-tested in
/// `receiver::grpc`), but `Agent::start` does not yet hand it `server.max_body`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_body_on_the_wire_is_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let toml = grpc_config(dir.path(), "").replace(
        "grpc_listen = \"127.0.0.1:0\"\n",
        "grpc_listen = \"127.0.0.1:0\"\nmax_body = \"16KiB\"\nmax_decompressed = \"64KiB\"\n",
    );
    let agent = start_agent(&toml).await;
    let mut client = TraceServiceClient::new(grpc_channel(agent.grpc_addrs()[0]).await);
    let wire = trace_request("wire", 450);
    assert!(wire.encoded_len() > 16 * 1024 && wire.encoded_len() < 64 * 1024);
    let status = client.export(wire).await.expect_err("over max_body");
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
    assert_eq!(agent.spool().usage().records, 0);
    assert_eq!(refusal_counts(&agent), [0, 1, 0, 0, 0]);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_checked_in_grpc_metadata() {
    let dir = tempfile::tempdir().unwrap();
    // Small limits, so that a refusal for size would show if the token were checked late.
    let agent = start_agent(&grpc_config(dir.path(), "").replace(
        "grpc_listen = \"127.0.0.1:0\"\n",
        "grpc_listen = \"127.0.0.1:0\"\nauth_token = \"t\"\nmax_body = \"16KiB\"\n\
         max_decompressed = \"64KiB\"\n",
    ))
    .await;
    let ch = grpc_channel(agent.grpc_addrs()[0]).await;
    let mut traces = TraceServiceClient::new(ch.clone());
    let with = |kv: &[(&'static str, &str)], r: ExportTraceServiceRequest| {
        let mut req = tonic::Request::new(r);
        for (k, v) in kv {
            req.metadata_mut().insert(*k, v.parse().unwrap());
        }
        req
    };

    let refusals: Vec<(&str, Status)> = vec![
        (
            "no metadata",
            traces.export(trace_request("no", 2)).await.unwrap_err(),
        ),
        (
            "wrong bearer",
            traces
                .export(with(
                    &[("authorization", "Bearer x")],
                    trace_request("no", 2),
                ))
                .await
                .unwrap_err(),
        ),
        (
            "wrong x-api-key",
            traces
                .export(with(&[("x-api-key", "tt")], trace_request("no", 2)))
                .await
                .unwrap_err(),
        ),
        (
            "token without Bearer",
            traces
                .export(with(&[("authorization", "t")], trace_request("no", 2)))
                .await
                .unwrap_err(),
        ),
        (
            "metrics, no metadata",
            MetricsServiceClient::new(ch.clone())
                .export(metrics_request("no", 1, 1))
                .await
                .unwrap_err(),
        ),
        (
            "logs, no metadata",
            LogsServiceClient::new(ch.clone())
                .export(logs_request("no", 1))
                .await
                .unwrap_err(),
        ),
        // Checked before the message is read: an unauthorized peer cannot make the agent
        // inflate a message (this one inflates past max_decompressed).
        (
            "wrong bearer, gzip message over max_decompressed",
            TraceServiceClient::new(ch.clone())
                .send_compressed(CompressionEncoding::Gzip)
                .export(with(
                    &[("authorization", "Bearer x")],
                    trace_request("big", 5000),
                ))
                .await
                .unwrap_err(),
        ),
    ];
    for (what, status) in &refusals {
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{what}: {}",
            status.message()
        );
        assert!(
            status.message().contains("auth_token"),
            "{what}: the message says what to send: {}",
            status.message()
        );
    }
    assert_eq!(agent.spool().usage().records, 0, "nothing stored");
    assert_eq!(refusal_counts(&agent), [0, 0, 7, 0, 0]);

    traces
        .export(with(
            &[("authorization", "Bearer t")],
            trace_request("bearer", 2),
        ))
        .await
        .expect("Authorization: Bearer t accepted");
    traces
        .export(with(&[("x-api-key", "t")], trace_request("key", 3)))
        .await
        .expect("x-api-key: t accepted");
    LogsServiceClient::new(ch)
        .send_compressed(CompressionEncoding::Gzip)
        .export({
            let mut req = tonic::Request::new(logs_request("l", 1));
            req.metadata_mut().insert("x-api-key", "t".parse().unwrap());
            req
        })
        .await
        .expect("gzip logs with x-api-key accepted");
    assert_eq!(agent.spool().usage().records, 3);
    assert_eq!(status_u64(&agent, "/received/traces/items"), 5);
    assert_eq!(refusal_counts(&agent), [0, 0, 7, 0, 0]);
    agent.shutdown().await;
}

/// `google.rpc.RetryInfo`, decoded independently of the agent.
#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<prost_types::Duration>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_under_reject_is_unavailable_with_retry_info() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start().await;
    sink.set_fallback(Some(Reply::Status(503, None)));
    let toml = grpc_config(
        dir.path(),
        &format!(
            "max_bytes = \"16KiB\"\nwhen_full = \"reject\"\n{}",
            destination("up", &sink, "")
        ),
    );
    let agent = start_agent(&toml).await;
    let mut client = TraceServiceClient::new(grpc_channel(agent.grpc_addrs()[0]).await);
    let mut accepted = Vec::new();
    let mut refusal = None;
    for i in 0..100 {
        match client.export(trace_request(&format!("r{i:03}"), 20)).await {
            Ok(_) => accepted.push(i),
            Err(status) => {
                refusal = Some(status);
                break;
            }
        }
    }
    let status = refusal.expect("the spool filled up and refused");
    assert!(accepted.len() > 5, "{} accepted", accepted.len());
    eprintln!(
        "reject over gRPC: {} requests accepted before {:?}: {}",
        accepted.len(),
        status.code(),
        status.message()
    );
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(
        status.message().contains("full") && status.message().contains("reject"),
        "{}",
        status.message()
    );
    let details = RpcStatus::decode(status.details()).expect("details are a google.rpc.Status");
    assert_eq!(details.code, Code::Unavailable as i32);
    assert_eq!(details.message, status.message());
    let retry: Vec<RetryInfo> = details
        .details
        .iter()
        .filter(|a| a.type_url == "type.googleapis.com/google.rpc.RetryInfo")
        .map(|a| RetryInfo::decode(&a.value[..]).expect("RetryInfo decodes"))
        .collect();
    assert_eq!(retry.len(), 1, "one RetryInfo in {details:?}");
    assert_eq!(
        retry[0].retry_delay,
        Some(prost_types::Duration {
            seconds: 5,
            nanos: 0
        })
    );
    let held = agent.spool().usage();
    assert!(held.bytes <= 16 * 1024);
    // Still full: another signal is refused the same way, and nothing held is touched.
    let logs = LogsServiceClient::new(grpc_channel(agent.grpc_addrs()[0]).await)
        .export(logs_request("late", 200))
        .await
        .expect_err("still full");
    assert_eq!(logs.code(), Code::Unavailable);
    assert_eq!(agent.spool().usage().records, held.records);
    assert_eq!(status_u64(&agent, "/dropped/full_items"), 0);
    assert_eq!(refusal_counts(&agent), [0, 0, 0, 2, 0]);

    // The upstream comes back: every acknowledged span arrives, and room returns.
    sink.set_fallback(None);
    let n = (accepted.len() * 20) as u64;
    assert_eq!(
        sink.wait_items("/v1/traces", n, Duration::from_secs(10))
            .await,
        n
    );
    wait_until(
        || agent.spool().usage().records == 0,
        Duration::from_secs(5),
        "spool drains",
    )
    .await;
    let mut want: Vec<String> = accepted
        .iter()
        .flat_map(|i| (0..20).map(move |j| format!("r{i:03}-{j}")))
        .collect();
    want.sort();
    assert_eq!(sink.names("/v1/traces"), want, "every acknowledged span");
    client
        .export(trace_request("after", 20))
        .await
        .expect("room again");
    assert_eq!(status_u64(&agent, "/dropped/full_items"), 0);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_protobuf_is_invalid_argument_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&grpc_config(dir.path(), "")).await;
    let ch = grpc_channel(agent.grpc_addrs()[0]).await;
    let mut wrong_id = trace_request("id", 1);
    wrong_id.resource_spans[0].scope_spans[0].spans[0].trace_id = vec![7; 35];
    let cases: [(&str, &'static str, Vec<u8>); 5] = [
        ("truncated field", TRACE_EXPORT, b"\x0a\x05ab".to_vec()),
        (
            "not protobuf",
            TRACE_EXPORT,
            b"{\"resourceSpans\":[]}".to_vec(),
        ),
        (
            "bad wire type",
            "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
            vec![0x0f, 0xff],
        ),
        (
            "invalid UTF-8 in a span name",
            TRACE_EXPORT,
            spans("x", 1)
                .into_iter()
                .map(|b| if b == b'x' { 0xff } else { b })
                .collect(),
        ),
        // Decodes, but no upstream would take it (and it would sink every batch it joins).
        ("a 35-byte trace id", TRACE_EXPORT, wrong_id.encode_to_vec()),
    ];
    let mut codes = Vec::new();
    for (what, path, body) in cases {
        let status = raw_call(ch.clone(), path, body).await.expect_err(what);
        codes.push(format!("{what}: {:?}", status.code()));
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{what}: {}",
            status.message()
        );
        assert!(
            status.message().contains("invalid OTLP protobuf"),
            "{what}: {}",
            status.message()
        );
    }
    eprintln!("invalid data codes: {codes:?}");
    // Bad gzip (compressed flag set, bytes not gzip) is not ours to decode but is refused too.
    assert_eq!(agent.spool().usage().records, 0, "nothing stored");
    assert_eq!(refusal_counts(&agent), [5, 0, 0, 0, 0]);

    // The raw path works for good bytes, stored byte for byte; an unknown method is UNIMPLEMENTED.
    let good = spans("raw", 3);
    let reply = raw_call(ch.clone(), TRACE_EXPORT, good.clone())
        .await
        .expect("valid raw bytes OK");
    assert!(reply.is_empty(), "an empty ExportTraceServiceResponse");
    let held = agent
        .spool()
        .read(Signal::Traces, 0, u64::MAX, u64::MAX)
        .unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].payload(), &good[..]);
    let status = raw_call(
        ch,
        "/opentelemetry.proto.collector.trace.v1.TraceService/Nope",
        good,
    )
    .await
    .expect_err("unknown method");
    assert_eq!(status.code(), Code::Unimplemented, "{}", status.message());
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_forever_for_a_stalled_client() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&grpc_config(dir.path(), "")).await;
    // No client deadline: only the server can end the call.
    let ch = Endpoint::from_shared(format!("http://{}", agent.grpc_addrs()[0]))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // A call whose request message never comes: the server waits for it.
    let stalled = tokio::spawn(async move {
        let mut grpc = tonic::client::Grpc::new(ch);
        grpc.ready().await.unwrap();
        grpc.client_streaming(
            tonic::Request::new(tokio_stream::pending::<Vec<u8>>()),
            PathAndQuery::from_static(TRACE_EXPORT),
            RawCodec,
        )
        .await
        .map(|_| ())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!stalled.is_finished());
    let t0 = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), agent.shutdown())
        .await
        .expect("shutdown finished despite a stalled gRPC call");
    eprintln!(
        "shutdown with a stalled gRPC call took {:.1?}",
        t0.elapsed()
    );
    stalled.abort();
}

//! Load generator: POSTs OTLP/HTTP protobuf trace requests to an agent from N concurrent
//! connections for a fixed time, and reports acknowledged requests/s, spans/s and the
//! time-to-acknowledge percentiles. Every 200 it counts was fsynced by the agent first.
//!
//! ```sh
//! cargo run --release --example loadgen -- --addr 127.0.0.1:4318 --concurrency 16 --seconds 10 --spans 10
//! ```

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// A request shaped like an AI CLI's spans: a few string and int attributes each.
fn request(spans: usize) -> Vec<u8> {
    let attr = |k: &str, v: any_value::Value| KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    };
    let span = |i: usize| Span {
        trace_id: vec![7; 16],
        span_id: (i as u64 + 1).to_be_bytes().to_vec(),
        name: format!("chat claude-sonnet-{i}"),
        start_time_unix_nano: 1_795_318_401_418_000_000,
        end_time_unix_nano: 1_795_318_401_918_000_000,
        attributes: vec![
            attr(
                "gen_ai.system",
                any_value::Value::StringValue("anthropic".into()),
            ),
            attr(
                "gen_ai.request.model",
                any_value::Value::StringValue("claude-sonnet".into()),
            ),
            attr(
                "gen_ai.usage.input_tokens",
                any_value::Value::IntValue(1234),
            ),
            attr(
                "gen_ai.usage.output_tokens",
                any_value::Value::IntValue(567),
            ),
        ],
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: (0..spans).map(span).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

#[tokio::main]
async fn main() {
    let addr = arg("--addr", "127.0.0.1:4318");
    let concurrency: usize = arg("--concurrency", "16").parse().expect("--concurrency N");
    let seconds: u64 = arg("--seconds", "10").parse().expect("--seconds N");
    let spans: usize = arg("--spans", "10").parse().expect("--spans N");
    let body = bytes::Bytes::from(request(spans));
    let url = format!("http://{addr}/v1/traces");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (url, body) = (url.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let (mut latencies, mut errors) = (Vec::new(), 0u64);
            while Instant::now() < deadline {
                let sent = Instant::now();
                let ok = client
                    .post(&url)
                    .header("content-type", "application/x-protobuf")
                    .body(body.clone())
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    latencies.push(sent.elapsed());
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.unwrap();
        latencies.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let n = latencies.len() as f64;
    println!(
        "concurrency={concurrency} spans/request={spans} body={}B seconds={elapsed:.1}: {:.0} requests/s, {:.0} spans/s acknowledged; time to ack p50={:.2}ms p99={:.2}ms max={:.2}ms; errors={errors}",
        body.len(),
        n / elapsed,
        n * spans as f64 / elapsed,
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

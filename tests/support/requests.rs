//! OTLP request builders for tests: spans and log records with predictable names
//! (`<prefix>-<i>`, what [`super::Sink::names`] reports), those names as the sink returns them
//! (sorted), string attributes, and gzip. Built from the prost types alone, never from the
//! agent's code.

use std::io::Write;

use opentelemetry_proto::tonic::collector::{logs, trace};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;

/// A trace request with `n` spans named `<prefix>-<i>`, as canonical protobuf.
pub fn spans(prefix: &str, n: usize) -> Vec<u8> {
    trace_request(prefix, n).encode_to_vec()
}

/// [`spans`] as a message, for the gRPC clients.
pub fn trace_request(prefix: &str, n: usize) -> trace::v1::ExportTraceServiceRequest {
    trace_request_named((0..n).map(|i| format!("{prefix}-{i}")))
}

/// A trace request with one span (valid ids) per name, in one resource.
pub fn trace_request_named(
    names: impl IntoIterator<Item = String>,
) -> trace::v1::ExportTraceServiceRequest {
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    trace::v1::ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: names
                    .into_iter()
                    .map(|name| Span {
                        name,
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
}

/// A logs request with one log record per name `<prefix>-<i>` (string bodies, what
/// [`super::Sink::names`] reports), as canonical protobuf.
pub fn logs(prefix: &str, n: usize) -> Vec<u8> {
    logs_request(prefix, n).encode_to_vec()
}

/// [`logs`] as a message, for the gRPC clients.
pub fn logs_request(prefix: &str, n: usize) -> logs::v1::ExportLogsServiceRequest {
    use opentelemetry_proto::tonic::common::v1::AnyValue as Body;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    logs::v1::ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: (0..n)
                    .map(|i| LogRecord {
                        body: Some(Body {
                            value: Some(AnyValue::StringValue(format!("{prefix}-{i}"))),
                        }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// An attribute `key` with the string `value`.
pub fn kv(key: &str, value: &str) -> opentelemetry_proto::tonic::common::v1::KeyValue {
    opentelemetry_proto::tonic::common::v1::KeyValue {
        key: key.into(),
        value: Some(opentelemetry_proto::tonic::common::v1::AnyValue {
            value: Some(AnyValue::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// The names [`spans`] or [`logs`] carry for `prefix` and `n`, sorted like
/// [`super::Sink::names`].
pub fn names(prefix: &str, n: usize) -> Vec<String> {
    sorted((0..n).map(|i| format!("{prefix}-{i}")).collect())
}

/// The span names of the requests `spans(prefix, per_request)` for each of `prefixes`.
pub fn span_names(prefixes: &[String], per_request: usize) -> Vec<String> {
    prefixes
        .iter()
        .flat_map(|prefix| (0..per_request).map(move |i| format!("{prefix}-{i}")))
        .collect()
}

/// `names` sorted, to compare with [`super::Sink::names`].
pub fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

/// `body` gzipped at the default level.
pub fn gzip(body: &[u8]) -> Vec<u8> {
    gzip_at(body, flate2::Compression::default())
}

/// `body` gzipped at `level`.
pub fn gzip_at(body: &[u8], level: flate2::Compression) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), level);
    encoder.write_all(body).unwrap();
    encoder.finish().unwrap()
}

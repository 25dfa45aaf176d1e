//! Request bodies to canonical protobuf: content type (protobuf or OTLP/JSON), content encoding
//! (gzip or identity), size limits, validation and item counting.
//!
//! Invariant: what comes out is a valid `Export*ServiceRequest` of the route's signal, no larger
//! than `max_decompressed`, whose trace and span ids have their OTLP lengths; protobuf input is
//! passed through byte for byte once it validates, JSON input is transcoded once here. Knows no
//! transport: takes header values and bytes.

use std::io::Read;

use bytes::Bytes;
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, Exemplar};

use crate::observe::Refusal;
use crate::otlp::{
    self, ExportLogsServiceRequest, ExportMetricsServiceRequest, ExportRequest,
    ExportTraceServiceRequest, IdKind, Signal,
};

use super::Rejection;

/// The two OTLP/HTTP body formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Protobuf,
    Json,
}

impl Format {
    /// From a `Content-Type` value (parameters such as `; charset=utf-8` ignored).
    pub fn from_content_type(value: &str) -> Result<Format, Rejection> {
        let media = value
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/x-protobuf" | "application/protobuf" => Ok(Format::Protobuf),
            "application/json" => Ok(Format::Json),
            _ => Err(Rejection::new(
                415,
                Refusal::Invalid,
                format!(
                    "unsupported Content-Type {value:?}: OTLP/HTTP takes application/x-protobuf or application/json"
                ),
            )),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Protobuf => "application/x-protobuf",
            Format::Json => "application/json",
        }
    }
}

/// The most of an OTLP/JSON body accepted once decompressed, whatever `max_decompressed` says.
/// Transcoding holds the parsed JSON and the message built from it at once, about 40 times the
/// body's size (a 43 MiB body of log records peaked at 1.8 GB), so this bounds one JSON request
/// to a few hundred MB. Real clients' JSON batches are far smaller (Gemini CLI's logs carrying
/// whole prompts: hundreds of KB).
pub const MAX_JSON_BODY: u64 = 8 << 20;

/// A decoded request: canonical protobuf and how many items it holds.
#[derive(Debug)]
pub struct Decoded {
    /// For an uncompressed protobuf body, the body itself (no copy).
    pub payload: Bytes,
    pub items: u64,
}

/// Decompresses (per `content_encoding`), checks the size, and decodes `body`.
pub fn decode(
    signal: Signal,
    format: Format,
    content_encoding: Option<&str>,
    body: Bytes,
    max_decompressed: u64,
) -> Result<Decoded, Rejection> {
    let limit = match format {
        Format::Protobuf => max_decompressed,
        Format::Json => max_decompressed.min(MAX_JSON_BODY),
    };
    let too_large = || too_large(limit, max_decompressed);
    let raw = match content_encoding
        .map(|e| e.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("identity") => body,
        Some("gzip") | Some("x-gzip") => gunzip(&body, limit)?.into(),
        Some(other) => {
            return Err(Rejection::new(
                415,
                Refusal::Invalid,
                format!("unsupported Content-Encoding {other:?}: use gzip or none"),
            ))
        }
    };
    if raw.len() as u64 > limit {
        return Err(too_large());
    }
    let payload = match format {
        Format::Protobuf => raw,
        Format::Json => otlp::json::json_to_protobuf(signal, &raw)
            .map_err(|e| Rejection::new(400, Refusal::Invalid, e.to_string()))?
            .into(),
    };
    let items = validate(signal, &payload)?;
    Ok(Decoded { payload, items })
}

/// Decodes canonical protobuf as `signal`'s `Export*ServiceRequest`, checks its ids, and counts
/// its items: the validation every request passes before it is stored.
///
/// Ids are checked because prost's decoding does not, and a wrong-length id is not a local
/// problem: the record would be merged into batches with other clients' data, and upstreams (the
/// OpenTelemetry Collector, CloudWatch, any OTLP/JSON receiver) refuse the whole batch over it.
pub fn validate(signal: Signal, payload: &[u8]) -> Result<u64, Rejection> {
    match signal {
        Signal::Traces => validate_as::<ExportTraceServiceRequest>(payload, check_trace_ids),
        Signal::Metrics => validate_as::<ExportMetricsServiceRequest>(payload, check_exemplar_ids),
        Signal::Logs => validate_as::<ExportLogsServiceRequest>(payload, check_log_ids),
    }
}

fn validate_as<R: ExportRequest>(
    payload: &[u8],
    check_ids: fn(&R) -> Result<(), Rejection>,
) -> Result<u64, Rejection> {
    let request = otlp::decode_request::<R>(payload)
        .map_err(|e| Rejection::new(400, Refusal::Invalid, e.to_string()))?;
    check_ids(&request)?;
    Ok(request.items())
}

/// Refuses `bytes` unless empty or of `kind`'s length; `at` names the field (only rendered on
/// refusal).
fn check_id(kind: IdKind, bytes: &[u8], at: impl FnOnce() -> String) -> Result<(), Rejection> {
    if bytes.is_empty() || bytes.len() == kind.byte_len() {
        return Ok(());
    }
    Err(Rejection::new(
        400,
        Refusal::Invalid,
        format!(
            "invalid OTLP protobuf at `{}`: a {} must be {} bytes (or empty), found {} bytes",
            at(),
            kind.name(),
            kind.byte_len(),
            bytes.len()
        ),
    ))
}

fn check_trace_ids(request: &ExportTraceServiceRequest) -> Result<(), Rejection> {
    for (r, resource) in request.resource_spans.iter().enumerate() {
        for (s, scope) in resource.scope_spans.iter().enumerate() {
            for (i, span) in scope.spans.iter().enumerate() {
                let at =
                    |field: &str| format!("resourceSpans[{r}].scopeSpans[{s}].spans[{i}].{field}");
                check_id(IdKind::Trace, &span.trace_id, || at("traceId"))?;
                check_id(IdKind::Span, &span.span_id, || at("spanId"))?;
                check_id(IdKind::Span, &span.parent_span_id, || at("parentSpanId"))?;
                for (l, link) in span.links.iter().enumerate() {
                    check_id(IdKind::Trace, &link.trace_id, || {
                        at(&format!("links[{l}].traceId"))
                    })?;
                    check_id(IdKind::Span, &link.span_id, || {
                        at(&format!("links[{l}].spanId"))
                    })?;
                }
            }
        }
    }
    Ok(())
}

fn check_log_ids(request: &ExportLogsServiceRequest) -> Result<(), Rejection> {
    for (r, resource) in request.resource_logs.iter().enumerate() {
        for (s, scope) in resource.scope_logs.iter().enumerate() {
            for (i, record) in scope.log_records.iter().enumerate() {
                let at = |field: &str| {
                    format!("resourceLogs[{r}].scopeLogs[{s}].logRecords[{i}].{field}")
                };
                check_id(IdKind::Trace, &record.trace_id, || at("traceId"))?;
                check_id(IdKind::Span, &record.span_id, || at("spanId"))?;
            }
        }
    }
    Ok(())
}

/// Metrics carry ids only in exemplars (summaries have none).
fn check_exemplar_ids(request: &ExportMetricsServiceRequest) -> Result<(), Rejection> {
    for (r, resource) in request.resource_metrics.iter().enumerate() {
        for (s, scope) in resource.scope_metrics.iter().enumerate() {
            for (m, metric) in scope.metrics.iter().enumerate() {
                let at = |kind: &str, p: usize, e: usize, field: &str| {
                    format!(
                        "resourceMetrics[{r}].scopeMetrics[{s}].metrics[{m}].{kind}.dataPoints[{p}].exemplars[{e}].{field}"
                    )
                };
                match &metric.data {
                    Some(Data::Gauge(g)) => check_points(
                        g.data_points.iter().map(|p| &p.exemplars[..]),
                        |p, e, field| at("gauge", p, e, field),
                    )?,
                    Some(Data::Sum(g)) => check_points(
                        g.data_points.iter().map(|p| &p.exemplars[..]),
                        |p, e, field| at("sum", p, e, field),
                    )?,
                    Some(Data::Histogram(h)) => check_points(
                        h.data_points.iter().map(|p| &p.exemplars[..]),
                        |p, e, field| at("histogram", p, e, field),
                    )?,
                    Some(Data::ExponentialHistogram(h)) => check_points(
                        h.data_points.iter().map(|p| &p.exemplars[..]),
                        |p, e, field| at("exponentialHistogram", p, e, field),
                    )?,
                    Some(Data::Summary(_)) | None => {}
                }
            }
        }
    }
    Ok(())
}

/// Checks the exemplar ids of one metric's data points; `at(point, exemplar, field)` names a
/// field (only rendered on refusal).
fn check_points<'a>(
    points: impl Iterator<Item = &'a [Exemplar]>,
    at: impl Fn(usize, usize, &str) -> String,
) -> Result<(), Rejection> {
    for (p, exemplars) in points.enumerate() {
        for (e, exemplar) in exemplars.iter().enumerate() {
            check_id(IdKind::Trace, &exemplar.trace_id, || at(p, e, "traceId"))?;
            check_id(IdKind::Span, &exemplar.span_id, || at(p, e, "spanId"))?;
        }
    }
    Ok(())
}

/// The refusal of a body over `limit` (below `max_decompressed`: the JSON limit).
fn too_large(limit: u64, max_decompressed: u64) -> Rejection {
    let message = if limit < max_decompressed {
        format!(
            "OTLP/JSON request body is larger than {limit} bytes once decompressed (JSON takes \
             many times its size in memory to transcode, so it is limited below \
             server.max_decompressed); send smaller batches, or use OTLP/protobuf"
        )
    } else {
        format!(
            "request body is larger than {limit} bytes once decompressed \
             (server.max_decompressed); send smaller batches"
        )
    };
    Rejection::new(413, Refusal::TooLarge, message)
}

/// Gunzips at most `limit + 1` bytes: one byte past the limit is enough for the caller to refuse
/// the body as too large, without ever inflating a gzip bomb.
fn gunzip(body: &[u8], limit: u64) -> Result<Vec<u8>, Rejection> {
    let mut out = Vec::with_capacity((body.len() * 4).min(limit as usize));
    flate2::read::MultiGzDecoder::new(body)
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| Rejection::new(400, Refusal::Invalid, format!("invalid gzip body: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::metrics::v1::{
        Histogram, HistogramDataPoint, Metric, ResourceMetrics, ScopeMetrics,
    };
    use opentelemetry_proto::tonic::trace::v1::{span::Link, ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    use super::*;

    fn traces(span: Span) -> Vec<u8> {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span::default(), span],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    fn refusal(signal: Signal, payload: &[u8]) -> String {
        let rejection = validate(signal, payload).expect_err("the ids must be refused");
        assert_eq!(rejection.status, 400);
        rejection.message
    }

    /// Found by fuzzing (fuzz/regressions/decode_logs/): a 35-byte trace id passed prost, was
    /// stored, and made every batch holding it unsendable.
    #[test]
    fn wrong_length_ids_are_refused_naming_the_field() {
        let span = |trace_id: Vec<u8>, span_id: Vec<u8>| Span {
            trace_id,
            span_id,
            ..Default::default()
        };
        assert_eq!(
            validate(Signal::Traces, &traces(span(vec![1; 16], vec![2; 8]))).unwrap(),
            2
        );
        assert_eq!(
            validate(Signal::Traces, &traces(span(vec![], vec![]))).unwrap(),
            2,
            "empty means no id"
        );

        let message = refusal(Signal::Traces, &traces(span(vec![1; 35], vec![2; 8])));
        assert!(
            message.contains("`resourceSpans[0].scopeSpans[0].spans[1].traceId`")
                && message.contains("16 bytes (or empty), found 35"),
            "{message}"
        );
        let with_link = Span {
            links: vec![Link {
                trace_id: vec![1; 16],
                span_id: vec![2; 16],
                ..Default::default()
            }],
            ..span(vec![1; 16], vec![2; 8])
        };
        let message = refusal(Signal::Traces, &traces(with_link));
        assert!(message.contains("spans[1].links[0].spanId`"), "{message}");

        let logs = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord {
                        span_id: vec![0; 7],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let message = refusal(Signal::Logs, &logs.encode_to_vec());
        assert!(
            message.contains("`resourceLogs[0].scopeLogs[0].logRecords[0].spanId`")
                && message.contains("8 bytes"),
            "{message}"
        );

        let metrics = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        data: Some(Data::Histogram(Histogram {
                            data_points: vec![HistogramDataPoint {
                                exemplars: vec![Exemplar {
                                    trace_id: vec![0; 8],
                                    ..Default::default()
                                }],
                                ..Default::default()
                            }],
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let message = refusal(Signal::Metrics, &metrics.encode_to_vec());
        assert!(
            message.contains(
                "`resourceMetrics[0].scopeMetrics[0].metrics[0].histogram.dataPoints[0].exemplars[0].traceId`"
            ),
            "{message}"
        );
    }

    #[test]
    fn bytes_that_are_not_a_request_are_refused_naming_the_message() {
        let message = refusal(Signal::Metrics, b"\x0a\x05ab");
        assert!(
            message.contains("invalid OTLP protobuf ExportMetricsServiceRequest"),
            "{message}"
        );
    }
}

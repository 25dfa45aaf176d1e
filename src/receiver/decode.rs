//! Request bodies to canonical protobuf: content type (protobuf or OTLP/JSON), content encoding
//! (gzip or identity), size limits, validation and item counting.
//!
//! Invariant: what comes out is a valid `Export*ServiceRequest` of the route's signal, no larger
//! than `max_decompressed`, whose trace and span ids have their OTLP lengths; protobuf input is
//! passed through byte for byte once it validates, JSON input is transcoded once here. Knows no
//! transport: takes header values and bytes.

use std::io::Read;

use bytes::Bytes;

use crate::observe::Refusal;
use crate::otlp::{self, wire, Signal};

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

/// Checks canonical protobuf as `signal`'s `Export*ServiceRequest` (what prost would decode, and
/// ids of their OTLP lengths) and counts its items: the validation every request passes before it
/// is stored. Walks the wire format ([`wire`]) rather than decoding: nothing is allocated.
///
/// Ids are checked because prost's decoding does not, and a wrong-length id is not a local
/// problem: the record would be merged into batches with other clients' data, and upstreams (the
/// OpenTelemetry Collector, CloudWatch, any OTLP/JSON receiver) refuse the whole batch over it.
pub fn validate(signal: Signal, payload: &[u8]) -> Result<u64, Rejection> {
    let invalid = |message| Rejection::new(400, Refusal::Invalid, message);
    let walked = wire::walk(signal, payload).map_err(|e| invalid(e.to_string()))?;
    match walked.wrong_id {
        Some(id) => Err(invalid(id.describe(signal, payload))),
        None => Ok(walked.items),
    }
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
        metric::Data, Exemplar, Histogram, HistogramDataPoint, Metric, ResourceMetrics,
        ScopeMetrics,
    };
    use opentelemetry_proto::tonic::trace::v1::{span::Link, ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    use super::*;
    use crate::otlp::{
        ExportLogsServiceRequest, ExportMetricsServiceRequest, ExportTraceServiceRequest,
    };

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

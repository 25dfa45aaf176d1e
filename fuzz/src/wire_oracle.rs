//! The oracle of the wire walker (`otlp_spool::otlp::wire`): the validation the receiver ran
//! before it, kept here as test code. prost decodes the signal's `Export*ServiceRequest`, the
//! trace and span ids of the decoded message are checked (16 and 8 bytes, or empty: spans, span
//! links, log records, and the exemplars of gauges, sums and histograms), and the decoded message's
//! items are counted (spans, data points of the metric's one data kind, log records).
//!
//! [`agree`] runs both on one payload and panics unless they give the same verdict: refused by
//! both, or accepted by both with the same item count and the same wrong-id refusal (or none).
//! Compiled into the fuzz target `wire` (through `fuzz/src/lib.rs`), `tests/fuzz_corpus.rs`,
//! `tests/wire_differential.rs` and `examples/validate_cost.rs`: it uses only prost,
//! opentelemetry-proto and otlp_spool's public API.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, Exemplar};
use otlp_spool::otlp::{self, wire, IdKind, Signal};
use otlp_spool::receiver::decode;
use prost::Message;

/// What a validation says of a payload it accepts: its items, and the refusal of its first
/// wrong-length id if it has one.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    pub items: u64,
    pub wrong_id: Option<String>,
}

/// The old validation: prost's decode, then the id checks and the item count on the message.
pub fn prost_verdict(signal: Signal, payload: &[u8]) -> Result<Verdict, prost::DecodeError> {
    Ok(match signal {
        Signal::Traces => {
            let request = ExportTraceServiceRequest::decode(payload)?;
            let spans = request.resource_spans.iter().flat_map(|r| &r.scope_spans);
            Verdict {
                items: spans.map(|s| s.spans.len() as u64).sum(),
                wrong_id: trace_ids(&request).err(),
            }
        }
        Signal::Metrics => {
            let request = ExportMetricsServiceRequest::decode(payload)?;
            let metrics = request
                .resource_metrics
                .iter()
                .flat_map(|r| &r.scope_metrics);
            let metrics = metrics.flat_map(|s| &s.metrics);
            Verdict {
                items: metrics
                    .map(|m| match &m.data {
                        Some(Data::Gauge(g)) => g.data_points.len() as u64,
                        Some(Data::Sum(s)) => s.data_points.len() as u64,
                        Some(Data::Histogram(h)) => h.data_points.len() as u64,
                        Some(Data::ExponentialHistogram(h)) => h.data_points.len() as u64,
                        Some(Data::Summary(s)) => s.data_points.len() as u64,
                        None => 0,
                    })
                    .sum(),
                wrong_id: exemplar_ids(&request).err(),
            }
        }
        Signal::Logs => {
            let request = ExportLogsServiceRequest::decode(payload)?;
            let logs = request.resource_logs.iter().flat_map(|r| &r.scope_logs);
            Verdict {
                items: logs.map(|s| s.log_records.len() as u64).sum(),
                wrong_id: log_ids(&request).err(),
            }
        }
    })
}

/// The new validation: the wire walk.
pub fn walker_verdict(signal: Signal, payload: &[u8]) -> Result<Verdict, wire::ProtobufError> {
    let walked = wire::walk(signal, payload)?;
    Ok(Verdict {
        items: walked.items,
        wrong_id: walked.wrong_id.map(|id| id.describe(signal, payload)),
    })
}

/// Panics unless prost and the wire walker agree on `payload` as a request of `signal`, and the
/// receiver's validation and the exporter's item count say the same as the walk.
pub fn agree(signal: Signal, payload: &[u8]) {
    let old = prost_verdict(signal, payload);
    let new = walker_verdict(signal, payload);
    match (&old, &new) {
        (Ok(old), Ok(new)) => assert_eq!(old, new, "{signal:?}: {}", hex(payload)),
        (Err(_), Err(_)) => {}
        _ => panic!(
            "{signal:?}: prost says {old:?}, the wire walker says {new:?}, of {}",
            hex(payload)
        ),
    }
    let expected = new.map_err(|e| e.to_string());
    let validated = decode::validate(signal, payload).map_err(|rejection| {
        assert_eq!(rejection.status, 400, "{}", rejection.message);
        rejection.message
    });
    match &expected {
        Ok(Verdict {
            items,
            wrong_id: None,
        }) => assert_eq!(validated, Ok(*items)),
        Ok(Verdict {
            wrong_id: Some(refusal),
            ..
        }) => assert_eq!(validated.as_ref(), Err(refusal)),
        Err(refusal) => assert_eq!(validated.as_ref(), Err(refusal)),
    }
    let counted = otlp::count_items(signal, payload).map_err(|e| e.to_string());
    assert_eq!(counted, expected.map(|verdict| verdict.items));
}

/// Up to 4 KiB of `payload` in hex, for a failure message.
fn hex(payload: &[u8]) -> String {
    let shown = &payload[..payload.len().min(4096)];
    let text: String = shown.iter().map(|b| format!("{b:02x}")).collect();
    format!("{} bytes: {text}", payload.len())
}

/// Refuses `bytes` unless empty or of `kind`'s length; `at` names the field.
fn check_id(kind: IdKind, bytes: &[u8], at: impl FnOnce() -> String) -> Result<(), String> {
    if bytes.is_empty() || bytes.len() == kind.byte_len() {
        return Ok(());
    }
    Err(format!(
        "invalid OTLP protobuf at `{}`: a {} must be {} bytes (or empty), found {} bytes",
        at(),
        kind.name(),
        kind.byte_len(),
        bytes.len()
    ))
}

fn trace_ids(request: &ExportTraceServiceRequest) -> Result<(), String> {
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

fn log_ids(request: &ExportLogsServiceRequest) -> Result<(), String> {
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
fn exemplar_ids(request: &ExportMetricsServiceRequest) -> Result<(), String> {
    for (r, resource) in request.resource_metrics.iter().enumerate() {
        for (s, scope) in resource.scope_metrics.iter().enumerate() {
            for (m, metric) in scope.metrics.iter().enumerate() {
                let (kind, points): (&str, Vec<&[Exemplar]>) = match &metric.data {
                    Some(Data::Gauge(g)) => (
                        "gauge",
                        g.data_points.iter().map(|p| &p.exemplars[..]).collect(),
                    ),
                    Some(Data::Sum(g)) => (
                        "sum",
                        g.data_points.iter().map(|p| &p.exemplars[..]).collect(),
                    ),
                    Some(Data::Histogram(h)) => (
                        "histogram",
                        h.data_points.iter().map(|p| &p.exemplars[..]).collect(),
                    ),
                    Some(Data::ExponentialHistogram(h)) => (
                        "exponentialHistogram",
                        h.data_points.iter().map(|p| &p.exemplars[..]).collect(),
                    ),
                    Some(Data::Summary(_)) | None => continue,
                };
                for (p, exemplars) in points.into_iter().enumerate() {
                    for (e, exemplar) in exemplars.iter().enumerate() {
                        let at = |field: &str| {
                            format!(
                                "resourceMetrics[{r}].scopeMetrics[{s}].metrics[{m}].{kind}.dataPoints[{p}].exemplars[{e}].{field}"
                            )
                        };
                        check_id(IdKind::Trace, &exemplar.trace_id, || at("traceId"))?;
                        check_id(IdKind::Span, &exemplar.span_id, || at("spanId"))?;
                    }
                }
            }
        }
    }
    Ok(())
}

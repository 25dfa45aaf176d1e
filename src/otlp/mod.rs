//! OTLP payloads as the rest of the agent sees them: the three signals, validation and item
//! counting of canonical protobuf (by walking its wire format, in [`wire`]), and the OTLP/JSON
//! transcoding in [`json`].
//!
//! Everything stored in the spool is canonical OTLP protobuf (`Export*ServiceRequest`).

pub mod json;
pub mod wire;

pub use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
pub use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
pub use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

/// One of the three OTLP signals. Each has its own spool tree, route and export worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];

    /// A dense index (0, 1, 2) for per-signal arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The name used in config (`signals = [...]`), URLs (`/v1/<name>`) and spool trees.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }

    /// The signal [`Signal::name`] names.
    pub fn from_name(name: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// One value per signal, indexed by [`Signal`] (`routes[Signal::Logs]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PerSignal<T>([T; 3]);

impl<T> PerSignal<T> {
    /// The value of each signal, made by `value_of`.
    pub fn from_fn(value_of: impl FnMut(Signal) -> T) -> PerSignal<T> {
        PerSignal(Signal::ALL.map(value_of))
    }

    /// Each signal with its value, in [`Signal::ALL`]'s order.
    pub fn iter(&self) -> impl Iterator<Item = (Signal, &T)> {
        Signal::ALL.into_iter().zip(&self.0)
    }

    /// The values, in [`Signal::ALL`]'s order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }
}

/// The values of traces, metrics and logs, in that order.
impl<T> From<[T; 3]> for PerSignal<T> {
    fn from(values: [T; 3]) -> PerSignal<T> {
        PerSignal(values)
    }
}

impl<T> std::ops::Index<Signal> for PerSignal<T> {
    type Output = T;

    fn index(&self, signal: Signal) -> &T {
        &self.0[signal.index()]
    }
}

impl<T> std::ops::IndexMut<Signal> for PerSignal<T> {
    fn index_mut(&mut self, signal: Signal) -> &mut T {
        &mut self.0[signal.index()]
    }
}

/// `google.rpc.Status`: the body of OTLP/HTTP error responses, and the gRPC status details.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<prost_types::Any>,
}

pub use wire::ProtobufError;

/// Checks that `payload` is a well-formed `Export*ServiceRequest` of `signal` (as prost would
/// decode it; ids unchecked) and counts its items: spans, metric data points, or log records.
pub fn count_items(signal: Signal, payload: &[u8]) -> Result<u64, ProtobufError> {
    wire::walk(signal, payload).map(|walked| walked.items)
}

/// The two OTLP ids. Their bytes are of this length, or empty ("no id").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Trace,
    Span,
}

impl IdKind {
    pub fn byte_len(self) -> usize {
        match self {
            IdKind::Trace => 16,
            IdKind::Span => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            IdKind::Trace => "trace id",
            IdKind::Span => "span id",
        }
    }
}

/// Splits an `Export*ServiceRequest` into two smaller valid ones at a resource boundary, without
/// decoding: the message is a sequence of field-1 entries (one per resource), so any cut between
/// entries yields two valid requests. `None` when there is only one entry (or the bytes are not
/// a well-formed sequence of length-delimited fields).
pub fn split_in_two(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    let starts = entry_offsets(payload)?;
    if starts.len() < 2 {
        return None;
    }
    Some(payload.split_at(starts[starts.len() / 2]))
}

/// Where each top-level entry (one resource each) of a request starts, without decoding it;
/// `None` when the bytes are not a well-formed sequence of length-delimited fields.
pub fn entry_offsets(payload: &[u8]) -> Option<Vec<usize>> {
    let mut starts = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        starts.push(payload.len() - rest.len());
        let key = prost::encoding::decode_varint(&mut rest).ok()?;
        if key & 7 != 2 {
            return None; // only length-delimited fields are expected at the top level
        }
        let len = prost::encoding::decode_varint(&mut rest).ok()? as usize;
        if len > rest.len() {
            return None;
        }
        rest = &rest[len..];
    }
    Some(starts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    fn request(resources: usize, spans_each: usize) -> Vec<u8> {
        let span = Span {
            name: "s".into(),
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: (0..resources)
                .map(|_| ResourceSpans {
                    scope_spans: vec![ScopeSpans {
                        spans: vec![span.clone(); spans_each],
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
        }
        .encode_to_vec()
    }

    #[test]
    fn counts_and_rejects() {
        assert_eq!(count_items(Signal::Traces, &request(3, 2)).unwrap(), 6);
        assert_eq!(count_items(Signal::Traces, b"").unwrap(), 0);
        let e = count_items(Signal::Traces, b"\x0a\x05ab").unwrap_err();
        assert!(e.to_string().contains("ExportTraceServiceRequest"), "{e}");
    }

    #[test]
    fn split_keeps_every_item() {
        let payload = request(5, 3);
        let (a, b) = split_in_two(&payload).unwrap();
        assert_eq!(count_items(Signal::Traces, a).unwrap(), 6);
        assert_eq!(count_items(Signal::Traces, b).unwrap(), 9);
        assert!(split_in_two(&request(1, 9)).is_none());
    }
}

//! Validation and item counting of canonical OTLP protobuf by walking its wire format: field keys,
//! wire types, lengths, nesting depth, UTF-8 where the schema says `string`, id lengths. Nothing
//! is decoded into messages and nothing is allocated unless the payload is refused (the receiver
//! validates every request; prost's decode cost an allocation per string, id and message).
//!
//! The schema is data: one `Message` table per protobuf message, transcribed from the `.proto`
//! files of opentelemetry-proto 0.33 (the crate's generated `opentelemetry_proto::tonic` types
//! show each field's number and type), and one walker that reads any of them.
//!
//! Invariant: [`walk`] refuses exactly the payloads that prost 0.14's decoding of the signal's
//! `Export*ServiceRequest` refuses, and counts the items (spans, metric data points, log records)
//! the decoded message holds, honouring prost's rules: the last occurrence of a singular field
//! wins, occurrences of a singular message merge, a `oneof` member replaces another; repeated
//! scalars may come packed or not; unknown fields (groups included) are skipped but must be
//! well-formed; at most 100 nested messages (prost's recursion limit). `tests/wire_differential.rs`
//! and the fuzz target `wire` hold it to that against prost itself. Beyond prost it checks only
//! id lengths, reported apart ([`Walked::wrong_id`]) for the receiver to refuse; like prost it
//! takes any enum value. It must not allocate on the accepting path.

use std::fmt;

use super::{IdKind, Signal};

/// prost's recursion limit: a message may sit at most this many messages deep (the request
/// itself at 0), and unknown fields and groups count against the same budget.
const RECURSION_LIMIT: u32 = 100;

/// A protobuf wire type (the low three bits of a field key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Varint,
    I64,
    Len,
    StartGroup,
    EndGroup,
    I32,
}

impl Wire {
    fn name(self) -> &'static str {
        match self {
            Wire::Varint => "varint",
            Wire::I64 => "64-bit",
            Wire::Len => "length-delimited",
            Wire::StartGroup => "start-group",
            Wire::EndGroup => "end-group",
            Wire::I32 => "32-bit",
        }
    }
}

/// A field's type as the `.proto` declares it (only the types OTLP uses).
#[derive(Clone, Copy)]
enum Type {
    Bool,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    /// Any `enum` (prost takes every int32 value).
    Enum,
    Fixed32,
    Fixed64,
    Sfixed64,
    Double,
    String,
    Bytes,
    /// `bytes` holding an OTLP trace or span id: of the id's length, or empty.
    Id(IdKind),
    Message(&'static Message),
}

impl Type {
    const fn wire(self) -> Wire {
        match self {
            Type::Bool | Type::Int32 | Type::Int64 | Type::Uint32 | Type::Uint64 => Wire::Varint,
            Type::Sint32 | Type::Enum => Wire::Varint,
            Type::Fixed32 => Wire::I32,
            Type::Fixed64 | Type::Sfixed64 | Type::Double => Wire::I64,
            Type::String | Type::Bytes | Type::Id(_) | Type::Message(_) => Wire::Len,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Type::Bool => "bool",
            Type::Int32 => "int32",
            Type::Int64 => "int64",
            Type::Uint32 => "uint32",
            Type::Uint64 => "uint64",
            Type::Sint32 => "sint32",
            Type::Enum => "enum",
            Type::Fixed32 => "fixed32",
            Type::Fixed64 => "fixed64",
            Type::Sfixed64 => "sfixed64",
            Type::Double => "double",
            Type::String => "string",
            Type::Bytes | Type::Id(_) => "bytes",
            Type::Message(message) => message.name,
        }
    }
}

/// How a field occurs in its message.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Label {
    /// Singular (plain proto3, or `optional`): the last occurrence wins; a message merges.
    Single,
    /// `repeated`; numbers may also come packed into one length-delimited run.
    Repeated,
    /// `repeated`, and each occurrence is one of the items the request counts.
    Items,
    /// A member of the message's `oneof` (OTLP messages have at most one): an occurrence of
    /// another member replaces it, and with it the items and ids beneath it.
    Oneof,
}

/// One field of a message: `label type name = number;` in the `.proto`, with its JSON name.
struct Field {
    label: Label,
    ty: Type,
    name: &'static str,
    number: u32,
    /// The wire type of `ty`.
    wire: Wire,
}

const fn field(label: Label, ty: Type, name: &'static str, number: u32) -> Field {
    Field {
        label,
        ty,
        name,
        number,
        wire: ty.wire(),
    }
}

/// A protobuf message: its name and fields (in `.proto` order, except where noted).
struct Message {
    name: &'static str,
    fields: &'static [Field],
    /// The field of each number; OTLP numbers its fields below 32.
    by_number: [Option<&'static Field>; 32],
}

/// A message of `fields`, which must have numbers below 32, each once (checked when compiled).
const fn message(name: &'static str, fields: &'static [Field]) -> Message {
    let mut by_number = [None; 32];
    let mut i = 0;
    while i < fields.len() {
        let number = fields[i].number as usize;
        assert!(number > 0 && number < 32 && by_number[number].is_none());
        by_number[number] = Some(&fields[i]);
        i += 1;
    }
    Message {
        name,
        fields,
        by_number,
    }
}

impl Message {
    #[inline]
    fn field(&self, number: u32) -> Option<&'static Field> {
        *self.by_number.get(number as usize)?
    }
}

use Label::{Items, Oneof, Repeated, Single};
use Type::{
    Bool, Bytes, Double, Enum, Fixed32, Fixed64, Id, Int32, Int64, Sfixed64, Sint32, Uint32, Uint64,
};

// opentelemetry/proto/collector/{trace,metrics,logs}/v1/*_service.proto

static EXPORT_TRACE_SERVICE_REQUEST: Message = message(
    "ExportTraceServiceRequest",
    &[field(
        Repeated,
        Type::Message(&RESOURCE_SPANS),
        "resourceSpans",
        1,
    )],
);

static EXPORT_METRICS_SERVICE_REQUEST: Message = message(
    "ExportMetricsServiceRequest",
    &[field(
        Repeated,
        Type::Message(&RESOURCE_METRICS),
        "resourceMetrics",
        1,
    )],
);

static EXPORT_LOGS_SERVICE_REQUEST: Message = message(
    "ExportLogsServiceRequest",
    &[field(
        Repeated,
        Type::Message(&RESOURCE_LOGS),
        "resourceLogs",
        1,
    )],
);

// opentelemetry/proto/common/v1/common.proto

static ANY_VALUE: Message = message(
    "AnyValue",
    &[
        field(Oneof, Type::String, "stringValue", 1),
        field(Oneof, Bool, "boolValue", 2),
        field(Oneof, Int64, "intValue", 3),
        field(Oneof, Double, "doubleValue", 4),
        field(Oneof, Type::Message(&ARRAY_VALUE), "arrayValue", 5),
        field(Oneof, Type::Message(&KEY_VALUE_LIST), "kvlistValue", 6),
        field(Oneof, Bytes, "bytesValue", 7),
        field(Oneof, Int32, "stringValueStrindex", 8),
    ],
);

static ARRAY_VALUE: Message = message(
    "ArrayValue",
    &[field(Repeated, Type::Message(&ANY_VALUE), "values", 1)],
);

static KEY_VALUE_LIST: Message = message(
    "KeyValueList",
    &[field(Repeated, Type::Message(&KEY_VALUE), "values", 1)],
);

static KEY_VALUE: Message = message(
    "KeyValue",
    &[
        field(Single, Type::String, "key", 1),
        field(Single, Type::Message(&ANY_VALUE), "value", 2),
        field(Single, Int32, "keyStrindex", 3),
    ],
);

static INSTRUMENTATION_SCOPE: Message = message(
    "InstrumentationScope",
    &[
        field(Single, Type::String, "name", 1),
        field(Single, Type::String, "version", 2),
        field(Repeated, Type::Message(&KEY_VALUE), "attributes", 3),
        field(Single, Uint32, "droppedAttributesCount", 4),
    ],
);

static ENTITY_REF: Message = message(
    "EntityRef",
    &[
        field(Single, Type::String, "schemaUrl", 1),
        field(Single, Type::String, "type", 2),
        field(Repeated, Type::String, "idKeys", 3),
        field(Repeated, Type::String, "descriptionKeys", 4),
    ],
);

// opentelemetry/proto/resource/v1/resource.proto

static RESOURCE: Message = message(
    "Resource",
    &[
        field(Repeated, Type::Message(&KEY_VALUE), "attributes", 1),
        field(Single, Uint32, "droppedAttributesCount", 2),
        field(Repeated, Type::Message(&ENTITY_REF), "entityRefs", 3),
    ],
);

// opentelemetry/proto/trace/v1/trace.proto

static RESOURCE_SPANS: Message = message(
    "ResourceSpans",
    &[
        field(Single, Type::Message(&RESOURCE), "resource", 1),
        field(Repeated, Type::Message(&SCOPE_SPANS), "scopeSpans", 2),
        field(Single, Type::String, "schemaUrl", 3),
    ],
);

static SCOPE_SPANS: Message = message(
    "ScopeSpans",
    &[
        field(Single, Type::Message(&INSTRUMENTATION_SCOPE), "scope", 1),
        field(Items, Type::Message(&SPAN), "spans", 2),
        field(Single, Type::String, "schemaUrl", 3),
    ],
);

/// Ids are listed (and so checked, and named when wrong) in the order the receiver has always
/// named them: trace id, span id, parent span id.
static SPAN: Message = message(
    "Span",
    &[
        field(Single, Id(IdKind::Trace), "traceId", 1),
        field(Single, Id(IdKind::Span), "spanId", 2),
        field(Single, Type::String, "traceState", 3),
        field(Single, Id(IdKind::Span), "parentSpanId", 4),
        field(Single, Fixed32, "flags", 16),
        field(Single, Type::String, "name", 5),
        field(Single, Enum, "kind", 6),
        field(Single, Fixed64, "startTimeUnixNano", 7),
        field(Single, Fixed64, "endTimeUnixNano", 8),
        field(Repeated, Type::Message(&KEY_VALUE), "attributes", 9),
        field(Single, Uint32, "droppedAttributesCount", 10),
        field(Repeated, Type::Message(&SPAN_EVENT), "events", 11),
        field(Single, Uint32, "droppedEventsCount", 12),
        field(Repeated, Type::Message(&SPAN_LINK), "links", 13),
        field(Single, Uint32, "droppedLinksCount", 14),
        field(Single, Type::Message(&STATUS), "status", 15),
    ],
);

static SPAN_EVENT: Message = message(
    "Span.Event",
    &[
        field(Single, Fixed64, "timeUnixNano", 1),
        field(Single, Type::String, "name", 2),
        field(Repeated, Type::Message(&KEY_VALUE), "attributes", 3),
        field(Single, Uint32, "droppedAttributesCount", 4),
    ],
);

static SPAN_LINK: Message = message(
    "Span.Link",
    &[
        field(Single, Id(IdKind::Trace), "traceId", 1),
        field(Single, Id(IdKind::Span), "spanId", 2),
        field(Single, Type::String, "traceState", 3),
        field(Repeated, Type::Message(&KEY_VALUE), "attributes", 4),
        field(Single, Uint32, "droppedAttributesCount", 5),
        field(Single, Fixed32, "flags", 6),
    ],
);

static STATUS: Message = message(
    "Status",
    &[
        field(Single, Type::String, "message", 2),
        field(Single, Enum, "code", 3),
    ],
);

// opentelemetry/proto/metrics/v1/metrics.proto

static RESOURCE_METRICS: Message = message(
    "ResourceMetrics",
    &[
        field(Single, Type::Message(&RESOURCE), "resource", 1),
        field(Repeated, Type::Message(&SCOPE_METRICS), "scopeMetrics", 2),
        field(Single, Type::String, "schemaUrl", 3),
    ],
);

static SCOPE_METRICS: Message = message(
    "ScopeMetrics",
    &[
        field(Single, Type::Message(&INSTRUMENTATION_SCOPE), "scope", 1),
        field(Repeated, Type::Message(&METRIC), "metrics", 2),
        field(Single, Type::String, "schemaUrl", 3),
    ],
);

static METRIC: Message = message(
    "Metric",
    &[
        field(Single, Type::String, "name", 1),
        field(Single, Type::String, "description", 2),
        field(Single, Type::String, "unit", 3),
        field(Oneof, Type::Message(&GAUGE), "gauge", 5),
        field(Oneof, Type::Message(&SUM), "sum", 7),
        field(Oneof, Type::Message(&HISTOGRAM), "histogram", 9),
        field(
            Oneof,
            Type::Message(&EXPONENTIAL_HISTOGRAM),
            "exponentialHistogram",
            10,
        ),
        field(Oneof, Type::Message(&SUMMARY), "summary", 11),
        field(Repeated, Type::Message(&KEY_VALUE), "metadata", 12),
    ],
);

static GAUGE: Message = message(
    "Gauge",
    &[field(
        Items,
        Type::Message(&NUMBER_DATA_POINT),
        "dataPoints",
        1,
    )],
);

static SUM: Message = message(
    "Sum",
    &[
        field(Items, Type::Message(&NUMBER_DATA_POINT), "dataPoints", 1),
        field(Single, Enum, "aggregationTemporality", 2),
        field(Single, Bool, "isMonotonic", 3),
    ],
);

static HISTOGRAM: Message = message(
    "Histogram",
    &[
        field(Items, Type::Message(&HISTOGRAM_DATA_POINT), "dataPoints", 1),
        field(Single, Enum, "aggregationTemporality", 2),
    ],
);

static EXPONENTIAL_HISTOGRAM: Message = message(
    "ExponentialHistogram",
    &[
        field(
            Items,
            Type::Message(&EXPONENTIAL_HISTOGRAM_DATA_POINT),
            "dataPoints",
            1,
        ),
        field(Single, Enum, "aggregationTemporality", 2),
    ],
);

static SUMMARY: Message = message(
    "Summary",
    &[field(
        Items,
        Type::Message(&SUMMARY_DATA_POINT),
        "dataPoints",
        1,
    )],
);

static NUMBER_DATA_POINT: Message = message(
    "NumberDataPoint",
    &[
        field(Repeated, Type::Message(&KEY_VALUE), "attributes", 7),
        field(Single, Fixed64, "startTimeUnixNano", 2),
        field(Single, Fixed64, "timeUnixNano", 3),
        field(Oneof, Double, "asDouble", 4),
        field(Oneof, Sfixed64, "asInt", 6),
        field(Repeated, Type::Message(&EXEMPLAR), "exemplars", 5),
        field(Single, Uint32, "flags", 8),
    ],
);

static HISTOGRAM_DATA_POINT: Message = message(
    "HistogramDataPoint",
    &[
        field(Repeated, Type::Message(&KEY_VALUE), "attributes", 9),
        field(Single, Fixed64, "startTimeUnixNano", 2),
        field(Single, Fixed64, "timeUnixNano", 3),
        field(Single, Fixed64, "count", 4),
        field(Single, Double, "sum", 5), // optional
        field(Repeated, Fixed64, "bucketCounts", 6),
        field(Repeated, Double, "explicitBounds", 7),
        field(Repeated, Type::Message(&EXEMPLAR), "exemplars", 8),
        field(Single, Uint32, "flags", 10),
        field(Single, Double, "min", 11), // optional
        field(Single, Double, "max", 12), // optional
    ],
);

static EXPONENTIAL_HISTOGRAM_DATA_POINT: Message = message(
    "ExponentialHistogramDataPoint",
    &[
        field(Repeated, Type::Message(&KEY_VALUE), "attributes", 1),
        field(Single, Fixed64, "startTimeUnixNano", 2),
        field(Single, Fixed64, "timeUnixNano", 3),
        field(Single, Fixed64, "count", 4),
        field(Single, Double, "sum", 5), // optional
        field(Single, Sint32, "scale", 6),
        field(Single, Fixed64, "zeroCount", 7),
        field(Single, Type::Message(&BUCKETS), "positive", 8),
        field(Single, Type::Message(&BUCKETS), "negative", 9),
        field(Single, Uint32, "flags", 10),
        field(Repeated, Type::Message(&EXEMPLAR), "exemplars", 11),
        field(Single, Double, "min", 12), // optional
        field(Single, Double, "max", 13), // optional
        field(Single, Double, "zeroThreshold", 14),
    ],
);

static BUCKETS: Message = message(
    "ExponentialHistogramDataPoint.Buckets",
    &[
        field(Single, Sint32, "offset", 1),
        field(Repeated, Uint64, "bucketCounts", 2),
    ],
);

static SUMMARY_DATA_POINT: Message = message(
    "SummaryDataPoint",
    &[
        field(Repeated, Type::Message(&KEY_VALUE), "attributes", 7),
        field(Single, Fixed64, "startTimeUnixNano", 2),
        field(Single, Fixed64, "timeUnixNano", 3),
        field(Single, Fixed64, "count", 4),
        field(Single, Double, "sum", 5),
        field(
            Repeated,
            Type::Message(&VALUE_AT_QUANTILE),
            "quantileValues",
            6,
        ),
        field(Single, Uint32, "flags", 8),
    ],
);

static VALUE_AT_QUANTILE: Message = message(
    "SummaryDataPoint.ValueAtQuantile",
    &[
        field(Single, Double, "quantile", 1),
        field(Single, Double, "value", 2),
    ],
);

/// The ids come first here, trace id before span id (the `.proto` has span_id = 4 before
/// trace_id = 5): the order in which they are checked and named.
static EXEMPLAR: Message = message(
    "Exemplar",
    &[
        field(Single, Id(IdKind::Trace), "traceId", 5),
        field(Single, Id(IdKind::Span), "spanId", 4),
        field(Repeated, Type::Message(&KEY_VALUE), "filteredAttributes", 7),
        field(Single, Fixed64, "timeUnixNano", 2),
        field(Oneof, Double, "asDouble", 3),
        field(Oneof, Sfixed64, "asInt", 6),
    ],
);

// opentelemetry/proto/logs/v1/logs.proto

static RESOURCE_LOGS: Message = message(
    "ResourceLogs",
    &[
        field(Single, Type::Message(&RESOURCE), "resource", 1),
        field(Repeated, Type::Message(&SCOPE_LOGS), "scopeLogs", 2),
        field(Single, Type::String, "schemaUrl", 3),
    ],
);

static SCOPE_LOGS: Message = message(
    "ScopeLogs",
    &[
        field(Single, Type::Message(&INSTRUMENTATION_SCOPE), "scope", 1),
        field(Items, Type::Message(&LOG_RECORD), "logRecords", 2),
        field(Single, Type::String, "schemaUrl", 3),
    ],
);

/// Ids first, trace id before span id, as for [`SPAN`].
static LOG_RECORD: Message = message(
    "LogRecord",
    &[
        field(Single, Id(IdKind::Trace), "traceId", 9),
        field(Single, Id(IdKind::Span), "spanId", 10),
        field(Single, Fixed64, "timeUnixNano", 1),
        field(Single, Fixed64, "observedTimeUnixNano", 11),
        field(Single, Enum, "severityNumber", 2),
        field(Single, Type::String, "severityText", 3),
        field(Single, Type::Message(&ANY_VALUE), "body", 5),
        field(Repeated, Type::Message(&KEY_VALUE), "attributes", 6),
        field(Single, Uint32, "droppedAttributesCount", 7),
        field(Single, Fixed32, "flags", 8),
        field(Single, Type::String, "eventName", 12),
    ],
);

/// The `Export*ServiceRequest` of `signal`.
fn request(signal: Signal) -> &'static Message {
    match signal {
        Signal::Traces => &EXPORT_TRACE_SERVICE_REQUEST,
        Signal::Metrics => &EXPORT_METRICS_SERVICE_REQUEST,
        Signal::Logs => &EXPORT_LOGS_SERVICE_REQUEST,
    }
}

/// A well-formed request: its items, and its first id of the wrong length if it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walked {
    pub items: u64,
    pub wrong_id: Option<WrongId>,
}

/// A trace or span id that is neither empty nor of its OTLP length: the first in the order
/// resources, scopes, spans (log records, metrics, data points) come, and within a span its own
/// ids before its links'. Only the last occurrence of an id field counts, as in a decoded message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrongId {
    /// Where the id's field starts in the payload.
    offset: usize,
    kind: IdKind,
    len: usize,
}

impl WrongId {
    /// The refusal's text, naming the field by its path in `payload` (the payload walked).
    pub fn describe(&self, signal: Signal, payload: &[u8]) -> String {
        format!(
            "invalid OTLP protobuf at `{}`: a {} must be {} bytes (or empty), found {} bytes",
            path_to(request(signal), payload, self.offset),
            self.kind.name(),
            self.kind.byte_len(),
            self.len
        )
    }
}

/// A payload that is not a well-formed `Export*ServiceRequest` of its signal.
#[derive(Debug, thiserror::Error)]
#[error("invalid OTLP protobuf {request} at byte {offset}{}: {problem}", in_path(.path))]
pub struct ProtobufError {
    request: &'static str,
    offset: usize,
    /// The field the problem is in, as a JSON-style path (empty: the request itself).
    path: String,
    problem: Problem,
}

fn in_path(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!(" (in `{path}`)")
    }
}

/// What is wrong at a place in the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Problem {
    /// A varint longer than 10 bytes, beyond 64 bits, or cut off.
    Varint,
    /// A field key beyond 32 bits.
    KeyTooLarge(u64),
    /// A field key with wire type 6 or 7.
    NoSuchWireType(u64),
    FieldZero,
    /// A known field with the wrong wire type for its type.
    WireType {
        actual: Wire,
        ty: &'static str,
    },
    /// A length or fixed-size value past the end of its message.
    Truncated,
    /// An end-group key that closes no group, or another group than the open one.
    EndGroup,
    NotUtf8,
    TooDeep,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Varint => f.write_str("invalid varint (cut off, or longer than 64 bits)"),
            Problem::KeyTooLarge(key) => write!(f, "invalid field key {key} (beyond 32 bits)"),
            Problem::NoSuchWireType(value) => write!(f, "invalid wire type value {value}"),
            Problem::FieldZero => f.write_str("invalid field number 0"),
            Problem::WireType { actual, ty } => {
                write!(f, "a {} value where the schema has a {ty}", actual.name())
            }
            Problem::Truncated => {
                f.write_str("a length or value that runs past the end of its message")
            }
            Problem::EndGroup => f.write_str("an end-group key that closes no open group"),
            Problem::NotUtf8 => f.write_str("a string that is not valid UTF-8"),
            Problem::TooDeep => write!(
                f,
                "recursion limit reached (messages and groups nest at most {RECURSION_LIMIT} deep)"
            ),
        }
    }
}

/// A problem and where the field it is in starts.
#[derive(Debug)]
struct Malformed {
    offset: usize,
    problem: Problem,
}

/// Walks `payload` as `signal`'s `Export*ServiceRequest`: refuses it if prost would not decode
/// it, and otherwise counts its items and finds its first wrong-length id.
pub fn walk(signal: Signal, payload: &[u8]) -> Result<Walked, ProtobufError> {
    let top = request(signal);
    let mut walk = Walk {
        buf: payload,
        items: 0,
        wrong_id: None,
    };
    match walk.message(top, 0, payload.len(), RECURSION_LIMIT) {
        Ok(()) => Ok(Walked {
            items: walk.items,
            wrong_id: walk.wrong_id,
        }),
        Err(Malformed { offset, problem }) => Err(ProtobufError {
            request: top.name,
            offset,
            path: path_to(top, payload, offset),
            problem,
        }),
    }
}

/// A walk under way: the payload, and what has been found in it so far.
struct Walk<'a> {
    buf: &'a [u8],
    items: u64,
    /// The first wrong-length id, in [`WrongId`]'s order.
    wrong_id: Option<WrongId>,
}

impl Walk<'_> {
    /// Walks the message `msg` in `buf[start..end]`; `budget` is how many more messages may
    /// nest in it (prost's recursion context: a nested message or an unknown field needs one).
    fn message(
        &mut self,
        msg: &'static Message,
        start: usize,
        end: usize,
        budget: u32,
    ) -> Result<(), Malformed> {
        let buf = self.buf;
        let had_wrong_id = self.wrong_id.is_some();
        // The oneof member seen last, the items beneath it, and whether the first wrong id is:
        // a member that replaces it takes them back. (Nothing beside such a oneof holds items or
        // ids in OTLP, so they are all the walk found since the member began: tests check the
        // schema for it.)
        let mut member = 0;
        let mut member_items = 0;
        let mut member_wrong_id = false;
        // Bit n: the last occurrence of field n, an id, has the wrong length.
        let mut wrong_ids: u32 = 0;
        let mut pos = start;
        while pos < end {
            let field_start = pos;
            let at = |problem| Malformed {
                offset: field_start,
                problem,
            };
            let (number, wire) = key(buf, &mut pos, end).map_err(at)?;
            let Some(field) = msg.field(number) else {
                skip(buf, number, wire, &mut pos, end, budget).map_err(at)?;
                continue;
            };
            if field.label == Oneof && number != member {
                self.items -= member_items;
                if member_wrong_id {
                    self.wrong_id = None;
                }
                (member, member_items, member_wrong_id) = (number, 0, false);
            }
            if wire != field.wire {
                if wire == Wire::Len && field.label == Repeated && field.wire != Wire::Len {
                    packed(buf, field.wire, &mut pos, end).map_err(at)?;
                    continue;
                }
                return Err(at(Problem::WireType {
                    actual: wire,
                    ty: field.ty.name(),
                }));
            }
            match wire {
                Wire::Varint => varint(buf, &mut pos, end).map(drop).map_err(at)?,
                Wire::I64 => fixed(&mut pos, end, 8).map_err(at)?,
                Wire::I32 => fixed(&mut pos, end, 4).map_err(at)?,
                _ => {
                    let (value_start, value_end) = delimited(buf, &mut pos, end).map_err(at)?;
                    match field.ty {
                        Type::String => {
                            let text = &buf[value_start..value_end];
                            // Most keys and values are ASCII, which is quicker to tell.
                            if !text.is_ascii() && std::str::from_utf8(text).is_err() {
                                return Err(at(Problem::NotUtf8));
                            }
                        }
                        Type::Id(kind) => {
                            let len = value_end - value_start;
                            if len == 0 || len == kind.byte_len() {
                                wrong_ids &= !(1 << number);
                            } else {
                                wrong_ids |= 1 << number;
                            }
                        }
                        Type::Message(child) => {
                            if budget == 0 {
                                return Err(at(Problem::TooDeep));
                            }
                            let (items, had_wrong_id) = (self.items, self.wrong_id.is_some());
                            if field.label == Items {
                                self.items += 1;
                            }
                            self.message(child, value_start, value_end, budget - 1)?;
                            if field.label == Oneof {
                                member_items += self.items - items;
                                member_wrong_id |= !had_wrong_id && self.wrong_id.is_some();
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        if wrong_ids != 0 && !had_wrong_id {
            // Its own ids come before those beneath it (a span's before its links').
            self.wrong_id = Some(first_wrong_id(buf, msg, wrong_ids, start, end));
        }
        Ok(())
    }
}

/// Of the id fields `wrong` marks (bit n: field n) in the (well-formed) message `msg` at
/// `buf[start..end]`, the first in table order, at its last occurrence.
#[cold]
fn first_wrong_id(buf: &[u8], msg: &Message, wrong: u32, start: usize, end: usize) -> WrongId {
    let (number, kind) = msg
        .fields
        .iter()
        .find_map(|f| match f.ty {
            Type::Id(kind) if wrong & (1 << f.number) != 0 => Some((f.number, kind)),
            _ => None,
        })
        .expect("only id fields are marked wrong");
    let mut last = WrongId {
        offset: start,
        kind,
        len: 0,
    };
    for occurrence in occurrences(buf, &[(start, end)]) {
        if occurrence.number == number && occurrence.wire == Wire::Len {
            if let Some((value_start, value_end)) = occurrence.value {
                last.offset = occurrence.start;
                last.len = value_end - value_start;
            }
        }
    }
    last
}

/// A field key: its number and wire type.
#[inline]
fn key(buf: &[u8], pos: &mut usize, end: usize) -> Result<(u32, Wire), Problem> {
    let key = varint(buf, pos, end)?;
    if key > u64::from(u32::MAX) {
        return Err(Problem::KeyTooLarge(key));
    }
    let wire = match key & 7 {
        0 => Wire::Varint,
        1 => Wire::I64,
        2 => Wire::Len,
        3 => Wire::StartGroup,
        4 => Wire::EndGroup,
        5 => Wire::I32,
        value => return Err(Problem::NoSuchWireType(value)),
    };
    let number = (key >> 3) as u32;
    if number == 0 {
        return Err(Problem::FieldZero);
    }
    Ok((number, wire))
}

/// A varint of at most 10 bytes within `buf[*pos..end]` (the tenth may only hold bit 63).
#[inline(always)]
fn varint(buf: &[u8], pos: &mut usize, end: usize) -> Result<u64, Problem> {
    // Most are one byte: keys of fields numbered below 16, lengths below 128.
    match buf[..end].get(*pos) {
        Some(&byte) if byte < 0x80 => {
            *pos += 1;
            Ok(u64::from(byte))
        }
        _ => long_varint(buf, pos, end),
    }
}

fn long_varint(buf: &[u8], pos: &mut usize, end: usize) -> Result<u64, Problem> {
    let bytes = &buf[*pos..end.min(*pos + 10)];
    let mut value = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            if i == 9 && byte > 1 {
                return Err(Problem::Varint);
            }
            *pos += i + 1;
            return Ok(value);
        }
    }
    Err(Problem::Varint)
}

/// A length-delimited value's bounds.
#[inline]
fn delimited(buf: &[u8], pos: &mut usize, end: usize) -> Result<(usize, usize), Problem> {
    let len = varint(buf, pos, end)?;
    if len > (end - *pos) as u64 {
        return Err(Problem::Truncated);
    }
    let start = *pos;
    *pos += len as usize;
    Ok((start, *pos))
}

#[inline]
fn fixed(pos: &mut usize, end: usize, width: usize) -> Result<(), Problem> {
    if end - *pos < width {
        return Err(Problem::Truncated);
    }
    *pos += width;
    Ok(())
}

/// A packed run of `wire` values (varints, or 4 or 8 bytes each) that must fill its length.
fn packed(buf: &[u8], wire: Wire, pos: &mut usize, end: usize) -> Result<(), Problem> {
    let (mut at, run_end) = delimited(buf, pos, end)?;
    match wire {
        Wire::I64 | Wire::I32 => {
            let width = if wire == Wire::I64 { 8 } else { 4 };
            if (run_end - at) % width != 0 {
                return Err(Problem::Truncated);
            }
        }
        _ => {
            while at < run_end {
                varint(buf, &mut at, run_end)?;
            }
        }
    }
    Ok(())
}

/// Skips an unknown field's value, as prost does: a group to its matching end, each field inside
/// it one level deeper.
fn skip(
    buf: &[u8],
    number: u32,
    wire: Wire,
    pos: &mut usize,
    end: usize,
    budget: u32,
) -> Result<(), Problem> {
    if budget == 0 {
        return Err(Problem::TooDeep);
    }
    match wire {
        Wire::Varint => varint(buf, pos, end).map(drop),
        Wire::I64 => fixed(pos, end, 8),
        Wire::I32 => fixed(pos, end, 4),
        Wire::Len => delimited(buf, pos, end).map(drop),
        Wire::StartGroup => loop {
            let (inner, inner_wire) = key(buf, pos, end)?;
            if inner_wire == Wire::EndGroup {
                return if inner == number {
                    Ok(())
                } else {
                    Err(Problem::EndGroup)
                };
            }
            skip(buf, inner, inner_wire, pos, end, budget - 1)?;
        },
        Wire::EndGroup => Err(Problem::EndGroup),
    }
}

/// One field occurrence in a message's bytes.
struct Occurrence {
    number: u32,
    wire: Wire,
    start: usize,
    /// A length-delimited value's bounds.
    value: Option<(usize, usize)>,
    /// Where it ends; `None` when its value cannot be read (the last one yielded then).
    end: Option<usize>,
}

/// The field occurrences in the byte ranges of one message instance (several ranges when a
/// singular message field occurs more than once: prost merges them), in order, up to the first
/// that cannot be read.
fn occurrences<'a>(
    buf: &'a [u8],
    ranges: &'a [(usize, usize)],
) -> impl Iterator<Item = Occurrence> + 'a {
    ranges.iter().flat_map(move |&(start, end)| {
        let mut pos = start;
        let mut broken = false;
        std::iter::from_fn(move || {
            if broken || pos >= end {
                return None;
            }
            let field_start = pos;
            let (number, wire) = key(buf, &mut pos, end).ok()?;
            let value = match wire {
                Wire::Len => delimited(buf, &mut pos, end).ok(),
                _ => skip(buf, number, wire, &mut pos, end, RECURSION_LIMIT)
                    .ok()
                    .map(|()| (pos, pos)),
            };
            broken = value.is_none();
            Some(Occurrence {
                number,
                wire,
                start: field_start,
                value: value.filter(|_| wire == Wire::Len),
                end: value.map(|_| pos),
            })
        })
    })
}

/// The JSON-style path (`resourceSpans[0].scopeSpans[2].spans[1].traceId`) of the field that
/// starts at or holds byte `target` of `payload`, read as `top`; empty for the request itself.
/// Indices count occurrences within the decoded message, so they follow prost's merging.
/// For refusals only: it allocates and re-reads the payload.
#[cold]
fn path_to(top: &'static Message, payload: &[u8], target: usize) -> String {
    let mut path = String::new();
    let mut msg = top;
    let mut instance = vec![(0, payload.len())];
    loop {
        let fields: Vec<Occurrence> = occurrences(payload, &instance).collect();
        let Some(k) = fields.iter().position(|o| {
            o.start == target || (o.start < target && o.end.is_some_and(|end| target < end))
        }) else {
            return path;
        };
        let here = &fields[k];
        if !path.is_empty() {
            path.push('.');
        }
        let Some(field) = msg.field(here.number) else {
            path.push_str(&format!("<unknown field {}>", here.number));
            return path;
        };
        path.push_str(field.name);
        let same = |o: &&Occurrence| o.number == here.number;
        if matches!(field.label, Repeated | Items) {
            let index = fields[..k].iter().filter(same).count();
            path.push_str(&format!("[{index}]"));
            instance = here.value.into_iter().collect();
        } else {
            // A singular message is every occurrence since another oneof member last replaced it.
            let since = match field.label {
                Oneof => fields[..k]
                    .iter()
                    .rposition(|o| {
                        o.number != here.number
                            && msg.field(o.number).is_some_and(|f| f.label == Oneof)
                    })
                    .map_or(0, |i| i + 1),
                _ => 0,
            };
            instance = fields[since..=k]
                .iter()
                .filter(same)
                .filter_map(|o| o.value)
                .collect();
        }
        match (field.ty, here.value) {
            (Type::Message(child), Some((value_start, _))) if target >= value_start => msg = child,
            _ => return path,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message reachable from the three requests.
    fn messages() -> Vec<&'static Message> {
        let mut seen: Vec<&'static Message> = Vec::new();
        let mut todo: Vec<&'static Message> = Signal::ALL.iter().map(|&s| request(s)).collect();
        while let Some(msg) = todo.pop() {
            if seen.iter().any(|m| std::ptr::eq(*m, msg)) {
                continue;
            }
            seen.push(msg);
            for field in msg.fields {
                if let Type::Message(child) = field.ty {
                    todo.push(child);
                }
            }
        }
        seen
    }

    /// Whether items or ids can occur in `msg` or beneath it.
    fn holds_counted(msg: &'static Message, seen: &mut Vec<*const Message>) -> bool {
        if seen.contains(&(msg as *const Message)) {
            return false;
        }
        seen.push(msg);
        msg.fields.iter().any(|f| match f.ty {
            Type::Id(_) => true,
            Type::Message(child) => f.label == Items || holds_counted(child, seen),
            _ => false,
        })
    }

    /// What the walker relies on beyond what [`message`] checks: ids are singular, items are
    /// messages, and where the members of a oneof hold items or ids, no other message field
    /// beside them does (so a member that replaces another takes back exactly what the walk
    /// found since the other began; the message's own ids are kept apart until its end).
    #[test]
    fn the_schema_is_what_the_walker_expects() {
        let all = messages();
        assert_eq!(all.len(), 34, "messages reachable from the requests");
        for msg in all {
            let members_hold = msg.fields.iter().any(|f| match f.ty {
                Type::Message(child) => f.label == Oneof && holds_counted(child, &mut Vec::new()),
                _ => false,
            });
            for field in msg.fields {
                let name = format!("{}.{}", msg.name, field.name);
                match field.ty {
                    Type::Id(_) => assert!(field.label == Single, "{name}"),
                    Type::Message(child) if members_hold && field.label != Oneof => {
                        assert!(!holds_counted(child, &mut Vec::new()), "{name}");
                        assert!(field.label != Items, "{name}");
                    }
                    Type::Message(_) => {}
                    _ => assert!(field.label != Items, "{name}"),
                }
            }
        }
    }

    fn walk_ok(signal: Signal, payload: &[u8]) -> Walked {
        walk(signal, payload).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn empty_request_is_valid_and_holds_nothing() {
        for signal in Signal::ALL {
            assert_eq!(
                walk_ok(signal, b""),
                Walked {
                    items: 0,
                    wrong_id: None
                }
            );
        }
    }

    #[test]
    fn refusals_name_the_request_the_byte_and_the_field() {
        // resourceLogs[0] { scopeLogs[0] { logRecords[0] { severityText: "\xff" } } }
        let payload = b"\x0a\x07\x12\x05\x12\x03\x1a\x01\xff";
        let e = walk(Signal::Logs, payload).unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid OTLP protobuf ExportLogsServiceRequest at byte 6 (in \
             `resourceLogs[0].scopeLogs[0].logRecords[0].severityText`): a string that is not \
             valid UTF-8"
        );
        let e = walk(Signal::Traces, b"\x0a\x05ab").unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid OTLP protobuf ExportTraceServiceRequest at byte 0 (in `resourceSpans[0]`): a \
             length or value that runs past the end of its message"
        );
        let e = walk(Signal::Metrics, b"\x0f").unwrap_err().to_string();
        assert!(e.ends_with("at byte 0: invalid wire type value 7"), "{e}");
    }

    /// `key` (one byte) and `value` as a length-delimited field.
    fn delimited_field(key: u8, value: &[u8]) -> Vec<u8> {
        [&[key, value.len() as u8][..], value].concat()
    }

    /// An `ExportMetricsServiceRequest` holding one metric.
    fn one_metric(metric: &[u8]) -> Vec<u8> {
        let scope = delimited_field(0x12, metric);
        delimited_field(0x0a, &delimited_field(0x12, &scope))
    }

    #[test]
    fn a_later_oneof_member_replaces_the_items_and_ids_of_an_earlier_one() {
        // gauge { dataPoints { exemplars { traceId: 8 bytes } } }, and a gauge of two points.
        let exemplar = delimited_field(0x2a, &[0; 8]);
        let point = delimited_field(0x2a, &exemplar);
        let wrong = delimited_field(0x2a, &delimited_field(0x0a, &point));
        let plain = delimited_field(0x2a, &[0x0a, 0, 0x0a, 0]);
        // Then sum { dataPoints {} }: the metric is that sum.
        let sum = delimited_field(0x3a, &[0x0a, 0]);
        let request = one_metric(&[wrong.clone(), sum].concat());
        assert_eq!(
            walk_ok(Signal::Metrics, &request),
            Walked {
                items: 1,
                wrong_id: None
            }
        );
        // Two gauges merge into one: three points, the wrong id in the third.
        let request = one_metric(&[plain, wrong].concat());
        let walked = walk_ok(Signal::Metrics, &request);
        assert_eq!(walked.items, 3);
        assert_eq!(
            walked.wrong_id.unwrap().describe(Signal::Metrics, &request),
            "invalid OTLP protobuf at `resourceMetrics[0].scopeMetrics[0].metrics[0].gauge\
             .dataPoints[2].exemplars[0].traceId`: a trace id must be 16 bytes (or empty), found \
             8 bytes"
        );
    }
}

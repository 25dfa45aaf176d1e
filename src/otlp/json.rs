//! OTLP/JSON <-> canonical protobuf transcoding for the `Export*ServiceRequest` bodies of the
//! three signals, and reading `Export*ServiceResponse` partial-success bodies from JSON upstreams.
//!
//! This module owns every difference between OTLP/JSON and plain proto3 JSON: trace and span ids
//! are hex rather than base64, and the number, null and unknown-field quirks of real exporters are
//! accepted while anything that does not fit the OTLP schema is rejected with the JSON path of the
//! offending value; nesting is bounded ([`MAX_JSON_DEPTH`]). Parsing and rendering are
//! prost-reflect's, driven by the descriptors shipped in `opentelemetry-proto`, so the protobuf
//! side is always the same canonical encoding whatever JSON dialect arrived. Invariant relied on: OTLP messages have no proto `map` fields, so every JSON
//! object key is a field name and id fields can be found by key name alone. This module does no
//! I/O, decompression or HTTP; callers hand it whole, decompressed bodies.

use std::fmt;
use std::sync::LazyLock;

use base64::prelude::{Engine as _, BASE64_STANDARD};
use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceResponse, metrics::v1::ExportMetricsServiceResponse,
    trace::v1::ExportTraceServiceResponse,
};
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions,
};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{IdKind, Signal};

/// Why an OTLP/JSON body or a payload could not be transcoded.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("body is not valid JSON ({0}); an OTLP/JSON body must be a single JSON object")]
    Syntax(#[source] serde_json::Error),
    /// Arrays and objects nested deeper than [`MAX_JSON_DEPTH`]. `at` is the JSON path of the
    /// first too-deep value, or a line and column when serde_json's own parser limit (128
    /// levels) stopped the parse before any path was known.
    #[error(
        "invalid OTLP/JSON {message_type} at {at}: arrays and objects nested more than \
         {MAX_JSON_DEPTH} levels deep; OTLP data never needs that: flatten deeply nested \
         attribute values"
    )]
    TooDeep {
        message_type: &'static str,
        at: String,
    },
    #[error("body is {found}, but an OTLP/JSON {message_type} must be a JSON object")]
    NotAnObject {
        message_type: &'static str,
        found: &'static str,
    },
    /// A value that does not fit the OTLP schema; `path` locates it, e.g.
    /// `resourceSpans[0].scopeSpans[1].spans[3].traceId`.
    #[error("invalid OTLP/JSON {message_type} at `{path}`: {problem}")]
    Invalid {
        message_type: &'static str,
        path: String,
        problem: String,
    },
    #[error("payload is not a valid protobuf {message_type}: {source}")]
    Protobuf {
        message_type: &'static str,
        #[source]
        source: prost::DecodeError,
    },
}

/// The deepest nesting of JSON arrays and objects accepted in a body (the top-level object is
/// level 1). A real request stays near 10 (a log body holding a map of lists is about 16); 64
/// leaves room for 14 levels of nested `kvlistValue`s. Depth costs stack, not just time: our walk
/// and prost-reflect's deserializer recurse per level, and the deepest body accepted here takes
/// about 600 KiB of a tokio worker's 2 MiB in an unoptimized build (under 128 KiB optimized),
/// so serde_json's own parser limit of 128 would be too deep to rely on. 64 is also below the two
/// limits that would otherwise answer less clearly: serde_json's (reported as
/// [`JsonError::TooDeep`] with a line and column, as no path is known yet) and prost's 100 nested
/// messages; each JSON object is at most one protobuf message, so JSON accepted here always
/// transcodes to protobuf that the receiver's validation and the export path can decode.
pub const MAX_JSON_DEPTH: usize = 64;

/// Transcodes an OTLP/JSON `Export{Trace,Metrics,Logs}ServiceRequest` body into canonical protobuf bytes.
pub fn json_to_protobuf(signal: Signal, body: &[u8]) -> Result<Vec<u8>, JsonError> {
    Ok(decode_json(request_type(signal), body)?.encode_to_vec())
}

/// Renders canonical protobuf `Export*ServiceRequest` bytes as OTLP/JSON (for destinations with encoding = "json").
pub fn protobuf_to_json(signal: Signal, payload: &[u8]) -> Result<Vec<u8>, JsonError> {
    Ok(protobuf_to_json_value(signal, payload)?
        .to_string()
        .into_bytes())
}

/// [`protobuf_to_json`] as a JSON value (for `otlp-spool dead-letters show`).
pub fn protobuf_to_json_value(signal: Signal, payload: &[u8]) -> Result<Value, JsonError> {
    let message_type = request_type(signal);
    let message =
        DynamicMessage::decode(message_descriptor(message_type), payload).map_err(|source| {
            JsonError::Protobuf {
                message_type,
                source,
            }
        })?;
    // OTLP/JSON requires enums as integers; lowerCamelCase names are prost-reflect's default.
    let options = SerializeOptions::new()
        .use_enum_numbers(true)
        .skip_default_fields(true);
    let mut json = message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .expect("OTLP messages have no map fields, so they always serialize to a JSON value");
    base64_ids_to_hex(&mut json);
    Ok(json)
}

/// A JSON `Export*ServiceResponse` / partial-success body parsed into (rejected_items, error_message) — used on upstream responses. Empty body or `{}` means (0, "").
pub fn parse_partial_success_json(signal: Signal, body: &[u8]) -> Result<(i64, String), JsonError> {
    if body.trim_ascii().is_empty() {
        return Ok((0, String::new()));
    }
    let message_type = response_type(signal);
    let response = decode_json(message_type, body)?;
    let not_the_response_type = |source| JsonError::Protobuf {
        message_type,
        source,
    };
    let partial_success = match signal {
        Signal::Traces => response
            .transcode_to::<ExportTraceServiceResponse>()
            .map_err(not_the_response_type)?
            .partial_success
            .map(|partial| (partial.rejected_spans, partial.error_message)),
        Signal::Metrics => response
            .transcode_to::<ExportMetricsServiceResponse>()
            .map_err(not_the_response_type)?
            .partial_success
            .map(|partial| (partial.rejected_data_points, partial.error_message)),
        Signal::Logs => response
            .transcode_to::<ExportLogsServiceResponse>()
            .map_err(not_the_response_type)?
            .partial_success
            .map(|partial| (partial.rejected_log_records, partial.error_message)),
    };
    Ok(partial_success.unwrap_or_default())
}

/// The OTLP descriptors shipped inside `opentelemetry-proto`, decoded on first use.
static OTLP_DESCRIPTORS: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(opentelemetry_proto::DESCRIPTORS)
        .expect("opentelemetry-proto ships a valid FileDescriptorSet")
});

fn request_type(signal: Signal) -> &'static str {
    match signal {
        Signal::Traces => "opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest",
        Signal::Metrics => "opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest",
        Signal::Logs => "opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest",
    }
}

fn response_type(signal: Signal) -> &'static str {
    match signal {
        Signal::Traces => "opentelemetry.proto.collector.trace.v1.ExportTraceServiceResponse",
        Signal::Metrics => "opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceResponse",
        Signal::Logs => "opentelemetry.proto.collector.logs.v1.ExportLogsServiceResponse",
    }
}

fn message_descriptor(full_name: &str) -> MessageDescriptor {
    OTLP_DESCRIPTORS
        .get_message_by_name(full_name)
        .unwrap_or_else(|| panic!("opentelemetry-proto's descriptors lack {full_name}"))
}

/// Parses an OTLP/JSON body into a message of type `message_type`.
fn decode_json(message_type: &'static str, body: &[u8]) -> Result<DynamicMessage, JsonError> {
    let mut json: Value = serde_json::from_slice(body).map_err(|error| {
        // serde_json's recursion guard: a syntax error only in name.
        if error.to_string().starts_with("recursion limit exceeded") {
            JsonError::TooDeep {
                message_type,
                at: format!("line {}, column {}", error.line(), error.column()),
            }
        } else {
            JsonError::Syntax(error)
        }
    })?;
    if !json.is_object() {
        return Err(JsonError::NotAnObject {
            message_type,
            found: json_kind(&json),
        });
    }
    let invalid = |error: LocatedError| JsonError::Invalid {
        message_type,
        path: error.path.unwrap_or_else(|| JsonPath::Root.to_string()),
        problem: error.problem,
    };
    check_depth_and_convert_ids(&mut json, &JsonPath::Root, 1, message_type)?;
    // Unknown fields come from newer OTLP versions and must be ignored, not refused.
    let options = DeserializeOptions::new().deny_unknown_fields(false);
    let located = LocatedValue {
        value: &json,
        path: JsonPath::Root,
    };
    DynamicMessage::deserialize_with_options(message_descriptor(message_type), located, &options)
        .map_err(invalid)
}

/// The id kind a JSON key holds (OTLP/JSON writes ids as hex instead of base64), for both the
/// lowerCamelCase and the proto field name (proto3 JSON parsers accept both, so both must be
/// rewritten).
fn id_kind_of_key(key: &str) -> Option<IdKind> {
    match key {
        "traceId" | "trace_id" => Some(IdKind::Trace),
        "spanId" | "span_id" | "parentSpanId" | "parent_span_id" => Some(IdKind::Span),
        _ => None,
    }
}

/// Refuses nesting deeper than [`MAX_JSON_DEPTH`] (`depth` is `value`'s level) and rewrites every
/// hex id under `value` into the base64 that proto3 JSON expects for `bytes`: one walk before
/// prost-reflect's, so that its recursion is bounded too.
fn check_depth_and_convert_ids(
    value: &mut Value,
    path: &JsonPath,
    depth: usize,
    message_type: &'static str,
) -> Result<(), JsonError> {
    if depth > MAX_JSON_DEPTH && (value.is_object() || value.is_array()) {
        return Err(JsonError::TooDeep {
            message_type,
            at: format!("`{path}`"),
        });
    }
    match value {
        Value::Object(fields) => {
            for (key, field_value) in fields.iter_mut() {
                let field_path = JsonPath::Field(path, key);
                match id_kind_of_key(key) {
                    Some(kind) => hex_id_to_base64(field_value, kind).map_err(|problem| {
                        JsonError::Invalid {
                            message_type,
                            path: field_path.to_string(),
                            problem,
                        }
                    })?,
                    None => check_depth_and_convert_ids(
                        field_value,
                        &field_path,
                        depth + 1,
                        message_type,
                    )?,
                }
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                let item_path = JsonPath::Index(path, index);
                check_depth_and_convert_ids(item, &item_path, depth + 1, message_type)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn hex_id_to_base64(id: &mut Value, kind: IdKind) -> Result<(), String> {
    let hex_id = match id {
        Value::Null => return Ok(()),
        Value::String(hex_id) => hex_id,
        other => {
            return Err(format!(
                "expected the {} as a hex string, found {}",
                kind.name(),
                json_kind(other)
            ))
        }
    };
    // OTLP/JSON: an empty id means "no id"; null keeps it out of the canonical encoding.
    if hex_id.is_empty() {
        *id = Value::Null;
        return Ok(());
    }
    let expected_hex_len = 2 * kind.byte_len();
    if hex_id.len() != expected_hex_len {
        return Err(format!(
            "a {} must be {expected_hex_len} hex characters ({} bytes), found {} characters",
            kind.name(),
            kind.byte_len(),
            hex_id.chars().count()
        ));
    }
    let bytes = hex::decode(&*hex_id).map_err(|error| {
        format!(
            "a {} must be hex digits ({error}); OTLP/JSON ids are hex, not base64",
            kind.name()
        )
    })?;
    *id = Value::String(BASE64_STANDARD.encode(bytes));
    Ok(())
}

/// Rewrites the base64 ids prost-reflect renders back into OTLP/JSON's lower-case hex.
fn base64_ids_to_hex(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            for (key, field_value) in fields.iter_mut() {
                match (id_kind_of_key(key), &*field_value) {
                    (Some(_), Value::String(base64_id)) => {
                        let bytes = BASE64_STANDARD
                            .decode(base64_id)
                            .expect("prost-reflect renders bytes fields as standard base64");
                        *field_value = Value::String(hex::encode(bytes));
                    }
                    _ => base64_ids_to_hex(field_value),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(base64_ids_to_hex),
        _ => {}
    }
}

/// Names a JSON value's type for error messages.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Where a value sits in a JSON body, rendered like `resourceSpans[0].scopeSpans[1].spans[3].traceId`.
/// Each step borrows its parent, so tracking costs nothing until an error is rendered.
#[derive(Debug, Clone, Copy)]
enum JsonPath<'a> {
    Root,
    Field(&'a JsonPath<'a>, &'a str),
    Index(&'a JsonPath<'a>, usize),
}

impl fmt::Display for JsonPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonPath::Root => f.write_str("(top level)"),
            JsonPath::Field(JsonPath::Root, key) => f.write_str(key),
            JsonPath::Field(parent, key) => write!(f, "{parent}.{key}"),
            JsonPath::Index(parent, index) => write!(f, "{parent}[{index}]"),
        }
    }
}

/// A deserialization failure and the innermost JSON location that saw it.
#[derive(Debug)]
struct LocatedError {
    path: Option<String>,
    problem: String,
}

impl LocatedError {
    /// Records `path` unless a deeper value already claimed the error.
    fn at(mut self, path: &JsonPath) -> Self {
        if self.path.is_none() {
            self.path = Some(path.to_string());
        }
        self
    }
}

impl fmt::Display for LocatedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problem)
    }
}

impl std::error::Error for LocatedError {}

impl de::Error for LocatedError {
    fn custom<T: fmt::Display>(problem: T) -> Self {
        LocatedError {
            path: None,
            problem: problem.to_string(),
        }
    }
}

/// Feeds a parsed JSON value to prost-reflect while tracking each value's path, because
/// prost-reflect's own errors ("invalid type: integer `5`, expected a list") say not where.
struct LocatedValue<'de, 'p> {
    value: &'de Value,
    path: JsonPath<'p>,
}

impl<'de> de::Deserializer<'de> for LocatedValue<'de, '_> {
    type Error = LocatedError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, LocatedError> {
        let result = match self.value {
            Value::Array(items) => visitor.visit_seq(LocatedSeq {
                items: items.iter().enumerate(),
                path: &self.path,
            }),
            Value::Object(fields) => visitor.visit_map(LocatedMap {
                fields: fields.iter(),
                pending_value: None,
                path: &self.path,
            }),
            scalar => scalar.deserialize_any(visitor).map_err(de::Error::custom),
        };
        result.map_err(|error| error.at(&self.path))
    }

    /// proto3 JSON: `null` means "field absent", whatever the field's type.
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, LocatedError> {
        if self.value.is_null() {
            visitor
                .visit_none::<LocatedError>()
                .map_err(|error| error.at(&self.path))
        } else {
            visitor.visit_some(self)
        }
    }

    /// Unknown fields are skipped without walking their contents.
    fn deserialize_ignored_any<V: Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, LocatedError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier
    }
}

struct LocatedSeq<'de, 'a> {
    items: std::iter::Enumerate<std::slice::Iter<'de, Value>>,
    path: &'a JsonPath<'a>,
}

impl<'de> SeqAccess<'de> for LocatedSeq<'de, '_> {
    type Error = LocatedError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, LocatedError> {
        let Some((index, value)) = self.items.next() else {
            return Ok(None);
        };
        let path = JsonPath::Index(self.path, index);
        seed.deserialize(LocatedValue { value, path }).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct LocatedMap<'de, 'a> {
    fields: serde_json::map::Iter<'de>,
    pending_value: Option<(&'de str, &'de Value)>,
    path: &'a JsonPath<'a>,
}

impl<'de> MapAccess<'de> for LocatedMap<'de, '_> {
    type Error = LocatedError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, LocatedError> {
        let Some((key, value)) = self.fields.next() else {
            return Ok(None);
        };
        self.pending_value = Some((key, value));
        seed.deserialize(de::value::BorrowedStrDeserializer::new(key))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, LocatedError> {
        let (key, value) = self
            .pending_value
            .take()
            .expect("serde asks for a map value only after its key");
        let path = JsonPath::Field(self.path, key);
        seed.deserialize(LocatedValue { value, path })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.fields.len())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::path::Path;

    use opentelemetry_proto::tonic::collector::{
        logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
        trace::v1::ExportTraceServiceRequest,
    };
    use opentelemetry_proto::tonic::common::v1::any_value;
    use opentelemetry_proto::tonic::logs::v1::LogRecord;
    use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point, Metric};
    use prost::Message;
    use serde_json::json;

    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/otlp-http");

    const JSON_FIXTURE_FOLDERS: [&str; 5] = [
        "otel-js-http-json",
        "otel-js-http-json-delta",
        "otel-js-http-json-gzip",
        "otel-python-http-json",
        "otel-python-http-json-gzip",
    ];

    const PROTOBUF_FIXTURE_FOLDERS: [&str; 4] = [
        "otel-js-http-protobuf",
        "otel-js-http-protobuf-gzip",
        "otel-python-http-protobuf",
        "otel-python-http-protobuf-gzip",
    ];

    /// One recorded request with what `expected.json` says it carries.
    struct FixtureRequest {
        label: String,
        signal: Signal,
        body: Vec<u8>,
        expected_items: usize,
        expected_names: Vec<String>,
    }

    fn read_json_file(path: &Path) -> Value {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn fixture_requests(folder: &str) -> Vec<FixtureRequest> {
        let dir = Path::new(FIXTURES).join(folder);
        let expected = read_json_file(&dir.join("expected.json"));
        let entries = expected["requests"]
            .as_array()
            .expect("expected.json lists requests");
        let recorded_bodies = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|entry| entry.as_ref().unwrap().path().extension() == Some("req".as_ref()))
            .count();
        assert_eq!(
            entries.len(),
            recorded_bodies,
            "{folder}: every .req has an expectation"
        );

        entries
            .iter()
            .map(|entry| {
                let request = entry["request"].as_str().unwrap();
                let metadata = read_json_file(&dir.join(format!("{request}.json")));
                let raw = std::fs::read(dir.join(format!("{request}.req"))).unwrap();
                let body = if metadata["body_is_gzip"].as_bool().unwrap() {
                    let mut body = Vec::new();
                    flate2::read::GzDecoder::new(raw.as_slice())
                        .read_to_end(&mut body)
                        .unwrap();
                    body
                } else {
                    raw
                };
                let signal = match entry["path"].as_str().unwrap() {
                    "/v1/traces" => Signal::Traces,
                    "/v1/metrics" => Signal::Metrics,
                    "/v1/logs" => Signal::Logs,
                    other => panic!("{folder}/{request}: unexpected path {other}"),
                };
                FixtureRequest {
                    label: format!("{folder}/{request}"),
                    signal,
                    body,
                    expected_items: entry["items"].as_u64().unwrap() as usize,
                    expected_names: serde_json::from_value(entry["names"].clone()).unwrap(),
                }
            })
            .collect()
    }

    fn data_point_count(metric: &Metric) -> usize {
        match &metric.data {
            Some(metric::Data::Gauge(gauge)) => gauge.data_points.len(),
            Some(metric::Data::Sum(sum)) => sum.data_points.len(),
            Some(metric::Data::Histogram(histogram)) => histogram.data_points.len(),
            Some(metric::Data::ExponentialHistogram(histogram)) => histogram.data_points.len(),
            Some(metric::Data::Summary(summary)) => summary.data_points.len(),
            None => 0,
        }
    }

    /// expected.json names a log record by its event name, else by its string body, else "".
    fn log_record_name(record: &LogRecord) -> String {
        if !record.event_name.is_empty() {
            return record.event_name.clone();
        }
        match record.body.as_ref().and_then(|body| body.value.as_ref()) {
            Some(any_value::Value::StringValue(text)) => text.clone(),
            _ => String::new(),
        }
    }

    /// Items (spans, metric data points, log records) and sorted names in a protobuf request.
    fn items_and_names(signal: Signal, protobuf: &[u8]) -> (usize, Vec<String>) {
        let (items, mut names) = match signal {
            Signal::Traces => {
                let request = ExportTraceServiceRequest::decode(protobuf).unwrap();
                let names: Vec<String> = request
                    .resource_spans
                    .iter()
                    .flat_map(|resource| &resource.scope_spans)
                    .flat_map(|scope| &scope.spans)
                    .map(|span| span.name.clone())
                    .collect();
                (names.len(), names)
            }
            Signal::Metrics => {
                let request = ExportMetricsServiceRequest::decode(protobuf).unwrap();
                let metrics: Vec<&Metric> = request
                    .resource_metrics
                    .iter()
                    .flat_map(|resource| &resource.scope_metrics)
                    .flat_map(|scope| &scope.metrics)
                    .collect();
                let points = metrics.iter().map(|metric| data_point_count(metric)).sum();
                (
                    points,
                    metrics.iter().map(|metric| metric.name.clone()).collect(),
                )
            }
            Signal::Logs => {
                let request = ExportLogsServiceRequest::decode(protobuf).unwrap();
                let names: Vec<String> = request
                    .resource_logs
                    .iter()
                    .flat_map(|resource| &resource.scope_logs)
                    .flat_map(|scope| &scope.log_records)
                    .map(log_record_name)
                    .collect();
                (names.len(), names)
            }
        };
        names.sort();
        (items, names)
    }

    /// Decodes a protobuf request with the prost types, as a value comparable with `==`.
    #[derive(Debug, PartialEq)]
    enum DecodedRequest {
        Traces(ExportTraceServiceRequest),
        Metrics(ExportMetricsServiceRequest),
        Logs(ExportLogsServiceRequest),
    }

    fn decode_request(signal: Signal, protobuf: &[u8]) -> DecodedRequest {
        match signal {
            Signal::Traces => DecodedRequest::Traces(Message::decode(protobuf).unwrap()),
            Signal::Metrics => DecodedRequest::Metrics(Message::decode(protobuf).unwrap()),
            Signal::Logs => DecodedRequest::Logs(Message::decode(protobuf).unwrap()),
        }
    }

    /// Every id-carrying key in rendered OTLP/JSON, with its value.
    fn rendered_ids(json: &Value, found: &mut Vec<(String, String)>) {
        match json {
            Value::Object(fields) => {
                for (key, value) in fields {
                    match (id_kind_of_key(key), value) {
                        (Some(_), Value::String(id)) => found.push((key.clone(), id.clone())),
                        _ => rendered_ids(value, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| rendered_ids(item, found)),
            _ => {}
        }
    }

    fn rejection(signal: Signal, body: &Value) -> String {
        let body = serde_json::to_vec(body).unwrap();
        json_to_protobuf(signal, &body)
            .expect_err("the body must be rejected")
            .to_string()
    }

    fn assert_mentions(message: &str, expected_parts: &[&str]) {
        for part in expected_parts {
            assert!(
                message.contains(part),
                "{message:?} should mention {part:?}"
            );
        }
    }

    /// A one-span trace request whose span gets `span_fields` merged in.
    fn trace_request_with_span(span_fields: Value) -> Value {
        let mut span = json!({
            "traceId": "5b8efff798038103d269b633813fc60c",
            "spanId": "eee19b7ec3c1b174",
            "name": "span",
        });
        for (key, value) in span_fields.as_object().unwrap() {
            span[key] = value.clone();
        }
        json!({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]})
    }

    fn transcode_traces(body: &Value) -> ExportTraceServiceRequest {
        let protobuf = json_to_protobuf(Signal::Traces, &serde_json::to_vec(body).unwrap())
            .expect("the body must be accepted");
        ExportTraceServiceRequest::decode(protobuf.as_slice()).unwrap()
    }

    #[test]
    fn json_fixtures_transcode_to_the_expected_items_and_names() {
        for folder in JSON_FIXTURE_FOLDERS {
            for request in fixture_requests(folder) {
                let protobuf = json_to_protobuf(request.signal, &request.body)
                    .unwrap_or_else(|e| panic!("{}: {e}", request.label));
                let (items, names) = items_and_names(request.signal, &protobuf);
                assert_eq!(items, request.expected_items, "{} items", request.label);
                assert_eq!(names, request.expected_names, "{} names", request.label);
            }
        }
    }

    #[test]
    fn protobuf_fixtures_survive_a_json_round_trip_with_hex_ids() {
        for folder in PROTOBUF_FIXTURE_FOLDERS {
            let mut ids_in_folder = 0;
            for request in fixture_requests(folder) {
                let json = protobuf_to_json(request.signal, &request.body)
                    .unwrap_or_else(|e| panic!("{}: {e}", request.label));
                let protobuf = json_to_protobuf(request.signal, &json)
                    .unwrap_or_else(|e| panic!("{}: {e}", request.label));
                assert_eq!(
                    decode_request(request.signal, &protobuf),
                    decode_request(request.signal, &request.body),
                    "{}",
                    request.label
                );
                assert_eq!(
                    items_and_names(request.signal, &protobuf),
                    (request.expected_items, request.expected_names),
                    "{}",
                    request.label
                );

                let mut ids = Vec::new();
                rendered_ids(&serde_json::from_slice(&json).unwrap(), &mut ids);
                ids_in_folder += ids.len();
                for (key, id) in ids {
                    let hex_len = 2 * id_kind_of_key(&key).unwrap().byte_len();
                    let is_lower_hex = id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                    assert!(
                        id.len() == hex_len && is_lower_hex,
                        "{}: {key} rendered as {id:?}",
                        request.label
                    );
                }
            }
            assert!(ids_in_folder > 0, "{folder}: spans and logs carry ids");
        }
    }

    #[test]
    fn trace_id_is_hex_in_json_and_raw_bytes_in_protobuf() {
        let trace_id = "5b8efff798038103d269b633813fc60c";
        let body = trace_request_with_span(json!({
            "traceId": trace_id,
            "parentSpanId": "0102030405060708",
            "kind": 2,
            "links": [{"traceId": "000102030405060708090a0b0c0d0e0f", "spanId": "a0a1a2a3a4a5a6a7"}],
        }));
        let protobuf =
            json_to_protobuf(Signal::Traces, &serde_json::to_vec(&body).unwrap()).unwrap();
        let decoded = ExportTraceServiceRequest::decode(protobuf.as_slice()).unwrap();
        let span = &decoded.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.trace_id, hex::decode(trace_id).unwrap());
        assert_eq!(span.trace_id.len(), 16);
        assert_eq!(span.parent_span_id, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            span.links[0].span_id,
            hex::decode("a0a1a2a3a4a5a6a7").unwrap()
        );

        let rendered: Value =
            serde_json::from_slice(&protobuf_to_json(Signal::Traces, &protobuf).unwrap()).unwrap();
        let rendered_span = &rendered["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(rendered_span["traceId"], trace_id);
        assert_eq!(rendered_span["spanId"], "eee19b7ec3c1b174");
        assert_eq!(rendered_span["parentSpanId"], "0102030405060708");
        assert_eq!(
            rendered_span["links"][0]["traceId"],
            "000102030405060708090a0b0c0d0e0f"
        );
        assert_eq!(rendered_span["kind"], 2, "OTLP/JSON enums are integers");
    }

    #[test]
    fn accepts_the_number_null_and_unknown_field_quirks_of_real_exporters() {
        let body = json!({
            "resourceSpans": [{
                "resource": null,
                "schemaUrl": null,
                "someFutureField": {"nested": [1, "two", null]},
                "scopeSpans": [{
                    "scope": {"name": "scope", "attributes": []},
                    "spans": [{
                        "traceId": "5B8EFFF798038103D269B633813FC60C",
                        "spanId": "eee19b7ec3c1b174",
                        "parentSpanId": "",
                        "name": "quirky",
                        "kind": "SPAN_KIND_SERVER",
                        "startTimeUnixNano": 1_544_712_660_000_000_000_u64,
                        "endTimeUnixNano": "1544712661000000000",
                        "droppedAttributesCount": "3",
                        "attributes": [
                            {"key": "null", "value": {}},
                            {"key": "int", "value": {"intValue": 5}},
                            {"key": "double", "value": {"doubleValue": 3}},
                        ],
                        "events": [],
                        "links": null,
                        "status": {"code": 2, "message": null},
                        "flags": 1.0,
                    }],
                }],
            }],
        });
        let request = transcode_traces(&body);
        let resource_spans = &request.resource_spans[0];
        assert!(resource_spans.resource.is_none());
        let span = &resource_spans.scope_spans[0].spans[0];
        assert_eq!(
            span.trace_id,
            hex::decode("5b8efff798038103d269b633813fc60c").unwrap()
        );
        assert!(span.parent_span_id.is_empty());
        assert_eq!(span.kind, 2);
        assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
        assert_eq!(span.end_time_unix_nano, 1_544_712_661_000_000_000);
        assert_eq!(span.dropped_attributes_count, 3);
        assert_eq!(span.flags, 1);
        assert_eq!(span.status.as_ref().unwrap().code, 2);
        let attribute_values: Vec<_> = span
            .attributes
            .iter()
            .map(|attribute| attribute.value.as_ref().unwrap().value.clone())
            .collect();
        assert_eq!(
            attribute_values,
            [
                None,
                Some(any_value::Value::IntValue(5)),
                Some(any_value::Value::DoubleValue(3.0)),
            ]
        );
    }

    #[test]
    fn empty_ids_are_absent_in_the_canonical_encoding() {
        let with_empty_ids = trace_request_with_span(json!({"parentSpanId": "", "traceId": ""}));
        let without_ids = json!({"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": "eee19b7ec3c1b174", "name": "span"}]}]}]});
        assert_eq!(
            json_to_protobuf(
                Signal::Traces,
                &serde_json::to_vec(&with_empty_ids).unwrap()
            )
            .unwrap(),
            json_to_protobuf(Signal::Traces, &serde_json::to_vec(&without_ids).unwrap()).unwrap(),
        );
    }

    #[test]
    fn accepts_proto_field_names_with_hex_ids() {
        let body = json!({"resource_spans": [{"scope_spans": [{"spans": [{
            "trace_id": "5b8efff798038103d269b633813fc60c",
            "span_id": "eee19b7ec3c1b174",
            "parent_span_id": "0102030405060708",
        }]}]}]});
        let span = &transcode_traces(&body).resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.trace_id.len(), 16);
        assert_eq!(span.parent_span_id, [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn unknown_enum_names_are_ignored_like_unknown_fields() {
        let body = trace_request_with_span(json!({"kind": "SPAN_KIND_FROM_THE_FUTURE"}));
        assert_eq!(
            transcode_traces(&body).resource_spans[0].scope_spans[0].spans[0].kind,
            0
        );
    }

    #[test]
    fn accepts_metric_and_log_quirks() {
        let metrics = json!({"resourceMetrics": [{"scopeMetrics": [{"metrics": [
            {"name": "counter", "sum": {
                "aggregationTemporality": "AGGREGATION_TEMPORALITY_DELTA",
                "isMonotonic": true,
                "dataPoints": [{"asInt": 5, "exemplars": [{
                    "asDouble": 3,
                    "traceId": "5b8efff798038103d269b633813fc60c",
                    "spanId": "eee19b7ec3c1b174",
                }]}],
            }},
            {"name": "histogram", "histogram": {"dataPoints": [
                {"count": 3, "bucketCounts": [0, "1", 2], "explicitBounds": [1, 2.5], "sum": 7}
            ]}},
        ]}]}]});
        let protobuf =
            json_to_protobuf(Signal::Metrics, &serde_json::to_vec(&metrics).unwrap()).unwrap();
        let request = ExportMetricsServiceRequest::decode(protobuf.as_slice()).unwrap();
        let metrics = &request.resource_metrics[0].scope_metrics[0].metrics;
        let Some(metric::Data::Sum(sum)) = &metrics[0].data else {
            panic!("{metrics:?}")
        };
        assert_eq!(sum.aggregation_temporality, 1);
        let exemplar = &sum.data_points[0].exemplars[0];
        assert_eq!(exemplar.trace_id.len(), 16);
        assert_eq!(exemplar.span_id.len(), 8);
        let Some(metric::Data::Histogram(histogram)) = &metrics[1].data else {
            panic!("{metrics:?}")
        };
        assert_eq!(histogram.data_points[0].bucket_counts, [0, 1, 2]);
        assert_eq!(histogram.data_points[0].sum, Some(7.0));

        let logs = json!({"resourceLogs": [{"scopeLogs": [{"logRecords": [{
            "severityNumber": "SEVERITY_NUMBER_WARN",
            "body": {"stringValue": "hello"},
            "traceId": "5b8efff798038103d269b633813fc60c",
            "spanId": null,
        }]}]}]});
        let protobuf = json_to_protobuf(Signal::Logs, &serde_json::to_vec(&logs).unwrap()).unwrap();
        let request = ExportLogsServiceRequest::decode(protobuf.as_slice()).unwrap();
        let record = &request.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(record.severity_number, 13);
        assert_eq!(record.trace_id.len(), 16);
        assert!(record.span_id.is_empty());
    }

    /// Numbers are parsed correctly rounded (serde_json's `float_roundtrip`): its default parser
    /// read this one, the shortest form of a double that the fuzzer produced, one ULP off, so a
    /// value changed on its way through the agent (and between two JSON round trips).
    #[test]
    fn doubles_are_read_exactly() {
        let text = "0.20000000010666702";
        let body = format!(
            r#"{{"resourceMetrics":[{{"scopeMetrics":[{{"metrics":[{{"name":"g","gauge":{{"dataPoints":[{{"asDouble":{text}}}]}}}}]}}]}}]}}"#
        );
        let protobuf = json_to_protobuf(Signal::Metrics, body.as_bytes()).unwrap();
        let request = ExportMetricsServiceRequest::decode(protobuf.as_slice()).unwrap();
        let Some(metric::Data::Gauge(gauge)) =
            &request.resource_metrics[0].scope_metrics[0].metrics[0].data
        else {
            panic!("{request:?}")
        };
        let expected: f64 = text.parse().unwrap(); // std's parser is correctly rounded
        assert_eq!(
            gauge.data_points[0].value,
            Some(number_data_point::Value::AsDouble(expected))
        );
    }

    #[test]
    fn rejects_bodies_that_are_not_json_objects() {
        let not_json = json_to_protobuf(Signal::Traces, b"resourceSpans=1").unwrap_err();
        assert!(matches!(not_json, JsonError::Syntax(_)), "{not_json:?}");
        assert_mentions(
            &not_json.to_string(),
            &["not valid JSON", "line 1 column 1"],
        );

        let empty = json_to_protobuf(Signal::Logs, b"").unwrap_err();
        assert!(matches!(empty, JsonError::Syntax(_)), "{empty:?}");

        let array = json_to_protobuf(Signal::Metrics, b"[{}]").unwrap_err();
        assert_mentions(
            &array.to_string(),
            &["an array", "ExportMetricsServiceRequest", "object"],
        );
    }

    #[test]
    fn rejects_wrong_types_naming_the_path() {
        let spans_not_a_list = json!({"resourceSpans": [{"scopeSpans": [{}, {"spans": 5}]}]});
        assert_mentions(
            &rejection(Signal::Traces, &spans_not_a_list),
            &[
                "`resourceSpans[0].scopeSpans[1].spans`",
                "integer `5`",
                "expected a list",
            ],
        );

        let name_not_a_string = trace_request_with_span(json!({"name": 5}));
        assert_mentions(
            &rejection(Signal::Traces, &name_not_a_string),
            &[
                "`resourceSpans[0].scopeSpans[0].spans[0].name`",
                "expected a string",
            ],
        );

        let span_is_null = json!({"resourceSpans": [{"scopeSpans": [{"spans": [null]}]}]});
        assert_mentions(
            &rejection(Signal::Traces, &span_is_null),
            &["`resourceSpans[0].scopeSpans[0].spans[0]`", "null"],
        );

        let bool_as_string = json!({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"attributes": [
            {"key": "k", "value": {"boolValue": "true"}}
        ]}]}]}]});
        assert_mentions(
            &rejection(Signal::Logs, &bool_as_string),
            &["`resourceLogs[0].scopeLogs[0].logRecords[0].attributes[0].value.boolValue`"],
        );

        let top_level_wrong = json!({"resourceMetrics": {"scopeMetrics": []}});
        assert_mentions(
            &rejection(Signal::Metrics, &top_level_wrong),
            &["`resourceMetrics`", "expected a list"],
        );

        let two_oneof_values = json!({"resourceLogs": [{"scopeLogs": [{"logRecords": [{
            "body": {"stringValue": "a", "intValue": 1}
        }]}]}]});
        assert_mentions(
            &rejection(Signal::Logs, &two_oneof_values),
            &["`resourceLogs[0].scopeLogs[0].logRecords[0].body`", "oneof"],
        );
    }

    #[test]
    fn rejects_bad_hex_ids_naming_the_path() {
        let span = "`resourceSpans[0].scopeSpans[0].spans[0]";
        let odd_length =
            trace_request_with_span(json!({"traceId": "5b8efff798038103d269b633813fc60"}));
        assert_mentions(
            &rejection(Signal::Traces, &odd_length),
            &[&format!("{span}.traceId`"), "32 hex characters", "found 31"],
        );

        let not_hex = trace_request_with_span(json!({"spanId": "eee19b7ec3c1b17z"}));
        assert_mentions(
            &rejection(Signal::Traces, &not_hex),
            &[&format!("{span}.spanId`"), "hex digits", "'z'"],
        );

        let span_id_as_trace_id = trace_request_with_span(json!({"traceId": "eee19b7ec3c1b174"}));
        assert_mentions(
            &rejection(Signal::Traces, &span_id_as_trace_id),
            &[&format!("{span}.traceId`"), "16 bytes", "found 16"],
        );

        let base64_id = trace_request_with_span(json!({"parentSpanId": "7uGbfsPBsXQ="}));
        assert_mentions(
            &rejection(Signal::Traces, &base64_id),
            &[&format!("{span}.parentSpanId`"), "16 hex characters"],
        );

        let link = trace_request_with_span(json!({"links": [{"spanId": "xyz"}]}));
        assert_mentions(
            &rejection(Signal::Traces, &link),
            &[&format!("{span}.links[0].spanId`")],
        );

        let numeric_id = trace_request_with_span(json!({"traceId": 5}));
        assert_mentions(
            &rejection(Signal::Traces, &numeric_id),
            &["hex string, found a number"],
        );

        let exemplar = json!({"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"gauge": {
            "dataPoints": [{"exemplars": [{"traceId": "00"}]}]
        }}]}]}]});
        assert_mentions(
            &rejection(Signal::Metrics, &exemplar),
            &["`resourceMetrics[0].scopeMetrics[0].metrics[0].gauge.dataPoints[0].exemplars[0].traceId`"],
        );

        let log = json!({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"spanId": "0g"}]}]}]});
        assert_mentions(
            &rejection(Signal::Logs, &log),
            &["`resourceLogs[0].scopeLogs[0].logRecords[0].spanId`"],
        );
    }

    #[test]
    fn rejects_numbers_out_of_range_naming_the_path() {
        let span = "`resourceSpans[0].scopeSpans[0].spans[0]";
        for (fields, field) in [
            (
                json!({"droppedAttributesCount": 4_294_967_296_u64}),
                "droppedAttributesCount",
            ),
            (
                json!({"droppedAttributesCount": -1}),
                "droppedAttributesCount",
            ),
            (
                json!({"startTimeUnixNano": "18446744073709551616"}),
                "startTimeUnixNano",
            ),
            (json!({"startTimeUnixNano": -5}), "startTimeUnixNano"),
            (json!({"endTimeUnixNano": 1.5}), "endTimeUnixNano"),
            (json!({"kind": 2_147_483_648_u64}), "kind"),
        ] {
            let body = trace_request_with_span(fields);
            assert_mentions(
                &rejection(Signal::Traces, &body),
                &[&format!("{span}.{field}`")],
            );
        }

        let int_overflow = json!({"resourceLogs": [{"scopeLogs": [{"logRecords": [{
            "body": {"intValue": 1e20}
        }]}]}]});
        assert_mentions(
            &rejection(Signal::Logs, &int_overflow),
            &[
                "`resourceLogs[0].scopeLogs[0].logRecords[0].body.intValue`",
                "out of range",
            ],
        );
    }

    /// `{"future": [[…]]}` with its innermost array at nesting level `depth` (the object is level
    /// 1): an unknown field, so nothing but its depth can get it refused.
    fn nested_unknown_field(depth: usize) -> Vec<u8> {
        let (open, close) = ("[".repeat(depth - 1), "]".repeat(depth - 1));
        format!(r#"{{"future":{open}{close}}}"#).into_bytes()
    }

    /// A log request whose body is a `kvlistValue` nested `levels` deep (level 0: a string).
    fn nested_kvlist_body(levels: usize) -> Vec<u8> {
        let open = r#"{"kvlistValue":{"values":[{"key":"k","value":"#.repeat(levels);
        let close = "}]}}".repeat(levels);
        let value = format!(r#"{open}{{"stringValue":"leaf"}}{close}"#);
        format!(r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"body":{value}}}]}}]}}]}}"#)
            .into_bytes()
    }

    #[test]
    fn nesting_to_the_limit_is_accepted_and_deeper_is_refused_naming_the_path() {
        json_to_protobuf(Signal::Traces, &nested_unknown_field(MAX_JSON_DEPTH)).unwrap();
        let error = json_to_protobuf(Signal::Traces, &nested_unknown_field(MAX_JSON_DEPTH + 1))
            .unwrap_err();
        assert!(matches!(error, JsonError::TooDeep { .. }), "{error:?}");
        let path = format!("`future{}`", "[0]".repeat(MAX_JSON_DEPTH - 1));
        assert_mentions(
            &error.to_string(),
            &[&path, "more than 64 levels deep", "flatten"],
        );

        // The body sits at level 8 and each kvlistValue adds 4: 14 fit, the 15th does not.
        let deepest = nested_kvlist_body(14);
        let protobuf = json_to_protobuf(Signal::Logs, &deepest).unwrap();
        assert_eq!(
            crate::otlp::count_items(Signal::Logs, &protobuf).unwrap(),
            1
        );
        protobuf_to_json(Signal::Logs, &protobuf).unwrap();
        let error = json_to_protobuf(Signal::Logs, &nested_kvlist_body(15)).unwrap_err();
        let path = format!(
            "`resourceLogs[0].scopeLogs[0].logRecords[0].body{}.kvlistValue`",
            ".kvlistValue.values[0].value".repeat(14)
        );
        assert_mentions(&error.to_string(), &[&path, "ExportLogsServiceRequest"]);
    }

    #[test]
    fn nesting_past_the_parser_limit_is_refused_with_its_line_and_column() {
        let error = json_to_protobuf(Signal::Logs, &nested_kvlist_body(100_000)).unwrap_err();
        assert!(matches!(error, JsonError::TooDeep { .. }), "{error:?}");
        assert_mentions(
            &error.to_string(),
            &["line 1, column ", "more than 64 levels"],
        );
        let error =
            json_to_protobuf(Signal::Traces, &"[".repeat(1 << 20).into_bytes()).unwrap_err();
        assert!(matches!(error, JsonError::TooDeep { .. }), "{error:?}");
    }

    /// The receiver decodes on a tokio worker thread (2 MiB of stack): the deepest body the
    /// limit lets through must transcode in half of it, in an unoptimized build too (it takes
    /// about 600 KiB there, under 128 KiB optimized).
    #[test]
    fn the_deepest_accepted_body_transcodes_in_half_a_worker_stack() {
        let deepest = nested_kvlist_body(14);
        std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(move || json_to_protobuf(Signal::Logs, &deepest).unwrap())
            .unwrap()
            .join()
            .expect("transcoding within 1 MiB of stack");
    }

    #[test]
    fn protobuf_to_json_rejects_bytes_that_are_not_a_request() {
        let error = protobuf_to_json(Signal::Traces, b"\xff\xff\xff").unwrap_err();
        assert!(matches!(error, JsonError::Protobuf { .. }), "{error:?}");
        assert_mentions(&error.to_string(), &["ExportTraceServiceRequest"]);
    }

    #[test]
    fn parses_partial_success_responses() {
        let body = br#"{"partialSuccess":{"rejectedSpans":"2","errorMessage":"x"}}"#;
        assert_eq!(
            parse_partial_success_json(Signal::Traces, body).unwrap(),
            (2, "x".to_string())
        );
        let body = br#"{"partialSuccess":{"rejectedDataPoints":7,"errorMessage":"too old"}}"#;
        assert_eq!(
            parse_partial_success_json(Signal::Metrics, body).unwrap(),
            (7, "too old".to_string())
        );
        let body = br#"{"partialSuccess":{"rejectedLogRecords":"1"},"extra":true}"#;
        assert_eq!(
            parse_partial_success_json(Signal::Logs, body).unwrap(),
            (1, String::new())
        );
        for empty in [
            &b""[..],
            b"  \n",
            b"{}",
            br#"{"partialSuccess":{}}"#,
            br#"{"partialSuccess":null}"#,
        ] {
            assert_eq!(
                parse_partial_success_json(Signal::Traces, empty).unwrap(),
                (0, String::new())
            );
        }

        let wrong_type = br#"{"partialSuccess":{"rejectedSpans":"many"}}"#;
        let error = parse_partial_success_json(Signal::Traces, wrong_type).unwrap_err();
        assert_mentions(
            &error.to_string(),
            &[
                "`partialSuccess.rejectedSpans`",
                "ExportTraceServiceResponse",
            ],
        );
        assert!(parse_partial_success_json(Signal::Traces, b"<html>").is_err());
    }
}

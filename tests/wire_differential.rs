//! The wire walker (`src/otlp/wire.rs`) against the validation it replaced, prost's full decode
//! plus id checks and item counts (`fuzz/src/wire_oracle.rs`): on every committed input of the
//! decoder fuzz targets, on every request fixture, on mutations of valid requests of all three
//! signals (renumbered fields, other wire types, repeated and dropped fields, resized ids, text
//! that is not UTF-8, unknown fields and groups, flipped bits, cuts), and on nesting around prost's
//! recursion limit. Each payload must get the same verdict from both: refused by both, or accepted
//! with the same item count and the same wrong-id refusal. The fuzz target `wire` runs the same
//! comparison on arbitrary bytes.

#[path = "../fuzz/src/wire_oracle.rs"]
mod wire_oracle;

use std::io::Read;
use std::path::{Path, PathBuf};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    exemplar, exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
    summary_data_point::ValueAtQuantile, Exemplar, ExponentialHistogram,
    ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span::{Event, Link},
    ResourceSpans, ScopeSpans, Span, Status,
};
use otlp_spool::otlp::{json, Signal};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestRunner;
use prost::Message;
use wire_oracle::agree;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every committed input of the `decode_<signal>` fuzz targets (corpus and regressions): the
/// protobuf bodies (gunzipped where the first byte says gzip), the canonical protobuf of the JSON
/// bodies that transcode, and each whole input as raw bytes.
#[test]
fn every_input_of_the_decoder_fuzz_targets() {
    let mut checked = 0;
    for signal in Signal::ALL {
        let target = format!("decode_{}", signal.name());
        for dir in ["corpus", "regressions"] {
            let Ok(entries) =
                std::fs::read_dir(Path::new(ROOT).join("fuzz").join(dir).join(&target))
            else {
                continue;
            };
            for entry in entries {
                let data = std::fs::read(entry.unwrap().path()).unwrap();
                agree(signal, &data);
                let Some((&kind, body)) = data.split_first() else {
                    continue;
                };
                // fuzz/src/lib.rs REQUEST_KINDS: protobuf, JSON, gzip protobuf, gzip JSON.
                let body = match kind % 4 {
                    0 | 1 => body.to_vec(),
                    _ => match gunzip(body) {
                        Some(plain) => plain,
                        None => continue,
                    },
                };
                if kind % 2 == 0 {
                    agree(signal, &body);
                } else if let Ok(protobuf) = json::json_to_protobuf(signal, &body) {
                    agree(signal, &protobuf);
                }
                checked += 1;
            }
        }
    }
    assert!(
        checked > 5000,
        "only {checked} fuzz inputs found under fuzz/corpus"
    );
}

/// At most 1 MiB of gunzipped `body`, if it is gzip.
fn gunzip(body: &[u8]) -> Option<Vec<u8>> {
    let mut plain = Vec::new();
    flate2::read::MultiGzDecoder::new(body)
        .take(1 << 20)
        .read_to_end(&mut plain)
        .ok()?;
    Some(plain)
}

/// A request fixture: its signal and its canonical protobuf.
struct Fixture {
    path: PathBuf,
    signal: Signal,
    protobuf: Vec<u8>,
    /// The items an independent decoder counted, where the fixture says.
    items: Option<u64>,
}

/// Every request under `tests/fixtures/`: protobuf files named `<signal>-*.pb`, OTLP/JSON files
/// named `<signal>-*.json`, and captured OTLP/HTTP requests (`NNN.req` beside `NNN.json`, which
/// holds the path and headers, and `expected.json`, which holds the item counts).
fn fixtures() -> Vec<Fixture> {
    let mut files = Vec::new();
    let mut dirs = vec![Path::new(ROOT).join("tests/fixtures")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    let signal_named = |name: &str| Signal::ALL.into_iter().find(|s| name.starts_with(s.name()));
    let mut found = Vec::new();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        let fixture = if name.ends_with(".req") {
            captured_request(&path, bytes)
        } else if name.ends_with(".pb") {
            signal_named(&name).map(|signal| (signal, bytes, None))
        } else if name.ends_with(".json") {
            signal_named(&name).map(|signal| {
                let protobuf = json::json_to_protobuf(signal, &bytes)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                (signal, protobuf, None)
            })
        } else {
            None
        };
        if let Some((signal, protobuf, items)) = fixture {
            found.push(Fixture {
                path,
                signal,
                protobuf,
                items,
            });
        }
    }
    found
}

/// A captured OTLP/HTTP request (`NNN.req`) as canonical protobuf, with its expected items.
fn captured_request(req: &Path, body: Vec<u8>) -> Option<(Signal, Vec<u8>, Option<u64>)> {
    let read_json = |path: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let meta = read_json(req.with_extension("json"));
    let path = meta["path"].as_str()?;
    let signal = Signal::ALL
        .into_iter()
        .find(|s| path == format!("/v1/{}", s.name()))?;
    let header = |name: &str| {
        meta["headers"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|h| {
                (h[0].as_str()?.eq_ignore_ascii_case(name)).then(|| h[1].as_str().unwrap_or(""))
            })
    };
    let body = match header("content-encoding") {
        Some("gzip") => gunzip(&body).expect("a gzip fixture gunzips"),
        _ => body,
    };
    let protobuf = if header("content-type").is_some_and(|t| t.starts_with("application/json")) {
        json::json_to_protobuf(signal, &body).unwrap()
    } else {
        body
    };
    let id = req.file_stem().unwrap().to_string_lossy().into_owned();
    let expected = read_json(req.with_file_name("expected.json"));
    let items = expected["requests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["request"].as_str() == Some(id.as_str()))
        .and_then(|r| r["items"].as_u64());
    Some((signal, protobuf, items))
}

/// Counts the allocations of the thread that makes them, to show that walking allocates nothing.
struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// The receiver's validation of a valid request allocates nothing (prost's decode allocates
/// for every string, id, repeated field and nested message).
#[test]
fn validating_a_valid_request_allocates_nothing() {
    let allocations = || ALLOCATIONS.with(|n| n.get());
    let mut requests: Vec<(Signal, Vec<u8>)> = fixtures()
        .into_iter()
        .map(|f| (f.signal, f.protobuf))
        .collect();
    requests.extend([
        (Signal::Traces, rich_traces()),
        (Signal::Metrics, rich_metrics()),
        (Signal::Logs, rich_logs()),
    ]);
    for (signal, payload) in &requests {
        let before = allocations();
        let items = otlp_spool::receiver::decode::validate(*signal, payload).unwrap();
        assert_eq!(allocations(), before, "{signal:?}, {items} items");
        assert!(wire_oracle::prost_verdict(*signal, payload).is_ok());
        assert!(allocations() > before, "the count works: prost allocates");
    }
}

#[test]
fn every_request_fixture() {
    let fixtures = fixtures();
    // spool-v1's five inputs and loadgen's three, at least.
    assert!(fixtures.len() >= 8, "{} fixtures", fixtures.len());
    for fixture in &fixtures {
        agree(fixture.signal, &fixture.protobuf);
        let walked = wire_oracle::walker_verdict(fixture.signal, &fixture.protobuf)
            .unwrap_or_else(|e| panic!("{}: {e}", fixture.path.display()));
        assert_eq!(walked.wrong_id, None, "{}", fixture.path.display());
        if let Some(items) = fixture.items {
            assert_eq!(walked.items, items, "{}", fixture.path.display());
        }
    }
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        key_strindex: 0,
    }
}

/// Attributes holding every kind of `AnyValue`, nested ones included.
fn attributes() -> Vec<KeyValue> {
    use any_value::Value;
    vec![
        kv("s", Value::StringValue("text é😀".into())),
        kv("b", Value::BoolValue(true)),
        kv("i", Value::IntValue(-7)),
        kv("d", Value::DoubleValue(0.5)),
        kv("x", Value::BytesValue(vec![0xff, 0])),
        kv("r", Value::StringValueStrindex(3)),
        kv(
            "a",
            Value::ArrayValue(ArrayValue {
                values: vec![
                    AnyValue {
                        value: Some(Value::IntValue(1)),
                    },
                    AnyValue { value: None },
                ],
            }),
        ),
        kv(
            "m",
            Value::KvlistValue(KeyValueList {
                values: vec![
                    kv("inner", Value::StringValue("v".into())),
                    KeyValue::default(),
                ],
            }),
        ),
        KeyValue {
            key_strindex: 2,
            ..KeyValue::default()
        },
    ]
}

fn resource() -> Option<Resource> {
    Some(Resource {
        attributes: attributes(),
        dropped_attributes_count: 1,
        entity_refs: vec![EntityRef {
            schema_url: "https://opentelemetry.io/schemas/1.0".into(),
            r#type: "service".into(),
            id_keys: vec!["service.name".into(), "service.instance.id".into()],
            description_keys: vec!["service.version".into()],
        }],
    })
}

fn scope() -> Option<InstrumentationScope> {
    Some(InstrumentationScope {
        name: "scope".into(),
        version: "1.0".into(),
        attributes: attributes()[..2].to_vec(),
        dropped_attributes_count: 2,
    })
}

/// A traces request with every field of every message set.
fn rich_traces() -> Vec<u8> {
    let span = Span {
        trace_id: vec![1; 16],
        span_id: vec![2; 8],
        trace_state: "k=v".into(),
        parent_span_id: vec![3; 8],
        flags: 0x301,
        name: "span".into(),
        kind: 3,
        start_time_unix_nano: 1,
        end_time_unix_nano: 2,
        attributes: attributes(),
        dropped_attributes_count: 4,
        events: vec![Event {
            time_unix_nano: 3,
            name: "event".into(),
            attributes: attributes()[..3].to_vec(),
            dropped_attributes_count: 5,
        }],
        dropped_events_count: 6,
        links: vec![
            Link {
                trace_id: vec![4; 16],
                span_id: vec![5; 8],
                trace_state: "l=w".into(),
                attributes: attributes()[3..5].to_vec(),
                dropped_attributes_count: 7,
                flags: 1,
            },
            Link::default(),
        ],
        dropped_links_count: 8,
        status: Some(Status {
            message: "error".into(),
            code: 2,
        }),
    };
    ExportTraceServiceRequest {
        resource_spans: vec![
            ResourceSpans {
                resource: resource(),
                scope_spans: vec![ScopeSpans {
                    scope: scope(),
                    spans: vec![span, Span::default()],
                    schema_url: "https://opentelemetry.io/schemas/1.1".into(),
                }],
                schema_url: "https://opentelemetry.io/schemas/1.2".into(),
            },
            ResourceSpans::default(),
        ],
    }
    .encode_to_vec()
}

fn exemplars() -> Vec<Exemplar> {
    vec![
        Exemplar {
            filtered_attributes: attributes()[..2].to_vec(),
            time_unix_nano: 9,
            span_id: vec![6; 8],
            trace_id: vec![7; 16],
            value: Some(exemplar::Value::AsInt(-3)),
        },
        Exemplar {
            value: Some(exemplar::Value::AsDouble(1.5)),
            ..Exemplar::default()
        },
    ]
}

/// A metrics request with a metric of each data kind, every field set.
fn rich_metrics() -> Vec<u8> {
    one_scope_of_metrics(rich_metric_list())
}

fn one_scope_of_metrics(metrics: Vec<Metric>) -> Vec<u8> {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(),
            scope_metrics: vec![ScopeMetrics {
                scope: scope(),
                metrics,
                schema_url: "https://opentelemetry.io/schemas/1.1".into(),
            }],
            schema_url: "https://opentelemetry.io/schemas/1.2".into(),
        }],
    }
    .encode_to_vec()
}

/// A metric of each data kind, every field set, and one with none.
fn rich_metric_list() -> Vec<Metric> {
    let number = |value| NumberDataPoint {
        attributes: attributes()[..3].to_vec(),
        start_time_unix_nano: 1,
        time_unix_nano: 2,
        exemplars: exemplars(),
        flags: 1,
        value: Some(value),
    };
    let metric = |name: &str, data| Metric {
        name: name.into(),
        description: "what it measures".into(),
        unit: "s".into(),
        metadata: attributes()[..1].to_vec(),
        data: Some(data),
    };
    let buckets = |offset| Buckets {
        offset,
        bucket_counts: vec![0, 1, 300, u64::MAX],
    };
    vec![
        metric(
            "gauge",
            Data::Gauge(Gauge {
                data_points: vec![
                    number(number_data_point::Value::AsDouble(0.25)),
                    number(number_data_point::Value::AsInt(-1)),
                ],
            }),
        ),
        metric(
            "sum",
            Data::Sum(Sum {
                data_points: vec![number(number_data_point::Value::AsInt(5))],
                aggregation_temporality: 1,
                is_monotonic: true,
            }),
        ),
        metric(
            "histogram",
            Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    attributes: attributes()[..2].to_vec(),
                    start_time_unix_nano: 1,
                    time_unix_nano: 2,
                    count: 3,
                    sum: Some(4.5),
                    bucket_counts: vec![1, 2, 0],
                    explicit_bounds: vec![1.0, 10.0],
                    exemplars: exemplars(),
                    flags: 0,
                    min: Some(0.1),
                    max: Some(20.0),
                }],
                aggregation_temporality: 2,
            }),
        ),
        metric(
            "exponential",
            Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint {
                    attributes: attributes()[..2].to_vec(),
                    start_time_unix_nano: 1,
                    time_unix_nano: 2,
                    count: 9,
                    sum: Some(2.0),
                    scale: -3,
                    zero_count: 1,
                    positive: Some(buckets(-2)),
                    negative: Some(buckets(5)),
                    flags: 1,
                    exemplars: exemplars(),
                    min: Some(-1.0),
                    max: Some(1.0),
                    zero_threshold: 1e-9,
                }],
                aggregation_temporality: 1,
            }),
        ),
        metric(
            "summary",
            Data::Summary(Summary {
                data_points: vec![SummaryDataPoint {
                    attributes: attributes()[..2].to_vec(),
                    start_time_unix_nano: 1,
                    time_unix_nano: 2,
                    count: 4,
                    sum: 10.0,
                    quantile_values: vec![
                        ValueAtQuantile {
                            quantile: 0.5,
                            value: 2.0,
                        },
                        ValueAtQuantile {
                            quantile: 0.99,
                            value: 4.0,
                        },
                    ],
                    flags: 0,
                }],
            }),
        ),
        Metric::default(),
    ]
}

/// A metric's data kinds occurring one after another in every order, up to three times: prost
/// keeps the last kind, merging consecutive occurrences of it, so only its data points count, and
/// only its exemplars' ids are checked (each kind also comes with a wrong trace id).
#[test]
fn metric_data_kinds_replace_and_merge() {
    let mut kinds: Vec<(u32, Vec<u8>)> = Vec::new();
    for metric in rich_metric_list() {
        let Some(mut data) = metric.data else {
            continue;
        };
        kinds.push(data_field(&data));
        let exemplars = match &mut data {
            Data::Gauge(g) => &mut g.data_points[0].exemplars,
            Data::Sum(s) => &mut s.data_points[0].exemplars,
            Data::Histogram(h) => &mut h.data_points[0].exemplars,
            Data::ExponentialHistogram(h) => &mut h.data_points[0].exemplars,
            Data::Summary(_) => continue,
        };
        exemplars[1].trace_id = vec![0; 3];
        kinds.push(data_field(&data));
    }
    assert_eq!(kinds.len(), 9);
    let mut sequences: Vec<Vec<usize>> = (0..kinds.len()).map(|k| vec![k]).collect();
    for _ in 0..2 {
        let longer: Vec<Vec<usize>> = sequences
            .iter()
            .filter(|s| s.len() == sequences.last().unwrap().len())
            .flat_map(|s| (0..kinds.len()).map(move |k| [&s[..], &[k]].concat()))
            .collect();
        sequences.extend(longer);
    }
    let mut wrong_ids = 0;
    for sequence in sequences {
        let mut metric = delimited(1, b"m");
        for &k in &sequence {
            let (number, value) = &kinds[k];
            metric.extend(delimited(*number, value));
        }
        let scope = delimited(2, &metric);
        let payload = delimited(1, &delimited(2, &scope));
        agree(Signal::Metrics, &payload);
        wrong_ids += usize::from(
            wire_oracle::walker_verdict(Signal::Metrics, &payload)
                .unwrap()
                .wrong_id
                .is_some(),
        );
    }
    assert!(wrong_ids > 100, "{wrong_ids} sequences with a wrong id");
}

/// A data point's and an exemplar's value (a oneof of a double and an integer) changing member
/// around the fields beside it, wrong ids among them, which stay.
#[test]
fn scalar_oneof_members_leave_their_siblings_alone() {
    let as_double = [&[(4 << 3) | 1][..], &[0; 8]].concat();
    let as_int = [&[(6 << 3) | 1][..], &[0; 8]].concat();
    let exemplar_double = [&[(3 << 3) | 1][..], &[0; 8]].concat();
    let exemplar_int = as_int.clone();
    let wrong_trace_id = delimited(5, &[1; 3]);
    let exemplar = |parts: &[&[u8]]| delimited(5, &parts.concat());
    let points = [
        [&as_double[..], &exemplar(&[&wrong_trace_id]), &as_int].concat(),
        [&as_int[..], &as_double, &exemplar(&[&wrong_trace_id])].concat(),
        [
            &as_double[..],
            &exemplar(&[&exemplar_double, &wrong_trace_id, &exemplar_int]),
        ]
        .concat(),
        exemplar(&[&wrong_trace_id, &exemplar_int, &exemplar_double]),
    ];
    for point in points {
        let gauge = delimited(5, &delimited(1, &point));
        let payload = delimited(1, &delimited(2, &delimited(2, &gauge)));
        agree(Signal::Metrics, &payload);
        let walked = wire_oracle::walker_verdict(Signal::Metrics, &payload).unwrap();
        assert!(walked.wrong_id.is_some(), "{walked:?}");
    }
}

/// A metric's data as its oneof field: number and encoded message.
fn data_field(data: &Data) -> (u32, Vec<u8>) {
    match data {
        Data::Gauge(g) => (5, g.encode_to_vec()),
        Data::Sum(s) => (7, s.encode_to_vec()),
        Data::Histogram(h) => (9, h.encode_to_vec()),
        Data::ExponentialHistogram(h) => (10, h.encode_to_vec()),
        Data::Summary(s) => (11, s.encode_to_vec()),
    }
}

/// A logs request with every field of a log record set.
fn rich_logs() -> Vec<u8> {
    let record = LogRecord {
        time_unix_nano: 1,
        observed_time_unix_nano: 2,
        severity_number: 9,
        severity_text: "INFO".into(),
        body: attributes()[7].value.clone(),
        attributes: attributes(),
        dropped_attributes_count: 1,
        flags: 1,
        trace_id: vec![1; 16],
        span_id: vec![2; 8],
        event_name: "event".into(),
    };
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(),
            scope_logs: vec![ScopeLogs {
                scope: scope(),
                log_records: vec![record, LogRecord::default()],
                schema_url: "https://opentelemetry.io/schemas/1.1".into(),
            }],
            schema_url: "https://opentelemetry.io/schemas/1.2".into(),
        }],
    }
    .encode_to_vec()
}

/// The valid requests the mutations start from: the rich ones, and the small fixtures.
fn seeds() -> Vec<(Signal, Vec<u8>)> {
    let mut seeds = vec![
        (Signal::Traces, rich_traces()),
        (Signal::Metrics, rich_metrics()),
        (Signal::Logs, rich_logs()),
    ];
    seeds.extend(
        fixtures()
            .into_iter()
            .filter(|f| f.protobuf.len() < 4096)
            .map(|f| (f.signal, f.protobuf)),
    );
    for (signal, seed) in &seeds {
        let walked = wire_oracle::walker_verdict(*signal, seed).unwrap();
        assert!(walked.items > 0 && walked.wrong_id.is_none(), "{walked:?}");
    }
    seeds
}

/// A protobuf field as the mutations see it; a length-delimited value that parses as fields is
/// held as those fields.
#[derive(Debug, Clone)]
struct Node {
    number: u32,
    value: Value,
    /// Bytes more than needed in the key's varint and the length's (non-canonical, as prost
    /// accepts up to 10 bytes a varint).
    pad: u8,
}

#[derive(Debug, Clone)]
enum Value {
    Varint(u64),
    I64(u64),
    I32(u32),
    Len(Vec<u8>),
    Message(Vec<Node>),
    Group(Vec<Node>),
    /// A bare key of wire type 4 (end group), 6 or 7 (no such type).
    Bare(u8),
    /// A varint of ten bytes (nine `0xff`) whose last is this: more than 1 overflows 64 bits.
    TenBytes(u8),
}

/// `bytes` as fields, if all of it parses as fields.
fn parse(mut bytes: &[u8]) -> Option<Vec<Node>> {
    let mut nodes = Vec::new();
    while !bytes.is_empty() {
        let (node, rest) = parse_field(bytes)?;
        if let Value::Bare(_) = node.value {
            return None;
        }
        nodes.push(node);
        bytes = rest;
    }
    Some(nodes)
}

fn parse_field(mut bytes: &[u8]) -> Option<(Node, &[u8])> {
    let (number, wire) = prost::encoding::decode_key(&mut bytes).ok()?;
    use prost::encoding::WireType;
    let value = match wire {
        WireType::Varint => Value::Varint(prost::encoding::decode_varint(&mut bytes).ok()?),
        WireType::SixtyFourBit => {
            let (value, rest) = bytes.split_first_chunk::<8>()?;
            bytes = rest;
            Value::I64(u64::from_le_bytes(*value))
        }
        WireType::ThirtyTwoBit => {
            let (value, rest) = bytes.split_first_chunk::<4>()?;
            bytes = rest;
            Value::I32(u32::from_le_bytes(*value))
        }
        WireType::LengthDelimited => {
            let len = prost::encoding::decode_varint(&mut bytes).ok()? as usize;
            if len > bytes.len() {
                return None;
            }
            let (value, rest) = bytes.split_at(len);
            bytes = rest;
            match parse(value) {
                Some(fields) if !fields.is_empty() => Value::Message(fields),
                _ => Value::Len(value.to_vec()),
            }
        }
        WireType::StartGroup => {
            let mut fields = Vec::new();
            loop {
                let (node, rest) = parse_field(bytes)?;
                bytes = rest;
                match node.value {
                    Value::Bare(4) if node.number == number => break,
                    _ => fields.push(node),
                }
            }
            Value::Group(fields)
        }
        WireType::EndGroup => Value::Bare(4),
    };
    Some((
        Node {
            number,
            value,
            pad: 0,
        },
        bytes,
    ))
}

/// `value` as a varint `pad` bytes longer than it needs.
fn put_varint(value: u64, pad: u8, out: &mut Vec<u8>) {
    prost::encoding::encode_varint(value, out);
    if pad > 0 {
        *out.last_mut().unwrap() |= 0x80;
        out.extend(std::iter::repeat_n(0x80, usize::from(pad) - 1));
        out.push(0);
    }
}

fn encode(nodes: &[Node], out: &mut Vec<u8>) {
    for node in nodes {
        let key = |wire: u8, out: &mut Vec<u8>| {
            put_varint(
                (u64::from(node.number) << 3) | u64::from(wire),
                node.pad,
                out,
            )
        };
        let len = |len: usize, out: &mut Vec<u8>| put_varint(len as u64, node.pad, out);
        match &node.value {
            Value::Varint(v) => {
                key(0, out);
                put_varint(*v, 0, out);
            }
            Value::I64(v) => {
                key(1, out);
                out.extend(v.to_le_bytes());
            }
            Value::I32(v) => {
                key(5, out);
                out.extend(v.to_le_bytes());
            }
            Value::Len(bytes) => {
                key(2, out);
                len(bytes.len(), out);
                out.extend(bytes);
            }
            Value::Message(fields) => {
                let mut inner = Vec::new();
                encode(fields, &mut inner);
                key(2, out);
                len(inner.len(), out);
                out.extend(inner);
            }
            Value::Group(fields) => {
                key(3, out);
                encode(fields, out);
                key(4, out);
            }
            Value::Bare(wire) => key(*wire, out),
            Value::TenBytes(last) => {
                key(0, out);
                out.extend([0xff; 9]);
                out.push(*last);
            }
        }
    }
}

/// The index path of every node, depth first.
fn node_paths(nodes: &[Node], prefix: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
    for (i, node) in nodes.iter().enumerate() {
        prefix.push(i);
        out.push(prefix.clone());
        if let Value::Message(fields) | Value::Group(fields) = &node.value {
            node_paths(fields, prefix, out);
        }
        prefix.pop();
    }
}

/// The fields that hold the node at `path`, and its index among them.
fn siblings<'a>(mut nodes: &'a mut Vec<Node>, path: &[usize]) -> (&'a mut Vec<Node>, usize) {
    let (last, parents) = path.split_last().unwrap();
    for &i in parents {
        nodes = match &mut nodes[i].value {
            Value::Message(fields) | Value::Group(fields) => fields,
            _ => unreachable!("paths lead through messages and groups"),
        };
    }
    (nodes, *last)
}

/// Field numbers to move fields to: OTLP's own (1 to 16, so into another field of the same
/// message), unknown ones, and the largest.
const NUMBERS: [u32; 20] = [
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    12,
    13,
    14,
    15,
    16,
    17,
    99,
    1000,
    (1 << 29) - 1,
];

/// Id lengths and their neighbours.
const LENGTHS: [usize; 10] = [0, 1, 7, 8, 9, 15, 16, 17, 32, 35];

/// Text that is not UTF-8 (a bad byte, overlong, a surrogate, cut off, past U+10FFFF), and text
/// that is (two and four bytes).
const TEXTS: [&[u8]; 7] = [
    b"\xff",
    b"\xc0\x80",
    b"\xed\xa0\x80",
    b"\xe2\x82",
    b"\xf4\x90\x80\x80",
    "é".as_bytes(),
    "😀".as_bytes(),
];

#[derive(Debug, Clone)]
enum Mutation {
    /// The field gets another number.
    Renumber(Index, Index),
    /// The field keeps its number, with a value of wire type `u8 % 8`.
    Rewire(Index, u8),
    /// The field occurs twice in a row.
    Duplicate(Index),
    /// The field moves to the end of its message.
    MoveLast(Index),
    Remove(Index),
    /// The field's value becomes that many bytes of `0xab` (a length from [`LENGTHS`]).
    Resize(Index, Index),
    /// As `Resize`, but of a field that is 8 or 16 bytes long: an id, likely.
    ResizeId(Index, Index),
    /// The field's value becomes `a`, a text from [`TEXTS`], `b`.
    Text(Index, Index),
    /// An unknown field is put before the field: a number from [`NUMBERS`] and wire type.
    Insert(Index, Index, u8),
    /// The field's value is wrapped in `u8 % 8` groups of itself.
    Groups(Index, u8),
    /// The field's key (and length) take `u8 % 11` bytes more than they need.
    Pad(Index, u8),
    /// The field's value becomes a ten-byte varint ending in `u8 % 4`.
    TenBytes(Index, u8),
    /// Once encoded, a bit flips.
    FlipBit(Index, u8),
    /// Once encoded, the end is cut off.
    Cut(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, n)| Mutation::Renumber(a, n)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(a, w)| Mutation::Rewire(a, w)),
        1 => any::<Index>().prop_map(Mutation::Duplicate),
        1 => any::<Index>().prop_map(Mutation::MoveLast),
        1 => any::<Index>().prop_map(Mutation::Remove),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, l)| Mutation::Resize(a, l)),
        3 => (any::<Index>(), any::<Index>()).prop_map(|(a, l)| Mutation::ResizeId(a, l)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, t)| Mutation::Text(a, t)),
        1 => (any::<Index>(), any::<Index>(), any::<u8>()).prop_map(|(a, n, w)| Mutation::Insert(a, n, w)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(a, g)| Mutation::Groups(a, g)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(a, p)| Mutation::Pad(a, p)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(a, l)| Mutation::TenBytes(a, l)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(a, b)| Mutation::FlipBit(a, b)),
        1 => any::<Index>().prop_map(Mutation::Cut),
    ]
}

/// An unknown field's value of wire type `wire % 8`: text that is not UTF-8 where it has bytes.
fn unknown_value(wire: u8) -> Value {
    match wire % 8 {
        0 => Value::Varint(u64::MAX),
        1 => Value::I64(7),
        2 => Value::Len(b"\xff\xfe".to_vec()),
        3 => Value::Group(vec![Node {
            number: 1,
            value: Value::Len(b"\xc0\x80".to_vec()),
            pad: 0,
        }]),
        5 => Value::I32(7),
        bare => Value::Bare(bare),
    }
}

/// `seed` with `mutations` applied (tree mutations first, then bit flips and cuts of the bytes).
fn mutate(seed: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut tree = parse(seed).expect("a seed parses");
    let mut tails = Vec::new();
    for mutation in mutations {
        let mut paths = Vec::new();
        node_paths(&tree, &mut Vec::new(), &mut paths);
        let at = |index: &Index| index.get(&paths).clone();
        match mutation {
            Mutation::FlipBit(..) | Mutation::Cut(_) => {
                tails.push(mutation);
                continue;
            }
            _ if paths.is_empty() => continue,
            Mutation::Renumber(a, number) => {
                let (nodes, i) = siblings(&mut tree, &at(a));
                nodes[i].number = *number.get(&NUMBERS);
            }
            Mutation::Rewire(a, wire) => {
                let (nodes, i) = siblings(&mut tree, &at(a));
                nodes[i].value = match (wire % 8, &nodes[i].value) {
                    (2, Value::Group(fields)) => Value::Message(fields.clone()),
                    (3, Value::Message(fields)) => Value::Group(fields.clone()),
                    (w, _) => unknown_value(w),
                };
            }
            Mutation::Duplicate(a) => {
                let (nodes, i) = siblings(&mut tree, &at(a));
                let copy = nodes[i].clone();
                nodes.insert(i, copy);
            }
            Mutation::MoveLast(a) => {
                let (nodes, i) = siblings(&mut tree, &at(a));
                let node = nodes.remove(i);
                nodes.push(node);
            }
            Mutation::Remove(a) => {
                let (nodes, i) = siblings(&mut tree, &at(a));
                nodes.remove(i);
            }
            Mutation::Resize(a, len) => {
                let (nodes, i) = siblings(&mut tree, &at(a));
                nodes[i].value = Value::Len(vec![0xab; *len.get(&LENGTHS)]);
            }
            Mutation::ResizeId(a, len) => {
                let ids: Vec<Vec<usize>> = paths
                    .iter()
                    .filter(|path| {
                        let (nodes, i) = siblings(&mut tree, path);
                        matches!(&nodes[i].value, Value::Len(b) if b.len() == 8 || b.len() == 16)
                    })
                    .cloned()
                    .collect();
                if !ids.is_empty() {
                    let path = a.get(&ids).clone();
                    let (nodes, i) = siblings(&mut tree, &path);
                    nodes[i].value = Value::Len(vec![0xab; *len.get(&LENGTHS)]);
                }
            }
            Mutation::Text(a, text) => {
                let (nodes, i) = siblings(&mut tree, &at(a));
                nodes[i].value = Value::Len([b"a", *text.get(&TEXTS), b"b"].concat());
            }
            Mutation::Insert(a, number, wire) => {
                let (nodes, i) = siblings(&mut tree, &at(a));
                let node = Node {
                    number: *number.get(&NUMBERS),
                    value: unknown_value(*wire),
                    pad: 0,
                };
                nodes.insert(i, node);
            }
            Mutation::Pad(a, pad) => {
                let (nodes, i) = siblings(&mut tree, &at(a));
                nodes[i].pad = pad % 11;
            }
            Mutation::TenBytes(a, last) => {
                let (nodes, i) = siblings(&mut tree, &at(a));
                nodes[i].value = Value::TenBytes(last % 4);
            }
            Mutation::Groups(a, levels) => {
                let (nodes, i) = siblings(&mut tree, &at(a));
                for _ in 0..levels % 8 {
                    let inner = nodes[i].clone();
                    nodes[i].value = Value::Group(vec![inner]);
                }
            }
        }
    }
    let mut bytes = Vec::new();
    encode(&tree, &mut bytes);
    for tail in tails {
        match tail {
            Mutation::FlipBit(at, bit) if !bytes.is_empty() => {
                let i = at.index(bytes.len());
                bytes[i] ^= 1 << (bit % 8);
            }
            Mutation::Cut(at) => bytes.truncate(at.index(bytes.len() + 1)),
            _ => {}
        }
    }
    bytes
}

/// 3000 random mutation lists of the seeds (a fresh random run each time; a failure prints the
/// shrunk seed index and mutations, which reproduce it), each payload checked as the seed's
/// signal and as another's (a wrong schema must be refused alike). Of the seed signal's verdicts,
/// each kind (refused, accepted, wrong id) must come up at least one time in 50.
#[test]
fn mutated_requests() {
    let seeds = seeds();
    let strategy = (any::<Index>(), prop::collection::vec(mutation(), 1..4));
    let config = ProptestConfig {
        cases: 3000,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    // Refused, accepted, accepted but for an id.
    let verdicts = std::cell::RefCell::new([0; 3]);
    TestRunner::new(config)
        .run(&strategy, |(seed, mutations)| {
            let (signal, seed) = seed.get(&seeds);
            let payload = mutate(seed, &mutations);
            agree(Signal::ALL[(signal.index() + 1) % 3], &payload);
            agree(*signal, &payload);
            let verdict = match wire_oracle::walker_verdict(*signal, &payload) {
                Err(_) => 0,
                Ok(v) if v.wrong_id.is_none() => 1,
                Ok(_) => 2,
            };
            verdicts.borrow_mut()[verdict] += 1;
            Ok(())
        })
        .unwrap();
    let verdicts = verdicts.into_inner();
    assert!(
        verdicts.iter().all(|&n| n > 60),
        "refused, accepted, wrong id: {verdicts:?}"
    );
}

/// `value` as a length-delimited field `number` (for building nesting byte by byte).
fn delimited(number: u32, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_varint((u64::from(number) << 3) | 2, &mut out);
    prost::encoding::encode_varint(value.len() as u64, &mut out);
    out.extend(value);
    out
}

/// An `AnyValue` nested `levels` deep as arrays (two messages a level) or key-value lists
/// (three), around an innermost `AnyValue` whose fields are `innermost`.
fn nested_any_value(kvlist: bool, levels: usize, innermost: &[u8]) -> Vec<u8> {
    let mut value = innermost.to_vec();
    for _ in 0..levels {
        value = if kvlist {
            let key_value = [delimited(1, b"k"), delimited(2, &value)].concat();
            delimited(6, &delimited(1, &key_value))
        } else {
            delimited(5, &delimited(1, &value))
        };
    }
    value
}

/// Requests whose deepest message sits just below, at and past prost's limit of 100 (a log
/// record's body, a span attribute's value, both as arrays and as key-value lists), holding
/// nothing, a string, an empty array, an unknown field, or unknown groups up to 4 deep.
#[test]
fn nesting_around_the_recursion_limit() {
    let group = |depth: usize| {
        // Unknown field 15 (a varint) in `depth` nested groups numbered 15.
        let mut bytes = vec![15 << 3, 1];
        for _ in 0..depth {
            bytes = [&[(15 << 3) | 3][..], &bytes, &[(15 << 3) | 4]].concat();
        }
        bytes
    };
    let innermost: Vec<Vec<u8>> = vec![
        vec![],
        delimited(1, b"leaf"),
        delimited(5, b""),
        vec![15 << 3, 1],
        group(1),
        group(2),
        group(4),
    ];
    let mut accepted = [0, 0];
    for inner in &innermost {
        for kvlist in [false, true] {
            let step = if kvlist { 3 } else { 2 };
            // The body is message 4 (request, resource, scope, record, body); a span attribute's
            // value is message 5.
            for levels in (92 / step)..=(106 / step) {
                let value = nested_any_value(kvlist, levels, inner);
                let record = delimited(5, &value);
                let logs = delimited(1, &delimited(2, &delimited(2, &record)));
                let attribute = [delimited(1, b"k"), delimited(2, &value)].concat();
                let span = delimited(9, &attribute);
                let traces = delimited(1, &delimited(2, &delimited(2, &span)));
                for (signal, payload) in [(Signal::Logs, logs), (Signal::Traces, traces)] {
                    agree(signal, &payload);
                    let ok = wire_oracle::walker_verdict(signal, &payload).is_ok();
                    accepted[usize::from(ok)] += 1;
                }
            }
        }
    }
    // The sweep straddles the limit: some of each.
    assert!(
        accepted[0] > 20 && accepted[1] > 20,
        "refused, accepted: {accepted:?}"
    );
}
